//! Responses gatehouse writes itself, and the one body type every response has.
//!
//! A response is either the upstream's, streamed back untouched ([`ResponseBody`]), or one
//! gatehouse wrote whole ([`Full`]): [`Body`] is the pair. The auth endpoints, the ops
//! endpoints and error responses all build `Response<Full<Bytes>>` and wrap it with
//! [`local`].

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{Either, Full};

use crate::upstream::ResponseBody;

/// The response body: the upstream's streamed body, or one gatehouse wrote itself.
pub type Body = Either<ResponseBody, Full<Bytes>>;

/// Wraps a gatehouse-written response as [`Body`].
pub fn local(response: Response<Full<Bytes>>) -> Response<Body> {
    response.map(Either::Right)
}

/// A JSON response. Never cached: token responses must not be (RFC 6749 §5.1), and the
/// others carry personal data.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    // Serialising a `Value` cannot fail.
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

/// The user an auth endpoint served, as a response extension: the access log's `user`
/// field for requests the proxy path did not authenticate itself (login, register,
/// refresh, and the endpoints that verify their own bearer token). Never sent.
#[derive(Debug, Clone)]
pub struct ServedUser(pub String);

/// Marks `response` as served to `user_id`, for the access log.
pub fn served_to(mut response: Response<Full<Bytes>>, user_id: &str) -> Response<Full<Bytes>> {
    response
        .extensions_mut()
        .insert(ServedUser(user_id.to_owned()));
    response
}

/// An auth endpoint's JSON answer before it is put on a transport: the status and body an
/// HTTP response carries, and the user it served (for the access log). The HTTP handlers
/// render it with [`Answer::into_response`]; the WebSocket auth channel merges `body` into
/// its message's payload. One value for both, so the two transports cannot drift apart.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    /// A JSON object.
    pub body: serde_json::Value,
    /// The user the endpoint served, when it knows one.
    pub user: Option<String>,
}

impl Answer {
    /// An answer with no user to name.
    pub fn new(status: StatusCode, body: serde_json::Value) -> Answer {
        Answer {
            status,
            body,
            user: None,
        }
    }

    /// The same answer, naming the user it served.
    pub fn served_to(mut self, user_id: &str) -> Answer {
        self.user = Some(user_id.to_owned());
        self
    }

    /// The HTTP response: JSON, never cached, marked with the user it served.
    pub fn into_response(self) -> Response<Full<Bytes>> {
        let response = json(self.status, &self.body);
        match &self.user {
            Some(user) => served_to(response, user),
            None => response,
        }
    }
}

/// An empty 204.
pub fn no_content() -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::NO_CONTENT;
    response
}
