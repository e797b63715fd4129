//! The identity store: users, sessions (refresh-token families), revocations, login-failure
//! counters and one-time tokens, behind one [`Store`] trait.
//!
//! Only this module (and its [`sled`] and [`postgres`] implementations) knows how identity
//! data is kept; handlers see plain record types and [`StoreError`]. [`open`] is the one
//! place that picks a backend (`store.backend`). Decisions, and why:
//!
//! - **An async trait, [`Store`], over two kinds of backend.** PostgreSQL is reached through an
//!   async driver and pool, so the trait the app holds (`Arc<dyn Store>`) is async. sled is a
//!   blocking embedded database: it implements the synchronous [`SyncStore`] and [`Blocking`]
//!   adapts it, running each call on tokio's blocking pool so an fsync never stalls a runtime
//!   thread. The written contract is the same for both, and one contract test suite runs
//!   against every backend.
//! - **Durability.** An `Ok` from a write means the write is on disk: implementations flush
//!   before returning, so an acknowledged registration, rotation or revocation survives a crash.
//! - **Atomicity.** Every operation that touches more than one key (a user and its unique
//!   indexes, a rotation and its session) is one transaction: a failure leaves nothing behind.
//! - **Times are injected.** All timestamps are Unix seconds (`u64`) supplied by the caller; the
//!   store never reads the clock, which keeps expiry logic testable.
//! - **Secrets never reach the store in clear.** Refresh and one-time tokens are stored as
//!   SHA-256 hashes ([`crate::token::token_hash`]); a leaked store file does not yield usable tokens. Password
//!   hashes are argon2id strings produced by `password.rs` and are redacted from `Debug` output.
//! - **Case-folded uniqueness.** Emails and usernames are unique after [`fold`] (trim and
//!   lowercase), so `Alice@Example.com` and `alice@example.com ` are the same account, while the
//!   record keeps the spelling the user chose.
//! - **Purging** (`Store::purge_expired`, run by `App::start` shortly after start and then
//!   periodically, never before `/readyz`, so start-up reads no dead data). Only records whose
//!   absence cannot let a token through are removed; the argument, kind by kind:
//!   - *An expired session and every refresh hash of its family.* Rotation refuses a family
//!     past `expires_at` whatever its tokens say, and expiry cannot be undone, so a removed
//!     hash (now "unknown", [`RotateOutcome::Invalid`]) is refused exactly as before. This is
//!     where "reuse detection needs a rotated token only until its family expires" ends.
//!   - *A revoked session and every refresh hash of its family, once `revoked_grace_secs`
//!     have passed since its last use.* Revocation cannot be undone and a revoked family
//!     never rotates, so each of its hashes is refused whether it is stored or not; the only
//!     difference is the answer to a replayed rotated hash: `Reused` (which records a session
//!     revocation for the family's access tokens) before, `Invalid` after. Every access token
//!     of a family was minted at or before its `last_used_at` (each rotation sets it to the
//!     minting time), so once `revoked_grace_secs` (the access-token lifetime plus leeway and
//!     a margin, chosen by the app) have passed since then, none of them verifies any more and
//!     that extra revocation would cover nothing.
//!   - *Live families are untouched*: their rotated hashes are what recognises a replay, so
//!     they stay until the family expires or is revoked and purged.
//!   - *One-time tokens past `expires_at`*: taking one refuses it when expired anyway; a
//!     spent token is already gone (taking removes it).
//!   - *Revocations past `until`*: `until` is the moment every access token they cover has
//!     expired (issue time + access lifetime + leeway), so nothing they could refuse still
//!     verifies. On PostgreSQL they are also the feed; a replica that never applied one
//!     loses nothing, for the same reason.
//!   - *Login-failure counters past `expires_at`*: [`failure_state`] reads them as clean.
//!   - *Second-factor challenges (`mfa_token`s) past `expires_at`*: taking one refuses it
//!     when expired anyway.
//!
//!   A crash half-way through a purge leaves hashes whose session is gone; they resolve to
//!   `Invalid` and the next purge removes them.
//! - **Copying between stores** (`gatehouse store copy`) is part of the trait: each backend
//!   exports every record and imports a stream of them, under the contract written in
//!   [`copy`].

pub mod copy;
pub mod postgres;
pub mod sled;

/// Opens the store the configuration names. The only place that picks a backend: neither
/// the app nor the `user` CLI names one. Opening sled happens on the blocking pool;
/// opening PostgreSQL applies pending migrations first (under a lock, so replicas starting
/// together are safe) and starts the revocation listener on the current runtime.
pub async fn open(config: &crate::config::Config) -> Result<Arc<dyn Store>, StoreError> {
    match config.store.backend {
        StoreBackend::Sled => {
            let path = config.store.path.clone();
            let store = tokio::task::spawn_blocking(move || sled::SledStore::open(&path))
                .await
                .map_err(|e| StoreError::Io(format!("store task: {e}")))??;
            Ok(Arc::new(Blocking(Arc::new(store))))
        }
        StoreBackend::Postgres => Ok(Arc::new(postgres::PgStore::open(&config.store).await?)),
    }
}

/// For `gatehouse store copy`: the source, opened without changing it: a sled directory must exist; a PostgreSQL
/// schema must be at this binary's version (it is not migrated).
pub(crate) async fn open_copy_source(
    config: &StoreConfig,
) -> Result<Arc<dyn Store>, copy::CopyError> {
    match config.backend {
        StoreBackend::Sled => {
            if !config.path.is_dir() {
                return Err(copy::CopyError::NoSource(config.path.clone()));
            }
            let path = config.path.clone();
            let store = tokio::task::spawn_blocking(move || sled::SledStore::open(&path))
                .await
                .map_err(|e| copy::CopyError::Source(StoreError::Io(format!("store task: {e}"))))?
                .map_err(copy::CopyError::Source)?;
            Ok(Arc::new(Blocking(Arc::new(store))))
        }
        StoreBackend::Postgres => Ok(Arc::new(
            postgres::PgStore::open_existing(config)
                .await
                .map_err(copy::CopyError::Source)?,
        )),
    }
}

