//! `serve --approval-webhook URL`: a JSON POST for every new approval request, so a chat tool
//! can alert an on-call approver. Sent on its own task: a slow or failing receiver never holds
//! up the request; a failure is logged and recorded (`approval.webhook_failed`). The URL (which
//! may carry a token) reaches neither the log nor the record as given: its userinfo is removed and
//! its query values read `REDACTED` ([`redacted_failure`]).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};
use tollgate_engine::redact::redact_url;

use super::http;
use super::ledger::Entry;
use crate::clock;
use crate::store::Store;

const TIMEOUT: Duration = Duration::from_secs(5);

pub struct Webhook {
    pub url: String,
}

/// Quotes `text` for a POSIX shell.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// The URL and the error text of a failed delivery as they may be logged and recorded: the URL
/// redacted, and every copy of it in the error (the HTTP client names the URL) replaced by the
/// redacted form.
pub fn redacted_failure(url: &str, error: &str) -> (String, String) {
    let redacted = redact_url(url);
    let error = if url.is_empty() {
        error.to_owned()
    } else {
        error.replace(url, &redacted)
    };
    (redacted, error)
}

/// What the receiver gets.
pub fn summary(entry: &Entry) -> Value {
    let arguments: Value = serde_json::from_str(&entry.masked_arguments)
        .unwrap_or_else(|_| Value::String(entry.masked_arguments.clone()));
    json!({
        "event": "approval.requested",
        "approvalId": entry.id,
        "requester": entry.requester,
        "upstream": entry.upstream,
        "method": entry.method,
        "tool": entry.target,
        "arguments": arguments,
        "rule": entry.rule,
        "reason": entry.reason,
        "approverGroup": entry.approver_group,
        "requestedAt": clock::format(entry.requested_at),
        "expiresAt": clock::format(entry.expires_at),
        "approveCommand": format!("tollgate approvals approve {} --reason {}", entry.id, shell_quote("REASON")),
        "denyCommand": format!("tollgate approvals deny {} --reason {}", entry.id, shell_quote("REASON")),
        "text": format!(
            "{} asks to call {} ({}); rule {}: {}. Approve: tollgate approvals approve {} --reason ...",
            entry.requester, entry.target, entry.upstream, entry.rule, entry.reason, entry.id
        ),
    })
}

impl Webhook {
    /// Posts the summary of `entry` in the background.
    pub fn notify(self: &Arc<Self>, audit: Arc<Store>, entry: &Entry) {
        let hook = self.clone();
        let body = summary(entry).to_string();
        let id = entry.id.clone();
        tokio::spawn(async move {
            let sent = http::send(
                "POST",
                &hook.url,
                Some("application/json"),
                body.as_bytes(),
                TIMEOUT,
            )
            .await;
            if let Err(error) = sent {
                let (url, error) = redacted_failure(&hook.url, &error.to_string());
                eprintln!("tollgate: approval webhook for {id}: {error}");
                let mut record = Map::new();
                record.insert("event".into(), "approval.webhook_failed".into());
                record.insert("time".into(), clock::format(clock::now_micros()).into());
                record.insert("approvalId".into(), id.into());
                record.insert("url".into(), url.into());
                record.insert("error".into(), error.into());
                if let Err(e) = audit.append_event(&record).await {
                    eprintln!("tollgate: cannot record the webhook failure: {e}");
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_delivery_is_logged_and_recorded_without_credentials() {
        let url = "http://bot:s3cret@hooks.example:8080/alert?token=abc123&channel=ops";
        let error = super::http::HttpError::Status {
            url: url.to_owned(),
            status: 500,
        };
        let (redacted, text) = redacted_failure(url, &error.to_string());
        assert_eq!(
            redacted,
            "http://hooks.example:8080/alert?token=REDACTED&channel=REDACTED"
        );
        assert_eq!(format!("{redacted}: answered http 500"), text);
        for secret in ["s3cret", "abc123", "bot"] {
            assert!(!text.contains(secret) && !redacted.contains(secret));
        }
    }
}
