//! The HTML pages of account recovery: the reset form, the email confirmation button, and
//! the outcome pages. Self-contained: no external assets, and every page carries the
//! security headers below.
//!
//! `GET …/reset-password?token=…` serves the reset form: a Content-Security-Policy of
//! `default-src 'none'` with a per-response nonce for its one inline style and script,
//! `frame-ancestors 'none'` and `X-Frame-Options: DENY`, `Referrer-Policy: no-referrer` (the
//! token sits in the URL), `Cache-Control: no-store`. Its form posts
//! `application/x-www-form-urlencoded` to `POST …/reset-password`, which answers a form with
//! an HTML page and JSON with JSON, so it works without JavaScript; with JavaScript it posts
//! JSON with `fetch` and shows the outcome inline. `GET …/verify-email?token=…` serves only a
//! button that posts the token: mail scanners fetch every link, so a GET never verifies.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

use crate::accounts::recovery::well_formed;
use crate::app::App;
use crate::email::escape;
use crate::error::Error;
use crate::token::random_token;

/// A page, or the error to answer with when even the page cannot be built.
pub type Page = Result<Response<Full<Bytes>>, Error>;

/// "Your password has been changed."
pub fn reset_done() -> Page {
    page(
        StatusCode::OK,
        "Password changed",
        "<p class=\"good\">Your password has been changed and every session was signed \
         out. You can now sign in with your new password.</p>",
        None,
    )
}

/// "Your address is confirmed."
pub fn verify_done() -> Page {
    page(
        StatusCode::OK,
        "Email address confirmed",
        "<p class=\"good\">Thank you: your email address is confirmed. You can close this \
         page.</p>",
        None,
    )
}

/// The confirmation page: a button that POSTs the token (a GET never verifies).
pub fn verify_form(app: &App, token: &str) -> Page {
    let body = format!(
        "<p>Press the button to confirm that this is your email address.</p>\n\
                 <form method=\"post\" action=\"{action}\">\n\
                 <input type=\"hidden\" name=\"token\" value=\"{token}\">\n\
                 <button type=\"submit\">Confirm my email address</button>\n\
                 </form>",
        action = escape(&app.live.config.auth.path_of("/verify-email")),
        token = escape(token),
    );
    page(StatusCode::OK, "Confirm your email address", &body, None)
}

pub fn invalid_reset_page() -> Page {
    page(
        StatusCode::BAD_REQUEST,
        "Link expired or already used",
        "<p class=\"bad\" role=\"alert\">This password reset link is invalid, has expired or \
         has already been used.</p><p>Ask for a new link where you asked for this one; only the latest \
         link works.</p>",
        None,
    )
}

/// The form, with an optional problem to show above it. `email` fills the hidden username
/// field that lets password managers file the new password under the right account.
pub fn reset_form_page(
    app: &App,
    status: StatusCode,
    token: &str,
    email: &str,
    problem: Option<&str>,
) -> Page {
    let min = app.live.config.auth.password.min_length;
    // A problem is an alert (read out at once); the empty slot is a status region the
    // script fills.
    let (class, role, message) = match problem {
        Some(p) => ("bad", "alert", escape(p)),
        None => ("", "status", String::new()),
    };
    let body = format!(
        "<p id=\"intro\">Choose a new password for your account. Every session will be signed \
         out.</p>\n\
         <p id=\"outcome\" role=\"{role}\" class=\"{class}\">{message}</p>\n\
         <form id=\"reset\" method=\"post\" action=\"{action}\" data-validate=\"{validate}\">\n\
         <input type=\"hidden\" name=\"token\" value=\"{token}\">\n\
         <input type=\"text\" name=\"username\" autocomplete=\"username\" value=\"{email}\" \
         readonly hidden>\n\
         <label for=\"new_password\">New password</label>\n\
         <input id=\"new_password\" name=\"new_password\" type=\"password\" \
         autocomplete=\"new-password\" required minlength=\"{min}\" \
         aria-describedby=\"password-hint\" autofocus>\n\
         <label for=\"confirm_password\">The new password again</label>\n\
         <input id=\"confirm_password\" name=\"confirm_password\" type=\"password\" \
         autocomplete=\"new-password\" required minlength=\"{min}\" \
         aria-describedby=\"password-hint\">\n\
         <p id=\"password-hint\" class=\"hint\">At least {min} characters. A few unrelated \
         words make a strong, memorable password.</p>\n\
         <button type=\"submit\">Set the new password</button>\n\
         </form>",
        action = escape(&app.live.config.auth.path_of("/reset-password")),
        validate = escape(&app.live.config.auth.path_of("/reset-password/validate")),
        token = escape(well_formed(token).unwrap_or_default()),
        email = escape(email),
    );
    page(status, "Choose a new password", &body, Some(RESET_SCRIPT))
}

