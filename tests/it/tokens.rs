//! Token verification on the proxy path (issue 2, point 6): attack-shaped tokens are refused
//! with 401, the right code and an RFC 6750 challenge, never with a 5xx.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::Method;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::harness::{Gatehouse, ROUTES, Reply, SECRET, T0};

/// Claims as gatehouse issues them, at the harness clock's start.
fn claims() -> Value {
    json!({
        "sub": "mallory",
        "email": "mallory@example.com",
        "roles": ["admin"],
        "email_verified": true,
        "iss": "gatehouse",
        "aud": "api",
        "iat": T0,
        "nbf": T0,
        "exp": T0 + 900,
        "jti": "0190a0a0-0000-7000-8000-000000000000",
        "sid": "forged-session",
        "token_use": "access",
    })
}

fn header(alg: Algorithm) -> Header {
    let mut header = Header::new(alg);
    header.typ = Some("at+jwt".into());
    header
}

fn sign(header: &Header, claims: &Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(header, claims, &EncodingKey::from_secret(secret)).unwrap()
}

/// A token whose header and payload are the given JSON, with any signature segment.
fn hand_made(header: &Value, claims: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

fn without(mut claims: Value, key: &str) -> Value {
    claims.as_object_mut().unwrap().remove(key);
    claims
}

/// Asserts a token refusal: 401, the code, and the challenge that goes with it.
#[track_caller]
fn refused(r: &Reply, code: &str) {
    r.expect_error(401, code);
    let challenge = r.header("www-authenticate").unwrap_or_else(|| {
        panic!("{}: no WWW-Authenticate: {r:?}", r.request);
    });
    assert!(challenge.starts_with("Bearer "), "{challenge}");
    assert!(challenge.contains("realm="), "{challenge}");
    if code == "TOKEN_MISSING" {
        // RFC 6750 §3.1: no error attribute when the request had no credentials at all.
        assert!(!challenge.contains("error="), "{challenge}");
    } else {
        assert!(
            challenge.contains("error=\"invalid_token\""),
            "{}: {challenge}",
            r.request
        );
    }
}

async fn get_with_token(gh: &Gatehouse, path: &str, token: &str) -> Reply {
    let auth = format!("Bearer {token}");
    gh.get_with(path, &[("authorization", &auth)]).await
}

/// The hand-made control token is accepted, so every refusal below is for the one thing
/// each case changes.
#[tokio::test]
async fn the_forging_kit_makes_tokens_gatehouse_accepts() {
    let gh = Gatehouse::start(ROUTES, &[]).await;
    let token = sign(&header(Algorithm::HS256), &claims(), SECRET.as_bytes());
    let r = get_with_token(&gh, "/api/admin/x", &token).await;
    r.expect(200);
    assert_eq!(
        r.upstream_header("x-auth-user-id").as_deref(),
        Some("mallory")
    );
}

#[tokio::test]
async fn attack_shaped_tokens_are_401_token_invalid() {
    let gh = Gatehouse::start(ROUTES, &[]).await;
    let good = sign(&header(Algorithm::HS256), &claims(), SECRET.as_bytes());
    let (good_head, good_rest) = good.split_once('.').unwrap();
    let good_sig = good.rsplit('.').next().unwrap();
    let none_header = json!({"alg": "none", "typ": "at+jwt"});
    let tampered_claims = URL_SAFE_NO_PAD.encode(with(claims(), "sub", json!("root")).to_string());
    let mut no_typ = Header::new(Algorithm::HS256);
    no_typ.typ = None;
    let mut jwt_typ = Header::new(Algorithm::HS256);
    jwt_typ.typ = Some("JWT".into());

    let cases: Vec<(&str, String)> = vec![
        (
            "alg none, empty signature",
            hand_made(&none_header, &claims(), ""),
        ),
        (
            "alg none, some signature",
            hand_made(&none_header, &claims(), "AAAA"),
        ),
        (
            "alg None spelled oddly",
            hand_made(&json!({"alg": "nOnE", "typ": "at+jwt"}), &claims(), "AAAA"),
        ),
        (
            "alg HS512 with the real secret",
            sign(&header(Algorithm::HS512), &claims(), SECRET.as_bytes()),
        ),
        (
            "alg HS384 with the real secret",
            sign(&header(Algorithm::HS384), &claims(), SECRET.as_bytes()),
        ),
        (
            "alg RS256 header over an HS256 signature",
            hand_made(
                &json!({"alg": "RS256", "typ": "at+jwt"}),
                &claims(),
                good_sig,
            ),
        ),
        (
            "wrong secret",
            sign(
                &header(Algorithm::HS256),
                &claims(),
                b"another-secret-0123456789abcdef-0123456789",
            ),
        ),
        (
            "payload swapped under a valid signature",
            format!(
                "{good_head}.{tampered_claims}.{}",
                good_rest.rsplit('.').next().unwrap()
            ),
        ),
        (
            "signature flipped",
            format!(
                "{}{}",
                &good[..good.len() - 2],
                if good.ends_with("AA") { "BB" } else { "AA" }
            ),
        ),
        (
            "signature removed",
            format!("{}.", good.rsplit_once('.').unwrap().0),
        ),
        (
            "wrong issuer",
            sign(
                &header(Algorithm::HS256),
                &with(claims(), "iss", json!("evil")),
                SECRET.as_bytes(),
            ),
        ),
        (
            "wrong audience",
            sign(
                &header(Algorithm::HS256),
                &with(claims(), "aud", json!("other-api")),
                SECRET.as_bytes(),
            ),
        ),
        (
            "audience list without ours",
            sign(
                &header(Algorithm::HS256),
                &with(claims(), "aud", json!(["x", "y"])),
                SECRET.as_bytes(),
            ),
        ),
        (
            "not yet valid",
            sign(
                &header(Algorithm::HS256),
                &with(claims(), "nbf", json!(T0 + 60)),
                SECRET.as_bytes(),
            ),
        ),
        (
            "no exp",
            sign(
                &header(Algorithm::HS256),
                &without(claims(), "exp"),
                SECRET.as_bytes(),
            ),
        ),
        (
            "no sub",
            sign(
                &header(Algorithm::HS256),
                &without(claims(), "sub"),
                SECRET.as_bytes(),
            ),
        ),
        (
            "a refresh token dressed as a JWT",
            sign(
                &header(Algorithm::HS256),
                &with(claims(), "token_use", json!("refresh")),
                SECRET.as_bytes(),
            ),
        ),
        (
            "no token_use",
            sign(
                &header(Algorithm::HS256),
                &without(claims(), "token_use"),
                SECRET.as_bytes(),
            ),
        ),
        ("no typ", sign(&no_typ, &claims(), SECRET.as_bytes())),
        ("typ JWT", sign(&jwt_typ, &claims(), SECRET.as_bytes())),
        ("garbage", "not-a-token".into()),
        ("two segments", "abc.def".into()),
        ("four segments", format!("{good}.AAAA")),
        ("empty segments", "..".into()),
        ("base64 of nonsense", "AAAA.BBBB.CCCC".into()),
        (
            "JSON that is not an object",
            hand_made(&json!([1]), &json!("x"), "AAAA"),
        ),
        ("padded base64", format!("{good_head}=.{good_rest}")),
        (
            "an opaque refresh token",
            gatehouse::token::random_token().unwrap(),
        ),
        (
            "8 KiB + 1 of dots and letters",
            format!("a.{}.b", "c".repeat(8 * 1024)),
        ),
    ];
    for (name, token) in &cases {
        let r = get_with_token(&gh, "/api/items", token).await;
        assert!(r.status.as_u16() < 500, "{name}: {r:?}");
        refused(&r, "TOKEN_INVALID");
        // Never echoed back.
        assert!(!r.text().contains(token.as_str()), "{name}: token echoed");
    }
}

#[tokio::test]
async fn malformed_authorization_headers_are_401_token_invalid() {
    let gh = Gatehouse::start(ROUTES, &[]).await;
    let good = gh.token("alice", &["reader"]);
    let bearer = format!("Bearer {good}");
    let cases: Vec<(&str, Vec<(&str, String)>)> = vec![
        (
            "Basic credentials",
            vec![("authorization", "Basic YWxpY2U6c2VjcmV0".into())],
        ),
        (
            "Bearer without a token",
            vec![("authorization", "Bearer".into())],
        ),
        (
            "Bearer and a space",
            vec![("authorization", "Bearer ".into())],
        ),
        (
            "two spaces",
            vec![("authorization", format!("Bearer  {good}"))],
        ),
        (
            "token without scheme",
            vec![("authorization", good.clone())],
        ),
        (
            "Token scheme",
            vec![("authorization", format!("Token {good}"))],
        ),
        (
            "trailing junk",
            vec![("authorization", format!("Bearer {good} x"))],
        ),
        (
            "two Authorization headers, both valid",
            vec![
                ("authorization", bearer.clone()),
                ("authorization", bearer.clone()),
            ],
        ),
        (
            "two Authorization headers, one Basic",
            vec![
                ("authorization", "Basic YWxpY2U6c2VjcmV0".into()),
                ("authorization", bearer.clone()),
            ],
        ),
    ];
    for (name, headers) in &cases {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = gh
            .send(Method::GET, "/api/items", &headers, bytes::Bytes::new())
            .await;
        assert!(r.status.as_u16() < 500, "{name}: {r:?}");
        refused(&r, "TOKEN_INVALID");
    }
    // Control: the scheme is case-insensitive (RFC 7235 §2.1) and the token itself is fine.
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let auth = format!("{scheme} {good}");
        gh.get_with("/api/items", &[("authorization", &auth)])
            .await
            .expect(200);
    }
}

