//! Criterion benchmarks of the per-request work on the proxy path, each beside a naive
//! baseline so the numbers have something to be read against:
//!
//! - token verify (HS256), and a token found in the verified-token cache, vs. jsonwebtoken's
//!   stock `decode` with a default `Validation`; verify per algorithm (HS256, EdDSA, ES256,
//!   RS256 with a 2048-bit key) on the fast path, the general path and from the cache;
//! - an external issuer's token (`[[issuers]]`, a Keycloak-shaped payload) per algorithm:
//!   reading its `iss`, verifying it the first time, and from its key set's cache;
//! - policy decide over 100 rules vs. a linear scan that splits and allocates per request;
//! - header rewrite (strip spoofed/hop-by-hop, set identity and forwarding headers);
//! - rate-limit check vs. a `Mutex<HashMap>` GCRA;
//! - the signed identity for upstreams (`headers.assertion`) per asymmetric algorithm:
//!   signed for every request (cache off) vs. taken from the cache;
//! - the three together, as the gate runs them.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Mutex;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use gatehouse::config::Config;
use gatehouse::policy::{Policy, PolicySpec, RoleSpec, RouteSpec};
use gatehouse::proxy::{Forwarding, Identity, rewrite_request};
use gatehouse::ratelimit::{Rate, RateLimiter};
use gatehouse::token::assertion::{AssertionSettings, Assertions};
use gatehouse::token::{
    Algorithm, Identity as TokenIdentity, SigningKey, TokenSettings, Tokens, external, keys,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method};

const SECRET: &str = "bench-secret-0123456789abcdef-0123456789";
const NOW: u64 = 1_800_000_000;

fn tokens() -> Tokens {
    Tokens::new(TokenSettings::hs256(
        SECRET.as_bytes(),
        "gatehouse",
        "api",
        900,
        5,
    ))
}

/// A verifier signing with a fresh key of `alg` (HS256: the bench secret).
fn tokens_for(alg: Algorithm) -> Tokens {
    if alg == Algorithm::HS256 {
        return tokens();
    }
    let (pem, _) = keys::generate(alg).unwrap();
    let key = SigningKey::from_pem(pem.as_bytes(), alg, None).unwrap();
    Tokens::new(TokenSettings {
        signing: key,
        ..TokenSettings::hs256(SECRET.as_bytes(), "gatehouse", "api", 900, 5)
    })
}

fn token(tokens: &Tokens) -> String {
    let roles = vec!["reader".to_string(), "creator".to_string()];
    tokens
        .issue(
            &TokenIdentity {
                user_id: "01a201a3-bb9f-7724-b128-5338c980a16f",
                email: "ada@example.com",
                roles: &roles,
                email_verified: true,
                session_id: "01a201a3-bc2b-77d9-a831-e2018bc86554",
                min_iat: 0,
                amr: &["pwd"],
            },
            NOW,
        )
        .unwrap()
        .0
}

/// 100 rules shaped like a real API: resource families with write rules before read rules,
/// a few wildcard-first rules, the matched rule near the end.
fn policy_spec() -> PolicySpec {
    let mut routes = Vec::new();
    for i in 0..24 {
        routes.push(RouteSpec {
            name: None,
            path: format!("/api/v1/resource{i}/**"),
            methods: vec!["POST".into(), "PUT".into(), "DELETE".into()],
            access: None,
            roles: vec!["creator".into()],
            mfa: false,
        });
        routes.push(RouteSpec {
            name: None,
            path: format!("/api/v1/resource{i}/*/items/**"),
            methods: vec![],
            access: None,
            roles: vec!["reader".into()],
            mfa: false,
        });
        routes.push(RouteSpec {
            name: None,
            path: format!("/api/v2/thing{i}/*.json"),
            methods: vec!["GET".into()],
            access: Some("authenticated".into()),
            roles: vec![],
            mfa: false,
        });
        routes.push(RouteSpec {
            name: None,
            path: format!("/static/{i}/**"),
            methods: vec![],
            access: Some("public".into()),
            roles: vec![],
            mfa: false,
        });
    }
    for i in 0..3 {
        routes.push(RouteSpec {
            name: None,
            path: format!("/*/internal{i}/**"),
            methods: vec![],
            access: Some("deny".into()),
            roles: vec![],
            mfa: false,
        });
    }
    routes.push(RouteSpec {
        name: None,
        path: "/api/orders/**".into(),
        methods: vec![],
        access: None,
        roles: vec!["reader".into()],
        mfa: false,
    });
    assert_eq!(routes.len(), 100);
    PolicySpec {
        routes,
        default: "deny".into(),
        // The default: every decision also considers the case-folded path.
        case_sensitive: false,
        roles: vec![
            RoleSpec {
                name: "admin".into(),
                inherits: vec!["creator".into()],
            },
            RoleSpec {
                name: "creator".into(),
                inherits: vec!["reader".into()],
            },
        ],
        known_roles: vec!["reader".into()],
    }
}

