//! Account recovery and email verification: forgot-password, the reset token and its page,
//! verify-email and its resend, and the admin view of both (API.md §2, issue 4).
//!
//! The tokens. A reset or verification token is 32 bytes from the OS RNG in base64url
//! ([`random_token`]); the store keeps only its SHA-256 ([`token_hash`]) with the user, the
//! address it was mailed to and its expiry (`auth.reset_token_ttl`, `auth.verify_token_ttl`).
//! The two kinds live apart ([`OneTimeKind`]), so a reset token is refused by verify-email and
//! a verification token by the reset endpoints, with the same `INVALID_RESET_TOKEN` as an
//! unknown one. Issuing a token voids the user's older one of the same kind (the store does
//! it), so only the latest link works; a password change voids pending reset tokens
//! (`account::set_password`). A token is also refused once the account's address differs from
//! the one it was mailed to, or when an admin has locked the account. Expired tokens are
//! removed by the store's purge, which `App::start` runs every ten minutes.
//!
//! Decisions, and why:
//!
//! - **Forgot-password reveals nothing.** It answers the same 202 and body whether or not the
//!   address has an account, and in about the same time: only the body parse, a per-address
//!   cooldown and a `tokio::spawn` happen on the request path; the lookup, token write and
//!   mail happen in the spawned task. The cooldown (`auth.forgot_cooldown`, in memory,
//!   bounded) keys on the folded address whether or not it exists, and is silent (the same
//!   202), so it stops mail floods at one victim without becoming an oracle. Per-IP limits
//!   come from the `forgot_password` rate-limit class. Background jobs are bounded too
//!   ([`MAX_BACKGROUND_JOBS`]): a flood of random addresses is shed, not queued.
//! - **`auth.expose_debug_tokens` turns that off.** For development it adds `debug_token` to
//!   the forgot-password and resend answers, which means the work happens inline and the
//!   answer differs when an account exists. That is enumeration by design; gatehouse logs a
//!   loud warning at start while the switch is on.
//! - **A weak password does not burn the token.** Reset checks the token (without consuming
//!   it), then the password policy, then hashes, and only then consumes the token with the
//!   store's atomic take. A typo in the policy-checked field is answered with
//!   `WEAK_PASSWORD` and the same link still works; of two concurrent submissions exactly one
//!   wins the take and the other gets `INVALID_RESET_TOKEN`. Should the store fail after the
//!   take, the link is spent and the user asks for a new one: safe, if tedious.
//! - **What a reset does.** It sets the password through `account::set_password` (every
//!   session and access token of the user revoked, pending reset tokens voided), clears the
//!   failed-login counters of the user's login names (a locked-out user recovers by
//!   resetting), marks the address verified (the link proved the user reads mail there) and
//!   mails a "your password was changed" notice.
//! - **The pages.** `GET …/reset-password?token=…` serves a small self-contained page: no
//!   external assets, a Content-Security-Policy of `default-src 'none'` with a per-response
//!   nonce for its one inline style and script, `frame-ancestors 'none'` and
//!   `X-Frame-Options: DENY`, `Referrer-Policy: no-referrer` (the token sits in the URL),
//!   `Cache-Control: no-store`. Its form posts `application/x-www-form-urlencoded` to
//!   `POST …/reset-password`, which answers a form with an HTML page and JSON with JSON, so
//!   it works without JavaScript; with JavaScript it posts JSON with `fetch` and shows the
//!   outcome inline.
//! - **Never verify on GET.** Mail scanners and link previews fetch every link in a mail. A
//!   GET that consumed the token would verify addresses nobody looked at (and burn reset
//!   links before the user clicks). So `GET …/verify-email?token=…` only serves a page with a
//!   button that POSTs the token, and the GET reset page only peeks at the token.
//! - **Tokens stay out of logs.** The access log records no path or query; nothing here logs
//!   a token, a link or a password, and errors carry fixed messages.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use tokio::sync::Semaphore;

use super::{Caller, audit, json, limit, read_json, require_bearer, user_json};
use crate::app::App;
use crate::email::{Mail, escape};
use crate::error::{Error, TokenRefusal};
use crate::store::{OneTimeKind, OneTimeRecord, StoreError, TokenHash, UserRecord, fold};
use crate::token::{random_token, token_hash};

