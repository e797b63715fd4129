//! The command line (API.md §7). Parsing has no side effects; each command is a function
//! that returns the process exit code, so `main.rs` stays a few lines.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::app::{App, Clock, StartError};
use crate::config::{Config, ConfigError, Loaded, Purpose};
use crate::explain::Identity;
use crate::reload::{Current, Hangups};
use crate::server::{self, Listeners};

#[derive(Parser, Debug)]
#[command(
    name = "gatehouse",
    version,
    about = "An authentication sidecar: verifies tokens, enforces route policies, serves the auth endpoints.",
    after_help = "Without a command, gatehouse runs `serve` with --config FILE or GATEHOUSE_CONFIG."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Config file to serve with when no command is given (GATEHOUSE_CONFIG works too).
    /// Commands take their own --config after the command name.
    // Its own id: `user`'s global --config shares values with any ancestor argument of its
    // id, which would make `user add --config F` look like `--config F user add`.
    #[arg(long = "config", id = "default_config", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// The `GATEHOUSE_CONFIG` variable, which every command's `--config` falls back to.
const CONFIG_ENV: &str = "GATEHOUSE_CONFIG";

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the sidecar (the default command) until SIGTERM or SIGINT, then drain; SIGHUP
    /// reloads the config file.
    Serve(ServeArgs),
    /// Validate a config file with this environment's GATEHOUSE_* variables applied: print
    /// every error and warning with its key; exit 1 on any error (and on any warning
    /// with --strict), 0 otherwise.
    CheckConfig(CheckArgs),
    /// Explain and test route policies without deploying them, decided by the proxy's own
    /// code.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Manage users directly in the store while the server is stopped (a running server is
    /// managed through the admin API).
    User {
        /// Config file of the server whose store holds the users (required;
        /// GATEHOUSE_CONFIG works too).
        // Not `required`: clap refuses that on an argument every `user` command inherits.
        #[arg(long, env = CONFIG_ENV, value_name = "FILE", global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: crate::usercli::UserCommand,
    },
    /// Run gatehouse in front of a demo echo upstream, with an embedded config, a fresh
    /// secret and a temporary store; takes no config file.
    Demo(DemoArgs),
    /// Work on the store itself: apply schema migrations, or copy every record into
    /// another store (sled to PostgreSQL and back).
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Config file to serve with; GATEHOUSE_* variables override its keys
    /// (GATEHOUSE_CONFIG works too).
    #[arg(long, env = CONFIG_ENV, value_name = "FILE", required = true)]
    pub config: PathBuf,
}

#[derive(Args, Debug)]
pub struct MigrateArgs {
    /// Config file whose [store] section names the store to migrate (GATEHOUSE_CONFIG
    /// works too).
    #[arg(long, env = CONFIG_ENV, value_name = "FILE", required = true)]
    pub config: PathBuf,
}

#[derive(Subcommand, Debug)]
pub enum StoreCommand {
    /// Apply pending schema migrations (ahead of a rollout) and print what was done. Safe
    /// while replicas run and while others migrate: migrations run one at a time under a lock.
    Migrate(MigrateArgs),
    /// Copy every record from the store of one config to the store of another.
    ///
    /// Copies users (ids, password hashes, roles, flags, timestamps), sessions, every
    /// refresh-token hash (current and rotated, so reuse is still detected), revocations,
    /// pending reset and verification tokens, and login-failure counters: sled to
    /// PostgreSQL, PostgreSQL to sled, sled to sled, PostgreSQL to PostgreSQL. Secrets stay
    /// hashed; users keep their passwords and sessions.
    ///
    /// The source is only read (a PostgreSQL source in one snapshot, so replicas may keep
    /// serving from it; a sled source must not be held by a running server). PostgreSQL
    /// migrations are applied to the target first. A target that holds any record is
    /// refused unless --into-nonempty. Into PostgreSQL the copy is one transaction: all or
    /// nothing. Into sled it is flushed to disk before success is reported; a sled store
    /// whose copy was interrupted refuses to serve until the same copy is run again with
    /// --into-nonempty, or the directory is deleted. Prints the number of records copied
    /// of each kind.
    ///
    /// Both files are read as `serve` reads them (each must be a valid config), and only
    /// their [store] sections matter. GATEHOUSE_STORE_* variables are refused: they would
    /// apply to both.
    Copy(CopyArgs),
}

