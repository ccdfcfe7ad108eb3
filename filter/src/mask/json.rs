//! JSON-aware masking: a validating single-pass lexer that copies the document byte for byte and
//! edits only string values and number tokens that hold something to mask.
//!
//! String values are read after unescaping (`"\u0034111…"` is a card number); a string that itself
//! holds a JSON document (MCP `content[].text`) is masked as JSON, anything else as text. A number
//! token that holds a card number becomes a string (`"************1111"`), so the output is still
//! valid JSON. Keys are never rewritten; a key naming a card verification code (configurable)
//! masks the 3–4 digit value that follows it.

use super::edit::{json_escape, normalize, Edit, Rep};
use super::scan::{may_hold_digits, TextScan};
use super::unicode::{decode, Class, Decoded};
use super::{MaskReport, Masker};

/// Why a body is not JSON (the caller then masks it as text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotJson {
    /// Byte offset where parsing stopped.
    pub offset: usize,
}

impl std::fmt::Display for NotJson {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "not valid JSON (at byte {})", self.offset)
    }
}

impl std::error::Error for NotJson {}

const MAX_DEPTH: usize = 256;
/// JSON documents inside JSON strings are masked as JSON this many levels deep (then as text).
const MAX_NESTING: u8 = 4;

const STOP: u8 = 1; // quote, backslash, control character
const TRIG: u8 = 2; // may start a digit
const HIGH: u8 = 4; // non-ASCII

static STR_TABLE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        let mut c = 0;
        if b == b'"' || b == b'\\' || b < 0x20 {
            c |= STOP;
        }
        if super::unicode::TRIGGER[i] {
            c |= TRIG;
        }
        if b >= 0x80 {
            c |= HIGH;
        }
        t[i] = c;
        i += 1;
    }
    t
};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Expect {
    Value,
    ValueOrClose,
    KeyOrClose,
    Key,
    Colon,
    CommaOrClose,
    Done,
}

struct Frame {
    object: bool,
}

/// Reused state for one masking call.
pub(crate) struct JsonMasker<'m> {
    m: &'m Masker,
    scan: TextScan,
}

struct StrInfo {
    end: usize,
    flags: u8,
}

impl<'m> JsonMasker<'m> {
    pub(crate) fn new(m: &'m Masker) -> Self {
        Self {
            m,
            scan: TextScan::new(0),
        }
    }

    /// Edits (in `src` positions) that mask the JSON document `src`.
    pub(crate) fn edits(
        &mut self,
        src: &[u8],
        nesting: u8,
        edits: &mut Vec<Edit>,
        report: &mut MaskReport,
    ) -> Result<(), NotJson> {
        let err = |offset| NotJson { offset };
        let mut stack: Vec<Frame> = Vec::new();
        let mut expect = Expect::Value;
        let mut cvv_pending = false;
        let mut i = 0usize;
        let n = src.len();
        loop {
            i = skip_ws(src, i);
            if expect == Expect::Done {
                return if i == n { Ok(()) } else { Err(err(i)) };
            }
            let Some(&c) = src.get(i) else {
                return Err(err(i));
            };
            match expect {
                Expect::Value | Expect::ValueOrClose => {
                    if expect == Expect::ValueOrClose && c == b']' {
                        stack.pop();
                        i += 1;
                        expect = after_value(&stack);
                        continue;
                    }
                    let cvv = std::mem::take(&mut cvv_pending);
                    match c {
                        b'"' => {
                            let info = scan_string(src, i).ok_or(err(i))?;
                            self.string_value(
                                src,
                                i + 1,
                                info.end - 1,
                                info.flags,
                                cvv,
                                nesting,
                                edits,
                                report,
                            );
                            i = info.end;
                            expect = after_value(&stack);
                        }
                        b'{' | b'[' => {
                            if stack.len() >= MAX_DEPTH {
                                return Err(err(i));
                            }
                            stack.push(Frame { object: c == b'{' });
                            expect = if c == b'{' {
                                Expect::KeyOrClose
                            } else {
                                Expect::ValueOrClose
                            };
                            i += 1;
                        }
                        b'-' | b'0'..=b'9' => {
                            let end = scan_number(src, i).ok_or(err(i))?;
                            self.number(src, i, end, cvv, edits, report);
                            i = end;
                            expect = after_value(&stack);
                        }
                        b't' | b'f' | b'n' => {
                            let lit: &[u8] = match c {
                                b't' => b"true",
                                b'f' => b"false",
                                _ => b"null",
                            };
                            if !src[i..].starts_with(lit) {
                                return Err(err(i));
                            }
                            i += lit.len();
                            expect = after_value(&stack);
                        }
                        _ => return Err(err(i)),
                    }
                }
                Expect::KeyOrClose | Expect::Key => {
                    if expect == Expect::KeyOrClose && c == b'}' {
                        stack.pop();
                        i += 1;
                        expect = after_value(&stack);
                        continue;
                    }
                    if c != b'"' {
                        return Err(err(i));
                    }
                    let info = scan_string(src, i).ok_or(err(i))?;
                    cvv_pending = self.m.has_cvv_keys()
                        && self.is_cvv_key(&src[i + 1..info.end - 1], info.flags);
                    // A key can hold a card number too; it is masked as text.
                    self.string_value(
                        src,
                        i + 1,
                        info.end - 1,
                        info.flags,
                        false,
                        MAX_NESTING,
                        edits,
                        report,
                    );
                    i = info.end;
                    expect = Expect::Colon;
                }
                Expect::Colon => {
                    if c != b':' {
                        return Err(err(i));
                    }
                    i += 1;
                    expect = Expect::Value;
                }
                Expect::CommaOrClose => {
                    let top_object = stack.last().is_some_and(|f| f.object);
                    match c {
                        b',' => {
                            expect = if top_object {
                                Expect::Key
                            } else {
                                Expect::Value
                            }
                        }
                        b'}' if top_object => {
                            stack.pop();
                            expect = after_value(&stack);
                        }
                        b']' if !top_object && !stack.is_empty() => {
                            stack.pop();
                            expect = after_value(&stack);
                        }
                        _ => return Err(err(i)),
                    }
                    i += 1;
                }
                Expect::Done => return Err(err(i)),
            }
        }
    }

