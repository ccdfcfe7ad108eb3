#!/usr/bin/env bash
# `make bench-floor`: where the architecture's floor is on this machine. What does Envoy cost per
# request for a proxy-wasm filter that does nothing but what every Tollgate call needs of Envoy?
# Five sides with the same bootstrap (envoy/render.py) otherwise, the 1 KiB `tools/call`:
#   plain     plain Envoy (render.py --plain: jwt_authn and the router, no wasm filter)
#   buffer    the floor filter (tests/floor/filter) in "buffer" mode: both bodies held to their
#             end and read into the VM, nothing else
#   grpc      the same, and one ~600-byte message per body on the worker's Audit/AppendStream to
#             floor-acks (tests/floor/acks, h2c), which acknowledges at once; each body is held
#             until its acknowledgement, as Tollgate holds it for its durable record
#   durable   the same against floor-acks --durable: each message acknowledged once as many
#             bytes as its record holds are written to a file and synced (fdatasync, one per
#             group of messages waiting together), the least a durable store does; no chain,
#             index or masking (and no record content on disk: the floor masks nothing)
#   tollgate  the real filter and `tollgate serve` (sled, mTLS), rendered as bench-ab.sh does
# in alternating rounds whose order rotates (as in bench-ab.sh), so that what else the machine
# does spoils a round of each side alike. Reports the medians of the rounds, the per-round ratio
# to plain Envoy, and CPU µs per request by process (/proc). Before measuring, one request per
# side checks the answer (200; the card number in clear, masked through Tollgate) and ten through
# the grpc and durable sides check that floor-acks received exactly two messages for each.
# Everything it starts is stopped on exit. Results, logs and report.md stay in target/bench-floor/.
#
# Environment (all optional):
#   TOLLGATE_BENCH_PORT_BASE    first of the ports used, base..base+99 (default 26000)
#   TOLLGATE_BENCH_DURATION     seconds per side per round (default 5)
#   TOLLGATE_BENCH_ROUNDS       rounds per connection count (default 5)
#   TOLLGATE_BENCH_WARMUP       seconds of unmeasured load per side before the rounds (default 2)
#   TOLLGATE_BENCH_WORKERS      Envoy --concurrency (default 2)
#   TOLLGATE_BENCH_CONNECTIONS  connection counts (default "1 16")
#   TOLLGATE_BENCH_SIDES        which sides (default "plain buffer grpc durable tollgate"; plain
#                               always)
#   TOLLGATE_ENVOY              as for `make run`
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

BASE=${TOLLGATE_BENCH_PORT_BASE:-26000}
DURATION=${TOLLGATE_BENCH_DURATION:-5}
ROUNDS=${TOLLGATE_BENCH_ROUNDS:-5}
WARMUP=${TOLLGATE_BENCH_WARMUP:-2}
WORKERS=${TOLLGATE_BENCH_WORKERS:-2}
ENVOY=${TOLLGATE_ENVOY:-$ROOT/.venv/bin/envoy}
read -r -a CONCURRENCY <<<"${TOLLGATE_BENCH_CONNECTIONS:-1 16}"
read -r -a SIDES <<<"${TOLLGATE_BENCH_SIDES:-plain buffer grpc durable tollgate}"
[[ " ${SIDES[*]} " == *" plain "* ]] || SIDES=(plain "${SIDES[@]}")
HERE=$ROOT/scripts/bench
STATE=$ROOT/target/bench-floor
TOLLGATE=$ROOT/target/release/tollgate
PAYMENTS=$ROOT/target/release/payments-server
ACKS=$ROOT/target/release/floor-acks
FILTER=$ROOT/target/wasm32-wasip1/wasm-release/tollgate_filter.wasm
FLOOR=$ROOT/target/wasm32-wasip1/wasm-release/tollgate_floor_filter.wasm
WASM=$FLOOR   # for ensure_tools
CHECK_REQUESTS=10   # through the grpc side, each must reach floor-acks as two messages

CP_PORT=$((BASE + 1))
ACKS_PORT=$((BASE + 2))
DURABLE_PORT=$((BASE + 3))
JSON_PORT=$((BASE + 11))
declare -A SIDE_PORT=([plain]=$((BASE + 20)) [buffer]=$((BASE + 30)) [grpc]=$((BASE + 40)) [durable]=$((BASE + 60))
  [tollgate]=$((BASE + 50)))

# shellcheck source=scripts/bench/lib.sh
. "$HERE/lib.sh"

for side in "${SIDES[@]}"; do
  [ -n "${SIDE_PORT[$side]:-}" ] || die "unknown side $side (TOLLGATE_BENCH_SIDES: plain buffer grpc durable tollgate)"
done
has_side() { [[ " ${SIDES[*]} " == *" $1 "* ]]; }

