//! Outgoing mail: the password-reset, email-verification and "password changed" mails, and
//! the [`Mailer`] that delivers them.
//!
//! What this module owns, and the decisions taken:
//!
//! - **Composition.** [`Mail::reset`], [`Mail::verify`] and [`Mail::password_changed`] write a
//!   plain-text and an HTML body (sent as `multipart/alternative`). Links are built only from
//!   `email.reset_url` / `email.verify_url`, whose `{token}` is replaced by the token; nothing
//!   of the request (its `Host` header least of all) ever reaches a link, so a spoofed host
//!   cannot turn a reset mail into a phishing mail that carries a live token.
//! - **Never on the request path.** [`Mailer::send`] only puts the mail on a bounded queue
//!   ([`QUEUE_CAPACITY`]) and returns; a background task delivers it. A slow or dead mail
//!   server therefore never holds a request. When the queue is full the mail is dropped,
//!   logged and counted (`result="dropped"`): a backlog that size means the mail server has
//!   been down for a while, and holding requests or memory would not bring it back.
//! - **Retries with exponential backoff** ([`RETRY`]): a connection failure, a timeout or a
//!   4xx answer is retried after 2s, 4s, 8s and 16s; a 5xx answer (a permanent refusal such as
//!   an unknown recipient) is not retried. Up to [`CONCURRENCY`] mails are in delivery at once,
//!   so one mail waiting out its backoff does not hold the others up. Every outcome is counted
//!   in `gatehouse_mail_total{kind, result}` with `result` one of `sent`, `retried` (an attempt
//!   failed and another follows), `failed` (given up), `dropped` (queue full) and `logged`
//!   (`email.mode = "log"`). Mails still queued when the process stops are lost; the user asks
//!   again, which is the same remedy as for a mail lost anywhere else on its way.
//! - **SMTP through lettre over rustls.** `smtps://host[:465]` is TLS from the first byte.
//!   `smtp://host[:25]` upgrades with STARTTLS when the server offers it and stays in plain
//!   text otherwise (a local relay); but when the URL carries credentials, STARTTLS becomes
//!   required, so a password is never sent in clear because someone stripped the STARTTLS
//!   offer. `?tls=required` or `?tls=opportunistic` on an `smtp://` URL choose explicitly.
//!   Credentials live only in the URL (`smtp://user:pass@host`, percent-encoded), which is why
//!   `GATEHOUSE_EMAIL_SMTP_URL` is the way to keep them out of the config file; the URL is
//!   never logged, and neither is the transport (its `Debug` would show them).
//! - **Log mode.** `email.mode = "log"` logs that a mail would be sent, its kind and
//!   recipient, without the link (which carries the token) unless `auth.expose_debug_tokens`
//!   is on. Mail bodies are never logged in any mode.
//! - **The offline CLI.** [`Mailer::new`] starts nothing; [`Mailer::start`] spawns the
//!   delivery task and is called by `App::start` only. The `gatehouse user` commands build an
//!   `App` without starting it and send no mail.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::transport::smtp::{AsyncSmtpTransportBuilder, PoolConfig};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use prometheus::IntCounterVec;
use tokio::sync::{Semaphore, mpsc};

use crate::config::{EmailConfig, EmailMode};

/// Mails waiting for delivery. A thousand mails is minutes of a busy sign-up day; more than
/// that waiting means the mail server is down, and memory would not help.
pub const QUEUE_CAPACITY: usize = 1000;
/// Mails in delivery at once, and so SMTP connections at most: enough to drain a burst, few
/// enough that a relay's per-client connection limit is never hit.
pub const CONCURRENCY: usize = 4;
/// Each SMTP command (connect included) must answer within this. RFC 5321 §4.5.3.2 allows
/// servers minutes, but a relay that slow is better retried than waited for.
const SMTP_TIMEOUT: Duration = Duration::from_secs(15);
/// Pooled SMTP connections are closed after this idle time, below the common server-side
/// idle limit of a minute, so a connection the server is closing is never reused.
const POOL_IDLE: Duration = Duration::from_secs(30);