/// For `gatehouse store copy`: the target, created or migrated as needed; a sled target may carry the mark of an
/// interrupted copy (this copy is what finishes it).
pub(crate) async fn open_copy_target(
    config: &StoreConfig,
) -> Result<(Arc<dyn Store>, Vec<&'static str>), StoreError> {
    match config.backend {
        StoreBackend::Sled => {
            let path = config.path.clone();
            let store = tokio::task::spawn_blocking(move || sled::SledStore::open_for_copy(&path))
                .await
                .map_err(|e| StoreError::Io(format!("store task: {e}")))??;
            Ok((Arc::new(Blocking(Arc::new(store))), Vec::new()))
        }
        StoreBackend::Postgres => {
            let migrated = postgres::migrate(config).await?;
            let store = postgres::PgStore::open(config).await?;
            Ok((Arc::new(store), migrated.applied))
        }
    }
}

/// What [`migrate`] did, for `gatehouse store migrate` to print.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Migrated {
    /// `"sled"` or `"postgres"`.
    pub backend: &'static str,
    /// Migrations this run applied, in order (never any for sled, whose layout is versioned
    /// as a whole and checked at open).
    pub applied: Vec<&'static str>,
    /// The schema version in force afterwards.
    pub version: u32,
}

/// Brings the configured store's schema up to date without serving, ahead of a rollout
/// (`gatehouse store migrate`). For sled it opens the store, which stamps a new one with
/// its version and refuses one of another version.
pub async fn migrate(config: &StoreConfig) -> Result<Migrated, StoreError> {
    match config.backend {
        StoreBackend::Sled => {
            let path = config.path.clone();
            tokio::task::spawn_blocking(move || sled::SledStore::open(&path))
                .await
                .map_err(|e| StoreError::Io(format!("store task: {e}")))??;
            Ok(Migrated {
                backend: "sled",
                applied: Vec::new(),
                version: sled::SCHEMA_VERSION,
            })
        }
        StoreBackend::Postgres => {
            let report = postgres::migrate(config).await?;
            Ok(Migrated {
                backend: "postgres",
                applied: report.applied,
                version: report.version,
            })
        }
    }
}

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::{StoreBackend, StoreConfig};

/// The SHA-256 of a bearer secret (refresh token, reset or verification token).
pub type TokenHash = [u8; 32];

/// A fresh record identifier: a UUID v7 in its hyphenated lowercase form. Version 7 ids sort by
/// creation time, which gives [`Store::list_users`] a stable, meaningful order.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// The form under which emails, usernames and login names are compared: trimmed, lowercased.
pub fn fold(value: &str) -> String {
    value.trim().to_lowercase()
}

/// An account.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// UUID v7 string, see [`new_id`]. Never changes.
    pub id: String,
    /// Unique after [`fold`].
    pub email: String,
    /// Unique after [`fold`] when present. Handlers must refuse `@` in usernames, since
    /// [`Store::find_user_by_login`] treats a login containing `@` as an email.
    pub username: Option<String>,
    pub name: Option<String>,
    /// The argon2id PHC string.
    pub password_hash: String,
    pub roles: Vec<String>,
    pub email_verified: bool,
    /// Locked by an administrator: refresh is refused and login must be refused by the caller.
    pub locked: bool,
    pub created_at: u64,
    pub updated_at: u64,
    pub password_changed_at: u64,
}

// Written by hand so that the password hash never lands in a log line through `{:?}`.
impl fmt::Debug for UserRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserRecord")
            .field("id", &self.id)
            .field("email", &self.email)
            .field("username", &self.username)
            .field("name", &self.name)
            .field("password_hash", &"<redacted>")
            .field("roles", &self.roles)
            .field("email_verified", &self.email_verified)
            .field("locked", &self.locked)
            .field("created_at", &self.created_at)
            .field("updated_at", &self.updated_at)
            .field("password_changed_at", &self.password_changed_at)
            .finish()
    }
}

/// A session: one refresh-token family, named by `sid` in access tokens.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The `sid`, a UUID v7 string.
    pub id: String,
    pub user_id: String,
    pub created_at: u64,
    /// Updated on every successful rotation; drives the idle timeout.
    pub last_used_at: u64,
    /// Absolute end of the session: no rotation extends it.
    pub expires_at: u64,
    pub revoked: bool,
    /// Opened with a second factor: its access tokens carry `otp` in `amr`, refreshes
    /// included. Absent (false) in sessions stored before second factors existed.
    #[serde(default)]
    pub otp: bool,
}

/// A user's TOTP second factor: pending from setup until confirmed, then enabled.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MfaRecord {
    pub user_id: String,
    /// The TOTP secret sealed by the accounts service (nonce ‖ AEAD ciphertext ‖ tag, the
    /// user id as associated data): the store never holds it in clear.
    pub secret: Vec<u8>,
    /// `false` while the setup waits for its first code.
    pub enabled: bool,
    /// The last TOTP time step accepted (Unix time / 30): a code of this step or an earlier
    /// one is refused, so each code works once.
    pub last_step: u64,
    /// SHA-256 of each unused recovery code; taking one removes it.
    pub recovery_codes: Vec<TokenHash>,
    pub created_at: u64,
}

// By hand, so the sealed secret and the code hashes never reach a log line.
impl fmt::Debug for MfaRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MfaRecord")
            .field("user_id", &self.user_id)
            .field("secret", &"<redacted>")
            .field("enabled", &self.enabled)
            .field("last_step", &self.last_step)
            .field("recovery_codes", &self.recovery_codes.len())
            .field("created_at", &self.created_at)
            .finish()
    }
}

/// A pending second-factor login (the `mfa_token` a correct password earns), stored under
/// the SHA-256 of the token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MfaChallenge {
    pub user_id: String,
    /// The folded login name the password was given for: failed codes count against it.
    pub login: String,
    /// SHA-256 of the password hash that was verified: a password change or reset since
    /// voids the challenge.
    pub password_fingerprint: TokenHash,
    pub expires_at: u64,
}

/// The result of presenting a refresh token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RotateOutcome {
    /// The token was current: it is now rotated, the new hash is current, and `session` is the
    /// updated session (`last_used_at = now`). `user` is the owner, for issuing the access token.
    Rotated {
        session: SessionRecord,
        user: UserRecord,
    },
    /// The token had already been rotated: it was stolen or replayed. The whole family,
    /// successor included, has been revoked in the same transaction. The caller should also
    /// revoke the session's access tokens ([`Revocation::Session`]).
    Reused { session: SessionRecord },
    /// Unknown token, session revoked or expired (absolute or idle), or user gone or locked.
    Invalid,
}