/// Addresses (and users, for resend) remembered by the cooldown. An entry is a few dozen
/// bytes, so this caps the memory at a few megabytes under a flood of distinct addresses.
const COOLDOWN_CAPACITY: u64 = 100_000;
/// Forgot-password lookups running in the background at once; beyond that, requests are
/// answered as usual and their work shed. Each holds a blocking-pool thread briefly.
pub const MAX_BACKGROUND_JOBS: usize = 64;
/// Tokens are 43 characters; anything much longer is not one and is refused before hashing.
const MAX_TOKEN_LEN: usize = 128;

/// The in-memory state of recovery: per-address cooldowns and the background-job budget.
pub struct Recovery {
    cooldowns: moka::sync::Cache<String, u64>,
    cooldown_secs: u64,
    jobs: Arc<Semaphore>,
}

impl Recovery {
    pub fn new(cooldown: Duration) -> Recovery {
        // Entries are judged by the app clock (so tests can move it); moka's own expiry
        // only bounds how long memory holds them.
        let ttl = cooldown.max(Duration::from_secs(1));
        Recovery {
            cooldowns: moka::sync::Cache::builder()
                .max_capacity(COOLDOWN_CAPACITY)
                .time_to_live(ttl)
                .build(),
            cooldown_secs: cooldown.as_secs(),
            jobs: Arc::new(Semaphore::new(MAX_BACKGROUND_JOBS)),
        }
    }

    /// Starts a cooldown for `key` unless one is running: `Ok(())` if the caller may go on,
    /// `Err(seconds left)` if not.
    fn begin(&self, key: String, now: u64) -> Result<(), u64> {
        if self.cooldown_secs == 0 {
            return Ok(());
        }
        let until = now.saturating_add(self.cooldown_secs);
        let entry = self.cooldowns.entry(key.clone()).or_insert(until);
        if entry.is_fresh() {
            return Ok(());
        }
        let previous = entry.into_value();
        if previous > now {
            return Err(previous - now);
        }
        self.cooldowns.insert(key, until);
        Ok(())
    }
}

#[derive(Deserialize)]
struct ForgotBody {
    email: String,
}

/// The forgot-password answer, the same whatever happened.
const FORGOT_MESSAGE: &str =
    "If an account exists for that address, a link to reset its password has been sent to it.";

