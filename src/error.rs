//! The one error type gatehouse answers with.
//!
//! Every refusal, on the auth endpoints and on the proxy path alike, is an [`Error`]. The enum
//! knows its HTTP status, its stable `code` from API.md §3, and its [`Source`] (who is at
//! fault), which decides the log level: client mistakes log at `debug`, upstream faults at
//! `warn`, our own bugs at `error`. The JSON body never carries the cause of an internal or
//! upstream fault; the cause goes to the log, tagged with the request id.

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

use crate::metrics::Outcome;
use crate::store::{StoreError, UniqueKey};

/// Who caused an error. Decides log level and the `source` label on error metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The client sent something we refuse; nothing is wrong with gatehouse.
    Downstream,
    /// The upstream API failed, timed out or sent garbage.
    Upstream,
    /// A bug or an environment failure inside gatehouse (store IO, a panic in a task).
    Internal,
}

/// Why a bearer token was refused. The label is a metric label value and a log field, so it
/// is a fixed, small set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRefusal {
    /// No `Authorization: Bearer` header where one is required.
    Missing,
    /// Malformed, bad signature, wrong issuer/audience/type/algorithm, oversized.
    Invalid(&'static str),
    /// `exp` has passed.
    Expired,
    /// Logged out, session revoked, password changed, refresh token reused.
    Revoked,
}

impl TokenRefusal {
    /// The reason label used in `gatehouse_auth_failures_total{reason}` and in logs.
    pub fn reason(self) -> &'static str {
        match self {
            TokenRefusal::Missing => "missing",
            TokenRefusal::Invalid(reason) => reason,
            TokenRefusal::Expired => "expired",
            TokenRefusal::Revoked => "revoked",
        }
    }
}

/// What `Retry-After` says when the store is unavailable: long enough for a pool to
/// reconnect after a database restart or failover, short enough that clients come back soon.
const STORE_RETRY_AFTER_SECS: u64 = 5;

/// Which unique value a write collided with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conflict {
    Email,
    Username,
}

/// What a 429 limited, so its message can say what to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    /// A per-client rate limit: generic, since saying which would help a prober.
    Requests,
    /// New email-verification links: the caller owns the account, so the message says
    /// a link was sent and when to ask again.
    VerificationMail,
}

/// One unacceptable line of a user import: its number (from 1), the field at fault when
/// there is one, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineProblem {
    pub line: usize,
    pub field: Option<&'static str>,
    pub message: String,
}

impl fmt::Display for LineProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.field {
            Some(field) => write!(f, "line {}: {field}: {}", self.line, self.message),
            None => write!(f, "line {}: {}", self.line, self.message),
        }
    }
}

