//! Per-key rate limiting: rates as configured (`"5/15m"`), and a fixed-size, lock-free
//! limiter that the proxy path can call on every request.
//!
//! # The algorithm
//!
//! A [`Rate`] of `count/per` allows a burst of `count` requests and refills one request every
//! `per / count`. It is enforced with GCRA (the generic cell rate algorithm), which keeps one
//! number per key: the *theoretical arrival time* (TAT), the moment the key's budget will be
//! full again. A request at `now` is allowed when `max(TAT, now) + per/count` is at most
//! `now + per`, and then becomes the new TAT. Refused requests change nothing, so a client
//! hammering a closed door does not push the door further away. GCRA is exact, needs no
//! background refill and fits one machine word, which is what makes the table below possible.
//!
//! # The table
//!
//! - **Fixed memory.** [`RateLimiter::new`] allocates `capacity` slots once, in buckets of
//!   seven 64-bit slots plus an insertion latch (one 64-byte cache line per bucket, about
//!   9.2 bytes per slot). Nothing ever grows: a flood from a million addresses costs at most
//!   the table's size. The table is anonymous memory mapped zeroed ([`Table`]), so a page of
//!   it becomes resident only when a key lands in it: the default 65,536 slots are 599 KiB
//!   per limiter, resident from the start when they were written at construction (2.3 MiB
//!   of a sidecar's 20 MiB with four limits on, `benches/memory.py`).
//! - **One word per key.** A slot packs a 24-bit key fingerprint and a 40-bit TAT measured in
//!   ticks since the limiter's epoch, modulo 2^40. A key's bucket and fingerprint come from
//!   one keyed SipHash (std's `RandomState`), so an outsider cannot aim keys at a bucket or
//!   forge a fingerprint. Two keys share a state only if they land in the same bucket *and*
//!   share a fingerprint while both are resident: about 7 in 2^24 per key in a full bucket.
//! - **Lock-free hits; a one-bit latch for inserts only.** A key already in the table is
//!   updated with one compare-and-swap on its slot, and a refusal writes nothing. Inserting a
//!   key that is not in the table takes its bucket's latch for one scan and one CAS (waiters
//!   spin, then yield). The latch exists because two threads inserting the same new key at
//!   once could otherwise put it in two slots and double its burst; with it, a key is in at
//!   most one slot and the budget is never exceeded however many threads race (the
//!   concurrency test catches the race when the latch is removed). Hits never touch it, and
//!   inserts into different buckets never meet.
//! - **Eviction under pressure fails open for the least informative key.** When a new key
//!   finds its bucket full, it replaces the slot whose state would drain soonest: an empty or
//!   expired slot first (those carry no information, so nothing is lost), otherwise the key
//!   with the smallest backlog. An evicted key starts again with a full budget. That is the
//!   right way to fail: the alternatives are refusing the new key (an innocent client
//!   blocked because strangers filled the table) or merging keys (innocent clients charged
//!   for an attacker's traffic). And because the heaviest users have the largest backlogs,
//!   they are the last to be evicted: a flood of one-off addresses churns among itself while
//!   a brute-forcing client stays limited (see the tests).
//! - **Sizing.** A key's state only matters until its budget refills, i.e. for at most one
//!   `per`. Size `capacity` to at least the number of distinct keys expected within one
//!   period at peak, with headroom (say twice that); 1,000,000 slots take about 9 MiB. Too
//!   small a table does not block anyone; it lets light users reset their budgets sooner.
//!
//! # Time
//!
//! Time is injected: [`RateLimiter::check`] takes the current [`Instant`] and the limiter
//! never reads a clock after construction, so tests drive it with plain instant arithmetic
//! (or `tokio::time::pause`). Ticks are milliseconds when `per / count` is a whole number of
//! milliseconds (every rate in the default configuration), and a finer fraction of a
//! millisecond otherwise (at most microseconds) so that a rate such as `7/1s` is exact too.
//! TATs are stored modulo 2^40 ticks and decoded relative to `now`: a backlog of at most one
//! period (plus a minute for callers' clocks to disagree) is busy, anything else is idle. A
//! slot left untouched for almost exactly a multiple of 2^40 ticks (about 35 years in
//! milliseconds, 12 days in microseconds) can therefore be misread as busy, which at worst
//! refuses that key for one period.

use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// A rate: a burst of `count` requests, refilled evenly over `per`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    count: NonZeroU32,
    per: Duration,
}

