//! The shared state of a running gatehouse, read without locks by every request, in two
//! halves: [`Core`], built once at start and kept for the life of the process (store,
//! revocations, metrics, upstream pool, mailer), and [`Live`], the compiled state of one
//! validated [`Config`] (the config itself, token keys, limiters, route counters), which a
//! reload replaces whole. An [`App`] is one generation: a `Live` and the `Core` it runs on.
//! `reload::Current` holds the generation new requests get.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use http::HeaderValue;

use std::collections::HashMap;

pub use crate::clock::Clock;
use crate::config::Config;
use crate::email::Mailer;
use crate::error::Error;
use crate::issuers::Issuers;
use crate::metrics::{Metrics, RouteCounters};
use crate::password::Hasher;
use crate::ratelimit::{Rate, RateLimiter};
use crate::revocation::{Revocations, UserCutoff};
use crate::shared_limits::{SharedCooldowns, SharedLimits};
use crate::store::{Revocation, Store, StoreError};
use crate::tls::ServerTls;
use crate::token::Tokens;
use crate::token::assertion::Assertions;
use crate::upstream::Upstream;

/// Seconds added to an access token's lifetime and leeway before a revoked session may be
/// purged: replicas' clocks must agree to the second, this allows a little more.
const PURGE_MARGIN_SECS: u64 = 2;
/// Forgot-password lookups running in the background at once; beyond that, requests are
/// answered as usual and their work shed. Each holds a blocking-pool thread briefly.
pub const MAX_BACKGROUND_JOBS: usize = 64;

/// Request ids for requests that arrive without a usable one: a random per-process prefix
/// and a counter, unique without a syscall or an RNG call per request.
pub struct RequestIds {
    prefix: u64,
    counter: AtomicU64,
}

impl RequestIds {
    pub fn new() -> RequestIds {
        let mut seed = [0u8; 8];
        // A failed RNG only makes ids predictable across restarts, which is harmless for a
        // correlation id; it must not stop the server.
        let _ = getrandom::fill(&mut seed);
        RequestIds {
            prefix: u64::from_le_bytes(seed),
            counter: AtomicU64::new(0),
        }
    }

    pub fn next(&self) -> HeaderValue {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        // `{prefix:016x}{n:08x}`, written on the stack: 16 hex digits of the prefix, then the
        // counter in at least 8 (more once it passes 2^32, as `{:08x}` would print it).
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut buf = [0u8; 32];
        for (i, slot) in buf[..16].iter_mut().enumerate() {
            *slot = HEX[((self.prefix >> (60 - 4 * i)) & 0xf) as usize];
        }
        let digits = (16 - n.leading_zeros() as usize / 4).max(8);
        for (i, slot) in buf[16..16 + digits].iter_mut().enumerate() {
            *slot = HEX[((n >> (4 * (digits - 1 - i))) & 0xf) as usize];
        }
        // Hex digits are always a valid header value.
        HeaderValue::from_bytes(&buf[..16 + digits]).unwrap_or(HeaderValue::from_static("invalid"))
    }

    /// Accepts a client's id when it is short and made of safe characters, so ids from an
    /// edge proxy correlate across hops but cannot inject into logs.
    pub fn accept(value: &HeaderValue) -> bool {
        let bytes = value.as_bytes();
        !bytes.is_empty()
            && bytes.len() <= 128
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
    }
}

/// A request id held by value: the id an audit event names, carried in the accounts
/// service's `Caller`. Inline rather than a `String` or `HeaderValue` so `Caller` stays
/// `Copy` (it is copied into audit calls and moved into spawned mail jobs) and costs no
/// allocation; [`RequestIds`] mints ids of at most 32 bytes and accepts at most 128.
#[derive(Clone, Copy)]
pub struct RequestId {
    len: u8,
    bytes: [u8; RequestId::MAX],
}

impl RequestId {
    const MAX: usize = 128;

    /// No id: the offline CLI.
    pub const NONE: RequestId = RequestId {
        len: 0,
        bytes: [0; RequestId::MAX],
    };

