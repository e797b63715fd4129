//! Request hygiene: what is refused before anything is decided.
//!
//! Each refusal closes a way for the request the policy decides on to differ from the
//! request an upstream framework acts on, or for gatehouse to become an open proxy. They are
//! cheap (no allocation for an ordinary request) and run before path normalisation, for
//! every request on the proxy path and the auth endpoints alike. Every refusal is a 400
//! `INVALID_REQUEST` except an over-long target (414).
//!
//! | refused | why |
//! |---|---|
//! | `CONNECT` | a tunnel would carry traffic no policy sees |
//! | a method with a lower-case letter (`delete`) | many frameworks upper-case methods, so `delete` would miss a DELETE-only rule here and run the DELETE handler there |
//! | a method-override header, in any case, with `_`, `.` or any other punctuation for `-` (`X-HTTP-Method-Override`, `X_HTTP_Method`, `x-method-override`) | Rails, Laravel, Symfony and Express's `method-override` run the named method, not the one decided on; `_` spellings reach frameworks that fold `_` into `-` (WSGI/CGI) |
//! | a method-override query parameter (`_method`, `__method`, `_http_method` and the header names), decoded, in any case, with PHP's name mangling (`.`/space → `_`, `[...]` suffix) | Laravel, Symfony, Rails and `method-override('_method')` read them from the query |
//! | HTTP/1.1 without exactly one `Host` | RFC 9112 §3.2; which one would the upstream believe? |
//! | HTTP/2 `host` that disagrees with `:authority` | the upstream could build links from a host the client made up |
//! | `Upgrade: h2c`, `HTTP2-Settings` | switches to a protocol the policy never saw |
//! | an absolute-form target naming another host | forwarding there would be an open proxy |
//! | a target longer than `server.max_uri_bytes` | 414 |
//!
//! A method override inside a form body cannot be refused without reading the body, which
//! gatehouse streams; the README says what an upstream that honours one must do.

use http::{HeaderMap, Method, Request, Uri, Version, header};

use crate::error::Error;

/// Header names that ask a framework to run another method than the request line's,
/// lower-case with `-`; compared against names with `_` folded to `-`.
const OVERRIDE_HEADERS: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Query parameter names that do the same, lower-case with `-` and `.` folded to `_`.
const OVERRIDE_PARAMS: [&str; 6] = [
    "_method",
    "__method",
    "_http_method",
    "x_http_method_override",
    "x_http_method",
    "x_method_override",
];

/// The parts of a request the refusals read besides its target: the gate takes the target
/// off the request before deciding, and `policy explain` has no request at all.
#[derive(Debug, Clone, Copy)]
pub struct Head<'a> {
    pub method: &'a Method,
    pub version: Version,
    pub headers: &'a HeaderMap,
}

