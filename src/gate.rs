//! The request pipeline: one plain async function that reads top to bottom.
//!
//! The steps are numbered as in ARCHITECTURE.md, "Life of a proxied request", with the file
//! that owns each:
//!
//! 1. accept the connection (`server.rs`), which calls [`handle`] per request;
//! 2. take or mint the request id (`gate.rs`);
//! 3. answer the ops endpoints unless they live on the admin listener (`ops.rs`), and the
//!    published keys and discovery documents (`wellknown.rs`);
//! 4. refuse what must never be decided on or forwarded (`hygiene.rs`);
//! 5. normalise the path once; that path is decided on and forwarded (`path.rs`);
//! 6. find the client address (`client_ip.rs`), where it is needed: for the auth
//!    endpoints and for rate limits;
//! 7. hand `auth.prefix` paths to the identity service (`auth/`);
//! 8. decide the route rule on the exact and the case-folded path (`policy.rs`);
//! 9. verify a bearer token if one is present, refusing a bad one even on a public route
//!    (`guard.rs` → `token.rs`, `revocation.rs`);
//! 10. authorise: the stricter verdict, the verified-email requirement (`policy.rs`);
//! 11. apply per-IP rate limits (`ratelimit.rs`);
//! 12. rewrite headers and forward, streaming (`proxy.rs`);
//! 13. splice a WebSocket upgrade after the upstream's 101 (`websocket.rs`);
//! 14. respond: count and (optionally) log every request the pipeline answered, auth
//!     endpoints included (`gate.rs`, `metrics.rs`).
//!
//! [`handle`] holds steps 2, 3 and 14; `gate` is steps 4–13 and returns the [`Route`] the
//! request is counted under with its answer. Steps 4, 5, 7, 8 and the order and verdicts
//! of 9–10 are the pure [`crate::decide`], which `gatehouse policy explain` and
//! `policy test` call too.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, Uri};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use tokio::time::{Duration, Instant};

use crate::app::{App, RequestIds};
use crate::client_ip;
use crate::decide::{self, Routing};
use crate::error::{Error, TokenRefusal};
use crate::forward::{self, Original};
use crate::guard::{authenticate_request, check_rate};
use crate::hygiene::Head;
use crate::metrics::{MethodClass, Outcome, Route};
use crate::path;
use crate::policy::Decision;
use crate::proxy::{Pass, Relay};
use crate::response::{Body, ServedUser, local};
use crate::token::Claims;

/// What is known about the client connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
}

