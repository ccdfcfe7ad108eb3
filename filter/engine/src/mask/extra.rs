//! Extra detectors in the same pass: card verification codes named in text, magnetic-stripe track
//! data, and named custom regular expressions.

use regex_lite::Regex;

use super::edit::Edit;
use super::unicode::{decode, Class, Decoded};
use super::{Finding, MaskReport};

/// Compiled extra detectors.
#[derive(Debug, Clone, Default)]
pub(crate) struct Extra {
    cvv_text: Option<Regex>,
    track1: Option<Regex>,
    track2: Option<Regex>,
    custom: Vec<(String, Regex)>,
}

impl Extra {
    pub(crate) fn new(cvv: bool, track: bool, custom: Vec<(String, Regex)>) -> Self {
        let re = |s: &str| Regex::new(s).ok();
        Self {
            cvv_text: if cvv {
                // Not `\b` on either side: a keyword right after a digit (`exp 12/27cvv 123`)
                // and a code right before a letter (`cvv 123exp`) are still a code, and whether
                // a digit before the keyword gets masked must not decide it (a second pass
                // would then mask what the first left).
                re(
                    r#"(?i)(?:^|[^a-z])(?:cvv2?|cvc2?|cvn|cid|csc|security[ _-]?code)["']?[ \t:=]{1,4}["']?(\d{3,4})(?:[^0-9]|$)"#,
                )
            } else {
                None
            },
            track1: if track {
                re(r"^B(\d{12,19})\^[^\^\r\n]{0,26}\^(\d[^?\r\n]{6,})")
            } else {
                None
            },
            track2: if track {
                re(r"^(\d{12,19})=(\d{7,})")
            } else {
                None
            },
            custom,
        }
    }

    pub(crate) fn needs_all_text(&self) -> bool {
        !self.custom.is_empty()
    }

    /// True when the scanner should note windows for the CVV and track detectors.
    pub(crate) fn wants_windows(&self) -> bool {
        self.cvv_text.is_some() || self.track1.is_some() || self.track2.is_some()
    }

    /// Appends edits for what the CVV and track detectors find in the `windows` (absolute ranges,
    /// noted by the scanner) of `text` (at absolute position `base`), and for what the custom
    /// patterns find anywhere in `text`.
    pub(crate) fn edits(
        &self,
        text: &[u8],
        base: usize,
        windows: &[(usize, usize, bool)],
        edits: &mut Vec<Edit>,
        report: &mut MaskReport,
    ) {
        let first = edits.len();
        // Overlapping windows of one kind are read once, as their union.
        let mut merged: Vec<(usize, usize, bool)> = Vec::new();
        for &(s, e, track) in windows {
            let (s, e) = (s.max(base), e.min(base + text.len()));
            if s >= e {
                continue;
            }
            // Track windows are anchored on their number: each is read on its own.
            match merged.iter_mut().rev().find(|m| m.2 == track) {
                Some(m) if !track && s <= m.1 => m.1 = m.1.max(e),
                Some(m) if track && s == m.0 => {}
                _ => merged.push((s, e, track)),
            }
        }
        for (s, e, track) in merged {
            self.builtin(&text[s - base..e - base], s, track, edits, report);
        }
        if !self.custom.is_empty() {
            self.custom_edits(text, base, edits, report);
        }
        if edits.len() > first {
            // Only around what was masked: merged neighbourhoods (first edit, end) of the new edits.
            let mut spans: Vec<(usize, usize)> = Vec::new();
            let mut starts: Vec<usize> = edits[first..].iter().map(|e| e.start).collect();
            starts.sort_unstable();
            for p in starts {
                let e = (p + 256).min(base + text.len());
                match spans.last_mut() {
                    Some(last) if p <= last.1 => last.1 = last.1.max(e),
                    _ => spans.push((p, e)),
                }
            }
            for (p, e) in spans {
                // Start just after a plain delimiter before the first edit (never inside a
                // character, an escape or a run of digits), else at the start of the text. Runs
                // still open at the end are followed to their end.
                let at = p.saturating_sub(base).min(text.len());
                let clean = |b: &u8| b.is_ascii() && !b.is_ascii_alphanumeric() && *b != b'\\';
                let from = text[..at].iter().rposition(clean).map_or(0, |k| k + 1);
                complete_groups(text, base, from, e - base, first, edits);
            }
        }
    }

    fn builtin(
        &self,
        text: &[u8],
        base: usize,
        track: bool,
        edits: &mut Vec<Edit>,
        report: &mut MaskReport,
    ) {
        let mut off = 0;
        for chunk in text.utf8_chunks() {
            let s = chunk.valid();
            let at = base + off;
            if let Some(re) = self.cvv_text.as_ref().filter(|_| !track) {
                // Each search starts on the last digit of the code before: the character before
                // a keyword and the one after a code are part of a match, and one character can
                // be both (`cvv 123;cvc 456`).
                let mut from = 0;
                while let Some(g) = re.captures_at(s, from).and_then(|c| c.get(1)) {
                    star_digits(s, at, g.start(), g.end(), 0, edits);
                    note(
                        report,
                        "cvv",
                        at + g.start(),
                        &masked_digits(&s[g.start()..g.end()], 0),
                    );
                    from = g.end() - 1;
                }
            }
            // The scanner opened the window on the number (track 2) or on the `B` before it
            // (track 1).
            let caret = s.starts_with('B');
            let equals = !caret;
            for (name, re, want) in [
                ("track1", &self.track1, caret),
                ("track2", &self.track2, equals),
            ] {
                let Some(re) = re.as_ref().filter(|_| track && want) else {
                    continue;
                };
                for c in re.captures_iter(s) {
                    let (Some(all), Some(pan), Some(rest)) = (c.get(0), c.get(1), c.get(2)) else {
                        continue;
                    };
                    star_digits(s, at, pan.start(), pan.end(), 4, edits);
                    star_digits(s, at, rest.start(), rest.end(), 0, edits);
                    let shown = format!(
                        "{}{}{}",
                        &s[all.start()..pan.start()],
                        masked_digits(pan.as_str(), 4),
                        masked_digits(&s[pan.end()..all.end()], 0)
                    );
                    note(report, name, at + all.start(), &shown);
                }
            }
            off += s.len() + chunk.invalid().len();
        }
    }