/// What the in-memory revocation cache is loaded from at start. Entries are kept until `until`
/// (the moment every access token they cover has expired anyway), then purged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Revocation {
    /// Every access token carrying this `sid`.
    Session { sid: String, until: u64 },
    /// Every access token of this user issued at or before `issued_before` (`iat <=`, the
    /// revocation cache's cutoff), except those
    /// of session `except_sid` (the session that asked, e.g. on a password change).
    User {
        user_id: String,
        issued_before: u64,
        except_sid: Option<String>,
        until: u64,
    },
}

impl Revocation {
    /// When the entry stops mattering.
    pub fn until(&self) -> u64 {
        match self {
            Revocation::Session { until, .. } | Revocation::User { until, .. } => *until,
        }
    }
}

/// How failed logins turn into a lock. Time values are seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockoutPolicy {
    /// Failures within one window that lock the login name.
    pub max_failures: u32,
    /// A window opens at the first failure; failures older than this are forgotten.
    pub window_secs: u64,
    /// How long a lock lasts.
    pub lock_secs: u64,
}

/// The failure counter of one login name at a given moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FailureState {
    /// Failures in the current window (the failure that locked included).
    pub count: u32,
    /// Set while the login name is locked: refuse with `ACCOUNT_LOCKED` and
    /// `Retry-After: locked_until - now`.
    pub locked_until: Option<u64>,
}

/// The two kinds of single-use tokens mailed to users.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OneTimeKind {
    PasswordReset,
    EmailVerification,
}

/// A one-time token. `email` is the address it was sent to, so the caller can refuse a token
/// once the account's email has changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OneTimeRecord {
    pub user_id: String,
    pub email: String,
    pub expires_at: u64,
}

/// One page of [`Store::list_users`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserPage {
    pub users: Vec<UserRecord>,
    /// Pass back as `cursor` for the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}

/// What [`Store::purge_expired`] removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PurgeStats {
    pub sessions: usize,
    pub refresh_tokens: usize,
    pub one_time_tokens: usize,
    pub revocations: usize,
    pub login_failures: usize,
    pub mfa_challenges: usize,
}

impl PurgeStats {
    /// Every kind with its count, for the `gatehouse_store_purged_total{kind}` metric.
    pub fn by_kind(&self) -> [(&'static str, usize); 6] {
        [
            ("session", self.sessions),
            ("refresh_token", self.refresh_tokens),
            ("one_time_token", self.one_time_tokens),
            ("revocation", self.revocations),
            ("login_failure", self.login_failures),
            ("mfa_challenge", self.mfa_challenges),
        ]
    }

    /// Records removed in all.
    pub fn total(&self) -> usize {
        self.by_kind().iter().map(|(_, n)| n).sum()
    }
}

/// Entry counts for an admin view or metrics. Counting walks each collection, so call it
/// occasionally, not per request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub users: usize,
    pub sessions: usize,
    pub refresh_tokens: usize,
    pub password_reset_tokens: usize,
    pub email_verification_tokens: usize,
    pub revocations: usize,
    pub login_failures: usize,
}

/// Which unique key a write collided on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UniqueKey {
    Email,
    Username,
    /// A record id (user or session) or a token hash already exists. With UUID v7 ids and
    /// 128-bit tokens this points at a bug, not at a user mistake.
    Id,
}

/// Everything a store operation can fail with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreError {
    /// A unique key is taken; nothing was written.
    Conflict(UniqueKey),
    /// The record the operation is about does not exist.
    NotFound,
    /// Another process holds the store (a running server, or a second `gatehouse user`).
    Locked { path: String },
    /// The store was written by a different version of gatehouse.
    SchemaMismatch { found: u32, expected: u32 },
    /// The data on disk cannot be decoded or the engine reports corruption.
    Corrupt(String),
    /// Any other I/O or engine failure.
    Io(String),
    /// The database cannot be reached now (connection refused or lost, pool exhausted, a
    /// timeout): nothing was done, and the same call may succeed later.
    Unavailable(String),
    /// A sled store that an interrupted `gatehouse store copy` was writing: it may hold part
    /// of the records only, so it is not served (see [`copy`]).
    Incomplete { path: String },
    /// An import found the target holding a different record with the same id, hash or
    /// unique key (described by kind and id, never by email).
    CopyConflict(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Conflict(UniqueKey::Email) => f.write_str("email already registered"),
            StoreError::Conflict(UniqueKey::Username) => f.write_str("username already taken"),
            StoreError::Conflict(UniqueKey::Id) => f.write_str("record id already exists"),
            StoreError::NotFound => f.write_str("record not found"),
            StoreError::Locked { path } => write!(
                f,
                "the store at {path} is in use by another process (is a gatehouse server \
                 running?); stop it or manage users through the admin API"
            ),
            StoreError::SchemaMismatch { found, expected } => write!(
                f,
                "the store has schema version {found} but this gatehouse expects version \
                 {expected}"
            ),
            StoreError::Corrupt(detail) => write!(f, "the store is corrupt: {detail}"),
            StoreError::Io(detail) => write!(f, "store I/O error: {detail}"),
            StoreError::Unavailable(detail) => write!(f, "the store is unavailable: {detail}"),
            StoreError::Incomplete { path } => write!(
                f,
                "the store at {path} is incomplete: a `gatehouse store copy` into it was \
                 interrupted. Run the same copy again with --into-nonempty to finish it, or \
                 delete the directory and copy again"
            ),
            StoreError::CopyConflict(what) => write!(f, "the target already holds {what}"),
        }
    }
}

impl std::error::Error for StoreError {}

/// A store whose methods block (sled). The app reaches it through [`Blocking`], which
/// implements [`Store`]. Every write is atomic and durable when it returns `Ok`.
pub trait SyncStore: Send + Sync {
    // ----- users -----

    /// Inserts a new user. Fails with `Conflict(Email | Username | Id)` when a unique key is
    /// taken, in which case nothing is written.
    fn create_user(&self, user: &UserRecord) -> Result<(), StoreError>;

    fn get_user(&self, id: &str) -> Result<Option<UserRecord>, StoreError>;

    /// Looks a user up by email, compared after [`fold`].
    fn find_user_by_email(&self, email: &str) -> Result<Option<UserRecord>, StoreError>;

    /// Looks a user up by username, compared after [`fold`].
    fn find_user_by_username(&self, username: &str) -> Result<Option<UserRecord>, StoreError>;

    /// Looks a user up by a login name: an email when it contains `@`, a username otherwise.
    fn find_user_by_login(&self, login: &str) -> Result<Option<UserRecord>, StoreError> {
        if login.contains('@') {
            self.find_user_by_email(login)
        } else {
            self.find_user_by_username(login)
        }
    }

