//! Signing keys (issue 14, items 1, 2 and 6): each asymmetric algorithm end to end, tokens
//! verified by an independent implementation against the served JWKS, the discovery
//! documents, the rotation walk of the README (old → [new, old] → [new]), config errors
//! naming their key, `keys generate`, and the strict verifier on the proxy path.

use std::path::Path;
use std::process::Command;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::Method;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation};
use serde_json::{Value, json};

use crate::harness::{Gatehouse, PASSWORD, ROUTES, SECRET, Setup, T0};
use gatehouse::config::{Config, Purpose};
use gatehouse::token::{Algorithm, keys};

const PUBLIC_URL: &str = "https://id.example.com";

/// Writes a fresh key for `alg` into `dir` as `name`; its path.
fn key_file(dir: &Path, name: &str, alg: Algorithm) -> String {
    let (pem, _) = keys::generate(alg).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, pem).unwrap();
    path.to_str().unwrap().to_string()
}

/// `[[tokens.keys]]` entries, in order.
fn keys_toml(keys: &[(&str, &str)]) -> String {
    keys.iter()
        .map(|(kid, path)| format!("[[tokens.keys]]\nkid = \"{kid}\"\nprivate_key = \"{path}\"\n"))
        .collect()
}

fn env(alg: Algorithm) -> Vec<(&'static str, &'static str)> {
    vec![
        ("GATEHOUSE_TOKENS_ALGORITHM", alg.name()),
        ("GATEHOUSE_SERVER_PUBLIC_URL", PUBLIC_URL),
    ]
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn jwt_header(token: &str) -> Value {
    let header = token.split('.').next().unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap()
}

/// Verifies `token` as an upstream would, with nothing of gatehouse's: the key set parsed
/// by `jsonwebtoken`'s JWK types, the key picked by the token's `kid`, the algorithm pinned
/// by the JWK, `iss`/`aud` checked.
fn verify_independently(jwks: &Value, token: &str) -> Value {
    let set: JwkSet = serde_json::from_value(jwks.clone()).unwrap();
    let kid = jwt_header(token)["kid"].as_str().unwrap().to_string();
    let jwk = set
        .find(&kid)
        .unwrap_or_else(|| panic!("kid {kid} not in {jwks}"));
    let alg = jwk.common.key_algorithm.unwrap().to_string();
    let mut validation = Validation::new(alg.parse().unwrap());
    validation.set_issuer(&["gatehouse"]);
    validation.set_audience(&["api"]);
    // The harness clock runs at T0, not the wall clock.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    let key = DecodingKey::from_jwk(jwk).unwrap();
    jsonwebtoken::decode::<Value>(token, &key, &validation)
        .unwrap_or_else(|e| panic!("{alg} token refused by jsonwebtoken against the JWKS: {e}"))
        .claims
}

/// The same with aws-lc-rs' raw primitives from the JWK's own members, sharing no code with
/// `jsonwebtoken`'s JWK handling either.
fn verify_with_raw_primitives(jwks: &Value, token: &str) {
    use aws_lc_rs::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
    let kid = jwt_header(token)["kid"].clone();
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid)
        .unwrap();
    let b64 = |name: &str| URL_SAFE_NO_PAD.decode(jwk[name].as_str().unwrap()).unwrap();
    let (message, sig) = token.rsplit_once('.').unwrap();
    let sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
    let ok = match jwk["kty"].as_str().unwrap() {
        "OKP" => UnparsedPublicKey::new(&signature::ED25519, b64("x"))
            .verify(message.as_bytes(), &sig)
            .is_ok(),
        "EC" => {
            let mut point = vec![4u8];
            point.extend(b64("x"));
            point.extend(b64("y"));
            UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                .verify(message.as_bytes(), &sig)
                .is_ok()
        }
        "RSA" => RsaPublicKeyComponents {
            n: b64("n"),
            e: b64("e"),
        }
        .verify(
            &signature::RSA_PKCS1_2048_8192_SHA256,
            message.as_bytes(),
            &sig,
        )
        .is_ok(),
        other => panic!("kty {other}"),
    };
    assert!(ok, "signature does not verify against {jwk}");
}

