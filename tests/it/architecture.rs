//! The code's shape, checked: dependencies between modules point one way.
//!
//! Every file under `src/` is a module node (`auth/account.rs` is `auth::account`,
//! `store/mod.rs` is `store`). A node depends on another when its code (comments aside)
//! names a path into it: `crate::a::b`, `super::x`, `self::x`, or a child module by name —
//! except a folder's `mod.rs` naming its own files, which is how it declares, dispatches to
//! and re-exports them (see [`is_child_of`]).
//! The test fails when the graph has a cycle, naming it, so "handlers → services → store"
//! cannot quietly turn into a knot again.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module path (`auth::account`) → file.
fn modules(src: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let relative = path.strip_prefix(src).expect("under src");
            let mut parts: Vec<String> = relative
                .with_extension("")
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|p| p == "mod") {
                parts.pop();
            }
            let name = parts.join("::");
            // The crate roots are not modules anyone imports.
            if name != "lib" && name != "main" {
                out.insert(name, path);
            }
        }
    }
    out
}

/// The paths a file's production code names, `a::b::c` spelled with `::`: comments, string
/// literals and the unit tests (from `#[cfg(test)]` on) excluded. Single-segment paths
/// (`super::*`) name no module of their own.
fn paths_in(text: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    // A `use a::{` group spread over several lines is joined into one line first.
    let mut lines = Vec::new();
    let mut group: Option<String> = None;
    for line in text.lines() {
        if line.trim_start().starts_with("#[cfg(test)]") {
            break;
        }
        let code = line.trim();
        if code.starts_with("//") {
            continue;
        }
        match group.as_mut() {
            Some(open) => {
                open.push(' ');
                open.push_str(code);
                if code.contains('}') {
                    lines.extend(group.take());
                }
            }
            None if code.contains("::{") && !code.contains('}') => group = Some(code.to_string()),
            None => lines.push(code.to_string()),
        }
    }
    for line in &lines {
        let code = line.trim_start();
        if code.starts_with("//") {
            continue;
        }
        // Drop string literals and trailing comments, roughly: enough for this codebase.
        let mut cleaned = String::new();
        let mut in_string = false;
        let mut previous = ' ';
        for c in code.chars() {
            if c == '"' && previous != '\\' {
                in_string = !in_string;
            } else if !in_string {
                cleaned.push(c);
            }
            previous = c;
        }
        let cleaned = cleaned.split("//").next().unwrap_or_default();
        // Expand `use a::{b, c::d}` groups one level, which is how this code writes them.
        let mut chunks = vec![cleaned.to_string()];
        if let Some((prefix, group)) = cleaned.split_once("::{") {
            let prefix = prefix.rsplit([' ', '(']).next().unwrap_or_default();
            for item in group.trim_end_matches(['}', ';']).split(',') {
                chunks.push(format!("{prefix}::{}", item.trim()));
            }
        }
        for chunk in chunks {
            let bytes = chunk.as_bytes();
            let mut i = 0;
            while i < bytes.len() {
                let starts = (bytes[i].is_ascii_alphabetic() || bytes[i] == b'_')
                    && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'));
                if !starts {
                    i += 1;
                    continue;
                }
                let mut j = i;
                while j < bytes.len()
                    && (bytes[j].is_ascii_alphanumeric() || matches!(bytes[j], b'_' | b':'))
                {
                    j += 1;
                }
                let word = &chunk[i..j];
                let path: Vec<String> = word
                    .split("::")
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect();
                if path.len() >= 2 {
                    out.push(path);
                }
                i = j.max(i + 1);
            }
        }
    }
    out
}

/// The module a path leads into, from `module`, if it is one of ours.
fn resolve(module: &str, path: &[String], known: &BTreeMap<String, PathBuf>) -> Option<String> {
    let here: Vec<&str> = if module.is_empty() {
        Vec::new()
    } else {
        module.split("::").collect()
    };
    let (mut base, rest): (Vec<String>, &[String]) = match path.first().map(String::as_str) {
        Some("crate") => (Vec::new(), &path[1..]),
        Some("super") => (
            here[..here.len().saturating_sub(1)]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            &path[1..],
        ),
        Some("self") => (here.iter().map(|s| s.to_string()).collect(), &path[1..]),
        Some(first) => {
            let child = [module, first]
                .iter()
                .filter(|s| !s.is_empty())
                .copied()
                .collect::<Vec<_>>()
                .join("::");
            if !known.contains_key(&child) {
                return None;
            }
            (here.iter().map(|s| s.to_string()).collect(), path)
        }
        None => return None,
    };
    let mut found = (!base.is_empty()).then(|| base.join("::"));
    for segment in rest {
        base.push(segment.clone());
        let candidate = base.join("::");
        if known.contains_key(&candidate) {
            found = Some(candidate);
        } else {
            break;
        }
    }
    found.filter(|f| known.contains_key(f))
}

