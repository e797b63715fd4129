//! Target `path`: request-path normalisation (`path::normalize`, `path::fold_case`,
//! `path::without_format_suffix`) and the policy decision on its output.
//!
//! Input: the raw request path (bytes; invalid UTF-8 is replaced, as no `&str` can hold it).
//!
//! Properties:
//! - nothing panics;
//! - `normalize` is idempotent, and borrows exactly when it changes nothing;
//! - its output starts with `/` and has no `.`/`..` segment, no `//`, no `%2F`/`%5C` (any
//!   case), no raw or encoded control byte, no raw `\`, `;`, `?`, `#`, no non-ASCII byte,
//!   and only upper-case escapes of non-unreserved bytes;
//! - `fold_case` of it is again normalised, a fixed point of `normalize`, idempotent, and
//!   changes letters only in case;
//! - `without_format_suffix` returns a prefix of the path that `normalize` keeps as is;
//! - `Policy::decide` on the output (case-insensitive and case-sensitive policies) does not
//!   panic, and what it decided on is byte for byte what would be forwarded.

use std::borrow::Cow;

use gatehouse::path::{fold_case, normalize, without_format_suffix};
use gatehouse::policy::{Policy, PolicySpec, RouteSpec};
use http::Method;

use crate::engine::{Outcome, Rng, Target, feature};

pub struct PathTarget {
    policies: [Policy; 2],
}

impl PathTarget {
    pub fn new() -> PathTarget {
        let route = |path: &str, access: &str| RouteSpec {
            path: path.into(),
            access: Some(access.into()),
            ..RouteSpec::default()
        };
        let spec = |case_sensitive| PolicySpec {
            routes: vec![
                route("/public/**", "public"),
                route("/api/Admin/**", "deny"),
                route("/api/*.json", "authenticated"),
                route("/a%3Bb/**", "public"),
                route("/**/x*y", "deny"),
            ],
            default: "deny".into(),
            case_sensitive,
            ..PolicySpec::default()
        };
        let compile = |cs| Policy::compile(&spec(cs)).expect("the fixed policy compiles");
        PathTarget {
            policies: [compile(false), compile(true)],
        }
    }
}

/// Pieces that collide in normalisation: dots, slashes, escapes of every class.
const PIECES: &[&str] = &[
    "/",
    "//",
    ".",
    "..",
    "/./",
    "/../",
    "%2e",
    "%2E",
    "%2e%2e",
    ".%2e",
    "%2f",
    "%2F",
    "%5c",
    "%5C",
    "%00",
    "%0a",
    "%0D",
    "%1f",
    "%7f",
    "%7F",
    "%20",
    "%25",
    "%252e",
    "%3b",
    "%3B",
    "%41",
    "%61",
    "%7e",
    "%7E",
    "%C3%A9",
    "%c3%89",
    "%E2%84%AA",
    "%C5%BF",
    "%C4%B0",
    "%C4%B1",
    "%CF%82",
    "%C2%B5",
    "%C0%AE",
    "%FF",
    "%80",
    "%",
    "%4",
    "%zz",
    ";",
    "?",
    "#",
    "\\",
    " ",
    "\t",
    "é",
    "\u{212a}",
    "a",
    "A",
    "admin",
    "Admin",
    "api",
    "API",
    "public",
    "x",
    "y",
    "Y",
    ".json",
    ".JSON",
    "~",
    "-",
    "_",
    "*",
    "{",
    "|",
    "\"",
    "%3F",
    "%23",
];

/// Characters whose case mappings are irregular: titlecase digraphs, expanding upper
/// cases, letters equated with ASCII ones, final sigma, Cherokee, Georgian, Deseret.
const FOLDING: &[char] = &[
    '\u{130}',
    '\u{131}',
    '\u{17f}',
    '\u{212a}',
    '\u{212b}',
    '\u{1c4}',
    '\u{1c5}',
    '\u{1c6}',
    '\u{df}',
    '\u{1e9e}',
    '\u{390}',
    '\u{3c2}',
    '\u{3a3}',
    '\u{b5}',
    '\u{345}',
    '\u{3f4}',
    '\u{13a0}',
    '\u{ab70}',
    '\u{10d0}',
    '\u{1c90}',
    '\u{10400}',
    '\u{10428}',
    '\u{1e9b}',
    '\u{fb00}',
    '\u{149}',
    '\u{1f80}',
    '\u{1f88}',
    '\u{2126}',
    '\u{3c9}',
    '\u{1d8e}',
];

impl Target for PathTarget {
    const NAME: &'static str = "path";