#[tokio::test]
async fn each_algorithm_signs_publishes_and_is_verified_independently() {
    for alg in [Algorithm::EdDSA, Algorithm::ES256, Algorithm::RS256] {
        let keys = tempfile::tempdir().unwrap();
        let path = key_file(keys.path(), "k.pem", alg);
        let extra = format!("{ROUTES}\n{}", keys_toml(&[("k1", &path)]));
        let env = env(alg);
        let gh = Gatehouse::start(&extra, &env).await;

        gh.register("ada@example.com").await;
        let (access, refresh) = gh.session("ada@example.com", PASSWORD).await;
        let header = jwt_header(&access);
        assert_eq!(header["alg"], alg.name());
        assert_eq!(header["kid"], "k1");
        assert_eq!(header["typ"], "at+jwt");
        // gatehouse verifies its own token on the proxy path and on its endpoints.
        let reply = gh
            .get_with("/api/items", &[("authorization", &bearer(&access))])
            .await;
        reply.expect(200);
        assert!(reply.upstream_header("x-auth-user-id").is_some());
        gh.get_with("/auth/me", &[("authorization", &bearer(&access))])
            .await
            .expect(200);
        let refreshed = gh.refresh(&refresh).await.expect(200).json();
        assert_eq!(
            jwt_header(refreshed["access_token"].as_str().unwrap())["kid"],
            "k1"
        );

        // The key set: public parameters only, cacheable.
        let reply = gh.get("/.well-known/jwks.json").await;
        reply.expect(200);
        assert_eq!(reply.header("cache-control"), Some("public, max-age=300"));
        assert_eq!(reply.header("content-type"), Some("application/json"));
        let jwks = reply.json();
        let published = jwks["keys"].as_array().unwrap();
        assert_eq!(published.len(), 1, "{jwks}");
        let jwk = &published[0];
        assert_eq!(
            (
                jwk["kid"].as_str(),
                jwk["alg"].as_str(),
                jwk["use"].as_str()
            ),
            (Some("k1"), Some(alg.name()), Some("sig"))
        );
        let expected_members: &[&str] = match alg {
            Algorithm::EdDSA => &["alg", "crv", "kid", "kty", "use", "x"],
            Algorithm::ES256 => &["alg", "crv", "kid", "kty", "use", "x", "y"],
            _ => &["alg", "e", "kid", "kty", "n", "use"],
        };
        let mut members: Vec<&str> = jwk
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        members.sort_unstable();
        assert_eq!(members, expected_members, "{alg}: {jwk}");

        // Someone else's verifier accepts the token from the key set alone.
        let claims = verify_independently(&jwks, &access);
        assert_eq!(claims["email"], "ada@example.com");
        verify_with_raw_primitives(&jwks, &access);

        // Discovery: URLs from server.public_url, whatever Host the client sent.
        for path in [
            "/.well-known/openid-configuration",
            "/.well-known/oauth-authorization-server",
        ] {
            let reply = gh
                .get_with(
                    path,
                    &[
                        ("host", "evil.example"),
                        ("x-forwarded-host", "evil.example"),
                    ],
                )
                .await;
            reply.expect(200);
            assert_eq!(reply.header("cache-control"), Some("public, max-age=300"));
            let doc = reply.json();
            assert_eq!(doc["issuer"], "gatehouse", "{doc}");
            assert_eq!(
                doc["jwks_uri"],
                format!("{PUBLIC_URL}/.well-known/jwks.json")
            );
            assert_eq!(doc["token_endpoint"], format!("{PUBLIC_URL}/auth/login"));
            assert_eq!(
                doc["id_token_signing_alg_values_supported"],
                json!([alg.name()])
            );
            assert!(!doc.to_string().contains("evil"), "{doc}");
        }
        gh.stop().await;
    }
}

