#!/usr/bin/env python3
"""Renders the Envoy bootstrap an Istio sidecar of the payments MCP server would run, from the
manifests in this directory, so that a real Envoy can prove what they do without a cluster; with
--workload control-plane, the sidecar of the control plane (control-plane.yaml) instead.

usage: sidecar.py [--workload payments-mcp] --out FILE --listen-port N --admin-port N --upstream URL --control-plane HOST:PORT
                  --jwks FILE [--issuer ISS] [--audience AUD] --wasm FILE [--config JSON|@FILE]
                  [--path-normalization BASE|NONE|MERGE_SLASHES] [--jwt-payload-key KEY]
                  [--manifests DIR] [--no-envoyfilter]
                  (--control-plane-tls DIR [--control-plane-identity URI] | --control-plane-plaintext)

What istiod would generate for this workload, as far as these resources determine it:
- the inbound listener (--listen-port stands for the pod port the sidecar intercepts) whose HTTP
  connection manager routes every path to the inbound cluster of the MCP server (--upstream), with
  istiod's path normalisation (MeshConfig pathNormalization, --path-normalization, default BASE);
- in it, jwt_authn built from requestauthentication.yaml the way istiod builds it: one provider
  per jwtRule (`origins-N`), the issuer's keys inlined (istiod fetches the jwksUri itself; here
  --jwks FILE), `forward` from forwardOriginalToken, `forward_payload_header` from
  outputPayloadToHeader, the payload in dynamic metadata under `payload` (--jwt-payload-key; Istio
  1.20 and earlier used the issuer) and a token required only when present (allow_missing);
- then the WasmPlugin of wasmplugin.yaml as a wasm filter named NAMESPACE.NAME, its pluginConfig as
  the configuration (--config JSON fields replace top-level fields), fail_open from failStrategy,
  root_id from pluginName, the module from --wasm (the agent's local copy of the OCI image);
- then the router; and every EnvoyFilter of envoyfilter.yaml that selects the workload, applied
  as istiod applies it (MERGE with proto merge semantics, INSERT_BEFORE/INSERT_AFTER/INSERT_FIRST,
  REPLACE, REMOVE) to the inbound listener and the inbound cluster (SIDECAR_INBOUND) or the
  outbound ones (SIDECAR_OUTBOUND). A patch this script cannot apply stops it with an error.
- the outbound cluster of the control plane, named as pluginConfig.controlPlaneCluster names it
  (istiod's `outbound|PORT||HOST`), at --control-plane, over HTTP/2 (a gRPC port), with mutual TLS
  as the mesh gives it (istiod's ISTIO_MUTUAL: the workload's certificate, the mesh CA, the peer's
  SPIFFE id pinned), here from the files of --control-plane-tls DIR as render.py takes them;
  --control-plane-plaintext leaves the cluster in h2c.
Not modelled: inbound mTLS, istio's own filters (metadata exchange, istio_authn, stats, RBAC), ECDS
delivery of the wasm filter and the OCI image pull.
--issuer/--audience replace the RequestAuthentication's (a test issuer instead of the real one).
--no-envoyfilter leaves the EnvoyFilter out (what the sidecar runs without it).

usage: sidecar.py --workload control-plane --out FILE --mesh-tls DIR [--listen-port N]
                  [--admin-port N] [--upstream URL] [--jwks FILE] [--issuer ISS] [--audience AUD]
                  [--path-normalization BASE|NONE|MERGE_SLASHES] [--jwt-payload-key KEY]
                  [--manifests DIR]

The control plane's sidecar: the workload is the one behind the Service that the WasmPlugin's
pluginConfig.controlPlaneCluster names (istiod's `outbound|PORT||NAME.NAMESPACE.svc.cluster.local`),
i.e. the Deployment that Service selects, which must have a sidecar injected and serve that port
in plaintext (`tollgate serve --insecure-plaintext`). What istiod would generate for it:
- the inbound listener of that port (--listen-port stands for it) with the PeerAuthentication's
  STRICT mutual TLS: a TLS filter chain only (a plaintext connection matches no chain and is
  closed), the client certificate required and verified against the mesh CA, the workload's own
  certificate served; here ca.pem, control-plane.pem and control-plane-key.pem of --mesh-tls DIR
  (the test's CA standing in for istiod's, its files named as in `tollgate serve`'s dev PKI);
- in its HTTP connection manager (path normalisation as above, x-forwarded-client-cert as istiod
  sets it inbound): jwt_authn from the RequestAuthentications that select the workload, as above
  (--jwks, --issuer, --audience, --jwt-payload-key); then `envoy.filters.http.rbac` from the
  AuthorizationPolicies that select it, built as istiod builds it: action ALLOW, one policy per
  rule named ns[NS]-policy[NAME]-rule[N], each `from` an and_ids of its fields (principals as
  `authenticated.principal_name` with the `spiffe://` prefix, requestPrincipals as the `iss` and
  `sub` claims in jwt_authn's metadata under --jwt-payload-key, namespaces as a regex on the
  principal; the not* fields negated), each `to` an and_rules of its fields (paths as `url_path`,
  methods as the `:method` header), no `from`/`to` meaning any; then the router;
- the inbound cluster to --upstream (the local control plane), in HTTP/2 for a grpc/http2 port
  (appProtocol or the port name's prefix), HTTP/1.1 for http.
Refused with an error: another kind of resource in the workload's namespace, a PeerAuthentication
other than STRICT (or none: the mesh default is PERMISSIVE), portLevelMtls, an AuthorizationPolicy
that is not ALLOW or uses `when`, notPorts, hosts, ipBlocks, path templates or targetRefs, a
Deployment serving TLS itself or without a sidecar, a security policy in the root namespace
(istio-system). Not modelled: the Service's other ports (only the one controlPlaneCluster names is
rendered), istio's own filters (metadata exchange, istio_authn, stats), the probes (the injector
sends them through pilot-agent, past the sidecar's listener).
"""
import argparse, copy, json, os, re, sys
from urllib.parse import urlsplit

