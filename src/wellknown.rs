//! The published keys and discovery documents: `/.well-known/jwks.json` (RFC 7517),
//! `/.well-known/openid-configuration` (OpenID Connect Discovery 1.0) and
//! `/.well-known/oauth-authorization-server` (RFC 8414).
//!
//! Served by gatehouse itself on the main listener, before the route policy (a policy can
//! neither hide nor open them), like the ops endpoints: they are public by nature, the same
//! for every caller, and answered from memory. Not counted or access-logged either: verifiers
//! poll them on a timer, whatever clients do.
//!
//! Decisions, and why:
//!
//! - **URLs come from `server.public_url`, never from the request's `Host`**, which a client
//!   chooses: a discovery document built from it would let anyone point a verifier at their
//!   own key set. Without `public_url` the discovery documents answer 404 (and
//!   `check-config` warns under an asymmetric algorithm); the JWKS needs no URL and is always
//!   served.
//! - **`issuer` is `tokens.issuer`**, the `iss` of every token, so a verifier that checks
//!   `iss` against the discovery document agrees with the tokens. Deployments that use
//!   discovery set it to their public URL.
//! - **Only what is true is claimed.** gatehouse's login is a JSON endpoint, not an RFC 6749
//!   grant endpoint, and it issues no ID tokens; the documents name the token endpoint and the
//!   signing algorithm (as `id_token_signing_alg_values_supported`, the member verifiers read
//!   to pick an algorithm) and no grant, response or scope they would have to honour.
//! - **Cacheable for five minutes** (`Cache-Control: public, max-age=300`): short enough
//!   that a verifier which does not refetch on an unknown `kid` sees a new key well within
//!   an access token's life, long enough to spare a busy deployment the traffic. The README's
//!   rotation procedure publishes a key before it signs for that reason.

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;

use crate::app::App;
use crate::error::Error;

/// Where the key set is served.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";
/// The OpenID Connect discovery document.
pub const OPENID_CONFIGURATION_PATH: &str = "/.well-known/openid-configuration";
/// The RFC 8414 authorization server metadata.
pub const OAUTH_METADATA_PATH: &str = "/.well-known/oauth-authorization-server";

/// How long verifiers may cache the documents: five minutes (see the module doc).
pub const CACHE_CONTROL: &str = "public, max-age=300";

/// Answers a well-known path, or `None` when the path is not one.
pub fn handle<B>(app: &App, request: &Request<B>) -> Option<Response<Full<Bytes>>> {
    let path = request.uri().path();
    if !matches!(
        path,
        JWKS_PATH | OPENID_CONFIGURATION_PATH | OAUTH_METADATA_PATH
    ) {
        return None;
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return Some(Error::MethodNotAllowed("GET, HEAD").into_response());
    }
    let body = if path == JWKS_PATH {
        Ok(app.live.tokens.jwks().to_string())
    } else {
        discovery(app)
    };
    Some(match body {
        Ok(body) => cacheable_json(body),
        Err(error) => error.into_response(),
    })
}

/// The discovery document, the same for both paths.
fn discovery(app: &App) -> Result<String, Error> {
    let config = &app.live.config;
    let base = config.server.public_url.as_str();
    if base.is_empty() {
        return Err(Error::NotFound);
    }
    let alg = app.live.tokens.algorithm().name();
    let document = serde_json::json!({
        "issuer": app.live.tokens.issuer(),
        "jwks_uri": format!("{base}{JWKS_PATH}"),
        "token_endpoint": format!("{base}{}", config.auth.path_of("/login")),
        "id_token_signing_alg_values_supported": [alg],
        "subject_types_supported": ["public"],
    });
    Ok(document.to_string())
}

fn cacheable_json(body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(CACHE_CONTROL),
    );
    response
}
