//! Shared by the `mask_*` tests: an oracle that is a line-by-line port of the independent acceptance
//! checker `shared/smoke/pan.py` (its own ranges, not the engine's table), and generators of card
//! numbers in every shape and of hard negatives.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proptest::prelude::*;
use tollgate_engine::mask::IIN_TABLE;

/// pan.py's ranges: (low, high, prefix digits, lengths).
const RANGES: &[(u32, u32, usize, &[usize])] = &[
    (4, 4, 1, &[13, 16, 19]),
    (51, 55, 2, &[16]),
    (2221, 2720, 4, &[16]),
    (34, 34, 2, &[15]),
    (37, 37, 2, &[15]),
    (6011, 6011, 4, &[16, 17, 18, 19]),
    (644, 649, 3, &[16, 17, 18, 19]),
    (65, 65, 2, &[16, 17, 18, 19]),
    (3528, 3589, 4, &[16, 17, 18, 19]),
    (300, 305, 3, &[14, 15, 16, 17, 18, 19]),
    (36, 36, 2, &[14, 15, 16, 17, 18, 19]),
    (38, 39, 2, &[16, 17, 18, 19]),
    (62, 62, 2, &[16, 17, 18, 19]),
    (2200, 2204, 4, &[16, 17, 18, 19]),
    (50, 50, 2, &[12, 13, 14, 15, 16, 17, 18, 19]),
    (56, 58, 2, &[12, 13, 14, 15, 16, 17, 18, 19]),
    (67, 67, 2, &[12, 13, 14, 15, 16, 17, 18, 19]),
    (60, 60, 2, &[16, 17, 18, 19]),
    (81, 82, 2, &[16, 17, 18, 19]),
    (508, 508, 3, &[16, 17, 18, 19]),
    (6521, 6522, 4, &[16]),
];

pub fn luhn(d: &str) -> bool {
    let mut s = 0u32;
    for (i, c) in d.bytes().rev().enumerate() {
        let mut n = u32::from(c - b'0');
        if i % 2 == 1 {
            n *= 2;
            if n > 9 {
                n -= 9;
            }
        }
        s += n;
    }
    s.is_multiple_of(10)
}

pub fn in_range(d: &str) -> bool {
    RANGES.iter().any(|&(lo, hi, n, lens)| {
        lens.contains(&d.len()) && d[..n].parse::<u32>().is_ok_and(|p| (lo..=hi).contains(&p))
    })
}

/// Digit blocks the generators use (first code point of 0–9).
pub const DIGIT_BLOCKS: &[u32] = &[
    0xFF10, 0x0660, 0x06F0, 0x0966, 0x09E6, 0x0E50, 0x1D7CE, 0x1D7F6,
];

