//! The `gatehouse` binary: parses the command line and hands over to [`gatehouse::cli`].

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    return_large_blocks();
    gatehouse::cli::run(gatehouse::cli::Cli::parse())
}

/// Every allocation of 1 MiB or more gets its own mapping, returned to the system when it is
/// freed. What this is for: each argon2id hash takes `memory_kib` (19 MiB by default). glibc
/// raises its mmap threshold to the size of the first such block freed, after which every
/// later one is carved from the arena of whichever blocking thread ran it and stays there:
/// a few logins left the process at 50+ MiB for good. Pinned, the hash memory goes back as
/// soon as the hash is done, and the proxy path's small blocks are untouched by it.
/// (`benches/compare.sh` reports RSS after 100 logins. mimalloc was measured too: 37 to 75
/// MiB at start, depending on its purge options.)
fn return_large_blocks() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc's allocation policy; it is called before any other
    // thread exists and touches no memory of ours.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}
