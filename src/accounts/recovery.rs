//! Account recovery and email verification, the service half: forgot-password, reset
//! tokens, verify-email and its resend (API.md §2). The endpoints and pages that call this
//! are `auth/recovery.rs` and `auth/pages.rs`.
//!
//! The tokens. A reset or verification token is 32 bytes from the OS RNG in base64url
//! ([`random_token`](crate::token::random_token)); the store keeps only its SHA-256 ([`token_hash`](crate::token::token_hash)) with the user, the
//! address it was mailed to and its expiry (`auth.reset_token_ttl`, `auth.verify_token_ttl`).
//! The two kinds live apart ([`OneTimeKind`]), so a reset token is refused by verify-email and
//! a verification token by the reset endpoints, with the same `INVALID_RESET_TOKEN` as an
//! unknown one. Issuing a token voids the user's older one of the same kind (the store does
//! it), so only the latest link works; a password change voids pending reset tokens
//! ([`set_password`]). A token is also refused once the account's address differs from
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
//! - **What a reset does.** It sets the password through [`set_password`] (every
//!   session and access token of the user revoked, pending reset tokens voided), clears the
//!   failed-login counters of the user's login names (a locked-out user recovers by
//!   resetting), marks the address verified (the link proved the user reads mail there) and
//!   mails a "your password was changed" notice.
//! - **Never verify on GET.** Mail scanners and link previews fetch every link in a mail. A
//!   GET that consumed the token would verify addresses nobody looked at (and burn reset
//!   links before the user clicks). So `GET …/verify-email?token=…` only serves a page with a
//!   button that POSTs the token, and the GET reset page only peeks at the token.
//! - **Tokens stay out of logs.** The access log records no path or query; nothing here logs
//!   a token, a link or a password, and errors carry fixed messages.

use std::sync::Arc;

use super::users::{check_email, clear_lockouts, current_user, hash_new_password, set_password};
use super::{Caller, audit};
use crate::app::App;
use crate::email::Mail;
use crate::error::{Error, Limited};
use crate::guard;
use crate::shared_limits::AuthClass;
use crate::store::{
    OneTimeKind, OneTimeRecord, StoreError, TokenHash, UserRecord, UserUpdate, fold,
};
use crate::token::{Claims, random_token, token_hash};

/// Tokens are 43 characters; anything much longer is not one and is refused before hashing.
const MAX_TOKEN_LEN: usize = 128;

/// Forgot-password: the same outcome whether or not the address has an account (see the
/// module doc). Returns the reset token only under `auth.expose_debug_tokens`, when the work
/// runs inline; otherwise the lookup, token and mail happen in the background and `None`
/// comes back at once.
pub async fn forgot_password(
    app: &Arc<App>,
    caller: Caller,
    email: &str,
) -> Result<Option<String>, Error> {
    guard::limit_auth(app, AuthClass::ForgotPassword, caller.ip).await?;
    let email = email.trim();
    if let Err(reason) = check_email(email) {
        return Err(Error::ValidationFailed(vec![(
            "email".into(),
            reason.to_string(),
        )]));
    }
    let email = fold(email);
    let cooldown_key = format!("r:{email}");
    if app
        .live
        .cooldowns
        .begin(&cooldown_key, app.clock.now())
        .await
        .is_err()
    {
        app.metrics.auth_event("forgot_password", "cooldown");
        return Ok(None);
    }
    if app.live.config.auth.expose_debug_tokens {
        return issue_reset(app, &email, caller).await;
    }
    match app.background_jobs.clone().try_acquire_owned() {
        Ok(permit) => {
            let app = app.clone();
            tokio::spawn(async move {
                if let Err(e) = issue_reset(&app, &email, caller).await {
                    e.log("forgot-password");
                }
                drop(permit);
            });
        }
        Err(_) => {
            // Nothing was sent, so the address must not sit in its cooldown: the user's
            // retry a moment later has to get through.
            app.live.cooldowns.cancel(&cooldown_key).await;
            app.metrics.auth_event("forgot_password", "shed");
            tracing::warn!(
                target: "gatehouse::audit",
                event = "forgot_password",
                outcome = "shed",
                ip = %caller.ip,
                request_id = caller.request_id.as_str(),
                "too many forgot-password requests in progress; request dropped"
            );
        }
    }
    Ok(None)
}

