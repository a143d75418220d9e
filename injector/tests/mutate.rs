//! The pure admission decision against the shared AdmissionReview fixtures and hand-made Pods:
//! every patch is applied to `request.object` and the result read as a `k8s_openapi` Pod; the
//! rewritten command is the original behind `--`; nothing else changes; a second pass over the
//! patched Pod changes nothing.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use base64::Engine;
use k8s_openapi::api::core::v1::Pod;
use kinko_injector::mutate::{
    self, ImageCommand, ImageCommands, Outcome, Review, Settings, CA_PATH, ENVRUN_PATH,
    INSTALL_CONTAINER, TOKEN_PATH,
};
use serde_json::{json, Value};

const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
const ADDR: &str = "https://kinko.kinko-system.svc:8200";

fn settings() -> Settings {
    Settings {
        kinko_addr: ADDR.into(),
        ca_pem: CA.into(),
        envrun_image: "registry.example.com/kinko/envrun:0.1.0".into(),
        audience: "kinko".into(),
        token_expiration_seconds: 600,
        excluded_namespaces: ["kube-system", "kinko-system"]
            .map(String::from)
            .into_iter()
            .collect(),
    }
}

fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/../../shared/fixtures/admission/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap()
}

fn send(review: &Value) -> Review {
    send_with(review, &ImageCommands::new())
}

fn send_with(review: &Value, images: &ImageCommands) -> Review {
    let body = serde_json::to_vec(review).unwrap();
    let answer = mutate::review(&body, &settings(), images).expect("an AdmissionReview");
    let response = &answer.response;
    assert_eq!(response["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(response["kind"], "AdmissionReview");
    assert_eq!(
        response["response"]["uid"], review["request"]["uid"],
        "uid echoed"
    );
    let allowed = response["response"]["allowed"].as_bool().unwrap();
    assert_eq!(allowed, answer.outcome != Outcome::Denied);
    let has_patch = response["response"].get("patch").is_some();
    assert_eq!(has_patch, answer.outcome == Outcome::Mutated);
    assert_eq!(
        response["response"].get("patchType").is_some(),
        has_patch,
        "patchType only with a patch"
    );
    if answer.outcome == Outcome::Denied {
        let message = response["response"]["status"]["message"].as_str().unwrap();
        assert_eq!(Some(message), answer.message.as_deref());
    }
    answer
}

/// Applies the review's patch to `request.object`; checks the result is a Pod and that sending
/// it again (re-invocation) changes nothing.
fn patched(review: &Value, answer: &Review) -> Value {
    assert_eq!(answer.outcome, Outcome::Mutated, "{:?}", answer.message);
    let response = &answer.response["response"];
    assert_eq!(response["patchType"], "JSONPatch");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(response["patch"].as_str().unwrap())
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
    let mut object = review["request"]["object"].clone();
    json_patch::patch(&mut object, &patch).expect("the patch applies");
    let pod: Pod = serde_json::from_value(object.clone()).expect("the result is a Pod");
    assert!(pod.spec.is_some());
    let mut again = review.clone();
    again["request"]["object"] = object.clone();
    let second = send(&again);
    assert_eq!(
        second.outcome,
        Outcome::Unchanged,
        "re-invocation changes nothing"
    );
    object
}

fn strings(value: &Value) -> Vec<String> {
    serde_json::from_value(value.clone()).unwrap_or_default()
}

fn container<'a>(pod: &'a Value, list: &str, name: &str) -> &'a Value {
    pod["spec"][list]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("{list} {name}"))
}

/// The envrun command line up to and including `--`, and what follows it.
fn split_command(command: &[String]) -> (&[String], &[String]) {
    let dash = command.iter().position(|w| w == "--").expect("--");
    (&command[..=dash], &command[dash + 1..])
}

