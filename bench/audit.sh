#!/usr/bin/env bash
# The cost of auditing: two release `kinko server --dev` side by side, the same data, policy
# and wrk load (2 threads, 16 connections, TLS, loopback); one with a file audit device, one
# without. KV reads and writes alternate between them, `rounds` times each, so the shared,
# noisy machine affects both alike. Prints a markdown table for bench/RESULTS.md.
# Target (issue 15): at most 15% lower throughput with audit on. BENCH_AUDIT_DIR puts the
# audit file elsewhere (e.g. /dev/shm, to see what the file system's journal costs).
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${BENCH_DURATION:-10s}"
rounds="${BENCH_ROUNDS:-3}"
. bench/lib.sh
need wrk wrk
need curl curl
cargo build --release --locked -p kinko-server --bin kinko >&2

work="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

declare -A addr ca token pid
for side in off on; do
  KINKO_LOG=warn target/release/kinko server --dev --data-dir "$work/$side" --listen 127.0.0.1:0 \
    --dev-root-token bench-root >"$work/$side.out" 2>"$work/$side.err" &
  pid[$side]=$!; pids+=("$!")
  wait_for "$work/$side.out" '^export VAULT_ADDR'
  addr[$side]="$(sed -n 's/^kinko listening on //p' "$work/$side.out")"
  ca[$side]="$work/$side/ca.pem"
  token[$side]="$(prepare "${addr[$side]}" "${ca[$side]}")"
done
api "${ca[on]}" "${addr[on]}/v1/sys/audit/file" -X PUT \
  -d '{"type":"file","options":{"file_path":"'"${BENCH_AUDIT_DIR:-$work}/audit.log"'"}}' >/dev/null

echo "| workload | audit | req/s (median of $rounds) | p99 ms | CPU s / 10k req |"
echo "|---|---|---:|---:|---:|"
for workload in kv-read kv-write; do
  declare -A rps=() p99=() cpu=()
  for _ in $(seq "$rounds"); do
    for side in off on; do
      IFS='|' read -r r _ p c <<<"$(run "$side" "${pid[$side]}" "${addr[$side]}" "${token[$side]}" "$workload")"
      rps[$side]+="${r%% *} "; p99[$side]+="$p "; cpu[$side]+="$c "
    done
  done
  median() { tr ' ' '\n' <<<"$1" | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
  for side in off on; do
    echo "| $workload | $side | $(median "${rps[$side]}") | $(median "${p99[$side]}") | $(median "${cpu[$side]}") |"
  done
  echo "| $workload: audit on / off | | $(python3 -c 'import sys; print(f"{float(sys.argv[2])/float(sys.argv[1]):.2f}x")' "$(median "${rps[off]}")" "$(median "${rps[on]}")") | | |"
done
echo
log="${BENCH_AUDIT_DIR:-$work}/audit.log"
echo "audit log: $(wc -l <"$log") entries, $(du -h "$log" | cut -f1)"
[ -z "${BENCH_AUDIT_DIR:-}" ] || rm -f "$log"
