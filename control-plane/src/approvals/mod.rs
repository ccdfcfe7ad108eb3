//! Just-in-time approvals (docs/approvals.md): the filter asks with `Request` and long-polls
//! `Await`; operators, signed in with their own OIDC tokens, list, watch and decide.
//!
//! State lives beside the audit chain (tables `approvals` and `grants`, see
//! [`crate::store::Table`]); every request, decision, refusal, expiry and use of a grant is also
//! an audit record, appended before the caller hears of it.

use std::path::Path;
use std::time::Duration;

pub mod auth;
pub mod http;
pub mod judge;
pub mod ledger;
pub mod service;
pub mod webhook;

pub use service::ApprovalsService;

/// `tollgate serve` options for approvals and operator sign-in.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// How long an approval request stays open before it expires.
    #[arg(long, env = "TOLLGATE_APPROVAL_TTL", default_value = "15m", value_parser = humantime::parse_duration)]
    pub approval_ttl: Duration,
    /// The longest grant lifetime (`grantTtlSeconds` of a policy rule) a request may ask for;
    /// a request for more is refused and recorded.
    #[arg(long, env = "TOLLGATE_MAX_GRANT_TTL", default_value = "1h", value_parser = humantime::parse_duration)]
    pub max_grant_ttl: Duration,
    /// The policy file the filter loads (JSON): the control plane judges every approval request
    /// by it (rule, approver group, quorum, grant lifetime). Without one, approval requests are
    /// refused.
    #[arg(long, env = "TOLLGATE_POLICY")]
    pub policy: Option<std::path::PathBuf>,
    /// New approval requests one requester may open per minute; more are refused and recorded.
    #[arg(
        long,
        env = "TOLLGATE_APPROVAL_REQUESTS_PER_MINUTE",
        default_value_t = 30
    )]
    pub approval_requests_per_minute: u32,
    /// https:// (or http://) URL that gets a JSON POST for every new approval request (e.g. a
    /// Slack or Teams hook). `serve` refuses to start on a URL it cannot use.
    #[arg(long, env = "TOLLGATE_APPROVAL_WEBHOOK")]
    pub approval_webhook: Option<String>,
    /// Operators' token issuer keys: a JWKS file, or an https:// (or http://) URL to fetch it
    /// from; `serve` refuses to start when they cannot be loaded. Default: found through the
    /// issuer's OpenID Connect discovery document (for an issuer other than the dev one), else
    /// the dev issuer's <home>/dev/jwks.json.
    #[arg(long, env = "TOLLGATE_OPERATOR_JWKS")]
    pub operator_jwks: Option<String>,
    /// `iss` operator tokens must carry.
    #[arg(long, env = "TOLLGATE_OPERATOR_ISSUER", default_value = crate::issuer::ISSUER)]
    pub operator_issuer: String,
    /// `aud` operator tokens must carry (never the gateway's, or an agent's MCP token would
    /// sign an operator in).
    #[arg(long, env = "TOLLGATE_OPERATOR_AUDIENCE", default_value = crate::issuer::OPERATOR_AUDIENCE)]
    pub operator_audience: String,
    /// A PEM bundle of CA certificates to trust for https:// URLs (JWKS, webhook) besides the
    /// web PKI roots: a private identity provider's CA.
    #[arg(long, env = "TOLLGATE_HTTP_CA")]
    pub http_ca: Option<std::path::PathBuf>,
}

impl Config {
    /// Where the operator JWKS comes from: `--operator-jwks`, else the issuer's discovery
    /// document for an issuer other than the dev one, else the dev issuer's file.
    pub fn jwks_source(&self, home: &Path) -> auth::JwksSource {
        match &self.operator_jwks {
            Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
                auth::JwksSource::Url(url.clone())
            }
            Some(file) => auth::JwksSource::File(file.into()),
            None if self.operator_issuer != crate::issuer::ISSUER => {
                auth::JwksSource::Discovery(self.operator_issuer.clone())
            }
            None => auth::JwksSource::File(crate::issuer::DevIssuer::at(home).jwks_path),
        }
    }
}
