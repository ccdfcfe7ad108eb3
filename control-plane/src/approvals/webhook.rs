//! `serve --approval-webhook URL`: a POST for every new approval request, so a chat tool can
//! alert an on-call approver, shaped by `--approval-webhook-format`: Tollgate's JSON summary, a
//! Slack incoming-webhook message or a Teams (Workflows) Adaptive Card, each with a link to the
//! approval's page when `--console-url` is known. Only the masked arguments ever go out. Sent on
//! its own task: a slow or failing receiver never holds up the request; a failure is logged and
//! recorded (`approval.webhook_failed`). The URL (which may carry a token) reaches neither the log
//! nor the record as given: its userinfo is removed and its query values read `REDACTED`
//! ([`redacted_failure`]).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};
use tollgate_engine::redact::redact_url;

use super::http;
use super::ledger::Entry;
use crate::clock::{self, Micros};
use crate::store::Store;

const TIMEOUT: Duration = Duration::from_secs(5);
/// Longest arguments text in a chat message: Slack refuses a section text over 3,000
/// characters, and a card is read, not scrolled.
const ARGUMENTS_LIMIT: usize = 2_500;
/// Longest value of one fact (Slack allows 2,000 per field).
const FACT_LIMIT: usize = 500;
/// Longest Slack header (Slack allows 150).
const HEADER_LIMIT: usize = 150;
const OPEN_APPROVAL: &str = "Open approval";

/// What the webhook's body is shaped for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum WebhookFormat {
    /// Tollgate's JSON summary (docs/approvals.md), for a receiver of one's own.
    #[default]
    Json,
    /// A Slack incoming-webhook message: `text` and Block Kit `blocks`.
    Slack,
    /// A Microsoft Teams incoming webhook (Workflows): an Adaptive Card 1.4.
    Teams,
}

pub struct Webhook {
    pub url: String,
    pub format: WebhookFormat,
    /// The console's address ([`super::check_console_url`]): each message links to the
    /// approval's page on it. None: messages name the `tollgate approvals` command only.
    pub console_url: Option<String>,
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

fn approve_command(id: &str) -> String {
    format!(
        "tollgate approvals approve {id} --reason {}",
        shell_quote("REASON")
    )
}

/// The `json` body: what the receiver gets, with `approvalUrl` when the console is known.
pub fn summary(entry: &Entry, approval_url: Option<&str>) -> Value {
    let arguments: Value = serde_json::from_str(&entry.masked_arguments)
        .unwrap_or_else(|_| Value::String(entry.masked_arguments.clone()));
    let mut summary = json!({
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
        "approveCommand": approve_command(&entry.id),
        "denyCommand": format!("tollgate approvals deny {} --reason {}", entry.id, shell_quote("REASON")),
        "text": format!(
            "{} asks to call {} ({}); rule {}: {}. Approve: tollgate approvals approve {} --reason ...",
            entry.requester, entry.target, entry.upstream, entry.rule, entry.reason, entry.id
        ),
    });
    if let Some(url) = approval_url {
        summary["approvalUrl"] = url.into();
    }
    summary
}

/// What an approver needs to decide, as (label, value), unescaped: every value but the id and
/// the times comes from the request or the policy.
fn facts(entry: &Entry, now: Micros) -> Vec<(&'static str, String)> {
    let mut facts = vec![("Requester", entry.requester.clone())];
    // A service account's call: the person who answers for it (as the gateway named them).
    if let Some(sub) = entry
        .identity
        .pointer("/accountable/sub")
        .and_then(Value::as_str)
    {
        let via = entry
            .identity
            .pointer("/accountable/via")
            .and_then(Value::as_str);
        facts.push((
            "Accountable",
            match via {
                Some(via) => format!("{sub} (via {via})"),
                None => sub.to_owned(),
            },
        ));
    }
    facts.push(("Tool", entry.target.clone()));
    facts.push(("Upstream", entry.upstream.clone()));
    facts.push(("Rule", entry.rule.clone()));
    if !entry.reason.is_empty() {
        facts.push(("Reason", entry.reason.clone()));
    }
    let approvers = if entry.approvers_needed > 1 {
        format!(
            "{} ({} different people)",
            entry.approver_group, entry.approvers_needed
        )
    } else {
        entry.approver_group.clone()
    };
    facts.push(("Approvers", approvers));
    facts.push(("Expires", expiry(entry.expires_at, now)));
    facts.push(("Approval", entry.id.clone()));
    facts
}

/// `2026-11-25T22:00:00Z (in 15m)`.
fn expiry(expires_at: Micros, now: Micros) -> String {
    let stamp = clock::format(expires_at);
    // To the second: the microseconds are noise to a person.
    let stamp = format!("{}Z", stamp.get(..19).unwrap_or(&stamp));
    if expires_at <= now {
        return format!("{stamp} (expired)");
    }
    let mut seconds = (expires_at - now).div_ceil(1_000_000);
    if seconds >= 120 {
        seconds = (seconds + 30) / 60 * 60;
    }
    let left = humantime::format_duration(Duration::from_secs(seconds));
    format!("{stamp} (in {left})")
}

/// The masked arguments as people read them: pretty JSON (or the text as sent).
fn readable_arguments(entry: &Entry) -> String {
    serde_json::from_str::<Value>(&entry.masked_arguments)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| entry.masked_arguments.clone())
}

