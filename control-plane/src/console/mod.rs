//! The operator console: `tollgate serve --console ADDR`, a web UI for approvals (live),
//! sessions and their replay, evidence (chain head, checkpoints, witnesses, verification,
//! export) and identities (access review, revocation).
//!
//! The console holds no power of its own. Operators sign in at their OpenID provider
//! ([`signin`]); each page's data comes from the control plane's gRPC services, called in
//! process with the operator's own token through the same access layer as the CLI's calls
//! ([`InProcess`]): the same group rules, the same revocation checks, the same records. The
//! assets are compiled into the binary: no network and no Node at run time.

mod api;
mod assets;
mod pages;
pub mod signin;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};
use tonic::transport::{Channel, Endpoint};

use crate::approvals::auth::OperatorAuth;
use crate::issuer::DevIssuer;
use crate::operator::Operator;
use crate::store::Store;
use signin::{DevCodes, SignIns};

/// The resource indicator (RFC 8707) the console asks its tokens for by default.
pub const DEFAULT_RESOURCE: &str = "urn:tollgate:control-plane";
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a dev sign-in's token lasts.
const DEV_TOKEN_TTL: Duration = Duration::from_secs(8 * 3600);

/// `tollgate serve` options for the console.
#[derive(Debug, Clone, clap::Args)]
pub struct ConsoleSettings {
    /// Address for the operator console (approvals, sessions, evidence, identities in a
    /// browser); port 0 picks a free port. Plain HTTP: on an address other than loopback,
    /// --console-url must be the https:// address of the TLS proxy in front. Default: none.
    #[arg(long = "console", env = "TOLLGATE_CONSOLE", value_name = "ADDR")]
    pub console_listen: Option<SocketAddr>,
    /// The OAuth client the console signs operators in as, registered at the operators' issuer
    /// (--operator-issuer) with redirect URI <console URL>/auth/callback.
    #[arg(
        long = "console-client-id",
        env = "TOLLGATE_CONSOLE_CLIENT_ID",
        default_value = "tollgate-console"
    )]
    pub console_client_id: String,
    /// File holding the client's secret, for a confidential client. Default: a public client,
    /// protected by PKCE alone.
    #[arg(
        long = "console-client-secret-file",
        env = "TOLLGATE_CONSOLE_CLIENT_SECRET_FILE"
    )]
    pub console_client_secret_file: Option<PathBuf>,
    /// Resource indicator (RFC 8707) the console asks the issuer's tokens for: it must make the
    /// issuer put --operator-audience in `aud`.
    #[arg(long = "console-resource", env = "TOLLGATE_CONSOLE_RESOURCE", default_value = DEFAULT_RESOURCE)]
    pub console_resource: String,
    /// Sign operators in with the dev issuer (<home>/dev), for the demo: its sign-in page lets
    /// anyone who reaches the console name themselves and their groups. Refused unless the
    /// operators' issuer is the dev issuer.
    #[arg(long = "console-dev-sign-in", env = "TOLLGATE_CONSOLE_DEV_SIGN_IN")]
    pub console_dev_sign_in: bool,
}

/// Where operators sign in.
enum Provider {
    /// An OpenID provider, found through its discovery document.
    Remote {
        authorization_endpoint: String,
        token_endpoint: String,
        client_secret: Option<String>,
    },
    /// The dev issuer (`--console-dev-sign-in`), with its authorization endpoint here.
    Dev {
        key: p256::SecretKey,
        kid: String,
        codes: DevCodes,
    },
}

/// What the console needs from the rest of the control plane.
pub struct Parts {
    pub store: Arc<Store>,
    pub operators: Arc<OperatorAuth>,
    pub operator_issuer: String,
    pub operator_audience: String,
    pub home: PathBuf,
    pub published: Arc<crate::witness::Published>,
    /// Connections to the gRPC services, in process (see [`InProcess`]).
    pub services: Channel,
}

pub struct Console {
    settings: ConsoleSettings,
    /// The console's address as browsers reach it (no trailing slash).
    url: String,
    origin: String,
    secure_cookies: bool,
    /// Served over https (so Strict-Transport-Security is sent).
    hsts: bool,
    provider: Provider,
    signins: SignIns,
    parts: Parts,
    /// The last verification run from the console since the control plane started.
    last_verification: Mutex<Option<Value>>,
}

