//! Request path normalisation: one canonical spelling per path.
//!
//! Every proxied request goes through [`normalize`] exactly once, before the policy runs, and
//! the path it returns is both the path the policy decides on and the path forwarded upstream.
//! Because both see the same bytes, a request cannot be authorised as one path and reach the
//! upstream as another: tricks that rely on the proxy and the upstream decoding a path
//! differently (`/public/%2e%2e/admin`, `/admin;x/..`, `/a%2fb`) are either resolved here, in
//! one documented way, or refused with 400.
//!
//! The input is the path of an origin-form request target; the caller has already split off
//! the query string and dealt with absolute-form targets. The output never contains a dot
//! segment, an empty segment, a lower-case escape or an escape of an unreserved character,
//! so normalising it again returns it unchanged.
//!
//! | input | decision | why |
//! |---|---|---|
//! | no leading `/` | refused ([`PathError::NotAbsolute`]) | origin-form paths are absolute |
//! | control byte, space, DEL, byte > 0x7F | refused ([`PathError::InvalidByte`]) | not valid in a request target; this also refuses raw UTF-8 and malformed UTF-8 alike |
//! | raw `?` or `#` | refused ([`PathError::Delimiter`]) | the caller split the query off already, so either one here would be read as a query or fragment delimiter by the upstream but not by the policy |
//! | raw `\` | refused ([`PathError::Backslash`]) | some servers treat it as `/` |
//! | raw `;` | refused ([`PathError::Semicolon`]) | path parameters (`/admin;x/..`) are stripped by some servers (Tomcat) and kept by others |
//! | `%2F`, `%2f`, `%5C`, `%5c` | refused ([`PathError::EncodedSeparator`]) | an encoded separator is a separator to some upstreams and data to others |
//! | `%00`–`%1F`, `%7F` | refused ([`PathError::EncodedControl`]) | an encoded control byte is refused like its raw form: `%00` truncates strings in C-based upstreams, and `/admin%0A` decodes to `/admin\n`, which Python's and PCRE's `$` (Starlette, FastAPI, nginx regex locations) match as `/admin` |
//! | `%` not followed by two hex digits | refused ([`PathError::BadEscape`]) | malformed; upstreams disagree on how to repair it |
//! | `%XX` of an unreserved character (`A-Z a-z 0-9 - . _ ~`) | decoded (`/%61dmin` → `/admin`) | RFC 3986 §6.2.2.2: equivalent spelling |
//! | any other `%XX` | kept, hex upper-cased (`%3b` → `%3B`) | RFC 3986 §6.2.2.1; decoding it would change the meaning |
//! | escapes | decoded once only (`%252e` stays `%252e`) | double decoding is how `%252e%252e` becomes `..` |
//! | runs of `/` | collapsed to one (`//admin` → `/admin`) | empty segments are ignored by many upstreams; collapsing happens before dot segments are resolved, as in nginx's `merge_slashes` |
//! | `.` and `..` segments, including `%2e` spellings | resolved per RFC 3986 §5.2.4 (`/a/./b/../c` → `/a/c`) | upstreams resolve them, so the policy must see the result |
//! | `..` above the root (`/../x`) | refused ([`PathError::AboveRoot`]) | clamping would hide an attack; no honest client sends it |
//! | trailing `/` | kept (`/a/b/` stays, `/a/.` → `/a/`) | `/a` and `/a/` may be different resources upstream |
//!
//! Other visible ASCII characters that RFC 3986 does not allow raw in a path (`"`, `<`, `>`,
//! `^`, `` ` ``, `{`, `|`, `}`, `[`, `]`) are passed through unchanged: they have no delimiter
//! meaning for an upstream, and real clients send them.
//!
//! Performance: this runs on every proxied request. A path that is already canonical (nearly
//! all of them) is checked with a single table-driven scan and returned as
//! [`Cow::Borrowed`] without allocating; only a path that needs rewriting is rebuilt.

