//! Forward-auth (API.md §10): `{prefix}/forward` decides a request that an ingress (nginx
//! `auth_request`, Traefik `ForwardAuth`, Envoy `ext_authz`, Caddy `forward_auth`) describes
//! in headers, and answers 200 with the identity headers or the proxy path's refusal.
//!
//! This module is pure: it recognises a forward-auth request, reads the original request
//! out of it ([`Original::read`]) and writes the 200 ([`allowed`]). The gate does the rest
//! with the proxy path's own steps (`gate::forward`): the peer check against
//! `forward_auth.trusted_proxies`, then [`crate::decide`] on the original method, target and
//! host, the bearer token, revocation and rate limits exactly as for a proxied request.
//!
//! Decisions, and why:
//!
//! - **Recognised on the raw path, before normalisation.** Envoy's `path_prefix` puts the
//!   original path after `{prefix}/forward` as the client sent it, dot segments and all:
//!   normalising the whole would turn `{prefix}/forward/../admin` into a request for the
//!   admin API. So `{prefix}/forward` followed by nothing or by `/` is forward-auth, and the
//!   rest is the original target, normalised on its own like any proxied path. Every other
//!   spelling (`{prefix}//forward`, `%66orward`) is an ordinary auth path, and unknown (404).
//! - **One description of the request, or 400.** The original target comes from
//!   `X-Forwarded-Uri` or `X-Original-URI` (or the path after `/forward`), the method from
//!   `X-Forwarded-Method` or `X-Original-Method`. A header sent twice, two names that
//!   disagree, or a header that disagrees with the path after `/forward` is refused: deciding
//!   on one value while the ingress routes on another is how auth is bypassed. A missing
//!   target is 400, never a decision about `/`; a missing method is 400 too, except after
//!   `/forward/`, where Envoy sends the check with the original method itself, and where a
//!   method header that disagrees with it is refused (Envoy passes the client's headers
//!   that its `allowed_headers` name, and forwards its own method).
//! - **No dot segments.** gatehouse's own proxy forwards the normalised path it decided on;
//!   an ingress forwards the path as the client sent it. `/api/admin/../../public/x` would
//!   be decided as `/public/x` and routed by an app that does not resolve dot segments as
//!   the admin API, so a `.` or `..` segment (plain or `%2e`) is 400, never resolved.
//!   `//` and encoded letters stay: the normalised reading they are decided as is the
//!   stricter one.
//! - **The target is origin-form (`/path?query`) or absolute-form for http(s).** Its query
//!   takes part only as on the proxy path (method-override parameters are refused), and is
//!   never logged. An absolute-form target must name the host of `X-Forwarded-Host`, as the
//!   proxy path refuses one naming another host.
//! - **The request's own headers are the original's.** Every ingress above passes the
//!   client's headers (or the ones it was told to) on the check, so `Authorization` and the
//!   method-override headers are read from it as the proxy path reads them from the client.
//! - **Every identity header, always.** An anonymous caller on a public route gets them
//!   empty: an ingress that copies them then overwrites (or, for nginx, removes) whatever the
//!   client sent under those names.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode, Uri};
use http_body_util::Full;

use crate::config::{Config, HeadersConfig};
use crate::error::Error;
use crate::token::Claims;

/// The endpoint's path under `auth.prefix`. Not renamable: ingress configs name it.
pub const PATH: &str = crate::config::FORWARD_AUTH_PATH;

const X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
const X_ORIGINAL_METHOD: HeaderName = HeaderName::from_static("x-original-method");
const X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
const X_ORIGINAL_URI: HeaderName = HeaderName::from_static("x-original-uri");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// How a forward-auth request names its original target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape<'t> {
    /// `{prefix}/forward`: the target is in `X-Forwarded-Uri` or `X-Original-URI`.
    Headers,
    /// `{prefix}/forward/<original path>` (Envoy's `path_prefix`): the original path as
    /// sent, starting with `/`; the query is the request's own.
    Suffix(&'t str),
}

/// Whether `target` is a forward-auth request, judged on its raw path (see the module doc),
/// and how it names the original. `None` when forward-auth is off: the path is then an
/// unknown auth path like any other (404).
pub fn addressed<'t>(config: &Config, target: &'t Uri) -> Option<Shape<'t>> {
    if !config.forward_auth.enabled {
        return None;
    }
    let rest = target
        .path()
        .strip_prefix(config.auth.prefix.as_str())?
        .strip_prefix(PATH)?;
    match rest {
        "" => Some(Shape::Headers),
        suffix if suffix.starts_with('/') => Some(Shape::Suffix(suffix)),
        _ => None,
    }
}

