//! Live config reload (issue 11, point 1), in-process: what a reload carries over and what
//! it replaces. The real binary, SIGHUP and the file watcher are in `binary.rs`.

use gatehouse::config::{Config, Purpose};
use gatehouse::reload::Outcome;
use http::Method;

use crate::harness::{Gatehouse, ROUTES};

/// A route named `a`, 2 requests an hour per client (an hour, so the test never sees a
/// token come back however slow the machine).
const A: &str =
    "[[routes]]\nname = \"a\"\npath = \"/a/**\"\naccess = \"public\"\nrate_limit = \"2/1h\"\n";
/// A route named `b`, 100 an hour.
const B: &str =
    "[[routes]]\nname = \"b\"\npath = \"/b/**\"\naccess = \"public\"\nrate_limit = \"100/1h\"\n";
/// A route named `c`, unlimited.
const C: &str = "[[routes]]\nname = \"c\"\npath = \"/c/**\"\naccess = \"public\"\n";

fn applied(outcome: Outcome) -> (String, Vec<&'static str>) {
    match outcome {
        Outcome::Applied {
            summary,
            needs_restart,
        } => (summary, needs_restart),
        Outcome::Refused(reasons) => panic!("reload refused:\n{}", reasons.join("\n")),
    }
}

async fn metrics(gh: &Gatehouse) -> String {
    gh.get("/metrics").await.expect(200).text()
}

fn count(metrics: &str, series: &str) -> Option<u64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

fn reloads(metrics: &str, result: &str) -> Option<u64> {
    count(
        metrics,
        &format!("gatehouse_config_reloads_total{{result=\"{result}\"}}"),
    )
}

/// Rate-limit buckets follow the route's label, never its index: reordering the rules
/// keeps `a`'s spent budget on `a` and gives `b` none of it; changing `a`'s rate starts it
/// fresh. The request counters follow the labels the same way.
#[tokio::test]
async fn limiters_and_counters_follow_route_labels_across_reloads() {
    let gh = Gatehouse::start(&format!("{A}{B}"), &[]).await;
    gh.get("/a/1").await.expect(200);
    gh.get("/a/2").await.expect(200);
    gh.get("/a/3").await.expect(429);

    // Reordered: `b` is now rule 0, where `a` was.
    let (summary, restart) = applied(gh.reload(&format!("{B}{A}")));
    assert!(restart.is_empty(), "{restart:?}");
    assert_eq!(summary, "policy changed, routes' rate_limit changed");
    gh.get("/a/4").await.expect(429);
    for i in 0..3 {
        gh.get(&format!("/b/{i}")).await.expect(200);
    }

    let text = metrics(&gh).await;
    let series = |route: &str, outcome: &str| {
        format!(
            r#"gatehouse_requests_total{{method_class="read",outcome="{outcome}",route="{route}"}}"#
        )
    };
    assert_eq!(count(&text, &series("a", "forwarded")), Some(2), "{text}");
    assert_eq!(
        count(&text, &series("a", "rate_limited")),
        Some(2),
        "{text}"
    );
    assert_eq!(count(&text, &series("b", "forwarded")), Some(3), "{text}");
    assert_eq!(
        count(&text, &series("b", "rate_limited")),
        Some(0),
        "{text}"
    );

    // A new rate for `a`: fresh buckets.
    let a3 = A.replace("rate_limit = \"2/1h\"", "rate_limit = \"3/1h\"");
    applied(gh.reload(&format!("{B}{a3}")));
    gh.get("/a/5").await.expect(200);

    // `a` removed, `c` added: `a` is no longer exported, `c` is, at 0, and a path `a`
    // covered now falls to the default (deny).
    let (summary, _) = applied(gh.reload(&format!("{B}{C}")));
    assert_eq!(summary, "policy changed, routes' rate_limit changed");
    gh.get("/a/6").await.expect(403);
    gh.get("/c/1").await.expect(200);
    let text = metrics(&gh).await;
    assert!(!text.contains("route=\"a\""), "{text}");
    assert_eq!(count(&text, &series("c", "forwarded")), Some(1), "{text}");
    assert_eq!(count(&text, &series("b", "forwarded")), Some(3), "{text}");
    assert_eq!(reloads(&text, "ok"), Some(3));
}

