//! The proxy path (issue 2, points 4 and 8): what reaches the upstream, what comes back, and
//! how upstream failures are reported.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::harness::{Gatehouse, ROUTES, dead_addr, raw_upstream, read_head, tcp_upstream};

#[tokio::test]
async fn method_path_query_and_body_are_forwarded() {
    let gh = Gatehouse::start(ROUTES, &[]).await;
    for method in ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PURGE"] {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let r = gh
            .send(
                method.clone(),
                "/public/items/7?a=1&b=%2F&c=..%2Fx&d",
                &[("content-type", "text/plain"), ("x-app", "kept")],
                Bytes::from_static(b"hello body"),
            )
            .await;
        r.expect(200);
        let echo = r.json();
        assert_eq!(echo["method"], method.as_str(), "{}", r.text());
        assert_eq!(echo["path"], "/public/items/7", "{}", r.text());
        // The query is the client's, byte for byte: it is not part of the normalised path.
        assert_eq!(echo["query"], "a=1&b=%2F&c=..%2Fx&d", "{}", r.text());
        assert_eq!(echo["body_bytes"], 10, "{}", r.text());
        assert_eq!(r.upstream_header("x-app").as_deref(), Some("kept"));
        assert_eq!(
            r.upstream_header("content-type").as_deref(),
            Some("text/plain")
        );
    }
}

#[tokio::test]
async fn upstream_base_path_is_prefixed() {
    let echo = gatehouse::demo::echo_upstream().await.unwrap();
    let gh = Gatehouse::start_with(
        echo,
        ROUTES,
        &[("GATEHOUSE_UPSTREAM_URL", &format!("http://{echo}/base/"))],
    )
    .await;
    let r = gh.get("/public/x?q=1").await;
    r.expect(200);
    assert_eq!(r.json()["path"], "/base/public/x", "{}", r.text());
    assert_eq!(r.json()["query"], "q=1");
}

#[tokio::test]
async fn identity_headers_come_from_the_token_only() {
    let gh = Gatehouse::start(ROUTES, &[]).await;
    let token = gh.token("alice", &["reader", "creator"]);
    let auth = format!("Bearer {token}");
    let spoofed = [
        ("authorization", auth.as_str()),
        ("X-Auth-User-Id", "admin"),
        ("x-auth-user-id", "root"),
        ("X-AUTH-ROLES", "admin"),
        ("x-auth-email", "boss@example.com"),
        ("x_auth_user_id", "admin"),
        ("X_Auth_Roles", "admin"),
        ("x_auth_email", "boss@example.com"),
        ("x-auth-session-id", "stolen"),
        ("x-auth-anything", "1"),
        ("x_auth_anything_else", "1"),
        ("x-authx", "not under the prefix"),
    ];
    let r = gh
        .send(Method::GET, "/api/items", &spoofed, Bytes::new())
        .await;
    r.expect(200);
    assert_eq!(
        r.upstream_header("x-auth-user-id").as_deref(),
        Some("alice")
    );
    assert_eq!(r.upstream_header_count("x-auth-user-id"), 1, "{}", r.text());
    assert_eq!(
        r.upstream_header("x-auth-email").as_deref(),
        Some("alice@example.com")
    );
    assert_eq!(
        r.upstream_header("x-auth-roles").as_deref(),
        Some("reader,creator")
    );
    assert_eq!(r.upstream_header_count("x-auth-roles"), 1, "{}", r.text());
    for gone in [
        "x_auth_user_id",
        "x_auth_roles",
        "x_auth_email",
        "x-auth-session-id",
        "x-auth-anything",
        "x_auth_anything_else",
    ] {
        assert_eq!(r.upstream_header(gone), None, "{gone} reached the upstream");
    }
    assert_eq!(
        r.upstream_header("x-authx").as_deref(),
        Some("not under the prefix")
    );

    // Anonymous on a public route: nothing identity-shaped survives at all.
    let r = gh
        .send(Method::GET, "/public/x", &spoofed[1..], Bytes::new())
        .await;
    r.expect(200);
    let headers = r.json()["headers"].as_object().unwrap().clone();
    let leaked: Vec<&String> = headers
        .keys()
        .filter(|k| k.starts_with("x-auth-") || k.starts_with("x_auth_"))
        .collect();
    assert!(leaked.is_empty(), "identity headers leaked: {leaked:?}");
}

