#!/usr/bin/env python3
"""Agreement tests: the manifests in deploy/ against the code they deploy.

1. config: the kinko server starts with exactly the KINKO_* (and AWS_*) variables of each
   rendered server Deployment (file paths mapped into a temp dir, the listen address onto a
   free loopback port) and gets past configuration (it listens, and warns about no unknown
   KINKO_ variable). Every file it is given lies under a volume the container mounts; files
   it writes lie under a writable mount (the root filesystem is read-only). The same for the
   injector: the real kinko-injector binary started with the KINKO_INJECTOR_* variables of
   each rendered injector Deployment gets past its own configuration parsing, reports no
   unknown variable, and answers its manifest's liveness and readiness probes; a misspelt
   variable is reported by name.
2. probes: the liveness and readiness probes of the manifest, sent to a running server, give
   the kubelet's verdict the manifest promises: uninitialised and sealed replicas stay alive
   but not ready; an unsealed one is both.
3. aws: `kinko operator create-table` (against the moto emulator) makes exactly the key
   schema the CloudFormation template declares; the template's IAM and KMS grants are exactly
   the calls the storage and seal code make; the encryption context key is the seal's; the
   IRSA trust names the rendered ServiceAccount; params.env maps onto the stack's outputs.

Usage: agreement.py KINKO_BIN MOTO_SERVER RENDERED_DIR [INJECTOR_BIN]
(INJECTOR_BIN defaults to kinko-injector beside KINKO_BIN.)
"""
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TEMPLATE = os.path.join(ROOT, "deploy", "aws", "kinko.yaml")
PARAMS = os.path.join(ROOT, "deploy", "kubernetes", "overlays", "aws", "params.env")
# Files the server writes (so they need a writable mount); all others it only reads.
WRITES = {"KINKO_SQLITE_PATH", "KINKO_SEAL_KEY_FILE"}

results = {"passed": 0, "failed": 0}


def check(ok, what):
    results["passed" if ok else "failed"] += 1
    print(f"{'ok  ' if ok else 'FAIL'} {what}")
    return ok


class CfnLoader(yaml.SafeLoader):
    pass


def _tag(loader, suffix, node):
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
        if suffix == "GetAtt":
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {name: value}


CfnLoader.add_multi_constructor("!", _tag)


def load_rendered(path):
    with open(path) as f:
        return [o for o in yaml.safe_load_all(f) if o]


def find(objects, kind, name):
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def self_signed(cert, key):
    os.makedirs(os.path.dirname(cert), exist_ok=True)
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True)


def clean_env():
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("KINKO_", "AWS_", "VAULT_", "BAO_"))}


class Server:
    """A kinko process; its stdout and stderr go to files in `workdir`."""

    def __init__(self, argv, env, workdir, name):
        self.out = os.path.join(workdir, f"{name}.stdout")
        self.err = os.path.join(workdir, f"{name}.stderr")
        self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                                     stdout=open(self.out, "w"), stderr=open(self.err, "w"))

    def wait_listening(self, timeout=60, program="kinko"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = open(self.out).read()
            match = re.search(re.escape(program) + r" listening on https://(\S+)", text)
            if match:
                return match.group(1)
            if self.proc.poll() is not None:
                return None
            time.sleep(0.1)
        return None

    def stdout(self):
        return open(self.out).read()

    def stderr(self):
        return open(self.err).read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=35)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


UNVERIFIED = ssl.create_default_context()
UNVERIFIED.check_hostname = False
UNVERIFIED.verify_mode = ssl.CERT_NONE  # as the kubelet's HTTPS probes do


def status(address, path, method="GET", token=None):
    request = urllib.request.Request(f"https://{address}{path}", method=method)
    if token:
        request.add_header("X-Vault-Token", token)
    try:
        with urllib.request.urlopen(request, context=UNVERIFIED, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def kubelet_success(code):
    return 200 <= code < 400


def server_container(objects):
    deployment = find(objects, "Deployment", "kinko")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == "kinko"]
    return pod, container


