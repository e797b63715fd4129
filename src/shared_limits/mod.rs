//! Limits that every replica shares: the `login`, `register`, `refresh` and `forgot_password`
//! rate-limit classes, and cooldowns (the forgot-password one per address). With
//! `rate_limits.backend = "redis"` they are counted once, in Redis, so that N replicas do not
//! give a client N budgets; with `local` (the default) they are counted in this process,
//! exactly as [`crate::ratelimit`] and [`crate::cooldown`] do on their own.
//!
//! The proxy class and per-route limits stay per replica, in [`crate::ratelimit`] tables:
//! they run on every proxied request, whose path must not wait on the network, and they
//! protect the upstream's capacity, which grows with the replicas anyway. The auth classes
//! guard passwords and mailboxes, whose budget must not grow with them.
//!
//! # The same answer as the local limiter
//!
//! The Redis script runs GCRA with the class's local limiter's own constants and returns the
//! backlog it met; the outcome is computed from that backlog by `RateLimiter::verdict`,
//! the local limiter's own code. So a 429 decided in Redis carries the same `Retry-After` and
//! `RateLimit-*` values a local one would, and a fallback changes who counts, never how.
//! Client keys are [`crate::client_ip::rate_key`], as for the local limiter. Key layout and
//! scripts: the `redis` submodule.
//!
//! # When Redis fails
//!
//! An auth request never waits on Redis for longer than `rate_limits.redis_timeout`. A call
//! that fails or times out is counted locally instead, in
//! `gatehouse_shared_limit_fallbacks_total{class, reason}`, and sets
//! `gatehouse_shared_limit_redis_up` to 0. Then:
//!
//! - **Requests stop waiting.** For a second after a failure every call counts locally at
//!   once (`reason="down"`); then one call probes Redis while the others still go local,
//!   until a probe succeeds (sharing resumes within about two seconds of Redis answering
//!   again). A dead Redis costs one request's timeout per second, not every request's; one
//!   atomic word decides, with no lock.
//! - **The log says so, without flooding.** A warning when Redis stops answering, then at
//!   most one every 30 seconds with the number of fallbacks since; an info line when it
//!   answers again.
//! - **Local counting continues from history, not from zero.** The local limiters count
//!   every request, also while Redis decides, so a fallback starts from this replica's own
//!   record of each client: an outage can at worst multiply a client's budget by the number
//!   of replicas, and a client this replica refused a moment ago is still refused.
//!   Cooldowns started in Redis are remembered locally the same way.
//! - **Reconnecting is the connection manager's.** It re-establishes the connection after
//!   I/O errors; `Redis::replace_connection` covers the one case it does not (a
//!   command never answered).
//!
//! Nothing here touches Redis before the first call, and building a [`SharedLimits`] needs
//! no runtime, so the offline commands can build an app without Redis.

pub(crate) mod redis;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ::redis::RedisResult;
use ::redis::aio::ConnectionManager;
use prometheus::{IntCounterVec, IntGauge};
use tokio::time::Instant;

use crate::config::{RateLimitBackend, RateLimitConfig};
use crate::cooldown::Cooldowns;
use crate::metrics::Metrics;
use crate::ratelimit::{Outcome, Rate, RateLimiter};

/// After a failure, how long calls count locally without trying Redis; then one call probes
/// it. Short enough that sharing resumes within a second of Redis coming back, long enough
/// that a dead Redis costs a request's timeout only once a second.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// While Redis stays down, the least time between two warnings; the fallback count says
/// what happened in between. A dead Redis must not drown the rest of the log.
const WARN_INTERVAL: Duration = Duration::from_secs(30);
/// The `class` label of cooldown calls in the fallback metric.
const COOLDOWN_CLASS: &str = "cooldown";

/// The rate-limit classes that are shared across replicas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthClass {
    Login,
    Register,
    Refresh,
    ForgotPassword,
    /// Asking for a new email-verification link: its own budget, so a user's own resends
    /// and anyone's forgot-password requests from the same address do not starve each other.
    VerifyEmailResend,
}

impl AuthClass {
    pub const ALL: [AuthClass; 5] = [
        AuthClass::Login,
        AuthClass::Register,
        AuthClass::Refresh,
        AuthClass::ForgotPassword,
        AuthClass::VerifyEmailResend,
    ];