/// The `_` spellings and mixed case exactly as they appear on the wire, and a header line
/// repeated, which some client libraries fold or refuse.
#[tokio::test]
async fn spoofed_identity_headers_are_stripped_on_the_wire() {
    let gh = Gatehouse::start(ROUTES, &[]).await;
    let token = gh.token("alice", &["reader"]);
    let r = gh
        .raw(format!(
            "GET /api/items HTTP/1.1\r\nHost: gh\r\nAuthorization: Bearer {token}\r\n\
             X_Auth_User_Id: admin\r\nX-Auth-User-Id: admin\r\nX-Auth-User-Id: admin2\r\n\
             x_AUTH_roles: admin\r\nX-AUTH_EMAIL: boss@example.com\r\nConnection: close\r\n\r\n"
        ))
        .await;
    r.expect(200);
    assert_eq!(
        r.upstream_header("x-auth-user-id").as_deref(),
        Some("alice")
    );
    assert_eq!(r.upstream_header_count("x-auth-user-id"), 1, "{}", r.text());
    assert_eq!(r.upstream_header("x-auth-roles").as_deref(), Some("reader"));
    assert_eq!(
        r.upstream_header("x-auth-email").as_deref(),
        Some("alice@example.com")
    );
    for gone in ["x_auth_user_id", "x_auth_roles", "x-auth_email"] {
        assert_eq!(r.upstream_header(gone), None, "{gone} reached the upstream");
    }
}

#[tokio::test]
async fn configured_identity_header_names_are_set_and_stripped() {
    let extra = format!(
        "{ROUTES}\n[headers]\nuser_id = \"X-User\"\nemail = \"X-Mail\"\nroles = \"X-Groups\"\n\
         session_id = \"X-Session\"\nstrip_prefix = \"X-Internal-\"\n"
    );
    let gh = Gatehouse::start(&extra, &[]).await;
    let token = gh.token("bob", &["admin"]);
    let auth = format!("Bearer {token}");
    let r = gh
        .send(
            Method::GET,
            "/api/admin/x",
            &[
                ("authorization", &auth),
                ("X-USER", "mallory"),
                ("x_user", "mallory"),
                ("x-groups", "root"),
                ("X_Mail", "m@example.com"),
                ("x_session", "stolen"),
                ("x-internal-flag", "1"),
                ("X_Internal_Other", "1"),
            ],
            Bytes::new(),
        )
        .await;
    r.expect(200);
    assert_eq!(r.upstream_header("x-user").as_deref(), Some("bob"));
    assert_eq!(r.upstream_header_count("x-user"), 1, "{}", r.text());
    assert_eq!(r.upstream_header("x-groups").as_deref(), Some("admin"));
    assert_eq!(
        r.upstream_header("x-mail").as_deref(),
        Some("bob@example.com")
    );
    assert_eq!(
        r.upstream_header("x-session").as_deref(),
        Some("test-session")
    );
    for gone in [
        "x_user",
        "x_mail",
        "x_session",
        "x-internal-flag",
        "x_internal_other",
        "x-auth-user-id",
    ] {
        assert_eq!(r.upstream_header(gone), None, "{gone} reached the upstream");
    }
}

#[tokio::test]
async fn hop_by_hop_request_headers_are_removed() {
    let gh = Gatehouse::start(ROUTES, &[]).await;
    let r = gh
        .send(
            Method::GET,
            "/public/x",
            &[
                ("connection", "keep-alive, X-Hop, x-other-hop"),
                ("x-hop", "1"),
                ("x-other-hop", "1"),
                ("keep-alive", "timeout=5"),
                ("te", "trailers"),
                ("trailer", "x-checksum"),
                ("proxy-authorization", "Basic dXNlcjpwYXNz"),
                ("proxy-connection", "keep-alive"),
                ("x-end-to-end", "kept"),
            ],
            Bytes::new(),
        )
        .await;
    r.expect(200);
    for gone in [
        "connection",
        "x-hop",
        "x-other-hop",
        "keep-alive",
        "te",
        "trailer",
        "proxy-authorization",
        "proxy-connection",
    ] {
        assert_eq!(r.upstream_header(gone), None, "{gone} reached the upstream");
    }
    assert_eq!(r.upstream_header("x-end-to-end").as_deref(), Some("kept"));
}

