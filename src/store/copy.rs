//! Copying every record from one store to another (`gatehouse store copy --from A --to B`):
//! sled → PostgreSQL when a deployment grows into replicas, PostgreSQL → sled back, and
//! sled → sled or PostgreSQL → PostgreSQL to move a store.
//!
//! Each backend implements two operations, [`Store::export`] and [`Store::import`]; [`copy`]
//! runs one store's export into the other's import through a bounded channel, so a store of
//! any size is streamed in batches of [`BATCH`] records and never held in memory whole.
//!
//! # The contract
//!
//! **What a record is.** [`Record`] is every kind of thing a store keeps, exactly as it keeps
//! it: users with their ids, argon2id hashes, roles, flags and timestamps; sessions; every
//! refresh-token hash of every family with its state (current or rotated, so that a rotated
//! token presented after the copy is still detected as reuse); access-token revocations with
//! their `until`; pending reset and verification tokens; login-failure counters; second
//! factors (the TOTP secret sealed as stored, the last accepted step, recovery-code hashes)
//! and pending second-factor login challenges. Secrets
//! exist only as the hashes the store holds: no token or password is ever in clear here, and
//! nothing in this module logs a record.
//!
//! **Export** ([`Store::export`]) sends every record as [`Chunk::Records`] of at most `batch`
//! records, then one [`Chunk::End`] with the number of records it sent of each [`Kind`].
//! Kinds come in [`Kind::ALL`] order (users, sessions, refresh tokens, one-time tokens,
//! revocations, login failures, second factors, their challenges), so a session always follows its user and a refresh token
//! its session. It does not change the source. It is a consistent picture: PostgreSQL
//! exports inside one `REPEATABLE READ READ ONLY` transaction (one snapshot, so replicas may
//! keep serving from the source), sled under its process lock (nobody else can write).
//! Records that are already dead and that nothing can reach are left out: sled keeps the
//! refresh hashes of deleted sessions and the revoked sessions of deleted users until the
//! next purge (they resolve to "invalid" anyway), and PostgreSQL's foreign keys would
//! refuse them.
//!
//! **Import** ([`Store::import`]) reads chunks until [`Chunk::End`], and checks the counts
//! it received against the ones `End` announces. For each record:
//! - absent from the target: copied;
//! - present with exactly the same contents: left as it is and counted as already there
//!   (so a copy can be run again, e.g. to finish one that was interrupted);
//! - a revocation present with another `until`: the later one is kept (a revocation can
//!   only get stricter, so merging is always safe);
//! - anything else (same id or hash with other contents, an email or username that another
//!   user holds, another pending token of the same kind for the same user): a
//!   [`StoreError::CopyConflict`] naming the record by kind and id, never by email.
//!
//! With [`ImportMode::Check`] nothing is written: it finds the first conflict, if any.
//!
//! **All or nothing.** PostgreSQL imports in one transaction, committed only after `End`
//! arrived with matching counts: an error, a conflict, a lost connection or a killed process
//! leaves the target as it was, and replicas on the target never see half a store. One
//! transaction rather than resumable batches, because it makes the answer to "did the copy
//! happen?" always yes or no, and PostgreSQL handles a transaction of a few hundred
//! thousand small rows without trouble. sled has no transaction of that size, so it marks
//! the store incomplete before its first write and clears the mark only after the last
//! write is flushed (fsynced): a store whose copy was interrupted refuses to open for
//! serving ([`StoreError::Incomplete`]) until the same copy is run again with
//! `--into-nonempty` (everything already copied is found identical and skipped) or the
//! directory is deleted.
//!
//! **Non-empty targets.** [`copy`] refuses a target that holds any record unless told
//! ([`CopyOptions::into_nonempty`]); then it first runs a [`ImportMode::Check`] pass over
//! the whole source, so a conflict stops the copy before anything is written, on sled too.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::{
    FailureRecord, MfaChallenge, MfaRecord, OneTimeKind, OneTimeRecord, Revocation, SessionRecord,
    Store, StoreError, StoreStats, TokenHash, UserRecord,
};
use crate::config::{StoreBackend, StoreConfig};