    /// Reads, edits and writes a user in one transaction, re-indexing email and username when
    /// they change, and returns the stored result. `edit` gets a fresh copy (it may be called
    /// again if the backend retries) and can abort with any error, which is passed through.
    /// The caller sets `updated_at`; a changed `id` is ignored. `NotFound` if the user does not
    /// exist, `Conflict` if the new email or username belongs to someone else.
    fn update_user(
        &self,
        id: &str,
        edit: &mut dyn FnMut(&mut UserRecord) -> Result<(), StoreError>,
    ) -> Result<UserRecord, StoreError>;

    /// Deletes a user with its indexes, sessions and one-time tokens. Returns the sessions that
    /// were still live (not revoked), so the caller can revoke their access tokens. `NotFound`
    /// if there is no such user.
    fn delete_user(&self, id: &str) -> Result<Vec<SessionRecord>, StoreError>;

    /// Up to `limit` users ordered by id (creation order), starting after `cursor`.
    fn list_users(&self, limit: usize, cursor: Option<&str>) -> Result<UserPage, StoreError>;

    fn count_users(&self) -> Result<usize, StoreError>;

    // ----- sessions and refresh tokens -----

    /// Opens a session whose first refresh token hashes to `refresh_hash`. `NotFound` if the
    /// user does not exist (e.g. deleted meanwhile), or, with `verified_hash`, if the user's
    /// password hash is no longer that one or the user is locked: a login that verified the
    /// old password while it was being changed must not get a session.
    /// At most `max_sessions` live sessions stay per user: past it the oldest are revoked in
    /// the same transaction and returned, so the caller can revoke their access tokens.
    fn create_session(
        &self,
        session: &SessionRecord,
        refresh_hash: &TokenHash,
        verified_hash: Option<&str>,
        max_sessions: usize,
    ) -> Result<Vec<SessionRecord>, StoreError>;

    /// Exchanges the refresh token `old` for `new`. An `idle_timeout_secs` of 0 disables the
    /// idle check. Two concurrent calls with the same `old` yield at most one `Rotated`; the
    /// other sees a rotated token, i.e. `Reused`, and the family is revoked.
    fn rotate_refresh(
        &self,
        old: &TokenHash,
        new: &TokenHash,
        now: u64,
        idle_timeout_secs: u64,
    ) -> Result<RotateOutcome, StoreError>;

    fn get_session(&self, sid: &str) -> Result<Option<SessionRecord>, StoreError>;

    /// Revokes one session. Returns it if this call revoked it; `None` if it is unknown or was
    /// already revoked.
    fn revoke_session(&self, sid: &str) -> Result<Option<SessionRecord>, StoreError>;

    /// Revokes every live session of a user but `except`, atomically, and returns those this
    /// call revoked.
    fn revoke_user_sessions(
        &self,
        user_id: &str,
        except: Option<&str>,
    ) -> Result<Vec<SessionRecord>, StoreError>;

    // ----- access-token revocations -----

    /// Records a revocation. Recording the same one again keeps the later `until`.
    fn put_revocation(&self, revocation: &Revocation) -> Result<(), StoreError>;

    /// Every revocation still in force at `now`.
    fn load_revocations(&self, now: u64) -> Result<Vec<Revocation>, StoreError>;

    // ----- login-failure counters -----

    /// The state of a login name (folded) at `now`, without recording anything.
    fn login_failures(
        &self,
        login: &str,
        now: u64,
        policy: &LockoutPolicy,
    ) -> Result<FailureState, StoreError>;

    /// Counts one failed login for a login name (folded), whether or not an account exists.
    /// See [`apply_failure`] for the rules.
    fn record_login_failure(
        &self,
        login: &str,
        now: u64,
        policy: &LockoutPolicy,
    ) -> Result<FailureState, StoreError>;

    /// Forgets the failures of a login name (after a successful login or an admin unlock).
    fn clear_login_failures(&self, login: &str) -> Result<(), StoreError>;

    // ----- one-time tokens -----

    /// Stores a token and voids every older token of the same kind for that user.
    fn put_one_time(
        &self,
        kind: OneTimeKind,
        hash: &TokenHash,
        record: &OneTimeRecord,
    ) -> Result<(), StoreError>;

    /// Consumes a token: at most one caller ever gets `Some` for a given token. An expired
    /// token is removed and yields `None`.
    fn take_one_time(
        &self,
        kind: OneTimeKind,
        hash: &TokenHash,
        now: u64,
    ) -> Result<Option<OneTimeRecord>, StoreError>;

    /// Reads a token without consuming it (`None` if unknown or expired).
    fn peek_one_time(
        &self,
        kind: OneTimeKind,
        hash: &TokenHash,
        now: u64,
    ) -> Result<Option<OneTimeRecord>, StoreError>;

    /// Voids the user's outstanding token of this kind, if any; `true` if there was one.
    fn void_one_time_for_user(&self, kind: OneTimeKind, user_id: &str) -> Result<bool, StoreError>;

    // ----- second factors (TOTP) -----

    /// The user's second factor, pending or enabled.
    fn get_mfa(&self, user_id: &str) -> Result<Option<MfaRecord>, StoreError>;

    /// Stores a pending (not enabled) second factor, replacing a pending one. `false`, and
    /// nothing written, when an enabled one exists; `NotFound` when the user does not.
    fn put_mfa_pending(&self, record: &MfaRecord) -> Result<bool, StoreError>;

    /// Enables the pending second factor whose sealed secret is `secret` (so a setup that
    /// replaced it meanwhile is not enabled by a code for the old one), with its first
    /// accepted step and its recovery-code hashes. `false` when there is no such pending one.
    fn enable_mfa(
        &self,
        user_id: &str,
        secret: &[u8],
        step: u64,
        recovery_codes: &[TokenHash],
    ) -> Result<bool, StoreError>;

    /// Accepts TOTP step `step` for an enabled second factor if it is later than the last
    /// accepted one, and records it: of two callers with the same step, at most one gets
    /// `true`.
    fn accept_mfa_step(&self, user_id: &str, step: u64) -> Result<bool, StoreError>;

    /// Consumes one recovery code of an enabled second factor: at most one caller gets
    /// `true` for a given code.
    fn take_recovery_code(&self, user_id: &str, hash: &TokenHash) -> Result<bool, StoreError>;

