//! Export and import for `gatehouse store copy` (the contract is in [`crate::store::copy`]).
//!
//! - **Export** runs in one `REPEATABLE READ READ ONLY` transaction, so it reads one
//!   snapshot even while replicas keep writing, through a server-side cursor per table
//!   (`FETCH n`): memory stays at one chunk whatever the table's size.
//! - **Import** runs in one transaction, committed only after the export's `End` arrived
//!   with matching counts; any failure drops the transaction, which rolls it back. Per
//!   chunk it reads what the target already holds under the chunk's keys (one indexed
//!   query), decides copied / already there / conflict, and writes the new rows with one
//!   multi-row `INSERT … SELECT FROM UNNEST(…)`: a few statements per thousand records.
//!   Revocations are written under the revocation lock (held to commit, as every revocation
//!   write holds it) with new sequence numbers, and one `NOTIFY` on commit makes replicas on
//!   the target catch up.

use std::collections::{HashMap, HashSet};

use deadpool_postgres::{GenericClient, Transaction};
use tokio::sync::mpsc;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

// The store's records come through the parent's imports, as in every store module.
use super::{
    FailureRecord, MfaRecord, OneTimeKind, PgStore, REVOCATION_LOCK, Revocation, SessionRecord,
    StoreError, TokenHash, UserRecord, column, execute, fold, int, kind_name, mfa_challenge_from,
    mfa_from, one_time_from, pg_error, query, revocation_from, revocation_key, session_from, time,
    user_from,
};
use crate::store::copy::{
    Chunk, Counts, EXPORT_GONE, ImportMode, Imported, Kind, LoginFailureRecord, MfaChallengeToken,
    OneTimeToken, Record, RefreshRecord, send,
};

/// An import's statements may take longer than a request's (a large chunk on a large table).
const IMPORT_STATEMENT_TIMEOUT: &str = "SET LOCAL statement_timeout = '5min'";

type Convert = fn(&Row) -> Result<Record, StoreError>;

/// One cursor per kind, in export order (see the contract).
const EXPORTS: &[(&str, Convert)] = &[
    (
        concat!("SELECT ", user_columns!(), " FROM users ORDER BY id"),
        |row| user_from(row).map(Record::User),
    ),
    (
        concat!("SELECT ", session_columns!(), " FROM sessions ORDER BY id"),
        |row| session_from(row).map(Record::Session),
    ),
    (
        "SELECT hash, session_id, rotated, expires_at FROM refresh_tokens ORDER BY hash",
        |row| refresh_from(row).map(Record::Refresh),
    ),
    (
        "SELECT kind, hash, user_id, email, expires_at FROM one_time_tokens ORDER BY kind, hash",
        |row| one_time_token_from(row).map(Record::OneTime),
    ),
    (
        "SELECT kind, subject, issued_before, except_sid, until FROM revocations ORDER BY seq",
        |row| revocation_from(row).map(Record::Revocation),
    ),
    (
        "SELECT login, window_start, count, locked_until, expires_at FROM login_failures \
         ORDER BY login",
        |row| login_failure_from(row).map(Record::LoginFailure),
    ),
    (
        concat!("SELECT ", mfa_columns!(), " FROM mfa_totp ORDER BY user_id"),
        |row| mfa_from(row).map(Record::Mfa),
    ),
    (
        "SELECT hash, user_id, login, password_fingerprint, expires_at FROM mfa_challenges \
         ORDER BY hash",
        |row| {
            Ok(Record::MfaChallenge(MfaChallengeToken {
                hash: hash_from(row)?,
                record: mfa_challenge_from(row)?,
            }))
        },
    ),
];

fn hash_from(row: &Row) -> Result<TokenHash, StoreError> {
    let bytes: Vec<u8> = column(row, "hash")?;
    TokenHash::try_from(bytes.as_slice())
        .map_err(|_| StoreError::Corrupt("a stored hash is not 32 bytes".into()))
}

fn refresh_from(row: &Row) -> Result<RefreshRecord, StoreError> {
    Ok(RefreshRecord {
        hash: hash_from(row)?,
        session_id: column(row, "session_id")?,
        rotated: column(row, "rotated")?,
        expires_at: time(row, "expires_at")?,
    })
}

