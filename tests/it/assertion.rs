//! Signed identity for upstreams (issue 14, item 5; `[headers] assertion`): the echo
//! upstream receives the assertion and the test verifies it as an upstream would, with
//! `jsonwebtoken` against the key set gatehouse serves; a client's own is removed; an
//! anonymous caller gets none; an assertion is refused as a bearer token; forward-auth
//! answers it; the header's name and lifetime reload live; check-config refuses it under
//! HS256 and beyond 60 seconds.

use std::path::Path;

use bytes::Bytes;
use http::Method;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation};
use serde_json::{Value, json};

use crate::harness::{Gatehouse, PASSWORD, ROUTES, T0};
use gatehouse::config::{Config, Purpose};
use gatehouse::token::{Algorithm, keys};

const HEADER: &str = "x-auth-assertion";

/// A fresh EdDSA key in `dir` and the `[[tokens.keys]]` entry naming it.
pub fn key_toml(dir: &Path) -> String {
    let (pem, _) = keys::generate(Algorithm::EdDSA).unwrap();
    let path = dir.join("k.pem");
    std::fs::write(&path, pem).unwrap();
    format!(
        "[[tokens.keys]]\nkid = \"k1\"\nprivate_key = \"{}\"\n",
        path.display()
    )
}

/// The config of these tests: the usual routes, the key, and `headers`.
fn config(key: &str, headers: &str) -> String {
    format!("{ROUTES}\n{key}\n[headers]\n{headers}\n")
}

const EDDSA: [(&str, &str); 1] = [("GATEHOUSE_TOKENS_ALGORITHM", "EdDSA")];

