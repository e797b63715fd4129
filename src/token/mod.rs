//! Access tokens (JWTs signed with HS256, EdDSA, ES256 or RS256) and the opaque tokens behind
//! refresh, password reset and email verification.
//!
//! This module owns the whole life of a credential string: minting it, recognising it in an
//! `Authorization` header, and deciding whether it is genuine and current. Whether a genuine
//! token has since been revoked is the business of `revocation`; what its roles allow is the
//! business of the policy. The keys themselves are `keys.rs`; what a signed token may
//! contain is `strict.rs`; the signed identity gatehouse hands upstreams (never an access
//! token) is `assertion.rs`.
//!
//! Decisions, and why:
//!
//! - **The key decides the algorithm, never the token.** Every token carries the `kid` of the
//!   key that signed it; verification finds that key and refuses a token whose `alg` is not
//!   the key's own, so `alg: none`, `HS512`, and HS256 keyed with a published public key are
//!   refused before any signature work. An unknown `kid` is refused. `jku`, `x5u`, `jwk` and
//!   `x5c` are never read, let alone fetched. Under HS256 a token without `kid` (minted before
//!   kids were written) is verified with the secret, the only key there is.
//! - **One strict verifier** (`strict.rs`): on every path, a token's header and payload must
//!   be JSON objects without duplicate members, invalid strings or non-finite numbers, the
//!   header without `crit`, and the identity claims must be valid header values (no role
//!   with the roles header's `,`), so that a signed token means one thing to every reader.
//!   These checks run on the decoded segments before the signature, in the same order on
//!   both paths, so both give the same answer and reason for every input.
//! - **Two paths, one outcome.** A token whose header segment is byte for byte one we write
//!   (`alg`, `typ`, `kid` of a known key) skips header parsing and is checked with the
//!   prepared key; any other header goes through `jsonwebtoken` under a `Validation` pinned
//!   to the key's algorithm. Tests and the fuzz target hold the two to the same results.
//! - **Time is injected.** `jsonwebtoken` reads the system clock for `exp` and `nbf`, so its own
//!   time checks are switched off and both are checked here against `now_unix`, with
//!   `leeway_secs` for clock skew, as RFC 7519 words them: a token is usable while
//!   `now < exp + leeway` and once `now + leeway >= nbf`, and is refused when its `iat` is
//!   more than the leeway (plus, for our own tokens, the floor of [`Identity::min_iat`],
//!   at most [`OWN_IAT_FLOOR_MAX_SECS`]) in the future. The presence of `exp`, `nbf`, `iss`,
//!   `aud` and `sub` is still required by the library, and `iss` and `aud` are matched by it.
//! - **Only access tokens pass.** The header carries `typ: "at+jwt"` (RFC 9068 §2.1) and the
//!   payload `token_use: "access"`; both are checked, so no other JWT that might one day be signed
//!   with the same secret is ever taken for an access token. A missing `token_use` counts as the
//!   wrong type, not as an access token.
//! - **Cheap refusals come first.** A token over [`MAX_TOKEN_LEN`] bytes, or one that is not three
//!   non-empty unpadded base64url segments, is refused before any base64 or JSON work, so hostile
//!   input costs one linear scan at most. Nothing in here panics on any input.
//! - **Errors carry a reason label** ([`TokenError::Invalid`]) for metrics and logs; clients only
//!   ever see `TOKEN_INVALID` or `TOKEN_EXPIRED`.
//! - **`jti` is a UUIDv7** built from the injected time and 80 bits from the OS RNG, so ids sort by
//!   issue time in logs and the time part is deterministic in tests.
//! - **`iat` may be raised to a floor** ([`Identity::min_iat`]): a user-wide revocation revokes
//!   every token issued at or before its cutoff second, so a login in that same second must carry
//!   a later `iat` to survive it. `nbf` and `exp` still count from the real `now_unix`, so the
//!   raised `iat` never delays or lengthens the token's use.
//! - **A token seen before is not verified again** ([`Tokens::verify_shared`], `cache.rs`,
//!   `tokens.verify_cache` slots): the bytes decide the signature and the claims, so a
//!   token that verified once has only its time checked on later uses. Revocation is not
//!   this module's business and is checked on every request either way.
//! - **Opaque tokens** are 256 bits from the OS RNG, base64url without padding. Only their SHA-256
//!   is stored: with that much entropy a fast unsalted hash cannot be brute-forced, and a stolen
//!   store yields no usable token. Stored hashes are compared in constant time.

pub mod assertion;
mod cache;
pub mod external;
pub mod keys;
mod strict;

pub use keys::{Algorithm, SigningKey, VerifyKey};
use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Validation;
use jsonwebtoken::errors::ErrorKind;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Longest token accepted, in bytes. Our own tokens are well under 1 KiB; 8 KiB matches the
/// header limits of common proxies and bounds the work an attacker can make verify do.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// The JOSE header `typ` of an access token (RFC 9068 §2.1).
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";

/// The value of the `token_use` claim of an access token.
pub const ACCESS_TOKEN_USE: &str = "access";

/// Bytes of OS randomness in an opaque token: 256 bits, twice the 128 the contract requires.
const OPAQUE_TOKEN_BYTES: usize = 32;

/// What [`Tokens`] needs from the configuration. The config module validates it (the keys
/// loaded and of one algorithm, their `kid`s unique, non-empty issuer and audience) and owns
/// every default; `TokensConfig::settings` builds it, so a reload rebuilds `Tokens` the same
/// way a start does.
#[derive(Clone, Debug)]
pub struct TokenSettings {
    /// The key that signs new tokens (`tokens.secret` under HS256, else the first of
    /// `[[tokens.keys]]`); it verifies too.
    pub signing: SigningKey,
    /// Keys that only verify: the rest of `[[tokens.keys]]`, so tokens signed before a
    /// rotation stay valid until they expire.
    pub verify_only: Vec<VerifyKey>,
    /// `iss` written into and required of every access token.
    pub issuer: String,
    /// `aud` written into and required of every access token.
    pub audience: String,
    /// Lifetime of an access token, in seconds.
    pub access_ttl_secs: u64,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds.
    pub leeway_secs: u64,
}

impl TokenSettings {
    /// HS256 settings under `secret` (tests, benches, and `policy explain`).
    pub fn hs256(secret: &[u8], issuer: &str, audience: &str, ttl: u64, leeway: u64) -> Self {
        TokenSettings {
            signing: SigningKey::hs256(secret),
            verify_only: Vec::new(),
            issuer: issuer.into(),
            audience: audience.into(),
            access_ttl_secs: ttl,
            leeway_secs: leeway,
        }
    }
}

/// Who an access token is issued to.
#[derive(Debug, Clone, Copy)]
pub struct Identity<'a> {
    /// The user id, written as `sub`.
    pub user_id: &'a str,
    /// Written as `email`.
    pub email: &'a str,
    /// Written as `roles`, as stored (the policy expands any hierarchy).
    pub roles: &'a [String],
    /// Written as `email_verified`.
    pub email_verified: bool,
    /// The session (refresh-token family), written as `sid`.
    pub session_id: &'a str,
    /// The smallest `iat` the token may carry: pass `Revocations::min_iat(user_id)`, which is 0
    /// when the user has no revocation in force. See the module doc.
    pub min_iat: u64,
    /// How the session was authenticated (RFC 8176), written as `amr`: `["pwd"]`, or
    /// `["pwd", "otp"]` after a second factor.
    pub amr: &'a [&'static str],
}

