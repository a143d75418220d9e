#!/usr/bin/env python3
"""Validates every object of rendered kustomize output offline against the Kubernetes
OpenAPI schemas of one pinned version (kubernetes-validate, strict: unknown fields fail).

cert-manager objects (cert-manager.io/v1 Issuer, Certificate) are CRDs, for which
kubernetes-validate has no schema: they are skipped by kind, by name, and given a structural
check of the fields kinko relies on instead (issuerRef, secretName, dnsNames, ...)."""
import sys

import kubernetes_validate
import yaml

# Custom resources without an offline schema, and why each is safe to skip.
SKIP_KINDS = {
    ("cert-manager.io/v1", "Issuer"): "cert-manager CRD: kubernetes-validate ships only core schemas",
    ("cert-manager.io/v1", "Certificate"): "cert-manager CRD: kubernetes-validate ships only core schemas",
}


def check_cert_manager(obj, problems):
    kind, spec = obj["kind"], obj.get("spec") or {}
    where = f"{kind}/{obj['metadata']['name']}"
    if kind == "Issuer":
        if len([k for k in ("selfSigned", "ca", "acme", "vault") if k in spec]) != 1:
            problems.append(f"{where}: an Issuer needs exactly one of selfSigned, ca, acme, vault")
        if "ca" in spec and not spec["ca"].get("secretName"):
            problems.append(f"{where}: spec.ca.secretName is required")
    elif kind == "Certificate":
        for field in ("secretName", "issuerRef"):
            if field not in spec:
                problems.append(f"{where}: spec.{field} is required")
        if not spec.get("isCA") and not spec.get("dnsNames"):
            problems.append(f"{where}: a server certificate needs dnsNames")
        known = {"secretName", "issuerRef", "dnsNames", "ipAddresses", "isCA", "commonName",
                 "duration", "renewBefore", "privateKey", "usages", "subject", "secretTemplate"}
        for field in spec:
            if field not in known:
                problems.append(f"{where}: unexpected field spec.{field}")


def main():
    version, files = sys.argv[1], sys.argv[2:]
    passed = skipped = 0
    problems = []
    for name in files:
        with open(name) as f:
            objects = [o for o in yaml.safe_load_all(f) if o]
        if not objects:
            problems.append(f"{name}: no objects rendered")
        for obj in objects:
            what = f"{name}: {obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
            reason = SKIP_KINDS.get((obj.get("apiVersion"), obj.get("kind")))
            if reason:
                before = len(problems)
                check_cert_manager(obj, problems)
                print(f"SKIP schema {what} ({reason}); structural check "
                      f"{'ok' if len(problems) == before else 'FAILED'}")
                skipped += 1
                continue
            try:
                kubernetes_validate.validate(obj, version, strict=True)
                passed += 1
            except kubernetes_validate.ValidationError as e:
                problems.append(f"{what}: {e.message} at {'.'.join(map(str, e.path))}")
            except kubernetes_validate.SchemaNotFoundError as e:
                problems.append(f"{what}: no schema for {e} (add it to SKIP_KINDS with a reason?)")
    for p in problems:
        print(f"FAIL {p}")
    print(f"kubernetes-validate {version} --strict: {passed} objects valid, {skipped} skipped, "
          f"{len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
