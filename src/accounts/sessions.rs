//! Sessions: login, refresh (rotation with reuse detection), logout.
//!
//! A session is a refresh-token family. Login opens one; every refresh replaces its token
//! (the old one is kept, marked rotated); presenting a rotated token again means it was
//! stolen or replayed, so the whole family is revoked, its access tokens with it.

use std::sync::Arc;

use super::users::revoke_user;
use super::{Caller, audit};
use crate::app::App;
use crate::error::{Error, TokenRefusal};
use crate::guard;
use crate::password::VerifyOutcome;
use crate::shared_limits::AuthClass;
use crate::store::{
    LockoutPolicy, MfaChallenge, Revocation, RotateOutcome, SessionRecord, UserRecord, UserUpdate,
    fold, new_id,
};
use crate::token::{AMR_OTP, AMR_PWD, Claims, Identity, random_token, token_hash};

/// Live sessions one user may hold; a new login past it revokes the oldest (and its access
/// tokens). Generous for people with many devices, small enough that a login loop cannot
/// bloat the store or the user's session list.
pub const MAX_SESSIONS_PER_USER: usize = 64;

/// Refresh tokens are 43 characters; anything much longer is not one and is refused before
/// hashing.
const MAX_REFRESH_TOKEN: usize = 256;

/// What a successful login or refresh hands the client (API.md §2).
#[derive(Debug)]
pub struct Grant {
    pub access_token: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    pub refresh_token: String,
    /// Seconds until the session (refresh token family) expires.
    pub refresh_expires_in: u64,
    pub user: UserRecord,
    /// The access token's `amr` (RFC 8176), also in the token response.
    pub amr: Vec<String>,
}

fn lockout_policy(app: &App) -> Option<LockoutPolicy> {
    let l = &app.live.config.auth.lockout;
    (l.max_failures > 0).then_some(LockoutPolicy {
        max_failures: l.max_failures,
        window_secs: l.window.as_secs(),
        lock_secs: l.duration.as_secs(),
    })
}

/// One guess of a secret (a password or a second-factor code) counted against a login
/// name *before* the secret is checked: check-then-count would let many parallel attempts
/// all pass the check and each get a guess. The store counts atomically and stops counting
/// once the name is locked, so with a threshold of max + 1 exactly `max` attempts per
/// window reach the check; the next one locks.
pub(super) struct Attempt {
    key: String,
    now: u64,
    policy: Option<LockoutPolicy>,
    /// The count after this attempt, and the max + 1 policy it was counted under.
    admitted: Option<(u32, LockoutPolicy)>,
}

impl Attempt {
    /// Counts an attempt for the folded login name `key`; `ACCOUNT_LOCKED` when it is
    /// locked.
    pub(super) async fn admit(
        app: &App,
        caller: Caller,
        key: String,
        event: &str,
    ) -> Result<Attempt, Error> {
        let now = app.clock.now();
        let policy = lockout_policy(app);
        let mut admitted = None;
        if let Some(policy) = policy {
            let ahead = LockoutPolicy {
                max_failures: policy.max_failures + 1,
                ..policy
            };
            let state = app.store.record_login_failure(&key, now, &ahead).await?;
            if let Some(until) = state.locked_until {
                audit(app, event, "locked_out", None, caller);
                return Err(Error::AccountLocked {
                    retry_after_secs: Some(until.saturating_sub(now).max(1)),
                });
            }
            admitted = Some((state.count, ahead));
        }
        Ok(Attempt {
            key,
            now,
            policy,
            admitted,
        })
    }

    /// The guess was wrong: the failure is already counted. The one that used up the
    /// budget locks the name now (one more count crosses the threshold), so `Retry-After`
    /// is exact. Returns the error to answer with.
    pub(super) async fn failed(
        self,
        app: &App,
        caller: Caller,
        user_id: Option<&str>,
    ) -> Result<Error, Error> {
        if let (Some((count, ahead)), Some(policy)) = (self.admitted, self.policy)
            && count > policy.max_failures.saturating_sub(1)
        {
            let state = app
                .store
                .record_login_failure(&self.key, self.now, &ahead)
                .await?;
            if let Some(until) = state.locked_until {
                audit(app, "lockout", "locked", user_id, caller);
                return Ok(Error::AccountLocked {
                    retry_after_secs: Some(until.saturating_sub(self.now).max(1)),
                });
            }
        }
        Ok(Error::InvalidCredentials)
    }

