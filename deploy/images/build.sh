#!/usr/bin/env bash
# Builds the container images kinko, kinko-injector and kinko-envrun from static binaries:
#   deploy/images/build.sh [--no-build] [kinko|kinko-injector|envrun ...]
# Uses buildah (or podman) — `apt-get install buildah`. --no-build takes the binaries already
# in target/x86_64-unknown-linux-gnu/static/ (or KINKO_STATIC_PROFILE's folder) instead of
# running scripts/build-static.
# IMAGE_PREFIX (default registry.example.com/kinko/) and VERSION name the images.
set -euo pipefail
cd "$(dirname "$0")/../.."
build=1
if [ "${1:-}" = "--no-build" ]; then build=0; shift; fi
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(kinko kinko-injector envrun)
prefix="${IMAGE_PREFIX:-registry.example.com/kinko/}"
version="${VERSION:-$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)}"
if command -v buildah >/dev/null; then tool=(buildah bud); elif command -v podman >/dev/null; then tool=(podman build); else
  echo "build.sh: neither buildah nor podman is installed (apt-get install buildah)" >&2; exit 3
fi
bundle=/etc/ssl/certs/ca-certificates.crt
for name in "${names[@]}"; do
  if [ "$build" = 1 ]; then binary="$(scripts/build-static "$name")"; else
    binary="$PWD/target/x86_64-unknown-linux-gnu/${KINKO_STATIC_PROFILE:-static}/$name"
  fi
  [ -x "$binary" ] || { echo "build.sh: no static binary $binary" >&2; exit 1; }
  context="$(mktemp -d)"
  trap 'rm -rf "$context"' EXIT
  cp "$binary" "$context/$name"
  if [ "$name" != envrun ]; then
    [ -r "$bundle" ] || { echo "build.sh: $bundle missing (apt-get install ca-certificates)" >&2; exit 1; }
    cp "$bundle" "$context/ca-certificates.crt"
  fi
  image="$prefix$name"; [ "$name" = envrun ] && image="${prefix}kinko-envrun"
  "${tool[@]}" --quiet --file "deploy/images/$name.Containerfile" \
    --build-arg "VERSION=$version" \
    --build-arg "REVISION=$(git rev-parse HEAD 2>/dev/null || echo unknown)" \
    --build-arg "CREATED=$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    --tag "$image:$version" "$context" >&2
  rm -rf "$context"; trap - EXIT
  echo "$image:$version"
done