    /// The class's name: its `rate_limits` key, its metric label and its Redis key part.
    pub fn label(self) -> &'static str {
        match self {
            AuthClass::Login => "login",
            AuthClass::Register => "register",
            AuthClass::Refresh => "refresh",
            AuthClass::ForgotPassword => "forgot_password",
            AuthClass::VerifyEmailResend => "verify_email_resend",
        }
    }

    fn rate(self, config: &RateLimitConfig) -> Option<Rate> {
        match self {
            AuthClass::Login => config.login,
            AuthClass::Register => config.register,
            AuthClass::Refresh => config.refresh,
            AuthClass::ForgotPassword => config.forgot_password,
            AuthClass::VerifyEmailResend => config.verify_email_resend,
        }
    }
}

/// The auth rate-limit classes, counted across replicas when Redis is configured.
pub struct SharedLimits {
    /// Indexed like [`AuthClass::ALL`]; `None` where the class is off. Always counted, see
    /// the module doc.
    local: [Option<Arc<RateLimiter>>; 5],
    /// `None` with the local backend.
    shared: Option<Arc<Shared>>,
}

impl SharedLimits {
    /// The limits `config` asks for. Does no IO and needs no runtime: Redis is reached on
    /// the first call. Fails only on a Redis URL the config check would have refused.
    pub fn new(config: &RateLimitConfig, metrics: &Metrics) -> Result<SharedLimits, String> {
        let shared = match &config.backend {
            RateLimitBackend::Local => None,
            RateLimitBackend::Redis { url } => Some(Arc::new(Shared {
                redis: redis::Redis::new(url.expose(), &config.redis_prefix)?,
                timeout: config.redis_timeout,
                health: Health::new(),
                fallbacks: metrics.shared_limit_fallbacks.clone(),
                up: metrics.shared_limit_redis_up.clone(),
            })),
        };
        Ok(SharedLimits {
            local: AuthClass::ALL.map(|class| {
                class
                    .rate(config)
                    .map(|rate| Arc::new(RateLimiter::new(rate, config.capacity)))
            }),
            shared,
        })
    }

    /// The limits `config` asks for after a reload from `running`: a class whose rate and
    /// `capacity` did not change keeps its local limiter (clients keep their budgets), a
    /// changed one starts fresh. The Redis connection is kept: `backend`, `redis_url`,
    /// `redis_prefix` and `redis_timeout` need a restart.
    pub fn reconfigured(
        &self,
        config: &RateLimitConfig,
        running: &RateLimitConfig,
    ) -> SharedLimits {
        let same_capacity = config.capacity == running.capacity;
        let mut local = self.local.clone();
        for (slot, class) in local.iter_mut().zip(AuthClass::ALL) {
            let rate = class.rate(config);
            if !(same_capacity && rate == class.rate(running)) {
                *slot = rate.map(|rate| Arc::new(RateLimiter::new(rate, config.capacity)));
            }
        }
        SharedLimits {
            local,
            shared: self.shared.clone(),
        }
    }

    /// Whether the limits are counted in Redis (`rate_limits.backend = "redis"`).
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// Cooldowns of `period` on the same backend (and the same Redis connection).
    pub fn cooldowns(&self, period: Duration) -> SharedCooldowns {
        SharedCooldowns {
            local: Cooldowns::new(period),
            period_ms: period.as_secs() * 1_000,
            shared: self.shared.clone(),
        }
    }

    /// Reaches Redis once, so that the start-up log says whether it answers and the
    /// `redis_up` gauge is right from the first scrape. `true` when it answered (and always
    /// with the local backend). Never a reason not to start: the limits fall back.
    pub async fn connect(&self) -> bool {
        let Some(shared) = &self.shared else {
            return true;
        };
        let redis = &shared.redis;
        match shared.call(|conn| redis.ping(conn)).await {
            Ok(()) => {
                shared.answered();
                tracing::info!("Redis answers: auth rate limits and cooldowns are shared");
                true
            }
            Err(failure) => {
                shared.failed(&failure);
                false
            }
        }
    }

    /// Counts one request by `key` (a [`crate::client_ip::rate_key`]) in `class`; `None`
    /// when the class is off (`"0"`). Waits at most `rate_limits.redis_timeout`.
    pub async fn check(&self, class: AuthClass, key: u128) -> Option<Outcome> {
        let local = self.local[class as usize].as_ref()?;
        let here = local.check(key, Instant::now());
        let Some(shared) = &self.shared else {
            return Some(here);
        };
        let redis = &shared.redis;
        let ticks = local.gcra_ticks();
        let backlog = shared
            .run(class.label(), |conn| {
                redis.gcra(conn, class.label(), key, ticks)
            })
            .await;
        Some(backlog.map_or(here, |backlog| local.verdict(backlog).0))
    }
}

