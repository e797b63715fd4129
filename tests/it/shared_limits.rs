//! Shared rate limits and cooldowns (`rate_limits.backend = "redis"`) against the machine's
//! real Redis at 127.0.0.1:6379, which CI provides: two `SharedLimits` built from one config
//! are two replicas. Fallbacks are driven with addresses on this machine: a closed port, a
//! listener that never answers, and a switchable front for the real Redis.
//!
//! Each test works under its own random key prefix and deletes its keys at the end (keys
//! left by a test that failed midway expire by themselves); nothing here flushes a database.
//! Tests that must be served by Redis give it a timeout far beyond the 1s the config allows,
//! so a stalled machine cannot turn them into fallbacks.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use gatehouse::client_ip::rate_key;
use gatehouse::config::{Config, RateLimitConfig};
use gatehouse::metrics::Metrics;
use gatehouse::ratelimit::Outcome;
use gatehouse::shared_limits::{AuthClass, SharedLimits};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use crate::harness::{SECRET, T0};

const REDIS: &str = "127.0.0.1:6379";
/// For tests that must be served by Redis: however loaded the machine, never a fallback.
const PATIENT: Duration = Duration::from_secs(10);
/// The longest a test waits for something that takes a few seconds at most.
const DEADLINE: Duration = Duration::from_secs(30);

/// A connection of the test's own to Redis, for looking at keys and cleaning up; fails the
/// test with a clear message when Redis is not there (CI always has it).
async fn redis() -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(format!("redis://{REDIS}/0")).expect("redis URL");
    let connecting = client.get_multiplexed_async_connection();
    match tokio::time::timeout(PATIENT, connecting).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => panic!(
            "these tests need Redis at {REDIS} (CI starts one; locally: redis-server --daemonize yes): {e}"
        ),
        Err(_) => panic!("Redis at {REDIS} did not answer within {PATIENT:?}"),
    }
}

/// A key prefix no other test or run shares.
fn unique_prefix() -> String {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("random bytes");
    format!(
        "gatehouse-test:{}:{:016x}:",
        std::process::id(),
        u64::from_le_bytes(bytes)
    )
}

/// Every key under `prefix`.
async fn keys(conn: &mut redis::aio::MultiplexedConnection, prefix: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, mut batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await
            .expect("SCAN");
        found.append(&mut batch);
        if next == 0 {
            return found;
        }
        cursor = next;
    }
}

/// Deletes the test's keys (and only those).
async fn clean_up(conn: &mut redis::aio::MultiplexedConnection, prefix: &str) {
    let found = keys(conn, prefix).await;
    if !found.is_empty() {
        redis::cmd("DEL")
            .arg(&found)
            .query_async::<()>(conn)
            .await
            .expect("DEL");
    }
}

/// The `[rate_limits]` of a config with the Redis backend at `url` under `prefix`.
fn config(url: &str, prefix: &str, rates: &str) -> RateLimitConfig {
    let text = format!(
        r#"
[upstream]
url = "http://127.0.0.1:9"
[tokens]
secret = "{SECRET}"
[rate_limits]
backend = "redis"
redis_url = "{url}"
redis_prefix = "{prefix}"
{rates}
"#
    );
    Config::from_toml(&text, Vec::new())
        .unwrap_or_else(|e| panic!("{e}"))
        .rate_limits
}

/// One replica: its limits and its own metrics registry.
struct Replica {
    limits: SharedLimits,
    metrics: Metrics,
}

fn replica(config: &RateLimitConfig) -> Replica {
    let metrics = Metrics::new().expect("metrics");
    let limits = SharedLimits::new(config, &metrics).expect("limits");
    Replica { limits, metrics }
}

impl Replica {
    async fn check(&self, class: AuthClass, key: u128) -> Outcome {
        self.limits
            .check(class, key)
            .await
            .expect("the class is on")
    }