/// Records per chunk. With [`CHANNEL_CHUNKS`] chunks in flight, a copy holds a few thousand
/// records in memory whatever the size of the store.
pub const BATCH: usize = 1000;
const CHANNEL_CHUNKS: usize = 4;

/// A refresh-token hash and the family it belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefreshRecord {
    pub hash: TokenHash,
    pub session_id: String,
    /// `false`: the family's current token; `true`: an earlier one, kept for reuse detection.
    pub rotated: bool,
    /// The session's absolute end.
    pub expires_at: u64,
}

/// A pending password-reset or email-verification token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OneTimeToken {
    pub kind: OneTimeKind,
    pub hash: TokenHash,
    pub record: OneTimeRecord,
}

/// The failure counter of one (folded) login name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginFailureRecord {
    pub login: String,
    pub record: FailureRecord,
}

/// A pending second-factor login challenge (an `mfa_token`, as its hash).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MfaChallengeToken {
    pub hash: TokenHash,
    pub record: MfaChallenge,
}

/// One record of any kind, as a store keeps it (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    User(UserRecord),
    Session(SessionRecord),
    Refresh(RefreshRecord),
    OneTime(OneTimeToken),
    Revocation(Revocation),
    LoginFailure(LoginFailureRecord),
    Mfa(MfaRecord),
    MfaChallenge(MfaChallengeToken),
}

impl Record {
    pub fn kind(&self) -> Kind {
        match self {
            Record::User(_) => Kind::User,
            Record::Session(_) => Kind::Session,
            Record::Refresh(r) if r.rotated => Kind::RefreshRotated,
            Record::Refresh(_) => Kind::RefreshCurrent,
            Record::OneTime(t) => match t.kind {
                OneTimeKind::PasswordReset => Kind::PasswordReset,
                OneTimeKind::EmailVerification => Kind::EmailVerification,
            },
            Record::Revocation(_) => Kind::Revocation,
            Record::LoginFailure(_) => Kind::LoginFailure,
            Record::Mfa(_) => Kind::Mfa,
            Record::MfaChallenge(_) => Kind::MfaChallenge,
        }
    }
}

/// What the counts of a copy are kept by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    User,
    Session,
    RefreshCurrent,
    RefreshRotated,
    PasswordReset,
    EmailVerification,
    Revocation,
    LoginFailure,
    Mfa,
    MfaChallenge,
}

impl Kind {
    /// Every kind, in export order.
    pub const ALL: [Kind; 10] = [
        Kind::User,
        Kind::Session,
        Kind::RefreshCurrent,
        Kind::RefreshRotated,
        Kind::PasswordReset,
        Kind::EmailVerification,
        Kind::Revocation,
        Kind::LoginFailure,
        Kind::Mfa,
        Kind::MfaChallenge,
    ];

