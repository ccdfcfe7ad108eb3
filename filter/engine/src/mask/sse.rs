//! `text/event-stream` masking, event by event as the stream arrives.
//!
//! Bytes are held only until the event they belong to is complete (a blank line), so each event's
//! `data:` payload is masked as JSON when it is JSON and as text otherwise, and a card number split
//! across chunks is seen whole. An event that grows past `maxEventBytes` (or a stream that never
//! ends an event) is masked as text from then on, holding back only the open digit groups that
//! could still be part of a card number: memory stays bounded on an endless stream.
//!
//! A number can also be split over two events, when an upstream streams text in pieces (each
//! event a JSON message with the next piece at the same place, or plain `data:` text): an event
//! whose last string ends in digits is held, masked, until the next event, and the digits on both
//! sides of the boundary are read together.

use super::edit::{apply, normalize, Edit, Rep};
use super::json::{string_values, unescape, JsonMasker, PosMap};
use super::scan::TextScan;
use super::unicode::{decode, Class, Decoded};
use super::{MaskReport, Masker};

/// Masks a stream (an SSE body) chunk by chunk.
#[derive(Debug, Default)]
pub struct StreamMasker {
    /// Unreleased bytes; `buf[0]` is at absolute position `base`.
    buf: Vec<u8>,
    base: usize,
    /// Where the search for the end of the current event resumes (absolute).
    searched: usize,
    /// Start of the current line (absolute).
    line_start: usize,
    /// The previous byte was a CR: a following LF belongs to the same line end.
    after_cr: bool,
    /// Set while the current event is masked as a text stream (it outgrew the limit).
    text: Option<TextScan>,
    /// Edits decided in text mode for bytes not released yet.
    text_edits: Vec<Edit>,
    /// The last complete event, masked, when some string of it ends in digits that the next event
    /// may continue.
    held_event: Option<(Vec<u8>, Vec<Tail>)>,
    /// Every event is a whole message that no later event continues (the notifications of a
    /// `subscriptions/listen` stream): none is held for the next, which may come much later.
    discrete: bool,
}

/// Where an event's last string sits: its path (hash), content range in the event, and whether it
/// is a JSON string (escaped) or plain `data:` text.
#[derive(Debug, Clone, Copy)]
struct Tail {
    path: u64,
    start: usize,
    end: usize,
    json: bool,
}

impl StreamMasker {
    /// A masker for a stream of discrete messages: each complete event is released at once.
    pub fn discrete() -> Self {
        StreamMasker {
            discrete: true,
            ..StreamMasker::default()
        }
    }

