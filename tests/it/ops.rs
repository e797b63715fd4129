//! The ops surface and the server's life (issue 2, points 3 and 9): health, readiness,
//! Prometheus metrics, the admin listener, and graceful shutdown in-process.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::Method;

use crate::harness::{
    Gatehouse, ROUTES, Setup, dead_addr, gated_upstream, raw_exchange, raw_upstream,
};

#[tokio::test]
async fn healthz_and_readyz() {
    let gh = Gatehouse::start(ROUTES, &[]).await;
    let r = gh.get("/healthz").await;
    r.expect(200);
    assert_eq!(r.json()["status"], "ok");
    let r = gh.get("/readyz").await;
    r.expect(200);
    assert_eq!(r.json()["status"], "ready");
    assert_eq!(r.header("cache-control"), Some("no-store"));
    // HEAD works, other methods do not.
    gh.send(Method::HEAD, "/healthz", &[], Bytes::new())
        .await
        .expect(200);
    gh.send(Method::POST, "/healthz", &[], Bytes::new())
        .await
        .expect(405);
    gh.send(Method::DELETE, "/metrics", &[], Bytes::new())
        .await
        .expect(405);
}

#[tokio::test]
async fn readyz_checks_the_upstream_health_path() {
    // A healthy upstream.
    let gh = Gatehouse::start(ROUTES, &[("GATEHOUSE_UPSTREAM_HEALTH_PATH", "/health")]).await;
    gh.get("/readyz").await.expect(200);

    // A down upstream: alive, but not ready, and the reason names no address.
    let down = dead_addr();
    let gh = Gatehouse::launch(Setup {
        env: &[("GATEHOUSE_UPSTREAM_HEALTH_PATH", "/health")],
        wait_for: "/healthz",
        ..Setup::new(down, ROUTES)
    })
    .await;
    let r = gh.get("/readyz").await;
    r.expect(503);
    assert_eq!(r.json()["status"], "not_ready", "{}", r.text());
    for leak in [down.ip().to_string(), down.port().to_string()] {
        assert!(!r.text().contains(&leak), "{}", r.text());
    }
    gh.get("/healthz").await.expect(200);

    // An upstream whose health check fails with a 5xx until it recovers.
    let healthy = Arc::new(AtomicBool::new(false));
    let flag = healthy.clone();
    let sick = raw_upstream(move |head| {
        if head.starts_with("GET /health ") && !flag.load(Ordering::SeqCst) {
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n".to_vec()
        } else {
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec()
        }
    })
    .await;
    let gh = Gatehouse::launch(Setup {
        env: &[("GATEHOUSE_UPSTREAM_HEALTH_PATH", "/health")],
        wait_for: "/healthz",
        ..Setup::new(sick, ROUTES)
    })
    .await;
    gh.get("/readyz").await.expect(503);
    // Readiness follows the upstream back without a restart.
    healthy.store(true, Ordering::SeqCst);
    gh.wait_ready().await;
    // Without a health path the upstream is not probed at all.
    let gh = Gatehouse::start_with(sick, ROUTES, &[]).await;
    gh.get("/readyz").await.expect(200);
}

/// Parses the Prometheus text format strictly enough to catch malformed output: every
/// sample belongs to a family with HELP and TYPE, names carry the prefix, counters end in
/// `_total`, values are numbers. Returns `sample (name{labels}) → value`.
fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    let mut types: BTreeMap<&str, &str> = BTreeMap::new();
    let mut helps: Vec<&str> = Vec::new();
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            assert!(!help.is_empty(), "no help text: {line}");
            helps.push(name);
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect(line);
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            if kind == "counter" {
                assert!(name.ends_with("_total"), "counter without _total: {line}");
            }
            types.insert(name, kind);
        } else if !line.is_empty() {
            let (sample, value) = line.rsplit_once(' ').expect(line);
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("bad value: {line}"));
            let name = sample.split('{').next().unwrap();
            assert!(name.starts_with("gatehouse_"), "unprefixed: {line}");
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s)
                        .filter(|f| types.get(f) == Some(&"histogram"))
                })
                .unwrap_or(name);
            assert!(types.contains_key(family), "no TYPE before {line}");
            assert!(helps.contains(&family), "no HELP before {line}");
            samples.insert(sample.to_string(), value);
        }
    }
    samples
}

