//! The request pipeline: one plain async function that reads top to bottom.
//!
//! For every request on the main listener:
//!
//! 1. take or mint the request id;
//! 2. answer the ops endpoints (unless they live on the admin listener);
//! 3. refuse what must never be decided on or forwarded: CONNECT, lower-case methods, method
//!    overrides, ambiguous hosts, absolute-form targets for another host, over-long targets
//!    ([`crate::hygiene`]);
//! 4. normalise the path once ([`crate::path`]); that path is decided on and forwarded;
//! 5. hand `auth.prefix` paths to the identity service ([`crate::auth`]);
//! 6. decide the route rule, on the exact and the case-folded path ([`crate::policy`]);
//! 7. verify a bearer token if one is present, invalid tokens being refused even on public
//!    routes, then check revocation in memory ([`crate::token`], [`crate::revocation`]);
//! 8. apply the stricter verdict and the verified-email requirement;
//! 9. apply per-IP rate limits ([`crate::ratelimit`]);
//! 10. rewrite headers and forward, streaming ([`crate::proxy`]); a WebSocket handshake that
//!     got this far is spliced both ways after the upstream's 101 ([`crate::websocket`]);
//! 11. count and (optionally) log the request.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderValue, Request, Response, header};
use http_body_util::Either;
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::app::{App, RequestIds};
use crate::client_ip;
use crate::error::{Error, TokenRefusal};
use crate::guard::{authenticate, check_rate};
use crate::metrics::{MethodClass, Outcome};
use crate::path;
use crate::policy::Verdict;
use crate::proxy::{Forwarding, Identity};
use crate::response::{Body, local};

/// What is known about the client connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
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
            let outcome = error.outcome();
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

async fn gate(
    app: &Arc<App>,
    conn: ConnInfo,
    request: Request<Incoming>,
    request_id: &HeaderValue,
    rule: &mut Option<usize>,
) -> Result<Routed, Error> {
    let config = &app.config;
    let uri = request.uri();

    // 3. Refuse what must never be decided on or forwarded: tunnels, open-proxy targets,
    //    method overrides, ambiguous hosts (see `hygiene.rs` for the table and the reasons).
    crate::hygiene::check(&request, config.server.max_uri_bytes)?;

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

    // 6. Policy: the exact path's rule and, unless the policy is case-sensitive, the
    //    case-folded path's; the request must pass both.
    let decision = config.policy.decide(request.method(), &path);
    *rule = decision.exact.rule;
    if let Some(denied) = decision.denial() {
        *rule = denied.rule;
        return Err(Error::Forbidden);
    }

    // 7. Authentication: a presented token must be good even where none is required, so a
    //    forged or revoked token is never silently downgraded to anonymous.
    let claims = authenticate(app, request.headers())?;
    let mask = claims
        .as_ref()
        .map(|c| config.policy.roles_mask(c.roles.iter().map(String::as_str)));

    // 8. Authorisation: the stricter verdict of the two spellings.
    let (verdict, matched, _) = decision.verdict(mask);
    *rule = matched.rule;
    match verdict {
        Verdict::Allow => {}
        Verdict::Unauthenticated => {
            app.metrics.auth_failure("missing");
            return Err(Error::Token(TokenRefusal::Missing));
        }
        Verdict::Forbidden => return Err(Error::Forbidden),
    }
    if config.auth.require_verified_email
        && !decision.is_public()
        && claims.as_ref().is_some_and(|c| !c.email_verified)
    {
        return Err(Error::EmailNotVerified);
    }

    // 9. Rate limits, keyed by the client.
    let peer_trusted = !trusted.is_empty() && client_ip::is_trusted(peer_ip, trusted);
    if let Some(limiter) = &app.limits.proxy {
        check_rate(app, limiter, client, "proxy")?;
    }
    // Both spellings' rules count: a case variant cannot dodge a route's limit.
    for i in decision.rules() {
        if let Some(limiter) = app.limits.routes.get(i).and_then(Option::as_ref) {
            check_rate(app, limiter, client, "route")?;
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
    let body = crate::proxy::UpstreamBody::new(body, config.server.max_body_bytes);
    let upstream_start = Instant::now();
    let response = app
        .upstream
        .forward(Request::from_parts(parts, body))
        .await
        .map_err(|e| {
            // A body the client broke is the client's error, not the upstream's.
            if !matches!(e, crate::proxy::ForwardError::Body(_)) {
                app.metrics.upstream_error(e.kind());
            }
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
