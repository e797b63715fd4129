//! The admin API (API.md §7), behind the admin role (`auth.admin_role`, inheritance
//! included). Every action is an audit event naming the acting admin. `GET …/admin/recovery`
//! (pending reset and verification tokens, mail counts) is served by `recovery`.

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde::Deserialize;

use super::account::{NewUser, clear_lockouts, create_user, revoke_user, valid_role_name};
use super::{Caller, json, no_content, read_json, require_bearer, user_json};
use crate::app::App;
use crate::error::Error;
use crate::policy::{Access, Verdict};
use crate::token::Claims;

/// Page size when none is asked for, and the most one page may hold.
const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 200;

/// Routes `rest` (the path after `{prefix}/admin`).
pub async fn handle(
    app: &Arc<App>,
    caller: &Caller,
    request: Request<Incoming>,
    rest: &str,
) -> Result<Response<Full<Bytes>>, Error> {
    let admin = require_admin(app, &request)?;
    let method = request.method().clone();
    let segments: Vec<&str> = rest.trim_matches('/').split('/').collect();
    match (segments.as_slice(), &method) {
        (["users"], &Method::GET) => list(app, &request).await,
        (["users"], &Method::POST) => create(app, caller, &admin, request).await,
        (["users"], _) => Err(Error::MethodNotAllowed("GET, POST")),
        (["users", id], &Method::GET) => get(app, id).await,
        (["users", id], &Method::PATCH) => update(app, caller, &admin, request, id).await,
        (["users", id], &Method::DELETE) => delete(app, caller, &admin, id).await,
        (["users", _], _) => Err(Error::MethodNotAllowed("GET, PATCH, DELETE")),
        (["users", id, "revoke-sessions"], &Method::POST) => {
            revoke_sessions(app, caller, &admin, id).await
        }
        (["users", _, "revoke-sessions"], _) => Err(Error::MethodNotAllowed("POST")),
        (["recovery"], &Method::GET) => super::recovery::admin_view(app).await,
        (["recovery"], _) => Err(Error::MethodNotAllowed("GET")),
        _ => Err(Error::NotFound),
    }
}

/// A valid token whose roles include the admin role.
fn require_admin<B>(app: &App, request: &Request<B>) -> Result<Claims, Error> {
    let claims = require_bearer(app, request)?;
    let policy = &app.config.policy;
    let held = policy.roles_mask(claims.roles.iter().map(String::as_str));
    let needed = policy.requirement([app.config.auth.admin_role.as_str()]);
    match Access::Roles(needed).allows(Some(held)) {
        Verdict::Allow if !needed.is_empty() => Ok(claims),
        _ => Err(Error::Forbidden),
    }
}

fn admin_audit(app: &App, action: &str, admin: &Claims, target: &str, caller: &Caller) {
    app.metrics.auth_event(action, "ok");
    tracing::info!(
        target: "gatehouse::audit",
        event = action,
        outcome = "ok",
        admin_id = %admin.sub,
        user_id = %target,
        ip = %caller.ip,
    );
}

async fn list<B>(app: &App, request: &Request<B>) -> Result<Response<Full<Bytes>>, Error> {
    let mut limit = DEFAULT_PAGE;
    let mut cursor = None;
    for pair in request.uri().query().unwrap_or_default().split('&') {
        match pair.split_once('=') {
            Some(("limit", v)) => {
                limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_PAGE).contains(n))
                    .ok_or_else(|| {
                        Error::ValidationFailed(vec![(
                            "limit".into(),
                            format!("a number from 1 to {MAX_PAGE}"),
                        )])
                    })?;
            }
            Some(("cursor", v)) if !v.is_empty() => cursor = Some(v.to_string()),
            _ => {}
        }
    }
    let page = app
        .db(move |s| s.list_users(limit, cursor.as_deref()))
        .await?;
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
    caller: &Caller,
    admin: &Claims,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Error> {
    let (_, body): (_, CreateBody) = read_json(app, request).await?;
    let roles = body
        .roles
        .unwrap_or_else(|| app.config.auth.default_roles.clone());
    check_roles(app, &roles)?;
    let user = create_user(
        app,
        NewUser {
            email: body.email,
            password: body.password,
            username: body.username,
            name: body.name,
            roles,
            email_verified: body.email_verified,
        },
    )
    .await?;
    admin_audit(app, "admin_create_user", admin, &user.id, caller);
    Ok(json(
        StatusCode::CREATED,
        &serde_json::json!({ "user": user_json(&user, true) }),
    ))
}