try:
    import yaml
except ImportError:  # pragma: no cover
    sys.exit("sidecar.py: needs PyYAML (pip install pyyaml)")

HERE = os.path.dirname(os.path.abspath(__file__))
HCM = "envoy.filters.network.http_connection_manager"
HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
# Proto map fields that may appear in patches: a merge replaces their entries whole.
MAP_FIELDS = {"typed_extension_protocol_options", "typed_per_filter_config", "providers",
              "filter_metadata", "typed_filter_metadata"}


WORKLOADS = ("payments-mcp", "control-plane")


def main():
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--workload", choices=WORKLOADS, default="payments-mcp")
    workload, rest = pre.parse_known_args()
    if workload.workload == "control-plane":
        return control_plane_main(rest)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", choices=WORKLOADS, default="payments-mcp",
                    help="whose sidecar: the payments MCP server's (default) or the control plane's")
    ap.add_argument("--out", required=True)
    ap.add_argument("--listen-port", type=int, default=15006)
    ap.add_argument("--admin-port", type=int, default=15000)
    ap.add_argument("--upstream", default="http://127.0.0.1:8080/mcp")
    ap.add_argument("--control-plane", default="127.0.0.1:50051")
    ap.add_argument("--jwks", required=True, help="the issuer's JWKS (what istiod fetches from jwksUri)")
    ap.add_argument("--issuer", default="")
    ap.add_argument("--audience", default="")
    ap.add_argument("--wasm", required=True)
    ap.add_argument("--config", default="{}", help="pluginConfig fields to replace (JSON) or @FILE")
    ap.add_argument("--path-normalization", default="BASE", choices=["NONE", "BASE", "MERGE_SLASHES"])
    ap.add_argument("--jwt-payload-key", default="payload")
    ap.add_argument("--manifests", default=HERE)
    ap.add_argument("--no-envoyfilter", action="store_true")
    cp_transport = ap.add_mutually_exclusive_group(required=True)
    cp_transport.add_argument("--control-plane-tls", metavar="DIR")
    cp_transport.add_argument("--control-plane-plaintext", action="store_true")
    ap.add_argument("--control-plane-identity", default="spiffe://tollgate.local/control-plane")
    a = ap.parse_args()

    docs = load_manifests(a.manifests)
    plugin = one(docs, "WasmPlugin")
    namespace = plugin["metadata"]["namespace"]
    labels = plugin["spec"]["selector"]["matchLabels"]
    authn = [d for d in docs if d["kind"] == "RequestAuthentication" and selects(d, namespace, labels)]
    filters = [] if a.no_envoyfilter else [
        d for d in docs if d["kind"] == "EnvoyFilter" and selects(d, namespace, labels)]

    up = urlsplit(a.upstream)
    if up.scheme != "http" or not up.hostname:
        sys.exit(f"sidecar.py: --upstream must be an http:// URL, got {a.upstream!r}")
    port = up.port or 80
    config_text = open(a.config[1:]).read() if a.config.startswith("@") else a.config
    plugin_config = dict(plugin["spec"].get("pluginConfig") or {})
    plugin_config.update(json.loads(config_text))

    http_filters = []
    jwt = jwt_authn(authn, a)
    if jwt:
        http_filters.append(jwt)
    http_filters.append(wasm_filter(plugin, plugin_config, a.wasm))
    http_filters.append({"name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}})

    inbound_cluster = f"inbound|{port}||"
    hcm = {
        "@type": HCM_TYPE,
        "stat_prefix": f"inbound_0.0.0.0_{port}",
        "route_config": {
            "name": inbound_cluster,
            "validate_clusters": False,
            "virtual_hosts": [{
                "name": f"inbound|http|{port}",
                "domains": ["*"],
                "routes": [{"name": "default", "match": {"prefix": "/"},
                            "route": {"cluster": inbound_cluster, "timeout": "0s"}}],
            }],
        },
        "http_filters": http_filters,
        "use_remote_address": False,
        "stream_idle_timeout": "0s",
    }
    hcm.update(path_normalization(a.path_normalization))
    listener = {
        "name": "virtualInbound",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": a.listen_port}},
        "filter_chains": [{
            "name": f"0.0.0.0_{port}",
            "filters": [{"name": HCM, "typed_config": hcm}],
        }],
    }
    cp_cluster_name = plugin_config.get("controlPlaneCluster", "tollgate_control_plane")
    cp_host, _, cp_port = a.control_plane.rpartition(":")
    clusters = [
        cluster(inbound_cluster, up.hostname, port, inbound=True),
        cluster(cp_cluster_name, cp_host or "127.0.0.1", int(cp_port), inbound=False, h2=True),
    ]
    if a.control_plane_tls:
        clusters[1][0]["transport_socket"] = mesh_tls(os.path.abspath(a.control_plane_tls),
                                                      a.control_plane_identity)

    for envoy_filter in filters:
        for patch in envoy_filter["spec"]["configPatches"]:
            apply_patch(snake(patch), listener, clusters, port)

    bootstrap = {
        "node": {"id": f"sidecar~127.0.0.1~{labels.get('app', 'workload')}.{namespace}~{namespace}.svc.cluster.local",
                 "cluster": f"{labels.get('app', 'workload')}.{namespace}"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": a.admin_port}}},
        "static_resources": {"listeners": [listener], "clusters": [c for c, _ in clusters]},
    }
    with open(a.out, "w") as f:
        json.dump(bootstrap, f, indent=1)
        f.write("\n")


def load_manifests(directory):
    docs = []
    for name in sorted(os.listdir(directory)):
        if name.endswith((".yaml", ".yml")):
            with open(os.path.join(directory, name)) as f:
                docs.extend(d for d in yaml.safe_load_all(f) if d)
    return docs


def one(docs, kind):
    found = [d for d in docs if d.get("kind") == kind]
    if len(found) != 1:
        sys.exit(f"sidecar.py: expected one {kind}, found {len(found)}")
    return found[0]


def selects(doc, namespace, labels):
    """Whether a resource applies to the workload: same namespace, and its selector's labels
    (RequestAuthentication: selector.matchLabels; EnvoyFilter: workloadSelector.labels) are a
    subset of the workload's. No selector: every workload of the namespace."""
    if doc["metadata"].get("namespace") != namespace:
        return False
    spec = doc.get("spec") or {}
    wanted = (spec.get("selector") or {}).get("matchLabels") or (spec.get("workloadSelector") or {}).get("labels") or {}
    return all(labels.get(k) == v for k, v in wanted.items())


def jwt_authn(policies, a):
    """istiod's jwt_authn for the RequestAuthentication rules (sorted by issuer, one provider
    each; a single provider is required only when a token is present)."""
    rules = sorted((r for p in policies for r in p["spec"].get("jwtRules") or []), key=lambda r: r["issuer"])
    if not rules:
        return None
    if len(rules) != 1:
        sys.exit("sidecar.py: only one jwtRule is modelled")
    keys = open(a.jwks).read()
    providers = {}
    for i, rule in enumerate(rules):
        provider = {
            "issuer": a.issuer or rule["issuer"],
            "local_jwks": {"inline_string": keys},
            "forward": bool(rule.get("forwardOriginalToken", False)),
            "payload_in_metadata": a.jwt_payload_key,
            "normalize_payload_in_metadata": {"space_delimited_claims": ["permission", "scope"]},
        }
        audiences = [a.audience] if a.audience else rule.get("audiences") or []
        if audiences:
            provider["audiences"] = audiences
        if rule.get("outputPayloadToHeader"):
            provider["forward_payload_header"] = rule["outputPayloadToHeader"]
        if rule.get("outputClaimToHeaders"):
            provider["claim_to_headers"] = [{"header_name": c["header"], "claim_name": c["claim"]}
                                            for c in rule["outputClaimToHeaders"]]
        if rule.get("fromHeaders"):
            provider["from_headers"] = [{"name": h["name"], "value_prefix": h.get("prefix", "")}
                                        for h in rule["fromHeaders"]]
        if rule.get("fromParams"):
            provider["from_params"] = rule["fromParams"]
        providers[f"origins-{i}"] = provider
    return {"name": "envoy.filters.http.jwt_authn", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
        "providers": providers,
        "rules": [{"match": {"prefix": "/"}, "requires": {"requires_any": {"requirements": [
            {"provider_name": "origins-0"}, {"allow_missing": {}}]}}}],
        "bypass_cors_preflight": True,
    }}


def wasm_filter(plugin, plugin_config, wasm):
    spec = plugin["spec"]
    if spec.get("type", "HTTP") != "HTTP":
        sys.exit("sidecar.py: only an HTTP WasmPlugin is modelled")
    modes = {m.get("mode", "UNDEFINED") for m in spec.get("match") or [{}]}
    if not modes & {"SERVER", "CLIENT_AND_SERVER", "UNDEFINED"}:
        sys.exit("sidecar.py: the WasmPlugin does not apply to inbound traffic")
    name = f"{plugin['metadata']['namespace']}.{plugin['metadata']['name']}"
    vm_config = {"runtime": "envoy.wasm.runtime.v8",
                 "code": {"local": {"filename": os.path.abspath(wasm)}}}
    # vmConfig.env as istiod translates it: HOST values come from the proxy's environment.
    env = (spec.get("vmConfig") or {}).get("env") or []
    host = [e["name"] for e in env if e.get("valueFrom", "INLINE") == "HOST"]
    inline = {e["name"]: e.get("value", "") for e in env if e.get("valueFrom", "INLINE") == "INLINE"}
    if host or inline:
        vm_config["environment_variables"] = {"host_env_keys": host, "key_values": inline}
    return {"name": name, "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
        "config": {
            "name": name,
            "root_id": spec.get("pluginName", ""),
            "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                              "value": json.dumps(plugin_config, separators=(",", ":"))},
            "vm_config": vm_config,
            "fail_open": spec.get("failStrategy", "FAIL_CLOSE") == "FAIL_OPEN",
        },
    }}


def path_normalization(mode):
    """MeshConfig pathNormalization as istiod applies it to every HTTP connection manager."""
    return {"NONE": {"normalize_path": False},
            "BASE": {"normalize_path": True},
            "MERGE_SLASHES": {"normalize_path": True, "merge_slashes": True}}[mode]


def cluster(name, host, port, inbound, h2=False):
    ip = re.fullmatch(r"[0-9.]+", host) is not None
    c = {
        "name": name,
        "type": "STATIC" if ip else "STRICT_DNS",
        "connect_timeout": "10s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {
            "address": {"socket_address": {"address": host, "port_value": port}}}}]}]},
    }
    if h2:
        c["typed_extension_protocol_options"] = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}}
    return c, {"inbound": inbound, "port": port}


