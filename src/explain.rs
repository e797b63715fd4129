//! `gatehouse policy explain` and `gatehouse policy test`: how the running proxy would treat a
//! request, without running it.
//!
//! The request is built as the server would receive it (method and target as typed, an
//! HTTP/1.1 `Host`, the token as a bearer `Authorization`) and decided by the gate's own
//! pure half ([`crate::decide`]): the same refusals, normalisation, auth prefix, rules,
//! order of checks and verdicts. So explain says REFUSED for `get /api/x` (the server
//! answers 400 to a lower-case method), SERVED for `GET /auth/login`, and decides
//! `/api/x?token=abc` on `/api/x` while refusing `/api/x?_method=DELETE` as the server does.
//!
//! What only a running server knows is left out and said so: revocations (the store),
//! rate limits (the counters), and the upstream's own answer.
//!
//! Outcomes and their exit codes: `allow` 0 (forwarded upstream), `served` 0 (answered by
//! gatehouse's auth endpoints), `deny` 1 (401 or 403), `refused` 2 (400 or 414 before
//! anything is decided). An explanation that cannot be given (a token but no signing key)
//! is an [`ExplainError`], exit 3.

use std::fmt::Write as _;

use http::{HeaderMap, HeaderValue, Method, Uri, Version, header};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::decide::{self, Routing};
use crate::error::{Error, TokenRefusal};
use crate::hygiene::Head;
#[cfg(test)]
use crate::token::TokenSettings;
use crate::token::{Claims, Tokens};

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// No `Authorization` header.
    Anonymous,
    /// A caller whose verified token carries these roles (and a verified address); nothing
    /// is verified, so no key is needed.
    Roles(Vec<String>),
    /// This access token (with or without `Bearer `), verified as the proxy verifies it,
    /// revocations aside; needs `tokens.secret`.
    Token(String),
}

/// The outcome, as scripts read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Forwarded to the upstream.
    Allow,
    /// Answered by gatehouse's own auth endpoints, never forwarded.
    Served,
    /// 401 or 403.
    Deny,
    /// 400 or 414 before anything was decided.
    Refused,
}

impl Outcome {
    /// `policy explain`'s exit code.
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Allow | Outcome::Served => 0,
            Outcome::Deny => 1,
            Outcome::Refused => 2,
        }
    }

    fn word(self) -> &'static str {
        match self {
            Outcome::Allow => "ALLOW",
            Outcome::Served => "SERVED",
            Outcome::Deny => "DENY",
            Outcome::Refused => "REFUSED",
        }
    }
}

/// Why no explanation could be given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExplainError(pub String);

impl std::fmt::Display for ExplainError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// How the proxy would treat one request; `--json` prints it as it is.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    pub method: String,
    /// The request target as given, query included.
    pub target: String,
    /// The normalised path the policy decides on and the proxy forwards; absent when the
    /// request was refused first.
    pub path: Option<String>,
    pub outcome: Outcome,
    /// The status gatehouse answers itself; absent when the upstream (allow) or the auth
    /// endpoint (served) answers.
    pub status: Option<u16>,
    /// The error code of that answer (`TOKEN_MISSING`, `FORBIDDEN`, `INVALID_REQUEST`…).
    pub code: Option<String>,
    /// One sentence saying why.
    pub reason: String,
    /// The `route` label the request counts under in metrics and access logs.
    pub route: String,
    /// The rule that decided (`routes[i]`); absent for the default and the auth endpoints.
    pub rule: Option<usize>,
    /// Each rule involved, one line each: the exact path's, then other spellings'.
    pub rules: Vec<String>,
    /// Which spelling's rule gave the verdict, when several were involved.
    pub decided_by: Option<String>,
    /// The caller as the policy sees it.
    pub user: String,
    /// What the running server checks that an explanation cannot.
    pub notes: Vec<String>,
}

