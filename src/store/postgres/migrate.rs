//! Versioned schema migrations, embedded in the binary and applied under a lock.
//!
//! - **Embedded.** Each migration is an SQL file in `src/store/migrations/`, compiled in with
//!   `include_str!`, so a binary always carries exactly the schema it was tested with.
//! - **Recorded.** `schema_migrations` lists the versions applied. A database with a version
//!   this binary does not know was migrated by a newer gatehouse; it is refused
//!   ([`Migrated::Newer`]) rather than served with a schema the code may misread.
//! - **One at a time.** Many replicas start at once in a rollout. Each takes a session-level
//!   `pg_advisory_lock` on a dedicated connection before looking at `schema_migrations`, so
//!   exactly one applies the pending migrations while the others wait, then find nothing
//!   left to do. The lock is keyed by the schema the connection works in, so deployments in
//!   different schemas of one database do not wait for each other. Closing the connection
//!   releases the lock, also when this process dies half-way.
//! - **Atomic.** Each migration runs in its own transaction together with its
//!   `schema_migrations` row: it is applied completely or not at all.

use std::time::Duration;

use tokio_postgres::Client;

use super::conn::Target;

/// A migration: its version (the number its file name starts with) and SQL.
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration, in order. Never edit a released one: add the next.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_initial",
        sql: include_str!("../migrations/0001_initial.sql"),
    },
    Migration {
        version: 2,
        name: "0002_totp",
        sql: include_str!("../migrations/0002_totp.sql"),
    },
];

/// The schema version this binary expects: the last migration's.
pub fn latest() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// The first key of gatehouse's migration lock ("gm" in ASCII); the second is the schema's
/// hash. Advisory locks are database-wide, so the pair is chosen to be gatehouse's own.
const MIGRATION_LOCK: i32 = 0x6761_746d;

/// Waiting for another replica's migrations and running our own may take longer than an
/// auth request's statement timeout allows: an index build on a large table takes minutes.
/// Bounded so that a replica stuck behind a hung lock holder fails (and is restarted)
/// rather than hanging forever.
const MIGRATION_STATEMENT_TIMEOUT: Duration = Duration::from_secs(300);

/// What a migration run found and did.
#[derive(Debug)]
pub enum Migrated {
    /// The schema is at [`latest`]; `applied` lists what this run applied (empty when
    /// another replica or an earlier run already had).
    UpToDate { applied: Vec<&'static str> },
    /// The database has a version this binary does not know.
    Newer { found: i32 },
}

/// Brings the schema up to date on a dedicated connection, under the migration lock.
pub async fn run(target: &Target) -> Result<Migrated, tokio_postgres::Error> {
    let (mut client, connection) = target.pg.connect(target.tls.clone()).await?;
    // The connection does the I/O for the client; it ends when the client is dropped.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
        .batch_execute(&format!(
            "SET statement_timeout = {}",
            MIGRATION_STATEMENT_TIMEOUT.as_millis()
        ))
        .await?;
    client
        .execute(
            "SELECT pg_advisory_lock($1, hashtext(coalesce(current_schema(), '')))",
            &[&MIGRATION_LOCK],
        )
        .await?;
    let outcome = apply(&mut client).await;
    // Released explicitly so the next replica goes on at once; if this fails, the
    // connection's end (the client is dropped right after) releases it anyway.
    let _ = client
        .execute(
            "SELECT pg_advisory_unlock($1, hashtext(coalesce(current_schema(), '')))",
            &[&MIGRATION_LOCK],
        )
        .await;
    outcome
}

async fn apply(client: &mut Client) -> Result<Migrated, tokio_postgres::Error> {
    // applied_at is for the operator reading the table; nothing gatehouse decides uses it.
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version    INTEGER PRIMARY KEY,
                 name       TEXT NOT NULL,
                 applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
             )",
        )
        .await?;
    let done = client
        .query(
            "SELECT version FROM schema_migrations ORDER BY version",
            &[],
        )
        .await?
        .iter()
        .map(|row| row.try_get::<_, i32>(0))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(&found) = done.iter().max()
        && found > latest()
    {
        return Ok(Migrated::Newer { found });
    }
    let mut applied = Vec::new();
    for migration in MIGRATIONS.iter().filter(|m| !done.contains(&m.version)) {
        let tx = client.transaction().await?;
        tx.batch_execute(migration.sql).await?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[&migration.version, &migration.name],
        )
        .await?;
        tx.commit().await?;
        tracing::info!(migration = migration.name, "store schema migration applied");
        applied.push(migration.name);
    }
    Ok(Migrated::UpToDate { applied })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_in_order_and_named_after_their_version() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i32::try_from(i + 1).unwrap(), "{}", m.name);
            assert!(
                m.name.starts_with(&format!("{:04}_", m.version)),
                "{}",
                m.name
            );
            assert!(!m.sql.trim().is_empty(), "{}", m.name);
        }
        assert_eq!(latest(), i32::try_from(MIGRATIONS.len()).unwrap());
    }
}
