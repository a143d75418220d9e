#!/usr/bin/env bash
# How kinko's costs grow with its data (issue 17): one release `kinko server --dev` filled
# through the API with BENCH_SECRETS secrets (default 1,000,000, folders of 10,000),
# BENCH_POLICIES policies (10,000) and BENCH_TOKENS live tokens (100,000), next to one holding
# 1,000 secrets, in the same run. Both get the same wrk load (2 threads, 16 connections, TLS,
# random keys, a policy-limited token); then, on the big one: LIST of a 10,000-key folder,
# start-up time from exec to the first answered read, and RSS idle and under load. Prints
# markdown for bench/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${BENCH_DURATION:-10s}"
secrets="${BENCH_SECRETS:-1000000}"
policies="${BENCH_POLICIES:-10000}"
tokens="${BENCH_TOKENS:-100000}"
small=1000
. bench/lib.sh
need wrk wrk
need curl curl
cargo build --release --locked -p kinko-server --bin kinko >&2

work="$(mktemp -d)"
declare -A pid addr ca token
cleanup() { for p in "${pid[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

start() { # side
  : >"$work/$1.out"
  KINKO_LOG=warn target/release/kinko server --dev --data-dir "$work/$1" --listen "${addr[$1]:-127.0.0.1:0}" \
    --dev-root-token bench-root >>"$work/$1.out" 2>>"$work/$1.err" &
  pid[$1]=$!
}
root_wrk() { # side fill count: fills with the root token; stops wrk once both threads are done
  rm -rf "$work/done"; mkdir "$work/done"
  BENCH_TOKEN=bench-root BENCH_FILL="$2" BENCH_COUNT="$3" BENCH_THREADS=2 BENCH_DONE_DIR="$work/done" \
    wrk -t2 -c16 -d4h -s bench/wrk/scale-fill.lua "${addr[$1]}" >"$work/fill.txt" 2>"$work/fill.err" &
  local wrk_pid=$!
  until [ "$(ls "$work/done" | wc -l)" -eq 2 ]; do
    kill -0 "$wrk_pid" 2>/dev/null || { echo "wrk stopped before filling $2" >&2; exit 1; }
    sleep 0.5
  done
  sleep 1; kill -INT "$wrk_pid"; wait "$wrk_pid" || true
  if [ -s "$work/fill.err" ]; then echo "filling $2 failed:" >&2; head -5 "$work/fill.err" >&2; exit 1; fi
}
# Lists every folder and writes the secrets it lacks; prints how many were missing.
complete_secrets() { # side count
  python3 - "${addr[$1]}" "${ca[$1]}" "$2" <<'PY'
import http.client, json, ssl, sys, urllib.parse
addr, ca, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
url = urllib.parse.urlsplit(addr)
conn = http.client.HTTPSConnection(url.hostname, url.port, context=ssl.create_default_context(cafile=ca))
def call(method, path, body=None):
    conn.request(method, path, body=body, headers={"X-Vault-Token": "bench-root"})
    response = conn.getresponse()
    data = response.read()
    return response.status, data
missing = 0
for folder in range((count + 9999) // 10000):
    status, data = call("LIST", f"/v1/secret/metadata/scale/f{folder}/")
    listed = set(json.loads(data)["data"]["keys"]) if status == 200 else set()
    for n in range(folder * 10000, min(count, folder * 10000 + 10000)):
        if f"k{n % 10000}" not in listed:
            missing += 1
            status, _ = call("POST", f"/v1/secret/data/scale/f{folder}/k{n % 10000}",
                             json.dumps({"data": {"password": f"value-{n}", "user": "app"}}))
            assert status == 200, status
print(missing)
PY
}

for side in small big; do
  start "$side"
  wait_for "$work/$side.out" '^export VAULT_ADDR'
  addr[$side]="$(sed -n 's/^kinko listening on //p' "$work/$side.out")"
  ca[$side]="$work/$side/ca.pem"
  api "${ca[$side]}" "${addr[$side]}/v1/sys/policies/acl/scale" -X PUT \
    -d '{"policy":"path \"secret/data/scale/*\" { capabilities = [\"create\", \"read\", \"update\"] }"}' >/dev/null
  api "${ca[$side]}" "${addr[$side]}/v1/secret/config" -X POST -d '{"max_versions":5}' >/dev/null
  token[$side]="$(api "${ca[$side]}" "${addr[$side]}/v1/auth/token/create" -X POST \
    -d '{"policies":["scale"],"ttl":"24h"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["auth"]["client_token"])')"
done

count() { [ "$1" = big ] && echo "$secrets" || echo "$small"; }
fill_started=$(date +%s)
root_wrk small secrets "$small"; complete_secrets small "$small" >/dev/null
root_wrk big secrets "$secrets"; refilled="$(complete_secrets big "$secrets")"
root_wrk big policies "$policies"
root_wrk big tokens "$tokens"
fill_seconds=$(($(date +%s) - fill_started))
db_mb="$(du -sm "$work/big" | cut -f1)"
files="$(cd "$work/big" && du -m -- *.db* 2>/dev/null | awk '{printf "%s%s %s MB", sep, $2, $1; sep=", "}')"

echo "Filled in ${fill_seconds} s through the API: $secrets secrets ($refilled written again after wrk), $policies policies, $tokens tokens; data directory ${db_mb} MB ($files)."
echo
echo "| workload | data | req/s | p50 ms | p99 ms | CPU µs / req |"
echo "|---|---|---:|---:|---:|---:|"
declare -A rps
for op in read write; do
  for side in small big; do
    before="$(cpu_seconds "${pid[$side]}")"
    out="$(BENCH_TOKEN="${token[$side]}" BENCH_OP="$op" BENCH_COUNT="$(count "$side")" \
      wrk -t2 -c16 -d"$duration" --latency -s bench/wrk/scale-kv.lua "${addr[$side]}")"
    after="$(cpu_seconds "${pid[$side]}")"
    row="$(python3 - "$out" "$before" "$after" <<'PY'
import re, sys
out, before, after = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
def ms(label):
    m = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\b", out, re.M)
    return float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)]
