//! The development token issuer: an ES256 key under `<home>/dev/`, its JWKS for Envoy's
//! `jwt_authn` (`local_jwks.filename`), and token minting for demos and tests.
//!
//! It stands in for a real OIDC provider only on a developer's machine; nothing in the data path
//! trusts it unless the Envoy configuration points at its JWKS.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

/// `iss` of every dev token.
pub const ISSUER: &str = "https://dev.tollgate.local";
/// Default `aud` of dev tokens (the gateway's audience).
pub const AUDIENCE: &str = "tollgate";
/// `aud` operator tokens must carry by default: distinct from the gateway's, so that an agent's
/// MCP token is never an operator token.
pub const OPERATOR_AUDIENCE: &str = "tollgate-operators";

/// How far in the past an `--expired` token's `exp` lies: beyond Envoy's default 60 s clock skew.
const EXPIRED_BY: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} is not a pkcs#8 pem p-256 private key")]
    BadKey(PathBuf),
    #[error("cannot encode the key: {0}")]
    Encode(String),
    #[error("cannot sign the token: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
    #[error("system clock is before 1970")]
    Clock,
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> IssuerError + 'a {
    move |source| IssuerError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// The dev issuer's files under a home directory.
#[derive(Debug, Clone)]
pub struct DevIssuer {
    pub key_path: PathBuf,
    pub jwks_path: PathBuf,
}

impl DevIssuer {
    pub fn at(home: &Path) -> Self {
        let dir = home.join("dev");
        Self {
            key_path: dir.join("issuer-key.pem"),
            jwks_path: dir.join("jwks.json"),
        }
    }

    /// Creates the key (when missing, or always with `force`) and the JWKS (when missing or the
    /// key changed). Returns whether a new key was generated.
    pub fn ensure(&self, force: bool) -> Result<bool, IssuerError> {
        let dir = self.key_path.parent().unwrap_or(Path::new("."));
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io("cannot create", dir))?;
        let generated = force || !self.key_path.exists();
        if generated {
            let key = p256::SecretKey::random(&mut rand::rngs::OsRng);
            let pem = key
                .to_pkcs8_pem(LineEnding::LF)
                .map_err(|e| IssuerError::Encode(e.to_string()))?;
            write_atomically(&self.key_path, pem.as_bytes(), 0o600)?;
        }
        if generated || !self.jwks_path.exists() {
            let key = load_key(&self.key_path)?;
            let jwks = serde_json::to_vec_pretty(&jwks(&key.public_key()))
                .map_err(|e| IssuerError::Encode(e.to_string()))?;
            write_atomically(&self.jwks_path, &jwks, 0o644)?;
        }
        Ok(generated)
    }

    /// The `kid` under which the dev issuer's key is published.
    pub fn kid(&self) -> Result<String, IssuerError> {
        Ok(kid(&load_key(&self.key_path)?.public_key()))
    }
}

/// Writes via a temporary file and a rename, so a reader (Envoy) never sees half a file.
fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> Result<(), IssuerError> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io("cannot create", &tmp))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(io("cannot write", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("cannot replace", path))
}

/// Loads a PKCS#8 PEM P-256 private key.
pub fn load_key(path: &Path) -> Result<p256::SecretKey, IssuerError> {
    let pem = std::fs::read_to_string(path).map_err(io("cannot read", path))?;
    p256::SecretKey::from_pkcs8_pem(&pem).map_err(|_| IssuerError::BadKey(path.to_path_buf()))
}

/// RFC 7638 JWK thumbprint (SHA-256, base64url): a `kid` that follows from the key itself.
pub fn kid(public: &p256::PublicKey) -> String {
    let jwk = public_jwk(public);
    // The thumbprint input is the required members in lexicographic order without whitespace,
    // which is what a serde_json map (sorted) serialises to.
    let members: Map<String, Value> = ["crv", "kty", "x", "y"]
        .iter()
        .map(|k| ((*k).to_string(), jwk[*k].clone()))
        .collect();
    let digest = Sha256::digest(Value::Object(members).to_string().as_bytes());
    URL_SAFE_NO_PAD.encode(digest)
}

fn public_jwk(public: &p256::PublicKey) -> Value {
    // The string comes from a well-formed key, so it always parses.
    serde_json::from_str(&public.to_jwk_string()).unwrap_or(Value::Null)
}

