//! Operator sign-in: a bearer OIDC token in the `authorization` metadata, verified against the
//! issuer's JWKS (a file, or an https:// URL refreshed in the background) with `iss`, `aud` and
//! `exp` checked. The access layer (`crate::access`) verifies every operator call with one
//! [`OperatorAuth`] and puts the [`VerifiedOperator`] into the request's extensions.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{errors::ErrorKind, Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use tonic::{Request, Status};

use super::http;

/// How often a JWKS URL is fetched again (keys rotate; an unknown `kid` also triggers a fetch).
const REFRESH_EVERY: Duration = Duration::from_secs(300);
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub enum JwksSource {
    File(PathBuf),
    Url(String),
    /// OpenID Connect discovery: the issuer's `/.well-known/openid-configuration` names its
    /// `jwks_uri` (read again at every refresh, so a provider may move its keys).
    Discovery(String),
}

impl std::fmt::Display for JwksSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(path) => write!(f, "{}", path.display()),
            Self::Url(url) => f.write_str(url),
            Self::Discovery(issuer) => write!(f, "{issuer} (OpenID Connect discovery)"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("operator token expired; get a new one")]
    Expired,
    #[error("operator token is not valid: {0}")]
    Invalid(String),
    #[error("operator token is not from issuer {0:?}")]
    Issuer(String),
    #[error("operator token is not for audience {0:?}")]
    Audience(String),
    #[error("operator token is signed by an unknown key {0:?}")]
    UnknownKey(String),
    #[error("operator keys {source_name}: {message}")]
    Keys {
        source_name: String,
        message: String,
    },
}

impl From<AuthError> for Status {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::Keys { .. } => Status::unavailable(error.to_string()),
            _ => Status::unauthenticated(error.to_string()),
        }
    }
}

/// An operator whose token verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedOperator {
    pub sub: String,
    pub groups: Vec<String>,
    pub email: Option<String>,
    pub jti: Option<String>,
    /// The whole verified payload: revocations name any claim.
    pub claims: Map<String, Value>,
}

impl VerifiedOperator {
    /// The token's `exp`, seconds since the epoch: what the operator's sign-in lasts to.
    pub fn expires(&self) -> Option<u64> {
        self.claims.get("exp").and_then(Value::as_u64)
    }

    /// The operator as a caller that revocations are matched against.
    pub fn identity(&self) -> tollgate_engine::identity::Identity {
        tollgate_engine::identity::Identity {
            sub: self.sub.clone(),
            claims: self.claims.clone(),
            accountable: None,
        }
    }

    /// The operator of a call, or UNAUTHENTICATED.
    pub fn of<T>(request: &Request<T>) -> Result<Self, Status> {
        if let Some(operator) = request.extensions().get::<Self>() {
            return Ok(operator.clone());
        }
        Err(Status::unauthenticated(
            "an operator token is required: send `authorization: Bearer <token>` (the CLI reads TOLLGATE_TOKEN)",
        ))
    }
}

struct Keys {
    set: JwkSet,
    modified: Option<SystemTime>,
}

/// The operator token verifier.
pub struct OperatorAuth {
    source: JwksSource,
    issuer: String,
    audience: String,
    keys: RwLock<Keys>,
    refresh: tokio::sync::Notify,
    /// When a token with an unknown `kid` last made `verify` fetch the JWKS URL and wait for it.
    last_unknown_kid_fetch: Mutex<Option<Instant>>,
}

/// At most one waiting fetch for an unknown `kid` this often: tokens with made-up key ids must
/// not turn the control plane into a JWKS fetch loop.
const UNKNOWN_KID_FETCH_EVERY: Duration = Duration::from_secs(10);

impl OperatorAuth {
    /// Loads the keys once, or fails: a control plane whose operators cannot sign in must say
    /// so at start, not with "signed by an unknown key" later. A URL is then fetched again in
    /// the background.
    pub async fn new(
        source: JwksSource,
        issuer: String,
        audience: String,
    ) -> Result<Arc<Self>, AuthError> {
        let (set, modified) = load(&source).await?;
        let auth = Arc::new(Self {
            source,
            issuer,
            audience,
            keys: RwLock::new(Keys { set, modified }),
            refresh: tokio::sync::Notify::new(),
            last_unknown_kid_fetch: Mutex::new(None),
        });
        if matches!(auth.source, JwksSource::Url(_) | JwksSource::Discovery(_)) {
            let weak = Arc::downgrade(&auth);
            tokio::spawn(async move {
                loop {
                    let Some(auth) = weak.upgrade() else { return };
                    let _ = tokio::time::timeout(REFRESH_EVERY, auth.refresh.notified()).await;
                    match load(&auth.source).await {
                        Ok((set, modified)) => {
                            *auth.keys.write().unwrap_or_else(|e| e.into_inner()) =
                                Keys { set, modified }
                        }
                        Err(e) => eprintln!("tollgate: {e}"),
                    }
                }
            });
        }
        Ok(auth)
    }

