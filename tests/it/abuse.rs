//! Abuse resistance: per-IP rate limits for every class, spoofed and trusted forwarding
//! headers, slowloris, oversized heads, smuggling-shaped requests, h2c upgrades.

use std::time::Duration;

use bytes::Bytes;
use http::Method;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{Gatehouse, ROUTES, Reply};

#[track_caller]
fn expect_limited(reply: &Reply, limit: &str) {
    reply.expect_error(429, "RATE_LIMITED");
    let retry: u64 = reply.header("retry-after").unwrap().parse().unwrap();
    assert!(retry >= 1, "{reply:?}");
    assert_eq!(reply.header("ratelimit-limit"), Some(limit), "{reply:?}");
    assert_eq!(reply.header("ratelimit-remaining"), Some("0"));
    assert!(reply.header("ratelimit-reset").is_some());
}

#[tokio::test]
async fn every_auth_class_is_limited_per_ip() {
    let gh = Gatehouse::start(
        ROUTES,
        &[
            ("GATEHOUSE_RATE_LIMITS_LOGIN", "2/1h"),
            ("GATEHOUSE_RATE_LIMITS_REGISTER", "2/1h"),
            ("GATEHOUSE_RATE_LIMITS_REFRESH", "2/1h"),
            ("GATEHOUSE_RATE_LIMITS_FORGOT_PASSWORD", "2/1h"),
        ],
    )
    .await;
    let cases = [
        (
            "/auth/login",
            json!({"email": "a@example.com", "password": "whatever it is"}),
        ),
        (
            "/auth/register",
            json!({"email": "not-an-email", "password": "x"}),
        ),
        ("/auth/refresh", json!({"refresh_token": "nope"})),
        ("/auth/forgot-password", json!({"email": "a@example.com"})),
    ];
    for (path, body) in cases {
        for _ in 0..2 {
            let reply = gh.json(Method::POST, path, None, body.clone()).await;
            assert_ne!(
                reply.status,
                429,
                "{path} limited too early: {}",
                reply.text()
            );
        }
        expect_limited(&gh.json(Method::POST, path, None, body.clone()).await, "2");
    }
    let metrics = gh.get("/metrics").await.text();
    for class in ["login", "register", "refresh", "forgot_password"] {
        assert!(
            metrics.contains(&format!(
                "gatehouse_rate_limited_total{{class=\"{class}\"}} 1"
            )),
            "{class} not counted:\n{metrics}"
        );
    }
}

#[tokio::test]
async fn spoofed_forwarded_for_does_not_reset_a_limit() {
    let gh = Gatehouse::start(ROUTES, &[("GATEHOUSE_RATE_LIMITS_PROXY", "3/1h")]).await;
    for _ in 0..3 {
        gh.get("/public/x").await.expect(200);
    }
    expect_limited(&gh.get("/public/x").await, "3");
    // A client that is not a trusted proxy cannot claim to be someone else.
    for spoof in ["203.0.113.7", "198.51.100.1, 203.0.113.8"] {
        expect_limited(
            &gh.get_with("/public/x", &[("x-forwarded-for", spoof)])
                .await,
            "3",
        );
    }
}

#[tokio::test]
async fn a_trusted_proxys_forwarded_for_is_believed() {
    let gh = Gatehouse::start(
        ROUTES,
        &[
            ("GATEHOUSE_RATE_LIMITS_PROXY", "2/1h"),
            ("GATEHOUSE_SERVER_TRUSTED_PROXIES", "127.0.0.1/32"),
        ],
    )
    .await;
    let client_a = [("x-forwarded-for", "203.0.113.7")];
    for _ in 0..2 {
        gh.get_with("/public/x", &client_a).await.expect(200);
    }
    expect_limited(&gh.get_with("/public/x", &client_a).await, "2");
    // Another client behind the same proxy has its own budget; IPv6 clients share per /64.
    gh.get_with("/public/x", &[("x-forwarded-for", "203.0.113.8")])
        .await
        .expect(200);
    for host in ["2001:db8:1:2::1", "2001:db8:1:2::2"] {
        gh.get_with("/public/x", &[("x-forwarded-for", host)])
            .await
            .expect(200);
    }
    expect_limited(
        &gh.get_with("/public/x", &[("x-forwarded-for", "2001:db8:1:2:ffff::9")])
            .await,
        "2",
    );
}

