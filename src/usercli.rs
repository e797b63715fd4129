//! `gatehouse user …`: user management directly on the store while the server is stopped.

use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// List users.
    List,
}

/// Runs a user command against the configured store.
pub fn run(_config: &Path, _command: UserCommand) -> ExitCode {
    ExitCode::FAILURE
}
