//! [`Store`] on an embedded sled 0.34 database: the only file in gatehouse that imports sled.
//!
//! Layout: one sled tree per collection, values encoded as JSON (serde_json). JSON costs a few
//! bytes more than a binary format but stays readable with any sled dump tool and lets a later
//! schema add fields with `#[serde(default)]`; identity records are small and rarely written,
//! so size and speed do not matter here.
//!
//! | tree | key | value |
//! |---|---|---|
//! | `meta` | `schema_version` | `u32` big-endian |
//! | `users` | user id | [`UserRecord`] |
//! | `users_by_email` | folded email | user id |
//! | `users_by_username` | folded username | user id |
//! | `sessions` | sid | [`SessionRecord`] |
//! | `sessions_by_user` | user id | JSON list of sids |
//! | `refresh` | SHA-256 of the token | `{sid, state: current or rotated, expires_at}` |
//! | `one_time` | kind byte ‖ SHA-256 | [`OneTimeRecord`] |
//! | `one_time_by_user` | kind byte ‖ user id | SHA-256 of the user's outstanding token |
//! | `revocations` | `s` ‖ sid, or `u` ‖ user id ‖ 0 ‖ cutoff ‖ except-sid | [`Revocation`] |
//! | `login_failures` | folded login name | [`FailureRecord`] |
//! | `mfa` | user id | [`MfaRecord`] (the TOTP secret sealed, never in clear) |
//! | `mfa_challenges` | SHA-256 of the `mfa_token` | [`MfaChallenge`] |
//!
//! Decisions, and why:
//!
//! - **Transactions.** sled 0.34 runs every transaction under one process-wide write lock, so
//!   transactions are serialisable: two rotations of the same refresh token cannot both see it
//!   current. Transactions cannot scan, which is why the per-user lists
//!   (`sessions_by_user`, `one_time_by_user`) exist: revoking or deleting "all of a user's
//!   sessions" reads one key inside the transaction, so a session created concurrently is
//!   either revoked too or created after the revocation, never half of each.
//! - **Durability.** Every write calls `Db::flush` (an fsync of sled's log) before returning
//!   `Ok`. Reads never flush.
//! - **Refresh hashes of a family are not indexed by session.** A rotated hash must outlive its
//!   rotation (that is how reuse is detected), and revoking a family only needs the session's
//!   `revoked` flag, which every hash of the family points to. Hashes of deleted, expired or
//!   purged sessions resolve to [`RotateOutcome::Invalid`] and are removed by `purge_expired`,
//!   which scans the `refresh` tree for them after removing dead sessions.
//! - **Locking.** sled takes an exclusive `flock` on its `db` file and reports a busy lock as a
//!   plain I/O error whose message starts with "could not acquire lock"; `open` maps that one
//!   message to [`StoreError::Locked`]. `flock` locks belong to an open file, so a second open
//!   in the same process is refused the same way as one from another process.
//! - **Schema version.** `open` writes [`SCHEMA_VERSION`] into a new store and refuses a store
//!   with another version, rather than misreading records written by another release.
//! - **Copies** (`gatehouse store copy`, contract in [`super::copy`]). An import writes
//!   without a transaction per record (the copy holds the store's lock, so nobody else
//!   writes) and flushes once at the end; the `meta` key `copy_incomplete` is set, durably,
//!   before the first write and removed after the final flush, and `open` refuses a store
//!   that carries it ([`StoreError::Incomplete`]), so a copy killed half-way is never served.
//!   Only [`SledStore::open_for_copy`] opens such a store, for the copy that finishes it.

use std::cell::RefCell;
use std::ops::Bound;
use std::path::Path;

use ::sled::transaction::{ConflictableTransactionError, TransactionError};
use ::sled::{Db, IVec, Transactional, Tree};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::copy::{
    Counts, ImportMode, Imported, LoginFailureRecord, MfaChallengeToken, OneTimeToken, Record,
    RefreshRecord,
};
use super::{
    FailureRecord, FailureState, LockoutPolicy, MfaChallenge, MfaRecord, OneTimeKind,
    OneTimeRecord, PurgeStats, Revocation, RotateOutcome, SessionRecord, StoreError, StoreStats,
    SyncStore, TokenHash, UniqueKey, UserPage, UserRecord, apply_failure, failure_state, fold,
};

/// The version of the layout above. Bump it on any incompatible change.
pub const SCHEMA_VERSION: u32 = 1;

const SCHEMA_KEY: &[u8] = b"schema_version";
/// Present while a `gatehouse store copy` writes into the store (see the module docs).
const COPY_MARK: &[u8] = b"copy_incomplete";
/// The session cap the tests open sessions under (the service's, `accounts::sessions`).
#[cfg(test)]
const MAX_SESSIONS_PER_USER: usize = 64;

/// sled's page cache budget. Its default (1 GiB) suits a database server, not a sidecar whose
/// working set is a few thousand small records.
const CACHE_CAPACITY_BYTES: u64 = 64 * 1024 * 1024;

/// The message prefix sled 0.34 (`config.rs`, `try_lock`) uses when the `flock` is busy.
const SLED_LOCK_MESSAGE: &str = "could not acquire lock";

/// Whether a refresh token is the live end of its family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RefreshState {
    Current,
    Rotated,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct RefreshEntry {
    sid: String,
    state: RefreshState,
    expires_at: u64,
}

/// The sled-backed store. Cheap to share behind an `Arc`; all handles point at one database.
pub struct SledStore {
    db: Db,
    meta: Tree,
    users: Tree,
    users_by_email: Tree,
    users_by_username: Tree,
    sessions: Tree,
    sessions_by_user: Tree,
    refresh: Tree,
    one_time: Tree,
    one_time_by_user: Tree,
    revocations: Tree,
    login_failures: Tree,
    mfa: Tree,
    mfa_challenges: Tree,
}

impl SledStore {
    /// Opens (creating if needed) the store in directory `path`. Fails with
    /// [`StoreError::Locked`] when another process (or another handle in this one) holds it,
    /// and with [`StoreError::SchemaMismatch`] when it was written by an incompatible version.
    /// A store that an interrupted copy left incomplete is refused with
    /// [`StoreError::Incomplete`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref();
        let store = SledStore::open_for_copy(path)?;
        if store.meta.contains_key(COPY_MARK).map_err(sled_error)? {
            return Err(StoreError::Incomplete {
                path: path.display().to_string(),
            });
        }
        Ok(store)
    }

    /// Opens a store as [`SledStore::open`] does, but also one that an interrupted copy
    /// left incomplete: for `gatehouse store copy`, which finishes it.
    pub fn open_for_copy(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref();
        let db = ::sled::Config::new()
            .path(path)
            .cache_capacity(CACHE_CAPACITY_BYTES)
            // Every write flushes before it is acknowledged (see the module doc), so sled's
            // own periodic flusher would only wake an idle sidecar twice a second.
            .flush_every_ms(None)
            .open()
            .map_err(|e| open_error(e, path))?;
        let tree = |name: &str| db.open_tree(name).map_err(sled_error);
        let store = SledStore {
            meta: tree("meta")?,
            users: tree("users")?,
            users_by_email: tree("users_by_email")?,
            users_by_username: tree("users_by_username")?,
            sessions: tree("sessions")?,
            sessions_by_user: tree("sessions_by_user")?,
            refresh: tree("refresh")?,
            one_time: tree("one_time")?,
            one_time_by_user: tree("one_time_by_user")?,
            revocations: tree("revocations")?,
            login_failures: tree("login_failures")?,
            // Trees added after version 1 of the layout start empty in an older store, which
            // is exactly its state: nobody had a second factor.
            mfa: tree("mfa")?,
            mfa_challenges: tree("mfa_challenges")?,
            db,
        };
        store.check_schema()?;
        Ok(store)
    }

    fn check_schema(&self) -> Result<(), StoreError> {
        match self.meta.get(SCHEMA_KEY).map_err(sled_error)? {
            Some(found) => {
                let found = <[u8; 4]>::try_from(found.as_ref())
                    .map(u32::from_be_bytes)
                    .map_err(|_| StoreError::Corrupt("malformed schema version".into()))?;
                if found != SCHEMA_VERSION {
                    return Err(StoreError::SchemaMismatch {
                        found,
                        expected: SCHEMA_VERSION,
                    });
                }
                Ok(())
            }
            None => {
                // Records without a version mean someone else's data or a damaged store;
                // stamping our version on them would hide that.
                if !self.users.is_empty() || !self.sessions.is_empty() {
                    return Err(StoreError::Corrupt(
                        "records present but no schema version".into(),
                    ));
                }
                self.meta
                    .insert(SCHEMA_KEY, &SCHEMA_VERSION.to_be_bytes())
                    .map_err(sled_error)?;
                self.flush()
            }
        }
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(drop).map_err(sled_error)
    }

    fn scan(&self, tree: &Tree) -> impl Iterator<Item = Result<(IVec, IVec), StoreError>> {
        tree.iter().map(|item| item.map_err(sled_error))
    }

    /// Removes one dead session (expired, or revoked long enough ago) and its entry in the
    /// owner's list; `false` if, read again inside the transaction, it is gone or not dead.
    fn purge_session(
        &self,
        sid: &[u8],
        user_id: &str,
        now: u64,
        revoked_grace_secs: u64,
    ) -> Result<bool, StoreError> {
        finish(
            (&self.sessions, &self.sessions_by_user).transaction(|(sessions, by_user)| {
                let Some(bytes) = sessions.get(sid)? else {
                    return Ok(false);
                };
                let session: SessionRecord = decode(&bytes, "session").map_err(abort)?;
                if !session_is_dead(&session, now, revoked_grace_secs) {
                    return Ok(false);
                }
                sessions.remove(sid)?;
                let mut sids: Vec<String> = match by_user.get(user_id)? {
                    Some(list) => decode(&list, "session list").map_err(abort)?,
                    None => return Ok(true),
                };
                sids.retain(|s| s.as_bytes() != sid);
                if sids.is_empty() {
                    by_user.remove(user_id)?;
                } else {
                    by_user.insert(user_id, encode(&sids).map_err(abort)?)?;
                }
                Ok(true)
            }),
        )
    }
}

