#!/usr/bin/env bash
# The offline verifier on a large log (issue #17): records/s and peak memory of `tollgate-verify`,
# and of `tollgate audit verify --bundle`, on bundles exported from a real log of a million
# gateway records.
#
# A release `tollgate serve` on sled, on a free loopback port, takes the records through gRPC
# `Append` as the gateway sends them (mutual TLS with the dev gateway certificate, many concurrent
# writers): the records of the filter's `mcp.request` and `mcp.response` (identity fields, masked
# card numbers), from the ignored test control-plane/tests/audit_load.rs run from its release
# build. Half way, `tollgate keys rotate --server` rotates the checkpoint key. Then
# `tollgate audit export --server` writes the whole log as one bundle, and one caller's records
# (`--sub`, about 1 in 1000: the rest of the log as skipped subtrees) as another. Each bundle is
# verified offline under /usr/bin/time with the log's pinned keys (<home>/keys/checkpoint.vkeys);
# the run fails unless every verdict is intact (exit 0). Then retention (issue #19): the whole log
# is archived (`tollgate audit archive` on the store, segments of 262,144 records), and the live
# log is verified across the cut, without and with reading the segments. Prints markdown tables.
#
#   scripts/bench-verify.sh
#   TOLLGATE_BENCH_VERIFY_RECORDS=100000 TOLLGATE_BENCH_KEEP=1 scripts/bench-verify.sh
#
# Environment (all optional):
#   TOLLGATE_BENCH_VERIFY_RECORDS  gateway records appended (default 1000000)
#   TOLLGATE_BENCH_VERIFY_WRITERS  concurrent writers, over 8 connections (default 256: on 2 cores
#                                  the fastest of 32 to 1024)
#   TOLLGATE_BENCH_VERIFY_SUB      the caller of the selective bundle (default user0042@example.com)
#   TOLLGATE_BENCH_KEEP=1          keep the store and the whole-log bundle (gigabytes)
# Run state, logs and report.md stay in target/bench/verify/ (cleared at start). Everything it
# starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

RECORDS=${TOLLGATE_BENCH_VERIFY_RECORDS:-1000000}
WRITERS=${TOLLGATE_BENCH_VERIFY_WRITERS:-256}
SUB=${TOLLGATE_BENCH_VERIFY_SUB:-user0042@example.com}
KEEP=${TOLLGATE_BENCH_KEEP:-}
STATE=$ROOT/target/bench/verify
HOME_DIR=$STATE/home
TOLLGATE=$ROOT/target/release/tollgate
VERIFY=$ROOT/target/release/tollgate-verify

say() { printf 'bench-verify: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }
now() { echo "$EPOCHREALTIME"; }
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f", b - a }'; }

[ -x /usr/bin/time ] || die "/usr/bin/time is needed (Debian package: time)"
[[ $RECORDS =~ ^[0-9]+$ ]] && [ "$RECORDS" -ge 2 ] || die "TOLLGATE_BENCH_VERIFY_RECORDS must be a number of at least 2"

pids=()
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq 1 100); do
    local alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ $alive -eq 0 ] && break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -z "$KEEP" ]; then
    rm -rf "$HOME_DIR/audit.sled" "$STATE/full.bundle.json" "$STATE/archive"
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

T_START=$(now)
rm -rf "$STATE"
mkdir -p "$STATE/logs" "$STATE/results" "$HOME_DIR"

