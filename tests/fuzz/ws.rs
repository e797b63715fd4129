//! Target `ws`: messages on the WebSocket auth channel (`GET /auth/ws`), through a gatehouse
//! running in-process ([`Server`], as the `auth` target) and a real WebSocket client.
//!
//! Input: the message's bytes. Valid UTF-8 goes as one text message; anything else as a text
//! frame whose payload is not UTF-8; an input starting with `#binary\n` as a binary message.
//! The generator writes envelopes `{"type", "id", "payload": {"action", …}}` with the
//! actions, field names and odd values of the HTTP bodies, wrong types, missing parts, and
//! now and then garbage, a binary message or one over the size limit.
//!
//! Properties:
//! - a text message within `auth.ws.max_message_bytes` gets exactly one answer, and the
//!   connection stays open;
//! - the answer is `{"type": "auth", "id", "payload": {"action", "success", …}}`; `id` is the
//!   message's when that is a string or a number in a JSON object, null when the message is
//!   not JSON; `action` is the payload's when it is a string;
//! - a refusal carries a non-empty `error.code` and a `message`, never a server fault
//!   (`INTERNAL`, `UNAVAILABLE`, `STORE_UNAVAILABLE`); a message that is not a JSON object
//!   with `type: "auth"` is refused with `INVALID_REQUEST`;
//! - a binary message closes with 1003, non-UTF-8 text with 1007, an oversized message with
//!   1009 (the next input reconnects).
//!
//! Each execution is a WebSocket round trip (and sometimes an argon2 hash), so this target
//! runs for a fraction of the budget, as `auth` does.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

use crate::auth::{JSON_TOKENS, STRINGS, Server};
use crate::engine::{Outcome, Rng, Target, feature};

/// `auth.ws.max_message_bytes` of the server under test.
const MAX_MESSAGE: usize = 2048;
/// A safety net: a server that never answers fails the input instead of hanging the run.
const PATIENCE: Duration = Duration::from_secs(30);
const BINARY: &[u8] = b"#binary\n";

pub struct WsTarget {
    server: Server,
    socket: Option<WebSocketStream<TcpStream>>,
    dictionary: Vec<&'static [u8]>,
}

impl WsTarget {
    pub fn new() -> WsTarget {
        WsTarget {
            server: Server::start(&format!(
                "[auth.ws]\nmax_message_bytes = {MAX_MESSAGE}\nmessage_rate = \"0\"\n"
            )),
            socket: None,
            dictionary: [
                JSON_TOKENS,
                &[
                    b"\"type\":\"auth\"",
                    b"\"id\":",
                    b"\"payload\":{",
                    b"\"action\":\"login\"",
                    b"\"action\":\"logout\"",
                    b"\"password\":",
                ],
            ]
            .concat(),
        }
    }
}

const ACTIONS: &[&str] = &[
    "login",
    "logout",
    "refresh",
    "request_password_reset",
    "reset_password",
    "login",
    "register",
    "",
    "LOGIN",
];
const FIELDS: &[&str] = &[
    "email",
    "username",
    "password",
    "refresh_token",
    "token",
    "new_password",
    "all_sessions",
    "action",
];

fn value(rng: &mut Rng) -> String {
    let quoted = |s: &str| Value::String(s.to_owned()).to_string();
    match rng.below(10) {
        0 => "null".into(),
        1 => rng
            .pick(&["0", "-1", "1e400", "true", "[]", "{}"])
            .to_string(),
        2 => quoted(&"p".repeat(rng.below(300))),
        _ => quoted(rng.pick(STRINGS)),
    }
}

impl Target for WsTarget {
    const NAME: &'static str = "ws";

    fn generate(&mut self, rng: &mut Rng) -> Vec<u8> {
        match rng.below(40) {
            0 => return [BINARY, b"{\"type\":\"auth\"}"].concat(),
            1 => return "x".repeat(MAX_MESSAGE + 1 + rng.below(100)).into_bytes(),
            2 => return b"{\"type\":\"auth\",\"id\":\"\xff\"}".to_vec(),
            3..=5 => {
                return rng
                    .pick(&[
                        "",
                        "{",
                        "[]",
                        "null",
                        "\"auth\"",
                        "{\"type\":\"auth\"}",
                        "{} {}",
                    ])
                    .as_bytes()
                    .to_vec();
            }
            _ => {}
        }
        let mut payload = Vec::new();
        if !rng.one_in(10) {
            payload.push(format!("\"action\":\"{}\"", rng.pick(ACTIONS)));
        }
        for _ in 0..rng.below(4) {
            payload.push(format!("\"{}\":{}", rng.pick(FIELDS), value(rng)));
        }
        let mut message = Vec::new();
        if !rng.one_in(10) {
            message.push(format!(
                "\"type\":\"{}\"",
                rng.pick(&["auth", "auth", "chat", ""])
            ));
        }
        match rng.below(6) {
            0 => {}
            1 => message.push(format!("\"id\":{}", rng.below(1000))),
            2 => message.push(format!("\"id\":{}", value(rng))),
            _ => message.push(format!("\"id\":\"m{}\"", rng.below(1000))),
        }
        if !rng.one_in(10) {
            message.push(format!("\"payload\":{{{}}}", payload.join(",")));
        }
        format!("{{{}}}", message.join(",")).into_bytes()
    }

