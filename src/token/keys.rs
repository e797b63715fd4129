//! Signing and verification keys: the HS256 secret, or asymmetric key pairs (EdDSA, ES256,
//! RS256) read from PKCS#8 PEM files; their public halves as JWKs (RFC 7517) and
//! thumbprints (RFC 7638); fresh keys for `gatehouse keys generate`.
//!
//! Decisions, and why:
//!
//! - **Every key knows its one algorithm.** A [`VerifyKey`] pairs a key with the algorithm
//!   it was configured (or published) for; the verifier refuses a token whose `alg` differs
//!   (`mod.rs`), so no token can ask for HS256 keyed with a public key, or for `none`.
//! - **Keys are parsed once.** aws-lc-rs key pairs and [`ParsedPublicKey`]s are built when
//!   the config is loaded, so signing and verifying do no key parsing per token.
//!   `jsonwebtoken`'s own signers re-parse the key on every call; gatehouse signs with the
//!   prepared pairs and keeps `jsonwebtoken` for its general verification path.
//! - **Public keys come from the private ones**: aws-lc-rs derives them, so an operator
//!   mounts one file per key and the published JWK can never disagree with the signer.
//! - **A verifying key can come from a JWK** ([`VerifyKey::from_jwk`]), so a key set
//!   published by another issuer is verified by the same code as gatehouse's own keys.
//! - **`kid`s are plain**: 1–64 characters of `A-Z a-z 0-9 . _ -`, so they sit in a JSON
//!   header, a log line or a metric without escaping. The default `kid` of a key file is its
//!   RFC 7638 thumbprint; the HS256 secret's is a truncated HMAC of a fixed label under the
//!   secret, which names the secret without revealing anything the token's own HMAC does not.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    self as sig, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, ParsedPublicKey, RsaKeyPair,
    RsaPublicKeyComponents,
};
use aws_lc_rs::{digest, hmac};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use rustls_pki_types::PrivatePkcs8KeyDer;
use rustls_pki_types::pem::PemObject as _;
use serde_json::{Value, json};

use super::MintError;

/// The signing algorithms gatehouse issues tokens with (`tokens.algorithm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// HMAC-SHA256 under `tokens.secret`: only gatehouse can verify.
    HS256,
    /// Ed25519 (RFC 8037): small keys and signatures, fast to verify.
    EdDSA,
    /// ECDSA on P-256 with SHA-256, signatures as fixed 64-byte `r || s` (RFC 7518 §3.4).
    ES256,
    /// RSASSA-PKCS1-v1_5 with SHA-256, keys of 2048 to 8192 bits.
    RS256,
}

impl Algorithm {
    /// Every algorithm, in the order the docs list them.
    pub const ALL: [Algorithm; 4] = [
        Algorithm::HS256,
        Algorithm::EdDSA,
        Algorithm::ES256,
        Algorithm::RS256,
    ];

