//! The real binary: acknowledged writes survive SIGKILL, and `gatehouse user …` works on a
//! stopped store and refuses (changing nothing) while a server holds it.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use http::Method;
use serde_json::json;

use crate::harness::SECRET;

const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");
const PASSWORD: &str = "correct horse battery";

/// A config file for the binary, in `dir`.
fn write_config(dir: &Path, upstream: SocketAddr) -> std::path::PathBuf {
    let path = dir.join("gatehouse.toml");
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
[upstream]
url = "http://{upstream}"
[store]
path = "{store}"
[tokens]
secret = "{SECRET}"
[auth.password]
memory_kib = 1024
iterations = 1
parallelism = 1
[rate_limits]
register = "0"
login = "0"
[roles]
admin = {{ inherits = ["reader"] }}
[[routes]]
path = "/api/**"
access = "authenticated"
[log]
format = "json"
level = "info"
"#,
        store = dir.join("store").display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// A running `gatehouse serve`, its address read from its own "ready" log line.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn start(config: &Path) -> Server {
        let mut child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(config)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            let Some(Ok(line)) = lines.next() else {
                let mut err = String::new();
                let _ = std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err);
                panic!("gatehouse exited before it was ready: {err}");
            };
            if let Ok(event) = serde_json::from_str::<serde_json::Value>(&line)
                && event["message"] == "gatehouse ready"
            {
                break event["listen"].as_str().unwrap().parse().unwrap();
            }
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server { child, addr }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn post(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    use http_body_util::{BodyExt, Full};
    let client: hyper_util::client::legacy::Client<_, Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let mut request = http::Request::builder()
        .method(Method::POST)
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/json");
    if let Some(t) = token {
        request = request.header("authorization", format!("Bearer {t}"));
    }
    let response = client
        .request(
            request
                .body(Full::new(bytes::Bytes::from(body.to_string())))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test]
async fn acknowledged_registrations_survive_sigkill() {
    let upstream = gatehouse::demo::echo_upstream().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), upstream);
    let mut server = Server::start(&config);
    let emails: Vec<String> = (0..8).map(|i| format!("crash{i}@example.com")).collect();
    for email in &emails {
        let (status, body) = post(
            server.addr,
            "/auth/register",
            None,
            json!({"email": email, "password": PASSWORD}),
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }
    // SIGKILL right after the last 201: no shutdown hook runs, nothing gets flushed late.
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    drop(server);

    let server = Server::start(&config);
    for email in &emails {
        let (status, body) = post(
            server.addr,
            "/auth/login",
            None,
            json!({"email": email, "password": PASSWORD}),
        )
        .await;
        assert_eq!(status, 200, "{email} lost after SIGKILL: {body}");
    }
}

fn user_cli(config: &Path, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut child = Command::new(BIN)
        .arg("user")
        .args(args)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    } else {
        drop(child.stdin.take());
    }
    let output = child.wait_with_output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn user_cli_bootstraps_an_admin_and_refuses_while_a_server_runs() {
    let upstream = gatehouse::demo::echo_upstream().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), upstream);

    // Offline: create the first admin.
    let (ok, out, err) = user_cli(
        &config,
        &[
            "add",
            "--email",
            "root@example.com",
            "--roles",
            "admin",
            "--password-stdin",
        ],
        Some(&format!("{PASSWORD}\n")),
    );
    assert!(ok, "user add failed: {out} {err}");
    assert!(out.contains("root@example.com"), "{out}");
    // Without --password-stdin it refuses; weak passwords are refused like over HTTP.
    let (ok, _, err) = user_cli(&config, &["add", "--email", "x@example.com"], None);
    assert!(!ok && err.contains("password-stdin"), "{err}");
    let (ok, _, err) = user_cli(
        &config,
        &["add", "--email", "x@example.com", "--password-stdin"],
        Some("password\n"),
    );
    assert!(!ok, "a common password was accepted: {err}");
    let (ok, out, _) = user_cli(&config, &["list"], None);
    assert!(
        ok && out.contains("root@example.com") && !out.contains("x@example.com"),
        "{out}"
    );

    // While a server holds the store: a clear refusal, nothing changed.
    let server = Server::start(&config);
    let (ok, _, err) = user_cli(&config, &["lock", "root@example.com"], None);
    assert!(!ok, "lock succeeded while the server held the store");
    assert!(err.contains("running gatehouse server"), "{err}");

    // The admin created offline can use the admin API.
    let (status, body) = post(
        server.addr,
        "/auth/login",
        None,
        json!({"email": "root@example.com", "password": PASSWORD}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let token = body["access_token"].as_str().unwrap().to_string();
    let (status, body) = post(
        server.addr,
        "/auth/admin/users",
        Some(&token),
        json!({"email": "new@example.com", "password": PASSWORD, "roles": ["reader"]}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    drop(server);

    // Offline again: lock, then the list shows it.
    let (ok, _, err) = user_cli(&config, &["lock", "new@example.com"], None);
    assert!(ok, "{err}");
    let (_, out, _) = user_cli(&config, &["list"], None);
    assert!(
        out.lines()
            .any(|l| l.contains("new@example.com") && l.contains("LOCKED")),
        "{out}"
    );
}
