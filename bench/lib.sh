# Shared by the bench scripts (sourced): tool installation, ports, waiting, the API, the
# prepared data and policy-limited token, CPU and memory of a process, and one wrk run.
# Expects $duration (wrk -d).

need() { command -v "$1" >/dev/null || { apt-get update -qq && apt-get install -y -qq "$2" >/dev/null; }; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_for() { for _ in $(seq 300); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done; echo "timeout waiting for $2 in $1" >&2; cat "$1" >&2; exit 1; }
api() { curl -sf --cacert "$1" -H "X-Vault-Token: bench-root" "${@:3}" "$2"; }
prepare() { # addr ca -> prints a policy-limited token
  local addr="$1" ca="$2"
  api "$ca" "$addr/v1/sys/policies/acl/bench" -X PUT \
    -d '{"policy":"path \"secret/data/bench/*\" { capabilities = [\"create\", \"read\", \"update\"] }\npath \"auth/token/create\" { capabilities = [\"update\"] }"}' >/dev/null
  api "$ca" "$addr/v1/secret/config" -X POST -d '{"max_versions":5}' >/dev/null
  api "$ca" "$addr/v1/secret/data/bench/app" -X POST \
    -d '{"data":{"user":"app","password":"bench-password","url":"postgres://db:5432/app","note":"'"$(head -c 600 /dev/zero | tr '\0' x)"'"}}' >/dev/null
  api "$ca" "$addr/v1/auth/token/create" -X POST -d '{"policies":["bench"],"ttl":"2h"}' \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["auth"]["client_token"])'
}
cpu_seconds() { awk -v t="$(getconf CLK_TCK)" '{print ($14 + $15) / t}' "/proc/$1/stat"; }
rss_mb() { awk -v f="$2" '$1 == f":" {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }
run() { # name pid addr token script -> "rps p50 p99 cpu_per_10k"
  local pid="$2" addr="$3" token="$4" script="$5" before after out
  before="$(cpu_seconds "$pid")"
  out="$(BENCH_TOKEN="$token" wrk -t2 -c16 -d"$duration" --latency -s "bench/wrk/$script.lua" "$addr")"
  after="$(cpu_seconds "$pid")"
  python3 - "$out" "$before" "$after" <<'PY'
import re, sys
out, before, after = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
def ms(label):
    m = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\b", out, re.M)
    value, unit = float(m.group(1)), m.group(2)
    return value * {"us": 0.001, "ms": 1, "s": 1000}[unit]
requests = int(re.search(r"(\d+) requests in", out).group(1))
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
cpu = (after - before) / requests * 10000 if requests else 0
bad = f" ({errors.group(1)} non-2xx)" if errors else ""
print(f"{rps:.0f}{bad}|{ms('50%'):.2f}|{ms('99%'):.2f}|{cpu:.2f}")
PY
}
