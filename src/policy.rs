//! Route policies: which requests are public, which need a token, which need a role.
//!
//! The configuration module turns `[[routes]]`, `[policy] default` and `[roles]` into a
//! [`PolicySpec`]; [`Policy::compile`] validates it once at start-up (reporting every error at
//! once, each with its TOML key) and builds the structure that [`Policy::decide`] consults on
//! every proxied request. The policy does no IO and never sees a token: the caller maps the
//! token's roles to a [`RoleMask`] with [`Policy::roles_mask`] and asks the decided
//! [`Access`] for a [`Verdict`].
//!
//! The path given to [`Policy::decide`] must already be normalised (see `path.rs`): the policy
//! matches bytes and knows nothing about percent-encoding or dot segments.
//!
//! Decisions:
//!
//! - **First match wins**, in file order; no match means `[policy] default`. Rule indices are
//!   0-based, as in the error keys (`routes[0]` is the first `[[routes]]` entry).
//! - **Globs work on whole segments.** `*` is exactly one non-empty segment; `**` (only as a
//!   whole segment) is zero or more segments, so `/api/users/**` covers `/api/users` itself;
//!   a `*` inside a segment (`v*`, `*.json`) matches any run of characters, possibly empty,
//!   within that segment. Literal segments compare bytes exactly (but see case below). No `?`,
//!   `[..]` or `{..}`: they are refused rather than taken literally, because an operator who
//!   writes them expects them to be wildcards.
//! - **Patterns are written the way normalised paths look**: no empty segments (`//`, or a
//!   trailing `/`), no `.`/`..` segments, no characters that normalisation refuses, and
//!   percent-escapes only for reserved characters, in upper-case hex. A pattern that could
//!   never match is a configuration error, not a silently dead rule.
//! - **Case.** Many upstreams route without regard to case (Express by default, IIS and
//!   ASP.NET, nginx `~*` locations), so by default a request is decided twice: on its exact
//!   path, and on its case-folded path ([`crate::path::fold_case`]) against the case-folded
//!   patterns. It must pass both; the stricter verdict wins (403 over 401 over allow). So
//!   `/API/Admin` gets at least the `/api/admin/**` rule's protection, and on an exact
//!   upstream, where it is a different resource, it also needs what its own rule asks.
//!   Folding never makes a request laxer. The second decision is skipped when neither the
//!   path nor any pattern has anything to fold, which is nearly every request.
//!   `[policy] case_sensitive = true` decides on the exact path only, for operators who know
//!   their upstream routes exactly.
//! - **A trailing slash on the request is ignored** for matching: `/a/b/` matches `/a/b`.
//! - **Methods**: an empty list means every method, including extension methods. Names are
//!   upper-cased (so `"get"` in the file means `GET`) and must be HTTP tokens. `GET` implies
//!   `HEAD`: a HEAD request is a GET without the body, and upstreams answer it with their GET
//!   handler, so a rule that protects GET but lets HEAD fall through to a laxer default would
//!   leak status, headers and length of the protected resource.
//! - **Access**: each rule has exactly one of `access` (public | authenticated | deny) or a
//!   non-empty `roles` list, meaning "any of these roles". `deny` answers 403 even to an
//!   anonymous client, because no token would change the answer; a `roles` rule answers 401 to
//!   an anonymous client, because a token might.
//! - **Roles** are interned to bits of a `u128` (so at most 128 distinct role names), and the
//!   inheritance closure is computed once: a user's [`RoleMask`] already contains every role
//!   their roles inherit, so checking a rule is one AND. A role is known if it is a key of
//!   `[roles]`, is inherited by one, or is in [`PolicySpec::known_roles`] (default roles, the
//!   admin role); a rule naming any other role is an error, since it could never match.
//!   Inheritance cycles are errors. Role names in a token that the policy does not know grant
//!   nothing.
//! - **Role names** must be non-empty and free of ',', whitespace and control characters,
//!   because they travel comma-separated in the roles header; declaring a role twice is an
//!   error. `[policy] default` must be given explicitly: the configuration module supplies
//!   `deny` when the key is absent.
//! - **Speed**: rules are bucketed by their first segment when it is a literal, so a request
//!   only tries the rules whose first segment can match, still in file order. The request
//!   path is split once into segment slices on the stack (walked in place when it has more
//!   than 16 segments), and each candidate costs a method bit test and a segment-wise match
//!   with no allocation. With 100 rules a decision takes well under a microsecond.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use http::Method;

/// One `[[routes]]` entry as written in the configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteSpec {
    /// `name`: the rule's label in metrics and access logs; see [`Policy::rule_label`].
    pub name: Option<String>,
    /// The path glob, e.g. `/api/users/**`.
    pub path: String,
    /// Methods the rule applies to; empty means all.
    pub methods: Vec<String>,
    /// `public`, `authenticated` or `deny`; exclusive with `roles`.
    pub access: Option<String>,
    /// Any of these roles grants access; exclusive with `access`.
    pub roles: Vec<String>,
    /// `mfa = true`: the token must carry `otp` in `amr` (a login with a second factor).
    pub mfa: bool,
}

/// One `[roles]` entry: `name = { inherits = [...] }`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoleSpec {
    /// The role being declared.
    pub name: String,
    /// Roles whose permissions this role also has.
    pub inherits: Vec<String>,
}

/// Everything the policy is compiled from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicySpec {
    /// `[[routes]]`, in file order.
    pub routes: Vec<RouteSpec>,
    /// `[policy] default`: `deny`, `authenticated` or `public`.
    pub default: String,
    /// `[roles]`.
    pub roles: Vec<RoleSpec>,
    /// Role names known from elsewhere in the configuration (default roles, the admin role).
    pub known_roles: Vec<String>,
    /// `[policy] case_sensitive`: decide on the exact path only. When false (the default),
    /// every request is also decided on its case-folded path and the stricter verdict wins.
    pub case_sensitive: bool,
}

/// One configuration error, with the TOML key it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// E.g. `routes[3].path`, `roles.admin.inherits` or `policy.default`.
    pub key: String,
    /// What is wrong, in a sentence an operator can act on.
    pub message: String,
}

impl PolicyError {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        PolicyError {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

impl std::error::Error for PolicyError {}

/// A set of roles known to one [`Policy`], one bit each. Masks from different policies must
/// not be mixed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct RoleMask(u128);

impl RoleMask {
    /// No roles.
    pub const EMPTY: RoleMask = RoleMask(0);

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether the two sets share a role.
    pub fn intersects(self, other: RoleMask) -> bool {
        self.0 & other.0 != 0
    }
}

/// What a route requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, with or without a token.
    Public,
    /// Any valid token.
    Authenticated,
    /// Nobody.
    Deny,
    /// A valid token carrying any of these roles (after inheritance).
    Roles(RoleMask),
}

impl Access {
    /// The verdict for a user: `None` is an anonymous client, `Some` the roles of a verified
    /// token as returned by [`Policy::roles_mask`].
    pub fn allows(&self, user: Option<RoleMask>) -> Verdict {
        match (self, user) {
            (Access::Public, _) | (Access::Authenticated, Some(_)) => Verdict::Allow,
            // No token could change a deny, so an anonymous client gets 403 rather than 401.
            (Access::Deny, _) => Verdict::Forbidden,
            (Access::Authenticated | Access::Roles(_), None) => Verdict::Unauthenticated,
            (Access::Roles(required), Some(held)) if required.intersects(held) => Verdict::Allow,
            (Access::Roles(_), Some(_)) => Verdict::Forbidden,
        }
    }
}

/// The outcome of checking a user against an [`Access`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Forward the request.
    Allow,
    /// 401: a (valid) token is needed.
    Unauthenticated,
    /// 403: a token would not help, or this one lacks the roles.
    Forbidden,
}

impl Verdict {
    /// Order of strictness, for combining two verdicts.
    fn severity(self) -> u8 {
        match self {
            Verdict::Allow => 0,
            Verdict::Unauthenticated => 1,
            Verdict::Forbidden => 2,
        }
    }
}

/// Which rule applied to a path spelling and what it requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Matched {
    /// Index into `[[routes]]`; `None` when no rule matched and the default applied.
    pub rule: Option<usize>,
    /// What the request needs.
    pub access: Access,
    /// Whether it also needs a token from a login with a second factor (`mfa = true`).
    pub mfa: bool,
}

/// Which spelling of the path a match came from. Upstreams route some spellings of a path
/// to the same handler as the path itself; each is decided, and the strictest verdict wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// The normalised path against the patterns, byte for byte.
    Exact,
    /// The case-folded path against the case-folded patterns: how a case-insensitive
    /// upstream (Express, IIS, nginx `~*`) compares it with its routes.
    Folded,
    /// The case-folded path against the patterns as written: the lower-case spelling, which
    /// a case-insensitive upstream serves with the same handler.
    Lowercase,
    /// Without a format suffix on the last segment (`/api/admin.json` as `/api/admin`): Rails
    /// routes `(.:format)` and older Spring suffix patterns to the bare path's handler.
    NoSuffix,
    /// Without the format suffix, case-folded, against the case-folded patterns.
    NoSuffixFolded,
}

