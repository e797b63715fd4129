//! Forwarding a request the gate let through.
//!
//! [`Relay::send`] is steps 12–13 of the pipeline (ARCHITECTURE.md): it takes a request the
//! gate let through, rewrites it, forwards it through [`crate::upstream`] with its body
//! streaming, and hands back the upstream's response with its headers rewritten, splicing a
//! WebSocket upgrade on the way ([`crate::websocket`]). It owns the header rewriting both
//! ways:
//!
//! * request: hop-by-hop headers go (those RFC 9110 §7.6.1 names and any listed in
//!   `Connection`), identity headers a client tried to send go (the configured names, anything
//!   under the configured prefix, in any case and in `_` spelling, because some upstream
//!   frameworks fold `_` into `-`), forwarding headers from untrusted peers go, and then
//!   gatehouse sets its own: identity from the verified claims (and the signed assertion the
//!   gate minted from them, with `headers.assertion`), `X-Forwarded-For/Proto/Host`, the
//!   request id;
//! * response: hop-by-hop headers go, the request id is added.
//!
//! Bodies are never buffered: the client's body streams to the upstream (capped by
//! `server.max_body_bytes`, see [`UpstreamBody`]) and the upstream's streams back.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Uri};
use hyper::body::Incoming;

use crate::client_ip;
use crate::config::{Config, HeadersConfig};
use crate::error::Error;
use crate::hygiene::header_name_matches;
use crate::metrics::Metrics;
use crate::response::Body;
use crate::token::Claims;
use crate::upstream::{ForwardError, Upstream, UpstreamBody};
use crate::websocket::{self, Handshake};

/// Headers that describe one connection and never cross a proxy (RFC 9110 §7.6.1), plus the
/// non-standard ones that behave like them.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Forwarding headers a client could use to lie about where it is; believed only from a
/// trusted proxy and otherwise replaced or removed.
const FORWARDING: [&str; 6] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-real-ip",
    "forwarded",
];

/// Headers no client may send upstream at all, in any case or `_` spelling: other proxies'
/// client-address headers that gatehouse does not maintain (an upstream might believe them),
/// and URL and method overrides set by other proxies and ingresses (IIS, older Symfony,
/// nginx `auth_request` set-ups, Traefik, Envoy), which make an upstream act on another path
/// or method than the one the policy decided on.
const NEVER_FORWARDED: [&str; 18] = [
    "true-client-ip",
    "x-real-ip",
    "x-client-ip",
    "cf-connecting-ip",
    "x-cluster-client-ip",
    "x-forwarded-scheme",
    "x-forwarded-ssl",
    "x-forwarded-prefix",
    "x-original-url",
    "x-original-uri",
    "x-original-host",
    "x-original-method",
    "x-rewrite-url",
    "x-forwarded-uri",
    "x-forwarded-path",
    "x-envoy-original-path",
    "request-uri",
    "forwarded",
];

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The identity gatehouse vouches for, taken from verified claims.
pub struct Identity<'a> {
    pub user_id: &'a str,
    pub email: &'a str,
    pub roles: &'a [String],
    pub session_id: &'a str,
    /// The signed identity (`headers.assertion`), when configured.
    pub assertion: Option<&'a HeaderValue>,
}

/// What the gate knows about the connection, for the forwarding headers.
pub struct Forwarding<'a> {
    /// The `X-Forwarded-For` value to send: the believed chain ending with the peer
    /// ([`crate::client_ip::forwarded_for_header`]).
    pub forwarded_for: HeaderValue,
    /// The socket peer is a trusted proxy: its X-Forwarded-* values are kept.
    pub peer_trusted: bool,
    pub tls: bool,
    pub request_id: &'a HeaderValue,
}

/// What relaying borrows from the shared state. The shared state owns the [`Upstream`], so
/// this module cannot name it; the gate lends the parts.
pub struct Relay<'a> {
    pub upstream: &'a Upstream,
    pub config: &'a Config,
    pub metrics: &'a Metrics,
    /// For the splice of an accepted WebSocket upgrade.
    pub host: &'a dyn websocket::Host,
}

/// What the gate hands over with a request it let through.
pub struct Pass<'a> {
    /// The target as the client sent it (the gate took it off the request): its query is
    /// forwarded as is, and its authority is the host an HTTP/2 client addressed.
    pub target: &'a Uri,
    /// The normalised path: the one the policy decided on, and so the one sent.
    pub path: &'a str,
    /// The verified token, the only source of identity headers; `None` for an anonymous
    /// caller of a public route.
    pub claims: Option<&'a Claims>,
    /// The signed identity for `headers.assertion`, minted by the gate from `claims`; `None`
    /// when off or anonymous.
    pub assertion: Option<&'a HeaderValue>,
    /// The socket peer, and whether it came over TLS.
    pub peer: std::net::SocketAddr,
    pub tls: bool,
    pub request_id: &'a HeaderValue,
}

