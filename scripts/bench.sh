#!/usr/bin/env bash
# `make bench`: Tollgate's cost against plain Envoy, every figure measured in this run, on this
# machine, against 127.0.0.1 only.
#
# Starts, on its own ports (so it runs beside `make run`), the control plane on sled, the demo
# payments MCP server twice (stateless JSON answers, stateless SSE answers), and Envoy 1.40 with
# the bootstrap of envoy/render.py, once with the Tollgate filter and once rendered --plain (same
# bootstrap and jwt_authn, no filter). wrk sends real MCP `tools/call` JSON-RPC POSTs with a valid
# dev-issuer token. Prints one table (requests/s, p50, p99, ratio to plain Envoy; the policy-size
# rows), then Envoy's and the wasm VMs' memory sampled while 100,000 requests go through the filter.
# Everything it starts is stopped on exit. Results stay in target/bench/ (report.md, raw JSON, logs).
#
# Environment (all optional):
#   TOLLGATE_BENCH_PORT_BASE  first of the ports used, base..base+211 (default 28000, below the ephemeral range)
#   TOLLGATE_BENCH_DURATION   seconds measured per cell (default 10)
#   TOLLGATE_BENCH_WARMUP     seconds of unmeasured load before each cell (default 2)
#   TOLLGATE_BENCH_MEM_REQUESTS  requests through the filter for the memory samples (default 100000)
#   TOLLGATE_BENCH_MEM_CAP    give up on that count after this many seconds of load (default 300)
#   TOLLGATE_BENCH_WORKERS    Envoy --concurrency (default 2)
#   TOLLGATE_BENCH_KEEP=1     keep the run's audit store (target/bench/home/audit.sled, gigabytes)
#   TOLLGATE_ENVOY, TOLLGATE_WASM  as for `make run`
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

BASE=${TOLLGATE_BENCH_PORT_BASE:-28000}
DURATION=${TOLLGATE_BENCH_DURATION:-10}
WARMUP=${TOLLGATE_BENCH_WARMUP:-2}
MEM_REQUESTS=${TOLLGATE_BENCH_MEM_REQUESTS:-100000}
MEM_CAP=${TOLLGATE_BENCH_MEM_CAP:-300}
WORKERS=${TOLLGATE_BENCH_WORKERS:-2}
ENVOY=${TOLLGATE_ENVOY:-$ROOT/.venv/bin/envoy}
WASM=${TOLLGATE_WASM:-$ROOT/target/wasm32-wasip1/wasm-release/tollgate_filter.wasm}
SSE_COUNT=10            # slow_stream steps: 10 progress + 10 log events + the result, 21 PANs
# Connection counts per workload: 1k, 64k, sse (sessionless, as before), session (16 MCP
# sessions, SSE answers: the shape MCP clients use), 1k50 (the 1 KiB call to an upstream that
# takes 50 ms, like a real payments API: the added latency is what counts there).
declare -A WL_CONCURRENCY=([1k]="1 16 64 256" [64k]="1 16 64 256" [sse]="1 16 64 256"
  [session]="1 16" [1k50]="1 16 256")
WORKLOADS=(1k 64k sse session 1k50)
SESSIONS=16
# The 1 KiB call again through an Envoy whose filter releases answers once their record is sent
# (`"responseRecord": "pipelined"`): what the durable default costs.
PIPELINED_CONCURRENCY=(1 16 64)
POLICY_CONCURRENCY=(1 16)
POLICY_ROUNDS=3
POLICY_ROUND=$(( (DURATION + 1) / 2 ))   # seconds per round
HERE=$ROOT/scripts/bench
STATE=$ROOT/target/bench
TOLLGATE=$ROOT/target/release/tollgate
PAYMENTS=$ROOT/target/release/payments-server

