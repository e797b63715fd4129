//! What the auth endpoints read and write on the wire: JSON and form bodies in (content type
//! checked, size capped, clear 400/413), the JSON views of users and token grants out.

use std::time::{Duration, UNIX_EPOCH};

use http::{Request, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::de::DeserializeOwned;

use crate::accounts::sessions::Grant;
use crate::app::App;
use crate::error::Error;
use crate::store::UserRecord;

/// Reads a JSON body: the content type must be JSON, the body at most
/// `server.auth_max_body_bytes` (refused by its declared length before reading, or while
/// reading a chunked one), and it must be a JSON object that parses into `T`. A missing
/// field or a wrong type is a 400; field *values* are judged by the service (422).
pub async fn read_json<T: DeserializeOwned>(
    app: &App,
    request: Request<Incoming>,
) -> Result<(http::request::Parts, T), Error> {
    let is_json = content_type(&request).is_some_and(|v| {
        v.eq_ignore_ascii_case("application/json")
            || (v.len() > 5
                && v[..v.len() - 5].contains('/')
                && v.to_ascii_lowercase().ends_with("+json"))
    });
    if !is_json {
        return Err(Error::InvalidRequest(
            "Content-Type must be application/json".into(),
        ));
    }
    let (parts, bytes) = read_body(app, request).await?;
    Ok((parts, decode(&bytes)?))
}

/// Parses a JSON body into `T`: the one judgement of a body's shape, for HTTP bodies and the
/// WebSocket auth channel's payloads alike. A missing field or a wrong type is a 400; field
/// *values* are judged by the service (422).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    // serde fills a struct from a JSON array by position too, which would make
    // `["a@example.com", "pw"]` a registration; every body here is an object.
    let first = bytes
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    if first.is_some_and(|b| *b != b'{') {
        return Err(Error::InvalidRequest(
            "the JSON body must be an object".into(),
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        Error::InvalidRequest(format!("invalid JSON body: {}", json_error_message(&e)).into())
    })
}

/// Reads an `application/x-www-form-urlencoded` body under the same cap as JSON bodies.
/// Names and values must decode to UTF-8: `form_urlencoded` would replace bad bytes with
/// U+FFFD, and a password must never be silently changed.
pub async fn read_form(app: &App, request: Request<Incoming>) -> Result<Form, Error> {
    let (_, bytes) = read_body(app, request).await?;
    let form = Form::parse(&bytes);
    if form
        .0
        .iter()
        .any(|(k, v)| k.contains('\u{FFFD}') || v.contains('\u{FFFD}'))
    {
        return Err(Error::InvalidRequest("the form is not valid UTF-8".into()));
    }
    Ok(form)
}

/// Is the body an HTML form submission?
pub fn is_form<B>(request: &Request<B>) -> bool {
    content_type(request)
        .is_some_and(|v| v.eq_ignore_ascii_case("application/x-www-form-urlencoded"))
}

/// The media type of the body, without parameters.
fn content_type<B>(request: &Request<B>) -> Option<&str> {
    request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().trim())
}

async fn read_body(
    app: &App,
    request: Request<Incoming>,
) -> Result<(http::request::Parts, bytes::Bytes), Error> {
    let (parts, body) = request.into_parts();
    let limit = app.live.config.server.auth_max_body_bytes;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(Error::PayloadTooLarge);
    }
    let limited = Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX));
    match limited.collect().await {
        Ok(collected) => Ok((parts, collected.to_bytes())),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(Error::PayloadTooLarge),
        Err(_) => Err(Error::InvalidRequest(
            "the request body could not be read".into(),
        )),
    }
}

/// serde_json's message without the position (it never includes values, but keep the text
/// short and stable).
pub fn json_error_message(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.find(" at line ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// Decoded `name=value` pairs of a form body or a query string (`+` is a space, `%XX` a
/// byte; `form_urlencoded` does the decoding the way browsers encode).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Form(Vec<(String, String)>);

impl Form {
    pub fn parse(bytes: &[u8]) -> Form {
        Form(form_urlencoded::parse(bytes).into_owned().collect())
    }

    /// The query string of a request.
    pub fn query<B>(request: &Request<B>) -> Form {
        Form::parse(request.uri().query().unwrap_or_default().as_bytes())
    }

    /// The first value of `name`, or an empty string.
    pub fn get(&self, name: &str) -> &str {
        self.value(name).unwrap_or_default()
    }

    /// The first value of `name`, or `None` when the name is absent (`name=` is `Some("")`).
    pub fn value(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// RFC 3339 for a Unix time.
pub fn rfc3339(unix: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix)).to_string()
}

/// The public JSON view of a user (API.md §2). `admin` adds what only admins see.
pub fn user_json(user: &UserRecord, admin: bool) -> serde_json::Value {
    let mut value = serde_json::json!({
        "id": user.id,
        "email": user.email,
        "username": user.username,
        "name": user.name,
        "roles": user.roles,
        "email_verified": user.email_verified,
        "created_at": rfc3339(user.created_at),
    });
    if admin {
        value["locked"] = user.locked.into();
        value["updated_at"] = rfc3339(user.updated_at).into();
    }
    value
}

/// The token response of API.md §2 (RFC 6749 §5.1 field names).
pub fn grant_json(grant: &Grant) -> serde_json::Value {
    serde_json::json!({
        "access_token": grant.access_token,
        "token_type": "Bearer",
        "expires_in": grant.expires_in,
        "refresh_token": grant.refresh_token,
        "refresh_expires_in": grant.refresh_expires_in,
        "user": user_json(&grant.user, false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expect: &[(&str, &str)]) {
        let expect: Vec<(String, String)> = expect
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(Form::parse(input.as_bytes()), Form(expect), "{input:?}");
    }

    #[test]
    fn forms_decode() {
        check("", &[]);
        check("a=1&b=2", &[("a", "1"), ("b", "2")]);
        check("a=x+y%20z", &[("a", "x y z")]);
        check("p=%C3%A4%26%3D", &[("p", "ä&=")]);
        check("flag&x=", &[("flag", ""), ("x", "")]);
        check("a=1&&b=2", &[("a", "1"), ("b", "2")]);
        check("a=100%", &[("a", "100%")]);
        check("a=%zz%4", &[("a", "%zz%4")]);
        check("a=b=c", &[("a", "b=c")]);
        let form = Form::parse(b"token=abc&token=def");
        assert_eq!(form.get("token"), "abc");
        assert_eq!(form.get("missing"), "");
        assert_eq!(form.value("missing"), None);
        assert_eq!(Form::parse(b"limit=").value("limit"), Some(""));
    }
}