impl SledStore {
    /// Reads, edits and writes a user's second factor in one transaction (serialisable under
    /// sled's write lock, so two callers never both see the same step or recovery code).
    /// `edit` says whether it changed anything; nothing is written when it did not, or when
    /// there is no second factor.
    fn edit_mfa(
        &self,
        user_id: &str,
        edit: &mut dyn FnMut(&mut MfaRecord) -> bool,
    ) -> Result<bool, StoreError> {
        let edit = RefCell::new(edit);
        let changed = finish(self.mfa.transaction(|mfa| {
            let Some(bytes) = mfa.get(user_id)? else {
                return Ok(false);
            };
            let mut record: MfaRecord = decode(&bytes, "second factor").map_err(abort)?;
            if !(edit.borrow_mut())(&mut record) {
                return Ok(false);
            }
            mfa.insert(user_id, encode(&record).map_err(abort)?)?;
            Ok(true)
        }))?;
        if changed {
            self.flush()?;
        }
        Ok(changed)
    }
}

/// Cuts an export into chunks and counts what it passed on.
struct Pager<'a> {
    batch: usize,
    chunk: Vec<Record>,
    counts: Counts,
    out: &'a mut dyn FnMut(Vec<Record>) -> Result<(), StoreError>,
}

impl Pager<'_> {
    fn push(&mut self, record: Record) -> Result<(), StoreError> {
        self.counts.add(record.kind(), 1);
        self.chunk.push(record);
        if self.chunk.len() >= self.batch {
            let full = std::mem::replace(&mut self.chunk, Vec::with_capacity(self.batch));
            (self.out)(full)?;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<Counts, StoreError> {
        if !self.chunk.is_empty() {
            (self.out)(std::mem::take(&mut self.chunk))?;
        }
        Ok(self.counts)
    }
}

fn one_time_label(kind: OneTimeKind) -> &'static str {
    match kind {
        OneTimeKind::PasswordReset => "password-reset",
        OneTimeKind::EmailVerification => "email-verification",
    }
}

fn conflict(what: String) -> StoreError {
    StoreError::CopyConflict(what)
}

fn hash_from(bytes: &[u8], what: &str) -> Result<TokenHash, StoreError> {
    TokenHash::try_from(bytes).map_err(|_| StoreError::Corrupt(format!("malformed {what} hash")))
}

/// One record each: `Ok(true)` when it is (or, checking, would be) copied, `Ok(false)` when
/// the store holds it already, a `CopyConflict` when it holds something else under its key.
impl SledStore {
    fn import_user(&self, user: &UserRecord, write: bool) -> Result<bool, StoreError> {
        if let Some(bytes) = self.users.get(&user.id).map_err(sled_error)? {
            let existing: UserRecord = decode(&bytes, "user")?;
            return if existing == *user {
                Ok(false)
            } else {
                Err(conflict(format!("a different user {}", user.id)))
            };
        }
        let email = fold(&user.email);
        if self
            .users_by_email
            .get(&email)
            .map_err(sled_error)?
            .is_some()
        {
            return Err(conflict(format!(
                "another user with the email of user {}",
                user.id
            )));
        }
        let username = user.username.as_deref().map(fold);
        if let Some(name) = &username
            && self
                .users_by_username
                .get(name)
                .map_err(sled_error)?
                .is_some()
        {
            return Err(conflict(format!(
                "another user with the username of user {}",
                user.id
            )));
        }
        if write {
            self.users_by_email
                .insert(email.as_bytes(), user.id.as_bytes())
                .map_err(sled_error)?;
            if let Some(name) = &username {
                self.users_by_username
                    .insert(name.as_bytes(), user.id.as_bytes())
                    .map_err(sled_error)?;
            }
            self.users
                .insert(user.id.as_bytes(), encode(user)?)
                .map_err(sled_error)?;
        }
        Ok(true)
    }

    fn import_session(&self, session: &SessionRecord, write: bool) -> Result<bool, StoreError> {
        if let Some(bytes) = self.sessions.get(&session.id).map_err(sled_error)? {
            let existing: SessionRecord = decode(&bytes, "session")?;
            return if existing == *session {
                Ok(false)
            } else {
                Err(conflict(format!("a different session {}", session.id)))
            };
        }
        if write {
            self.sessions
                .insert(session.id.as_bytes(), encode(session)?)
                .map_err(sled_error)?;
            // Revoked sessions stay out of the user's list, as `create_session` keeps it.
            if !session.revoked {
                let user_id = session.user_id.as_bytes();
                let mut sids: Vec<String> = match self.sessions_by_user.get(user_id) {
                    Ok(Some(list)) => decode(&list, "session list")?,
                    Ok(None) => Vec::new(),
                    Err(e) => return Err(sled_error(e)),
                };
                if !sids.contains(&session.id) {
                    sids.push(session.id.clone());
                    self.sessions_by_user
                        .insert(user_id, encode(&sids)?)
                        .map_err(sled_error)?;
                }
            }
        }
        Ok(true)
    }

    fn import_refresh(&self, token: &RefreshRecord, write: bool) -> Result<bool, StoreError> {
        let entry = RefreshEntry {
            sid: token.session_id.clone(),
            state: if token.rotated {
                RefreshState::Rotated
            } else {
                RefreshState::Current
            },
            expires_at: token.expires_at,
        };
        if let Some(bytes) = self.refresh.get(token.hash).map_err(sled_error)? {
            let existing: RefreshEntry = decode(&bytes, "refresh token")?;
            return if existing.sid == entry.sid
                && existing.state == entry.state
                && existing.expires_at == entry.expires_at
            {
                Ok(false)
            } else {
                Err(conflict(format!(
                    "a different refresh token of session {}",
                    token.session_id
                )))
            };
        }
        if write {
            self.refresh
                .insert(token.hash.as_slice(), encode(&entry)?)
                .map_err(sled_error)?;
        }
        Ok(true)
    }

    fn import_one_time(&self, token: &OneTimeToken, write: bool) -> Result<bool, StoreError> {
        let key = token_key(token.kind, &token.hash);
        let owner = user_key(token.kind, &token.record.user_id);
        let label = one_time_label(token.kind);
        if let Some(bytes) = self.one_time.get(&key).map_err(sled_error)? {
            let existing: OneTimeRecord = decode(&bytes, "one-time token")?;
            return if existing == token.record {
                Ok(false)
            } else {
                Err(conflict(format!(
                    "a different {label} token of user {}",
                    token.record.user_id
                )))
            };
        }
        if self
            .one_time_by_user
            .get(&owner)
            .map_err(sled_error)?
            .is_some()
        {
            return Err(conflict(format!(
                "another pending {label} token for user {}",
                token.record.user_id
            )));
        }
        if write {
            self.one_time
                .insert(key, encode(&token.record)?)
                .map_err(sled_error)?;
            self.one_time_by_user
                .insert(owner, token.hash.as_slice())
                .map_err(sled_error)?;
        }
        Ok(true)
    }

    fn import_revocation(&self, revocation: &Revocation, write: bool) -> Result<bool, StoreError> {
        let key = revocation_key(revocation);
        if let Some(bytes) = self.revocations.get(&key).map_err(sled_error)? {
            let existing: Revocation = decode(&bytes, "revocation")?;
            if existing.until() >= revocation.until() {
                return Ok(false);
            }
        }
        if write {
            self.revocations
                .insert(key, encode(revocation)?)
                .map_err(sled_error)?;
        }
        Ok(true)
    }

    fn import_mfa(&self, record: &MfaRecord, write: bool) -> Result<bool, StoreError> {
        if let Some(bytes) = self.mfa.get(&record.user_id).map_err(sled_error)? {
            let existing: MfaRecord = decode(&bytes, "second factor")?;
            return if existing == *record {
                Ok(false)
            } else {
                Err(conflict(format!(
                    "a different second factor for user {}",
                    record.user_id
                )))
            };
        }
        if write {
            self.mfa
                .insert(record.user_id.as_bytes(), encode(record)?)
                .map_err(sled_error)?;
        }
        Ok(true)
    }

    fn import_mfa_challenge(
        &self,
        token: &MfaChallengeToken,
        write: bool,
    ) -> Result<bool, StoreError> {
        if let Some(bytes) = self.mfa_challenges.get(token.hash).map_err(sled_error)? {
            let existing: MfaChallenge = decode(&bytes, "second-factor challenge")?;
            return if existing == token.record {
                Ok(false)
            } else {
                Err(conflict(format!(
                    "a different second-factor challenge of user {}",
                    token.record.user_id
                )))
            };
        }
        if write {
            self.mfa_challenges
                .insert(token.hash.as_slice(), encode(&token.record)?)
                .map_err(sled_error)?;
        }
        Ok(true)
    }

    fn import_login_failure(
        &self,
        failure: &LoginFailureRecord,
        write: bool,
    ) -> Result<bool, StoreError> {
        if let Some(bytes) = self
            .login_failures
            .get(&failure.login)
            .map_err(sled_error)?
        {
            let existing: FailureRecord = decode(&bytes, "login failures")?;
            // The login name is usually an email: not named.
            return if existing == failure.record {
                Ok(false)
            } else {
                Err(conflict(
                    "a different login-failure counter for a login name".into(),
                ))
            };
        }
        if write {
            self.login_failures
                .insert(failure.login.as_bytes(), encode(&failure.record)?)
                .map_err(sled_error)?;
        }
        Ok(true)
    }
}

impl SyncStore for SledStore {
    fn create_user(&self, user: &UserRecord) -> Result<(), StoreError> {
        let id = user.id.as_str();
        let email = fold(&user.email);
        let username = user.username.as_deref().map(fold);
        let value = encode(user)?;
        finish(
            (&self.users, &self.users_by_email, &self.users_by_username).transaction(
                |(users, by_email, by_username)| {
                    if users.get(id)?.is_some() {
                        return Err(abort(StoreError::Conflict(UniqueKey::Id)));
                    }
                    if by_email.get(email.as_bytes())?.is_some() {
                        return Err(abort(StoreError::Conflict(UniqueKey::Email)));
                    }
                    if let Some(username) = &username {
                        if by_username.get(username.as_bytes())?.is_some() {
                            return Err(abort(StoreError::Conflict(UniqueKey::Username)));
                        }
                        by_username.insert(username.as_bytes(), id)?;
                    }
                    by_email.insert(email.as_bytes(), id)?;
                    users.insert(id, value.as_slice())?;
                    Ok(())
                },
            ),
        )?;
        self.flush()
    }

    fn get_user(&self, id: &str) -> Result<Option<UserRecord>, StoreError> {
        match self.users.get(id).map_err(sled_error)? {
            Some(bytes) => decode(&bytes, "user").map(Some),
            None => Ok(None),
        }
    }

    fn find_user_by_email(&self, email: &str) -> Result<Option<UserRecord>, StoreError> {
        match self.users_by_email.get(fold(email)).map_err(sled_error)? {
            Some(id) => self.get_user(&id_string(&id)?),
            None => Ok(None),
        }
    }

