//! Edits: what the detectors decided, applied in one copy of the input.

/// What replaces an edited byte range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Rep {
    /// `*`.
    Star,
    /// `\u002a`: a masked digit that was written as an escape stays an escape, so the text stays
    /// valid JSON whether the escape was JSON's own or text inside a JSON string.
    EscStar,
    /// Anything else (a `pan_ref` token, the quotes around a masked number).
    Owned(Box<[u8]>),
}

/// Replace `start..end` (absolute positions) with `rep`; `start == end` inserts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Edit {
    pub start: usize,
    pub end: usize,
    pub rep: Rep,
}

impl Edit {
    pub(crate) fn star(start: usize, end: usize, escaped: bool) -> Self {
        Self {
            start,
            end,
            rep: if escaped { Rep::EscStar } else { Rep::Star },
        }
    }

    pub(crate) fn owned(start: usize, end: usize, bytes: &[u8]) -> Self {
        Self {
            start,
            end,
            rep: Rep::Owned(bytes.into()),
        }
    }
}

/// Sorts edits by position and drops any that overlap an earlier one. Detectors only ever edit
/// whole characters, and every edit masks, so an edit inside another is covered by it.
pub(crate) fn normalize(edits: &mut Vec<Edit>) {
    if edits
        .windows(2)
        .all(|w| w[0].end <= w[1].start && w[0].start <= w[1].start)
    {
        return;
    }
    edits.sort_by(|a, b| {
        a.start
            .cmp(&b.start)
            .then((a.end != a.start).cmp(&(b.end != b.start)))
            .then(b.end.cmp(&a.end))
    });
    let mut last_end = 0usize;
    let mut first = true;
    edits.retain(|e| {
        let keep = first || e.start >= last_end;
        if keep {
            first = false;
            last_end = e.end;
        }
        keep
    });
}

/// Copies `input` (which starts at absolute position `base`) to `out` with `edits` applied.
/// Edits must be normalised and lie within the input.
pub(crate) fn apply(input: &[u8], base: usize, edits: &[Edit], out: &mut Vec<u8>) {
    let mut at = 0usize;
    for e in edits {
        let (Some(s), Some(end)) = (e.start.checked_sub(base), e.end.checked_sub(base)) else {
            continue;
        };
        if s < at || end > input.len() || end < s {
            continue;
        }
        out.extend_from_slice(&input[at..s]);
        match &e.rep {
            Rep::Star => out.push(b'*'),
            Rep::EscStar => out.extend_from_slice(b"\\u002a"),
            Rep::Owned(b) => out.extend_from_slice(b),
        }
        at = end;
    }
    out.extend_from_slice(&input[at..]);
}

/// Writes `bytes` as the inside of a JSON string.
pub(crate) fn json_escape(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 2);
    for &b in bytes {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0..=0x1f => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 15)]);
            }
            _ => out.push(b),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applies_and_drops_overlaps() {
        let mut edits = vec![
            Edit::star(3, 4, false),
            Edit::owned(0, 0, b"\""),
            Edit::owned(1, 3, b"XY"),
            Edit::star(2, 3, false),
            Edit::owned(5, 5, b"\""),
        ];
        normalize(&mut edits);
        let mut out = Vec::new();
        apply(b"abcde", 0, &edits, &mut out);
        assert_eq!(out, b"\"aXY*e\"");
    }
}