/// Serves one request on the main listener. Never fails: every error becomes its response.
/// `app` is the config generation the request began on (`reload::Current::load`); every
/// step reads that one, whatever a reload swaps in meanwhile.
pub async fn handle(app: Arc<App>, conn: ConnInfo, request: Request<Incoming>) -> Response<Body> {
    let start = Instant::now();

    // 2. Request id: the client's when it is short and plain, otherwise a fresh one.
    let request_id = match request.headers().get(&app.live.config.headers.request_id) {
        Some(v) if RequestIds::accept(v) => v.clone(),
        _ => app.request_ids.next(),
    };

    // 3. Ops endpoints. Not counted or access-logged: probes and scrapes arrive at a fixed
    //    rate whatever the clients do, and on an admin listener they never come here at all.
    if app.live.config.server.admin_listen.is_none()
        && let Some(response) = crate::ops::handle(&app, &request).await
    {
        return with_request_id(&app, local(response), request_id);
    }
    // 3. The published keys and discovery documents (`wellknown.rs`): gatehouse's own, never
    //    the policy's, and like the ops endpoints neither counted nor access-logged.
    if let Some(response) = crate::wellknown::handle(&app, &request) {
        let response = with_request_id(&app, local(response), request_id);
        return if request.method() == Method::HEAD {
            without_body(response)
        } else {
            response
        };
    }

    let own_method = request.method().clone();
    let Exchange {
        route,
        result,
        target,
        claims,
        user,
        forward,
    } = gate(&app, conn, request, &request_id).await;
    // A forward-auth decision counts and logs under the original request's method.
    let method = forward.clone().unwrap_or_else(|| own_method.clone());
    let class = MethodClass::of(&method);

    // 14. Respond: every request the pipeline answered is counted and logged under its
    //     route, whether the upstream, an auth endpoint or a refusal answered it.
    let (response, outcome) = match result {
        Ok(response) if route.is_auth() && forward.is_none() => (response, Outcome::Served),
        Ok(response) => (response, Outcome::Forwarded),
        Err(error) => {
            error.log(request_id.to_str().unwrap_or_default());
            let outcome = error.outcome();
            (local(error.into_response()), outcome)
        }
    };
    let elapsed = start.elapsed();
    let seconds = elapsed.as_secs_f64();
    let routes = &app.live.routes;
    if forward.is_some() {
        app.metrics
            .record_forward(routes, route, class, outcome, seconds);
    } else {
        app.metrics
            .record_request(routes, route, class, outcome, seconds);
    }
    if app.live.config.log.access {
        let line = AccessLine {
            request_id: &request_id,
            method: &method,
            target: &target,
            route,
            user: claims.as_ref().map(|c| c.sub.as_str()).or(user.as_deref()),
            elapsed,
            peer: conn.peer,
            forward_auth: forward.is_some(),
        };
        line.emit(&app, &response);
    }
    // `proxy::relay` already put the id on the upstream's response.
    let response = if outcome == Outcome::Forwarded && forward.is_none() {
        response
    } else {
        with_request_id(&app, response, request_id)
    };
    if own_method == Method::HEAD {
        without_body(response)
    } else {
        response
    }
}

/// A HEAD response carries no content (RFC 9110 §9.3.2). hyper drops it for HTTP/1 but would
/// send it as DATA frames over HTTP/2, so a body gatehouse wrote itself is dropped here,
/// its length kept in `Content-Length`. An upstream's answer to HEAD has no body already.
fn without_body(response: Response<Body>) -> Response<Body> {
    let (mut parts, body) = response.into_parts();
    match body {
        Either::Right(full) => {
            let length = http_body::Body::size_hint(&full).exact().unwrap_or(0);
            parts
                .headers
                .entry(http::header::CONTENT_LENGTH)
                .or_insert_with(|| HeaderValue::from(length));
            Response::from_parts(parts, Either::Right(Full::new(Bytes::new())))
        }
        upstream => Response::from_parts(parts, upstream),
    }
}

fn with_request_id(app: &App, mut response: Response<Body>, id: HeaderValue) -> Response<Body> {
    response
        .headers_mut()
        .insert(app.live.config.headers.request_id.clone(), id);
    response
}

/// What the pipeline made of one request.
struct Exchange {
    /// The series the request counts under: the rule that decided it (or the default), or
    /// the auth endpoint that served it.
    route: Route,
    /// The answer: the upstream's or an auth endpoint's response, or the refusal.
    result: Result<Response<Body>, Error>,
    /// The target as it arrived. It is taken off the request before the request is sent on,
    /// so the access log can still name the path without a copy.
    target: Uri,
    /// The verified token, once step 9 verified one: its subject is the access log's user.
    claims: Option<Arc<Claims>>,
    /// The user an auth endpoint served (it says so in a [`ServedUser`] extension).
    user: Option<String>,
    /// For a forward-auth request, the method of the request it described (or its own,
    /// when that could not be read): the decision is counted in its own series and logged
    /// as that request.
    forward: Option<Method>,
}

impl Exchange {
    fn new(
        route: Route,
        result: Result<Response<Body>, Error>,
        target: Uri,
        claims: Option<Arc<Claims>>,
    ) -> Exchange {
        Exchange {
            route,
            result,
            target,
            claims,
            user: None,
            forward: None,
        }
    }

