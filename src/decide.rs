//! The pure half of the gate: what gatehouse does with a request, decided from the config
//! and the request head alone, with no IO, no clock and no shared state.
//!
//! [`route`] is steps 4, 5, 7 and 8 of the pipeline (refusals, path normalisation, the
//! auth prefix, the rule); [`authorise`] is steps 9 and 10 in their order (a denial to
//! everyone before any token is looked at, then the token, then the verdict for its roles
//! and the verified-email requirement), given a way to authenticate. The gate calls both on
//! every request; `gatehouse policy explain` and `policy test` call the same two on a
//! request they build from the command line, so they cannot disagree with the proxy.
//!
//! What only the running proxy knows stays in the gate: the client address, revocations,
//! rate limits, and the upstream's answer.

use std::borrow::Cow;
use std::sync::Arc;

use http::Uri;

use crate::config::Config;
use crate::error::{Error, TokenRefusal};
use crate::hygiene::{self, Head};
use crate::metrics::Route;
use crate::path;
use crate::policy::{Decision, Verdict};
use crate::token::Claims;

/// Where a request goes, before anyone's identity is looked at.
// `Proxy` is the large, common variant: boxing it would allocate on every proxied request,
// and the value lives on the stack only until the gate matches on it.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Routing<'t> {
    /// Refused before anything is decided: a hygiene refusal or a path that normalisation
    /// refuses (400, or 414 for an over-long target).
    Refused(Error),
    /// Under `auth.prefix`: served by gatehouse's own endpoints, never forwarded. `route`
    /// is the endpoint's metrics label slot.
    Auth { path: Cow<'t, str>, route: Route },
    /// Decided by the route policy; `path` is the normalised path, the one forwarded.
    Proxy {
        path: Cow<'t, str>,
        decision: Decision,
    },
}

/// Steps 4, 5, 7 and 8: refusals, the normalised path, the auth prefix, the route rule for
/// the exact and the case-folded spellings. Allocates only when the path needs normalising.
pub fn route<'t>(config: &Config, head: Head<'_>, target: &'t Uri) -> Routing<'t> {
    // 4. Refusals (`hygiene.rs`): tunnels, open-proxy targets, method overrides (headers
    //    and query parameters), ambiguous hosts, lower-case methods.
    if let Err(error) = hygiene::check_head(head, target, config.server.max_uri_bytes) {
        return Routing::Refused(error);
    }
    // 5. The path, normalised once (`path.rs`); the query is not part of it.
    let path = match path::normalize(target.path()) {
        Ok(path) => path,
        Err(e) => return Routing::Refused(Error::InvalidRequest(e.reason().into())),
    };
    // 7. Auth endpoints (`auth/`).
    if let Some(route) = auth_route(config, &path) {
        return Routing::Auth { path, route };
    }
    // 8. The rule (`policy.rs`).
    let decision = config.policy.decide(head.method, &path);
    Routing::Proxy { path, decision }
}

/// The route of a path under `auth.prefix`, by the endpoint it names (its default path, so a
/// renamed endpoint keeps its label); `None` for every other path.
pub fn auth_route(config: &Config, path: &str) -> Option<Route> {
    let prefix = config.auth.prefix.as_str();
    let rest = path.strip_prefix(prefix)?;
    if !(rest.is_empty() || rest.starts_with('/')) {
        return None;
    }
    // As `auth::handle` reads it: a trailing `/` does not change the endpoint.
    let rest = if rest.len() > 1 {
        rest.trim_end_matches('/')
    } else {
        rest
    };
    Some(
        config
            .auth
            .canonical(rest)
            .map_or(Route::AUTH_OTHER, |endpoint| Route::auth(&endpoint)),
    )
}

/// What [`authorise`] made of a policy-decided request.
#[derive(Debug)]
pub struct Authorised {
    /// The rule the outcome came from (`None`: the policy default), for the route label.
    pub rule: Option<usize>,
    /// The verified token's claims, once one verified.
    pub claims: Option<Arc<Claims>>,
    /// Forward, or the refusal: 403 to everyone, a token refusal (401), 403 for missing
    /// roles, 403 `EMAIL_NOT_VERIFIED`, 403 `MFA_REQUIRED`.
    pub result: Result<(), Error>,
}

/// Steps 9 and 10, in the gate's order: a rule that denies everyone answers 403 before any
/// token is read; then `authenticate` verifies the presented token, if any (a bad one is
/// refused even on a public route); then the stricter verdict of the spellings for the
/// token's roles, the verified-email requirement and the second-factor requirement.
pub fn authorise(
    config: &Config,
    decision: &Decision,
    authenticate: impl FnOnce() -> Result<Option<Arc<Claims>>, Error>,
) -> Authorised {
    if let Some(denied) = decision.denial() {
        return Authorised {
            rule: denied.rule,
            claims: None,
            result: Err(Error::Forbidden),
        };
    }
    let claims = match authenticate() {
        Ok(claims) => claims,
        Err(error) => {
            return Authorised {
                rule: decision.exact.rule,
                claims: None,
                result: Err(error),
            };
        }
    };
    let policy = &config.policy;
    let mask = claims
        .as_ref()
        .map(|c| policy.roles_mask(c.roles.iter().map(String::as_str)));
    let (verdict, matched, _) = decision.verdict(mask);
    // The verified-email requirement applies to whoever the verdict let through.
    let unverified = config.auth.require_verified_email
        && !decision.is_public()
        && claims.as_ref().is_some_and(|c| !c.email_verified);
    // And so does the second-factor requirement (`mfa = true` on any spelling's rule).
    let no_otp = decision.mfa().is_some() && claims.as_ref().is_some_and(|c| !c.has_otp());
    let result = match verdict {
        Verdict::Allow if unverified => Err(Error::EmailNotVerified),
        Verdict::Allow if no_otp => Err(Error::MfaMissing),
        Verdict::Allow => Ok(()),
        Verdict::Unauthenticated => Err(Error::Token(TokenRefusal::Missing)),
        Verdict::Forbidden => Err(Error::Forbidden),
    };
    Authorised {
        rule: matched.rule,
        claims,
        result,
    }
}
