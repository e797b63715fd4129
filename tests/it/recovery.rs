//! Account recovery and email verification through real HTTP and real SMTP: gatehouse mails
//! an in-process SMTP sink ([`crate::smtp_sink`]), and each test follows the link in the mail
//! the way a user would.

use std::time::Duration;

use bytes::Bytes;
use http::Method;
use serde_json::{Value, json};

use crate::harness::{Gatehouse, PASSWORD, ROUTES, Reply, dead_addr};
use crate::smtp_sink::{Captured, SmtpSink};

const PUBLIC_URL: &str = "https://app.test";
const NEW_PASSWORD: &str = "purple monkey dishwasher";
const RESET_SUBJECT: &str = "Reset your password";
const VERIFY_SUBJECT: &str = "Confirm your email address";
const CHANGED_SUBJECT: &str = "Your password was changed";
const RESET_LINK: &str = "https://app.test/auth/reset-password?token=";
const VERIFY_LINK: &str = "https://app.test/auth/verify-email?token=";

/// gatehouse mailing `smtp_url`, links under [`PUBLIC_URL`], plus `env`.
async fn gatehouse_mailing(smtp_url: &str, env: &[(&str, &str)]) -> Gatehouse {
    let mut all = vec![
        ("GATEHOUSE_EMAIL_MODE", "smtp"),
        ("GATEHOUSE_EMAIL_SMTP_URL", smtp_url),
        ("GATEHOUSE_EMAIL_FROM", "accounts@app.test"),
        ("GATEHOUSE_SERVER_PUBLIC_URL", PUBLIC_URL),
    ];
    all.extend_from_slice(env);
    Gatehouse::start(ROUTES, &all).await
}

/// gatehouse and the sink it mails.
async fn with_sink(env: &[(&str, &str)]) -> (Gatehouse, SmtpSink) {
    let sink = SmtpSink::start().await;
    let gh = gatehouse_mailing(&sink.url(), env).await;
    (gh, sink)
}

/// gatehouse in log mode with debug tokens, for flows driven without a mailbox.
async fn debug_gatehouse(env: &[(&str, &str)]) -> Gatehouse {
    let mut all = vec![("GATEHOUSE_AUTH_EXPOSE_DEBUG_TOKENS", "true")];
    all.extend_from_slice(env);
    Gatehouse::start(ROUTES, &all).await
}

/// Asks for a reset of `email`'s password and returns the token from the first mail.
async fn mailed_reset_token(gh: &Gatehouse, sink: &SmtpSink, email: &str) -> String {
    forgot(gh, email).await.expect(202);
    sink.wait(email, RESET_SUBJECT, 1).await.token(RESET_LINK)
}

async fn forgot(gh: &Gatehouse, email: &str) -> Reply {
    gh.json(
        Method::POST,
        "/auth/forgot-password",
        None,
        json!({"email": email}),
    )
    .await
}

async fn validate(gh: &Gatehouse, token: &str) -> Reply {
    gh.json(
        Method::POST,
        "/auth/reset-password/validate",
        None,
        json!({"token": token}),
    )
    .await
}

async fn reset(gh: &Gatehouse, token: &str, password: &str) -> Reply {
    gh.json(
        Method::POST,
        "/auth/reset-password",
        None,
        json!({"token": token, "new_password": password}),
    )
    .await
}

async fn verify_email(gh: &Gatehouse, token: &str) -> Reply {
    gh.json(
        Method::POST,
        "/auth/verify-email",
        None,
        json!({"token": token}),
    )
    .await
}

/// Percent-encodes a form the way a browser does.
fn form(pairs: &[(&str, &str)]) -> Bytes {
    let encode = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => {
                    (b as char).to_string()
                }
                b' ' => "+".to_string(),
                b => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    let body: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect();
    Bytes::from(body.join("&"))
}

