//! Importing users with the password hashes of another system: `gatehouse user import` and
//! `POST {prefix}/admin/users/import` both call [`import`].
//!
//! The input is JSON lines, one user a line: `{email, username?, name?, roles?,
//! email_verified?, password_hash}`. The rules, and why:
//!
//! - **Every line is judged before anything is written, and every problem is reported** with
//!   its line number (blank lines count as lines but are skipped): an unreadable line, an
//!   unknown field, the same checks as registration and admin creation for the email,
//!   username, name and roles (roles must be known to the policy; absent means
//!   `auth.default_roles`), a hash of an unknown scheme, malformed or over the cost caps
//!   ([`crate::imported_hash`]), and an email or username used by an earlier line.
//! - **Nothing is half-imported**: when any line is bad nothing is written; otherwise the new
//!   users are written in one transaction ([`crate::store::Store::create_users`]).
//! - **An existing account is never changed.** A line whose email (compared case-folded)
//!   belongs to an account counts as *unchanged* when the account is the one the line
//!   describes: the same username, name and roles, the same password hash or one gatehouse
//!   set since the account was created (the upgrade to argon2id at the first login, or a
//!   password change: a later `password_changed_at`, or the configured argon2id where the
//!   line has another kind), and the same verification state or one verified since. Any other
//!   difference is a problem on that line, naming the fields (never their values). So
//!   running the same file twice imports nothing the second time and changes nothing. A
//!   username held by another account is a problem too.
//! - **Bounded**: at most [`MAX_LINES`] users per run (split bigger files: each run is
//!   atomic on its own), and at most [`MAX_FAILURE_KINDS`] kinds of hash (scheme and
//!   parameters) per file, the configured argon2id counted, because every failed login does
//!   the work of each kind stored (see `password.rs`).
//! - **Audited**: one `user_import` event naming the admin (or `cli`) with the counts, for
//!   a run that imported and for one that was refused.

use std::collections::{BTreeSet, HashMap};

use serde::Deserialize;

use super::admin::Actor;
use super::users::{Identity, check_identity, unknown_role};
use crate::app::App;
use crate::error::{Error, LineProblem};
use crate::imported_hash::{self, Kind};
use crate::password::MAX_FAILURE_KINDS;
use crate::store::{StoreError, UserRecord, fold, new_id};

/// The most users one import may hold.
pub const MAX_LINES: usize = 100_000;

/// One line of the input. No `Debug`: it holds a password hash.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    email: String,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    roles: Option<Vec<String>>,
    #[serde(default)]
    email_verified: Option<bool>,
    password_hash: String,
}

/// What an import did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// New accounts written.
    pub imported: usize,
    /// Lines whose account exists already as the line describes it.
    pub unchanged: usize,
}

/// A line that passed every check, with what it will become.
struct Candidate {
    line: usize,
    user: UserRecord,
    kind: Kind,
}

