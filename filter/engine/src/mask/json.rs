//! JSON-aware masking: a validating single-pass lexer that copies the document byte for byte and
//! edits only string values and number tokens that hold something to mask.
//!
//! String values are read after unescaping (`"\u0034111…"` is a card number); a string that itself
//! holds a JSON document (MCP `content[].text`) is masked as JSON, anything else as text. A number
//! token that holds a card number becomes a string (`"************1111"`), so the output is still
//! valid JSON. Keys are never rewritten; a key naming a card verification code (configurable)
//! masks the 3–4 digit value that follows it.

use super::edit::{json_escape, normalize, Edit, Rep};
use super::scan::TextScan;
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
    /// The `result` object of a JSON-RPC answer (the document itself, or a batch item).
    result: bool,
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
        // A multi-round-trip `result.requestState` is opaque to everyone but the server that
        // wrote it and passes unchanged (MCP 2026-07-28); only at the top level of the answer,
        // never in JSON nested inside a string.
        let mut result_pending = false;
        let mut opaque_pending = false;
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
                    let result = std::mem::take(&mut result_pending);
                    let opaque = std::mem::take(&mut opaque_pending);
                    match c {
                        b'"' if opaque => {
                            let info = scan_string(src, i).ok_or(err(i))?;
                            i = info.end;
                            expect = after_value(&stack);
                        }
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
                            stack.push(Frame {
                                object: c == b'{',
                                result: result && c == b'{',
                            });
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
                    let key = &src[i + 1..info.end - 1];
                    cvv_pending = self.m.has_cvv_keys() && self.is_cvv_key(key, info.flags);
                    if nesting == 0 {
                        let message_level = match stack.as_slice() {
                            [_] => true,
                            [batch, _] => !batch.object,
                            _ => false,
                        };
                        result_pending = message_level && key == b"result";
                        opaque_pending =
                            stack.last().is_some_and(|f| f.result) && key == b"requestState";
                    }
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
        if flags & (STOP | HIGH) == 0
            && !self.m.needs_all_text()
            && raw.iter().filter(|b| b.is_ascii_digit()).count() < 3
        {
            // Too few digits for any detector.
            return;
        }
        if flags & STOP == 0 {
            // No escapes: the raw bytes are the value.
            self.value_edits(raw, cs, cvv, nesting, edits, report);
            return;
        }
        let (decoded, map) = unescape(raw);
        let mut local = Vec::new();
        let first_finding = report.findings.len();
        self.value_edits(&decoded, 0, cvv, nesting, &mut local, report);
        if map.paired_digit {
            // A digit written as an escaped surrogate pair reads as a digit once decoded and as two
            // lone surrogates to a checker of the raw bytes: the two readings group the digits
            // around it differently, so neither reading alone is safe there. Star every digit of
            // those runs; the rest of the string reads the same either way.
            star_runs_with_supplementary_digits(&decoded, &mut local);
        }
        let mut hint = 0;
        for f in &mut report.findings[first_finding..] {
            f.offset = cs + map.raw_from(f.offset, &mut hint);
        }
        let mut hint = 0;
        let mut to_src = |p: usize| cs + map.raw_from(p, &mut hint);
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
        self.scan
            .feed_whole(self.m, text, base, base, true, edits, report);
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
        if tok.len() < 13 && !cvv {
            return;
        }
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
        self.scan
            .feed_whole(self.m, tok, s, s, false, &mut local, report);
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

/// Stars every digit of each run of digit groups (digits with single separators between them)
/// that holds a digit outside the Basic Multilingual Plane. Edits that overlap the detectors' own
/// are dropped later by `normalize`, which keeps the longer edit; every digit ends up masked.
fn star_runs_with_supplementary_digits(text: &[u8], edits: &mut Vec<Edit>) {
    let mut run: Vec<(usize, usize)> = Vec::new();
    let mut supplementary = false;
    let mut after_separator = false;
    let mut flush = |run: &mut Vec<(usize, usize)>, supplementary: &mut bool| {
        if *supplementary {
            edits.extend(
                run.iter()
                    .map(|&(start, end)| Edit::star(start, end, false)),
            );
        }
        run.clear();
        *supplementary = false;
    };
    let mut i = 0;
    while i < text.len() {
        let Decoded::Unit(u) = decode(text, i) else {
            i += 1;
            continue;
        };
        match u.class {
            Class::Digit => {
                run.push((i, i + u.len));
                supplementary |= u.ch > '\u{ffff}';
                after_separator = false;
            }
            Class::Sep if !run.is_empty() && !after_separator => after_separator = true,
            _ => {
                flush(&mut run, &mut supplementary);
                after_separator = false;
            }
        }
        i += u.len;
    }
    flush(&mut run, &mut supplementary);
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
        // Fast run over bytes that need no attention, eight at a time where no byte ends the
        // string or needs an escape check (digits and non-ASCII only set flags).
        while i + 8 <= n {
            let Ok(chunk) = <[u8; 8]>::try_from(&src[i..i + 8]) else {
                break;
            };
            let x = u64::from_le_bytes(chunk);
            let (stop, digit, high) = swar_classes(x);
            if stop {
                break;
            }
            if digit {
                flags |= TRIG;
            }
            if high {
                flags |= HIGH | TRIG;
            }
            i += 8;
        }
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

/// For eight bytes: any quote, backslash or control character; any ASCII digit; any non-ASCII.
fn swar_classes(x: u64) -> (bool, bool, bool) {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let has_zero = |v: u64| v.wrapping_sub(LO) & !v & HI != 0;
    let low7 = x & !HI;
    let high = x & HI != 0;
    // Control characters: bytes below 0x20 (with the high bit clear).
    let ctrl = !low7.wrapping_add(LO * (0x80 - 0x20)) & !x & HI != 0;
    let stop =
        has_zero(x ^ (LO * u64::from(b'"'))) || has_zero(x ^ (LO * u64::from(b'\\'))) || ctrl;
    let ge_30 = low7.wrapping_add(LO * (0x80 - 0x30));
    let gt_39 = low7.wrapping_add(LO * (0x80 - 0x3A));
    let digit = ge_30 & !gt_39 & !x & HI != 0;
    (stop, digit, high)
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

/// Every string value of a JSON document: (hash of its path, content start, content end). `None`
/// when `src` is not JSON. Used to join text that a stream splits over events at one path.
pub(crate) fn string_values(src: &[u8]) -> Option<Vec<(u64, usize, usize)>> {
    const FNV: u64 = 0xcbf2_9ce4_8422_2325;
    let fnv = |h: u64, bytes: &[u8]| {
        bytes
            .iter()
            .fold(h, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
    };
    // Per open container: (object?, hash of its path, hash of the current member's path, index).
    let mut stack: Vec<(bool, u64, u64, u64)> = Vec::new();
    let mut out = Vec::new();
    let mut expect = Expect::Value;
    let mut i = 0;
    let path = |stack: &[(bool, u64, u64, u64)]| {
        stack.last().map_or(FNV, |f| {
            if f.0 {
                f.2
            } else {
                fnv(f.1, &f.3.to_le_bytes())
            }
        })
    };
    loop {
        i = skip_ws(src, i);
        if expect == Expect::Done {
            return (i == src.len()).then_some(out);
        }
        let &c = src.get(i)?;
        match expect {
            Expect::Value | Expect::ValueOrClose => {
                if expect == Expect::ValueOrClose && c == b']' {
                    stack.pop();
                    i += 1;
                    expect = after_value_n(stack.len());
                    continue;
                }
                match c {
                    b'"' => {
                        let info = scan_string(src, i)?;
                        out.push((path(&stack), i + 1, info.end - 1));
                        i = info.end;
                    }
                    b'{' | b'[' => {
                        if stack.len() >= MAX_DEPTH {
                            return None;
                        }
                        let here = path(&stack);
                        stack.push((c == b'{', here, here, 0));
                        expect = if c == b'{' {
                            Expect::KeyOrClose
                        } else {
                            Expect::ValueOrClose
                        };
                        i += 1;
                        continue;
                    }
                    b'-' | b'0'..=b'9' => i = scan_number(src, i)?,
                    b't' | b'f' | b'n' => {
                        let lit: &[u8] = match c {
                            b't' => b"true",
                            b'f' => b"false",
                            _ => b"null",
                        };
                        if !src[i..].starts_with(lit) {
                            return None;
                        }
                        i += lit.len();
                    }
                    _ => return None,
                }
                expect = after_value_n(stack.len());
            }
            Expect::KeyOrClose | Expect::Key => {
                if expect == Expect::KeyOrClose && c == b'}' {
                    stack.pop();
                    i += 1;
                    expect = after_value_n(stack.len());
                    continue;
                }
                if c != b'"' {
                    return None;
                }
                let info = scan_string(src, i)?;
                if let Some(f) = stack.last_mut() {
                    f.2 = fnv(f.1, &src[i + 1..info.end - 1]);
                }
                i = info.end;
                expect = Expect::Colon;
            }
            Expect::Colon => {
                if c != b':' {
                    return None;
                }
                i += 1;
                expect = Expect::Value;
            }
            Expect::CommaOrClose => {
                let top_object = stack.last().is_some_and(|f| f.0);
                match c {
                    b',' => {
                        if let Some(f) = stack.last_mut() {
                            f.3 += 1;
                        }
                        expect = if top_object {
                            Expect::Key
                        } else {
                            Expect::Value
                        };
                    }
                    b'}' if top_object => {
                        stack.pop();
                        expect = after_value_n(stack.len());
                    }
                    b']' if !top_object && !stack.is_empty() => {
                        stack.pop();
                        expect = after_value_n(stack.len());
                    }
                    _ => return None,
                }
                i += 1;
            }
            Expect::Done => return None,
        }
    }
}

fn after_value_n(depth: usize) -> Expect {
    if depth == 0 {
        Expect::Done
    } else {
        Expect::CommaOrClose
    }
}

/// Where decoded bytes came from: runs copied as they are, and escapes.
#[derive(Debug, Default)]
pub(crate) struct PosMap {
    /// (decoded start, raw start, is an escape), in order.
    marks: Vec<(usize, usize, bool)>,
    raw_len: usize,
    /// A digit was written as an escaped surrogate pair.
    pub(crate) paired_digit: bool,
}

impl PosMap {
    /// Like [`Self::raw`], fast for rising positions: `hint` remembers where the last one was.
    pub(crate) fn raw_from(&self, p: usize, hint: &mut usize) -> usize {
        let ok = self.marks.get(*hint).is_some_and(|m| m.0 <= p);
        if !ok {
            *hint = self.marks.partition_point(|m| m.0 <= p).saturating_sub(1);
        }
        while self.marks.get(*hint + 1).is_some_and(|m| m.0 <= p) {
            *hint += 1;
        }
        match self.marks.get(*hint) {
            Some(&(_, r, true)) => r,
            Some(&(d, r, false)) if d <= p => (r + (p - d)).min(self.raw_len),
            _ => p.min(self.raw_len),
        }
    }
}

/// Unescapes a validated JSON string body. Returns the bytes and where each came from. Lone
/// surrogates decode to U+FFFD.
pub(crate) fn unescape(raw: &[u8]) -> (Vec<u8>, PosMap) {
    let mut out = Vec::with_capacity(raw.len());
    let mut map = PosMap {
        marks: Vec::with_capacity(raw.len() / 8 + 2),
        raw_len: raw.len(),
        paired_digit: false,
    };
    let mut i = 0;
    let hex = |b: &[u8]| -> Option<u32> {
        let mut v = 0u32;
        for &c in b.get(..4)? {
            v = v * 16 + char::from(c).to_digit(16)?;
        }
        Some(v)
    };
    while i < raw.len() {
        let run = raw[i..]
            .iter()
            .position(|&b| b == b'\\')
            .unwrap_or(raw.len() - i);
        if run > 0 {
            map.marks.push((out.len(), i, false));
            out.extend_from_slice(&raw[i..i + run]);
            i += run;
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
                        Some(lo) => {
                            let c = char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00))
                                .unwrap_or('\u{FFFD}');
                            map.paired_digit |= super::unicode::unicode_digit(c).is_some();
                            (c, 12)
                        }
                        None => ('\u{FFFD}', 6),
                    }
                }
                Some(cp) => (char::from_u32(cp).unwrap_or('\u{FFFD}'), 6),
                None => ('\\', 1),
            },
            _ => ('\\', 1),
        };
        map.marks.push((out.len(), start, true));
        let mut buf = [0u8; 4];
        out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
        i += len;
    }
    map.marks.push((out.len(), raw.len(), false));
    (out, map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescape_maps_positions() {
        let (d, m) = unescape(br#"a\u0034\n\ud83d\ude00b"#);
        assert_eq!(d, "a4\n\u{1F600}b".as_bytes());
        let mut hint = 0;
        let raw: Vec<usize> = (0..=d.len()).map(|p| m.raw_from(p, &mut hint)).collect();
        assert_eq!(raw, vec![0, 1, 7, 9, 9, 9, 9, 21, 22]);
    }

    #[test]
    fn swar_matches_table() {
        for b in 0u8..=255 {
            for pos in 0..8 {
                let mut chunk = [b'a'; 8];
                chunk[pos] = b;
                let (stop, digit, high) = swar_classes(u64::from_le_bytes(chunk));
                let c = STR_TABLE[usize::from(b)];
                assert_eq!(stop, c & STOP != 0, "{b}");
                assert_eq!(digit, b.is_ascii_digit(), "{b}");
                assert_eq!(high, b >= 0x80, "{b}");
            }
        }
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
