//! Prometheus metrics, all prefixed `gatehouse_`.
//!
//! Every request the gate answers touches metrics, so the label combinations it uses are
//! resolved once at start into plain counter handles indexed by ([`Route`], method class,
//! outcome): recording a request is an atomic add, with no label hashing, no formatting and
//! no lock. Rarer events (auth failures, upstream errors, audit events) use labelled vectors.
//!
//! The `route` label is the matched route rule (its glob), `default` for the policy default
//! (and for requests refused before any rule was looked at), or `auth:` and the endpoint's
//! default path for the identity service (`auth:/login`, `auth:/admin` for the whole admin
//! API, `auth:other` for unknown paths under the prefix). Ops endpoints are not counted: they
//! are the orchestrator's probes and the scraper's own traffic, at a fixed rate, and with
//! `server.admin_listen` they never reach the gate at all.
//!
//! The two proxy histograms, whole request and upstream part, are what lets an operator read
//! the sidecar's own overhead off a dashboard: `request - upstream`. Auth endpoint latency
//! (argon2, store writes) has a histogram of its own so it cannot blur that difference.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Latency buckets in seconds, dense below 10 ms where a sidecar's overhead lives.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// How a request ended; the `outcome` label. Refusals take theirs from
/// [`crate::error::Error::outcome`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream answered (whatever its status).
    Forwarded,
    /// gatehouse answered it itself, successfully (the auth endpoints).
    Served,
    /// Refused with 401: no token, or a bad, expired or revoked one.
    Unauthenticated,
    /// Refused with 403: roles not met, route denied, email not verified.
    Forbidden,
    /// Refused with 429, or 423 for a locked-out login name.
    RateLimited,
    /// Refused as malformed or not acceptable (400, 404, 405, 409, 413, 414, 422, 431).
    Rejected,
    /// The upstream failed (502, 504).
    UpstreamError,
    /// gatehouse failed or was not ready (500, 503).
    Failed,
}

impl Outcome {
    const ALL: [Outcome; 8] = [
        Outcome::Forwarded,
        Outcome::Served,
        Outcome::Unauthenticated,
        Outcome::Forbidden,
        Outcome::RateLimited,
        Outcome::Rejected,
        Outcome::UpstreamError,
        Outcome::Failed,
    ];

    fn label(self) -> &'static str {
        match self {
            Outcome::Forwarded => "forwarded",
            Outcome::Served => "served",
            Outcome::Unauthenticated => "unauthenticated",
            Outcome::Forbidden => "forbidden",
            Outcome::RateLimited => "rate_limited",
            Outcome::Rejected => "rejected",
            Outcome::UpstreamError => "upstream_error",
            Outcome::Failed => "failed",
        }
    }
}

/// Coarse method classes keep the label set small: `read` (GET, HEAD, OPTIONS), `write`
/// (POST, PUT, PATCH, DELETE) and `other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodClass {
    Read,
    Write,
    Other,
}

impl MethodClass {
    const ALL: [MethodClass; 3] = [MethodClass::Read, MethodClass::Write, MethodClass::Other];

    pub fn of(method: &http::Method) -> MethodClass {
        match *method {
            http::Method::GET | http::Method::HEAD | http::Method::OPTIONS => MethodClass::Read,
            http::Method::POST | http::Method::PUT | http::Method::PATCH | http::Method::DELETE => {
                MethodClass::Write
            }
            _ => MethodClass::Other,
        }
    }

    fn label(self) -> &'static str {
        match self {
            MethodClass::Read => "read",
            MethodClass::Write => "write",
            MethodClass::Other => "other",
        }
    }
}

/// The identity service's endpoints, by their default paths: each is counted under its own
/// `route` label (`auth:/login`). Fixed whatever `[auth.paths]` renames them to, so
/// dashboards survive a rename. Keep in step with the routing in `auth::handle`.
pub const AUTH_ENDPOINTS: [&str; 19] = [
    "/register",
    "/login",
    "/refresh",
    "/logout",
    "/verify",
    "/me",
    "/change-password",
    "/forgot-password",
    "/reset-password/validate",
    "/reset-password",
    "/verify-email",
    "/verify-email/resend",
    "/login/mfa",
    "/mfa/totp",
    "/mfa/totp/setup",
    "/mfa/totp/confirm",
    "/admin",
    "/openapi.json",
    "/ws",
];

