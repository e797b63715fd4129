//! The WebSocket auth channel: `GET {prefix}/ws` (API.md §13), served by gatehouse itself.
//!
//! A client upgrades once and then sends messages
//! `{"type": "auth", "id": …, "payload": {"action": …, …}}` with the fields of the HTTP
//! bodies. Each is answered once with `{"type": "auth", "id": …, "payload": {"action": …,
//! "success": true | false, …}}`: the HTTP endpoint's JSON answer merged into `payload`, or
//! `error: {code, message, fields?, retry_after?}`. The actions call the very functions the
//! HTTP handlers call ([`session::login_answer`], [`recovery::forgot_answer`], …), which parse
//! the payload with [`wire::decode`] and run the accounts service: validation, the per-IP
//! rate-limit classes (keyed by the client address the gate worked out at the upgrade),
//! lockout, audit and error codes are the HTTP ones by construction.
//!
//! What the connection remembers: the access and refresh tokens of its last login or
//! refresh (or the bearer token the upgrade request carried, which must then be good).
//! `logout` ends the session of that access token, as `POST {prefix}/logout` does for its
//! bearer; `refresh` without a `refresh_token` uses the remembered one.
//!
//! Framing, and why:
//!
//! - Each message runs on the config generation in force when it arrives (like an HTTP
//!   request), not the one the channel was opened on: a reload that turns the lockout on or
//!   tightens a limit reaches open channels too.
//! - Messages are handled one at a time, in order: a connection never has two argon2 hashes
//!   in flight, and answers come back in the order asked. An action that started always
//!   finishes (a drain or idle timeout waits for it), so nothing is left half-done.
//! - Not JSON, not an object, a `type` other than `"auth"`, no known action, or a payload
//!   of the wrong shape: an error answer (`INVALID_REQUEST`, `id` and `action` echoed when
//!   readable, else null); the connection stays open.
//! - Binary messages close the connection with 1003 (unsupported data, RFC 6455 §7.4.1):
//!   the channel speaks JSON text, and a client sending binary is confused, not
//!   recoverable by an answer it would not expect. Text that is not UTF-8 closes with 1007.
//! - A message (all its fragments together) over `auth.ws.max_message_bytes` closes with
//!   1009 before it is buffered whole: tungstenite checks each frame's declared length.
//!   Fragmented messages are reassembled; pings are answered with pongs.
//! - Floods: `auth.ws.message_rate` per connection (GCRA). Over it, a message is answered
//!   `RATE_LIMITED` with `retry_after`; [`FLOOD_STRIKES`] refused messages in a row close the
//!   connection with 1008. A client that waits `retry_after` is never closed.
//! - Nothing received (not even a ping) for `auth.ws.idle_timeout`: closed with 1000. An
//!   answer the client does not read within that time ends the connection too.
//! - The server's drain closes every channel with 1001, after the action in flight.
//! - A browser's upgrade (it carries `Origin`) is refused with 403 unless the origin is
//!   `server.public_url`'s or in `auth.ws.allowed_origins` (see [`origin_allowed`]).
//! - Each channel holds an `auth.ws.max_connections` slot and a `server.max_connections`
//!   slot (it outlives the HTTP connection it was upgraded from, as a proxied WebSocket
//!   does); with either exhausted the upgrade is answered 503.
//! - Protocol errors (unmasked frames, reserved bits, bad opcodes) close with 1002. After
//!   sending a close frame the server waits up to [`CLOSE_GRACE`] for the client's reply,
//!   then drops the TCP connection.
//!
//! Every message is counted in `gatehouse_auth_channel_messages_total{action,result}` and,
//! with `[log] access = true`, logged on `gatehouse::access` like an HTTP request (method
//! `WS`, the action, the HTTP status the same answer would have had, its own request id and
//! the upgrade's as `connection`). Tokens and passwords are never logged.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};

use super::{recovery, session, wire};
use crate::accounts::Caller;
use crate::app::{App, RequestId};
use crate::error::{Error, Source, TokenRefusal};
use crate::guard;
use crate::metrics::{Outcome, Route};
use crate::ratelimit::RateLimiter;
use crate::response::Answer;
use crate::token::bearer;
use crate::websocket;