/// Whether an original target under `auth.prefix` (its auth `route` as `decide::route`
/// found it) names one of gatehouse's own endpoints *as sent*, and may so be allowed with
/// no identity: those endpoints check their own credentials. An ingress routes
/// `{prefix}/…` to gatehouse without asking; what it asks about it routes to the app. So a
/// path that names no endpoint (`{prefix}`, `{prefix}/nope`, the forward-auth endpoint
/// itself, which Traefik's router leaves to the app's), or that reaches the prefix only once
/// normalised (`/%61uth/login`, `//auth/login`, which an ingress may route elsewhere), is
/// the app's path, for the policy to decide.
pub fn names_endpoint(config: &Config, target: &Uri, route: crate::metrics::Route) -> bool {
    let as_sent = target
        .path()
        .strip_prefix(config.auth.prefix.as_str())
        .is_some_and(|rest| rest.starts_with('/'));
    as_sent && route != crate::metrics::Route::AUTH_OTHER
}

/// The request an ingress asks about.
#[derive(Debug)]
pub struct Original {
    pub method: Method,
    /// Origin-form or absolute-form; decided like a proxied request's target.
    pub target: Uri,
    /// `X-Forwarded-Host`, which stands in for the original's `Host`.
    pub host: Option<HeaderValue>,
}

impl Original {
    /// Reads the original request from a forward-auth request's method, query and headers.
    /// Every way the description can be ambiguous or malformed is a 400 that says which
    /// header is at fault.
    pub fn read(
        shape: Shape<'_>,
        own_method: &Method,
        own_target: &Uri,
        headers: &HeaderMap,
    ) -> Result<Original, Error> {
        let method_header = agreed(
            headers,
            &X_FORWARDED_METHOD,
            &X_ORIGINAL_METHOD,
            "X-Forwarded-Method and X-Original-Method",
        )?;
        let uri_header = agreed(
            headers,
            &X_FORWARDED_URI,
            &X_ORIGINAL_URI,
            "X-Forwarded-Uri and X-Original-URI",
        )?;
        let method = match (method_header, shape) {
            // Envoy's check carries the original method as its own, and passes the
            // client's headers its `allowed_headers` name: a method header that says
            // otherwise is the client's, describing a request other than the one Envoy
            // forwards.
            (Some(value), Shape::Suffix(_))
                if value.as_bytes() != own_method.as_str().as_bytes() =>
            {
                return Err(invalid(
                    "X-Forwarded-Method (or X-Original-Method) disagrees with the method of the request after /forward.",
                ));
            }
            (Some(value), _) => Method::from_bytes(value.as_bytes()).map_err(|_| {
                invalid("X-Forwarded-Method (or X-Original-Method) is not an HTTP method.")
            })?,
            (None, Shape::Suffix(_)) => own_method.clone(),
            (None, Shape::Headers) => {
                return Err(invalid(
                    "The original method is missing: send X-Forwarded-Method (or X-Original-Method).",
                ));
            }
        };
        let target = match shape {
            Shape::Headers => {
                let value = uri_header.ok_or_else(|| {
                    invalid(
                        "The original URI is missing: send X-Forwarded-Uri (or X-Original-URI), \
                         or put the path after /forward.",
                    )
                })?;
                parse_target(value.as_bytes())?
            }
            Shape::Suffix(path) => {
                let text = match own_target.query() {
                    Some(query) => format!("{path}?{query}"),
                    None => path.to_string(),
                };
                if uri_header.is_some_and(|v| v.as_bytes() != text.as_bytes()) {
                    return Err(invalid(
                        "X-Forwarded-Uri (or X-Original-URI) disagrees with the path after /forward.",
                    ));
                }
                parse_target(text.as_bytes())?
            }
        };
        let host = single(headers, &X_FORWARDED_HOST, "X-Forwarded-Host")?.cloned();
        if let Some(proto) = single(headers, &X_FORWARDED_PROTO, "X-Forwarded-Proto")?
            && !(proto.as_bytes().eq_ignore_ascii_case(b"http")
                || proto.as_bytes().eq_ignore_ascii_case(b"https"))
        {
            return Err(invalid("X-Forwarded-Proto must be http or https."));
        }
        Ok(Original {
            method,
            target,
            host,
        })
    }
}

/// The value of a header that must come at most once; `None` when absent.
fn single<'h>(
    headers: &'h HeaderMap,
    name: &HeaderName,
    shown: &str,
) -> Result<Option<&'h HeaderValue>, Error> {
    let mut values = headers.get_all(name).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(Error::InvalidRequest(
            format!("{shown} was sent more than once.").into(),
        ));
    }
    Ok(first)
}