impl Relay<'_> {
    /// Forwards a request the gate let through and returns the upstream's response for the
    /// client (steps 12 and 13). Upstream failures are counted here by kind; a client body
    /// that breaks while streaming is the client's error (400/413), never an upstream one.
    pub async fn send(
        &self,
        mut request: Request<Incoming>,
        pass: Pass<'_>,
    ) -> Result<Response<Body>, Error> {
        let config = self.config;
        // A declared length over the cap is refused before anything is sent; a body without
        // one is cut off while it streams (`UpstreamBody`).
        if declared_length(request.headers()).is_some_and(|len| len > config.server.max_body_bytes)
        {
            return Err(Error::PayloadTooLarge);
        }
        let upstream_uri = self.upstream.uri_for(pass.target, pass.path)?;
        let original_host = original_host(&request, pass.target);
        let handshake = Handshake::take(&mut request);
        let (mut parts, body) = request.into_parts();
        parts.uri = upstream_uri;
        parts.version = http::Version::HTTP_11;
        let trusted = &config.server.trusted_proxies;
        let peer = pass.peer.ip();
        let identity = pass.claims.map(|c| Identity {
            user_id: &c.sub,
            email: &c.email,
            roles: &c.roles,
            session_id: &c.sid,
            assertion: pass.assertion,
        });
        let forwarding = Forwarding {
            forwarded_for: client_ip::forwarded_for_header(peer, &parts.headers, trusted),
            peer_trusted: !trusted.is_empty() && client_ip::is_trusted(peer, trusted),
            tls: pass.tls,
            request_id: pass.request_id,
        };
        rewrite_request(
            &mut parts.headers,
            &config.headers,
            identity.as_ref(),
            &forwarding,
            original_host,
        );
        if handshake.is_some() {
            websocket::restore_handshake_headers(&mut parts.headers);
        }
        parts
            .headers
            .insert(header::HOST, self.upstream.host().clone());

        let body = UpstreamBody::new(
            body,
            config.server.max_body_bytes,
            config.server.body_idle_timeout,
        );
        let started = tokio::time::Instant::now();
        let mut response = self
            .upstream
            .forward(Request::from_parts(parts, body))
            .await
            .map_err(|e| {
                if !matches!(e, ForwardError::Body(_)) {
                    self.metrics.upstream_error(e.kind());
                }
                e.into_error()
            })?;
        self.metrics
            .record_upstream(started.elapsed().as_secs_f64());

        let expires_at = pass.claims.map(|c| c.exp);
        let switched = websocket::switch(
            self.host,
            handshake,
            &mut response,
            pass.request_id,
            expires_at,
        )?;
        let (mut parts, body) = response.into_parts();
        rewrite_response(&mut parts.headers, &config.headers, pass.request_id);
        if switched {
            websocket::restore_handshake_headers(&mut parts.headers);
        }
        Ok(Response::from_parts(
            parts,
            http_body_util::Either::Left(body),
        ))
    }
}

/// The request's `Content-Length`, when it has a readable one.
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// The host the client addressed, for `X-Forwarded-Host`: `:authority` for HTTP/2, `Host`
/// for HTTP/1 (the gate has already refused an absolute-form target whose authority
/// disagrees with `Host`, and an HTTP/2 `host` that disagrees with `:authority`).
fn original_host<B>(request: &Request<B>, target: &Uri) -> Option<HeaderValue> {
    let authority = target
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
    let host = || request.headers().get(header::HOST).cloned();
    if request.version() == http::Version::HTTP_2 {
        authority.or_else(host)
    } else {
        host().or(authority)
    }
}

/// Whether a header name is spelled only with letters, digits, `-` and `_`. Any other
/// punctuation (`.`, `~`, `'`, …) is legal in HTTP but turns into `_` in CGI-style
/// upstreams, where it could pose as another header; such headers are never forwarded, as
/// nginx drops them by default (`ignore_invalid_headers`).
fn is_plain_name(name: &str) -> bool {
    name.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// True when a client-sent header claims to be identity and must be removed.
fn is_identity_header(name: &HeaderName, rules: &HeadersConfig) -> bool {
    let name = name.as_str();
    (!rules.strip_prefix.is_empty() && header_name_matches(name, &rules.strip_prefix, false))
        || header_name_matches(name, rules.user_id.as_str(), true)
        || header_name_matches(name, rules.email.as_str(), true)
        || header_name_matches(name, rules.roles.as_str(), true)
        || [&rules.session_id, &rules.assertion]
            .into_iter()
            .flatten()
            .any(|h| header_name_matches(name, h.as_str(), true))
}

/// Removes hop-by-hop headers, including those the `Connection` header nominates.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        // Collected first because the map cannot be changed while its values are borrowed;
        // only requests that carry a Connection header pay for it.
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
}