/// Refused messages in a row (over `auth.ws.message_rate`) before the connection is closed
/// with 1008: a few, so a client that mistimes a retry gets told, but a flood is cut off.
pub const FLOOD_STRIKES: u32 = 5;
/// How long a closing connection waits for the client's close frame before dropping TCP.
pub const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Bytes read from the socket at a time. Auth messages are small; tungstenite's default of
/// 128 KiB a connection would make a thousand idle channels cost 128 MiB.
const READ_BUFFER_BYTES: usize = 4096;

/// The actions a message may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Login,
    Logout,
    Refresh,
    RequestPasswordReset,
    ResetPassword,
}

impl Action {
    const ALL: [Action; 5] = [
        Action::Login,
        Action::Logout,
        Action::Refresh,
        Action::RequestPasswordReset,
        Action::ResetPassword,
    ];

    fn label(self) -> &'static str {
        match self {
            Action::Login => "login",
            Action::Logout => "logout",
            Action::Refresh => "refresh",
            Action::RequestPasswordReset => "request_password_reset",
            Action::ResetPassword => "reset_password",
        }
    }

    fn parse(name: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.label() == name)
    }
}

/// `GET {prefix}/ws`: checks the opening handshake, takes the channel's slots, and answers
/// 101; the channel runs in a task of its own once hyper hands over the connection.
pub fn upgrade(
    app: &Arc<App>,
    caller: Caller,
    mut request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Error> {
    let Some(key) = websocket::upgrade_key(&request) else {
        return Err(Error::InvalidRequest(
            "a WebSocket upgrade is required: HTTP/1.1 GET with Connection: upgrade, \
             Upgrade: websocket, Sec-WebSocket-Version: 13 and a Sec-WebSocket-Key"
                .into(),
        ));
    };
    if !origin_allowed(app, request.headers()) {
        return Err(Error::ForbiddenBecause(
            "this origin may not open the auth channel (auth.ws.allowed_origins)",
        ));
    }
    // A bearer token on the upgrade must be good, as anywhere else; a good one is the
    // channel's until a login or refresh replaces it.
    let claims = guard::authenticate(app, request.headers())?;
    let access_token = claims.as_ref().and_then(|_| {
        let value = request.headers().get(header::AUTHORIZATION)?;
        bearer(value).ok().map(str::to_owned)
    });
    let Ok(channel_slot) = app.auth_channel_slots.clone().try_acquire_owned() else {
        app.metrics.auth_channel_closed("refused");
        return Err(Error::Unavailable("auth.ws.max_connections reached"));
    };
    let Ok(connection_slot) = app.connection_slots.clone().try_acquire_owned() else {
        app.metrics.auth_channel_closed("refused");
        return Err(Error::Unavailable("server.max_connections reached"));
    };
    let on_upgrade = hyper::upgrade::on(&mut request);
    let limits = &app.live.config.auth.ws;
    let channel = Channel {
        app: app.clone(),
        caller,
        access_token,
        refresh_token: None,
        limiter: limits.message_rate.map(|rate| RateLimiter::new(rate, 1)),
        strikes: 0,
    };
    let socket_config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(0)
        .max_message_size(Some(limits.max_message_bytes))
        .max_frame_size(Some(limits.max_message_bytes));
    tokio::spawn(async move {
        // Held until the channel ends, however it ends.
        let _slots = (channel_slot, connection_slot);
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                tracing::debug!(
                    request_id = channel.caller.request_id.as_str(),
                    error = %e,
                    "auth channel: the upgrade did not complete"
                );
                return;
            }
        };
        let socket = WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            Some(socket_config),
        )
        .await;
        let app = channel.app.clone();
        app.metrics.auth_channel_open.inc();
        let reason = channel.run(socket).await;
        app.metrics.auth_channel_open.dec();
        app.metrics.auth_channel_closed(reason);
    });

    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    // Base64 is always a valid header value.
    if let Ok(accept) = HeaderValue::from_str(&websocket::accept_key(&key)) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    if let Some(claims) = claims {
        response
            .extensions_mut()
            .insert(crate::response::ServedUser(claims.sub.clone()));
    }
    Ok(response)
}