    fn is_cvv_key(&self, raw: &[u8], flags: u8) -> bool {
        if raw.len() > 64 {
            return false;
        }
        let decoded;
        let key: &[u8] = if flags & STOP != 0 {
            decoded = unescape(raw).0;
            &decoded
        } else {
            raw
        };
        self.m.is_cvv_key(key)
    }

    /// Masks the string value whose content is `src[cs..ce]`.
    #[allow(clippy::too_many_arguments)]
    fn string_value(
        &mut self,
        src: &[u8],
        cs: usize,
        ce: usize,
        flags: u8,
        cvv: bool,
        nesting: u8,
        edits: &mut Vec<Edit>,
        report: &mut MaskReport,
    ) {
        if flags & (TRIG | STOP) == 0 && !self.m.needs_all_text() {
            return;
        }
        let raw = &src[cs..ce];
        if flags & STOP == 0 {
            // No escapes: the raw bytes are the value.
            self.value_edits(raw, cs, cvv, nesting, edits, report);
            return;
        }
        let (decoded, map) = unescape(raw);
        let mut local = Vec::new();
        let first_finding = report.findings.len();
        if has_paired_digit(raw) {
            // A digit written as an escaped surrogate pair reads as a digit once decoded and as two
            // lone surrogates to a checker of the raw bytes: the two readings group digits
            // differently, so no single reading is safe. Mask every digit of such a string.
            star_all_digits(&decoded, &mut local);
        } else {
            self.value_edits(&decoded, 0, cvv, nesting, &mut local, report);
        }
        let to_src = |p: usize| cs + map.get(p).copied().unwrap_or(raw.len());
        for f in &mut report.findings[first_finding..] {
            f.offset = to_src(f.offset);
        }
        for e in local {
            let rep = match e.rep {
                Rep::Star | Rep::EscStar => Rep::Star,
                Rep::Owned(b) => Rep::Owned(json_escape(&b).into_boxed_slice()),
            };
            edits.push(Edit {
                start: to_src(e.start),
                end: to_src(e.end),
                rep,
            });
        }
    }

