//! Access tokens of other issuers (`[[issuers]]`, API.md §9): their key sets, read from a
//! JWKS document, and the verification of their tokens by the same strict pieces as
//! gatehouse's own. No IO here: `issuers.rs` fetches the documents and keeps the key sets.
//!
//! Decisions, and why:
//!
//! - **One verifier.** The size and shape checks, the header (strict JSON, no `crit`, an
//!   `alg`), the payload's strictness, the signature, the time checks (`exp`, `nbf`, `iat`
//!   with the leeway of `tokens.leeway`) and the identity claims' header safety are the
//!   functions of `mod.rs` that gatehouse's own tokens go through; only reading the claims
//!   differs, because another issuer names them differently.
//! - **The key decides the algorithm.** A key's algorithm is its JWK's `alg`, or, without
//!   one, the only algorithm its key type serves (RSA: RS256, P-256: ES256, Ed25519:
//!   EdDSA); it must be among the issuer's `algorithms`, which are asymmetric only. A token
//!   whose `alg` is not its key's is refused before any signature work: no HS256 keyed
//!   with a published public key, no `none`.
//! - **A key set is all usable or skipped key by key.** Keys for encryption (`use: enc`),
//!   of another algorithm, without `kid`, or unusable are left out; a `kid` published
//!   twice is left out entirely (which key would it name?). A document that is not a JWK
//!   set, or leaves no usable key, is an error: the caller keeps the set it had.
//! - **Claims are read from the issuer's names.** `sub` is the user id; roles come from
//!   `roles_claim`, a dotted path into nested objects (`realm_access.roles`), tried first
//!   as one top-level name (Auth0's namespaced claims contain dots): a list of strings, or
//!   one string taken as one role; absent means no roles; anything else refuses the
//!   token. `email_claim` the same way, a string; `email_verified` the OIDC boolean
//!   (anything else counts as not verified); `amr` the RFC 8176 list. `aud` is a string or
//!   a list, one of which must be among the issuer's `audiences`. `exp`, `iat` and `sub`
//!   are required, `nbf` optional.
//! - **Only access tokens.** A header `typ` other than `JWT` or `at+jwt`, a `token_use`
//!   other than `access` (Cognito) or a `typ` claim other than `Bearer` (Keycloak writes
//!   `ID` and `Refresh` for its other tokens) is refused, so an ID or refresh token
//!   carrying an accepted audience is not taken for an access token.
//! - **A verified token is cached with its key set** (the `tokens.verify_cache` slot
//!   count): a new set of keys is a new cache, so a key the issuer removed cannot leave
//!   its tokens cached as good. Time is checked on every use.

use std::sync::Arc;

use serde_json::{Map, Value};

use super::cache::VerifiedCache;
use super::{
    ACCESS_TOKEN_USE, Algorithm, Claims, MALFORMED, TokenError, VerifyKey, check_signature,
    check_size_and_shape, check_time, decode_payload, read_header, strict,
};

/// The most keys read from one JWK set; real ones publish a handful.
const MAX_KEYS: usize = 64;

/// What a token of one issuer must be, from its `[[issuers]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerRules {
    /// Equal to the token's `iss`.
    pub issuer: String,
    /// The token's `aud` (or one of them) must be one of these.
    pub audiences: Vec<String>,
    /// The algorithms the issuer's keys may have (asymmetric only).
    pub algorithms: Vec<Algorithm>,
    /// Where the roles are: a top-level claim name, else a dotted path.
    pub roles_claim: String,
    /// Where the email is, the same way.
    pub email_claim: String,
    /// Clock skew tolerated on `exp`, `nbf` and `iat` (`tokens.leeway`).
    pub leeway_secs: u64,
}

