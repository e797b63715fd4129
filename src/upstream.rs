//! The upstream: where forwarded requests go, over a pool of kept-alive HTTP/1.1 connections.
//!
//! [`Upstream::forward`] sends one request and hands back the response, whose body
//! ([`ResponseBody`]) puts its connection back in the pool once it has been read to the end.
//! [`UpstreamBody`] is the client's body on its way up: capped, watched for stalls and
//! broken framing, so a failure on the client's side is told apart from the upstream's.
//!
//! Decisions, and why:
//!
//! - **Our own pool over hyper's connection API**, not hyper-util's legacy `Client`: there is
//!   one upstream, so no per-request key hashing, no pool-wide map and no lazy connect
//!   future; a connection is a `SendRequest` taken off a stack (most recently used first, so
//!   the busy few stay warm and the rest idle out) and pushed back by the response body when
//!   it ends, with no task spawned per request. Each connection is driven by its own task,
//!   spawned once when it is opened.
//! - **A request that never left is retried.** A pooled connection the upstream closed while
//!   it sat idle hands the request back unsent (hyper's `try_send_request`); it is sent on
//!   the next connection. A request that was (even partly) written is never retried here:
//!   it may not be idempotent.
//! - **One deadline per request**: `upstream.timeout` covers connecting (if needed), sending
//!   and waiting for the response head. The body streams without one; the server's idle and
//!   body timeouts bound it.
//! - **Bounded.** At most `upstream.pool_max_idle` idle connections are kept, none longer than
//!   `upstream.pool_idle_timeout` (a background sweep closes older ones, so an idle sidecar
//!   does not hold sockets the upstream has long forgotten).
//! - `https://` upstreams are reached through rustls with the roots [`crate::tls`] chooses
//!   (`upstream.ca_file`, or the public roots).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::Limited;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::time::Instant;
use tower_service::Service as _;

use crate::config::{Config, UpstreamUrl};
use crate::error::Error;

/// The body sent upstream: the client's body, capped, watched for failures.
pub struct UpstreamBody {
    inner: Limited<Incoming>,
    failure: Arc<OnceLock<BodyFailure>>,
    /// `server.body_idle_timeout`: the longest wait for the client's next frame.
    idle: Duration,
    /// Armed when the client's body first makes the upstream connection wait, reset by every
    /// frame. Boxed because `Sleep` is not `Unpin`; a request whose body is already all
    /// there (or empty) never pays for it.
    stall: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// Why the client's body stopped before its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFailure {
    /// Over `server.max_body_bytes`.
    TooLarge,
    /// Broken framing (a bad chunk size, a bare LF, a body shorter than its
    /// Content-Length) or a client that went away mid-body.
    Malformed,
    /// Nothing arrived for `server.body_idle_timeout` mid-body.
    Stalled,
}

impl UpstreamBody {
    /// Wraps the client's body with the `server.max_body_bytes` cap and the
    /// `server.body_idle_timeout` limit on pauses.
    pub fn new(body: Incoming, max_bytes: u64, idle: Duration) -> UpstreamBody {
        UpstreamBody {
            inner: Limited::new(body, usize::try_from(max_bytes).unwrap_or(usize::MAX)),
            failure: Arc::new(OnceLock::new()),
            idle,
            stall: None,
        }
    }

    /// Learns later whether the body failed. A failure is the client's fault, whatever the
    /// connection reports it as: the request it aborted is answered 400/413, never 502, and
    /// counted as a client error, not an upstream one.
    pub fn watch(&self) -> BodyWatch {
        BodyWatch(self.failure.clone())
    }
}

/// See [`UpstreamBody::watch`].
pub struct BodyWatch(Arc<OnceLock<BodyFailure>>);

impl BodyWatch {
    pub fn failure(&self) -> Option<BodyFailure> {
        self.0.get().copied()
    }
}

