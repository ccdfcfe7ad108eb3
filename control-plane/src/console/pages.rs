//! The console's pages and its sign-in and sign-out steps.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Form, Query, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::signin::{self, cookie, set_cookie, LOGIN_COOKIE, SESSION_COOKIE};
use super::{Console, Provider, DEV_TOKEN_TTL};

/// Minimal HTML escaping for text put into the server-rendered pages.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// A small page of its own (sign-in problems, the dev sign-in form), in the console's style.
fn plain_page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{} · Tollgate</title><link rel=\"stylesheet\" href=\"/assets/app.css\"></head><body><main id=\"main\" class=\"narrow\"><h1>{}</h1>{body}</main></body></html>",
        escape(title),
        escape(title)
    );
    (status, Html(html)).into_response()
}

pub async fn root() -> Redirect {
    Redirect::to("/approvals")
}

pub async fn not_found() -> Response {
    plain_page(
        StatusCode::NOT_FOUND,
        "Not found",
        "<p><a href=\"/approvals\">Go to approvals</a></p>",
    )
}

/// The single page of the console; signed-out browsers are sent to sign in first, and come
/// back to the page they asked for (an approval link, say).
pub async fn page(State(console): State<Arc<Console>>, headers: HeaderMap, uri: Uri) -> Response {
    let signed_in = cookie(&headers, SESSION_COOKIE)
        .and_then(|id| console.signins.get(id))
        .is_some();
    if !signed_in {
        let back = uri.path_and_query().map_or("/", |p| p.as_str());
        let login = reqwest::Url::parse_with_params("http://x/auth/login", &[("return", back)])
            .map(|u| format!("/auth/login?{}", u.query().unwrap_or_default()))
            .unwrap_or_else(|_| "/auth/login".into());
        return Redirect::to(&login).into_response();
    }
    Html(super::assets::INDEX_HTML).into_response()
}

#[derive(Deserialize)]
pub struct LoginQuery {
    #[serde(rename = "return")]
    return_to: Option<String>,
}

/// Starts a sign-in at the issuer: a fresh `state` (also set in a cookie, so that only this
/// browser can finish it) and a PKCE challenge.
pub async fn login(
    State(console): State<Arc<Console>>,
    Query(query): Query<LoginQuery>,
) -> Response {
    let return_to = signin::safe_return_path(query.return_to.as_deref());
    let (state, challenge) = console.signins.start(&return_to);
    let redirect_uri = console.redirect_uri();
    let params = [
        ("response_type", "code"),
        ("client_id", console.settings.console_client_id.as_str()),
        ("redirect_uri", redirect_uri.as_str()),
        ("scope", "openid email"),
        ("state", state.as_str()),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
        ("resource", console.settings.console_resource.as_str()),
    ];
    let endpoint = match &console.provider {
        Provider::Remote {
            authorization_endpoint,
            ..
        } => authorization_endpoint.clone(),
        Provider::Dev { .. } => format!("{}/dev-sign-in", console.url),
    };
    let Ok(url) = reqwest::Url::parse_with_params(&endpoint, &params) else {
        return plain_page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Cannot sign in",
            "<p>The issuer's authorization endpoint is not a URL.</p>",
        );
    };
    (
        [(
            header::SET_COOKIE,
            set_cookie(LOGIN_COOKIE, &state, "/auth", 600, console.secure_cookies),
        )],
        Redirect::to(url.as_str()),
    )
        .into_response()
}

#[derive(Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

fn try_again(status: StatusCode, why: &str) -> Response {
    plain_page(
        status,
        "Sign-in failed",
        &format!(
            "<p role=\"alert\">{}</p><p><a href=\"/auth/login\">Sign in again</a></p>",
            escape(why)
        ),
    )
}

