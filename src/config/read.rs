//! The reader: turns the TOML tree and the `GATEHOUSE_*` variables into values, one
//! declared key at a time.
//!
//! A section function asks its [`Section`] for each key by name, with the default and the
//! checks beside it. The reader looks in the environment first, then in the file, then falls
//! back to the default, and remembers what it was asked for, which is what makes one
//! declaration enough:
//!
//! - keys in the file that no section asked for are reported when the [`Section`] is
//!   dropped, with their dotted path and a did-you-mean among the keys it did ask for;
//! - `GATEHOUSE_*` variables that no key consumed are reported by [`Cx::finish`], with a
//!   did-you-mean among the variables that exist;
//! - every env-overridable key is recorded as a [`KeyDoc`] (path, variable, kind, default),
//!   from which the env table and the example-completeness test are derived.
//!
//! Errors never stop the reading: a key that fails falls back to its default (or a
//! placeholder) and is flagged, so later checks on it stay quiet and every other key is
//! still read and reported.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use super::{ConfigError, Secret, format_duration, parse_duration};

/// `GATEHOUSE_*` variables that are not config keys but are read elsewhere.
const NON_KEY_VARS: &[&str] = &["GATEHOUSE_CONFIG", "GATEHOUSE_LOG"];

const ENV_PREFIX: &str = "GATEHOUSE_";

/// What a key holds, which is also how its env variable is read: lists are
/// comma-separated, booleans `true`/`false`/`1`/`0`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Str,
    Int,
    Bool,
    List,
}

/// One declared, env-overridable key, as documentation and tests see it.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyDoc {
    /// Dotted TOML path, e.g. `auth.lockout.max_failures`.
    pub path: String,
    /// The env variable that overrides it, e.g. `GATEHOUSE_AUTH_LOCKOUT_MAX_FAILURES`.
    pub env: String,
    pub kind: Kind,
    /// The default, as it would be written in the file.
    pub default: toml::Value,
}

/// `server.tls.cert` → `GATEHOUSE_SERVER_TLS_CERT`.
pub fn env_name(path: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        path.replace('.', "_").to_ascii_uppercase()
    )
}

/// The state of one load: unread env variables, declared keys, errors so far.
pub(super) struct Cx {
    /// `GATEHOUSE_*` variables not yet consumed by a key.
    env: BTreeMap<String, String>,
    pub(super) keys: Vec<KeyDoc>,
    pub(super) errors: Vec<ConfigError>,
    /// Risky but valid settings: reported by `check-config` and logged at start.
    pub(super) warnings: Vec<ConfigError>,
    /// What the config is loaded for; decides whether `tokens.secret` is required.
    pub(super) purpose: super::Purpose,
}

impl Cx {
    pub(super) fn new(env: impl IntoIterator<Item = (String, String)>) -> Cx {
        Cx {
            env: env
                .into_iter()
                .filter(|(name, _)| {
                    name.starts_with(ENV_PREFIX) && !NON_KEY_VARS.contains(&name.as_str())
                })
                .collect(),
            keys: Vec::new(),
            errors: Vec::new(),
            warnings: Vec::new(),
            purpose: super::Purpose::Serve,
        }
    }

    fn push(&mut self, at: &At, message: impl Into<String>) {
        self.errors.push(ConfigError {
            key: at.key.clone(),
            env: at.env.clone(),
            message: message.into(),
        });
    }

    pub(super) fn err(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError {
            key: key.into(),
            env: None,
            message: message.into(),
        });
    }

    /// Reports the `GATEHOUSE_*` variables no key consumed, for the same reason unknown keys
    /// are errors: `GATEHOUSE_TOKEN_SECRET` (a typo) must not silently leave the file's secret
    /// in force. Call after every section has been read.
    pub(super) fn finish(mut self) -> Vec<ConfigError> {
        let known: Vec<&str> = self
            .keys
            .iter()
            .map(|k| &k.env[ENV_PREFIX.len()..])
            .collect();
        for name in std::mem::take(&mut self.env).into_keys() {
            let mut message = String::from("unknown environment override (no such config key)");
            if let Some(near) = did_you_mean(&name[ENV_PREFIX.len()..], known.iter().copied()) {
                message.push_str(&format!("; did you mean {ENV_PREFIX}{near}?"));
            }
            self.errors.push(ConfigError {
                key: name,
                env: None,
                message,
            });
        }
        self.errors
    }
}

/// Where a value came from, for its error messages.
#[derive(Clone)]
struct At {
    key: String,
    /// The variable, when the value came from the environment.
    env: Option<String>,
}

