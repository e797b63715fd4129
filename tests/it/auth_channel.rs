//! The WebSocket auth channel (`GET /auth/ws`, API.md §13) over a real WebSocket client:
//! the seed client's flow message by message, the refusals, framing limits, idle timeout,
//! drain, and the limits and lockout it shares with HTTP.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::Method;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::harness::{Gatehouse, PASSWORD, ROUTES};

/// A safety net so a server that never answers fails the test instead of hanging it; never
/// a synchronisation point.
const PATIENCE: Duration = Duration::from_secs(30);

/// A client of the auth channel.
pub(crate) struct Client {
    ws: WebSocketStream<TcpStream>,
    next_id: u64,
}

/// Opens `/auth/ws`, with a bearer token on the upgrade when given.
async fn try_connect(gh: &Gatehouse, token: Option<&str>) -> Result<Client, WsError> {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer
        .iter()
        .map(|b| ("authorization", b.as_str()))
        .collect();
    try_connect_with(gh, &headers).await
}

/// Opens `/auth/ws` with extra headers on the upgrade request.
async fn try_connect_with(gh: &Gatehouse, headers: &[(&str, &str)]) -> Result<Client, WsError> {
    let mut request = format!("ws://{}/auth/ws", gh.addr)
        .into_client_request()
        .unwrap();
    for (name, value) in headers {
        let name = http::HeaderName::from_bytes(name.as_bytes()).unwrap();
        request.headers_mut().insert(name, value.parse().unwrap());
    }
    let stream = TcpStream::connect(gh.addr).await.unwrap();
    let (ws, response) = tokio_tungstenite::client_async(request, stream).await?;
    assert_eq!(response.status(), 101);
    Ok(Client { ws, next_id: 0 })
}

pub(crate) async fn connect(gh: &Gatehouse) -> Client {
    try_connect(gh, None).await.expect("the upgrade")
}

impl Client {
    /// Sends an auth message for `action` with `fields` in its payload and returns the
    /// answer's payload, after checking that the envelope echoes the id and the action.
    pub(crate) async fn ask(&mut self, action: &str, fields: Value) -> Value {
        self.next_id += 1;
        let id = format!("m{}", self.next_id);
        let mut payload = fields;
        payload["action"] = action.into();
        let message = json!({"type": "auth", "id": id, "payload": payload});
        let answer = self.send_text(&message.to_string()).await;
        assert_eq!(answer["type"], "auth", "{answer}");
        assert_eq!(answer["id"], id.as_str(), "{answer}");
        assert_eq!(answer["payload"]["action"], action, "{answer}");
        answer["payload"].clone()
    }

    /// Sends a text message and returns the whole answer.
    async fn send_text(&mut self, text: &str) -> Value {
        self.ws.send(Message::text(text)).await.unwrap();
        self.answer().await
    }

    /// The next text message.
    async fn answer(&mut self) -> Value {
        loop {
            let next = tokio::time::timeout(PATIENCE, self.ws.next())
                .await
                .expect("no answer in time");
            match next {
                Some(Ok(Message::Text(text))) => {
                    return serde_json::from_str(text.as_str())
                        .unwrap_or_else(|e| panic!("answer is not JSON ({e}): {text}"));
                }
                Some(Ok(Message::Pong(_) | Message::Ping(_))) => continue,
                other => panic!("expected an answer, got {other:?}"),
            }
        }
    }

