"""Attack client for the gateway's end-to-end tests: sends MCP requests with exactly the framing a
test asks for, over raw sockets (HTTP/1.1) or the `h2` library (HTTP/2 with prior knowledge, or
TLS with ALPN h2), and prints what came back as JSON.

    python gate_client.py --addr 127.0.0.1:PORT [--tls] PLAN_JSON

PLAN_JSON is a list of requests, each an object:

    proto      "h1" or "h2"
    framing    h1: "cl" (Content-Length), "chunked", "chunked-trailers", "abort" (half the body,
               then the connection is closed), "pipeline" (every body of `bodies` written
               back-to-back on one connection, then the answers read in order), "none" (no body
               and no framing header)
               h2: "end-stream" (END_STREAM on the last DATA frame), "trailers" (the body, then a
               TRAILERS frame ending the stream), "split-trailers" (the body in DATA frames of
               `piece` bytes, then trailers), "rst" (half the body, then RST_STREAM), "none"
               (HEADERS with END_STREAM, no body)
    method     default POST
    path       default /mcp
    headers    extra request headers, [[name, value], ...] (the token and MCP headers are added
               from `token`, `session`)
    body       the body as text, or body_b64 for arbitrary bytes; bodies for "pipeline"

The output is a JSON list with one answer per request (a list of answers for "pipeline"):
{"status", "headers": [[name, value]], "body", "trailers": [[name, value]], "error"}. A request
that got no answer (reset, closed) has status null and says why in "error".
"""

import base64
import json
import socket
import ssl
import sys
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions

TIMEOUT_S = 15.0


def body_bytes(spec):
    if "body_b64" in spec:
        return base64.b64decode(spec["body_b64"])
    return spec.get("body", "").encode("utf-8")


def mcp_headers(spec):
    # A default the plan's own headers name is left out (a 2026-07-28 request sends its own
    # MCP-Protocol-Version).
    named = {k.lower() for k, _ in spec.get("headers", [])}
    headers = [
        (k, v)
        for k, v in [
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
            ("mcp-protocol-version", "2025-06-18"),
        ]
        if k not in named
    ]
    if spec.get("token"):
        headers.append(("authorization", "Bearer " + spec["token"]))
    if spec.get("session"):
        headers.append(("mcp-session-id", spec["session"]))
    headers.extend((k, v) for k, v in spec.get("headers", []))
    return headers


def connect(host, port, tls, alpn):
    sock = socket.create_connection((host, port), timeout=TIMEOUT_S)
    if tls:
        ctx = ssl.create_default_context()
        # The test's self-signed certificate: this client checks the gateway, not the PKI.
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols([alpn])
        sock = ctx.wrap_socket(sock, server_hostname="localhost")
        if sock.selected_alpn_protocol() != alpn:
            raise RuntimeError("ALPN: wanted %s, got %s" % (alpn, sock.selected_alpn_protocol()))
    return sock


# --- HTTP/1.1 ------------------------------------------------------------------------------------


class Reader:
    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("connection closed")
        self.buf += data

    def line(self):
        while b"\r\n" not in self.buf:
            self.fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode("latin-1")

    def exact(self, n):
        while len(self.buf) < n:
            self.fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def rest(self):
        try:
            while True:
                self.fill()
        except (EOFError, OSError):
            pass
        out, self.buf = self.buf, b""
        return out


def h1_read_answer(reader, method):
    status_line = reader.line()
    while status_line == "":
        status_line = reader.line()
    status = int(status_line.split(" ", 2)[1])
    headers = []
    while True:
        line = reader.line()
        if line == "":
            break
        name, _, value = line.partition(":")
        headers.append([name.strip().lower(), value.strip()])
    names = {k: v for k, v in headers}
    trailers = []
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        body = b""
    elif "chunked" in names.get("transfer-encoding", "").lower():
        body = b""
        while True:
            size = int(reader.line().split(";")[0].strip(), 16)
            if size == 0:
                break
            body += reader.exact(size)
            reader.exact(2)
        while True:
            line = reader.line()
            if line == "":
                break
            name, _, value = line.partition(":")
            trailers.append([name.strip().lower(), value.strip()])
    elif "content-length" in names:
        body = reader.exact(int(names["content-length"]))
    else:
        body = reader.rest()
    return {
        "status": status,
        "headers": headers,
        "body": body.decode("utf-8", "replace"),
        "trailers": trailers,
        "error": None,
    }


def h1_request_bytes(spec, body, framing, keep_alive):
    method = spec.get("method", "POST")
    path = spec.get("path", "/mcp")
    head = ["%s %s HTTP/1.1" % (method, path), "host: localhost"]
    head += ["%s: %s" % (k, v) for k, v in mcp_headers(spec)]
    if not keep_alive:
        head.append("connection: close")
    if framing in ("cl", "abort"):
        head.append("content-length: %d" % len(body))
        data = body
    elif framing in ("chunked", "chunked-trailers"):
        head.append("transfer-encoding: chunked")
        if framing == "chunked-trailers":
            head.append("te: trailers")
        data = b""
        for i in range(0, len(body), 16):
            piece = body[i : i + 16]
            data += b"%x\r\n%s\r\n" % (len(piece), piece)
        data += b"0\r\n"
        if framing == "chunked-trailers":
            data += b"x-trailer: 1\r\n"
        data += b"\r\n"
    elif framing == "none":
        data = b""
    else:
        raise ValueError("unknown h1 framing " + framing)
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + data