/// A type a key can hold: how it is read from TOML and from an env variable, and how its
/// default is written back for documentation.
pub(super) trait FromKey: Sized {
    const KIND: Kind;
    fn from_toml(value: &toml::Value) -> Result<Self, String>;
    fn from_env(value: &str) -> Result<Self, String>;
    fn to_toml(&self) -> toml::Value;
}

fn expected(what: &str, found: &toml::Value) -> String {
    let found = match found {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a float",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Datetime(_) => "a datetime",
        toml::Value::Array(_) => "an array",
        toml::Value::Table(_) => "a table",
    };
    format!("expected {what}, found {found}")
}

impl FromKey for String {
    const KIND: Kind = Kind::Str;
    fn from_toml(value: &toml::Value) -> Result<Self, String> {
        match value {
            toml::Value::String(s) => Ok(s.clone()),
            other => Err(expected("a string", other)),
        }
    }
    fn from_env(value: &str) -> Result<Self, String> {
        Ok(value.to_string())
    }
    fn to_toml(&self) -> toml::Value {
        toml::Value::String(self.clone())
    }
}

impl FromKey for Secret {
    const KIND: Kind = Kind::Str;
    fn from_toml(value: &toml::Value) -> Result<Self, String> {
        String::from_toml(value).map(Secret::from)
    }
    fn from_env(value: &str) -> Result<Self, String> {
        Ok(Secret::new(value))
    }
    fn to_toml(&self) -> toml::Value {
        // Only defaults are written back, and a secret's default is empty.
        toml::Value::String(String::new())
    }
}

impl FromKey for bool {
    const KIND: Kind = Kind::Bool;
    fn from_toml(value: &toml::Value) -> Result<Self, String> {
        match value {
            toml::Value::Boolean(b) => Ok(*b),
            other => Err(expected("true or false", other)),
        }
    }
    fn from_env(value: &str) -> Result<Self, String> {
        match value.trim() {
            "true" | "1" => Ok(true),
            "false" | "0" => Ok(false),
            _ => Err("expected true or false".into()),
        }
    }
    fn to_toml(&self) -> toml::Value {
        toml::Value::Boolean(*self)
    }
}

impl FromKey for Vec<String> {
    const KIND: Kind = Kind::List;
    fn from_toml(value: &toml::Value) -> Result<Self, String> {
        match value {
            toml::Value::Array(items) => items
                .iter()
                .map(|item| match item {
                    toml::Value::String(s) => Ok(s.clone()),
                    other => Err(expected("a list of strings", other)),
                })
                .collect(),
            other => Err(expected("a list of strings", other)),
        }
    }
    fn from_env(value: &str) -> Result<Self, String> {
        Ok(value
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect())
    }
    fn to_toml(&self) -> toml::Value {
        toml::Value::Array(self.iter().cloned().map(toml::Value::String).collect())
    }
}

macro_rules! int_key {
    ($($t:ty),*) => {$(
        impl FromKey for $t {
            const KIND: Kind = Kind::Int;
            fn from_toml(value: &toml::Value) -> Result<Self, String> {
                match value {
                    toml::Value::Integer(i) => <$t>::try_from(*i)
                        .map_err(|_| format!("{i} is out of range (0 to {})", <$t>::MAX)),
                    other => Err(expected("an integer", other)),
                }
            }
            fn from_env(value: &str) -> Result<Self, String> {
                let i: i64 = value.trim().parse().map_err(|_| "expected an integer")?;
                Self::from_toml(&toml::Value::Integer(i))
            }
            fn to_toml(&self) -> toml::Value {
                toml::Value::Integer(i64::try_from(*self).unwrap_or(i64::MAX))
            }
        }
    )*};
}
int_key!(u32, u64, usize);

/// One table of the file: `[server]`, `[auth.password]`, a `[[routes]]` entry, or the root.
pub(super) struct Section<'a> {
    cx: &'a mut Cx,
    /// Dotted path; empty for the root.
    path: String,
    /// `None` when the file does not have this table.
    table: Option<&'a toml::Table>,
    /// Whether keys here have `GATEHOUSE_*` overrides (not inside `[[routes]]` or maps).
    env: bool,
    /// A table whose keys the operator names (`[roles]`, `[auth.paths]`): not checked
    /// against declared keys.
    open: bool,
    /// Keys and subsections asked for so far; the rest of `table` is unknown.
    read: Vec<String>,
}