impl fmt::Debug for SharedLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedLimits")
            .field("shared", &self.is_shared())
            .field("local", &self.local)
            .finish()
    }
}

/// Cooldowns ("at most once per period for this key") counted across replicas when Redis
/// is configured; the shared counterpart of [`Cooldowns`], with the same answers.
pub struct SharedCooldowns {
    /// Also told about cooldowns that Redis started, see the module doc.
    local: Cooldowns,
    /// Whole seconds, as the local cooldowns count them; 0 turns cooldowns off.
    period_ms: u64,
    shared: Option<Arc<Shared>>,
}

impl SharedCooldowns {
    /// Starts a cooldown for `key` unless one is running: `Ok(())` if the caller may go on,
    /// `Err(seconds left)` (at least 1) if not. `now` is the app clock, which the local
    /// cooldowns use; Redis uses its own. Waits at most `rate_limits.redis_timeout`.
    pub async fn begin(&self, key: &str, now: u64) -> Result<(), u64> {
        if self.period_ms == 0 {
            return Ok(());
        }
        let Some(shared) = &self.shared else {
            return self.local.begin(key, now);
        };
        let redis = &shared.redis;
        let started = shared
            .run(COOLDOWN_CLASS, |conn| {
                redis.cooldown_begin(conn, key, self.period_ms)
            })
            .await;
        match started {
            Some(None) => {
                // Remembered here too, for a fallback; a local cooldown already running
                // from an earlier outage changes nothing, since Redis decided.
                let _ = self.local.begin(key, now);
                Ok(())
            }
            Some(Some(left_ms)) => Err(left_ms.div_ceil(1_000).max(1)),
            None => self.local.begin(key, now),
        }
    }

    /// Forgets `key`'s cooldown: the work it guarded did not happen after all. If Redis
    /// does not answer, its copy runs out by itself at the end of the period.
    pub async fn cancel(&self, key: &str) {
        self.local.cancel(key);
        if let Some(shared) = &self.shared {
            let redis = &shared.redis;
            let _ = shared
                .run(COOLDOWN_CLASS, |conn| redis.cooldown_cancel(conn, key))
                .await;
        }
    }
}

/// The Redis backend with its health, shared by the limits and the cooldowns.
struct Shared {
    redis: redis::Redis,
    timeout: Duration,
    health: Health,
    fallbacks: IntCounterVec,
    up: IntGauge,
}

/// Why a call was counted locally: the `reason` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reason {
    /// Redis answered with an error, or the connection failed.
    Error,
    /// Redis did not answer within `redis_timeout`.
    Timeout,
    /// Redis failed moments ago; this call did not try it.
    Down,
}

impl Reason {
    fn label(self) -> &'static str {
        match self {
            Reason::Error => "error",
            Reason::Timeout => "timeout",
            Reason::Down => "down",
        }
    }
}

/// A call Redis did not serve, and what to log about it.
struct Failure {
    reason: Reason,
    detail: String,
}