#[tokio::test]
async fn a_route_can_carry_its_own_limit() {
    let extra = r#"
[[routes]]
path = "/search/**"
access = "public"
rate_limit = "2/1h"
"#;
    let gh = Gatehouse::start(extra, &[]).await;
    gh.get("/search/a").await.expect(200);
    gh.get("/search/b").await.expect(200);
    expect_limited(&gh.get("/search/c").await, "2");
    let metrics = gh.get("/metrics").await.text();
    assert!(
        metrics.contains(r#"gatehouse_rate_limited_total{class="route"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn slowloris_is_cut_while_normal_clients_are_served() {
    let gh = Gatehouse::start(ROUTES, &[("GATEHOUSE_SERVER_HEADER_READ_TIMEOUT", "300ms")]).await;
    let mut slow = TcpStream::connect(gh.addr).await.unwrap();
    slow.write_all(b"GET /public/x HTTP/1.1\r\nHost: a\r\nX-Slow: ")
        .await
        .unwrap();
    // A normal client is served meanwhile.
    gh.get("/public/x").await.expect(200);
    // The slow one is closed by the server (EOF or reset), bounded by a safety net.
    let mut buf = [0u8; 1024];
    let outcome = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match slow.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {} // hyper may answer 408 before closing
            }
        }
    })
    .await;
    assert!(outcome.is_ok(), "a slowloris connection was kept open");
}

#[tokio::test]
async fn oversized_heads_are_refused() {
    let gh = Gatehouse::start(ROUTES, &[]).await;
    let long_uri = format!("/public/{}", "a".repeat(9000));
    gh.get(&long_uri).await.expect_error(414, "URI_TOO_LONG");
    let big = "b".repeat(20_000);
    let reply = gh
        .raw(format!(
            "GET /public/x HTTP/1.1\r\nHost: a\r\nX-Big: {big}\r\nConnection: close\r\n\r\n"
        ))
        .await;
    assert_eq!(reply.status.as_u16(), 431, "{reply:?}");
}

#[tokio::test]
async fn smuggling_shaped_requests_are_never_forwarded_ambiguously() {
    let gh = Gatehouse::start(ROUTES, &[]).await;
    // Content-Length and Transfer-Encoding together: hyper frames by chunked, drops the
    // length and closes the connection, so the "smuggled" request is never read.
    let mut stream = TcpStream::connect(gh.addr).await.unwrap();
    stream
        .write_all(
            b"POST /public/x HTTP/1.1\r\nHost: a\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /blocked/secret HTTP/1.1\r\nHost: a\r\n\r\n",
        )
        .await
        .unwrap();
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut all))
        .await
        .expect("connection left open")
        .unwrap();
    let text = String::from_utf8_lossy(&all);
    assert_eq!(
        text.matches("HTTP/1.1 ").count(),
        1,
        "more than one response: {text}"
    );
    assert!(!text.contains("/blocked/secret"), "{text}");
    assert!(!text.contains("content-length\":[\"40\"]"), "{text}");

    // Conflicting Content-Length values and a non-chunked Transfer-Encoding: 400.
    for request in [
        "POST /public/x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        "POST /public/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
    ] {
        let reply = gh.raw(request).await;
        assert_eq!(reply.status.as_u16(), 400, "{request:?}: {reply:?}");
    }

    // An h2c upgrade is refused, not forwarded.
    gh.get_with(
        "/public/x",
        &[
            ("upgrade", "h2c"),
            ("connection", "upgrade, http2-settings"),
            ("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA"),
        ],
    )
    .await
    .expect_error(400, "INVALID_REQUEST");
}

