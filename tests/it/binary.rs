//! The real binary (issue 2, points 1, 2, 3 and 7): `check-config`, `policy explain`,
//! `serve` with graceful shutdown on SIGTERM, and `demo`.

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::harness::{ROUTES, SECRET, base_config, gated_upstream, raw_exchange};

/// The binary with no `GATEHOUSE_*` variables inherited from whoever runs the tests: they
/// would override the files written here.
fn gatehouse() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_gatehouse"));
    for (name, _) in std::env::vars() {
        if name.starts_with("GATEHOUSE_") {
            command.env_remove(name);
        }
    }
    command
}

/// Runs the binary to completion, printing everything it said when `check` fails.
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = gatehouse();
    command.args(args).envs(env.iter().copied());
    command
        .output()
        .unwrap_or_else(|e| panic!("cannot run gatehouse {args:?}: {e}"))
}

fn describe(args: &[&str], out: &Output) -> String {
    format!(
        "gatehouse {args:?} exited {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn check_config_reports_every_bad_key_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write(
        dir.path(),
        "bad.toml",
        r#"
[server]
listen = "127.0.0.1:0"
trusted_proxies = ["10.0.0.0/33"]

[upstream]
url = "127.0.0.1:3000"
timeout = "soon"

[tokens]
secret = "too-short-secret"

[rate_limits]
login = "5 per minute"

[policy]
default = "maybe"

[[routes]]
path = "/a/[x]"
access = "public"

[[routes]]
path = "/b/**"
roles = ["ghost"]
"#,
    );
    let args = ["check-config", "--config", &bad];
    let out = run(&args, &[]);
    let all = describe(&args, &out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    for key in [
        "server.trusted_proxies[0]",
        "upstream.url",
        "upstream.timeout",
        "tokens.secret",
        "rate_limits.login",
        "policy.default",
        "routes[0]",
        "routes[1]",
    ] {
        assert!(stderr.contains(key), "no error for {key}:\n{all}");
    }
    assert!(
        !all.contains("too-short-secret"),
        "the secret was printed:\n{all}"
    );
}

#[test]
fn check_config_refuses_unknown_keys_and_env_typos() {
    let dir = tempfile::tempdir().unwrap();
    let good_text = base_config(dead(), &dir.path().join("store"), ROUTES);
    let typo = write(
        dir.path(),
        "typo.toml",
        &good_text.replace("[upstream]\n", "[upstream]\nurl_typo = \"x\"\n"),
    );
    let args = ["check-config", "--config", &typo];
    let out = run(&args, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&args, &out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("url_typo"),
        "{}",
        describe(&args, &out)
    );

    let good = write(dir.path(), "good.toml", &good_text);
    let args = ["check-config", "--config", &good];
    let out = run(&args, &[("GATEHOUSE_TOKEN_SECRET", "x")]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&args, &out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("GATEHOUSE_TOKEN_SECRET"),
        "{}",
        describe(&args, &out)
    );
    // An override that makes a good file bad is reported under its key.
    let out = run(&args, &[("GATEHOUSE_TOKENS_SECRET", "short")]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&args, &out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("tokens.secret"));
}

#[test]
fn check_config_accepts_a_good_file() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(
        dir.path(),
        "good.toml",
        &base_config(dead(), &dir.path().join("store"), ROUTES),
    );
    let args = ["check-config", "--config", &good];
    let out = run(&args, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&args, &out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ok"),
        "{}",
        describe(&args, &out)
    );
    // Without --config there is nothing to check.
    let out = run(&["check-config"], &[]);
    assert_ne!(out.status.code(), Some(0), "{}", describe(&[], &out));
    // The example config shipped with the project is valid as it stands, given a secret.
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml.example");
    if Path::new(example).exists() {
        let args = ["check-config", "--config", example];
        let out = run(
            &args,
            &[(
                "GATEHOUSE_TOKENS_SECRET",
                "an-example-secret-of-32-bytes-or-more",
            )],
        );
        assert_eq!(out.status.code(), Some(0), "{}", describe(&args, &out));
    }
}

/// A dozen mistakes in one file, errors and warnings together, one from the environment:
/// `check-config` prints every one, errors first, each under its key, and exits 1.
#[test]
fn check_config_golden_output() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "golden.toml",
        r#"
[server]
listen = "127.0.0.1:0"
admin_listn = "127.0.0.1:9090"
trusted_proxies = ["0.0.0.0/0", "::/0", "10.0.0.0/33"]
shutdown_timeout = "45s"
idle_timeout = "15 minutes"

[upstream]
url = "http://127.0.0.1:3000"
timeout = "0"

