//! Card numbers in every shape the gateway must catch, and look-alikes it must leave alone.
//!
//! The ground truth of the `card_shapes` tools: the server builds its answers from here, and the
//! end-to-end masking tests import the same lists to know what a client must never see and what
//! must arrive byte for byte.

use serde_json::{json, Value};

/// A test card: the brand the gateway should report and its digits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeCard {
    pub brand: &'static str,
    pub digits: String,
}

impl ShapeCard {
    pub fn last_four(&self) -> &str {
        &self.digits[self.digits.len() - 4..]
    }
}

/// (brand, issuer prefix, length) for every range the gateway knows, including the edges of the
/// wide ranges and the lengths other than 16 that networks issue.
const CARD_RANGES: &[(&str, &str, usize)] = &[
    ("visa", "4", 16),
    ("visa", "4", 13),
    ("visa", "4", 19),
    ("mastercard", "51", 16),
    ("mastercard", "55", 16),
    ("mastercard", "2221", 16),
    ("mastercard", "2720", 16),
    ("amex", "34", 15),
    ("amex", "37", 15),
    ("discover", "6011", 16),
    ("discover", "644", 16),
    ("discover", "649", 19),
    ("discover", "65", 16),
    // 622126–622925 is Discover's share of the UnionPay range; the gateway reports it as UnionPay.
    ("unionpay", "622126", 16),
    ("unionpay", "622925", 16),
    ("jcb", "3528", 16),
    ("jcb", "3589", 19),
    ("diners", "300", 14),
    ("diners", "305", 14),
    ("diners", "36", 14),
    ("diners", "38", 16),
    ("diners", "39", 16),
    ("unionpay", "62", 16),
    ("unionpay", "62", 19),
    ("maestro", "6304", 16),
    ("maestro", "50", 18),
    ("maestro", "67", 19),
    ("mir", "2200", 16),
    ("mir", "2204", 16),
    ("rupay", "60", 16),
    ("rupay", "6521", 16),
    ("rupay", "508", 16),
    ("verve", "506099", 19),
    ("verve", "650002", 16),
];

/// Appends the Luhn check digit to `body` (ASCII digits).
pub fn with_check_digit(body: &str) -> String {
    let mut sum = 0u32;
    // The check digit will sit at the end, so the body's last digit is the first one doubled.
    for (i, c) in body.bytes().rev().enumerate() {
        let d = u32::from(c - b'0');
        sum += if i % 2 == 0 {
            let twice = d * 2;
            if twice > 9 {
                twice - 9
            } else {
                twice
            }
        } else {
            d
        };
    }
    format!("{body}{}", (10 - sum % 10) % 10)
}

/// One valid card per range, with filler digits that differ from card to card.
pub fn cards() -> Vec<ShapeCard> {
    CARD_RANGES
        .iter()
        .enumerate()
        .map(|(i, &(brand, prefix, len))| {
            let mut body = prefix.to_owned();
            let mut n = 7 + i * 13;
            while body.len() < len - 1 {
                body.push(char::from(b'0' + (n % 10) as u8));
                n = n * 7 + 3;
            }
            ShapeCard {
                brand,
                digits: with_check_digit(&body),
            }
        })
        .collect()
}

/// How a card number is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Plain,
    Spaces,
    Dashes,
    Dots,
    NoBreakSpaces,
    FullWidth,
    FullWidthSpaces,
    ArabicIndic,
    Devanagari,
    MathBold,
}

pub const SHAPES: [Shape; 10] = [
    Shape::Plain,
    Shape::Spaces,
    Shape::Dashes,
    Shape::Dots,
    Shape::NoBreakSpaces,
    Shape::FullWidth,
    Shape::FullWidthSpaces,
    Shape::ArabicIndic,
    Shape::Devanagari,
    Shape::MathBold,
];

/// Groups as cards print them: Amex 4-6-5, 14 digits 4-6-4, 19 digits 4-4-4-4-3, 13 digits 4-4-5,
/// the rest in fours.
fn groups(len: usize) -> &'static [usize] {
    match len {
        13 => &[4, 4, 5],
        14 => &[4, 6, 4],
        15 => &[4, 6, 5],
        19 => &[4, 4, 4, 4, 3],
        _ => &[4, 4, 4, 4, 4],
    }
}

