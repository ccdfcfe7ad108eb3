//! The card-number detector over text: a resumable scanner that finds runs of digit groups and
//! masks every window of whole groups that is a card number.
//!
//! A *group* is a maximal run of digits (ASCII, any Unicode decimal digit, or `\uXXXX` escapes of
//! them). Groups joined by exactly one separator form a *chain*. A *window* is a sequence of
//! consecutive groups of a chain holding 13–19 digits. A window whose digits pass the Luhn check
//! and fall in an issuer range is a card number. A group longer than 19 digits is never part of
//! one (a 20-digit run is not a card number).
//!
//! Letters next to the digits do not hide a card number (`PAN4111111111111111`,
//! `ref=4111111111111111abc`, `x5500000000000004y`), with one exception, the *hash rule*: a window
//! may not start at a group glued to an ASCII letter on its left, nor end at a group glued to one
//! on its right, when that group is ASCII digits and lies
//!
//! - in a run of at least [`HEX_TOKEN`] (24) ASCII hex digits `[0-9A-Fa-f]`, the group included
//!   (hashes, trace ids, object ids; a card with a few hex letters glued to it stays shorter),
//! - in a segment of a UUID (`8-4-4-4-12` hex segments joined by `-`), or
//! - in an IBAN written as one word (`GB82WEST12345698765432`: uppercase, a country code, two
//!   digits, that country's IBAN length).
//!
//! The rule reads the text as it leaves the masker: digits masked there (a card written with a
//! digit of another script, track data) are `*`, so a shape that loses digits to masking no longer
//! protects the rest of them, and masking the output again changes nothing
//! ([`TextScan::feed_whole`]; an event too large to buffer, masked piece by piece, is read as it
//! came).
//!
//! Windows whose edges touch no letter are read exactly as before, so whatever the independent
//! checker (`shared/smoke/pan.py`, which still requires no letter on either side) flags is masked.
//! To decide, the scanner may need up to 64 bytes past a group; in a stream it waits for them.
//!
//! Track 2 equivalent data (EMV tag 57: card number, `D`, YYMM, service code, discretionary data,
//! often `F`-padded) and magnetic-stripe track 2 (`=` as the separator): when a card number is
//! followed by `D`/`d` and at least seven digits whose third and fourth are a month (01–12), or by
//! `=` and at least seven digits, the hash rule does not apply to its right side, and every digit
//! after the separator is masked too (the separator and any padding stay). It counts as one card
//! of its brand.
//!
//! Masking a window can leave kept digits (the last four, the BIN) next to other digits, where they
//! could form a new window: the scanner looks again until no window is a card number, masking such
//! secondary windows entirely. Memory is bounded: only the last [`HOLD_DIGITS`] digits of a chain are
//! kept open, and a group longer than any card number is a barrier that is never stored.

use super::edit::Edit;
use super::luhn::{brand_of_values, luhn_values};
use super::unicode::{decode, Class, Decoded, Unit, BYTE_CLASS, TRIGGER};
use super::{Display, Finding, MaskReport, Masker};

const MIN_PAN: usize = 13;
const MAX_PAN: usize = 19;
/// Digits of an open chain kept undecided: a future window (≤ 19 digits) and a secondary window
/// left of its kept BIN (≤ 13 more) both lie within the last 32.
const HOLD_DIGITS: usize = 40;
/// Length from which a run of ASCII hex digits is a hash or an id, not text (24: MongoDB object
/// ids; MD5, UUIDs without dashes, trace ids, SHA-1 and SHA-256 are longer). A card number of up to
/// 19 digits with a few hex letters glued to it (`4111111111111111abc`) stays shorter.
pub(crate) const HEX_TOKEN: usize = 24;
/// How far the hash rule looks either way (bytes of hex digits and dashes).
const HEX_LOOK: usize = 64;
/// Rounds of [`TextScan::feed_whole`] with the hash rule on; the last round has it off.
const MAX_ROUNDS: usize = 4;

/// What the characters around a closing group allow.
#[derive(Debug, Clone, Copy)]
struct Glue {
    /// A window may start at the group.
    left_ok: bool,
    /// A window may end at the group.
    right_ok: bool,
    /// Track data follows (`D` or `=` and digits): masked with a card ending at the group.
    track: bool,
}

impl Glue {
    const FREE: Glue = Glue {
        left_ok: true,
        right_ok: true,
        track: false,
    };
}

#[derive(Debug, Clone)]
struct DigitRec {
    start: usize,
    end: usize,
    value: u8,
    escaped: bool,
    group_start: bool,
    left_ok: bool,
    group_end: bool,
    right_ok: bool,
    masked: bool,
    covered: bool,
    token: Option<(usize, Box<[u8]>)>,
}

