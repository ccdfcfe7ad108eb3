//! TLS on the control plane's gRPC port, both sides of it.
//!
//! The server asks every client for a certificate but does not require one: the gateway (each
//! Envoy) proves itself with a client certificate from the configured CA, operators with a token
//! on every call ([`crate::access`] decides which a method needs). A certificate that does not
//! chain to the CA fails the handshake, and the failure is recorded.
//!
//! With no certificate configured, `serve` creates a development PKI under `<home>/tls/` (as it
//! creates the dev token issuer): a CA, the control plane's server certificate and the gateway's
//! client certificate. The `tollgate` commands trust `<home>/tls/ca.pem` (or `--ca`).

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;

/// The identity (URI subject alternative name) of the dev gateway certificate, and the default
/// of `--gateway-identity`. Under Istio a gateway's identity is its SPIFFE id.
pub const GATEWAY_IDENTITY: &str = "spiffe://tollgate.local/gateway";
/// The URI name of the dev control-plane certificate (Envoy can pin it).
pub const CONTROL_PLANE_IDENTITY: &str = "spiffe://tollgate.local/control-plane";

/// A client that connects and never finishes its handshake must not hold a task forever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// Certificate chain (PEM) the control plane serves. Default: <home>/tls/control-plane.pem,
    /// created with a development CA when <home>/tls/ holds none.
    #[arg(long, env = "TOLLGATE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, env = "TOLLGATE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// CA certificates (PEM) that gateway client certificates must chain to.
    /// Default: <home>/tls/ca.pem.
    #[arg(long, env = "TOLLGATE_CLIENT_CA")]
    pub client_ca: Option<PathBuf>,
    /// Identity of a gateway: a URI (SPIFFE id) or DNS subject alternative name its client
    /// certificate must carry. Comma-separated or repeated for several.
    #[arg(
        long = "gateway-identity",
        env = "TOLLGATE_GATEWAY_IDENTITY",
        value_delimiter = ',',
        default_value = GATEWAY_IDENTITY
    )]
    pub gateway_identities: Vec<String>,
    /// Serve gRPC without TLS. Anyone who reaches the port is then taken for the gateway: only
    /// behind a proxy that authenticates callers itself (a mesh sidecar with mTLS and an
    /// AuthorizationPolicy). Warned about at start and recorded in `controlPlane.start`.
    #[arg(long, env = "TOLLGATE_INSECURE_PLAINTEXT", conflicts_with_all = ["tls_cert", "client_ca"])]
    pub insecure_plaintext: bool,
}

/// How the gRPC port is served.
pub enum Transport {
    Tls {
        acceptor: TlsAcceptor,
        /// For the start record: the files in use and whether they are the dev PKI.
        description: Value,
    },
    Plaintext,
}

impl Transport {
    /// Loads the configured certificates, or the dev PKI under `home` (created when missing).
    pub fn load(args: &ServerArgs, home: &Path) -> anyhow::Result<Self> {
        if args.insecure_plaintext {
            return Ok(Self::Plaintext);
        }
        let dev = DevPki::at(home);
        let (cert, key, dev_files) = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => (cert.clone(), key.clone(), false),
            _ => {
                if dev.ensure()? {
                    eprintln!(
                        "tollgate: created a development CA and certificates in {}",
                        dev.dir.display()
                    );
                }
                (dev.control_plane_cert(), dev.control_plane_key(), true)
            }
        };
        let ca = args.client_ca.clone().unwrap_or_else(|| dev.ca());
        let config = server_config(&cert, &key, &ca)?;
        Ok(Self::Tls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            description: json!({
                "certificate": cert.display().to_string(),
                "clientCa": ca.display().to_string(),
                "devPki": dev_files && args.client_ca.is_none(),
                "clientCertificates": "gateway methods",
            }),
        })
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading certificates from {}", path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "{} holds no certificate", path.display());
    Ok(certs)
}

