#!/usr/bin/env python3
"""Renders envoy/tollgate.yaml into a runnable Envoy bootstrap.

usage: render.py --out FILE --listen-port N --admin-port N --upstream URL --control-plane HOST:PORT
                 (--jwks FILE | --remote-jwks URL [--jwks-cache-duration S]) [--issuer ISS]
                 [--audience AUD] --wasm FILE [--config JSON] [--plain]
                 [--hop-port N --hop-header NAME=VALUE ...] [--route-timeout DURATION]
                 [--request-timeout DURATION] [--tls-cert FILE --tls-key FILE] [--lds-dir DIR]
                 (--control-plane-tls DIR [--control-plane-identity URI] | --control-plane-plaintext)
                 [--approval-url URL]
--jwks reads the issuer's keys from a file once (the dev issuer); --remote-jwks fetches them from
the OIDC provider's jwks_uri (an http:// URL, through a cluster of its own), again every
--jwks-cache-duration seconds and in the background, so a provider's key rotation is picked up
without restarting Envoy.
--plain drops the Tollgate filter (plain Envoy with the same jwt_authn and routes, for benchmarks).
--hop-port adds a second listener, a client-side hop in front of the gateway listener, that adds
the --hop-header headers (e.g. authorization=Bearer TOKEN) to every request: for MCP clients that
cannot send a token themselves, such as the conformance suite.
--route-timeout bounds the MCP server's whole answer (Envoy duration, e.g. 30s; default 0s, none).
--request-timeout bounds how long a client may take to send its whole request (default 60s).
--tls-cert/--tls-key serve the MCP listener over TLS (ALPN h2 and http/1.1) with that certificate
chain and key (PEM files).
--control-plane-tls DIR: the filter's cluster to the control plane uses mutual TLS with the files
of DIR (as `tollgate serve` creates them under <home>/tls): the gateway's client certificate
gateway.pem and gateway-key.pem, and ca.pem, the CA the control plane's certificate must chain to;
that certificate must also name --control-plane-identity (default
spiffe://tollgate.local/control-plane). --control-plane-plaintext uses h2c instead, for a control
plane run with --insecure-plaintext (behind a mesh sidecar); one of the two is required.
--approval-url sets the filter's approvalUrl: the approval page held calls are sent to and named
in, `{id}` standing for the approval id (e.g. http://127.0.0.1:9470/approvals/{id}, the console
of `tollgate serve`). Default: the filter's own default, or --config's approvalUrl.
--lds-dir serves the listeners (and with them the filter's configuration and policy) from
DIR/lds.yaml instead of the bootstrap: rendering again with a new --config replaces that file
atomically, and Envoy swaps the listener without a restart; requests in flight finish on the old
one.
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
    keys = ap.add_mutually_exclusive_group(required=True)
    keys.add_argument("--jwks", help="JWKS file")
    keys.add_argument("--remote-jwks", help="the OIDC provider's jwks_uri (http://)")
    ap.add_argument("--jwks-cache-duration", type=int, default=300,
                    help="seconds before Envoy fetches --remote-jwks again")
    ap.add_argument("--issuer", default="https://dev.tollgate.local")
    ap.add_argument("--audience", default="tollgate")
    ap.add_argument("--wasm", default="")
    ap.add_argument("--config", default="{}", help="Tollgate plugin configuration (JSON) or @FILE")
    ap.add_argument("--plain", action="store_true")
    ap.add_argument("--hop-port", type=int, default=0)
    ap.add_argument("--hop-header", action="append", default=[], metavar="NAME=VALUE")
    ap.add_argument("--route-timeout", default="0s")
    ap.add_argument("--request-timeout", default="60s")
    ap.add_argument("--tls-cert", default="")
    ap.add_argument("--tls-key", default="")
    ap.add_argument("--lds-dir", default="")
    cp_transport = ap.add_mutually_exclusive_group(required=True)
    cp_transport.add_argument("--control-plane-tls", metavar="DIR")
    cp_transport.add_argument("--control-plane-plaintext", action="store_true")
    ap.add_argument("--control-plane-identity", default="spiffe://tollgate.local/control-plane")
    ap.add_argument("--approval-url", default="", metavar="URL")
    a = ap.parse_args()
    if bool(a.tls_cert) != bool(a.tls_key):
        sys.exit("render.py: --tls-cert and --tls-key go together")

    up = urlsplit(a.upstream)
    if up.scheme != "http" or not up.hostname:
        sys.exit(f"render.py: upstream must be an http:// URL, got {a.upstream!r}")
    cp_host, _, cp_port = a.control_plane.rpartition(":")
    config_text = open(a.config[1:]).read() if a.config.startswith("@") else a.config
    config = json.loads(config_text)
    if a.approval_url:
        page = urlsplit(a.approval_url)
        if page.scheme not in ("http", "https") or not page.hostname or "{id}" not in a.approval_url:
            sys.exit(f"render.py: --approval-url must be an http(s):// URL with {{id}} in it, got {a.approval_url!r}")
        if config.get("approvalUrl", a.approval_url) != a.approval_url:
            sys.exit("render.py: --approval-url and --config's approvalUrl differ; give one")
        config["approvalUrl"] = a.approval_url
    scheme = "https" if a.tls_cert else "http"
    resource = f"{scheme}://127.0.0.1:{a.listen_port}/mcp"
    config.setdefault("resourceMetadataUrl", f"{scheme}://127.0.0.1:{a.listen_port}/.well-known/oauth-protected-resource")
    metadata = {"resource": resource, "authorization_servers": [a.issuer],
                "bearer_methods_supported": ["header"], "resource_name": "Tollgate MCP gateway"}
    values = {
        "ADMIN_PORT": a.admin_port, "LISTEN_PORT": a.listen_port,
        "UPSTREAM_HOST": up.hostname, "UPSTREAM_PORT": up.port or 80, "UPSTREAM_PATH": up.path or "/",
        "CONTROL_PLANE_HOST": cp_host or "127.0.0.1", "CONTROL_PLANE_PORT": cp_port,
        "JWKS_SOURCE": jwks_source(a), "JWT_ISSUER": json.dumps(a.issuer),
        "JWT_AUDIENCE": json.dumps(a.audience),
        # Above the filter's own request and response limits, so that the filter answers first.
        "BUFFER_LIMIT": 64 * 1024 * 1024,
        "WASM_FILE": os.path.abspath(a.wasm) if a.wasm else "",
        "PAN_REF_KEY_ENV": json.dumps(config.get("panRefKeyEnv", "TOLLGATE_PAN_REF_KEY")),
        "ROUTE_TIMEOUT": a.route_timeout,
        "REQUEST_TIMEOUT": a.request_timeout,
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
    if a.remote_jwks:
        text = add_jwks_cluster(text, a.remote_jwks)
    if a.control_plane_tls:
        text = add_control_plane_tls(text, os.path.abspath(a.control_plane_tls), a.control_plane_identity)
    if a.tls_cert:
        text = add_listener_tls(text, os.path.abspath(a.tls_cert), os.path.abspath(a.tls_key))
    if a.hop_port:
        text = add_client_hop(text, a.hop_port, a.listen_port, a.hop_header)
    if a.lds_dir:
        text = listeners_to_lds(text, os.path.abspath(a.lds_dir))
    with open(a.out, "w") as f:
        f.write(text)

def jwks_source(a):
    """jwt_authn's key source: a local file, or the provider's jwks_uri fetched and cached."""
    if not a.remote_jwks:
        return "local_jwks: { filename: %s }" % json.dumps(os.path.abspath(a.jwks))
    uri = urlsplit(a.remote_jwks)
    if uri.scheme != "http" or not uri.hostname:
        sys.exit(f"render.py: --remote-jwks must be an http:// URL, got {a.remote_jwks!r}")
    if a.jwks_cache_duration < 1:
        sys.exit("render.py: --jwks-cache-duration must be at least 1 second")
    # async_fetch: fetched at start and on expiry in the background, never on a request's path;
    # a failed fetch keeps the last keys and is retried (retry_policy) before the next expiry.
    return ("remote_jwks: { http_uri: { uri: %s, cluster: tollgate_jwks, timeout: 5s }, "
            "cache_duration: %ds, async_fetch: { failed_refetch_duration: 1s }, "
            "retry_policy: { num_retries: 3 } }" % (json.dumps(a.remote_jwks), a.jwks_cache_duration))

def add_jwks_cluster(text, url):
    """The cluster jwt_authn fetches the provider's keys through (the file ends with clusters)."""
    uri = urlsplit(url)
    return text.rstrip("\n") + f"""
  - name: tollgate_jwks
    type: STRICT_DNS
    connect_timeout: 2s
    load_assignment:
      cluster_name: tollgate_jwks
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: {uri.hostname}, port_value: {uri.port or 80} }}
"""
def listeners_to_lds(text, lds_dir):
    """Moves the static listeners into lds_dir/lds.yaml (a discovery response, written by an
    atomic rename so that Envoy never reads half a file) and points the bootstrap at it."""
    start = text.index("static_resources:\n  listeners:\n")
    end = text.index("\n  clusters:\n") + 1
    listeners = text[start + len("static_resources:\n  listeners:\n"):end]
    typed = "".join(
        '  - "@type": type.googleapis.com/envoy.config.listener.v3.Listener\n    name: %s\n'
        % line[len("  - name: "):]
        if line.startswith("  - name: ") else line + "\n"
        for line in listeners.rstrip("\n").split("\n"))
    os.makedirs(lds_dir, exist_ok=True)
    path = os.path.join(lds_dir, "lds.yaml")
    with open(path + ".new", "w") as f:
        f.write("resources:\n" + typed)
    os.rename(path + ".new", path)
    dynamic = ("dynamic_resources:\n  lds_config:\n    resource_api_version: V3\n"
               "    path_config_source:\n      path: %s\n      watched_directory: { path: %s }\n"
               % (json.dumps(path), json.dumps(lds_dir)))
    # Dynamic resources need a node identity; a bootstrap that names one keeps it.
    node = "" if "\nnode:" in text else "node: { id: tollgate, cluster: tollgate }\n"
    return text[:start] + node + dynamic + "static_resources:\n" + text[end:]

