//! The operator console over HTTP, as an attacker would try it: no session, a forged or
//! replayed sign-in, a cross-site POST, an operator outside the right group, a self-approval,
//! a revoked operator. The server must refuse each, whatever a page shows or hides. (The
//! browser suite, tests/tests/console.rs, drives the same console in Chromium.)

mod common;

use std::process::{Command, Stdio};

use common::{held_call, Server, BIN};
use reqwest::header::{HeaderMap, COOKIE, LOCATION, ORIGIN, SET_COOKIE};
use reqwest::redirect::Policy;
use serde_json::{json, Value};
use tollgate_proto::pb::approvals_client::ApprovalsClient;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A control plane with its console on a loopback port, signing people in with the dev issuer.
fn console_server(home: &std::path::Path) -> (Server, String) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let server = Server::start_with(home, &["--console", &listen, "--console-dev-sign-in"]);
    (server, format!("http://{listen}"))
}

fn client() -> reqwest::Client {
    // reqwest is built without a crypto provider of its own (the control plane hands it ring).
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap()
}

fn cookie_of(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix(&format!("{name}=")))
        .map(|v| v.split(';').next().unwrap_or_default().to_owned())
}

fn location(response: &reqwest::Response) -> String {
    response.headers()[LOCATION].to_str().unwrap().to_owned()
}

/// A signed-in browser: its session cookie and CSRF token.
struct Browser {
    console: String,
    cookie: String,
    csrf: String,
}

/// The first steps of a sign-in, as a browser takes them: start it (asking to come back to
/// `return_to`), then name oneself on the dev sign-in form. Returns the callback URL the form
/// sent the browser to (with the code) and the login cookie the start set.
async fn authorize(console: &str, sub: &str, groups: &str, return_to: &str) -> (String, String) {
    let http = client();
    let query = serde_urlencoded::to_string([("return", return_to)]).unwrap();
    let login = http
        .get(format!("{console}/auth/login?{query}"))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 303);
    let login_cookie = cookie_of(login.headers(), "tollgate-login").expect("login cookie");
    let authorize = reqwest::Url::parse(&location(&login)).unwrap();
    let mut form: Vec<(String, String)> = authorize.query_pairs().into_owned().collect();
    form.push(("sub".into(), sub.into()));
    form.push(("groups".into(), groups.into()));
    let code = http
        .post(format!("{console}/dev-sign-in"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(serde_urlencoded::to_string(&form).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(code.status(), 303, "{}", code.text().await.unwrap());
    (location(&code), login_cookie)
}

/// Signs in through the whole code + PKCE flow, as the dev sign-in form does; `return_to` is
/// where the browser asked to go. Returns the browser and where the console sent it.
async fn sign_in_to(console: &str, sub: &str, groups: &str, return_to: &str) -> (Browser, String) {
    let http = client();
    let (callback, login_cookie) = authorize(console, sub, groups, return_to).await;
    let done = http
        .get(&callback)
        .header(COOKIE, format!("tollgate-login={login_cookie}"))
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 303, "{}", done.text().await.unwrap());
    let cookie = cookie_of(done.headers(), "tollgate-session").expect("session cookie");
    let set = done
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|v| v.starts_with("tollgate-session="))
        .unwrap();
    for attribute in ["HttpOnly", "SameSite=Lax", "Secure"] {
        assert!(set.contains(attribute), "{set}");
    }
    let landed = location(&done);
    let mut browser = Browser {
        console: console.to_owned(),
        cookie,
        csrf: String::new(),
    };
    browser.csrf = browser.get("/api/me").await.1["csrf"]
        .as_str()
        .unwrap()
        .to_owned();
    (browser, landed)
}

async fn sign_in(console: &str, sub: &str, groups: &str) -> Browser {
    sign_in_to(console, sub, groups, "/approvals").await.0
}

async fn json_body(response: reqwest::Response) -> Value {
    let bytes = response.bytes().await.unwrap_or_default();
    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
}

impl Browser {
    async fn get(&self, path: &str) -> (u16, Value) {
        let response = client()
            .get(format!("{}{path}", self.console))
            .header(COOKIE, format!("tollgate-session={}", self.cookie))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, json_body(response).await)
    }

    /// A POST as the console's page sends it, with the CSRF token and origin given.
    async fn post_as(
        &self,
        path: &str,
        body: Value,
        csrf: Option<&str>,
        origin: Option<&str>,
    ) -> (u16, Value) {
        let mut request = client()
            .post(format!("{}{path}", self.console))
            .header(COOKIE, format!("tollgate-session={}", self.cookie))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(csrf) = csrf {
            request = request.header("x-csrf-token", csrf);
        }
        if let Some(origin) = origin {
            request = request.header(ORIGIN, origin);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, json_body(response).await)
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let csrf = self.csrf.clone();
        let origin = self.console.clone();
        self.post_as(path, body, Some(&csrf), Some(&origin)).await
    }
}