/// The claims of an access token (API.md §2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    pub email: String,
    pub roles: Vec<String>,
    pub email_verified: bool,
    pub iss: String,
    pub aud: String,
    /// Issued at, Unix seconds. May be up to one second after `nbf`; see [`Identity::min_iat`].
    pub iat: u64,
    /// Not before, Unix seconds.
    pub nbf: u64,
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// Unique token id.
    pub jti: String,
    /// The session (refresh-token family) this token belongs to.
    pub sid: String,
    /// Always [`ACCESS_TOKEN_USE`] in a token that verifies. Defaults to empty when absent so that
    /// a missing value is reported as the wrong type rather than as a malformed payload.
    #[serde(default)]
    pub token_use: String,
    /// Authentication methods (RFC 8176): `pwd`, and `otp` after a second factor. Absent in
    /// tokens minted before it existed, which therefore never satisfy `mfa = true`; never
    /// written empty (an absent claim reads back as empty, and writes back as absent).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub amr: Vec<String>,
}

impl Claims {
    /// Whether the session behind the token passed a second factor (`otp` in `amr`).
    pub fn has_otp(&self) -> bool {
        self.amr.iter().any(|m| m == AMR_OTP)
    }
}

/// The `amr` value of a password (RFC 8176 §2).
pub const AMR_PWD: &str = "pwd";
/// The `amr` value of a one-time password, TOTP or a recovery code (RFC 8176 §2).
pub const AMR_OTP: &str = "otp";

/// Why a presented access token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// Maps to `TOKEN_INVALID`. The label is for metrics and logs, never for the client:
    /// `malformed`, `oversized`, `header`, `kid` (none, or no such key), `algorithm`,
    /// `signature`, `claims`, `issuer`, `audience`, `type`, `identity` (a claim that cannot
    /// become an identity header), `not_yet_valid` or `issued_in_future`.
    Invalid(&'static str),
    /// Maps to `TOKEN_EXPIRED`: `exp` (plus leeway) has passed.
    Expired,
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenError::Invalid(reason) => write!(f, "invalid token ({reason})"),
            TokenError::Expired => f.write_str("expired token"),
        }
    }
}

impl std::error::Error for TokenError {}

/// Minting a token failed: the OS RNG or the signer refused. An internal error (`INTERNAL`);
/// the label says which step failed, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MintError(pub &'static str);

impl fmt::Display for MintError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "could not mint a token ({})", self.0)
    }
}

impl std::error::Error for MintError {}

const MALFORMED: TokenError = TokenError::Invalid("malformed");

/// How far gatehouse's own tokens' `iat` may run ahead of the clock beyond the leeway.
/// [`Identity::min_iat`] raises it one second past the user's last revocation cutoff so that
/// a login in the second of a user-wide revocation survives it; a revocation in that same
/// second must then cover that login's token, so its cutoff is one second later again, and a
/// burst of revocations and logins of one user (the crash torture does several a second)
/// ratchets the floor a few seconds past the clock. It only ever comes from our own minting
/// and every later revocation's cutoff passes it, so a raised `iat` never outlives a
/// revocation. Past this bound a token is refused (fail closed) until the clock catches up.
const OWN_IAT_FLOOR_MAX_SECS: u64 = 60;

/// Longest signature segment the fast path decodes on the stack: an RS256 signature of an
/// 8192-bit key (1024 bytes), the largest key accepted.
const MAX_SIGNATURE_BYTES: usize = 1024;

/// One key the verifier knows, prepared for both paths.
struct KeyEntry {
    key: VerifyKey,
    /// The exact first segment of the tokens this key signs when it is the signing key,
    /// followed by `.`: a token that starts with it takes the fast path.
    prefix: String,
    /// `jsonwebtoken`'s rules for the general path, pinned to this key's algorithm.
    validation: Validation,
}

/// The header gatehouse writes; member order is fixed, so its encoding is too.
#[derive(Serialize)]
struct OwnHeader<'a> {
    alg: &'a str,
    typ: &'a str,
    kid: &'a str,
}

/// The header members the general path reads. Unknown members are ignored, never
/// followed (`jku`, `x5u`, `jwk`, `x5c`); `crit` is refused by its presence.
#[derive(Deserialize)]
struct RawHeader {
    alg: Option<String>,
    kid: Option<String>,
    typ: Option<String>,
    crit: Option<serde::de::IgnoredAny>,
}

/// A header that passed [`read_header`]: strict JSON, no `crit`, an `alg`.
struct JoseHeader {
    alg: String,
    kid: Option<String>,
    typ: Option<String>,
}

/// Issues and verifies access tokens. Built once from one set of keys; every key, header and
/// validation rule is prepared here so that [`Tokens::verify`] does no set-up per call.
pub struct Tokens {
    signing: SigningKey,
    /// The signing key first, then the verify-only keys, each `kid` once.
    keys: Vec<KeyEntry>,
    issuer: String,
    audience: String,
    access_ttl_secs: u64,
    leeway_secs: u64,
    /// The JWK set served at `/.well-known/jwks.json`, rendered once.
    jwks: String,
    /// Tokens verified before, for [`Tokens::verify_shared`]; off unless [`Tokens::with_cache`].
    cache: cache::VerifiedCache,
}

impl fmt::Debug for Tokens {
    // Keys stay out of logs; the rest is what an operator may want to see.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokens")
            .field("signing", &self.signing)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("access_ttl_secs", &self.access_ttl_secs)
            .field("leeway_secs", &self.leeway_secs)
            .finish_non_exhaustive()
    }
}

impl Tokens {
    /// Prepares keys and validation from validated settings. The only constructor: a reload
    /// builds a new `Tokens` (with an empty cache) from the new settings.
    pub fn new(s: TokenSettings) -> Self {
        let mut keys: Vec<KeyEntry> = Vec::with_capacity(1 + s.verify_only.len());
        let all = std::iter::once(s.signing.verify_key().clone()).chain(s.verify_only);
        for key in all {
            // The config refuses duplicate kids; should one slip through, the first wins.
            if keys.iter().any(|k| k.key.kid() == key.kid()) {
                continue;
            }
            let header = OwnHeader {
                alg: key.algorithm().name(),
                typ: ACCESS_TOKEN_TYP,
                kid: key.kid(),
            };
            // Serialising three plain strings cannot fail; an empty prefix would only send
            // every token of this key down the general path.
            let prefix = serde_json::to_vec(&header)
                .map(|h| format!("{}.", URL_SAFE_NO_PAD.encode(h)))
                .unwrap_or_default();
            let mut validation = Validation::new(key.algorithm().jwt());
            // Time is checked in `verify` against the injected clock; the library would read
            // the system clock instead.
            validation.validate_exp = false;
            validation.validate_nbf = false;
            validation.leeway = 0;
            validation.validate_aud = true;
            validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
            validation.set_issuer(&[&s.issuer]);
            validation.set_audience(&[&s.audience]);
            keys.push(KeyEntry {
                key,
                prefix,
                validation,
            });
        }
        let published: Vec<serde_json::Value> = keys.iter().filter_map(|k| k.key.jwk()).collect();
        let jwks = serde_json::json!({ "keys": published }).to_string();
        Tokens {
            signing: s.signing,
            keys,
            issuer: s.issuer,
            audience: s.audience,
            access_ttl_secs: s.access_ttl_secs,
            leeway_secs: s.leeway_secs,
            jwks,
            cache: cache::VerifiedCache::new(0),
        }
    }

    /// Turns on the cache of verified tokens with `entries` slots (rounded up to a power of
    /// two; 0 leaves it off). See [`cache`] for what it holds and why it is safe.
    #[must_use]
    pub fn with_cache(mut self, entries: usize) -> Self {
        self.cache = cache::VerifiedCache::new(entries);
        self
    }

    /// The same verifier with the fast path off: every token goes through the general path.
    /// For the tests and the fuzz target that hold the two paths to the same answers.
    #[doc(hidden)]
    #[must_use]
    pub fn general_path_only(mut self) -> Self {
        for entry in &mut self.keys {
            entry.prefix.clear();
        }
        self
    }

    /// The algorithm new tokens are signed with.
    pub fn algorithm(&self) -> Algorithm {
        self.signing.algorithm()
    }

    /// The `kid` of the signing key.
    pub fn signing_kid(&self) -> &str {
        self.signing.kid()
    }