def add_listener_tls(text, cert, key):
    """TLS on the MCP listener (the first filter chain), offering h2 and http/1.1 by ALPN."""
    chain = "    filter_chains:\n    - filters:\n"
    if chain not in text:
        sys.exit("render.py: the bootstrap's MCP listener has no filter chain to put TLS on")
    tls = f"""    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            alpn_protocols: [h2, http/1.1]
            tls_certificates:
            - certificate_chain: {{ filename: {json.dumps(cert)} }}
              private_key: {{ filename: {json.dumps(key)} }}
      filters:
"""
    return text.replace(chain, tls, 1)

def add_control_plane_tls(text, pki, identity):
    """Mutual TLS on the cluster to the control plane: the gateway's client certificate, and the
    control plane's certificate checked against the CA and pinned to its identity."""
    for name in ("ca.pem", "gateway.pem", "gateway-key.pem"):
        if not os.path.isfile(os.path.join(pki, name)):
            sys.exit(f"render.py: --control-plane-tls {pki} holds no {name}")
    anchor = "  - name: tollgate_control_plane\n    type: STRICT_DNS\n    connect_timeout: 1s\n"
    if anchor not in text:
        sys.exit("render.py: the bootstrap has no tollgate_control_plane cluster to put TLS on")
    file = lambda name: json.dumps(os.path.join(pki, name))
    tls = f"""    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        common_tls_context:
          alpn_protocols: [h2]
          tls_certificates:
          - certificate_chain: {{ filename: {file("gateway.pem")} }}
            private_key: {{ filename: {file("gateway-key.pem")} }}
          validation_context:
            trusted_ca: {{ filename: {file("ca.pem")} }}
            match_typed_subject_alt_names:
            - san_type: URI
              matcher: {{ exact: {json.dumps(identity)} }}
"""
    return text.replace(anchor, anchor + tls, 1)

