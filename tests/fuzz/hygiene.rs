//! Target `hygiene`: `hygiene::check` on requests built from fuzzed request lines and
//! headers.
//!
//! Input: `METHOD TARGET VERSION` on the first line (`VERSION` one of `HTTP/1.0`,
//! `HTTP/1.1`, `HTTP/2`; anything else is HTTP/1.1), then `name: value` header lines. Parts
//! `http` refuses to build (a method or header name that is no token, a target that is no
//! URI) are dropped, as hyper would never hand such a request over.
//!
//! Properties:
//! - nothing panics;
//! - what it lets through keeps the module's promises, checked independently: no CONNECT,
//!   no lower-case method, no method-override header in any punctuation, no `Upgrade: h2c`
//!   or `HTTP2-Settings`, exactly one `Host` on HTTP/1.1, an HTTP/2 `host` equal to the
//!   authority, and a target within `max_uri_bytes`.

use http::{HeaderName, HeaderValue, Method, Request, Uri, Version, header};

use crate::engine::{Outcome, Rng, Target, feature};

pub struct HygieneTarget;

const METHODS: &[&str] = &[
    "GET", "POST", "get", "CONNECT", "connect", "DELETE", "PURGE", "M-SEARCH", "GeT", "OPTIONS",
];
const TARGETS: &[&str] = &[
    "/",
    "/a?b=c",
    "/x?_method=DELETE",
    "/x?_METHOD=put",
    "/x?%5fmethod=x",
    "/x?_me%74hod=x",
    "/x?x.http.method.override=1",
    "/x?[_method]=1",
    "/x?_method%00x=1",
    "/x?%u005fmethod=1",
    "/x?_method[]=1",
    "/x?a=1;_method=2",
    "/x?__method=1",
    "/x?_m%C4%B1ethod=1",
    "/x?_method",
    "http://example.com/a",
    "http://other.example/a",
    "https://example.com:443/",
    "*",
    "example.com:443",
    "/%",
    "/x?%",
    "/x?%u",
    "/x?%uZZZZ",
    "/x?%ud800=1",
    "/x?+_method=1",
    "/x??_method=1",
    "/x?%20_method=1",
];
const HEADERS: &[(&str, &str)] = &[
    ("host", "example.com"),
    ("host", "EXAMPLE.com"),
    ("host", "other.example"),
    ("x-http-method-override", "DELETE"),
    ("x_http_method", "PUT"),
    ("x.method.override", "PUT"),
    ("x-http-method", "x"),
    ("x-http-method-overridex", "x"),
    ("upgrade", "h2c"),
    ("upgrade", "H2C"),
    ("upgrade", "websocket"),
    ("http2-settings", "AAMAAABkAAQAAP__"),
    ("content-length", "5"),
    ("transfer-encoding", "chunked"),
    ("authorization", "Bearer x"),
];

impl Target for HygieneTarget {
    const NAME: &'static str = "hygiene";

    fn generate(&mut self, rng: &mut Rng) -> Vec<u8> {
        let version = rng.pick(&["HTTP/1.1", "HTTP/1.1", "HTTP/2", "HTTP/1.0"]);
        let mut text = format!("{} {} {version}\n", rng.pick(METHODS), rng.pick(TARGETS));
        for _ in 0..rng.below(5) {
            let (name, value) = rng.pick(HEADERS);
            text.push_str(&format!("{name}: {value}\n"));
        }
        text.into_bytes()
    }

    fn dictionary(&self) -> &[&[u8]] {
        const DICT: &[&[u8]] = &[
            b"_method",
            b"%5f",
            b"%u",
            b"?",
            b"&",
            b";",
            b"=",
            b"[",
            b"]",
            b"\nhost: example.com",
            b"\nx-http-method-override: GET",
            b"-",
            b"_",
            b".",
            b"method",
            b"METHOD",
        ];
        DICT
    }

    fn check(&mut self, input: &[u8]) -> Outcome {
        let text = String::from_utf8_lossy(input);
        let mut lines = text.split('\n');
        let first = lines.next().unwrap_or_default();
        let mut words = first.split(' ');
        let method = words.next().unwrap_or_default();
        let target = words.next().unwrap_or_default();
        let version = match words.next() {
            Some("HTTP/1.0") => Version::HTTP_10,
            Some("HTTP/2") => Version::HTTP_2,
            _ => Version::HTTP_11,
        };
        let (Ok(method), Ok(uri)) = (Method::from_bytes(method.as_bytes()), target.parse::<Uri>())
        else {
            return Outcome::Pass(feature(&["unbuildable"]));
        };
        let mut request = Request::new(());
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        *request.version_mut() = version;
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.trim().as_bytes()),
                HeaderValue::from_bytes(value.trim().as_bytes()),
            ) {
                request.headers_mut().append(name, value);
            }
        }
        let max_uri_bytes = 16 + input.len() % 48;
        match gatehouse::hygiene::check(&request, max_uri_bytes) {
            Err(e) => Outcome::Pass(feature(&["refused", &e.to_string()])),
            Ok(()) => match broken_promise(&request, max_uri_bytes) {
                Some(why) => Outcome::Fail(format!("let through: {why}: {text:?}")),
                None => Outcome::Pass(feature(&["passed", &format!("{version:?}")])),
            },
        }
    }
}

/// The first promise of the module table that a passed request breaks, if any.
fn broken_promise(request: &Request<()>, max_uri_bytes: usize) -> Option<&'static str> {
    let method = request.method().as_str();
    if method.eq_ignore_ascii_case("CONNECT") {
        return Some("CONNECT");
    }
    if method.bytes().any(|b| b.is_ascii_lowercase()) {
        return Some("a lower-case method");
    }
    let headers = request.headers();
    for name in headers.keys() {
        let canonical: String = name
            .as_str()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        if [
            "x-http-method-override",
            "x-http-method",
            "x-method-override",
        ]
        .contains(&canonical.as_str())
        {
            return Some("a method-override header");
        }
    }
    if headers
        .get_all(header::UPGRADE)
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"h2c"))
        || headers.contains_key("http2-settings")
    {
        return Some("an h2c upgrade");
    }
    let hosts: Vec<&HeaderValue> = headers.get_all(header::HOST).iter().collect();
    match request.version() {
        Version::HTTP_11 if hosts.len() != 1 => return Some("HTTP/1.1 without exactly one Host"),
        Version::HTTP_2 => {
            if hosts.len() > 1 {
                return Some("HTTP/2 with two hosts");
            }
            if let (Some(host), Some(authority)) = (hosts.first(), request.uri().authority())
                && !host
                    .as_bytes()
                    .eq_ignore_ascii_case(authority.as_str().as_bytes())
            {
                return Some("an HTTP/2 host that is not the authority");
            }
        }
        _ => {}
    }
    if request.version() < Version::HTTP_2
        && let Some(authority) = request.uri().authority()
        && !hosts.first().is_some_and(|h| {
            h.as_bytes()
                .eq_ignore_ascii_case(authority.as_str().as_bytes())
        })
    {
        return Some("an absolute-form target for another host");
    }
    if request
        .uri()
        .path_and_query()
        .map_or(0, |pq| pq.as_str().len())
        > max_uri_bytes
    {
        return Some("a target over max_uri_bytes");
    }
    None
}