/// The usable keys of one JWK set, with the cache of tokens verified by them.
pub struct KeySet {
    keys: Vec<VerifyKey>,
    cache: VerifiedCache,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet")
            .field(
                "kids",
                &self.keys.iter().map(VerifyKey::kid).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl KeySet {
    /// The keys of a JWK set document (RFC 7517 §5) that can verify tokens under one of
    /// `algorithms`; `cache_entries` slots for verified tokens (0: off). An error when the
    /// document is not a JWK set or leaves no usable key.
    pub fn from_jwks(
        json: &[u8],
        algorithms: &[Algorithm],
        cache_entries: usize,
    ) -> Result<KeySet, String> {
        let doc: Value =
            serde_json::from_slice(json).map_err(|e| format!("not a JSON document ({e})"))?;
        let listed = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or("not a JWK set (no \"keys\" list)")?;
        let mut keys: Vec<VerifyKey> = listed
            .iter()
            .take(MAX_KEYS)
            .filter_map(|jwk| usable_key(jwk, algorithms))
            .collect();
        // A kid named twice picks no key: leave out every key that carries it.
        let repeated: Vec<String> = keys
            .iter()
            .enumerate()
            .filter(|(i, k)| keys[..*i].iter().any(|o| o.kid() == k.kid()))
            .map(|(_, k)| k.kid().to_string())
            .collect();
        keys.retain(|k| !repeated.iter().any(|r| r == k.kid()));
        if keys.is_empty() {
            let names: Vec<&str> = algorithms.iter().map(|a| a.name()).collect();
            return Err(format!(
                "no usable signing key for {} among its {} keys",
                names.join(", "),
                listed.len()
            ));
        }
        Ok(KeySet {
            keys,
            cache: VerifiedCache::new(cache_entries),
        })
    }

    /// How many keys the set has.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the set is empty (never, once built).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether a key has this `kid`.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid() == kid)
    }

    /// Whether both sets hold the same keys (kid, algorithm and public key), in any order:
    /// a refresh that brings nothing new keeps the running set and its cache.
    pub fn same_keys(&self, other: &KeySet) -> bool {
        let key = |k: &VerifyKey| (k.kid().to_string(), k.algorithm(), k.jwk());
        self.keys.len() == other.keys.len()
            && self
                .keys
                .iter()
                .all(|a| other.keys.iter().any(|b| key(a) == key(b)))
    }
}

/// One JWK, if it can verify tokens under one of `algorithms`; see the module doc.
fn usable_key(jwk: &Value, algorithms: &[Algorithm]) -> Option<VerifyKey> {
    if jwk.get("use").is_some_and(|u| u != "sig") {
        return None;
    }
    let alg = match jwk.get("alg") {
        Some(named) => Algorithm::from_name(named.as_str()?)?,
        None => match (
            jwk.get("kty").and_then(Value::as_str),
            jwk.get("crv").and_then(Value::as_str),
        ) {
            (Some("RSA"), _) => Algorithm::RS256,
            (Some("EC"), Some("P-256")) => Algorithm::ES256,
            (Some("OKP"), Some("Ed25519")) => Algorithm::EdDSA,
            _ => return None,
        },
    };
    if !alg.is_asymmetric() || !algorithms.contains(&alg) {
        return None;
    }
    let parsed: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwk.clone()).ok()?;
    VerifyKey::from_jwk(&parsed, alg).ok()
}

/// Why a token of a configured issuer was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Refused for good.
    Token(TokenError),
    /// Its `kid` is not in the key set: the issuer may have rotated keys since the set
    /// was fetched, so the caller may refetch once and try again.
    UnknownKid,
}

impl From<TokenError> for Refusal {
    fn from(e: TokenError) -> Refusal {
        Refusal::Token(e)
    }
}

/// The `iss` a token claims, read without verifying anything, to find the issuer whose
/// keys will verify it. `None` when the token is not even shaped like a JWT with a string
/// `iss`. The payload is decoded here and again by the verifier: only tokens that are not
/// gatehouse's own (`Tokens::has_own_header`) come here.
pub fn issuer_of(token: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Iss {
        iss: Option<String>,
    }
    check_size_and_shape(token).ok()?;
    let payload = token.split('.').nth(1)?;
    let json = decode_payload(payload).ok()?;
    serde_json::from_slice::<Iss>(&json).ok()?.iss
}

