//! PAN masking. No card number leaves the gateway in clear.
//!
//! - [`Masker::mask_content`] picks the handling from the content type: JSON documents are masked
//!   value by value after unescaping ([`Masker::mask_json`]), event streams event by event
//!   ([`StreamMasker`]), anything else as text ([`Masker::mask_body`]). It never returns a body
//!   unmasked: a body that is not the JSON it claims to be is masked as text.
//! - Detection ([`scan`]): 13–19 digits in groups joined by single separators (space, dash, dot,
//!   no-break and narrow spaces, …), any Unicode decimal digit or `\uXXXX` escape of one, with a
//!   valid Luhn check digit and a prefix and length in the issuer table ([`luhn::IIN_TABLE`]), not
//!   part of a longer run of digits. Every window of whole groups is tried, as the independent
//!   acceptance checker does. Letters next to the digits do not hide a card (`PAN4111…`,
//!   `…1111abc`), except by the hash rule: digits glued to letters inside a run of 24 or more ASCII
//!   hex digits (hashes, trace and object ids), a UUID, or an IBAN written as one word are not a
//!   card, judged in the masked output (a hash that loses digits to a card protects nothing).
//! - Track 2 equivalent data (`<card>D<YYMM><service code><discretionary>`, EMV tag 57) and
//!   magnetic-stripe track 2 (`<card>=…`): the card is masked as displayed and every digit after
//!   the separator is masked too; one card of its brand is counted.
//! - Display ([`Display`]): last four (default), BIN and last four, or a keyed HMAC token. Masked
//!   digits keep their separators; masking is idempotent.
//! - Extra detectors: card verification codes by JSON key name (and `CVV: 123` in text), track
//!   data, named custom regexes. They never leave part of a digit run clear (what stays could
//!   read as a new card number), only a last four that nothing can continue.
//! - Streams ([`StreamMasker`]): each event is masked once complete (JSON-aware); a number split
//!   over chunks is seen whole, one split over two events (text streamed in pieces at the same
//!   JSON path, or plain `data:` text) is read across the boundary. Memory is bounded.
//! - [`Masker::handling`] tells the glue what to do with a body from its headers: compressed
//!   bodies are blocked (the filter asks for identity encoding), binary ones follow `binary`.
//!
//! Raw numbers never appear in reports: [`Finding`] holds the masked form only.

mod edit;
mod extra;
mod hmac;
mod json;
mod luhn;
mod scan;
mod sse;
mod unicode;

use std::collections::BTreeMap;

use serde::Deserialize;

pub use json::NotJson;
pub use luhn::{brands, card_brand, luhn_valid, pan_brand, IinRange, IIN_TABLE};
pub use sse::StreamMasker;

use edit::{apply, normalize, Edit};

/// How a masked card number is displayed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Display {
    /// `************1111`, separators kept.
    #[default]
    LastFour,
    /// First six and last four (the PCI DSS 3.4.1 maximum).
    BinLastFour,
    /// `pan_ref:<24 hex digits>`: a keyed HMAC-SHA-256 of the digits (key: `panRefKey`), so that an
    /// auditor can tell two occurrences of one card apart without seeing it.
    PanRef,
}

/// What happens to a body that cannot carry text (by its content type).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum BinaryAction {
    /// Refuse it (safe default: nothing unmasked gets through).
    #[default]
    Block,
    /// Let it through untouched.
    Pass,
    /// Mask it as text anyway (digits in it are replaced like any others).
    Mask,
}

/// How a response body is to be handled, from its headers ([`Masker::handling`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handling {
    /// Buffer and [`Masker::mask_content`] (JSON, falling back to text).
    Json,
    /// Stream through a [`StreamMasker`].
    EventStream,
    /// Buffer and mask as text.
    Text,
    /// Refuse the response: compressed (the filter asks for identity encoding, so this means the
    /// upstream ignored it) or binary with `binary: block`.
    Block,
    /// Binary with `binary: pass`.
    Pass,
}

/// A named custom detector.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CustomPattern {
    /// Name reported for matches (`by_detector`).
    pub name: String,
    /// A regex-lite expression. When it has a capture group, only group 1 is masked; every letter
    /// and digit of the masked part becomes `*`.
    pub regex: String,
}

