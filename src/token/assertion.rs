//! Signed identity for upstreams (`[headers] assertion`): a short-lived JWT, signed with the
//! active asymmetric key, that tells an upstream who the verified caller is in a form it can
//! check against `/.well-known/jwks.json`, so that it need not take plain identity headers
//! on trust (issue 14, item 5; API.md §3).
//!
//! Decisions, and why:
//!
//! - **Never an access token.** The header's `typ` is [`ASSERTION_TYP`] and the payload's
//!   `token_use` is [`ASSERTION_TOKEN_USE`], so gatehouse's own verifier (which requires
//!   `at+jwt` and `access`) refuses an assertion presented as a bearer token, whatever
//!   its audience; the config also refuses an assertion audience equal to
//!   `tokens.audience`, so an upstream that verifies access tokens by audience alone cannot
//!   take one for the other either.
//! - **Asymmetric keys only.** The config refuses the setting under HS256: an upstream would
//!   need the secret to verify, and whoever holds the secret can mint access tokens.
//! - **Short and bounded.** The lifetime is `headers.assertion_ttl` (default 30 s, at most
//!   [`MAX_ASSERTION_TTL_SECS`]): it proves a request passed gatehouse just now, not a session.
//! - **Signed once per identity, not per request.** An EdDSA signature costs tens of
//!   microseconds, an RS256 one far more; the assertion is a pure function of the identity
//!   claims it carries (`sub`, `email`, `roles`, `amr`) and the settings, so it is cached by
//!   exactly those, in a bounded direct-mapped table like the verified-token cache, and
//!   reused while at least half its lifetime is left: an upstream always receives one with
//!   at least `ttl / 2` to run. A role change, a second factor or another user is another
//!   key and so another assertion; a revoked token never reaches this point (the gate
//!   refuses it first). The `jti` therefore names the assertion, not the request: it repeats
//!   on requests served from the cache and is no replay nonce.
//! - **Time is injected** as everywhere in `token/`.

use std::sync::Mutex;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::HeaderValue;
use serde::Serialize;

use super::cache::Slots;
use super::{Claims, MintError, SigningKey};

/// The JOSE header `typ` of an assertion: never `at+jwt`, so no verifier that checks the
/// type (RFC 9068 §4) takes it for an access token.
pub const ASSERTION_TYP: &str = "gatehouse-assertion+jwt";

/// The `token_use` claim of an assertion.
pub const ASSERTION_TOKEN_USE: &str = "assertion";

/// The longest lifetime an assertion may have, in seconds.
pub const MAX_ASSERTION_TTL_SECS: u64 = 60;

/// What [`Assertions`] is built from; `HeadersConfig::assertion_settings` makes it from a
/// validated config (an asymmetric signing key, the lifetime within bounds).
#[derive(Clone, Debug)]
pub struct AssertionSettings {
    /// The active signing key (the first of `[[tokens.keys]]`).
    pub signing: SigningKey,
    /// `iss`: `tokens.issuer`.
    pub issuer: String,
    /// `aud`: `headers.assertion_audience`, or the upstream URL's origin.
    pub audience: String,
    /// Lifetime in seconds, 1..=[`MAX_ASSERTION_TTL_SECS`].
    pub ttl_secs: u64,
    /// Slots of the cache of signed assertions (0: sign on every request).
    pub cache: usize,
}

/// Whether an assertion was signed for this request or taken from the cache; for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Signed,
    Cached,
}

/// Mints assertions, with the cache of signed ones. Built once per config generation.
pub struct Assertions {
    signing: SigningKey,
    /// The encoded header and its `.`, the same for every assertion of this key.
    prefix: String,
    issuer: String,
    audience: String,
    ttl_secs: u64,
    slots: Slots<Entry>,
}

impl std::fmt::Debug for Assertions {
    // The key stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assertions")
            .field("kid", &self.signing.kid())
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("ttl_secs", &self.ttl_secs)
            .field("cache", &self.slots.len())
            .finish_non_exhaustive()
    }
}

