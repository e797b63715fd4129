//! Live configuration reload: SIGHUP, and with `server.watch_config` a change of the file.
//!
//! [`Current`] holds the generation of the running gatehouse ([`App`]: the compiled state
//! of one config on the process's [`Core`](crate::app::Core)) that new requests get, in an
//! [`ArcSwap`]. A request loads it once, when hyper hands it over (`server.rs`), and
//! finishes on that one; a reload builds the next generation beside it and swaps the
//! pointer. No lock is taken on the request path and no connection is touched: a kept-alive
//! connection's next request simply loads the new generation.
//!
//! # One reload
//!
//! 1. The file is read and validated exactly as `check-config` does ([`Config::check`] with
//!    this process's environment). Any error refuses the reload whole: every error is
//!    logged with the same text `check-config` prints, `gatehouse_config_reloads_total
//!    {result="error"}` counts it, and the running config stays in force.
//! 2. Keys that cannot change while running ([`keep_restart_keys`]) are compared with the
//!    running config; a changed one keeps its running value and is named in one warning
//!    ("needs a restart: server.listen, store.path"). The rest applies.
//! 3. The next generation is compiled ([`App::reconfigure`]): token keys, limiters, route
//!    counters. Parts whose settings did not change carry their state over (the verified
//!    token cache, rate-limit buckets by route label, cooldowns).
//! 4. With TLS on, the certificate files are checked now (and may be new paths); unusable
//!    files refuse the reload whole, like a config error.
//! 5. The generation is swapped in, the log level applied, series of removed routes
//!    retired, `result="ok"` and the success timestamp set, and one info line says what
//!    changed ("routes 4 → 5, rate_limits changed").
//!
//! # Watching the file
//!
//! Every [`WATCH_INTERVAL`] the file is read through its path and its SHA-256 compared
//! with the last text loaded. Reading through the path follows every symlink to whatever it
//! resolves to now, which is what a Kubernetes ConfigMap update changes: the kubelet
//! writes a new `..2026_…` directory and swaps the `..data` symlink, so neither the
//! visible `config.toml` link nor its mtime moves. Polling a small file once a second
//! costs nothing, needs no platform notification API (inotify loses a watch on a replaced
//! file and must be re-armed on the directory, which is the usual source of missed
//! ConfigMap updates), and no rotation scheme can slip past a content hash. A change is
//! acted on once: a half-written file that fails is counted once, and the complete file
//! applies on the next tick.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};

use crate::app::App;
use crate::config::{Config, ConfigError, Loaded, Purpose};

/// How often a watched config file is read and hashed: within the second or two in which
/// operators expect a ConfigMap change to show, and cheap (one small file).
pub const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// What asked for a reload, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// SIGHUP.
    Signal,
    /// `server.watch_config` saw the file change.
    FileChange,
}

impl Trigger {
    fn label(self) -> &'static str {
        match self {
            Trigger::Signal => "SIGHUP",
            Trigger::FileChange => "file changed",
        }
    }
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// In force; the changes in words and the keys that kept their running values.
    Applied {
        summary: String,
        needs_restart: Vec<&'static str>,
    },
    /// Refused whole, for these reasons (config errors, unusable TLS files).
    Refused(Vec<String>),
}

/// The generation new requests get, and the file it came from.
pub struct Current {
    app: ArcSwap<App>,
    /// The config file (`serve --config`); `None` for the demo and embedded servers, which
    /// have nothing to reload from.
    source: Option<PathBuf>,
    /// Held for the whole of a reload, so SIGHUP and the watcher never build two
    /// generations from one running one; also the SHA-256 of the last text read.
    reloading: Mutex<Option<[u8; 32]>>,
}

impl Current {
    /// Starts with `app`, loaded from `source` when there is a file.
    pub fn new(app: Arc<App>, source: Option<PathBuf>) -> Arc<Current> {
        let seen = source
            .as_deref()
            .and_then(|path| read(path).ok())
            .map(|t| digest(&t));
        app.set_in_force(&app);
        Arc::new(Current {
            app: ArcSwap::new(app),
            source,
            reloading: Mutex::new(seen),
        })
    }

