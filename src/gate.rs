//! The request pipeline: one plain async function that reads top to bottom.
//!
//! For every request on the main listener:
//!
//! 1. take or mint the request id;
//! 2. answer the ops endpoints (unless they live on the admin listener);
//! 3. refuse what must never be forwarded (CONNECT, absolute-form targets for another host,
//!    over-long targets);
//! 4. normalise the path once ([`crate::path`]); that path is decided on and forwarded;
//! 5. hand `auth.prefix` paths to the identity service ([`crate::auth`]);
//! 6. decide the route rule ([`crate::policy`]);
//! 7. verify a bearer token if one is present, invalid tokens being refused even on public
//!    routes, then check revocation in memory ([`crate::token`], [`crate::revocation`]);
//! 8. apply the rule's verdict and the verified-email requirement;
//! 9. apply per-IP rate limits ([`crate::ratelimit`]);
//! 10. rewrite headers and forward, streaming ([`crate::proxy`]); a WebSocket handshake that
//!     got this far is spliced both ways after the upstream's 101 ([`crate::websocket`]);
//! 11. count and (optionally) log the request.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, header};
use http_body_util::{Either, Full, Limited};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::app::{App, RequestIds};
use crate::client_ip;
use crate::error::{Error, TokenRefusal};
use crate::metrics::{MethodClass, Outcome};
use crate::path;
use crate::policy::{Access, Verdict};
use crate::proxy::{Forwarding, Identity};
use crate::ratelimit::RateLimiter;
use crate::token::{Claims, TokenError, bearer};

/// Headers that ask a framework to run another method than the request line's.
const METHOD_OVERRIDES: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// The response body: the upstream's streamed body, or one gatehouse wrote itself.
pub type Body = Either<Incoming, Full<Bytes>>;

/// What is known about the client connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
}

/// Wraps a gatehouse-written response as [`Body`].
pub fn local(response: Response<Full<Bytes>>) -> Response<Body> {
    response.map(Either::Right)
}

/// Serves one request on the main listener. Never fails: every error becomes its response.
pub async fn handle(app: Arc<App>, conn: ConnInfo, request: Request<Incoming>) -> Response<Body> {
    let start = Instant::now();
    let request_id = match request.headers().get(&app.config.headers.request_id) {
        Some(v) if RequestIds::accept(v) => v.clone(),
        _ => app.request_ids.next(),
    };

    if app.config.server.admin_listen.is_none()
        && let Some(response) = crate::ops::handle(&app, &request).await
    {
        return with_request_id(&app, local(response), &request_id);
    }

    let class = MethodClass::of(request.method());
    let method = request.method().clone();
    let mut rule = None;
    let (mut response, outcome) = match gate(&app, conn, request, &request_id, &mut rule).await {
        Ok(Routed::Proxied(response)) => (response, Outcome::Forwarded),
        Ok(Routed::Local(response)) => return with_request_id(&app, response, &request_id),
        Err(error) => {
            error.log(request_id.to_str().unwrap_or_default());
            let outcome = outcome_of(&error);
            (local(error.into_response()), outcome)
        }
    };
    let elapsed = start.elapsed();
    app.metrics
        .record_request(rule, class, outcome, elapsed.as_secs_f64());
    if app.config.log.access {
        tracing::info!(
            target: "gatehouse::access",
            request_id = request_id.to_str().unwrap_or_default(),
            method = %method,
            status = response.status().as_u16(),
            route = app.config.policy.rule_label(rule),
            micros = elapsed.as_micros() as u64,
            peer = %conn.peer,
        );
    }
    if outcome != Outcome::Forwarded {
        response
            .headers_mut()
            .insert(app.config.headers.request_id.clone(), request_id);
    }
    response
}

fn with_request_id(app: &App, mut response: Response<Body>, id: &HeaderValue) -> Response<Body> {
    response
        .headers_mut()
        .insert(app.config.headers.request_id.clone(), id.clone());
    response
}