use std::borrow::Cow;
use std::fmt;

/// Why a request path was refused. Every variant maps to a 400 response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// The path does not start with `/`.
    NotAbsolute,
    /// A control character, space, DEL or non-ASCII byte.
    InvalidByte,
    /// A raw `?` or `#`, which the upstream would read as a delimiter.
    Delimiter,
    /// A raw backslash.
    Backslash,
    /// A raw `;` (path parameters).
    Semicolon,
    /// A `%` not followed by two hexadecimal digits.
    BadEscape,
    /// `%2F` or `%5C`: an encoded `/` or `\`.
    EncodedSeparator,
    /// `%00`–`%1F` or `%7F`: an encoded control byte.
    EncodedControl,
    /// A `..` segment that would climb above the root.
    AboveRoot,
}

impl PathError {
    /// A short sentence for the body of the 400 response.
    pub fn reason(self) -> &'static str {
        match self {
            PathError::NotAbsolute => "The request path must start with '/'.",
            PathError::InvalidByte => {
                "The request path contains a control character, space or non-ASCII byte; percent-encode it."
            }
            PathError::Delimiter => "The request path contains a raw '?' or '#'.",
            PathError::Backslash => "The request path contains a backslash.",
            PathError::Semicolon => {
                "The request path contains a ';' (path parameters are not accepted)."
            }
            PathError::BadEscape => {
                "The request path contains a '%' that is not followed by two hex digits."
            }
            PathError::EncodedSeparator => {
                "The request path contains an encoded '/' or '\\' (%2F or %5C)."
            }
            PathError::EncodedControl => {
                "The request path contains an encoded control character (%00-%1F or %7F)."
            }
            PathError::AboveRoot => "The request path climbs above the root with '..'.",
        }
    }
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for PathError {}

/// Normalises the path of an origin-form request target (without its query string).
///
/// Returns the input itself, borrowed, when it is already canonical; see the module
/// documentation for every rule.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    if is_canonical(bytes)? {
        Ok(Cow::Borrowed(path))
    } else {
        rewrite(bytes).map(Cow::Owned)
    }
}

/// What one byte means to the scanner; looked up in [`CLASS`] so that the common case (a
/// plain character) costs one load and one compare.
#[derive(Clone, Copy)]
enum Class {
    Plain,
    Slash,
    Percent,
    Reject(PathError),
}

static CLASS: [Class; 256] = build_class_table();

const fn build_class_table() -> [Class; 256] {
    let mut table = [Class::Reject(PathError::InvalidByte); 256];
    // Visible ASCII is 0x21..=0x7E; everything else (controls, space, DEL, non-ASCII) stays
    // rejected.
    let mut b = 0x21;
    while b < 0x7F {
        table[b] = Class::Plain;
        b += 1;
    }
    table[b'/' as usize] = Class::Slash;
    table[b'%' as usize] = Class::Percent;
    table[b'\\' as usize] = Class::Reject(PathError::Backslash);
    table[b';' as usize] = Class::Reject(PathError::Semicolon);
    table[b'?' as usize] = Class::Reject(PathError::Delimiter);
    table[b'#' as usize] = Class::Reject(PathError::Delimiter);
    table
}

/// How a valid `%XX` escape is written in the canonical path.
enum Escape {
    /// Already canonical: kept as is.
    Keep,
    /// Kept encoded but re-spelled with upper-case hex digits.
    Upper(u8),
    /// An unreserved character: written as the character itself.
    Decode(u8),
}