CP_PORT=$((BASE + 51))
CP_H2C_PORT=$((BASE + 52))   # a second control plane, --insecure-plaintext: what mTLS costs
JSON_PORT=$((BASE + 81))
SSE_PORT=$((BASE + 82))
SESSION_PORT=$((BASE + 83))
# name listen-port admin-port upstream-port config ("plain" = rendered --plain)
ENVOYS=(
  "plain-json   $((BASE + 100)) $((BASE + 101)) $JSON_PORT plain"
  "tollgate-json $((BASE + 110)) $((BASE + 111)) $JSON_PORT config-main.json"
  "plain-sse    $((BASE + 120)) $((BASE + 121)) $SSE_PORT plain"
  "tollgate-sse $((BASE + 130)) $((BASE + 131)) $SSE_PORT config-main.json"
  "policy-1     $((BASE + 140)) $((BASE + 141)) $JSON_PORT config-1rule.json"
  "policy-200   $((BASE + 150)) $((BASE + 151)) $JSON_PORT config-200rule.json"
  "memory       $((BASE + 160)) $((BASE + 161)) $JSON_PORT config-main.json"
  "mask64       $((BASE + 170)) $((BASE + 171)) $JSON_PORT config-main.json"
  "tollgate-h2c $((BASE + 180)) $((BASE + 181)) $JSON_PORT config-main.json"
  "plain-session $((BASE + 190)) $((BASE + 191)) $SESSION_PORT plain"
  "tollgate-session $((BASE + 200)) $((BASE + 201)) $SESSION_PORT config-main.json"
  "pipelined    $((BASE + 210)) $((BASE + 211)) $JSON_PORT config-pipelined.json"
)

# shellcheck source=scripts/bench/lib.sh
. "$HERE/lib.sh"

start_envoy() { # NAME LISTEN ADMIN UPSTREAM_PORT CONFIG
  local name=$1 listen=$2 admin=$3 upstream=$4 config=$5 args=()
  if [ "$config" = plain ]; then args=(--plain); else args=(--wasm "$WASM" --config "@$STATE/$config"); fi
  if [ "$name" = tollgate-h2c ]; then
    args+=(--control-plane "127.0.0.1:$CP_H2C_PORT" --control-plane-plaintext)
  else
    args+=(--control-plane "127.0.0.1:$CP_PORT" --control-plane-tls "$STATE/home/tls")
  fi
  python3 envoy/render.py --out "$STATE/envoy-$name.yaml" --listen-port "$listen" --admin-port "$admin" \
    --upstream "http://127.0.0.1:$upstream/mcp" --jwks "$STATE/home/dev/jwks.json" "${args[@]}"
  "$ENVOY" -c "$STATE/envoy-$name.yaml" --concurrency "$WORKERS" --log-level warn \
    --disable-hot-restart >"$STATE/logs/envoy-$name.log" 2>&1 &
  pids+=($!)
  LISTEN[$name]=$listen ADMIN[$name]=$admin EPID[$name]=$!
}

# ---- load ----------------------------------------------------------------------------------------
# cell ID ENVOY BODY CONNECTIONS CHECK: warm-up, then the measured run into results/ID.json;
# not measured (with the reason) when the pre-run check CHECK failed.
cell() {
  local id=$1 name=$2 body=$3 conns=$4 key=$5 out=$STATE/results/$1.json
  if [ -n "${FAILED_CHECK[$key]:-}" ]; then
    printf '{"error":"%s"}\n' "${FAILED_CHECK[$key]}" >"$out"
    say "  $id: not measured (${FAILED_CHECK[$key]})"
    return
  fi
  local upstream=$JSON_PID
  [ "$body" = body-sse.json ] && upstream=$SSE_PID
  [ -n "${BENCH_SESSIONS:-}" ] && upstream=$SESSION_PID
  run_wrk "$STATE/results/warmup.json" "$(url "$name")" "$body" "$conns" "$WARMUP" || true
  local before after
  before="$(cpu_ticks "${EPID[$name]}") $(cpu_ticks "$CP_PID") $(cpu_ticks "$upstream")"
  if ! run_wrk "$out" "$(url "$name")" "$body" "$conns" "$DURATION" || [ ! -s "$out" ]; then
    printf '{"error":"wrk failed; see target/bench/logs/wrk.log"}\n' >"$out"
  fi
  after="$(cpu_ticks "${EPID[$name]}") $(cpu_ticks "$CP_PID") $(cpu_ticks "$upstream")"
  python3 - "$out" "$id" "$CLK_TCK" "$before" "$after" >&2 <<'PY'
import json, sys
path, name, tck = sys.argv[1], sys.argv[2], int(sys.argv[3])
r = json.load(open(path))
if "error" in r:
    print(f"  {name:<22} not measured: {r['error']}")
else:
    # CPU time (user + system) each process spent during the measured run, per request.
    deltas = [int(b) - int(a) for a, b in zip(sys.argv[4].split(), sys.argv[5].split())]
    r["cpu_us_per_req"] = {k: d * 1e6 / tck / max(r["requests"], 1)
                           for k, d in zip(("envoy", "control_plane", "upstream"), deltas)}
    json.dump(r, open(path, "w"))
    errs = sum(v for k, v in r.items() if k.startswith("err_"))
    cpu = r["cpu_us_per_req"]
    print(f"  {name:<22} {r['rps']:>9.1f} req/s  p50 {r['p50_us']/1000:7.2f} ms  p99 {r['p99_us']/1000:7.2f} ms  "
          f"errors {errs}  CPU/req: envoy {cpu['envoy']:.0f} us, control plane {cpu['control_plane']:.0f} us, "
          f"upstream {cpu['upstream']:.0f} us")
PY
}