def mesh_tls(pki, identity):
    """The client side of the mesh's mutual TLS to the control plane's workload."""
    for name in ("ca.pem", "gateway.pem", "gateway-key.pem"):
        if not os.path.isfile(os.path.join(pki, name)):
            sys.exit(f"sidecar.py: --control-plane-tls {pki} holds no {name}")
    return {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "common_tls_context": {
            "alpn_protocols": ["h2"],
            "tls_certificates": [{"certificate_chain": {"filename": os.path.join(pki, "gateway.pem")},
                                  "private_key": {"filename": os.path.join(pki, "gateway-key.pem")}}],
            "validation_context": {
                "trusted_ca": {"filename": os.path.join(pki, "ca.pem")},
                "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": {"exact": identity}}],
            },
        },
    }}


# --- EnvoyFilter patches -------------------------------------------------------------------

def snake(value, map_field=False):
    """camelCase keys to the proto field names (both spellings are valid in an EnvoyFilter);
    map keys (e.g. extension names) and `@type` stay as they are."""
    if isinstance(value, list):
        return [snake(v) for v in value]
    if not isinstance(value, dict):
        return value
    out = {}
    for k, v in value.items():
        key = k if map_field or k.startswith("@") else re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", k).lower()
        if map_field:
            out[key] = snake(v)
        else:
            out[key] = snake(v, map_field=key in MAP_FIELDS)
    return out


