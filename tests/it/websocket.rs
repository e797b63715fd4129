//! WebSockets through gatehouse: authorised like any request, then spliced both ways.

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::harness::{Gatehouse, ROUTES};

/// A WebSocket echo upstream that also echoes the identity header it was given.
// The handshake callback's signature (a large `Err` variant) is tungstenite's, not ours.
#[allow(clippy::result_large_err)]
async fn ws_echo_upstream() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut user = String::new();
                let callback =
                    |req: &tokio_tungstenite::tungstenite::handshake::server::Request, resp| {
                        user = req
                            .headers()
                            .get("x-auth-user-id")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("anonymous")
                            .to_string();
                        Ok(resp)
                    };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if let Message::Text(text) = msg {
                        let reply = format!("{user}: {text}");
                        if ws.send(Message::Text(reply.into())).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

async fn connect(
    gh: &Gatehouse,
    token: Option<&str>,
) -> Result<tokio_tungstenite::WebSocketStream<TcpStream>, WsError> {
    let mut request = format!("ws://{}/api/ws", gh.addr)
        .into_client_request()
        .unwrap();
    if let Some(t) = token {
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    request
        .headers_mut()
        .insert("x-auth-user-id", "spoofed".parse().unwrap());
    let stream = TcpStream::connect(gh.addr).await.unwrap();
    tokio_tungstenite::client_async(request, stream)
        .await
        .map(|(ws, _)| ws)
}

#[tokio::test]
async fn websocket_is_authorised_then_spliced() {
    let upstream = ws_echo_upstream().await;
    let gh = Gatehouse::start_with(upstream, ROUTES, &[]).await;

    // No token: 401, no 101.
    match connect(&gh, None).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 401),
        other => panic!("unauthenticated upgrade was not refused: {other:?}"),
    }
    // A bad token: 401 too.
    match connect(&gh, Some("not.a.token")).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 401),
        other => panic!("upgrade with a bad token was not refused: {other:?}"),
    }

    // A good token: the upgrade goes through and messages flow both ways, with identity
    // from the token, never the client's spoofed header.
    let token = gh.token("ws-user", &["reader"]);
    let mut ws = connect(&gh, Some(&token))
        .await
        .expect("upgrade with a token");
    for i in 0..3 {
        ws.send(Message::Text(format!("hello {i}").into()))
            .await
            .unwrap();
        let reply = ws.next().await.unwrap().unwrap();
        assert_eq!(
            reply.into_text().unwrap().as_str(),
            format!("ws-user: hello {i}")
        );
    }
    ws.close(None).await.unwrap();
}

/// "WebSocket smuggling": an upstream endpoint that answers 101 without switching to
/// WebSocket must not get a raw pipe spliced to the client.
#[tokio::test]
async fn a_101_without_a_matching_accept_is_not_spliced() {
    let upstream = crate::harness::raw_upstream(|_| {
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"
            .to_vec()
    })
    .await;
    let gh = Gatehouse::start_with(upstream, ROUTES, &[]).await;
    let token = gh.token("ws-user", &["reader"]);
    match connect(&gh, Some(&token)).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 502),
        other => panic!("a bogus 101 was spliced: {other:?}"),
    }
}

/// A spliced WebSocket ends when the server drains; it does not outlive `run`.
#[tokio::test]
async fn a_drain_closes_spliced_websockets() {
    let upstream = ws_echo_upstream().await;
    let gh = Gatehouse::start_with(upstream, ROUTES, &[]).await;
    let token = gh.token("ws-user", &["reader"]);
    let mut ws = connect(&gh, Some(&token))
        .await
        .expect("upgrade with a token");
    ws.send(Message::Text("ping".into())).await.unwrap();
    ws.next().await.unwrap().unwrap();
    gh.stop().await;
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the websocket outlived the server");
}
