//! The demo's fake payments data.
//!
//! Every card number here is a published test PAN (Luhn-valid, real issuer prefixes) so the
//! gateway's masker has to catch it; nothing here is a real card. The shapes vary on purpose:
//! plain JSON string fields, grouped with dashes or spaces, and embedded in free text. A few
//! digit runs that are NOT card numbers (Luhn-invalid lookalikes, 20-digit references) are mixed
//! in so tests can check the masker leaves them alone.

use serde_json::{json, Value};

/// One demo customer: its record and the digits-only card numbers it owns (for transactions).
pub struct Customer {
    pub id: &'static str,
    pub name: &'static str,
    pub cards: &'static [&'static str],
}

pub const CUSTOMERS: &[Customer] = &[
    Customer {
        id: "cus_1",
        name: "Ada Lovelace",
        cards: &[
            "4111111111111111",
            "2223003122003222",
            "378282246310005",
            "5555555555554444",
        ],
    },
    Customer {
        id: "cus_2",
        name: "Grace Hopper",
        cards: &[
            "4242424242424242",
            "5105105105105100",
            "371449635398431",
            "6011111111111117",
            "4000056655665556",
        ],
    },
    Customer {
        id: "cus_3",
        name: "Alan Turing",
        cards: &[
            "3530111333300000",
            "2223000048410010",
            "340000000000009",
            "6200000000000005",
            "3056930009020004",
        ],
    },
];

/// Looks up a customer by id.
pub fn find_customer(id: &str) -> Option<&'static Customer> {
    CUSTOMERS.iter().find(|c| c.id == id)
}

/// The full customer record, as `get_customer` returns it.
pub fn customer_record(id: &str) -> Option<Value> {
    let record = match id {
        "cus_1" => json!({
            "id": "cus_1",
            "name": "Ada Lovelace",
            "email": "ada@example.com",
            "phone": "+1 415 555 0101",
            "default_card": {
                "brand": "visa",
                "pan": "4111111111111111",
                "exp": "12/30",
                "cardholder": "ADA LOVELACE"
            },
            "cards": [
                { "brand": "mastercard", "number": "2223-0031-2200-3222", "exp": "01/29" },
                { "brand": "amex", "number": "3782 822463 10005", "exp": "07/31" }
            ],
            "notes": "customer read card 5555 5555 5555 4444 over the phone; keep 4111111111111111 as default",
            // Not card numbers: a Luhn-invalid lookalike and a 20-digit reference.
            "invoice_number": "4111111111111112",
            "loyalty_id": "98765432109876543210"
        }),
        "cus_2" => json!({
            "id": "cus_2",
            "name": "Grace Hopper",
            "email": "grace@example.com",
            "phone": "+1 212 555 0102",
            "default_card": {
                "brand": "visa",
                "pan": "4242424242424242",
                "exp": "03/28",
                "cardholder": "GRACE HOPPER"
            },
            "cards": [
                { "brand": "mastercard", "number": "5105-1051-0510-5100", "exp": "11/27" },
                { "brand": "amex", "number": "3714 496353 98431", "exp": "05/30" }
            ],
            "notes": "card 6011 1111 1111 1117 declined twice; customer switched to 4000-0566-5566-5556",
            "invoice_number": "1234567890123456",
            "loyalty_id": "12345678901234567890"
        }),
        "cus_3" => json!({
            "id": "cus_3",
            "name": "Alan Turing",
            "email": "alan@example.com",
            "phone": "+44 20 7946 0103",
            "default_card": {
                "brand": "jcb",
                "pan": "3530111333300000",
                "exp": "08/29",
                "cardholder": "ALAN TURING"
            },
            "cards": [
                { "brand": "mastercard", "number": "2223-0000-4841-0010", "exp": "02/31" },
                { "brand": "amex", "number": "3400 000000 00009", "exp": "09/28" }
            ],
            "notes": "disputed charge on UnionPay 6200 0000 0000 0005; old Diners card 3056-9300-0902-0004 closed",
            "invoice_number": "3530111333300001",
            "loyalty_id": "55555555555544440000"
        }),
        _ => return None,
    };
    Some(record)
}

/// How a card number is written in a generated line; rotated so every shape appears.
#[derive(Clone, Copy)]
pub enum PanShape {
    Plain,
    Dashes,
    Spaces,
}