/// `text` escaped char by char by `escape`, at most `limit` characters of escaped text (so an
/// escape is never cut in half); a cut text ends with how much was left out.
fn clipped(text: &str, limit: usize, escape: fn(char, &mut String)) -> String {
    let mut out = String::new();
    let mut used = 0;
    let mut piece = String::new();
    for (at, c) in text.char_indices() {
        piece.clear();
        escape(c, &mut piece);
        let width = piece.chars().count();
        if used + width > limit {
            let left = text[at..].chars().count();
            out.push_str(&format!("\n… ({left} more characters)"));
            return out;
        }
        out.push_str(&piece);
        used += width;
    }
    out
}

fn verbatim(c: char, out: &mut String) {
    out.push(c);
}

/// Slack's mrkdwn control characters as Slack asks them escaped: `<` and `>` would open
/// links and mentions (`<!channel>`), `&` entities.
fn slack_escape(c: char, out: &mut String) {
    match c {
        '&' => out.push_str("&amp;"),
        '<' => out.push_str("&lt;"),
        '>' => out.push_str("&gt;"),
        c => out.push(c),
    }
}

/// Inside a Slack code block, also: no run of three backticks, which would close the block and
/// let the rest be read as formatting.
fn slack_code_escape(c: char, out: &mut String) {
    slack_escape(c, out);
    if c == '`' {
        out.push('\u{200b}');
    }
}

fn slack_text(text: &str) -> String {
    clipped(text, usize::MAX, slack_escape)
}

/// The `slack` body: a fallback `text` (notifications) and the blocks people read.
fn slack(entry: &Entry, now: Micros, approval_url: Option<&str>) -> Value {
    // plain_text: Slack reads no markup in it, so the tool name goes in as it is.
    let header = clipped(
        &format!("Approval needed: {}", entry.target),
        HEADER_LIMIT,
        verbatim,
    );
    let fields: Vec<Value> = facts(entry, now)
        .into_iter()
        .map(|(label, value)| {
            json!({"type": "mrkdwn",
                   "text": format!("*{label}*\n{}", clipped(&value, FACT_LIMIT, slack_escape))})
        })
        .collect();
    let arguments = clipped(
        &readable_arguments(entry),
        ARGUMENTS_LIMIT,
        slack_code_escape,
    );
    let command = approve_command(&entry.id);
    let mut blocks = vec![
        json!({"type": "header", "text": {"type": "plain_text", "text": header}}),
        json!({"type": "section", "fields": fields}),
        json!({"type": "section", "text": {"type": "mrkdwn",
               "text": format!("*Arguments* (card numbers masked)\n```\n{arguments}\n```")}}),
        json!({"type": "context", "elements": [{"type": "mrkdwn",
               "text": format!("Or an approver runs `{}`", slack_text(&command))}]}),
    ];
    let mut text = format!(
        "Approval needed: {} asks to call {} ({}), rule {}.",
        slack_text(&entry.requester),
        slack_text(&entry.target),
        slack_text(&entry.upstream),
        slack_text(&entry.rule)
    );
    if let Some(url) = approval_url {
        blocks.push(json!({"type": "actions", "elements": [{
            "type": "button", "action_id": "open_approval", "style": "primary",
            "text": {"type": "plain_text", "text": OPEN_APPROVAL}, "url": url}]}));
        text.push_str(&format!(" <{}|{OPEN_APPROVAL}>", slack_text(url)));
    }
    json!({"text": text, "blocks": blocks})
}

