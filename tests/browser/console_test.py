"""The operator console in a real browser (Debian's Chromium, driven by Playwright).

Run by tests/tests/console.rs against a running stack: a real OpenID provider, the control plane
with its console, Envoy with the filter and the demo payments server. The agent's calls go
through the gateway with the provider's tokens; the approver works only in the browser:

1. signs in at the provider (authorization code + PKCE) and lands on the approvals page;
2. sees a held payout change appear live, opens it, approves it by keyboard alone, and the
   held call completes;
3. tries to approve a request of their own (a second person, in a second browser) and is
   refused by the server;
4. replays the session; verifies the log; downloads an export bundle and verifies it offline
   with tollgate-verify; revokes an identity with a reason.

Every page's form fields must have labels, no page may break the Content-Security-Policy, and a
screenshot of each page is kept in --screenshots. Prints one JSON summary line; exits non-zero
on the first failed check.
"""

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

from playwright.sync_api import expect, sync_playwright

PAYOUT_TOOL = "update_payout_account"


def fail(message):
    print(f"FAILED: {message}", file=sys.stderr)
    sys.exit(1)


def check(condition, message):
    if not condition:
        fail(message)


def post_json(url, body, headers=None, form=False):
    data = urllib.parse.urlencode(body).encode() if form else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST")
    request.add_header("content-type", "application/x-www-form-urlencoded" if form else "application/json")
    for key, value in (headers or {}).items():
        request.add_header(key, value)
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read().decode()


def person_token(issuer, sub, resource):
    status, _, body = post_json(f"{issuer}/token", {
        "grant_type": "password", "client_id": "tollgate-cli", "client_secret": "tollgate-cli-secret",
        "username": sub, "password": sub, "resource": resource,
    }, form=True)
    check(status == 200, f"token for {sub}: {status} {body}")
    return json.loads(body)["access_token"]


class Agent:
    """An MCP client through the gateway, as one person."""

    def __init__(self, gateway, token):
        self.gateway = gateway
        self.token = token
        self.session = None
        status, headers, body = self.post({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "console-test", "version": "1"}}})
        check(status == 200, f"initialize: {status} {body}")
        self.session = {k.lower(): v for k, v in headers.items()}.get("mcp-session-id")
        self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def post(self, message):
        headers = {"authorization": f"Bearer {self.token}", "accept": "application/json, text/event-stream",
                   "mcp-protocol-version": "2025-06-18"}
        if self.session:
            headers["mcp-session-id"] = self.session
        return post_json(self.gateway, message, headers)

    def payout_change(self, call_id, account):
        status, _, body = self.post({"jsonrpc": "2.0", "id": call_id, "method": "tools/call", "params": {
            "name": PAYOUT_TOOL, "arguments": {"merchant_id": "m_2", "account_number": account, "routing_number": "110000000"}}})
        text = body
        if "data:" in body and not body.lstrip().startswith("{"):
            text = "\n".join(line[5:].strip() for line in body.splitlines() if line.startswith("data:"))
        try:
            return status, json.loads(text)
        except ValueError:
            return status, {"raw": body}


def in_background(function):
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.setdefault("value", function()), daemon=True)
    thread.start()
    return thread, outcome


class Pages:
    """Screenshots and the checks every page gets."""

    def __init__(self, directory):
        self.directory = directory
        self.csp_violations = []
        self.taken = []
        os.makedirs(directory, exist_ok=True)

    def watch(self, page):
        page.on("console", lambda message: self.csp_violations.append(message.text)
                if "Content Security Policy" in message.text else None)

    def settle(self, page, name):
        """Checks labels on the page as shown, and keeps a screenshot of it."""
        unlabelled = page.evaluate("""() => [...document.querySelectorAll('input, select, textarea')]
            .filter((e) => e.type !== 'hidden' && !e.hidden && e.offsetParent !== null)
            .filter((e) => !(e.labels && e.labels.length) && !e.getAttribute('aria-label'))
            .map((e) => e.outerHTML)""")
        check(not unlabelled, f"{name}: form fields without a label: {unlabelled}")
        unnamed = page.evaluate("""() => [...document.querySelectorAll('button, a[href]')]
            .filter((e) => e.offsetParent !== null && !(e.textContent.trim() || e.getAttribute('aria-label')))
            .map((e) => e.outerHTML)""")
        check(not unnamed, f"{name}: buttons or links without a name: {unnamed}")
        path = os.path.join(self.directory, f"{len(self.taken) + 1:02d}-{name}.png")
        page.screenshot(path=path, full_page=True)
        self.taken.append(path)


def sign_in(page, console, email, pages, name):
    page.goto(f"{console}/approvals")
    # The console sent the browser to the provider's sign-in page.
    expect(page.get_by_label("Email")).to_be_visible(timeout=15000)
    pages.settle(page, f"{name}-provider-sign-in")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(email)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Approvals", level=1)).to_be_visible(timeout=15000)
    expect(page.locator("#signed-in-as")).to_contain_text(email)
    check(page.url.startswith(console), f"after sign-in the browser is at {page.url}")


