//! The plugin configuration: the JSON in Envoy's wasm `configuration` (or an Istio WasmPlugin's
//! `pluginConfig`). Parsed once per configuration load; a bad one is refused whole.

use serde::Deserialize;

use crate::failopen::FailOpenConfig;
use crate::identity::ServiceAccounts;
use crate::mask::MaskConfig;
use crate::policy::{BatchMode, PolicyConfig};

/// Tollgate filter configuration. Every field has a safe default.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilterConfig {
    /// Envoy cluster of the control plane's gRPC API (needs `http2_protocol_options`).
    #[serde(default = "default_control_plane_cluster")]
    pub control_plane_cluster: String,
    /// The `:authority` of the filter's gRPC calls to the control plane. Default: the cluster
    /// name, except for istiod's `outbound|PORT|SUBSET|HOST` names (a `|` is not allowed in an
    /// authority, and the control plane's HTTP/2 server refuses it): then `HOST`.
    #[serde(default)]
    pub control_plane_authority: Option<String>,
    /// What the filter passes to `dispatch_grpc_call` as the target: the cluster name, or a
    /// serialized `envoy.config.core.v3.GrpcService` naming cluster and authority, which Envoy
    /// takes in its place. Derived at load.
    #[serde(skip)]
    pub control_plane_target: String,
    /// How long to wait for the control plane to acknowledge an audit append before failing
    /// closed.
    #[serde(default = "default_audit_timeout_ms")]
    pub audit_timeout_ms: u64,
    /// How often each worker refreshes the revocation list from the control plane.
    #[serde(default = "default_revocation_refresh_ms")]
    pub revocation_refresh_ms: u64,
    /// How long a call that needs approval is held waiting for the decision before the caller
    /// is told to retry once approved.
    #[serde(default = "default_approval_wait_ms")]
    pub approval_wait_ms: u64,
    /// The approval's page, `{id}` standing for the approval id: where a 2026-07-28 client is
    /// sent (URL elicitation) for a call that needs approval, also named in the answers to a
    /// held call (`approvalUrl`). Empty: no page; answers name the `tollgate approvals` command.
    #[serde(default = "default_approval_url")]
    pub approval_url: String,
    /// The jwt_authn provider's `payload_in_metadata` key: where the verified claims are.
    #[serde(default = "default_jwt_metadata_key")]
    pub jwt_metadata_key: String,
    /// The jwt_authn provider's `failed_status_in_metadata` key: why a token was refused.
    #[serde(default = "default_jwt_failure_key")]
    pub jwt_failure_key: String,
    /// The jwt_authn provider's `forward_payload_header`: the verified payload, base64url JSON.
    #[serde(default = "default_jwt_payload_header")]
    pub jwt_payload_header: String,
    /// URL of the OAuth protected resource metadata (RFC 9728) named in 401 answers.
    #[serde(default)]
    pub resource_metadata_url: Option<String>,
    /// Largest request body the filter buffers; past it the request gets 413.
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: usize,
    /// Largest `application/json` response the filter buffers to mask; past it the response is
    /// refused rather than passed unmasked.
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: usize,
    /// The MCP endpoint's path (Envoy normalises it first: `normalize_path`, `merge_slashes`).
    /// A request for any other path is refused with 404 and recorded; only this one is decided
    /// and forwarded.
    #[serde(default = "default_mcp_path")]
    pub mcp_path: String,
    /// Name of the upstream MCP server, as it appears in audit records.
    #[serde(default = "default_upstream")]
    pub upstream: String,
    /// Claims copied into audit records beside the standard ones (e.g. CI tokens' `actor`,
    /// `repository`, `workflow`).
    #[serde(default)]
    pub extra_claims: Vec<String>,
    /// Which callers are shared service accounts and who answers for them; by default none
    /// is (see docs/identity.md).
    #[serde(default)]
    pub service_accounts: ServiceAccounts,
    /// Card-number masking. Its `panRefKey` may not be given here (anyone who can read Envoy's
    /// admin `config_dump` would read it): see `pan_ref_key_env`.
    #[serde(default)]
    pub mask: MaskConfig,
    /// The environment variable of the wasm VM that holds the `panRef` HMAC key: Envoy passes
    /// it from its own environment (`vm_config.environment_variables.host_env_keys`; under
    /// Istio `vmConfig.env` with `valueFrom: HOST`), which a Kubernetes Secret fills.
    #[serde(default = "default_pan_ref_key_env")]
    pub pan_ref_key_env: String,
    /// The ordered rules deciding every MCP message (see docs/policy.md).
    #[serde(default)]
    pub policy: PolicyConfig,
    /// Reads that may pass while the control plane cannot acknowledge their audit record; their
    /// records are kept and appended once it is back (marked `failOpen`). Off by default.
    #[serde(default)]
    pub fail_open: FailOpenConfig,
    /// When a buffered answer may leave: `durable` (the default) once its response record is
    /// acknowledged, `pipelined` as soon as the record is sent (see README, "What a crash
    /// loses"). The request record is durable before forwarding either way.
    #[serde(default)]
    pub response_record: ResponseRecord,
}

