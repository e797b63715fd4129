//! What a correctly signed token may contain: the checks every verification path makes on
//! a token's JSON and on the claims that become identity headers.
//!
//! A signature only says who wrote the bytes. Once tokens can come from other issuers (and
//! to be safe against our own future mistakes), the bytes must also mean one thing to
//! every reader: gatehouse, the upstream that reads the identity headers, and any other
//! JWT library that might see the same token. So, in the header and the payload alike:
//!
//! - the top level is a JSON object (a payload array was once read by position);
//! - no member name appears twice in any object, at any depth (RFC 7515 §4 and RFC 7519
//!   §4 let a reader take the first or the last: two readers could disagree on `sub`);
//! - every string is valid UTF-8 without lone surrogates (`\ud800`), and every number is
//!   finite (`1e400` is infinity to some parsers and an error to others), even in members
//!   gatehouse never reads;
//! - and, in the header only, no `crit` (RFC 7515 §4.1.11: a recipient must refuse
//!   critical extensions it does not understand, and gatehouse understands none).
//!
//! The identity claims ([`check_identity`]) are refused unless they can become headers
//! exactly: visible ASCII and inner spaces, nothing the upstream's HTTP parser would trim,
//! and no `,` in a role, which the roles header uses as its separator. A token that fails
//! any of this is `TOKEN_INVALID`; nothing is ever forwarded with a header dropped or a
//! role split in two.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use super::Claims;

/// Checks one JSON segment (decoded header or payload) as the module doc says: a top-level
/// object, unique member names, valid strings, finite numbers. serde_json adds its own
/// nesting limit (128), so a hostile document costs at most one linear pass.
pub fn check_json(json: &[u8]) -> Result<(), ()> {
    let first = json.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(());
    }
    let mut de = serde_json::Deserializer::from_slice(json);
    Strict.deserialize(&mut de).map_err(|_| ())?;
    de.end().map_err(|_| ())
}

/// The claims that become identity headers, as the module doc says.
pub fn check_identity(claims: &Claims) -> Result<(), ()> {
    let roles_ok = claims
        .roles
        .iter()
        .all(|role| !role.is_empty() && header_safe(role) && !role.contains(','));
    if !claims.sub.is_empty() && header_safe(&claims.sub) && header_safe(&claims.email) && roles_ok
    {
        Ok(())
    } else {
        Err(())
    }
}

/// Visible ASCII with inner spaces only: what `http::HeaderValue` takes and no HTTP parser
/// trims or splits differently.
fn header_safe(value: &str) -> bool {
    let bytes = value.as_bytes();
    bytes.iter().all(|&b| (0x20..0x7f).contains(&b))
        && bytes.first() != Some(&b' ')
        && bytes.last() != Some(&b' ')
}

/// A JSON value read only to be judged; see [`check_json`].
struct Strict;

impl<'de> DeserializeSeed<'de> for Strict {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("strict JSON")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        // serde_json already refuses overflowing literals; this keeps the rule here too.
        if v.is_finite() {
            Ok(())
        } else {
            Err(E::custom("non-finite number"))
        }
    }

    // Strings reach a visitor only after serde_json has checked their UTF-8 and their
    // escapes (lone surrogates included), which is the point of visiting them.
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Strict)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut names: Vec<Cow<'de, str>> = Vec::new();
        while let Some(name) = map.next_key_seed(Name)? {
            map.next_value_seed(Strict)?;
            names.push(name);
        }
        // Sorted, so a hostile object of many members costs n log n, not n².
        names.sort_unstable();
        if names.windows(2).any(|w| w[0] == w[1]) {
            return Err(de::Error::custom("duplicate member name"));
        }
        Ok(())
    }
}

/// A member name, borrowed from the input when it has no escapes.
struct Name;

impl<'de> DeserializeSeed<'de> for Name {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Cow<'de, str>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Name {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a member name")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_table() {
        let long_number = format!(r#"{{"x":1{}}}"#, "0".repeat(400));
        let deep = format!("{}{}", "{\"a\":".repeat(200), "}".repeat(200));
        #[rustfmt::skip]
        let cases: &[(&[u8], bool)] = &[
            (br#"{"a":1,"b":[1,2,{"c":null}],"d":"x\u00e9\ud83d\ude00"}"#, true),
            (b" {} ", true),
            (br#"{"a":1.5e10,"b":-0,"c":true}"#, true),
            // Not an object at the top.
            (b"[1,2]", false),
            (br#""claims""#, false),
            (b"1", false),
            (b"", false),
            // Duplicates, at the top and deep, and spelled with an escape.
            (br#"{"a":1,"a":1}"#, false),
            (br#"{"a":{"b":1,"b":2}}"#, false),
            (br#"{"a":[{"b":1,"b":2}]}"#, false),
            (br#"{"sub":"a","s\u0075b":"b"}"#, false),
            // Strings and numbers nobody reads.
            (b"{\"x\":\"\xff\"}", false),
            (b"{\"\xc3\":1}", false),
            (br#"{"x":"\ud800"}"#, false),
            (br#"{"x":"\udc00\ud800"}"#, false),
            (br#"{"x":1e400}"#, false),
            (br#"{"x":-1e400}"#, false),
            (long_number.as_bytes(), false),
            // Not JSON at all.
            (br#"{"a":1,}"#, false),
            (br#"{"a":1} x"#, false),
            (br#"{"a":NaN}"#, false),
            (deep.as_bytes(), false),
        ];
        for &(json, ok) in cases {
            assert_eq!(
                check_json(json).is_ok(),
                ok,
                "{:?}",
                String::from_utf8_lossy(json)
            );
        }
    }

    #[test]
    fn identity_table() {
        let base: Claims = serde_json::from_value(serde_json::json!({
            "sub": "u1", "email": "a@example.com", "roles": ["reader", "app:admin"],
            "email_verified": true, "iss": "i", "aud": "a", "iat": 1, "nbf": 1, "exp": 2,
            "jti": "j", "sid": "s", "token_use": "access",
        }))
        .unwrap();
        assert!(check_identity(&base).is_ok());
        let mut bad: Vec<Claims> = Vec::new();
        for sub in [
            "", "u\r\n1", "u\n", "u\0", " u", "u ", "u\u{7f}", "ü", "u\t",
        ] {
            bad.push(Claims {
                sub: sub.into(),
                ..base.clone()
            });
        }
        for email in ["a@x\r\nX-Admin: 1", "a@x\0", "é@x", " a@x"] {
            bad.push(Claims {
                email: email.into(),
                ..base.clone()
            });
        }
        for role in ["reader,admin", "", "a\nb", " admin", "ádmin"] {
            bad.push(Claims {
                roles: vec!["reader".into(), role.into()],
                ..base.clone()
            });
        }
        for claims in bad {
            assert!(check_identity(&claims).is_err(), "{claims:?}");
        }
        // An empty email (a user without one) is a header with an empty value, not a split.
        assert!(
            check_identity(&Claims {
                email: String::new(),
                ..base.clone()
            })
            .is_ok()
        );
    }
}
