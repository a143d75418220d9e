#!/usr/bin/env bash
# Two kinko builds side by side (before/after a change): each `kinko server --dev` gets the
# prepared data and a policy-limited token (bench/lib.sh), then alternating wrk runs of the
# same workload (bench/wrk/<workload>.lua), DUR each (default 8s), `rounds` times.
# AUDIT=1 enables a file audit device on both. Prints "A|B rps|p50 ms|p99 ms|CPU s per 10k".
# usage: bench/ab.sh /abs/path/binA /abs/path/binB [workload] [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${DUR:-8s}"
. bench/lib.sh
A="$1"; B="$2"; wl="${3:-kv-read}"; rounds="${4:-3}"
work="$(mktemp -d)"
pids=()
trap 'kill ${pids[@]} 2>/dev/null; rm -rf $work' EXIT
start() { # name bin
  KINKO_LOG=warn $2 server --dev --data-dir "$work/$1" --listen 127.0.0.1:0 --dev-root-token bench-root >"$work/$1.out" 2>"$work/$1.err" &
  pids+=($!); eval "pid_$1=$!"
  wait_for "$work/$1.out" '^export VAULT_ADDR'
  eval "addr_$1=$(sed -n 's/^kinko listening on //p' "$work/$1.out")"
  local a; eval "a=\$addr_$1"
  eval "token_$1=$(prepare "$a" "$work/$1/ca.pem")"
  if [ -n "${AUDIT:-}" ]; then api "$work/$1/ca.pem" "$a/v1/sys/audit/file" -X PUT -d '{"type":"file","options":{"file_path":"'"$work/$1.audit"'"}}' >/dev/null; fi
}
start a "$A"; start b "$B"
duration=2s run w $pid_a $addr_a $token_a $wl >/dev/null
duration=2s run w $pid_b $addr_b $token_b $wl >/dev/null
for i in $(seq $rounds); do
  echo "A $(run x $pid_a $addr_a $token_a $wl)"
  echo "B $(run x $pid_b $addr_b $token_b $wl)"
done
