//! Other issuers' key sets (`[[issuers]]`, API.md §9): fetched at start, refreshed in the
//! background, kept while the issuer is down, and refetched once when a token names a key
//! the set does not have. The verification itself is `token::external`, which does no IO.
//!
//! Decisions, and why:
//!
//! - **No request waits on an issuer's network, but one.** Tokens are verified against the
//!   key set in memory (one `ArcSwap` load). The only wait is a token whose `kid` is not in
//!   the set: the issuer may have rotated keys, so it may start one refetch (at most one per
//!   [`REFETCH_EVERY_SECS`] per issuer; requests meanwhile join the fetch in flight rather
//!   than start another) and waits for it at most [`REFETCH_WAIT`]. Past that it is refused
//!   like any unknown `kid`; the fetch goes on and serves the next request.
//! - **Readiness does not depend on an issuer.** The first fetch is started with the server
//!   and nothing waits for it; until it lands, a token of that issuer is an unknown `kid`.
//! - **The last good set stays.** A fetch that fails, answers other than 200, is too large
//!   ([`MAX_DOCUMENT_BYTES`]), is not a JWK set or leaves no usable key never replaces the
//!   set in use; the next try backs off ([`BACKOFF_MIN_SECS`] doubling up to
//!   [`BACKOFF_MAX_SECS`]). A set with the same keys as the one in use is not swapped, so
//!   the verified-token cache survives routine refreshes.
//! - **Refreshes follow `Cache-Control: max-age`**, clamped to [`MIN_REFRESH_SECS`] ..
//!   [`MAX_REFRESH_SECS`] ([`DEFAULT_REFRESH_SECS`] without one), so a provider cannot make
//!   gatehouse poll it every second nor keep a key for a month. Due times are read from the
//!   app's clock (the manual one in tests), checked once a second.
//! - **Fetches go through hyper-util's client** with rustls and the Mozilla roots (the
//!   upstream's connector, `tls::upstream_connector`): `https://`, or `http://` to a
//!   loopback address only (checked by the config). Connecting has [`CONNECT_TIMEOUT`]; the
//!   whole exchange, body included, [`FETCH_TIMEOUT`]. Redirects are not followed.
//! - **A reload keeps what it can.** An entry whose settings (and `tokens.leeway`,
//!   `tokens.verify_cache`) did not change is the same [`Issuer`], keys, schedule and
//!   background task included; a changed or new one starts over with a fetch.
//! - **Discovery** reads `jwks_uri` from `{issuer}/.well-known/openid-configuration`, whose
//!   `issuer` must be the configured one exactly (OIDC Discovery §4.3), and remembers it
//!   until a fetch fails.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prometheus::{IntCounter, IntGauge};
use tokio::sync::watch;

use crate::clock::Clock;
use crate::config::{Config, IssuerConfig, IssuerKeys, fetchable_url};
use crate::metrics::Metrics;
use crate::token::external::{self, IssuerRules, KeySet, Refusal};
use crate::token::{Claims, TokenError};

/// A token with an unknown `kid` starts at most one refetch this often, per issuer.
pub const REFETCH_EVERY_SECS: u64 = 30;
/// How long a token with an unknown `kid` waits for the refetch.
pub const REFETCH_WAIT: Duration = Duration::from_secs(2);
/// Refresh bounds on `Cache-Control: max-age`.
pub const MIN_REFRESH_SECS: u64 = 60;
pub const MAX_REFRESH_SECS: u64 = 24 * 60 * 60;
/// The refresh interval of a key set served without `max-age`.
pub const DEFAULT_REFRESH_SECS: u64 = 5 * 60;
/// The first retry after a failed fetch; doubled on each failure after it.
pub const BACKOFF_MIN_SECS: u64 = 10;
/// The longest wait between retries while an issuer is failing.
pub const BACKOFF_MAX_SECS: u64 = 5 * 60;
/// Largest discovery or JWK set document read: real ones are a few KiB.
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the background task looks whether a refresh is due.
const TICK: Duration = Duration::from_secs(1);

type HttpClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// The issuers of one config generation.
#[derive(Default)]
pub struct Issuers {
    list: Vec<Arc<Issuer>>,
}

impl Issuers {
    /// The issuers `config` lists; on a reload, `running`'s are kept where their settings
    /// did not change (see the module doc).
    pub fn build(
        config: &Config,
        metrics: &Metrics,
        clock: &Clock,
        running: Option<&Issuers>,
    ) -> Result<Issuers, String> {
        let rules_of = |c: &IssuerConfig| IssuerRules {
            issuer: c.issuer.clone(),
            audiences: c.audiences.clone(),
            algorithms: c.algorithms.clone(),
            roles_claim: c.roles_claim.clone(),
            email_claim: c.email_claim.clone(),
            leeway_secs: config.tokens.leeway.as_secs(),
        };
        let cache_entries = config.tokens.verify_cache;
        let mut list = Vec::with_capacity(config.issuers.len());
        for entry in &config.issuers {
            let rules = rules_of(entry);
            let kept = running.and_then(|r| {
                r.list.iter().find(|i| {
                    i.config == *entry && i.rules == rules && i.cache_entries == cache_entries
                })
            });
            list.push(match kept {
                Some(issuer) => issuer.clone(),
                None => Arc::new(Issuer::new(
                    entry.clone(),
                    rules,
                    cache_entries,
                    metrics,
                    clock,
                )?),
            });
        }
        Ok(Issuers { list })
    }

    /// Whether no issuer is configured: the gate then never looks at a token's `iss`.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The issuer whose `issuer` is `iss`.
    pub fn find(&self, iss: &str) -> Option<&Arc<Issuer>> {
        self.list.iter().find(|i| i.config.issuer == iss)
    }

    /// The issuer named `name` (its metrics label).
    pub fn named(&self, name: &str) -> Option<&Arc<Issuer>> {
        self.list.iter().find(|i| i.config.name == name)
    }

    /// Starts the first fetch and the refresh task of every issuer not started yet. Called
    /// by `App::start` and after a reload swapped this generation in; a kept issuer is
    /// already running. Needs a Tokio runtime (without one, nothing starts).
    pub fn start(&self) {
        for issuer in &self.list {
            issuer.start();
        }
    }
}

/// One `[[issuers]]` entry at run time: its rules, its key set and its refresh schedule.
pub struct Issuer {
    config: IssuerConfig,
    rules: IssuerRules,
    cache_entries: usize,
    /// The key set in use; `None` until the first good fetch.
    keys: ArcSwapOption<KeySet>,
    client: HttpClient,
    clock: Clock,
    metrics: IssuerMetrics,
    schedule: Mutex<Schedule>,
    started: AtomicBool,
}

/// When to fetch, and the fetch in flight.
struct Schedule {
    /// The next background refresh, Unix seconds.
    next_due: u64,
    /// Failed fetches in a row, for the backoff.
    failures: u32,
    /// When a token with an unknown `kid` last started a refetch.
    last_refetch: Option<u64>,
    /// The fetch running now: turns `true` when it is done.
    in_flight: Option<watch::Receiver<bool>>,
    /// The `jwks_uri` discovery found, until a fetch fails.
    discovered: Option<String>,
}

/// The metric series of one issuer, resolved once.
struct IssuerMetrics {
    refresh_ok: IntCounter,
    refresh_error: IntCounter,
    refresh_invalid: IntCounter,
    keys: IntGauge,
    accepted: IntCounter,
    tokens: prometheus::IntCounterVec,
    name: String,
}

/// Why a fetch failed: its `result` label and a line for the log.
struct FetchError {
    result: &'static str,
    message: String,
}

impl FetchError {
    fn error(message: impl Into<String>) -> FetchError {
        FetchError {
            result: "error",
            message: message.into(),
        }
    }

    fn invalid(message: impl Into<String>) -> FetchError {
        FetchError {
            result: "invalid",
            message: message.into(),
        }
    }
}

