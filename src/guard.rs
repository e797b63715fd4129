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
pub fn authenticate(app: &App, headers: &HeaderMap) -> Result<Option<Arc<Claims>>, Error> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let refuse = |refusal: TokenRefusal| {
        app.metrics.auth_failure(refusal.reason());
        Error::Token(refusal)
    };
    if values.next().is_some() {
        return Err(refuse(TokenRefusal::Invalid("malformed")));
    }
    let token = bearer(value).map_err(|e| refuse(token_refusal(e)))?;
    verify_access_token(app, token).map(Some)
}

/// Verifies an access token given as a string (the bearer's value, or the token a WebSocket
/// auth channel holds): signature, claims, expiry, then revocation, in memory. Refusals are
/// counted.
pub fn verify_access_token(app: &App, token: &str) -> Result<Arc<Claims>, Error> {
    let refuse = |refusal: TokenRefusal| {
        app.metrics.auth_failure(refusal.reason());
        Error::Token(refusal)
    };
    let now = app.clock.now();
    let claims = app
        .live
        .tokens
        .verify_shared(token, now)
        .map_err(|e| refuse(token_refusal(e)))?;
    if app.revocations.is_revoked(&claims, now) {
        return Err(refuse(TokenRefusal::Revoked));
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