say "building tollgate, payments-server, floor-acks (release) and both filters (wasm-release)"
cargo build --release --quiet -p tollgate-control-plane -p payments-server -p tollgate-floor-acks
cargo build --quiet -p tollgate-filter -p tollgate-floor-filter --target wasm32-wasip1 --profile wasm-release
ensure_tools

for p in $CP_PORT $ACKS_PORT $DURABLE_PORT $JSON_PORT; do
  port_free "$p" || die "port $p is in use (set TOLLGATE_BENCH_PORT_BASE)"
done
for side in "${SIDES[@]}"; do
  for p in "${SIDE_PORT[$side]}" $((SIDE_PORT[$side] + 1)); do
    port_free "$p" || die "port $p is in use (set TOLLGATE_BENCH_PORT_BASE)"
  done
done
rm -rf "$STATE"
mkdir -p "$STATE/logs" "$STATE/results" "$STATE/home"

# ---- the stack -----------------------------------------------------------------------------------
"$TOLLGATE" --home "$STATE/home" dev token --sub bench@example.com --ttl 2h | tail -1 >"$STATE/token"
TOKEN=$(cat "$STATE/token")
# The control plane runs whether or not its side is measured: its first start makes the dev PKI
# that every side's bootstrap names for the (otherwise unused) control-plane cluster.
"$TOLLGATE" --home "$STATE/home" serve --listen "127.0.0.1:$CP_PORT" >"$STATE/logs/control-plane.log" 2>&1 &
CP_PID=$!
pids+=($CP_PID)
wait_for_line "$STATE/logs/control-plane.log" "listening on" $CP_PID
# The floor's stream peers: floor-acks answering at once (grpc), and after a sync (durable).
declare -A ACKS_PID=() ACKS_PORT_OF=([grpc]=$ACKS_PORT [durable]=$DURABLE_PORT)
for side in grpc durable; do
  has_side $side || continue
  extra=()
  if [ $side = durable ]; then extra=(--durable "$STATE/durable-floor.log"); fi
  "$ACKS" --listen "127.0.0.1:${ACKS_PORT_OF[$side]}" "${extra[@]}" >"$STATE/logs/floor-acks-$side.log" 2>&1 &
  ACKS_PID[$side]=$!
  pids+=($!)
  wait_for_line "$STATE/logs/floor-acks-$side.log" "listening on" "${ACKS_PID[$side]}"
done
"$PAYMENTS" --listen "127.0.0.1:$JSON_PORT" --stateless --json-response >"$STATE/logs/payments-json.log" 2>&1 &
JSON_PID=$!
pids+=($JSON_PID)
wait_for_line "$STATE/logs/payments-json.log" "listening on" $JSON_PID
python3 "$HERE/configs.py" envoy/policy/payments.json "$STATE" 10

# The process that answers each side's stream (control plane, floor-acks), if any.
declare -A PEER_PID=([tollgate]=$CP_PID [grpc]=${ACKS_PID[grpc]:-} [durable]=${ACKS_PID[durable]:-})
for side in "${SIDES[@]}"; do
  case $side in
    plain) args=(--plain) ;;
    buffer) args=(--wasm "$FLOOR" --config '{"mode":"buffer"}') ;;
    grpc | durable) args=(--wasm "$FLOOR" --config '{"mode":"grpc"}') ;;
    tollgate) args=(--wasm "$FILTER" --config "@$STATE/config-main.json") ;;
  esac
  if [ -n "${ACKS_PORT_OF[$side]:-}" ]; then
    args+=(--control-plane "127.0.0.1:${ACKS_PORT_OF[$side]}" --control-plane-plaintext)
  else
    args+=(--control-plane "127.0.0.1:$CP_PORT" --control-plane-tls "$STATE/home/tls")
  fi
  python3 envoy/render.py --out "$STATE/envoy-$side.yaml" --listen-port "${SIDE_PORT[$side]}" \
    --admin-port $((SIDE_PORT[$side] + 1)) --upstream "http://127.0.0.1:$JSON_PORT/mcp" \
    --jwks "$STATE/home/dev/jwks.json" "${args[@]}"
  "$ENVOY" -c "$STATE/envoy-$side.yaml" --concurrency "$WORKERS" --log-level warn \
    --disable-hot-restart >"$STATE/logs/envoy-$side.log" 2>&1 &
  pids+=($!)
  LISTEN[$side]=${SIDE_PORT[$side]} ADMIN[$side]=$((SIDE_PORT[$side] + 1)) EPID[$side]=$!
done
for side in "${SIDES[@]}"; do wait_envoy "$side"; done
say "stack up: ${SIDES[*]} (Envoy $WORKERS workers each), payments server :$JSON_PORT," \
  "control plane :$CP_PORT (mTLS)${ACKS_PID[grpc]:+, floor-acks :$ACKS_PORT (h2c)}" \
  "${ACKS_PID[durable]:+, floor-acks --durable :$DURABLE_PORT (h2c)}"