    /// A login completed: the name's failures are forgotten.
    pub(super) async fn completed(self, app: &App) -> Result<(), Error> {
        if self.policy.is_some() {
            app.store.clear_login_failures(&self.key).await?;
        }
        Ok(())
    }
}

/// Login by email or username (`login`). Unknown login names and wrong passwords are
/// indistinguishable: same error and the same argon2 work (a dummy hash stands in for a
/// missing user). Failures count per login name whether or not an account exists.
/// A user with a second factor gets `MFA_REQUIRED` and an `mfa_token` instead of tokens:
/// the attempt stays counted until `accounts::mfa::login` completes the login.
pub async fn login(
    app: &Arc<App>,
    caller: Caller,
    login: &str,
    password: String,
) -> Result<Grant, Error> {
    guard::limit_auth(app, AuthClass::Login, caller.ip).await?;
    if login.trim().is_empty() {
        return Err(Error::InvalidRequest(
            "email or username is required".into(),
        ));
    }
    let key = fold(login);
    let attempt = Attempt::admit(app, caller, key.clone(), "login").await?;

    // Read before the user is: see `mint_stable`.
    let epoch = app.revocation_epoch();
    let k = key.clone();
    let user = app.store.find_user_by_login(&k).await?;
    let stored = user.as_ref().map(|u| u.password_hash.clone());
    let outcome = app.hasher.verify(password.clone(), stored).await;
    let (user, needs_rehash) = match (user, outcome) {
        (Some(user), VerifyOutcome::Match { needs_rehash }) => (user, needs_rehash),
        (user, _) => {
            let user_id = user.as_ref().map(|u| u.id.clone());
            audit(app, "login", "failed", user_id.as_deref(), caller);
            return Err(attempt.failed(app, caller, user_id.as_deref()).await?);
        }
    };
    // An admin lock is revealed only to someone who knows the password.
    if user.locked {
        audit(app, "login", "account_locked", Some(&user.id), caller);
        return Err(Error::AccountLocked {
            retry_after_secs: None,
        });
    }
    if second_factor_enabled(app, &user).await? {
        // The challenge is bound to the stored hash, so a due upgrade is stored first: one
        // landing while the user types the code would void it.
        let user = if needs_rehash {
            let upgraded = rehash(app, &user.id, &user.password_hash, password).await;
            upgraded.unwrap_or(user)
        } else {
            user
        };
        let mfa_token = mfa_challenge(app, &user, &key).await?;
        // The password alone does not complete the login, so the attempt stays counted.
        audit(app, "login", "mfa_required", Some(&user.id), caller);
        return Err(Error::MfaRequired { mfa_token });
    }
    attempt.completed(app).await?;
    let grant = match open_session(app, &user, Some(&user.password_hash), epoch, false).await {
        // The password changed or the account was locked while argon2 ran.
        Err(Error::NotFound) => return Err(Error::InvalidCredentials),
        other => other?,
    };
    // Only now: the session is created only if the hash is still the one verified, so an
    // upgrade stored first would refuse this very login.
    if needs_rehash {
        rehash_later(app, &user.id, &user.password_hash, password);
    }
    audit(app, "login", "ok", Some(&user.id), caller);
    Ok(grant)
}

/// Whether the user has an enabled second factor (the login then answers `MFA_REQUIRED`).
async fn second_factor_enabled(app: &App, user: &UserRecord) -> Result<bool, Error> {
    Ok(matches!(app.store.get_mfa(&user.id).await?, Some(record) if record.enabled))
}

/// For a login whose password matched, of a user with a second factor: the `mfa_token`,
/// bound to the user's stored hash. `login` is the folded login name the password was
/// given for.
async fn mfa_challenge(app: &App, user: &UserRecord, login: &str) -> Result<String, Error> {
    let token = random_token().map_err(|e| Error::internal(e.0))?;
    let record = MfaChallenge {
        user_id: user.id.clone(),
        login: login.to_owned(),
        password_fingerprint: token_hash(&user.password_hash),
        expires_at: app.clock.now() + app.live.config.auth.mfa.challenge_ttl.as_secs(),
    };
    app.store
        .put_mfa_challenge(&token_hash(&token), &record)
        .await?;
    Ok(token)
}

/// Re-hashes a password whose stored hash uses old parameters or another scheme (an imported
/// bcrypt, scrypt, pbkdf2 or argon2 hash) into the configured argon2id, off the request path,
/// and counts it by the old scheme. Atomic and conditional: stored only if the hash is still
/// the one verified. Best effort: a failure leaves the old (still valid) hash.
fn rehash_later(app: &Arc<App>, user_id: &str, verified_hash: &str, password: String) {
    let app = app.clone();
    let id = user_id.to_string();
    let verified = verified_hash.to_string();
    tokio::spawn(async move {
        rehash(&app, &id, &verified, password).await;
    });
}

