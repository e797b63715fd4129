//! The checks every caller meets, on the proxy path and at the auth endpoints alike: bearer
//! authentication (signature, claims, revocation) and per-IP rate limits. Both answer with
//! an [`Error`] and count what they refuse.

use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderMap, header};
use tokio::time::Instant;

use crate::app::App;
use crate::client_ip;
use crate::error::{Error, Limited, TokenRefusal};
use crate::ratelimit::{self, RateLimiter};
use crate::shared_limits::AuthClass;
use crate::token::{Claims, TokenError, bearer};

/// Verifies the bearer token if one is present: `Ok(None)` is an anonymous caller. A token
/// that is present must be good; two `Authorization` headers are refused (which one would
/// the upstream read?). Never touches the store: revocations are checked in memory.
///
/// Only gatehouse's own tokens: this is what the auth endpoints use, which act on a
/// gatehouse account. Another issuer's token is refused here as any token of an unknown
/// key is. The proxy path and forward-auth use [`authenticate_request`].
pub fn authenticate(app: &App, headers: &HeaderMap) -> Result<Option<Arc<Claims>>, Error> {
    match bearer_token(app, headers)? {
        Some(token) => verify_access_token(app, token).map(Some),
        None => Ok(None),
    }
}

/// [`authenticate`] for the proxy path and forward-auth, where a token of a configured
/// issuer (`[[issuers]]`, found by its `iss`) is verified with that issuer's keys. Such a
/// token carries no gatehouse session, so gatehouse's revocations do not apply to it (its
/// `sub` names an account of the issuer, not one of gatehouse's); it lives until its `exp`.
/// The one wait on a network is an unknown `kid` (`issuers.rs`).
pub async fn authenticate_request(
    app: &App,
    headers: &HeaderMap,
) -> Result<Option<Arc<Claims>>, Error> {
    let Some(token) = bearer_token(app, headers)? else {
        return Ok(None);
    };
    match external_issuer(app, token) {
        Some(issuer) => issuer
            .verify(token)
            .await
            .map(Some)
            .map_err(|e| refuse(app, token_refusal(e))),
        None => verify_access_token(app, token).map(Some),
    }
}

/// The configured issuer a token claims to come from, if it is not gatehouse's own by its
/// header. With no `[[issuers]]`, or for a header gatehouse writes, nothing is decoded.
fn external_issuer<'a>(app: &'a App, token: &str) -> Option<&'a Arc<crate::issuers::Issuer>> {
    let issuers = &app.live.issuers;
    if issuers.is_empty() || app.live.tokens.has_own_header(token) {
        return None;
    }
    issuers.find(&crate::token::external::issuer_of(token)?)
}

/// The bearer token of the request, if it has an `Authorization` header.
fn bearer_token<'h>(app: &App, headers: &'h HeaderMap) -> Result<Option<&'h str>, Error> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(refuse(app, TokenRefusal::Invalid("malformed")));
    }
    bearer(value)
        .map(Some)
        .map_err(|e| refuse(app, token_refusal(e)))
}

/// A refused token, counted.
fn refuse(app: &App, refusal: TokenRefusal) -> Error {
    app.metrics.auth_failure(refusal.reason());
    Error::Token(refusal)
}

/// Verifies an access token given as a string (the bearer's value, or the token a WebSocket
/// auth channel holds): signature, claims, expiry, then revocation, in memory. Refusals are
/// counted.
pub fn verify_access_token(app: &App, token: &str) -> Result<Arc<Claims>, Error> {
    let now = app.clock.now();
    let claims = app
        .live
        .tokens
        .verify_shared(token, now)
        .map_err(|e| refuse(app, token_refusal(e)))?;
    if app.revocations.is_revoked(&claims, now) {
        return Err(refuse(app, TokenRefusal::Revoked));
    }
    Ok(claims)
}

/// Like [`authenticate`], but an anonymous caller is refused with 401 `TOKEN_MISSING`.
pub fn require_bearer(app: &App, headers: &HeaderMap) -> Result<Arc<Claims>, Error> {
    match authenticate(app, headers)? {
        Some(claims) => Ok(claims),
        None => {
            app.metrics.auth_failure("missing");
            Err(Error::Token(TokenRefusal::Missing))
        }
    }
}

/// Maps the token module's verdict to the error taxonomy.
pub fn token_refusal(e: TokenError) -> TokenRefusal {
    match e {
        TokenError::Expired => TokenRefusal::Expired,
        TokenError::Invalid(reason) => TokenRefusal::Invalid(reason),
    }
}

/// Charges one request from `client` to `limiter`; over the limit is 429 with the quota
/// headers, counted under `class`.
pub fn check_rate(
    app: &App,
    limiter: &RateLimiter,
    client: IpAddr,
    class: &'static str,
) -> Result<(), Error> {
    let outcome = limiter.check(client_ip::rate_key(client), Instant::now());
    refuse_if_limited(app, outcome, class)
}

/// Charges one request from `client` to an auth rate-limit class: shared across replicas
/// when Redis is configured (never waiting on it longer than `rate_limits.redis_timeout`),
/// local otherwise. A class that is off allows everything.
pub async fn limit_auth(app: &App, class: AuthClass, client: IpAddr) -> Result<(), Error> {
    match app
        .live
        .shared_limits
        .check(class, client_ip::rate_key(client))
        .await
    {
        Some(outcome) => refuse_if_limited(app, outcome, class.label()),
        None => Ok(()),
    }
}

/// Over the limit is 429 with the quota headers, counted under `class`.
fn refuse_if_limited(
    app: &App,
    outcome: ratelimit::Outcome,
    class: &'static str,
) -> Result<(), Error> {
    match outcome {
        ratelimit::Outcome::Allowed { .. } => Ok(()),
        ratelimit::Outcome::Limited {
            limit,
            retry_after_secs,
            reset_secs,
        } => {
            app.metrics.rate_limited(class);
            Err(Error::RateLimited {
                retry_after_secs,
                quota: Some((limit, reset_secs)),
                what: Limited::Requests,
            })
        }
    }
}
