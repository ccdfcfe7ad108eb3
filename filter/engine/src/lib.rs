//! Tollgate's decision engine: what the wasm filter decides on every request, and what the
//! control plane checks again for itself (an approval request is judged by the control plane's
//! own reading of the same policy, never by what the request says about itself).
//!
//! Plain Rust with no proxy-wasm types, tested natively: masking ([`mask`]), JSON-RPC parsing
//! ([`jsonrpc`]), the policy ([`policy`]), verified identities ([`identity`]), the numbers a
//! record may hold ([`ijson`]) and URLs as they may be recorded ([`redact`]).

pub mod identity;
pub mod ijson;
pub mod jsonrpc;
pub mod mask;
pub mod policy;
pub mod redact;
