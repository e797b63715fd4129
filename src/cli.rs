//! The command line (API.md §7). Parsing has no side effects; each command is a function
//! that returns the process exit code, so `main.rs` stays a few lines.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::app::{App, Clock, StartError};
use crate::config::Config;
use crate::server::{self, Listeners};

#[derive(Parser, Debug)]
#[command(
    name = "gatehouse",
    version,
    about = "An authentication sidecar: verifies tokens, enforces route policies, serves the auth endpoints."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Config file for the default `serve` command.
    #[arg(long, env = "GATEHOUSE_CONFIG", global = true)]
    pub config: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the sidecar (the default command).
    Serve,
    /// Validate a config file; print every error with its key; exit 1 on any.
    CheckConfig,
    /// Test route policies without deploying them.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Manage users directly in the store while the server is stopped.
    User {
        #[command(subcommand)]
        command: crate::usercli::UserCommand,
    },
    /// Run gatehouse in front of a demo echo upstream with an embedded config.
    Demo(DemoArgs),
    /// Work on the store itself: apply schema migrations, or copy every record into
    /// another store (sled to PostgreSQL and back).
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum StoreCommand {
    /// Apply pending schema migrations (ahead of a rollout) and print what was done. Safe
    /// while replicas run and while others migrate: migrations run one at a time under a lock.
    Migrate,
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
    /// Show which rule matches a request and the verdict.
    Explain {
        /// HTTP method, e.g. GET.
        method: String,
        /// Request path, e.g. /api/users/7 (normalised as the proxy would).
        path: String,
        /// Roles of the caller, comma-separated; omit for an anonymous caller.
        #[arg(long, value_delimiter = ',')]
        roles: Option<Vec<String>>,
    },
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Address gatehouse listens on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => match require_config(cli.config.as_deref()) {
            Ok(path) => serve(&path),
            Err(code) => code,
        },
        Command::CheckConfig => match require_config(cli.config.as_deref()) {
            Ok(path) => check_config(&path),
            Err(code) => code,
        },
        Command::Policy {
            command:
                PolicyCommand::Explain {
                    method,
                    path,
                    roles,
                },
        } => match require_config(cli.config.as_deref()) {
            Ok(config) => explain(&config, &method, &path, roles.as_deref()),
            Err(code) => code,
        },
        Command::User { command } => {
            match require_config(cli.config.as_deref()).and_then(|path| load_config(&path)) {
                Ok(config) => crate::usercli::run(config, command),
                Err(code) => code,
            }
        }
        Command::Demo(args) => demo(&args),
        Command::Store {
            command: StoreCommand::Migrate,
        } => match require_config(cli.config.as_deref()).and_then(|path| load_config(&path)) {
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

fn require_config(path: Option<&Path>) -> Result<PathBuf, ExitCode> {
    match path {
        Some(p) => Ok(p.to_path_buf()),
        None => {
            eprintln!("error: --config FILE is required (or set GATEHOUSE_CONFIG)");
            Err(ExitCode::from(2))
        }
    }
}

/// Loads a config or prints every error.
pub fn load_config(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|errors| {
        eprintln!("{}: {} error(s)", path.display(), errors.0.len());
        for e in &errors.0 {
            eprintln!("  {e}");
        }
        ExitCode::from(1)
    })
}

fn check_config(path: &Path) -> ExitCode {
    match load_config(path) {
        Ok(config) => {
            println!(
                "{}: ok ({} route rules, default {})",
                path.display(),
                config.policy.len(),
                config.policy.default_label()
            );
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

fn explain(config: &Path, method: &str, path: &str, roles: Option<&[String]>) -> ExitCode {
    let config = match load_config(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let normalized = match crate::path::normalize(path) {
        Ok(p) => p,
        Err(e) => {
            println!(
                "{method} {path}\n  refused before policy: 400 INVALID_REQUEST ({})",
                e.reason()
            );
            return ExitCode::SUCCESS;
        }
    };
    if normalized != path {
        println!("path normalised: {path} -> {normalized}");
    }
    println!(
        "{}",
        config
            .policy
            .explain(&method.to_ascii_uppercase(), &normalized, roles)
    );
    ExitCode::SUCCESS
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
    let config = match load_config(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    crate::logging::init(&config.log);
    let rt = match runtime(config.server.workers) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        match start(config, |_| {}).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e}");
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// Builds the app, binds and serves until SIGTERM or SIGINT.
/// `on_ready` is told the bound address before serving starts.
async fn start(config: Config, on_ready: impl FnOnce(&str)) -> Result<(), StartError> {
    let app = App::start(config, Clock::System).await?;
    let listeners = Listeners::bind(&app)
        .await
        .map_err(|(addr, error)| StartError::Listen { addr, error })?;
    // The bound address, not the configured one: with port 0 this is how scripts and tests
    // learn where gatehouse listens.
    let bound = listeners
        .main
        .local_addr()
        .map_or_else(|_| app.config.server.listen.to_string(), |a| a.to_string());
    tracing::info!(
        listen = %bound,
        upstream = %app.config.upstream.url.authority,
        tls = app.config.server.tls.is_some(),
        "gatehouse ready"
    );
    on_ready(&bound);
    server::run(app, listeners, shutdown_signal()).await;
    Ok(())
}

/// Completes on SIGTERM (Kubernetes) or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
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
        let config = match Config::from_toml(&text, std::env::vars()) {
            Ok(c) => c,
            Err(errors) => {
                eprintln!("error: demo config: {errors}");
                return ExitCode::FAILURE;
            }
        };
        crate::logging::init(&config.log);
        let prefix = config.auth.prefix.clone();
        let banner = move |bound: &str| print_demo_banner(bound, upstream, &prefix);
        match start(config, banner).await {
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