    fn custom_edits(
        &self,
        text: &[u8],
        base: usize,
        edits: &mut Vec<Edit>,
        report: &mut MaskReport,
    ) {
        let mut off = 0;
        for chunk in text.utf8_chunks() {
            let s = chunk.valid();
            let at = base + off;
            for (name, re) in &self.custom {
                for c in re.captures_iter(s) {
                    let Some(g) = c.get(1).or_else(|| c.get(0)) else {
                        continue;
                    };
                    if g.start() == g.end() {
                        continue;
                    }
                    let mut shown = String::new();
                    for (k, ch) in s[g.start()..g.end()].char_indices() {
                        if ch.is_alphanumeric() {
                            let p = at + g.start() + k;
                            edits.push(Edit::star(p, p + ch.len_utf8(), false));
                            shown.push('*');
                        } else {
                            shown.push(ch);
                        }
                    }
                    note(report, name, at + g.start(), &shown);
                }
            }
            off += s.len() + chunk.invalid().len();
        }
    }
}

/// A detector that masks part of a run of digits could leave the rest to read as a new number:
/// mask every digit of each run it touched (edits from index `first` on), except a kept last four
/// that nothing can continue (the run ends in something other than a separator).
fn complete_groups(
    text: &[u8],
    base: usize,
    from: usize,
    to: usize,
    first: usize,
    edits: &mut Vec<Edit>,
) {
    let mut starred: Vec<usize> = edits[first..].iter().map(|e| e.start).collect();
    starred.sort_unstable();
    let touched = |p: usize| starred.binary_search(&p).is_ok();
    let flush =
        |run: &mut Vec<(usize, usize, bool)>, next: Option<Class>, edits: &mut Vec<Edit>| {
            if run.iter().any(|&(s, _, _)| touched(s)) {
                let clear = run.iter().filter(|u| !touched(u.0)).count();
                let suffix = run.iter().rev().take(clear).all(|u| !touched(u.0));
                let closed = matches!(next, Some(c) if c != Class::Sep);
                if !(clear <= 4 && suffix && closed) {
                    for &(s, e, esc) in run.iter().filter(|u| !touched(u.0)) {
                        edits.push(Edit::star(s, e, esc));
                    }
                }
            }
            run.clear();
        };
    let mut run: Vec<(usize, usize, bool)> = Vec::new();
    let mut i = from;
    while i < text.len() {
        if i >= to && run.is_empty() {
            return;
        }
        let len = match decode(text, i) {
            Decoded::Unit(u) => {
                if u.class == Class::Digit {
                    run.push((base + i, base + i + u.len, u.escaped));
                } else {
                    flush(&mut run, Some(u.class), edits);
                }
                u.len
            }
            Decoded::Incomplete => {
                flush(&mut run, None, edits);
                1
            }
        };
        i += len;
    }
    flush(&mut run, None, edits);
}

fn note(report: &mut MaskReport, name: &str, offset: usize, shown: &str) {
    report.add_detector(name);
    if report.detail {
        report.push_finding(Finding {
            kind: name.to_string(),
            offset,
            masked: shown.to_string(),
        });
    }
}

/// Stars the ASCII digits of `s[from..to]`, keeping the last `keep`.
/// Stars the digits of `s[from..to]` but the last `keep`. Any numeric character counts (a
/// fullwidth digit is a digit to a reader), so that neither the text nor its finding shows one.
fn star_digits(s: &str, at: usize, from: usize, to: usize, keep: usize, edits: &mut Vec<Edit>) {
    let part = &s[from..to];
    let total = part.chars().filter(|c| c.is_numeric()).count();
    let mut seen = 0;
    for (k, c) in part.char_indices() {
        if c.is_numeric() {
            if seen + keep < total {
                let p = at + from + k;
                edits.push(Edit::star(p, p + c.len_utf8(), false));
            }
            seen += 1;
        }
    }
}

/// `s` as [`star_digits`] leaves it, for the finding.
fn masked_digits(s: &str, keep: usize) -> String {
    let total = s.chars().filter(|c| c.is_numeric()).count();
    let mut seen = 0;
    s.chars()
        .map(|c| {
            if c.is_numeric() {
                seen += 1;
                if seen + keep <= total {
                    return '*';
                }
            }
            c
        })
        .collect()
}

pub(crate) fn mentions_cvv(text: &[u8]) -> bool {
    // The keyword ends at most a few quote, space, colon or equals signs before the digits.
    let gap = text
        .iter()
        .rev()
        .take_while(|b| matches!(b, b' ' | b'\t' | b':' | b'=' | b'"' | b'\''))
        .count();
    if gap == 0 || gap > 6 {
        return false;
    }
    let head = &text[..text.len() - gap];
    const WORDS: [&[u8]; 8] = [
        b"cvv", b"cvv2", b"cvc", b"cvc2", b"cvn", b"cid", b"csc", b"code",
    ];
    WORDS
        .iter()
        .any(|w| head.len() >= w.len() && head[head.len() - w.len()..].eq_ignore_ascii_case(w))
}