[tokens]
secret = "change-me-change-me-change-me-change-me-0000"
refresh_ttl = "1000d"

[auth]
registration = "maybe"

[auth.lockout]
window = "1h 30m"

[rate_limits]
login = "5 per minute"

[policy]
default = "public"

[[routes]]
name = "public"
path = "/public/**"
access = "public"

[[routes]]
name = "public"
path = "/api/**"
acess = "deny"
"#,
    );
    let args = ["check-config", "--config", &file];
    let out = run(&args, &[("GATEHOUSE_AUTH_EXPOSE_DEBUG_TOKENS", "true")]);
    let all = describe(&args, &out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "", "{all}");
    let expected = r#"FILE: 11 errors, 5 warnings
  error: server.trusted_proxies[2]: "10.0.0.0/33" is not a CIDR like 10.0.0.0/8
  error: server.idle_timeout: "15 minutes" is not a duration: write whole numbers with a unit (d, h, m, s or ms) and no spaces, like "900ms", "15m", "1h30m" or "30d"
  error: server.admin_listn: unknown key; did you mean server.admin_listen?
  error: upstream.timeout: 0 is out of range: must be between 100ms and 1h
  error: tokens.refresh_ttl: 1000d is out of range: must be between 1m and 365d
  error: auth.registration: "maybe" is not open or closed
  error: auth.lockout.window: "1h 30m" is not a duration: write whole numbers with a unit (d, h, m, s or ms) and no spaces, like "900ms", "15m", "1h30m" or "30d"
  error: routes[1].acess: unknown key; did you mean routes[1].access?
  error: rate_limits.login: invalid rate "5 per minute": expected COUNT/PERIOD such as "5/15m", or "0" for no limit
  error: routes[1]: set `access` (public, authenticated or deny) or a non-empty `roles` list
  error: routes[1].name: `public` is already the name of routes[0]; names must be unique
  warning: server.trusted_proxies: 0.0.0.0/0 and ::/0 trust every peer: any client can set X-Forwarded-For and pick the address that rate limits, lockouts and audit events see; list your proxies' own ranges
  warning: server.shutdown_timeout: 45s is longer than the 30s grace period Kubernetes gives a pod by default: the drain is cut short by SIGKILL; shorten it or raise terminationGracePeriodSeconds above it
  warning: tokens.secret: is an example placeholder, which anyone who read the example can use to mint tokens; generate one with `openssl rand -base64 48`
  warning: GATEHOUSE_AUTH_EXPOSE_DEBUG_TOKENS (auth.expose_debug_tokens): is on: reset and verification tokens appear in API responses and forgot-password reveals which addresses have accounts; development only
  warning: policy.default: is public: every path no rule names is forwarded without a token, including paths the upstream adds later; name public paths in [[routes]] and keep the default deny
"#;
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).replace(&file, "FILE"),
        expected,
        "{all}"
    );
}

/// Warnings alone pass (exit 0, printed on stderr) unless `--strict`.
#[test]
fn check_config_warnings_pass_unless_strict() {
    let dir = tempfile::tempdir().unwrap();
    let text = base_config(dead(), &dir.path().join("store"), ROUTES)
        .replace("[log]\n", "[auth]\nexpose_debug_tokens = true\n\n[log]\n");
    let file = write(dir.path(), "risky.toml", &text);
    let args = ["check-config", "--config", &file];
    let out = run(&args, &[]);
    let all = describe(&args, &out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("1 warning\n"), "{all}");
    assert!(
        stderr.contains("warning: auth.expose_debug_tokens: is on"),
        "{all}"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(": ok ("),
        "{all}"
    );

    let args = ["check-config", "--config", &file, "--strict"];
    let out = run(&args, &[]);
    let all = describe(&args, &out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--strict"),
        "{all}"
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "", "{all}");
}