def merge(dst, src):
    """Proto merge on the JSON form: scalars replace, messages merge field by field, repeated
    fields append, map entries replace. Two Any values of the same type merge as messages (as
    istiod merges a filter's typed_config); of different types, the new one replaces."""
    for key, value in src.items():
        old = dst.get(key)
        if key in MAP_FIELDS and isinstance(value, dict):
            dst[key] = {**(old or {}), **copy.deepcopy(value)}
        elif isinstance(value, dict) and isinstance(old, dict):
            if "@type" in value and value.get("@type") != old.get("@type"):
                dst[key] = copy.deepcopy(value)
            else:
                merge(old, value)
        elif isinstance(value, list) and isinstance(old, list):
            old.extend(copy.deepcopy(value))
        else:
            dst[key] = copy.deepcopy(value)


def context_matches(match, inbound):
    context = match.get("context", "ANY")
    if context not in {"ANY", "SIDECAR_INBOUND", "SIDECAR_OUTBOUND", "GATEWAY"}:
        sys.exit(f"sidecar.py: unknown EnvoyFilter context {context}")
    return context == "ANY" or context == ("SIDECAR_INBOUND" if inbound else "SIDECAR_OUTBOUND")


def apply_patch(p, listener, clusters, service_port):
    apply_to, match, patch = p["apply_to"], p.get("match") or {}, p["patch"]
    operation, value = patch["operation"], patch.get("value")
    if patch.get("filter_class"):
        sys.exit("sidecar.py: filterClass is not modelled")
    if apply_to == "CLUSTER":
        patch_clusters(match, operation, value, clusters, service_port)
    elif apply_to in ("NETWORK_FILTER", "HTTP_FILTER"):
        if not context_matches(match, inbound=True):
            return
        lm = match.get("listener") or {}
        if lm.get("port_number") not in (None, 0, service_port):
            return
        if lm.get("name") not in (None, "", listener["name"]):
            return
        chain_match = lm.get("filter_chain") or {}
        unsupported = set(chain_match) - {"name", "filter"}
        if unsupported:
            sys.exit(f"sidecar.py: filterChain match on {sorted(unsupported)} is not modelled")
        filter_match = chain_match.get("filter") or {}
        for chain in listener["filter_chains"]:
            if chain_match.get("name") not in (None, "", chain["name"]):
                continue
            if apply_to == "NETWORK_FILTER":
                patch_list(chain["filters"], filter_match.get("name"), operation, value, merge_any=True)
            else:
                for f in chain["filters"]:
                    if f["name"] != HCM or filter_match.get("name") not in (None, HCM):
                        continue
                    sub = (filter_match.get("sub_filter") or {}).get("name")
                    patch_list(f["typed_config"]["http_filters"], sub, operation, value, merge_any=True)
    else:
        sys.exit(f"sidecar.py: applyTo {apply_to} is not modelled")