/// The label of paths under the auth prefix that name no endpoint (404).
const AUTH_OTHER_LABEL: &str = "auth:other";

/// The `route` label a request is counted under, as a slot resolved before the request is
/// recorded, so recording it indexes a table and never looks a label up.
///
/// Slots: the auth endpoints first (a fixed set, then `auth:other`), then the policy
/// default, then the route rules in order; so a slot is known without knowing how many
/// rules there are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route(usize);

impl Route {
    /// Slots taken by the auth endpoints and `auth:other`.
    const AUTH_SLOTS: usize = AUTH_ENDPOINTS.len() + 1;

    /// The policy default, also used for requests refused before any rule was looked at.
    pub const DEFAULT: Route = Route(Route::AUTH_SLOTS);

    /// Paths under the auth prefix that name no endpoint.
    pub const AUTH_OTHER: Route = Route(AUTH_ENDPOINTS.len());

    /// A route rule by index, or the policy default (`None`).
    pub fn rule(rule: Option<usize>) -> Route {
        Route(Route::AUTH_SLOTS + rule.map_or(0, |r| r + 1))
    }

    /// An auth endpoint by its default path relative to the prefix (`/login`; anything under
    /// `/admin/` is `/admin`); any other path is `auth:other`.
    pub fn auth(endpoint: &str) -> Route {
        let admin = endpoint
            .strip_prefix("/admin")
            .is_some_and(|tail| tail.is_empty() || tail.starts_with('/'));
        let found = if admin {
            AUTH_ENDPOINTS.iter().position(|e| *e == "/admin")
        } else {
            AUTH_ENDPOINTS.iter().position(|e| *e == endpoint)
        };
        Route(found.unwrap_or(AUTH_ENDPOINTS.len()))
    }

    /// The `route` label of an auth endpoint's slot (`auth:/login`, `auth:other`); `None`
    /// for the default and the rules, whose labels the policy gives.
    pub fn auth_label(self) -> Option<String> {
        match AUTH_ENDPOINTS.get(self.0) {
            Some(endpoint) => Some(format!("auth:{endpoint}")),
            None if self == Route::AUTH_OTHER => Some(AUTH_OTHER_LABEL.to_string()),
            None => None,
        }
    }

    /// Whether gatehouse itself serves this route (the identity service).
    pub fn is_auth(self) -> bool {
        self.0 < Route::AUTH_SLOTS
    }
}

/// The request counters of one route table, resolved from the labels of one policy
/// ([`Metrics::route_counters`]). Each config generation has its own: a request is counted
/// through the table of the generation that decided it, so a reload that adds, removes or
/// reorders rules can never count a request under another rule's label, and slots past
/// the end of a table count nothing rather than panic.
pub struct RouteCounters {
    /// The `route` label of each [`Route`] slot, for the access log.
    labels: Box<[String]>,
    /// Indexed by `(route slot * 3 + class) * 8 + outcome`.
    requests: Vec<IntCounter>,
}

impl RouteCounters {
    /// The `route` label a request is counted under, for its access-log line.
    pub fn label(&self, route: Route) -> &str {
        self.labels.get(route.0).map_or("default", String::as_str)
    }

    /// How many route rules the table has labels for.
    pub fn rules(&self) -> usize {
        self.labels.len() - Route::AUTH_SLOTS - 1
    }
}

