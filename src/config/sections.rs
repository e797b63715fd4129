//! One function per config section. Each key is declared once, where it is read: its name,
//! its default (a named constant beside the function, with the reason for its value when the
//! value is a choice) and its checks. Checks that span keys follow the reads.
//!
//! Every key is read unconditionally, even when another key makes it moot (`tls.*` without
//! TLS), so reading an empty file declares every key; [`super::keys`] relies on that.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use super::read::{Section, did_you_mean, header_name};
use super::{
    AUTH_ENDPOINTS, AuthConfig, Config, EmailConfig, EmailMode, ForwardAuthConfig, HeadersConfig,
    IssuerConfig, IssuerKeys, LockoutConfig, LogConfig, LogFormat, MfaConfig, RateLimitBackend,
    RateLimitConfig, Registration, ServerConfig, StoreBackend, StoreConfig, TlsConfig,
    TokensConfig, UpstreamConfig, UpstreamUrl, WsConfig,
};
use crate::policy::{Access, Policy, PolicySpec, RoleSpec, RouteSpec, Verdict};
use crate::ratelimit::{Rate, parse_rate};
use crate::token::keys::check_kid;
use crate::token::{Algorithm, SigningKey};

// Duration bounds, for the per-key ranges (`Got::within`); README's config reference lists
// them.
const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}
const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}
const fn mins(n: u64) -> Duration {
    Duration::from_secs(n * 60)
}
const fn hours(n: u64) -> Duration {
    Duration::from_secs(n * 3600)
}
const fn days(n: u64) -> Duration {
    Duration::from_secs(n * 86_400)
}

/// Reads and checks every section; `None` when anything is wrong (the errors are in the
/// reader's context).
pub(super) fn config(root: &mut Section<'_>) -> Option<Config> {
    let server = server(&mut root.section("server"));
    let upstream = upstream(&mut root.section("upstream"));
    let store = store(&mut root.section("store"));
    let tokens = tokens(&mut root.section("tokens"));
    let auth = auth(&mut root.section("auth"));
    let routes = root.tables("routes", route);
    let roles = roles(&mut root.map("roles"));
    let rate_limits = rate_limits(&mut root.section("rate_limits"), &routes);
    let email = email(&mut root.section("email"), &server, &auth);
    let headers = headers(&mut root.section("headers"), &upstream);
    let forward_auth = forward_auth(&mut root.section("forward_auth"), &server);
    let issuers = issuers(root, &tokens);
    let policy = policy(&mut root.section("policy"), &routes, &roles, &auth);
    let log = log(&mut root.section("log"));
    if tokens.algorithm.is_asymmetric() && server.public_url.is_empty() {
        root.warn_at(
            "server.public_url",
            format!(
                "is not set: under {} the discovery documents (/.well-known/openid-configuration) \
                 need it for their URLs and answer 404 without it; the JWKS is served either way",
                tokens.algorithm
            ),
        );
    }
    assertion_needs(root, &headers, &tokens);
    Some(Config {
        server,
        upstream,
        store,
        tokens,
        auth,
        rate_limits,
        email,
        headers,
        forward_auth,
        issuers,
        policy: policy?,
        log,
    })
}

// ---------------------------------------------------------------------------------------
// [server]
// ---------------------------------------------------------------------------------------

/// Where the sidecar listens when nothing is said: all interfaces, the usual sidecar port.
const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
/// Kubernetes' default `terminationGracePeriodSeconds`: a drain longer than this is cut
/// short by SIGKILL unless the pod asks for more, hence a warning.
const KUBERNETES_GRACE_PERIOD: Duration = Duration::from_secs(30);
/// Long enough for most in-flight requests to finish, shorter than Kubernetes' default 30s
/// termination grace period so we exit before SIGKILL arrives.
const DEFAULT_SHUTDOWN_TIMEOUT: &str = "25s";
/// A client that has not sent its whole header block in 10s is a slowloris, not a browser.
const DEFAULT_HEADER_READ_TIMEOUT: &str = "10s";
/// A client that sends no byte of its request body for 10s mid-upload is gone or stalling on
/// purpose; either way it must not hold an upstream connection until `upstream.timeout`.
const DEFAULT_BODY_IDLE_TIMEOUT: &str = "10s";
/// Idle keep-alive connections are closed after this; matches common load balancer defaults.
const DEFAULT_IDLE_TIMEOUT: &str = "60s";
/// Bounds file descriptors and memory under a connection flood.
const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Header block limit for HTTP/1 and the HTTP/2 header list; 16 KiB fits large cookies and a
/// JWT with room to spare.
const DEFAULT_MAX_HEADER_BYTES: usize = 16 * 1024;
/// Request-target limit; long enough for real query strings, short enough to refuse abuse.
const DEFAULT_MAX_URI_BYTES: usize = 8 * 1024;
/// Proxied request bodies; uploads larger than this should not go through an auth sidecar.
const DEFAULT_MAX_BODY_BYTES: u64 = 10 * 1024 * 1024;
/// Auth endpoint bodies are small JSON documents.
const DEFAULT_AUTH_MAX_BODY_BYTES: u64 = 64 * 1024;
/// HTTP/2 concurrent streams per connection, the value most servers advertise.
const DEFAULT_H2_MAX_STREAMS: u32 = 100;
/// How often certificate files are checked for rotation.
const DEFAULT_TLS_RELOAD_INTERVAL: &str = "10s";
/// 0 = one runtime worker per core.
const DEFAULT_WORKERS: usize = 0;
/// Off: a file that changes under a running server takes effect only when the operator
/// says so (SIGHUP), as with nginx and HAProxy. Kubernetes users turn it on, since a
/// ConfigMap update cannot send a signal.
const DEFAULT_WATCH_CONFIG: bool = false;

fn server(s: &mut Section<'_>) -> ServerConfig {
    let listen = s
        .str("listen", DEFAULT_LISTEN)
        .parse(|v| socket_addr(v, "an address like 0.0.0.0:8080"))
        .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 8080)));
    let admin_listen = s
        .str("admin_listen", "")
        .parse(|v| match v.as_str() {
            "" => Ok(None),
            v => socket_addr(v, "an address").map(Some),
        })
        .flatten();
    let trusted_proxies = cidrs(s, "trusted_proxies", &[], |everyone, verb| {
        format!(
            "{everyone} {verb} every peer: any client can set X-Forwarded-For and pick the \
             address that rate limits, lockouts and audit events see; list your proxies' own \
             ranges"
        )
    });
    let public_url = s
        .str("public_url", "")
        .map(|v| v.trim_end_matches('/').to_string())
        .check(|v| {
            if v.is_empty() || is_http_url(v) {
                Ok(())
            } else {
                Err("must be an absolute http(s) URL".into())
            }
        });
    let tls = tls(&mut s.section("tls"));
    ServerConfig {
        listen,
        admin_listen,
        trusted_proxies,
        workers: s.get("workers", DEFAULT_WORKERS).get(),
        blocking_threads: s.get("blocking_threads", 0usize).get(),
        public_url,
        shutdown_timeout: s
            .duration("shutdown_timeout", DEFAULT_SHUTDOWN_TIMEOUT)
            .warn(|d| {
                (*d > KUBERNETES_GRACE_PERIOD && *d <= mins(10)).then(|| {
                    format!(
                        "{} is longer than the 30s grace period Kubernetes gives a pod by \
                         default: the drain is cut short by SIGKILL; shorten it or raise \
                         terminationGracePeriodSeconds above it",
                        super::format_duration(*d)
                    )
                })
            })
            .within(Duration::ZERO, mins(10)),
        header_read_timeout: s
            .duration("header_read_timeout", DEFAULT_HEADER_READ_TIMEOUT)
            .within(ms(100), mins(5)),
        idle_timeout: s
            .duration("idle_timeout", DEFAULT_IDLE_TIMEOUT)
            .within(secs(1), hours(1)),
        body_idle_timeout: s
            .duration("body_idle_timeout", DEFAULT_BODY_IDLE_TIMEOUT)
            .within(ms(100), mins(10)),
        max_connections: s
            .get("max_connections", DEFAULT_MAX_CONNECTIONS)
            .at_least(1),
        max_header_bytes: s
            .get("max_header_bytes", DEFAULT_MAX_HEADER_BYTES)
            .at_least(1024),
        max_uri_bytes: s.get("max_uri_bytes", DEFAULT_MAX_URI_BYTES).at_least(256),
        max_body_bytes: s.get("max_body_bytes", DEFAULT_MAX_BODY_BYTES).get(),
        auth_max_body_bytes: s
            .get("auth_max_body_bytes", DEFAULT_AUTH_MAX_BODY_BYTES)
            .get(),
        http2_max_concurrent_streams: s
            .get("http2_max_concurrent_streams", DEFAULT_H2_MAX_STREAMS)
            .at_least(1),
        watch_config: s.get("watch_config", DEFAULT_WATCH_CONFIG).get(),
        tls,
    }
}