/// What injection may change, and nothing else: the selected containers' command (args only
/// when taken from an image), env and mounts (appended to), volumes (appended to), init
/// containers (one prepended), and the status annotation.
fn check_only_injection_changed(before: &Value, after: &Value, selected: &[(&str, &str)]) {
    let selected: BTreeSet<(&str, &str)> = selected.iter().copied().collect();
    let mut rest_before = before.clone();
    let mut rest_after = after.clone();
    for list in ["containers", "initContainers"] {
        let old = before["spec"][list].as_array().cloned().unwrap_or_default();
        let mut new = after["spec"][list].as_array().cloned().unwrap();
        if list == "initContainers" {
            assert_eq!(new[0]["name"], INSTALL_CONTAINER, "install container first");
            new.remove(0);
        }
        assert_eq!(old.len(), new.len(), "{list}: none added or lost");
        for (old, new) in old.iter().zip(&new) {
            let name = old["name"].as_str().unwrap();
            if !selected.contains(&(list, name)) {
                assert_eq!(old, new, "{list} {name} is untouched");
                continue;
            }
            for field in ["env", "volumeMounts"] {
                let was = old[field].as_array().cloned().unwrap_or_default();
                let now = new[field].as_array().unwrap();
                assert_eq!(&now[..was.len()], &was[..], "{name}.{field} kept, in order");
                assert_eq!(now.len(), was.len() + 2, "{name}.{field}: two added");
            }
            let mut old = old.clone();
            let mut new = new.clone();
            for field in ["command", "env", "volumeMounts"] {
                old.as_object_mut().unwrap().remove(field);
                new.as_object_mut().unwrap().remove(field);
            }
            if old.get("args").is_none() {
                new.as_object_mut().unwrap().remove("args");
            }
            assert_eq!(old, new, "{list} {name}: only command, env, mounts changed");
        }
        rest_before["spec"].as_object_mut().unwrap().remove(list);
        rest_after["spec"].as_object_mut().unwrap().remove(list);
    }
    let old_volumes = before["spec"]["volumes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let new_volumes = after["spec"]["volumes"].as_array().unwrap();
    assert_eq!(&new_volumes[..old_volumes.len()], &old_volumes[..]);
    assert_eq!(new_volumes.len(), old_volumes.len() + 2);
    rest_before["spec"]
        .as_object_mut()
        .unwrap()
        .remove("volumes");
    rest_after["spec"]
        .as_object_mut()
        .unwrap()
        .remove("volumes");
    let mut annotations = before["metadata"]["annotations"].clone();
    annotations["kinko.io/status"] = json!("injected");
    assert_eq!(after["metadata"]["annotations"], annotations);
    rest_before["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("annotations");
    rest_after["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("annotations");
    assert_eq!(
        rest_before, rest_after,
        "everything else is byte-for-byte the same"
    );
}

/// The selected container runs envrun with these options, then exactly `program`.
fn check_envrun(container: &Value, options: &[&str], program: &[String]) {
    let command = strings(&container["command"]);
    let (envrun, rest) = split_command(&command);
    assert_eq!(envrun, options, "envrun options");
    assert_eq!(rest, program, "the original command, exactly, behind --");
    let env = container["env"].as_array().unwrap();
    let tail: Vec<_> = env[env.len() - 2..].to_vec();
    assert_eq!(
        tail,
        [
            json!({"name": "KINKO_ADDR", "value": ADDR}),
            json!({"name": "KINKO_CACERT", "value": CA_PATH}),
        ]
    );
    let mounts = container["volumeMounts"].as_array().unwrap();
    assert_eq!(
        mounts[mounts.len() - 2..].to_vec(),
        [
            json!({"name": "kinko-envrun", "mountPath": "/kinko", "readOnly": true}),
            json!({"name": "kinko-token", "mountPath": "/var/run/secrets/kinko.io", "readOnly": true}),
        ]
    );
}

fn envrun_options<'a>(role: &'a str, secrets: &[&'a str]) -> Vec<&'a str> {
    let mut options = vec![
        ENVRUN_PATH,
        "--k8s-role",
        role,
        "--k8s-token-path",
        TOKEN_PATH,
    ];
    for secret in secrets {
        options.push("--secret");
        options.push(secret);
    }
    options.push("--");
    options
}

fn check_pod_wide(pod: &Value) {
    let install = &pod["spec"]["initContainers"][0];
    assert_eq!(install["name"], INSTALL_CONTAINER);
    assert_eq!(install["image"], "registry.example.com/kinko/envrun:0.1.0");
    assert_eq!(install["command"], json!(["/envrun", "install", "/kinko"]));
    assert_eq!(
        install["env"],
        json!([{"name": "KINKO_INSTALL_CA_PEM", "value": CA}])
    );
    let security = &install["securityContext"];
    assert_eq!(security["runAsNonRoot"], true);
    assert_eq!(security["runAsUser"], 65532);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(security["seccompProfile"]["type"], "RuntimeDefault");
    assert!(install["resources"]["limits"]["memory"].is_string());
    assert!(install["resources"]["requests"]["cpu"].is_string());
    assert!(
        install.get("volumeMounts").unwrap()[0]["readOnly"].is_null(),
        "the install container writes the volume"
    );
    let volumes = pod["spec"]["volumes"].as_array().unwrap();
    let envrun = volumes
        .iter()
        .find(|v| v["name"] == "kinko-envrun")
        .unwrap();
    assert_eq!(
        envrun["emptyDir"],
        json!({"medium": "Memory", "sizeLimit": "16Mi"})
    );
    let token = volumes.iter().find(|v| v["name"] == "kinko-token").unwrap();
    assert_eq!(
        token["projected"]["sources"],
        json!([{"serviceAccountToken": {"audience": "kinko", "expirationSeconds": 600, "path": "token"}}])
    );
}

#[test]
fn deployment_pod_is_injected_and_nothing_else_changes() {
    let review = fixture("deployment-pod.json");
    let answer = send(&review);
    let pod = patched(&review, &answer);
    let before = &review["request"]["object"];
    check_only_injection_changed(before, &pod, &[("containers", "api")]);
    check_pod_wide(&pod);
    let api = container(&pod, "containers", "api");
    check_envrun(
        api,
        &envrun_options(
            "payments-api",
            &["secret/payments/db", "secret/payments/stripe#api_key"],
        ),
        &strings(&container(before, "containers", "api")["command"]),
    );
    // argv = command + args: the original program and arguments, unchanged, behind `--`.
    assert_eq!(api["args"], container(before, "containers", "api")["args"]);
    // The kinko: value stays a reference: envrun resolves it, the Pod spec never holds a secret.
    assert_eq!(api["env"][1]["value"], "kinko:secret/payments/db#url");
}

#[test]
fn multi_container_pod_injects_only_the_selected_container() {
    let review = fixture("multi-container-pod.json");
    let pod = patched(&review, &send(&review));
    let before = &review["request"]["object"];
    check_only_injection_changed(before, &pod, &[("containers", "app")]);
    check_pod_wide(&pod);
    check_envrun(
        container(&pod, "containers", "app"),
        &envrun_options("checkout", &["secret/shop/checkout"]),
        &["/app/checkout".to_owned(), "serve".to_owned()],
    );
    assert_eq!(
        pod["spec"]["initContainers"][1], before["spec"]["initContainers"][0],
        "the Pod's own init container runs after the install one, untouched"
    );
    let app = container(&pod, "containers", "app");
    assert_eq!(app["envFrom"], before["spec"]["containers"][0]["envFrom"]);
    assert_eq!(
        app["env"][0]["value"],
        "kinko:sealed:v1:AAAAAQ5hbXBsZS1jaXBoZXJ0ZXh0LW5vdC1yZWFs"
    );
    let envoy = container(&pod, "containers", "envoy");
    assert!(envoy.get("command").is_none());
    assert!(
        !envoy["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "kinko-token"),
        "the token is mounted only into selected containers"
    );
}

#[test]
fn pod_without_command_is_denied_with_the_fix() {
    let review = fixture("pod-no-command.json");
    let answer = send(&review);
    assert_eq!(answer.outcome, Outcome::Denied);
    let message = answer.message.unwrap();
    for part in [
        "container report has no command",
        "ENTRYPOINT",
        "set command",
        "kinko.io/command-report",
    ] {
        assert!(message.contains(part), "{part:?} in {message}");
    }
    let request = mutate::parse(&serde_json::to_vec(&review).unwrap()).unwrap();
    assert_eq!(
        request.images_to_resolve(&settings()),
        BTreeSet::from(["registry.example.com/analytics/report:2026.11".to_owned()]),
        "the adapter is told which image to resolve"
    );
}

#[test]
fn pod_without_command_runs_a_resolved_entrypoint() {
    let review = fixture("pod-no-command.json");
    let images = ImageCommands::from([(
        "registry.example.com/analytics/report:2026.11".to_owned(),
        ImageCommand {
            entrypoint: vec!["/usr/bin/report".into()],
            cmd: vec!["--daily".into(), "$(NOT_A_VAR)".into()],
        },
    )]);
    let answer = send_with(&review, &images);
    assert_eq!(answer.outcome, Outcome::Mutated, "{:?}", answer.message);
    let pod = patched(&review, &answer);
    let report = container(&pod, "containers", "report");
    let command = strings(&report["command"]);
    assert_eq!(split_command(&command).1, ["/usr/bin/report"]);
    // With `command` set Kubernetes ignores the image CMD, so it moves into `args`, escaped:
    // `$(..)` from an image is literal, not a Kubernetes variable reference.
    assert_eq!(report["args"], json!(["--daily", "$$(NOT_A_VAR)"]));
}

#[test]
fn command_annotation_gives_the_program() {
    let mut review = fixture("pod-no-command.json");
    review["request"]["object"]["metadata"]["annotations"]["kinko.io/command-report"] =
        json!(r#"["/usr/bin/report", "--daily"]"#);
    let pod = patched(&review, &send(&review));
    check_only_injection_changed(
        &review["request"]["object"],
        &pod,
        &[("containers", "report")],
    );
    check_envrun(
        container(&pod, "containers", "report"),
        &envrun_options("reports", &["secret/analytics/warehouse"]),
        &["/usr/bin/report".to_owned(), "--daily".to_owned()],
    );
    for bad in ["/usr/bin/report --daily", "[]", r#"[""]"#, r#"[1]"#, "{}"] {
        review["request"]["object"]["metadata"]["annotations"]["kinko.io/command-report"] =
            json!(bad);
        let answer = send(&review);
        assert_eq!(answer.outcome, Outcome::Denied, "{bad:?}");
        assert!(answer
            .message
            .unwrap()
            .contains("kinko.io/command-report must be a JSON array"));
    }
}

#[test]
fn args_without_command_is_denied_naming_the_container() {
    let mut review = fixture("multi-container-pod.json");
    review["request"]["object"]["metadata"]["annotations"]["kinko.io/containers"] =
        json!("app, envoy");
    let answer = send(&review);
    assert_eq!(answer.outcome, Outcome::Denied);
    let message = answer.message.unwrap();
    assert!(
        message.contains("container envoy has no command")
            && message.contains("kinko.io/command-envoy"),
        "{message}"
    );
    // Given the program, envoy's own args follow it.
    review["request"]["object"]["metadata"]["annotations"]["kinko.io/command-envoy"] =
        json!(r#"["/usr/local/bin/envoy"]"#);
    let pod = patched(&review, &send(&review));
    check_only_injection_changed(
        &review["request"]["object"],
        &pod,
        &[("containers", "app"), ("containers", "envoy")],
    );
    let envoy = container(&pod, "containers", "envoy");
    assert_eq!(
        split_command(&strings(&envoy["command"])).1,
        ["/usr/local/bin/envoy"]
    );
    assert_eq!(envoy["args"], json!(["-c", "/etc/envoy/envoy.yaml"]));
}

#[test]
fn opted_in_init_container_is_rewritten_in_place() {
    let mut review = fixture("multi-container-pod.json");
    review["request"]["object"]["metadata"]["annotations"]["kinko.io/init-containers"] =
        json!("migrate");
    let pod = patched(&review, &send(&review));
    check_only_injection_changed(
        &review["request"]["object"],
        &pod,
        &[("containers", "app"), ("initContainers", "migrate")],
    );
    let inits = pod["spec"]["initContainers"].as_array().unwrap();
    assert_eq!(inits[0]["name"], INSTALL_CONTAINER);
    assert_eq!(inits[1]["name"], "migrate", "in place, after the install");
    check_envrun(
        &inits[1],
        &envrun_options("checkout", &["secret/shop/checkout"]),
        &["/app/checkout".to_owned()],
    );
    assert_eq!(inits[1]["args"], json!(["migrate"]));
}

#[test]
fn statefulset_pod_is_injected() {
    let mut review = fixture("deployment-pod.json");
    let object = &mut review["request"]["object"];
    let metadata = object["metadata"].as_object_mut().unwrap();
    metadata.remove("generateName");
    metadata.insert("name".into(), json!("ledger-0"));
    metadata.insert(
        "ownerReferences".into(),
        json!([{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "ledger",
                "uid": "0e7c4b1a-0000-4000-8000-000000000001", "controller": true, "blockOwnerDeletion": true}]),
    );
    metadata["labels"]["statefulset.kubernetes.io/pod-name"] = json!("ledger-0");
    metadata["labels"]["apps.kubernetes.io/pod-index"] = json!("0");
    object["spec"]["hostname"] = json!("ledger-0");
    object["spec"]["subdomain"] = json!("ledger");
    object["spec"]["volumes"].as_array_mut().unwrap().insert(
        0,
        json!({"name": "data", "persistentVolumeClaim": {"claimName": "data-ledger-0"}}),
    );
    object["spec"]["containers"][0]["volumeMounts"]
        .as_array_mut()
        .unwrap()
        .insert(0, json!({"name": "data", "mountPath": "/var/lib/ledger"}));
    object["spec"]["unknownFutureField"] = json!({"kept": [1, 2, 3]});
    review["request"]["name"] = json!("ledger-0");
    let pod = patched(&review, &send(&review));
    check_only_injection_changed(&review["request"]["object"], &pod, &[("containers", "api")]);
    assert_eq!(
        pod["spec"]["unknownFutureField"],
        json!({"kept": [1, 2, 3]})
    );
    assert_eq!(pod["spec"]["volumes"][0]["name"], "data");
}

#[test]
fn kinko_values_alone_select_a_container() {
    let mut review = fixture("deployment-pod.json");
    let annotations = review["request"]["object"]["metadata"]["annotations"]
        .as_object_mut()
        .unwrap();
    annotations.remove("kinko.io/secrets");
    annotations.remove("kinko.io/role");
    let pod = patched(&review, &send(&review));
    check_envrun(
        container(&pod, "containers", "api"),
        &envrun_options("payments-api", &[]),
        &["/app/payments-api".to_owned()],
    );
    // Nothing to fetch anywhere: allowed unchanged, with a warning.
    review["request"]["object"]["spec"]["containers"][0]["env"][1]["value"] = json!("plain");
    let answer = send(&review);
    assert_eq!(answer.outcome, Outcome::Unchanged);
    assert!(
        answer.response["response"]["warnings"][0]
            .as_str()
            .unwrap()
            .contains("nothing")
            || answer.response["response"]["warnings"][0]
                .as_str()
                .unwrap()
                .contains("no container")
    );
}

#[test]
fn role_defaults_and_naming_flags() {
    let mut review = fixture("deployment-pod.json");
    let annotations = review["request"]["object"]["metadata"]["annotations"]
        .as_object_mut()
        .unwrap();
    annotations.remove("kinko.io/role");
    annotations.insert(
        "kinko.io/envrun-args".into(),
        json!("--upcase  --prefix APP_ --no-prefix-path --sanitize"),
    );
    annotations.insert(
        "kinko.io/secrets".into(),
        json!(" secret/a$(HOME)#k=TOKEN ,secret/b "),
    );
    let pod = patched(&review, &send(&review));
    let command = strings(&container(&pod, "containers", "api")["command"]);
    assert_eq!(
        split_command(&command).0,
        [
            ENVRUN_PATH,
            "--k8s-role",
            "payments-api",
            "--k8s-token-path",
            TOKEN_PATH,
            "--secret",
            "secret/a$$(HOME)#k=TOKEN",
            "--secret",
            "secret/b",
            "--prefix",
            "APP_",
            "--upcase",
            "--sanitize",
            "--no-prefix-path",
            "--",
        ],
        "service account as role; $ escaped against Kubernetes expansion"
    );
    review["request"]["object"]["spec"]
        .as_object_mut()
        .unwrap()
        .remove("serviceAccountName");
    review["request"]["object"]["spec"]
        .as_object_mut()
        .unwrap()
        .remove("serviceAccount");
    let pod = patched(&review, &send(&review));
    let command = strings(&container(&pod, "containers", "api")["command"]);
    assert_eq!(command[2], "default");
}

fn denied(review: &Value) -> String {
    let answer = send(review);
    assert_eq!(answer.outcome, Outcome::Denied, "{:?}", answer.response);
    let message = answer.message.unwrap();
    assert!(
        message.len() < 2048,
        "bounded message: {} bytes",
        message.len()
    );
    message
}

#[test]
fn bad_annotations_deny_naming_the_annotation() {
    let cases: &[(&str, &str, &str)] = &[
        ("kinko.io/secrets", "secret/a#", "kinko.io/secrets"),
        ("kinko.io/secrets", "secret/a,,secret/b", "kinko.io/secrets"),
        ("kinko.io/secrets", "secret/a=NAME", "kinko.io/secrets"),
        (
            "kinko.io/secrets",
            "--token-file=/etc/passwd",
            "kinko.io/secrets",
        ),
        ("kinko.io/secrets", "secret/a#api-key", "--sanitize"),
        ("kinko.io/envrun-args", "--pristine", "kinko.io/envrun-args"),
        (
            "kinko.io/envrun-args",
            "--upcase -- sh -c x",
            "kinko.io/envrun-args",
        ),
        ("kinko.io/envrun-args", "--prefix", "kinko.io/envrun-args"),
        ("kinko.io/role", "pay ments", "kinko.io/role"),
        ("kinko.io/role", "", "kinko.io/role"),
        (
            "kinko.io/containers",
            "api,nope",
            "which the Pod does not have",
        ),
        ("kinko.io/containers", "api,", "kinko.io/containers"),
        (
            "kinko.io/init-containers",
            "migrate",
            "kinko.io/init-containers",
        ),
        (
            "kinko.io/command-ghost",
            "[\"/x\"]",
            "kinko.io/command-ghost",
        ),
    ];
    for (key, value, expected) in cases {
        let mut review = fixture("deployment-pod.json");
        review["request"]["object"]["metadata"]["annotations"][*key] = json!(value);
        let message = denied(&review);
        assert!(
            message.contains(expected),
            "{key}={value:?}: {expected:?} in {message}"
        );
    }
    let mut review = fixture("deployment-pod.json");
    review["request"]["object"]["metadata"]["annotations"]["kinko.io/secrets"] = json!(5);
    assert!(denied(&review).contains("kinko.io/secrets is not a string"));
}

#[test]
fn names_the_injector_adds_are_not_taken_over() {
    let mut volume = fixture("deployment-pod.json");
    volume["request"]["object"]["spec"]["volumes"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "kinko-token", "emptyDir": {}}));
    assert!(denied(&volume).contains("volume named kinko-token"));
    let mut init = fixture("multi-container-pod.json");
    init["request"]["object"]["spec"]["initContainers"][0]["name"] = json!(INSTALL_CONTAINER);
    assert!(denied(&init).contains("container named kinko-envrun-install"));
    let mut mount = fixture("deployment-pod.json");
    mount["request"]["object"]["spec"]["containers"][0]["volumeMounts"][0]["mountPath"] =
        json!("/kinko/");
    assert!(denied(&mount).contains("already mounted at /kinko"));
    for variable in ["KINKO_ADDR", "VAULT_CACERT", "KINKO_TOKEN"] {
        let mut env = fixture("deployment-pod.json");
        env["request"]["object"]["spec"]["containers"][0]["env"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": variable, "value": "https://evil.example"}));
        let message = denied(&env);
        assert!(message.contains(variable), "{message}");
    }
    // A container that is not selected may use Vault on its own.
    let mut sidecar = fixture("multi-container-pod.json");
    sidecar["request"]["object"]["spec"]["containers"][1]["env"] =
        json!([{"name": "VAULT_ADDR", "value": "https://vault.example:8200"}]);
    let pod = patched(&sidecar, &send(&sidecar));
    check_only_injection_changed(
        &sidecar["request"]["object"],
        &pod,
        &[("containers", "app")],
    );
    sidecar["request"]["object"]["metadata"]["annotations"]["kinko.io/containers"] =
        json!("app,envoy");
    sidecar["request"]["object"]["metadata"]["annotations"]["kinko.io/command-envoy"] =
        json!("[\"/envoy\"]");
    assert!(denied(&sidecar).contains("container envoy: env sets VAULT_ADDR"));
    let mut reference = fixture("deployment-pod.json");
    reference["request"]["object"]["spec"]["containers"][0]["env"][1]["value"] =
        json!("kinko:secret/payments/db");
    assert!(denied(&reference).contains("DATABASE_URL"));
}

#[test]
fn left_alone() {
    // Not a Pod, not annotated: the fixtures.
    for name in ["configmap.json", "not-annotated-pod.json"] {
        let answer = send(&fixture(name));
        assert_eq!(answer.outcome, Outcome::Unchanged, "{name}");
        assert!(answer.response["response"].get("warnings").is_none());
    }
    let base = fixture("deployment-pod.json");
    // UPDATE and DELETE (which carries only oldObject).
    for operation in ["UPDATE", "DELETE", "CONNECT"] {
        let mut review = base.clone();
        review["request"]["operation"] = json!(operation);
        if operation == "DELETE" {
            review["request"]["oldObject"] = review["request"]["object"].take();
        }
        assert_eq!(send(&review).outcome, Outcome::Unchanged, "{operation}");
    }
    // Excluded namespace: unchanged, and told why.
    let mut excluded = base.clone();
    excluded["request"]["namespace"] = json!("kube-system");
    let answer = send(&excluded);
    assert_eq!(answer.outcome, Outcome::Unchanged);
    assert!(answer.response["response"]["warnings"][0]
        .as_str()
        .unwrap()
        .contains("kube-system"));
    // Mirror Pods, already injected Pods, subresources, other inject values.
    let mut mirror = base.clone();
    mirror["request"]["object"]["metadata"]["annotations"]["kubernetes.io/config.mirror"] =
        json!("abc");
    assert_eq!(send(&mirror).outcome, Outcome::Unchanged);
    let mut injected = base.clone();
    injected["request"]["object"]["metadata"]["annotations"]["kinko.io/status"] = json!("injected");
    assert_eq!(send(&injected).outcome, Outcome::Unchanged);
    let mut binding = base.clone();
    binding["request"]["subResource"] = json!("binding");
    assert_eq!(send(&binding).outcome, Outcome::Unchanged);
    let mut yes = base.clone();
    yes["request"]["object"]["metadata"]["annotations"]["kinko.io/inject"] = json!("yes");
    let answer = send(&yes);
    assert_eq!(answer.outcome, Outcome::Unchanged);
    assert!(answer.response["response"]["warnings"][0]
        .as_str()
        .unwrap()
        .contains("only \"true\""));
}

#[test]
fn dry_run_gets_the_same_patch() {
    let review = fixture("deployment-pod.json");
    let mut dry = review.clone();
    dry["request"]["dryRun"] = json!(true);
    assert_eq!(
        send(&review).response["response"]["patch"],
        send(&dry).response["response"]["patch"]
    );
}

#[test]
fn unknown_kinko_annotations_warn() {
    let mut review = fixture("deployment-pod.json");
    review["request"]["object"]["metadata"]["annotations"]["kinko.io/secret"] = json!("x");
    let answer = send(&review);
    assert_eq!(answer.outcome, Outcome::Mutated);
    assert_eq!(
        answer.response["response"]["warnings"],
        json!(["unknown annotation kinko.io/secret ignored"])
    );
}

#[test]
fn not_admission_reviews_are_errors_not_panics() {
    let uid = json!({"uid": "u"});
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"".to_vec(), "not JSON"),
        (b"{\"apiVersion\":".to_vec(), "not JSON"),
        (b"[1,2]".to_vec(), "not a JSON object"),
        (
            serde_json::to_vec(&json!({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": uid})).unwrap(),
            "only admission.k8s.io/v1",
        ),
        (
            serde_json::to_vec(&json!({"apiVersion": "admission.k8s.io/v1", "kind": "Pod", "request": uid})).unwrap(),
            "expected AdmissionReview",
        ),
        (
            serde_json::to_vec(&json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"})).unwrap(),
            "request is missing",
        ),
        (
            serde_json::to_vec(&json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": ""}})).unwrap(),
            "request.uid",
        ),
        (
            serde_json::to_vec(&json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": "x".repeat(100_000)}})).unwrap(),
            "request.uid",
        ),
        // 100,000 levels deep: serde_json's recursion limit, not a stack overflow.
        ([b"[".repeat(100_000), b"]".repeat(100_000)].concat(), "not JSON"),
    ];
    for (body, expected) in cases {
        let error = mutate::review(&body, &settings(), &ImageCommands::new()).unwrap_err();
        assert!(error.0.contains(expected), "{expected:?} in {error}");
        assert!(error.0.len() < 300, "bounded: {error}");
    }
    // An AdmissionReview whose object is not a Pod shape is denied, with the uid echoed.
    let mut review = fixture("deployment-pod.json");
    review["request"]["object"]["spec"]["containers"] = json!({"api": {}});
    assert!(denied(&review).contains("containers is not a list"));
    review["request"]["object"] = json!(7);
    assert!(denied(&review).contains("not a Pod"));
}

#[test]
fn a_huge_annotation_is_denied_quickly() {
    let mut review = fixture("deployment-pod.json");
    review["request"]["object"]["metadata"]["annotations"]["kinko.io/secrets"] =
        json!("secret/a,".repeat(1 << 17));
    let started = Instant::now();
    let message = denied(&review);
    assert!(
        message.contains("kinko.io/secrets is 1179648 bytes"),
        "{message}"
    );
    let mut review = fixture("deployment-pod.json");
    review["request"]["object"]["metadata"]["annotations"]["kinko.io/secrets"] =
        json!(format!("secret/{}#", "a".repeat(30_000)));
    let message = denied(&review);
    assert!(message.contains("kinko.io/secrets"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[test]
fn ten_thousand_containers_in_bounded_time() {
    let mut review = fixture("deployment-pod.json");
    // Small containers: 10,000 of them fit in the API server's ~3 MiB object limit.
    let containers: Vec<Value> = (0..10_000)
        .map(|i| {
            json!({
                "name": format!("c{i}"),
                "image": "registry.example.com/app:1",
                "command": ["/app"],
                "env": [{"name": "DB", "value": "kinko:secret/db#url"}],
            })
        })
        .collect();
    review["request"]["object"]["spec"]["containers"] = json!(containers);
    let body = serde_json::to_vec(&review).unwrap();
    let started = Instant::now();
    let answer = mutate::review(&body, &settings(), &ImageCommands::new()).unwrap();
    let elapsed = started.elapsed();
    assert_eq!(answer.outcome, Outcome::Mutated);
    println!(
        "10,000 containers ({} KiB): review in {elapsed:?}",
        body.len() / 1024
    );
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    // Naming one missing container among them lists only a few in the message.
    review["request"]["object"]["metadata"]["annotations"]["kinko.io/containers"] = json!("nope");
    let message = denied(&review);
    assert!(message.contains("c0, c1") && message.contains("..."));
    patched(
        &fixture("deployment-pod.json"),
        &send(&fixture("deployment-pod.json")),
    );
}
