//! The identity service: the endpoints under `auth.prefix` (API.md §2 and §7).
//!
//! [`handle`] routes by method and path to one function per endpoint. The endpoint modules:
//!
//! - [`account`]: register, me, change-password, and the user creation shared with the admin
//!   API and the `gatehouse user` CLI;
//! - [`session`]: login, refresh, logout, verify;
//! - [`recovery`]: forgot/reset password, email verification, and their pages;
//! - [`admin`]: user management behind the admin role.
//!
//! Shared here: reading a JSON body (content type, size cap, clear 400/413/422), the JSON
//! views of users and tokens, bearer authentication for endpoints that need it, per-IP
//! rate limits of the auth classes, and audit events.

pub mod account;
pub mod admin;
pub mod recovery;
pub mod session;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use http::{Method, Request, Response, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::de::DeserializeOwned;

use crate::app::App;
use crate::error::Error;
use crate::ratelimit::RateLimiter;
use crate::response::{Body, local};
pub use crate::response::{json, no_content};
use crate::store::UserRecord;
use crate::token::Claims;

/// What the gate passes along with an auth request.
pub struct Caller {
    /// The client as gatehouse believes it (see `client_ip`).
    pub ip: IpAddr,
}

/// Serves a path under `auth.prefix`. `path` is normalised and starts with the prefix.
pub async fn handle(
    app: &Arc<App>,
    caller: Caller,
    request: Request<Incoming>,
    path: &str,
) -> Result<Response<Body>, Error> {
    let rest = &path[app.config.auth.prefix.len()..];
    let rest = if rest.len() > 1 {
        rest.trim_end_matches('/')
    } else {
        rest
    };
    let Some(rest) = app.config.auth.canonical(rest) else {
        return Err(Error::NotFound);
    };
    let rest = rest.as_ref();
    let method = request.method().clone();
    let m = &method;
    let response = match rest {
        "/register" if m == Method::POST => account::register(app, &caller, request).await,
        "/login" if m == Method::POST => session::login(app, &caller, request).await,
        "/refresh" if m == Method::POST => session::refresh(app, &caller, request).await,
        "/logout" if m == Method::POST => session::logout(app, &caller, request).await,
        "/verify" if m == Method::GET || m == Method::HEAD => session::verify(app, &request),
        "/me" if m == Method::GET || m == Method::HEAD => account::me(app, &request).await,
        "/change-password" if m == Method::PUT || m == Method::POST => {
            account::change_password(app, &caller, request).await
        }
        "/forgot-password" if m == Method::POST => {
            recovery::forgot_password(app, &caller, request).await
        }
        "/reset-password/validate" if m == Method::POST => {
            recovery::validate_reset(app, request).await
        }
        "/reset-password" if m == Method::POST => {
            recovery::reset_password(app, &caller, request).await
        }
        "/reset-password" if m == Method::GET || m == Method::HEAD => {
            recovery::reset_page(app, &request).await
        }
        "/verify-email" if m == Method::POST => recovery::verify_email(app, &caller, request).await,
        "/verify-email" if m == Method::GET || m == Method::HEAD => {
            recovery::verify_page(app, &request).await
        }
        "/verify-email/resend" if m == Method::POST => {
            recovery::resend_verification(app, &caller, request).await
        }
        "/register" | "/login" | "/refresh" | "/logout" => Err(Error::MethodNotAllowed("POST")),
        "/forgot-password" | "/reset-password/validate" | "/verify-email/resend" => {
            Err(Error::MethodNotAllowed("POST"))
        }
        "/reset-password" | "/verify-email" => Err(Error::MethodNotAllowed("GET, HEAD, POST")),
        "/verify" | "/me" => Err(Error::MethodNotAllowed("GET, HEAD")),
        "/change-password" => Err(Error::MethodNotAllowed("PUT")),
        _ if rest == "/admin" || rest.starts_with("/admin/") => {
            admin::handle(app, &caller, request, &rest["/admin".len()..]).await
        }
        _ => Err(Error::NotFound),
    }?;
    Ok(local(response))
}

/// Reads a JSON body: the content type must be JSON, the body at most
/// `server.auth_max_body_bytes` (refused by its declared length before reading, or while
/// reading a chunked one), and it must parse into `T`. A missing field or a wrong type is a
/// 400; field *values* are judged by the caller (422).
pub async fn read_json<T: DeserializeOwned>(
    app: &App,
    request: Request<Incoming>,
) -> Result<(http::request::Parts, T), Error> {
    let (parts, body) = request.into_parts();
    let is_json = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().trim())
        .is_some_and(|v| {
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
    let limit = app.config.server.auth_max_body_bytes;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(Error::PayloadTooLarge);
    }
    let limited = Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX));
    let bytes = match limited.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(Error::PayloadTooLarge),
        Err(_) => {
            return Err(Error::InvalidRequest(
                "the request body could not be read".into(),
            ));
        }
    };
    let value = serde_json::from_slice(&bytes).map_err(|e| {
        Error::InvalidRequest(format!("invalid JSON body: {}", json_error_message(&e)).into())
    })?;
    Ok((parts, value))
}

/// serde_json's message without echoing values back (it never includes them, but keep the
/// text short and stable).
fn json_error_message(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.find(" at line ") {
        Some(i) => text[..i].to_string(),
        None => text,
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

/// Requires a valid, unrevoked bearer token.
pub fn require_bearer<B>(app: &App, request: &Request<B>) -> Result<Claims, Error> {
    crate::guard::require_bearer(app, request.headers())
}

/// Applies an auth rate-limit class to the caller's IP.
pub fn limit(
    app: &App,
    limiter: Option<&RateLimiter>,
    caller: &Caller,
    class: &'static str,
) -> Result<(), Error> {
    crate::guard::limit(app, limiter, caller.ip, class)
}

/// Records an audit event: a structured log line on the `gatehouse::audit` target and a
/// count in `gatehouse_auth_events_total`. Never given passwords or tokens.
pub fn audit(app: &App, event: &str, outcome: &str, user_id: Option<&str>, ip: IpAddr) {
    app.metrics.auth_event(event, outcome);
    tracing::info!(
        target: "gatehouse::audit",
        event,
        outcome,
        user_id = user_id.unwrap_or(""),
        ip = %ip,
    );
}
