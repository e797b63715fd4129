//! The TOTP endpoints: setup, confirm, disable (Bearer) and the second step of a login. The
//! rules live in [`crate::accounts::mfa`].

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde::Deserialize;

use super::wire::{grant_json, read_json};
use crate::accounts::Caller;
use crate::accounts::mfa::{self, SecondFactor};
use crate::app::App;
use crate::error::Error;
use crate::guard::require_bearer;
use crate::response::{json, no_content, served_to};

/// `POST {prefix}/mfa/totp/setup` → `{secret, otpauth_url}`. No body is read.
pub async fn setup<B>(
    app: &App,
    caller: Caller,
    request: &Request<B>,
) -> Result<Response<Full<Bytes>>, Error> {
    let claims = require_bearer(app, request.headers())?;
    let provisioning = mfa::setup(app, caller, &claims).await?;
    Ok(served_to(
        json(
            StatusCode::OK,
            &serde_json::json!({
                "secret": provisioning.secret,
                "otpauth_url": provisioning.otpauth_url,
            }),
        ),
        &claims.sub,
    ))
}

#[derive(Deserialize)]
struct ConfirmBody {
    code: String,
}

/// `POST {prefix}/mfa/totp/confirm {code}` → `{recovery_codes}`.
pub async fn confirm(
    app: &App,
    caller: Caller,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Error> {
    let claims = require_bearer(app, request.headers())?;
    let (_, body): (_, ConfirmBody) = read_json(app, request).await?;
    let codes = mfa::confirm(app, caller, &claims, &body.code).await?;
    Ok(served_to(
        json(
            StatusCode::OK,
            &serde_json::json!({ "recovery_codes": codes }),
        ),
        &claims.sub,
    ))
}

#[derive(Deserialize)]
struct DisableBody {
    password: String,
}

/// `DELETE {prefix}/mfa/totp {password}` → 204.
pub async fn disable(
    app: &App,
    caller: Caller,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Error> {
    let claims = require_bearer(app, request.headers())?;
    let (_, body): (_, DisableBody) = read_json(app, request).await?;
    mfa::disable(app, caller, &claims, body.password).await?;
    Ok(served_to(no_content(), &claims.sub))
}

#[derive(Deserialize)]
struct LoginBody {
    mfa_token: String,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    recovery_code: Option<String>,
}

/// `POST {prefix}/login/mfa {mfa_token, code | recovery_code}` → the token response.
pub async fn login(
    app: &App,
    caller: Caller,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Error> {
    let (_, body): (_, LoginBody) = read_json(app, request).await?;
    let factor = match (body.code, body.recovery_code) {
        (Some(code), None) => SecondFactor::Code(code),
        (None, Some(code)) => SecondFactor::RecoveryCode(code),
        _ => {
            return Err(Error::InvalidRequest(
                "send exactly one of code and recovery_code".into(),
            ));
        }
    };
    let grant = mfa::login(app, caller, &body.mfa_token, factor).await?;
    Ok(served_to(
        json(StatusCode::OK, &grant_json(&grant)),
        &grant.user.id,
    ))
}