#[tokio::test]
async fn hop_by_hop_response_headers_are_removed() {
    let upstream = raw_upstream(|_| {
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: x-foo, X-Bar\r\nX-Foo: secret\r\n\
          X-Bar: secret\r\nKeep-Alive: timeout=5\r\nProxy-Authenticate: Basic\r\n\
          Proxy-Connection: keep-alive\r\nX-Kept: yes\r\n\r\nok"
            .to_vec()
    })
    .await;
    let gh = Gatehouse::start_with(upstream, ROUTES, &[]).await;
    for _ in 0..2 {
        let r = gh.get("/public/x").await;
        r.expect(200);
        assert_eq!(r.text(), "ok");
        assert_eq!(r.header("x-kept"), Some("yes"), "{r:?}");
        for gone in [
            "x-foo",
            "x-bar",
            "keep-alive",
            "proxy-authenticate",
            "proxy-connection",
        ] {
            assert_eq!(r.header(gone), None, "{gone} reached the client: {r:?}");
        }
        let connection: Vec<_> = r.headers.get_all("connection").iter().collect();
        assert!(
            connection
                .iter()
                .all(|v| !v.to_str().unwrap_or_default().contains("foo")),
            "{r:?}"
        );
        assert!(r.header("x-request-id").is_some(), "{r:?}");
    }
}

#[tokio::test]
async fn a_chunked_upstream_response_passes_intact() {
    let upstream = raw_upstream(|_| {
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Kept: yes\r\n\r\n\
          5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n"
            .to_vec()
    })
    .await;
    let gh = Gatehouse::start_with(upstream, ROUTES, &[]).await;
    let r = gh.get("/public/x").await;
    r.expect(200);
    assert_eq!(r.text(), "hello, world");
    assert_eq!(r.header("x-kept"), Some("yes"));
}