# ---- main ----------------------------------------------------------------------------------------
ensure_tools
say "building release binaries (tollgate, payments-server)"
cargo build --release --quiet -p tollgate-control-plane -p payments-server

for p in $CP_PORT $CP_H2C_PORT $JSON_PORT $SSE_PORT $SESSION_PORT; do port_free "$p" || die "port $p is in use (set TOLLGATE_BENCH_PORT_BASE)"; done
for e in "${ENVOYS[@]}"; do
  read -r _ l a _ _ <<<"$e"
  for p in "$l" "$a"; do port_free "$p" || die "port $p is in use (set TOLLGATE_BENCH_PORT_BASE)"; done
done

rm -rf "$STATE"
mkdir -p "$STATE/logs" "$STATE/results" "$STATE/home"
LOAD_BEFORE=$(loadavg)
STARTED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
T0=$(date +%s)

"$TOLLGATE" --home "$STATE/home" serve --listen "127.0.0.1:$CP_PORT" >"$STATE/logs/control-plane.log" 2>&1 &
CP_PID=$!
pids+=($CP_PID)
wait_for_line "$STATE/logs/control-plane.log" "listening on" $CP_PID
"$TOLLGATE" --home "$STATE/home-h2c" serve --listen "127.0.0.1:$CP_H2C_PORT" --insecure-plaintext \
  >"$STATE/logs/control-plane-h2c.log" 2>&1 &
pids+=($!)
wait_for_line "$STATE/logs/control-plane-h2c.log" "listening on" $!
"$PAYMENTS" --listen "127.0.0.1:$JSON_PORT" --stateless --json-response >"$STATE/logs/payments-json.log" 2>&1 &
JSON_PID=$!
pids+=($JSON_PID)
wait_for_line "$STATE/logs/payments-json.log" "listening on" $JSON_PID
"$PAYMENTS" --listen "127.0.0.1:$SSE_PORT" --stateless >"$STATE/logs/payments-sse.log" 2>&1 &
SSE_PID=$!
pids+=($SSE_PID)
wait_for_line "$STATE/logs/payments-sse.log" "listening on" $SSE_PID
"$PAYMENTS" --listen "127.0.0.1:$SESSION_PORT" >"$STATE/logs/payments-session.log" 2>&1 &
SESSION_PID=$!
pids+=($SESSION_PID)
wait_for_line "$STATE/logs/payments-session.log" "listening on" $SESSION_PID

TOKEN=$("$TOLLGATE" --home "$STATE/home" dev token --sub bench@example.com --ttl 2h | tail -1)
python3 "$HERE/configs.py" envoy/policy/payments.json "$STATE" "$SSE_COUNT"

for e in "${ENVOYS[@]}"; do
  read -r name l a up cfg <<<"$e"
  case $name in memory|mask64) continue ;; esac
  start_envoy "$name" "$l" "$a" "$up" "$cfg"
done
for name in plain-json tollgate-json plain-sse tollgate-sse policy-1 policy-200 tollgate-h2c \
  plain-session tollgate-session pipelined; do wait_envoy "$name"; done
say "stack up: control plane 127.0.0.1:$CP_PORT (mTLS) and :$CP_H2C_PORT (h2c), payments servers :$JSON_PORT (JSON) :$SSE_PORT (SSE) :$SESSION_PORT (sessions, SSE), 10 Envoys ($WORKERS workers each)"