impl PanShape {
    pub fn nth(n: usize) -> Self {
        match n % 3 {
            0 => PanShape::Plain,
            1 => PanShape::Dashes,
            _ => PanShape::Spaces,
        }
    }
}

/// Writes `pan` (digits only) in `shape`, grouped the way the brand prints it
/// (Amex 4-6-5, Diners 14-digit 4-6-4, everything else in fours).
pub fn format_pan(pan: &str, shape: PanShape) -> String {
    let sep = match shape {
        PanShape::Plain => return pan.to_owned(),
        PanShape::Dashes => '-',
        PanShape::Spaces => ' ',
    };
    let groups: &[usize] = match pan.len() {
        15 => &[4, 6, 5],
        14 => &[4, 6, 4],
        _ => &[4, 4, 4, 4, 4],
    };
    let mut out = String::with_capacity(pan.len() + 4);
    let mut rest = pan;
    for &size in groups {
        if rest.is_empty() {
            break;
        }
        let (head, tail) = rest.split_at(size.min(rest.len()));
        if !out.is_empty() {
            out.push(sep);
        }
        out.push_str(head);
        rest = tail;
    }
    out
}

/// Every test PAN the server hands out, digits only.
pub fn all_pans() -> impl Iterator<Item = &'static str> {
    CUSTOMERS.iter().flat_map(|c| c.cards.iter().copied())
}

/// Log lines for `search_logs`: prose with card numbers in several shapes.
pub const LOG_LINES: &[&str] = &[
    "2025-03-01T09:14:07Z INFO  auth approved txn=txn_cus_1_001 customer=cus_1 card=4111111111111111 amount=42.00 USD merchant=m_1",
    "2025-03-01T09:15:22Z WARN  auth declined customer=cus_1 card=5555-5555-5555-4444 reason=insufficient_funds merchant=m_2",
    "2025-03-01T09:16:40Z INFO  refund issued payment=pay_1001 to card 3782 822463 10005 amount=10.00 USD",
    "2025-03-01T09:18:02Z ERROR gateway timeout for customer=cus_2 card=6011111111111117; retrying in 2s",
    "2025-03-01T09:20:11Z INFO  customer cus_2 updated default card to 4242 4242 4242 4242",
    "2025-03-01T09:21:55Z DEBUG raw track2 from terminal t_9: ;4000056655665556=30121010000000000000?",
    "2025-03-01T09:23:30Z INFO  payout to merchant m_3 account ****6789 completed",
    "2025-03-01T09:24:12Z WARN  chargeback opened customer=cus_3 card 3530111333300000 (JCB) amount=99.99 USD",
    "2025-03-01T09:25:45Z INFO  order 98765432109876543210 shipped to customer=cus_3",
    "2025-03-01T09:26:00Z INFO  card 2223003122003222 tokenized as tok_7QaZ for customer=cus_1",
    "2025-03-01T09:27:13Z ERROR fraud check flagged card 5105 1051 0510 5100 score=87 merchant=m_2",
    "2025-03-01T09:28:40Z INFO  agent note: \"caller gave 3714-496353-98431, verified CVV\" customer=cus_2",
];

/// Regions `list_payments_by_region` knows; its `region` argument is mirrored into the
/// `Mcp-Param-Region` header by 2026-07-28 clients.
pub const REGIONS: &[&str] = &["us-east1", "us-west1", "eu-west1", "asia-south1"];

/// Payments taken in `region` (None for an unknown region), newest first.
pub fn region_payments(region: &str, limit: usize) -> Option<Vec<Value>> {
    let r = REGIONS.iter().position(|known| *known == region)?;
    let pans: Vec<&str> = all_pans().collect();
    Some(
        (0..limit)
            .map(|i| {
                let n = r * 100 + i;
                let pan = pans[(r * 3 + i) % pans.len()];
                json!({
                    "payment_id": format!("pay_{}", 2001 + n),
                    "region": region,
                    "amount": (n * 911 + 1_500) as f64 / 100.0,
                    "currency": if region.starts_with("eu-") { "EUR" } else { "USD" },
                    "merchant_id": format!("m_{}", i % 3 + 1),
                    "card": format_pan(pan, PanShape::nth(i)),
                    "note": format!("authorized on card {pan}"),
                })
            })
            .collect(),
    )
}