    /// Removes the user's second factor; `true` if there was one. Its outstanding challenges
    /// stay until taken or purged: completing one needs an enabled factor.
    fn delete_mfa(&self, user_id: &str) -> Result<bool, StoreError>;

    /// Stores a second-factor challenge under the SHA-256 of its token.
    fn put_mfa_challenge(&self, hash: &TokenHash, record: &MfaChallenge) -> Result<(), StoreError>;

    /// Consumes a challenge: at most one caller ever gets `Some`. An expired one is removed
    /// and yields `None`.
    fn take_mfa_challenge(
        &self,
        hash: &TokenHash,
        now: u64,
    ) -> Result<Option<MfaChallenge>, StoreError>;

    // ----- housekeeping -----

    /// Removes what can no longer matter (the module docs, *Purging*, say why each is safe):
    /// sessions past `expires_at`; revoked sessions whose last use is at least
    /// `revoked_grace_secs` before `now`; every refresh hash of a removed (or otherwise
    /// missing) session, rotated ones included; expired one-time tokens, revocations and
    /// failure counters. Never revives anything: a removed token is refused as unknown.
    fn purge_expired(&self, now: u64, revoked_grace_secs: u64) -> Result<PurgeStats, StoreError>;

    fn stats(&self) -> Result<StoreStats, StoreError>;

    /// A cheap probe for readiness: the store answers reads.
    fn health(&self) -> Result<(), StoreError>;

    // ----- copying between stores (the contract is in [`copy`]) -----

    /// Passes every record to `out` in chunks of at most `batch`, in [`copy::Kind::ALL`]
    /// order, and returns how many of each kind it passed.
    fn export(
        &self,
        batch: usize,
        out: &mut dyn FnMut(Vec<copy::Record>) -> Result<(), StoreError>,
    ) -> Result<copy::Counts, StoreError>;

    /// Starts an import (for a write: marks the store incomplete, durably).
    fn import_begin(&self, mode: copy::ImportMode) -> Result<(), StoreError>;

    /// Imports (or checks) some records, counting them into `imported`.
    fn import_records(
        &self,
        records: &[copy::Record],
        mode: copy::ImportMode,
        imported: &mut copy::Imported,
    ) -> Result<(), StoreError>;

    /// Ends a complete import (for a write: flushes, then clears the mark, durably).
    fn import_end(&self, mode: copy::ImportMode) -> Result<(), StoreError>;
}

/// A change to a user, applied in one statement or transaction by [`Store::update_user`].
/// `None` leaves a field as it is. The `if_*` conditions make the update conditional: when
/// one does not hold, nothing changes and the result is `NotFound`, as for a missing user.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserUpdate {
    /// A new address (re-indexed; `Conflict(Email)` when someone else holds it).
    pub email: Option<String>,
    pub roles: Option<Vec<String>>,
    pub locked: Option<bool>,
    /// `Some(None)` clears the display name.
    pub name: Option<Option<String>>,
    pub email_verified: Option<bool>,
    /// A new password hash; `password_changed_at` is set to `updated_at` with it.
    pub password_hash: Option<String>,
    /// The caller's clock.
    pub updated_at: u64,
    /// Only if the stored password hash is still this one (a rehash must not undo a change).
    pub if_password_hash: Option<String>,
    /// Only if the stored email, folded, is still this one (a verification link is for the
    /// address it was mailed to).
    pub if_email: Option<String>,
}

impl UserUpdate {
    /// Applies the change to `user`, or `NotFound` when a condition does not hold.
    pub fn apply(&self, user: &mut UserRecord) -> Result<(), StoreError> {
        if self
            .if_password_hash
            .as_ref()
            .is_some_and(|h| *h != user.password_hash)
            || self
                .if_email
                .as_ref()
                .is_some_and(|e| fold(e) != fold(&user.email))
        {
            return Err(StoreError::NotFound);
        }
        if let Some(email) = &self.email {
            user.email = email.clone();
        }
        if let Some(roles) = &self.roles {
            user.roles = roles.clone();
        }
        if let Some(locked) = self.locked {
            user.locked = locked;
        }
        if let Some(name) = &self.name {
            user.name = name.clone();
        }
        if let Some(verified) = self.email_verified {
            user.email_verified = verified;
        }
        if let Some(hash) = &self.password_hash {
            user.password_hash = hash.clone();
            user.password_changed_at = self.updated_at;
        }
        user.updated_at = self.updated_at;
        Ok(())
    }
}