/// Verifies a token of the issuer `rules` describes with `keys`, at `now_unix`: size and
/// shape, header, key by `kid`, the key's algorithm, the payload's strictness, signature,
/// issuer, audience, type, identity claims, then time. A token verified before by this key
/// set has only its time checked again.
pub fn verify(
    token: &str,
    rules: &IssuerRules,
    keys: &KeySet,
    now_unix: u64,
) -> Result<Arc<Claims>, Refusal> {
    if let Some(claims) = keys.cache.get(token) {
        check_time(&claims, now_unix, rules.leeway_secs, 0)?;
        return Ok(claims);
    }
    check_size_and_shape(token)?;
    // `check_size_and_shape` guarantees three non-empty segments.
    let (message, signature) = token.rsplit_once('.').ok_or(MALFORMED)?;
    let (header, payload) = message.split_once('.').ok_or(MALFORMED)?;

    let header = read_header(header)?;
    // An issuer's tokens always name their key: a set may hold several.
    let kid = header.kid.as_deref().ok_or(TokenError::Invalid("kid"))?;
    let key = keys
        .keys
        .iter()
        .find(|k| k.kid() == kid)
        .ok_or(Refusal::UnknownKid)?;
    // The key decides the algorithm, never the token.
    if header.alg != key.algorithm().name() {
        return Err(TokenError::Invalid("algorithm").into());
    }
    let payload = decode_payload(payload)?;
    check_signature(key, message, signature)?;

    if !is_access_header_typ(header.typ.as_deref()) {
        return Err(TokenError::Invalid("type").into());
    }
    let claims = read_claims(&payload, rules)?;
    strict::check_identity(&claims).map_err(|_| TokenError::Invalid("identity"))?;
    check_time(&claims, now_unix, rules.leeway_secs, 0)?;
    let claims = Arc::new(claims);
    keys.cache.insert(token, claims.clone());
    Ok(claims)
}

/// `JWT` or `at+jwt` (RFC 7515 §4.1.9: any case, `application/` optional), or no `typ`.
fn is_access_header_typ(typ: Option<&str>) -> bool {
    typ.is_none_or(|t| {
        let t = t.strip_prefix("application/").unwrap_or(t);
        t.eq_ignore_ascii_case("jwt") || t.eq_ignore_ascii_case(super::ACCESS_TOKEN_TYP)
    })
}

/// The claims of a verified payload as gatehouse's [`Claims`], read from the issuer's
/// names (see the module doc). The payload passed the strict check, so it is an object.
fn read_claims(payload: &[u8], rules: &IssuerRules) -> Result<Claims, TokenError> {
    const CLAIMS: TokenError = TokenError::Invalid("claims");
    let map: Map<String, Value> = serde_json::from_slice(payload).map_err(|_| CLAIMS)?;
    let string = |name: &str| map.get(name).and_then(Value::as_str);
    let seconds = |name: &str| map.get(name).map(|v| v.as_u64().ok_or(CLAIMS));

    let iss = string("iss").ok_or(CLAIMS)?;
    if iss != rules.issuer {
        return Err(TokenError::Invalid("issuer"));
    }
    let sub = string("sub").ok_or(CLAIMS)?;
    let audiences: Vec<&str> = match map.get("aud").ok_or(CLAIMS)? {
        Value::String(aud) => vec![aud.as_str()],
        Value::Array(list) => list
            .iter()
            .map(|a| a.as_str().ok_or(CLAIMS))
            .collect::<Result<_, _>>()?,
        _ => return Err(CLAIMS),
    };
    let aud = audiences
        .iter()
        .find(|a| rules.audiences.iter().any(|r| r == *a))
        .ok_or(TokenError::Invalid("audience"))?;
    let exp = seconds("exp").ok_or(CLAIMS)??;
    let iat = seconds("iat").ok_or(CLAIMS)??;
    let nbf = seconds("nbf").transpose()?.unwrap_or(0);
    // Other tokens of the same issuer (ID, refresh) say what they are in these claims.
    if map.get("token_use").is_some_and(|u| u != ACCESS_TOKEN_USE) {
        return Err(TokenError::Invalid("type"));
    }
    if map
        .get("typ")
        .is_some_and(|t| !t.as_str().is_some_and(|t| t.eq_ignore_ascii_case("bearer")))
    {
        return Err(TokenError::Invalid("type"));
    }
    let roles = match lookup(&map, &rules.roles_claim) {
        None => Vec::new(),
        Some(Value::String(role)) => vec![role.clone()],
        Some(Value::Array(list)) => list
            .iter()
            .map(|r| r.as_str().map(str::to_owned).ok_or(CLAIMS))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(CLAIMS),
    };
    let email = match lookup(&map, &rules.email_claim) {
        None => String::new(),
        Some(Value::String(email)) => email.clone(),
        Some(_) => return Err(CLAIMS),
    };
    let amr = match map.get("amr") {
        None => Vec::new(),
        Some(Value::Array(list)) => list
            .iter()
            .map(|m| m.as_str().map(str::to_owned).ok_or(CLAIMS))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(CLAIMS),
    };
    Ok(Claims {
        sub: sub.to_owned(),
        email,
        roles,
        email_verified: map.get("email_verified") == Some(&Value::Bool(true)),
        iss: iss.to_owned(),
        aud: (*aud).to_owned(),
        iat,
        nbf,
        exp,
        jti: string("jti").unwrap_or_default().to_owned(),
        // No gatehouse session stands behind another issuer's token.
        sid: String::new(),
        token_use: ACCESS_TOKEN_USE.to_owned(),
        amr,
    })
}