#[derive(Debug, Clone, Copy)]
struct Eff {
    first: usize,
    last: usize,
    left_ok: bool,
    right_ok: bool,
    linked: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum State {
    #[default]
    Idle,
    InGroup,
    AfterSep,
    /// Digits of track data after a masked card number: all masked.
    Track,
}

/// Resumable scanner over a byte stream at absolute positions.
#[derive(Debug, Clone)]
pub(crate) struct TextScan {
    state: State,
    prev: Class,
    pos: usize,
    tail: Vec<DigitRec>,
    group_len: usize,
    oversize: bool,
    /// The open group is glued to an ASCII letter on its left.
    left_glued: bool,
    /// Where the digits of track data start, after a card number and its separator.
    track_at: Option<usize>,
    eff: Vec<Eff>,
    group_start_pos: usize,
    /// Byte ranges (absolute) worth showing the extra detectors: a 3–4 digit group right after a
    /// CVV keyword, a 12–19 digit group followed by `=` or `^` (track data).
    pub(crate) extra_windows: Vec<(usize, usize, bool)>,
    plain_groups: Vec<(usize, usize)>,
    /// In [`Self::feed_whole`]: note in `hash_words` the words the hash rule protected a group by.
    whole: bool,
    hash_words: Vec<(usize, usize)>,
    /// Bytes (absolute ranges, sorted) masked in an earlier round over the same text: the hash rule
    /// reads them as the `*` they become.
    starred: Vec<(usize, usize)>,
    /// The hash rule is off (the last round of [`Self::feed_whole`]).
    no_hash: bool,
}

impl Default for TextScan {
    fn default() -> Self {
        Self::new(0)
    }
}

impl TextScan {
    pub(crate) fn new(pos: usize) -> Self {
        Self {
            state: State::Idle,
            prev: Class::Other,
            pos,
            tail: Vec::new(),
            group_len: 0,
            oversize: false,
            left_glued: false,
            track_at: None,
            eff: Vec::new(),
            group_start_pos: pos,
            extra_windows: Vec::new(),
            plain_groups: Vec::new(),
            whole: false,
            hash_words: Vec::new(),
            starred: Vec::new(),
            no_hash: false,
        }
    }

    /// Starts again at `pos` with no context, keeping the allocations.
    pub(crate) fn reset(&mut self, pos: usize) {
        self.state = State::Idle;
        self.prev = Class::Other;
        self.pos = pos;
        self.tail.clear();
        self.group_len = 0;
        self.oversize = false;
        self.left_glued = false;
        self.track_at = None;
        self.extra_windows.clear();
    }

    /// Masks a complete text: `buf` (which starts at absolute position `base`) from `from` to its
    /// end, then, with `extra`, the extra detectors over the same text.
    ///
    /// The hash rule reads the text as it leaves the masker, where masked digits are `*`: a hash
    /// that loses digits to a card or track data no longer protects the rest of them (else masking
    /// the output again would find cards this left). So while a round masks bytes in a word the
    /// rule protected a group by, the text is scanned again with those bytes starred; the last
    /// allowed round has the rule off (fail closed).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn feed_whole(
        &mut self,
        m: &Masker,
        buf: &[u8],
        base: usize,
        from: usize,
        extra: bool,
        edits: &mut Vec<Edit>,
        report: &mut MaskReport,
    ) {
        let first = edits.len();
        let (findings, dropped) = (report.findings.len(), report.findings_dropped);
        self.whole = true;
        self.round(m, buf, base, from, extra, edits, report);
        if self.star_masked_words(&edits[first..]) {
            // Rare. Only the last round counts: the first, which counted into the report, is run
            // once more to take its counts back out.
            let mut round = 2;
            let last = loop {
                self.no_hash = round == MAX_ROUNDS;
                edits.truncate(first);
                let mut counts = report.empty_like();
                self.round(m, buf, base, from, extra, edits, &mut counts);
                if self.no_hash || !self.star_masked_words(&edits[first..]) {
                    break counts;
                }
                round += 1;
            };
            self.no_hash = false;
            self.starred.clear();
            let mut first_round = report.empty_like();
            self.round(m, buf, base, from, extra, &mut Vec::new(), &mut first_round);
            report.take_back(first_round, findings, dropped);
            report.merge(last);
        }
        self.whole = false;
        self.no_hash = false;
        self.starred.clear();
        self.hash_words.clear();
    }

    /// One round of [`Self::feed_whole`].
    #[inline]
    #[allow(clippy::too_many_arguments)]
    fn round(
        &mut self,
        m: &Masker,
        buf: &[u8],
        base: usize,
        from: usize,
        extra: bool,
        edits: &mut Vec<Edit>,
        report: &mut MaskReport,
    ) {
        self.hash_words.clear();
        self.reset(from);
        self.feed(m, buf, base, true, edits, report);
        if extra {
            let text = buf.get(from.saturating_sub(base)..).unwrap_or_default();
            m.extra_text_edits(text, from, &self.extra_windows, edits, report);
        }
    }

    /// Adds to `starred` what `edits` masked in the words of `hash_words`; false when that adds
    /// nothing (the round read every such byte as masked already).
    fn star_masked_words(&mut self, edits: &[Edit]) -> bool {
        if self.hash_words.is_empty() {
            return false;
        }
        if !self.hash_words.is_sorted() {
            self.hash_words = coalesce(std::mem::take(&mut self.hash_words));
        }
        let words = &self.hash_words;
        let mut starred = Vec::new();
        // The scanner's edits come in order, then the extra detectors' (each in order, mostly).
        let (mut k, mut prev) = (0, 0);
        for e in edits.iter().filter(|e| e.start < e.end) {
            if e.start < prev {
                k = words.partition_point(|w| w.1 <= e.start);
            }
            prev = e.start;
            while words.get(k).is_some_and(|w| w.1 <= e.start) {
                k += 1;
            }
            if words.get(k).is_some_and(|w| w.0 < e.end) {
                starred.push((e.start, e.end));
            }
        }
        if starred.is_empty() {
            return false;
        }
        starred.extend_from_slice(&self.starred);
        let starred = coalesce(starred);
        if starred == self.starred {
            return false;
        }
        self.starred = starred;
        true
    }