#[test]
fn policy_explain_prints_the_rule_and_the_verdict() {
    let dir = tempfile::tempdir().unwrap();
    // No tokens.secret: explaining needs none.
    let text = base_config(dead(), &dir.path().join("store"), ROUTES)
        .replace(&format!("secret = \"{SECRET}\""), "");
    let config = write(dir.path(), "policy.toml", &text);
    // (arguments, exit code, what the output must say)
    let cases: &[(&[&str], i32, &[&str])] = &[
        (
            &["GET", "/api/admin/users", "--roles", "creator"],
            1,
            &["routes[1]", "DENY 403"],
        ),
        (
            &["GET", "/api/admin/users", "--roles", "admin"],
            0,
            &["routes[1]", "ALLOW"],
        ),
        // Inheritance: admin holds creator, which the write rule asks for.
        (
            &["POST", "/api/items", "--roles", "admin"],
            0,
            &["routes[2]", "ALLOW", "creator"],
        ),
        // The server answers 400 to a lower-case method, so explain refuses it too.
        (
            &["delete", "/api/items/1", "--roles", "reader"],
            2,
            &["REFUSED 400 INVALID_REQUEST", "upper-case"],
        ),
        (
            &["GET", "/api/items"],
            1,
            &["routes[3]", "anonymous", "DENY 401 TOKEN_MISSING"],
        ),
        // GET rules cover HEAD; the writes rule does not.
        (
            &["HEAD", "/api/items", "--roles", "reader"],
            0,
            &["routes[3]", "ALLOW"],
        ),
        (
            &["GET", "/blocked/x", "--roles", "admin"],
            1,
            &["routes[4]", "DENY 403"],
        ),
        (
            &["GET", "/nowhere"],
            1,
            &["no rule matched", "deny", "DENY 403"],
        ),
        // The path is normalised first, as the proxy would.
        (
            &["GET", "/public/../api/admin/x", "--roles", "reader"],
            1,
            &["/api/admin/x", "routes[1]", "DENY 403"],
        ),
        (&["GET", "/public/a%2Fb"], 2, &["REFUSED 400"]),
        (
            &["POST", "/api/items", "--roles", "ghost"],
            1,
            &["not known", "ghost", "DENY 403"],
        ),
        // Served by gatehouse itself, never forwarded.
        (&["POST", "/auth/login"], 0, &["SERVED", "auth:/login"]),
        // The query is not part of the path; a method override in it is refused.
        (
            &["GET", "/api/x?token=abc", "--roles", "reader"],
            0,
            &["path:    /api/x", "ALLOW"],
        ),
        (
            &["GET", "/api/x?_method=DELETE", "--roles", "reader"],
            2,
            &["REFUSED 400", "Method-override query parameters"],
        ),
    ];
    for (args, code, expected) in cases {
        let mut full = vec!["policy", "explain", "--config", config.as_str()];
        full.extend_from_slice(args);
        let out = run(&full, &[]);
        let all = describe(&full, &out);
        assert_eq!(out.status.code(), Some(*code), "{all}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        for want in *expected {
            assert!(stdout.contains(want), "no {want:?} in:\n{all}");
        }
    }

    // --json for scripts.
    let full = [
        "policy",
        "explain",
        "--config",
        &config,
        "GET",
        "/api/ADMIN/x?page=2",
        "--json",
    ];
    let out = run(&full, &[]);
    let all = describe(&full, &out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect(&all);
    assert_eq!(json["outcome"], "deny", "{all}");
    assert_eq!(json["status"], 401, "{all}");
    assert_eq!(json["code"], "TOKEN_MISSING", "{all}");
    assert_eq!(json["path"], "/api/ADMIN/x", "{all}");
    // Both spellings answer 401; on a tie the exact path's rule labels the request.
    assert_eq!(json["route"], "/api/**", "{all}");

    // A token needs the key; without one, say so (exit 3), never guess.
    let full = [
        "policy", "explain", "--config", &config, "GET", "/api/x", "--token", "a.b.c",
    ];
    let out = run(&full, &[]);
    let all = describe(&full, &out);
    assert_eq!(out.status.code(), Some(3), "{all}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--token needs the signing key"),
        "{all}"
    );
    // With the key, a forged token is refused as the proxy refuses it.
    let out = run(&full, &[("GATEHOUSE_TOKENS_SECRET", SECRET)]);
    let all = describe(&full, &out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("DENY 401 TOKEN_INVALID"),
        "{all}"
    );
}