impl Form {
    /// How `policy explain` names the spelling.
    pub fn label(self) -> &'static str {
        match self {
            Form::Exact => "exact path",
            Form::Folded => "case-folded path",
            Form::Lowercase => "lower-case path",
            Form::NoSuffix => "path without its format suffix",
            Form::NoSuffixFolded => "case-folded path without its format suffix",
        }
    }
}

/// How the policy treats a request: the rule its exact path matched and the rules other
/// spellings of it matched, where those differ (see [`Form`]). A request must satisfy all of
/// them, so no spelling an upstream routes to a handler gets a laxer rule than the one that
/// handler's own path has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// The exact path's rule.
    pub exact: Matched,
    /// Other spellings' rules, each different from the exact one and from each other.
    others: [Option<(Matched, Form)>; 4],
}

impl Decision {
    fn new(exact: Matched) -> Decision {
        Decision {
            exact,
            others: [None; 4],
        }
    }

    /// Records another spelling's match unless its rule is already there. Only a rule
    /// counts: the default is for paths no rule names, so another spelling falling through
    /// to it says nothing about the handler (`/Shop/**` written for `/Shop/x` must not be
    /// denied because `/shop/x` names no rule).
    fn add(&mut self, matched: Matched, form: Form) {
        if matched.rule.is_none()
            || matched.rule == self.exact.rule
            || self
                .others
                .iter()
                .flatten()
                .any(|(m, _)| m.rule == matched.rule)
        {
            return;
        }
        if let Some(slot) = self.others.iter_mut().find(|slot| slot.is_none()) {
            *slot = Some((matched, form));
        }
    }

    /// The other spellings' matches (those whose rule differs from the exact path's).
    pub fn others(&self) -> impl Iterator<Item = (Matched, Form)> + '_ {
        self.others.iter().flatten().copied()
    }

    /// The match that denies the request to everyone, if any spelling's does: no token could
    /// change the answer.
    pub fn denial(&self) -> Option<Matched> {
        self.matched().find(|m| m.access == Access::Deny)
    }

    /// The match that requires a second factor, if any spelling's does: a token without
    /// `otp` in `amr` is refused there whatever its roles.
    pub fn mfa(&self) -> Option<Matched> {
        self.matched().find(|m| m.mfa)
    }

    /// Whether every spelling is public (no token needed, no e-mail check).
    pub fn is_public(&self) -> bool {
        self.matched().all(|m| m.access == Access::Public)
    }

    /// The verdict for a user and the match it came from: the strictest of the spellings'
    /// verdicts (403 over 401 over allow); the exact spelling's on a tie.
    pub fn verdict(&self, user: Option<RoleMask>) -> (Verdict, Matched, Form) {
        let mut worst = (self.exact.access.allows(user), self.exact, Form::Exact);
        for (matched, form) in self.others() {
            let verdict = matched.access.allows(user);
            if verdict.severity() > worst.0.severity() {
                worst = (verdict, matched, form);
            }
        }
        worst
    }

    /// The rules involved (for per-route rate limits).
    pub fn rules(&self) -> impl Iterator<Item = usize> + '_ {
        self.matched().filter_map(|m| m.rule)
    }

    fn matched(&self) -> impl Iterator<Item = Matched> + '_ {
        std::iter::once(self.exact).chain(self.others().map(|(m, _)| m))
    }
}

/// The compiled route policy. Build it once with [`Policy::compile`] and share it.
#[derive(Debug)]
pub struct Policy {
    rules: Box<[Rule]>,
    default: Access,
    roles: RoleTable,
    index: FirstSegmentIndex,
    /// The case-folded rules, unless `case_sensitive`.
    folded: Option<FoldedRules>,
}

/// The rules' globs compiled from their case-folded patterns, in the same order.
#[derive(Debug)]
struct FoldedRules {
    globs: Box<[Glob]>,
    index: FirstSegmentIndex,
    /// Some pattern changes when folded (it has an upper-case letter or a non-ASCII escape),
    /// so even an already-folded path must be tried against these globs.
    patterns_change: bool,
}

impl FoldedRules {
    /// `None` when a pattern is invalid: its own error is reported by [`Rule::compile`].
    fn compile(spec: &PolicySpec, errors: &mut Vec<PolicyError>) -> Option<FoldedRules> {
        let mut globs = Vec::with_capacity(spec.routes.len());
        let mut patterns_change = false;
        for (i, route) in spec.routes.iter().enumerate() {
            Glob::compile(&route.path).ok()?;
            let folded = crate::path::fold_case(&route.path);
            patterns_change |= *folded != *route.path;
            // Folding keeps `/`, `*` and the escapes' form and turns letters into letters,
            // so a valid pattern stays valid; report it rather than assume it.
            match Glob::compile(&folded) {
                Ok(glob) => globs.push(glob),
                Err(message) => {
                    errors.push(PolicyError::new(
                        format!("routes[{i}].path"),
                        format!(
                            "its case-folded form `{folded}` is not a valid pattern: {message}"
                        ),
                    ));
                    return None;
                }
            }
        }
        Some(FoldedRules {
            index: FirstSegmentIndex::build(globs.iter().map(Glob::first_literal)),
            globs: globs.into_boxed_slice(),
            patterns_change,
        })
    }
}

impl Policy {
    /// Validates `spec` and compiles it, or returns every error found.
    pub fn compile(spec: &PolicySpec) -> Result<Policy, Vec<PolicyError>> {
        let mut errors = Vec::new();
        let default = parse_access(&spec.default).unwrap_or_else(|| {
            errors.push(PolicyError::new(
                "policy.default",
                format!(
                    "`{}` is not a default access; use deny, authenticated or public",
                    spec.default
                ),
            ));
            Access::Deny
        });
        let roles = RoleTable::compile(spec, &mut errors);
        let rules: Vec<Rule> = spec
            .routes
            .iter()
            .enumerate()
            .filter_map(|(i, route)| Rule::compile(i, route, &roles, &mut errors))
            .collect();
        let folded = if spec.case_sensitive {
            None
        } else {
            FoldedRules::compile(spec, &mut errors)
        };
        let labels = rule_labels(spec, &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut rules = rules;
        for (rule, label) in rules.iter_mut().zip(labels) {
            rule.label = label.into();
        }
        let index = FirstSegmentIndex::build(rules.iter().map(|r| r.glob.first_literal()));
        Ok(Policy {
            rules: rules.into_boxed_slice(),
            default,
            roles,
            index,
            folded,
        })
    }

    /// Whether the policy decides on the exact path only (`[policy] case_sensitive`).
    pub fn is_case_sensitive(&self) -> bool {
        self.folded.is_none()
    }

    /// The rule that applies to a request, and what it requires. `path` must be normalised;
    /// one that does not start with '/' (such as the `*` of `OPTIONS *`) matches no rule and
    /// gets the default. Allocates nothing.
    pub fn decide(&self, method: &Method, path: &str) -> Decision {
        let name = method.as_str();
        let bit = standard_method_bit(name);
        let exact_globs = |i: usize| &self.rules[i].glob;
        let mut decision =
            Decision::new(self.first_match(bit, name, path, &self.index, exact_globs));
        self.decide_folded(
            bit,
            name,
            path,
            &mut decision,
            Form::Folded,
            Form::Lowercase,
        );
        if let Some(bare) = crate::path::without_format_suffix(path) {
            decision.add(
                self.first_match(bit, name, bare, &self.index, exact_globs),
                Form::NoSuffix,
            );
            self.decide_folded(
                bit,
                name,
                bare,
                &mut decision,
                Form::NoSuffixFolded,
                Form::NoSuffixFolded,
            );
        }
        decision
    }

    /// Adds the case-insensitive spellings' matches of `path`, unless the policy is
    /// case-sensitive: the folded path against the folded patterns (`folded`) and, when
    /// folding changed the path, against the patterns as written (`lowercase`). Nearly every
    /// request has nothing to fold, against patterns with nothing to fold, and costs one scan.
    fn decide_folded(
        &self,
        bit: u16,
        name: &str,
        path: &str,
        decision: &mut Decision,
        folded: Form,
        lowercase: Form,
    ) {
        let Some(rules) = &self.folded else {
            return;
        };
        let folded_path = crate::path::fold_case(path);
        let changed = matches!(folded_path, std::borrow::Cow::Owned(_));
        if changed || rules.patterns_change {
            decision.add(
                self.first_match(bit, name, &folded_path, &rules.index, |i| &rules.globs[i]),
                folded,
            );
        }
        if changed {
            decision.add(
                self.first_match(bit, name, &folded_path, &self.index, |i| {
                    &self.rules[i].glob
                }),
                lowercase,
            );
        }
    }

    fn first_match<'g>(
        &'g self,
        bit: u16,
        name: &str,
        path: &str,
        index: &FirstSegmentIndex,
        glob: impl Fn(usize) -> &'g Glob,
    ) -> Matched {
        let segments = Segments::of(path);
        for &i in index.candidates(segments.first()) {
            let rule = &self.rules[i];
            if rule.methods.contains(bit, name) && glob(i).matches(&segments) {
                return Matched {
                    rule: Some(i),
                    access: rule.access,
                    mfa: rule.mfa,
                };
            }
        }
        Matched {
            rule: None,
            access: self.default,
            mfa: false,
        }
    }