/// The identity store the app holds: async, object safe, with the written contract of each
/// method on [`SyncStore`] (the same for every backend; `tests/it/store_contract.rs` checks
/// it against each). Every write is atomic and durable when it returns `Ok`.
#[async_trait::async_trait]
pub trait Store: Send + Sync {
    async fn create_user(&self, user: &UserRecord) -> Result<(), StoreError>;
    async fn get_user(&self, id: &str) -> Result<Option<UserRecord>, StoreError>;
    async fn find_user_by_email(&self, email: &str) -> Result<Option<UserRecord>, StoreError>;
    async fn find_user_by_login(&self, login: &str) -> Result<Option<UserRecord>, StoreError>;
    /// Applies `update` to user `id` and returns the stored result; `NotFound` when there is
    /// no such user or a condition of the update does not hold.
    async fn update_user(&self, id: &str, update: &UserUpdate) -> Result<UserRecord, StoreError>;
    /// Sets a new password hash and voids the user's pending reset tokens, in one
    /// transaction: a link mailed before the change must not undo it.
    async fn set_password(&self, id: &str, hash: &str, now: u64) -> Result<UserRecord, StoreError>;
    async fn delete_user(&self, id: &str) -> Result<Vec<SessionRecord>, StoreError>;
    async fn list_users(&self, limit: usize, cursor: Option<&str>) -> Result<UserPage, StoreError>;
    async fn create_session(
        &self,
        session: &SessionRecord,
        refresh_hash: &TokenHash,
        verified_hash: Option<&str>,
        max_sessions: usize,
    ) -> Result<Vec<SessionRecord>, StoreError>;
    async fn rotate_refresh(
        &self,
        old: &TokenHash,
        new: &TokenHash,
        now: u64,
        idle_timeout_secs: u64,
    ) -> Result<RotateOutcome, StoreError>;
    async fn get_session(&self, sid: &str) -> Result<Option<SessionRecord>, StoreError>;
    async fn revoke_session(&self, sid: &str) -> Result<Option<SessionRecord>, StoreError>;
    async fn revoke_user_sessions(
        &self,
        user_id: &str,
        except: Option<&str>,
    ) -> Result<Vec<SessionRecord>, StoreError>;
    async fn put_revocation(&self, revocation: &Revocation) -> Result<(), StoreError>;
    async fn load_revocations(&self, now: u64) -> Result<Vec<Revocation>, StoreError>;
    async fn record_login_failure(
        &self,
        login: &str,
        now: u64,
        policy: &LockoutPolicy,
    ) -> Result<FailureState, StoreError>;
    async fn clear_login_failures(&self, login: &str) -> Result<(), StoreError>;
    async fn put_one_time(
        &self,
        kind: OneTimeKind,
        hash: &TokenHash,
        record: &OneTimeRecord,
    ) -> Result<(), StoreError>;
    async fn take_one_time(
        &self,
        kind: OneTimeKind,
        hash: &TokenHash,
        now: u64,
    ) -> Result<Option<OneTimeRecord>, StoreError>;
    async fn peek_one_time(
        &self,
        kind: OneTimeKind,
        hash: &TokenHash,
        now: u64,
    ) -> Result<Option<OneTimeRecord>, StoreError>;
    async fn get_mfa(&self, user_id: &str) -> Result<Option<MfaRecord>, StoreError>;
    async fn put_mfa_pending(&self, record: &MfaRecord) -> Result<bool, StoreError>;
    async fn enable_mfa(
        &self,
        user_id: &str,
        secret: &[u8],
        step: u64,
        recovery_codes: &[TokenHash],
    ) -> Result<bool, StoreError>;
    async fn accept_mfa_step(&self, user_id: &str, step: u64) -> Result<bool, StoreError>;
    async fn take_recovery_code(&self, user_id: &str, hash: &TokenHash)
    -> Result<bool, StoreError>;
    async fn delete_mfa(&self, user_id: &str) -> Result<bool, StoreError>;
    async fn put_mfa_challenge(
        &self,
        hash: &TokenHash,
        record: &MfaChallenge,
    ) -> Result<(), StoreError>;
    async fn take_mfa_challenge(
        &self,
        hash: &TokenHash,
        now: u64,
    ) -> Result<Option<MfaChallenge>, StoreError>;
    async fn purge_expired(
        &self,
        now: u64,
        revoked_grace_secs: u64,
    ) -> Result<PurgeStats, StoreError>;
    async fn stats(&self) -> Result<StoreStats, StoreError>;
    async fn health(&self) -> Result<(), StoreError>;

    // ----- copying between stores (the contract is in [`copy`]) -----

    /// Sends every record into `out` as [`copy::Chunk::Records`] of at most `batch`
    /// records, then [`copy::Chunk::End`]; changes nothing.
    async fn export(
        &self,
        batch: usize,
        out: tokio::sync::mpsc::Sender<copy::Chunk>,
    ) -> Result<(), StoreError>;

    /// Imports the records arriving on `input` until [`copy::Chunk::End`], all or nothing
    /// (see [`copy`]); with [`copy::ImportMode::Check`] only looks for conflicts.
    async fn import(
        &self,
        mode: copy::ImportMode,
        input: tokio::sync::mpsc::Receiver<copy::Chunk>,
    ) -> Result<copy::Imported, StoreError>;

    // ----- the revocation feed, for replicas sharing one store -----

    /// The sequence number of the latest revocation recorded (0 when none). Read before
    /// [`Store::load_revocations`], so that catching up from it afterwards misses nothing
    /// (applying a revocation twice is harmless).
    async fn revocation_cursor(&self) -> Result<u64, StoreError>;

    /// Revocations recorded after sequence number `after`, in sequence order, with their
    /// numbers, including those recorded by other processes. Sequence numbers grow
    /// monotonically; a replica that reconnects catches up from the last one it applied.
    async fn revocations_since(&self, after: u64) -> Result<Vec<(u64, Revocation)>, StoreError>;

    /// Fires when another process may have recorded revocations (PostgreSQL's
    /// LISTEN/NOTIFY, and after every reconnect of the listening connection). `None` for a
    /// store only this process writes (sled): there is nobody else to hear from.
    fn revocation_signal(&self) -> Option<Arc<tokio::sync::Notify>> {
        None
    }
}

/// Runs a blocking [`SyncStore`] on tokio's blocking pool, as a [`Store`].
pub struct Blocking<S>(pub Arc<S>);

impl<S: SyncStore + 'static> Blocking<S> {
    async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&S) -> Result<T, StoreError> + Send + 'static,
    {
        let store = self.0.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| StoreError::Io(format!("store task: {e}")))?
    }
}

