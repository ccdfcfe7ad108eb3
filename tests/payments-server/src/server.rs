//! The MCP handler: tools, resources and a prompt over the demo payments data.

use std::{
    fmt::Write as _,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use rmcp::{
    handler::server::{
        router::{prompt::PromptRouter, tool::ToolRouter},
        wrapper::Parameters,
    },
    model::{
        CallToolResult, ContentBlock, GetPromptResult, Implementation, ListResourceTemplatesResult,
        ListResourcesResult, PaginatedRequestParams, ProgressNotificationParam, PromptMessage,
        ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult, Resource,
        ResourceContents, ResourceTemplate, Role, ServerCapabilities, ServerConfig,
    },
    prompt, prompt_handler, prompt_router, schemars,
    service::RequestContext,
    tool, tool_handler, tool_router, ErrorData, RoleServer, ServerHandler,
};
use serde::Deserialize;
use serde_json::{json, Value};

use payments_server::shapes;

use crate::data::{self, format_pan, Merchant, PanShape};

/// Largest report `big_report` builds, in KiB (16 MiB).
pub const MAX_REPORT_KIB: u32 = 16 * 1024;
/// Bounds for `slow_stream`, so a typo cannot tie the server up for hours.
const MAX_STREAM_COUNT: u32 = 10_000;
const MAX_STREAM_INTERVAL_MS: u64 = 60_000;
const DEFAULT_TRANSACTIONS: u32 = 10;
const MAX_TRANSACTIONS: u32 = 100;

const POLICY_URI: &str = "payments://policy";
const MERCHANT_URI_PREFIX: &str = "payments://merchants/";

const POLICY_TEXT: &str = "# Payments operations policy (demo)\n\
\n\
- Refunds above 500.00 USD need a second approver.\n\
- Payout account changes need a second approver and are logged.\n\
- Fraud threshold changes take effect immediately for new authorizations.\n\
- Support staff must never read a full card number back to a customer.\n\
- Sandbox test card for training: 4111 1111 1111 1111.\n";

/// State the write tools change; shared by every session so a change is visible to all clients.
#[derive(Debug)]
pub struct Ledger {
    merchants: Vec<Merchant>,
    refunds: Vec<Value>,
}

impl Ledger {
    pub fn new() -> Self {
        Self {
            merchants: data::initial_merchants(),
            refunds: Vec::new(),
        }
    }

    fn merchant_mut(&mut self, id: &str) -> Option<&mut Merchant> {
        self.merchants.iter_mut().find(|m| m.id == id)
    }
}

impl Default for Ledger {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Clone)]
pub struct PaymentsServer {
    ledger: Arc<Mutex<Ledger>>,
    tool_router: ToolRouter<Self>,
    prompt_router: PromptRouter<Self>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct CustomerArgs {
    /// Customer id, e.g. `cus_1`.
    pub customer_id: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct TransactionsArgs {
    /// Customer id, e.g. `cus_1`.
    pub customer_id: String,
    /// How many transactions to return (default 10, at most 100).
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct SearchLogsArgs {
    /// Case-insensitive substring; empty or `*` matches every line.
    pub query: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct PayoutArgs {
    /// Merchant id, e.g. `m_1`.
    pub merchant_id: String,
    /// New payout bank account number.
    pub account_number: String,
    /// New bank routing number.
    pub routing_number: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct FraudThresholdArgs {
    /// Merchant id, e.g. `m_1`.
    pub merchant_id: String,
    /// Risk score (0-100) above which authorizations are declined.
    pub threshold: f64,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct RefundArgs {
    /// Payment id, e.g. `pay_1001`.
    pub payment_id: String,
    /// Amount to refund, in the payment's currency (must be positive).
    pub amount: f64,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct MerchantArgs {
    /// Merchant id, e.g. `m_1`.
    pub merchant_id: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct BigReportArgs {
    /// Size of the report in KiB (capped at 16384).
    pub kib: u32,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct FixedResultArgs {
    /// Exact size of the result text in bytes (at most 16 MiB).
    pub bytes: u32,
    /// How many card numbers the text holds (each line of the text carries one).
    pub pans: u32,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct SlowStreamArgs {
    /// How many progress steps to send before the result (at most 10000).
    pub count: u32,
    /// Pause before each step, in milliseconds (at most 60000).
    pub interval_ms: u64,
}

fn tool_error(message: impl Into<String>) -> Result<CallToolResult, ErrorData> {
    Ok(CallToolResult::error(vec![ContentBlock::text(
        message.into(),
    )]))
}

fn text_result(text: impl Into<String>) -> Result<CallToolResult, ErrorData> {
    Ok(CallToolResult::success(vec![ContentBlock::text(
        text.into(),
    )]))
}

fn pretty(value: &Value) -> String {
    // Serializing a serde_json::Value cannot fail; fall back to compact form just in case.
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

#[tool_router]
impl PaymentsServer {
    pub fn new(ledger: Arc<Mutex<Ledger>>) -> Self {
        Self {
            ledger,
            tool_router: Self::tool_router(),
            prompt_router: Self::prompt_router(),
        }
    }

    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        // A panic while holding the lock cannot leave the demo ledger half-updated in a way that
        // matters, so keep serving rather than failing every later call.
        self.ledger
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    #[tool(
        description = "Get a customer record (profile, cards on file, support notes) by id.",
        annotations(read_only_hint = true)
    )]
    async fn get_customer(
        &self,
        Parameters(args): Parameters<CustomerArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let Some(record) = data::customer_record(&args.customer_id) else {
            return tool_error(format!("unknown customer {:?}", args.customer_id));
        };
        // Text content holds the JSON document (what most clients read), compact so it carries
        // `"pan":"4111…"` verbatim; structuredContent holds the same record, so the gateway has to
        // mask both.
        Ok(CallToolResult::structured(record))
    }

    #[tool(
        description = "List a customer's recent card transactions, newest first.",
        annotations(read_only_hint = true)
    )]
    async fn list_transactions(
        &self,
        Parameters(args): Parameters<TransactionsArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let Some(customer) = data::find_customer(&args.customer_id) else {
            return tool_error(format!("unknown customer {:?}", args.customer_id));
        };
        let limit = args
            .limit
            .unwrap_or(DEFAULT_TRANSACTIONS)
            .min(MAX_TRANSACTIONS);
        let statuses = ["captured", "declined", "refunded", "captured", "pending"];
        let transactions: Vec<Value> = (0..limit as usize)
            .map(|i| {
                let pan = customer.cards[i % customer.cards.len()];
                let last4 = &pan[pan.len() - 4..];
                let description = match i % 4 {
                    0 => format!("card ending {last4}"),
                    1 => format!("manual key entry {}", format_pan(pan, PanShape::Dashes)),
                    2 => format!("recurring charge on {}", format_pan(pan, PanShape::Spaces)),
                    _ => "contactless".to_owned(),
                };
                json!({
                    "id": format!("txn_{}_{:03}", customer.id, i + 1),
                    "payment_id": format!("pay_{}", 1001 + i),
                    "amount": (i * 1735 + 999) as f64 / 100.0,
                    "currency": "USD",
                    "status": statuses[i % statuses.len()],
                    "merchant_id": format!("m_{}", i % 3 + 1),
                    "card": { "pan": format_pan(pan, PanShape::nth(i)), "last4": last4 },
                    "description": description,
                })
            })
            .collect();
        let body = json!({
            "customer_id": customer.id,
            "customer_name": customer.name,
            "count": transactions.len(),
            "transactions": transactions,
        });
        text_result(pretty(&body))
    }

    #[tool(
        description = "Search the payment gateway's logs; returns matching log lines.",
        annotations(read_only_hint = true)
    )]
    async fn search_logs(
        &self,
        Parameters(args): Parameters<SearchLogsArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let query = args.query.trim().to_lowercase();
        let matches: Vec<&str> = data::LOG_LINES
            .iter()
            .copied()
            .filter(|line| query.is_empty() || query == "*" || line.to_lowercase().contains(&query))
            .collect();
        let mut text = format!(
            "Found {} log line(s) matching {:?}:\n",
            matches.len(),
            args.query
        );
        for line in matches {
            text.push_str(line);
            text.push('\n');
        }
        text_result(text)
    }

    #[tool(
        description = "Change the bank account a merchant's payouts go to.",
        annotations(destructive_hint = true, idempotent_hint = true)
    )]
    async fn update_payout_account(
        &self,
        Parameters(args): Parameters<PayoutArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        if args.account_number.trim().is_empty() || args.routing_number.trim().is_empty() {
            return tool_error("account_number and routing_number must not be empty");
        }
        let mut ledger = self.ledger();
        let Some(merchant) = ledger.merchant_mut(&args.merchant_id) else {
            return tool_error(format!("unknown merchant {:?}", args.merchant_id));
        };
        merchant.payout_account = args.account_number.trim().to_owned();
        merchant.routing_number = args.routing_number.trim().to_owned();
        text_result(format!(
            "Payout account for merchant {} ({}) updated to {} (routing {}). Next payout uses the new account.",
            merchant.id,
            merchant.name,
            data::mask_account(&merchant.payout_account),
            merchant.routing_number,
        ))
    }

    #[tool(
        description = "Set the fraud risk score (0-100) above which a merchant's authorizations are declined.",
        annotations(destructive_hint = true, idempotent_hint = true)
    )]
    async fn set_fraud_threshold(
        &self,
        Parameters(args): Parameters<FraudThresholdArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        if !(0.0..=100.0).contains(&args.threshold) {
            return tool_error(format!(
                "threshold must be between 0 and 100, got {}",
                args.threshold
            ));
        }
        let mut ledger = self.ledger();
        let Some(merchant) = ledger.merchant_mut(&args.merchant_id) else {
            return tool_error(format!("unknown merchant {:?}", args.merchant_id));
        };
        let previous = merchant.fraud_threshold;
        merchant.fraud_threshold = args.threshold;
        text_result(format!(
            "Fraud threshold for merchant {} changed from {previous} to {}.",
            merchant.id, args.threshold
        ))
    }

    #[tool(
        description = "Refund (part of) a card payment.",
        annotations(destructive_hint = true, idempotent_hint = false)
    )]
    async fn refund_payment(
        &self,
        Parameters(args): Parameters<RefundArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        if !args.amount.is_finite() || args.amount <= 0.0 {
            return tool_error(format!("amount must be positive, got {}", args.amount));
        }
        if args.payment_id.trim().is_empty() {
            return tool_error("payment_id must not be empty");
        }
        let mut ledger = self.ledger();
        let refund_id = format!("re_{}", ledger.refunds.len() + 1);
        ledger.refunds.push(json!({
            "id": refund_id,
            "payment_id": args.payment_id,
            "amount": args.amount,
        }));
        text_result(format!(
            "Refund {refund_id} of {:.2} USD issued for payment {}.",
            args.amount, args.payment_id
        ))
    }

    #[tool(
        description = "Delete a merchant account (stops all payouts and authorizations).",
        annotations(destructive_hint = true, idempotent_hint = true)
    )]
    async fn delete_merchant(
        &self,
        Parameters(args): Parameters<MerchantArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let mut ledger = self.ledger();
        let Some(merchant) = ledger.merchant_mut(&args.merchant_id) else {
            return tool_error(format!("unknown merchant {:?}", args.merchant_id));
        };
        // Idempotent so repeated test runs against one server give the same confirmation.
        let was_deleted = std::mem::replace(&mut merchant.deleted, true);
        text_result(if was_deleted {
            format!("Merchant {} was already deleted.", merchant.id)
        } else {
            format!("Merchant {} ({}) deleted.", merchant.id, merchant.name)
        })
    }

    #[tool(
        description = "Build a settlement report of about `kib` KiB with card numbers throughout (for masking and throughput tests).",
        annotations(read_only_hint = true)
    )]
    async fn big_report(
        &self,
        Parameters(args): Parameters<BigReportArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        text_result(big_report_text(args.kib))
    }

    #[tool(
        description = "Return a text result of exactly `bytes` bytes holding exactly `pans` card numbers (for benchmarks).",
        annotations(read_only_hint = true)
    )]
    async fn fixed_result(
        &self,
        Parameters(args): Parameters<FixedResultArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        match fixed_result_text(args.bytes, args.pans) {
            Ok(text) => text_result(text),
            Err(message) => tool_error(message),
        }
    }

    #[tool(
        description = "Return every test card number in every shape (brands, groupings, separators, Unicode digits, JSON numbers, JSON inside text) beside look-alikes that are not card numbers (for masking tests).",
        annotations(read_only_hint = true)
    )]
    async fn card_shapes(&self) -> Result<CallToolResult, ErrorData> {
        let answer = shapes::answer();
        let mut result = CallToolResult::success(vec![
            ContentBlock::text(answer.text),
            ContentBlock::text(answer.document),
        ]);
        result.structured_content = Some(answer.structured);
        Ok(result)
    }

    #[tool(
        description = "Stream every test card number in every shape as log messages (one card split across two messages), then a result (for masking tests; needs an SSE answer).",
        annotations(read_only_hint = true)
    )]
    async fn card_shapes_stream(
        &self,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let (head, tail) = shapes::split_halves();
        let mut lines = shapes::stream_lines();
        lines.push(head);
        lines.push(tail);
        for line in &lines {
            log_text(&ctx, "card_shapes_stream", line).await;
        }
        text_result(format!("streamed {} messages", lines.len()))
    }

    #[tool(
        description = "Send `count` progress notifications (needs a progressToken in _meta) and log messages, `interval_ms` apart, then a result with a card number.",
        annotations(read_only_hint = true)
    )]
    async fn slow_stream(
        &self,
        Parameters(args): Parameters<SlowStreamArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let count = args.count.min(MAX_STREAM_COUNT);
        let interval = Duration::from_millis(args.interval_ms.min(MAX_STREAM_INTERVAL_MS));
        let token = ctx.meta.get_progress_token();
        let pans: Vec<&str> = data::all_pans().collect();
        for step in 1..=count {
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = ctx.ct.cancelled() => {
                    return Err(ErrorData::internal_error(format!("slow_stream cancelled at step {step}"), None));
                }
            }
            let pan = pans[(step as usize - 1) % pans.len()];
            if let Some(token) = &token {
                let progress = ProgressNotificationParam::new(token.clone(), f64::from(step))
                    .with_total(f64::from(count))
                    .with_message(format!("step {step}/{count}: settled card {pan}"));
                // A client that went away is not an error worth failing the call for.
                let _ = ctx.peer.notify_progress(progress).await;
            }
            log_message(&ctx, step, count, pan).await;
        }
        text_result(format!(
            "slow_stream finished {count} step(s); last card processed {}",
            format_pan(
                pans[(count.max(1) as usize - 1) % pans.len()],
                PanShape::Spaces
            )
        ))
    }
}