def patch_list(items, name, operation, value, merge_any):
    """An operation on a list of named filters, relative to the one called `name`."""
    at = next((i for i, item in enumerate(items) if item["name"] == name), None) if name else None
    if name and at is None:
        return  # istiod skips a patch whose filter is not there
    if operation == "MERGE":
        targets = [items[at]] if at is not None else items
        for item in targets:
            merge(item, value)
    elif operation == "INSERT_BEFORE":
        items.insert(at if at is not None else 0, copy.deepcopy(value))
    elif operation == "INSERT_AFTER":
        items.insert(at + 1 if at is not None else len(items), copy.deepcopy(value))
    elif operation == "INSERT_FIRST":
        items.insert(0, copy.deepcopy(value))
    elif operation == "ADD" and at is None:
        items.append(copy.deepcopy(value))
    elif operation == "REPLACE" and at is not None:
        items[at] = copy.deepcopy(value)
    elif operation == "REMOVE" and at is not None:
        del items[at]
    else:
        sys.exit(f"sidecar.py: {operation} here is not modelled")


def patch_clusters(match, operation, value, clusters, service_port):
    cm = match.get("cluster") or {}
    if cm.get("service") or cm.get("subset"):
        sys.exit("sidecar.py: cluster match on service/subset is not modelled")
    if operation == "ADD":
        if match.get("context", "ANY") in ("ANY", "SIDECAR_OUTBOUND"):
            clusters.append((copy.deepcopy(value), {"inbound": False, "port": 0}))
        return
    for c, meta in list(clusters):
        if not context_matches(match, meta["inbound"]):
            continue
        if cm.get("name") not in (None, "", c["name"]):
            continue
        if cm.get("port_number") not in (None, 0, meta["port"]):
            continue
        if operation == "MERGE":
            merge(c, value)
        elif operation == "REMOVE":
            clusters.remove((c, meta))
        else:
            sys.exit(f"sidecar.py: CLUSTER {operation} is not modelled")


# --- The control plane's sidecar (--workload control-plane) --------------------------------

RBAC_TYPE = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
JWT_FILTER = "envoy.filters.http.jwt_authn"
# Kinds that change nothing in the sidecar's Envoy configuration.
INERT_KINDS = {"Namespace", "ServiceAccount", "PersistentVolumeClaim", "ConfigMap"}
SECURITY_KINDS = {"PeerAuthentication", "RequestAuthentication", "AuthorizationPolicy"}
MODELLED_KINDS = INERT_KINDS | SECURITY_KINDS | {"Service", "Deployment"}
# Istio's root namespace: its policies apply to every workload of the mesh.
ROOT_NAMESPACE = "istio-system"