/// Brackets would make a Teams text a link (`[text](url)`); the rest of its Markdown only
/// styles.
fn teams_escape(c: char, out: &mut String) {
    if matches!(c, '[' | ']') {
        out.push('\\');
    }
    out.push(c);
}

/// The `teams` body: a Workflows incoming-webhook message carrying one Adaptive Card.
fn teams(entry: &Entry, now: Micros, approval_url: Option<&str>) -> Value {
    let facts: Vec<Value> = facts(entry, now)
        .into_iter()
        .map(|(label, value)| {
            json!({"title": label, "value": clipped(&value, FACT_LIMIT, teams_escape)})
        })
        .collect();
    let arguments = clipped(&readable_arguments(entry), ARGUMENTS_LIMIT, verbatim);
    let mut card = json!({
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "msteams": {"width": "Full"},
        "body": [
            {"type": "TextBlock", "size": "Medium", "weight": "Bolder", "wrap": true,
             "text": clipped(&format!("Approval needed: {}", entry.target), HEADER_LIMIT, teams_escape)},
            {"type": "FactSet", "facts": facts},
            {"type": "TextBlock", "weight": "Bolder", "wrap": true, "spacing": "Medium",
             "text": "Arguments (card numbers masked)"},
            // A TextRun is never read as Markdown: the arguments show exactly as masked.
            {"type": "RichTextBlock", "inlines": [
                {"type": "TextRun", "fontType": "Monospace", "text": arguments}]},
            {"type": "TextBlock", "isSubtle": true, "size": "Small", "wrap": true,
             "text": format!("Or an approver runs: {}", approve_command(&entry.id))},
        ],
    });
    if let Some(url) = approval_url {
        card["actions"] = json!([{"type": "Action.OpenUrl", "title": OPEN_APPROVAL, "url": url}]);
    }
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": card,
        }],
    })
}

impl Webhook {
    /// The body posted for `entry`, `now` being when it is sent.
    pub fn body(&self, entry: &Entry, now: Micros) -> Value {
        let link = self
            .console_url
            .as_deref()
            .map(|console| super::approval_link(console, &entry.id));
        match self.format {
            WebhookFormat::Json => summary(entry, link.as_deref()),
            WebhookFormat::Slack => slack(entry, now, link.as_deref()),
            WebhookFormat::Teams => teams(entry, now, link.as_deref()),
        }
    }