/// Whether the upgrade may proceed as far as its `Origin` goes. A browser sends `Origin` on
/// every WebSocket upgrade, and a WebSocket is not subject to CORS: without this check any
/// web page could have its visitors' browsers try logins and trigger reset mails from their
/// addresses, which the JSON endpoints' CORS preflight prevents. So a browser's origin must
/// be `server.public_url`'s or listed in `auth.ws.allowed_origins` (`*` for any); a client
/// that sends no `Origin` (not a browser) is let through.
fn origin_allowed(app: &App, headers: &http::HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Some(origin) = origin.to_str().ok().and_then(crate::config::web_origin) else {
        return false;
    };
    let public = url::Url::parse(&app.live.config.server.public_url)
        .ok()
        .map(|u| u.origin().ascii_serialization());
    public.as_deref() == Some(origin.as_str())
        || app
            .live
            .config
            .auth
            .ws
            .allowed_origins
            .iter()
            .any(|allowed| allowed == "*" || *allowed == origin)
}

type Socket = WebSocketStream<TokioIo<Upgraded>>;

/// One open channel.
struct Channel {
    app: Arc<App>,
    /// The client address and the upgrade request's id.
    caller: Caller,
    /// The last access token this channel was given (login, refresh, or the upgrade's
    /// bearer): what `logout` ends.
    access_token: Option<String>,
    /// The last refresh token: what `refresh` without one uses.
    refresh_token: Option<String>,
    /// `auth.ws.message_rate`, for this connection alone.
    limiter: Option<RateLimiter>,
    /// Messages refused by the limiter since the last one it let through.
    strikes: u32,
}

/// What to do after a text message.
enum Next {
    Answer(String),
    /// The flood limit was reached: close with 1008 instead of answering.
    Flood,
}

impl Channel {
    /// Serves messages until the channel ends; returns why, as a metric label.
    async fn run(mut self, mut socket: Socket) -> &'static str {
        let mut draining = self.app.draining();
        let idle = self.app.live.config.auth.ws.idle_timeout;
        loop {
            let next = tokio::select! {
                biased;
                () = drained(&mut draining) => {
                    return close(&mut socket, CloseCode::Away, "server shutting down", "drain").await;
                }
                next = tokio::time::timeout(idle, socket.next()) => next,
            };
            let message = match next {
                Err(_) => {
                    return close(&mut socket, CloseCode::Normal, "idle timeout", "idle").await;
                }
                Ok(None) => return "gone",
                Ok(Some(Ok(message))) => message,
                Ok(Some(Err(e))) => return fail(&mut socket, e).await,
            };
            match message {
                Message::Text(text) => match self.on_text(text.as_str()).await {
                    Next::Answer(answer) => {
                        let sent =
                            tokio::time::timeout(idle, socket.send(Message::text(answer))).await;
                        match sent {
                            Ok(Ok(())) => {}
                            Ok(Err(_)) => return "gone",
                            Err(_) => return "slow_reader",
                        }
                    }
                    Next::Flood => {
                        return close(&mut socket, CloseCode::Policy, "too many messages", "flood")
                            .await;
                    }
                },
                Message::Binary(_) => {
                    return close(
                        &mut socket,
                        CloseCode::Unsupported,
                        "binary messages are not supported; send JSON text",
                        "binary",
                    )
                    .await;
                }
                Message::Close(_) => {
                    // tungstenite has queued the reply; closing flushes it.
                    let _ = tokio::time::timeout(CLOSE_GRACE, socket.close(None)).await;
                    return "client";
                }
                // Pings are answered by tungstenite; pongs and raw frames need nothing.
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
    }

    /// Answers one text message: the rate limit, the envelope, the action; then the
    /// metrics and the access-log line.
    async fn on_text(&mut self, text: &str) -> Next {
        let start = Instant::now();
        // Each message is a request of its own: it runs on the generation in force now
        // (limits, lockout, keys), not the one the channel was opened on.
        if let Some(current) = self.app.in_force() {
            self.app = current;
        }
        let request_id = self.app.request_ids.next();
        let caller = Caller {
            ip: self.caller.ip,
            request_id: RequestId::new(&request_id),
        };
        let envelope = Envelope::read(text);
        let result = match self.charge() {
            Err(refused) => {
                self.strikes += 1;
                if self.strikes >= FLOOD_STRIKES {
                    self.app
                        .metrics
                        .auth_channel_message(envelope.label, Outcome::RateLimited);
                    return Next::Flood;
                }
                Err(refused)
            }
            Ok(()) => {
                self.strikes = 0;
                match envelope.request {
                    Ok((action, payload)) => self.act(action, payload, caller).await,
                    Err(e) => Err(e),
                }
            }
        };
        let label = envelope.label;
        let (outcome, status, user) = match &result {
            Ok(answer) => (Outcome::Served, answer.status, answer.user.clone()),
            Err(e) => {
                e.log(caller.request_id.as_str());
                (e.outcome(), e.status(), None)
            }
        };
        self.app.metrics.auth_channel_message(label, outcome);
        let answer = render(envelope.id, envelope.action, result);
        if self.app.live.config.log.access {
            tracing::info!(
                target: "gatehouse::access",
                request_id = caller.request_id.as_str(),
                connection = self.caller.request_id.as_str(),
                method = "WS",
                path = self.app.live.config.auth.path_of("/ws"),
                action = label,
                status = status.as_u16(),
                route = self.app.live.routes.label(Route::auth("/ws")),
                user = user.as_deref().unwrap_or_default(),
                micros = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX),
                bytes = answer.len(),
                peer = %self.caller.ip,
            );
        }
        Next::Answer(answer)
    }