#[tokio::test]
async fn forwarding_headers_from_an_untrusted_peer_are_replaced() {
    let gh = Gatehouse::start(ROUTES, &[]).await;
    let r = gh
        .send(
            Method::GET,
            "/public/x",
            &[
                ("x-forwarded-for", "1.2.3.4"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "evil.example"),
                ("x-forwarded-port", "443"),
                ("x-real-ip", "1.2.3.4"),
                ("forwarded", "for=1.2.3.4;proto=https"),
            ],
            Bytes::new(),
        )
        .await;
    r.expect(200);
    assert_eq!(
        r.upstream_header("x-forwarded-for").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(r.upstream_header_count("x-forwarded-for"), 1);
    assert_eq!(
        r.upstream_header("x-forwarded-proto").as_deref(),
        Some("http")
    );
    let host = gh.addr.to_string();
    assert_eq!(
        r.upstream_header("x-forwarded-host").as_deref(),
        Some(host.as_str())
    );
    for gone in ["x-forwarded-port", "x-real-ip", "forwarded"] {
        assert_eq!(r.upstream_header(gone), None, "{gone} reached the upstream");
    }
    // The upstream's Host is its own, not the client's.
    assert_eq!(
        r.upstream_header("host").as_deref(),
        Some(gh.upstream.to_string().as_str())
    );

    // Without any forwarding headers gatehouse still says who and how.
    let r = gh.get("/public/x").await;
    assert_eq!(
        r.upstream_header("x-forwarded-for").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(
        r.upstream_header("x-forwarded-proto").as_deref(),
        Some("http")
    );
    assert_eq!(
        r.upstream_header("x-forwarded-host").as_deref(),
        Some(host.as_str())
    );
}

#[tokio::test]
async fn forwarding_headers_from_a_trusted_proxy_are_believed() {
    let gh = Gatehouse::start(
        ROUTES,
        &[("GATEHOUSE_SERVER_TRUSTED_PROXIES", "127.0.0.1/32")],
    )
    .await;
    let r = gh
        .send(
            Method::GET,
            "/public/x",
            &[
                ("x-forwarded-for", "198.51.100.7, 203.0.113.9"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "app.example.com"),
            ],
            Bytes::new(),
        )
        .await;
    r.expect(200);
    // Right to left: 127.0.0.1 is trusted, 203.0.113.9 is not, so it is the client; what it
    // claims about 198.51.100.7 is not believed.
    assert_eq!(
        r.upstream_header("x-forwarded-for").as_deref(),
        Some("203.0.113.9, 127.0.0.1")
    );
    assert_eq!(
        r.upstream_header("x-forwarded-proto").as_deref(),
        Some("https")
    );
    assert_eq!(
        r.upstream_header("x-forwarded-host").as_deref(),
        Some("app.example.com")
    );
}

#[tokio::test]
async fn request_ids_are_propagated_or_generated() {
    let gh = Gatehouse::start(ROUTES, &[]).await;

    // A well-formed id goes upstream and comes back.
    let r = gh
        .get_with("/public/x", &[("x-request-id", "edge-42.a:b_c")])
        .await;
    r.expect(200);
    assert_eq!(
        r.upstream_header("x-request-id").as_deref(),
        Some("edge-42.a:b_c")
    );
    assert_eq!(r.header("x-request-id"), Some("edge-42.a:b_c"));

    // Missing or unusable ids are replaced by a generated one, the same both ways.
    let long = "a".repeat(129);
    let mut seen = Vec::new();
    for sent in [None, Some("has space"), Some("x\"}{"), Some(long.as_str())] {
        let headers: Vec<(&str, &str)> = sent.map(|v| ("x-request-id", v)).into_iter().collect();
        let r = gh.get_with("/public/x", &headers).await;
        r.expect(200);
        let back = r.header("x-request-id").expect("a request id").to_string();
        assert_ne!(Some(back.as_str()), sent);
        assert!(
            !back.is_empty() && back.bytes().all(|b| b.is_ascii_hexdigit()),
            "{back}"
        );
        assert_eq!(r.upstream_header("x-request-id"), Some(back.clone()));
        assert_eq!(r.upstream_header_count("x-request-id"), 1);
        seen.push(back);
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 4, "generated ids repeat: {seen:?}");

    // Refusals carry the id too, so a client can quote it.
    let r = gh
        .get_with("/api/items", &[("x-request-id", "edge-43")])
        .await;
    r.expect_error(401, "TOKEN_MISSING");
    assert_eq!(r.header("x-request-id"), Some("edge-43"));
    let r = gh.get("/nowhere").await;
    r.expect_error(403, "FORBIDDEN");
    assert!(r.header("x-request-id").is_some(), "{r:?}");
}

#[tokio::test]
async fn authorization_is_forwarded_only_when_configured() {
    let gh = Gatehouse::start(ROUTES, &[]).await;
    let token = gh.token("alice", &["reader"]);
    let auth = format!("Bearer {token}");
    let r = gh.get_with("/api/items", &[("authorization", &auth)]).await;
    r.expect(200);
    assert_eq!(r.upstream_header("authorization"), None);

    let gh = Gatehouse::start(
        ROUTES,
        &[("GATEHOUSE_HEADERS_FORWARD_AUTHORIZATION", "true")],
    )
    .await;
    let token = gh.token("alice", &["reader"]);
    let auth = format!("Bearer {token}");
    let r = gh.get_with("/api/items", &[("authorization", &auth)]).await;
    r.expect(200);
    assert_eq!(r.upstream_header("authorization"), Some(auth));
    assert_eq!(
        r.upstream_header("x-auth-user-id").as_deref(),
        Some("alice")
    );
}

#[tokio::test]
async fn http2_clients_are_served_and_forwarded_over_http1() {
    let gh = Gatehouse::start(ROUTES, &[]).await;
    let token = gh.token("alice", &["reader"]);
    let client: Client<_, http_body_util::Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let request = Request::get(format!("http://{}/api/items?x=1", gh.addr))
        .header("authorization", format!("Bearer {token}"))
        .header("x-auth-roles", "admin")
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let echo: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(echo["path"], "/api/items", "{echo}");
    assert_eq!(echo["headers"]["x-auth-user-id"][0], "alice", "{echo}");
    assert_eq!(echo["headers"]["x-auth-roles"][0], "reader", "{echo}");
    assert_eq!(
        echo["headers"]["x-forwarded-host"][0],
        gh.addr.to_string(),
        "{echo}"
    );
}

/// A HEAD that gatehouse answers itself carries no content over HTTP/2 either (hyper drops
/// it for HTTP/1 only); the length the GET would have is kept in Content-Length.
#[tokio::test]
async fn head_answers_have_no_body_over_http2() {
    let gh = Gatehouse::start(ROUTES, &[]).await;
    let client: Client<_, http_body_util::Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    for path in ["/api/items", "/blocked/x", "/auth/verify"] {
        let request = Request::head(format!("http://{}{path}", gh.addr))
            .body(http_body_util::Full::new(Bytes::new()))
            .unwrap();
        let response = client.request(request).await.unwrap();
        assert_eq!(response.version(), http::Version::HTTP_2);
        assert!(response.status().is_client_error(), "{path}");
        let length: usize = response.headers()["content-length"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(length > 0, "{path}: the GET's length is kept");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert!(
            body.is_empty(),
            "{path}: HEAD answered with {} bytes",
            body.len()
        );
    }
}

// ---------------------------------------------------------------------------------------
// Upstream failures
// ---------------------------------------------------------------------------------------

/// The body of a 502/504 names no address, port or cause.
#[track_caller]
fn assert_no_internals(r: &crate::harness::Reply, upstream: std::net::SocketAddr) {
    let text = r.text().to_lowercase();
    for leak in [
        upstream.ip().to_string(),
        upstream.port().to_string(),
        "refused".into(),
        "os error".into(),
        "tcp".into(),
        "hyper".into(),
        "connect".into(),
    ] {
        assert!(!text.contains(&leak), "body leaks {leak:?}: {}", r.text());
    }
}

#[tokio::test]
async fn upstream_down_is_502_without_addresses() {
    let down = dead_addr();
    let gh = Gatehouse::start_with(down, ROUTES, &[]).await;
    let r = gh.get("/public/x").await;
    r.expect_error(502, "UPSTREAM_UNAVAILABLE");
    assert_no_internals(&r, down);
    assert!(r.header("x-request-id").is_some(), "{r:?}");
}

#[tokio::test]
async fn upstream_that_never_answers_is_504_after_the_timeout() {
    let upstream = tcp_upstream(|mut stream| async move {
        let _ = read_head(&mut stream).await;
        // Hold the connection open and say nothing.
        std::future::pending::<()>().await;
        drop(stream);
    })
    .await;
    let extra = ROUTES.to_string();
    let gh =
        Gatehouse::start_with(upstream, &extra, &[("GATEHOUSE_UPSTREAM_TIMEOUT", "300ms")]).await;
    let started = Instant::now();
    let r = gh.get("/public/x").await;
    let took = started.elapsed();
    r.expect_error(504, "UPSTREAM_TIMEOUT");
    assert_no_internals(&r, upstream);
    // The configured 300ms, not the 5s of the base config.
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(4),
        "answered after {took:?}"
    );
}

#[tokio::test]
async fn upstream_reset_before_the_response_head_is_502() {
    let upstream = tcp_upstream(|mut stream| async move {
        let _ = read_head(&mut stream).await;
        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-").await;
        let _ = stream.set_zero_linger();
        drop(stream);
    })
    .await;
    let gh = Gatehouse::start_with(upstream, ROUTES, &[]).await;
    let r = gh.get("/public/x").await;
    r.expect_error(502, "UPSTREAM_UNAVAILABLE");
    assert_no_internals(&r, upstream);
}

#[tokio::test]
async fn upstream_garbage_or_silent_close_is_502() {
    let garbage = raw_upstream(|_| b"SSH-2.0-OpenSSH_9.6\r\n\r\n".to_vec()).await;
    let closes = tcp_upstream(|mut stream| async move {
        let _ = read_head(&mut stream).await;
    })
    .await;
    for upstream in [garbage, closes] {
        let gh = Gatehouse::start_with(upstream, ROUTES, &[]).await;
        let r = gh.get("/public/x").await;
        r.expect_error(502, "UPSTREAM_UNAVAILABLE");
        assert_no_internals(&r, upstream);
    }
}

/// Once the head has been forwarded the status cannot change; a reset mid-body must reach
/// the client as a broken body, never as a complete one.
#[tokio::test]
async fn upstream_reset_mid_body_breaks_the_client_body() {
    let upstream = tcp_upstream(|mut stream| async move {
        let _ = read_head(&mut stream).await;
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
            .await;
        let _ = stream.write_all(&[b'x'; 1000]).await;
        let _ = stream.flush().await;
        let _ = stream.set_zero_linger();
        drop(stream);
    })
    .await;
    let gh = Gatehouse::start_with(upstream, ROUTES, &[]).await;
    let response = gh.open(Method::GET, "/public/x", &[]).await;
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await;
    assert!(
        body.is_err(),
        "a truncated upstream body reached the client as complete ({} bytes)",
        body.map(|b| b.to_bytes().len()).unwrap_or_default()
    );
}

// ---------------------------------------------------------------------------------------
// Bodies: limits and streaming
// ---------------------------------------------------------------------------------------

/// What a strict upstream saw of a chunked request body.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    /// Some body bytes arrived.
    Data,
    /// The terminating zero-size chunk arrived: the upstream took the body as whole.
    Complete,
    /// The connection ended before the last chunk: the request was aborted.
    Aborted,
}

/// An upstream that reads a chunked request body strictly, reporting what it saw, and only
/// answers once the body is complete.
async fn chunk_watching_upstream() -> (std::net::SocketAddr, mpsc::UnboundedReceiver<Seen>) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
    let (tx, rx) = mpsc::unbounded_channel();
    let addr = tcp_upstream(move |mut stream| {
        let tx = tx.clone();
        async move {
            if read_head(&mut stream).await.is_none() {
                return;
            }
            let mut reader = BufReader::new(&mut stream);
            let complete = async {
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).await.ok()? == 0 {
                        return None;
                    }
                    let size =
                        usize::from_str_radix(line.trim_end().split(';').next()?, 16).ok()?;
                    let mut data = vec![0u8; size + 2];
                    reader.read_exact(&mut data).await.ok()?;
                    if size == 0 {
                        return Some(());
                    }
                    let _ = tx.send(Seen::Data);
                }
            }
            .await;
            if complete.is_some() {
                let _ = tx.send(Seen::Complete);
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\ncomplete")
                    .await;
            } else {
                let _ = tx.send(Seen::Aborted);
            }
        }
    })
    .await;
    (addr, rx)
}

