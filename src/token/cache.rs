//! A bounded cache of verified access tokens, so that a client presenting the same token
//! again skips the signature and the JSON.
//!
//! Clients reuse an access token for its whole life (15 minutes by default), so on a busy
//! proxy almost every request carries a token that was verified before. Verifying costs an
//! HMAC over the whole token, two base64 decodes and a JSON parse with a dozen allocations:
//! most of the verified path's work. A hit here costs a keyed hash of the signature, a
//! constant-time comparison of it and one comparison of the rest.
//!
//! Decisions, and why:
//!
//! - **Only what the bytes decide is cached.** An entry says "these exact bytes carry a good
//!   signature, the right issuer, audience and type, and these claims". Time (`nbf`, `exp`)
//!   is checked on every use by the caller (`super::check_time`), and revocation is
//!   never cached: a hit still goes through the revocation check. A token is only ever
//!   inserted after it verified, so the cache cannot make a token good that was not.
//! - **Direct-mapped and fixed.** `entries` slots (a power of two), allocated once; a new
//!   token replaces whatever its slot held. No lists, no clocks, no background task, and
//!   memory is bounded by the slot count times the size of one token and its claims (about
//!   1 KiB). A flood of distinct forged tokens never gets in (they fail verification), and a
//!   flood of distinct genuine ones only evicts, so the worst case is today's cost.
//! - **No timing oracle.** The slot is chosen by SipHash of the signature under a key drawn
//!   at start (std's `RandomState`), so which slot a token lands in says nothing an attacker
//!   can use; the signature is then compared in constant time, and only a presented token
//!   that carries the cached token's exact signature reaches the ordinary comparison of the
//!   rest (the header and payload, which whoever holds the signature already holds too).
//! - **A new key set empties it.** The cache belongs to one [`super::Tokens`], built from
//!   one set of keys; adding or removing a key means another `Tokens` and a fresh cache, so a
//!   token of a removed key is never found here as good.
//! - **Every algorithm goes through it.** It is keyed by the token's bytes whatever signed
//!   them, and pays most where verifying costs most: an EdDSA or ES256 signature check takes
//!   tens of microseconds and an RS256 one more, against well under one for a hit
//!   (`benches/hot_path.rs`, `token_verify_by_algorithm`; figures in the README).

use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::{Arc, Mutex};

use super::Claims;

/// A fixed, direct-mapped table: a power of two of slots, each a whole entry or none, the
/// slot picked by SipHash of a key under a key drawn at start. The verified-token cache and
/// the signed assertions' cache (`assertion.rs`) are both one.
pub(super) struct Slots<E> {
    slots: Box<[Mutex<Option<E>>]>,
    mask: usize,
    hasher: RandomState,
}

impl<E> Slots<E> {
    /// `entries` slots, rounded up to a power of two (0: none, every lookup misses).
    pub(super) fn new(entries: usize) -> Slots<E> {
        let len = if entries == 0 {
            0
        } else {
            entries.next_power_of_two()
        };
        Slots {
            slots: (0..len).map(|_| Mutex::new(None)).collect(),
            mask: len.saturating_sub(1),
            hasher: RandomState::new(),
        }
    }

    /// The number of slots (0 when off).
    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }

    /// The slot `key` maps to; `None` when there are no slots.
    pub(super) fn slot(&self, key: impl Hash) -> Option<&Mutex<Option<E>>> {
        if self.slots.is_empty() {
            return None;
        }
        let hash = self.hasher.hash_one(key);
        // Truncation is the point: the low bits pick the slot.
        #[allow(clippy::cast_possible_truncation)]
        self.slots.get(hash as usize & self.mask)
    }
}

/// The cache. `entries == 0` turns it off: every lookup misses and nothing is stored.
pub struct VerifiedCache {
    slots: Slots<Entry>,
}

struct Entry {
    token: Box<str>,
    claims: Arc<Claims>,
}