/// Hashes `password` with the configured argon2id and stores it if the user's hash is still
/// `verified`; counts the upgrade by the old scheme. The user as stored after it, `None` when
/// it was not stored. Awaited before a second-factor challenge (which binds the hash that
/// stays); after a completed login, [`rehash_later`] runs it in the background.
async fn rehash(app: &App, id: &str, verified: &str, password: String) -> Option<UserRecord> {
    let hash = app.hasher.hash(password).await.ok()?;
    let now = app.clock.now();
    let result = app
        .store
        .update_user(
            id,
            // Only if the password is still the one that was verified: a change or reset
            // meanwhile must never be undone by this job.
            &UserUpdate {
                password_hash: Some(hash),
                updated_at: now,
                if_password_hash: Some(verified.to_owned()),
                ..UserUpdate::default()
            },
        )
        .await;
    match result {
        Ok(user) => {
            let scheme = crate::imported_hash::scheme_of(verified)
                .map_or("unknown", crate::imported_hash::Scheme::label);
            app.metrics
                .password_upgrades
                .with_label_values(&[scheme])
                .inc();
            Some(user)
        }
        // The password changed meanwhile (a reset, or another login's upgrade): the hash
        // that was verified is gone, and this job must not undo its replacement.
        Err(crate::store::StoreError::NotFound) => None,
        Err(e) => {
            Error::from(e).log("rehash");
            None
        }
    }
}

/// Opens a session for a user and mints its tokens.
/// With `verified_hash`, the session is only created if the user's password hash is still
/// that one and the user is not locked (checked in the store's transaction). `epoch` is
/// the revocation epoch read before `user` was. `otp`: a second factor was passed too, so
/// the session's tokens carry `amr: ["pwd", "otp"]`.
pub async fn open_session(
    app: &App,
    user: &UserRecord,
    verified_hash: Option<&str>,
    epoch: u64,
    otp: bool,
) -> Result<Grant, Error> {
    let now = app.clock.now();
    let refresh = random_token().map_err(|e| Error::internal(e.0))?;
    let session = SessionRecord {
        id: new_id(),
        user_id: user.id.clone(),
        created_at: now,
        last_used_at: now,
        expires_at: now + app.live.config.tokens.refresh_ttl.as_secs(),
        revoked: false,
        otp,
    };
    let capped = app
        .store
        .create_session(
            &session,
            &token_hash(&refresh),
            verified_hash,
            MAX_SESSIONS_PER_USER,
        )
        .await?;
    // Sessions revoked to stay under the cap lose their access tokens too.
    for old in capped {
        app.revoke(Revocation::Session {
            sid: old.id,
            until: app.revocation_until(now),
        })
        .await?;
    }
    mint_stable(app, user.clone(), &session, refresh, now, epoch).await
}

/// Mints the token response for a user read after `epoch` was taken, and makes sure no
/// revocation slipped in between the read and the mint: if one did, the user and the
/// session are read again (fresh roles, lock and verification state) and the token minted
/// again. Once the epoch holds still across a mint, any later revocation's cutoff covers
/// the token's `iat`.
///
/// On a store other replicas share, the local epoch only moves once this replica's feed has
/// applied a change made elsewhere, which can be after the mint. So there the user and the
/// session are read again from the store after every mint: a change committed before that
/// read is seen (and the token minted again with it), and one committed after it carries a
/// cutoff at or past this token's `iat`, which covers it (given replica clocks agree to the
/// second).
async fn mint_stable(
    app: &App,
    mut user: UserRecord,
    session: &SessionRecord,
    refresh: String,
    now: u64,
    mut epoch: u64,
) -> Result<Grant, Error> {
    let shared = app.store.revocation_signal().is_some();
    loop {
        let grant = grant(app, &user, session, refresh.clone(), now)?;
        let after = app.revocation_epoch();
        if after == epoch && !shared {
            return Ok(grant);
        }
        epoch = after;
        let fresh = app.store.get_user(&user.id).await?;
        let current = app.store.get_session(&session.id).await?;
        match (fresh, current) {
            (Some(fresh), Some(current)) if !fresh.locked && !current.revoked => {
                if shared && app.revocation_epoch() == epoch && same_claims(&fresh, &user) {
                    return Ok(grant);
                }
                user = fresh;
            }
            _ => return Err(Error::Token(TokenRefusal::Revoked)),
        }
    }
}