    /// How `gatehouse store copy` names the kind.
    pub fn label(self) -> &'static str {
        match self {
            Kind::User => "users",
            Kind::Session => "sessions",
            Kind::RefreshCurrent => "refresh tokens (current)",
            Kind::RefreshRotated => "refresh tokens (rotated)",
            Kind::PasswordReset => "password-reset tokens",
            Kind::EmailVerification => "email-verification tokens",
            Kind::Revocation => "revocations",
            Kind::LoginFailure => "login-failure counters",
            Kind::Mfa => "second factors (TOTP)",
            Kind::MfaChallenge => "second-factor challenges",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A number of records per [`Kind`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts([u64; 10]);

impl Counts {
    pub fn get(&self, kind: Kind) -> u64 {
        self.0[kind.index()]
    }

    pub fn add(&mut self, kind: Kind, n: u64) {
        self.0[kind.index()] += n;
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    fn plus(&self, other: &Counts) -> Counts {
        let mut sum = *self;
        for kind in Kind::ALL {
            sum.add(kind, other.get(kind));
        }
        sum
    }
}

/// What flows from an export to an import.
#[derive(Debug)]
pub enum Chunk {
    Records(Vec<Record>),
    /// The export is complete and sent this many records of each kind.
    End(Counts),
}

/// Whether an import writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImportMode {
    /// Read only: find the first conflict, if any; `copied` counts what would be copied.
    Check,
    Write,
}

/// What an import did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Imported {
    /// Records written (for revocations: also those whose later `until` replaced the
    /// target's).
    pub copied: Counts,
    /// Records the target already held with the same contents.
    pub present: Counts,
}

impl Imported {
    /// Counts one record as copied (`true`) or already present.
    pub fn count(&mut self, kind: Kind, copied: bool) {
        if copied {
            self.copied.add(kind, 1);
        } else {
            self.present.add(kind, 1);
        }
    }

    /// Called on [`Chunk::End`]: everything the export says it sent was received.
    pub fn check_end(&self, sent: &Counts) -> Result<(), StoreError> {
        let received = self.copied.plus(&self.present);
        if received == *sent {
            Ok(())
        } else {
            Err(StoreError::Io(format!(
                "the import received {} records but the export sent {}; nothing was kept",
                received.total(),
                sent.total()
            )))
        }
    }
}

/// The export side's error when the import side went away (it failed; its error is the one
/// worth reporting).
pub(crate) const IMPORT_GONE: &str = "the importing store stopped reading";
/// The import side's error when the export ended without [`Chunk::End`] (it failed; its
/// error is the one worth reporting).
pub(crate) const EXPORT_GONE: &str = "the export ended before it was complete; nothing was kept";

/// Sends one chunk from an async exporter.
pub(crate) async fn send(out: &mpsc::Sender<Chunk>, chunk: Chunk) -> Result<(), StoreError> {
    out.send(chunk)
        .await
        .map_err(|_| StoreError::Io(IMPORT_GONE.into()))
}

/// How to copy.
#[derive(Clone, Copy, Debug)]
pub struct CopyOptions {
    /// Copy into a target that already holds records (see the module docs for conflicts).
    pub into_nonempty: bool,
    /// Records per chunk; [`BATCH`] unless a test wants pages to show.
    pub batch: usize,
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            into_nonempty: false,
            batch: BATCH,
        }
    }
}

/// What [`copy`] did, for `gatehouse store copy` to print.
#[derive(Clone, Debug)]
pub struct CopyReport {
    pub from: &'static str,
    pub to: &'static str,
    /// PostgreSQL migrations applied to the target before copying.
    pub migrations: Vec<&'static str>,
    /// Whether the target held records before (only with `into_nonempty`).
    pub target_was_empty: bool,
    pub copied: Counts,
    pub present: Counts,
    pub elapsed: Duration,
}

/// Why a copy did not happen. In every case the target is as it was before, except a sled
/// target after an I/O failure mid-copy, which stays marked incomplete (see the module docs).
#[derive(Debug)]
pub enum CopyError {
    /// `--from` and `--to` name the same store.
    SameStore,
    /// The source sled directory does not exist.
    NoSource(PathBuf),
    /// The target holds records and `into_nonempty` was not given.
    NotEmpty(StoreStats),
    Source(StoreError),
    Target(StoreError),
}

impl fmt::Display for CopyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let locked = |f: &mut fmt::Formatter<'_>, side: &str, path: &str| {
            write!(
                f,
                "the {side} sled store at {path} is held by another process (a running \
                 gatehouse server?); stop it first: a copy needs the store to itself. \
                 Nothing was copied."
            )
        };
        match self {
            CopyError::SameStore => f.write_str("--from and --to name the same store"),
            CopyError::NoSource(path) => write!(
                f,
                "there is no sled store at {} (the source's store.path)",
                path.display()
            ),
            CopyError::NotEmpty(stats) => write!(
                f,
                "the target store is not empty ({} users, {} sessions, {} refresh tokens, \
                 {} revocations, {} login-failure counters, {} one-time tokens); nothing was \
                 copied. Pass --into-nonempty to copy into it anyway: records it already holds \
                 identically are skipped, and any record that differs stops the copy before \
                 anything is written",
                stats.users,
                stats.sessions,
                stats.refresh_tokens,
                stats.revocations,
                stats.login_failures,
                stats.password_reset_tokens + stats.email_verification_tokens
            ),
            CopyError::Source(StoreError::Locked { path }) => locked(f, "source", path),
            CopyError::Target(StoreError::Locked { path }) => locked(f, "target", path),
            CopyError::Source(e) => write!(f, "source store: {e}"),
            CopyError::Target(e @ StoreError::CopyConflict(_)) => {
                write!(f, "target store: {e}; nothing was copied")
            }
            CopyError::Target(e) => write!(f, "target store: {e}"),
        }
    }
}