requests = int(re.search(r"(\d+) requests in", out).group(1))
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
bad = f" ({errors.group(1)} non-2xx)" if errors else ""
print(f"{rps:.0f}{bad}|{ms('50%'):.2f}|{ms('99%'):.2f}|{(after - before) / requests * 1e6:.0f}")
PY
)"
    IFS='|' read -r r p50 p99 cpu <<<"$row"
    rps[$op-$side]="${r%% *}"
    label="$([ "$side" = big ] && echo "$secrets secrets" || echo "$small secrets")"
    echo "| kv-$op (random keys) | $label | $r | $p50 | $p99 | $cpu |"
  done
done
for op in read write; do
  echo "| kv-$op: big / small | | $(python3 -c 'import sys; print(f"{float(sys.argv[1])/float(sys.argv[2]):.2f}x")' "${rps[$op-big]}" "${rps[$op-small]}") | | | |"
done
rss_load="$(rss_mb "${pid[big]}" VmHWM)"

# LIST of the first folder (10,000 keys when full), 20 times.
folder_keys=$((secrets < 10000 ? secrets : 10000))
list_ms=()
for _ in $(seq 20); do
  t0=$(date +%s%N)
  api "${ca[big]}" "${addr[big]}/v1/secret/metadata/scale/f0/" -X LIST -o "$work/list.json"
  list_ms+=($(( ($(date +%s%N) - t0) / 1000000 )))
done
keys="$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["data"]["keys"]))' "$work/list.json")"
[ "$keys" -eq "$folder_keys" ] || { echo "LIST returned $keys keys, not $folder_keys" >&2; exit 1; }
list_median="$(printf '%s\n' "${list_ms[@]}" | sort -n | sed -n 10p)"
rss_list="$(rss_mb "${pid[big]}" VmHWM)"

# Start-up: stop the big server, start it on the same address and data, time the first read.
kill "${pid[big]}"; wait "${pid[big]}" 2>/dev/null || true
addr_port="${addr[big]#https://}"
t0=$(date +%s%N)
addr[big]="$addr_port"; start big; addr[big]="https://$addr_port"
until curl -sf --cacert "${ca[big]}" -H "X-Vault-Token: ${token[big]}" \
  "${addr[big]}/v1/secret/data/scale/f0/k0" >/dev/null 2>&1; do
  [ $(( ($(date +%s%N) - t0) / 1000000 )) -lt 60000 ] || { echo "no answer 60 s after start" >&2; cat "$work/big.err" >&2; exit 1; }
  sleep 0.01
done
startup_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
sleep 2
rss_idle="$(rss_mb "${pid[big]}" VmRSS)"

echo
echo "| big server ($secrets secrets, $policies policies, $tokens tokens) | |"
echo "|---|---:|"
echo "| LIST of a $folder_keys-key folder (median of 20, one curl each: TLS handshake included) | $list_median ms |"
echo "| start-up, exec to first answered KV read | $startup_ms ms |"
echo "| RSS idle after restart | $rss_idle MB |"
echo "| peak RSS under the read/write load | $rss_load MB |"
echo "| peak RSS after the LISTs | $rss_list MB |"
