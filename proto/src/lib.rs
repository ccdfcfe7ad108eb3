//! Tollgate's gRPC API, generated from `proto/tollgate/v1/*.proto`.
//!
//! Without the `grpc` feature only the prost messages are built: that is what the wasm filter
//! uses to encode the calls it sends with `dispatch_grpc_call`.

#[allow(clippy::all, clippy::pedantic)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/tollgate.v1.rs"));
}

/// Fully qualified gRPC service names, as the filter names them in `dispatch_grpc_call`.
pub mod service {
    pub const AUDIT: &str = "tollgate.v1.Audit";
    pub const APPROVALS: &str = "tollgate.v1.Approvals";
    pub const REVOCATIONS: &str = "tollgate.v1.Revocations";
}
