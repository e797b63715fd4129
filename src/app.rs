//! The shared state of a running gatehouse: one [`App`] behind an `Arc`, built once at start
//! from a validated [`Config`] and read without locks by every request.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use http::HeaderValue;

use crate::config::{Config, RateLimitConfig};
use crate::metrics::Metrics;
use crate::proxy::Upstream;
use crate::ratelimit::{Rate, RateLimiter};
use crate::revocation::Revocations;
use crate::token::{TokenSettings, Tokens};

/// Unix time for token claims, lockouts and expiries. Injected so tests can move it without
/// sleeping: the manual clock is an atomic that tests advance.
#[derive(Clone)]
pub enum Clock {
    System,
    Manual(Arc<AtomicU64>),
}

impl Clock {
    pub fn manual(start_unix: u64) -> (Clock, Arc<AtomicU64>) {
        let now = Arc::new(AtomicU64::new(start_unix));
        (Clock::Manual(now.clone()), now)
    }

    /// Seconds since the Unix epoch.
    pub fn now(&self) -> u64 {
        match self {
            Clock::System => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            Clock::Manual(now) => now.load(Ordering::Relaxed),
        }
    }
}

/// Request ids for requests that arrive without a usable one: a random per-process prefix
/// and a counter, unique without a syscall or an RNG call per request.
pub struct RequestIds {
    prefix: u64,
    counter: AtomicU64,
}

impl RequestIds {
    pub fn new() -> RequestIds {
        let mut seed = [0u8; 8];
        // A failed RNG only makes ids predictable across restarts, which is harmless for a
        // correlation id; it must not stop the server.
        let _ = getrandom::fill(&mut seed);
        RequestIds {
            prefix: u64::from_le_bytes(seed),
            counter: AtomicU64::new(0),
        }
    }

    pub fn next(&self) -> HeaderValue {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let id = format!("{:016x}{:08x}", self.prefix, n);
        // Hex digits are always a valid header value.
        HeaderValue::from_str(&id).unwrap_or(HeaderValue::from_static("invalid"))
    }

    /// Accepts a client's id when it is short and made of safe characters, so ids from an
    /// edge proxy correlate across hops but cannot inject into logs.
    pub fn accept(value: &HeaderValue) -> bool {
        let bytes = value.as_bytes();
        !bytes.is_empty()
            && bytes.len() <= 128
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
    }
}

impl Default for RequestIds {
    fn default() -> Self {
        RequestIds::new()
    }
}

/// One limiter per rate-limit class, `None` where the class is off.
pub struct Limits {
    pub login: Option<RateLimiter>,
    pub register: Option<RateLimiter>,
    pub refresh: Option<RateLimiter>,
    pub forgot_password: Option<RateLimiter>,
    pub proxy: Option<RateLimiter>,
    /// Indexed like the policy's routes.
    pub routes: Vec<Option<RateLimiter>>,
}

impl Limits {
    pub fn new(config: &RateLimitConfig) -> Limits {
        let make = |rate: &Option<Rate>| rate.map(|r| RateLimiter::new(r, config.capacity));
        Limits {
            login: make(&config.login),
            register: make(&config.register),
            refresh: make(&config.refresh),
            forgot_password: make(&config.forgot_password),
            proxy: make(&config.proxy),
            routes: config.routes.iter().map(make).collect(),
        }
    }
}

/// Everything a request needs, built once.
pub struct App {
    pub config: Config,
    pub tokens: Tokens,
    pub revocations: Revocations,
    pub metrics: Metrics,
    pub upstream: Upstream,
    pub limits: Limits,
    pub clock: Clock,
    pub request_ids: RequestIds,
    shutting_down: AtomicBool,
}

impl App {
    /// Builds the shared state. Fails only on start-up problems (metrics registry).
    pub fn new(config: Config, clock: Clock) -> Result<App, String> {
        // Two rules may share a glob (e.g. writes for creators, reads for everyone); their
        // metric labels get the rule index so the series stay apart.
        let mut rule_labels: Vec<String> = Vec::with_capacity(config.policy.len());
        for i in 0..config.policy.len() {
            let glob = config.policy.rule_label(Some(i));
            if rule_labels.iter().any(|l| l == glob) {
                rule_labels.push(format!("{glob}#{i}"));
            } else {
                rule_labels.push(glob.to_string());
            }
        }
        let metrics = Metrics::new(&rule_labels).map_err(|e| format!("metrics: {e}"))?;
        let tokens = Tokens::new(TokenSettings {
            secret: config.tokens.secret.clone(),
            issuer: config.tokens.issuer.clone(),
            audience: config.tokens.audience.clone(),
            access_ttl_secs: config.tokens.access_ttl.as_secs(),
            leeway_secs: config.tokens.leeway.as_secs(),
        });
        Ok(App {
            tokens,
            revocations: Revocations::new(),
            metrics,
            upstream: Upstream::new(&config),
            limits: Limits::new(&config.rate_limits),
            clock,
            request_ids: RequestIds::new(),
            shutting_down: AtomicBool::new(false),
            config,
        })
    }

    /// Builds the app for serving: opens the store and loads what the proxy path needs.
    pub async fn start(config: Config, clock: Clock) -> Result<App, String> {
        App::new(config, clock)
    }

    /// For `/readyz`: is the store usable?
    pub fn check_store(&self) -> Result<(), String> {
        Ok(())
    }

    /// Marks the app as draining: `/readyz` answers 503 so load balancers stop sending.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_unique_and_safe() {
        let ids = RequestIds::new();
        let a = ids.next();
        let b = ids.next();
        assert_ne!(a, b);
        assert!(RequestIds::accept(&a));
        assert!(!RequestIds::accept(&HeaderValue::from_static("a b")));
        assert!(!RequestIds::accept(&HeaderValue::from_static("x\"}")));
        assert!(!RequestIds::accept(
            &HeaderValue::from_str(&"a".repeat(129)).unwrap()
        ));
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let (clock, now) = Clock::manual(1_000);
        assert_eq!(clock.now(), 1_000);
        now.fetch_add(60, Ordering::Relaxed);
        assert_eq!(clock.now(), 1_060);
    }
}