/// How often and how long a mail is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub attempts: u32,
    /// The wait after the first failure; it doubles after each further one.
    pub first_delay: Duration,
    /// No wait is longer than this.
    pub max_delay: Duration,
}

/// Five attempts over about 30 seconds: long enough to ride out a relay restart or a
/// greylisting retry-after of a few seconds, short enough that a reset link (valid for 30
/// minutes by default) still arrives in time to be used.
pub const RETRY: RetryPolicy = RetryPolicy {
    attempts: 5,
    first_delay: Duration::from_secs(2),
    max_delay: Duration::from_secs(60),
};

impl RetryPolicy {
    /// The wait after the `failures`-th failed attempt (1-based).
    pub fn delay(&self, failures: u32) -> Duration {
        let factor = 1u32
            .checked_shl(failures.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.first_delay
            .checked_mul(factor)
            .map_or(self.max_delay, |d| d.min(self.max_delay))
    }
}

/// What a mail is about; the `kind` metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailKind {
    Reset,
    Verify,
    PasswordChanged,
}

impl MailKind {
    pub fn label(self) -> &'static str {
        match self {
            MailKind::Reset => "reset",
            MailKind::Verify => "verify",
            MailKind::PasswordChanged => "password_changed",
        }
    }
}

/// One composed mail. Its bodies and link carry a live token, so `Debug` shows neither.
#[derive(Clone)]
pub struct Mail {
    pub kind: MailKind,
    pub to: String,
    pub subject: String,
    pub text: String,
    pub html: String,
    /// The link the mail carries, for log mode with `expose_debug_tokens`.
    link: Option<String>,
}

impl fmt::Debug for Mail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mail")
            .field("kind", &self.kind)
            .field("to", &self.to)
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

impl Mail {
    /// The password-reset mail: a link to `email.reset_url` valid for `ttl`.
    pub fn reset(config: &EmailConfig, to: &str, token: &str, ttl: Duration) -> Mail {
        let link = link(&config.reset_url, token);
        let ttl = for_humans(ttl);
        let text = format!(
            "Hello,\n\n\
             someone, hopefully you, asked to reset the password of the account for {to}.\n\n\
             To choose a new password, open this link within {ttl}:\n\n\
             {link}\n\n\
             The link works once. If you did not ask for this, ignore this mail: your \
             password stays as it is.\n"
        );
        let html = html_mail(
            "Reset your password",
            &[
                &format!(
                    "Someone, hopefully you, asked to reset the password of the account for \
                     <strong>{}</strong>.",
                    escape(to)
                ),
                &format!("To choose a new password, open this link within {ttl}:"),
            ],
            Some(("Choose a new password", &link)),
            &[
                "The link works once. If you did not ask for this, ignore this mail: your \
                 password stays as it is.",
            ],
        );
        Mail {
            kind: MailKind::Reset,
            to: to.to_string(),
            subject: "Reset your password".into(),
            text,
            html,
            link: Some(link),
        }
    }

    /// The verification mail: a link to `email.verify_url` valid for `ttl`.
    pub fn verify(config: &EmailConfig, to: &str, token: &str, ttl: Duration) -> Mail {
        let link = link(&config.verify_url, token);
        let ttl = for_humans(ttl);
        let text = format!(
            "Hello,\n\n\
             please confirm that {to} is your email address by opening this link within \
             {ttl}:\n\n\
             {link}\n\n\
             If you did not create an account, ignore this mail.\n"
        );
        let html = html_mail(
            "Confirm your email address",
            &[&format!(
                "Please confirm that <strong>{}</strong> is your email address by opening \
                 this link within {ttl}:",
                escape(to)
            )],
            Some(("Confirm my email address", &link)),
            &["If you did not create an account, ignore this mail."],
        );
        Mail {
            kind: MailKind::Verify,
            to: to.to_string(),
            subject: "Confirm your email address".into(),
            text,
            html,
            link: Some(link),
        }
    }