/// Decides `method target` for `identity` as the proxy would, at `now` (Unix seconds, for a
/// token's expiry).
pub fn explain(
    config: &Config,
    method: &str,
    target: &str,
    identity: &Identity,
    now: u64,
) -> Result<Explanation, ExplainError> {
    let tokens = match identity {
        Identity::Token(_) => match config.tokens.settings() {
            Some(settings) => Some(Tokens::new(settings)),
            None => {
                return Err(ExplainError(
                    "--token needs the signing key to verify the token: set tokens.secret in the \
                     file or GATEHOUSE_TOKENS_SECRET under HS256, or make the \
                     [[tokens.keys]] files readable (or use --roles to decide for given \
                     roles without verifying anything)"
                        .into(),
                ));
            }
        },
        _ => None,
    };
    let mut out = Explanation {
        method: method.to_string(),
        target: target.to_string(),
        path: None,
        outcome: Outcome::Refused,
        status: Some(400),
        code: None,
        reason: String::new(),
        route: "default".into(),
        rule: None,
        rules: Vec::new(),
        decided_by: None,
        user: describe_identity(config, identity),
        notes: Vec::new(),
    };
    // The request line as the server parses it: hyper answers 400 (with no body of ours)
    // to a method that is not an HTTP token and to a target that is not a URI.
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        out.reason =
            format!("`{method}` is not an HTTP method; the server refuses the request line");
        return Ok(out);
    };
    let Ok(uri) = target.parse::<Uri>() else {
        out.reason =
            format!("`{target}` is not a request target; the server refuses the request line");
        return Ok(out);
    };
    let mut headers = HeaderMap::new();
    // A well-formed HTTP/1.1 request has exactly one Host; an absolute-form target names it.
    let host = uri.authority().map_or("gatehouse.invalid", |a| a.as_str());
    if let Ok(host) = HeaderValue::from_str(host) {
        headers.insert(header::HOST, host);
    }
    if let Identity::Token(token) = identity {
        let token = token.strip_prefix("Bearer ").unwrap_or(token);
        match HeaderValue::from_str(&format!("Bearer {token}")) {
            Ok(value) => {
                headers.insert(header::AUTHORIZATION, value);
            }
            Err(_) => return Err(ExplainError("--token is not a valid header value".into())),
        }
    }
    let head = Head {
        method: &method,
        version: Version::HTTP_11,
        headers: &headers,
    };
    let (path, decision) = match decide::route(config, head, &uri) {
        Routing::Refused(error) => {
            refusal(&mut out, &error);
            return Ok(out);
        }
        Routing::Auth { path, route } => {
            out.path = Some(path.into_owned());
            out.outcome = Outcome::Served;
            out.status = None;
            out.route = route.auth_label().unwrap_or_default();
            out.reason = if route == crate::metrics::Route::AUTH_OTHER {
                out.status = Some(404);
                out.code = Some("NOT_FOUND".into());
                format!(
                    "under auth.prefix {} but no endpoint: gatehouse answers 404 itself, \
                     never forwarded",
                    config.auth.prefix
                )
            } else {
                format!(
                    "served by gatehouse itself (under auth.prefix {}), never forwarded; the \
                     endpoint answers with its own checks",
                    config.auth.prefix
                )
            };
            return Ok(out);
        }
        Routing::Proxy { path, decision } => (path, decision),
    };
    out.path = Some(path.into_owned());
    let policy = &config.policy;
    out.rules.push(policy.describe_match(decision.exact));
    for (matched, form) in decision.others() {
        out.rules.push(format!(
            "as the {}: {}",
            form.label(),
            policy.describe_match(matched)
        ));
    }
    let authorised = decide::authorise(config, &decision, || match identity {
        Identity::Anonymous => Ok(None),
        Identity::Roles(roles) => Ok(Some(std::sync::Arc::new(claims_with(roles)))),
        Identity::Token(_) => {
            let value = headers.get(header::AUTHORIZATION);
            let verified = value
                .ok_or(crate::token::TokenError::Invalid("malformed"))
                .and_then(crate::token::bearer)
                .and_then(|t| match &tokens {
                    Some(tokens) => tokens.verify(t, now),
                    None => Err(crate::token::TokenError::Invalid("key")),
                });
            verified
                .map(|claims| Some(std::sync::Arc::new(claims)))
                .map_err(|e| Error::Token(crate::guard::token_refusal(e)))
        }
    });
    out.rule = authorised.rule;
    out.route = policy.rule_label(authorised.rule).to_string();
    if decision.others().next().is_some() {
        let mask = authorised
            .claims
            .as_ref()
            .map(|c| policy.roles_mask(c.roles.iter().map(String::as_str)));
        out.decided_by = Some(decision.verdict(mask).2.label().to_string());
    }
    if let Some(claims) = &authorised.claims
        && matches!(identity, Identity::Token(_))
    {
        out.user = format!(
            "token of user {:?} with roles [{}]{}",
            claims.sub,
            claims.roles.join(", "),
            effective_roles(config, &claims.roles)
        );
        out.notes.push(
            "revocations are not checked: a revoked token is refused 401 by the running server"
                .into(),
        );
    }
    if config.rate_limits.proxy.is_some()
        || authorised.rule.is_some_and(|i| {
            config
                .rate_limits
                .routes
                .get(i)
                .is_some_and(Option::is_some)
        })
    {
        out.notes
            .push("rate limits apply: over them the server answers 429".into());
    }
    match authorised.result {
        Ok(()) => {
            out.outcome = Outcome::Allow;
            out.status = None;
            out.reason = "forwarded upstream with the identity headers".into();
        }
        Err(error) => {
            out.outcome = Outcome::Deny;
            out.status = Some(error.status().as_u16());
            out.code = Some(error.code().to_string());
            out.reason = match &error {
                Error::Token(TokenRefusal::Missing) => {
                    "a valid access token is required".to_string()
                }
                Error::Forbidden if decision.denial().is_some_and(|d| d.rule.is_none()) => {
                    "no rule matches and the default denies everyone, with or without a token"
                        .to_string()
                }
                Error::Forbidden if decision.denial().is_some() => {
                    "the rule denies everyone, with or without a token".to_string()
                }
                Error::Forbidden => "the caller holds none of the required roles".to_string(),
                other => other.message().into_owned(),
            };
        }
    }
    Ok(out)
}