/// When a buffered answer leaves the gateway relative to its response record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ResponseRecord {
    /// Held until the control plane acknowledges the record: no answer without its record.
    #[default]
    Durable,
    /// Released once the record is sent: saves the client one round trip to the control
    /// plane; an answer may leave without its record if Envoy or the control plane dies in
    /// that round trip (its request record is always there).
    Pipelined,
}

fn default_pan_ref_key_env() -> String {
    "TOLLGATE_PAN_REF_KEY".to_owned()
}
fn default_control_plane_cluster() -> String {
    "tollgate_control_plane".to_owned()
}
fn default_audit_timeout_ms() -> u64 {
    5_000
}
fn default_revocation_refresh_ms() -> u64 {
    1_000
}
fn default_approval_wait_ms() -> u64 {
    30_000
}
fn default_approval_url() -> String {
    "http://127.0.0.1:9470/approvals/{id}".to_owned()
}
fn default_jwt_metadata_key() -> String {
    "jwt_payload".to_owned()
}

fn default_jwt_failure_key() -> String {
    "jwt_failure".to_owned()
}
fn default_jwt_payload_header() -> String {
    "x-tollgate-jwt-payload".to_owned()
}
fn default_max_request_bytes() -> usize {
    1024 * 1024
}
fn default_max_response_bytes() -> usize {
    32 * 1024 * 1024
}
fn default_mcp_path() -> String {
    "/mcp".to_owned()
}
fn default_upstream() -> String {
    "mcp".to_owned()
}

impl FilterConfig {
    /// Parses the plugin configuration; an empty configuration means all defaults.
    pub fn from_json(bytes: &[u8]) -> Result<FilterConfig, String> {
        let bytes = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            bytes
        };
        let mut config: FilterConfig = serde_json::from_slice(bytes)
            .map_err(|e| format!("invalid tollgate configuration: {e}"))?;
        config
            .service_accounts
            .compile()
            .map_err(|e| format!("invalid tollgate configuration: {e}"))?;
        if config.policy.batch_mode == BatchMode::PerMessage {
            // Merging the gateway's errors into the server's (possibly streamed) answer is not
            // built yet; refusing the configuration beats silently refusing whole batches.
            return Err("invalid tollgate configuration: policy.batchMode \"perMessage\" is not supported by this filter; use \"wholeBatch\"".to_owned());
        }
        if config.mask.pan_ref_key.is_some() {
            return Err(format!(
                "invalid tollgate configuration: mask.panRefKey would be readable from Envoy's config_dump; put the key in the VM's environment variable {} (panRefKeyEnv) instead",
                config.pan_ref_key_env
            ));
        }
        config.control_plane_target = grpc_target(
            &config.control_plane_cluster,
            config.control_plane_authority.as_deref(),
        )?;
        Ok(config)
    }

    /// Takes the `panRef` key from the VM's environment (`env` looks a variable up). Only
    /// `display: panRef` needs it; the masker refuses that display without a key.
    pub fn with_pan_ref_key(mut self, env: impl Fn(&str) -> Option<String>) -> FilterConfig {
        if self.mask.display == crate::mask::Display::PanRef {
            self.mask.pan_ref_key = env(&self.pan_ref_key_env).filter(|k| !k.is_empty());
        }
        self
    }
}