    /// Fallbacks counted under `class`, all reasons together.
    fn fallbacks(&self, class: &str) -> u64 {
        ["error", "timeout", "down"]
            .iter()
            .map(|reason| {
                self.metrics
                    .shared_limit_fallbacks
                    .with_label_values(&[class, reason])
                    .get()
            })
            .sum()
    }

    fn redis_up(&self) -> i64 {
        self.metrics.shared_limit_redis_up.get()
    }
}

fn client(ip: &str) -> u128 {
    rate_key(ip.parse::<IpAddr>().expect("an address"))
}

/// `got` (from Redis) is the outcome `want` (from a local limiter) with the same headers:
/// the verdict, the limit and the remaining count exactly, the seconds up to `slack`, the
/// whole seconds the sequence took (0, i.e. exact, unless the machine stalled).
fn assert_same(got: Outcome, want: Outcome, slack: u64, what: &str) {
    let close = |a: u64, b: u64| a.abs_diff(b) <= slack;
    match (got, want) {
        (
            Outcome::Allowed {
                limit,
                remaining,
                reset_secs,
            },
            Outcome::Allowed {
                limit: l,
                remaining: r,
                reset_secs: s,
            },
        ) if (limit, remaining) == (l, r) && close(reset_secs, s) => {}
        (
            Outcome::Limited {
                limit,
                retry_after_secs,
                reset_secs,
            },
            Outcome::Limited {
                limit: l,
                retry_after_secs: a,
                reset_secs: s,
            },
        ) if limit == l && close(retry_after_secs, a) && close(reset_secs, s) => {}
        _ => panic!("{what}: Redis said {got:?}, the local limiter {want:?} (slack {slack}s)"),
    }
}

#[tokio::test]
async fn two_replicas_share_one_budget_with_the_headers_of_one_local_limiter() {
    let mut conn = redis().await;
    let prefix = unique_prefix();
    let url = format!("redis://{REDIS}/0");
    let mut shared = config(&url, &prefix, "login = \"3/1h\"\nregister = \"2/1m\"");
    shared.redis_timeout = PATIENT;
    let (a, b) = (replica(&shared), replica(&shared));
    assert!(a.limits.connect().await, "Redis at {REDIS} must answer");
    // The reference: the same rates counted by one process.
    let mut local = shared.clone();
    local.backend = gatehouse::config::RateLimitBackend::Local;
    let reference = replica(&local);

    let (alice, bob) = (client("198.51.100.7"), client("2001:db8:1:2::9"));
    let start = Instant::now();
    let mut seen = Vec::new();
    for (i, replica) in [&a, &b, &a, &b, &a].into_iter().enumerate() {
        let got = replica.check(AuthClass::Login, alice).await;
        let want = reference.check(AuthClass::Login, alice).await;
        seen.push((i, got, want));
    }
    let slack = start.elapsed().as_secs();
    for (i, got, want) in seen {
        assert_same(got, want, slack, &format!("login #{i}"));
    }
    // Three allowed in all, not three per replica: both are now refused.
    assert!(!a.check(AuthClass::Login, alice).await.is_allowed());
    assert!(!b.check(AuthClass::Login, alice).await.is_allowed());
    // Another client, and another class, have budgets of their own.
    assert!(b.check(AuthClass::Login, bob).await.is_allowed());
    assert!(a.check(AuthClass::Register, alice).await.is_allowed());
    assert!(b.check(AuthClass::Register, alice).await.is_allowed());
    assert!(!a.check(AuthClass::Register, alice).await.is_allowed());

    // Keys live under the prefix and vanish when the client's budget is full again.
    let key = format!("{prefix}rl:login:{alice:032x}");
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .expect("PTTL");
    assert!(ttl > 0 && ttl <= 3_600_000, "{key}: PTTL {ttl}");
    let mut found = keys(&mut conn, &prefix).await;
    found.sort();
    assert_eq!(found.len(), 3, "{found:?}");

    for replica in [&a, &b] {
        assert_eq!(
            replica.fallbacks("login") + replica.fallbacks("register"),
            0
        );
        assert_eq!(replica.redis_up(), 1);
    }
    clean_up(&mut conn, &prefix).await;
}

