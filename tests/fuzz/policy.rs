//! Target `policy`: glob compilation (`Policy::compile`) and matching (`Policy::decide`),
//! differential against a naive matcher written here.
//!
//! Input, one item per line:
//!
//! ```text
//! sensitive                      (or `insensitive`: [policy] case_sensitive)
//! route GET,POST /api/*/x* deny  (methods `-` for none given; access public, authenticated,
//!                                 deny or roles:a,b)
//! req GET /API/a/xy              (the path is normalised first; refused paths are skipped)
//! ```
//!
//! Properties:
//! - compilation never panics, and every error's key is `routes[i]…` for an existing `i`
//!   (the default and the roles are fixed and valid here, so nothing else can be wrong);
//! - `decide` never panics, on normalised paths;
//! - the exact spelling's rule is the first rule, in file order, whose methods include the
//!   request's (`GET` implying `HEAD`) and whose glob the reference matcher matches: whole
//!   segments, `*` one non-empty segment, `**` zero or more, `*` inside a segment any run,
//!   exact bytes, one trailing `/` ignored. This holds in both case modes;
//! - the other spellings are decided too: the first rule matching the path without its
//!   format suffix, and (case-insensitive mode) the case-folded path against the folded
//!   patterns and against the patterns as written, is the exact rule or among
//!   `Decision::others`, so no spelling escapes a rule that names it.

use std::borrow::Cow;

use gatehouse::path::{fold_case, normalize, without_format_suffix};
use gatehouse::policy::{Decision, Policy, PolicySpec, RouteSpec};
use http::Method;

use crate::engine::{Outcome, Rng, Target, feature};

pub struct PolicyTarget;

const LITERALS: &[&str] = &[
    "a",
    "A",
    "b",
    "api",
    "API",
    "Admin",
    "admin",
    "x.json",
    "x",
    "X",
    "%3B",
    "%C3%A9",
    "%C3%89",
    "%E2%84%AA",
    "k",
    "v1",
    "ab",
    "a.b",
];
const PATTERN_SEGMENTS: &[&str] = &[
    "*", "**", "a*", "*b", "a*b", "*a*", "*.json", "x*", "A*", "**", "*", "%3b", "%41", "..", ".",
    "", "é", "a?", "[a]", "**x", "a;b", "a\\b", "a%",
];
const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "get", "PURGE", "purge", "DELETE", "*", "BAD NAME", "",
];
const ACCESS: &[&str] = &[
    "public",
    "authenticated",
    "deny",
    "roles:admin",
    "roles:admin,reader",
    "open",
    "roles:",
    "roles:ghost",
];
const REQUEST_METHODS: &[&str] = &["GET", "HEAD", "POST", "PURGE", "DELETE", "PATCH"];

fn segment(rng: &mut Rng, pattern: bool) -> String {
    if pattern && rng.one_in(2) {
        if rng.one_in(8) {
            rng.pick(PATTERN_SEGMENTS).to_string()
        } else {
            rng.pick(&PATTERN_SEGMENTS[..11]).to_string()
        }
    } else {
        rng.pick(LITERALS).to_string()
    }
}