    /// Verifies `token`: signature by a key of the JWKS, `iss`, `aud`, `exp` (and `nbf`).
    pub fn verify(&self, token: &str) -> Result<VerifiedOperator, AuthError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        if matches!(
            header.alg,
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
        ) {
            return Err(AuthError::Invalid(
                "symmetric algorithms are not accepted".into(),
            ));
        }
        let kid = header.kid.clone().unwrap_or_default();
        let key = match self.find(&kid) {
            Some(key) => key,
            None => {
                self.reload_file();
                if self.find(&kid).is_none() {
                    self.fetch_for_unknown_kid();
                }
                self.find(&kid)
                    .ok_or_else(|| AuthError::UnknownKey(kid.clone()))?
            }
        }?;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::InvalidIssuer => AuthError::Issuer(self.issuer.clone()),
                ErrorKind::InvalidAudience => AuthError::Audience(self.audience.clone()),
                _ => AuthError::Invalid(e.to_string()),
            })?
            .claims;
        let text = |name: &str| claims.get(name).and_then(Value::as_str).map(str::to_string);
        let sub = text("sub")
            .filter(|s| !s.is_empty())
            .ok_or_else(|| AuthError::Invalid("no sub".into()))?;
        let groups = match claims.get("groups") {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
            Some(Value::String(one)) => one
                .split([',', ' '])
                .filter(|g| !g.is_empty())
                .map(str::to_string)
                .collect(),
            _ => Vec::new(),
        };
        Ok(VerifiedOperator {
            sub,
            groups,
            email: text("email"),
            jti: text("jti"),
            claims,
        })
    }

    fn find(&self, kid: &str) -> Option<Result<DecodingKey, AuthError>> {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        let jwk = if kid.is_empty() && keys.set.keys.len() == 1 {
            keys.set.keys.first()
        } else {
            keys.set.find(kid)
        }?;
        Some(DecodingKey::from_jwk(jwk).map_err(|e| AuthError::Invalid(e.to_string())))
    }

    /// A key the provider has just started signing with is not in the cached JWKS yet: fetch the
    /// URL now and wait for it, so the operator's first call after a rotation is not refused.
    /// Interceptors are synchronous, so this blocks the calling worker thread for the fetch (on the
    /// multi-threaded runtime `serve` uses; elsewhere the background refresh is woken instead).
    fn fetch_for_unknown_kid(&self) {
        if matches!(self.source, JwksSource::File(_)) {
            return;
        }
        {
            let mut last = self
                .last_unknown_kid_fetch
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|t| t.elapsed() < UNKNOWN_KID_FETCH_EVERY) {
                return;
            }
            *last = Some(Instant::now());
        }
        let handle = match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => h,
            _ => {
                self.refresh.notify_one();
                return;
            }
        };
        match tokio::task::block_in_place(|| handle.block_on(load(&self.source))) {
            Ok((set, modified)) => {
                *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Keys { set, modified }
            }
            Err(e) => eprintln!("tollgate: {e}"),
        }
    }

    /// A JWKS file that changed since it was read is read again (key rotation).
    fn reload_file(&self) {
        let JwksSource::File(path) = &self.source else {
            return;
        };
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        if modified.is_some()
            && modified == self.keys.read().unwrap_or_else(|e| e.into_inner()).modified
        {
            return;
        }
        match std::fs::read(path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<JwkSet>(&b).map_err(|e| e.to_string()))
        {
            Ok(set) => {
                *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Keys { set, modified }
            }
            Err(e) => eprintln!("tollgate: operator keys {}: {e}", path.display()),
        }
    }
}

