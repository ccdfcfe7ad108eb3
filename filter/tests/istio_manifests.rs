//! The Istio manifests in envoy/istio/ give the sidecar what envoy/tollgate.yaml gives a plain
//! Envoy: the filter fails closed in phase AUTHZ, and the EnvoyFilter puts a buffer before the
//! router, normalises paths and parses HTTP/1.1 trailers on the inbound side of the same workload.
//! (tests/tests/istio.rs runs them in a real Envoy.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use serde_json::Value;

fn yaml_documents(path: &str) -> Vec<Value> {
    let full = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path);
    let text = std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()));
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| serde::Deserialize::deserialize(doc).unwrap_or_else(|e| panic!("{path}: {e}")))
        .collect()
}

fn one(path: &str, kind: &str) -> Value {
    let docs = yaml_documents(path);
    assert_eq!(docs.len(), 1, "{path}: one document");
    assert_eq!(docs[0]["kind"], kind, "{path}");
    docs[0].clone()
}

fn envoy_filter() -> Value {
    let filter = one("envoy/istio/envoyfilter.yaml", "EnvoyFilter");
    assert_eq!(filter["apiVersion"], "networking.istio.io/v1alpha3");
    filter
}

/// The patches that apply to `apply_to` objects.
fn patches<'a>(filter: &'a Value, apply_to: &str) -> Vec<&'a Value> {
    filter["spec"]["configPatches"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["applyTo"] == apply_to)
        .collect()
}

/// A field by its proto name or its JSON (camelCase) name: an EnvoyFilter accepts both.
fn field<'a>(object: &'a Value, snake: &str) -> &'a Value {
    let camel: String = snake
        .split('_')
        .enumerate()
        .map(|(i, part)| {
            if i == 0 {
                part.to_owned()
            } else {
                let mut chars = part.chars();
                chars
                    .next()
                    .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                    .unwrap_or_default()
            }
        })
        .collect();
    match &object[snake] {
        Value::Null => &object[camel.as_str()],
        found => found,
    }
}

const HCM: &str = "envoy.filters.network.http_connection_manager";

#[test]
fn wasmplugin_fails_closed_after_jwt_authn() {
    let plugin = one("envoy/istio/wasmplugin.yaml", "WasmPlugin");
    let spec = &plugin["spec"];
    assert_eq!(spec["failStrategy"], "FAIL_CLOSE");
    assert_eq!(spec["phase"], "AUTHZ");
    assert_eq!(spec["type"], "HTTP");
    assert_eq!(spec["match"][0]["mode"], "SERVER", "inbound traffic only");
}

#[test]
fn envoyfilter_selects_the_workload_of_the_wasmplugin() {
    let filter = envoy_filter();
    let plugin = one("envoy/istio/wasmplugin.yaml", "WasmPlugin");
    let auth = one(
        "envoy/istio/requestauthentication.yaml",
        "RequestAuthentication",
    );
    assert_eq!(
        filter["metadata"]["namespace"],
        plugin["metadata"]["namespace"]
    );
    assert_eq!(
        filter["metadata"]["namespace"],
        auth["metadata"]["namespace"]
    );
    // An EnvoyFilter selects by workloadSelector.labels, a WasmPlugin by selector.matchLabels.
    assert_eq!(
        filter["spec"]["workloadSelector"]["labels"],
        plugin["spec"]["selector"]["matchLabels"]
    );
    assert_eq!(
        filter["spec"]["workloadSelector"]["labels"]["app"],
        "payments-mcp"
    );
    // Every patch is for the sidecar's inbound side: callers' requests to the MCP server.
    for patch in filter["spec"]["configPatches"].as_array().unwrap() {
        assert_eq!(patch["match"]["context"], "SIDECAR_INBOUND", "{patch}");
    }
}

#[test]
fn envoyfilter_puts_the_buffer_right_before_the_router() {
    let filter = envoy_filter();
    let http = patches(&filter, "HTTP_FILTER");
    assert_eq!(http.len(), 1);
    let patch = http[0];
    let chain_filter = &field(&patch["match"]["listener"], "filter_chain")["filter"];
    assert_eq!(chain_filter["name"], HCM);
    assert_eq!(
        field(chain_filter, "sub_filter")["name"],
        "envoy.filters.http.router"
    );
    assert_eq!(patch["patch"]["operation"], "INSERT_BEFORE");
    let value = &patch["patch"]["value"];
    assert_eq!(value["name"], "envoy.filters.http.buffer");
    let config = field(value, "typed_config");
    assert_eq!(
        config["@type"],
        "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer"
    );
    // 64 MiB as in envoy/tollgate.yaml: above the filter's own request limit, so that the filter
    // answers 413 first.
    let limit = field(config, "max_request_bytes");
    let limit = limit
        .as_u64()
        .or_else(|| limit.as_str().and_then(|s| s.parse().ok()))
        .unwrap();
    assert_eq!(limit, 64 * 1024 * 1024);
    let filter_limit = tollgate_filter::config::FilterConfig::from_json(b"{}")
        .unwrap()
        .max_request_bytes;
    assert!(limit as usize > filter_limit);
}

#[test]
fn envoyfilter_normalises_paths_and_parses_trailers_on_the_inbound_listener() {
    let filter = envoy_filter();
    let network = patches(&filter, "NETWORK_FILTER");
    assert_eq!(network.len(), 1);
    let patch = network[0];
    assert_eq!(
        field(&patch["match"]["listener"], "filter_chain")["filter"]["name"],
        HCM
    );
    assert_eq!(patch["patch"]["operation"], "MERGE");
    let value = &patch["patch"]["value"];
    assert_eq!(value["name"], HCM);
    let hcm = field(value, "typed_config");
    assert_eq!(
        hcm["@type"],
        "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
    );
    assert_eq!(field(hcm, "normalize_path"), true);
    assert_eq!(field(hcm, "merge_slashes"), true);
    assert_eq!(
        field(hcm, "path_with_escaped_slashes_action"),
        "KEEP_UNCHANGED"
    );
    assert_eq!(
        field(field(hcm, "http_protocol_options"), "enable_trailers"),
        true
    );
}

#[test]
fn envoyfilter_parses_trailers_from_the_mcp_server() {
    let filter = envoy_filter();
    let cluster = patches(&filter, "CLUSTER");
    assert_eq!(cluster.len(), 1);
    let patch = cluster[0];
    assert_eq!(patch["patch"]["operation"], "MERGE");
    let options = &field(&patch["patch"]["value"], "typed_extension_protocol_options")
        ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
    assert_eq!(
        options["@type"],
        "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    );
    let http1 = field(
        field(options, "explicit_http_config"),
        "http_protocol_options",
    );
    assert_eq!(field(http1, "enable_trailers"), true);
}

#[test]
fn request_authentication_and_wasmplugin_agree_on_where_the_claims_are() {
    let plugin = one("envoy/istio/wasmplugin.yaml", "WasmPlugin");
    let auth = one(
        "envoy/istio/requestauthentication.yaml",
        "RequestAuthentication",
    );
    let config = &plugin["spec"]["pluginConfig"];
    let rule = &auth["spec"]["jwtRules"][0];
    assert_eq!(rule["outputPayloadToHeader"], config["jwtPayloadHeader"]);
    // Istio 1.21 and later: jwt_authn's payload_in_metadata is `payload` for every rule.
    assert_eq!(config["jwtMetadataKey"], "payload");
    // The whole pluginConfig is a valid filter configuration.
    tollgate_filter::config::FilterConfig::from_json(&serde_json::to_vec(config).unwrap())
        .unwrap_or_else(|e| panic!("{e}"));
}
