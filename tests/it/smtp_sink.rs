//! A minimal SMTP server on `127.0.0.1:0` that keeps every message it receives, so tests can
//! read the mails gatehouse sends and follow their links.
//!
//! It speaks just enough of RFC 5321 for lettre: EHLO/HELO, MAIL, RCPT, DATA (with
//! dot-unstuffing), RSET, NOOP and QUIT, several transactions per connection (lettre pools
//! connections). It advertises no extensions, STARTTLS included, so the client stays in
//! plain text. [`SmtpSink::rejecting`] refuses every recipient with a permanent 550.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// One received message.
#[derive(Debug, Clone)]
pub struct Captured {
    pub from: String,
    pub to: Vec<String>,
    /// The raw message (headers and body), dot-unstuffed, CRLF line ends.
    pub data: String,
}

impl Captured {
    /// A header of the message itself (not of a part), unfolded.
    pub fn header(&self, name: &str) -> Option<String> {
        let (head, _) = self.data.split_once("\r\n\r\n")?;
        header_value(head, name)
    }

    /// The decoded body of the first part with this content type (`text/plain`,
    /// `text/html`).
    pub fn part(&self, content_type: &str) -> Option<String> {
        let (head, body) = self.data.split_once("\r\n\r\n")?;
        let top = header_value(head, "content-type")?;
        let Some(boundary) = parameter(&top, "boundary") else {
            return top
                .to_ascii_lowercase()
                .starts_with(content_type)
                .then(|| decode(head, body));
        };
        let delimiter = format!("--{boundary}");
        for part in body.split(delimiter.as_str()).skip(1) {
            let part = part.strip_prefix("\r\n").unwrap_or(part);
            let Some((part_head, part_body)) = part.split_once("\r\n\r\n") else {
                continue;
            };
            let kind = header_value(part_head, "content-type").unwrap_or_default();
            if kind.to_ascii_lowercase().starts_with(content_type) {
                return Some(decode(part_head, part_body));
            }
        }
        None
    }

    pub fn text(&self) -> String {
        self.part("text/plain")
            .unwrap_or_else(|| panic!("no text/plain part in:\n{}", self.data))
    }

    pub fn html(&self) -> String {
        self.part("text/html")
            .unwrap_or_else(|| panic!("no text/html part in:\n{}", self.data))
    }

    /// The first link in the plain-text body that starts with `prefix`.
    pub fn link(&self, prefix: &str) -> String {
        let text = self.text();
        let start = text
            .find(prefix)
            .unwrap_or_else(|| panic!("no link starting with {prefix} in:\n{text}"));
        text[start..]
            .split(char::is_whitespace)
            .next()
            .unwrap_or_default()
            .to_string()
    }

    /// The `token` parameter of the first link starting with `prefix`.
    pub fn token(&self, prefix: &str) -> String {
        let link = self.link(prefix);
        link.split(['?', '&'])
            .find_map(|p| p.strip_prefix("token="))
            .unwrap_or_else(|| panic!("no token in {link}"))
            .to_string()
    }
}

/// Unfolds the header block and returns the value of `name`.
fn header_value(head: &str, name: &str) -> Option<String> {
    let unfolded = head.replace("\r\n ", " ").replace("\r\n\t", " ");
    unfolded.split("\r\n").find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// A `name=value` or `name="value"` parameter of a header value.
fn parameter(value: &str, name: &str) -> Option<String> {
    value.split(';').skip(1).find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().trim_matches('"').to_string())
    })
}

/// Decodes a body by its Content-Transfer-Encoding (7bit, 8bit, quoted-printable, base64).
fn decode(head: &str, body: &str) -> String {
    let encoding = header_value(head, "content-transfer-encoding")
        .unwrap_or_default()
        .to_ascii_lowercase();
    match encoding.as_str() {
        "base64" => {
            let compact: String = body.chars().filter(|c| !c.is_whitespace()).collect();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(compact.trim_end_matches('-'))
                .expect("base64 body");
            String::from_utf8(bytes).expect("utf-8 body")
        }
        "quoted-printable" => {
            let joined = body.replace("=\r\n", "");
            let bytes = joined.as_bytes();
            let mut out = Vec::with_capacity(bytes.len());
            let mut i = 0;
            while i < bytes.len() {
                if bytes[i] == b'='
                    && let Some(hex) = joined.get(i + 1..i + 3)
                    && let Ok(byte) = u8::from_str_radix(hex, 16)
                {
                    out.push(byte);
                    i += 3;
                    continue;
                }
                out.push(bytes[i]);
                i += 1;
            }
            String::from_utf8(out).expect("utf-8 body")
        }
        _ => body.to_string(),
    }
}

