# Shared by the benchmark scripts (bench.sh, bench-ab.sh): process bookkeeping, readiness waits
# and the wrk runner. Expects STATE (results and logs) and HERE (this directory) to be set.
# shellcheck shell=bash

say() { printf '%s\n' "$*" >&2; }
die() { say "bench: $*"; exit 1; }

# ---- tools ---------------------------------------------------------------------------------------
ensure_tools() {
  local missing=()
  command -v wrk >/dev/null || missing+=(wrk)
  command -v curl >/dev/null || missing+=(curl)
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]} (Debian packages)"
    local sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  command -v python3 >/dev/null || die "python3 is needed"
  [ -x "$ENVOY" ] || die "no Envoy at $ENVOY (run \`make bench\`, which installs it)"
  [ -f "$WASM" ] || die "no filter at $WASM (run \`make bench\`, which builds it)"
}

# ---- processes -----------------------------------------------------------------------------------
pids=()
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq 1 50); do
    local alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ $alive -eq 0 ] && break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

wait_for_line() { # FILE PATTERN PID
  for _ in $(seq 1 300); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    kill -0 "$3" 2>/dev/null || die "$(basename "$1" .log) exited: $(tail -5 "$1")"
    sleep 0.1
  done
  die "timed out waiting for $1"
}

# Nobody listens on the port (connections in TIME_WAIT from an earlier run do not count: the
# servers and Envoy bind with SO_REUSEADDR too).
port_free() {
  python3 -c 'import socket,sys; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1", int(sys.argv[1])))' "$1" 2>/dev/null
}

declare -A LISTEN ADMIN EPID
wait_envoy() { # NAME
  local name=$1
  for _ in $(seq 1 600); do
    [ "$(curl -s -m 1 "http://127.0.0.1:${ADMIN[$name]}/ready" 2>/dev/null)" = LIVE ] && return 0
    kill -0 "${EPID[$name]}" 2>/dev/null || die "envoy $name exited: $(tail -5 "$STATE/logs/envoy-$name.log")"
    sleep 0.1
  done
  die "envoy $name not ready: $(tail -5 "$STATE/logs/envoy-$name.log")"
}
url() { echo "http://127.0.0.1:${LISTEN[$1]}/mcp"; }

# ---- load ----------------------------------------------------------------------------------------
# run_wrk OUT_JSON URL BODY CONNECTIONS SECONDS
run_wrk() {
  local out=$1 target=$2 body=$3 conns=$4 secs=$5 threads=2
  [ "$conns" -lt 2 ] && threads=1
  BENCH_BODY_FILE=$STATE/$body BENCH_TOKEN=$TOKEN BENCH_OUT=$out BENCH_SESSIONS=${BENCH_SESSIONS:-} \
    wrk -t "$threads" -c "$conns" -d "${secs}s" --timeout 10s -s "$HERE/post.lua" "$target" \
    >>"$STATE/logs/wrk.log" 2>&1
}

# cpu_ticks PID: user + system CPU time of a process so far, in clock ticks.
cpu_ticks() {
  local line rest
  read -r line <"/proc/$1/stat" || { echo 0; return; }
  rest=${line##*) }
  # shellcheck disable=SC2086
  set -- $rest
  echo $(( ${12} + ${13} ))
}
CLK_TCK=$(getconf CLK_TCK)

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

