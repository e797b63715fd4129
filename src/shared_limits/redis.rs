//! The Redis side of the shared limits: the URL check, the connection, the key layout and
//! the two Lua scripts. It decides nothing about fallbacks, classes or metrics (the parent
//! module does), and it names no other gatehouse module, so the config can call
//! [`check_url`] without a dependency cycle.
//!
//! # Keys
//!
//! - `{prefix}rl:{class}:{client key as 32 hex digits}` holds a rate-limited client's TAT (the
//!   GCRA theoretical arrival time, see [`crate::ratelimit`]) in ticks since the Unix epoch,
//!   and expires the moment the TAT passes: from then on the key would read as a full
//!   budget anyway, so an idle key costs Redis nothing.
//! - `{prefix}cd:{SHA-256 of the cooldown key, hex}` marks a running cooldown and expires
//!   with it. Cooldown keys name email addresses and user ids; hashing them keeps addresses
//!   out of a Redis that other applications may read.
//!
//! # Scripts
//!
//! Both run through `redis::Script`, i.e. EVALSHA, loading the script on `NOSCRIPT` (after a
//! Redis restart or failover), so a call is one round trip. Each touches one key, so they
//! also run on a Redis Cluster node.

use std::sync::Mutex;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, RedisResult, Script};
use sha2::{Digest, Sha256};

/// A connection attempt that has not completed in a second is as good as failed; requests
/// stopped waiting long before (`rate_limits.redis_timeout`), and the next probe starts over.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// A command its request gave up on at `redis_timeout` still holds a slot in the
/// connection's pipeline until it is answered; this bounds how long.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);

/// GCRA, deciding exactly as `RateLimiter::check` does, with its constants:
/// `ARGV = [ticks per ms, emission, tolerance]`. Returns `{allowed, backlog}`: the backlog
/// (how far the stored TAT lay ahead of now, in ticks) is what the caller turns into the
/// outcome and its headers, with the same code the local limiter uses.
///
/// Time is Redis's own clock (`TIME`), the one clock every replica agrees on. Ticks since
/// the Unix epoch stay below 2^53 (exact in Lua's doubles) for centuries at a millisecond
/// per tick, and past the year 2200 at a microsecond. Numbers go back to Redis through
/// `%.0f`, since Lua 5.1 would write large ones in exponent notation. A backlog beyond the
/// tolerance can only come from Redis's clock stepping back (a failover to a node whose clock
/// lags); it is capped, so a client waits at most one period more, never longer.
const GCRA_SCRIPT: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local time = redis.call('TIME')
local per_ms = tonumber(ARGV[1])
local emission = tonumber(ARGV[2])
local tolerance = tonumber(ARGV[3])
local now = tonumber(time[1]) * 1000 * per_ms + math.floor(tonumber(time[2]) * per_ms / 1000)
local tat = tonumber(redis.call('GET', KEYS[1]) or '') or 0
local backlog = 0
if tat > now then backlog = tat - now end
if backlog > tolerance then backlog = tolerance end
local after = backlog + emission
if after > tolerance then return {0, backlog} end
redis.call('SET', KEYS[1], string.format('%.0f', now + after),
  'PX', string.format('%.0f', math.ceil(after / per_ms)))
return {1, backlog}
";

/// A cooldown: `SET NX PX` starts it for the first caller in the period (`-1`); everyone
/// else learns the milliseconds left. A key without an expiry (written by someone else)
/// would block forever, so it is given one.
const COOLDOWN_SCRIPT: &str = r"
if redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then return -1 end
local left = redis.call('PTTL', KEYS[1])
if left < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  left = tonumber(ARGV[1])
end
return left
";

/// Checks a `rate_limits.redis_url` for the config: `redis://` or `rediss://`, and a URL
/// the client accepts. Messages never repeat the URL, which may carry a password.
pub fn check_url(url: &str) -> Result<(), String> {
    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        return Err(
            "must start with redis:// or rediss:// (e.g. \"redis://127.0.0.1:6379/0\")".into(),
        );
    }
    Client::open(url).map(|_| ()).map_err(|_| {
        "is not a valid Redis URL; expected redis[s]://[user:password@]host[:port][/db]".into()
    })
}

/// A Redis server for the shared limits: one multiplexed connection, shared by every
/// request, which the connection manager re-establishes after I/O errors.
pub(super) struct Redis {
    client: Client,
    /// Created on first use, inside the runtime (the manager spawns a task); replaced after
    /// a timeout, see [`Redis::replace_connection`].
    manager: Mutex<Option<ConnectionManager>>,
    prefix: String,
    gcra: Script,
    cooldown: Script,
}

impl Redis {
    /// Parses the URL; connects only when first used. Needs no runtime.
    pub(super) fn new(url: &str, prefix: &str) -> Result<Redis, String> {
        check_url(url).map_err(|why| format!("rate_limits.redis_url {why}"))?;
        let client = Client::open(url)
            .map_err(|_| "rate_limits.redis_url is not a valid Redis URL".to_string())?;
        Ok(Redis {
            client,
            manager: Mutex::new(None),
            prefix: prefix.to_string(),
            gcra: Script::new(GCRA_SCRIPT),
            cooldown: Script::new(COOLDOWN_SCRIPT),
        })
    }

