//! A PostgreSQL schema of its own for each test that needs the shared store: created in the
//! `test` database at 127.0.0.1:5432 (trust auth, user postgres; `POSTGRES_TEST_URL`
//! points elsewhere) and dropped, with everything in it, when the test ends.
//!
//! PostgreSQL is required (CI provides it): when it cannot be reached the tests fail with a
//! message saying so. A developer without it sets `SKIP_POSTGRES_TESTS=1`; every skipped test
//! then says so on stderr, past the test harness's output capture.

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use gatehouse::config::Config;
use gatehouse::store::{self, Store, new_id};

use crate::harness::SECRET;

const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
pub const SKIP_VAR: &str = "SKIP_POSTGRES_TESTS";
pub const URL_VAR: &str = "POSTGRES_TEST_URL";

/// A minimal valid config with the given `[store]` keys; no process environment, so a
/// developer's `GATEHOUSE_*` variables cannot change what is tested.
pub fn config(store_section: &str) -> Config {
    let text = format!(
        "[upstream]\nurl = \"http://127.0.0.1:9\"\n[tokens]\nsecret = \"{SECRET}\"\n\
         [store]\n{store_section}\n"
    );
    Config::from_toml(&text, Vec::new()).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

pub fn postgres_base() -> String {
    std::env::var(URL_VAR).unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_string())
}

/// Says loudly, on the real stderr (not the captured one), that a test did not run.
pub fn say_skipped() {
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIPPED a PostgreSQL store test: {SKIP_VAR}=1 is set. Only sled was checked; \
         CI runs both. ***"
    );
}

/// A schema of its own in the test database, dropped (with everything in it) on drop.
pub struct Schema {
    pub name: String,
    base: String,
}

impl Schema {
    pub async fn create() -> Option<Schema> {
        if std::env::var(SKIP_VAR).is_ok_and(|v| v == "1") {
            say_skipped();
            return None;
        }
        let name = format!("gh_test_{}", new_id().replace('-', ""));
        let schema = Schema {
            name,
            base: postgres_base(),
        };
        let admin = schema.admin().await;
        admin
            .batch_execute(&format!("CREATE SCHEMA {}", schema.name))
            .await
            .unwrap();
        Some(schema)
    }

    /// A plain connection for the test's own queries, searching this schema, under an
    /// application name of its own (so cutting the store's sessions spares it).
    pub async fn admin(&self) -> tokio_postgres::Client {
        let url = self.url("").replace(
            &format!("application_name={}", self.name),
            &format!("application_name=admin_{}", self.name),
        );
        let connected = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_postgres::connect(&url, tokio_postgres::NoTls),
        )
        .await;
        let (client, connection) = match connected {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => panic!("{}", unreachable_message(&e.to_string())),
            Err(_) => panic!("{}", unreachable_message("no answer within 10s")),
        };
        tokio::spawn(async move {
            let _ = connection.await;
        });
        client
    }

    /// The store URL for this schema: no TLS (tests of TLS say otherwise), the schema as
    /// the search path, the schema's name as application name (to find its sessions in
    /// pg_stat_activity), plus `extra` query parameters.
    pub fn url(&self, extra: &str) -> String {
        let separator = if self.base.contains('?') { '&' } else { '?' };
        let has_mode = self.base.contains("sslmode=") || extra.contains("sslmode=");
        format!(
            "{}{separator}application_name={name}&options=-csearch_path%3D{name}{}{extra}",
            self.base,
            if has_mode { "" } else { "&sslmode=disable" },
            name = self.name
        )
    }

    pub fn config(&self, extra: &str) -> Config {
        config(&format!(
            "backend = \"postgres\"\nurl = {:?}\npool_size = 8\nacquire_timeout = \"5s\"",
            self.url(extra)
        ))
    }

    pub async fn open(&self) -> Arc<dyn Store> {
        store::open(&self.config(""))
            .await
            .unwrap_or_else(|e| panic!("{}", unreachable_message(&e.to_string())))
    }
}

pub fn unreachable_message(detail: &str) -> String {
    format!(
        "PostgreSQL at {} is not usable ({detail}). The store contract runs against it \
         (CI provides it): start PostgreSQL with trust auth and a `test` database, point \
         {URL_VAR} at one, or set {SKIP_VAR}=1 to check sled only.",
        postgres_base()
    )
}

impl Drop for Schema {
    fn drop(&mut self) {
        // Drop may run inside the test's runtime (or while it unwinds), where no other
        // runtime can block: a thread of its own does the cleanup.
        let (url, name) = (self.url(""), self.name.clone());
        let cleanup = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok((client, connection)) =
                    tokio_postgres::connect(&url, tokio_postgres::NoTls).await
                else {
                    return;
                };
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                let _ = client
                    .batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                    .await;
            });
        });
        let _ = cleanup.join();
    }
}
