//! Access tokens (HS256 JWTs) and the opaque tokens behind refresh, password reset and
//! email verification.
//!
//! This module owns the whole life of a credential string: minting it, recognising it in an
//! `Authorization` header, and deciding whether it is genuine and current. Whether a genuine
//! token has since been revoked is the business of `revocation`; what its roles allow is the
//! business of the policy.
//!
//! Decisions, and why:
//!
//! - **The algorithm is pinned, never read from the token.** [`Tokens::new`] builds one
//!   [`Validation`] that allows HS256 only, so `alg: none`, `HS512` and the RS256-with-a-public-key
//!   confusion are refused before the key is touched. Other header parameters (`kid`, `jku`, `jwk`,
//!   `x5u`, `crit`) are ignored: there is one fixed key and nothing is ever fetched.
//! - **Time is injected.** `jsonwebtoken` reads the system clock for `exp` and `nbf`, so its own
//!   time checks are switched off and both are checked here against `now_unix`, with
//!   `leeway_secs` for clock skew, as RFC 7519 words them: a token is usable while
//!   `now < exp + leeway` and once `now + leeway >= nbf`. The presence of `exp`, `nbf`, `iss`,
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

mod cache;

use std::fmt;
use std::sync::Arc;

use aws_lc_rs::hmac;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
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

/// What [`Tokens`] needs from the configuration. The config module validates it (secret of at
/// least 32 bytes, non-empty issuer and audience) and owns every default.
#[derive(Clone)]
pub struct TokenSettings {
    /// The HS256 key: the UTF-8 bytes of `tokens.secret`.
    pub secret: Vec<u8>,
    /// `iss` written into and required of every access token.
    pub issuer: String,
    /// `aud` written into and required of every access token.
    pub audience: String,
    /// Lifetime of an access token, in seconds.
    pub access_ttl_secs: u64,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
}

impl fmt::Debug for TokenSettings {
    // The secret must never reach a log line, so it is redacted rather than derived.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSettings")
            .field("secret", &"[redacted]")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("access_ttl_secs", &self.access_ttl_secs)
            .field("leeway_secs", &self.leeway_secs)
            .finish()
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
    /// `malformed`, `oversized`, `header`, `algorithm`, `signature`, `claims`, `issuer`,
    /// `audience`, `type` or `not_yet_valid`.
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

/// Issues and verifies access tokens. Built once at start; every key, header and validation
/// rule is prepared here so that [`Tokens::verify`] does no set-up per call.
pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    header: Header,
    /// The HS256 key, prepared once for the fast verification path.
    hmac_key: hmac::Key,
    /// The exact first segment of every token [`Tokens::issue`] mints, followed by `.`. A token
    /// that starts with it takes the fast path; any other header goes through the library.
    header_prefix: String,
    issuer: String,
    audience: String,
    access_ttl_secs: u64,
    leeway_secs: u64,
    /// Tokens verified before, for [`Tokens::verify_shared`]; off unless [`Tokens::with_cache`].
    cache: cache::VerifiedCache,
}

impl fmt::Debug for Tokens {
    // Keys stay out of logs; the rest is what an operator may want to see.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokens")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("access_ttl_secs", &self.access_ttl_secs)
            .field("leeway_secs", &self.leeway_secs)
            .finish_non_exhaustive()
    }
}

impl Tokens {
    /// Prepares keys and validation from validated settings.
    pub fn new(s: TokenSettings) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        // Time is checked in `verify` against the injected clock; the library would read the
        // system clock instead.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        validation.validate_aud = true;
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        validation.set_issuer(&[&s.issuer]);
        validation.set_audience(&[&s.audience]);

        let mut header = Header::new(Algorithm::HS256);
        header.typ = Some(ACCESS_TOKEN_TYP.to_owned());
        let encoding = EncodingKey::from_secret(&s.secret);
        // The header segment exactly as the library writes it when issuing. Should that ever
        // fail, the prefix stays empty and every token takes the library path.
        let header_prefix = jsonwebtoken::encode(&header, &serde_json::Map::new(), &encoding)
            .ok()
            .and_then(|t| t.split('.').next().map(|h| format!("{h}.")))
            .filter(|h| h.len() > 1)
            .unwrap_or_default();