/// Masking configuration, the `mask` object of the plugin configuration.
#[derive(Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MaskConfig {
    /// How masked numbers are shown.
    #[serde(default)]
    pub display: Display,
    /// HMAC key for `panRef` display, at least 16 bytes. Never logged.
    #[serde(default)]
    pub pan_ref_key: Option<String>,
    /// JSON keys whose 3–4 digit value is a card verification code, compared ignoring case, `_`,
    /// `-` and spaces. An empty list turns the CVV detector off (keys and `CVV: 123` in text).
    #[serde(default = "default_cvv_keys")]
    pub cvv_keys: Vec<String>,
    /// Mask magnetic-stripe track 1 and track 2 data.
    #[serde(default = "default_true")]
    pub track_data: bool,
    /// Extra named detectors.
    #[serde(default)]
    pub custom_patterns: Vec<CustomPattern>,
    /// What to do with bodies whose content type cannot carry text (images, archives, …).
    #[serde(default)]
    pub binary: BinaryAction,
    /// Largest event-stream event buffered whole (for JSON-aware masking); a larger one is masked
    /// as a text stream.
    #[serde(default = "default_max_event_bytes")]
    pub max_event_bytes: usize,
}

impl Default for MaskConfig {
    fn default() -> Self {
        Self {
            display: Display::default(),
            pan_ref_key: None,
            cvv_keys: default_cvv_keys(),
            track_data: true,
            custom_patterns: Vec::new(),
            binary: BinaryAction::default(),
            max_event_bytes: default_max_event_bytes(),
        }
    }
}

impl std::fmt::Debug for MaskConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MaskConfig")
            .field("display", &self.display)
            .field(
                "pan_ref_key",
                &self.pan_ref_key.as_ref().map(|_| "<redacted>"),
            )
            .field("cvv_keys", &self.cvv_keys)
            .field("track_data", &self.track_data)
            .field("custom_patterns", &self.custom_patterns)
            .field("binary", &self.binary)
            .field("max_event_bytes", &self.max_event_bytes)
            .finish()
    }
}

fn default_cvv_keys() -> Vec<String> {
    [
        "cvv",
        "cvv2",
        "cvc",
        "cvc2",
        "cvn",
        "cid",
        "csc",
        "securityCode",
        "cardSecurityCode",
        "cardVerificationValue",
        "verificationCode",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn default_true() -> bool {
    true
}

fn default_max_event_bytes() -> usize {
    1 << 20
}

/// A configuration the masker cannot work with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MaskConfigError {
    /// `display: panRef` without a `panRefKey`.
    MissingPanRefKey,
    /// A `panRefKey` shorter than 16 bytes.
    ShortPanRefKey,
    /// A custom pattern without a name.
    UnnamedPattern,
    /// A custom pattern that does not compile.
    InvalidPattern { name: String, error: String },
    /// A custom pattern that matches the empty string (it would match everywhere).
    EmptyMatch { name: String },
}

impl std::fmt::Display for MaskConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::MissingPanRefKey => write!(f, "display panRef needs a panRefKey"),
            Self::ShortPanRefKey => write!(f, "panRefKey must be at least 16 bytes"),
            Self::UnnamedPattern => write!(f, "custom pattern without a name"),
            Self::InvalidPattern { name, error } => {
                write!(f, "custom pattern {name:?} is invalid: {error}")
            }
            Self::EmptyMatch { name } => {
                write!(f, "custom pattern {name:?} matches the empty string")
            }
        }
    }
}

impl std::error::Error for MaskConfigError {}

/// One thing the masker found, for `tollgate mask --report`. Never holds the raw number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Card brand (`visa`, …) or detector name (`cvv`, `track2`, a custom pattern's name).
    pub kind: String,
    /// Byte offset in the input of its first character.
    pub offset: usize,
    /// The masked form as it appears in the output (digits normalised to ASCII).
    pub masked: String,
}

/// Findings kept in a detailed report; past this only the counts grow.
const MAX_FINDINGS: usize = 100_000;

