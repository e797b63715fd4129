//! Users: creating them, the checks on what they are made of, password changes and the
//! revocations those imply. Everything here is shared by sign-up, the admin API, recovery,
//! sessions and the `gatehouse user` CLI.

use super::{Caller, audit};
use crate::app::App;
use crate::error::{Error, TokenRefusal};
use crate::guard;
use crate::shared_limits::AuthClass;
use crate::store::{Revocation, UserRecord, new_id};
use crate::token::Claims;

/// The longest email address SMTP can carry (RFC 5321 §4.5.3.1).
const MAX_EMAIL: usize = 254;
/// Display names are for humans; this is generous.
pub const MAX_NAME: usize = 200;
const MIN_USERNAME: usize = 3;
const MAX_USERNAME: usize = 32;

/// What it takes to make a user.
pub struct NewUser {
    pub email: String,
    pub password: String,
    pub username: Option<String>,
    pub name: Option<String>,
    pub roles: Vec<String>,
    pub email_verified: bool,
}

/// Validates, hashes and stores a new user. The password is hashed before the uniqueness
/// check so a taken address costs the same time as a free one.
pub async fn create_user(app: &App, new: NewUser) -> Result<UserRecord, Error> {
    let email = new.email.trim().to_string();
    let username = new
        .username
        .map(|u| u.trim().to_string())
        .filter(|u| !u.is_empty());
    let name = new
        .name
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty());
    let mut fields = Vec::new();
    if let Err(reason) = check_email(&email) {
        fields.push(("email".to_string(), reason.to_string()));
    }
    if let Some(u) = &username
        && let Err(reason) = check_username(u)
    {
        fields.push(("username".to_string(), reason.to_string()));
    }
    if let Some(n) = &name
        && let Err(reason) = check_name(n)
    {
        fields.push(("name".to_string(), reason));
    }
    if let Some(bad) = new.roles.iter().find(|r| !valid_role_name(r)) {
        fields.push((
            "roles".to_string(),
            format!("{bad:?} is not a valid role name"),
        ));
    }
    if !fields.is_empty() {
        return Err(Error::ValidationFailed(fields));
    }
    let hash = hash_new_password(app, new.password, &email, username.as_deref()).await?;
    let now = app.clock.now();
    let user = UserRecord {
        id: new_id(),
        email,
        username,
        name,
        password_hash: hash,
        roles: new.roles,
        email_verified: new.email_verified,
        locked: false,
        created_at: now,
        updated_at: now,
        password_changed_at: now,
    };
    app.store.create_user(&user).await?;
    Ok(user)
}

/// Applies the password policy (the account's email and username count as too guessable)
/// and hashes the password on the blocking pool.
pub async fn hash_new_password(
    app: &App,
    password: String,
    email: &str,
    username: Option<&str>,
) -> Result<String, Error> {
    let context: Vec<&str> = std::iter::once(email).chain(username).collect();
    app.hasher
        .check_policy(&password, &context)
        .map_err(|weak| Error::WeakPassword(weak.to_string().into()))?;
    app.hasher
        .hash(password)
        .await
        .map_err(|e| Error::internal(format!("hash: {e:?}")))
}

/// A pragmatic address check: the mail server is the real judge, this catches typos and
/// injection (no whitespace or control characters, which could break mail headers).
pub fn check_email(email: &str) -> Result<(), &'static str> {
    if email.is_empty() {
        return Err("is required");
    }
    if email.len() > MAX_EMAIL {
        return Err("is too long");
    }
    // Printable ASCII only: no CR/LF for header injection, no bidi overrides or zero-width
    // characters to spoof addresses in lists and mails (SMTP without SMTPUTF8 could not carry
    // them anyway).
    if !email.bytes().all(|b| b.is_ascii_graphic())
        || email.contains(['<', '>', ',', ';', '"', '(', ')', '[', ']', '\\'])
    {
        return Err("contains characters not allowed in an address");
    }
    let Some((local, domain)) = email.rsplit_once('@') else {
        return Err("is not an email address");
    };
    if local.is_empty() || local.len() > 64 || local.contains('@') {
        return Err("is not an email address");
    }
    if domain.len() < 3
        || !domain.contains('.')
        || domain.starts_with(['.', '-'])
        || domain.ends_with(['.', '-'])
        || domain.contains("..")
    {
        return Err("has no valid domain");
    }
    Ok(())
}

/// Usernames: 3–32 of `A-Z a-z 0-9 . _ -`, starting with a letter or digit. No `@`, so a
/// login name is unambiguously an email or a username.
pub fn check_username(username: &str) -> Result<(), &'static str> {
    let len = username.chars().count();
    if !(MIN_USERNAME..=MAX_USERNAME).contains(&len) {
        return Err("must be 3 to 32 characters");
    }
    if !username.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err("must start with a letter or digit");
    }
    if !username
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err("may contain only letters, digits, '.', '_' and '-'");
    }
    Ok(())
}

/// Display names: at most [`MAX_NAME`] characters, no control characters.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.chars().count() > MAX_NAME || name.chars().any(char::is_control) {
        return Err(format!(
            "at most {MAX_NAME} characters, no control characters"
        ));
    }
    Ok(())
}

/// Role names travel comma-separated in a header: no commas, spaces or control characters.
pub fn valid_role_name(role: &str) -> bool {
    !role.is_empty()
        && role.len() <= 64
        && role
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'))
}