    /// Masks `chunk` and returns what can be released now.
    pub fn push(&mut self, masker: &Masker, chunk: &[u8], report: &mut MaskReport) -> Vec<u8> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::with_capacity(self.buf.len());
        self.run(masker, false, &mut out, report);
        out
    }

    /// Releases whatever is held at the end of the stream, masked.
    pub fn finish(&mut self, masker: &Masker, report: &mut MaskReport) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.buf.len());
        self.run(masker, true, &mut out, report);
        out
    }

    /// Bytes currently held back.
    pub fn held(&self) -> usize {
        self.buf.len() + self.held_event.as_ref().map_or(0, |h| h.0.len())
    }

    /// Emits a complete masked event, joined with the held one, holding it in turn if its text
    /// ends in digits.
    fn emit_event(
        &mut self,
        m: &Masker,
        mut ev: Vec<u8>,
        out: &mut Vec<u8>,
        report: &mut MaskReport,
    ) {
        if let Some((mut prev, tails)) = self.held_event.take() {
            // Later strings first: edits keep earlier positions valid.
            for tail in tails.into_iter().rev() {
                link(m, &mut prev, tail, &mut ev, report);
            }
            out.extend_from_slice(&prev);
        }
        let tails = if self.discrete {
            Vec::new()
        } else {
            digit_tails(&ev)
        };
        if tails.is_empty() {
            out.extend_from_slice(&ev);
        } else {
            self.held_event = Some((ev, tails));
        }
    }

    fn flush_held(&mut self, out: &mut Vec<u8>) {
        if let Some((prev, _)) = self.held_event.take() {
            out.extend_from_slice(&prev);
        }
    }

    fn run(&mut self, m: &Masker, last: bool, out: &mut Vec<u8>, report: &mut MaskReport) {
        loop {
            let end = self.find_event_end();
            if let Some(mut scan) = self.text.take() {
                // Text mode until this event ends.
                let limit = end.unwrap_or(self.base + self.buf.len());
                let done = end.is_some() || last;
                let mut edits = std::mem::take(&mut self.text_edits);
                scan.feed(
                    m,
                    &self.buf[..limit - self.base],
                    self.base,
                    done,
                    &mut edits,
                    report,
                );
                let release = if done {
                    limit
                } else {
                    // Hold the last word back as well: the extra detectors (track data) read a
                    // whole word, and masking part of a digit run could expose the rest.
                    hold_last_word(&self.buf, self.base, scan.stable_until().min(limit))
                };
                self.flush_held(out);
                let windows = std::mem::take(&mut scan.extra_windows);
                m.extra_text_edits(
                    &self.buf[..release - self.base],
                    self.base,
                    &windows,
                    &mut edits,
                    report,
                );
                scan.extra_windows = windows.into_iter().filter(|w| w.1 > release).collect();
                let (now, later): (Vec<Edit>, Vec<Edit>) =
                    edits.into_iter().partition(|e| e.end <= release);
                self.text_edits = later;
                self.release(release, &now, out);
                if done {
                    if end.is_none() {
                        return;
                    }
                    continue;
                }
                self.text = Some(scan);
                return;
            }
            match end {
                Some(end) => {
                    let edits = mask_event(m, &self.buf[..end - self.base], self.base, report);
                    let mut ev = Vec::new();
                    self.release(end, &edits, &mut ev);
                    self.emit_event(m, ev, out, report);
                }
                None if last => {
                    let end = self.base + self.buf.len();
                    let edits = mask_event(m, &self.buf, self.base, report);
                    let mut ev = Vec::new();
                    self.release(end, &edits, &mut ev);
                    self.emit_event(m, ev, out, report);
                    self.flush_held(out);
                    return;
                }
                None if self.buf.len() > m.max_event_bytes() => {
                    self.flush_held(out);
                    self.text = Some(TextScan::new(self.base));
                }
                None => return,
            }
        }
    }

    /// Emits `buf` up to absolute `upto` with `edits` applied and forgets it.
    fn release(&mut self, upto: usize, edits: &[Edit], out: &mut Vec<u8>) {
        let n = upto.saturating_sub(self.base).min(self.buf.len());
        let mut edits: Vec<Edit> = edits.iter().filter(|e| e.end <= upto).cloned().collect();
        normalize(&mut edits);
        apply(&self.buf[..n], self.base, &edits, out);
        self.buf.drain(..n);
        self.base += n;
        self.searched = self.searched.max(self.base);
        self.line_start = self.line_start.max(self.base);
    }

    /// Absolute position just after the blank line that ends the current event, if it arrived.
    fn find_event_end(&mut self) -> Option<usize> {
        let start = self.searched.max(self.base) - self.base;
        for (k, &b) in self.buf[start..].iter().enumerate() {
            let at = self.base + start + k;
            match b {
                b'\n' if self.after_cr => {
                    self.after_cr = false;
                    self.line_start = at + 1;
                }
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    let blank = at == self.line_start;
                    self.line_start = at + 1;
                    if blank {
                        self.searched = at + 1;
                        return Some(at + 1);
                    }
                }
                _ => self.after_cr = false,
            }
        }
        self.searched = self.base + self.buf.len();
        None
    }
}