impl<'a> Head<'a> {
    pub fn of<B>(request: &'a Request<B>) -> Head<'a> {
        Head {
            method: request.method(),
            version: request.version(),
            headers: request.headers(),
        }
    }
}

/// Refuses a request that must never be decided on or forwarded; see the module table.
pub fn check<B>(request: &Request<B>, max_uri_bytes: usize) -> Result<(), Error> {
    check_head(Head::of(request), request.uri(), max_uri_bytes)
}

/// [`check`] on a request's head and target.
pub fn check_head(head: Head<'_>, uri: &Uri, max_uri_bytes: usize) -> Result<(), Error> {
    let method = head.method;
    if method == Method::CONNECT {
        return Err(invalid("CONNECT is not supported."));
    }
    if method.as_str().bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(invalid("Methods must be upper-case."));
    }
    let headers = head.headers;
    if has_override_header(headers) {
        return Err(invalid(
            "Method-override headers are not accepted; send the real method.",
        ));
    }
    if uri.query().is_some_and(has_override_param) {
        return Err(invalid(
            "Method-override query parameters (such as _method) are not accepted; send the real method.",
        ));
    }
    match head.version {
        Version::HTTP_2 => {
            let mut hosts = headers.get_all(header::HOST).iter();
            let authority = uri.authority().map(|a| a.as_str().as_bytes());
            let agrees = match (hosts.next(), hosts.next()) {
                (None, _) => true,
                (Some(host), None) => {
                    authority.is_none_or(|a| a.eq_ignore_ascii_case(host.as_bytes()))
                }
                (Some(_), Some(_)) => false,
            };
            if !agrees {
                return Err(invalid("The host header must match :authority."));
            }
        }
        Version::HTTP_11 if headers.get_all(header::HOST).iter().count() != 1 => {
            return Err(invalid("Exactly one Host header is required."));
        }
        _ => {}
    }
    // Ambiguous framing (Content-Length with Transfer-Encoding, conflicting lengths) never
    // reaches this point: hyper refuses conflicting lengths and non-chunked
    // Transfer-Encoding with 400, and when both headers come it frames by the chunked
    // encoding alone, drops Content-Length and closes the connection after the response
    // (RFC 9112 §6.3). A body that breaks its own framing later is caught while it streams
    // (`proxy::UpstreamBody`).
    if headers
        .get_all(header::UPGRADE)
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"h2c"))
        || headers.contains_key("http2-settings")
    {
        return Err(invalid("h2c upgrades are not supported."));
    }
    if head.version < Version::HTTP_2
        && let Some(authority) = uri.authority()
        && !headers.get(header::HOST).is_some_and(|h| {
            h.as_bytes()
                .eq_ignore_ascii_case(authority.as_str().as_bytes())
        })
    {
        return Err(invalid(
            "Absolute-form targets for another host are not accepted.",
        ));
    }
    if uri.path_and_query().map_or(0, |pq| pq.as_str().len()) > max_uri_bytes {
        return Err(Error::UriTooLong);
    }
    Ok(())
}

fn invalid(message: &'static str) -> Error {
    Error::InvalidRequest(message.into())
}

/// Whether any header is a method override, in any spelling a CGI-style upstream reads as
/// one (`X.HTTP.Method.Override` reaches PHP as `HTTP_X_HTTP_METHOD_OVERRIDE`).
fn has_override_header(headers: &HeaderMap) -> bool {
    headers.keys().any(|name| {
        OVERRIDE_HEADERS
            .iter()
            .any(|o| header_name_matches(name.as_str(), o, true))
    })
}

/// Compares a lower-case header name with a lower-case pattern, treating any punctuation in
/// the name as `-`: CGI-style upstreams (PHP, WSGI) turn `-`, `_` and `.` alike into `_`, so
/// `X.Auth.Roles` and `x_auth_roles` reach them as `X-Auth-Roles`. `exact` = whole name,
/// otherwise prefix.
pub fn header_name_matches(name: &str, pattern: &str, exact: bool) -> bool {
    let (n, p) = (name.as_bytes(), pattern.as_bytes());
    if n.len() < p.len() || (exact && n.len() != p.len()) {
        return false;
    }
    n.iter()
        .zip(p)
        .all(|(&a, &b)| a == b || (b == b'-' && !a.is_ascii_alphanumeric()))
}

/// Whether a query string names a method-override parameter. Queries that cannot contain
/// one (no `method` in any case, no escape) are passed with one scan and no decoding, and
/// names are compared in place.
fn has_override_param(query: &str) -> bool {
    let bytes = query.as_bytes();
    let could =
        bytes.contains(&b'%') || bytes.windows(6).any(|w| w.eq_ignore_ascii_case(b"method"));
    // Rack and older Python split pairs on `;` as well as `&`.
    could
        && query
            .split(['&', ';'])
            .any(|pair| is_override_name(pair.split('=').next().unwrap_or_default()))
}