#[test]
fn policy_test_runs_a_table_and_reports_every_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "policy.toml",
        &base_config(dead(), &dir.path().join("store"), ROUTES),
    );
    let good = write(
        dir.path(),
        "good.toml",
        r#"
[[case]]
method = "GET"
path = "/public/hello?x=1"
expect = "allow"

[[case]]
method = "POST"
path = "/api/items"
roles = ["reader"]
expect = "deny"
status = 403

[[case]]
method = "get"
path = "/api/items"
expect = "refused"

[[case]]
method = "POST"
path = "/auth/login"
expect = "served"
"#,
    );
    let full = ["policy", "test", "--config", &config, &good];
    let out = run(&full, &[]);
    let all = describe(&full, &out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("4 cases, 4 passed, 0 mismatched"),
        "{all}"
    );

    let bad = write(
        dir.path(),
        "bad.toml",
        r#"
[[case]]
method = "GET"
path = "/api/items"
expect = "allow"

[[case]]
method = "GET"
path = "/public/x"
expect = "allow"

[[case]]
method = "DELETE"
path = "/api/items/1"
roles = ["creator"]
expect = "deny"
"#,
    );
    let full = ["policy", "test", "--config", &config, &bad];
    let out = run(&full, &[]);
    let all = describe(&full, &out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("MISMATCH case[0] GET /api/items: expected allow, got deny 401"),
        "{all}"
    );
    assert!(
        stdout.contains(
            "MISMATCH case[2] DELETE /api/items/1 as [creator]: expected deny, got allow"
        ),
        "{all}"
    );
    assert!(stdout.contains("3 cases, 1 passed, 2 mismatched"), "{all}");

    // A table with a typo is an error, not a silently skipped case.
    let typo = write(
        dir.path(),
        "typo.toml",
        "[[case]]\nmethod = \"GET\"\npath = \"/\"\nexpect = \"allow\"\nrole = [\"x\"]\n",
    );
    let full = ["policy", "test", "--config", &config, &typo];
    let out = run(&full, &[]);
    assert_eq!(out.status.code(), Some(3), "{}", describe(&full, &out));
}