    /// Reads until the server's close frame, then to the end of the connection (which sends
    /// the client's reply); the close frame's code and reason.
    async fn closed(&mut self) -> (u16, String) {
        loop {
            let next = tokio::time::timeout(PATIENCE, self.ws.next())
                .await
                .expect("not closed in time");
            match next {
                Some(Ok(Message::Close(Some(frame)))) => {
                    while let Ok(Some(Ok(_))) = tokio::time::timeout(PATIENCE, self.ws.next()).await
                    {
                    }
                    return (u16::from(frame.code), frame.reason.to_string());
                }
                Some(Ok(Message::Close(None))) => panic!("closed without a code"),
                Some(Ok(_)) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    }
}

/// The payload's error code, asserting `success: false`.
#[track_caller]
pub(crate) fn error_code(payload: &Value) -> &str {
    assert_eq!(payload["success"], false, "{payload}");
    assert!(payload["error"]["message"].is_string(), "{payload}");
    payload["error"]["code"].as_str().unwrap_or_default()
}

#[track_caller]
fn success(payload: &Value) {
    assert_eq!(payload["success"], true, "{payload}");
}

const DEBUG: &str = r#"
[auth]
expose_debug_tokens = true
"#;

/// The seed client's flow, message by message, and the tokens it gets working on the proxy
/// path through the echo upstream.
#[tokio::test]
async fn the_seed_flow_message_by_message() {
    let gh = Gatehouse::start(
        &format!("{ROUTES}{DEBUG}"),
        &[("GATEHOUSE_LOG_ACCESS", "true")],
    )
    .await;
    gh.json(
        Method::POST,
        "/auth/register",
        None,
        json!({"email": "player@example.com", "username": "player1", "password": PASSWORD}),
    )
    .await
    .expect(201);
    let mut ws = connect(&gh).await;

    // Login by username and password: the token response, beside action and success.
    let login = ws
        .ask(
            "login",
            json!({"username": "player1", "password": PASSWORD}),
        )
        .await;
    success(&login);
    assert_eq!(login["token_type"], "Bearer");
    assert_eq!(login["user"]["username"], "player1");
    assert!(login["expires_in"].as_u64().unwrap() > 0);
    let access = login["access_token"].as_str().unwrap().to_string();
    let first_refresh = login["refresh_token"].as_str().unwrap().to_string();
    // The token works on the proxy path, with the identity the upstream sees.
    let user_id = login["user"]["id"].as_str().unwrap().to_string();
    let echoed = gh
        .get_with(
            "/api/items",
            &[("authorization", &format!("Bearer {access}"))],
        )
        .await;
    echoed.expect(200);
    assert_eq!(
        echoed.upstream_header("x-auth-user-id").as_deref(),
        Some(user_id.as_str())
    );

    // Refresh with the token named, then without: the connection's last one is used.
    let refreshed = ws
        .ask("refresh", json!({"refresh_token": first_refresh}))
        .await;
    success(&refreshed);
    let second_refresh = refreshed["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(second_refresh, first_refresh);
    let again = ws.ask("refresh", json!({})).await;
    success(&again);
    assert_ne!(again["refresh_token"], second_refresh.as_str());
    let access = again["access_token"].as_str().unwrap().to_string();
    gh.get_with(
        "/api/items",
        &[("authorization", &format!("Bearer {access}"))],
    )
    .await
    .expect(200);
    // The spent one is refused, with the HTTP code (reuse revokes the session).
    let reused = ws
        .ask("refresh", json!({"refresh_token": first_refresh}))
        .await;
    assert_eq!(error_code(&reused), "TOKEN_REVOKED");

    // Request a reset: the token comes back under expose_debug_tokens.
    let requested = ws
        .ask(
            "request_password_reset",
            json!({"email": "player@example.com"}),
        )
        .await;
    success(&requested);
    assert!(requested["message"].is_string(), "{requested}");
    let token = requested["token"].as_str().unwrap().to_string();
    assert_eq!(requested["debug_token"], token.as_str());

    // Reset; the old password is refused, the new one works.
    let new_password = "a brand new passphrase";
    let reset = ws
        .ask(
            "reset_password",
            json!({"token": token, "new_password": new_password}),
        )
        .await;
    success(&reset);
    assert_eq!(reset["password_reset"], true);
    let old = ws
        .ask(
            "login",
            json!({"username": "player1", "password": PASSWORD}),
        )
        .await;
    assert_eq!(error_code(&old), "INVALID_CREDENTIALS");
    let spent = ws
        .ask(
            "reset_password",
            json!({"token": token, "new_password": "yet another passphrase"}),
        )
        .await;
    assert_eq!(error_code(&spent), "INVALID_RESET_TOKEN");
    let login = ws
        .ask(
            "login",
            json!({"email": "player@example.com", "password": new_password}),
        )
        .await;
    success(&login);
    let access = login["access_token"].as_str().unwrap().to_string();
    let bearer = format!("Bearer {access}");
    gh.get_with("/api/items", &[("authorization", &bearer)])
        .await
        .expect(200);

    // Logout ends the connection's session at once on the proxy path.
    let logout = ws.ask("logout", json!({})).await;
    success(&logout);
    assert_eq!(logout["logged_out"], true);
    assert_eq!(logout["sessions_revoked"], 1);
    gh.get_with("/api/items", &[("authorization", &bearer)])
        .await
        .expect_error(401, "TOKEN_REVOKED");
    // Nothing left to log out.
    let twice = ws.ask("logout", json!({})).await;
    assert_eq!(error_code(&twice), "TOKEN_MISSING");

    // Counted by action and result.
    let metrics = gh.get("/metrics").await.text();
    for series in [
        r#"gatehouse_auth_channel_messages_total{action="login",result="served"} 2"#,
        r#"gatehouse_auth_channel_messages_total{action="login",result="unauthenticated"} 1"#,
        r#"gatehouse_auth_channel_messages_total{action="refresh",result="served"} 2"#,
        r#"gatehouse_auth_channel_messages_total{action="logout",result="served"} 1"#,
        r#"gatehouse_auth_channel_connections 1"#,
        r#"gatehouse_requests_total{method_class="read",outcome="served",route="auth:/ws"} 1"#,
    ] {
        assert!(metrics.contains(series), "{series} missing:\n{metrics}");
    }
    ws.ws.close(None).await.unwrap();
    gh.stop().await;
}

/// Malformed messages get an `INVALID_REQUEST` answer, `id` and `action` echoed when
/// readable, and the connection stays open; payloads are judged as the HTTP bodies are.
#[tokio::test]
async fn malformed_messages_are_answered_and_the_connection_stays_open() {
    let gh = Gatehouse::start(DEBUG, &[]).await;
    let mut ws = connect(&gh).await;
    for (text, id, action) in [
        ("this is not json", Value::Null, Value::Null),
        ("{\"type\": \"auth\", ", Value::Null, Value::Null),
        ("[1, 2, 3]", Value::Null, Value::Null),
        ("\"auth\"", Value::Null, Value::Null),
        (r#"{"type":"auth","id":"a1"}"#, json!("a1"), Value::Null),
        (
            r#"{"type":"auth","id":"a2","payload":{"action":"fly"}}"#,
            json!("a2"),
            json!("fly"),
        ),
        (
            r#"{"type":"chat","id":7,"payload":{"action":"login"}}"#,
            json!(7),
            json!("login"),
        ),
        (
            r#"{"id":"a3","payload":{"action":"login"}}"#,
            json!("a3"),
            json!("login"),
        ),
        (
            r#"{"type":"auth","id":["x"],"payload":{"action":"logout"}}"#,
            Value::Null,
            json!("logout"),
        ),
        (
            r#"{"type":"auth","id":"a4","payload":{"action":42}}"#,
            json!("a4"),
            Value::Null,
        ),
        // A payload of the wrong shape for its action: the HTTP body's 400.
        (
            r#"{"type":"auth","id":"a5","payload":{"action":"login","username":"x"}}"#,
            json!("a5"),
            json!("login"),
        ),
        (
            r#"{"type":"auth","id":"a6","payload":{"action":"login","username":"x","password":5}}"#,
            json!("a6"),
            json!("login"),
        ),
    ] {
        let answer = ws.send_text(text).await;
        assert_eq!(answer["type"], "auth", "{text}: {answer}");
        assert_eq!(answer["id"], id, "{text}: {answer}");
        assert_eq!(answer["payload"]["action"], action, "{text}: {answer}");
        assert_eq!(error_code(&answer["payload"]), "INVALID_REQUEST", "{text}");
    }
    // A value the service refuses is the HTTP 422, with its fields.
    let bad = ws
        .ask("request_password_reset", json!({"email": "not an address"}))
        .await;
    assert_eq!(error_code(&bad), "VALIDATION_FAILED");
    assert!(bad["error"]["fields"]["email"].is_string(), "{bad}");
    let weak = ws
        .ask(
            "reset_password",
            json!({"token": "x", "new_password": "short"}),
        )
        .await;
    assert!(
        ["WEAK_PASSWORD", "INVALID_RESET_TOKEN"].contains(&error_code(&weak)),
        "{weak}"
    );
    // Pings are answered; the connection still serves.
    ws.ws.send(Message::Ping("hi".into())).await.unwrap();
    let pong = tokio::time::timeout(PATIENCE, ws.ws.next()).await.unwrap();
    assert!(
        matches!(&pong, Some(Ok(Message::Pong(p))) if p.as_ref() == b"hi"),
        "{pong:?}"
    );
    let unknown = ws
        .ask(
            "request_password_reset",
            json!({"email": "nobody@example.com"}),
        )
        .await;
    success(&unknown);
    assert!(unknown.get("token").is_none(), "{unknown}");
    // Gone before the drain, which would otherwise wait for its close reply.
    drop(ws);
    gh.stop().await;
}

/// A message split into fragments is reassembled and answered; one whose fragments add up
/// to more than `auth.ws.max_message_bytes` closes with 1009, as does one big frame.
#[tokio::test]
async fn fragments_are_reassembled_and_oversized_messages_close_with_1009() {
    let gh = Gatehouse::start("[auth.ws]\nmax_message_bytes = 1024\n", &[]).await;
    let mut ws = connect(&gh).await;
    let text = json!({"type": "auth", "id": "frag", "payload":
        {"action": "request_password_reset", "email": "someone@example.com"}})
    .to_string();
    let (a, b) = text.split_at(text.len() / 2);
    let (b, c) = b.split_at(b.len() / 2);
    let first = Frame::message(a.as_bytes().to_vec(), OpCode::Data(Data::Text), false);
    let middle = Frame::message(b.as_bytes().to_vec(), OpCode::Data(Data::Continue), false);
    let last = Frame::message(c.as_bytes().to_vec(), OpCode::Data(Data::Continue), true);
    for frame in [first, middle, last] {
        ws.ws.send(Message::Frame(frame)).await.unwrap();
    }
    let answer = ws.answer().await;
    assert_eq!(answer["id"], "frag", "{answer}");
    success(&answer["payload"]);

    // Fragments of 600 bytes each: the second crosses the limit.
    let piece = "x".repeat(600);
    let first = Frame::message(piece.clone().into_bytes(), OpCode::Data(Data::Text), false);
    let second = Frame::message(piece.into_bytes(), OpCode::Data(Data::Continue), true);
    ws.ws.send(Message::Frame(first)).await.unwrap();
    let _ = ws.ws.send(Message::Frame(second)).await;
    assert_eq!(ws.closed().await.0, 1009);

    // One frame over the limit.
    let mut ws = connect(&gh).await;
    let _ = ws.ws.send(Message::text("y".repeat(5000))).await;
    assert_eq!(ws.closed().await.0, 1009);
    gh.stop().await;
}

/// Binary messages close with 1003 (the channel speaks JSON text); a frame with a reserved
/// opcode is a protocol error (1002).
#[tokio::test]
async fn binary_messages_close_with_1003() {
    let gh = Gatehouse::start("", &[]).await;
    let mut ws = connect(&gh).await;
    ws.ws
        .send(Message::binary(b"{\"type\":\"auth\"}".to_vec()))
        .await
        .unwrap();
    let (code, reason) = ws.closed().await;
    assert_eq!(code, 1003, "{reason}");
    assert!(reason.contains("binary"), "{reason}");

    let mut ws = connect(&gh).await;
    let header = FrameHeader {
        opcode: OpCode::Data(Data::Reserved(3)),
        ..FrameHeader::default()
    };
    let _ = ws
        .ws
        .send(Message::Frame(Frame::from_payload(
            header,
            b"x".to_vec().into(),
        )))
        .await;
    assert_eq!(ws.closed().await.0, 1002);
    gh.stop().await;
}

/// Over `auth.ws.message_rate`, messages are answered `RATE_LIMITED` with `retry_after`;
/// five refusals in a row close the connection with 1008.
#[tokio::test]
async fn a_flood_is_answered_then_closed_with_1008() {
    let gh = Gatehouse::start("[auth.ws]\nmessage_rate = \"3/1h\"\n", &[]).await;
    let mut ws = connect(&gh).await;
    for _ in 0..3 {
        let answer = ws.send_text("nonsense").await;
        assert_eq!(error_code(&answer["payload"]), "INVALID_REQUEST");
    }
    for _ in 0..4 {
        let refused = ws
            .ask("request_password_reset", json!({"email": "a@example.com"}))
            .await;
        assert_eq!(error_code(&refused), "RATE_LIMITED");
        assert!(refused["error"]["retry_after"].as_u64().unwrap() > 0);
    }
    ws.ws.send(Message::text("one more")).await.unwrap();
    assert_eq!(ws.closed().await.0, 1008);
    // Counted once the channel's task has ended, just after the socket closed: poll.
    let series = r#"gatehouse_auth_channel_closes_total{reason="flood"} 1"#;
    let mut metrics = String::new();
    for _ in 0..500 {
        metrics = gh.get("/metrics").await.text();
        if metrics.contains(series) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(metrics.contains(series), "{series} missing:\n{metrics}");
    assert!(
        metrics.contains(
            r#"gatehouse_auth_channel_messages_total{action="request_password_reset",result="rate_limited"} 4"#
        ),
        "{metrics}"
    );
    gh.stop().await;
}

/// A connection that sends nothing for `auth.ws.idle_timeout` is closed with 1000; the
/// slot it held comes back.
#[tokio::test]
async fn idle_connections_are_closed() {
    let gh = Gatehouse::start(
        "[auth.ws]\nidle_timeout = \"200ms\"\nmax_connections = 1\n",
        &[],
    )
    .await;
    let mut ws = connect(&gh).await;
    let (code, reason) = ws.closed().await;
    assert_eq!(code, 1000);
    assert!(reason.contains("idle"), "{reason}");
    // The only slot is free again once the channel has ended; poll for it.
    let mut again = None;
    for _ in 0..500 {
        match try_connect(&gh, None).await {
            Ok(ws) => {
                again = Some(ws);
                break;
            }
            Err(WsError::Http(response)) if response.status() == 503 => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(again.is_some(), "the slot never came back");
    drop(again);
    gh.stop().await;
}

/// `auth.ws.max_connections` channels at once; the next upgrade is answered 503.
#[tokio::test]
async fn the_channel_count_is_capped() {
    let gh = Gatehouse::start("[auth.ws]\nmax_connections = 2\n", &[]).await;
    let mut first = connect(&gh).await;
    let _second = connect(&gh).await;
    match try_connect(&gh, None).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 503),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a third channel was accepted"),
    }
    // The open ones still serve.
    let answer = first.send_text("{}").await;
    assert_eq!(error_code(&answer["payload"]), "INVALID_REQUEST");
    drop((first, _second));
    gh.stop().await;
}

/// The server's drain closes open channels with 1001.
#[tokio::test]
async fn draining_closes_channels_with_1001() {
    let gh = Gatehouse::start("", &[]).await;
    let mut ws = connect(&gh).await;
    let answer = ws.send_text("{}").await;
    assert_eq!(error_code(&answer["payload"]), "INVALID_REQUEST");
    let stopping = tokio::spawn(gh.stop());
    let (code, _) = ws.closed().await;
    assert_eq!(code, 1001);
    // The client's reply goes out on its next read; the server then ends the connection.
    while let Ok(Some(Ok(_))) = tokio::time::timeout(PATIENCE, ws.ws.next()).await {}
    stopping.await.unwrap();
}

/// Failed logins over HTTP lock the login name for the channel too, and the per-IP `login`
/// class counts both transports: one code path.
#[tokio::test]
async fn lockout_and_rate_limits_are_shared_with_http() {
    let gh = Gatehouse::start("[auth.lockout]\nmax_failures = 3\n", &[]).await;
    gh.register("locked@example.com").await;
    for _ in 0..2 {
        gh.login("locked@example.com", "wrong password")
            .await
            .expect_error(401, "INVALID_CREDENTIALS");
    }
    // The failure that uses up the budget locks the name at once.
    gh.login("locked@example.com", "wrong password")
        .await
        .expect_error(423, "ACCOUNT_LOCKED");
    let mut ws = connect(&gh).await;
    let locked = ws
        .ask(
            "login",
            json!({"email": "locked@example.com", "password": PASSWORD}),
        )
        .await;
    assert_eq!(error_code(&locked), "ACCOUNT_LOCKED");
    assert!(locked["error"]["retry_after"].as_u64().unwrap() > 0);
    // And the other way round: failures on the channel lock HTTP logins.
    gh.register("other@example.com").await;
    for expected in [
        "INVALID_CREDENTIALS",
        "INVALID_CREDENTIALS",
        "ACCOUNT_LOCKED",
    ] {
        let failed = ws
            .ask(
                "login",
                json!({"email": "other@example.com", "password": "wrong password"}),
            )
            .await;
        assert_eq!(error_code(&failed), expected);
    }
    gh.login("other@example.com", PASSWORD)
        .await
        .expect_error(423, "ACCOUNT_LOCKED");
    drop(ws);
    gh.stop().await;

    let gh = Gatehouse::start("", &[("GATEHOUSE_RATE_LIMITS_LOGIN", "2/1h")]).await;
    gh.register("limited@example.com").await;
    gh.login("limited@example.com", PASSWORD).await.expect(200);
    let mut ws = connect(&gh).await;
    let second = ws
        .ask(
            "login",
            json!({"email": "limited@example.com", "password": PASSWORD}),
        )
        .await;
    success(&second);
    let third = ws
        .ask(
            "login",
            json!({"email": "limited@example.com", "password": PASSWORD}),
        )
        .await;
    assert_eq!(error_code(&third), "RATE_LIMITED");
    gh.login("limited@example.com", PASSWORD)
        .await
        .expect_error(429, "RATE_LIMITED");
    drop(ws);
    gh.stop().await;
}

/// A channel outlives the config generation it was opened on. An operator who turns the
/// lockout on by a reload in the middle of a guessing attack must stop guesses arriving on
/// channels opened before, not only on new connections: each message runs on the
/// generation in force when it arrives, as an HTTP request would.
#[tokio::test]
async fn a_reload_reaches_channels_already_open() {
    let gh = Gatehouse::start("[auth.lockout]\nmax_failures = 0\n", &[]).await;
    gh.register("victim@example.com").await;
    let mut ws = connect(&gh).await;
    let guess = json!({"email": "victim@example.com", "password": "wrong password"});
    for _ in 0..4 {
        assert_eq!(
            error_code(&ws.ask("login", guess.clone()).await),
            "INVALID_CREDENTIALS"
        );
    }
    assert!(matches!(
        gh.reload("[auth.lockout]\nmax_failures = 3\n"),
        gatehouse::reload::Outcome::Applied { .. }
    ));
    for expected in [
        "INVALID_CREDENTIALS",
        "INVALID_CREDENTIALS",
        "ACCOUNT_LOCKED",
    ] {
        assert_eq!(error_code(&ws.ask("login", guess.clone()).await), expected);
    }
    // Over HTTP too: one lockout.
    gh.login("victim@example.com", PASSWORD)
        .await
        .expect_error(423, "ACCOUNT_LOCKED");
    drop(ws);
    gh.stop().await;
}

/// A bearer token on the upgrade must be good, and is then the one `logout` ends; the
/// endpoint refuses what is not a WebSocket upgrade.
#[tokio::test]
async fn the_upgrade_checks_its_bearer_and_its_handshake() {
    let gh = Gatehouse::start(ROUTES, &[]).await;
    gh.register("bearer@example.com").await;
    let (access, _) = gh.session("bearer@example.com", PASSWORD).await;
    match try_connect(&gh, Some("not.a.token")).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 401),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("an upgrade with a bad token was accepted"),
    }
    let mut ws = try_connect(&gh, Some(&access)).await.expect("the upgrade");
    let logout = ws.ask("logout", json!({})).await;
    success(&logout);
    gh.get_with(
        "/api/items",
        &[("authorization", &format!("Bearer {access}"))],
    )
    .await
    .expect_error(401, "TOKEN_REVOKED");

    gh.get("/auth/ws")
        .await
        .expect_error(400, "INVALID_REQUEST");
    gh.json(Method::POST, "/auth/ws", None, json!({}))
        .await
        .expect(405);
    drop(ws);
    gh.stop().await;

    let gh = Gatehouse::start("[auth.ws]\nenabled = false\n", &[]).await;
    gh.get("/auth/ws").await.expect_error(404, "NOT_FOUND");
    gh.stop().await;
}

/// Browsers send `Origin` and WebSockets skip CORS: an origin must be the public URL's or
/// listed; clients without `Origin` are let through.
#[tokio::test]
async fn browser_origins_must_be_allowed() {
    let gh = Gatehouse::start(
        "[auth.ws]\nallowed_origins = [\"https://App.Example.com:443\"]\n",
        &[("GATEHOUSE_SERVER_PUBLIC_URL", "https://id.example.com/base")],
    )
    .await;
    for origin in [
        "https://evil.example",
        "null",
        "http://app.example.com",
        "garbage",
    ] {
        match try_connect_with(&gh, &[("origin", origin)]).await {
            Err(WsError::Http(response)) => assert_eq!(response.status(), 403, "{origin}"),
            Err(e) => panic!("{origin}: {e}"),
            Ok(_) => panic!("{origin} was let in"),
        }
    }
    for origin in ["https://app.example.com", "https://id.example.com"] {
        let mut ws = try_connect_with(&gh, &[("origin", origin)])
            .await
            .unwrap_or_else(|e| panic!("{origin}: {e}"));
        let answer = ws.send_text("{}").await;
        assert_eq!(error_code(&answer["payload"]), "INVALID_REQUEST");
    }
    drop(connect(&gh).await);
    gh.stop().await;
}

/// Every message is an access-log line like an HTTP request's (method `WS`, its action, the
/// HTTP status of the same answer, the user it served, its own request id and the upgrade's
/// as `connection`), and the audit event of a login over the channel carries that message's
/// request id. Run alone in a child process, as the HTTP access-log test is (tracing's
/// call-site cache is process-wide).
#[tokio::test]
async fn every_message_is_access_logged_and_audited() {
    const CHILD: &str = "IT_AUTH_CHANNEL_ACCESS_LOG_CHILD";
    if std::env::var_os(CHILD).is_none() {
        crate::harness::run_alone(
            "auth_channel::every_message_is_access_logged_and_audited",
            CHILD,
        )
        .await;
        return;
    }
    let captured = crate::ops::Captured::default();
    let _guard = captured.install();
    let gh = Gatehouse::start("", &[("GATEHOUSE_LOG_ACCESS", "true")]).await;
    let user_id = gh.register("audited@example.com").await["user"]["id"].clone();
    let mut ws = try_connect_with(&gh, &[("x-request-id", "the-upgrade")])
        .await
        .expect("the upgrade");
    let login = ws
        .ask(
            "login",
            json!({"email": "audited@example.com", "password": PASSWORD}),
        )
        .await;
    success(&login);
    let failed = ws
        .ask(
            "login",
            json!({"email": "audited@example.com", "password": "not the password"}),
        )
        .await;
    assert_eq!(error_code(&failed), "INVALID_CREDENTIALS");
    drop(ws);
    gh.stop().await;

    let lines = captured.access_lines();
    let upgrade = lines
        .iter()
        .find(|l| l["method"] == "GET" && l["route"] == "auth:/ws")
        .unwrap_or_else(|| panic!("no access line for the upgrade:\n{lines:#?}"));
    assert_eq!(upgrade["status"], 101, "{upgrade}");
    assert_eq!(upgrade["request_id"], "the-upgrade", "{upgrade}");
    let messages: Vec<&Value> = lines.iter().filter(|l| l["method"] == "WS").collect();
    assert_eq!(messages.len(), 2, "{lines:#?}");
    let (ok, refused) = (messages[0], messages[1]);
    for line in [ok, refused] {
        assert_eq!(line["action"], "login", "{line}");
        assert_eq!(line["path"], "/auth/ws", "{line}");
        assert_eq!(line["route"], "auth:/ws", "{line}");
        assert_eq!(line["connection"], "the-upgrade", "{line}");
        assert!(line["micros"].as_u64().is_some(), "{line}");
        assert!(line["bytes"].as_u64().is_some_and(|b| b > 0), "{line}");
    }
    assert_eq!(
        (&ok["status"], &ok["user"]),
        (&json!(200), &user_id),
        "{ok}"
    );
    assert_eq!(
        (&refused["status"], &refused["user"]),
        (&json!(401), &json!(""))
    );
    assert_ne!(ok["request_id"], refused["request_id"]);

    let audit: Vec<Value> = captured
        .text()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["target"] == "gatehouse::audit" && e["event"] == "login")
        .collect();
    let login_ok = audit
        .iter()
        .find(|e| e["outcome"] == "ok")
        .unwrap_or_else(|| panic!("no login audit event: {audit:#?}"));
    assert_eq!(login_ok["request_id"], ok["request_id"], "{login_ok}");
    assert_eq!(login_ok["user_id"], user_id, "{login_ok}");
    assert!(audit.iter().any(|e| e["outcome"] == "failed"), "{audit:#?}");
    // Neither passwords nor tokens reach the log.
    let text = captured.text();
    let access = login["access_token"].as_str().unwrap();
    for secret in [PASSWORD, "not the password", access] {
        assert!(!text.contains(secret), "{secret} logged:\n{text}");
    }
}