    /// The id of a request, as the gate took or minted it. Ids are checked by
    /// [`RequestIds::accept`] or minted, so they are short and plain; anything else is cut
    /// to its first 128 bytes and to what is printable ASCII.
    pub fn new(value: &HeaderValue) -> RequestId {
        let mut id = RequestId::NONE;
        for (slot, &b) in id
            .bytes
            .iter_mut()
            .zip(value.as_bytes().iter().take_while(|b| b.is_ascii_graphic()))
        {
            *slot = b;
            id.len += 1;
        }
        id
    }

    pub fn as_str(&self) -> &str {
        // Only printable ASCII is ever stored.
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or_default()
    }
}

impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Default for RequestIds {
    fn default() -> Self {
        RequestIds::new()
    }
}

/// The per-replica limiters of the proxy path: the `proxy` class and each route's own. The
/// auth classes live in [`SharedLimits`], shared across replicas when Redis is configured.
pub struct Limits {
    /// `None` where the class is off.
    pub proxy: Option<Arc<RateLimiter>>,
    /// Indexed like the policy's routes of the same generation, `None` where a route has no
    /// `rate_limit`.
    pub routes: Vec<Option<Arc<RateLimiter>>>,
}

impl Limits {
    /// The limiters `config` asks for. On a reload, `running` lends the limiters whose
    /// settings did not change, so clients keep their budgets: the `proxy` class when its
    /// rate and `rate_limits.capacity` are the same, and a route's when a rule with the same
    /// label (its `name`, or its pattern made unique) had the same rate. A route is found by
    /// its label, never by its index, so reordering the rules cannot hand one route's
    /// buckets to another; a changed rate or capacity starts with fresh buckets.
    pub fn new(config: &Config, running: Option<(&Config, &Limits)>) -> Limits {
        let capacity = config.rate_limits.capacity;
        let same_capacity = |old: &Config| old.rate_limits.capacity == capacity;
        let make = |rate: Rate| Arc::new(RateLimiter::new(rate, capacity));
        let proxy = config.rate_limits.proxy.map(|rate| {
            running
                .filter(|(old, _)| same_capacity(old) && old.rate_limits.proxy == Some(rate))
                .and_then(|(_, limits)| limits.proxy.clone())
                .unwrap_or_else(|| make(rate))
        });
        // The running routes' limiters by label; labels are unique within a policy.
        let kept: HashMap<&str, (Rate, &Arc<RateLimiter>)> = match running {
            Some((old, limits)) if same_capacity(old) => old
                .rate_limits
                .routes
                .iter()
                .zip(&limits.routes)
                .enumerate()
                .filter_map(|(i, (rate, limiter))| {
                    Some((
                        old.policy.rule_label(Some(i)),
                        ((*rate)?, limiter.as_ref()?),
                    ))
                })
                .collect(),
            _ => HashMap::new(),
        };
        let routes = config
            .rate_limits
            .routes
            .iter()
            .enumerate()
            .map(|(i, rate)| {
                let rate = (*rate)?;
                Some(match kept.get(config.policy.rule_label(Some(i))) {
                    Some((old_rate, limiter)) if *old_rate == rate => Arc::clone(limiter),
                    _ => make(rate),
                })
            })
            .collect();
        Limits { proxy, routes }
    }
}