/// Every subcommand describes its own --config, every option has a description, required
/// flags look required, and `demo` refuses flags it would ignore.
#[test]
fn help_is_per_command_and_flags_are_honest() {
    let help = |args: &[&str]| {
        let out = run(args, &[]);
        assert_eq!(out.status.code(), Some(0), "{}", describe(args, &out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let check = help(&["check-config", "-h"]);
    assert!(check.contains("Config file to check"), "{check}");
    assert!(check.contains("--strict"), "{check}");
    let explain = help(&["policy", "explain", "-h"]);
    assert!(
        explain.contains("Config file whose policy decides"),
        "{explain}"
    );
    let add = help(&["user", "add", "-h"]);
    assert!(
        add.contains("--email <EMAIL> [--username <USERNAME>]") || add.contains("--password-stdin"),
        "{add}"
    );
    // Required flags are not shown in brackets in the usage line.
    let usage = add
        .lines()
        .find(|l| l.starts_with("Usage:"))
        .unwrap_or_default();
    assert!(
        usage.contains(" --password-stdin") && !usage.contains("[--password-stdin]"),
        "{add}"
    );
    let others: Vec<String> = [
        &["-h"][..],
        &["serve", "-h"],
        &["demo", "-h"],
        &["policy", "test", "-h"],
        &["user", "list", "-h"],
        &["user", "set-roles", "-h"],
        &["user", "lock", "-h"],
        &["store", "migrate", "-h"],
        &["store", "copy", "-h"],
    ]
    .iter()
    .map(|args| help(args))
    .collect();
    for text in [&check, &explain, &add].into_iter().chain(others.iter()) {
        assert!(!text.contains("default `serve` command"), "{text}");
        // In short help (-h) a described option has its text on the same line.
        for line in text.lines().filter(|l| l.trim_start().starts_with("--")) {
            assert!(
                line.trim().contains("  "),
                "undescribed option: {line:?} in\n{text}"
            );
        }
    }

    for args in [
        &["demo", "--config", "x.toml"][..],
        &["--config", "x.toml", "demo"][..],
        &[
            "--config", "x.toml", "store", "copy", "--from", "a", "--to", "b",
        ][..],
    ] {
        let out = run(args, &[]);
        assert_eq!(out.status.code(), Some(2), "{}", describe(args, &out));
    }
    // user add without --password-stdin is a usage error before anything is opened.
    let out = run(
        &[
            "user",
            "add",
            "--config",
            "x.toml",
            "--email",
            "a@example.com",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{}", describe(&[], &out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--password-stdin"));
}

/// A child process that is killed if the test fails before it exits.
struct Running {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    said: Vec<String>,
}

impl Running {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Running {
        let mut command = gatehouse();
        command
            .env("GATEHOUSE_LOG_FORMAT", "json")
            .env("GATEHOUSE_LOG_LEVEL", "info")
            .envs(env.iter().copied());
        Running::spawn(command, args)
    }

    /// Runs `command` with `args`, its environment as the caller set it.
    fn spawn(mut command: Command, args: &[&str]) -> Running {
        command
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        // Plain threads: the pipes are blocking, and they are drained to the end so the
        // child never blocks on a full pipe. Both feed one channel, so a failure can show
        // everything the child said.
        fn forward(pipe: impl std::io::Read + Send + 'static, tx: mpsc::UnboundedSender<String>) {
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    // Once the test has stopped listening, the rest is discarded.
                    let _ = tx.send(line);
                }
            });
        }
        forward(stdout, tx.clone());
        forward(stderr, tx);
        Running {
            child,
            lines,
            said: Vec::new(),
        }
    }

    /// Reads log lines until the "gatehouse ready" line, and returns the bound address.
    async fn ready_addr(&mut self) -> SocketAddr {
        let wait = async {
            while let Some(line) = self.lines.recv().await {
                self.said.push(line.clone());
                let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                if event["message"] == "gatehouse ready" {
                    return event["listen"].as_str().and_then(|a| a.parse().ok());
                }
            }
            None
        };
        // A safety net for a child that never starts; the normal path polls, never sleeps.
        let addr = tokio::time::timeout(Duration::from_secs(60), wait).await;
        match addr {
            Ok(Some(addr)) => addr,
            _ => panic!(
                "gatehouse never said it was ready; it said:\n{}",
                self.said.join("\n")
            ),
        }
    }

    fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM failed");
    }

    fn still_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Everything the process said, once it has exited and its pipes have closed.
    async fn all_output(&mut self) -> String {
        while let Some(line) = self.lines.recv().await {
            self.said.push(line);
        }
        self.said.join("\n")
    }

    /// Waits for the process to exit and returns its exit code.
    async fn exit_code(&mut self) -> Option<i32> {
        for _ in 0..3000 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("gatehouse did not exit within 30s of SIGTERM");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls `/healthz` until it answers 200.
async fn wait_healthy(addr: SocketAddr) {
    for _ in 0..1000 {
        let probe = async {
            let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: gh\r\nConnection: close\r\n\r\n")
                .await
                .ok()?;
            let mut answer = Vec::new();
            stream.read_to_end(&mut answer).await.ok()?;
            Some(answer.starts_with(b"HTTP/1.1 200"))
        };
        if probe.await == Some(true) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{addr}/healthz never answered 200");
}

/// Polls until new connections are refused: the listener has closed.
async fn wait_until_refused(addr: SocketAddr) {
    for _ in 0..1000 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{addr} still accepts connections");
}

/// An address where nothing listens.
fn dead() -> SocketAddr {
    crate::harness::dead_addr()
}

#[tokio::test]
async fn serve_drains_in_flight_requests_on_sigterm_and_exits_0() {
    let (upstream, mut gate) = gated_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "serve.toml",
        &base_config(upstream, &dir.path().join("store"), ROUTES),
    );
    let mut gh = Running::start(&["serve", "--config", &config], &[]);
    let addr = gh.ready_addr().await;
    wait_healthy(addr).await;

    let in_flight = tokio::spawn(async move {
        raw_exchange(
            addr,
            b"GET /public/slow HTTP/1.1\r\nHost: gh\r\nConnection: close\r\n\r\n",
        )
        .await
    });
    gate.arrived().await;

    gh.terminate();
    // The listener closes at once, but the process waits for the request in flight.
    wait_until_refused(addr).await;
    assert!(gh.still_running(), "exited with a request in flight");

    gate.release_one();
    let r = in_flight.await.unwrap();
    r.expect(200);
    assert_eq!(r.text(), "done");
    assert_eq!(gh.exit_code().await, Some(0));
}

#[tokio::test]
async fn serve_exits_0_at_the_drain_deadline_with_a_request_stuck() {
    let (upstream, mut gate) = gated_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "serve.toml",
        &base_config(upstream, &dir.path().join("store"), ROUTES),
    );
    let mut gh = Running::start(
        &["serve", "--config", &config],
        &[("GATEHOUSE_SERVER_SHUTDOWN_TIMEOUT", "300ms")],
    );
    let addr = gh.ready_addr().await;
    wait_healthy(addr).await;

    let in_flight = crate::harness::request_in_flight(addr, "/public/stuck");
    gate.arrived().await;

    let started = std::time::Instant::now();
    gh.terminate();
    assert_eq!(gh.exit_code().await, Some(0));
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(300), "exited after {took:?}");
    // The stuck client sees its connection closed, not an answer.
    let answer = in_flight.await.unwrap();
    assert!(
        !answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
}

/// The first-run command of the README: a demo upstream, a temp store, gatehouse in front.
#[tokio::test]
async fn demo_serves_and_stops_cleanly() {
    let mut gh = Running::start(&["demo", "--listen", "127.0.0.1:0"], &[]);
    let addr = gh.ready_addr().await;
    wait_healthy(addr).await;
    let r = raw_exchange(
        addr,
        b"GET /public/hello HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n",
    )
    .await;
    r.expect(200);
    assert_eq!(r.json()["path"], "/public/hello");
    let r = raw_exchange(
        addr,
        b"GET /api/items HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n",
    )
    .await;
    r.expect_error(401, "TOKEN_MISSING");
    gh.terminate();
    assert_eq!(gh.exit_code().await, Some(0));
}