/// Where a request went.
enum Routed {
    /// Forwarded; the upstream's response.
    Proxied(Response<Body>),
    /// Served by gatehouse (auth endpoints).
    Local(Response<Body>),
}

fn outcome_of(error: &Error) -> Outcome {
    match error {
        Error::Token(_) => Outcome::Unauthenticated,
        Error::Forbidden | Error::EmailNotVerified => Outcome::Forbidden,
        Error::RateLimited { .. } => Outcome::RateLimited,
        Error::UpstreamUnavailable(_) | Error::UpstreamTimeout => Outcome::UpstreamError,
        _ => Outcome::Rejected,
    }
}

async fn gate(
    app: &Arc<App>,
    conn: ConnInfo,
    request: Request<Incoming>,
    request_id: &HeaderValue,
    rule: &mut Option<usize>,
) -> Result<Routed, Error> {
    let config = &app.config;

    // 3. Never forwarded: a proxy that tunnels or that forwards to a host named by the
    //    client is an open proxy.
    if request.method() == Method::CONNECT {
        return Err(Error::InvalidRequest("CONNECT is not supported".into()));
    }
    // Methods are case-sensitive, but many frameworks upper-case them: `delete` would miss
    // a DELETE-only rule here and run the DELETE handler there.
    if request
        .method()
        .as_str()
        .bytes()
        .any(|b| b.is_ascii_lowercase())
    {
        return Err(Error::InvalidRequest("methods must be upper-case".into()));
    }
    // Method-override headers make the upstream run another method than the one the policy
    // decided on (Rails, Laravel, Express honour them).
    if METHOD_OVERRIDES
        .iter()
        .any(|name| request.headers().contains_key(*name))
    {
        return Err(Error::InvalidRequest(
            "method-override headers are not accepted; send the real method".into(),
        ));
    }
    // RFC 9112 §3.2: an HTTP/1.1 request with no Host or with several is refused; which one
    // would the upstream believe?
    if request.version() == http::Version::HTTP_11
        && request.headers().get_all(header::HOST).iter().count() != 1
    {
        return Err(Error::InvalidRequest(
            "exactly one Host header is required".into(),
        ));
    }
    // HTTP/2 names the host in :authority (RFC 9113 §8.3.1); a `host` header beside it must
    // agree, or the upstream could build links from a host the client made up.
    if request.version() == http::Version::HTTP_2 {
        let mut hosts = request.headers().get_all(header::HOST).iter();
        let authority = request.uri().authority().map(|a| a.as_str().as_bytes());
        let agrees = match (hosts.next(), hosts.next()) {
            (None, _) => true,
            (Some(host), None) => authority.is_none_or(|a| a.eq_ignore_ascii_case(host.as_bytes())),
            (Some(_), Some(_)) => false,
        };
        if !agrees {
            return Err(Error::InvalidRequest(
                "the host header must match :authority".into(),
            ));
        }
    }
    // Ambiguous framing (Content-Length with Transfer-Encoding, conflicting lengths) never
    // reaches this point: hyper refuses conflicting lengths and non-chunked
    // Transfer-Encoding with 400, and when both headers come it frames by the chunked
    // encoding alone, drops Content-Length and closes the connection after the response
    // (RFC 9112 §6.3). The upstream therefore only ever sees one unambiguous framing.
    let headers = request.headers();
    // An h2c upgrade would switch the connection to a protocol the policy never saw.
    if headers
        .get_all(header::UPGRADE)
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"h2c"))
        || headers.contains_key("http2-settings")
    {
        return Err(Error::InvalidRequest(
            "h2c upgrades are not supported".into(),
        ));
    }
    let uri = request.uri();
    if request.version() < http::Version::HTTP_2
        && let Some(authority) = uri.authority()
    {
        let host = request
            .headers()
            .get(header::HOST)
            .map(HeaderValue::as_bytes);
        if host != Some(authority.as_str().as_bytes()) {
            return Err(Error::InvalidRequest(
                "absolute-form targets for another host are not accepted".into(),
            ));
        }
    }
    let target_len = uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    if target_len > config.server.max_uri_bytes {
        return Err(Error::UriTooLong);
    }

    // 4. One normalisation; this exact string is decided on and forwarded.
    let path = path::normalize(uri.path()).map_err(|e| Error::InvalidRequest(e.reason().into()))?;

    // The client as the trusted proxies report it: keys rate limits and audit events.
    let trusted = &config.server.trusted_proxies;
    let peer_ip = conn.peer.ip();
    let client = client_ip::client_ip(peer_ip, request.headers(), trusted);

    // 5. The identity service.
    if path.starts_with(config.auth.prefix.as_str())
        && matches!(
            path.as_bytes().get(config.auth.prefix.len()),
            None | Some(b'/')
        )
    {
        let path = path.into_owned();
        let caller = crate::auth::Caller { ip: client };
        return crate::auth::handle(app, caller, request, &path)
            .await
            .map(Routed::Local);
    }

    // 6. Policy.
    let decision = config.policy.decide(request.method(), &path);
    *rule = decision.rule;
    if matches!(decision.access, Access::Deny) {
        return Err(Error::Forbidden);
    }

    // 7. Authentication: a presented token must be good even where none is required, so a
    //    forged or revoked token is never silently downgraded to anonymous.
    let claims = authenticate(app, request.headers())?;
    let mask = claims
        .as_ref()
        .map(|c| config.policy.roles_mask(c.roles.iter().map(String::as_str)));

    // 8. Authorisation.
    match decision.access.allows(mask) {
        Verdict::Allow => {}
        Verdict::Unauthenticated => {
            app.metrics.auth_failure("missing");
            return Err(Error::Token(TokenRefusal::Missing));
        }
        Verdict::Forbidden => return Err(Error::Forbidden),
    }
    if config.auth.require_verified_email
        && !matches!(decision.access, Access::Public)
        && claims.as_ref().is_some_and(|c| !c.email_verified)
    {
        return Err(Error::EmailNotVerified);
    }

    // 9. Rate limits, keyed by the client.
    let peer_trusted = !trusted.is_empty() && client_ip::is_trusted(peer_ip, trusted);
    let route_limiter = decision
        .rule
        .and_then(|i| app.limits.routes.get(i))
        .and_then(Option::as_ref);
    for (limiter, class) in [
        (app.limits.proxy.as_ref(), "proxy"),
        (route_limiter, "route"),
    ] {
        if let Some(limiter) = limiter {
            check_rate(app, limiter, client, class)?;
        }
    }

    // 10. Forward.
    if let Some(len) = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > config.server.max_body_bytes
    {
        return Err(Error::PayloadTooLarge);
    }
    let upstream_uri = app.upstream.uri_for(uri, &path)?;
    // The host the client addressed: :authority for HTTP/2, Host for HTTP/1 (an absolute-form
    // target's authority was checked against Host above).
    let authority = request
        .uri()
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
    let original_host = if request.version() == http::Version::HTTP_2 {
        authority.or_else(|| request.headers().get(header::HOST).cloned())
    } else {
        request.headers().get(header::HOST).cloned().or(authority)
    };
    let mut request = request;
    let ws_key = crate::websocket::upgrade_key(&request);
    let client_upgrade = ws_key.is_some().then(|| hyper::upgrade::on(&mut request));
    let (mut parts, body) = request.into_parts();
    parts.uri = upstream_uri;
    parts.version = http::Version::HTTP_11;
    let identity = claims.as_ref().map(|c| Identity {
        user_id: &c.sub,
        email: &c.email,
        roles: &c.roles,
        session_id: &c.sid,
    });
    let forwarding = Forwarding {
        forwarded_for: client_ip::forwarded_for_header(peer_ip, &parts.headers, trusted),
        peer_trusted,
        tls: conn.tls,
        request_id,
    };
    crate::proxy::rewrite_request(
        &mut parts.headers,
        &config.headers,
        identity.as_ref(),
        &forwarding,
        original_host,
    );
    if client_upgrade.is_some() {
        crate::websocket::restore_handshake_headers(&mut parts.headers);
    }
    let body = Limited::new(
        body,
        usize::try_from(config.server.max_body_bytes).unwrap_or(usize::MAX),
    );
    let upstream_start = Instant::now();
    let response = app
        .upstream
        .forward(Request::from_parts(parts, body))
        .await
        .map_err(|e| {
            app.metrics.upstream_error(e.kind());
            e.into_error()
        })?;
    app.metrics
        .record_upstream(upstream_start.elapsed().as_secs_f64());
    let mut response = response;
    let switching = response.status() == http::StatusCode::SWITCHING_PROTOCOLS;
    let spliced = match client_upgrade {
        Some(client)
            if switching
                && ws_key.as_ref().is_some_and(|key| {
                    crate::websocket::upstream_accepted(key, response.headers())
                }) =>
        {
            // The spliced pair outlives this HTTP connection and its slot: it takes a slot
            // of its own, and ends when the token expires or the server drains.
            let Ok(slot) = app.connection_slots.clone().try_acquire_owned() else {
                return Err(Error::Unavailable("connection limit reached"));
            };
            let upstream = hyper::upgrade::on(&mut response);
            let splice = crate::websocket::Splice {
                request_id: request_id.to_str().unwrap_or_default().to_string(),
                expires_at: claims.as_ref().map(|c| c.exp),
                now: app.clock.now(),
                draining: app.draining(),
                slot,
            };
            tokio::spawn(crate::websocket::splice(client, upstream, splice));
            true
        }
        // A 101 nobody asked for would hand the client a raw upstream socket.
        _ if switching => {
            return Err(Error::UpstreamUnavailable(
                "unexpected 101 from upstream".into(),
            ));
        }
        _ => false,
    };
    let (mut parts, body) = response.into_parts();
    crate::proxy::rewrite_response(&mut parts.headers, &config.headers, request_id);
    if spliced {
        crate::websocket::restore_handshake_headers(&mut parts.headers);
    }
    Ok(Routed::Proxied(Response::from_parts(
        parts,
        Either::Left(body),
    )))
}

