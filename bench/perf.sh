#!/usr/bin/env bash
# Where a request's CPU goes, natively: one release `kinko server --dev` (the compare.sh data
# and policy-limited token), `perf record` (cpu-clock, the only event on a VM without PMU
# access) while wrk drives one workload over TLS, then the top symbols by self time.
# Usage: bench/perf.sh [kv-read|kv-write|token-create]; BENCH_AUDIT=1 enables a file audit
# device first; BENCH_PERF_TOP (default 40) lines of the report. Needs root or
# kernel.perf_event_paranoid <= 1. Complements bench/callgrind.sh, whose counts are stable but
# run SHA-256 in software and leave out the kernel.
set -euo pipefail
cd "$(dirname "$0")/.."
workload="${1:-kv-read}"
duration="${BENCH_DURATION:-10s}"
. bench/lib.sh
need wrk wrk
need curl curl
need perf linux-perf
[ -f "bench/wrk/$workload.lua" ] || { echo "no workload bench/wrk/$workload.lua" >&2; exit 2; }
cargo build --release --locked -p kinko-server --bin kinko >&2

work="$(mktemp -d)"
server=""
cleanup() { [ -z "$server" ] || kill "$server" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

KINKO_LOG=warn target/release/kinko server --dev --data-dir "$work/data" --listen 127.0.0.1:0 \
  --dev-root-token bench-root >"$work/server.out" 2>"$work/server.err" &
server=$!
wait_for "$work/server.out" '^export VAULT_ADDR'
addr="$(sed -n 's/^kinko listening on //p' "$work/server.out")"
ca="$work/data/ca.pem"
token="$(prepare "$addr" "$ca")"
if [ -n "${BENCH_AUDIT:-}" ]; then
  api "$ca" "$addr/v1/sys/audit/file" -X PUT \
    -d '{"type":"file","options":{"file_path":"'"$work"'/audit.log"}}' >/dev/null
fi

# Warm up (connections, caches, the audit file's first reservation), then record one run.
duration=2s run warmup "$server" "$addr" "$token" "$workload" >/dev/null
perf record -q -F 1999 -e cpu-clock -o "$work/perf.data" -p "$server" 2>"$work/perf.err" &
recorder=$!
result="$(run "$workload" "$server" "$addr" "$token" "$workload")"
kill -INT "$recorder"
wait "$recorder" || true
IFS='|' read -r rps p50 p99 cpu <<<"$result"
echo "$workload (audit $([ -n "${BENCH_AUDIT:-}" ] && echo on || echo off)): $rps req/s, p50 $p50 ms, p99 $p99 ms, $cpu CPU s / 10k req (under perf)"
perf report -i "$work/perf.data" --no-children --sort dso,symbol --stdio 2>/dev/null \
  | grep '%' | grep -v '^#' | sed 's/[[:space:]-]*$//' | head -n "${BENCH_PERF_TOP:-40}"