/// The value of either of two names for one thing, each at most once, equal when both come.
fn agreed<'h>(
    headers: &'h HeaderMap,
    name: &HeaderName,
    alias: &HeaderName,
    shown: &str,
) -> Result<Option<&'h HeaderValue>, Error> {
    let repeated = || Error::InvalidRequest(format!("{shown} must each come at most once.").into());
    let one = single(headers, name, "").map_err(|_| repeated())?;
    let other = single(headers, alias, "").map_err(|_| repeated())?;
    match (one, other) {
        (Some(a), Some(b)) if a != b => {
            Err(Error::InvalidRequest(format!("{shown} disagree.").into()))
        }
        (a, b) => Ok(a.or(b)),
    }
}

/// The original target: origin-form (`/path?query`), or absolute-form with an http(s)
/// scheme. Authority-form and `*` name no path to decide on.
fn parse_target(bytes: &[u8]) -> Result<Uri, Error> {
    let not_a_target =
        || invalid("The original URI must be a path like /api/items?page=2 or an http(s) URL.");
    let uri = Uri::try_from(bytes).map_err(|_| not_a_target())?;
    let origin_form = bytes.first() == Some(&b'/') && uri.scheme().is_none();
    let absolute_form = matches!(uri.scheme_str(), Some("http" | "https"))
        && uri.authority().is_some()
        && (uri.path().is_empty() || uri.path().starts_with('/'));
    if !(origin_form || absolute_form) {
        return Err(not_a_target());
    }
    if has_dot_segment(uri.path()) {
        return Err(invalid(
            "The original path has a dot segment (. or .., plain or encoded): the ingress \
             forwards it as sent, so the app could route it as another path than the one \
             decided on. Resolve it at the ingress or in the client.",
        ));
    }
    Ok(uri)
}

/// Whether a raw path has a `.` or `..` segment, plain or percent-encoded (`%2e`, any case).
/// gatehouse's own proxy forwards the normalised path it decided on; an ingress forwards
/// the path as the client sent it (nginx's `proxy_pass` without a URI, Caddy's
/// `reverse_proxy`), to apps of which many route on it without resolving dot segments. A
/// path with one would be decided as where it resolves (`/api/admin/../../public/x` as
/// `/public/x`) and served as what it starts with. Empty segments (`//`) and encoded
/// letters only ever make the decided path the stricter reading, so they are decided on as
/// normalised.
fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|segment| {
        let mut rest = segment.as_bytes();
        let mut dots = 0;
        while !rest.is_empty() {
            match rest {
                [b'.', tail @ ..] => rest = tail,
                [b'%', b'2', b'e' | b'E', tail @ ..] => rest = tail,
                _ => return false,
            }
            dots += 1;
        }
        matches!(dots, 1 | 2)
    })
}

fn invalid(message: &'static str) -> Error {
    Error::InvalidRequest(message.into())
}