/// `envoy.config.core.v3.GrpcService`, only as far as the filter names a cluster and authority.
#[derive(Clone, PartialEq, prost::Message)]
struct GrpcService {
    #[prost(message, optional, tag = "1")]
    envoy_grpc: Option<EnvoyGrpc>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct EnvoyGrpc {
    #[prost(string, tag = "1")]
    cluster_name: String,
    #[prost(string, tag = "2")]
    authority: String,
}

/// The `dispatch_grpc_call` target for `cluster` with `authority` (see
/// [`FilterConfig::control_plane_target`]).
fn grpc_target(cluster: &str, authority: Option<&str>) -> Result<String, String> {
    let derived = cluster
        .contains('|')
        .then(|| cluster.rsplit('|').next().unwrap_or_default());
    let Some(authority) = authority.or(derived).filter(|a| !a.is_empty()) else {
        return Ok(cluster.to_owned());
    };
    let service = GrpcService {
        envoy_grpc: Some(EnvoyGrpc {
            cluster_name: cluster.to_owned(),
            authority: authority.to_owned(),
        }),
    };
    // The SDK passes the target as a string: the encoding must be UTF-8, which it is while
    // every length fits in one byte.
    String::from_utf8(prost::Message::encode_to_vec(&service)).map_err(|_| {
        "invalid tollgate configuration: controlPlaneCluster and controlPlaneAuthority are too long together (at most 120 bytes)".to_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_is_all_defaults() {
        let config = FilterConfig::from_json(b"").unwrap();
        assert_eq!(config.control_plane_cluster, "tollgate_control_plane");
        assert_eq!(config.max_request_bytes, 1024 * 1024);
    }

    #[test]
    fn the_pan_ref_key_comes_from_the_environment_never_the_configuration() {
        let inline = FilterConfig::from_json(
            br#"{"mask":{"display":"panRef","panRefKey":"0123456789abcdef0123"}}"#,
        )
        .err()
        .unwrap();
        assert!(inline.contains("config_dump"), "{inline}");
        assert!(!inline.contains("0123456789abcdef0123"), "{inline}");
        let config =
            FilterConfig::from_json(br#"{"mask":{"display":"panRef"},"panRefKeyEnv":"K"}"#)
                .unwrap()
                .with_pan_ref_key(|name| (name == "K").then(|| "0123456789abcdef0123".to_owned()));
        assert_eq!(
            config.mask.pan_ref_key.as_deref(),
            Some("0123456789abcdef0123")
        );
        // Without the variable the masker refuses panRef: the filter does not load.
        let config = FilterConfig::from_json(br#"{"mask":{"display":"panRef"}}"#)
            .unwrap()
            .with_pan_ref_key(|_| None);
        assert!(crate::mask::Masker::new(config.mask).is_err());
    }

    #[test]
    fn service_accounts_are_configured_and_a_bad_pattern_refuses_the_configuration() {
        let config = FilterConfig::from_json(
            br#"{"serviceAccounts":{"subs":["svc-*"],"claims":{"repository":"*"}}}"#,
        )
        .unwrap();
        assert!(config.service_accounts.require_accountable);
        assert_eq!(
            config.service_accounts.accountable_claims,
            ["act.sub", "actor"]
        );
        let err =
            FilterConfig::from_json(br#"{"serviceAccounts":{"subs":["svc-[a"]}}"#).unwrap_err();
        assert!(err.contains("serviceAccounts.subs"), "{err}");
        let err = FilterConfig::from_json(br#"{"serviceAccounts":{"sub":["svc-*"]}}"#).unwrap_err();
        assert!(err.contains("unknown field"), "{err}");
    }

    #[test]
    fn an_istio_cluster_name_is_called_with_its_host_as_authority() {
        let config = FilterConfig::from_json(b"").unwrap();
        assert_eq!(config.control_plane_target, "tollgate_control_plane");
        let istio = "outbound|50051||tollgate-control-plane.tollgate.svc.cluster.local";
        let config =
            FilterConfig::from_json(format!(r#"{{"controlPlaneCluster":"{istio}"}}"#).as_bytes())
                .unwrap();
        let service: GrpcService =
            prost::Message::decode(config.control_plane_target.as_bytes()).unwrap();
        let grpc = service.envoy_grpc.unwrap();
        assert_eq!(grpc.cluster_name, istio);
        assert_eq!(
            grpc.authority,
            "tollgate-control-plane.tollgate.svc.cluster.local"
        );
        let config = FilterConfig::from_json(
            br#"{"controlPlaneCluster":"cp","controlPlaneAuthority":"cp.example:443"}"#,
        )
        .unwrap();
        let service: GrpcService =
            prost::Message::decode(config.control_plane_target.as_bytes()).unwrap();
        assert_eq!(service.envoy_grpc.unwrap().authority, "cp.example:443");
        let long = "x".repeat(200);
        let err =
            FilterConfig::from_json(format!(r#"{{"controlPlaneCluster":"a|{long}"}}"#).as_bytes())
                .unwrap_err();
        assert!(err.contains("too long"), "{err}");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = FilterConfig::from_json(br#"{"auditTimeoutMS": 5}"#).unwrap_err();
        assert!(err.contains("unknown field"), "{err}");
    }
}