# One request per workload: the answer is the one meant, in clear through plain Envoy and masked
# through Tollgate. A failed check leaves that workload's cells unmeasured, with the reason.
declare -A FAILED_CHECK
check() { # KEY PLAIN TOLLGATE BODY PANS
  if ! python3 "$HERE/check.py" "$1" "$(url "$2")" "$(url "$3")" "$TOKEN" "$STATE/$4" "$5" >&2; then
    FAILED_CHECK[$1]="the pre-run check of one request failed (see the output of make bench)"
  fi
}
check 1k plain-json tollgate-json body-1k.json 1
check 64k plain-json tollgate-json body-64k.json 50
check sse plain-sse tollgate-sse body-sse.json $((2 * SSE_COUNT + 1))
check policy1 plain-json policy-1 body-1k.json 1
check policy200 plain-json policy-200 body-1k.json 1
check cp-mtls plain-json tollgate-json body-1k.json 1
check cp-h2c plain-json tollgate-h2c body-1k.json 1

# The session rows: SESSIONS sessions opened through each gateway (Tollgate binds them to the
# bench identity) right before the cell (the server drops a session idle for 5 minutes), every
# request in one of them.
# sessions ENVOY EXPECT: the ids, comma-separated; if opening them failed (the reason goes to
# stderr), "none", and every request of the cell is then an error in the table.
sessions() {
  python3 "$HERE/sessions.py" "$(url "$1")" "$TOKEN" "$SESSIONS" "$STATE/body-1k.json" "$2" || echo none
}
check 1k50 plain-json tollgate-json body-1k50.json 1

say "measuring: ${DURATION}s per cell after ${WARMUP}s of warm-up, plain Envoy then Envoy + Tollgate"
for workload in "${WORKLOADS[@]}"; do
  for c in ${WL_CONCURRENCY[$workload]}; do
    plain=plain-json tg=tollgate-json body=body-$workload.json
    case $workload in
      sse) plain=plain-sse tg=tollgate-sse ;;
      session) plain=plain-session tg=tollgate-session body=body-1k.json ;;
    esac
    [ $workload = session ] && BENCH_SESSIONS=$(sessions $plain clear) && export BENCH_SESSIONS
    cell "$workload-c$c-plain" $plain "$body" "$c" $workload
    [ $workload = session ] && BENCH_SESSIONS=$(sessions $tg masked) && export BENCH_SESSIONS
    cell "$workload-c$c-tollgate" $tg "$body" "$c" $workload
    unset BENCH_SESSIONS
  done
done
check pipelined plain-json pipelined body-1k.json 1
for c in "${PIPELINED_CONCURRENCY[@]}"; do
  cell "pipelined-c$c" pipelined body-1k.json "$c" pipelined
done
# Pairs of Envoys whose difference is microseconds per call (rule evaluation; TLS on the hop to
# the control plane) alternate (A, B, A, ...) in POLICY_ROUNDS rounds, and the report takes the
# median p50/p99 of the rounds: a burst of load from another process on the machine then spoils
# one round, not the comparison.
# alternate KEY_A ENVOY_A KEY_B ENVOY_B: results KEY-cC.json for each connection count.
alternate() {
  local keys=("$1" "$3") envoys=("$2" "$4") c i
  for c in "${POLICY_CONCURRENCY[@]}"; do
    for i in 0 1; do
      if [ -n "${FAILED_CHECK[${keys[$i]}]:-}" ]; then
        printf '{"error":"%s"}\n' "${FAILED_CHECK[${keys[$i]}]}" >"$STATE/results/${keys[$i]}-c$c.json"
      else
        run_wrk "$STATE/results/warmup.json" "$(url "${envoys[$i]}")" body-1k.json "$c" "$WARMUP" || true
      fi
    done
    for round in $(seq 1 "$POLICY_ROUNDS"); do
      for i in 0 1; do
        [ -n "${FAILED_CHECK[${keys[$i]}]:-}" ] && continue
        run_wrk "$STATE/results/${keys[$i]}-c$c-r$round.json" "$(url "${envoys[$i]}")" body-1k.json \
          "$c" "$POLICY_ROUND" || true
      done
    done
    for i in 0 1; do
      [ -n "${FAILED_CHECK[${keys[$i]}]:-}" ] && continue
      python3 - "$STATE/results" "${keys[$i]}-c$c" "$POLICY_ROUNDS" >&2 <<'PY'
import json, os, statistics, sys
d, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
rounds = []
for i in range(1, n + 1):
    try:
        rounds.append(json.load(open(os.path.join(d, f"{name}-r{i}.json"))))
    except (OSError, ValueError):
        pass
if len(rounds) < n:
    out = {"error": f"only {len(rounds)} of {n} rounds measured; see target/bench/logs/wrk.log"}
    print(f"  {name:<22} not measured: {out['error']}")
else:
    out = {"rounds": len(rounds), "requests": sum(r["requests"] for r in rounds),
           "seconds": sum(r["seconds"] for r in rounds),
           "p50_us": statistics.median(r["p50_us"] for r in rounds),
           "p99_us": statistics.median(r["p99_us"] for r in rounds),
           "round_p99_us": [r["p99_us"] for r in rounds]}
    out["rps"] = out["requests"] / out["seconds"]
    for k in ("err_connect", "err_read", "err_write", "err_status", "err_timeout"):
        out[k] = sum(r[k] for r in rounds)
    print(f"  {name:<22} {out['rps']:>9.1f} req/s  median p50 {out['p50_us']/1000:7.2f} ms  median p99 "
          f"{out['p99_us']/1000:7.2f} ms  (round p99s: {', '.join(f'{p/1000:.2f}' for p in out['round_p99_us'])})")
json.dump(out, open(os.path.join(d, f"{name}.json"), "w"))
PY
    done
  done
}
say "policy size: 1 rule vs 200 rules (1 KiB result), $POLICY_ROUNDS alternating rounds of ${POLICY_ROUND}s"
alternate policy1 policy-1 policy200 policy-200
say "the hop to the control plane: mutual TLS vs h2c (1 KiB result), $POLICY_ROUNDS alternating rounds of ${POLICY_ROUND}s"
alternate cp-mtls tollgate-json cp-h2c tollgate-h2c
LOAD_AFTER_TABLE=$(loadavg)

