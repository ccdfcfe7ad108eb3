#!/usr/bin/env python3
"""A small MCP client (streamable HTTP, stdlib only) for trying the gateway by hand.

usage: mcp_client.py URL TOKEN STEP...
  STEP is a method with optional JSON params:   tools/list   'resources/read {"uri":"payments://policy"}'
  or a tool call:                                'tools/call get_customer {"customer_id":"cus_1"}'
It initializes a session first, then prints each answer (HTTP status and the JSON-RPC message).
"""
import json
import sys
import urllib.error
import urllib.request


def post(url, token, session, message):
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": "2025-06-18",
        "Authorization": "Bearer " + token,
    }
    if session:
        headers["Mcp-Session-Id"] = session
    request = urllib.request.Request(url, json.dumps(message).encode(), headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.headers, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read().decode("utf-8", "replace")


def last_message(content_type, text):
    """The JSON-RPC answer: the body, or the last JSON `data:` event of an SSE stream."""
    if "text/event-stream" not in (content_type or ""):
        return json.loads(text) if text.strip() else None
    answer = None
    for event in text.split("\n\n"):
        data = "\n".join(line[5:].strip() for line in event.splitlines() if line.startswith("data:"))
        if data:
            answer = json.loads(data)
    return answer


def step_message(step, request_id):
    method, _, rest = step.partition(" ")
    if method == "tools/call":
        name, _, arguments = rest.partition(" ")
        params = {"name": name, "arguments": json.loads(arguments) if arguments else {}}
    else:
        params = json.loads(rest) if rest else None
    message = {"jsonrpc": "2.0", "id": request_id, "method": method}
    if params is not None:
        message["params"] = params
    return message


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    url, token, steps = sys.argv[1], sys.argv[2], sys.argv[3:]
    init = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "tollgate-mcp-client", "version": "1"}}}
    status, headers, text = post(url, token, None, init)
    print(f"initialize -> HTTP {status}")
    if status != 200:
        print(text)
        sys.exit(1)
    session = headers.get("Mcp-Session-Id")
    post(url, token, session, {"jsonrpc": "2.0", "method": "notifications/initialized"})
    for n, step in enumerate(steps, start=1):
        status, headers, text = post(url, token, session, step_message(step, n))
        print(f"{step} -> HTTP {status}")
        try:
            print(json.dumps(last_message(headers.get("Content-Type"), text), indent=2))
        except ValueError:
            print(text)


if __name__ == "__main__":
    main()