    /// The exchange of a forward-auth request that described a `method` request.
    fn forward(mut self, method: Method) -> Exchange {
        self.forward = Some(method);
        self
    }
}

/// Steps 4–13 (see the module doc); steps 2, 3 and 14 are in [`handle`].
async fn gate(
    app: &Arc<App>,
    conn: ConnInfo,
    mut request: Request<Incoming>,
    request_id: &HeaderValue,
) -> Exchange {
    let config = &app.live.config;

    // 4, 5, 7, 8 (`decide.rs`, shared with `policy explain`): refusals, the normalised path
    // (decided on and forwarded), auth endpoints, the rule of the exact and case-folded
    // spellings. The target is taken off the request first, so the access log can still
    // name the path once the request has been sent on.
    let target = std::mem::take(request.uri_mut());
    // Forward-auth (`forward.rs`): a request an ingress describes, decided by the steps
    // below and answered instead of forwarded. Recognised on the raw path, so the original
    // path after `/forward/` is normalised on its own.
    if let Some(shape) = forward::addressed(config, &target) {
        // Only a listed ingress may describe a request: anyone else could ask about
        // requests of their choosing and set the address that rate limits see.
        let original =
            if client_ip::is_trusted(conn.peer.ip(), &config.forward_auth.trusted_proxies) {
                Original::read(shape, request.method(), &target, request.headers())
            } else {
                Err(Error::ForbiddenBecause(
                    "Forward-auth requests are accepted only from forward_auth.trusted_proxies",
                ))
            };
        return forward(app, conn, request, target, original).await;
    }
    let (path, decision) = match decide::route(config, Head::of(&request), &target) {
        Routing::Refused(error) => return Exchange::new(Route::DEFAULT, Err(error), target, None),
        Routing::Auth { path, route } => {
            // 6. Client address (`client_ip.rs`), as the trusted proxies report it: it keys
            //    rate limits and audit events.
            let client = client_ip(app, conn, &request);
            // The endpoints read the query (reset and verification links); a `Uri` clone
            // shares its bytes.
            *request.uri_mut() = target.clone();
            let caller = crate::auth::Caller {
                ip: client,
                request_id: crate::app::RequestId::new(request_id),
            };
            let mut result = crate::auth::handle(app, caller, request, &path).await;
            // The endpoint names the user it served (login, register, a bearer it verified)
            // for the access log.
            let user = match &mut result {
                Ok(response) => response.extensions_mut().remove::<ServedUser>(),
                Err(_) => None,
            };
            let mut exchange = Exchange::new(route, result, target, None);
            exchange.user = user.map(|u| u.0);
            return exchange;
        }
        Routing::Proxy { path, decision } => (path, decision),
    };

    // 9–11. Authenticate, authorise, rate-limit (see `admit`).
    let Admitted {
        route,
        claims,
        result,
    } = admit(app, &decision, request.headers(), || {
        client_ip(app, conn, &request)
    })
    .await;
    if let Err(error) = result {
        return Exchange::new(route, Err(error), target, claims);
    }
    let assertion = match assertion(app, claims.as_deref()) {
        Ok(assertion) => assertion,
        Err(error) => return Exchange::new(route, Err(error), target, claims),
    };

    // 12–13. Rewrite and forward (`proxy.rs`); splice a WebSocket upgrade (`websocket.rs`).
    let pass = Pass {
        target: &target,
        path: &path,
        claims: claims.as_deref(),
        assertion: assertion.as_ref(),
        peer: conn.peer,
        tls: conn.tls,
        request_id,
    };
    let result = relay(app).send(request, pass).await;
    Exchange::new(route, result, target, claims)
}

/// What steps 9–11 made of a policy-decided request.
struct Admitted {
    /// The rule the outcome came from, as a counter slot.
    route: Route,
    claims: Option<Arc<Claims>>,
    result: Result<(), Error>,
}

