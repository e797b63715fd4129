//! Configuration: one TOML file, overridable by `GATEHOUSE_<SECTION>_<KEY>` env variables.
//!
//! Loading has three stages, none with side effects:
//!
//! 1. the file is parsed into a [`toml::Value`] and env overrides are written into that tree
//!    (so a Kubernetes secret never has to sit in the file);
//! 2. the tree is deserialised into [`RawConfig`], whose structs all carry
//!    `deny_unknown_fields`, so a typo is an error rather than a silently ignored key;
//! 3. [`RawConfig::validate`] turns raw strings into parsed values (durations, CIDRs, URLs,
//!    rates, compiled policy) and collects *every* error with its TOML key, so an operator
//!    fixes a config in one round trip (`gatehouse check-config`).
//!
//! Every default is a named constant below with the reason for its value.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::policy::{Policy, PolicySpec, RoleSpec, RouteSpec};
use crate::ratelimit::{Rate, parse_rate};

/// Where the sidecar listens when nothing is said: all interfaces, the usual sidecar port.
const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
/// Long enough for most in-flight requests to finish, shorter than Kubernetes' default 30s
/// termination grace period so we exit before SIGKILL arrives.
const DEFAULT_SHUTDOWN_TIMEOUT: &str = "25s";
/// A client that has not sent its whole header block in 10s is a slowloris, not a browser.
const DEFAULT_HEADER_READ_TIMEOUT: &str = "10s";
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
/// How long the upstream has to send response headers.
const DEFAULT_UPSTREAM_TIMEOUT: &str = "30s";
/// Connect timeout: a local upstream that takes longer than this is down.
const DEFAULT_UPSTREAM_CONNECT_TIMEOUT: &str = "5s";
/// Pooled upstream connections are dropped after this idle time, below the 60s keep-alive
/// of most servers so we never reuse a connection the upstream is closing.
const DEFAULT_UPSTREAM_POOL_IDLE: &str = "50s";
/// Idle pooled connections kept to the upstream.
const DEFAULT_UPSTREAM_POOL_MAX_IDLE: usize = 512;
/// Short access tokens keep revocation cheap; refresh rotates them.
const DEFAULT_ACCESS_TTL: &str = "15m";
const DEFAULT_REFRESH_TTL: &str = "30d";
/// A session unused for a week must log in again.
const DEFAULT_REFRESH_IDLE_TTL: &str = "7d";
/// Clock skew tolerated on `exp`/`nbf`; small, because every second is extra token life.
const DEFAULT_LEEWAY: &str = "5s";
const DEFAULT_RESET_TOKEN_TTL: &str = "30m";
const DEFAULT_VERIFY_TOKEN_TTL: &str = "24h";
/// NIST SP 800-63B: at least 8 characters, allow at least 64; we allow 256 bytes and refuse
/// more before hashing so a megabyte password costs nothing.
const DEFAULT_PASSWORD_MIN: usize = 8;
const DEFAULT_PASSWORD_MAX: usize = 256;
/// The secret must carry at least 256 bits for HS256.
pub const MIN_SECRET_BYTES: usize = 32;
/// Keys tracked per rate-limit class; a fixed table, so memory does not grow with clients.
const DEFAULT_RATE_LIMIT_CAPACITY: usize = 65_536;
/// How often certificate files are checked for rotation.
const DEFAULT_TLS_RELOAD_INTERVAL: &str = "10s";
/// Minimum time between two password-reset mails to one address.
const DEFAULT_FORGOT_COOLDOWN: &str = "2m";

/// A configuration error with the TOML key it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// All errors found in one load, reported together.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

fn one(key: &str, message: impl Into<String>) -> ConfigErrors {
    ConfigErrors(vec![ConfigError {
        key: key.into(),
        message: message.into(),
    }])
}