/// Reads the escape whose `%` is at `bytes[at]`.
fn escape(bytes: &[u8], at: usize) -> Result<Escape, PathError> {
    let (Some(&hi), Some(&lo)) = (bytes.get(at + 1), bytes.get(at + 2)) else {
        return Err(PathError::BadEscape);
    };
    let (Some(h), Some(l)) = (hex_value(hi), hex_value(lo)) else {
        return Err(PathError::BadEscape);
    };
    let value = h << 4 | l;
    match value {
        0x00..=0x1F | 0x7F => Err(PathError::EncodedControl),
        b'/' | b'\\' => Err(PathError::EncodedSeparator),
        v if is_unreserved(v) => Ok(Escape::Decode(v)),
        v if hi.is_ascii_lowercase() || lo.is_ascii_lowercase() => Ok(Escape::Upper(v)),
        _ => Ok(Escape::Keep),
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

/// RFC 3986 §2.3 unreserved characters.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Whether a segment starting at `bytes[at]` is empty, `.` or `..`: the segments that
/// [`rewrite`] removes.
fn is_removable_segment(bytes: &[u8], at: usize) -> bool {
    let ends = |i: usize| matches!(bytes.get(i), None | Some(b'/'));
    match bytes.get(at) {
        Some(b'/') => true,
        Some(b'.') => ends(at + 1) || (bytes.get(at + 1) == Some(&b'.') && ends(at + 2)),
        _ => false,
    }
}

/// The fast path: one scan that either refuses the path, finds it canonical (`true`), or
/// finds the first thing that needs rewriting (`false`). The rewrite re-validates the whole
/// path, so stopping early is safe.
fn is_canonical(bytes: &[u8]) -> Result<bool, PathError> {
    let mut i = 0;
    while i < bytes.len() {
        match CLASS[usize::from(bytes[i])] {
            Class::Plain => i += 1,
            Class::Slash => {
                // A trailing slash is canonical; `//`, `/./` and `/../` are not. The `+ 1`
                // cannot overflow: `i` is an index into a slice.
                if i + 1 < bytes.len() && is_removable_segment(bytes, i + 1) {
                    return Ok(false);
                }
                i += 1;
            }
            Class::Percent => match escape(bytes, i)? {
                Escape::Keep => i += 3,
                Escape::Upper(_) | Escape::Decode(_) => return Ok(false),
            },
            Class::Reject(error) => return Err(error),
        }
    }
    Ok(true)
}

/// The slow path: rebuilds the path segment by segment. Each segment is decoded into `out`
/// first and then, if it turns out to be empty, `.` or `..`, taken back out, which is RFC 3986
/// §5.2.4 on a path whose empty segments have been removed.
fn rewrite(bytes: &[u8]) -> Result<String, PathError> {
    // Every rule shortens the path or keeps its length, so this is the only allocation.
    let mut out = String::with_capacity(bytes.len());
    out.push('/');
    // Invariant at the top of the loop: `out` ends with '/', and `i` is the index of the
    // first byte of a segment (just after a '/').
    let mut i = 1;
    loop {
        let start = out.len();
        while i < bytes.len() {
            match CLASS[usize::from(bytes[i])] {
                Class::Slash => break,
                Class::Plain => {
                    out.push(char::from(bytes[i]));
                    i += 1;
                }
                Class::Percent => {
                    match escape(bytes, i)? {
                        Escape::Keep => {
                            // All three bytes are ASCII, as `escape` checked.
                            out.extend(bytes[i..i + 3].iter().map(|&b| char::from(b)));
                        }
                        Escape::Upper(v) => {
                            out.push('%');
                            out.push(char::from(HEX_UPPER[usize::from(v >> 4)]));
                            out.push(char::from(HEX_UPPER[usize::from(v & 0xF)]));
                        }
                        Escape::Decode(v) => out.push(char::from(v)),
                    }
                    i += 3;
                }
                Class::Reject(error) => return Err(error),
            }
        }
        let at_end = i >= bytes.len();
        match &out[start..] {
            // An empty segment (from `//`, or the final one after a trailing slash) adds
            // nothing; `.` is dropped and leaves the trailing slash before it.
            "" | "." => out.truncate(start),
            ".." => {
                out.truncate(start);
                if out.len() == 1 {
                    return Err(PathError::AboveRoot);
                }
                // Drop the previous segment, keeping the '/' before it. `out` starts with
                // '/', so there always is one.
                out.pop();
                let cut = out.rfind('/').map_or(1, |k| k + 1);
                out.truncate(cut);
            }
            _ => {
                if !at_end {
                    out.push('/');
                }
            }
        }
        if at_end {
            return Ok(out);
        }
        i += 1;
    }
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// The case-folded spelling of a normalised path, for policies that must hold against
/// upstreams that route without regard to case (Express by default, IIS and ASP.NET, nginx
/// `~*` locations, case-insensitive regex routers).
///
/// ASCII letters are lower-cased. Runs of escapes that decode to UTF-8 are folded too,
/// because a case-insensitive upstream decodes them first: every character becomes its
/// lower-case form, and the characters that case-insensitive matchers equate with an ASCII
/// letter become that letter, unescaped — `K` (U+212A KELVIN SIGN) is `k` to Python's
/// `re.IGNORECASE` and to JavaScript's `/iu`, `ſ` (U+017F) is `s`, `ı` (U+0131) and `İ`
/// (U+0130) are `i`. Escapes of ASCII bytes (reserved characters such as `%3B`) and bytes
/// that are not UTF-8 stay as they are. The input must be the output of [`normalize`];
/// patterns written as normalised paths fold the same way, so comparing folded path with
/// folded pattern byte for byte is a case-insensitive comparison.
///
/// Borrows (no allocation) when the path has no upper-case letter and no escape of a
/// non-ASCII byte, which is nearly every request.
pub fn fold_case(path: &str) -> Cow<'_, str> {
    let bytes = path.as_bytes();
    // An escape's first hex digit 8–F is a non-ASCII byte, which may fold; escapes of ASCII
    // bytes are reserved characters, which have no case.
    let mut i = 0;
    let mut folds = false;
    while i < bytes.len() && !folds {
        if bytes[i] == b'%' {
            // The hex digits of an escape are not letters of the path.
            folds = matches!(
                bytes.get(i + 1),
                Some(b'8'..=b'9' | b'A'..=b'F' | b'a'..=b'f')
            );
            i += 3;
        } else {
            folds = bytes[i].is_ascii_uppercase();
            i += 1;
        }
    }
    if !folds {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            out.push(char::from(bytes[i].to_ascii_lowercase()));
            i += 1;
            continue;
        }
        // A run of escapes, decoded. `normalize` guarantees every escape is well formed.
        let mut run = Vec::new();
        while bytes.get(i) == Some(&b'%') {
            let value = (bytes.get(i + 1).copied().and_then(hex_value))
                .zip(bytes.get(i + 2).copied().and_then(hex_value))
                .map(|(hi, lo)| hi << 4 | lo);
            match value {
                Some(v) => run.push(v),
                // Not a normalised path after all: keep the rest as it is.
                None => break,
            }
            i += 3;
        }
        for chunk in run.utf8_chunks() {
            for c in chunk.valid().chars() {
                // An escaped ASCII byte is a reserved character (unreserved ones were decoded
                // by `normalize`), which has no case and stays escaped.
                let folded = if c.is_ascii() { c } else { fold_char(c) };
                if folded.is_ascii_alphabetic() {
                    // Written as `normalize` writes unreserved characters: unescaped.
                    out.push(folded);
                } else {
                    let mut buf = [0u8; 4];
                    push_escaped(&mut out, folded.encode_utf8(&mut buf).as_bytes());
                }
            }
            push_escaped(&mut out, chunk.invalid());
        }
        if bytes.get(i) == Some(&b'%') {
            out.push_str(&path[i..]);
            break;
        }
    }
    Cow::Owned(out)
}

/// The case-folded form of one character, as case-insensitive matchers compare it: the
/// lower case of its upper case where both are single characters, which equates every
/// character with the letters it is matched with — `ſ` (U+017F) with `s`, `K` (U+212A
/// KELVIN SIGN) with `k`, `ı` (U+0131) with `i`, final `ς` with `σ`, `µ` (U+00B5) with `μ` —
/// as Python's `re.IGNORECASE`, JavaScript's `/iu` and .NET's ordinal-ignore-case do. `İ`
/// (U+0130), whose lower case is two characters, is `i`.
pub fn fold_char(c: char) -> char {
    if c.is_ascii() {
        return c.to_ascii_lowercase();
    }
    if c == '\u{130}' {
        return 'i';
    }
    fn single(mut chars: impl Iterator<Item = char>) -> Option<char> {
        match (chars.next(), chars.next()) {
            (Some(c), None) => Some(c),
            _ => None,
        }
    }
    let upper = single(c.to_uppercase()).unwrap_or(c);
    single(upper.to_lowercase())
        .or_else(|| single(c.to_lowercase()))
        .unwrap_or(c)
}

/// The path without a format suffix on its last segment (`/api/admin.json` →
/// `/api/admin`), or `None` when the last segment has none. Rails routes `(.:format)` and
/// Spring's suffix patterns send such a path to the bare path's handler, so the policy
/// decides the bare path too. The suffix starts at the segment's first dot; a leading dot
/// (`/.well-known`) is not a suffix, and a trailing `/` is looked past.
pub fn without_format_suffix(path: &str) -> Option<&str> {
    let trimmed = path.strip_suffix('/').unwrap_or(path);
    let start = trimmed.rfind('/').map_or(0, |i| i + 1);
    let dot = trimmed[start..].find('.')?;
    (dot > 0).then(|| &path[..start + dot])
}

fn push_escaped(out: &mut String, bytes: &[u8]) {
    for &b in bytes {
        out.push('%');
        out.push(char::from(HEX_UPPER[usize::from(b >> 4)]));
        out.push(char::from(HEX_UPPER[usize::from(b & 0xF)]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Ok(path)` for a path that normalises to `path`, `Err(error)` for a refusal. Besides
    /// the result, it checks that the fast path borrowed exactly when nothing changed and that
    /// normalising the output again is a no-op.
    fn check(input: &str, expect: Result<&str, PathError>) {
        let got = normalize(input);
        match (&got, expect) {
            (Ok(out), Ok(want)) => {
                assert_eq!(out, want, "normalize({input:?})");
                assert_eq!(
                    matches!(out, Cow::Borrowed(_)),
                    out == input,
                    "normalize({input:?}) = {out:?}: borrowed exactly when unchanged"
                );
                assert!(
                    matches!(normalize(out), Ok(Cow::Borrowed(again)) if again == want),
                    "normalize({input:?}) = {out:?} is not a fixed point"
                );
            }
            (got, want) => assert_eq!(*got, want.map(Cow::Borrowed), "normalize({input:?})"),
        }
    }

    use PathError::*;

    #[test]
    fn table() {
        let long_ok = format!("/{}", "segment/".repeat(2_000));
        let long_dots = format!("{}{}", "/a".repeat(3_000), "/..".repeat(3_000));
        let long_above = format!("{}{}", "/a".repeat(3_000), "/..".repeat(3_001));
        let cases: &[(&str, Result<&str, PathError>)] = &[
            // Canonical paths pass unchanged.
            ("/", Ok("/")),
            ("/a", Ok("/a")),
            ("/a/b/", Ok("/a/b/")),
            ("/api/users/42", Ok("/api/users/42")),
            ("/a.b/.c/..d/...", Ok("/a.b/.c/..d/...")),
            ("/~user/a-b_c", Ok("/~user/a-b_c")),
            ("/a:b@c!$&'()*+,=", Ok("/a:b@c!$&'()*+,=")),
            ("/caf%C3%A9", Ok("/caf%C3%A9")),
            ("/a%20b", Ok("/a%20b")),
            ("/a%25", Ok("/a%25")),
            ("/{x}|^`\"<>[]", Ok("/{x}|^`\"<>[]")),
            // Not absolute.
            ("a", Err(NotAbsolute)),
            ("*", Err(NotAbsolute)),
            ("", Err(NotAbsolute)),
            // Bytes that are not visible ASCII.
            ("/a b", Err(InvalidByte)),
            ("/a\tb", Err(InvalidByte)),
            ("/a\r\nb", Err(InvalidByte)),
            ("/a\x7f", Err(InvalidByte)),
            ("/a\0", Err(InvalidByte)),
            ("/café", Err(InvalidByte)),
            ("/\u{202e}admin", Err(InvalidByte)),
            ("/ａdmin", Err(InvalidByte)),
            // Delimiters that the caller should already have split off.
            ("/a?b", Err(Delimiter)),
            ("/admin#x", Err(Delimiter)),
            // Backslash and path parameters.
            ("/a\\b", Err(Backslash)),
            ("/..\\admin", Err(Backslash)),
            ("/admin/..;/x", Err(Semicolon)),
            ("/admin;jsessionid=1", Err(Semicolon)),
            ("/a;", Err(Semicolon)),
            // Percent-encoding.
            ("/%61dmin", Ok("/admin")),
            ("/%41%5a%30%2D%2e%5F%7e", Ok("/AZ0-._~")),
            ("/a%3b", Ok("/a%3B")),
            ("/a%3bb/c%2c", Ok("/a%3Bb/c%2C")),
            ("/caf%c3%a9", Ok("/caf%C3%A9")),
            ("/a%252e%252e/", Ok("/a%252e%252e/")),
            ("/a/%252e%252e/", Ok("/a/%252e%252e/")),
            ("/%25%32%65", Ok("/%252e")),
            ("/a%2fb", Err(EncodedSeparator)),
            ("/a%2Fb", Err(EncodedSeparator)),
            ("/a%5cb", Err(EncodedSeparator)),
            ("/a%5Cb", Err(EncodedSeparator)),
            ("/a%00", Err(EncodedControl)),
            ("/api/admin%0A", Err(EncodedControl)),
            ("/api/admin%0a", Err(EncodedControl)),
            ("/api/admin%0D%0A", Err(EncodedControl)),
            ("/api/%09admin", Err(EncodedControl)),
            ("/a%1F", Err(EncodedControl)),
            ("/a%1f/b", Err(EncodedControl)),
            ("/a%7F", Err(EncodedControl)),
            ("/a%7f", Err(EncodedControl)),
            ("/a/../b%0B", Err(EncodedControl)),
            ("/a%20", Ok("/a%20")),
            ("/a%80", Ok("/a%80")),
            ("/a%zz", Err(BadEscape)),
            ("/a%", Err(BadEscape)),
            ("/a%4", Err(BadEscape)),
            ("/a%4/", Err(BadEscape)),
            ("/a%%41", Err(BadEscape)),
            ("/a%+1", Err(BadEscape)),
            // Slash runs.
            ("//admin", Ok("/admin")),
            ("//", Ok("/")),
            ("/a//b///c", Ok("/a/b/c")),
            ("/a//", Ok("/a/")),
            // Dot segments.
            ("/./admin", Ok("/admin")),
            ("/admin/.", Ok("/admin/")),
            ("/.", Ok("/")),
            ("/a/..", Ok("/")),
            ("/a/../", Ok("/")),
            ("/a/b/..", Ok("/a/")),
            ("/a/./b/../c", Ok("/a/c")),
            ("/a/b/c/./../../g", Ok("/a/g")),
            ("/public/%2e%2e/admin", Ok("/admin")),
            ("/public/%2E%2E/admin", Ok("/admin")),
            ("/public/.%2e/admin", Ok("/admin")),
            ("/public/%2e/admin", Ok("/public/admin")),
            ("/a/..//b", Ok("/b")),
            ("/a//..", Ok("/")),
            ("/..", Err(AboveRoot)),
            ("/../", Err(AboveRoot)),
            ("/../admin", Err(AboveRoot)),
            ("/%2e%2e/admin", Err(AboveRoot)),
            ("/a/../..", Err(AboveRoot)),
            ("/a/./../../b", Err(AboveRoot)),
            ("//../admin", Err(AboveRoot)),
            // The first refusal in the path wins, and a rewrite still validates the rest.
            ("/a/../b%zz", Err(BadEscape)),
            ("/%61/c d", Err(InvalidByte)),
            ("/a//b;", Err(Semicolon)),
            // Very long paths.
            (&long_ok, Ok(&long_ok)),
            (&long_dots, Ok("/")),
            (&long_above, Err(AboveRoot)),
        ];
        for &(input, expect) in cases {
            check(input, expect);
        }
    }

    #[test]
    fn case_folding_table() {
        let cases: &[(&str, &str)] = &[
            ("/api/admin", "/api/admin"),
            ("/api/ADMIN", "/api/admin"),
            ("/Api/Admin/", "/api/admin/"),
            // Reserved escapes have no case and stay escaped.
            ("/a%3Bb%20C", "/a%3Bb%20c"),
            // Non-ASCII letters fold to their lower case, escaped.
            ("/caf%C3%89", "/caf%C3%A9"),
            ("/caf%C3%A9", "/caf%C3%A9"),
            ("/%C3%84PI", "/%C3%A4pi"),
            // Characters that case-insensitive matchers equate with ASCII letters.
            ("/api/%E2%84%AAey", "/api/key"),
            ("/api/%C5%BFessions", "/api/sessions"),
            ("/api/adm%C4%B1n", "/api/admin"),
            ("/api/adm%C4%B0n", "/api/admin"),
            // Bytes that are not UTF-8 (overlong forms, stray continuation bytes) stay.
            ("/a%C0%AE", "/a%C0%AE"),
            ("/a%E0%80%AEb", "/a%E0%80%AEb"),
            ("/a%80B", "/a%80b"),
            // A valid sequence after invalid bytes is still folded.
            ("/a%FF%C3%89", "/a%FF%C3%A9"),
            // Symbols without case are kept.
            ("/%E2%82%AC", "/%E2%82%AC"),
            // Pairs that fold through their upper case: final sigma, micro sign.
            ("/%CF%82ettings", "/%CF%83ettings"),
            ("/%C2%B5s", "/%CE%BCs"),
            ("/%CE%A3", "/%CF%83"),
        ];
        for &(input, want) in cases {
            let normal = normalize(input).map(Cow::into_owned);
            assert_eq!(normal.as_deref(), Ok(input), "test inputs are normalised");
            let folded = fold_case(input);
            assert_eq!(folded, want, "fold_case({input:?})");
            assert!(
                !matches!(folded, Cow::Borrowed(_)) || input == want,
                "borrowed only when nothing changed"
            );
            // Folding is idempotent and its output is still a normalised path.
            assert_eq!(
                fold_case(&folded),
                want,
                "fold_case is idempotent on {input:?}"
            );
            assert_eq!(
                normalize(&folded).as_deref(),
                Ok(want),
                "{want:?} is normalised"
            );
        }
    }

    #[test]
    fn ascii_escapes_and_lower_case_paths_fold_without_allocating() {
        for path in ["/api/x", "/a%20b", "/users/a%40b.com", "/%3B%7E"] {
            assert!(matches!(fold_case(path), Cow::Borrowed(_)), "{path}");
        }
    }

    #[test]
    fn format_suffixes() {
        for (path, want) in [
            ("/api/admin.json", Some("/api/admin")),
            ("/api/admin.tar.gz", Some("/api/admin")),
            ("/api/admin.json/", Some("/api/admin")),
            ("/a.b/c", None),
            ("/.well-known", None),
            ("/api/.hidden", None),
            ("/api/admin", None),
            ("/", None),
        ] {
            assert_eq!(without_format_suffix(path), want, "{path}");
        }
    }

    #[test]
    fn every_error_has_a_reason() {
        for error in [
            NotAbsolute,
            InvalidByte,
            Delimiter,
            Backslash,
            Semicolon,
            BadEscape,
            EncodedSeparator,
            EncodedControl,
            AboveRoot,
        ] {
            assert!(error.reason().ends_with('.'), "{error:?}");
            assert_eq!(error.to_string(), error.reason());
        }
    }

    /// A deliberately naive second implementation: split, decode, resolve with a stack.
    fn reference(input: &str) -> Option<String> {
        let rest = input.strip_prefix('/')?;
        let bytes = rest.as_bytes();
        if bytes
            .iter()
            .any(|&b| !(0x21..0x7F).contains(&b) || matches!(b, b'\\' | b';' | b'?' | b'#'))
        {
            return None;
        }
        let mut segments: Vec<String> = Vec::new();
        let raw: Vec<&str> = rest.split('/').collect();
        let mut trailing = false;
        for (n, seg) in raw.iter().enumerate() {
            let mut decoded = String::new();
            let s = seg.as_bytes();
            let mut i = 0;
            while i < s.len() {
                if s[i] == b'%' {
                    let hex = seg.get(i + 1..i + 3)?;
                    let v = u8::from_str_radix(hex, 16).ok()?;
                    if hex.starts_with(['+', '-'])
                        || v < 0x20
                        || v == 0x7F
                        || v == b'/'
                        || v == b'\\'
                    {
                        return None;
                    }
                    if v.is_ascii_alphanumeric() || b"-._~".contains(&v) {
                        decoded.push(char::from(v));
                    } else {
                        decoded.push_str(&format!("%{v:02X}"));
                    }
                    i += 3;
                } else {
                    decoded.push(char::from(s[i]));
                    i += 1;
                }
            }
            let last = n + 1 == raw.len();
            match decoded.as_str() {
                "" | "." => trailing = last,
                ".." => {
                    segments.pop()?;
                    trailing = last;
                }
                _ => {
                    segments.push(decoded);
                    trailing = false;
                }
            }
        }
        let mut out = format!("/{}", segments.join("/"));
        if trailing && !segments.is_empty() {
            out.push('/');
        }
        Some(out)
    }

    /// Every path of up to six characters after the leading slash over an alphabet chosen to collide escapes, dots and
    /// slashes agrees with the reference implementation and is a fixed point once normalised.
    #[test]
    fn exhaustive_small_paths_agree_with_reference() {
        const ALPHABET: &[u8] = b"/.a%2eEfF";
        let mut buf = Vec::new();
        let mut counter = vec![0usize; 0];
        for len in 0..=6 {
            counter.clear();
            counter.resize(len, 0);
            loop {
                buf.clear();
                buf.push(b'/');
                buf.extend(counter.iter().map(|&d| ALPHABET[d]));
                let input = std::str::from_utf8(&buf).unwrap_or_default();
                let got = normalize(input).ok().map(Cow::into_owned);
                assert_eq!(got, reference(input), "normalize({input:?})");
                if let Some(out) = &got {
                    assert!(
                        matches!(normalize(out), Ok(Cow::Borrowed(_))),
                        "{input:?} → {out:?}"
                    );
                }
                // Odometer increment over the alphabet.
                let mut k = 0;
                while k < len {
                    counter[k] += 1;
                    if counter[k] < ALPHABET.len() {
                        break;
                    }
                    counter[k] = 0;
                    k += 1;
                }
                if k == len {
                    break;
                }
            }
        }
    }
}
