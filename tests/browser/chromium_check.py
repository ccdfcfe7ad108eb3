#!/usr/bin/env python3
"""Playwright drives the system Chromium (the browser tests' one: Playwright's own download is
not used), and what that Chromium does with the console's session cookie on a plain-http
loopback origin: is a `Secure; HttpOnly; SameSite=Strict` cookie kept and sent back at
http://127.0.0.1:PORT and http://localhost:PORT? A host name that is not loopback
(`console.test`, mapped to 127.0.0.1 inside Chromium) is the control: there a Secure cookie over
http must be dropped, or the loopback answer says nothing. And which of the console's cookies
come back with the redirect from the provider's login form to the console's callback, when the
provider is on the same site and when it is not (SameSite=Strict against Lax).

usage: .venv/bin/python tests/browser/chromium_check.py   (after `make browser-deps`; the browser
is $TOLLGATE_CHROMIUM, else /usr/bin/chromium; exits non-zero on a failed check)
"""

import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, urlsplit

from playwright.sync_api import sync_playwright

CHROMIUM = os.environ.get("TOLLGATE_CHROMIUM") or "/usr/bin/chromium"
TITLE = "Tollgate browser check"
SECURE = "session=s1; Path=/; Secure; HttpOnly; SameSite=Strict"
# Same attributes without Secure: shows the page can set cookies at all.
PLAIN = "plain=p1; Path=/; HttpOnly; SameSite=Strict"
# What a sign-in state cookie (PKCE verifier, state) could use instead of Strict.
LAX = "lax=l1; Path=/; Secure; HttpOnly; SameSite=Lax"
# A name Chromium resolves to the loopback server but does not treat as a trustworthy origin.
CONTROL_HOST = "console.test"


class Site(BaseHTTPRequestHandler):
    # Cookie header of the last /echo request, by Host header.
    received = {}

    def do_POST(self):
        # /bounce?to=URL: 303 to URL, as the provider's login form answers with a redirect to
        # the console's callback.
        self.send_response(303)
        self.send_header("location", parse_qs(urlsplit(self.path).query)["to"][0])
        self.send_header("content-length", "0")
        self.end_headers()

    def do_GET(self):
        path = urlsplit(self.path).path
        if path == "/set":
            cookies = [SECURE, PLAIN, LAX]
        else:
            cookies = []
        if path == "/echo":
            Site.received[self.headers.get("host")] = self.headers.get("cookie") or ""
        body = f"<!doctype html><title>{TITLE}</title><p>{path}</p>"
        if path == "/hop":
            # A form on this origin whose answer redirects to ?to=: the sign-in's way back.
            body += f'<form method="post" action="/bounce?{urlsplit(self.path).query}"><button>go</button></form>'
        body = body.encode()
        self.send_response(200)
        self.send_header("content-type", "text/html; charset=utf-8")
        self.send_header("content-length", str(len(body)))
        for cookie in cookies:
            self.send_header("set-cookie", cookie)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Server(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        # A context closed mid-request (the favicon fetch) is not a failure.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def cookie_kept(browser, origin, host_header):
    """(stored, sent back) for the Secure cookie and the plain one, set by `origin`/set."""
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"{origin}/")
        title_ok = page.title() == TITLE
        page.goto(f"{origin}/set")
        stored = {c["name"]: c for c in context.cookies()}
        page.goto(f"{origin}/echo")
        sent = Site.received.get(host_header, "")
        return title_ok, {
            "secure": ("session" in stored, "session=s1" in sent),
            "plain": ("plain" in stored, "plain=p1" in sent),
            "stored": stored,
        }
    finally:
        context.close()


def sent_after_redirect(browser, console, provider):
    """The cookies `console`/set stored that come back to `console`/echo when a form posted on
    `provider` redirects there: the browser's return from the sign-in page to the callback."""
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"{console}/set")
        page.goto(f"{provider}/hop?to={quote(console + '/echo', safe='')}")
        with page.expect_navigation(url=f"{console}/echo"):
            page.click("button")
        sent = Site.received.get(urlsplit(console).netloc, "")
        return sorted(part.split("=")[0] for part in sent.split("; ") if part)
    finally:
        context.close()


def main():
    server = Server(("127.0.0.1", 0), Site)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    # A second origin on the same host: the provider beside the console in the tests.
    other = Server(("127.0.0.1", 0), Site)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    other_port = other.server_address[1]

    args = [f"--host-resolver-rules=MAP {CONTROL_HOST} 127.0.0.1"]
    if os.geteuid() == 0:
        args.append("--no-sandbox")  # Chromium refuses to start its sandbox as root
    failures = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        print(f"chromium {browser.version} from {CHROMIUM}, driven by Playwright")
        results = {}
        for host in ("127.0.0.1", "localhost", CONTROL_HOST):
            title_ok, result = cookie_kept(browser, f"http://{host}:{port}", f"{host}:{port}")
            results[host] = result
            if not title_ok:
                failures.append(f"{host}: the page title did not come through")
            if result["plain"] != (True, True):
                failures.append(f"{host}: even a cookie without Secure was not kept")
            stored, sent = result["secure"]
            attrs = result["stored"].get("session", {})
            detail = f" (secure={attrs.get('secure')}, httpOnly={attrs.get('httpOnly')}, sameSite={attrs.get('sameSite')})" if attrs else ""
            print(f"http://{host}:PORT  Secure; HttpOnly; SameSite=Strict cookie: "
                  f"{'stored' if stored else 'NOT stored'}{detail}, {'sent back' if sent else 'NOT sent back'}")

        # SameSite is by site (scheme and host), not port: a provider on another port of
        # 127.0.0.1 is same-site and Strict cookies ride along; one on another host is not.
        console = f"http://127.0.0.1:{port}"
        same_site = sent_after_redirect(browser, console, f"http://127.0.0.1:{other_port}")
        cross_site = sent_after_redirect(browser, console, f"http://localhost:{other_port}")
        print(f"back from a form on 127.0.0.1:OTHER (same site), the console receives: {', '.join(same_site)}")
        print(f"back from a form on localhost:OTHER (cross site), the console receives: {', '.join(cross_site)}")
        if same_site != ["lax", "plain", "session"]:
            failures.append(f"same-site return: expected every cookie, got {same_site}")
        if cross_site != ["lax"]:
            failures.append(f"cross-site return: expected only the Lax cookie, got {cross_site}")
        browser.close()
    server.shutdown()
    other.shutdown()

    # The answers the console's tests rely on: a Secure session cookie works on plain-http
    # loopback (the console under test is served on 127.0.0.1 without TLS), and only there.
    for host in ("127.0.0.1", "localhost"):
        if results[host]["secure"] != (True, True):
            failures.append(f"{host}: the Secure cookie was not stored and sent back")
    if results[CONTROL_HOST]["secure"] != (False, False):
        failures.append(f"{CONTROL_HOST}: a Secure cookie over http was kept; the loopback result means nothing")

    for failure in failures:
        print("FAIL  " + failure)
    if failures:
        sys.exit(1)
    print("all checks passed")


if __name__ == "__main__":
    main()