/// Steps 9–11, for a proxied request and a forward-auth decision alike.
///
/// 9–10. Authenticate (`guard.rs`) and authorise (`decide.rs`): a rule that denies everyone
/// answers before any token is read; a presented token must be good even where none is
/// required, so a forged or revoked token is never silently downgraded to anonymous; then
/// the stricter verdict of the spellings, and the verified-email requirement. The request
/// counts under the rule the outcome came from.
///
/// 6 and 11. The client address (`client_ip.rs`), worked out only now that it is needed,
/// keys the rate limits (`ratelimit.rs`).
async fn admit(
    app: &App,
    decision: &Decision,
    headers: &http::HeaderMap,
    client: impl FnOnce() -> std::net::IpAddr,
) -> Admitted {
    // Authenticated first, since a token of another issuer may wait for its keys (an
    // unknown `kid`); but not at all when a rule denies everyone, as `authorise` decides
    // such a request before any token is read.
    let authenticated = if decision.denial().is_some() {
        Ok(None)
    } else {
        authenticate_request(app, headers).await
    };
    let authorised = decide::authorise(&app.live.config, decision, || authenticated);
    let route = Route::rule(authorised.rule);
    let claims = authorised.claims;
    if let Err(error) = authorised.result {
        if matches!(error, Error::Token(TokenRefusal::Missing)) {
            app.metrics.auth_failure("missing");
        }
        return Admitted {
            route,
            claims,
            result: Err(error),
        };
    }
    let result = rate_limit(app, decision, client());
    Admitted {
        route,
        claims,
        result,
    }
}

/// Forward-auth: the request `original` describes goes through steps 4–11 exactly as a
/// proxied request would — refusals, normalisation, the auth prefix, the rule, the token,
/// revocation, rate limits keyed by the original client — and the answer is the refusal or
/// a 200 with the identity headers (`forward::allowed`), never a forwarded request.
async fn forward(
    app: &Arc<App>,
    conn: ConnInfo,
    mut request: Request<Incoming>,
    own_target: Uri,
    original: Result<Original, Error>,
) -> Exchange {
    let config = &app.live.config;
    let original = match original {
        Ok(original) => original,
        Err(error) => {
            let method = request.method().clone();
            return Exchange::new(Route::DEFAULT, Err(error), own_target, None).forward(method);
        }
    };
    // The check request stands in for the original: its method, and the host the client
    // addressed; its other headers (Authorization, overrides) are the client's already.
    *request.method_mut() = original.method;
    if let Some(host) = original.host {
        request.headers_mut().insert(http::header::HOST, host);
    }
    let method = request.method().clone();
    let target = original.target;
    let decision = match decide::route(config, Head::of(&request), &target) {
        Routing::Refused(error) => {
            return Exchange::new(Route::DEFAULT, Err(error), target, None).forward(method);
        }
        // gatehouse's own endpoints check their own credentials: the ingress may pass the
        // request on (to gatehouse), with no identity.
        Routing::Auth { route, .. } if forward::names_endpoint(config, &target, route) => {
            let allowed = forward::allowed(&config.headers, None, None).map(local);
            return Exchange::new(route, allowed, target, None).forward(method);
        }
        // Under the prefix, but no endpoint of gatehouse's as sent: the ingress is about to
        // route it to the app, so the policy decides it like any other path.
        Routing::Auth { path, .. } => config.policy.decide(&method, &path),
        Routing::Proxy { decision, .. } => decision,
    };
    // The original client, as the trusted-proxy walk finds it through the ingress.
    let chain = &config.forward_auth.chain;
    let Admitted {
        route,
        claims,
        result,
    } = admit(app, &decision, request.headers(), || {
        client_ip::client_ip(conn.peer.ip(), request.headers(), chain)
    })
    .await;
    let result = result
        .and_then(|()| assertion(app, claims.as_deref()))
        .and_then(|assertion| {
            forward::allowed(&config.headers, claims.as_deref(), assertion)
                .map(local)
                .inspect_err(|_| app.metrics.auth_failure("claims"))
        });
    Exchange::new(route, result, target, claims).forward(method)
}

