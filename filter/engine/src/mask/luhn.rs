//! Luhn check and the one table of issuer (IIN) ranges that names each brand.

/// True when the ASCII digits pass the Luhn check.
pub fn luhn_valid(digits: &[u8]) -> bool {
    !digits.is_empty()
        && digits.iter().all(u8::is_ascii_digit)
        && luhn_values(digits.iter().map(|d| d - b'0'))
}

/// Luhn check over digit values (0–9), last digit first is the check digit.
pub(crate) fn luhn_values<I>(values: I) -> bool
where
    I: DoubleEndedIterator<Item = u8>,
{
    // Doubled digit, reduced: 2*d - 9 when 2*d > 9.
    const DOUBLED: [u32; 10] = [0, 2, 4, 6, 8, 1, 3, 5, 7, 9];
    let mut sum = 0u32;
    for (i, d) in values.rev().enumerate() {
        let d = usize::from(d.min(9));
        sum += if i % 2 == 1 { DOUBLED[d] } else { d as u32 };
    }
    sum.is_multiple_of(10)
}

/// One issuer range: numbers whose first `digits` digits lie in `low..=high`, with a length in
/// the `lengths` bit set (bit n = length n).
#[derive(Debug, Clone, Copy)]
pub struct IinRange {
    pub brand: &'static str,
    pub low: u32,
    pub high: u32,
    pub digits: u8,
    pub lengths: u32,
}

const fn lens(min: u32, max: u32) -> u32 {
    let mut m = 0;
    let mut n = min;
    while n <= max {
        m |= 1 << n;
        n += 1;
    }
    m
}

const fn r(brand: &'static str, low: u32, high: u32, digits: u8, lengths: u32) -> IinRange {
    IinRange {
        brand,
        low,
        high,
        digits,
        lengths,
    }
}

/// Issuer ranges in use, most specific first (the first match names the brand). Lengths follow the
/// networks' published tables; where a network issues several lengths all are listed.
pub static IIN_TABLE: &[IinRange] = &[
    r("visa", 4, 4, 1, 1 << 13 | 1 << 16 | 1 << 19),
    r("mir", 2200, 2204, 4, lens(16, 19)),
    r("borica", 2205, 2205, 4, 1 << 16),
    r("mastercard", 2221, 2720, 4, 1 << 16),
    r("mastercard", 51, 55, 2, 1 << 16),
    r("amex", 34, 34, 2, 1 << 15),
    r("amex", 37, 37, 2, 1 << 15),
    r("diners", 300, 305, 3, lens(14, 19)),
    r("diners", 3095, 3095, 4, lens(14, 19)),
    r("diners", 36, 36, 2, lens(14, 19)),
    r("diners", 38, 39, 2, lens(16, 19)),
    r("jcb", 3528, 3589, 4, lens(16, 19)),
    r("verve", 506099, 506198, 6, lens(16, 19)),
    r("verve", 507865, 507964, 6, lens(16, 19)),
    r("verve", 650002, 650027, 6, lens(16, 19)),
    r("rupay", 508, 508, 3, lens(16, 19)),
    r("rupay", 6521, 6522, 4, lens(16, 19)),
    r("discover", 6011, 6011, 4, lens(16, 19)),
    r("discover", 644, 649, 3, lens(16, 19)),
    r("discover", 65, 65, 2, lens(16, 19)),
    r("unionpay", 62, 62, 2, lens(16, 19)),
    r("unionpay", 81, 81, 2, lens(16, 19)),
    r("rupay", 60, 60, 2, lens(16, 19)),
    r("rupay", 82, 82, 2, lens(16, 19)),
    r("maestro", 50, 50, 2, lens(12, 19)),
    r("maestro", 56, 58, 2, lens(12, 19)),
    r("maestro", 6304, 6304, 4, lens(12, 19)),
    r("maestro", 67, 67, 2, lens(12, 19)),
    r("uzcard", 8600, 8600, 4, 1 << 16),
    r("humo", 9860, 9860, 4, 1 << 16),
    r("troy", 9792, 9792, 4, 1 << 16),
];

/// Every brand name the table can report.
pub fn brands() -> impl Iterator<Item = &'static str> {
    let mut seen: Vec<&'static str> = Vec::new();
    for r in IIN_TABLE {
        if !seen.contains(&r.brand) {
            seen.push(r.brand);
        }
    }
    seen.into_iter()
}

/// The brand whose IIN range and lengths hold these digit values (0–9 each).
pub(crate) fn brand_of_values(values: &[u8]) -> Option<&'static str> {
    let len = values.len();
    if !(13..=19).contains(&len) {
        return None;
    }
    let mut prefix = [0u32; 7];
    for n in 1..=6 {
        prefix[n] = prefix[n - 1] * 10 + u32::from(values[n - 1]);
    }
    IIN_TABLE
        .iter()
        .find(|r| {
            r.lengths & (1 << len) != 0 && (r.low..=r.high).contains(&prefix[usize::from(r.digits)])
        })
        .map(|r| r.brand)
}

/// The brand whose IIN range and lengths hold these ASCII digits.
pub fn card_brand(digits: &[u8]) -> Option<&'static str> {
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let values: Vec<u8> = digits.iter().map(|d| d - b'0').collect();
    brand_of_values(&values)
}

/// The brand, when these ASCII digits are a card number (brand range, length and Luhn).
pub fn pan_brand(digits: &[u8]) -> Option<&'static str> {
    card_brand(digits).filter(|_| luhn_valid(digits))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn() {
        assert!(luhn_valid(b"4111111111111111"));
        assert!(!luhn_valid(b"4111111111111112"));
        assert!(luhn_valid(b"79927398713"));
        assert!(!luhn_valid(b""));
    }

    #[test]
    fn brands_by_prefix() {
        let cases: &[(&str, &str)] = &[
            ("4111111111111111", "visa"),
            ("4222222222222", "visa"),
            ("5555555555554444", "mastercard"),
            ("2223000048400011", "mastercard"),
            ("378282246310005", "amex"),
            ("6011111111111117", "discover"),
            ("3530111333300000", "jcb"),
            ("30569309025904", "diners"),
            ("6200000000000005", "unionpay"),
            ("6250941006528599", "unionpay"),
            ("2200000000000004", "mir"),
            ("6521000000000000", "rupay"),
            ("5061000000000000", "verve"),
            ("5018000000000009", "maestro"),
            ("6759649826438453", "maestro"),
        ];
        for (pan, brand) in cases {
            assert_eq!(card_brand(pan.as_bytes()), Some(*brand), "{pan}");
        }
        // ICCIDs (89…), epoch milliseconds (1…), order numbers (7…, 9…) are not card ranges.
        for s in [
            "8944500102198304826",
            "1700000000000",
            "7000000000000006",
            "9000000000000004",
        ] {
            assert_eq!(card_brand(s.as_bytes()), None, "{s}");
        }
        assert!(brands().any(|b| b == "verve"));
    }
}
