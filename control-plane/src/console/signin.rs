//! Console sign-in: OpenID Connect authorization code with PKCE (RFC 7636, S256) at the
//! operators' issuer, and the browser sessions that follow.
//!
//! The access token the issuer returns is verified exactly as the CLI's operator token is
//! ([`OperatorAuth::verify`]), and every console call is made with it through the same access
//! layer: the browser gets no power the CLI lacks. Sessions live in memory (a restart signs
//! everyone out) and end when the token expires. The session cookie is HttpOnly, SameSite=Lax
//! (an approval link opened from a chat message must find the session), Secure; every POST also
//! needs the session's CSRF token in a header and the console's own Origin.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};

use crate::approvals::auth::VerifiedOperator;
use crate::clock::now_secs;

/// How long a started sign-in may take at the issuer.
const LOGIN_TTL: Duration = Duration::from_secs(600);
/// Bounds on the state kept for browsers, so that unauthenticated requests cannot grow it
/// without limit.
const MAX_PENDING_LOGINS: usize = 10_000;
const MAX_SESSIONS: usize = 10_000;

pub const SESSION_COOKIE: &str = "tollgate-session";
pub const LOGIN_COOKIE: &str = "tollgate-login";

/// 32 random bytes, base64url: session ids, CSRF tokens, `state`, PKCE verifiers, codes.
pub fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The PKCE S256 challenge of `verifier`.
pub fn pkce_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// Constant-time comparison for secrets taken from a request.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// A sign-in started and not yet come back from the issuer.
struct PendingLogin {
    verifier: String,
    return_to: String,
    started: Instant,
}

/// A signed-in browser.
#[derive(Clone)]
pub struct BrowserSession {
    pub token: String,
    pub operator: VerifiedOperator,
    pub csrf: String,
    /// The token's `exp` (seconds since the epoch): the session ends with it.
    pub expires: u64,
}

#[derive(Default)]
pub struct SignIns {
    pending: Mutex<HashMap<String, PendingLogin>>,
    sessions: Mutex<HashMap<String, BrowserSession>>,
}

/// Only a path on the console itself may be returned to after sign-in (never `//host` or a
/// URL: an open redirect would hand the session to a phishing page).
pub fn safe_return_path(path: Option<&str>) -> String {
    match path {
        Some(p)
            if p.starts_with('/')
                && !p.starts_with("//")
                && !p.contains('\\')
                && !p.chars().any(char::is_control) =>
        {
            p.to_owned()
        }
        _ => "/approvals".to_owned(),
    }
}

impl SignIns {
    /// Starts a sign-in: the `state` to send and to set in the login cookie, and the PKCE
    /// verifier's challenge.
    pub fn start(&self, return_to: &str) -> (String, String) {
        let state = random_token();
        let verifier = random_token();
        let challenge = pkce_challenge(&verifier);
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.retain(|_, login| login.started.elapsed() < LOGIN_TTL);
        if pending.len() >= MAX_PENDING_LOGINS {
            // The oldest give way: a flood of started sign-ins must not lock people out.
            if let Some(oldest) = pending
                .iter()
                .min_by_key(|(_, l)| l.started)
                .map(|(k, _)| k.clone())
            {
                pending.remove(&oldest);
            }
        }
        pending.insert(
            state.clone(),
            PendingLogin {
                verifier,
                return_to: return_to.to_owned(),
                started: Instant::now(),
            },
        );
        (state, challenge)
    }

    /// Ends a started sign-in: its verifier and return path, once.
    pub fn finish(&self, state: &str) -> Option<(String, String)> {
        let login = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(state)?;
        (login.started.elapsed() < LOGIN_TTL).then_some((login.verifier, login.return_to))
    }

    /// Opens a session for a verified operator; returns its id (the cookie value).
    pub fn open(&self, token: String, operator: VerifiedOperator) -> (String, BrowserSession) {
        let expires = operator.expires().unwrap_or_else(now_secs);
        let session = BrowserSession {
            token,
            operator,
            csrf: random_token(),
            expires,
        };
        let id = random_token();
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let now = now_secs();
        sessions.retain(|_, s| s.expires > now);
        if sessions.len() >= MAX_SESSIONS {
            if let Some(first) = sessions
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone())
            {
                sessions.remove(&first);
            }
        }
        sessions.insert(id.clone(), session.clone());
        (id, session)
    }

    /// The live session of a cookie value.
    pub fn get(&self, id: &str) -> Option<BrowserSession> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let session = sessions.get(id)?.clone();
        if session.expires <= now_secs() {
            sessions.remove(id);
            return None;
        }
        Some(session)
    }

    pub fn close(&self, id: &str) -> Option<BrowserSession> {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id)
    }
}