impl Shared {
    /// Runs `op` on Redis, unless Redis failed moments ago; `None` means "count locally",
    /// and has been counted (under `class`) and logged.
    async fn run<T, F, Fut>(&self, class: &'static str, op: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        if !self.health.may_try(self.health.now_ms()) {
            self.count(class, Reason::Down);
            return None;
        }
        match self.call(op).await {
            Ok(value) => {
                self.answered();
                Some(value)
            }
            Err(failure) => {
                self.failed(&failure);
                self.count(class, failure.reason);
                None
            }
        }
    }

    /// One bounded call to Redis.
    async fn call<T, F, Fut>(&self, op: F) -> Result<T, Failure>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let conn = self.redis.connection().map_err(|e| Failure {
            reason: Reason::Error,
            detail: e.to_string(),
        })?;
        match tokio::time::timeout(self.timeout, op(conn)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                // The manager reconnects after I/O errors itself; anything else (a replica
                // that turned read-only after a failover, a refused AUTH) needs a fresh
                // connection to get better.
                if !e.is_io_error() {
                    self.redis.replace_connection();
                }
                Err(Failure {
                    reason: Reason::Error,
                    detail: e.to_string(),
                })
            }
            Err(_) => {
                self.redis.replace_connection();
                Err(Failure {
                    reason: Reason::Timeout,
                    detail: format!("no answer within {:?}", self.timeout),
                })
            }
        }
    }

    fn count(&self, class: &str, reason: Reason) {
        self.fallbacks
            .with_label_values(&[class, reason.label()])
            .inc();
        self.health.unreported.fetch_add(1, Ordering::Relaxed);
    }

    /// Redis answered: sharing is on (again).
    fn answered(&self) {
        self.up.set(1);
        if self.health.recovered() {
            let fallbacks = self.health.unreported.swap(0, Ordering::Relaxed);
            tracing::info!(
                fallbacks,
                "Redis answers again: auth rate limits and cooldowns are shared across replicas again"
            );
        }
    }

    /// Redis failed: count locally for a while, and say so unless it was said just now.
    fn failed(&self, failure: &Failure) {
        self.up.set(0);
        let now = self.health.now_ms();
        let newly_down = self.health.failed(now);
        if !self.health.warning_due(now, newly_down) {
            return;
        }
        let fallbacks = self.health.unreported.swap(0, Ordering::Relaxed);
        if newly_down {
            tracing::warn!(
                reason = failure.reason.label(),
                error = %failure.detail,
                "Redis does not answer: auth rate limits and cooldowns are counted per replica until it does"
            );
        } else {
            tracing::warn!(
                reason = failure.reason.label(),
                error = %failure.detail,
                fallbacks,
                "Redis still does not answer: auth rate limits and cooldowns are counted per replica"
            );
        }
    }
}

/// Whether Redis is worth trying, and when the log last said it was not. Times are
/// milliseconds since `epoch`, passed in so the tests can drive them.
struct Health {
    epoch: std::time::Instant,
    /// 0 while Redis answers. Otherwise the time from which one call may probe it; the call
    /// that claims the probe pushes it a probe interval further, so the others keep going
    /// local meanwhile.
    retry_at: AtomicU64,
    /// When the last warning was written, plus one (0: none since Redis last answered).
    last_warning: AtomicU64,
    /// Fallbacks since the last log line.
    unreported: AtomicU64,
}