/// The longest period a rate may have. A year is far beyond any sensible per-client window
/// and keeps every TAT well inside the 40 bits a slot has for it.
const MAX_PERIOD: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// Time units accepted in a rate's period, with their length in milliseconds.
const UNITS: &[(&str, u64)] = &[
    ("ms", 1),
    ("s", 1_000),
    ("m", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
];

impl Rate {
    /// A rate of `count` requests per `per`.
    ///
    /// `count` must be at least 1; `per` a whole number of milliseconds between 1ms and 365
    /// days; and the rate at most one request per microsecond.
    pub fn new(count: u32, per: Duration) -> Result<Rate, String> {
        let Some(count) = NonZeroU32::new(count) else {
            return Err("the count must be at least 1 (write \"0\" alone for no limit)".into());
        };
        if per.subsec_nanos() % 1_000_000 != 0 {
            return Err("the period must be a whole number of milliseconds".into());
        }
        if per < Duration::from_millis(1) || per > MAX_PERIOD {
            return Err("the period must be between 1ms and 365d".into());
        }
        if u128::from(count.get()) > per.as_millis() * 1_000 {
            return Err("the rate is too fast: at most one request per microsecond".into());
        }
        Ok(Rate { count, per })
    }

    /// The burst size: how many requests a fresh key may make at once.
    pub fn count(&self) -> u32 {
        self.count.get()
    }

    /// The time over which `count` requests are refilled.
    pub fn per(&self) -> Duration {
        self.per
    }

    fn per_ms(&self) -> u64 {
        // At most MAX_PERIOD, far below u64::MAX milliseconds.
        self.per.as_millis() as u64
    }
}

impl fmt::Display for Rate {
    /// Writes the rate in the configuration syntax, with the largest exact unit (`"5/15m"`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.per_ms();
        let (unit, len) = UNITS
            .iter()
            .rev()
            .find(|(_, len)| ms % len == 0)
            .copied()
            .unwrap_or(("ms", 1));
        write!(f, "{}/{}{unit}", self.count, ms / len)
    }
}

/// Parses a configured rate: `"COUNT/PERIOD"` such as `"5/15m"`, `"10/1m"` or `"100/1s"`,
/// with units `ms`, `s`, `m`, `h` and `d`; or `"0"` for no limit, which gives `Ok(None)`.
///
/// Surrounding whitespace is ignored. Errors are whole sentences fit to follow a TOML key.
pub fn parse_rate(s: &str) -> Result<Option<Rate>, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(None);
    }
    let invalid = |why: &str| Err(format!("invalid rate {s:?}: {why}"));
    let Some((count, period)) = s.split_once('/') else {
        return invalid("expected COUNT/PERIOD such as \"5/15m\", or \"0\" for no limit");
    };
    if count.is_empty() || !count.bytes().all(|b| b.is_ascii_digit()) {
        return invalid("the count before '/' must be a whole number");
    }
    let Ok(count) = count.parse::<u32>() else {
        return invalid("the count is too large");
    };
    let digits = period.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = period.split_at(digits);
    if number.is_empty() {
        return invalid("the period after '/' must start with a number, as in \"1m\"");
    }
    let Some(&(_, unit_ms)) = UNITS.iter().find(|(name, _)| *name == unit) else {
        return invalid("the period needs a unit: ms, s, m, h or d");
    };
    let Some(ms) = number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit_ms))
    else {
        return invalid("the period must be between 1ms and 365d");
    };
    match Rate::new(count, Duration::from_millis(ms)) {
        Ok(rate) => Ok(Some(rate)),
        Err(why) => invalid(&why),
    }
}

/// The verdict on one request, with what the HTTP layer needs for `Retry-After` and the
/// IETF `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The request may proceed.
    Allowed {
        /// The burst size (`RateLimit-Limit`).
        limit: u32,
        /// How many more requests would be allowed right now (`RateLimit-Remaining`).
        remaining: u32,
        /// Seconds, rounded up, until the full budget is back (`RateLimit-Reset`).
        reset_secs: u64,
    },
    /// The request must be refused with 429.
    Limited {
        /// The burst size (`RateLimit-Limit`).
        limit: u32,
        /// Seconds, rounded up and at least 1, until a request would be allowed
        /// (`Retry-After`).
        retry_after_secs: u64,
        /// Seconds, rounded up, until the full budget is back (`RateLimit-Reset`).
        reset_secs: u64,
    },
}

