#!/usr/bin/env bash
# `make bench`, masking part: the engine's precision and recall on the labelled corpus
# (tests/corpus/, realistic MCP tool results) and its native throughput in MB/s, both from release
# builds in this run. The in-Envoy cost of masking (64 KiB JSON with 50 cards, filter on vs off)
# is in the table of scripts/bench.sh. Output also goes to target/bench-mask.md (outside
# target/bench/, which scripts/bench.sh starts afresh).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=target/bench-mask.md
mkdir -p target

say() { printf '%s\n' "$*" >&2; }

say "bench: masking corpus (precision/recall) and native throughput (release builds)"
corpus=$(cargo test -q -p tollgate-engine --release --test mask_corpus -- --nocapture 2>/dev/null \
  | sed -n '/^file /,/^TOTAL/p')
[ -n "$corpus" ] || { say "bench: the corpus report did not run"; exit 1; }
speed=$(MASK_BENCH_SECS=${MASK_BENCH_SECS:-1} cargo bench -q -p tollgate-engine --bench mask 2>/dev/null \
  | sed -n '/^case /,$p')
[ -n "$speed" ] || { say "bench: the throughput bench did not run"; exit 1; }

{
  echo "## Masking engine, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo
  echo "- machine: $(nproc) CPUs, load average before $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "- source: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' + uncommitted changes')"
  echo
  echo "Labelled corpus (\`cargo test -p tollgate-engine --release --test mask_corpus -- --nocapture\`):"
  echo "cards = labelled card numbers, TP/FN = masked/missed, FP = masked text that is not a card,"
  echo "negatives = labelled look-alikes left byte for byte."
  echo
  echo '```'
  echo "$corpus"
  echo '```'
  echo
  echo "Native throughput, best of 5 rounds (\`cargo bench -p tollgate-engine --bench mask\`):"
  echo
  echo '```'
  echo "$speed"
  echo '```'
} | tee "$OUT"