fn sample(samples: &BTreeMap<String, f64>, key: &str) -> f64 {
    samples.get(key).copied().unwrap_or_else(|| {
        let near: Vec<&String> = samples
            .keys()
            .filter(|k| k.starts_with(key.split('{').next().unwrap()))
            .collect();
        panic!("no sample {key}; have {near:#?}")
    })
}

fn requests(route: &str, class: &str, outcome: &str) -> String {
    format!(
        "gatehouse_requests_total{{method_class=\"{class}\",outcome=\"{outcome}\",route=\"{route}\"}}"
    )
}

#[tokio::test]
async fn metrics_count_requests_by_rule_class_and_outcome() {
    let gh = Gatehouse::start(ROUTES, &[]).await;
    let reader = format!("Bearer {}", gh.token("u1", &["reader"]));
    let auth = [("authorization", reader.as_str())];
    gh.get("/public/a").await.expect(200);
    gh.get("/public/b").await.expect(200);
    gh.send(Method::POST, "/public/c", &[], Bytes::new())
        .await
        .expect(200);
    gh.get_with("/api/items", &auth).await.expect(200);
    gh.send(Method::POST, "/api/items", &auth, Bytes::new())
        .await
        .expect(403);
    gh.send(Method::POST, "/api/items", &[], Bytes::new())
        .await
        .expect(401);
    gh.get_with("/api/items", &[("authorization", "Bearer x.y.z")])
        .await
        .expect(401);
    gh.get("/blocked/x").await.expect(403);
    gh.get("/elsewhere").await.expect(403);
    gh.send(Method::TRACE, "/elsewhere", &[], Bytes::new())
        .await
        .expect(403);
    gh.get("/public/a%2Fb").await.expect(400);

    let r = gh.get("/metrics").await;
    r.expect(200);
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("text/plain; version=0.0.4")),
        "{r:?}"
    );
    let m = parse_metrics(&r.text());
    // Rules 2 and 3 share the glob `/api/**`; the one with methods is labelled with them.
    for (key, want) in [
        (requests("/public/**", "read", "forwarded"), 2.0),
        (requests("/public/**", "write", "forwarded"), 1.0),
        (requests("/api/**", "read", "forwarded"), 1.0),
        (
            requests("POST,PUT,PATCH,DELETE /api/**", "write", "forbidden"),
            1.0,
        ),
        (
            requests("POST,PUT,PATCH,DELETE /api/**", "write", "unauthenticated"),
            1.0,
        ),
        (requests("/api/**", "read", "unauthenticated"), 1.0),
        (requests("/blocked/**", "read", "forbidden"), 1.0),
        (requests("default", "read", "forbidden"), 1.0),
        (requests("default", "other", "forbidden"), 1.0),
        (requests("default", "read", "rejected"), 1.0),
        (requests("/public/**", "read", "upstream_error"), 0.0),
        (
            "gatehouse_auth_failures_total{reason=\"missing\"}".into(),
            1.0,
        ),
        (
            "gatehouse_auth_failures_total{reason=\"malformed\"}".into(),
            1.0,
        ),
    ] {
        assert_eq!(sample(&m, &key), want, "{key}");
    }
    // Both histograms, so gatehouse's own share can be read off: every counted request is
    // in the whole-request histogram, only forwarded ones in the upstream one.
    assert_eq!(sample(&m, "gatehouse_request_duration_seconds_count"), 11.0);
    assert_eq!(sample(&m, "gatehouse_upstream_duration_seconds_count"), 4.0);
    assert_eq!(
        sample(&m, "gatehouse_request_duration_seconds_bucket{le=\"+Inf\"}"),
        11.0
    );
    assert!(sample(&m, "gatehouse_request_duration_seconds_sum") > 0.0);
    assert!(
        sample(&m, "gatehouse_request_duration_seconds_sum")
            >= sample(&m, "gatehouse_upstream_duration_seconds_sum")
    );
    // Ops requests are not proxied requests.
    let again = parse_metrics(&gh.get("/metrics").await.text());
    assert_eq!(
        sample(&again, "gatehouse_request_duration_seconds_count"),
        11.0
    );
}