/// What the masker found: masked card numbers per brand, other detectors' matches per name, and
/// (when asked for with [`MaskReport::detailed`]) each finding.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MaskReport {
    pub by_brand: BTreeMap<&'static str, u64>,
    /// Matches of the extra detectors (`cvv`, `track1`, `track2`, custom names).
    pub by_detector: BTreeMap<String, u64>,
    /// Findings in input order per call (empty unless detailed).
    pub findings: Vec<Finding>,
    /// Findings not kept because there were more than the cap.
    pub findings_dropped: u64,
    detail: bool,
}

impl MaskReport {
    /// A report that also keeps each finding (brand, position, masked form).
    pub fn detailed() -> Self {
        Self {
            detail: true,
            ..Self::default()
        }
    }

    /// Masked card numbers.
    pub fn total(&self) -> u64 {
        self.by_brand.values().sum()
    }

    /// Matches of the extra detectors.
    pub fn detector_total(&self) -> u64 {
        self.by_detector.values().sum()
    }

    fn add(&mut self, brand: &'static str) {
        *self.by_brand.entry(brand).or_insert(0) += 1;
    }

    fn add_detector(&mut self, name: &str) {
        match self.by_detector.get_mut(name) {
            Some(n) => *n += 1,
            None => {
                self.by_detector.insert(name.to_string(), 1);
            }
        }
    }

    fn push_finding(&mut self, f: Finding) {
        if self.findings.len() < MAX_FINDINGS {
            self.findings.push(f);
        } else {
            self.findings_dropped += 1;
        }
    }

    fn empty_like(&self) -> Self {
        Self {
            detail: self.detail,
            ..Self::default()
        }
    }

    fn merge(&mut self, other: MaskReport) {
        for (b, n) in other.by_brand {
            *self.by_brand.entry(b).or_insert(0) += n;
        }
        for (d, n) in other.by_detector {
            *self.by_detector.entry(d).or_insert(0) += n;
        }
        for f in other.findings {
            self.push_finding(f);
        }
        self.findings_dropped += other.findings_dropped;
    }

    /// Takes back the counts of `other`, merged into this report when it held `findings`
    /// findings and `dropped` dropped ones.
    fn take_back(&mut self, other: MaskReport, findings: usize, dropped: u64) {
        for (b, n) in other.by_brand {
            if let Some(c) = self.by_brand.get_mut(b) {
                *c = c.saturating_sub(n);
                if *c == 0 {
                    self.by_brand.remove(b);
                }
            }
        }
        for (d, n) in other.by_detector {
            if let Some(c) = self.by_detector.get_mut(&d) {
                *c = c.saturating_sub(n);
                if *c == 0 {
                    self.by_detector.remove(&d);
                }
            }
        }
        self.findings.truncate(findings);
        self.findings_dropped = dropped;
    }
}

/// The masking engine; cheap to share, immutable once built.
#[derive(Debug, Clone)]
pub struct Masker {
    display: Display,
    key: Vec<u8>,
    cvv_keys: Vec<Vec<u8>>,
    /// First bytes of the normalised CVV keys, for a quick no.
    cvv_first: [bool; 256],
    extra: extra::Extra,
    max_event_bytes: usize,
    binary: BinaryAction,
}

impl Default for Masker {
    fn default() -> Self {
        let config = MaskConfig::default();
        Self {
            display: config.display,
            key: Vec::new(),
            cvv_first: first_bytes(&config.cvv_keys),
            cvv_keys: config
                .cvv_keys
                .iter()
                .map(|k| normalize_key(k.as_bytes()))
                .collect(),
            extra: extra::Extra::new(true, true, Vec::new()),
            max_event_bytes: config.max_event_bytes,
            binary: config.binary,
        }
    }
}

fn first_bytes(keys: &[String]) -> [bool; 256] {
    let mut t = [false; 256];
    for k in keys {
        if let Some(&b) = normalize_key(k.as_bytes()).first() {
            t[usize::from(b)] = true;
        }
    }
    t
}

fn normalize_key(k: &[u8]) -> Vec<u8> {
    k.iter()
        .filter(|b| !matches!(b, b'_' | b'-' | b' '))
        .map(u8::to_ascii_lowercase)
        .collect()
}