/// Every metric gatehouse exports.
pub struct Metrics {
    registry: Registry,
    /// `gatehouse_requests_total`, whose children [`RouteCounters`] resolve.
    requests_vec: IntCounterVec,
    request_duration: Histogram,
    auth_duration: Histogram,
    upstream_duration: Histogram,
    auth_failures: IntCounterVec,
    /// Forward-auth decisions (`{prefix}/forward`), apart from the requests gatehouse
    /// answered or forwarded itself: `route`, `method_class` and `outcome` of the original
    /// request, `allowed` for a 200. Resolved per decision, so a sidecar that never serves
    /// forward-auth exports no series of it.
    forward_decisions: IntCounterVec,
    forward_duration: Histogram,
    /// Assertions sent (`headers.assertion`), signed for the request or reused from the
    /// cache: `[signed, cached]`, resolved at start because every proxied request with an
    /// identity counts one.
    assertions: [IntCounter; 2],
    upstream_errors: IntCounterVec,
    rate_limited: IntCounterVec,
    /// Audit events of the identity service: `event` and `outcome`.
    pub auth_events: IntCounterVec,
    /// Mails by result (`sent`, `failed`, `retried`, `dropped`).
    pub mail: IntCounterVec,
    /// Certificate reloads by result (`ok`, `failed`), synced from the TLS reloader when
    /// metrics are rendered.
    pub tls_reloads: IntCounterVec,
    /// Two scrapes at once must not both add the same delta.
    tls_sync: std::sync::Mutex<()>,
    pub connections_open: IntGauge,
    pub connections_refused: IntCounter,
    pub revocations_cached: IntGauge,
    /// WebSocket auth-channel connections open now.
    pub auth_channel_open: IntGauge,
    /// Auth-channel messages by `action` (or `invalid`) and `result` (the `outcome` labels of
    /// `requests_total`).
    auth_channel_messages: IntCounterVec,
    /// Auth-channel connections closed, by `reason`.
    auth_channel_closes: IntCounterVec,
    /// Dead records removed from the store by the background purge, by `kind` (`session`,
    /// `refresh_token`, `one_time_token`, `revocation`, `login_failure`).
    pub store_purged: IntCounterVec,
    /// Purge rounds by result (`ok`, `error`).
    pub store_purges: IntCounterVec,
    /// Stored password hashes upgraded to the configured argon2id at a login, by the
    /// `scheme` they had (`bcrypt`, `scrypt`, `pbkdf2-sha256`, `argon2`: imported hashes,
    /// or argon2 with other parameters).
    pub password_upgrades: IntCounterVec,
    /// Rounds of the revocation feed (replicas sharing a store) by result.
    revocation_feed_rounds: IntCounterVec,
    /// Revocations taken from the feed (recorded by any replica, this one included).
    revocation_feed_applied: IntCounter,
    /// Calls the shared (Redis) limits answered locally instead, by `class` (an auth
    /// rate-limit class, or `cooldown`) and `reason` (`error`, `timeout`, `down`).
    pub shared_limit_fallbacks: IntCounterVec,
    /// 1 while Redis answers the shared limits, 0 after it failed (or before it was first
    /// reached, and always with `rate_limits.backend = "local"`).
    pub shared_limit_redis_up: IntGauge,
    /// `notAfter` of the listener's leaf certificate (Unix seconds), labelled
    /// `certificate="listener"`; no series at all without `server.tls`, so an expiry alert
    /// never fires on a plain-HTTP sidecar. Set at load and on every hot reload.
    tls_certificate_expiry: IntGaugeVec,
    /// Config reloads by result (`ok`, `error`). Registered, and both series exported at 0,
    /// so dashboards and alerts have them before the first reload.
    pub config_reloads: IntCounterVec,
    /// When the config last loaded successfully (Unix seconds): the start, then each
    /// successful reload.
    pub config_last_reload_success: IntGauge,
    /// Key-set fetches of each `[[issuers]]` entry, by `issuer` (its name) and `result`
    /// (`ok`, `error`: unreachable or not 200, `invalid`: no usable key set).
    pub issuer_jwks_refresh: IntCounterVec,
    /// Keys in each issuer's key set now (0 until one was fetched).
    pub issuer_keys: IntGaugeVec,
    /// Bearer tokens of each issuer by `result`: `accepted`, or the refusal's reason label
    /// (`expired`, `kid`, `audience`, `signature`, …).
    pub issuer_tokens: IntCounterVec,
}

/// Registers `metric` and hands it back, for the fields of [`Metrics`].
fn registered<M>(registry: &Registry, metric: M) -> Result<M, prometheus::Error>
where
    M: prometheus::core::Collector + Clone + 'static,
{
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

/// A registered counter family.
fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, prometheus::Error> {
    registered(registry, IntCounterVec::new(Opts::new(name, help), labels)?)
}

/// A registered latency histogram, on the buckets every latency here shares.
fn latency(registry: &Registry, name: &str, help: &str) -> Result<Histogram, prometheus::Error> {
    registered(
        registry,
        Histogram::with_opts(HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()))?,
    )
}

