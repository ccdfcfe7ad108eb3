//! The MCP handler: tools, resources and a prompt over the demo payments data.
//!
//! One handler serves every protocol revision rmcp speaks. MCP 2026-07-28 requests (stateless,
//! per-request `_meta`) additionally get what only that revision has: a multi round-trip tool
//! (`export_statement`), a tool parameter mirrored into an `Mcp-Param-Region` header
//! (`list_payments_by_region`), `subscriptions/listen` with `notifications/resources/updated`,
//! per-request log opt-in, and explicit `ttlMs`/`cacheScope` cache hints on list and read results.

use std::{
    fmt::Write as _,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use rmcp::{
    handler::server::{
        prompt::PromptContext,
        router::{prompt::PromptRouter, tool::ToolRouter},
        tool::{InputResponses, RequestState},
        wrapper::Parameters,
    },
    model::{
        CacheScope, CallToolResponse, CallToolResult, ClientCapabilities, ContentBlock,
        ElicitationCapability, FormElicitationCapability, GetPromptRequestParams,
        GetPromptResponse, GetPromptResult, Implementation, InitializeRequestParams,
        InitializeResult, InputRequiredResult, ListPromptsResult, ListResourceTemplatesResult,
        ListResourcesResult, ListToolsResult, PaginatedRequestParams, ProgressNotificationParam,
        PromptMessage, ProtocolVersion, ReadResourceRequestParams, ReadResourceResponse,
        ReadResourceResult, Resource, ResourceContents, ResourceTemplate, Role, ServerCapabilities,
        ServerConfig, SubscriptionFilter,
    },
    prompt, prompt_router, schemars,
    service::{RequestContext, SubscriptionContext, SubscriptionSendError},
    tool, tool_handler, tool_router, ErrorData, RoleServer, ServerHandler,
};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::broadcast;

use payments_server::shapes;

use crate::{
    data::{self, format_pan, Merchant, PanShape},
    statement::{self, MonthAnswer, StateSealer},
};

/// Largest report `big_report` builds, in KiB (16 MiB).
pub const MAX_REPORT_KIB: u32 = 16 * 1024;
/// Bounds for `slow_stream`, so a typo cannot tie the server up for hours.
const MAX_STREAM_COUNT: u32 = 10_000;
const MAX_STREAM_INTERVAL_MS: u64 = 60_000;
const DEFAULT_TRANSACTIONS: u32 = 10;
const MAX_TRANSACTIONS: u32 = 100;
const DEFAULT_REGION_PAYMENTS: u32 = 5;
const MAX_REGION_PAYMENTS: u32 = 50;

/// Cache hints (MCP 2026-07-28 `ttlMs`): the tool and prompt lists are the same for every caller
/// and fixed for the life of the process, so they are `public` with a long TTL; a gateway that
/// filters them per caller has to rewrite the scope to `private`.
const LIST_TTL_MS: u64 = 5 * 60 * 1000;
/// Resource lists and the policy document change rarely and hold nothing caller-specific.
const RESOURCE_LIST_TTL_MS: u64 = 60 * 1000;
/// Pending resource-change notifications per listener before the slowest one skips some.
const UPDATES_CAPACITY: usize = 256;

const POLICY_URI: &str = "payments://policy";
const MERCHANT_URI_PREFIX: &str = "payments://merchants/";
const PAYMENT_URI_PREFIX: &str = "payments://payments/";

const POLICY_TEXT: &str = "# Payments operations policy (demo)\n\
\n\
- Refunds above 10000.00 USD need a second approver (the gateway policy: approve-large-refund).\n\
- Payout account changes need a second approver and are logged.\n\
- Fraud threshold changes take effect immediately for new authorizations.\n\
- Support staff must never read a full card number back to a customer.\n\
- Sandbox test card for training: 4111 1111 1111 1111.\n";

/// What every handler instance shares: rmcp builds a handler per session (and, for 2026-07-28, per
/// request), and a change made through one must be visible to, and announced on, all the others.
#[derive(Debug)]
pub struct Shared {
    ledger: Mutex<Ledger>,
    /// URIs of resources that changed, for `subscriptions/listen` streams.
    updates: broadcast::Sender<String>,
    /// Seals `export_statement`'s `requestState`.
    sealer: StateSealer,
}

impl Shared {
    pub fn new(sealer: StateSealer) -> Self {
        Self {
            ledger: Mutex::new(Ledger::new()),
            updates: broadcast::channel(UPDATES_CAPACITY).0,
            sealer,
        }
    }

    /// Announces that the resource at `uri` changed. Nobody listening is fine.
    fn resource_updated(&self, uri: String) {
        let _ = self.updates.send(uri);
    }
}

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
    shared: Arc<Shared>,
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
    /// Milliseconds to wait before answering (at most 10 s): an upstream with a real payments
    /// API behind it, for the benchmark rows where the gateway's added latency is what counts.
    #[serde(default)]
    pub delay_ms: u32,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct RegionArgs {
    /// Region the payments were taken in: `us-east1`, `us-west1`, `eu-west1` or `asia-south1`.
    /// MCP 2026-07-28 clients mirror it into the `Mcp-Param-Region` HTTP header.
    #[schemars(extend("x-mcp-header" = "Region"))]
    pub region: String,
    /// How many payments to return (default 5, at most 50).
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct StatementArgs {
    /// Customer id, e.g. `cus_1`.
    pub customer_id: String,
    /// Suggested statement month (`YYYY-MM`), offered as the form's default; the month is always
    /// confirmed through the elicitation.
    pub month: Option<String>,
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

/// Whether the request speaks MCP 2026-07-28 or later (per-request `_meta` or header).
fn is_modern(ctx: &RequestContext<RoleServer>) -> bool {
    ctx.protocol_version()
        .is_some_and(|v| v.as_str() >= ProtocolVersion::V_2026_07_28.as_str())
}

/// Whether the client can answer a form elicitation: 2026-07-28 forbids asking one that did not
/// declare it. An empty `elicitation` object means form mode (what 2025 clients send).
fn supports_form_elicitation(ctx: &RequestContext<RoleServer>) -> bool {
    ctx.client_capabilities()
        .and_then(|caps| caps.elicitation)
        .is_some_and(|e| e.form.is_some() || e.url.is_none())
}

fn pretty(value: &Value) -> String {
    // Serializing a serde_json::Value cannot fail; fall back to compact form just in case.
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

#[tool_router]
impl PaymentsServer {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            tool_router: Self::tool_router(),
            prompt_router: Self::prompt_router(),
        }
    }

    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        // A panic while holding the lock cannot leave the demo ledger half-updated in a way that
        // matters, so keep serving rather than failing every later call.
        self.shared
            .ledger
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
        self.shared
            .resource_updated(format!("{MERCHANT_URI_PREFIX}{}", merchant.id));
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
        self.shared
            .resource_updated(format!("{MERCHANT_URI_PREFIX}{}", merchant.id));
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
        // The payment's resource now lists the refund: tell subscribed 2026-07-28 clients.
        self.shared
            .resource_updated(format!("{PAYMENT_URI_PREFIX}{}", args.payment_id));
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
        if !was_deleted {
            self.shared
                .resource_updated(format!("{MERCHANT_URI_PREFIX}{}", merchant.id));
        }
        text_result(if was_deleted {
            format!("Merchant {} was already deleted.", merchant.id)
        } else {
            format!("Merchant {} ({}) deleted.", merchant.id, merchant.name)
        })
    }

    #[tool(
        description = "List recent card payments taken in a region (us-east1, us-west1, eu-west1, asia-south1).",
        annotations(read_only_hint = true)
    )]
    async fn list_payments_by_region(
        &self,
        Parameters(args): Parameters<RegionArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let limit = args
            .limit
            .unwrap_or(DEFAULT_REGION_PAYMENTS)
            .min(MAX_REGION_PAYMENTS);
        let Some(payments) = data::region_payments(&args.region, limit as usize) else {
            return tool_error(format!(
                "unknown region {:?}; known regions: {}",
                args.region,
                data::REGIONS.join(", ")
            ));
        };
        text_result(pretty(&json!({
            "region": args.region,
            "count": payments.len(),
            "payments": payments,
        })))
    }

    #[tool(
        description = "Export a customer's monthly card statement. Asks which month through a form elicitation (an MCP 2026-07-28 multi round-trip request), then returns the statement lines.",
        annotations(read_only_hint = true)
    )]
    async fn export_statement(
        &self,
        Parameters(args): Parameters<StatementArgs>,
        RequestState(state): RequestState,
        InputResponses(responses): InputResponses,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let Some(customer) = data::find_customer(&args.customer_id) else {
            return tool_error(format!("unknown customer {:?}", args.customer_id)).map(Into::into);
        };
        if let Some(month) = &args.month {
            if !statement::valid_month(month) {
                return tool_error(format!("month must be YYYY-MM, got {month:?}")).map(Into::into);
            }
        }
        // rmcp refuses an input_required result to older peers, and they have no MRTR retry.
        if !is_modern(&ctx) {
            return tool_error(format!(
                "export_statement needs MCP protocol version {} (multi round-trip requests); this request uses {}",
                ProtocolVersion::V_2026_07_28,
                ctx.protocol_version()
                    .map_or_else(|| "an unknown version".to_owned(), |v| v.to_string())
            ))
            .map(Into::into);
        }
        let ask = |note: Option<&str>| -> Result<CallToolResponse, ErrorData> {
            if !supports_form_elicitation(&ctx) {
                let mut required = ClientCapabilities::default();
                required.elicitation =
                    Some(ElicitationCapability::new().with_form(FormElicitationCapability::new()));
                return Err(ErrorData::missing_required_client_capability(required));
            }
            Ok(InputRequiredResult::new(
                Some(statement::input_requests(
                    customer,
                    args.month.as_deref(),
                    note,
                )),
                Some(self.shared.sealer.seal(customer.id)),
            )
            .into())
        };
        // No state: a first call (answers given without one cannot be trusted, so ask anew).
        let Some(state) = state else {
            return ask(None);
        };
        // The state crossed the client: refuse anything this server did not seal for this
        // tool and customer.
        if let Err(error) = self.shared.sealer.open(&state, customer.id) {
            return Err(ErrorData::invalid_params(
                format!("requestState refused: {error}"),
                Some(json!({ "tool": statement::TOOL, "customer_id": customer.id })),
            ));
        }
        match statement::month_answer(responses.as_ref()) {
            MonthAnswer::Month(month) => {
                let lines = statement::statement_lines(customer, &month);
                let mut result =
                    CallToolResult::success(vec![ContentBlock::text(lines.join("\n"))]);
                // 2026-07-28 allows any JSON value here; an array shows a gateway that
                // structuredContent is not always an object.
                result.structured_content = Some(json!(lines));
                Ok(result.into())
            }
            MonthAnswer::Refused(action) => tool_error(format!(
                "statement export not done: the user chose {action:?}"
            ))
            .map(Into::into),
            // The spec asks servers to re-ask rather than fail when an answer is missing.
            MonthAnswer::Missing(Some(bad)) => {
                ask(Some(&format!("{bad:?} is not a month in YYYY-MM form.")))
            }
            MonthAnswer::Missing(None) => ask(None),
        }
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
        if args.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(u64::from(args.delay_ms.min(10_000)))).await;
        }
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

