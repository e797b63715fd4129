//! The TOTP second factor (RFC 6238): setup, confirmation, the second step of a login,
//! disabling, and an administrator's reset. The codes and the sealing are [`crate::mfa`]'s;
//! this module holds the rules:
//!
//! - **Setup** stores a *pending* secret (sealed under `auth.mfa.encryption_key`); calling it
//!   again replaces a pending one; an enabled factor must be disabled first (409).
//! - **Confirm** takes the first code: the factor is enabled with that code's step as the
//!   last accepted one (so the code cannot be replayed to log in) and ten recovery codes
//!   are returned once and stored as SHA-256.
//! - **Login** with a correct password answers `MFA_REQUIRED` with an `mfa_token`
//!   (`sessions::login` issues it, so that this module depends on `sessions` and not the
//!   other way): 256 bits,
//!   stored hashed, single use, `auth.mfa.challenge_ttl` long, bound to the user, the login
//!   name and the password hash that was verified (a password change, a reset or a lock
//!   voids it). [`login`] spends it with a code or a recovery code. A code's step must be
//!   later than the last accepted one (one conditional write in the store, so it holds
//!   across replicas); a recovery code is removed as it is used. Each code is counted against
//!   the login name's lockout before it is checked, exactly like a password, and only a
//!   completed login clears the count.
//! - **Disable** needs the password (a wrong one counts like a failed login); an **admin
//!   reset** removes the factor without it. Both are audited.

use super::sessions::{Attempt, Grant, open_session};
use super::{Caller, admin, audit};
use crate::app::App;
use crate::error::Error;
use crate::guard;
use crate::mfa::{self, Sealer};
use crate::password::VerifyOutcome;
use crate::shared_limits::AuthClass;
use crate::store::{MfaRecord, fold};
use crate::token::{Claims, ct_eq, token_hash};

/// `mfa_token`s are 43 characters; anything much longer is refused before hashing.
const MAX_MFA_TOKEN: usize = 256;
/// Recovery codes are 19 characters; generous room for spaces a user may type.
const MAX_RECOVERY_CODE: usize = 64;

/// What a setup hands the user: the base32 secret and the `otpauth://` URL.
#[derive(Debug)]
pub struct Provisioning {
    pub secret: String,
    pub otpauth_url: String,
}

/// The second step of a login: a TOTP code or a recovery code.
#[derive(Debug)]
pub enum SecondFactor {
    Code(String),
    RecoveryCode(String),
}

fn sealer(app: &App) -> Result<Sealer, Error> {
    let key = &app.live.config.auth.mfa.encryption_key;
    if key.is_empty() {
        return Err(Error::MfaNotConfigured);
    }
    Sealer::new(key.expose().as_bytes()).map_err(|e| Error::internal(e.0))
}

/// `POST {prefix}/mfa/totp/setup`: a new pending secret for the caller.
pub async fn setup(app: &App, caller: Caller, claims: &Claims) -> Result<Provisioning, Error> {
    let sealer = sealer(app)?;
    let user = super::users::current_user(app, claims).await?;
    let secret = mfa::new_secret().map_err(|e| Error::internal(e.0))?;
    let record = MfaRecord {
        user_id: user.id.clone(),
        secret: sealer
            .seal(&user.id, &secret)
            .map_err(|e| Error::internal(e.0))?,
        enabled: false,
        last_step: 0,
        recovery_codes: Vec::new(),
        created_at: app.clock.now(),
    };
    if !app.store.put_mfa_pending(&record).await? {
        return Err(already_enabled());
    }
    let (secret, otpauth_url) =
        mfa::provisioning(&secret, &app.live.config.auth.mfa.issuer, &user.email)
            .map_err(|e| Error::internal(e.0))?;
    audit(app, "mfa_setup", "ok", Some(&user.id), caller);
    Ok(Provisioning {
        secret,
        otpauth_url,
    })
}

fn already_enabled() -> Error {
    Error::MfaState("TOTP is already enabled; disable it first to set it up again")
}

/// `POST {prefix}/mfa/totp/confirm {code}`: enables the pending secret and returns the
/// recovery codes, the only time they are ever shown.
pub async fn confirm(
    app: &App,
    caller: Caller,
    claims: &Claims,
    code: &str,
) -> Result<Vec<String>, Error> {
    let sealer = sealer(app)?;
    let user = super::users::current_user(app, claims).await?;
    let record = match app.store.get_mfa(&user.id).await? {
        Some(record) if record.enabled => return Err(already_enabled()),
        Some(record) => record,
        None => {
            return Err(Error::MfaState(
                "no TOTP setup is pending; call setup first",
            ));
        }
    };
    let secret = sealer
        .open(&user.id, &record.secret)
        .map_err(|e| Error::internal(e.0))?;
    let Some(step) = mfa::matching_step(&secret, code, app.clock.now()) else {
        audit(app, "mfa_confirm", "failed", Some(&user.id), caller);
        return Err(Error::ValidationFailed(vec![(
            "code".into(),
            "does not match the current code of the secret being set up".into(),
        )]));
    };
    let codes = mfa::new_recovery_codes().map_err(|e| Error::internal(e.0))?;
    let hashes: Vec<_> = codes.iter().map(|c| mfa::recovery_code_hash(c)).collect();
    if !app
        .store
        .enable_mfa(&user.id, &record.secret, step, &hashes)
        .await?
    {
        // A setup or a confirmation raced this one.
        return Err(Error::MfaState(
            "the pending TOTP setup changed meanwhile; set it up again",
        ));
    }
    audit(app, "mfa_confirm", "ok", Some(&user.id), caller);
    Ok(codes)
}