/// The same digit in another Unicode decimal digit block.
fn digit_in(zero: char, d: u8) -> char {
    char::from_u32(zero as u32 + u32::from(d - b'0')).unwrap_or('?')
}

/// Writes `digits` in `shape`.
pub fn write(digits: &str, shape: Shape) -> String {
    let (separator, zero) = match shape {
        Shape::Plain => return digits.to_owned(),
        Shape::Spaces => (Some(' '), '0'),
        Shape::Dashes => (Some('-'), '0'),
        Shape::Dots => (Some('.'), '0'),
        Shape::NoBreakSpaces => (Some('\u{a0}'), '0'),
        Shape::FullWidth => (None, '\u{ff10}'),
        Shape::FullWidthSpaces => (Some(' '), '\u{ff10}'),
        Shape::ArabicIndic => (None, '\u{660}'),
        Shape::Devanagari => (None, '\u{966}'),
        Shape::MathBold => (None, '\u{1d7ce}'),
    };
    let mut out = String::new();
    let mut rest = digits.as_bytes();
    for &size in groups(digits.len()) {
        if rest.is_empty() {
            break;
        }
        let (head, tail) = rest.split_at(size.min(rest.len()));
        if let (Some(sep), false) = (separator, out.is_empty()) {
            out.push(sep);
        }
        out.extend(head.iter().map(|&d| digit_in(zero, d)));
        rest = tail;
    }
    out
}

/// Text that looks like card data but is not, each left byte for byte as it is: IMEIs, an ICCID,
/// Luhn-valid order and invoice numbers outside card ranges, epoch-millisecond timestamps, phone
/// numbers, a UUID, hashes, IBANs, and card-valid digits inside longer digit runs.
pub const LOOK_ALIKES: &[&str] = &[
    "IMEI 356938035643809",
    "IMEI 35-693803-564380-9",
    "ICCID 8944500102198304826",
    "order 1000000000000008",
    "invoice 7000000000000004",
    "ticket 9000000000000009",
    "created_at 1732560000000",
    "updated_at 1764028800123",
    "phone +1 415 555 0132",
    "phone +44 20 7946 0103",
    "trace 3f2504e0-4f89-41d3-9a0c-0305e82c3301",
    "sha256 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "md5 41111111111111119c6a8e1b7f0c4a2d",
    "IBAN GB82 WEST 1234 5698 7654 32",
    "IBAN DE89370400440532013000",
    "loyalty 55555555555544440000",
    "batch 0041111111111111111",
];

/// The `card_shapes` result: every card in every shape, in prose, in a JSON document inside text
/// content, as JSON number tokens, and next to the look-alikes. `text` is `content[0].text`,
/// `document` is `content[1].text` (a JSON document as text), `structured` is
/// `structuredContent`.
pub struct ShapesAnswer {
    pub text: String,
    pub document: String,
    pub structured: Value,
}

pub fn answer() -> ShapesAnswer {
    let cards = cards();
    let mut text = String::from("Card shapes report\n");
    let mut rows = Vec::new();
    for (i, card) in cards.iter().enumerate() {
        for shape in SHAPES {
            let written = write(&card.digits, shape);
            text.push_str(&format!(
                "{} card on file: {written}; exp 12/29 ({shape:?})\n",
                card.brand
            ));
            rows.push(
                json!({ "brand": card.brand, "shape": format!("{shape:?}"), "number": written }),
            );
        }
        // Cards in the places operators paste them: URLs, CSV rows, key=value log lines.
        text.push_str(&format!(
            "GET https://pay.example/checkout?pan={}&exp=1229 200\n",
            card.digits
        ));
        text.push_str(&format!("{i},{},{},ok\n", card.brand, card.digits));
        text.push_str(&format!(
            "2026-11-25T10:00:{:02}Z level=info card={} status=settled\n",
            i % 60,
            write(&card.digits, Shape::Dashes)
        ));
    }
    for look_alike in LOOK_ALIKES {
        text.push_str(look_alike);
        text.push('\n');
    }
    let document = serde_json::to_string_pretty(&json!({
        "customer": { "id": "cus_shapes", "cards": rows },
        "look_alikes": LOOK_ALIKES,
    }))
    .unwrap_or_default();
    let numbers: Vec<Value> = cards
        .iter()
        .map(|c| {
            let n: u64 = c.digits.parse().unwrap_or_default();
            json!({ "brand": c.brand, "pan": n })
        })
        .collect();
    let structured = json!({
        "cards": numbers,
        "look_alikes": LOOK_ALIKES,
        "created_at": 1_732_560_000_000u64,
        "order": 1_000_000_000_000_008u64,
    });
    ShapesAnswer {
        text,
        document,
        structured,
    }
}