/// The card a payment id (`pay_<number>`) was taken on: a stable pick among the demo PANs.
pub fn payment_card(payment_id: &str) -> Option<&'static str> {
    let n: usize = payment_id.strip_prefix("pay_")?.parse().ok()?;
    let pans: Vec<&'static str> = all_pans().collect();
    Some(pans[n % pans.len()])
}

/// A payments merchant whose configuration the write tools change.
#[derive(Clone, Debug)]
pub struct Merchant {
    pub id: String,
    pub name: String,
    pub payout_account: String,
    pub routing_number: String,
    pub fraud_threshold: f64,
    pub settlement_card: String,
    pub deleted: bool,
}

/// The merchants the server starts with.
pub fn initial_merchants() -> Vec<Merchant> {
    [
        (
            "m_1",
            "Analytical Engines Ltd",
            "000123456789",
            "4111111111111111",
        ),
        (
            "m_2",
            "Compiler Supplies Inc",
            "000987654321",
            "5555555555554444",
        ),
        ("m_3", "Bombe Works", "000555000111", "378282246310005"),
    ]
    .into_iter()
    .map(|(id, name, account, card)| Merchant {
        id: id.to_owned(),
        name: name.to_owned(),
        payout_account: account.to_owned(),
        routing_number: "021000021".to_owned(),
        fraud_threshold: 75.0,
        settlement_card: card.to_owned(),
        deleted: false,
    })
    .collect()
}

/// Shows only the last four characters, as a confirmation message would.
pub fn mask_account(account: &str) -> String {
    let chars: Vec<char> = account.chars().collect();
    let keep = chars.len().min(4);
    let tail: String = chars[chars.len() - keep..].iter().collect();
    format!("****{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn luhn_ok(digits: &str) -> bool {
        let mut sum = 0;
        for (i, c) in digits.chars().rev().enumerate() {
            let mut d = c.to_digit(10).unwrap();
            if i % 2 == 1 {
                d *= 2;
                if d > 9 {
                    d -= 9;
                }
            }
            sum += d;
        }
        sum % 10 == 0
    }

    fn digits(s: &str) -> String {
        s.chars().filter(char::is_ascii_digit).collect()
    }

    #[test]
    fn every_demo_pan_passes_luhn() {
        for pan in all_pans() {
            assert!(luhn_ok(pan), "{pan} fails Luhn");
        }
        for m in initial_merchants() {
            assert!(
                luhn_ok(&m.settlement_card),
                "{} fails Luhn",
                m.settlement_card
            );
        }
    }

    #[test]
    fn record_card_fields_are_luhn_valid_and_lookalikes_are_not() {
        for c in CUSTOMERS {
            let r = customer_record(c.id).unwrap();
            assert!(luhn_ok(r["default_card"]["pan"].as_str().unwrap()));
            for card in r["cards"].as_array().unwrap() {
                assert!(luhn_ok(&digits(card["number"].as_str().unwrap())));
            }
            assert!(!luhn_ok(r["invoice_number"].as_str().unwrap()));
        }
        assert!(customer_record("cus_404").is_none());
    }

    #[test]
    fn formats_by_brand() {
        assert_eq!(
            format_pan("378282246310005", PanShape::Spaces),
            "3782 822463 10005"
        );
        assert_eq!(
            format_pan("4111111111111111", PanShape::Dashes),
            "4111-1111-1111-1111"
        );
        assert_eq!(
            format_pan("30569309025904", PanShape::Spaces),
            "3056 930902 5904"
        );
        assert_eq!(
            format_pan("4111111111111111", PanShape::Plain),
            "4111111111111111"
        );
    }

    #[test]
    fn region_payments_carry_cards() {
        let payments = region_payments("eu-west1", 4).unwrap();
        assert_eq!(payments.len(), 4);
        assert!(payments
            .iter()
            .all(|p| luhn_ok(&digits(p["card"].as_str().unwrap()))));
        assert!(region_payments("mars", 4).is_none());
        assert_eq!(payment_card("pay_1001").map(luhn_ok), Some(true));
        assert!(payment_card("refund_1").is_none());
    }

    #[test]
    fn masks_accounts() {
        assert_eq!(mask_account("000123456789"), "****6789");
        assert_eq!(mask_account("12"), "****12");
    }
}