impl VerifiedCache {
    /// A cache of `entries` slots, rounded up to a power of two (0: off).
    pub fn new(entries: usize) -> VerifiedCache {
        VerifiedCache {
            slots: Slots::new(entries),
        }
    }

    /// The number of slots (0 when off).
    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// The claims of `token` if exactly this token was verified and stored before.
    pub fn get(&self, token: &str) -> Option<Arc<Claims>> {
        let signature = signature(token);
        let slot = self.slot(signature)?;
        // A poisoned slot only means a panic while it was held; its content is still a whole
        // entry or none (writes replace the Option in one move).
        let entry = slot.lock().unwrap_or_else(|e| e.into_inner());
        let entry = entry.as_ref()?;
        same_token(&entry.token, token, signature).then(|| entry.claims.clone())
    }

    /// Remembers that `token` verified with `claims`. Call only after a full verification.
    pub fn insert(&self, token: &str, claims: Arc<Claims>) {
        if let Some(slot) = self.slot(signature(token)) {
            let entry = Entry {
                token: token.into(),
                claims,
            };
            *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(entry);
        }
    }

    fn slot(&self, signature: &str) -> Option<&Mutex<Option<Entry>>> {
        self.slots.slot(signature.as_bytes())
    }
}

/// The signature segment: what follows the last `.` (the whole token if there is none).
fn signature(token: &str) -> &str {
    token.rsplit_once('.').map_or(token, |(_, sig)| sig)
}

/// Signatures compared in constant time first; the rest only when they are equal.
/// `b` is `presented`'s signature segment.
fn same_token(cached: &str, presented: &str, b: &str) -> bool {
    let a = signature(cached);
    cached.len() == presented.len()
        && super::ct_eq(a.as_bytes(), b.as_bytes())
        && cached.as_bytes()[..cached.len() - a.len()]
            == presented.as_bytes()[..presented.len() - b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(sub: &str) -> Arc<Claims> {
        Arc::new(Claims {
            sub: sub.into(),
            email: format!("{sub}@example.com"),
            roles: vec!["reader".into()],
            email_verified: true,
            iss: "gatehouse".into(),
            aud: "api".into(),
            iat: 1,
            nbf: 1,
            exp: 2,
            jti: "j".into(),
            sid: "s".into(),
            token_use: "access".into(),
            amr: vec!["pwd".into()],
        })
    }

    #[test]
    fn a_stored_token_is_found_and_only_that_token() {
        let cache = VerifiedCache::new(16);
        cache.insert("aaa.bbb.sig1", claims("u1"));
        assert_eq!(cache.get("aaa.bbb.sig1").unwrap().sub, "u1");
        // Same signature, another message: not the same token.
        assert!(cache.get("aaa.bbc.sig1").is_none());
        // Same message, another signature.
        assert!(cache.get("aaa.bbb.sig2").is_none());
        // A prefix or an extension of it.
        assert!(cache.get("aaa.bbb.sig").is_none());
        assert!(cache.get("aaa.bbb.sig1x").is_none());
        assert!(cache.get("xaaa.bbb.sig1").is_none());
    }

    #[test]
    fn off_stores_nothing() {
        let cache = VerifiedCache::new(0);
        assert_eq!(cache.capacity(), 0);
        cache.insert("a.b.c", claims("u1"));
        assert!(cache.get("a.b.c").is_none());
    }

    #[test]
    fn it_is_bounded_and_newer_tokens_replace_older_ones() {
        let cache = VerifiedCache::new(3);
        assert_eq!(cache.capacity(), 4);
        for i in 0..1000 {
            cache.insert(&format!("h.p.sig{i}"), claims(&format!("u{i}")));
        }
        let held = (0..1000)
            .filter(|i| cache.get(&format!("h.p.sig{i}")).is_some())
            .count();
        assert!((1..=4).contains(&held), "{held} entries held in 4 slots");
        // The last one written is always there: it replaced whatever its slot held.
        assert_eq!(cache.get("h.p.sig999").unwrap().sub, "u999");
    }
}