/// Why gatehouse could not start, naming the part that failed (and the config keys to look
/// at). The CLI prints it and exits 1; nothing is half-started.
#[derive(Debug)]
pub enum StartError {
    /// `server.tls`: a certificate or key file is missing or unusable.
    Tls(String),
    /// The store would not open: held by another process, unreadable, or of another schema.
    Store(StoreError),
    /// The store opened but its revocations could not be read.
    Revocations(StoreError),
    /// `auth.password`: the argon2 parameters are unusable.
    Password(String),
    /// `tokens`: no signing key (a config loaded for `policy` commands only).
    Keys,
    /// `email.*`: the sender or the SMTP URL is unusable.
    Mail(String),
    /// `upstream.*`: the upstream client could not be built (its CA bundle).
    Upstream(String),
    /// `rate_limits.*`: the shared limits could not be set up.
    RateLimits(String),
    /// `issuers`: the client that fetches their keys could not be built.
    Issuers(String),
    /// The metrics registry refused a metric (a bug).
    Metrics(prometheus::Error),
    /// `server.listen` / `server.admin_listen` could not be bound.
    Listen {
        addr: std::net::SocketAddr,
        error: std::io::Error,
    },
    /// A start-up task on the blocking pool failed.
    Task(String),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Tls(e) => write!(f, "server.tls: {e}"),
            StartError::Store(e) => write!(f, "store: {e}"),
            StartError::Revocations(e) => write!(f, "cannot load revocations: {e}"),
            StartError::Password(e) => write!(f, "auth.password: {e}"),
            StartError::Keys => f.write_str("tokens: no signing key is configured"),
            StartError::Mail(e) => write!(f, "email: {e}"),
            StartError::Upstream(e) => write!(f, "upstream: {e}"),
            StartError::RateLimits(e) => write!(f, "{e}"),
            StartError::Issuers(e) => write!(f, "issuers: {e}"),
            StartError::Metrics(e) => write!(f, "metrics: {e}"),
            StartError::Listen { addr, error } => write!(f, "cannot listen on {addr}: {error}"),
            StartError::Task(e) => write!(f, "start-up task: {e}"),
        }
    }
}

impl std::error::Error for StartError {}

/// One generation of the running gatehouse: the compiled state of one config ([`Live`]) and
/// the parts that live as long as the process ([`Core`]), which it dereferences to.
///
/// A request takes the current generation once, when it starts (`reload::Current`), and
/// finishes on it: everything it reads, from the route policy to the token keys and the
/// access-log switch, comes from that one config even if a reload swaps in another while
/// it runs. Work a request leaves behind (a rehash, a mail) holds the same generation.
pub struct App {
    /// Everything built from the config, replaced whole by a reload.
    pub live: Live,
    core: Arc<Core>,
}

/// `app.store`, `app.metrics`…: a generation is read as the process it belongs to. Handlers
/// and the service take `&App` and reach both halves through it, so a reload changes what
/// they read without changing how they read it.
impl std::ops::Deref for App {
    type Target = Core;

    fn deref(&self) -> &Core {
        &self.core
    }
}

/// The compiled state: what one validated [`Config`] builds, by [`Live::build`] alone. A
/// reload builds a new one beside the running one and swaps it in whole; nothing in it is
/// changed in place. Parts whose settings did not change are carried over from the running
/// generation rather than rebuilt, so a reload that does not touch them is invisible to
/// clients: the verified-token cache, rate-limit buckets, cooldowns, Redis's connection.
///
/// New compiled parts (more token keys, other issuers) go here as fields, built in
/// [`Live::build`] from the config and, where state should survive a reload, from `running`.
pub struct Live {
    pub config: Config,
    /// Access tokens: issue and verify, with the cache of verified tokens.
    pub tokens: Arc<Tokens>,
    /// The signed identity for upstreams (`headers.assertion`), with its cache; `None`
    /// when off.
    pub assertions: Option<Arc<Assertions>>,
    /// The proxy path's per-replica limiters (`proxy` class, per route).
    pub limits: Limits,
    /// The auth rate-limit classes (login, register, refresh, forgot_password,
    /// verify_email_resend): counted in Redis across replicas when
    /// `rate_limits.backend = "redis"`, here otherwise.
    pub shared_limits: SharedLimits,
    /// Per-address forgot-password and per-user resend cooldowns, shared like the limits.
    pub cooldowns: Arc<SharedCooldowns>,
    /// The `route` label of each route slot and its request counters (the rules' labels
    /// come from this generation's policy).
    pub routes: RouteCounters,
    /// `[[issuers]]`: other issuers' key sets, kept across reloads where their entry did
    /// not change.
    pub issuers: Issuers,
}