    /// The generation in force: what a request starting now runs on.
    pub fn load(&self) -> Arc<App> {
        self.app.load_full()
    }

    /// Reads the config file again and applies it (see the module doc). Blocking: call it
    /// on the blocking pool ([`Current::reload`] does).
    pub fn reload_file(&self, trigger: Trigger) -> Outcome {
        let mut seen = self
            .reloading
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(path) = &self.source else {
            tracing::info!(
                trigger = trigger.label(),
                "no config file to reload (started without --config); nothing changed"
            );
            return Outcome::Applied {
                summary: "no changes".into(),
                needs_restart: Vec::new(),
            };
        };
        let loaded = match read(path) {
            Ok(text) => {
                *seen = Some(digest(&text));
                Config::check(&text, std::env::vars(), Purpose::Serve)
            }
            Err(error) => {
                *seen = None;
                Loaded {
                    config: Err(crate::config::ConfigErrors(vec![error])),
                    warnings: Vec::new(),
                }
            }
        };
        self.apply_locked(loaded, trigger)
    }

    /// [`Current::reload_file`] on the blocking pool.
    pub async fn reload(self: &Arc<Self>, trigger: Trigger) -> Outcome {
        let current = self.clone();
        tokio::task::spawn_blocking(move || current.reload_file(trigger))
            .await
            .unwrap_or_else(|e| Outcome::Refused(vec![format!("reload task failed: {e}")]))
    }

    /// Applies an already loaded config (tests and embedders; `serve` reads the file). Does
    /// the same as a reload from the file: refused whole on any error, restart-only keys
    /// kept and named, metrics counted.
    pub fn apply(&self, loaded: Loaded, trigger: Trigger) -> Outcome {
        let _guard = self
            .reloading
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.apply_locked(loaded, trigger)
    }

    fn apply_locked(&self, loaded: Loaded, trigger: Trigger) -> Outcome {
        let running = self.load();
        let Loaded { config, warnings } = loaded;
        let mut config = match config {
            Ok(config) => config,
            Err(errors) => {
                return self.refuse(
                    &running,
                    trigger,
                    errors.0.iter().map(ConfigError::to_string),
                );
            }
        };
        let needs_restart = keep_restart_keys(&running.live.config, &mut config);
        let next = match running.reconfigure(config) {
            Ok(next) => next,
            Err(e) => return self.refuse(&running, trigger, [e.to_string()]),
        };
        // Last, as it is the one step with an effect of its own: after it nothing can fail.
        if let (Some(tls), Some(files)) = (&running.tls, &next.live.config.server.tls)
            && let Err(e) = tls.reconfigure(files)
        {
            // The series the refused policy's new routes created are not exported.
            running
                .metrics
                .retire_routes(&next.live.routes, &running.live.routes);
            return self.refuse(&running, trigger, [format!("server.tls: {e}")]);
        }
        let summary = summarise(&running.live.config, &next.live.config);
        let level_changed = running.live.config.log.level != next.live.config.log.level;
        let next = Arc::new(next);
        self.app.store(next.clone());
        next.set_in_force(&next);
        if level_changed {
            crate::logging::set_level(&next.live.config.log.level);
        }
        running
            .metrics
            .retire_routes(&running.live.routes, &next.live.routes);
        running.metrics.config_reload(true);
        tracing::info!(trigger = trigger.label(), "config reloaded: {summary}");
        if !needs_restart.is_empty() {
            tracing::warn!(
                "config reload: needs a restart: {} (the running values stay until then)",
                needs_restart.join(", ")
            );
        }
        crate::logging::config_warnings(&warnings);
        Outcome::Applied {
            summary,
            needs_restart,
        }
    }

    /// Logs every reason, counts the refusal, and leaves the running config in force.
    fn refuse(
        &self,
        running: &App,
        trigger: Trigger,
        reasons: impl IntoIterator<Item = String>,
    ) -> Outcome {
        let reasons: Vec<String> = reasons.into_iter().collect();
        for reason in &reasons {
            tracing::error!(trigger = trigger.label(), "config reload refused: {reason}");
        }
        tracing::error!(
            trigger = trigger.label(),
            errors = reasons.len(),
            "config reload refused; the running config stays in force"
        );
        running.metrics.config_reload(false);
        Outcome::Refused(reasons)
    }