/// The `jwks_uri` of `issuer`'s discovery document, which must name the same issuer (OpenID
/// Connect Discovery 1.0, section 4.3) and keep the issuer's scheme.
async fn discover(issuer: &str) -> Result<String, String> {
    let url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let bytes = http::send("GET", &url, None, b"", FETCH_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    let document: Value = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{url} is not a discovery document: {e}"))?;
    if document["issuer"].as_str() != Some(issuer) {
        return Err(format!(
            "{url} names issuer {}, not {issuer:?}",
            document["issuer"]
        ));
    }
    let jwks = document["jwks_uri"]
        .as_str()
        .ok_or_else(|| format!("{url} has no jwks_uri"))?;
    if issuer.starts_with("https://") && !jwks.starts_with("https://") {
        return Err(format!("{url}: jwks_uri {jwks:?} is not https"));
    }
    Ok(jwks.to_owned())
}

async fn load(source: &JwksSource) -> Result<(JwkSet, Option<SystemTime>), AuthError> {
    let fail = |message: String| AuthError::Keys {
        source_name: source.to_string(),
        message,
    };
    let (bytes, modified) = match source {
        JwksSource::File(path) => (
            tokio::fs::read(path)
                .await
                .map_err(|e| fail(e.to_string()))?,
            std::fs::metadata(path).and_then(|m| m.modified()).ok(),
        ),
        JwksSource::Discovery(issuer) => (
            http::send(
                "GET",
                &discover(issuer).await.map_err(fail)?,
                None,
                b"",
                FETCH_TIMEOUT,
            )
            .await
            .map_err(|e| fail(e.to_string()))?,
            None,
        ),
        JwksSource::Url(url) => (
            http::send("GET", url, None, b"", FETCH_TIMEOUT)
                .await
                .map_err(|e| fail(e.to_string()))?,
            None,
        ),
    };
    let set = serde_json::from_slice(&bytes).map_err(|e| fail(format!("not a JWKS: {e}")))?;
    Ok((set, modified))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::issuer::{self, DevIssuer, TokenRequest};

    fn token(home: &std::path::Path, expired: bool, claims: Vec<(String, Value)>) -> String {
        let dev = DevIssuer::at(home);
        dev.ensure(false).unwrap();
        let request = TokenRequest {
            sub: "olga@example.com".into(),
            groups: vec!["payments-approvers".into()],
            email: None,
            audience: issuer::AUDIENCE.into(),
            ttl: Duration::from_secs(600),
            expired,
            claims,
        };
        let key = issuer::load_key(&dev.key_path).unwrap();
        issuer::mint(&key, &dev.kid().unwrap(), &request, SystemTime::now()).unwrap()
    }

    #[tokio::test]
    async fn dev_tokens_verify_and_bad_ones_are_refused() {
        let home = tempfile::tempdir().unwrap();
        let good = token(home.path(), false, vec![]);
        let auth = OperatorAuth::new(
            JwksSource::File(DevIssuer::at(home.path()).jwks_path),
            issuer::ISSUER.into(),
            issuer::AUDIENCE.into(),
        )
        .await
        .unwrap();
        let operator = auth.verify(&good).unwrap();
        assert_eq!(operator.sub, "olga@example.com");
        assert_eq!(operator.groups, ["payments-approvers"]);
        assert!(matches!(
            auth.verify(&token(home.path(), true, vec![])),
            Err(AuthError::Expired)
        ));
        let wrong_iss = token(
            home.path(),
            false,
            vec![("iss".into(), "https://evil".into())],
        );
        assert!(matches!(auth.verify(&wrong_iss), Err(AuthError::Issuer(_))));
        let wrong_aud = token(home.path(), false, vec![("aud".into(), "other".into())]);
        assert!(matches!(
            auth.verify(&wrong_aud),
            Err(AuthError::Audience(_))
        ));
        assert!(auth.verify("not.a.token").is_err());
    }

    /// Serves `jwks` over plain HTTP, counting fetches.
    async fn serve_jwks(
        jwks: Arc<Mutex<String>>,
        fetches: Arc<std::sync::atomic::AtomicUsize>,
    ) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut buf = [0u8; 4096];
                let _ = socket.read(&mut buf).await;
                fetches.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let body = jwks.lock().unwrap().clone();
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            }
        });
        url
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rotated_in_key_verifies_on_first_use_and_made_up_kids_do_not_loop_fetches() {
        let old_home = tempfile::tempdir().unwrap();
        let new_home = tempfile::tempdir().unwrap();
        let old_token = token(old_home.path(), false, vec![]);
        let new_token = token(new_home.path(), false, vec![]);
        let read = |home: &std::path::Path| {
            std::fs::read_to_string(DevIssuer::at(home).jwks_path).unwrap()
        };
        let jwks = Arc::new(Mutex::new(read(old_home.path())));
        let fetches = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let url = serve_jwks(jwks.clone(), fetches.clone()).await;
        let auth = OperatorAuth::new(
            JwksSource::Url(url),
            issuer::ISSUER.into(),
            issuer::AUDIENCE.into(),
        )
        .await
        .unwrap();
        assert!(auth.verify(&old_token).is_ok());

        // The provider rotates: the new key is published and signs at once.
        *jwks.lock().unwrap() = read(new_home.path());
        let operator = auth.verify(&new_token).expect("first use of the new key");
        assert_eq!(operator.sub, "olga@example.com");

        // Unknown key ids within the interval cost no further waiting fetch.
        let before = fetches.load(std::sync::atomic::Ordering::SeqCst);
        assert!(matches!(
            auth.verify(&old_token),
            Err(AuthError::UnknownKey(_))
        ));
        assert!(auth.verify(&old_token).is_err());
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(fetches.load(std::sync::atomic::Ordering::SeqCst), before);
    }
}
