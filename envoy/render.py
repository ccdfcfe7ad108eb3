#!/usr/bin/env python3
"""Renders envoy/tollgate.yaml into a runnable Envoy bootstrap.

usage: render.py --out FILE --listen-port N --admin-port N --upstream URL --control-plane HOST:PORT
                 --jwks FILE --wasm FILE [--config JSON] [--plain]
--plain drops the Tollgate filter (plain Envoy with the same jwt_authn and routes, for benchmarks).
"""
import argparse, json, os, sys
from urllib.parse import urlsplit

HERE = os.path.dirname(os.path.abspath(__file__))

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--listen-port", type=int, default=10000)
    ap.add_argument("--admin-port", type=int, default=9901)
    ap.add_argument("--upstream", default="http://127.0.0.1:8081/mcp")
    ap.add_argument("--control-plane", default="127.0.0.1:50051")
    ap.add_argument("--jwks", required=True)
    ap.add_argument("--issuer", default="https://dev.tollgate.local")
    ap.add_argument("--audience", default="tollgate")
    ap.add_argument("--wasm", default="")
    ap.add_argument("--config", default="{}", help="Tollgate plugin configuration (JSON) or @FILE")
    ap.add_argument("--plain", action="store_true")
    a = ap.parse_args()

    up = urlsplit(a.upstream)
    if up.scheme != "http" or not up.hostname:
        sys.exit(f"render.py: upstream must be an http:// URL, got {a.upstream!r}")
    cp_host, _, cp_port = a.control_plane.rpartition(":")
    config_text = open(a.config[1:]).read() if a.config.startswith("@") else a.config
    config = json.loads(config_text)
    resource = f"http://127.0.0.1:{a.listen_port}/mcp"
    config.setdefault("resourceMetadataUrl", f"http://127.0.0.1:{a.listen_port}/.well-known/oauth-protected-resource")
    metadata = {"resource": resource, "authorization_servers": [a.issuer],
                "bearer_methods_supported": ["header"], "resource_name": "Tollgate MCP gateway"}
    values = {
        "ADMIN_PORT": a.admin_port, "LISTEN_PORT": a.listen_port,
        "UPSTREAM_HOST": up.hostname, "UPSTREAM_PORT": up.port or 80, "UPSTREAM_PATH": up.path or "/",
        "CONTROL_PLANE_HOST": cp_host or "127.0.0.1", "CONTROL_PLANE_PORT": cp_port,
        "JWKS_FILE": os.path.abspath(a.jwks), "JWT_ISSUER": a.issuer, "JWT_AUDIENCE": a.audience,
        # Above the filter's own request and response limits, so that the filter answers first.
        "BUFFER_LIMIT": 64 * 1024 * 1024,
        "WASM_FILE": os.path.abspath(a.wasm) if a.wasm else "",
        # Single-quoted YAML scalars: a quote is written twice.
        "TOLLGATE_CONFIG": json.dumps(config, separators=(",", ":")).replace("'", "''"),
        "RESOURCE_METADATA": json.dumps(metadata, separators=(",", ":")).replace("'", "''"),
    }
    text = open(os.path.join(HERE, "tollgate.yaml")).read()
    if a.plain:
        start, end = text.index("#TOLLGATE_FILTER_BEGIN"), text.index("#TOLLGATE_FILTER_END")
        text = text[:start] + text[end + len("#TOLLGATE_FILTER_END"):]
    elif not a.wasm:
        sys.exit("render.py: --wasm is required unless --plain")
    for key, value in values.items():
        text = text.replace("${%s}" % key, str(value))
    with open(a.out, "w") as f:
        f.write(text)

if __name__ == "__main__":
    main()