# Masking inside Envoy: a fresh Envoy + Tollgate that carries only the 64 KiB / 50-card call, at 1
# connection; the filter times its masking of each answer (tollgate.mask_us, host clock) and
# Envoy's admin /stats reports the quantiles of that histogram.
say "masking in Envoy: the 64 KiB / 50-card call for ${DURATION}s at 1 connection, timed by the filter"
start_envoy mask64 $((BASE + 170)) $((BASE + 171)) $JSON_PORT config-main.json
wait_envoy mask64
run_wrk "$STATE/results/mask64.json" "$(url mask64)" body-64k.json 1 "$DURATION" || true
# Envoy merges the workers' histograms when it flushes its stats (every 5 s by default).
for _ in $(seq 1 30); do
  curl -s "http://127.0.0.1:${ADMIN[mask64]}/stats?filter=tollgate.mask_us" >"$STATE/mask-in-envoy.txt" || true
  grep -q 'P99(' "$STATE/mask-in-envoy.txt" && break
  sleep 0.5
done

# Memory: a fresh Envoy + Tollgate, sampled before any request and after every burst of load
# (alternately the 1 KiB and the 64 KiB / 50-PAN call, 16 connections) until MEM_REQUESTS.
say "memory: $MEM_REQUESTS requests through a fresh Envoy + Tollgate, sampled after each burst"
for e in "${ENVOYS[@]}"; do
  read -r name l a up cfg <<<"$e"
  if [ "$name" = memory ]; then start_envoy "$name" "$l" "$a" "$up" "$cfg"; fi
done
wait_envoy memory
MEM=$STATE/memory.jsonl
sample() { python3 "$HERE/memory.py" "${ADMIN[memory]}" "${EPID[memory]}" "$1" >>"$MEM"; }
sample "started, no request"
mem_start=$(date +%s) burst=0 done_requests=0
while [ "$done_requests" -lt "$MEM_REQUESTS" ] && [ $(($(date +%s) - mem_start)) -lt "$MEM_CAP" ]; do
  body=body-1k.json
  [ $((burst % 2)) -eq 1 ] && body=body-64k.json
  run_wrk "$STATE/results/memory-burst.json" "$(url memory)" "$body" 16 5 || true
  burst=$((burst + 1))
  sample "after burst $burst"
  done_requests=$(tail -1 "$MEM" | python3 -c 'import json,sys; print(json.load(sys.stdin)["requests"])')
  say "  $done_requests requests"
done
sleep 1
sample "1 s after the last burst"
# The same figures for plain Envoy, which carried the plain cells of the table above.
python3 "$HERE/memory.py" "${ADMIN[plain-json]}" "${EPID[plain-json]}" "plain Envoy after its cells" \
  >"$STATE/memory-plain.json"