    /// Starts what makes reloads happen: a reload on every SIGHUP that `hangups` catches,
    /// and the file watcher, which acts while the running config has
    /// `server.watch_config = true` (it is checked every round, so turning it on or off is
    /// itself a reload). Call inside the runtime, once.
    pub fn spawn_triggers(self: &Arc<Self>, hangups: Hangups) {
        #[cfg(unix)]
        if let Some(mut hangups) = hangups.0 {
            let current = Arc::downgrade(self);
            tokio::spawn(async move {
                while hangups.recv().await.is_some() {
                    let Some(current) = current.upgrade() else {
                        return;
                    };
                    current.reload(Trigger::Signal).await;
                }
            });
        }
        if self.source.is_some() {
            tokio::spawn(watch(Arc::downgrade(self)));
        }
    }

    /// Whether the file's content differs from the last text read. Blocking.
    fn file_changed(&self) -> bool {
        let Some(path) = &self.source else {
            return false;
        };
        let now = read(path).ok().map(|text| digest(&text));
        *self
            .reloading
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            != now
    }
}

/// SIGHUP, caught. The default action of SIGHUP is to end the process (exit 129), so
/// [`Hangups::install`] is called first thing in `serve`, before anything slow: from then
/// on a SIGHUP is held until [`Current::spawn_triggers`] acts on it, and never kills.
pub struct Hangups(#[cfg(unix)] Option<tokio::signal::unix::Signal>);

impl Hangups {
    /// Replaces SIGHUP's default action for the life of the process. Call inside the
    /// runtime. Failing to (which does not happen on Linux) is logged.
    pub fn install() -> Hangups {
        #[cfg(unix)]
        {
            let signal = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
            if let Err(e) = &signal {
                tracing::error!(error = %e, "cannot handle SIGHUP; reload by signal is off");
            }
            Hangups(signal.ok())
        }
        #[cfg(not(unix))]
        Hangups()
    }
}

/// The watcher's loop; ends when the [`Current`] is gone.
async fn watch(current: Weak<Current>) {
    loop {
        tokio::time::sleep(WATCH_INTERVAL).await;
        let Some(strong) = current.upgrade() else {
            return;
        };
        if !strong.load().live.config.server.watch_config {
            continue;
        }
        let check = strong.clone();
        let changed = tokio::task::spawn_blocking(move || check.file_changed())
            .await
            .unwrap_or(false);
        if changed {
            strong.reload(Trigger::FileChange).await;
        }
    }
}

/// The file's text, or the error `check-config` gives for an unreadable file.
fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError {
        key: "(file)".into(),
        env: None,
        message: format!("cannot read {}: {e}", path.display()),
    })
}