/// The naive policy: globs as strings, split per request.
fn naive_decide(rules: &[RouteSpec], method: &str, path: &str) -> Option<usize> {
    let segments: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    'rules: for (i, rule) in rules.iter().enumerate() {
        if !rule.methods.is_empty() && !rule.methods.iter().any(|m| m == method) {
            continue;
        }
        let pattern: Vec<&str> = rule.path.split('/').filter(|s| !s.is_empty()).collect();
        let mut p = 0;
        for (j, part) in pattern.iter().enumerate() {
            if *part == "**" {
                return Some(i);
            }
            let Some(seg) = segments.get(j) else {
                continue 'rules;
            };
            if *part != "*" && !part.contains('*') && part != seg {
                continue 'rules;
            }
            p = j + 1;
        }
        if p == segments.len() {
            return Some(i);
        }
    }
    None
}

/// Base64url without padding, as JWTs write their segments.
fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn bench_tokens(c: &mut Criterion) {
    let tokens = tokens();
    let token = token(&tokens);
    let mut group = c.benchmark_group("token_verify");
    group.bench_function("gatehouse", |b| {
        b.iter(|| tokens.verify(black_box(&token), NOW).unwrap())
    });
    // The proxy path: a token presented again is found in the verified-token cache.
    let cached = self::tokens().with_cache(4096);
    let _ = cached.verify_shared(&token, NOW).unwrap();
    group.bench_function("gatehouse_cached", |b| {
        b.iter(|| cached.verify_shared(black_box(&token), NOW).unwrap())
    });
    let key = jsonwebtoken::DecodingKey::from_secret(SECRET.as_bytes());
    group.bench_function("baseline_jsonwebtoken_decode", |b| {
        b.iter(|| {
            let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
            validation.set_audience(&["api"]);
            validation.set_issuer(&["gatehouse"]);
            validation.validate_exp = false;
            jsonwebtoken::decode::<serde_json::Value>(black_box(&token), &key, &validation).unwrap()
        })
    });
    group.finish();

    // Per algorithm: what a token costs the first time (fast path: our own header), through
    // the general path (any other header), and each later time (the cache).
    let mut group = c.benchmark_group("token_verify_by_algorithm");
    for alg in Algorithm::ALL {
        let tokens = tokens_for(alg);
        let token = self::token(&tokens);
        group.bench_function(format!("{alg}/fast"), |b| {
            b.iter(|| tokens.verify(black_box(&token), NOW).unwrap())
        });
        let cached = tokens_for(alg).with_cache(4096);
        let token_cached = self::token(&cached);
        let _ = cached.verify_shared(&token_cached, NOW).unwrap();
        group.bench_function(format!("{alg}/cached"), |b| {
            b.iter(|| cached.verify_shared(black_box(&token_cached), NOW).unwrap())
        });
        let general = tokens.general_path_only();
        group.bench_function(format!("{alg}/general"), |b| {
            b.iter(|| general.verify(black_box(&token), NOW).unwrap())
        });
    }
    group.finish();

    // Another issuer's token: the `iss` peek that routes it, then its key set's verify.
    let mut group = c.benchmark_group("token_verify_external");
    for alg in [Algorithm::EdDSA, Algorithm::ES256, Algorithm::RS256] {
        let (pem, _) = keys::generate(alg).unwrap();
        let key = SigningKey::from_pem(pem.as_bytes(), alg, Some("idp-1")).unwrap();
        let jwks = serde_json::json!({"keys": [key.verify_key().jwk()]}).to_string();
        let rules = external::IssuerRules {
            issuer: "https://idp.example.com/realms/main".into(),
            audiences: vec!["api".into()],
            algorithms: vec![alg],
            roles_claim: "realm_access.roles".into(),
            email_claim: "email".into(),
            leeway_secs: 5,
        };
        let header = serde_json::json!({"alg": alg.name(), "typ": "JWT", "kid": "idp-1"});
        let claims = serde_json::json!({
            "iss": rules.issuer, "sub": "f3b1c2d4-kc", "aud": ["account", "api"], "typ": "Bearer",
            "exp": NOW + 300, "iat": NOW, "azp": "web", "email": "ada@example.com",
            "email_verified": true, "realm_access": {"roles": ["reader", "creator"]},
        });
        let message = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let token = format!("{message}.{}", b64(&key.sign(message.as_bytes()).unwrap()));
        let uncached = external::KeySet::from_jwks(jwks.as_bytes(), &[alg], 0).unwrap();
        let cached = external::KeySet::from_jwks(jwks.as_bytes(), &[alg], 4096).unwrap();
        let _ = external::verify(&token, &rules, &cached, NOW).unwrap();
        group.bench_function(format!("{alg}/issuer_of"), |b| {
            b.iter(|| external::issuer_of(black_box(&token)).unwrap())
        });
        group.bench_function(format!("{alg}/first"), |b| {
            b.iter(|| external::verify(black_box(&token), &rules, &uncached, NOW).unwrap())
        });
        group.bench_function(format!("{alg}/cached"), |b| {
            b.iter(|| external::verify(black_box(&token), &rules, &cached, NOW).unwrap())
        });
    }
    group.finish();
}