#[async_trait::async_trait]
impl<S: SyncStore + 'static> Store for Blocking<S> {
    async fn create_user(&self, user: &UserRecord) -> Result<(), StoreError> {
        let user = user.clone();
        self.run(move |s| s.create_user(&user)).await
    }
    async fn get_user(&self, id: &str) -> Result<Option<UserRecord>, StoreError> {
        let id = id.to_owned();
        self.run(move |s| s.get_user(&id)).await
    }
    async fn find_user_by_email(&self, email: &str) -> Result<Option<UserRecord>, StoreError> {
        let email = email.to_owned();
        self.run(move |s| s.find_user_by_email(&email)).await
    }
    async fn find_user_by_login(&self, login: &str) -> Result<Option<UserRecord>, StoreError> {
        let login = login.to_owned();
        self.run(move |s| s.find_user_by_login(&login)).await
    }
    async fn update_user(&self, id: &str, update: &UserUpdate) -> Result<UserRecord, StoreError> {
        let (id, update) = (id.to_owned(), update.clone());
        self.run(move |s| s.update_user(&id, &mut |u| update.apply(u)))
            .await
    }
    async fn set_password(&self, id: &str, hash: &str, now: u64) -> Result<UserRecord, StoreError> {
        let update = UserUpdate {
            password_hash: Some(hash.to_owned()),
            updated_at: now,
            ..UserUpdate::default()
        };
        let id = id.to_owned();
        // sled has no transaction across these two trees' helpers; voiding first is the safe
        // order (a crash in between leaves the old password and no link).
        self.run(move |s| {
            s.void_one_time_for_user(OneTimeKind::PasswordReset, &id)?;
            s.update_user(&id, &mut |u| update.apply(u))
        })
        .await
    }
    async fn delete_user(&self, id: &str) -> Result<Vec<SessionRecord>, StoreError> {
        let id = id.to_owned();
        self.run(move |s| s.delete_user(&id)).await
    }
    async fn list_users(&self, limit: usize, cursor: Option<&str>) -> Result<UserPage, StoreError> {
        let cursor = cursor.map(str::to_owned);
        self.run(move |s| s.list_users(limit, cursor.as_deref()))
            .await
    }
    async fn create_session(
        &self,
        session: &SessionRecord,
        refresh_hash: &TokenHash,
        verified_hash: Option<&str>,
        max_sessions: usize,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        let (session, hash) = (session.clone(), *refresh_hash);
        let verified = verified_hash.map(str::to_owned);
        self.run(move |s| s.create_session(&session, &hash, verified.as_deref(), max_sessions))
            .await
    }
    async fn rotate_refresh(
        &self,
        old: &TokenHash,
        new: &TokenHash,
        now: u64,
        idle_timeout_secs: u64,
    ) -> Result<RotateOutcome, StoreError> {
        let (old, new) = (*old, *new);
        self.run(move |s| s.rotate_refresh(&old, &new, now, idle_timeout_secs))
            .await
    }
    async fn get_session(&self, sid: &str) -> Result<Option<SessionRecord>, StoreError> {
        let sid = sid.to_owned();
        self.run(move |s| s.get_session(&sid)).await
    }
    async fn revoke_session(&self, sid: &str) -> Result<Option<SessionRecord>, StoreError> {
        let sid = sid.to_owned();
        self.run(move |s| s.revoke_session(&sid)).await
    }
    async fn revoke_user_sessions(
        &self,
        user_id: &str,
        except: Option<&str>,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        let (user_id, except) = (user_id.to_owned(), except.map(str::to_owned));
        self.run(move |s| s.revoke_user_sessions(&user_id, except.as_deref()))
            .await
    }
    async fn put_revocation(&self, revocation: &Revocation) -> Result<(), StoreError> {
        let revocation = revocation.clone();
        self.run(move |s| s.put_revocation(&revocation)).await
    }
    async fn load_revocations(&self, now: u64) -> Result<Vec<Revocation>, StoreError> {
        self.run(move |s| s.load_revocations(now)).await
    }
    async fn record_login_failure(
        &self,
        login: &str,
        now: u64,
        policy: &LockoutPolicy,
    ) -> Result<FailureState, StoreError> {
        let (login, policy) = (login.to_owned(), *policy);
        self.run(move |s| s.record_login_failure(&login, now, &policy))
            .await
    }
    async fn clear_login_failures(&self, login: &str) -> Result<(), StoreError> {
        let login = login.to_owned();
        self.run(move |s| s.clear_login_failures(&login)).await
    }
    async fn put_one_time(
        &self,
        kind: OneTimeKind,
        hash: &TokenHash,
        record: &OneTimeRecord,
    ) -> Result<(), StoreError> {
        let (hash, record) = (*hash, record.clone());
        self.run(move |s| s.put_one_time(kind, &hash, &record))
            .await
    }
    async fn take_one_time(
        &self,
        kind: OneTimeKind,
        hash: &TokenHash,
        now: u64,
    ) -> Result<Option<OneTimeRecord>, StoreError> {
        let hash = *hash;
        self.run(move |s| s.take_one_time(kind, &hash, now)).await
    }
    async fn peek_one_time(
        &self,
        kind: OneTimeKind,
        hash: &TokenHash,
        now: u64,
    ) -> Result<Option<OneTimeRecord>, StoreError> {
        let hash = *hash;
        self.run(move |s| s.peek_one_time(kind, &hash, now)).await
    }
    async fn get_mfa(&self, user_id: &str) -> Result<Option<MfaRecord>, StoreError> {
        let user_id = user_id.to_owned();
        self.run(move |s| s.get_mfa(&user_id)).await
    }
    async fn put_mfa_pending(&self, record: &MfaRecord) -> Result<bool, StoreError> {
        let record = record.clone();
        self.run(move |s| s.put_mfa_pending(&record)).await
    }
    async fn enable_mfa(
        &self,
        user_id: &str,
        secret: &[u8],
        step: u64,
        recovery_codes: &[TokenHash],
    ) -> Result<bool, StoreError> {
        let (user_id, secret, codes) =
            (user_id.to_owned(), secret.to_vec(), recovery_codes.to_vec());
        self.run(move |s| s.enable_mfa(&user_id, &secret, step, &codes))
            .await
    }
    async fn accept_mfa_step(&self, user_id: &str, step: u64) -> Result<bool, StoreError> {
        let user_id = user_id.to_owned();
        self.run(move |s| s.accept_mfa_step(&user_id, step)).await
    }
    async fn take_recovery_code(
        &self,
        user_id: &str,
        hash: &TokenHash,
    ) -> Result<bool, StoreError> {
        let (user_id, hash) = (user_id.to_owned(), *hash);
        self.run(move |s| s.take_recovery_code(&user_id, &hash))
            .await
    }
    async fn delete_mfa(&self, user_id: &str) -> Result<bool, StoreError> {
        let user_id = user_id.to_owned();
        self.run(move |s| s.delete_mfa(&user_id)).await
    }
    async fn put_mfa_challenge(
        &self,
        hash: &TokenHash,
        record: &MfaChallenge,
    ) -> Result<(), StoreError> {
        let (hash, record) = (*hash, record.clone());
        self.run(move |s| s.put_mfa_challenge(&hash, &record)).await
    }
    async fn take_mfa_challenge(
        &self,
        hash: &TokenHash,
        now: u64,
    ) -> Result<Option<MfaChallenge>, StoreError> {
        let hash = *hash;
        self.run(move |s| s.take_mfa_challenge(&hash, now)).await
    }
    async fn purge_expired(
        &self,
        now: u64,
        revoked_grace_secs: u64,
    ) -> Result<PurgeStats, StoreError> {
        self.run(move |s| s.purge_expired(now, revoked_grace_secs))
            .await
    }
    async fn stats(&self) -> Result<StoreStats, StoreError> {
        self.run(|s| s.stats()).await
    }
    async fn health(&self) -> Result<(), StoreError> {
        self.run(|s| s.health()).await
    }
    async fn export(
        &self,
        batch: usize,
        out: tokio::sync::mpsc::Sender<copy::Chunk>,
    ) -> Result<(), StoreError> {
        self.run(move |s| {
            let counts = s.export(batch, &mut |records| {
                out.blocking_send(copy::Chunk::Records(records))
                    .map_err(|_| StoreError::Io(copy::IMPORT_GONE.into()))
            })?;
            out.blocking_send(copy::Chunk::End(counts))
                .map_err(|_| StoreError::Io(copy::IMPORT_GONE.into()))
        })
        .await
    }
    async fn import(
        &self,
        mode: copy::ImportMode,
        mut input: tokio::sync::mpsc::Receiver<copy::Chunk>,
    ) -> Result<copy::Imported, StoreError> {
        self.run(move |s| s.import_begin(mode)).await?;
        let mut imported = copy::Imported::default();
        loop {
            match input.recv().await {
                Some(copy::Chunk::Records(records)) => {
                    imported = self
                        .run(move |s| {
                            let mut imported = imported;
                            s.import_records(&records, mode, &mut imported)?;
                            Ok(imported)
                        })
                        .await?;
                }
                Some(copy::Chunk::End(sent)) => {
                    imported.check_end(&sent)?;
                    self.run(move |s| s.import_end(mode)).await?;
                    return Ok(imported);
                }
                None => return Err(StoreError::Io(copy::EXPORT_GONE.into())),
            }
        }
    }
    // One process writes a blocking store and applies its revocations as it records them,
    // so there is never anything to catch up on.
    async fn revocation_cursor(&self) -> Result<u64, StoreError> {
        Ok(0)
    }
    async fn revocations_since(&self, _after: u64) -> Result<Vec<(u64, Revocation)>, StoreError> {
        Ok(Vec::new())
    }
}