/// What kind of body a content type names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Json,
    EventStream,
    Text,
    Binary,
}

fn kind_of(content_type: Option<&str>) -> Kind {
    let Some(ct) = content_type else {
        return Kind::Text;
    };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let (top, sub) = essence.split_once('/').unwrap_or((essence.as_str(), ""));
    if essence == "text/event-stream" {
        Kind::EventStream
    } else if essence == "application/json"
        || essence.ends_with("+json")
        || essence == "application/json-rpc"
    {
        Kind::Json
    } else if matches!(top, "image" | "audio" | "video" | "font" | "model")
        || matches!(
            sub,
            "octet-stream"
                | "pdf"
                | "zip"
                | "gzip"
                | "x-gzip"
                | "x-tar"
                | "x-7z-compressed"
                | "zstd"
                | "x-protobuf"
                | "protobuf"
                | "grpc"
                | "wasm"
                | "vnd.ms-excel"
                | "msword"
        )
        || sub.starts_with("grpc")
        || sub.starts_with("vnd.openxmlformats")
    {
        Kind::Binary
    } else {
        Kind::Text
    }
}

impl Masker {
    /// Builds the engine; fails on a configuration it cannot honour.
    pub fn new(config: MaskConfig) -> Result<Masker, MaskConfigError> {
        let key = match (config.display, &config.pan_ref_key) {
            (Display::PanRef, None) => return Err(MaskConfigError::MissingPanRefKey),
            (_, Some(k)) if k.len() < 16 => return Err(MaskConfigError::ShortPanRefKey),
            (_, Some(k)) => k.as_bytes().to_vec(),
            (_, None) => Vec::new(),
        };
        let mut custom = Vec::new();
        for p in &config.custom_patterns {
            if p.name.trim().is_empty() {
                return Err(MaskConfigError::UnnamedPattern);
            }
            let re =
                regex_lite::Regex::new(&p.regex).map_err(|e| MaskConfigError::InvalidPattern {
                    name: p.name.clone(),
                    error: e.to_string(),
                })?;
            if re.is_match("") {
                return Err(MaskConfigError::EmptyMatch {
                    name: p.name.clone(),
                });
            }
            custom.push((p.name.clone(), re));
        }
        let cvv_keys: Vec<Vec<u8>> = config
            .cvv_keys
            .iter()
            .map(|k| normalize_key(k.as_bytes()))
            .collect();
        Ok(Masker {
            display: config.display,
            key,
            extra: extra::Extra::new(!cvv_keys.is_empty(), config.track_data, custom),
            cvv_first: first_bytes(&config.cvv_keys),
            cvv_keys,
            max_event_bytes: config.max_event_bytes.max(256),
            binary: config.binary,
        })
    }

    /// Masks every card number in a complete body read as text (escapes like `\u0034` included).
    pub fn mask_body(&self, body: &[u8], report: &mut MaskReport) -> Vec<u8> {
        let mut edits = Vec::new();
        self.text_edits(body, &mut edits, report);
        finish(body, edits)
    }

    /// Masks a JSON document: string values after unescaping (JSON inside strings as JSON), keys,
    /// number tokens (a masked number becomes a string). The output is valid JSON, byte for byte
    /// the input where nothing was masked. Errors (and reports nothing) when `body` is not JSON.
    pub fn mask_json(&self, body: &[u8], report: &mut MaskReport) -> Result<Vec<u8>, NotJson> {
        let mut edits = Vec::new();
        let mut sub = report.empty_like();
        json::JsonMasker::new(self).edits(body, 0, &mut edits, &mut sub)?;
        report.merge(sub);
        Ok(finish(body, edits))
    }

