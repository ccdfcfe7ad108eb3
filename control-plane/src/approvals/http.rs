//! A minimal HTTP/1.1 client for `http://` URLs (the approval webhook and an operator JWKS
//! served without TLS): one request per connection, `Connection: close`, bounded time and
//! size. No TLS: an `https://` URL is refused with a clear error.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Longest answer read (a JWKS or a webhook's reply).
const MAX_RESPONSE: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("only http:// urls are supported here, not {0:?}")]
    Scheme(String),
    #[error("bad url {0:?}")]
    Url(String),
    #[error("{url}: {source}")]
    Io { url: String, source: std::io::Error },
    #[error("{0}: no answer in time")]
    Timeout(String),
    #[error("{url}: answered http {status}")]
    Status { url: String, status: u16 },
    #[error("{0}: malformed http response")]
    Malformed(String),
}

struct Target<'a> {
    host_port: &'a str,
    host: &'a str,
    path: &'a str,
}

fn parse(url: &str) -> Result<Target<'_>, HttpError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| HttpError::Scheme(url.to_string()))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err(HttpError::Url(url.to_string()));
    }
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => authority,
    };
    Ok(Target {
        host_port: authority,
        host,
        path,
    })
}

/// Sends one request and returns the body of a 2xx answer.
pub async fn send(
    method: &str,
    url: &str,
    content_type: Option<&str>,
    body: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, HttpError> {
    tokio::time::timeout(timeout, exchange(method, url, content_type, body))
        .await
        .map_err(|_| HttpError::Timeout(url.to_string()))?
}

async fn exchange(
    method: &str,
    url: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Vec<u8>, HttpError> {
    let target = parse(url)?;
    let io = |source| HttpError::Io {
        url: url.to_string(),
        source,
    };
    let address = if target.host_port.contains(':') {
        target.host_port.to_string()
    } else {
        format!("{}:80", target.host_port)
    };
    let mut stream = tokio::net::TcpStream::connect(address).await.map_err(io)?;
    let mut head = format!(
        "{method} {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: tollgate\r\nConnection: close\r\nContent-Length: {}\r\n",
        target.path,
        target.host,
        body.len()
    );
    if let Some(content_type) = content_type {
        head.push_str(&format!("Content-Type: {content_type}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.map_err(io)?;
    stream.write_all(body).await.map_err(io)?;
    let mut answer = Vec::new();
    (&mut stream)
        .take(MAX_RESPONSE as u64)
        .read_to_end(&mut answer)
        .await
        .map_err(io)?;
    let malformed = || HttpError::Malformed(url.to_string());
    let end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(malformed)?;
    let head = std::str::from_utf8(&answer[..end]).map_err(|_| malformed())?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(malformed)?;
    if !(200..300).contains(&status) {
        return Err(HttpError::Status {
            url: url.to_string(),
            status,
        });
    }
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = answer[end + 4..].to_vec();
    if chunked {
        dechunk(&body).ok_or_else(malformed)
    } else {
        Ok(body)
    }
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_chunks_parse() {
        let t = parse("http://127.0.0.1:8080/hook?x=1").unwrap();
        assert_eq!(
            (t.host_port, t.host, t.path),
            ("127.0.0.1:8080", "127.0.0.1", "/hook?x=1")
        );
        assert_eq!(parse("http://example.com").unwrap().path, "/");
        assert!(matches!(
            parse("https://example.com/"),
            Err(HttpError::Scheme(_))
        ));
        assert_eq!(
            dechunk(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap(),
            b"abcde"
        );
    }
}