/// A config that fails validation is refused whole, with every error, and changes nothing;
/// it is counted as an error.
#[tokio::test]
async fn a_bad_config_is_refused_whole() {
    let gh = Gatehouse::start(ROUTES, &[]).await;
    let before = gh.current.load();
    let token = gh.token("u1", &["reader"]);
    gh.get_with("/api/x", &[("authorization", &format!("Bearer {token}"))])
        .await
        .expect(200);
    // A route opened up, next to three mistakes: none of it may apply.
    let bad = format!(
        "[[routes]]\npath = \"/api/**\"\naccess = \"public\"\n{ROUTES}\n\
         [[routes]]\npath = \"/x/**\"\nacess = \"public\"\n\
         [auth]\nreset_token_ttl = \"15 minutes\"\n\
         [headers]\nuser_id = \"not a header\"\n"
    );
    let Outcome::Refused(reasons) = gh.reload(&bad) else {
        panic!("a bad config was applied");
    };
    let all = reasons.join("\n");
    for key in ["routes[6].acess", "auth.reset_token_ttl", "headers.user_id"] {
        assert!(all.contains(key), "no error for {key}:\n{all}");
    }
    assert!(std::sync::Arc::ptr_eq(&before, &gh.current.load()));
    gh.get("/api/x").await.expect(401);
    let text = metrics(&gh).await;
    assert_eq!(reloads(&text, "error"), Some(1));
    assert_eq!(reloads(&text, "ok"), Some(0));
}

/// Keys that need a restart keep their running values and are named; everything else in
/// the same file applies: here the policy and `auth.registration`.
#[tokio::test]
async fn restart_keys_are_named_and_the_rest_applies() {
    let gh = Gatehouse::start(ROUTES, &[]).await;
    let next = format!(
        "[[routes]]\npath = \"/api/**\"\naccess = \"public\"\n{ROUTES}\n\
         [email]\nfrom = \"other@example.com\"\n\
         [auth]\nregistration = \"closed\"\n"
    );
    let (summary, restart) = applied(gh.reload(&next));
    assert_eq!(restart, ["email.from"]);
    assert_eq!(summary, "routes 5 → 6, auth changed");
    assert_eq!(
        gh.current.load().live.config.email.from,
        gh.app.live.config.email.from
    );
    gh.get("/api/x").await.expect(200);
    let r = gh
        .json(
            Method::POST,
            "/auth/register",
            None,
            serde_json::json!({"email": "ada@example.com", "password": crate::harness::PASSWORD}),
        )
        .await;
    r.expect(403);
}

/// A new `tokens.secret` applies at once: a token verified (and cached) under the old one
/// is refused, and tokens minted with the new one pass.
#[tokio::test]
async fn a_new_secret_voids_tokens_verified_under_the_old_one() {
    let gh = Gatehouse::start(ROUTES, &[]).await;
    let old = gh.token("u1", &["reader"]);
    let bearer = |t: &str| format!("Bearer {t}");
    // Twice: the second time it comes from the verified-token cache.
    for _ in 0..2 {
        gh.get_with("/api/x", &[("authorization", &bearer(&old))])
            .await
            .expect(200);
    }
    let rotated = "rotated-secret-0123456789abcdef-0123456789";
    let text = crate::harness::base_config(gh.upstream, &gh.dir.path().join("store"), ROUTES)
        .replace(crate::harness::SECRET, rotated);
    let loaded = Config::check(&text, Vec::new(), Purpose::Serve);
    let (summary, _) = applied(gh.current.apply(loaded, gatehouse::reload::Trigger::Signal));
    assert_eq!(summary, "tokens.secret changed");
    gh.get_with("/api/x", &[("authorization", &bearer(&old))])
        .await
        .expect(401);
    let new = gh.token("u1", &["reader"]);
    gh.get_with("/api/x", &[("authorization", &bearer(&new))])
        .await
        .expect(200);
    // The auth endpoints sign with the new secret too.
    gh.register("ada@example.com").await;
    let (access, _) = gh
        .session("ada@example.com", crate::harness::PASSWORD)
        .await;
    gh.json(
        Method::GET,
        "/auth/me",
        Some(&access),
        serde_json::Value::Null,
    )
    .await
    .expect(200);
}

/// `policy explain` decides with the config in force after a reload, as the gate does.
#[tokio::test]
async fn explain_and_the_gate_agree_after_a_reload() {
    use gatehouse::explain::{Identity, explain};
    let gh = Gatehouse::start(ROUTES, &[]).await;
    let opened = format!("[[routes]]\npath = \"/blocked/open/**\"\naccess = \"public\"\n{ROUTES}");
    applied(gh.reload(&opened));
    let config = &gh.current.load().live.config;
    for (path, status) in [
        ("/blocked/open/x", 200),
        ("/blocked/x", 403),
        ("/api/x", 401),
    ] {
        let said = explain(config, "GET", path, &Identity::Anonymous, 0).unwrap();
        gh.get(path).await.expect(status);
        assert_eq!(
            said.status.unwrap_or(200),
            status,
            "{path}: {}",
            said.text()
        );
    }
}
