//! URLs as they may be recorded: query and fragment values redacted, userinfo removed, and
//! percent-encoding undone where it could hide a card number from the masker. Shared by the
//! filter's records and the control plane's webhook records.

/// What replaces every query and fragment value in a recorded URL.
pub const REDACTED: &str = "REDACTED";

/// A URL or request path as it may be recorded: the path is kept, every query (and fragment)
/// parameter keeps its name but its value becomes `REDACTED` (`/mcp?access_token=REDACTED`; a
/// parameter without `=` is a value and becomes `REDACTED`), and userinfo is removed from every
/// `scheme://user:password@host` in it. Percent-encoded characters in the path and the parameter
/// names are decoded (except `/ ? # % & =` and controls), and `+` in names read as a space, so
/// that a card number hidden as `4111%201111…` or `%34%31…` is plain for the masker that runs
/// over every record after this. Pure: no masking here.
pub fn redact_url(url: &str) -> String {
    let (before_fragment, fragment) = match url.split_once('#') {
        Some((b, f)) => (b, Some(f)),
        None => (url, None),
    };
    let (base, query) = match before_fragment.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (before_fragment, None),
    };
    let mut out = String::with_capacity(url.len() + 16);
    out.push_str(&decode_percent(&strip_userinfo(base), false));
    if let Some(query) = query {
        out.push('?');
        redact_parameters(query, &mut out);
    }
    if let Some(fragment) = fragment {
        out.push('#');
        redact_parameters(fragment, &mut out);
    }
    out
}

/// `a=1&b&c=` → `a=REDACTED&REDACTED&c=REDACTED`; empty parts stay empty.
fn redact_parameters(parameters: &str, out: &mut String) {
    for (i, part) in parameters.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        if part.is_empty() {
            continue;
        }
        if let Some((name, _)) = part.split_once('=') {
            out.push_str(&decode_percent(name, true));
            out.push('=');
        }
        out.push_str(REDACTED);
    }
}

/// Removes the userinfo of every `scheme://userinfo@authority` in `text`.
fn strip_userinfo(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains("://") {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let start = at + 3;
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        let authority_end = after.find('/').unwrap_or(after.len());
        let authority = &after[..authority_end];
        match authority.rfind('@') {
            Some(userinfo_end) => out.push_str(&authority[userinfo_end + 1..]),
            None => out.push_str(authority),
        }
        rest = &after[authority_end..];
    }
    out.push_str(rest);
    std::borrow::Cow::Owned(out)
}

/// Decodes `%XX` escapes, except those for `/ ? # % & =` and control characters (which would
/// change what the text means or how it reads); `+` becomes a space when `plus_is_space`. Decoded
/// bytes that are not UTF-8 are escaped again.
fn decode_percent(text: &str, plus_is_space: bool) -> String {
    let has_plus = plus_is_space && text.contains('+');
    if !has_plus && !text.contains('%') {
        return text.to_owned();
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let escaped = match (b, bytes.get(i + 1..i + 3)) {
            (b'%', Some(hex)) if hex.iter().all(u8::is_ascii_hexdigit) => std::str::from_utf8(hex)
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .filter(|d| {
                    !matches!(d, b'/' | b'?' | b'#' | b'%' | b'&' | b'=') && !d.is_ascii_control()
                }),
            _ => None,
        };
        match escaped {
            Some(decoded) => {
                out.push(decoded);
                i += 3;
            }
            None => {
                out.push(if plus_is_space && b == b'+' { b' ' } else { b });
                i += 1;
            }
        }
    }
    utf8_or_escaped(&out)
}

/// `bytes` as text, with every byte that is not part of valid UTF-8 written as `%XX`.
fn utf8_or_escaped(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    let mut rest = bytes;
    loop {
        match std::str::from_utf8(rest) {
            Ok(text) => {
                out.push_str(text);
                return out;
            }
            Err(error) => {
                let (good, bad) = rest.split_at(error.valid_up_to());
                out.push_str(std::str::from_utf8(good).unwrap_or_default());
                let n = error.error_len().unwrap_or(bad.len()).min(bad.len());
                for b in &bad[..n] {
                    out.push_str(&format!("%{b:02X}"));
                }
                rest = &bad[n..];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_url_replaces_query_values_and_keeps_names() {
        assert_eq!(redact_url("/mcp"), "/mcp");
        assert_eq!(
            redact_url("/mcp?access_token=eyJhbGciOi.x.y&x=1"),
            "/mcp?access_token=REDACTED&x=REDACTED"
        );
        assert_eq!(
            redact_url("/mcp?flag&a=&&b=c"),
            "/mcp?REDACTED&a=REDACTED&&b=REDACTED"
        );
        assert_eq!(redact_url("/mcp?"), "/mcp?");
        assert_eq!(redact_url(""), "");
        // A value may hold `=`: everything after the first one goes.
        assert_eq!(redact_url("/a?t=x=y"), "/a?t=REDACTED");
    }

    #[test]
    fn redact_url_removes_userinfo() {
        assert_eq!(
            redact_url("https://user:pa55@hooks.example.com:8443/alert?key=s3cret"),
            "https://hooks.example.com:8443/alert?key=REDACTED"
        );
        assert_eq!(redact_url("http://token@host"), "http://host");
        assert_eq!(
            redact_url("http://a:b@c@host/p"),
            "http://host/p",
            "the last @ ends the userinfo"
        );
        // A URL inside the path too.
        assert_eq!(
            redact_url("/go/https://u:p@evil.example/x"),
            "/go/https://evil.example/x"
        );
        assert_eq!(
            redact_url("http://host/a@b"),
            "http://host/a@b",
            "an @ in the path stays"
        );
    }

    #[test]
    fn redact_url_redacts_the_fragment() {
        assert_eq!(
            redact_url("/cb#access_token=abc&state=4111111111111111"),
            "/cb#access_token=REDACTED&state=REDACTED"
        );
        assert_eq!(redact_url("/page#section"), "/page#REDACTED");
        assert_eq!(redact_url("/page?q=1#"), "/page?q=REDACTED#");
    }

    #[test]
    fn redact_url_decodes_percent_encoded_card_numbers_for_the_masker() {
        // In a query value it is gone anyway.
        assert_eq!(
            redact_url("/mcp?card=4111%201111%201111%201111"),
            "/mcp?card=REDACTED"
        );
        // In a name or the path it is decoded, so that the masker sees it.
        assert_eq!(
            redact_url("/mcp?4111+1111+1111+1111=1&%34%31%31%31111111111111=2"),
            "/mcp?4111 1111 1111 1111=REDACTED&4111111111111111=REDACTED"
        );
        assert_eq!(
            redact_url("/mcp/4111%201111%201111%201111"),
            "/mcp/4111 1111 1111 1111"
        );
        // Separators and escapes that carry meaning stay encoded; bad escapes stay as they are.
        assert_eq!(redact_url("/a%2Fb%25%3F%23%0A"), "/a%2Fb%25%3F%23%0A");
        assert_eq!(redact_url("/a%zz%4"), "/a%zz%4");
        // Decoded bytes that are not UTF-8 are escaped again; the rest is still decoded.
        assert_eq!(redact_url("/%FF%34%31"), "/%FF41");
        assert_eq!(redact_url("/caf%C3%A9"), "/café");
    }
}