#[tokio::test]
async fn the_cooldown_is_shared_across_replicas() {
    let mut conn = redis().await;
    let prefix = unique_prefix();
    let mut shared = config(&format!("redis://{REDIS}/0"), &prefix, "");
    shared.redis_timeout = PATIENT;
    let (a, b) = (replica(&shared), replica(&shared));
    let period = Duration::from_secs(120);
    let (ca, cb) = (a.limits.cooldowns(period), b.limits.cooldowns(period));

    let (alice, bob) = ("r:alice@example.com", "r:bob@example.com");
    assert_eq!(ca.begin(alice, T0).await, Ok(()));
    match cb.begin(alice, T0).await {
        Err(left) if (1..=120).contains(&left) => {}
        other => panic!("the other replica must see the cooldown: {other:?}"),
    }
    assert_eq!(cb.begin(bob, T0).await, Ok(()));
    assert!(ca.begin(bob, T0).await.is_err());
    // A cancel on one replica ends it for all.
    cb.cancel(alice).await;
    assert_eq!(ca.begin(alice, T0).await, Ok(()));

    // Addresses are not stored in the clear, and the keys expire with the cooldown.
    let found = keys(&mut conn, &prefix).await;
    assert_eq!(found.len(), 2, "{found:?}");
    for key in &found {
        assert!(!key.contains("alice") && !key.contains("bob"), "{key}");
        let ttl: i64 = redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut conn)
            .await
            .expect("PTTL");
        assert!(ttl > 0 && ttl <= 120_000, "{key}: PTTL {ttl}");
    }
    assert_eq!(a.fallbacks("cooldown") + b.fallbacks("cooldown"), 0);
    clean_up(&mut conn, &prefix).await;
}

/// An address on this machine where nothing listens.
async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    drop(listener);
    addr
}

#[tokio::test]
async fn without_redis_each_replica_counts_on_its_own_and_says_so() {
    let dead = closed_port().await;
    let mut settings = config(
        &format!("redis://{dead}"),
        &unique_prefix(),
        "login = \"2/1h\"",
    );
    settings.redis_timeout = PATIENT;
    let (a, b) = (replica(&settings), replica(&settings));
    assert!(!a.limits.connect().await);
    let alice = client("198.51.100.7");
    // Per replica: each allows the whole budget, then refuses.
    for replica in [&a, &b] {
        let verdicts: Vec<bool> = [
            replica.check(AuthClass::Login, alice).await,
            replica.check(AuthClass::Login, alice).await,
            replica.check(AuthClass::Login, alice).await,
        ]
        .iter()
        .map(Outcome::is_allowed)
        .collect();
        assert_eq!(verdicts, [true, true, false]);
        assert_eq!(replica.redis_up(), 0);
    }
    // Every call was counted locally, and said so; the first one of b met the refusal.
    assert_eq!(a.fallbacks("login"), 3);
    assert_eq!(b.fallbacks("login"), 3);
    let errors = b
        .metrics
        .shared_limit_fallbacks
        .with_label_values(&["login", "error"])
        .get();
    assert!(
        errors >= 1,
        "b's first call must have met the refused connection"
    );
    let text = String::from_utf8(b.metrics.render()).expect("UTF-8");
    assert!(
        text.contains(r#"gatehouse_shared_limit_fallbacks_total{class="login",reason="error"}"#),
        "{text}"
    );
    assert!(text.contains("gatehouse_shared_limit_redis_up 0"), "{text}");

    // Cooldowns fall back the same way.
    let (ca, cb) = (
        a.limits.cooldowns(Duration::from_secs(120)),
        b.limits.cooldowns(Duration::from_secs(120)),
    );
    assert_eq!(ca.begin("r:alice@example.com", T0).await, Ok(()));
    assert_eq!(ca.begin("r:alice@example.com", T0 + 1).await, Err(119));
    assert_eq!(cb.begin("r:alice@example.com", T0).await, Ok(()));
    assert_eq!(a.fallbacks("cooldown"), 2);
    assert_eq!(b.fallbacks("cooldown"), 1);
}

/// A listener that accepts connections and never says a word: a hung Redis, or one behind
/// a network that drops packets.
async fn silent_listener() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    (addr, task)
}