impl Outcome {
    /// Whether the request may proceed.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Outcome::Allowed { .. })
    }
}

/// Slots per bucket: seven slots and the latch fill one 64-byte cache line.
const WAYS: usize = 7;
/// Bits of a slot holding the TAT; the rest hold the key fingerprint.
const TIME_BITS: u32 = 40;
const TIME_MASK: u64 = (1 << TIME_BITS) - 1;
const FINGERPRINT_MASK: u64 = (1 << (64 - TIME_BITS)) - 1;
/// The finest tick: a microsecond is far below any network jitter.
const MAX_TICKS_PER_MS: u64 = 1_000;
/// The largest backlog, in ticks, a rate may produce, leaving three quarters of the 2^40-tick
/// TAT range to tell an idle slot from a busy one.
const MAX_BACKLOG_TICKS: u64 = 1 << 38;
/// How far a caller's `now` may lag another caller's before a busy slot reads as idle.
/// Callers pass `Instant::now()` taken just before the check, so real lags are microseconds;
/// a minute is generous and still a negligible part of the TAT range.
const CLOCK_SKEW: Duration = Duration::from_secs(60);
/// Spins before yielding while another thread holds a bucket's latch. The holder does one
/// scan and one CAS, so spinning normally ends within nanoseconds; yielding covers the rare
/// case of a holder descheduled in the middle.
const LATCH_SPINS: u32 = 64;

#[repr(align(64))]
struct Bucket {
    /// Each slot is `fingerprint << 40 | TAT mod 2^40`; 0 means empty (fingerprints are never
    /// 0).
    slots: [AtomicU64; WAYS],
    /// Held while a key is inserted, so that one key can never occupy two slots.
    latch: AtomicBool,
}

/// The buckets of one limiter: on Unix an anonymous private mapping, which the kernel hands
/// out zeroed and backs with memory page by page as keys land in it; elsewhere, or when the
/// mapping is refused, an ordinary allocation. An all-zero [`Bucket`] is an empty one (its
/// slots 0, its latch free), so the mapping is a table of empty buckets without a write, and
/// it is page-aligned, which keeps each bucket on its own cache line.
enum Table {
    #[cfg(unix)]
    Mapped {
        buckets: std::ptr::NonNull<Bucket>,
        len: usize,
    },
    Boxed(Box<[Bucket]>),
}

// SAFETY: a mapped table is owned memory holding `Bucket`s, which are only atomics; it is
// shared exactly as a `Box<[Bucket]>` would be.
#[cfg(unix)]
unsafe impl Send for Table {}
// SAFETY: as above: `&Table` hands out `&[Bucket]`, and `Bucket` is `Sync`.
#[cfg(unix)]
unsafe impl Sync for Table {}

impl Table {
    fn new(len: usize) -> Table {
        #[cfg(unix)]
        if let Some(bytes) = len.checked_mul(std::mem::size_of::<Bucket>()) {
            // SAFETY: a fresh anonymous private mapping of `bytes` (> 0: `len` is at least
            // 1); nothing else refers to it.
            let addr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    bytes,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if addr != libc::MAP_FAILED {
                if let Some(buckets) = std::ptr::NonNull::new(addr.cast::<Bucket>()) {
                    return Table::Mapped { buckets, len };
                }
            }
        }
        Table::Boxed((0..len).map(|_| Bucket::new()).collect())
    }
}

impl std::ops::Deref for Table {
    type Target = [Bucket];

    fn deref(&self) -> &[Bucket] {
        match self {
            #[cfg(unix)]
            // SAFETY: the mapping holds `len` buckets, page-aligned (so aligned for `Bucket`),
            // zero-filled by the kernel, and zero is an empty `Bucket` (atomics at 0 and
            // false); it lives until `drop`.
            Table::Mapped { buckets, len } => unsafe {
                std::slice::from_raw_parts(buckets.as_ptr(), *len)
            },
            Table::Boxed(buckets) => buckets,
        }
    }
}

#[cfg(unix)]
impl Drop for Table {
    fn drop(&mut self) {
        if let Table::Mapped { buckets, len } = self {
            // SAFETY: the mapping made in `Table::new`, of this size, unmapped once; no
            // reference into it outlives `&self`.
            unsafe {
                libc::munmap(
                    buckets.as_ptr().cast(),
                    *len * std::mem::size_of::<Bucket>(),
                );
            }
        }
    }
}

