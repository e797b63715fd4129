//! WebSocket pass-through. An `Upgrade: websocket` request goes through the whole gate like
//! any other (path normalisation, token, policy, rate limits) before it is forwarded, so an
//! unauthenticated upgrade gets its 401 and never a 101. When the upstream answers a genuine
//! 101, the two upgraded connections are spliced both ways until either side closes, the
//! token that authorised them expires, or the server drains; the splice holds a connection
//! slot of its own meanwhile.
//!
//! [`crate::proxy::Relay`] takes the [`Handshake`] off the request before forwarding it and
//! hands the upstream's answer to [`switch`], which decides whether to splice. What a splice
//! borrows from the server (a connection slot, the time, the drain signal) comes through
//! [`Host`], because the shared state owns the upstream client and so cannot be named here.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::upgrade::OnUpgrade;
use std::time::Duration;

use hyper_util::rt::TokioIo;

use crate::error::Error;

/// What a splice borrows from the server; the gate implements it for the shared state. `Sync`
/// because the request future that holds it moves between threads.
pub trait Host: Sync {
    /// A connection slot of its own, or `None` when `server.max_connections` are taken.
    fn connection_slot(&self) -> Option<tokio::sync::OwnedSemaphorePermit>;
    /// Unix time now, in seconds.
    fn now(&self) -> u64;
    /// Turns true when the server drains.
    fn draining(&self) -> tokio::sync::watch::Receiver<bool>;
}

/// The GUID RFC 6455 §1.3 mixes into `Sec-WebSocket-Accept`.
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The client's `Sec-WebSocket-Key` when the request is a complete HTTP/1.1 WebSocket opening
/// handshake (RFC 6455 §4.1): GET, `Connection: upgrade`, `Upgrade: websocket`, version 13
/// and a key. Anything less is not an upgrade and is forwarded (or refused) as plain HTTP.
pub fn upgrade_key<B>(request: &Request<B>) -> Option<HeaderValue> {
    let headers = request.headers();
    let is_upgrade = request.method() == Method::GET
        && request.version() == http::Version::HTTP_11
        && has_token(headers, header::CONNECTION, "upgrade")
        && has_token(headers, header::UPGRADE, "websocket")
        && headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_some_and(|v| v.as_bytes() == b"13");
    is_upgrade
        .then(|| headers.get(header::SEC_WEBSOCKET_KEY).cloned())
        .flatten()
        .filter(|key| !key.is_empty() && key.len() <= 64)
}

/// True when the upstream's 101 really is the WebSocket switch this key asked for: it says
/// `Upgrade: websocket` and carries the matching `Sec-WebSocket-Accept`. A 101 without them
/// (an endpoint that echoes a status code, say) would hand the client a raw HTTP pipe past
/// the gate: "WebSocket smuggling".
pub fn upstream_accepted(key: &HeaderValue, response: &HeaderMap) -> bool {
    let expected = accept_key(key);
    has_token(response, header::UPGRADE, "websocket")
        && response
            .get(header::SEC_WEBSOCKET_ACCEPT)
            .is_some_and(|v| v.as_bytes() == expected.as_bytes())
}

/// The `Sec-WebSocket-Accept` that answers `key` (RFC 6455 §4.2.2): base64 of the SHA-1 of
/// the key and the protocol's GUID. Used to check an upstream's 101, and to write gatehouse's
/// own for the auth channel.
pub fn accept_key(key: &HeaderValue) -> String {
    let mut input = Vec::with_capacity(key.len() + ACCEPT_GUID.len());
    input.extend_from_slice(key.as_bytes());
    input.extend_from_slice(ACCEPT_GUID);
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, &input);
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// A client's WebSocket opening handshake, taken off the request before it is forwarded.
pub struct Handshake {
    key: HeaderValue,
    /// The client's side of the upgrade, resolved once hyper has sent our 101.
    client: OnUpgrade,
}

impl Handshake {
    /// Takes the handshake off a request that is a complete one ([`upgrade_key`]); `None` for
    /// every other request, which is forwarded as plain HTTP.
    pub fn take<B>(request: &mut Request<B>) -> Option<Handshake> {
        let key = upgrade_key(request)?;
        Some(Handshake {
            key,
            client: hyper::upgrade::on(request),
        })
    }
}