/// Edits (absolute positions) masking one event `ev` that starts at `base`.
fn mask_event(m: &Masker, ev: &[u8], base: usize, report: &mut MaskReport) -> Vec<Edit> {
    let mut data: Vec<(usize, usize)> = Vec::new();
    let mut others: Vec<(usize, usize)> = Vec::new();
    let mut i = 0;
    while i < ev.len() {
        let len = ev[i..]
            .iter()
            .position(|&b| b == b'\n' || b == b'\r')
            .unwrap_or(ev.len() - i);
        let line = &ev[i..i + len];
        if let Some(rest) = line.strip_prefix(b"data:") {
            let skip = 5 + usize::from(rest.first() == Some(&b' '));
            data.push((i + skip, i + len));
        } else if !line.is_empty() {
            others.push((i, i + len));
        }
        i += len + 1;
    }
    let mut edits = Vec::new();
    if !data.is_empty() {
        // The payload is the data lines joined by LF; JSON cannot span a line break inside a
        // token, so every edit maps back inside one line.
        let mut payload = Vec::new();
        let mut starts = Vec::with_capacity(data.len());
        for (k, &(s, e)) in data.iter().enumerate() {
            if k > 0 {
                payload.push(b'\n');
            }
            starts.push((payload.len(), s));
            payload.extend_from_slice(&ev[s..e]);
        }
        let to_ev = |p: usize| {
            let idx = starts.partition_point(|&(ps, _)| ps <= p).saturating_sub(1);
            starts.get(idx).map_or(p, |&(ps, s)| s + (p - ps))
        };
        let mut json_edits = Vec::new();
        let mut sub = report.empty_like();
        let is_json = skip_ws_starts_json(&payload)
            && JsonMasker::new(m)
                .edits(&payload, 0, &mut json_edits, &mut sub)
                .is_ok();
        if is_json {
            for f in &mut sub.findings {
                f.offset = base + to_ev(f.offset);
            }
            report.merge(sub);
            edits.extend(json_edits.into_iter().map(|mut e| {
                e.start = base + to_ev(e.start);
                e.end = base + to_ev(e.end);
                e
            }));
        } else {
            others = vec![(0, ev.len())];
        }
    }
    let mut scan = TextScan::new(base);
    for (s, e) in others {
        scan.feed_whole(m, &ev[..e], base, base + s, true, &mut edits, report);
    }
    normalize(&mut edits);
    edits
}

fn skip_ws_starts_json(p: &[u8]) -> bool {
    matches!(
        p.iter().find(|b| !b.is_ascii_whitespace()),
        Some(b'{' | b'[')
    )
}

/// The strings of an event's payload: (path hash, content start, content end, JSON?). A single
/// JSON `data:` line gives its string values; plain text data gives each data line (path 0).
fn payload_strings(ev: &[u8]) -> Vec<(u64, usize, usize, bool)> {
    let mut data = Vec::new();
    let mut i = 0;
    while i < ev.len() {
        let len = ev[i..]
            .iter()
            .position(|&b| b == b'\n' || b == b'\r')
            .unwrap_or(ev.len() - i);
        if let Some(rest) = ev[i..i + len].strip_prefix(b"data:") {
            let skip = 5 + usize::from(rest.first() == Some(&b' '));
            data.push((i + skip, i + len));
        }
        i += len + 1;
    }
    let json_like = |p: &[u8]| {
        matches!(
            p.iter().find(|b| !b.is_ascii_whitespace()),
            Some(b'{' | b'[')
        )
    };
    match data.as_slice() {
        [(s, e)] if json_like(&ev[*s..*e]) => string_values(&ev[*s..*e])
            .map(|v| {
                v.into_iter()
                    .map(|(h, a, b)| (h, s + a, s + b, true))
                    .collect()
            })
            .unwrap_or_default(),
        lines if lines.iter().any(|&(s, e)| json_like(&ev[s..e])) => Vec::new(),
        lines => lines.iter().map(|&(s, e)| (0, s, e, false)).collect(),
    }
}

/// Decoded text of a string content range, with its position map when unescaped.
fn decoded(ev: &[u8], start: usize, end: usize, json: bool) -> (Vec<u8>, Option<PosMap>) {
    let raw = &ev[start..end];
    if json && raw.contains(&b'\\') {
        let (d, map) = unescape(raw);
        (d, Some(map))
    } else {
        (raw.to_vec(), None)
    }
}

/// Start of the run of digits and separators that ends `text` (at a unit boundary), and the
/// start of the unit before it (its left context), when the run holds a digit.
fn trailing_run(text: &[u8]) -> Option<(usize, usize)> {
    let (mut i, mut run, mut before, mut digit) = (0, 0, 0, false);
    while i < text.len() {
        let Decoded::Unit(u) = decode(text, i) else {
            break;
        };
        match u.class {
            Class::Digit | Class::Sep => digit |= u.class == Class::Digit,
            _ => {
                before = i;
                run = i + u.len;
                digit = false;
            }
        }
        i += u.len;
    }
    (digit && run < text.len()).then_some((run, before.min(run)))
}