def probe_checks(overlay, container, address, state, alive, ready):
    for kind, expected in (("livenessProbe", alive), ("readinessProbe", ready)):
        probe = container[kind]["httpGet"]
        check(probe["scheme"] == "HTTPS", f"{overlay}: {kind} uses HTTPS")
        code = status(address, probe["path"])
        check(kubelet_success(code) == expected,
              f"{overlay}: {kind} {probe['path']} on a {state} server answers {code} "
              f"({'success' if expected else 'failure'} expected)")


def run_with_manifest_env(overlay, objects, workdir, extra_env, argv_bin):
    """Starts `kinko server` with the rendered Deployment's variables. Returns the Server and
    its loopback address (or None)."""
    pod, container = server_container(objects)
    mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    port = next(p["containerPort"] for p in container["ports"] if p["name"] == "https")
    check(container["securityContext"].get("readOnlyRootFilesystem") is True,
          f"{overlay}: the server's root filesystem is read-only")
    check(container.get("args") == ["server"], f"{overlay}: the container runs `kinko server`")
    root = os.path.join(workdir, overlay + "-root")
    env = clean_env()
    env.update(extra_env)
    names = []
    for var in container["env"]:
        name = var["name"]
        names.append(name)
        if not check("value" in var, f"{overlay}: {name} has a literal value (no valueFrom)"):
            continue
        value = var["value"]
        if name == "KINKO_LISTEN_ADDR":
            check(value == f"0.0.0.0:{port}",
                  f"{overlay}: KINKO_LISTEN_ADDR {value} listens on the containerPort {port}")
            value = f"127.0.0.1:{free_port()}"
        elif value.startswith("/"):
            mount = next((m for m in mounts if value.startswith(m.rstrip("/") + "/")), None)
            if check(mount is not None, f"{overlay}: {name}={value} lies under a volume mount"):
                writable = not mounts[mount].get("readOnly", False)
                if name in WRITES:
                    check(writable, f"{overlay}: {name} is on a writable volume ({mount})")
                volume = volumes[mounts[mount]["name"]]
                if "secret" in volume and volume["secret"].get("items"):
                    relative = value[len(mount.rstrip("/")) + 1:]
                    check(relative in [i["path"] for i in volume["secret"]["items"]],
                          f"{overlay}: {name} is an item of secret {volume['secret']['secretName']}")
            value = root + value
            os.makedirs(os.path.dirname(value), exist_ok=True)
        env[name] = value
    self_signed(env["KINKO_TLS_CERT_FILE"], env["KINKO_TLS_KEY_FILE"])
    print(f"     {overlay}: kinko server with {', '.join(sorted(names))}")
    server = Server([argv_bin, "server"], env, workdir, overlay)
    address = server.wait_listening()
    check(address is not None,
          f"{overlay}: kinko server gets past configuration and listens"
          + ("" if address else f"; stderr: {server.stderr()[-600:]}"))
    if address:
        unknown = [l for l in server.stderr().splitlines() if "unknown KINKO_ variable" in l]
        check(not unknown, f"{overlay}: no KINKO_ variable is unknown to the server {unknown}")
    return server, address, container