/// Whether a raw query parameter name reads as a method override to some framework. The
/// name is decoded as the frameworks decode it — `%XX` and `+` (form encoding), `%uXXXX`
/// (IIS and classic ASP.NET) — and then read as they read it: PHP stops at a NUL byte
/// (`_method%00x` is `_method`), drops leading spaces, turns `.` and space into `_`, and
/// takes `a[...]` as `a`; `qs` (Express) and Rack also strip leading brackets
/// (`[_method]`); every framework compares in its own case, so letters are case-folded
/// ([`crate::path::fold_char`]: `ı` is `i` to .NET).
fn is_override_name(raw: &str) -> bool {
    let raw = decode_percent_u(raw);
    let name = form_urlencoded::parse(raw.as_bytes())
        .next()
        .map(|(name, _)| name)
        .unwrap_or_default();
    let name = name.split('\0').next().unwrap_or_default();
    // Leading spaces (PHP), brackets (qs, Rack) and question marks (PHP's built-in server
    // reads `/x??_method=DELETE` as the query `_method=DELETE`) are not part of the name.
    let name = name.trim_start_matches(|c: char| c.is_whitespace() || matches!(c, '[' | ']' | '?'));
    let name = name.split(['[', ']']).next().unwrap_or_default();
    let folded = name.chars().map(|c| match c {
        '.' | ' ' | '-' => '_',
        c => crate::path::fold_char(c),
    });
    OVERRIDE_PARAMS
        .iter()
        .any(|target| folded.clone().eq(target.chars()))
}

