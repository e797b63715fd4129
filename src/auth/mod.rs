//! The identity endpoints under `auth.prefix` (API.md §2 and §7): HTTP in, HTTP out.
//!
//! [`handle`] routes by method and path to one handler per endpoint. Handlers read the
//! request, call the accounts service ([`crate::accounts`]), which holds every rule and has
//! no HTTP types, and render its answer. The handler modules:
//!
//! - [`account`]: register, me, change-password;
//! - [`session`]: login, refresh, logout, verify;
//! - [`recovery`]: forgot/reset password, email verification; [`pages`]: their HTML;
//! - [`admin`]: user management behind the admin role;
//! - [`channel`]: `GET {prefix}/ws`, the WebSocket auth channel, whose actions call the
//!   session and recovery handlers' own functions;
//! - [`openapi`]: `GET {prefix}/openapi.json`, the OpenAPI document of all of these;
//! - [`wire`]: reading JSON and form bodies, the JSON views of users and token grants.

pub mod account;
pub mod admin;
pub mod channel;
pub mod openapi;
pub mod pages;
pub mod recovery;
pub mod session;
pub mod wire;

use std::sync::Arc;

use http::{Method, Request, Response};
use hyper::body::Incoming;

pub use crate::accounts::Caller;
use crate::app::App;
use crate::error::Error;
use crate::response::{Body, local};

/// Serves a path under `auth.prefix`. `path` is normalised and starts with the prefix.
pub async fn handle(
    app: &Arc<App>,
    caller: Caller,
    request: Request<Incoming>,
    path: &str,
) -> Result<Response<Body>, Error> {
    let rest = &path[app.live.config.auth.prefix.len()..];
    let rest = if rest.len() > 1 {
        rest.trim_end_matches('/')
    } else {
        rest
    };
    let Some(rest) = app.live.config.auth.canonical(rest) else {
        return Err(Error::NotFound);
    };
    let rest = rest.as_ref();
    let method = request.method().clone();
    let m = &method;
    let response = match rest {
        "/register" if m == Method::POST => account::register(app, caller, request).await,
        "/login" if m == Method::POST => session::login(app, caller, request).await,
        "/refresh" if m == Method::POST => session::refresh(app, caller, request).await,
        "/logout" if m == Method::POST => session::logout(app, caller, request).await,
        "/verify" if m == Method::GET || m == Method::HEAD => session::verify(app, &request),
        "/me" if m == Method::GET || m == Method::HEAD => account::me(app, &request).await,
        "/change-password" if m == Method::PUT || m == Method::POST => {
            account::change_password(app, caller, request).await
        }
        "/forgot-password" if m == Method::POST => {
            recovery::forgot_password(app, caller, request).await
        }
        "/reset-password/validate" if m == Method::POST => {
            recovery::validate_reset(app, request).await
        }
        "/reset-password" if m == Method::POST => {
            recovery::reset_password(app, caller, request).await
        }
        "/reset-password" if m == Method::GET || m == Method::HEAD => {
            recovery::reset_page(app, &request).await
        }
        "/verify-email" if m == Method::POST => recovery::verify_email(app, caller, request).await,
        "/verify-email" if m == Method::GET || m == Method::HEAD => {
            recovery::verify_page(app, &request).await
        }
        "/verify-email/resend" if m == Method::POST => {
            recovery::resend_verification(app, caller, request).await
        }
        "/openapi.json" if m == Method::GET || m == Method::HEAD => openapi::serve(app),
        "/ws" if !app.live.config.auth.ws.enabled => Err(Error::NotFound),
        "/ws" if m == Method::GET || m == Method::HEAD => channel::upgrade(app, caller, request),
        "/register" | "/login" | "/refresh" | "/logout" => Err(Error::MethodNotAllowed("POST")),
        "/forgot-password" | "/reset-password/validate" | "/verify-email/resend" => {
            Err(Error::MethodNotAllowed("POST"))
        }
        "/reset-password" | "/verify-email" => Err(Error::MethodNotAllowed("GET, HEAD, POST")),
        "/verify" | "/me" | "/openapi.json" | "/ws" => Err(Error::MethodNotAllowed("GET, HEAD")),
        "/change-password" => Err(Error::MethodNotAllowed("PUT, POST")),
        _ if rest == "/admin" || rest.starts_with("/admin/") => {
            admin::handle(app, caller, request, &rest["/admin".len()..]).await
        }
        _ => Err(Error::NotFound),
    }?;
    Ok(local(response))
}
