#!/usr/bin/env bash
# `make bench-ab BASE=REV [NEW=REV]`: does this tree (or revision NEW) cost throughput against an
# earlier revision? Both run in
# the same process of measurement, in alternating rounds, so that what else the machine does spoils
# a round of each side alike instead of one whole run (two `make bench` runs minutes apart differed
# by up to 56% on plain Envoy alone).
#
# A revision is built from `git archive REV` in target/ab/ with a target directory of its own (its
# control plane, its filter, its Envoy bootstrap), so each side is that revision as a whole.
# The two sides share the demo payments servers of this tree (the upstream is not under test) and
# plain Envoy, measured in the same rounds, as the yardstick. Each round runs plain Envoy, REV and
# this tree for DURATION seconds each, in an order that rotates from round to round. The report
# gives the medians of the rounds and the per-round ratio this tree / REV with its range.
#
# Environment (all optional):
#   TOLLGATE_BENCH_PORT_BASE  first of the ports used, base..base+99 (default 29000)
#   TOLLGATE_BENCH_DURATION   seconds per side per round (default 5)
#   TOLLGATE_BENCH_ROUNDS     rounds per cell (default 5)
#   TOLLGATE_BENCH_WORKERS    Envoy --concurrency (default 2)
#   TOLLGATE_BENCH_WORKLOADS  which of 1k 64k sse (default all three)
#   TOLLGATE_BENCH_CONNECTIONS  connection counts (default "1 16")
#   TOLLGATE_ENVOY            as for `make run`
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

REV=${1:?usage: bench-ab.sh REV [NEW_REV]}
NEW=${2:-}
BASE=${TOLLGATE_BENCH_PORT_BASE:-29000}
DURATION=${TOLLGATE_BENCH_DURATION:-5}
ROUNDS=${TOLLGATE_BENCH_ROUNDS:-5}
WARMUP=2
WORKERS=${TOLLGATE_BENCH_WORKERS:-2}
ENVOY=${TOLLGATE_ENVOY:-$ROOT/.venv/bin/envoy}
SSE_COUNT=10
read -r -a WORKLOADS <<<"${TOLLGATE_BENCH_WORKLOADS:-1k 64k sse}"
read -r -a CONCURRENCY <<<"${TOLLGATE_BENCH_CONNECTIONS:-1 16}"
HERE=$ROOT/scripts/bench
STATE=$ROOT/target/bench-ab
BUILDS=$ROOT/target/ab

# shellcheck source=scripts/bench/lib.sh
. "$HERE/lib.sh"

# ---- the two sides -------------------------------------------------------------------------------
REV_ID=$(git rev-parse --short "$REV^{commit}") || die "no revision $REV"
declare -A SRC TARGET TOLLGATE_BIN FILTER CP_PORT CP_PID
SRC[base]=$BUILDS/src-$REV_ID TARGET[base]=$BUILDS/target-$REV_ID
if [ -n "$NEW" ]; then
  HEAD_ID=$(git rev-parse --short "$NEW^{commit}") || die "no revision $NEW"
  SRC[new]=$BUILDS/src-$HEAD_ID TARGET[new]=$BUILDS/target-$HEAD_ID
else
  HEAD_ID=$(git rev-parse --short HEAD)
  [ -z "$(git status --porcelain --untracked-files=no)" ] || HEAD_ID+="+changes"
  SRC[new]=$ROOT TARGET[new]=$ROOT/target
fi
for side in base new; do
  TOLLGATE_BIN[$side]=${TARGET[$side]}/release/tollgate
  FILTER[$side]=${TARGET[$side]}/wasm32-wasip1/wasm-release/tollgate_filter.wasm
done
PAYMENTS=${TARGET[new]}/release/payments-server
WASM=${FILTER[new]}   # for ensure_tools
CP_PORT[new]=$((BASE + 1)) CP_PORT[base]=$((BASE + 2))
JSON_PORT=$((BASE + 11))
SSE_PORT=$((BASE + 12))
# name listen-port admin-port upstream-port side ("plain" = rendered --plain)
ENVOYS=(
  "plain-json $((BASE + 20)) $((BASE + 21)) $JSON_PORT plain"
  "base-json  $((BASE + 30)) $((BASE + 31)) $JSON_PORT base"
  "new-json   $((BASE + 40)) $((BASE + 41)) $JSON_PORT new"
  "plain-sse  $((BASE + 50)) $((BASE + 51)) $SSE_PORT plain"
  "base-sse   $((BASE + 60)) $((BASE + 61)) $SSE_PORT base"
  "new-sse    $((BASE + 70)) $((BASE + 71)) $SSE_PORT new"
)

