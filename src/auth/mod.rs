//! The identity service: the endpoints under `auth.prefix`.

use http::Request;
use hyper::body::Incoming;

use crate::app::App;
use crate::error::Error;
use crate::gate::{Body, ConnInfo};

/// Serves a path under `auth.prefix`.
pub async fn handle(
    _app: &App,
    _conn: ConnInfo,
    _request: Request<Incoming>,
    _path: &str,
) -> Result<http::Response<Body>, Error> {
    Err(Error::NotFound)
}