/// A running sink.
pub struct SmtpSink {
    pub port: u16,
    messages: Arc<Mutex<Vec<Captured>>>,
    arrived: Arc<Notify>,
}

impl SmtpSink {
    /// A sink that accepts every message.
    pub async fn start() -> SmtpSink {
        SmtpSink::launch(false).await
    }

    /// A sink that refuses every recipient with `550` (a permanent failure).
    pub async fn rejecting() -> SmtpSink {
        SmtpSink::launch(true).await
    }

    async fn launch(reject: bool) -> SmtpSink {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let arrived = Arc::new(Notify::new());
        let (m, a) = (messages.clone(), arrived.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(session(stream, reject, m.clone(), a.clone()));
            }
        });
        SmtpSink {
            port,
            messages,
            arrived,
        }
    }

    /// `smtp://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    pub fn messages(&self) -> Vec<Captured> {
        self.messages.lock().unwrap().clone()
    }

    /// Messages received for `to` whose subject starts with `subject` ("" for any).
    pub fn messages_to(&self, to: &str, subject: &str) -> Vec<Captured> {
        self.messages()
            .into_iter()
            .filter(|m| m.to.iter().any(|r| r.eq_ignore_ascii_case(to)))
            .filter(|m| m.header("subject").unwrap_or_default().starts_with(subject))
            .collect()
    }

    /// Waits until `count` messages for `to` with this subject have arrived and returns the
    /// last; fails after ten seconds rather than hanging.
    pub async fn wait(&self, to: &str, subject: &str, count: usize) -> Captured {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let notified = self.arrived.notified();
            let mails = self.messages_to(to, subject);
            if mails.len() >= count {
                return mails[count - 1].clone();
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                panic!(
                    "{count} mail(s) {subject:?} to {to} never arrived; the sink holds: {:#?}",
                    self.messages()
                );
            }
            // Bounded, so a notification raced past between the check and the wait costs
            // at most this long.
            let _ = tokio::time::timeout(left.min(Duration::from_millis(50)), notified).await;
        }
    }
}

/// One SMTP session.
async fn session(
    stream: tokio::net::TcpStream,
    reject: bool,
    messages: Arc<Mutex<Vec<Captured>>>,
    arrived: Arc<Notify>,
) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    if !say(&mut write, "220 sink.test ESMTP test sink\r\n").await {
        return;
    }
    let (mut from, mut to) = (String::new(), Vec::new());
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let command = line.trim_end().to_string();
        let verb = command
            .split([' ', ':'])
            .next()
            .unwrap_or_default()
            .to_ascii_uppercase();
        let answer = match verb.as_str() {
            "EHLO" | "HELO" => "250 sink.test\r\n",
            "MAIL" => {
                from = address(&command);
                to.clear();
                "250 2.1.0 ok\r\n"
            }
            "RCPT" if reject => "550 5.1.1 no such mailbox\r\n",
            "RCPT" => {
                to.push(address(&command));
                "250 2.1.5 ok\r\n"
            }
            "DATA" => {
                if !say(&mut write, "354 end with <CRLF>.<CRLF>\r\n").await {
                    return;
                }
                let mut data = String::new();
                loop {
                    line.clear();
                    if lines.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    if line == ".\r\n" {
                        break;
                    }
                    let unstuffed = line.strip_prefix('.').unwrap_or(&line);
                    data.push_str(unstuffed);
                }
                messages.lock().unwrap().push(Captured {
                    from: std::mem::take(&mut from),
                    to: std::mem::take(&mut to),
                    data,
                });
                arrived.notify_waiters();
                "250 2.0.0 queued\r\n"
            }
            "RSET" => {
                from.clear();
                to.clear();
                "250 2.0.0 ok\r\n"
            }
            "NOOP" => "250 2.0.0 ok\r\n",
            "QUIT" => {
                let _ = say(&mut write, "221 2.0.0 bye\r\n").await;
                return;
            }
            _ => "502 5.5.1 not implemented\r\n",
        };
        if !say(&mut write, answer).await {
            return;
        }
    }
}

async fn say(write: &mut tokio::net::tcp::OwnedWriteHalf, text: &str) -> bool {
    write.write_all(text.as_bytes()).await.is_ok()
}

/// The address in `MAIL FROM:<a>` or `RCPT TO:<a>`.
fn address(command: &str) -> String {
    command
        .split_once('<')
        .and_then(|(_, rest)| rest.split_once('>'))
        .map(|(a, _)| a.to_string())
        .unwrap_or_default()
}