fn digest(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

/// Gives every key that cannot change while running its value in `running`, and returns
/// the dotted names of those that differed, for the "needs a restart" warning.
///
/// What needs a restart, and why:
/// - `server.listen`, `server.admin_listen`: the sockets are bound once;
/// - `server.workers`, `server.blocking_threads`: the runtime is built once;
/// - `server.max_connections`: the connection slots are counted by one semaphore;
/// - `auth.ws.max_connections`: so are the auth channel's (its other keys reload, and a
///   channel keeps the settings of the generation it was opened on);
/// - `server.tls` on or off: the listener speaks TLS or not (with TLS on, the files and
///   `reload_interval` do reload);
/// - `upstream.*`: the connection pools (and their TLS roots) are built from them;
/// - `store.*`: the store is opened once (`purge_interval` included: one task runs it);
/// - `rate_limits.backend`, `redis_url`, `redis_prefix`, `redis_timeout`: one Redis
///   connection serves every generation (the rates themselves reload);
/// - `email.mode`, `email.smtp_url`, `email.from`: the mail queue and its transport are
///   built once (`reset_url`, `verify_url` reload);
/// - `auth.password.*`: the argon2 buffer pool, permits and the dummy hash behind the
///   login timing are built once for these costs and policy;
/// - `auth.expose_debug_tokens`: the mailer's log mode is built with it, and it must never
///   be half on;
/// - `log.format`: the log writer is installed once (`log.level` reloads).
pub fn keep_restart_keys(running: &Config, new: &mut Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let mut keep = |key: &'static str, changed_here: bool| {
        if changed_here {
            changed.push(key);
        }
    };
    macro_rules! same {
        ($key:literal, $($field:tt)+) => {{
            let differs = running.$($field)+ != new.$($field)+;
            if differs {
                new.$($field)+ = running.$($field)+.clone();
            }
            keep($key, differs);
        }};
    }
    // A setting that is off, or on with a URL (the Redis backend, SMTP mail): switching it
    // and changing its URL are named apart.
    macro_rules! switch {
        ($switch:literal, $url:literal, $section:ident . $field:ident . $get:ident) => {{
            let (switched, url) = match (running.$section.$field.$get(), new.$section.$field.$get())
            {
                (None, None) => (false, false),
                (Some(a), Some(b)) => (false, a != b),
                _ => (true, false),
            };
            if switched || url {
                new.$section.$field = running.$section.$field.clone();
            }
            keep($switch, switched);
            keep($url, url);
        }};
    }
    same!("server.listen", server.listen);
    same!("server.admin_listen", server.admin_listen);
    same!("server.workers", server.workers);
    same!("server.blocking_threads", server.blocking_threads);
    same!("server.max_connections", server.max_connections);
    same!("auth.ws.max_connections", auth.ws.max_connections);
    if running.server.tls.is_some() != new.server.tls.is_some() {
        new.server.tls = running.server.tls.clone();
        keep("server.tls", true);
    }
    same!("upstream.url", upstream.url);
    same!("upstream.timeout", upstream.timeout);
    same!("upstream.connect_timeout", upstream.connect_timeout);
    same!("upstream.pool_idle_timeout", upstream.pool_idle_timeout);
    same!("upstream.pool_max_idle", upstream.pool_max_idle);
    same!("upstream.health_path", upstream.health_path);
    same!("upstream.ca_file", upstream.ca_file);
    same!("store.backend", store.backend);
    same!("store.path", store.path);
    same!("store.url", store.url);
    same!("store.pool_size", store.pool_size);
    same!("store.connect_timeout", store.connect_timeout);
    same!("store.statement_timeout", store.statement_timeout);
    same!("store.acquire_timeout", store.acquire_timeout);
    same!("store.purge_interval", store.purge_interval);
    switch!(
        "rate_limits.backend",
        "rate_limits.redis_url",
        rate_limits.backend.redis_url
    );
    same!("rate_limits.redis_prefix", rate_limits.redis_prefix);
    same!("rate_limits.redis_timeout", rate_limits.redis_timeout);
    switch!("email.mode", "email.smtp_url", email.mode.smtp_url);
    same!("email.from", email.from);
    same!("auth.password.min_length", auth.password.min_length);
    same!("auth.password.max_length", auth.password.max_length);
    same!("auth.password.memory_kib", auth.password.memory_kib);
    same!("auth.password.iterations", auth.password.iterations);
    same!("auth.password.parallelism", auth.password.parallelism);
    same!("auth.password.max_concurrent", auth.password.max_concurrent);
    same!("auth.expose_debug_tokens", auth.expose_debug_tokens);
    same!("log.format", log.format);
    changed
}

