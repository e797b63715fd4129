//! The `gatehouse` binary: parses the command line and hands over to [`gatehouse::cli`].

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    gatehouse::cli::run(gatehouse::cli::Cli::parse())
}