    /// Everything before this position is decided (its edits were emitted).
    pub(crate) fn stable_until(&self) -> usize {
        self.tail.first().map_or(self.pos, |d| d.start)
    }

    /// Scans `buf`, which holds the stream from absolute position `base` and must cover everything
    /// from [`Self::stable_until`] on. With `last`, the input ends with `buf`. Edits for decided
    /// digits are appended to `edits` in order.
    pub(crate) fn feed(
        &mut self,
        m: &Masker,
        buf: &[u8],
        base: usize,
        last: bool,
        edits: &mut Vec<Edit>,
        report: &mut MaskReport,
    ) {
        let mut cx = Cx {
            m,
            buf,
            base,
            edits,
            report,
        };
        loop {
            let Some(rel) = self.pos.checked_sub(base) else {
                // Input that starts after our position: nothing sensible to do but resync.
                self.pos = base;
                continue;
            };
            if rel >= buf.len() {
                break;
            }
            if self.state == State::Idle {
                let t = find_trigger(buf, rel);
                if t > rel {
                    self.prev = if buf[t - 1].is_ascii_alphabetic() {
                        Class::Alpha
                    } else {
                        Class::Other
                    };
                    self.pos = base + t;
                }
                if t >= buf.len() {
                    break;
                }
                if buf[t].is_ascii_digit() && self.track_at != Some(base + t) {
                    if let Some(end) = self.skip_plain_chain(&cx, t, last) {
                        self.pos = base + end;
                        self.prev = Class::Other;
                        continue;
                    }
                }
            }
            let rel = self.pos - base;
            let u = match decode(buf, rel) {
                Decoded::Unit(u) => u,
                Decoded::Incomplete if last => Unit {
                    len: 1,
                    class: Class::Other,
                    value: 0,
                    escaped: false,
                    ch: '\u{FFFD}',
                },
                Decoded::Incomplete => break,
            };
            let (start, end) = (self.pos, self.pos + u.len);
            match (self.state, u.class) {
                (State::Track, Class::Digit) => cx.edits.push(Edit::star(start, end, u.escaped)),
                (State::Track, c) => {
                    self.state = State::Idle;
                    self.prev = c;
                }
                (State::Idle, Class::Digit) if self.track_at.take() == Some(start) => {
                    cx.edits.push(Edit::star(start, end, u.escaped));
                    self.state = State::Track;
                }
                (State::Idle, Class::Digit) => {
                    self.left_glued = self.prev == Class::Alpha;
                    self.push_digit(&mut cx, start, end, &u);
                    self.state = State::InGroup;
                }
                (State::Idle, c) => {
                    self.prev = c;
                    self.track_at = None;
                }
                (State::InGroup, Class::Digit) => self.push_digit(&mut cx, start, end, &u),
                (State::InGroup, c) => {
                    // What the group may be part of depends on what surrounds it (the hash rule,
                    // track data): wait for more input when that is not known yet.
                    let Some(glue) = self.glue(&cx, rel, c == Class::Alpha, last) else {
                        break;
                    };
                    let hits = self.close_group(&mut cx, glue);
                    // Track data after a card number that ends here is masked whole.
                    self.track_at = (glue.track && hits > 0).then_some(end);
                    if c == Class::Sep {
                        self.state = State::AfterSep;
                    } else {
                        self.end_chain(&mut cx);
                    }
                    self.prev = c;
                }
                (State::AfterSep, Class::Digit) => {
                    self.left_glued = false;
                    self.push_digit(&mut cx, start, end, &u);
                    self.state = State::InGroup;
                }
                (State::AfterSep, c) => {
                    self.end_chain(&mut cx);
                    self.prev = c;
                }
            }
            self.pos = end;
        }
        if last {
            if self.state == State::InGroup {
                let rel = self.pos.saturating_sub(base).min(buf.len());
                let glue = self.glue(&cx, rel, false, true).unwrap_or(Glue::FREE);
                self.close_group(&mut cx, glue);
            }
            self.end_chain(&mut cx);
            self.track_at = None;
        }
    }

    /// What the group that ends at `buf[ge]` allows, given the character there (`right_alpha`: an
    /// ASCII letter). `None`: the input ends too soon to tell (never with `last`).
    fn glue(&mut self, cx: &Cx<'_, '_>, ge: usize, right_alpha: bool, last: bool) -> Option<Glue> {
        if self.oversize {
            return Some(Glue::FREE);
        }
        let buf = cx.buf;
        let Some(gs) = self
            .group_start_pos
            .checked_sub(cx.base)
            .filter(|&gs| gs <= ge && ge <= buf.len())
        else {
            return Some(Glue::FREE);
        };
        let track = track_follows(buf, ge, last)?;
        let right_glued = right_alpha && !track;
        if !self.left_glued && !right_glued {
            return Some(Glue {
                track,
                ..Glue::FREE
            });
        }
        let hashed = !self.no_hash && self.hashed(cx, gs, ge, right_glued, last)?;
        Some(Glue {
            left_ok: !(self.left_glued && hashed),
            right_ok: !(right_glued && hashed),
            track,
        })
    }

