//! Luhn check and issuer (IIN) ranges.

/// True when the ASCII digits pass the Luhn check.
pub fn luhn_valid(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, &d) in digits.iter().rev().enumerate() {
        let mut n = u32::from(d - b'0');
        if i % 2 == 1 {
            n *= 2;
            if n > 9 {
                n -= 9;
            }
        }
        sum += n;
    }
    !digits.is_empty() && sum % 10 == 0
}

/// The brand whose IIN range and lengths hold these digits.
pub fn card_brand(digits: &[u8]) -> Option<&'static str> {
    let len = digits.len();
    if !(13..=19).contains(&len) {
        return None;
    }
    let prefix = |n: usize| -> u32 {
        digits[..n].iter().fold(0, |acc, &d| acc * 10 + u32::from(d - b'0'))
    };
    match () {
        _ if digits[0] == b'4' && matches!(len, 13 | 16 | 19) => Some("visa"),
        _ if (51..=55).contains(&prefix(2)) && len == 16 => Some("mastercard"),
        _ if (2221..=2720).contains(&prefix(4)) && len == 16 => Some("mastercard"),
        _ if matches!(prefix(2), 34 | 37) && len == 15 => Some("amex"),
        _ if prefix(4) == 6011 || (644..=649).contains(&prefix(3)) || prefix(2) == 65 => {
            Some("discover")
        }
        _ if (3528..=3589).contains(&prefix(4)) => Some("jcb"),
        _ => None,
    }
}