#[tokio::test]
async fn raw_bytes_and_duplicate_headers_on_the_wire_are_refused() {
    let gh = Gatehouse::start(ROUTES, &[]).await;
    let good = gh.token("alice", &["reader"]);
    // The same header twice on the wire, and a token with a character outside b64token.
    let cases = [
        format!(
            "GET /api/items HTTP/1.1\r\nHost: gh\r\nAuthorization: Bearer {good}\r\n\
             Authorization: Bearer {good}\r\nConnection: close\r\n\r\n"
        ),
        format!(
            "GET /api/items HTTP/1.1\r\nHost: gh\r\nAuthorization: Bearer {good}\"\r\n\
             Connection: close\r\n\r\n"
        ),
    ];
    for request in cases {
        let r = gh.raw(request.as_bytes()).await;
        assert!(r.status.as_u16() < 500, "{r:?}");
        refused(&r, "TOKEN_INVALID");
    }
    // Bytes that are not UTF-8 at all.
    let mut request =
        b"GET /api/items HTTP/1.1\r\nHost: gh\r\nAuthorization: Bearer a\xffb.c.d\r\n".to_vec();
    request.extend_from_slice(b"Connection: close\r\n\r\n");
    let r = gh.raw(&request).await;
    assert!(r.status.as_u16() < 500, "{r:?}");
    refused(&r, "TOKEN_INVALID");
}