# The audit chain holds a record for every request the filter let through, and verifies.
filter_requests=0
for name in tollgate-json tollgate-sse policy-1 policy-200 memory mask64 tollgate-session pipelined; do
  n=$(curl -s "http://127.0.0.1:${ADMIN[$name]}/stats?filter=^http.mcp.downstream_rq_completed$" | awk '{print $2}')
  filter_requests=$((filter_requests + ${n:-0}))
done
AUDITOR_TOKEN=$("$TOLLGATE" --home "$STATE/home" dev token --sub bench-auditor@example.com \
  --groups auditors --aud tollgate-operators | tail -1)
TOLLGATE_TOKEN=$AUDITOR_TOKEN TOLLGATE_CONTROL_PLANE=127.0.0.1:$CP_PORT "$TOLLGATE" --home "$STATE/home" audit verify --json \
  >"$STATE/audit-verify.json" 2>"$STATE/logs/audit-verify.log" || true

AUDIT_BYTES=$(du -sb "$STATE/home/audit.sled" | cut -f1)
ENVOY_VERSION="Envoy $("$ENVOY" --version 2>&1 | grep -o 'version: .*' | cut -d' ' -f2 || true)"
WRK_VERSION=$(wrk -v 2>&1 | head -1 | cut -d" " -f1-2 || true)
SOURCE=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
  SOURCE+=" + uncommitted changes in the working tree"
fi
T1=$(date +%s)
python3 - "$STATE/meta.json" <<PY
import json, sys
json.dump({
    "started": "$STARTED", "seconds": $T1 - $T0,
    "load_before": "$LOAD_BEFORE", "load_after_table": "$LOAD_AFTER_TABLE", "load_end": "$(loadavg)",
    "duration": $DURATION, "warmup": $WARMUP, "workers": $WORKERS, "mem_requests": $MEM_REQUESTS,
    "workloads": {$(for w in "${WORKLOADS[@]}"; do printf '"%s": [%s], ' "$w" "$(echo ${WL_CONCURRENCY[$w]} | tr ' ' ,)"; done) "pipelined": [$(IFS=,; echo "${PIPELINED_CONCURRENCY[*]}")]},
    "sessions": $SESSIONS,
    "policy_concurrency": [$(IFS=,; echo "${POLICY_CONCURRENCY[*]}")],
    "sse_count": $SSE_COUNT, "policy_rounds": $POLICY_ROUNDS, "policy_round": $POLICY_ROUND, "filter_requests": $filter_requests,
    "audit_store_bytes": $AUDIT_BYTES,
    "envoy_version": "$ENVOY_VERSION", "wrk_version": "$WRK_VERSION", "source": "$SOURCE",
    "command": "make bench",
}, open(sys.argv[1], "w"))
PY
python3 "$HERE/report.py" "$STATE" | tee "$STATE/report.md"
python3 - "$STATE/mask-in-envoy.txt" "$STATE/results/mask64.json" <<'PY' | tee -a "$STATE/report.md"
import json, re, sys
text = open(sys.argv[1]).read() if sys.argv[1] else ""
try:
    requests = json.load(open(sys.argv[2])).get("requests", 0)
except (OSError, ValueError):
    requests = 0
# Envoy prints a histogram as P0(interval,cumulative) P25(...) ...; the cumulative value counts.
q = {p: float(c) for p, c in re.findall(r"P(\d+(?:\.\d+)?)\([^,]*,([0-9.e+-]+)\)", text)}
print()
if "99" in q:
    print(f"**Masking inside Envoy** (64 KiB JSON answer, 50 card numbers, 1 connection, {requests} "
          f"requests; the filter's own timing of each answer's masking, `tollgate_mask_us`): "
          f"p50 {q.get('50', 0) / 1000:.2f} ms, p95 {q.get('95', 0) / 1000:.2f} ms, "
          f"p99 {q['99'] / 1000:.2f} ms (aim: masking adds at most 1 ms p99)")
else:
    print("**Masking inside Envoy**: not measured (no tollgate.mask_us histogram in Envoy's stats)")
PY
# The audit store of a run is gigabytes; keep it only when asked (TOLLGATE_BENCH_KEEP=1).
if [ "${TOLLGATE_BENCH_KEEP:-0}" != 1 ]; then
  kill -TERM "$CP_PID" 2>/dev/null || true
  wait "$CP_PID" 2>/dev/null || true
  rm -rf "$STATE/home/audit.sled" "$STATE/home-h2c/audit.sled"
fi
