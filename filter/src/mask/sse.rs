//! `text/event-stream` masking, event by event as the stream arrives.
//!
//! Bytes are held only until the event they belong to is complete (a blank line), so each event's
//! `data:` payload is masked as JSON when it is JSON and as text otherwise, and a card number split
//! across chunks is seen whole. An event that grows past `maxEventBytes` (or a stream that never
//! ends an event) is masked as text from then on, holding back only the open digit groups that
//! could still be part of a card number: memory stays bounded on an endless stream.

use super::edit::{apply, normalize, Edit};
use super::json::JsonMasker;
use super::scan::TextScan;
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
}

impl StreamMasker {
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
        self.buf.len()
    }

    fn run(&mut self, m: &Masker, last: bool, out: &mut Vec<u8>, report: &mut MaskReport) {
        loop {
            let end = self.find_event_end();
            if let Some(mut scan) = self.text.take() {
                // Text mode until this event ends.
                let limit = end.unwrap_or(self.base + self.buf.len());
                let done = end.is_some() || last;
                let mut edits = Vec::new();
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
                    scan.stable_until().min(limit)
                };
                let windows = std::mem::take(&mut scan.extra_windows);
                m.extra_text_edits(
                    &self.buf[..release - self.base],
                    self.base,
                    &windows,
                    &mut edits,
                    report,
                );
                self.release(release, &edits, out);
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
                    self.release(end, &edits, out);
                }
                None if last => {
                    let end = self.base + self.buf.len();
                    let edits = mask_event(m, &self.buf, self.base, report);
                    self.release(end, &edits, out);
                    return;
                }
                None if self.buf.len() > m.max_event_bytes() => {
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
        scan.reset(base + s);
        scan.feed(m, &ev[..e], base, true, &mut edits, report);
        m.extra_text_edits(&ev[s..e], base + s, &scan.extra_windows, &mut edits, report);
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