/// The issuer sends the browser back here with a code: exchanged for the token with the PKCE
/// verifier, the token verified as an operator token, and a session opened.
pub async fn callback(
    State(console): State<Arc<Console>>,
    ConnectInfo(browser): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(query): Query<CallbackQuery>,
) -> Response {
    if let Some(error) = &query.error {
        let detail = query.error_description.as_deref().unwrap_or_default();
        return try_again(
            StatusCode::FORBIDDEN,
            &format!("The identity provider refused the sign-in: {error} {detail}"),
        );
    }
    let (Some(code), Some(state)) = (query.code.as_deref(), query.state.as_deref()) else {
        return try_again(StatusCode::BAD_REQUEST, "The sign-in answer has no code.");
    };
    // The state must be the one this browser started with: a code injected from elsewhere
    // (login CSRF) finds no matching cookie.
    let started_here =
        cookie(&headers, LOGIN_COOKIE).is_some_and(|mine| signin::same_secret(mine, state));
    let pending = if started_here {
        console.signins.finish(state)
    } else {
        None
    };
    let Some((verifier, return_to)) = pending else {
        return try_again(
            StatusCode::BAD_REQUEST,
            "This sign-in was not started in this browser, or took too long.",
        );
    };
    let token = match console.exchange(code, &verifier).await {
        Ok(token) => token,
        Err(why) => {
            eprintln!("tollgate: console sign-in from {browser}: {why}");
            return try_again(StatusCode::BAD_GATEWAY, &why);
        }
    };
    let operator = match console.parts.operators.verify(&token) {
        Ok(operator) => operator,
        Err(why) => {
            let mut event = Map::new();
            event.insert("event".into(), "controlPlane.consoleSignInRefused".into());
            event.insert("browser".into(), browser.to_string().into());
            event.insert("reason".into(), why.to_string().into());
            if let Some(sub) = crate::operator::unverified_sub(&token) {
                event.insert("claimedSub".into(), sub.into());
            }
            console.record(event).await;
            return try_again(StatusCode::FORBIDDEN, &why.to_string());
        }
    };
    let (id, session) = console.signins.open(token, operator);
    let mut event = Map::new();
    event.insert("event".into(), "controlPlane.consoleSignIn".into());
    event.insert(
        "operator".into(),
        Console::operator_json(&session.operator, browser),
    );
    if let Some(agent) = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
    {
        event.insert(
            "userAgent".into(),
            agent.chars().take(200).collect::<String>().into(),
        );
    }
    event.insert(
        "expiresAt".into(),
        crate::clock::format(session.expires.saturating_mul(1_000_000)).into(),
    );
    console.record(event).await;
    let max_age = session.expires.saturating_sub(crate::clock::now_secs());
    let mut response = Redirect::to(&return_to).into_response();
    let cookies = response.headers_mut();
    for value in [
        set_cookie(SESSION_COOKIE, &id, "/", max_age, console.secure_cookies),
        set_cookie(LOGIN_COOKIE, "", "/auth", 0, console.secure_cookies),
    ] {
        if let Ok(value) = value.parse() {
            cookies.append(header::SET_COOKIE, value);
        }
    }
    response
}

#[derive(Deserialize)]
pub struct LogoutForm {
    csrf: String,
}

/// Signs out: the session ends here (the issuer's own session is the issuer's).
pub async fn logout(
    State(console): State<Arc<Console>>,
    ConnectInfo(browser): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<LogoutForm>,
) -> Response {
    let id = cookie(&headers, SESSION_COOKIE)
        .unwrap_or_default()
        .to_owned();
    let session = console.signins.get(&id);
    let same_origin = headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|o| o == console.origin);
    match session {
        Some(session) if same_origin && signin::same_secret(&form.csrf, &session.csrf) => {
            console.signins.close(&id);
            let mut event = Map::new();
            event.insert("event".into(), "controlPlane.consoleSignOut".into());
            event.insert(
                "operator".into(),
                Console::operator_json(&session.operator, browser),
            );
            console.record(event).await;
        }
        Some(_) => {
            return plain_page(
                StatusCode::FORBIDDEN,
                "Not signed out",
                "<p role=\"alert\">The sign-out did not come from this console's page.</p>",
            )
        }
        None => {}
    }
    (
        [(
            header::SET_COOKIE,
            set_cookie(SESSION_COOKIE, "", "/", 0, console.secure_cookies),
        )],
        plain_page(
            StatusCode::OK,
            "Signed out",
            "<p>You are signed out of the console.</p><p><a href=\"/auth/login\">Sign in</a></p>",
        ),
    )
        .into_response()
}

#[derive(Deserialize)]
pub struct DevAuthorize {
    client_id: Option<String>,
    redirect_uri: Option<String>,
    state: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
}

/// The dev issuer's sign-in page: name yourself and your groups.
pub async fn dev_sign_in_form(
    State(console): State<Arc<Console>>,
    Query(request): Query<DevAuthorize>,
) -> Response {
    if let Err(why) = console.check_dev_authorize(&request) {
        return try_again(StatusCode::BAD_REQUEST, &why);
    }
    let hidden = |name: &str, value: &Option<String>| {
        format!(
            "<input type=\"hidden\" name=\"{name}\" value=\"{}\">",
            escape(value.as_deref().unwrap_or_default())
        )
    };
    let body = format!(
        "<p class=\"warning\" role=\"note\">Dev issuer: anyone who reaches this console can sign in as anyone. For a demo only.</p>\
         <form method=\"post\" action=\"/dev-sign-in\">{}{}{}{}{}\
         <p><label for=\"sub\">Email</label><input id=\"sub\" name=\"sub\" type=\"email\" required autocomplete=\"username\" value=\"bob@example.com\"></p>\
         <p><label for=\"groups\">Groups (comma-separated)</label><input id=\"groups\" name=\"groups\" value=\"payments-approvers,auditors\"></p>\
         <p><button type=\"submit\">Sign in</button></p></form>",
        hidden("client_id", &request.client_id),
        hidden("redirect_uri", &request.redirect_uri),
        hidden("state", &request.state),
        hidden("code_challenge", &request.code_challenge),
        hidden("code_challenge_method", &request.code_challenge_method),
    );
    plain_page(StatusCode::OK, "Sign in to Tollgate (dev issuer)", &body)
}