/// The console's address as people open it: `url` when given, else `http://ADDR`. A console on
/// a non-loopback address must be behind TLS.
pub fn public_url(listen: SocketAddr, url: Option<&str>) -> anyhow::Result<String> {
    let url = match url {
        Some(url) => url.to_owned(),
        None => format!("http://{listen}"),
    };
    let url = crate::approvals::check_console_url(&url).map_err(anyhow::Error::msg)?;
    let parsed = reqwest::Url::parse(&url).with_context(|| format!("console URL {url:?}"))?;
    let loopback = match parsed.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name == "localhost",
        None => false,
    };
    if parsed.scheme() != "https" && !(parsed.scheme() == "http" && loopback) {
        anyhow::bail!(
            "the console would be served over plain http at {url}: sessions and approvals must not cross a network unencrypted. Serve it on a loopback address, or put a TLS proxy in front and pass its https:// address as --console-url"
        );
    }
    Ok(url)
}

impl Console {
    /// Sets the console up: reads the issuer's discovery document (or the dev key), so that a
    /// console whose operators cannot sign in fails at start.
    pub async fn new(
        settings: ConsoleSettings,
        url: String,
        parts: Parts,
    ) -> anyhow::Result<Arc<Self>> {
        let parsed = reqwest::Url::parse(&url)?;
        let origin = parsed.origin().ascii_serialization();
        // Secure even on plain http: a console without TLS is only served on a loopback
        // address ([`public_url`]), where browsers keep and send Secure cookies.
        let hsts = parsed.scheme() == "https";
        let provider = if settings.console_dev_sign_in {
            if parts.operator_issuer != crate::issuer::ISSUER {
                anyhow::bail!(
                    "--console-dev-sign-in signs people in with the dev issuer, but operators' tokens come from {}: drop it and register the console at that issuer",
                    parts.operator_issuer
                );
            }
            let issuer = DevIssuer::at(&parts.home);
            let key = crate::issuer::load_key(&issuer.key_path)?;
            Provider::Dev {
                kid: issuer.kid()?,
                key,
                codes: DevCodes::default(),
            }
        } else if parts.operator_issuer == crate::issuer::ISSUER {
            anyhow::bail!(
                "the console signs operators in at their OpenID provider, and the operators' issuer is the dev issuer, which has no sign-in page: pass --operator-issuer (with the console registered there), or --console-dev-sign-in for a demo"
            );
        } else {
            let client_secret = match &settings.console_client_secret_file {
                Some(path) => Some(
                    std::fs::read_to_string(path)
                        .with_context(|| {
                            format!("--console-client-secret-file {}", path.display())
                        })?
                        .trim()
                        .to_owned(),
                ),
                None => None,
            };
            let (authorization_endpoint, token_endpoint) = discover(&parts.operator_issuer).await?;
            Provider::Remote {
                authorization_endpoint,
                token_endpoint,
                client_secret,
            }
        };
        Ok(Arc::new(Self {
            settings,
            url,
            origin,
            secure_cookies: true,
            hsts,
            provider,
            signins: SignIns::default(),
            parts,
            last_verification: Mutex::new(None),
        }))
    }

    fn redirect_uri(&self) -> String {
        format!("{}/auth/callback", self.url)
    }

    /// Records a console event as the control plane's own record.
    async fn record(&self, mut event: Map<String, Value>) {
        event.insert(
            "time".into(),
            crate::clock::format(crate::clock::now_micros()).into(),
        );
        if let Err(e) = self.parts.store.append_event(&event).await {
            eprintln!("tollgate: console: cannot record {}: {e}", event["event"]);
        }
    }

    /// The operator object of a console record: the verified operator and the browser.
    fn operator_json(
        operator: &crate::approvals::auth::VerifiedOperator,
        browser: SocketAddr,
    ) -> Value {
        Operator {
            name: Some("console".into()),
            peer: Some(browser.to_string()),
            verified: Some((operator.sub.clone(), operator.groups.clone())),
            ..Operator::default()
        }
        .to_json()
    }

    /// The routes.
    pub fn router(self: &Arc<Self>) -> axum::Router {
        use axum::routing::{get, post};
        let mut router = axum::Router::new()
            .route("/", get(pages::root))
            .route("/approvals", get(pages::page))
            .route("/approvals/{id}", get(pages::page))
            .route("/sessions", get(pages::page))
            .route("/sessions/{id}", get(pages::page))
            .route("/evidence", get(pages::page))
            .route("/identities", get(pages::page))
            .route("/assets/{name}", get(assets::serve))
            .route("/auth/login", get(pages::login))
            .route("/auth/callback", get(pages::callback))
            .route("/auth/logout", post(pages::logout))
            .merge(api::routes());
        if matches!(self.provider, Provider::Dev { .. }) {
            router = router.route(
                "/dev-sign-in",
                get(pages::dev_sign_in_form).post(pages::dev_sign_in),
            );
        }
        router
            .fallback(pages::not_found)
            .layer(axum::middleware::from_fn_with_state(
                self.clone(),
                security_headers,
            ))
            .with_state(self.clone())
    }

