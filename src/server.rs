//! Listeners, connections and graceful shutdown.
//!
//! [`run`] takes already-bound listeners and a shutdown future (the mini-redis seam), so tests
//! bind `127.0.0.1:0` and stop the server by completing a future. Each accepted connection
//! is served by hyper-util's auto builder (HTTP/1.1 and HTTP/2, with upgrades) under the
//! limits from `[server]`. On shutdown the listeners close at once, `/readyz` turns 503, and
//! in-flight requests get up to `server.shutdown_timeout` to finish; connections still open
//! at that deadline are closed (their requests cancelled) before `run` returns, so an
//! embedding process is not left with connections serving after `run` said it was done.
//! Upgraded connections (WebSocket splices, auth channels) close themselves on the drain
//! signal; `run` waits, within the same deadline, until their connection slots are back.
//!
//! With `server.tls` the main listener speaks TLS only (the admin listener stays plain, for
//! in-cluster probes and scrapes). The handshake runs in the connection's own task, bounded
//! by `server.header_read_timeout` like the request head that follows it, so a slow or silent
//! client costs one connection slot for that long and never the accept loop. The protocol
//! ALPN chose needs no special case: the auto builder tells HTTP/2 from HTTP/1.1 by the
//! client's preface.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::app::App;
use crate::gate::{self, ConnInfo};
use crate::reload::Current;

/// Pause after a failed accept (out of file descriptors) before trying again.
const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(50);
/// hyper refuses an HTTP/1 read buffer smaller than this.
const HYPER_MIN_BUF: usize = 8192;
/// Headers per HTTP/1 request; far above what clients send, low enough to bound parsing.
const MAX_HEADERS: usize = 100;

/// The listeners `run` serves.
pub struct Listeners {
    pub main: TcpListener,
    /// Ops endpoints only, when `server.admin_listen` is set.
    pub admin: Option<TcpListener>,
}

impl Listeners {
    /// Binds the configured addresses.
    /// Binds the main listener and the admin one, if configured; an error names the
    /// address that would not bind.
    pub async fn bind(app: &App) -> Result<Listeners, (SocketAddr, std::io::Error)> {
        let listen = app.live.config.server.listen;
        let main = TcpListener::bind(listen).await.map_err(|e| (listen, e))?;
        let admin = match app.live.config.server.admin_listen {
            Some(addr) => Some(TcpListener::bind(addr).await.map_err(|e| (addr, e))?),
            None => None,
        };
        Ok(Listeners { main, admin })
    }
}