    /// The notice that a password was changed at `at_unix`, so that the owner of a hijacked
    /// account learns of it.
    pub fn password_changed(to: &str, at_unix: u64) -> Mail {
        let when = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(at_unix));
        let text = format!(
            "Hello,\n\n\
             the password of the account for {to} was changed at {when} (UTC), and every \
             session was signed out.\n\n\
             If that was you, there is nothing more to do: sign in with the new password.\n\n\
             If it was not, someone else can read your mail or knew your password: secure \
             your mailbox, reset your password again and tell your administrator.\n"
        );
        let html = html_mail(
            "Your password was changed",
            &[
                &format!(
                    "The password of the account for <strong>{}</strong> was changed at \
                     {when} (UTC), and every session was signed out.",
                    escape(to)
                ),
                "If that was you, there is nothing more to do: sign in with the new password.",
            ],
            None,
            &[
                "If it was not, someone else can read your mail or knew your password: secure \
                 your mailbox, reset your password again and tell your administrator.",
            ],
        );
        Mail {
            kind: MailKind::PasswordChanged,
            to: to.to_string(),
            subject: "Your password was changed".into(),
            text,
            html,
            link: None,
        }
    }
}

/// A link from a `{token}` template. Tokens are base64url, so they need no escaping in a URL.
fn link(template: &str, token: &str) -> String {
    template.replace("{token}", token)
}

/// "30 minutes", "24 hours", "2 days": the largest whole unit, days only from two on (a
/// day reads as "tomorrow", 24 hours as a deadline).
pub fn for_humans(d: Duration) -> String {
    let secs = d.as_secs();
    let (n, unit) = match secs {
        s if s >= 172_800 && s % 86_400 == 0 => (s / 86_400, "day"),
        s if s >= 3_600 && s % 3_600 == 0 => (s / 3_600, "hour"),
        s if s >= 60 && s % 60 == 0 => (s / 60, "minute"),
        s => (s, "second"),
    };
    if n == 1 {
        format!("1 {unit}")
    } else {
        format!("{n} {unit}s")
    }
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A small HTML mail. Mail clients ignore `<style>` blocks unevenly, hence inline styles.
/// `before` and `after` are trusted HTML fragments written by this module.
fn html_mail(title: &str, before: &[&str], button: Option<(&str, &str)>, after: &[&str]) -> String {
    let mut html = String::with_capacity(2048);
    html.push_str(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>",
    );
    html.push_str(&escape(title));
    html.push_str(
        "</title></head>\n<body style=\"margin:0;padding:24px;background:#f4f4f5;\
         font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:#18181b\">\n\
         <div style=\"max-width:520px;margin:0 auto;background:#fff;border-radius:8px;\
         padding:24px\">\n<h1 style=\"font-size:20px;margin:0 0 16px\">",
    );
    html.push_str(&escape(title));
    html.push_str("</h1>\n");
    for p in before {
        html.push_str("<p style=\"line-height:1.5\">");
        html.push_str(p);
        html.push_str("</p>\n");
    }
    if let Some((label, href)) = button {
        let href = escape(href);
        html.push_str(&format!(
            "<p style=\"margin:24px 0\"><a href=\"{href}\" style=\"background:#1d4ed8;\
             color:#fff;padding:12px 20px;border-radius:6px;text-decoration:none;\
             display:inline-block\">{}</a></p>\n\
             <p style=\"line-height:1.5;font-size:13px;color:#52525b\">If the button does not \
             work, copy this address into your browser:<br>\
             <span style=\"word-break:break-all\">{href}</span></p>\n",
            escape(label)
        ));
    }
    for p in after {
        html.push_str("<p style=\"line-height:1.5;color:#52525b\">");
        html.push_str(p);
        html.push_str("</p>\n");
    }
    html.push_str("</div>\n</body></html>\n");
    html
}

/// Counts for the admin view.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MailStats {
    /// Waiting in the queue.
    pub queued: u64,
    /// Taken from the queue and not finished: being sent or waiting out a backoff.
    pub sending: u64,
    pub sent: u64,
    /// Given up after the last attempt or refused permanently.
    pub failed: u64,
    /// Refused because the queue was full.
    pub dropped: u64,
}

