//! The admin API (API.md §7), behind the admin role (`auth.admin_role`, inheritance
//! included). What each action does, and the revocations it implies, lives in
//! [`crate::accounts::admin`]; every action is an audit event naming the acting admin.
//! `GET …/admin/recovery` (pending reset and verification tokens, mail counts) is served by
//! `recovery`.

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde::Deserialize;

use super::wire::{Form, read_json, user_json};
use crate::accounts::Caller;
use crate::accounts::admin::{self, Actor, Changes};
use crate::accounts::users::NewUser;
use crate::app::App;
use crate::error::Error;
use crate::guard::require_bearer;
use crate::policy::{Access, Verdict};
use crate::response::{json, no_content, served_to};
use crate::token::Claims;

/// Page size when none is asked for, and the most one page may hold.
const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 200;

/// Routes `rest` (the path after `{prefix}/admin`).
pub async fn handle(
    app: &Arc<App>,
    caller: Caller,
    request: Request<Incoming>,
    rest: &str,
) -> Result<Response<Full<Bytes>>, Error> {
    let claims = require_admin(app, &request)?;
    let response = route(app, caller, request, rest, &claims).await?;
    Ok(served_to(response, &claims.sub))
}

/// Routes an admin request once the caller is known to be an admin.
async fn route(
    app: &Arc<App>,
    caller: Caller,
    request: Request<Incoming>,
    rest: &str,
    claims: &Claims,
) -> Result<Response<Full<Bytes>>, Error> {
    let actor = Actor {
        admin_id: &claims.sub,
        caller,
    };
    // HEAD is GET without the body (hyper drops it), as on every other endpoint.
    let method = match request.method() {
        &Method::HEAD => Method::GET,
        other => other.clone(),
    };
    let segments: Vec<&str> = rest.trim_matches('/').split('/').collect();
    match (segments.as_slice(), &method) {
        (["users"], &Method::GET) => list(app, &request).await,
        (["users"], &Method::POST) => create(app, actor, request).await,
        (["users"], _) => Err(Error::MethodNotAllowed("GET, HEAD, POST")),
        (["users", id], &Method::GET) => {
            let user = admin::get(app, id).await?;
            Ok(user_response(StatusCode::OK, &user))
        }
        (["users", id], &Method::PATCH) => update(app, actor, request, id).await,
        (["users", id], &Method::DELETE) => {
            admin::delete(app, actor, id).await?;
            Ok(no_content())
        }
        (["users", _], _) => Err(Error::MethodNotAllowed("GET, HEAD, PATCH, DELETE")),
        (["users", id, "revoke-sessions"], &Method::POST) => {
            let revoked = admin::revoke_sessions(app, actor, id).await?;
            Ok(json(
                StatusCode::OK,
                &serde_json::json!({ "sessions_revoked": revoked }),
            ))
        }
        (["users", _, "revoke-sessions"], _) => Err(Error::MethodNotAllowed("POST")),
        (["recovery"], &Method::GET) => super::recovery::admin_view(app).await,
        (["recovery"], _) => Err(Error::MethodNotAllowed("GET, HEAD")),
        _ => Err(Error::NotFound),
    }
}

/// A valid token whose roles include the admin role.
fn require_admin<B>(app: &App, request: &Request<B>) -> Result<std::sync::Arc<Claims>, Error> {
    let claims = require_bearer(app, request.headers())?;
    let policy = &app.live.config.policy;
    let held = policy.roles_mask(claims.roles.iter().map(String::as_str));
    let needed = policy.requirement([app.live.config.auth.admin_role.as_str()]);
    match Access::Roles(needed).allows(Some(held)) {
        Verdict::Allow if !needed.is_empty() => Ok(claims),
        _ => Err(Error::Forbidden),
    }
}

fn user_response(status: StatusCode, user: &crate::store::UserRecord) -> Response<Full<Bytes>> {
    json(
        status,
        &serde_json::json!({ "user": user_json(user, true) }),
    )
}

async fn list<B>(app: &App, request: &Request<B>) -> Result<Response<Full<Bytes>>, Error> {
    let query = Form::query(request);
    // Only an absent limit means the default: `limit=` is not a number (the OpenAPI
    // document says integer, and schemathesis holds the server to it).
    let limit = match query.value("limit") {
        None => DEFAULT_PAGE,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| {
                Error::ValidationFailed(vec![(
                    "limit".into(),
                    format!("a number from 1 to {MAX_PAGE}"),
                )])
            })?,
    };
    let cursor = Some(query.get("cursor"))
        .filter(|c| !c.is_empty())
        .map(str::to_string);
    let page = admin::list(app, limit, cursor).await?;
    let users: Vec<serde_json::Value> = page.users.iter().map(|u| user_json(u, true)).collect();
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "users": users, "next_cursor": page.next_cursor }),
    ))
}

#[derive(Deserialize)]
struct CreateBody {
    email: String,
    password: String,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    roles: Option<Vec<String>>,
    #[serde(default)]
    email_verified: bool,
}

async fn create(
    app: &App,
    actor: Actor<'_>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Error> {
    let (_, body): (_, CreateBody) = read_json(app, request).await?;
    let user = admin::create(
        app,
        actor,
        NewUser {
            email: body.email,
            password: body.password,
            username: body.username,
            name: body.name,
            roles: body
                .roles
                .unwrap_or_else(|| app.live.config.auth.default_roles.clone()),
            email_verified: body.email_verified,
        },
    )
    .await?;
    Ok(user_response(StatusCode::CREATED, &user))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateBody {
    #[serde(default)]
    roles: Option<Vec<String>>,
    #[serde(default)]
    locked: Option<bool>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    email_verified: Option<bool>,
}

async fn update(
    app: &App,
    actor: Actor<'_>,
    request: Request<Incoming>,
    id: &str,
) -> Result<Response<Full<Bytes>>, Error> {
    let (_, body): (_, UpdateBody) = read_json(app, request).await?;
    let changes = Changes {
        roles: body.roles,
        locked: body.locked,
        name: body.name,
        email_verified: body.email_verified,
    };
    let user = admin::update(app, actor, id, changes).await?;
    Ok(user_response(StatusCode::OK, &user))
}
