//! Self-service registration.

use super::users::{NewUser, create_user};
use super::{Caller, audit, recovery};
use crate::app::App;
use crate::config::Registration;
use crate::error::Error;
use crate::guard;
use crate::shared_limits::AuthClass;
use crate::store::UserRecord;

/// A sign-up as a client asks for it.
pub struct SignUp {
    pub email: String,
    pub password: String,
    pub username: Option<String>,
    pub name: Option<String>,
    /// Roles the client chose; `None` (or empty) means `auth.default_roles`.
    pub roles: Option<Vec<String>>,
}

/// Registers a user: the `register` rate limit, `auth.registration`, the roles a client may
/// choose (`auth.selectable_roles`), then [`create_user`] and the verification mail.
/// Audited.
pub async fn register(app: &App, caller: Caller, sign_up: SignUp) -> Result<UserRecord, Error> {
    guard::limit_auth(app, AuthClass::Register, caller.ip).await?;
    if app.live.config.auth.registration == Registration::Closed {
        return Err(Error::ForbiddenBecause("Registration is closed"));
    }
    let roles = match sign_up.roles {
        Some(roles) if !roles.is_empty() => {
            let allowed = &app.live.config.auth.selectable_roles;
            if let Some(bad) = roles.iter().find(|r| !allowed.contains(r)) {
                let reason = if allowed.is_empty() {
                    "roles cannot be chosen at sign-up".to_string()
                } else {
                    format!(
                        "{bad:?} cannot be chosen; choose from {}",
                        allowed.join(", ")
                    )
                };
                return Err(Error::ValidationFailed(vec![("roles".into(), reason)]));
            }
            roles
        }
        _ => app.live.config.auth.default_roles.clone(),
    };
    let created = create_user(
        app,
        NewUser {
            email: sign_up.email,
            password: sign_up.password,
            username: sign_up.username,
            name: sign_up.name,
            roles,
            email_verified: false,
        },
    )
    .await;
    match created {
        Ok(user) => {
            audit(app, "register", "ok", Some(&user.id), caller);
            recovery::after_register(app, &user).await;
            Ok(user)
        }
        Err(e) => {
            if matches!(e, Error::Conflict(_)) {
                audit(app, "register", "conflict", None, caller);
            }
            Err(e)
        }
    }
}
