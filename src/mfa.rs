//! The TOTP second factor's pure half (RFC 6238): secrets, codes, recovery codes, and the
//! sealing of secrets for the store. No IO, no clock: times are parameters.
//!
//! - **Codes** are computed by the `totp-rs` crate (HMAC-SHA1, 6 digits, 30 s steps, what
//!   every authenticator app speaks). [`matching_step`] finds which of the steps around now
//!   (±1 for clock skew) a code belongs to, comparing in constant time; the service then
//!   accepts that step only if it is later than the last one accepted, so a code works once.
//! - **Secrets** are 160 bits (RFC 4226 §4 recommends it) and are sealed with AES-256-GCM
//!   (aws-lc-rs, the one crypto provider linked) under a key derived from
//!   `auth.mfa.encryption_key`, a random 96-bit nonce per seal, and the user id as
//!   associated data, so a sealed secret copied onto another user's record does not open.
//! - **Recovery codes** carry 80 bits each from the system's RNG and are stored as SHA-256,
//!   like every other high-entropy token: nothing to brute-force, so no slow hash is needed.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use sha2::{Digest, Sha256};
use totp_rs::{Algorithm, TOTP};

use crate::token::ct_eq;

/// RFC 6238's default step and the only one authenticator apps agree on.
pub const STEP_SECS: u64 = 30;
/// Digits of a code.
const DIGITS: usize = 6;
/// Bytes of a TOTP secret: 160 bits, the HMAC-SHA1 block's natural key (RFC 4226 §4).
pub const SECRET_BYTES: usize = 20;
/// How many recovery codes a confirmation hands out.
pub const RECOVERY_CODES: usize = 10;
/// Random bytes per recovery code: 80 bits, written as 16 base32 characters.
const RECOVERY_CODE_BYTES: usize = 10;
/// Domain separation for the key derived from `auth.mfa.encryption_key`.
const KEY_CONTEXT: &[u8] = b"gatehouse mfa secret sealing v1\0";

/// Something went wrong with the randomness or the cipher; never a client's fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MfaError(pub &'static str);

/// Seals and opens TOTP secrets under the configured key.
pub struct Sealer(LessSafeKey);

impl Sealer {
    /// A sealer for `encryption_key` (at least 32 bytes, checked by the config).
    pub fn new(encryption_key: &[u8]) -> Result<Sealer, MfaError> {
        let mut hasher = Sha256::new();
        hasher.update(KEY_CONTEXT);
        hasher.update(encryption_key);
        let key = UnboundKey::new(&AES_256_GCM, &hasher.finalize())
            .map_err(|_| MfaError("cipher key"))?;
        Ok(Sealer(LessSafeKey::new(key)))
    }

