//! `GET {prefix}/openapi.json`: the OpenAPI 3.1 document of everything gatehouse answers
//! itself (`docs/openapi.json`, embedded in the binary), adjusted to this config: paths
//! carry `auth.prefix` and the `[auth.paths]` names, and `servers` is `server.public_url`
//! when one is set. The file in the repository is written for the defaults (`/auth`).

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;

use crate::app::App;
use crate::config::AuthConfig;
use crate::error::Error;
use crate::response::json;

/// The document as written, for the default prefix and paths.
pub const DOCUMENT: &str = include_str!("../../docs/openapi.json");

/// The prefix the document's auth paths are written with.
const DEFAULT_PREFIX: &str = "/auth";

/// Serves the document for the running config.
pub fn serve(app: &App) -> Result<Response<Full<Bytes>>, Error> {
    let document = document(&app.live.config.auth, &app.live.config.server.public_url)?;
    Ok(json(StatusCode::OK, &document))
}

/// The embedded document with its paths and servers adjusted to `auth` and `public_url`.
pub fn document(auth: &AuthConfig, public_url: &str) -> Result<serde_json::Value, Error> {
    let mut document: serde_json::Value = serde_json::from_str(DOCUMENT)
        .map_err(|e| Error::internal(format!("embedded openapi.json: {e}")))?;
    if let Some(paths) = document
        .get_mut("paths")
        .and_then(serde_json::Value::as_object_mut)
    {
        let adjusted: serde_json::Map<String, serde_json::Value> = std::mem::take(paths)
            .into_iter()
            .map(|(path, item)| (served_path(auth, &path), item))
            .collect();
        *paths = adjusted;
    }
    if !public_url.is_empty() {
        document["servers"] = serde_json::json!([{ "url": public_url }]);
    }
    Ok(document)
}

/// Where a path written for the defaults is served under this config.
fn served_path(auth: &AuthConfig, path: &str) -> String {
    let Some(rest) = path
        .strip_prefix(DEFAULT_PREFIX)
        .filter(|rest| rest.starts_with('/'))
    else {
        // The ops endpoints are not under the prefix.
        return path.to_string();
    };
    match rest.strip_prefix("/admin") {
        Some(tail) if tail.is_empty() || tail.starts_with('/') => {
            format!("{}{tail}", auth.path_of("/admin"))
        }
        _ => auth.path_of(rest),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn config(extra: &str) -> Config {
        let text = format!(
            "[upstream]\nurl = \"http://127.0.0.1:1\"\n[tokens]\nsecret = \"{}\"\n{extra}",
            "x".repeat(40)
        );
        Config::from_toml(&text, Vec::new()).unwrap()
    }

    fn paths(document: &serde_json::Value) -> Vec<String> {
        document["paths"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    }

    #[test]
    fn the_defaults_serve_the_document_as_written() {
        let config = config("");
        let served = document(&config.auth, &config.server.public_url).unwrap();
        let written: serde_json::Value = serde_json::from_str(DOCUMENT).unwrap();
        assert_eq!(served, written);
    }

    #[test]
    fn prefix_renames_and_public_url_are_applied() {
        let config = config(
            "[server]\npublic_url = \"https://api.example.com/\"\n\
             [auth]\nprefix = \"/id\"\n[auth.paths]\nlogin = \"/sign-in\"\nadmin = \"/manage\"\n",
        );
        let served = document(&config.auth, &config.server.public_url).unwrap();
        let paths = paths(&served);
        for expected in [
            "/id/sign-in",
            "/id/register",
            "/id/manage/users/{id}",
            "/id/openapi.json",
            "/healthz",
        ] {
            assert!(
                paths.iter().any(|p| p == expected),
                "{expected} in {paths:?}"
            );
        }
        assert!(!paths.iter().any(|p| p.starts_with("/auth/")), "{paths:?}");
        assert_eq!(
            served["servers"],
            serde_json::json!([{"url": "https://api.example.com"}])
        );
    }
}