/// A refusal before anything was decided.
fn refusal(out: &mut Explanation, error: &Error) {
    out.outcome = Outcome::Refused;
    out.status = Some(error.status().as_u16());
    out.code = Some(error.code().to_string());
    out.reason = error.message().into_owned();
    out.route = "default".into();
}

/// Claims standing in for a verified token with `roles` and a verified address.
fn claims_with(roles: &[String]) -> Claims {
    Claims {
        sub: String::new(),
        email: String::new(),
        roles: roles.to_vec(),
        email_verified: true,
        iss: String::new(),
        aud: String::new(),
        iat: 0,
        nbf: 0,
        exp: 0,
        jti: String::new(),
        sid: String::new(),
        token_use: String::new(),
        // A password login: an `mfa = true` route refuses it, as the proxy would.
        amr: vec![crate::token::AMR_PWD.to_owned()],
    }
}

fn describe_identity(config: &Config, identity: &Identity) -> String {
    match identity {
        Identity::Anonymous => "anonymous (no token)".into(),
        Identity::Roles(roles) => format!(
            "roles [{}] (as given, nothing verified; a password login: amr [pwd], so `mfa = true` routes refuse it){}",
            roles.join(", "),
            effective_roles(config, roles)
        ),
        Identity::Token(_) => "a token that did not verify".into(),
    }
}

/// `; effective roles after inheritance: [...]`, and the names the policy does not know.
fn effective_roles(config: &Config, roles: &[String]) -> String {
    let policy = &config.policy;
    let mask = policy.roles_mask(roles.iter().map(String::as_str));
    let mut out = format!(
        "; effective roles after inheritance: [{}]",
        policy.role_names(mask)
    );
    let unknown: Vec<&str> = roles
        .iter()
        .map(String::as_str)
        .filter(|r| !policy.knows_role(r))
        .collect();
    if !unknown.is_empty() {
        let _ = write!(
            out,
            "; not known to the policy, so granting nothing: [{}]",
            unknown.join(", ")
        );
    }
    out
}

impl Explanation {
    /// The text `policy explain` prints.
    pub fn text(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = writeln!(out, "request: {} {}", self.method, self.target);
        if let Some(path) = &self.path {
            let raw = self.target.split('?').next().unwrap_or_default();
            if path != raw {
                let _ = writeln!(out, "path:    {path} (normalised from {raw})");
            } else {
                let _ = writeln!(out, "path:    {path}");
            }
        }
        for (i, rule) in self.rules.iter().enumerate() {
            let _ = writeln!(
                out,
                "{}{rule}",
                if i == 0 { "rule:    " } else { "also:    " }
            );
        }
        if self.rules.len() > 1 {
            let _ = writeln!(
                out,
                "         (upstreams route these spellings to the same handler; the strictest verdict applies)"
            );
        }
        if self.outcome != Outcome::Refused && self.outcome != Outcome::Served {
            let _ = writeln!(out, "user:    {}", self.user);
        }
        if let Some(form) = &self.decided_by {
            let _ = writeln!(out, "decided: by the {form}");
        }
        let status = match (&self.status, &self.code) {
            (Some(status), Some(code)) => format!(" {status} {code}"),
            (Some(status), None) => format!(" {status}"),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "verdict: {}{status}: {} (route label {:?})",
            self.outcome.word(),
            self.reason,
            self.route
        );
        for note in &self.notes {
            let _ = writeln!(out, "note:    {note}");
        }
        out
    }
}

