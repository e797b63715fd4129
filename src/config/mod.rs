//! Configuration: one TOML file, overridable by `GATEHOUSE_<SECTION>_<KEY>` env variables.
//!
//! Loading has no side effects and reports *every* problem at once, each with its TOML key,
//! so an operator fixes a config in one round trip (`gatehouse check-config`):
//!
//! 1. the text is parsed into a [`toml::Table`] (a syntax error stops here, with its line
//!    and column: nothing after it can be trusted);
//! 2. one function per section ([`sections`]) reads its keys through a
//!    [`Section`](read::Section) reader. Each key is declared once, where it is read: its
//!    name, its default (a named constant with the reason for its value), and its checks.
//!    The reader takes the value from the key's env variable, else the file, else the
//!    default, and turns raw strings into parsed values (durations, CIDRs, URLs, rates,
//!    header names; the policy is compiled once);
//! 3. whatever nobody asked for is an error: unknown keys and sections with their dotted
//!    path and a did-you-mean (`server.admin_listn`, `routes[2].acess`), and unknown
//!    `GATEHOUSE_*` variables the same way.
//!
//! The reader records every env-overridable key ([`keys`]), so the env table and the test
//! that `config.toml.example` documents every key derive from the same declarations.
//! Secrets are [`Secret`]s, which redact themselves, so every config type derives `Debug`.
//!
//! Layout: this file holds the validated types and the entry points; [`sections`] the
//! per-section functions and their defaults; [`read`] the reader; [`secret`] the
//! [`Secret`] type.

mod read;
mod secret;
mod sections;
#[cfg(test)]
mod tests;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;
use ipnet::IpNet;

use crate::policy::Policy;
use crate::ratelimit::Rate;

pub use read::{KeyDoc, Kind, env_name};
pub use secret::Secret;
#[cfg(test)]
use sections::parse_upstream_url;
pub use sections::{MIN_SECRET_BYTES, fetchable_url};

/// A configuration error with the TOML key it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted TOML path (`server.listen`, `routes[2].access`); for an unknown variable, its
    /// name; for a syntax error, `line L, column C`.
    pub key: String,
    /// The env variable the bad value came from, if it did not come from the file.
    pub env: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.env {
            // The variable first: that is what the operator has to change.
            Some(env) => write!(f, "{env} ({}): {}", self.key, self.message),
            None => write!(f, "{}: {}", self.key, self.message),
        }
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
    ("login_mfa", "/login/mfa"),
    ("mfa_totp", "/mfa/totp"),
    ("mfa_totp_setup", "/mfa/totp/setup"),
    ("mfa_totp_confirm", "/mfa/totp/confirm"),
    ("admin", "/admin"),
    ("ws", "/ws"),
];

/// The forward-auth endpoint's path under `auth.prefix` (`forward.rs`). Not renamable: the
/// ingress configs name it; `[auth.paths]` may not take it.
pub const FORWARD_AUTH_PATH: &str = "/forward";

/// The origin of an http(s) URL as a browser's `Origin` header spells it (lower case, no
/// default port, no path); `None` for anything else.
pub fn web_origin(url: &str) -> Option<String> {
    let parsed = url::Url::parse(url).ok()?;
    let bare = parsed.path() == "/" && parsed.query().is_none() && parsed.fragment().is_none();
    (matches!(parsed.scheme(), "http" | "https") && bare && parsed.host().is_some())
        .then(|| parsed.origin().ascii_serialization())
}

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
    Smtp { url: Secret },
}