    fn find_user_by_username(&self, username: &str) -> Result<Option<UserRecord>, StoreError> {
        match self
            .users_by_username
            .get(fold(username))
            .map_err(sled_error)?
        {
            Some(id) => self.get_user(&id_string(&id)?),
            None => Ok(None),
        }
    }

    fn update_user(
        &self,
        id: &str,
        edit: &mut dyn FnMut(&mut UserRecord) -> Result<(), StoreError>,
    ) -> Result<UserRecord, StoreError> {
        // sled wants an `Fn` closure (it may rerun it); the cell lends it our `FnMut`.
        let edit = RefCell::new(edit);
        let updated = finish(
            (&self.users, &self.users_by_email, &self.users_by_username).transaction(
                |(users, by_email, by_username)| {
                    let Some(bytes) = users.get(id)? else {
                        return Err(abort(StoreError::NotFound));
                    };
                    let old: UserRecord = decode(&bytes, "user").map_err(abort)?;
                    let mut new = old.clone();
                    (*edit.borrow_mut())(&mut new).map_err(abort)?;
                    new.id.clone_from(&old.id);

                    let (old_email, new_email) = (fold(&old.email), fold(&new.email));
                    if old_email != new_email {
                        if let Some(owner) = by_email.get(new_email.as_bytes())? {
                            if owner.as_ref() != id.as_bytes() {
                                return Err(abort(StoreError::Conflict(UniqueKey::Email)));
                            }
                        }
                        by_email.remove(old_email.as_bytes())?;
                        by_email.insert(new_email.as_bytes(), id)?;
                    }

                    let old_username = old.username.as_deref().map(fold);
                    let new_username = new.username.as_deref().map(fold);
                    if old_username != new_username {
                        if let Some(name) = &new_username {
                            if let Some(owner) = by_username.get(name.as_bytes())? {
                                if owner.as_ref() != id.as_bytes() {
                                    return Err(abort(StoreError::Conflict(UniqueKey::Username)));
                                }
                            }
                        }
                        if let Some(name) = &old_username {
                            by_username.remove(name.as_bytes())?;
                        }
                        if let Some(name) = &new_username {
                            by_username.insert(name.as_bytes(), id)?;
                        }
                    }

                    users.insert(id, encode(&new).map_err(abort)?)?;
                    Ok(new)
                },
            ),
        )?;
        self.flush()?;
        Ok(updated)
    }

    fn delete_user(&self, id: &str) -> Result<Vec<SessionRecord>, StoreError> {
        let live = finish(
            (
                &self.users,
                &self.users_by_email,
                &self.users_by_username,
                &self.sessions,
                &self.sessions_by_user,
                &self.one_time,
                &self.one_time_by_user,
                &self.mfa,
            )
                .transaction(
                    |(
                        users,
                        by_email,
                        by_username,
                        sessions,
                        sessions_by_user,
                        one_time,
                        ot_by_user,
                        mfa,
                    )| {
                        let Some(bytes) = users.remove(id)? else {
                            return Err(abort(StoreError::NotFound));
                        };
                        let user: UserRecord = decode(&bytes, "user").map_err(abort)?;
                        by_email.remove(fold(&user.email).as_bytes())?;
                        if let Some(username) = &user.username {
                            by_username.remove(fold(username).as_bytes())?;
                        }

                        let mut live = Vec::new();
                        if let Some(list) = sessions_by_user.remove(id)? {
                            let sids: Vec<String> = decode(&list, "session list").map_err(abort)?;
                            for sid in sids {
                                if let Some(bytes) = sessions.remove(sid.as_bytes())? {
                                    let session: SessionRecord =
                                        decode(&bytes, "session").map_err(abort)?;
                                    if !session.revoked {
                                        live.push(session);
                                    }
                                }
                            }
                        }

                        for kind in [OneTimeKind::PasswordReset, OneTimeKind::EmailVerification] {
                            if let Some(hash) = ot_by_user.remove(user_key(kind, id))? {
                                one_time.remove(token_key(kind, &hash))?;
                            }
                        }
                        mfa.remove(id)?;
                        Ok(live)
                    },
                ),
        )?;
        self.flush()?;
        Ok(live)
    }

    fn list_users(&self, limit: usize, cursor: Option<&str>) -> Result<UserPage, StoreError> {
        let start = match cursor {
            Some(cursor) => Bound::Excluded(cursor.as_bytes()),
            None => Bound::Unbounded,
        };
        let mut users = Vec::with_capacity(limit.min(1024));
        let mut more = false;
        for item in self.users.range::<&[u8], _>((start, Bound::Unbounded)) {
            let (_, bytes) = item.map_err(sled_error)?;
            if users.len() == limit {
                more = true;
                break;
            }
            users.push(decode::<UserRecord>(&bytes, "user")?);
        }
        let next_cursor = if more {
            users.last().map(|u| u.id.clone())
        } else {
            None
        };
        Ok(UserPage { users, next_cursor })
    }

    fn count_users(&self) -> Result<usize, StoreError> {
        Ok(self.users.len())
    }

    fn create_session(
        &self,
        session: &SessionRecord,
        refresh_hash: &TokenHash,
        verified_hash: Option<&str>,
        max_sessions: usize,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        let sid = session.id.as_str();
        let user_id = session.user_id.as_str();
        let value = encode(session)?;
        let entry = encode(&RefreshEntry {
            sid: session.id.clone(),
            state: RefreshState::Current,
            expires_at: session.expires_at,
        })?;
        let capped = finish(
            (
                &self.users,
                &self.sessions,
                &self.sessions_by_user,
                &self.refresh,
            )
                .transaction(|(users, sessions, by_user, refresh)| {
                    let Some(user) = users.get(user_id)? else {
                        return Err(abort(StoreError::NotFound));
                    };
                    // The login that asked verified a password against a hash read before
                    // argon2 ran; if the password changed or the account was locked since,
                    // the session must not be born.
                    if let Some(verified) = verified_hash {
                        let user: UserRecord = decode(&user, "user").map_err(abort)?;
                        if user.locked || user.password_hash != verified {
                            return Err(abort(StoreError::NotFound));
                        }
                    }
                    if sessions.get(sid)?.is_some() || refresh.get(refresh_hash)?.is_some() {
                        return Err(abort(StoreError::Conflict(UniqueKey::Id)));
                    }
                    let mut sids: Vec<String> = match by_user.get(user_id)? {
                        Some(list) => decode(&list, "session list").map_err(abort)?,
                        None => Vec::new(),
                    };
                    // Drop sessions that are gone or over, so the list stays as short as the
                    // user's live sessions even if purging never runs.
                    let mut kept = Vec::with_capacity(sids.len() + 1);
                    for old in sids.drain(..) {
                        let Some(bytes) = sessions.get(old.as_bytes())? else {
                            continue;
                        };
                        let old_session: SessionRecord =
                            decode(&bytes, "session").map_err(abort)?;
                        if old_session.expires_at <= session.created_at {
                            sessions.remove(old.as_bytes())?;
                        } else if !old_session.revoked {
                            // Revoked sessions stay stored (rotated tokens still resolve to
                            // them for reuse detection) but leave the user's list.
                            kept.push((old, old_session));
                        }
                    }
                    // Bound the sessions one account can hold: past the cap the oldest is
                    // revoked, so logging in over and over cannot make this list (and every
                    // login that reads it) grow without limit. Its access tokens run out
                    // within access_ttl; its refresh tokens stop at once.
                    let mut capped = Vec::new();
                    while !kept.is_empty() && kept.len() >= max_sessions.max(1) {
                        let (oldest, mut record) = kept.remove(0);
                        record.revoked = true;
                        sessions.insert(oldest.as_bytes(), encode(&record).map_err(abort)?)?;
                        capped.push(record);
                    }
                    let mut kept: Vec<String> = kept.into_iter().map(|(id, _)| id).collect();
                    kept.push(session.id.clone());
                    by_user.insert(user_id, encode(&kept).map_err(abort)?)?;
                    sessions.insert(sid, value.as_slice())?;
                    refresh.insert(refresh_hash.as_slice(), entry.as_slice())?;
                    Ok(capped)
                }),
        )?;
        self.flush()?;
        Ok(capped)
    }

    fn rotate_refresh(
        &self,
        old: &TokenHash,
        new: &TokenHash,
        now: u64,
        idle_timeout_secs: u64,
    ) -> Result<RotateOutcome, StoreError> {
        let outcome = finish((&self.refresh, &self.sessions, &self.users).transaction(
            |(refresh, sessions, users)| {
                let Some(bytes) = refresh.get(old)? else {
                    return Ok(RotateOutcome::Invalid);
                };
                let mut entry: RefreshEntry = decode(&bytes, "refresh token").map_err(abort)?;
                let Some(bytes) = sessions.get(entry.sid.as_bytes())? else {
                    return Ok(RotateOutcome::Invalid);
                };
                let mut session: SessionRecord = decode(&bytes, "session").map_err(abort)?;

                if entry.state == RefreshState::Rotated {
                    // Reuse: revoking the session kills every token of the family, the
                    // successor included, since each of them points at this session.
                    if !session.revoked {
                        session.revoked = true;
                        sessions.insert(session.id.as_bytes(), encode(&session).map_err(abort)?)?;
                    }
                    return Ok(RotateOutcome::Reused { session });
                }

                let idle = idle_timeout_secs > 0
                    && now >= session.last_used_at.saturating_add(idle_timeout_secs);
                if session.revoked || now >= session.expires_at || idle {
                    return Ok(RotateOutcome::Invalid);
                }
                let Some(bytes) = users.get(session.user_id.as_bytes())? else {
                    return Ok(RotateOutcome::Invalid);
                };
                let user: UserRecord = decode(&bytes, "user").map_err(abort)?;
                if user.locked {
                    return Ok(RotateOutcome::Invalid);
                }
                if refresh.get(new)?.is_some() {
                    return Err(abort(StoreError::Conflict(UniqueKey::Id)));
                }

                entry.state = RefreshState::Rotated;
                refresh.insert(old.as_slice(), encode(&entry).map_err(abort)?)?;
                entry.state = RefreshState::Current;
                refresh.insert(new.as_slice(), encode(&entry).map_err(abort)?)?;
                session.last_used_at = now;
                sessions.insert(session.id.as_bytes(), encode(&session).map_err(abort)?)?;
                Ok(RotateOutcome::Rotated { session, user })
            },
        ))?;
        if outcome != RotateOutcome::Invalid {
            self.flush()?;
        }
        Ok(outcome)
    }

    fn get_session(&self, sid: &str) -> Result<Option<SessionRecord>, StoreError> {
        match self.sessions.get(sid).map_err(sled_error)? {
            Some(bytes) => decode(&bytes, "session").map(Some),
            None => Ok(None),
        }
    }