    /// The roles a user holds, inheritance included. Names the policy does not know
    /// contribute nothing. Allocates nothing.
    pub fn roles_mask<'a>(&self, roles: impl IntoIterator<Item = &'a str>) -> RoleMask {
        RoleMask(
            roles
                .into_iter()
                .filter_map(|name| self.roles.index_of(name))
                .fold(0, |mask, i| mask | self.roles.closure[i]),
        )
    }

    /// What a rule requiring `roles` (any of) would require: the roles' own bits, without
    /// inheritance. `Access::Roles(policy.requirement(["admin"])).allows(user)` asks whether a
    /// user holds `admin` or a role that inherits it. Unknown names require nothing, so an
    /// empty requirement allows no one.
    pub fn requirement<'a>(&self, roles: impl IntoIterator<Item = &'a str>) -> RoleMask {
        RoleMask(
            roles
                .into_iter()
                .filter_map(|name| self.roles.index_of(name))
                .fold(0, |mask, i| mask | (1u128 << i)),
        )
    }

    /// How many route rules there are.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// True when no route rule is configured (everything gets the default).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The default access as written in the config: `deny`, `authenticated` or `public`.
    pub fn default_label(&self) -> &'static str {
        match self.default {
            Access::Public => "public",
            Access::Authenticated => "authenticated",
            Access::Deny | Access::Roles(_) => "deny",
        }
    }

    /// The rule's `route` label in metrics and access logs, `default` for the policy
    /// default. A rule's `name` when it has one; otherwise its path pattern, or, when
    /// several rules share that pattern, the pattern with its methods (`GET,HEAD /api/**`),
    /// and with its index too (`/api/** (routes[3])`) if that is still not unique. Labels
    /// are unique, so no two rules' series merge.
    pub fn rule_label(&self, rule: Option<usize>) -> &str {
        match rule.and_then(|i| self.rules.get(i)) {
            Some(rule) => &rule.label,
            None => "default",
        }
    }

    /// One line on a match: the rule, its label, pattern, methods and access, or the default.
    pub fn describe_match(&self, matched: Matched) -> String {
        match matched.rule.and_then(|i| Some((i, self.rules.get(i)?))) {
            Some((i, rule)) => {
                format!(
                    "routes[{i}] ({}) matched: path = \"{}\", methods = {}, {}",
                    rule.label,
                    rule.pattern,
                    rule.methods.label,
                    self.describe(rule.access)
                ) + if rule.mfa { ", mfa = true" } else { "" }
            }
            None => format!("no rule matched; default = {}", access_name(self.default)),
        }
    }

    fn describe(&self, access: Access) -> String {
        match access {
            Access::Roles(mask) => format!("roles = any of [{}]", self.role_names(mask)),
            other => format!("access = {}", access_name(other)),
        }
    }

    /// Whether a role name is known to the policy (a token's unknown roles grant nothing).
    pub fn knows_role(&self, name: &str) -> bool {
        self.roles.index_of(name).is_some()
    }

    /// The names in a mask, in interning order, comma-separated.
    pub fn role_names(&self, mask: RoleMask) -> String {
        let names: Vec<&str> = (0..self.roles.names.len())
            .filter(|&i| mask.0 & bit(i) != 0)
            .map(|i| &*self.roles.names[i])
            .collect();
        names.join(", ")
    }
}

/// The configuration spelling of an access; `roles` for a role list.
fn access_name(access: Access) -> &'static str {
    match access {
        Access::Public => "public",
        Access::Authenticated => "authenticated",
        Access::Deny => "deny",
        Access::Roles(_) => "roles",
    }
}

fn parse_access(value: &str) -> Option<Access> {
    match value {
        "public" => Some(Access::Public),
        "authenticated" => Some(Access::Authenticated),
        "deny" => Some(Access::Deny),
        _ => None,
    }
}

/// The bit for role index `i`; zero for indices beyond the mask, which only exist while a
/// too-large role set is being reported as an error.
fn bit(i: usize) -> u128 {
    u32::try_from(i)
        .ok()
        .and_then(|i| 1u128.checked_shl(i))
        .unwrap_or(0)
}

/// At most this many distinct role names, one bit of a [`RoleMask`] each.
const MAX_ROLES: usize = 128;

#[derive(Debug)]
struct Rule {
    /// The glob as written, for `explain`.
    pattern: Box<str>,
    /// The metrics and access-log label ([`Policy::rule_label`]).
    label: Box<str>,
    glob: Glob,
    methods: Methods,
    access: Access,
    mfa: bool,
}

impl Rule {
    /// Compiles `routes[i]`, pushing every problem found onto `errors`.
    fn compile(
        i: usize,
        route: &RouteSpec,
        roles: &RoleTable,
        errors: &mut Vec<PolicyError>,
    ) -> Option<Rule> {
        let before = errors.len();
        let glob = Glob::compile(&route.path)
            .map_err(|message| errors.push(PolicyError::new(format!("routes[{i}].path"), message)))
            .ok();
        let methods = Methods::compile(i, &route.methods, errors);
        let access = match (&route.access, route.roles.is_empty()) {
            (Some(access), true) => parse_access(access).or_else(|| {
                errors.push(PolicyError::new(
                    format!("routes[{i}].access"),
                    format!(
                        "`{access}` is not an access; use public, authenticated or deny, or list `roles`"
                    ),
                ));
                None
            }),
            (Some(_), false) => {
                errors.push(PolicyError::new(
                    format!("routes[{i}]"),
                    "set either `access` or `roles`, not both",
                ));
                None
            }
            (None, true) => {
                errors.push(PolicyError::new(
                    format!("routes[{i}]"),
                    "set `access` (public, authenticated or deny) or a non-empty `roles` list",
                ));
                None
            }
            (None, false) => {
                let mut mask = 0;
                for (j, name) in route.roles.iter().enumerate() {
                    match roles.index_of(name) {
                        Some(k) => mask |= bit(k),
                        None => errors.push(PolicyError::new(
                            format!("routes[{i}].roles[{j}]"),
                            format!(
                                "unknown role `{name}`: declare it under [roles] (known roles: {})",
                                roles.sorted_names()
                            ),
                        )),
                    }
                }
                Some(Access::Roles(RoleMask(mask)))
            }
        };
        // A second factor is a property of a token: a rule that needs none, or lets nobody
        // in, cannot ask for one.
        if route.mfa && matches!(access, Some(Access::Public | Access::Deny)) {
            errors.push(PolicyError::new(
                format!("routes[{i}].mfa"),
                "needs a token: use it with access = \"authenticated\" or `roles`",
            ));
        }
        if errors.len() > before {
            return None;
        }
        Some(Rule {
            pattern: route.path.as_str().into(),
            label: Box::default(),
            glob: glob?,
            methods,
            access: access?,
            mfa: route.mfa,
        })
    }
}

/// The longest route name: labels are for dashboards, not prose.
const MAX_NAME_LEN: usize = 64;