def control_plane_main(argv):
    ap = argparse.ArgumentParser(prog="sidecar.py --workload control-plane", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", choices=WORKLOADS)
    ap.add_argument("--out", required=True)
    ap.add_argument("--listen-port", type=int, default=15006)
    ap.add_argument("--admin-port", type=int, default=15000)
    ap.add_argument("--upstream", default="http://127.0.0.1:50051",
                    help="the control plane itself (tollgate serve --insecure-plaintext)")
    ap.add_argument("--mesh-tls", required=True, metavar="DIR",
                    help="ca.pem (the mesh CA), control-plane.pem and control-plane-key.pem (the workload's certificate)")
    ap.add_argument("--jwks", help="the operators' issuer's JWKS (what istiod fetches from jwksUri)")
    ap.add_argument("--issuer", default="")
    ap.add_argument("--audience", default="")
    ap.add_argument("--path-normalization", default="BASE", choices=["NONE", "BASE", "MERGE_SLASHES"])
    ap.add_argument("--jwt-payload-key", default="payload")
    ap.add_argument("--manifests", default=HERE)
    a = ap.parse_args(argv)

    docs = load_manifests(a.manifests)
    plugin = one(docs, "WasmPlugin")
    service_name, namespace, service_port = control_plane_service(plugin)
    for d in docs:
        in_namespace = d["metadata"].get("namespace") == namespace or (
            d["kind"] == "Namespace" and d["metadata"]["name"] == namespace)
        if in_namespace and d["kind"] not in MODELLED_KINDS:
            sys.exit(f"sidecar.py: {d['kind']} {d['metadata']['name']} in namespace {namespace} is not modelled")
        if d["metadata"].get("namespace") == ROOT_NAMESPACE and d["kind"] in SECURITY_KINDS:
            sys.exit(f"sidecar.py: mesh-wide {d['kind']} {d['metadata']['name']} is not modelled")
    service = named(docs, "Service", namespace, service_name)
    port = next((p for p in service["spec"].get("ports") or [] if p.get("port") == service_port), None)
    if port is None:
        sys.exit(f"sidecar.py: Service {service_name} has no port {service_port}")
    h2 = port_is_h2(port)
    selector = service["spec"].get("selector") or {}
    deployments = [d for d in docs if d["kind"] == "Deployment" and d["metadata"].get("namespace") == namespace
                   and selector and all(pod_labels(d).get(k) == v for k, v in selector.items())]
    if len(deployments) != 1:
        sys.exit(f"sidecar.py: Service {service_name} selects {len(deployments)} Deployments, expected one")
    deployment = deployments[0]
    labels = pod_labels(deployment)
    check_injected(docs, namespace, labels)
    target_port = container_port(deployment, port.get("targetPort", service_port))
    check_plaintext(deployment, target_port)
    check_strict(docs, namespace, labels)

    up = urlsplit(a.upstream)
    if up.scheme != "http" or not up.hostname:
        sys.exit(f"sidecar.py: --upstream must be an http:// URL, got {a.upstream!r}")

    http_filters = []
    authn = [d for d in docs if d["kind"] == "RequestAuthentication" and selects(d, namespace, labels)]
    if authn:
        if not a.jwks:
            sys.exit("sidecar.py: a RequestAuthentication selects the workload: --jwks is needed")
        http_filters.append(jwt_authn(authn, a))
    policies = [d for d in docs if d["kind"] == "AuthorizationPolicy" and selects(d, namespace, labels)]
    if policies:
        http_filters.append(rbac_filter(policies, a.jwt_payload_key))
    http_filters.append({"name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}})

    inbound_cluster = f"inbound|{target_port}||"
    route = {"cluster": inbound_cluster, "timeout": "0s"}
    if h2:
        route["max_stream_duration"] = {"max_stream_duration": "0s", "grpc_timeout_header_max": "0s"}
    hcm = {
        "@type": HCM_TYPE,
        "stat_prefix": f"inbound_0.0.0.0_{target_port}",
        "route_config": {
            "name": inbound_cluster,
            "validate_clusters": False,
            "virtual_hosts": [{
                "name": f"inbound|http|{target_port}",
                "domains": ["*"],
                "routes": [{"name": "default", "match": {"prefix": "/"}, "route": route}],
            }],
        },
        "http_filters": http_filters,
        "use_remote_address": False,
        "stream_idle_timeout": "0s",
        "forward_client_cert_details": "APPEND_FORWARD",
        "set_current_client_cert_details": {"subject": True, "dns": True, "uri": True},
    }
    hcm.update(path_normalization(a.path_normalization))
    listener = {
        "name": "virtualInbound",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": a.listen_port}},
        "listener_filters": [{"name": "envoy.filters.listener.tls_inspector", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}}],
        "filter_chains": [{
            "name": f"0.0.0.0_{target_port}",
            # STRICT: no plaintext chain next to this one.
            "filter_chain_match": {"transport_protocol": "tls"},
            "transport_socket": mesh_server_tls(os.path.abspath(a.mesh_tls)),
            "filters": [{"name": HCM, "typed_config": hcm}],
        }],
    }
    inbound, _ = cluster(inbound_cluster, up.hostname, up.port or 80, inbound=True, h2=h2)
    app = labels.get("app", deployment["metadata"]["name"])
    bootstrap = {
        "node": {"id": f"sidecar~127.0.0.1~{app}.{namespace}~{namespace}.svc.cluster.local",
                 "cluster": f"{app}.{namespace}"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": a.admin_port}}},
        "static_resources": {"listeners": [listener], "clusters": [inbound]},
    }
    with open(a.out, "w") as f:
        json.dump(bootstrap, f, indent=1)
        f.write("\n")


def control_plane_service(plugin):
    """(service, namespace, port) of the WasmPlugin's controlPlaneCluster, an istiod name."""
    name = (plugin["spec"].get("pluginConfig") or {}).get("controlPlaneCluster", "")
    m = re.fullmatch(r"outbound\|(\d+)\|\|([a-z0-9-]+)\.([a-z0-9-]+)\.svc\.cluster\.local", name)
    if not m:
        sys.exit(f"sidecar.py: controlPlaneCluster {name!r} is not istiod's outbound|PORT||NAME.NS.svc.cluster.local")
    return m.group(2), m.group(3), int(m.group(1))


def named(docs, kind, namespace, name):
    found = [d for d in docs if d["kind"] == kind and d["metadata"].get("namespace") == namespace
             and d["metadata"]["name"] == name]
    if len(found) != 1:
        sys.exit(f"sidecar.py: expected one {kind} {namespace}/{name}, found {len(found)}")
    return found[0]


def pod_labels(deployment):
    return ((deployment["spec"].get("template") or {}).get("metadata") or {}).get("labels") or {}


def port_is_h2(port):
    """Istio's protocol selection: appProtocol, else the port name's prefix."""
    protocol = (port.get("appProtocol") or port.get("name", "").split("-")[0]).lower()
    if protocol in ("grpc", "http2", "grpc-web", "h2c"):
        return True
    if protocol == "http":
        return False
    sys.exit(f"sidecar.py: port {port.get('name')} is not HTTP or gRPC ({protocol!r}): not modelled")


def check_injected(docs, namespace, labels):
    wanted = labels.get("sidecar.istio.io/inject")
    ns = [d for d in docs if d["kind"] == "Namespace" and d["metadata"]["name"] == namespace]
    ns_enabled = any((d["metadata"].get("labels") or {}).get("istio-injection") == "enabled" for d in ns)
    if wanted == "false" or (wanted != "true" and not ns_enabled):
        sys.exit("sidecar.py: the workload gets no sidecar (sidecar.istio.io/inject, istio-injection)")


def container_port(deployment, target):
    containers = deployment["spec"]["template"]["spec"]["containers"]
    if isinstance(target, int):
        return target
    for c in containers:
        for p in c.get("ports") or []:
            if p.get("name") == target:
                return p["containerPort"]
    sys.exit(f"sidecar.py: no container port named {target}")


def check_plaintext(deployment, port):
    """The container listening on `port` serves it in plaintext (TLS is the sidecar's)."""
    for c in deployment["spec"]["template"]["spec"]["containers"]:
        args = [str(x) for x in (c.get("command") or []) + (c.get("args") or [])]
        env = {e["name"]: str(e.get("value", "")) for e in c.get("env") or []}
        listen = next((args[i + 1] for i, x in enumerate(args[:-1]) if x == "--listen"), None)
        listen = next((x.split("=", 1)[1] for x in args if x.startswith("--listen=")), listen)
        listen = listen or env.get("TOLLGATE_CONTROL_PLANE")
        if not listen or listen.rpartition(":")[2] != str(port):
            continue
        if listen.rpartition(":")[0] not in ("0.0.0.0", "[::]"):
            sys.exit(f"sidecar.py: the control plane listens on {listen}: the sidecar cannot reach it")
        if "--insecure-plaintext" not in args and env.get("TOLLGATE_INSECURE_PLAINTEXT") not in ("true", "1"):
            sys.exit("sidecar.py: the control plane serves TLS itself behind its sidecar: not modelled")
        return
    sys.exit(f"sidecar.py: no container of the Deployment listens on port {port}")


def check_strict(docs, namespace, labels):
    """istiod's precedence: a PeerAuthentication with a selector over the namespace-wide one."""
    found = [d for d in docs if d["kind"] == "PeerAuthentication" and selects(d, namespace, labels)]
    specific = [d for d in found if (d.get("spec") or {}).get("selector")]
    chosen = specific or found
    if len(chosen) != 1:
        sys.exit(f"sidecar.py: expected one PeerAuthentication for the workload, found {len(chosen)}"
                 " (without one the mesh default, PERMISSIVE, is not modelled)")
    spec = chosen[0].get("spec") or {}
    if spec.get("portLevelMtls"):
        sys.exit("sidecar.py: portLevelMtls is not modelled")
    mode = (spec.get("mtls") or {}).get("mode", "UNSET")
    if mode != "STRICT":
        sys.exit(f"sidecar.py: PeerAuthentication mode {mode} is not modelled (only STRICT)")


def mesh_server_tls(pki):
    """The server side of the mesh's mutual TLS, as PeerAuthentication STRICT gives it."""
    for name in ("ca.pem", "control-plane.pem", "control-plane-key.pem"):
        if not os.path.isfile(os.path.join(pki, name)):
            sys.exit(f"sidecar.py: --mesh-tls {pki} holds no {name}")
    return {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        "require_client_certificate": True,
        "common_tls_context": {
            "alpn_protocols": ["h2", "http/1.1"],
            "tls_params": {"tls_minimum_protocol_version": "TLSv1_2"},
            "tls_certificates": [{"certificate_chain": {"filename": os.path.join(pki, "control-plane.pem")},
                                  "private_key": {"filename": os.path.join(pki, "control-plane-key.pem")}}],
            "validation_context": {"trusted_ca": {"filename": os.path.join(pki, "ca.pem")}},
        },
    }}


def rbac_filter(policies, payload_key):
    """istiod's RBAC filter for ALLOW AuthorizationPolicies: a request no rule matches is
    answered 403 ("RBAC: access denied")."""
    rules = {}
    for policy in sorted(policies, key=lambda p: p["metadata"]["name"]):
        meta, spec = policy["metadata"], policy.get("spec") or {}
        unsupported = set(spec) - {"selector", "action", "rules"}
        if unsupported:
            sys.exit(f"sidecar.py: AuthorizationPolicy {meta['name']}: {sorted(unsupported)} not modelled")
        if spec.get("action", "ALLOW") != "ALLOW":
            sys.exit(f"sidecar.py: AuthorizationPolicy {meta['name']}: action {spec['action']} not modelled")
        for i, rule in enumerate(spec.get("rules") or []):
            name = f"ns[{meta['namespace']}]-policy[{meta['name']}]-rule[{i}]"
            rules[name] = rbac_policy(rule, name, payload_key)
    return {"name": "envoy.filters.http.rbac", "typed_config": {
        "@type": RBAC_TYPE, "rules": {"action": "ALLOW", "policies": rules}}}


def rbac_policy(rule, name, payload_key):
    unsupported = set(rule) - {"from", "to"}
    if unsupported:
        sys.exit(f"sidecar.py: {name}: {sorted(unsupported)} not modelled")
    principals = []
    for f in rule.get("from") or []:
        source = f.get("source") or {}
        unsupported = set(source) - {"principals", "notPrincipals", "requestPrincipals",
                                     "notRequestPrincipals", "namespaces", "notNamespaces"}
        if unsupported:
            sys.exit(f"sidecar.py: {name}: source {sorted(unsupported)} not modelled")
        ids = []
        for field, make in (("principals", peer_principal),
                            ("requestPrincipals", lambda v: request_principal(v, payload_key)),
                            ("namespaces", namespace_principal)):
            negated = "not" + field[0].upper() + field[1:]
            if source.get(field):
                ids.append({"or_ids": {"ids": [make(v) for v in source[field]]}})
            if source.get(negated):
                ids.append({"not_id": {"or_ids": {"ids": [make(v) for v in source[negated]]}}})
        principals.append({"and_ids": {"ids": ids or [{"any": True}]}})
    permissions = []
    for t in rule.get("to") or []:
        operation = t.get("operation") or {}
        unsupported = set(operation) - {"paths", "notPaths", "methods", "notMethods", "ports"}
        if unsupported:
            sys.exit(f"sidecar.py: {name}: operation {sorted(unsupported)} not modelled")
        rules = []
        if operation.get("ports"):
            # istiod's destination_port: the port the caller dialled (the pod's port, which
            # the inbound listener preserves as the original destination).
            rules.append({"or_rules": {"rules": [{"destination_port": int(p)} for p in operation["ports"]]}})
        for field, make in (("paths", path_permission), ("methods", method_permission)):
            negated = "not" + field[0].upper() + field[1:]
            if operation.get(field):
                rules.append({"or_rules": {"rules": [make(v) for v in operation[field]]}})
            if operation.get(negated):
                rules.append({"not_rule": {"or_rules": {"rules": [make(v) for v in operation[negated]]}}})
        permissions.append({"and_rules": {"rules": rules or [{"any": True}]}})
    return {"permissions": permissions or [{"and_rules": {"rules": [{"any": True}]}}],
            "principals": principals or [{"and_ids": {"ids": [{"any": True}]}}]}


def string_matcher(value, prefix=""):
    """istiod's StringMatcherWithPrefix: `*` any non-empty, `x*` prefix, `*x` suffix, else exact."""
    if value == "*":
        return {"safe_regex": {"regex": ".+"}}
    if value.endswith("*"):
        return {"prefix": prefix + value[:-1]}
    if value.startswith("*"):
        if prefix:
            sys.exit(f"sidecar.py: a principal {value!r} with a leading wildcard is not modelled")
        return {"suffix": value[1:]}
    return {"exact": prefix + value}


def peer_principal(value):
    return {"authenticated": {"principal_name": string_matcher(value, "spiffe://")}}


def namespace_principal(value):
    regex = ".*/ns/" + value.replace("*", ".*") + "/.*"
    return {"authenticated": {"principal_name": {"safe_regex": {"regex": regex}}}}


def request_principal(value, payload_key):
    """`ISS/SUB` (or `*`): the verified token's `iss` and `sub`, read from jwt_authn's metadata."""
    def claim(name, matcher):
        return {"metadata": {"filter": JWT_FILTER, "path": [{"key": payload_key}, {"key": name}],
                             "value": {"string_match": matcher}}}
    if value == "*":
        iss, sub = {"safe_regex": {"regex": ".+"}}, {"safe_regex": {"regex": ".+"}}
    elif "*" in value or "/" not in value:
        sys.exit(f"sidecar.py: requestPrincipal {value!r} is not modelled (only * and ISS/SUB)")
    else:
        issuer, _, subject = value.rpartition("/")
        iss, sub = {"exact": issuer}, {"exact": subject}
    return {"and_ids": {"ids": [claim("iss", iss), claim("sub", sub)]}}


def path_permission(value):
    if "{" in value:
        sys.exit(f"sidecar.py: the path template {value!r} is not modelled")
    return {"url_path": {"path": string_matcher(value)}}


def method_permission(value):
    return {"header": {"name": ":method", "string_match": {"exact": value}}}


if __name__ == "__main__":
    main()