/// What a reload changed, in a few words for its log line: the number of route rules when
/// it moved, then each section that differs; "no changes" when nothing did. Secrets are
/// compared, never shown.
pub fn summarise(old: &Config, new: &Config) -> String {
    let mut parts = Vec::new();
    let (before, after) = (old.policy.len(), new.policy.len());
    if before != after {
        parts.push(format!("routes {before} → {after}"));
    } else if format!("{:?}", old.policy) != format!("{:?}", new.policy) {
        parts.push("policy changed".to_string());
    }
    for ((name, a), b) in SECTIONS.iter().zip(sections(old)).zip(sections(new)) {
        if a != b {
            parts.push(format!("{name} changed"));
        }
    }
    if before == after && old.rate_limits.routes != new.rate_limits.routes {
        parts.push("routes' rate_limit changed".to_string());
    }
    if old.tokens.secret != new.tokens.secret {
        parts.push("tokens.secret changed".to_string());
    }
    // Asymmetric keys by kid and public key, in order: which one signs matters too.
    let public = |c: &Config| -> Vec<(String, Option<serde_json::Value>)> {
        c.tokens
            .keys
            .iter()
            .filter(|k| k.algorithm().is_asymmetric())
            .map(|k| (k.kid().to_string(), k.verify_key().jwk()))
            .collect()
    };
    if public(old) != public(new) {
        parts.push("tokens.keys changed".to_string());
    }
    if old.log.level != new.log.level {
        parts.push(format!("log.level {} → {}", old.log.level, new.log.level));
    }
    if old.log.access != new.log.access {
        parts.push(format!(
            "log.access {} → {}",
            old.log.access, new.log.access
        ));
    }
    if parts.is_empty() {
        "no changes".to_string()
    } else {
        parts.join(", ")
    }
}

/// The sections [`summarise`] names, in the order of [`sections`].
const SECTIONS: [&str; 8] = [
    "server",
    "tokens",
    "auth",
    "rate_limits",
    "email",
    "headers",
    "upstream",
    "store",
];

/// Each of [`SECTIONS`] as text to compare: its Debug output, which is complete for every
/// section, with secrets redacted (the secrets are compared on their own).
fn sections(c: &Config) -> [String; 8] {
    [
        format!("{:?}", c.server),
        tokens_section(c),
        format!("{:?}", c.auth),
        class_limits(c),
        format!("{:?}", c.email),
        format!("{:?}", c.headers),
        format!("{:?}", c.upstream),
        format!("{:?}", c.store),
    ]
}

/// `[tokens]` without the loaded keys, which the key line of [`summarise`] describes (under
/// HS256 the key is the secret's, compared on its own).
fn tokens_section(config: &Config) -> String {
    let mut tokens = config.tokens.clone();
    tokens.keys.clear();
    format!("{tokens:?}")
}