/// Each rule's label (see [`Policy::rule_label`]), checking the names: well-formed, not
/// reserved, unique.
fn rule_labels(spec: &PolicySpec, errors: &mut Vec<PolicyError>) -> Vec<String> {
    let mut named: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, route) in spec.routes.iter().enumerate() {
        let Some(name) = &route.name else { continue };
        let key = format!("routes[{i}].name");
        let well_formed = !name.is_empty()
            && name.len() <= MAX_NAME_LEN
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_./:".contains(&b));
        if !well_formed {
            errors.push(PolicyError::new(
                key,
                format!(
                    "`{name}` is not a route name: use 1 to {MAX_NAME_LEN} letters, digits, \
                     `-`, `_`, `.`, `/` or `:`"
                ),
            ));
        } else if name == "default" || name.starts_with("auth:") {
            errors.push(PolicyError::new(
                key,
                format!(
                    "`{name}` is reserved: `default` labels the policy default and `auth:` \
                     the auth endpoints"
                ),
            ));
        } else if let Some(first) = named.get(name.as_str()) {
            errors.push(PolicyError::new(
                key,
                format!("`{name}` is already the name of routes[{first}]; names must be unique"),
            ));
        } else {
            named.insert(name, i);
        }
    }
    let shared = |pattern: &str| {
        spec.routes
            .iter()
            .filter(|r| r.name.is_none() && r.path == pattern)
            .count()
            > 1
    };
    let mut labels: Vec<String> = spec
        .routes
        .iter()
        .map(|route| match &route.name {
            Some(name) => name.clone(),
            None if shared(&route.path) && !route.methods.is_empty() => {
                let mut methods: Vec<String> = Vec::new();
                for m in &route.methods {
                    let m = m.to_ascii_uppercase();
                    if !methods.contains(&m) {
                        methods.push(m);
                    }
                }
                format!("{} {}", methods.join(","), route.path)
            }
            None => route.path.clone(),
        })
        .collect();
    // Whatever is still ambiguous (same pattern and methods, or an unnamed label equal to
    // a name) gets its index, which is unique.
    let taken: Vec<bool> = (0..labels.len())
        .map(|i| {
            spec.routes[i].name.is_none()
                && labels
                    .iter()
                    .enumerate()
                    .any(|(j, l)| j != i && *l == labels[i])
        })
        .collect();
    for (i, taken) in taken.into_iter().enumerate() {
        if taken {
            labels[i] = format!("{} (routes[{i}])", spec.routes[i].path);
        }
    }
    labels
}

/// The standard methods, one bit each in [`Methods::standard`].
const STANDARD_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];
const GET_BIT: u16 = 1 << 0;
const HEAD_BIT: u16 = 1 << 1;

/// The bit of a standard method (upper-case name), or 0 for an extension method.
fn standard_method_bit(name: &str) -> u16 {
    match name {
        "GET" => GET_BIT,
        "HEAD" => HEAD_BIT,
        "POST" => 1 << 2,
        "PUT" => 1 << 3,
        "DELETE" => 1 << 4,
        "CONNECT" => 1 << 5,
        "OPTIONS" => 1 << 6,
        "TRACE" => 1 << 7,
        "PATCH" => 1 << 8,
        _ => 0,
    }
}

/// RFC 9110 §5.6.2 `token`, the syntax of a method name.
fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[derive(Debug)]
struct Methods {
    /// An empty `methods` list: every method, extension methods included.
    all: bool,
    standard: u16,
    extension: Box<[Box<str>]>,
    /// E.g. `GET, HEAD (implied by GET), POST` or `all`, for `explain`.
    label: Box<str>,
}

impl Methods {
    fn compile(i: usize, names: &[String], errors: &mut Vec<PolicyError>) -> Methods {
        let mut standard = 0;
        let mut extension: Vec<Box<str>> = Vec::new();
        for (j, name) in names.iter().enumerate() {
            let upper = name.to_ascii_uppercase();
            let key = || format!("routes[{i}].methods[{j}]");
            if upper == "*" {
                errors.push(PolicyError::new(
                    key(),
                    "`*` is not a method; leave `methods` out to match every method",
                ));
            } else if !is_token(&upper) {
                errors.push(PolicyError::new(
                    key(),
                    format!("`{name}` is not a valid HTTP method name"),
                ));
            } else {
                match standard_method_bit(&upper) {
                    0 if !extension.iter().any(|m| **m == *upper) => extension.push(upper.into()),
                    0 => {}
                    b => standard |= b,
                }
            }
        }
        let mut parts: Vec<String> = STANDARD_METHODS
            .iter()
            .filter(|m| standard & standard_method_bit(m) != 0)
            .map(|m| (*m).to_owned())
            .collect();
        if standard & GET_BIT != 0 && standard & HEAD_BIT == 0 {
            standard |= HEAD_BIT;
            parts.insert(1, "HEAD (implied by GET)".to_owned());
        }
        parts.extend(extension.iter().map(|m| String::from(&**m)));
        let all = names.is_empty();
        Methods {
            all,
            standard,
            extension: extension.into_boxed_slice(),
            label: if all {
                "all".into()
            } else {
                parts.join(", ").into()
            },
        }
    }

    /// `bit` is [`standard_method_bit`] of `name`, computed once per request.
    fn contains(&self, bit: u16, name: &str) -> bool {
        self.all
            || self.standard & bit != 0
            || (bit == 0 && self.extension.iter().any(|m| **m == *name))
    }
}

/// A compiled path glob: one matcher per `/`-separated segment.
#[derive(Debug)]
struct Glob {
    segments: Box<[Segment]>,
}

#[derive(Debug)]
enum Segment {
    /// Exactly this text.
    Literal(Box<str>),
    /// `*`: exactly one non-empty segment.
    One,
    /// A segment with `*` inside, split at the stars (at least two parts, not all empty).
    Within(Box<[Box<str>]>),
    /// `**`: zero or more segments.
    Any,
}

impl Segment {
    fn matches(&self, segment: &str) -> bool {
        match self {
            Segment::Literal(text) => **text == *segment,
            Segment::One => !segment.is_empty(),
            Segment::Within(parts) => matches_within(parts, segment),
            // `Glob::matches` handles `**` itself.
            Segment::Any => true,
        }
    }
}

/// `*`-only wildcard matching inside one segment: the first part is a prefix, the last a
/// suffix, and the middle parts occur in order in between. Taking the leftmost occurrence of
/// each middle part is optimal, so no backtracking is needed.
fn matches_within(parts: &[Box<str>], segment: &str) -> bool {
    let Some((first, rest)) = parts.split_first() else {
        return false;
    };
    let Some((last, middle)) = rest.split_last() else {
        return **first == *segment;
    };
    let Some(mut remaining) = segment.strip_prefix(&**first) else {
        return false;
    };
    for part in middle {
        match remaining.find(&**part) {
            Some(at) => remaining = &remaining[at + part.len()..],
            None => return false,
        }
    }
    remaining.ends_with(&**last)
}

impl Glob {
    fn compile(pattern: &str) -> Result<Glob, String> {
        if pattern.is_empty() {
            return Err("the path is empty; use \"/**\" to match every path".to_owned());
        }
        let Some(rest) = pattern.strip_prefix('/') else {
            return Err(format!("`{pattern}` must start with '/'"));
        };
        let segments = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split('/')
                .map(compile_segment)
                .collect::<Result<_, _>>()?
        };
        Ok(Glob {
            segments: segments.into_boxed_slice(),
        })
    }

    /// Segment-level wildcard matching with a single backtrack point, as in the classic
    /// `*`/`?` string algorithm: every matcher but `**` consumes exactly one segment, and on a
    /// mismatch the most recent `**` absorbs one more segment and matching resumes after it.
    fn matches(&self, path: &Segments<'_>) -> bool {
        let Some(mut cursor) = path.start() else {
            return false;
        };
        let mut p = 0;
        let mut backtrack: Option<(usize, usize)> = None;
        loop {
            let Some((segment, next)) = path.at(cursor) else {
                return self.segments[p..].iter().all(|s| matches!(s, Segment::Any));
            };
            match self.segments.get(p) {
                Some(Segment::Any) => {
                    backtrack = Some((p + 1, cursor));
                    p += 1;
                    continue;
                }
                Some(matcher) if matcher.matches(segment) => {
                    p += 1;
                    cursor = next;
                    continue;
                }
                _ => {}
            }
            let Some((after_any, absorbed)) = backtrack else {
                return false;
            };
            let Some((_, next)) = path.at(absorbed) else {
                return false;
            };
            backtrack = Some((after_any, next));
            p = after_any;
            cursor = next;
        }
    }

    /// The first segment if it is a literal: only requests with that first segment can match.
    fn first_literal(&self) -> Option<&str> {
        match self.segments.first() {
            Some(Segment::Literal(text)) => Some(text),
            _ => None,
        }
    }
}

fn compile_segment(segment: &str) -> Result<Segment, String> {
    match segment {
        "" => {
            return Err(
                "empty segment (`//` or a trailing '/'): a trailing slash on the request is already \
                 ignored, and \"/prefix/**\" matches everything below a prefix"
                    .to_owned(),
            );
        }
        "." | ".." => {
            return Err(format!(
                "`{segment}` segments never reach the policy: request paths are normalised first"
            ));
        }
        "*" => return Ok(Segment::One),
        "**" => return Ok(Segment::Any),
        _ if segment.contains("**") => {
            return Err(format!("`{segment}`: `**` must be a whole segment"));
        }
        _ => {}
    }
    let bytes = segment.as_bytes();
    for (at, c) in segment.char_indices() {
        match c {
            '?' | '[' | ']' | '{' | '}' => {
                return Err(format!(
                    "`{c}` is not supported: the only wildcards are `*` (within a segment) and `**` (whole segments)"
                ));
            }
            '\\' | ';' | '#' => {
                return Err(format!(
                    "`{c}` never appears in a normalised request path (such requests are refused)"
                ));
            }
            '%' => check_escape(bytes, at)?,
            c if !c.is_ascii_graphic() => {
                return Err(format!(
                    "{c:?} never appears in a normalised request path; percent-encode it with upper-case hex"
                ));
            }
            _ => {}
        }
    }
    if segment.contains('*') {
        let parts: Vec<Box<str>> = segment.split('*').map(Box::from).collect();
        Ok(Segment::Within(parts.into_boxed_slice()))
    } else {
        Ok(Segment::Literal(segment.into()))
    }
}