/// Python's `str.isdigit` characters beyond ASCII and their `unicodedata.digit` values (generated
/// with Python 3.11, as pan.py runs): (first, last, value of first).
const PY_DIGITS: &[(u32, u32, u32)] = &[
    (0xB2, 0xB3, 2),
    (0xB9, 0xB9, 1),
    (0x660, 0x669, 0),
    (0x6F0, 0x6F9, 0),
    (0x7C0, 0x7C9, 0),
    (0x966, 0x96F, 0),
    (0x9E6, 0x9EF, 0),
    (0xA66, 0xA6F, 0),
    (0xAE6, 0xAEF, 0),
    (0xB66, 0xB6F, 0),
    (0xBE6, 0xBEF, 0),
    (0xC66, 0xC6F, 0),
    (0xCE6, 0xCEF, 0),
    (0xD66, 0xD6F, 0),
    (0xDE6, 0xDEF, 0),
    (0xE50, 0xE59, 0),
    (0xED0, 0xED9, 0),
    (0xF20, 0xF29, 0),
    (0x1040, 0x1049, 0),
    (0x1090, 0x1099, 0),
    (0x1369, 0x1371, 1),
    (0x17E0, 0x17E9, 0),
    (0x1810, 0x1819, 0),
    (0x1946, 0x194F, 0),
    (0x19D0, 0x19D9, 0),
    (0x19DA, 0x19DA, 1),
    (0x1A80, 0x1A89, 0),
    (0x1A90, 0x1A99, 0),
    (0x1B50, 0x1B59, 0),
    (0x1BB0, 0x1BB9, 0),
    (0x1C40, 0x1C49, 0),
    (0x1C50, 0x1C59, 0),
    (0x2070, 0x2070, 0),
    (0x2074, 0x2079, 4),
    (0x2080, 0x2089, 0),
    (0x2460, 0x2468, 1),
    (0x2474, 0x247C, 1),
    (0x2488, 0x2490, 1),
    (0x24EA, 0x24EA, 0),
    (0x24F5, 0x24FD, 1),
    (0x24FF, 0x24FF, 0),
    (0x2776, 0x277E, 1),
    (0x2780, 0x2788, 1),
    (0x278A, 0x2792, 1),
    (0xA620, 0xA629, 0),
    (0xA8D0, 0xA8D9, 0),
    (0xA900, 0xA909, 0),
    (0xA9D0, 0xA9D9, 0),
    (0xA9F0, 0xA9F9, 0),
    (0xAA50, 0xAA59, 0),
    (0xABF0, 0xABF9, 0),
    (0xFF10, 0xFF19, 0),
    (0x104A0, 0x104A9, 0),
    (0x10A40, 0x10A43, 1),
    (0x10D30, 0x10D39, 0),
    (0x10E60, 0x10E68, 1),
    (0x11052, 0x1105A, 1),
    (0x11066, 0x1106F, 0),
    (0x110F0, 0x110F9, 0),
    (0x11136, 0x1113F, 0),
    (0x111D0, 0x111D9, 0),
    (0x112F0, 0x112F9, 0),
    (0x11450, 0x11459, 0),
    (0x114D0, 0x114D9, 0),
    (0x11650, 0x11659, 0),
    (0x116C0, 0x116C9, 0),
    (0x11730, 0x11739, 0),
    (0x118E0, 0x118E9, 0),
    (0x11950, 0x11959, 0),
    (0x11C50, 0x11C59, 0),
    (0x11D50, 0x11D59, 0),
    (0x11DA0, 0x11DA9, 0),
    (0x16A60, 0x16A69, 0),
    (0x16AC0, 0x16AC9, 0),
    (0x16B50, 0x16B59, 0),
    (0x1D7CE, 0x1D7D7, 0),
    (0x1D7D8, 0x1D7E1, 0),
    (0x1D7E2, 0x1D7EB, 0),
    (0x1D7EC, 0x1D7F5, 0),
    (0x1D7F6, 0x1D7FF, 0),
    (0x1E140, 0x1E149, 0),
    (0x1E2F0, 0x1E2F9, 0),
    (0x1E950, 0x1E959, 0),
    (0x1F100, 0x1F100, 0),
    (0x1F101, 0x1F10A, 0),
    (0x1FBF0, 0x1FBF9, 0),
];

fn digit_value(c: char) -> Option<u8> {
    if c.is_ascii_digit() {
        return Some(c as u8 - b'0');
    }
    let cp = u32::from(c);
    PY_DIGITS
        .iter()
        .find(|&&(lo, hi, _)| (lo..=hi).contains(&cp))
        .and_then(|&(lo, _, v)| u8::try_from(v + cp - lo).ok())
}