/// Roles an admin assigns must be valid names and, when a role model is configured, known
/// to it: a typo would otherwise grant nothing and fail silently.
pub fn check_roles(app: &App, roles: &[String]) -> Result<(), Error> {
    let policy = &app.config.policy;
    for role in roles {
        if !valid_role_name(role) || policy.requirement([role.as_str()]).is_empty() {
            return Err(Error::ValidationFailed(vec![(
                "roles".into(),
                format!("{role:?} is not a known role"),
            )]));
        }
    }
    Ok(())
}

async fn get(app: &App, id: &str) -> Result<Response<Full<Bytes>>, Error> {
    let id = id.to_string();
    let user = app
        .db(move |s| s.get_user(&id))
        .await?
        .ok_or(Error::NotFound)?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "user": user_json(&user, true) }),
    ))
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
    caller: &Caller,
    admin: &Claims,
    request: Request<Incoming>,
    id: &str,
) -> Result<Response<Full<Bytes>>, Error> {
    let (_, body): (_, UpdateBody) = read_json(app, request).await?;
    if let Some(roles) = &body.roles {
        check_roles(app, roles)?;
    }
    if let Some(name) = &body.name
        && (name.chars().count() > 200 || name.chars().any(char::is_control))
    {
        return Err(Error::ValidationFailed(vec![(
            "name".into(),
            "at most 200 characters, no control characters".into(),
        )]));
    }
    let now = app.clock.now();
    let user_id = id.to_string();
    let (roles, locked, name, verified) = (
        body.roles.clone(),
        body.locked,
        body.name.clone(),
        body.email_verified,
    );
    let user = app
        .db(move |s| {
            s.update_user(&user_id, &mut |u| {
                if let Some(r) = &roles {
                    u.roles = r.clone();
                }
                if let Some(l) = locked {
                    u.locked = l;
                }
                if let Some(n) = &name {
                    u.name = Some(n.trim().to_string()).filter(|n| !n.is_empty());
                }
                if let Some(v) = verified {
                    u.email_verified = v;
                }
                u.updated_at = now;
                Ok(())
            })
        })
        .await?;
    // Revocations run whenever the body asks for the change, even if the store already held
    // the value: a retry after a failure between the two writes must still revoke.
    if locked == Some(true) {
        // A locked account keeps nothing: sessions and access tokens end now.
        revoke_user(app, &user.id, None).await?;
    } else if body.roles.is_some() || body.email_verified.is_some() {
        // New roles (or verification state) take effect at once: access tokens carrying the
        // old claims stop working and the client's next refresh mints tokens with the new
        // ones. Sessions survive.
        app.revoke_user_tokens(&user.id, None).await?;
    }
    if locked == Some(false) {
        // Unlocking also clears failed-login counters under the user's login names.
        clear_lockouts(app, &user).await?;
    }
    admin_audit(app, "admin_update_user", admin, &user.id, caller);
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "user": user_json(&user, true) }),
    ))
}

async fn delete(
    app: &App,
    caller: &Caller,
    admin: &Claims,
    id: &str,
) -> Result<Response<Full<Bytes>>, Error> {
    let user_id = id.to_string();
    let deleted = app.db(move |s| s.delete_user(&user_id)).await;
    // Revoke even when the user is already gone: this may be the retry of a delete whose
    // revocation failed after the store write.
    if matches!(deleted, Ok(_) | Err(Error::NotFound)) {
        app.revoke_user_tokens(id, None).await?;
    }
    deleted?;
    admin_audit(app, "admin_delete_user", admin, id, caller);
    Ok(no_content())
}

async fn revoke_sessions(
    app: &App,
    caller: &Caller,
    admin: &Claims,
    id: &str,
) -> Result<Response<Full<Bytes>>, Error> {
    let user_id = id.to_string();
    app.db(move |s| s.get_user(&user_id))
        .await?
        .ok_or(Error::NotFound)?;
    let revoked = revoke_user(app, id, None).await?;
    admin_audit(app, "admin_revoke_sessions", admin, id, caller);
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "sessions_revoked": revoked }),
    ))
}