/// A pattern's escape must be spelled as normalisation spells it, or it could never match.
fn check_escape(bytes: &[u8], at: usize) -> Result<(), String> {
    let upper_hex = |b: Option<&u8>| match b {
        Some(&b @ b'0'..=b'9') => Some(b - b'0'),
        Some(&b @ b'A'..=b'F') => Some(b - b'A' + 10),
        _ => None,
    };
    let value = match (upper_hex(bytes.get(at + 1)), upper_hex(bytes.get(at + 2))) {
        (Some(hi), Some(lo)) => hi << 4 | lo,
        _ => {
            return Err(
                "a '%' must be followed by two upper-case hex digits, as in normalised request paths"
                    .to_owned(),
            );
        }
    };
    if value.is_ascii_alphanumeric() || matches!(value, b'-' | b'.' | b'_' | b'~') {
        return Err(format!(
            "write `{}` instead of `%{value:02X}`: request paths are normalised to the plain character",
            char::from(value)
        ));
    }
    if matches!(value, 0x00..=0x1F | 0x7F | b'/' | b'\\') {
        return Err(format!(
            "`%{value:02X}` never appears in a normalised request path (such requests are refused)"
        ));
    }
    Ok(())
}

/// Paths with at most this many segments (nearly all) are split once into an array on the
/// stack; longer ones are walked in place. 16 slices are 256 bytes.
const SHORT_PATH_SEGMENTS: usize = 16;

/// A request path viewed as segments without allocating. The leading '/' and one trailing
/// '/' are dropped first, so `/a/b/` and `/a/b` both have the segments `a`, `b`, and `/` has
/// none. A position names a segment: an index for a split path, a byte offset for a long one.
#[expect(
    clippy::large_enum_variant,
    reason = "it lives on the stack for one decision; boxing the array would allocate per request"
)]
enum Segments<'a> {
    /// A path without a leading '/', which no rule matches.
    NotAbsolute,
    Short {
        segments: [&'a str; SHORT_PATH_SEGMENTS],
        len: usize,
    },
    /// More than [`SHORT_PATH_SEGMENTS`] segments (so never empty), walked from byte offsets.
    Long(&'a str),
}

impl<'a> Segments<'a> {
    fn of(path: &'a str) -> Self {
        let Some(rest) = path.strip_prefix('/') else {
            return Segments::NotAbsolute;
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let mut segments = [""; SHORT_PATH_SEGMENTS];
        let mut len = 0;
        if !rest.is_empty() {
            for segment in rest.split('/') {
                let Some(slot) = segments.get_mut(len) else {
                    return Segments::Long(rest);
                };
                *slot = segment;
                len += 1;
            }
        }
        Segments::Short { segments, len }
    }

    /// The position of the first segment; `None` if the path is not absolute.
    fn start(&self) -> Option<usize> {
        match self {
            Segments::NotAbsolute => None,
            Segments::Short { .. } | Segments::Long(_) => Some(0),
        }
    }

    /// The segment at `position` and the position of the one after it; `None` past the end.
    fn at(&self, position: usize) -> Option<(&'a str, usize)> {
        match self {
            Segments::NotAbsolute => None,
            Segments::Short { segments, len } => segments[..*len]
                .get(position)
                .map(|&segment| (segment, position + 1)),
            Segments::Long(rest) => {
                let tail = rest.get(position..)?;
                let len = tail.find('/').unwrap_or(tail.len());
                Some((&tail[..len], position + len + 1))
            }
        }
    }

    fn first(&self) -> Option<&'a str> {
        self.at(self.start()?).map(|(segment, _)| segment)
    }
}

/// Rules bucketed by literal first segment. Each bucket holds, in file order, the rules with
/// that first segment and the rules whose first segment is not a literal; `rest` holds only
/// the latter, for requests whose first segment has no bucket.
#[derive(Debug)]
struct FirstSegmentIndex {
    /// Sorted, for binary search.
    keys: Box<[Box<str>]>,
    buckets: Box<[Box<[usize]>]>,
    rest: Box<[usize]>,
}

impl FirstSegmentIndex {
    /// `firsts`: each rule's literal first segment, in file order.
    fn build<'a>(firsts: impl Iterator<Item = Option<&'a str>>) -> Self {
        let firsts: Vec<Option<&str>> = firsts.collect();
        let mut keys: Vec<Box<str>> = firsts.iter().flatten().map(|&f| Box::from(f)).collect();
        keys.sort_unstable();
        keys.dedup();
        let bucket = |key: Option<&str>| -> Box<[usize]> {
            firsts
                .iter()
                .enumerate()
                .filter(|(_, first)| match first {
                    None => true,
                    Some(first) => Some(*first) == key,
                })
                .map(|(i, _)| i)
                .collect()
        };
        let buckets = keys.iter().map(|key| bucket(Some(key))).collect();
        FirstSegmentIndex {
            rest: bucket(None),
            buckets,
            keys: keys.into_boxed_slice(),
        }
    }

    fn candidates(&self, first: Option<&str>) -> &[usize] {
        first
            .and_then(|first| self.keys.binary_search_by(|key| (**key).cmp(first)).ok())
            .map_or(&self.rest, |i| &self.buckets[i])
    }
}

/// Interned role names and the inheritance closure of each.
#[derive(Debug)]
struct RoleTable {
    /// Bit `i` of a mask is `names[i]`.
    names: Box<[Box<str>]>,
    /// Indices into `names`, sorted by name, for lookup by binary search.
    by_name: Box<[usize]>,
    /// `closure[i]`: role `i` and every role it inherits, directly or not.
    closure: Box<[u128]>,
}

impl RoleTable {
    fn compile(spec: &PolicySpec, errors: &mut Vec<PolicyError>) -> RoleTable {
        // Interning order (declared, then inherited, then known elsewhere) is the display
        // order in `explain`.
        let mut index: BTreeMap<&str, usize> = BTreeMap::new();
        let mut names: Vec<&str> = Vec::new();
        let mut declared: BTreeSet<&str> = BTreeSet::new();
        let mut spec_edges = Vec::new();
        for role in &spec.roles {
            let key = format!("roles.{}", role.name);
            if let Err(message) = check_role_name(&role.name) {
                errors.push(PolicyError::new(key.clone(), message));
            }
            if !declared.insert(&role.name) {
                errors.push(PolicyError::new(key.clone(), "the role is declared twice"));
            }
            let child = intern(&role.name, &mut index, &mut names);
            for (j, parent) in role.inherits.iter().enumerate() {
                if let Err(message) = check_role_name(parent) {
                    errors.push(PolicyError::new(format!("{key}.inherits[{j}]"), message));
                }
                spec_edges.push((child, intern(parent, &mut index, &mut names)));
            }
        }
        for name in &spec.known_roles {
            intern(name, &mut index, &mut names);
        }
        let mut edges: Vec<Vec<usize>> = vec![Vec::new(); names.len()];
        for (child, parent) in spec_edges {
            edges[child].push(parent);
        }

        if names.len() > MAX_ROLES {
            errors.push(PolicyError::new(
                "roles",
                format!(
                    "{} distinct role names are used (in [roles], their inherits, the default roles \
                     and the admin role); at most {MAX_ROLES} are supported",
                    names.len()
                ),
            ));
        }
        for cycle in find_cycles(&edges) {
            let path: Vec<&str> = cycle.iter().map(|&i| names[i]).collect();
            errors.push(PolicyError::new(
                format!("roles.{}.inherits", path[0]),
                format!("inheritance cycle: {}", path.join(" → ")),
            ));
        }

        // Fixed point: each pass folds in the parents' closures; at most one pass per level
        // of the hierarchy, and it terminates even on a cycle (which is reported above).
        let mut closure: Vec<u128> = (0..names.len()).map(bit).collect();
        loop {
            let mut changed = false;
            for child in 0..names.len() {
                let merged = edges[child]
                    .iter()
                    .fold(closure[child], |acc, &parent| acc | closure[parent]);
                changed |= merged != closure[child];
                closure[child] = merged;
            }
            if !changed {
                break;
            }
        }

        let mut by_name: Vec<usize> = (0..names.len()).collect();
        by_name.sort_unstable_by_key(|&i| names[i]);
        RoleTable {
            names: names.iter().map(|&n| Box::from(n)).collect(),
            by_name: by_name.into_boxed_slice(),
            closure: closure.into_boxed_slice(),
        }
    }