impl Live {
    /// Compiles `config`. `running`, on a reload, is the generation being replaced: its
    /// parts are reused where their settings are the same (see the type's docs). Keys that
    /// need a restart must already hold the running values (`reload::keep_restart_keys`),
    /// since nothing here can act on them.
    pub fn build(config: Config, core: &Core, running: Option<&Live>) -> Result<Live, StartError> {
        let tokens = match running {
            // Same secret, issuer, audience, lifetimes and cache size: the cache of verified
            // tokens stays valid, so keep it. Any difference (a new secret above all) gets a
            // fresh one: a token verified under the old settings must be verified again.
            Some(live) if same_tokens(&live.config, &config) => live.tokens.clone(),
            _ => Arc::new(
                Tokens::new(config.tokens.settings().ok_or(StartError::Keys)?)
                    .with_cache(config.tokens.verify_cache),
            ),
        };
        let assertions = config
            .headers
            .assertion_settings(&config.tokens)
            .map(|settings| match running {
                // The same key, issuer, audience, lifetime and cache size: the cached
                // assertions are still exactly what would be signed now.
                Some(Live {
                    assertions: Some(running),
                    config: old,
                    ..
                }) if same_tokens(old, &config) && same_assertions(old, &config) => running.clone(),
                _ => Arc::new(Assertions::new(settings)),
            });
        let shared_limits = match running {
            Some(live) => live
                .shared_limits
                .reconfigured(&config.rate_limits, &live.config.rate_limits),
            None => SharedLimits::new(&config.rate_limits, &core.metrics)
                .map_err(StartError::RateLimits)?,
        };
        let cooldowns = match running {
            Some(live) if live.config.auth.forgot_cooldown == config.auth.forgot_cooldown => {
                live.cooldowns.clone()
            }
            _ => Arc::new(shared_limits.cooldowns(config.auth.forgot_cooldown)),
        };
        let rule_labels: Vec<&str> = (0..config.policy.len())
            .map(|i| config.policy.rule_label(Some(i)))
            .collect();
        let routes = core.metrics.route_counters(&rule_labels);
        let issuers = Issuers::build(
            &config,
            &core.metrics,
            &core.clock,
            running.map(|live| &live.issuers),
        )
        .map_err(StartError::Issuers)?;
        core.widen_access_window(&config);
        Ok(Live {
            issuers,
            limits: Limits::new(&config, running.map(|live| (&live.config, &live.limits))),
            tokens,
            assertions,
            shared_limits,
            cooldowns,
            routes,
            config,
        })
    }
}

/// Whether two configs build the same [`Tokens`]. The secrets are compared in constant
/// time, as secrets always are here; asymmetric keys by `kid` and public key (one public
/// key has one private key), in order, since the first one signs.
fn same_tokens(a: &Config, b: &Config) -> bool {
    let (a, b) = (&a.tokens, &b.tokens);
    let key = |k: &crate::token::SigningKey| (k.kid().to_string(), k.verify_key().jwk());
    crate::token::ct_eq(a.secret.expose().as_bytes(), b.secret.expose().as_bytes())
        && a.algorithm == b.algorithm
        && a.keys.iter().map(key).eq(b.keys.iter().map(key))
        && a.issuer == b.issuer
        && a.audience == b.audience
        && a.access_ttl == b.access_ttl
        && a.leeway == b.leeway
        && a.verify_cache == b.verify_cache
}

/// Whether two configs with the same tokens build the same [`Assertions`]; the header's
/// name is read per request and may change freely.
fn same_assertions(a: &Config, b: &Config) -> bool {
    let (a, b) = (&a.headers, &b.headers);
    a.assertion_audience == b.assertion_audience
        && a.assertion_ttl == b.assertion_ttl
        && a.assertion_cache == b.assertion_cache
}

