//! [`Store`] on PostgreSQL, for any number of replicas sharing one database
//! (`store.backend = "postgres"`). The written contract is the one on
//! [`SyncStore`](super::SyncStore), the same as sled's; `tests/it/store_contract.rs` runs it
//! against both.
//!
//! Layout: [`conn`] reaches the database (URL, `sslmode` over rustls, timeouts);
//! [`migrate`] owns the schema (`src/store/migrations/*.sql`); [`listen`] follows the
//! revocation feed; `copy` exports and imports for `gatehouse store copy`; this file maps
//! each store operation onto SQL.
//!
//! Decisions, and why:
//!
//! - **tokio-postgres with deadpool-postgres.** tokio-postgres is the async PostgreSQL
//!   driver with no C dependency (no libpq) and takes any TLS stack through `MakeTlsConnect`,
//!   so TLS stays on the rustls/aws-lc-rs pair the binary already links. deadpool-postgres is
//!   a thin pool made for it: bounded size, a wait timeout that turns overload into
//!   `Unavailable` rather than an ever-growing queue, a per-connection prepared-statement
//!   cache, and a recycle check that throws away connections the server closed. sqlx would
//!   bring a second runtime abstraction, compile-time query checking against a live database
//!   and its own TLS features for a dozen fixed statements.
//! - **Every multi-row change is one transaction** (READ COMMITTED, the default), made
//!   race-free by row locks rather than by retrying serialisation failures: locks are taken
//!   in one order everywhere (user row, then session rows, then refresh tokens), so two
//!   operations never wait for each other in a circle.
//! - **Single use under races.** A refresh rotation locks its session row and then its token
//!   row (`SELECT … FOR UPDATE`); a second rotation of the same token waits, then reads the
//!   row as the first left it (rotated) and reports reuse. `take_one_time` is one
//!   `DELETE … RETURNING`: at most one caller gets the row.
//! - **Uniqueness is the database's.** Folded email and username carry unique constraints, so
//!   two sign-ups with one address on two replicas cannot both commit; the violation's
//!   constraint name says which [`UniqueKey`] collided.
//! - **Lockout counters are one upsert**, the rules of [`apply_failure`] written in SQL, so
//!   concurrent failures on many replicas each count exactly once.
//! - **Revocations form a feed.** Each write takes a new sequence number under a
//!   transaction-scoped advisory lock (so numbers become visible in order: a reader that
//!   has seen N never later finds a smaller one committed) and `NOTIFY`s in the same
//!   transaction (delivered on commit). See [`listen`] for the receiving side.
//! - **Times** are the caller's Unix seconds, stored as BIGINT (saturating at `i64::MAX`);
//!   the database clock is never read.
//! - **Errors.** Connection failures, pool timeouts, a statement timeout, a server shutting
//!   down or out of resources, deadlocks: [`StoreError::Unavailable`] (nothing was done; the
//!   app answers 503 with Retry-After). A unique violation: `Conflict`. A row gatehouse
//!   cannot decode: `Corrupt`. Anything else the server refuses: `Io`.

/// The channel revocations are notified on. A macro, so the SQL below can be built with
/// `concat!` at compile time; [`listen::CHANNEL`] is the same.
macro_rules! channel {
    () => {
        "gatehouse_revocations"
    };
}

mod conn;
mod listen;
mod migrate;

use std::sync::Arc;

use deadpool_postgres::{
    GenericClient, Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime,
};
use tokio::sync::{Notify, watch};
use tokio_postgres::Row;
use tokio_postgres::types::FromSql;

use super::{
    FailureRecord, FailureState, LockoutPolicy, MfaChallenge, MfaRecord, OneTimeKind,
    OneTimeRecord, PurgeStats, Revocation, RotateOutcome, SessionRecord, Store, StoreError,
    StoreStats, TokenHash, UniqueKey, UserPage, UserRecord, UserUpdate, failure_state, fold,
};
use crate::config::StoreConfig;

pub use conn::check_url;
pub use migrate::{MIGRATIONS, latest as latest_schema_version};

/// The key of the lock that orders revocation writes ("gr"); see the module docs. The second
/// key is the schema's hash, as for the migration lock.
const REVOCATION_LOCK: i32 = 0x6761_7472;

/// The store on a connection pool, with its revocation listener.
pub struct PgStore {
    pool: Pool,
    signal: Arc<Notify>,
    /// Never sent on: dropping it (with the store) ends the listener task.
    _listener: watch::Sender<()>,
}

/// What `gatehouse store migrate` reports.
#[derive(Debug)]
pub struct MigrationReport {
    /// Names of the migrations this run applied, in order.
    pub applied: Vec<&'static str>,
    /// The schema version now in force.
    pub version: u32,
}

/// Connects and brings the schema up to date, without opening a pool.
pub async fn migrate(config: &StoreConfig) -> Result<MigrationReport, StoreError> {
    let target = target(config)?;
    apply_migrations(&target).await
}

fn target(config: &StoreConfig) -> Result<conn::Target, StoreError> {
    conn::Target::new(
        config.url.expose(),
        config.connect_timeout,
        config.statement_timeout,
    )
    .map_err(|e| StoreError::Io(format!("store.url: {e}")))
}

async fn apply_migrations(target: &conn::Target) -> Result<MigrationReport, StoreError> {
    let version = u32::try_from(migrate::latest()).unwrap_or(0);
    match migrate::run(target).await.map_err(pg_error)? {
        migrate::Migrated::UpToDate { applied } => Ok(MigrationReport { applied, version }),
        migrate::Migrated::Newer { found } => Err(StoreError::SchemaMismatch {
            found: u32::try_from(found).unwrap_or(0),
            expected: version,
        }),
    }
}

impl PgStore {
    /// Applies pending migrations (under the migration lock), opens the pool and starts the
    /// revocation listener. Must run inside a tokio runtime, which the listener lives on.
    /// `Unavailable` when the database cannot be reached; `SchemaMismatch` when a newer
    /// gatehouse has migrated it.
    pub async fn open(config: &StoreConfig) -> Result<PgStore, StoreError> {
        let target = target(config)?;
        let applied = apply_migrations(&target).await?;
        tracing::info!(
            sslmode = ?target.mode,
            schema_version = applied.version,
            pool_size = config.pool_size,
            "store: PostgreSQL"
        );
        PgStore::connect(config, target)
    }