    /// Charges one message to this connection's `auth.ws.message_rate`: a limiter of its
    /// own, so the key (the client address) only names the one slot it has.
    fn charge(&self) -> Result<(), Error> {
        match &self.limiter {
            Some(limiter) => guard::check_rate(&self.app, limiter, self.caller.ip, "auth_channel"),
            None => Ok(()),
        }
    }

    /// Runs one action through the HTTP endpoint's own function.
    async fn act(
        &mut self,
        action: Action,
        mut payload: Map<String, Value>,
        caller: Caller,
    ) -> Result<Answer, Error> {
        let app = &self.app;
        match action {
            Action::Login => {
                let answer = session::login_answer(app, caller, body(&payload)?).await?;
                self.remember(&answer);
                Ok(answer)
            }
            Action::Refresh => {
                if !payload.contains_key("refresh_token")
                    && let Some(token) = &self.refresh_token
                {
                    payload.insert("refresh_token".into(), token.clone().into());
                }
                let answer = session::refresh_answer(app, caller, body(&payload)?).await?;
                self.remember(&answer);
                Ok(answer)
            }
            Action::Logout => {
                let Some(token) = &self.access_token else {
                    app.metrics.auth_failure("missing");
                    return Err(Error::Token(TokenRefusal::Missing));
                };
                let claims = guard::verify_access_token(app, token);
                let result = match claims {
                    Ok(claims) => {
                        session::logout_answer(app, caller, &claims, async { body(&payload) }).await
                    }
                    Err(e) => Err(e),
                };
                // The session has ended (or the token was already dead) unless gatehouse
                // itself failed, in which case the client may try again.
                if !matches!(&result, Err(e) if e.source() == Source::Internal) {
                    self.access_token = None;
                    self.refresh_token = None;
                }
                result
            }
            Action::RequestPasswordReset => {
                let mut answer = recovery::forgot_answer(app, caller, body(&payload)?).await?;
                // The seed client's name for the development-only token, beside the HTTP
                // answer's `debug_token`.
                if let Some(token) = answer.body.get("debug_token").cloned() {
                    answer.body["token"] = token;
                }
                Ok(answer)
            }
            Action::ResetPassword => recovery::reset_answer(app, caller, body(&payload)?).await,
        }
    }

