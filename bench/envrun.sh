#!/usr/bin/env bash
# envrun's start-up overhead: `envrun --secret PATH -- true` against plain `true`, measured with
# hyperfine against a release `kinko server --dev` on loopback. Run on demand; results go to
# bench/RESULTS.md by hand.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v hyperfine >/dev/null; then
  apt-get update -qq && apt-get install -y -qq hyperfine >/dev/null
fi
cargo build --release --locked -p kinko-server --bin kinko >&2
envrun="$(./scripts/build-envrun-static)"

work="$(mktemp -d)"
server_pid=""
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

target/release/kinko server --dev --data-dir "$work/kinko" --listen 127.0.0.1:0 \
  --dev-root-token bench-root >"$work/server.out" 2>"$work/server.err" &
server_pid=$!
for _ in $(seq 300); do
  grep -q '^export VAULT_ADDR' "$work/server.out" 2>/dev/null && break
  sleep 0.1
done
addr="$(sed -n 's/^kinko listening on //p' "$work/server.out")"
[ -n "$addr" ] || { echo "kinko did not start" >&2; cat "$work/server.err" >&2; exit 1; }

export KINKO_ADDR="$addr" KINKO_CACERT="$work/kinko/ca.pem" KINKO_TOKEN=bench-root
curl -sf --cacert "$KINKO_CACERT" -H "X-Vault-Token: $KINKO_TOKEN" \
  -d '{"data":{"user":"app","password":"bench-password","url":"postgres://db:5432/app"}}' \
  "$addr/v1/secret/data/bench/app" >/dev/null

hyperfine -N --warmup 20 --runs 300 --export-json "$work/result.json" \
  'true' "$envrun --secret secret/bench/app -- true"

python3 - "$work/result.json" <<'PY'
import json, sys
results = json.load(open(sys.argv[1]))["results"]
base, run = results[0], results[1]
overhead = (run["mean"] - base["mean"]) * 1000
print(f"true: {base['mean']*1000:.2f} ms; envrun: {run['mean']*1000:.2f} ms "
      f"(median {run['median']*1000:.2f} ms, max {run['max']*1000:.2f} ms); overhead {overhead:.2f} ms")
PY