    /// Opens a store without migrating it, for reading one that must already be at this
    /// binary's schema version (the source of `gatehouse store copy`, which must not
    /// change). `SchemaMismatch` otherwise, with `found: 0` when there is no gatehouse
    /// schema at all.
    pub async fn open_existing(config: &StoreConfig) -> Result<PgStore, StoreError> {
        let store = PgStore::connect(config, target(config)?)?;
        let client = store.client().await?;
        let row = query_opt(
            &client,
            "SELECT to_regclass('schema_migrations') IS NOT NULL AS present",
            &[],
        )
        .await?;
        let present = match &row {
            Some(row) => column::<bool>(row, "present")?,
            None => false,
        };
        let found = if present {
            match query_opt(
                &client,
                "SELECT coalesce(max(version), 0) AS version FROM schema_migrations",
                &[],
            )
            .await?
            {
                Some(row) => column::<i32>(&row, "version")?,
                None => 0,
            }
        } else {
            0
        };
        drop(client);
        if found != migrate::latest() {
            return Err(StoreError::SchemaMismatch {
                found: u32::try_from(found).unwrap_or(0),
                expected: u32::try_from(migrate::latest()).unwrap_or(0),
            });
        }
        Ok(store)
    }

    /// The pool and the revocation listener, on a schema already checked.
    fn connect(config: &StoreConfig, target: conn::Target) -> Result<PgStore, StoreError> {
        if matches!(target.mode, conn::SslMode::Prefer | conn::SslMode::Require)
            && !target.is_local()
        {
            // libpq's meaning of these modes; fine on a trusted network, not across one.
            tracing::warn!(
                "store.url: sslmode {:?} does not check the server's certificate; \
                 use verify-full where the network is not trusted",
                target.mode
            );
        }
        let manager = Manager::from_config(
            target.pg.clone(),
            target.tls.clone(),
            // Fast: a connection the server closed is noticed by the client and dropped; a
            // query per checkout (Verified) would double the round trips of every request.
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(config.acquire_timeout))
            .create_timeout(Some(config.connect_timeout))
            .recycle_timeout(Some(config.connect_timeout))
            .build()
            .map_err(|e| StoreError::Io(format!("cannot build the connection pool: {e}")))?;
        let signal = Arc::new(Notify::new());
        let (listener, stop) = watch::channel(());
        tokio::spawn(listen::run(target, signal.clone(), stop));
        Ok(PgStore {
            pool,
            signal,
            _listener: listener,
        })
    }

    async fn client(&self) -> Result<Object, StoreError> {
        self.pool.get().await.map_err(pool_error)
    }
}

// ----- error mapping -----

fn pool_error(error: PoolError) -> StoreError {
    match error {
        PoolError::Backend(e) => pg_error(e),
        PoolError::Timeout(kind) => StoreError::Unavailable(format!(
            "no database connection within the timeout ({kind:?}); the pool may be exhausted or \
             the database unreachable"
        )),
        PoolError::Closed => StoreError::Unavailable("the connection pool is closed".into()),
        PoolError::NoRuntimeSpecified => {
            StoreError::Io("the connection pool has no runtime".into())
        }
        PoolError::PostCreateHook(e) => StoreError::Unavailable(e.to_string()),
    }
}

/// Maps a driver error onto the contract's variants (see the module docs). Messages carry
/// the server's message and SQLSTATE, never the `DETAIL` (which quotes key values such as
/// email addresses).
fn pg_error(error: tokio_postgres::Error) -> StoreError {
    let Some(db) = error.as_db_error() else {
        // No server answer at all: the connection failed, closed, or timed out.
        return StoreError::Unavailable(error.to_string());
    };
    let code = db.code().code();
    if code == "23505" {
        return StoreError::Conflict(unique_key(db.constraint()));
    }
    let detail = format!("{} (SQLSTATE {code})", db.message());
    match &code[..2] {
        // Connection exception, transaction rollback (deadlock, serialisation), insufficient
        // resources, operator intervention (statement timeout, shutdown), system error.
        "08" | "40" | "53" | "57" | "58" => StoreError::Unavailable(detail),
        _ => StoreError::Io(detail),
    }
}

/// Which unique key a violated constraint (named in `0001_initial.sql`) stands for.
fn unique_key(constraint: Option<&str>) -> UniqueKey {
    match constraint {
        Some("users_email_key") => UniqueKey::Email,
        Some("users_username_key") => UniqueKey::Username,
        _ => UniqueKey::Id,
    }
}

// ----- row and value conversions -----

/// A caller's time (or count) as BIGINT. Values past `i64::MAX` (292 billion years) saturate.
fn int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn column<'a, T: FromSql<'a>>(row: &'a Row, name: &str) -> Result<T, StoreError> {
    row.try_get(name)
        .map_err(|e| StoreError::Corrupt(format!("column {name}: {e}")))
}

fn time(row: &Row, name: &str) -> Result<u64, StoreError> {
    let value: i64 = column(row, name)?;
    u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("column {name} is negative")))
}

fn kind_name(kind: OneTimeKind) -> &'static str {
    match kind {
        OneTimeKind::PasswordReset => "password_reset",
        OneTimeKind::EmailVerification => "email_verification",
    }
}

macro_rules! user_columns {
    () => {
        "id, email, username, name, password_hash, roles, email_verified, locked, created_at, \
         updated_at, password_changed_at"
    };
}

macro_rules! session_columns {
    () => {
        "id, user_id, created_at, last_used_at, expires_at, revoked, otp"
    };
}

macro_rules! mfa_columns {
    () => {
        "user_id, secret, enabled, last_step, recovery_codes, created_at"
    };
}

// After the column macros, which it uses.
mod copy;