    /// The shared connection, created on first use. Cheap: a clone of an `Arc`.
    pub(super) fn connection(&self) -> RedisResult<ConnectionManager> {
        // A poisoned lock means a panic while cloning an Arc; the slot is still consistent.
        let mut slot = self.manager.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(manager) = slot.as_ref() {
            return Ok(manager.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            // No retry loop inside the manager: while it retried, every request would wait
            // out its timeout on the pending connection. A failed attempt fails the call at
            // once, and the parent's next probe (a second later) makes the manager try again.
            .set_number_of_retries(0);
        let manager = ConnectionManager::new_lazy_with_config(self.client.clone(), config)?;
        // A lazy manager connects only while someone awaits it, and requests stop awaiting at
        // `redis_timeout`; this task sees the first connection through whatever they do.
        let mut driver = manager.clone();
        tokio::spawn(async move {
            let _ = redis::cmd("PING").query_async::<()>(&mut driver).await;
        });
        *slot = Some(manager.clone());
        Ok(manager)
    }

    /// Drops the connection so that the next call opens a new one. The manager replaces a
    /// connection after I/O errors, but not after a command that was never answered: a
    /// connection whose peer vanished without a reset, or a hung server, would be kept
    /// until the kernel gives up on it (many minutes). Called after timeouts, which the
    /// parent makes at most one per probe interval.
    pub(super) fn replace_connection(&self) {
        let mut slot = self.manager.lock().unwrap_or_else(|e| e.into_inner());
        *slot = None;
    }

    /// The key a client's TAT for `class` is kept under.
    pub(super) fn rate_key(&self, class: &str, key: u128) -> String {
        format!("{}rl:{class}:{key:032x}", self.prefix)
    }

    /// The key a cooldown is kept under: its name hashed, see the module doc.
    pub(super) fn cooldown_key(&self, key: &str) -> String {
        let digest = Sha256::digest(key.as_bytes());
        let mut out = String::with_capacity(self.prefix.len() + 3 + 64);
        out.push_str(&self.prefix);
        out.push_str("cd:");
        for byte in digest {
            // Writing to a String cannot fail.
            let _ = std::fmt::Write::write_fmt(&mut out, format_args!("{byte:02x}"));
        }
        out
    }

    /// Answers PING.
    pub(super) async fn ping(&self, mut conn: ConnectionManager) -> RedisResult<()> {
        redis::cmd("PING").query_async::<()>(&mut conn).await
    }

    /// Runs GCRA for `key` in `class` with the local limiter's constants
    /// (`RateLimiter::gcra_ticks`); returns the backlog, in ticks, that the request met.
    pub(super) async fn gcra(
        &self,
        mut conn: ConnectionManager,
        class: &str,
        key: u128,
        (per_ms, emission, tolerance): (u64, u64, u64),
    ) -> RedisResult<u64> {
        let (_allowed, backlog): (i64, i64) = self
            .gcra
            .key(self.rate_key(class, key))
            .arg(per_ms)
            .arg(emission)
            .arg(tolerance)
            .invoke_async(&mut conn)
            .await?;
        Ok(u64::try_from(backlog).unwrap_or(0))
    }

    /// Starts the cooldown `key` of `period_ms` unless one is running: `None` when it
    /// started, otherwise the milliseconds left.
    pub(super) async fn cooldown_begin(
        &self,
        mut conn: ConnectionManager,
        key: &str,
        period_ms: u64,
    ) -> RedisResult<Option<u64>> {
        let left: i64 = self
            .cooldown
            .key(self.cooldown_key(key))
            .arg(period_ms)
            .invoke_async(&mut conn)
            .await?;
        Ok(u64::try_from(left).ok())
    }

    /// Ends the cooldown `key`.
    pub(super) async fn cooldown_cancel(
        &self,
        mut conn: ConnectionManager,
        key: &str,
    ) -> RedisResult<()> {
        redis::cmd("DEL")
            .arg(self.cooldown_key(key))
            .query_async::<()>(&mut conn)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_without_repeating_them() {
        for good in [
            "redis://127.0.0.1:6379/0",
            "redis://redis",
            "redis://:hunter2@redis:6380/3",
            "redis://user:hunter2@redis/1",
            "rediss://redis.example.com:6380",
        ] {
            assert_eq!(check_url(good), Ok(()), "{good}");
        }
        for (bad, why) in [
            ("127.0.0.1:6379", "must start with redis:// or rediss://"),
            ("http://redis:6379", "must start with redis:// or rediss://"),
            (
                "unix:///run/redis.sock",
                "must start with redis:// or rediss://",
            ),
            ("redis://:hunter2@", "is not a valid Redis URL"),
            (
                "redis://:hunter2@redis:notaport",
                "is not a valid Redis URL",
            ),
        ] {
            let err = check_url(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
            assert!(!err.contains("hunter2"), "{bad}: {err}");
        }
    }

    #[test]
    fn keys_are_namespaced_and_cooldown_names_hashed() {
        let redis = Redis::new("redis://127.0.0.1:6379", "gh:").unwrap();
        assert_eq!(
            redis.rate_key("login", 0xffff_7f00_0001),
            "gh:rl:login:00000000000000000000ffff7f000001"
        );
        let key = redis.cooldown_key("r:alice@example.com");
        assert!(key.starts_with("gh:cd:"), "{key}");
        assert_eq!(key.len(), "gh:cd:".len() + 64);
        assert!(!key.contains("alice"), "{key}");
        assert_ne!(key, redis.cooldown_key("r:bob@example.com"));
    }
}