/// The parts of a running gatehouse that live as long as the process, whatever config is
/// in force: the store, the revocation cache, metrics, the upstream pool, the mailer, the
/// password hasher, connection slots and the drain signal. Built from the config at start;
/// the keys they are built from need a restart to change (`reload::keep_restart_keys`).
pub struct Core {
    pub store: Arc<dyn Store>,
    pub hasher: Hasher,
    pub revocations: Revocations,
    pub metrics: Metrics,
    pub upstream: Upstream,
    pub clock: Clock,
    pub request_ids: RequestIds,
    /// Outgoing mail (reset, verification, notices), delivered off the request path.
    pub mailer: Mailer,
    /// The budget of forgot-password work running in the background
    /// ([`MAX_BACKGROUND_JOBS`]).
    pub background_jobs: Arc<tokio::sync::Semaphore>,
    /// The listener's TLS when `server.tls` is set; loaded by [`App::start`] only, so the
    /// offline `user` commands never need the certificate files.
    pub tls: Option<ServerTls>,
    shutting_down: AtomicBool,
    /// Bumped after every revocation reaches the cache; see [`Core::revocation_epoch`].
    revocation_epoch: AtomicU64,
    /// One permit per open client connection (`server.max_connections`); a WebSocket splice
    /// takes its own, since it outlives the HTTP connection it was upgraded from.
    pub connection_slots: Arc<tokio::sync::Semaphore>,
    /// WebSocket auth-channel connections open at once (`auth.ws.max_connections`); each
    /// also holds one of `connection_slots`.
    pub auth_channel_slots: Arc<tokio::sync::Semaphore>,
    /// Turns true when draining starts; long-lived work (WebSocket splices) ends on it.
    draining: tokio::sync::watch::Sender<bool>,
    /// The generation in force, for work that outlives the request it began with (an auth
    /// channel's messages): set by `reload::Current` on start and on every swap. Weak, so
    /// a `Core` never keeps alive the `App` that owns it.
    in_force: std::sync::Mutex<std::sync::Weak<App>>,
    /// The sequence number of the last revocation taken from the store's feed: where a
    /// replica catches up from after a lost connection (see `follow_revocations`).
    feed_cursor: AtomicU64,
    /// The longest `tokens.access_ttl` + `tokens.leeway` (seconds) of any config this
    /// process has run with. Revocations and purging must cover the tokens minted under the
    /// longest lifetime still possibly alive, not the current one: after a reload shortens
    /// the lifetime, tokens minted before it still run to their old expiry.
    access_window: AtomicU64,
}

impl App {
    /// Builds the shared state on an open store. Loads every revocation still in force into
    /// the in-memory cache, so the proxy path never has to read the store.
    pub async fn new(
        config: Config,
        store: Arc<dyn Store>,
        clock: Clock,
    ) -> Result<App, StartError> {
        App::build(config, store, clock, None).await
    }

    async fn build(
        config: Config,
        store: Arc<dyn Store>,
        clock: Clock,
        tls: Option<ServerTls>,
    ) -> Result<App, StartError> {
        let metrics = Metrics::new().map_err(StartError::Metrics)?;
        let hasher = Hasher::new(&config.auth.password).map_err(StartError::Password)?;

        let revocations = Revocations::new();
        let now = clock.now();
        // The cursor first: catching up from it later may re-apply a revocation the load
        // already had (harmless), but can never miss one recorded in between.
        let cursor = store
            .revocation_cursor()
            .await
            .map_err(StartError::Revocations)?;
        let loaded = store
            .load_revocations(now)
            .await
            .map_err(StartError::Revocations)?;
        for entry in &loaded {
            apply_revocation(&revocations, entry, now);
        }
        metrics.revocations_cached.set(revocations.len() as i64);
        // Checked here so that a bad sender or SMTP URL fails the start; nothing is spawned
        // until `start`, so the offline CLI can build an App too.
        let mailer = Mailer::new(
            &config.email,
            config.auth.expose_debug_tokens,
            metrics.mail.clone(),
        )
        .map_err(StartError::Mail)?;

        let core = Core {
            store,
            hasher,
            revocations,
            upstream: Upstream::new(&config).map_err(StartError::Upstream)?,
            metrics,
            clock,
            request_ids: RequestIds::new(),
            mailer,
            background_jobs: Arc::new(tokio::sync::Semaphore::new(MAX_BACKGROUND_JOBS)),
            tls,
            shutting_down: AtomicBool::new(false),
            revocation_epoch: AtomicU64::new(0),
            connection_slots: Arc::new(tokio::sync::Semaphore::new(config.server.max_connections)),
            auth_channel_slots: Arc::new(tokio::sync::Semaphore::new(
                config.auth.ws.max_connections,
            )),
            draining: tokio::sync::watch::Sender::new(false),
            in_force: std::sync::Mutex::new(std::sync::Weak::new()),
            feed_cursor: AtomicU64::new(cursor),
            access_window: AtomicU64::new(0),
        };
        let live = Live::build(config, &core, None)?;
        Ok(App {
            live,
            core: Arc::new(core),
        })
    }

