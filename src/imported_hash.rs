//! Password hashes made by other systems and imported with their users (`gatehouse user
//! import`, `POST {prefix}/admin/users/import`): recognising them, refusing absurd costs,
//! verifying them with the crate that writes them, and making a dummy hash of the same cost.
//!
//! Decisions, and why:
//!
//! - **Schemes, each verified by the well-kept crate that writes it**: PHC `$argon2id$`,
//!   `$argon2i$`, `$argon2d$` (the `argon2` crate, as argon2-cffi writes them too; verified by
//!   `password.rs` with its pooled working memory), `$scrypt$` (RustCrypto `scrypt`),
//!   `$pbkdf2-sha256$` (RustCrypto `pbkdf2`, its PHC form `i=…,l=…`), and bcrypt `$2a$`,
//!   `$2b$`, `$2y$` (the `bcrypt` crate; passwords past 72 bytes are truncated, as every
//!   bcrypt did when the hash was made). `$2x$` (the broken 2011 crypt_blowfish) and every
//!   other prefix are refused at import, never guessed at.
//! - **Cost caps.** A stored hash decides how long its verification takes, so an import could
//!   otherwise make one login (or, through the failure work in `password.rs`, every failed
//!   login) take minutes. Each cap admits the common recommendations with room above them
//!   and refuses what no real deployment uses:
//!   - bcrypt: cost at most [`BCRYPT_MAX_COST`] (14, about 1 s of one core; 10–12 are usual);
//!   - argon2: memory at most [`ARGON2_MAX_MEMORY_KIB`] (128 MiB), passes at most
//!     [`ARGON2_MAX_PASSES`] (10), and memory × passes at most
//!     [`ARGON2_MAX_WORK_KIB`] (384 MiB: argon2-cffi's default 64 MiB × 3 and RFC 9106's
//!     second recommendation fit), lanes at most 16;
//!   - scrypt: memory (128 · r · 2^ln bytes) at most [`SCRYPT_MAX_MEMORY`] (256 MiB) and
//!     work (2^ln · r · p) at most twice the crate's recommendation (ln=17, r=8, p=1);
//!   - pbkdf2-sha256: at most [`PBKDF2_MAX_ROUNDS`] (2,000,000, about three times OWASP's
//!     600,000).
//!
//!   Output and salt lengths are bounded too (an output of 16 to 64 bytes, a salt of at
//!   least 8). The same checks run again before every verification, so a hash that reached
//!   the store some other way is refused rather than run.
//! - **A hash's [`Kind`] is its scheme and cost parameters** (no salt, no output). Every
//!   failed login does the work of each kind present (see `password.rs`), so kinds, not
//!   individual hashes, are what the timing defence keeps track of.

use std::fmt;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

/// The highest bcrypt cost accepted: 2^14 rounds, about one second of one core.
pub const BCRYPT_MAX_COST: u32 = 14;
/// argon2 memory cap in KiB (128 MiB).
pub const ARGON2_MAX_MEMORY_KIB: u32 = 128 * 1024;
/// argon2 passes cap.
pub const ARGON2_MAX_PASSES: u32 = 10;
/// argon2 memory × passes cap, in KiB (384 MiB).
pub const ARGON2_MAX_WORK_KIB: u64 = 384 * 1024;
/// argon2 lanes cap.
const ARGON2_MAX_LANES: u32 = 16;
/// scrypt memory cap in bytes (256 MiB).
pub const SCRYPT_MAX_MEMORY: u64 = 256 * 1024 * 1024;
/// scrypt work cap (2^ln · r · p): twice the `scrypt` crate's recommended ln=17, r=8, p=1.
pub const SCRYPT_MAX_WORK: u64 = 2 * (1 << 17) * 8;
/// pbkdf2-sha256 rounds cap.
pub const PBKDF2_MAX_ROUNDS: u32 = 2_000_000;
/// Output lengths accepted, in bytes.
const OUTPUT_LEN: std::ops::RangeInclusive<usize> = 16..=64;
/// The shortest salt accepted, in bytes.
const MIN_SALT: usize = 8;

/// A family of password hashes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scheme {
    Argon2,
    Scrypt,
    Pbkdf2Sha256,
    Bcrypt,
}