/// Counters shared by the mailer and its delivery tasks.
struct Shared {
    metric: IntCounterVec,
    sending: AtomicU64,
    sent: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
}

impl Shared {
    fn count(&self, kind: MailKind, result: &str) {
        self.metric.with_label_values(&[kind.label(), result]).inc();
    }
}

/// A mail ready for SMTP.
struct Job {
    kind: MailKind,
    to: String,
    message: Message,
}

/// Where mail goes, fixed at start.
enum Delivery {
    Log,
    /// The transport is built by [`Mailer::start`]: building it spawns lettre's pool task,
    /// which needs a runtime the offline CLI does not have.
    Smtp(Box<AsyncSmtpTransportBuilder>),
}

/// Delivers mails off the request path. One per app.
pub struct Mailer {
    delivery: Delivery,
    from: Mailbox,
    /// Log mode shows links (and so tokens) only with `auth.expose_debug_tokens`.
    expose_links: bool,
    tx: mpsc::Sender<Job>,
    /// Taken by [`Mailer::start`].
    rx: Mutex<Option<mpsc::Receiver<Job>>>,
    shared: Arc<Shared>,
}

impl Mailer {
    /// Checks the sender address and the SMTP URL; starts nothing. `metric` is
    /// `gatehouse_mail_total{kind, result}`.
    pub fn new(
        config: &EmailConfig,
        expose_links: bool,
        metric: IntCounterVec,
    ) -> Result<Mailer, String> {
        let from: Mailbox = config
            .from
            .parse()
            .map_err(|e| format!("email.from: {e}"))?;
        let delivery = match &config.mode {
            EmailMode::Log => Delivery::Log,
            EmailMode::Smtp { url } => Delivery::Smtp(Box::new(smtp_builder(url.expose())?)),
        };
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        Ok(Mailer {
            delivery,
            from,
            expose_links,
            tx,
            rx: Mutex::new(Some(rx)),
            shared: Arc::new(Shared {
                metric,
                sending: AtomicU64::new(0),
                sent: AtomicU64::new(0),
                failed: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
            }),
        })
    }

    /// Spawns the delivery task (SMTP mode; log mode needs none). Call once from within the
    /// runtime; later calls do nothing. The task ends when the mailer is dropped.
    pub fn start(&self) {
        let Delivery::Smtp(builder) = &self.delivery else {
            return;
        };
        let rx = match self.rx.lock() {
            Ok(mut slot) => slot.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        let Some(rx) = rx else { return };
        let transport: AsyncSmtpTransport<Tokio1Executor> = (**builder).clone().build();
        tokio::spawn(run(rx, transport, self.shared.clone(), RETRY));
    }

    /// `"log"` or `"smtp"`.
    pub fn mode(&self) -> &'static str {
        match self.delivery {
            Delivery::Log => "log",
            Delivery::Smtp(_) => "smtp",
        }
    }