def injector_checks(overlay, objects, workdir, injector_bin):
    """Starts kinko-injector with the rendered injector Deployment's variables (paths mapped
    into a temp dir, the listen address onto a free loopback port): its own config parsing
    accepts them, no variable is unknown to it, its probes answer; then a misspelt one."""
    pod = find(objects, "Deployment", "kinko-injector")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    mounts = [m["mountPath"] for m in container.get("volumeMounts", [])]
    port = next(p["containerPort"] for p in container["ports"] if p["name"] == "https")
    root = os.path.join(workdir, overlay + "-injector-root")
    env = clean_env()
    for var in container["env"]:
        name = var["name"]
        if not check("value" in var, f"{overlay}: injector {name} has a literal value"):
            continue
        value = var["value"]
        if name == "KINKO_INJECTOR_LISTEN_ADDR":
            check(value == f"0.0.0.0:{port}",
                  f"{overlay}: KINKO_INJECTOR_LISTEN_ADDR {value} listens on the containerPort {port}")
            value = f"127.0.0.1:{free_port()}"
        elif value.startswith("/"):
            check(any(value.startswith(m.rstrip("/") + "/") for m in mounts),
                  f"{overlay}: injector {name}={value} lies under a volume mount")
            value = root + value
            os.makedirs(os.path.dirname(value), exist_ok=True)
        env[name] = value
    for needed in ("KINKO_INJECTOR_TLS_CERT_FILE", "KINKO_INJECTOR_TLS_KEY_FILE",
                   "KINKO_INJECTOR_KINKO_CA_FILE"):
        if not check(needed in env, f"{overlay}: the injector Deployment sets {needed}"):
            return
    self_signed(env["KINKO_INJECTOR_TLS_CERT_FILE"], env["KINKO_INJECTOR_TLS_KEY_FILE"])
    with open(env["KINKO_INJECTOR_TLS_CERT_FILE"]) as src, \
            open(env["KINKO_INJECTOR_KINKO_CA_FILE"], "w") as dst:
        dst.write(src.read())
    if not check(os.access(injector_bin, os.X_OK), f"{injector_bin} is built"):
        return
    names = sorted(k for k in env if k.startswith("KINKO_INJECTOR_"))
    print(f"     {overlay}: kinko-injector with {', '.join(names)}")
    for misspelt in (None, "KINKO_INJECTOR_IMAGE_LOKUP"):
        run_env = dict(env)
        if misspelt:
            run_env[misspelt] = "false"
            run_env["KINKO_INJECTOR_LISTEN_ADDR"] = f"127.0.0.1:{free_port()}"
        name = overlay + ("-injector-misspelt" if misspelt else "-injector")
        server = Server([injector_bin], run_env, workdir, name)
        try:
            address = server.wait_listening(program="kinko-injector")
            check(address is not None,
                  f"{name}: kinko-injector gets past configuration and listens"
                  + ("" if address else f"; stderr: {server.stderr()[-600:]}"))
            if not address:
                continue
            unknown = [l for l in server.stderr().splitlines()
                       if "unknown KINKO_INJECTOR_ variable" in l]
            if misspelt:
                check(any(misspelt in l for l in unknown),
                      f"{name}: the misspelt {misspelt} is reported {unknown}")
                continue
            check(not unknown, f"{name}: no variable is unknown to the injector {unknown}")
            for kind in ("livenessProbe", "readinessProbe"):
                probe = container[kind]["httpGet"]
                check(probe["scheme"] == "HTTPS" and probe["port"] in ("https", port),
                      f"{name}: {kind} is HTTPS on the https port")
                code = status(address, probe["path"])
                check(kubelet_success(code),
                      f"{name}: {kind} {probe['path']} on a configured injector answers {code}")
            code = status(address, "/mutate")
            check(code == 405, f"{name}: GET /mutate answers {code} (405: POST only)")
        finally:
            server.stop()


def dev_probes(kinko, workdir, container):
    port = free_port()
    server = Server([kinko, "server", "--dev", "--data-dir", os.path.join(workdir, "dev-mode"),
                     "--listen", f"127.0.0.1:{port}"], clean_env(), workdir, "dev-mode")
    try:
        address = server.wait_listening()
        if not check(address is not None, "kinko server --dev starts"):
            return
        deadline = time.monotonic() + 30
        token = None
        while time.monotonic() < deadline and not token:
            match = re.search(r"Root token: (kks\.\S+)", server.stdout())
            token = match.group(1) if match else None
            time.sleep(0.1)
        probe_checks("dev-mode", container, address, "unsealed", alive=True, ready=True)
        if check(token is not None, "dev mode prints its root token"):
            code = status(address, "/v1/sys/seal", method="PUT", token=token)
            check(code in (200, 204), f"sys/seal answers {code}")
            probe_checks("dev-mode", container, address, "sealed", alive=True, ready=False)
    finally:
        server.stop()