fn builder(app: &App) -> auto::Builder<TokioExecutor> {
    let s = &app.live.config.server;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(s.header_read_timeout)
        .max_buf_size(s.max_header_bytes.max(HYPER_MIN_BUF))
        .max_headers(MAX_HEADERS)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(s.http2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(s.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(s.idle_timeout / 2))
        .keep_alive_timeout(s.idle_timeout / 4);
    builder
}

/// Serves until `shutdown` completes, then drains. Returns when every connection has closed
/// or the drain deadline passed.
///
/// Every request runs on the config generation in force when it arrives (`current`): one
/// `ArcSwap` load per request, no lock. The connection settings (timeouts, header and
/// stream limits) of the generation in force when a connection is accepted stay with that
/// connection; a reload changes them for connections accepted after it.
pub async fn run(current: Arc<Current>, listeners: Listeners, shutdown: impl Future<Output = ()>) {
    let graceful = GracefulShutdown::new();
    let mut app = current.load();
    let mut builder = builder(&app);
    let slots = app.connection_slots.clone();
    // Every connection's task, so that the drain deadline can close the ones still open by
    // aborting them: nothing per request or per wake-up watches for it.
    let mut connections = JoinSet::new();
    let Listeners { main, admin } = listeners;
    let tls = app.tls.as_ref().map(|tls| tls.acceptor().clone());
    tokio::pin!(shutdown);

    loop {
        tokio::select! {
            () = &mut shutdown => break,
            // Finished tasks are reaped as they end, so the set holds only open connections.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = main.accept() => {
                let (stream, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Usually EMFILE/ENFILE: out of descriptors. Retrying at once would
                        // spin a core; a short pause lets connections close.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                };
                // Over the cap the connection is closed at once: cheaper than queueing it
                // and the client's retry lands on another replica.
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    app.metrics.connections_refused.inc();
                    continue;
                };
                let _ = stream.set_nodelay(true);
                // A reload since the last accept: this connection gets the new settings.
                let now = current.load();
                if !Arc::ptr_eq(&now, &app) {
                    app = now;
                    builder = self::builder(&app);
                }
                let handshake_timeout = app.live.config.server.header_read_timeout;
                let open = Open::new(&app, slot);
                let conn = ConnInfo { peer, tls: tls.is_some() };
                let requests = current.clone();
                let service = service_fn(move |request| {
                    // The generation this request runs on, start to finish.
                    let app = requests.load();
                    async move { Ok::<_, Infallible>(gate::handle(app, conn, request).await) }
                });
                // The watcher is taken now so a drain also waits for connections still in
                // their TLS handshake or waiting for their first bytes.
                let watcher = graceful.watcher();
                let builder = builder.clone();
                let acceptor = tls.clone();
                connections.spawn(async move {
                    // Dropped when the task ends or is aborted: the gauge and the slot.
                    let _open = open;
                    // Connection errors (client resets, timeouts) are the client's
                    // business; hyper has already answered what could be answered.
                    if let Some(acceptor) = acceptor {
                        let Some(stream) = tls_handshake(&acceptor, stream, handshake_timeout, peer).await
                        else {
                            return;
                        };
                        let connection = builder
                            .serve_connection_with_upgrades(TokioIo::new(stream), service);
                        let _ = watcher.watch(connection).await;
                    } else {
                        // hyper's HTTP/1-or-2 detection reads without a timer of its own:
                        // a client that connects and sends nothing would hold its slot
                        // forever. (Over TLS the handshake deadline covers this.)
                        if !preface_arrives(&stream, handshake_timeout).await {
                            tracing::debug!(%peer, "no request bytes in time; closing");
                            return;
                        }
                        let connection = builder
                            .serve_connection_with_upgrades(TokioIo::new(stream), service);
                        let _ = watcher.watch(connection).await;
                    }
                });
            }
            accepted = accept_admin(admin.as_ref()) => {
                if let Ok((stream, _)) = accepted {
                    serve_admin(&current, &builder, &graceful, &mut connections, stream);
                }
            }
        }
    }

    drop(main);
    drop(admin);
    // The drain follows the config in force when it starts.
    let app = current.load();
    app.begin_shutdown();
    tracing::info!("shutting down: draining in-flight requests");
    let deadline = tokio::time::Instant::now() + app.live.config.server.shutdown_timeout;
    match tokio::time::timeout_at(deadline, graceful.shutdown()).await {
        Ok(()) => tracing::info!("all connections closed"),
        Err(_) => {
            tracing::warn!("drain deadline passed; closing remaining connections");
            // Aborting a task drops its connection, which closes the socket and cancels the
            // request still in flight on it.
            connections.abort_all();
        }
    }
    while connections.join_next().await.is_some() {}
    // Upgraded connections (auth channels, proxied WebSockets) live in tasks of their own,
    // each holding a slot, and close themselves on the drain signal (a channel with a 1001
    // close frame). Waiting until every slot is back, within the same deadline, lets those
    // close frames out before `run` returns and the process exits.
    let all = u32::try_from(app.live.config.server.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout_at(deadline, slots.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("drain deadline passed with upgraded connections still open");
    }
}

/// An open connection, counted in `gatehouse_connections_open` and holding one slot of
/// `server.max_connections` until it is dropped, however its task ends.
struct Open {
    gauge: prometheus::IntGauge,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl Open {
    fn new(app: &App, slot: tokio::sync::OwnedSemaphorePermit) -> Open {
        let gauge = app.metrics.connections_open.clone();
        gauge.inc();
        Open { gauge, _slot: slot }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// Completes a TLS handshake within `limit`; `None` (logged at debug) when the client fails
/// it or is too slow: plain HTTP on the TLS port, scanners, stale trust stores are the
/// client's problem.
async fn tls_handshake(
    acceptor: &tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    limit: std::time::Duration,
    peer: SocketAddr,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    match tokio::time::timeout(limit, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            None
        }
    }
}

/// The HTTP/2 connection preface; hyper tells HTTP/2 from HTTP/1 by it.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Waits, at most `limit`, until the client has sent enough bytes for hyper to tell HTTP/1
/// from HTTP/2: one byte that cannot start the HTTP/2 preface, or the whole preface. False
/// when the client stays silent (or dribbles a partial preface) or closes.
async fn preface_arrives(stream: &TcpStream, limit: std::time::Duration) -> bool {
    let wait = async {
        let mut buf = [0u8; 24];
        loop {
            match stream.peek(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) if n >= H2_PREFACE.len() || buf[..n] != H2_PREFACE[..n] => return true,
                // A partial HTTP/2 preface: peeking does not consume, so the socket stays
                // readable; look again at a gentle pace until the rest arrives.
                Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
            }
        }
    };
    tokio::time::timeout(limit, wait).await.unwrap_or(false)
}

async fn accept_admin(admin: Option<&TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match admin {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

fn serve_admin(
    current: &Arc<Current>,
    builder: &auto::Builder<TokioExecutor>,
    graceful: &GracefulShutdown,
    connections: &mut JoinSet<()>,
    stream: TcpStream,
) {
    let current = current.clone();
    let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
        let app = current.load();
        async move {
            let response = match crate::ops::handle(&app, &request).await {
                Some(response) => response,
                None => crate::error::Error::NotFound.into_response(),
            };
            Ok::<_, Infallible>(response)
        }
    });
    let connection = builder
        .serve_connection(TokioIo::new(stream), service)
        .into_owned();
    let watched = graceful.watch(connection);
    connections.spawn(async move {
        let _ = watched.await;
    });
}
