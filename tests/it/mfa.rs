//! The TOTP second factor end to end, on sled and on PostgreSQL: setup, confirm, the login
//! challenge, codes computed here from the secret with `totp-rs` on the manual clock (so
//! skew and replay are exact), recovery codes, lockout, `mfa = true` routes, disabling,
//! the admin reset, and the `mfa_token`'s single use and expiry.

use http::Method;
use serde_json::{Value, json};
use totp_rs::{Algorithm, TOTP};

use crate::harness::{Gatehouse, PASSWORD, Setup, T0};
use crate::pg::Schema;

const KEY: &str = "mfa-test-key-0123456789abcdef-0123456789";

/// TOTP with a key, an issuer, the default lockout (five attempts in 15 minutes) spelt
/// out, and a route that needs a second factor beside one that does not.
fn extra() -> String {
    format!(
        r#"
[auth.mfa]
encryption_key = "{KEY}"
issuer = "Acme"

[auth.lockout]
max_failures = 5
window = "15m"
duration = "15m"

[[routes]]
path = "/secure/**"
access = "authenticated"
mfa = true

[[routes]]
path = "/api/**"
access = "authenticated"
"#
    )
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// The code of `secret` (base32) for Unix time `at`, as an authenticator app computes it.
fn code_at(secret: &str, at: u64) -> String {
    let bytes = base32::decode(base32::Alphabet::Rfc4648 { padding: false }, secret).unwrap();
    TOTP::new(Algorithm::SHA1, 6, 1, 30, bytes, None, "t".into())
        .unwrap()
        .generate(at)
}

fn now(gh: &Gatehouse) -> u64 {
    gh.now.load(std::sync::atomic::Ordering::SeqCst)
}

/// The claims of an access token, unverified (the test only reads them).
fn claims(token: &str) -> Value {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// Registers `email`, logs in, sets TOTP up and confirms it: (access token, secret,
/// recovery codes). The confirmation uses the current step's code.
async fn enrolled(gh: &Gatehouse, email: &str) -> (String, String, Vec<String>) {
    gh.register(email).await;
    let (access, _) = gh.session(email, PASSWORD).await;
    let setup = gh
        .json(
            Method::POST,
            "/auth/mfa/totp/setup",
            Some(&access),
            json!({}),
        )
        .await
        .expect(200)
        .json();
    let secret = setup["secret"].as_str().unwrap().to_string();
    assert_eq!(secret.len(), 32, "160 bits in base32: {secret}");
    let url = setup["otpauth_url"].as_str().unwrap();
    assert!(
        url.starts_with("otpauth://totp/Acme:") && url.contains(&format!("secret={secret}")),
        "{url}"
    );
    let confirmed = gh
        .json(
            Method::POST,
            "/auth/mfa/totp/confirm",
            Some(&access),
            json!({"code": code_at(&secret, now(gh))}),
        )
        .await
        .expect(200)
        .json();
    let codes: Vec<String> = confirmed["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    assert_eq!(codes.len(), 10);
    (access, secret, codes)
}

/// Logs in with the password: the `mfa_token` of the 401 `MFA_REQUIRED`.
async fn challenge(gh: &Gatehouse, email: &str) -> String {
    let reply = gh.login(email, PASSWORD).await;
    reply.expect_error(401, "MFA_REQUIRED");
    let body = reply.json();
    assert!(body.get("access_token").is_none(), "{body}");
    body["mfa_token"].as_str().unwrap().to_string()
}

async fn second_step(
    gh: &Gatehouse,
    mfa_token: &str,
    field: &str,
    value: &str,
) -> crate::harness::Reply {
    gh.json(
        Method::POST,
        "/auth/login/mfa",
        None,
        json!({"mfa_token": mfa_token, field: value}),
    )
    .await
}

/// A login by password alone succeeds, with `amr: ["pwd"]`.
async fn password_only(gh: &Gatehouse, email: &str) {
    let body = gh.login(email, PASSWORD).await.expect(200).json();
    assert_eq!(body["amr"], json!(["pwd"]));
}

/// `DELETE /auth/admin/users/{id}/mfa` as `token`.
async fn admin_reset_as(gh: &Gatehouse, path: &str, token: &str) -> crate::harness::Reply {
    gh.send(
        Method::DELETE,
        path,
        &[("authorization", &bearer(token))],
        Default::default(),
    )
    .await
}

/// A fresh session through both factors, a step after the last code used: its access token.
async fn mfa_session(gh: &Gatehouse, email: &str, secret: &str) -> String {
    gh.advance(30);
    let token = challenge(gh, email).await;
    let body = second_step(gh, &token, "code", &code_at(secret, now(gh)))
        .await
        .expect(200)
        .json();
    body["access_token"].as_str().unwrap().to_string()
}

/// A login on the WebSocket auth channel for an account with TOTP answers `MFA_REQUIRED`
/// with the `mfa_token` beside the error, as HTTP does, and that token completes the login
/// over HTTP with `otp` in `amr`; the channel never hands out tokens on the password alone.
#[tokio::test]
async fn the_auth_channel_answers_mfa_required_with_its_token() {
    let gh = Gatehouse::start(&extra(), &[]).await;
    let (_, secret, _) = enrolled(&gh, "ch@example.com").await;
    let mut channel = crate::auth_channel::connect(&gh).await;
    let payload = channel
        .ask(
            "login",
            json!({"username": "ch@example.com", "password": PASSWORD}),
        )
        .await;
    assert_eq!(
        crate::auth_channel::error_code(&payload),
        "MFA_REQUIRED",
        "{payload}"
    );
    assert!(payload.get("access_token").is_none(), "{payload}");
    let mfa_token = payload["mfa_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no mfa_token: {payload}"));
    // Not the code of the enrolment's step: that one is spent.
    gh.advance(30);
    let body = second_step(&gh, mfa_token, "code", &code_at(&secret, now(&gh)))
        .await
        .expect(200)
        .json();
    let access = body["access_token"].as_str().unwrap();
    assert_eq!(claims(access)["amr"], json!(["pwd", "otp"]));
    // Single use, whichever transport minted it.
    second_step(&gh, mfa_token, "code", &code_at(&secret, now(&gh)))
        .await
        .expect_error(401, "INVALID_CREDENTIALS");
}

/// The whole flow, on whatever store `gh` has.
async fn flow(gh: &Gatehouse) {
    let (plain_access, secret, recovery) = enrolled(gh, "ann@example.com").await;
    assert_eq!(claims(&plain_access)["amr"], json!(["pwd"]));

    // mfa = true refuses the password-only token; other routes take it.
    gh.get_with("/secure/x", &[("authorization", &bearer(&plain_access))])
        .await
        .expect_error(403, "MFA_REQUIRED");
    gh.get_with("/api/x", &[("authorization", &bearer(&plain_access))])
        .await
        .expect(200);

    // Setup again while enabled: refused.
    gh.json(
        Method::POST,
        "/auth/mfa/totp/setup",
        Some(&plain_access),
        json!({}),
    )
    .await
    .expect_error(409, "MFA_STATE_CONFLICT");

    // The confirmation's own code cannot log in: its step is spent.
    let token = challenge(gh, "ann@example.com").await;
    second_step(gh, &token, "code", &code_at(&secret, now(gh)))
        .await
        .expect_error(401, "INVALID_CREDENTIALS");

    // A fresh step's code logs in, with amr pwd + otp, in the token and the response.
    gh.advance(30);
    let token = challenge(gh, "ann@example.com").await;
    let code = code_at(&secret, now(gh));
    let body = second_step(gh, &token, "code", &code)
        .await
        .expect(200)
        .json();
    assert_eq!(body["amr"], json!(["pwd", "otp"]));
    let access = body["access_token"].as_str().unwrap().to_string();
    let refresh = body["refresh_token"].as_str().unwrap().to_string();
    assert_eq!(claims(&access)["amr"], json!(["pwd", "otp"]));
    gh.get_with("/secure/x", &[("authorization", &bearer(&access))])
        .await
        .expect(200);

    // The mfa_token is single use, even with a right code.
    second_step(gh, &token, "code", &code)
        .await
        .expect_error(401, "INVALID_CREDENTIALS");
    // The same code with a new challenge: a replay within its window.
    let token = challenge(gh, "ann@example.com").await;
    second_step(gh, &token, "code", &code)
        .await
        .expect_error(401, "INVALID_CREDENTIALS");

    // Refresh keeps the session's amr.
    let refreshed = gh.refresh(&refresh).await.expect(200).json();
    assert_eq!(refreshed["amr"], json!(["pwd", "otp"]));
    assert_eq!(
        claims(refreshed["access_token"].as_str().unwrap())["amr"],
        json!(["pwd", "otp"])
    );

    // ±1 step of skew: the next step's code is taken (and spends every step up to it).
    gh.advance(300);
    let t = now(gh);
    let token = challenge(gh, "ann@example.com").await;
    second_step(gh, &token, "code", &code_at(&secret, t + 30))
        .await
        .expect(200);
    // The previous step's code is now older than the last accepted step: refused.
    let token = challenge(gh, "ann@example.com").await;
    second_step(gh, &token, "code", &code_at(&secret, t - 30))
        .await
        .expect_error(401, "INVALID_CREDENTIALS");
    // A clean slate (the failed code above counts), then one step behind is taken.
    gh.advance(300);
    let t = now(gh);
    let token = challenge(gh, "ann@example.com").await;
    second_step(gh, &token, "code", &code_at(&secret, t - 30))
        .await
        .expect(200);
    // ±2 steps are refused.
    gh.advance(300);
    let t = now(gh);
    for far in [t - 60, t + 60] {
        let code = code_at(&secret, far);
        let near = [t - 30, t, t + 30].map(|n| code_at(&secret, n));
        if near.contains(&code) {
            continue; // a 1-in-a-million collision of six-digit codes
        }
        let token = challenge(gh, "ann@example.com").await;
        second_step(gh, &token, "code", &code)
            .await
            .expect_error(401, "INVALID_CREDENTIALS");
    }

    // A recovery code works once, in any spelling (a new lockout window: the four
    // attempts above are forgotten).
    gh.advance(15 * 60);
    let token = challenge(gh, "ann@example.com").await;
    let loose = recovery[0].replace('-', " ").to_uppercase();
    let body = second_step(gh, &token, "recovery_code", &loose)
        .await
        .expect(200)
        .json();
    assert_eq!(body["amr"], json!(["pwd", "otp"]));
    let token = challenge(gh, "ann@example.com").await;
    second_step(gh, &token, "recovery_code", &recovery[0])
        .await
        .expect_error(401, "INVALID_CREDENTIALS");
    // Both fields, or neither: a malformed request.
    gh.json(
        Method::POST,
        "/auth/login/mfa",
        None,
        json!({"mfa_token": "x", "code": "123456", "recovery_code": "y"}),
    )
    .await
    .expect_error(400, "INVALID_REQUEST");

    // The mfa_token expires (5 minutes by default).
    gh.advance(900);
    let token = challenge(gh, "ann@example.com").await;
    gh.advance(301);
    second_step(gh, &token, "code", &code_at(&secret, now(gh)))
        .await
        .expect_error(401, "INVALID_CREDENTIALS");

    // A password change voids a pending challenge.
    gh.advance(900);
    let access = mfa_session(gh, "ann@example.com", &secret).await;
    let token = challenge(gh, "ann@example.com").await;
    gh.json(
        Method::PUT,
        "/auth/change-password",
        Some(&access),
        json!({"current_password": PASSWORD, "new_password": "another long passphrase"}),
    )
    .await
    .expect(200);
    second_step(gh, &token, "code", &code_at(&secret, now(gh)))
        .await
        .expect_error(401, "INVALID_CREDENTIALS");
    gh.json(
        Method::PUT,
        "/auth/change-password",
        Some(&access),
        json!({"current_password": "another long passphrase", "new_password": PASSWORD}),
    )
    .await
    .expect(200);

    // Disabling needs the password; a wrong one is 401.
    let access = mfa_session(gh, "ann@example.com", &secret).await;
    let reply = gh
        .json(
            Method::DELETE,
            "/auth/mfa/totp",
            Some(&access),
            json!({"password": "not the password"}),
        )
        .await;
    reply.expect_error(401, "INVALID_CREDENTIALS");
    gh.json(
        Method::DELETE,
        "/auth/mfa/totp",
        Some(&access),
        json!({"password": PASSWORD}),
    )
    .await
    .expect(204);
    // Without a second factor the password logs in again, amr pwd only.
    password_only(gh, "ann@example.com").await;
    gh.json(
        Method::DELETE,
        "/auth/mfa/totp",
        Some(&access),
        json!({"password": PASSWORD}),
    )
    .await
    .expect_error(409, "MFA_STATE_CONFLICT");
}

/// Failed codes count towards the login name's lockout, and a correct password alone does
/// not reset the count.
async fn lockout(gh: &Gatehouse) {
    let (_, secret, _) = enrolled(gh, "bo@example.com").await;
    gh.advance(60);
    let wrong = |t: u64| {
        let mut code = code_at(&secret, t);
        // Any other six digits than the three acceptable codes.
        while [t - 30, t, t + 30]
            .iter()
            .any(|n| code_at(&secret, *n) == code)
        {
            let n: u32 = code.parse().unwrap();
            code = format!("{:06}", (n + 1) % 1_000_000);
        }
        code
    };
    // Five attempts per window, passwords and codes alike: password (1), wrong code (2),
    // password (3), wrong code (4), password (5): the fifth attempt is the last one.
    let token = challenge(gh, "bo@example.com").await;
    second_step(gh, &token, "code", &wrong(now(gh)))
        .await
        .expect_error(401, "INVALID_CREDENTIALS");
    let token = challenge(gh, "bo@example.com").await;
    second_step(gh, &token, "code", &wrong(now(gh)))
        .await
        .expect_error(401, "INVALID_CREDENTIALS");
    // The correct password did not reset the count: the next one is the fifth attempt,
    // and the code after it is over the budget.
    let token = challenge(gh, "bo@example.com").await;
    second_step(gh, &token, "code", &code_at(&secret, now(gh)))
        .await
        .expect_error(423, "ACCOUNT_LOCKED");
    gh.login("bo@example.com", PASSWORD)
        .await
        .expect_error(423, "ACCOUNT_LOCKED");

    // After the lock, a completed login clears the count.
    gh.advance(15 * 60 + 1);
    let token = challenge(gh, "bo@example.com").await;
    second_step(gh, &token, "code", &code_at(&secret, now(gh)))
        .await
        .expect(200);
    // Four attempts: below the budget only because the completed login cleared it.
    for _ in 0..2 {
        let token = challenge(gh, "bo@example.com").await;
        second_step(gh, &token, "code", &wrong(now(gh)))
            .await
            .expect_error(401, "INVALID_CREDENTIALS");
    }
}

/// An admin resets a user's second factor: audited, and the password logs in again.
async fn admin_reset(gh: &Gatehouse) {
    enrolled(gh, "cy@example.com").await;
    challenge(gh, "cy@example.com").await;
    let admin = gh.token("root", &["admin"]);
    let reader = gh.token("someone", &["reader"]);
    let users = gh
        .get_with("/auth/admin/users", &[("authorization", &bearer(&admin))])
        .await
        .expect(200)
        .json();
    let id = users["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["email"] == "cy@example.com")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let path = format!("/auth/admin/users/{id}/mfa");
    admin_reset_as(gh, &path, &reader)
        .await
        .expect_error(403, "FORBIDDEN");
    admin_reset_as(gh, &path, &admin).await.expect(204);
    password_only(gh, "cy@example.com").await;
    admin_reset_as(gh, &path, &admin)
        .await
        .expect_error(409, "MFA_STATE_CONFLICT");
    admin_reset_as(gh, "/auth/admin/users/no-such-user/mfa", &admin)
        .await
        .expect_error(404, "NOT_FOUND");
}

/// A login whose stored hash is due an upgrade (an imported bcrypt hash, or argon2
/// parameters changed since) rehashes it to the configured argon2id. With a second factor,
/// that upgrade landing between the password step and the code (a human types the code;
/// the upgrade takes milliseconds) must not void the challenge, which is bound to the
/// password hash that was verified.
#[tokio::test]
async fn an_upgraded_hash_does_not_void_the_challenge() {
    let gh = Gatehouse::start(&extra(), &[]).await;
    let email = "upgrade@example.com";
    let (_, secret, _) = enrolled(&gh, email).await;
    let store = &gh.app.store;
    let login = gatehouse::store::fold(email);
    let user = store.find_user_by_login(&login).await.unwrap().unwrap();
    let imported = bcrypt::hash(PASSWORD, 4).unwrap();
    store
        .update_user(
            &user.id,
            &gatehouse::store::UserUpdate {
                password_hash: Some(imported.clone()),
                updated_at: now(&gh),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    // A fresh step: the confirmation spent the current one.
    gh.advance(30);
    let token = challenge(&gh, email).await;
    // The upgrade has landed by the time the code arrives (polled, never timed).
    let mut upgraded = false;
    for _ in 0..3000 {
        let hash = store
            .find_user_by_login(&login)
            .await
            .unwrap()
            .unwrap()
            .password_hash;
        if hash.starts_with("$argon2id$") {
            upgraded = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(upgraded, "the bcrypt hash was never upgraded");
    let reply = second_step(&gh, &token, "code", &code_at(&secret, now(&gh))).await;
    reply.expect(200);
    assert_eq!(
        claims(reply.json()["access_token"].as_str().unwrap())["amr"],
        json!(["pwd", "otp"])
    );
}

#[tokio::test]
async fn totp_on_sled() {
    let gh = Gatehouse::start(&extra(), &[]).await;
    assert_eq!(now(&gh), T0);
    flow(&gh).await;
    lockout(&gh).await;
    admin_reset(&gh).await;
}

#[tokio::test]
async fn totp_on_postgres() {
    let Some(schema) = Schema::create().await else {
        return;
    };
    let url = schema.url("");
    let upstream = gatehouse::demo::echo_upstream().await.unwrap();
    let extra = extra();
    let env = [
        ("GATEHOUSE_STORE_BACKEND", "postgres"),
        ("GATEHOUSE_STORE_URL", url.as_str()),
        ("GATEHOUSE_STORE_POOL_SIZE", "4"),
    ];
    let gh = Gatehouse::launch(Setup {
        env: &env,
        ..Setup::new(upstream, &extra)
    })
    .await;
    flow(&gh).await;
    lockout(&gh).await;
    admin_reset(&gh).await;
    gh.stop().await;
}

#[tokio::test]
async fn setup_needs_an_encryption_key_and_a_pending_secret() {
    let gh = Gatehouse::start("", &[]).await;
    gh.register("di@example.com").await;
    let (access, _) = gh.session("di@example.com", PASSWORD).await;
    gh.json(
        Method::POST,
        "/auth/mfa/totp/setup",
        Some(&access),
        json!({}),
    )
    .await
    .expect_error(404, "MFA_NOT_CONFIGURED");
    gh.json(Method::POST, "/auth/mfa/totp/setup", None, json!({}))
        .await
        .expect_error(401, "TOKEN_MISSING");

    let gh = Gatehouse::start(&extra(), &[]).await;
    gh.register("di@example.com").await;
    let (access, _) = gh.session("di@example.com", PASSWORD).await;
    gh.json(
        Method::POST,
        "/auth/mfa/totp/confirm",
        Some(&access),
        json!({"code": "123456"}),
    )
    .await
    .expect_error(409, "MFA_STATE_CONFLICT");
    // Setup again replaces the pending secret: a code of the first no longer confirms.
    let first = gh
        .json(
            Method::POST,
            "/auth/mfa/totp/setup",
            Some(&access),
            json!({}),
        )
        .await
        .expect(200)
        .json();
    let second = gh
        .json(
            Method::POST,
            "/auth/mfa/totp/setup",
            Some(&access),
            json!({}),
        )
        .await
        .expect(200)
        .json();
    assert_ne!(first["secret"], second["secret"]);
    let old = code_at(first["secret"].as_str().unwrap(), now(&gh));
    let new = code_at(second["secret"].as_str().unwrap(), now(&gh));
    if old != new {
        gh.json(
            Method::POST,
            "/auth/mfa/totp/confirm",
            Some(&access),
            json!({"code": old}),
        )
        .await
        .expect_error(422, "VALIDATION_FAILED");
    }
    // Still pending: the password alone logs in.
    gh.login("di@example.com", PASSWORD).await.expect(200);
    gh.json(
        Method::POST,
        "/auth/mfa/totp/confirm",
        Some(&access),
        json!({"code": new}),
    )
    .await
    .expect(200);
    challenge(&gh, "di@example.com").await;

    // The secret is sealed in the store, never in clear.
    let id = gh.login("di@example.com", PASSWORD).await.json();
    assert_eq!(id["error"]["code"], "MFA_REQUIRED");
    let users = gh.app.store.list_users(10, None).await.unwrap();
    let user = &users.users[0];
    let record = gh.app.store.get_mfa(&user.id).await.unwrap().unwrap();
    let secret = base32::decode(
        base32::Alphabet::Rfc4648 { padding: false },
        second["secret"].as_str().unwrap(),
    )
    .unwrap();
    assert!(
        !record
            .secret
            .windows(secret.len())
            .any(|w| w == secret.as_slice()),
        "the stored secret must be sealed"
    );
    assert_eq!(record.recovery_codes.len(), 10);
    assert!(!format!("{record:?}").contains(&format!("{:?}", record.secret)));
}