impl<'a> Section<'a> {
    pub(super) fn root(cx: &'a mut Cx, tree: &'a toml::Table) -> Section<'a> {
        Section {
            cx,
            path: String::new(),
            table: Some(tree),
            env: true,
            open: false,
            read: Vec::new(),
        }
    }

    fn path_of(&self, key: &str) -> String {
        match (self.path.is_empty(), key.is_empty()) {
            (true, _) => key.to_string(),
            (false, true) => self.path.clone(),
            (false, false) => format!("{}.{key}", self.path),
        }
    }

    /// What the config is loaded for.
    pub(super) fn purpose(&self) -> super::Purpose {
        self.cx.purpose
    }

    /// Records an error on a key of this section (`""` for the section itself).
    pub(super) fn err(&mut self, key: &str, message: impl Into<String>) {
        let path = self.path_of(key);
        self.cx.err(path, message);
    }

    /// Records an error on a key anywhere, for checks that span sections.
    pub(super) fn err_at(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.cx.err(path, message);
    }

    /// Records a warning on a key of this section, for checks that span keys (on the root, any dotted key).
    pub(super) fn warn_at(&mut self, key: &str, message: impl Into<String>) {
        let key = self.path_of(key);
        self.cx.warnings.push(ConfigError {
            key,
            env: None,
            message: message.into(),
        });
    }

    /// A subsection, `[server.tls]`; missing is the same as empty.
    pub(super) fn section(&mut self, name: &str) -> Section<'_> {
        self.read.push(name.to_string());
        let path = self.path_of(name);
        let table = match self.table.and_then(|t| t.get(name)) {
            None => None,
            Some(toml::Value::Table(t)) => Some(t),
            Some(other) => {
                self.cx.err(path.clone(), expected("a table", other));
                None
            }
        };
        Section {
            cx: self.cx,
            path,
            table,
            env: self.env,
            open: false,
            read: Vec::new(),
        }
    }

    /// A table whose keys are names the operator chooses; read them with [`Section::names`].
    pub(super) fn map(&mut self, name: &str) -> Section<'_> {
        let mut map = self.section(name);
        map.env = false;
        map.open = true;
        map
    }

    /// The keys present in this table, in order.
    pub(super) fn names(&self) -> Vec<String> {
        self.table
            .map(|t| t.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// `[[name]]`: reads each table of the array with `f`, its index in the path. An entry
    /// that is not a table is reported and read as an empty one, so indexes stay aligned
    /// with the file.
    pub(super) fn tables<R>(
        &mut self,
        name: &str,
        mut f: impl FnMut(&mut Section<'_>) -> R,
    ) -> Vec<R> {
        self.read.push(name.to_string());
        let path = self.path_of(name);
        let items = match self.table.and_then(|t| t.get(name)) {
            None => return Vec::new(),
            Some(toml::Value::Array(items)) => items,
            Some(other) => {
                self.cx.err(
                    path,
                    expected(&format!("an array of tables ([[{name}]])"), other),
                );
                return Vec::new();
            }
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let path = format!("{path}[{i}]");
            let table = match item {
                toml::Value::Table(t) => Some(t),
                other => {
                    self.cx.err(path.clone(), expected("a table", other));
                    None
                }
            };
            let mut entry = Section {
                cx: self.cx,
                path,
                table,
                env: false,
                open: false,
                read: Vec::new(),
            };
            out.push(f(&mut entry));
        }
        out
    }

    /// Finds a key's value: its env variable, else the file. Records the key as declared.
    fn lookup<T: FromKey>(
        &mut self,
        key: &str,
        default: Option<&T>,
    ) -> (At, Option<Result<T, String>>) {
        self.read.push(key.to_string());
        let path = self.path_of(key);
        if self.env {
            let env = env_name(&path);
            if let Some(default) = default {
                self.cx.keys.push(KeyDoc {
                    path: path.clone(),
                    env: env.clone(),
                    kind: T::KIND,
                    default: default.to_toml(),
                });
            }
            if let Some(value) = self.cx.env.remove(&env) {
                let at = At {
                    key: path,
                    env: Some(env),
                };
                return (at, Some(T::from_env(&value)));
            }
        }
        let value = self.table.and_then(|t| t.get(key)).map(T::from_toml);
        (
            At {
                key: path,
                env: None,
            },
            value,
        )
    }

    /// A key with its default; see [`Got`] for the checks that can follow.
    pub(super) fn get<T: FromKey>(&mut self, key: &str, default: T) -> Got<'_, T> {
        let (at, found) = self.lookup(key, Some(&default));
        let (value, ok) = match found {
            None => (default, true),
            Some(Ok(value)) => (value, true),
            Some(Err(message)) => {
                self.cx.push(&at, message);
                (default, false)
            }
        };
        Got {
            value,
            ok,
            at,
            cx: self.cx,
        }
    }

    /// A key without a default, `None` when absent (`[[routes]]` fields). Not documented as
    /// an env-overridable key.
    pub(super) fn optional<T: FromKey>(&mut self, key: &str) -> Got<'_, Option<T>> {
        let (at, found) = self.lookup::<T>(key, None);
        let (value, ok) = match found {
            None => (None, true),
            Some(Ok(value)) => (Some(value), true),
            Some(Err(message)) => {
                self.cx.push(&at, message);
                (None, false)
            }
        };
        Got {
            value,
            ok,
            at,
            cx: self.cx,
        }
    }

    pub(super) fn str(&mut self, key: &str, default: &str) -> Got<'_, String> {
        self.get(key, default.to_string())
    }

    pub(super) fn list(&mut self, key: &str, default: &[&str]) -> Got<'_, Vec<String>> {
        self.get(key, default.iter().map(|s| s.to_string()).collect())
    }

    /// A duration like `"15m"`; the default is written the same way.
    pub(super) fn duration(&mut self, key: &str, default: &str) -> Got<'_, Duration> {
        self.str(key, default)
            .then(|v| parse_duration(&v), Duration::ZERO)
    }

    /// A rate like `"5/15m"`, `"0"` for none.
    pub(super) fn rate(
        &mut self,
        key: &str,
        default: &str,
    ) -> Got<'_, Option<crate::ratelimit::Rate>> {
        self.str(key, default)
            .then(|v| crate::ratelimit::parse_rate(&v), None)
    }

    /// A header name like `"X-Auth-User-Id"`.
    pub(super) fn header(&mut self, key: &str, default: &str) -> Got<'_, http::HeaderName> {
        self.str(key, default).then(
            |v| header_name(&v),
            http::HeaderName::from_static("x-invalid"),
        )
    }
}

