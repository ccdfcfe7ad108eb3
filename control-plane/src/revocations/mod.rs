//! Revoked identities (docs/revocations.md): operators revoke and lift with their own OIDC
//! tokens (members of `serve --revocation-group`); every Envoy worker's filter lists the
//! active revocations (no token) and refuses callers whose verified claims match one.
//!
//! State lives beside the audit chain, table `revocations` ([`crate::store::Table`]): `rev_…` =
//! JSON [`Entry`] (lifted entries are kept, marked lifted) and `version` = the list's version
//! (big endian u64), bumped by every revoke and lift. Every change is written durably, then its
//! audit record appended durably, before the operator is answered.

pub mod registry;
pub mod service;

/// `tollgate serve` options for revocations.
#[derive(Debug, Clone, clap::Args)]
pub struct Settings {
    /// Operators in this group (`groups` claim of their token) may revoke and lift identities.
    #[arg(
        long,
        env = "TOLLGATE_REVOCATION_GROUP",
        default_value = "security-admins"
    )]
    pub revocation_group: String,
}
