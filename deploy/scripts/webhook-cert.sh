#!/usr/bin/env bash
# For clusters without cert-manager: makes the CA, the kinko server's and the injector's
# certificates with openssl, and writes into OUT_DIR (default ./kinko-certs):
#   secrets.yaml        the Secrets kinko-tls, kinko-injector-tls (type kubernetes.io/tls,
#                       with ca.crt) that base/tls.yaml would have had cert-manager make;
#   webhook-patch.yaml  a kustomize patch setting the webhook's caBundle.
# Then: drop tls.yaml from your copy of the base's resources, add secrets.yaml (as a sealed
# or otherwise encrypted Secret: it holds private keys — never commit it in the clear) and
# webhook-patch.yaml as a patch. Renew before the 1-year expiry by running it again (keep the
# CA: pass CA_DIR=<dir with ca.crt and ca.key> to reuse it).
#   usage: deploy/scripts/webhook-cert.sh [OUT_DIR]     NAMESPACE (default kinko)
set -euo pipefail
out="${1:-./kinko-certs}"
ns="${NAMESPACE:-kinko}"
mkdir -p "$out"
umask 077
if [ -n "${CA_DIR:-}" ]; then
  cp "$CA_DIR/ca.crt" "$CA_DIR/ca.key" "$out/"
else
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
    -subj "/CN=kinko-ca" -keyout "$out/ca.key" -out "$out/ca.crt" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    2>/dev/null
fi
issue() { # name, subjectAltName
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$1" \
    -keyout "$out/$1.key" -out "$out/$1.csr" 2>/dev/null
  openssl x509 -req -in "$out/$1.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" -CAcreateserial \
    -days 365 -out "$out/$1.crt" -extfile <(printf '%s\n' \
      "subjectAltName=$2" "extendedKeyUsage=serverAuth" \
      "keyUsage=critical,digitalSignature,keyEncipherment" "basicConstraints=critical,CA:FALSE") \
    2>/dev/null
  rm -f "$out/$1.csr"
  openssl verify -CAfile "$out/ca.crt" "$out/$1.crt" >/dev/null
}
issue kinko "DNS:kinko,DNS:kinko.$ns,DNS:kinko.$ns.svc,DNS:kinko.$ns.svc.cluster.local,IP:127.0.0.1"
issue kinko-injector "DNS:kinko-injector.$ns.svc,DNS:kinko-injector.$ns.svc.cluster.local"
b64() { base64 -w0 <"$1"; }
secret() { # name, cert, key
  cat <<YAML
---
apiVersion: v1
kind: Secret
metadata:
  name: $1
  namespace: $ns
type: kubernetes.io/tls
data:
  ca.crt: $(b64 "$out/ca.crt")
  tls.crt: $(b64 "$2")
  tls.key: $(b64 "$3")
YAML
}
{
  secret kinko-tls "$out/kinko.crt" "$out/kinko.key"
  secret kinko-injector-tls "$out/kinko-injector.crt" "$out/kinko-injector.key"
} >"$out/secrets.yaml"
cat >"$out/webhook-patch.yaml" <<YAML
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata:
  name: kinko-injector
  annotations:
    cert-manager.io/inject-ca-from: null
webhooks:
  - name: inject.kinko.io
    clientConfig:
      caBundle: $(b64 "$out/ca.crt")
YAML
echo "wrote $out/secrets.yaml (private keys: keep it out of Git in the clear) and $out/webhook-patch.yaml" >&2