#[tokio::test]
async fn a_redis_that_never_answers_costs_a_request_at_most_the_timeout() {
    let (addr, silent) = silent_listener().await;
    let settings = config(
        &format!("redis://{addr}"),
        &unique_prefix(),
        "login = \"2/1h\"\nredis_timeout = \"200ms\"",
    );
    let a = replica(&settings);
    let alice = client("198.51.100.7");

    let started = Instant::now();
    assert!(a.check(AuthClass::Login, alice).await.is_allowed());
    let waited = started.elapsed();
    // 200ms is the bound; the margin is for a loaded machine, not for Redis.
    assert!(waited < Duration::from_secs(5), "waited {waited:?}");
    assert_eq!(a.fallbacks("login"), 1);
    assert_eq!(a.redis_up(), 0);

    // Right after a failure, calls do not wait on Redis at all.
    assert!(a.check(AuthClass::Login, alice).await.is_allowed());
    assert!(!a.check(AuthClass::Login, alice).await.is_allowed());
    assert_eq!(a.fallbacks("login"), 3);
    let cooldowns = a.limits.cooldowns(Duration::from_secs(60));
    assert_eq!(cooldowns.begin("r:alice@example.com", T0).await, Ok(()));
    assert!(started.elapsed() < Duration::from_secs(10));
    silent.abort();
}

/// A front for the real Redis that hangs up on every connection while `up` is false, as a
/// restarting Redis would, and relays to it while `up` is true.
async fn switchable_redis() -> (SocketAddr, Arc<AtomicBool>, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let up = Arc::new(AtomicBool::new(false));
    let switch = up.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            if !switch.load(Ordering::SeqCst) {
                drop(inbound);
                continue;
            }
            tokio::spawn(async move {
                if let Ok(mut redis) = TcpStream::connect(REDIS).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut redis).await;
                }
            });
        }
    });
    (addr, up, task)
}

#[tokio::test]
async fn sharing_resumes_when_redis_comes_back() {
    let mut conn = redis().await;
    let prefix = unique_prefix();
    let (addr, up, front) = switchable_redis().await;
    let mut settings = config(&format!("redis://{addr}/0"), &prefix, "login = \"1000/1h\"");
    settings.redis_timeout = PATIENT;
    let a = replica(&settings);
    let alice = client("198.51.100.7");

    assert!(a.check(AuthClass::Login, alice).await.is_allowed());
    assert_eq!(a.fallbacks("login"), 1);
    assert_eq!(a.redis_up(), 0);
    assert!(keys(&mut conn, &prefix).await.is_empty());

    // Back up: within a few probe intervals a call is served by Redis again. The polling
    // waits for the probe interval (a second), not for a race to settle.
    up.store(true, Ordering::SeqCst);
    let started = Instant::now();
    while a.redis_up() != 1 {
        assert!(
            started.elapsed() < DEADLINE,
            "Redis was not used again within {DEADLINE:?} ({} fallbacks)",
            a.fallbacks("login")
        );
        assert!(a.check(AuthClass::Login, alice).await.is_allowed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = a.fallbacks("login");
    assert!(a.check(AuthClass::Login, alice).await.is_allowed());
    assert_eq!(a.fallbacks("login"), before, "served by Redis");
    let found = keys(&mut conn, &prefix).await;
    assert_eq!(found, [format!("{prefix}rl:login:{alice:032x}")]);
    front.abort();
    clean_up(&mut conn, &prefix).await;
}