/// Whether an info-level log message may be sent for this request. Before 2026-07-28 the session's
/// `logging/setLevel` governs (the demo sends regardless); from 2026-07-28 logging is opt-in per
/// request: only when its `_meta` carries `io.modelcontextprotocol/logLevel` at info or below.
/// rmcp leaves this check to the handler.
#[allow(deprecated)]
fn info_logs_wanted(ctx: &RequestContext<RoleServer>) -> bool {
    use rmcp::model::LoggingLevel;
    if !is_modern(ctx) {
        return true;
    }
    matches!(
        ctx.meta.log_level(),
        Some(LoggingLevel::Debug | LoggingLevel::Info)
    )
}

/// Sends one MCP log message. Logging is deprecated by the newest MCP revision but still part of
/// the versions clients speak today, and it is another notification shape the gateway must mask.
/// In session mode rmcp routes log messages to the session's GET stream, not the POST response;
/// for 2026-07-28 they go on the request's own SSE stream.
#[allow(deprecated)]
async fn log_message(ctx: &RequestContext<RoleServer>, step: u32, count: u32, pan: &str) {
    use rmcp::model::{LoggingLevel, LoggingMessageNotificationParam};
    if !info_logs_wanted(ctx) {
        return;
    }
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
    if !info_logs_wanted(ctx) {
        return;
    }
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

/// Cache hints for a 2026-07-28 result; older peers get none (their schemas do not know them).
fn cache_hints(
    ctx: &RequestContext<RoleServer>,
    ttl_ms: u64,
    scope: CacheScope,
) -> Option<(u64, CacheScope)> {
    is_modern(ctx).then_some((ttl_ms, scope))
}

impl PaymentsServer {
    /// Whether `uri` names a resource of this server that can change (and so be subscribed to).
    fn is_subscribable(&self, uri: &str) -> bool {
        if uri == POLICY_URI {
            return true;
        }
        if let Some(id) = uri.strip_prefix(MERCHANT_URI_PREFIX) {
            return self.ledger().merchants.iter().any(|m| m.id == id);
        }
        uri.strip_prefix(PAYMENT_URI_PREFIX)
            .is_some_and(|id| data::payment_card(id).is_some())
    }
}

// `list_tools` is written out (not generated) to set a TTL; `tool_handler` keeps ours.
#[tool_handler(router = self.tool_router)]
impl ServerHandler for PaymentsServer {
    #[allow(deprecated)] // logging capability: see `log_message`
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_prompts()
                .enable_resources()
                // Resource updates reach 2026-07-28 clients through subscriptions/listen;
                // `initialize` hides this from older clients (see there).
                .enable_resources_subscribe()
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

    async fn initialize(
        &self,
        request: InitializeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<InitializeResult, ErrorData> {
        context.peer.set_peer_info(request.clone());
        let mut result = self.negotiate_initialize(&request)?;
        // The legacy resources/subscribe is not implemented, so sessions opened with
        // `initialize` (2025 revisions) see the capabilities they always saw.
        if let Some(resources) = result.capabilities.resources.as_mut() {
            resources.subscribe = None;
        }
        Ok(result)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let mut result = ListToolsResult::with_all_items(self.tool_router.list_all());
        if let Some((ttl, scope)) = cache_hints(&context, LIST_TTL_MS, CacheScope::Public) {
            result = result.with_ttl_ms(ttl).with_cache_scope(scope);
        }
        Ok(result)
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        let mut result = ListPromptsResult::with_all_items(self.prompt_router.list_all());
        if let Some((ttl, scope)) = cache_hints(&context, LIST_TTL_MS, CacheScope::Public) {
            result = result.with_ttl_ms(ttl).with_cache_scope(scope);
        }
        Ok(result)
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        let prompt_context = PromptContext::new(self, request.name, request.arguments, context);
        self.prompt_router.get_prompt(prompt_context).await
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
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let mut resources = vec![Resource::new(POLICY_URI, "policy")
            .with_title("Payments operations policy")
            .with_mime_type("text/markdown")];
        resources.extend(self.ledger().merchants.iter().map(|m| {
            Resource::new(format!("{MERCHANT_URI_PREFIX}{}", m.id), m.id.clone())
                .with_title(m.name.clone())
                .with_mime_type("application/json")
        }));
        let mut result = ListResourcesResult::with_all_items(resources);
        if let Some((ttl, scope)) = cache_hints(&context, RESOURCE_LIST_TTL_MS, CacheScope::Public)
        {
            result = result.with_ttl_ms(ttl).with_cache_scope(scope);
        }
        Ok(result)
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        let mut result = ListResourceTemplatesResult::with_all_items(vec![
            ResourceTemplate::new(format!("{MERCHANT_URI_PREFIX}{{id}}"), "merchant")
                .with_title("Merchant configuration")
                .with_mime_type("application/json"),
            ResourceTemplate::new(format!("{PAYMENT_URI_PREFIX}{{id}}"), "payment")
                .with_title("Card payment and its refunds")
                .with_mime_type("application/json"),
        ]);
        if let Some((ttl, scope)) = cache_hints(&context, RESOURCE_LIST_TTL_MS, CacheScope::Public)
        {
            result = result.with_ttl_ms(ttl).with_cache_scope(scope);
        }
        Ok(result)
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let uri = request.uri;
        // The policy is the same for everyone; merchants and payments change with every write
        // tool and carry card numbers, so they are private and stale at once.
        let (contents, ttl, scope) = if uri == POLICY_URI {
            (
                ResourceContents::text(POLICY_TEXT, uri).with_mime_type("text/markdown"),
                RESOURCE_LIST_TTL_MS,
                CacheScope::Public,
            )
        } else if let Some(id) = uri.strip_prefix(MERCHANT_URI_PREFIX) {
            let ledger = self.ledger();
            let Some(merchant) = ledger.merchants.iter().find(|m| m.id == id) else {
                return Err(ErrorData::resource_not_found(
                    format!("no merchant {id:?}"),
                    Some(json!({ "uri": uri })),
                ));
            };
            (
                ResourceContents::text(pretty(&merchant_json(merchant)), uri)
                    .with_mime_type("application/json"),
                0,
                CacheScope::Private,
            )
        } else if let Some(id) = uri.strip_prefix(PAYMENT_URI_PREFIX) {
            let Some(pan) = data::payment_card(id) else {
                return Err(ErrorData::resource_not_found(
                    format!("no payment {id:?}"),
                    Some(json!({ "uri": uri })),
                ));
            };
            let refunds: Vec<Value> = self
                .ledger()
                .refunds
                .iter()
                .filter(|r| r["payment_id"] == id)
                .cloned()
                .collect();
            let refunded: f64 = refunds.iter().filter_map(|r| r["amount"].as_f64()).sum();
            let payment = json!({
                "id": id,
                "card": { "pan": pan, "last4": &pan[pan.len() - 4..] },
                "status": if refunds.is_empty() { "captured" } else { "refunded" },
                "refunded_total": refunded,
                "refunds": refunds,
            });
            (
                ResourceContents::text(pretty(&payment), uri).with_mime_type("application/json"),
                0,
                CacheScope::Private,
            )
        } else {
            return Err(ErrorData::resource_not_found(
                format!("no resource {uri:?}"),
                Some(json!({ "uri": uri })),
            ));
        };
        let mut result = ReadResourceResult::new(vec![contents]);
        if let Some((ttl, scope)) = cache_hints(&context, ttl, scope) {
            result = result.with_ttl_ms(ttl).with_cache_scope(scope);
        }
        Ok(result.into())
    }

    /// `subscriptions/listen` (2026-07-28): resource updates for this server's own resources.
    /// rmcp intersects this with the request and the advertised capabilities, sends the
    /// `notifications/subscriptions/acknowledged` and then runs `listen`.
    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        let uris: Vec<String> = requested
            .resource_subscriptions
            .iter()
            .flatten()
            .filter(|uri| self.is_subscribable(uri))
            .cloned()
            .collect();
        Some(if uris.is_empty() {
            SubscriptionFilter::new()
        } else {
            SubscriptionFilter::builder()
                .resource_subscriptions(uris)
                .build()
        })
    }

    async fn listen(&self, context: SubscriptionContext) -> Result<(), ErrorData> {
        let mut updates = self.shared.updates.subscribe();
        let sink = context.sink().clone();
        loop {
            let uri = tokio::select! {
                // The client closed the stream (its cancellation signal) or the server stops.
                () = context.cancelled() => return Ok(()),
                update = updates.recv() => match update {
                    Ok(uri) => uri,
                    // A listener that fell behind misses some updates; later ones still count.
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                },
            };
            match sink.notify_resource_updated(uri).await {
                // Not a URI this listener subscribed to.
                Ok(()) | Err(SubscriptionSendError::NotificationNotAccepted(_)) => {}
                Err(_) => return Ok(()),
            }
        }
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

    fn server() -> PaymentsServer {
        PaymentsServer::new(Arc::new(Shared::new(
            StateSealer::new(b"a test key that is at least thirty-two bytes").unwrap(),
        )))
    }

    #[test]
    fn region_is_mirrored_into_a_header() {
        let tool = server()
            .tool_router
            .get("list_payments_by_region")
            .cloned()
            .unwrap();
        assert_eq!(
            tool.input_schema["properties"]["region"]["x-mcp-header"],
            "Region"
        );
        assert!(tool.input_schema["properties"]["limit"]
            .get("x-mcp-header")
            .is_none());
    }

    #[test]
    fn subscriptions_accept_only_this_servers_resources() {
        let requested = SubscriptionFilter::builder()
            .resource_subscriptions([
                POLICY_URI,
                "payments://merchants/m_1",
                "payments://merchants/m_404",
                "payments://payments/pay_1001",
                "payments://payments/nope",
                "https://elsewhere.example/x",
            ])
            .tools_list_changed()
            .build();
        let accepted = server().accepted_subscription_filter(&requested).unwrap();
        assert_eq!(
            accepted.resource_subscriptions.unwrap(),
            [
                POLICY_URI,
                "payments://merchants/m_1",
                "payments://payments/pay_1001"
            ]
        );
        assert_eq!(accepted.tools_list_changed, None);
    }

    #[test]
    fn tools_are_all_listed() {
        let server = server();
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
                "export_statement",
                "fixed_result",
                "get_customer",
                "list_payments_by_region",
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