    /// Keeps the tokens of a token response for later `logout` and `refresh`.
    fn remember(&mut self, answer: &Answer) {
        let token = |name: &str| {
            answer
                .body
                .get(name)
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        if let Some(access) = token("access_token") {
            self.access_token = Some(access);
        }
        if let Some(refresh) = token("refresh_token") {
            self.refresh_token = Some(refresh);
        }
    }
}

/// Completes once the server drains. The watch's read guard is dropped here, not held by
/// the caller across its next await (it is not `Send`).
async fn drained(draining: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = draining.wait_for(|&d| d).await;
}

/// A payload as the HTTP body of its action: the same parser and the same 400s.
fn body<T: DeserializeOwned>(payload: &Map<String, Value>) -> Result<T, Error> {
    // Serialising a map of JSON values cannot fail.
    wire::decode(&serde_json::to_vec(payload).unwrap_or_default())
}

/// What a message's envelope said: what to echo, and what it asks for.
struct Envelope {
    /// The message's `id` when it is a string or a number; null otherwise.
    id: Value,
    /// `payload.action` when it is a string (known or not); null otherwise.
    action: Value,
    /// The metric and log label: the known action, or `invalid`.
    label: &'static str,
    /// The action and the rest of the payload, or why the message is refused.
    request: Result<(Action, Map<String, Value>), Error>,
}

impl Envelope {
    fn read(text: &str) -> Envelope {
        let (mut id, mut action) = (Value::Null, Value::Null);
        let request = parse(text, &mut id, &mut action);
        let label = request.as_ref().map_or("invalid", |(a, _)| a.label());
        Envelope {
            id,
            action,
            label,
            request,
        }
    }
}

/// Judges a message, filling in `id` and `action` as far as they can be read.
fn parse(
    text: &str,
    id: &mut Value,
    action: &mut Value,
) -> Result<(Action, Map<String, Value>), Error> {
    let invalid = |message: &'static str| Error::InvalidRequest(message.into());
    let value: Value = serde_json::from_str(text).map_err(|e| {
        Error::InvalidRequest(
            format!("the message is not JSON: {}", wire::json_error_message(&e)).into(),
        )
    })?;
    let Value::Object(mut message) = value else {
        return Err(invalid("the message must be a JSON object"));
    };
    let mut payload = match message.remove("payload") {
        Some(Value::Object(payload)) => Some(payload),
        _ => None,
    };
    if let Some(name @ Value::String(_)) = payload.as_mut().and_then(|p| p.remove("action")) {
        *action = name;
    }
    match message.remove("id") {
        None | Some(Value::Null) => {}
        Some(echoed @ (Value::String(_) | Value::Number(_))) => *id = echoed,
        Some(_) => return Err(invalid("id must be a string or a number")),
    }
    if message.get("type").and_then(Value::as_str) != Some("auth") {
        return Err(invalid("type must be \"auth\""));
    }
    let Some(payload) = payload else {
        return Err(invalid("payload must be a JSON object"));
    };
    let known = action.as_str().and_then(Action::parse).ok_or_else(|| {
        invalid(
            "payload.action must be one of login, logout, refresh, \
             request_password_reset, reset_password",
        )
    })?;
    Ok((known, payload))
}

/// The answer message: `{"type": "auth", "id", "payload": {"action", "success", …}}`.
fn render(id: Value, action: Value, result: Result<Answer, Error>) -> String {
    let mut payload = Map::new();
    payload.insert("action".into(), action);
    match result {
        Ok(answer) => {
            payload.insert("success".into(), true.into());
            if let Value::Object(body) = answer.body {
                for (name, value) in body {
                    payload.entry(name).or_insert(value);
                }
            }
        }
        Err(e) => {
            payload.insert("success".into(), false.into());
            let mut error = e.error_object();
            if let Some(secs) = e.retry_after_secs() {
                error.insert("retry_after".into(), secs.into());
            }
            payload.insert("error".into(), error.into());
            // As over HTTP, beside `error`: the client finishes the login with it at
            // `{prefix}/login/mfa`.
            if let Error::MfaRequired { mfa_token } = &e {
                payload.insert("mfa_token".into(), mfa_token.as_str().into());
            }
        }
    }
    serde_json::json!({ "type": "auth", "id": id, "payload": payload }).to_string()
}

/// Ends the channel on a read error: with the close code RFC 6455 §7.4.1 gives the fault,
/// or at once when the client is already gone.
async fn fail(socket: &mut Socket, error: WsError) -> &'static str {
    match error {
        WsError::Capacity(_) => close(socket, CloseCode::Size, "message too big", "too_big").await,
        WsError::Utf8(_) => {
            close(socket, CloseCode::Invalid, "text is not UTF-8", "protocol").await
        }
        WsError::Protocol(
            tokio_tungstenite::tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
        ) => "gone",
        WsError::Protocol(_) => {
            close(socket, CloseCode::Protocol, "protocol error", "protocol").await
        }
        _ => "gone",
    }
}