/// Submits the reset form with `fetch` and shows the outcome inline; without JavaScript the
/// form posts itself and the server answers with a page.
const RESET_SCRIPT: &str = r#"(function () {
  var form = document.getElementById('reset');
  var out = document.getElementById('outcome');
  var heading = document.querySelector('h1');
  if (!form || !window.fetch || !window.JSON) { return; }
  var DEAD_LINK = 'This password reset link is invalid, has expired or has already been used. Ask for a new link; only the latest link works.';
  var MISMATCH = 'The two passwords do not match. Type the same new password twice.';
  // Problems are alerts, read out at once; good news is a polite status.
  function show(text, good) {
    out.setAttribute('role', good ? 'status' : 'alert');
    out.className = good ? 'good' : 'bad';
    out.textContent = text;
  }
  // The page's outcome replaces the form, and its heading says so, as the server's page would.
  function finish(title, text, good) {
    form.hidden = true;
    document.getElementById('intro').hidden = true;
    heading.textContent = title;
    document.title = title;
    show(text, good);
  }
  function post(url, body) {
    return fetch(url, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', 'Accept': 'application/json' },
      body: JSON.stringify(body),
      credentials: 'omit',
      cache: 'no-store',
      referrerPolicy: 'no-referrer'
    }).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (json) {
        return { ok: response.ok, error: json && json.error ? json.error : {} };
      });
    });
  }
  form.addEventListener('submit', function (event) {
    event.preventDefault();
    var token = form.elements['token'].value;
    var password = form.elements['new_password'].value;
    var button = form.querySelector('button');
    button.disabled = true;
    if (password !== form.elements['confirm_password'].value) {
      // A dead link is reported before a mismatch: retyping cannot help with it.
      post(form.getAttribute('data-validate'), { token: token }).then(function (answer) {
        if (answer.error.code === 'INVALID_RESET_TOKEN') {
          finish('Link expired or already used', DEAD_LINK, false);
        } else {
          show(MISMATCH, false);
        }
        button.disabled = false;
      }, function () {
        show(MISMATCH, false);
        button.disabled = false;
      });
      return;
    }
    post(form.action, { token: token, new_password: password }).then(function (answer) {
      if (answer.ok) {
        finish('Password changed', 'Your password has been changed and every session was signed out. You can now sign in with your new password.', true);
        return;
      }
      if (answer.error.code === 'INVALID_RESET_TOKEN') {
        finish('Link expired or already used', DEAD_LINK, false);
      } else if (answer.error.code === 'WEAK_PASSWORD') {
        show('That password cannot be used. ' + answer.error.message, false);
      } else if (answer.error.code === 'RATE_LIMITED') {
        show('Too many attempts. Wait a little and try again.', false);
      } else {
        show('Something went wrong on our side. Try again in a few minutes.', false);
      }
      button.disabled = false;
    }, function () {
      show('The server could not be reached. Check your connection and try again.', false);
      button.disabled = false;
    });
  });
})();"#;

pub fn invalid_verify_page() -> Page {
    page(
        StatusCode::BAD_REQUEST,
        "Link expired or already used",
        "<p class=\"bad\" role=\"alert\">This confirmation link is invalid, has expired or has \
         already been used.</p><p>If your address is not confirmed yet, sign in and ask for a new \
         link.</p>",
        None,
    )
}