async fn post_form(gh: &Gatehouse, path: &str, pairs: &[(&str, &str)]) -> Reply {
    gh.send(
        Method::POST,
        path,
        &[("content-type", "application/x-www-form-urlencoded")],
        form(pairs),
    )
    .await
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// The path and query of a link under [`PUBLIC_URL`], to request from gatehouse directly.
fn local_path(link: &str) -> &str {
    link.strip_prefix(PUBLIC_URL)
        .unwrap_or_else(|| panic!("{link} is not under {PUBLIC_URL}"))
}

/// Polls `/metrics` until `series` appears (a counter shows up at its first increment).
async fn wait_for_metric(gh: &Gatehouse, series: &str) -> String {
    for _ in 0..500 {
        let text = gh.get("/metrics").await.text();
        if text.lines().any(|l| l.starts_with(series)) {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let text = gh.get("/metrics").await.text();
    let mail: Vec<&str> = text.lines().filter(|l| l.contains("mail_total")).collect();
    panic!("{series} never appeared in /metrics; mail series: {mail:#?}");
}

/// Polls the admin view until `done` holds.
async fn wait_for_admin_view(gh: &Gatehouse, done: impl Fn(&Value) -> bool) -> Value {
    let admin = gh.token("boss", &["admin"]);
    let mut last = Value::Null;
    for _ in 0..500 {
        last = gh
            .get_with(
                "/auth/admin/recovery",
                &[("authorization", &bearer(&admin))],
            )
            .await
            .expect(200)
            .json();
        if done(&last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the admin view never got there: {last:#}");
}

fn assert_page_headers(reply: &Reply) {
    assert!(
        reply
            .header("content-type")
            .is_some_and(|v| v.starts_with("text/html")),
        "{reply:?}"
    );
    let csp = reply.header("content-security-policy").unwrap_or_default();
    for directive in [
        "default-src 'none'",
        "frame-ancestors 'none'",
        "form-action 'self'",
        "base-uri 'none'",
    ] {
        assert!(csp.contains(directive), "CSP lacks {directive}: {csp}");
    }
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(reply.header("referrer-policy"), Some("no-referrer"));
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    assert_eq!(reply.header("x-frame-options"), Some("DENY"));
    assert_eq!(reply.header("x-content-type-options"), Some("nosniff"));
}

/// Every inline `<script>` and `<style>` carries the nonce the CSP names, and nothing is
/// loaded from elsewhere.
fn assert_self_contained(reply: &Reply) {
    let csp = reply.header("content-security-policy").unwrap_or_default();
    let nonce = csp
        .split("'nonce-")
        .nth(1)
        .and_then(|s| s.split('\'').next())
        .unwrap_or_else(|| panic!("no nonce in {csp}"));
    let html = reply.text();
    for tag in ["<script", "<style"] {
        for (i, _) in html.match_indices(tag) {
            assert!(
                html[i..].starts_with(&format!("{tag} nonce=\"{nonce}\">")),
                "{tag} without the nonce in:\n{html}"
            );
        }
    }
    for external in ["src=", "<link", "http://", "https://", "@import"] {
        assert!(!html.contains(external), "{external} in:\n{html}");
    }
}

#[tokio::test]
async fn reset_flow_from_mail_to_new_login() {
    let (gh, sink) = with_sink(&[]).await;
    let user = gh.register("ada@example.com").await;
    let (old_access, old_refresh) = gh.session("ada@example.com", PASSWORD).await;
    gh.get_with("/api/items", &[("authorization", &bearer(&old_access))])
        .await
        .expect(200);

    let answer = forgot(&gh, "Ada@Example.com").await.expect(202).json();
    assert!(answer.get("debug_token").is_none(), "{answer}");

    // The mail: from the configured sender, text and HTML, the link under public_url.
    let mail = sink.wait("ada@example.com", RESET_SUBJECT, 1).await;
    assert_eq!(mail.to, ["ada@example.com"]);
    assert_eq!(mail.from, "accounts@app.test");
    assert!(
        mail.header("content-type")
            .is_some_and(|v| v.starts_with("multipart/alternative")),
        "{}",
        mail.data
    );
    let link = mail.link(RESET_LINK);
    let token = mail.token(RESET_LINK);
    assert_eq!(token.len(), 43, "32 bytes in base64url: {token}");
    assert!(
        mail.html().contains(&link),
        "the HTML part carries the same link"
    );
    assert!(mail.text().contains("30 minutes"));

    let valid = validate(&gh, &token).await.expect(200).json();
    assert_eq!(valid, json!({"valid": true, "expires_in": 1800}));

    // The page the link opens.
    let page = gh.get(local_path(&link)).await;
    page.expect(200);
    assert_page_headers(&page);
    assert_self_contained(&page);
    let html = page.text();
    for needle in [
        "<form id=\"reset\" method=\"post\" action=\"/auth/reset-password\" \
         data-validate=\"/auth/reset-password/validate\">",
        "name=\"new_password\" type=\"password\"",
        "name=\"confirm_password\" type=\"password\"",
        // The hint is tied to both fields; password managers get the account's name.
        "aria-describedby=\"password-hint\"",
        "<p id=\"password-hint\" class=\"hint\">",
        "<input type=\"text\" name=\"username\" autocomplete=\"username\" \
         value=\"ada@example.com\" readonly hidden>",
        &format!("<input type=\"hidden\" name=\"token\" value=\"{token}\">"),
        "<script nonce=",
    ] {
        assert!(html.contains(needle), "{needle} missing from:\n{html}");
    }

    let done = reset(&gh, &token, NEW_PASSWORD).await.expect(200).json();
    assert_eq!(done, json!({"password_reset": true}));

    // The new password works, the old one does not.
    let (new_access, _) = gh.session("ada@example.com", NEW_PASSWORD).await;
    gh.login("ada@example.com", PASSWORD)
        .await
        .expect_error(401, "INVALID_CREDENTIALS");
    gh.get_with("/api/items", &[("authorization", &bearer(&new_access))])
        .await
        .expect(200);

    // Every old session is gone, on the proxy path and for refresh.
    gh.get_with("/api/items", &[("authorization", &bearer(&old_access))])
        .await
        .expect_error(401, "TOKEN_REVOKED");
    gh.json(
        Method::POST,
        "/auth/refresh",
        None,
        json!({"refresh_token": old_refresh}),
    )
    .await
    .expect(401);

    // The notice, and the address now counts as verified (the link proved it).
    let notice = sink.wait("ada@example.com", CHANGED_SUBJECT, 1).await;
    assert!(notice.text().contains("was changed"), "{}", notice.text());
    let me = gh
        .get_with("/auth/me", &[("authorization", &bearer(&new_access))])
        .await
        .expect(200)
        .json();
    assert_eq!(me["user"]["id"], user["user"]["id"]);
    assert_eq!(me["user"]["email_verified"], true);

    // Single use.
    validate(&gh, &token)
        .await
        .expect_error(400, "INVALID_RESET_TOKEN");
    reset(&gh, &token, "another fine password")
        .await
        .expect_error(400, "INVALID_RESET_TOKEN");
    let used = gh.get(local_path(&link)).await;
    used.expect(400);
    assert_page_headers(&used);
    assert!(used.text().contains("already been used"), "{}", used.text());
    assert!(!used.text().contains("<form"));
}

#[tokio::test]
async fn unknown_and_known_addresses_get_the_same_answer() {
    let (gh, sink) = with_sink(&[]).await;
    gh.register("ada@example.com").await;
    let known = forgot(&gh, "ada@example.com").await;
    let unknown = forgot(&gh, "nobody@example.com").await;
    known.expect(202);
    unknown.expect(202);
    assert_eq!(known.body, unknown.body);
    assert_eq!(known.header("content-type"), unknown.header("content-type"));
    assert!(known.text().contains("If an account exists"));

    sink.wait("ada@example.com", RESET_SUBJECT, 1).await;
    assert!(sink.messages_to("nobody@example.com", "").is_empty());

    // Malformed requests are refused, which reveals nothing about accounts.
    forgot(&gh, "not an address")
        .await
        .expect_error(422, "VALIDATION_FAILED");
    gh.json(Method::POST, "/auth/forgot-password", None, json!({}))
        .await
        .expect_error(400, "INVALID_REQUEST");
}

#[tokio::test]
async fn host_header_cannot_change_the_link() {
    let (gh, sink) = with_sink(&[]).await;
    gh.register("ada@example.com").await;
    gh.send(
        Method::POST,
        "/auth/forgot-password",
        &[
            ("content-type", "application/json"),
            ("host", "evil.example"),
            ("x-forwarded-host", "evil.example"),
            ("forwarded", "host=evil.example"),
        ],
        Bytes::from(json!({"email": "ada@example.com"}).to_string()),
    )
    .await
    .expect(202);
    let mail = sink.wait("ada@example.com", RESET_SUBJECT, 1).await;
    assert!(!mail.data.contains("evil.example"), "{}", mail.data);
    assert!(mail.link(RESET_LINK).starts_with(RESET_LINK));
}

#[tokio::test]
async fn reset_tokens_expire() {
    let (gh, sink) = with_sink(&[]).await;
    gh.register("ada@example.com").await;
    forgot(&gh, "ada@example.com").await.expect(202);
    let mail = sink.wait("ada@example.com", RESET_SUBJECT, 1).await;
    let token = mail.token(RESET_LINK);

    gh.advance(1799);
    assert_eq!(
        validate(&gh, &token).await.expect(200).json()["expires_in"],
        1
    );
    gh.advance(1);
    validate(&gh, &token)
        .await
        .expect_error(400, "INVALID_RESET_TOKEN");
    reset(&gh, &token, NEW_PASSWORD)
        .await
        .expect_error(400, "INVALID_RESET_TOKEN");
    let page = gh.get(local_path(&mail.link(RESET_LINK))).await;
    page.expect(400);
    assert!(page.text().contains("has expired"), "{}", page.text());
    gh.login("ada@example.com", PASSWORD).await.expect(200);
}

#[tokio::test]
async fn two_concurrent_submissions_one_success() {
    let (gh, sink) = with_sink(&[]).await;
    gh.register("ada@example.com").await;
    let token = mailed_reset_token(&gh, &sink, "ada@example.com").await;

    let (a, b) = tokio::join!(
        reset(&gh, &token, "first concurrent password"),
        reset(&gh, &token, "second concurrent password"),
    );
    let mut statuses = [a.status.as_u16(), b.status.as_u16()];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 400], "{a:?}\n{b:?}");
    let (winner, loser) = if a.status == 200 {
        ("first concurrent password", &b)
    } else {
        ("second concurrent password", &a)
    };
    loser.expect_error(400, "INVALID_RESET_TOKEN");
    gh.login("ada@example.com", winner).await.expect(200);
}

#[tokio::test]
async fn a_weak_password_does_not_burn_the_token() {
    let (gh, sink) = with_sink(&[]).await;
    gh.register("ada@example.com").await;
    let token = mailed_reset_token(&gh, &sink, "ada@example.com").await;

    reset(&gh, &token, "short")
        .await
        .expect_error(422, "WEAK_PASSWORD");
    reset(&gh, &token, "ada@example.com")
        .await
        .expect_error(422, "WEAK_PASSWORD");
    validate(&gh, &token).await.expect(200);
    reset(&gh, &token, NEW_PASSWORD).await.expect(200);
    gh.login("ada@example.com", NEW_PASSWORD).await.expect(200);
}

#[tokio::test]
async fn the_form_works_without_javascript() {
    let (gh, sink) = with_sink(&[]).await;
    gh.register("ada@example.com").await;
    let token = mailed_reset_token(&gh, &sink, "ada@example.com").await;
    let path = "/auth/reset-password";

    // Mismatch and weak passwords show the form again, with the problem, token intact.
    let mismatch = post_form(
        &gh,
        path,
        &[
            ("token", &token),
            ("new_password", NEW_PASSWORD),
            ("confirm_password", "something else entirely"),
        ],
    )
    .await;
    mismatch.expect(422);
    assert_page_headers(&mismatch);
    // The problem is an alert, read out as soon as the page loads.
    assert!(
        mismatch
            .text()
            .contains("<p id=\"outcome\" role=\"alert\" class=\"bad\">The two passwords"),
        "{}",
        mismatch.text()
    );
    assert!(
        mismatch.text().contains("do not match"),
        "{}",
        mismatch.text()
    );
    assert!(mismatch.text().contains(&format!("value=\"{token}\"")));

    let weak = post_form(
        &gh,
        path,
        &[
            ("token", &token),
            ("new_password", "short"),
            ("confirm_password", "short"),
        ],
    )
    .await;
    weak.expect(422);
    assert!(
        weak.text().contains("must be at least 8 characters"),
        "{}",
        weak.text()
    );

    // A password with spaces and non-ASCII survives the form encoding.
    let password = "grüne Äpfel & blaue Birnen";
    let done = post_form(
        &gh,
        path,
        &[
            ("token", &token),
            ("new_password", password),
            ("confirm_password", password),
        ],
    )
    .await;
    done.expect(200);
    assert_page_headers(&done);
    assert_self_contained(&done);
    assert!(done.text().contains("has been changed"), "{}", done.text());
    gh.login("ada@example.com", password).await.expect(200);

    let again = post_form(
        &gh,
        path,
        &[
            ("token", &token),
            ("new_password", NEW_PASSWORD),
            ("confirm_password", NEW_PASSWORD),
        ],
    )
    .await;
    again.expect(400);
    assert!(
        again.text().contains("already been used"),
        "{}",
        again.text()
    );
    assert!(again.text().contains("role=\"alert\""), "{}", again.text());

    // A dead link is reported before a mismatch: retyping could never help.
    let dead = post_form(
        &gh,
        path,
        &[
            ("token", &token),
            ("new_password", NEW_PASSWORD),
            ("confirm_password", "something else entirely"),
        ],
    )
    .await;
    dead.expect(400);
    assert!(dead.text().contains("already been used"), "{}", dead.text());
    assert!(!dead.text().contains("do not match"), "{}", dead.text());
}

#[tokio::test]
async fn smtp_down_still_answers_and_counts_the_failure() {
    let dead = format!("smtp://{}", dead_addr());
    let gh = gatehouse_mailing(&dead, &[]).await;
    gh.register("ada@example.com").await;
    let answer = forgot(&gh, "ada@example.com").await;
    answer.expect(202);
    let unknown = forgot(&gh, "nobody@example.com").await;
    assert_eq!(answer.body, unknown.body);

    // The first attempt fails at once (connection refused) and is retried later.
    wait_for_metric(
        &gh,
        r#"gatehouse_mail_total{kind="reset",result="retried"}"#,
    )
    .await;
    let view = wait_for_admin_view(&gh, |v| v["mail"]["sending"].as_u64() >= Some(1)).await;
    assert_eq!(view["mail"]["mode"], "smtp");
    assert_eq!(view["mail"]["sent"], 0);
}

#[tokio::test]
async fn a_refused_mail_is_counted_as_failed() {
    let sink = SmtpSink::rejecting().await;
    let gh = gatehouse_mailing(&sink.url(), &[]).await;
    gh.register("ada@example.com").await;
    // A 550 is permanent: no retry, counted at once.
    let metrics = wait_for_metric(
        &gh,
        r#"gatehouse_mail_total{kind="verify",result="failed"}"#,
    )
    .await;
    assert!(
        !metrics.contains(r#"gatehouse_mail_total{kind="verify",result="retried"}"#),
        "a permanent refusal is not retried"
    );
    let view = wait_for_admin_view(&gh, |v| v["mail"]["failed"] == 1).await;
    assert_eq!(view["mail"]["sent"], 0);
}

#[tokio::test]
async fn verification_flow_with_verified_email_required() {
    let (gh, sink) = with_sink(&[("GATEHOUSE_AUTH_REQUIRE_VERIFIED_EMAIL", "true")]).await;
    gh.register("ada@example.com").await;
    let mail = sink.wait("ada@example.com", VERIFY_SUBJECT, 1).await;
    let link = mail.link(VERIFY_LINK);
    let token = mail.token(VERIFY_LINK);
    assert!(mail.text().contains("24 hours"), "{}", mail.text());

    let (access, refresh) = gh.session("ada@example.com", PASSWORD).await;
    let auth = bearer(&access);
    gh.get_with("/api/items", &[("authorization", &auth)])
        .await
        .expect_error(403, "EMAIL_NOT_VERIFIED");

    // Opening the link shows a button; it does not verify by itself (scanners fetch links).
    let page = gh.get(local_path(&link)).await;
    page.expect(200);
    assert_page_headers(&page);
    assert_self_contained(&page);
    assert!(page.text().contains("action=\"/auth/verify-email\""));
    assert!(page.text().contains(&format!("value=\"{token}\"")));
    let me = gh
        .get_with("/auth/me", &[("authorization", &auth)])
        .await
        .json();
    assert_eq!(me["user"]["email_verified"], false);

    let verified = verify_email(&gh, &token).await.expect(200).json();
    assert_eq!(verified["email_verified"], true);
    assert_eq!(verified["user"]["email_verified"], true);

    // The old access token says what was true when it was issued; a refresh reads the user
    // afresh.
    gh.get_with("/api/items", &[("authorization", &auth)])
        .await
        .expect_error(403, "EMAIL_NOT_VERIFIED");
    let refreshed = gh
        .json(
            Method::POST,
            "/auth/refresh",
            None,
            json!({"refresh_token": refresh}),
        )
        .await
        .expect(200)
        .json();
    assert_eq!(refreshed["user"]["email_verified"], true);
    let fresh = refreshed["access_token"].as_str().unwrap();
    gh.get_with("/api/items", &[("authorization", &bearer(fresh))])
        .await
        .expect(200);

    verify_email(&gh, &token)
        .await
        .expect_error(400, "INVALID_RESET_TOKEN");
}

#[tokio::test]
async fn the_verify_page_posts_a_form() {
    let (gh, sink) = with_sink(&[]).await;
    gh.register("ada@example.com").await;
    let token = sink
        .wait("ada@example.com", VERIFY_SUBJECT, 1)
        .await
        .token(VERIFY_LINK);
    let done = post_form(&gh, "/auth/verify-email", &[("token", &token)]).await;
    done.expect(200);
    assert_page_headers(&done);
    assert!(done.text().contains("is confirmed"), "{}", done.text());
    let again = post_form(&gh, "/auth/verify-email", &[("token", &token)]).await;
    again.expect(400);
    assert!(
        again.text().contains("already been used"),
        "{}",
        again.text()
    );
    assert!(again.text().contains("role=\"alert\""), "{}", again.text());
}

#[tokio::test]
async fn reset_and_verification_tokens_are_not_interchangeable() {
    let (gh, sink) = with_sink(&[]).await;
    gh.register("ada@example.com").await;
    let verify_token = sink
        .wait("ada@example.com", VERIFY_SUBJECT, 1)
        .await
        .token(VERIFY_LINK);
    forgot(&gh, "ada@example.com").await.expect(202);
    let reset_token = sink
        .wait("ada@example.com", RESET_SUBJECT, 1)
        .await
        .token(RESET_LINK);

    validate(&gh, &verify_token)
        .await
        .expect_error(400, "INVALID_RESET_TOKEN");
    reset(&gh, &verify_token, NEW_PASSWORD)
        .await
        .expect_error(400, "INVALID_RESET_TOKEN");
    gh.get(&format!("/auth/reset-password?token={verify_token}"))
        .await
        .expect(400);
    verify_email(&gh, &reset_token)
        .await
        .expect_error(400, "INVALID_RESET_TOKEN");
    gh.get(&format!("/auth/verify-email?token={reset_token}"))
        .await
        .expect(400);

    // Each still works for its own purpose.
    verify_email(&gh, &verify_token).await.expect(200);
    reset(&gh, &reset_token, NEW_PASSWORD).await.expect(200);
}

#[tokio::test]
async fn debug_tokens_and_resend() {
    let gh = debug_gatehouse(&[("GATEHOUSE_AUTH_FORGOT_COOLDOWN", "0s")]).await;
    gh.register("ada@example.com").await;

    let answer = forgot(&gh, "ada@example.com").await.expect(202).json();
    let token = answer["debug_token"]
        .as_str()
        .expect("debug_token")
        .to_string();
    validate(&gh, &token).await.expect(200);
    // Documented: debug tokens give enumeration away.
    let unknown = forgot(&gh, "nobody@example.com").await.expect(202).json();
    assert!(unknown.get("debug_token").is_none(), "{unknown}");
    assert_eq!(unknown["message"], answer["message"]);

    let (access, _) = gh.session("ada@example.com", PASSWORD).await;
    let auth = bearer(&access);
    gh.send(Method::POST, "/auth/verify-email/resend", &[], Bytes::new())
        .await
        .expect_error(401, "TOKEN_MISSING");
    let resent = gh
        .send(
            Method::POST,
            "/auth/verify-email/resend",
            &[("authorization", &auth)],
            Bytes::new(),
        )
        .await
        .expect(202)
        .json();
    let verify_token = resent["debug_token"].as_str().expect("debug_token");
    verify_email(&gh, verify_token).await.expect(200);
    let already = gh
        .send(
            Method::POST,
            "/auth/verify-email/resend",
            &[("authorization", &auth)],
            Bytes::new(),
        )
        .await
        .expect(200)
        .json();
    assert_eq!(already, json!({"email_verified": true}));
}

#[tokio::test]
async fn cooldown_per_address_and_newer_tokens_void_older() {
    let gh = debug_gatehouse(&[]).await;
    gh.register("ada@example.com").await;
    let first = forgot(&gh, "ada@example.com").await.expect(202).json();
    let first = first["debug_token"].as_str().unwrap().to_string();

    // Within the cooldown (2m by default): the same answer, no new token, no mail.
    let second = forgot(&gh, "ADA@example.com ").await.expect(202).json();
    assert!(second.get("debug_token").is_none(), "{second}");
    validate(&gh, &first).await.expect(200);

    gh.advance(120);
    let third = forgot(&gh, "ada@example.com").await.expect(202).json();
    let third = third["debug_token"].as_str().unwrap().to_string();
    validate(&gh, &first)
        .await
        .expect_error(400, "INVALID_RESET_TOKEN");
    validate(&gh, &third).await.expect(200);

    // Resend has a cooldown of its own, and says so to its (authenticated) caller.
    let (access, _) = gh.session("ada@example.com", PASSWORD).await;
    let resend = gh
        .send(
            Method::POST,
            "/auth/verify-email/resend",
            &[("authorization", &bearer(&access))],
            Bytes::new(),
        )
        .await;
    resend.expect(202);
    let again = gh
        .send(
            Method::POST,
            "/auth/verify-email/resend",
            &[("authorization", &bearer(&access))],
            Bytes::new(),
        )
        .await;
    again.expect_error(429, "RATE_LIMITED");
    assert_eq!(again.header("retry-after"), Some("120"));
    assert_eq!(
        again.json()["error"]["message"],
        "A confirmation link was sent recently. Check your inbox and spam folder, or ask for a \
         new link in 120 seconds.",
        "{}",
        again.text()
    );
}

/// The resend budget per client address is its own (`rate_limits.verify_email_resend`), not
/// forgot-password's: spending one leaves the other whole, and its 429 says what it limits.
#[tokio::test]
async fn the_resend_budget_is_its_own() {
    let gh = debug_gatehouse(&[
        ("GATEHOUSE_AUTH_FORGOT_COOLDOWN", "0s"),
        ("GATEHOUSE_RATE_LIMITS_FORGOT_PASSWORD", "1/1h"),
        ("GATEHOUSE_RATE_LIMITS_VERIFY_EMAIL_RESEND", "2/1h"),
    ])
    .await;
    gh.register("ada@example.com").await;
    forgot(&gh, "ada@example.com").await.expect(202);
    forgot(&gh, "ada@example.com")
        .await
        .expect_error(429, "RATE_LIMITED");
    let (access, _) = gh.session("ada@example.com", PASSWORD).await;
    let auth = bearer(&access);
    let headers = [("authorization", auth.as_str())];
    let resend = || {
        gh.send(
            Method::POST,
            "/auth/verify-email/resend",
            &headers,
            Bytes::new(),
        )
    };
    resend().await.expect(202);
    resend().await.expect(202);
    let third = resend().await;
    third.expect_error(429, "RATE_LIMITED");
    assert!(third.header("ratelimit-limit") == Some("2"), "{third:?}");
    let message = third.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.starts_with("A confirmation link was sent recently."),
        "{message}"
    );
}

#[tokio::test]
async fn a_password_change_voids_pending_reset_tokens() {
    let gh = debug_gatehouse(&[]).await;
    gh.register("ada@example.com").await;
    let answer = forgot(&gh, "ada@example.com").await.expect(202).json();
    let token = answer["debug_token"].as_str().unwrap().to_string();
    let (access, _) = gh.session("ada@example.com", PASSWORD).await;
    gh.json(
        Method::PUT,
        "/auth/change-password",
        Some(&access),
        json!({"current_password": PASSWORD, "new_password": NEW_PASSWORD}),
    )
    .await
    .expect(200);
    validate(&gh, &token)
        .await
        .expect_error(400, "INVALID_RESET_TOKEN");
}

#[tokio::test]
async fn a_reset_lifts_a_lockout() {
    let gh = debug_gatehouse(&[]).await;
    gh.register("ada@example.com").await;
    for _ in 0..5 {
        gh.login("ada@example.com", "wrong password").await;
    }
    gh.login("ada@example.com", PASSWORD)
        .await
        .expect_error(423, "ACCOUNT_LOCKED");
    let answer = forgot(&gh, "ada@example.com").await.expect(202).json();
    let token = answer["debug_token"].as_str().unwrap().to_string();
    reset(&gh, &token, NEW_PASSWORD).await.expect(200);
    gh.login("ada@example.com", NEW_PASSWORD).await.expect(200);
}

#[tokio::test]
async fn a_verification_token_dies_with_its_address() {
    let gh = debug_gatehouse(&[("GATEHOUSE_AUTH_FORGOT_COOLDOWN", "0s")]).await;
    let user = gh.register("ada@example.com").await;
    let (access, _) = gh.session("ada@example.com", PASSWORD).await;
    let resent = gh
        .send(
            Method::POST,
            "/auth/verify-email/resend",
            &[("authorization", &bearer(&access))],
            Bytes::new(),
        )
        .await
        .expect(202)
        .json();
    let token = resent["debug_token"].as_str().unwrap().to_string();

    // No endpoint changes addresses yet; the store does, as a future one would.
    let id = user["user"]["id"].as_str().unwrap().to_string();
    gh.app
        .store
        .update_user(
            &id,
            &gatehouse::store::UserUpdate {
                email: Some("ada.new@example.com".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    verify_email(&gh, &token)
        .await
        .expect_error(400, "INVALID_RESET_TOKEN");
}

#[tokio::test]
async fn the_admin_view_counts_without_showing_tokens() {
    let (gh, sink) = with_sink(&[]).await;
    gh.register("ada@example.com").await;
    forgot(&gh, "ada@example.com").await.expect(202);
    let mail: Captured = sink.wait("ada@example.com", RESET_SUBJECT, 1).await;
    let token = mail.token(RESET_LINK);

    let view = wait_for_admin_view(&gh, |v| v["mail"]["sent"] == 2).await;
    assert_eq!(view["tokens"]["password_reset"], 1);
    assert_eq!(view["tokens"]["email_verification"], 1);
    assert_eq!(view["mail"]["failed"], 0);
    assert_eq!(view["mail"]["queued"], 0);
    assert!(!view.to_string().contains(&token));

    let reader = gh.token("someone", &["reader"]);
    gh.get_with(
        "/auth/admin/recovery",
        &[("authorization", &bearer(&reader))],
    )
    .await
    .expect_error(403, "FORBIDDEN");
}

#[tokio::test]
async fn forgot_password_is_rate_limited_per_ip() {
    let gh = Gatehouse::start(ROUTES, &[("GATEHOUSE_RATE_LIMITS_FORGOT_PASSWORD", "2/1h")]).await;
    forgot(&gh, "a@example.com").await.expect(202);
    forgot(&gh, "b@example.com").await.expect(202);
    let limited = forgot(&gh, "c@example.com").await;
    limited.expect_error(429, "RATE_LIMITED");
    assert!(limited.header("retry-after").is_some());
}

#[tokio::test]
async fn wrong_methods_and_malformed_tokens() {
    let gh = Gatehouse::start(ROUTES, &[]).await;
    gh.get("/auth/forgot-password")
        .await
        .expect_error(405, "METHOD_NOT_ALLOWED");
    gh.send(Method::DELETE, "/auth/reset-password", &[], Bytes::new())
        .await
        .expect_error(405, "METHOD_NOT_ALLOWED");
    validate(&gh, "")
        .await
        .expect_error(400, "INVALID_RESET_TOKEN");
    validate(&gh, &"x".repeat(500))
        .await
        .expect_error(400, "INVALID_RESET_TOKEN");
    // A hostile token in the query is neither reflected nor looked up.
    let page = gh
        .get("/auth/reset-password?token=%22%3E%3Cscript%3Ealert(1)%3C/script%3E")
        .await;
    page.expect(400);
    assert!(!page.text().contains("alert(1)"), "{}", page.text());
    gh.get("/auth/reset-password").await.expect(400);
}
