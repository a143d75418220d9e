#!/usr/bin/env bash
# Instructions per request of the release `kinko server --dev`, counted by valgrind's callgrind:
# stable from run to run on this shared machine, where wall-clock figures are not. One server
# runs under callgrind with instrumentation off; a keep-alive TLS client (Python, outside valgrind)
# warms it up, then instrumentation is switched on, counts zeroed, exactly N requests of a
# workload sent and the counts dumped. KV read and write are measured with no audit device, then again with a file
# device. Kernel time (syscalls, fsync) is not an instruction count: see compare.sh for that.
# BENCH_CALLGRIND_TOP=K also prints the K functions with the highest own count per workload.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
need valgrind valgrind
need curl curl
requests="${BENCH_REQUESTS:-2000}"
top="${BENCH_CALLGRIND_TOP:-0}"
cargo build --release --locked -p kinko-server --bin kinko >&2

work="$(mktemp -d)"; echo "work: $work" >&2
server=""
cleanup() { [ -z "$server" ] || kill "$server" 2>/dev/null || true; [ -n "${BENCH_KEEP:-}" ] || rm -rf "$work"; }
trap cleanup EXIT

KINKO_LOG=warn valgrind --tool=callgrind --instr-atstart=no \
  --callgrind-out-file="$work/callgrind.out" target/release/kinko server --dev \
  --data-dir "$work/kinko" --listen 127.0.0.1:0 --dev-root-token bench-root \
  >"$work/out" 2>"$work/err" &
server=$!
for _ in $(seq 1200); do grep -q '^export VAULT_ADDR' "$work/out" 2>/dev/null && break; sleep 0.1; done
grep -q '^export VAULT_ADDR' "$work/out" || { echo "kinko did not start under valgrind" >&2; cat "$work/err" >&2; exit 1; }
addr="$(sed -n 's/^kinko listening on //p' "$work/out")"
ca="$work/kinko/ca.pem"
token="$(prepare "$addr" "$ca")"

# requests workload count: N requests on one keep-alive connection; fails on any non-2xx.
client() {
  python3 - "$addr" "$ca" "$token" "$1" "$2" <<'PY'
import http.client, json, ssl, sys, urllib.parse
addr, ca, token, workload, n = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
url = urllib.parse.urlsplit(addr)
conn = http.client.HTTPSConnection(url.hostname, url.port, context=ssl.create_default_context(cafile=ca))
for i in range(n):
    if workload == "kv-read":
        conn.request("GET", "/v1/secret/data/bench/app", headers={"X-Vault-Token": token})
    else:
        body = json.dumps({"data": {"password": f"value-{i}", "user": "app"}})
        conn.request("POST", f"/v1/secret/data/bench/write-{i % 64}", body=body,
                     headers={"X-Vault-Token": token, "Content-Type": "application/json"})
    response = conn.getresponse()
    response.read()
    if response.status // 100 != 2:
        sys.exit(f"{workload}: HTTP {response.status}")
PY
}

dumps=0
measure() { # workload label -> prints instructions per request
  client "$1" 200
  callgrind_control --instr=on "$server" >/dev/null
  client "$1" 20
  callgrind_control --zero "$server" >/dev/null
  client "$1" "$requests"
  callgrind_control --dump="$1 $2" "$server" >/dev/null
  callgrind_control --instr=off "$server" >/dev/null
  dumps=$((dumps + 1))
  local file=""
  for _ in $(seq 300); do
    file="$work/callgrind.out.$dumps"
    grep -q '^totals:' "$file" 2>/dev/null && break
    sleep 0.1
  done
  local total
  total="$(sed -n 's/^totals: *\([0-9]*\).*/\1/p' "$file")"
  echo "| $1 | $2 | $((total / requests)) |"
  if [ "$top" -gt 0 ]; then
    callgrind_annotate --inclusive=no "$file" 2>/dev/null | grep -E '^ *[0-9,]+ ' |
      awk -v n="$requests" -v k="$top" 'NR <= k {gsub(",", "", $1); $1 = int($1 / n); print "    " $0}' >&2
  fi
}

echo "| workload | audit | instructions / request |"
echo "|---|---|---:|"
measure kv-read off
measure kv-write off
api "$ca" "$addr/v1/sys/audit/file" -X PUT \
  -d '{"type":"file","options":{"file_path":"'"$work"'/audit.log"}}' >/dev/null
measure kv-read on
measure kv-write on
echo
echo "callgrind, $requests requests per row on one keep-alive TLS connection, after 200 to warm up"