/// Verifies `token` as an upstream would, sharing nothing with gatehouse: the key set
/// parsed as JWKs, the key picked by `kid`, the algorithm the JWK's, `iss` and `aud`
/// checked, `exp` against the harness clock. Returns the header and the claims.
pub fn verify_as_upstream(
    jwks: &Value,
    token: &str,
    audience: &str,
    now: u64,
) -> (jsonwebtoken::Header, Value) {
    let header = jsonwebtoken::decode_header(token).unwrap();
    let set: JwkSet = serde_json::from_value(jwks.clone()).unwrap();
    let jwk = set.find(header.kid.as_deref().unwrap()).unwrap();
    let alg = jwk.common.key_algorithm.unwrap().to_string();
    let mut validation = Validation::new(alg.parse().unwrap());
    validation.set_issuer(&["gatehouse"]);
    validation.set_audience(&[audience]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    // The harness clock runs at T0, not the wall clock: exp is checked below against it.
    validation.validate_exp = false;
    let claims =
        jsonwebtoken::decode::<Value>(token, &DecodingKey::from_jwk(jwk).unwrap(), &validation)
            .unwrap_or_else(|e| panic!("assertion refused against the JWKS: {e}"))
            .claims;
    let exp = claims["exp"].as_u64().unwrap();
    let iat = claims["iat"].as_u64().unwrap();
    assert!(iat <= now && now < exp, "iat {iat} exp {exp} now {now}");
    assert!(exp - iat <= 60, "lifetime {}", exp - iat);
    (header, claims)
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test]
async fn the_upstream_receives_a_verifiable_assertion_and_nothing_else_can_pose_as_one() {
    let dir = tempfile::tempdir().unwrap();
    let gh = Gatehouse::start(
        &config(&key_toml(dir.path()), "assertion = \"X-Auth-Assertion\"\n"),
        &EDDSA,
    )
    .await;
    let audience = format!("http://{}", gh.upstream);
    let jwks = gh.get("/.well-known/jwks.json").await.json();
    gh.register("ada@example.com").await;
    let (access, _) = gh.session("ada@example.com", PASSWORD).await;

    // A client's own assertion, in any spelling, never reaches the upstream; gatehouse's does.
    let spoofed = [
        ("authorization", bearer(&access)),
        (HEADER, "forged".to_string()),
        ("X_Auth_Assertion", "forged".to_string()),
    ];
    let spoofed: Vec<(&str, &str)> = spoofed.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let reply = gh.get_with("/api/items", &spoofed).await;
    reply.expect(200);
    assert_eq!(reply.upstream_header_count(HEADER), 1, "{}", reply.text());
    assert_eq!(reply.upstream_header_count("x_auth_assertion"), 0);
    let assertion = reply.upstream_header(HEADER).unwrap();
    let (header, claims) = verify_as_upstream(&jwks, &assertion, &audience, T0);
    assert_eq!(header.typ.as_deref(), Some("gatehouse-assertion+jwt"));
    assert_eq!(header.kid.as_deref(), Some("k1"));
    assert_eq!(
        claims["sub"],
        reply.upstream_header("x-auth-user-id").unwrap()
    );
    assert_eq!(claims["email"], "ada@example.com");
    assert_eq!(claims["roles"], json!(["reader"]));
    assert_eq!(claims["amr"], json!(["pwd"]));
    assert_eq!(claims["token_use"], "assertion");
    assert_eq!(claims["exp"], T0 + 30);
    assert!(claims["jti"].is_string());

    // The next request within half its lifetime gets the same one, from the cache; past
    // that, a fresh one.
    let again = gh
        .get_with("/api/items", &[("authorization", &bearer(&access))])
        .await;
    assert_eq!(again.upstream_header(HEADER).as_deref(), Some(&*assertion));
    gh.advance(15);
    let later = gh
        .get_with("/api/items", &[("authorization", &bearer(&access))])
        .await
        .upstream_header(HEADER)
        .unwrap();
    assert_ne!(later, assertion);
    let (_, claims) = verify_as_upstream(&jwks, &later, &audience, T0 + 15);
    assert_eq!(claims["exp"], T0 + 45);
    let metrics = gh.get("/metrics").await.text();
    for series in [
        r#"gatehouse_assertions_total{source="cached"} 1"#,
        r#"gatehouse_assertions_total{source="signed"} 2"#,
    ] {
        assert!(metrics.contains(series), "no {series} in\n{metrics}");
    }

    // An anonymous caller of a public route gets none, and a client's is still removed.
    let reply = gh.get_with("/public/x", &[(HEADER, "forged")]).await;
    reply.expect(200);
    assert_eq!(reply.upstream_header_count(HEADER), 0, "{}", reply.text());

    // An assertion is not an access token: refused as a bearer on the proxy path and by
    // gatehouse's own endpoints, though signed by the same key.
    gh.get_with("/api/items", &[("authorization", &bearer(&later))])
        .await
        .expect_error(401, "TOKEN_INVALID");
    gh.get_with("/auth/me", &[("authorization", &bearer(&later))])
        .await
        .expect_error(401, "TOKEN_INVALID");
    gh.stop().await;
}

#[tokio::test]
async fn a_configured_audience_name_and_lifetime_apply_and_reload_live() {
    let dir = tempfile::tempdir().unwrap();
    let key = key_toml(dir.path());
    let first = config(
        &key,
        "assertion = \"X-Upstream-Proof\"\nassertion_audience = \"https://orders.internal\"\nassertion_ttl = \"10s\"\n",
    );
    let gh = Gatehouse::start(&first, &EDDSA).await;
    let jwks = gh.get("/.well-known/jwks.json").await.json();
    gh.register("ada@example.com").await;
    let (access, _) = gh.session("ada@example.com", PASSWORD).await;
    let auth = bearer(&access);

    // A name outside the X-Auth- prefix is removed from clients all the same.
    let reply = gh
        .get_with(
            "/api/items",
            &[
                ("authorization", &auth),
                ("x-upstream-proof", "forged"),
                ("X_Upstream_Proof", "forged"),
            ],
        )
        .await;
    assert_eq!(reply.upstream_header_count("x-upstream-proof"), 1);
    assert_eq!(reply.upstream_header_count("x_upstream_proof"), 0);
    assert_eq!(reply.upstream_header_count(HEADER), 0);
    let proof = reply.upstream_header("x-upstream-proof").unwrap();
    let (_, claims) = verify_as_upstream(&jwks, &proof, "https://orders.internal", T0);
    assert_eq!(claims["exp"], T0 + 10);

    // Another name and lifetime, by reload: in force for the next request.
    let next = config(
        &key,
        "assertion = \"X-Auth-Assertion\"\nassertion_audience = \"https://orders.internal\"\nassertion_ttl = \"1m\"\n",
    );
    let gatehouse::reload::Outcome::Applied { needs_restart, .. } = gh.reload(&next) else {
        panic!("reload refused");
    };
    assert!(needs_restart.is_empty(), "{needs_restart:?}");
    let jwks = gh.get("/.well-known/jwks.json").await.json();
    let reply = gh.get_with("/api/items", &[("authorization", &auth)]).await;
    assert_eq!(reply.upstream_header_count("x-upstream-proof"), 0);
    let proof = reply.upstream_header(HEADER).unwrap();
    let (_, claims) = verify_as_upstream(&jwks, &proof, "https://orders.internal", T0);
    assert_eq!(claims["exp"], T0 + 60);

    // Off by reload: none is sent, and a client's is still removed by the X-Auth- prefix.
    let off = config(&key, "");
    assert!(matches!(
        gh.reload(&off),
        gatehouse::reload::Outcome::Applied { .. }
    ));
    let reply = gh
        .get_with(
            "/api/items",
            &[("authorization", &auth), (HEADER, "forged")],
        )
        .await;
    reply.expect(200);
    assert_eq!(reply.upstream_header_count(HEADER), 0);
    gh.stop().await;
}

#[tokio::test]
async fn forward_auth_answers_the_assertion_for_the_ingress_to_copy() {
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "{}\n[forward_auth]\nenabled = true\n",
        config(
            &key_toml(dir.path()),
            "assertion = \"X-Auth-Assertion\"\nassertion_audience = \"https://app.example.com\"\n"
        )
    );
    let gh = Gatehouse::start(&extra, &EDDSA).await;
    let jwks = gh.get("/.well-known/jwks.json").await.json();
    gh.register("ada@example.com").await;
    let (access, _) = gh.session("ada@example.com", PASSWORD).await;
    let ask = |target: &'static str, token: Option<String>| {
        let mut headers = vec![
            ("x-forwarded-method", "GET".to_string()),
            ("x-forwarded-uri", target.to_string()),
            ("x-forwarded-host", "app.example.com".to_string()),
            ("x-forwarded-proto", "https".to_string()),
        ];
        if let Some(token) = token {
            headers.push(("authorization", bearer(&token)));
        }
        headers
    };
    let send = |headers: Vec<(&'static str, String)>| {
        let gh = &gh;
        async move {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            gh.send(Method::GET, "/auth/forward", &headers, Bytes::new())
                .await
        }
    };

    let reply = send(ask("/api/items", Some(access.clone()))).await;
    reply.expect(200);
    let assertion = reply.header(HEADER).unwrap().to_string();
    let (_, claims) = verify_as_upstream(&jwks, &assertion, "https://app.example.com", T0);
    assert_eq!(claims["email"], "ada@example.com");
    assert_eq!(reply.header("x-auth-email"), Some("ada@example.com"));

    // Anonymous: present and empty, so an ingress that copies it overwrites a client's.
    let reply = send(ask("/public/x", None)).await;
    reply.expect(200);
    assert_eq!(reply.header(HEADER), Some(""));
    gh.stop().await;
}