/// One signed assertion and the identity it was signed for.
struct Entry {
    sub: Box<str>,
    email: Box<str>,
    roles: Box<[String]>,
    amr: Box<[String]>,
    value: HeaderValue,
    /// Reused while `now < fresh_until`: half its lifetime.
    fresh_until: u64,
}

impl Entry {
    fn is_for(&self, c: &Claims) -> bool {
        *self.sub == *c.sub
            && *self.email == *c.email
            && *self.roles == *c.roles
            && *self.amr == *c.amr
    }
}

#[derive(Serialize)]
struct Header<'a> {
    alg: &'a str,
    typ: &'a str,
    kid: &'a str,
}

/// The payload (API.md §3): identity, issuer, audience, times, id, and the marker.
#[derive(Serialize)]
struct Payload<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: &'a str,
    email: &'a str,
    roles: &'a [String],
    amr: &'a [String],
    iat: u64,
    exp: u64,
    jti: &'a str,
    token_use: &'a str,
}

impl Assertions {
    /// Prepares the header and the cache.
    pub fn new(s: AssertionSettings) -> Assertions {
        let header = Header {
            alg: s.signing.algorithm().name(),
            typ: ASSERTION_TYP,
            kid: s.signing.kid(),
        };
        // Serialising three plain strings cannot fail; an empty prefix would make `sign`
        // refuse rather than send a broken token.
        let prefix = serde_json::to_vec(&header)
            .map(|h| format!("{}.", URL_SAFE_NO_PAD.encode(h)))
            .unwrap_or_default();
        Assertions {
            signing: s.signing,
            prefix,
            issuer: s.issuer,
            audience: s.audience,
            ttl_secs: s.ttl_secs.clamp(1, MAX_ASSERTION_TTL_SECS),
            slots: Slots::new(s.cache),
        }
    }

    /// The audience assertions carry.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// The assertion for the caller of these verified claims at `now_unix`, from the cache
    /// while it has at least half its lifetime left, else freshly signed (and cached).
    pub fn for_claims(
        &self,
        claims: &Claims,
        now_unix: u64,
    ) -> Result<(HeaderValue, Source), MintError> {
        let slot = self.slot(claims);
        if let Some(slot) = slot {
            // A poisoned slot still holds a whole entry or none (writes replace it at once).
            let held = slot.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(entry) = held.as_ref()
                && entry.is_for(claims)
                && now_unix < entry.fresh_until
            {
                return Ok((entry.value.clone(), Source::Cached));
            }
        }
        // Signed outside the slot's lock: a second request of the same identity meanwhile
        // signs its own, and the later write wins; both are valid.
        let value = self.sign(claims, now_unix)?;
        if let Some(slot) = slot {
            let entry = Entry {
                sub: claims.sub.as_str().into(),
                email: claims.email.as_str().into(),
                roles: claims.roles.clone().into_boxed_slice(),
                amr: claims.amr.clone().into_boxed_slice(),
                value: value.clone(),
                fresh_until: now_unix.saturating_add(self.ttl_secs.div_ceil(2)),
            };
            *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(entry);
        }
        Ok((value, Source::Signed))
    }