pub(super) fn header_name(value: &str) -> Result<http::HeaderName, String> {
    http::HeaderName::from_bytes(value.as_bytes())
        .map_err(|_| format!("{value:?} is not a valid header name"))
}

// Unknown keys are found when a section is done with, so no section function can forget to
// check: whatever it did not ask for is not a key.
impl Drop for Section<'_> {
    fn drop(&mut self) {
        let Some(table) = self.table.filter(|_| !self.open) else {
            return;
        };
        for (key, value) in table {
            if self.read.iter().any(|r| r == key) {
                continue;
            }
            let is_table = match value {
                toml::Value::Table(_) => true,
                toml::Value::Array(items) => items.first().is_some_and(toml::Value::is_table),
                _ => false,
            };
            let mut message = String::from(if is_table {
                "unknown section"
            } else {
                "unknown key"
            });
            if let Some(near) = did_you_mean(key, self.read.iter().map(String::as_str)) {
                message.push_str(&format!("; did you mean {}?", self.path_of(near)));
            }
            // Keys as TOML would have to write them: an empty or dotted key in quotes, so
            // `"" = 1` is reported as `""`, not as the section, and `"a.b"` is not `a.b`.
            let path = self.path_of(&toml_key(key));
            self.cx.err(path, message);
        }
    }
}

/// A key spelled as TOML needs it: bare when it is made of `A-Z a-z 0-9 _ -`, quoted
/// (with JSON-style escapes, which TOML basic strings share) otherwise.
fn toml_key(key: &str) -> String {
    if !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        key.to_string()
    } else {
        serde_json::Value::from(key).to_string()
    }
}

/// A value just read, with where it came from, so the checks that follow report under the
/// right name: the TOML key, and the env variable when it came from one.
#[must_use = "a key that is read must be used"]
pub(super) struct Got<'c, T> {
    value: T,
    /// False when reading already failed (and was reported): further checks stay quiet.
    ok: bool,
    at: At,
    cx: &'c mut Cx,
}

impl<'c, T> Got<'c, T> {
    pub(super) fn get(self) -> T {
        self.value
    }

    /// Reports `f`'s complaint, if any, and returns the value either way.
    pub(super) fn check(self, f: impl FnOnce(&T) -> Result<(), String>) -> T {
        if self.ok
            && let Err(message) = f(&self.value)
        {
            self.cx.push(&self.at, message);
        }
        self.value
    }

