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
    LockoutPolicy, Revocation, RotateOutcome, SessionRecord, UserRecord, UserUpdate, fold, new_id,
};
use crate::token::{Claims, Identity, random_token, token_hash};

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
}

fn lockout_policy(app: &App) -> Option<LockoutPolicy> {
    let l = &app.live.config.auth.lockout;
    (l.max_failures > 0).then_some(LockoutPolicy {
        max_failures: l.max_failures,
        window_secs: l.window.as_secs(),
        lock_secs: l.duration.as_secs(),
    })
}

/// Login by email or username (`login`). Unknown login names and wrong passwords are
/// indistinguishable: same error and the same argon2 work (a dummy hash stands in for a
/// missing user). Failures count per login name whether or not an account exists.
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
    let now = app.clock.now();
    let policy = lockout_policy(app);

    // The attempt is counted *before* the password is checked: check-then-count would let
    // many parallel attempts all pass the check and each get a guess. The store counts
    // atomically and stops counting once the name is locked, so with a threshold of
    // max + 1 exactly `max` attempts per window reach argon2; the next one locks.
    let mut admitted = None;
    if let Some(policy) = policy {
        let ahead = LockoutPolicy {
            max_failures: policy.max_failures + 1,
            ..policy
        };
        let k = key.clone();
        let state = app.store.record_login_failure(&k, now, &ahead).await?;
        if let Some(until) = state.locked_until {
            audit(app, "login", "locked_out", None, caller);
            return Err(Error::AccountLocked {
                retry_after_secs: Some(until.saturating_sub(now).max(1)),
            });
        }
        admitted = Some((state.count, ahead));
    }

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
            // The failure is already counted. The one that used up the budget locks the
            // name now (one more count crosses the threshold) so Retry-After is exact.
            if let Some((count, ahead)) = admitted
                && count > policy.map_or(u32::MAX, |p| p.max_failures.saturating_sub(1))
            {
                let k = key.clone();
                let state = app.store.record_login_failure(&k, now, &ahead).await?;
                if let Some(until) = state.locked_until {
                    audit(app, "lockout", "locked", user_id.as_deref(), caller);
                    return Err(Error::AccountLocked {
                        retry_after_secs: Some(until.saturating_sub(now).max(1)),
                    });
                }
            }
            return Err(Error::InvalidCredentials);
        }
    };
    // An admin lock is revealed only to someone who knows the password.
    if user.locked {
        audit(app, "login", "account_locked", Some(&user.id), caller);
        return Err(Error::AccountLocked {
            retry_after_secs: None,
        });
    }
    if policy.is_some() {
        app.store.clear_login_failures(&key).await?;
    }
    if needs_rehash {
        rehash_later(app, &user.id, &user.password_hash, password);
    }
    let grant = match open_session(app, &user, Some(&user.password_hash), epoch).await {
        // The password changed or the account was locked while argon2 ran.
        Err(Error::NotFound) => return Err(Error::InvalidCredentials),
        other => other?,
    };
    audit(app, "login", "ok", Some(&user.id), caller);
    Ok(grant)
}

/// Re-hashes a password whose stored hash uses old parameters, off the request path. Best
/// effort: a failure leaves the old (still valid) hash.
fn rehash_later(app: &Arc<App>, user_id: &str, verified_hash: &str, password: String) {
    let app = app.clone();
    let id = user_id.to_string();
    let verified = verified_hash.to_string();
    tokio::spawn(async move {
        let Ok(hash) = app.hasher.hash(password).await else {
            return;
        };
        let now = app.clock.now();
        let result = app
            .store
            .update_user(
                &id,
                // Only if the password is still the one that was verified: a change or reset
                // meanwhile must never be undone by this job.
                &UserUpdate {
                    password_hash: Some(hash),
                    updated_at: now,
                    if_password_hash: Some(verified),
                    ..UserUpdate::default()
                },
            )
            .await;
        // `NotFound` here means the password changed meanwhile: nothing to do.
        if let Err(e) = result.map_err(Error::from) {
            e.log("rehash");
        }
    });
}

/// Opens a session for a user and mints its tokens.
/// With `verified_hash`, the session is only created if the user's password hash is still
/// that one and the user is not locked (checked in the store's transaction). `epoch` is
/// the revocation epoch read before `user` was.
pub async fn open_session(
    app: &App,
    user: &UserRecord,
    verified_hash: Option<&str>,
    epoch: u64,
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
