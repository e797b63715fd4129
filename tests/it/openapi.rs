//! The OpenAPI document (`docs/openapi.json`, served at `{prefix}/openapi.json`) and the auth
//! router agree: the document is an OpenAPI 3.1 document whose every `$ref` resolves, every
//! endpoint the router knows (`metrics::AUTH_ENDPOINTS`, kept in step with `auth::handle`)
//! has its paths in it, and for every documented path the server serves exactly the
//! documented methods: each documented one is answered by a handler, each other one with
//! 405. The conformance of bodies, statuses and content types is schemathesis' job
//! (tests/schemathesis/run.sh).

use bytes::Bytes;
use http::Method;

use crate::harness::Gatehouse;

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Every `$ref` in `value` names something in `root`.
fn check_refs(root: &serde_json::Value, value: &serde_json::Value, at: &str) {
    match value {
        serde_json::Value::Object(map) => {
            if let Some(target) = map.get("$ref").and_then(|r| r.as_str()) {
                let pointer = target
                    .strip_prefix('#')
                    .unwrap_or_else(|| panic!("{at}: external $ref {target}"));
                assert!(
                    root.pointer(pointer).is_some(),
                    "{at}: $ref {target} resolves to nothing"
                );
            }
            for (k, v) in map {
                check_refs(root, v, &format!("{at}/{k}"));
            }
        }
        serde_json::Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                check_refs(root, v, &format!("{at}/{i}"));
            }
        }
        _ => {}
    }
}

#[test]
fn the_document_is_structurally_openapi_3_1() {
    let doc: serde_json::Value = serde_json::from_str(gatehouse::auth::openapi::DOCUMENT)
        .expect("docs/openapi.json is not JSON");
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    let paths = doc["paths"].as_object().expect("paths");
    let mut operation_ids = std::collections::BTreeSet::new();
    for (path, item) in paths {
        assert!(path.starts_with('/'), "{path}");
        let item = item.as_object().expect("path item");
        assert!(!item.is_empty(), "{path} has no operation");
        for (method, operation) in item {
            assert!(METHODS.contains(&method.as_str()), "{path}: {method}");
            let id = operation["operationId"].as_str().expect("operationId");
            assert!(
                operation_ids.insert(id.to_string()),
                "operationId {id} twice"
            );
            let responses = operation["responses"].as_object().expect("responses");
            assert!(!responses.is_empty(), "{method} {path}: no responses");
            for (status, response) in responses {
                assert!(
                    status.len() == 3
                        && status.parse::<u16>().is_ok_and(|s| (100..600).contains(&s)),
                    "{method} {path}: status {status}"
                );
                assert!(
                    response.get("$ref").is_some() || response["description"].is_string(),
                    "{method} {path} {status}: a response needs a description"
                );
            }
            // Path templates and path parameters match.
            for segment in path.split('/').filter(|s| s.starts_with('{')) {
                let name = segment.trim_matches(|c| c == '{' || c == '}');
                let declared = operation["parameters"].as_array().is_some_and(|ps| {
                    ps.iter()
                        .any(|p| p["in"] == "path" && p["name"] == name && p["required"] == true)
                });
                assert!(
                    declared,
                    "{method} {path}: path parameter {name} not declared"
                );
            }
        }
    }
    check_refs(&doc, &doc, "#");
    // Every error code the server can answer with (read from `Error::code` in src/error.rs)
    // is in the Error schema, and nothing else is.
    let codes = doc.pointer("/components/schemas/Error/properties/error/properties/code/enum");
    let mut documented: Vec<&str> = codes
        .and_then(|c| c.as_array())
        .expect("error codes")
        .iter()
        .filter_map(|c| c.as_str())
        .collect();
    let source = include_str!("../../src/error.rs");
    let body = source
        .split("pub fn code(&self) -> &'static str {")
        .nth(1)
        .and_then(|rest| rest.split("\n    }\n").next())
        .expect("Error::code in src/error.rs");
    let mut served: Vec<&str> = body
        .split("=> \"")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .collect();
    served.sort_unstable();
    served.dedup();
    documented.sort_unstable();
    assert!(served.len() >= 20, "{served:?}");
    assert_eq!(documented, served, "error codes: document vs Error::code");
}

