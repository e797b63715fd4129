//! The account endpoints: register, me, change-password. The rules (validation, roles at
//! sign-up, the password policy, revocations) live in [`crate::accounts`].

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde::Deserialize;

use super::wire::{read_json, user_json};
use crate::accounts::Caller;
use crate::accounts::signup::{self, SignUp};
use crate::accounts::users;
use crate::app::App;
use crate::error::Error;
use crate::guard::require_bearer;
use crate::response::{json, served_to};

#[derive(Deserialize)]
struct RegisterBody {
    email: String,
    password: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    roles: Option<Vec<String>>,
}

/// `POST {prefix}/register` → 201 with the user.
pub async fn register(
    app: &App,
    caller: Caller,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Error> {
    let (_, body): (_, RegisterBody) = read_json(app, request).await?;
    let user = signup::register(
        app,
        caller,
        SignUp {
            email: body.email,
            password: body.password,
            username: body.username,
            name: body.name,
            roles: body.roles,
        },
    )
    .await?;
    Ok(served_to(
        json(
            StatusCode::CREATED,
            &serde_json::json!({ "user": user_json(&user, false) }),
        ),
        &user.id,
    ))
}

/// `GET {prefix}/me`: the user as stored now (roles may have changed since the token).
pub async fn me<B>(app: &App, request: &Request<B>) -> Result<Response<Full<Bytes>>, Error> {
    let claims = require_bearer(app, request.headers())?;
    let user = users::current_user(app, &claims).await?;
    Ok(served_to(
        json(
            StatusCode::OK,
            &serde_json::json!({ "user": user_json(&user, false) }),
        ),
        &user.id,
    ))
}

#[derive(Deserialize)]
struct ChangePasswordBody {
    current_password: String,
    new_password: String,
}

/// `PUT {prefix}/change-password`: needs the current password; revokes every other session
/// and every access token but the caller's.
pub async fn change_password(
    app: &App,
    caller: Caller,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Error> {
    let claims = require_bearer(app, request.headers())?;
    let (_, body): (_, ChangePasswordBody) = read_json(app, request).await?;
    users::change_password(
        app,
        caller,
        &claims,
        body.current_password,
        body.new_password,
    )
    .await?;
    Ok(served_to(
        json(
            StatusCode::OK,
            &serde_json::json!({ "password_changed": true }),
        ),
        &claims.sub,
    ))
}