impl Scheme {
    /// The label of `gatehouse_password_upgrades_total{scheme}` and of log lines.
    pub fn label(self) -> &'static str {
        match self {
            Scheme::Argon2 => "argon2",
            Scheme::Scrypt => "scrypt",
            Scheme::Pbkdf2Sha256 => "pbkdf2-sha256",
            Scheme::Bcrypt => "bcrypt",
        }
    }
}

/// A scheme with its cost parameters: what decides how long a verification takes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Kind {
    scheme: Scheme,
    /// The parameters in a canonical spelling, e.g. `cost=12` or `argon2id v=19 m=19456,t=2,p=1 len=32`.
    params: String,
}

impl Kind {
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.scheme.label(), self.params)
    }
}

/// Recognises a hash and checks it is well formed and within the cost caps. The error is a
/// sentence for the import report; it never quotes the hash.
pub fn kind(hash: &str) -> Result<Kind, String> {
    if hash.starts_with("$2") {
        return bcrypt_kind(hash);
    }
    if !hash.starts_with('$') {
        return Err("is not a PHC string ($scheme$…) or a bcrypt hash ($2b$…)".into());
    }
    let id = hash[1..].split('$').next().unwrap_or_default();
    if !matches!(
        id,
        "argon2id" | "argon2i" | "argon2d" | "scrypt" | "pbkdf2-sha256"
    ) {
        let id: String = id.chars().take(32).collect();
        return Err(format!(
            "uses the scheme {id:?}; accepted are argon2id, argon2i, argon2d, scrypt, \
             pbkdf2-sha256 and bcrypt ($2a$, $2b$, $2y$)"
        ));
    }
    let parsed = PasswordHash::new(hash).map_err(|e| format!("is not a valid PHC string ({e})"))?;
    let output = parsed
        .hash
        .ok_or("has no hash output (a PHC string with parameters and salt only)")?;
    let salt = parsed.salt.ok_or("has no salt")?;
    let mut salt_bytes = [0u8; 64];
    let salt_len = salt
        .decode_b64(&mut salt_bytes)
        .map(<[u8]>::len)
        .map_err(|_| "has a salt that is not valid base64 (or longer than 64 bytes)")?;
    if salt_len < MIN_SALT {
        return Err(format!(
            "has a salt of {salt_len} bytes; at least {MIN_SALT} are required"
        ));
    }
    if !OUTPUT_LEN.contains(&output.len()) {
        return Err(format!(
            "has an output of {} bytes; {} to {} are accepted",
            output.len(),
            OUTPUT_LEN.start(),
            OUTPUT_LEN.end()
        ));
    }
    match parsed.algorithm.as_str() {
        "argon2id" | "argon2i" | "argon2d" => argon2_kind(&parsed, true),
        "scrypt" => scrypt_kind(&parsed),
        _ => pbkdf2_kind(&parsed),
    }
}

fn argon2_kind(parsed: &PasswordHash<'_>, capped: bool) -> Result<Kind, String> {
    let params = argon2::Params::try_from(parsed)
        .map_err(|e| format!("has invalid argon2 parameters ({e})"))?;
    let version = match parsed.version {
        None | Some(0x13) => 0x13,
        Some(0x10) => 0x10,
        Some(other) => return Err(format!("has an unknown argon2 version {other}")),
    };
    let (m, t, p) = (params.m_cost(), params.t_cost(), params.p_cost());
    if capped
        && (m > ARGON2_MAX_MEMORY_KIB
            || t > ARGON2_MAX_PASSES
            || p > ARGON2_MAX_LANES
            || u64::from(m) * u64::from(t) > ARGON2_MAX_WORK_KIB)
    {
        return Err(format!(
            "asks for argon2 m={m},t={t},p={p}, over the limits (m ≤ {ARGON2_MAX_MEMORY_KIB} KiB, \
             t ≤ {ARGON2_MAX_PASSES}, p ≤ {ARGON2_MAX_LANES}, m × t ≤ {ARGON2_MAX_WORK_KIB})"
        ));
    }
    let len = parsed.hash.map_or(0, |h| h.len());
    Ok(Kind {
        scheme: Scheme::Argon2,
        params: format!(
            "{} v={version} m={m},t={t},p={p} len={len}",
            parsed.algorithm
        ),
    })
}

