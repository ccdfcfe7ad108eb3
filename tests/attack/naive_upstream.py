"""A deliberately naive MCP upstream for the gateway's parser-differential and response-trailer
tests. It reads JSON the way a lax server might: object keys compared case-insensitively after
Unicode compatibility folding (so `Name` and fullwidth `ｎａｍｅ` are `name`), the FIRST of
duplicate keys wins, lone surrogates pass, invalid UTF-8 is replaced. Whatever it would execute it
logs and says in its answer, so a test can show that a body the gateway's parser reads one way
would run something else here.

Environment: PORT (listen on 127.0.0.1:PORT), NAIVE_LOG (append one JSON line per request: the
same fields as the payments server's request log), NAIVE_MODE:
  mcp       (default) a JSON-RPC result {"executed": TOOL} as application/json
  trailers  a JSON-RPC result holding the card number 4111111111111111, chunked, with trailers;
            a call whose arguments mention "sse" gets it as an SSE event stream (also chunked,
            with trailers)
"""

import hashlib
import json
import os
import sys
import time
import unicodedata
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOG = os.environ.get("NAIVE_LOG")
MODE = os.environ.get("NAIVE_MODE", "mcp")
CARD = "4111111111111111"


def fold(key):
    return unicodedata.normalize("NFKC", key).casefold()


def first_wins(pairs):
    out = {}
    for key, value in pairs:
        out.setdefault(fold(key), value)
    return out


def naive_parse(body):
    try:
        return json.loads(body.decode("utf-8", "replace"), object_pairs_hook=first_wins)
    except ValueError:
        return None


def what_it_runs(message):
    if not isinstance(message, dict):
        return None, None
    method = message.get("method")
    params = message.get("params") if isinstance(message.get("params"), dict) else {}
    target = params.get("uri") if method == "resources/read" else params.get("name")
    return method, target


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # stderr, not the request log
        sys.stderr.write("naive-upstream " + (fmt % args) + "\n")

    def read_body(self):
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            body = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return body
                body += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("content-length", "0") or 0))

    def handle_any(self):
        ts_us = time.time_ns() // 1000
        body = self.read_body()
        message = naive_parse(body) if body else None
        method, target = what_it_runs(message)
        line = {
            "ts_us": ts_us,
            "ts_ms": ts_us // 1000,
            "http": self.command,
            "path": self.path.split("?", 1)[0],
            "target": self.path,
            "x_request_id": self.headers.get("x-request-id"),
            "session": self.headers.get("mcp-session-id"),
            "bytes": len(body),
            "body_sha256": hashlib.sha256(body).hexdigest(),
            "method": method,
            "rpc_target": target,
        }
        if method == "tools/call":
            line["tool"] = target
        if LOG:
            with open(LOG, "a") as f:
                f.write(json.dumps(line) + "\n")
        ident = message.get("id") if isinstance(message, dict) else None
        if MODE == "trailers" and method is not None:
            sse = "sse" in json.dumps(message.get("params"))
            self.answer_with_trailers(ident, sse)
        else:
            payload = {"jsonrpc": "2.0", "id": ident, "result": {"executed": target}}
            data = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    def answer_with_trailers(self, ident, sse):
        result = {"content": [{"type": "text", "text": "card on file " + CARD}]}
        payload = json.dumps({"jsonrpc": "2.0", "id": ident, "result": result}).encode()
        if sse:
            payload = b"event: message\ndata: " + payload + b"\n\n"
        self.send_response(200)
        self.send_header("content-type", "text/event-stream" if sse else "application/json")
        self.send_header("transfer-encoding", "chunked")
        self.send_header("trailer", "x-upstream-trailer")
        self.end_headers()
        # Small chunks, so the card number is split across them.
        for i in range(0, len(payload), 11):
            piece = payload[i : i + 11]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        self.wfile.write(b"0\r\nx-upstream-trailer: done\r\n\r\n")
        self.wfile.flush()

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = handle_any


def main():
    server = ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)
    print("naive-upstream listening on http://127.0.0.1:%s/mcp" % os.environ["PORT"], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