fn one_time_kind(name: &str) -> Result<OneTimeKind, StoreError> {
    match name {
        "password_reset" => Ok(OneTimeKind::PasswordReset),
        "email_verification" => Ok(OneTimeKind::EmailVerification),
        other => Err(StoreError::Corrupt(format!(
            "unknown one-time token kind {other:?}"
        ))),
    }
}

fn one_time_token_from(row: &Row) -> Result<OneTimeToken, StoreError> {
    let kind: String = column(row, "kind")?;
    Ok(OneTimeToken {
        kind: one_time_kind(&kind)?,
        hash: hash_from(row)?,
        record: one_time_from(row)?,
    })
}

fn login_failure_from(row: &Row) -> Result<LoginFailureRecord, StoreError> {
    let count: i64 = column(row, "count")?;
    Ok(LoginFailureRecord {
        login: column(row, "login")?,
        record: FailureRecord {
            window_start: time(row, "window_start")?,
            count: u32::try_from(count).unwrap_or(u32::MAX),
            locked_until: time(row, "locked_until")?,
            expires_at: time(row, "expires_at")?,
        },
    })
}

/// See [`crate::store::Store::export`].
pub(super) async fn export(
    store: &PgStore,
    batch: usize,
    out: mpsc::Sender<Chunk>,
) -> Result<(), StoreError> {
    let mut client = store.client().await?;
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(pg_error)?;
    let fetch = format!("FETCH {} FROM gatehouse_export", batch.max(1));
    let mut counts = Counts::default();
    for (select, convert) in EXPORTS {
        tx.batch_execute(&format!(
            "DECLARE gatehouse_export NO SCROLL CURSOR FOR {select}"
        ))
        .await
        .map_err(pg_error)?;
        loop {
            let rows = tx.query(fetch.as_str(), &[]).await.map_err(pg_error)?;
            if rows.is_empty() {
                break;
            }
            let records = rows.iter().map(convert).collect::<Result<Vec<_>, _>>()?;
            for record in &records {
                counts.add(record.kind(), 1);
            }
            send(&out, Chunk::Records(records)).await?;
        }
        tx.batch_execute("CLOSE gatehouse_export")
            .await
            .map_err(pg_error)?;
    }
    tx.rollback().await.map_err(pg_error)?;
    send(&out, Chunk::End(counts)).await
}

/// See [`crate::store::Store::import`].
pub(super) async fn import(
    store: &PgStore,
    mode: ImportMode,
    mut input: mpsc::Receiver<Chunk>,
) -> Result<Imported, StoreError> {
    let mut client = store.client().await?;
    let tx = client
        .build_transaction()
        .read_only(mode == ImportMode::Check)
        .start()
        .await
        .map_err(pg_error)?;
    tx.batch_execute(IMPORT_STATEMENT_TIMEOUT)
        .await
        .map_err(pg_error)?;
    let mut state = ImportState {
        write: mode == ImportMode::Write,
        imported: Imported::default(),
        revocations_locked: false,
        revocations_written: false,
    };
    loop {
        match input.recv().await {
            Some(Chunk::Records(records)) => {
                let same_kind =
                    |a: &Record, b: &Record| std::mem::discriminant(a) == std::mem::discriminant(b);
                for group in records.chunk_by(same_kind) {
                    state.import(&tx, group).await?;
                }
            }
            Some(Chunk::End(sent)) => {
                state.imported.check_end(&sent)?;
                if !state.write {
                    tx.rollback().await.map_err(pg_error)?;
                    return Ok(state.imported);
                }
                if state.revocations_written {
                    // Delivered on commit: replicas on the target catch up from their cursor.
                    query(
                        &tx,
                        concat!(
                            "SELECT pg_notify('",
                            channel!(),
                            "', coalesce(max(seq), 0)::text) FROM revocations"
                        ),
                        &[],
                    )
                    .await?;
                }
                tx.commit().await.map_err(pg_error)?;
                return Ok(state.imported);
            }
            // Dropping the transaction rolls it back.
            None => return Err(StoreError::Io(EXPORT_GONE.into())),
        }
    }
}