    fn revoke_session(&self, sid: &str) -> Result<Option<SessionRecord>, StoreError> {
        let revoked = finish(self.sessions.transaction(|sessions| {
            let Some(bytes) = sessions.get(sid)? else {
                return Ok(None);
            };
            let mut session: SessionRecord = decode(&bytes, "session").map_err(abort)?;
            if session.revoked {
                return Ok(None);
            }
            session.revoked = true;
            sessions.insert(sid, encode(&session).map_err(abort)?)?;
            Ok(Some(session))
        }))?;
        if revoked.is_some() {
            self.flush()?;
        }
        Ok(revoked)
    }

    fn revoke_user_sessions(
        &self,
        user_id: &str,
        except: Option<&str>,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        let revoked = finish((&self.sessions, &self.sessions_by_user).transaction(
            |(sessions, by_user)| {
                let Some(list) = by_user.get(user_id)? else {
                    return Ok(Vec::new());
                };
                let sids: Vec<String> = decode(&list, "session list").map_err(abort)?;
                let mut revoked = Vec::new();
                for sid in sids {
                    if Some(sid.as_str()) == except {
                        continue;
                    }
                    let Some(bytes) = sessions.get(sid.as_bytes())? else {
                        continue;
                    };
                    let mut session: SessionRecord = decode(&bytes, "session").map_err(abort)?;
                    if session.revoked {
                        continue;
                    }
                    session.revoked = true;
                    sessions.insert(sid.as_bytes(), encode(&session).map_err(abort)?)?;
                    revoked.push(session);
                }
                Ok(revoked)
            },
        ))?;
        if !revoked.is_empty() {
            self.flush()?;
        }
        Ok(revoked)
    }

    fn put_revocation(&self, revocation: &Revocation) -> Result<(), StoreError> {
        let key = revocation_key(revocation);
        finish(self.revocations.transaction(|revocations| {
            let mut value = revocation.clone();
            if let Some(bytes) = revocations.get(key.as_slice())? {
                let existing: Revocation = decode(&bytes, "revocation").map_err(abort)?;
                if existing.until() > value.until() {
                    value = existing;
                }
            }
            revocations.insert(key.as_slice(), encode(&value).map_err(abort)?)?;
            Ok(())
        }))?;
        self.flush()
    }

    fn load_revocations(&self, now: u64) -> Result<Vec<Revocation>, StoreError> {
        let mut live = Vec::new();
        for item in self.scan(&self.revocations) {
            let (_, bytes) = item?;
            let revocation: Revocation = decode(&bytes, "revocation")?;
            if revocation.until() > now {
                live.push(revocation);
            }
        }
        Ok(live)
    }

    fn login_failures(
        &self,
        login: &str,
        now: u64,
        policy: &LockoutPolicy,
    ) -> Result<FailureState, StoreError> {
        let record = match self.login_failures.get(fold(login)).map_err(sled_error)? {
            Some(bytes) => Some(decode::<FailureRecord>(&bytes, "login failures")?),
            None => None,
        };
        Ok(failure_state(record, now, policy))
    }

    fn record_login_failure(
        &self,
        login: &str,
        now: u64,
        policy: &LockoutPolicy,
    ) -> Result<FailureState, StoreError> {
        let key = fold(login);
        let record = finish(self.login_failures.transaction(|failures| {
            let previous = match failures.get(key.as_bytes())? {
                Some(bytes) => {
                    Some(decode::<FailureRecord>(&bytes, "login failures").map_err(abort)?)
                }
                None => None,
            };
            let record = apply_failure(previous, now, policy);
            failures.insert(key.as_bytes(), encode(&record).map_err(abort)?)?;
            Ok(record)
        }))?;
        self.flush()?;
        Ok(failure_state(Some(record), now, policy))
    }

    fn clear_login_failures(&self, login: &str) -> Result<(), StoreError> {
        if self
            .login_failures
            .remove(fold(login))
            .map_err(sled_error)?
            .is_some()
        {
            self.flush()?;
        }
        Ok(())
    }

    fn put_one_time(
        &self,
        kind: OneTimeKind,
        hash: &TokenHash,
        record: &OneTimeRecord,
    ) -> Result<(), StoreError> {
        let key = token_key(kind, hash);
        let owner = user_key(kind, &record.user_id);
        let value = encode(record)?;
        finish(
            (&self.one_time, &self.one_time_by_user).transaction(|(one_time, by_user)| {
                if one_time.get(key.as_slice())?.is_some() {
                    return Err(abort(StoreError::Conflict(UniqueKey::Id)));
                }
                if let Some(previous) = by_user.get(owner.as_slice())? {
                    one_time.remove(token_key(kind, &previous))?;
                }
                one_time.insert(key.as_slice(), value.as_slice())?;
                by_user.insert(owner.as_slice(), hash.as_slice())?;
                Ok(())
            }),
        )?;
        self.flush()
    }

    fn take_one_time(
        &self,
        kind: OneTimeKind,
        hash: &TokenHash,
        now: u64,
    ) -> Result<Option<OneTimeRecord>, StoreError> {
        let key = token_key(kind, hash);
        let taken = finish((&self.one_time, &self.one_time_by_user).transaction(
            |(one_time, by_user)| {
                let Some(bytes) = one_time.remove(key.as_slice())? else {
                    return Ok(None);
                };
                let record: OneTimeRecord = decode(&bytes, "one-time token").map_err(abort)?;
                let owner = user_key(kind, &record.user_id);
                if by_user
                    .get(owner.as_slice())?
                    .is_some_and(|h| h.as_ref() == hash.as_slice())
                {
                    by_user.remove(owner)?;
                }
                Ok(Some(record))
            },
        ))?;
        let Some(record) = taken else {
            return Ok(None);
        };
        self.flush()?;
        Ok((record.expires_at > now).then_some(record))
    }

    fn peek_one_time(
        &self,
        kind: OneTimeKind,
        hash: &TokenHash,
        now: u64,
    ) -> Result<Option<OneTimeRecord>, StoreError> {
        let Some(bytes) = self
            .one_time
            .get(token_key(kind, hash))
            .map_err(sled_error)?
        else {
            return Ok(None);
        };
        let record: OneTimeRecord = decode(&bytes, "one-time token")?;
        Ok((record.expires_at > now).then_some(record))
    }

    fn void_one_time_for_user(&self, kind: OneTimeKind, user_id: &str) -> Result<bool, StoreError> {
        let owner = user_key(kind, user_id);
        let voided = finish((&self.one_time, &self.one_time_by_user).transaction(
            |(one_time, by_user)| {
                let Some(hash) = by_user.remove(owner.as_slice())? else {
                    return Ok(false);
                };
                one_time.remove(token_key(kind, &hash))?;
                Ok(true)
            },
        ))?;
        if voided {
            self.flush()?;
        }
        Ok(voided)
    }

    fn get_mfa(&self, user_id: &str) -> Result<Option<MfaRecord>, StoreError> {
        match self.mfa.get(user_id).map_err(sled_error)? {
            Some(bytes) => decode(&bytes, "second factor").map(Some),
            None => Ok(None),
        }
    }

    fn put_mfa_pending(&self, record: &MfaRecord) -> Result<bool, StoreError> {
        let id = record.user_id.as_str();
        let value = encode(record)?;
        let stored = finish((&self.users, &self.mfa).transaction(|(users, mfa)| {
            if users.get(id)?.is_none() {
                return Err(abort(StoreError::NotFound));
            }
            if let Some(bytes) = mfa.get(id)? {
                let existing: MfaRecord = decode(&bytes, "second factor").map_err(abort)?;
                if existing.enabled {
                    return Ok(false);
                }
            }
            mfa.insert(id, value.as_slice())?;
            Ok(true)
        }))?;
        if stored {
            self.flush()?;
        }
        Ok(stored)
    }

    fn enable_mfa(
        &self,
        user_id: &str,
        secret: &[u8],
        step: u64,
        recovery_codes: &[TokenHash],
    ) -> Result<bool, StoreError> {
        self.edit_mfa(user_id, &mut |record| {
            if record.enabled || record.secret != secret {
                return false;
            }
            record.enabled = true;
            record.last_step = step;
            record.recovery_codes = recovery_codes.to_vec();
            true
        })
    }

    fn accept_mfa_step(&self, user_id: &str, step: u64) -> Result<bool, StoreError> {
        self.edit_mfa(user_id, &mut |record| {
            if !record.enabled || step <= record.last_step {
                return false;
            }
            record.last_step = step;
            true
        })
    }

    fn take_recovery_code(&self, user_id: &str, hash: &TokenHash) -> Result<bool, StoreError> {
        self.edit_mfa(user_id, &mut |record| {
            let before = record.recovery_codes.len();
            record.recovery_codes.retain(|h| h != hash);
            record.enabled && record.recovery_codes.len() < before
        })
    }

    fn delete_mfa(&self, user_id: &str) -> Result<bool, StoreError> {
        let removed = self.mfa.remove(user_id).map_err(sled_error)?.is_some();
        if removed {
            self.flush()?;
        }
        Ok(removed)
    }

    fn put_mfa_challenge(&self, hash: &TokenHash, record: &MfaChallenge) -> Result<(), StoreError> {
        let swapped = self
            .mfa_challenges
            .compare_and_swap(hash, None::<&[u8]>, Some(encode(record)?))
            .map_err(sled_error)?;
        if swapped.is_err() {
            return Err(StoreError::Conflict(UniqueKey::Id));
        }
        self.flush()
    }

    fn take_mfa_challenge(
        &self,
        hash: &TokenHash,
        now: u64,
    ) -> Result<Option<MfaChallenge>, StoreError> {
        // `remove` is atomic: of two callers, one gets the value and the other `None`.
        let Some(bytes) = self.mfa_challenges.remove(hash).map_err(sled_error)? else {
            return Ok(None);
        };
        self.flush()?;
        let record: MfaChallenge = decode(&bytes, "second-factor challenge")?;
        Ok((record.expires_at > now).then_some(record))
    }