/// Looks the address up and, for an unlocked account, stores a reset token and mails the
/// link. Returns the token (for `expose_debug_tokens`) when one was issued.
async fn issue_reset(app: &App, email: &str, caller: Caller) -> Result<Option<String>, Error> {
    let user = app.store.find_user_by_email(email).await?;
    let Some(user) = user.filter(|u| !u.locked) else {
        audit(app, "forgot_password", "no_account", None, caller);
        return Ok(None);
    };
    let token = issue(app, OneTimeKind::PasswordReset, &user).await?;
    app.mailer.send(Mail::reset(
        &app.live.config.email,
        &user.email,
        &token,
        app.live.config.auth.reset_token_ttl,
    ));
    audit(app, "forgot_password", "mailed", Some(&user.id), caller);
    Ok(Some(token))
}

/// Stores a fresh token of `kind` for `user` (voiding the older one) and returns it.
async fn issue(app: &App, kind: OneTimeKind, user: &UserRecord) -> Result<String, Error> {
    let token = random_token().map_err(|e| Error::internal(e.0))?;
    let ttl = match kind {
        OneTimeKind::PasswordReset => app.live.config.auth.reset_token_ttl,
        OneTimeKind::EmailVerification => app.live.config.auth.verify_token_ttl,
    };
    let record = OneTimeRecord {
        user_id: user.id.clone(),
        email: user.email.clone(),
        expires_at: app.clock.now().saturating_add(ttl.as_secs()),
    };
    let hash = token_hash(&token);
    app.store.put_one_time(kind, &hash, &record).await?;
    Ok(token)
}

/// A token as presented: base64url of a sane length, or refused before any lookup.
pub fn well_formed(token: &str) -> Option<&str> {
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
        .store
        .peek_one_time(kind, &hash, now)
        .await?
        .ok_or(Error::InvalidResetToken)?;
    let user = app
        .store
        .get_user(&record.user_id)
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
    app.store
        .take_one_time(kind, &hash, now)
        .await?
        .filter(|r| r.user_id == user.id)
        .ok_or(Error::InvalidResetToken)
}

/// Whether a reset link is live now (for the validate endpoint and the reset page); does
/// not consume it. Returns the seconds it has left.
pub async fn check_reset(app: &App, token: &str) -> Result<u64, Error> {
    Ok(reset_link(app, token).await?.expires_in)
}

/// A live reset link: what the reset page needs to know about it.
#[derive(Debug, Clone)]
pub struct ResetLink {
    /// Seconds until the link expires.
    pub expires_in: u64,
    /// The account's email address: the page's hidden username field, so a password manager
    /// files the new password under the right account. Only the link's holder sees it.
    pub email: String,
}

/// Whether a reset link is live now, and for which account; does not consume it.
pub async fn reset_link(app: &App, token: &str) -> Result<ResetLink, Error> {
    let (_, record, user) = live_token(app, OneTimeKind::PasswordReset, token).await?;
    Ok(ResetLink {
        expires_in: record.expires_at.saturating_sub(app.clock.now()),
        email: user.email,
    })
}

/// Whether a verification link is live now (for the verify page); does not consume it.
pub async fn check_verification(app: &App, token: &str) -> Result<(), Error> {
    live_token(app, OneTimeKind::EmailVerification, token)
        .await
        .map(|_| ())
}

/// Resets a password with a mailed token; see the module doc for the order of the steps.
pub async fn reset_password(
    app: &App,
    caller: Caller,
    token: &str,
    new_password: String,
) -> Result<(), Error> {
    let (hash, _, user) = live_token(app, OneTimeKind::PasswordReset, token)
        .await
        .inspect_err(|_| audit(app, "password_reset", "invalid_token", None, caller))?;
    let password_hash =
        hash_new_password(app, new_password, &user.email, user.username.as_deref()).await?;
    consume(app, OneTimeKind::PasswordReset, hash, &user)
        .await
        .inspect_err(|_| audit(app, "password_reset", "invalid_token", None, caller))?;
    set_password(app, &user.id, password_hash, None).await?;

    clear_lockouts(app, &user).await?;
    // The link reached the user at this address: it is verified now (unless the address
    // changed meanwhile).
    let verified = UserUpdate {
        email_verified: Some(true),
        updated_at: app.clock.now(),
        if_email: Some(user.email.clone()),
        ..UserUpdate::default()
    };
    match app.store.update_user(&user.id, &verified).await {
        Ok(_) | Err(StoreError::NotFound) => {}
        Err(e) => return Err(e.into()),
    }
    app.mailer
        .send(Mail::password_changed(&user.email, app.clock.now()));
    audit(app, "password_reset", "ok", Some(&user.id), caller);
    Ok(())
}