/// Every error gatehouse answers with. See API.md §3 for the codes.
#[derive(Debug)]
pub enum Error {
    /// 400: malformed JSON, wrong content type, missing field, refused path.
    InvalidRequest(Cow<'static, str>),
    /// 422: a field is present but not acceptable; `fields` maps field name to reason.
    ValidationFailed(Vec<(String, String)>),
    /// 422: lines of a user import are not acceptable (every one of them, in line order);
    /// nothing was imported.
    ImportRejected(Vec<LineProblem>),
    /// 422: the password policy refused the password.
    WeakPassword(Cow<'static, str>),
    /// 401: wrong login name or password, or unknown user (indistinguishable).
    InvalidCredentials,
    /// 401: a bearer token was missing or refused.
    Token(TokenRefusal),
    /// 403: authenticated, but the route's roles are not met (or the route is denied).
    Forbidden,
    /// 403 with a specific reason (e.g. registration closed).
    ForbiddenBecause(&'static str),
    /// 403: the route or config requires a verified email.
    EmailNotVerified,
    /// 401 at login: the password was right and the account has a second factor; the body
    /// carries `mfa_token` beside `error`, to be sent to `{prefix}/login/mfa` with a code.
    MfaRequired { mfa_token: String },
    /// 403 on an `mfa = true` route: the token's `amr` lacks `otp`. Same code as
    /// [`Error::MfaRequired`]; a different status, because the caller is authenticated.
    MfaMissing,
    /// 409: the second factor is not in the state the request needs (already enabled, no
    /// setup pending, not enabled); the message says which.
    MfaState(&'static str),
    /// 404: TOTP needs `auth.mfa.encryption_key`, which is not configured.
    MfaNotConfigured,
    /// 404: unknown auth endpoint or admin resource.
    NotFound,
    /// 405 on auth endpoints: the path exists but not with this method.
    MethodNotAllowed(&'static str),
    /// 409: register with a taken email or username.
    Conflict(Conflict),
    /// 413: body over the configured limit.
    PayloadTooLarge,
    /// 414: request target over the configured limit.
    UriTooLong,
    /// 423: too many failed logins for this login name, or locked by an admin.
    AccountLocked { retry_after_secs: Option<u64> },
    /// 400: reset or verification token unknown, used, or expired.
    InvalidResetToken,
    /// 429: over a rate limit. `quota` is `(limit, reset_secs)` for the IETF `RateLimit-*`
    /// headers when the refusal came from a per-IP limiter.
    RateLimited {
        retry_after_secs: u64,
        quota: Option<(u32, u64)>,
        /// What was limited, which the message names.
        what: Limited,
    },
    /// 502: the upstream refused the connection, reset it or sent garbage.
    UpstreamUnavailable(String),
    /// 504: the upstream did not answer within `upstream.timeout`.
    UpstreamTimeout,
    /// 503: not ready (store closed, shutting down).
    Unavailable(&'static str),
    /// 503 with `Retry-After`: the store (PostgreSQL) cannot be reached now; nothing was
    /// done. The proxy path never needs the store, so only the auth endpoints answer this.
    StoreUnavailable,
    /// 500: a bug or environment failure; the cause is logged, never sent.
    Internal(String),
}

impl Error {
    /// Shorthand for a 500 whose cause is logged but never shown to the client.
    pub fn internal(cause: impl fmt::Display) -> Error {
        Error::Internal(cause.to_string())
    }

    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::InvalidRequest(_) | Error::InvalidResetToken => StatusCode::BAD_REQUEST,
            Error::ValidationFailed(_) | Error::ImportRejected(_) | Error::WeakPassword(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            Error::InvalidCredentials | Error::Token(_) | Error::MfaRequired { .. } => {
                StatusCode::UNAUTHORIZED
            }
            Error::Forbidden
            | Error::ForbiddenBecause(_)
            | Error::EmailNotVerified
            | Error::MfaMissing => StatusCode::FORBIDDEN,
            Error::MfaState(_) => StatusCode::CONFLICT,
            // A feature that is off, like any endpoint that is off: not a server fault (a 5xx would
            // page whoever watches gatehouse's error rate).
            Error::MfaNotConfigured => StatusCode::NOT_FOUND,
            Error::NotFound => StatusCode::NOT_FOUND,
            Error::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Error::UriTooLong => StatusCode::URI_TOO_LONG,
            Error::AccountLocked { .. } => StatusCode::LOCKED,
            Error::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Error::UpstreamUnavailable(_) => StatusCode::BAD_GATEWAY,
            Error::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Error::Unavailable(_) | Error::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable machine-readable code of API.md §3.
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidRequest(_) => "INVALID_REQUEST",
            Error::ValidationFailed(_) | Error::ImportRejected(_) => "VALIDATION_FAILED",
            Error::WeakPassword(_) => "WEAK_PASSWORD",
            Error::InvalidCredentials => "INVALID_CREDENTIALS",
            Error::Token(TokenRefusal::Missing) => "TOKEN_MISSING",
            Error::Token(TokenRefusal::Invalid(_)) => "TOKEN_INVALID",
            Error::Token(TokenRefusal::Expired) => "TOKEN_EXPIRED",
            Error::Token(TokenRefusal::Revoked) => "TOKEN_REVOKED",
            Error::Forbidden | Error::ForbiddenBecause(_) => "FORBIDDEN",
            Error::EmailNotVerified => "EMAIL_NOT_VERIFIED",
            Error::MfaRequired { .. } | Error::MfaMissing => "MFA_REQUIRED",
            Error::MfaState(_) => "MFA_STATE_CONFLICT",
            Error::MfaNotConfigured => "MFA_NOT_CONFIGURED",
            Error::NotFound => "NOT_FOUND",
            Error::MethodNotAllowed(_) => "METHOD_NOT_ALLOWED",
            Error::Conflict(Conflict::Username) => "USERNAME_ALREADY_EXISTS",
            Error::Conflict(Conflict::Email) => "EMAIL_ALREADY_EXISTS",
            Error::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            Error::UriTooLong => "URI_TOO_LONG",
            Error::AccountLocked { .. } => "ACCOUNT_LOCKED",
            Error::InvalidResetToken => "INVALID_RESET_TOKEN",
            Error::RateLimited { .. } => "RATE_LIMITED",
            Error::UpstreamUnavailable(_) => "UPSTREAM_UNAVAILABLE",
            Error::UpstreamTimeout => "UPSTREAM_TIMEOUT",
            Error::Unavailable(_) => "UNAVAILABLE",
            Error::StoreUnavailable => "STORE_UNAVAILABLE",
            Error::Internal(_) => "INTERNAL",
        }
    }

    /// How the request counts in `gatehouse_requests_total{outcome}`.
    pub fn outcome(&self) -> Outcome {
        match self {
            Error::Token(_) | Error::InvalidCredentials | Error::MfaRequired { .. } => {
                Outcome::Unauthenticated
            }
            Error::Forbidden
            | Error::ForbiddenBecause(_)
            | Error::EmailNotVerified
            | Error::MfaMissing => Outcome::Forbidden,
            Error::RateLimited { .. } | Error::AccountLocked { .. } => Outcome::RateLimited,
            Error::UpstreamUnavailable(_) | Error::UpstreamTimeout => Outcome::UpstreamError,
            Error::Internal(_) | Error::Unavailable(_) | Error::StoreUnavailable => Outcome::Failed,
            _ => Outcome::Rejected,
        }
    }

    /// Who is at fault; decides the log level.
    pub fn source(&self) -> Source {
        match self {
            Error::UpstreamUnavailable(_) | Error::UpstreamTimeout => Source::Upstream,
            Error::Internal(_) | Error::Unavailable(_) | Error::StoreUnavailable => {
                Source::Internal
            }
            _ => Source::Downstream,
        }
    }

    /// A per-client 429 on a verification-mail request, reworded to say so.
    pub fn about_verification_mail(self) -> Error {
        match self {
            Error::RateLimited {
                retry_after_secs,
                quota,
                ..
            } => Error::RateLimited {
                retry_after_secs,
                quota,
                what: Limited::VerificationMail,
            },
            other => other,
        }
    }

    /// The human sentence sent to the client. Never carries internals: upstream and internal
    /// causes stay in the log.
    pub fn message(&self) -> Cow<'static, str> {
        match self {
            Error::InvalidRequest(msg) => msg.clone(),
            Error::ValidationFailed(_) => "One or more fields are not acceptable".into(),
            Error::ImportRejected(problems) => {
                let lines: std::collections::BTreeSet<usize> =
                    problems.iter().map(|p| p.line).collect();
                let n = lines.len();
                format!(
                    "{n} line{} of the import {} not acceptable; nothing was imported",
                    if n == 1 { "" } else { "s" },
                    if n == 1 { "is" } else { "are" }
                )
                .into()
            }
            Error::WeakPassword(reason) => reason.clone(),
            Error::InvalidCredentials => "Invalid email or password".into(),
            Error::Token(TokenRefusal::Missing) => "A bearer token is required".into(),
            Error::Token(TokenRefusal::Invalid(_)) => "The bearer token is not valid".into(),
            Error::Token(TokenRefusal::Expired) => "The bearer token has expired".into(),
            Error::Token(TokenRefusal::Revoked) => "The bearer token has been revoked".into(),
            Error::Forbidden => "You do not have access to this resource".into(),
            Error::ForbiddenBecause(why) => (*why).into(),
            Error::EmailNotVerified => "The email address must be verified first".into(),
            Error::MfaRequired { .. } => {
                "A second factor is required: send a code with the mfa_token".into()
            }
            Error::MfaMissing => {
                "This resource requires a login with a second factor (TOTP)".into()
            }
            Error::MfaState(why) => (*why).into(),
            Error::MfaNotConfigured => {
                "Two-factor authentication is not configured on this server".into()
            }
            Error::NotFound => "Not found".into(),
            Error::MethodNotAllowed(_) => "Method not allowed".into(),
            Error::Conflict(Conflict::Username) => "That username is already taken".into(),
            Error::Conflict(Conflict::Email) => "An account with that email already exists".into(),
            Error::PayloadTooLarge => "The request body is too large".into(),
            Error::UriTooLong => "The request target is too long".into(),
            Error::AccountLocked { .. } => {
                "Too many failed attempts or the account is locked; try again later".into()
            }
            Error::InvalidResetToken => "The link is invalid, expired or already used".into(),
            Error::RateLimited {
                what: Limited::Requests,
                ..
            } => "Too many requests; slow down".into(),
            Error::RateLimited {
                what: Limited::VerificationMail,
                retry_after_secs,
                ..
            } => format!(
                "A confirmation link was sent recently. Check your inbox and spam folder, or \
                 ask for a new link in {retry_after_secs} seconds."
            )
            .into(),
            Error::UpstreamUnavailable(_) => "The upstream service is unavailable".into(),
            Error::UpstreamTimeout => "The upstream service did not answer in time".into(),
            Error::Unavailable(_) => "The service is not ready".into(),
            Error::StoreUnavailable => "The account store is unavailable; try again shortly".into(),
            Error::Internal(_) => "Internal error".into(),
        }
    }

    /// Logs the error at the level its source calls for, with the request id when known.
    /// Causes of upstream and internal faults appear here and only here.
    pub fn log(&self, request_id: &str) {
        match (self.source(), self) {
            (Source::Upstream, Error::UpstreamUnavailable(cause)) => {
                tracing::warn!(request_id, code = self.code(), cause = %cause, "upstream error")
            }
            (Source::Upstream, _) => {
                tracing::warn!(request_id, code = self.code(), "upstream error")
            }
            (Source::Internal, Error::Internal(cause)) => {
                tracing::error!(request_id, cause = %cause, "internal error")
            }
            (Source::Internal, Error::Unavailable(why)) => {
                tracing::warn!(request_id, why, "not ready")
            }
            _ => tracing::debug!(request_id, code = self.code(), "request refused"),
        }
    }

    /// Renders the error as the JSON response of API.md §3, with the headers the code calls
    /// for (`WWW-Authenticate` per RFC 6750, `Retry-After`, `Allow`).
    pub fn into_response<B>(self) -> Response<B>
    where
        B: From<Full<Bytes>>,
    {
        let body = self.json_body();
        let mut response = Response::new(B::from(Full::new(Bytes::from(body))));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(secs) = self.retry_after_secs() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        match &self {
            Error::Token(refusal) => {
                headers.insert(header::WWW_AUTHENTICATE, www_authenticate(*refusal));
            }
            Error::RateLimited {
                quota: Some((limit, reset)),
                ..
            } => {
                // draft-ietf-httpapi-ratelimit-headers: the quota, what is left (nothing, we
                // are refusing) and when it is whole again.
                headers.insert("ratelimit-limit", HeaderValue::from(*limit));
                headers.insert("ratelimit-remaining", HeaderValue::from(0u32));
                headers.insert("ratelimit-reset", HeaderValue::from(*reset));
            }
            Error::MethodNotAllowed(allow) => {
                headers.insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            _ => {}
        }
        response
    }

    /// The JSON body: `{"error": {"code", "message", "fields"?, "lines"?}}`.
    pub fn json_body(&self) -> Vec<u8> {
        let mut body = serde_json::json!({ "error": self.error_object() });
        // Beside `error`, not inside it: the error object keeps the shape of the error
        // contract, and the auth channel puts it beside `error` in its payload too.
        if let Error::MfaRequired { mfa_token } = self {
            body["mfa_token"] = mfa_token.as_str().into();
        }
        // Serialising a Value built from strings cannot fail.
        serde_json::to_vec(&body).unwrap_or_default()
    }

    /// The `error` object of the body: `{"code", "message", "fields"?, "lines"?}`. The WebSocket auth
    /// channel, which has no headers, adds `retry_after` ([`Error::retry_after_secs`]).
    pub fn error_object(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut error = serde_json::Map::new();
        error.insert("code".into(), self.code().into());
        error.insert("message".into(), self.message().into_owned().into());
        if let Error::ValidationFailed(fields) = self {
            let fields: serde_json::Map<String, serde_json::Value> = fields
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::from(v.as_str())))
                .collect();
            error.insert("fields".into(), fields.into());
        }
        if let Error::ImportRejected(problems) = self {
            let lines: Vec<serde_json::Value> = problems
                .iter()
                .map(
                    |p| serde_json::json!({"line": p.line, "field": p.field, "message": p.message}),
                )
                .collect();
            error.insert("lines".into(), lines.into());
        }
        error
    }

    /// What `Retry-After` says for this error, if anything.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Error::AccountLocked { retry_after_secs } => *retry_after_secs,
            Error::RateLimited {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            Error::StoreUnavailable => Some(STORE_RETRY_AFTER_SECS),
            _ => None,
        }
    }
}

/// `WWW-Authenticate` per RFC 6750 §3: no error attribute when the token is simply missing,
/// `invalid_token` otherwise. The description is a fixed string, never the token.
fn www_authenticate(refusal: TokenRefusal) -> HeaderValue {
    HeaderValue::from_static(match refusal {
        TokenRefusal::Missing => "Bearer realm=\"gatehouse\"",
        TokenRefusal::Invalid(_) => {
            "Bearer realm=\"gatehouse\", error=\"invalid_token\", error_description=\"The token is not valid\""
        }
        TokenRefusal::Expired => {
            "Bearer realm=\"gatehouse\", error=\"invalid_token\", error_description=\"The token has expired\""
        }
        TokenRefusal::Revoked => {
            "Bearer realm=\"gatehouse\", error=\"invalid_token\", error_description=\"The token has been revoked\""
        }
    })
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.code(), self.message())
    }
}