def h1_request(addr, tls, spec):
    framing = spec.get("framing", "cl")
    sock = connect(addr[0], addr[1], tls, "http/1.1")
    try:
        if framing == "pipeline":
            bodies = [b.encode("utf-8") for b in spec["bodies"]]
            wire = b""
            for i, body in enumerate(bodies):
                wire += h1_request_bytes(spec, body, "cl", keep_alive=i + 1 < len(bodies))
            sock.sendall(wire)
            reader = Reader(sock)
            answers = []
            for _ in bodies:
                try:
                    answers.append(h1_read_answer(reader, "POST"))
                except (EOFError, OSError) as err:
                    answers.append(no_answer("no answer: %s" % err))
            return answers
        body = body_bytes(spec)
        wire = h1_request_bytes(spec, body, framing, keep_alive=False)
        if framing == "abort":
            # Everything but the second half of the body, then close: the request never ends.
            sock.sendall(wire[: len(wire) - len(body) + len(body) // 2])
            time.sleep(0.2)
            sock.close()
            return no_answer("aborted by the client")
        sock.sendall(wire)
        try:
            return h1_read_answer(Reader(sock), spec.get("method", "POST"))
        except (EOFError, OSError) as err:
            return no_answer("no answer: %s" % err)
    finally:
        sock.close()


def no_answer(why):
    return {"status": None, "headers": [], "body": "", "trailers": [], "error": why}


# --- HTTP/2 --------------------------------------------------------------------------------------


def h2_request(addr, tls, spec):
    framing = spec.get("framing", "end-stream")
    sock = connect(addr[0], addr[1], tls, "h2")
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    body = body_bytes(spec)
    method = spec.get("method", "POST")
    headers = [
        (":method", method),
        (":scheme", "https" if tls else "http"),
        (":authority", "localhost"),
        (":path", spec.get("path", "/mcp")),
    ] + mcp_headers(spec)
    if framing == "end-stream" and spec.get("content_length", True):
        headers.append(("content-length", str(len(body))))
    stream = conn.get_next_available_stream_id()
    answer = {"status": None, "headers": [], "body": "", "trailers": [], "error": None}
    raw = b""
    try:
        if framing == "none":
            conn.send_headers(stream, headers, end_stream=True)
        else:
            conn.send_headers(stream, headers)
            if framing == "end-stream":
                conn.send_data(stream, body, end_stream=True)
            elif framing in ("trailers", "split-trailers"):
                piece = spec.get("piece", 7) if framing == "split-trailers" else max(len(body), 1)
                for i in range(0, len(body), piece):
                    conn.send_data(stream, body[i : i + piece])
                    sock.sendall(conn.data_to_send())
                conn.send_headers(stream, [("x-trailer", "1")], end_stream=True)
            elif framing == "rst":
                conn.send_data(stream, body[: len(body) // 2])
                sock.sendall(conn.data_to_send())
                time.sleep(0.2)
                conn.reset_stream(stream, error_code=8)  # CANCEL
                sock.sendall(conn.data_to_send())
                time.sleep(0.2)
                answer["error"] = "reset by the client"
                return answer
            else:
                raise ValueError("unknown h2 framing " + framing)
        sock.sendall(conn.data_to_send())
        done = False
        while not done:
            data = sock.recv(65536)
            if not data:
                answer["error"] = answer["error"] or "connection closed"
                break
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream:
                    fields = [[k, v] for k, v in event.headers]
                    if answer["status"] is None:
                        answer["status"] = int(dict(event.headers)[":status"])
                    answer["headers"] += [f for f in fields if not f[0].startswith(":")]
                elif isinstance(event, h2.events.DataReceived) and event.stream_id == stream:
                    raw += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, stream)
                elif isinstance(event, h2.events.TrailersReceived) and event.stream_id == stream:
                    answer["trailers"] = [[k, v] for k, v in event.headers]
                elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream:
                    done = True
                elif isinstance(event, h2.events.StreamReset) and event.stream_id == stream:
                    answer["error"] = "stream reset by the gateway (code %s)" % event.error_code
                    done = True
                elif isinstance(event, h2.events.ConnectionTerminated):
                    answer["error"] = "GOAWAY (code %s)" % event.error_code
                    done = done or answer["status"] is None
            sock.sendall(conn.data_to_send())
    except (OSError, h2.exceptions.H2Error) as err:
        answer["error"] = "%s: %s" % (type(err).__name__, err)
    finally:
        answer["body"] = raw.decode("utf-8", "replace")
        try:
            conn.close_connection()
            sock.sendall(conn.data_to_send())
        except Exception:  # noqa: BLE001 - best effort goodbye
            pass
        sock.close()
    return answer


def main():
    args = sys.argv[1:]
    tls = "--tls" in args
    args = [a for a in args if a != "--tls"]
    addr_at = args.index("--addr")
    host, port = args[addr_at + 1].rsplit(":", 1)
    del args[addr_at : addr_at + 2]
    plan = json.loads(args[0])
    out = []
    for spec in plan:
        try:
            if spec.get("proto", "h1") == "h2":
                out.append(h2_request((host, int(port)), tls, spec))
            else:
                out.append(h1_request((host, int(port)), tls, spec))
        except Exception as err:  # noqa: BLE001 - reported to the test, which decides
            out.append(no_answer("%s: %s" % (type(err).__name__, err)))
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