/// How the upstream's reading of one body ended, past any data it saw.
async fn last_seen(seen: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    loop {
        match seen.recv().await {
            Some(Seen::Data) => continue,
            Some(end) => return end,
            None => panic!("the upstream went away"),
        }
    }
}

/// A client that stops sending its body mid-way is cut off after
/// `server.body_idle_timeout` with 400: a stalled upload, not an upstream failure, and the
/// upstream request is aborted rather than held until `upstream.timeout`.
#[tokio::test]
async fn a_stalled_request_body_is_400_and_aborts_the_upstream_request() {
    let (upstream, mut seen) = chunk_watching_upstream().await;
    let gh = Gatehouse::start_with(
        upstream,
        ROUTES,
        &[
            ("GATEHOUSE_SERVER_BODY_IDLE_TIMEOUT", "300ms"),
            ("GATEHOUSE_UPSTREAM_TIMEOUT", "60s"),
        ],
    )
    .await;
    let mut client = tokio::net::TcpStream::connect(gh.addr).await.unwrap();
    client
        .write_all(
            b"POST /public/x HTTP/1.1\r\nHost: gh\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n",
        )
        .await
        .unwrap();
    assert_eq!(seen.recv().await, Some(Seen::Data));
    // Nothing more: the client holds the connection open and sends no byte.
    expect_client_error_and_abort(&mut client, &mut seen, "stalled body").await;
    assert_no_upstream_errors(&gh).await;
}