say "building $HEAD_ID and $REV_ID"
for side in base new; do
  if [ "${SRC[$side]}" != "$ROOT" ] && [ ! -d "${SRC[$side]}" ]; then
    mkdir -p "${SRC[$side]}.tmp"
    git archive "${SRC[$side]##*/src-}" | tar -x -C "${SRC[$side]}.tmp"
    mv "${SRC[$side]}.tmp" "${SRC[$side]}"
  fi
  # A target directory per source tree: two trees sharing one rebuild each other's generated code.
  packages=(-p tollgate-control-plane)
  [ $side = new ] && packages+=(-p payments-server)
  (cd "${SRC[$side]}" && export CARGO_TARGET_DIR=${TARGET[$side]} &&
    cargo build --release --quiet "${packages[@]}" &&
    cargo build --quiet -p tollgate-filter --target wasm32-wasip1 --profile wasm-release)
done
ensure_tools

for p in "${CP_PORT[new]}" "${CP_PORT[base]}" $JSON_PORT $SSE_PORT; do
  port_free "$p" || die "port $p is in use (set TOLLGATE_BENCH_PORT_BASE)"
done
for e in "${ENVOYS[@]}"; do
  read -r _ l a _ _ <<<"$e"
  for p in "$l" "$a"; do port_free "$p" || die "port $p is in use (set TOLLGATE_BENCH_PORT_BASE)"; done
done
rm -rf "$STATE"
mkdir -p "$STATE/logs" "$STATE/results" "$STATE/home-new" "$STATE/home-base"

# One dev issuer for both sides (and plain Envoy), so one token is valid everywhere.
"${TOLLGATE_BIN[new]}" --home "$STATE/home-new" dev token --sub bench@example.com --ttl 2h | tail -1 >"$STATE/token"
TOKEN=$(cat "$STATE/token")
cp -r "$STATE/home-new/dev" "$STATE/home-base/dev"
for side in new base; do
  "${TOLLGATE_BIN[$side]}" --home "$STATE/home-$side" serve --listen "127.0.0.1:${CP_PORT[$side]}" \
    >"$STATE/logs/control-plane-$side.log" 2>&1 &
  pids+=($!)
  CP_PID[$side]=$!
  wait_for_line "$STATE/logs/control-plane-$side.log" "listening on" $!
done
"$PAYMENTS" --listen "127.0.0.1:$JSON_PORT" --stateless --json-response >"$STATE/logs/payments-json.log" 2>&1 &
pids+=($!)
wait_for_line "$STATE/logs/payments-json.log" "listening on" $!
"$PAYMENTS" --listen "127.0.0.1:$SSE_PORT" --stateless >"$STATE/logs/payments-sse.log" 2>&1 &
pids+=($!)
wait_for_line "$STATE/logs/payments-sse.log" "listening on" $!
python3 "$HERE/configs.py" envoy/policy/payments.json "$STATE" "$SSE_COUNT"

for e in "${ENVOYS[@]}"; do
  read -r name listen admin upstream side <<<"$e"
  args=(--plain) src=${SRC[new]} control_plane=${CP_PORT[new]} home=$STATE/home-new
  if [ "$side" != plain ]; then
    args=(--wasm "${FILTER[$side]}" --config "@$STATE/config-main.json")
    src=${SRC[$side]} control_plane=${CP_PORT[$side]} home=$STATE/home-$side
  fi
  # Revisions since the control plane serves mutual TLS name the transport of its cluster.
  if grep -q -- --control-plane-tls "$src/envoy/render.py"; then
    args+=(--control-plane-tls "$home/tls")
  fi
  # Each side's own bootstrap (routes, path normalisation, buffering are part of what it costs).
  python3 "$src/envoy/render.py" --out "$STATE/envoy-$name.yaml" --listen-port "$listen" \
    --admin-port "$admin" --upstream "http://127.0.0.1:$upstream/mcp" \
    --control-plane "127.0.0.1:$control_plane" --jwks "$STATE/home-new/dev/jwks.json" "${args[@]}"
  "$ENVOY" -c "$STATE/envoy-$name.yaml" --concurrency "$WORKERS" --log-level warn \
    --disable-hot-restart >"$STATE/logs/envoy-$name.log" 2>&1 &
  pids+=($!)
  LISTEN[$name]=$listen ADMIN[$name]=$admin EPID[$name]=$!
done
for e in "${ENVOYS[@]}"; do read -r name _ <<<"$e"; wait_envoy "$name"; done

# The answer each side gives is the one meant: in clear through plain Envoy, masked through both.
for side in base new; do
  python3 "$HERE/check.py" "1k/$side" "$(url plain-json)" "$(url $side-json)" "$TOKEN" "$STATE/body-1k.json" 1 >&2
  python3 "$HERE/check.py" "64k/$side" "$(url plain-json)" "$(url $side-json)" "$TOKEN" "$STATE/body-64k.json" 50 >&2
  python3 "$HERE/check.py" "sse/$side" "$(url plain-sse)" "$(url $side-sse)" "$TOKEN" "$STATE/body-sse.json" $((2 * SSE_COUNT + 1)) >&2