#[derive(Args, Debug)]
pub struct CopyArgs {
    /// Config file of the store to copy from (never changed).
    #[arg(long, value_name = "OLD.toml")]
    pub from: PathBuf,
    /// Config file of the store to copy into.
    #[arg(long, value_name = "NEW.toml")]
    pub to: PathBuf,
    /// Copy into a target that already holds records. The whole source is first checked
    /// against it: records it holds identically are skipped, a revocation keeps the later
    /// expiry, and any other record under a taken id, hash, email or username stops the
    /// copy before anything is written.
    #[arg(long)]
    pub into_nonempty: bool,
}

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Show how the running proxy would treat a request: refusals, the normalised path, the
    /// rules involved, the verdict.
    ///
    /// Decided by the same code as the proxy. Exit status: 0 allow (forwarded upstream) or
    /// served (an auth endpoint under auth.prefix answers it); 1 deny (401 or 403);
    /// 2 refused (400 or 414 before anything is decided); 3 when it cannot be explained
    /// (a bad config, or --token without tokens.secret). Revocations and rate limits, which
    /// only the running server knows, are not checked.
    Explain(ExplainArgs),
    /// Check a table of expected decisions (for CI of policy changes); exit 1 on any
    /// mismatch, listing every one.
    ///
    /// FILE is TOML with one [[case]] per request:
    ///
    ///   [[case]]
    ///   method = "GET"
    ///   path = "/api/items?page=2"   # the request target, query allowed
    ///   roles = ["reader"]           # optional; or token = "JWT"; neither = anonymous
    ///   expect = "allow"             # allow | served | deny | refused
    ///   status = 403                 # optional: the status of a deny or refusal
    Test(PolicyTestArgs),
}

