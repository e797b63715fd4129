//! The app's clock: Unix seconds for token claims, lockouts, expiries and refresh
//! schedules, injected so tests can move time without sleeping. Its own file so that
//! parts `app.rs` holds (the issuers' refresh schedule) can read it without importing the
//! app back.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Unix time for token claims, lockouts and expiries. Injected so tests can move it without
/// sleeping: the manual clock is an atomic that tests advance.
#[derive(Clone)]
pub enum Clock {
    System,
    Manual(Arc<AtomicU64>),
}

impl Clock {
    pub fn manual(start_unix: u64) -> (Clock, Arc<AtomicU64>) {
        let now = Arc::new(AtomicU64::new(start_unix));
        (Clock::Manual(now.clone()), now)
    }

    /// Seconds since the Unix epoch.
    pub fn now(&self) -> u64 {
        match self {
            Clock::System => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            Clock::Manual(now) => now.load(Ordering::Relaxed),
        }
    }
}
