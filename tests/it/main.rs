//! Integration tests: gatehouse in-process (and, where it matters, the real binary) against
//! real upstreams on ephemeral ports. One test binary, a module per area.

mod abuse;
mod architecture;
mod assertion;
mod auth;
mod auth_channel;
mod binary;
mod crash;
mod dashboards;
mod explain;
mod forward;
mod harness;
mod import;
mod ingress;
mod issuers;
mod keys;
mod mfa;
mod openapi;
mod ops;
mod pg;
mod policy;
mod proxy;
mod recovery;
mod relay;
mod reload;
mod replicas;
mod shared_limits;
mod smtp_sink;
mod store_contract;
mod store_copy;
mod tls;
mod tokens;
mod websocket;