fn user_from(row: &Row) -> Result<UserRecord, StoreError> {
    Ok(UserRecord {
        id: column(row, "id")?,
        email: column(row, "email")?,
        username: column(row, "username")?,
        name: column(row, "name")?,
        password_hash: column(row, "password_hash")?,
        roles: column(row, "roles")?,
        email_verified: column(row, "email_verified")?,
        locked: column(row, "locked")?,
        created_at: time(row, "created_at")?,
        updated_at: time(row, "updated_at")?,
        password_changed_at: time(row, "password_changed_at")?,
    })
}

fn session_from(row: &Row) -> Result<SessionRecord, StoreError> {
    Ok(SessionRecord {
        id: column(row, "id")?,
        user_id: column(row, "user_id")?,
        created_at: time(row, "created_at")?,
        last_used_at: time(row, "last_used_at")?,
        expires_at: time(row, "expires_at")?,
        revoked: column(row, "revoked")?,
        otp: column(row, "otp")?,
    })
}

fn mfa_from(row: &Row) -> Result<MfaRecord, StoreError> {
    let codes: Vec<Vec<u8>> = column(row, "recovery_codes")?;
    Ok(MfaRecord {
        user_id: column(row, "user_id")?,
        secret: column(row, "secret")?,
        enabled: column(row, "enabled")?,
        last_step: time(row, "last_step")?,
        recovery_codes: codes
            .iter()
            .map(|c| {
                TokenHash::try_from(c.as_slice())
                    .map_err(|_| StoreError::Corrupt("malformed recovery-code hash".into()))
            })
            .collect::<Result<_, _>>()?,
        created_at: time(row, "created_at")?,
    })
}

fn mfa_challenge_from(row: &Row) -> Result<MfaChallenge, StoreError> {
    let fingerprint: Vec<u8> = column(row, "password_fingerprint")?;
    Ok(MfaChallenge {
        user_id: column(row, "user_id")?,
        login: column(row, "login")?,
        password_fingerprint: TokenHash::try_from(fingerprint.as_slice())
            .map_err(|_| StoreError::Corrupt("malformed password fingerprint".into()))?,
        expires_at: time(row, "expires_at")?,
    })
}

fn one_time_from(row: &Row) -> Result<OneTimeRecord, StoreError> {
    Ok(OneTimeRecord {
        user_id: column(row, "user_id")?,
        email: column(row, "email")?,
        expires_at: time(row, "expires_at")?,
    })
}

fn revocation_from(row: &Row) -> Result<Revocation, StoreError> {
    let kind: String = column(row, "kind")?;
    let subject: String = column(row, "subject")?;
    let until = time(row, "until")?;
    match kind.as_str() {
        "session" => Ok(Revocation::Session {
            sid: subject,
            until,
        }),
        "user" => {
            let except: String = column(row, "except_sid")?;
            Ok(Revocation::User {
                user_id: subject,
                issued_before: time(row, "issued_before")?,
                except_sid: (!except.is_empty()).then_some(except),
                until,
            })
        }
        other => Err(StoreError::Corrupt(format!(
            "unknown revocation kind {other:?}"
        ))),
    }
}

/// The identity of a revocation as stored: (kind, subject, issued_before, except_sid). As in
/// the sled layout, "no except_sid" is the empty string.
fn revocation_key(revocation: &Revocation) -> (&'static str, &str, i64, &str) {
    match revocation {
        Revocation::Session { sid, .. } => ("session", sid, 0, ""),
        Revocation::User {
            user_id,
            issued_before,
            except_sid,
            ..
        } => (
            "user",
            user_id,
            int(*issued_before),
            except_sid.as_deref().unwrap_or(""),
        ),
    }
}

// ----- statements shared by several operations -----

