//! Tollgate's audit log as an auditor needs it, with no store and no network: the canonical
//! form of records (RFC 8785), the hash chain, the Merkle tree (RFC 6962), signed checkpoints
//! (C2SP signed-note and tlog-checkpoint), and verification of a log or an export bundle.
//! The control plane builds on it; `tollgate-verify` is it, alone.

pub mod bundle;
pub mod canonical;
pub mod chain;
pub mod cli;
pub mod ijson;
pub mod key_history;
pub mod merkle;
pub mod note;
pub mod policy;
pub mod scan;
pub mod verify;
pub mod witness;