    /// Serves the console on `listener` until the process stops.
    pub async fn serve(self: Arc<Self>, listener: tokio::net::TcpListener) {
        let app = self
            .router()
            .into_make_service_with_connect_info::<SocketAddr>();
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("tollgate: console stopped: {e}");
        }
    }
}

/// The discovery document's authorization and token endpoints.
async fn discover(issuer: &str) -> anyhow::Result<(String, String)> {
    let url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let body = crate::approvals::http::send("GET", &url, None, b"", DISCOVERY_TIMEOUT)
        .await
        .with_context(|| format!("reading the operators' issuer's discovery document {url}"))?;
    let document: Value = serde_json::from_slice(&body)
        .with_context(|| format!("{url}: not a JSON discovery document"))?;
    let endpoint = |name: &str| -> anyhow::Result<String> {
        let value = document
            .get(name)
            .and_then(Value::as_str)
            .with_context(|| format!("{url} names no {name}"))?;
        crate::approvals::http::check_url(value).with_context(|| format!("{url}: {name}"))?;
        Ok(value.to_owned())
    };
    Ok((
        endpoint("authorization_endpoint")?,
        endpoint("token_endpoint")?,
    ))
}

/// Headers on every answer: a strict Content-Security-Policy (only the console's own scripts
/// and styles, no inline code, nothing framed), no MIME sniffing, no caching of pages or data.
async fn security_headers(
    State(console): State<Arc<Console>>,
    request: Request,
    next: Next,
) -> Response {
    let is_asset = request.uri().path().starts_with("/assets/");
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    let csp = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(csp),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // same-origin, not no-referrer: with no-referrer a browser sends `Origin: null` on POST,
    // and the CSRF check needs the real origin.
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(if is_asset { "no-cache" } else { "no-store" }),
    );
    if console.hsts {
        headers.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        );
    }
    response
}

/// An error answer for the API: a status and a message in JSON.
pub struct ApiError(pub StatusCode, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, axum::Json(serde_json::json!({"error": self.1}))).into_response()
    }
}

impl From<tonic::Status> for ApiError {
    fn from(status: tonic::Status) -> Self {
        use tonic::Code;
        let code = match status.code() {
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
            Code::FailedPrecondition | Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::Unavailable | Code::DeadlineExceeded => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_GATEWAY,
        };
        Self(code, status.message().to_owned())
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(error: anyhow::Error) -> Self {
        // A refusal from the access layer inside a read keeps its status.
        if let Some(status) = error
            .chain()
            .find_map(|e| e.downcast_ref::<tonic::Status>())
        {
            return Self::from(status.clone());
        }
        Self(StatusCode::BAD_GATEWAY, format!("{error:#}"))
    }
}

/// Connections from the console to the control plane's own gRPC services, in process: each
/// connection is one end of an in-memory pipe whose other end the gRPC server accepts like a
/// network connection. Such a connection presents no client certificate, so it can only make
/// operator calls, each with its operator's token.
pub struct InProcess {
    connections: tokio::sync::mpsc::Sender<std::io::Result<tokio::io::DuplexStream>>,
}

impl InProcess {
    /// The pipe's two sides: this, to make a channel from, and the stream of accepted
    /// connections to serve the gRPC router on.
    pub fn new() -> (
        Self,
        tokio_stream::wrappers::ReceiverStream<std::io::Result<tokio::io::DuplexStream>>,
    ) {
        let (sender, receiver) = tokio::sync::mpsc::channel(16);
        (
            Self {
                connections: sender,
            },
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )
    }

    pub fn channel(self) -> Channel {
        let connections = self.connections;
        Endpoint::from_static("http://control-plane.in-process").connect_with_connector_lazy(
            tower::service_fn(move |_: http::Uri| {
                let connections = connections.clone();
                async move {
                    let (console_side, server_side) = tokio::io::duplex(256 * 1024);
                    connections
                        .send(Ok(server_side))
                        .await
                        .map_err(|_| std::io::Error::other("the gRPC server has stopped"))?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(console_side))
                }
            }),
        )
    }
}
