//! The revocation cache consulted on the proxy path.
//!
//! Logout, password change and reset, admin revoke, user deletion and refresh-token reuse must
//! make the affected access tokens fail at once with `TOKEN_REVOKED`, although those tokens are
//! still validly signed and unexpired. The proxy path asks only this in-memory cache, never the
//! store, so the cache must be *complete*:
//!
//! - it is filled from the store at start (the caller replays every stored revocation that has
//!   not yet run out, before serving requests) and written through on every new revocation;
//! - it has no capacity limit, because an evicted entry would silently un-revoke tokens. Its size
//!   is bounded instead by time: each entry expires, through moka's per-entry [`Expiry`], once the
//!   tokens it covers can no longer verify anyway, plus [`EXPIRY_MARGIN_SECS`].
//!
//! Two kinds of entry, in two caches keyed by string so that lookups borrow the claims' `&str`
//! and allocate nothing:
//!
//! - **session**: every token whose `sid` is the revoked session (logout, refresh-token reuse,
//!   revoking one session).
//! - **user cutoff**: every token of the user with `iat <= cutoff_iat`, except the tokens of one
//!   session if named (password change keeps the session that made the change; reset, deletion
//!   and admin revoke except none).
//!
//! **The same-second problem, and the decision taken.** `iat` has one-second precision, so a
//! cutoff at second `T` cannot tell a token issued just before the revocation from one issued
//! just after it in the same second. We choose the safe side: `iat <= cutoff` is revoked, so no
//! token from before the revocation survives. To keep a login made in that same second (say,
//! right after a password reset) from being born revoked, the issuer raises the new token's `iat`
//! to [`Revocations::min_iat`], one second past the cutoff; the token's `nbf` and `exp` still use
//! the real time, so it is usable at once. Should a caller forget the floor, the failure is safe:
//! the new token is refused for at most that one second's logins, and never is an old token
//! accepted.
//!
//! **Repeated revocations.** For a session the entry lives until the later of the two expiries.
//! For a user the later cutoff wins with its own exception, because it revokes everything the
//! earlier one did (sessions other than the excepted one were already ended at the earlier
//! cutoff). Two cutoffs in the same second with different exceptions keep no exception. The
//! merge is therefore independent of the order in which revocations are replayed at start.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::sync::Cache;

use crate::token::Claims;

/// Entries are kept this long past the `until_unix` their caller gave. It absorbs the token
/// leeway and whole-second rounding should a caller compute `until_unix` as `exp` without them;
/// the only cost is holding a few entries for one more minute.
pub const EXPIRY_MARGIN_SECS: u64 = 60;

/// A user-wide revocation: every token of `user_id` issued at or before `cutoff_iat`, except
/// those of `except_sid`. This is also the record the caller persists in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserCutoff<'a> {
    pub user_id: &'a str,
    /// Tokens with `iat <= cutoff_iat` are revoked; normally the time of the revocation.
    pub cutoff_iat: u64,
    /// The session kept alive, e.g. the one that changed the password.
    pub except_sid: Option<&'a str>,
    /// When the last covered token stops verifying: the revocation time plus the access-token
    /// lifetime plus the leeway.
    pub until_unix: u64,
}

/// The in-memory set of revocations in force. Cheap to share behind an `Arc`; every method
/// takes `&self` and is safe to call from any thread.
///
/// Two high-water marks spare the proxy path both lookups whenever no entry could cover the
/// token: a user cutoff covers only tokens with `iat <= cutoff_iat`, so a token issued after
/// every cutoff ever recorded is covered by none; a session entry lives until its
/// `until_unix` plus [`EXPIRY_MARGIN_SECS`], so once the clock has passed every such bound
/// no session entry is in force. Both marks only grow; after a quiet spell as long as a
/// token's life (no logout, no password change), the caches are not consulted again.
pub struct Revocations {
    sessions: Cache<String, SessionEntry>,
    users: Cache<String, Arc<UserEntry>>,
    /// The largest `until_unix` of any session revocation recorded.
    sessions_until: AtomicU64,
    /// The largest `cutoff_iat` of any user revocation recorded.
    users_cutoff: AtomicU64,
}

impl Default for Revocations {
    fn default() -> Self {
        Self::new()
    }
}

impl Revocations {
    /// An empty cache. Fill it from the store before serving requests.
    pub fn new() -> Self {
        Revocations {
            sessions: Cache::builder().expire_after(UntilExpiry).build(),
            users: Cache::builder().expire_after(UntilExpiry).build(),
            sessions_until: AtomicU64::new(0),
            users_cutoff: AtomicU64::new(0),
        }
    }