/// A list of CIDRs (a bare address is one host), truncated to their network, with a warning
/// built by `everyone_warning(cidrs, verb)` when any of them is a whole address family
/// (`0.0.0.0/0`, `::/0`). `server.trusted_proxies` and `forward_auth.trusted_proxies` read
/// their lists through this one function, so both accept and refuse the same spellings.
fn cidrs(
    s: &mut Section<'_>,
    key: &str,
    default: &[&str],
    everyone_warning: impl FnOnce(&str, &str) -> String,
) -> Vec<IpNet> {
    s.list(key, default)
        .warn(|list| {
            let everyone: Vec<&str> = list
                .iter()
                .map(String::as_str)
                .filter(|cidr| cidr.parse::<IpNet>().is_ok_and(|net| net.prefix_len() == 0))
                .collect();
            (!everyone.is_empty()).then(|| {
                let verb = if everyone.len() == 1 {
                    "trusts"
                } else {
                    "trust"
                };
                everyone_warning(&everyone.join(" and "), verb)
            })
        })
        .parse_each(|cidr| {
            // A bare address means a single host.
            cidr.parse::<IpNet>()
                .or_else(|_| cidr.parse::<std::net::IpAddr>().map(IpNet::from))
                .map(|net| net.trunc())
                .map_err(|_| format!("{cidr:?} is not a CIDR like 10.0.0.0/8"))
        })
}

fn tls(s: &mut Section<'_>) -> Option<TlsConfig> {
    let cert = s.str("cert", "").get();
    let key = s.str("key", "").get();
    let reload_interval = s
        .duration("reload_interval", DEFAULT_TLS_RELOAD_INTERVAL)
        .within(ms(100), days(1));
    match (cert.is_empty(), key.is_empty()) {
        (true, true) => None,
        (false, false) => Some(TlsConfig {
            cert: cert.into(),
            key: key.into(),
            reload_interval,
        }),
        _ => {
            s.err("", "cert and key must be given together");
            None
        }
    }
}

fn socket_addr(value: &str, what: &str) -> Result<SocketAddr, String> {
    value
        .parse()
        .map_err(|_| format!("{value:?} is not {what}"))
}

fn is_http_url(value: &str) -> bool {
    value.starts_with("https://") || value.starts_with("http://")
}

// ---------------------------------------------------------------------------------------
// [upstream], [store]
// ---------------------------------------------------------------------------------------

/// How long the upstream has to send response headers.
const DEFAULT_UPSTREAM_TIMEOUT: &str = "30s";
/// Connect timeout: a local upstream that takes longer than this is down.
const DEFAULT_UPSTREAM_CONNECT_TIMEOUT: &str = "5s";
/// Pooled upstream connections are dropped after this idle time, below the 60s keep-alive
/// of most servers so we never reuse a connection the upstream is closing.
const DEFAULT_UPSTREAM_POOL_IDLE: &str = "50s";
/// Idle pooled connections kept to the upstream.
const DEFAULT_UPSTREAM_POOL_MAX_IDLE: usize = 512;
/// Embedded, so a single instance needs nothing else running; `postgres` is one line away.
const DEFAULT_STORE_BACKEND: &str = "sled";
/// Beside the working directory, where a first run from a checkout finds it.
const DEFAULT_STORE_PATH: &str = "./gatehouse-data";
/// An auth request holds a connection for a few milliseconds, and argon2 keeps logins to a
/// few dozen a second per core, so 16 is rarely all busy; three replicas with 16 each (plus
/// one LISTEN connection apiece) stay well inside PostgreSQL's default max_connections (100).
const DEFAULT_STORE_POOL_SIZE: usize = 16;
/// TCP, TLS and authentication to a database on the same network take milliseconds; 5s rides
/// out a failover's address change without holding requests behind a dead host for long.
const DEFAULT_STORE_CONNECT_TIMEOUT: &str = "5s";
/// Every statement gatehouse sends is an indexed lookup or a small write that takes
/// milliseconds; one still running after 5s is stuck behind a lock or a sick server, and its
/// request is better answered 503 (and its connection freed) than held.
const DEFAULT_STORE_STATEMENT_TIMEOUT: &str = "5s";
/// A request that waited 2s for a pooled connection is better answered 503 with
/// Retry-After than queued further: under overload the queue would only grow.
const DEFAULT_STORE_ACQUIRE_TIMEOUT: &str = "2s";
/// Dead records (expired or revoked sessions and their refresh tokens, expired one-time
/// tokens, revocations and counters) are purged this often. Ten minutes keeps the store within
/// a few minutes' churn of its live data while a purge's scan stays rare.
const DEFAULT_STORE_PURGE_INTERVAL: &str = "10m";

fn upstream(s: &mut Section<'_>) -> UpstreamConfig {
    UpstreamConfig {
        url: s
            .str("url", "")
            .parse(|v| parse_upstream_url(v.trim()))
            .unwrap_or_else(|| UpstreamUrl {
                scheme: http::uri::Scheme::HTTP,
                authority: http::uri::Authority::from_static("invalid"),
                base_path: String::new(),
            }),
        timeout: s
            .duration("timeout", DEFAULT_UPSTREAM_TIMEOUT)
            .within(ms(100), hours(1)),
        connect_timeout: s
            .duration("connect_timeout", DEFAULT_UPSTREAM_CONNECT_TIMEOUT)
            .within(ms(10), mins(1)),
        pool_idle_timeout: s
            .duration("pool_idle_timeout", DEFAULT_UPSTREAM_POOL_IDLE)
            .within(Duration::ZERO, hours(1)),
        pool_max_idle: s.get("pool_max_idle", DEFAULT_UPSTREAM_POOL_MAX_IDLE).get(),
        health_path: s
            .str("health_path", "")
            .check(|p| {
                if p.is_empty() || p.starts_with('/') {
                    Ok(())
                } else {
                    Err("must start with '/'".into())
                }
            })
            .into_non_empty(),
        ca_file: s
            .str("ca_file", "")
            .get()
            .into_non_empty()
            .map(PathBuf::from),
    }
}

pub(super) fn parse_upstream_url(value: &str) -> Result<UpstreamUrl, String> {
    if value.is_empty() {
        return Err("is required (e.g. \"http://127.0.0.1:3000\")".into());
    }
    let uri: http::Uri = value
        .parse()
        .map_err(|_| format!("{value:?} is not a URL"))?;
    let scheme = uri
        .scheme()
        .cloned()
        .ok_or_else(|| format!("{value:?} has no scheme; write http://{value}"))?;
    if scheme != http::uri::Scheme::HTTP && scheme != http::uri::Scheme::HTTPS {
        return Err(format!("scheme {scheme} is not supported (http or https)"));
    }
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| format!("{value:?} has no host"))?;
    if authority.as_str().contains('@') {
        return Err("credentials in the upstream URL are not supported".into());
    }
    if uri.query().is_some() {
        return Err("the upstream URL must not have a query string".into());
    }
    let base_path = uri.path().trim_end_matches('/').to_string();
    Ok(UpstreamUrl {
        scheme,
        authority,
        base_path,
    })
}