    fn dictionary(&self) -> &[&[u8]] {
        &self.dictionary
    }

    fn check(&mut self, input: &[u8]) -> Outcome {
        let addr = self.server.addr;
        let mut socket = match self.socket.take() {
            Some(socket) => socket,
            None => {
                let url = format!("ws://{addr}/auth/ws");
                let connected = self.server.runtime.block_on(async {
                    let stream = TcpStream::connect(addr).await?;
                    tokio_tungstenite::client_async(url, stream)
                        .await
                        .map(|(socket, _)| socket)
                        .map_err(std::io::Error::other)
                });
                match connected {
                    Ok(socket) => socket,
                    Err(e) => return Outcome::Fail(format!("connect: {e}")),
                }
            }
        };
        // Text goes as one raw text frame, so bytes that are not UTF-8 reach the server too.
        let (message, expect_close) = if let Some(rest) = input.strip_prefix(BINARY) {
            (Message::binary(rest.to_vec()), Some(1003))
        } else {
            let close = if input.len() > MAX_MESSAGE {
                Some(1009)
            } else if std::str::from_utf8(input).is_err() {
                Some(1007)
            } else {
                None
            };
            let frame = Frame::message(input.to_vec(), OpCode::Data(Data::Text), true);
            (Message::Frame(frame), close)
        };
        let next = self.server.runtime.block_on(async {
            // The server may close before a big message is all written.
            let _ = socket.send(message).await;
            loop {
                match tokio::time::timeout(PATIENCE, socket.next()).await {
                    Err(_) => return Err("no answer: none within 30 s".to_string()),
                    Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                    Ok(Some(Ok(message))) => return Ok(message),
                    Ok(Some(Err(e))) => return Err(format!("transport: {e}")),
                    Ok(None) => return Err("transport: closed without a close frame".into()),
                }
            }
        });
        let message = match next {
            Ok(message) => message,
            Err(e) => return Outcome::Fail(e),
        };
        if let Some(code) = expect_close {
            return match message {
                Message::Close(Some(frame)) if u16::from(frame.code) == code => {
                    Outcome::Pass(feature(&["closed", &code.to_string()]))
                }
                other => Outcome::Fail(format!("close: expected {code}, got {other:?}")),
            };
        }
        let Message::Text(answer) = message else {
            return Outcome::Fail(format!("answer: not text: {message:?}"));
        };
        let Ok(answer) = serde_json::from_str::<Value>(answer.as_str()) else {
            return Outcome::Fail(format!("answer: not JSON: {answer}"));
        };
        self.socket = Some(socket);
        judge(input, &answer)
    }
}

/// The properties of one answer to the text message `input`.
fn judge(input: &[u8], answer: &Value) -> Outcome {
    let shown = || String::from_utf8_lossy(input).into_owned();
    let payload = &answer["payload"];
    if answer["type"] != "auth" || !payload.is_object() || !payload["success"].is_boolean() {
        return Outcome::Fail(format!("envelope: {answer} for {}", shown()));
    }
    let sent: Option<Value> = serde_json::from_slice(input).ok();
    let expected_id = match sent.as_ref().and_then(|v| v.get("id")) {
        Some(id @ (Value::String(_) | Value::Number(_))) => id.clone(),
        _ => Value::Null,
    };
    if answer["id"] != expected_id {
        return Outcome::Fail(format!("id: {answer} for {}", shown()));
    }
    let sent_action = sent
        .as_ref()
        .and_then(|v| v.get("payload"))
        .filter(|p| p.is_object())
        .and_then(|p| p.get("action"))
        .filter(|a| a.is_string());
    if let Some(action) = sent_action
        && payload["action"] != *action
    {
        return Outcome::Fail(format!("action: {answer} for {}", shown()));
    }
    let mut code = "";
    if payload["success"] == false {
        code = payload["error"]["code"].as_str().unwrap_or_default();
        if code.is_empty() || !payload["error"]["message"].is_string() {
            return Outcome::Fail(format!("error body: {answer} for {}", shown()));
        }
        if ["INTERNAL", "UNAVAILABLE", "STORE_UNAVAILABLE"].contains(&code) {
            return Outcome::Fail(format!("server fault: {answer} for {}", shown()));
        }
    }
    let is_auth = sent
        .as_ref()
        .is_some_and(|v| v.is_object() && v.get("type") == Some(&Value::from("auth")));
    if !is_auth && code != "INVALID_REQUEST" {
        return Outcome::Fail(format!("not refused: {answer} for {}", shown()));
    }
    // Actions the client made up are one outcome, or every mutation would be a new one.
    let action = payload["action"]
        .as_str()
        .filter(|a| ACTIONS.contains(a))
        .unwrap_or("other");
    Outcome::Pass(feature(&[
        action,
        if code.is_empty() { "ok" } else { code },
    ]))
}