def start_moto(moto_server, workdir):
    port = free_port()
    log = open(os.path.join(workdir, "moto.log"), "w")
    proc = subprocess.Popen([moto_server, "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=2)
            return proc, url
        except Exception:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("moto did not start")


def rust_source(path):
    with open(os.path.join(ROOT, path)) as f:
        return f.read()


def aws_checks(kinko, moto_url, objects, workdir):
    with open(TEMPLATE) as f:
        template = yaml.load(f, Loader=CfnLoader)
    resources = template["Resources"]
    table = resources["Table"]["Properties"]
    _, container = server_container(objects)
    env = {v["name"]: v.get("value") for v in container["env"]}
    aws_env = {"AWS_ENDPOINT_URL": moto_url, "AWS_ACCESS_KEY_ID": "testing",
               "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": env["AWS_REGION"]}

    # (3) the key schema create_table makes equals the template's.
    name = env["KINKO_DYNAMODB_TABLE"]
    made = subprocess.run([kinko, "operator", "create-table", "--table", name],
                          env={**clean_env(), **aws_env}, capture_output=True, text=True,
                          timeout=120)
    if check(made.returncode == 0, f"kinko operator create-table --table {name} (moto) "
             + ("" if made.returncode == 0 else made.stderr[-400:])):
        import boto3
        client = boto3.client("dynamodb", endpoint_url=moto_url, region_name=env["AWS_REGION"],
                              aws_access_key_id="testing", aws_secret_access_key="testing")
        described = client.describe_table(TableName=name)["Table"]
        check(described["KeySchema"] == table["KeySchema"],
              f"key schema: create_table {described['KeySchema']} == template {table['KeySchema']}")
        by_name = lambda items: sorted(items, key=lambda a: a["AttributeName"])
        check(by_name(described["AttributeDefinitions"]) == by_name(table["AttributeDefinitions"]),
              "attribute definitions: create_table == template")
        billing = described.get("BillingModeSummary", {}).get("BillingMode")
        check(billing == table["BillingMode"] == "PAY_PER_REQUEST",
              f"billing mode: create_table {billing} == template {table['BillingMode']}")
    check(table["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
          and table["DeletionProtectionEnabled"] is True and table["SSESpecification"]["SSEEnabled"],
          "table: PITR, deletion protection and SSE on")

    # IAM grants == what the code calls (least privilege both ways).
    storage = rust_source("server/src/storage/dynamodb.rs")
    operator_only = storage[storage.index("pub async fn create_table"):]
    operator_only = operator_only[:operator_only.index("\n    }\n") + 6]
    runtime = storage.replace(operator_only, "")
    calls = {".get_item()": ["GetItem"], ".query()": ["Query"], ".scan()": ["Scan"],
             ".put_item()": ["PutItem"], ".update_item()": ["UpdateItem"],
             ".delete_item()": ["DeleteItem"], ".batch_get_item()": ["BatchGetItem"],
             ".transact_get_items()": ["GetItem"], ".batch_write_item()": ["BatchWriteItem"],
             "PutRequest::builder()": ["PutItem"], "DeleteRequest::builder()": ["DeleteItem"],
             "Put::builder()": ["PutItem"], "Update::builder()": ["UpdateItem"],
             "Delete::builder()": ["DeleteItem"], "ConditionCheck::builder()": ["ConditionCheckItem"],
             ".describe_table()": ["DescribeTable"], ".create_table()": ["CreateTable"]}
    needed = {f"dynamodb:{a}" for call, actions in calls.items()
              if re.search(r"(?<![A-Za-z_])" + re.escape(call), runtime) for a in actions}
    policy = resources["KinkoPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    (table_grant,) = [s for s in policy if s["Sid"] == "Table"]
    granted = set(table_grant["Action"])
    check(granted == needed, f"IAM on the table {sorted(granted)} == the server's calls {sorted(needed)}")
    check(table_grant["Resource"] == {"Fn::GetAtt": ["Table", "Arn"]}, "IAM: the table only")

    seal = rust_source("server/src/seal/awskms.rs")
    context_key = re.search(r'pub const CONTEXT_KEY: &str = "([^"]+)"', seal).group(1)
    kms_needed = {f"kms:{c.capitalize()}" for c in re.findall(r"\.(encrypt|decrypt|generate_data_key|re_encrypt|describe_key)\(\)", seal)}
    key_policy = resources["KinkoKey"]["Properties"]["KeyPolicy"]["Statement"]
    check(resources["KinkoKey"]["Properties"]["EnableKeyRotation"] is True, "KMS: rotation on")
    users = [s for s in key_policy if {"kms:Encrypt", "kms:Decrypt"} & set(s["Action"])
             or any(a in ("kms:*", "kms:Encrypt*", "kms:Decrypt*") for a in s["Action"])]
    (kms_grant,) = [s for s in policy if s["Sid"] == "Key"]
    for where, grant in (("key policy", users[0] if len(users) == 1 else None), ("IAM", kms_grant)):
        if not check(grant is not None, f"{where}: exactly one statement allows Encrypt/Decrypt"):
            continue
        check(set(grant["Action"]) == kms_needed,
              f"{where}: KMS actions {sorted(grant['Action'])} == the seal's calls {sorted(kms_needed)}")
        cond = grant.get("Condition", {})
        check(cond.get("ForAllValues:StringEquals", {}).get("kms:EncryptionContextKeys") == [context_key]
              and cond.get("Null", {}).get("kms:EncryptionContextKeys") == "false",
              f"{where}: only with the encryption context key {context_key} (awskms.rs CONTEXT_KEY)")
    if len(users) == 1:
        check(users[0]["Principal"] == {"AWS": {"Fn::GetAtt": ["KinkoRole", "Arn"]}},
              "key policy: Encrypt/Decrypt for the kinko role only")

    # IRSA: the trust names the rendered ServiceAccount; params.env feeds from the outputs.
    account = find(objects, "ServiceAccount", "kinko")
    params = template["Parameters"]
    trust = json.dumps(resources["KinkoRole"]["Properties"]["AssumeRolePolicyDocument"])
    check("system:serviceaccount:${Namespace}:${ServiceAccount}" in trust
          and "${OidcIssuer}:aud" in trust and "sts.amazonaws.com" in trust,
          "IRSA trust binds sub to the ServiceAccount and aud to sts.amazonaws.com")
    check((params["Namespace"]["Default"], params["ServiceAccount"]["Default"])
          == (account["metadata"]["namespace"], account["metadata"]["name"]),
          "the template's default namespace/ServiceAccount are the rendered ones")
    check("eks.amazonaws.com/role-arn" in account["metadata"].get("annotations", {}),
          "the ServiceAccount carries the IRSA role annotation")
    wanted = {"AWS_REGION": "Region", "TABLE_NAME": "TableName", "KMS_KEY_ARN": "KmsKeyArn",
              "ROLE_ARN": "RoleArn"}
    keys = {l.split("=", 1)[0] for l in open(PARAMS) if "=" in l and not l.startswith("#")}
    check(keys == set(wanted) and all(o in template["Outputs"] for o in wanted.values()),
          f"params.env {sorted(keys)} each comes from a stack output")
    return aws_env


def main():
    kinko, moto_server, rendered = sys.argv[1:4]
    injector_bin = (sys.argv[4] if len(sys.argv) > 4
                    else os.path.join(os.path.dirname(kinko), "kinko-injector"))
    overlays = {o: load_rendered(os.path.join(rendered, f"{o}.yaml")) for o in ("dev", "aws")}
    with tempfile.TemporaryDirectory(prefix="kinko-deploy-") as workdir:
        # The injector: its own binary parses the rendered variables.
        for overlay, objects in overlays.items():
            injector_checks(overlay, objects, workdir, injector_bin)

        # dev overlay: SQLite + file seal, a fresh (uninitialised) cluster.
        server, address, container = run_with_manifest_env("dev", overlays["dev"], workdir, {}, kinko)
        try:
            if address:
                probe_checks("dev", container, address, "uninitialised", alive=True, ready=False)
        finally:
            server.stop()
        dev_probes(kinko, workdir, container)

        # aws overlay against moto.
        moto, moto_url = start_moto(moto_server, workdir)
        try:
            aws_env = aws_checks(kinko, moto_url, overlays["aws"], workdir)
            extra = {k: v for k, v in aws_env.items() if k != "AWS_REGION"}
            server, address, container = run_with_manifest_env("aws", overlays["aws"], workdir, extra, kinko)
            try:
                if address:
                    probe_checks("aws", container, address, "uninitialised", alive=True, ready=False)
            finally:
                server.stop()
        finally:
            moto.terminate()
            moto.wait()
    print(f"agreement: {results['passed']} passed, {results['failed']} failed")
    return 1 if results["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