        Tokens {
            encoding,
            decoding: DecodingKey::from_secret(&s.secret),
            validation,
            header,
            hmac_key: hmac::Key::new(hmac::HMAC_SHA256, &s.secret),
            header_prefix,
            issuer: s.issuer,
            audience: s.audience,
            access_ttl_secs: s.access_ttl_secs,
            leeway_secs: s.leeway_secs,
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
        let token = jsonwebtoken::encode(&self.header, &claims, &self.encoding)
            .map_err(|_| MintError("signing"))?;
        // A token that verify would refuse must not be handed out: it could only come from an
        // absurd number of roles or an enormous email, and the caller should see it fail now.
        if token.len() > MAX_TOKEN_LEN {
            return Err(MintError("oversized"));
        }
        Ok((token, claims))
    }

    /// Verifies a compact JWT at `now_unix`: size and shape, algorithm, signature, issuer,
    /// audience, type, `nbf` and `exp`. Runs on every proxied request.
    pub fn verify(&self, token: &str, now_unix: u64) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Invalid("oversized"));
        }
        check_shape(token.as_bytes())?;

        let claims = if !self.header_prefix.is_empty() && token.starts_with(&self.header_prefix) {
            self.verify_own_header(token)?
        } else {
            self.verify_with_library(token)?
        };
        self.check_time(&claims, now_unix)?;
        Ok(claims)
    }

    /// [`Tokens::verify`] through the cache of verified tokens: a token verified before skips
    /// the signature and the JSON, and has only its time checked again. Runs on every
    /// proxied request; the claims come back shared, so a hit copies no string.
    pub fn verify_shared(&self, token: &str, now_unix: u64) -> Result<Arc<Claims>, TokenError> {
        if let Some(claims) = self.cache.get(token) {
            self.check_time(&claims, now_unix)?;
            return Ok(claims);
        }
        let claims = Arc::new(self.verify(token, now_unix)?);
        self.cache.insert(token, claims.clone());
        Ok(claims)
    }

    /// `nbf` and `exp` against the injected clock, with the leeway (see the module doc).
    fn check_time(&self, claims: &Claims, now_unix: u64) -> Result<(), TokenError> {
        if now_unix.saturating_add(self.leeway_secs) < claims.nbf {
            return Err(TokenError::Invalid("not_yet_valid"));
        }
        if now_unix >= claims.exp.saturating_add(self.leeway_secs) {
            return Err(TokenError::Expired);
        }
        Ok(())
    }

    /// The fast path, for a token whose header segment is byte for byte the one we issue
    /// (`alg` HS256, `typ` at+jwt), so the header needs no decoding. It makes the same checks in
    /// the same order as `jsonwebtoken::decode` under `self.validation`, with the same outcome
    /// and reason label: signature (base64 first), then the payload decoded once and the claims
    /// deserialised once, then issuer and audience, then the type.
    fn verify_own_header(&self, token: &str) -> Result<Claims, TokenError> {
        // `check_shape` guarantees three non-empty segments.
        let (message, signature) = token.rsplit_once('.').ok_or(MALFORMED)?;
        let payload = &message[self.header_prefix.len()..];

        // 64 base64 characters decode to at most 48 bytes; a longer signature is never ours
        // and is decoded on the heap only to tell bad base64 from a wrong signature.
        let mut sig_buf = [0u8; 48];
        let signature = if signature.len() <= 64 {
            let n = URL_SAFE_NO_PAD
                .decode_slice(signature, &mut sig_buf)
                .map_err(|_| MALFORMED)?;
            &sig_buf[..n]
        } else {
            return Err(long_signature(signature));
        };
        hmac::verify(&self.hmac_key, message.as_bytes(), signature)
            .map_err(|_| TokenError::Invalid("signature"))?;

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
        Ok(claims)
    }

    /// The general path through `jsonwebtoken`, for any other header.
    fn verify_with_library(&self, token: &str) -> Result<Claims, TokenError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| library_error(&e, token))?;

        // Both markers are signed, so checking them after the signature costs nothing in safety.
        if !is_access_typ(data.header.typ.as_deref()) || data.claims.token_use != ACCESS_TOKEN_USE {
            return Err(TokenError::Invalid("type"));
        }
        Ok(data.claims)
    }
}

/// A signature segment too long to be an HS256 tag: bad base64 is `malformed`, as the library
/// has it, and anything else cannot match.
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