    /// The issuer (`iss`) of every token.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The public keys as a JWK set (RFC 7517 §5): `{"keys": []}` under HS256.
    pub fn jwks(&self) -> &str {
        &self.jwks
    }

    /// Mints an access token for `id` at `now_unix`, returning the compact JWT and its claims
    /// (whose `exp` gives the response's `expires_in`).
    pub fn issue(&self, id: &Identity<'_>, now_unix: u64) -> Result<(String, Claims), MintError> {
        let claims = Claims {
            sub: id.user_id.to_owned(),
            email: id.email.to_owned(),
            roles: id.roles.to_vec(),
            email_verified: id.email_verified,
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            iat: now_unix.max(id.min_iat),
            nbf: now_unix,
            exp: now_unix.saturating_add(self.access_ttl_secs),
            jti: new_jti(now_unix)?,
            sid: id.session_id.to_owned(),
            token_use: ACCESS_TOKEN_USE.to_owned(),
            amr: id.amr.iter().map(|m| (*m).to_owned()).collect(),
        };
        // A token that verify would refuse must not be handed out: it could only come from
        // stored data no endpoint accepts, and the caller should see it fail now.
        if strict::check_identity(&claims).is_err() {
            return Err(MintError("identity"));
        }
        let payload = serde_json::to_vec(&claims).map_err(|_| MintError("claims"))?;
        // The signing key is the first entry; its prefix is this token's header.
        let prefix = self.keys.first().map_or("", |k| k.prefix.as_str());
        if prefix.is_empty() {
            return Err(MintError("header"));
        }
        let mut token = String::with_capacity(prefix.len() + payload.len() * 2);
        token.push_str(prefix);
        URL_SAFE_NO_PAD.encode_string(&payload, &mut token);
        let signature = self.signing.sign(token.as_bytes())?;
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&signature, &mut token);
        // An absurd number of roles or an enormous email: verify would refuse it.
        if token.len() > MAX_TOKEN_LEN {
            return Err(MintError("oversized"));
        }
        Ok((token, claims))
    }

    /// Verifies a compact JWT at `now_unix`: size and shape, header, key by `kid`, algorithm
    /// (the key's), the JSON's strictness, signature, issuer, audience, type, the identity
    /// claims, `nbf`, `iat` and `exp`. Runs on every proxied request the cache misses.
    pub fn verify(&self, token: &str, now_unix: u64) -> Result<Claims, TokenError> {
        check_size_and_shape(token)?;

        let own = self
            .keys
            .iter()
            .find(|k| !k.prefix.is_empty() && token.starts_with(&k.prefix));
        let claims = match own {
            Some(entry) => self.verify_own_header(token, entry)?,
            None => self.verify_with_library(token)?,
        };
        check_time(&claims, now_unix, self.leeway_secs, OWN_IAT_FLOOR_MAX_SECS)?;
        Ok(claims)
    }

    /// Whether `token` starts with a header gatehouse writes: such a token is gatehouse's
    /// own (or forged as such) and never another issuer's, so the gate need not look at
    /// its `iss` to know which verifier it goes to.
    pub fn has_own_header(&self, token: &str) -> bool {
        self.keys
            .iter()
            .any(|k| !k.prefix.is_empty() && token.starts_with(&k.prefix))
    }

    /// [`Tokens::verify`] through the cache of verified tokens: a token verified before skips
    /// the signature and the JSON, and has only its time checked again. Runs on every
    /// proxied request; the claims come back shared, so a hit copies no string.
    pub fn verify_shared(&self, token: &str, now_unix: u64) -> Result<Arc<Claims>, TokenError> {
        if let Some(claims) = self.cache.get(token) {
            check_time(&claims, now_unix, self.leeway_secs, OWN_IAT_FLOOR_MAX_SECS)?;
            return Ok(claims);
        }
        let claims = Arc::new(self.verify(token, now_unix)?);
        self.cache.insert(token, claims.clone());
        Ok(claims)
    }

    /// The fast path, for a token whose header segment is byte for byte one we write (`alg`,
    /// `typ` at+jwt and `kid` of a known key), so the header needs no decoding. It makes the
    /// same checks in the same order as the general path, with the same outcome and reason
    /// label: the payload decoded once and judged strict, the signature (base64 first), the
    /// claims deserialised once, then issuer and audience, type and identity.
    fn verify_own_header(&self, token: &str, entry: &KeyEntry) -> Result<Claims, TokenError> {
        // `check_shape` guarantees three non-empty segments.
        let (message, signature) = token.rsplit_once('.').ok_or(MALFORMED)?;
        let payload = &message[entry.prefix.len()..];

        // Our payloads are a few hundred bytes: decode on the stack when they fit.
        let mut payload_buf = [0u8; 1536];
        let heap;
        let json: &[u8] = if payload.len() <= payload_buf.len() / 3 * 4 {
            let n = URL_SAFE_NO_PAD
                .decode_slice(payload, &mut payload_buf)
                .map_err(|_| MALFORMED)?;
            &payload_buf[..n]
        } else {
            heap = URL_SAFE_NO_PAD.decode(payload).map_err(|_| MALFORMED)?;
            &heap
        };
        strict::check_json(json).map_err(|_| TokenError::Invalid("claims"))?;

        check_signature(&entry.key, message, signature)?;

        let claims: Claims =
            serde_json::from_slice(json).map_err(|_| TokenError::Invalid("claims"))?;
        // Every required claim is a non-optional field of `Claims`, so presence is settled;
        // `iss` and `aud` are single strings, matched like the library matches them.
        if claims.iss != self.issuer {
            return Err(TokenError::Invalid("issuer"));
        }
        if claims.aud != self.audience {
            return Err(TokenError::Invalid("audience"));
        }
        // `typ` is at+jwt: the header is ours.
        if claims.token_use != ACCESS_TOKEN_USE {
            return Err(TokenError::Invalid("type"));
        }
        strict::check_identity(&claims).map_err(|_| TokenError::Invalid("identity"))?;
        Ok(claims)
    }

    /// The general path, for any other header: the header judged strict and read, the key
    /// found by `kid`, the token's `alg` required to be that key's, the payload judged
    /// strict, then `jsonwebtoken` checks the signature, issuer and audience.
    fn verify_with_library(&self, token: &str) -> Result<Claims, TokenError> {
        // `check_shape` guarantees three non-empty segments.
        let mut segments = token.split('.');
        let header = segments.next().unwrap_or_default();
        let payload = segments.next().unwrap_or_default();

        let header = read_header(header)?;
        let alg = header.alg;
        let entry = match header.kid.as_deref() {
            Some(kid) => self.keys.iter().find(|k| k.key.kid() == kid),
            // Tokens minted before kids were written carry none; under HS256 the one secret
            // is unambiguous. An asymmetric key set always names its keys.
            None if self.signing.algorithm() == Algorithm::HS256 => self.keys.first(),
            None => None,
        }
        .ok_or(TokenError::Invalid("kid"))?;
        // The key decides the algorithm, never the token.
        if alg != entry.key.algorithm().name() {
            return Err(TokenError::Invalid("algorithm"));
        }

        decode_payload(payload)?;

        let data =
            jsonwebtoken::decode::<Claims>(token, entry.key.decoding_key(), &entry.validation)
                .map_err(|e| library_error(&e, token))?;

        // Both markers are signed, so checking them after the signature costs nothing in safety.
        if !is_access_typ(header.typ.as_deref()) || data.claims.token_use != ACCESS_TOKEN_USE {
            return Err(TokenError::Invalid("type"));
        }
        strict::check_identity(&data.claims).map_err(|_| TokenError::Invalid("identity"))?;
        Ok(data.claims)
    }
}

/// The cheap refusals every path starts with: the size cap, then three non-empty unpadded
/// base64url segments, before any decoding.
fn check_size_and_shape(token: &str) -> Result<(), TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Invalid("oversized"));
    }
    check_shape(token.as_bytes())
}