/// Sends one MCP log message. Logging is deprecated by the newest MCP revision but still part of
/// the versions clients speak today, and it is another notification shape the gateway must mask.
/// In session mode rmcp routes log messages to the session's GET stream, not the POST response.
#[allow(deprecated)]
async fn log_message(ctx: &RequestContext<RoleServer>, step: u32, count: u32, pan: &str) {
    use rmcp::model::{LoggingLevel, LoggingMessageNotificationParam};
    let param = LoggingMessageNotificationParam::new(
        LoggingLevel::Info,
        json!({ "step": step, "of": count, "message": format!("processed settlement for card {pan}") }),
    )
    .with_logger("slow_stream");
    let _ = ctx.peer.notify_logging_message(param).await;
}

/// Sends one line of text as an MCP log message (see [`log_message`]).
#[allow(deprecated)]
async fn log_text(ctx: &RequestContext<RoleServer>, logger: &str, line: &str) {
    use rmcp::model::{LoggingLevel, LoggingMessageNotificationParam};
    let param =
        LoggingMessageNotificationParam::new(LoggingLevel::Info, json!(line)).with_logger(logger);
    let _ = ctx.peer.notify_logging_message(param).await;
}

/// The `big_report` body: exactly `kib` KiB (capped) of report lines, each holding a card number.
pub fn big_report_text(kib: u32) -> String {
    let kib = kib.min(MAX_REPORT_KIB);
    let target = kib as usize * 1024;
    let pans: Vec<&str> = data::all_pans().collect();
    let mut out = String::with_capacity(target);
    let _ = writeln!(out, "Settlement report, {kib} KiB");
    let mut i = 0usize;
    loop {
        let pan = format_pan(pans[i % pans.len()], PanShape::nth(i / pans.len()));
        let line = format!(
            "{:08} batch=b{:05} merchant=m_{} card={} amount={}.{:02} USD status=settled\n",
            i,
            i / 100,
            i % 3 + 1,
            pan,
            (i * 37) % 1000,
            i % 100
        );
        if out.len() + line.len() > target {
            break;
        }
        out.push_str(&line);
        i += 1;
    }
    // Pad to the exact size so benchmarks know the byte count; the filler holds no digits.
    if out.len() < target {
        let fill = target - out.len();
        out.extend(std::iter::repeat_n('.', fill.saturating_sub(1)));
        out.push('\n');
    }
    out.truncate(target);
    out
}

