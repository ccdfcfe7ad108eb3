//! Character classes the detector works with: which characters are digits (any Unicode decimal
//! digit, and the superscript, subscript and circled digits that `str.isdigit` accepts), which
//! separate digit groups, and how a unit (one character, or one `\uXXXX` escape) is decoded.

/// What a unit of text is to the detector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// A decimal digit of any script.
    Digit,
    /// A separator allowed once between digit groups.
    Sep,
    /// An ASCII letter: digits glued to one are a card number only outside hex tokens, UUIDs and
    /// IBANs (the hash rule in `scan`).
    Alpha,
    /// Anything else: ends a run of digit groups.
    Other,
}

/// One decoded unit: its length in bytes, its class and, for a digit, its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Unit {
    pub len: usize,
    pub class: Class,
    pub value: u8,
    /// Written as a `\uXXXX` escape (masked as `\u002a`, valid in JSON and in text alike).
    pub escaped: bool,
    /// The decoded character (for reports).
    pub ch: char,
}

/// Result of decoding at a position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decoded {
    Unit(Unit),
    /// The buffer ends inside what may be an escape or a UTF-8 sequence.
    Incomplete,
}

const O: u8 = 0; // other
const D: u8 = 1; // ASCII digit
const S: u8 = 2; // ASCII separator
const A: u8 = 3; // ASCII letter
const B: u8 = 4; // backslash
const N: u8 = 5; // non-ASCII byte

/// Class of each byte value, for the ASCII range; non-ASCII bytes need decoding.
pub(crate) static BYTE_CLASS: [u8; 256] = {
    let mut t = [O; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = if b.is_ascii_digit() {
            D
        } else if b == b' ' || b == b'-' || b == b'.' {
            S
        } else if b.is_ascii_alphabetic() {
            A
        } else if b == b'\\' {
            B
        } else if b >= 0x80 {
            N
        } else {
            O
        };
        i += 1;
    }
    t
};

/// Bytes at which a digit may start: ASCII digits, a backslash (`\u0034`) and the UTF-8 lead
/// bytes of every non-ASCII digit in [`DIGIT_RANGES`].
pub(crate) static TRIGGER: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = b'0';
    while i <= b'9' {
        t[i as usize] = true;
        i += 1;
    }
    t[b'\\' as usize] = true;
    let leads = [0xC2u8, 0xD9, 0xDB, 0xDF, 0xE0, 0xE1, 0xE2, 0xEA, 0xEF, 0xF0];
    let mut j = 0;
    while j < leads.len() {
        t[leads[j] as usize] = true;
        j += 1;
    }
    t
};

/// Non-ASCII digits: (first, last, value of first); values rise by one through each range.
/// Generated from Python's `str.isdigit`/`unicodedata.digit` (Unicode 14), plus later additions.
static DIGIT_RANGES: &[(u32, u32, u8)] = &[
    (0x00B2, 0x00B3, 2),
    (0x00B9, 0x00B9, 1),
    (0x0660, 0x0669, 0),
    (0x06F0, 0x06F9, 0),
    (0x07C0, 0x07C9, 0),
    (0x0966, 0x096F, 0),
    (0x09E6, 0x09EF, 0),
    (0x0A66, 0x0A6F, 0),
    (0x0AE6, 0x0AEF, 0),
    (0x0B66, 0x0B6F, 0),
    (0x0BE6, 0x0BEF, 0),
    (0x0C66, 0x0C6F, 0),
    (0x0CE6, 0x0CEF, 0),
    (0x0D66, 0x0D6F, 0),
    (0x0DE6, 0x0DEF, 0),
    (0x0E50, 0x0E59, 0),
    (0x0ED0, 0x0ED9, 0),
    (0x0F20, 0x0F29, 0),
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
    (0x10D40, 0x10D49, 0),
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
    (0x116D0, 0x116D9, 0),
    (0x116DA, 0x116E3, 0),
    (0x11730, 0x11739, 0),
    (0x118E0, 0x118E9, 0),
    (0x11950, 0x11959, 0),
    (0x11BF0, 0x11BF9, 0),
    (0x11C50, 0x11C59, 0),
    (0x11D50, 0x11D59, 0),
    (0x11DA0, 0x11DA9, 0),
    (0x11F50, 0x11F59, 0),
    (0x16130, 0x16139, 0),
    (0x16A60, 0x16A69, 0),
    (0x16AC0, 0x16AC9, 0),
    (0x16B50, 0x16B59, 0),
    (0x16D70, 0x16D79, 0),
    (0x1CCF0, 0x1CCF9, 0),
    (0x1D7CE, 0x1D7D7, 0),
    (0x1D7D8, 0x1D7E1, 0),
    (0x1D7E2, 0x1D7EB, 0),
    (0x1D7EC, 0x1D7F5, 0),
    (0x1D7F6, 0x1D7FF, 0),
    (0x1E140, 0x1E149, 0),
    (0x1E2F0, 0x1E2F9, 0),
    (0x1E4F0, 0x1E4F9, 0),
    (0x1E5F1, 0x1E5FA, 0),
    (0x1E950, 0x1E959, 0),
    (0x1F100, 0x1F100, 0),
    (0x1F101, 0x1F10A, 0),
    (0x1FBF0, 0x1FBF9, 0),
];