/// Decodes and judges a header segment (strict JSON, no `crit`, an `alg`) and reads the
/// members a verifier needs. Every path that parses a header goes through here.
fn read_header(segment: &str) -> Result<JoseHeader, TokenError> {
    let header = URL_SAFE_NO_PAD.decode(segment).map_err(|_| MALFORMED)?;
    strict::check_json(&header).map_err(|_| TokenError::Invalid("header"))?;
    let header: RawHeader =
        serde_json::from_slice(&header).map_err(|_| TokenError::Invalid("header"))?;
    // RFC 7515 §4.1.11: no critical extension is understood here.
    if header.crit.is_some() {
        return Err(TokenError::Invalid("header"));
    }
    Ok(JoseHeader {
        alg: header.alg.ok_or(TokenError::Invalid("header"))?,
        kid: header.kid,
        typ: header.typ,
    })
}

/// Decodes a payload segment and judges it strict: the JSON a verifier may read.
fn decode_payload(segment: &str) -> Result<Vec<u8>, TokenError> {
    let payload = URL_SAFE_NO_PAD.decode(segment).map_err(|_| MALFORMED)?;
    strict::check_json(&payload).map_err(|_| TokenError::Invalid("claims"))?;
    Ok(payload)
}

/// Checks `signature` (the token's third segment) over `message` (the first two and their
/// dot) with `key`, under the key's own algorithm.
fn check_signature(key: &VerifyKey, message: &str, signature: &str) -> Result<(), TokenError> {
    // A longer signature than the largest key makes is never ours, and is decoded on the
    // heap only to tell bad base64 from a wrong signature.
    let mut sig_buf = [0u8; MAX_SIGNATURE_BYTES];
    let signature = if signature.len() <= MAX_SIGNATURE_BYTES / 3 * 4 {
        let n = URL_SAFE_NO_PAD
            .decode_slice(signature, &mut sig_buf)
            .map_err(|_| MALFORMED)?;
        &sig_buf[..n]
    } else {
        return Err(long_signature(signature));
    };
    if key.verify(message.as_bytes(), signature) {
        Ok(())
    } else {
        Err(TokenError::Invalid("signature"))
    }
}

/// `nbf`, `iat` and `exp` against the injected clock, with the leeway (see the module
/// doc). An `iat` in the future would survive a user-wide revocation, which revokes the
/// tokens issued at or before its cutoff.
/// `iat_floor_secs` is how far past the leeway `iat` may be: [`OWN_IAT_FLOOR_MAX_SECS`] for
/// gatehouse's own tokens, 0 for other issuers'.
fn check_time(
    claims: &Claims,
    now_unix: u64,
    leeway_secs: u64,
    iat_floor_secs: u64,
) -> Result<(), TokenError> {
    let ahead = now_unix.saturating_add(leeway_secs);
    if ahead < claims.nbf {
        return Err(TokenError::Invalid("not_yet_valid"));
    }
    if ahead.saturating_add(iat_floor_secs) < claims.iat {
        return Err(TokenError::Invalid("issued_in_future"));
    }
    if now_unix >= claims.exp.saturating_add(leeway_secs) {
        return Err(TokenError::Expired);
    }
    Ok(())
}

/// A signature segment too long for any key we hold: bad base64 is `malformed`, as the
/// library has it, and anything else cannot match.
#[cold]
fn long_signature(signature: &str) -> TokenError {
    match URL_SAFE_NO_PAD.decode(signature) {
        Ok(_) => TokenError::Invalid("signature"),
        Err(_) => MALFORMED,
    }
}

/// Extracts the token from an `Authorization` value: `Bearer <token>`, the scheme in any case,
/// exactly one space, and a token of RFC 6750 `b64token` characters. Anything else is
/// `Invalid("malformed")`; an absent header is the caller's `TOKEN_MISSING`.
pub fn bearer(value: &http::HeaderValue) -> Result<&str, TokenError> {
    const SCHEME: &[u8] = b"bearer ";
    // Checked on the bytes: an ASCII scheme and b64token characters are visible ASCII, so this
    // accepts exactly what a `to_str` first would, in one pass fewer.
    let (scheme, token) = value
        .as_bytes()
        .split_at_checked(SCHEME.len())
        .ok_or(MALFORMED)?;
    if !scheme.eq_ignore_ascii_case(SCHEME) || !is_b64token(token) {
        return Err(MALFORMED);
    }
    std::str::from_utf8(token).map_err(|_| MALFORMED)
}

/// A fresh opaque token (refresh, reset, verify-email): 32 bytes from the OS RNG, base64url
/// without padding (43 characters).
pub fn random_token() -> Result<String, MintError> {
    let mut bytes = [0u8; OPAQUE_TOKEN_BYTES];
    getrandom::fill(&mut bytes).map_err(|_| MintError("rng"))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// The SHA-256 of an opaque token: the only form in which such tokens are stored and looked
/// up. Tokens carry 256 bits of randomness, so a fast unsalted hash is enough: there is
/// nothing to brute-force.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Constant-time equality for secrets and their hashes. Only the lengths may leak, and those
/// are public (hashes are always 32 bytes).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// A UUIDv7 whose time part is the injected clock, so that tests are deterministic, and whose
/// 80 remaining bits come from the OS RNG, so that ids are unique across instants and hosts.
fn new_jti(now_unix: u64) -> Result<String, MintError> {
    let mut random = [0u8; 10];
    getrandom::fill(&mut random).map_err(|_| MintError("rng"))?;
    let millis = now_unix.saturating_mul(1000);
    let id = uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid();
    Ok(id.hyphenated().to_string())
}

/// Refuses anything that is not three non-empty, unpadded base64url segments, in one pass and
/// before any decoding, so that garbage is cheap and the library only sees well-shaped input.
fn check_shape(token: &[u8]) -> Result<(), TokenError> {
    let mut dots = 0;
    let mut segment_len = 0;
    for &b in token {
        match b {
            b'.' if segment_len > 0 && dots < 2 => {
                dots += 1;
                segment_len = 0;
            }
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' => segment_len += 1,
            _ => return Err(MALFORMED),
        }
    }
    if dots == 2 && segment_len > 0 {
        Ok(())
    } else {
        Err(MALFORMED)
    }
}

/// RFC 6750 §2.1: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
fn is_b64token(token: &[u8]) -> bool {
    let body_len = token.len() - token.iter().rev().take_while(|&&b| b == b'=').count();
    // One table load per byte: this scans every token on every proxied request.
    body_len > 0 && token[..body_len].iter().all(|&b| B64TOKEN[usize::from(b)])
}

/// The `b64token` characters, by byte value.
static B64TOKEN: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        // `b < 256`, so the cast is exact.
        #[allow(clippy::cast_possible_truncation)]
        let c = b as u8;
        table[b] =
            c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~' | b'+' | b'/');
        b += 1;
    }
    table
};

/// RFC 7515 §4.1.9 compares media types case-insensitively and lets `application/` be left out.
fn is_access_typ(typ: Option<&str>) -> bool {
    typ.is_some_and(|t| {
        let t = t.strip_prefix("application/").unwrap_or(t);
        t.eq_ignore_ascii_case(ACCESS_TOKEN_TYP)
    })
}

/// Maps a `jsonwebtoken` refusal to our reason label. Only reached on the failure path.
#[cold]
fn library_error(e: &jsonwebtoken::errors::Error, token: &str) -> TokenError {
    let reason = match e.kind() {
        ErrorKind::InvalidSignature => "signature",
        ErrorKind::InvalidAlgorithm
        | ErrorKind::MissingAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::InvalidKeyFormat => "algorithm",
        ErrorKind::InvalidIssuer => "issuer",
        ErrorKind::InvalidAudience => "audience",
        ErrorKind::MissingRequiredClaim(_)
        | ErrorKind::InvalidClaimFormat(_)
        | ErrorKind::InvalidSubject => "claims",
        // Switched off in `new`; mapped anyway so that a library change cannot turn them into
        // a wrong label.
        ErrorKind::ExpiredSignature => return TokenError::Expired,
        ErrorKind::ImmatureSignature => "not_yet_valid",
        ErrorKind::Json(_) => json_error_reason(token),
        _ => "malformed",
    };
    TokenError::Invalid(reason)
}