def session_cookie(context):
    cookies = [c for c in context.cookies() if c["name"] == "tollgate-session"]
    check(len(cookies) == 1, f"one session cookie, got {cookies}")
    return cookies[0]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--console", required=True)
    parser.add_argument("--gateway", required=True)
    parser.add_argument("--issuer", required=True)
    parser.add_argument("--verifier", required=True, help="the tollgate-verify binary")
    parser.add_argument("--log-keys", required=True, help="the log's verifier keys file")
    parser.add_argument("--screenshots", required=True)
    parser.add_argument("--downloads", required=True)
    parser.add_argument("--chromium", default=os.environ.get("TOLLGATE_CHROMIUM", "/usr/bin/chromium"))
    args = parser.parse_args()
    console = args.console.rstrip("/")
    summary = {}
    pages = Pages(args.screenshots)

    alice = Agent(args.gateway, person_token(args.issuer, "alice@example.com", args.gateway))
    carol = Agent(args.gateway, person_token(args.issuer, "carol@example.com", args.gateway))

    with sync_playwright() as playwright:
        launch = ["--no-sandbox"] if os.geteuid() == 0 else []
        browser = playwright.chromium.launch(executable_path=args.chromium, headless=True, args=launch)
        bob_context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 900})
        page = bob_context.new_page()
        pages.watch(page)

        # 1. Sign in as the approver.
        started = time.monotonic()
        sign_in(page, console, "bob@example.com", pages, "approver")
        cookie = session_cookie(bob_context)
        check(cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Lax", f"session cookie attributes: {cookie}")
        check(page.evaluate("document.cookie").find("tollgate-session") < 0, "the session cookie is readable by scripts")
        expect(page.locator("#live-status")).to_contain_text("Live", timeout=10000)
        pages.settle(page, "approvals-empty")

        # 2. A held payout change appears live, and is approved by keyboard alone.
        held_at = time.monotonic()
        held, held_answer = in_background(lambda: alice.payout_change(2, "000123456789"))
        row = page.locator("tr[data-approval]").filter(has_text=PAYOUT_TOOL)
        expect(row).to_be_visible(timeout=10000)
        summary["heldCallShownAfterSeconds"] = round(time.monotonic() - held_at, 3)
        check("alice@example.com" in row.inner_text(), f"requester in the row: {row.inner_text()}")
        pages.settle(page, "approvals-pending")
        row.get_by_role("link", name="Review").click()
        expect(page.get_by_role("heading", level=1)).to_contain_text("Approval apr_", timeout=10000)
        approval_id = page.get_by_role("heading", level=1).inner_text().split()[-1]
        expect(page.locator("#arguments")).to_contain_text("000123456789")
        pages.settle(page, "approval")
        # Keyboard only: from the page's heading, Tab to the reason, type it, Tab to Approve.
        page.get_by_role("heading", level=1).focus()
        for _ in range(40):
            page.keyboard.press("Tab")
            if page.evaluate("document.activeElement.id") == "reason":
                break
        else:
            fail("Tab never reached the reason field")
        check(page.evaluate("document.activeElement.labels[0].textContent").startswith("Reason"), "the focused field is labelled")
        page.keyboard.type("Verified the new account with the merchant by phone")
        page.keyboard.press("Tab")
        check(page.evaluate("document.activeElement.textContent") == "Approve", "Tab after the reason reaches Approve")
        page.keyboard.press("Enter")
        expect(page.get_by_role("alert")).to_contain_text("Approved", timeout=10000)
        held.join(60)
        check(not held.is_alive(), "the held call did not complete after the approval")
        status, answer = held_answer["value"]
        check(status == 200 and "result" in answer, f"the approved call's answer: {status} {answer}")
        summary["signInToCompletionSeconds"] = round(time.monotonic() - started, 3)
        summary["approvalId"] = approval_id
        pages.settle(page, "approval-approved")

        # 3. A request of one's own cannot be approved: the server refuses it.
        own, own_answer = in_background(lambda: carol.payout_change(3, "000999888777"))
        page.goto(f"{console}/approvals")
        carol_row = page.locator("tr[data-approval]").filter(has_text="carol@example.com")
        expect(carol_row).to_be_visible(timeout=10000)
        carol_approval = carol_row.get_attribute("data-approval")
        carol_context = browser.new_context(viewport={"width": 1280, "height": 900})
        carol_page = carol_context.new_page()
        pages.watch(carol_page)
        sign_in(carol_page, console, "carol@example.com", pages, "requester")
        carol_page.goto(f"{console}/approvals/{carol_approval}")
        carol_page.get_by_label("Reason (recorded with your decision)").fill("I approve my own change")
        carol_page.get_by_role("button", name="Approve").click()
        expect(carol_page.get_by_role("alert")).to_contain_text("Refused", timeout=10000)
        summary["selfApprovalRefusal"] = carol_page.get_by_role("alert").inner_text()
        pages.settle(carol_page, "self-approval-refused")
        # The server refuses it however it is sent, not only through the page.
        forged = carol_page.evaluate("""async (id) => {
            const me = await (await fetch('/api/me')).json();
            const r = await fetch(`/api/approvals/${id}/decision`, {method: 'POST',
              headers: {'content-type': 'application/json', 'x-csrf-token': me.csrf},
              body: JSON.stringify({approve: true, reason: 'scripted'})});
            return [r.status, await r.text()];
        }""", carol_approval)
        check(forged[0] == 403, f"a scripted self-approval: {forged}")
        # Without the CSRF token even the approver's own browser session changes nothing.
        no_csrf = page.evaluate("""async (id) => {
            const r = await fetch(`/api/approvals/${id}/decision`, {method: 'POST',
              headers: {'content-type': 'application/json'}, body: JSON.stringify({approve: true, reason: 'x'})});
            return r.status;
        }""", carol_approval)
        check(no_csrf == 403, f"a decision without the CSRF token answered {no_csrf}")
        # Bob denies it, and carol's held call is released with the denial.
        page.goto(f"{console}/approvals/{carol_approval}")
        page.get_by_label("Reason (recorded with your decision)").fill("Payout changes need a ticket")
        page.get_by_role("button", name="Deny").click()
        expect(page.get_by_role("alert")).to_contain_text("Denied", timeout=10000)
        own.join(60)
        check(not own.is_alive(), "the denied call did not complete")
        status, answer = own_answer["value"]
        check("error" in answer and "denied" in json.dumps(answer), f"the denied call's answer: {status} {answer}")
        carol_context.close()

        # 4a. Sessions: search by person, open the session, see the timeline.
        page.get_by_role("link", name="Sessions").click()
        expect(page.get_by_role("heading", name="Sessions", level=1)).to_be_visible()
        page.get_by_label("Person (sub)").fill("alice@example.com")
        page.get_by_label("Tool").fill(PAYOUT_TOOL)
        page.get_by_role("button", name="Search").click()
        expect(page.get_by_role("table", name="Sessions")).to_be_visible(timeout=15000)
        rows = page.get_by_role("table", name="Sessions").locator("tbody tr")
        check(rows.count() == 1, f"one session of alice with a payout change, got {rows.count()}")
        pages.settle(page, "sessions")
        rows.first.get_by_role("link").click()
        expect(page.get_by_role("heading", name="Session replay")).to_be_visible(timeout=15000)
        timeline = page.locator("ol.timeline")
        expect(timeline).to_contain_text(PAYOUT_TOOL, timeout=15000)
        expect(timeline).to_contain_text("approv")
        summary["timelineRecords"] = timeline.locator("> li").count()
        pages.settle(page, "session-replay")

        # 4b. Evidence: verify the log, download a bundle and verify it offline.
        page.get_by_role("link", name="Evidence").click()
        expect(page.get_by_role("heading", name="Chain head")).to_be_visible(timeout=15000)
        page.get_by_role("button", name="Verify now").click()
        expect(page.locator("#last-verification .badge.intact")).to_be_visible(timeout=60000)
        # Verifying signed a fresh checkpoint, and the page shows it.
        expect(page.locator("#latest-checkpoint")).to_be_visible(timeout=10000)
        pages.settle(page, "evidence")
        with page.expect_download(timeout=60000) as download_info:
            page.get_by_role("button", name="Download bundle").click()
        download = download_info.value
        bundle = os.path.join(args.downloads, download.suggested_filename)
        download.save_as(bundle)
        verified = subprocess.run([args.verifier, bundle, "--key", args.log_keys], capture_output=True, text=True)
        check(verified.returncode == 0, f"tollgate-verify on the downloaded bundle: {verified.returncode} {verified.stdout} {verified.stderr}")
        summary["bundle"] = os.path.basename(bundle)
        summary["bundleVerified"] = verified.stdout.strip().splitlines()[-1] if verified.stdout.strip() else "exit 0"

        # 4c. Identities: revoke one with a reason.
        page.get_by_role("link", name="Identities").click()
        table = page.get_by_role("table", name="Identities")
        expect(table).to_be_visible(timeout=15000)
        check("alice@example.com" in table.inner_text(), "alice is among the identities")
        pages.settle(page, "identities")
        page.get_by_role("button", name="Revoke carol@example.com").click()
        page.get_by_label("Reason for revoking carol@example.com").fill("Left the payments team")
        page.get_by_role("button", name="Confirm revoke carol@example.com").click()
        expect(page.get_by_role("alert")).to_contain_text("Revoked carol@example.com", timeout=10000)
        summary["revocation"] = page.get_by_role("alert").inner_text()
        pages.settle(page, "identity-revoked")

        # Signing out ends the session on the server: the old cookie no longer works.
        page.get_by_role("button", name="Sign out").click()
        expect(page.get_by_role("heading", name="Signed out")).to_be_visible(timeout=10000)
        stale = bob_context.request.get(f"{console}/api/me", headers={"cookie": f"tollgate-session={cookie['value']}"})
        check(stale.status == 401, f"the signed-out session still answers {stale.status}")
        browser.close()

    check(not pages.csp_violations, f"Content-Security-Policy violations: {pages.csp_violations}")
    summary["screenshots"] = len(pages.taken)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