/// Imports the users of `input` (JSON lines) under the rules in the module docs. Every bad
/// line is reported in one [`Error::ImportRejected`], and then nothing is written.
pub async fn import(app: &App, actor: Actor<'_>, input: &str) -> Result<Report, Error> {
    let mut problems = Vec::new();
    let mut candidates = Vec::new();
    let mut emails: HashMap<String, usize> = HashMap::new();
    let mut usernames: HashMap<String, usize> = HashMap::new();
    let mut users = 0;
    let now = app.clock.now();
    for (index, raw) in input.split('\n').enumerate() {
        let line = index + 1;
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        if raw.trim().is_empty() {
            continue;
        }
        users += 1;
        if users > MAX_LINES {
            problems.push(problem(
                line,
                None,
                format!("more than {MAX_LINES} users in one import; split the file (each run is atomic on its own)"),
            ));
            break;
        }
        let before = problems.len();
        let Some(parsed) = parse(line, raw, &mut problems) else {
            continue;
        };
        let (
            Identity {
                email,
                username,
                name,
            },
            checked,
        ) = check_identity(&parsed.email, parsed.username, parsed.name);
        let roles = parsed
            .roles
            .unwrap_or_else(|| app.live.config.auth.default_roles.clone());
        let bad = |field| checked.iter().any(|(f, _)| *f == field);
        for (field, reason) in checked.iter().cloned() {
            problems.push(problem(line, Some(field), reason));
        }
        // Repeats within the file, for fields that are valid in themselves.
        if !bad("email")
            && let Some(first) = emails.insert(fold(&email), line)
        {
            emails.insert(fold(&email), first);
            problems.push(problem(
                line,
                Some("email"),
                format!("the same address as line {first}"),
            ));
        }
        if let Some(u) = &username
            && !bad("username")
            && let Some(first) = usernames.insert(fold(u), line)
        {
            usernames.insert(fold(u), first);
            problems.push(problem(
                line,
                Some("username"),
                format!("the same username as line {first}"),
            ));
        }
        if let Some(role) = unknown_role(app, &roles) {
            problems.push(problem(
                line,
                Some("roles"),
                format!("{role:?} is not a known role"),
            ));
        }
        let kind = match imported_hash::kind(&parsed.password_hash) {
            Ok(kind) => Some(kind),
            Err(reason) => {
                problems.push(problem(line, Some("password_hash"), reason));
                None
            }
        };
        if problems.len() > before {
            continue;
        }
        let Some(kind) = kind else { continue };
        let mut roles = roles;
        roles.dedup();
        candidates.push(Candidate {
            line,
            kind,
            user: UserRecord {
                id: new_id(),
                email,
                username,
                name,
                password_hash: parsed.password_hash,
                roles,
                email_verified: parsed.email_verified.unwrap_or(false),
                locked: false,
                created_at: now,
                updated_at: now,
                password_changed_at: now,
            },
        });
    }
    if users == 0 && problems.is_empty() {
        return Err(Error::InvalidRequest(
            "the import holds no users (one JSON object a line)".into(),
        ));
    }

    // Too many kinds of hash would make every failed login slow (see the module docs).
    let mut kinds: BTreeSet<&Kind> = BTreeSet::new();
    let own = app.hasher.failure_kinds();
    kinds.extend(own.first());
    for candidate in &candidates {
        if kinds.insert(&candidate.kind) && kinds.len() > MAX_FAILURE_KINDS {
            problems.push(problem(
                candidate.line,
                Some("password_hash"),
                format!(
                    "is a kind of hash ({}) past the {MAX_FAILURE_KINDS} kinds one import may \
                     use (the configured argon2id counted): every failed login computes one of \
                     each kind stored",
                    candidate.kind
                ),
            ));
            kinds.remove(&candidate.kind);
        }
    }

    // Against the store: existing accounts are compared, never changed.
    let mut fresh = Vec::new();
    let mut unchanged = 0;
    for candidate in candidates {
        let user = &candidate.user;
        if let Some(existing) = app.store.find_user_by_email(&user.email).await? {
            let differs = differences(&existing, user, own.first());
            if differs.is_empty() {
                unchanged += 1;
            } else {
                problems.push(problem(
                    candidate.line,
                    Some("email"),
                    format!(
                        "an account with this address exists and differs in {}; an import \
                         never changes an existing account",
                        differs.join(", ")
                    ),
                ));
            }
            continue;
        }
        if let Some(username) = &user.username
            && app
                .store
                .find_user_by_login(&fold(username))
                .await?
                .is_some()
        {
            problems.push(problem(
                candidate.line,
                Some("username"),
                "belongs to another account".into(),
            ));
            continue;
        }
        fresh.push(candidate);
    }

    if !problems.is_empty() {
        problems.sort_by_key(|p| p.line);
        audit(app, actor, "rejected", 0, unchanged, problems.len());
        return Err(Error::ImportRejected(problems));
    }
    let records: Vec<UserRecord> = fresh.iter().map(|c| c.user.clone()).collect();
    match app.store.create_users(&records).await {
        Ok(()) => {}
        // An account was created with one of these keys since it was looked up: nothing
        // was written, and the next run reports the line.
        Err(StoreError::Conflict(_)) => {
            return Err(Error::InvalidRequest(
                "an account with one of these emails or usernames was created during the \
                 import; nothing was imported. Run it again to see which line"
                    .into(),
            ));
        }
        Err(e) => return Err(e.into()),
    }
    audit(app, actor, "ok", records.len(), unchanged, 0);
    // From now on every failed login also does the work of the kinds just stored.
    let mut samples: Vec<String> = Vec::new();
    let mut seen: BTreeSet<&Kind> = BTreeSet::new();
    for candidate in &fresh {
        if seen.insert(&candidate.kind) {
            samples.push(candidate.user.password_hash.clone());
        }
    }
    app.hasher.learn(samples).await;
    Ok(Report {
        imported: records.len(),
        unchanged,
    })
}

fn problem(line: usize, field: Option<&'static str>, message: String) -> LineProblem {
    LineProblem {
        line,
        field,
        message,
    }
}

/// Parses one line as a JSON object with the known fields; a problem otherwise.
fn parse(line: usize, raw: &str, problems: &mut Vec<LineProblem>) -> Option<Line> {
    // serde fills a struct from a JSON array by position too; every line is an object.
    if !raw.trim_start().starts_with('{') {
        problems.push(problem(line, None, "is not a JSON object".into()));
        return None;
    }
    match serde_json::from_str::<Line>(raw) {
        Ok(parsed) => Some(parsed),
        Err(e) => {
            // serde_json's message without its position; it names fields, not values.
            let text = e.to_string();
            let text = text.find(" at line ").map_or(text.as_str(), |i| &text[..i]);
            problems.push(problem(line, None, format!("is not a user object: {text}")));
            None
        }
    }
}

/// The fields in which an existing account differs from the line describing it (see the
/// module docs for what still counts as the same).
fn differences(existing: &UserRecord, line: &UserRecord, own: Option<&Kind>) -> Vec<&'static str> {
    let mut fields = Vec::new();
    if existing.username.as_deref().map(fold) != line.username.as_deref().map(fold) {
        fields.push("username");
    }
    if existing.name != line.name {
        fields.push("name");
    }
    let set = |roles: &[String]| roles.iter().cloned().collect::<BTreeSet<_>>();
    if set(&existing.roles) != set(&line.roles) {
        fields.push("roles");
    }
    if existing.email_verified != line.email_verified && !existing.email_verified {
        fields.push("email_verified");
    }
    // Set by gatehouse since: changed after the account was created, or (an upgrade in the
    // very second of the import) the configured argon2id where the line has another kind.
    let upgraded = own.is_some_and(|own| {
        imported_hash::own_kind(&existing.password_hash).as_ref() == Some(own)
            && imported_hash::kind(&line.password_hash).ok().as_ref() != Some(own)
    });
    let changed_since = existing.password_changed_at > existing.created_at || upgraded;
    if existing.password_hash != line.password_hash && !changed_since {
        fields.push("password_hash");
    }
    fields
}

fn audit(
    app: &App,
    actor: Actor<'_>,
    outcome: &str,
    imported: usize,
    unchanged: usize,
    problems: usize,
) {
    app.metrics.auth_event("user_import", outcome);
    tracing::info!(
        target: "gatehouse::audit",
        event = "user_import",
        outcome,
        admin_id = %actor.admin_id,
        imported,
        unchanged,
        problems,
        ip = %actor.caller.ip,
        request_id = actor.caller.request_id.as_str(),
    );
}