#[tokio::test]
async fn well_known_paths_are_served_by_gatehouse_not_the_policy() {
    // HS256 (the default), default-deny policy, no public_url.
    let gh = Gatehouse::start("", &[]).await;
    let reply = gh.get("/.well-known/jwks.json").await;
    reply.expect(200);
    assert_eq!(reply.json(), json!({"keys": []}));
    gh.get("/.well-known/openid-configuration")
        .await
        .expect_error(404, "NOT_FOUND");
    let head = gh
        .send(
            Method::HEAD,
            "/.well-known/jwks.json",
            &[],
            bytes::Bytes::new(),
        )
        .await;
    head.expect(200);
    assert!(head.body.is_empty());
    for method in [Method::POST, Method::PUT, Method::DELETE] {
        let reply = gh
            .send(method, "/.well-known/jwks.json", &[], bytes::Bytes::new())
            .await;
        reply.expect_error(405, "METHOD_NOT_ALLOWED");
        assert_eq!(reply.header("allow"), Some("GET, HEAD"));
    }
    // Other well-known paths are the policy's, which denies them here.
    gh.get("/.well-known/other").await.expect(403);
    gh.stop().await;

    // Discovery under HS256 with a public URL: the algorithm, and an empty key set.
    let gh = Gatehouse::start("", &[("GATEHOUSE_SERVER_PUBLIC_URL", PUBLIC_URL)]).await;
    let doc = gh.get("/.well-known/oauth-authorization-server").await;
    doc.expect(200);
    assert_eq!(
        doc.json()["id_token_signing_alg_values_supported"],
        json!(["HS256"])
    );
    gh.stop().await;
}

/// A proxied read with `token`.
async fn proxied(gh: &Gatehouse, token: &str) -> crate::harness::Reply {
    gh.get_with("/api/items", &[("authorization", &bearer(token))])
        .await
}

/// Stops `gh` and starts gatehouse again on its store and clock with another config, as a
/// redeploy with new keys would.
async fn redeploy(mut gh: Gatehouse, extra: &str, env: &[(&str, &str)]) -> Gatehouse {
    let dir = std::mem::replace(&mut gh.dir, tempfile::tempdir().unwrap());
    let (upstream, now) = (
        gh.upstream,
        gh.now.load(std::sync::atomic::Ordering::SeqCst),
    );
    gh.stop().await;
    Gatehouse::launch_in(
        Setup {
            env,
            ..Setup::new(upstream, extra)
        },
        dir,
        now,
    )
    .await
}

/// The README's rotation procedure, step by step: tokens of the old key stay valid while it
/// verifies, new tokens carry the new kid, and once it is removed its tokens are refused.
#[tokio::test]
async fn the_rotation_walk() {
    let alg = Algorithm::EdDSA;
    let keys = tempfile::tempdir().unwrap();
    let old = key_file(keys.path(), "2026-10.pem", alg);
    let new = key_file(keys.path(), "2026-11.pem", alg);
    let env = env(alg);
    let config = |list: &[(&str, &str)]| format!("{ROUTES}\n{}", keys_toml(list));
    let kids = |jwks: Value| -> Vec<String> {
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_string())
            .collect()
    };

    // 1. [old]: the old key signs.
    let gh = Gatehouse::start(&config(&[("2026-10", &old)]), &env).await;
    gh.register("ada@example.com").await;
    let (old_token, refresh) = gh.session("ada@example.com", PASSWORD).await;
    assert_eq!(jwt_header(&old_token)["kid"], "2026-10");
    proxied(&gh, &old_token).await.expect(200);

    // 2. [new, old]: the new key signs, the old one still verifies.
    let gh = redeploy(gh, &config(&[("2026-11", &new), ("2026-10", &old)]), &env).await;
    assert_eq!(
        kids(gh.get("/.well-known/jwks.json").await.json()),
        ["2026-11", "2026-10"]
    );
    proxied(&gh, &old_token).await.expect(200);
    let (new_token, _) = gh.session("ada@example.com", PASSWORD).await;
    assert_eq!(jwt_header(&new_token)["kid"], "2026-11");
    // A session begun under the old key refreshes into a token of the new one.
    let refreshed = gh.refresh(&refresh).await.expect(200).json();
    let refreshed = refreshed["access_token"].as_str().unwrap().to_string();
    assert_eq!(jwt_header(&refreshed)["kid"], "2026-11");
    proxied(&gh, &new_token).await.expect(200);

    // 3. [new]: the old key is gone, so its tokens are refused by their kid, even one that
    //    has not expired (in production this step waits out access_ttl, so none is left).
    let gh = redeploy(gh, &config(&[("2026-11", &new)]), &env).await;
    assert_eq!(
        kids(gh.get("/.well-known/jwks.json").await.json()),
        ["2026-11"]
    );
    proxied(&gh, &old_token)
        .await
        .expect_error(401, "TOKEN_INVALID");
    proxied(&gh, &new_token).await.expect(200);
    gh.stop().await;
}

