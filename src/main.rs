//! The `gatehouse` binary: parses the command line and hands over to [`gatehouse::cli`].

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    return_large_blocks();
    return_freed_pages();
    gatehouse::cli::run(gatehouse::cli::Cli::parse())
}

/// Every allocation of 1 MiB or more gets its own mapping, returned to the system when it is
/// freed. What this is for: each argon2id hash takes `memory_kib` (19 MiB by default). glibc
/// raises its mmap threshold to the size of the first such block freed, after which every
/// later one is carved from the arena of whichever blocking thread ran it and stays there:
/// a few logins left the process at 50+ MiB for good. Pinned, the hash memory goes back as
/// soon as the hash is done, and the proxy path's small blocks are untouched by it.
/// (`benches/compare.sh` reports RSS after 100 logins. Other allocators were measured after
/// the same load with `benches/memory.py`: jemalloc 22.7 MiB, mimalloc 47.9, this policy
/// 17.7; one glibc arena, `M_ARENA_MAX` 1, 24.9, as sled's zeroed tables then land on reused
/// heap pages that must be written: `benches/results/memory.txt`.)
fn return_large_blocks() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc's allocation policy; it is called before any other
    // thread exists and touches no memory of ours.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// How often freed heap pages are handed back: every second, so what a burst of connections
/// freed leaves within a second of the burst rather than ten (measured after 60 s of load
/// with 50 connections: 18.1 MiB once trimmed against 20.4 MiB read at once,
/// `benches/results/memory.txt`). A trim walks glibc's free lists and `madvise`s the whole
/// free pages it finds: tens of microseconds at this heap size, and a page handed back and
/// reused costs one minor fault; instructions per request under callgrind stayed within
/// that benchmark's run-to-run spread (`benches/results/callgrind.txt`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Hands freed heap pages back to the system every [`TRIM_EVERY`]. glibc only returns the
/// top of a heap by itself; what a burst of connections freed in the middle stays resident
/// (about 2 MiB after 50 connections closed, measured with `/proc/PID/smaps`). A small
/// thread of its own, so no runtime and no request waits for it; `malloc_trim` takes each
/// arena's lock for the walk, well under a millisecond at this heap size.
fn return_freed_pages() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let spawned = std::thread::Builder::new()
            .name("gatehouse-trim".into())
            .stack_size(64 * 1024)
            .spawn(|| {
                loop {
                    std::thread::sleep(TRIM_EVERY);
                    // SAFETY: malloc_trim only releases free memory glibc holds; it is
                    // thread-safe and touches no memory of ours.
                    unsafe {
                        libc::malloc_trim(0);
                    }
                }
            });
        // Without the thread gatehouse works the same, with a little more memory.
        drop(spawned);
    }
}