// ---------------------------------------------------------------------------------------
// Raw config: exactly the TOML shape, every field defaulted.
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    pub server: RawServer,
    pub upstream: RawUpstream,
    pub store: RawStore,
    pub tokens: RawTokens,
    pub auth: RawAuth,
    pub roles: BTreeMap<String, RawRole>,
    pub rate_limits: RawRateLimits,
    pub email: RawEmail,
    pub headers: RawHeaders,
    pub policy: RawPolicy,
    pub routes: Vec<RawRoute>,
    pub log: RawLog,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawServer {
    pub listen: String,
    pub admin_listen: String,
    pub trusted_proxies: Vec<String>,
    pub workers: usize,
    pub public_url: String,
    pub shutdown_timeout: String,
    pub header_read_timeout: String,
    pub idle_timeout: String,
    pub max_connections: usize,
    pub max_header_bytes: usize,
    pub max_uri_bytes: usize,
    pub max_body_bytes: u64,
    pub auth_max_body_bytes: u64,
    pub http2_max_concurrent_streams: u32,
    pub tls: RawTls,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            listen: DEFAULT_LISTEN.into(),
            admin_listen: String::new(),
            trusted_proxies: Vec::new(),
            workers: 0,
            public_url: String::new(),
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT.into(),
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT.into(),
            idle_timeout: DEFAULT_IDLE_TIMEOUT.into(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_uri_bytes: DEFAULT_MAX_URI_BYTES,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            auth_max_body_bytes: DEFAULT_AUTH_MAX_BODY_BYTES,
            http2_max_concurrent_streams: DEFAULT_H2_MAX_STREAMS,
            tls: RawTls::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTls {
    pub cert: String,
    pub key: String,
    pub reload_interval: String,
}

impl Default for RawTls {
    fn default() -> Self {
        RawTls {
            cert: String::new(),
            key: String::new(),
            reload_interval: DEFAULT_TLS_RELOAD_INTERVAL.into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawUpstream {
    pub url: String,
    pub timeout: String,
    pub connect_timeout: String,
    pub pool_idle_timeout: String,
    pub pool_max_idle: usize,
    pub health_path: String,
    pub ca_file: String,
}

impl Default for RawUpstream {
    fn default() -> Self {
        RawUpstream {
            url: String::new(),
            timeout: DEFAULT_UPSTREAM_TIMEOUT.into(),
            connect_timeout: DEFAULT_UPSTREAM_CONNECT_TIMEOUT.into(),
            pool_idle_timeout: DEFAULT_UPSTREAM_POOL_IDLE.into(),
            pool_max_idle: DEFAULT_UPSTREAM_POOL_MAX_IDLE,
            health_path: String::new(),
            ca_file: String::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawStore {
    pub path: String,
}

impl Default for RawStore {
    fn default() -> Self {
        RawStore {
            path: "./gatehouse-data".into(),
        }
    }
}

#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTokens {
    pub secret: String,
    pub algorithm: String,
    pub issuer: String,
    pub audience: String,
    pub access_ttl: String,
    pub refresh_ttl: String,
    pub refresh_idle_ttl: String,
    pub leeway: String,
}

// The secret must never reach a log line, not even through `{:?}` of the whole config.
impl fmt::Debug for RawTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawTokens")
            .field("secret", &"<redacted>")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl Default for RawTokens {
    fn default() -> Self {
        RawTokens {
            secret: String::new(),
            algorithm: "HS256".into(),
            issuer: "gatehouse".into(),
            audience: "api".into(),
            access_ttl: DEFAULT_ACCESS_TTL.into(),
            refresh_ttl: DEFAULT_REFRESH_TTL.into(),
            refresh_idle_ttl: DEFAULT_REFRESH_IDLE_TTL.into(),
            leeway: DEFAULT_LEEWAY.into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAuth {
    pub prefix: String,
    pub registration: String,
    pub default_roles: Vec<String>,
    pub selectable_roles: Vec<String>,
    pub admin_role: String,
    pub expose_debug_tokens: bool,
    pub require_verified_email: bool,
    pub reset_token_ttl: String,
    pub verify_token_ttl: String,
    pub forgot_cooldown: String,
    pub password: RawPassword,
    pub lockout: RawLockout,
    /// Renamed endpoints: `login = "/signin"` serves login at `{prefix}/signin` (and no
    /// longer at `{prefix}/login`).
    pub paths: BTreeMap<String, String>,
}

/// Endpoint names that `[auth.paths]` may rename, with their default paths.
pub const AUTH_ENDPOINTS: &[(&str, &str)] = &[
    ("register", "/register"),
    ("login", "/login"),
    ("refresh", "/refresh"),
    ("logout", "/logout"),
    ("verify", "/verify"),
    ("me", "/me"),
    ("change_password", "/change-password"),
    ("forgot_password", "/forgot-password"),
    ("reset_password", "/reset-password"),
    ("reset_password_validate", "/reset-password/validate"),
    ("verify_email", "/verify-email"),
    ("verify_email_resend", "/verify-email/resend"),
    ("admin", "/admin"),
];

impl Default for RawAuth {
    fn default() -> Self {
        RawAuth {
            prefix: "/auth".into(),
            registration: "open".into(),
            default_roles: vec!["reader".into()],
            selectable_roles: Vec::new(),
            admin_role: "admin".into(),
            expose_debug_tokens: false,
            require_verified_email: false,
            reset_token_ttl: DEFAULT_RESET_TOKEN_TTL.into(),
            verify_token_ttl: DEFAULT_VERIFY_TOKEN_TTL.into(),
            forgot_cooldown: DEFAULT_FORGOT_COOLDOWN.into(),
            password: RawPassword::default(),
            lockout: RawLockout::default(),
            paths: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawPassword {
    pub min_length: usize,
    pub max_length: usize,
    /// 0 = the argon2 crate's OWASP defaults.
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
    /// Concurrent hashes; 0 = one per core.
    pub max_concurrent: usize,
}

impl Default for RawPassword {
    fn default() -> Self {
        RawPassword {
            min_length: DEFAULT_PASSWORD_MIN,
            max_length: DEFAULT_PASSWORD_MAX,
            memory_kib: 0,
            iterations: 0,
            parallelism: 0,
            max_concurrent: 0,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLockout {
    /// 0 turns lockout off.
    pub max_failures: u32,
    pub window: String,
    pub duration: String,
}

impl Default for RawLockout {
    fn default() -> Self {
        RawLockout {
            max_failures: 5,
            window: "15m".into(),
            duration: "15m".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RawRole {
    pub inherits: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRateLimits {
    pub login: String,
    pub register: String,
    pub refresh: String,
    pub forgot_password: String,
    pub proxy: String,
    pub capacity: usize,
}

impl Default for RawRateLimits {
    fn default() -> Self {
        RawRateLimits {
            login: "5/15m".into(),
            register: "3/1h".into(),
            refresh: "10/1m".into(),
            forgot_password: "3/1h".into(),
            proxy: "0".into(),
            capacity: DEFAULT_RATE_LIMIT_CAPACITY,
        }
    }
}

#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawEmail {
    pub mode: String,
    pub from: String,
    pub smtp_url: String,
    pub reset_url: String,
    pub verify_url: String,
}

// smtp_url may carry credentials.
impl fmt::Debug for RawEmail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawEmail")
            .field("mode", &self.mode)
            .field("from", &self.from)
            .finish_non_exhaustive()
    }
}

impl Default for RawEmail {
    fn default() -> Self {
        RawEmail {
            mode: "log".into(),
            from: "gatehouse@localhost".into(),
            smtp_url: String::new(),
            reset_url: String::new(),
            verify_url: String::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawHeaders {
    pub user_id: String,
    pub email: String,
    pub roles: String,
    pub session_id: String,
    pub strip_prefix: String,
    pub request_id: String,
    pub forward_authorization: bool,
}

impl Default for RawHeaders {
    fn default() -> Self {
        RawHeaders {
            user_id: "X-Auth-User-Id".into(),
            email: "X-Auth-Email".into(),
            roles: "X-Auth-Roles".into(),
            session_id: String::new(),
            strip_prefix: "X-Auth-".into(),
            request_id: "X-Request-Id".into(),
            forward_authorization: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawPolicy {
    pub default: String,
    pub case_sensitive: bool,
}

impl Default for RawPolicy {
    fn default() -> Self {
        RawPolicy {
            default: "deny".into(),
            // Case-insensitive upstreams are common and the stricter of two verdicts is
            // never laxer, so folding is on unless the operator knows better.
            case_sensitive: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RawRoute {
    pub path: String,
    pub methods: Vec<String>,
    pub access: Option<String>,
    pub roles: Vec<String>,
    pub rate_limit: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLog {
    pub format: String,
    pub level: String,
    pub access: bool,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            format: "pretty".into(),
            level: "info".into(),
            access: false,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Env overrides
// ---------------------------------------------------------------------------------------

/// The kind of value an env override carries, so `"30"` becomes an integer where the key
/// wants one. Lists are comma-separated.
#[derive(Clone, Copy)]
enum Kind {
    Str,
    Int,
    Bool,
    List,
}

/// Every key an env variable may override, as a dotted TOML path. A unit test checks this
/// against the serialised default config, so a new key cannot be forgotten here.
const OVERRIDABLE: &[(&str, Kind)] = &[
    ("server.listen", Kind::Str),
    ("server.admin_listen", Kind::Str),
    ("server.trusted_proxies", Kind::List),
    ("server.workers", Kind::Int),
    ("server.public_url", Kind::Str),
    ("server.shutdown_timeout", Kind::Str),
    ("server.header_read_timeout", Kind::Str),
    ("server.idle_timeout", Kind::Str),
    ("server.max_connections", Kind::Int),
    ("server.max_header_bytes", Kind::Int),
    ("server.max_uri_bytes", Kind::Int),
    ("server.max_body_bytes", Kind::Int),
    ("server.auth_max_body_bytes", Kind::Int),
    ("server.http2_max_concurrent_streams", Kind::Int),
    ("server.tls.cert", Kind::Str),
    ("server.tls.key", Kind::Str),
    ("server.tls.reload_interval", Kind::Str),
    ("upstream.url", Kind::Str),
    ("upstream.timeout", Kind::Str),
    ("upstream.connect_timeout", Kind::Str),
    ("upstream.pool_idle_timeout", Kind::Str),
    ("upstream.pool_max_idle", Kind::Int),
    ("upstream.health_path", Kind::Str),
    ("upstream.ca_file", Kind::Str),
    ("store.path", Kind::Str),
    ("tokens.secret", Kind::Str),
    ("tokens.algorithm", Kind::Str),
    ("tokens.issuer", Kind::Str),
    ("tokens.audience", Kind::Str),
    ("tokens.access_ttl", Kind::Str),
    ("tokens.refresh_ttl", Kind::Str),
    ("tokens.refresh_idle_ttl", Kind::Str),
    ("tokens.leeway", Kind::Str),
    ("auth.prefix", Kind::Str),
    ("auth.registration", Kind::Str),
    ("auth.default_roles", Kind::List),
    ("auth.selectable_roles", Kind::List),
    ("auth.admin_role", Kind::Str),
    ("auth.expose_debug_tokens", Kind::Bool),
    ("auth.require_verified_email", Kind::Bool),
    ("auth.reset_token_ttl", Kind::Str),
    ("auth.verify_token_ttl", Kind::Str),
    ("auth.forgot_cooldown", Kind::Str),
    ("auth.password.min_length", Kind::Int),
    ("auth.password.max_length", Kind::Int),
    ("auth.password.memory_kib", Kind::Int),
    ("auth.password.iterations", Kind::Int),
    ("auth.password.parallelism", Kind::Int),
    ("auth.password.max_concurrent", Kind::Int),
    ("auth.lockout.max_failures", Kind::Int),
    ("auth.lockout.window", Kind::Str),
    ("auth.lockout.duration", Kind::Str),
    ("rate_limits.login", Kind::Str),
    ("rate_limits.register", Kind::Str),
    ("rate_limits.refresh", Kind::Str),
    ("rate_limits.forgot_password", Kind::Str),
    ("rate_limits.proxy", Kind::Str),
    ("rate_limits.capacity", Kind::Int),
    ("email.mode", Kind::Str),
    ("email.from", Kind::Str),
    ("email.smtp_url", Kind::Str),
    ("email.reset_url", Kind::Str),
    ("email.verify_url", Kind::Str),
    ("headers.user_id", Kind::Str),
    ("headers.email", Kind::Str),
    ("headers.roles", Kind::Str),
    ("headers.session_id", Kind::Str),
    ("headers.strip_prefix", Kind::Str),
    ("headers.request_id", Kind::Str),
    ("headers.forward_authorization", Kind::Bool),
    ("policy.default", Kind::Str),
    ("policy.case_sensitive", Kind::Bool),
    ("log.format", Kind::Str),
    ("log.level", Kind::Str),
    ("log.access", Kind::Bool),
];

/// `GATEHOUSE_*` variables that are not config keys but are read elsewhere.
const NON_KEY_VARS: &[&str] = &["GATEHOUSE_CONFIG", "GATEHOUSE_LOG"];

fn env_name(path: &str) -> String {
    format!("GATEHOUSE_{}", path.replace('.', "_").to_ascii_uppercase())
}

/// Writes env overrides into the TOML tree. Unknown `GATEHOUSE_*` variables are errors for
/// the same reason unknown keys are: `GATEHOUSE_TOKEN_SECRET` (a typo) must not silently
/// leave the file's secret in force.
fn apply_env(
    tree: &mut toml::Table,
    vars: impl IntoIterator<Item = (String, String)>,
    errors: &mut Vec<ConfigError>,
) {
    for (name, value) in vars {
        if !name.starts_with("GATEHOUSE_") || NON_KEY_VARS.contains(&name.as_str()) {
            continue;
        }
        let Some((path, kind)) = OVERRIDABLE.iter().find(|(path, _)| env_name(path) == name) else {
            errors.push(ConfigError {
                key: name.clone(),
                message: "unknown environment override (no such config key)".into(),
            });
            continue;
        };
        let parsed = match kind {
            Kind::Str => Ok(toml::Value::String(value)),
            Kind::Int => value
                .trim()
                .parse::<i64>()
                .map(toml::Value::Integer)
                .map_err(|_| "expected an integer"),
            Kind::Bool => match value.trim() {
                "true" | "1" => Ok(toml::Value::Boolean(true)),
                "false" | "0" => Ok(toml::Value::Boolean(false)),
                _ => Err("expected true or false"),
            },
            Kind::List => Ok(toml::Value::Array(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| toml::Value::String(s.into()))
                    .collect(),
            )),
        };
        match parsed {
            Ok(v) => set_path(tree, path, v),
            Err(message) => errors.push(ConfigError {
                key: name,
                message: message.into(),
            }),
        }
    }
}

fn set_path(tree: &mut toml::Table, path: &str, value: toml::Value) {
    let mut parts = path.split('.').peekable();
    let mut table = tree;
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            table.insert(part.into(), value);
            return;
        }
        let entry = table
            .entry(part)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        match entry {
            toml::Value::Table(t) => table = t,
            _ => return,
        }
    }
}

impl RawConfig {
    /// Parses TOML text and applies the given env variables over it.
    pub fn parse(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<RawConfig, ConfigErrors> {
        let mut tree: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| one("(file)", e.message().to_string()))?;
        let mut errors = Vec::new();
        apply_env(&mut tree, env, &mut errors);
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        RawConfig::deserialize(toml::Value::Table(tree)).map_err(|e| one("(file)", e.to_string()))
    }

    /// Reads a file and the process environment.
    pub fn load(path: &Path) -> Result<RawConfig, ConfigErrors> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| one("(file)", format!("cannot read {}: {e}", path.display())))?;
        RawConfig::parse(&text, std::env::vars())
    }
}

// ---------------------------------------------------------------------------------------
// Validated config
// ---------------------------------------------------------------------------------------

/// Registration policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registration {
    Open,
    Closed,
}

/// Where mail goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmailMode {
    /// Mails are logged (without tokens unless `expose_debug_tokens`), never sent.
    Log,
    /// Mails are sent through SMTP.
    Smtp { url: String },
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// A parsed upstream URL: only `http` and `https` with a host; the path prefix is kept so an
/// upstream mounted under `/api` works.
#[derive(Debug, Clone)]
pub struct UpstreamUrl {
    pub scheme: http::uri::Scheme,
    pub authority: http::uri::Authority,
    /// Without trailing slash; empty for the root.
    pub base_path: String,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub admin_listen: Option<SocketAddr>,
    pub trusted_proxies: Vec<IpNet>,
    pub workers: usize,
    pub public_url: String,
    pub shutdown_timeout: Duration,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub max_header_bytes: usize,
    pub max_uri_bytes: usize,
    pub max_body_bytes: u64,
    pub auth_max_body_bytes: u64,
    pub http2_max_concurrent_streams: u32,
    pub tls: Option<TlsConfig>,
}

#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub reload_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub url: UpstreamUrl,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle: usize,
    pub health_path: Option<String>,
    pub ca_file: Option<PathBuf>,
}

#[derive(Clone)]
pub struct TokensConfig {
    pub secret: Vec<u8>,
    pub issuer: String,
    pub audience: String,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
    pub refresh_idle_ttl: Duration,
    pub leeway: Duration,
}

impl fmt::Debug for TokensConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokensConfig")
            .field("secret", &"<redacted>")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("access_ttl", &self.access_ttl)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
pub struct LockoutConfig {
    pub max_failures: u32,
    pub window: Duration,
    pub duration: Duration,
}

#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Normalised: starts with '/', no trailing slash.
    pub prefix: String,
    pub registration: Registration,
    pub default_roles: Vec<String>,
    pub selectable_roles: Vec<String>,
    pub admin_role: String,
    pub expose_debug_tokens: bool,
    pub require_verified_email: bool,
    pub reset_token_ttl: Duration,
    pub verify_token_ttl: Duration,
    pub forgot_cooldown: Duration,
    /// Zeros in the file are resolved to the argon2 crate's defaults here.
    pub password: crate::password::PasswordSettings,
    pub lockout: LockoutConfig,
    /// `(default path, configured path)` for renamed endpoints, both relative to `prefix`.
    pub renames: Vec<(&'static str, String)>,
}

impl AuthConfig {
    /// Maps a request path (relative to `prefix`) to the endpoint's default path, which the
    /// router matches on. `None` when the path is a default path whose endpoint was renamed:
    /// a rename moves the endpoint, it does not add an alias.
    pub fn canonical<'a>(&self, rest: &'a str) -> Option<std::borrow::Cow<'a, str>> {
        use std::borrow::Cow;
        for (default, renamed) in &self.renames {
            if let Some(tail) = rest.strip_prefix(renamed.as_str())
                && (tail.is_empty() || (*default == "/admin" && tail.starts_with('/')))
            {
                return Some(Cow::Owned(format!("{default}{tail}")));
            }
        }
        for (default, _) in &self.renames {
            if let Some(tail) = rest.strip_prefix(default)
                && (tail.is_empty() || (*default == "/admin" && tail.starts_with('/')))
            {
                return None;
            }
        }
        Some(Cow::Borrowed(rest))
    }

    /// The full path an endpoint is served at, for links and forms: `prefix` + its path.
    pub fn path_of(&self, default: &str) -> String {
        let path = self
            .renames
            .iter()
            .find(|(d, _)| *d == default)
            .map_or(default, |(_, r)| r.as_str());
        format!("{}{path}", self.prefix)
    }
}

#[derive(Debug, Clone)]
pub struct RateLimitConfig {
    pub login: Option<Rate>,
    pub register: Option<Rate>,
    pub refresh: Option<Rate>,
    pub forgot_password: Option<Rate>,
    pub proxy: Option<Rate>,
    /// Per-route limits, indexed like `routes`.
    pub routes: Vec<Option<Rate>>,
    pub capacity: usize,
}

#[derive(Clone)]
pub struct EmailConfig {
    pub mode: EmailMode,
    pub from: String,
    /// Contains `{token}`.
    pub reset_url: String,
    /// Contains `{token}`.
    pub verify_url: String,
}

impl fmt::Debug for EmailConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmailConfig")
            .field("from", &self.from)
            .field("reset_url", &self.reset_url)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
pub struct HeadersConfig {
    pub user_id: HeaderName,
    pub email: HeaderName,
    pub roles: HeaderName,
    pub session_id: Option<HeaderName>,
    /// Lower-case; inbound headers starting with it (or its `_` spelling) are removed.
    pub strip_prefix: String,
    pub request_id: HeaderName,
    pub forward_authorization: bool,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
    pub access: bool,
}

/// The validated configuration: everything parsed and compiled once at start.
#[derive(Debug)]
pub struct Config {
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    pub store_path: PathBuf,
    pub tokens: TokensConfig,
    pub auth: AuthConfig,
    pub rate_limits: RateLimitConfig,
    pub email: EmailConfig,
    pub headers: HeadersConfig,
    pub policy: Policy,
    pub log: LogConfig,
}

impl Config {
    /// Loads and validates a config file with the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        RawConfig::load(path)?.validate()
    }

    /// Parses and validates TOML text with the given environment (tests pass their own).
    pub fn from_toml(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigErrors> {
        RawConfig::parse(text, env)?.validate()
    }
}

/// Collects errors while validating; each check records its key.
struct Check {
    errors: Vec<ConfigError>,
}

impl Check {
    fn err(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError {
            key: key.into(),
            message: message.into(),
        });
    }

    fn duration(&mut self, key: &str, value: &str) -> Duration {
        match parse_duration(value) {
            Ok(d) => d,
            Err(e) => {
                self.err(key, e);
                Duration::ZERO
            }
        }
    }

    /// A duration that must be greater than zero.
    fn positive(&mut self, key: &str, value: &str) -> Duration {
        let d = self.duration(key, value);
        if d.is_zero() && parse_duration(value).is_ok() {
            self.err(key, "must be greater than zero");
        }
        d
    }

    fn rate(&mut self, key: &str, value: &str) -> Option<Rate> {
        match parse_rate(value) {
            Ok(r) => r,
            Err(e) => {
                self.err(key, e);
                None
            }
        }
    }

    fn header(&mut self, key: &str, value: &str) -> HeaderName {
        match HeaderName::from_bytes(value.as_bytes()) {
            Ok(h) => h,
            Err(_) => {
                self.err(key, format!("{value:?} is not a valid header name"));
                HeaderName::from_static("x-invalid")
            }
        }
    }
}

/// Parses `"900ms"`, `"15m"`, `"30d"`, `"1h 30m"`; `"0"` is zero.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let value = value.trim();
    if value == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(value).map_err(|e| {
        format!("{value:?} is not a duration like \"900ms\", \"15m\" or \"30d\" ({e})")
    })
}

fn parse_upstream_url(value: &str) -> Result<UpstreamUrl, String> {
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

fn check_url_template(c: &mut Check, key: &str, value: &str) {
    if !value.is_empty() {
        if !value.contains("{token}") {
            c.err(key, "must contain {token}");
        }
        if !(value.starts_with("https://") || value.starts_with("http://")) {
            c.err(key, "must be an absolute http(s) URL");
        }
    }
}

impl RawConfig {
    /// Validates everything and reports every error at once.
    pub fn validate(self) -> Result<Config, ConfigErrors> {
        let mut c = Check { errors: Vec::new() };
        let raw = self;

        // [server]
        let s = &raw.server;
        let listen = s.listen.parse().unwrap_or_else(|_| {
            c.err(
                "server.listen",
                format!("{:?} is not an address like 0.0.0.0:8080", s.listen),
            );
            SocketAddr::from(([0, 0, 0, 0], 8080))
        });
        let admin_listen = if s.admin_listen.is_empty() {
            None
        } else {
            match s.admin_listen.parse() {
                Ok(a) => Some(a),
                Err(_) => {
                    c.err(
                        "server.admin_listen",
                        format!("{:?} is not an address", s.admin_listen),
                    );
                    None
                }
            }
        };
        let mut trusted_proxies = Vec::new();
        for (i, cidr) in s.trusted_proxies.iter().enumerate() {
            // A bare address means a single host.
            let parsed = cidr
                .parse::<IpNet>()
                .or_else(|_| cidr.parse::<std::net::IpAddr>().map(IpNet::from));
            match parsed {
                Ok(net) => trusted_proxies.push(net.trunc()),
                Err(_) => c.err(
                    format!("server.trusted_proxies[{i}]"),
                    format!("{cidr:?} is not a CIDR like 10.0.0.0/8"),
                ),
            }
        }
        let public_url = s.public_url.trim_end_matches('/').to_string();
        let absolute = public_url.starts_with("https://") || public_url.starts_with("http://");
        if !public_url.is_empty() && !absolute {
            c.err("server.public_url", "must be an absolute http(s) URL");
        }
        let tls = match (s.tls.cert.is_empty(), s.tls.key.is_empty()) {
            (true, true) => None,
            (false, false) => Some(TlsConfig {
                cert: s.tls.cert.clone().into(),
                key: s.tls.key.clone().into(),
                reload_interval: c.positive("server.tls.reload_interval", &s.tls.reload_interval),
            }),
            _ => {
                c.err("server.tls", "cert and key must be given together");
                None
            }
        };
        if s.max_connections == 0 {
            c.err("server.max_connections", "must be at least 1");
        }
        if s.max_header_bytes < 1024 {
            c.err("server.max_header_bytes", "must be at least 1024");
        }
        if s.max_uri_bytes < 256 {
            c.err("server.max_uri_bytes", "must be at least 256");
        }
        if s.http2_max_concurrent_streams == 0 {
            c.err("server.http2_max_concurrent_streams", "must be at least 1");
        }
        let server = ServerConfig {
            listen,
            admin_listen,
            trusted_proxies,
            workers: s.workers,
            public_url,
            shutdown_timeout: c.duration("server.shutdown_timeout", &s.shutdown_timeout),
            header_read_timeout: c.positive("server.header_read_timeout", &s.header_read_timeout),
            idle_timeout: c.positive("server.idle_timeout", &s.idle_timeout),
            max_connections: s.max_connections,
            max_header_bytes: s.max_header_bytes,
            max_uri_bytes: s.max_uri_bytes,
            max_body_bytes: s.max_body_bytes,
            auth_max_body_bytes: s.auth_max_body_bytes,
            http2_max_concurrent_streams: s.http2_max_concurrent_streams,
            tls,
        };

        // [upstream]
        let u = &raw.upstream;
        let url = match parse_upstream_url(u.url.trim()) {
            Ok(url) => url,
            Err(e) => {
                c.err("upstream.url", e);
                UpstreamUrl {
                    scheme: http::uri::Scheme::HTTP,
                    authority: http::uri::Authority::from_static("invalid"),
                    base_path: String::new(),
                }
            }
        };
        if !u.health_path.is_empty() && !u.health_path.starts_with('/') {
            c.err("upstream.health_path", "must start with '/'");
        }
        let upstream = UpstreamConfig {
            url,
            timeout: c.positive("upstream.timeout", &u.timeout),
            connect_timeout: c.positive("upstream.connect_timeout", &u.connect_timeout),
            pool_idle_timeout: c.duration("upstream.pool_idle_timeout", &u.pool_idle_timeout),
            pool_max_idle: u.pool_max_idle,
            health_path: (!u.health_path.is_empty()).then(|| u.health_path.clone()),
            ca_file: (!u.ca_file.is_empty()).then(|| u.ca_file.clone().into()),
        };

        // [store]
        if raw.store.path.trim().is_empty() {
            c.err("store.path", "is required");
        }

        // [tokens]
        let t = &raw.tokens;
        if t.secret.is_empty() {
            c.err(
                "tokens.secret",
                "is required (set GATEHOUSE_TOKENS_SECRET; e.g. `openssl rand -base64 48`)",
            );
        } else if t.secret.len() < MIN_SECRET_BYTES {
            c.err(
                "tokens.secret",
                format!(
                    "is {} bytes; HS256 needs at least {MIN_SECRET_BYTES}",
                    t.secret.len()
                ),
            );
        }
        if t.algorithm != "HS256" {
            c.err(
                "tokens.algorithm",
                format!("{:?} is not supported (HS256)", t.algorithm),
            );
        }
        if t.issuer.is_empty() {
            c.err("tokens.issuer", "must not be empty");
        }
        if t.audience.is_empty() {
            c.err("tokens.audience", "must not be empty");
        }
        let tokens = TokensConfig {
            secret: t.secret.as_bytes().to_vec(),
            issuer: t.issuer.clone(),
            audience: t.audience.clone(),
            access_ttl: c.positive("tokens.access_ttl", &t.access_ttl),
            refresh_ttl: c.positive("tokens.refresh_ttl", &t.refresh_ttl),
            refresh_idle_ttl: c.positive("tokens.refresh_idle_ttl", &t.refresh_idle_ttl),
            leeway: c.duration("tokens.leeway", &t.leeway),
        };
        if tokens.leeway > Duration::from_secs(300) {
            c.err(
                "tokens.leeway",
                "must be at most 5m; every second is extra token life",
            );
        }

        // [auth]
        let a = &raw.auth;
        let prefix = a.prefix.trim_end_matches('/').to_string();
        if !prefix.starts_with('/')
            || prefix.contains(['*', '?', ';', '%'])
            || prefix.contains("//")
        {
            c.err(
                "auth.prefix",
                "must be a plain path starting with '/', like \"/auth\"",
            );
        }
        let registration = match a.registration.as_str() {
            "open" => Registration::Open,
            "closed" => Registration::Closed,
            other => {
                c.err(
                    "auth.registration",
                    format!("{other:?} is not open or closed"),
                );
                Registration::Closed
            }
        };
        if a.admin_role.is_empty() {
            c.err("auth.admin_role", "must not be empty");
        }
        if a.password.min_length < 1 {
            c.err("auth.password.min_length", "must be at least 1");
        }
        if a.password.max_length < a.password.min_length.max(64) {
            c.err(
                "auth.password.max_length",
                "must be at least 64 and at least min_length (NIST 800-63B)",
            );
        }
        let auth = AuthConfig {
            prefix,
            registration,
            default_roles: a.default_roles.clone(),
            selectable_roles: a.selectable_roles.clone(),
            admin_role: a.admin_role.clone(),
            expose_debug_tokens: a.expose_debug_tokens,
            require_verified_email: a.require_verified_email,
            reset_token_ttl: c.positive("auth.reset_token_ttl", &a.reset_token_ttl),
            verify_token_ttl: c.positive("auth.verify_token_ttl", &a.verify_token_ttl),
            forgot_cooldown: c.duration("auth.forgot_cooldown", &a.forgot_cooldown),
            renames: Vec::new(),
            password: {
                let d = crate::password::PasswordSettings::default();
                let or = |v: u32, default: u32| if v == 0 { default } else { v };
                crate::password::PasswordSettings {
                    min_length: a.password.min_length,
                    max_length: a.password.max_length,
                    memory_kib: or(a.password.memory_kib, d.memory_kib),
                    iterations: or(a.password.iterations, d.iterations),
                    parallelism: or(a.password.parallelism, d.parallelism),
                    max_concurrent: if a.password.max_concurrent == 0 {
                        d.max_concurrent
                    } else {
                        a.password.max_concurrent
                    },
                }
            },
            lockout: LockoutConfig {
                max_failures: a.lockout.max_failures,
                window: c.positive("auth.lockout.window", &a.lockout.window),
                duration: c.positive("auth.lockout.duration", &a.lockout.duration),
            },
        };
        let mut auth = auth;
        for (name, path) in &a.paths {
            let key = format!("auth.paths.{name}");
            let Some((_, default)) = AUTH_ENDPOINTS.iter().find(|(n, _)| n == name) else {
                let names: Vec<&str> = AUTH_ENDPOINTS.iter().map(|(n, _)| *n).collect();
                c.err(
                    key,
                    format!("unknown endpoint; one of {}", names.join(", ")),
                );
                continue;
            };
            let normal = crate::path::normalize(path).is_ok_and(|n| n == path.as_str());
            if !normal || path == "/" || path.ends_with('/') || path.contains('%') {
                c.err(key, "must be a plain normalised path like \"/signin\"");
            } else if auth.renames.iter().any(|(_, p)| p == path)
                || AUTH_ENDPOINTS
                    .iter()
                    .any(|(n, d)| d == path && !a.paths.contains_key(*n))
            {
                c.err(key, format!("{path} is already used by another endpoint"));
            } else {
                auth.renames.push((default, path.clone()));
            }
        }
        if auth.selectable_roles.contains(&auth.admin_role) {
            c.err(
                "auth.selectable_roles",
                "must not contain the admin role: anyone could register as admin",
            );
        }

        // [rate_limits] and per-route limits
        let r = &raw.rate_limits;
        let route_limits = raw
            .routes
            .iter()
            .enumerate()
            .map(|(i, route)| {
                route
                    .rate_limit
                    .as_deref()
                    .and_then(|v| c.rate(&format!("routes[{i}].rate_limit"), v))
            })
            .collect();
        if r.capacity < 64 {
            c.err("rate_limits.capacity", "must be at least 64");
        }
        let rate_limits = RateLimitConfig {
            login: c.rate("rate_limits.login", &r.login),
            register: c.rate("rate_limits.register", &r.register),
            refresh: c.rate("rate_limits.refresh", &r.refresh),
            forgot_password: c.rate("rate_limits.forgot_password", &r.forgot_password),
            proxy: c.rate("rate_limits.proxy", &r.proxy),
            routes: route_limits,
            capacity: r.capacity,
        };

        // [email]
        let e = &raw.email;
        let mode = match e.mode.as_str() {
            "log" => EmailMode::Log,
            "smtp" => {
                let url = e.smtp_url.trim();
                if !(url.starts_with("smtp://") || url.starts_with("smtps://")) {
                    c.err(
                        "email.smtp_url",
                        "must start with smtp:// or smtps:// when mode = \"smtp\"",
                    );
                }
                EmailMode::Smtp { url: url.into() }
            }
            other => {
                c.err("email.mode", format!("{other:?} is not log or smtp"));
                EmailMode::Log
            }
        };
        if !e.from.contains('@') {
            c.err("email.from", "must be an email address");
        }
        check_url_template(&mut c, "email.reset_url", &e.reset_url);
        check_url_template(&mut c, "email.verify_url", &e.verify_url);
        // Links default to gatehouse's own pages under public_url; never to the request's Host.
        let base = if server.public_url.is_empty() {
            format!("http://{}", server.listen)
        } else {
            server.public_url.clone()
        };
        if matches!(mode, EmailMode::Smtp { .. })
            && server.public_url.is_empty()
            && (e.reset_url.is_empty() || e.verify_url.is_empty())
        {
            c.err(
                "server.public_url",
                "is required when email.mode = \"smtp\" and reset_url/verify_url are not set: links in mails need it",
            );
        }
        let email = EmailConfig {
            mode,
            from: e.from.clone(),
            reset_url: if e.reset_url.is_empty() {
                format!("{base}{}?token={{token}}", auth.path_of("/reset-password"))
            } else {
                e.reset_url.clone()
            },
            verify_url: if e.verify_url.is_empty() {
                format!("{base}{}?token={{token}}", auth.path_of("/verify-email"))
            } else {
                e.verify_url.clone()
            },
        };

        // [headers]
        let h = &raw.headers;
        let headers = HeadersConfig {
            user_id: c.header("headers.user_id", &h.user_id),
            email: c.header("headers.email", &h.email),
            roles: c.header("headers.roles", &h.roles),
            session_id: (!h.session_id.is_empty())
                .then(|| c.header("headers.session_id", &h.session_id)),
            strip_prefix: h.strip_prefix.to_ascii_lowercase(),
            request_id: c.header("headers.request_id", &h.request_id),
            forward_authorization: h.forward_authorization,
        };
        if !h.strip_prefix.is_empty() && HeaderName::from_bytes(h.strip_prefix.as_bytes()).is_err()
        {
            c.err("headers.strip_prefix", "is not a valid header name prefix");
        }

        // [policy], [[routes]], [roles]
        let mut known_roles = auth.default_roles.clone();
        known_roles.extend(auth.selectable_roles.iter().cloned());
        known_roles.push(auth.admin_role.clone());
        let spec = PolicySpec {
            routes: raw
                .routes
                .iter()
                .map(|r| RouteSpec {
                    path: r.path.clone(),
                    methods: r.methods.clone(),
                    access: r.access.clone(),
                    roles: r.roles.clone(),
                })
                .collect(),
            default: raw.policy.default.clone(),
            roles: raw
                .roles
                .iter()
                .map(|(name, role)| RoleSpec {
                    name: name.clone(),
                    inherits: role.inherits.clone(),
                })
                .collect(),
            known_roles,
            case_sensitive: raw.policy.case_sensitive,
        };
        let policy = match Policy::compile(&spec) {
            Ok(p) => Some(p),
            Err(errors) => {
                for e in errors {
                    c.err(e.key, e.message);
                }
                None
            }
        };
        // No role a user gets at sign-up may reach the admin role, directly or through
        // inheritance: that would make registration an admin grant.
        if let Some(policy) = &policy {
            let admin = policy.requirement([auth.admin_role.as_str()]);
            for (key, list) in [
                ("auth.default_roles", &auth.default_roles),
                ("auth.selectable_roles", &auth.selectable_roles),
            ] {
                for role in list {
                    let held = policy.roles_mask([role.as_str()]);
                    if matches!(
                        crate::policy::Access::Roles(admin).allows(Some(held)),
                        crate::policy::Verdict::Allow
                    ) {
                        c.err(
                            key,
                            format!("{role:?} is or inherits the admin role: anyone who registers would be an admin"),
                        );
                    }
                }
            }
        }
        // Roles handed out at registration must exist in the role model when one is given.
        if !raw.roles.is_empty() {
            let defined = |role: &String| {
                raw.roles.contains_key(role)
                    || raw.roles.values().any(|r| r.inherits.contains(role))
            };
            for (key, list) in [
                ("auth.default_roles", &auth.default_roles),
                ("auth.selectable_roles", &auth.selectable_roles),
            ] {
                for role in list.iter().filter(|r| !defined(r)) {
                    c.err(
                        key,
                        format!("unknown role {role:?} (not defined under [roles])"),
                    );
                }
            }
        }
        for (i, route) in raw.routes.iter().enumerate() {
            if route.path.starts_with(&format!("{}/", auth.prefix)) || route.path == auth.prefix {
                c.err(
                    format!("routes[{i}].path"),
                    format!("{} is served by gatehouse itself (auth.prefix); routes apply to proxied paths", auth.prefix),
                );
            }
        }

        // [log]
        let format = match raw.log.format.as_str() {
            "pretty" => LogFormat::Pretty,
            "json" => LogFormat::Json,
            other => {
                c.err("log.format", format!("{other:?} is not pretty or json"));
                LogFormat::Pretty
            }
        };
        if tracing_subscriber::EnvFilter::try_new(&raw.log.level).is_err() {
            c.err(
                "log.level",
                format!("{:?} is not a log filter like \"info\"", raw.log.level),
            );
        }

        match (policy, c.errors.is_empty()) {
            (Some(policy), true) => Ok(Config {
                server,
                upstream,
                store_path: raw.store.path.clone().into(),
                tokens,
                auth,
                rate_limits,
                email,
                headers,
                policy,
                log: LogConfig {
                    format,
                    level: raw.log.level.clone(),
                    access: raw.log.access,
                },
            }),
            _ => Err(ConfigErrors(c.errors)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn minimal() -> String {
        format!("[upstream]\nurl = \"http://127.0.0.1:3000\"\n[tokens]\nsecret = \"{SECRET}\"\n")
    }

    fn no_env() -> Vec<(String, String)> {
        Vec::new()
    }

    fn errors_of(text: &str, env: Vec<(String, String)>) -> Vec<String> {
        match Config::from_toml(text, env) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn minimal_config_is_valid_and_defaults_are_safe() {
        let config = Config::from_toml(&minimal(), no_env()).unwrap();
        assert_eq!(config.upstream.url.authority.as_str(), "127.0.0.1:3000");
        assert_eq!(config.tokens.access_ttl, Duration::from_secs(900));
        assert_eq!(config.auth.prefix, "/auth");
        assert!(!config.headers.forward_authorization);
        assert!(config.rate_limits.proxy.is_none());
        assert!(config.rate_limits.login.is_some());
    }

    #[test]
    fn every_bad_key_is_reported_at_once() {
        let text = r#"
            [server]
            listen = "nowhere"
            trusted_proxies = ["10.0.0.0/33"]
            [upstream]
            url = "127.0.0.1:3000"
            timeout = "soon"
            [tokens]
            secret = "short"
            [auth]
            registration = "maybe"
            [rate_limits]
            login = "5 per minute"
            [[routes]]
            path = "/a/**"
            roles = ["ghost"]
        "#;
        let errors = errors_of(text, no_env());
        for key in [
            "server.listen",
            "server.trusted_proxies[0]",
            "upstream.url",
            "upstream.timeout",
            "tokens.secret",
            "auth.registration",
            "rate_limits.login",
            "routes[0]",
        ] {
            assert!(
                errors.iter().any(|e| e.starts_with(key)),
                "no error for {key} in {errors:#?}"
            );
        }
    }

    #[test]
    fn unknown_keys_are_errors() {
        let text = format!("{}\n[server]\nlisten_addr = \"0.0.0.0:1\"\n", minimal());
        let errors = errors_of(&text, no_env());
        assert!(
            errors.iter().any(|e| e.contains("listen_addr")),
            "{errors:?}"
        );
    }

    #[test]
    fn env_overrides_scalars_and_lists() {
        let env = vec![
            ("GATEHOUSE_TOKENS_SECRET".into(), "z".repeat(40)),
            (
                "GATEHOUSE_UPSTREAM_URL".into(),
                "http://10.1.1.1:9000/api/".into(),
            ),
            ("GATEHOUSE_SERVER_WORKERS".into(), "3".into()),
            (
                "GATEHOUSE_SERVER_TRUSTED_PROXIES".into(),
                "10.0.0.0/8, 192.168.1.1".into(),
            ),
            ("GATEHOUSE_AUTH_LOCKOUT_MAX_FAILURES".into(), "9".into()),
            (
                "GATEHOUSE_HEADERS_FORWARD_AUTHORIZATION".into(),
                "true".into(),
            ),
            ("PATH".into(), "/usr/bin".into()),
        ];
        let config = Config::from_toml(&minimal(), env).unwrap();
        assert_eq!(config.tokens.secret, "z".repeat(40).into_bytes());
        assert_eq!(config.upstream.url.authority.as_str(), "10.1.1.1:9000");
        assert_eq!(config.upstream.url.base_path, "/api");
        assert_eq!(config.server.workers, 3);
        assert_eq!(config.server.trusted_proxies.len(), 2);
        assert_eq!(config.auth.lockout.max_failures, 9);
        assert!(config.headers.forward_authorization);
    }

    #[test]
    fn unknown_or_mistyped_env_overrides_are_errors() {
        let env = vec![
            ("GATEHOUSE_TOKEN_SECRET".into(), "x".into()),
            ("GATEHOUSE_SERVER_WORKERS".into(), "many".into()),
        ];
        let errors = errors_of(&minimal(), env);
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("GATEHOUSE_TOKEN_SECRET")),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("GATEHOUSE_SERVER_WORKERS")),
            "{errors:?}"
        );
    }

    /// Every scalar or list in the default config must be reachable from the env.
    #[test]
    fn every_key_has_an_env_override() {
        fn walk(prefix: &str, table: &toml::Table, out: &mut Vec<String>) {
            for (k, v) in table {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                match v {
                    toml::Value::Table(t) => walk(&path, t, out),
                    _ => out.push(path),
                }
            }
        }
        let tree = toml::Table::try_from(RawConfig::default()).unwrap();
        let mut paths = Vec::new();
        walk("", &tree, &mut paths);
        for path in paths
            .iter()
            .filter(|p| !p.starts_with("routes") && !p.starts_with("roles"))
        {
            assert!(
                OVERRIDABLE.iter().any(|(p, _)| p == path),
                "{path} has no env override"
            );
        }
        assert!(paths.len() > 50);
    }

    /// The documented example is valid and documents every key.
    #[test]
    fn example_config_is_valid_and_complete() {
        let text = include_str!("../config.toml.example");
        let env = vec![("GATEHOUSE_TOKENS_SECRET".to_string(), SECRET.to_string())];
        Config::from_toml(text, env).unwrap();
        fn walk(prefix: &str, table: &toml::Table, out: &mut Vec<String>) {
            for (k, v) in table {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                match v {
                    toml::Value::Table(t) => walk(&path, t, out),
                    _ => out.push(path),
                }
            }
        }
        let mut documented = Vec::new();
        walk("", &text.parse::<toml::Table>().unwrap(), &mut documented);
        for (path, _) in OVERRIDABLE {
            assert!(
                documented.iter().any(|d| d == path),
                "{path} is not in config.toml.example"
            );
        }
    }

    #[test]
    fn auth_endpoints_can_be_renamed() {
        let text = format!(
            "{}\n[auth.paths]\nlogin = \"/signin\"\nadmin = \"/manage\"\n",
            minimal()
        );
        let config = Config::from_toml(&text, no_env()).unwrap();
        let auth = &config.auth;
        assert_eq!(auth.canonical("/signin").as_deref(), Some("/login"));
        assert_eq!(auth.canonical("/login"), None);
        assert_eq!(
            auth.canonical("/manage/users/7").as_deref(),
            Some("/admin/users/7")
        );
        assert_eq!(auth.canonical("/admin/users"), None);
        assert_eq!(auth.canonical("/register").as_deref(), Some("/register"));
        assert_eq!(auth.path_of("/login"), "/auth/signin");
        for bad in [
            "nope = \"/x\"",
            "login = \"signin\"",
            "login = \"/register\"",
            "login = \"/a/../b\"",
        ] {
            let text = format!("{}\n[auth.paths]\n{bad}\n", minimal());
            assert!(!errors_of(&text, no_env()).is_empty(), "{bad} accepted");
        }
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("900ms").unwrap(), Duration::from_millis(900));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(
            parse_duration("30d").unwrap(),
            Duration::from_secs(30 * 86400)
        );
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn upstream_url_rules() {
        assert!(parse_upstream_url("http://a:1").is_ok());
        assert!(parse_upstream_url("https://a").is_ok());
        assert!(parse_upstream_url("a:1").is_err());
        assert!(parse_upstream_url("ftp://a").is_err());
        assert!(parse_upstream_url("http://u:p@a").is_err());
        assert!(parse_upstream_url("").is_err());
    }

    #[test]
    fn sign_up_roles_cannot_inherit_admin() {
        let text = format!(
            "{}\n[auth]\nselectable_roles = [\"owner\"]\n[roles]\nowner = {{ inherits = [\"admin\"] }}\n",
            minimal()
        );
        let errors = errors_of(&text, no_env());
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("auth.selectable_roles")),
            "{errors:?}"
        );
        let env = vec![(
            "GATEHOUSE_AUTH_DEFAULT_ROLES".to_string(),
            "admin".to_string(),
        )];
        let errors = errors_of(&minimal(), env);
        assert!(
            errors.iter().any(|e| e.starts_with("auth.default_roles")),
            "{errors:?}"
        );
    }

    #[test]
    fn admin_role_cannot_be_self_selected() {
        let text = format!("{}\n[auth]\nselectable_roles = [\"admin\"]\n", minimal());
        let errors = errors_of(&text, no_env());
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("auth.selectable_roles")),
            "{errors:?}"
        );
    }

    #[test]
    fn secrets_do_not_leak_through_debug() {
        let config = Config::from_toml(&minimal(), no_env()).unwrap();
        assert!(!format!("{config:?}").contains(SECRET));
    }
}
