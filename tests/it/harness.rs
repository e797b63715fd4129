//! Test harness: gatehouse in-process on `127.0.0.1:0` in front of a real upstream, a store in
//! a temp dir, a manual clock, and a small HTTP client whose failures print the whole
//! exchange.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use gatehouse::app::{App, Clock};
use gatehouse::config::Config;
use gatehouse::reload::Current;
use gatehouse::server::{self, Listeners};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// The password test users are registered with.
pub const PASSWORD: &str = "correct horse battery";
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
    /// The admin listener, when the test asked for one ([`Setup::admin`]).
    pub admin: Option<SocketAddr>,
    pub upstream: SocketAddr,
    /// The generation gatehouse started with; [`Gatehouse::current`] has the one in force.
    pub app: Arc<App>,
    /// What new requests run on; a test reloads through it ([`Current::apply`]).
    pub current: Arc<Current>,
    pub now: Arc<AtomicU64>,
    pub dir: tempfile::TempDir,
    extra: String,
    env: Vec<(String, String)>,
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

# Rate limits are off unless a test turns one on (with a GATEHOUSE_RATE_LIMITS_* override):
# tests make many requests from 127.0.0.1.
[rate_limits]
login = "0"
register = "0"
refresh = "0"
forgot_password = "0"
verify_email_resend = "0"

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
        Gatehouse::launch(Setup {
            env,
            ..Setup::new(upstream, extra)
        })
        .await
    }

    /// gatehouse as `setup` describes it.
    pub async fn launch(setup: Setup<'_>) -> Gatehouse {
        Gatehouse::launch_in(setup, tempfile::tempdir().unwrap(), T0).await
    }

    /// Stops this gatehouse and starts a new one on the same store, config and clock time,
    /// as a process restart would.
    pub async fn restart(mut self) -> Gatehouse {
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        let (upstream, extra, env) = (self.upstream, self.extra.clone(), self.env.clone());
        let now = self.now.load(Ordering::SeqCst);
        self.stop().await;
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Gatehouse::launch_in(
            Setup {
                env: &env,
                ..Setup::new(upstream, &extra)
            },
            dir,
            now,
        )
        .await
    }

    /// gatehouse on the store in `dir`, its clock at `start_time`.
    pub async fn launch_in(setup: Setup<'_>, dir: tempfile::TempDir, start_time: u64) -> Gatehouse {
        Gatehouse::launch_on(setup, dir, Arc::new(AtomicU64::new(start_time))).await
    }

    /// One of several replicas: gatehouse as `setup` describes it (its store named by
    /// `GATEHOUSE_STORE_*` overrides in `setup.env`, e.g. one PostgreSQL schema for all), on
    /// the manual clock `now` that its sibling replicas share, so that tokens, lockouts and
    /// revocations agree on the time. [`Gatehouse::advance`] on any replica moves them all.
    pub async fn launch_replica(setup: Setup<'_>, now: Arc<AtomicU64>) -> Gatehouse {
        Gatehouse::launch_on(setup, tempfile::tempdir().unwrap(), now).await
    }

    /// gatehouse on the store in `dir` (unless the config names another), on the manual
    /// clock `now`.
    async fn launch_on(setup: Setup<'_>, dir: tempfile::TempDir, now: Arc<AtomicU64>) -> Gatehouse {
        let Setup {
            upstream,
            extra,
            env,
            admin,
            wait_for,
        } = setup;
        let text = base_config(upstream, &dir.path().join("store"), extra);
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let config = Config::from_toml(&text, env.clone())
            .unwrap_or_else(|e| panic!("test config invalid:\n{e}\n---\n{text}"));
        assert_eq!(
            admin,
            config.server.admin_listen.is_some(),
            "Setup::admin and server.admin_listen must agree"
        );
        let clock = Clock::Manual(now.clone());
        let app = App::start(config, clock)
            .await
            .unwrap_or_else(|e| panic!("gatehouse did not start: {e}"));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let admin_listener = if admin {
            Some(TcpListener::bind("127.0.0.1:0").await.unwrap())
        } else {
            None
        };
        let admin = admin_listener.as_ref().map(|l| l.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let current = Current::new(app.clone(), None);
        let task = tokio::spawn(server::run(
            current.clone(),
            Listeners {
                main: listener,
                admin: admin_listener,
            },
            async {
                let _ = rx.await;
            },
        ));
        let client = Client::builder(TokioExecutor::new()).build_http();
        let gh = Gatehouse {
            addr,
            admin,
            upstream,
            app,
            current,
            now,
            dir,
            extra: extra.to_string(),
            env,
            client,
            shutdown: Some(tx),
            task: Some(task),
        };
        gh.wait_for(wait_for).await;
        gh
    }

    /// Polls `/readyz` until it answers 200; no fixed sleeps.
    pub async fn wait_ready(&self) {
        self.wait_for("/readyz").await;
    }

    /// Polls an ops path (on the admin listener when there is one) until it answers 200.
    pub async fn wait_for(&self, path: &str) {
        let ops = self.ops_addr();
        for _ in 0..500 {
            if let Ok(r) = self
                .try_send_to(ops, Method::GET, path, &[], Bytes::new())
                .await
                && r.status == StatusCode::OK
            {
                return;
            }
            tokio::task::yield_now().await;
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("gatehouse never answered 200 on {path}");
    }

    /// Where the ops endpoints are served: the admin listener if any, else the main one.
    pub fn ops_addr(&self) -> SocketAddr {
        self.admin.unwrap_or(self.addr)
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
        self.try_send_to(self.addr, method, path, headers, body)
            .await
    }

    /// A request to the admin listener (which the test must have asked for).
    pub async fn admin_send(&self, method: Method, path: &str) -> Reply {
        let admin = self.admin.expect("no admin listener: use Setup::admin");
        self.try_send_to(admin, method.clone(), path, &[], Bytes::new())
            .await
            .unwrap_or_else(|e| panic!("admin {method} {path}: {e}"))
    }

    async fn try_send_to(
        &self,
        addr: SocketAddr,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Reply, String> {
        let response = self
            .try_request(addr, method.clone(), path, headers, body)
            .await?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Reply {
            request: format!("{method} {path} {headers:?}"),
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    async fn try_request(
        &self,
        addr: SocketAddr,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Response<Incoming>, String> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"));
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let request = request.body(Full::new(body)).map_err(|e| e.to_string())?;
        self.client
            .request(request)
            .await
            .map_err(|e| format!("{e:?}"))
    }

    /// A request whose response body is left unread, for tests that stream it or expect it
    /// to break off.
    pub async fn open(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Response<Incoming> {
        let description = format!("{method} {path} {headers:?}");
        self.try_request(self.addr, method, path, headers, Bytes::new())
            .await
            .unwrap_or_else(|e| panic!("{description}: {e}"))
    }

    /// Writes `request` as raw bytes on a fresh connection and reads one response: for
    /// requests an HTTP client library would refuse or repair (dot segments, odd header
    /// spellings, absolute-form targets, hand-made chunked bodies).
    pub async fn raw(&self, request: impl AsRef<[u8]>) -> Reply {
        raw_exchange(self.addr, request.as_ref()).await
    }

    /// Registers a user with [`PASSWORD`]; the `{user}` body.
    pub async fn register(&self, email: &str) -> serde_json::Value {
        self.json(
            Method::POST,
            "/auth/register",
            None,
            serde_json::json!({"email": email, "password": PASSWORD}),
        )
        .await
        .expect(201)
        .json()
    }

    pub async fn login(&self, email: &str, password: &str) -> Reply {
        self.json(
            Method::POST,
            "/auth/login",
            None,
            serde_json::json!({"email": email, "password": password}),
        )
        .await
    }

    /// (access token, refresh token) of a fresh session.
    pub async fn session(&self, email: &str, password: &str) -> (String, String) {
        let body = self.login(email, password).await.expect(200).json();
        (
            body["access_token"].as_str().unwrap().to_string(),
            body["refresh_token"].as_str().unwrap().to_string(),
        )
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
        // The keys in force: after a reload that changed them, tokens are minted with the
        // new ones, as the server's own login would.
        self.current
            .load()
            .live
            .tokens
            .issue(&identity, self.now.load(Ordering::SeqCst))
            .unwrap()
            .0
    }

    /// Reloads the running server with the base config and `extra` (instead of the extra
    /// it started with) and the same `GATEHOUSE_*` overrides, as SIGHUP would after the
    /// file was edited.
    pub fn reload(&self, extra: &str) -> gatehouse::reload::Outcome {
        let text = base_config(self.upstream, &self.dir.path().join("store"), extra);
        let loaded = Config::check(&text, self.env.clone(), gatehouse::config::Purpose::Serve);
        self.current
            .apply(loaded, gatehouse::reload::Trigger::Signal)
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

/// How to start gatehouse; [`Gatehouse::start`] and [`Gatehouse::start_with`] cover the
/// common cases.
pub struct Setup<'a> {
    pub upstream: SocketAddr,
    /// TOML appended to [`base_config`].
    pub extra: &'a str,
    /// `GATEHOUSE_*` overrides.
    pub env: &'a [(&'a str, &'a str)],
    /// Bind a separate admin listener; `extra` must then set `server.admin_listen`.
    pub admin: bool,
    /// The ops path that must answer 200 before the test starts: `/readyz` normally,
    /// `/healthz` for a gatehouse that is expected not to be ready.
    pub wait_for: &'a str,
}

impl<'a> Setup<'a> {
    pub fn new(upstream: SocketAddr, extra: &'a str) -> Setup<'a> {
        Setup {
            upstream,
            extra,
            env: &[],
            admin: false,
            wait_for: "/readyz",
        }
    }
}

/// An address where nothing listens: bound, then released.
pub fn dead_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// An upstream written by the test at the TCP level: `on_connection` runs for every accepted
/// connection, in its own task.
pub async fn tcp_upstream<F, Fut>(on_connection: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(on_connection(stream));
        }
    });
    addr
}

/// An upstream that answers every request head with the bytes `respond` returns, keeping the
/// connection alive between requests. Request bodies are not expected.
pub async fn raw_upstream<F>(respond: F) -> SocketAddr
where
    F: Fn(&str) -> Vec<u8> + Send + Sync + 'static,
{
    let respond = Arc::new(respond);
    tcp_upstream(move |mut stream| {
        let respond = respond.clone();
        async move {
            while let Some(head) = read_head(&mut stream).await {
                if stream.write_all(&respond(&head)).await.is_err() {
                    return;
                }
            }
        }
    })
    .await
}

/// Reads one request or response head (up to the blank line); `None` at end of stream.
pub async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    // Byte by byte so nothing after the head is consumed; heads are small.
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// One raw HTTP/1.1 exchange on a fresh connection; see [`Gatehouse::raw`].
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> Reply {
    let shown = String::from_utf8_lossy(&request[..request.len().min(600)])
        .escape_debug()
        .to_string();
    let head_only = request.starts_with(b"HEAD ");
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(request).await?;
        read_response(&mut stream, head_only).await
    };
    // A safety net so a server that never answers fails the test instead of hanging it.
    match tokio::time::timeout(Duration::from_secs(30), exchange).await {
        Ok(Ok((status, headers, body))) => Reply {
            request: shown,
            status,
            headers,
            body,
        },
        Ok(Err(e)) => panic!("raw request {shown}: {e}"),
        Err(_) => panic!("raw request {shown}: no response within 30s"),
    }
}

/// Reads one HTTP/1.1 response: Content-Length, chunked, or until the connection closes.
/// `head_only`: the request was HEAD, so no body follows.
pub async fn read_response(
    stream: &mut TcpStream,
    head_only: bool,
) -> std::io::Result<(StatusCode, HeaderMap, Bytes)> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let head = read_head(stream)
        .await
        .ok_or_else(|| bad("connection closed before a response head"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .ok_or_else(|| bad(status_line))?;
    let mut headers = HeaderMap::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':').ok_or_else(|| bad(line))?;
        headers.append(
            HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| bad(line))?,
            HeaderValue::from_str(value.trim()).map_err(|_| bad(line))?,
        );
    }
    let mut body = Vec::new();
    let no_body = head_only || status.is_informational() || status == StatusCode::NO_CONTENT;
    let chunked = headers
        .get("transfer-encoding")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"chunked"));
    if no_body {
    } else if let Some(len) = headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
    {
        body.resize(len, 0);
        stream.read_exact(&mut body).await?;
    } else if chunked {
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        body = dechunk(&raw).ok_or_else(|| bad("bad chunked body"))?;
    } else {
        stream.read_to_end(&mut body).await?;
    }
    Ok((status, headers, Bytes::from(body)))
}