/// A JSON error comes either from the header (the library parses the members the general
/// path does not read, `jwk` and `x5c` among them) or from the claims.
#[cold]
fn json_error_reason(token: &str) -> &'static str {
    if jsonwebtoken::decode_header(token).is_ok() {
        "claims"
    } else {
        "header"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{Algorithm as Jwa, EncodingKey};
    use serde_json::{Value, json};

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const NOW: u64 = 1_700_000_000;
    const TTL: u64 = 900;
    const LEEWAY: u64 = 5;

    fn tokens() -> Tokens {
        Tokens::new(TokenSettings::hs256(
            SECRET,
            "gatehouse",
            "api",
            TTL,
            LEEWAY,
        ))
    }

    fn roles() -> Vec<String> {
        vec!["reader".into(), "creator".into()]
    }

    fn issue_at(now: u64, min_iat: u64) -> (String, Claims) {
        issue_with(&tokens(), now, min_iat)
    }

    fn issue_with(tokens: &Tokens, now: u64, min_iat: u64) -> (String, Claims) {
        let roles = roles();
        let id = Identity {
            user_id: "u1",
            email: "a@example.com",
            roles: &roles,
            email_verified: true,
            session_id: "s1",
            min_iat,
            amr: &[AMR_PWD],
        };
        tokens.issue(&id, now).unwrap()
    }

    fn header() -> Value {
        json!({"alg": "HS256", "typ": "at+jwt"})
    }

    fn payload() -> Value {
        json!({
            "sub": "u1", "email": "a@example.com", "roles": ["reader"], "email_verified": false,
            "iss": "gatehouse", "aud": "api", "iat": NOW, "nbf": NOW, "exp": NOW + TTL,
            "jti": "j1", "sid": "s1", "token_use": "access",
        })
    }

    fn b64(v: &Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    }

    /// A token built by hand, signed with `key` under `alg` whatever its header says.
    fn forge_with(header: &Value, payload: &Value, key: &[u8], alg: Jwa) -> String {
        let message = format!("{}.{}", b64(header), b64(payload));
        let signature =
            jsonwebtoken::crypto::sign(message.as_bytes(), &EncodingKey::from_secret(key), alg)
                .unwrap();
        format!("{message}.{signature}")
    }

    fn forge(header: &Value, payload: &Value) -> String {
        forge_with(header, payload, SECRET, Jwa::HS256)
    }

    fn with(mut v: Value, key: &str, value: Value) -> Value {
        v[key] = value;
        v
    }

    fn without(mut v: Value, key: &str) -> Value {
        v.as_object_mut().unwrap().remove(key);
        v
    }

    fn library_only(tokens: Tokens) -> Tokens {
        tokens.general_path_only()
    }

    fn check(name: &str, token: &str, now: u64, expect: Result<(), TokenError>) {
        let got = tokens().verify(token, now).map(|_| ());
        assert_eq!(got, expect, "case {name:?}: token {token:?} at {now}");
    }

    fn invalid(reason: &'static str) -> Result<(), TokenError> {
        Err(TokenError::Invalid(reason))
    }

    #[test]
    fn round_trip_keeps_every_claim() {
        let (token, issued) = issue_at(NOW, 0);
        let verified = tokens().verify(&token, NOW).unwrap();
        assert_eq!(verified, issued);
        assert_eq!(
            (verified.iat, verified.nbf, verified.exp),
            (NOW, NOW, NOW + TTL)
        );
        assert_eq!(verified.sub, "u1");
        assert_eq!(verified.sid, "s1");
        assert_eq!(verified.roles, roles());
        assert_eq!(verified.token_use, "access");
        assert_eq!(
            (verified.iss.as_str(), verified.aud.as_str()),
            ("gatehouse", "api")
        );
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.typ.as_deref(), Some("at+jwt"));
        assert_eq!(header.alg, Jwa::HS256);
    }

    #[test]
    fn jti_is_a_fresh_uuid_v7_at_the_injected_time() {
        let (_, a) = issue_at(NOW, 0);
        let (_, b) = issue_at(NOW, 0);
        assert_ne!(a.jti, b.jti);
        let id = uuid::Uuid::parse_str(&a.jti).unwrap();
        assert_eq!(id.get_version_num(), 7);
        let (secs, _) = id.get_timestamp().unwrap().to_unix();
        assert_eq!(secs, NOW);
    }

    #[test]
    fn min_iat_raises_iat_only() {
        let (token, claims) = issue_at(NOW, NOW + 1);
        assert_eq!(
            (claims.iat, claims.nbf, claims.exp),
            (NOW + 1, NOW, NOW + TTL)
        );
        // Usable at once even with no leeway at all: nbf is the real issue time.
        let strict = Tokens::new(TokenSettings::hs256(SECRET, "gatehouse", "api", TTL, 0));
        assert!(strict.verify(&token, NOW).is_ok());
        // A floor in the past changes nothing.
        assert_eq!(issue_at(NOW, NOW - 10).1.iat, NOW);
    }

    #[test]
    fn issue_refuses_a_token_verify_would_refuse() {
        let roles = vec!["r".repeat(64); MAX_TOKEN_LEN / 64];
        let id = Identity {
            user_id: "u1",
            email: "a@example.com",
            roles: &roles,
            email_verified: false,
            session_id: "s1",
            min_iat: 0,
            amr: &["pwd"],
        };
        assert_eq!(
            tokens().issue(&id, NOW).unwrap_err(),
            MintError("oversized")
        );
    }

    #[test]
    fn time_boundaries() {
        let (token, _) = issue_at(NOW, 0);
        #[rustfmt::skip]
        let cases = [
            ("at issue", NOW, Ok(())),
            ("last second before exp+leeway", NOW + TTL + LEEWAY - 1, Ok(())),
            ("at exp+leeway", NOW + TTL + LEEWAY, Err(TokenError::Expired)),
            ("long after", u64::MAX, Err(TokenError::Expired)),
            ("nbf within leeway", NOW - LEEWAY, Ok(())),
            ("nbf beyond leeway", NOW - LEEWAY - 1, invalid("not_yet_valid")),
            ("epoch", 0, invalid("not_yet_valid")),
        ];
        for (name, now, expect) in cases {
            check(name, &token, now, expect);
        }
    }

    #[test]
    fn hand_built_tokens() {
        let (h, p) = (header, payload);
        let good = forge(&h(), &p());
        let parts: Vec<&str> = good.split('.').collect();
        let (gh, gp, gs) = (parts[0], parts[1], parts[2]);
        let admin = b64(&with(p(), "roles", json!(["admin"])));
        let none_header = b64(&json!({"alg": "none", "typ": "at+jwt"}));
        let other_signature = issue_at(NOW, 0).0.rsplit('.').next().unwrap().to_owned();
        let other_secret = b"another-secret-another-secret-!!";
        let kid = SigningKey::hs256(SECRET).kid().to_string();
        let jku = with(
            with(h(), "kid", json!(kid)),
            "jku",
            json!("https://evil.example/jwks"),
        );
        let embedded = with(
            with(jku.clone(), "x5u", json!("https://evil.example/cert")),
            "jwk",
            json!({"kty": "oct", "k": "AAAA"}),
        );
        let padded = with(p(), "pad", json!("x".repeat(MAX_TOKEN_LEN)));
        #[rustfmt::skip]
        let cases: Vec<(&str, String, Result<(), TokenError>)> = vec![
            ("well formed", good.clone(), Ok(())),
            ("full media type", forge(&with(h(), "typ", json!("application/AT+JWT")), &p()), Ok(())),
            ("extra claim", forge(&h(), &with(p(), "extra", json!(1))), Ok(())),
            ("our kid, jku ignored", forge(&jku, &p()), Ok(())),
            ("our kid, jku, x5u and jwk ignored", forge(&embedded, &p()), Ok(())),
            ("no kid (minted before kids), HS256", forge(&h(), &p()), Ok(())),
            ("unknown kid", forge(&with(h(), "kid", json!("k9")), &p()), invalid("kid")),
            ("kid path traversal", forge(&with(h(), "kid", json!("../../etc/passwd")), &p()), invalid("kid")),
            ("kid not a string", forge(&with(h(), "kid", json!(7)), &p()), invalid("header")),
            ("crit", forge(&with(h(), "crit", json!(["exp"])), &p()), invalid("header")),
            ("crit empty", forge(&with(h(), "crit", json!([])), &p()), invalid("header")),
            // Signature and algorithm attacks.
            ("wrong secret", forge_with(&h(), &p(), other_secret, Jwa::HS256), invalid("signature")),
            ("tampered payload", format!("{gh}.{admin}.{gs}"), invalid("signature")),
            ("signature of another token", format!("{gh}.{gp}.{other_signature}"), invalid("signature")),
            ("alg none, no signature", format!("{none_header}.{gp}."), invalid("malformed")),
            ("alg none, any signature", format!("{none_header}.{gp}.{gs}"), invalid("algorithm")),
            ("alg None", format!("{}.{gp}.{gs}", b64(&json!({"alg": "None"}))), invalid("algorithm")),
            ("alg HS512, our secret", forge_with(&with(h(), "alg", json!("HS512")), &p(), SECRET, Jwa::HS512), invalid("algorithm")),
            ("alg RS256, HMAC-signed", forge(&with(h(), "alg", json!("RS256")), &p()), invalid("algorithm")),
            ("alg missing", forge(&without(h(), "alg"), &p()), invalid("header")),
            // Issuer, audience, type.
            ("wrong iss", forge(&h(), &with(p(), "iss", json!("evil"))), invalid("issuer")),
            ("wrong aud", forge(&h(), &with(p(), "aud", json!("other"))), invalid("audience")),
            ("aud as array", forge(&h(), &with(p(), "aud", json!(["api"]))), invalid("claims")),
            ("header typ JWT", forge(&with(h(), "typ", json!("JWT")), &p()), invalid("type")),
            ("header typ missing", forge(&without(h(), "typ"), &p()), invalid("type")),
            ("token_use refresh", forge(&h(), &with(p(), "token_use", json!("refresh"))), invalid("type")),
            ("token_use ACCESS", forge(&h(), &with(p(), "token_use", json!("ACCESS"))), invalid("type")),
            ("token_use missing", forge(&h(), &without(p(), "token_use")), invalid("type")),
            // Claim shapes.
            ("exp as float", forge(&h(), &with(p(), "exp", json!(1.7e9))), invalid("claims")),
            ("exp negative", forge(&h(), &with(p(), "exp", json!(-1))), invalid("claims")),
            ("exp as string", forge(&h(), &with(p(), "exp", json!("never"))), invalid("claims")),
            ("roles not a list", forge(&h(), &with(p(), "roles", json!("admin"))), invalid("claims")),
            ("payload not an object", forge(&h(), &json!([1, 2])), invalid("claims")),
            ("header not an object", forge(&json!("HS256"), &p()), invalid("header")),
            // Shape and size, refused before any decoding.
            ("empty", String::new(), invalid("malformed")),
            ("garbage", "hello".into(), invalid("malformed")),
            ("two segments", format!("{gh}.{gp}"), invalid("malformed")),
            ("four segments", format!("{good}.{gs}"), invalid("malformed")),
            ("only dots", "..".into(), invalid("malformed")),
            ("three dots", "...".into(), invalid("malformed")),
            ("empty header", format!(".{gp}.{gs}"), invalid("malformed")),
            ("padding", format!("{gh}=.{gp}.{gs}"), invalid("malformed")),
            ("standard alphabet", format!("{gh}.{gp}.{gs}+/"), invalid("malformed")),
            ("non-base64 character", format!("{gh}.{gp}$.{gs}"), invalid("malformed")),
            ("whitespace", format!("{good} "), invalid("malformed")),
            ("non-ASCII", format!("{gh}.{gp}é.{gs}"), invalid("malformed")),
            ("impossible base64 length", format!("{gh}.{gp}.{gs}AA"), invalid("malformed")),
            ("base64 of garbage", "AAAA.AAAA.AAAA".into(), invalid("header")),
            ("at the size limit", "a".repeat(MAX_TOKEN_LEN), invalid("malformed")),
            ("over the size limit", "a".repeat(MAX_TOKEN_LEN + 1), invalid("oversized")),
            ("oversized but signed", forge(&h(), &padded), invalid("oversized")),
        ];
        for (name, token, expect) in cases {
            check(name, &token, NOW, expect);
        }
    }

    #[test]
    fn every_required_claim_is_required() {
        let required = [
            "sub",
            "email",
            "roles",
            "email_verified",
            "iss",
            "aud",
            "iat",
            "nbf",
            "exp",
            "jti",
            "sid",
        ];
        for claim in required {
            let token = forge(&header(), &without(payload(), claim));
            check(claim, &token, NOW, invalid("claims"));
        }
    }

    #[test]
    fn every_single_character_change_is_refused() {
        let (token, _) = issue_at(NOW, 0);
        let tokens = tokens();
        for i in 0..token.len() {
            for replacement in ['A', 'B', 'Q', 'g', 'z', '0', '-', '_', '.', '~', '\0'] {
                let mut bytes = token.clone().into_bytes();
                if bytes[i] == replacement as u8 {
                    continue;
                }
                bytes[i] = replacement as u8;
                let mutated = String::from_utf8(bytes).unwrap();
                assert!(
                    tokens.verify(&mutated, NOW).is_err(),
                    "accepted {mutated:?} (byte {i} set to {replacement:?})"
                );
            }
        }
    }

    #[test]
    fn fast_path_agrees_with_the_library() {
        let fast = tokens();
        let (issued, _) = issue_at(NOW, 0);
        let prefix = fast.keys[0].prefix.clone();
        assert!(!prefix.is_empty());
        assert!(issued.starts_with(&prefix));
        let library = library_only(tokens());
        let (h, p) = (header, payload);
        let own = || prefix.trim_end_matches('.').to_owned();
        let sign = |message: String| {
            let signature = jsonwebtoken::crypto::sign(
                message.as_bytes(),
                &EncodingKey::from_secret(SECRET),
                Jwa::HS256,
            )
            .unwrap();
            format!("{message}.{signature}")
        };
        let good = forge(&h(), &p());
        let gp = good.split('.').nth(1).unwrap().to_owned();
        let mut payloads = vec![
            p(),
            with(p(), "iss", json!("evil")),
            with(p(), "aud", json!("other")),
            with(p(), "aud", json!(["api"])),
            with(p(), "iss", json!(["gatehouse"])),
            with(p(), "token_use", json!("refresh")),
            without(p(), "token_use"),
            with(p(), "exp", json!(1.7e9)),
            with(p(), "nbf", json!(null)),
            with(p(), "roles", json!("admin")),
            with(p(), "pad", json!("x".repeat(3000))),
            json!([1, 2]),
            json!("claims"),
        ];
        for claim in ["sub", "iss", "aud", "exp", "nbf", "jti", "sid"] {
            payloads.push(without(p(), claim));
        }
        let mut cases: Vec<String> = payloads
            .iter()
            .map(|payload| sign(format!("{}.{}", own(), b64(payload))))
            .collect();
        cases.extend([
            issued.clone(),
            sign(format!(
                "{}.{}",
                own(),
                URL_SAFE_NO_PAD.encode(b"{not json")
            )),
            sign(format!(
                "{}.{}",
                own(),
                URL_SAFE_NO_PAD.encode(
                    serde_json::to_string(&p())
                        .unwrap()
                        .replace(r#""gatehouse""#, r#""gatehous\u0065""#)
                )
            )),
            sign(format!(
                "{}.{}",
                own(),
                URL_SAFE_NO_PAD.encode(br#"{"sub":"a","sub":"b"}"#)
            )),
            sign(format!("{}.{gp}A", own())),
            format!("{}.{gp}.{}", own(), "A".repeat(43)),
            format!("{}.{gp}.{}", own(), "A".repeat(86)),
            format!("{}.{gp}.{}", own(), "A".repeat(85)),
            format!("{}.{gp}.AB", own()),
            format!("{}.{gp}.ABC", own()),
        ]);
        for token in &cases {
            for now in [0, NOW, NOW + TTL + LEEWAY] {
                assert_eq!(
                    fast.verify(token, now),
                    library.verify(token, now),
                    "token {token:?} at {now}"
                );
            }
        }
    }

    /// A verifier for each algorithm, with a fresh key (and, for the asymmetric ones, a
    /// second, verify-only key).
    fn verifiers() -> Vec<(Algorithm, Tokens, SigningKey)> {
        let mut out = vec![(Algorithm::HS256, tokens(), SigningKey::hs256(SECRET))];
        for alg in [Algorithm::EdDSA, Algorithm::ES256, Algorithm::RS256] {
            let (pem, _) = keys::generate(alg).unwrap();
            let key = SigningKey::from_pem(pem.as_bytes(), alg, None).unwrap();
            let (old, _) = keys::generate(alg).unwrap();
            let old = SigningKey::from_pem(old.as_bytes(), alg, Some("old")).unwrap();
            let settings = TokenSettings {
                signing: key.clone(),
                verify_only: vec![old.verify_key().clone()],
                ..TokenSettings::hs256(SECRET, "gatehouse", "api", TTL, LEEWAY)
            };
            out.push((alg, Tokens::new(settings), key));
        }
        out
    }

    /// A token with our exact header for `key` and these payload bytes, signed by `key`.
    fn signed_raw(tokens: &Tokens, key: &SigningKey, payload: &[u8]) -> String {
        let entry = tokens
            .keys
            .iter()
            .find(|k| k.key.kid() == key.kid())
            .unwrap();
        let message = format!("{}{}", entry.prefix, URL_SAFE_NO_PAD.encode(payload));
        let signature = key.sign(message.as_bytes()).unwrap();
        format!("{message}.{}", URL_SAFE_NO_PAD.encode(signature))
    }

    /// A token with this header, signed by `key` whatever the header says.
    fn signed_with_header(key: &SigningKey, header: &Value, payload: &[u8]) -> String {
        let message = format!("{}.{}", b64(header), URL_SAFE_NO_PAD.encode(payload));
        let signature = key.sign(message.as_bytes()).unwrap();
        format!("{message}.{}", URL_SAFE_NO_PAD.encode(signature))
    }

    /// The payload as JSON text, with `raw` spliced in as extra members (for what
    /// `serde_json::Value` cannot hold: duplicates, lone surrogates, `1e400`).
    fn payload_with(raw: &str) -> Vec<u8> {
        let text = serde_json::to_string(&payload()).unwrap();
        let mut bytes = text.as_bytes()[..text.len() - 1].to_vec();
        bytes.extend_from_slice(b",");
        bytes.extend_from_slice(raw.as_bytes());
        bytes.push(b'}');
        bytes
    }

    #[test]
    fn every_algorithm_signs_and_verifies_and_names_its_key() {
        for (alg, tokens, key) in verifiers() {
            let (token, issued) = issue_with(&tokens, NOW, 0);
            let header = jsonwebtoken::decode_header(&token).unwrap();
            assert_eq!(header.alg, alg.jwt(), "{alg}");
            assert_eq!(header.kid.as_deref(), Some(key.kid()), "{alg}");
            assert_eq!(header.typ.as_deref(), Some("at+jwt"), "{alg}");
            assert_eq!(tokens.verify(&token, NOW).unwrap(), issued, "{alg}");
            assert_eq!(
                library_only(tokens).verify(&token, NOW).unwrap(),
                issued,
                "{alg}"
            );
        }
    }

    #[test]
    fn keys_are_picked_by_kid_and_pin_the_algorithm() {
        let verifiers = verifiers();
        let (_, ed, ed_key) = &verifiers[1];
        let p = serde_json::to_vec(&payload()).unwrap();
        let own = jsonwebtoken::decode_header(signed_raw(ed, ed_key, &p)).unwrap();
        let kid = own.kid.unwrap();
        let header = |alg: &str, kid: &str| json!({"alg": alg, "typ": "at+jwt", "kid": kid});
        // The HMAC "secret" an attacker would use: the published public key's bytes.
        let jwk = ed_key.verify_key().jwk().unwrap();
        let public_x = URL_SAFE_NO_PAD.decode(jwk["x"].as_str().unwrap()).unwrap();
        let hmac_with_public_key =
            forge_with(&header("HS256", &kid), &payload(), &public_x, Jwa::HS256);
        let rs_key = &verifiers[3].2;
        #[rustfmt::skip]
        let cases: Vec<(&str, String, Result<(), TokenError>)> = vec![
            ("own key, general path", signed_with_header(ed_key, &header("EdDSA", &kid), &p), Ok(())),
            ("HS256 keyed with the public key", hmac_with_public_key, invalid("algorithm")),
            ("HS256 under the server's HMAC secret", forge(&header("HS256", &kid), &payload()), invalid("algorithm")),
            ("alg none", format!("{}.{}.", b64(&header("none", &kid)), b64(&payload())), invalid("malformed")),
            ("alg none, any signature", format!("{}.{}.AAAA", b64(&header("none", &kid)), b64(&payload())), invalid("algorithm")),
            ("another key under our kid", signed_with_header(rs_key, &header("EdDSA", &kid), &p), invalid("signature")),
            ("RS256 under our kid", signed_with_header(rs_key, &header("RS256", &kid), &p), invalid("algorithm")),
            ("no kid, asymmetric", signed_with_header(ed_key, &json!({"alg": "EdDSA", "typ": "at+jwt"}), &p), invalid("kid")),
            ("unknown kid", signed_with_header(ed_key, &header("EdDSA", "nope"), &p), invalid("kid")),
            ("the verify-only key's kid, signed by the signer", signed_with_header(ed_key, &header("EdDSA", "old"), &p), invalid("signature")),
        ];
        for (name, token, expect) in cases {
            let got = ed.verify(&token, NOW).map(|_| ());
            assert_eq!(got, expect, "case {name:?}");
        }
    }

    /// Issue 14, item 6: what a correctly signed token may not contain, refused with the same
    /// reason on the fast path and the general path, under every algorithm.
    #[test]
    fn lenient_cases_are_refused_on_both_paths() {
        let p = payload;
        #[rustfmt::skip]
        let payloads: Vec<(&str, Vec<u8>, Result<(), TokenError>)> = vec![
            ("control: well formed", serde_json::to_vec(&p()).unwrap(), Ok(())),
            ("array payload", serde_json::to_vec(&json!(["u1", "a@example.com", ["admin"], true, "gatehouse", "api", NOW, NOW, NOW + TTL, "j", "s", "access"])).unwrap(), invalid("claims")),
            ("string payload", b"\"claims\"".to_vec(), invalid("claims")),
            ("duplicate sub", payload_with(r#""sub":"u2""#), invalid("claims")),
            ("duplicate unread member", {
                let mut v = payload_with(r#""x":1"#);
                v.pop();
                v.extend_from_slice(br#","x":2}"#);
                v
            }, invalid("claims")),
            ("duplicate inside an unread object", payload_with(r#""x":{"a":1,"a":2}"#), invalid("claims")),
            ("duplicate spelled with an escape", payload_with(r#""s\u0075b":"u2""#), invalid("claims")),
            ("invalid UTF-8 in an unread member", payload_with("\"x\":\"\u{0}\"").into_iter().map(|b| if b == 0 { 0xff } else { b }).collect(), invalid("claims")),
            ("lone surrogate in an unread member", payload_with(r#""x":"\ud800""#), invalid("claims")),
            ("1e400 in an unread member", payload_with(r#""x":1e400"#), invalid("claims")),
            ("-1e400 deep in an unread member", payload_with(r#""x":[{"y":-1e400}]"#), invalid("claims")),
            ("iat in the future", serde_json::to_vec(&with(p(), "iat", json!(NOW + LEEWAY + OWN_IAT_FLOOR_MAX_SECS + 1))).unwrap(), invalid("issued_in_future")),
            ("sub with CR LF", serde_json::to_vec(&with(p(), "sub", json!("u1\r\nX-Auth-Roles: admin"))).unwrap(), invalid("identity")),
            ("sub with NUL", serde_json::to_vec(&with(p(), "sub", json!("u1\u{0}"))).unwrap(), invalid("identity")),
            ("empty sub", serde_json::to_vec(&with(p(), "sub", json!(""))).unwrap(), invalid("identity")),
            ("email with LF", serde_json::to_vec(&with(p(), "email", json!("a@example.com\nx"))).unwrap(), invalid("identity")),
            ("email non-ASCII", serde_json::to_vec(&with(p(), "email", json!("é@example.com"))).unwrap(), invalid("identity")),
            ("role with the separator", serde_json::to_vec(&with(p(), "roles", json!(["reader,admin"]))).unwrap(), invalid("identity")),
            ("role with a control", serde_json::to_vec(&with(p(), "roles", json!(["reader\u{7}"]))).unwrap(), invalid("identity")),
            ("empty role", serde_json::to_vec(&with(p(), "roles", json!([""]))).unwrap(), invalid("identity")),
        ];
        for (alg, fast, key) in verifiers() {
            let library = library_only(Tokens::new(TokenSettings {
                signing: key.clone(),
                verify_only: Vec::new(),
                ..TokenSettings::hs256(SECRET, "gatehouse", "api", TTL, LEEWAY)
            }));
            for (name, payload, expect) in &payloads {
                let token = signed_raw(&fast, &key, payload);
                assert_eq!(
                    fast.verify(&token, NOW).map(|_| ()),
                    *expect,
                    "{alg} fast: {name}"
                );
                assert_eq!(
                    library.verify(&token, NOW).map(|_| ()),
                    *expect,
                    "{alg} library: {name}"
                );
            }
            // The header's own leniencies can only reach the general path.
            let kid = key.kid();
            let good = serde_json::to_vec(&p()).unwrap();
            let raw_header = |json: &str| {
                let message = format!(
                    "{}.{}",
                    URL_SAFE_NO_PAD.encode(json),
                    URL_SAFE_NO_PAD.encode(&good)
                );
                let signature = key.sign(message.as_bytes()).unwrap();
                format!("{message}.{}", URL_SAFE_NO_PAD.encode(signature))
            };
            let a = alg.name();
            #[rustfmt::skip]
            let headers = [
                ("crit", format!(r#"{{"alg":"{a}","typ":"at+jwt","kid":"{kid}","crit":["exp"],"exp":1}}"#)),
                ("duplicate alg", format!(r#"{{"alg":"{a}","alg":"none","typ":"at+jwt","kid":"{kid}"}}"#)),
                ("duplicate kid", format!(r#"{{"alg":"{a}","typ":"at+jwt","kid":"{kid}","kid":"other"}}"#)),
                ("lone surrogate", format!(r#"{{"alg":"{a}","typ":"at+jwt","kid":"{kid}","x":"\udfff"}}"#)),
                ("1e400", format!(r#"{{"alg":"{a}","typ":"at+jwt","kid":"{kid}","x":1e400}}"#)),
                ("array header", format!(r#"["{a}","at+jwt","{kid}"]"#)),
            ];
            for (name, header) in headers {
                let token = raw_header(&header);
                assert_eq!(
                    fast.verify(&token, NOW).map(|_| ()),
                    invalid("header"),
                    "{alg}: {name}"
                );
            }
            let control = raw_header(&format!(r#"{{"kid":"{kid}","typ":"at+jwt","alg":"{a}"}}"#));
            assert!(
                fast.verify(&control, NOW).is_ok(),
                "{alg}: reordered header"
            );
        }
    }

    #[test]
    fn jwks_publishes_every_public_key_and_nothing_else() {
        let verifiers = verifiers();
        assert_eq!(verifiers[0].1.jwks(), r#"{"keys":[]}"#);
        for (alg, tokens, key) in &verifiers[1..] {
            let set: Value = serde_json::from_str(tokens.jwks()).unwrap();
            let keys = set["keys"].as_array().unwrap();
            assert_eq!(keys.len(), 2, "{alg}: {set}");
            assert_eq!(keys[0]["kid"], key.kid());
            assert_eq!(keys[1]["kid"], "old");
            for jwk in keys {
                assert_eq!(jwk["alg"], alg.name());
                assert_eq!(jwk["use"], "sig");
                assert!(jwk.get("d").is_none() && jwk.get("k").is_none(), "{jwk}");
            }
        }
    }

    #[test]
    fn bearer_parsing() {
        fn check_bearer(value: &[u8], expect: Result<&str, TokenError>) {
            let value = http::HeaderValue::from_bytes(value).unwrap();
            assert_eq!(bearer(&value), expect, "header {value:?}");
        }
        let cases: &[(&[u8], Result<&str, TokenError>)] = &[
            (b"Bearer abc.def.ghi", Ok("abc.def.ghi")),
            (b"bearer abc", Ok("abc")),
            (b"BEARER abc", Ok("abc")),
            (b"BeArEr a-b_c~d+e/f==", Ok("a-b_c~d+e/f==")),
            (b"Bearer ", Err(MALFORMED)),
            (b"Bearer", Err(MALFORMED)),
            (b"Bearer  abc", Err(MALFORMED)),
            (b"Bearer\tabc", Err(MALFORMED)),
            (b"Bearerabc", Err(MALFORMED)),
            (b"Bearer abc def", Err(MALFORMED)),
            (b"Bearer abc\t", Err(MALFORMED)),
            (b"Bearer ==", Err(MALFORMED)),
            (b"Bearer a=b", Err(MALFORMED)),
            (b"Bearer a,b", Err(MALFORMED)),
            (b"Basic dXNlcjpwYXNz", Err(MALFORMED)),
            (b"Token abc", Err(MALFORMED)),
            (b"abc.def.ghi", Err(MALFORMED)),
            (b"", Err(MALFORMED)),
            (b"Bearer \xc3\xa9", Err(MALFORMED)),
            (b"B\xc3\xa9arer abc", Err(MALFORMED)),
        ];
        for &(value, expect) in cases {
            check_bearer(value, expect);
        }
    }

    #[test]
    fn random_tokens_are_256_bit_base64url() {
        let a = random_token().unwrap();
        let b = random_token().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert_eq!(URL_SAFE_NO_PAD.decode(&a).unwrap().len(), 32);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
    }

    #[test]
    fn token_hash_is_sha256() {
        let expected = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let got: String = token_hash("abc")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(got, expected);
        assert_ne!(token_hash("abc"), token_hash("abd"));
    }

    #[test]
    fn constant_time_equality() {
        let cases: &[(&[u8], &[u8], bool)] = &[
            (b"", b"", true),
            (b"abc", b"abc", true),
            (b"abc", b"abd", false),
            (b"abc", b"ab", false),
            (b"", b"a", false),
        ];
        for &(a, b, expect) in cases {
            assert_eq!(ct_eq(a, b), expect, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let settings = TokenSettings::hs256(SECRET, "gatehouse", "api", TTL, LEEWAY);
        let shown = format!("{settings:?} {:?}", Tokens::new(settings.clone()));
        assert!(!shown.contains("0123456789abcdef"), "{shown}");
    }
}