    /// The hash rule for the group `buf[gs..ge]` ([`in_hex_token`], [`in_iban`]); in
    /// [`Self::feed_whole`], as the group's word reads with the bytes of `starred` masked.
    /// `None`: the input ends too soon to tell.
    fn hashed(
        &mut self,
        cx: &Cx<'_, '_>,
        gs: usize,
        ge: usize,
        right_glued: bool,
        last: bool,
    ) -> Option<bool> {
        let buf = cx.buf;
        let mut hashed =
            in_hex_token(buf, gs, ge, right_glued, last)? || in_iban(buf, gs, ge, last)?;
        if !hashed || !self.whole {
            return Some(hashed);
        }
        // The word around the group, which holds all the rule reads.
        let word = |b: &&u8| b.is_ascii_alphanumeric() || **b == b'-';
        let ws = gs
            - buf[..gs]
                .iter()
                .rev()
                .take(HEX_LOOK)
                .take_while(word)
                .count();
        let we = ge + buf[ge..].iter().take(HEX_LOOK).take_while(word).count();
        let (s, e) = (cx.base + ws, cx.base + we);
        let k = self.starred.partition_point(|r| r.1 <= s);
        let stars = &self.starred[k..];
        let stars = &stars[..stars.partition_point(|r| r.0 < e)];
        if !stars.is_empty() {
            // Masked, those bytes are `*` or part of a `pan_ref` token: a UUID or an IBAN that
            // loses some is none, a hex run is measured up to them. Stars only take protection
            // away, so each round masks all that the one before did.
            let mut seen = buf[ws..we].to_vec();
            for &(a, b) in stars {
                seen[a.max(s) - s..b.min(e) - s].fill(b'*');
            }
            let hex = |b: &&u8| b.is_ascii_hexdigit();
            let l = seen[..gs - ws].iter().rev().take_while(hex).count();
            let r = if right_glued {
                seen[ge - ws..].iter().take_while(hex).count()
            } else {
                0
            };
            hashed = buf[gs..ge].iter().all(u8::is_ascii_digit) && l + (ge - gs) + r >= HEX_TOKEN;
        }
        // Groups close in order: a word starts where the last one did or later.
        match self.hash_words.last_mut() {
            _ if !hashed => {}
            Some(w) if w.0 <= s && s <= w.1 => w.1 = w.1.max(e),
            _ => self.hash_words.push((s, e)),
        }
        Some(hashed)
    }

    /// Fast path for the common case: a run of ASCII digit groups, starting at `t`, that certainly
    /// ends inside `buf` and holds no card-number window. Returns its end, having noted what the
    /// extra detectors need; `None` sends the run through the full scanner.
    fn skip_plain_chain(&mut self, cx: &Cx<'_, '_>, t: usize, last: bool) -> Option<usize> {
        const MAX_GROUPS: usize = 48;
        let buf = cx.buf;
        let n = buf.len();
        let is_sep = |b: u8| matches!(b, b' ' | b'-' | b'.');
        let mut groups = std::mem::take(&mut self.plain_groups);
        groups.clear();
        let mut total = 0;
        let mut i = t;
        loop {
            let gs = i;
            while i < n && buf[i].is_ascii_digit() {
                i += 1;
            }
            if groups.len() == MAX_GROUPS {
                self.plain_groups = groups;
                return None;
            }
            groups.push((gs, i));
            total += i - gs;
            if i + 1 < n && is_sep(buf[i]) && buf[i + 1].is_ascii_digit() {
                i += 1;
                continue;
            }
            break;
        }
        // What follows must end the run for certain: no escape, no non-ASCII digit or separator,
        // no separator followed by one.
        let ends = |b: u8| b.is_ascii() && b != b'\\' && !b.is_ascii_digit();
        let certain = match (buf.get(i), buf.get(i + 1)) {
            (None, _) => last,
            (Some(&b), _) if ends(b) && !is_sep(b) => true,
            (Some(&b), Some(&c)) => is_sep(b) && ends(c),
            (Some(&b), None) => is_sep(b) && last,
        };
        let found = certain && !(total >= MIN_PAN && self.plain_chain_has_window(buf, &groups));
        if found && cx.m.extra_wants_windows() {
            for (k, &(gs, ge)) in groups.iter().enumerate() {
                self.note_extra_window(cx, cx.base + gs, cx.base + ge, ge - gs, k == 0);
            }
        }
        self.plain_groups = groups;
        found.then_some(i)
    }

    /// True when some window of the plain ASCII chain `groups` could be a card number.
    /// Letters next to the chain do not rule a window out (only the hash rule does, which the full
    /// scanner applies): the chain is read as if it touched none.
    fn plain_chain_has_window(&self, buf: &[u8], groups: &[(usize, usize)]) -> bool {
        let mut values = [0u8; MAX_PAN];
        for a in 0..groups.len() {
            let mut len = 0;
            for &(gs, ge) in &groups[a..] {
                if len + (ge - gs) > MAX_PAN {
                    break;
                }
                for (v, d) in values[len..].iter_mut().zip(&buf[gs..ge]) {
                    *v = d - b'0';
                }
                len += ge - gs;
                if len >= MIN_PAN
                    && luhn_values(values[..len].iter().copied())
                    && brand_of_values(&values[..len]).is_some()
                {
                    return true;
                }
            }
        }
        false
    }