/// Value of a non-ASCII digit.
pub(crate) fn unicode_digit(c: char) -> Option<u8> {
    let cp = u32::from(c);
    let idx = DIGIT_RANGES.partition_point(|&(_, hi, _)| hi < cp);
    match DIGIT_RANGES.get(idx) {
        Some(&(lo, _, first)) if lo <= cp => u8::try_from(cp - lo).ok().map(|d| first + d),
        _ => None,
    }
}

/// Non-ASCII separators: no-break and narrow spaces, hyphens and dashes, and the invisible
/// characters that could be slipped between digits to split a number for a naive matcher.
fn unicode_sep(c: char) -> bool {
    matches!(
        c,
        '\u{00A0}'
            | '\u{00AD}'
            | '\u{2007}'
            | '\u{2009}'
            | '\u{200A}'
            | '\u{200B}'
            | '\u{200C}'
            | '\u{200D}'
            | '\u{2010}'
            ..='\u{2013}'
                | '\u{202F}'
                | '\u{2060}'
                | '\u{2212}'
                | '\u{3000}'
                | '\u{FEFF}'
                | '\u{FF0D}'
                | '\u{FF0E}'
    )
}

/// Class and digit value of a character.
pub(crate) fn classify(c: char) -> (Class, u8) {
    if c.is_ascii() {
        let b = c as u8;
        return match BYTE_CLASS[usize::from(b)] {
            D => (Class::Digit, b - b'0'),
            S => (Class::Sep, 0),
            A => (Class::Alpha, 0),
            _ => (Class::Other, 0),
        };
    }
    if let Some(v) = unicode_digit(c) {
        return (Class::Digit, v);
    }
    if unicode_sep(c) {
        return (Class::Sep, 0);
    }
    (Class::Other, 0)
}

fn hex4(b: &[u8]) -> Option<u32> {
    let mut v = 0u32;
    for &c in b.get(..4)? {
        v = v * 16 + char::from(c).to_digit(16)?;
    }
    Some(v)
}

/// True when `b` (shorter than a full escape) could still become `\uXXXX`.
fn escape_prefix(b: &[u8]) -> bool {
    b.iter().enumerate().all(|(i, &c)| match i {
        0 => c == b'\\',
        1 => c == b'u',
        _ => c.is_ascii_hexdigit(),
    })
}

fn unit(len: usize, ch: char, escaped: bool) -> Decoded {
    let (class, value) = classify(ch);
    Decoded::Unit(Unit {
        len,
        class,
        value,
        escaped,
        ch,
    })
}

