//! AdmissionReview bodies as the API server (or anyone reaching the webhook) sends them. The
//! answer always echoes the uid, allows exactly when not denied, and carries a patch exactly
//! when it mutates; a patch applies to the Pod it was made for, and the patched Pod sent again
//! is left unchanged (a re-invocation never injects twice).
#![no_main]

use base64::Engine;
use kinko_injector::mutate::{self, ImageCommand, ImageCommands, Outcome, Settings};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn settings() -> Settings {
    Settings {
        kinko_addr: "https://kinko.kinko-system.svc:8200".into(),
        ca_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
        envrun_image: "registry.example.com/kinko/envrun:0.1.0".into(),
        audience: "kinko".into(),
        token_expiration_seconds: 600,
        excluded_namespaces: ["kube-system".to_owned()].into_iter().collect(),
    }
}

fn checked(body: &[u8], settings: &Settings) -> Option<(Value, mutate::Review)> {
    let request = mutate::parse(body).ok()?;
    // Every image the decision asks for resolves, so the image path is explored too.
    let images: ImageCommands = request
        .images_to_resolve(settings)
        .into_iter()
        .map(|image| {
            let command = ImageCommand {
                entrypoint: vec!["/app".into()],
                cmd: vec!["serve".into()],
            };
            (image, command)
        })
        .collect();
    let review = request.review(settings, &images);
    let response = &review.response["response"];
    assert_eq!(response["uid"].as_str(), Some(request.uid()));
    assert_eq!(
        response["allowed"].as_bool(),
        Some(review.outcome != Outcome::Denied)
    );
    assert_eq!(
        response.get("patch").is_some(),
        review.outcome == Outcome::Mutated
    );
    let original: Value = serde_json::from_slice(body).expect("parsed above");
    Some((original, review))
}

fuzz_target!(|data: &[u8]| {
    let settings = settings();
    let Some((original, review)) = checked(data, &settings) else {
        return;
    };
    if review.outcome != Outcome::Mutated {
        return;
    }
    let patch = base64::engine::general_purpose::STANDARD
        .decode(
            review.response["response"]["patch"]
                .as_str()
                .expect("a patch"),
        )
        .expect("base64");
    let patch: json_patch::Patch = serde_json::from_slice(&patch).expect("a JSON patch");
    let mut object = original["request"]["object"].clone();
    json_patch::patch(&mut object, &patch).expect("the patch applies to its Pod");
    let mut again = original;
    again["request"]["object"] = object;
    let body = serde_json::to_vec(&again).expect("serialises");
    let (_, second) = checked(&body, &settings).expect("still an AdmissionReview");
    assert_eq!(
        second.outcome,
        Outcome::Unchanged,
        "a patched Pod sent again changed: {:?}",
        second.message
    );
});
