//! gatehouse: an authentication sidecar.
//!
//! A reverse proxy in front of an unmodified upstream API. It serves the auth endpoints
//! itself (users and sessions in an embedded sled store, argon2id passwords), and on every
//! other request verifies the bearer JWT, checks revocation in memory, applies route
//! policies and rate limits, and forwards with identity headers.
//!
//! # Layout, in reading order
//!
//! - [`server`]: listeners, connections, graceful shutdown; [`tls`]: certificates, reload.
//! - [`reload`]: the config generation in force, swapped whole on SIGHUP or a file change.
//! - [`gate`]: the request pipeline, one async function from request to response.
//! - [`decide`]: the gate's pure half (refusals, path, auth prefix, rule, verdict), which
//!   [`explain`] (`policy explain`, `policy test`) calls too.
//! - [`forward`]: forward-auth: reading the request an ingress asks about, the 200 it
//!   copies identity headers from; decided by the gate's own steps.
//! - [`guard`]: bearer authentication and rate limits, for the gate and the auth endpoints.
//! - [`response`]: the response body type and the responses gatehouse writes itself.
//! - [`hygiene`]: requests refused before anything is decided (overrides, hosts, CONNECT).
//! - [`path`]: request-path normalisation and case folding, done once before policy.
//! - [`policy`]: route rules and roles, compiled once; no IO.
//! - [`token`]: access-token issue and verification; opaque token helpers.
//! - [`revocation`]: the in-memory revocation cache the proxy path checks.
//! - [`client_ip`], [`ratelimit`]: who the client is; per-key rate limits.
//!   [`shared_limits`]: the auth classes and cooldowns, shared across replicas in Redis
//!   (the only Redis importer).
//! - [`proxy`]: the only module that talks to the upstream; header rewriting both ways.
//! - [`websocket`]: splicing an authorised WebSocket upgrade both ways.
//! - [`auth`]: the identity endpoints under `auth.prefix` (HTTP handlers and pages).
//! - [`accounts`]: the accounts service under them: users, sessions, recovery, admin
//!   actions, with no HTTP types; the `user` CLI calls it too. [`cooldown`]: its cooldowns.
//! - [`store`]: the store trait and its sled implementation (the only sled importer).
//! - [`password`]: argon2id hashing on the blocking pool, password policy; [`imported_hash`]:
//!   the schemes of hashes imported from other systems (bcrypt, scrypt, pbkdf2, argon2).
//! - [`mfa`]: the TOTP second factor's pure half: codes, recovery codes, sealed secrets.
//! - [`email`]: reset and verification mails, delivered from a queue over SMTP.
//! - [`ops`], [`metrics`], [`logging`]: health, readiness, Prometheus, tracing.
//!   [`wellknown`]: the published keys (JWKS) and discovery documents.
//! - [`config`]: TOML + env, validated once; [`error`]: the one error type.
//! - [`app`]: the shared state (the process-long core and the compiled config); [`cli`], [`usercli`], [`demo`]: the command line.
//!
//! ARCHITECTURE.md tells the life of a request step by step.

pub mod accounts;
pub mod app;
pub mod auth;
pub mod cli;
pub mod client_ip;
pub mod clock;
pub mod config;
pub mod cooldown;
pub mod decide;
pub mod demo;
pub mod email;
pub mod error;
pub mod explain;
pub mod forward;
pub mod gate;
pub mod guard;
pub mod hygiene;
pub mod imported_hash;
pub mod issuers;
pub mod logging;
pub mod metrics;
pub mod mfa;
pub mod ops;
pub mod password;
pub mod path;
pub mod policy;
pub mod proxy;
pub mod ratelimit;
pub mod reload;
pub mod response;
pub mod revocation;
pub mod server;
pub mod shared_limits;
pub mod store;
pub mod tls;
pub mod token;
pub mod upstream;
pub mod usercli;
pub mod websocket;
pub mod wellknown;