/// The `fixed_result` body: exactly `bytes` bytes, `pans` lines each holding one card number
/// (rotating through the demo PANs, digits only), then filler without digits. Errors when the
/// cards do not fit in `bytes`.
pub fn fixed_result_text(bytes: u32, pans: u32) -> Result<String, String> {
    let target = bytes as usize;
    if target > MAX_REPORT_KIB as usize * 1024 {
        return Err(format!(
            "bytes must be at most {}, got {bytes}",
            MAX_REPORT_KIB as usize * 1024
        ));
    }
    let cards: Vec<&str> = data::all_pans().collect();
    let mut out = String::with_capacity(target);
    for i in 0..pans as usize {
        let _ = writeln!(out, "card on file: {}", cards[i % cards.len()]);
        if out.len() > target {
            return Err(format!("{pans} card number(s) do not fit in {bytes} bytes"));
        }
    }
    // Filler lines of letters only, so the text holds no other digit run.
    while out.len() < target {
        let left = target - out.len();
        let line = "settled without exception, nothing to report for this batch.\n";
        if left >= line.len() {
            out.push_str(line);
        } else {
            out.extend(std::iter::repeat_n('.', left));
        }
    }
    Ok(out)
}

fn merchant_json(m: &Merchant) -> Value {
    json!({
        "id": m.id,
        "name": m.name,
        "payout_account": data::mask_account(&m.payout_account),
        "routing_number": m.routing_number,
        "fraud_threshold": m.fraud_threshold,
        "settlement_card": m.settlement_card,
        "deleted": m.deleted,
    })
}