#[tokio::test]
async fn metrics_count_upstream_errors_by_kind() {
    let gh = Gatehouse::start_with(dead_addr(), ROUTES, &[]).await;
    gh.get("/public/a").await.expect(502);
    gh.get("/public/b").await.expect(502);
    let garbage = raw_upstream(|_| b"garbage\r\n\r\n".to_vec()).await;
    let gh2 = Gatehouse::start_with(garbage, ROUTES, &[]).await;
    gh2.get("/public/a").await.expect(502);

    let m = parse_metrics(&gh.get("/metrics").await.text());
    assert_eq!(
        sample(&m, "gatehouse_upstream_errors_total{kind=\"connect\"}"),
        2.0
    );
    assert_eq!(
        sample(&m, &requests("/public/**", "read", "upstream_error")),
        2.0
    );
    let m = parse_metrics(&gh2.get("/metrics").await.text());
    assert_eq!(
        sample(&m, "gatehouse_upstream_errors_total{kind=\"broken\"}"),
        1.0
    );
}

#[tokio::test]
async fn an_admin_listener_takes_the_ops_endpoints_off_the_main_one() {
    let extra = format!(
        "[[routes]]\npath = \"/metrics\"\naccess = \"public\"\n\n\
         [[routes]]\npath = \"/healthz\"\naccess = \"public\"\n{ROUTES}"
    );
    let echo = gatehouse::demo::echo_upstream().await.unwrap();
    let gh = Gatehouse::launch(Setup {
        admin: true,
        env: &[("GATEHOUSE_SERVER_ADMIN_LISTEN", "127.0.0.1:0")],
        ..Setup::new(echo, &extra)
    })
    .await;

    // The main listener forwards these paths like any other.
    for path in ["/metrics", "/healthz"] {
        let r = gh.get(path).await;
        r.expect(200);
        assert_eq!(r.json()["path"], path, "{}", r.text());
    }
    // /readyz has no rule, so the default denies it.
    gh.get("/readyz").await.expect_error(403, "FORBIDDEN");

    // The admin listener serves ops, and nothing else.
    gh.admin_send(Method::GET, "/healthz").await.expect(200);
    gh.admin_send(Method::GET, "/readyz").await.expect(200);
    gh.admin_send(Method::POST, "/readyz").await.expect(405);
    gh.admin_send(Method::GET, "/public/x")
        .await
        .expect_error(404, "NOT_FOUND");
    let r = gh.admin_send(Method::GET, "/metrics").await;
    r.expect(200);
    let m = parse_metrics(&r.text());
    assert_eq!(sample(&m, &requests("/metrics", "read", "forwarded")), 1.0);
    assert_eq!(sample(&m, &requests("default", "read", "forbidden")), 1.0);
}

/// Shutdown: the listener closes at once, the in-flight request still completes, and the
/// server returns once it has.
#[tokio::test]
async fn shutdown_drains_in_flight_requests() {
    let (upstream, mut gate) = gated_upstream().await;
    let gh = Gatehouse::start_with(upstream, ROUTES, &[]).await;
    let addr = gh.addr;
    let in_flight = tokio::spawn(async move {
        raw_exchange(
            addr,
            b"GET /public/slow HTTP/1.1\r\nHost: gh\r\nConnection: close\r\n\r\n",
        )
        .await
    });
    gate.arrived().await;

    let stopped = tokio::spawn(gh.stop());
    wait_until_refused(addr).await;
    assert!(
        !stopped.is_finished(),
        "stopped before the request finished"
    );

    gate.release_one();
    let r = in_flight.await.unwrap();
    r.expect(200);
    assert_eq!(r.text(), "done");
    stopped.await.unwrap();
}