fn dechunk(mut raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let end = raw.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&raw[..end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        raw = &raw[end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(raw.get(..size)?);
        raw = raw.get(size + 2..)?;
    }
}

/// A slow upstream's controls: each request reports its arrival, then waits for a release.
pub struct Gate {
    pub arrived: tokio::sync::mpsc::UnboundedReceiver<()>,
    pub release: Arc<tokio::sync::Notify>,
}

impl Gate {
    /// Waits until the next request has reached the upstream.
    pub async fn arrived(&mut self) {
        self.arrived.recv().await.expect("upstream gone");
    }

    /// Lets one waiting (or the next) request be answered.
    pub fn release_one(&self) {
        self.release.notify_one();
    }
}

/// An upstream that answers `200 done` to each request only once the test releases it.
pub async fn gated_upstream() -> (SocketAddr, Gate) {
    let (arrived_tx, arrived) = tokio::sync::mpsc::unbounded_channel();
    let release = Arc::new(tokio::sync::Notify::new());
    let release_upstream = release.clone();
    let addr = tcp_upstream(move |mut stream| {
        let arrived_tx = arrived_tx.clone();
        let release = release_upstream.clone();
        async move {
            while read_head(&mut stream).await.is_some() {
                let _ = arrived_tx.send(());
                release.notified().await;
                let written = stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone")
                    .await;
                if written.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    (addr, Gate { arrived, release })
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

/// Sends `GET path` on a fresh connection and returns, once the server closes it, every
/// byte it answered: for requests that are still in flight when the server shuts down.
pub fn request_in_flight(addr: SocketAddr, path: &str) -> tokio::task::JoinHandle<Vec<u8>> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: gh\r\n\r\n");
    tokio::spawn(async move {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut answer).await;
        answer
    })
}

/// Runs the test `name` alone in a child process of this test binary, with `marker` set in
/// its environment, and asserts it passed. For scenarios that read process-wide state (RSS,
/// tracing's call-site interest cache) that other tests running alongside would blur. The
/// test calls this when `marker` is not set, and runs its scenario when it is.
pub async fn run_alone(name: &'static str, marker: &'static str) {
    let exe = std::env::current_exe().unwrap();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(exe)
            .args([name, "--exact", "--test-threads=1", "--nocapture"])
            .env(marker, "1")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{name} failed:\n{said}");
    assert!(said.contains("1 passed"), "{name} did not run:\n{said}");
}