fn pattern(rng: &mut Rng) -> String {
    let n = if rng.one_in(8) {
        10 + rng.below(10)
    } else {
        rng.below(5)
    };
    let mut out = String::new();
    for _ in 0..n {
        out.push('/');
        out.push_str(&segment(rng, true));
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

fn request_path(rng: &mut Rng) -> String {
    let mut out = String::new();
    // Now and then more than the 16 segments the matcher splits on the stack.
    let n = if rng.one_in(5) {
        14 + rng.below(8)
    } else {
        rng.below(6)
    };
    for _ in 0..n {
        out.push('/');
        out.push_str(&segment(rng, false));
        if rng.one_in(6) {
            out.push_str(".json");
        }
    }
    if out.is_empty() || rng.one_in(5) {
        out.push('/');
    }
    out
}

/// A parsed input.
struct Case {
    spec: PolicySpec,
    requests: Vec<(String, String)>,
}

fn parse(input: &[u8]) -> Case {
    let text = String::from_utf8_lossy(input);
    let mut spec = PolicySpec {
        default: "deny".into(),
        roles: Vec::new(),
        known_roles: vec!["admin".into(), "reader".into()],
        ..PolicySpec::default()
    };
    let mut requests = Vec::new();
    for line in text.lines() {
        let mut words = line.split(' ');
        match words.next() {
            Some("sensitive") => spec.case_sensitive = true,
            Some("insensitive") => spec.case_sensitive = false,
            Some("route") => {
                let methods = words.next().unwrap_or("-");
                let path = words.next().unwrap_or_default();
                let access = words.next().unwrap_or_default();
                let (access, roles) = match access.strip_prefix("roles:") {
                    Some(list) => (None, list.split(',').map(str::to_owned).collect()),
                    None => (Some(access.to_owned()), Vec::new()),
                };
                spec.routes.push(RouteSpec {
                    name: None,
                    path: path.to_owned(),
                    methods: if methods == "-" {
                        Vec::new()
                    } else {
                        methods.split(',').map(str::to_owned).collect()
                    },
                    access,
                    roles,
                    mfa: false,
                });
            }
            Some("req") => {
                let method = words.next().unwrap_or_default().to_owned();
                let path = words.collect::<Vec<_>>().join(" ");
                requests.push((method, path));
            }
            _ => {}
        }
    }
    Case { spec, requests }
}

/// The reference glob: dynamic programming over whole segments.
fn glob_matches(pattern: &str, path: &str) -> bool {
    let Some(rest) = pattern.strip_prefix('/') else {
        return false;
    };
    let p: Vec<&str> = if rest.is_empty() {
        Vec::new()
    } else {
        rest.split('/').collect()
    };
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let s: Vec<&str> = if rest.is_empty() {
        Vec::new()
    } else {
        rest.split('/').collect()
    };
    // m[i][j]: p[i..] matches s[j..].
    let mut m = vec![vec![false; s.len() + 1]; p.len() + 1];
    m[p.len()][s.len()] = true;
    for i in (0..p.len()).rev() {
        for j in (0..=s.len()).rev() {
            m[i][j] = if p[i] == "**" {
                m[i + 1][j] || (j < s.len() && m[i][j + 1])
            } else {
                j < s.len() && segment_matches(p[i], s[j]) && m[i + 1][j + 1]
            };
        }
    }
    m[0][0]
}

/// `*` alone is one non-empty segment; otherwise each `*` is any run of bytes.
fn segment_matches(pattern: &str, segment: &str) -> bool {
    if pattern == "*" {
        return !segment.is_empty();
    }
    let (p, s) = (pattern.as_bytes(), segment.as_bytes());
    let mut m = vec![vec![false; s.len() + 1]; p.len() + 1];
    m[p.len()][s.len()] = true;
    for i in (0..p.len()).rev() {
        for j in (0..=s.len()).rev() {
            m[i][j] = if p[i] == b'*' {
                m[i + 1][j] || (j < s.len() && m[i][j + 1])
            } else {
                j < s.len() && p[i] == s[j] && m[i + 1][j + 1]
            };
        }
    }
    m[0][0]
}

fn method_matches(route: &RouteSpec, method: &str) -> bool {
    route.methods.is_empty()
        || route.methods.iter().any(|m| {
            let m = m.to_ascii_uppercase();
            m == method || (m == "GET" && method == "HEAD")
        })
}

/// The first rule, in file order, that the reference says matches.
fn first_match(
    routes: &[RouteSpec],
    patterns: &[String],
    method: &str,
    path: &str,
) -> Option<usize> {
    (0..routes.len())
        .find(|&i| method_matches(&routes[i], method) && glob_matches(&patterns[i], path))
}

fn covered(decision: &Decision, rule: Option<usize>) -> bool {
    rule.is_none() || decision.exact.rule == rule || decision.others().any(|(m, _)| m.rule == rule)
}

impl Target for PolicyTarget {
    const NAME: &'static str = "policy";

    fn generate(&mut self, rng: &mut Rng) -> Vec<u8> {
        let mut text = String::from(if rng.one_in(2) {
            "sensitive\n"
        } else {
            "insensitive\n"
        });
        for _ in 0..1 + rng.below(6) {
            let methods = match rng.below(3) {
                0 => "-".to_owned(),
                _ => (0..1 + rng.below(2))
                    .map(|_| {
                        if rng.one_in(6) {
                            rng.pick(METHODS)
                        } else {
                            rng.pick(&METHODS[..6])
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(","),
            };
            let access = if rng.one_in(8) {
                rng.pick(ACCESS)
            } else {
                rng.pick(&ACCESS[..5])
            };
            text.push_str(&format!("route {methods} {} {access}\n", pattern(rng)));
        }
        for _ in 0..1 + rng.below(6) {
            text.push_str(&format!(
                "req {} {}\n",
                rng.pick(REQUEST_METHODS),
                request_path(rng)
            ));
        }
        text.into_bytes()
    }

    fn mutate(&mut self, input: &mut Vec<u8>, rng: &mut Rng) {
        let text = String::from_utf8_lossy(input).into_owned();
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        match rng.below(4) {
            0 => lines.push(format!(
                "req {} {}",
                rng.pick(REQUEST_METHODS),
                request_path(rng)
            )),
            1 => {
                let at = rng.below(lines.len() + 1);
                lines.insert(
                    at,
                    format!("route - {} {}", pattern(rng), rng.pick(&ACCESS[..5])),
                );
            }
            2 if !lines.is_empty() => {
                let i = rng.below(lines.len());
                lines.remove(i);
            }
            _ if !lines.is_empty() => {
                // Swap a segment of some line for another.
                let i = rng.below(lines.len());
                let mut segments: Vec<String> = lines[i].split('/').map(str::to_owned).collect();
                let j = rng.below(segments.len());
                if j > 0 {
                    segments[j] = segment(rng, lines[i].starts_with("route"));
                    lines[i] = segments.join("/");
                }
            }
            _ => {}
        }
        *input = (lines.join("\n") + "\n").into_bytes();
    }

    fn dictionary(&self) -> &[&[u8]] {
        const DICT: &[&[u8]] = &[
            b"/",
            b"*",
            b"**",
            b"/**",
            b"%3B",
            b".json",
            b"A",
            b"\nreq GET /",
            b"\nroute - /",
        ];
        DICT
    }

    fn check(&mut self, input: &[u8]) -> Outcome {
        let Case { spec, requests } = parse(input);
        let policy = match Policy::compile(&spec) {
            Ok(policy) => policy,
            Err(errors) => {
                for e in &errors {
                    let index = e
                        .key
                        .strip_prefix("routes[")
                        .and_then(|rest| rest.split(']').next())
                        .and_then(|i| i.parse::<usize>().ok());
                    if index.is_none_or(|i| i >= spec.routes.len()) || e.message.is_empty() {
                        return Outcome::Fail(format!(
                            "error key: {:?} does not name a route: {}",
                            e.key, e.message
                        ));
                    }
                }
                let first = errors
                    .first()
                    .map(|e| e.message.split(':').next().unwrap_or_default().to_owned());
                return Outcome::Pass(feature(&["refused", &first.unwrap_or_default()]));
            }
        };
        let patterns: Vec<String> = spec.routes.iter().map(|r| r.path.clone()).collect();
        let folded: Vec<String> = patterns.iter().map(|p| fold_case(p).into_owned()).collect();
        let mut outcome = vec![if spec.case_sensitive { "cs" } else { "ci" }.to_owned()];
        for (method, raw) in &requests {
            let Ok(method) = Method::from_bytes(method.as_bytes()) else {
                continue;
            };
            let Ok(path) = normalize(raw) else {
                continue;
            };
            let path: &str = &path;
            let name = method.as_str();
            let decision = policy.decide(&method, path);
            let want = first_match(&spec.routes, &patterns, name, path);
            if decision.exact.rule != want {
                return Outcome::Fail(format!(
                    "exact match: decide says rule {:?}, the reference {want:?}, for {name} {path}",
                    decision.exact.rule
                ));
            }
            let mut spellings: Vec<(&str, Option<usize>)> = Vec::new();
            let bare = without_format_suffix(path);
            if let Some(bare) = bare {
                spellings.push((
                    "no-suffix",
                    first_match(&spec.routes, &patterns, name, bare),
                ));
            }
            if !spec.case_sensitive {
                let folded_path = fold_case(path);
                spellings.push((
                    "folded",
                    first_match(&spec.routes, &folded, name, &folded_path),
                ));
                if matches!(folded_path, Cow::Owned(_)) {
                    spellings.push((
                        "lower-case",
                        first_match(&spec.routes, &patterns, name, &folded_path),
                    ));
                }
                if let Some(bare) = bare {
                    let folded_bare = fold_case(bare);
                    spellings.push((
                        "no-suffix folded",
                        first_match(&spec.routes, &folded, name, &folded_bare),
                    ));
                }
            }
            for (form, rule) in spellings {
                if !covered(&decision, rule) {
                    return Outcome::Fail(format!(
                        "spelling missed: the {form} spelling matches rule {rule:?}, which the decision {decision:?} leaves out, for {name} {path}"
                    ));
                }
            }
            outcome.push(format!("{:?}/{}", want, decision.others().count()));
        }
        Outcome::Pass(feature(&[&outcome.join(",")]))
    }
}
