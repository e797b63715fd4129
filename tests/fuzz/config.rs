//! Target `config`: `Config::from_toml(text, env)` on TOML-ish text and `GATEHOUSE_*`
//! variables.
//!
//! Input: the TOML text, then optionally a line `#--- env` followed by `NAME=VALUE` lines
//! (the environment passed in). The generator starts from every declared key
//! (`config::keys()`), writing some with their default, a wrong type, an edge value or
//! junk, adds `[[routes]]`, `[roles]` and `[auth.paths]` entries, and sets some keys through
//! their variables (and some variables that are no key).
//!
//! Properties:
//! - nothing panics;
//! - every error has a non-empty key: a dotted path, a route index, a `GATEHOUSE_`
//!   variable, or `line L, column C` for a syntax error; and a non-empty message;
//! - an error blamed on the environment names a variable that was passed, and an error
//!   whose key is a `GATEHOUSE_` variable names one that was passed.
//!
//! Bugs found here are reported to the config's owner rather than fixed by the fuzzer's.

use gatehouse::config::{Config, KeyDoc, Kind, keys};

use crate::engine::{Outcome, Rng, Target, feature};

const ENV_MARK: &str = "#--- env";

pub struct ConfigTarget {
    keys: Vec<KeyDoc>,
}

impl ConfigTarget {
    pub fn new() -> ConfigTarget {
        ConfigTarget { keys: keys() }
    }
}

const JUNK_STRINGS: &[&str] = &[
    "",
    " ",
    "0",
    "-1",
    "1x",
    "15m",
    "0s",
    "999999999999999999d",
    "1h 30m",
    "5/15m",
    "0/1s",
    "5/0s",
    "18446744073709551616/1s",
    "x/1m",
    "/",
    "/auth/",
    "//",
    "/a b",
    "*",
    "**",
    "http://",
    "http://[::1",
    "https://user:pw@host:0/p?q#f",
    "127.0.0.1:99999",
    "0.0.0.0:0",
    "10.0.0.0/33",
    "::/0",
    "X-Auth-",
    "x-auth-user-id",
    "Bad Header",
    "é",
    "\u{0}",
    "\\",
    "rediss://",
    "postgres://u@h/db",
    "sled",
    "postgres",
    "redis",
    "open",
    "closed",
    "log",
    "smtp",
    "json",
    "HS512",
    "none",
    "trace",
    "a,b,,c",
    ",",
];

fn toml_value(rng: &mut Rng, doc: &KeyDoc) -> String {
    let quoted = |s: &str| toml::Value::String(s.to_owned()).to_string();
    match rng.below(8) {
        0 | 1 => doc.default.to_string(),
        2 => quoted(rng.pick(JUNK_STRINGS)),
        3 => rng
            .pick(&["-1", "0", "1", "9223372036854775807", "1.5", "nan", "true"])
            .to_string(),
        4 => format!("[{}]", quoted(rng.pick(JUNK_STRINGS))),
        5 => rng
            .pick(&[
                "[]",
                "{}",
                "{ x = 1 }",
                "1979-05-27T07:32:00Z",
                "[1, \"a\"]",
            ])
            .to_string(),
        _ => match doc.kind {
            Kind::Bool => rng.pick(&["true", "false"]).to_string(),
            Kind::Int => (rng.next_u64() % 100_000).to_string(),
            Kind::List => format!("[{}, {}]", quoted(rng.pick(JUNK_STRINGS)), quoted("reader")),
            Kind::Str => quoted(rng.pick(JUNK_STRINGS)),
        },
    }
}

fn env_value(rng: &mut Rng, doc: &KeyDoc) -> String {
    match (rng.below(3), doc.kind) {
        (0, _) => rng.pick(JUNK_STRINGS).to_string(),
        (_, Kind::Bool) => rng
            .pick(&["true", "false", "1", "0", "yes", " true "])
            .to_string(),
        (_, Kind::Int) => rng
            .pick(&["0", "1", "-5", "18446744073709551616", " 7", "x"])
            .to_string(),
        (_, Kind::List) => rng
            .pick(&["", "a", "a,b", " a , b ", ",,", "admin,admin"])
            .to_string(),
        (_, Kind::Str) => match &doc.default {
            toml::Value::String(s) if rng.one_in(2) => s.clone(),
            _ => rng.pick(JUNK_STRINGS).to_string(),
        },
    }
}

impl Target for ConfigTarget {
    const NAME: &'static str = "config";