    fn purge_expired(&self, now: u64, revoked_grace_secs: u64) -> Result<PurgeStats, StoreError> {
        let mut stats = PurgeStats::default();

        for item in self.scan(&self.sessions) {
            let (sid, bytes) = item?;
            let session: SessionRecord = decode(&bytes, "session")?;
            if session_is_dead(&session, now, revoked_grace_secs)
                && self.purge_session(&sid, &session.user_id, now, revoked_grace_secs)?
            {
                stats.sessions += 1;
            }
        }

        // A hash is dead once its session's absolute expiry has passed or its session is gone;
        // neither can be undone (sessions are never re-created under an old sid), so a plain
        // remove cannot race with a rotation.
        for item in self.scan(&self.refresh) {
            let (hash, bytes) = item?;
            let entry: RefreshEntry = decode(&bytes, "refresh token")?;
            let gone = !self
                .sessions
                .contains_key(entry.sid.as_bytes())
                .map_err(sled_error)?;
            if entry.expires_at <= now || gone {
                self.refresh.remove(hash).map_err(sled_error)?;
                stats.refresh_tokens += 1;
            }
        }

        for item in self.scan(&self.one_time) {
            let (key, bytes) = item?;
            let record: OneTimeRecord = decode(&bytes, "one-time token")?;
            if record.expires_at > now {
                continue;
            }
            let Some((&kind_byte, hash)) = key.split_first() else {
                continue;
            };
            let owner = [&[kind_byte], record.user_id.as_bytes()].concat();
            finish(
                (&self.one_time, &self.one_time_by_user).transaction(|(one_time, by_user)| {
                    one_time.remove(key.as_ref())?;
                    if by_user
                        .get(owner.as_slice())?
                        .is_some_and(|h| h.as_ref() == hash)
                    {
                        by_user.remove(owner.as_slice())?;
                    }
                    Ok(())
                }),
            )?;
            stats.one_time_tokens += 1;
        }

        // Compare-and-swap so that an entry renewed meanwhile (a later `until`) survives.
        for item in self.scan(&self.revocations) {
            let (key, bytes) = item?;
            let revocation: Revocation = decode(&bytes, "revocation")?;
            if revocation.until() <= now && remove_if_unchanged(&self.revocations, &key, &bytes)? {
                stats.revocations += 1;
            }
        }
        for item in self.scan(&self.login_failures) {
            let (key, bytes) = item?;
            let record: FailureRecord = decode(&bytes, "login failures")?;
            if record.expires_at <= now && remove_if_unchanged(&self.login_failures, &key, &bytes)?
            {
                stats.login_failures += 1;
            }
        }

        for item in self.scan(&self.mfa_challenges) {
            let (key, bytes) = item?;
            let record: MfaChallenge = decode(&bytes, "second-factor challenge")?;
            if record.expires_at <= now && remove_if_unchanged(&self.mfa_challenges, &key, &bytes)?
            {
                stats.mfa_challenges += 1;
            }
        }

        if stats != PurgeStats::default() {
            self.flush()?;
        }
        Ok(stats)
    }

    fn health(&self) -> Result<(), StoreError> {
        self.meta.get(SCHEMA_KEY).map_err(sled_error)?;
        Ok(())
    }

    fn export(
        &self,
        batch: usize,
        out: &mut dyn FnMut(Vec<Record>) -> Result<(), StoreError>,
    ) -> Result<Counts, StoreError> {
        let mut pager = Pager {
            batch: batch.max(1),
            chunk: Vec::with_capacity(batch.clamp(1, 4096)),
            counts: Counts::default(),
            out,
        };
        for item in self.scan(&self.users) {
            let (_, bytes) = item?;
            pager.push(Record::User(decode(&bytes, "user")?))?;
        }
        // Dead records nothing can reach are left out (see the contract): revoked sessions
        // of deleted users, and the refresh hashes of sessions that are gone.
        let session_owner_exists = |session: &SessionRecord| {
            self.users
                .contains_key(session.user_id.as_bytes())
                .map_err(sled_error)
        };
        for item in self.scan(&self.sessions) {
            let (_, bytes) = item?;
            let session: SessionRecord = decode(&bytes, "session")?;
            if session_owner_exists(&session)? {
                pager.push(Record::Session(session))?;
            }
        }
        for item in self.scan(&self.refresh) {
            let (hash, bytes) = item?;
            let entry: RefreshEntry = decode(&bytes, "refresh token")?;
            let Some(session) = self.sessions.get(&entry.sid).map_err(sled_error)? else {
                continue;
            };
            if !session_owner_exists(&decode(&session, "session")?)? {
                continue;
            }
            pager.push(Record::Refresh(RefreshRecord {
                hash: hash_from(&hash, "refresh token")?,
                session_id: entry.sid,
                rotated: entry.state == RefreshState::Rotated,
                expires_at: entry.expires_at,
            }))?;
        }
        for item in self.scan(&self.one_time) {
            let (key, bytes) = item?;
            let (kind, hash) = match key.split_first() {
                Some((b'r', hash)) => (OneTimeKind::PasswordReset, hash),
                Some((b'v', hash)) => (OneTimeKind::EmailVerification, hash),
                _ => return Err(StoreError::Corrupt("malformed one-time token key".into())),
            };
            pager.push(Record::OneTime(OneTimeToken {
                kind,
                hash: hash_from(hash, "one-time token")?,
                record: decode(&bytes, "one-time token")?,
            }))?;
        }
        for item in self.scan(&self.revocations) {
            let (_, bytes) = item?;
            pager.push(Record::Revocation(decode(&bytes, "revocation")?))?;
        }
        for item in self.scan(&self.login_failures) {
            let (login, bytes) = item?;
            pager.push(Record::LoginFailure(LoginFailureRecord {
                login: String::from_utf8(login.to_vec())
                    .map_err(|_| StoreError::Corrupt("non-UTF-8 login name".into()))?,
                record: decode(&bytes, "login failures")?,
            }))?;
        }
        // As with sessions: a second factor or challenge of a deleted user is unreachable.
        let user_exists = |id: &str| self.users.contains_key(id.as_bytes()).map_err(sled_error);
        for item in self.scan(&self.mfa) {
            let (_, bytes) = item?;
            let record: MfaRecord = decode(&bytes, "second factor")?;
            if user_exists(&record.user_id)? {
                pager.push(Record::Mfa(record))?;
            }
        }
        for item in self.scan(&self.mfa_challenges) {
            let (hash, bytes) = item?;
            let record: MfaChallenge = decode(&bytes, "second-factor challenge")?;
            if user_exists(&record.user_id)? {
                pager.push(Record::MfaChallenge(MfaChallengeToken {
                    hash: hash_from(&hash, "second-factor challenge")?,
                    record,
                }))?;
            }
        }
        pager.finish()
    }

    fn import_begin(&self, mode: ImportMode) -> Result<(), StoreError> {
        if mode == ImportMode::Write {
            self.meta.insert(COPY_MARK, &[1]).map_err(sled_error)?;
            self.flush()?;
        }
        Ok(())
    }

    fn import_records(
        &self,
        records: &[Record],
        mode: ImportMode,
        imported: &mut Imported,
    ) -> Result<(), StoreError> {
        let write = mode == ImportMode::Write;
        for record in records {
            let copied = match record {
                Record::User(user) => self.import_user(user, write)?,
                Record::Session(session) => self.import_session(session, write)?,
                Record::Refresh(token) => self.import_refresh(token, write)?,
                Record::OneTime(token) => self.import_one_time(token, write)?,
                Record::Revocation(revocation) => self.import_revocation(revocation, write)?,
                Record::LoginFailure(failure) => self.import_login_failure(failure, write)?,
                Record::Mfa(record) => self.import_mfa(record, write)?,
                Record::MfaChallenge(token) => self.import_mfa_challenge(token, write)?,
            };
            imported.count(record.kind(), copied);
        }
        Ok(())
    }

    fn import_end(&self, mode: ImportMode) -> Result<(), StoreError> {
        if mode == ImportMode::Write {
            // Everything on disk first; only then may the store be served.
            self.flush()?;
            self.meta.remove(COPY_MARK).map_err(sled_error)?;
            self.flush()?;
        }
        Ok(())
    }

    fn stats(&self) -> Result<StoreStats, StoreError> {
        let count_kind = |kind: OneTimeKind| {
            self.one_time
                .scan_prefix([kind_byte(kind)])
                .try_fold(0usize, |n, item| item.map(|_| n + 1))
                .map_err(sled_error)
        };
        Ok(StoreStats {
            users: self.users.len(),
            sessions: self.sessions.len(),
            refresh_tokens: self.refresh.len(),
            password_reset_tokens: count_kind(OneTimeKind::PasswordReset)?,
            email_verification_tokens: count_kind(OneTimeKind::EmailVerification)?,
            revocations: self.revocations.len(),
            login_failures: self.login_failures.len(),
        })
    }
}

/// Whether purging may remove a session (and with it its family's refresh hashes): past its
/// absolute expiry, or revoked and unused for `revoked_grace_secs` (the argument is in the
/// `store` module docs, *Purging*).
fn session_is_dead(session: &SessionRecord, now: u64, revoked_grace_secs: u64) -> bool {
    session.expires_at <= now
        || (session.revoked && session.last_used_at.saturating_add(revoked_grace_secs) <= now)
}

fn kind_byte(kind: OneTimeKind) -> u8 {
    match kind {
        OneTimeKind::PasswordReset => b'r',
        OneTimeKind::EmailVerification => b'v',
    }
}

fn token_key(kind: OneTimeKind, hash: &[u8]) -> Vec<u8> {
    [&[kind_byte(kind)], hash].concat()
}

fn user_key(kind: OneTimeKind, user_id: &str) -> Vec<u8> {
    [&[kind_byte(kind)], user_id.as_bytes()].concat()
}

fn revocation_key(revocation: &Revocation) -> Vec<u8> {
    match revocation {
        Revocation::Session { sid, .. } => [b"s", sid.as_bytes()].concat(),
        Revocation::User {
            user_id,
            issued_before,
            except_sid,
            ..
        } => [
            b"u".as_slice(),
            user_id.as_bytes(),
            &[0],
            &issued_before.to_be_bytes(),
            except_sid.as_deref().unwrap_or("").as_bytes(),
        ]
        .concat(),
    }
}

fn remove_if_unchanged(tree: &Tree, key: &[u8], expected: &IVec) -> Result<bool, StoreError> {
    let swapped = tree
        .compare_and_swap(key, Some(expected), None::<&[u8]>)
        .map_err(sled_error)?;
    Ok(swapped.is_ok())
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    // Our records have only string keys and plain fields, so this cannot fail in practice.
    serde_json::to_vec(value).map_err(|e| StoreError::Io(format!("cannot encode record: {e}")))
}

fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, StoreError> {
    serde_json::from_slice(bytes)
        .map_err(|e| StoreError::Corrupt(format!("undecodable {what}: {e}")))
}

fn id_string(bytes: &[u8]) -> Result<String, StoreError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| StoreError::Corrupt("non-UTF-8 user id".into()))
}