    /// The JOSE name (`alg`).
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::HS256 => "HS256",
            Algorithm::EdDSA => "EdDSA",
            Algorithm::ES256 => "ES256",
            Algorithm::RS256 => "RS256",
        }
    }

    /// The algorithm of a JOSE name, exactly as spelled (JOSE names are case-sensitive).
    pub fn from_name(name: &str) -> Option<Algorithm> {
        Algorithm::ALL.into_iter().find(|a| a.name() == name)
    }

    /// Whether verifying needs no secret (the key can be published).
    pub fn is_asymmetric(self) -> bool {
        self != Algorithm::HS256
    }

    /// The same algorithm for `jsonwebtoken`.
    pub fn jwt(self) -> jsonwebtoken::Algorithm {
        match self {
            Algorithm::HS256 => jsonwebtoken::Algorithm::HS256,
            Algorithm::EdDSA => jsonwebtoken::Algorithm::EdDSA,
            Algorithm::ES256 => jsonwebtoken::Algorithm::ES256,
            Algorithm::RS256 => jsonwebtoken::Algorithm::RS256,
        }
    }

    /// What a key of this algorithm is, for error messages.
    fn key_kind(self) -> &'static str {
        match self {
            Algorithm::HS256 => "an HMAC secret",
            Algorithm::EdDSA => "an Ed25519 key (EdDSA)",
            Algorithm::ES256 => "a P-256 EC key (ES256)",
            Algorithm::RS256 => "an RSA key (RS256)",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Checks a `kid`: 1–64 characters of `A-Z a-z 0-9 . _ -` (see the module doc).
pub fn check_kid(kid: &str) -> Result<(), String> {
    let plain = kid
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if kid.is_empty() || kid.len() > 64 || !plain {
        Err(format!(
            "{kid:?} is not a kid: use 1 to 64 characters of A-Z a-z 0-9 . _ -"
        ))
    } else {
        Ok(())
    }
}

/// The public parameters of an asymmetric key, base64url without padding as in a JWK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicJwk {
    /// Ed25519 (`kty: OKP`, `crv: Ed25519`).
    Okp { x: String },
    /// P-256 (`kty: EC`, `crv: P-256`).
    Ec { x: String, y: String },
    /// RSA (`kty: RSA`): modulus and exponent, big-endian without leading zeros.
    Rsa { n: String, e: String },
}

impl PublicJwk {
    /// The RFC 7638 thumbprint: SHA-256 of the required members in lexicographic order,
    /// base64url. Stable for a key, whatever its `kid`; the default `kid`.
    pub fn thumbprint(&self) -> String {
        // The members are base64url strings, which need no JSON escaping.
        let canonical = match self {
            PublicJwk::Okp { x } => format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#),
            PublicJwk::Ec { x, y } => {
                format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#)
            }
            PublicJwk::Rsa { n, e } => format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#),
        };
        URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, canonical.as_bytes()))
    }

    /// The JWK as published (RFC 7517 §4): `kty`, `kid`, `use`, `alg` and the public
    /// parameters only.
    pub fn to_json(&self, kid: &str, alg: Algorithm) -> Value {
        let mut jwk = match self {
            PublicJwk::Okp { x } => json!({"kty": "OKP", "crv": "Ed25519", "x": x}),
            PublicJwk::Ec { x, y } => json!({"kty": "EC", "crv": "P-256", "x": x, "y": y}),
            PublicJwk::Rsa { n, e } => json!({"kty": "RSA", "n": n, "e": e}),
        };
        jwk["kid"] = json!(kid);
        jwk["use"] = json!("sig");
        jwk["alg"] = json!(alg.name());
        jwk
    }

    /// The algorithm this key type can serve, and its aws-lc-rs public key.
    fn parse(&self) -> Result<(Algorithm, ParsedPublicKey), String> {
        let decode = |what: &str, v: &str| {
            URL_SAFE_NO_PAD
                .decode(v)
                .map_err(|_| format!("its {what} is not base64url"))
        };
        let rejected = |e: aws_lc_rs::error::KeyRejected| format!("the key is unusable ({e})");
        match self {
            PublicJwk::Okp { x } => {
                let key = ParsedPublicKey::new(&sig::ED25519, decode("x", x)?).map_err(rejected)?;
                Ok((Algorithm::EdDSA, key))
            }
            PublicJwk::Ec { x, y } => {
                let mut point = vec![4u8];
                point.extend(decode("x", x)?);
                point.extend(decode("y", y)?);
                let key =
                    ParsedPublicKey::new(&sig::ECDSA_P256_SHA256_FIXED, point).map_err(rejected)?;
                Ok((Algorithm::ES256, key))
            }
            PublicJwk::Rsa { n, e } => {
                let components = RsaPublicKeyComponents {
                    n: decode("n", n)?,
                    e: decode("e", e)?,
                };
                let key = components
                    .to_parsed_public_key(&sig::RSA_PKCS1_2048_8192_SHA256)
                    .map_err(rejected)?;
                Ok((Algorithm::RS256, key))
            }
        }
    }

    /// The same key for `jsonwebtoken`'s verification path.
    fn decoding_key(&self) -> Result<DecodingKey, String> {
        match self {
            PublicJwk::Okp { x } => DecodingKey::from_ed_components(x),
            PublicJwk::Ec { x, y } => DecodingKey::from_ec_components(x, y),
            PublicJwk::Rsa { n, e } => DecodingKey::from_rsa_components(n, e),
        }
        .map_err(|e| format!("the key is unusable ({e})"))
    }
}

