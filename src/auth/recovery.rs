//! The recovery endpoints: forgot/reset password, email verification and its resend, and
//! the admin view of both (API.md §2, §7). The token lifecycle and every rule live in
//! [`crate::accounts::recovery`]; the HTML in [`super::pages`]. These handlers read the
//! request (JSON, or the pages' forms) and answer in kind: JSON with JSON, a form with a
//! page.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde::Deserialize;

use super::pages;
use super::wire::{Form, is_form, read_form, read_json, user_json};
use crate::accounts::recovery::{self, Resent};
use crate::accounts::{Caller, admin};
use crate::app::App;
use crate::error::Error;
use crate::guard::require_bearer;
use crate::response::{Answer, json, served_to};

/// The body of a forgot-password request.
#[derive(Deserialize)]
pub struct ForgotBody {
    email: String,
}

/// The forgot-password answer, the same whatever happened.
const FORGOT_MESSAGE: &str =
    "If an account exists for that address, a link to reset its password has been sent to it.";

/// `POST {prefix}/forgot-password {email}` → 202, whether or not the address has an account.
pub async fn forgot_password(
    app: &Arc<App>,
    caller: Caller,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Error> {
    let (_, body) = read_json(app, request).await?;
    Ok(forgot_answer(app, caller, body).await?.into_response())
}

/// Forgot-password, whatever the transport: 202 and the same message whatever happened,
/// with `debug_token` under `auth.expose_debug_tokens` when a token was issued.
pub async fn forgot_answer(
    app: &Arc<App>,
    caller: Caller,
    body: ForgotBody,
) -> Result<Answer, Error> {
    let debug_token = recovery::forgot_password(app, caller, &body.email).await?;
    let mut answer = serde_json::json!({ "message": FORGOT_MESSAGE });
    if let Some(token) = debug_token {
        answer["debug_token"] = token.into();
    }
    Ok(Answer::new(StatusCode::ACCEPTED, answer))
}

#[derive(Deserialize)]
struct TokenBody {
    token: String,
}

/// `POST {prefix}/reset-password/validate {token}` → `{valid: true, expires_in}`.
pub async fn validate_reset(
    app: &App,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Error> {
    let (_, body): (_, TokenBody) = read_json(app, request).await?;
    let expires_in = recovery::check_reset(app, &body.token).await?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "valid": true, "expires_in": expires_in }),
    ))
}

/// The JSON body of a password reset.
#[derive(Deserialize)]
pub struct ResetBody {
    token: String,
    new_password: String,
}

/// A password reset from a JSON body, whatever the transport.
pub async fn reset_answer(app: &App, caller: Caller, body: ResetBody) -> Result<Answer, Error> {
    recovery::reset_password(app, caller, &body.token, body.new_password).await?;
    Ok(Answer::new(
        StatusCode::OK,
        serde_json::json!({ "password_reset": true }),
    ))
}

