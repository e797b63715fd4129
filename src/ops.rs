//! The ops surface: `/healthz` (the process is alive), `/readyz` (it can serve: not draining,
//! upstream answering when a health path is configured; "degraded", still 200, naming the
//! store when only the store is away, since the proxy path never needs it) and `/metrics`
//! (Prometheus text). Served on the main listener, or only on `server.admin_listen` when set.

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;

use crate::app::App;

/// Answers an ops path, or `None` when the path is not one.
pub async fn handle<B>(app: &App, request: &Request<B>) -> Option<Response<Full<Bytes>>> {
    let path = request.uri().path();
    if !matches!(path, "/healthz" | "/readyz" | "/metrics") {
        return None;
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = crate::error::Error::MethodNotAllowed("GET, HEAD").into_response();
        *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        return Some(response);
    }
    Some(match path {
        "/healthz" => json(StatusCode::OK, r#"{"status":"ok"}"#.into()),
        "/readyz" => match readiness(app).await {
            Ok(None) => json(StatusCode::OK, r#"{"status":"ready"}"#.into()),
            // The proxy path never reads the store, so a replica whose store is away still
            // serves: taking it out of rotation would cut every proxied request for what
            // only the auth endpoints need. It says so instead.
            Ok(Some(down)) => {
                let body = serde_json::json!({
                    "status": "degraded",
                    "down": [down],
                    "reason": "the store is unavailable: auth endpoints answer 503, proxied requests are served",
                });
                json(StatusCode::OK, body.to_string())
            }
            Err(why) => {
                tracing::debug!(why, "not ready");
                let body = serde_json::json!({ "status": "not_ready", "reason": why });
                json(StatusCode::SERVICE_UNAVAILABLE, body.to_string())
            }
        },
        _ => {
            if let Some(tls) = &app.tls {
                let stats = tls.reload_stats();
                app.metrics.sync_tls_reloads(stats.reloads, stats.failures);
            }
            let mut response = Response::new(Full::new(Bytes::from(app.metrics.render())));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
    })
}

/// What `/readyz` checks: `Err` = not ready (draining, upstream down), `Ok(Some(part))` =
/// ready but degraded (`store`). Reasons are fixed phrases, never addresses or paths.
async fn readiness(app: &App) -> Result<Option<&'static str>, String> {
    if app.is_shutting_down() {
        return Err("shutting down".into());
    }
    app.upstream
        .check_health()
        .await
        .map_err(|_| "upstream not answering".to_string())?;
    Ok(app.check_store().await.err().map(|_| "store"))
}

fn json(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
