//! Target `auth`: the auth endpoints' bodies, through a gatehouse running in-process, and
//! `auth::wire::Form::parse` on the same bytes.
//!
//! The JSON body structs are private to their handlers, so they are reached the way a
//! client reaches them: one gatehouse (in front of the demo echo upstream, a sled store in a
//! temp dir, cheap argon2, rate limits off) takes every input as an HTTP request.
//!
//! Input: `METHOD PATH` on the first line, then `name: value` header lines, an empty line,
//! and the body. The generator aims at `/auth/register`, `/auth/login`, `/auth/refresh` and
//! `/auth/reset-password` (JSON and form) mostly, with bodies that are JSON of the right
//! shape, the wrong types, extra and missing fields, odd strings, malformed JSON, and forms
//! with bad escapes, under a choice of content types.
//!
//! Properties:
//! - `Form::parse` never panics, and `get` finds the first value of a name;
//! - no response is a 5xx;
//! - every error response (4xx) is `{"error": {"code", "message"}}` with a non-empty code,
//!   except the recovery pages, which answer a form post or a GET with HTML;
//! - every JSON response parses as JSON.
//!
//! Each execution is an HTTP round trip (and sometimes an argon2 hash), so this target runs
//! for a fraction of the budget (see `main.rs`).

use std::net::SocketAddr;