    fn push_digit(&mut self, cx: &mut Cx<'_, '_>, start: usize, end: usize, u: &Unit) {
        self.group_len += 1;
        if self.group_len == 1 {
            self.group_start_pos = start;
        }
        if self.oversize {
            return;
        }
        if self.group_len > MAX_PAN {
            // Longer than any card number: a barrier. Drop its digits and settle what came before.
            let keep = self.tail.len().saturating_sub(self.group_len - 1);
            self.tail.truncate(keep);
            self.oversize = true;
            let all = self.tail.len();
            self.finalize(cx, all);
            return;
        }
        self.tail.push(DigitRec {
            start,
            end,
            value: u.value,
            escaped: u.escaped,
            group_start: self.group_len == 1,
            // Settled when the group closes (see `close_group`).
            left_ok: true,
            group_end: false,
            right_ok: false,
            masked: false,
            covered: false,
            token: None,
        });
    }

    /// Closes the open group; returns how many card numbers end at its last digit.
    fn close_group(&mut self, cx: &mut Cx<'_, '_>, glue: Glue) -> usize {
        let len = std::mem::take(&mut self.group_len);
        if cx.m.extra_wants_windows() {
            self.note_extra_window(
                cx,
                self.group_start_pos,
                self.pos,
                len,
                self.tail.len() == len,
            );
        }
        if self.oversize {
            self.oversize = false;
            return 0;
        }
        if let Some(d) = self
            .tail
            .len()
            .checked_sub(len)
            .and_then(|k| self.tail.get_mut(k))
            .filter(|d| d.group_start)
        {
            d.left_ok = glue.left_ok;
        }
        if let Some(d) = self.tail.last_mut() {
            d.group_end = true;
            d.right_ok = glue.right_ok;
        }
        self.settle(cx)
    }

    /// `first`: the group starts its run (a card verification code stands alone; the later groups
    /// of a grouped card number are not worth the keyword check).
    fn note_extra_window(
        &mut self,
        cx: &Cx<'_, '_>,
        start: usize,
        end: usize,
        len: usize,
        first: bool,
    ) {
        let rel = |p: usize| p.saturating_sub(cx.base).min(cx.buf.len());
        // The byte `k` places before the group, if inside the buffer.
        let before = |k: usize| {
            rel(start)
                .checked_sub(k)
                .and_then(|i| cx.buf.get(i))
                .copied()
        };
        let free = |b: Option<u8>| !b.is_some_and(|b| b.is_ascii_alphanumeric());
        if (12..=19).contains(&len) {
            // Track data: the window starts on the number (track 2) or on its `B` (track 1), and
            // only where the number is not glued to a letter or an escape before it.
            match cx.buf.get(rel(end)) {
                Some(b'=') if free(before(1)) => self.extra_windows.push((start, end + 100, true)),
                Some(b'^') if before(1) == Some(b'B') && free(before(2)) => {
                    self.extra_windows.push((start - 1, end + 100, true))
                }
                _ => {}
            }
        } else if first && (3..=4).contains(&len) {
            let from = start.saturating_sub(24).max(cx.base);
            if super::extra::mentions_cvv(&cx.buf[rel(from)..rel(start)]) {
                self.extra_windows.push((from, end, false));
            }
        }
    }

    fn end_chain(&mut self, cx: &mut Cx<'_, '_>) {
        let all = self.tail.len();
        self.finalize(cx, all);
        self.state = State::Idle;
        self.group_len = 0;
        self.oversize = false;
    }

    /// Masks every card-number window among the open digits, then releases old groups. Returns
    /// how many card numbers of the input end at the last digit.
    fn settle(&mut self, cx: &mut Cx<'_, '_>) -> usize {
        let mut hits = 0;
        if self.tail.len() >= MIN_PAN {
            // Windows of the input ending at the group that just closed: primary hits, each shown as
            // configured (overlapping hits keep only what every one of them keeps).
            let mut primary = [(0usize, 0usize); MAX_PAN];
            let found = self.primary_windows(&mut primary);
            hits = found;
            for &(a, b) in &primary[..found] {
                self.hit(cx, a, b, true);
            }
            if found > 0 || self.tail.iter().any(|d| d.masked) {
                // Windows that only exist next to masked digits (kept digits of a hit joined with
                // their neighbours): not cards of the input, but the output must not show one.
                loop {
                    self.effective_groups();
                    let next = (0..self.eff.len())
                        .rev()
                        .find_map(|j| self.find_window_ending_at(j));
                    match next {
                        Some((a, b)) => self.hit(cx, a, b, false),
                        None => break,
                    }
                }
            }
        }
        // Release groups that no future window can reach.
        while let Some(first_end) = self.tail.iter().position(|d| d.group_end) {
            let mut cut = first_end + 1;
            if self.tail.len() - cut < HOLD_DIGITS {
                break;
            }
            let token_end = self.tail[..cut]
                .iter()
                .filter_map(|d| d.token.as_ref().map(|t| t.0))
                .max();
            if let Some(te) = token_end {
                while cut < self.tail.len() && self.tail[cut].start < te {
                    cut += 1;
                }
            }
            self.finalize(cx, cut);
        }
        hits
    }