/// The client got 400 INVALID_REQUEST and its connection closed; the upstream saw its
/// request aborted, never a complete body.
async fn expect_client_error_and_abort(
    client: &mut tokio::net::TcpStream,
    seen: &mut mpsc::UnboundedReceiver<Seen>,
    what: &str,
) {
    use tokio::io::AsyncReadExt;
    let (status, _, body) = crate::harness::read_response(client, false)
        .await
        .unwrap_or_else(|e| panic!("{what}: no response: {e}"));
    assert_eq!(status.as_u16(), 400, "{what}: {body:?}");
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"]["code"], "INVALID_REQUEST", "{what}: {body}");
    assert_eq!(last_seen(seen).await, Seen::Aborted, "{what}");
    // The client connection is closed: its framing can no longer be trusted.
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut rest))
        .await
        .unwrap_or_else(|_| panic!("{what}: connection left open"));
}

/// Client body failures are the client's: none is counted against the upstream.
async fn assert_no_upstream_errors(gh: &Gatehouse) {
    let metrics = gh.get("/metrics").await.text();
    assert!(
        !metrics.contains("gatehouse_upstream_errors_total{"),
        "client body errors counted as upstream errors:\n{metrics}"
    );
}

/// A request body that breaks its own chunked framing after part of it reached the
/// upstream: the client gets 400 INVALID_REQUEST (a client error, not a 502 counted against
/// the upstream), and the upstream sees the request aborted, never a complete body.
#[tokio::test]
async fn malformed_chunked_bodies_are_400_and_abort_the_upstream_request() {
    let (upstream, mut seen) = chunk_watching_upstream().await;
    let gh = Gatehouse::start_with(upstream, ROUTES, &[]).await;
    let breaks: &[(&str, &[u8])] = &[
        ("bad chunk size", b"zz\r\nhello\r\n0\r\n\r\n"),
        ("bare LF after the size", b"5\nhello\r\n0\r\n\r\n"),
        (
            "newline in a chunk extension",
            b"5;a\nb\r\nhello\r\n0\r\n\r\n",
        ),
        ("no CRLF after the data", b"5\r\nhelloXY0\r\n\r\n"),
        (
            "chunk size overflow",
            b"fffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
        ),
        ("negative chunk size", b"-5\r\nhello\r\n0\r\n\r\n"),
    ];
    for (what, rest) in breaks {
        let mut client = tokio::net::TcpStream::connect(gh.addr).await.unwrap();
        client
            .write_all(
                b"POST /public/x HTTP/1.1\r\nHost: gh\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n",
            )
            .await
            .unwrap();
        // The first chunk reaches the upstream before the framing breaks.
        assert_eq!(seen.recv().await, Some(Seen::Data), "{what}");
        client.write_all(rest).await.unwrap();
        expect_client_error_and_abort(&mut client, &mut seen, what).await;
    }

    // A body cut short by the client (the connection half-closed mid-chunk) is aborted
    // upstream too.
    let mut client = tokio::net::TcpStream::connect(gh.addr).await.unwrap();
    client
        .write_all(
            b"POST /public/x HTTP/1.1\r\nHost: gh\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n10\r\nabc",
        )
        .await
        .unwrap();
    assert_eq!(seen.recv().await, Some(Seen::Data));
    client.shutdown().await.unwrap();
    assert_eq!(last_seen(&mut seen).await, Seen::Aborted);

    // A well-formed body still arrives whole.
    let mut client = tokio::net::TcpStream::connect(gh.addr).await.unwrap();
    client
        .write_all(
            b"POST /public/x HTTP/1.1\r\nHost: gh\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nfirst\r\n0\r\n\r\n",
        )
        .await
        .unwrap();
    let (status, _, body) = crate::harness::read_response(&mut client, false)
        .await
        .unwrap();
    assert_eq!((status.as_u16(), &body[..]), (200, &b"complete"[..]));
    assert_eq!(last_seen(&mut seen).await, Seen::Complete);

    assert_no_upstream_errors(&gh).await;
}

