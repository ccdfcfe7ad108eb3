//! `export_statement`, the MCP 2026-07-28 multi round-trip request (MRTR) tool: the first call
//! answers `input_required` with a form elicitation whose message names the card in clear, and
//! an HMAC-sealed `requestState`; the retry carries the month and the same state.
//!
//! The state travels through the client (and any gateway), so it is attacker-controlled input:
//! it is sealed with rmcp's `RequestStateCodec` and bound, as associated data, to the tool and the
//! customer, so a state minted for one customer cannot complete another customer's export, and a
//! changed byte fails verification.

use std::{io::Read, time::Duration};

use rmcp::model::{InputRequest, InputRequests, RequestStateCodec, RequestStateError, SealOptions};
use serde_json::{json, Value};

use crate::data::{format_pan, Customer, PanShape};

pub const TOOL: &str = "export_statement";
/// The key of the one input request, in `inputRequests` and `inputResponses`.
pub const INPUT_KEY: &str = "statement_month";
/// How long a sealed state stays valid: long enough for a person to answer (or a gateway to hold
/// the retry for an approval), short enough to bound replays.
const STATE_TTL: Duration = Duration::from_secs(15 * 60);

/// Seals and opens `export_statement` request states with one per-process key.
pub struct StateSealer {
    codec: RequestStateCodec,
}

impl std::fmt::Debug for StateSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateSealer(..)")
    }
}

impl StateSealer {
    /// A sealer for `key` (at least 32 bytes).
    pub fn new(key: &[u8]) -> Result<Self, RequestStateError> {
        Ok(Self {
            codec: RequestStateCodec::try_new(key.to_vec())?,
        })
    }

    /// A sealer with a fresh random key: states do not survive a restart, which is fine for a
    /// demo (a client then simply starts over).
    pub fn random() -> std::io::Result<Self> {
        let mut key = [0u8; 32];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut key)?;
        Self::new(&key).map_err(std::io::Error::other)
    }

    /// The state for a first round about `customer_id`.
    pub fn seal(&self, customer_id: &str) -> String {
        let payload = json!({ "tool": TOOL, "customer_id": customer_id, "round": 1 });
        self.codec.seal_with(
            payload.to_string().as_bytes(),
            &SealOptions::new()
                .associated_data(binding(customer_id).as_bytes())
                .ttl(STATE_TTL),
        )
    }

    /// Verifies a state echoed on a retry about `customer_id`.
    pub fn open(&self, sealed: &str, customer_id: &str) -> Result<(), RequestStateError> {
        let payload = self
            .codec
            .open_with(sealed, binding(customer_id).as_bytes())?;
        // The tag already covers the payload; checking it again guards against a future change
        // that seals other payloads with the same key and binding.
        let payload: Value =
            serde_json::from_slice(&payload).map_err(RequestStateError::Deserialization)?;
        if payload["tool"] == TOOL && payload["customer_id"] == customer_id {
            Ok(())
        } else {
            Err(RequestStateError::IntegrityCheckFailed)
        }
    }
}

/// Associated data: the tool and the customer the state was minted for.
fn binding(customer_id: &str) -> String {
    format!("tools/call:{TOOL}\0customer:{customer_id}")
}

/// `YYYY-MM` with a real month.
pub fn valid_month(month: &str) -> bool {
    let bytes = month.as_bytes();
    bytes.len() == 7
        && bytes[4] == b'-'
        && bytes[..4].iter().chain(&bytes[5..]).all(u8::is_ascii_digit)
        && matches!(month[5..].parse::<u8>(), Ok(1..=12))
}

/// The card the statement is for: the customer's first card, written the way a person reads it.
pub fn statement_card(customer: &Customer) -> String {
    format_pan(customer.cards[0], PanShape::Spaces)
}

/// The `inputRequests` map of the first round: one form elicitation asking for the month. The
/// message names the card in clear, on purpose: a gateway must mask it on the way to the client.
pub fn input_requests(
    customer: &Customer,
    suggested: Option<&str>,
    retry_note: Option<&str>,
) -> InputRequests {
    let mut month = json!({
        "type": "string",
        "title": "Statement month",
        "description": "Month as YYYY-MM, e.g. 2026-11",
        "minLength": 7,
        "maxLength": 7,
    });
    if let Some(suggested) = suggested {
        month["default"] = json!(suggested);
    }
    let mut message = format!(
        "Export the statement of card {} for which month?",
        statement_card(customer)
    );
    if let Some(note) = retry_note {
        message = format!("{note} {message}");
    }
    let request = json!({
        "method": "elicitation/create",
        "params": {
            "mode": "form",
            "message": message,
            "requestedSchema": {
                "type": "object",
                "properties": { "month": month },
                "required": ["month"],
            },
        },
    });
    let request: InputRequest =
        serde_json::from_value(request).expect("the elicitation request is well-formed");
    InputRequests::from([(INPUT_KEY.to_owned(), request)])
}

/// What the client answered to the month question.
#[derive(Debug, PartialEq, Eq)]
pub enum MonthAnswer {
    /// Accepted with a valid month.
    Month(String),
    /// Declined or cancelled.
    Refused(String),
    /// No answer, or an accepted answer without a usable month (the value, if any).
    Missing(Option<String>),
}