#[tokio::test]
async fn oversized_tokens_are_refused_never_5xx() {
    // Under the default header limit, hyper refuses a 100 KB header line outright.
    let gh = Gatehouse::start(ROUTES, &[]).await;
    let huge = format!(
        "{}.{}.{}",
        "a".repeat(50_000),
        "b".repeat(50_000),
        "c".repeat(100)
    );
    let r = get_with_token(&gh, "/api/items", &huge).await;
    assert_eq!(r.status.as_u16(), 431, "{r:?}");

    // With a header limit large enough to let it through, the verifier refuses it.
    let gh = Gatehouse::start(ROUTES, &[("GATEHOUSE_SERVER_MAX_HEADER_BYTES", "262144")]).await;
    let r = get_with_token(&gh, "/api/items", &huge).await;
    refused(&r, "TOKEN_INVALID");
    let metrics = gh.get("/metrics").await.text();
    assert!(
        metrics.contains("gatehouse_auth_failures_total{reason=\"oversized\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn expiry_follows_the_clock_with_the_leeway() {
    let gh = Gatehouse::start(ROUTES, &[]).await;
    let token = gh.token("alice", &["reader"]);
    get_with_token(&gh, "/api/items", &token).await.expect(200);
    // 15 minutes of life plus 5 s of leeway: fine one second before, expired at the edge.
    gh.advance(900 + 5 - 1);
    get_with_token(&gh, "/api/items", &token).await.expect(200);
    gh.advance(1);
    let r = get_with_token(&gh, "/api/items", &token).await;
    refused(&r, "TOKEN_EXPIRED");
    assert!(
        r.header("www-authenticate").unwrap().contains("expired"),
        "{r:?}"
    );
    // Far in the future too.
    gh.advance(365 * 86_400);
    refused(
        &get_with_token(&gh, "/api/items", &token).await,
        "TOKEN_EXPIRED",
    );
}

#[tokio::test]
async fn not_before_follows_the_clock_with_the_leeway() {
    let gh = Gatehouse::start(ROUTES, &[]).await;
    let token = sign(
        &header(Algorithm::HS256),
        &with(claims(), "nbf", json!(T0 + 60)),
        SECRET.as_bytes(),
    );
    refused(
        &get_with_token(&gh, "/api/items", &token).await,
        "TOKEN_INVALID",
    );
    gh.advance(60 - 5);
    get_with_token(&gh, "/api/items", &token).await.expect(200);
}

#[tokio::test]
async fn a_missing_token_is_401_token_missing_with_a_bare_challenge() {
    let gh = Gatehouse::start(ROUTES, &[]).await;
    for path in ["/api/items", "/api/admin/users"] {
        refused(&gh.get(path).await, "TOKEN_MISSING");
    }
}

#[tokio::test]
async fn public_routes_refuse_bad_tokens_and_forward_good_ones() {
    let gh = Gatehouse::start(ROUTES, &[]).await;
    // Invalid, expired, revoked: refused even where no token is needed.
    let forged = sign(
        &header(Algorithm::HS256),
        &claims(),
        b"wrong-secret-0123456789abcdef-0123",
    );
    refused(
        &get_with_token(&gh, "/public/x", &forged).await,
        "TOKEN_INVALID",
    );
    refused(
        &get_with_token(&gh, "/public/x", "garbage").await,
        "TOKEN_INVALID",
    );

    let token = gh.token("alice", &["reader"]);
    let r = get_with_token(&gh, "/public/x", &token).await;
    r.expect(200);
    assert_eq!(
        r.upstream_header("x-auth-user-id").as_deref(),
        Some("alice")
    );
    assert_eq!(r.upstream_header("x-auth-roles").as_deref(), Some("reader"));

    // Anonymous stays anonymous.
    let r = gh.get("/public/x").await;
    r.expect(200);
    assert_eq!(r.upstream_header("x-auth-user-id"), None);

    gh.advance(905);
    refused(
        &get_with_token(&gh, "/public/x", &token).await,
        "TOKEN_EXPIRED",
    );
}

#[tokio::test]
async fn revoked_sessions_are_401_token_revoked() {
    let gh = Gatehouse::start(ROUTES, &[]).await;
    let token = gh.token("alice", &["reader"]);
    get_with_token(&gh, "/api/items", &token).await.expect(200);
    gh.app
        .revocations
        .revoke_session("test-session", T0 + 900, T0);
    for path in ["/api/items", "/public/x"] {
        refused(&get_with_token(&gh, path, &token).await, "TOKEN_REVOKED");
    }
    // A token of another session is untouched.
    let other = sign(&header(Algorithm::HS256), &claims(), SECRET.as_bytes());
    get_with_token(&gh, "/api/items", &other).await.expect(200);
}

#[tokio::test]
async fn refusals_are_counted_by_reason() {
    let gh = Gatehouse::start(ROUTES, &[]).await;
    let forged = sign(
        &header(Algorithm::HS256),
        &claims(),
        b"wrong-secret-0123456789abcdef-0123",
    );
    let hs512 = sign(&header(Algorithm::HS512), &claims(), SECRET.as_bytes());
    let wrong_iss = sign(
        &header(Algorithm::HS256),
        &with(claims(), "iss", json!("x")),
        SECRET.as_bytes(),
    );
    let good = gh.token("alice", &["reader"]);
    for token in [
        forged.as_str(),
        forged.as_str(),
        hs512.as_str(),
        wrong_iss.as_str(),
        "junk",
    ] {
        get_with_token(&gh, "/api/items", token).await.expect(401);
    }
    gh.get("/api/items").await.expect(401);
    gh.app
        .revocations
        .revoke_session("test-session", T0 + 900, T0);
    get_with_token(&gh, "/api/items", &good).await.expect(401);

    let metrics = gh.get("/metrics").await.text();
    for (reason, count) in [
        ("signature", 2),
        ("algorithm", 1),
        ("issuer", 1),
        ("malformed", 1),
        ("missing", 1),
        ("revoked", 1),
    ] {
        let line = format!("gatehouse_auth_failures_total{{reason=\"{reason}\"}} {count}");
        assert!(metrics.contains(&line), "no `{line}` in\n{metrics}");
    }
}

/// The verified-token cache (on by default) only ever answers for the exact bytes it
/// verified: once a good token has been used, a copy with another payload and the same
/// signature, or the same payload and another signature, is still refused, and the good
/// token still has its time checked.
#[tokio::test]
async fn a_cached_token_makes_no_other_token_good() {
    let gh = Gatehouse::start(ROUTES, &[]).await;
    let token = gh.token("alice", &["reader"]);
    get_with_token(&gh, "/api/items", &token).await.expect(200);
    get_with_token(&gh, "/api/items", &token).await.expect(200);

    let (message, signature) = token.rsplit_once('.').unwrap();
    let (head, _) = message.split_once('.').unwrap();
    let mut admin = claims();
    admin["sub"] = json!("alice");
    let forged_payload = format!(
        "{head}.{}.{signature}",
        URL_SAFE_NO_PAD.encode(admin.to_string())
    );
    refused(
        &get_with_token(&gh, "/api/admin/users", &forged_payload).await,
        "TOKEN_INVALID",
    );
    let mut other_sig = signature.as_bytes().to_vec();
    other_sig[0] = if other_sig[0] == b'A' { b'B' } else { b'A' };
    let forged_signature = format!("{message}.{}", String::from_utf8(other_sig).unwrap());
    refused(
        &get_with_token(&gh, "/api/items", &forged_signature).await,
        "TOKEN_INVALID",
    );
    // A prefix of the good token, and the good token with a byte appended.
    refused(
        &get_with_token(&gh, "/api/items", &token[..token.len() - 1]).await,
        "TOKEN_INVALID",
    );
    refused(
        &get_with_token(&gh, "/api/items", &format!("{token}A")).await,
        "TOKEN_INVALID",
    );
    get_with_token(&gh, "/api/items", &token).await.expect(200);
    gh.advance(905);
    refused(
        &get_with_token(&gh, "/api/items", &token).await,
        "TOKEN_EXPIRED",
    );
}
