//! Log setup: `tracing` to stdout, JSON or pretty by `[log] format`, level from `[log] level`
//! unless `GATEHOUSE_LOG` (an `EnvFilter` string) says otherwise. The pretty format is
//! coloured only when stdout is a terminal. Secrets never reach a log
//! line: config types redact them in `Debug`, and tokens and passwords are never fields.
//!
//! The level filter sits behind a `tracing_subscriber` reload handle, so a config reload
//! changes `log.level` in place ([`set_level`]); the format is chosen once, at start.

use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, fmt, reload};

use crate::config::{ConfigError, LogConfig, LogFormat};

/// The installed subscriber's level filter, set by the [`init`] call that installed it.
static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// The variable that overrides `log.level`, at start and on every reload.
const LOG_ENV: &str = "GATEHOUSE_LOG";

/// Installs the global subscriber. Calling it twice is harmless (tests do): the first
/// call's subscriber stays.
pub fn init(config: &LogConfig) {
    let (filter, handle) = reload::Layer::new(filter(&config.level));
    // Colour codes only on a terminal: written into a file, a pipe or a log collector
    // they are noise that breaks grep and parsers.
    let ansi = std::io::stdout().is_terminal();
    let registry = tracing_subscriber::registry().with(filter);
    let installed = match config.format {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_target(true)
                    .with_ansi(ansi),
            )
            .try_init(),
        LogFormat::Pretty => registry
            .with(fmt::layer().compact().with_target(true).with_ansi(ansi))
            .try_init(),
    };
    if installed.is_ok() {
        let _ = FILTER.set(handle);
    }
}

/// `GATEHOUSE_LOG` when it is set and parses, else `level`.
fn filter(level: &str) -> EnvFilter {
    std::env::var(LOG_ENV)
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(level))
}

/// Applies a reloaded `log.level` to the running subscriber. `GATEHOUSE_LOG`, when set,
/// still wins, as it did at start. Nothing happens when this process installed no
/// subscriber of its own (an embedding test).
pub fn set_level(level: &str) {
    if let Some(handle) = FILTER.get()
        && let Err(e) = handle.reload(filter(level))
    {
        tracing::warn!(error = %e, "cannot change the log level");
    }
}

/// Logs what `check-config` warns about, where operators watch: at start and after each
/// reload.
pub fn config_warnings(warnings: &[ConfigError]) {
    for w in warnings {
        tracing::warn!(
            key = %w.key,
            env = w.env.as_deref().unwrap_or_default(),
            "risky setting: {}",
            w.message
        );
    }
}