/// `POST {prefix}/reset-password`: JSON `{token, new_password}` answered with JSON, or the
/// page's form (`token`, `new_password`, `confirm_password`) answered with a page.
pub async fn reset_password(
    app: &App,
    caller: Caller,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Error> {
    if !is_form(&request) {
        let (_, body) = read_json(app, request).await?;
        return Ok(reset_answer(app, caller, body).await?.into_response());
    }
    let form = read_form(app, request).await?;
    let (token, password) = (form.get("token"), form.get("new_password"));
    // A dead link first: asking someone to retype two passwords that can never be used
    // would only waste their time.
    let link = match recovery::reset_link(app, token).await {
        Ok(link) => link,
        Err(Error::InvalidResetToken) => return pages::invalid_reset_page(),
        Err(e) => return pages::error_page(e),
    };
    if password != form.get("confirm_password") {
        return pages::reset_form_page(
            app,
            StatusCode::UNPROCESSABLE_ENTITY,
            token,
            &link.email,
            Some("The two passwords do not match. Type the same new password twice."),
        );
    }
    match recovery::reset_password(app, caller, token, password.to_string()).await {
        Ok(()) => pages::reset_done(),
        Err(Error::WeakPassword(reason)) => pages::reset_form_page(
            app,
            StatusCode::UNPROCESSABLE_ENTITY,
            token,
            &link.email,
            Some(&format!("That password cannot be used. {reason}")),
        ),
        Err(Error::InvalidResetToken) => pages::invalid_reset_page(),
        Err(e) => pages::error_page(e),
    }
}

/// `GET {prefix}/reset-password?token=…`: the reset page, or a page saying the link is no
/// longer good. Only peeks at the token.
pub async fn reset_page<B>(app: &App, request: &Request<B>) -> pages::Page {
    let query = Form::query(request);
    let token = query.get("token");
    match recovery::reset_link(app, token).await {
        Ok(link) => pages::reset_form_page(app, StatusCode::OK, token, &link.email, None),
        Err(Error::InvalidResetToken) => pages::invalid_reset_page(),
        Err(e) => pages::error_page(e),
    }
}

/// `POST {prefix}/verify-email`: JSON `{token}` answered with JSON, or the verify page's
/// form answered with a page.
pub async fn verify_email(
    app: &App,
    caller: Caller,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Error> {
    if !is_form(&request) {
        let (_, body): (_, TokenBody) = read_json(app, request).await?;
        let user = recovery::verify_email(app, caller, &body.token).await?;
        return Ok(json(
            StatusCode::OK,
            &serde_json::json!({ "email_verified": true, "user": user_json(&user, false) }),
        ));
    }
    let form = read_form(app, request).await?;
    match recovery::verify_email(app, caller, form.get("token")).await {
        Ok(_) => pages::verify_done(),
        Err(Error::InvalidResetToken) => pages::invalid_verify_page(),
        Err(e) => pages::error_page(e),
    }
}

/// `GET {prefix}/verify-email?token=…`: a page whose button posts the token. It never
/// verifies by itself: mail scanners fetch every link in a mail.
pub async fn verify_page<B>(app: &App, request: &Request<B>) -> pages::Page {
    let query = Form::query(request);
    let token = query.get("token");
    match recovery::check_verification(app, token).await {
        Ok(()) => pages::verify_form(app, token),
        Err(Error::InvalidResetToken) => pages::invalid_verify_page(),
        Err(e) => pages::error_page(e),
    }
}

/// `POST {prefix}/verify-email/resend` (Bearer) → 202 and a new link by mail; 200 when the
/// address is already verified; 429 within the cooldown.
pub async fn resend_verification<B>(
    app: &App,
    caller: Caller,
    request: Request<B>,
) -> Result<Response<Full<Bytes>>, Error> {
    let claims = require_bearer(app, request.headers())?;
    let response = match recovery::resend_verification(app, caller, &claims).await? {
        Resent::AlreadyVerified => json(
            StatusCode::OK,
            &serde_json::json!({ "email_verified": true }),
        ),
        Resent::Sent { debug_token } => {
            let mut answer = serde_json::json!({
                "message": "A new confirmation link has been sent to your email address.",
            });
            if let Some(token) = debug_token {
                answer["debug_token"] = token.into();
            }
            json(StatusCode::ACCEPTED, &answer)
        }
    };
    Ok(served_to(response, &claims.sub))
}

/// `GET {prefix}/admin/recovery`: outstanding tokens and mail counts; never token values.
/// Token counts include expired tokens the next purge will remove.
pub async fn admin_view(app: &App) -> Result<Response<Full<Bytes>>, Error> {
    let stats = admin::store_stats(app).await?;
    let mail = app.mailer.stats();
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({
            "tokens": {
                "password_reset": stats.password_reset_tokens,
                "email_verification": stats.email_verification_tokens,
            },
            "mail": {
                "mode": app.mailer.mode(),
                "queued": mail.queued,
                "sending": mail.sending,
                "sent": mail.sent,
                "failed": mail.failed,
                "dropped": mail.dropped,
            },
        }),
    ))
}