/// A JSON error comes either from the header (the library parses it before checking the
/// signature) or from the claims (parsed after it). A header whose `alg` the library does not
/// know, `none` included, is the common case and gets its own label.
#[cold]
fn json_error_reason(token: &str) -> &'static str {
    if jsonwebtoken::decode_header(token).is_ok() {
        return "claims";
    }
    #[derive(Deserialize)]
    struct AlgOnly {
        alg: Option<String>,
    }
    let header = token.split('.').next().unwrap_or_default();
    let alg = URL_SAFE_NO_PAD
        .decode(header)
        .ok()
        .and_then(|json| serde_json::from_slice::<AlgOnly>(&json).ok())
        .and_then(|h| h.alg);
    match alg {
        Some(alg) if alg != "HS256" => "algorithm",
        _ => "header",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const NOW: u64 = 1_700_000_000;
    const TTL: u64 = 900;
    const LEEWAY: u64 = 5;

    fn tokens() -> Tokens {
        Tokens::new(TokenSettings {
            secret: SECRET.to_vec(),
            issuer: "gatehouse".into(),
            audience: "api".into(),
            access_ttl_secs: TTL,
            leeway_secs: LEEWAY,
        })
    }

    fn roles() -> Vec<String> {
        vec!["reader".into(), "creator".into()]
    }

    fn issue_at(now: u64, min_iat: u64) -> (String, Claims) {
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
        tokens().issue(&id, now).unwrap()
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
    fn forge_with(header: &Value, payload: &Value, key: &[u8], alg: Algorithm) -> String {
        let message = format!("{}.{}", b64(header), b64(payload));
        let signature =
            jsonwebtoken::crypto::sign(message.as_bytes(), &EncodingKey::from_secret(key), alg)
                .unwrap();
        format!("{message}.{signature}")
    }

    fn forge(header: &Value, payload: &Value) -> String {
        forge_with(header, payload, SECRET, Algorithm::HS256)
    }

    fn with(mut v: Value, key: &str, value: Value) -> Value {
        v[key] = value;
        v
    }

    fn without(mut v: Value, key: &str) -> Value {
        v.as_object_mut().unwrap().remove(key);
        v
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
        assert_eq!(header.alg, Algorithm::HS256);
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
        let strict = Tokens::new(TokenSettings {
            secret: SECRET.to_vec(),
            issuer: "gatehouse".into(),
            audience: "api".into(),
            access_ttl_secs: TTL,
            leeway_secs: 0,
        });
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
        let jku = with(
            with(h(), "kid", json!("k9")),
            "jku",
            json!("https://evil.example/jwks"),
        );
        let padded = with(p(), "pad", json!("x".repeat(MAX_TOKEN_LEN)));
        #[rustfmt::skip]
        let cases: Vec<(&str, String, Result<(), TokenError>)> = vec![
            ("well formed", good.clone(), Ok(())),
            ("full media type", forge(&with(h(), "typ", json!("application/AT+JWT")), &p()), Ok(())),
            ("extra claim", forge(&h(), &with(p(), "extra", json!(1))), Ok(())),
            ("kid and jku are ignored", forge(&jku, &p()), Ok(())),
            // Signature and algorithm attacks.
            ("wrong secret", forge_with(&h(), &p(), other_secret, Algorithm::HS256), invalid("signature")),
            ("tampered payload", format!("{gh}.{admin}.{gs}"), invalid("signature")),
            ("signature of another token", format!("{gh}.{gp}.{other_signature}"), invalid("signature")),
            ("alg none, no signature", format!("{none_header}.{gp}."), invalid("malformed")),
            ("alg none, any signature", format!("{none_header}.{gp}.{gs}"), invalid("algorithm")),
            ("alg None", format!("{}.{gp}.{gs}", b64(&json!({"alg": "None"}))), invalid("algorithm")),
            ("alg HS512, our secret", forge_with(&with(h(), "alg", json!("HS512")), &p(), SECRET, Algorithm::HS512), invalid("algorithm")),
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
        assert!(!fast.header_prefix.is_empty());
        assert!(issued.starts_with(&fast.header_prefix));
        let mut library = tokens();
        library.header_prefix.clear();
        let (h, p) = (header, payload);
        let own = || fast.header_prefix.trim_end_matches('.').to_owned();
        let sign = |message: String| {
            let signature = jsonwebtoken::crypto::sign(
                message.as_bytes(),
                &EncodingKey::from_secret(SECRET),
                Algorithm::HS256,
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
        let settings = TokenSettings {
            secret: SECRET.to_vec(),
            issuer: "gatehouse".into(),
            audience: "api".into(),
            access_ttl_secs: TTL,
            leeway_secs: LEEWAY,
        };
        let shown = format!("{settings:?} {:?}", Tokens::new(settings.clone()));
        assert!(!shown.contains("0123456789abcdef"), "{shown}");
    }
}