fn scrypt_kind(parsed: &PasswordHash<'_>) -> Result<Kind, String> {
    let params = scrypt::Params::try_from(parsed)
        .map_err(|e| format!("has invalid scrypt parameters ({e})"))?;
    let (ln, r, p) = (params.log_n(), params.r(), params.p());
    let n = 1u64 << ln;
    let memory = 128 * u64::from(r) * n;
    let work = n * u64::from(r) * u64::from(p);
    if memory > SCRYPT_MAX_MEMORY || work > SCRYPT_MAX_WORK {
        return Err(format!(
            "asks for scrypt ln={ln},r={r},p={p}, over the limits (128·r·2^ln ≤ 256 MiB, \
             2^ln·r·p ≤ {SCRYPT_MAX_WORK})"
        ));
    }
    let len = parsed.hash.map_or(0, |h| h.len());
    Ok(Kind {
        scheme: Scheme::Scrypt,
        params: format!("ln={ln},r={r},p={p} len={len}"),
    })
}

fn pbkdf2_kind(parsed: &PasswordHash<'_>) -> Result<Kind, String> {
    let params = pbkdf2::Params::try_from(parsed)
        .map_err(|e| format!("has invalid pbkdf2 parameters ({e})"))?;
    if params.rounds == 0 || params.rounds > PBKDF2_MAX_ROUNDS {
        return Err(format!(
            "asks for {} pbkdf2 rounds; 1 to {PBKDF2_MAX_ROUNDS} are accepted",
            params.rounds
        ));
    }
    let len = parsed.hash.map_or(0, |h| h.len());
    if params.output_length != len {
        return Err(format!(
            "says l={} but its output has {len} bytes",
            params.output_length
        ));
    }
    Ok(Kind {
        scheme: Scheme::Pbkdf2Sha256,
        params: format!("i={} len={len}", params.rounds),
    })
}

fn bcrypt_kind(hash: &str) -> Result<Kind, String> {
    use base64::Engine;
    const FORM: &str = "is not a bcrypt hash ($2a$, $2b$ or $2y$, two cost digits, 53 characters of salt and hash)";
    let Some(rest) = ["$2a$", "$2b$", "$2y$"]
        .iter()
        .find_map(|prefix| hash.strip_prefix(prefix))
    else {
        return Err(if hash.starts_with("$2x$") {
            "is a $2x$ bcrypt hash (the broken crypt_blowfish of 2011), which is not accepted"
                .into()
        } else {
            FORM.into()
        });
    };
    let (cost, body) = rest.split_once('$').ok_or(FORM)?;
    // ASCII first: 53 bytes of anything else need not split into salt and hash at byte 22.
    if cost.len() != 2
        || !cost.bytes().all(|b| b.is_ascii_digit())
        || body.len() != 53
        || !body.is_ascii()
    {
        return Err(FORM.into());
    }
    let cost: u32 = cost.parse().map_err(|_| FORM)?;
    if !(4..=BCRYPT_MAX_COST).contains(&cost) {
        return Err(format!(
            "has bcrypt cost {cost}; 4 to {BCRYPT_MAX_COST} are accepted"
        ));
    }
    let (salt, output) = body.split_at(22);
    let decodes = |s: &str, len: usize| {
        bcrypt::BASE_64
            .decode(s)
            .is_ok_and(|bytes| bytes.len() == len)
    };
    if !decodes(salt, 16) || !decodes(output, 23) {
        return Err(FORM.into());
    }
    Ok(Kind {
        scheme: Scheme::Bcrypt,
        params: format!("cost={cost}"),
    })
}

/// The kind of an argon2 hash gatehouse made itself with the configured parameters, which
/// the operator chose and the import caps do not bound.
pub fn own_kind(hash: &str) -> Option<Kind> {
    let parsed = PasswordHash::new(hash).ok()?;
    argon2_kind(&parsed, false).ok()
}

/// The scheme a hash claims by its prefix, without checking the rest (for metric labels).
pub fn scheme_of(hash: &str) -> Option<Scheme> {
    let id = hash.strip_prefix('$')?.split('$').next()?;
    match id {
        "argon2id" | "argon2i" | "argon2d" => Some(Scheme::Argon2),
        "scrypt" => Some(Scheme::Scrypt),
        "pbkdf2-sha256" => Some(Scheme::Pbkdf2Sha256),
        "2a" | "2b" | "2y" => Some(Scheme::Bcrypt),
        _ => None,
    }
}

