//! Tokens of other issuers (`[[issuers]]`, issue 14 item 3, API.md §9) against an
//! in-process JWKS server whose keys the test generates: roles from a nested claim and the
//! identity headers at the echo upstream, a rotated key picked up by one refetch and the
//! refetch rate limit (requests counted at the server), known keys while the server is
//! down, the refusals, discovery, `Cache-Control`, forward-auth, reloads, and config errors.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::harness::{Gatehouse, ROUTES, Reply, T0, base_config};
use gatehouse::config::Config;
use gatehouse::issuers::Issuer;
use gatehouse::token::Algorithm;
use gatehouse::token::keys::{SigningKey, generate};

const AUDIENCE: &str = "orders-api";

/// What the JWKS server serves, and what it saw.
struct Provider {
    addr: SocketAddr,
    /// The JWKs served at `/certs`.
    keys: Mutex<Vec<Value>>,
    /// The `Cache-Control` of `/certs`, if any.
    cache_control: Mutex<Option<String>>,
    /// The `issuer` of the discovery document.
    discovery_issuer: Mutex<String>,
    /// While true every request is answered 503.
    down: AtomicBool,
    /// Requests for `/certs`, answered or not.
    jwks_hits: AtomicUsize,
    /// While true `/certs` answers only once `release` is notified.
    stall: AtomicBool,
    release: tokio::sync::Notify,
}

impl Provider {
    /// A provider on an ephemeral port serving `keys`.
    async fn start(keys: &[&SigningKey]) -> Arc<Provider> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let provider = Arc::new(Provider {
            addr,
            keys: Mutex::new(keys.iter().map(|k| jwk(k)).collect()),
            cache_control: Mutex::new(None),
            discovery_issuer: Mutex::new(format!("http://{addr}")),
            down: AtomicBool::new(false),
            jwks_hits: AtomicUsize::new(0),
            stall: AtomicBool::new(false),
            release: tokio::sync::Notify::new(),
        });
        let serving = provider.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let provider = serving.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let provider = provider.clone();
                        async move {
                            if request.uri().path() == "/certs"
                                && provider.stall.load(Ordering::SeqCst)
                            {
                                provider.jwks_hits.fetch_add(1, Ordering::SeqCst);
                                provider.release.notified().await;
                                return Ok(provider.answer_unstalled(&request));
                            }
                            Ok::<_, Infallible>(provider.answer(&request))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        provider
    }

    fn answer(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        if request.uri().path() == "/certs" {
            self.jwks_hits.fetch_add(1, Ordering::SeqCst);
        }
        self.answer_unstalled(request)
    }

    fn answer_unstalled(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        let path = request.uri().path();
        let mut response = Response::builder();
        if self.down.load(Ordering::SeqCst) {
            return response
                .status(StatusCode::SERVICE_UNAVAILABLE)
                .body(Full::new(Bytes::new()))
                .unwrap();
        }
        let body = match path {
            "/certs" => {
                if let Some(cc) = self.cache_control.lock().unwrap().as_deref() {
                    response = response.header("cache-control", cc);
                }
                json!({"keys": *self.keys.lock().unwrap()})
            }
            "/.well-known/openid-configuration" => json!({
                "issuer": *self.discovery_issuer.lock().unwrap(),
                "jwks_uri": format!("http://{}/certs", self.addr),
            }),
            _ => {
                return response
                    .status(StatusCode::NOT_FOUND)
                    .body(Full::new(Bytes::new()))
                    .unwrap();
            }
        };
        response
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap()
    }