/// Decodes `%uXXXX` escapes (a Microsoft extension that `HttpUtility.UrlDecode` honours);
/// borrows when there are none.
fn decode_percent_u(raw: &str) -> std::borrow::Cow<'_, str> {
    if !raw.contains("%u") && !raw.contains("%U") {
        return std::borrow::Cow::Borrowed(raw);
    }
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(at) = rest.find(['%']) {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        let decoded = tail
            .get(1..6)
            .filter(|h| h.starts_with(['u', 'U']))
            .and_then(|h| u32::from_str_radix(&h[1..], 16).ok())
            .and_then(char::from_u32);
        match decoded {
            Some(c) => {
                // Re-escaped so the form decoding that follows sees the character itself.
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("%{b:02X}"));
                }
                rest = &tail[6..];
            }
            None => {
                out.push('%');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `None` = accepted, `Some(status)` = refused with that status.
    fn outcome(request: Request<()>) -> Option<u16> {
        check(&request, 64).err().map(|e| e.status().as_u16())
    }

    fn get(target: &str) -> http::request::Builder {
        Request::builder()
            .method("GET")
            .uri(target)
            .header("host", "example.com")
    }

    #[test]
    fn refusals_table() {
        let cases: Vec<(&str, Request<()>, Option<u16>)> = vec![
            ("plain GET", get("/api/x").body(()).unwrap(), None),
            ("query", get("/api/x?a=1&b=2").body(()).unwrap(), None),
            (
                "CONNECT",
                Request::builder()
                    .method("CONNECT")
                    .uri("example.com:443")
                    .header("host", "example.com:443")
                    .body(())
                    .unwrap(),
                Some(400),
            ),
            (
                "lower-case method",
                get("/").method("delete").body(()).unwrap(),
                Some(400),
            ),
            (
                "mixed-case method",
                get("/").method("Delete").body(()).unwrap(),
                Some(400),
            ),
            (
                "extension method",
                get("/").method("PURGE").body(()).unwrap(),
                None,
            ),
            ("no host", Request::get("/").body(()).unwrap(), Some(400)),
            (
                "two hosts",
                get("/").header("host", "b.example").body(()).unwrap(),
                Some(400),
            ),
            (
                "HTTP/1.0 without host",
                Request::get("/")
                    .version(Version::HTTP_10)
                    .body(())
                    .unwrap(),
                None,
            ),
            (
                "h2 host agrees",
                Request::get("https://example.com/")
                    .version(Version::HTTP_2)
                    .header("host", "EXAMPLE.com")
                    .body(())
                    .unwrap(),
                None,
            ),
            (
                "h2 host disagrees",
                Request::get("https://example.com/")
                    .version(Version::HTTP_2)
                    .header("host", "evil.example")
                    .body(())
                    .unwrap(),
                Some(400),
            ),
            (
                "h2c upgrade",
                get("/").header("upgrade", "H2C").body(()).unwrap(),
                Some(400),
            ),
            (
                "http2-settings",
                get("/").header("http2-settings", "AAA").body(()).unwrap(),
                Some(400),
            ),
            (
                "websocket upgrade",
                get("/").header("upgrade", "websocket").body(()).unwrap(),
                None,
            ),
            (
                "absolute form, same host",
                get("http://example.com/x").body(()).unwrap(),
                None,
            ),
            (
                "absolute form, host in another case",
                get("http://EXAMPLE.com/x").body(()).unwrap(),
                None,
            ),
            (
                "absolute form, other host",
                get("http://evil.example/x").body(()).unwrap(),
                Some(400),
            ),
            (
                "long target",
                get(&format!("/{}", "a".repeat(64))).body(()).unwrap(),
                Some(414),
            ),
            (
                "target at the limit",
                get(&format!("/{}", "a".repeat(63))).body(()).unwrap(),
                None,
            ),
        ];
        for (name, request, want) in cases {
            assert_eq!(outcome(request), want, "{name}");
        }
    }

    #[test]
    fn method_override_headers_in_every_spelling() {
        for name in [
            "X-HTTP-Method-Override",
            "x-http-method-override",
            "X_HTTP_Method_Override",
            "x_http_method_override",
            "X-Http_Method-Override",
            "X-HTTP-Method",
            "X_HTTP_METHOD",
            "X-Method-Override",
            "x_method_override",
            "X.HTTP.Method.Override",
            "x~http~method",
            "X-Method'Override",
        ] {
            let request = get("/api/items/1")
                .method("POST")
                .header(name, "DELETE")
                .body(())
                .unwrap();
            assert_eq!(outcome(request), Some(400), "{name}");
        }
        for name in [
            "X-HTTP-Method-Overrides",
            "X-Method",
            "X-HTTP-Methods",
            "Method",
        ] {
            let request = get("/").header(name, "DELETE").body(()).unwrap();
            assert_eq!(outcome(request), None, "{name} is not an override");
        }
    }

    #[test]
    fn method_override_params_in_every_spelling() {
        for query in [
            "_method=DELETE",
            "a=1&_method=DELETE",
            "_METHOD=DELETE",
            "_Method=delete",
            "__method=DELETE",
            "_http_method=DELETE",
            "%5Fmethod=DELETE",
            "%5fmethod=DELETE",
            "_%6Dethod=DELETE",
            "_method[]=DELETE",
            "_method[0]=DELETE",
            ".method=DELETE",
            "+_method=DELETE",
            "%20_method=DELETE",
            "_http.method=DELETE",
            "X-HTTP-Method-Override=DELETE",
            "x_http_method_override=DELETE",
            "_method",
            "a=b;_method=DELETE&c",
            // PHP stops a name at NUL; qs and Rack strip leading brackets.
            "_method%00=DELETE",
            "_me%74hod%00x=DELETE",
            "[_method]=DELETE",
            "%5B_method%5D=DELETE",
            "]]_method=DELETE",
            // Classic ASP.NET decodes %uXXXX and compares ignoring case (ı is I).
            "X%u002DHTTP-Method-Override=DELETE",
            "_%u006Dethod=DELETE",
            "x-http-method-overr%C4%B1de=DELETE",
            // PHP's built-in server skips the extra `?` of `/x??_method=DELETE`.
            "?_method=DELETE",
            "??_method=DELETE",
            "a=1&?_method=DELETE",
        ] {
            let request = get(&format!("/api/items/1?{query}"))
                .method("POST")
                .body(())
                .unwrap();
            assert_eq!(outcome(request), Some(400), "?{query}");
        }
        for query in [
            "method=card",
            "payment_method=card",
            "q=_method",
            "a=%5Fmethod",
            "methods=1",
            "_methodx=1",
            "a=%41",
            "q=%u0041",
            "%u=1",
            "a%00b=1",
        ] {
            let request = get(&format!("/api/items/1?{query}")).body(()).unwrap();
            assert_eq!(outcome(request), None, "?{query} is not an override");
        }
    }
}