/// The signed identity for the upstream or the ingress (`headers.assertion`,
/// `token::assertion`) of a verified caller: `None` when off or anonymous. Taken from the
/// cache while it has half its lifetime left; a signer failure is a 500.
fn assertion(app: &App, claims: Option<&Claims>) -> Result<Option<HeaderValue>, Error> {
    let (Some(assertions), Some(claims)) = (&app.live.assertions, claims) else {
        return Ok(None);
    };
    let (value, source) = assertions
        .for_claims(claims, app.clock.now())
        .map_err(Error::internal)?;
    app.metrics
        .assertion(source == crate::token::assertion::Source::Cached);
    Ok(Some(value))
}

/// The shared state's parts that forwarding borrows.
fn relay(app: &App) -> Relay<'_> {
    Relay {
        upstream: &app.upstream,
        config: &app.live.config,
        metrics: &app.metrics,
        host: app,
    }
}

/// A splice's connection slot, clock and drain signal come from the shared state.
impl crate::websocket::Host for App {
    fn connection_slot(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.connection_slots.clone().try_acquire_owned().ok()
    }

    fn now(&self) -> u64 {
        self.clock.now()
    }

    fn draining(&self) -> tokio::sync::watch::Receiver<bool> {
        crate::app::Core::draining(self)
    }
}

/// Step 6: the client address, as the trusted proxies report it.
fn client_ip<B>(app: &App, conn: ConnInfo, request: &Request<B>) -> std::net::IpAddr {
    let trusted = &app.live.config.server.trusted_proxies;
    client_ip::client_ip(conn.peer.ip(), request.headers(), trusted)
}

/// Step 11: the `proxy` class, then the limits of both spellings' rules, so a case variant
/// cannot dodge a route's limit.
fn rate_limit(app: &App, decision: &Decision, client: std::net::IpAddr) -> Result<(), Error> {
    if let Some(limiter) = &app.live.limits.proxy {
        check_rate(app, limiter, client, "proxy")?;
    }
    for i in decision.rules() {
        if let Some(limiter) = app.live.limits.routes.get(i).and_then(Option::as_ref) {
            check_rate(app, limiter, client, "route")?;
        }
    }
    Ok(())
}

/// What one `gatehouse::access` line says besides the response.
struct AccessLine<'a> {
    request_id: &'a HeaderValue,
    method: &'a Method,
    target: &'a Uri,
    route: Route,
    user: Option<&'a str>,
    elapsed: Duration,
    peer: SocketAddr,
    /// A forward-auth decision: method and path are the original request's.
    forward_auth: bool,
}

impl AccessLine<'_> {
    /// Logs the line. The path is the normalised one (the one decided on), or the path as
    /// sent when it was refused before it could be normalised; the query string never
    /// appears, as reset and verification tokens travel in it. `bytes` is the response
    /// body's length when it is known up front (Content-Length, or a body gatehouse wrote).
    fn emit(&self, app: &App, response: &Response<Body>) {
        let raw = self.target.path();
        // Normalising again is a scan, paid only with access logging on; carrying the
        // normalised path over from step 5 would cost a copy on every request.
        let path = path::normalize(raw).unwrap_or(std::borrow::Cow::Borrowed(raw));
        let bytes = http_body::Body::size_hint(response.body()).exact();
        tracing::info!(
            target: "gatehouse::access",
            request_id = self.request_id.to_str().unwrap_or_default(),
            method = %self.method,
            path = &*path,
            status = response.status().as_u16(),
            route = app.live.routes.label(self.route),
            user = self.user.unwrap_or_default(),
            micros = u64::try_from(self.elapsed.as_micros()).unwrap_or(u64::MAX),
            bytes,
            peer = %self.peer,
            forward_auth = self.forward_auth,
        );
    }
}