/// Past `server.shutdown_timeout` the server stops waiting and closes what is left.
#[tokio::test]
async fn shutdown_gives_up_after_the_drain_deadline() {
    let (upstream, mut gate) = gated_upstream().await;
    let gh = Gatehouse::start_with(
        upstream,
        ROUTES,
        &[("GATEHOUSE_SERVER_SHUTDOWN_TIMEOUT", "300ms")],
    )
    .await;
    let addr = gh.addr;
    let in_flight = crate::harness::request_in_flight(addr, "/public/stuck");
    gate.arrived().await;

    let started = std::time::Instant::now();
    gh.stop().await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(4),
        "stop took {took:?}"
    );
    // The stuck request's connection was closed rather than left to the upstream timeout.
    let answer = tokio::time::timeout(Duration::from_secs(3), in_flight)
        .await
        .expect("the stuck connection was left open after the deadline")
        .unwrap();
    assert!(
        !answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
}

/// Polls until new connections are refused: the listener has closed.
async fn wait_until_refused(addr: std::net::SocketAddr) {
    for _ in 0..500 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{addr} still accepts connections");
}

/// Issue 8: the auth endpoints are counted like every other request, each under its own
/// route label (the endpoint's default path), successes as `served` and refusals by their
/// outcome; none of it lands under the policy's `default`.
#[tokio::test]
async fn metrics_count_auth_endpoints_under_their_own_labels() {
    let gh = Gatehouse::start(ROUTES, &[]).await;
    gh.register("counted@example.com").await;
    gh.login("counted@example.com", crate::harness::PASSWORD)
        .await
        .expect(200);
    gh.login("counted@example.com", "not the password")
        .await
        .expect_error(401, "INVALID_CREDENTIALS");
    gh.get("/auth/login").await.expect(405);
    gh.get("/auth/admin/users")
        .await
        .expect_error(401, "TOKEN_MISSING");
    gh.get("/auth/no-such-endpoint").await.expect(404);

    let m = parse_metrics(&gh.get("/metrics").await.text());
    for (key, want) in [
        (requests("auth:/register", "write", "served"), 1.0),
        (requests("auth:/login", "write", "served"), 1.0),
        (requests("auth:/login", "write", "unauthenticated"), 1.0),
        (requests("auth:/login", "read", "rejected"), 1.0),
        (requests("auth:/admin", "read", "unauthenticated"), 1.0),
        (requests("auth:other", "read", "rejected"), 1.0),
        (requests("default", "write", "unauthenticated"), 0.0),
        (requests("default", "read", "rejected"), 0.0),
    ] {
        assert_eq!(sample(&m, &key), want, "{key}");
    }
    // Auth latency (argon2, store writes) has its own histogram, so the proxy's
    // `request - upstream` overhead stays readable.
    assert_eq!(
        sample(&m, "gatehouse_auth_request_duration_seconds_count"),
        6.0
    );
    assert_eq!(sample(&m, "gatehouse_request_duration_seconds_count"), 0.0);
}

/// A renamed endpoint keeps its label, so dashboards survive `[auth.paths]`.
#[tokio::test]
async fn a_renamed_auth_endpoint_keeps_its_label() {
    let extra = format!("{ROUTES}\n[auth.paths]\nlogin = \"/signin\"\n");
    let gh = Gatehouse::start(&extra, &[]).await;
    gh.register("renamed@example.com").await;
    gh.json(
        Method::POST,
        "/auth/signin",
        None,
        serde_json::json!({"email": "renamed@example.com", "password": crate::harness::PASSWORD}),
    )
    .await
    .expect(200);
    // The old path is no endpoint any more.
    gh.login("renamed@example.com", crate::harness::PASSWORD)
        .await
        .expect(404);
    let m = parse_metrics(&gh.get("/metrics").await.text());
    assert_eq!(sample(&m, &requests("auth:/login", "write", "served")), 1.0);
    assert_eq!(
        sample(&m, &requests("auth:other", "write", "rejected")),
        1.0
    );
}

/// What `tracing` writes while it is this thread's subscriber. The harness runs gatehouse on
/// the test's own current-thread runtime, so the request path's events land here, and other
/// tests' (on their own threads) do not.
#[derive(Clone, Default)]
pub struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