/// Point 9: logs carry request ids and outcomes, never tokens or the secret, even at debug
/// level with access logging on.
#[tokio::test]
async fn serve_logs_never_contain_tokens_or_secrets() {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let upstream = gatehouse::demo::echo_upstream().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "serve.toml",
        &base_config(upstream, &dir.path().join("store"), ROUTES),
    );
    let mut gh = Running::start(
        &["serve", "--config", &config],
        &[
            ("GATEHOUSE_LOG_LEVEL", "debug"),
            ("GATEHOUSE_LOG_ACCESS", "true"),
        ],
    );
    let addr = gh.ready_addr().await;
    wait_healthy(addr).await;

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "sub": "u1", "email": "u1@example.com", "roles": ["reader"], "email_verified": true,
        "iss": "gatehouse", "aud": "api", "iat": now, "nbf": now, "exp": now + 600,
        "jti": "0190a0a0-0000-7000-8000-000000000001", "sid": "s1", "token_use": "access",
    });
    let mut header = Header::new(Algorithm::HS256);
    header.typ = Some("at+jwt".into());
    let valid = jsonwebtoken::encode(
        &header,
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let forged = jsonwebtoken::encode(
        &header,
        &claims,
        &EncodingKey::from_secret(b"some-other-secret-0123456789abcdef"),
    )
    .unwrap();
    for (token, path, status) in [
        (valid.as_str(), "/api/items", 200),
        (valid.as_str(), "/blocked/x", 403),
        (forged.as_str(), "/api/items", 401),
        (forged.as_str(), "/public/x", 401),
    ] {
        let r = raw_exchange(
            addr,
            format!(
                "GET {path} HTTP/1.1\r\nHost: gh\r\nAuthorization: Bearer {token}\r\n\
                 X-Request-Id: log-test-{status}\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
        r.expect(status);
    }
    gh.terminate();
    assert_eq!(gh.exit_code().await, Some(0));
    let logs = gh.all_output().await;
    assert!(
        logs.contains("log-test-200") && logs.contains("log-test-401"),
        "requests were not logged with their ids:\n{logs}"
    );
    for (what, secret) in [
        ("the valid token", valid.as_str()),
        ("the forged token", forged.as_str()),
        (
            "the signature of the valid token",
            valid.rsplit('.').next().unwrap(),
        ),
        ("the signing secret", SECRET),
    ] {
        assert!(!logs.contains(secret), "{what} reached the logs:\n{logs}");
    }
}

/// Issue 11, point 4: the pretty format into a pipe is plain text, no ANSI colour codes;
/// and point 2: `serve` logs at start the same warnings `check-config` prints.
#[tokio::test]
async fn serve_logs_plain_text_and_its_warnings_into_a_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let text = base_config(dead(), &dir.path().join("store"), ROUTES)
        .replace("[log]\n", "[auth]\nexpose_debug_tokens = true\n\n[log]\n");
    let config = write(dir.path(), "pretty.toml", &text);
    let mut gh = Running::start(
        &["serve", "--config", &config],
        &[
            ("GATEHOUSE_LOG_FORMAT", "pretty"),
            ("GATEHOUSE_LOG_LEVEL", "info"),
        ],
    );
    let ready = async {
        while let Some(line) = gh.lines.recv().await {
            let addr = line
                .contains("gatehouse ready")
                .then(|| {
                    line.split("listen=")
                        .nth(1)?
                        .split_whitespace()
                        .next()?
                        .parse()
                        .ok()
                })
                .flatten();
            gh.said.push(line);
            if addr.is_some() {
                return addr;
            }
        }
        None
    };
    // A safety net for a child that never starts; the normal path reads lines as they come.
    let addr: SocketAddr = tokio::time::timeout(Duration::from_secs(60), ready)
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("never ready:\n{}", gh.said.join("\n")));
    // Serving (and so handling SIGTERM) once it answers.
    wait_healthy(addr).await;
    gh.terminate();
    assert_eq!(gh.exit_code().await, Some(0));
    let logs = gh.all_output().await;
    assert!(
        !logs.contains('\u{1b}'),
        "ANSI escape codes in a pipe:\n{logs:?}"
    );
    assert!(
        logs.contains("risky setting: is on: reset and verification tokens")
            && logs.contains("auth.expose_debug_tokens"),
        "the warning was not logged at start:\n{logs}"
    );
}