    /// `nonce ‖ ciphertext ‖ tag` of `secret`, bound to `user_id`.
    pub fn seal(&self, user_id: &str, secret: &[u8]) -> Result<Vec<u8>, MfaError> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|_| MfaError("rng"))?;
        let mut sealed = secret.to_vec();
        self.0
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(user_id.as_bytes()),
                &mut sealed,
            )
            .map_err(|_| MfaError("seal"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// The secret sealed by [`Sealer::seal`] for `user_id`; an error when the key, the user
    /// or the bytes differ.
    pub fn open(&self, user_id: &str, sealed: &[u8]) -> Result<Vec<u8>, MfaError> {
        if sealed.len() < NONCE_LEN {
            return Err(MfaError("sealed secret too short"));
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| MfaError("nonce"))?;
        let mut body = body.to_vec();
        let plain = self
            .0
            .open_in_place(nonce, Aad::from(user_id.as_bytes()), &mut body)
            .map_err(|_| MfaError("the sealed secret does not open with this key"))?;
        Ok(plain.to_vec())
    }
}

/// A fresh random TOTP secret.
pub fn new_secret() -> Result<Vec<u8>, MfaError> {
    let mut secret = vec![0u8; SECRET_BYTES];
    getrandom::fill(&mut secret).map_err(|_| MfaError("rng"))?;
    Ok(secret)
}

/// The TOTP of a secret, labelled for an authenticator app (`issuer:account`; `:` is the
/// label's separator, so it is dropped from the account name).
fn totp(secret: &[u8], issuer: &str, account: &str) -> Result<TOTP, MfaError> {
    TOTP::new(
        Algorithm::SHA1,
        DIGITS,
        1,
        STEP_SECS,
        secret.to_vec(),
        Some(issuer.to_owned()),
        account.replace(':', ""),
    )
    .map_err(|_| MfaError("totp parameters"))
}

/// The base32 secret and the `otpauth://totp/…` URL (for a QR code) a setup hands out.
pub fn provisioning(
    secret: &[u8],
    issuer: &str,
    account: &str,
) -> Result<(String, String), MfaError> {
    let totp = totp(secret, issuer, account)?;
    Ok((totp.get_secret_base32(), totp.get_url()))
}

/// The time step of a Unix time.
pub fn step_of(unix: u64) -> u64 {
    unix / STEP_SECS
}

/// The step among now's and its neighbours (±1, for clock skew) whose code `code` is, the
/// latest first; `None` for any other code, or one that is not six digits. Every candidate
/// is compared in constant time.
pub fn matching_step(secret: &[u8], code: &str, now: u64) -> Option<u64> {
    let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    if code.len() != DIGITS || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let totp = totp(secret, "x", "x").ok()?;
    let now = step_of(now);
    let mut found = None;
    for step in [now + 1, now, now.saturating_sub(1)] {
        let expected = totp.generate(step * STEP_SECS);
        if ct_eq(expected.as_bytes(), code.as_bytes()) && found.is_none() {
            found = Some(step);
        }
    }
    found
}

/// Ten fresh recovery codes, as shown to the user (`xxxx-xxxx-xxxx-xxxx`, base32).
pub fn new_recovery_codes() -> Result<Vec<String>, MfaError> {
    (0..RECOVERY_CODES)
        .map(|_| {
            let mut bytes = [0u8; RECOVERY_CODE_BYTES];
            getrandom::fill(&mut bytes).map_err(|_| MfaError("rng"))?;
            let text = base32_lower(&bytes);
            let groups: Vec<&str> = text
                .as_bytes()
                .chunks(4)
                .map(|c| std::str::from_utf8(c).unwrap_or_default())
                .collect();
            Ok(groups.join("-"))
        })
        .collect()
}

/// The stored form of a recovery code: SHA-256 of its characters without separators or
/// spaces, lower-cased, so `ABCD-efgh …` and `abcdefgh…` are the same code.
pub fn recovery_code_hash(code: &str) -> [u8; 32] {
    let normal: String = code
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    Sha256::digest(normal.as_bytes()).into()
}

/// RFC 4648 base32 without padding, lower case (easier to read back from paper).
fn base32_lower(bytes: &[u8]) -> String {
    base32::encode(base32::Alphabet::Rfc4648Lower { padding: false }, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn sealed_secrets_open_only_for_their_user_and_key() {
        let sealer = Sealer::new(KEY).unwrap();
        let secret = new_secret().unwrap();
        let sealed = sealer.seal("u1", &secret).unwrap();
        assert_ne!(
            &sealed[NONCE_LEN..NONCE_LEN + SECRET_BYTES],
            secret.as_slice()
        );
        assert_eq!(sealer.open("u1", &sealed).unwrap(), secret);
        assert!(sealer.open("u2", &sealed).is_err(), "bound to the user");
        let other = Sealer::new(b"another key of at least thirty-two bytes").unwrap();
        assert!(other.open("u1", &sealed).is_err(), "bound to the key");
        assert_ne!(sealer.seal("u1", &secret).unwrap(), sealed, "fresh nonce");
        assert!(sealer.open("u1", &sealed[..5]).is_err());
    }

    #[test]
    fn codes_match_their_step_and_its_neighbours_only() {
        let secret = new_secret().unwrap();
        let totp = totp(&secret, "x", "x").unwrap();
        let now = 1_800_000_015;
        let at = |step: u64| totp.generate(step * STEP_SECS);
        let s = step_of(now);
        assert_eq!(matching_step(&secret, &at(s), now), Some(s));
        assert_eq!(matching_step(&secret, &at(s - 1), now), Some(s - 1));
        assert_eq!(matching_step(&secret, &at(s + 1), now), Some(s + 1));
        // ±2 steps are refused (unless the 6-digit codes happen to collide).
        for far in [s - 2, s + 2] {
            if ![s - 1, s, s + 1].iter().any(|n| at(*n) == at(far)) {
                assert_eq!(matching_step(&secret, &at(far), now), None);
            }
        }
        assert_eq!(matching_step(&secret, "12345", now), None);
        assert_eq!(matching_step(&secret, "abcdef", now), None);
        let spaced = format!("{} {}", &at(s)[..3], &at(s)[3..]);
        assert_eq!(matching_step(&secret, &spaced, now), Some(s));
    }

    #[test]
    fn the_rfc_6238_vector_for_sha1() {
        // RFC 6238 Appendix B, T = 59: 94287082 (8 digits); its last six are 287082.
        let secret = b"12345678901234567890";
        assert_eq!(matching_step(secret, "287082", 59), Some(1));
    }

    #[test]
    fn recovery_codes_are_distinct_and_normalised() {
        let codes = new_recovery_codes().unwrap();
        assert_eq!(codes.len(), RECOVERY_CODES);
        let unique: std::collections::HashSet<_> = codes.iter().collect();
        assert_eq!(unique.len(), RECOVERY_CODES);
        for code in &codes {
            assert_eq!(code.len(), 19, "{code}");
            let loose = code.replace('-', " ").to_uppercase();
            assert_eq!(recovery_code_hash(code), recovery_code_hash(&loose));
        }
        assert_eq!(base32_lower(b"foobar"), "mzxw6ytboi");
    }

    #[test]
    fn provisioning_names_issuer_and_account() {
        let (b32, url) = provisioning(b"12345678901234567890", "Acme", "a:b@example.com").unwrap();
        assert_eq!(b32, "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ");
        assert!(
            url.starts_with("otpauth://totp/Acme:ab%40example.com?secret="),
            "{url}"
        );
        assert!(url.contains("issuer=Acme"), "{url}");
    }
}