impl EmailMode {
    /// The SMTP URL, in `smtp` mode.
    pub fn smtp_url(&self) -> Option<&Secret> {
        match self {
            EmailMode::Smtp { url } => Some(url),
            EmailMode::Log => None,
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// A parsed upstream URL: only `http` and `https` with a host; the path prefix is kept so an
/// upstream mounted under `/api` works.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    pub scheme: http::uri::Scheme,
    pub authority: http::uri::Authority,
    /// Without trailing slash; empty for the root.
    pub base_path: String,
}

/// Blocking threads kept for store calls (sled) beside the hashing permits, by default. A
/// sled call is short (a lookup, or a write and its fsync), so a few threads keep them flowing
/// while every hashing permit is in use; more would only add threads (and glibc arenas) that
/// the disk cannot keep busy.
pub const STORE_THREADS: usize = 4;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub admin_listen: Option<SocketAddr>,
    pub trusted_proxies: Vec<IpNet>,
    pub workers: usize,
    /// Threads for blocking work (argon2id hashing, sled); 0 = [`Config::blocking_threads`]'s
    /// default.
    pub blocking_threads: usize,
    pub public_url: String,
    pub shutdown_timeout: Duration,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    /// The longest pause allowed inside a proxied request body.
    pub body_idle_timeout: Duration,
    pub max_connections: usize,
    pub max_header_bytes: usize,
    pub max_uri_bytes: usize,
    pub max_body_bytes: u64,
    pub auth_max_body_bytes: u64,
    pub http2_max_concurrent_streams: u32,
    /// Reload when the config file's content changes, as well as on SIGHUP.
    pub watch_config: bool,
    pub tls: Option<TlsConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
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

#[derive(Debug, Clone)]
pub struct TokensConfig {
    /// The HS256 key: the UTF-8 bytes of the string.
    pub secret: Secret,
    /// `tokens.algorithm`: what new tokens are signed with.
    pub algorithm: crate::token::Algorithm,
    /// The keys, loaded and checked: under HS256 the secret's (none when a `policy` command
    /// runs without one), otherwise `[[tokens.keys]]` in order. The first signs.
    pub keys: Vec<crate::token::SigningKey>,
    pub issuer: String,
    pub audience: String,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
    pub refresh_idle_ttl: Duration,
    pub leeway: Duration,
    /// Slots of the verified-token cache (0: off).
    pub verify_cache: usize,
}

impl TokensConfig {
    /// What `Tokens::new` takes: the first key signs, the others only verify. `None` when no
    /// key is loaded, which only a `policy` command's config allows.
    pub fn settings(&self) -> Option<crate::token::TokenSettings> {
        let (signing, others) = self.keys.split_first()?;
        Some(crate::token::TokenSettings {
            signing: signing.clone(),
            verify_only: others.iter().map(|k| k.verify_key().clone()).collect(),
            issuer: self.issuer.clone(),
            audience: self.audience.clone(),
            access_ttl_secs: self.access_ttl.as_secs(),
            leeway_secs: self.leeway.as_secs(),
        })
    }
}

/// One `[[issuers]]` entry: another issuer whose access tokens are verified with its
/// published keys (API.md §9). Two entries equal in every field build the same key set,
/// so a reload that leaves an issuer alone keeps its fetched keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerConfig {
    /// The label of its metrics and log lines; unique.
    pub name: String,
    /// Equal to its tokens' `iss`; unique, and not `tokens.issuer`.
    pub issuer: String,
    /// Where its keys are published.
    pub keys: IssuerKeys,
    /// A token's `aud` (one of them) must be one of these.
    pub audiences: Vec<String>,
    /// The algorithms its keys may have: EdDSA, ES256, RS256.
    pub algorithms: Vec<crate::token::Algorithm>,
    /// Where its tokens carry roles: a claim name, or a dotted path (`realm_access.roles`).
    pub roles_claim: String,
    /// Where its tokens carry the email, the same way.
    pub email_claim: String,
}

/// Where an issuer's JWK set is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IssuerKeys {
    /// `jwks_url`.
    Url(String),
    /// `discovery = true`: the `jwks_uri` of `{issuer}/.well-known/openid-configuration`.
    Discovery,
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
    pub mfa: MfaConfig,
    /// `(default path, configured path)` for renamed endpoints, both relative to `prefix`.
    pub renames: Vec<(&'static str, String)>,
    /// `[auth.ws]`: the WebSocket auth channel.
    pub ws: WsConfig,
}

/// `[auth.ws]`: the WebSocket auth channel at `{prefix}/ws`.
#[derive(Debug, Clone)]
pub struct WsConfig {
    /// Off: `{prefix}/ws` answers 404 like any unknown path.
    pub enabled: bool,
    /// Auth-channel connections open at once; each also holds a `server.max_connections`
    /// slot.
    pub max_connections: usize,
    /// The largest message (all its fragments together); a larger one closes with 1009.
    pub max_message_bytes: usize,
    /// A connection that sends nothing (not even a ping) for this long is closed with 1000.
    pub idle_timeout: Duration,
    /// Messages one connection may send: a burst of `count`, refilled over `per`; `None` is
    /// no limit.
    pub message_rate: Option<crate::ratelimit::Rate>,
    /// Browser origins (`https://app.example.com`, serialised as browsers send them) that may
    /// open the channel besides `server.public_url`'s; `*` is any. An upgrade without
    /// `Origin` (not a browser) is always let through.
    pub allowed_origins: Vec<String>,
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

/// `[auth.mfa]`: the TOTP second factor.
#[derive(Debug, Clone)]
pub struct MfaConfig {
    /// Seals TOTP secrets in the store (AES-256-GCM under a key derived from it); empty
    /// when not configured, which makes TOTP unavailable.
    pub encryption_key: Secret,
    /// The issuer label of `otpauth://` URLs (no `:`).
    pub issuer: String,
    /// How long an `mfa_token` stays valid.
    pub challenge_ttl: Duration,
}

/// Where the auth rate-limit classes (`login`, `register`, `refresh`, `forgot_password`)
/// and the forgot-password cooldown are counted (`rate_limits.backend`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateLimitBackend {
    /// In this process: each replica counts on its own.
    Local,
    /// In Redis, once across replicas; per replica while Redis does not answer. The URL may
    /// carry a password.
    Redis { url: Secret },
}

impl RateLimitBackend {
    /// The Redis URL, with the Redis backend.
    pub fn redis_url(&self) -> Option<&Secret> {
        match self {
            RateLimitBackend::Redis { url } => Some(url),
            RateLimitBackend::Local => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct RateLimitConfig {
    pub login: Option<Rate>,
    pub register: Option<Rate>,
    pub refresh: Option<Rate>,
    pub forgot_password: Option<Rate>,
    pub verify_email_resend: Option<Rate>,
    pub proxy: Option<Rate>,
    /// Per-route limits, indexed like `routes`.
    pub routes: Vec<Option<Rate>>,
    pub capacity: usize,
    /// The proxy class and per-route limits are always local, whatever this says.
    pub backend: RateLimitBackend,
    /// Prepended to every Redis key gatehouse writes.
    pub redis_prefix: String,
    /// The longest an auth request waits for Redis before counting locally.
    pub redis_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct EmailConfig {
    pub mode: EmailMode,
    pub from: String,
    /// Contains `{token}`.
    pub reset_url: String,
    /// Contains `{token}`.
    pub verify_url: String,
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
    /// `headers.assertion`: the header that carries the signed identity to the upstream
    /// (`token::assertion`); `None` (the default) sends none.
    pub assertion: Option<HeaderName>,
    /// The `aud` of assertions: `headers.assertion_audience`, or the upstream URL's origin.
    pub assertion_audience: String,
    /// Lifetime of an assertion, at most a minute.
    pub assertion_ttl: Duration,
    /// Slots of the cache of signed assertions (0: sign on every request).
    pub assertion_cache: usize,
}

impl HeadersConfig {
    /// What `token::assertion::Assertions` is built from: `None` with assertions off, or
    /// when no asymmetric key is loaded (which validation refuses with assertions on).
    pub fn assertion_settings(
        &self,
        tokens: &TokensConfig,
    ) -> Option<crate::token::assertion::AssertionSettings> {
        self.assertion.as_ref()?;
        let signing = tokens.keys.first()?;
        if !signing.algorithm().is_asymmetric() {
            return None;
        }
        Some(crate::token::assertion::AssertionSettings {
            signing: signing.clone(),
            issuer: tokens.issuer.clone(),
            audience: self.assertion_audience.clone(),
            ttl_secs: self.assertion_ttl.as_secs(),
            cache: self.assertion_cache,
        })
    }
}

/// `[forward_auth]`: `{prefix}/forward` decides requests an ingress describes (API.md §10).
#[derive(Debug, Clone)]
pub struct ForwardAuthConfig {
    pub enabled: bool,
    /// The peers whose description of a request is believed; any other peer gets 403.
    pub trusted_proxies: Vec<IpNet>,
    /// The hops the `X-Forwarded-For` walk believes for a forward-auth request: the
    /// ingresses above, then `server.trusted_proxies` (load balancers in front of the
    /// ingress), so the original client is found as the proxy path would find it.
    pub chain: Vec<IpNet>,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
    pub access: bool,
}

/// Which backend holds users, sessions and revocations (`store.backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreBackend {
    /// Embedded sled in `store.path`: one process at a time.
    Sled,
    /// PostgreSQL at `store.url`: any number of replicas.
    Postgres,
}

/// `[store]`. Every key is read whatever the backend; each backend uses its own.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub backend: StoreBackend,
    /// The sled directory.
    pub path: PathBuf,
    /// The `postgres://` URL, already checked by `store::postgres::check_url`; may carry a
    /// password, hence a [`Secret`]. Empty with the sled backend.
    pub url: Secret,
    /// Pooled connections per process (the LISTEN connection comes on top).
    pub pool_size: usize,
    pub connect_timeout: Duration,
    pub statement_timeout: Duration,
    /// The longest a request waits for a free pooled connection.
    pub acquire_timeout: Duration,
    /// How often the background task purges dead records (`Store::purge_expired`); the first
    /// purge runs one interval after start, never before `/readyz`.
    pub purge_interval: Duration,
}

/// The validated configuration: everything parsed and compiled once at start.
#[derive(Debug)]
pub struct Config {
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    pub store: StoreConfig,
    pub tokens: TokensConfig,
    pub auth: AuthConfig,
    pub rate_limits: RateLimitConfig,
    pub email: EmailConfig,
    pub headers: HeadersConfig,
    pub forward_auth: ForwardAuthConfig,
    /// `[[issuers]]`: other issuers whose access tokens the proxy path accepts (API.md §9).
    pub issuers: Vec<IssuerConfig>,
    pub policy: Policy,
    pub log: LogConfig,
}

/// What a config is loaded for, which decides what it must contain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Everything a running server needs.
    Serve,
    /// Deciding requests only (`policy explain`, `policy test`): `tokens.secret` may be
    /// missing, since nothing is signed and a token is verified only when one is given.
    Policy,
}

/// The outcome of one load: the config or every error, and the warnings either way.
#[derive(Debug)]
pub struct Loaded {
    pub config: Result<Config, ConfigErrors>,
    /// Valid but risky settings (debug tokens, a public default, a placeholder secret, a
    /// drain longer than Kubernetes' grace period, trusting every proxy), with their keys.
    pub warnings: Vec<ConfigError>,
}

impl Config {
    /// The blocking pool's size: `server.blocking_threads`, or by default the hashing permits
    /// plus [`STORE_THREADS`], so hashes in flight never hold every thread a store call needs.
    pub fn blocking_threads(&self) -> usize {
        match self.server.blocking_threads {
            0 => self.auth.password.max_concurrent + STORE_THREADS,
            n => n,
        }
    }