/// A key that verifies tokens of one algorithm, found by its `kid`. Cheap to clone.
#[derive(Clone)]
pub struct VerifyKey {
    kid: Arc<str>,
    alg: Algorithm,
    check: Check,
    /// The same key for `jsonwebtoken`'s general path.
    decoding: DecodingKey,
    /// The public parameters, for the JWKS; `None` for an HMAC secret, which is never shown.
    public: Option<PublicJwk>,
}

// aws-lc's HMAC key holds its precomputed state inline (over a kilobyte), hence the box.
#[derive(Clone)]
enum Check {
    Hmac(Box<hmac::Key>),
    Public(Arc<ParsedPublicKey>),
}

impl fmt::Debug for VerifyKey {
    // Only the name and algorithm: a secret must never reach a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl VerifyKey {
    fn public(kid: &str, alg: Algorithm, jwk: PublicJwk) -> Result<VerifyKey, String> {
        let (kind, parsed) = jwk.parse()?;
        if kind != alg {
            return Err(format!("{} cannot verify {alg}", kind.key_kind()));
        }
        Ok(VerifyKey {
            kid: kid.into(),
            alg,
            check: Check::Public(Arc::new(parsed)),
            decoding: jwk.decoding_key()?,
            public: Some(jwk),
        })
    }

    /// A key published as a JWK (another issuer's JWKS), for `alg` (the JWK's own `alg`
    /// when it names one must agree). Only EdDSA, ES256 and RS256 keys are accepted; a JWK
    /// without `kid` is refused, since verification picks keys by `kid`.
    pub fn from_jwk(jwk: &Jwk, alg: Algorithm) -> Result<VerifyKey, String> {
        let kid = jwk
            .common
            .key_id
            .as_deref()
            .ok_or_else(|| "the JWK has no kid".to_string())?;
        if let Some(named) = jwk.common.key_algorithm
            && named.to_string() != alg.name()
        {
            return Err(format!("the JWK {kid:?} is for {named}, not {alg}"));
        }
        let public = match &jwk.algorithm {
            AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
                PublicJwk::Okp { x: p.x.clone() }
            }
            AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
                PublicJwk::Ec {
                    x: p.x.clone(),
                    y: p.y.clone(),
                }
            }
            AlgorithmParameters::RSA(p) => PublicJwk::Rsa {
                n: p.n.clone(),
                e: p.e.clone(),
            },
            _ => return Err(format!("the JWK {kid:?} is of an unsupported key type")),
        };
        VerifyKey::public(kid, alg, public)
    }

    /// The key's `kid`.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The one algorithm this key verifies.
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// The key for `jsonwebtoken`'s general verification path.
    pub fn decoding_key(&self) -> &DecodingKey {
        &self.decoding
    }

    /// The published JWK, or `None` for an HMAC secret.
    pub fn jwk(&self) -> Option<Value> {
        self.public.as_ref().map(|p| p.to_json(&self.kid, self.alg))
    }

    /// Whether `signature` (decoded) is this key's signature of `message`, under the key's
    /// own algorithm. HMAC tags are compared in constant time by aws-lc.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        match &self.check {
            Check::Hmac(key) => hmac::verify(key, message, signature).is_ok(),
            Check::Public(key) => key.verify_sig(message, signature).is_ok(),
        }
    }
}

