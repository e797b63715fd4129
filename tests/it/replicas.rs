//! Several replicas on one PostgreSQL store act as one (issue 9, "How it is checked"):
//! in-process gatehouses on ephemeral ports sharing one schema of their own ([`Schema`]), one
//! echo upstream and one manual clock, plus Redis for the shared auth limits (under a key
//! prefix of their own) and, for the crash test, two real `gatehouse serve` processes.
//!
//! Nothing here sleeps for synchronisation: what crosses replicas (the revocation feed, a
//! reconnect) is polled for with a deadline, and where the contract promises a bound ("within
//! 1 s") the measured delay is printed and asserted on its own, so a failure says how late it
//! was rather than only that it was.

use std::future::Future;
use std::io::BufRead;
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use http::Method;
use serde_json::json;

use crate::harness::{Gatehouse, PASSWORD, ROUTES, Reply, SECRET, Setup, T0};
use crate::pg::{Schema, postgres_base};
use crate::relay::Relay;

/// What the contract promises: a revocation made on one replica is enforced on every other
/// within this long (API.md §11).
const PROPAGATION: Duration = Duration::from_secs(1);
/// The longest a poll waits before it fails the test with what it last saw: far beyond every
/// promise, so only a real failure (not a loaded machine) reaches it.
const DEADLINE: Duration = Duration::from_secs(20);
/// Between two probes of a poll: short, so measured delays are accurate to a few ms.
const PROBE_INTERVAL: Duration = Duration::from_millis(5);

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// The `GATEHOUSE_*` overrides that put a replica on the PostgreSQL store at `url`: a small
/// pool (three replicas and the contract suite share the server's 100 connections) and short
/// timeouts, so an unreachable store is answered 503 quickly.
fn store_env(url: &str) -> Vec<(String, String)> {
    [
        ("GATEHOUSE_STORE_BACKEND", "postgres"),
        ("GATEHOUSE_STORE_URL", url),
        ("GATEHOUSE_STORE_POOL_SIZE", "4"),
        ("GATEHOUSE_STORE_ACQUIRE_TIMEOUT", "2s"),
        ("GATEHOUSE_STORE_CONNECT_TIMEOUT", "2s"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Replicas of one deployment: one schema, one upstream, one clock.
struct Cluster {
    schema: Schema,
    upstream: SocketAddr,
    now: Arc<AtomicU64>,
    extra: String,
    env: Vec<(String, String)>,
}

impl Cluster {
    /// A fresh schema and upstream; `None` when PostgreSQL tests are skipped (said loudly).
    async fn new(extra: &str, env: &[(&str, &str)]) -> Option<Cluster> {
        let schema = Schema::create().await?;
        Some(Cluster {
            schema,
            upstream: gatehouse::demo::echo_upstream().await.unwrap(),
            now: Arc::new(AtomicU64::new(T0)),
            extra: extra.to_string(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        })
    }

    /// A replica on the schema.
    async fn replica(&self) -> Gatehouse {
        let url = self.schema.url("");
        self.replica_at(&url).await
    }

    /// A replica that reaches the schema at `url` (through a relay, say).
    async fn replica_at(&self, url: &str) -> Gatehouse {
        let mut env = store_env(url);
        env.extend(self.env.iter().cloned());
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Gatehouse::launch_replica(
            Setup {
                env: &env,
                ..Setup::new(self.upstream, &self.extra)
            },
            self.now.clone(),
        )
        .await
    }

    async fn replicas(&self, n: usize) -> Vec<Gatehouse> {
        let mut all = Vec::with_capacity(n);
        for _ in 0..n {
            all.push(self.replica().await);
        }
        all
    }
}

/// Probes until `check` says yes, `DEADLINE` at most; returns how long it took. On the
/// deadline the test fails with `what` and the last probe's description.
async fn until<F, Fut>(what: &str, mut probe: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let start = Instant::now();
    loop {
        let last = match probe().await {
            Ok(()) => return start.elapsed(),
            Err(last) => last,
        };
        assert!(
            start.elapsed() < DEADLINE,
            "{what}: still not the case after {DEADLINE:?}; last seen: {last}"
        );
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}

/// One line a human reads in the test output (`--nocapture`) and in a failure.
fn report(what: &str, delay: Duration) {
    eprintln!("replicas: {what}: {:.1} ms", delay.as_secs_f64() * 1000.0);
}

#[track_caller]
fn assert_within(what: &str, delay: Duration, bound: Duration) {
    report(what, delay);
    assert!(
        delay < bound,
        "{what} took {:.1} ms; the contract is under {} ms",
        delay.as_secs_f64() * 1000.0,
        bound.as_millis()
    );
}

/// `Ok` once `token` is refused by `gh` with 401 TOKEN_REVOKED on the proxy path.
async fn refused(gh: &Gatehouse, token: &str) -> Result<(), String> {
    let reply = gh
        .get_with("/api/items", &[("authorization", &bearer(token))])
        .await;
    let code = error_code(&reply);
    if reply.status == 401 && code == "TOKEN_REVOKED" {
        Ok(())
    } else {
        Err(format!("{} {code}", reply.status))
    }
}

fn error_code(reply: &Reply) -> String {
    serde_json::from_slice::<serde_json::Value>(&reply.body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_string))
        .unwrap_or_default()
}

async fn refresh(gh: &Gatehouse, refresh_token: &str) -> Reply {
    gh.json(
        Method::POST,
        "/auth/refresh",
        None,
        json!({"refresh_token": refresh_token}),
    )
    .await
}

/// 1. Registered on A, logged in on B, the token works on C, with the identity headers.
#[tokio::test]
async fn a_user_registered_on_one_replica_logs_in_on_another_and_is_proxied_by_a_third() {
    let Some(cluster) = Cluster::new(ROUTES, &[]).await else {
        return;
    };
    let [a, b, c] = <[Gatehouse; 3]>::try_from(cluster.replicas(3).await)
        .ok()
        .unwrap();

    let user = a.register("ada@example.com").await;
    let id = user["user"]["id"].as_str().unwrap().to_string();
    let (access, _) = b.session("ada@example.com", PASSWORD).await;
    let proxied = c
        .get_with("/api/items", &[("authorization", &bearer(&access))])
        .await;
    proxied.expect(200);
    assert_eq!(proxied.upstream_header("x-auth-user-id"), Some(id));
    assert_eq!(
        proxied.upstream_header("x-auth-email").as_deref(),
        Some("ada@example.com")
    );
    assert_eq!(
        proxied.upstream_header("x-auth-roles").as_deref(),
        Some("reader")
    );
    // The address is taken on every replica.
    c.json(
        Method::POST,
        "/auth/register",
        None,
        json!({"email": "ADA@example.com", "password": PASSWORD}),
    )
    .await
    .expect_error(409, "EMAIL_ALREADY_EXISTS");
}

/// 2. A logout on C is enforced on A (and B) within a second.
#[tokio::test]
async fn a_logout_on_one_replica_is_enforced_on_the_others_within_a_second() {
    let Some(cluster) = Cluster::new(ROUTES, &[]).await else {
        return;
    };
    let [a, b, c] = <[Gatehouse; 3]>::try_from(cluster.replicas(3).await)
        .ok()
        .unwrap();
    a.register("bo@example.com").await;
    let mut delays = Vec::new();
    for round in 0..5 {
        let (access, _) = b.session("bo@example.com", PASSWORD).await;
        for gh in [&a, &b, &c] {
            gh.get_with("/api/items", &[("authorization", &bearer(&access))])
                .await
                .expect(200);
        }
        c.json(Method::POST, "/auth/logout", Some(&access), json!({}))
            .await
            .expect(200);
        let logged_out = Instant::now();
        // The replica that logged out knows at once.
        refused(&c, &access).await.unwrap();
        until(
            &format!("round {round}: A refuses the logged-out token"),
            || refused(&a, &access),
        )
        .await;
        let on_a = logged_out.elapsed();
        until(
            &format!("round {round}: B refuses the logged-out token"),
            || refused(&b, &access),
        )
        .await;
        assert_within(
            &format!("round {round}: logout on C enforced on A after"),
            on_a,
            PROPAGATION,
        );
        delays.push(on_a);
    }
    delays.sort();
    report("logout on C → A, slowest of 5", delays[4]);
}

/// 3. One refresh token presented on A and B at once: never two successes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_token_raced_on_two_replicas_never_succeeds_twice() {
    let Some(cluster) = Cluster::new(ROUTES, &[]).await else {
        return;
    };
    let [a, b] = <[Gatehouse; 2]>::try_from(cluster.replicas(2).await)
        .ok()
        .unwrap();
    a.register("cy@example.com").await;
    let (mut wins, mut rounds_without_winner) = (0, 0);
    for round in 0..20 {
        let (_, token) = a.session("cy@example.com", PASSWORD).await;
        let (on_a, on_b) = tokio::join!(refresh(&a, &token), refresh(&b, &token));
        let winners: Vec<&Reply> = [&on_a, &on_b]
            .into_iter()
            .filter(|r| r.status == 200)
            .collect();
        assert!(
            winners.len() <= 1,
            "round {round}: both replicas rotated one refresh token:\nA: {}\nB: {}",
            on_a.text(),
            on_b.text()
        );
        for reply in [&on_a, &on_b] {
            if reply.status != 200 {
                reply.expect(401);
            }
        }
        match winners.first() {
            Some(winner) => {
                wins += 1;
                // The loser presented a rotated token: the whole family is revoked, the
                // winner's successor included (strict reuse detection).
                let next = winner.json()["refresh_token"].as_str().unwrap().to_string();
                refresh(&b, &next).await.expect(401);
            }
            None => rounds_without_winner += 1,
        }
    }
    eprintln!(
        "replicas: raced refreshes: {wins} rounds with one winner, {rounds_without_winner} with none, 0 with two"
    );
}

/// 4. Failed logins spread over A, B and C count against one lockout counter.
#[tokio::test]
async fn failed_logins_spread_over_replicas_lock_the_name_on_all_of_them() {
    let extra = format!(
        "{ROUTES}\n[auth.lockout]\nmax_failures = 3\nwindow = \"15m\"\nduration = \"15m\"\n"
    );
    let Some(cluster) = Cluster::new(&extra, &[]).await else {
        return;
    };
    let replicas = cluster.replicas(3).await;
    let [a, b, c] = [&replicas[0], &replicas[1], &replicas[2]];
    a.register("di@example.com").await;
    a.register("ed@example.com").await;

    a.login("di@example.com", "wrong password 1")
        .await
        .expect_error(401, "INVALID_CREDENTIALS");
    b.login("di@example.com", "wrong password 2")
        .await
        .expect_error(401, "INVALID_CREDENTIALS");
    // The third failure anywhere is the one that locks: one counter, not one per replica.
    c.login("di@example.com", "wrong password 3")
        .await
        .expect_error(423, "ACCOUNT_LOCKED");
    for gh in [a, b, c] {
        let reply = gh.login("di@example.com", PASSWORD).await;
        reply.expect_error(423, "ACCOUNT_LOCKED");
        let retry: u64 = reply
            .header("retry-after")
            .and_then(|v| v.parse().ok())
            .expect("Retry-After on 423");
        assert!((1..=900).contains(&retry), "Retry-After {retry}");
    }
    // Another name is untouched, and the lock ends on every replica when its time is up.
    b.session("ed@example.com", PASSWORD).await;
    a.advance(901);
    for gh in [a, b, c] {
        gh.login("di@example.com", PASSWORD).await.expect(200);
    }
}

/// A Redis key prefix no other test or run shares.
fn unique_prefix() -> String {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("random bytes");
    format!(
        "gatehouse-test:replicas:{}:{:016x}:",
        std::process::id(),
        u64::from_le_bytes(bytes)
    )
}

/// Deletes the keys under `prefix` (only those).
async fn clean_up_redis(prefix: &str) {
    let Ok(client) = redis::Client::open("redis://127.0.0.1:6379/0") else {
        return;
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return;
    };
    let found: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    if !found.is_empty() {
        let _: Result<(), _> = redis::cmd("DEL").arg(&found).query_async(&mut conn).await;
    }
}

/// A failing login for a fresh name (the lockout stays out of it) from `client`, named by
/// X-Forwarded-For from the trusted local proxy.
async fn forwarded_login(gh: &Gatehouse, client: &str, n: usize) -> Reply {
    let body = json!({"email": format!("nobody{n}@example.com"), "password": PASSWORD});
    gh.send(
        Method::POST,
        "/auth/login",
        &[
            ("content-type", "application/json"),
            ("x-forwarded-for", client),
        ],
        bytes::Bytes::from(body.to_string()),
    )
    .await
}

/// 5. With Redis limits, logins spread over A and B draw on one budget per client.
#[tokio::test]
async fn the_login_limit_is_one_budget_across_replicas_with_redis() {
    let prefix = unique_prefix();
    let env = [
        ("GATEHOUSE_RATE_LIMITS_BACKEND", "redis"),
        (
            "GATEHOUSE_RATE_LIMITS_REDIS_URL",
            "redis://127.0.0.1:6379/0",
        ),
        ("GATEHOUSE_RATE_LIMITS_REDIS_PREFIX", prefix.as_str()),
        // The most the config allows: a loaded machine must not turn these into fallbacks.
        ("GATEHOUSE_RATE_LIMITS_REDIS_TIMEOUT", "1s"),
        ("GATEHOUSE_RATE_LIMITS_LOGIN", "4/1h"),
        // The clients are named by X-Forwarded-For from the trusted local proxy.
        ("GATEHOUSE_SERVER_TRUSTED_PROXIES", "127.0.0.1/32"),
        ("GATEHOUSE_AUTH_LOCKOUT_MAX_FAILURES", "0"),
    ];
    let Some(cluster) = Cluster::new(ROUTES, &env).await else {
        return;
    };
    let replicas = cluster.replicas(2).await;
    let [a, b] = [&replicas[0], &replicas[1]];
    let alice = "198.51.100.7";
    for (n, gh) in [a, b, a, b].into_iter().enumerate() {
        forwarded_login(gh, alice, n)
            .await
            .expect_error(401, "INVALID_CREDENTIALS");
    }
    // The fifth overall, on either replica, is over the one budget of 4.
    for (n, gh) in [(4, a), (5, b)] {
        let reply = forwarded_login(gh, alice, n).await;
        reply.expect_error(429, "RATE_LIMITED");
        assert!(reply.header("retry-after").is_some(), "{reply:?}");
        assert_eq!(reply.header("ratelimit-limit"), Some("4"), "{reply:?}");
    }
    // Another client has a budget of its own on both.
    forwarded_login(b, "203.0.113.9", 6)
        .await
        .expect_error(401, "INVALID_CREDENTIALS");
    forwarded_login(a, "203.0.113.9", 7)
        .await
        .expect_error(401, "INVALID_CREDENTIALS");
    // All of it was Redis's counting, none a local fallback.
    for (name, gh) in [("A", a), ("B", b)] {
        let fallbacks: u64 = ["error", "timeout", "down"]
            .iter()
            .map(|reason| {
                gh.app
                    .metrics
                    .shared_limit_fallbacks
                    .with_label_values(&["login", reason])
                    .get()
            })
            .sum();
        assert_eq!(fallbacks, 0, "replica {name} counted locally");
    }
    clean_up_redis(&prefix).await;
}

/// `url` with its host and port replaced by `addr`.
fn url_through(url: &str, addr: SocketAddr) -> String {
    let mut parsed = url::Url::parse(url).expect("the store URL");
    parsed.set_host(Some(&addr.ip().to_string())).unwrap();
    parsed.set_port(Some(addr.port())).unwrap();
    parsed.to_string()
}

/// Where the test PostgreSQL listens.
fn postgres_addr() -> SocketAddr {
    let parsed = url::Url::parse(&postgres_base()).expect("the PostgreSQL test URL");
    let host = parsed.host_str().unwrap_or("127.0.0.1");
    let port = parsed.port().unwrap_or(5432);
    (host, port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .unwrap_or_else(|| panic!("cannot resolve {host}:{port}"))
}

/// The failed rounds of a replica's revocation feed, from its `/metrics`.
async fn feed_errors(gh: &Gatehouse) -> u64 {
    const SERIES: &str = "gatehouse_revocation_feed_rounds_total{result=\"error\"}";
    gh.get("/metrics")
        .await
        .expect(200)
        .text()
        .lines()
        .find_map(|line| line.strip_prefix(SERIES))
        .map_or(0, |value| value.trim().parse().expect("a counter value"))
}

/// 6. A replica cut off from the database keeps proxying, answers 503 on the auth endpoints,
/// says degraded, and on reconnect catches up with the revocations it missed.
#[tokio::test]
async fn a_replica_cut_off_from_the_store_degrades_and_catches_up_on_reconnect() {
    let Some(cluster) = Cluster::new(ROUTES, &[]).await else {
        return;
    };
    let relay = Relay::start(postgres_addr()).await;
    let a = cluster
        .replica_at(&url_through(&cluster.schema.url(""), relay.addr))
        .await;
    let b = cluster.replica().await;
    b.register("fi@example.com").await;
    let (doomed, _) = b.session("fi@example.com", PASSWORD).await;
    let (kept, _) = b.session("fi@example.com", PASSWORD).await;
    for token in [&doomed, &kept] {
        a.get_with("/api/items", &[("authorization", &bearer(token))])
            .await
            .expect(200);
    }

    relay.cut();
    // Auth endpoints: 503 STORE_UNAVAILABLE with Retry-After.
    until(
        "A answers 503 STORE_UNAVAILABLE on login while cut off",
        || async {
            let reply = a.login("fi@example.com", PASSWORD).await;
            match (reply.status.as_u16(), error_code(&reply).as_str()) {
                (503, "STORE_UNAVAILABLE") => Ok(()),
                (status, code) => Err(format!("{status} {code}")),
            }
        },
    )
    .await;
    let reply = a.login("fi@example.com", PASSWORD).await;
    reply.expect_error(503, "STORE_UNAVAILABLE");
    let retry: u64 = reply
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After on 503");
    assert!(retry >= 1, "Retry-After {retry}");
    let reply = a
        .json(
            Method::POST,
            "/auth/register",
            None,
            json!({"email": "gu@example.com", "password": PASSWORD}),
        )
        .await;
    reply.expect_error(503, "STORE_UNAVAILABLE");
    // /readyz: still 200, degraded, naming the store.
    until("A's /readyz says degraded with the store down", || async {
        let reply = a.get("/readyz").await;
        let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap_or_default();
        let store_down = body["down"]
            .as_array()
            .is_some_and(|d| d.iter().any(|p| p == "store"));
        if reply.status == 200 && body["status"] == "degraded" && store_down {
            Ok(())
        } else {
            Err(format!("{} {}", reply.status, reply.text()))
        }
    })
    .await;
    // The proxy path never needed the store.
    a.get_with("/api/items", &[("authorization", &bearer(&kept))])
        .await
        .expect(200);

    // Meanwhile B ends a session. A cannot know yet: nothing reaches it.
    b.json(Method::POST, "/auth/logout", Some(&doomed), json!({}))
        .await
        .expect(200);
    refused(&b, &doomed).await.unwrap();
    a.get_with("/api/items", &[("authorization", &bearer(&doomed))])
        .await
        .expect(200);
    // A's feed tries, and fails, to read the store after the logout: two more failed
    // rounds, so at least one of them started after it. What A learns later it learns by
    // catching up from its cursor, not by luck of timing.
    let failed = feed_errors(&a).await;
    until(
        "A's revocation feed fails a round after the logout",
        || async {
            let now = feed_errors(&a).await;
            if now >= failed + 2 {
                Ok(())
            } else {
                Err(format!("{now} failed rounds, {failed} before the logout"))
            }
        },
    )
    .await;
    a.get_with("/api/items", &[("authorization", &bearer(&doomed))])
        .await
        .expect(200);

    relay.restore();
    let restored = Instant::now();
    until(
        "A enforces the logout it missed, after reconnecting",
        || refused(&a, &doomed),
    )
    .await;
    let caught_up = restored.elapsed();
    assert_within(
        "revocation missed while cut off, enforced on A after the relay was restored",
        caught_up,
        Duration::from_secs(3),
    );
    until("A's auth endpoints work again", || async {
        let reply = a.login("fi@example.com", PASSWORD).await;
        if reply.status == 200 {
            Ok(())
        } else {
            Err(format!("{} {}", reply.status, reply.text()))
        }
    })
    .await;
    until("A's /readyz says ready again", || async {
        let reply = a.get("/readyz").await;
        if reply.status == 200 && reply.json()["status"] == "ready" {
            Ok(())
        } else {
            Err(reply.text())
        }
    })
    .await;
    a.get_with("/api/items", &[("authorization", &bearer(&kept))])
        .await
        .expect(200);
}

/// 8. An admin's role change or lock on A is enforced on C within a second.
#[tokio::test]
async fn an_admin_role_change_or_lock_on_one_replica_is_enforced_on_another_within_a_second() {
    let Some(cluster) = Cluster::new(ROUTES, &[]).await else {
        return;
    };
    let replicas = cluster.replicas(3).await;
    let [a, _b, c] = [&replicas[0], &replicas[1], &replicas[2]];
    let admin = a.token("root", &["admin"]);
    let user = a.register("hu@example.com").await;
    let id = user["user"]["id"].as_str().unwrap().to_string();
    let (reader, refresh_token) = c.session("hu@example.com", PASSWORD).await;
    let items = |token: &str| {
        let auth = bearer(token);
        async move {
            c.send(
                Method::POST,
                "/api/items",
                &[("authorization", &auth)],
                bytes::Bytes::new(),
            )
            .await
        }
    };
    items(&reader).await.expect_error(403, "FORBIDDEN");

    // A role change on A: C stops taking the token with the old roles.
    a.json(
        Method::PATCH,
        &format!("/auth/admin/users/{id}"),
        Some(&admin),
        json!({"roles": ["creator"]}),
    )
    .await
    .expect(200);
    let changed = Instant::now();
    until("C refuses the token minted before the role change", || {
        refused(c, &reader)
    })
    .await;
    assert_within(
        "role change on A enforced on C after",
        changed.elapsed(),
        PROPAGATION,
    );
    // A refresh on C carries the new roles, and is not caught by the cutoff.
    let renewed = refresh(c, &refresh_token).await.expect(200).json();
    assert_eq!(renewed["user"]["roles"], json!(["creator"]));
    let creator = renewed["access_token"].as_str().unwrap().to_string();
    items(&creator).await.expect(200);

    // A lock on A: C refuses the session's tokens and the login.
    a.json(
        Method::PATCH,
        &format!("/auth/admin/users/{id}"),
        Some(&admin),
        json!({"locked": true}),
    )
    .await
    .expect(200);
    let locked = Instant::now();
    until("C refuses the locked user's token", || refused(c, &creator)).await;
    assert_within(
        "lock on A enforced on C after",
        locked.elapsed(),
        PROPAGATION,
    );
    c.login("hu@example.com", PASSWORD)
        .await
        .expect_error(423, "ACCOUNT_LOCKED");
    let next = renewed["refresh_token"].as_str().unwrap();
    refresh(c, next).await.expect(401);
}

// ----- 7. the real binary -----

/// A `gatehouse serve` process; killed (SIGKILL) if the test ends before it does.
struct Serve {
    child: Child,
    addr: SocketAddr,
}

impl Serve {
    /// Starts the binary on `config` and waits for its "gatehouse ready" log line.
    async fn start(config: &std::path::Path) -> Serve {
        let mut command = Command::new(env!("CARGO_BIN_EXE_gatehouse"));
        // The file says everything: nothing from the environment of whoever runs the tests.
        for (name, _) in std::env::vars() {
            if name.starts_with("GATEHOUSE_") {
                command.env_remove(name);
            }
        }
        let mut child = command
            .args(["serve", "--config"])
            .arg(config)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn gatehouse");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(event) = serde_json::from_str::<serde_json::Value>(&line)
                    && event["message"] == "gatehouse ready"
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(event["listen"].as_str().unwrap_or_default().to_string());
                }
                // Keeps reading so the child never blocks on a full pipe.
            }
        });
        let addr = match tokio::time::timeout(DEADLINE, rx).await {
            Ok(Ok(addr)) => addr.parse().expect("a listen address"),
            _ => {
                let _ = child.kill();
                panic!("gatehouse serve did not say it was ready within {DEADLINE:?}")
            }
        };
        Serve { child, addr }
    }

    /// kill -9: no shutdown hook runs.
    fn sigkill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request to a binary on a fresh connection.
async fn call(
    addr: SocketAddr,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, serde_json::Value) {
    let auth = token.map(bearer);
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: gh\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(auth) = auth {
        head.push_str(&format!("Authorization: {auth}\r\n"));
    }
    let reply = crate::harness::raw_exchange(addr, format!("{head}\r\n{body}").as_bytes()).await;
    let json = serde_json::from_slice(&reply.body).unwrap_or(serde_json::Value::Null);
    (reply.status.as_u16(), json)
}

/// 7. Killed with SIGKILL right after a 201: the registration is there for the other replica.
#[tokio::test]
async fn a_registration_acknowledged_before_sigkill_logs_in_on_another_replica() {
    let Some(schema) = Schema::create().await else {
        return;
    };
    let upstream = gatehouse::demo::echo_upstream().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gatehouse.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[server]
listen = "127.0.0.1:0"
[upstream]
url = "http://{upstream}"
[store]
backend = "postgres"
url = "{url}"
pool_size = 4
[tokens]
secret = "{SECRET}"
[auth.password]
memory_kib = 1024
iterations = 1
parallelism = 1
[rate_limits]
register = "0"
login = "0"
[[routes]]
path = "/api/**"
access = "authenticated"
[log]
format = "json"
level = "info"
"#,
            url = schema.url("")
        ),
    )
    .unwrap();
    let (one, two) = tokio::join!(Serve::start(&config), Serve::start(&config));
    let emails: Vec<String> = (0..5).map(|i| format!("kill{i}@example.com")).collect();
    for email in &emails {
        let body = json!({"email": email, "password": PASSWORD}).to_string();
        let (status, answer) = call(one.addr, Method::POST, "/auth/register", None, &body).await;
        assert_eq!(status, 201, "{answer}");
    }
    // kill -9 right after the last 201.
    one.sigkill();
    for email in &emails {
        let body = json!({"email": email, "password": PASSWORD}).to_string();
        let (status, answer) = call(two.addr, Method::POST, "/auth/login", None, &body).await;
        assert_eq!(
            status, 200,
            "{email}, acknowledged before SIGKILL, cannot log in: {answer}"
        );
        let token = answer["access_token"].as_str().unwrap();
        let (status, echoed) = call(two.addr, Method::GET, "/api/items", Some(token), "").await;
        assert_eq!(status, 200, "{echoed}");
    }
}