/// The pages' look: readable on a phone (narrow screens lose the outer margins, so the
/// form and its button fit a 375x667 screen even with a problem shown), no external assets.
const PAGE_STYLE: &str = "\
body{margin:0;padding:24px;background:#f4f4f5;color:#18181b;\
font:16px/1.5 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif}\
main{max-width:420px;margin:8vh auto;background:#fff;border-radius:8px;padding:24px 28px;\
box-shadow:0 1px 3px rgba(0,0,0,.1)}\
h1{font-size:22px;margin:0 0 12px}\
label{display:block;margin:14px 0 4px;font-weight:600}\
input[type=password]{box-sizing:border-box;width:100%;padding:10px;font-size:16px;\
border:1px solid #a1a1aa;border-radius:6px}\
button{margin-top:18px;width:100%;padding:12px;font-size:16px;border:0;border-radius:6px;\
background:#1d4ed8;color:#fff;cursor:pointer}\
button:disabled{opacity:.6}\
.hint{font-size:14px;color:#52525b;margin:8px 0 0}\
.good{color:#166534}.bad{color:#b91c1c}\
#outcome:empty{display:none}\
@media (max-width:480px){body{padding:12px}main{margin:12px auto;padding:20px}}";

/// A complete page with the security headers of the module doc. `body` is trusted HTML
/// written by this module (anything from the request in it is escaped).
fn page(status: StatusCode, title: &str, body: &str, script: Option<&str>) -> Page {
    let nonce = random_token().map_err(|e| Error::internal(e.0))?;
    let script = script.map_or_else(String::new, |s| {
        format!("<script nonce=\"{nonce}\">{s}</script>\n")
    });
    let html = format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta name=\"referrer\" content=\"no-referrer\">\n\
         <meta name=\"robots\" content=\"noindex, nofollow\">\n\
         <title>{title}</title>\n<style nonce=\"{nonce}\">{PAGE_STYLE}</style>\n</head>\n\
         <body>\n<main>\n<h1>{title}</h1>\n{body}\n</main>\n{script}</body>\n</html>\n",
        title = escape(title),
    );
    let csp = format!(
        "default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; \
         connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    );
    let mut response = Response::new(Full::new(Bytes::from(html)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_str(&csp).map_err(|e| Error::internal(format!("csp: {e}")))?,
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    Ok(response)
}

/// A page for a failure that is ours, not the user's; the cause goes to the log only.
pub fn error_page(error: Error) -> Page {
    error.log("recovery-page");
    let status = error.status();
    let message = match status {
        StatusCode::TOO_MANY_REQUESTS => "Too many attempts. Wait a little and try again.",
        s if s.is_client_error() => "The request could not be understood. Open the link again.",
        _ => "Something went wrong on our side. Try again in a few minutes.",
    };
    page(
        status,
        "Something went wrong",
        &format!("<p class=\"bad\" role=\"alert\">{}</p>", escape(message)),
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_carry_the_security_headers() {
        let response = page(StatusCode::OK, "T <x>", "<p>b</p>", Some("1;")).unwrap();
        let h = response.headers();
        let csp = h[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(csp.starts_with("default-src 'none';"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"));
        let nonce = csp
            .split("script-src 'nonce-")
            .nth(1)
            .and_then(|s| s.split('\'').next())
            .unwrap();
        assert!(nonce.len() >= 22);
        assert_eq!(h[header::REFERRER_POLICY], "no-referrer");
        assert_eq!(h[header::CACHE_CONTROL], "no-store");
        assert_eq!(h[header::X_FRAME_OPTIONS], "DENY");
        let again = page(StatusCode::OK, "T", "", None).unwrap();
        assert_ne!(
            again.headers()[header::CONTENT_SECURITY_POLICY],
            h[header::CONTENT_SECURITY_POLICY],
            "a fresh nonce per response"
        );
    }
}
