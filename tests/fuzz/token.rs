//! Target `token`: bearer parsing (`token::bearer`) and access-token verification
//! (`Tokens::verify`, both its fast path for our own header and its `jsonwebtoken` path).
//!
//! Input: the bytes of an `Authorization` header value's token part. The generator builds
//! tokens from JSON headers and payloads (ours, reordered, `alg` and `typ` swapped, claims
//! missing, duplicated, mistyped), signs them with the right key, a wrong key or not at all,
//! then often damages them (flipped characters, spliced segments, padding, a re-encoded
//! payload under the old signature).
//!
//! Properties:
//! - nothing panics, on the token or on `Bearer <bytes>` as a header value;
//! - `bearer` returns exactly the bytes after a case-insensitive `Bearer ` and only
//!   RFC 6750 `b64token` characters;
//! - an accepted token is signed with the configured secret: an HMAC-SHA256 computed here,
//!   independently of aws-lc and of `jsonwebtoken`, matches its signature; its header says
//!   `alg: HS256` and an at+jwt `typ`; its claims are exactly its payload, with our issuer,
//!   audience, `token_use: access`, and `nbf`/`exp` in force;
//! - `Tokens::verify` gives exactly the answer of the same verifier with its fast path off
//!   (`general_path_only`): the same acceptance, claims and refusal reason, for tokens with
//!   our exact header and any other;
//! - it is at least as strict as a reference built here on plain `jsonwebtoken::decode`
//!   under the same validation: whatever the reference refuses is refused; whatever it
//!   accepts and `verify` refuses is refused for one of the strict verifier's reasons, and
//!   an independent check here confirms the lenient case (JSON that `serde_json::Value`
//!   reads differently from its bytes, `crit`, an unknown `kid`, an `iat` ahead, an
//!   identity claim no header can carry).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use gatehouse::token::{self, Claims, Identity, TokenError, TokenSettings, Tokens};
use http::HeaderValue;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::engine::{Outcome, Rng, Target, feature};

const SECRET: &[u8] = b"fuzz-secret-0123456789abcdef-0123456789";
const WRONG_SECRET: &[u8] = b"fuzz-secret-0123456789abcdef-012345678X";
const ISSUER: &str = "gatehouse";
const AUDIENCE: &str = "api";
const NOW: u64 = 1_800_000_000;
const TTL: u64 = 900;
const LEEWAY: u64 = 5;

pub struct TokenTarget {
    tokens: Tokens,
    /// The same verifier, general path only.
    general: Tokens,
    /// The `kid` our tokens carry.
    kid: String,
    decoding: DecodingKey,
    validation: Validation,
    /// The first segment of the tokens we issue (the fast path's header).
    own_header: String,
    /// Tokens issued by `Tokens::issue`, as mutation material.
    issued: Vec<String>,
}

impl TokenTarget {
    pub fn new() -> TokenTarget {
        let settings = TokenSettings::hs256(SECRET, ISSUER, AUDIENCE, TTL, LEEWAY);
        let kid = settings.signing.kid().to_owned();
        let general = Tokens::new(settings.clone()).general_path_only();
        let tokens = Tokens::new(settings);
        // The validation `Tokens::new` builds, written out again (it is private there).
        let mut validation = Validation::new(Algorithm::HS256);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        validation.validate_aud = true;
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        let roles = ["admin".to_owned(), "reader".to_owned()];
        let issued: Vec<String> = (0..4u64)
            .map(|i| {
                let id = Identity {
                    user_id: "u-1",
                    email: "a@example.com",
                    roles: &roles[..(i as usize % 3)],
                    email_verified: i % 2 == 0,
                    session_id: "s-1",
                    min_iat: 0,
                    amr: &["pwd"],
                };
                tokens.issue(&id, NOW - i * 100).expect("issue").0
            })
            .collect();
        let own_header = issued[0].split('.').next().unwrap_or_default().to_owned();
        TokenTarget {
            tokens,
            general,
            kid,
            decoding: DecodingKey::from_secret(SECRET),
            validation,
            own_header,
            issued,
        }
    }