/// Known gap, kept as a reproduction (run with `--ignored`): a user-wide revocation's cutoff
/// is the revoking replica's clock, so a token minted just before it on a replica whose
/// clock is ahead (here by one second, inside the 5 s `tokens.leeway` the config tolerates)
/// carries an `iat` past the cutoff and keeps its old roles on every replica until it
/// expires. Replicas must therefore agree on the time to the second (NTP does far better).
/// The same race without skew, at a second boundary (the issuer read the user before the
/// change and mints after it, before its feed applied the revocation), is closed: on a
/// shared store, issuers read the user again after minting (`accounts::sessions::
/// mint_stable`). A lock or logout is not affected (they also revoke by session id).
#[tokio::test]
#[ignore = "known gap: user-wide cutoffs and clock skew between replicas; see the doc comment"]
async fn a_role_change_covers_tokens_minted_by_a_replica_whose_clock_is_ahead() {
    let Some(cluster) = Cluster::new(ROUTES, &[]).await else {
        return;
    };
    let a = cluster.replica().await;
    let url = cluster.schema.url("");
    let mut env = store_env(&url);
    env.extend(cluster.env.iter().cloned());
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let ahead = Gatehouse::launch_replica(
        Setup {
            env: &env,
            ..Setup::new(cluster.upstream, ROUTES)
        },
        Arc::new(AtomicU64::new(T0 + 1)),
    )
    .await;
    let admin = a.token("root", &["admin"]);
    let user = a.register("sk@example.com").await;
    let id = user["user"]["id"].as_str().unwrap().to_string();
    let (reader, _) = ahead.session("sk@example.com", PASSWORD).await;
    a.json(
        Method::PATCH,
        &format!("/auth/admin/users/{id}"),
        Some(&admin),
        json!({"roles": ["creator"]}),
    )
    .await
    .expect(200);
    until("A refuses the token minted before the role change", || {
        refused(&a, &reader)
    })
    .await;
    until("the replica ahead refuses it too", || {
        refused(&ahead, &reader)
    })
    .await;
}
