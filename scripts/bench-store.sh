#!/usr/bin/env bash
# Durable audit appends per second through the control plane's gRPC API, by store: sled (one
# process) vs PostgreSQL with one and with three `tollgate serve` replicas on one database (a
# throwaway local cluster, fsync on). Prints a markdown table.
#
#   scripts/bench-store.sh                      # 16 and 64 writers, 5 s per row
#   BENCH_SECONDS=10 BENCH_WRITERS=16,64,256 scripts/bench-store.sh
#
# Needs PostgreSQL's server binaries (`make pg-deps`). Builds in release mode.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --release -p tollgate-control-plane --test store_throughput \
    -- --ignored --nocapture --test-threads=1 2>/dev/null \
    | grep '^|'
echo
echo "machine: $(nproc) cores, $(uname -sr); client, replicas and PostgreSQL share it."