/// Verifies the address a token was mailed to. Single use.
pub async fn verify_email(app: &App, caller: Caller, token: &str) -> Result<UserRecord, Error> {
    let (hash, record, user) = live_token(app, OneTimeKind::EmailVerification, token)
        .await
        .inspect_err(|_| audit(app, "email_verification", "invalid_token", None, caller))?;
    consume(app, OneTimeKind::EmailVerification, hash, &user).await?;
    // The address may have changed between the check and now.
    let verified = UserUpdate {
        email_verified: Some(true),
        updated_at: app.clock.now(),
        if_email: Some(record.email.clone()),
        ..UserUpdate::default()
    };
    let updated = app
        .store
        .update_user(&user.id, &verified)
        .await
        .map_err(Error::from);
    let user = match updated {
        Ok(user) => user,
        Err(Error::NotFound) => return Err(Error::InvalidResetToken),
        Err(e) => return Err(e),
    };
    audit(app, "email_verification", "ok", Some(&user.id), caller);
    Ok(user)
}

/// What asking for a new verification link did.
#[derive(Debug)]
pub enum Resent {
    /// Nothing to do: the address is verified.
    AlreadyVerified,
    /// A new link was mailed; the token only under `auth.expose_debug_tokens`.
    Sent { debug_token: Option<String> },
}

/// Mails a new verification link to a signed-in user. Two budgets apply, both answered with
/// a 429 that says so ([`Limited::VerificationMail`]): the `verify_email_resend` rate limit
/// per client address, and a per-account cooldown of `auth.forgot_cooldown` between two
/// links (which may be told, since the caller owns the account).
pub async fn resend_verification(
    app: &App,
    caller: Caller,
    claims: &Claims,
) -> Result<Resent, Error> {
    guard::limit_auth(app, AuthClass::VerifyEmailResend, caller.ip)
        .await
        .map_err(Error::about_verification_mail)?;
    let user = current_user(app, claims).await?;
    if user.email_verified {
        return Ok(Resent::AlreadyVerified);
    }
    // The caller is the account holder, so unlike forgot-password the cooldown may say so.
    if let Err(left) = app
        .live
        .cooldowns
        .begin(&format!("v:{}", user.id), app.clock.now())
        .await
    {
        return Err(Error::RateLimited {
            retry_after_secs: left.max(1),
            quota: None,
            what: Limited::VerificationMail,
        });
    }
    let token = send_verification(app, &user).await?;
    audit(app, "email_verification", "resent", Some(&user.id), caller);
    Ok(Resent::Sent {
        debug_token: app.live.config.auth.expose_debug_tokens.then_some(token),
    })
}

/// Mails a fresh verification link to `user`; returns the token.
async fn send_verification(app: &App, user: &UserRecord) -> Result<String, Error> {
    let token = issue(app, OneTimeKind::EmailVerification, user).await?;
    app.mailer.send(Mail::verify(
        &app.live.config.email,
        &user.email,
        &token,
        app.live.config.auth.verify_token_ttl,
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
        .live
        .cooldowns
        .begin(&format!("v:{}", user.id), app.clock.now())
        .await;
    if let Err(e) = send_verification(app, user).await {
        e.log("register");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_must_look_like_tokens() {
        assert!(well_formed("abc-DEF_123").is_some());
        assert!(well_formed(&"a".repeat(43)).is_some());
        assert!(well_formed("").is_none());
        assert!(well_formed("a b").is_none());
        assert!(well_formed("a\"><script>").is_none());
        assert!(well_formed(&"a".repeat(MAX_TOKEN_LEN + 1)).is_none());
    }
}