    /// Hands a mail over for delivery and returns at once. Never fails: a mail that cannot
    /// be built (an address lettre refuses) or queued is logged and counted.
    pub fn send(&self, mail: Mail) {
        let kind = mail.kind;
        if let Delivery::Log = self.delivery {
            self.shared.count(kind, "logged");
            match (&mail.link, self.expose_links) {
                (Some(link), true) => tracing::warn!(
                    target: "gatehouse::mail",
                    kind = kind.label(),
                    to = %mail.to,
                    link = %link,
                    "email.mode = log: mail not sent; link shown because auth.expose_debug_tokens is on"
                ),
                _ => tracing::info!(
                    target: "gatehouse::mail",
                    kind = kind.label(),
                    to = %mail.to,
                    "email.mode = log: mail not sent"
                ),
            }
            return;
        }
        let message = match self.build(&mail) {
            Ok(message) => message,
            Err(e) => {
                self.shared.failed.fetch_add(1, Ordering::Relaxed);
                self.shared.count(kind, "failed");
                tracing::warn!(
                    target: "gatehouse::mail",
                    kind = kind.label(),
                    to = %mail.to,
                    error = %e,
                    "mail could not be built"
                );
                return;
            }
        };
        let job = Job {
            kind,
            to: mail.to,
            message,
        };
        if let Err(e) = self.tx.try_send(job) {
            let job = match e {
                mpsc::error::TrySendError::Full(job) | mpsc::error::TrySendError::Closed(job) => {
                    job
                }
            };
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            self.shared.count(kind, "dropped");
            tracing::error!(
                target: "gatehouse::mail",
                kind = kind.label(),
                to = %job.to,
                capacity = QUEUE_CAPACITY,
                "mail queue full: mail dropped (is the mail server down?)"
            );
        }
    }

    fn build(&self, mail: &Mail) -> Result<Message, String> {
        let to: Mailbox = mail.to.parse().map_err(|e| format!("recipient: {e}"))?;
        Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(mail.subject.as_str())
            .message_id(None)
            .multipart(MultiPart::alternative_plain_html(
                mail.text.clone(),
                mail.html.clone(),
            ))
            .map_err(|e| e.to_string())
    }

    /// Counts for the admin view.
    pub fn stats(&self) -> MailStats {
        let s = &self.shared;
        MailStats {
            queued: (self.tx.max_capacity() - self.tx.capacity()) as u64,
            sending: s.sending.load(Ordering::Relaxed),
            sent: s.sent.load(Ordering::Relaxed),
            failed: s.failed.load(Ordering::Relaxed),
            dropped: s.dropped.load(Ordering::Relaxed),
        }
    }
}

/// The parts of an SMTP URL this module decides on; lettre reads the rest.
#[derive(Debug, PartialEq, Eq)]
struct SmtpUrl {
    implicit_tls: bool,
    host: String,
    credentials: bool,
    tls_param: bool,
}

/// Reads an SMTP URL with the `url` crate. Errors never quote the URL: it may hold a
/// password.
fn parse_smtp_url(text: &str) -> Result<SmtpUrl, &'static str> {
    let url = url::Url::parse(text).map_err(|_| "is not a valid URL")?;
    let implicit_tls = match url.scheme() {
        "smtps" => true,
        "smtp" => false,
        _ => return Err("must start with smtp:// or smtps://"),
    };
    let host = match url.host() {
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        Some(host) => host.to_string(),
        None => return Err("has no host"),
    };
    if host.is_empty() {
        return Err("has no host");
    }
    Ok(SmtpUrl {
        implicit_tls,
        host,
        // lettre authenticates only when the URL has a password.
        credentials: url.password().is_some(),
        tls_param: url.query_pairs().any(|(name, _)| name == "tls"),
    })
}

/// The transport builder for `email.smtp_url`. Errors never quote the URL: it may hold a
/// password.
fn smtp_builder(url: &str) -> Result<AsyncSmtpTransportBuilder, String> {
    let parts = parse_smtp_url(url).map_err(|e| format!("email.smtp_url {e}"))?;
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
        .map_err(|e| format!("email.smtp_url is not usable: {e}"))?;
    if !parts.implicit_tls && !parts.tls_param {
        // lettre's plain `smtp://` never upgrades; we upgrade when offered, and insist on it
        // when a password is about to cross the wire.
        let params = TlsParameters::new(parts.host.clone())
            .map_err(|e| format!("email.smtp_url: TLS setup failed: {e}"))?;
        builder = builder.tls(if parts.credentials {
            Tls::Required(params)
        } else {
            Tls::Opportunistic(params)
        });
    }
    Ok(builder.timeout(Some(SMTP_TIMEOUT)).pool_config(
        PoolConfig::new()
            .max_size(CONCURRENCY as u32)
            .idle_timeout(POOL_IDLE),
    ))
}