impl Issuer {
    fn new(
        config: IssuerConfig,
        rules: IssuerRules,
        cache_entries: usize,
        metrics: &Metrics,
        clock: &Clock,
    ) -> Result<Issuer, String> {
        let mut tcp = HttpConnector::new();
        tcp.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let connector = crate::tls::upstream_connector(tcp, None).map_err(|e| e.to_string())?;
        // No pooled connections: fetches are minutes apart, and a kept-alive connection the
        // provider closed meanwhile would only turn the next fetch into an error.
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(connector);
        let name = config.name.as_str();
        let refresh = |result: &str| {
            metrics
                .issuer_jwks_refresh
                .with_label_values(&[name, result])
        };
        let metrics = IssuerMetrics {
            refresh_ok: refresh("ok"),
            refresh_error: refresh("error"),
            refresh_invalid: refresh("invalid"),
            keys: metrics.issuer_keys.with_label_values(&[name]),
            accepted: metrics.issuer_tokens.with_label_values(&[name, "accepted"]),
            tokens: metrics.issuer_tokens.clone(),
            name: name.to_string(),
        };
        metrics.keys.set(0);
        Ok(Issuer {
            config,
            rules,
            cache_entries,
            keys: ArcSwapOption::empty(),
            client,
            clock: clock.clone(),
            metrics,
            schedule: Mutex::new(Schedule {
                next_due: 0,
                failures: 0,
                last_refetch: None,
                in_flight: None,
                discovered: None,
            }),
            started: AtomicBool::new(false),
        })
    }

    /// Its name (the metrics label).
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Keys in the set in use (0 before the first good fetch).
    pub fn key_count(&self) -> usize {
        self.keys.load().as_ref().map_or(0, |k| k.len())
    }

    /// When the next background refresh is due (Unix seconds, the app's clock).
    pub fn next_refresh(&self) -> u64 {
        self.schedule().next_due
    }

    fn schedule(&self) -> std::sync::MutexGuard<'_, Schedule> {
        // A poisoned lock means a panic while it was held; the schedule's fields are each
        // written whole, so carrying on is safe.
        self.schedule.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Verifies a token whose `iss` is this issuer's (see the module doc for the one wait),
    /// and counts the outcome.
    pub async fn verify(self: &Arc<Self>, token: &str) -> Result<Arc<Claims>, TokenError> {
        let result = match self.try_verify(token) {
            Err(Refusal::UnknownKid) => self.refetch_and_verify(token).await,
            other => other,
        };
        let result = result.map_err(|refusal| match refusal {
            Refusal::Token(e) => e,
            Refusal::UnknownKid => TokenError::Invalid("kid"),
        });
        match &result {
            Ok(_) => self.metrics.accepted.inc(),
            Err(e) => self
                .metrics
                .tokens
                .with_label_values(&[self.metrics.name.as_str(), reason(*e)])
                .inc(),
        }
        result
    }

    /// The token against the key set in use; no set yet is an unknown `kid`.
    fn try_verify(&self, token: &str) -> Result<Arc<Claims>, Refusal> {
        match self.keys.load_full() {
            Some(keys) => external::verify(token, &self.rules, &keys, self.clock.now()),
            None => Err(Refusal::UnknownKid),
        }
    }

    /// A token named a key the set lacks: join the fetch in flight, or start one unless
    /// one started less than [`REFETCH_EVERY_SECS`] ago; wait for it at most
    /// [`REFETCH_WAIT`]; then try once more.
    async fn refetch_and_verify(self: &Arc<Self>, token: &str) -> Result<Arc<Claims>, Refusal> {
        let now = self.clock.now();
        let mut done = {
            let mut schedule = self.schedule();
            match &schedule.in_flight {
                Some(done) => done.clone(),
                None if schedule
                    .last_refetch
                    .is_some_and(|at| now < at.saturating_add(REFETCH_EVERY_SECS)) =>
                {
                    return Err(Refusal::UnknownKid);
                }
                None => {
                    schedule.last_refetch = Some(now);
                    self.begin_fetch(&mut schedule)
                }
            }
        };
        // Timing out only ends this request's wait; the fetch carries on.
        let _ = tokio::time::timeout(REFETCH_WAIT, done.wait_for(|finished| *finished)).await;
        self.try_verify(token)
    }