    /// The issuer tokens of this provider carry (the discovery base).
    fn issuer(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn hits(&self) -> usize {
        self.jwks_hits.load(Ordering::SeqCst)
    }

    fn publish(&self, key: &SigningKey) {
        self.keys.lock().unwrap().push(jwk(key));
    }
}

fn jwk(key: &SigningKey) -> Value {
    key.verify_key().jwk().unwrap()
}

fn key(alg: Algorithm, kid: &str) -> SigningKey {
    let (pem, _) = generate(alg).unwrap();
    SigningKey::from_pem(pem.as_bytes(), alg, Some(kid)).unwrap()
}

/// The `[[issuers]]` entry for `provider`, its keys at `/certs`, with `extra` lines.
fn issuer_toml(provider: &Provider, extra: &str) -> String {
    format!(
        r#"
[[issuers]]
name = "corp"
issuer = "{issuer}"
jwks_url = "http://{addr}/certs"
audiences = ["{AUDIENCE}"]
algorithms = ["EdDSA", "RS256"]
roles_claim = "realm_access.roles"
email_claim = "email"
{extra}
"#,
        issuer = provider.issuer(),
        addr = provider.addr,
    )
}

/// A Keycloak-shaped access token's claims, issued at the test clock's T0.
fn claims(provider: &Provider, roles: &[&str]) -> Value {
    json!({
        "iss": provider.issuer(), "sub": "f3b1c2d4-kc", "aud": ["account", AUDIENCE],
        "exp": T0 + 3600, "iat": T0, "typ": "Bearer", "azp": "web",
        "email": "ada@corp.example", "email_verified": true,
        "realm_access": {"roles": roles},
    })
}

/// A token signed by `key` with a header naming it.
fn token(key: &SigningKey, claims: &Value) -> String {
    let header = json!({"alg": key.algorithm().name(), "typ": "JWT", "kid": key.kid()});
    signed(key, &header, claims)
}

fn signed(key: &SigningKey, header: &Value, claims: &Value) -> String {
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = key.sign(message.as_bytes()).unwrap();
    format!("{message}.{}", URL_SAFE_NO_PAD.encode(signature))
}

async fn call(gh: &Gatehouse, method: Method, path: &str, token: &str) -> Reply {
    let auth = format!("Bearer {token}");
    gh.send(method, path, &[("authorization", &auth)], Bytes::new())
        .await
}

#[track_caller]
fn refused(reply: &Reply, status: u16, code: &str) {
    reply.expect(status);
    assert_eq!(reply.json()["error"]["code"], code, "{}", reply.request);
}

/// The issuer `corp` of the generation in force.
fn corp(gh: &Gatehouse) -> Arc<Issuer> {
    gh.current
        .load()
        .live
        .issuers
        .named("corp")
        .unwrap()
        .clone()
}

/// Polls `done` until it holds (the background fetch runs on its own).
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never happened: {what}");
}

async fn start(provider: &Provider, extra: &str) -> Gatehouse {
    let gh = Gatehouse::start(
        &format!("{ROUTES}{}{extra}", issuer_toml(provider, "")),
        &[],
    )
    .await;
    let issuer = corp(&gh);
    eventually("the first key set", || issuer.key_count() > 0).await;
    gh
}

/// The value of one series in the `/metrics` text.
async fn metric(gh: &Gatehouse, series: &str) -> Option<f64> {
    let text = gh.get("/metrics").await.text();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test]
