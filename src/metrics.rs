//! Prometheus metrics, all prefixed `gatehouse_`.
//!
//! The proxy path touches metrics on every request, so the label combinations it uses are
//! resolved once at start into plain counter handles indexed by (rule, method class,
//! outcome): recording a request is an atomic add, with no label hashing and no lock.
//! Rarer events (auth failures, upstream errors, audit events) use labelled vectors.
//!
//! The two histograms, whole request and upstream part, are what lets an operator read the
//! sidecar's own overhead off a dashboard: `request - upstream`.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
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

/// Every metric gatehouse exports.
pub struct Metrics {
    registry: Registry,
    /// Indexed by `(rule slot * 3 + class) * 8 + outcome`; slot 0 is the policy default.
    requests: Vec<IntCounter>,
    request_duration: Histogram,
    upstream_duration: Histogram,
    auth_failures: IntCounterVec,
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
}

impl Metrics {
    /// Builds the registry. `rule_labels` names the route rules in order (their globs), so
    /// the per-request counters can be resolved now rather than per request.
    pub fn new(rule_labels: &[String]) -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new_custom(Some("gatehouse".into()), None)?;

        let requests_vec = IntCounterVec::new(
            Opts::new(
                "requests_total",
                "Proxied requests by matched route rule, method class and outcome.",
            ),
            &["route", "method_class", "outcome"],
        )?;
        registry.register(Box::new(requests_vec.clone()))?;
        let mut requests = Vec::with_capacity((rule_labels.len() + 1) * 3 * Outcome::ALL.len());
        let default = String::from("default");
        for rule in std::iter::once(&default).chain(rule_labels) {
            for class in MethodClass::ALL {
                for outcome in Outcome::ALL {
                    requests.push(requests_vec.with_label_values(&[
                        rule.as_str(),
                        class.label(),
                        outcome.label(),
                    ]));
                }
            }
        }

        let request_duration = Histogram::with_opts(
            HistogramOpts::new(
                "request_duration_seconds",
                "Time from receiving a proxied request to sending its response headers.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )?;
        registry.register(Box::new(request_duration.clone()))?;
        let upstream_duration = Histogram::with_opts(
            HistogramOpts::new(
                "upstream_duration_seconds",
                "Time the upstream took to send response headers; request minus this is gatehouse's own overhead.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )?;
        registry.register(Box::new(upstream_duration.clone()))?;

        let auth_failures = IntCounterVec::new(
            Opts::new(
                "auth_failures_total",
                "Bearer tokens refused on the proxy path, by reason.",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(auth_failures.clone()))?;
        let upstream_errors = IntCounterVec::new(
            Opts::new("upstream_errors_total", "Upstream failures by kind."),
            &["kind"],
        )?;
        registry.register(Box::new(upstream_errors.clone()))?;
        let rate_limited = IntCounterVec::new(
            Opts::new(
                "rate_limited_total",
                "Requests refused by a rate limit, by class.",
            ),
            &["class"],
        )?;
        registry.register(Box::new(rate_limited.clone()))?;
        let auth_events = IntCounterVec::new(
            Opts::new(
                "auth_events_total",
                "Identity events (logins, refreshes, logouts, lockouts, admin actions) by outcome.",
            ),
            &["event", "outcome"],
        )?;
        registry.register(Box::new(auth_events.clone()))?;
        let mail = IntCounterVec::new(
            Opts::new("mail_total", "Mails by result."),
            &["kind", "result"],
        )?;
        registry.register(Box::new(mail.clone()))?;
        let tls_reloads = IntCounterVec::new(
            Opts::new(
                "tls_reloads_total",
                "Certificate reloads from disk by result; a failed one keeps the old certificate.",
            ),
            &["result"],
        )?;
        registry.register(Box::new(tls_reloads.clone()))?;
        let connections_open = IntGauge::new("connections_open", "Client connections open now.")?;
        registry.register(Box::new(connections_open.clone()))?;
        let connections_refused = IntCounter::new(
            "connections_refused_total",
            "Client connections closed at once because server.max_connections was reached.",
        )?;
        registry.register(Box::new(connections_refused.clone()))?;
        let revocations_cached = IntGauge::new(
            "revocations_cached",
            "Revocation entries held in memory for the proxy path.",
        )?;
        registry.register(Box::new(revocations_cached.clone()))?;
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
            requests,
            request_duration,
            upstream_duration,
            auth_failures,
            upstream_errors,
            rate_limited,
            auth_events,
            mail,
            tls_reloads,
            tls_sync: std::sync::Mutex::new(()),
            connections_open,
            connections_refused,
            revocations_cached,
        })
    }

    /// Records one proxied request. `rule` is the policy rule index (None = default).
    pub fn record_request(
        &self,
        rule: Option<usize>,
        class: MethodClass,
        outcome: Outcome,
        seconds: f64,
    ) {
        let slot = rule.map_or(0, |r| r + 1);
        let index = (slot * 3 + class as usize) * Outcome::ALL.len() + outcome as usize;
        if let Some(counter) = self.requests.get(index) {
            counter.inc();
        }
        self.request_duration.observe(seconds);
    }

    pub fn record_upstream(&self, seconds: f64) {
        self.upstream_duration.observe(seconds);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_under_their_labels() {
        let metrics = Metrics::new(&["/api/**".into()]).unwrap();
        metrics.record_request(Some(0), MethodClass::Write, Outcome::Forbidden, 0.001);
        metrics.record_request(None, MethodClass::Read, Outcome::Forwarded, 0.001);
        let text = String::from_utf8(metrics.render()).unwrap();
        assert!(text.contains(
            r#"gatehouse_requests_total{method_class="write",outcome="forbidden",route="/api/**"} 1"#
        ), "{text}");
        assert!(text.contains(
            r#"gatehouse_requests_total{method_class="read",outcome="forwarded",route="default"} 1"#
        ));
        assert!(text.contains("gatehouse_request_duration_seconds_bucket"));
    }

    #[test]
    fn method_classes() {
        assert_eq!(MethodClass::of(&http::Method::HEAD), MethodClass::Read);
        assert_eq!(MethodClass::of(&http::Method::PATCH), MethodClass::Write);
        assert_eq!(MethodClass::of(&http::Method::TRACE), MethodClass::Other);
    }
}