/// What the upstream's answer means for the request: anything but a 101 is an ordinary
/// response (`Ok(false)`). A 101 that accepts the client's handshake starts the splice, in a
/// task of its own holding a connection slot, and is passed on (`Ok(true)`: the caller puts
/// the handshake headers back). A 101 nobody asked for, or one that does not accept the key,
/// is a 502: passing it on would hand the client a raw upstream socket past the gate.
pub fn switch<B>(
    host: &dyn Host,
    handshake: Option<Handshake>,
    response: &mut Response<B>,
    request_id: &HeaderValue,
    expires_at: Option<u64>,
) -> Result<bool, Error> {
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Ok(false);
    }
    let Some(handshake) = handshake.filter(|h| upstream_accepted(&h.key, response.headers()))
    else {
        return Err(Error::UpstreamUnavailable(
            "unexpected 101 from upstream".into(),
        ));
    };
    // The spliced pair outlives this HTTP connection and its slot: it takes a slot of its
    // own, and ends when the token expires or the server drains.
    let Some(slot) = host.connection_slot() else {
        return Err(Error::Unavailable("connection limit reached"));
    };
    let upstream = hyper::upgrade::on(response);
    let ends = Splice {
        request_id: request_id.to_str().unwrap_or_default().to_string(),
        expires_at,
        now: host.now(),
        draining: host.draining(),
        slot,
    };
    tokio::spawn(splice(handshake.client, upstream, ends));
    Ok(true)
}

/// Puts back the two hop-by-hop headers the handshake needs, after the proxy removed every
/// hop-by-hop header (including any other `Connection` tokens the client sent).
pub fn restore_handshake_headers(headers: &mut HeaderMap) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
}

/// What a splice needs besides the two connections.
pub struct Splice {
    pub request_id: String,
    /// The token's `exp`: the splice ends then, as the token would have stopped working.
    /// `None` on a public route.
    pub expires_at: Option<u64>,
    /// Unix time now, to turn `expires_at` into a delay.
    pub now: u64,
    /// Turns true when the server drains.
    pub draining: tokio::sync::watch::Receiver<bool>,
    /// The connection slot the splice holds until it ends.
    pub slot: tokio::sync::OwnedSemaphorePermit,
}

/// Copies bytes both ways between the client's and the upstream's upgraded connections,
/// until either side closes, the token expires, or the server drains.
pub async fn splice(client: OnUpgrade, upstream: OnUpgrade, splice: Splice) {
    let Splice {
        request_id,
        expires_at,
        now,
        mut draining,
        slot,
    } = splice;
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(request_id, error = %e, "websocket upgrade did not complete");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    let lifetime = expires_at.map_or(Duration::MAX, |exp| {
        Duration::from_secs(exp.saturating_sub(now))
    });
    tokio::select! {
        result = tokio::io::copy_bidirectional(&mut client, &mut upstream) => match result {
            Ok((up, down)) => {
                tracing::debug!(request_id, bytes_up = up, bytes_down = down, "websocket closed")
            }
            Err(e) => tracing::debug!(request_id, error = %e, "websocket ended with an error"),
        },
        () = sleep_or_forever(lifetime) => {
            tracing::debug!(request_id, "websocket closed: the token expired");
        }
        _ = draining.wait_for(|&d| d) => {
            tracing::debug!(request_id, "websocket closed: server draining");
        }
    }
    drop(slot);
}

async fn sleep_or_forever(delay: Duration) {
    match tokio::time::Instant::now().checked_add(delay) {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(connection: &str, upgrade: &str, version: &str) -> Request<()> {
        Request::get("/ws")
            .header("connection", connection)
            .header("upgrade", upgrade)
            .header("sec-websocket-version", version)
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .body(())
            .unwrap()
    }

    #[test]
    fn recognises_the_handshake() {
        assert!(upgrade_key(&request("Upgrade", "websocket", "13")).is_some());
        assert!(upgrade_key(&request("keep-alive, upgrade", "WebSocket", "13")).is_some());
        assert!(upgrade_key(&request("keep-alive", "websocket", "13")).is_none());
        assert!(upgrade_key(&request("upgrade", "h2c", "13")).is_none());
        assert!(upgrade_key(&request("upgrade", "websocket", "8")).is_none());
    }

    /// The example of RFC 6455 §1.3.
    #[test]
    fn accept_must_match_the_key() {
        let key = HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ==");
        let mut response = HeaderMap::new();
        response.insert("upgrade", HeaderValue::from_static("websocket"));
        response.insert(
            "sec-websocket-accept",
            HeaderValue::from_static("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        );
        assert!(upstream_accepted(&key, &response));
        response.insert("sec-websocket-accept", HeaderValue::from_static("nope"));
        assert!(!upstream_accepted(&key, &response));
        response.remove("sec-websocket-accept");
        assert!(!upstream_accepted(&key, &response));
    }
}