/// TLS 1.2/1.3 with ALPN h2; a client certificate is asked for and, when one is sent, must
/// chain to `ca`.
fn server_config(cert: &Path, key: &Path, ca: &Path) -> anyhow::Result<rustls::ServerConfig> {
    let mut roots = RootCertStore::empty();
    for certificate in read_certs(ca)? {
        roots
            .add(certificate)
            .with_context(|| format!("{} is not a usable CA certificate", ca.display()))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .allow_unauthenticated()
        .build()
        .context("building the client certificate verifier")?;
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading the private key {}", key.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(read_certs(cert)?, key)
        .with_context(|| format!("{} does not match its key", cert.display()))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Accepts TCP connections and completes their TLS handshakes off the accept loop; what fails
/// the handshake goes to `refused` (peer, reason) instead of the server.
pub fn incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    refused: impl Fn(SocketAddr, String) + Clone + Send + Sync + 'static,
) -> ReceiverStream<std::io::Result<TlsStream<TcpStream>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of descriptors and the like: back off instead of spinning.
                        eprintln!("tollgate: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                () = tx.closed() => return,
            };
            // Small unary calls: Nagle's delay would add tens of milliseconds to every append.
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx, refused) = (acceptor.clone(), tx.clone(), refused.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => refused(peer, format!("TLS handshake failed: {e}")),
                    Err(_) => refused(peer, "TLS handshake timed out".into()),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// The identities (URI and DNS subject alternative names) of a verified client certificate.
pub fn certificate_identities(certificate: &CertificateDer<'_>) -> Vec<String> {
    match webpki::EndEntityCert::try_from(certificate) {
        Ok(cert) => cert
            .valid_uri_names()
            .chain(cert.valid_dns_names())
            .map(str::to_owned)
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// The development PKI under `<home>/tls/`.
pub struct DevPki {
    pub dir: PathBuf,
}

impl DevPki {
    pub fn at(home: &Path) -> Self {
        Self {
            dir: home.join("tls"),
        }
    }
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    /// Kept so that more dev certificates can be issued (a second Envoy, a test's impostor).
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca-key.pem")
    }
    pub fn control_plane_cert(&self) -> PathBuf {
        self.dir.join("control-plane.pem")
    }
    pub fn control_plane_key(&self) -> PathBuf {
        self.dir.join("control-plane-key.pem")
    }
    pub fn gateway_cert(&self) -> PathBuf {
        self.dir.join("gateway.pem")
    }
    pub fn gateway_key(&self) -> PathBuf {
        self.dir.join("gateway-key.pem")
    }

    /// Creates the CA and both certificates unless they all exist; true when it created them.
    /// Written into a fresh directory that is then renamed, so a crash leaves all or nothing.
    pub fn ensure(&self) -> anyhow::Result<bool> {
        let files = [
            self.ca(),
            self.ca_key(),
            self.control_plane_cert(),
            self.control_plane_key(),
            self.gateway_cert(),
            self.gateway_key(),
        ];
        if files.iter().all(|f| f.exists()) {
            return Ok(false);
        }
        let staging = self.dir.with_extension("new");
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(&staging)
            .with_context(|| format!("cannot create {}", staging.display()))?;
        let generated = generate().context("generating the development certificates")?;
        for (name, text, private) in generated {
            let path = staging.join(name);
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(if private { 0o600 } else { 0o644 })
                .open(&path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
        }
        if self.dir.exists() {
            std::fs::remove_dir_all(&self.dir)
                .with_context(|| format!("cannot replace {}", self.dir.display()))?;
        }
        std::fs::rename(&staging, &self.dir)
            .with_context(|| format!("cannot create {}", self.dir.display()))?;
        Ok(true)
    }
}

/// (file name, PEM text, private) of the dev CA, the control plane's server certificate (for
/// localhost, 127.0.0.1 and ::1) and the gateway's client certificate.
fn generate() -> Result<Vec<(&'static str, String, bool)>, rcgen::Error> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose, SanType,
    };
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, "Tollgate development CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key)?;

    let leaf = |names: Vec<String>,
                uri: &str,
                common_name: &str,
                usage: ExtendedKeyUsagePurpose|
     -> Result<(String, String), rcgen::Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names)?;
        params.subject_alt_names.push(SanType::URI(uri.try_into()?));
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &ca_cert, &ca_key)?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    let (server_cert, server_key) = leaf(
        vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
        CONTROL_PLANE_IDENTITY,
        "tollgate control plane",
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    let (gateway_cert, gateway_key) = leaf(
        Vec::new(),
        GATEWAY_IDENTITY,
        "tollgate gateway",
        ExtendedKeyUsagePurpose::ClientAuth,
    )?;
    Ok(vec![
        ("ca.pem", ca_cert.pem(), false),
        ("ca-key.pem", ca_key.serialize_pem(), true),
        ("control-plane.pem", server_cert, false),
        ("control-plane-key.pem", server_key, true),
        ("gateway.pem", gateway_cert, false),
        ("gateway-key.pem", gateway_key, true),
    ])
}

/// The CA the `tollgate` commands trust, set once from `--ca` or the home directory.
static CLIENT_CA: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

pub fn trust_for_clients(ca: PathBuf) {
    let _ = CLIENT_CA.set(ca);
}

/// The client side, for the `tollgate` commands: `https://` URLs get TLS trusting the CA of
/// [`trust_for_clients`]; `http://` ones (a control plane run with --insecure-plaintext) none.
/// The control plane's address as a URL: `host:port` (what `serve --listen` and `make run`
/// take) means `https://host:port`; `http://` (plaintext) and `https://` are kept.
pub fn control_plane_url(address: &str) -> String {
    let address = address.trim();
    if address.contains("://") {
        address.to_owned()
    } else {
        format!("https://{address}")
    }
}

pub fn endpoint(server: &str) -> anyhow::Result<tonic::transport::Endpoint> {
    let server = control_plane_url(server);
    let server = server.as_str();
    let endpoint = tonic::transport::Endpoint::from_shared(server.to_owned())
        .with_context(|| format!("invalid control plane address {server:?}"))?;
    if !server.starts_with("https://") {
        return Ok(endpoint);
    }
    let ca = CLIENT_CA
        .get()
        .context("no CA to trust for the control plane (set --ca or TOLLGATE_CA)")?;
    let pem = std::fs::read(ca).with_context(|| {
        format!(
            "cannot read the control plane's CA {} (set --ca or TOLLGATE_CA)",
            ca.display()
        )
    })?;
    endpoint
        .tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(pem)),
        )
        .context("configuring TLS")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dev_pki_names_each_side_and_keeps_its_keys_private() {
        let home = tempfile::tempdir().unwrap();
        let pki = DevPki::at(home.path());
        assert!(pki.ensure().unwrap());
        assert!(!pki.ensure().unwrap(), "a second call keeps the PKI");
        let gateway = read_certs(&pki.gateway_cert()).unwrap();
        assert_eq!(certificate_identities(&gateway[0]), [GATEWAY_IDENTITY]);
        let server = read_certs(&pki.control_plane_cert()).unwrap();
        let names = certificate_identities(&server[0]);
        assert!(
            names.contains(&CONTROL_PLANE_IDENTITY.to_string()),
            "{names:?}"
        );
        assert!(names.contains(&"localhost".to_string()), "{names:?}");
        use std::os::unix::fs::PermissionsExt;
        for key in [pki.ca_key(), pki.gateway_key(), pki.control_plane_key()] {
            let mode = std::fs::metadata(key).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "a private key readable by others");
        }
        server_config(
            &pki.control_plane_cert(),
            &pki.control_plane_key(),
            &pki.ca(),
        )
        .unwrap();
    }
}