    /// A freshly signed assertion, bypassing the cache.
    pub fn sign(&self, claims: &Claims, now_unix: u64) -> Result<HeaderValue, MintError> {
        if self.prefix.is_empty() {
            return Err(MintError("header"));
        }
        let jti = super::new_jti(now_unix)?;
        let payload = Payload {
            iss: &self.issuer,
            aud: &self.audience,
            sub: &claims.sub,
            email: &claims.email,
            roles: &claims.roles,
            amr: &claims.amr,
            iat: now_unix,
            exp: now_unix.saturating_add(self.ttl_secs),
            jti: &jti,
            token_use: ASSERTION_TOKEN_USE,
        };
        let payload = serde_json::to_vec(&payload).map_err(|_| MintError("claims"))?;
        let mut token = String::with_capacity(self.prefix.len() + payload.len() * 2 + 400);
        token.push_str(&self.prefix);
        URL_SAFE_NO_PAD.encode_string(&payload, &mut token);
        let signature = self.signing.sign(token.as_bytes())?;
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&signature, &mut token);
        // base64url and dots: always a valid header value.
        HeaderValue::from_maybe_shared(Bytes::from(token)).map_err(|_| MintError("header"))
    }

    fn slot(&self, claims: &Claims) -> Option<&Mutex<Option<Entry>>> {
        // Keyed by everything the payload takes from the claims, under a per-process SipHash
        // key, so which slot an identity lands in says nothing an attacker can use.
        self.slots
            .slot((&claims.sub, &claims.email, &claims.roles, &claims.amr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::{Algorithm, TokenError, TokenSettings, Tokens, keys};
    use jsonwebtoken::{DecodingKey, Validation};
    use serde_json::Value;

    const NOW: u64 = 1_700_000_000;

    fn key() -> SigningKey {
        let (pem, _) = keys::generate(Algorithm::EdDSA).unwrap();
        SigningKey::from_pem(pem.as_bytes(), Algorithm::EdDSA, Some("k1")).unwrap()
    }

    fn assertions(key: &SigningKey, audience: &str, cache: usize) -> Assertions {
        Assertions::new(AssertionSettings {
            signing: key.clone(),
            issuer: "gatehouse".into(),
            audience: audience.into(),
            ttl_secs: 30,
            cache,
        })
    }

    fn claims(sub: &str, roles: &[&str]) -> Claims {
        Claims {
            sub: sub.into(),
            email: format!("{sub}@example.com"),
            roles: roles.iter().map(|r| (*r).to_string()).collect(),
            email_verified: true,
            iss: "gatehouse".into(),
            aud: "api".into(),
            iat: NOW,
            nbf: NOW,
            exp: NOW + 900,
            jti: "j".into(),
            sid: "s1".into(),
            token_use: "access".into(),
            amr: vec!["pwd".into()],
        }
    }

    fn decode(key: &SigningKey, token: &str, audience: &str) -> (jsonwebtoken::Header, Value) {
        let jwk: jsonwebtoken::jwk::Jwk =
            serde_json::from_value(key.verify_key().jwk().unwrap()).unwrap();
        let mut validation = Validation::new(jsonwebtoken::Algorithm::EdDSA);
        validation.set_audience(&[audience]);
        validation.set_issuer(&["gatehouse"]);
        validation.validate_exp = false;
        let data = jsonwebtoken::decode::<Value>(
            token,
            &DecodingKey::from_jwk(&jwk).unwrap(),
            &validation,
        )
        .unwrap();
        (data.header, data.claims)
    }

    #[test]
    fn an_assertion_carries_the_identity_and_verifies_with_the_public_key() {
        let key = key();
        let a = assertions(&key, "http://app:3000", 16);
        let (value, source) = a.for_claims(&claims("u1", &["reader"]), NOW).unwrap();
        assert_eq!(source, Source::Signed);
        let (header, body) = decode(&key, value.to_str().unwrap(), "http://app:3000");
        assert_eq!(header.typ.as_deref(), Some(ASSERTION_TYP));
        assert_eq!(header.kid.as_deref(), Some("k1"));
        assert_eq!(body["sub"], "u1");
        assert_eq!(body["email"], "u1@example.com");
        assert_eq!(body["roles"], serde_json::json!(["reader"]));
        assert_eq!(body["amr"], serde_json::json!(["pwd"]));
        assert_eq!(body["iat"], NOW);
        assert_eq!(body["exp"], NOW + 30);
        assert_eq!(body["token_use"], ASSERTION_TOKEN_USE);
        assert!(body["jti"].as_str().is_some_and(|j| j.len() == 36));
    }

    #[test]
    fn the_cache_reuses_an_assertion_for_half_its_life_and_per_identity_only() {
        let key = key();
        let a = assertions(&key, "http://app:3000", 16);
        let ada = claims("u1", &["reader"]);
        let (first, _) = a.for_claims(&ada, NOW).unwrap();
        let (again, source) = a.for_claims(&ada, NOW + 14).unwrap();
        assert_eq!((again.clone(), source), (first.clone(), Source::Cached));
        // At half its lifetime it is signed afresh, with a later exp.
        let (later, source) = a.for_claims(&ada, NOW + 15).unwrap();
        assert_eq!(source, Source::Signed);
        assert_ne!(later, first);
        // Another role set, another second factor, another user: never the cached one.
        let mut promoted = ada.clone();
        promoted.roles.push("admin".into());
        let mut otp = ada.clone();
        otp.amr.push("otp".into());
        for other in [promoted, otp, claims("u2", &["reader"])] {
            let (value, source) = a.for_claims(&other, NOW + 15).unwrap();
            assert_eq!(source, Source::Signed, "{other:?}");
            let (_, body) = decode(&key, value.to_str().unwrap(), "http://app:3000");
            assert_eq!(body["sub"], other.sub);
            assert_eq!(body["roles"], serde_json::json!(other.roles));
            assert_eq!(body["amr"], serde_json::json!(other.amr));
        }
        // Off: every call signs.
        let off = assertions(&key, "http://app:3000", 0);
        let (x, _) = off.for_claims(&ada, NOW).unwrap();
        let (y, source) = off.for_claims(&ada, NOW).unwrap();
        assert_eq!(source, Source::Signed);
        assert_ne!(x, y);
    }

    #[test]
    fn the_cache_is_bounded() {
        let key = key();
        let a = assertions(&key, "http://app:3000", 3);
        assert_eq!(a.slots.len(), 4);
        let users: Vec<Claims> = (0..64).map(|i| claims(&format!("u{i}"), &["r"])).collect();
        for c in &users {
            a.for_claims(c, NOW).unwrap();
        }
        let held = users
            .iter()
            .filter(|c| a.for_claims(c, NOW).unwrap().1 == Source::Cached)
            .count();
        assert!(held <= 4, "{held} cached in 4 slots");
    }

    /// An assertion is never an access token, even one whose audience is the access
    /// tokens' (the config refuses that, but the verifier must not rely on it).
    #[test]
    fn the_access_token_verifier_refuses_an_assertion() {
        let key = key();
        let settings = TokenSettings {
            signing: key.clone(),
            verify_only: Vec::new(),
            ..TokenSettings::hs256(b"unused", "gatehouse", "api", 900, 5)
        };
        let tokens = Tokens::new(settings.clone()).with_cache(16);
        let general = Tokens::new(settings).general_path_only();
        for audience in ["api", "http://app:3000"] {
            let token = assertions(&key, audience, 0)
                .sign(&claims("u1", &["reader"]), NOW)
                .unwrap();
            let token = token.to_str().unwrap();
            for verifier in [&tokens, &general] {
                let got = verifier.verify_shared(token, NOW);
                assert!(
                    matches!(got, Err(TokenError::Invalid(_))),
                    "audience {audience}: {got:?}"
                );
            }
        }
        // The same identity as an access token of the same key verifies: the refusal above
        // is the type's, not the key's.
        let roles = vec!["reader".to_string()];
        let (access, _) = tokens
            .issue(
                &crate::token::Identity {
                    user_id: "u1",
                    email: "u1@example.com",
                    roles: &roles,
                    email_verified: true,
                    session_id: "s1",
                    min_iat: 0,
                    amr: &[crate::token::AMR_PWD],
                },
                NOW,
            )
            .unwrap();
        assert!(tokens.verify(&access, NOW).is_ok());
    }
}