/// `POST {prefix}/forgot-password {email}` → 202.
pub async fn forgot_password(
    app: &Arc<App>,
    caller: &Caller,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Error> {
    limit(
        app,
        app.limits.forgot_password.as_ref(),
        caller,
        "forgot_password",
    )?;
    let (_, body): (_, ForgotBody) = read_json(app, request).await?;
    let email = body.email.trim();
    if let Err(reason) = super::account::check_email(email) {
        return Err(Error::ValidationFailed(vec![(
            "email".into(),
            reason.to_string(),
        )]));
    }
    let email = fold(email);
    let mut answer = serde_json::json!({ "message": FORGOT_MESSAGE });
    let cooldown_key = format!("r:{email}");
    if app
        .recovery
        .begin(cooldown_key.clone(), app.clock.now())
        .is_err()
    {
        app.metrics.auth_event("forgot_password", "cooldown");
        return Ok(json(StatusCode::ACCEPTED, &answer));
    }
    if app.config.auth.expose_debug_tokens {
        if let Some(token) = issue_reset(app, &email, caller).await? {
            answer["debug_token"] = token.into();
        }
        return Ok(json(StatusCode::ACCEPTED, &answer));
    }
    match app.recovery.jobs.clone().try_acquire_owned() {
        Ok(permit) => {
            let (app, ip) = (app.clone(), caller.ip);
            tokio::spawn(async move {
                let caller = Caller { ip };
                if let Err(e) = issue_reset(&app, &email, &caller).await {
                    e.log("forgot-password");
                }
                drop(permit);
            });
        }
        Err(_) => {
            // Nothing was sent, so the address must not sit in its cooldown: the user's
            // retry a moment later has to get through.
            app.recovery.cooldowns.invalidate(&cooldown_key);
            app.metrics.auth_event("forgot_password", "shed");
            tracing::warn!(
                target: "gatehouse::audit",
                event = "forgot_password",
                outcome = "shed",
                ip = %caller.ip,
                "too many forgot-password requests in progress; request dropped"
            );
        }
    }
    Ok(json(StatusCode::ACCEPTED, &answer))
}

/// Looks the address up and, for an unlocked account, stores a reset token and mails the
/// link. Returns the token (for `expose_debug_tokens`) when one was issued.
async fn issue_reset(app: &App, email: &str, caller: &Caller) -> Result<Option<String>, Error> {
    let key = email.to_string();
    let user = app.db(move |s| s.find_user_by_email(&key)).await?;
    let Some(user) = user.filter(|u| !u.locked) else {
        audit(app, "forgot_password", "no_account", None, caller.ip);
        return Ok(None);
    };
    let token = issue(app, OneTimeKind::PasswordReset, &user).await?;
    app.mailer.send(Mail::reset(
        &app.config.email,
        &user.email,
        &token,
        app.config.auth.reset_token_ttl,
    ));
    audit(app, "forgot_password", "mailed", Some(&user.id), caller.ip);
    Ok(Some(token))
}

/// Stores a fresh token of `kind` for `user` (voiding the older one) and returns it.
async fn issue(app: &App, kind: OneTimeKind, user: &UserRecord) -> Result<String, Error> {
    let token = random_token().map_err(|e| Error::internal(e.0))?;
    let ttl = match kind {
        OneTimeKind::PasswordReset => app.config.auth.reset_token_ttl,
        OneTimeKind::EmailVerification => app.config.auth.verify_token_ttl,
    };
    let record = OneTimeRecord {
        user_id: user.id.clone(),
        email: user.email.clone(),
        expires_at: app.clock.now().saturating_add(ttl.as_secs()),
    };
    let hash = token_hash(&token);
    app.db(move |s| s.put_one_time(kind, &hash, &record))
        .await?;
    Ok(token)
}

/// A token as presented: base64url of a sane length, or refused before any lookup.
fn well_formed(token: &str) -> Option<&str> {
    (!token.is_empty()
        && token.len() <= MAX_TOKEN_LEN
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
    .then_some(token)
}

/// A token that is live now: known, unexpired, of this kind, its account unlocked and still
/// at the address the token was mailed to. Does not consume it.
async fn live_token(
    app: &App,
    kind: OneTimeKind,
    token: &str,
) -> Result<(TokenHash, OneTimeRecord, UserRecord), Error> {
    let token = well_formed(token).ok_or(Error::InvalidResetToken)?;
    let hash = token_hash(token);
    let now = app.clock.now();
    let record = app
        .db(move |s| s.peek_one_time(kind, &hash, now))
        .await?
        .ok_or(Error::InvalidResetToken)?;
    let id = record.user_id.clone();
    let user = app
        .db(move |s| s.get_user(&id))
        .await?
        .ok_or(Error::InvalidResetToken)?;
    if user.locked || fold(&user.email) != fold(&record.email) {
        return Err(Error::InvalidResetToken);
    }
    Ok((hash, record, user))
}

/// Consumes a token checked by [`live_token`]; exactly one caller wins.
async fn consume(
    app: &App,
    kind: OneTimeKind,
    hash: TokenHash,
    user: &UserRecord,
) -> Result<OneTimeRecord, Error> {
    let now = app.clock.now();
    app.db(move |s| s.take_one_time(kind, &hash, now))
        .await?
        .filter(|r| r.user_id == user.id)
        .ok_or(Error::InvalidResetToken)
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
    let (_, record, _) = live_token(app, OneTimeKind::PasswordReset, &body.token).await?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({
            "valid": true,
            "expires_in": record.expires_at.saturating_sub(app.clock.now()),
        }),
    ))
}

#[derive(Deserialize)]
struct ResetBody {
    token: String,
    new_password: String,
}