fn abort(error: StoreError) -> ConflictableTransactionError<StoreError> {
    ConflictableTransactionError::Abort(error)
}

fn finish<T>(result: Result<T, TransactionError<StoreError>>) -> Result<T, StoreError> {
    result.map_err(|e| match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => sled_error(e),
    })
}

fn sled_error(error: ::sled::Error) -> StoreError {
    match error {
        ::sled::Error::Corruption { at, .. } => {
            StoreError::Corrupt(format!("sled reports corruption at {at:?}"))
        }
        ::sled::Error::Io(e) => StoreError::Io(e.to_string()),
        other => StoreError::Io(other.to_string()),
    }
}

fn open_error(error: ::sled::Error, path: &Path) -> StoreError {
    if let ::sled::Error::Io(io) = &error {
        if io.to_string().starts_with(SLED_LOCK_MESSAGE) {
            return StoreError::Locked {
                path: path.display().to_string(),
            };
        }
    }
    sled_error(error)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Barrier};
    use std::thread;

    use super::super::new_id;
    use super::*;
    use crate::token::token_hash;

    /// How long a revoked session is kept after its last use, in the purge tests.
    const GRACE: u64 = 100;

    fn open() -> (tempfile::TempDir, SledStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        (dir, store)
    }

    fn user(email: &str, username: Option<&str>) -> UserRecord {
        UserRecord {
            id: new_id(),
            email: email.into(),
            username: username.map(Into::into),
            name: None,
            password_hash: "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaA".into(),
            roles: vec!["reader".into()],
            email_verified: false,
            locked: false,
            created_at: 100,
            updated_at: 100,
            password_changed_at: 100,
        }
    }

    fn session(user_id: &str, now: u64, ttl: u64) -> SessionRecord {
        SessionRecord {
            id: new_id(),
            user_id: user_id.into(),
            created_at: now,
            last_used_at: now,
            expires_at: now + ttl,
            revoked: false,
            otp: false,
        }
    }

    fn one_time(user_id: &str, expires_at: u64) -> OneTimeRecord {
        OneTimeRecord {
            user_id: user_id.into(),
            email: "a@example.com".into(),
            expires_at,
        }
    }

    /// Copies a store directory as it is on disk right now: what a process killed at this
    /// instant would leave behind (the OS keeps written data; only unflushed buffers in the
    /// process are lost).
    fn snapshot(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                snapshot(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), target).unwrap();
            }
        }
    }

    #[test]
    fn uniqueness_is_case_folded() {
        // (existing users, new user, expected result)
        fn check(
            existing: &[(&str, Option<&str>)],
            new: (&str, Option<&str>),
            expect: Result<(), StoreError>,
        ) {
            let (_dir, store) = open();
            for (email, username) in existing {
                store.create_user(&user(email, *username)).unwrap();
            }
            let got = store.create_user(&user(new.0, new.1));
            assert_eq!(got, expect, "existing {existing:?}, new {new:?}");
        }
        let conflict = |key| Err(StoreError::Conflict(key));
        check(&[], ("a@example.com", Some("alice")), Ok(()));
        check(
            &[("a@example.com", None)],
            ("A@Example.COM", None),
            conflict(UniqueKey::Email),
        );
        check(
            &[("a@example.com", None)],
            ("  a@example.com ", None),
            conflict(UniqueKey::Email),
        );
        check(
            &[("a@example.com", Some("alice"))],
            ("b@example.com", Some("ALICE")),
            conflict(UniqueKey::Username),
        );
        check(
            &[("a@example.com", Some("alice"))],
            ("b@example.com", Some(" Alice ")),
            conflict(UniqueKey::Username),
        );
        check(
            &[("a@example.com", Some("alice"))],
            ("b@example.com", Some("bob")),
            Ok(()),
        );
        check(&[("a@example.com", None)], ("b@example.com", None), Ok(()));
    }

    #[test]
    fn lookups_fold_and_dispatch_on_at_sign() {
        let (_dir, store) = open();
        let alice = user("Alice@Example.com", Some("Alice"));
        store.create_user(&alice).unwrap();
        for login in ["alice@example.com", " ALICE@EXAMPLE.COM", "alice", "ALICE "] {
            let found = store.find_user_by_login(login).unwrap();
            assert_eq!(found.as_ref(), Some(&alice), "login {login:?}");
        }
        assert_eq!(store.find_user_by_login("bob").unwrap(), None);
        assert_eq!(store.find_user_by_email("alice").unwrap(), None);
        assert_eq!(store.get_user(&alice.id).unwrap(), Some(alice.clone()));
        assert_eq!(store.get_user("nope").unwrap(), None);
        assert_eq!(
            store
                .find_user_by_email("alice@example.com")
                .unwrap()
                .unwrap()
                .email,
            "Alice@Example.com"
        );
    }

    #[test]
    fn conflicting_create_writes_nothing() {
        let (_dir, store) = open();
        store
            .create_user(&user("a@example.com", Some("alice")))
            .unwrap();
        // New email, taken username: the email must not stay reserved.
        let loser = user("b@example.com", Some("alice"));
        assert_eq!(
            store.create_user(&loser),
            Err(StoreError::Conflict(UniqueKey::Username))
        );
        assert_eq!(store.find_user_by_email("b@example.com").unwrap(), None);
        assert_eq!(store.get_user(&loser.id).unwrap(), None);
        assert_eq!(store.count_users().unwrap(), 1);
        store
            .create_user(&user("b@example.com", Some("bob")))
            .unwrap();
        // Same id twice.
        let again = user("c@example.com", None);
        store.create_user(&again).unwrap();
        let mut twin = user("d@example.com", None);
        twin.id.clone_from(&again.id);
        assert_eq!(
            store.create_user(&twin),
            Err(StoreError::Conflict(UniqueKey::Id))
        );
        assert_eq!(store.find_user_by_email("d@example.com").unwrap(), None);
    }

    #[test]
    fn update_reindexes_email_and_username() {
        let (_dir, store) = open();
        let alice = user("a@example.com", Some("alice"));
        let bob = user("b@example.com", Some("bob"));
        store.create_user(&alice).unwrap();
        store.create_user(&bob).unwrap();

        let updated = store
            .update_user(&alice.id, &mut |u| {
                u.email = "New@Example.com".into();
                u.username = Some("Alicia".into());
                u.roles.push("admin".into());
                u.id = "ignored".into();
                u.updated_at = 200;
                Ok(())
            })
            .unwrap();
        assert_eq!(updated.id, alice.id);
        assert_eq!(updated.updated_at, 200);
        assert_eq!(store.find_user_by_email("a@example.com").unwrap(), None);
        assert_eq!(store.find_user_by_username("alice").unwrap(), None);
        assert_eq!(
            store.find_user_by_email("new@example.com").unwrap(),
            Some(updated.clone())
        );
        assert_eq!(
            store.find_user_by_username("alicia").unwrap(),
            Some(updated.clone())
        );
        // The old keys are free again.
        store
            .create_user(&user("a@example.com", Some("alice")))
            .unwrap();

        // Taking bob's email or username fails and changes nothing.
        let taken = store.update_user(&alice.id, &mut |u| {
            u.email = "B@example.com".into();
            Ok(())
        });
        assert_eq!(taken, Err(StoreError::Conflict(UniqueKey::Email)));
        let taken = store.update_user(&alice.id, &mut |u| {
            u.username = Some("BOB".into());
            u.name = Some("changed".into());
            Ok(())
        });
        assert_eq!(taken, Err(StoreError::Conflict(UniqueKey::Username)));
        assert_eq!(store.get_user(&alice.id).unwrap(), Some(updated.clone()));

        // Dropping the username frees it; a case-only change keeps the index.
        let dropped = store
            .update_user(&alice.id, &mut |u| {
                u.username = None;
                u.email = "NEW@example.com".into();
                Ok(())
            })
            .unwrap();
        assert_eq!(store.find_user_by_username("alicia").unwrap(), None);
        assert_eq!(
            store.find_user_by_email("new@example.com").unwrap(),
            Some(dropped)
        );

        // The edit can abort, and unknown users are NotFound.
        let aborted = store.update_user(&alice.id, &mut |_| Err(StoreError::NotFound));
        assert_eq!(aborted, Err(StoreError::NotFound));
        assert_eq!(
            store.update_user("nope", &mut |_| Ok(())),
            Err(StoreError::NotFound)
        );
    }

    #[test]
    fn delete_cascades() {
        let (_dir, store) = open();
        let alice = user("a@example.com", Some("alice"));
        let bob = user("b@example.com", None);
        store.create_user(&alice).unwrap();
        store.create_user(&bob).unwrap();
        let live = session(&alice.id, 100, 1000);
        let dead = session(&alice.id, 100, 1000);
        let bobs = session(&bob.id, 100, 1000);
        store
            .create_session(&live, &token_hash("live"), None, MAX_SESSIONS_PER_USER)
            .unwrap();
        store
            .create_session(&dead, &token_hash("dead"), None, MAX_SESSIONS_PER_USER)
            .unwrap();
        store
            .create_session(&bobs, &token_hash("bob"), None, MAX_SESSIONS_PER_USER)
            .unwrap();
        store.revoke_session(&dead.id).unwrap();
        store
            .put_one_time(
                OneTimeKind::PasswordReset,
                &token_hash("reset"),
                &one_time(&alice.id, 500),
            )
            .unwrap();
        store
            .put_one_time(
                OneTimeKind::EmailVerification,
                &token_hash("verify"),
                &one_time(&alice.id, 500),
            )
            .unwrap();

        let returned = store.delete_user(&alice.id).unwrap();
        assert_eq!(
            returned,
            vec![live.clone()],
            "only live sessions are returned"
        );
        assert_eq!(store.get_user(&alice.id).unwrap(), None);
        assert_eq!(store.get_session(&live.id).unwrap(), None);
        assert_eq!(store.get_session(&dead.id).unwrap(), None);
        assert_eq!(
            store
                .peek_one_time(OneTimeKind::PasswordReset, &token_hash("reset"), 0)
                .unwrap(),
            None
        );
        assert_eq!(
            store
                .peek_one_time(OneTimeKind::EmailVerification, &token_hash("verify"), 0)
                .unwrap(),
            None
        );
        let rotated = store
            .rotate_refresh(&token_hash("live"), &token_hash("next"), 200, 0)
            .unwrap();
        assert_eq!(rotated, RotateOutcome::Invalid);
        // Email and username are free; bob is untouched.
        store
            .create_user(&user("A@example.com", Some("alice")))
            .unwrap();
        assert_eq!(store.get_session(&bobs.id).unwrap(), Some(bobs));
        assert_eq!(store.delete_user(&alice.id), Err(StoreError::NotFound));
        // Sessions cannot be opened for a deleted user.
        assert_eq!(
            store.create_session(
                &session(&alice.id, 100, 10),
                &token_hash("x"),
                None,
                MAX_SESSIONS_PER_USER
            ),
            Err(StoreError::NotFound)
        );
        let stats = store.stats().unwrap();
        assert_eq!(
            (stats.users, stats.sessions, stats.password_reset_tokens),
            (2, 1, 0)
        );
    }

    #[test]
    fn pagination_follows_id_order() {
        let (_dir, store) = open();
        let mut ids = Vec::new();
        for i in 0..5 {
            let u = user(&format!("u{i}@example.com"), None);
            ids.push(u.id.clone());
            store.create_user(&u).unwrap();
        }
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        let mut pages = Vec::new();
        loop {
            let page = store.list_users(2, cursor.as_deref()).unwrap();
            pages.push(page.users.len());
            seen.extend(page.users.into_iter().map(|u| u.id));
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        assert_eq!(pages, vec![2, 2, 1]);
        assert_eq!(seen, ids);
        assert_eq!(store.count_users().unwrap(), 5);
        // An exact fit ends without an empty extra page.
        let page = store.list_users(5, None).unwrap();
        assert_eq!((page.users.len(), page.next_cursor), (5, None));
        let page = store.list_users(10, Some(&ids[4])).unwrap();
        assert!(page.users.is_empty());
    }

    #[test]
    fn rotation_and_reuse_revokes_family() {
        let (_dir, store) = open();
        let alice = user("a@example.com", None);
        store.create_user(&alice).unwrap();
        let s = session(&alice.id, 100, 1000);
        let [a, b, c, d] = ["a", "b", "c", "d"].map(token_hash);
        store
            .create_session(&s, &a, None, MAX_SESSIONS_PER_USER)
            .unwrap();

        let RotateOutcome::Rotated { session, user } =
            store.rotate_refresh(&a, &b, 150, 0).unwrap()
        else {
            panic!("a → b should rotate");
        };
        assert_eq!((session.last_used_at, session.revoked), (150, false));
        assert_eq!(user, alice);
        assert!(matches!(
            store.rotate_refresh(&b, &c, 160, 0).unwrap(),
            RotateOutcome::Rotated { .. }
        ));

        // Replaying `a` revokes the family...
        let RotateOutcome::Reused { session } = store.rotate_refresh(&a, &d, 170, 0).unwrap()
        else {
            panic!("replayed a should be reuse");
        };
        assert!(session.revoked);
        assert!(store.get_session(&s.id).unwrap().unwrap().revoked);
        // ...including the successor `c`, and the replay wrote no new token.
        assert_eq!(
            store.rotate_refresh(&c, &d, 180, 0).unwrap(),
            RotateOutcome::Invalid
        );
        assert_eq!(
            store.rotate_refresh(&d, &token_hash("e"), 180, 0).unwrap(),
            RotateOutcome::Invalid
        );
        // A second replay still reports reuse.
        assert!(matches!(
            store.rotate_refresh(&b, &d, 190, 0).unwrap(),
            RotateOutcome::Reused { .. }
        ));
    }

    #[test]
    fn rotation_refuses_invalid_tokens() {
        // (case name, idle timeout, rotate at, setup run before rotating, expected to rotate);
        // the session is created at 100 and expires at 1100.
        type Setup = fn(&SledStore, &UserRecord, &SessionRecord);
        fn check(name: &str, idle: u64, now: u64, setup: Setup, rotates: bool) {
            let (_dir, store) = open();
            let alice = user("a@example.com", None);
            store.create_user(&alice).unwrap();
            let s = session(&alice.id, 100, 1000);
            store
                .create_session(&s, &token_hash("a"), None, MAX_SESSIONS_PER_USER)
                .unwrap();
            setup(&store, &alice, &s);
            let outcome = store
                .rotate_refresh(&token_hash("a"), &token_hash("b"), now, idle)
                .unwrap();
            assert_eq!(
                matches!(outcome, RotateOutcome::Rotated { .. }),
                rotates,
                "{name}: {outcome:?}"
            );
        }
        let nothing: Setup = |_, _, _| {};
        check("fresh", 0, 200, nothing, true);
        check("last second", 0, 1099, nothing, true);
        check("absolute expiry", 0, 1100, nothing, false);
        check("idle within", 50, 149, nothing, true);
        check("idle over", 50, 150, nothing, false);
        check(
            "revoked",
            0,
            200,
            |st, _, s| drop(st.revoke_session(&s.id).unwrap()),
            false,
        );
        check(
            "user revoked all",
            0,
            200,
            |st, u, _| drop(st.revoke_user_sessions(&u.id, None).unwrap()),
            false,
        );
        check(
            "user locked",
            0,
            200,
            |st, u, _| {
                st.update_user(&u.id, &mut |u| {
                    u.locked = true;
                    Ok(())
                })
                .unwrap();
            },
            false,
        );
        check(
            "user deleted",
            0,
            200,
            |st, u, _| drop(st.delete_user(&u.id).unwrap()),
            false,
        );
        check(
            "unknown token",
            0,
            200,
            |st, _, _| {
                assert!(matches!(
                    st.rotate_refresh(&token_hash("zz"), &token_hash("y"), 200, 0)
                        .unwrap(),
                    RotateOutcome::Invalid
                ));
                // Rotate once so that the tested token "a" is rotated, not current.
                st.rotate_refresh(&token_hash("a"), &token_hash("c"), 150, 0)
                    .unwrap();
            },
            false,
        );
    }

    #[test]
    fn concurrent_rotation_yields_one_winner() {
        const THREADS: usize = 8;
        for round in 0..5 {
            let (_dir, store) = open();
            let store = Arc::new(store);
            let alice = user("a@example.com", None);
            store.create_user(&alice).unwrap();
            let s = session(&alice.id, 100, 1000);
            let old = token_hash("old");
            store
                .create_session(&s, &old, None, MAX_SESSIONS_PER_USER)
                .unwrap();
            let barrier = Arc::new(Barrier::new(THREADS));
            let handles: Vec<_> = (0..THREADS)
                .map(|i| {
                    let (store, barrier) = (Arc::clone(&store), Arc::clone(&barrier));
                    thread::spawn(move || {
                        barrier.wait();
                        store
                            .rotate_refresh(&old, &token_hash(&format!("new{i}")), 200, 0)
                            .unwrap()
                    })
                })
                .collect();
            let outcomes: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
            let rotated = outcomes
                .iter()
                .filter(|o| matches!(o, RotateOutcome::Rotated { .. }))
                .count();
            let reused = outcomes
                .iter()
                .filter(|o| matches!(o, RotateOutcome::Reused { .. }))
                .count();
            assert_eq!(
                (rotated, reused),
                (1, THREADS - 1),
                "round {round}: {outcomes:?}"
            );
            assert!(store.get_session(&s.id).unwrap().unwrap().revoked);
        }
    }

    #[test]
    fn sessions_per_user_are_capped_and_the_oldest_revoked() {
        let (_dir, store) = open();
        let alice = user("a@example.com", None);
        store.create_user(&alice).unwrap();
        let sessions: Vec<_> = (0..MAX_SESSIONS_PER_USER + 3)
            .map(|_| session(&alice.id, 100, 1000))
            .collect();
        for (i, s) in sessions.iter().enumerate() {
            store
                .create_session(s, &token_hash(&i.to_string()), None, MAX_SESSIONS_PER_USER)
                .unwrap();
        }
        for (i, s) in sessions.iter().enumerate() {
            let revoked = store.get_session(&s.id).unwrap().unwrap().revoked;
            assert_eq!(revoked, i < 3, "session {i}");
        }
        // A stale verified hash, or a locked user, gets no session at all.
        let late = session(&alice.id, 100, 1000);
        assert!(matches!(
            store.create_session(
                &late,
                &token_hash("late"),
                Some("not-the-hash"),
                MAX_SESSIONS_PER_USER
            ),
            Err(StoreError::NotFound)
        ));
        store
            .create_session(
                &late,
                &token_hash("late"),
                Some(&alice.password_hash),
                MAX_SESSIONS_PER_USER,
            )
            .unwrap();
    }

    #[test]
    fn revoking_sessions() {
        let (_dir, store) = open();
        let alice = user("a@example.com", None);
        store.create_user(&alice).unwrap();
        let sessions: Vec<_> = (0..3).map(|_| session(&alice.id, 100, 1000)).collect();
        for (i, s) in sessions.iter().enumerate() {
            store
                .create_session(s, &token_hash(&i.to_string()), None, MAX_SESSIONS_PER_USER)
                .unwrap();
        }
        let one = store.revoke_session(&sessions[0].id).unwrap().unwrap();
        assert!(one.revoked);
        assert_eq!(
            store.revoke_session(&sessions[0].id).unwrap(),
            None,
            "already revoked"
        );
        assert_eq!(store.revoke_session("unknown").unwrap(), None);

        let rest = store
            .revoke_user_sessions(&alice.id, Some(&sessions[2].id))
            .unwrap();
        assert_eq!(
            rest.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
            vec![sessions[1].id.as_str()]
        );
        assert!(!store.get_session(&sessions[2].id).unwrap().unwrap().revoked);
        assert_eq!(
            store.revoke_user_sessions(&alice.id, None).unwrap().len(),
            1
        );
        assert!(
            store
                .revoke_user_sessions("nobody", None)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn login_failures_count_lock_and_survive_restart() {
        let dir = tempfile::tempdir().unwrap();
        let policy = LockoutPolicy {
            max_failures: 3,
            window_secs: 100,
            lock_secs: 50,
        };
        {
            let store = SledStore::open(dir.path()).unwrap();
            assert_eq!(
                store
                    .record_login_failure("Nobody@Example.com", 10, &policy)
                    .unwrap()
                    .count,
                1
            );
            assert_eq!(
                store
                    .record_login_failure(" nobody@example.com", 11, &policy)
                    .unwrap()
                    .count,
                2
            );
        }
        let store = SledStore::open(dir.path()).unwrap();
        let locked = store
            .record_login_failure("nobody@example.com", 12, &policy)
            .unwrap();
        assert_eq!(
            locked,
            FailureState {
                count: 3,
                locked_until: Some(62)
            }
        );
        assert_eq!(
            store
                .login_failures("NOBODY@example.com", 61, &policy)
                .unwrap()
                .locked_until,
            Some(62)
        );
        assert_eq!(
            store
                .login_failures("nobody@example.com", 62, &policy)
                .unwrap(),
            FailureState::default()
        );
        assert_eq!(
            store.login_failures("other", 12, &policy).unwrap(),
            FailureState::default()
        );
        store.clear_login_failures("Nobody@example.com").unwrap();
        assert_eq!(
            store
                .login_failures("nobody@example.com", 13, &policy)
                .unwrap(),
            FailureState::default()
        );
        store.clear_login_failures("never-failed").unwrap();
    }

    #[test]
    fn one_time_tokens_are_single_use() {
        let (_dir, store) = open();
        let kind = OneTimeKind::PasswordReset;
        let (first, second) = (token_hash("first"), token_hash("second"));
        store
            .put_one_time(kind, &first, &one_time("u1", 500))
            .unwrap();
        assert_eq!(
            store.peek_one_time(kind, &first, 499).unwrap(),
            Some(one_time("u1", 500))
        );
        assert_eq!(
            store.peek_one_time(kind, &first, 500).unwrap(),
            None,
            "expired"
        );
        assert_eq!(
            store
                .peek_one_time(OneTimeKind::EmailVerification, &first, 0)
                .unwrap(),
            None,
            "kinds are separate"
        );

        // A newer token voids the older one for the same user and kind only.
        store
            .put_one_time(
                OneTimeKind::EmailVerification,
                &token_hash("v"),
                &one_time("u1", 500),
            )
            .unwrap();
        store
            .put_one_time(kind, &token_hash("other user"), &one_time("u2", 500))
            .unwrap();
        store
            .put_one_time(kind, &second, &one_time("u1", 500))
            .unwrap();
        assert_eq!(store.take_one_time(kind, &first, 100).unwrap(), None);
        assert!(
            store
                .peek_one_time(OneTimeKind::EmailVerification, &token_hash("v"), 0)
                .unwrap()
                .is_some()
        );
        assert!(
            store
                .peek_one_time(kind, &token_hash("other user"), 0)
                .unwrap()
                .is_some()
        );

        // Two threads race for the same token: exactly one wins.
        let store = Arc::new(store);
        for round in 0..5 {
            let hash = token_hash(&format!("race{round}"));
            store
                .put_one_time(kind, &hash, &one_time("u1", 500))
                .unwrap();
            let barrier = Arc::new(Barrier::new(2));
            let handles: Vec<_> = (0..2)
                .map(|_| {
                    let (store, barrier) = (Arc::clone(&store), Arc::clone(&barrier));
                    thread::spawn(move || {
                        barrier.wait();
                        store.take_one_time(kind, &hash, 100).unwrap()
                    })
                })
                .collect();
            let wins = handles
                .into_iter()
                .filter_map(|h| h.join().unwrap())
                .count();
            assert_eq!(wins, 1, "round {round}");
        }

        // Taking an expired token consumes it but yields nothing.
        // The same hash cannot be stored twice.
        let dup = token_hash("dup");
        store
            .put_one_time(kind, &dup, &one_time("u3", 500))
            .unwrap();
        assert_eq!(
            store.put_one_time(kind, &dup, &one_time("u6", 500)),
            Err(StoreError::Conflict(UniqueKey::Id))
        );
        let late = token_hash("late");
        store
            .put_one_time(kind, &late, &one_time("u4", 500))
            .unwrap();
        assert_eq!(store.take_one_time(kind, &late, 500).unwrap(), None);
        assert_eq!(store.peek_one_time(kind, &late, 0).unwrap(), None);

        // Voiding.
        let v = token_hash("void me");
        store.put_one_time(kind, &v, &one_time("u5", 500)).unwrap();
        assert!(store.void_one_time_for_user(kind, "u5").unwrap());
        assert!(!store.void_one_time_for_user(kind, "u5").unwrap());
        assert_eq!(store.peek_one_time(kind, &v, 0).unwrap(), None);
    }

    #[test]
    fn revocations_load_merge_and_purge() {
        let (_dir, store) = open();
        let session = Revocation::Session {
            sid: "s1".into(),
            until: 300,
        };
        let user_all = Revocation::User {
            user_id: "u1".into(),
            issued_before: 100,
            except_sid: None,
            until: 200,
        };
        let user_but_one = Revocation::User {
            user_id: "u1".into(),
            issued_before: 100,
            except_sid: Some("s2".into()),
            until: 250,
        };
        for r in [&session, &user_all, &user_but_one] {
            store.put_revocation(r).unwrap();
        }
        // Re-recording with an earlier `until` keeps the later one.
        store
            .put_revocation(&Revocation::Session {
                sid: "s1".into(),
                until: 150,
            })
            .unwrap();
        let mut loaded = store.load_revocations(0).unwrap();
        loaded.sort_by_key(Revocation::until);
        assert_eq!(
            loaded,
            vec![user_all.clone(), user_but_one.clone(), session.clone()]
        );
        assert_eq!(
            store.load_revocations(200).unwrap().len(),
            2,
            "until is exclusive"
        );

        let purged = store.purge_expired(250, GRACE).unwrap();
        assert_eq!(purged.revocations, 2);
        assert_eq!(store.load_revocations(0).unwrap(), vec![session]);
    }

    #[test]
    fn purge_removes_what_expired() {
        let (_dir, store) = open();
        let alice = user("a@example.com", None);
        store.create_user(&alice).unwrap();
        let short = session(&alice.id, 100, 100); // expires at 200
        let long = session(&alice.id, 100, 1000);
        store
            .create_session(&short, &token_hash("short"), None, MAX_SESSIONS_PER_USER)
            .unwrap();
        store
            .create_session(&long, &token_hash("long"), None, MAX_SESSIONS_PER_USER)
            .unwrap();
        store
            .rotate_refresh(&token_hash("long"), &token_hash("long2"), 150, 0)
            .unwrap();
        store
            .put_one_time(
                OneTimeKind::PasswordReset,
                &token_hash("r"),
                &one_time(&alice.id, 180),
            )
            .unwrap();
        store
            .put_one_time(
                OneTimeKind::EmailVerification,
                &token_hash("v"),
                &one_time(&alice.id, 900),
            )
            .unwrap();
        let policy = LockoutPolicy {
            max_failures: 5,
            window_secs: 60,
            lock_secs: 60,
        };
        store.record_login_failure("x", 100, &policy).unwrap();

        let before = store.stats().unwrap();
        assert_eq!(
            before,
            StoreStats {
                users: 1,
                sessions: 2,
                refresh_tokens: 3,
                password_reset_tokens: 1,
                email_verification_tokens: 1,
                revocations: 0,
                login_failures: 1,
            }
        );
        assert_eq!(
            store.purge_expired(199, GRACE).unwrap(),
            PurgeStats {
                one_time_tokens: 1,
                login_failures: 1,
                ..PurgeStats::default()
            }
        );
        let purged = store.purge_expired(200, GRACE).unwrap();
        assert_eq!(
            purged,
            PurgeStats {
                sessions: 1,
                refresh_tokens: 1,
                ..PurgeStats::default()
            }
        );
        assert_eq!(store.get_session(&short.id).unwrap(), None);
        assert!(store.get_session(&long.id).unwrap().is_some());
        assert!(
            store
                .peek_one_time(OneTimeKind::EmailVerification, &token_hash("v"), 200)
                .unwrap()
                .is_some()
        );
        // The expired session left the user's list: revoking all touches only the long one.
        assert_eq!(
            store.revoke_user_sessions(&alice.id, None).unwrap().len(),
            1
        );
        assert_eq!(
            store.purge_expired(200, GRACE).unwrap(),
            PurgeStats::default()
        );
    }

    #[test]
    fn expired_sessions_are_dropped_on_create() {
        let (_dir, store) = open();
        let alice = user("a@example.com", None);
        store.create_user(&alice).unwrap();
        let old = session(&alice.id, 100, 10);
        store
            .create_session(&old, &token_hash("old"), None, MAX_SESSIONS_PER_USER)
            .unwrap();
        store
            .create_session(
                &session(&alice.id, 200, 10),
                &token_hash("new"),
                None,
                MAX_SESSIONS_PER_USER,
            )
            .unwrap();
        assert_eq!(store.get_session(&old.id).unwrap(), None);
    }

    #[test]
    fn second_open_is_locked() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let Err(err) = SledStore::open(dir.path()) else {
            panic!("a second open of a held store must fail");
        };
        assert_eq!(
            err,
            StoreError::Locked {
                path: dir.path().display().to_string()
            }
        );
        let message = err.to_string();
        assert!(
            message.contains(&dir.path().display().to_string()),
            "{message}"
        );
        assert!(message.contains("another process"), "{message}");
        drop(store);
        SledStore::open(dir.path()).expect("the lock is released with the store");
    }

    #[test]
    fn schema_mismatch_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            store.meta.insert(SCHEMA_KEY, &99u32.to_be_bytes()).unwrap();
            store.flush().unwrap();
        }
        let Err(err) = SledStore::open(dir.path()) else {
            panic!("a store with another schema version must be refused");
        };
        assert_eq!(
            err,
            StoreError::SchemaMismatch {
                found: 99,
                expected: SCHEMA_VERSION
            }
        );
    }

    #[test]
    fn acknowledged_writes_survive_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let crashed = tempfile::tempdir().unwrap();
        let alice = user("a@example.com", Some("alice"));
        let s = session(&alice.id, 100, 1000);
        {
            let store = SledStore::open(dir.path()).unwrap();
            store.create_user(&alice).unwrap();
            store
                .create_session(&s, &token_hash("a"), None, MAX_SESSIONS_PER_USER)
                .unwrap();
            store
                .rotate_refresh(&token_hash("a"), &token_hash("b"), 150, 0)
                .unwrap();
            // Image of the disk while the store is still open, as a SIGKILL would leave it.
            snapshot(dir.path(), &crashed.path().join("db"));
            // The store is dropped here without any explicit close or extra flush.
        }
        for path in [dir.path().to_path_buf(), crashed.path().join("db")] {
            let store = SledStore::open(&path).unwrap();
            assert_eq!(
                store.find_user_by_username("alice").unwrap(),
                Some(alice.clone()),
                "{path:?}"
            );
            assert_eq!(
                store.get_session(&s.id).unwrap().unwrap().last_used_at,
                150,
                "{path:?}"
            );
            assert!(matches!(
                store
                    .rotate_refresh(&token_hash("b"), &token_hash("c"), 160, 0)
                    .unwrap(),
                RotateOutcome::Rotated { .. }
            ));
        }
    }

    #[test]
    fn usable_as_trait_object() {
        let (_dir, store) = open();
        let store: Arc<dyn SyncStore> = Arc::new(store);
        assert_eq!(store.count_users().unwrap(), 0);
    }
}