/// pan.py's `normalise`: `\uXXXX` decoded once (lone surrogates become U+FFFD here), other digits
/// to ASCII, the three no-break spaces to spaces.
pub fn normalise(text: &str) -> String {
    let b = text.as_bytes();
    let mut dec = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && b.get(i + 1) == Some(&b'u') {
            if let Some(h) = text.get(i + 2..i + 6) {
                if h.bytes().all(|c| c.is_ascii_hexdigit()) {
                    let cp = u32::from_str_radix(h, 16).unwrap();
                    dec.push(char::from_u32(cp).unwrap_or('\u{FFFD}'));
                    i += 6;
                    continue;
                }
            }
        }
        let c = text[i..].chars().next().unwrap();
        dec.push(c);
        i += c.len_utf8();
    }
    dec.chars()
        .map(|c| match digit_value(c) {
            Some(v) if !c.is_ascii_digit() => char::from(b'0' + v),
            _ if matches!(c, '\u{00A0}' | '\u{2007}' | '\u{202F}') => ' ',
            _ => c,
        })
        .collect()
}

/// pan.py's `find` on normalised text: raw PANs (first six … last four).
pub fn find(text: &str) -> Vec<String> {
    find_normalised(&normalise(text))
}

/// [`find`] on text already normalised.
pub fn find_normalised(text: &str) -> Vec<String> {
    let t: Vec<char> = text.chars().collect();
    let alnum = |c: char| c.is_ascii_alphanumeric();
    let sep = |c: char| matches!(c, ' ' | '.' | '-');
    let mut hits = Vec::new();
    let mut i = 0;
    while i < t.len() {
        if !t[i].is_ascii_digit() || (i > 0 && t[i - 1].is_ascii_digit()) {
            i += 1;
            continue;
        }
        // A chain of groups joined by single separators, starting at i.
        let mut groups: Vec<(usize, usize)> = Vec::new();
        let mut j = i;
        loop {
            let s = j;
            while j < t.len() && t[j].is_ascii_digit() {
                j += 1;
            }
            groups.push((s, j));
            if j + 1 < t.len() && sep(t[j]) && t[j + 1].is_ascii_digit() {
                j += 1;
            } else {
                break;
            }
        }
        let mut lo = 0;
        let mut hi = groups.len();
        if i > 0 && alnum(t[i - 1]) {
            lo = 1;
        }
        if j < t.len() && alnum(t[j]) {
            hi -= 1;
        }
        let digits: Vec<String> = groups
            .iter()
            .map(|&(s, e)| t[s..e].iter().collect())
            .collect();
        for a in lo..hi.max(lo) {
            let mut cand = String::new();
            for g in &digits[a..hi] {
                cand.push_str(g);
                if cand.len() > 19 {
                    break;
                }
                if cand.len() >= 13 && luhn(&cand) && in_range(&cand) {
                    hits.push(format!("{}...{}", &cand[..6], &cand[cand.len() - 4..]));
                }
            }
        }
        i = j.max(i + 1);
    }
    hits
}

/// Luhn check digit that completes `body`.
pub fn check_digit(body: &str) -> char {
    for d in b'0'..=b'9' {
        let mut s = body.to_string();
        s.push(char::from(d));
        if luhn(&s) {
            return char::from(d);
        }
    }
    unreachable!()
}

/// A valid card number from a random entry of the engine's table.
pub fn pan() -> impl Strategy<Value = String> {
    (
        0..IIN_TABLE.len(),
        any::<u64>(),
        proptest::collection::vec(0u8..10, 19),
    )
        .prop_map(|(k, seed, rest)| {
            let r = IIN_TABLE[k];
            let lens: Vec<usize> = (13..=19).filter(|n| r.lengths & (1 << n) != 0).collect();
            let len = lens[(seed as usize) % lens.len()];
            let prefix = r.low + ((seed >> 8) as u32) % (r.high - r.low + 1);
            let mut s = format!("{prefix:0width$}", width = usize::from(r.digits));
            for d in rest {
                if s.len() + 1 >= len {
                    break;
                }
                s.push(char::from(b'0' + d));
            }
            let c = check_digit(&s);
            s.push(c);
            s
        })
}

/// How a number is written: group sizes, separators, digit forms.
#[derive(Debug, Clone)]
pub struct Shape {
    pub grouping: u8,
    pub seps: Vec<&'static str>,
    pub forms: Vec<u8>,
}