/// `POST {prefix}/login/mfa {mfa_token, code | recovery_code}`: completes a login with
/// the second factor. Every refusal is `INVALID_CREDENTIALS` (or `ACCOUNT_LOCKED`), whatever
/// was wrong: token, code, replay, or a password changed meanwhile.
pub async fn login(
    app: &App,
    caller: Caller,
    mfa_token: &str,
    factor: SecondFactor,
) -> Result<Grant, Error> {
    guard::limit_auth(app, AuthClass::Login, caller.ip).await?;
    let now = app.clock.now();
    if mfa_token.is_empty() || mfa_token.len() > MAX_MFA_TOKEN {
        return Err(Error::InvalidCredentials);
    }
    // Spent whatever follows: a wrong code means entering the password again.
    let Some(challenge) = app
        .store
        .take_mfa_challenge(&token_hash(mfa_token), now)
        .await?
    else {
        audit(app, "login_mfa", "invalid_token", None, caller);
        return Err(Error::InvalidCredentials);
    };
    let epoch = app.revocation_epoch();
    let user = app.store.get_user(&challenge.user_id).await?;
    let record = app.store.get_mfa(&challenge.user_id).await?;
    let (user, record) = match (user, record) {
        (Some(user), Some(record))
            if record.enabled
                && !user.locked
                && ct_eq(
                    &challenge.password_fingerprint,
                    &token_hash(&user.password_hash),
                ) =>
        {
            (user, record)
        }
        _ => {
            // Locked, deleted, password changed or reset, factor removed: not a guess.
            audit(
                app,
                "login_mfa",
                "challenge_void",
                Some(&challenge.user_id),
                caller,
            );
            return Err(Error::InvalidCredentials);
        }
    };
    // Before the attempt is counted: a server without its key is not the user's guess.
    let sealer = match factor {
        SecondFactor::Code(_) => Some(sealer(app).inspect_err(|_| {
            // A user has a second factor the server can no longer check: only the
            // operator can fix that, so say it where they look.
            tracing::warn!(
                user_id = %user.id,
                "a TOTP code cannot be checked: auth.mfa.encryption_key is not set; \
                 only recovery codes work until it is restored"
            );
        })?),
        SecondFactor::RecoveryCode(_) => None,
    };
    let attempt = Attempt::admit(app, caller, challenge.login.clone(), "login_mfa").await?;
    let (accepted, method) = match (&factor, sealer) {
        (SecondFactor::Code(code), Some(sealer)) => {
            let secret = sealer
                .open(&user.id, &record.secret)
                .map_err(|e| Error::internal(e.0))?;
            let accepted = match mfa::matching_step(&secret, code, now) {
                // Refused unless later than the last accepted step: a code works once.
                Some(step) => app.store.accept_mfa_step(&user.id, step).await?,
                None => false,
            };
            (accepted, "totp")
        }
        (SecondFactor::Code(_), None) => (false, "totp"),
        (SecondFactor::RecoveryCode(code), _) => {
            let accepted = code.len() <= MAX_RECOVERY_CODE
                && app
                    .store
                    .take_recovery_code(&user.id, &mfa::recovery_code_hash(code))
                    .await?;
            (accepted, "recovery_code")
        }
    };
    if !accepted {
        audit(app, "login_mfa", "failed", Some(&user.id), caller);
        return Err(attempt.failed(app, caller, Some(&user.id)).await?);
    }
    attempt.completed(app).await?;
    let grant = match open_session(app, &user, Some(&user.password_hash), epoch, true).await {
        // The password changed or the account was locked meanwhile.
        Err(Error::NotFound) => return Err(Error::InvalidCredentials),
        other => other?,
    };
    let outcome = if method == "totp" {
        "ok"
    } else {
        "ok_recovery_code"
    };
    audit(app, "login_mfa", outcome, Some(&user.id), caller);
    Ok(grant)
}

/// `DELETE {prefix}/mfa/totp {password}`: the caller turns the second factor off. The
/// password is checked like a login's (rate limit, lockout of the account's email).
pub async fn disable(
    app: &App,
    caller: Caller,
    claims: &Claims,
    password: String,
) -> Result<(), Error> {
    guard::limit_auth(app, AuthClass::Login, caller.ip).await?;
    let user = super::users::current_user(app, claims).await?;
    if app.store.get_mfa(&user.id).await?.is_none() {
        return Err(Error::MfaState("TOTP is not set up"));
    }
    let attempt = Attempt::admit(app, caller, fold(&user.email), "mfa_disable").await?;
    match app
        .hasher
        .verify(password, Some(user.password_hash.clone()))
        .await
    {
        VerifyOutcome::Match { .. } => {}
        VerifyOutcome::Mismatch => {
            audit(app, "mfa_disable", "wrong_password", Some(&user.id), caller);
            return Err(attempt.failed(app, caller, Some(&user.id)).await?);
        }
    }
    attempt.completed(app).await?;
    app.store.delete_mfa(&user.id).await?;
    audit(app, "mfa_disable", "ok", Some(&user.id), caller);
    Ok(())
}

/// `DELETE {prefix}/admin/users/{id}/mfa`: an administrator removes a user's second factor
/// (a lost phone and lost recovery codes). `NOT_FOUND` for an unknown user, 409 when there
/// is nothing to reset.
pub async fn admin_reset(app: &App, actor: admin::Actor<'_>, user_id: &str) -> Result<(), Error> {
    let user = admin::get(app, user_id).await?;
    if !app.store.delete_mfa(&user.id).await? {
        return Err(Error::MfaState("the user has no second factor"));
    }
    admin::audit(app, "admin_reset_mfa", actor, &user.id);
    Ok(())
}
