//! WebSocket pass-through. An `Upgrade: websocket` request goes through the whole gate like
//! any other (path normalisation, token, policy, rate limits) before it is forwarded, so an
//! unauthenticated upgrade gets its 401 and never a 101. When the upstream answers 101, the
//! two upgraded connections are spliced both ways until either side closes.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

/// True for an HTTP/1.1 WebSocket opening handshake (RFC 6455 §4.1).
pub fn is_upgrade<B>(request: &Request<B>) -> bool {
    request.method() == Method::GET
        && request.version() == http::Version::HTTP_11
        && has_token(request.headers(), header::CONNECTION, "upgrade")
        && has_token(request.headers(), header::UPGRADE, "websocket")
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

    fn request(connection: &str, upgrade: &str) -> Request<()> {
        Request::get("/ws")
            .header("connection", connection)
            .header("upgrade", upgrade)
            .body(())
            .unwrap()
    }

    #[test]
    fn recognises_the_handshake() {
        assert!(is_upgrade(&request("Upgrade", "websocket")));
        assert!(is_upgrade(&request("keep-alive, upgrade", "WebSocket")));
        assert!(!is_upgrade(&request("keep-alive", "websocket")));
        assert!(!is_upgrade(&request("upgrade", "h2c")));
    }
}
