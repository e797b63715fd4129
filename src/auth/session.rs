//! The session endpoints: login, refresh, logout, verify. The rules (lockout, rotation with
//! reuse detection, revocation) live in [`crate::accounts::sessions`].

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use serde::Deserialize;

use super::wire::{grant_json, read_json, rfc3339};
use crate::accounts::{Caller, sessions};
use crate::app::App;
use crate::error::Error;
use crate::guard::require_bearer;
use crate::response::{Answer, json, served_to};
use crate::token::Claims;

/// The body of a login, over HTTP or the WebSocket auth channel.
#[derive(Deserialize)]
pub struct LoginBody {
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    username: Option<String>,
    password: String,
}

/// `POST {prefix}/login {email | username, password}` → the token response.
pub async fn login(
    app: &Arc<App>,
    caller: Caller,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Error> {
    let (_, body) = read_json(app, request).await?;
    Ok(login_answer(app, caller, body).await?.into_response())
}

/// Login, whatever the transport: the token response.
pub async fn login_answer(
    app: &Arc<App>,
    caller: Caller,
    body: LoginBody,
) -> Result<Answer, Error> {
    let present = |v: Option<String>| v.filter(|v| !v.trim().is_empty());
    let login = present(body.email)
        .or_else(|| present(body.username))
        .unwrap_or_default();
    let grant = sessions::login(app, caller, &login, body.password).await?;
    Ok(Answer::new(StatusCode::OK, grant_json(&grant)).served_to(&grant.user.id))
}

/// The body of a refresh.
#[derive(Deserialize)]
pub struct RefreshBody {
    refresh_token: String,
}

/// `POST {prefix}/refresh {refresh_token}` → a new token response; the old refresh token is
/// spent.
pub async fn refresh(
    app: &App,
    caller: Caller,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Error> {
    let (_, body) = read_json(app, request).await?;
    Ok(refresh_answer(app, caller, body).await?.into_response())
}

/// Refresh, whatever the transport: the new token response.
pub async fn refresh_answer(app: &App, caller: Caller, body: RefreshBody) -> Result<Answer, Error> {
    let grant = sessions::refresh(app, caller, &body.refresh_token).await?;
    Ok(Answer::new(StatusCode::OK, grant_json(&grant)).served_to(&grant.user.id))
}

/// The body of a logout; it may be empty.
#[derive(Deserialize, Default)]
pub struct LogoutBody {
    /// Accepted for clients that send it; the session is the access token's `sid`, whose
    /// refresh tokens all stop working.
    #[serde(default)]
    #[allow(dead_code)]
    refresh_token: Option<String>,
    #[serde(default)]
    all_sessions: bool,
}

/// `POST {prefix}/logout`: ends this session (or all of the user's), effective at once on
/// the proxy path.
pub async fn logout(
    app: &App,
    caller: Caller,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Error> {
    let claims = require_bearer(app, request.headers())?;
    let body = async {
        // An empty body is a plain logout.
        let has_body = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_none_or(|v| v != "0");
        if has_body && request.headers().contains_key(header::CONTENT_TYPE) {
            Ok(read_json(app, request).await?.1)
        } else {
            Ok(LogoutBody::default())
        }
    };
    Ok(logout_answer(app, caller, &claims, body)
        .await?
        .into_response())
}

/// Logout of the session of `claims`, whatever the transport. The session ends first,
/// before `body` is read: a client whose logout body cannot be read must not stay logged in.
pub async fn logout_answer(
    app: &App,
    caller: Caller,
    claims: &Claims,
    body: impl Future<Output = Result<LogoutBody, Error>>,
) -> Result<Answer, Error> {
    let ended = sessions::end_session(app, claims).await?;
    let body = body.await?;
    let sessions = sessions::finish_logout(app, caller, claims, ended, body.all_sessions).await?;
    Ok(Answer::new(
        StatusCode::OK,
        serde_json::json!({ "logged_out": true, "sessions_revoked": sessions }),
    )
    .served_to(&claims.sub))
}

/// `GET {prefix}/verify`: is this token good right now? Answers from the token and the
/// revocation cache alone, so other services can call it cheaply.
pub fn verify<B>(app: &App, request: &Request<B>) -> Result<Response<Full<Bytes>>, Error> {
    let claims = require_bearer(app, request.headers())?;
    let response = json(
        StatusCode::OK,
        &serde_json::json!({
            "valid": true,
            "user": {
                "id": claims.sub,
                "email": claims.email,
                "roles": claims.roles,
                "email_verified": claims.email_verified,
            },
            "session_id": claims.sid,
            "expires_at": rfc3339(claims.exp),
        }),
    );
    Ok(served_to(response, &claims.sub))
}