    /// Revokes every token of session `sid` until `until_unix` (the latest `exp` of its tokens
    /// plus leeway). Revoking it again keeps the later expiry.
    pub fn revoke_session(&self, sid: &str, until_unix: u64, now_unix: u64) {
        // The mark first: a reader that sees the entry must not be turned away by the mark.
        self.sessions_until.fetch_max(until_unix, Ordering::SeqCst);
        self.sessions.entry_by_ref(sid).and_upsert_with(|old| {
            let until = old.map_or(until_unix, |e| e.into_value().until_unix.max(until_unix));
            SessionEntry {
                until_unix: until,
                ttl: ttl(until, now_unix),
            }
        });
    }

    /// Revokes every token of a user issued at or before a cutoff, except one session's. A
    /// later cutoff replaces an earlier one (see the module doc).
    pub fn revoke_user_before(&self, cutoff: &UserCutoff<'_>, now_unix: u64) {
        self.users_cutoff
            .fetch_max(cutoff.cutoff_iat, Ordering::SeqCst);
        self.users
            .entry_by_ref(cutoff.user_id)
            .and_upsert_with(|old| {
                let merged = match old {
                    None => UserEntry::from(cutoff),
                    Some(old) => old.into_value().merge(cutoff),
                };
                Arc::new(UserEntry {
                    ttl: ttl(merged.until_unix, now_unix),
                    ..merged
                })
            });
    }

    /// Whether a verified token has been revoked at `now_unix` (the app clock). Runs on every
    /// proxied request: at most two
    /// hash lookups borrowing the claims' strings, no allocation, and none at all while the
    /// high-water marks rule every entry out (see [`Revocations`]).
    pub fn is_revoked(&self, claims: &Claims, now_unix: u64) -> bool {
        let sessions_until = self.sessions_until.load(Ordering::SeqCst);
        let users_cutoff = self.users_cutoff.load(Ordering::SeqCst);
        (now_unix <= sessions_until.saturating_add(EXPIRY_MARGIN_SECS)
            && self.sessions.contains_key(claims.sid.as_str()))
            || (claims.iat <= users_cutoff
                && self
                    .users
                    .get(claims.sub.as_str())
                    .is_some_and(|user| user.covers(claims)))
    }

    /// The smallest `iat` a token issued now for `user_id` may carry so that no revocation in
    /// force covers it: one past the user's cutoff, or 0 if there is none. Pass it as
    /// `Identity::min_iat`.
    pub fn min_iat(&self, user_id: &str) -> u64 {
        self.users
            .get(user_id)
            .map_or(0, |user| user.cutoff_iat.saturating_add(1))
    }

    /// The number of entries in force (sessions plus users), for metrics. Runs the caches'
    /// pending maintenance first so that expired entries are not counted.
    pub fn len(&self) -> u64 {
        self.sessions.run_pending_tasks();
        self.users.run_pending_tasks();
        self.sessions.entry_count() + self.users.entry_count()
    }

    /// Whether no revocation is in force.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A revoked session. `ttl` is computed from the caller's clock when written, because moka's
/// expiry runs on its own monotonic clock and has no other way to learn the injected time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SessionEntry {
    until_unix: u64,
    ttl: Duration,
}

/// A user cutoff, shared behind an `Arc` so that a lookup clones a pointer, not a string.
#[derive(Debug, Clone, PartialEq, Eq)]
struct UserEntry {
    cutoff_iat: u64,
    except_sid: Option<Box<str>>,
    until_unix: u64,
    ttl: Duration,
}

impl From<&UserCutoff<'_>> for UserEntry {
    fn from(c: &UserCutoff<'_>) -> Self {
        UserEntry {
            cutoff_iat: c.cutoff_iat,
            except_sid: c.except_sid.map(Box::from),
            until_unix: c.until_unix,
            // Recomputed by the caller from the merged `until_unix`.
            ttl: Duration::ZERO,
        }
    }
}

impl UserEntry {
    fn covers(&self, claims: &Claims) -> bool {
        claims.iat <= self.cutoff_iat && self.except_sid.as_deref() != Some(claims.sid.as_str())
    }