impl Bucket {
    const fn new() -> Bucket {
        Bucket {
            slots: [const { AtomicU64::new(0) }; WAYS],
            latch: AtomicBool::new(false),
        }
    }

    /// The slot holding `fingerprint`, with the word read from it.
    fn find(&self, fingerprint: u64) -> Option<(&AtomicU64, u64)> {
        self.slots.iter().find_map(|slot| {
            let word = slot.load(Ordering::Acquire);
            (word >> TIME_BITS == fingerprint).then_some((slot, word))
        })
    }

    fn lock(&self) -> LatchGuard<'_> {
        let mut spins = 0;
        while self
            .latch
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            if spins < LATCH_SPINS {
                spins += 1;
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        LatchGuard(&self.latch)
    }
}

struct LatchGuard<'a>(&'a AtomicBool);

impl Drop for LatchGuard<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// A fixed-size, lock-free GCRA rate limiter keyed by `u128` (see
/// `client_ip::rate_key`). Share it behind an `Arc`; every method takes `&self`.
pub struct RateLimiter {
    buckets: Table,
    hasher: RandomState,
    epoch: Instant,
    rate: Rate,
    /// Ticks per millisecond: 1 when `per / count` is a whole number of milliseconds.
    ticks_per_ms: u64,
    /// Ticks between two requests at the sustained rate (`per / count`).
    emission: u64,
    /// The largest backlog an allowed request may leave (`emission * count`).
    tolerance: u64,
    /// The largest backlog a busy slot can show, clock skew included; anything beyond it
    /// decodes as idle.
    max_backlog: u64,
}

impl RateLimiter {
    /// A limiter enforcing `rate` for up to `capacity` keys at once (rounded up to a whole
    /// bucket of seven). All memory is allocated here; the epoch is `Instant::now()`.
    pub fn new(rate: Rate, capacity: usize) -> RateLimiter {
        let per_ms = rate.per_ms();
        let count = u64::from(rate.count());
        // The smallest tick that makes per/count whole, within the finest tick and the range
        // a slot can hold.
        let exact = count / gcd(per_ms, count);
        let ticks_per_ms = exact
            .min(MAX_TICKS_PER_MS)
            .min(MAX_BACKLOG_TICKS / per_ms)
            .max(1);
        // Rounding up keeps the limiter on the strict side when the tick is not exact.
        let emission = (per_ms * ticks_per_ms).div_ceil(count);
        let tolerance = emission * count;
        let skew = CLOCK_SKEW.as_millis() as u64 * ticks_per_ms;
        let buckets = capacity.div_ceil(WAYS).max(1);
        RateLimiter {
            buckets: Table::new(buckets),
            hasher: RandomState::new(),
            epoch: Instant::now(),
            rate,
            ticks_per_ms,
            emission,
            tolerance,
            max_backlog: tolerance + skew,
        }
    }

    /// The rate this limiter enforces.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// How many keys the table holds at most; fixed at construction.
    pub fn capacity(&self) -> usize {
        self.buckets.len() * WAYS
    }

    /// Counts one request by `key` at `now` and says whether it may proceed.
    ///
    /// Pass `Instant::now()` taken just before the call. Instants before the limiter's epoch
    /// count as the epoch. Lock-free for keys already in the table; wait-free when refusing.
    pub fn check(&self, key: u128, now: Instant) -> Outcome {
        let now = self.ticks(now);
        let hash = self.hasher.hash_one(key);
        // Lemire's multiply-shift maps the hash onto the buckets from its high bits without
        // a division; the fingerprint takes the low bits, so the two are independent.
        let index = ((u128::from(hash) * self.buckets.len() as u128) >> 64) as usize;
        // In bounds: (hash * len) >> 64 < len for any 64-bit hash.
        let bucket = &self.buckets[index];
        let fingerprint = (hash & FINGERPRINT_MASK).max(1);
        loop {
            if let Some((slot, word)) = bucket.find(fingerprint) {
                let (outcome, new_backlog) = self.verdict(self.backlog(word, now));
                let Some(new_backlog) = new_backlog else {
                    return outcome;
                };
                let new_word = encode(fingerprint, now.wrapping_add(new_backlog));
                if slot
                    .compare_exchange(word, new_word, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    return outcome;
                }
                // Another request for this key (or an eviction) changed the slot first:
                // decide again on the new state.
                continue;
            }
            if let Some(outcome) = self.insert(bucket, fingerprint, now) {
                return outcome;
            }
        }
    }