/// The value of cookie `name` in a request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A `Set-Cookie` value: HttpOnly and SameSite=Lax always, Secure unless the console is served
/// over plain http (then only on a loopback address, see `console::Settings`), for `max_age`
/// seconds (0 deletes it).
pub fn set_cookie(name: &str, value: &str, path: &str, max_age: u64, secure: bool) -> String {
    format!(
        "{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Lax{}",
        if secure { "; Secure" } else { "" }
    )
}

/// The dev issuer's authorization endpoint, for `make run`: a code + PKCE flow like any
/// issuer's, whose sign-in page lets the person name themselves. Anyone who reaches the console
/// can sign in as anyone: `--console-dev-sign-in` refuses any issuer but the dev one.
#[derive(Default)]
pub struct DevCodes {
    codes: Mutex<HashMap<String, DevCode>>,
}

struct DevCode {
    challenge: String,
    redirect_uri: String,
    sub: String,
    groups: Vec<String>,
    issued: Instant,
}

impl DevCodes {
    pub fn issue(
        &self,
        challenge: &str,
        redirect_uri: &str,
        sub: &str,
        groups: Vec<String>,
    ) -> String {
        let code = random_token();
        let mut codes = self.codes.lock().unwrap_or_else(|e| e.into_inner());
        codes.retain(|_, c| c.issued.elapsed() < Duration::from_secs(60));
        if codes.len() < MAX_PENDING_LOGINS {
            codes.insert(
                code.clone(),
                DevCode {
                    challenge: challenge.to_owned(),
                    redirect_uri: redirect_uri.to_owned(),
                    sub: sub.to_owned(),
                    groups,
                    issued: Instant::now(),
                },
            );
        }
        code
    }

    /// Redeems `code` once, checking the PKCE verifier and the redirect URI: who signed in.
    pub fn redeem(
        &self,
        code: &str,
        verifier: &str,
        redirect_uri: &str,
    ) -> Result<(String, Vec<String>), String> {
        let entry = self
            .codes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(code)
            .ok_or("unknown or used authorization code")?;
        if entry.issued.elapsed() >= Duration::from_secs(60) {
            return Err("the authorization code expired".into());
        }
        if !same_secret(&pkce_challenge(verifier), &entry.challenge) {
            return Err("the PKCE code_verifier does not match the challenge".into());
        }
        if entry.redirect_uri != redirect_uri {
            return Err("redirect_uri differs from the authorization request's".into());
        }
        Ok((entry.sub, entry.groups))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_challenge_is_rfc_7636_s256() {
        // RFC 7636 appendix B.
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn only_local_paths_are_returned_to() {
        for bad in [
            None,
            Some("https://evil.example/"),
            Some("//evil.example/x"),
            Some("/\\evil.example"),
            Some("approvals"),
            Some("/x\r\nSet-Cookie: a=b"),
        ] {
            assert_eq!(safe_return_path(bad), "/approvals", "{bad:?}");
        }
        assert_eq!(
            safe_return_path(Some("/approvals/apr_1")),
            "/approvals/apr_1"
        );
    }

    #[test]
    fn a_dev_code_is_redeemed_once_with_its_verifier() {
        let codes = DevCodes::default();
        let verifier = random_token();
        let code = codes.issue(&pkce_challenge(&verifier), "http://c/cb", "bob", vec![]);
        assert!(codes.redeem(&code, "wrong", "http://c/cb").is_err());
        // A failed attempt used the code up: a guessed verifier gets one try.
        assert!(codes.redeem(&code, &verifier, "http://c/cb").is_err());
        let code = codes.issue(&pkce_challenge(&verifier), "http://c/cb", "bob", vec![]);
        assert!(codes.redeem(&code, &verifier, "http://other/cb").is_err());
        let code = codes.issue(
            &pkce_challenge(&verifier),
            "http://c/cb",
            "bob",
            vec!["g".into()],
        );
        assert_eq!(
            codes.redeem(&code, &verifier, "http://c/cb").unwrap(),
            ("bob".to_owned(), vec!["g".to_owned()])
        );
        assert!(codes.redeem(&code, &verifier, "http://c/cb").is_err());
    }

    #[test]
    fn a_cookie_is_found_among_others() {
        let mut headers = http::HeaderMap::new();
        headers.append(
            http::header::COOKIE,
            "a=1; tollgate-session=xyz".parse().unwrap(),
        );
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("xyz"));
        assert_eq!(cookie(&headers, "b"), None);
    }
}