#[derive(Deserialize)]
pub struct DevSignIn {
    #[serde(flatten)]
    request: DevAuthorize,
    sub: String,
    groups: String,
}

/// The dev sign-in form's answer: an authorization code for the console's callback.
pub async fn dev_sign_in(
    State(console): State<Arc<Console>>,
    Form(form): Form<DevSignIn>,
) -> Response {
    if let Err(why) = console.check_dev_authorize(&form.request) {
        return try_again(StatusCode::BAD_REQUEST, &why);
    }
    let sub = form.sub.trim();
    if sub.is_empty() || sub.len() > 200 || sub.chars().any(char::is_control) {
        return try_again(
            StatusCode::BAD_REQUEST,
            "Name yourself with an email address.",
        );
    }
    let groups: Vec<String> = form
        .groups
        .split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .map(str::to_owned)
        .collect();
    let Provider::Dev { codes, .. } = &console.provider else {
        return not_found().await;
    };
    let redirect_uri = console.redirect_uri();
    let code = codes.issue(
        form.request.code_challenge.as_deref().unwrap_or_default(),
        &redirect_uri,
        sub,
        groups,
    );
    let state = form.request.state.unwrap_or_default();
    match reqwest::Url::parse_with_params(&redirect_uri, &[("code", code), ("state", state)]) {
        Ok(url) => Redirect::to(url.as_str()).into_response(),
        Err(_) => not_found().await,
    }
}

impl Console {
    /// A dev authorization request must come from this console's own client, to its own
    /// callback, with an S256 challenge.
    fn check_dev_authorize(&self, request: &DevAuthorize) -> Result<(), String> {
        if request.client_id.as_deref() != Some(self.settings.console_client_id.as_str()) {
            return Err("unknown client_id".into());
        }
        if request.redirect_uri.as_deref() != Some(self.redirect_uri().as_str()) {
            return Err("redirect_uri is not the console's".into());
        }
        if request.code_challenge_method.as_deref() != Some("S256")
            || request
                .code_challenge
                .as_deref()
                .is_none_or(|c| c.len() < 43)
        {
            return Err("a PKCE S256 code_challenge is required".into());
        }
        if request.state.as_deref().is_none_or(str::is_empty) {
            return Err("state is required".into());
        }
        Ok(())
    }

    /// The authorization code exchanged for the operator's access token.
    async fn exchange(&self, code: &str, verifier: &str) -> Result<String, String> {
        let redirect_uri = self.redirect_uri();
        match &self.provider {
            Provider::Dev { key, kid, codes } => {
                let (sub, groups) = codes.redeem(code, verifier, &redirect_uri)?;
                let request = crate::issuer::TokenRequest {
                    email: Some(sub.clone()),
                    sub,
                    groups,
                    audience: self.parts.operator_audience.clone(),
                    ttl: DEV_TOKEN_TTL,
                    expired: false,
                    claims: Vec::new(),
                };
                crate::issuer::mint(key, kid, &request, std::time::SystemTime::now())
                    .map_err(|e| format!("the dev issuer cannot sign: {e}"))
            }
            Provider::Remote {
                token_endpoint,
                client_secret,
                ..
            } => {
                let mut form = vec![
                    ("grant_type", "authorization_code"),
                    ("code", code),
                    ("redirect_uri", redirect_uri.as_str()),
                    ("client_id", self.settings.console_client_id.as_str()),
                    ("code_verifier", verifier),
                    ("resource", self.settings.console_resource.as_str()),
                ];
                if let Some(secret) = client_secret {
                    form.push(("client_secret", secret.as_str()));
                }
                let body = serde_urlencoded::to_string(&form).map_err(|e| e.to_string())?;
                let answer = crate::approvals::http::send(
                    "POST",
                    token_endpoint,
                    Some("application/x-www-form-urlencoded"),
                    body.as_bytes(),
                    super::DISCOVERY_TIMEOUT,
                )
                .await
                .map_err(|e| format!("the identity provider's token endpoint: {e}"))?;
                let answer: Value = serde_json::from_slice(&answer)
                    .map_err(|_| "the token endpoint's answer is not JSON".to_owned())?;
                answer
                    .get("access_token")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .ok_or_else(|| "the token endpoint returned no access_token".to_owned())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn text_in_pages_is_escaped() {
        assert_eq!(
            super::escape("<a href='x'>&\"</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;"
        );
    }
}