# A floor-acks' count of messages so far (it prints it on SIGUSR1): the grpc or durable side's.
ack_count() { # SIDE
  local log=$STATE/logs/floor-acks-$1.log before now
  before=$(grep -c '^floor-acks: ' "$log" || true)
  kill -USR1 "${ACKS_PID[$1]}"
  for _ in $(seq 1 250); do
    now=$(grep -c '^floor-acks: ' "$log" || true)
    if [ "$now" -gt "$before" ]; then
      grep '^floor-acks: ' "$log" | tail -1 | awk '{print $2}'
      return
    fi
    sleep 0.02
  done
  die "floor-acks did not report its count"
}

# ---- the answers are the ones meant --------------------------------------------------------------
declare -A ACKS_BEFORE=()
for side in "${!ACKS_PID[@]}"; do ACKS_BEFORE[$side]=$(ack_count "$side"); done
python3 - "$HERE" "$TOKEN" "$STATE/body-1k.json" "$CHECK_REQUESTS" \
  "$(for s in "${SIDES[@]}"; do printf '%s=%s ' "$s" "$(url "$s")"; done)" >&2 <<'PY'
import sys
sys.path.insert(0, sys.argv[1])
from check import count_pans, fetch
token, body, repeat = sys.argv[2], open(sys.argv[3], "rb").read(), int(sys.argv[4])
urls = dict(pair.split("=", 1) for pair in sys.argv[5].split())
problems = []
status, _, plain = fetch(urls["plain"], token, body)
if status != 200 or count_pans(plain.decode("utf-8", "replace")) != (1, 0):
    sys.exit(f"  CHECK FAILED plain: {status} {plain[:300]!r}")
print(f"  check plain     200, {len(plain)} B, 1 PAN in clear")
for side, url in urls.items():
    if side in ("plain", "tollgate"):
        continue
    # The floor filters change nothing: the answer is plain Envoy's, byte for byte.
    streamed = side in ("grpc", "durable")
    for _ in range(repeat if streamed else 1):
        status, _, data = fetch(url, token, body)
        if status != 200 or data != plain:
            problems.append(f"{side}: {status} {data[:300]!r}")
            break
    else:
        print(f"  check {side:<9} 200, the same {len(data)} B as plain Envoy"
              + (f" ({repeat} requests)" if streamed else ""))
for p in problems:
    print(f"  CHECK FAILED {p}")
sys.exit(1 if problems else 0)
PY
for side in "${!ACKS_PID[@]}"; do
  received=$(( $(ack_count "$side") - ACKS_BEFORE[$side] ))
  [ "$received" -eq $((2 * CHECK_REQUESTS)) ] ||
    die "floor-acks ($side) received $received messages for $CHECK_REQUESTS requests (expected $((2 * CHECK_REQUESTS)))"
  say "  check $side floor-acks received $received messages for $CHECK_REQUESTS requests"
done
if has_side tollgate; then
  python3 "$HERE/check.py" 1k/tollgate "$(url plain)" "$(url tollgate)" "$TOKEN" "$STATE/body-1k.json" 1 >&2
fi

# ---- measuring -----------------------------------------------------------------------------------
# CPU ticks so far of a side's Envoy, its stream's far end (0 if none) and the upstream.
side_ticks() {
  local peer=${PEER_PID[$1]:-}
  echo "$(cpu_ticks "${EPID[$1]}") $([ -n "$peer" ] && cpu_ticks "$peer" || echo 0) $(cpu_ticks "$JSON_PID")"
}

say "measuring: $ROUNDS rounds of ${DURATION}s per side, the order rotating (${SIDES[*]})"
LOAD_BEFORE=$(loadavg)
STARTED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
T0=$(date +%s)
for c in "${CONCURRENCY[@]}"; do
  for side in "${SIDES[@]}"; do
    run_wrk "$STATE/results/warmup-c$c-$side.json" "$(url "$side")" body-1k.json "$c" "$WARMUP" || true
  done
  order=("${SIDES[@]}")
  for round in $(seq 1 "$ROUNDS"); do
    for side in "${order[@]}"; do
      out=$STATE/results/c$c-$side-r$round.json
      if [ -n "${ACKS_PID[$side]:-}" ]; then acks_before=$(ack_count "$side"); fi
      before=$(side_ticks "$side")
      run_wrk "$out" "$(url "$side")" body-1k.json "$c" "$DURATION" || true
      after=$(side_ticks "$side")
      echo "$before $after" >"$out.cpu"
      if [ -n "${ACKS_PID[$side]:-}" ]; then echo "$acks_before $(ack_count "$side")" >"$out.acks"; fi
    done
    order=("${order[@]:1}" "${order[0]}")
  done
  say "  c=$c done"