    /// Masks a decoded string value `text` whose position 0 is `base`.
    fn value_edits(
        &mut self,
        text: &[u8],
        base: usize,
        cvv: bool,
        nesting: u8,
        edits: &mut Vec<Edit>,
        report: &mut MaskReport,
    ) {
        if cvv && mask_cvv(text, base, edits) {
            report.add_detector("cvv");
            return;
        }
        let trimmed = skip_ws(text, 0);
        if nesting < MAX_NESTING && matches!(text.get(trimmed), Some(b'{' | b'[')) {
            let mut inner = JsonMasker::new(self.m);
            let mut sub_edits = Vec::new();
            let mut sub_report = report.empty_like();
            if inner
                .edits(text, nesting + 1, &mut sub_edits, &mut sub_report)
                .is_ok()
            {
                for f in &mut sub_report.findings {
                    f.offset += base;
                }
                report.merge(sub_report);
                edits.extend(sub_edits.into_iter().map(|mut e| {
                    e.start += base;
                    e.end += base;
                    e
                }));
                return;
            }
        }
        let first = edits.len();
        self.scan.reset(base);
        if may_hold_digits(text) {
            self.scan.feed(self.m, text, base, true, edits, report);
        }
        self.m
            .extra_text_edits(text, base, &self.scan.extra_windows, edits, report);
        if edits.len() > first {
            let mut mine = edits.split_off(first);
            normalize(&mut mine);
            edits.extend(mine);
        }
    }

    /// Masks a number token `src[s..e]`; a masked number becomes a string.
    fn number(
        &mut self,
        src: &[u8],
        s: usize,
        e: usize,
        cvv: bool,
        edits: &mut Vec<Edit>,
        report: &mut MaskReport,
    ) {
        let tok = &src[s..e];
        if cvv && (3..=4).contains(&tok.len()) && tok.iter().all(u8::is_ascii_digit) {
            let stars = if tok.len() == 3 {
                &b"\"***\""[..]
            } else {
                &b"\"****\""[..]
            };
            edits.push(Edit::owned(s, e, stars));
            report.add_detector("cvv");
            return;
        }
        if tok.iter().filter(|b| b.is_ascii_digit()).count() < 13 {
            return;
        }
        let mut local = Vec::new();
        self.scan.reset(s);
        self.scan.feed(self.m, tok, s, true, &mut local, report);
        if !local.is_empty() {
            edits.push(Edit::owned(s, s, b"\""));
            edits.append(&mut local);
            edits.push(Edit::owned(e, e, b"\""));
        }
    }
}

/// Masks a card verification code: the whole value is 3–4 digits (spaces around allowed).
fn mask_cvv(text: &[u8], base: usize, edits: &mut Vec<Edit>) -> bool {
    let mut digits = Vec::new();
    let mut i = 0;
    while i < text.len() {
        match decode(text, i) {
            Decoded::Unit(u) => {
                match u.class {
                    Class::Digit => digits.push(Edit::star(base + i, base + i + u.len, u.escaped)),
                    _ if u.ch == ' ' => {}
                    _ => return false,
                }
                i += u.len;
            }
            Decoded::Incomplete => return false,
        }
    }
    if (3..=4).contains(&digits.len()) {
        edits.extend(digits);
        true
    } else {
        false
    }
}

/// True when the raw string body writes a digit as an escaped surrogate pair.
fn has_paired_digit(raw: &[u8]) -> bool {
    let hex = |at: usize| -> Option<u32> {
        let h = raw.get(at..at + 4)?;
        u32::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()
    };
    raw.windows(2).enumerate().any(|(at, w)| {
        w == b"\\u"
            && hex(at + 2).is_some_and(|hi| (0xD800..0xDC00).contains(&hi))
            && raw.get(at + 6..at + 8) == Some(&b"\\u"[..])
            && match (hex(at + 2), hex(at + 8)) {
                (Some(hi), Some(lo)) if (0xDC00..0xE000).contains(&lo) => {
                    char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00))
                        .and_then(super::unicode::unicode_digit)
                        .is_some()
                }
                _ => false,
            }
    })
}

/// Stars every digit of a decoded string.
fn star_all_digits(text: &[u8], edits: &mut Vec<Edit>) {
    let mut i = 0;
    while i < text.len() {
        match decode(text, i) {
            Decoded::Unit(u) => {
                if u.class == Class::Digit {
                    edits.push(Edit::star(i, i + u.len, u.escaped));
                }
                i += u.len;
            }
            Decoded::Incomplete => i += 1,
        }
    }
}

fn after_value(stack: &[Frame]) -> Expect {
    if stack.is_empty() {
        Expect::Done
    } else {
        Expect::CommaOrClose
    }
}

fn skip_ws(src: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = src.get(i) {
        i += 1;
    }
    i
}