impl Metrics {
    /// Builds the registry. The per-route request counters come from
    /// [`Metrics::route_counters`], once per config.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new_custom(Some("gatehouse".into()), None)?;

        let requests_vec = counter_vec(
            &registry,
            "requests_total",
            "Requests by route (matched route rule, or auth endpoint), method class and outcome.",
            &["route", "method_class", "outcome"],
        )?;
        let request_duration = latency(
            &registry,
            "request_duration_seconds",
            "Time from receiving a proxied request to sending its response headers.",
        )?;
        let auth_duration = latency(
            &registry,
            "auth_request_duration_seconds",
            "Time from receiving a request for an auth endpoint to sending its response headers.",
        )?;
        let upstream_duration = latency(
            &registry,
            "upstream_duration_seconds",
            "Time the upstream took to send response headers; request minus this is gatehouse's own overhead.",
        )?;

        let auth_failures = counter_vec(
            &registry,
            "auth_failures_total",
            "Bearer tokens refused on the proxy path, by reason.",
            &["reason"],
        )?;
        let forward_decisions = counter_vec(
            &registry,
            "forward_auth_decisions_total",
            "Forward-auth decisions by the original request's route, method class and outcome (allowed, or the refusal's).",
            &["route", "method_class", "outcome"],
        )?;
        let forward_duration = latency(
            &registry,
            "forward_auth_duration_seconds",
            "Time from receiving a forward-auth request to sending its answer.",
        )?;
        let assertions_vec = counter_vec(
            &registry,
            "assertions_total",
            "Signed identities sent to the upstream or the ingress (headers.assertion), by source: signed for the request, or cached.",
            &["source"],
        )?;
        let assertions = [
            assertions_vec.with_label_values(&["signed"]),
            assertions_vec.with_label_values(&["cached"]),
        ];
        let upstream_errors = counter_vec(
            &registry,
            "upstream_errors_total",
            "Upstream failures by kind.",
            &["kind"],
        )?;
        let rate_limited = counter_vec(
            &registry,
            "rate_limited_total",
            "Requests refused by a rate limit, by class.",
            &["class"],
        )?;
        let auth_events = counter_vec(
            &registry,
            "auth_events_total",
            "Identity events (logins, refreshes, logouts, lockouts, admin actions) by outcome.",
            &["event", "outcome"],
        )?;
        let mail = counter_vec(
            &registry,
            "mail_total",
            "Mails by result.",
            &["kind", "result"],
        )?;
        let tls_reloads = counter_vec(
            &registry,
            "tls_reloads_total",
            "Certificate reloads from disk by result; a failed one keeps the old certificate.",
            &["result"],
        )?;
        let connections_open = registered(
            &registry,
            IntGauge::new("connections_open", "Client connections open now.")?,
        )?;
        let connections_refused = registered(
            &registry,
            IntCounter::new(
                "connections_refused_total",
                "Client connections closed at once because server.max_connections was reached.",
            )?,
        )?;
        let auth_channel_open = registered(
            &registry,
            IntGauge::new(
                "auth_channel_connections",
                "WebSocket auth-channel connections ({prefix}/ws) open now.",
            )?,
        )?;
        let auth_channel_messages = counter_vec(
            &registry,
            "auth_channel_messages_total",
            "WebSocket auth-channel messages by action (invalid when unreadable) and result (the outcome labels of requests_total).",
            &["action", "result"],
        )?;
        let auth_channel_closes = counter_vec(
            &registry,
            "auth_channel_closes_total",
            "WebSocket auth-channel connections ended, by reason (client, idle, drain, too_big, binary, flood, protocol, slow_reader, gone).",
            &["reason"],
        )?;
        let revocations_cached = registered(
            &registry,
            IntGauge::new(
                "revocations_cached",
                "Revocation entries held in memory for the proxy path.",
            )?,
        )?;
        let store_purged = counter_vec(
            &registry,
            "store_purged_total",
            "Dead records the background purge removed from the store, by kind.",
            &["kind"],
        )?;
        for kind in crate::store::PurgeStats::default()
            .by_kind()
            .map(|(k, _)| k)
        {
            store_purged.with_label_values(&[kind]);
        }
        let store_purges = counter_vec(
            &registry,
            "store_purges_total",
            "Background purges of the store by result (ok, error).",
            &["result"],
        )?;
        let revocation_feed_rounds = counter_vec(
            &registry,
            "revocation_feed_rounds_total",
            "Reads of the shared store's revocation feed by result (ok, error); errors are retried from the same place.",
            &["result"],
        )?;
        let password_upgrades = counter_vec(
            &registry,
            "password_upgrades_total",
            "Password hashes upgraded to the configured argon2id at a successful login, by the scheme they had (bcrypt, scrypt, pbkdf2-sha256, argon2).",
            &["scheme"],
        )?;
        let revocation_feed_applied = registered(
            &registry,
            IntCounter::new(
                "revocation_feed_applied_total",
                "Revocations applied from the shared store's feed (made on any replica).",
            )?,
        )?;
        let shared_limit_fallbacks = counter_vec(
            &registry,
            "shared_limit_fallbacks_total",
            "Auth rate-limit and cooldown checks counted on this replica alone because Redis failed (error), did not answer in time (timeout) or had just failed (down).",
            &["class", "reason"],
        )?;
        let shared_limit_redis_up = IntGauge::new(
            "shared_limit_redis_up",
            "1 while Redis answers for the shared auth rate limits; 0 after a failure, before it was first reached, and with rate_limits.backend = \"local\".",
        )?;
        registry.register(Box::new(shared_limit_redis_up.clone()))?;
        let tls_certificate_expiry = IntGaugeVec::new(
            Opts::new(
                "tls_certificate_expiry_timestamp_seconds",
                "notAfter of the serving certificate's leaf, in Unix seconds; absent without server.tls.",
            ),
            &["certificate"],
        )?;
        registry.register(Box::new(tls_certificate_expiry.clone()))?;
        let config_reloads = counter_vec(
            &registry,
            "config_reloads_total",
            "Config reloads by result (ok, error); a refused one keeps the running config.",
            &["result"],
        )?;
        for result in ["ok", "error"] {
            config_reloads.with_label_values(&[result]);
        }
        let config_last_reload_success = IntGauge::new(
            "config_last_reload_success_timestamp_seconds",
            "When the running config was loaded (Unix seconds): the start, then each successful reload.",
        )?;
        config_last_reload_success.set(unix_now());
        registry.register(Box::new(config_last_reload_success.clone()))?;
        let issuer_jwks_refresh = counter_vec(
            &registry,
            "issuer_jwks_refresh_total",
            "Key-set fetches of each external issuer by result (ok; error: unreachable or not 200; invalid: no usable key set). The last good set stays in use after a failure.",
            &["issuer", "result"],
        )?;
        let issuer_keys = registered(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "issuer_keys",
                    "Keys in each external issuer's key set now (0 until one was fetched).",
                ),
                &["issuer"],
            )?,
        )?;
        let issuer_tokens = counter_vec(
            &registry,
            "issuer_tokens_total",
            "Bearer tokens of each external issuer by result: accepted, or the refusal reason.",
            &["issuer", "result"],
        )?;
        let build_info = IntGauge::with_opts(
            Opts::new(
                "build_info",
                "Always 1; the version label says which build runs.",
            )
            .const_label("version", env!("CARGO_PKG_VERSION")),
        )?;
        build_info.set(1);
        registry.register(Box::new(build_info))?;
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;

        Ok(Metrics {
            registry,
            requests_vec,
            request_duration,
            auth_duration,
            upstream_duration,
            auth_failures,
            forward_decisions,
            forward_duration,
            assertions,
            upstream_errors,
            rate_limited,
            auth_events,
            mail,
            tls_reloads,
            tls_sync: std::sync::Mutex::new(()),
            connections_open,
            connections_refused,
            revocations_cached,
            auth_channel_open,
            auth_channel_messages,
            auth_channel_closes,
            store_purged,
            store_purges,
            password_upgrades,
            revocation_feed_rounds,
            revocation_feed_applied,
            shared_limit_fallbacks,
            shared_limit_redis_up,
            tls_certificate_expiry,
            config_reloads,
            config_last_reload_success,
            issuer_jwks_refresh,
            issuer_keys,
            issuer_tokens,
        })
    }

    /// The gauge that follows the listener certificate's expiry; creating the series is what
    /// makes it appear, so this is called only when TLS is on.
    pub fn tls_certificate_expiry_gauge(&self) -> IntGauge {
        self.tls_certificate_expiry.with_label_values(&["listener"])
    }

    /// The request counters of a policy whose rules are labelled `rule_labels`, in order,
    /// resolved now so that counting a request is an index and an atomic add. A label the
    /// previous table had too resolves to the same series, which keeps counting.
    pub fn route_counters(&self, rule_labels: &[&str]) -> RouteCounters {
        // In slot order; see `Route`.
        let labels: Box<[String]> = AUTH_ENDPOINTS
            .iter()
            .map(|e| format!("auth:{e}"))
            .chain([AUTH_OTHER_LABEL.to_string(), "default".to_string()])
            .chain(rule_labels.iter().map(|l| l.to_string()))
            .collect();
        let mut requests = Vec::with_capacity(labels.len() * 3 * Outcome::ALL.len());
        for label in &labels {
            for class in MethodClass::ALL {
                for outcome in Outcome::ALL {
                    requests.push(self.requests_vec.with_label_values(&[
                        label.as_str(),
                        class.label(),
                        outcome.label(),
                    ]));
                }
            }
        }
        RouteCounters { labels, requests }
    }

    /// Drops the series of rule labels that `old` had and `new` has not, once `new` is in
    /// force: a removed or renamed rule stops being exported instead of lingering at its
    /// last value for the life of the process. (A request still finishing on the old
    /// config counts into a dropped series, which is not exported again.)
    pub fn retire_routes(&self, old: &RouteCounters, new: &RouteCounters) {
        for label in old.labels.iter().filter(|l| !new.labels.contains(l)) {
            for class in MethodClass::ALL {
                for outcome in Outcome::ALL {
                    let _ = self.requests_vec.remove_label_values(&[
                        label.as_str(),
                        class.label(),
                        outcome.label(),
                    ]);
                }
            }
        }
    }

    /// Counts one config reload: `ok` (and the time of it) or `error`.
    pub fn config_reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.config_reloads.with_label_values(&[result]).inc();
        if ok {
            self.config_last_reload_success.set(unix_now());
        }
    }

    /// Records one request the gate answered, in the route table of the config that
    /// decided it: an atomic add and a histogram observation.
    pub fn record_request(
        &self,
        routes: &RouteCounters,
        route: Route,
        class: MethodClass,
        outcome: Outcome,
        seconds: f64,
    ) {
        let index = (route.0 * 3 + class as usize) * Outcome::ALL.len() + outcome as usize;
        if let Some(counter) = routes.requests.get(index) {
            counter.inc();
        }
        if route.is_auth() {
            self.auth_duration.observe(seconds);
        } else {
            self.request_duration.observe(seconds);
        }
    }

    /// Records one forward-auth decision, labelled from the route table of the config that
    /// decided it; `Outcome::Forwarded` stands for the 200, counted as `allowed` (the
    /// ingress forwards, not gatehouse).
    pub fn record_forward(
        &self,
        routes: &RouteCounters,
        route: Route,
        class: MethodClass,
        outcome: Outcome,
        seconds: f64,
    ) {
        let outcome = match outcome {
            Outcome::Forwarded => "allowed",
            other => other.label(),
        };
        self.forward_decisions
            .with_label_values(&[routes.label(route), class.label(), outcome])
            .inc();
        self.forward_duration.observe(seconds);
    }

    pub fn record_upstream(&self, seconds: f64) {
        self.upstream_duration.observe(seconds);
    }

    /// Counts one round of the revocation feed: `Ok(applied)` or a failed read.
    pub fn revocation_feed(&self, result: Result<usize, ()>) {
        match result {
            Ok(applied) => {
                self.revocation_feed_rounds.with_label_values(&["ok"]).inc();
                self.revocation_feed_applied.inc_by(applied as u64);
            }
            Err(()) => self
                .revocation_feed_rounds
                .with_label_values(&["error"])
                .inc(),
        }
    }

    /// One assertion sent: `cached` when it came from the cache, else signed for it.
    pub fn assertion(&self, cached: bool) {
        self.assertions[usize::from(cached)].inc();
    }

    pub fn auth_failure(&self, reason: &str) {
        self.auth_failures.with_label_values(&[reason]).inc();
    }

    pub fn upstream_error(&self, kind: &str) {
        self.upstream_errors.with_label_values(&[kind]).inc();
    }

    pub fn rate_limited(&self, class: &str) {
        self.rate_limited.with_label_values(&[class]).inc();
    }

    /// Counts an identity event (`login`/`ok`, `refresh`/`reuse`, …).
    /// Counts one auth-channel message by its action and how it was answered.
    pub fn auth_channel_message(&self, action: &str, outcome: Outcome) {
        self.auth_channel_messages
            .with_label_values(&[action, outcome.label()])
            .inc();
    }

    /// Counts one auth-channel connection ending, by why.
    pub fn auth_channel_closed(&self, reason: &str) {
        self.auth_channel_closes.with_label_values(&[reason]).inc();
    }

    pub fn auth_event(&self, event: &str, outcome: &str) {
        self.auth_events.with_label_values(&[event, outcome]).inc();
    }

    /// Brings the TLS reload counters up to the reloader's own counts.
    pub fn sync_tls_reloads(&self, ok: u64, failed: u64) {
        // A poisoned lock only means another scrape panicked mid-sync; the counters are
        // still consistent, so carry on.
        let _guard = self.tls_sync.lock().unwrap_or_else(|e| e.into_inner());
        for (result, total) in [("ok", ok), ("failed", failed)] {
            let counter = self.tls_reloads.with_label_values(&[result]);
            let seen = counter.get();
            if total > seen {
                counter.inc_by(total - seen);
            }
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec only fails on a metric family with an invalid shape, which the
        // constructors above make impossible; an empty body is the safe answer if it does.
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .is_err()
        {
            buf.clear();
        }
        buf
    }
}