    fn generate(&mut self, rng: &mut Rng) -> Vec<u8> {
        let mut out = String::new();
        if !rng.one_in(20) {
            out.push('/');
        }
        for _ in 0..rng.below(12) {
            if rng.one_in(6) {
                // Any character, escaped as UTF-8 in either hex case: what case folding
                // decodes, folds and re-escapes.
                let c = char::from_u32(rng.below(0x11_0000) as u32).unwrap_or('\u{212a}');
                let c = if rng.one_in(2) { c } else { rng.pick(FOLDING) };
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&if rng.one_in(4) {
                        format!("%{b:02x}")
                    } else {
                        format!("%{b:02X}")
                    });
                }
            } else {
                out.push_str(rng.pick(PIECES));
            }
        }
        out.into_bytes()
    }

    fn dictionary(&self) -> &[&[u8]] {
        const DICT: &[&[u8]] = &[
            b"/",
            b"..",
            b".",
            b"%2e",
            b"%2F",
            b"%5c",
            b"%0a",
            b"%7F",
            b"%41",
            b"%C4%B0",
            b"%E2%84%AA",
            b"%3B",
            b"%",
            b";",
            b"\\",
            b"?",
            b"#",
            b"//",
            b"/../",
            b".json",
        ];
        DICT
    }

    fn check(&mut self, input: &[u8]) -> Outcome {
        let text = String::from_utf8_lossy(input);
        let normal = match normalize(&text) {
            Ok(normal) => normal,
            Err(e) => return Outcome::Pass(feature(&["refused", &format!("{e:?}")])),
        };
        if let Err(why) = is_canonical(&normal) {
            return Outcome::Fail(format!("not canonical: {why}: {text:?} -> {normal:?}"));
        }
        if matches!(normal, Cow::Borrowed(_)) != (*normal == *text) {
            return Outcome::Fail(format!(
                "borrowing: must borrow exactly when unchanged: {text:?} -> {normal:?}"
            ));
        }
        match normalize(&normal) {
            Ok(Cow::Borrowed(again)) if again == normal => {}
            other => {
                return Outcome::Fail(format!(
                    "not idempotent: {text:?} -> {normal:?} -> {other:?}"
                ));
            }
        }

        let folded = fold_case(&normal);
        match normalize(&folded) {
            Ok(Cow::Borrowed(_)) => {}
            other => {
                return Outcome::Fail(format!(
                    "fold_case output not normalised: {normal:?} -> {folded:?} -> {other:?}"
                ));
            }
        }
        if fold_case(&folded) != folded {
            return Outcome::Fail(format!(
                "fold_case not idempotent: {normal:?} -> {folded:?} -> {:?}",
                fold_case(&folded)
            ));
        }
        if matches!(folded, Cow::Borrowed(_)) && *folded != *normal {
            return Outcome::Fail(format!("fold_case borrowed a change: {normal:?}"));
        }
        // Structure is kept: the same segments, slashes in the same places.
        if folded.matches('/').count() != normal.matches('/').count() {
            return Outcome::Fail(format!(
                "fold_case changed the segments: {normal:?} -> {folded:?}"
            ));
        }

        let suffix = without_format_suffix(&normal);
        if let Some(bare) = suffix {
            if !normal.starts_with(bare) || bare.is_empty() {
                return Outcome::Fail(format!(
                    "without_format_suffix not a prefix: {normal:?} -> {bare:?}"
                ));
            }
            if !matches!(normalize(bare), Ok(Cow::Borrowed(_))) {
                return Outcome::Fail(format!(
                    "without_format_suffix output not normalised: {normal:?} -> {bare:?}"
                ));
            }
        }

        // The policy decides on the normalised path, which is what is forwarded: the same
        // string, not a copy that could drift.
        let forwarded: &str = &normal;
        let mut verdicts = Vec::new();
        for policy in &self.policies {
            for method in [
                Method::GET,
                Method::POST,
                Method::from_bytes(b"PURGE").expect("a token"),
            ] {
                let decision = policy.decide(&method, forwarded);
                let _ = policy.describe_match(decision.exact);
                verdicts.push(format!("{:?}", decision.verdict(None).0));
            }
        }
        Outcome::Pass(feature(&[
            "ok",
            if *folded != *normal { "folded" } else { "" },
            if suffix.is_some() { "suffix" } else { "" },
            &verdicts.join(","),
            &normal.len().min(8).to_string(),
        ]))
    }
}

/// The canonical-form promises of the module doc, checked on their own.
fn is_canonical(path: &str) -> Result<(), &'static str> {
    if !path.starts_with('/') {
        return Err("does not start with '/'");
    }
    if path.contains("//") {
        return Err("contains //");
    }
    let body = &path[1..];
    let body = body.strip_suffix('/').unwrap_or(body);
    if !body.is_empty()
        && body
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err("has an empty, . or .. segment");
    }
    let bytes = path.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if !(0x21..0x7F).contains(&b) {
            return Err("has a control, space, DEL or non-ASCII byte");
        }
        if matches!(b, b'\\' | b';' | b'?' | b'#') {
            return Err("has a raw \\ ; ? or #");
        }
        if b == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or("truncated escape")?;
            if !hex
                .iter()
                .all(|h| h.is_ascii_digit() || (b'A'..=b'F').contains(h))
            {
                return Err("escape not in upper-case hex");
            }
            let v = u8::from_str_radix(std::str::from_utf8(hex).unwrap_or("zz"), 16)
                .map_err(|_| "bad escape")?;
            if v < 0x20 || v == 0x7F {
                return Err("encoded control byte");
            }
            if v == b'/' || v == b'\\' {
                return Err("encoded separator");
            }
            if v.is_ascii_alphanumeric() || b"-._~".contains(&v) {
                return Err("escaped unreserved character");
            }
        }
    }
    Ok(())
}
