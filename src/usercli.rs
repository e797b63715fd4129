//! `gatehouse user …`: user management directly on the store while the server is stopped,
//! so an operator can create the first admin before the first start.
//!
//! sled allows one process per store, so while a server runs these commands refuse with a
//! clear message and change nothing; a running server is managed through the admin API.
//! The commands call the same accounts service as the admin API ([`crate::accounts`]:
//! validation, password policy, hashing, revocation, audit), on an [`App`] built over the
//! opened store.

use std::io::BufRead;
use std::net::{IpAddr, Ipv4Addr};
use std::process::ExitCode;
use std::sync::Arc;

use clap::Subcommand;

use crate::accounts::Caller;
use crate::accounts::admin::{self, Actor, Changes};
use crate::accounts::users::NewUser;
use crate::app::{App, Clock};
use crate::config::Config;
use crate::error::Error;
use crate::store::StoreError;

/// How the offline commands appear in the audit trail.
const CLI_ACTOR: Actor<'static> = Actor {
    admin_id: "cli",
    caller: Caller {
        ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        request_id: crate::app::RequestId::NONE,
    },
};

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Create a user; the password is read from standard input (never from an argument,
    /// which would land in shell history and `ps`). The password policy applies.
    Add {
        /// The new user's email address, which they log in with.
        #[arg(long)]
        email: String,
        /// A username they can log in with instead of the email address.
        #[arg(long)]
        username: Option<String>,
        /// A display name.
        #[arg(long)]
        name: Option<String>,
        /// Roles, comma-separated; defaults to auth.default_roles.
        #[arg(long, value_delimiter = ',')]
        roles: Option<Vec<String>>,
        /// Read the password from the first line of standard input (required: there is no
        /// other way to give it).
        #[arg(long, required = true)]
        password_stdin: bool,
        /// Mark the email address as verified.
        #[arg(long)]
        verified: bool,
    },
    /// List users in id order, one line each.
    List {
        /// The most users to list.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Replace a user's roles.
    SetRoles {
        /// User id, email or username.
        user: String,
        /// The new roles, comma-separated; they replace all current ones.
        #[arg(long, value_delimiter = ',', required = true)]
        roles: Vec<String>,
    },
    /// Lock a user: logins refused, sessions revoked.
    Lock {
        /// User id, email or username.
        user: String,
    },
    /// Unlock a user and clear failed-login counters.
    Unlock {
        /// User id, email or username.
        user: String,
    },
    /// Delete a user and revoke their sessions.
    Delete {
        /// User id, email or username.
        user: String,
    },
}

/// Runs a user command against the store of the given config.
pub fn run(config: Config, command: UserCommand) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let prefix = config.auth.prefix.clone();
    let outcome = rt.block_on(async move {
        let store = crate::store::open(&config).await.map_err(|e| match e {
            StoreError::Locked { path } => format!(
                "the store at {path} is held by a running gatehouse server; nothing was changed.\n\
                 Stop the server, or manage users through the admin API ({prefix}/admin/users)."
            ),
            e => format!("cannot open the store: {e}"),
        })?;
        let app = App::new(config, store, Clock::System)
            .await
            .map_err(|e| e.to_string())?;
        execute(&Arc::new(app), command)
            .await
            .map_err(|e| describe(&e))
    });
    match outcome {
        Ok(message) => {
            println!("{message}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
/// An error as an operator should read it: the client message, plus field reasons.
fn describe(e: &Error) -> String {
    match e {
        Error::ValidationFailed(fields) => fields
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join("; "),
        Error::Internal(cause) => format!("internal error: {cause}"),
        other => other.message().into_owned(),
    }
}

async fn execute(app: &Arc<App>, command: UserCommand) -> Result<String, Error> {
    match command {
        UserCommand::Add {
            email,
            username,
            name,
            roles,
            password_stdin,
            verified,
        } => {
            if !password_stdin {
                return Err(Error::InvalidRequest(
                    "pass --password-stdin and write the password to standard input".into(),
                ));
            }
            let mut password = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut password)
                .map_err(|e| Error::InvalidRequest(format!("cannot read stdin: {e}").into()))?;
            let password = password.trim_end_matches(['\r', '\n']).to_string();
            let roles = roles.unwrap_or_else(|| app.live.config.auth.default_roles.clone());
            let user = admin::create(
                app,
                CLI_ACTOR,
                NewUser {
                    email,
                    password,
                    username,
                    name,
                    roles,
                    email_verified: verified,
                },
            )
            .await?;
            Ok(format!(
                "created user {} <{}> roles={}",
                user.id,
                user.email,
                user.roles.join(",")
            ))
        }
        UserCommand::List { limit } => {
            let mut out = String::new();
            let mut cursor: Option<String> = None;
            let mut shown = 0;
            while shown < limit {
                let c = cursor.clone();
                let page = admin::list(app, 100.min(limit - shown), c).await?;
                for u in &page.users {
                    out.push_str(&format!(
                        "{}  {}  {}  roles={}{}{}\n",
                        u.id,
                        u.email,
                        u.username.as_deref().unwrap_or("-"),
                        u.roles.join(","),
                        if u.locked { "  LOCKED" } else { "" },
                        if u.email_verified { "" } else { "  unverified" },
                    ));
                }
                shown += page.users.len();
                match page.next_cursor {
                    Some(next) if !page.users.is_empty() => cursor = Some(next),
                    _ => break,
                }
            }
            if out.is_empty() {
                out.push_str("no users\n");
            }
            Ok(out.trim_end().to_string())
        }
        UserCommand::SetRoles { user, roles } => {
            let user = find(app, &user).await?;
            let changes = Changes {
                roles: Some(roles),
                ..Changes::default()
            };
            let user = admin::update(app, CLI_ACTOR, &user.id, changes).await?;
            Ok(format!("{} roles={}", user.email, user.roles.join(",")))
        }
        UserCommand::Lock { user } => {
            let user = set_locked(app, &user, true).await?;
            Ok(format!("{} locked; sessions revoked", user.email))
        }
        UserCommand::Unlock { user } => {
            let user = set_locked(app, &user, false).await?;
            Ok(format!("{} unlocked", user.email))
        }
        UserCommand::Delete { user } => {
            let user = find(app, &user).await?;
            admin::delete(app, CLI_ACTOR, &user.id).await?;
            Ok(format!("{} deleted", user.email))
        }
    }
}

/// A user by id, email or username; a clear message when there is none.
async fn find(app: &App, who: &str) -> Result<crate::store::UserRecord, Error> {
    match admin::find(app, who).await {
        Err(Error::NotFound) => Err(Error::InvalidRequest("no such user".into())),
        other => other,
    }
}

async fn set_locked(app: &App, who: &str, locked: bool) -> Result<crate::store::UserRecord, Error> {
    let user = find(app, who).await?;
    let changes = Changes {
        locked: Some(locked),
        ..Changes::default()
    };
    admin::update(app, CLI_ACTOR, &user.id, changes).await
}