done

say "measuring: $ROUNDS rounds of ${DURATION}s per side, the order rotating (plain Envoy, $REV_ID, $HEAD_ID)"
LOAD_BEFORE=$(loadavg)
T0=$(date +%s)
for workload in "${WORKLOADS[@]}"; do
  kind=json
  [ $workload = sse ] && kind=sse
  for c in "${CONCURRENCY[@]}"; do
    for side in plain base new; do
      run_wrk "$STATE/results/warmup.json" "$(url $side-$kind)" "body-$workload.json" "$c" "$WARMUP" || true
    done
    order=(plain base new)
    for round in $(seq 1 "$ROUNDS"); do
      for side in "${order[@]}"; do
        out=$STATE/results/$workload-c$c-$side-r$round.json
        # CPU time of this side's Envoy and control plane during the run (plain Envoy has none).
        cp_pid=${CP_PID[$side]:-}
        before="$(cpu_ticks "${EPID[$side-$kind]}") $([ -n "$cp_pid" ] && cpu_ticks "$cp_pid" || echo 0)"
        run_wrk "$out" "$(url $side-$kind)" "body-$workload.json" "$c" "$DURATION" || true
        after="$(cpu_ticks "${EPID[$side-$kind]}") $([ -n "$cp_pid" ] && cpu_ticks "$cp_pid" || echo 0)"
        echo "$before $after" >"$out.cpu"
      done
      order=("${order[@]:1}" "${order[0]}")
    done
    say "  $workload c=$c done"
  done
done
T1=$(date +%s)

python3 - "$STATE" "$ROUNDS" "$REV_ID" "$HEAD_ID" "$DURATION" "$WORKERS" "$LOAD_BEFORE" "$(loadavg)" \
  "$((T1 - T0))" "$CLK_TCK" "${WORKLOADS[*]}" "${CONCURRENCY[*]}" <<'PY' | tee "$STATE/report.md"
import json, os, statistics, sys
state, rounds, rev, head, duration, workers, load0, load1, secs, tck, workloads, conns = sys.argv[1:]
rounds, tck = int(rounds), int(tck)
def load(name):
    try:
        path = os.path.join(state, "results", name + ".json")
        r = json.load(open(path))
        errors = sum(v for k, v in r.items() if k.startswith("err_"))
        if not r.get("requests") or errors:
            return None
        # CPU µs per request: Envoy, control plane.
        ticks = [int(x) for x in open(path + ".cpu").read().split()]
        r["cpu"] = [(ticks[i + 2] - ticks[i]) * 1e6 / tck / r["requests"] for i in (0, 1)]
        return r
    except (OSError, ValueError, IndexError):
        return None
print(f"**Tollgate at {head} against {rev}**, alternating rounds in one run: {rounds} rounds of "
      f"{duration} s per side per cell, Envoy --concurrency {workers}, wrk, 127.0.0.1. "
      f"Load average before {load0}, after {load1}; {secs} s of load.\n")
print(f"| workload | conns | plain Envoy req/s | {rev} req/s | {head} req/s | {rev} / plain | "
      f"{head} / plain | {head} / {rev} (median, range of rounds) | CPU µs/req Envoy, control plane: "
      f"{rev} → {head} |")
print("|---|---:|---:|---:|---:|---:|---:|---|---|")
labels = {"1k": "1 KiB JSON, 1 PAN", "64k": "64 KiB JSON, 50 PANs", "sse": "SSE, 21 events, 21 PANs"}
for workload in workloads.split():
    for c in map(int, conns.split()):
        rows = []
        for r in range(1, rounds + 1):
            sides = [load(f"{workload}-c{c}-{s}-r{r}") for s in ("plain", "base", "new")]
            if all(sides):
                rows.append([s["rps"] for s in sides] + [sides[1]["cpu"], sides[2]["cpu"]])
        if not rows:
            print(f"| {labels[workload]} | {c} | not measured (errors; see target/bench-ab/logs/wrk.log) |||||||")
            continue
        med = [statistics.median(x[i] for x in rows) for i in range(3)]
        ratio = sorted(x[2] / x[1] for x in rows)
        print(f"| {labels[workload]} | {c} | {med[0]:.0f} | {med[1]:.0f} | {med[2]:.0f} | "
              f"{statistics.median(x[1] / x[0] for x in rows):.2f}× | "
              f"{statistics.median(x[2] / x[0] for x in rows):.2f}× | "
              f"**{statistics.median(ratio):.2f}×** ({ratio[0]:.2f}–{ratio[-1]:.2f}, {len(rows)} rounds) | "
              + " → ".join(", ".join(f"{statistics.median(x[i][k] for x in rows):.0f}" for k in (0, 1))
                           for i in (3, 4)) + " |")
PY
