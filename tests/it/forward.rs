//! Forward-auth (`{prefix}/forward`, API.md §10), in process: the test client plays the
//! ingress from 127.0.0.1, which the default `forward_auth.trusted_proxies` lists. The same
//! decisions through real nginx, Envoy and Caddy are `ingress.rs`.

use bytes::Bytes;
use http::Method;

use crate::harness::{Gatehouse, ROUTES, Reply};

const ENABLED: &str = "\n[forward_auth]\nenabled = true\n";

fn routes_enabled() -> String {
    format!("{ROUTES}{ENABLED}")
}

/// Asks gatehouse about `method target` as an ingress would, with `extra` headers (the
/// client's, passed along).
async fn ask(gh: &Gatehouse, method: &str, target: &str, extra: &[(&str, &str)]) -> Reply {
    let mut headers = vec![
        ("x-forwarded-method", method),
        ("x-forwarded-uri", target),
        ("x-forwarded-host", "app.example.com"),
        ("x-forwarded-proto", "https"),
    ];
    headers.extend_from_slice(extra);
    gh.send(Method::GET, "/auth/forward", &headers, Bytes::new())
        .await
}

/// A JSON error with `code`.
#[track_caller]
fn refused(reply: &Reply, status: u16, code: &str) {
    reply.expect(status);
    assert_eq!(reply.json()["error"]["code"], code, "{}", reply.request);
}

/// A 200 with no body and every identity header, equal to `identity` (user, email, roles).
#[track_caller]
fn allowed(reply: &Reply, identity: (&str, &str, &str)) {
    reply.expect(200);
    assert!(
        reply.body.is_empty(),
        "{}: body {:?}",
        reply.request,
        reply.text()
    );
    for (name, want) in [
        ("x-auth-user-id", identity.0),
        ("x-auth-email", identity.1),
        ("x-auth-roles", identity.2),
    ] {
        let got = reply
            .headers
            .get(name)
            .unwrap_or_else(|| panic!("{}: no {name}: {:?}", reply.request, reply.headers));
        assert_eq!(got, want, "{}: {name}", reply.request);
    }
}

const ANONYMOUS: (&str, &str, &str) = ("", "", "");

/// Spellings of `/api/admin/x` (with [`ROUTES`], admins only) that resolve to it and are
/// decided as it: doubled slashes, an encoded unreserved letter.
pub const ADMIN_TRICKS: [&str; 3] = ["//api/admin/x", "/api//admin/x", "/api/%61dmin/x"];

/// Spellings that resolve to `/api/admin/x` through dot segments, plain and encoded: an
/// ingress that forwards the path as sent hands them to the app unresolved, so gatehouse
/// refuses them (400) rather than decide on where they resolve.
pub const DOT_TRICKS: [&str; 4] = [
    "/public/../api/admin/x",
    "/public/%2e%2e/api/admin/x",
    "/public/%2E%2E/api/admin/x",
    "/api//admin/./x",
];

#[tokio::test]
async fn off_by_default_it_is_an_unknown_auth_path() {
    let gh = Gatehouse::start(ROUTES, &[]).await;
    refused(&ask(&gh, "GET", "/public/x", &[]).await, 404, "NOT_FOUND");
    let reply = gh.get("/auth/forward/public/x").await;
    refused(&reply, 404, "NOT_FOUND");
}

#[tokio::test]
async fn a_peer_outside_trusted_proxies_is_refused() {
    let extra = format!("{ROUTES}{ENABLED}trusted_proxies = [\"10.0.0.0/8\"]\n");
    let gh = Gatehouse::start(&extra, &[]).await;
    let reader = format!("Bearer {}", gh.token("u1", &["reader"]));
    for target in ["/public/x", "/api/items"] {
        let reply = ask(&gh, "GET", target, &[("authorization", &reader)]).await;
        refused(&reply, 403, "FORBIDDEN");
        assert!(!reply.headers.contains_key("x-auth-user-id"));
    }
    refused(&gh.get("/auth/forward/public/x").await, 403, "FORBIDDEN");
}

