//! PAN masking. No card number leaves the gateway in clear.
//!
//! [`Masker::mask_body`] masks a whole buffered body; [`StreamMasker`] masks a stream chunk by
//! chunk, holding back only the bytes that could still be the start of a card number.

mod luhn;

use std::collections::BTreeMap;

use serde::Deserialize;

pub use luhn::luhn_valid;

/// How a masked card number is displayed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Display {
    /// `************1111`, separators kept.
    #[default]
    LastFour,
    /// First six and last four (the PCI DSS 3.4.1 maximum).
    BinLastFour,
}

/// Masking configuration, the `mask` object of the plugin configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MaskConfig {
    /// How masked numbers are shown.
    #[serde(default)]
    pub display: Display,
}

/// What the masker found: masked card numbers per brand.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MaskReport {
    pub by_brand: BTreeMap<&'static str, u64>,
}

impl MaskReport {
    pub fn total(&self) -> u64 {
        self.by_brand.values().sum()
    }

    fn add(&mut self, brand: &'static str) {
        *self.by_brand.entry(brand).or_insert(0) += 1;
    }
}

/// The masking engine; cheap to share, immutable once built.
#[derive(Debug, Clone, Default)]
pub struct Masker {
    config: MaskConfig,
}

/// Longest digit-and-separator run that can hold a PAN: 19 digits and 18 single separators.
const MAX_PAN_SPAN: usize = 37;

impl Masker {
    pub fn new(config: MaskConfig) -> Self {
        Self { config }
    }

    /// Masks every card number in a complete body.
    pub fn mask_body(&self, body: &[u8], report: &mut MaskReport) -> Vec<u8> {
        let mut out = Vec::with_capacity(body.len());
        self.mask_runs(body, &mut out, report);
        out
    }

    /// Copies `input` to `out`, masking each digit run that is a card number.
    fn mask_runs(&self, input: &[u8], out: &mut Vec<u8>, report: &mut MaskReport) {
        let mut i = 0;
        while i < input.len() {
            if input[i].is_ascii_digit() && (i == 0 || !input[i - 1].is_ascii_alphanumeric()) {
                let end = run_end(input, i);
                let run = &input[i..end];
                if input.get(end).is_some_and(|b| b.is_ascii_alphanumeric()) {
                    out.extend_from_slice(run);
                } else {
                    self.mask_run(run, out, report);
                }
                i = end;
            } else {
                out.push(input[i]);
                i += 1;
            }
        }
    }

    fn mask_run(&self, run: &[u8], out: &mut Vec<u8>, report: &mut MaskReport) {
        let digits: Vec<u8> = run.iter().copied().filter(u8::is_ascii_digit).collect();
        let brand = match luhn::card_brand(&digits) {
            Some(brand) if luhn_valid(&digits) => brand,
            _ => {
                out.extend_from_slice(run);
                return;
            }
        };
        report.add(brand);
        let keep_head = match self.config.display {
            Display::LastFour => 0,
            Display::BinLastFour => 6,
        };
        let keep_tail_from = digits.len() - 4;
        let mut seen = 0;
        for &b in run {
            if b.is_ascii_digit() {
                out.push(if seen < keep_head || seen >= keep_tail_from { b } else { b'*' });
                seen += 1;
            } else {
                out.push(b);
            }
        }
    }
}

/// End of the digit run starting at `start`: digits joined by single spaces or dashes.
fn run_end(input: &[u8], start: usize) -> usize {
    let mut end = start;
    let mut i = start;
    while i < input.len() {
        if input[i].is_ascii_digit() {
            i += 1;
            end = i;
        } else if (input[i] == b' ' || input[i] == b'-')
            && input.get(i + 1).is_some_and(u8::is_ascii_digit)
        {
            i += 1;
        } else {
            break;
        }
    }
    end
}

/// Masks a stream (an SSE body) chunk by chunk.
#[derive(Debug, Default)]
pub struct StreamMasker {
    /// Tail of the previous chunk that could still be the start of a card number.
    held: Vec<u8>,
}

impl StreamMasker {
    /// Masks `chunk` and returns what can be released now.
    pub fn push(&mut self, masker: &Masker, chunk: &[u8], report: &mut MaskReport) -> Vec<u8> {
        let mut input = std::mem::take(&mut self.held);
        input.extend_from_slice(chunk);
        // Hold back a trailing digit run (and its separators): the next chunk may extend it.
        let mut split = input.len();
        while split > 0 && matches!(input[split - 1], b'0'..=b'9' | b' ' | b'-') {
            split -= 1;
            if input.len() - split > MAX_PAN_SPAN + 1 {
                break;
            }
        }
        if input.len() - split > MAX_PAN_SPAN {
            // Too long to be a card number by itself; release it, keeping a possible PAN start.
            split = input.len() - MAX_PAN_SPAN;
        }
        // Never split inside a run we release: a partial run would be masked (or not) wrongly.
        self.held = input.split_off(split);
        let mut out = Vec::with_capacity(input.len());
        masker.mask_runs(&input, &mut out, report);
        out
    }

    /// Releases whatever is held at the end of the stream.
    pub fn finish(&mut self, masker: &Masker, report: &mut MaskReport) -> Vec<u8> {
        let held = std::mem::take(&mut self.held);
        masker.mask_body(&held, report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(s: &str) -> (String, u64) {
        let mut report = MaskReport::default();
        let out = Masker::default().mask_body(s.as_bytes(), &mut report);
        (String::from_utf8(out).unwrap(), report.total())
    }

    #[test]
    fn masks_grouped_and_plain_pans() {
        assert_eq!(mask("card 4111111111111111 ok"), ("card ************1111 ok".into(), 1));
        assert_eq!(
            mask(r#"{"pan":"5555-5555-5555-4444"}"#),
            (r#"{"pan":"****-****-****-4444"}"#.into(), 1)
        );
        assert_eq!(mask("amex 3782 822463 10005"), ("amex **** ****** *0005".into(), 1));
    }

    #[test]
    fn leaves_non_pans_alone() {
        for s in ["4111111111111112", "order 12345678901234567890123", "id a4111111111111111"] {
            assert_eq!(mask(s), (s.into(), 0));
        }
    }

    #[test]
    fn stream_catches_split_pan() {
        let masker = Masker::default();
        let mut stream = StreamMasker::default();
        let mut report = MaskReport::default();
        let mut out = stream.push(&masker, b"data: {\"pan\":\"41111111", &mut report);
        out.extend(stream.push(&masker, b"11111111\"}\n\n", &mut report));
        out.extend(stream.finish(&masker, &mut report));
        assert_eq!(out, b"data: {\"pan\":\"************1111\"}\n\n");
        assert_eq!(report.total(), 1);
    }
}