/// One case of a `policy test` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub method: String,
    /// The request target, query allowed.
    pub path: String,
    /// The caller's roles; omit (and omit `token`) for an anonymous caller.
    #[serde(default)]
    pub roles: Option<Vec<String>>,
    /// An access token to verify instead of `roles`.
    #[serde(default)]
    pub token: Option<String>,
    /// `allow`, `served`, `deny` or `refused`.
    pub expect: Outcome,
    /// The status of a deny or refusal (401, 403, 400, 414), checked when given.
    #[serde(default)]
    pub status: Option<u16>,
}

/// A `policy test` file: `[[case]]` tables.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Table {
    #[serde(default)]
    pub case: Vec<Case>,
}

/// What `policy test` found: one line per mismatch, and the count of cases run.
#[derive(Debug, Default)]
pub struct TestReport {
    pub cases: usize,
    pub mismatches: Vec<String>,
}

/// Runs every case of a `policy test` table; a case that cannot be explained (a token and
/// no key, roles and a token together) counts as a mismatch with the reason.
pub fn run_table(config: &Config, table: &Table, now: u64) -> TestReport {
    let mut report = TestReport {
        cases: table.case.len(),
        mismatches: Vec::new(),
    };
    for (i, case) in table.case.iter().enumerate() {
        let who = match (&case.roles, &case.token) {
            (Some(roles), None) => format!(" as [{}]", roles.join(", ")),
            (None, Some(_)) => " with its token".to_string(),
            _ => String::new(),
        };
        let name = format!("case[{i}] {} {}{who}", case.method, case.path);
        let identity = match (&case.roles, &case.token) {
            (Some(_), Some(_)) => {
                report
                    .mismatches
                    .push(format!("{name}: give roles or token, not both"));
                continue;
            }
            (Some(roles), None) => Identity::Roles(roles.clone()),
            (None, Some(token)) => Identity::Token(token.clone()),
            (None, None) => Identity::Anonymous,
        };
        let got = match explain(config, &case.method, &case.path, &identity, now) {
            Ok(got) => got,
            Err(e) => {
                report.mismatches.push(format!("{name}: {e}"));
                continue;
            }
        };
        let status_differs = case.status.is_some() && case.status != got.status;
        if got.outcome != case.expect || status_differs {
            let expected = match case.status {
                Some(status) => format!("{:?} {status}", case.expect),
                None => format!("{:?}", case.expect),
            };
            let status = got.status.map(|s| format!(" {s}")).unwrap_or_default();
            report.mismatches.push(format!(
                "{name}: expected {}, got {}{status}: {} (route {:?})",
                expected.to_lowercase(),
                format!("{:?}", got.outcome).to_lowercase(),
                got.reason,
                got.route
            ));
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Purpose;

    const POLICY: &str = r#"
        [upstream]
        url = "http://127.0.0.1:3000"
        [roles]
        admin = { inherits = ["creator"] }
        creator = { inherits = ["reader"] }
        [[routes]]
        path = "/public/**"
        access = "public"
        [[routes]]
        name = "admin-api"
        path = "/api/admin/**"
        roles = ["admin"]
        [[routes]]
        path = "/api/**"
        methods = ["POST", "PUT", "PATCH", "DELETE"]
        roles = ["creator"]
        [[routes]]
        path = "/api/**"
        access = "authenticated"
    "#;

    /// No `tokens.secret`: explaining needs none.
    fn config() -> Config {
        Config::check(POLICY, std::iter::empty(), Purpose::Policy)
            .config
            .expect("valid without a secret")
    }

    /// `policy` with a token secret, and the tokens it verifies.
    fn with_tokens(policy: &str) -> (Config, Tokens) {
        let secret = "0123456789abcdef0123456789abcdef";
        let text = format!("{policy}\n[tokens]\nsecret = \"{secret}\"\n");
        let config = Config::check(&text, std::iter::empty(), Purpose::Policy)
            .config
            .unwrap();
        let tokens = Tokens::new(TokenSettings::hs256(
            secret.as_bytes(),
            &config.tokens.issuer,
            &config.tokens.audience,
            900,
            0,
        ));
        (config, tokens)
    }

    fn outcome(method: &str, target: &str, identity: &Identity) -> (Outcome, Option<u16>, String) {
        let e = explain(&config(), method, target, identity, 0).expect("explained");
        (e.outcome, e.status, e.route)
    }

    #[test]
    fn agrees_with_the_server_on_what_it_refuses_and_serves() {
        let anon = Identity::Anonymous;
        let reader = Identity::Roles(vec!["reader".into()]);
        // The server answers 400 to a lower-case method.
        assert_eq!(outcome("get", "/api/x", &reader).0, Outcome::Refused);
        // Auth endpoints are served by gatehouse.
        let (o, status, route) = outcome("GET", "/auth/login", &anon);
        assert_eq!(
            (o, status, route.as_str()),
            (Outcome::Served, None, "auth:/login")
        );
        // The query is not part of the path...
        let e = explain(&config(), "GET", "/api/x?token=abc", &reader, 0).unwrap();
        assert_eq!(
            (e.outcome, e.path.as_deref()),
            (Outcome::Allow, Some("/api/x"))
        );
        // ...but a method override in it is refused, as the server refuses it.
        let e = explain(&config(), "GET", "/api/x?_method=DELETE", &reader, 0).unwrap();
        assert_eq!((e.outcome, e.status), (Outcome::Refused, Some(400)));
        assert!(e.reason.contains("Method-override"), "{}", e.reason);
        // Normalisation happens first; an encoded slash is refused.
        let e = explain(&config(), "GET", "/public/../api/admin/x", &reader, 0).unwrap();
        assert_eq!(e.path.as_deref(), Some("/api/admin/x"));
        assert_eq!((e.outcome, e.status), (Outcome::Deny, Some(403)));
        assert_eq!(e.route, "admin-api");
        assert_eq!(outcome("GET", "/public/a%2Fb", &anon).0, Outcome::Refused);
        assert_eq!(outcome("G T", "/", &anon).0, Outcome::Refused);
        assert_eq!(outcome("CONNECT", "/api/x", &anon).0, Outcome::Refused);
    }

    #[test]
    fn verdicts_and_exit_codes() {
        let cases = [
            (
                "GET",
                "/api/items",
                Identity::Anonymous,
                Outcome::Deny,
                Some(401),
            ),
            (
                "POST",
                "/api/items",
                Identity::Roles(vec!["reader".into()]),
                Outcome::Deny,
                Some(403),
            ),
            (
                "POST",
                "/api/items",
                Identity::Roles(vec!["admin".into()]),
                Outcome::Allow,
                None,
            ),
            (
                "HEAD",
                "/api/items",
                Identity::Roles(vec!["reader".into()]),
                Outcome::Allow,
                None,
            ),
            (
                "GET",
                "/nowhere",
                Identity::Anonymous,
                Outcome::Deny,
                Some(403),
            ),
            (
                "GET",
                "/public/x",
                Identity::Anonymous,
                Outcome::Allow,
                None,
            ),
            // The case-folded spelling gets the admin rule too.
            (
                "GET",
                "/api/ADMIN/x",
                Identity::Roles(vec!["reader".into()]),
                Outcome::Deny,
                Some(403),
            ),
        ];
        for (method, target, identity, want, status) in cases {
            let e = explain(&config(), method, target, &identity, 0).unwrap();
            assert_eq!((e.outcome, e.status), (want, status), "{}", e.text());
        }
        assert_eq!(Outcome::Allow.exit_code(), 0);
        assert_eq!(Outcome::Served.exit_code(), 0);
        assert_eq!(Outcome::Deny.exit_code(), 1);
        assert_eq!(Outcome::Refused.exit_code(), 2);
        let text = explain(
            &config(),
            "GET",
            "/api/ADMIN/x",
            &Identity::Roles(vec!["reader".into()]),
            0,
        )
        .unwrap()
        .text();
        assert!(
            text.contains("also:    as the case-folded path: routes[1] (admin-api)"),
            "{text}"
        );
        assert!(text.contains("decided: by the case-folded path"), "{text}");
        assert!(text.contains("verdict: DENY 403 FORBIDDEN"), "{text}");
    }

    #[test]
    fn a_token_needs_the_key_and_is_verified_as_the_proxy_would() {
        let err = explain(
            &config(),
            "GET",
            "/api/x",
            &Identity::Token("x.y.z".into()),
            0,
        )
        .expect_err("no key");
        assert!(err.0.contains("tokens.secret"), "{err}");

        let (config, tokens) = with_tokens(POLICY);
        let roles = vec!["reader".to_string()];
        let identity = crate::token::Identity {
            user_id: "u1",
            email: "u1@example.com",
            roles: &roles,
            email_verified: true,
            session_id: "s",
            min_iat: 0,
            amr: &["pwd"],
        };
        let now = 1_800_000_000;
        let (token, _) = tokens.issue(&identity, now).unwrap();
        let token = Identity::Token(token);
        let e = explain(&config, "GET", "/api/x", &token, now).unwrap();
        assert_eq!(e.outcome, Outcome::Allow, "{}", e.text());
        assert!(e.user.contains("\"u1\""), "{}", e.user);
        let e = explain(&config, "POST", "/api/x", &token, now).unwrap();
        assert_eq!((e.outcome, e.status), (Outcome::Deny, Some(403)));
        // Expired: 401, as the proxy answers.
        let e = explain(&config, "GET", "/api/x", &token, now + 3600).unwrap();
        assert_eq!(
            (e.outcome, e.status, e.code.as_deref()),
            (Outcome::Deny, Some(401), Some("TOKEN_EXPIRED"))
        );
        let forged = Identity::Token("eyJhbGciOiJIUzI1NiJ9.e30.c2ln".into());
        let e = explain(&config, "GET", "/public/x", &forged, now).unwrap();
        assert_eq!((e.outcome, e.status), (Outcome::Deny, Some(401)));
    }

    /// An `mfa = true` route: a password-only token (and `--roles`, which stands for one) is
    /// refused with 403 MFA_REQUIRED; a token with `otp` in `amr` passes, as on the proxy.
    #[test]
    fn mfa_routes_need_otp_in_amr() {
        // The first rule: nothing before it decides /billing.
        let billing = "[[routes]]\npath = \"/billing/**\"\naccess = \"authenticated\"\nmfa = true\n[[routes]]";
        let (config, tokens) = with_tokens(&POLICY.replacen("[[routes]]", billing, 1));
        let roles = vec!["reader".to_string()];
        let now = 1_800_000_000;
        let token = |amr: &'static [&'static str]| {
            let identity = crate::token::Identity {
                user_id: "u1",
                email: "u1@example.com",
                roles: &roles,
                email_verified: true,
                session_id: "s",
                min_iat: 0,
                amr,
            };
            Identity::Token(tokens.issue(&identity, now).unwrap().0)
        };
        let e = explain(&config, "GET", "/billing/x", &token(&["pwd"]), now).unwrap();
        assert_eq!(
            (e.outcome, e.status, e.code.as_deref()),
            (Outcome::Deny, Some(403), Some("MFA_REQUIRED")),
            "{}",
            e.text()
        );
        let e = explain(&config, "GET", "/billing/x", &token(&["pwd", "otp"]), now).unwrap();
        assert_eq!(e.outcome, Outcome::Allow, "{}", e.text());
        let reader = Identity::Roles(vec!["reader".into()]);
        let e = explain(&config, "GET", "/billing/x", &reader, now).unwrap();
        assert_eq!(e.code.as_deref(), Some("MFA_REQUIRED"), "{}", e.text());
        let e = explain(&config, "GET", "/api/x", &reader, now).unwrap();
        assert_eq!(e.outcome, Outcome::Allow, "{}", e.text());
    }

    #[test]
    fn a_table_reports_every_mismatch() {
        let table: Table = toml::from_str(
            r#"
            [[case]]
            method = "GET"
            path = "/public/x"
            expect = "allow"
            [[case]]
            method = "get"
            path = "/api/x"
            roles = ["reader"]
            expect = "allow"
            [[case]]
            method = "POST"
            path = "/api/x"
            roles = ["reader"]
            expect = "deny"
            status = 401
            [[case]]
            method = "GET"
            path = "/auth/login"
            expect = "served"
            "#,
        )
        .unwrap();
        let report = run_table(&config(), &table, 0);
        assert_eq!(report.cases, 4);
        assert_eq!(
            report.mismatches,
            [
                "case[1] get /api/x as [reader]: expected allow, got refused 400: Methods must be upper-case. (route \"default\")",
                "case[2] POST /api/x as [reader]: expected deny 401, got deny 403: the caller holds none of the required roles (route \"POST,PUT,PATCH,DELETE /api/**\")",
            ]
        );
        assert!(
            toml::from_str::<Table>(
                "[[case]]\nmethod = \"GET\"\npath = \"/\"\nexpect = \"allow\"\nrole = [\"x\"]\n"
            )
            .is_err()
        );
    }
}
