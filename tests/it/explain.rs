//! `policy explain` against the running gate (issue 11, point 3): generated requests —
//! methods in any case, paths with encodings, dot segments, case variants, format
//! suffixes and auth-prefix paths, queries with and without method-override parameters,
//! anonymous, with tokens of each role and with a forged token — are decided by
//! `gatehouse::explain` (what the `policy explain` command prints) and sent to a running
//! gatehouse; the two must agree on every one.
//!
//! The generator is a fixed-seed xorshift, so a failure names a request that fails again.

use std::sync::atomic::Ordering;

use gatehouse::explain::{Identity, Outcome, explain};

use crate::harness::{Gatehouse, ROUTES};

/// A small deterministic generator: xorshift64*.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }

    fn chance(&mut self, in_four: u64) -> bool {
        self.next() % 4 < in_four
    }
}

const METHODS: &[&str] = &[
    "GET", "GET", "GET", "GET", "POST", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS",
    "PURGE", "get", "Post", "delete",
];

const PATHS: &[&str] = &[
    "/public/hello",
    "/public/../api/admin/users",
    "/public/%2e%2e/api/admin/users",
    "/public/a%2Fb",
    "/public/a%5Cb",
    "/api/items",
    "/api/items/7",
    "/API/Items",
    "/api/ADMIN/users",
    "/Api/Admin/Users",
    "/api/admin/users",
    "/api/admin.json",
    "/api/admin/users.json",
    "/%61pi/admin/users",
    "/api/./admin/x",
    "//api/items",
    "/api/items/",
    "/api/items;jsessionid=1",
    "/blocked/x",
    "/BLOCKED/x",
    "/nowhere",
    "/auth/login",
    "/auth/me",
    "/auth/verify",
    "/auth/admin/users",
    "/auth/nope",
    "/auth/../api/admin/users",
    "/AUTH/login",
];

const QUERIES: &[&str] = &[
    "",
    "",
    "",
    "",
    "",
    "",
    "?token=abc",
    "?page=2&sort=asc",
    "?_method=DELETE",
    "?X-HTTP-Method-Override=PUT",
    "?%5Fmethod=put",
    "?a=b;_method=c",
    "?_METHOD[]=x",
    "?method=GET",
];

#[tokio::test]
async fn explain_agrees_with_the_running_gate() {
    let gh = Gatehouse::start(ROUTES, &[]).await;
    let now = gh.now.load(Ordering::SeqCst);
    let tokens = [
        ("anonymous", None),
        ("reader", Some(gh.token("u-reader", &["reader"]))),
        ("creator", Some(gh.token("u-creator", &["creator"]))),
        ("admin", Some(gh.token("u-admin", &["admin"]))),
        // Well-formed but signed with another key.
        (
            "forged",
            Some(
                "eyJhbGciOiJIUzI1NiIsInR5cCI6ImF0K2p3dCJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlLW5vdC12YWxpZA"
                    .to_string(),
            ),
        ),
    ];
    let mut rng = Gen(0x9E37_79B9_7F4A_7C15);
    let mut seen = std::collections::BTreeMap::<&str, usize>::new();
    for _ in 0..600 {
        let method = rng.pick(METHODS);
        let mut path = rng.pick(PATHS).to_string();
        if rng.chance(1) {
            path.push('/');
        }
        let target = format!("{path}{}", rng.pick(QUERIES));
        let (who, token) = &tokens[(rng.next() % tokens.len() as u64) as usize];
        let identity = match token {
            Some(token) => Identity::Token(token.clone()),
            None => Identity::Anonymous,
        };
        let said = explain(&gh.app.live.config, method, &target, &identity, now)
            .unwrap_or_else(|e| panic!("{method} {target} ({who}): {e}"));
        let authorization = token
            .as_ref()
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let reply = gh
            .raw(format!(
                "{method} {target} HTTP/1.1\r\nHost: gh\r\n{authorization}Connection: close\r\n\r\n"
            ))
            .await;
        let context = format!(
            "{method} {target} as {who}\nexplain said:\n{}\nthe gate answered {}: {}",
            said.text(),
            reply.status,
            reply.text()
        );
        let body: Option<serde_json::Value> = serde_json::from_slice(&reply.body).ok();
        let forwarded = body.as_ref().is_some_and(|b| b["upstream"] == "echo");
        *seen
            .entry(match said.outcome {
                Outcome::Allow => "allow",
                Outcome::Served => "served",
                Outcome::Deny => "deny",
                Outcome::Refused => "refused",
            })
            .or_default() += 1;
        match said.outcome {
            Outcome::Allow => {
                assert_eq!(reply.status.as_u16(), 200, "{context}");
                if method != "HEAD" {
                    assert!(forwarded, "{context}");
                    // The path explain decided on is the path the upstream received.
                    assert_eq!(
                        body.as_ref().map(|b| b["path"].clone()),
                        said.path.clone().map(serde_json::Value::from),
                        "{context}"
                    );
                }
            }
            Outcome::Served => {
                assert!(!forwarded, "{context}");
                // A path under the prefix that names no endpoint: explain knows the 404.
                if let Some(status) = said.status {
                    assert_eq!(reply.status.as_u16(), status, "{context}");
                }
            }
            Outcome::Deny | Outcome::Refused => {
                assert_eq!(Some(reply.status.as_u16()), said.status, "{context}");
                assert!(!forwarded, "{context}");
                // HEAD answers carry no body; every other refusal is gatehouse's JSON.
                if let Some(body) = &body {
                    assert_eq!(
                        body["error"]["code"].as_str(),
                        said.code.as_deref(),
                        "{context}"
                    );
                    if said.outcome == Outcome::Refused {
                        assert_eq!(
                            body["error"]["message"].as_str(),
                            Some(said.reason.as_str()),
                            "{context}"
                        );
                    }
                }
            }
        }
    }
    // The generator reaches every outcome, so the agreement means something.
    for outcome in ["allow", "served", "deny", "refused"] {
        assert!(seen.get(outcome).copied().unwrap_or(0) >= 10, "{seen:?}");
    }
    gh.stop().await;
}