#[test]
fn check_config_refuses_it_under_hs256_beyond_a_minute_and_on_the_access_audience() {
    let dir = tempfile::tempdir().unwrap();
    let base = "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = \"http://127.0.0.1:3000\"\n";
    let errors = |text: &str| -> Vec<(String, String)> {
        match Config::check(text, std::iter::empty(), Purpose::Serve).config {
            Ok(_) => Vec::new(),
            Err(e) => e.0.into_iter().map(|e| (e.key, e.message)).collect(),
        }
    };
    let key = key_toml(dir.path());
    let tokens = |extra: &str| format!("[tokens]\nalgorithm = \"EdDSA\"\n{extra}{key}");
    let eddsa = tokens("");
    let hs256 = "[tokens]\nsecret = \"0123456789abcdef0123456789abcdef\"\n";

    // HS256: upstreams would need the secret.
    let found = errors(&format!(
        "{base}{hs256}[headers]\nassertion = \"X-Auth-Assertion\"\n"
    ));
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].0, "headers.assertion");
    assert!(found[0].1.contains("asymmetric"), "{found:#?}");
    // Off under HS256 is fine.
    assert!(errors(&format!("{base}{hs256}")).is_empty());

    // More than 60 seconds, or none.
    for ttl in ["61s", "2m", "0"] {
        let found = errors(&format!(
            "{base}{eddsa}[headers]\nassertion = \"X-Auth-Assertion\"\nassertion_ttl = \"{ttl}\"\n"
        ));
        assert_eq!(found.len(), 1, "{ttl}: {found:#?}");
        assert_eq!(found[0].0, "headers.assertion_ttl");
        assert!(found[0].1.contains("out of range"), "{found:#?}");
    }

    // The access tokens' audience, or another header's name.
    let found = errors(&format!(
        "{base}{}[headers]\nassertion = \"X-Auth-Assertion\"\nassertion_audience = \"orders\"\n",
        tokens("audience = \"orders\"\n")
    ));
    assert_eq!(
        found.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
        ["headers.assertion_audience"],
        "{found:#?}"
    );
    let found = errors(&format!(
        "{base}{eddsa}[headers]\nassertion = \"x-auth-roles\"\n"
    ));
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(found[0].1.contains("another header"), "{found:#?}");

    // Accepted, with the upstream's origin as the default audience.
    let loaded = Config::check(
        &format!("{base}{eddsa}[headers]\nassertion = \"X-Auth-Assertion\"\n"),
        std::iter::empty(),
        Purpose::Serve,
    );
    let config = loaded.config.unwrap();
    assert_eq!(config.headers.assertion_audience, "http://127.0.0.1:3000");
    assert_eq!(config.headers.assertion_ttl.as_secs(), 30);
}