    /// Posts the message about `entry` in the background.
    pub fn notify(self: &Arc<Self>, audit: Arc<Store>, entry: &Entry) {
        let hook = self.clone();
        let body = self.body(entry, clock::now_micros()).to_string();
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
    use crate::approvals::ledger::State;
    use tollgate_engine::mask::{MaskReport, Masker};

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

    const NOW: Micros = 1_790_000_000_000_000;

    /// A service account's request whose arguments hold a card number (masked as the control
    /// plane masks it) and text meant to break out of a chat message.
    fn entry(arguments: &Value) -> Entry {
        let card: String = ["4111", "1111", "1111", "1111"].concat();
        let mut arguments = arguments.clone();
        arguments["card"] = card.clone().into();
        let masked = Masker::default()
            .mask_json(arguments.to_string().as_bytes(), &mut MaskReport::default())
            .unwrap();
        let masked = String::from_utf8(masked).unwrap();
        assert!(!masked.contains(&card), "{masked}");
        Entry {
            id: "apr_0123".into(),
            state: State::Pending,
            requester: "svc-payouts".into(),
            identity: json!({"sub": "svc-payouts",
                             "accountable": {"sub": "dana@example.com", "via": "actor"}}),
            upstream: "payments".into(),
            method: "tools/call".into(),
            target: "update_payout_account".into(),
            arguments_hash: "h".into(),
            masked_arguments: masked,
            rule: "payout-changes-need-approval".into(),
            reason: "changes where money goes".into(),
            approver_group: "payments-approvers".into(),
            grant_ttl_seconds: 0,
            session: "s".into(),
            requested_at: NOW,
            expires_at: NOW + 15 * 60 * 1_000_000,
            decided_by: None,
            decided_at: None,
            decision_reason: None,
            uses: 0,
            approvers_needed: 1,
            approved_by: Vec::new(),
        }
    }

    fn hook(format: WebhookFormat) -> Webhook {
        Webhook {
            url: "https://hooks.example/x".into(),
            format,
            console_url: Some("https://ops.example.com".into()),
        }
    }

    const LINK: &str = "https://ops.example.com/approvals/apr_0123";

    fn hostile() -> Value {
        json!({"merchant": "m_42", "note": "<script>alert(1)</script> & <!channel> ``` *done*",
               "memo": "[Approve here](https://evil.example)"})
    }

    /// The body as the receiver parses it, with no card number in it.
    fn posted(format: WebhookFormat, entry: &Entry) -> (String, Value) {
        let text = hook(format).body(entry, NOW).to_string();
        assert!(
            !text.contains(&["4111", "1111", "1111", "1111"].concat()),
            "{text}"
        );
        assert!(
            text.contains("1111"),
            "the masked card shows its last digits"
        );
        (text.clone(), serde_json::from_str(&text).unwrap())
    }

    #[test]
    fn the_json_body_carries_the_approval_link() {
        let (_, body) = posted(WebhookFormat::Json, &entry(&hostile()));
        assert_eq!(body["approvalUrl"], LINK);
        assert_eq!(body["approvalId"], "apr_0123");
        assert_eq!(body["arguments"]["merchant"], "m_42");
        let without = Webhook {
            console_url: None,
            ..hook(WebhookFormat::Json)
        };
        assert!(without.body(&entry(&hostile()), NOW)["approvalUrl"].is_null());
    }

    #[test]
    fn the_slack_body_is_block_kit_with_every_request_value_escaped() {
        let (text, body) = posted(WebhookFormat::Slack, &entry(&hostile()));
        assert!(
            !text.contains("<script>") && !text.contains("<!channel>"),
            "{text}"
        );
        let blocks = body["blocks"].as_array().unwrap();
        assert!(blocks.len() <= 50);
        assert_eq!(blocks[0]["type"], "header");
        assert!(blocks[0]["text"]["text"].as_str().unwrap().chars().count() <= 150);
        let fields = blocks[1]["fields"].as_array().unwrap();
        assert!(fields.len() <= 10);
        let facts: Vec<&str> = fields.iter().map(|f| f["text"].as_str().unwrap()).collect();
        for expected in [
            "*Requester*\nsvc-payouts",
            "*Accountable*\ndana@example.com (via actor)",
            "*Tool*\nupdate_payout_account",
            "*Upstream*\npayments",
            "*Rule*\npayout-changes-need-approval",
            "*Reason*\nchanges where money goes",
        ] {
            assert!(facts.contains(&expected), "{expected}: {facts:?}");
        }
        assert!(
            facts
                .iter()
                .any(|f| f.starts_with("*Expires*\n") && f.ends_with("(in 15m)")),
            "{facts:?}"
        );
        let arguments = blocks[2]["text"]["text"].as_str().unwrap();
        assert!(arguments.chars().count() <= 3000);
        assert!(arguments.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; &lt;!channel&gt;"));
        // The only code fences are the block's own.
        assert_eq!(arguments.matches("```").count(), 2, "{arguments}");
        let actions = blocks.iter().find(|b| b["type"] == "actions").unwrap();
        assert_eq!(actions["elements"][0]["url"], LINK);
        assert_eq!(actions["elements"][0]["text"]["text"], "Open approval");
        let fallback = body["text"].as_str().unwrap();
        assert!(
            fallback.contains("svc-payouts")
                && fallback.contains(&format!("<{LINK}|Open approval>"))
        );
    }

    #[test]
    fn long_arguments_are_cut_within_slacks_section_limit() {
        let long = json!({"note": "&".repeat(10_000)});
        let (_, body) = posted(WebhookFormat::Slack, &entry(&long));
        let arguments = body["blocks"][2]["text"]["text"].as_str().unwrap();
        assert!(arguments.chars().count() <= 3000, "{}", arguments.len());
        assert!(arguments.contains("more characters)"), "{arguments}");
        // Cut between escapes, never inside one.
        let code = arguments.split("```").nth(1).unwrap();
        let cut = code.split('\n').rev().find(|l| l.contains('&')).unwrap();
        assert!(cut.trim_end().ends_with("&amp;"), "{cut}");
        let (_, teams) = posted(WebhookFormat::Teams, &entry(&long));
        let run = &teams["attachments"][0]["content"]["body"][3]["inlines"][0]["text"];
        assert!(run.as_str().unwrap().chars().count() <= ARGUMENTS_LIMIT + 40);
    }

    #[test]
    fn the_teams_body_is_an_adaptive_card_with_facts_arguments_and_the_link() {
        let (_, body) = posted(WebhookFormat::Teams, &entry(&hostile()));
        assert_eq!(body["type"], "message");
        let attachment = &body["attachments"][0];
        assert_eq!(
            attachment["contentType"],
            "application/vnd.microsoft.card.adaptive"
        );
        let card = &attachment["content"];
        assert_eq!(card["type"], "AdaptiveCard");
        assert_eq!(card["version"], "1.4");
        let blocks = card["body"].as_array().unwrap();
        assert_eq!(blocks[0]["type"], "TextBlock");
        let facts = blocks.iter().find(|b| b["type"] == "FactSet").unwrap()["facts"]
            .as_array()
            .unwrap();
        let fact = |title: &str| {
            facts
                .iter()
                .find(|f| f["title"] == title)
                .map(|f| f["value"].as_str().unwrap().to_owned())
        };
        assert_eq!(fact("Requester").unwrap(), "svc-payouts");
        assert_eq!(fact("Accountable").unwrap(), "dana@example.com (via actor)");
        assert_eq!(fact("Tool").unwrap(), "update_payout_account");
        assert_eq!(fact("Rule").unwrap(), "payout-changes-need-approval");
        assert!(fact("Expires").unwrap().ends_with("(in 15m)"));
        let run = &blocks[3]["inlines"][0];
        assert_eq!(run["type"], "TextRun");
        assert_eq!(run["fontType"], "Monospace");
        let arguments: Value = serde_json::from_str(run["text"].as_str().unwrap()).unwrap();
        assert_eq!(arguments["memo"], "[Approve here](https://evil.example)");
        assert_eq!(card["actions"][0]["type"], "Action.OpenUrl");
        assert_eq!(card["actions"][0]["title"], "Open approval");
        assert_eq!(card["actions"][0]["url"], LINK);
        // Markdown text of the request's own: no link can be made of it.
        let mut tool = entry(&hostile());
        tool.target = "[Approve](https://evil.example)".into();
        let card = &hook(WebhookFormat::Teams).body(&tool, NOW)["attachments"][0]["content"];
        let title = card["body"][0]["text"].as_str().unwrap();
        assert_eq!(title, r"Approval needed: \[Approve\](https://evil.example)");
    }

    #[test]
    fn without_a_console_url_messages_name_the_command_and_no_link() {
        let entry = entry(&hostile());
        for format in [WebhookFormat::Slack, WebhookFormat::Teams] {
            let hook = Webhook {
                console_url: None,
                ..hook(format)
            };
            let text = hook.body(&entry, NOW).to_string();
            assert!(!text.contains("Open approval"), "{text}");
            assert!(
                text.contains("tollgate approvals approve apr_0123"),
                "{text}"
            );
        }
    }

    #[test]
    fn time_left_is_rounded_for_people() {
        assert_eq!(
            expiry(NOW + 899_400_000, NOW),
            format!("{}Z (in 15m)", &clock::format(NOW + 899_400_000)[..19])
        );
        assert!(expiry(NOW + 45_000_000, NOW).ends_with("(in 45s)"));
        assert!(expiry(NOW, NOW).ends_with("(expired)"));
    }
}
