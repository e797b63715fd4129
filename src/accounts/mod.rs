//! The accounts service: the business rules of users, sessions and recovery, with no HTTP
//! types in it.
//!
//! The HTTP handlers in `auth/` read requests, call these functions and render their
//! results; the `gatehouse user` CLI calls the same functions, so validation, the password
//! policy, hashing, revocation and audit are one code path whatever the way in. Dependencies
//! point one way: `auth` (handlers) → `accounts` (this service) → `store`.
//!
//! - this module: who is asking ([`Caller`]) and audit events;
//! - [`users`]: creating users ([`users::create_user`], the one way a user comes to exist),
//!   the checks on addresses, names and roles, password changes and the revocations they
//!   imply;
//! - [`signup`]: self-service registration;
//! - [`sessions`]: login (lockout, argon2, rehash), refresh rotation with reuse detection,
//!   logout;
//! - [`recovery`]: reset and verification tokens, forgot/reset password, email verification;
//! - [`mfa`]: the TOTP second factor: setup, confirmation, the second step of a login,
//!   disabling, an administrator's reset;
//! - [`admin`]: what an administrator may do to a user.

pub mod admin;
pub mod mfa;
pub mod recovery;
pub mod sessions;
pub mod signup;
pub mod users;

use std::net::IpAddr;

use crate::app::{App, RequestId};

/// Who is asking, as gatehouse believes it.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    /// The client address (see `client_ip`): keys rate limits and audit events.
    pub ip: IpAddr,
    /// The request's id (the `X-Request-Id` gatehouse answers with), so an audit event
    /// can be found beside its access-log line; empty for the offline CLI.
    pub request_id: RequestId,
}

/// Records an audit event: a structured log line on the `gatehouse::audit` target and a
/// count in `gatehouse_auth_events_total`. Never given passwords or tokens.
pub fn audit(app: &App, event: &str, outcome: &str, user_id: Option<&str>, caller: Caller) {
    app.metrics.auth_event(event, outcome);
    tracing::info!(
        target: "gatehouse::audit",
        event,
        outcome,
        user_id = user_id.unwrap_or(""),
        ip = %caller.ip,
        request_id = caller.request_id.as_str(),
    );
}