    /// Card-number windows of the input (whole original groups, masking ignored) that end at the
    /// last digit, longest first. Returns how many were written to `out`.
    fn primary_windows(&self, out: &mut [(usize, usize); MAX_PAN]) -> usize {
        let n = self.tail.len();
        let Some(last) = self.tail.last() else {
            return 0;
        };
        if !last.group_end || !last.right_ok {
            return 0;
        }
        let mut found = 0;
        let mut values = [0u8; MAX_PAN];
        let mut s = n;
        while s > 0 {
            // Start of the group before `s`.
            s -= 1;
            while s > 0 && !self.tail[s].group_start {
                s -= 1;
            }
            let len = n - s;
            if len > MAX_PAN {
                break;
            }
            if len >= MIN_PAN && self.tail[s].left_ok {
                for (v, d) in values.iter_mut().zip(&self.tail[s..]) {
                    *v = d.value;
                }
                let vals = &values[..len];
                if luhn_values(vals.iter().copied())
                    && brand_of_values(vals).is_some()
                    && found < MAX_PAN
                {
                    out[found] = (s, n - 1);
                    found += 1;
                }
            }
        }
        out[..found].reverse();
        found
    }

    fn effective_groups(&mut self) {
        self.eff.clear();
        let t = &self.tail;
        let n = t.len();
        let mut k = 0;
        while k < n {
            if t[k].masked {
                k += 1;
                continue;
            }
            let first = k;
            let left_ok = if t[k].group_start { t[k].left_ok } else { true };
            let linked = t[k].group_start && k > 0 && !t[k - 1].masked && t[k - 1].group_end;
            while k + 1 < n && !t[k].group_end && !t[k + 1].masked {
                k += 1;
            }
            let right_ok = if t[k].group_end {
                t[k].right_ok
            } else {
                // Followed by a masked digit (now `*`), or the group is still open.
                k + 1 < n
            };
            self.eff.push(Eff {
                first,
                last: k,
                left_ok,
                right_ok,
                linked,
            });
            k += 1;
        }
    }

    /// The longest card-number window ending at effective group `j`, as tail indices.
    fn find_window_ending_at(&self, j: usize) -> Option<(usize, usize)> {
        let ej = self.eff.get(j)?;
        if !ej.right_ok {
            return None;
        }
        let mut values = [0u8; MAX_PAN];
        let mut found = None;
        let mut count = 0usize;
        for i in (0..=j).rev() {
            let ei = self.eff[i];
            count += ei.last - ei.first + 1;
            if count > MAX_PAN {
                break;
            }
            if count >= MIN_PAN && ei.left_ok {
                let digits = &self.tail[ei.first..=ej.last];
                for (v, d) in values.iter_mut().zip(digits) {
                    *v = d.value;
                }
                let vals = &values[..digits.len()];
                if luhn_values(vals.iter().copied()) && brand_of_values(vals).is_some() {
                    found = Some((ei.first, ej.last));
                }
            }
            if !ei.linked {
                break;
            }
        }
        found
    }

    /// Masks the window `a..=b` of the tail: as displayed for a primary hit, whole otherwise.
    fn hit(&mut self, cx: &mut Cx<'_, '_>, a: usize, b: usize, primary: bool) {
        let values: Vec<u8> = self.tail[a..=b].iter().map(|d| d.value).collect();
        let brand = brand_of_values(&values).unwrap_or("unknown");
        let n = values.len();
        // One card is counted once: a window overlapping an earlier hit, or uncovered by masking,
        // is masked but not counted again.
        let counted = primary && self.tail[a..=b].iter().all(|d| !d.masked && !d.covered);
        let display = if primary {
            cx.m.display
        } else {
            Display::LastFour
        };
        let (keep_head, keep_tail) = match (display, primary) {
            (_, false) => (0, 0),
            (Display::LastFour, _) => (0, 4),
            (Display::BinLastFour, _) => (6, 4),
            (Display::PanRef, _) => (0, 0),
        };
        for (k, d) in self.tail[a..=b].iter_mut().enumerate() {
            if k >= keep_head && k + keep_tail < n {
                d.masked = true;
            }
        }
        let mut token_text = None;
        if display == Display::PanRef && primary {
            let ascii: Vec<u8> = values.iter().map(|v| b'0' + v).collect();
            let tok = cx.m.pan_ref_token(&ascii);
            let end = self.tail[b].end;
            // Overlapping an earlier token: extend that one instead of starting a second.
            let mut holder = a;
            while self.tail[holder].covered && holder > 0 {
                holder -= 1;
            }
            for d in &mut self.tail[holder + 1..=b] {
                d.covered = true;
                d.token = None;
            }
            match &mut self.tail[holder].token {
                Some((e, _)) => *e = (*e).max(end),
                slot => *slot = Some((end, tok.clone().into_bytes().into_boxed_slice())),
            }
            token_text = Some(tok);
        }
        if !counted {
            return;
        }
        cx.report.add(brand);
        if cx.report.detail {
            let masked = match token_text {
                Some(t) => t,
                None => self.render(cx, a, b),
            };
            cx.report.push_finding(Finding {
                kind: brand.to_string(),
                offset: self.tail[a].start,
                masked,
            });
        }
    }

    /// The masked form of `a..=b` for a report: ASCII digits, `*`, separators as decoded.
    fn render(&self, cx: &Cx<'_, '_>, a: usize, b: usize) -> String {
        let mut s = String::new();
        let (Some(lo), Some(hi)) = (
            self.tail[a].start.checked_sub(cx.base),
            self.tail[b].end.checked_sub(cx.base),
        ) else {
            return s;
        };
        let mut digits = self.tail[a..=b].iter();
        let mut i = lo;
        while i < hi && i < cx.buf.len() {
            match decode(cx.buf, i) {
                Decoded::Unit(u) => {
                    if u.class == Class::Digit {
                        match digits.next() {
                            Some(d) if !d.masked => s.push(char::from(b'0' + d.value)),
                            _ => s.push('*'),
                        }
                    } else {
                        s.push(u.ch);
                    }
                    i += u.len;
                }
                Decoded::Incomplete => break,
            }
        }
        s
    }