    /// The next generation: `config` compiled beside this one, sharing its [`Core`].
    pub fn reconfigure(&self, config: Config) -> Result<App, StartError> {
        Ok(App {
            live: Live::build(config, &self.core, Some(&self.live))?,
            core: self.core.clone(),
        })
    }

    /// The process-long half, for tasks that outlive any one generation.
    pub fn core(&self) -> &Arc<Core> {
        &self.core
    }

    /// Builds the app for serving: loads the TLS certificate, opens the configured store
    /// ([`crate::store::open`]; a clear error when another process holds a sled store),
    /// loads revocations and
    /// starts the purge and certificate-reload tasks.
    pub async fn start(config: Config, clock: Clock) -> Result<Arc<App>, StartError> {
        // Before the store: a bad certificate file fails the start without touching data.
        let tls = match &config.server.tls {
            Some(files) => {
                Some(ServerTls::load(files).map_err(|e| StartError::Tls(e.to_string()))?)
            }
            None => None,
        };
        let store = crate::store::open(&config)
            .await
            .map_err(StartError::Store)?;
        let app = App::build(config, store, clock, tls).await?;
        if let Some(tls) = &app.tls {
            tls.export_expiry(app.metrics.tls_certificate_expiry_gauge());
            tls.spawn_reloader();
        }
        let app = Arc::new(app);
        app.mailer.start();
        // Their first fetch starts now; nothing waits for it (`/readyz` does not).
        app.live.issuers.start();
        // Logs whether Redis answers; never fails the start (limits fall back to local).
        app.live.shared_limits.connect().await;
        // Risky settings (debug tokens among them) are logged by the CLI from the config's
        // warnings, the same list `check-config` prints.
        if app.mailer.mode() == "log" {
            tracing::info!(
                "email.mode = \"log\": no mail is sent; reset and verification mails are only logged"
            );
        }
        if let Some(signal) = app.store.revocation_signal() {
            tokio::spawn(follow_revocations(Arc::downgrade(app.core()), signal));
        }
        let weak = Arc::downgrade(app.core());
        tokio::spawn(async move {
            if let Some(core) = weak.upgrade() {
                core.learn_stored_hash_kinds().await;
            }
        });
        // The first purge waits one interval: start-up (and `/readyz`) never waits for a scan
        // of dead data, and a crash loop does not purge on every start.
        let weak = Arc::downgrade(app.core());
        let every = app.live.config.store.purge_interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(core) = weak.upgrade() else { return };
                core.purge().await;
            }
        });
        Ok(app)
    }
}

impl Core {
    /// The generation in force now, once `reload::Current` has named one. A request runs on
    /// the generation it arrived on; an auth channel's message is a request of its own and
    /// takes this one, so a reload (a lockout turned on during an attack) reaches channels
    /// opened before it.
    pub fn in_force(&self) -> Option<Arc<App>> {
        self.in_force
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .upgrade()
    }

    /// Names `app` the generation in force (`reload::Current`, as it stores it).
    pub fn set_in_force(&self, app: &Arc<App>) {
        *self
            .in_force
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::downgrade(app);
    }

