#!/usr/bin/env python3
"""Opens MCP sessions for the benchmark's session rows and checks one call in each gateway.

usage: sessions.py URL TOKEN COUNT BODY_FILE EXPECT   (EXPECT: clear | masked)

Each session is what a client does first: `initialize`, then `notifications/initialized`. Then
one `tools/call` (BODY_FILE) in the first session must answer 200 with its card number in clear
(plain Envoy) or masked (Tollgate). Prints the session ids, comma-separated; exits 1 otherwise.
"""
import json
import re
import sys
import urllib.request


def post(url, token, body, session=None):
    headers = {"content-type": "application/json", "accept": "application/json, text/event-stream",
               "authorization": f"Bearer {token}"}
    if session:
        headers["mcp-session-id"] = session
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=10) as answer:
        return answer.status, answer.headers.get("mcp-session-id"), answer.read().decode()


def main():
    url, token, count, body_file, expect = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
    ids = []
    for i in range(count):
        status, session, _ = post(url, token, {
            "jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                       "clientInfo": {"name": "tollgate-bench", "version": "1"}}})
        if status != 200 or not session:
            sys.exit(f"sessions: initialize {i} answered {status} without a session id")
        status, _, _ = post(url, token, {"jsonrpc": "2.0", "method": "notifications/initialized"}, session)
        if status not in (200, 202):
            sys.exit(f"sessions: notifications/initialized answered {status}")
        ids.append(session)
    with open(body_file) as f:
        status, _, text = post(url, token, json.load(f), ids[0])
    clear = re.search(r"(?<![0-9])4[0-9]{15}(?![0-9])|(?<![0-9])5[1-5][0-9]{14}(?![0-9])", text)
    masked = "*" * 8 in text
    if status != 200 or (expect == "clear" and not clear) or (expect == "masked" and (clear or not masked)):
        sys.exit(f"sessions: the call in a session through {url} answered {status}, card number "
                 f"{'in clear' if clear else 'masked' if masked else 'absent'}; {expect} expected")
    print(",".join(ids))


if __name__ == "__main__":
    main()