/// Sends a close frame and waits (at most [`CLOSE_GRACE`]) for the client's, discarding
/// anything else it still sends; returns `reason` for the metric.
async fn close(
    socket: &mut Socket,
    code: CloseCode,
    text: &'static str,
    reason: &'static str,
) -> &'static str {
    let frame = CloseFrame {
        code,
        reason: Utf8Bytes::from_static(text),
    };
    let handshake = async {
        if socket.close(Some(frame)).await.is_err() {
            return;
        }
        while let Some(Ok(_)) = socket.next().await {}
    };
    let _ = tokio::time::timeout(CLOSE_GRACE, handshake).await;
    reason
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Limited;

    fn check(text: &str, id: Value, action: Value, expect: Result<&str, &str>) {
        let envelope = Envelope::read(text);
        assert_eq!(envelope.id, id, "{text}");
        assert_eq!(envelope.action, action, "{text}");
        match (&envelope.request, expect) {
            (Ok((a, _)), Ok(label)) => assert_eq!(a.label(), label, "{text}"),
            (Err(e), Err(message)) => {
                assert_eq!(e.code(), "INVALID_REQUEST", "{text}");
                assert!(e.message().contains(message), "{text}: {}", e.message());
            }
            (got, _) => panic!("{text}: {:?}", got.as_ref().map(|(a, _)| a)),
        }
    }

    #[test]
    fn envelopes_are_judged_and_echoed_as_far_as_readable() {
        use serde_json::json;
        let null = Value::Null;
        check(
            r#"{"type":"auth","id":"7","payload":{"action":"login","username":"a"}}"#,
            json!("7"),
            json!("login"),
            Ok("login"),
        );
        check(
            r#"{"type":"auth","id":42,"payload":{"action":"reset_password"}}"#,
            json!(42),
            json!("reset_password"),
            Ok("reset_password"),
        );
        check("not json", null.clone(), null.clone(), Err("not JSON"));
        check("[1,2]", null.clone(), null.clone(), Err("JSON object"));
        check(
            r#"{"type":"auth","id":"x","payload":{"action":"fly"}}"#,
            json!("x"),
            json!("fly"),
            Err("payload.action must be one of"),
        );
        check(
            r#"{"type":"chat","id":"x","payload":{"action":"login"}}"#,
            json!("x"),
            json!("login"),
            Err("type must be"),
        );
        check(
            r#"{"type":"auth","id":{"a":1},"payload":{"action":"login"}}"#,
            null.clone(),
            json!("login"),
            Err("id must be"),
        );
        check(
            r#"{"type":"auth","id":"x","payload":"login"}"#,
            json!("x"),
            null.clone(),
            Err("payload must be"),
        );
        check(
            r#"{"type":"auth","id":"x","payload":{"action":7}}"#,
            json!("x"),
            null,
            Err("payload.action must be one of"),
        );
    }

    #[test]
    fn answers_merge_the_http_body_or_carry_the_error() {
        let ok = Answer::new(StatusCode::OK, serde_json::json!({"logged_out": true}));
        let text = render("1".into(), "logout".into(), Ok(ok));
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"type": "auth", "id": "1", "payload":
                {"action": "logout", "success": true, "logged_out": true}})
        );
        let limited = Error::RateLimited {
            retry_after_secs: 3,
            quota: None,
            what: Limited::Requests,
        };
        let text = render(Value::Null, Value::Null, Err(limited));
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["payload"]["success"], false);
        assert_eq!(value["payload"]["error"]["code"], "RATE_LIMITED");
        assert_eq!(value["payload"]["error"]["retry_after"], 3);
        assert_eq!(value["id"], Value::Null);
    }
}