pub const SEPS: &[&str] = &[" ", "-", ".", "\u{00A0}", "\u{2007}", "\u{202F}"];

pub fn shape() -> impl Strategy<Value = Shape> {
    (
        0u8..6,
        proptest::collection::vec(proptest::sample::select(SEPS), 19),
        proptest::collection::vec(0u8..12, 19),
        any::<bool>(),
    )
        .prop_map(|(grouping, seps, forms, uniform)| {
            let (seps, forms) = if uniform {
                (vec![seps[0]; 19], vec![forms[0]; 19])
            } else {
                (seps, forms)
            };
            Shape {
                grouping,
                seps,
                forms,
            }
        })
}

/// Group sizes for a number of `len` digits.
pub fn groups(len: usize, grouping: u8, seed: &[u8]) -> Vec<usize> {
    let fixed: Vec<usize> = match grouping {
        0 => vec![len],
        1 | 2 => {
            let mut v = vec![4; len / 4];
            if !len.is_multiple_of(4) {
                v.push(len % 4);
            }
            v
        }
        3 if len == 15 => vec![4, 6, 5],
        3 if len == 14 => vec![4, 6, 4],
        4 if len == 19 => vec![4, 4, 4, 4, 3],
        _ => {
            let mut v = Vec::new();
            let mut left = len;
            for &s in seed.iter().cycle() {
                if left == 0 {
                    break;
                }
                let g = (usize::from(s) % 6 + 1).min(left);
                v.push(g);
                left -= g;
            }
            v
        }
    };
    fixed
}

/// One digit written in form `f`: ASCII, other scripts, or a `\uXXXX` escape.
pub fn write_digit(d: u8, f: u8, out: &mut String) {
    match f {
        0..=3 => out.push(char::from(b'0' + d)),
        4..=9 => {
            let block = DIGIT_BLOCKS[usize::from(f - 4) % DIGIT_BLOCKS.len()];
            out.push(char::from_u32(block + u32::from(d)).unwrap());
        }
        10 => out.push_str(&format!("\\u{:04x}", 0x30 + u32::from(d))),
        _ => out.push_str(&format!("\\u{:04X}", 0xFF10 + u32::from(d))),
    }
}

/// `pan` written in `shape`.
pub fn render(pan: &str, shape: &Shape) -> String {
    let sizes = groups(pan.len(), shape.grouping, &shape.forms);
    let mut out = String::new();
    let mut k = 0;
    for (gi, g) in sizes.iter().enumerate() {
        if gi > 0 {
            out.push_str(shape.seps[gi % shape.seps.len()]);
        }
        for c in pan[k..k + g].bytes() {
            write_digit(c - b'0', shape.forms[k % shape.forms.len()], &mut out);
            k += 1;
        }
    }
    out
}

pub const PREFIXES: &[&str] = &[
    "",
    "card ",
    "PAN: ",
    "(",
    "\"",
    "n\u{b0} ",
    "x=",
    "\u{ab}",
    "\u{2192} ",
    "\n",
    "Karte\u{a0}",
    "\u{5361}\u{53f7}\u{ff1a}",
];
pub const SUFFIXES: &[&str] = &[
    "",
    " ok",
    ")",
    ".",
    ",",
    "\"",
    " exp 12/27",
    "\u{bb}",
    "\u{3002}",
    "\n",
];