/// Drains the queue until the mailer is dropped, up to [`CONCURRENCY`] mails at a time.
async fn run(
    mut rx: mpsc::Receiver<Job>,
    transport: AsyncSmtpTransport<Tokio1Executor>,
    shared: Arc<Shared>,
    policy: RetryPolicy,
) {
    let permits = Arc::new(Semaphore::new(CONCURRENCY));
    while let Some(job) = rx.recv().await {
        shared.sending.fetch_add(1, Ordering::Relaxed);
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (transport, shared) = (transport.clone(), shared.clone());
        tokio::spawn(async move {
            let Job { kind, to, message } = job;
            let outcome = with_retries(
                &policy,
                || {
                    let (transport, message) = (&transport, message.clone());
                    async move {
                        transport.send(message).await.map(|_| ()).map_err(|e| {
                            let permanent = e.is_permanent();
                            (e.to_string(), permanent)
                        })
                    }
                },
                |failures, error| {
                    shared.count(kind, "retried");
                    tracing::warn!(
                        target: "gatehouse::mail",
                        kind = kind.label(),
                        to = %to,
                        attempt = failures,
                        error = %error,
                        "mail delivery failed; will retry"
                    );
                },
            )
            .await;
            match outcome {
                Ok(()) => {
                    shared.sent.fetch_add(1, Ordering::Relaxed);
                    shared.count(kind, "sent");
                    tracing::debug!(target: "gatehouse::mail", kind = kind.label(), to = %to, "mail sent");
                }
                Err(error) => {
                    shared.failed.fetch_add(1, Ordering::Relaxed);
                    shared.count(kind, "failed");
                    tracing::error!(
                        target: "gatehouse::mail",
                        kind = kind.label(),
                        to = %to,
                        error = %error,
                        "mail delivery failed; giving up"
                    );
                }
            }
            shared.sending.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
        });
    }
}