/// Issue 11, point 7: a password the policy refuses is explained in a whole sentence.
#[test]
fn user_add_explains_a_weak_password_in_a_sentence() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "users.toml",
        &base_config(dead(), &dir.path().join("store"), ROUTES),
    );
    let mut child = gatehouse()
        .args([
            "user",
            "add",
            "--config",
            &config,
            "--email",
            "ada@example.com",
            "--password-stdin",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"short\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let all = describe(&["user", "add"], &out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "error: The password must be at least 8 characters long.",
        "{all}"
    );
}

/// A policy for the reload tests: `/flip/**` is denied, or public once flipped.
fn flip_policy(open: bool) -> String {
    let access = if open { "public" } else { "deny" };
    format!("{ROUTES}\n[[routes]]\npath = \"/flip/**\"\naccess = \"{access}\"\n")
}

/// Sends `signal` (`-HUP`, `-TERM`) to the child.
fn signal(gh: &Running, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &gh.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {signal} failed");
}

/// One request on a new connection; the status.
async fn status_of(addr: SocketAddr, path: &str) -> u16 {
    let request = format!("GET {path} HTTP/1.1\r\nHost: gh\r\nConnection: close\r\n\r\n");
    raw_exchange(addr, request.as_bytes()).await.status.as_u16()
}

/// The metrics text.
async fn metrics_of(addr: SocketAddr) -> String {
    raw_exchange(
        addr,
        b"GET /metrics HTTP/1.1\r\nHost: gh\r\nConnection: close\r\n\r\n",
    )
    .await
    .text()
}