#[derive(Args, Debug)]
pub struct ExplainArgs {
    /// Config file whose policy decides ([[routes]], [roles], [policy], auth.prefix);
    /// tokens.secret is needed only with --token (GATEHOUSE_CONFIG works too).
    #[arg(long, env = CONFIG_ENV, value_name = "FILE", required = true)]
    pub config: PathBuf,
    /// HTTP method exactly as sent; a lower-case one is refused, as the server refuses it.
    pub method: String,
    /// Request target as sent, e.g. /api/users/7 or '/api/x?page=2' (normalised and
    /// checked as the proxy would; the query is not part of the path).
    pub path: String,
    /// Decide for a caller with these roles, comma-separated (nothing verified). Omit it
    /// and --token for an anonymous caller.
    #[arg(long, value_delimiter = ',', conflicts_with = "token")]
    pub roles: Option<Vec<String>>,
    /// Decide for this access token, verified as the proxy verifies it (needs
    /// tokens.secret or GATEHOUSE_TOKENS_SECRET; revocations aside).
    #[arg(long, value_name = "JWT")]
    pub token: Option<String>,
    /// Print the explanation as one JSON object, for scripts.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct PolicyTestArgs {
    /// Config file whose policy decides; tokens.secret is needed only for cases with a
    /// token (GATEHOUSE_CONFIG works too).
    #[arg(long, env = CONFIG_ENV, value_name = "FILE", required = true)]
    pub config: PathBuf,
    /// The table of cases (TOML, [[case]] entries).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Config file to check (GATEHOUSE_CONFIG works too).
    #[arg(long, env = CONFIG_ENV, value_name = "FILE", required = true)]
    pub config: PathBuf,
    /// Treat warnings (risky but valid settings) as errors: exit 1 on any.
    #[arg(long)]
    pub strict: bool,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Address gatehouse listens on (port 0 picks a free one).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub listen: String,
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> ExitCode {
    let Some(command) = cli.command else {
        // `gatehouse` alone serves, with --config or GATEHOUSE_CONFIG.
        let config = cli
            .config
            .or_else(|| std::env::var_os(CONFIG_ENV).map(PathBuf::from));
        return match config {
            Some(path) => serve(&path),
            None => {
                eprintln!("error: --config FILE is required (or set {CONFIG_ENV})");
                ExitCode::from(2)
            }
        };
    };
    if cli.config.is_some() {
        // Clap has parsed the command's own --config by now; one before the command name
        // would be silently ignored, so it is refused.
        eprintln!(
            "error: --config before the command name is only for the default `serve`; \
             write it after the command (`gatehouse <command> --config FILE`), and \
             `demo` and `store copy` take none"
        );
        return ExitCode::from(2);
    }
    match command {
        Command::Serve(args) => serve(&args.config),
        Command::CheckConfig(args) => check_config(&args.config, args.strict),
        Command::Policy {
            command: PolicyCommand::Explain(args),
        } => explain(&args),
        Command::Policy {
            command: PolicyCommand::Test(args),
        } => policy_test(&args.config, &args.file),
        Command::User {
            config: None,
            command: _,
        } => {
            eprintln!("error: --config FILE is required (or set {CONFIG_ENV})");
            ExitCode::from(2)
        }
        Command::User {
            config: Some(config),
            command,
        } => match load_config(&config) {
            Ok(config) => crate::usercli::run(config, command),
            Err(code) => code,
        },
        Command::Demo(args) => demo(&args),
        Command::Store {
            command: StoreCommand::Migrate(args),
        } => match load_config(&args.config) {
            Ok(config) => store_migrate(&config),
            Err(code) => code,
        },
        Command::Store {
            command: StoreCommand::Copy(args),
        } => store_copy(&args),
    }
}

/// `gatehouse store copy`: the counts of each kind, then a line saying where they are.
fn store_copy(args: &CopyArgs) -> ExitCode {
    let store_vars: Vec<String> = std::env::vars()
        .map(|(name, _)| name)
        .filter(|name| name.starts_with("GATEHOUSE_STORE_"))
        .collect();
    if !store_vars.is_empty() {
        eprintln!(
            "error: {} set: it would apply to both --from and --to. Put each store's \
             settings in its own file and unset it.",
            store_vars.join(", ")
        );
        return ExitCode::from(2);
    }
    let (from, to) = match (load_config(&args.from), load_config(&args.to)) {
        (Ok(from), Ok(to)) => (from, to),
        (Err(code), _) | (_, Err(code)) => return code,
    };
    let rt = match runtime(2) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let options = crate::store::copy::CopyOptions {
        into_nonempty: args.into_nonempty,
        ..Default::default()
    };
    let report = match rt.block_on(crate::store::copy::copy(&from.store, &to.store, &options)) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "copied the {} store of {} into the {} store of {}",
        report.from,
        args.from.display(),
        report.to,
        args.to.display()
    );
    for name in &report.migrations {
        println!("applied migration {name} to the target first");
    }
    for kind in crate::store::copy::Kind::ALL {
        let present = report.present.get(kind);
        if report.target_was_empty {
            println!("  {:<28}{:>10}", kind.label(), report.copied.get(kind));
        } else {
            println!(
                "  {:<28}{:>10}  ({present} already there)",
                kind.label(),
                report.copied.get(kind)
            );
        }
    }
    let durable = if report.to == "postgres" {
        "committed in one transaction"
    } else {
        "flushed to disk"
    };
    println!(
        "{} records copied in {:.1}s, {durable}",
        report.copied.total(),
        report.elapsed.as_secs_f64()
    );
    ExitCode::SUCCESS
}