/// Seconds since the Unix epoch (0 for a clock before it).
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_under_their_labels() {
        let metrics = Metrics::new().unwrap();
        let routes = metrics.route_counters(&["/api/**"]);
        let api = Route::rule(Some(0));
        metrics.record_request(&routes, api, MethodClass::Write, Outcome::Forbidden, 0.001);
        let default = Route::DEFAULT;
        metrics.record_request(
            &routes,
            default,
            MethodClass::Read,
            Outcome::Forwarded,
            0.001,
        );
        let login = Route::auth("/login");
        metrics.record_request(&routes, login, MethodClass::Write, Outcome::Served, 0.05);
        let refused = Outcome::Unauthenticated;
        metrics.record_request(&routes, login, MethodClass::Write, refused, 0.05);
        assert_eq!(routes.label(api), "/api/**");
        assert_eq!(routes.label(Route::DEFAULT), "default");
        assert_eq!(routes.label(login), "auth:/login");
        let text = String::from_utf8(metrics.render()).unwrap();
        for (route, outcome) in [
            ("auth:/login", "served"),
            ("auth:/login", "unauthenticated"),
        ] {
            assert!(text.contains(&format!(
                r#"gatehouse_requests_total{{method_class="write",outcome="{outcome}",route="{route}"}} 1"#
            )), "{text}");
        }
        assert!(
            text.contains("gatehouse_auth_request_duration_seconds_count 2"),
            "{text}"
        );
        assert!(
            text.contains("gatehouse_request_duration_seconds_count 2"),
            "{text}"
        );
        assert!(text.contains(
            r#"gatehouse_requests_total{method_class="write",outcome="forbidden",route="/api/**"} 1"#
        ), "{text}");
        assert!(text.contains(
            r#"gatehouse_requests_total{method_class="read",outcome="forwarded",route="default"} 1"#
        ));
        assert!(text.contains("gatehouse_request_duration_seconds_bucket"));
    }

    #[test]
    fn every_auth_endpoint_has_its_own_route() {
        let metrics = Metrics::new().unwrap();
        let routes = metrics.route_counters(&["/x"]);
        for endpoint in AUTH_ENDPOINTS {
            let route = Route::auth(endpoint);
            assert!(route.is_auth());
            assert_eq!(routes.label(route), format!("auth:{endpoint}"));
        }
        for (path, label) in [
            ("/admin/users/u1/roles", "auth:/admin"),
            ("/administrator", "auth:other"),
            ("/nope", "auth:other"),
            ("", "auth:other"),
        ] {
            assert_eq!(routes.label(Route::auth(path)), label, "{path}");
        }
        assert_eq!(Route::auth("/nope"), Route::AUTH_OTHER);
        assert!(!Route::DEFAULT.is_auth() && !Route::rule(Some(0)).is_auth());
        assert_eq!(routes.label(Route::rule(Some(0))), "/x");
    }

    /// A reload's table: a kept label keeps its series and its count, a removed one is no
    /// longer exported, a new one is exported at 0, and a slot past the end of a table
    /// counts nothing instead of panicking or landing on another label.
    #[test]
    fn route_tables_of_two_configs() {
        let metrics = Metrics::new().unwrap();
        let old = metrics.route_counters(&["/a/**", "/b/**"]);
        let (read, forwarded) = (MethodClass::Read, Outcome::Forwarded);
        metrics.record_request(&old, Route::rule(Some(0)), read, forwarded, 0.001);
        metrics.record_request(&old, Route::rule(Some(1)), read, forwarded, 0.001);
        // Reordered, one removed, one added.
        let new = metrics.route_counters(&["/c/**", "/a/**"]);
        metrics.retire_routes(&old, &new);
        assert_eq!(new.rules(), 2);
        metrics.record_request(&new, Route::rule(Some(1)), read, forwarded, 0.001);
        metrics.record_request(&new, Route::rule(Some(7)), read, forwarded, 0.001);
        assert_eq!(new.label(Route::rule(Some(7))), "default");
        let text = String::from_utf8(metrics.render()).unwrap();
        let series = |route: &str| {
            format!(
                r#"gatehouse_requests_total{{method_class="read",outcome="forwarded",route="{route}"}}"#
            )
        };
        assert!(text.contains(&format!("{} 2", series("/a/**"))), "{text}");
        assert!(text.contains(&format!("{} 0", series("/c/**"))), "{text}");
        assert!(!text.contains(&series("/b/**")), "{text}");
        assert!(text.contains(&format!("{} 0", series("default"))), "{text}");
    }

    #[test]
    fn method_classes() {
        assert_eq!(MethodClass::of(&http::Method::HEAD), MethodClass::Read);
        assert_eq!(MethodClass::of(&http::Method::PATCH), MethodClass::Write);
        assert_eq!(MethodClass::of(&http::Method::TRACE), MethodClass::Other);
    }

    #[test]
    fn reload_and_certificate_series() {
        let metrics = Metrics::new().unwrap();
        let text = String::from_utf8(metrics.render()).unwrap();
        assert!(
            text.contains("gatehouse_config_reloads_total{result=\"ok\"} 0"),
            "{text}"
        );
        assert!(text.contains("gatehouse_config_reloads_total{result=\"error\"} 0"));
        let loaded = text
            .lines()
            .find_map(|l| l.strip_prefix("gatehouse_config_last_reload_success_timestamp_seconds "))
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap();
        assert!(loaded > 1_600_000_000, "{loaded}");
        // No TLS, no expiry series: an alert on it must not fire for plain HTTP.
        assert!(!text.contains("gatehouse_tls_certificate_expiry_timestamp_seconds{"));
        metrics.tls_certificate_expiry_gauge().set(1_900_000_000);
        let text = String::from_utf8(metrics.render()).unwrap();
        assert!(text.contains(
            "gatehouse_tls_certificate_expiry_timestamp_seconds{certificate=\"listener\"} 1900000000"
        ));
    }
}