    /// Starts the first fetch now and the refresh task, once.
    fn start(self: &Arc<Self>) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.started.store(false, Ordering::Release);
            return;
        };
        let _enter = runtime.enter();
        self.begin_fetch(&mut self.schedule());
        runtime.spawn(refresh(Arc::downgrade(self)));
    }

    /// A fetch in a task of its own (a request that stops waiting does not cancel it),
    /// unless one is in flight; the receiver turns `true` when it is done.
    fn begin_fetch(self: &Arc<Self>, schedule: &mut Schedule) -> watch::Receiver<bool> {
        if let Some(done) = &schedule.in_flight {
            return done.clone();
        }
        let (finished, done) = watch::channel(false);
        schedule.in_flight = Some(done.clone());
        let issuer = self.clone();
        tokio::spawn(async move {
            issuer.fetch_round().await;
            issuer.schedule().in_flight = None;
            let _ = finished.send(true);
        });
        done
    }

    /// One fetch: the key set swapped in when it is good and new, the schedule moved on,
    /// the result counted and, when it failed, logged.
    async fn fetch_round(&self) {
        let result = tokio::time::timeout(FETCH_TIMEOUT, self.fetch())
            .await
            .unwrap_or_else(|_| Err(FetchError::error("timed out")));
        let now = self.clock.now();
        match result {
            Ok((set, max_age)) => {
                let unchanged = self
                    .keys
                    .load()
                    .as_ref()
                    .is_some_and(|running| running.same_keys(&set));
                if !unchanged {
                    let count = set.len();
                    self.keys.store(Some(Arc::new(set)));
                    self.metrics
                        .keys
                        .set(i64::try_from(count).unwrap_or(i64::MAX));
                    tracing::info!(issuer = %self.config.name, keys = count, "issuer keys loaded");
                }
                self.metrics.refresh_ok.inc();
                let mut schedule = self.schedule();
                schedule.failures = 0;
                schedule.next_due = now.saturating_add(refresh_after(max_age));
            }
            Err(e) => {
                match e.result {
                    "invalid" => self.metrics.refresh_invalid.inc(),
                    _ => self.metrics.refresh_error.inc(),
                }
                let mut schedule = self.schedule();
                schedule.failures = schedule.failures.saturating_add(1);
                schedule.next_due = now.saturating_add(backoff(schedule.failures));
                schedule.discovered = None;
                drop(schedule);
                tracing::warn!(
                    issuer = %self.config.name,
                    error = %e.message,
                    "issuer keys: fetch failed; the last good key set stays in use"
                );
            }
        }
    }

    /// The key set and its `max-age`, through discovery first when configured.
    async fn fetch(&self) -> Result<(KeySet, Option<u64>), FetchError> {
        let url = match &self.config.keys {
            IssuerKeys::Url(url) => url.clone(),
            IssuerKeys::Discovery => {
                let known = self.schedule().discovered.clone();
                match known {
                    Some(url) => url,
                    None => {
                        let url = self.discover().await?;
                        self.schedule().discovered = Some(url.clone());
                        url
                    }
                }
            }
        };
        let (body, max_age) = self.get(&url).await?;
        let set = KeySet::from_jwks(&body, &self.rules.algorithms, self.cache_entries)
            .map_err(|e| FetchError::invalid(format!("{url}: {e}")))?;
        Ok((set, max_age))
    }

    /// `jwks_uri` from the issuer's discovery document, whose `issuer` must be ours.
    async fn discover(&self) -> Result<String, FetchError> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.config.issuer.trim_end_matches('/')
        );
        let (body, _) = self.get(&url).await?;
        let doc: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| FetchError::invalid(format!("{url}: not JSON ({e})")))?;
        if doc.get("issuer").and_then(|i| i.as_str()) != Some(self.config.issuer.as_str()) {
            return Err(FetchError::invalid(format!(
                "{url}: its issuer is not {:?}",
                self.config.issuer
            )));
        }
        let jwks_uri = doc
            .get("jwks_uri")
            .and_then(|u| u.as_str())
            .ok_or_else(|| FetchError::invalid(format!("{url}: no jwks_uri")))?;
        fetchable_url(jwks_uri).map_err(|e| FetchError::invalid(format!("{url}: jwks_uri {e}")))?;
        Ok(jwks_uri.to_string())
    }

    /// A GET answered 200 with a body of at most [`MAX_DOCUMENT_BYTES`], and its
    /// `Cache-Control: max-age`.
    async fn get(&self, url: &str) -> Result<(Bytes, Option<u64>), FetchError> {
        let request = Request::get(url)
            .header(header::ACCEPT, "application/json")
            .header(
                header::USER_AGENT,
                concat!("gatehouse/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::new())
            .map_err(|e| FetchError::error(format!("{url}: {e}")))?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| FetchError::error(format!("{url}: {e}")))?;
        if response.status() != StatusCode::OK {
            return Err(FetchError::error(format!(
                "{url}: answered {}",
                response.status()
            )));
        }
        let max_age = response
            .headers()
            .get(header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(max_age);
        let body = Limited::new(response.into_body(), MAX_DOCUMENT_BYTES)
            .collect()
            .await
            .map_err(|e| FetchError::error(format!("{url}: body: {e}")))?
            .to_bytes();
        Ok((body, max_age))
    }
}

/// The background refresh of one issuer: once a tick, a fetch when one is due and none is
/// in flight. Ends when the issuer is dropped (removed or changed by a reload).
async fn refresh(issuer: Weak<Issuer>) {
    loop {
        tokio::time::sleep(TICK).await;
        let Some(issuer) = issuer.upgrade() else {
            return;
        };
        let done = {
            let mut schedule = issuer.schedule();
            if schedule.in_flight.is_none() && issuer.clock.now() >= schedule.next_due {
                Some(issuer.begin_fetch(&mut schedule))
            } else {
                None
            }
        };
        drop(issuer);
        if let Some(mut done) = done {
            let _ = done.wait_for(|finished| *finished).await;
        }
    }
}

/// Seconds until the next refresh after a good fetch: `max-age` within the bounds.
fn refresh_after(max_age: Option<u64>) -> u64 {
    max_age
        .unwrap_or(DEFAULT_REFRESH_SECS)
        .clamp(MIN_REFRESH_SECS, MAX_REFRESH_SECS)
}

/// Seconds until the retry after `failures` failed fetches in a row.
fn backoff(failures: u32) -> u64 {
    let doublings = failures.saturating_sub(1).min(16);
    BACKOFF_MIN_SECS
        .saturating_mul(1 << doublings)
        .min(BACKOFF_MAX_SECS)
}

/// `max-age` of a `Cache-Control` value; `no-cache` and `no-store` count as 0 (then
/// clamped to the shortest interval).
fn max_age(value: &str) -> Option<u64> {
    value.split(',').map(str::trim).find_map(|directive| {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-cache" || lower == "no-store" {
            return Some(0);
        }
        lower
            .strip_prefix("max-age=")
            .and_then(|n| n.trim_matches('"').parse().ok())
    })
}

/// The `result` label of a refusal.
fn reason(e: TokenError) -> &'static str {
    match e {
        TokenError::Expired => "expired",
        TokenError::Invalid(reason) => reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_is_read_and_clamped() {
        let cases = [
            ("max-age=600", Some(600)),
            ("public, max-age=3600, must-revalidate", Some(3600)),
            ("Max-Age=\"90\"", Some(90)),
            ("no-store", Some(0)),
            ("no-cache, max-age=600", Some(0)),
            ("private", None),
            ("max-age=soon", None),
        ];
        for (value, expect) in cases {
            assert_eq!(max_age(value), expect, "{value}");
        }
        assert_eq!(refresh_after(None), DEFAULT_REFRESH_SECS);
        assert_eq!(refresh_after(Some(0)), MIN_REFRESH_SECS);
        assert_eq!(refresh_after(Some(600)), 600);
        assert_eq!(refresh_after(Some(u64::MAX)), MAX_REFRESH_SECS);
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let waits: Vec<u64> = (1..=8).map(backoff).collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX_SECS);
    }
}