    fn generate(&mut self, rng: &mut Rng) -> Vec<u8> {
        let mut text = String::new();
        // The keys without which nothing validates, most of the time.
        if !rng.one_in(5) {
            text.push_str("upstream.url = \"http://127.0.0.1:3000\"\n");
            text.push_str("tokens.secret = \"fuzz-secret-0123456789abcdef-0123456789\"\n");
            text.push_str("store.path = \"/nonexistent/gatehouse-fuzz\"\n");
        }
        for _ in 0..rng.below(8) {
            let doc = rng.pick_ref(&self.keys).clone();
            let key = if rng.one_in(12) {
                // A typo, for the did-you-mean.
                format!("{}x", doc.path)
            } else {
                doc.path.clone()
            };
            text.push_str(&format!("{key} = {}\n", toml_value(rng, &doc)));
        }
        // Dotted keys above, tables below: TOML allows a table after dotted keys of other
        // tables only, which the fuzzer is welcome to get wrong too.
        if rng.one_in(3) {
            text.push_str("[roles]\n");
            for _ in 0..rng.below(3) {
                let name = rng.pick(&["admin", "reader", "creator", "a b", "", "x,y"]);
                let inherits = rng.pick(&[
                    "[]",
                    "[\"reader\"]",
                    "[\"admin\"]",
                    "[\"ghost\"]",
                    "\"reader\"",
                ]);
                text.push_str(&format!("\"{name}\" = {{ inherits = {inherits} }}\n"));
            }
        }
        if rng.one_in(4) {
            text.push_str("[auth.paths]\n");
            let endpoint = rng.pick(&["login", "register", "admin", "nope", "reset_password"]);
            let path = rng.pick(&[
                "/signin",
                "login",
                "/login",
                "/a/../b",
                "/x%2F",
                "",
                "/register",
            ]);
            text.push_str(&format!("{endpoint} = \"{path}\"\n"));
        }
        for _ in 0..rng.below(4) {
            text.push_str("[[routes]]\n");
            let path = rng.pick(&[
                "/public/**",
                "/api/*",
                "",
                "api",
                "/a//b",
                "/a/",
                "/%2e",
                "/x?",
                "/**/**",
                "/A*b",
            ]);
            text.push_str(&format!("path = \"{path}\"\n"));
            match rng.below(4) {
                0 => text.push_str(&format!(
                    "access = \"{}\"\n",
                    rng.pick(&["public", "deny", "authenticated", "open"])
                )),
                1 => text.push_str(&format!(
                    "roles = [\"{}\"]\n",
                    rng.pick(&["admin", "reader", "ghost", ""])
                )),
                2 => text.push_str("access = \"public\"\nroles = [\"admin\"]\n"),
                _ => {}
            }
            if rng.one_in(2) {
                text.push_str(&format!(
                    "methods = [\"{}\"]\n",
                    rng.pick(&["GET", "get", "*", "BAD NAME", ""])
                ));
            }
            if rng.one_in(4) {
                text.push_str(&format!("rate_limit = \"{}\"\n", rng.pick(JUNK_STRINGS)));
            }
            if rng.one_in(8) {
                text.push_str("acess = \"public\"\n");
            }
        }
        if rng.one_in(2) {
            text.push_str(ENV_MARK);
            text.push('\n');
            for _ in 0..1 + rng.below(4) {
                let doc = rng.pick_ref(&self.keys).clone();
                let name = match rng.below(6) {
                    0 => format!("{}X", doc.env),
                    1 => "GATEHOUSE_".to_owned(),
                    2 => rng
                        .pick(&[
                            "GATEHOUSE_CONFIG",
                            "GATEHOUSE_LOG",
                            "PATH",
                            "gatehouse_tokens_secret",
                        ])
                        .to_string(),
                    _ => doc.env.clone(),
                };
                text.push_str(&format!("{name}={}\n", env_value(rng, &doc)));
            }
        }
        text.into_bytes()
    }

    fn dictionary(&self) -> &[&[u8]] {
        const DICT: &[&[u8]] = &[
            b"\n[[routes]]\n",
            b"\n[server]\n",
            b" = ",
            b"\"",
            b"[",
            b"]",
            b"{",
            b"}",
            b".",
            b"=",
            b"\n#--- env\nGATEHOUSE_",
            b"GATEHOUSE_",
            b"\"\"\"",
            b"'",
            b"\\u0000",
            b"\n",
        ];
        DICT
    }

    fn check(&mut self, input: &[u8]) -> Outcome {
        let text = String::from_utf8_lossy(input);
        let (toml_text, env_text) = match text.split_once(ENV_MARK) {
            Some((t, e)) => (t, e),
            None => (&*text, ""),
        };
        let env: Vec<(String, String)> = env_text
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        match Config::from_toml(toml_text, env.clone()) {
            Ok(_) => Outcome::Pass(feature(&["ok"])),
            Err(errors) => {
                if errors.0.is_empty() {
                    return Outcome::Fail(
                        "no errors: from_toml failed with an empty error list".into(),
                    );
                }
                let mut kinds = Vec::new();
                for e in &errors.0 {
                    if e.key.trim().is_empty() {
                        return Outcome::Fail(format!("empty key: {e:?}"));
                    }
                    if e.message.trim().is_empty() {
                        return Outcome::Fail(format!("empty message: {e:?}"));
                    }
                    if let Some(var) = &e.env
                        && !env.iter().any(|(k, _)| k == var)
                    {
                        return Outcome::Fail(format!(
                            "unknown env: error blames {var:?}, which was not passed: {e:?}"
                        ));
                    }
                    if e.message.starts_with("unknown environment")
                        && !env.iter().any(|(k, _)| *k == e.key)
                    {
                        return Outcome::Fail(format!(
                            "unknown env: error key {:?} was not passed: {e:?}",
                            e.key
                        ));
                    }
                    let shape = if e.key.starts_with("line ") {
                        "syntax"
                    } else if e.key.starts_with("GATEHOUSE_") {
                        "env"
                    } else if e.key.starts_with("routes[") {
                        "route"
                    } else {
                        e.key.split(['.', '[']).next().unwrap_or_default()
                    };
                    kinds.push(shape.to_owned());
                }
                kinds.sort();
                kinds.dedup();
                Outcome::Pass(feature(&[&kinds.join(",")]))
            }
        }
    }
}