    /// Combines an entry in force with a new cutoff for the same user.
    fn merge(&self, new: &UserCutoff<'_>) -> UserEntry {
        let until_unix = self.until_unix.max(new.until_unix);
        let winner = match self.cutoff_iat.cmp(&new.cutoff_iat) {
            std::cmp::Ordering::Greater => self.clone(),
            std::cmp::Ordering::Less => UserEntry::from(new),
            // Same second: keep an exception only if both revocations made the same one.
            std::cmp::Ordering::Equal => UserEntry {
                except_sid: self
                    .except_sid
                    .clone()
                    .filter(|s| Some(&**s) == new.except_sid),
                ..self.clone()
            },
        };
        UserEntry {
            until_unix,
            ..winner
        }
    }
}

/// How long an entry must live: until `until_unix` by the caller's clock, plus the margin.
/// moka saturates instants far in the future, so any `until_unix` is safe here.
fn ttl(until_unix: u64, now_unix: u64) -> Duration {
    Duration::from_secs(
        until_unix
            .saturating_sub(now_unix)
            .saturating_add(EXPIRY_MARGIN_SECS),
    )
}

/// Entries carry their own time to live, set afresh on every write.
trait HasTtl {
    fn ttl(&self) -> Duration;
}

impl HasTtl for SessionEntry {
    fn ttl(&self) -> Duration {
        self.ttl
    }
}

impl HasTtl for Arc<UserEntry> {
    fn ttl(&self) -> Duration {
        self.ttl
    }
}

/// Expires each entry when the tokens it covers would have expired. Reads leave the expiry
/// alone (moka's default), and updates take the merged entry's new one.
struct UntilExpiry;

impl<V: HasTtl> Expiry<String, V> for UntilExpiry {
    fn expire_after_create(&self, _key: &String, value: &V, _at: Instant) -> Option<Duration> {
        Some(value.ttl())
    }

    fn expire_after_update(
        &self,
        _key: &String,
        value: &V,
        _at: Instant,
        _remaining: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.ttl())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u64 = 1_700_000_000;
    const TTL: u64 = 900;

    fn claims(sub: &str, sid: &str, iat: u64) -> Claims {
        Claims {
            sub: sub.into(),
            email: format!("{sub}@example.com"),
            roles: vec!["reader".into()],
            email_verified: true,
            iss: "gatehouse".into(),
            aud: "api".into(),
            iat,
            nbf: iat,
            exp: iat + TTL,
            jti: "j".into(),
            sid: sid.into(),
            token_use: "access".into(),
            amr: vec!["pwd".into()],
        }
    }

    /// A revocation as the auth endpoints would record it.
    enum Op {
        Session(&'static str, u64),
        User(&'static str, u64, Option<&'static str>),
    }

    fn apply(r: &Revocations, ops: &[Op]) {
        for op in ops {
            match *op {
                Op::Session(sid, at) => r.revoke_session(sid, at + TTL, at),
                Op::User(user_id, at, except_sid) => r.revoke_user_before(
                    &UserCutoff {
                        user_id,
                        cutoff_iat: at,
                        except_sid,
                        until_unix: at + TTL,
                    },
                    at,
                ),
            }
        }
    }

    /// Applies `ops`, then checks each `(sub, sid, iat) -> revoked` expectation.
    fn check(ops: &[Op], expect: &[(&str, &str, u64, bool)]) {
        let r = Revocations::new();
        apply(&r, ops);
        for &(sub, sid, iat, revoked) in expect {
            assert_eq!(
                r.is_revoked(&claims(sub, sid, iat), T),
                revoked,
                "token of {sub} in session {sid} issued at {iat}"
            );
        }
    }

    #[test]
    fn nothing_revoked_by_default() {
        check(&[], &[("u1", "s1", T, false)]);
    }

    #[test]
    fn session_revocation_covers_that_session_only() {
        check(
            &[Op::Session("s1", T)],
            &[
                ("u1", "s1", T - 100, true),
                ("u1", "s1", T, true),
                ("u1", "s1", T + 100, true),
                ("u1", "s2", T, false),
                ("u2", "s3", T, false),
            ],
        );
    }

    #[test]
    fn user_cutoff_is_inclusive() {
        check(
            &[Op::User("u1", T, None)],
            &[
                ("u1", "s1", T - 1, true),
                ("u1", "s1", T, true),
                ("u1", "s1", T + 1, false),
                ("u2", "s1", T, false),
            ],
        );
    }

    #[test]
    fn user_cutoff_can_keep_one_session() {
        check(
            &[Op::User("u1", T, Some("current"))],
            &[
                ("u1", "current", T, false),
                ("u1", "current", T - 50, false),
                ("u1", "other", T, true),
                ("u1", "other", T + 1, false),
            ],
        );
    }