    /// Teaches the hasher every kind of password hash the store holds (imported bcrypt,
    /// scrypt, pbkdf2 or argon2 hashes not yet upgraded), so that from then on every failed
    /// login does the work of each and none tells an account from an unknown name (see
    /// `password.rs`). Reads the users a page at a time, in the background after start.
    pub async fn learn_stored_hash_kinds(&self) {
        const PAGE: usize = 500;
        let mut samples: std::collections::HashMap<crate::imported_hash::Kind, String> =
            std::collections::HashMap::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = match self.store.list_users(PAGE, cursor.as_deref()).await {
                Ok(page) => page,
                Err(e) => {
                    crate::error::Error::from(e).log("stored hash kinds");
                    return;
                }
            };
            for user in &page.users {
                if let Ok(kind) = crate::imported_hash::kind(&user.password_hash) {
                    samples
                        .entry(kind)
                        .or_insert_with(|| user.password_hash.clone());
                }
            }
            match page.next_cursor {
                Some(next) if !page.users.is_empty() => cursor = Some(next),
                _ => break,
            }
        }
        self.hasher.learn(samples.into_values().collect()).await;
    }

    /// Removes dead records from the store (`Store::purge_expired`) and counts them. A
    /// revoked session goes once every access token it can have minted has expired: its last
    /// use plus the access-token lifetime, the leeway and a margin (the argument is in the
    /// `store` module docs, *Purging*). Errors are logged and retried at the next round.
    pub async fn purge(&self) {
        let now = self.clock.now();
        let grace = self.revocation_until(0) + PURGE_MARGIN_SECS;
        match self.store.purge_expired(now, grace).await {
            Ok(purged) => {
                for (kind, n) in purged.by_kind() {
                    self.metrics
                        .store_purged
                        .with_label_values(&[kind])
                        .inc_by(n as u64);
                }
                self.metrics.store_purges.with_label_values(&["ok"]).inc();
                if purged.total() > 0 {
                    tracing::info!(
                        sessions = purged.sessions,
                        refresh_tokens = purged.refresh_tokens,
                        one_time_tokens = purged.one_time_tokens,
                        revocations = purged.revocations,
                        login_failures = purged.login_failures,
                        "purged dead records from the store"
                    );
                }
            }
            Err(e) => {
                self.metrics
                    .store_purges
                    .with_label_values(&["error"])
                    .inc();
                Error::from(e).log("purge");
            }
        }
        self.metrics
            .revocations_cached
            .set(self.revocations.len() as i64);
    }

    /// Persists a revocation, then writes it through to the in-memory cache. In this order,
    /// so that an acknowledged logout survives a crash and the cache never promises more
    /// than the store holds.
    pub async fn revoke(&self, revocation: Revocation) -> Result<(), Error> {
        self.store.put_revocation(&revocation).await?;
        apply_revocation(&self.revocations, &revocation, self.clock.now());
        self.revocation_epoch.fetch_add(1, Ordering::SeqCst);
        self.metrics
            .revocations_cached
            .set(self.revocations.len() as i64);
        Ok(())
    }

    /// A counter that moves whenever a revocation lands. Token issuers read it before they
    /// read the user and again after minting: if it moved, a revocation (a role change, a
    /// lock, a password reset) may have landed between the two and the token may carry
    /// claims it no longer covers, so they re-read the user and mint again.
    pub fn revocation_epoch(&self) -> u64 {
        self.revocation_epoch.load(Ordering::SeqCst)
    }

    /// Revokes every access token of a user issued until now, except those of `except_sid`.
    /// The cutoff is at least the user's current `min_iat`: tokens minted in the same second
    /// as an earlier revocation carry an `iat` raised past it, and must be covered too.
    pub async fn revoke_user_tokens(
        &self,
        user_id: &str,
        except_sid: Option<&str>,
    ) -> Result<(), Error> {
        let now = self.clock.now();
        let cutoff = now.max(self.revocations.min_iat(user_id));
        self.revoke(Revocation::User {
            user_id: user_id.to_string(),
            issued_before: cutoff,
            except_sid: except_sid.map(str::to_string),
            until: self.revocation_until(cutoff),
        })
        .await
    }

    /// When an access token issued now stops verifying: revocations must outlive it.
    /// The lifetime is the longest any config of this process has had (see
    /// `access_window`), so a reload that shortens it cannot end a revocation early.
    pub fn revocation_until(&self, now: u64) -> u64 {
        now + self.access_window.load(Ordering::Relaxed) + 1
    }

    /// Raises `access_window` to `config`'s access-token lifetime and leeway, if longer.
    fn widen_access_window(&self, config: &Config) {
        let window = config.tokens.access_ttl.as_secs() + config.tokens.leeway.as_secs();
        self.access_window.fetch_max(window, Ordering::Relaxed);
    }

    /// For `/readyz`: is the store usable?
    pub async fn check_store(&self) -> Result<(), String> {
        self.store
            .health()
            .await
            .map_err(|_| "store not readable".to_string())
    }

    /// Marks the app as draining: `/readyz` answers 503 so load balancers stop sending.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
        self.draining.send_replace(true);
    }

    /// A receiver that sees `true` once draining starts.
    pub fn draining(&self) -> tokio::sync::watch::Receiver<bool> {
        self.draining.subscribe()
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }
}

