#!/usr/bin/env bash
# kinko-injector under load: a release build on loopback with a self-signed certificate,
# `wrk -t2 -c16 -d10s --latency` POSTing the deployment-pod AdmissionReview fixture to /mutate
# over TLS (bench/wrk/injector-review.lua). Prints req/s, p50/p99 and the injector's CPU time
# per review (utime+stime from /proc/<pid>/stat, before/after, ÷ requests); then, when valgrind
# is installed, the instructions per pure review (examples/review_loop under callgrind).
# Target: ≥ 10,000 reviews/s with p99 < 5 ms. No assertion: this measures, bench/RESULTS.md
# records.
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${BENCH_DURATION:-10s}"
fixture="$PWD/../shared/fixtures/admission/deployment-pod.json"

need() { command -v "$1" >/dev/null || { apt-get update -qq && apt-get install -y -qq "$2" >/dev/null; }; }
need wrk wrk
need openssl openssl
cargo build --release --locked -p kinko-injector --bin kinko-injector --example review_loop >&2

work="$(mktemp -d)"
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$work/tls.key" \
  -out "$work/tls.crt" -days 1 -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 2>/dev/null
env -i PATH="$PATH" KINKO_LOG=warn \
  KINKO_INJECTOR_LISTEN_ADDR=127.0.0.1:0 \
  KINKO_INJECTOR_TLS_CERT_FILE="$work/tls.crt" KINKO_INJECTOR_TLS_KEY_FILE="$work/tls.key" \
  KINKO_INJECTOR_KINKO_ADDR=https://kinko.kinko-system.svc:8200 \
  KINKO_INJECTOR_KINKO_CA_FILE="$work/tls.crt" \
  KINKO_INJECTOR_ENVRUN_IMAGE=registry.example.com/kinko/envrun:0.1.0 \
  KINKO_INJECTOR_IMAGE_LOOKUP=false \
  target/release/kinko-injector >"$work/out" 2>"$work/err" &
pid=$!
for _ in $(seq 100); do grep -q "listening on" "$work/out" && break; sleep 0.1; done
url="$(sed -n 's/^kinko-injector listening on //p' "$work/out")"
[ -n "$url" ] || { cat "$work/err" >&2; exit 1; }

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# Warm up (TLS sessions, allocator), then measure.
BENCH_BODY_FILE="$fixture" wrk -t2 -c16 -d2s -s bench/wrk/injector-review.lua "$url" >/dev/null
before="$(cpu_ticks "$pid")"
BENCH_BODY_FILE="$fixture" wrk -t2 -c16 -d"$duration" --latency -s bench/wrk/injector-review.lua \
  "$url" >"$work/wrk.txt"
after="$(cpu_ticks "$pid")"
cat "$work/wrk.txt" >&2
ms() { awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n += 0; else if (v ~ /s$/) n *= 1000; printf "%.2f", n }'; }
requests="$(awk '/requests in/ {print $1}' "$work/wrk.txt")"
rps="$(awk '/Requests\/sec/ {printf "%d", $2}' "$work/wrk.txt")"
p50="$(ms "$(awk '$1 == "50%" {print $2}' "$work/wrk.txt")")"
p99="$(ms "$(awk '$1 == "99%" {print $2}' "$work/wrk.txt")")"
errors="$(grep -c "Non-2xx\|Socket errors" "$work/wrk.txt" || true)"
cpu_us="$(awk -v a="$after" -v b="$before" -v t="$(getconf CLK_TCK)" -v n="$requests" \
  'BEGIN { printf "%.1f", (a - b) / t / n * 1e6 }')"
echo "| workload | req/s | p50 ms | p99 ms | injector CPU µs / review | errors |"
echo "|---|---:|---:|---:|---:|---:|"
echo "| deployment-pod.json → /mutate | $rps | $p50 | $p99 | $cpu_us | $errors |"

if command -v valgrind >/dev/null; then
  n=200
  valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.out" \
    target/release/examples/review_loop "$fixture" "$n" >/dev/null 2>"$work/callgrind.err"
  total="$(sed -n 's/^summary: //p' "$work/callgrind.out")"
  valgrind --tool=callgrind --callgrind-out-file="$work/callgrind1.out" \
    target/release/examples/review_loop "$fixture" 0 >/dev/null 2>>"$work/callgrind.err"
  base="$(sed -n 's/^summary: //p' "$work/callgrind1.out")"
  echo "callgrind: $(( (total - base) / n )) instructions per pure review (deployment-pod.json, $n reviews)"
else
  echo "SKIP callgrind: valgrind is not installed (apt-get install valgrind)"
fi
