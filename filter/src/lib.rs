//! Tollgate's proxy-wasm filter.
//!
//! Everything that decides something is plain Rust with no proxy-wasm types, tested natively with
//! `cargo test`: masking ([`mask`]), JSON-RPC parsing ([`jsonrpc`]), the request decision
//! ([`flow`]), audit records ([`record`]), configuration ([`config`]), and one request's course
//! through its callbacks ([`exchange`], behind a host seam). The Envoy glue lives in `glue/` and
//! is compiled only for `wasm32`.

pub mod approval;
pub mod config;
pub mod exchange;
pub mod failopen;
pub mod flow;
pub mod identity;
pub mod jsonrpc;
pub mod mask;
pub mod metrics;
pub mod policy;
pub mod record;
pub mod revocation;
pub mod timefmt;

#[cfg(target_arch = "wasm32")]
mod glue;