async fn roles_from_a_nested_claim_reach_the_upstream_as_identity_headers() {
    let k1 = key(Algorithm::RS256, "rsa-1");
    let provider = Provider::start(&[&k1]).await;
    let gh = start(&provider, "").await;
    let creator = token(&k1, &claims(&provider, &["creator", "offline_access"]));

    // `creator` may write under /api (and, by inheritance, read); not the admin area.
    let reply = call(&gh, Method::POST, "/api/orders", &creator).await;
    reply.expect(200);
    assert_eq!(
        reply.upstream_header("x-auth-user-id").as_deref(),
        Some("f3b1c2d4-kc")
    );
    assert_eq!(
        reply.upstream_header("x-auth-email").as_deref(),
        Some("ada@corp.example")
    );
    assert_eq!(
        reply.upstream_header("x-auth-roles").as_deref(),
        Some("creator,offline_access")
    );
    call(&gh, Method::GET, "/api/orders", &creator)
        .await
        .expect(200);
    refused(
        &call(&gh, Method::GET, "/api/admin/x", &creator).await,
        403,
        "FORBIDDEN",
    );
    // No roles at all: signed in, nothing more.
    let mut no_roles = claims(&provider, &[]);
    no_roles.as_object_mut().unwrap().remove("realm_access");
    let nobody = token(&k1, &no_roles);
    call(&gh, Method::GET, "/api/orders", &nobody)
        .await
        .expect(200);
    refused(
        &call(&gh, Method::POST, "/api/orders", &nobody).await,
        403,
        "FORBIDDEN",
    );

    // gatehouse's own endpoints act on gatehouse accounts: another issuer's token is
    // refused there as a token of an unknown key is.
    refused(
        &call(&gh, Method::GET, "/auth/me", &creator).await,
        401,
        "TOKEN_INVALID",
    );
    // gatehouse's own tokens work beside them.
    let own = gh.token("u1", &["reader"]);
    call(&gh, Method::GET, "/api/orders", &own)
        .await
        .expect(200);

    assert_eq!(
        metric(&gh, r#"gatehouse_issuer_keys{issuer="corp"}"#).await,
        Some(1.0)
    );
    assert_eq!(
        metric(
            &gh,
            r#"gatehouse_issuer_tokens_total{issuer="corp",result="accepted"}"#
        )
        .await,
        Some(5.0)
    );
    assert_eq!(
        metric(
            &gh,
            r#"gatehouse_issuer_jwks_refresh_total{issuer="corp",result="ok"}"#
        )
        .await,
        Some(1.0)
    );
}

#[tokio::test]
async fn bad_tokens_of_a_configured_issuer_are_refused() {
    let rsa = key(Algorithm::RS256, "rsa-1");
    let ed = key(Algorithm::EdDSA, "ed-1");
    // Published, but of an algorithm the issuer's entry does not allow.
    let es = key(Algorithm::ES256, "es-1");
    let provider = Provider::start(&[&rsa, &ed, &es]).await;
    let gh = start(&provider, "").await;
    assert_eq!(corp(&gh).key_count(), 2, "the ES256 key is left out");

    let good = claims(&provider, &["reader"]);
    let with = |name: &str, value: Value| {
        let mut c = good.clone();
        c[name] = value;
        c
    };
    let public = serde_json::to_vec(&jwk(&rsa)).unwrap();
    #[rustfmt::skip]
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("wrong audience", token(&rsa, &with("aud", json!(["account"]))), 401, "TOKEN_INVALID"),
        ("expired", token(&ed, &with("exp", json!(T0 - 60))), 401, "TOKEN_EXPIRED"),
        ("algorithm not allowed", token(&es, &good), 401, "TOKEN_INVALID"),
        ("alg not the key's", signed(&ed, &json!({"alg": "RS256", "kid": "ed-1"}), &good), 401, "TOKEN_INVALID"),
        ("HS256 with the public key", signed(&SigningKey::hs256(&public), &json!({"alg": "HS256", "kid": "rsa-1"}), &good), 401, "TOKEN_INVALID"),
        ("unknown issuer", token(&rsa, &with("iss", json!("https://other.example"))), 401, "TOKEN_INVALID"),
        ("signed by another key", token(&key(Algorithm::EdDSA, "ed-1"), &good), 401, "TOKEN_INVALID"),
        ("sub with a line break", token(&ed, &with("sub", json!("u\r\nx-auth-roles: admin"))), 401, "TOKEN_INVALID"),
        ("role with a comma", token(&ed, &with("realm_access", json!({"roles": ["reader,admin"]}))), 401, "TOKEN_INVALID"),
        ("an ID token", token(&ed, &with("typ", json!("ID"))), 401, "TOKEN_INVALID"),
    ];
    for (name, bad, status, code) in cases {
        let reply = call(&gh, Method::GET, "/api/orders", &bad).await;
        assert_eq!(reply.status.as_u16(), status, "{name}: {}", reply.text());
        assert_eq!(reply.json()["error"]["code"], code, "{name}");
        // Never downgraded to anonymous, even where no token is needed.
        let public = call(&gh, Method::GET, "/public/x", &bad).await;
        assert_eq!(public.status.as_u16(), status, "{name} on a public route");
    }
    call(&gh, Method::GET, "/api/orders", &token(&rsa, &good))
        .await
        .expect(200);
    for (reason, count) in [
        ("audience", 2.0),
        ("expired", 2.0),
        ("algorithm", 4.0),
        ("identity", 4.0),
    ] {
        let series = format!(r#"gatehouse_issuer_tokens_total{{issuer="corp",result="{reason}"}}"#);
        assert_eq!(metric(&gh, &series).await, Some(count), "{series}");
    }
}

#[tokio::test]
async fn a_rotated_key_is_picked_up_by_one_refetch_at_most_every_30s() {
    let k1 = key(Algorithm::EdDSA, "k1");
    let provider = Provider::start(&[&k1]).await;
    let gh = start(&provider, "").await;
    assert_eq!(provider.hits(), 1);

    // The provider rotates: k2 is published, and its first token works at once.
    let k2 = key(Algorithm::EdDSA, "k2");
    provider.publish(&k2);
    let reply = call(
        &gh,
        Method::GET,
        "/api/orders",
        &token(&k2, &claims(&provider, &["reader"])),
    )
    .await;
    reply.expect(200);
    assert_eq!(provider.hits(), 2, "one refetch");
    assert_eq!(corp(&gh).key_count(), 2);

    // Another new key within 30 s: no refetch, refused like any unknown kid.
    let k3 = key(Algorithm::EdDSA, "k3");
    provider.publish(&k3);
    let third = token(&k3, &claims(&provider, &["reader"]));
    refused(
        &call(&gh, Method::GET, "/api/orders", &third).await,
        401,
        "TOKEN_INVALID",
    );
    refused(
        &call(&gh, Method::GET, "/api/orders", &third).await,
        401,
        "TOKEN_INVALID",
    );
    assert_eq!(provider.hits(), 2, "no refetch within 30 s");

    // Past the 30 s, the next unknown kid refetches.
    gh.advance(30);
    call(&gh, Method::GET, "/api/orders", &third)
        .await
        .expect(200);
    assert_eq!(provider.hits(), 3);
    // Known keys never touch the network.
    for k in [&k1, &k2, &k3] {
        call(
            &gh,
            Method::GET,
            "/api/orders",
            &token(k, &claims(&provider, &["reader"])),
        )
        .await
        .expect(200);
    }
    assert_eq!(provider.hits(), 3);
}

#[tokio::test]
async fn known_keys_keep_working_while_the_issuer_is_down() {
    let k1 = key(Algorithm::RS256, "k1");
    let provider = Provider::start(&[&k1]).await;
    let gh = start(&provider, "").await;
    let good = token(&k1, &claims(&provider, &["reader"]));

    provider.down.store(true, Ordering::SeqCst);
    // The default refresh (no Cache-Control) is due after 5 minutes.
    gh.advance(300);
    eventually("a failed refresh", || provider.hits() >= 2).await;
    let issuer = corp(&gh);
    eventually("the retry scheduled", || {
        issuer.next_refresh() == T0 + 300 + 10
    })
    .await;
    assert_eq!(issuer.key_count(), 1, "the last good set stays");
    call(&gh, Method::GET, "/api/orders", &good)
        .await
        .expect(200);
    // A new kid cannot be fetched: refused, after its one bounded wait.
    let k2 = key(Algorithm::RS256, "k2");
    provider.publish(&k2);
    refused(
        &call(
            &gh,
            Method::GET,
            "/api/orders",
            &token(&k2, &claims(&provider, &["reader"])),
        )
        .await,
        401,
        "TOKEN_INVALID",
    );
    assert_eq!(
        metric(
            &gh,
            r#"gatehouse_issuer_jwks_refresh_total{issuer="corp",result="error"}"#
        )
        .await,
        Some(2.0)
    );

    // A set that is not a key set is no better: it never replaces the good one.
    provider.down.store(false, Ordering::SeqCst);
    provider.keys.lock().unwrap().clear();
    gh.advance(60);
    eventually("an invalid refresh", || provider.hits() >= 4).await;
    eventually("counted", || issuer.next_refresh() > T0 + 360).await;
    call(&gh, Method::GET, "/api/orders", &good)
        .await
        .expect(200);
    assert_eq!(issuer.key_count(), 1);
    // And gatehouse stays ready whatever the issuer does.
    gh.get("/readyz").await.expect(200);
}

#[tokio::test]
async fn no_request_waits_on_the_issuer_but_an_unknown_kid_for_at_most_2s() {
    let k1 = key(Algorithm::EdDSA, "k1");
    let provider = Provider::start(&[&k1]).await;
    let gh = start(&provider, "").await;
    let issuer = corp(&gh);

    // The provider hangs; a background refresh is due and stays in flight.
    provider.stall.store(true, Ordering::SeqCst);
    gh.advance(300);
    eventually("the refresh in flight", || provider.hits() == 2).await;
    // A known kid is answered from memory while the fetch hangs: the fetch has not ended
    // (it would have rescheduled the next refresh, by success or by its timeout).
    let known = token(&k1, &claims(&provider, &["reader"]));
    call(&gh, Method::GET, "/api/orders", &known)
        .await
        .expect(200);
    assert_eq!(
        issuer.next_refresh(),
        T0 + 300,
        "answered before the fetch ended"
    );
    // An unknown kid joins that fetch and gives up after its bounded wait, long before
    // the fetch's own 10 s timeout.
    let k2 = key(Algorithm::EdDSA, "k2");
    provider.publish(&k2);
    let unknown = token(&k2, &claims(&provider, &["reader"]));
    refused(
        &call(&gh, Method::GET, "/api/orders", &unknown).await,
        401,
        "TOKEN_INVALID",
    );
    assert_eq!(
        issuer.next_refresh(),
        T0 + 300,
        "refused before the fetch ended"
    );
    assert_eq!(provider.hits(), 2, "it joined the fetch in flight");
    gh.get("/readyz").await.expect(200);

    // The provider answers: the fetch lands, and the new key works without a refetch.
    provider.stall.store(false, Ordering::SeqCst);
    provider.release.notify_waiters();
    eventually("the fetch landed", || issuer.key_count() == 2).await;
    call(&gh, Method::GET, "/api/orders", &unknown)
        .await
        .expect(200);
    assert_eq!(provider.hits(), 2);
}

#[tokio::test]
async fn cache_control_sets_the_refresh_within_bounds() {
    let k1 = key(Algorithm::EdDSA, "k1");
    let provider = Provider::start(&[&k1]).await;
    *provider.cache_control.lock().unwrap() = Some("public, max-age=900".into());
    let gh = start(&provider, "").await;
    let issuer = corp(&gh);
    eventually("scheduled", || issuer.next_refresh() == T0 + 900).await;

    // Due: refreshed, and a max-age below the floor counts as one minute.
    *provider.cache_control.lock().unwrap() = Some("max-age=1".into());
    gh.advance(900);
    eventually("refreshed", || provider.hits() == 2).await;
    eventually("rescheduled", || issuer.next_refresh() == T0 + 900 + 60).await;
    // Beyond the ceiling: a day.
    *provider.cache_control.lock().unwrap() = Some("max-age=31536000".into());
    gh.advance(60);
    eventually("refreshed again", || provider.hits() == 3).await;
    eventually("rescheduled again", || {
        issuer.next_refresh() == T0 + 960 + 86_400
    })
    .await;
}

#[tokio::test]
async fn discovery_reads_the_key_set_from_the_issuer() {
    let k1 = key(Algorithm::EdDSA, "k1");
    let provider = Provider::start(&[&k1]).await;
    let entry = format!(
        "{ROUTES}\n[[issuers]]\nname = \"corp\"\nissuer = \"{}\"\ndiscovery = true\naudiences = [\"{AUDIENCE}\"]\nalgorithms = [\"EdDSA\"]\nroles_claim = \"realm_access.roles\"\n",
        provider.issuer()
    );
    let gh = Gatehouse::start(&entry, &[]).await;
    let issuer = corp(&gh);
    eventually("keys through discovery", || issuer.key_count() == 1).await;
    let reply = call(
        &gh,
        Method::GET,
        "/api/orders",
        &token(&k1, &claims(&provider, &["reader"])),
    )
    .await;
    reply.expect(200);
    assert_eq!(
        reply.upstream_header("x-auth-roles").as_deref(),
        Some("reader")
    );

    // A discovery document naming another issuer is not believed.
    let other = Provider::start(&[&k1]).await;
    *other.discovery_issuer.lock().unwrap() = "https://elsewhere.example".into();
    let entry = entry.replace(&provider.issuer(), &other.issuer());
    let gh = Gatehouse::start(&entry, &[]).await;
    let refresh = r#"gatehouse_issuer_jwks_refresh_total{issuer="corp",result="invalid"}"#;
    let issuer = corp(&gh);
    // A failed fetch schedules its retry after the first backoff.
    eventually("the refusal", || issuer.next_refresh() == T0 + 10).await;
    assert_eq!(metric(&gh, refresh).await, Some(1.0));
    assert_eq!(other.hits(), 0, "its jwks_uri was never read");
    assert_eq!(issuer.key_count(), 0);
}

#[tokio::test]
async fn forward_auth_accepts_them_too() {
    let k1 = key(Algorithm::ES256, "es-1");
    let provider = Provider::start(&[&k1]).await;
    let entry = issuer_toml(&provider, "").replace(r#"["EdDSA", "RS256"]"#, r#"["ES256"]"#);
    let gh = Gatehouse::start(
        &format!("{ROUTES}{entry}\n[forward_auth]\nenabled = true\n"),
        &[],
    )
    .await;
    let issuer = corp(&gh);
    eventually("the first key set", || issuer.key_count() == 1).await;
    let auth = format!("Bearer {}", token(&k1, &claims(&provider, &["admin"])));
    let ask = |uri: &'static str, auth: String| {
        let gh = &gh;
        async move {
            gh.send(
                Method::GET,
                "/auth/forward",
                &[
                    ("x-forwarded-method", "DELETE"),
                    ("x-forwarded-uri", uri),
                    ("x-forwarded-host", "app.example.com"),
                    ("x-forwarded-proto", "https"),
                    ("authorization", &auth),
                ],
                Bytes::new(),
            )
            .await
        }
    };
    let reply = ask("/api/admin/users/7", auth.clone()).await;
    reply.expect(200);
    assert_eq!(reply.headers["x-auth-user-id"], "f3b1c2d4-kc");
    assert_eq!(reply.headers["x-auth-roles"], "admin");
    assert_eq!(reply.headers["x-auth-email"], "ada@corp.example");
    let reader = format!("Bearer {}", token(&k1, &claims(&provider, &["reader"])));
    refused(&ask("/api/admin/users/7", reader).await, 403, "FORBIDDEN");
}

#[tokio::test]
async fn a_reload_keeps_an_unchanged_issuers_keys() {
    let k1 = key(Algorithm::EdDSA, "k1");
    let provider = Provider::start(&[&k1]).await;
    let gh = start(&provider, "").await;
    let before = corp(&gh);

    // Routes change, the issuer does not: the same issuer, no fetch.
    let outcome = gh.reload(&format!(
        "{ROUTES}\n[[routes]]\npath = \"/extra/**\"\naccess = \"public\"\n{}",
        issuer_toml(&provider, "")
    ));
    assert!(
        matches!(outcome, gatehouse::reload::Outcome::Applied { .. }),
        "{outcome:?}"
    );
    assert!(Arc::ptr_eq(&before, &corp(&gh)));
    assert_eq!(provider.hits(), 1);
    call(
        &gh,
        Method::GET,
        "/api/orders",
        &token(&k1, &claims(&provider, &["reader"])),
    )
    .await
    .expect(200);

    // Its audiences change: a new issuer, which fetches its keys, and the new audience
    // is the one required.
    let changed = issuer_toml(&provider, "").replace(AUDIENCE, "billing-api");
    match gh.reload(&format!("{ROUTES}{changed}")) {
        gatehouse::reload::Outcome::Applied { summary, .. } => {
            assert!(summary.contains("issuers changed"), "{summary}")
        }
        other => panic!("{other:?}"),
    }
    let after = corp(&gh);
    assert!(!Arc::ptr_eq(&before, &after));
    eventually("the new issuer's keys", || after.key_count() == 1).await;
    assert_eq!(provider.hits(), 2);
    refused(
        &call(
            &gh,
            Method::GET,
            "/api/orders",
            &token(&k1, &claims(&provider, &["reader"])),
        )
        .await,
        401,
        "TOKEN_INVALID",
    );
    let mut billing = claims(&provider, &["reader"]);
    billing["aud"] = json!("billing-api");
    call(&gh, Method::GET, "/api/orders", &token(&k1, &billing))
        .await
        .expect(200);
}

#[test]
fn config_errors_name_their_key() {
    let entry = |lines: &str| format!("\n[[issuers]]\n{lines}\n");
    let good = "name = \"corp\"\nissuer = \"https://idp.example.com/realms/main\"\njwks_url = \"https://idp.example.com/realms/main/protocol/openid-connect/certs\"\naudiences = [\"api\"]";
    #[rustfmt::skip]
    let cases: Vec<(String, &str, &str)> = vec![
        (entry(&good.replace("https://idp.example.com/realms/main/protocol", "http://idp.example.com/realms/main/protocol")), "issuers[0].jwks_url", "https://"),
        (entry(&format!("{good}\nalgorithms = [\"HS256\"]")), "issuers[0].algorithms[0]", "symmetric"),
        (entry(&format!("{good}\nalgorithms = [\"none\"]")), "issuers[0].algorithms[0]", "not supported"),
        (entry(&format!("{good}\nalgorithms = []")), "issuers[0].algorithms", "at least one"),
        (entry(&good.replace("[\"api\"]", "[]")), "issuers[0].audiences", "at least one"),
        (entry(&format!("{good}\ndiscovery = true")), "issuers[0].discovery", "exclusive"),
        (entry(&good.replace("jwks_url", "# jwks_url")), "issuers[0]", "jwks_url, or discovery"),
        (entry(&good.replace("https://idp.example.com/realms/main\"", "gatehouse\"")), "issuers[0].issuer", "tokens.issuer"),
        (entry(&good.replace("name = \"corp\"", "name = \"corp id\"")), "issuers[0].name", "not a name"),
        (entry(&format!("{good}\nroles_claim = \"realm_access..roles\"")), "issuers[0].roles_claim", "not a claim"),
        (entry(&format!("{good}\nrole_claim = \"roles\"")), "issuers[0].role_claim", "did you mean issuers[0].roles_claim"),
        (format!("{}{}", entry(good), entry(good)), "issuers[1].name", "already the name of issuers[0]"),
        (format!("{}{}", entry(good), entry(&good.replace("\"corp\"", "\"other\""))), "issuers[1].issuer", "already the issuer of issuers[0]"),
    ];
    let dir = tempfile::tempdir().unwrap();
    let upstream: SocketAddr = "127.0.0.1:9".parse().unwrap();
    for (extra, key, message) in cases {
        let text = base_config(upstream, &dir.path().join("store"), &extra);
        let errors = Config::from_toml(&text, Vec::new())
            .expect_err(&extra)
            .to_string();
        assert!(
            errors
                .lines()
                .any(|l| l.starts_with(&format!("{key}:")) && l.contains(message)),
            "expected {key}: …{message}… in:\n{errors}\n---{extra}"
        );
    }
    // A good entry, with loopback http (a local provider) and discovery, loads.
    let text = base_config(
        upstream,
        &dir.path().join("store"),
        &format!(
            "{}{}",
            entry(good),
            entry(
                "name = \"local\"\nissuer = \"http://127.0.0.1:8081/realms/x\"\ndiscovery = true\naudiences = [\"api\"]"
            )
        ),
    );
    let config = Config::from_toml(&text, Vec::new()).unwrap();
    assert_eq!(config.issuers.len(), 2);
    assert_eq!(
        config.issuers[0].algorithms,
        [Algorithm::RS256],
        "the default"
    );
    assert_eq!(config.issuers[0].roles_claim, "roles");
}