    /// Records a warning when `f` finds the (valid) value risky, naming the key and the env
    /// variable it came from; the value is kept either way.
    pub(super) fn warn(self, f: impl FnOnce(&T) -> Option<String>) -> Self {
        if self.ok
            && let Some(message) = f(&self.value)
        {
            self.cx.warnings.push(ConfigError {
                key: self.at.key.clone(),
                env: self.at.env.clone(),
                message,
            });
        }
        self
    }

    /// Converts the value; `None` when reading or converting failed (both are reported).
    pub(super) fn parse<U>(self, f: impl FnOnce(&T) -> Result<U, String>) -> Option<U> {
        if !self.ok {
            return None;
        }
        f(&self.value)
            .map_err(|message| self.cx.push(&self.at, message))
            .ok()
    }

    /// Transforms the value without a way to fail (trimming, lower-casing).
    pub(super) fn map<U>(self, f: impl FnOnce(T) -> U) -> Got<'c, U> {
        Got {
            value: f(self.value),
            ok: self.ok,
            at: self.at,
            cx: self.cx,
        }
    }

    /// Converts the value, keeping it checkable; `fallback` stands in when that fails.
    pub(super) fn then<U>(self, f: impl FnOnce(T) -> Result<U, String>, fallback: U) -> Got<'c, U> {
        let (value, ok) = if self.ok {
            match f(self.value) {
                Ok(value) => (value, true),
                Err(message) => {
                    self.cx.push(&self.at, message);
                    (fallback, false)
                }
            }
        } else {
            (fallback, false)
        };
        Got {
            value,
            ok,
            at: self.at,
            cx: self.cx,
        }
    }
}

impl<T: PartialOrd + fmt::Display> Got<'_, T> {
    pub(super) fn at_least(self, min: T) -> T {
        self.check(|v| {
            if *v < min {
                Err(format!("must be at least {min}"))
            } else {
                Ok(())
            }
        })
    }
}

impl Got<'_, Duration> {
    /// Checks the key's sane range, both ends included. Every duration key has one: a value
    /// outside it is a typo (`"1000d"` for `"100d"`) or a setting that cannot work, and
    /// says which in the bounds it names.
    pub(super) fn within(self, min: Duration, max: Duration) -> Duration {
        self.check(|d| {
            if *d < min || *d > max {
                Err(format!(
                    "{} is out of range: must be between {} and {}",
                    format_duration(*d),
                    format_duration(min),
                    format_duration(max)
                ))
            } else {
                Ok(())
            }
        })
    }
}

impl Got<'_, Vec<String>> {
    /// Converts each item, reporting a bad one under `key[i]`.
    pub(super) fn parse_each<U>(self, f: impl Fn(&str) -> Result<U, String>) -> Vec<U> {
        let mut out = Vec::with_capacity(self.value.len());
        for (i, item) in self.value.iter().enumerate() {
            match f(item) {
                Ok(v) => out.push(v),
                Err(message) => {
                    let at = At {
                        key: format!("{}[{i}]", self.at.key),
                        env: self.at.env.clone(),
                    };
                    self.cx.push(&at, message);
                }
            }
        }
        out
    }
}

/// The candidate closest to `word` by edit distance, if it is close enough to be a typo:
/// at most a third of the longer word's characters changed (at least one).
pub(super) fn did_you_mean<'k>(
    word: &str,
    candidates: impl IntoIterator<Item = &'k str>,
) -> Option<&'k str> {
    candidates
        .into_iter()
        .map(|c| (levenshtein(word, c), c))
        .filter(|(d, c)| *d <= (word.chars().count().max(c.chars().count()) / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Edit distance (insertions, deletions, substitutions), two rows at a time.
fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = substitute.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// A TOML syntax error with its line and column (1-based), which `toml`'s short message
/// lacks and its long one spreads over several lines.
pub(super) fn syntax_error(text: &str, e: &toml::de::Error) -> ConfigError {
    let message = e.message().trim().replace('\n', "; ");
    let key = match e.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("line {line}, column {column}")
        }
        None => "(file)".to_string(),
    };
    ConfigError {
        key,
        env: None,
        message: format!("TOML syntax: {message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_and_suggestions() {
        assert_eq!(levenshtein("", "abc"), 3);
        assert_eq!(levenshtein("kitten", "sitting"), 3);
        assert_eq!(levenshtein("acess", "access"), 1);
        let keys = ["listen", "admin_listen", "workers"];
        assert_eq!(did_you_mean("admin_listn", keys), Some("admin_listen"));
        assert_eq!(did_you_mean("worker", keys), Some("workers"));
        assert_eq!(did_you_mean("listen_addr", keys), None);
        assert_eq!(did_you_mean("x", keys), None);
    }
}