#[tokio::test]
async fn documented_routes_and_served_routes_agree() {
    // Forward-auth on, so its documented endpoints answer (404 when it is off).
    let gh = Gatehouse::start("[forward_auth]\nenabled = true\n", &[]).await;
    let served = gh.get("/auth/openapi.json").await;
    served.expect(200);
    assert_eq!(served.header("content-type"), Some("application/json"));
    let doc = served.json();
    let written: serde_json::Value =
        serde_json::from_str(gatehouse::auth::openapi::DOCUMENT).unwrap();
    assert_eq!(doc, written, "the defaults serve the document as written");
    let paths = doc["paths"].as_object().unwrap();

    // Code → document: every endpoint the router knows.
    for endpoint in gatehouse::metrics::AUTH_ENDPOINTS {
        let full = format!("/auth{endpoint}");
        let present = if endpoint == "/admin" {
            paths.keys().any(|p| p.starts_with("/auth/admin/"))
        } else {
            paths.contains_key(&full)
        };
        assert!(present, "{full} is served but not in docs/openapi.json");
    }

    // Document ↔ server: documented methods are handled, the others answer 405.
    let victim = gh.register("victim@example.com").await["user"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let admin = gh.token("openapi-admin", &["admin"]);
    // Nothing else answers under the prefix.
    for path in ["/auth/nope", "/auth/admin/nope", "/auth/admin/users/x/y"] {
        gh.send(
            Method::GET,
            path,
            &[("authorization", &format!("Bearer {admin}"))],
            Bytes::new(),
        )
        .await
        .expect_error(404, "NOT_FOUND");
    }
    let mut probes = Vec::new();
    for (path, item) in paths.iter().filter(|(p, _)| p.starts_with("/auth/")) {
        let concrete = path.replace("{id}", &victim).replace("{path}", "api/items");
        // Destructive methods last, so the victim exists for the others; logout at the end.
        for method in ["GET", "HEAD", "PUT", "PATCH", "POST", "DELETE"] {
            // HEAD is implied by GET (HTTP semantics); the document lists GET only.
            let listed = if method == "HEAD" { "get" } else { method };
            let documented = item.get(listed.to_ascii_lowercase()).is_some();
            let order = match (path.as_str(), method) {
                ("/auth/logout", _) => 2,
                (_, "DELETE") => 1,
                _ => 0,
            };
            probes.push((order, concrete.clone(), method, documented));
        }
    }
    probes.sort_by_key(|p| p.0);
    for (_, path, method, documented) in probes {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let reply = gh
            .send(
                method.clone(),
                &path,
                &[
                    ("content-type", "application/json"),
                    ("authorization", &format!("Bearer {admin}")),
                ],
                Bytes::from_static(b"{}"),
            )
            .await;
        let status = reply.status.as_u16();
        if documented {
            assert_ne!(
                status, 405,
                "{method} {path} is documented but refused: {reply:?}"
            );
            // The router's own 404 says NOT_FOUND; a routed endpoint may answer 404 with a
            // code of its own (MFA_NOT_CONFIGURED: a feature that is off).
            let code = serde_json::from_slice::<serde_json::Value>(&reply.body)
                .ok()
                .and_then(|v| v["error"]["code"].as_str().map(str::to_owned));
            let unrouted = status == 404 && code.as_deref().is_none_or(|c| c == "NOT_FOUND");
            assert!(
                !unrouted || path.contains(&victim),
                "{method} {path} is documented but not found: {reply:?}"
            );
        } else {
            assert_eq!(
                status, 405,
                "{method} {path} is served but not documented: {reply:?}"
            );
            // `Allow` names exactly the documented methods (and HEAD with GET).
            let item = paths
                .iter()
                .find(|(p, _)| p.replace("{id}", &victim).replace("{path}", "api/items") == path)
                .map(|(_, item)| item)
                .unwrap();
            let mut expected: Vec<String> = ["GET", "PUT", "POST", "DELETE", "PATCH"]
                .into_iter()
                .filter(|m| item.get(m.to_ascii_lowercase()).is_some())
                .map(String::from)
                .collect();
            if expected.iter().any(|m| m == "GET") {
                expected.push("HEAD".into());
            }
            let mut allowed: Vec<String> = reply
                .header("allow")
                .unwrap_or_default()
                .split(',')
                .map(|m| m.trim().to_string())
                .filter(|m| !m.is_empty())
                .collect();
            expected.sort();
            allowed.sort();
            assert_eq!(allowed, expected, "{path}: Allow and the document differ");
        }
    }
    gh.stop().await;
}

/// The published keys and discovery documents (outside the prefix): each documented path
/// answers its documented methods and 405 to the others.
#[tokio::test]
async fn documented_well_known_paths_are_served() {
    let gh = Gatehouse::start(
        "",
        &[("GATEHOUSE_SERVER_PUBLIC_URL", "https://id.example.com")],
    )
    .await;
    let doc: serde_json::Value = serde_json::from_str(gatehouse::auth::openapi::DOCUMENT).unwrap();
    let paths = doc["paths"].as_object().unwrap();
    let well_known: Vec<_> = paths
        .iter()
        .filter(|(p, _)| p.starts_with("/.well-known/"))
        .collect();
    assert_eq!(well_known.len(), 3, "{:?}", paths.keys());
    for (path, item) in well_known {
        for method in ["GET", "HEAD", "PUT", "PATCH", "POST", "DELETE"] {
            let listed = if method == "HEAD" { "get" } else { method };
            let documented = item.get(listed.to_ascii_lowercase()).is_some();
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            let reply = gh.send(method.clone(), path, &[], Bytes::new()).await;
            let expected = if documented { 200 } else { 405 };
            assert_eq!(
                reply.status.as_u16(),
                expected,
                "{method} {path}: {reply:?}"
            );
        }
    }
    gh.stop().await;
}