impl std::error::Error for CopyError {}

/// Copies every record of the store `from` into the store `to` (see the module docs):
/// PostgreSQL migrations are applied to the target first; a non-empty target is refused
/// unless `options.into_nonempty`, and then checked in full before anything is written.
/// The source is only read. Must run inside a tokio runtime.
pub async fn copy(
    from: &StoreConfig,
    to: &StoreConfig,
    options: &CopyOptions,
) -> Result<CopyReport, CopyError> {
    let started = Instant::now();
    if same_store(from, to) {
        return Err(CopyError::SameStore);
    }
    let source = super::open_copy_source(from).await?;
    let (target, migrations) = super::open_copy_target(to)
        .await
        .map_err(CopyError::Target)?;
    let before = target.stats().await.map_err(CopyError::Target)?;
    let target_was_empty = before == StoreStats::default();
    if !target_was_empty {
        if !options.into_nonempty {
            return Err(CopyError::NotEmpty(before));
        }
        transfer(&source, &target, ImportMode::Check, options.batch).await?;
    }
    let imported = transfer(&source, &target, ImportMode::Write, options.batch).await?;
    Ok(CopyReport {
        from: backend_name(from.backend),
        to: backend_name(to.backend),
        migrations,
        target_was_empty,
        copied: imported.copied,
        present: imported.present,
        elapsed: started.elapsed(),
    })
}

fn backend_name(backend: StoreBackend) -> &'static str {
    match backend {
        StoreBackend::Sled => "sled",
        StoreBackend::Postgres => "postgres",
    }
}

fn same_store(from: &StoreConfig, to: &StoreConfig) -> bool {
    match (from.backend, to.backend) {
        (StoreBackend::Sled, StoreBackend::Sled) => {
            let canonical = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_owned());
            canonical(&from.path) == canonical(&to.path)
        }
        (StoreBackend::Postgres, StoreBackend::Postgres) => {
            from.url.expose().trim() == to.url.expose().trim()
        }
        _ => false,
    }
}

/// Runs `source`'s export into `target`'s import.
async fn transfer(
    source: &Arc<dyn Store>,
    target: &Arc<dyn Store>,
    mode: ImportMode,
    batch: usize,
) -> Result<Imported, CopyError> {
    let (out, input) = mpsc::channel(CHANNEL_CHUNKS);
    let (exported, imported) =
        tokio::join!(source.export(batch.max(1), out), target.import(mode, input));
    // When one side fails the other fails too, for want of a partner: report the cause.
    match (exported, imported) {
        (Ok(()), Ok(imported)) => Ok(imported),
        (Err(StoreError::Io(e)), Err(cause)) if e == IMPORT_GONE => Err(CopyError::Target(cause)),
        (Err(cause), _) => Err(CopyError::Source(cause)),
        (Ok(()), Err(cause)) => Err(CopyError::Target(cause)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_and_end_is_checked() {
        let mut imported = Imported::default();
        imported.count(Kind::User, true);
        imported.count(Kind::User, false);
        imported.count(Kind::RefreshRotated, true);
        let mut sent = Counts::default();
        sent.add(Kind::User, 2);
        sent.add(Kind::RefreshRotated, 1);
        assert!(imported.check_end(&sent).is_ok());
        sent.add(Kind::Session, 1);
        assert!(imported.check_end(&sent).is_err());
        assert_eq!(imported.copied.total(), 2);
        assert_eq!(imported.present.get(Kind::User), 1);
    }

    #[test]
    fn kinds_are_in_export_order() {
        for (i, kind) in Kind::ALL.iter().enumerate() {
            assert_eq!(kind.index(), i);
        }
    }
}