#[tokio::test]
async fn http11_requests_need_exactly_one_host() {
    let gh = Gatehouse::start(ROUTES, &[]).await;
    for request in [
        "GET /public/x HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
        "GET /public/x HTTP/1.1\r\nConnection: close\r\n\r\n",
    ] {
        gh.raw(request).await.expect_error(400, "INVALID_REQUEST");
    }
    gh.raw("GET /public/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .expect(200);
}

#[tokio::test]
async fn method_tricks_are_refused() {
    let gh = Gatehouse::start(ROUTES, &[]).await;
    let reader = gh.token("r", &["reader"]);
    let auth = format!("Bearer {reader}");
    // A lower-case method would miss the DELETE-only rule and reach a case-folding upstream.
    gh.raw(format!(
        "delete /api/items/1 HTTP/1.1\r\nHost: a\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n"
    ))
    .await
    .expect_error(400, "INVALID_REQUEST");
    // Method-override headers would run DELETE where the policy decided on POST/GET, in
    // every spelling a framework might fold to the one it reads.
    for header in [
        "x-http-method-override",
        "X.HTTP.Method.Override",
        "X-HTTP-Method-Override",
        "X_HTTP_Method_Override",
        "x-http-method",
        "X_HTTP_METHOD",
        "x-method-override",
        "x_method_override",
    ] {
        gh.get_with(
            "/api/items/1",
            &[("authorization", &auth), (header, "DELETE")],
        )
        .await
        .expect_error(400, "INVALID_REQUEST");
    }
    // Override parameters in the query (Express method-override, Laravel, Symfony, Rails).
    for query in [
        "_method=DELETE",
        "a=1&_METHOD=DELETE",
        "__method=DELETE",
        "_http_method=DELETE",
        "%5Fmethod=DELETE",
        "_method[]=DELETE",
        ".method=DELETE",
        // PHP reads a name up to its NUL byte; qs and Rack strip leading brackets.
        "_method%00=DELETE",
        "[_method]=DELETE",
        // Classic ASP.NET decodes %uXXXX.
        "X%u002DHTTP-Method-Override=DELETE",
    ] {
        gh.send(
            Method::POST,
            &format!("/api/items/1?{query}"),
            &[("authorization", &auth)],
            Bytes::new(),
        )
        .await
        .expect_error(400, "INVALID_REQUEST");
    }
    // Ordinary parameters that mention a method pass.
    gh.get_with(
        "/api/items/1?payment_method=card&method=x",
        &[("authorization", &auth)],
    )
    .await
    .expect(200);
}

#[tokio::test]
async fn foreign_client_address_and_url_override_headers_never_reach_the_upstream() {
    let gh = Gatehouse::start(
        ROUTES,
        &[("GATEHOUSE_SERVER_TRUSTED_PROXIES", "127.0.0.1/32")],
    )
    .await;
    let sent = [
        ("x-real-ip", "127.0.0.1"),
        ("forwarded", "for=10.0.0.1;host=admin.internal"),
        ("true-client-ip", "10.0.0.1"),
        ("cf-connecting-ip", "10.0.0.1"),
        ("x-original-url", "/admin"),
        ("x-rewrite-url", "/admin"),
        ("x-forwarded-prefix", "/admin"),
        ("x-original-uri", "/admin"),
        ("x_original_uri", "/admin"),
        ("x-forwarded-uri", "/admin"),
        ("x-forwarded-path", "/admin"),
        ("x-envoy-original-path", "/admin"),
        ("request-uri", "/admin"),
        ("x-original-method", "DELETE"),
        ("X_Original_Method", "DELETE"),
        ("x_forwarded_for", "10.9.9.9"),
        ("X_Real_IP", "10.9.9.9"),
        // PHP turns `.` into `_` as it does `-`: these would pose as the real headers.
        ("X.Original.URL", "/admin"),
        ("X.Real.IP", "10.9.9.9"),
        ("X.Auth.Roles", "admin"),
        ("X.Auth.User.Id", "1"),
    ];
    // Even from a trusted proxy: gatehouse does not maintain these, so nobody may set them.
    let reply = gh.get_with("/public/x", &sent).await;
    reply.expect(200);
    for (name, _) in sent {
        assert_eq!(
            reply.upstream_header(&name.to_ascii_lowercase()),
            None,
            "{name} reached the upstream"
        );
    }
}

/// A client that connects and sends nothing (or only part of the HTTP/2 preface) is closed
/// at the header timeout instead of holding a connection slot forever.
#[tokio::test]
async fn silent_connections_do_not_hold_a_slot() {
    let gh = Gatehouse::start(ROUTES, &[("GATEHOUSE_SERVER_HEADER_READ_TIMEOUT", "300ms")]).await;
    for opening in [&b""[..], b"PRI * HTTP/2.0\r\n"] {
        let mut stream = TcpStream::connect(gh.addr).await.unwrap();
        stream.write_all(opening).await.unwrap();
        let mut buf = [0u8; 64];
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "a connection that sent {opening:?} was kept open"
        );
    }
    gh.get("/public/x").await.expect(200);
}

/// HTTP/2: a `host` header that disagrees with :authority is refused; one that agrees passes.
#[tokio::test]
async fn http2_host_must_match_authority() {
    use http_body_util::{BodyExt, Empty};
    let gh = Gatehouse::start(ROUTES, &[]).await;
    let client: hyper_util::client::legacy::Client<_, Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let authority = gh.addr.to_string();
    for (host, status) in [("evil.example", 400), (authority.as_str(), 200)] {
        let request = http::Request::get(format!("http://{}/public/x", gh.addr))
            .header("host", host)
            .body(Empty::new())
            .unwrap();
        let response = client.request(request).await.unwrap();
        assert_eq!(response.version(), http::Version::HTTP_2);
        let got = response.status().as_u16();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            got,
            status,
            "host {host}: {}",
            String::from_utf8_lossy(&body)
        );
    }
}