/// The persisted failure counter of one login name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureRecord {
    pub window_start: u64,
    pub count: u32,
    /// 0 when not locked.
    pub locked_until: u64,
    /// When the record stops mattering and can be purged.
    pub expires_at: u64,
}

/// Applies one failed login to a counter. The rules: a window opens at the first failure and
/// lasts `window_secs`; reaching `max_failures` within it locks the name for `lock_secs`.
/// Failures while locked change nothing (callers refuse before checking the password, so they
/// should not even get here), which means a lock is never extended by an attacker hammering
/// it. Once a lock or a window has run out, counting starts afresh.
pub fn apply_failure(
    previous: Option<FailureRecord>,
    now: u64,
    policy: &LockoutPolicy,
) -> FailureRecord {
    let mut record = previous.unwrap_or_default();
    if record.locked_until > now {
        return record;
    }
    let window_over = now >= record.window_start.saturating_add(policy.window_secs);
    if record.count == 0 || record.locked_until != 0 || window_over {
        record = FailureRecord {
            window_start: now,
            ..FailureRecord::default()
        };
    }
    record.count = record.count.saturating_add(1);
    if record.count >= policy.max_failures.max(1) {
        record.locked_until = now.saturating_add(policy.lock_secs);
    }
    record.expires_at = record
        .window_start
        .saturating_add(policy.window_secs)
        .max(record.locked_until);
    record
}

/// What a stored counter means at `now`.
pub fn failure_state(
    record: Option<FailureRecord>,
    now: u64,
    policy: &LockoutPolicy,
) -> FailureState {
    let Some(record) = record else {
        return FailureState::default();
    };
    if record.locked_until > now {
        return FailureState {
            count: record.count,
            locked_until: Some(record.locked_until),
        };
    }
    let window_over = now >= record.window_start.saturating_add(policy.window_secs);
    if record.locked_until != 0 || window_over {
        return FailureState::default();
    }
    FailureState {
        count: record.count,
        locked_until: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: LockoutPolicy = LockoutPolicy {
        max_failures: 3,
        window_secs: 100,
        lock_secs: 50,
    };

    /// Replays failures at the given times and checks the state after each.
    fn check(failures_at: &[u64], expect: &[(u32, Option<u64>)]) {
        let mut record = None;
        for (i, &now) in failures_at.iter().enumerate() {
            let next = apply_failure(record, now, &POLICY);
            record = Some(next);
            let state = failure_state(record, now, &POLICY);
            assert_eq!(
                (state.count, state.locked_until),
                expect[i],
                "after failure #{i} at t={now} of {failures_at:?}: {next:?}"
            );
        }
    }

    #[test]
    fn lockout_rules() {
        // Below the threshold.
        check(&[10, 20], &[(1, None), (2, None)]);
        // Third failure inside the window locks for lock_secs from that failure.
        check(&[10, 20, 30], &[(1, None), (2, None), (3, Some(80))]);
        // Failures while locked neither count nor extend the lock.
        check(
            &[10, 20, 30, 79],
            &[(1, None), (2, None), (3, Some(80)), (3, Some(80))],
        );
        // After the lock runs out, counting starts afresh.
        check(
            &[10, 20, 30, 80],
            &[(1, None), (2, None), (3, Some(80)), (1, None)],
        );
        // The window runs from the first failure: at t=110 it is over.
        check(&[10, 20, 110], &[(1, None), (2, None), (1, None)]);
        check(&[10, 20, 109], &[(1, None), (2, None), (3, Some(159))]);
    }

    #[test]
    fn state_forgets_after_window_and_lock() {
        let record = apply_failure(None, 10, &POLICY);
        assert_eq!(failure_state(Some(record), 109, &POLICY).count, 1);
        assert_eq!(
            failure_state(Some(record), 110, &POLICY),
            FailureState::default()
        );
        assert_eq!(record.expires_at, 110);

        let mut locked = None;
        for now in [10, 11, 12] {
            locked = Some(apply_failure(locked, now, &POLICY));
        }
        let locked = locked.unwrap();
        assert_eq!(
            locked.expires_at, 110,
            "window end outlasts the lock end (62)"
        );
        assert_eq!(
            failure_state(Some(locked), 61, &POLICY).locked_until,
            Some(62)
        );
        assert_eq!(
            failure_state(Some(locked), 62, &POLICY),
            FailureState::default()
        );
    }

    #[test]
    fn fold_and_ids() {
        assert_eq!(fold("  Alice@Example.COM "), "alice@example.com");
        let (a, b) = (new_id(), new_id());
        assert!(a < b, "v7 ids sort by creation: {a} {b}");
    }

    #[test]
    fn debug_redacts_password_hash() {
        let user = UserRecord {
            id: new_id(),
            email: "a@b.c".into(),
            username: None,
            name: None,
            password_hash: "$argon2id$secret".into(),
            roles: vec![],
            email_verified: false,
            locked: false,
            created_at: 0,
            updated_at: 0,
            password_changed_at: 0,
        };
        let shown = format!("{user:?}");
        assert!(!shown.contains("secret"), "{shown}");
    }
}
