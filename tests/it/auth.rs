//! The identity service through real HTTP: register, login, refresh with rotation and reuse
//! detection, logout, change-password, lockout, enumeration resistance, admin API.

use bytes::Bytes;
use http::Method;
use serde_json::json;

use crate::harness::{Gatehouse, PASSWORD, ROUTES};

async fn gatehouse() -> Gatehouse {
    Gatehouse::start(ROUTES, &[]).await
}

async fn refresh(gh: &Gatehouse, refresh_token: &str) -> crate::harness::Reply {
    gh.json(
        Method::POST,
        "/auth/refresh",
        None,
        json!({"refresh_token": refresh_token}),
    )
    .await
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test]
async fn full_session_lifecycle() {
    let gh = gatehouse().await;
    let user = gh.register("ada@example.com").await;
    assert_eq!(user["user"]["email"], "ada@example.com");
    assert_eq!(user["user"]["roles"], json!(["reader"]));
    assert!(user["user"].get("password_hash").is_none());

    let body = gh
        .login("ada@example.com", PASSWORD)
        .await
        .expect(200)
        .json();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 900);
    assert_eq!(body["refresh_expires_in"], 30 * 86400);
    let access = body["access_token"].as_str().unwrap().to_string();
    let refresh1 = body["refresh_token"].as_str().unwrap().to_string();
    assert!(
        refresh1.len() >= 22,
        "refresh token carries at least 128 bits"
    );

    // The proxied call carries the identity.
    let proxied = gh
        .get_with("/api/items", &[("authorization", &bearer(&access))])
        .await;
    proxied.expect(200);
    assert_eq!(
        proxied.upstream_header("x-auth-user-id").as_deref(),
        user["user"]["id"].as_str()
    );
    assert_eq!(
        proxied.upstream_header("x-auth-email").as_deref(),
        Some("ada@example.com")
    );
    assert_eq!(
        proxied.upstream_header("x-auth-roles").as_deref(),
        Some("reader")
    );

    // verify and me.
    let verified = gh
        .get_with("/auth/verify", &[("authorization", &bearer(&access))])
        .await;
    assert_eq!(verified.expect(200).json()["valid"], true);
    let me = gh
        .get_with("/auth/me", &[("authorization", &bearer(&access))])
        .await;
    assert_eq!(me.expect(200).json()["user"]["email"], "ada@example.com");

    // Refresh rotates.
    let rotated = refresh(&gh, &refresh1).await.expect(200).json();
    let refresh2 = rotated["refresh_token"].as_str().unwrap().to_string();
    let access2 = rotated["access_token"].as_str().unwrap().to_string();
    assert_ne!(refresh1, refresh2);

    // Reusing the rotated token revokes the family, successor included, and its access
    // tokens on the proxy path.
    refresh(&gh, &refresh1)
        .await
        .expect_error(401, "TOKEN_REVOKED");
    refresh(&gh, &refresh2)
        .await
        .expect_error(401, "TOKEN_INVALID");
    gh.get_with("/api/items", &[("authorization", &bearer(&access2))])
        .await
        .expect_error(401, "TOKEN_REVOKED");

    // A new login, then logout: the access token stops at once.
    let (access3, refresh3) = gh.session("ada@example.com", PASSWORD).await;
    gh.get_with("/api/items", &[("authorization", &bearer(&access3))])
        .await
        .expect(200);
    gh.json(Method::POST, "/auth/logout", Some(&access3), json!({}))
        .await
        .expect(200);
    gh.get_with("/api/items", &[("authorization", &bearer(&access3))])
        .await
        .expect_error(401, "TOKEN_REVOKED");
    refresh(&gh, &refresh3)
        .await
        .expect_error(401, "TOKEN_INVALID");

    let metrics = gh.get("/metrics").await.text();
    assert!(
        metrics.contains(r#"gatehouse_auth_events_total{event="refresh",outcome="reuse"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"gatehouse_auth_events_total{event="login",outcome="ok"}"#));
}

#[tokio::test]
async fn logout_all_sessions_and_restart_keeps_revocations() {
    let gh = gatehouse().await;
    gh.register("bo@example.com").await;
    let (a1, _) = gh.session("bo@example.com", PASSWORD).await;
    let (a2, r2) = gh.session("bo@example.com", PASSWORD).await;
    gh.json(
        Method::POST,
        "/auth/logout",
        Some(&a1),
        json!({"all_sessions": true}),
    )
    .await
    .expect(200);
    for token in [&a1, &a2] {
        gh.get_with("/api/items", &[("authorization", &bearer(token))])
            .await
            .expect_error(401, "TOKEN_REVOKED");
    }
    refresh(&gh, &r2).await.expect_error(401, "TOKEN_INVALID");

    // The revocations are durable: a restarted gatehouse still refuses the tokens.
    let gh = gh.restart().await;
    gh.get_with("/api/items", &[("authorization", &bearer(&a2))])
        .await
        .expect_error(401, "TOKEN_REVOKED");
    // And a fresh login works.
    let (a3, _) = gh.session("bo@example.com", PASSWORD).await;
    gh.get_with("/api/items", &[("authorization", &bearer(&a3))])
        .await
        .expect(200);
}

#[tokio::test]
async fn concurrent_refreshes_yield_at_most_one_success() {
    let gh = gatehouse().await;
    gh.register("race@example.com").await;
    for _ in 0..5 {
        let (_, refresh_token) = gh.session("race@example.com", PASSWORD).await;
        let results =
            futures_join(refresh(&gh, &refresh_token), refresh(&gh, &refresh_token)).await;
        let ok = results.iter().filter(|r| r.status == 200).count();
        assert!(
            ok <= 1,
            "two refreshes of one token both succeeded: {results:?}"
        );
        for r in results.iter().filter(|r| r.status != 200) {
            r.expect_error(401, "TOKEN_REVOKED");
        }
    }
}

async fn futures_join<A, B>(a: A, b: B) -> Vec<crate::harness::Reply>
where
    A: std::future::Future<Output = crate::harness::Reply>,
    B: std::future::Future<Output = crate::harness::Reply>,
{
    let (a, b) = tokio::join!(a, b);
    vec![a, b]
}

#[tokio::test]
async fn unknown_user_and_wrong_password_are_indistinguishable() {
    let gh = gatehouse().await;
    gh.register("cy@example.com").await;
    let wrong = gh.login("cy@example.com", "not the password").await;
    let unknown = gh.login("nobody@example.com", "not the password").await;
    wrong.expect_error(401, "INVALID_CREDENTIALS");
    unknown.expect_error(401, "INVALID_CREDENTIALS");
    assert_eq!(wrong.body, unknown.body);
    let strip = |r: &crate::harness::Reply| {
        let mut h = r.headers.clone();
        h.remove("date");
        h.remove("x-request-id");
        h
    };
    assert_eq!(strip(&wrong), strip(&unknown));
}

#[tokio::test]
async fn lockout_counts_per_login_name_and_survives_restart() {
    let gh = Gatehouse::start(
        ROUTES,
        &[
            ("GATEHOUSE_AUTH_LOCKOUT_MAX_FAILURES", "3"),
            ("GATEHOUSE_RATE_LIMITS_LOGIN", "0"),
        ],
    )
    .await;
    gh.register("dee@example.com").await;
    for _ in 0..2 {
        gh.login("dee@example.com", "wrong password!")
            .await
            .expect_error(401, "INVALID_CREDENTIALS");
    }
    // A success resets the counter.
    gh.login("dee@example.com", PASSWORD).await.expect(200);
    for _ in 0..2 {
        gh.login("dee@example.com", "wrong password!")
            .await
            .expect_error(401, "INVALID_CREDENTIALS");
    }
    let locked = gh.login("dee@example.com", "wrong password!").await;
    locked.expect_error(423, "ACCOUNT_LOCKED");
    assert!(
        locked
            .header("retry-after")
            .is_some_and(|v| v.parse::<u64>().unwrap() > 0)
    );
    // Even the right password is refused while locked.
    gh.login("dee@example.com", PASSWORD)
        .await
        .expect_error(423, "ACCOUNT_LOCKED");

    // Unknown names lock the same way: the lockout reveals nothing.
    for _ in 0..3 {
        gh.login("ghost@example.com", "wrong password!").await;
    }
    gh.login("ghost@example.com", "wrong password!")
        .await
        .expect_error(423, "ACCOUNT_LOCKED");

    // Counters survive a restart, and expire with the lock duration.
    let gh = gh.restart().await;
    gh.login("dee@example.com", PASSWORD)
        .await
        .expect_error(423, "ACCOUNT_LOCKED");
    gh.advance(15 * 60 + 1);
    gh.login("dee@example.com", PASSWORD).await.expect(200);
}

#[tokio::test]
async fn registration_refuses_bad_input_and_writes_nothing() {
    let gh = gatehouse().await;
    // Wrong content type, malformed JSON, missing field: 400.
    gh.send(
        Method::POST,
        "/auth/register",
        &[("content-type", "text/plain")],
        Bytes::from_static(b"{}"),
    )
    .await
    .expect_error(400, "INVALID_REQUEST");
    gh.send(
        Method::POST,
        "/auth/register",
        &[("content-type", "application/json")],
        Bytes::from_static(b"{\"email\":"),
    )
    .await
    .expect_error(400, "INVALID_REQUEST");
    gh.json(
        Method::POST,
        "/auth/register",
        None,
        json!({"email": "x@example.com"}),
    )
    .await
    .expect_error(400, "INVALID_REQUEST");
    // Oversized body: 413, before hashing anything.
    let huge = json!({"email": "x@example.com", "password": "p".repeat(200_000)});
    gh.json(Method::POST, "/auth/register", None, huge)
        .await
        .expect_error(413, "PAYLOAD_TOO_LARGE");
    // Bad values: 422 with the field named.
    let bad = gh
        .json(
            Method::POST,
            "/auth/register",
            None,
            json!({"email": "not-an-email", "password": PASSWORD, "username": "a@b"}),
        )
        .await;
    let body = bad.expect_error(422, "VALIDATION_FAILED").json();
    assert!(
        body["error"]["fields"]["email"].is_string()
            && body["error"]["fields"]["username"].is_string(),
        "{body}"
    );
    // Weak passwords: too short, common, a 1 MB one refused fast.
    for password in ["short", "password123", "qwertyuiop"] {
        gh.json(
            Method::POST,
            "/auth/register",
            None,
            json!({"email": "w@example.com", "password": password}),
        )
        .await
        .expect_error(422, "WEAK_PASSWORD");
    }
    // Choosing a role not on the sign-up list.
    gh.json(
        Method::POST,
        "/auth/register",
        None,
        json!({"email": "r@example.com", "password": PASSWORD, "roles": ["admin"]}),
    )
    .await
    .expect_error(422, "VALIDATION_FAILED");
    // Nothing was written: each address is still free.
    for email in ["x@example.com", "w@example.com", "r@example.com"] {
        gh.register(email).await;
    }
    // A taken address (in any case): 409.
    gh.json(
        Method::POST,
        "/auth/register",
        None,
        json!({"email": "X@Example.com", "password": PASSWORD}),
    )
    .await
    .expect_error(409, "EMAIL_ALREADY_EXISTS");
}

#[tokio::test]
async fn closed_registration_and_selectable_roles() {
    let closed = Gatehouse::start(ROUTES, &[("GATEHOUSE_AUTH_REGISTRATION", "closed")]).await;
    closed
        .json(
            Method::POST,
            "/auth/register",
            None,
            json!({"email": "a@example.com", "password": PASSWORD}),
        )
        .await
        .expect_error(403, "FORBIDDEN");

    let open = Gatehouse::start(
        ROUTES,
        &[("GATEHOUSE_AUTH_SELECTABLE_ROLES", "reader,creator")],
    )
    .await;
    let user = open
        .json(
            Method::POST,
            "/auth/register",
            None,
            json!({"email": "c@example.com", "password": PASSWORD, "roles": ["creator"], "username": "cree"}),
        )
        .await
        .expect(201)
        .json();
    assert_eq!(user["user"]["roles"], json!(["creator"]));
    // Login by username works too.
    open.json(
        Method::POST,
        "/auth/login",
        None,
        json!({"username": "CREE", "password": PASSWORD}),
    )
    .await
    .expect(200);
}

#[tokio::test]
async fn change_password_revokes_other_sessions() {
    let gh = gatehouse().await;
    gh.register("eve@example.com").await;
    let (mine, _) = gh.session("eve@example.com", PASSWORD).await;
    let (other, other_refresh) = gh.session("eve@example.com", PASSWORD).await;
    gh.json(
        Method::PUT,
        "/auth/change-password",
        Some(&mine),
        json!({"current_password": "wrong one!!", "new_password": "a brand new secret"}),
    )
    .await
    .expect_error(401, "INVALID_CREDENTIALS");
    gh.json(
        Method::PUT,
        "/auth/change-password",
        Some(&mine),
        json!({"current_password": PASSWORD, "new_password": "a brand new secret"}),
    )
    .await
    .expect(200);
    gh.get_with("/api/items", &[("authorization", &bearer(&mine))])
        .await
        .expect(200);
    gh.get_with("/api/items", &[("authorization", &bearer(&other))])
        .await
        .expect_error(401, "TOKEN_REVOKED");
    refresh(&gh, &other_refresh)
        .await
        .expect_error(401, "TOKEN_INVALID");
    gh.login("eve@example.com", PASSWORD)
        .await
        .expect_error(401, "INVALID_CREDENTIALS");
    gh.login("eve@example.com", "a brand new secret")
        .await
        .expect(200);
}

#[tokio::test]
async fn unknown_auth_endpoints_and_methods() {
    let gh = gatehouse().await;
    gh.get("/auth/nope").await.expect_error(404, "NOT_FOUND");
    let r = gh.get("/auth/login").await;
    r.expect(405);
    assert_eq!(r.header("allow"), Some("POST"));
    gh.get("/auth/me").await.expect_error(401, "TOKEN_MISSING");
    // Found by schemathesis (allow_header_conformance): change-password takes POST as well
    // as PUT, and its 405 must say so.
    let r = gh.get("/auth/change-password").await;
    r.expect(405);
    assert_eq!(r.header("allow"), Some("PUT, POST"));
}

/// Found by schemathesis (negative_data_rejection): serde fills a struct from a JSON array
/// by position, so `[null, null]` was a valid empty admin update and `["e", "p"]` a
/// registration. A JSON body must be an object.
#[tokio::test]
async fn json_bodies_must_be_objects() {
    let gh = gatehouse().await;
    let admin = gh.token("root", &["admin"]);
    let id = gh.register("array@example.com").await["user"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let send = |method: Method, path: String, token: Option<String>, body: &'static str| {
        let gh = &gh;
        async move {
            let auth = token.map(|t| bearer(&t));
            let mut headers = vec![("content-type", "application/json")];
            if let Some(a) = &auth {
                headers.push(("authorization", a.as_str()));
            }
            gh.send(method, &path, &headers, Bytes::from_static(body.as_bytes()))
                .await
        }
    };
    send(
        Method::PATCH,
        format!("/auth/admin/users/{id}"),
        Some(admin.clone()),
        "[null, null]",
    )
    .await
    .expect_error(400, "INVALID_REQUEST");
    send(
        Method::POST,
        "/auth/register".into(),
        None,
        r#"["arrays@example.com", "correct horse battery"]"#,
    )
    .await
    .expect_error(400, "INVALID_REQUEST");
    send(
        Method::POST,
        "/auth/login".into(),
        None,
        r#"[null, null, "x"]"#,
    )
    .await
    .expect_error(400, "INVALID_REQUEST");
    for body in ["\"text\"", "42", "null", "true"] {
        send(Method::POST, "/auth/forgot-password".into(), None, body)
            .await
            .expect_error(400, "INVALID_REQUEST");
    }
    // Objects, with JSON whitespace around them, still work.
    send(
        Method::PATCH,
        format!("/auth/admin/users/{id}"),
        Some(admin),
        " \r\n\t{}",
    )
    .await
    .expect(200);
}

#[tokio::test]
async fn admin_api_manages_users() {
    let gh = gatehouse().await;
    let admin = gh.token("root", &["admin"]);
    let reader = gh.token("someone", &["reader"]);
    gh.get_with("/auth/admin/users", &[("authorization", &bearer(&reader))])
        .await
        .expect_error(403, "FORBIDDEN");
    gh.get("/auth/admin/users")
        .await
        .expect_error(401, "TOKEN_MISSING");

    let created = gh
        .json(
            Method::POST,
            "/auth/admin/users",
            Some(&admin),
            json!({"email": "fay@example.com", "password": PASSWORD, "roles": ["creator"]}),
        )
        .await
        .expect(201)
        .json();
    let id = created["user"]["id"].as_str().unwrap().to_string();
    assert_eq!(created["user"]["locked"], false);
    for i in 0..3 {
        gh.register(&format!("u{i}@example.com")).await;
    }
    // Pagination. An empty `limit=` is not a number (found by schemathesis: it was taken as
    // the default while the OpenAPI document says integer).
    for query in ["limit=", "limit=0", "limit=201", "limit=x"] {
        gh.get_with(
            &format!("/auth/admin/users?{query}"),
            &[("authorization", &bearer(&admin))],
        )
        .await
        .expect_error(422, "VALIDATION_FAILED");
    }
    let page1 = gh
        .get_with(
            "/auth/admin/users?limit=2",
            &[("authorization", &bearer(&admin))],
        )
        .await
        .expect(200)
        .json();
    assert_eq!(page1["users"].as_array().unwrap().len(), 2);
    let cursor = page1["next_cursor"].as_str().unwrap();
    let page2 = gh
        .get_with(
            &format!("/auth/admin/users?limit=2&cursor={cursor}"),
            &[("authorization", &bearer(&admin))],
        )
        .await
        .expect(200)
        .json();
    assert_eq!(page2["users"].as_array().unwrap().len(), 2);

    // Roles: unknown ones refused; a change ends the user's current access tokens.
    let (fay, fay_refresh) = gh.session("fay@example.com", PASSWORD).await;
    gh.json(
        Method::PATCH,
        &format!("/auth/admin/users/{id}"),
        Some(&admin),
        json!({"roles": ["wizard"]}),
    )
    .await
    .expect_error(422, "VALIDATION_FAILED");
    gh.advance(1);
    let patched = gh
        .json(
            Method::PATCH,
            &format!("/auth/admin/users/{id}"),
            Some(&admin),
            json!({"roles": ["reader"]}),
        )
        .await
        .expect(200)
        .json();
    assert_eq!(patched["user"]["roles"], json!(["reader"]));
    gh.get_with("/api/items", &[("authorization", &bearer(&fay))])
        .await
        .expect_error(401, "TOKEN_REVOKED");
    let renewed = refresh(&gh, &fay_refresh).await.expect(200).json();
    assert_eq!(renewed["user"]["roles"], json!(["reader"]));

    // Lock: logins refused, sessions gone; unlock restores.
    gh.json(
        Method::PATCH,
        &format!("/auth/admin/users/{id}"),
        Some(&admin),
        json!({"locked": true}),
    )
    .await
    .expect(200);
    gh.login("fay@example.com", PASSWORD)
        .await
        .expect_error(423, "ACCOUNT_LOCKED");
    gh.json(
        Method::PATCH,
        &format!("/auth/admin/users/{id}"),
        Some(&admin),
        json!({"locked": false}),
    )
    .await
    .expect(200);
    let (fay2, _) = gh.session("fay@example.com", PASSWORD).await;

    let got = gh
        .get_with(
            &format!("/auth/admin/users/{id}"),
            &[("authorization", &bearer(&admin))],
        )
        .await
        .expect(200)
        .json();
    assert_eq!(got["user"]["email"], "fay@example.com");

    gh.json(
        Method::POST,
        &format!("/auth/admin/users/{id}/revoke-sessions"),
        Some(&admin),
        json!({}),
    )
    .await
    .expect(200);
    gh.get_with("/api/items", &[("authorization", &bearer(&fay2))])
        .await
        .expect_error(401, "TOKEN_REVOKED");

    gh.send(
        Method::DELETE,
        &format!("/auth/admin/users/{id}"),
        &[("authorization", &bearer(&admin))],
        Bytes::new(),
    )
    .await
    .expect(204);
    gh.get_with(
        &format!("/auth/admin/users/{id}"),
        &[("authorization", &bearer(&admin))],
    )
    .await
    .expect_error(404, "NOT_FOUND");
    gh.login("fay@example.com", PASSWORD)
        .await
        .expect_error(401, "INVALID_CREDENTIALS");
}

#[tokio::test]
async fn renamed_endpoints_move() {
    let extra = format!("{ROUTES}\n[auth.paths]\nlogin = \"/signin\"\nadmin = \"/manage\"\n");
    let gh = Gatehouse::start(&extra, &[]).await;
    gh.register("ren@example.com").await;
    gh.json(
        Method::POST,
        "/auth/signin",
        None,
        json!({"email": "ren@example.com", "password": PASSWORD}),
    )
    .await
    .expect(200);
    gh.json(
        Method::POST,
        "/auth/login",
        None,
        json!({"email": "ren@example.com", "password": PASSWORD}),
    )
    .await
    .expect_error(404, "NOT_FOUND");
    let admin = gh.token("root", &["admin"]);
    gh.get_with("/auth/manage/users", &[("authorization", &bearer(&admin))])
        .await
        .expect(200);
    gh.get_with("/auth/admin/users", &[("authorization", &bearer(&admin))])
        .await
        .expect_error(404, "NOT_FOUND");
}

/// Purging through the app, on its manual clock: a logged-out family's rotated refresh token
/// is still caught as reuse while the family's access tokens may be live; once they have all
/// expired the purge removes the family, the token is refused as unknown, and
/// `gatehouse_store_purged_total` counts what went.
#[tokio::test]
async fn purge_removes_a_logged_out_family_once_its_access_tokens_expired() {
    let gh = Gatehouse::start("", &[]).await;
    gh.register("ada@example.com").await;
    let (_, first) = gh.session("ada@example.com", PASSWORD).await;
    let refresh = |token: &str| {
        gh.json(
            Method::POST,
            "/auth/refresh",
            None,
            json!({ "refresh_token": token }),
        )
    };
    let rotated = refresh(&first).await.expect(200).json();
    let access = rotated["access_token"].as_str().unwrap().to_string();
    let current = rotated["refresh_token"].as_str().unwrap().to_string();
    gh.json(Method::POST, "/auth/logout", Some(&access), json!({}))
        .await
        .expect(200);

    // Within the access-token lifetime nothing of the family goes.
    gh.app.purge().await;
    refresh(&first).await.expect_error(401, "TOKEN_REVOKED");
    let ttl =
        gh.app.live.config.tokens.access_ttl.as_secs() + gh.app.live.config.tokens.leeway.as_secs();
    gh.advance(ttl);
    gh.app.purge().await;
    refresh(&first).await.expect_error(401, "TOKEN_REVOKED");

    // Past it (and the 2 s margin), the family is purged: refused as unknown, counted.
    gh.advance(3);
    gh.app.purge().await;
    refresh(&first).await.expect_error(401, "TOKEN_INVALID");
    refresh(&current).await.expect_error(401, "TOKEN_INVALID");
    let metrics = gh.get("/metrics").await.text();
    for line in [
        "gatehouse_store_purged_total{kind=\"session\"} 1",
        "gatehouse_store_purged_total{kind=\"refresh_token\"} 2",
        "gatehouse_store_purges_total{result=\"ok\"} 3",
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }
    // The account itself is untouched.
    gh.session("ada@example.com", PASSWORD).await;
}