/// `headers.assertion`: what each proxied request with an identity pays for its signed
/// assertion, signed every time (the cache off) and from the cache (the common case: one
/// signature per identity per half lifetime).
fn bench_assertions(c: &mut Criterion) {
    let mut group = c.benchmark_group("assertion");
    for alg in [Algorithm::EdDSA, Algorithm::ES256, Algorithm::RS256] {
        let (pem, _) = keys::generate(alg).unwrap();
        let key = SigningKey::from_pem(pem.as_bytes(), alg, None).unwrap();
        let tokens = Tokens::new(TokenSettings {
            signing: key.clone(),
            ..TokenSettings::hs256(SECRET.as_bytes(), "gatehouse", "api", 900, 5)
        });
        let claims = tokens.verify(&token(&tokens), NOW).unwrap();
        let assertions = |cache| {
            Assertions::new(AssertionSettings {
                signing: key.clone(),
                issuer: "gatehouse".into(),
                audience: "http://127.0.0.1:3000".into(),
                ttl_secs: 30,
                cache,
            })
        };
        let uncached = assertions(0);
        group.bench_function(format!("{alg}/signed"), |b| {
            b.iter(|| uncached.for_claims(black_box(&claims), NOW).unwrap())
        });
        let cached = assertions(4096);
        let _ = cached.for_claims(&claims, NOW).unwrap();
        group.bench_function(format!("{alg}/cached"), |b| {
            b.iter(|| cached.for_claims(black_box(&claims), NOW).unwrap())
        });
    }
    group.finish();
}

fn bench_policy(c: &mut Criterion) {
    let spec = policy_spec();
    let policy = Policy::compile(&spec).unwrap();
    let mut group = c.benchmark_group("policy_decide_100_rules");
    group.bench_function("gatehouse", |b| {
        b.iter(|| policy.decide(black_box(&Method::GET), black_box("/api/orders/42/lines")))
    });
    // A path with upper-case letters is decided twice (exact and case-folded).
    group.bench_function("gatehouse_mixed_case_path", |b| {
        b.iter(|| policy.decide(black_box(&Method::GET), black_box("/API/Orders/42/lines")))
    });
    group.bench_function("baseline_naive_scan", |b| {
        b.iter(|| {
            naive_decide(
                &spec.routes,
                black_box("GET"),
                black_box("/api/orders/42/lines"),
            )
        })
    });
    group.finish();
}

fn config() -> Config {
    Config::from_toml(
        &format!("[upstream]\nurl = \"http://127.0.0.1:3000\"\n[tokens]\nsecret = \"{SECRET}\"\n"),
        Vec::new(),
    )
    .unwrap()
}

