//! WebSocket pass-through. An `Upgrade: websocket` request goes through the whole gate like
//! any other (path normalisation, token, policy, rate limits) before it is forwarded, so an
//! unauthenticated upgrade gets its 401 and never a 101. When the upstream answers 101, the
//! two upgraded connections are spliced both ways until either side closes.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

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
    let mut input = Vec::with_capacity(key.len() + ACCEPT_GUID.len());
    input.extend_from_slice(key.as_bytes());
    input.extend_from_slice(ACCEPT_GUID);
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, &input);
    use base64::Engine as _;
    let expected = base64::engine::general_purpose::STANDARD.encode(digest.as_ref());
    has_token(response, header::UPGRADE, "websocket")
        && response
            .get(header::SEC_WEBSOCKET_ACCEPT)
            .is_some_and(|v| v.as_bytes() == expected.as_bytes())
}

fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Puts back the two hop-by-hop headers the handshake needs, after the proxy removed every
/// hop-by-hop header (including any other `Connection` tokens the client sent).
pub fn restore_handshake_headers(headers: &mut HeaderMap) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
}

/// Copies bytes both ways between the client's and the upstream's upgraded connections.
pub async fn splice(client: OnUpgrade, upstream: OnUpgrade, request_id: String) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(request_id, error = %e, "websocket upgrade did not complete");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((up, down)) => {
            tracing::debug!(
                request_id,
                bytes_up = up,
                bytes_down = down,
                "websocket closed"
            )
        }
        Err(e) => tracing::debug!(request_id, error = %e, "websocket ended with an error"),
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
