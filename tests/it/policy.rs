//! Path normalisation and route policies (issue 2, points 5 and 7): the path decided on is
//! the path forwarded, tricks are resolved or refused, and rules decide as written.

use bytes::Bytes;
use http::Method;

use crate::harness::{Gatehouse, ROUTES, Reply};

/// What a raw request target must lead to.
enum Expect {
    /// Forwarded, and the upstream saw this path.
    Forwarded(&'static str),
    /// Refused by gatehouse with this status and code.
    Refused(u16, &'static str),
}

async fn raw_get(gh: &Gatehouse, target: &[u8], host: &str) -> Reply {
    let mut request = b"GET ".to_vec();
    request.extend_from_slice(target);
    request.extend_from_slice(
        format!(" HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    gh.raw(&request).await
}

#[track_caller]
fn check(r: &Reply, expect: &Expect) {
    match expect {
        Expect::Forwarded(path) => {
            r.expect(200);
            assert_eq!(r.json()["path"], *path, "{}: {}", r.request, r.text());
        }
        Expect::Refused(status, code) => {
            r.expect_error(*status, code);
        }
    }
}

/// Every trick from issue 2 point 5, sent as raw bytes because client libraries normalise
/// or refuse them. `/public/**` is public and `/api/**` needs a token, so a trick that made
/// the policy see `/public/…` while the upstream saw `/api/…` would show as a 200 where a
/// 401 is expected.
#[tokio::test]
async fn paths_are_normalised_once_and_forwarded_as_decided() {
    use Expect::*;
    let gh = Gatehouse::start(ROUTES, &[]).await;
    let cases: &[(&[u8], Expect)] = &[
        (b"/public/x", Forwarded("/public/x")),
        (b"/public/x/", Forwarded("/public/x/")),
        // Dot segments, in every spelling, are resolved before the policy looks.
        (b"/public/../api/x", Refused(401, "TOKEN_MISSING")),
        (b"/public/../public/y", Forwarded("/public/y")),
        (b"/public/./x", Forwarded("/public/x")),
        (b"/public/x/.", Forwarded("/public/x/")),
        (b"/public/%2e%2e/api/x", Refused(401, "TOKEN_MISSING")),
        (b"/public/%2E%2E/api/x", Refused(401, "TOKEN_MISSING")),
        (b"/public/.%2e/api/x", Refused(401, "TOKEN_MISSING")),
        (b"/public/%2e%2e/public/y", Forwarded("/public/y")),
        (b"/public/%2e/x", Forwarded("/public/x")),
        (b"/public/a/b/../../x", Forwarded("/public/x")),
        (b"/../public/x", Refused(400, "INVALID_REQUEST")),
        (b"/public/../../public/x", Refused(400, "INVALID_REQUEST")),
        (b"/%2e%2e/public/x", Refused(400, "INVALID_REQUEST")),
        // Double encoding is decoded once only, so it never becomes a dot segment.
        (
            b"/public/%252e%252e/api/x",
            Forwarded("/public/%252e%252e/api/x"),
        ),
        // Empty segments collapse, before dot segments are resolved.
        (b"//public//x", Forwarded("/public/x")),
        (b"/public//x", Forwarded("/public/x")),
        (b"/public//../api/x", Refused(401, "TOKEN_MISSING")),
        // Encoded separators, backslashes and path parameters are refused.
        (b"/public/a%2Fb", Refused(400, "INVALID_REQUEST")),
        (b"/public/a%2fb", Refused(400, "INVALID_REQUEST")),
        (b"/public%2F..%2Fapi/x", Refused(400, "INVALID_REQUEST")),
        (b"/public/a%5Cb", Refused(400, "INVALID_REQUEST")),
        (b"/public/a%5cb", Refused(400, "INVALID_REQUEST")),
        (b"/public/..%5Capi/x", Refused(400, "INVALID_REQUEST")),
        (b"/public/a;b", Refused(400, "INVALID_REQUEST")),
        (b"/public/..;/api/x", Refused(400, "INVALID_REQUEST")),
        (b"/public/x;jsessionid=1", Refused(400, "INVALID_REQUEST")),
        // Escapes: unreserved characters are decoded, others kept in upper case, NUL and
        // broken escapes refused.
        (b"/%70ublic/x", Forwarded("/public/x")),
        (b"/public/%7euser", Forwarded("/public/~user")),
        (b"/public/a%3bb", Forwarded("/public/a%3Bb")),
        (b"/public/caf%c3%a9", Forwarded("/public/caf%C3%A9")),
        (b"/public/a%20b", Forwarded("/public/a%20b")),
        (b"/public/%00", Refused(400, "INVALID_REQUEST")),
        // Encoded control characters are refused like raw ones: `/api/admin%0A` decodes to
        // `/api/admin\n`, which Python's and PCRE's `$` match as `/api/admin`.
        (b"/public/x%0A", Refused(400, "INVALID_REQUEST")),
        (b"/public/x%0a", Refused(400, "INVALID_REQUEST")),
        (b"/public/x%0D%0A", Refused(400, "INVALID_REQUEST")),
        (b"/public/%09x", Refused(400, "INVALID_REQUEST")),
        (b"/public/x%1F", Refused(400, "INVALID_REQUEST")),
        (b"/public/x%7F", Refused(400, "INVALID_REQUEST")),
        (b"/public/x%7f", Refused(400, "INVALID_REQUEST")),
        (b"/public/%zz", Refused(400, "INVALID_REQUEST")),
        (b"/public/%4", Refused(400, "INVALID_REQUEST")),
        // The query is not part of the path: dots and slashes in it change nothing.
        (b"/public/x?next=../../api/x", Forwarded("/public/x")),
        (b"/public/x?a=%2F", Forwarded("/public/x")),
    ];
    for (target, expect) in cases {
        let r = raw_get(&gh, target, "gh").await;
        check(&r, expect);
    }

    // Raw backslashes, raw UTF-8 and bytes that are not UTF-8: refused, by gatehouse or by
    // the HTTP parser before it.
    for target in [
        &b"/public/..\\api/x"[..],
        b"/public/caf\xc3\xa9",
        b"/public/\xff\xfe",
        b"/public/a\x01b",
    ] {
        let r = raw_get(&gh, target, "gh").await;
        assert_eq!(r.status.as_u16(), 400, "{r:?}");
    }
}

#[tokio::test]
async fn absolute_form_and_connect_are_refused() {
    let gh = Gatehouse::start(ROUTES, &[]).await;
    let me = gh.addr.to_string();

    // Absolute form naming another host than Host: an open-proxy probe.
    check(
        &raw_get(&gh, b"http://evil.example/public/x", "other").await,
        &Expect::Refused(400, "INVALID_REQUEST"),
    );
    check(
        &raw_get(&gh, b"http://evil.example/public/x", &me).await,
        &Expect::Refused(400, "INVALID_REQUEST"),
    );
    // Absolute form for ourselves is an ordinary request, normalised like any other.
    check(
        &raw_get(&gh, format!("http://{me}/public/x").as_bytes(), &me).await,
        &Expect::Forwarded("/public/x"),
    );
    check(
        &raw_get(&gh, format!("http://{me}/public/../api/x").as_bytes(), &me).await,
        &Expect::Refused(401, "TOKEN_MISSING"),
    );

    // CONNECT never opens a tunnel, wherever it points.
    for target in ["evil.example:443".to_string(), gh.upstream.to_string()] {
        let r = gh
            .raw(format!(
                "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n"
            ))
            .await;
        r.expect_error(400, "INVALID_REQUEST");
    }
    // Asterisk form.
    let r = gh
        .raw("OPTIONS * HTTP/1.1\r\nHost: gh\r\nConnection: close\r\n\r\n")
        .await;
    r.expect_error(400, "INVALID_REQUEST");
}

#[tokio::test]
async fn over_long_targets_are_414() {
    let gh = Gatehouse::start(ROUTES, &[("GATEHOUSE_SERVER_MAX_URI_BYTES", "256")]).await;
    // `/public/` is 8 bytes; the query counts too.
    gh.get(&format!("/public/{}", "a".repeat(248)))
        .await
        .expect(200);
    let r = gh.get(&format!("/public/{}", "a".repeat(249))).await;
    r.expect_error(414, "URI_TOO_LONG");
    let r = gh.get(&format!("/public/x?{}", "q".repeat(247))).await;
    r.expect_error(414, "URI_TOO_LONG");
}

// ---------------------------------------------------------------------------------------
// Route policies
// ---------------------------------------------------------------------------------------

/// `(roles of the token or None for anonymous, method, path, status, code)`.
type Case = (
    Option<&'static [&'static str]>,
    &'static str,
    &'static str,
    u16,
    &'static str,
);

async fn check_cases(gh: &Gatehouse, cases: &[Case]) {
    for &(roles, method, path, status, code) in cases {
        let token = roles.map(|roles| gh.token("u1", roles));
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("authorization", a.as_str())).collect();
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let r = gh.send(method, path, &headers, Bytes::new()).await;
        let who = format!("{roles:?} {}", r.request);
        assert_eq!(r.status.as_u16(), status, "{who}: {}", r.text());
        if code.is_empty() {
            if r.request.starts_with("HEAD") {
                continue;
            }
            assert_eq!(r.json()["upstream"], "echo", "{who}: {}", r.text());
        } else {
            assert_eq!(r.json()["error"]["code"], code, "{who}: {}", r.text());
        }
    }
}

const READER: Option<&[&str]> = Some(&["reader"]);
const CREATOR: Option<&[&str]> = Some(&["creator"]);
const ADMIN: Option<&[&str]> = Some(&["admin"]);
const ANON: Option<&[&str]> = None;

#[tokio::test]
async fn roles_inheritance_methods_and_deny_rules() {
    let gh = Gatehouse::start(ROUTES, &[]).await;
    check_cases(
        &gh,
        &[
            // Reads under /api need any valid token.
            (ANON, "GET", "/api/items", 401, "TOKEN_MISSING"),
            (READER, "GET", "/api/items", 200, ""),
            (READER, "GET", "/api", 200, ""),
            // Writes need creator, which admin inherits.
            (READER, "POST", "/api/items", 403, "FORBIDDEN"),
            (READER, "DELETE", "/api/items/1", 403, "FORBIDDEN"),
            (CREATOR, "POST", "/api/items", 200, ""),
            (CREATOR, "PATCH", "/api/items/1", 200, ""),
            (ADMIN, "PUT", "/api/items/1", 200, ""),
            (ANON, "POST", "/api/items", 401, "TOKEN_MISSING"),
            // The admin area: admin only, creator does not inherit upwards.
            (ADMIN, "GET", "/api/admin/users", 200, ""),
            (ADMIN, "GET", "/api/admin", 200, ""),
            (CREATOR, "GET", "/api/admin/users", 403, "FORBIDDEN"),
            (READER, "GET", "/api/admin/users", 403, "FORBIDDEN"),
            (ANON, "GET", "/api/admin/users", 401, "TOKEN_MISSING"),
            // Roles the policy does not know grant nothing.
            (
                Some(&["superuser", "root"]),
                "POST",
                "/api/items",
                403,
                "FORBIDDEN",
            ),
            (Some(&[]), "GET", "/api/items", 200, ""),
            // access = "deny" refuses everyone, with 403 even without a token.
            (ANON, "GET", "/blocked/x", 403, "FORBIDDEN"),
            (ADMIN, "GET", "/blocked/x", 403, "FORBIDDEN"),
            (ADMIN, "GET", "/blocked", 403, "FORBIDDEN"),
            // Public.
            (ANON, "GET", "/public", 200, ""),
            (ANON, "DELETE", "/public/x", 200, ""),
            // No rule: the default (deny) applies, and segments match exactly.
            (ANON, "GET", "/", 403, "FORBIDDEN"),
            (ADMIN, "GET", "/other", 403, "FORBIDDEN"),
            (ADMIN, "GET", "/API/items", 403, "FORBIDDEN"),
            (ADMIN, "GET", "/apix", 403, "FORBIDDEN"),
            (ADMIN, "GET", "/publicity", 403, "FORBIDDEN"),
        ],
    )
    .await;
}

#[tokio::test]
async fn get_rules_cover_head() {
    let extra = r#"
[[routes]]
path = "/reports/**"
methods = ["GET"]
roles = ["admin"]

[[routes]]
path = "/reports/**"
access = "public"
"#;
    let gh = Gatehouse::start(extra, &[]).await;
    check_cases(
        &gh,
        &[
            (ANON, "GET", "/reports/q1", 401, "TOKEN_MISSING"),
            (READER, "GET", "/reports/q1", 403, "FORBIDDEN"),
            (ADMIN, "GET", "/reports/q1", 200, ""),
            // HEAD is a GET without the body: it must not fall through to the public rule.
            (ANON, "HEAD", "/reports/q1", 401, ""),
            (READER, "HEAD", "/reports/q1", 403, ""),
            (ADMIN, "HEAD", "/reports/q1", 200, ""),
            // Other methods are not covered by the GET rule.
            (ANON, "POST", "/reports/q1", 200, ""),
            (ANON, "OPTIONS", "/reports/q1", 200, ""),
        ],
    )
    .await;
}

#[tokio::test]
async fn first_match_wins() {
    let narrow_first = r#"
[[routes]]
path = "/docs/internal/**"
access = "deny"

[[routes]]
path = "/docs/**"
access = "public"
"#;
    let broad_first = r#"
[[routes]]
path = "/docs/**"
access = "public"

[[routes]]
path = "/docs/internal/**"
access = "deny"
"#;
    let gh = Gatehouse::start(narrow_first, &[]).await;
    check_cases(
        &gh,
        &[
            (ANON, "GET", "/docs/internal/x", 403, "FORBIDDEN"),
            (ANON, "GET", "/docs/guide", 200, ""),
        ],
    )
    .await;
    let gh = Gatehouse::start(broad_first, &[]).await;
    check_cases(&gh, &[(ANON, "GET", "/docs/internal/x", 200, "")]).await;
}

#[tokio::test]
async fn single_segment_and_in_segment_globs() {
    let extra = r#"
[[routes]]
path = "/files/*/meta"
access = "public"

[[routes]]
path = "/v*/status"
access = "public"
"#;
    let gh = Gatehouse::start(extra, &[]).await;
    check_cases(
        &gh,
        &[
            (ANON, "GET", "/files/7/meta", 200, ""),
            (ANON, "GET", "/files/7/meta/", 200, ""),
            (ANON, "GET", "/files/meta", 403, "FORBIDDEN"),
            (ANON, "GET", "/files/7/8/meta", 403, "FORBIDDEN"),
            (ANON, "GET", "/v1/status", 200, ""),
            (ANON, "GET", "/v/status", 200, ""),
            (ANON, "GET", "/x1/status", 403, "FORBIDDEN"),
        ],
    )
    .await;
}

#[tokio::test]
async fn the_default_can_be_authenticated_or_public() {
    let gh = Gatehouse::start(
        &format!("{ROUTES}\n[policy]\ndefault = \"authenticated\"\n"),
        &[],
    )
    .await;
    check_cases(
        &gh,
        &[
            (ANON, "GET", "/other", 401, "TOKEN_MISSING"),
            (READER, "GET", "/other", 200, ""),
            (READER, "POST", "/other/x", 200, ""),
            // Explicit rules still win over the default.
            (ADMIN, "GET", "/blocked/x", 403, "FORBIDDEN"),
            (READER, "GET", "/api/admin/x", 403, "FORBIDDEN"),
        ],
    )
    .await;

    let gh = Gatehouse::start("[policy]\ndefault = \"public\"\n", &[]).await;
    check_cases(
        &gh,
        &[
            (ANON, "GET", "/anything", 200, ""),
            (READER, "PUT", "/anything/else", 200, ""),
        ],
    )
    .await;
}

#[tokio::test]
async fn verified_email_can_be_required() {
    let gh = Gatehouse::start(ROUTES, &[("GATEHOUSE_AUTH_REQUIRE_VERIFIED_EMAIL", "true")]).await;
    let unverified = gh.token_with("u1", &["reader"], false);
    let verified = gh.token_with("u2", &["reader"], true);
    let get = |token: &str, path: &'static str| {
        let auth = format!("Bearer {token}");
        let gh = &gh;
        async move { gh.get_with(path, &[("authorization", &auth)]).await }
    };
    get(&unverified, "/api/items")
        .await
        .expect_error(403, "EMAIL_NOT_VERIFIED");
    get(&verified, "/api/items").await.expect(200);
    // Public routes do not ask, but still forward who it is.
    let r = get(&unverified, "/public/x").await;
    r.expect(200);
    assert_eq!(r.upstream_header("x-auth-user-id").as_deref(), Some("u1"));
}

#[tokio::test]
async fn per_ip_and_per_route_rate_limits() {
    let extra = format!(
        "{ROUTES}\n[[routes]]\npath = \"/limited/**\"\naccess = \"public\"\nrate_limit = \"2/1h\"\n"
    );
    let gh = Gatehouse::start(&extra, &[]).await;
    gh.get("/limited/a").await.expect(200);
    gh.get("/limited/b").await.expect(200);
    let r = gh.get("/limited/c").await;
    r.expect_error(429, "RATE_LIMITED");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(retry > 0 && retry <= 3600, "{r:?}");
    // Other routes are not affected by a route's limit.
    gh.get("/public/x").await.expect(200);

    // The per-IP proxy limit covers every proxied request.
    let gh = Gatehouse::start(ROUTES, &[("GATEHOUSE_RATE_LIMITS_PROXY", "3/1h")]).await;
    for _ in 0..3 {
        gh.get("/public/x").await.expect(200);
    }
    gh.get("/public/y").await.expect_error(429, "RATE_LIMITED");
    // Ops endpoints stay reachable.
    gh.get("/healthz").await.expect(200);
    let metrics = gh.get("/metrics").await.text();
    assert!(
        metrics.contains("gatehouse_rate_limited_total{class=\"proxy\"} 1"),
        "{metrics}"
    );
}

/// Case variants of a protected path: an upstream that routes without regard to case (as
/// Express does by default) would run the admin handler, so the case-folded path's rule
/// must hold too; with `case_sensitive = true` only the exact path decides.
#[tokio::test]
async fn case_variants_cannot_reach_a_stricter_rule() {
    let gh = Gatehouse::start(ROUTES, &[]).await;
    let reader = format!("Bearer {}", gh.token("r", &["reader"]));
    let admin = format!("Bearer {}", gh.token("a", &["admin"]));
    for target in [
        "/api/ADMIN",
        "/api/Admin/users",
        "/api/%41DMIN",
        "/api/adm%C4%B1n",
        "/api/adm%C4%B0n",
    ] {
        gh.get_with(target, &[("authorization", &reader)])
            .await
            .expect_error(403, "FORBIDDEN");
        let r = gh.get_with(target, &[("authorization", &admin)]).await;
        r.expect(200);
    }
    // Folding only adds a rule: an unrelated mixed-case path stays as it was.
    gh.get_with("/api/Items/1", &[("authorization", &reader)])
        .await
        .expect(200);
    // The DELETE-only creator rule holds for a case variant of its path.
    gh.send(
        Method::DELETE,
        "/API/items/1",
        &[("authorization", &reader)],
        Bytes::new(),
    )
    .await
    .expect_error(403, "FORBIDDEN");

    let exact = Gatehouse::start(ROUTES, &[("GATEHOUSE_POLICY_CASE_SENSITIVE", "true")]).await;
    let reader = format!("Bearer {}", exact.token("r", &["reader"]));
    let r = exact
        .get_with("/api/ADMIN", &[("authorization", &reader)])
        .await;
    r.expect(200);
    assert_eq!(r.json()["path"], "/api/ADMIN");
}

/// Rails' `(.:format)` and older Spring suffix patterns route `/api/admin.json` to the
/// `/api/admin` handler: the bare path's rule applies too.
#[tokio::test]
async fn a_format_suffix_cannot_reach_a_stricter_rule() {
    let gh = Gatehouse::start(ROUTES, &[]).await;
    let reader = format!("Bearer {}", gh.token("r", &["reader"]));
    for target in ["/api/admin.json", "/api/ADMIN.xml", "/api/admin.json/"] {
        gh.get_with(target, &[("authorization", &reader)])
            .await
            .expect_error(403, "FORBIDDEN");
    }
    let r = gh
        .get_with("/api/items.json", &[("authorization", &reader)])
        .await;
    r.expect(200);
    assert_eq!(r.json()["path"], "/api/items.json");
}