    /// Loads and validates a config file with the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        Config::load_for(path, Purpose::Serve).config
    }

    /// Loads a config file for `purpose`, keeping the warnings.
    pub fn load_for(path: &Path, purpose: Purpose) -> Loaded {
        match std::fs::read_to_string(path) {
            Ok(text) => Config::check(&text, std::env::vars(), purpose),
            Err(e) => Loaded {
                config: Err(ConfigErrors(vec![ConfigError {
                    key: "(file)".into(),
                    env: None,
                    message: format!("cannot read {}: {e}", path.display()),
                }])),
                warnings: Vec::new(),
            },
        }
    }

    /// Parses and validates TOML text with the given environment (tests pass their own).
    pub fn from_toml(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigErrors> {
        Config::check(text, env, Purpose::Serve).config
    }

    /// Parses and validates TOML text for `purpose`: the config or every error, and every
    /// warning either way.
    pub fn check(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
        purpose: Purpose,
    ) -> Loaded {
        let tree: toml::Table = match text.parse() {
            Ok(tree) => tree,
            Err(e) => {
                return Loaded {
                    config: Err(ConfigErrors(vec![read::syntax_error(text, &e)])),
                    warnings: Vec::new(),
                };
            }
        };
        let mut cx = read::Cx::new(env);
        cx.purpose = purpose;
        let config = sections::config(&mut read::Section::root(&mut cx, &tree));
        let warnings = std::mem::take(&mut cx.warnings);
        let errors = cx.finish();
        let config = match config {
            Some(config) if errors.is_empty() => Ok(config),
            _ => Err(ConfigErrors(errors)),
        };
        Loaded { config, warnings }
    }
}

/// Every env-overridable key with its variable, kind and default, in file order: what
/// `config.toml.example` must document and what `GATEHOUSE_*` may set.
pub fn keys() -> Vec<KeyDoc> {
    let empty = toml::Table::new();
    let mut cx = read::Cx::new(std::iter::empty());
    // Reading an empty file visits every key (sections read all their keys unconditionally);
    // its errors (no upstream, no secret) do not matter here.
    let _ = sections::config(&mut read::Section::root(&mut cx, &empty));
    cx.keys
}

/// The units of a duration, largest first, with their length in milliseconds. The same
/// units as a rate's period (`"5/15m"`), so the file has one way to write a length of time.
const DURATION_UNITS: [(&str, u64); 5] = [
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
];

/// Parses a duration: one or more `<whole number><unit>` parts with no spaces, units `d`,
/// `h`, `m`, `s`, `ms`, each at most once and largest first (`"900ms"`, `"15m"`,
/// `"1h30m"`, `"30d"`); `"0"` is zero. Nothing else: `"15 minutes"`, `"1.5h"` or `"15"`
/// are refused rather than guessed at, so a file reads the same to everyone.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let refuse = || {
        format!(
            "{value:?} is not a duration: write whole numbers with a unit (d, h, m, s or ms) \
             and no spaces, like \"900ms\", \"15m\", \"1h30m\" or \"30d\""
        )
    };
    if value == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = value;
    let mut total: u64 = 0;
    // The index in DURATION_UNITS a part's unit must come after.
    let mut next_unit = 0;
    if rest.is_empty() {
        return Err(refuse());
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let letters = rest[digits..]
            .bytes()
            .take_while(u8::is_ascii_alphabetic)
            .count();
        let (number, unit) = (&rest[..digits], &rest[digits..digits + letters]);
        let found = DURATION_UNITS[next_unit..]
            .iter()
            .position(|(name, _)| *name == unit);
        let (Some(offset), false) = (found, number.is_empty()) else {
            return Err(refuse());
        };
        let ms = DURATION_UNITS[next_unit + offset].1;
        total = number
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(ms))
            .and_then(|n| total.checked_add(n))
            .ok_or_else(|| format!("{value:?} is too long a duration"))?;
        next_unit += offset + 1;
        rest = &rest[digits + letters..];
    }
    Ok(Duration::from_millis(total))
}

/// Writes a duration the way the file does (`"1h30m"`, `"900ms"`, `"0"`), for messages.
pub fn format_duration(duration: Duration) -> String {
    let mut ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 {
        return "0".into();
    }
    let mut out = String::new();
    for (name, unit) in DURATION_UNITS {
        if ms >= unit {
            out.push_str(&format!("{}{name}", ms / unit));
            ms %= unit;
        }
    }
    out
}