/// `[rate_limits]` without the routes' own limits, which the route count and "routes'
/// rate_limit changed" describe.
fn class_limits(config: &Config) -> String {
    let mut limits = config.rate_limits.clone();
    limits.routes.clear();
    format!("{limits:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "test-secret-0123456789abcdef-0123456789";

    /// A valid config with `extra` TOML; the upstream comes from the environment so that
    /// `extra` may have an `[upstream]` section of its own.
    fn config(extra: &str) -> Config {
        let text = format!("[tokens]\nsecret = \"{SECRET}\"\n{extra}");
        with_upstream(&text)
    }

    fn with_upstream(text: &str) -> Config {
        let env = [(
            "GATEHOUSE_UPSTREAM_URL".to_string(),
            "http://127.0.0.1:9".to_string(),
        )];
        Config::from_toml(text, env).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    #[test]
    fn nothing_changed_needs_nothing() {
        let running = config("");
        let mut new = config("");
        assert!(keep_restart_keys(&running, &mut new).is_empty());
        assert_eq!(summarise(&running, &new), "no changes");
    }

    #[test]
    fn restart_keys_are_named_and_keep_their_running_values() {
        let running = config("[store]\npath = \"/var/lib/a\"\n");
        let mut new = config(
            r#"
[server]
listen = "127.0.0.1:9999"
admin_listen = "127.0.0.1:9998"
workers = 3
blocking_threads = 8
max_connections = 5
trusted_proxies = ["10.0.0.0/8"]
[store]
path = "/var/lib/b"
purge_interval = "1h"
[upstream]
timeout = "3s"
[rate_limits]
backend = "redis"
redis_url = "redis://127.0.0.1:6379"
proxy = "10/1s"
[email]
from = "x@example.com"
[auth]
registration = "closed"
[auth.password]
min_length = 12
[auth.ws]
max_connections = 7
idle_timeout = "5s"
[log]
format = "json"
level = "debug"
"#,
        );
        let named = keep_restart_keys(&running, &mut new);
        assert_eq!(
            named,
            [
                "server.listen",
                "server.admin_listen",
                "server.workers",
                "server.blocking_threads",
                "server.max_connections",
                "auth.ws.max_connections",
                "upstream.timeout",
                "store.path",
                "store.purge_interval",
                "rate_limits.backend",
                "email.from",
                "auth.password.min_length",
                "log.format",
            ]
        );
        // Kept at the running values…
        assert_eq!(new.server.listen, running.server.listen);
        assert_eq!(new.store.path, running.store.path);
        assert_eq!(new.rate_limits.backend, running.rate_limits.backend);
        assert_eq!(new.log.format, running.log.format);
        assert_eq!(new.auth.password, running.auth.password);
        // …while the keys that reload keep their new ones.
        assert_eq!(new.server.trusted_proxies.len(), 1);
        assert!(new.rate_limits.proxy.is_some());
        assert_eq!(new.log.level, "debug");
        assert_eq!(new.auth.registration, crate::config::Registration::Closed);
        assert_eq!(new.auth.ws.max_connections, running.auth.ws.max_connections);
        assert_eq!(new.auth.ws.idle_timeout, std::time::Duration::from_secs(5));
        // A second comparison finds nothing left to keep.
        assert!(keep_restart_keys(&running, &mut new).is_empty());
    }

    #[test]
    fn tls_on_or_off_needs_a_restart_but_its_files_do_not() {
        let on = "[server.tls]\ncert = \"/a.pem\"\nkey = \"/a.key\"\n";
        let running = config(on);
        let mut off = config("");
        assert_eq!(keep_restart_keys(&running, &mut off), ["server.tls"]);
        assert_eq!(off.server.tls, running.server.tls);
        let mut moved = config("[server.tls]\ncert = \"/b.pem\"\nkey = \"/b.key\"\n");
        assert!(keep_restart_keys(&running, &mut moved).is_empty());
        assert_eq!(moved.server.tls.unwrap().cert, PathBuf::from("/b.pem"));
        let mut on_now = config(on);
        assert_eq!(keep_restart_keys(&config(""), &mut on_now), ["server.tls"]);
        assert!(on_now.server.tls.is_none());
    }

    #[test]
    fn secrets_and_urls_are_compared_by_value() {
        let redis = |url: &str| {
            config(&format!(
                "[rate_limits]\nbackend = \"redis\"\nredis_url = \"{url}\"\n"
            ))
        };
        let running = redis("redis://a:6379");
        let mut new = redis("redis://b:6379");
        assert_eq!(
            keep_restart_keys(&running, &mut new),
            ["rate_limits.redis_url"]
        );
        // A new secret reloads: it is not a restart key, and the summary names it without
        // showing it.
        let running = config("");
        let mut rotated = with_upstream(&format!("[tokens]\nsecret = \"{SECRET}-rotated\"\n"));
        assert!(keep_restart_keys(&running, &mut rotated).is_empty());
        let summary = summarise(&running, &rotated);
        assert_eq!(summary, "tokens.secret changed");
    }

    #[test]
    fn the_summary_counts_routes_and_names_sections() {
        let one = "[[routes]]\npath = \"/a/**\"\naccess = \"public\"\n";
        let two = format!("{one}[[routes]]\npath = \"/b/**\"\naccess = \"authenticated\"\n");
        let running = config(one);
        let new = config(&format!(
            "{two}[rate_limits]\nproxy = \"5/1s\"\n[log]\nlevel = \"debug\"\n"
        ));
        assert_eq!(
            summarise(&running, &new),
            "routes 1 → 2, rate_limits changed, log.level info → debug"
        );
        let reworded = config("[[routes]]\npath = \"/a/**\"\naccess = \"authenticated\"\n");
        assert_eq!(summarise(&running, &reworded), "policy changed");
    }
}
