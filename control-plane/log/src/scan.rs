//! Reads a large JSON document one value at a time, in bounded memory: the bytes of each
//! member or array element are handed out whole, to be parsed with `serde_json::from_slice`
//! (far faster than parsing from a reader). Only the document's outer structure is checked
//! here; what is handed out is validated by whoever parses it.

use std::io::Read;

/// Why a document could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed at byte {offset}: {what}")]
    Malformed { offset: u64, what: &'static str },
    #[error("a value at byte {offset} is larger than {limit} bytes")]
    TooLarge { offset: u64, limit: usize },
}

pub struct Scanner<R> {
    input: R,
    buf: Box<[u8]>,
    pos: usize,
    end: usize,
    /// Bytes of the input before `buf[0]`.
    consumed: u64,
    /// Largest value handed out.
    limit: usize,
}

impl<R: Read> Scanner<R> {
    pub fn new(input: R, limit: usize) -> Self {
        Self {
            input,
            buf: vec![0; 1 << 20].into_boxed_slice(),
            pos: 0,
            end: 0,
            consumed: 0,
            limit,
        }
    }

    /// Where the next byte is, for messages.
    pub fn offset(&self) -> u64 {
        self.consumed + self.pos as u64
    }

    fn malformed(&self, what: &'static str) -> ScanError {
        ScanError::Malformed {
            offset: self.offset(),
            what,
        }
    }

    /// Refills the buffer once it is used up; false at the end of the input.
    fn fill(&mut self) -> Result<bool, ScanError> {
        if self.pos < self.end {
            return Ok(true);
        }
        self.consumed += self.end as u64;
        self.pos = 0;
        self.end = 0;
        loop {
            match self.input.read(&mut self.buf) {
                Ok(n) => {
                    self.end = n;
                    return Ok(n > 0);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The next byte that is not whitespace, not consumed; `None` at the end of the input.
    pub fn peek(&mut self) -> Result<Option<u8>, ScanError> {
        loop {
            if !self.fill()? {
                return Ok(None);
            }
            let b = self.buf[self.pos];
            if matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
                self.pos += 1;
            } else {
                return Ok(Some(b));
            }
        }
    }

    /// Consumes `expected` (after whitespace).
    pub fn expect(&mut self, expected: u8, what: &'static str) -> Result<(), ScanError> {
        if self.peek()? != Some(expected) {
            return Err(self.malformed(what));
        }
        self.pos += 1;
        Ok(())
    }

    /// Consumes one of `options` (after whitespace) and returns it.
    pub fn one_of(&mut self, options: &[u8], what: &'static str) -> Result<u8, ScanError> {
        match self.peek()? {
            Some(b) if options.contains(&b) => {
                self.pos += 1;
                Ok(b)
            }
            _ => Err(self.malformed(what)),
        }
    }

    /// Appends the bytes of the next JSON value to `out` (cleared first).
    pub fn value(&mut self, out: &mut Vec<u8>) -> Result<(), ScanError> {
        out.clear();
        let first = self
            .peek()?
            .ok_or_else(|| self.malformed("a value was expected"))?;
        let start = self.offset();
        if !matches!(first, b'{' | b'[' | b'"') {
            // A number or a literal: up to the next delimiter.
            loop {
                if !self.fill()? {
                    return Ok(());
                }
                let chunk = &self.buf[self.pos..self.end];
                let stop = chunk
                    .iter()
                    .position(|b| matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'));
                let take = stop.unwrap_or(chunk.len());
                out.extend_from_slice(&chunk[..take]);
                self.pos += take;
                if out.len() > 64 {
                    return Err(self.malformed("a number or literal is too long"));
                }
                if stop.is_some() {
                    return Ok(());
                }
            }
        }
        let (mut depth, mut in_string, mut escaped) = (0u32, false, false);
        loop {
            if !self.fill()? {
                return Err(self.malformed("the document ends inside a value"));
            }
            let chunk = &self.buf[self.pos..self.end];
            let mut done = None;
            let mut i = 0;
            while i < chunk.len() {
                let b = chunk[i];
                if in_string {
                    if escaped {
                        escaped = false;
                    } else if b == b'\\' {
                        escaped = true;
                    } else if b == b'"' {
                        in_string = false;
                        if depth == 0 {
                            done = Some(i + 1);
                            break;
                        }
                    } else {
                        // Skip plain string bytes in one go.
                        let rest = &chunk[i + 1..];
                        i += memchr::memchr2(b'"', b'\\', rest).unwrap_or(rest.len());
                    }
                } else {
                    match b {
                        b'"' => in_string = true,
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                done = Some(i + 1);
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                i += 1;
            }
            let take = done.unwrap_or(chunk.len());
            out.extend_from_slice(&chunk[..take]);
            self.pos += take;
            if out.len() > self.limit {
                return Err(ScanError::TooLarge {
                    offset: start,
                    limit: self.limit,
                });
            }
            if done.is_some() {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(text: &str) -> Vec<String> {
        let mut scanner = Scanner::new(text.as_bytes(), 1 << 10);
        let mut out = Vec::new();
        let mut all = Vec::new();
        scanner.expect(b'[', "array").unwrap();
        loop {
            scanner.value(&mut out).unwrap();
            all.push(String::from_utf8(out.clone()).unwrap());
            if scanner.one_of(b",]", "comma").unwrap() == b']' {
                break;
            }
        }
        assert_eq!(scanner.peek().unwrap(), None);
        all
    }

    #[test]
    fn hands_out_each_value_whole() {
        assert_eq!(
            values(r#" [ {"a":"}]\"{","b":[1,{}]} , 12.5e3,"x\\",true ,[ ] ] "#),
            vec![
                r#"{"a":"}]\"{","b":[1,{}]}"#,
                "12.5e3",
                r#""x\\""#,
                "true",
                "[ ]"
            ]
        );
    }

    #[test]
    fn refuses_truncated_and_oversized_values() {
        let mut out = Vec::new();
        let mut scanner = Scanner::new(&br#"{"a":[1,2"#[..], 1 << 10);
        assert!(matches!(
            scanner.value(&mut out),
            Err(ScanError::Malformed { .. })
        ));
        let big = format!("[\"{}\"]", "x".repeat(5000));
        let mut scanner = Scanner::new(big.as_bytes(), 1 << 10);
        scanner.expect(b'[', "array").unwrap();
        assert!(matches!(
            scanner.value(&mut out),
            Err(ScanError::TooLarge { .. })
        ));
    }
}