fn client_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (k, v) in [
        ("host", "api.example.com"),
        ("user-agent", "Mozilla/5.0 (X11; Linux x86_64) bench"),
        ("accept", "application/json"),
        ("accept-encoding", "gzip, deflate, br"),
        ("authorization", "Bearer x.y.z"),
        ("x-auth-user-id", "spoofed"),
    ] {
        headers.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    headers
}

fn bench_rewrite(c: &mut Criterion) {
    let config = config();
    let template = client_headers();
    let roles = vec!["reader".to_string()];
    let request_id = HeaderValue::from_static("0123456789abcdef00000001");
    c.bench_function("header_rewrite", |b| {
        b.iter_batched(
            || template.clone(),
            |mut headers| {
                let identity = Identity {
                    user_id: "01a201a3-bb9f-7724-b128-5338c980a16f",
                    email: "ada@example.com",
                    roles: &roles,
                    session_id: "s",
                    assertion: None,
                };
                let fwd = Forwarding {
                    forwarded_for: HeaderValue::from_static("203.0.113.9"),
                    peer_trusted: false,
                    tls: false,
                    request_id: &request_id,
                };
                let host = headers.get("host").cloned();
                rewrite_request(&mut headers, &config.headers, Some(&identity), &fwd, host);
                headers
            },
            criterion::BatchSize::SmallInput,
        )
    });
}

/// The naive limiter: one lock around a map of GCRA states.
struct NaiveLimiter {
    state: Mutex<HashMap<u128, u64>>,
    interval_ms: u64,
    burst_ms: u64,
}

impl NaiveLimiter {
    fn check(&self, key: u128, now_ms: u64) -> bool {
        let mut state = self.state.lock().unwrap();
        let tat = state.entry(key).or_insert(now_ms);
        let new_tat = (*tat).max(now_ms) + self.interval_ms;
        if new_tat - now_ms > self.burst_ms {
            return false;
        }
        *tat = new_tat;
        true
    }
}

fn bench_ratelimit(c: &mut Criterion) {
    let rate = Rate::new(1_000_000, Duration::from_secs(1)).unwrap();
    let limiter = RateLimiter::new(rate, 65_536);
    let naive = NaiveLimiter {
        state: Mutex::new(HashMap::new()),
        interval_ms: 1,
        burst_ms: 1_000_000,
    };
    let now = tokio::time::Instant::now();
    let mut group = c.benchmark_group("rate_limit_check");
    let mut key = 0u128;
    group.bench_function("gatehouse", |b| {
        b.iter(|| {
            key = (key + 1) % 1000;
            limiter.check(black_box(key), now)
        })
    });
    let mut key = 0u128;
    group.bench_function("baseline_mutex_hashmap", |b| {
        b.iter(|| {
            key = (key + 1) % 1000;
            naive.check(black_box(key), 0)
        })
    });
    group.finish();
}

fn bench_together(c: &mut Criterion) {
    let tokens = tokens();
    let token = token(&tokens);
    let policy = Policy::compile(&policy_spec()).unwrap();
    let config = config();
    let template = client_headers();
    let request_id = HeaderValue::from_static("0123456789abcdef00000001");
    c.bench_function("verify_decide_rewrite", |b| {
        b.iter_batched(
            || template.clone(),
            |mut headers| {
                let claims = tokens.verify(&token, NOW).unwrap();
                let decision = policy.decide(&Method::GET, "/api/orders/42/lines");
                let mask = policy.roles_mask(claims.roles.iter().map(String::as_str));
                let (verdict, _, _) = decision.verdict(Some(mask));
                let identity = Identity {
                    user_id: &claims.sub,
                    email: &claims.email,
                    roles: &claims.roles,
                    session_id: &claims.sid,
                    assertion: None,
                };
                let fwd = Forwarding {
                    forwarded_for: HeaderValue::from_static("203.0.113.9"),
                    peer_trusted: false,
                    tls: false,
                    request_id: &request_id,
                };
                let host = headers.get("host").cloned();
                rewrite_request(&mut headers, &config.headers, Some(&identity), &fwd, host);
                (verdict, headers)
            },
            criterion::BatchSize::SmallInput,
        )
    });
}

criterion_group!(
    benches,
    bench_tokens,
    bench_assertions,
    bench_policy,
    bench_rewrite,
    bench_ratelimit,
    bench_together
);
criterion_main!(benches);
