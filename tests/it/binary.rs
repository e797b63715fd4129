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

#[test]
fn policy_explain_prints_the_rule_and_the_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "policy.toml",
        &base_config(dead(), &dir.path().join("store"), ROUTES),
    );
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["GET", "/api/admin/users", "--roles", "creator"],
            &["routes[1]", "DENY 403"],
        ),
        (
            &["GET", "/api/admin/users", "--roles", "admin"],
            &["routes[1]", "ALLOW"],
        ),
        // Inheritance: admin holds creator, which the write rule asks for.
        (
            &["POST", "/api/items", "--roles", "admin"],
            &["routes[2]", "ALLOW", "creator"],
        ),
        (
            &["delete", "/api/items/1", "--roles", "reader"],
            &["routes[2]", "DENY 403"],
        ),
        (
            &["GET", "/api/items"],
            &["routes[3]", "anonymous", "DENY 401"],
        ),
        // GET rules cover HEAD; the writes rule does not.
        (
            &["HEAD", "/api/items", "--roles", "reader"],
            &["routes[3]", "ALLOW"],
        ),
        (
            &["GET", "/blocked/x", "--roles", "admin"],
            &["routes[4]", "DENY 403"],
        ),
        (
            &["GET", "/nowhere"],
            &["no rule matched", "deny", "DENY 403"],
        ),
        // The path is normalised first, as the proxy would.
        (
            &["GET", "/public/../api/admin/x", "--roles", "reader"],
            &["/api/admin/x", "routes[1]", "DENY 403"],
        ),
        (&["GET", "/public/a%2Fb"], &["400"]),
        (
            &["POST", "/api/items", "--roles", "ghost"],
            &["not known", "ghost", "DENY 403"],
        ),
    ];
    for (args, expected) in cases {
        let mut full = vec!["policy", "explain", "--config", config.as_str()];
        full.extend_from_slice(args);
        let out = run(&full, &[]);
        let all = describe(&full, &out);
        assert_eq!(out.status.code(), Some(0), "{all}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        for want in *expected {
            assert!(stdout.contains(want), "no {want:?} in:\n{all}");
        }
    }
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
            .args(args)
            .env("GATEHOUSE_LOG_FORMAT", "json")
            .env("GATEHOUSE_LOG_LEVEL", "info")
            .envs(env.iter().copied())
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
