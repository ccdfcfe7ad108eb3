//! Tollgate's proxy-wasm filter.
//!
//! Everything that decides something is plain Rust with no proxy-wasm types, tested natively with
//! `cargo test`: the engine shared with the control plane (`tollgate-engine`: masking, JSON-RPC,
//! policy, identity, re-exported here), the request decision ([`flow`]), audit records
//! ([`record`]), configuration ([`config`]), and one request's course through its callbacks
//! ([`exchange`], behind a host seam). The Envoy glue lives in `glue/` and is compiled only for
//! `wasm32`.

pub mod approval;
pub mod config;
pub mod exchange;
pub mod failopen;
pub mod flow;
pub mod metrics;
pub mod record;
pub mod revocation;
pub mod timefmt;

pub use tollgate_engine::{identity, jsonrpc, mask, policy};

#[cfg(target_arch = "wasm32")]
mod glue;