impl Captured {
    /// Captures INFO and above as JSON lines until the guard drops.
    pub fn install(&self) -> tracing::subscriber::DefaultGuard {
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_max_level(tracing::Level::INFO)
            .with_writer(self.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// The `gatehouse::access` lines.
    pub fn access_lines(&self) -> Vec<serde_json::Value> {
        self.text()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| e["target"] == "gatehouse::access")
            .collect()
    }
}

/// Issue 8: every request the gate answers gets an access-log line, a successful login
/// included, with the normalised path (never the query), the route label, the verified
/// user, the latency and the body size.
///
/// tracing caches each call site's interest process-wide, and a scoped subscriber only
/// counts for the thread that installed it: with other tests logging on other threads, a
/// call site first reached there can be skipped here. So the scenario runs in a child
/// process that executes only this test.
#[tokio::test]
async fn every_answered_request_is_access_logged() {
    const CHILD: &str = "IT_ACCESS_LOG_SCENARIO_CHILD";
    if std::env::var_os(CHILD).is_none() {
        crate::harness::run_alone("ops::every_answered_request_is_access_logged", CHILD).await;
        return;
    }
    let captured = Captured::default();
    let _guard = captured.install();
    let gh = Gatehouse::start(ROUTES, &[("GATEHOUSE_LOG_ACCESS", "true")]).await;
    let user_id = gh.register("logged@example.com").await["user"]["id"].clone();
    let body =
        serde_json::json!({"email": "logged@example.com", "password": crate::harness::PASSWORD});
    let access = gh
        .send(
            Method::POST,
            "/auth/login",
            &[
                ("content-type", "application/json"),
                ("x-request-id", "login-ok"),
            ],
            Bytes::from(body.to_string()),
        )
        .await
        .expect(200)
        .json()["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    gh.get_with(
        "/auth/me",
        &[("authorization", &format!("Bearer {access}"))],
    )
    .await
    .expect(200);
    gh.login("logged@example.com", "not the password")
        .await
        .expect(401);
    let reader = format!("Bearer {}", gh.token("u-logged", &["reader"]));
    gh.get_with(
        "/api//items/./x?token=query-secret",
        &[("authorization", &reader), ("x-request-id", "proxied")],
    )
    .await
    .expect(200);
    gh.get("/metrics").await.expect(200);

    let lines = captured.access_lines();
    let find = |route: &str, status: u64| {
        lines
            .iter()
            .find(|l| l["route"] == route && l["status"] == status)
            .unwrap_or_else(|| panic!("no access line for {route} {status}:\n{lines:#?}"))
    };
    let login = find("auth:/login", 200);
    assert_eq!(login["request_id"], "login-ok", "{login}");
    assert_eq!(login["method"], "POST");
    assert_eq!(login["path"], "/auth/login");
    // The endpoint names the user it served.
    assert_eq!(login["user"], user_id, "{login}");
    assert!(login["micros"].as_u64().is_some(), "{login}");
    assert!(login["bytes"].as_u64().is_some_and(|b| b > 0), "{login}");
    assert!(
        login["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with("127.0.0.1:"))
    );
    assert_eq!(find("auth:/login", 401)["user"], "");
    assert_eq!(find("auth:/register", 201)["user"], user_id);
    let me = find("auth:/me", 200);
    assert_eq!(
        (&me["user"], &me["path"]),
        (&user_id, &"/auth/me".into()),
        "{me}"
    );
    let proxied = find("/api/**", 200);
    assert_eq!(proxied["request_id"], "proxied");
    assert_eq!(proxied["path"], "/api/items/x", "{proxied}");
    assert_eq!(proxied["user"], "u-logged");
    // Ops endpoints are not access-logged; nor is a query string, anywhere.
    assert_eq!(lines.len(), 5, "{lines:#?}");
    // Audit events carry the request id of the request that caused them.
    let audit: Vec<serde_json::Value> = captured
        .text()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["target"] == "gatehouse::audit")
        .collect();
    let login_ok = audit
        .iter()
        .find(|e| e["event"] == "login" && e["outcome"] == "ok")
        .unwrap_or_else(|| panic!("no login audit event: {audit:#?}"));
    assert_eq!(login_ok["request_id"], "login-ok", "{login_ok}");
    assert_eq!(login_ok["user_id"], user_id, "{login_ok}");
    assert!(
        audit
            .iter()
            .all(|e| e["request_id"].as_str().is_some_and(|id| !id.is_empty())),
        "an audit event without a request id: {audit:#?}"
    );
    assert!(
        !captured.text().contains("query-secret"),
        "{}",
        captured.text()
    );
}