/// Hard negatives that must pass through byte for byte.
pub fn hard_negative() -> impl Strategy<Value = String> {
    let digits = |n: usize| {
        proptest::collection::vec(0u8..10, n).prop_map(|v| {
            v.into_iter()
                .map(|d| char::from(b'0' + d))
                .collect::<String>()
        })
    };
    let with_check = |p: &'static str, n: usize| {
        proptest::collection::vec(0u8..10, n).prop_map(move |v| {
            let mut s: String = p.to_string();
            s.extend(v.into_iter().map(|d| char::from(b'0' + d)));
            let c = check_digit(&s);
            s.push(c);
            s
        })
    };
    let hex = |n: usize| {
        proptest::collection::vec(0u8..16, n).prop_map(|v| {
            v.into_iter()
                .map(|d| char::from_digit(u32::from(d), 16).unwrap())
                .collect::<String>()
        })
    };
    prop_oneof![
        // IMEI: 15 digits, Luhn-valid, reporting-body TACs.
        prop_oneof![
            with_check("35", 12),
            with_check("01", 12),
            with_check("86", 12),
            with_check("99", 12)
        ]
        .prop_map(|s| format!("IMEI {s}")),
        // ICCID: 89…, 19–20 digits.
        prop_oneof![
            with_check("8944", 14),
            with_check("8901", 15),
            with_check("89", 17)
        ]
        .prop_map(|s| format!("iccid={s}")),
        // Luhn-valid order and invoice numbers outside card ranges.
        (
            prop::sample::select(
                &["1", "7", "0", "90", "93", "95", "99", "85", "87", "88", "89", "31", "33"][..]
            ),
            11usize..18
        )
            .prop_flat_map(move |(p, n)| with_check(p, n))
            .prop_map(|s| format!("order #{s}")),
        // Epoch milliseconds.
        (1_000_000_000_000u64..2_000_000_000_000).prop_map(|t| format!("{{\"ts\": {t}}}")),
        // Phone numbers.
        (digits(3), digits(3), digits(4)).prop_map(|(a, b, c)| format!("+1 {a}-{b}-{c}")),
        (digits(2), digits(4), digits(4)).prop_map(|(a, b, c)| format!("+44 {a} {b} {c}")),
        (digits(3), digits(4), digits(4)).prop_map(|(a, b, c)| format!("tel +86 1{a} {b} {c}")),
        (digits(5), digits(5)).prop_map(|(a, b)| format!("+91 9{a} {b}")),
        // UUIDs (the first and last field start with a hex letter here, so no digit-only
        // fields can line up to 13 digits).
        (hex(7), hex(4), hex(3), hex(4), hex(11), 0u8..6, 0u8..6).prop_map(
            |(a, b, c, d, e, x, y)| {
                let l = |n: u8| char::from(b'a' + n);
                format!("id {}{a}-{b}-4{c}-{d}-{}{e}", l(x), l(y))
            }
        ),
        // Hex hashes.
        prop_oneof![hex(32), hex(40), hex(64)].prop_map(|h| format!("sha {h}")),
        // IBANs in their electronic form.
        (digits(2), digits(18)).prop_map(|(c, b)| format!("IBAN DE{c}{b}")),
        (digits(2), digits(14)).prop_map(|(c, b)| format!("GB{c}NWBK{b}")),
    ]
}

/// Printed forms of negatives that can contain a card-number window by chance; they may be masked
/// exactly when the checker flags them.
pub fn grouped_negative() -> impl Strategy<Value = String> {
    let digits = |n: usize| {
        proptest::collection::vec(0u8..10, n).prop_map(|v| {
            v.into_iter()
                .map(|d| char::from(b'0' + d))
                .collect::<String>()
        })
    };
    prop_oneof![
        (
            digits(2),
            digits(4),
            digits(4),
            digits(4),
            digits(4),
            digits(2)
        )
            .prop_map(|(c, a, b, d, e, f)| format!("DE{c} {a} {b} {d} {e} {f}")),
        (
            digits(2),
            digits(4),
            digits(4),
            digits(4),
            digits(4),
            digits(4),
            digits(3)
        )
            .prop_map(|(c, a, b, d, e, f, g)| format!("FR{c} {a} {b} {d} {e} {f}{g}")),
        (digits(6), digits(6), digits(1)).prop_map(|(a, b, c)| format!("IMEI 35-{a}-{b}-{c}")),
    ]
}