/// A private key that signs tokens, with its public half. Cheap to clone.
#[derive(Clone)]
pub struct SigningKey {
    signer: Arc<Signer>,
    verify: VerifyKey,
}

enum Signer {
    Hmac(Box<hmac::Key>),
    Ed(Ed25519KeyPair),
    Ec(EcdsaKeyPair),
    Rsa(RsaKeyPair),
}

impl fmt::Debug for SigningKey {
    // Only the name and algorithm: the private key must never reach a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.verify.kid)
            .field("alg", &self.verify.alg)
            .finish_non_exhaustive()
    }
}

/// Label under the secret for the HS256 `kid` (see the module doc).
const HS256_KID_LABEL: &[u8] = b"gatehouse hs256 kid";

impl SigningKey {
    /// The HS256 key: the secret's bytes; its `kid` derived from the secret.
    pub fn hs256(secret: &[u8]) -> SigningKey {
        let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
        let tag = hmac::sign(&key, HS256_KID_LABEL);
        // 12 bytes (16 characters) tell keys apart; the rest would only lengthen headers.
        let kid = URL_SAFE_NO_PAD.encode(&tag.as_ref()[..12]);
        SigningKey {
            signer: Arc::new(Signer::Hmac(Box::new(key.clone()))),
            verify: VerifyKey {
                kid: kid.into(),
                alg: Algorithm::HS256,
                check: Check::Hmac(Box::new(key)),
                decoding: DecodingKey::from_secret(secret),
                public: None,
            },
        }
    }

    /// Reads a PKCS#8 PEM private key for `alg` (asymmetric) from `path`; `kid` defaults
    /// to the key's thumbprint. The message of an error says what is wrong with the file,
    /// for `tokens.keys[i].private_key: …`.
    pub fn from_pem_file(
        path: &Path,
        alg: Algorithm,
        kid: Option<&str>,
    ) -> Result<SigningKey, String> {
        let pem =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        SigningKey::from_pem(&pem, alg, kid).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// [`SigningKey::from_pem_file`] on the file's bytes.
    pub fn from_pem(pem: &[u8], alg: Algorithm, kid: Option<&str>) -> Result<SigningKey, String> {
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem).map_err(|_| {
            "holds no PKCS#8 private key (\"BEGIN PRIVATE KEY\"); convert a PKCS#1 or SEC1 \
             key with `openssl pkcs8 -topk8 -nocrypt -in OLD -out NEW`, or make one with \
             `gatehouse keys generate`"
                .to_string()
        })?;
        SigningKey::from_pkcs8(der.secret_pkcs8_der(), alg, kid)
    }