#[tokio::test]
async fn decisions_are_the_proxy_paths() {
    let gh = Gatehouse::start(&routes_enabled(), &[]).await;
    let reader = format!("Bearer {}", gh.token("u-reader", &["reader"]));
    let admin = format!("Bearer {}", gh.token("u-admin", &["admin"]));
    let reader_id = ("u-reader", "u-reader@example.com", "reader");

    // An anonymous caller on a public route: every identity header, empty.
    allowed(&ask(&gh, "GET", "/public/x", &[]).await, ANONYMOUS);
    // The query is not part of the path; a token in it is nobody's business here.
    allowed(
        &ask(&gh, "GET", "/public/x?token=abc", &[]).await,
        ANONYMOUS,
    );
    // A protected route without a token: 401 with the challenge.
    let reply = ask(&gh, "GET", "/api/items", &[]).await;
    refused(&reply, 401, "TOKEN_MISSING");
    assert!(
        reply.headers["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    // With one: 200 and the caller's identity.
    let auth = [("authorization", reader.as_str())];
    allowed(&ask(&gh, "GET", "/api/items", &auth).await, reader_id);
    // Methods are the original's: a reader may not DELETE.
    refused(
        &ask(&gh, "DELETE", "/api/items/7", &auth).await,
        403,
        "FORBIDDEN",
    );
    let admin_auth = [("authorization", admin.as_str())];
    allowed(
        &ask(&gh, "DELETE", "/api/items/7", &admin_auth).await,
        ("u-admin", "u-admin@example.com", "admin"),
    );
    // A route denied to everyone, a bad token even on a public route.
    refused(
        &ask(&gh, "GET", "/blocked/x", &admin_auth).await,
        403,
        "FORBIDDEN",
    );
    let forged = [("authorization", "Bearer not.a.token")];
    refused(
        &ask(&gh, "GET", "/public/x", &forged).await,
        401,
        "TOKEN_INVALID",
    );
    // The spoofed identity headers of the client change nothing.
    let spoof = [
        ("x-auth-user-id", "root"),
        ("x-auth-roles", "admin"),
        ("authorization", reader.as_str()),
    ];
    allowed(&ask(&gh, "GET", "/api/items", &spoof).await, reader_id);
    refused(
        &ask(&gh, "GET", "/api/admin/x", &spoof).await,
        403,
        "FORBIDDEN",
    );
    // Case folding, as on the proxy path.
    refused(
        &ask(&gh, "GET", "/API/Admin/x", &auth).await,
        403,
        "FORBIDDEN",
    );
}

#[tokio::test]
async fn path_tricks_are_decided_on_the_normalised_path_or_refused() {
    let gh = Gatehouse::start(&routes_enabled(), &[]).await;
    let reader = format!("Bearer {}", gh.token("u1", &["reader"]));
    let auth = [("authorization", reader.as_str())];
    // Each reaches /api/admin/x, which a reader may not see.
    for trick in ADMIN_TRICKS {
        refused(&ask(&gh, "GET", trick, &auth).await, 403, "FORBIDDEN");
        // Anonymous: 401, not the public route's 200.
        refused(&ask(&gh, "GET", trick, &[]).await, 401, "TOKEN_MISSING");
    }
    for trick in DOT_TRICKS {
        refused(&ask(&gh, "GET", trick, &auth).await, 400, "INVALID_REQUEST");
        refused(&ask(&gh, "GET", trick, &[]).await, 400, "INVALID_REQUEST");
    }
    // Encodings upstreams read differently are refused, as on the proxy path.
    for bad in [
        "/public%2F..%2Fapi/admin",
        "/public/..%2Fapi",
        "/public/x%5C..",
        "/public/x;y",
        "/public/%00",
        "/../public/x",
    ] {
        refused(&ask(&gh, "GET", bad, &[]).await, 400, "INVALID_REQUEST");
    }
    // Method overrides in the original's query or in the client's headers.
    refused(
        &ask(&gh, "GET", "/public/x?_method=DELETE", &[]).await,
        400,
        "INVALID_REQUEST",
    );
    let override_header = [("x-http-method-override", "DELETE")];
    refused(
        &ask(&gh, "GET", "/public/x", &override_header).await,
        400,
        "INVALID_REQUEST",
    );
    // A lower-case method would miss a DELETE-only rule and run DELETE on a case-folding
    // framework.
    refused(
        &ask(&gh, "delete", "/api/items/1", &auth).await,
        400,
        "INVALID_REQUEST",
    );
    // Absolute-form: decided on its path, for the host the ingress names only.
    allowed(
        &ask(&gh, "GET", "http://app.example.com/public/x", &[]).await,
        ANONYMOUS,
    );
    refused(
        &ask(&gh, "GET", "http://app.example.com/api/admin/x", &[]).await,
        401,
        "TOKEN_MISSING",
    );
    refused(
        &ask(&gh, "GET", "http://evil.example/public/x", &[]).await,
        400,
        "INVALID_REQUEST",
    );
}

#[tokio::test]
async fn ambiguous_descriptions_are_refused_never_guessed() {
    let gh = Gatehouse::start(&routes_enabled(), &[]).await;
    let send = |headers: Vec<(&'static str, &'static str)>| {
        let gh = &gh;
        async move {
            gh.send(Method::GET, "/auth/forward", &headers, Bytes::new())
                .await
        }
    };
    // No target: never a decision about `/`.
    refused(
        &send(vec![("x-forwarded-method", "GET")]).await,
        400,
        "INVALID_REQUEST",
    );
    // No method.
    refused(
        &send(vec![("x-forwarded-uri", "/public/x")]).await,
        400,
        "INVALID_REQUEST",
    );
    // Two targets, or two names that disagree: which one does the ingress route?
    refused(
        &send(vec![
            ("x-forwarded-method", "GET"),
            ("x-forwarded-uri", "/public/x"),
            ("x-forwarded-uri", "/api/admin/x"),
        ])
        .await,
        400,
        "INVALID_REQUEST",
    );
    refused(
        &send(vec![
            ("x-forwarded-method", "GET"),
            ("x-original-uri", "/public/x"),
            ("x-forwarded-uri", "/api/admin/x"),
        ])
        .await,
        400,
        "INVALID_REQUEST",
    );
    // nginx's spelling alone works.
    allowed(
        &send(vec![
            ("x-original-method", "GET"),
            ("x-original-uri", "/public/x"),
        ])
        .await,
        ANONYMOUS,
    );
    // After /forward/ (Envoy's path_prefix) the path is the original's, with the request's
    // own method and query; a header that says otherwise is refused.
    allowed(&gh.get("/auth/forward/public/x?page=2").await, ANONYMOUS);
    refused(
        &gh.get("/auth/forward/api//admin/x").await,
        401,
        "TOKEN_MISSING",
    );
    // The whole path is not normalised first: this is not the admin API.
    refused(
        &gh.get("/auth/forward/../admin/users").await,
        400,
        "INVALID_REQUEST",
    );
    refused(
        &gh.get_with(
            "/auth/forward/public/x",
            &[("x-forwarded-uri", "/api/admin/x")],
        )
        .await,
        400,
        "INVALID_REQUEST",
    );
    let reply = gh
        .send(
            Method::DELETE,
            "/auth/forward/api/items/1",
            &[],
            Bytes::new(),
        )
        .await;
    refused(&reply, 401, "TOKEN_MISSING");
    // Other spellings of the endpoint are ordinary unknown auth paths.
    refused(&gh.get("/auth//forward").await, 404, "NOT_FOUND");
    refused(&gh.get("/auth/%66orward").await, 404, "NOT_FOUND");
    // gatehouse's own endpoints check their own credentials: allowed, anonymous.
    allowed(&ask(&gh, "POST", "/auth/login", &[]).await, ANONYMOUS);
}

/// After `/forward/` (Envoy's `path_prefix`) the check carries the original method as its
/// own, and Envoy passes the client's headers that match its `allowed_headers` (the
/// deployment file lets through every name containing `method`, for the override headers).
/// A client's `X-Forwarded-Method: GET` on a `DELETE` must not have the `GET` decided while
/// Envoy forwards the `DELETE`.
#[tokio::test]
async fn a_method_header_that_disagrees_with_the_checks_own_method_is_refused() {
    let gh = Gatehouse::start(&routes_enabled(), &[]).await;
    let reader = format!("Bearer {}", gh.token("u1", &["reader"]));
    for name in ["x-forwarded-method", "x-original-method"] {
        let reply = gh
            .send(
                Method::DELETE,
                "/auth/forward/api/items/1",
                &[(name, "GET"), ("authorization", &reader)],
                Bytes::new(),
            )
            .await;
        refused(&reply, 400, "INVALID_REQUEST");
    }
    // One that agrees is only redundant.
    let reply = gh
        .send(
            Method::GET,
            "/auth/forward/api/items/1",
            &[("x-forwarded-method", "GET"), ("authorization", &reader)],
            Bytes::new(),
        )
        .await;
    allowed(&reply, ("u1", "u1@example.com", "reader"));
}

/// An ingress forwards the path as the client sent it (nginx's `proxy_pass` without a URI,
/// Caddy's `reverse_proxy`): gatehouse cannot hand the app the normalised path as its own
/// proxy does. A dot segment that resolves a protected path into a public one would be
/// decided as the public path and served by an app that routes it as sent (Express, Flask
/// and their kin do not resolve `..`) as the protected one. So an original path with a dot
/// segment, plain or encoded, is refused, never decided.
#[tokio::test]
async fn dot_segments_in_the_original_are_refused_not_resolved() {
    let gh = Gatehouse::start(&routes_enabled(), &[]).await;
    for trick in [
        "/api/admin/../../public/x",
        "/api/admin/%2e%2e/%2E%2E/public/x",
        "/api/admin/.%2e/.%2E/public/x",
        "/api/admin//../../public/x",
        "/api/./admin/x",
        "/public/../api/admin/x",
        "http://app.example.com/api/admin/../../public/x",
    ] {
        refused(&ask(&gh, "GET", trick, &[]).await, 400, "INVALID_REQUEST");
    }
    // After /forward/ the same.
    refused(
        &gh.get("/auth/forward/api/admin/../../public/x").await,
        400,
        "INVALID_REQUEST",
    );
    // Dots inside a segment are not dot segments.
    allowed(
        &ask(&gh, "GET", "/public/x..y/.z/...", &[]).await,
        ANONYMOUS,
    );
}

/// A path under the auth prefix is allowed with no identity only when it names one of
/// gatehouse's endpoints as sent: those check their own credentials. An ingress asks about a
/// request it is about to route to the app (it routes `{prefix}/` to gatehouse without
/// asking), so anything else under the prefix — an unknown path, the forward-auth endpoint
/// itself (Traefik's router leaves `/auth/forward…` to the app's), a spelling that reaches the
/// prefix only once decoded — is the app's path and is decided by the policy like any other.
#[tokio::test]
async fn only_gatehouse_endpoints_under_the_prefix_skip_the_policy() {
    let gh = Gatehouse::start(&routes_enabled(), &[]).await;
    for target in [
        "/auth",
        "/auth/",
        "/auth/nope",
        "/auth/forward",
        "/auth/forward/api/admin/x",
        "/auth/forwarded",
        "/%61uth/login",
        "//auth/login",
    ] {
        // The policy's default: deny.
        refused(&ask(&gh, "GET", target, &[]).await, 403, "FORBIDDEN");
    }
    // gatehouse's own endpoints, named as sent: allowed, anonymous.
    allowed(&ask(&gh, "POST", "/auth/login", &[]).await, ANONYMOUS);
    allowed(&ask(&gh, "GET", "/auth/openapi.json", &[]).await, ANONYMOUS);
    allowed(&ask(&gh, "GET", "/auth/admin/users", &[]).await, ANONYMOUS);
}

#[tokio::test]
async fn revoked_tokens_are_refused() {
    let gh = Gatehouse::start(&routes_enabled(), &[]).await;
    gh.register("fwd@example.com").await;
    let (access, _) = gh
        .session("fwd@example.com", crate::harness::PASSWORD)
        .await;
    let auth = format!("Bearer {access}");
    let reply = ask(&gh, "GET", "/api/items", &[("authorization", &auth)]).await;
    reply.expect(200);
    assert!(!reply.headers["x-auth-user-id"].is_empty());
    gh.json(
        Method::POST,
        "/auth/logout",
        Some(&access),
        serde_json::json!({}),
    )
    .await
    .expect(200);
    let reply = ask(&gh, "GET", "/api/items", &[("authorization", &auth)]).await;
    refused(&reply, 401, "TOKEN_REVOKED");
}

#[tokio::test]
async fn rate_limits_key_on_the_original_client() {
    let gh = Gatehouse::start(
        &routes_enabled(),
        &[("GATEHOUSE_RATE_LIMITS_PROXY", "2/1h")],
    )
    .await;
    // The ingress (127.0.0.1, trusted) appends the client it saw.
    let client = [("x-forwarded-for", "203.0.113.7")];
    allowed(&ask(&gh, "GET", "/public/x", &client).await, ANONYMOUS);
    allowed(&ask(&gh, "GET", "/public/y", &client).await, ANONYMOUS);
    let reply = ask(&gh, "GET", "/public/z", &client).await;
    refused(&reply, 429, "RATE_LIMITED");
    let retry: u64 = reply.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry > 0, "Retry-After {retry}");
    // Another client behind the same ingress has its own budget.
    let other = [("x-forwarded-for", "203.0.113.7, 198.51.100.2")];
    allowed(&ask(&gh, "GET", "/public/x", &other).await, ANONYMOUS);

    // Counted apart from proxied requests, under the original's route and method class.
    let metrics = gh.get("/metrics").await.text();
    for series in [
        r#"gatehouse_forward_auth_decisions_total{method_class="read",outcome="allowed",route="/public/**"} 3"#,
        r#"gatehouse_forward_auth_decisions_total{method_class="read",outcome="rate_limited",route="/public/**"} 1"#,
        r#"gatehouse_rate_limited_total{class="proxy"} 1"#,
    ] {
        assert!(metrics.contains(series), "no {series} in\n{metrics}");
    }
    assert!(
        !metrics.contains(r#"outcome="forwarded",route="/public/**"} 1"#),
        "forward-auth decisions counted as forwarded requests:\n{metrics}"
    );
}

#[tokio::test]
async fn configured_header_names_are_the_ones_answered() {
    let extra = format!(
        "{ROUTES}{ENABLED}\n[headers]\nuser_id = \"X-User\"\nemail = \"X-Mail\"\nroles = \"X-Groups\"\nsession_id = \"X-Session\"\nstrip_prefix = \"X-\"\n"
    );
    let gh = Gatehouse::start(&extra, &[]).await;
    let reply = ask(&gh, "GET", "/public/x", &[]).await;
    reply.expect(200);
    for name in ["x-user", "x-mail", "x-groups", "x-session"] {
        assert_eq!(reply.headers[name], "", "{name}: {:?}", reply.headers);
    }
    assert!(!reply.headers.contains_key("x-auth-user-id"));
    let token = format!("Bearer {}", gh.token("u9", &["creator"]));
    let reply = ask(&gh, "POST", "/api/items", &[("authorization", &token)]).await;
    reply.expect(200);
    assert_eq!(reply.headers["x-user"], "u9");
    assert_eq!(reply.headers["x-groups"], "creator");
    assert_eq!(reply.headers["x-session"], "test-session");
}