impl std::error::Error for Error {}

/// Conflicts and missing records are the client's business; everything else is ours and
/// logged, never shown.
impl From<StoreError> for Error {
    fn from(e: StoreError) -> Error {
        match e {
            StoreError::Conflict(UniqueKey::Username) => Error::Conflict(Conflict::Username),
            StoreError::Conflict(UniqueKey::Email) => Error::Conflict(Conflict::Email),
            StoreError::NotFound => Error::NotFound,
            // The cause was logged where it happened; the client learns only to retry.
            StoreError::Unavailable(cause) => {
                tracing::warn!(cause = %cause, "store unavailable");
                Error::StoreUnavailable
            }
            other => Error::internal(format!("store: {other}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn check(error: Error, status: u16, code: &str) {
        assert_eq!(error.status().as_u16(), status, "{error:?}");
        assert_eq!(error.code(), code, "{error:?}");
        let body: serde_json::Value = serde_json::from_slice(&error.json_body()).unwrap();
        assert_eq!(body["error"]["code"], code);
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }

    #[test]
    fn codes_and_statuses_follow_the_contract() {
        check(Error::InvalidRequest("x".into()), 400, "INVALID_REQUEST");
        check(Error::StoreUnavailable, 503, "STORE_UNAVAILABLE");
        check(Error::ValidationFailed(vec![]), 422, "VALIDATION_FAILED");
        check(Error::WeakPassword("short".into()), 422, "WEAK_PASSWORD");
        check(Error::InvalidCredentials, 401, "INVALID_CREDENTIALS");
        check(Error::Token(TokenRefusal::Missing), 401, "TOKEN_MISSING");
        check(
            Error::Token(TokenRefusal::Invalid("signature")),
            401,
            "TOKEN_INVALID",
        );
        check(Error::Token(TokenRefusal::Expired), 401, "TOKEN_EXPIRED");
        check(Error::Token(TokenRefusal::Revoked), 401, "TOKEN_REVOKED");
        check(Error::Forbidden, 403, "FORBIDDEN");
        check(Error::EmailNotVerified, 403, "EMAIL_NOT_VERIFIED");
        check(
            Error::MfaRequired {
                mfa_token: "t".into(),
            },
            401,
            "MFA_REQUIRED",
        );
        check(Error::MfaMissing, 403, "MFA_REQUIRED");
        check(
            Error::MfaState("TOTP is already enabled"),
            409,
            "MFA_STATE_CONFLICT",
        );
        check(Error::MfaNotConfigured, 404, "MFA_NOT_CONFIGURED");
        check(Error::NotFound, 404, "NOT_FOUND");
        check(
            Error::Conflict(Conflict::Email),
            409,
            "EMAIL_ALREADY_EXISTS",
        );
        check(
            Error::Conflict(Conflict::Username),
            409,
            "USERNAME_ALREADY_EXISTS",
        );
        check(Error::PayloadTooLarge, 413, "PAYLOAD_TOO_LARGE");
        check(
            Error::AccountLocked {
                retry_after_secs: Some(3),
            },
            423,
            "ACCOUNT_LOCKED",
        );
        check(Error::InvalidResetToken, 400, "INVALID_RESET_TOKEN");
        check(
            Error::RateLimited {
                retry_after_secs: 1,
                quota: None,
                what: Limited::Requests,
            },
            429,
            "RATE_LIMITED",
        );
        check(
            Error::UpstreamUnavailable("x".into()),
            502,
            "UPSTREAM_UNAVAILABLE",
        );
        check(Error::UpstreamTimeout, 504, "UPSTREAM_TIMEOUT");
        check(Error::Internal("x".into()), 500, "INTERNAL");
    }

    #[test]
    fn internal_and_upstream_causes_never_reach_the_body() {
        for error in [
            Error::Internal("sled: io error at /var/lib/secret".into()),
            Error::UpstreamUnavailable("connect 10.0.0.7:3000 refused".into()),
        ] {
            let body = String::from_utf8(error.json_body()).unwrap();
            assert!(
                !body.contains("10.0.0.7") && !body.contains("/var/lib"),
                "{body}"
            );
        }
    }

    #[test]
    fn mfa_required_carries_its_token_beside_the_error() {
        let error = Error::MfaRequired {
            mfa_token: "abc".into(),
        };
        let body: serde_json::Value = serde_json::from_slice(&error.json_body()).unwrap();
        assert_eq!(body["mfa_token"], "abc");
        assert_eq!(body["error"]["code"], "MFA_REQUIRED");
        assert!(body["error"].get("mfa_token").is_none());
    }

    #[test]
    fn validation_failures_list_their_fields() {
        let error = Error::ValidationFailed(vec![("email".into(), "not an email".into())]);
        let body: serde_json::Value = serde_json::from_slice(&error.json_body()).unwrap();
        assert_eq!(body["error"]["fields"]["email"], "not an email");
    }

    #[tokio::test]
    async fn responses_carry_rfc6750_and_retry_headers() {
        let response: Response<Full<Bytes>> = Error::Token(TokenRefusal::Expired).into_response();
        let challenge = response.headers()[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap();
        assert!(challenge.starts_with("Bearer ") && challenge.contains("invalid_token"));
        let response: Response<Full<Bytes>> = Error::RateLimited {
            retry_after_secs: 7,
            quota: Some((5, 900)),
            what: Limited::Requests,
        }
        .into_response();
        assert_eq!(response.headers()[header::RETRY_AFTER], "7");
        assert_eq!(response.headers()["ratelimit-limit"], "5");
        assert_eq!(response.headers()["ratelimit-remaining"], "0");
        assert_eq!(response.headers()["ratelimit-reset"], "900");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert!(body.starts_with(b"{\"error\""));
    }
}