    #[test]
    fn the_kept_session_can_still_log_out() {
        check(
            &[
                Op::User("u1", T, Some("current")),
                Op::Session("current", T + 10),
            ],
            &[("u1", "current", T, true), ("u1", "current", T + 10, true)],
        );
    }

    #[test]
    fn the_later_cutoff_wins_in_any_order() {
        let later_wins = [
            ("u1", "a", T + 50, true),
            ("u1", "b", T + 50, false),
            ("u1", "b", T + 100, false),
            ("u1", "a", T + 101, false),
        ];
        check(
            &[
                Op::User("u1", T, Some("a")),
                Op::User("u1", T + 100, Some("b")),
            ],
            &later_wins,
        );
        check(
            &[
                Op::User("u1", T + 100, Some("b")),
                Op::User("u1", T, Some("a")),
            ],
            &later_wins,
        );
    }

    #[test]
    fn same_second_cutoffs_keep_only_a_shared_exception() {
        check(
            &[Op::User("u1", T, Some("a")), Op::User("u1", T, Some("b"))],
            &[("u1", "a", T, true), ("u1", "b", T, true)],
        );
        check(
            &[Op::User("u1", T, Some("a")), Op::User("u1", T, None)],
            &[("u1", "a", T, true)],
        );
        check(
            &[Op::User("u1", T, Some("a")), Op::User("u1", T, Some("a"))],
            &[("u1", "a", T, false), ("u1", "b", T, true)],
        );
    }

    #[test]
    fn the_marks_skip_only_what_no_entry_could_cover() {
        let r = Revocations::new();
        // Nothing recorded: nothing is revoked, and no lookup is needed to say so.
        assert!(!r.is_revoked(&claims("u1", "s1", T), T));
        apply(&r, &[Op::Session("s1", T), Op::User("u2", T, None)]);
        // A session entry covers its tokens whenever they were issued, while it lives: up to
        // its bound plus the margin, by the app clock.
        for iat in [T - 100, T, T + 100] {
            assert!(r.is_revoked(&claims("u1", "s1", iat), T));
        }
        let bound = T + TTL + EXPIRY_MARGIN_SECS;
        assert!(r.is_revoked(&claims("u1", "s1", T), bound));
        // Past every bound, no session entry is in force: the mark answers.
        assert!(!r.is_revoked(&claims("u1", "s1", T), bound + 1));
        // A user cutoff covers tokens issued up to it, and the mark passes later ones.
        assert!(r.is_revoked(&claims("u2", "other", T), T));
        assert!(!r.is_revoked(&claims("u2", "other", T + 1), T));
        // A later revocation raises the marks again.
        apply(&r, &[Op::Session("s9", T + 1000)]);
        assert!(r.is_revoked(&claims("u1", "s9", T), bound + 1));
    }

    #[test]
    fn min_iat_lets_same_second_logins_survive() {
        let r = Revocations::new();
        assert_eq!(r.min_iat("u1"), 0);
        apply(&r, &[Op::User("u1", T, None)]);
        assert_eq!(r.min_iat("u1"), T + 1);
        assert_eq!(r.min_iat("u2"), 0);
        // A login in the revoking second: without the floor it would be born revoked.
        assert!(r.is_revoked(&claims("u1", "new", T), T));
        assert!(!r.is_revoked(&claims("u1", "new", T.max(r.min_iat("u1"))), T));
    }

    /// A token of `u1` for session `sid`, minted at `now` with the floor `r` gives it.
    fn issue_for(tokens: &crate::token::Tokens, r: &Revocations, sid: &str, now: u64) -> String {
        let roles = vec!["reader".to_owned()];
        let id = crate::token::Identity {
            user_id: "u1",
            email: "u1@example.com",
            roles: &roles,
            email_verified: true,
            session_id: sid,
            min_iat: r.min_iat("u1"),
            amr: &["pwd"],
        };
        tokens.issue(&id, now).unwrap().0
    }

    #[test]
    fn works_with_issued_tokens() {
        use crate::token::{TokenSettings, Tokens};
        let tokens = Tokens::new(TokenSettings::hs256(&[7; 32], "gatehouse", "api", TTL, 5));
        let r = Revocations::new();
        let issue = |sid: &str, now: u64| {
            tokens
                .verify(&issue_for(&tokens, &r, sid, now), now)
                .unwrap()
        };
        let old = issue("old", T);
        let current = issue("current", T);
        // Password change from `current` at T, then a fresh login in that same second.
        apply(&r, &[Op::User("u1", T, Some("current"))]);
        let fresh = issue("fresh", T);
        assert!(r.is_revoked(&old, T));
        assert!(!r.is_revoked(&current, T));
        assert!(!r.is_revoked(&fresh, T));
    }

