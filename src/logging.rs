//! Log setup: `tracing` to stdout, JSON or pretty by `[log] format`, level from `[log] level`
//! unless `GATEHOUSE_LOG` (an `EnvFilter` string) says otherwise. The pretty format is
//! coloured only when stdout is a terminal. Secrets never reach a log
//! line: config types redact them in `Debug`, and tokens and passwords are never fields.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber. Calling it twice is harmless (tests do).
pub fn init(config: &LogConfig) {
    let filter = std::env::var("GATEHOUSE_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(&config.level));
    // Colour codes only on a terminal: written into a file, a pipe or a log collector
    // they are noise that breaks grep and parsers.
    let ansi = std::io::stdout().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true)
        .with_ansi(ansi);
    let _ = match config.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
}
