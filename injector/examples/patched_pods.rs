//! Writes each injected fixture Pod (the shared AdmissionReview fixtures, reviewed by the pure
//! `mutate`, the patch applied) as `<fixture>.pod.json` into a directory, for offline schema
//! validation by `deploy/test.sh` (kubernetes-validate --strict). Exits non-zero when a fixture
//! that must be injected is not, so a patch that produces nothing cannot pass as valid.
//!
//! `cargo run -p kinko-injector --example patched_pods -- FIXTURES_DIR OUT_DIR`

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;

use base64::Engine;
use kinko_injector::mutate::{self, ImageCommand, ImageCommands, Outcome, Settings};
use serde_json::Value;

/// The fixtures that are injected; `pod-no-command.json` through a resolved ENTRYPOINT.
const INJECTED: [&str; 3] = [
    "deployment-pod.json",
    "multi-container-pod.json",
    "pod-no-command.json",
];

fn main() -> ExitCode {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [fixtures, out] = args.as_slice() else {
        eprintln!("usage: patched_pods FIXTURES_DIR OUT_DIR");
        return ExitCode::from(2);
    };
    let settings = Settings {
        kinko_addr: "https://kinko.kinko-system.svc:8200".into(),
        ca_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
        envrun_image: "registry.example.com/kinko/envrun:0.1.0".into(),
        audience: "kinko".into(),
        token_expiration_seconds: 600,
        excluded_namespaces: BTreeSet::from(["kube-system".to_owned()]),
    };
    let images = ImageCommands::from([(
        "registry.example.com/analytics/report:2026.11".to_owned(),
        ImageCommand {
            entrypoint: vec!["/bin/report".into()],
            cmd: vec!["--daily".into()],
        },
    )]);
    std::fs::create_dir_all(out).expect("create the output directory");
    for name in INJECTED {
        let path = fixtures.join(name);
        let body = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let review = mutate::review(&body, &settings, &images).expect("an AdmissionReview");
        if review.outcome != Outcome::Mutated {
            eprintln!(
                "{name}: not injected ({:?}): {:?}",
                review.outcome, review.message
            );
            return ExitCode::FAILURE;
        }
        let patch = base64::engine::general_purpose::STANDARD
            .decode(review.response["response"]["patch"].as_str().unwrap())
            .unwrap();
        let patch: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
        let request: Value = serde_json::from_slice(&body).unwrap();
        let mut pod = request["request"]["object"].clone();
        if let Err(e) = json_patch::patch(&mut pod, &patch) {
            eprintln!("{name}: the patch does not apply: {e}");
            return ExitCode::FAILURE;
        }
        let target = out.join(name.replace(".json", ".pod.json"));
        std::fs::write(&target, serde_json::to_vec_pretty(&pod).unwrap()).unwrap();
        println!("{}", target.display());
    }
    ExitCode::SUCCESS
}