/// End of the run of digits and separators that starts `text`, and the end of the unit after
/// it (its right context), when the run holds a digit.
fn leading_run(text: &[u8]) -> Option<(usize, usize)> {
    let (mut i, mut digit) = (0, false);
    while i < text.len() {
        let Decoded::Unit(u) = decode(text, i) else {
            break;
        };
        match u.class {
            Class::Digit | Class::Sep => digit |= u.class == Class::Digit,
            _ => return digit.then_some((i, i + u.len)),
        }
        i += u.len;
    }
    digit.then_some((i, i))
}

/// JSON-RPC and MCP members that carry protocol values, never content: a digit at their end
/// (`"jsonrpc":"2.0"` ends every message) must not hold the event back until the next one.
const PROTOCOL_MEMBERS: [&[u8]; 7] = [
    b"jsonrpc",
    b"protocolVersion",
    b"id",
    b"method",
    b"progressToken",
    b"mimeType",
    b"type",
];

/// Whether the JSON string whose content starts at `start` is the value of a protocol member.
fn protocol_member(ev: &[u8], start: usize) -> bool {
    let before = ev[..start.saturating_sub(1)].trim_ascii_end();
    let Some(before) = before.strip_suffix(b":") else {
        return false;
    };
    let before = before.trim_ascii_end();
    PROTOCOL_MEMBERS.iter().any(|key| {
        before
            .strip_suffix(b"\"")
            .and_then(|b| b.strip_suffix(*key))
            .is_some_and(|b| b.ends_with(b"\""))
    })
}

/// The strings of a masked event that end in digits and could continue in the next event.
fn digit_tails(ev: &[u8]) -> Vec<Tail> {
    // Most strings end in a letter or punctuation: no need to decode those.
    let may_end_in_digits = |b: Option<&u8>| {
        b.is_some_and(|&b| {
            !b.is_ascii() || b.is_ascii_hexdigit() || matches!(b, b' ' | b'-' | b'.')
        })
    };
    payload_strings(ev)
        .into_iter()
        .filter(|&(_, start, end, _)| may_end_in_digits(ev[start..end].last()))
        // Protocol members are never content; content ending in digits (or digits and a
        // separator) is held until the next event, at most the server's keep-alive interval, so
        // that a number streamed in two pieces is still seen whole.
        .filter(|&(_, start, _, json)| !(json && protocol_member(ev, start)))
        .filter(|&(_, start, end, json)| trailing_run(&decoded(ev, start, end, json).0).is_some())
        .map(|(path, start, end, json)| Tail {
            path,
            start,
            end,
            json,
        })
        .collect()
}