struct ImportState {
    write: bool,
    imported: Imported,
    revocations_locked: bool,
    revocations_written: bool,
}

/// Picks the records of one variant out of a group of them.
macro_rules! only {
    ($group:expr, $variant:path) => {
        $group
            .iter()
            .filter_map(|r| match r {
                $variant(x) => Some(x),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
}

fn conflict(what: String) -> StoreError {
    StoreError::CopyConflict(what)
}

impl ImportState {
    /// Imports a group of records of one variant.
    async fn import(&mut self, tx: &Transaction<'_>, group: &[Record]) -> Result<(), StoreError> {
        match group.first() {
            None => Ok(()),
            Some(Record::User(_)) => self.users(tx, &only!(group, Record::User)).await,
            Some(Record::Session(_)) => self.sessions(tx, &only!(group, Record::Session)).await,
            Some(Record::Refresh(_)) => self.refresh(tx, &only!(group, Record::Refresh)).await,
            Some(Record::OneTime(_)) => self.one_time(tx, &only!(group, Record::OneTime)).await,
            Some(Record::Revocation(_)) => {
                self.revocations(tx, &only!(group, Record::Revocation))
                    .await
            }
            Some(Record::LoginFailure(_)) => {
                self.login_failures(tx, &only!(group, Record::LoginFailure))
                    .await
            }
            Some(Record::Mfa(_)) => self.mfa(tx, &only!(group, Record::Mfa)).await,
            Some(Record::MfaChallenge(_)) => {
                self.mfa_challenges(tx, &only!(group, Record::MfaChallenge))
                    .await
            }
        }
    }

    /// Second factors, a row at a time: there are few, and their recovery codes are an
    /// array per row, which `UNNEST` cannot take apart.
    async fn mfa(
        &mut self,
        tx: &Transaction<'_>,
        records: &[&MfaRecord],
    ) -> Result<(), StoreError> {
        let ids: Vec<&str> = records.iter().map(|r| r.user_id.as_str()).collect();
        let existing = query(
            tx,
            concat!(
                "SELECT ",
                mfa_columns!(),
                " FROM mfa_totp WHERE user_id = ANY($1)"
            ),
            &[&ids],
        )
        .await?
        .iter()
        .map(|row| mfa_from(row).map(|r| (r.user_id.clone(), r)))
        .collect::<Result<HashMap<_, _>, _>>()?;
        for record in records {
            match existing.get(&record.user_id) {
                Some(found) if found == *record => self.imported.count(Kind::Mfa, false),
                Some(_) => {
                    return Err(conflict(format!(
                        "a different second factor for user {}",
                        record.user_id
                    )));
                }
                None => {
                    self.imported.count(Kind::Mfa, true);
                    if self.write {
                        let codes: Vec<&[u8]> =
                            record.recovery_codes.iter().map(|c| c.as_slice()).collect();
                        execute(
                            tx,
                            concat!(
                                "INSERT INTO mfa_totp (",
                                mfa_columns!(),
                                ") VALUES ($1, $2, $3, $4, $5, $6)"
                            ),
                            &[
                                &record.user_id,
                                &record.secret,
                                &record.enabled,
                                &int(record.last_step),
                                &codes,
                                &int(record.created_at),
                            ],
                        )
                        .await?;
                    }
                }
            }
        }
        Ok(())
    }

    async fn mfa_challenges(
        &mut self,
        tx: &Transaction<'_>,
        tokens: &[&MfaChallengeToken],
    ) -> Result<(), StoreError> {
        let hashes: Vec<&[u8]> = tokens.iter().map(|t| t.hash.as_slice()).collect();
        let existing = query(
            tx,
            "SELECT hash, user_id, login, password_fingerprint, expires_at FROM mfa_challenges \
             WHERE hash = ANY($1)",
            &[&hashes],
        )
        .await?
        .iter()
        .map(|row| Ok((hash_from(row)?, mfa_challenge_from(row)?)))
        .collect::<Result<HashMap<_, _>, StoreError>>()?;
        let mut new = Vec::new();
        for token in tokens {
            match existing.get(&token.hash) {
                Some(found) if *found == token.record => {
                    self.imported.count(Kind::MfaChallenge, false);
                }
                Some(_) => {
                    return Err(conflict(format!(
                        "a different second-factor challenge of user {}",
                        token.record.user_id
                    )));
                }
                None => {
                    self.imported.count(Kind::MfaChallenge, true);
                    new.push(*token);
                }
            }
        }
        if !self.write || new.is_empty() {
            return Ok(());
        }
        execute(
            tx,
            "INSERT INTO mfa_challenges (hash, user_id, login, password_fingerprint, expires_at) \
             SELECT * FROM UNNEST($1::bytea[], $2::text[], $3::text[], $4::bytea[], $5::int8[])",
            &[
                &new.iter().map(|t| t.hash.as_slice()).collect::<Vec<_>>(),
                &new.iter()
                    .map(|t| t.record.user_id.as_str())
                    .collect::<Vec<_>>(),
                &new.iter()
                    .map(|t| t.record.login.as_str())
                    .collect::<Vec<_>>(),
                &new.iter()
                    .map(|t| t.record.password_fingerprint.as_slice())
                    .collect::<Vec<_>>(),
                &new.iter()
                    .map(|t| int(t.record.expires_at))
                    .collect::<Vec<_>>(),
            ],
        )
        .await?;
        Ok(())
    }

    async fn users(
        &mut self,
        tx: &Transaction<'_>,
        users: &[&UserRecord],
    ) -> Result<(), StoreError> {
        let ids: Vec<&str> = users.iter().map(|u| u.id.as_str()).collect();
        let emails: Vec<String> = users.iter().map(|u| fold(&u.email)).collect();
        let usernames: Vec<Option<String>> = users
            .iter()
            .map(|u| u.username.as_deref().map(fold))
            .collect();
        let rows = query(
            tx,
            concat!(
                "SELECT ",
                user_columns!(),
                ", email_folded, username_folded FROM users \
                 WHERE id = ANY($1) OR email_folded = ANY($2) OR username_folded = ANY($3)"
            ),
            &[&ids, &emails, &usernames],
        )
        .await?;
        let mut by_id = HashMap::new();
        let (mut taken_emails, mut taken_usernames) = (HashSet::new(), HashSet::new());
        for row in &rows {
            let user = user_from(row)?;
            taken_emails.insert(column::<String>(row, "email_folded")?);
            if let Some(name) = column::<Option<String>>(row, "username_folded")? {
                taken_usernames.insert(name);
            }
            by_id.insert(user.id.clone(), user);
        }
        let mut new = Vec::new();
        for (i, user) in users.iter().enumerate() {
            if let Some(existing) = by_id.get(&user.id) {
                if existing != *user {
                    return Err(conflict(format!("a different user {}", user.id)));
                }
                self.imported.count(Kind::User, false);
                continue;
            }
            if taken_emails.contains(&emails[i]) {
                return Err(conflict(format!(
                    "another user with the email of user {}",
                    user.id
                )));
            }
            if usernames[i]
                .as_ref()
                .is_some_and(|n| taken_usernames.contains(n))
            {
                return Err(conflict(format!(
                    "another user with the username of user {}",
                    user.id
                )));
            }
            self.imported.count(Kind::User, true);
            new.push(i);
        }
        if !self.write || new.is_empty() {
            return Ok(());
        }
        let pick = |i: &usize| users[*i];
        let roles: Vec<String> = new
            .iter()
            .map(|i| serde_json::to_string(&pick(i).roles))
            .collect::<Result<_, _>>()
            .map_err(|e| StoreError::Io(format!("cannot encode roles: {e}")))?;
        let columns: [&(dyn ToSql + Sync); 13] = [
            &new.iter().map(|i| pick(i).id.as_str()).collect::<Vec<_>>(),
            &new.iter()
                .map(|i| pick(i).email.as_str())
                .collect::<Vec<_>>(),
            &new.iter().map(|i| emails[*i].as_str()).collect::<Vec<_>>(),
            &new.iter()
                .map(|i| pick(i).username.as_deref())
                .collect::<Vec<_>>(),
            &new.iter()
                .map(|i| usernames[*i].as_deref())
                .collect::<Vec<_>>(),
            &new.iter()
                .map(|i| pick(i).name.as_deref())
                .collect::<Vec<_>>(),
            &new.iter()
                .map(|i| pick(i).password_hash.as_str())
                .collect::<Vec<_>>(),
            &roles,
            &new.iter()
                .map(|i| pick(i).email_verified)
                .collect::<Vec<_>>(),
            &new.iter().map(|i| pick(i).locked).collect::<Vec<_>>(),
            &new.iter()
                .map(|i| int(pick(i).created_at))
                .collect::<Vec<_>>(),
            &new.iter()
                .map(|i| int(pick(i).updated_at))
                .collect::<Vec<_>>(),
            &new.iter()
                .map(|i| int(pick(i).password_changed_at))
                .collect::<Vec<_>>(),
        ];
        execute(
            tx,
            "INSERT INTO users (id, email, email_folded, username, username_folded, name, \
             password_hash, roles, email_verified, locked, created_at, updated_at, \
             password_changed_at) \
             SELECT t.id, t.email, t.email_folded, t.username, t.username_folded, t.name, \
                    t.password_hash, \
                    ARRAY(SELECT r FROM jsonb_array_elements_text(t.roles::jsonb) \
                          WITH ORDINALITY AS e(r, n) ORDER BY n), \
                    t.email_verified, t.locked, t.created_at, t.updated_at, \
                    t.password_changed_at \
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
                         $6::text[], $7::text[], $8::text[], $9::bool[], $10::bool[], \
                         $11::int8[], $12::int8[], $13::int8[]) \
               AS t(id, email, email_folded, username, username_folded, name, password_hash, \
                    roles, email_verified, locked, created_at, updated_at, password_changed_at)",
            &columns,
        )
        .await?;
        Ok(())
    }

    async fn sessions(
        &mut self,
        tx: &Transaction<'_>,
        sessions: &[&SessionRecord],
    ) -> Result<(), StoreError> {
        let ids: Vec<&str> = sessions.iter().map(|s| s.id.as_str()).collect();
        let existing = query(
            tx,
            concat!(
                "SELECT ",
                session_columns!(),
                " FROM sessions WHERE id = ANY($1)"
            ),
            &[&ids],
        )
        .await?
        .iter()
        .map(|row| session_from(row).map(|s| (s.id.clone(), s)))
        .collect::<Result<HashMap<_, _>, _>>()?;
        let mut new = Vec::new();
        for session in sessions {
            match existing.get(&session.id) {
                Some(found) if found == *session => self.imported.count(Kind::Session, false),
                Some(_) => return Err(conflict(format!("a different session {}", session.id))),
                None => {
                    self.imported.count(Kind::Session, true);
                    new.push(*session);
                }
            }
        }
        if !self.write || new.is_empty() {
            return Ok(());
        }
        execute(
            tx,
            concat!(
                "INSERT INTO sessions (",
                session_columns!(),
                ") SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::int8[], \
                 $5::int8[], $6::bool[], $7::bool[])"
            ),
            &[
                &new.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
                &new.iter().map(|s| s.user_id.as_str()).collect::<Vec<_>>(),
                &new.iter().map(|s| int(s.created_at)).collect::<Vec<_>>(),
                &new.iter().map(|s| int(s.last_used_at)).collect::<Vec<_>>(),
                &new.iter().map(|s| int(s.expires_at)).collect::<Vec<_>>(),
                &new.iter().map(|s| s.revoked).collect::<Vec<_>>(),
                &new.iter().map(|s| s.otp).collect::<Vec<_>>(),
            ],
        )
        .await?;
        Ok(())
    }

    async fn refresh(
        &mut self,
        tx: &Transaction<'_>,
        tokens: &[&RefreshRecord],
    ) -> Result<(), StoreError> {
        let hashes: Vec<&[u8]> = tokens.iter().map(|t| t.hash.as_slice()).collect();
        let existing = query(
            tx,
            "SELECT hash, session_id, rotated, expires_at FROM refresh_tokens \
             WHERE hash = ANY($1)",
            &[&hashes],
        )
        .await?
        .iter()
        .map(|row| refresh_from(row).map(|t| (t.hash, t)))
        .collect::<Result<HashMap<_, _>, _>>()?;
        let mut new = Vec::new();
        for token in tokens {
            let kind = Record::Refresh((*token).clone()).kind();
            match existing.get(&token.hash) {
                Some(found) if found == *token => self.imported.count(kind, false),
                Some(_) => {
                    return Err(conflict(format!(
                        "a different refresh token of session {}",
                        token.session_id
                    )));
                }
                None => {
                    self.imported.count(kind, true);
                    new.push(*token);
                }
            }
        }
        if !self.write || new.is_empty() {
            return Ok(());
        }
        execute(
            tx,
            "INSERT INTO refresh_tokens (hash, session_id, rotated, expires_at) \
             SELECT * FROM UNNEST($1::bytea[], $2::text[], $3::bool[], $4::int8[])",
            &[
                &new.iter().map(|t| t.hash.as_slice()).collect::<Vec<_>>(),
                &new.iter()
                    .map(|t| t.session_id.as_str())
                    .collect::<Vec<_>>(),
                &new.iter().map(|t| t.rotated).collect::<Vec<_>>(),
                &new.iter().map(|t| int(t.expires_at)).collect::<Vec<_>>(),
            ],
        )
        .await?;
        Ok(())
    }

    async fn one_time(
        &mut self,
        tx: &Transaction<'_>,
        tokens: &[&OneTimeToken],
    ) -> Result<(), StoreError> {
        let hashes: Vec<&[u8]> = tokens.iter().map(|t| t.hash.as_slice()).collect();
        let owners: Vec<&str> = tokens.iter().map(|t| t.record.user_id.as_str()).collect();
        let mut by_hash = HashMap::new();
        let mut pending = HashSet::new();
        for row in query(
            tx,
            "SELECT kind, hash, user_id, email, expires_at FROM one_time_tokens \
             WHERE hash = ANY($1) OR user_id = ANY($2)",
            &[&hashes, &owners],
        )
        .await?
        .iter()
        {
            let token = one_time_token_from(row)?;
            pending.insert((token.kind, token.record.user_id.clone()));
            by_hash.insert((token.kind, token.hash), token);
        }
        let mut new = Vec::new();
        for token in tokens {
            let kind = Record::OneTime((*token).clone()).kind();
            let label = match token.kind {
                OneTimeKind::PasswordReset => "password-reset",
                OneTimeKind::EmailVerification => "email-verification",
            };
            match by_hash.get(&(token.kind, token.hash)) {
                Some(found) if found.record == token.record => self.imported.count(kind, false),
                Some(_) => {
                    return Err(conflict(format!(
                        "a different {label} token of user {}",
                        token.record.user_id
                    )));
                }
                None if pending.contains(&(token.kind, token.record.user_id.clone())) => {
                    return Err(conflict(format!(
                        "another pending {label} token for user {}",
                        token.record.user_id
                    )));
                }
                None => {
                    self.imported.count(kind, true);
                    new.push(*token);
                }
            }
        }
        if !self.write || new.is_empty() {
            return Ok(());
        }
        execute(
            tx,
            "INSERT INTO one_time_tokens (kind, hash, user_id, email, expires_at) \
             SELECT * FROM UNNEST($1::text[], $2::bytea[], $3::text[], $4::text[], $5::int8[])",
            &[
                &new.iter().map(|t| kind_name(t.kind)).collect::<Vec<_>>(),
                &new.iter().map(|t| t.hash.as_slice()).collect::<Vec<_>>(),
                &new.iter()
                    .map(|t| t.record.user_id.as_str())
                    .collect::<Vec<_>>(),
                &new.iter()
                    .map(|t| t.record.email.as_str())
                    .collect::<Vec<_>>(),
                &new.iter()
                    .map(|t| int(t.record.expires_at))
                    .collect::<Vec<_>>(),
            ],
        )
        .await?;
        Ok(())
    }

    /// Revocations never conflict: the later `until` is kept.
    async fn revocations(
        &mut self,
        tx: &Transaction<'_>,
        revocations: &[&Revocation],
    ) -> Result<(), StoreError> {
        let total = u64::try_from(revocations.len()).unwrap_or(u64::MAX);
        if !self.write {
            self.imported.copied.add(Kind::Revocation, total);
            return Ok(());
        }
        if !self.revocations_locked {
            // Sequence numbers must become visible in order (see the module docs of
            // `postgres`): held until commit, like every revocation write.
            execute(
                tx,
                "SELECT pg_advisory_xact_lock($1, hashtext(coalesce(current_schema(), '')))",
                &[&REVOCATION_LOCK],
            )
            .await?;
            self.revocations_locked = true;
        }
        let keys: Vec<_> = revocations.iter().map(|r| revocation_key(r)).collect();
        let written = query(
            tx,
            "INSERT INTO revocations AS r (kind, subject, issued_before, except_sid, until) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::text[], $5::int8[]) \
             ON CONFLICT (kind, subject, issued_before, except_sid) DO UPDATE \
             SET until = EXCLUDED.until, seq = nextval('revocations_seq') \
             WHERE r.until < EXCLUDED.until \
             RETURNING seq",
            &[
                &keys.iter().map(|k| k.0).collect::<Vec<_>>(),
                &keys.iter().map(|k| k.1).collect::<Vec<_>>(),
                &keys.iter().map(|k| k.2).collect::<Vec<_>>(),
                &keys.iter().map(|k| k.3).collect::<Vec<_>>(),
                &revocations
                    .iter()
                    .map(|r| int(r.until()))
                    .collect::<Vec<_>>(),
            ],
        )
        .await?
        .len();
        let written = u64::try_from(written).unwrap_or(u64::MAX);
        self.revocations_written |= written > 0;
        self.imported.copied.add(Kind::Revocation, written);
        self.imported
            .present
            .add(Kind::Revocation, total.saturating_sub(written));
        Ok(())
    }

    async fn login_failures(
        &mut self,
        tx: &Transaction<'_>,
        failures: &[&LoginFailureRecord],
    ) -> Result<(), StoreError> {
        let logins: Vec<&str> = failures.iter().map(|f| f.login.as_str()).collect();
        let existing = query(
            tx,
            "SELECT login, window_start, count, locked_until, expires_at FROM login_failures \
             WHERE login = ANY($1)",
            &[&logins],
        )
        .await?
        .iter()
        .map(|row| login_failure_from(row).map(|f| (f.login.clone(), f.record)))
        .collect::<Result<HashMap<_, _>, _>>()?;
        let mut new = Vec::new();
        for failure in failures {
            match existing.get(&failure.login) {
                Some(found) if *found == failure.record => {
                    self.imported.count(Kind::LoginFailure, false);
                }
                // The login name is usually an email: not named.
                Some(_) => {
                    return Err(conflict(
                        "a different login-failure counter for a login name".into(),
                    ));
                }
                None => {
                    self.imported.count(Kind::LoginFailure, true);
                    new.push(*failure);
                }
            }
        }
        if !self.write || new.is_empty() {
            return Ok(());
        }
        execute(
            tx,
            "INSERT INTO login_failures (login, window_start, count, locked_until, expires_at) \
             SELECT * FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::int8[], $5::int8[])",
            &[
                &new.iter().map(|f| f.login.as_str()).collect::<Vec<_>>(),
                &new.iter()
                    .map(|f| int(f.record.window_start))
                    .collect::<Vec<_>>(),
                &new.iter()
                    .map(|f| i64::from(f.record.count))
                    .collect::<Vec<_>>(),
                &new.iter()
                    .map(|f| int(f.record.locked_until))
                    .collect::<Vec<_>>(),
                &new.iter()
                    .map(|f| int(f.record.expires_at))
                    .collect::<Vec<_>>(),
            ],
        )
        .await?;
        Ok(())
    }
}
