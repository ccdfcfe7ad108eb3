//! Ways real servers put bytes on the wire that the gateway must still handle: every digit and
//! non-ASCII character of a JSON string `\u`-escaped (what strict ASCII encoders do, and what an
//! attacker would try), bodies cut into tiny chunks that split card numbers anywhere, and gzip.

use std::{collections::VecDeque, io::Write as _, time::Duration};

use axum::{
    body::{Body, Bytes},
    extract::{Request, State},
    http::header::{ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_LENGTH},
    middleware::Next,
    response::Response,
};
use flate2::{write::GzEncoder, Compression};
use futures_util::{stream::BoxStream, StreamExt};

/// When the server gzips its answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Gzip {
    /// Never.
    #[default]
    Never,
    /// When the request's Accept-Encoding names gzip (what a well-behaved server does).
    WhenAsked,
    /// Always, whatever the client asked (a misbehaving server).
    Always,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct WireOptions {
    pub escape_json: bool,
    pub chunk_bytes: Option<usize>,
    pub gzip: Gzip,
}

impl WireOptions {
    fn changes_nothing(&self) -> bool {
        !self.escape_json && self.chunk_bytes.is_none() && self.gzip == Gzip::Never
    }
}

/// Pause between two pieces of a chunked body, so each leaves in its own TCP segment.
const PIECE_GAP: Duration = Duration::from_millis(1);

pub async fn reshape(State(options): State<WireOptions>, request: Request, next: Next) -> Response {
    let asked_for_gzip = request
        .headers()
        .get_all(ACCEPT_ENCODING)
        .iter()
        .any(|v| v.to_str().unwrap_or_default().contains("gzip"));
    let response = next.run(request).await;
    if options.changes_nothing() {
        return response;
    }
    let gzip = match options.gzip {
        Gzip::Never => false,
        Gzip::WhenAsked => asked_for_gzip,
        Gzip::Always => true,
    };
    let (mut parts, body) = response.into_parts();
    parts.headers.remove(CONTENT_LENGTH);
    if gzip {
        parts.headers.insert(
            CONTENT_ENCODING,
            "gzip".parse().expect("static header value"),
        );
    }
    let state = Reshaper {
        body: body.into_data_stream().boxed(),
        escaper: options.escape_json.then(JsonEscaper::default),
        gzip: gzip.then(|| GzEncoder::new(Vec::new(), Compression::fast())),
        chunk_bytes: options.chunk_bytes,
        pieces: VecDeque::new(),
        first_piece: true,
        ended: false,
    };
    let stream = futures_util::stream::unfold(state, Reshaper::next_piece);
    Response::from_parts(parts, Body::from_stream(stream))
}

struct Reshaper {
    body: BoxStream<'static, Result<Bytes, axum::Error>>,
    escaper: Option<JsonEscaper>,
    gzip: Option<GzEncoder<Vec<u8>>>,
    chunk_bytes: Option<usize>,
    pieces: VecDeque<Bytes>,
    first_piece: bool,
    ended: bool,
}

impl Reshaper {
    async fn next_piece(mut self) -> Option<(Result<Bytes, std::io::Error>, Self)> {
        loop {
            if let Some(piece) = self.pieces.pop_front() {
                if !self.first_piece && self.chunk_bytes.is_some() {
                    tokio::time::sleep(PIECE_GAP).await;
                }
                self.first_piece = false;
                return Some((Ok(piece), self));
            }
            if self.ended {
                return None;
            }
            match self.body.next().await {
                Some(Ok(chunk)) => {
                    let out = self.transform(&chunk);
                    self.split(out);
                }
                Some(Err(e)) => {
                    self.ended = true;
                    return Some((Err(std::io::Error::other(e)), self));
                }
                None => {
                    self.ended = true;
                    let tail = match self.gzip.take() {
                        Some(encoder) => encoder.finish().unwrap_or_default(),
                        None => Vec::new(),
                    };
                    self.split(tail);
                }
            }
        }
    }

    fn transform(&mut self, chunk: &[u8]) -> Vec<u8> {
        let escaped = match &mut self.escaper {
            Some(escaper) => {
                let mut out = Vec::with_capacity(chunk.len() * 2);
                escaper.feed(chunk, &mut out);
                out
            }
            None => chunk.to_vec(),
        };
        match &mut self.gzip {
            Some(encoder) => {
                // A sync flush per chunk keeps an SSE stream streaming.
                let _ = encoder.write_all(&escaped);
                let _ = encoder.flush();
                std::mem::take(encoder.get_mut())
            }
            None => escaped,
        }
    }