    /// Found by the crash torture: several user-wide revocations and logins of one user in
    /// one second ratchet the cutoff, and so the next token's `iat`, seconds past the clock.
    /// Those tokens must still verify (the verifier allows gatehouse's own floor) and must
    /// not be revoked, while each revocation still covers the tokens minted before it.
    #[test]
    fn a_burst_of_revocations_in_one_second_leaves_fresh_tokens_usable() {
        use crate::token::{TokenSettings, Tokens};
        // Leeway 1 s, as the torture runs.
        let tokens = Tokens::new(TokenSettings::hs256(&[7; 32], "gatehouse", "api", TTL, 1));
        let r = Revocations::new();
        let mut earlier = Vec::new();
        for round in 0..8 {
            let token = issue_for(&tokens, &r, &format!("s{round}"), T);
            let claims = tokens
                .verify(&token, T)
                .unwrap_or_else(|e| panic!("round {round}: {e:?}"));
            assert!(!r.is_revoked(&claims, T), "round {round}: born revoked");
            earlier.push(claims);
            // A password reset in the same second, its cutoff as `App::revoke_user_tokens`
            // computes it.
            let cutoff = T.max(r.min_iat("u1"));
            apply(&r, &[Op::User("u1", cutoff, None)]);
            for (i, old) in earlier.iter().enumerate() {
                assert!(r.is_revoked(old, T), "round {round}: token {i} survived");
            }
        }
        assert!(
            r.min_iat("u1") > T + 5,
            "the floor did run ahead of the clock"
        );
    }

    #[test]
    fn repeated_session_revocation_keeps_the_later_expiry() {
        let r = Revocations::new();
        r.revoke_session("s1", T + 900, T);
        r.revoke_session("s1", T + 100, T + 50);
        let entry = r.sessions.get("s1").unwrap();
        assert_eq!(entry.until_unix, T + 900);
        assert_eq!(entry.ttl, Duration::from_secs(850 + EXPIRY_MARGIN_SECS));
    }

    #[test]
    fn user_merge_keeps_the_later_expiry() {
        let r = Revocations::new();
        apply(&r, &[Op::User("u1", T + 100, None)]);
        r.revoke_user_before(
            &UserCutoff {
                user_id: "u1",
                cutoff_iat: T,
                except_sid: None,
                until_unix: T + 5000,
            },
            T + 100,
        );
        let entry = r.users.get("u1").unwrap();
        assert_eq!((entry.cutoff_iat, entry.until_unix), (T + 100, T + 5000));
        assert_eq!(entry.ttl, Duration::from_secs(4900 + EXPIRY_MARGIN_SECS));
    }

    #[test]
    fn every_entry_gets_a_finite_expiry() {
        let cases = [
            ("ordinary", T + TTL, T, TTL + EXPIRY_MARGIN_SECS),
            ("already over", T - 10, T, EXPIRY_MARGIN_SECS),
            ("far future", u64::MAX, 0, u64::MAX),
        ];
        for (name, until, now, secs) in cases {
            let want = Some(Duration::from_secs(secs));
            let session = SessionEntry {
                until_unix: until,
                ttl: ttl(until, now),
            };
            let user = Arc::new(UserEntry {
                cutoff_iat: now,
                except_sid: None,
                until_unix: until,
                ttl: ttl(until, now),
            });
            let key = String::new();
            let at = Instant::now();
            assert_eq!(
                UntilExpiry.expire_after_create(&key, &session, at),
                want,
                "{name}"
            );
            assert_eq!(
                UntilExpiry.expire_after_create(&key, &user, at),
                want,
                "{name}"
            );
            assert_eq!(
                UntilExpiry.expire_after_update(&key, &session, at, None),
                want,
                "{name}"
            );
            assert_eq!(
                UntilExpiry.expire_after_update(&key, &user, at, None),
                want,
                "{name}"
            );
        }
    }

    #[test]
    fn len_counts_both_kinds() {
        let r = Revocations::new();
        assert!(r.is_empty());
        apply(
            &r,
            &[
                Op::Session("s1", T),
                Op::Session("s1", T + 1),
                Op::Session("s2", T),
                Op::User("u1", T, None),
                Op::User("u1", T + 1, None),
            ],
        );
        assert_eq!(r.len(), 3);
    }
}