    /// Masks a complete body as its content type asks: JSON (falling back to text when it is not
    /// valid JSON), an event stream event by event, anything else as text. Never returns the body
    /// unmasked.
    pub fn mask_content(
        &self,
        content_type: Option<&str>,
        body: &[u8],
        report: &mut MaskReport,
    ) -> Vec<u8> {
        let looks_json = matches!(
            body.iter().find(|b| !b.is_ascii_whitespace()),
            Some(b'{' | b'[')
        );
        match kind_of(content_type) {
            Kind::EventStream => {
                let mut s = StreamMasker::default();
                let mut out = s.push(self, body, report);
                out.extend(s.finish(self, report));
                out
            }
            Kind::Json => self
                .mask_json(body, report)
                .unwrap_or_else(|_| self.mask_body(body, report)),
            Kind::Text | Kind::Binary if looks_json => self
                .mask_json(body, report)
                .unwrap_or_else(|_| self.mask_body(body, report)),
            Kind::Text | Kind::Binary => self.mask_body(body, report),
        }
    }

    /// How to handle a response body with these headers. A compressed body is never masked here
    /// and never passed: the filter asks upstreams for identity encoding, and blocks the rest.
    pub fn handling(&self, content_type: Option<&str>, content_encoding: Option<&str>) -> Handling {
        let encoded = content_encoding
            .map(str::trim)
            .is_some_and(|e| !e.is_empty() && !e.eq_ignore_ascii_case("identity"));
        if encoded {
            return Handling::Block;
        }
        match kind_of(content_type) {
            Kind::Json => Handling::Json,
            Kind::EventStream => Handling::EventStream,
            Kind::Text => Handling::Text,
            Kind::Binary => match self.binary {
                BinaryAction::Block => Handling::Block,
                BinaryAction::Pass => Handling::Pass,
                BinaryAction::Mask => Handling::Text,
            },
        }
    }

    fn text_edits(&self, body: &[u8], edits: &mut Vec<Edit>, report: &mut MaskReport) {
        scan::TextScan::new(0).feed_whole(self, body, 0, 0, true, edits, report);
    }

    /// Edits of the extra detectors: CVV and track data in the scanner's `windows`, custom
    /// patterns anywhere in `text` (at absolute position `base`).
    pub(crate) fn extra_text_edits(
        &self,
        text: &[u8],
        base: usize,
        windows: &[(usize, usize, bool)],
        edits: &mut Vec<Edit>,
        report: &mut MaskReport,
    ) {
        self.extra.edits(text, base, windows, edits, report);
    }

    pub(crate) fn extra_wants_windows(&self) -> bool {
        self.extra.wants_windows()
    }

    pub(crate) fn needs_all_text(&self) -> bool {
        self.extra.needs_all_text()
    }

    pub(crate) fn has_cvv_keys(&self) -> bool {
        !self.cvv_keys.is_empty()
    }

    pub(crate) fn is_cvv_key(&self, key: &[u8]) -> bool {
        let first = key.iter().find(|b| !matches!(b, b'_' | b'-' | b' '));
        if !first.is_some_and(|b| self.cvv_first[usize::from(b.to_ascii_lowercase())]) {
            return false;
        }
        let mut norm = [0u8; 48];
        let mut n = 0;
        for &b in key {
            if matches!(b, b'_' | b'-' | b' ') {
                continue;
            }
            let Some(slot) = norm.get_mut(n) else {
                return false;
            };
            *slot = b.to_ascii_lowercase();
            n += 1;
        }
        let k = &norm[..n];
        self.cvv_keys
            .iter()
            .any(|c| c.len() == n && c.first() == k.first() && c.as_slice() == k)
    }

    pub(crate) fn max_event_bytes(&self) -> usize {
        self.max_event_bytes
    }

    /// `pan_ref:` and 24 hex digits of HMAC-SHA-256(key, digits). Long enough that the hex can
    /// never read as a card number itself.
    pub(crate) fn pan_ref_token(&self, digits: &[u8]) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mac = hmac::hmac_sha256(&self.key, digits);
        let mut s = String::from("pan_ref:");
        for b in &mac[..12] {
            s.push(char::from(HEX[usize::from(b >> 4)]));
            s.push(char::from(HEX[usize::from(b & 15)]));
        }
        s
    }
}

fn finish(body: &[u8], mut edits: Vec<Edit>) -> Vec<u8> {
    if edits.is_empty() {
        return body.to_vec();
    }
    normalize(&mut edits);
    let mut out = Vec::with_capacity(body.len() + 16);
    apply(body, 0, &edits, &mut out);
    out
}

#[cfg(test)]
mod tests;