#[tokio::test]
async fn request_bodies_over_the_limit_are_413() {
    let gh = Gatehouse::start(ROUTES, &[("GATEHOUSE_SERVER_MAX_BODY_BYTES", "1024")]).await;
    let at_limit = gh
        .send(
            Method::POST,
            "/public/x",
            &[],
            Bytes::from(vec![b'a'; 1024]),
        )
        .await;
    at_limit.expect(200);
    assert_eq!(at_limit.json()["body_bytes"], 1024);

    // Declared too large: refused before anything is forwarded.
    let r = gh
        .send(
            Method::POST,
            "/public/x",
            &[],
            Bytes::from(vec![b'a'; 1025]),
        )
        .await;
    r.expect_error(413, "PAYLOAD_TOO_LARGE");

    // Chunked, so the size is only known while streaming.
    let mut request =
        b"POST /public/x HTTP/1.1\r\nHost: gh\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            .to_vec();
    for _ in 0..4 {
        request.extend_from_slice(b"200\r\n");
        request.extend_from_slice(&[b'b'; 512]);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let r = gh.raw(&request).await;
    r.expect_error(413, "PAYLOAD_TOO_LARGE");

    // And chunked within the limit is forwarded whole.
    let r = gh
        .raw(
            b"POST /public/x HTTP/1.1\r\nHost: gh\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
              5\r\nhello\r\n0\r\n\r\n",
        )
        .await;
    r.expect(200);
    assert_eq!(r.json()["body_bytes"], 5);
}

/// A body of `len` bytes made on the fly from one shared 64 KiB chunk: producing it costs
/// no memory, so any growth is the proxy's.
struct Generated {
    left: u64,
    chunk: Bytes,
}

impl Generated {
    fn new(len: u64) -> Generated {
        Generated {
            left: len,
            chunk: Bytes::from(vec![b'z'; 64 * 1024]),
        }
    }
}

impl Body for Generated {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(self.chunk.len() as u64);
        self.left -= n;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n as usize)))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

/// Resident set size of this process, from /proc/self/statm.
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// Drains a body frame by frame, returning its length and the highest RSS seen meanwhile.
async fn drain<B>(mut body: B) -> (u64, u64)
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Debug,
{
    let (mut total, mut peak, mut next_sample) = (0u64, rss_bytes(), 0u64);
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            total += data.len() as u64;
        }
        if total >= next_sample {
            peak = peak.max(rss_bytes());
            next_sample += 4 * 1024 * 1024;
        }
    }
    (total, peak.max(rss_bytes()))
}

/// Set in the child process that runs the streaming scenario alone.
const STREAM_CHILD: &str = "IT_STREAM_SCENARIO_CHILD";