/// `gatehouse store migrate`: one line per migration applied, then the version in force.
fn store_migrate(config: &Config) -> ExitCode {
    let rt = match runtime(1) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(crate::store::migrate(&config.store)) {
        Ok(done) => {
            for name in &done.applied {
                println!("applied {name}");
            }
            if done.applied.is_empty() {
                println!(
                    "{} store schema is up to date at version {}; nothing to do",
                    done.backend, done.version
                );
            } else {
                println!(
                    "{} store schema now at version {}",
                    done.backend, done.version
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: store: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Loads a config or prints every error (and, with them, every warning).
pub fn load_config(path: &Path) -> Result<Config, ExitCode> {
    load_for(path, Purpose::Serve).map(|(config, _)| config)
}

/// Loads a config for `purpose`, returning its warnings; on errors prints them all with
/// the warnings and returns exit code 1.
fn load_for(path: &Path, purpose: Purpose) -> Result<(Config, Vec<ConfigError>), ExitCode> {
    let Loaded { config, warnings } = Config::load_for(path, purpose);
    match config {
        Ok(config) => Ok((config, warnings)),
        Err(errors) => {
            print_diagnostics(path, &errors.0, &warnings);
            Err(ExitCode::from(1))
        }
    }
}

/// `{file}: 2 errors, 1 warning` and then each, errors first, on standard error.
fn print_diagnostics(path: &Path, errors: &[ConfigError], warnings: &[ConfigError]) {
    let count = |n: usize, what: &str| match n {
        1 => format!("1 {what}"),
        n => format!("{n} {what}s"),
    };
    let summary = match (errors.len(), warnings.len()) {
        (e, 0) => count(e, "error"),
        (0, w) => count(w, "warning"),
        (e, w) => format!("{}, {}", count(e, "error"), count(w, "warning")),
    };
    eprintln!("{}: {summary}", path.display());
    for e in errors {
        eprintln!("  error: {e}");
    }
    for w in warnings {
        eprintln!("  warning: {w}");
    }
}

/// `check-config`: exit 0 when valid (warnings are printed but pass), 1 on any error, and
/// 1 on any warning under `--strict`.
fn check_config(path: &Path, strict: bool) -> ExitCode {
    let (config, warnings) = match load_for(path, Purpose::Serve) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    if !warnings.is_empty() {
        print_diagnostics(path, &[], &warnings);
    }
    if strict && !warnings.is_empty() {
        eprintln!(
            "{}: refused: --strict treats warnings as errors",
            path.display()
        );
        return ExitCode::from(1);
    }
    println!(
        "{}: ok ({} route rules, default {})",
        path.display(),
        config.policy.len(),
        config.policy.default_label()
    );
    ExitCode::SUCCESS
}

/// Exit status when `policy explain` or `policy test` cannot give an answer at all.
const CANNOT_EXPLAIN: u8 = 3;

/// Loads a config for the policy commands (no secret required); exit 3 on errors.
fn load_policy_config(path: &Path) -> Result<Config, ExitCode> {
    load_for(path, Purpose::Policy)
        .map(|(config, _)| config)
        .map_err(|_| ExitCode::from(CANNOT_EXPLAIN))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn explain(args: &ExplainArgs) -> ExitCode {
    let config = match load_policy_config(&args.config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let identity = match (&args.roles, &args.token) {
        (Some(roles), _) => Identity::Roles(roles.clone()),
        (None, Some(token)) => Identity::Token(token.clone()),
        (None, None) => Identity::Anonymous,
    };
    match crate::explain::explain(&config, &args.method, &args.path, &identity, unix_now()) {
        Ok(explanation) => {
            if args.json {
                match serde_json::to_string_pretty(&explanation) {
                    Ok(json) => println!("{json}"),
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::from(CANNOT_EXPLAIN);
                    }
                }
            } else {
                print!("{}", explanation.text());
            }
            ExitCode::from(explanation.outcome.exit_code())
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(CANNOT_EXPLAIN)
        }
    }
}

/// `policy test FILE`: every mismatch, then a summary; exit 1 on any, 3 when the table or
/// the config cannot be read.
fn policy_test(config: &Path, file: &Path) -> ExitCode {
    let config = match load_policy_config(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let table: crate::explain::Table = match std::fs::read_to_string(file)
        .map_err(|e| e.to_string())
        .and_then(|text| toml::from_str(&text).map_err(|e| e.message().to_string()))
    {
        Ok(table) => table,
        Err(e) => {
            eprintln!("error: {}: {}", file.display(), e.trim());
            return ExitCode::from(CANNOT_EXPLAIN);
        }
    };
    let report = crate::explain::run_table(&config, &table, unix_now());
    for mismatch in &report.mismatches {
        println!("MISMATCH {mismatch}");
    }
    println!(
        "{}: {} cases, {} passed, {} mismatched",
        file.display(),
        report.cases,
        report.cases - report.mismatches.len(),
        report.mismatches.len()
    );
    if report.mismatches.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The runtime `serve` runs on: `server.workers` threads (0: one per core). With one worker
/// the scheduler is tokio's current-thread one, on the main thread: no work stealing, no
/// cross-thread wake-ups, which is what a one-core sidecar wants. Blocking work (argon2id,
/// sled) has its own threads either way.
fn runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        if workers > 0 {
            builder.worker_threads(workers);
        }
        builder
    };
    builder.enable_all().thread_name("gatehouse").build()
}

fn serve(path: &Path) -> ExitCode {
    let (config, warnings) = match load_for(path, Purpose::Serve) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    crate::logging::init(&config.log);
    crate::logging::config_warnings(&warnings);
    let rt = match runtime(config.server.workers) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let source = path.to_path_buf();
    rt.block_on(async move {
        match start(config, Some(source), |_| {}).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e}");
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// Builds the app, binds and serves until SIGTERM or SIGINT, reloading `source` (the
/// config file, if any) on SIGHUP and, with `server.watch_config`, when it changes.
/// `on_ready` is told the bound address before serving starts.
async fn start(
    config: Config,
    source: Option<PathBuf>,
    on_ready: impl FnOnce(&str),
) -> Result<(), StartError> {
    // Signals first: from here on SIGTERM drains and SIGHUP reloads, never kills, even
    // while the store is still opening.
    let shutdown = shutdown_signal();
    let hangups = Hangups::install();
    let app = App::start(config, Clock::System).await?;
    let listeners = Listeners::bind(&app)
        .await
        .map_err(|(addr, error)| StartError::Listen { addr, error })?;
    // The bound address, not the configured one: with port 0 this is how scripts and tests
    // learn where gatehouse listens.
    let bound = listeners.main.local_addr().map_or_else(
        |_| app.live.config.server.listen.to_string(),
        |a| a.to_string(),
    );
    let current = Current::new(app.clone(), source);
    current.spawn_triggers(hangups);
    tracing::info!(
        listen = %bound,
        upstream = %app.live.config.upstream.url.authority,
        tls = app.live.config.server.tls.is_some(),
        "gatehouse ready"
    );
    on_ready(&bound);
    server::run(current, listeners, shutdown).await;
    Ok(())
}

/// Completes on SIGTERM (Kubernetes) or SIGINT (Ctrl-C). The SIGTERM handler is installed
/// when this is called, not when the future is first polled: called before "gatehouse
/// ready" is logged, a SIGTERM sent by whoever saw that line drains instead of killing.
/// Must be called inside the runtime.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    async move {
        #[cfg(unix)]
        if let Some(mut term) = term {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn demo(args: &DemoArgs) -> ExitCode {
    let rt = match runtime(0) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let store = std::env::temp_dir().join(format!("gatehouse-demo-{}", std::process::id()));
    let code = rt.block_on(async {
        let upstream = match crate::demo::echo_upstream().await {
            Ok(addr) => addr,
            Err(e) => {
                eprintln!("error: cannot start the demo upstream: {e}");
                return ExitCode::FAILURE;
            }
        };
        let secret = match crate::token::random_token() {
            Ok(secret) => secret,
            Err(e) => {
                eprintln!("error: cannot generate a secret: {e}");
                return ExitCode::FAILURE;
            }
        };
        let text = crate::demo::demo_config(upstream, &store, &secret)
            .replace("127.0.0.1:8080", &args.listen);
        let loaded = Config::check(&text, std::env::vars(), Purpose::Serve);
        let config = match loaded.config {
            Ok(c) => c,
            Err(errors) => {
                eprintln!("error: demo config: {errors}");
                return ExitCode::FAILURE;
            }
        };
        crate::logging::init(&config.log);
        crate::logging::config_warnings(&loaded.warnings);
        let prefix = config.auth.prefix.clone();
        let banner = move |bound: &str| print_demo_banner(bound, upstream, &prefix);
        match start(config, None, banner).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    });
    let _ = std::fs::remove_dir_all(&store);
    code
}

/// The demo's welcome text, with the address gatehouse actually bound.
fn print_demo_banner(bound: &str, upstream: std::net::SocketAddr, p: &str) {
    let base = format!("http://{bound}");
    println!(
        "\ngatehouse demo: gatehouse on {base} in front of an echo upstream on {upstream}\n\
         Try:\n\
         \x20 curl -s {base}/public/hello\n\
         \x20 curl -s {base}/api/items                       # 401 TOKEN_MISSING\n\
         \x20 curl -s -XPOST {base}{p}/register -H 'content-type: application/json' \\\n\
         \x20      -d '{{\"email\":\"ada@example.com\",\"password\":\"correct horse battery\"}}'\n\
         \x20 TOKEN=$(curl -s -XPOST {base}{p}/login -H 'content-type: application/json' \\\n\
         \x20      -d '{{\"email\":\"ada@example.com\",\"password\":\"correct horse battery\"}}' | sed 's/.*\"access_token\":\"\\([^\"]*\\)\".*/\\1/')\n\
         \x20 curl -s {base}/api/items -H \"authorization: Bearer $TOKEN\"   # forwarded with X-Auth-* headers\n\
         \x20 curl -s -XPOST {base}/api/items -H \"authorization: Bearer $TOKEN\"   # 403: needs creator\n\
         \x20 curl -s {base}/metrics | grep gatehouse_requests_total\n\
         Ctrl-C stops it.\n"
    );
}