    /// Emits the edits of the first `cut` tail digits and forgets them.
    fn finalize(&mut self, cx: &mut Cx<'_, '_>, cut: usize) {
        let cut = cut.min(self.tail.len());
        for d in self.tail.drain(..cut) {
            if let Some((end, tok)) = d.token {
                cx.edits.push(Edit {
                    start: d.start,
                    end,
                    rep: super::edit::Rep::Owned(tok),
                });
            } else if d.masked && !d.covered {
                cx.edits.push(Edit::star(d.start, d.end, d.escaped));
            }
        }
    }
}

struct Cx<'a, 'b> {
    m: &'a Masker,
    buf: &'a [u8],
    base: usize,
    edits: &'b mut Vec<Edit>,
    report: &'b mut MaskReport,
}

/// Sorted ranges with overlapping and touching ones joined.
fn coalesce(mut ranges: Vec<(usize, usize)>) -> Vec<(usize, usize)> {
    ranges.sort_unstable();
    let mut out: Vec<(usize, usize)> = Vec::with_capacity(ranges.len());
    for (s, e) in ranges {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// Index of the first byte at or after `from` where a digit may start, or `buf.len()`.
pub(crate) fn find_trigger(buf: &[u8], from: usize) -> usize {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let mut i = from;
    while i + 8 <= buf.len() {
        let Ok(chunk) = <[u8; 8]>::try_from(&buf[i..i + 8]) else {
            break;
        };
        let x = u64::from_le_bytes(chunk);
        // ASCII digits: bytes b with 0x30 <= b <= 0x39, for bytes below 0x80.
        let low7 = x & !HI;
        let ge_30 = low7.wrapping_add(LO * (0x80 - 0x30));
        let gt_39 = low7.wrapping_add(LO * (0x80 - 0x3A));
        let digit = ge_30 & !gt_39 & !x & HI;
        let bs = x ^ (LO * u64::from(b'\\'));
        let backslash = bs.wrapping_sub(LO) & !bs & HI;
        if digit | backslash | (x & HI) == 0 {
            i += 8;
            continue;
        }
        for (k, &b) in chunk.iter().enumerate() {
            if TRIGGER[usize::from(b)] {
                return i + k;
            }
        }
        i += 8;
    }
    while i < buf.len() {
        if TRIGGER[usize::from(buf[i])] {
            return i;
        }
        i += 1;
    }
    buf.len()
}

/// Whether track data follows a group ending at `buf[ge]`: `D`/`d` and seven digits whose third and
/// fourth are a month (EMV track 2 equivalent data), or `=` and seven digits (magnetic stripe).
/// `None`: the input ends too soon to tell.
fn track_follows(buf: &[u8], ge: usize, last: bool) -> Option<bool> {
    let Some(&sep) = buf.get(ge) else {
        return Some(false);
    };
    if !matches!(sep, b'D' | b'd' | b'=') {
        return Some(false);
    }
    let after = buf.get(ge + 1..).unwrap_or_default();
    let digits = after
        .iter()
        .take(7)
        .take_while(|b| b.is_ascii_digit())
        .count();
    if digits < 7 {
        return if digits == after.len() && !last {
            None
        } else {
            Some(false)
        };
    }
    let month = (after[2] - b'0') * 10 + (after[3] - b'0');
    Some(sep == b'=' || (1..=12).contains(&month))
}

/// The hash rule: whether the group `buf[gs..ge]` is ASCII digits inside a run of at least
/// [`HEX_TOKEN`] hex digits (reaching past `ge` only when `right_glued`), or inside a UUID.
/// `None`: the input ends too soon to tell.
fn in_hex_token(buf: &[u8], gs: usize, ge: usize, right_glued: bool, last: bool) -> Option<bool> {
    if !buf[gs..ge].iter().all(u8::is_ascii_digit) {
        return Some(false);
    }
    let hex = |b: &&u8| b.is_ascii_hexdigit();
    let l = buf[..gs]
        .iter()
        .rev()
        .take(HEX_LOOK)
        .take_while(hex)
        .count();
    let mut r = 0;
    if right_glued {
        r = buf[ge..].iter().take(HEX_LOOK).take_while(hex).count();
        if ge + r == buf.len() && !last && l + (ge - gs) + r < HEX_TOKEN {
            return None;
        }
    }
    let seg = l + (ge - gs) + r;
    if seg >= HEX_TOKEN {
        return Some(true);
    }
    if !matches!(seg, 4 | 8 | 12) {
        return Some(false);
    }
    in_uuid(buf, gs - l, ge + r, last)
}

/// IBAN lengths by country (ISO 13616 registry): country code and length, four bytes each.
const IBAN_LENGTHS: &[&str] = &[
    "AD24AE23AL28AT20AZ28BA20BE16BG22BH22BR29BY28CH21CR22CY28CZ24DE22DK18DO28EE20EG29ES24FI18",
    "FO18FR27GB22GE22GI23GL18GR27GT28HR21HU28IE22IL23IQ23IS26IT27JO30KW30KZ20LB28LC32LI21LT20",
    "LU20LV21LY25MC27MD24ME22MK19MR27MT31MU30NL18NO15PK24PL28PS29PT25QA29RO24RS22SA24SC31SD18",
    "SE24SI19SK24SM27ST25SV28TL23TN24TR26UA29VA22VG24XK20",
];

/// Whether the group `buf[gs..ge]` lies in an IBAN in its electronic form: a word of uppercase
/// ASCII letters and digits that starts with a country code and two digits and has that country's
/// IBAN length. (The check digits are not verified: upstreams and test data print IBANs that fail
/// them, and the shape alone is already far from a card number glued to a word.) `None`: the input
/// ends too soon to tell.
fn in_iban(buf: &[u8], gs: usize, ge: usize, last: bool) -> Option<bool> {
    let word_char = |b: &&u8| b.is_ascii_uppercase() || b.is_ascii_digit();
    let l = buf[..gs]
        .iter()
        .rev()
        .take(35)
        .take_while(word_char)
        .count();
    let r = buf[ge..].iter().take(35).take_while(word_char).count();
    let len = l + (ge - gs) + r;
    if ge + r == buf.len() && !last && len <= 34 {
        return None;
    }
    // Not glued to more letters (lowercase) or digits on either side.
    let word = &buf[gs - l..ge + r];
    let clear = |b: Option<&u8>| !b.is_some_and(u8::is_ascii_alphanumeric);
    if l < 4
        || !clear((gs - l).checked_sub(1).and_then(|i| buf.get(i)))
        || !clear(buf.get(ge + r))
        || !word[2..4].iter().all(u8::is_ascii_digit)
    {
        return Some(false);
    }
    let want = [
        word[0],
        word[1],
        b'0' + (len / 10) as u8,
        b'0' + (len % 10) as u8,
    ];
    Some(
        IBAN_LENGTHS
            .iter()
            .any(|row| row.as_bytes().chunks(4).any(|e| e == want)),
    )
}

/// Whether the hex segment `buf[s..e]` is one of the five of a UUID (`8-4-4-4-12`).
fn in_uuid(buf: &[u8], s: usize, e: usize, last: bool) -> Option<bool> {
    let run = |b: &[u8]| {
        b.iter()
            .take(13)
            .take_while(|b| b.is_ascii_hexdigit())
            .count()
    };
    let mut lens = [0usize; 9];
    // Up to four segments before, in reverse order.
    let mut before = 0;
    let mut p = s;
    while before < 4 && p >= 2 && buf[p - 1] == b'-' && buf[p - 2].is_ascii_hexdigit() {
        let n = buf[..p - 1]
            .iter()
            .rev()
            .take(13)
            .take_while(|b| b.is_ascii_hexdigit())
            .count();
        before += 1;
        lens[4 - before] = n;
        p -= 1 + n;
    }
    lens[4] = e - s;
    let mut after = 0;
    let mut p = e;
    while after < 4 {
        match (buf.get(p), buf.get(p + 1)) {
            (Some(b'-'), Some(h)) if h.is_ascii_hexdigit() => {}
            (None, _) | (Some(b'-'), None) if !last => return None,
            _ => break,
        }
        let n = run(&buf[p + 1..]);
        if p + 1 + n == buf.len() && n < 13 && !last {
            return None;
        }
        after += 1;
        lens[4 + after] = n;
        p += 1 + n;
    }
    const UUID: [usize; 5] = [8, 4, 4, 4, 12];
    Some((4 - before..=4).any(|a| a + 5 <= 5 + after && lens[a..a + 5] == UUID))
}

#[allow(dead_code)]
pub(crate) fn is_ascii_alpha_class(b: u8) -> bool {
    BYTE_CLASS[usize::from(b)] == 3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_the_hash_rule_a_hash_hides_nothing() {
        let m = Masker::default();
        let text = b"sha1 da39a3ee4111111111111111ef95601890afd807";
        let mut edits = Vec::new();
        let mut s = TextScan::new(0);
        s.feed_whole(&m, text, 0, 0, true, &mut edits, &mut MaskReport::default());
        assert!(edits.is_empty());
        // The last round of `feed_whole`.
        s.no_hash = true;
        s.reset(0);
        s.feed(&m, text, 0, true, &mut edits, &mut MaskReport::default());
        assert_eq!(edits.len(), 12);
    }

    #[test]
    fn trigger_search_matches_scalar() {
        let samples: [&[u8]; 6] = [
            b"hello world, nothing here at all!!",
            b"abcdefghijklmnop7",
            b"abcdefgh\\ijk",
            "abcdefghij\u{00e9}klm".as_bytes(),
            b"/:;<=>?@ `{|}~[]^_",
            b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa0",
        ];
        for s in samples {
            let scalar = s
                .iter()
                .position(|&b| TRIGGER[usize::from(b)])
                .unwrap_or(s.len());
            assert_eq!(
                find_trigger(s, 0),
                scalar,
                "{:?}",
                String::from_utf8_lossy(s)
            );
        }
        for b in 0u8..=255 {
            let mut s = vec![b'a'; 16];
            s[9] = b;
            let want = if TRIGGER[usize::from(b)] { 9 } else { 16 };
            assert_eq!(find_trigger(&s, 0), want, "{b}");
        }
    }
}