impl http_body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Pending => {
                let idle = this.idle;
                let stall = this
                    .stall
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                if stall.as_mut().poll(cx).is_ready() {
                    let _ = this.failure.set(BodyFailure::Stalled);
                    return Poll::Ready(Some(Err("the request body stalled".into())));
                }
            }
            Poll::Ready(Some(Ok(_))) => {
                if let Some(stall) = this.stall.as_mut() {
                    stall.as_mut().reset(Instant::now() + this.idle);
                }
            }
            Poll::Ready(Some(Err(e))) => {
                let failure = if e.is::<http_body_util::LengthLimitError>() {
                    BodyFailure::TooLarge
                } else {
                    BodyFailure::Malformed
                };
                // The first failure is the one that counts; a second cannot happen, as the
                // connection stops polling at the first error.
                let _ = this.failure.set(failure);
            }
            Poll::Ready(None) => {}
        }
        // Passing the error on makes the connection abort the request: a chunked body gets
        // no last chunk and a sized one falls short, and the connection is closed, so the
        // upstream never takes a truncated body for a whole one.
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Why forwarding failed, for the `kind` label of `gatehouse_upstream_errors_total`.
pub enum ForwardError {
    Connect(String),
    Timeout,
    /// Reset, protocol error, garbage.
    Broken(String),
    /// The client's body failed while streaming (see [`BodyFailure`]).
    Body(BodyFailure),
}

impl ForwardError {
    pub fn kind(&self) -> &'static str {
        match self {
            ForwardError::Connect(_) => "connect",
            ForwardError::Timeout => "timeout",
            ForwardError::Broken(_) => "broken",
            ForwardError::Body(_) => "client_body",
        }
    }

    pub fn into_error(self) -> Error {
        match self {
            ForwardError::Connect(cause) | ForwardError::Broken(cause) => {
                Error::UpstreamUnavailable(cause)
            }
            ForwardError::Timeout => Error::UpstreamTimeout,
            ForwardError::Body(BodyFailure::TooLarge) => Error::PayloadTooLarge,
            ForwardError::Body(BodyFailure::Malformed) => Error::InvalidRequest(
                "The request body broke off or its chunked framing is malformed.".into(),
            ),
            ForwardError::Body(BodyFailure::Stalled) => {
                Error::InvalidRequest("The request body stopped arriving before its end.".into())
            }
        }
    }
}

/// The upstream: its pooled connections and the URL parts every request is sent to.
pub struct Upstream {
    pool: Arc<Pool<UpstreamBody>>,
    /// For health checks: a pool of its own (one connection), so a probe never waits behind
    /// or takes a connection from proxied traffic.
    health_pool: Arc<Pool<http_body_util::Empty<Bytes>>>,
    /// The last health verdict and when it was taken: `/readyz` may be public, and a flood
    /// of it must not become a flood of upstream requests.
    health_cache: Mutex<Option<(Instant, Result<(), String>)>>,
    url: UpstreamUrl,
    host: HeaderValue,
    timeout: Duration,
    health_path: Option<String>,
}

/// How long a health verdict is reused.
const HEALTH_CACHE: Duration = Duration::from_secs(1);

/// See [`Upstream::host`].
fn host_header(url: &UpstreamUrl) -> Result<HeaderValue, String> {
    let authority = &url.authority;
    let default_port = match url.scheme.as_str() {
        "https" => 443,
        _ => 80,
    };
    let host = match authority.port_u16() {
        Some(port) if port != default_port => format!("{}:{port}", authority.host()),
        _ => authority.host().to_owned(),
    };
    HeaderValue::try_from(host).map_err(|e| format!("upstream host: {e}"))
}

impl Upstream {
    /// Builds the pools; fails when `upstream.ca_file` cannot be used. Call within a tokio
    /// runtime: each pool starts its sweep of expired idle connections.
    pub fn new(config: &Config) -> Result<Upstream, String> {
        let u = &config.upstream;
        let mut tcp = HttpConnector::new();
        tcp.set_connect_timeout(Some(u.connect_timeout));
        tcp.set_nodelay(true);
        tcp.set_keepalive(Some(Duration::from_secs(60)));
        // `https://` upstreams go through rustls, `http://` ones straight to TCP.
        let connector = crate::tls::upstream_connector(tcp, u.ca_file.as_deref())
            .map_err(|e| format!("upstream TLS: {e}"))?;
        let endpoint = Uri::builder()
            .scheme(u.url.scheme.clone())
            .authority(u.url.authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| format!("upstream URL: {e}"))?;
        Ok(Upstream {
            pool: Pool::start(
                connector.clone(),
                endpoint.clone(),
                u.pool_max_idle,
                u.pool_idle_timeout,
            ),
            health_pool: Pool::start(connector, endpoint, 1, u.pool_idle_timeout),
            health_cache: Mutex::new(None),
            host: host_header(&u.url)?,
            url: u.url.clone(),
            timeout: u.timeout,
            health_path: u.health_path.clone(),
        })
    }