/// Whether two reads of a user would mint the same claims.
fn same_claims(a: &UserRecord, b: &UserRecord) -> bool {
    a.roles == b.roles
        && a.email == b.email
        && a.email_verified == b.email_verified
        && a.locked == b.locked
}

/// Mints the access token for a session whose refresh token is `refresh`.
fn grant(
    app: &App,
    user: &UserRecord,
    session: &SessionRecord,
    refresh: String,
    now: u64,
) -> Result<Grant, Error> {
    let identity = Identity {
        user_id: &user.id,
        email: &user.email,
        roles: &user.roles,
        email_verified: user.email_verified,
        session_id: &session.id,
        min_iat: app.revocations.min_iat(&user.id),
        amr: if session.otp {
            &[AMR_PWD, AMR_OTP]
        } else {
            &[AMR_PWD]
        },
    };
    let (access, claims) = app
        .live
        .tokens
        .issue(&identity, now)
        .map_err(|e| Error::internal(format!("mint: {}", e.0)))?;
    Ok(Grant {
        access_token: access,
        expires_in: claims.exp.saturating_sub(now),
        refresh_token: refresh,
        refresh_expires_in: session.expires_at.saturating_sub(now),
        user: user.clone(),
        amr: claims.amr,
    })
}

/// Rotates a refresh token: the presented one is spent and a new one returned with a new
/// access token. A token presented again after rotation revokes its whole session.
pub async fn refresh(app: &App, caller: Caller, refresh_token: &str) -> Result<Grant, Error> {
    guard::limit_auth(app, AuthClass::Refresh, caller.ip).await?;
    if refresh_token.is_empty() || refresh_token.len() > MAX_REFRESH_TOKEN {
        return Err(Error::Token(TokenRefusal::Invalid("malformed")));
    }
    let now = app.clock.now();
    let old = token_hash(refresh_token);
    let next = random_token().map_err(|e| Error::internal(e.0))?;
    let new = token_hash(&next);
    let idle = app.live.config.tokens.refresh_idle_ttl.as_secs();
    let epoch = app.revocation_epoch();
    match app.store.rotate_refresh(&old, &new, now, idle).await? {
        RotateOutcome::Rotated { session, user } => {
            let grant = mint_stable(app, user, &session, next, now, epoch).await?;
            audit(app, "refresh", "ok", Some(&session.user_id), caller);
            Ok(grant)
        }
        RotateOutcome::Reused { session } => {
            app.revoke(Revocation::Session {
                sid: session.id.clone(),
                until: app.revocation_until(now),
            })
            .await?;
            tracing::warn!(
                target: "gatehouse::audit",
                event = "refresh_reuse",
                user_id = %session.user_id,
                session_id = %session.id,
                ip = %caller.ip,
                request_id = caller.request_id.as_str(),
                "refresh token reused: session revoked"
            );
            app.metrics.auth_event("refresh", "reuse");
            Err(Error::Token(TokenRefusal::Revoked))
        }
        RotateOutcome::Invalid => {
            audit(app, "refresh", "invalid", None, caller);
            Err(Error::Token(TokenRefusal::Invalid("refresh")))
        }
    }
}

/// Logout's first half: ends the session of `claims` at once (store, then the revocation
/// cache), before anything else about the request is looked at, so a client whose logout
/// request is otherwise unreadable does not stay logged in. Returns whether the session was
/// still live.
pub async fn end_session(app: &App, claims: &Claims) -> Result<bool, Error> {
    let now = app.clock.now();
    let sid = claims.sid.clone();
    let revoked = app.store.revoke_session(&sid).await?;
    app.revoke(Revocation::Session {
        sid: claims.sid.clone(),
        until: app.revocation_until(now),
    })
    .await?;
    Ok(revoked.is_some())
}

/// Logout's second half: with `all_sessions`, every other session of the user ends too.
/// Audited; returns how many sessions ended, counting `ended` (from [`end_session`]).
pub async fn finish_logout(
    app: &App,
    caller: Caller,
    claims: &Claims,
    ended: bool,
    all_sessions: bool,
) -> Result<usize, Error> {
    let mut sessions = usize::from(ended);
    if all_sessions {
        sessions += revoke_user(app, &claims.sub, None).await?;
    }
    let event = if all_sessions { "logout_all" } else { "logout" };
    audit(app, event, "ok", Some(&claims.sub), caller);
    Ok(sessions)
}