fn store(s: &mut Section<'_>) -> StoreConfig {
    let backend = s
        .str("backend", DEFAULT_STORE_BACKEND)
        .parse(|b| match b.as_str() {
            "sled" => Ok(StoreBackend::Sled),
            "postgres" => Ok(StoreBackend::Postgres),
            other => Err(format!("{other:?} is not sled or postgres")),
        });
    let path = s.str("path", DEFAULT_STORE_PATH).check(|p| {
        if p.trim().is_empty() && backend == Some(StoreBackend::Sled) {
            Err("is required with backend = \"sled\"".into())
        } else {
            Ok(())
        }
    });
    // May carry a password, so a Secret: it never reaches a log line or an error message
    // (check_url's messages name the problem, never the value).
    let url = s
        .get("url", super::Secret::default())
        .map(|u| super::Secret::new(u.expose().trim()))
        .check(|url| {
            // Checked whenever set, so a typo shows before the backend is switched over.
            if url.is_empty() {
                Ok(())
            } else {
                crate::store::postgres::check_url(url.expose())
            }
        });
    if backend == Some(StoreBackend::Postgres) && url.is_empty() {
        s.err(
            "url",
            "is required when backend = \"postgres\" (e.g. \"postgres://gatehouse@db:5432/gatehouse?sslmode=verify-full\", or GATEHOUSE_STORE_URL)",
        );
    }
    StoreConfig {
        backend: backend.unwrap_or(StoreBackend::Sled),
        path: path.into(),
        url,
        pool_size: s.get("pool_size", DEFAULT_STORE_POOL_SIZE).at_least(1),
        connect_timeout: s
            .duration("connect_timeout", DEFAULT_STORE_CONNECT_TIMEOUT)
            .within(ms(1), mins(1)),
        // PostgreSQL takes milliseconds, and 0 would switch the timeout off.
        statement_timeout: s
            .duration("statement_timeout", DEFAULT_STORE_STATEMENT_TIMEOUT)
            .within(ms(1), mins(10)),
        acquire_timeout: s
            .duration("acquire_timeout", DEFAULT_STORE_ACQUIRE_TIMEOUT)
            .within(ms(1), mins(1)),
        purge_interval: s
            .duration("purge_interval", DEFAULT_STORE_PURGE_INTERVAL)
            .within(secs(1), days(1)),
    }
}

/// Empty strings mean "not set" throughout the file.
trait NonEmpty {
    fn into_non_empty(self) -> Option<String>;
}

impl NonEmpty for String {
    fn into_non_empty(self) -> Option<String> {
        (!self.is_empty()).then_some(self)
    }
}

// ---------------------------------------------------------------------------------------
// [tokens]
// ---------------------------------------------------------------------------------------

/// The secret must carry at least 256 bits for HS256.
pub const MIN_SECRET_BYTES: usize = 32;
/// HS256 keeps a single deployment simple (one secret); the asymmetric algorithms are for
/// publishing keys. Pinned either way: a token's own `alg` header is never trusted.
const DEFAULT_ALGORITHM: &str = "HS256";
const DEFAULT_ISSUER: &str = "gatehouse";
const DEFAULT_AUDIENCE: &str = "api";
/// Short access tokens keep revocation cheap; refresh rotates them.
const DEFAULT_ACCESS_TTL: &str = "15m";
/// A month of absolute session life: long enough not to annoy, short enough to expire
/// forgotten devices.
const DEFAULT_REFRESH_TTL: &str = "30d";
/// A session unused for a week must log in again.
const DEFAULT_REFRESH_IDLE_TTL: &str = "7d";
/// Clock skew tolerated on `exp`/`nbf`; small, because every second is extra token life.
const DEFAULT_LEEWAY: &str = "5s";
/// The most leeway accepted, for the same reason.
const MAX_LEEWAY: Duration = Duration::from_secs(300);
/// Slots of the verified-token cache: enough for a few thousand clients' current tokens at
/// about 1 KiB each, a few MiB at most.
const DEFAULT_VERIFY_CACHE: usize = 4096;
/// Beyond this the cache costs more memory than verifying saves.
const MAX_VERIFY_CACHE: usize = 1 << 20;

fn tokens(s: &mut Section<'_>) -> TokensConfig {
    let purpose = s.purpose();
    let algorithm = s
        .str("algorithm", DEFAULT_ALGORITHM)
        .parse(|a| {
            Algorithm::from_name(a)
                .ok_or_else(|| format!("{a:?} is not supported: HS256, EdDSA, ES256 or RS256"))
        })
        .unwrap_or(Algorithm::HS256);
    let secret = s
        .get("secret", super::Secret::default())
        .warn(|secret| {
            is_placeholder_secret(secret.expose()).then(|| {
                "is an example placeholder, which anyone who read the example can use to \
                 mint tokens; generate one with `openssl rand -base64 48`"
                    .to_string()
            })
        })
        .warn(|secret| {
            (algorithm.is_asymmetric() && !secret.is_empty()).then(|| {
                format!(
                    "is not used: tokens.algorithm is {algorithm}, which signs with [[tokens.keys]]"
                )
            })
        })
        .check(|secret| {
            if algorithm.is_asymmetric() || secret.is_empty() && purpose == super::Purpose::Policy {
                Ok(())
            } else if secret.is_empty() {
                Err(
                    "is required (set GATEHOUSE_TOKENS_SECRET; e.g. `openssl rand -base64 48`)"
                        .into(),
                )
            } else if secret.len() < MIN_SECRET_BYTES {
                Err(format!(
                    "is {} bytes; HS256 needs at least {MIN_SECRET_BYTES}",
                    secret.len()
                ))
            } else {
                Ok(())
            }
        });
    let keys = signing_keys(s, algorithm, &secret);
    TokensConfig {
        secret,
        algorithm,
        keys,
        issuer: s.str("issuer", DEFAULT_ISSUER).check(|v| not_empty(v)),
        audience: s.str("audience", DEFAULT_AUDIENCE).check(|v| not_empty(v)),
        // An access token lives until it expires whatever happens to its session, so more
        // than a day defeats the short-token design; less than a minute is refresh traffic.
        access_ttl: s
            .duration("access_ttl", DEFAULT_ACCESS_TTL)
            .within(mins(1), days(1)),
        refresh_ttl: s
            .duration("refresh_ttl", DEFAULT_REFRESH_TTL)
            .within(mins(1), days(365)),
        refresh_idle_ttl: s
            .duration("refresh_idle_ttl", DEFAULT_REFRESH_IDLE_TTL)
            .within(mins(1), days(365)),
        // Every second of leeway is extra token life.
        leeway: s
            .duration("leeway", DEFAULT_LEEWAY)
            .within(Duration::ZERO, MAX_LEEWAY),
        verify_cache: s.get("verify_cache", DEFAULT_VERIFY_CACHE).check(|n| {
            if *n > MAX_VERIFY_CACHE {
                Err(format!(
                    "must be at most {MAX_VERIFY_CACHE} (0 turns it off)"
                ))
            } else {
                Ok(())
            }
        }),
    }
}