/// Validates the string starting at the quote `src[q]`; returns the position after its closing
/// quote and what it holds.
fn scan_string(src: &[u8], q: usize) -> Option<StrInfo> {
    let mut i = q + 1;
    let mut flags = 0u8;
    let n = src.len();
    loop {
        // Fast run over bytes that need no attention.
        while i < n && STR_TABLE[usize::from(src[i])] == 0 {
            i += 1;
        }
        let &b = src.get(i)?;
        let c = STR_TABLE[usize::from(b)];
        flags |= c & !STOP;
        match b {
            b'"' => break,
            b'\\' => {
                flags |= STOP | TRIG;
                match *src.get(i + 1)? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => i += 2,
                    b'u' => {
                        let hex = src.get(i + 2..i + 6)?;
                        if !hex.iter().all(u8::is_ascii_hexdigit) {
                            return None;
                        }
                        i += 6;
                    }
                    _ => return None,
                }
            }
            0..=0x1f => return None,
            _ => i += 1,
        }
    }
    if flags & HIGH != 0 && std::str::from_utf8(&src[q + 1..i]).is_err() {
        return None;
    }
    Some(StrInfo { end: i + 1, flags })
}

/// Validates the number at `src[s]`; returns its end.
fn scan_number(src: &[u8], s: usize) -> Option<usize> {
    let mut i = s;
    let digits = |i: &mut usize| {
        let st = *i;
        while src.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i > st
    };
    if src.get(i) == Some(&b'-') {
        i += 1;
    }
    match src.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            digits(&mut i);
        }
        _ => return None,
    }
    if src.get(i) == Some(&b'.') {
        i += 1;
        if !digits(&mut i) {
            return None;
        }
    }
    if let Some(b'e' | b'E') = src.get(i) {
        i += 1;
        if let Some(b'+' | b'-') = src.get(i) {
            i += 1;
        }
        if !digits(&mut i) {
            return None;
        }
    }
    Some(i)
}

/// Unescapes a validated JSON string body. Returns the bytes and, for each decoded byte (and one
/// past the end), the raw position it came from. Lone surrogates decode to U+FFFD.
pub(crate) fn unescape(raw: &[u8]) -> (Vec<u8>, Vec<usize>) {
    let mut out = Vec::with_capacity(raw.len());
    let mut map = Vec::with_capacity(raw.len() + 1);
    let mut i = 0;
    let hex = |b: &[u8]| -> Option<u32> {
        let mut v = 0u32;
        for &c in b.get(..4)? {
            v = v * 16 + char::from(c).to_digit(16)?;
        }
        Some(v)
    };
    while i < raw.len() {
        let b = raw[i];
        if b != b'\\' {
            out.push(b);
            map.push(i);
            i += 1;
            continue;
        }
        let start = i;
        let (ch, len) = match raw.get(i + 1) {
            Some(b'"') => ('"', 2),
            Some(b'\\') => ('\\', 2),
            Some(b'/') => ('/', 2),
            Some(b'b') => ('\u{8}', 2),
            Some(b'f') => ('\u{c}', 2),
            Some(b'n') => ('\n', 2),
            Some(b'r') => ('\r', 2),
            Some(b't') => ('\t', 2),
            Some(b'u') => match raw.get(i + 2..).and_then(hex) {
                Some(hi @ 0xD800..=0xDBFF) => {
                    let lo = raw
                        .get(i + 6..i + 8)
                        .filter(|p| *p == b"\\u")
                        .and_then(|_| raw.get(i + 8..))
                        .and_then(hex)
                        .filter(|lo| (0xDC00..0xE000).contains(lo));
                    match lo {
                        Some(lo) => (
                            char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00))
                                .unwrap_or('\u{FFFD}'),
                            12,
                        ),
                        None => ('\u{FFFD}', 6),
                    }
                }
                Some(cp) => (char::from_u32(cp).unwrap_or('\u{FFFD}'), 6),
                None => ('\\', 1),
            },
            _ => ('\\', 1),
        };
        let mut buf = [0u8; 4];
        for &x in ch.encode_utf8(&mut buf).as_bytes() {
            out.push(x);
            map.push(start);
        }
        i += len;
    }
    map.push(raw.len());
    (out, map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescape_maps_positions() {
        let (d, m) = unescape(br#"a\u0034\n\ud83d\ude00b"#);
        assert_eq!(d, "a4\n\u{1F600}b".as_bytes());
        assert_eq!(m, vec![0, 1, 7, 9, 9, 9, 9, 21, 22]);
    }

    #[test]
    fn numbers_validate() {
        for ok in ["0", "-0", "12.5e-3", "4111111111111111", "1E9"] {
            assert_eq!(scan_number(ok.as_bytes(), 0), Some(ok.len()), "{ok}");
        }
        for bad in ["-", "1.", ".5", "1e"] {
            assert!(
                scan_number(bad.as_bytes(), 0).is_none_or(|e| e < bad.len()),
                "{bad}"
            );
        }
    }
}