    /// The origin-form target sent upstream (`/base/path?query`): the base path, the
    /// normalised path and the original query.
    pub fn uri(&self, path: &str, query: Option<&str>) -> Result<Uri, Error> {
        let mut pq = String::with_capacity(
            self.url.base_path.len() + path.len() + query.map_or(0, |q| q.len() + 1),
        );
        pq.push_str(&self.url.base_path);
        pq.push_str(path);
        if let Some(q) = query {
            pq.push('?');
            pq.push_str(q);
        }
        Uri::try_from(pq)
            .map_err(|e| Error::InvalidRequest(format!("cannot forward this target: {e}").into()))
    }

    /// [`Upstream::uri`] for a request whose target is `original`. When there is no base path
    /// and normalisation left the path as it was, the original path-and-query is reused as is
    /// (a reference-counted clone, no copy, no re-parse): it is byte for byte what
    /// [`Upstream::uri`] would build.
    pub fn uri_for(&self, original: &Uri, path: &str) -> Result<Uri, Error> {
        if self.url.base_path.is_empty()
            && let Some(pq) = original.path_and_query()
            && pq.as_str().starts_with('/')
            && pq.path() == path
        {
            return Ok(Uri::from(pq.clone()));
        }
        self.uri(path, original.query())
    }

    /// The `Host` every forwarded request carries: the upstream's authority, without the
    /// scheme's default port (as browsers and curl write it). The client's own `Host` travels
    /// as `X-Forwarded-Host`.
    pub fn host(&self) -> &HeaderValue {
        &self.host
    }

    /// Sends the request and waits for the response head, at most `upstream.timeout`.
    pub async fn forward(
        &self,
        request: Request<UpstreamBody>,
    ) -> Result<Response<ResponseBody>, ForwardError> {
        let body = request.body().watch();
        let result = tokio::time::timeout(self.timeout, self.pool.send(request)).await;
        // Whatever the connection made of it, a body that failed on the client's side is the
        // client's error.
        if let (Some(failure), false) = (body.failure(), matches!(result, Ok(Ok(_)))) {
            return Err(ForwardError::Body(failure));
        }
        match result {
            Err(_) => Err(ForwardError::Timeout),
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => Err(e),
        }
    }

    /// For `/readyz`: is the upstream answering? With `upstream.health_path` a GET must
    /// answer below 500; without it, nothing is checked.
    pub async fn check_health(&self) -> Result<(), String> {
        let Some(path) = &self.health_path else {
            return Ok(());
        };
        let now = Instant::now();
        // A poisoned lock only means a panic elsewhere mid-update; the cached value is still
        // a whole verdict.
        if let Some((at, verdict)) = &*self.health_cache.lock().unwrap_or_else(|e| e.into_inner())
            && now.duration_since(*at) < HEALTH_CACHE
        {
            return verdict.clone();
        }
        let verdict = self.probe(path).await;
        *self.health_cache.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((Instant::now(), verdict.clone()));
        verdict
    }

    async fn probe(&self, path: &str) -> Result<(), String> {
        let uri = self.uri(path, None).map_err(|e| e.to_string())?;
        let request = Request::get(uri)
            .header(http::header::HOST, self.host.clone())
            .body(http_body_util::Empty::new())
            .map_err(|e| e.to_string())?;
        match tokio::time::timeout(
            self.timeout.min(Duration::from_secs(2)),
            self.health_pool.send(request),
        )
        .await
        {
            Ok(Ok(r)) if r.status().as_u16() < 500 => Ok(()),
            Ok(Ok(r)) => Err(format!("upstream health check answered {}", r.status())),
            Ok(Err(ForwardError::Timeout)) | Err(_) => {
                Err("upstream health check timed out".into())
            }
            Ok(Err(ForwardError::Connect(e) | ForwardError::Broken(e))) => {
                Err(format!("upstream health check failed: {e}"))
            }
            Ok(Err(ForwardError::Body(_))) => Err("upstream health check failed".into()),
        }
    }
}

/// Kept-alive connections to the upstream, most recently used on top.
struct Pool<B> {
    idle: Mutex<Vec<Idle<B>>>,
    max_idle: usize,
    idle_timeout: Duration,
    connector: HttpsConnector<HttpConnector>,
    /// Scheme and authority of the upstream, for the connector.
    endpoint: Uri,
}

struct Idle<B> {
    sender: http1::SendRequest<B>,
    since: Instant,
}