/// A JWKS holding one ES256 signing key.
pub fn jwks(public: &p256::PublicKey) -> Value {
    let mut jwk = public_jwk(public);
    if let Value::Object(members) = &mut jwk {
        members.insert("kid".into(), kid(public).into());
        members.insert("alg".into(), "ES256".into());
        members.insert("use".into(), "sig".into());
    }
    json!({ "keys": [jwk] })
}

/// What a token should say.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    pub sub: String,
    pub groups: Vec<String>,
    pub email: Option<String>,
    pub audience: String,
    pub ttl: Duration,
    /// Issue a token whose `exp` has passed.
    pub expired: bool,
    /// Extra claims, applied last (so they can override the standard ones, e.g. a wrong `iss`).
    pub claims: Vec<(String, Value)>,
}

/// Signs a token with `key` (ES256) under `kid`, as if issued at `now`.
pub fn mint(
    key: &p256::SecretKey,
    kid: &str,
    request: &TokenRequest,
    now: SystemTime,
) -> Result<String, IssuerError> {
    let now = now
        .duration_since(UNIX_EPOCH)
        .map_err(|_| IssuerError::Clock)?
        .as_secs();
    let (issued, expires) = if request.expired {
        let expires = now.saturating_sub(EXPIRED_BY.as_secs());
        (expires.saturating_sub(request.ttl.as_secs()), expires)
    } else {
        (now, now + request.ttl.as_secs())
    };
    let jti: [u8; 16] = rand::random();
    let mut claims = Map::new();
    claims.insert("iss".into(), ISSUER.into());
    claims.insert("aud".into(), request.audience.clone().into());
    claims.insert("sub".into(), request.sub.clone().into());
    claims.insert("iat".into(), issued.into());
    claims.insert("nbf".into(), issued.into());
    claims.insert("exp".into(), expires.into());
    claims.insert("jti".into(), URL_SAFE_NO_PAD.encode(jti).into());
    if !request.groups.is_empty() {
        claims.insert("groups".into(), request.groups.clone().into());
    }
    if let Some(email) = &request.email {
        claims.insert("email".into(), email.clone().into());
    }
    for (name, value) in &request.claims {
        claims.insert(name.clone(), value.clone());
    }
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| IssuerError::Encode(e.to_string()))?;
    let encoding_key = jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes())?;
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(kid.to_string());
    Ok(jsonwebtoken::encode(&header, &claims, &encoding_key)?)
}