/// Whether `module` is a file of the folder whose `mod.rs` is `parent` (`store::sled` of
/// `store`). A folder's `mod.rs` is its front door: it declares its files, dispatches to
/// them and re-exports from them, while they build on what it defines. That edge is
/// structure, not a dependency, and is left out; every other edge counts, between siblings
/// (`auth::account` ↔ `auth::recovery`) and across folders alike.
fn is_child_of(module: &str, parent: &str) -> bool {
    module
        .strip_prefix(parent)
        .and_then(|rest| rest.strip_prefix("::"))
        .is_some_and(|rest| !parent.is_empty() && !rest.contains("::"))
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let known = modules(&src);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, file) in &known {
        let text = std::fs::read_to_string(file).expect("read module");
        let targets = edges.entry(module.clone()).or_default();
        for path in paths_in(&text) {
            if let Some(target) = resolve(module, &path, &known)
                && target != *module
                && !is_child_of(&target, module)
            {
                targets.insert(target);
            }
        }
    }
    edges
}

/// One cycle, if the graph has any (depth-first search with colours).
fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(node.to_string(), 1);
        stack.push(node.to_string());
        for next in edges.get(node).into_iter().flatten() {
            match state.get(next.as_str()).copied().unwrap_or(0) {
                1 => {
                    let from = stack.iter().position(|n| n == next).unwrap_or(0);
                    let mut cycle = stack[from..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(cycle) = visit(next, edges, state, stack) {
                        return Some(cycle);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(node.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in edges.keys() {
        if state.get(node.as_str()).copied().unwrap_or(0) == 0 {
            let mut stack = Vec::new();
            if let Some(cycle) = visit(node, edges, &mut state, &mut stack) {
                return Some(cycle);
            }
        }
    }
    None
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let edges = graph();
    if let Some(cycle) = find_cycle(&edges) {
        panic!(
            "import cycle: {}\nEvery module's dependencies:\n{}",
            cycle.join(" → "),
            edges
                .iter()
                .map(|(m, t)| format!(
                    "  {m} → {}",
                    t.iter().cloned().collect::<Vec<_>>().join(", ")
                ))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// The layering the code is meant to have, beyond the absence of cycles.
#[test]
fn handlers_call_the_service_and_the_service_knows_no_http() {
    let edges = graph();
    let deps = |m: &str| edges.get(m).cloned().unwrap_or_default();
    for (module, targets) in &edges {
        // Nothing under the handlers is reached from the service, the store, the app state
        // or the CLI.
        let lower = module.starts_with("accounts")
            || module.starts_with("store")
            || module == "app"
            || module == "usercli";
        if lower {
            for t in targets {
                assert!(
                    !t.starts_with("auth") && t != "gate",
                    "{module} depends on the handler module {t}"
                );
            }
        }
        // The store depends on nothing that depends on the store.
        if module.starts_with("store") {
            for t in targets {
                assert!(
                    t.starts_with("store") || !deps(t).iter().any(|d| d.starts_with("store")),
                    "{module} depends on {t}, which depends on the store"
                );
            }
        }
    }
    // The service has no HTTP types.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/accounts");
    for entry in std::fs::read_dir(&src).expect("read accounts") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("read");
        for forbidden in [
            "use http::",
            "use hyper",
            "http_body",
            "Request<",
            "Response<",
        ] {
            assert!(
                !text.contains(forbidden),
                "{} mentions {forbidden}: the service must not know HTTP",
                path.display()
            );
        }
    }
}

#[test]
fn the_checker_sees_a_cycle() {
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    edges.entry("a".into()).or_default().insert("b".into());
    edges.entry("b".into()).or_default().insert("c".into());
    edges.entry("c".into()).or_default().insert("a".into());
    assert_eq!(
        find_cycle(&edges),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    let paths =
        paths_in("use super::{Caller, users::check};\nlet x = crate::a::b(); // crate::z\n");
    assert!(paths.contains(&vec!["super".to_string(), "users".into(), "check".into()]));
    assert!(paths.contains(&vec!["crate".to_string(), "a".into(), "b".into()]));
    assert!(!paths.iter().any(|p| p.contains(&"z".to_string())));
}
