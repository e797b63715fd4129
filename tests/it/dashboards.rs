//! The Grafana dashboard (`deploy/grafana/gatehouse.json`) and the Prometheus alerts
//! (`deploy/prometheus/alerts.yaml`) name only metrics gatehouse really exports: every
//! `gatehouse_…` identifier in either file must be a metric family (or a histogram's
//! `_bucket`/`_sum`/`_count` series) in the `/metrics` output of a running server.
//!
//! Labelled counters only appear once a label set is used, so the test first makes the
//! traffic that creates them (a login, a refused token, a rate-limited login, an upstream
//! error, a mail), and runs a second gatehouse with TLS for the certificate-expiry gauge.

use std::collections::BTreeSet;

use http::Method;
use rcgen::{CertificateParams, KeyPair};

use crate::harness::{Gatehouse, PASSWORD, ROUTES, Setup, dead_addr};

const DASHBOARD: &str = include_str!("../../deploy/grafana/gatehouse.json");
const ALERTS: &str = include_str!("../../deploy/prometheus/alerts.yaml");

/// Every `gatehouse_[a-z0-9_]+` identifier in `text` that starts a word.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(at) = text[from..].find("gatehouse_") {
        let start = from + at;
        let boundary = start == 0 || {
            let c = bytes[start - 1];
            !(c.is_ascii_alphanumeric() || c == b'_')
        };
        let end = start
            + text[start..]
                .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
                .unwrap_or(text.len() - start);
        if boundary {
            names.insert(text[start..end].to_string());
        }
        from = end;
    }
    names
}

/// The metric families of a Prometheus text exposition, with their types.
fn families(exposition: &str) -> Vec<(String, String)> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            Some((parts.next()?.to_string(), parts.next()?.to_string()))
        })
        .collect()
}

fn exported(name: &str, families: &[(String, String)]) -> bool {
    families.iter().any(|(family, kind)| {
        family == name
            || (kind == "histogram"
                && ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|suffix| name.strip_suffix(suffix) == Some(family.as_str())))
    })
}

#[test]
fn the_scanner_finds_metric_names() {
    let names = metric_names(
        "rate(gatehouse_a_total{x=\"1\"}[5m]) + my_gatehouse_b, gatehouse::audit gatehouse_c_bucket",
    );
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    assert_eq!(names, ["gatehouse_a_total", "gatehouse_c_bucket"]);
}

#[tokio::test]
async fn dashboard_and_alerts_use_only_exported_metrics() {
    let dashboard: serde_json::Value = serde_json::from_str(DASHBOARD).unwrap();
    assert!(dashboard["panels"].as_array().is_some_and(|p| p.len() > 5));
    let mut wanted = metric_names(DASHBOARD);
    wanted.extend(metric_names(ALERTS));
    assert!(wanted.len() >= 12, "{wanted:?}");

    // Plain HTTP, an upstream that is not there, one login a minute, mails logged.
    let gh = Gatehouse::start_with(
        dead_addr(),
        ROUTES,
        &[
            ("GATEHOUSE_RATE_LIMITS_LOGIN", "2/1m"),
            ("GATEHOUSE_EMAIL_MODE", "log"),
        ],
    )
    .await;
    gh.register("metrics@example.com").await;
    gh.login("metrics@example.com", PASSWORD).await.expect(200);
    gh.login("metrics@example.com", "wrong password")
        .await
        .expect(401);
    gh.login("metrics@example.com", PASSWORD)
        .await
        .expect_error(429, "RATE_LIMITED");
    gh.get_with("/api/x", &[("authorization", "Bearer not.a.token")])
        .await
        .expect_error(401, "TOKEN_INVALID");
    gh.get("/public/x").await.expect(502);
    gh.json(
        Method::POST,
        "/auth/forgot-password",
        None,
        serde_json::json!({"email": "metrics@example.com"}),
    )
    .await
    .expect(202);
    let mut found = families(&gh.get("/metrics").await.expect(200).text());

    // TLS on the main listener, metrics on a plain admin listener.
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let (cert_path, key_path) = (
        cert_path.display().to_string(),
        key_path.display().to_string(),
    );
    let echo = gatehouse::demo::echo_upstream().await.unwrap();
    let tls = Gatehouse::launch(Setup {
        admin: true,
        env: &[
            ("GATEHOUSE_SERVER_ADMIN_LISTEN", "127.0.0.1:0"),
            ("GATEHOUSE_SERVER_TLS_CERT", cert_path.as_str()),
            ("GATEHOUSE_SERVER_TLS_KEY", key_path.as_str()),
        ],
        ..Setup::new(echo, ROUTES)
    })
    .await;
    let text = tls
        .admin_send(Method::GET, "/metrics")
        .await
        .expect(200)
        .text();
    assert!(
        text.contains(
            "gatehouse_tls_certificate_expiry_timestamp_seconds{certificate=\"listener\"}"
        ),
        "{text}"
    );
    found.extend(families(&text));

    let missing: Vec<&String> = wanted.iter().filter(|n| !exported(n, &found)).collect();
    assert!(
        missing.is_empty(),
        "the dashboard or alerts name metrics that /metrics does not have: {missing:?}"
    );
    gh.stop().await;
    tls.stop().await;
}