/// Verifies the bearer token if one is present. `Ok(None)` = anonymous.
pub fn authenticate(app: &App, headers: &http::HeaderMap) -> Result<Option<Claims>, Error> {
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
    let claims = app
        .tokens
        .verify(token, app.clock.now())
        .map_err(|e| refuse(token_refusal(e)))?;
    if app.revocations.is_revoked(&claims) {
        return Err(refuse(TokenRefusal::Revoked));
    }
    Ok(Some(claims))
}

/// Maps the token module's verdict to the error taxonomy.
pub fn token_refusal(e: TokenError) -> TokenRefusal {
    match e {
        TokenError::Expired => TokenRefusal::Expired,
        TokenError::Invalid(reason) => TokenRefusal::Invalid(reason),
    }
}

pub fn check_rate(
    app: &App,
    limiter: &RateLimiter,
    client: std::net::IpAddr,
    class: &'static str,
) -> Result<(), Error> {
    match limiter.check(client_ip::rate_key(client), Instant::now()) {
        crate::ratelimit::Outcome::Allowed { .. } => Ok(()),
        crate::ratelimit::Outcome::Limited {
            limit,
            retry_after_secs,
            reset_secs,
        } => {
            app.metrics.rate_limited(class);
            Err(Error::RateLimited {
                retry_after_secs,
                quota: Some((limit, reset_secs)),
            })
        }
    }
}