/// Holds a payout change by `requester` (as the gateway would), returning its approval id.
async fn hold(server: &Server, requester: &str) -> String {
    let claims = json!({"sub": requester, "groups": ["payments-ops", "payments-approvers"]});
    let request = held_call(
        claims,
        "update_payout_account",
        json!({"merchant_id": "m_1", "account_number": "000123"}),
    );
    let mut approvals = ApprovalsClient::new(server.gateway_channel().await);
    approvals
        .request(request)
        .await
        .unwrap()
        .into_inner()
        .approval_id
}

#[tokio::test]
async fn the_console_refuses_what_the_api_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let (server, console) = console_server(dir.path());
    let http = client();

    // Signed out: pages send the browser to sign in (and back), the API answers 401.
    let page = http
        .get(format!("{console}/approvals/apr_x"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 303);
    assert_eq!(location(&page), "/auth/login?return=%2Fapprovals%2Fapr_x");
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe"),
        "{csp}"
    );
    assert_eq!(page.headers()["x-frame-options"], "DENY");
    let api = http
        .get(format!("{console}/api/approvals"))
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 401);
    let forged_cookie = http
        .get(format!("{console}/api/me"))
        .header(COOKIE, "tollgate-session=made-up")
        .send()
        .await
        .unwrap();
    assert_eq!(forged_cookie.status(), 401);

    // A code injected into someone else's browser (login CSRF) finds no matching state.
    let (callback, _) = authorize(
        &console,
        "mallory@example.com",
        "payments-approvers",
        "/approvals",
    )
    .await;
    let injected = http
        .get(callback)
        .header(COOKIE, "tollgate-login=another-browsers-state")
        .send()
        .await
        .unwrap();
    assert_eq!(injected.status(), 400);
    assert!(cookie_of(injected.headers(), "tollgate-session").is_none());

    // After sign-in the browser goes back where it asked, never off the console.
    let (_, landed) = sign_in_to(
        &console,
        "bob@example.com",
        "payments-approvers",
        "/approvals/apr_1",
    )
    .await;
    assert_eq!(landed, "/approvals/apr_1");
    let (_, landed) = sign_in_to(
        &console,
        "bob@example.com",
        "payments-approvers",
        "//evil.example/x",
    )
    .await;
    assert_eq!(landed, "/approvals");

    // An operator outside the groups sees nothing the CLI would not show them.
    let reader = sign_in(&console, "rita@example.com", "payments-readers").await;
    let (status, body) = reader.get("/api/approvals").await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("payments-approvers"),
        "{body}"
    );
    assert_eq!(reader.get("/api/sessions").await.0, 403);
    assert_eq!(reader.get("/api/evidence").await.0, 403);
    let (status, _) = reader
        .post(
            "/api/revocations",
            json!({"claim": "sub", "value": "bob@example.com", "reason": "x"}),
        )
        .await;
    assert_eq!(status, 403);

    // A self-approval is refused by the server, with the page's own token and origin.
    let own = hold(&server, "pat@example.com").await;
    let pat = sign_in(&console, "pat@example.com", "payments-approvers").await;
    let (status, body) = pat
        .post(
            &format!("/api/approvals/{own}/decision"),
            json!({"approve": true, "reason": "mine"}),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("your own request"),
        "{body}"
    );

    // A service account's request names the person who answers for it, and that person may
    // not approve it either.
    let claims = json!({"sub": "svc-payouts", "groups": ["payments-ops"],
                        "accountable": {"sub": "dana@example.com", "via": "owner"}});
    let request = held_call(
        claims,
        "update_payout_account",
        json!({"merchant_id": "m_3", "account_number": "000456"}),
    );
    let service_account = ApprovalsClient::new(server.gateway_channel().await)
        .request(request)
        .await
        .unwrap()
        .into_inner()
        .approval_id;
    let dana = sign_in(&console, "dana@example.com", "payments-approvers").await;
    let (status, shown) = dana.get(&format!("/api/approvals/{service_account}")).await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["approval"]["requester"], "svc-payouts");
    assert_eq!(
        shown["approval"]["actingFor"],
        json!(["dana@example.com"]),
        "{shown}"
    );
    let (status, body) = dana
        .post(
            &format!("/api/approvals/{service_account}/decision"),
            json!({"approve": true, "reason": "my own service account"}),
        )
        .await;
    assert_eq!(status, 403, "{body}");

    // Another approver's POST without the CSRF token, or from another origin, changes nothing.
    let bob = sign_in(&console, "bob@example.com", "payments-approvers").await;
    let decision = format!("/api/approvals/{own}/decision");
    let approve = json!({"approve": true, "reason": "checked with the merchant"});
    let (status, _) = bob
        .post_as(&decision, approve.clone(), None, Some(&console))
        .await;
    assert_eq!(status, 403);
    let (status, _) = bob
        .post_as(
            &decision,
            approve.clone(),
            Some(&bob.csrf),
            Some("https://evil.example"),
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = bob
        .post_as(&decision, approve.clone(), Some(&pat.csrf), Some(&console))
        .await;
    assert_eq!(status, 403, "another session's CSRF token");
    let (_, pending) = bob.get(&format!("/api/approvals/{own}")).await;
    assert_eq!(pending["approval"]["state"], "pending");
    let (status, body) = bob
        .post(&decision, json!({"approve": true, "reason": " "}))
        .await;
    assert_eq!(status, 400, "a decision needs a reason: {body}");
    let (status, body) = bob.post(&decision, approve).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["approval"]["state"], "approved");

    // A security admin revokes bob; bob's open session is refused from the next call on.
    let admin = sign_in(&console, "sam@example.com", "security-admins").await;
    let (status, body) = admin
        .post(
            "/api/revocations",
            json!({"claim": "sub", "value": "bob@example.com", "reason": "left the team"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = bob.get("/api/approvals").await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("revoked"),
        "{body}"
    );

    // Each sign-in and decision is on record as the verified operator.
    let records = common::json_of(&common::list(&server).await);
    let signed_in: Vec<&str> = records
        .iter()
        .filter(|r| r["event"] == "controlPlane.consoleSignIn")
        .filter(|r| r["operator"]["verified"] == true)
        .filter_map(|r| r["operator"]["sub"].as_str())
        .collect();
    for sub in [
        "bob@example.com",
        "pat@example.com",
        "rita@example.com",
        "sam@example.com",
    ] {
        assert!(signed_in.contains(&sub), "{sub} not in {signed_in:?}");
    }
    assert!(records.iter().any(|r| r["event"] == "approval.decided"
        && r["approvalId"] == own.as_str()
        && r["approver"]["sub"] == "bob@example.com"));
    assert!(records
        .iter()
        .any(|r| r["event"] == "approval.refused" && r.to_string().contains("pat@example.com")));
}

/// `serve` output and exit status for a console configuration it must refuse.
fn refused_start(home: &std::path::Path, extra: &[&str]) -> String {
    let output = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(extra)
        .env("TOLLGATE_HOME", home)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!output.status.success(), "serve started with {extra:?}");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn serve_refuses_a_console_it_cannot_make_safe() {
    let dir = tempfile::tempdir().unwrap();
    // Plain http beyond loopback would send sessions and approvals over the network.
    let error = refused_start(
        dir.path(),
        &["--console", "0.0.0.0:0", "--console-dev-sign-in"],
    );
    assert!(
        error.contains("plain http") && error.contains("--console-url"),
        "{error}"
    );
    // The dev sign-in page is for the dev issuer only.
    let jwks = dir.path().join("dev/jwks.json");
    let jwks = jwks.display().to_string();
    let error = refused_start(
        dir.path(),
        &[
            "--console",
            "127.0.0.1:0",
            "--console-dev-sign-in",
            "--operator-issuer",
            "https://idp.example.com",
            "--operator-jwks",
            &jwks,
        ],
    );
    assert!(error.contains("--console-dev-sign-in"), "{error}");
    // Without it, the dev issuer has no sign-in page to send people to.
    let error = refused_start(dir.path(), &["--console", "127.0.0.1:0"]);
    assert!(error.contains("no sign-in page"), "{error}");
}

#[tokio::test]
async fn signing_out_ends_the_session_and_its_live_stream() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, console) = console_server(dir.path());
    let bob = sign_in(&console, "bob@example.com", "payments-approvers").await;
    let mut events = client()
        .get(format!("{console}/api/approvals/events"))
        .header(COOKIE, format!("tollgate-session={}", bob.cookie))
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 200);
    assert_eq!(events.headers()["content-type"], "text/event-stream");

    // A sign-out from another origin, or without the session's token, signs nobody out.
    for (origin, csrf) in [
        ("https://evil.example", bob.csrf.as_str()),
        (console.as_str(), "guess"),
    ] {
        let refused = client()
            .post(format!("{console}/auth/logout"))
            .header(COOKIE, format!("tollgate-session={}", bob.cookie))
            .header(ORIGIN, origin)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("csrf={csrf}"))
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 403);
        assert_eq!(bob.get("/api/me").await.0, 200);
    }
    let out = client()
        .post(format!("{console}/auth/logout"))
        .header(COOKIE, format!("tollgate-session={}", bob.cookie))
        .header(ORIGIN, &console)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("csrf={}", bob.csrf))
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 200);
    assert_eq!(bob.get("/api/me").await.0, 401);
    // The open stream ends too (keep-alives aside, nothing more arrives).
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while events.chunk().await.unwrap().is_some() {}
    })
    .await;
    assert!(ended.is_ok(), "the live stream outlived the sign-out");
}