impl Health {
    fn new() -> Health {
        Health {
            epoch: std::time::Instant::now(),
            retry_at: AtomicU64::new(0),
            last_warning: AtomicU64::new(0),
            unreported: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        // u64 milliseconds outlast the process by far.
        self.epoch.elapsed().as_millis() as u64
    }

    /// Whether a call at `now` should try Redis.
    fn may_try(&self, now: u64) -> bool {
        let at = self.retry_at.load(Ordering::Acquire);
        at == 0
            || (now >= at
                && self
                    .retry_at
                    .compare_exchange(at, probe_after(now), Ordering::AcqRel, Ordering::Acquire)
                    .is_ok())
    }

    /// Records a failure at `now`; true when Redis had been answering until then.
    fn failed(&self, now: u64) -> bool {
        self.retry_at.swap(probe_after(now), Ordering::AcqRel) == 0
    }

    /// Records an answer; true when Redis had been failing until then.
    fn recovered(&self) -> bool {
        // A plain load first: while Redis is healthy, calls do not write a shared word.
        if self.retry_at.load(Ordering::Acquire) == 0 {
            return false;
        }
        let was_down = self.retry_at.swap(0, Ordering::AcqRel) != 0;
        if was_down {
            self.last_warning.store(0, Ordering::Relaxed);
        }
        was_down
    }

    /// Whether a warning should be written at `now`; claims it, so one caller writes it.
    fn warning_due(&self, now: u64, newly_down: bool) -> bool {
        let last = self.last_warning.load(Ordering::Relaxed);
        // Saturating: another thread may have claimed a warning with a later `now`.
        let due = newly_down
            || last == 0
            || (now + 1).saturating_sub(last) >= WARN_INTERVAL.as_millis() as u64;
        due && self
            .last_warning
            .compare_exchange(last, now + 1, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }
}

/// The next probe time after a failure or a claimed probe at `now`; never 0, which means
/// healthy.
fn probe_after(now: u64) -> u64 {
    now + PROBE_INTERVAL.as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, ConfigErrors};
    use crate::ratelimit::parse_rate;

    const BASE: &str = r#"
[upstream]
url = "http://127.0.0.1:3000"
[tokens]
secret = "0123456789abcdef0123456789abcdef"
"#;

    fn load(rate_limits: &str, env: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
        let text = format!("{BASE}\n[rate_limits]\n{rate_limits}");
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Config::from_toml(&text, env)
    }

    fn errors(rate_limits: &str, env: &[(&str, &str)]) -> Vec<String> {
        match load(rate_limits, env) {
            Ok(_) => Vec::new(),
            Err(errors) => errors.0.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn the_backend_is_local_unless_redis_is_asked_for() {
        let config = load("", &[]).unwrap();
        let limits = &config.rate_limits;
        assert_eq!(limits.backend, RateLimitBackend::Local);
        assert_eq!(limits.redis_prefix, "gatehouse:");
        assert_eq!(limits.redis_timeout, Duration::from_millis(100));

        let config = load(
            "backend = \"redis\"\nredis_prefix = \"gh1:\"\nredis_timeout = \"50ms\"",
            &[(
                "GATEHOUSE_RATE_LIMITS_REDIS_URL",
                " redis://:pw@redis:6379/2 ",
            )],
        )
        .unwrap();
        let limits = &config.rate_limits;
        assert_eq!(
            limits.backend,
            RateLimitBackend::Redis {
                url: "redis://:pw@redis:6379/2".into()
            }
        );
        assert_eq!(limits.redis_prefix, "gh1:");
        assert_eq!(limits.redis_timeout, Duration::from_millis(50));
        assert!(!format!("{config:?}").contains(":pw@"));
    }

    #[test]
    fn redis_settings_are_checked_with_clear_errors() {
        fn check(rate_limits: &str, env: &[(&str, &str)], expect: &[&str]) {
            let got = errors(rate_limits, env);
            assert_eq!(got.len(), expect.len(), "{rate_limits}: {got:#?}");
            for (got, want) in got.iter().zip(expect) {
                assert!(got.contains(want), "{rate_limits}: {got:?} lacks {want:?}");
                assert!(!got.contains("hunter2"), "a password leaked: {got:?}");
            }
        }
        check(
            "backend = \"redis\"",
            &[],
            &["rate_limits.redis_url: is required when backend = \"redis\""],
        );
        check(
            "backend = \"memcached\"",
            &[],
            &["rate_limits.backend: \"memcached\" is not local or redis"],
        );
        check(
            "backend = \"redis\"\nredis_url = \"http://:hunter2@redis:6379\"",
            &[],
            &["rate_limits.redis_url: must start with redis:// or rediss://"],
        );
        check(
            "",
            &[("GATEHOUSE_RATE_LIMITS_REDIS_URL", "redis://:hunter2@")],
            &["GATEHOUSE_RATE_LIMITS_REDIS_URL (rate_limits.redis_url): is not a valid Redis URL"],
        );
        check(
            "redis_prefix = \"\"\nredis_timeout = \"2s\"",
            &[],
            &[
                "rate_limits.redis_prefix: must not be empty",
                "is out of range: must be between 1ms and 1s",
            ],
        );
        check(
            "redis_prefix = \"a b\"\nredis_timeout = \"0\"",
            &[],
            &[
                "rate_limits.redis_prefix: must not contain spaces",
                "is out of range: must be between 1ms and 1s",
            ],
        );
    }

    fn metrics() -> Metrics {
        Metrics::new().unwrap()
    }

    #[tokio::test]
    async fn the_local_backend_answers_as_the_local_limiter() {
        let config = load("login = \"2/1m\"\nrefresh = \"0\"", &[]).unwrap();
        let limits = SharedLimits::new(&config.rate_limits, &metrics()).unwrap();
        assert!(!limits.is_shared());
        assert!(limits.connect().await);
        let reference = RateLimiter::new(parse_rate("2/1m").unwrap().unwrap(), 64);
        let now = Instant::now();
        for _ in 0..3 {
            let got = limits.check(AuthClass::Login, 7).await.unwrap();
            let want = reference.check(7, now);
            // Allowed/Limited, limit and remaining are exact; the seconds may differ by one
            // if a second boundary passes between the two checks.
            match (got, want) {
                (
                    Outcome::Allowed {
                        limit, remaining, ..
                    },
                    Outcome::Allowed {
                        limit: l,
                        remaining: r,
                        ..
                    },
                ) => assert_eq!((limit, remaining), (l, r)),
                (Outcome::Limited { limit, .. }, Outcome::Limited { limit: l, .. }) => {
                    assert_eq!(limit, l)
                }
                _ => panic!("{got:?} vs {want:?}"),
            }
        }
        assert_eq!(limits.check(AuthClass::Refresh, 7).await, None);
        // Another class has its own budget.
        assert!(
            limits
                .check(AuthClass::Register, 7)
                .await
                .unwrap()
                .is_allowed()
        );
    }

    #[tokio::test]
    async fn local_cooldowns_answer_as_the_local_cooldowns() {
        let config = load("", &[]).unwrap();
        let limits = SharedLimits::new(&config.rate_limits, &metrics()).unwrap();
        let cooldowns = limits.cooldowns(Duration::from_secs(120));
        assert_eq!(cooldowns.begin("r:a", 1000).await, Ok(()));
        assert_eq!(cooldowns.begin("r:a", 1001).await, Err(119));
        assert_eq!(cooldowns.begin("r:b", 1001).await, Ok(()));
        cooldowns.cancel("r:a").await;
        assert_eq!(cooldowns.begin("r:a", 1002).await, Ok(()));
        let off = limits.cooldowns(Duration::ZERO);
        assert_eq!(off.begin("r:a", 1).await, Ok(()));
        assert_eq!(off.begin("r:a", 1).await, Ok(()));
    }

    #[test]
    fn building_needs_no_runtime_and_no_redis() {
        // Outside any runtime, pointing at nothing: construction must not connect.
        let config = load(
            "backend = \"redis\"\nredis_url = \"redis://127.0.0.1:1\"",
            &[],
        )
        .unwrap();
        let limits = SharedLimits::new(&config.rate_limits, &metrics()).unwrap();
        assert!(limits.is_shared());
        let _cooldowns = limits.cooldowns(Duration::from_secs(60));
    }

    #[test]
    fn calls_can_run_on_any_worker() {
        // The handlers run on a multi-threaded runtime: their futures must be Send.
        fn send<T: Send>(_: &T) {}
        let config = load(
            "backend = \"redis\"\nredis_url = \"redis://127.0.0.1:1\"",
            &[],
        )
        .unwrap();
        let limits = SharedLimits::new(&config.rate_limits, &metrics()).unwrap();
        let cooldowns = limits.cooldowns(Duration::from_secs(60));
        send(&limits.check(AuthClass::Login, 1));
        send(&limits.connect());
        send(&cooldowns.begin("r:a", 1));
        send(&cooldowns.cancel("r:a"));
        fn shared<T: Send + Sync>() {}
        shared::<SharedLimits>();
        shared::<SharedCooldowns>();
    }

    #[test]
    fn a_failure_sends_calls_local_then_lets_one_probe_through() {
        let health = Health::new();
        let probe = PROBE_INTERVAL.as_millis() as u64;
        assert!(health.may_try(0) && health.may_try(5));
        assert!(health.failed(10), "the first failure is news");
        assert!(!health.failed(11), "the second is not");
        // Until the probe time, nobody tries.
        assert!(!health.may_try(12));
        assert!(!health.may_try(11 + probe - 1));
        // Then exactly one caller gets the probe; the others keep going local.
        assert!(health.may_try(11 + probe));
        assert!(!health.may_try(11 + probe));
        assert!(!health.may_try(12 + probe));
        // The probe failed: wait again.
        assert!(!health.failed(20 + probe));
        assert!(!health.may_try(20 + 2 * probe - 1));
        assert!(health.may_try(20 + 2 * probe));
        // The probe succeeded: everyone tries again, and the recovery is news once.
        assert!(health.recovered());
        assert!(!health.recovered());
        assert!(health.may_try(21 + 2 * probe) && health.may_try(22 + 2 * probe));
    }

    #[test]
    fn warnings_are_spaced_out_while_redis_stays_down() {
        let health = Health::new();
        let interval = WARN_INTERVAL.as_millis() as u64;
        assert!(health.warning_due(100, true), "going down is always said");
        assert!(!health.warning_due(101, false));
        assert!(!health.warning_due(100 + interval - 1, false));
        assert!(health.warning_due(100 + interval, false));
        assert!(!health.warning_due(100 + interval, false), "claimed once");
        // After a recovery, the next outage is said at once.
        health.failed(200 + interval);
        assert!(health.recovered());
        assert!(health.warning_due(201 + interval, false));
    }
}