/// A large body in either direction passes through without gatehouse holding it: the
/// process (which also holds both ends) grows by a small fraction of the body size.
///
/// RSS is a per-process figure, so the scenario runs in a child process that executes only
/// this test: other tests running alongside (or a failing one symbolising its backtrace,
/// which maps tens of MiB of debug info) cannot blur it.
#[tokio::test]
async fn bodies_stream_both_ways_without_buffering() {
    if std::env::var_os(STREAM_CHILD).is_none() {
        crate::harness::run_alone(
            "proxy::bodies_stream_both_ways_without_buffering",
            STREAM_CHILD,
        )
        .await;
        return;
    }

    const LEN: u64 = 256 * 1024 * 1024;
    const ALLOWED_GROWTH: u64 = 64 * 1024 * 1024;

    // An upstream that sends LEN bytes for GET and counts what it is sent for POST.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let (counted_tx, mut counted) = mpsc::unbounded_channel::<(u64, u64)>();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counted_tx = counted_tx.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let counted_tx = counted_tx.clone();
                    async move {
                        let (len, peak) = drain(request.into_body()).await;
                        let _ = counted_tx.send((len, peak));
                        Ok::<_, Infallible>(Response::new(Generated::new(if len == 0 {
                            LEN
                        } else {
                            0
                        })))
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    // The upload's response head comes only after all of it has gone up, and on a loaded
    // machine a debug build can take longer than the harness's 5 s for 256 MiB: this test
    // is about memory, not speed.
    let gh = Gatehouse::start_with(
        upstream,
        ROUTES,
        &[
            ("GATEHOUSE_SERVER_MAX_BODY_BYTES", &(2 * LEN).to_string()),
            ("GATEHOUSE_UPSTREAM_TIMEOUT", "10m"),
        ],
    )
    .await;

    // Download.
    let before = rss_bytes();
    let response = gh.open(Method::GET, "/public/big", &[]).await;
    assert_eq!(response.status(), 200);
    let (len, peak) = drain(response.into_body()).await;
    assert_eq!(len, LEN);
    assert!(
        peak.saturating_sub(before) < ALLOWED_GROWTH,
        "RSS grew by {} MiB while streaming {} MiB down",
        (peak - before) >> 20,
        LEN >> 20
    );

    // Upload.
    let client: Client<_, Generated> = Client::builder(TokioExecutor::new()).build_http();
    let before = rss_bytes();
    let request = Request::post(format!("http://{}/public/upload", gh.addr))
        .body(Generated::new(LEN))
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let _ = counted.recv().await; // the GET's empty request body
    let (len, peak) = counted.recv().await.unwrap();
    assert_eq!(len, LEN);
    assert!(
        peak.saturating_sub(before) < ALLOWED_GROWTH,
        "RSS grew by {} MiB while streaming {} MiB up",
        (peak - before) >> 20,
        LEN >> 20
    );
}

/// Request framing: ambiguous framing is refused by the HTTP layer, and what is accepted is
/// re-framed for the upstream, so the upstream can never read a different request boundary
/// than gatehouse did (no request smuggling through the sidecar).
#[tokio::test]
async fn request_framing_is_strict_and_reframed_for_the_upstream() {
    let gh = Gatehouse::start(ROUTES, &[]).await;
    // Content-Length and chunked together: chunked wins (RFC 9112 §6.3) and the client's
    // Content-Length does not reach the upstream.
    let r = gh
        .raw(
            "POST /public/x HTTP/1.1\r\nHost: gh\r\nContent-Length: 4\r\n\
             Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        )
        .await;
    r.expect(200);
    assert_eq!(r.json()["body_bytes"], 5, "{}", r.text());
    assert_ne!(r.upstream_header("content-length").as_deref(), Some("4"));
    for request in [
        // Two different lengths.
        "POST /public/x HTTP/1.1\r\nHost: gh\r\nContent-Length: 4\r\nContent-Length: 5\r\n\
         Connection: close\r\n\r\nhello",
        // Transfer codings nobody agrees on.
        "POST /public/x HTTP/1.1\r\nHost: gh\r\nTransfer-Encoding: xchunked\r\n\
         Connection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "POST /public/x HTTP/1.1\r\nHost: gh\r\nTransfer-Encoding: chunked, identity\r\n\
         Connection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        // Whitespace before the colon.
        "POST /public/x HTTP/1.1\r\nHost: gh\r\nTransfer-Encoding : chunked\r\n\
         Connection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ] {
        gh.raw(request).await.expect(400);
    }
}

/// `Expect: 100-continue` (curl sends it for bodies over 1 MiB): the client is told to go
/// on, and the body it then sends reaches the upstream.
#[tokio::test]
async fn expect_continue_bodies_are_forwarded() {
    use tokio::io::AsyncReadExt;
    let gh = Gatehouse::start(ROUTES, &[]).await;
    let mut stream = tokio::net::TcpStream::connect(gh.addr).await.unwrap();
    stream
        .write_all(
            b"POST /public/x HTTP/1.1\r\nHost: gh\r\nContent-Length: 5\r\n\
              Expect: 100-continue\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    let interim = read_head(&mut stream).await.unwrap();
    assert!(interim.starts_with("HTTP/1.1 100 "), "{interim:?}");
    stream.write_all(b"hello").await.unwrap();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await.unwrap();
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.starts_with("HTTP/1.1 200 "), "{rest}");
    assert!(rest.contains("\"body_bytes\":5"), "{rest}");
}