/// How often a replica asks the store for revocations when no notification came: the
/// ceiling on how late a revocation made elsewhere is enforced here, even if a notification
/// was lost. Well inside the one second replicas promise.
const FEED_POLL: std::time::Duration = std::time::Duration::from_millis(250);

/// Follows the store's revocation feed for as long as the app lives: on every notification
/// from another replica, and every [`FEED_POLL`] regardless, the revocations recorded since
/// the last one applied are read and applied to the cache. A failed read (the database is
/// away) is retried on the next round from the same cursor, so a replica that lost its
/// connection catches up when it returns and never skips one.
async fn follow_revocations(app: std::sync::Weak<Core>, signal: Arc<tokio::sync::Notify>) {
    loop {
        // A notification or the poll, whichever comes first.
        let _ = tokio::time::timeout(FEED_POLL, signal.notified()).await;
        let Some(app) = app.upgrade() else { return };
        if app.is_shutting_down() {
            return;
        }
        app.catch_up_revocations().await;
    }
}

impl Core {
    /// Applies the revocations recorded in the store since the last one this replica
    /// applied. Returns how many it applied; errors are counted and logged, and the next
    /// round starts from the same place.
    pub async fn catch_up_revocations(&self) -> usize {
        let after = self.feed_cursor.load(Ordering::SeqCst);
        match self.store.revocations_since(after).await {
            Ok(entries) => {
                let now = self.clock.now();
                let mut last = after;
                for (seq, entry) in &entries {
                    apply_revocation(&self.revocations, entry, now);
                    last = last.max(*seq);
                }
                if !entries.is_empty() {
                    self.feed_cursor.fetch_max(last, Ordering::SeqCst);
                    // Token issuers on this replica must notice, as for a local revocation.
                    self.revocation_epoch.fetch_add(1, Ordering::SeqCst);
                    self.metrics
                        .revocations_cached
                        .set(self.revocations.len() as i64);
                }
                self.metrics.revocation_feed(Ok(entries.len()));
                entries.len()
            }
            Err(e) => {
                self.metrics.revocation_feed(Err(()));
                tracing::warn!(error = %e, after, "revocation feed: cannot read the store; retrying");
                0
            }
        }
    }
}

/// Writes one stored revocation into the cache.
fn apply_revocation(cache: &Revocations, entry: &Revocation, now: u64) {
    match entry {
        Revocation::Session { sid, until } => cache.revoke_session(sid, *until, now),
        Revocation::User {
            user_id,
            issued_before,
            except_sid,
            until,
        } => cache.revoke_user_before(
            &UserCutoff {
                user_id,
                cutoff_iat: *issued_before,
                except_sid: except_sid.as_deref(),
                until_unix: *until,
            },
            now,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_prefix_and_counter_in_hex() {
        for (prefix, n) in [
            (0u64, 0u64),
            (0x0123_4567_89ab_cdef, 1),
            (u64::MAX, 0xffff_ffff),
            (0xdead_beef, 0x1_0000_0000),
            (1, u64::MAX),
        ] {
            let ids = RequestIds {
                prefix,
                counter: AtomicU64::new(n),
            };
            assert_eq!(ids.next(), format!("{prefix:016x}{n:08x}").as_str());
        }
    }

    #[test]
    fn request_ids_are_unique_and_safe() {
        let ids = RequestIds::new();
        let a = ids.next();
        let b = ids.next();
        assert_ne!(a, b);
        assert!(RequestIds::accept(&a));
        assert!(!RequestIds::accept(&HeaderValue::from_static("a b")));
        assert!(!RequestIds::accept(&HeaderValue::from_static("x\"}")));
        assert!(!RequestIds::accept(
            &HeaderValue::from_str(&"a".repeat(129)).unwrap()
        ));
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let (clock, now) = Clock::manual(1_000);
        assert_eq!(clock.now(), 1_000);
        now.fetch_add(60, Ordering::Relaxed);
        assert_eq!(clock.now(), 1_060);
    }
}