    /// Inserts a key missing from `bucket` with its first request counted. Returns `None` if
    /// another thread inserted it meanwhile, in which case the caller retries as a hit.
    fn insert(&self, bucket: &Bucket, fingerprint: u64, now: u64) -> Option<Outcome> {
        let _latch = bucket.lock();
        // Keys are only inserted under the latch, so this second look is authoritative.
        if bucket.find(fingerprint).is_some() {
            return None;
        }
        // A key that is not in the table has no backlog, and its first request always fits.
        let (outcome, _) = self.verdict(0);
        let new_word = encode(fingerprint, now.wrapping_add(self.emission));
        loop {
            // Evict the slot that would drain soonest: empty and expired slots have backlog
            // 0 and lose nothing; otherwise the lightest user goes first.
            // Ties go to the first slot. Every real backlog is below u64::MAX, so the first
            // slot always replaces the placeholder.
            let (mut slot, mut word, mut least) = (&bucket.slots[0], 0, u64::MAX);
            for candidate in &bucket.slots {
                let candidate_word = candidate.load(Ordering::Acquire);
                let backlog = if candidate_word == 0 {
                    0
                } else {
                    self.backlog(candidate_word, now)
                };
                if backlog < least {
                    (slot, word, least) = (candidate, candidate_word, backlog);
                }
            }
            if slot
                .compare_exchange(word, new_word, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return Some(outcome);
            }
            // The victim was updated by its own key in the meantime; choose again.
        }
    }

    /// The limiter's GCRA constants in its own ticks: ticks per millisecond, the emission
    /// interval (`per / count`) and the tolerance (`per`). A backend that keeps the TATs
    /// elsewhere (the shared limiter's Redis script) runs GCRA with these and hands the
    /// backlog it found to [`RateLimiter::verdict`], so both decide and answer alike.
    pub(crate) fn gcra_ticks(&self) -> (u64, u64, u64) {
        (self.ticks_per_ms, self.emission, self.tolerance)
    }

    /// The verdict for a request arriving while the key's TAT lies `backlog` ticks ahead, and
    /// the new backlog to store if it is allowed.
    pub(crate) fn verdict(&self, backlog: u64) -> (Outcome, Option<u64>) {
        let limit = self.rate.count();
        let after = backlog + self.emission;
        if after <= self.tolerance {
            let remaining = (self.tolerance - after) / self.emission;
            let outcome = Outcome::Allowed {
                limit,
                // At most count - 1.
                remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
                reset_secs: self.ceil_secs(after),
            };
            (outcome, Some(after))
        } else {
            let outcome = Outcome::Limited {
                limit,
                retry_after_secs: self.ceil_secs(after - self.tolerance).max(1),
                reset_secs: self.ceil_secs(backlog),
            };
            (outcome, None)
        }
    }

    /// How far the TAT in `word` lies ahead of `now`, in ticks; 0 when it has passed.
    fn backlog(&self, word: u64, now: u64) -> u64 {
        let ahead = word.wrapping_sub(now) & TIME_MASK;
        if ahead <= self.max_backlog { ahead } else { 0 }
    }

    fn ticks(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.epoch);
        // Wrapping is harmless: only the low 40 bits are ever compared.
        since
            .as_secs()
            .wrapping_mul(1_000 * self.ticks_per_ms)
            .wrapping_add(u64::from(since.subsec_nanos()) * self.ticks_per_ms / 1_000_000)
    }

    fn ceil_secs(&self, ticks: u64) -> u64 {
        ticks.div_ceil(1_000 * self.ticks_per_ms)
    }
}

impl fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field("rate", &format_args!("{}", self.rate))
            .field("capacity", &self.capacity())
            .finish_non_exhaustive()
    }
}