use bytes::Bytes;
use gatehouse::app::{App, Clock};
use gatehouse::auth::wire::Form;
use gatehouse::config::Config;
use gatehouse::server::{self, Listeners};
use http::{HeaderName, HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::engine::{Outcome, Rng, Target, feature};

pub struct AuthTarget {
    server: Server,
    dictionary: Vec<&'static [u8]>,
}

/// JSON's delimiters and escapes that trip parsers, for the targets that send JSON.
pub const JSON_TOKENS: &[&[u8]] = &[
    b"{", b"}", b"\"", b":", b",", b"[", b"null", b"\\u0000", b"\\ud800",
];

/// A gatehouse running in-process for the targets that drive a whole server (`auth`, `ws`):
/// the demo echo upstream, a sled store in a temp dir, cheap argon2, auth rate limits off,
/// debug tokens on.
pub struct Server {
    pub runtime: tokio::runtime::Runtime,
    pub addr: SocketAddr,
    pub client: Client<HttpConnector, Full<Bytes>>,
    /// Stops the server when dropped.
    _shutdown: oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Starts one, with `extra` TOML (whole tables) appended to the config, and waits until
    /// `/readyz` answers 200.
    pub fn start(extra: &str) -> Server {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let dir = tempfile::tempdir().expect("a temp dir");
        let store = dir.path().join("store");
        let (addr, shutdown, client) = runtime.block_on(async {
            let upstream = gatehouse::demo::echo_upstream()
                .await
                .expect("echo upstream");
            let text = format!(
                r#"
[server]
listen = "127.0.0.1:0"
auth_max_body_bytes = 4096
[upstream]
url = "http://{upstream}"
[store]
path = "{store}"
[tokens]
secret = "fuzz-secret-0123456789abcdef-0123456789"
[auth]
expose_debug_tokens = true
[auth.password]
memory_kib = 1024
iterations = 1
parallelism = 1
[rate_limits]
login = "0"
register = "0"
refresh = "0"
forgot_password = "0"
[log]
level = "error"
{extra}
"#,
                store = store.display()
            );
            let config = Config::from_toml(&text, Vec::new())
                .unwrap_or_else(|e| panic!("fuzz config invalid:\n{e}"));
            let app = App::start(config, Clock::manual(1_800_000_000).0)
                .await
                .expect("gatehouse starts");
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("address");
            let (tx, rx) = oneshot::channel::<()>();
            tokio::spawn(server::run(
                gatehouse::reload::Current::new(app, None),
                Listeners {
                    main: listener,
                    admin: None,
                },
                async {
                    let _ = rx.await;
                },
            ));
            let client: Client<HttpConnector, Full<Bytes>> =
                Client::builder(TokioExecutor::new()).build_http();
            // Ready when /readyz says so; no fixed sleep.
            for _ in 0..500 {
                let request = Request::get(format!("http://{addr}/readyz"))
                    .body(Full::new(Bytes::new()))
                    .expect("a request");
                if client
                    .request(request)
                    .await
                    .is_ok_and(|r| r.status() == StatusCode::OK)
                {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            (addr, tx, client)
        });
        Server {
            runtime,
            addr,
            client,
            _shutdown: shutdown,
            _dir: dir,
        }
    }
}

impl AuthTarget {
    pub fn new() -> AuthTarget {
        let own: &[&[u8]] = &[
            b"%FF",
            b"&",
            b"=",
            b"\"email\":",
            b"\"password\":",
            b"\"refresh_token\":",
            b"\"token\":",
        ];
        AuthTarget {
            server: Server::start(""),
            dictionary: [JSON_TOKENS, own].concat(),
        }
    }
}

const PATHS: &[&str] = &[
    "/auth/register",
    "/auth/login",
    "/auth/refresh",
    "/auth/reset-password",
    "/auth/register",
    "/auth/login",
    "/auth/refresh",
    "/auth/reset-password",
    "/auth/reset-password/validate",
    "/auth/forgot-password",
    "/auth/verify-email",
    "/auth/logout",
    "/auth/change-password",
    "/auth/nope",
];
const CONTENT_TYPES: &[&str] = &[
    "application/json",
    "application/json",
    "application/json; charset=utf-8",
    "APPLICATION/JSON",
    "application/x-www-form-urlencoded",
    "application/x-www-form-urlencoded",
    "application/vnd.api+json",
    "+json",
    "a/+json",
    "text/plain",
    "multipart/form-data; boundary=x",
    "",
    "application/json;",
    " application/json ",
];
const FIELDS: &[&str] = &[
    "email",
    "password",
    "username",
    "name",
    "roles",
    "refresh_token",
    "token",
    "new_password",
    "confirm_password",
    "current_password",
    "all_sessions",
];
/// Odd and ordinary field values, shared with the `ws` target.
pub const STRINGS: &[&str] = &[
    "a@example.com",
    "A@EXAMPLE.COM",
    "correct horse battery",
    "",
    " ",
    "x",
    "\u{0}",
    "a\u{0}b@example.com",
    "é@ü.de",
    "@",
    "a@",
    "<script>",
    "admin",
    "\u{202e}",
    "💥",
    "a@example.com ",
    "password",
    "12345678",
];

fn json_value(rng: &mut Rng) -> String {
    let quoted = |s: &str| serde_json::Value::String(s.to_owned()).to_string();
    match rng.below(10) {
        0 => "null".into(),
        1 => rng
            .pick(&["0", "-1", "1e400", "true", "18446744073709551616"])
            .to_string(),
        2 => format!("[{}]", quoted(rng.pick(STRINGS))),
        3 => "{}".into(),
        4 => quoted(&"a".repeat(rng.below(5000))),
        5 => "\"\\ud800\"".into(),
        _ => quoted(rng.pick(STRINGS)),
    }
}

fn body(rng: &mut Rng, form: bool) -> String {
    if form {
        let mut pairs = Vec::new();
        for _ in 0..rng.below(5) {
            let value = rng.pick(&[
                "x",
                "%FF",
                "%",
                "%zz",
                "a+b",
                "correct+horse+battery",
                "",
                "%E2%82",
            ]);
            pairs.push(format!("{}={value}", rng.pick(FIELDS)));
        }
        return pairs.join(rng.pick(&["&", "&&", ";"]));
    }
    match rng.below(12) {
        0 => rng
            .pick(&[
                "",
                "{",
                "[]",
                "null",
                "\"x\"",
                "{\"a\":}",
                "{} {}",
                "\u{feff}{}",
                "{\"email\":\"a\"\"b\"}",
            ])
            .to_string(),
        _ => {
            let mut fields = Vec::new();
            for _ in 0..rng.below(6) {
                fields.push(format!("\"{}\":{}", rng.pick(FIELDS), json_value(rng)));
            }
            format!("{{{}}}", fields.join(","))
        }
    }
}

impl Target for AuthTarget {
    const NAME: &'static str = "auth";

    fn generate(&mut self, rng: &mut Rng) -> Vec<u8> {
        let method = if rng.one_in(10) {
            rng.pick(&["GET", "PUT", "DELETE", "PATCH"])
        } else {
            "POST"
        };
        let content_type = rng.pick(CONTENT_TYPES);
        let form = content_type.contains("form") || rng.one_in(10);
        let mut text = format!("{method} {}\n", rng.pick(PATHS));
        if !content_type.is_empty() {
            text.push_str(&format!("content-type: {content_type}\n"));
        }
        if rng.one_in(8) {
            text.push_str(rng.pick(&[
                "authorization: Bearer x.y.z\n",
                "authorization: Basic abc\n",
                "content-length: 999999\n",
                "accept: text/html\n",
            ]));
        }
        text.push('\n');
        text.push_str(&body(rng, form));
        text.into_bytes()
    }

    fn dictionary(&self) -> &[&[u8]] {
        &self.dictionary
    }

    fn check(&mut self, input: &[u8]) -> Outcome {
        let (head, body) = match input.windows(2).position(|w| w == b"\n\n") {
            Some(at) => (&input[..at], &input[at + 2..]),
            None => (input, &b""[..]),
        };

        // The form parser on the body as it is.
        let form = Form::parse(body);
        let _ = form.get("token");
        let _ = form.get("");

        let head = String::from_utf8_lossy(head);
        let mut lines = head.split('\n');
        let mut first = lines.next().unwrap_or_default().split(' ');
        let (Ok(method), Some(path)) = (
            Method::from_bytes(first.next().unwrap_or_default().as_bytes()),
            first.next(),
        ) else {
            return Outcome::Pass(feature(&["unbuildable"]));
        };
        if method == Method::CONNECT || !path.starts_with("/auth/") {
            return Outcome::Pass(feature(&["skipped"]));
        }
        let mut builder = Request::builder()
            .method(method.clone())
            .uri(format!("http://{}{path}", self.server.addr));
        let mut form_post = false;
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.trim().as_bytes()),
                HeaderValue::from_bytes(value.trim().as_bytes()),
            ) else {
                continue;
            };
            // The body's real length is what the client sends; a fuzzed one would only
            // test the client.
            if name == header::CONTENT_LENGTH
                || name == header::TRANSFER_ENCODING
                || name == header::HOST
            {
                continue;
            }
            if name == header::CONTENT_TYPE {
                form_post |= value.to_str().is_ok_and(|v| {
                    v.split(';')
                        .next()
                        .unwrap_or_default()
                        .trim()
                        .eq_ignore_ascii_case("application/x-www-form-urlencoded")
                });
            }
            builder = builder.header(name, value);
        }
        let Ok(request) = builder.body(Full::new(Bytes::copy_from_slice(body))) else {
            return Outcome::Pass(feature(&["unbuildable"]));
        };
        let client = self.server.client.clone();
        let answer = self.server.runtime.block_on(async move {
            let response = client
                .request(request)
                .await
                .map_err(|e| format!("request failed: {e}"))?;
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| format!("body failed: {e}"))?
                .to_bytes();
            Ok::<_, String>((parts, body))
        });
        let (parts, response_body) = match answer {
            Ok(answer) => answer,
            Err(e) => return Outcome::Fail(format!("transport: {e} for {head:?}")),
        };
        let status = parts.status;
        let content_type = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let shown = || {
            format!(
                "{method} {path} -> {status} {content_type} {:?}",
                String::from_utf8_lossy(&response_body)
            )
        };
        if status.is_server_error() {
            return Outcome::Fail(format!("5xx: {}", shown()));
        }
        let is_json = content_type.starts_with("application/json");
        let page = content_type.starts_with("text/html");
        let recovery_page = (path.starts_with("/auth/reset-password")
            || path.starts_with("/auth/verify-email"))
            && (form_post || method == Method::GET || method == Method::HEAD);
        if page && !recovery_page {
            return Outcome::Fail(format!(
                "html: an HTML answer outside the recovery pages: {}",
                shown()
            ));
        }
        let mut code = String::new();
        if is_json && method != Method::HEAD {
            let Ok(value) = serde_json::from_slice::<serde_json::Value>(&response_body) else {
                return Outcome::Fail(format!("bad json: {}", shown()));
            };
            if status.is_client_error() {
                match value["error"]["code"].as_str() {
                    Some(c) if !c.is_empty() && value["error"]["message"].is_string() => {
                        code = c.to_owned()
                    }
                    _ => return Outcome::Fail(format!("error body: no error code: {}", shown())),
                }
            }
        } else if status.is_client_error() && !(page && recovery_page) && method != Method::HEAD {
            return Outcome::Fail(format!("error body: not JSON: {}", shown()));
        }
        Outcome::Pass(feature(&[
            path,
            status.as_str(),
            &code,
            if page { "page" } else { "" },
        ]))
    }
}