    /// A key from PKCS#8 DER for `alg`.
    pub fn from_pkcs8(der: &[u8], alg: Algorithm, kid: Option<&str>) -> Result<SigningKey, String> {
        let (signer, public) = match alg {
            Algorithm::HS256 => {
                return Err("HS256 takes tokens.secret, not a key file".into());
            }
            Algorithm::EdDSA => Ed25519KeyPair::from_pkcs8(der).map(|pair| {
                let x = URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
                (Signer::Ed(pair), PublicJwk::Okp { x })
            }),
            Algorithm::ES256 => {
                EcdsaKeyPair::from_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, der).map(|pair| {
                    // The uncompressed point: 0x04, then x and y of 32 bytes each.
                    let point = pair.public_key().as_ref();
                    let (x, y) = point[1..].split_at(32);
                    let public = PublicJwk::Ec {
                        x: URL_SAFE_NO_PAD.encode(x),
                        y: URL_SAFE_NO_PAD.encode(y),
                    };
                    (Signer::Ec(pair), public)
                })
            }
            Algorithm::RS256 => RsaKeyPair::from_pkcs8(der).map(|pair| {
                let components = RsaPublicKeyComponents::<Vec<u8>>::from(pair.public_key());
                let public = PublicJwk::Rsa {
                    n: URL_SAFE_NO_PAD.encode(&components.n),
                    e: URL_SAFE_NO_PAD.encode(&components.e),
                };
                (Signer::Rsa(pair), public)
            }),
        }
        .map_err(|_| mismatch(der, alg))?;
        let kid = match kid {
            Some(kid) => kid.to_string(),
            None => public.thumbprint(),
        };
        check_kid(&kid)?;
        Ok(SigningKey {
            signer: Arc::new(signer),
            verify: VerifyKey::public(&kid, alg, public)?,
        })
    }

    /// The key's `kid`.
    pub fn kid(&self) -> &str {
        &self.verify.kid
    }

    /// The algorithm it signs with.
    pub fn algorithm(&self) -> Algorithm {
        self.verify.alg
    }

    /// Its public half (for an HMAC secret, the same secret).
    pub fn verify_key(&self) -> &VerifyKey {
        &self.verify
    }

    /// The signature of `message` under this key's algorithm.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, MintError> {
        let rng = SystemRandom::new();
        match &*self.signer {
            Signer::Hmac(key) => Ok(hmac::sign(key, message).as_ref().to_vec()),
            Signer::Ed(pair) => Ok(pair.sign(message).as_ref().to_vec()),
            Signer::Ec(pair) => pair
                .sign(&rng, message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| MintError("signing")),
            Signer::Rsa(pair) => {
                let mut signature = vec![0; pair.public_modulus_len()];
                pair.sign(&sig::RSA_PKCS1_SHA256, &rng, message, &mut signature)
                    .map_err(|_| MintError("signing"))?;
                Ok(signature)
            }
        }
    }
}

/// Why a PKCS#8 key does not serve `alg`: names the key type it holds when it is one of ours.
fn mismatch(der: &[u8], alg: Algorithm) -> String {
    let held = if Ed25519KeyPair::from_pkcs8(der).is_ok() {
        Some(Algorithm::EdDSA)
    } else if EcdsaKeyPair::from_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, der).is_ok() {
        Some(Algorithm::ES256)
    } else if RsaKeyPair::from_pkcs8(der).is_ok() {
        Some(Algorithm::RS256)
    } else {
        None
    };
    match held {
        Some(held) => format!(
            "holds {}, but tokens.algorithm is {alg}, which needs {}",
            held.key_kind(),
            alg.key_kind()
        ),
        None => format!(
            "is not {} (other curves, RSA keys under 2048 or over 8192 bits and encrypted \
             keys are not supported)",
            alg.key_kind()
        ),
    }
}

/// A fresh private key for `alg` (asymmetric), as PKCS#8 PEM, with its thumbprint `kid`.
pub fn generate(alg: Algorithm) -> Result<(String, String), String> {
    let failed = |_| format!("could not generate {}", alg.key_kind());
    let der: Vec<u8> = match alg {
        Algorithm::HS256 => {
            return Err("HS256 uses tokens.secret (e.g. `openssl rand -base64 48`)".into());
        }
        // PKCS#8 v1, which every tool reads (`openssl genpkey` writes the same).
        Algorithm::EdDSA => Ed25519KeyPair::generate_pkcs8v1(&SystemRandom::new())
            .map_err(failed)?
            .as_ref()
            .to_vec(),
        Algorithm::ES256 => EcdsaKeyPair::generate_pkcs8(
            &sig::ECDSA_P256_SHA256_FIXED_SIGNING,
            &SystemRandom::new(),
        )
        .map_err(failed)?
        .as_ref()
        .to_vec(),
        // 2048 bits: the size RFC 7518 §3.3 requires at least, and the fastest to verify.
        Algorithm::RS256 => RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
            .and_then(|pair| pair.as_der())
            .map_err(failed)?
            .as_ref()
            .to_vec(),
    };
    let key = SigningKey::from_pkcs8(&der, alg, None)?;
    Ok((pem_encode(&der), key.kid().to_string()))
}