done
T1=$(date +%s)

python3 - "$STATE" "$ROUNDS" "$DURATION" "$WORKERS" "$LOAD_BEFORE" "$(loadavg)" "$((T1 - T0))" \
  "$CLK_TCK" "${SIDES[*]}" "${CONCURRENCY[*]}" "$STARTED" \
  "$(git rev-parse --short HEAD)$([ -z "$(git status --porcelain --untracked-files=no)" ] || echo +changes)" \
  <<'PY' | tee "$STATE/report.md"
import json, os, statistics, sys
(state, rounds, duration, workers, load0, load1, secs, tck, sides, conns, started,
 source) = sys.argv[1:]
rounds, tck = int(rounds), int(tck)
LABELS = {
    "plain": "plain Envoy",
    "buffer": "floor: buffer both bodies",
    "grpc": "floor: buffer + 1 acked stream message per body",
    "durable": "floor: the same, acked once synced to a file (group commit)",
    "tollgate": "Envoy + Tollgate (real filter, `tollgate serve`)",
}

def load(name):
    """One side's round: wrk's summary with CPU µs per request (Envoy, stream peer, upstream)
    and floor-acks messages per request; None if wrk failed or saw errors."""
    path = os.path.join(state, "results", name + ".json")
    try:
        r = json.load(open(path))
        ticks = [int(x) for x in open(path + ".cpu").read().split()]
    except (OSError, ValueError):
        return None
    if not r.get("requests") or sum(v for k, v in r.items() if k.startswith("err_")):
        return None
    r["cpu"] = [(ticks[i + 3] - ticks[i]) * 1e6 / tck / r["requests"] for i in range(3)]
    if os.path.exists(path + ".acks"):
        a, b = map(int, open(path + ".acks").read().split())
        r["acks"] = (b - a) / r["requests"]
    return r

med = statistics.median
print(f"**The architecture's floor** ({started}, at {source}): the 1 KiB `tools/call` (1 PAN, "
      f"JSON answer), {rounds} rounds of {duration} s per side in rotating order, Envoy "
      f"--concurrency {workers}, wrk on the same cores, 127.0.0.1. Load average before "
      f"{load0}, after {load1}; {secs} s of load.\n")
print("| conns | side | req/s | vs plain (range) | p50 ms | p99 ms | CPU µs/req Envoy | Envoy added vs "
      "plain | CPU µs/req acks / control plane | CPU µs/req upstream | acks msgs/req | "
      "rounds ok |")
print("|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for c in map(int, conns.split()):
    runs = {s: [load(f"c{c}-{s}-r{r}") for r in range(1, rounds + 1)] for s in sides.split()}
    plain_ok = [r for r in runs["plain"] if r]
    plain_envoy = med(r["cpu"][0] for r in plain_ok) if plain_ok else None
    for side in sides.split():
        ok = [r for r in runs[side] if r]
        if not ok:
            print(f"| {c} | {LABELS[side]} | not measured (errors; see target/bench-floor/logs/wrk.log) "
                  f"|||||||||| 0/{rounds} |")
            continue
        envoy = med(r["cpu"][0] for r in ok)
        ratios = sorted(s["rps"] / p["rps"] for s, p in zip(runs[side], runs["plain"]) if s and p)
        ratio = ("—" if side == "plain" else
                 f"**{med(ratios):.2f}×** ({ratios[0]:.2f}–{ratios[-1]:.2f})" if ratios else "?")
        added = "—" if side == "plain" or plain_envoy is None else f"{envoy - plain_envoy:+.0f}"
        peer = f"{med(r['cpu'][1] for r in ok):.0f}" if side in ("grpc", "durable", "tollgate") else "—"
        acks = f"{med(r['acks'] for r in ok):.2f}" if side in ("grpc", "durable") else "—"
        print(f"| {c} | {LABELS[side]} | {med(r['rps'] for r in ok):.0f} | {ratio} | "
              f"{med(r['p50_us'] for r in ok) / 1000:.2f} | {med(r['p99_us'] for r in ok) / 1000:.2f} | "
              f"{envoy:.0f} | {added} | {peer} | "
              f"{med(r['cpu'][2] for r in ok):.0f} | {acks} | {len(ok)}/{rounds} |")
print("\nreq/s, p50, p99 and CPU: medians of the rounds without errors; vs plain: the median (and "
      "range) of each round's ratio to plain Envoy in the same round. CPU µs per request: user + "
      "system time of the process during the round (/proc) over the requests wrk completed. "
      "acks msgs/req: messages floor-acks received during the round per completed request "
      "(2 = one per body; requests cut off when wrk stops add a little).")
PY
for side in "${!ACKS_PID[@]}"; do
  say "floor-acks ($side) received $(ack_count "$side") messages in all (warm-up and checks included)"
done
