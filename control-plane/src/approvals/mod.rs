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
pub use webhook::WebhookFormat;

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
    /// Slack or Teams incoming webhook). `serve` refuses to start on a URL it cannot use.
    #[arg(long, env = "TOLLGATE_APPROVAL_WEBHOOK")]
    pub approval_webhook: Option<String>,
    /// The body --approval-webhook posts: `json` (Tollgate's summary), `slack` (a Slack
    /// incoming-webhook message) or `teams` (a Teams Workflows webhook's Adaptive Card).
    #[arg(
        long,
        env = "TOLLGATE_APPROVAL_WEBHOOK_FORMAT",
        value_enum,
        default_value_t = WebhookFormat::Json
    )]
    pub approval_webhook_format: WebhookFormat,
    /// The operator console's address as approvers open it (http:// or https://, no query);
    /// approval links are URL/approvals/ID. Without it, notifications name the
    /// `tollgate approvals` command only.
    #[arg(long, env = "TOLLGATE_CONSOLE_URL", value_parser = check_console_url)]
    pub console_url: Option<String>,
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

/// A console address (`--console-url`, or one `serve` derives) as approval links start: http://
/// or https:// with a host, without credentials, query or fragment (the link is shown to
/// people in chat tools), and without a trailing slash.
pub fn check_console_url(url: &str) -> Result<String, String> {
    let refused = |why: &str| format!("{url:?} is not a console address: {why}");
    let not_http = || {
        refused(
            "it must be an http:// or https:// URL with a host, e.g. https://tollgate.example.com",
        )
    };
    let parsed = reqwest::Url::parse(url).map_err(|_| not_http())?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(not_http());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(refused("it must not carry credentials"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(refused(
            "it must have no query or fragment (links are URL/approvals/ID)",
        ));
    }
    Ok(url.trim_end_matches('/').to_owned())
}

/// The page of approval `id` on the console at `console_url` (as [`check_console_url`] returns it).
pub fn approval_link(console_url: &str, id: &str) -> String {
    format!("{console_url}/approvals/{id}")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_console_url_is_checked_and_links_are_url_slash_approvals_slash_id() {
        let base = check_console_url("https://ops.example.com/tollgate/").unwrap();
        assert_eq!(
            approval_link(&base, "apr_1"),
            "https://ops.example.com/tollgate/approvals/apr_1"
        );
        assert_eq!(
            check_console_url("http://127.0.0.1:9470").unwrap(),
            "http://127.0.0.1:9470"
        );
        for (bad, why) in [
            ("127.0.0.1:9470", "http:// or https://"),
            ("ftp://ops.example.com", "http:// or https://"),
            ("https://ops.example.com/?team=payments", "no query"),
            ("https://ops.example.com/#approvals", "no query or fragment"),
            ("https://admin:secret@ops.example.com", "credentials"),
            ("not a url", "http:// or https://"),
        ] {
            let error = check_console_url(bad).unwrap_err();
            assert!(error.contains(why), "{bad}: {error}");
        }
    }

    #[test]
    fn serve_takes_the_webhook_format_and_console_url_and_refuses_a_bad_one() {
        #[derive(clap::Parser)]
        struct Serve {
            #[command(flatten)]
            approvals: Config,
        }
        use clap::Parser;
        let parsed = Serve::try_parse_from(["serve"]).unwrap().approvals;
        assert_eq!(parsed.approval_webhook_format, WebhookFormat::Json);
        assert_eq!(parsed.console_url, None);
        let parsed = Serve::try_parse_from([
            "serve",
            "--approval-webhook-format",
            "teams",
            "--console-url",
            "https://ops.example.com/",
        ])
        .unwrap()
        .approvals;
        assert_eq!(parsed.approval_webhook_format, WebhookFormat::Teams);
        assert_eq!(
            parsed.console_url.as_deref(),
            Some("https://ops.example.com")
        );
        let error =
            Serve::try_parse_from(["serve", "--console-url", "https://ops.example.com?x=1"])
                .err()
                .unwrap()
                .to_string();
        assert!(
            error.contains("--console-url") && error.contains("no query"),
            "{error}"
        );
        assert!(Serve::try_parse_from(["serve", "--approval-webhook-format", "xml"]).is_err());
    }
}