/// `[[tokens.keys]]`, loaded: under HS256 the secret's key (none while a `policy` command
/// runs without a secret), otherwise each key file read and checked against the algorithm,
/// its error on its own key (`tokens.keys[1].private_key`). The first signs.
fn signing_keys(
    s: &mut Section<'_>,
    algorithm: Algorithm,
    secret: &super::Secret,
) -> Vec<SigningKey> {
    let purpose = s.purpose();
    let entries = s.tables("keys", |k| {
        let kid = k
            .optional::<String>("kid")
            .check(|kid| kid.as_deref().map_or(Ok(()), check_kid));
        let path = k.str("private_key", "").check(|p| {
            if p.is_empty() {
                Err("is required: the path of a PKCS#8 PEM private key".into())
            } else {
                Ok(())
            }
        });
        if !algorithm.is_asymmetric()
            || path.is_empty()
            || kid.as_deref().is_some_and(|k| check_kid(k).is_err())
        {
            return None;
        }
        match SigningKey::from_pem_file(std::path::Path::new(&path), algorithm, kid.as_deref()) {
            Ok(key) => Some(key),
            // Deciding requests (`policy explain`) needs a key only to verify a --token, and
            // the files may not be mounted where policies are tested; it says so then.
            Err(_) if purpose == super::Purpose::Policy => None,
            Err(e) => {
                k.err("private_key", e);
                None
            }
        }
    });
    if !algorithm.is_asymmetric() {
        if !entries.is_empty() {
            s.err(
                "keys",
                "are for EdDSA, ES256 and RS256; HS256 signs with tokens.secret (set \
                 tokens.algorithm, or remove [[tokens.keys]])",
            );
        }
        return if secret.len() >= MIN_SECRET_BYTES {
            vec![SigningKey::hs256(secret.expose().as_bytes())]
        } else {
            Vec::new()
        };
    }
    if entries.is_empty() && purpose == super::Purpose::Serve {
        s.err(
            "keys",
            format!(
                "{algorithm} needs at least one [[tokens.keys]] entry with a private_key \
                 (make one with `gatehouse keys generate --algorithm {algorithm} --out FILE`)"
            ),
        );
    }
    // Each loaded key with its index in the file, so a duplicate names the entry it repeats.
    let mut keys: Vec<(usize, SigningKey)> = Vec::with_capacity(entries.len());
    for (i, key) in entries.into_iter().enumerate() {
        let Some(key) = key else { continue };
        if let Some((j, _)) = keys.iter().find(|(_, k)| k.kid() == key.kid()) {
            s.err_at(
                format!("tokens.keys[{i}].kid"),
                format!(
                    "{:?} is already the kid of tokens.keys[{j}]; kids must be unique",
                    key.kid()
                ),
            );
        }
        keys.push((i, key));
    }
    keys.into_iter().map(|(_, key)| key).collect()
}

/// Whether a secret is one of the placeholders examples use (`change-me-…`,
/// `replace-with-…`): valid as far as length goes, and known to everyone.
fn is_placeholder_secret(secret: &str) -> bool {
    let folded = secret.to_ascii_lowercase().replace('_', "-");
    [
        "change-me",
        "changeme",
        "replace-with",
        "replace-me",
        "replaceme",
    ]
    .iter()
    .any(|p| folded.contains(p))
}