/// Roles an administrator assigns must be valid names known to the policy: a typo would
/// otherwise grant nothing and fail silently.
pub fn check_roles(app: &App, roles: &[String]) -> Result<(), Error> {
    let policy = &app.live.config.policy;
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

/// The user behind a verified token, as stored now (roles may have changed since the token
/// was minted). A user deleted since is a revoked token.
pub async fn current_user(app: &App, claims: &Claims) -> Result<UserRecord, Error> {
    app.store
        .get_user(&claims.sub)
        .await?
        .ok_or(Error::Token(TokenRefusal::Revoked))
}

/// A signed-in user changes their password: the current one must match (the `login` rate
/// limit applies, since it is a password guess), the new one must pass the policy. Every
/// other session and access token ends; the caller's own session stays.
pub async fn change_password(
    app: &App,
    caller: Caller,
    claims: &Claims,
    current_password: String,
    new_password: String,
) -> Result<(), Error> {
    guard::limit_auth(app, AuthClass::Login, caller.ip).await?;
    let user = current_user(app, claims).await?;
    match app
        .hasher
        .verify(current_password, Some(user.password_hash.clone()))
        .await
    {
        crate::password::VerifyOutcome::Match { .. } => {}
        crate::password::VerifyOutcome::Mismatch => {
            audit(
                app,
                "password_change",
                "wrong_password",
                Some(&user.id),
                caller,
            );
            return Err(Error::InvalidCredentials);
        }
    }
    let hash = hash_new_password(app, new_password, &user.email, user.username.as_deref()).await?;
    set_password(app, &user.id, hash, Some(&claims.sid)).await?;
    audit(app, "password_change", "ok", Some(&user.id), caller);
    Ok(())
}

/// Stores a new password hash and revokes every session but `keep_sid` (none on a reset),
/// with the access tokens they issued, and voids any pending reset token (a link mailed
/// before the change must not undo it). Sessions are revoked first: if the process dies in
/// between, the user is logged out with the old password still set, never left with a new
/// password and live stolen sessions.
pub async fn set_password(
    app: &App,
    user_id: &str,
    hash: String,
    keep_sid: Option<&str>,
) -> Result<(), Error> {
    revoke_user(app, user_id, keep_sid).await?;
    // Pending reset links die with the old hash, in the same transaction: a link mailed
    // before the change must not undo it.
    app.store
        .set_password(user_id, &hash, app.clock.now())
        .await?;
    // Again after the new hash is in: a login that verified the old password just before
    // the first pass may have opened a session in between; the store refuses sessions for
    // a stale hash from now on, and this pass ends any that slipped in.
    revoke_user(app, user_id, keep_sid).await?;
    Ok(())
}

/// Clears the failed-login counters under every login name of a user (email and username),
/// as an unlock or a password reset should.
pub async fn clear_lockouts(app: &App, user: &UserRecord) -> Result<(), Error> {
    let mut names = vec![crate::store::fold(&user.email)];
    names.extend(user.username.as_deref().map(crate::store::fold));
    for name in &names {
        app.store.clear_login_failures(name).await?;
    }
    Ok(())
}

/// Revokes every session of a user except `keep_sid`, and every access token issued until
/// now except those of `keep_sid`; durable before it returns. Returns how many sessions
/// ended.
pub async fn revoke_user(app: &App, user_id: &str, keep_sid: Option<&str>) -> Result<usize, Error> {
    let revoked = app.store.revoke_user_sessions(user_id, keep_sid).await?;
    app.revoke_user_tokens(user_id, keep_sid).await?;
    // Each revoked session is also revoked by id: a refresh that rotated just before this
    // mints a token whose `iat` is past the user cutoff, and its session id is what still
    // catches it.
    let now = app.clock.now();
    for session in &revoked {
        app.revoke(Revocation::Session {
            sid: session.id.clone(),
            until: app.revocation_until(now),
        })
        .await?;
    }
    Ok(revoked.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        for ok in ["a@b.co", "first.last+tag@example.com", "x@sub.example.org"] {
            assert!(check_email(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a",
            "a@",
            "@b.co",
            "a@b",
            "a b@c.de",
            "a@b..co",
            "a@.b.co",
            "a@b.co\r\nBcc: x",
            "<a@b.co>",
            "a\u{202e}b@c.de",
            "a\u{200b}@b.co",
        ] {
            assert!(check_email(bad).is_err(), "{bad:?}");
        }
        assert!(check_email(&format!("{}@b.co", "a".repeat(65))).is_err());
    }

    #[test]
    fn usernames() {
        for ok in ["ada", "ada.l", "a_1-b", "007"] {
            assert!(check_username(ok).is_ok(), "{ok}");
        }
        for bad in ["ab", "a@b", "-ada", "ada lovelace", "ädä", &"a".repeat(33)] {
            assert!(check_username(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names() {
        assert!(check_name("Ada Lovelace").is_ok());
        assert!(check_name(&"a".repeat(MAX_NAME)).is_ok());
        assert!(check_name(&"a".repeat(MAX_NAME + 1)).is_err());
        assert!(check_name("a\nb").is_err());
    }

    #[test]
    fn role_names() {
        assert!(valid_role_name("reader"));
        assert!(valid_role_name("team:ops"));
        assert!(!valid_role_name("a,b"));
        assert!(!valid_role_name("a b"));
        assert!(!valid_role_name(""));
    }
}