/// Parses `--claim NAME=VALUE`: the value as JSON when it is JSON, else as a string.
pub fn parse_claim(text: &str) -> Result<(String, Value), String> {
    let (name, value) = text
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=VALUE, got {text:?}"))?;
    if name.is_empty() {
        return Err("claim name is empty".into());
    }
    let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_string()));
    Ok((name.to_string(), value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{decode, jwk::JwkSet, DecodingKey, Validation};
    use std::os::unix::fs::PermissionsExt;

    fn request() -> TokenRequest {
        TokenRequest {
            sub: "alice@example.com".into(),
            groups: vec!["payments".into(), "oncall".into()],
            email: Some("alice@example.com".into()),
            audience: AUDIENCE.into(),
            ttl: Duration::from_secs(900),
            expired: false,
            claims: vec![
                parse_claim("repository=acme/shop").unwrap(),
                parse_claim("level=3").unwrap(),
            ],
        }
    }

    fn validate(token: &str, jwks_path: &Path) -> jsonwebtoken::errors::Result<Map<String, Value>> {
        let set: JwkSet = serde_json::from_slice(&std::fs::read(jwks_path).unwrap()).unwrap();
        let header = jsonwebtoken::decode_header(token)?;
        let jwk = set
            .find(header.kid.as_deref().unwrap())
            .expect("kid in jwks");
        let mut validation = Validation::new(jsonwebtoken::Algorithm::ES256);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        decode::<Map<String, Value>>(token, &DecodingKey::from_jwk(jwk)?, &validation)
            .map(|t| t.claims)
    }

    #[test]
    fn init_writes_a_private_key_0600_and_a_jwks_with_kid() {
        let home = tempfile::tempdir().unwrap();
        let issuer = DevIssuer::at(home.path());
        assert!(issuer.ensure(false).unwrap());
        assert!(
            !issuer.ensure(false).unwrap(),
            "second ensure keeps the key"
        );
        let mode = std::fs::metadata(&issuer.key_path)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(std::fs::read_to_string(&issuer.key_path)
            .unwrap()
            .starts_with("-----BEGIN PRIVATE KEY-----"));
        let jwks: Value =
            serde_json::from_slice(&std::fs::read(&issuer.jwks_path).unwrap()).unwrap();
        let key = &jwks["keys"][0];
        assert_eq!(key["kty"], "EC");
        assert_eq!(key["crv"], "P-256");
        assert_eq!(key["alg"], "ES256");
        assert_eq!(key["kid"], issuer.kid().unwrap());
        assert!(key.get("d").is_none(), "no private part in the jwks");
    }

    #[test]
    fn minted_token_verifies_against_the_jwks_with_all_claims() {
        let home = tempfile::tempdir().unwrap();
        let issuer = DevIssuer::at(home.path());
        issuer.ensure(false).unwrap();
        let key = load_key(&issuer.key_path).unwrap();
        let token = mint(&key, &issuer.kid().unwrap(), &request(), SystemTime::now()).unwrap();
        let claims = validate(&token, &issuer.jwks_path).unwrap();
        assert_eq!(claims["sub"], "alice@example.com");
        assert_eq!(claims["groups"], json!(["payments", "oncall"]));
        assert_eq!(claims["email"], "alice@example.com");
        assert_eq!(claims["repository"], "acme/shop");
        assert_eq!(claims["level"], 3);
        assert_eq!(
            claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
            900
        );
        assert!(claims["jti"].as_str().unwrap().len() >= 16);
        let other = mint(&key, &issuer.kid().unwrap(), &request(), SystemTime::now()).unwrap();
        assert_ne!(
            validate(&other, &issuer.jwks_path).unwrap()["jti"],
            claims["jti"]
        );
    }

    #[test]
    fn expired_and_wrong_key_tokens_fail_validation() {
        let home = tempfile::tempdir().unwrap();
        let issuer = DevIssuer::at(home.path());
        issuer.ensure(false).unwrap();
        let key = load_key(&issuer.key_path).unwrap();
        let kid = issuer.kid().unwrap();

        let expired = mint(
            &key,
            &kid,
            &TokenRequest {
                expired: true,
                ..request()
            },
            SystemTime::now(),
        )
        .unwrap();
        let err = validate(&expired, &issuer.jwks_path).unwrap_err();
        assert_eq!(
            err.kind(),
            &jsonwebtoken::errors::ErrorKind::ExpiredSignature
        );

        // Same kid, other key: only the signature gives it away.
        let wrong = p256::SecretKey::random(&mut rand::rngs::OsRng);
        let forged = mint(&wrong, &kid, &request(), SystemTime::now()).unwrap();
        let err = validate(&forged, &issuer.jwks_path).unwrap_err();
        assert_eq!(
            err.kind(),
            &jsonwebtoken::errors::ErrorKind::InvalidSignature
        );
    }

    #[test]
    fn claims_parse_json_or_fall_back_to_strings() {
        assert_eq!(parse_claim("n=1").unwrap(), ("n".into(), json!(1)));
        assert_eq!(
            parse_claim("a=[\"x\"]").unwrap(),
            ("a".into(), json!(["x"]))
        );
        assert_eq!(
            parse_claim("s=hello world").unwrap(),
            ("s".into(), json!("hello world"))
        );
        assert_eq!(parse_claim("e=a=b").unwrap(), ("e".into(), json!("a=b")));
        assert!(parse_claim("novalue").is_err());
        assert!(parse_claim("=x").is_err());
    }

    #[test]
    fn kid_is_the_rfc7638_thumbprint() {
        // RFC 7638 §3.1 defines the input; check against an independent computation.
        let key = p256::SecretKey::random(&mut rand::rngs::OsRng);
        let jwk = public_jwk(&key.public_key());
        let input = format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            jwk["x"].as_str().unwrap(),
            jwk["y"].as_str().unwrap()
        );
        assert_eq!(
            kid(&key.public_key()),
            URL_SAFE_NO_PAD.encode(Sha256::digest(input.as_bytes()))
        );
    }
}