    fn index_of(&self, name: &str) -> Option<usize> {
        self.by_name
            .binary_search_by(|&i| (*self.names[i]).cmp(name))
            .ok()
            .map(|at| self.by_name[at])
    }

    fn sorted_names(&self) -> String {
        if self.by_name.is_empty() {
            return "none".to_owned();
        }
        let names: Vec<&str> = self.by_name.iter().map(|&i| &*self.names[i]).collect();
        names.join(", ")
    }
}

/// The index of `name`, adding it if it is new.
fn intern<'s>(
    name: &'s str,
    index: &mut BTreeMap<&'s str, usize>,
    names: &mut Vec<&'s str>,
) -> usize {
    *index.entry(name).or_insert_with(|| {
        names.push(name);
        names.len() - 1
    })
}

/// Role names travel comma-separated in the roles header, so a comma, whitespace or control
/// character in one would split or corrupt it.
fn check_role_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a role name must not be empty".to_owned());
    }
    if name
        .chars()
        .any(|c| c == ',' || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "role name {name:?} must not contain ',', whitespace or control characters"
        ));
    }
    Ok(())
}

/// Every cycle reachable in the inheritance graph, each as the list of roles on it with the
/// first repeated at the end. Depth-first search: an edge back to a role still on the stack
/// closes a cycle.
fn find_cycles(edges: &[Vec<usize>]) -> Vec<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum State {
        New,
        OnStack,
        Done,
    }
    fn visit(
        node: usize,
        edges: &[Vec<usize>],
        state: &mut [State],
        stack: &mut Vec<usize>,
        cycles: &mut Vec<Vec<usize>>,
    ) {
        state[node] = State::OnStack;
        stack.push(node);
        for &next in &edges[node] {
            match state[next] {
                State::New => visit(next, edges, state, stack, cycles),
                State::OnStack => {
                    let from = stack.iter().position(|&n| n == next).unwrap_or(0);
                    let mut cycle = stack[from..].to_vec();
                    cycle.push(next);
                    cycles.push(cycle);
                }
                State::Done => {}
            }
        }
        stack.pop();
        state[node] = State::Done;
    }
    let mut state = vec![State::New; edges.len()];
    let mut stack = Vec::new();
    let mut cycles = Vec::new();
    for node in 0..edges.len() {
        if state[node] == State::New {
            visit(node, edges, &mut state, &mut stack, &mut cycles);
        }
    }
    cycles
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a policy from a compact description, one item per line:
    ///
    /// - `default <access>` (otherwise `deny`)
    /// - `route <path> [methods=A,B] [access=<a>] [roles=a,b]` (`<empty>` for an empty path)
    /// - `role <name> [<- parent,parent]`
    /// - `known a,b`
    fn spec(src: &str) -> PolicySpec {
        let mut spec = PolicySpec {
            default: "deny".to_owned(),
            ..PolicySpec::default()
        };
        let list = |s: &str| {
            s.split(',')
                .map(|w| if w == "<empty>" { "" } else { w }.to_owned())
                .collect::<Vec<_>>()
        };
        for line in src.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("default") => spec.default = words.next().unwrap_or_default().to_owned(),
                Some("route") => {
                    let path = words.next().unwrap_or_default();
                    let mut route = RouteSpec {
                        path: if path == "<empty>" {
                            String::new()
                        } else {
                            path.to_owned()
                        },
                        ..RouteSpec::default()
                    };
                    for word in words {
                        match word.split_once('=') {
                            Some(("methods", v)) => route.methods = list(v),
                            Some(("access", v)) => route.access = Some(v.to_owned()),
                            Some(("roles", v)) => route.roles = list(v),
                            Some(("mfa", v)) => route.mfa = v == "true",
                            _ => panic!("bad route word {word:?}"),
                        }
                    }
                    spec.routes.push(route);
                }
                Some("role") => {
                    let name = words.next().unwrap_or_default().to_owned();
                    let inherits = match (words.next(), words.next()) {
                        (Some("<-"), Some(parents)) => list(parents),
                        _ => Vec::new(),
                    };
                    spec.roles.push(RoleSpec { name, inherits });
                }
                Some("known") => spec.known_roles = list(words.next().unwrap_or_default()),
                Some("case_sensitive") => spec.case_sensitive = true,
                _ => panic!("bad line {line:?}"),
            }
        }
        spec
    }

    /// Compiles `src` and runs `request` (`METHOD /path` then `anon` or `as role,role`),
    /// describing the outcome as `#<rule> allow|401|403`, `default allow|401|403`, or, if the
    /// policy does not compile, `errors: key, key`.
    fn check(src: &str, request: &str, expect: &str) {
        let got = match Policy::compile(&spec(src)) {
            Err(errors) => {
                let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
                format!("errors: {}", keys.join(", "))
            }
            Ok(policy) => {
                let mut words = request.split_whitespace();
                let method = Method::from_bytes(words.next().unwrap_or_default().as_bytes())
                    .expect("test method");
                let path = words.next().expect("test path");
                let user = match (words.next(), words.next()) {
                    (Some("as"), Some(roles)) => Some(policy.roles_mask(roles.split(','))),
                    (Some("anon") | None, _) => None,
                    other => panic!("bad user {other:?}"),
                };
                let decision = policy.decide(&method, path);
                let (verdict, matched, _) = decision.verdict(user);
                let rule = matched
                    .rule
                    .map_or("default".to_owned(), |i| format!("#{i}"));
                let verdict = match verdict {
                    Verdict::Allow => "allow",
                    Verdict::Unauthenticated => "401",
                    Verdict::Forbidden => "403",
                };
                format!("{rule} {verdict}")
            }
        };
        assert_eq!(got, expect, "\npolicy:\n{src}\nrequest: {request}");
    }

    #[test]
    fn mfa_routes() {
        let src = "route /billing/** access=authenticated mfa=true\nroute /Shop/** roles=r mfa=true\nrole r\nroute /** access=authenticated";
        let policy = Policy::compile(&spec(src)).unwrap();
        let mfa_rule = |path: &str| policy.decide(&Method::GET, path).mfa().and_then(|m| m.rule);
        assert_eq!(mfa_rule("/billing/x"), Some(0));
        assert_eq!(mfa_rule("/other"), None);
        // Another spelling that reaches the same handler needs the second factor too.
        assert_eq!(mfa_rule("/BILLING/x"), Some(0));
        assert_eq!(mfa_rule("/shop/x"), Some(1));
        assert!(
            policy
                .describe_match(policy.decide(&Method::GET, "/billing/x").exact)
                .ends_with("access = authenticated, mfa = true")
        );
        // A rule that needs no token, or admits nobody, cannot ask for a second factor.
        check(
            "route /a access=public mfa=true",
            "GET /a anon",
            "errors: routes[0].mfa",
        );
        check(
            "route /a access=deny mfa=true",
            "GET /a anon",
            "errors: routes[0].mfa",
        );
        check(
            "route /a access=authenticated mfa=true",
            "GET /a anon",
            "#0 401",
        );
    }

    #[test]
    fn globs() {
        // Longer than `SHORT_PATH_SEGMENTS`, so walked in place rather than split.
        let deep = format!("/a{}/z", "/m".repeat(20));
        let deep_slash = format!("{deep}/");
        let deep_pattern = format!("/a{}/*", "/m".repeat(20));
        let cases: &[(&str, &str, bool)] = &[
            ("/", "/", true),
            ("/", "/a", false),
            ("/a", "/a", true),
            ("/a", "/a/", true),
            ("/a", "/A", false),
            ("/a", "/ab", false),
            ("/a", "/a/b", false),
            ("/a/b", "/a/b/", true),
            ("/a/*", "/a/x", true),
            ("/a/*", "/a/x/", true),
            ("/a/*", "/a", false),
            ("/a/*", "/a/", false),
            ("/a/*", "/a/x/y", false),
            ("/*/b", "/x/b", true),
            ("/*/b", "/b", false),
            ("/*", "/", false),
            ("/api/users/**", "/api/users", true),
            ("/api/users/**", "/api/users/", true),
            ("/api/users/**", "/api/users/1", true),
            ("/api/users/**", "/api/users/1/x", true),
            ("/api/users/**", "/api/usersx", false),
            ("/api/users/**", "/api", false),
            ("/**", "/", true),
            ("/**", "/anything/at/all", true),
            ("/**/x", "/x", true),
            ("/**/x", "/a/b/x", true),
            ("/**/x", "/a/b/x/y", false),
            ("/a/**/b/**/c", "/a/b/c", true),
            ("/a/**/b/**/c", "/a/1/b/2/3/c", true),
            ("/a/**/b/**/c", "/a/1/2/c", false),
            ("/a/**/*", "/a", false),
            ("/a/**/*", "/a/x", true),
            ("/a/**/*/z", "/a/b/z/z", true),
            ("/a/*/**", "/a/x", true),
            ("/api/v*/x", "/api/v1/x", true),
            ("/api/v*/x", "/api/v/x", true),
            ("/api/v*/x", "/api/w1/x", false),
            ("/files/*.json", "/files/a.json", true),
            ("/files/*.json", "/files/a.json/", true),
            ("/files/*.json", "/files/a.jsonx", false),
            ("/files/*.json", "/files/dir/a.json", false),
            ("/a*b*c", "/abc", true),
            ("/a*b*c", "/aXbYc", true),
            ("/a*b*c", "/acb", false),
            ("/a*a", "/a", false),
            ("/a*a", "/aa", true),
            ("/caf%C3%A9", "/caf%C3%A9", true),
            ("/a", "a", false),
            ("/**", "*", false),
            ("/**/z", &deep, true),
            ("/a/**/z", &deep_slash, true),
            ("/a/**/m/z", &deep, true),
            ("/a/**/m/m", &deep, false),
            ("/*/**", &deep, true),
            ("/a/*", &deep, false),
            (&deep_pattern, &deep, true),
            (&deep_pattern, &deep_slash, true),
            (&deep, &deep, true),
            (&deep, &deep_pattern, false),
        ];
        for &(pattern, path, matches) in cases {
            let expect = if matches { "#0 allow" } else { "default 403" };
            check(
                &format!("route {pattern} access=public"),
                &format!("GET {path} anon"),
                expect,
            );
            // Walking the path in place must agree with splitting it.
            let rest = path
                .strip_prefix('/')
                .map(|r| r.strip_suffix('/').unwrap_or(r));
            if let (Ok(glob), Some(rest)) = (Glob::compile(pattern), rest.filter(|r| !r.is_empty()))
            {
                assert_eq!(
                    glob.matches(&Segments::Long(rest)),
                    matches,
                    "{pattern} on {path}"
                );
            }
        }
    }

    #[test]
    fn invalid_globs() {
        for pattern in [
            "<empty>", "api/**", "/a/", "/a//b", "/a/./b", "/a/..", "/a/***", "/a/**x", "/a/x**",
            "/a?", "/a/[ab]", "/{a,b}", "/a;b", "/a\\b", "/a#", "/café", "/%61", "/%2F", "/%3b",
            "/%4", "/a%0A", "/a%1F", "/a%7F",
        ] {
            check(
                &format!("route {pattern} access=public"),
                "GET / anon",
                "errors: routes[0].path",
            );
        }
    }

    /// Case variants never get a laxer rule than the spelling a case-insensitive upstream
    /// routes them as, and on an exact upstream they still need their own rule.
    #[test]
    fn case_variants_get_the_stricter_verdict() {
        let src = "
            role admin
            route /api/admin/** roles=admin
            route /api/items/** methods=DELETE roles=admin
            route /api/** access=authenticated
            route /public/** access=public
            route /Shop/** access=public
            known admin,user
        ";
        let cases = [
            ("GET /api/admin as user", "#0 403"),
            ("GET /api/ADMIN as user", "#0 403"),
            // No exact rule for `/Api`: the default denies it anyway (a tie reports the exact
            // spelling's match).
            ("GET /Api/Admin as user", "default 403"),
            ("GET /API/ADMIN/users as user", "default 403"),
            ("GET /api/ADMIN anon", "#2 401"),
            ("GET /api/ADMIN as admin", "#2 allow"),
            // Unicode look-alikes that case-insensitive matchers equate with `i` and `k`.
            ("GET /api/adm%C4%B1n as user", "#0 403"),
            ("GET /api/adm%C4%B0n as user", "#0 403"),
            ("DELETE /api/ITEMS/1 as user", "#1 403"),
            ("DELETE /api/items/1 as admin", "#1 allow"),
            ("GET /api/Items/1 as user", "#2 allow"),
            // Folding never loosens: /PUBLIC is public to a case-insensitive upstream, but
            // an exact upstream would route it elsewhere, so the default applies too.
            ("GET /PUBLIC/x anon", "default 403"),
            ("GET /public/x anon", "#3 allow"),
            // Patterns fold too: a mixed-case pattern matches its folded spellings.
            ("GET /shop/x anon", "default 403"),
            ("GET /Shop/x anon", "#4 allow"),
        ];
        for (request, expect) in cases {
            check(src, request, expect);
        }
        // Exact only: `/api/ADMIN` is another resource to an exact upstream.
        let exact = format!("{src}\n case_sensitive");
        check(&exact, "GET /api/ADMIN as user", "#2 allow");
        check(&exact, "GET /PUBLIC/x anon", "default 403");
    }

    /// An earlier mixed-case pattern must not shadow a later, stricter rule for the
    /// lower-case spelling a case-insensitive upstream serves with the same handler.
    #[test]
    fn a_mixed_case_pattern_does_not_shadow_a_stricter_rule() {
        let src = "
            role admin
            route /Docs/** access=public
            route /docs/internal/** roles=admin
            route /docs/** access=public
            known admin
        ";
        check(src, "GET /docs/internal/x anon", "#1 401");
        check(src, "GET /Docs/internal/x anon", "#1 401");
        // No exact rule: the default (deny) is stricter still.
        check(src, "GET /DOCS/INTERNAL/x anon", "default 403");
        check(src, "GET /Docs/internal/x as admin", "#0 allow");
        check(src, "GET /Docs/readme anon", "#0 allow");
    }

    /// Rails' `(.:format)` and Spring's suffix patterns route `/api/admin.json` to the
    /// `/api/admin` handler.
    #[test]
    fn a_format_suffix_gets_the_bare_paths_rule_too() {
        let src = "
            role admin
            route /api/admin roles=admin
            route /api/** access=authenticated
            route /static/** access=public
            known admin,user
        ";
        check(src, "GET /api/admin.json as user", "#0 403");
        check(src, "GET /api/admin.tar.gz as user", "#0 403");
        check(src, "GET /api/ADMIN.json as user", "#0 403");
        check(src, "GET /api/admin.json as admin", "#1 allow");
        check(src, "GET /api/items.json as user", "#1 allow");
        check(src, "GET /static/app.js anon", "#2 allow");
    }

    #[test]
    fn the_stricter_spelling_decides() {
        let mut spec = spec(
            "
            role admin
            route /api/admin/** roles=admin
            route /api/** access=authenticated
        ",
        );
        let policy = Policy::compile(&spec).expect("compiles");
        let user = Some(policy.roles_mask(["user"]));
        let decision = policy.decide(&Method::GET, "/api/ADMIN");
        assert_eq!(decision.exact.rule, Some(1));
        let others: Vec<_> = decision.others().collect();
        assert_eq!(others.len(), 1);
        assert_eq!((others[0].0.rule, others[0].1), (Some(0), Form::Folded));
        let (verdict, matched, form) = decision.verdict(user);
        assert_eq!(
            (verdict, matched.rule, form),
            (Verdict::Forbidden, Some(0), Form::Folded)
        );
        spec.case_sensitive = true;
        let policy = Policy::compile(&spec).expect("compiles");
        let decision = policy.decide(&Method::GET, "/api/ADMIN");
        assert_eq!(decision.others().count(), 0);
        assert_eq!(decision.verdict(user).0, Verdict::Allow);
    }

    #[test]
    fn methods() {
        let src = "
            route /a methods=get access=public
            route /b methods=POST,PURGE access=public
            route /c access=public
        ";
        for (request, expect) in [
            ("GET /a", "#0 allow"),
            ("HEAD /a", "#0 allow"),
            ("POST /a", "default 403"),
            ("POST /b", "#1 allow"),
            ("PURGE /b", "#1 allow"),
            ("GET /b", "default 403"),
            ("HEAD /b", "default 403"),
            ("purge /b", "default 403"),
            ("PURGE /c", "#2 allow"),
            ("DELETE /c", "#2 allow"),
        ] {
            check(src, request, expect);
        }
        check(
            "route /a methods=GE@T,*,POST access=public",
            "GET /",
            "errors: routes[0].methods[0], routes[0].methods[1]",
        );
    }

    #[test]
    fn first_match_wins_and_default_applies() {
        let src = "
            default authenticated
            route /api/admin/** roles=admin
            route /api/** methods=GET access=public
            route /api/** access=deny
            role admin
        ";
        for (request, expect) in [
            ("GET /api/admin/x anon", "#0 401"),
            ("GET /api/admin/x as admin", "#0 allow"),
            ("GET /api/admin as reader", "#0 403"),
            ("GET /api/users anon", "#1 allow"),
            ("POST /api/users anon", "#2 403"),
            ("POST /api/users as admin", "#2 403"),
            ("GET /other anon", "default 401"),
            ("GET /other as nobody", "default allow"),
            ("GET / anon", "default 401"),
        ] {
            check(src, request, expect);
        }
        // Rules with a wildcard first segment interleave with bucketed ones in file order.
        let src = "
            route /a/x access=deny
            route /*/x access=public
            route /a/** access=authenticated
            route /** access=deny
        ";
        for (request, expect) in [
            ("GET /a/x anon", "#0 403"),
            ("GET /b/x anon", "#1 allow"),
            ("GET /a/y anon", "#2 401"),
            ("GET /b/y anon", "#3 403"),
            ("GET / anon", "#3 403"),
        ] {
            check(src, request, expect);
        }
        check("default public", "GET /x anon", "default allow");
        check("default deny", "GET /x as admin", "default 403");
    }

    #[test]
    fn inheritance() {
        let src = "
            route /read roles=reader
            route /create roles=creator
            route /admin roles=admin
            route /either roles=creator,auditor
            role admin <- creator
            role creator <- reader
            known reader,auditor
        ";
        for (request, expect) in [
            ("GET /read as admin", "#0 allow"),
            ("GET /read as creator", "#0 allow"),
            ("GET /read as reader", "#0 allow"),
            ("GET /create as admin", "#1 allow"),
            ("GET /create as reader", "#1 403"),
            ("GET /admin as creator", "#2 403"),
            ("GET /admin as reader,creator", "#2 403"),
            ("GET /admin as admin", "#2 allow"),
            ("GET /admin as Admin", "#2 403"),
            ("GET /admin as unknown,other", "#2 403"),
            ("GET /admin anon", "#2 401"),
            ("GET /either as auditor", "#3 allow"),
            ("GET /either as admin", "#3 allow"),
            ("GET /either as reader", "#3 403"),
        ] {
            check(src, request, expect);
        }
        // Roles named only as a parent are known; unknown ones in routes are errors.
        check(
            "route /x roles=base\nrole a <- base",
            "GET /x as a",
            "#0 allow",
        );
        check(
            "route /x roles=nope\nrole a",
            "GET /x",
            "errors: routes[0].roles[0]",
        );
    }

    #[test]
    fn cycles() {
        check("role a <- a", "GET /", "errors: roles.a.inherits");
        check(
            "role a <- b\nrole b <- c\nrole c <- a",
            "GET /",
            "errors: roles.a.inherits",
        );
        check(
            "role a <- b\nrole b <- a\nrole c <- d\nrole d <- c,e",
            "GET /",
            "errors: roles.a.inherits, roles.c.inherits",
        );
        // A diamond is not a cycle.
        check(
            "route /x roles=base\nrole top <- l,r\nrole l <- base\nrole r <- base",
            "GET /x as top",
            "#0 allow",
        );
    }

    #[test]
    fn every_error_reported_at_once() {
        let src = "
            default maybe
            route nope access=public
            route /a methods=G@T access=open
            route /b access=public roles=a
            route /c
            route /d roles=a,ghost
            route /e/** access=deny
            role a <- a
            role a
            role x,y
            role b <- <empty>
        ";
        check(
            src,
            "GET /",
            "errors: policy.default, roles.a, roles.x,y, roles.b.inherits[0], \
             roles.a.inherits, routes[0].path, routes[1].methods[0], routes[1].access, \
             routes[2], routes[3], routes[4].roles[1]",
        );
    }

    #[test]
    fn too_many_roles() {
        let names: Vec<String> = (0..129).map(|i| format!("r{i}")).collect();
        check(
            &format!("known {}", names.join(",")),
            "GET /",
            "errors: roles",
        );
        check(
            &format!("route /x roles=r127\nknown {}", names[..128].join(",")),
            "GET /x as r127",
            "#0 allow",
        );
    }

    #[test]
    fn verdicts() {
        let user = Some(RoleMask(0b01));
        let cases = [
            (Access::Public, None, Verdict::Allow),
            (Access::Public, user, Verdict::Allow),
            (Access::Authenticated, None, Verdict::Unauthenticated),
            (Access::Authenticated, Some(RoleMask::EMPTY), Verdict::Allow),
            (Access::Deny, None, Verdict::Forbidden),
            (Access::Deny, user, Verdict::Forbidden),
            (
                Access::Roles(RoleMask(0b11)),
                None,
                Verdict::Unauthenticated,
            ),
            (Access::Roles(RoleMask(0b11)), user, Verdict::Allow),
            (Access::Roles(RoleMask(0b10)), user, Verdict::Forbidden),
            (
                Access::Roles(RoleMask(0b10)),
                Some(RoleMask::EMPTY),
                Verdict::Forbidden,
            ),
        ];
        for (access, user, verdict) in cases {
            assert_eq!(access.allows(user), verdict, "{access:?} for {user:?}");
        }
    }

    #[test]
    fn error_messages_name_the_problem() {
        let errors = Policy::compile(&spec(
            "route /x roles=ghost\nrole a <- b\nrole b <- a\nknown reader",
        ))
        .expect_err("invalid");
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "roles.a.inherits: inheritance cycle: a → b → a",
                "routes[0].roles[0]: unknown role `ghost`: declare it under [roles] (known roles: a, b, reader)",
            ]
        );
    }

    #[test]
    fn descriptions_and_labels() {
        let policy = Policy::compile(&spec(
            "
            route /api/admin/** methods=GET,DELETE roles=admin
            route /public/** access=public
            route /gone access=deny
            role admin <- reader
            ",
        ))
        .expect("valid");
        let decision = policy.decide(&Method::HEAD, "/api/admin/users");
        assert_eq!(
            policy.describe_match(decision.exact),
            "routes[0] (/api/admin/**) matched: path = \"/api/admin/**\", methods = GET, HEAD (implied by GET), DELETE, roles = any of [admin]"
        );
        let decision = policy.decide(&Method::POST, "/elsewhere");
        assert_eq!(
            policy.describe_match(decision.exact),
            "no rule matched; default = deny"
        );
        let decision = policy.decide(&Method::GET, "/public/x");
        assert!(
            policy
                .describe_match(decision.exact)
                .ends_with("methods = all, access = public")
        );
        let mask = policy.roles_mask(["admin", "stranger"]);
        assert_eq!(policy.role_names(mask), "admin, reader");
        assert!(policy.knows_role("reader") && !policy.knows_role("stranger"));

        assert_eq!(policy.rule_label(Some(0)), "/api/admin/**");
        assert_eq!(policy.rule_label(Some(2)), "/gone");
        assert_eq!(policy.rule_label(None), "default");
        assert_eq!(policy.rule_label(Some(99)), "default");
    }

    #[test]
    fn rules_get_unique_readable_labels() {
        let route = |name: Option<&str>, path: &str, methods: &[&str]| RouteSpec {
            name: name.map(str::to_owned),
            path: path.to_owned(),
            methods: methods.iter().map(|m| (*m).to_owned()).collect(),
            access: Some("public".to_owned()),
            ..RouteSpec::default()
        };
        let spec = PolicySpec {
            routes: vec![
                route(None, "/api/**", &["post", "PUT"]),
                route(None, "/api/**", &["GET"]),
                route(None, "/api/**", &[]),
                route(Some("health"), "/healthz", &[]),
                route(None, "/x", &["GET"]),
                route(None, "/x", &["GET"]),
                route(None, "/once", &["GET"]),
            ],
            default: "deny".to_owned(),
            ..PolicySpec::default()
        };
        let policy = Policy::compile(&spec).expect("valid");
        let labels: Vec<&str> = (0..7).map(|i| policy.rule_label(Some(i))).collect();
        assert_eq!(
            labels,
            [
                "POST,PUT /api/**",
                "GET /api/**",
                "/api/**",
                "health",
                "/x (routes[4])",
                "/x (routes[5])",
                "/once",
            ]
        );

        let mut bad = spec.clone();
        bad.routes[1].name = Some("health".to_owned());
        bad.routes[2].name = Some("default".to_owned());
        bad.routes[4].name = Some("auth:login".to_owned());
        bad.routes[5].name = Some("has space".to_owned());
        bad.routes[6].name = Some(String::new());
        let errors: Vec<String> = Policy::compile(&bad)
            .expect_err("invalid")
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            errors,
            [
                "routes[2].name: `default` is reserved: `default` labels the policy default and `auth:` the auth endpoints",
                "routes[3].name: `health` is already the name of routes[1]; names must be unique",
                "routes[4].name: `auth:login` is reserved: `default` labels the policy default and `auth:` the auth endpoints",
                "routes[5].name: `has space` is not a route name: use 1 to 64 letters, digits, `-`, `_`, `.`, `/` or `:`",
                "routes[6].name: `` is not a route name: use 1 to 64 letters, digits, `-`, `_`, `.`, `/` or `:`",
            ]
        );
    }
}