/// Runs `attempt` until it succeeds, fails permanently (`Err((_, true))`) or has been tried
/// `policy.attempts` times, sleeping [`RetryPolicy::delay`] between tries. `on_retry` hears
/// of each failure that another attempt follows. Returns the last error.
async fn with_retries<F, Fut>(
    policy: &RetryPolicy,
    mut attempt: F,
    mut on_retry: impl FnMut(u32, &str),
) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), (String, bool)>>,
{
    let mut failures = 0;
    loop {
        match attempt().await {
            Ok(()) => return Ok(()),
            Err((error, permanent)) => {
                failures += 1;
                if permanent || failures >= policy.attempts.max(1) {
                    return Err(error);
                }
                on_retry(failures, &error);
                tokio::time::sleep(policy.delay(failures)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::Opts;

    fn config() -> EmailConfig {
        EmailConfig {
            mode: EmailMode::Log,
            from: "gatehouse@example.com".into(),
            reset_url: "https://app.example.com/reset?token={token}&a=1".into(),
            verify_url: "https://app.example.com/verify?token={token}".into(),
        }
    }

    fn metric() -> IntCounterVec {
        IntCounterVec::new(Opts::new("mail_total", "test"), &["kind", "result"]).unwrap()
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let policy = RetryPolicy {
            attempts: 10,
            first_delay: Duration::from_secs(2),
            max_delay: Duration::from_secs(20),
        };
        let delays: Vec<u64> = (1..=6).map(|n| policy.delay(n).as_secs()).collect();
        assert_eq!(delays, [2, 4, 8, 16, 20, 20]);
        assert_eq!(policy.delay(500), Duration::from_secs(20));
        assert_eq!(RETRY.delay(1), Duration::from_secs(2));
        assert_eq!(RETRY.delay(4), Duration::from_secs(16));
    }

    /// Replays scripted attempt results (`None` = success, `Some(permanent)` = failure) and
    /// checks the outcome, the attempts made and the retries reported.
    async fn check(script: &[Option<bool>], expect_ok: bool, attempts: usize, retries: &[u32]) {
        let policy = RetryPolicy {
            attempts: 3,
            first_delay: Duration::ZERO,
            max_delay: Duration::ZERO,
        };
        let made = std::cell::Cell::new(0usize);
        let mut reported = Vec::new();
        let result = with_retries(
            &policy,
            || {
                let i = made.get();
                made.set(i + 1);
                let step = script[i];
                async move {
                    match step {
                        None => Ok(()),
                        Some(permanent) => Err((format!("failure {i}"), permanent)),
                    }
                }
            },
            |n, _| reported.push(n),
        )
        .await;
        assert_eq!(result.is_ok(), expect_ok, "{script:?}: {result:?}");
        assert_eq!(made.get(), attempts, "{script:?}");
        assert_eq!(reported, retries, "{script:?}");
    }

    #[tokio::test]
    async fn retries_transient_failures_only() {
        check(&[None], true, 1, &[]).await;
        check(&[Some(false), None], true, 2, &[1]).await;
        check(&[Some(false), Some(false), None], true, 3, &[1, 2]).await;
        // Gives up after `attempts`, without a retry report for the last one.
        check(&[Some(false), Some(false), Some(false)], false, 3, &[1, 2]).await;
        // A permanent refusal is not retried.
        check(&[Some(true)], false, 1, &[]).await;
        check(&[Some(false), Some(true)], false, 2, &[1]).await;
    }

    #[test]
    fn smtp_urls() {
        let parse = |url| parse_smtp_url(url);
        assert_eq!(
            parse("smtp://127.0.0.1:2525"),
            Ok(SmtpUrl {
                implicit_tls: false,
                host: "127.0.0.1".into(),
                credentials: false,
                tls_param: false
            })
        );
        assert_eq!(
            parse("smtps://user:p%40ss@mail.example.com/helo.example?x=1"),
            Ok(SmtpUrl {
                implicit_tls: true,
                host: "mail.example.com".into(),
                credentials: true,
                tls_param: false
            })
        );
        let p = parse("smtp://u:p@[::1]:25?tls=required").unwrap();
        assert_eq!(
            (p.host.as_str(), p.credentials, p.tls_param),
            ("::1", true, true)
        );
        assert!(!parse("smtp://user@host").unwrap().credentials);
        assert!(parse("smtp://").is_err());
        assert!(parse("http://host").is_err());
    }

    #[test]
    fn builder_errors_never_quote_the_url() {
        let secret = "smtp://user:hunter2@/";
        let error = smtp_builder(secret).err().unwrap();
        assert!(!error.contains("hunter2"), "{error}");
        assert!(smtp_builder("smtp://user:hunter2@mail.example.com:587").is_ok());
        assert!(smtp_builder("smtps://mail.example.com").is_ok());
        assert!(smtp_builder("smtp://mail.example.com?tls=bogus").is_err());
    }

    #[test]
    fn links_come_from_the_template_only() {
        let mail = Mail::reset(
            &config(),
            "ada@example.com",
            "TOKEN-1",
            Duration::from_secs(1800),
        );
        let expected = "https://app.example.com/reset?token=TOKEN-1&a=1";
        assert!(mail.text.contains(expected), "{}", mail.text);
        assert!(mail.text.contains("30 minutes"));
        assert!(
            mail.html
                .contains("https://app.example.com/reset?token=TOKEN-1&amp;a=1")
        );
        assert!(!mail.html.contains("token=TOKEN-1&a=1"), "escaped in HTML");
        let mail = Mail::verify(
            &config(),
            "a<b>@example.com",
            "T2",
            Duration::from_secs(86400),
        );
        assert!(
            mail.text
                .contains("https://app.example.com/verify?token=T2")
        );
        assert!(mail.text.contains("24 hours"));
        assert!(mail.html.contains("a&lt;b&gt;@example.com"));
        let mail = Mail::password_changed("ada@example.com", 1_800_000_000);
        assert!(mail.text.contains("2027-01-15T08:00:00Z"), "{}", mail.text);
        assert!(mail.link.is_none());
    }

    #[test]
    fn debug_hides_bodies_and_links() {
        let mail = Mail::reset(
            &config(),
            "ada@example.com",
            "SECRET",
            Duration::from_secs(60),
        );
        let shown = format!("{mail:?}");
        assert!(!shown.contains("SECRET"), "{shown}");
    }

    #[test]
    fn durations_for_humans() {
        for (secs, text) in [
            (1, "1 second"),
            (45, "45 seconds"),
            (60, "1 minute"),
            (90, "90 seconds"),
            (1800, "30 minutes"),
            (3600, "1 hour"),
            (86400, "24 hours"),
            (172_800, "2 days"),
            (5400, "90 minutes"),
        ] {
            assert_eq!(for_humans(Duration::from_secs(secs)), text);
        }
    }

    #[test]
    fn messages_build_and_bad_recipients_count_as_failed() {
        let mut config = config();
        config.mode = EmailMode::Smtp {
            url: "smtp://127.0.0.1:1".into(),
        };
        let metric = metric();
        let mailer = Mailer::new(&config, false, metric.clone()).unwrap();
        assert_eq!(mailer.mode(), "smtp");
        let mail = Mail::password_changed("ada@example.com", 0);
        let message = mailer.build(&mail).unwrap();
        let raw = String::from_utf8(message.formatted()).unwrap();
        assert!(raw.contains("multipart/alternative"), "{raw}");
        assert!(raw.contains("text/plain") && raw.contains("text/html"));
        assert!(raw.contains("Message-ID:"));

        // Not started: the mail waits in the queue.
        mailer.send(mail);
        assert_eq!(mailer.stats().queued, 1);
        mailer.send(Mail::password_changed("not an address", 0));
        assert_eq!(mailer.stats().failed, 1);
        assert_eq!(
            metric
                .with_label_values(&["password_changed", "failed"])
                .get(),
            1
        );
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let mut config = config();
        config.mode = EmailMode::Smtp {
            url: "smtp://127.0.0.1:1".into(),
        };
        let metric = metric();
        let mailer = Mailer::new(&config, false, metric.clone()).unwrap();
        for _ in 0..QUEUE_CAPACITY + 2 {
            mailer.send(Mail::password_changed("ada@example.com", 0));
        }
        let stats = mailer.stats();
        assert_eq!(stats.queued, QUEUE_CAPACITY as u64);
        assert_eq!(stats.dropped, 2);
        assert_eq!(
            metric
                .with_label_values(&["password_changed", "dropped"])
                .get(),
            2
        );
    }

    #[test]
    fn log_mode_counts_and_accepts_the_default_sender() {
        let mut config = config();
        config.from = "gatehouse@localhost".into();
        let metric = metric();
        let mailer = Mailer::new(&config, false, metric.clone()).unwrap();
        assert_eq!(mailer.mode(), "log");
        mailer.start();
        mailer.send(Mail::verify(
            &config,
            "ada@example.com",
            "T",
            Duration::from_secs(60),
        ));
        assert_eq!(metric.with_label_values(&["verify", "logged"]).get(), 1);
        assert_eq!(mailer.stats(), MailStats::default());
    }

    #[test]
    fn escapes_html() {
        assert_eq!(
            escape(r#"<a href="x">&'"#),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