/// Rewrites a client's request headers for the upstream. See the module doc for the order.
pub fn rewrite_request(
    headers: &mut HeaderMap,
    rules: &HeadersConfig,
    identity: Option<&Identity<'_>>,
    fwd: &Forwarding<'_>,
    original_host: Option<HeaderValue>,
) {
    remove_hop_by_hop(headers);

    // Scan once; the common request carries nothing to strip and allocates nothing.
    let listed =
        |name: &str, list: &[&str]| list.iter().any(|p| header_name_matches(name, p, true));
    let strip = |name: &HeaderName| {
        let n = name.as_str();
        !is_plain_name(n)
            || is_identity_header(name, rules)
            // A trusted proxy sends the standard spelling; an `_` one is a client's, passed
            // along, and WSGI/CGI upstreams would read it as the real header.
            || ((!fwd.peer_trusted || n.contains('_')) && listed(n, &FORWARDING))
            || listed(n, &NEVER_FORWARDED)
            || (!rules.forward_authorization && name == header::AUTHORIZATION)
            || name == header::HOST
    };
    if headers.keys().any(strip) {
        let doomed: Vec<HeaderName> = headers.keys().filter(|n| strip(n)).cloned().collect();
        for name in doomed {
            headers.remove(name);
        }
    }

    if let Some(id) = identity {
        if let Ok(v) = HeaderValue::from_str(id.user_id) {
            headers.insert(rules.user_id.clone(), v);
        }
        if let Ok(v) = HeaderValue::from_str(id.email) {
            headers.insert(rules.email.clone(), v);
        }
        // The joined string becomes the value's storage, with no second copy.
        if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(id.roles.join(","))) {
            headers.insert(rules.roles.clone(), v);
        }
        if let Some(name) = &rules.session_id
            && let Ok(v) = HeaderValue::from_str(id.session_id)
        {
            headers.insert(name.clone(), v);
        }
        if let (Some(name), Some(value)) = (&rules.assertion, id.assertion) {
            headers.insert(name.clone(), value.clone());
        }
    }

    // X-Forwarded-For: the chain gatehouse believes (see `client_ip`); a client's own value
    // was removed above unless the peer is a trusted proxy, and is replaced either way.
    headers.insert(X_FORWARDED_FOR.clone(), fwd.forwarded_for.clone());
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(
            X_FORWARDED_PROTO.clone(),
            HeaderValue::from_static(if fwd.tls { "https" } else { "http" }),
        );
    }
    if !headers.contains_key(&X_FORWARDED_HOST)
        && let Some(host) = original_host
    {
        headers.insert(X_FORWARDED_HOST.clone(), host);
    }
    headers.insert(rules.request_id.clone(), fwd.request_id.clone());
}