    /// What `Tokens::verify` would answer if every token took the library path: the size and
    /// shape checks, `jsonwebtoken::decode`, the type markers, then time.
    fn reference(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        if token.len() > token::MAX_TOKEN_LEN {
            return Err(TokenError::Invalid("oversized"));
        }
        if !has_jwt_shape(token) {
            return Err(TokenError::Invalid("malformed"));
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| library_reason(&e, token))?;
        let typ_ok = data.header.typ.as_deref().is_some_and(|t| {
            let t = t.strip_prefix("application/").unwrap_or(t);
            t.eq_ignore_ascii_case(token::ACCESS_TOKEN_TYP)
        });
        if !typ_ok || data.claims.token_use != token::ACCESS_TOKEN_USE {
            return Err(TokenError::Invalid("type"));
        }
        let claims = data.claims;
        if now.saturating_add(LEEWAY) < claims.nbf {
            return Err(TokenError::Invalid("not_yet_valid"));
        }
        if now >= claims.exp.saturating_add(LEEWAY) {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

/// Three non-empty segments of base64url characters.
fn has_jwt_shape(token: &str) -> bool {
    let parts: Vec<&str> = token.split('.').collect();
    parts.len() == 3
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// The reason labels `token.rs` documents for each `jsonwebtoken` error.
fn library_reason(e: &jsonwebtoken::errors::Error, token: &str) -> TokenError {
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
        ErrorKind::ExpiredSignature => return TokenError::Expired,
        ErrorKind::ImmatureSignature => "not_yet_valid",
        ErrorKind::Json(_) => {
            if jsonwebtoken::decode_header(token).is_ok() {
                "claims"
            } else {
                #[derive(Deserialize)]
                struct AlgOnly {
                    alg: Option<String>,
                }
                let alg = URL_SAFE_NO_PAD
                    .decode(token.split('.').next().unwrap_or_default())
                    .ok()
                    .and_then(|j| serde_json::from_slice::<AlgOnly>(&j).ok())
                    .and_then(|h| h.alg);
                match alg {
                    Some(alg) if alg != "HS256" => "algorithm",
                    _ => "header",
                }
            }
        }
        _ => "malformed",
    };
    TokenError::Invalid(reason)
}

/// HMAC-SHA256 from its definition (RFC 2104) over sha2, independent of the code under test.
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |b: u8| block.map(|k| k ^ b);
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn sign(header: &str, payload: &str, key: &[u8]) -> String {
    let message = format!("{header}.{payload}");
    let tag = hmac_sha256(key, message.as_bytes());
    format!("{message}.{}", b64(&tag))
}

fn header_json(rng: &mut Rng, kid: &str) -> String {
    const ALGS: &[&str] = &[
        "HS256", "HS256", "HS256", "hs256", "HS384", "HS512", "none", "RS256", "ES256", "",
    ];
    const TYPS: &[&str] = &[
        "at+jwt",
        "at+jwt",
        "AT+JWT",
        "application/at+jwt",
        "JWT",
        "jwt",
        "",
        "at+jwt ",
    ];
    let alg = rng.pick(ALGS);
    let typ = rng.pick(TYPS);
    let kid = if rng.one_in(4) {
        rng.pick(&["k1", "", "../../etc/passwd"]).to_owned()
    } else {
        kid.to_owned()
    };
    match rng.below(14) {
        9 => format!(r#"{{"alg":"{alg}","typ":"{typ}","kid":"{kid}"}}"#),
        10 => format!(r#"{{"alg":"{alg}","typ":"{typ}","kid":"{kid}","kid":"k1"}}"#),
        11 => format!(r#"{{"alg":"{alg}","typ":"{typ}","kid":"{kid}","crit":[]}}"#),
        12 => format!(r#"{{"alg":"{alg}","typ":"{typ}","kid":"{kid}","x":"\ud800"}}"#),
        13 => format!(
            r#"{{"alg":"{alg}","typ":"{typ}","kid":"{kid}","jwk":{{"kty":"oct"}},"x":1e400}}"#
        ),
        0 => format!(r#"{{"alg":"{alg}","typ":"{typ}"}}"#),
        1 => format!(r#"{{"alg":"{alg}"}}"#),
        2 => format!(r#"{{"typ":"{typ}"}}"#),
        3 => format!(r#"{{ "typ" : "{typ}" , "alg" : "{alg}" , "kid":"k1" }}"#),
        4 => format!(r#"{{"typ":"{typ}","alg":"{alg}","alg":"none"}}"#),
        5 => format!(r#"{{"typ":"{typ}","alg":"{alg}","crit":["exp"],"jku":"http://x"}}"#),
        6 => format!(r#"{{"typ":{},"alg":"{alg}"}}"#, rng.below(3)),
        7 => r#"{"typ":"at+jwt","alg":"HS256"}"#.to_owned(),
        _ => format!(r#"{{"typ":"{typ}","alg":"{alg}"}}"#),
    }
}

fn payload_json(rng: &mut Rng) -> String {
    let time = |rng: &mut Rng| -> Value {
        match rng.below(10) {
            0 => json!(-1),
            1 => json!(1.5e9),
            2 => json!(u64::MAX),
            3 => json!("1800000000"),
            4 => json!(0),
            _ => json!(NOW as i64 + rng.below(4000) as i64 - 2000),
        }
    };
    let mut claims = json!({
        "sub": "u-1", "email": "a@example.com", "roles": ["admin"], "email_verified": true,
        "iss": ISSUER, "aud": AUDIENCE, "iat": NOW, "nbf": NOW - 10, "exp": NOW + 600,
        "jti": "j", "sid": "s-1", "token_use": "access",
    });
    let map = claims.as_object_mut().expect("an object");
    for _ in 0..rng.below(4) {
        let keys: Vec<String> = map.keys().cloned().collect();
        let key = rng.pick_ref(&keys).clone();
        match rng.below(8) {
            0 => {
                map.remove(&key);
            }
            1 => {
                map.insert(key, json!(null));
            }
            2 => {
                map.insert(key, json!([ISSUER, AUDIENCE]));
            }
            3 => {
                map.insert(key, json!(12));
            }
            4 => {
                let v = time(rng);
                map.insert(rng.pick(&["nbf", "exp", "iat"]).to_string(), v);
            }
            5 => {
                map.insert(
                    rng.pick(&["iss", "aud", "token_use", "typ", "alg"])
                        .to_string(),
                    json!(rng.pick(&[
                        "",
                        "gatehouse",
                        "api",
                        "Api",
                        "refresh",
                        "access",
                        "gatehouse\u{0}"
                    ])),
                );
            }
            6 => {
                map.insert("extra".into(), json!({"nested": [1, 2, {"k": "v"}]}));
            }
            7 => {
                // Identity claims that cannot become headers.
                let bad = json!(rng.pick(&["u\r\nx", "u\u{0}", " u", "", "é", "a,b", "ok"]));
                match rng.below(3) {
                    0 => map.insert("sub".into(), bad),
                    1 => map.insert("email".into(), bad),
                    _ => map.insert("roles".into(), json!(["reader", bad])),
                };
            }
            _ => {}
        }
    }
    let mut text = claims.to_string();
    match rng.below(14) {
        // Members nobody reads, which a lenient parser skips without judging.
        8 => text = text.replacen('{', r#"{"x":1,"x":2,"#, 1),
        9 => text = text.replacen('{', r#"{"x":"\udc00","#, 1),
        10 => text = text.replacen('{', r#"{"x":[1e400],"#, 1),
        11 => text = text.replacen('{', r#"{"x":{"a":1,"a":1},"#, 1),
        12 => text = format!("[{text}]"),
        13 => {
            // The claims by position, which a struct deserialiser accepts from an array.
            let v: Value = serde_json::from_str(&text).unwrap_or_default();
            let fields = [
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
                "token_use",
            ];
            text = Value::Array(fields.iter().map(|f| v[*f].clone()).collect()).to_string();
        }
        // A duplicated claim, which a map keeps last and a struct refuses.
        0 => text = text.replacen('{', r#"{"iss":"evil","#, 1),
        1 => text = text.replacen('{', r#"{"token_use":"refresh","#, 1),
        2 => text = format!(" {text}\n"),
        3 => text = text.replace("\"access\"", "\"acc\\u0065ss\""),
        _ => {}
    }
    text
}

impl Target for TokenTarget {
    const NAME: &'static str = "token";

    fn generate(&mut self, rng: &mut Rng) -> Vec<u8> {
        let token = match rng.below(6) {
            0 => rng.pick_ref(&self.issued).clone(),
            _ => {
                let header = if rng.one_in(2) {
                    self.own_header.clone()
                } else {
                    b64(header_json(rng, &self.kid).as_bytes())
                };
                let payload = b64(payload_json(rng).as_bytes());
                match rng.below(6) {
                    0 => sign(&header, &payload, WRONG_SECRET),
                    1 => format!("{header}.{payload}.{}", b64(&[0u8; 32])),
                    2 => format!(
                        "{header}.{payload}.{}",
                        b64(&hmac_sha256(SECRET, payload.as_bytes()))
                    ),
                    _ => sign(&header, &payload, SECRET),
                }
            }
        };
        let mut bytes = token.into_bytes();
        if rng.one_in(2) {
            self.mutate(&mut bytes, rng);
        }
        bytes
    }

    /// Damage that keeps the token looking like a JWT: one character changed, segments
    /// swapped between tokens, padding, the payload re-encoded under the old signature, the
    /// header replaced, a signature truncated or lengthened.
    fn mutate(&mut self, input: &mut Vec<u8>, rng: &mut Rng) {
        let text = String::from_utf8_lossy(input).into_owned();
        let mut parts: Vec<String> = text.split('.').map(str::to_owned).collect();
        const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        match rng.below(9) {
            0 if !input.is_empty() => {
                let i = rng.below(input.len());
                input[i] = rng.pick(B64);
                return;
            }
            1 => {
                let other = rng.pick_ref(&self.issued).clone();
                let segment = rng.below(3);
                if let (Some(slot), Some(theirs)) =
                    (parts.get_mut(segment), other.split('.').nth(segment))
                {
                    *slot = theirs.to_owned();
                }
            }
            2 => {
                let segment = rng.below(parts.len());
                parts[segment].push_str(rng.pick(&["=", "==", "A", "AA", "+", "/", " "]));
            }
            3 if parts.len() == 3 => {
                // Re-encode the payload (whitespace, key order) under the old signature.
                if let Some(value) = URL_SAFE_NO_PAD
                    .decode(&parts[1])
                    .ok()
                    .and_then(|j| serde_json::from_slice::<Value>(&j).ok())
                {
                    let json = if rng.one_in(2) {
                        serde_json::to_string_pretty(&value).unwrap_or_default()
                    } else {
                        format!(" {value}")
                    };
                    parts[1] = b64(json.as_bytes());
                }
            }
            4 if parts.len() == 3 => parts[0] = b64(header_json(rng, &self.kid).as_bytes()),
            5 if parts.len() == 3 => {
                let mut keep = rng.below(parts[2].len() + 1);
                while !parts[2].is_char_boundary(keep) {
                    keep -= 1;
                }
                parts[2].truncate(keep);
                if rng.one_in(2) {
                    parts[2].push_str(&"A".repeat(rng.below(80)));
                }
            }
            6 if parts.len() == 3 => {
                // Re-sign whatever is there with the right key: may be accepted.
                let signed = sign(&parts[0], &parts[1], SECRET);
                *input = signed.into_bytes();
                return;
            }
            7 => {
                let i = rng.below(parts.len());
                let j = rng.below(parts.len());
                parts.swap(i, j);
            }
            _ => {
                if rng.one_in(2) {
                    parts.push(String::new());
                } else if parts.len() > 1 {
                    parts.pop();
                }
            }
        }
        *input = parts.join(".").into_bytes();
    }

    fn dictionary(&self) -> &[&[u8]] {
        const DICT: &[&[u8]] = &[b".", b"=", b"==", b"-", b"_", b"+", b"/", b"eyJ", b"AAAA"];
        DICT
    }

    fn check(&mut self, input: &[u8]) -> Outcome {
        // Bearer parsing of the input as a header value, in a few spellings.
        for prefix in [&b"Bearer "[..], b"bearer ", b"BEARER  ", b"Basic ", b""] {
            let mut raw = prefix.to_vec();
            raw.extend_from_slice(input);
            let Ok(value) = HeaderValue::from_bytes(&raw) else {
                continue;
            };
            if let Ok(t) = token::bearer(&value) {
                let ok_prefix = raw.len() > 7 && raw[..7].eq_ignore_ascii_case(b"bearer ");
                let body = t.trim_end_matches('=');
                let ok_chars = !body.is_empty()
                    && body.bytes().all(|b| {
                        b.is_ascii_alphanumeric()
                            || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
                    });
                if !ok_prefix || t.as_bytes() != &raw[7..] || !ok_chars {
                    return Outcome::Fail(format!(
                        "bearer accepted a bad value: {:?} -> {t:?}",
                        raw.escape_ascii().to_string()
                    ));
                }
            }
        }

        let token = String::from_utf8_lossy(input);
        let mut labels = Vec::new();
        for now in [NOW, NOW + TTL + LEEWAY, NOW - 1000] {
            let got = self.tokens.verify(&token, now);
            let general = self.general.verify(&token, now);
            if got != general {
                return Outcome::Fail(format!(
                    "the paths disagree at now={now}: fast {got:?} vs general {general:?} for {token:?}"
                ));
            }
            let want = self.reference(&token, now);
            match (&got, &want) {
                (Ok(_), Err(e)) => {
                    return Outcome::Fail(format!(
                        "accepted what the reference refuses ({e:?}) at now={now}: {token:?}"
                    ));
                }
                (Err(TokenError::Invalid(reason)), Ok(_)) => {
                    if let Err(why) = lenient(&token, reason, now) {
                        return Outcome::Fail(format!(
                            "refused ({reason}) what the reference accepts, but {why}: {token:?}"
                        ));
                    }
                }
                (Err(e), Ok(_)) => {
                    return Outcome::Fail(format!("refused ({e:?}) a good token: {token:?}"));
                }
                (Ok(a), Ok(b)) if a != b => {
                    return Outcome::Fail(format!("claims differ: {a:?} vs {b:?}: {token:?}"));
                }
                _ => {}
            }
            if let Ok(claims) = &got {
                if let Err(why) = genuinely_ours(&token, claims, now) {
                    return Outcome::Fail(format!("accepted a forgery: {why}: {token:?}"));
                }
            }
            labels.push(match got {
                Ok(_) => "accepted".to_owned(),
                Err(e) => format!("{e:?}"),
            });
        }
        let own = token.starts_with(&format!("{}.", self.own_header));
        Outcome::Pass(feature(&[
            &labels.join(","),
            if own { "own" } else { "other" },
        ]))
    }
}

/// Why a token the plain library accepts is refused, confirmed independently of the code
/// under test (see the module doc).
fn lenient(token: &str, reason: &str, now: u64) -> Result<(), String> {
    let mut parts = token.split('.');
    let mut decode = || {
        URL_SAFE_NO_PAD
            .decode(parts.next().unwrap_or_default())
            .unwrap_or_default()
    };
    let header = decode();
    let payload = decode();
    let value = |json: &[u8]| serde_json::from_slice::<Value>(json).ok();
    // Not a plain object: unreadable as a `Value` (bad strings, `1e400`), not an object, or
    // holding fewer members once read than its text names (a duplicate collapsed).
    let not_plain = |json: &[u8]| match value(json) {
        Some(v @ Value::Object(_)) => count_names(json) != count_names(v.to_string().as_bytes()),
        _ => true,
    };
    let header_value = value(&header).unwrap_or_default();
    let payload_value = value(&payload).unwrap_or_default();
    let bad_header_value = |v: &Value| {
        v.as_str().is_none_or(|s| {
            s.bytes().any(|b| !(0x20..0x7f).contains(&b)) || s.starts_with(' ') || s.ends_with(' ')
        })
    };
    let ok = match reason {
        "header" => not_plain(&header) || header_value.get("crit").is_some(),
        "kid" => header_value.get("kid").is_some(),
        "claims" => not_plain(&payload),
        "issued_in_future" => payload_value["iat"]
            .as_u64()
            .is_some_and(|iat| iat > now + LEEWAY + 1),
        "identity" => {
            payload_value["sub"].as_str() == Some("")
                || bad_header_value(&payload_value["sub"])
                || bad_header_value(&payload_value["email"])
                || payload_value["roles"].as_array().is_some_and(|roles| {
                    roles.iter().any(|r| {
                        bad_header_value(r)
                            || r.as_str().is_some_and(|s| s.is_empty() || s.contains(','))
                    })
                })
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err("no lenient case explains it".into())
    }
}

/// Member names in a JSON text: a string followed by `:`, counted on the raw bytes. Both
/// sides of the comparison count alike, so an odd escape cannot make a difference appear.
fn count_names(json: &[u8]) -> usize {
    json.windows(2).filter(|w| w == b"\":").count()
}

/// Everything an accepted token must be, checked from its bytes alone.
fn genuinely_ours(token: &str, claims: &Claims, now: u64) -> Result<(), String> {
    let (message, signature) = token.rsplit_once('.').ok_or("no signature")?;
    let (header, payload) = message.split_once('.').ok_or("no payload")?;
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|e| format!("signature base64: {e}"))?;
    if signature != hmac_sha256(SECRET, message.as_bytes()) {
        return Err("signature is not HMAC-SHA256 under the secret".into());
    }
    let header: Value = URL_SAFE_NO_PAD
        .decode(header)
        .ok()
        .and_then(|j| serde_json::from_slice(&j).ok())
        .ok_or("header is not JSON")?;
    if header["alg"] != "HS256" {
        return Err(format!("alg is {}", header["alg"]));
    }
    let typ = header["typ"].as_str().unwrap_or_default();
    if !typ
        .strip_prefix("application/")
        .unwrap_or(typ)
        .eq_ignore_ascii_case("at+jwt")
    {
        return Err(format!("typ is {}", header["typ"]));
    }
    let payload: Value = URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
        .and_then(|j| serde_json::from_slice(&j).ok())
        .ok_or("payload is not JSON")?;
    let as_value = serde_json::to_value(claims).map_err(|e| e.to_string())?;
    for (key, value) in as_value.as_object().into_iter().flatten() {
        if payload.get(key) != Some(value) {
            return Err(format!(
                "claim {key} is {value} but the payload has {:?}",
                payload.get(key)
            ));
        }
    }
    if claims.iss != ISSUER || claims.aud != AUDIENCE || claims.token_use != "access" {
        return Err("iss, aud or token_use is wrong".into());
    }
    if now + LEEWAY < claims.nbf || now >= claims.exp.saturating_add(LEEWAY) {
        return Err("not in force".into());
    }
    Ok(())
}