    fn split(&mut self, out: Vec<u8>) {
        if out.is_empty() {
            return;
        }
        let out = Bytes::from(out);
        match self.chunk_bytes {
            Some(size) => {
                let size = size.max(1);
                let mut at = 0;
                while at < out.len() {
                    let end = (at + size).min(out.len());
                    self.pieces.push_back(out.slice(at..end));
                    at = end;
                }
            }
            None => self.pieces.push_back(out),
        }
    }
}

/// Rewrites the strings of JSON text (a body, or the `data:` lines of an event stream) so that
/// every digit and every non-ASCII character is a `\uXXXX` escape; everything else is unchanged.
/// Works across chunk boundaries. A JSON string never holds a raw newline, so a newline ends any
/// string state: the event-stream lines around the JSON cannot confuse it.
#[derive(Debug, Default)]
pub struct JsonEscaper {
    in_string: bool,
    /// Bytes still to copy verbatim: the character after a backslash, and `\u`'s four hex digits.
    verbatim: u8,
    /// The start of a UTF-8 character that the next chunk completes.
    partial: Vec<u8>,
}

impl JsonEscaper {
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        for &byte in input {
            if !self.partial.is_empty() || (self.in_string && byte >= 0x80) {
                self.partial.push(byte);
                if let Ok(s) = std::str::from_utf8(&self.partial) {
                    if let Some(c) = s.chars().next() {
                        push_escaped(c, out);
                    }
                    self.partial.clear();
                } else if self.partial.len() >= 4 {
                    // Not UTF-8 after all: pass it on as it came.
                    out.append(&mut self.partial);
                }
                continue;
            }
            if byte == b'\n' {
                self.in_string = false;
                self.verbatim = 0;
                out.push(byte);
                continue;
            }
            if !self.in_string {
                self.in_string = byte == b'"';
                out.push(byte);
                continue;
            }
            if self.verbatim > 0 {
                if self.verbatim == 5 && byte == b'u' {
                    self.verbatim = 4;
                } else if self.verbatim == 5 {
                    self.verbatim = 0;
                } else {
                    self.verbatim -= 1;
                }
                out.push(byte);
                continue;
            }
            match byte {
                b'\\' => {
                    // 5: the escape letter, then up to four hex digits when it is `u`.
                    self.verbatim = 5;
                    out.push(byte);
                }
                b'"' => {
                    self.in_string = false;
                    out.push(byte);
                }
                b'0'..=b'9' => push_escaped(char::from(byte), out),
                _ => out.push(byte),
            }
        }
    }
}

fn push_escaped(c: char, out: &mut Vec<u8>) {
    let mut units = [0u16; 2];
    for unit in c.encode_utf16(&mut units) {
        out.extend_from_slice(format!("\\u{unit:04x}").as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn escape_in_pieces(input: &str, piece: usize) -> String {
        let mut escaper = JsonEscaper::default();
        let mut out = Vec::new();
        for chunk in input.as_bytes().chunks(piece) {
            escaper.feed(chunk, &mut out);
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn escapes_digits_and_non_ascii_inside_strings_only() {
        let value = json!({"n": 4111, "s": "card 4111 ４１ 𝟒 \"q\" \\ \u{1}", "a": ["x9"]});
        let input = serde_json::to_string(&value).unwrap();
        for piece in [1, 2, 3, 7, 1000] {
            let out = escape_in_pieces(&input, piece);
            assert!(out.contains("\"n\":4111"), "{out}");
            assert!(out.contains("\\u0034\\u0031\\u0031\\u0031"), "{out}");
            assert!(out.contains("\\uff14"), "{out}");
            assert!(out.contains("\\ud835\\udfd2"), "{out}");
            assert!(out.is_ascii());
            let back: Value = serde_json::from_str(&out).unwrap();
            assert_eq!(back, value, "piece {piece}");
        }
    }

    #[test]
    fn event_stream_lines_pass_through() {
        let input = "event: message\nid: 12\ndata: {\"t\":\"7\"}\n\n";
        let out = escape_in_pieces(input, 5);
        assert_eq!(out, "event: message\nid: 12\ndata: {\"t\":\"\\u0037\"}\n\n");
    }
}