#[prompt_router]
impl PaymentsServer {
    /// Ask the model to summarize a customer for a support agent; embeds the customer record.
    #[prompt(name = "summarize_customer")]
    async fn summarize_customer(
        &self,
        Parameters(args): Parameters<CustomerArgs>,
    ) -> Result<GetPromptResult, ErrorData> {
        let Some(record) = data::customer_record(&args.customer_id) else {
            return Err(ErrorData::invalid_params(
                format!("unknown customer {:?}", args.customer_id),
                None,
            ));
        };
        Ok(GetPromptResult::new(vec![
            PromptMessage::new_text(
                Role::User,
                format!(
                    "Summarize this customer for a support agent in three sentences. \
                     Mention which cards are on file by brand and last four digits only.\n\n{}",
                    pretty(&record)
                ),
            ),
            PromptMessage::new_text(
                Role::Assistant,
                "Understood. I will summarize the customer without repeating full card numbers.",
            ),
        ])
        .with_description(format!("Summary of customer {}", args.customer_id)))
    }
}

#[tool_handler(router = self.tool_router)]
#[prompt_handler(router = self.prompt_router)]
impl ServerHandler for PaymentsServer {
    #[allow(deprecated)] // logging capability: see `log_message`
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_prompts()
                .enable_resources()
                .enable_logging()
                .build(),
        )
        .with_server_info(Implementation::new(
            "tollgate-demo-payments",
            env!("CARGO_PKG_VERSION"),
        ))
        .with_instructions(
            "Demo payments back office. Card numbers in results are published test PANs.",
        )
    }

    #[allow(deprecated)] // logging/setLevel: see `log_message`
    async fn set_level(
        &self,
        _request: rmcp::model::SetLevelRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        // Accepted so clients that set a level do not fail; the demo sends info-level logs only.
        Ok(())
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let mut resources = vec![Resource::new(POLICY_URI, "policy")
            .with_title("Payments operations policy")
            .with_mime_type("text/markdown")];
        resources.extend(self.ledger().merchants.iter().map(|m| {
            Resource::new(format!("{MERCHANT_URI_PREFIX}{}", m.id), m.id.clone())
                .with_title(m.name.clone())
                .with_mime_type("application/json")
        }));
        Ok(ListResourcesResult::with_all_items(resources))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        Ok(ListResourceTemplatesResult::with_all_items(vec![
            ResourceTemplate::new(format!("{MERCHANT_URI_PREFIX}{{id}}"), "merchant")
                .with_title("Merchant configuration")
                .with_mime_type("application/json"),
        ]))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let uri = request.uri;
        let contents = if uri == POLICY_URI {
            ResourceContents::text(POLICY_TEXT, uri).with_mime_type("text/markdown")
        } else if let Some(id) = uri.strip_prefix(MERCHANT_URI_PREFIX) {
            let ledger = self.ledger();
            let Some(merchant) = ledger.merchants.iter().find(|m| m.id == id) else {
                return Err(ErrorData::resource_not_found(
                    format!("no merchant {id:?}"),
                    Some(json!({ "uri": uri })),
                ));
            };
            ResourceContents::text(pretty(&merchant_json(merchant)), uri)
                .with_mime_type("application/json")
        } else {
            return Err(ErrorData::resource_not_found(
                format!("no resource {uri:?}"),
                Some(json!({ "uri": uri })),
            ));
        };
        Ok(ReadResourceResult::new(vec![contents]).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_report_has_exact_size_and_cards() {
        for kib in [0, 1, 7, 64] {
            let text = big_report_text(kib);
            assert_eq!(text.len(), kib as usize * 1024, "kib={kib}");
        }
        let text = big_report_text(64);
        assert!(text.contains("4111111111111111"));
        assert!(text.contains("3782-822463-10005") || text.contains("3782 822463 10005"));
        assert!(text.lines().filter(|l| l.contains("card=")).count() > 500);
    }

    #[test]
    fn big_report_is_capped() {
        assert_eq!(
            big_report_text(MAX_REPORT_KIB + 1).len(),
            MAX_REPORT_KIB as usize * 1024
        );
    }

    #[test]
    fn fixed_result_has_exact_size_and_card_count() {
        for (bytes, pans) in [(0, 0), (1024, 0), (1024, 1), (65536, 50), (100, 3)] {
            let text = fixed_result_text(bytes, pans).unwrap();
            assert_eq!(text.len(), bytes as usize, "bytes={bytes} pans={pans}");
            let cards = data::all_pans()
                .map(|pan| text.matches(pan).count())
                .sum::<usize>();
            assert_eq!(cards, pans as usize, "bytes={bytes} pans={pans}");
        }
        assert!(fixed_result_text(10, 1).is_err());
        assert!(fixed_result_text(MAX_REPORT_KIB * 1024 + 1, 0).is_err());
    }

    #[test]
    fn tools_are_all_listed() {
        let server = PaymentsServer::new(Arc::new(Mutex::new(Ledger::new())));
        let mut names: Vec<String> = server
            .tool_router
            .list_all()
            .into_iter()
            .map(|t| t.name.to_string())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "big_report",
                "card_shapes",
                "card_shapes_stream",
                "delete_merchant",
                "fixed_result",
                "get_customer",
                "list_transactions",
                "refund_payment",
                "search_logs",
                "set_fraud_threshold",
                "slow_stream",
                "update_payout_account",
            ]
        );
    }
}