/// Decodes the unit at `buf[i]` (which must exist).
pub(crate) fn decode(buf: &[u8], i: usize) -> Decoded {
    let Some(&b) = buf.get(i) else {
        return Decoded::Incomplete;
    };
    if b < 0x80 {
        if b == b'\\' {
            return decode_escape(buf, i);
        }
        return unit(1, char::from(b), false);
    }
    let want = match b {
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF4 => 4,
        _ => return other(1),
    };
    let end = i + want;
    if end > buf.len() {
        let tail = &buf[i + 1..];
        return if tail.iter().all(|&c| (0x80..0xC0).contains(&c)) {
            Decoded::Incomplete
        } else {
            other(1)
        };
    }
    match std::str::from_utf8(&buf[i..end])
        .ok()
        .and_then(|s| s.chars().next())
    {
        Some(c) => unit(want, c, false),
        None => other(1),
    }
}

fn other(len: usize) -> Decoded {
    Decoded::Unit(Unit {
        len,
        class: Class::Other,
        value: 0,
        escaped: false,
        ch: '\u{FFFD}',
    })
}

fn decode_escape(buf: &[u8], i: usize) -> Decoded {
    let rest = &buf[i..];
    if rest.len() < 6 {
        return if escape_prefix(rest) {
            Decoded::Incomplete
        } else {
            unit(1, '\\', false)
        };
    }
    if rest[1] != b'u' {
        return unit(1, '\\', false);
    }
    let Some(cp) = hex4(&rest[2..]) else {
        return unit(1, '\\', false);
    };
    if (0xD800..0xE000).contains(&cp) {
        // Surrogates stay unpaired at this level, as the acceptance checker reads them: a digit
        // written as an escaped surrogate pair is never a digit here (and so never hides one).
        // JSON strings pair them when unescaping (see `json::unescape`).
        return Decoded::Unit(Unit {
            len: 6,
            class: Class::Other,
            value: 0,
            escaped: true,
            ch: '\u{FFFD}',
        });
    }
    match char::from_u32(cp) {
        Some(ch) => unit(6, ch, true),
        None => Decoded::Unit(Unit {
            len: 6,
            class: Class::Other,
            value: 0,
            escaped: true,
            ch: '\u{FFFD}',
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_of_many_scripts() {
        assert_eq!(unicode_digit('\u{FF14}'), Some(4));
        assert_eq!(unicode_digit('\u{0664}'), Some(4));
        assert_eq!(unicode_digit('\u{096A}'), Some(4));
        assert_eq!(unicode_digit('\u{00B2}'), Some(2));
        assert_eq!(unicode_digit('\u{1D7D2}'), Some(4));
        assert_eq!(unicode_digit('a'), None);
        assert_eq!(unicode_digit('\u{00E9}'), None);
    }

    #[test]
    fn every_digit_lead_byte_is_a_trigger() {
        for &(lo, hi, _) in DIGIT_RANGES {
            for cp in lo..=hi {
                let c = char::from_u32(cp).unwrap();
                let mut b = [0u8; 4];
                let s = c.encode_utf8(&mut b);
                assert!(TRIGGER[usize::from(s.as_bytes()[0])], "{cp:x}");
            }
        }
    }

    #[test]
    fn escapes() {
        assert!(matches!(
            decode(b"\\u0034", 0),
            Decoded::Unit(Unit {
                len: 6,
                class: Class::Digit,
                value: 4,
                ..
            })
        ));
        assert!(matches!(
            decode(b"\\uff14", 0),
            Decoded::Unit(Unit {
                len: 6,
                class: Class::Digit,
                value: 4,
                ..
            })
        ));
        assert!(matches!(
            decode(b"\\ud835\\udfd2", 0),
            Decoded::Unit(Unit {
                len: 6,
                class: Class::Other,
                ..
            })
        ));
        assert_eq!(decode(b"\\u00", 0), Decoded::Incomplete);
        assert!(matches!(
            decode(b"\\n", 0),
            Decoded::Unit(Unit {
                len: 1,
                class: Class::Other,
                ..
            })
        ));
        assert_eq!(
            decode("\u{FF14}".as_bytes(), 0),
            Decoded::Unit(Unit {
                len: 3,
                class: Class::Digit,
                value: 4,
                escaped: false,
                ch: '\u{FF14}'
            })
        );
        assert_eq!(decode(&"\u{FF14}".as_bytes()[..2], 0), Decoded::Incomplete);
    }
}