/// The streamed `card_shapes_stream` events: each card in each shape as one log message, then a
/// card number split across two consecutive messages (`split_head`, `split_tail`).
pub fn stream_lines() -> Vec<String> {
    let mut lines = Vec::new();
    for card in cards() {
        for shape in SHAPES {
            lines.push(format!(
                "{} settled card {}",
                card.brand,
                write(&card.digits, shape)
            ));
        }
    }
    lines.extend(LOOK_ALIKES.iter().map(|s| (*s).to_owned()));
    lines
}

/// A card that the stream sends in two messages, split inside its digits.
pub fn split_card() -> ShapeCard {
    ShapeCard {
        brand: "visa",
        digits: with_check_digit("453201511283036"),
    }
}

/// The two halves of [`split_card`], written with spaces, split after the second group.
pub fn split_halves() -> (String, String) {
    let written = write(&split_card().digits, Shape::Spaces);
    let (head, tail) = written.split_at(9);
    (format!("card continues: {head}"), tail.to_owned())
}

/// Every card digit string a client must never see through the gateway.
pub fn all_card_digits() -> Vec<String> {
    let mut all: Vec<String> = cards().into_iter().map(|c| c.digits).collect();
    all.push(split_card().digits);
    all
}

/// Maps every Unicode decimal digit used by [`Shape`] to ASCII and drops single separators
/// between digits, so a card in any shape becomes its bare digits.
pub fn normalize_digits(text: &str) -> String {
    const ZEROS: [char; 4] = ['\u{ff10}', '\u{660}', '\u{966}', '\u{1d7ce}'];
    let ascii: Vec<char> = text
        .chars()
        .map(|c| {
            ZEROS
                .iter()
                .find_map(|&zero| {
                    let offset = (c as u32).checked_sub(zero as u32)?;
                    (offset < 10).then(|| char::from(b'0' + offset as u8))
                })
                .unwrap_or(c)
        })
        .collect();
    let mut out = String::with_capacity(text.len());
    for (i, &c) in ascii.iter().enumerate() {
        let between_digits = matches!(c, ' ' | '-' | '.' | '\u{a0}')
            && i > 0
            && ascii[i - 1].is_ascii_digit()
            && ascii.get(i + 1).is_some_and(char::is_ascii_digit);
        if !between_digits {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn luhn(digits: &str) -> bool {
        let sum: u32 = digits
            .bytes()
            .rev()
            .enumerate()
            .map(|(i, c)| {
                let d = u32::from(c - b'0');
                if i % 2 == 1 {
                    if d * 2 > 9 {
                        d * 2 - 9
                    } else {
                        d * 2
                    }
                } else {
                    d
                }
            })
            .sum();
        sum.is_multiple_of(10)
    }

    #[test]
    fn every_card_is_luhn_valid_with_its_length_and_prefix() {
        for (card, &(_, prefix, len)) in cards().iter().zip(CARD_RANGES) {
            assert!(luhn(&card.digits), "{}", card.digits);
            assert_eq!(card.digits.len(), len);
            assert!(card.digits.starts_with(prefix));
        }
        assert!(luhn(&split_card().digits));
    }

    #[test]
    fn every_shape_normalizes_back_to_the_digits() {
        for card in cards() {
            for shape in SHAPES {
                let written = write(&card.digits, shape);
                assert_eq!(normalize_digits(&written), card.digits, "{shape:?}");
            }
        }
    }

    #[test]
    fn look_alikes_hold_no_card_from_the_list() {
        let text = normalize_digits(&LOOK_ALIKES.join("\n"));
        for digits in all_card_digits() {
            assert!(!text.contains(&digits), "{digits}");
        }
    }

    #[test]
    fn the_split_halves_rejoin_to_the_card() {
        let (head, tail) = split_halves();
        let joined = normalize_digits(&format!(
            "{}{tail}",
            head.trim_start_matches("card continues: ")
        ));
        assert_eq!(joined, split_card().digits);
    }
}