/// The 200 an ingress lets the request through on: no body, and every identity header —
/// the verified caller's, or empty for an anonymous one, so an ingress that copies them
/// overwrites whatever the client sent under those names. A verified claim that cannot be
/// a header value (a control character in `sub` or `email`) is refused as an invalid token:
/// sent empty, it would pass the caller on as nobody, and left out, leave the client's own
/// value standing at ingresses that copy only what they get.
///
/// With `headers.assertion`, the signed identity goes along under its name (empty for an
/// anonymous caller, for the same reason), for ingresses to copy to the app like the rest.
pub fn allowed(
    rules: &HeadersConfig,
    claims: Option<&Claims>,
    assertion: Option<HeaderValue>,
) -> Result<Response<Full<Bytes>>, Error> {
    let value = |text: Option<&str>| match text {
        None => Ok(HeaderValue::from_static("")),
        Some(t) => HeaderValue::from_str(t)
            .map_err(|_| Error::Token(crate::error::TokenRefusal::Invalid("claims"))),
    };
    let roles = claims.map(|c| c.roles.join(","));
    let mut identity = vec![
        (
            rules.user_id.clone(),
            value(claims.map(|c| c.sub.as_str()))?,
        ),
        (
            rules.email.clone(),
            value(claims.map(|c| c.email.as_str()))?,
        ),
        (rules.roles.clone(), value(roles.as_deref())?),
    ];
    if let Some(name) = &rules.session_id {
        identity.push((name.clone(), value(claims.map(|c| c.sid.as_str()))?));
    }
    if let Some(name) = &rules.assertion {
        let assertion = assertion.unwrap_or_else(|| HeaderValue::from_static(""));
        identity.push((name.clone(), assertion));
    }
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    for (name, value) in identity {
        headers.insert(name, value);
    }
    // The answer is about one caller's one request: no cache may keep it.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// The 400's message for a description sent to `{prefix}/forward`, or what was read.
    fn refusal(pairs: &[(&str, &str)]) -> String {
        read(Shape::Headers, "/auth/forward", pairs)
            .map(|o| format!("accepted: {o:?}"))
            .unwrap_or_else(|e| e)
    }

    fn read(shape: Shape<'_>, target: &str, pairs: &[(&str, &str)]) -> Result<Original, String> {
        let own: Uri = target.parse().unwrap();
        Original::read(shape, &Method::GET, &own, &headers(pairs)).map_err(|e| match e {
            Error::InvalidRequest(m) => m.into_owned(),
            other => panic!("not a 400: {other:?}"),
        })
    }

    #[test]
    fn the_original_comes_from_either_spelling_of_each_header() {
        for (method, uri) in [
            ("x-forwarded-method", "x-forwarded-uri"),
            ("x-original-method", "x-original-uri"),
        ] {
            let o = read(
                Shape::Headers,
                "/auth/forward",
                &[
                    (method, "DELETE"),
                    (uri, "/api/items/7?token=abc"),
                    ("x-forwarded-host", "app.example.com"),
                    ("x-forwarded-proto", "https"),
                ],
            )
            .unwrap();
            assert_eq!(o.method, Method::DELETE);
            assert_eq!(o.target.path(), "/api/items/7");
            assert_eq!(o.target.query(), Some("token=abc"));
            assert_eq!(o.host.unwrap(), "app.example.com");
        }
    }

    #[test]
    fn the_path_after_forward_is_the_original_with_the_own_query_and_method() {
        let own: Uri = "/auth/forward/api//admin?x=1".parse().unwrap();
        let o = Original::read(
            Shape::Suffix("/api//admin"),
            &Method::PUT,
            &own,
            &HeaderMap::new(),
        )
        .unwrap();
        assert_eq!(o.method, Method::PUT);
        assert_eq!(o.target, "/api//admin?x=1");
        // An agreeing header is fine; a disagreeing one is refused.
        assert!(
            read(
                Shape::Suffix("/a"),
                "/auth/forward/a",
                &[("x-forwarded-uri", "/a")]
            )
            .is_ok()
        );
        let e = read(
            Shape::Suffix("/a"),
            "/auth/forward/a",
            &[("x-forwarded-uri", "/public/a")],
        )
        .unwrap_err();
        assert!(e.contains("disagrees"), "{e}");
        // So with the method: the check's own (GET here) is the original's.
        for name in ["x-forwarded-method", "x-original-method"] {
            let e = read(Shape::Suffix("/a"), "/auth/forward/a", &[(name, "DELETE")]).unwrap_err();
            assert!(e.contains("disagrees"), "{name}: {e}");
            assert!(read(Shape::Suffix("/a"), "/auth/forward/a", &[(name, "GET")]).is_ok());
        }
    }

    #[test]
    fn ambiguous_or_missing_descriptions_are_refused() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("x-forwarded-method", "GET")], "URI is missing"),
            (&[("x-forwarded-uri", "/a")], "method is missing"),
            (
                &[
                    ("x-forwarded-method", "GET"),
                    ("x-forwarded-uri", "/public/a"),
                    ("x-forwarded-uri", "/admin"),
                ],
                "at most once",
            ),
            (
                &[
                    ("x-forwarded-method", "GET"),
                    ("x-forwarded-uri", "/public/a"),
                    ("x-original-uri", "/admin"),
                ],
                "disagree",
            ),
            (
                &[
                    ("x-forwarded-method", "GET"),
                    ("x-original-method", "DELETE"),
                    ("x-forwarded-uri", "/a"),
                ],
                "disagree",
            ),
            (
                &[("x-forwarded-method", "G E T"), ("x-forwarded-uri", "/a")],
                "not an HTTP method",
            ),
            (
                &[("x-forwarded-method", "GET"), ("x-forwarded-uri", "")],
                "must be a path",
            ),
            (
                &[("x-forwarded-method", "GET"), ("x-forwarded-uri", "*")],
                "must be a path",
            ),
            (
                &[("x-forwarded-method", "GET"), ("x-forwarded-uri", "api/x")],
                "must be a path",
            ),
            (
                &[
                    ("x-forwarded-method", "GET"),
                    ("x-forwarded-uri", "app.example.com:443"),
                ],
                "must be a path",
            ),
            (
                &[
                    ("x-forwarded-method", "GET"),
                    ("x-forwarded-uri", "ftp://h/a"),
                ],
                "must be a path",
            ),
            (
                &[
                    ("x-forwarded-method", "GET"),
                    ("x-forwarded-uri", "/a"),
                    ("x-forwarded-host", "a"),
                    ("x-forwarded-host", "b"),
                ],
                "more than once",
            ),
            (
                &[
                    ("x-forwarded-method", "GET"),
                    ("x-forwarded-uri", "/a"),
                    ("x-forwarded-proto", "gopher"),
                ],
                "http or https",
            ),
        ];
        for (pairs, expected) in cases {
            let e = refusal(pairs);
            assert!(e.contains(expected), "{pairs:?}: {e}");
        }
    }

    #[test]
    fn targets_keep_their_raw_path_for_normalisation_later() {
        for raw in ["//admin", "/api/%61dmin", "/api%2Fadmin", "http://h/x?q=1"] {
            let o = read(
                Shape::Headers,
                "/auth/forward",
                &[("x-forwarded-method", "get"), ("x-forwarded-uri", raw)],
            )
            .unwrap_or_else(|e| panic!("{raw}: {e}"));
            // A lower-case method is read as it came; the gate's refusals answer it.
            assert_eq!(o.method.as_str(), "get");
            assert_eq!(o.target.to_string(), raw, "{raw}");
        }
    }

    #[test]
    fn dot_segments_are_refused_plain_or_encoded() {
        for path in [
            "/.",
            "/..",
            "/a/./b",
            "/a/../b",
            "/a/%2e/b",
            "/a/%2E%2e/b",
            "/a/.%2e/b",
            "/a/%2e./b",
            "/a/b/..",
            "http://h/a/../b",
        ] {
            let e = refusal(&[("x-forwarded-method", "GET"), ("x-forwarded-uri", path)]);
            assert!(e.contains("dot segment"), "{path}: {e}");
        }
        for path in [
            "/a/.../b",
            "/a/.b/c.",
            "/a/%2e%2e%2e",
            "/a/%2ex",
            "/a//b/",
            "/",
        ] {
            assert!(!has_dot_segment(path), "{path}");
        }
    }

    #[test]
    fn allowed_carries_every_identity_header_empty_for_the_anonymous() {
        let config = Config::from_toml(
            "[upstream]\nurl = \"http://127.0.0.1:1\"\n[tokens]\nsecret = \"0123456789abcdef0123456789abcdef\"\n[headers]\nsession_id = \"X-Auth-Session\"\n",
            Vec::new(),
        )
        .unwrap();
        let response = allowed(&config.headers, None, None).unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        for name in [
            "x-auth-user-id",
            "x-auth-email",
            "x-auth-roles",
            "x-auth-session",
        ] {
            assert_eq!(response.headers()[name], "", "{name}");
        }
        assert_eq!(response.headers()["cache-control"], "no-store");
    }

    #[test]
    fn a_claim_that_cannot_be_a_header_is_refused_not_blanked() {
        let config = Config::from_toml(
            "[upstream]\nurl = \"http://127.0.0.1:1\"\n[tokens]\nsecret = \"0123456789abcdef0123456789abcdef\"\n",
            Vec::new(),
        )
        .unwrap();
        let claims = |sub: &str, email: &str| Claims {
            sub: sub.into(),
            email: email.into(),
            roles: vec!["reader".into(), "creator".into()],
            email_verified: true,
            iss: "gatehouse".into(),
            aud: "api".into(),
            iat: 0,
            nbf: 0,
            exp: 1,
            jti: "j".into(),
            sid: "s".into(),
            token_use: "access".into(),
            amr: vec!["pwd".into()],
        };
        let good = allowed(&config.headers, Some(&claims("u1", "a@example.com")), None).unwrap();
        assert_eq!(good.headers()["x-auth-user-id"], "u1");
        assert_eq!(good.headers()["x-auth-roles"], "reader,creator");
        for (sub, email) in [
            ("u1\r\nX-Auth-Roles: admin", "a@example.com"),
            ("u1", "a@x\0"),
        ] {
            let refused = allowed(&config.headers, Some(&claims(sub, email)), None);
            assert!(
                matches!(
                    refused,
                    Err(Error::Token(crate::error::TokenRefusal::Invalid(_)))
                ),
                "{sub:?} {email:?}: {refused:?}"
            );
        }
    }
}