/// Masks card numbers that run from the end of the held event's last string into the string at
/// the same place in the next event.
fn link(m: &Masker, prev: &mut Vec<u8>, tail: Tail, next: &mut Vec<u8>, report: &mut MaskReport) {
    let Some(&(_, hs, he, _)) = payload_strings(next)
        .iter()
        .find(|s| s.0 == tail.path && s.3 == tail.json)
    else {
        return;
    };
    let (ttext, tmap) = decoded(prev, tail.start, tail.end, tail.json);
    let (htext, hmap) = decoded(next, hs, he, tail.json);
    let (Some((_, ctx)), Some((_, hend))) = (trailing_run(&ttext), leading_run(&htext)) else {
        return;
    };
    // The hash rule and track data read the hex digits around a group: bring those along.
    let ctx = ctx
        - ttext[..ctx]
            .iter()
            .rev()
            .take(64)
            .take_while(|b| hex_or_dash(b))
            .count();
    let hend = hend
        + htext[hend..]
            .iter()
            .take(64)
            .take_while(|b| hex_or_dash(b))
            .count();
    let mut joined = ttext[ctx..].to_vec();
    let split = joined.len();
    joined.extend_from_slice(&htext[..hend]);
    let mut edits = Vec::new();
    TextScan::new(0).feed_whole(m, &joined, 0, 0, false, &mut edits, report);
    let (mut pe, mut ne) = (Vec::new(), Vec::new());
    let (mut th, mut hh) = (0, 0);
    for e in edits {
        let rep = match (e.rep, tail.json) {
            (Rep::EscStar, true) => Rep::Star,
            (r, _) => r,
        };
        if e.start < split {
            let to = |p: usize, h: &mut usize| {
                tail.start + tmap.as_ref().map_or(p, |mp| mp.raw_from(p, h))
            };
            let (a, b) = (
                to(ctx + e.start, &mut th),
                to(ctx + e.end.min(split), &mut th),
            );
            pe.push(Edit {
                start: a,
                end: b,
                rep,
            });
        } else {
            let to = |p: usize, h: &mut usize| hs + hmap.as_ref().map_or(p, |mp| mp.raw_from(p, h));
            let (a, b) = (to(e.start - split, &mut hh), to(e.end - split, &mut hh));
            ne.push(Edit {
                start: a,
                end: b,
                rep,
            });
        }
    }
    for (edits, bytes) in [(pe, prev), (ne, next)] {
        if edits.is_empty() {
            continue;
        }
        let mut edits = edits;
        normalize(&mut edits);
        let mut out = Vec::with_capacity(bytes.len());
        apply(bytes, 0, &edits, &mut out);
        *bytes = out;
    }
}

fn hex_or_dash(b: &u8) -> bool {
    b.is_ascii_hexdigit() || *b == b'-'
}

/// `release` moved back to the start of the word it falls in (bytes up to an ASCII space or
/// control), unless that word is longer than 4 KiB.
fn hold_last_word(buf: &[u8], base: usize, release: usize) -> usize {
    let end = release.saturating_sub(base).min(buf.len());
    let word = buf[..end]
        .iter()
        .rev()
        .take_while(|b| !(b.is_ascii_whitespace() || b.is_ascii_control()))
        .count();
    if word > 4096 {
        release
    } else {
        release - word
    }
}

#[cfg(test)]
mod protocol_member_tests {
    use super::*;

    #[test]
    fn a_complete_json_rpc_event_is_released_at_once() {
        let masker = Masker::default();
        let mut stream = StreamMasker::default();
        let mut report = MaskReport::default();
        let event = b"id: 3\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progressToken\":\"t1\",\"progress\":1}}\n\n";
        let out = stream.push(&masker, event, &mut report);
        assert_eq!(out, event.to_vec(), "the event was held back");
        assert_eq!(stream.held(), 0);
    }

    #[test]
    fn content_ending_in_digits_is_still_held_and_linked() {
        let masker = Masker::default();
        let mut stream = StreamMasker::default();
        let mut report = MaskReport::default();
        let mut out = stream.push(
            &masker,
            b"data: {\"jsonrpc\":\"2.0\",\"result\":{\"text\":\"card 4111 1111\"}}\n\n",
            &mut report,
        );
        assert!(
            out.is_empty(),
            "a text ending in digits may continue in the next event"
        );
        out.extend(stream.push(
            &masker,
            b"data: {\"jsonrpc\":\"2.0\",\"result\":{\"text\":\" 1111 1111 ok\"}}\n\n",
            &mut report,
        ));
        out.extend(stream.finish(&masker, &mut report));
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains("4111 1111"), "{text}");
        assert_eq!(report.total(), 1, "{text}");
    }

    #[test]
    fn a_stream_of_discrete_messages_releases_each_event_at_once() {
        let masker = Masker::default();
        let mut stream = StreamMasker::discrete();
        let mut report = MaskReport::default();
        let event = b"data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/resources/updated\",\"params\":{\"uri\":\"payments://payments/pay_1001\"}}\n\n";
        assert_eq!(stream.push(&masker, event, &mut report), event.to_vec());
        let pan = b"data: {\"note\":\"card 4111111111111111\"}\n\n";
        let out = String::from_utf8(stream.push(&masker, pan, &mut report)).unwrap();
        assert!(out.contains("************1111"), "{out}");
        assert_eq!(stream.held(), 0);
    }
}
