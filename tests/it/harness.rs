//! Test harness: gatehouse in-process on `127.0.0.1:0` in front of a real upstream, a store in
//! a temp dir, a manual clock, and a small HTTP client whose failures print the whole
//! exchange.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use gatehouse::app::{App, Clock};
use gatehouse::config::Config;
use gatehouse::server::{self, Listeners};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub const SECRET: &str = "test-secret-0123456789abcdef-0123456789";
/// Where the manual clock starts: a fixed, recent instant.
pub const T0: u64 = 1_800_000_000;

/// Routes most tests use: a public area, an admin area, writes for creators, reads for any
/// signed-in user, everything else denied by default.
pub const ROUTES: &str = r#"
[roles]
admin = { inherits = ["creator"] }
creator = { inherits = ["reader"] }

[[routes]]
path = "/public/**"
access = "public"

[[routes]]
path = "/api/admin/**"
roles = ["admin"]

[[routes]]
path = "/api/**"
methods = ["POST", "PUT", "PATCH", "DELETE"]
roles = ["creator"]

[[routes]]
path = "/api/**"
access = "authenticated"

[[routes]]
path = "/blocked/**"
access = "deny"
"#;

/// A running gatehouse.
pub struct Gatehouse {
    pub addr: SocketAddr,
    pub upstream: SocketAddr,
    pub app: Arc<App>,
    pub now: Arc<AtomicU64>,
    pub dir: tempfile::TempDir,
    client: Client<HttpConnector, Full<Bytes>>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// The base config: everything a test does not care about.
pub fn base_config(upstream: SocketAddr, store: &std::path::Path, extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[upstream]
url = "http://{upstream}"
timeout = "5s"

[store]
path = "{store}"

[tokens]
secret = "{SECRET}"

[auth.password]
# Cheap hashing keeps tests fast; production uses argon2's OWASP defaults.
memory_kib = 1024
iterations = 1
parallelism = 1

[log]
level = "warn"
{extra}
"#,
        store = store.display()
    )
}

impl Gatehouse {
    /// gatehouse in front of the echo upstream, with `extra` TOML appended to the base config
    /// and `env` applied as `GATEHOUSE_*` overrides.
    pub async fn start(extra: &str, env: &[(&str, &str)]) -> Gatehouse {
        let upstream = gatehouse::demo::echo_upstream().await.unwrap();
        Gatehouse::start_with(upstream, extra, env).await
    }

    /// gatehouse in front of a given upstream.
    pub async fn start_with(upstream: SocketAddr, extra: &str, env: &[(&str, &str)]) -> Gatehouse {
        let dir = tempfile::tempdir().unwrap();
        let text = base_config(upstream, &dir.path().join("store"), extra);
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let config = Config::from_toml(&text, env)
            .unwrap_or_else(|e| panic!("test config invalid:\n{e}\n---\n{text}"));
        let (clock, now) = Clock::manual(T0);
        let app = Arc::new(App::start(config, clock).await.unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server::run(
            app.clone(),
            Listeners {
                main: listener,
                admin: None,
            },
            async {
                let _ = rx.await;
            },
        ));
        let client = Client::builder(TokioExecutor::new()).build_http();
        let gh = Gatehouse {
            addr,
            upstream,
            app,
            now,
            dir,
            client,
            shutdown: Some(tx),
            task: Some(task),
        };
        gh.wait_ready().await;
        gh
    }

    /// Polls `/readyz` until it answers 200; no fixed sleeps.
    pub async fn wait_ready(&self) {
        for _ in 0..500 {
            if let Ok(r) = self
                .try_send(Method::GET, "/readyz", &[], Bytes::new())
                .await
                && r.status == StatusCode::OK
            {
                return;
            }
            tokio::task::yield_now().await;
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("gatehouse never became ready");
    }

    /// Moves the manual clock forward.
    pub fn advance(&self, secs: u64) {
        self.now.fetch_add(secs, Ordering::SeqCst);
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(Method::GET, path, &[], Bytes::new()).await
    }

    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.send(Method::GET, path, headers, Bytes::new()).await
    }

    /// A JSON request.
    pub async fn json(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: serde_json::Value,
    ) -> Reply {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("content-type", "application/json")];
        if let Some(a) = &auth {
            headers.push(("authorization", a.as_str()));
        }
        self.send(method, path, &headers, Bytes::from(body.to_string()))
            .await
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Reply {
        let description = format!("{method} {path} {headers:?}");
        self.try_send(method, path, headers, body)
            .await
            .unwrap_or_else(|e| panic!("{description}: {e}"))
    }

    async fn try_send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Reply, String> {
        let mut request = Request::builder()
            .method(method.clone())
            .uri(format!("http://{}{path}", self.addr));
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let request = request.body(Full::new(body)).map_err(|e| e.to_string())?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| format!("{e:?}"))?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Reply {
            request: format!("{method} {path}"),
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// Mints an access token directly, for proxy-path tests that need a given identity.
    pub fn token(&self, user: &str, roles: &[&str]) -> String {
        self.token_with(user, roles, true)
    }

    pub fn token_with(&self, user: &str, roles: &[&str], email_verified: bool) -> String {
        let roles: Vec<String> = roles.iter().map(|r| r.to_string()).collect();
        let email = format!("{user}@example.com");
        let identity = gatehouse::token::Identity {
            user_id: user,
            email: &email,
            roles: &roles,
            email_verified,
            session_id: "test-session",
            min_iat: 0,
        };
        self.app
            .tokens
            .issue(&identity, self.now.load(Ordering::SeqCst))
            .unwrap()
            .0
    }

    /// Stops the server and waits for it to drain.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Gatehouse {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A response with everything needed to explain a failed assertion.
#[derive(Debug)]
pub struct Reply {
    pub request: String,
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{}: body is not JSON ({e}): {}", self.request, self.text()))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Asserts the status, printing the whole exchange when it differs.
    #[track_caller]
    pub fn expect(&self, status: u16) -> &Reply {
        assert_eq!(
            self.status.as_u16(),
            status,
            "{} answered {}\nheaders: {:?}\nbody: {}",
            self.request,
            self.status,
            self.headers,
            self.text()
        );
        self
    }

    /// Asserts a gatehouse error with the given status and code.
    #[track_caller]
    pub fn expect_error(&self, status: u16, code: &str) -> &Reply {
        self.expect(status);
        let body = self.json();
        assert_eq!(
            body["error"]["code"],
            code,
            "{}: {}",
            self.request,
            self.text()
        );
        self
    }

    /// The echo upstream's view of the request's headers (first value of each).
    pub fn upstream_header(&self, name: &str) -> Option<String> {
        let body = self.json();
        assert_eq!(
            body["upstream"],
            "echo",
            "{}: not forwarded: {}",
            self.request,
            self.text()
        );
        body["headers"][name]
            .get(0)
            .and_then(|v| v.as_str())
            .map(str::to_string)
    }

    pub fn upstream_header_count(&self, name: &str) -> usize {
        self.json()["headers"][name].as_array().map_or(0, Vec::len)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}