/// Rewrites the upstream's response headers for the client.
pub fn rewrite_response(headers: &mut HeaderMap, rules: &HeadersConfig, request_id: &HeaderValue) {
    remove_hop_by_hop(headers);
    headers.insert(rules.request_id.clone(), request_id.clone());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> HeadersConfig {
        let config = crate::config::Config::from_toml(
            "[upstream]\nurl = \"http://127.0.0.1:1\"\n[tokens]\nsecret = \"0123456789abcdef0123456789abcdef\"\n",
            Vec::new(),
        )
        .unwrap();
        config.headers
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    fn rewrite(pairs: &[(&str, &str)], trusted: bool, identity: bool) -> HeaderMap {
        let mut map = headers(pairs);
        let rid = HeaderValue::from_static("rid-1");
        let roles = vec!["reader".to_string(), "creator".to_string()];
        let id = Identity {
            user_id: "u1",
            email: "a@example.com",
            roles: &roles,
            session_id: "s1",
            assertion: None,
        };
        let fwd = Forwarding {
            forwarded_for: HeaderValue::from_static(if trusted {
                "1.2.3.4, 10.0.0.1"
            } else {
                "203.0.113.9"
            }),
            peer_trusted: trusted,
            tls: false,
            request_id: &rid,
        };
        let host = map.get(header::HOST).cloned();
        rewrite_request(&mut map, &rules(), identity.then_some(&id), &fwd, host);
        map
    }

    #[test]
    fn spoofed_identity_headers_are_removed_in_every_spelling() {
        let map = rewrite(
            &[
                ("x-auth-user-id", "admin"),
                ("X-AUTH-ROLES", "admin"),
                ("x_auth_email", "boss@example.com"),
                ("x-auth-anything", "1"),
                ("x_auth_other", "1"),
                ("x.auth.user.id", "1"),
                ("X.Auth.Roles", "admin"),
                ("x~auth~session~id", "s"),
                ("x-authx", "kept"),
                ("x_app_flag", "kept"),
                ("x.original.url", "/admin"),
                ("x-app.version", "dropped"),
            ],
            false,
            false,
        );
        for gone in [
            "x-auth-user-id",
            "x-auth-roles",
            "x_auth_email",
            "x-auth-anything",
            "x_auth_other",
            "x.auth.user.id",
            "x.auth.roles",
            "x~auth~session~id",
            "x.original.url",
            "x-app.version",
        ] {
            assert!(!map.contains_key(gone), "{gone} survived: {map:?}");
        }
        assert_eq!(map["x-authx"], "kept");
        assert_eq!(map["x_app_flag"], "kept");
    }

    #[test]
    fn identity_comes_from_the_claims_only() {
        let map = rewrite(&[("x-auth-user-id", "admin")], false, true);
        assert_eq!(map.get_all("x-auth-user-id").iter().count(), 1);
        assert_eq!(map["x-auth-user-id"], "u1");
        assert_eq!(map["x-auth-roles"], "reader,creator");
        assert_eq!(map["x-auth-email"], "a@example.com");
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let map = rewrite(
            &[
                ("connection", "keep-alive, x-secret-hop"),
                ("x-secret-hop", "1"),
                ("keep-alive", "timeout=5"),
                ("te", "trailers"),
                ("proxy-authorization", "Basic x"),
                ("upgrade", "h2c"),
                ("x-app", "kept"),
            ],
            false,
            false,
        );
        for gone in [
            "connection",
            "x-secret-hop",
            "keep-alive",
            "te",
            "proxy-authorization",
            "upgrade",
        ] {
            assert!(!map.contains_key(gone), "{gone} survived");
        }
        assert_eq!(map["x-app"], "kept");
    }

    #[test]
    fn url_and_method_overrides_never_reach_the_upstream_in_any_spelling() {
        let names = [
            "x-original-url",
            "X-Original-URI",
            "x_original_uri",
            "X-Forwarded-Uri",
            "x_forwarded_uri",
            "X-Forwarded-Path",
            "X-Envoy-Original-Path",
            "x_envoy_original_path",
            "Request-Uri",
            "request_uri",
            "X-Original-Method",
            "X_Original_Method",
            "X-Rewrite-URL",
            "X-Original-Host",
            "X-Forwarded-Prefix",
            "True-Client-IP",
            "true_client_ip",
            "X-Real-IP",
            "x_real_ip",
            "Forwarded",
        ];
        for trusted in [false, true] {
            let pairs: Vec<(&str, &str)> = names.iter().map(|&n| (n, "/admin")).collect();
            let map = rewrite(&pairs, trusted, false);
            for name in names {
                assert!(
                    !map.contains_key(name.to_ascii_lowercase().as_str()),
                    "{name} survived (trusted peer: {trusted})"
                );
            }
        }
    }

    #[test]
    fn underscore_forwarding_headers_are_never_believed() {
        let spoof = [
            ("x_forwarded_for", "1.2.3.4"),
            ("X_Forwarded_Proto", "https"),
            ("x_forwarded_host", "evil.example"),
            ("host", "app.example.com"),
        ];
        for trusted in [false, true] {
            let map = rewrite(&spoof, trusted, false);
            for name in ["x_forwarded_for", "x_forwarded_proto", "x_forwarded_host"] {
                assert!(
                    !map.contains_key(name),
                    "{name} survived (trusted: {trusted})"
                );
            }
            assert_eq!(map["x-forwarded-host"], "app.example.com");
        }
    }

    #[test]
    fn forwarding_headers_are_believed_only_from_trusted_peers() {
        let spoof = [
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
            ("x-real-ip", "1.2.3.4"),
            ("host", "app.example.com"),
        ];
        let untrusted = rewrite(&spoof, false, false);
        assert_eq!(untrusted["x-forwarded-for"], "203.0.113.9");
        assert_eq!(untrusted["x-forwarded-proto"], "http");
        assert_eq!(untrusted["x-forwarded-host"], "app.example.com");
        assert!(!untrusted.contains_key("x-real-ip"));
        assert!(!untrusted.contains_key("host"));
        let trusted = rewrite(&spoof, true, false);
        assert_eq!(trusted["x-forwarded-for"], "1.2.3.4, 10.0.0.1");
        assert_eq!(trusted["x-forwarded-proto"], "https");
    }

    #[test]
    fn authorization_is_not_forwarded_by_default() {
        let map = rewrite(&[("authorization", "Bearer x")], false, true);
        assert!(!map.contains_key("authorization"));
        assert_eq!(map["x-request-id"], "rid-1");
    }
}