/// A claim by `path`: the top-level member of that exact name if there is one, else the
/// dotted path through nested objects.
fn lookup<'v>(map: &'v Map<String, Value>, path: &str) -> Option<&'v Value> {
    if let Some(value) = map.get(path) {
        return Some(value);
    }
    let mut parts = path.split('.');
    let mut value = map.get(parts.next()?)?;
    for part in parts {
        value = value.as_object()?.get(part)?;
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::keys::{SigningKey, generate};
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use serde_json::json;

    const NOW: u64 = 1_800_000_000;
    const ISSUER: &str = "https://idp.example.com/realms/main";

    fn signer(alg: Algorithm, kid: &str) -> SigningKey {
        let (pem, _) = generate(alg).unwrap();
        SigningKey::from_pem(pem.as_bytes(), alg, Some(kid)).unwrap()
    }

    fn set(keys: &[&SigningKey], algorithms: &[Algorithm]) -> KeySet {
        let jwks =
            json!({"keys": keys.iter().map(|k| k.verify_key().jwk().unwrap()).collect::<Vec<_>>()});
        KeySet::from_jwks(jwks.to_string().as_bytes(), algorithms, 16).unwrap()
    }

    fn rules() -> IssuerRules {
        IssuerRules {
            issuer: ISSUER.into(),
            audiences: vec!["api".into()],
            algorithms: vec![Algorithm::RS256, Algorithm::EdDSA],
            roles_claim: "realm_access.roles".into(),
            email_claim: "email".into(),
            leeway_secs: 5,
        }
    }

    fn payload() -> Value {
        json!({
            "iss": ISSUER, "sub": "kc-user-1", "aud": ["account", "api"], "exp": NOW + 300,
            "iat": NOW, "typ": "Bearer", "email": "ada@example.com", "email_verified": true,
            "realm_access": {"roles": ["reader", "offline_access"]},
        })
    }

    fn sign(key: &SigningKey, header: &Value, payload: &Value) -> String {
        let message = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(payload.to_string())
        );
        let signature = key.sign(message.as_bytes()).unwrap();
        format!("{message}.{}", URL_SAFE_NO_PAD.encode(signature))
    }

    fn header(key: &SigningKey) -> Value {
        json!({"alg": key.algorithm().name(), "typ": "JWT", "kid": key.kid()})
    }

    #[test]
    fn claims_are_read_from_the_issuers_names() {
        let key = signer(Algorithm::EdDSA, "k1");
        let keys = set(&[&key], &[Algorithm::EdDSA]);
        let token = sign(&key, &header(&key), &payload());
        assert_eq!(issuer_of(&token).as_deref(), Some(ISSUER));
        let claims = verify(&token, &rules(), &keys, NOW).unwrap();
        assert_eq!(claims.sub, "kc-user-1");
        assert_eq!(claims.roles, ["reader", "offline_access"]);
        assert_eq!(claims.email, "ada@example.com");
        assert!(claims.email_verified);
        assert_eq!(claims.aud, "api");
        assert_eq!(claims.sid, "");
        // Cached: the same answer, and time still checked.
        assert_eq!(verify(&token, &rules(), &keys, NOW).unwrap(), claims);
        assert_eq!(
            verify(&token, &rules(), &keys, NOW + 400),
            Err(Refusal::Token(TokenError::Expired))
        );
    }

    #[test]
    fn refusals_name_their_reason() {
        let key = signer(Algorithm::EdDSA, "k1");
        let keys = set(&[&key], &[Algorithm::EdDSA]);
        let h = header(&key);
        let with = |name: &str, value: Value| {
            let mut p = payload();
            p[name] = value;
            p
        };
        let without = |name: &str| {
            let mut p = payload();
            p.as_object_mut().unwrap().remove(name);
            p
        };
        let invalid = |r| Err(Refusal::Token(TokenError::Invalid(r)));
        #[rustfmt::skip]
        let cases: Vec<(&str, String, Result<(), Refusal>)> = vec![
            ("one role as a string", sign(&key, &h, &with("realm_access", json!({"roles": "reader"}))), Ok(())),
            ("no roles", sign(&key, &h, &without("realm_access")), Ok(())),
            ("aud a string", sign(&key, &h, &with("aud", json!("api"))), Ok(())),
            ("no typ claim", sign(&key, &h, &without("typ")), Ok(())),
            ("header typ at+jwt", sign(&key, &json!({"alg": "EdDSA", "typ": "at+jwt", "kid": "k1"}), &payload()), Ok(())),
            ("unknown kid", sign(&key, &json!({"alg": "EdDSA", "kid": "k2"}), &payload()), Err(Refusal::UnknownKid)),
            ("no kid", sign(&key, &json!({"alg": "EdDSA"}), &payload()), invalid("kid")),
            ("alg not the key's", sign(&key, &json!({"alg": "RS256", "kid": "k1"}), &payload()), invalid("algorithm")),
            ("alg none", sign(&key, &json!({"alg": "none", "kid": "k1"}), &payload()), invalid("algorithm")),
            ("crit", sign(&key, &json!({"alg": "EdDSA", "kid": "k1", "crit": ["x"]}), &payload()), invalid("header")),
            ("wrong aud", sign(&key, &h, &with("aud", json!(["account"]))), invalid("audience")),
            ("aud missing", sign(&key, &h, &without("aud")), invalid("claims")),
            ("wrong iss", sign(&key, &h, &with("iss", json!("https://evil.example"))), invalid("issuer")),
            ("expired", sign(&key, &h, &with("exp", json!(NOW - 10))), Err(Refusal::Token(TokenError::Expired))),
            ("exp missing", sign(&key, &h, &without("exp")), invalid("claims")),
            ("iat missing", sign(&key, &h, &without("iat")), invalid("claims")),
            ("iat in the future", sign(&key, &h, &with("iat", json!(NOW + 60))), invalid("issued_in_future")),
            ("nbf in the future", sign(&key, &h, &with("nbf", json!(NOW + 60))), invalid("not_yet_valid")),
            ("ID token", sign(&key, &h, &with("typ", json!("ID"))), invalid("type")),
            ("Cognito id token", sign(&key, &h, &with("token_use", json!("id"))), invalid("type")),
            ("header typ id", sign(&key, &json!({"alg": "EdDSA", "typ": "id+jwt", "kid": "k1"}), &payload()), invalid("type")),
            ("roles not strings", sign(&key, &h, &with("realm_access", json!({"roles": [1]}))), invalid("claims")),
            ("role with a comma", sign(&key, &h, &with("realm_access", json!({"roles": ["reader,admin"]}))), invalid("identity")),
            ("sub with CR LF", sign(&key, &h, &with("sub", json!("u\r\nX-Auth-Roles: admin"))), invalid("identity")),
            ("email not a string", sign(&key, &h, &with("email", json!(1))), invalid("claims")),
            ("payload array", sign(&key, &h, &json!([1, 2])), invalid("claims")),
            ("tampered", {
                let t = sign(&key, &h, &payload());
                let other = sign(&key, &h, &with("sub", json!("admin")));
                let (m, _) = other.rsplit_once('.').unwrap();
                format!("{m}.{}", t.rsplit_once('.').unwrap().1)
            }, invalid("signature")),
        ];
        for (name, token, expect) in cases {
            let got = verify(&token, &rules(), &keys, NOW).map(|_| ());
            assert_eq!(got, expect, "case {name}");
        }
    }

    #[test]
    fn hs256_keyed_with_the_public_key_is_refused() {
        let key = signer(Algorithm::RS256, "r1");
        let keys = set(&[&key], &[Algorithm::RS256]);
        let public = serde_json::to_vec(&key.verify_key().jwk().unwrap()).unwrap();
        let message = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(json!({"alg": "HS256", "kid": "r1"}).to_string()),
            URL_SAFE_NO_PAD.encode(payload().to_string())
        );
        let tag = SigningKey::hs256(&public).sign(message.as_bytes()).unwrap();
        let token = format!("{message}.{}", URL_SAFE_NO_PAD.encode(tag));
        assert_eq!(
            verify(&token, &rules(), &keys, NOW),
            Err(Refusal::Token(TokenError::Invalid("algorithm")))
        );
    }

    #[test]
    fn key_sets_keep_only_usable_signing_keys() {
        let rsa = signer(Algorithm::RS256, "r1");
        let ed = signer(Algorithm::EdDSA, "e1");
        let mut no_alg = ed.verify_key().jwk().unwrap();
        no_alg.as_object_mut().unwrap().remove("alg");
        no_alg["kid"] = json!("e2");
        let mut enc = rsa.verify_key().jwk().unwrap();
        enc["use"] = json!("enc");
        enc["kid"] = json!("r2");
        let mut oaep = rsa.verify_key().jwk().unwrap();
        oaep["alg"] = json!("RSA-OAEP");
        oaep["kid"] = json!("r3");
        let mut hs = json!({"kty": "oct", "k": "c2VjcmV0", "alg": "HS256", "kid": "h1"});
        let doc = json!({"keys": [rsa.verify_key().jwk(), ed.verify_key().jwk(), no_alg, enc, oaep, hs.take()]});
        let keys = KeySet::from_jwks(doc.to_string().as_bytes(), &[Algorithm::EdDSA], 0).unwrap();
        assert!(keys.has_kid("e1") && keys.has_kid("e2"));
        assert_eq!(keys.len(), 2);
        // A kid published twice names no key.
        let twice =
            json!({"keys": [ed.verify_key().jwk(), ed.verify_key().jwk(), rsa.verify_key().jwk()]});
        let keys = KeySet::from_jwks(
            twice.to_string().as_bytes(),
            &[Algorithm::EdDSA, Algorithm::RS256],
            0,
        )
        .unwrap();
        assert!(!keys.has_kid("e1") && keys.has_kid("r1"));
        // Nothing usable, or not a key set at all: an error, so the caller keeps its set.
        for bad in [
            r#"{"keys": []}"#,
            r#"{"keys": {}}"#,
            "[1]",
            "{",
            r#"{"keys": [{"kty": "oct", "k": "AAAA", "kid": "x"}]}"#,
        ] {
            assert!(
                KeySet::from_jwks(bad.as_bytes(), &[Algorithm::RS256], 0).is_err(),
                "{bad}"
            );
        }
        assert!(set(&[&ed], &[Algorithm::EdDSA]).same_keys(&set(&[&ed], &[Algorithm::EdDSA])));
        assert!(
            !set(&[&ed], &[Algorithm::EdDSA])
                .same_keys(&set(&[&ed, &rsa], &[Algorithm::EdDSA, Algorithm::RS256]))
        );
    }

    #[test]
    fn a_dotted_name_is_first_a_top_level_claim() {
        let map: Map<String, Value> = serde_json::from_value(json!({
            "https://example.com/roles": ["admin"],
            "realm_access": {"roles": ["reader"]},
        }))
        .unwrap();
        assert_eq!(
            lookup(&map, "https://example.com/roles"),
            Some(&json!(["admin"]))
        );
        assert_eq!(lookup(&map, "realm_access.roles"), Some(&json!(["reader"])));
        assert_eq!(lookup(&map, "realm_access.nope"), None);
        assert_eq!(lookup(&map, "nope"), None);
    }
}