fn encode(fingerprint: u64, tat: u64) -> u64 {
    fingerprint << TIME_BITS | (tat & TIME_MASK)
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::atomic::AtomicU32;

    fn rate(s: &str) -> Rate {
        parse_rate(s).unwrap().unwrap()
    }

    /// A new table is empty buckets, mapped (so untouched pages cost nothing) where it can be.
    #[test]
    fn a_new_table_is_empty_buckets() {
        let table = Table::new(1_000);
        #[cfg(unix)]
        assert!(matches!(table, Table::Mapped { .. }));
        assert_eq!(table.len(), 1_000);
        for bucket in table.iter() {
            assert!(!bucket.latch.load(Ordering::Relaxed));
            assert!(bucket.slots.iter().all(|s| s.load(Ordering::Relaxed) == 0));
        }
        assert_eq!(table.as_ptr() as usize % 64, 0, "a bucket per cache line");
    }

    #[test]
    fn parse_rates() {
        fn check(input: &str, expect: Result<Option<(u32, u64)>, &str>) {
            let got = parse_rate(input);
            match (&got, expect) {
                (Ok(got), Ok(want)) => assert_eq!(
                    got.map(|r| (r.count(), r.per().as_millis() as u64)),
                    want,
                    "{input:?}"
                ),
                (Err(err), Err(want)) => {
                    assert!(err.contains(want), "{input:?}: {err:?} lacks {want:?}")
                }
                _ => panic!("{input:?}: got {got:?}, expected {expect:?}"),
            }
        }
        check("0", Ok(None));
        check(" 0 ", Ok(None));
        check("5/15m", Ok(Some((5, 900_000))));
        check("10/1m", Ok(Some((10, 60_000))));
        check("100/1s", Ok(Some((100, 1_000))));
        check("3/1h", Ok(Some((3, 3_600_000))));
        check("1/250ms", Ok(Some((1, 250))));
        check("2/1d", Ok(Some((2, 86_400_000))));
        check("1/365d", Ok(Some((1, 31_536_000_000))));
        check("1000/1ms", Ok(Some((1000, 1))));
        check("", Err("expected COUNT/PERIOD"));
        check("5", Err("expected COUNT/PERIOD"));
        check("00", Err("expected COUNT/PERIOD"));
        check("0/1m", Err("at least 1"));
        check("/1m", Err("whole number"));
        check("-1/1m", Err("whole number"));
        check("+5/1m", Err("whole number"));
        check("5 /1m", Err("whole number"));
        check("4294967296/1m", Err("too large"));
        check("5/m", Err("start with a number"));
        check("5/15", Err("unit"));
        check("5/15w", Err("unit"));
        check("5/15M", Err("unit"));
        check("5/15 m", Err("unit"));
        check("5/1.5m", Err("unit"));
        check("5/0s", Err("between 1ms and 365d"));
        check("5/366d", Err("between 1ms and 365d"));
        check("5/99999999999999999999d", Err("between 1ms and 365d"));
        check("5/18446744073709551615d", Err("between 1ms and 365d"));
        check("1001/1ms", Err("too fast"));
        assert_eq!(
            parse_rate("5/15x").unwrap_err(),
            "invalid rate \"5/15x\": the period needs a unit: ms, s, m, h or d"
        );
    }

    #[test]
    fn rates_display_in_config_syntax() {
        for (input, shown) in [
            ("5/15m", "5/15m"),
            ("5/900s", "5/15m"),
            ("3/60m", "3/1h"),
            ("1/1500ms", "1/1500ms"),
            ("2/48h", "2/2d"),
        ] {
            assert_eq!(rate(input).to_string(), shown);
        }
    }

    fn allowed(limit: u32, remaining: u32, reset_secs: u64) -> Outcome {
        Outcome::Allowed {
            limit,
            remaining,
            reset_secs,
        }
    }

    fn limited(limit: u32, retry_after_secs: u64, reset_secs: u64) -> Outcome {
        Outcome::Limited {
            limit,
            retry_after_secs,
            reset_secs,
        }
    }

    #[test]
    fn burst_then_limit_then_refill_at_exact_boundaries() {
        let limiter = RateLimiter::new(rate("5/15m"), 1_000);
        let t0 = limiter.epoch + Duration::from_secs(1_000);
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // (time since t0 in ms, expected outcome); one request emits every 180 s.
        let steps = [
            (0, allowed(5, 4, 180)),
            (0, allowed(5, 3, 360)),
            (0, allowed(5, 2, 540)),
            (0, allowed(5, 1, 720)),
            (0, allowed(5, 0, 900)),
            (0, limited(5, 180, 900)),
            (1_000, limited(5, 179, 899)),
            (179_999, limited(5, 1, 721)),
            (180_000, allowed(5, 0, 900)),
            (180_000, limited(5, 180, 900)),
            // Refused requests cost nothing: the next one is due at 360 s regardless.
            (359_999, limited(5, 1, 721)),
            (360_000, allowed(5, 0, 900)),
            // After a full period of silence the whole burst is back.
            (1_260_000, allowed(5, 4, 180)),
            // Long after the TAT passed, the slot reads as idle.
            (100_000_000, allowed(5, 4, 180)),
        ];
        for (i, (ms, expect)) in steps.into_iter().enumerate() {
            assert_eq!(limiter.check(42, at(ms)), expect, "step {i} at {ms}ms");
        }
    }

    #[test]
    fn instants_before_the_epoch_count_as_the_epoch() {
        let limiter = RateLimiter::new(rate("1/1s"), 100);
        let early = limiter.epoch.checked_sub(Duration::from_secs(5)).unwrap();
        assert_eq!(limiter.check(1, early), allowed(1, 0, 1));
        assert_eq!(limiter.check(1, limiter.epoch), limited(1, 1, 1));
    }

    /// Checks that `rate` allows exactly `expect` requests when every `step` from the epoch
    /// up to and including `until` sends as many requests as it may.
    fn check_sustained(rate_str: &str, step: Duration, until: Duration, expect: u64) {
        let limiter = RateLimiter::new(rate(rate_str), 100);
        let mut total = 0;
        let mut t = Duration::ZERO;
        while t <= until {
            while limiter.check(7, limiter.epoch + t).is_allowed() {
                total += 1;
            }
            t += step;
        }
        assert_eq!(total, expect, "{rate_str} over {until:?}");
    }

    #[test]
    fn sustained_rates_are_exact_even_when_the_interval_is_not_whole_milliseconds() {
        let ms = Duration::from_millis;
        // Burst plus one request per emission interval elapsed.
        check_sustained("7/1s", ms(1), ms(10_000), 7 + 70);
        check_sustained("100/1s", ms(1), ms(2_000), 100 + 200);
        check_sustained("10000/1s", ms(1), ms(1_000), 10_000 + 10_000);
        check_sustained("3/7ms", Duration::from_micros(100), ms(70), 3 + 30);
        check_sustained(
            "5/15m",
            Duration::from_secs(1),
            Duration::from_secs(3_600),
            5 + 20,
        );
    }

    #[test]
    fn keys_are_independent() {
        let limiter = RateLimiter::new(rate("2/1m"), 1_000);
        let t = limiter.epoch;
        let keys = distinct_keys(&limiter, 3, WAYS);
        for &key in &keys {
            assert_eq!(limiter.check(key, t), allowed(2, 1, 30));
        }
        assert_eq!(limiter.check(keys[0], t), allowed(2, 0, 60));
        assert_eq!(limiter.check(keys[0], t), limited(2, 30, 60));
        assert_eq!(limiter.check(keys[1], t), allowed(2, 0, 60));
        assert_eq!(limiter.check(keys[2], t), allowed(2, 0, 60));
    }

    #[test]
    fn ipv6_hosts_share_their_slash_64() {
        // The key derivation lives in client_ip::rate_key; mirror it here so this module's
        // tests stand alone: an IPv6 key is the /64 prefix.
        let prefix = |addr: &str| {
            u128::from(addr.parse::<std::net::Ipv6Addr>().unwrap()) & !u128::from(u64::MAX)
        };
        let limiter = RateLimiter::new(rate("3/1h"), 1_000);
        let t = limiter.epoch;
        for addr in ["2001:db8:0:1::1", "2001:db8:0:1::2", "2001:db8:0:1:ffff::9"] {
            assert!(limiter.check(prefix(addr), t).is_allowed(), "{addr}");
        }
        assert!(!limiter.check(prefix("2001:db8:0:1::4"), t).is_allowed());
        assert!(limiter.check(prefix("2001:db8:0:2::1"), t).is_allowed());
    }

    #[test]
    fn a_million_key_flood_keeps_memory_fixed_and_the_hot_key_limited() {
        let limiter = RateLimiter::new(rate("5/15m"), 1_024);
        let capacity = limiter.capacity();
        let t = limiter.epoch + Duration::from_secs(10);
        let hot = u128::MAX;
        for _ in 0..5 {
            assert!(limiter.check(hot, t).is_allowed());
        }
        assert_eq!(limiter.check(hot, t), limited(5, 180, 900));
        // A million one-off keys: each is a light user, so they evict one another and never
        // the heavy hot key.
        for key in 0..1_000_000u128 {
            limiter.check(key, t);
        }
        assert_eq!(limiter.capacity(), capacity);
        assert_eq!(limiter.buckets.len() * WAYS, capacity);
        assert_eq!(limiter.check(hot, t), limited(5, 180, 900));
        let later = t + Duration::from_secs(180);
        assert_eq!(limiter.check(hot, later), allowed(5, 0, 900));
        assert_eq!(limiter.check(hot, later), limited(5, 180, 900));
    }

    #[test]
    fn a_full_bucket_evicts_the_lightest_key_which_starts_afresh() {
        // One bucket, so every key competes for the same seven slots.
        let limiter = RateLimiter::new(rate("3/1m"), 1);
        assert_eq!(limiter.capacity(), WAYS);
        let t = limiter.epoch;
        let keys = distinct_keys(&limiter, WAYS + 3, WAYS + 3);
        let (heavy, rest) = keys.split_first().unwrap();
        for _ in 0..3 {
            assert!(limiter.check(*heavy, t).is_allowed());
        }
        // Two requests from the first light key, one from each of the others.
        assert!(limiter.check(rest[0], t).is_allowed());
        for &key in rest {
            assert!(limiter.check(key, t).is_allowed());
        }
        // Ten keys went through seven slots, so three light keys were evicted along the way;
        // the heavy key and the twice-seen key, with the largest backlogs, stayed.
        assert_eq!(limiter.check(*heavy, t), limited(3, 20, 60));
        assert_eq!(limiter.check(rest[0], t), allowed(3, 0, 60));
        // An evicted key comes back with a full budget (fail open for that key).
        assert_eq!(limiter.check(rest[1], t), allowed(3, 2, 20));
    }

    #[test]
    fn concurrent_checks_never_exceed_the_budget() {
        const THREADS: usize = 4;
        const KEYS: usize = 4_000;
        const TRIES: usize = 5;
        let limiter = RateLimiter::new(rate("3/1h"), 100_000);
        let keys = distinct_keys(&limiter, KEYS, WAYS);
        let t = limiter.epoch;
        let granted: Vec<AtomicU32> = (0..KEYS).map(|_| AtomicU32::new(0)).collect();
        // A spinning barrier per key: threads leave it within nanoseconds of each other, so
        // they really do race on each key's first requests, while it is not in the table.
        // Without the insertion latch this fails in most runs even on two cores; with it, a
        // key never has two slots and the count is exact.
        let arrived = AtomicU64::new(0);
        std::thread::scope(|scope| {
            for _ in 0..THREADS {
                let (limiter, keys, granted, arrived) = (&limiter, &keys, &granted, &arrived);
                scope.spawn(move || {
                    for (round, (key, granted)) in keys.iter().zip(granted).enumerate() {
                        arrived.fetch_add(1, Ordering::AcqRel);
                        let everyone = ((round + 1) * THREADS) as u64;
                        let mut spins = 0u32;
                        while arrived.load(Ordering::Acquire) < everyone {
                            // Yield now and then so that a descheduled thread can arrive.
                            spins += 1;
                            if spins % 1_024 == 0 {
                                std::thread::yield_now();
                            }
                            std::hint::spin_loop();
                        }
                        for _ in 0..TRIES {
                            if limiter.check(*key, t).is_allowed() {
                                granted.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                });
            }
        });
        for (i, granted) in granted.iter().enumerate() {
            assert_eq!(granted.load(Ordering::Relaxed), 3, "key {i}");
        }
    }

    /// `n` keys with pairwise distinct (bucket, fingerprint) in `limiter`, at most
    /// `per_bucket` of them in any bucket, so that tests do not depend on the random hash key.
    fn distinct_keys(limiter: &RateLimiter, n: usize, per_bucket: usize) -> Vec<u128> {
        let mut seen = HashMap::new();
        let mut used_per_bucket = HashMap::new();
        let mut keys = Vec::new();
        for key in 0u128.. {
            if keys.len() == n {
                break;
            }
            let hash = limiter.hasher.hash_one(key);
            let bucket = ((u128::from(hash) * limiter.buckets.len() as u128) >> 64) as usize;
            let fingerprint = (hash & FINGERPRINT_MASK).max(1);
            let used = used_per_bucket.entry(bucket).or_insert(0);
            if *used < per_bucket && seen.insert((bucket, fingerprint), key).is_none() {
                *used += 1;
                keys.push(key);
            }
        }
        keys
    }
}
