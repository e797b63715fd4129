//! Fuzzers for every parser gatehouse exposes to clients or operators, on stable Rust.
//!
//! One test per target; each replays its corpus (`tests/fuzz/corpus/<target>/`), then
//! generates and mutates inputs for `GATEHOUSE_FUZZ_SECONDS` (default 1 s per target, so
//! `cargo test` stays quick) from `GATEHOUSE_FUZZ_SEED`, checking properties on every
//! input. CI runs a longer, still seeded, pass:
//!
//! ```sh
//! GATEHOUSE_FUZZ_SECONDS=30 cargo test --locked --test fuzz -- --test-threads=2
//! ```
//!
//! | target | code under test | oracle |
//! |---|---|---|
//! | `path` | `path::normalize`, `fold_case`, `without_format_suffix`, `Policy::decide` on the result | canonical form, idempotence |
//! | `token` | `token::bearer`, `Tokens::verify` (fast and library paths) | an HMAC written here; a `jsonwebtoken` reference |
//! | `policy` | `Policy::compile`, `Policy::decide` | a naive glob matcher written here |
//! | `config` | `Config::from_toml` with `GATEHOUSE_*` variables | error keys |
//! | `auth` | `/auth/*` bodies through an in-process gatehouse, `wire::Form::parse` | no 5xx, JSON error bodies |
//! | `hygiene` | `hygiene::check` | the module's promises, restated |
//! | `ws` | the WebSocket auth channel's messages through an in-process gatehouse | one answer each, echoed id/action, close codes |
//!
//! # Why not libFuzzer or AFL
//!
//! `cargo fuzz` needs nightly, which cannot be installed here. `cargo-afl` works on stable,
//! but it rebuilds the whole dependency tree with instrumentation (aws-lc-rs included),
//! runs each target as its own forking process under `afl-fuzz`, wants the host tuned
//! (core pattern, CPU governor), and is not reproducible run to run: a poor fit for a
//! bounded, non-flaky CI step, and no fit at all for the target that drives a whole server.
//!
//! This harness instead is a plain integration test, built by the `cargo test` that CI runs
//! anyway, with no dependency beyond the crate's own. It makes up for the missing coverage
//! feedback in two ways: the generators are structure-aware (they build signed tokens,
//! valid configs, glob patterns and normalised paths, so inputs get past the first check),
//! and inputs that reach an outcome not seen before (a new refusal reason, a token accepted,
//! a new error key) are kept as mutation parents. Every iteration's randomness comes from
//! the seed and its index, so a run is reproducible, and a finding is shrunk and saved.
//! See `README.md` in this directory for running longer and adding a target.

mod auth;
mod config;
mod engine;
mod hygiene;
mod path;
mod policy;
mod token;
mod ws;

use engine::{Budget, run};

/// The share of the per-target budget the in-process server targets get: each of its
/// executions is an HTTP round trip, so it finds less per second and costs more wall time.
const AUTH_SHARE: f64 = 0.33;

#[test]
fn fuzz_path() {
    run(&mut path::PathTarget::new(), &Budget::from_env());
}

#[test]
fn fuzz_token() {
    run(&mut token::TokenTarget::new(), &Budget::from_env());
}

#[test]
fn fuzz_policy() {
    run(&mut policy::PolicyTarget, &Budget::from_env());
}

#[test]
fn fuzz_config() {
    run(&mut config::ConfigTarget::new(), &Budget::from_env());
}

#[test]
fn fuzz_auth() {
    run(
        &mut auth::AuthTarget::new(),
        &Budget::from_env().scaled(AUTH_SHARE),
    );
}

#[test]
fn fuzz_hygiene() {
    run(&mut hygiene::HygieneTarget, &Budget::from_env());
}

#[test]
fn fuzz_ws() {
    run(
        &mut ws::WsTarget::new(),
        &Budget::from_env().scaled(AUTH_SHARE),
    );
}
