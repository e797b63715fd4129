//! Per-key cooldowns judged by the app clock: "at most once per N seconds for this key".
//!
//! Recovery uses them for forgot-password (keyed by the folded address, whether or not it
//! has an account) and for resending a verification link (keyed by the user). They live in
//! memory, bounded: a flood of distinct keys evicts old entries instead of growing, which at
//! worst lets one extra mail through for an evicted key.

use std::time::Duration;

/// Keys remembered at once. An entry is a few dozen bytes, so this caps the memory at a few
/// megabytes under a flood of distinct addresses.
const CAPACITY: u64 = 100_000;

pub struct Cooldowns {
    entries: moka::sync::Cache<String, u64>,
    secs: u64,
}

impl Cooldowns {
    /// Cooldowns of `period`; a zero period turns them off.
    pub fn new(period: Duration) -> Cooldowns {
        // Entries are judged by the app clock (so tests can move it); moka's own expiry
        // only bounds how long memory holds them.
        let ttl = period.max(Duration::from_secs(1));
        Cooldowns {
            entries: moka::sync::Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_live(ttl)
                .build(),
            secs: period.as_secs(),
        }
    }

    /// Starts a cooldown for `key` unless one is running: `Ok(())` if the caller may go on,
    /// `Err(seconds left)` if not.
    pub fn begin(&self, key: &str, now: u64) -> Result<(), u64> {
        if self.secs == 0 {
            return Ok(());
        }
        let until = now.saturating_add(self.secs);
        let entry = self.entries.entry(key.to_string()).or_insert(until);
        if entry.is_fresh() {
            return Ok(());
        }
        let previous = entry.into_value();
        if previous > now {
            return Err(previous - now);
        }
        self.entries.insert(key.to_string(), until);
        Ok(())
    }

    /// Forgets `key`'s cooldown: the work it guarded did not happen after all.
    pub fn cancel(&self, key: &str) {
        self.entries.invalidate(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cooldown_by_the_app_clock() {
        let cooldowns = Cooldowns::new(Duration::from_secs(120));
        assert_eq!(cooldowns.begin("r:a", 1000), Ok(()));
        assert_eq!(cooldowns.begin("r:a", 1001), Err(119));
        assert_eq!(cooldowns.begin("r:b", 1001), Ok(()));
        assert_eq!(cooldowns.begin("r:a", 1119), Err(1));
        assert_eq!(cooldowns.begin("r:a", 1120), Ok(()));
        assert_eq!(cooldowns.begin("r:a", 1200), Err(40));
        cooldowns.cancel("r:a");
        assert_eq!(cooldowns.begin("r:a", 1201), Ok(()));

        let off = Cooldowns::new(Duration::ZERO);
        assert_eq!(off.begin("r:a", 1), Ok(()));
        assert_eq!(off.begin("r:a", 1), Ok(()));
    }
}