# The load driver first: a test build unifies dev-dependency features, so `tollgate` is built
# last, as a plain release build, and the driver runs from its own binary (no cargo in between).
say "building the load driver (cargo test --release --no-run --test audit_load)"
DRIVER=$(cargo test --release -p tollgate-control-plane --test audit_load --no-run \
           --message-format=json 2>"$STATE/logs/build.log" \
         | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "audit_load" and m.get("executable"):
        print(m["executable"])')
[ -x "$DRIVER" ] || die "no load driver built: $(tail -5 "$STATE/logs/build.log")"
say "building release tollgate and tollgate-verify"
cargo build --release --quiet -p tollgate-control-plane -p tollgate-log


"$TOLLGATE" --home "$HOME_DIR" serve --listen 127.0.0.1:0 >"$STATE/logs/serve.log" 2>&1 &
SERVER_PID=$!
pids+=("$SERVER_PID")
ADDRESS=
for _ in $(seq 1 600); do
  ADDRESS=$(sed -n 's/^tollgate control plane listening on //p' "$STATE/logs/serve.log" | head -1)
  [ -n "$ADDRESS" ] && break
  kill -0 "$SERVER_PID" 2>/dev/null || die "tollgate serve exited: $(tail -5 "$STATE/logs/serve.log")"
  sleep 0.1
done
[ -n "$ADDRESS" ] || die "tollgate serve did not get ready: $(tail -5 "$STATE/logs/serve.log")"
URL=https://$ADDRESS
# Export and rotate as an operator who may do both (auditor and security admin).
TOKEN=$("$TOLLGATE" --home "$HOME_DIR" dev token --sub bench-auditor@example.com \
  --groups auditors,security-admins --aud tollgate-operators --ttl 4h | tail -1)
operator() { TOLLGATE_TOKEN=$TOKEN "$TOLLGATE" --home "$HOME_DIR" "$@"; }
say "control plane at $URL (sled, $HOME_DIR)"

load() { # FROM TO
  TOLLGATE_LOAD_SERVER=$URL TOLLGATE_LOAD_HOME=$HOME_DIR TOLLGATE_LOAD_FROM=$1 TOLLGATE_LOAD_TO=$2 \
    TOLLGATE_LOAD_WRITERS=$WRITERS TOLLGATE_LOAD_CONNECTIONS=8 \
    "$DRIVER" --ignored --exact append_gateway_records --nocapture \
    >>"$STATE/logs/load.log" 2>&1 &
  local pid=$!
  pids+=("$pid")
  wait "$pid" || die "the load driver failed: $(tail -5 "$STATE/logs/load.log")"
  grep '^load: appended' "$STATE/logs/load.log" | tail -1 | sed 's/^load: /  /' >&2
}

HALF=$((RECORDS / 2))
say "appending $RECORDS gateway records through gRPC Append, $WRITERS writers; key rotation after $HALF"
T_LOAD=$(now)
load 0 "$HALF"
operator keys rotate --server "$URL" >"$STATE/logs/rotate.log" 2>&1 \
  || die "keys rotate failed: $(cat "$STATE/logs/rotate.log")"
load "$HALF" "$RECORDS"
LOAD_SECONDS=$(since "$T_LOAD")
say "load: $LOAD_SECONDS s"

T_EXPORT=$(now)
operator audit export --server "$URL" --out "$STATE/full.bundle.json" 2>"$STATE/logs/export-full.log" \
  || die "export failed: $(cat "$STATE/logs/export-full.log")"
EXPORT_FULL_SECONDS=$(since "$T_EXPORT")
T_EXPORT=$(now)
operator audit export --server "$URL" --sub "$SUB" --out "$STATE/sub.bundle.json" 2>"$STATE/logs/export-sub.log" \
  || die "export --sub failed: $(cat "$STATE/logs/export-sub.log")"
EXPORT_SUB_SECONDS=$(since "$T_EXPORT")
say "exported: whole log in $EXPORT_FULL_SECONDS s, --sub $SUB in $EXPORT_SUB_SECONDS s"
STORE_BYTES=$(du -sb "$HOME_DIR/audit.sled" | cut -f1)

# Verification is offline: the control plane is stopped so that it takes no CPU meanwhile.
kill -TERM "$SERVER_PID"
wait "$SERVER_PID" || true

KEYS=$HOME_DIR/keys/checkpoint.vkeys
# measure NAME COMMAND...: wall time, peak RSS and CPU of one verification, and its verdict.
measure() {
  local name=$1 rc=0 started
  shift
  started=$(now)
  /usr/bin/time -f '%M %U %S' -o "$STATE/results/$name.time" "$@" \
    >"$STATE/results/$name.json" 2>"$STATE/results/$name.err" || rc=$?
  since "$started" >"$STATE/results/$name.seconds"
  echo "$rc" >"$STATE/results/$name.rc"
}
LOAD_AVERAGE=$(cut -d' ' -f1-3 /proc/loadavg)
say "verifying (warm page cache: each bundle was just written)"
for bundle in full sub; do
  measure "$bundle-tollgate-verify" "$VERIFY" "$STATE/$bundle.bundle.json" --key "$KEYS" --json
  measure "$bundle-audit-verify" "$TOLLGATE" --home "$HOME_DIR" audit verify \
    --bundle "$STATE/$bundle.bundle.json" --key "$KEYS" --json
done

# Retention: archive everything written so far, straight on the stopped control plane's store.
ARCHIVE_DIR=$STATE/archive
say "archiving the whole log into $ARCHIVE_DIR"
T_ARCHIVE=$(now)
"$TOLLGATE" --home "$HOME_DIR" audit archive --direct --dir "$ARCHIVE_DIR" \
  --before "$(date -u +%Y-%m-%dT%H:%M:%S.%6NZ)" --segment-records 262144 --json \
  >"$STATE/results/archive.json" 2>"$STATE/logs/archive.log" \
  || die "archive failed: $(tail -5 "$STATE/logs/archive.log")"
ARCHIVE_SECONDS=$(since "$T_ARCHIVE")
STORE_AFTER_BYTES=$(du -sb "$HOME_DIR/audit.sled" | cut -f1)
measure live-verify "$TOLLGATE" --home "$HOME_DIR" audit verify --direct --json
measure archive-verify "$TOLLGATE" --home "$HOME_DIR" audit verify --direct \
  --archive "$ARCHIVE_DIR" --json

SOURCE=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
  SOURCE+=" + uncommitted changes"
fi
python3 - "$STATE" "$SUB" <<PY | tee "$STATE/report.md"
import json, os, sys
state, sub = sys.argv[1], sys.argv[2]
rows, failed = [], []
for bundle, label in (("full", "whole log"), ("sub", f"--sub {sub}")):
    size = os.path.getsize(f"{state}/{bundle}.bundle.json")
    for tool, command in (("tollgate-verify", "tollgate-verify"), ("audit-verify", "tollgate audit verify --bundle")):
        name = f"{state}/results/{bundle}-{tool}"
        rc = int(open(f"{name}.rc").read())
        seconds = float(open(f"{name}.seconds").read())
        rss_kb, user, system = open(f"{name}.time").read().split()[-3:]
        try:
            report = json.load(open(f"{name}.json"))
        except ValueError:
            report = {}
        if rc != 0 or report.get("status") != "intact":
            failed.append(f"{command} {bundle}: exit {rc}, {report.get('status')}: "
                          + (report.get("problem") or open(f"{name}.err").read().strip()))
        records = report.get("records", 0)
        leaves = report.get("latestCheckpoint", {}).get("size", 0)
        rows.append(f"| {label} | \`{command}\` | {records:,} | {leaves:,} | {size / 2**20:.1f} | "
                    f"{seconds:.2f} | {records / max(seconds, 1e-3):,.0f} | {leaves / max(seconds, 1e-3):,.0f} | "
                    f"{int(rss_kb) / 1024:.1f} | {float(user) + float(system):.2f} | {rc} {report.get('status', '?')} |")
print("| bundle | verifier | records in it | leaves (log size) | bundle MiB | seconds | records/s | leaves/s | peak RSS MiB | CPU s | exit, status |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
print("\n".join(rows))
print()
print(f"log: {$RECORDS:,} gateway records appended through gRPC Append by $WRITERS writers in $LOAD_SECONDS s "
      f"({$RECORDS / $LOAD_SECONDS:,.0f}/s), a key rotation half way; sled store {$STORE_BYTES / 2**20:,.0f} MiB; "
      f"export: whole log $EXPORT_FULL_SECONDS s, --sub $EXPORT_SUB_SECONDS s")
print(f"machine: $(nproc) cores, $(uname -sr), load average $LOAD_AVERAGE before verifying; source: $SOURCE; "
      "seconds are wall time with process start, "
      "page cache warm; records/s counts the records held whole, leaves/s every leaf the bundle covers")
outcome = json.load(open(f"{state}/results/archive.json"))
archived = outcome["toSeq"] - outcome["fromSeq"]
segment_bytes = sum(s["bytes"] for s in outcome["segments"])
print()
print("| retention | records | seconds | records/s | bytes per record | note |")
print("|---|---:|---:|---:|---:|---|")
print(f"| \`audit archive\` (seal, verify each segment, prune) | {archived:,} | $ARCHIVE_SECONDS | "
      f"{archived / max($ARCHIVE_SECONDS, 1e-3):,.0f} | {segment_bytes / max(archived, 1):.0f} in segments | "
      f"{len(outcome['segments'])} segments; {outcome['pruned']:,} pruned, {outcome['kept']:,} kept below the cut |")
for name, label in (("live-verify", "\`audit verify\` across the cut"), ("archive-verify", "\`audit verify --archive\`")):
    rc = int(open(f"{state}/results/{name}.rc").read())
    seconds = float(open(f"{state}/results/{name}.seconds").read())
    try:
        report = json.load(open(f"{state}/results/{name}.json"))
    except ValueError:
        report = {}
    if rc != 0 or report.get("status") != "intact":
        failed.append(f"{label}: exit {rc}, {report.get('status')}: " + (report.get("problem") or open(f"{state}/results/{name}.err").read().strip()))
    records = report.get("records", 0)
    print(f"| {label} | {records:,} | {seconds:.2f} | {records / max(seconds, 1e-3):,.0f} | | exit {rc}, {report.get('status', '?')} |")
print()
print(f"hot store (sled, \`du\`): {$STORE_BYTES / max($RECORDS, 1):.0f} bytes per record before archiving, "
      f"{$STORE_AFTER_BYTES / 2**20:,.0f} MiB right after pruning (sled reclaims freed pages as it rewrites segments)")
if failed:
    print()
    print("\n".join("FAILED: " + f for f in failed))
    sys.exit(1)
PY
say "whole run: $(since "$T_START") s (load $LOAD_SECONDS s)"
