//! What an administrator may do to a user, for the admin API (API.md §7) and the offline
//! `gatehouse user` commands alike: each change carries the revocations it implies, so no
//! way in can change a user without them.

use super::Caller;
use super::users::{NewUser, check_name, check_roles, clear_lockouts, create_user, revoke_user};
use crate::app::App;
use crate::error::Error;
use crate::store::{StoreStats, UserPage, UserRecord, UserUpdate, fold};

/// Who did it, for the audit trail: an admin's user id (API) or `cli` (offline commands).
#[derive(Debug, Clone, Copy)]
pub struct Actor<'a> {
    pub admin_id: &'a str,
    pub caller: Caller,
}

/// Records an admin action: on the `gatehouse::audit` target, naming the acting admin, and
/// counted in `gatehouse_auth_events_total`.
pub fn audit(app: &App, action: &str, actor: Actor<'_>, target: &str) {
    app.metrics.auth_event(action, "ok");
    tracing::info!(
        target: "gatehouse::audit",
        event = action,
        outcome = "ok",
        admin_id = %actor.admin_id,
        user_id = %target,
        ip = %actor.caller.ip,
        request_id = actor.caller.request_id.as_str(),
    );
}

/// A change to a user; `None` leaves a field as it is.
#[derive(Debug, Default, Clone)]
pub struct Changes {
    pub roles: Option<Vec<String>>,
    pub locked: Option<bool>,
    pub name: Option<String>,
    pub email_verified: Option<bool>,
}

/// Creates a user whose roles an admin chose (they must be known to the policy).
pub async fn create(app: &App, actor: Actor<'_>, new: NewUser) -> Result<UserRecord, Error> {
    check_roles(app, &new.roles)?;
    let user = create_user(app, new).await?;
    audit(app, "admin_create_user", actor, &user.id);
    Ok(user)
}

/// A page of users in id order, after `cursor`.
pub async fn list(app: &App, limit: usize, cursor: Option<String>) -> Result<UserPage, Error> {
    Ok(app.store.list_users(limit, cursor.as_deref()).await?)
}

/// A user by id.
pub async fn get(app: &App, id: &str) -> Result<UserRecord, Error> {
    app.store.get_user(id).await?.ok_or(Error::NotFound)
}

/// A user by id, email or username (for the CLI, where operators type what they know).
pub async fn find(app: &App, who: &str) -> Result<UserRecord, Error> {
    match app.store.get_user(who).await? {
        Some(user) => Ok(user),
        None => app
            .store
            .find_user_by_login(&fold(who))
            .await?
            .ok_or(Error::NotFound),
    }
}

/// Applies `changes` to user `id` and the revocations they imply: a lock ends every session
/// and access token; new roles or verification state end the access tokens carrying the old
/// claims (sessions survive, so the next refresh mints the new ones); an unlock clears the
/// failed-login counters.
pub async fn update(
    app: &App,
    actor: Actor<'_>,
    id: &str,
    changes: Changes,
) -> Result<UserRecord, Error> {
    if let Some(roles) = &changes.roles {
        check_roles(app, roles)?;
    }
    if let Some(name) = &changes.name
        && let Err(reason) = check_name(name)
    {
        return Err(Error::ValidationFailed(vec![("name".into(), reason)]));
    }
    let update = UserUpdate {
        roles: changes.roles.clone(),
        locked: changes.locked,
        name: changes
            .name
            .as_ref()
            .map(|n| Some(n.trim().to_string()).filter(|n| !n.is_empty())),
        email_verified: changes.email_verified,
        updated_at: app.clock.now(),
        ..UserUpdate::default()
    };
    let user = app.store.update_user(id, &update).await?;
    // Revocations run whenever the change is asked for, even if the store already held the
    // value: a retry after a failure between the two writes must still revoke.
    if changes.locked == Some(true) {
        revoke_user(app, &user.id, None).await?;
    } else if changes.roles.is_some() || changes.email_verified.is_some() {
        app.revoke_user_tokens(&user.id, None).await?;
    }
    if changes.locked == Some(false) {
        clear_lockouts(app, &user).await?;
    }
    audit(app, "admin_update_user", actor, &user.id);
    Ok(user)
}

/// Deletes user `id` and revokes their access tokens.
pub async fn delete(app: &App, actor: Actor<'_>, id: &str) -> Result<(), Error> {
    let deleted = app.store.delete_user(id).await.map_err(Error::from);
    // Revoke even when the user is already gone: this may be the retry of a delete whose
    // revocation failed after the store write.
    if matches!(deleted, Ok(_) | Err(Error::NotFound)) {
        app.revoke_user_tokens(id, None).await?;
    }
    deleted?;
    audit(app, "admin_delete_user", actor, id);
    Ok(())
}

/// Ends every session of user `id`; returns how many.
pub async fn revoke_sessions(app: &App, actor: Actor<'_>, id: &str) -> Result<usize, Error> {
    get(app, id).await?;
    let revoked = revoke_user(app, id, None).await?;
    audit(app, "admin_revoke_sessions", actor, id);
    Ok(revoked)
}

/// Counts of what the store holds (pending reset and verification tokens among them).
pub async fn store_stats(app: &App) -> Result<StoreStats, Error> {
    Ok(app.store.stats().await?)
}
