//! Runs the pure review of one AdmissionReview file N times (default 1000), for an instruction
//! count per review under `valgrind --tool=callgrind` (bench/injector.sh).
//!
//! `review_loop FILE [N]`

use std::collections::BTreeSet;

use kinko_injector::mutate::{self, ImageCommands, Outcome, Settings};

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("usage: review_loop FILE [N]");
    let n: usize = args.next().map_or(1000, |n| n.parse().expect("N"));
    let body = std::fs::read(&path).expect("read the AdmissionReview");
    let settings = Settings {
        kinko_addr: "https://kinko.kinko-system.svc:8200".into(),
        ca_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
        envrun_image: "registry.example.com/kinko/envrun:0.1.0".into(),
        audience: "kinko".into(),
        token_expiration_seconds: 600,
        excluded_namespaces: BTreeSet::from(["kube-system".to_owned()]),
    };
    let images = ImageCommands::new();
    let mut mutated = 0;
    for _ in 0..n {
        let review =
            mutate::review(std::hint::black_box(&body), &settings, &images).expect("a review");
        mutated += usize::from(review.outcome == Outcome::Mutated);
    }
    println!("{mutated} of {n} reviews mutated");
}