fn not_empty(value: &str) -> Result<(), String> {
    if value.is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// [auth], [auth.password], [auth.lockout], [auth.paths]
// ---------------------------------------------------------------------------------------

const DEFAULT_AUTH_PREFIX: &str = "/auth";
/// Open, because a sidecar that cannot sign anyone up surprises more than it protects;
/// `closed` is one line away.
const DEFAULT_REGISTRATION: &str = "open";
/// The least privileged role of the usual reader/creator/admin model.
const DEFAULT_ROLES: &[&str] = &["reader"];
const DEFAULT_ADMIN_ROLE: &str = "admin";
/// Long enough to read the mail, short enough that a leaked link soon dies.
const DEFAULT_RESET_TOKEN_TTL: &str = "30m";
/// A day: verification is often done later, from another device.
const DEFAULT_VERIFY_TOKEN_TTL: &str = "24h";
/// Minimum time between two password-reset mails to one address.
const DEFAULT_FORGOT_COOLDOWN: &str = "2m";
/// NIST SP 800-63B: at least 8 characters, allow at least 64; we allow 256 bytes and refuse
/// more before hashing so a megabyte password costs nothing.
const DEFAULT_PASSWORD_MIN: usize = 8;
const DEFAULT_PASSWORD_MAX: usize = 256;
/// The least `max_length` NIST SP 800-63B allows.
const NIST_MIN_MAX_LENGTH: usize = 64;
/// Failed logins per name within the window before a lockout; 5 stops online guessing and
/// rarely catches a human.
const DEFAULT_LOCKOUT_MAX_FAILURES: u32 = 5;
const DEFAULT_LOCKOUT_WINDOW: &str = "15m";
const DEFAULT_LOCKOUT_DURATION: &str = "15m";

fn auth(s: &mut Section<'_>) -> AuthConfig {
    let prefix = s
        .str("prefix", DEFAULT_AUTH_PREFIX)
        .map(|p| p.trim_end_matches('/').to_string())
        .check(|p| {
            if !p.starts_with('/') || p.contains(['*', '?', ';', '%']) || p.contains("//") {
                Err("must be a plain path starting with '/', like \"/auth\"".into())
            } else {
                Ok(())
            }
        });
    let registration = s
        .str("registration", DEFAULT_REGISTRATION)
        .parse(|r| match r.as_str() {
            "open" => Ok(Registration::Open),
            "closed" => Ok(Registration::Closed),
            other => Err(format!("{other:?} is not open or closed")),
        })
        .unwrap_or(Registration::Closed);
    // Subsections are read one statement each: a section reports its unknown keys when it
    // is dropped, and it holds the reader until then.
    let password = password(&mut s.section("password"));
    let lockout = lockout(&mut s.section("lockout"));
    let mfa = mfa(&mut s.section("mfa"));
    let renames = renames(&mut s.map("paths"));
    let ws = ws(&mut s.section("ws"));
    let auth = AuthConfig {
        prefix,
        registration,
        default_roles: s.list("default_roles", DEFAULT_ROLES).get(),
        selectable_roles: s.list("selectable_roles", &[]).get(),
        admin_role: s
            .str("admin_role", DEFAULT_ADMIN_ROLE)
            .check(|v| not_empty(v)),
        expose_debug_tokens: s
            .get("expose_debug_tokens", false)
            .warn(|on| {
                on.then(|| {
                    "is on: reset and verification tokens appear in API responses and \
                     forgot-password reveals which addresses have accounts; development only"
                        .to_string()
                })
            })
            .get(),
        require_verified_email: s.get("require_verified_email", false).get(),
        reset_token_ttl: s
            .duration("reset_token_ttl", DEFAULT_RESET_TOKEN_TTL)
            .within(mins(1), days(7)),
        verify_token_ttl: s
            .duration("verify_token_ttl", DEFAULT_VERIFY_TOKEN_TTL)
            .within(mins(1), days(30)),
        forgot_cooldown: s
            .duration("forgot_cooldown", DEFAULT_FORGOT_COOLDOWN)
            .within(Duration::ZERO, days(1)),
        password,
        lockout,
        mfa,
        renames,
        ws,
    };
    if auth.selectable_roles.contains(&auth.admin_role) {
        s.err(
            "selectable_roles",
            "must not contain the admin role: anyone could register as admin",
        );
    }
    auth
}

fn password(s: &mut Section<'_>) -> crate::password::PasswordSettings {
    let min_length = s.get("min_length", DEFAULT_PASSWORD_MIN).at_least(1);
    let max_length = s.get("max_length", DEFAULT_PASSWORD_MAX).get();
    if max_length < min_length.max(NIST_MIN_MAX_LENGTH) {
        s.err(
            "max_length",
            "must be at least 64 and at least min_length (NIST 800-63B)",
        );
    }
    // 0 in the file means the argon2 crate's OWASP defaults, resolved here.
    let d = crate::password::PasswordSettings::default();
    let or = |v: u32, default: u32| if v == 0 { default } else { v };
    crate::password::PasswordSettings {
        min_length,
        max_length,
        memory_kib: or(s.get("memory_kib", 0u32).get(), d.memory_kib),
        iterations: or(s.get("iterations", 0u32).get(), d.iterations),
        parallelism: or(s.get("parallelism", 0u32).get(), d.parallelism),
        max_concurrent: match s.get("max_concurrent", 0usize).get() {
            0 => d.max_concurrent,
            n => n,
        },
    }
}

fn lockout(s: &mut Section<'_>) -> LockoutConfig {
    LockoutConfig {
        max_failures: s.get("max_failures", DEFAULT_LOCKOUT_MAX_FAILURES).get(),
        window: s
            .duration("window", DEFAULT_LOCKOUT_WINDOW)
            .within(secs(1), days(1)),
        duration: s
            .duration("duration", DEFAULT_LOCKOUT_DURATION)
            .within(secs(1), days(30)),
    }
}

/// Auth-channel connections at once: each costs a task, a 4 KiB read buffer and a
/// connection slot; a thousand is far more than one sidecar's clients keep open to log in,
/// and bounded well below the default `server.max_connections` so the channel alone cannot
/// starve the proxy path.
const DEFAULT_WS_MAX_CONNECTIONS: usize = 1024;
/// 64 KiB: the largest auth message (a login with a 256-byte password) is under 1 KiB, so
/// anything near this is not a client of the channel.
const DEFAULT_WS_MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// A client that logged in and went quiet for a minute is gone or does not need the channel;
/// it reconnects in one round trip.
const DEFAULT_WS_IDLE_TIMEOUT: &str = "60s";
/// A burst of 20 messages, one every half second after that: a client logs in, refreshes and
/// logs out a handful of times an hour, while parsing a flood would cost CPU for nothing.
/// (Logins are also under the per-IP `rate_limits.login` class, as over HTTP.)
const DEFAULT_WS_MESSAGE_RATE: &str = "20/10s";

fn ws(s: &mut Section<'_>) -> WsConfig {
    WsConfig {
        enabled: s.get("enabled", true).get(),
        max_connections: s
            .get("max_connections", DEFAULT_WS_MAX_CONNECTIONS)
            .at_least(1),
        max_message_bytes: s
            .get("max_message_bytes", DEFAULT_WS_MAX_MESSAGE_BYTES)
            .check(|n| {
                if (1024..=1024 * 1024).contains(n) {
                    Ok(())
                } else {
                    Err("must be between 1024 and 1048576".into())
                }
            }),
        idle_timeout: s
            .duration("idle_timeout", DEFAULT_WS_IDLE_TIMEOUT)
            .within(ms(100), hours(1)),
        message_rate: s.rate("message_rate", DEFAULT_WS_MESSAGE_RATE).get(),
        allowed_origins: s.list("allowed_origins", &[]).then(
            |origins| {
                origins
                    .iter()
                    .map(|o| {
                        if o == "*" {
                            return Ok(o.clone());
                        }
                        super::web_origin(o).ok_or_else(|| {
                            format!("{o:?} is not an origin like \"https://app.example.com\" or \"*\"")
                        })
                    })
                    .collect()
            },
            Vec::new(),
        )
        .get(),
    }
}

/// The TOTP issuer shown in authenticator apps when none is configured.
const DEFAULT_MFA_ISSUER: &str = "gatehouse";
/// How long a correct password's `mfa_token` waits for its code: enough to open an
/// authenticator app, short enough that a stolen one soon dies.
const DEFAULT_MFA_CHALLENGE_TTL: &str = "5m";

/// `[auth.mfa]`: the TOTP second factor.
fn mfa(s: &mut Section<'_>) -> MfaConfig {
    MfaConfig {
        // Empty means "not configured": TOTP setup answers that it is unavailable, and
        // users who already have a second factor cannot complete a login.
        encryption_key: s
            .get("encryption_key", super::Secret::default())
            .warn(|key| {
                is_placeholder_secret(key.expose()).then(|| {
                    "is an example placeholder; generate one with `openssl rand -base64 48`"
                        .to_string()
                })
            })
            .check(|key| {
                if !key.is_empty() && key.len() < MIN_SECRET_BYTES {
                    Err(format!(
                        "is {} bytes; at least {MIN_SECRET_BYTES} are needed for AES-256 \
                         (e.g. `openssl rand -base64 48`)",
                        key.len()
                    ))
                } else {
                    Ok(())
                }
            }),
        issuer: s.str("issuer", DEFAULT_MFA_ISSUER).check(|v| {
            if v.is_empty() || v.contains(':') {
                Err(
                    "must be a non-empty name without ':' (it is the label in authenticator apps)"
                        .into(),
                )
            } else {
                Ok(())
            }
        }),
        challenge_ttl: s
            .duration("challenge_ttl", DEFAULT_MFA_CHALLENGE_TTL)
            .within(mins(1), mins(30)),
    }
}

/// `[auth.paths]`: `login = "/signin"` serves login at `{prefix}/signin` (and no longer at
/// `{prefix}/login`).
fn renames(s: &mut Section<'_>) -> Vec<(&'static str, String)> {
    let mut paths = Vec::new();
    for name in s.names() {
        let path = s.str(&name, "").get();
        paths.push((name, path));
    }
    let mut renames: Vec<(&'static str, String)> = Vec::new();
    for (name, path) in &paths {
        let Some((_, default)) = AUTH_ENDPOINTS.iter().find(|(n, _)| n == name) else {
            let names: Vec<&str> = AUTH_ENDPOINTS.iter().map(|(n, _)| *n).collect();
            let mut message = format!("unknown endpoint; one of {}", names.join(", "));
            if let Some(near) = did_you_mean(name, names.iter().copied()) {
                message = format!(
                    "unknown endpoint; did you mean {near}? (one of {})",
                    names.join(", ")
                );
            }
            s.err(name, message);
            continue;
        };
        let normal = crate::path::normalize(path).is_ok_and(|n| n == path.as_str());
        if !normal || path == "/" || path.ends_with('/') || path.contains('%') {
            s.err(name, "must be a plain normalised path like \"/signin\"");
        } else if path == super::FORWARD_AUTH_PATH
            || path.starts_with(&format!("{}/", super::FORWARD_AUTH_PATH))
        {
            s.err(
                name,
                format!("{path} is the forward-auth endpoint ([forward_auth]); pick another path"),
            );
        } else if renames.iter().any(|(_, p)| p == path)
            || AUTH_ENDPOINTS
                .iter()
                .any(|(n, d)| d == path && !paths.iter().any(|(name, _)| name == n))
        {
            s.err(name, format!("{path} is already used by another endpoint"));
        } else {
            renames.push((default, path.clone()));
        }
    }
    renames
}

// ---------------------------------------------------------------------------------------
// [[routes]], [roles], [rate_limits]
// ---------------------------------------------------------------------------------------

/// One `[[routes]]` entry: what the policy compiles, and its own rate limit.
struct Route {
    spec: RouteSpec,
    rate_limit: Option<Rate>,
}

fn route(s: &mut Section<'_>) -> Route {
    Route {
        spec: RouteSpec {
            name: s.optional("name").get(),
            path: s.str("path", "").get(),
            methods: s.list("methods", &[]).get(),
            access: s.optional("access").get(),
            roles: s.list("roles", &[]).get(),
            mfa: s.get("mfa", false).get(),
        },
        rate_limit: s
            .optional::<String>("rate_limit")
            .then(|v| v.map_or(Ok(None), |v| parse_rate(&v)), None)
            .get(),
    }
}

/// `[roles]`: `name = { inherits = [...] }`, sorted by name.
fn roles(s: &mut Section<'_>) -> Vec<RoleSpec> {
    s.names()
        .into_iter()
        .map(|name| {
            let inherits = s.section(&name).list("inherits", &[]).get();
            RoleSpec { name, inherits }
        })
        .collect()
}

const DEFAULT_LOGIN_RATE: &str = "5/15m";
/// Registration is rare for a real client and the one probe of whether an address exists.
const DEFAULT_REGISTER_RATE: &str = "3/1h";
const DEFAULT_REFRESH_RATE: &str = "10/1m";
const DEFAULT_FORGOT_PASSWORD_RATE: &str = "3/1h";
/// Per client address, on top of the per-account cooldown (`auth.forgot_cooldown`): enough
/// for a user whose mail is slow, not for a mail flood from one client's accounts.
const DEFAULT_VERIFY_EMAIL_RESEND_RATE: &str = "3/1h";
/// Proxied requests are the upstream's business unless the operator says otherwise.
const DEFAULT_PROXY_RATE: &str = "0";
/// Keys tracked per rate-limit class; a fixed table, so memory does not grow with clients.
const DEFAULT_RATE_LIMIT_CAPACITY: usize = 65_536;
/// Local, so a single instance needs nothing else running; `redis` is one line away.
const DEFAULT_RATE_LIMIT_BACKEND: &str = "local";
/// Namespaces gatehouse's keys in a Redis that other applications share.
const DEFAULT_REDIS_PREFIX: &str = "gatehouse:";
/// Redis answers within a millisecond on a healthy network; an auth request that has waited
/// 100ms for it is better served by counting locally than by waiting longer.
const DEFAULT_REDIS_TIMEOUT: &str = "100ms";
/// The longest `redis_timeout` accepted: every auth request may wait this long while Redis
/// hangs, so more than a second would turn a Redis fault into an outage.
const MAX_REDIS_TIMEOUT: Duration = Duration::from_secs(1);

fn rate_limits(s: &mut Section<'_>, routes: &[Route]) -> RateLimitConfig {
    let login = s.rate("login", DEFAULT_LOGIN_RATE).get();
    let register = s.rate("register", DEFAULT_REGISTER_RATE).get();
    let refresh = s.rate("refresh", DEFAULT_REFRESH_RATE).get();
    let forgot_password = s
        .rate("forgot_password", DEFAULT_FORGOT_PASSWORD_RATE)
        .get();
    let verify_email_resend = s
        .rate("verify_email_resend", DEFAULT_VERIFY_EMAIL_RESEND_RATE)
        .get();
    let proxy = s.rate("proxy", DEFAULT_PROXY_RATE).get();
    let capacity = s.get("capacity", DEFAULT_RATE_LIMIT_CAPACITY).at_least(64);
    let backend = s.str("backend", DEFAULT_RATE_LIMIT_BACKEND).get();
    // May carry a password, so a Secret: it never reaches a log line or an error message.
    let redis_url = s
        .get("redis_url", super::Secret::default())
        .map(|u| super::Secret::new(u.expose().trim()))
        .check(|url| {
            // Checked whenever set, so a typo shows before the backend is switched over.
            if url.is_empty() {
                Ok(())
            } else {
                crate::shared_limits::redis::check_url(url.expose())
            }
        });
    let redis_prefix = s.str("redis_prefix", DEFAULT_REDIS_PREFIX).check(|p| {
        if p.is_empty() {
            Err("must not be empty: keys need a namespace in a shared Redis".into())
        } else if p.chars().any(|c| c.is_whitespace() || c.is_control()) {
            Err("must not contain spaces or control characters".into())
        } else {
            Ok(())
        }
    });
    let redis_timeout = s
        .duration("redis_timeout", DEFAULT_REDIS_TIMEOUT)
        .within(ms(1), MAX_REDIS_TIMEOUT);
    let backend = match backend.as_str() {
        "local" => RateLimitBackend::Local,
        "redis" => {
            if redis_url.is_empty() {
                s.err(
                    "redis_url",
                    "is required when backend = \"redis\" (e.g. \"redis://127.0.0.1:6379/0\", or GATEHOUSE_RATE_LIMITS_REDIS_URL)",
                );
            }
            RateLimitBackend::Redis { url: redis_url }
        }
        other => {
            s.err("backend", format!("{other:?} is not local or redis"));
            RateLimitBackend::Local
        }
    };
    RateLimitConfig {
        login,
        register,
        refresh,
        forgot_password,
        verify_email_resend,
        proxy,
        routes: routes.iter().map(|r| r.rate_limit).collect(),
        capacity,
        backend,
        redis_prefix,
        redis_timeout,
    }
}

// ---------------------------------------------------------------------------------------
// [email]
// ---------------------------------------------------------------------------------------

/// Log, so a fresh install never tries to reach a mail server it was not given.
const DEFAULT_EMAIL_MODE: &str = "log";
const DEFAULT_EMAIL_FROM: &str = "gatehouse@localhost";

fn email(s: &mut Section<'_>, server: &ServerConfig, auth: &AuthConfig) -> EmailConfig {
    let mode = s.str("mode", DEFAULT_EMAIL_MODE).get();
    let from = s.str("from", DEFAULT_EMAIL_FROM).check(|f| {
        if f.contains('@') {
            Ok(())
        } else {
            Err("must be an email address".into())
        }
    });
    // May carry credentials.
    let smtp_url = s
        .get("smtp_url", super::Secret::default())
        .map(|u| super::Secret::new(u.expose().trim()))
        .get();
    let reset_url = s.str("reset_url", "").check(|v| url_template(v));
    let verify_url = s.str("verify_url", "").check(|v| url_template(v));
    let mode = match mode.as_str() {
        "log" => EmailMode::Log,
        "smtp" => {
            let url = smtp_url.expose();
            if !(url.starts_with("smtp://") || url.starts_with("smtps://")) {
                s.err(
                    "smtp_url",
                    "must start with smtp:// or smtps:// when mode = \"smtp\"",
                );
            }
            EmailMode::Smtp { url: smtp_url }
        }
        other => {
            s.err("mode", format!("{other:?} is not log or smtp"));
            EmailMode::Log
        }
    };
    if matches!(mode, EmailMode::Smtp { .. })
        && server.public_url.is_empty()
        && (reset_url.is_empty() || verify_url.is_empty())
    {
        s.err_at(
            "server.public_url",
            "is required when email.mode = \"smtp\" and reset_url/verify_url are not set: links in mails need it",
        );
    }
    // Links default to gatehouse's own pages under public_url; never to the request's Host.
    let base = if server.public_url.is_empty() {
        format!("http://{}", server.listen)
    } else {
        server.public_url.clone()
    };
    let own_page = |page: &str| format!("{base}{}?token={{token}}", auth.path_of(page));
    EmailConfig {
        mode,
        from,
        reset_url: reset_url
            .into_non_empty()
            .unwrap_or_else(|| own_page("/reset-password")),
        verify_url: verify_url
            .into_non_empty()
            .unwrap_or_else(|| own_page("/verify-email")),
    }
}

fn url_template(value: &str) -> Result<(), String> {
    let mut problems = Vec::new();
    if !value.is_empty() && !value.contains("{token}") {
        problems.push("must contain {token}");
    }
    if !value.is_empty() && !is_http_url(value) {
        problems.push("must be an absolute http(s) URL");
    }
    match problems.is_empty() {
        true => Ok(()),
        false => Err(problems.join("; ")),
    }
}

// ---------------------------------------------------------------------------------------
// [headers]
// ---------------------------------------------------------------------------------------

const DEFAULT_USER_ID_HEADER: &str = "X-Auth-User-Id";
const DEFAULT_EMAIL_HEADER: &str = "X-Auth-Email";
const DEFAULT_ROLES_HEADER: &str = "X-Auth-Roles";
/// Everything gatehouse vouches for lives under this prefix, so stripping it from inbound
/// requests also covers names added later.
const DEFAULT_STRIP_PREFIX: &str = "X-Auth-";
/// The de-facto standard name, which most tracing setups already propagate.
const DEFAULT_REQUEST_ID_HEADER: &str = "X-Request-Id";

/// Off: an upstream must be written to verify it, and it needs an asymmetric key.
const DEFAULT_ASSERTION_HEADER: &str = "";
/// Long enough for a request to reach the upstream and for modest clock skew, short enough
/// that a leaked assertion is worth little; cached assertions are reused for half of it.
const DEFAULT_ASSERTION_TTL: &str = "30s";
/// Enough for the identities active within one lifetime on a busy sidecar; each slot holds
/// one identity and its assertion (under 1 KiB).
const DEFAULT_ASSERTION_CACHE: usize = 4096;
const MAX_ASSERTION_CACHE: usize = 1 << 20;

fn headers(s: &mut Section<'_>, upstream: &UpstreamConfig) -> HeadersConfig {
    HeadersConfig {
        user_id: s.header("user_id", DEFAULT_USER_ID_HEADER).get(),
        email: s.header("email", DEFAULT_EMAIL_HEADER).get(),
        roles: s.header("roles", DEFAULT_ROLES_HEADER).get(),
        session_id: s
            .str("session_id", "")
            .parse(|v| match v.as_str() {
                "" => Ok(None),
                v => header_name(v).map(Some),
            })
            .flatten(),
        strip_prefix: s
            .str("strip_prefix", DEFAULT_STRIP_PREFIX)
            .check(|p| {
                if p.is_empty() || header_name(p).is_ok() {
                    Ok(())
                } else {
                    Err("is not a valid header name prefix".into())
                }
            })
            .to_ascii_lowercase(),
        request_id: s.header("request_id", DEFAULT_REQUEST_ID_HEADER).get(),
        // The upstream trusts gatehouse's identity headers, not the raw token.
        forward_authorization: s.get("forward_authorization", false).get(),
        assertion: s
            .str("assertion", DEFAULT_ASSERTION_HEADER)
            .parse(|v| match v.as_str() {
                "" => Ok(None),
                v => header_name(v).map(Some),
            })
            .flatten(),
        assertion_audience: s
            .str("assertion_audience", "")
            .get()
            .into_non_empty()
            .unwrap_or_else(|| origin(&upstream.url)),
        assertion_ttl: s.duration("assertion_ttl", DEFAULT_ASSERTION_TTL).within(
            secs(1),
            secs(crate::token::assertion::MAX_ASSERTION_TTL_SECS),
        ),
        assertion_cache: s
            .get("assertion_cache", DEFAULT_ASSERTION_CACHE)
            .check(|n| {
                if *n > MAX_ASSERTION_CACHE {
                    Err(format!(
                        "must be at most {MAX_ASSERTION_CACHE} (0 turns it off)"
                    ))
                } else {
                    Ok(())
                }
            }),
    }
}

/// The upstream URL's origin (RFC 6454 §6.1): scheme, lower-case host, and the port unless
/// it is the scheme's default, as [`super::web_origin`] spells it. The default audience of
/// assertions.
fn origin(url: &super::UpstreamUrl) -> String {
    let bare = format!("{}://{}", url.scheme, url.authority);
    // An upstream URL is http(s) with a host, so this always has an origin.
    super::web_origin(&bare).unwrap_or(bare)
}

/// `headers.assertion` across sections: an asymmetric key to sign with, an audience no
/// access token carries, and a name of its own.
fn assertion_needs(root: &mut Section<'_>, headers: &HeadersConfig, tokens: &TokensConfig) {
    let Some(name) = &headers.assertion else {
        return;
    };
    if !tokens.algorithm.is_asymmetric() {
        root.err_at(
            "headers.assertion",
            format!(
                "needs an asymmetric tokens.algorithm (EdDSA, ES256 or RS256); it is {}: \
                 upstreams verify assertions with the public keys of /.well-known/jwks.json, \
                 and under HS256 they would need the secret, which mints access tokens",
                tokens.algorithm
            ),
        );
    }
    if headers.assertion_audience == tokens.audience {
        root.err_at(
            "headers.assertion_audience",
            "must differ from tokens.audience, so that no verifier can take an assertion \
             for an access token or the other way round",
        );
    }
    let others = [
        Some(&headers.user_id),
        Some(&headers.email),
        Some(&headers.roles),
        headers.session_id.as_ref(),
        Some(&headers.request_id),
    ];
    if others.into_iter().flatten().any(|other| other == name)
        || *name == http::header::AUTHORIZATION
    {
        root.err_at(
            "headers.assertion",
            format!("{name} is already another header's name; give the assertion its own"),
        );
    }
}

// ---------------------------------------------------------------------------------------
// [forward_auth]
// ---------------------------------------------------------------------------------------

/// Off: an ingress must be set up to call `{prefix}/forward` and to copy its answer, so
/// turning it on is a decision the operator makes with the ingress config in hand.
const DEFAULT_FORWARD_AUTH_ENABLED: bool = false;
/// An ingress on the same host (a sidecar's pod, a VM running nginx beside gatehouse): the
/// one set of peers that is safe to believe without knowing the network.
const DEFAULT_FORWARD_AUTH_PROXIES: [&str; 2] = ["127.0.0.1/32", "::1/128"];

fn forward_auth(s: &mut Section<'_>, server: &ServerConfig) -> ForwardAuthConfig {
    let enabled = s.get("enabled", DEFAULT_FORWARD_AUTH_ENABLED).get();
    let trusted_proxies = cidrs(
        s,
        "trusted_proxies",
        &DEFAULT_FORWARD_AUTH_PROXIES,
        |everyone, verb| {
            format!(
                "{everyone} {verb} every peer: any client that reaches gatehouse can describe \
                 a request of its choosing to {{prefix}}/forward and set the X-Forwarded-For \
                 that rate limits see; list your ingresses' own ranges"
            )
        },
    );
    if enabled && trusted_proxies.is_empty() {
        s.warn_at(
            "trusted_proxies",
            "is empty: every request to {prefix}/forward is refused with 403; list the \
             addresses your ingress connects from",
        );
    }
    // The ingress is the last hop of X-Forwarded-For; proxies in front of it are the
    // server's trusted proxies. The walk believes both.
    let mut chain = trusted_proxies.clone();
    chain.extend(
        server
            .trusted_proxies
            .iter()
            .filter(|net| !trusted_proxies.contains(net)),
    );
    ForwardAuthConfig {
        enabled,
        trusted_proxies,
        chain,
    }
}

// ---------------------------------------------------------------------------------------
// [[issuers]]
// ---------------------------------------------------------------------------------------

/// RS256 is the one algorithm every OpenID provider must support (OIDC Core §15.1).
const DEFAULT_ISSUER_ALGORITHMS: &[&str] = &["RS256"];
/// The claim most providers (and RFC 9068's examples) carry roles in.
const DEFAULT_ROLES_CLAIM: &str = "roles";
/// The OpenID Connect standard claim.
const DEFAULT_EMAIL_CLAIM: &str = "email";

/// `[[issuers]]`, each entry checked on its own keys (`issuers[1].audiences`), then names
/// and issuers unique across entries and distinct from `tokens.issuer`.
fn issuers(root: &mut Section<'_>, tokens: &TokensConfig) -> Vec<IssuerConfig> {
    let entries = root.tables("issuers", |s| {
        let name = s.str("name", "").check(|n| {
            check_kid(n).map_err(|_| {
                format!("{n:?} is not a name: use 1 to 64 characters of A-Z a-z 0-9 . _ - (it labels metrics)")
            })
        });
        let issuer = s.str("issuer", "").check(|i| {
            if i.is_empty() {
                Err("is required: the `iss` its tokens carry".into())
            } else if *i == tokens.issuer {
                Err(format!(
                    "{i:?} is tokens.issuer, gatehouse's own: its tokens are verified with [tokens] keys"
                ))
            } else {
                Ok(())
            }
        });
        let jwks_url = s.optional::<String>("jwks_url").check(|url| {
            url.as_deref().map_or(Ok(()), fetchable_url)
        });
        let discovery = s.get("discovery", false).get();
        let keys = match (jwks_url, discovery) {
            (Some(_), true) => {
                s.err("discovery", "and jwks_url are exclusive: set one");
                None
            }
            (Some(url), false) => Some(IssuerKeys::Url(url)),
            (None, true) => {
                if let Err(e) = fetchable_url(&issuer) {
                    s.err("issuer", format!("with discovery = true, {e}"));
                }
                Some(IssuerKeys::Discovery)
            }
            (None, false) => {
                s.err("", "needs jwks_url, or discovery = true to read it from the issuer");
                None
            }
        };
        let audiences = s.list("audiences", &[]).check(|list| {
            if list.is_empty() {
                Err("must list at least one audience: a token's aud must name this API".into())
            } else if list.iter().any(String::is_empty) {
                Err("must not contain an empty audience".into())
            } else {
                Ok(())
            }
        });
        let algorithms = s
            .list("algorithms", DEFAULT_ISSUER_ALGORITHMS)
            .then(
                |list| {
                    if list.is_empty() {
                        Err("must list at least one of EdDSA, ES256, RS256".to_string())
                    } else {
                        Ok(list)
                    }
                },
                Vec::new(),
            )
            .parse_each(|a| match Algorithm::from_name(a) {
                Some(alg) if alg.is_asymmetric() => Ok(alg),
                Some(_) => Err(format!(
                    "{a} is symmetric: its key would be a secret shared with the issuer; \
                     use EdDSA, ES256 or RS256"
                )),
                None => Err(format!("{a:?} is not supported: EdDSA, ES256 or RS256")),
            });
        let roles_claim = s.str("roles_claim", DEFAULT_ROLES_CLAIM).check(|c| claim_path(c));
        let email_claim = s.str("email_claim", DEFAULT_EMAIL_CLAIM).check(|c| claim_path(c));
        Some(IssuerConfig {
            name,
            issuer,
            keys: keys?,
            audiences,
            algorithms,
            roles_claim,
            email_claim,
        })
    });
    let mut issuers: Vec<(usize, IssuerConfig)> = Vec::with_capacity(entries.len());
    for (i, entry) in entries.into_iter().enumerate() {
        let Some(entry) = entry else { continue };
        if let Some((j, _)) = issuers.iter().find(|(_, o)| o.name == entry.name) {
            root.err_at(
                format!("issuers[{i}].name"),
                format!(
                    "{:?} is already the name of issuers[{j}]; names must be unique",
                    entry.name
                ),
            );
        }
        if let Some((j, _)) = issuers.iter().find(|(_, o)| o.issuer == entry.issuer) {
            root.err_at(
                format!("issuers[{i}].issuer"),
                format!(
                    "{:?} is already the issuer of issuers[{j}]; issuers must be unique",
                    entry.issuer
                ),
            );
        }
        issuers.push((i, entry));
    }
    issuers.into_iter().map(|(_, entry)| entry).collect()
}

/// A URL keys may be fetched from: `https://`, or `http://` to a loopback address only (a
/// local test provider, or a sidecar of its own): keys fetched in clear over a network
/// could be anyone's.
pub fn fetchable_url(value: &str) -> Result<(), String> {
    let url = url::Url::parse(value).map_err(|e| format!("{value:?} is not a URL ({e})"))?;
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    match url.scheme() {
        "https" if url.host().is_some() => Ok(()),
        "http" if loopback => Ok(()),
        "http" => Err(format!(
            "{value:?} must be https:// (http:// only to a loopback address): keys fetched in clear could be anyone's"
        )),
        _ => Err(format!("{value:?} must be an https:// URL")),
    }
}

/// A claim name, or a dotted path of them: no empty part.
fn claim_path(value: &str) -> Result<(), String> {
    if value.is_empty() || value.starts_with('.') || value.ends_with('.') || value.contains("..") {
        Err(format!(
            "{value:?} is not a claim: a name, or a dotted path like realm_access.roles"
        ))
    } else {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// [policy], with [[routes]] and [roles]
// ---------------------------------------------------------------------------------------

/// Default deny: a path nobody wrote a rule for is not reachable.
const DEFAULT_POLICY: &str = "deny";
/// Case-insensitive upstreams are common and the stricter of two verdicts is never laxer,
/// so folding is on unless the operator knows better.
const DEFAULT_CASE_SENSITIVE: bool = false;

fn policy(
    s: &mut Section<'_>,
    routes: &[Route],
    roles: &[RoleSpec],
    auth: &AuthConfig,
) -> Option<Policy> {
    let default = s
        .str("default", DEFAULT_POLICY)
        .warn(|d| {
            (d == "public").then(|| {
                "is public: every path no rule names is forwarded without a token, including \
                 paths the upstream adds later; name public paths in [[routes]] and keep \
                 the default deny"
                    .to_string()
            })
        })
        .get();
    let case_sensitive = s.get("case_sensitive", DEFAULT_CASE_SENSITIVE).get();
    let mut known_roles = auth.default_roles.clone();
    known_roles.extend(auth.selectable_roles.iter().cloned());
    known_roles.push(auth.admin_role.clone());
    let spec = PolicySpec {
        routes: routes.iter().map(|r| r.spec.clone()).collect(),
        default,
        roles: roles.to_vec(),
        known_roles,
        case_sensitive,
    };
    let policy = Policy::compile(&spec)
        .map_err(|errors| {
            for e in errors {
                s.err_at(e.key, e.message);
            }
        })
        .ok();
    if let Some(policy) = &policy {
        no_sign_up_role_is_admin(s, policy, auth);
    }
    sign_up_roles_are_defined(s, roles, auth);
    for (i, route) in routes.iter().enumerate() {
        let path = &route.spec.path;
        if path.starts_with(&format!("{}/", auth.prefix)) || *path == auth.prefix {
            s.err_at(
                format!("routes[{i}].path"),
                format!(
                    "{} is served by gatehouse itself (auth.prefix); routes apply to proxied paths",
                    auth.prefix
                ),
            );
        }
    }
    policy
}

/// The roles a user gets at sign-up, each with its key.
fn sign_up_roles(auth: &AuthConfig) -> [(&'static str, &[String]); 2] {
    [
        ("auth.default_roles", &auth.default_roles),
        ("auth.selectable_roles", &auth.selectable_roles),
    ]
}

/// No role a user gets at sign-up may reach the admin role, directly or through
/// inheritance: that would make registration an admin grant.
fn no_sign_up_role_is_admin(s: &mut Section<'_>, policy: &Policy, auth: &AuthConfig) {
    let admin = policy.requirement([auth.admin_role.as_str()]);
    for (key, list) in sign_up_roles(auth) {
        for role in list {
            let held = policy.roles_mask([role.as_str()]);
            if matches!(Access::Roles(admin).allows(Some(held)), Verdict::Allow) {
                s.err_at(
                    key,
                    format!("{role:?} is or inherits the admin role: anyone who registers would be an admin"),
                );
            }
        }
    }
}

/// Roles handed out at registration must exist in the role model when one is given.
fn sign_up_roles_are_defined(s: &mut Section<'_>, roles: &[RoleSpec], auth: &AuthConfig) {
    if roles.is_empty() {
        return;
    }
    let defined = |role: &String| {
        roles
            .iter()
            .any(|r| r.name == *role || r.inherits.contains(role))
    };
    for (key, list) in sign_up_roles(auth) {
        for role in list.iter().filter(|r| !defined(r)) {
            s.err_at(
                key,
                format!("unknown role {role:?} (not defined under [roles])"),
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// [log]
// ---------------------------------------------------------------------------------------

/// Readable on a terminal; production sets `json`.
const DEFAULT_LOG_FORMAT: &str = "pretty";
const DEFAULT_LOG_LEVEL: &str = "info";

fn log(s: &mut Section<'_>) -> LogConfig {
    LogConfig {
        format: s
            .str("format", DEFAULT_LOG_FORMAT)
            .parse(|f| match f.as_str() {
                "pretty" => Ok(LogFormat::Pretty),
                "json" => Ok(LogFormat::Json),
                other => Err(format!("{other:?} is not pretty or json")),
            })
            .unwrap_or(LogFormat::Pretty),
        level: s.str("level", DEFAULT_LOG_LEVEL).check(|level| {
            match tracing_subscriber::EnvFilter::try_new(level) {
                Ok(_) => Ok(()),
                Err(_) => Err(format!("{level:?} is not a log filter like \"info\"")),
            }
        }),
        access: s.get("access", false).get(),
    }
}