/// PKCS#8 DER as a PEM `PRIVATE KEY` block, 64 characters a line (RFC 7468).
fn pem_encode(der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for line in body.as_bytes().chunks(64) {
        // Base64 output is ASCII.
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    pem
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_8037_thumbprint() {
        // RFC 8037 Appendix A.3.
        let jwk = PublicJwk::Okp {
            x: "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo".into(),
        };
        assert_eq!(
            jwk.thumbprint(),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
    }

    #[test]
    fn generated_keys_sign_and_verify_under_their_own_algorithm_only() {
        for alg in [Algorithm::EdDSA, Algorithm::ES256, Algorithm::RS256] {
            let (pem, kid) = generate(alg).unwrap();
            assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{pem}");
            let key = SigningKey::from_pem(pem.as_bytes(), alg, None).unwrap();
            assert_eq!(key.kid(), kid);
            assert_eq!(key.algorithm(), alg);
            let signature = key.sign(b"message").unwrap();
            assert!(key.verify_key().verify(b"message", &signature), "{alg}");
            assert!(!key.verify_key().verify(b"messagf", &signature), "{alg}");
            // The published JWK holds no private member and verifies the same.
            let jwk = key.verify_key().jwk().unwrap();
            for private in ["d", "p", "q", "dp", "dq", "qi", "k"] {
                assert!(jwk.get(private).is_none(), "{alg}: {jwk}");
            }
            assert_eq!(jwk["alg"], alg.name());
            assert_eq!(jwk["use"], "sig");
            let parsed: Jwk = serde_json::from_value(jwk).unwrap();
            let again = VerifyKey::from_jwk(&parsed, alg).unwrap();
            assert!(again.verify(b"message", &signature), "{alg}");
            // Every other algorithm refuses the file, naming what it holds.
            for other in [Algorithm::EdDSA, Algorithm::ES256, Algorithm::RS256] {
                if other != alg {
                    let e = SigningKey::from_pem(pem.as_bytes(), other, None).unwrap_err();
                    assert!(e.contains(alg.key_kind()), "{e}");
                    assert!(VerifyKey::from_jwk(&parsed, other).is_err());
                }
            }
        }
    }

    #[test]
    fn bad_files_and_kids_are_refused_with_a_reason() {
        let e = SigningKey::from_pem(b"not a pem", Algorithm::EdDSA, None).unwrap_err();
        assert!(e.contains("PKCS#8"), "{e}");
        let (pem, _) = generate(Algorithm::EdDSA).unwrap();
        for kid in ["", "a/b", "../etc", "k id", &"k".repeat(65)] {
            assert!(SigningKey::from_pem(pem.as_bytes(), Algorithm::EdDSA, Some(kid)).is_err());
        }
        assert_eq!(
            SigningKey::from_pem(pem.as_bytes(), Algorithm::EdDSA, Some("2026-11.a_b"))
                .unwrap()
                .kid(),
            "2026-11.a_b"
        );
        let e = SigningKey::from_pem_file(Path::new("/nonexistent/k.pem"), Algorithm::EdDSA, None)
            .unwrap_err();
        assert!(e.contains("cannot read /nonexistent/k.pem"), "{e}");
    }

    #[test]
    fn hs256_kid_names_the_secret_without_showing_it() {
        let a = SigningKey::hs256(b"0123456789abcdef0123456789abcdef");
        let b = SigningKey::hs256(b"0123456789abcdef0123456789abcdeX");
        assert_ne!(a.kid(), b.kid());
        assert_eq!(a.kid().len(), 16);
        check_kid(a.kid()).unwrap();
        assert!(a.verify_key().jwk().is_none());
        assert!(!format!("{a:?}").contains("0123"));
    }
}