def add_client_hop(text, hop_port, listen_port, headers):
    """A plain listener on hop_port that forwards everything to the gateway listener, adding
    `headers`. The bootstrap's listeners come before `  clusters:`, which ends the file."""
    added = "".join(
        "\n              - header: { key: %s, value: %s }\n                append_action: OVERWRITE_IF_EXISTS_OR_ADD"
        % (json.dumps(name.strip().lower()), json.dumps(value.strip()))
        for name, _, value in (h.partition("=") for h in headers))
    listener = f"""  - name: client_hop
    address:
      socket_address: {{ address: 127.0.0.1, port_value: {hop_port} }}
    per_connection_buffer_limit_bytes: {64 * 1024 * 1024}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: client_hop
          stream_idle_timeout: 600s
          route_config:
            name: client_hop
            virtual_hosts:
            - name: client_hop
              domains: ["*"]
              request_headers_to_add:{added or " []"}
              routes:
              - match: {{ prefix: / }}
                route: {{ cluster: client_hop_gateway, timeout: 0s }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"""
    cluster = f"""  - name: client_hop_gateway
    type: STATIC
    connect_timeout: 2s
    per_connection_buffer_limit_bytes: {64 * 1024 * 1024}
    load_assignment:
      cluster_name: client_hop_gateway
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: 127.0.0.1, port_value: {listen_port} }}
"""
    at = text.index("\n  clusters:\n") + 1
    return text[:at] + listener + text[at:].rstrip("\n") + "\n" + cluster


if __name__ == "__main__":
    main()