/// `POST {prefix}/reset-password`: JSON `{token, new_password}` answered with JSON, or the
/// page's form (`token`, `new_password`, `confirm_password`) answered with a page.
pub async fn reset_password(
    app: &App,
    caller: &Caller,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Error> {
    if !is_form(&request) {
        let (_, body): (_, ResetBody) = read_json(app, request).await?;
        reset(app, caller, &body.token, body.new_password).await?;
        return Ok(json(
            StatusCode::OK,
            &serde_json::json!({ "password_reset": true }),
        ));
    }
    let form = read_form(app, request).await?;
    let token = form_value(&form, "token").unwrap_or_default();
    let password = form_value(&form, "new_password").unwrap_or_default();
    let confirmation = form_value(&form, "confirm_password").unwrap_or_default();
    if password != confirmation {
        return reset_form_page(
            app,
            StatusCode::UNPROCESSABLE_ENTITY,
            token,
            Some("The two passwords do not match. Type the same new password twice."),
        );
    }
    match reset(app, caller, token, password.to_string()).await {
        Ok(()) => page(
            StatusCode::OK,
            "Password changed",
            "<p class=\"good\">Your password has been changed and every session was signed \
             out. You can now sign in with your new password.</p>",
            None,
        ),
        Err(Error::WeakPassword(reason)) => reset_form_page(
            app,
            StatusCode::UNPROCESSABLE_ENTITY,
            token,
            Some(&format!("That password cannot be used: it {reason}.")),
        ),
        Err(Error::InvalidResetToken) => invalid_reset_page(),
        Err(e) => error_page(e),
    }
}

/// The reset itself; see the module doc for the order of the steps.
async fn reset(app: &App, caller: &Caller, token: &str, new_password: String) -> Result<(), Error> {
    let (hash, _, user) = live_token(app, OneTimeKind::PasswordReset, token)
        .await
        .inspect_err(|_| audit(app, "password_reset", "invalid_token", None, caller.ip))?;
    let password_hash =
        super::account::hash_new_password(app, new_password, &user.email, user.username.as_deref())
            .await?;
    consume(app, OneTimeKind::PasswordReset, hash, &user)
        .await
        .inspect_err(|_| audit(app, "password_reset", "invalid_token", None, caller.ip))?;
    super::account::set_password(app, &user.id, password_hash, None).await?;

    let mut names = vec![fold(&user.email)];
    names.extend(user.username.as_deref().map(fold));
    let (id, email, now) = (user.id.clone(), user.email.clone(), app.clock.now());
    app.db(move |s| {
        for name in &names {
            s.clear_login_failures(name)?;
        }
        // The link reached the user at this address: it is verified now.
        let verified = s.update_user(&id, &mut |u| {
            if !u.email_verified && fold(&u.email) == fold(&email) {
                u.email_verified = true;
                u.updated_at = now;
            }
            Ok(())
        });
        match verified {
            Ok(_) | Err(StoreError::NotFound) => Ok(()),
            Err(e) => Err(e),
        }
    })
    .await?;
    app.mailer
        .send(Mail::password_changed(&user.email, app.clock.now()));
    audit(app, "password_reset", "ok", Some(&user.id), caller.ip);
    Ok(())
}

/// `GET {prefix}/reset-password?token=…`: the reset page, or a page saying the link is no
/// longer good. Only peeks at the token.
pub async fn reset_page<B>(
    app: &App,
    request: &Request<B>,
) -> Result<Response<Full<Bytes>>, Error> {
    let token = query_token(request);
    match live_token(app, OneTimeKind::PasswordReset, &token).await {
        Ok(_) => reset_form_page(app, StatusCode::OK, &token, None),
        Err(Error::InvalidResetToken) => invalid_reset_page(),
        Err(e) => error_page(e),
    }
}

fn invalid_reset_page() -> Result<Response<Full<Bytes>>, Error> {
    page(
        StatusCode::BAD_REQUEST,
        "Link expired or already used",
        "<p class=\"bad\">This password reset link is invalid, has expired or has already \
         been used.</p><p>Ask for a new link where you asked for this one; only the latest \
         link works.</p>",
        None,
    )
}

/// The form, with an optional problem to show above it.
fn reset_form_page(
    app: &App,
    status: StatusCode,
    token: &str,
    problem: Option<&str>,
) -> Result<Response<Full<Bytes>>, Error> {
    let min = app.config.auth.password.min_length;
    let (class, message) = match problem {
        Some(p) => ("bad", escape(p)),
        None => ("", String::new()),
    };
    let body = format!(
        "<p>Choose a new password for your account. Every session will be signed out.</p>\n\
         <p id=\"outcome\" role=\"status\" class=\"{class}\">{message}</p>\n\
         <form id=\"reset\" method=\"post\" action=\"{action}\">\n\
         <input type=\"hidden\" name=\"token\" value=\"{token}\">\n\
         <label for=\"new_password\">New password</label>\n\
         <input id=\"new_password\" name=\"new_password\" type=\"password\" \
         autocomplete=\"new-password\" required minlength=\"{min}\" autofocus>\n\
         <label for=\"confirm_password\">The new password again</label>\n\
         <input id=\"confirm_password\" name=\"confirm_password\" type=\"password\" \
         autocomplete=\"new-password\" required minlength=\"{min}\">\n\
         <p class=\"hint\">At least {min} characters. A few unrelated words make a strong, \
         memorable password.</p>\n\
         <button type=\"submit\">Set the new password</button>\n\
         </form>",
        action = escape(&app.config.auth.path_of("/reset-password")),
        token = escape(well_formed(token).unwrap_or_default()),
    );
    page(status, "Choose a new password", &body, Some(RESET_SCRIPT))
}

/// Submits the reset form with `fetch` and shows the outcome inline; without JavaScript the
/// form posts itself and the server answers with a page.
const RESET_SCRIPT: &str = r#"(function () {
  var form = document.getElementById('reset');
  var out = document.getElementById('outcome');
  if (!form || !window.fetch || !window.JSON) { return; }
  function show(text, good) { out.textContent = text; out.className = good ? 'good' : 'bad'; }
  form.addEventListener('submit', function (event) {
    event.preventDefault();
    var password = form.elements['new_password'].value;
    if (password !== form.elements['confirm_password'].value) {
      show('The two passwords do not match. Type the same new password twice.', false);
      return;
    }
    var button = form.querySelector('button');
    button.disabled = true;
    fetch(form.action, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', 'Accept': 'application/json' },
      body: JSON.stringify({ token: form.elements['token'].value, new_password: password }),
      credentials: 'omit',
      cache: 'no-store',
      referrerPolicy: 'no-referrer'
    }).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (body) {
        if (response.ok) {
          form.hidden = true;
          show('Your password has been changed and every session was signed out. You can now sign in with your new password.', true);
          return;
        }
        var error = body && body.error ? body.error : {};
        if (error.code === 'INVALID_RESET_TOKEN') {
          form.hidden = true;
          show('This password reset link is invalid, has expired or has already been used. Ask for a new link; only the latest link works.', false);
        } else if (error.code === 'WEAK_PASSWORD') {
          show('That password cannot be used: it ' + error.message + '.', false);
        } else if (error.code === 'RATE_LIMITED') {
          show('Too many attempts. Wait a little and try again.', false);
        } else {
          show('Something went wrong on our side. Try again in a few minutes.', false);
        }
        button.disabled = false;
      });
    }, function () {
      show('The server could not be reached. Check your connection and try again.', false);
      button.disabled = false;
    });
  });
})();"#;