/// Polls until `done` holds for the metrics text (a reload has been counted), with a
/// generous deadline for a loaded machine; panics with the last text otherwise.
async fn wait_for_metrics(addr: SocketAddr, done: impl Fn(&str) -> bool) -> String {
    let mut text = String::new();
    for _ in 0..3000 {
        text = metrics_of(addr).await;
        if done(&text) {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the metrics never showed the reload:\n{text}");
}

fn reloads(text: &str, result: &str) -> u64 {
    let series = format!("gatehouse_config_reloads_total{{result=\"{result}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(series.as_str())?.parse().ok())
        .unwrap_or(0)
}

/// A request on an open keep-alive connection; the status.
async fn on_connection(stream: &mut tokio::net::TcpStream, path: &str) -> u16 {
    use tokio::io::AsyncWriteExt;
    let request = format!("GET {path} HTTP/1.1\r\nHost: gh\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let read = crate::harness::read_response(stream, false);
    let (status, _, _) = tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("no answer on the kept-alive connection")
        .expect("the kept-alive connection failed");
    status.as_u16()
}

/// Issue 11, point 1: SIGHUP reloads the policy without dropping a connection, refuses a
/// broken file whole (logging its errors and keeping the old policy), names keys that need
/// a restart, counts every attempt, and never ends the process.
#[tokio::test]
async fn sighup_reloads_the_config_and_never_kills() {
    let upstream = gatehouse::demo::echo_upstream().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let config = write(
        dir.path(),
        "serve.toml",
        &base_config(upstream, &store, &flip_policy(false)),
    );
    let mut gh = Running::start(&["serve", "--config", &config], &[]);
    let addr = gh.ready_addr().await;
    wait_healthy(addr).await;
    let text = metrics_of(addr).await;
    assert_eq!(
        (reloads(&text, "ok"), reloads(&text, "error")),
        (0, 0),
        "{text}"
    );

    // A connection kept alive across the reload.
    let mut kept = tokio::net::TcpStream::connect(addr).await.unwrap();
    assert_eq!(on_connection(&mut kept, "/flip/x").await, 403);

    // The policy opens /flip/**; the upstream timeout (a restart key) changes too.
    let opened = base_config(upstream, &store, &flip_policy(true))
        .replace("timeout = \"5s\"", "timeout = \"7s\"");
    write(dir.path(), "serve.toml", &opened);
    signal(&gh, "-HUP");
    wait_for_metrics(addr, |t| reloads(t, "ok") == 1).await;
    assert_eq!(status_of(addr, "/flip/x").await, 200);
    // The same connection, still open, sees the new policy on its next request.
    assert_eq!(on_connection(&mut kept, "/flip/x").await, 200);
    assert_eq!(on_connection(&mut kept, "/blocked/x").await, 403);

    // A broken file: an unknown key, a bad duration, and a route that would close /flip.
    let broken = base_config(upstream, &store, &flip_policy(false))
        .replace(
            "[log]\n",
            "[server.tls]\nreload_intreval = \"1s\"\n\n[log]\n",
        )
        .replace("timeout = \"5s\"", "timeout = \"five seconds\"");
    write(dir.path(), "serve.toml", &broken);
    signal(&gh, "-HUP");
    let text = wait_for_metrics(addr, |t| reloads(t, "error") == 1).await;
    assert_eq!(reloads(&text, "ok"), 1, "{text}");
    // The running policy stays; the process keeps serving, on the old connection too.
    assert_eq!(status_of(addr, "/flip/x").await, 200);
    assert_eq!(on_connection(&mut kept, "/flip/x").await, 200);
    // More signals in a row: still no exit.
    signal(&gh, "-HUP");
    wait_for_metrics(addr, |t| reloads(t, "error") >= 2).await;
    signal(&gh, "-HUP");
    signal(&gh, "-HUP");
    wait_healthy(addr).await;
    assert!(gh.still_running(), "SIGHUP ended the process");

    signal(&gh, "-TERM");
    assert_eq!(gh.exit_code().await, Some(0));
    let logs = gh.all_output().await;
    for expected in [
        "config reloaded: ",
        "needs a restart: upstream.timeout",
        "config reload refused",
        "server.tls.reload_intreval",
        "upstream.timeout: \\\"five seconds\\\" is not a duration",
        "the running config stays in force",
    ] {
        assert!(
            logs.contains(expected),
            "the log lacks {expected:?}:\n{logs}"
        );
    }
}

/// Issue 11, point 1: with `watch_config = true`, a Kubernetes-style ConfigMap update (a
/// new timestamped directory, the `..data` symlink swapped to it, `config.toml` a link
/// through `..data`) applies without a signal.
#[tokio::test]
async fn watch_config_follows_a_configmap_symlink_swap() {
    use std::os::unix::fs::symlink;
    let upstream = gatehouse::demo::echo_upstream().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let mount = dir.path().join("config");
    let version = |name: &str, open: bool| {
        let path = mount.join(name);
        std::fs::create_dir_all(&path).unwrap();
        // The second version also turns debug logging on.
        let level = if open { "debug" } else { "info" };
        let text = base_config(upstream, &store, &flip_policy(open))
            .replace("[server]\n", "[server]\nwatch_config = true\n")
            .replace("level = \"warn\"", &format!("level = \"{level}\""));
        std::fs::write(path.join("config.toml"), text).unwrap();
    };
    version("..2026_12_01_00_00_00.1", false);
    symlink("..2026_12_01_00_00_00.1", mount.join("..data")).unwrap();
    symlink("..data/config.toml", mount.join("config.toml")).unwrap();
    let config = mount.join("config.toml");
    // The level comes from the file (no GATEHOUSE_LOG_LEVEL), so the reload can change it.
    let mut command = gatehouse();
    command.env("GATEHOUSE_LOG_FORMAT", "json");
    let mut gh = Running::spawn(command, &["serve", "--config", config.to_str().unwrap()]);
    let addr = gh.ready_addr().await;
    wait_healthy(addr).await;
    assert_eq!(status_of(addr, "/flip/x").await, 403);
    // A refusal is logged at debug: not yet.
    let refused = |id: &str| {
        format!(
            "GET /blocked/x HTTP/1.1\r\nHost: gh\r\nX-Request-Id: {id}\r\nConnection: close\r\n\r\n"
        )
    };
    raw_exchange(addr, refused("before-reload").as_bytes())
        .await
        .expect(403);

    // As the kubelet does it: write the new version beside the old, point a new link at
    // it, and rename that link over `..data` (one atomic step), then remove the old one.
    version("..2026_12_01_00_05_00.2", true);
    symlink("..2026_12_01_00_05_00.2", mount.join("..data_tmp")).unwrap();
    std::fs::rename(mount.join("..data_tmp"), mount.join("..data")).unwrap();
    std::fs::remove_dir_all(mount.join("..2026_12_01_00_00_00.1")).unwrap();

    let text = wait_for_metrics(addr, |t| reloads(t, "ok") == 1).await;
    assert_eq!(reloads(&text, "error"), 0, "{text}");
    assert_eq!(status_of(addr, "/flip/x").await, 200);
    raw_exchange(addr, refused("after-reload").as_bytes())
        .await
        .expect(403);
    signal(&gh, "-TERM");
    assert_eq!(gh.exit_code().await, Some(0));
    let logs = gh.all_output().await;
    assert!(
        logs.contains("file changed")
            && logs.contains("config reloaded: policy changed, log.level info → debug"),
        "{logs}"
    );
    // The new level is in force: the refusal after the reload is logged at debug, the one
    // before it was not.
    assert!(
        logs.contains("after-reload") && !logs.contains("before-reload"),
        "{logs}"
    );
}