/// Issue 14, item 6, on the proxy path: correctly signed tokens that a lenient verifier
/// would forward with a header missing or split are refused, and never reach the upstream.
#[tokio::test]
async fn lenient_tokens_are_refused_on_the_proxy_path() {
    let gh = Gatehouse::start(ROUTES, &[]).await;
    let kid = gatehouse::token::SigningKey::hs256(SECRET.as_bytes())
        .kid()
        .to_string();
    let claims = |sub: &str, roles: Value| {
        json!({
            "sub": sub, "email": "m@example.com", "roles": roles, "email_verified": true,
            "iss": "gatehouse", "aud": "api", "iat": T0, "nbf": T0, "exp": T0 + 900,
            "jti": "j", "sid": "s", "token_use": "access",
        })
    };
    let sign = |header: Value, payload: &[u8]| {
        let message = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(payload)
        );
        let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
        let sig =
            jsonwebtoken::crypto::sign(message.as_bytes(), &key, jsonwebtoken::Algorithm::HS256)
                .unwrap();
        format!("{message}.{sig}")
    };
    let own = json!({"alg": "HS256", "typ": "at+jwt", "kid": kid});
    let good = claims("u1", json!(["reader"])).to_string();
    let with_member = |raw: &str| format!("{},{raw}}}", &good[..good.len() - 1]);
    let cases: Vec<(&str, String)> = vec![
        (
            "sub with CR LF",
            sign(
                own.clone(),
                claims("u1\r\nX-Auth-Roles: admin", json!(["reader"]))
                    .to_string()
                    .as_bytes(),
            ),
        ),
        (
            "sub with NUL",
            sign(
                own.clone(),
                claims("u1\u{0}", json!(["reader"])).to_string().as_bytes(),
            ),
        ),
        (
            "role with the separator",
            sign(
                own.clone(),
                claims("u1", json!(["reader,admin"])).to_string().as_bytes(),
            ),
        ),
        (
            "array payload",
            sign(
                own.clone(),
                json!(["u1", "m@example.com", ["admin"]])
                    .to_string()
                    .as_bytes(),
            ),
        ),
        (
            "duplicate sub",
            sign(own.clone(), with_member(r#""sub":"admin""#).as_bytes()),
        ),
        (
            "lone surrogate",
            sign(own.clone(), with_member(r#""x":"\ud800""#).as_bytes()),
        ),
        (
            "1e400",
            sign(own.clone(), with_member(r#""x":1e400"#).as_bytes()),
        ),
        (
            "iat ahead",
            sign(
                own.clone(),
                claims("u1", json!(["reader"]))
                    .to_string()
                    .replace(&format!("\"iat\":{T0}"), &format!("\"iat\":{}", T0 + 3600))
                    .as_bytes(),
            ),
        ),
        (
            "crit",
            sign(
                json!({"alg": "HS256", "typ": "at+jwt", "kid": kid, "crit": ["exp"]}),
                good.as_bytes(),
            ),
        ),
        (
            "unknown kid",
            sign(
                json!({"alg": "HS256", "typ": "at+jwt", "kid": "../../k"}),
                good.as_bytes(),
            ),
        ),
        (
            "jku to elsewhere, unknown kid",
            sign(
                json!({"alg": "HS256", "typ": "at+jwt", "kid": "x", "jku": "http://127.0.0.1:1/jwks"}),
                good.as_bytes(),
            ),
        ),
    ];
    // The control: the same construction, nothing lenient, is accepted.
    let control = sign(own.clone(), good.as_bytes());
    gh.get_with("/api/items", &[("authorization", &bearer(&control))])
        .await
        .expect(200);
    for (name, token) in cases {
        let reply = gh
            .get_with("/api/items", &[("authorization", &bearer(&token))])
            .await;
        assert_eq!(reply.status.as_u16(), 401, "{name}: {reply:?}");
        reply.expect_error(401, "TOKEN_INVALID");
        assert_eq!(
            reply
                .header("www-authenticate")
                .map(|h| h.starts_with("Bearer")),
            Some(true),
            "{name}"
        );
        // Refused even on a public route: a bad token is never downgraded to anonymous.
        gh.get_with("/public/x", &[("authorization", &bearer(&token))])
            .await
            .expect_error(401, "TOKEN_INVALID");
    }
    gh.stop().await;
}

/// Every key problem is reported by one load, each on its own key.
#[test]
fn key_config_errors_name_their_key() {
    let dir = tempfile::tempdir().unwrap();
    let ed = key_file(dir.path(), "ed.pem", Algorithm::EdDSA);
    let rsa = key_file(dir.path(), "rsa.pem", Algorithm::RS256);
    let not_pem = dir.path().join("notes.txt");
    std::fs::write(&not_pem, "hello").unwrap();
    let missing = dir.path().join("missing.pem");
    let base = "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = \"http://127.0.0.1:1\"\n";
    let errors = |text: &str| -> Vec<(String, String)> {
        match Config::check(text, std::iter::empty(), Purpose::Serve).config {
            Ok(_) => Vec::new(),
            Err(e) => e.0.into_iter().map(|e| (e.key, e.message)).collect(),
        }
    };
    let text = format!(
        "{base}[tokens]\nalgorithm = \"EdDSA\"\n\
         [[tokens.keys]]\nkid = \"a\"\nprivate_key = \"{ed}\"\n\
         [[tokens.keys]]\nkid = \"b\"\nprivate_key = \"{}\"\n\
         [[tokens.keys]]\nkid = \"c\"\nprivate_key = \"{rsa}\"\n\
         [[tokens.keys]]\nkid = \"d\"\nprivate_key = \"{}\"\n\
         [[tokens.keys]]\nkid = \"a\"\nprivate_key = \"{ed}\"\n\
         [[tokens.keys]]\nkid = \"bad/kid\"\nprivate_key = \"{ed}\"\n\
         [[tokens.keys]]\nkid = \"g\"\n",
        missing.display(),
        not_pem.display()
    );
    let found = errors(&text);
    let expect = [
        ("tokens.keys[1].private_key", "cannot read"),
        (
            "tokens.keys[2].private_key",
            "holds an RSA key (RS256), but tokens.algorithm is EdDSA",
        ),
        ("tokens.keys[3].private_key", "PKCS#8"),
        ("tokens.keys[4].kid", "already the kid of tokens.keys[0]"),
        ("tokens.keys[5].kid", "is not a kid"),
        ("tokens.keys[6].private_key", "is required"),
    ];
    for (key, words) in expect {
        assert!(
            found.iter().any(|(k, m)| k == key && m.contains(words)),
            "{key}: {words:?} not in {found:#?}"
        );
    }
    assert_eq!(found.len(), expect.len(), "{found:#?}");

    // Keys under HS256; no key under an asymmetric algorithm; an unknown algorithm.
    let found = errors(&format!(
        "{base}[tokens]\nsecret = \"{SECRET}\"\n[[tokens.keys]]\nprivate_key = \"{ed}\"\n"
    ));
    assert!(
        found
            .iter()
            .any(|(k, m)| k == "tokens.keys" && m.contains("HS256 signs with tokens.secret")),
        "{found:?}"
    );
    let found = errors(&format!("{base}[tokens]\nalgorithm = \"ES256\"\n"));
    assert!(
        found
            .iter()
            .any(|(k, m)| k == "tokens.keys"
                && m.contains("gatehouse keys generate --algorithm ES256")),
        "{found:?}"
    );
    let found = errors(&format!(
        "{base}[tokens]\nalgorithm = \"HS512\"\nsecret = \"{SECRET}\"\n"
    ));
    assert!(
        found
            .iter()
            .any(|(k, m)| k == "tokens.algorithm" && m.contains("not supported")),
        "{found:?}"
    );

    // A good asymmetric config needs no secret; its kid defaults to the thumbprint.
    let loaded = Config::check(
        &format!(
            "{base}[tokens]\nalgorithm = \"EdDSA\"\n[[tokens.keys]]\nprivate_key = \"{ed}\"\n"
        ),
        std::iter::empty(),
        Purpose::Serve,
    );
    let config = loaded.config.unwrap();
    let key = &config.tokens.keys[0];
    let jwk = key.verify_key().jwk().unwrap();
    let canonical = format!(
        r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
        jwk["x"].as_str().unwrap()
    );
    let thumbprint = URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        canonical.as_bytes(),
    ));
    assert_eq!(key.kid(), thumbprint);
    // And warns that discovery needs server.public_url.
    assert!(
        loaded.warnings.iter().any(|w| w.key == "server.public_url"),
        "{:?}",
        loaded.warnings
    );
}

#[test]
fn keys_generate_writes_a_private_file_once_and_prints_its_kid() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("k.pem");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_gatehouse"))
            .args(args)
            .output()
            .unwrap()
    };
    let path = out.to_str().unwrap();
    for alg in ["EdDSA", "ES256", "RS256"] {
        let _ = std::fs::remove_file(&out);
        let first = run(&["keys", "generate", "--algorithm", alg, "--out", path]);
        assert!(first.status.success(), "{first:?}");
        let kid = String::from_utf8(first.stdout).unwrap().trim().to_string();
        let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{alg}");
        let pem = std::fs::read(&out).unwrap();
        let alg = Algorithm::from_name(alg).unwrap();
        // The kid printed is the file's thumbprint kid, as the config derives it.
        let key = gatehouse::token::SigningKey::from_pem(&pem, alg, None).unwrap();
        assert_eq!(key.kid(), kid);

        // An existing file is refused and left alone; --force replaces it, still 0600.
        let again = run(&["keys", "generate", "--algorithm", alg.name(), "--out", path]);
        assert!(!again.status.success());
        assert!(
            String::from_utf8_lossy(&again.stderr).contains("--force"),
            "{again:?}"
        );
        assert_eq!(std::fs::read(&out).unwrap(), pem);
        let forced = run(&[
            "keys",
            "generate",
            "--algorithm",
            alg.name(),
            "--out",
            path,
            "--force",
        ]);
        assert!(forced.status.success(), "{forced:?}");
        assert_ne!(std::fs::read(&out).unwrap(), pem);
        assert_eq!(
            std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let hs = run(&["keys", "generate", "--algorithm", "HS256", "--out", path]);
    assert!(!hs.status.success());
    // Nothing but the key was left in the directory.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}