/// `POST {prefix}/verify-email`: JSON `{token}` answered with JSON, or the verify page's
/// form answered with a page.
pub async fn verify_email(
    app: &App,
    caller: &Caller,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Error> {
    if !is_form(&request) {
        let (_, body): (_, TokenBody) = read_json(app, request).await?;
        let user = verify(app, caller, &body.token).await?;
        return Ok(json(
            StatusCode::OK,
            &serde_json::json!({ "email_verified": true, "user": user_json(&user, false) }),
        ));
    }
    let form = read_form(app, request).await?;
    let token = form_value(&form, "token").unwrap_or_default();
    match verify(app, caller, token).await {
        Ok(_) => page(
            StatusCode::OK,
            "Email address confirmed",
            "<p class=\"good\">Thank you: your email address is confirmed. You can close this \
             page.</p>",
            None,
        ),
        Err(Error::InvalidResetToken) => invalid_verify_page(),
        Err(e) => error_page(e),
    }
}

async fn verify(app: &App, caller: &Caller, token: &str) -> Result<UserRecord, Error> {
    let (hash, record, user) = live_token(app, OneTimeKind::EmailVerification, token)
        .await
        .inspect_err(|_| audit(app, "email_verification", "invalid_token", None, caller.ip))?;
    consume(app, OneTimeKind::EmailVerification, hash, &user).await?;
    let (id, now) = (user.id.clone(), app.clock.now());
    let updated = app
        .db(move |s| {
            s.update_user(&id, &mut |u| {
                // The address may have changed between the check and now.
                if fold(&u.email) != fold(&record.email) {
                    return Err(StoreError::NotFound);
                }
                u.email_verified = true;
                u.updated_at = now;
                Ok(())
            })
        })
        .await;
    let user = match updated {
        Ok(user) => user,
        Err(Error::NotFound) => return Err(Error::InvalidResetToken),
        Err(e) => return Err(e),
    };
    audit(app, "email_verification", "ok", Some(&user.id), caller.ip);
    Ok(user)
}

/// `GET {prefix}/verify-email?token=…`: a page whose button posts the token. It never
/// verifies by itself; see the module doc.
pub async fn verify_page<B>(
    app: &App,
    request: &Request<B>,
) -> Result<Response<Full<Bytes>>, Error> {
    let token = query_token(request);
    match live_token(app, OneTimeKind::EmailVerification, &token).await {
        Ok(_) => {
            let body = format!(
                "<p>Press the button to confirm that this is your email address.</p>\n\
                 <form method=\"post\" action=\"{action}\">\n\
                 <input type=\"hidden\" name=\"token\" value=\"{token}\">\n\
                 <button type=\"submit\">Confirm my email address</button>\n\
                 </form>",
                action = escape(&app.config.auth.path_of("/verify-email")),
                token = escape(&token),
            );
            page(StatusCode::OK, "Confirm your email address", &body, None)
        }
        Err(Error::InvalidResetToken) => invalid_verify_page(),
        Err(e) => error_page(e),
    }
}

fn invalid_verify_page() -> Result<Response<Full<Bytes>>, Error> {
    page(
        StatusCode::BAD_REQUEST,
        "Link expired or already used",
        "<p class=\"bad\">This confirmation link is invalid, has expired or has already been \
         used.</p><p>If your address is not confirmed yet, sign in and ask for a new \
         link.</p>",
        None,
    )
}

/// `POST {prefix}/verify-email/resend` (Bearer) → 202 and a new link by mail; 200 when the
/// address is already verified; 429 within the cooldown.
pub async fn resend_verification(
    app: &App,
    caller: &Caller,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Error> {
    let claims = require_bearer(app, &request)?;
    limit(
        app,
        app.limits.forgot_password.as_ref(),
        caller,
        "forgot_password",
    )?;
    let id = claims.sub.clone();
    let user = app
        .db(move |s| s.get_user(&id))
        .await?
        .ok_or(Error::Token(TokenRefusal::Revoked))?;
    if user.email_verified {
        return Ok(json(
            StatusCode::OK,
            &serde_json::json!({ "email_verified": true }),
        ));
    }
    // The caller is the account holder, so unlike forgot-password the cooldown may say so.
    if let Err(left) = app
        .recovery
        .begin(format!("v:{}", user.id), app.clock.now())
    {
        return Err(Error::RateLimited {
            retry_after_secs: left.max(1),
            quota: None,
        });
    }
    let token = send_verification(app, &user).await?;
    audit(
        app,
        "email_verification",
        "resent",
        Some(&user.id),
        caller.ip,
    );
    let mut answer = serde_json::json!({
        "message": "A new confirmation link has been sent to your email address.",
    });
    if app.config.auth.expose_debug_tokens {
        answer["debug_token"] = token.into();
    }
    Ok(json(StatusCode::ACCEPTED, &answer))
}

/// Mails a fresh verification link to `user`; returns the token.
async fn send_verification(app: &App, user: &UserRecord) -> Result<String, Error> {
    let token = issue(app, OneTimeKind::EmailVerification, user).await?;
    app.mailer.send(Mail::verify(
        &app.config.email,
        &user.email,
        &token,
        app.config.auth.verify_token_ttl,
    ));
    Ok(token)
}

/// Called by registration once the user exists: mails the verification link. A failure is
/// logged and does not undo the registration (the user can ask for a new link).
pub async fn after_register(app: &App, user: &UserRecord) {
    if user.email_verified {
        return;
    }
    // Counts as the first send, so an impatient resend right after sign-up waits.
    let _ = app
        .recovery
        .begin(format!("v:{}", user.id), app.clock.now());
    if let Err(e) = send_verification(app, user).await {
        e.log("register");
    }
}

/// `GET {prefix}/admin/recovery`: outstanding tokens and mail counts; never token values.
/// Token counts include expired tokens the next purge will remove.
pub async fn admin_view(app: &App) -> Result<Response<Full<Bytes>>, Error> {
    let stats = app.db(|s| s.stats()).await?;
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

// ----- forms and pages -----

/// Is the body an HTML form submission?
fn is_form<B>(request: &Request<B>) -> bool {
    request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

/// Reads a form body under the same size cap as JSON bodies.
async fn read_form(app: &App, request: Request<Incoming>) -> Result<Vec<(String, String)>, Error> {
    let limit = app.config.server.auth_max_body_bytes;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(Error::PayloadTooLarge);
    }
    let body = Limited::new(
        request.into_body(),
        usize::try_from(limit).unwrap_or(usize::MAX),
    );
    let bytes = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(Error::PayloadTooLarge),
        Err(_) => {
            return Err(Error::InvalidRequest(
                "the request body could not be read".into(),
            ));
        }
    };
    parse_form(&bytes).ok_or_else(|| Error::InvalidRequest("the form is not valid UTF-8".into()))
}

fn form_value<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Parses `application/x-www-form-urlencoded` (also a query string): `+` is a space, `%XX` a
/// byte, and the result must be UTF-8. A stray `%` is kept literally, as browsers do.
fn parse_form(bytes: &[u8]) -> Option<Vec<(String, String)>> {
    let decode = |part: &[u8]| -> Option<String> {
        let mut out = Vec::with_capacity(part.len());
        let mut i = 0;
        while i < part.len() {
            match part[i] {
                b'+' => out.push(b' '),
                b'%' => match (
                    part.get(i + 1).and_then(|b| (*b as char).to_digit(16)),
                    part.get(i + 2).and_then(|b| (*b as char).to_digit(16)),
                ) {
                    (Some(hi), Some(lo)) => {
                        out.push((hi * 16 + lo) as u8);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                },
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8(out).ok()
    };
    bytes
        .split(|b| *b == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let mut kv = pair.splitn(2, |b| *b == b'=');
            let key = kv.next().unwrap_or_default();
            let value = kv.next().unwrap_or_default();
            Some((decode(key)?, decode(value)?))
        })
        .collect()
}

/// The `token` query parameter, or an empty string.
fn query_token<B>(request: &Request<B>) -> String {
    request
        .uri()
        .query()
        .and_then(|q| parse_form(q.as_bytes()))
        .and_then(|pairs| pairs.into_iter().find(|(k, _)| k == "token"))
        .map(|(_, v)| v)
        .unwrap_or_default()
}

/// The pages' look: readable on a phone, no external assets.
const PAGE_STYLE: &str = "\
body{margin:0;padding:24px;background:#f4f4f5;color:#18181b;\
font:16px/1.5 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif}\
main{max-width:420px;margin:8vh auto;background:#fff;border-radius:8px;padding:24px 28px;\
box-shadow:0 1px 3px rgba(0,0,0,.1)}\
h1{font-size:22px;margin:0 0 12px}\
label{display:block;margin:14px 0 4px;font-weight:600}\
input[type=password]{box-sizing:border-box;width:100%;padding:10px;font-size:16px;\
border:1px solid #a1a1aa;border-radius:6px}\
button{margin-top:18px;width:100%;padding:12px;font-size:16px;border:0;border-radius:6px;\
background:#1d4ed8;color:#fff;cursor:pointer}\
button:disabled{opacity:.6}\
.hint{font-size:14px;color:#52525b;margin:8px 0 0}\
.good{color:#166534}.bad{color:#b91c1c}\
#outcome:empty{display:none}";

/// A complete page with the security headers of the module doc. `body` is trusted HTML
/// written by this module (anything from the request in it is escaped).
fn page(
    status: StatusCode,
    title: &str,
    body: &str,
    script: Option<&str>,
) -> Result<Response<Full<Bytes>>, Error> {
    let nonce = random_token().map_err(|e| Error::internal(e.0))?;
    let script = script.map_or_else(String::new, |s| {
        format!("<script nonce=\"{nonce}\">{s}</script>\n")
    });
    let html = format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta name=\"referrer\" content=\"no-referrer\">\n\
         <meta name=\"robots\" content=\"noindex, nofollow\">\n\
         <title>{title}</title>\n<style nonce=\"{nonce}\">{PAGE_STYLE}</style>\n</head>\n\
         <body>\n<main>\n<h1>{title}</h1>\n{body}\n</main>\n{script}</body>\n</html>\n",
        title = escape(title),
    );
    let csp = format!(
        "default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; \
         connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    );
    let mut response = Response::new(Full::new(Bytes::from(html)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_str(&csp).map_err(|e| Error::internal(format!("csp: {e}")))?,
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    Ok(response)
}

/// A page for a failure that is ours, not the user's; the cause goes to the log only.
fn error_page(error: Error) -> Result<Response<Full<Bytes>>, Error> {
    error.log("recovery-page");
    let status = error.status();
    let message = match status {
        StatusCode::TOO_MANY_REQUESTS => "Too many attempts. Wait a little and try again.",
        s if s.is_client_error() => "The request could not be understood. Open the link again.",
        _ => "Something went wrong on our side. Try again in a few minutes.",
    };
    page(
        status,
        "Something went wrong",
        &format!("<p class=\"bad\">{}</p>", escape(message)),
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expect: Option<&[(&str, &str)]>) {
        let parsed = parse_form(input.as_bytes());
        let expect: Option<Vec<(String, String)>> = expect.map(|pairs| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        });
        assert_eq!(parsed, expect, "{input:?}");
    }

    #[test]
    fn forms_decode() {
        check("", Some(&[]));
        check("a=1&b=2", Some(&[("a", "1"), ("b", "2")]));
        check("a=x+y%20z", Some(&[("a", "x y z")]));
        check("p=%C3%A4%26%3D", Some(&[("p", "ä&=")]));
        check("flag&x=", Some(&[("flag", ""), ("x", "")]));
        check("a=1&&b=2", Some(&[("a", "1"), ("b", "2")]));
        check("a=100%", Some(&[("a", "100%")]));
        check("a=%zz%4", Some(&[("a", "%zz%4")]));
        check("a=b=c", Some(&[("a", "b=c")]));
        check("a=%FF", None);
    }

    #[test]
    fn tokens_must_look_like_tokens() {
        assert!(well_formed("abc-DEF_123").is_some());
        assert!(well_formed(&"a".repeat(43)).is_some());
        assert!(well_formed("").is_none());
        assert!(well_formed("a b").is_none());
        assert!(well_formed("a\"><script>").is_none());
        assert!(well_formed(&"a".repeat(MAX_TOKEN_LEN + 1)).is_none());
    }

    #[test]
    fn cooldown_by_the_app_clock() {
        let recovery = Recovery::new(Duration::from_secs(120));
        assert_eq!(recovery.begin("r:a".into(), 1000), Ok(()));
        assert_eq!(recovery.begin("r:a".into(), 1001), Err(119));
        assert_eq!(recovery.begin("r:b".into(), 1001), Ok(()));
        assert_eq!(recovery.begin("r:a".into(), 1119), Err(1));
        assert_eq!(recovery.begin("r:a".into(), 1120), Ok(()));
        assert_eq!(recovery.begin("r:a".into(), 1200), Err(40));

        let off = Recovery::new(Duration::ZERO);
        assert_eq!(off.begin("r:a".into(), 1), Ok(()));
        assert_eq!(off.begin("r:a".into(), 1), Ok(()));
    }

    #[test]
    fn pages_carry_the_security_headers() {
        let response = page(StatusCode::OK, "T <x>", "<p>b</p>", Some("1;")).unwrap();
        let h = response.headers();
        let csp = h[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(csp.starts_with("default-src 'none';"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"));
        let nonce = csp
            .split("script-src 'nonce-")
            .nth(1)
            .and_then(|s| s.split('\'').next())
            .unwrap();
        assert!(nonce.len() >= 22);
        assert_eq!(h[header::REFERRER_POLICY], "no-referrer");
        assert_eq!(h[header::CACHE_CONTROL], "no-store");
        assert_eq!(h[header::X_FRAME_OPTIONS], "DENY");
        let again = page(StatusCode::OK, "T", "", None).unwrap();
        assert_ne!(
            again.headers()[header::CONTENT_SECURITY_POLICY],
            h[header::CONTENT_SECURITY_POLICY],
            "a fresh nonce per response"
        );
    }
}
