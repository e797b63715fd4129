//! `gatehouse demo`: a small echo upstream and an embedded config, so a newcomer can try
//! gatehouse with one command. The echo upstream is also what the integration tests put
//! behind gatehouse: it answers every request with a JSON description of what it received,
//! which is exactly what a test of header rewriting needs to look at.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// The demo's config. `{upstream}`, `{store}` and `{secret}` are filled in at start.
pub const DEMO_CONFIG: &str = include_str!("demo.toml");

/// Starts the echo upstream on `listener` and serves until the task is dropped.
pub fn spawn_echo_upstream(listener: TcpListener) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service_fn(echo))
                    .await;
            });
        }
    })
}

/// Binds `127.0.0.1:0` and starts the echo upstream there.
pub async fn echo_upstream() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    spawn_echo_upstream(listener);
    Ok(addr)
}

async fn echo(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let headers: serde_json::Map<String, serde_json::Value> = parts
        .headers
        .keys()
        .map(|name| {
            let values: Vec<serde_json::Value> = parts
                .headers
                .get_all(name)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned().into())
                .collect();
            (name.as_str().to_string(), values.into())
        })
        .collect();
    let description = serde_json::json!({
        "upstream": "echo",
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers,
        "body_bytes": body.len(),
    });
    let mut response = Response::new(Full::new(Bytes::from(description.to_string())));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// The demo config text with its placeholders filled in.
pub fn demo_config(upstream: SocketAddr, store: &std::path::Path, secret: &str) -> String {
    DEMO_CONFIG
        .replace("{upstream}", &upstream.to_string())
        .replace("{store}", &store.display().to_string().replace('\\', "/"))
        .replace("{secret}", secret)
}