// The stack's own bookkeeping needs no body bounds, so a response body's `Drop` can return
// its connection.
impl<B> Pool<B> {
    /// The most recently used live idle connection.
    fn take(&self) -> Option<http1::SendRequest<B>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(conn) = idle.pop() {
            if !conn.sender.is_closed() {
                return Some(conn.sender);
            }
        }
        None
    }

    /// Returns a connection whose last response was read to its end.
    fn put(&self, sender: http1::SendRequest<B>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < self.max_idle {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
        // Over the cap the sender is dropped here, which closes its connection.
    }

    /// Closes idle connections older than `idle_timeout`. The oldest are at the bottom.
    fn sweep_expired(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        idle.retain(|c| !c.sender.is_closed() && now.duration_since(c.since) < self.idle_timeout);
    }
}

impl<B> Pool<B>
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn start(
        connector: HttpsConnector<HttpConnector>,
        endpoint: Uri,
        max_idle: usize,
        idle_timeout: Duration,
    ) -> Arc<Pool<B>> {
        let pool = Arc::new(Pool {
            idle: Mutex::new(Vec::with_capacity(max_idle.min(1024))),
            max_idle,
            idle_timeout,
            connector,
            endpoint,
        });
        tokio::spawn(sweep(Arc::downgrade(&pool)));
        pool
    }

    /// Sends `request` on a pooled connection, or a new one when none is idle.
    async fn send(
        self: &Arc<Self>,
        mut request: Request<B>,
    ) -> Result<Response<ResponseBody<B>>, ForwardError> {
        loop {
            let (mut sender, fresh) = match self.take() {
                Some(sender) => (sender, false),
                None => (self.connect().await?, true),
            };
            // Usually ready at once; a connection whose last response just ended may need
            // its task to catch up, and one that died since is dropped here.
            if sender.ready().await.is_err() {
                if fresh {
                    return Err(ForwardError::Broken(
                        "upstream closed a new connection".into(),
                    ));
                }
                continue;
            }
            match sender.try_send_request(request).await {
                Ok(response) => {
                    let reusable = response.status() != StatusCode::SWITCHING_PROTOCOLS;
                    let lease = reusable.then(|| Lease {
                        sender,
                        pool: Arc::downgrade(self),
                    });
                    return Ok(response.map(|inner| ResponseBody { inner, lease }));
                }
                Err(mut e) => match e.take_message() {
                    // Never written: the connection had closed under it. Another one may
                    // carry it; a new connection failing this way is the upstream's fault.
                    Some(unsent) if !fresh => request = unsent,
                    _ => return Err(classify(e.error())),
                },
            }
        }
    }

    async fn connect(&self) -> Result<http1::SendRequest<B>, ForwardError> {
        let mut connector = self.connector.clone();
        let io = connector
            .call(self.endpoint.clone())
            .await
            .map_err(|e| ForwardError::Connect(format!("{e}")))?;
        let (sender, connection) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|e| ForwardError::Connect(format!("{e}")))?;
        tokio::spawn(async move {
            // Errors here are the upstream going away; the request that was in flight, if
            // any, has already been told through its response future.
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended");
            }
        });
        Ok(sender)
    }
}

/// Sweeps `pool` every `idle_timeout` until it is gone.
async fn sweep<B>(pool: Weak<Pool<B>>)
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let Some(every) = pool
        .upgrade()
        .map(|p| p.idle_timeout.max(Duration::from_secs(1)))
    else {
        return;
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        match pool.upgrade() {
            Some(pool) => pool.sweep_expired(),
            None => return,
        }
    }
}

fn classify(e: &hyper::Error) -> ForwardError {
    ForwardError::Broken(format!("{e}"))
}

/// The upstream's response body, streamed to the client. Read to its end, it puts its
/// connection back in the pool; dropped before that (the client went away, or the response
/// switched protocols), the connection is closed with it.
pub struct ResponseBody<B = UpstreamBody> {
    inner: Incoming,
    lease: Option<Lease<B>>,
}

struct Lease<B> {
    sender: http1::SendRequest<B>,
    pool: Weak<Pool<B>>,
}

impl<B> ResponseBody<B> {
    fn release(&mut self) {
        if let Some(lease) = self.lease.take()
            && let Some(pool) = lease.pool.upgrade()
        {
            pool.put(lease.sender);
        }
    }
}

impl<B> http_body::Body for ResponseBody<B>
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.release();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for ResponseBody<B> {
    fn drop(&mut self) {
        // An empty body (a 204, a HEAD answer, Content-Length: 0) is never polled; it ended
        // all the same. Anything else unread means the connection cannot be reused.
        if http_body::Body::is_end_stream(&self.inner) {
            self.release();
        }
    }
}