/// Reads `inputResponses.statement_month` (an `ElicitResult`).
pub fn month_answer(responses: Option<&rmcp::model::InputResponses>) -> MonthAnswer {
    let Some(answer) = responses.and_then(|r| r.get(INPUT_KEY)) else {
        return MonthAnswer::Missing(None);
    };
    match answer["action"].as_str() {
        Some("accept") => match answer["content"]["month"].as_str() {
            Some(month) if valid_month(month.trim()) => MonthAnswer::Month(month.trim().to_owned()),
            Some(other) => MonthAnswer::Missing(Some(other.to_owned())),
            None => MonthAnswer::Missing(None),
        },
        Some(action @ ("decline" | "cancel")) => MonthAnswer::Refused(action.to_owned()),
        _ => MonthAnswer::Missing(None),
    }
}

/// The statement: one line per card on file, every card number in full.
pub fn statement_lines(customer: &Customer, month: &str) -> Vec<String> {
    let mut lines = vec![format!(
        "Statement {month} for {} ({}), card {}",
        customer.id,
        customer.name,
        statement_card(customer)
    )];
    for (i, pan) in customer.cards.iter().enumerate() {
        let day = 3 + i * 6;
        let amount = (i * 2_417 + 1_250) as f64 / 100.0;
        lines.push(format!(
            "{month}-{day:02} card {} purchase {amount:.2} USD",
            format_pan(pan, PanShape::nth(i))
        ));
    }
    lines.push(format!("{} transaction(s)", customer.cards.len()));
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::find_customer;

    fn sealer() -> StateSealer {
        StateSealer::new(b"a test key that is at least thirty-two bytes").unwrap()
    }

    #[test]
    fn state_round_trips_for_the_same_customer() {
        let s = sealer();
        let state = s.seal("cus_1");
        s.open(&state, "cus_1").unwrap();
    }

    #[test]
    fn tampered_state_is_refused() {
        let s = sealer();
        let state = s.seal("cus_1");
        // Flip one character anywhere: payload, tag, or framing.
        for i in 0..state.len() {
            let mut bytes = state.clone().into_bytes();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let tampered = String::from_utf8(bytes).unwrap();
            if tampered != state {
                assert!(s.open(&tampered, "cus_1").is_err(), "byte {i} of {state}");
            }
        }
        assert!(s.open("", "cus_1").is_err());
        assert!(s.open("not a state", "cus_1").is_err());
    }

    #[test]
    fn state_for_another_customer_or_key_is_refused() {
        let s = sealer();
        let state = s.seal("cus_1");
        assert!(matches!(
            s.open(&state, "cus_2"),
            Err(RequestStateError::IntegrityCheckFailed)
        ));
        let other = StateSealer::new(b"another key, also thirty-two bytes long").unwrap();
        assert!(other.open(&state, "cus_1").is_err());
        assert!(StateSealer::random()
            .unwrap()
            .open(&state, "cus_1")
            .is_err());
    }

    #[test]
    fn short_keys_are_refused() {
        assert!(StateSealer::new(b"short").is_err());
    }

    #[test]
    fn months() {
        for ok in ["2026-11", "1999-01", "2030-12"] {
            assert!(valid_month(ok), "{ok}");
        }
        for bad in [
            "2026-13",
            "2026-00",
            "2026-1",
            "26-11",
            "2026/11",
            "２０２６-11",
            "",
        ] {
            assert!(!valid_month(bad), "{bad}");
        }
    }

    #[test]
    fn the_question_names_the_card_in_clear() {
        let customer = find_customer("cus_1").unwrap();
        let requests =
            serde_json::to_value(input_requests(customer, Some("2026-11"), None)).unwrap();
        let params = &requests[INPUT_KEY]["params"];
        assert_eq!(requests[INPUT_KEY]["method"], "elicitation/create");
        assert_eq!(params["mode"], "form");
        assert_eq!(
            params["message"],
            "Export the statement of card 4111 1111 1111 1111 for which month?"
        );
        assert_eq!(
            params["requestedSchema"]["properties"]["month"]["type"],
            "string"
        );
        assert_eq!(
            params["requestedSchema"]["properties"]["month"]["default"],
            "2026-11"
        );
    }

    #[test]
    fn answers() {
        let responses = |v: Value| serde_json::from_value(json!({ INPUT_KEY: v })).unwrap();
        assert_eq!(
            month_answer(Some(&responses(
                json!({"action":"accept","content":{"month":"2026-11"}})
            ))),
            MonthAnswer::Month("2026-11".into())
        );
        assert_eq!(
            month_answer(Some(&responses(json!({"action":"decline"})))),
            MonthAnswer::Refused("decline".into())
        );
        assert_eq!(
            month_answer(Some(&responses(
                json!({"action":"accept","content":{"month":"soon"}})
            ))),
            MonthAnswer::Missing(Some("soon".into()))
        );
        assert_eq!(month_answer(None), MonthAnswer::Missing(None));
    }

    #[test]
    fn statement_holds_every_card() {
        let customer = find_customer("cus_2").unwrap();
        let text = statement_lines(customer, "2026-11").join("\n");
        let compact: String = text.chars().filter(|c| !matches!(c, ' ' | '-')).collect();
        for pan in customer.cards {
            assert!(compact.contains(pan), "{pan} missing from {text}");
        }
    }
}
