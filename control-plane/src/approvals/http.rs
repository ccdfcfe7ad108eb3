//! The control plane's HTTP client, for the operators' JWKS, the approval webhook and the
//! witnesses: reqwest
//! over rustls (ring). `https://` is verified against the web PKI roots (webpki-roots) and the
//! CA bundle of `serve --http-ca`, if any; `http://` is used only where a URL says so (a
//! trusted network, a test). Redirects are not followed, answers are bounded in time and size.

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Longest answer read (a JWKS or a webhook's reply).
const MAX_RESPONSE: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{0:?} is not an http:// or https:// url with a host")]
    Url(String),
    #[error("{url}: {message}")]
    Transport { url: String, message: String },
    #[error("{url}: answered http {status}")]
    Status { url: String, status: u16 },
    #[error("{0}: the answer is larger than 1 MiB")]
    TooLarge(String),
    #[error("the CA bundle {path}: {message}")]
    Ca { path: String, message: String },
}

static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();

/// Builds the shared client, trusting `extra_ca` (a PEM bundle) besides the web PKI roots.
/// Called once by `serve`; without it, the first request builds a client with the roots only.
pub fn init(extra_ca: Option<&Path>) -> Result<(), HttpError> {
    let client = build(extra_ca)?;
    // A second call (tests) keeps the first client.
    let _ = CLIENT.set(client);
    Ok(())
}

fn build(extra_ca: Option<&Path>) -> Result<reqwest::Client, HttpError> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = extra_ca {
        let ca_error = |message: String| HttpError::Ca {
            path: path.display().to_string(),
            message,
        };
        let pem = std::fs::read(path).map_err(|e| ca_error(e.to_string()))?;
        let mut added = 0;
        for cert in rustls_pemfile_certs(&pem).map_err(ca_error)? {
            roots
                .add(cert)
                .map_err(|e| ca_error(format!("not a CA certificate: {e}")))?;
            added += 1;
        }
        if added == 0 {
            return Err(ca_error("no certificate in it".into()));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| HttpError::Transport {
            url: String::new(),
            message: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("tollgate/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| HttpError::Transport {
            url: String::new(),
            message: e.to_string(),
        })
}

/// Certificates of a PEM bundle.
fn rustls_pemfile_certs(
    pem: &[u8],
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not PEM: {e}"))
}

pub(crate) fn client() -> Result<&'static reqwest::Client, HttpError> {
    if let Some(client) = CLIENT.get() {
        return Ok(client);
    }
    let client = build(None)?;
    Ok(CLIENT.get_or_init(|| client))
}

/// Whether `url` can be used at all: `http://` or `https://` with a host. `serve` refuses to
/// start on one that cannot.
pub fn check_url(url: &str) -> Result<reqwest::Url, HttpError> {
    let parsed = reqwest::Url::parse(url).map_err(|_| HttpError::Url(url.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(HttpError::Url(url.to_string()));
    }
    Ok(parsed)
}

/// Sends one request and returns the body of a 2xx answer.
pub async fn send(
    method: &str,
    url: &str,
    content_type: Option<&str>,
    body: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, HttpError> {
    let parsed = check_url(url)?;
    let method = reqwest::Method::from_bytes(method.as_bytes())
        .map_err(|_| HttpError::Url(url.to_string()))?;
    let transport = |e: reqwest::Error| HttpError::Transport {
        url: url.to_string(),
        message: describe(&e),
    };
    let mut request = client()?
        .request(method, parsed)
        .timeout(timeout)
        .body(body.to_vec());
    if let Some(content_type) = content_type {
        request = request.header(reqwest::header::CONTENT_TYPE, content_type);
    }
    let mut response = request.send().await.map_err(transport)?;
    let status = response.status().as_u16();
    if !(200..300).contains(&status) {
        return Err(HttpError::Status {
            url: url.to_string(),
            status,
        });
    }
    let mut answer = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(transport)? {
        if answer.len() + chunk.len() > MAX_RESPONSE {
            return Err(HttpError::TooLarge(url.to_string()));
        }
        answer.extend_from_slice(&chunk);
    }
    Ok(answer)
}

/// The error and its causes on one line ("error sending request: ... certificate not
/// trusted"): reqwest's own text alone hides the reason.
pub(crate) fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_and_https_urls_with_a_host_are_usable() {
        assert!(check_url("https://hooks.example.com/x?y=1").is_ok());
        assert!(check_url("http://127.0.0.1:8080/jwks").is_ok());
        for bad in [
            "ftp://x/y",
            "file:///etc/passwd",
            "hooks.example.com",
            "https://",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }
}