async fn query(
    client: &impl GenericClient,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Vec<Row>, StoreError> {
    let statement = client.prepare_cached(sql).await.map_err(pg_error)?;
    client.query(&statement, params).await.map_err(pg_error)
}

async fn query_opt(
    client: &impl GenericClient,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Option<Row>, StoreError> {
    Ok(query(client, sql, params).await?.into_iter().next())
}

async fn execute(
    client: &impl GenericClient,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<u64, StoreError> {
    let statement = client.prepare_cached(sql).await.map_err(pg_error)?;
    client.execute(&statement, params).await.map_err(pg_error)
}

/// Reads a user and locks its row until the transaction ends.
async fn lock_user(
    client: &impl GenericClient,
    id: &str,
) -> Result<Option<UserRecord>, StoreError> {
    query_opt(
        client,
        concat!(
            "SELECT ",
            user_columns!(),
            " FROM users WHERE id = $1 FOR UPDATE"
        ),
        &[&id],
    )
    .await?
    .map(|row| user_from(&row))
    .transpose()
}

/// Reads, changes and writes back a user inside the caller's transaction; `NotFound` when
/// the user is missing or a condition of the update does not hold.
async fn update_locked(
    client: &impl GenericClient,
    id: &str,
    update: &UserUpdate,
) -> Result<UserRecord, StoreError> {
    let mut user = lock_user(client, id).await?.ok_or(StoreError::NotFound)?;
    update.apply(&mut user)?;
    execute(
        client,
        "UPDATE users SET email = $2, email_folded = $3, username = $4, username_folded = $5, \
         name = $6, password_hash = $7, roles = $8, email_verified = $9, locked = $10, \
         updated_at = $11, password_changed_at = $12 WHERE id = $1",
        &[
            &user.id,
            &user.email,
            &fold(&user.email),
            &user.username,
            &user.username.as_deref().map(fold),
            &user.name,
            &user.password_hash,
            &user.roles,
            &user.email_verified,
            &user.locked,
            &int(user.updated_at),
            &int(user.password_changed_at),
        ],
    )
    .await?;
    Ok(user)
}

#[async_trait::async_trait]
impl Store for PgStore {
    async fn create_user(&self, user: &UserRecord) -> Result<(), StoreError> {
        let client = self.client().await?;
        execute(
            &client,
            concat!(
                "INSERT INTO users (",
                user_columns!(),
                ", email_folded, username_folded) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
            ),
            &[
                &user.id,
                &user.email,
                &user.username,
                &user.name,
                &user.password_hash,
                &user.roles,
                &user.email_verified,
                &user.locked,
                &int(user.created_at),
                &int(user.updated_at),
                &int(user.password_changed_at),
                &fold(&user.email),
                &user.username.as_deref().map(fold),
            ],
        )
        .await?;
        Ok(())
    }

    async fn get_user(&self, id: &str) -> Result<Option<UserRecord>, StoreError> {
        let client = self.client().await?;
        query_opt(
            &client,
            concat!("SELECT ", user_columns!(), " FROM users WHERE id = $1"),
            &[&id],
        )
        .await?
        .map(|row| user_from(&row))
        .transpose()
    }

    async fn find_user_by_email(&self, email: &str) -> Result<Option<UserRecord>, StoreError> {
        let client = self.client().await?;
        query_opt(
            &client,
            concat!(
                "SELECT ",
                user_columns!(),
                " FROM users WHERE email_folded = $1"
            ),
            &[&fold(email)],
        )
        .await?
        .map(|row| user_from(&row))
        .transpose()
    }

    async fn find_user_by_login(&self, login: &str) -> Result<Option<UserRecord>, StoreError> {
        if login.contains('@') {
            return self.find_user_by_email(login).await;
        }
        let client = self.client().await?;
        query_opt(
            &client,
            concat!(
                "SELECT ",
                user_columns!(),
                " FROM users WHERE username_folded = $1"
            ),
            &[&fold(login)],
        )
        .await?
        .map(|row| user_from(&row))
        .transpose()
    }

    async fn update_user(&self, id: &str, update: &UserUpdate) -> Result<UserRecord, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let user = update_locked(&tx, id, update).await?;
        tx.commit().await.map_err(pg_error)?;
        Ok(user)
    }

    async fn set_password(&self, id: &str, hash: &str, now: u64) -> Result<UserRecord, StoreError> {
        let update = UserUpdate {
            password_hash: Some(hash.to_owned()),
            updated_at: now,
            ..UserUpdate::default()
        };
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let user = update_locked(&tx, id, &update).await?;
        execute(
            &tx,
            "DELETE FROM one_time_tokens WHERE kind = $1 AND user_id = $2",
            &[&kind_name(OneTimeKind::PasswordReset), &id],
        )
        .await?;
        tx.commit().await.map_err(pg_error)?;
        Ok(user)
    }

    async fn delete_user(&self, id: &str) -> Result<Vec<SessionRecord>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        // Locked first, so no session can be created for the user between reading its
        // live sessions and deleting them.
        lock_user(&tx, id).await?.ok_or(StoreError::NotFound)?;
        let live = query(
            &tx,
            concat!(
                "SELECT ",
                session_columns!(),
                " FROM sessions WHERE user_id = $1 AND NOT revoked ORDER BY created_at, id"
            ),
            &[&id],
        )
        .await?
        .iter()
        .map(session_from)
        .collect::<Result<Vec<_>, _>>()?;
        // Sessions and their refresh tokens go with the user (ON DELETE CASCADE).
        execute(&tx, "DELETE FROM users WHERE id = $1", &[&id]).await?;
        execute(
            &tx,
            "DELETE FROM one_time_tokens WHERE user_id = $1",
            &[&id],
        )
        .await?;
        tx.commit().await.map_err(pg_error)?;
        Ok(live)
    }

    async fn list_users(&self, limit: usize, cursor: Option<&str>) -> Result<UserPage, StoreError> {
        let client = self.client().await?;
        // One more than asked tells whether another page follows.
        let fetch = int(u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1));
        let rows = query(
            &client,
            concat!(
                "SELECT ",
                user_columns!(),
                " FROM users WHERE ($1::text IS NULL OR id > $1) ORDER BY id LIMIT $2"
            ),
            &[&cursor, &fetch],
        )
        .await?;
        let more = rows.len() > limit;
        let users = rows
            .iter()
            .take(limit)
            .map(user_from)
            .collect::<Result<Vec<_>, _>>()?;
        let next_cursor = if more {
            users.last().map(|u| u.id.clone())
        } else {
            None
        };
        Ok(UserPage { users, next_cursor })
    }

    async fn create_session(
        &self,
        session: &SessionRecord,
        refresh_hash: &TokenHash,
        verified_hash: Option<&str>,
        max_sessions: usize,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        // The user row lock orders this against password changes, locks, deletion and
        // other logins of the same user.
        let user = lock_user(&tx, &session.user_id)
            .await?
            .ok_or(StoreError::NotFound)?;
        // The login verified a password against a hash read before argon2 ran; if the
        // password changed or the account was locked since, the session must not be born.
        if let Some(verified) = verified_hash
            && (user.locked || user.password_hash != verified)
        {
            return Err(StoreError::NotFound);
        }
        // Sessions over by now go, as sled drops them from the user's list.
        execute(
            &tx,
            "DELETE FROM sessions WHERE user_id = $1 AND expires_at <= $2",
            &[&session.user_id, &int(session.created_at)],
        )
        .await?;
        let live = query(
            &tx,
            concat!(
                "SELECT ",
                session_columns!(),
                " FROM sessions WHERE user_id = $1 AND NOT revoked \
                 ORDER BY created_at, id FOR UPDATE"
            ),
            &[&session.user_id],
        )
        .await?
        .iter()
        .map(session_from)
        .collect::<Result<Vec<_>, _>>()?;
        // Past the cap the oldest are revoked, so logging in over and over cannot grow a
        // user's sessions without limit.
        let cap = max_sessions.max(1);
        let excess = (live.len() + 1).saturating_sub(cap);
        let mut capped: Vec<SessionRecord> = live.into_iter().take(excess).collect();
        if !capped.is_empty() {
            let ids: Vec<&str> = capped.iter().map(|s| s.id.as_str()).collect();
            execute(
                &tx,
                "UPDATE sessions SET revoked = TRUE WHERE id = ANY($1)",
                &[&ids],
            )
            .await?;
            for s in &mut capped {
                s.revoked = true;
            }
        }
        execute(
            &tx,
            concat!(
                "INSERT INTO sessions (",
                session_columns!(),
                ") VALUES ($1, $2, $3, $4, $5, $6, $7)"
            ),
            &[
                &session.id,
                &session.user_id,
                &int(session.created_at),
                &int(session.last_used_at),
                &int(session.expires_at),
                &session.revoked,
                &session.otp,
            ],
        )
        .await?;
        execute(
            &tx,
            "INSERT INTO refresh_tokens (hash, session_id, rotated, expires_at) \
             VALUES ($1, $2, FALSE, $3)",
            &[
                &refresh_hash.as_slice(),
                &session.id,
                &int(session.expires_at),
            ],
        )
        .await?;
        tx.commit().await.map_err(pg_error)?;
        Ok(capped)
    }

    async fn rotate_refresh(
        &self,
        old: &TokenHash,
        new: &TokenHash,
        now: u64,
        idle_timeout_secs: u64,
    ) -> Result<RotateOutcome, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let Some(row) = query_opt(
            &tx,
            "SELECT session_id FROM refresh_tokens WHERE hash = $1",
            &[&old.as_slice()],
        )
        .await?
        else {
            return Ok(RotateOutcome::Invalid);
        };
        let sid: String = column(&row, "session_id")?;
        // The session row first, then the token row: the lock order of every other
        // operation. A concurrent rotation of the same token waits here and then sees the
        // token rotated.
        let Some(row) = query_opt(
            &tx,
            concat!(
                "SELECT ",
                session_columns!(),
                " FROM sessions WHERE id = $1 FOR UPDATE"
            ),
            &[&sid],
        )
        .await?
        else {
            return Ok(RotateOutcome::Invalid);
        };
        let mut session = session_from(&row)?;
        let Some(row) = query_opt(
            &tx,
            "SELECT rotated FROM refresh_tokens WHERE hash = $1 AND session_id = $2 FOR UPDATE",
            &[&old.as_slice(), &sid],
        )
        .await?
        else {
            return Ok(RotateOutcome::Invalid);
        };
        let rotated: bool = column(&row, "rotated")?;

        if rotated {
            // Reuse: revoking the session kills every token of the family, the successor
            // included, since each of them belongs to this session.
            if !session.revoked {
                execute(
                    &tx,
                    "UPDATE sessions SET revoked = TRUE WHERE id = $1",
                    &[&sid],
                )
                .await?;
                session.revoked = true;
                tx.commit().await.map_err(pg_error)?;
            }
            return Ok(RotateOutcome::Reused { session });
        }

        let idle =
            idle_timeout_secs > 0 && now >= session.last_used_at.saturating_add(idle_timeout_secs);
        if session.revoked || now >= session.expires_at || idle {
            return Ok(RotateOutcome::Invalid);
        }
        // Read without a lock: an admin lock racing with this rotation is ordered either way,
        // and the lock's own revocation covers what this rotation hands out.
        let Some(row) = query_opt(
            &tx,
            concat!("SELECT ", user_columns!(), " FROM users WHERE id = $1"),
            &[&session.user_id],
        )
        .await?
        else {
            return Ok(RotateOutcome::Invalid);
        };
        let user = user_from(&row)?;
        if user.locked {
            return Ok(RotateOutcome::Invalid);
        }
        execute(
            &tx,
            "UPDATE refresh_tokens SET rotated = TRUE WHERE hash = $1",
            &[&old.as_slice()],
        )
        .await?;
        execute(
            &tx,
            "INSERT INTO refresh_tokens (hash, session_id, rotated, expires_at) \
             VALUES ($1, $2, FALSE, $3)",
            &[&new.as_slice(), &sid, &int(session.expires_at)],
        )
        .await?;
        execute(
            &tx,
            "UPDATE sessions SET last_used_at = $2 WHERE id = $1",
            &[&sid, &int(now)],
        )
        .await?;
        tx.commit().await.map_err(pg_error)?;
        session.last_used_at = now;
        Ok(RotateOutcome::Rotated { session, user })
    }

    async fn get_session(&self, sid: &str) -> Result<Option<SessionRecord>, StoreError> {
        let client = self.client().await?;
        query_opt(
            &client,
            concat!(
                "SELECT ",
                session_columns!(),
                " FROM sessions WHERE id = $1"
            ),
            &[&sid],
        )
        .await?
        .map(|row| session_from(&row))
        .transpose()
    }

    async fn revoke_session(&self, sid: &str) -> Result<Option<SessionRecord>, StoreError> {
        let client = self.client().await?;
        query_opt(
            &client,
            concat!(
                "UPDATE sessions SET revoked = TRUE WHERE id = $1 AND NOT revoked RETURNING ",
                session_columns!()
            ),
            &[&sid],
        )
        .await?
        .map(|row| session_from(&row))
        .transpose()
    }

    async fn revoke_user_sessions(
        &self,
        user_id: &str,
        except: Option<&str>,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        // The user row first (when it exists), so this waits for a login in progress rather
        // than locking sessions in an order of its own.
        execute(
            &tx,
            "SELECT 1 FROM users WHERE id = $1 FOR UPDATE",
            &[&user_id],
        )
        .await?;
        let revoked = query(
            &tx,
            concat!(
                "WITH revoked AS (UPDATE sessions SET revoked = TRUE \
                 WHERE user_id = $1 AND NOT revoked AND ($2::text IS NULL OR id <> $2) \
                 RETURNING ",
                session_columns!(),
                ") SELECT * FROM revoked ORDER BY created_at, id"
            ),
            &[&user_id, &except],
        )
        .await?
        .iter()
        .map(session_from)
        .collect::<Result<Vec<_>, _>>()?;
        tx.commit().await.map_err(pg_error)?;
        Ok(revoked)
    }

    async fn put_revocation(&self, revocation: &Revocation) -> Result<(), StoreError> {
        let (kind, subject, issued_before, except_sid) = revocation_key(revocation);
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        // Held until commit: the sequence number taken below becomes visible before any
        // later one (see the module docs).
        execute(
            &tx,
            "SELECT pg_advisory_xact_lock($1, hashtext(coalesce(current_schema(), '')))",
            &[&REVOCATION_LOCK],
        )
        .await?;
        // A repeat with a later `until` takes a new number so followers apply it; one that
        // changes nothing writes nothing and notifies nobody.
        query(
            &tx,
            concat!(
                "WITH written AS (\
                 INSERT INTO revocations AS r (kind, subject, issued_before, except_sid, until) \
                 VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (kind, subject, issued_before, except_sid) DO UPDATE \
                 SET until = EXCLUDED.until, seq = nextval('revocations_seq') \
                 WHERE r.until < EXCLUDED.until \
                 RETURNING seq) \
                 SELECT pg_notify('",
                channel!(),
                "', seq::text) FROM written"
            ),
            &[
                &kind,
                &subject,
                &issued_before,
                &except_sid,
                &int(revocation.until()),
            ],
        )
        .await?;
        tx.commit().await.map_err(pg_error)?;
        Ok(())
    }

    async fn load_revocations(&self, now: u64) -> Result<Vec<Revocation>, StoreError> {
        let client = self.client().await?;
        query(
            &client,
            "SELECT kind, subject, issued_before, except_sid, until FROM revocations \
             WHERE until > $1 ORDER BY seq",
            &[&int(now)],
        )
        .await?
        .iter()
        .map(revocation_from)
        .collect()
    }

    async fn record_login_failure(
        &self,
        login: &str,
        now: u64,
        policy: &LockoutPolicy,
    ) -> Result<FailureState, StoreError> {
        let client = self.client().await?;
        // apply_failure's rules in one statement. In DO UPDATE every `f.` is the row as it
        // was. L = "locked now" (change nothing); R = "start afresh" (no failures yet, a
        // lock that ran out, or the window is over).
        let row = query_opt(
            &client,
            "INSERT INTO login_failures AS f (login, window_start, count, locked_until, expires_at) \
             VALUES ($1::text, $2::bigint, 1, \
                     CASE WHEN 1 >= $4::bigint THEN $6::bigint ELSE 0 END, \
                     GREATEST($5::bigint, CASE WHEN 1 >= $4::bigint THEN $6::bigint ELSE 0 END)) \
             ON CONFLICT (login) DO UPDATE SET \
               window_start = CASE \
                 WHEN f.locked_until > $2::bigint THEN f.window_start \
                 WHEN f.count = 0 OR f.locked_until <> 0 \
                      OR $2::bigint - f.window_start >= $3::bigint THEN $2::bigint \
                 ELSE f.window_start END, \
               count = CASE \
                 WHEN f.locked_until > $2::bigint THEN f.count \
                 WHEN f.count = 0 OR f.locked_until <> 0 \
                      OR $2::bigint - f.window_start >= $3::bigint THEN 1 \
                 ELSE LEAST(f.count + 1, 4294967295) END, \
               locked_until = CASE \
                 WHEN f.locked_until > $2::bigint THEN f.locked_until \
                 WHEN f.count = 0 OR f.locked_until <> 0 \
                      OR $2::bigint - f.window_start >= $3::bigint \
                   THEN CASE WHEN 1 >= $4::bigint THEN $6::bigint ELSE 0 END \
                 WHEN LEAST(f.count + 1, 4294967295) >= $4::bigint THEN $6::bigint \
                 ELSE 0 END, \
               expires_at = CASE \
                 WHEN f.locked_until > $2::bigint THEN f.expires_at \
                 WHEN f.count = 0 OR f.locked_until <> 0 \
                      OR $2::bigint - f.window_start >= $3::bigint \
                   THEN GREATEST($5::bigint, CASE WHEN 1 >= $4::bigint THEN $6::bigint ELSE 0 END) \
                 ELSE GREATEST( \
                   CASE WHEN f.window_start > 9223372036854775807 - $3::bigint \
                        THEN 9223372036854775807 ELSE f.window_start + $3::bigint END, \
                   CASE WHEN LEAST(f.count + 1, 4294967295) >= $4::bigint \
                        THEN $6::bigint ELSE 0 END) \
                 END \
             RETURNING window_start, count, locked_until, expires_at",
            &[
                &fold(login),
                &int(now),
                &int(policy.window_secs),
                &i64::from(policy.max_failures.max(1)),
                &int(now.saturating_add(policy.window_secs)),
                &int(now.saturating_add(policy.lock_secs)),
            ],
        )
        .await?
        .ok_or_else(|| StoreError::Io("the login-failure upsert returned no row".into()))?;
        let count: i64 = column(&row, "count")?;
        let record = FailureRecord {
            window_start: time(&row, "window_start")?,
            count: u32::try_from(count).unwrap_or(u32::MAX),
            locked_until: time(&row, "locked_until")?,
            expires_at: time(&row, "expires_at")?,
        };
        Ok(failure_state(Some(record), now, policy))
    }

    async fn clear_login_failures(&self, login: &str) -> Result<(), StoreError> {
        let client = self.client().await?;
        execute(
            &client,
            "DELETE FROM login_failures WHERE login = $1",
            &[&fold(login)],
        )
        .await?;
        Ok(())
    }

    async fn put_one_time(
        &self,
        kind: OneTimeKind,
        hash: &TokenHash,
        record: &OneTimeRecord,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        // One statement: the user's older token of this kind is replaced (voided) by the new
        // one. The same hash again is a Conflict(Id), as a hash taken by someone else's token
        // is (the primary key).
        let written = query(
            &client,
            "INSERT INTO one_time_tokens AS t (kind, hash, user_id, email, expires_at) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (kind, user_id) DO UPDATE \
             SET hash = EXCLUDED.hash, email = EXCLUDED.email, expires_at = EXCLUDED.expires_at \
             WHERE t.hash <> EXCLUDED.hash \
             RETURNING 1",
            &[
                &kind_name(kind),
                &hash.as_slice(),
                &record.user_id,
                &record.email,
                &int(record.expires_at),
            ],
        )
        .await?;
        if written.is_empty() {
            return Err(StoreError::Conflict(UniqueKey::Id));
        }
        Ok(())
    }

    async fn take_one_time(
        &self,
        kind: OneTimeKind,
        hash: &TokenHash,
        now: u64,
    ) -> Result<Option<OneTimeRecord>, StoreError> {
        let client = self.client().await?;
        // One DELETE … RETURNING: of any number of concurrent callers, one gets the row. An
        // expired token is consumed all the same and yields nothing.
        let taken = query_opt(
            &client,
            "DELETE FROM one_time_tokens WHERE kind = $1 AND hash = $2 \
             RETURNING user_id, email, expires_at",
            &[&kind_name(kind), &hash.as_slice()],
        )
        .await?
        .map(|row| one_time_from(&row))
        .transpose()?;
        Ok(taken.filter(|record| record.expires_at > now))
    }

    async fn peek_one_time(
        &self,
        kind: OneTimeKind,
        hash: &TokenHash,
        now: u64,
    ) -> Result<Option<OneTimeRecord>, StoreError> {
        let client = self.client().await?;
        query_opt(
            &client,
            "SELECT user_id, email, expires_at FROM one_time_tokens \
             WHERE kind = $1 AND hash = $2 AND expires_at > $3",
            &[&kind_name(kind), &hash.as_slice(), &int(now)],
        )
        .await?
        .map(|row| one_time_from(&row))
        .transpose()
    }

    async fn get_mfa(&self, user_id: &str) -> Result<Option<MfaRecord>, StoreError> {
        let client = self.client().await?;
        query_opt(
            &client,
            concat!(
                "SELECT ",
                mfa_columns!(),
                " FROM mfa_totp WHERE user_id = $1"
            ),
            &[&user_id],
        )
        .await?
        .map(|row| mfa_from(&row))
        .transpose()
    }

    async fn put_mfa_pending(&self, record: &MfaRecord) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let codes: Vec<&[u8]> = record.recovery_codes.iter().map(|c| c.as_slice()).collect();
        // One upsert that replaces only a pending row: an enabled one is left as it is and
        // the statement returns nothing. The user must exist (the foreign key).
        let result = query_opt(
            &client,
            concat!(
                "INSERT INTO mfa_totp (",
                mfa_columns!(),
                ") VALUES ($1, $2, FALSE, $3, $4, $5) \
                 ON CONFLICT (user_id) DO UPDATE SET secret = EXCLUDED.secret, \
                 last_step = EXCLUDED.last_step, recovery_codes = EXCLUDED.recovery_codes, \
                 created_at = EXCLUDED.created_at WHERE NOT mfa_totp.enabled \
                 RETURNING user_id"
            ),
            &[
                &record.user_id,
                &record.secret,
                &int(record.last_step),
                &codes,
                &int(record.created_at),
            ],
        )
        .await;
        match result {
            Ok(row) => Ok(row.is_some()),
            Err(StoreError::Io(e)) if e.contains("mfa_totp_user_fkey") => Err(StoreError::NotFound),
            Err(e) => Err(e),
        }
    }

    async fn enable_mfa(
        &self,
        user_id: &str,
        secret: &[u8],
        step: u64,
        recovery_codes: &[TokenHash],
    ) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let codes: Vec<&[u8]> = recovery_codes.iter().map(|c| c.as_slice()).collect();
        let n = execute(
            &client,
            "UPDATE mfa_totp SET enabled = TRUE, last_step = $3, recovery_codes = $4 \
             WHERE user_id = $1 AND NOT enabled AND secret = $2",
            &[&user_id, &secret, &int(step), &codes],
        )
        .await?;
        Ok(n == 1)
    }

    async fn accept_mfa_step(&self, user_id: &str, step: u64) -> Result<bool, StoreError> {
        let client = self.client().await?;
        // Conditional: under READ COMMITTED a second UPDATE of the row waits for the first
        // and re-checks `last_step < $2` against its result, so a step is accepted once
        // across every replica.
        let n = execute(
            &client,
            "UPDATE mfa_totp SET last_step = $2 \
             WHERE user_id = $1 AND enabled AND last_step < $2",
            &[&user_id, &int(step)],
        )
        .await?;
        Ok(n == 1)
    }

    async fn take_recovery_code(
        &self,
        user_id: &str,
        hash: &TokenHash,
    ) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let n = execute(
            &client,
            "UPDATE mfa_totp SET recovery_codes = array_remove(recovery_codes, $2) \
             WHERE user_id = $1 AND enabled AND $2 = ANY(recovery_codes)",
            &[&user_id, &hash.as_slice()],
        )
        .await?;
        Ok(n == 1)
    }

    async fn delete_mfa(&self, user_id: &str) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let n = execute(
            &client,
            "DELETE FROM mfa_totp WHERE user_id = $1",
            &[&user_id],
        )
        .await?;
        Ok(n == 1)
    }

    async fn put_mfa_challenge(
        &self,
        hash: &TokenHash,
        record: &MfaChallenge,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        let result = execute(
            &client,
            "INSERT INTO mfa_challenges (hash, user_id, login, password_fingerprint, expires_at) \
             VALUES ($1, $2, $3, $4, $5)",
            &[
                &hash.as_slice(),
                &record.user_id,
                &record.login,
                &record.password_fingerprint.as_slice(),
                &int(record.expires_at),
            ],
        )
        .await;
        match result {
            Ok(_) => Ok(()),
            Err(StoreError::Io(e)) if e.contains("mfa_challenges_user_fkey") => {
                Err(StoreError::NotFound)
            }
            Err(e) => Err(e),
        }
    }

    async fn take_mfa_challenge(
        &self,
        hash: &TokenHash,
        now: u64,
    ) -> Result<Option<MfaChallenge>, StoreError> {
        let client = self.client().await?;
        // As `take_one_time`: one DELETE … RETURNING, so one caller gets the row.
        let taken = query_opt(
            &client,
            "DELETE FROM mfa_challenges WHERE hash = $1 \
             RETURNING user_id, login, password_fingerprint, expires_at",
            &[&hash.as_slice()],
        )
        .await?
        .map(|row| mfa_challenge_from(&row))
        .transpose()?;
        Ok(taken.filter(|record| record.expires_at > now))
    }

    async fn purge_expired(
        &self,
        now: u64,
        revoked_grace_secs: u64,
    ) -> Result<PurgeStats, StoreError> {
        // A revoked session is dead once its last use is this old (`store` module docs,
        // *Purging*); the same rule as sled's `session_is_dead`.
        let used_before = now.checked_sub(revoked_grace_secs).map_or(-1, int);
        let now = int(now);
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let count = |row: &Option<Row>, name: &str| -> Result<usize, StoreError> {
            let n: i64 = match row {
                Some(row) => column(row, name)?,
                None => 0,
            };
            Ok(usize::try_from(n).unwrap_or(0))
        };
        // Sessions first, their refresh tokens with them (the cascade): session rows before
        // token rows, the lock order of a rotation. Every sub-statement sees the tokens as
        // they were, so the second count is of the tokens the cascade removes. Revoked
        // sessions have no index of their own: this statement runs every few minutes and the
        // sessions table is small next to refresh_tokens, which it reaches by its index.
        let row = query_opt(
            &tx,
            "WITH gone AS (DELETE FROM sessions WHERE expires_at <= $1 \
                           OR (revoked AND last_used_at <= $2) RETURNING id) \
             SELECT (SELECT count(*) FROM gone) AS sessions, \
                    (SELECT count(*) FROM refresh_tokens \
                     WHERE session_id IN (SELECT id FROM gone)) AS refresh_tokens",
            &[&now, &used_before],
        )
        .await?;
        let sessions = count(&row, "sessions")?;
        let cascaded = count(&row, "refresh_tokens")?;
        // A token outlives its session's expiry only if copied wrongly; cheap to be sure.
        let stray = execute(
            &tx,
            "DELETE FROM refresh_tokens WHERE expires_at <= $1",
            &[&now],
        )
        .await?;
        let one_time_tokens = execute(
            &tx,
            "DELETE FROM one_time_tokens WHERE expires_at <= $1",
            &[&now],
        )
        .await?;
        let revocations =
            execute(&tx, "DELETE FROM revocations WHERE until <= $1", &[&now]).await?;
        let login_failures = execute(
            &tx,
            "DELETE FROM login_failures WHERE expires_at <= $1",
            &[&now],
        )
        .await?;
        let mfa_challenges = execute(
            &tx,
            "DELETE FROM mfa_challenges WHERE expires_at <= $1",
            &[&now],
        )
        .await?;
        tx.commit().await.map_err(pg_error)?;
        let n = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        Ok(PurgeStats {
            sessions,
            refresh_tokens: cascaded + n(stray),
            one_time_tokens: n(one_time_tokens),
            revocations: n(revocations),
            login_failures: n(login_failures),
            mfa_challenges: n(mfa_challenges),
        })
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        let client = self.client().await?;
        let row = query_opt(
            &client,
            "SELECT (SELECT count(*) FROM users) AS users, \
                    (SELECT count(*) FROM sessions) AS sessions, \
                    (SELECT count(*) FROM refresh_tokens) AS refresh_tokens, \
                    (SELECT count(*) FROM one_time_tokens WHERE kind = 'password_reset') \
                      AS password_reset_tokens, \
                    (SELECT count(*) FROM one_time_tokens WHERE kind = 'email_verification') \
                      AS email_verification_tokens, \
                    (SELECT count(*) FROM revocations) AS revocations, \
                    (SELECT count(*) FROM login_failures) AS login_failures",
            &[],
        )
        .await?
        .ok_or_else(|| StoreError::Io("the stats query returned no row".into()))?;
        let n = |name: &str| -> Result<usize, StoreError> {
            let v: i64 = column(&row, name)?;
            Ok(usize::try_from(v).unwrap_or(0))
        };
        Ok(StoreStats {
            users: n("users")?,
            sessions: n("sessions")?,
            refresh_tokens: n("refresh_tokens")?,
            password_reset_tokens: n("password_reset_tokens")?,
            email_verification_tokens: n("email_verification_tokens")?,
            revocations: n("revocations")?,
            login_failures: n("login_failures")?,
        })
    }

    async fn health(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        // Through the schema, not just `SELECT 1`: a database whose tables were dropped is
        // not a usable store.
        query(&client, "SELECT 1 FROM schema_migrations LIMIT 1", &[]).await?;
        Ok(())
    }

    async fn revocation_cursor(&self) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let row = query_opt(
            &client,
            "SELECT coalesce(max(seq), 0) AS seq FROM revocations",
            &[],
        )
        .await?
        .ok_or_else(|| StoreError::Io("the cursor query returned no row".into()))?;
        time(&row, "seq")
    }

    async fn revocations_since(&self, after: u64) -> Result<Vec<(u64, Revocation)>, StoreError> {
        let client = self.client().await?;
        query(
            &client,
            "SELECT seq, kind, subject, issued_before, except_sid, until FROM revocations \
             WHERE seq > $1 ORDER BY seq",
            &[&int(after)],
        )
        .await?
        .iter()
        .map(|row| Ok((time(row, "seq")?, revocation_from(row)?)))
        .collect()
    }

    fn revocation_signal(&self) -> Option<Arc<Notify>> {
        Some(self.signal.clone())
    }

    async fn export(
        &self,
        batch: usize,
        out: tokio::sync::mpsc::Sender<super::copy::Chunk>,
    ) -> Result<(), StoreError> {
        copy::export(self, batch, out).await
    }

    async fn import(
        &self,
        mode: super::copy::ImportMode,
        input: tokio::sync::mpsc::Receiver<super::copy::Chunk>,
    ) -> Result<super::copy::Imported, StoreError> {
        copy::import(self, mode, input).await
    }
}