/// Verifies a password against a scrypt, pbkdf2-sha256 or bcrypt hash within the caps (argon2
/// hashes are `password.rs`'s, which lends them pooled memory). Blocks for as long as the
/// hash's cost says: call it on the blocking pool, behind the hashing semaphore.
pub fn verify(password: &[u8], hash: &str) -> bool {
    let Ok(kind) = kind(hash) else {
        return false;
    };
    match kind.scheme {
        Scheme::Bcrypt => bcrypt::verify(password, hash).unwrap_or(false),
        Scheme::Scrypt => PasswordHash::new(hash)
            .is_ok_and(|parsed| scrypt::Scrypt.verify_password(password, &parsed).is_ok()),
        Scheme::Pbkdf2Sha256 => PasswordHash::new(hash)
            .is_ok_and(|parsed| pbkdf2::Pbkdf2.verify_password(password, &parsed).is_ok()),
        Scheme::Argon2 => false,
    }
}

/// A hash of a random password with the same scheme and cost as `like` (scrypt,
/// pbkdf2-sha256, bcrypt): what a failed login verifies against to do that kind's work.
/// Costs one computation of that kind.
pub fn dummy_like(like: &str) -> Result<String, String> {
    let kind = kind(like)?;
    let mut password = [0u8; 32];
    let mut salt = [0u8; 16];
    getrandom::fill(&mut password).map_err(|e| format!("no randomness: {e}"))?;
    getrandom::fill(&mut salt).map_err(|e| format!("no randomness: {e}"))?;
    let salt_string = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    let parsed = PasswordHash::new(like);
    match (kind.scheme, parsed) {
        (Scheme::Bcrypt, _) => {
            let cost = like
                .get(4..6)
                .and_then(|c| c.parse().ok())
                .ok_or("bcrypt cost")?;
            bcrypt::hash_with_salt(password, cost, salt)
                .map(|parts| parts.to_string())
                .map_err(|e| e.to_string())
        }
        (Scheme::Scrypt, Ok(parsed)) => {
            let params = scrypt::Params::try_from(&parsed).map_err(|e| e.to_string())?;
            scrypt::Scrypt
                .hash_password_customized(&password, None, None, params, &salt_string)
                .map(|h| h.to_string())
                .map_err(|e| e.to_string())
        }
        (Scheme::Pbkdf2Sha256, Ok(parsed)) => {
            let params = pbkdf2::Params::try_from(&parsed).map_err(|e| e.to_string())?;
            pbkdf2::Pbkdf2
                .hash_password_customized(
                    &password,
                    Some(pbkdf2::Algorithm::Pbkdf2Sha256.ident()),
                    None,
                    params,
                    &salt_string,
                )
                .map(|h| h.to_string())
                .map_err(|e| e.to_string())
        }
        _ => Err(format!("no dummy for {kind} here")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrypt_hash(password: &str, ln: u8, r: u32, p: u32) -> String {
        let salt = SaltString::encode_b64(&[3u8; 16]).unwrap();
        let params = scrypt::Params::new(ln, r, p, 32).unwrap();
        scrypt::Scrypt
            .hash_password_customized(password.as_bytes(), None, None, params, &salt)
            .unwrap()
            .to_string()
    }

    fn pbkdf2_hash(password: &str, rounds: u32) -> String {
        let salt = SaltString::encode_b64(&[4u8; 16]).unwrap();
        let params = pbkdf2::Params {
            rounds,
            output_length: 32,
        };
        pbkdf2::Pbkdf2
            .hash_password_customized(
                password.as_bytes(),
                Some(pbkdf2::Algorithm::Pbkdf2Sha256.ident()),
                None,
                params,
                &salt,
            )
            .unwrap()
            .to_string()
    }

    #[test]
    fn each_scheme_verifies_with_its_crate() {
        let bcrypt = bcrypt::hash("correct horse", 4).unwrap();
        let scrypt = scrypt_hash("correct horse", 4, 8, 1);
        let pbkdf2 = pbkdf2_hash("correct horse", 1000);
        for hash in [&bcrypt, &scrypt, &pbkdf2] {
            assert!(verify(b"correct horse", hash), "{hash}");
            assert!(!verify(b"correct horsf", hash), "{hash}");
            assert!(!verify(b"", hash), "{hash}");
        }
        // $2a$ and $2y$ are the same computation as $2b$.
        for prefix in ["$2a$", "$2y$"] {
            let other = format!("{prefix}{}", &bcrypt[4..]);
            assert!(verify(b"correct horse", &other), "{other}");
        }
        assert_eq!(kind(&bcrypt).unwrap().to_string(), "bcrypt cost=4");
        assert_eq!(
            kind(&scrypt).unwrap().to_string(),
            "scrypt ln=4,r=8,p=1 len=32"
        );
        assert_eq!(
            kind(&pbkdf2).unwrap().to_string(),
            "pbkdf2-sha256 i=1000 len=32"
        );
    }

    #[test]
    fn dummies_have_the_same_kind_and_never_match() {
        for like in [
            bcrypt::hash("x", 5).unwrap(),
            scrypt_hash("x", 5, 4, 2),
            pbkdf2_hash("x", 2000),
        ] {
            let dummy = dummy_like(&like).unwrap();
            assert_eq!(kind(&dummy), kind(&like));
            assert_ne!(dummy, like);
            assert!(!verify(b"x", &dummy));
        }
    }

    #[test]
    fn malformed_unknown_and_absurd_hashes_are_refused() {
        let bcrypt = bcrypt::hash("x", 4).unwrap();
        let refused = |hash: &str, says: &str| {
            let e = kind(hash).expect_err(hash);
            assert!(e.contains(says), "{hash}: {e}");
            assert!(!verify(b"x", hash), "{hash}");
        };
        refused("", "not a PHC string");
        refused("plain text", "not a PHC string");
        refused("$md5$abc$def", "scheme \"md5\"");
        refused(
            "$pbkdf2-sha512$i=1000,l=64$c2FsdHNhbHQ$aGFzaA",
            "pbkdf2-sha512",
        );
        refused(
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ",
            "no hash output",
        );
        refused(&format!("$2x${}", &bcrypt[4..]), "$2x$");
        refused(&bcrypt[..59], "not a bcrypt hash");
        refused(&format!("$2b$4${}", &bcrypt[7..]), "not a bcrypt hash");
        refused(&format!("$2b$15${}", &bcrypt[7..]), "cost 15");
        refused(&format!("$2b$31${}", &bcrypt[7..]), "cost 31");
        refused(&format!("{}!", &bcrypt[..59]), "not a bcrypt hash");
        // 53 bytes, but not 53 characters: a multi-byte character across the salt's end
        // must be refused, not split (a panic on the import request, and on every login of
        // such a stored hash).
        let straddling = format!("$2b$12${}é{}", "a".repeat(21), "a".repeat(30));
        refused(&straddling, "not a bcrypt hash");
        // Costs over the caps, written by hand: computing them is what the caps prevent.
        refused(
            "$argon2id$v=19$m=4194304,t=1,p=1$c2FsdHNhbHQ$MTIzNDU2Nzg5MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTI",
            "over the limits",
        );
        refused(
            "$argon2id$v=19$m=65536,t=8,p=1$c2FsdHNhbHQ$MTIzNDU2Nzg5MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTI",
            "over the limits",
        );
        refused(
            "$scrypt$ln=20,r=8,p=1$c2FsdHNhbHQ$MTIzNDU2Nzg5MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTI",
            "over the limits",
        );
        refused(
            "$scrypt$ln=17,r=8,p=3$c2FsdHNhbHQ$MTIzNDU2Nzg5MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTI",
            "over the limits",
        );
        refused(
            "$pbkdf2-sha256$i=50000000,l=32$c2FsdHNhbHQ$MTIzNDU2Nzg5MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTI",
            "rounds",
        );
        refused(
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$MTIzNDU2Nzg5MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTI",
            "salt of 4 bytes",
        );
        // Within the caps: argon2-cffi's defaults, OWASP's, the scrypt crate's recommendation.
        for ok in [
            "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHRzYWx0$MTIzNDU2Nzg5MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTI",
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$MTIzNDU2Nzg5MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTI",
            "$argon2i$v=19$m=4096,t=3,p=1$c2FsdHNhbHRzYWx0$MTIzNDU2Nzg5MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTI",
            "$scrypt$ln=17,r=8,p=1$c2FsdHNhbHRzYWx0$MTIzNDU2Nzg5MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTI",
            "$pbkdf2-sha256$i=600000,l=32$c2FsdHNhbHRzYWx0$MTIzNDU2Nzg5MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTI",
        ] {
            assert!(kind(ok).is_ok(), "{ok}: {:?}", kind(ok));
        }
    }
}
