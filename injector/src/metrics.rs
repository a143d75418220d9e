//! Process-wide counters for `GET /metrics` (Prometheus text): reviews by outcome and a latency
//! histogram. *Invariant:* labels are fixed strings; nothing from a request reaches them.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds.
pub const BUCKETS: [f64; 11] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// The outcome labels, in the order of [`Metrics::reviews`].
pub const OUTCOMES: [&str; 4] = ["mutated", "unchanged", "denied", "error"];

#[derive(Default)]
pub struct Metrics {
    reviews: [AtomicU64; 4],
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Metrics {
    /// One review with outcome `label` (one of [`OUTCOMES`]) that took `elapsed`.
    pub fn record(&self, label: &'static str, elapsed: Duration) {
        let index = OUTCOMES
            .iter()
            .position(|o| *o == label)
            .unwrap_or(OUTCOMES.len() - 1);
        self.reviews[index].fetch_add(1, Ordering::Relaxed);
        let seconds = elapsed.as_secs_f64();
        for (bound, bucket) in BUCKETS.iter().zip(&self.buckets) {
            if seconds <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(
            u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP kinko_injector_reviews_total AdmissionReviews answered, by outcome.\n",
        );
        out.push_str("# TYPE kinko_injector_reviews_total counter\n");
        for (label, counter) in OUTCOMES.iter().zip(&self.reviews) {
            let _ = writeln!(
                out,
                "kinko_injector_reviews_total{{outcome=\"{label}\"}} {}",
                counter.load(Ordering::Relaxed)
            );
        }
        out.push_str("# HELP kinko_injector_review_duration_seconds Time to answer one AdmissionReview (body read to response).\n");
        out.push_str("# TYPE kinko_injector_review_duration_seconds histogram\n");
        for (bound, bucket) in BUCKETS.iter().zip(&self.buckets) {
            let _ = writeln!(
                out,
                "kinko_injector_review_duration_seconds_bucket{{le=\"{bound}\"}} {}",
                bucket.load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "kinko_injector_review_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "kinko_injector_review_duration_seconds_sum {}",
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "kinko_injector_review_duration_seconds_count {count}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_cumulative_buckets() {
        let metrics = Metrics::default();
        metrics.record("mutated", Duration::from_micros(300));
        metrics.record("denied", Duration::from_millis(20));
        metrics.record("nonsense", Duration::from_secs(3));
        let text = metrics.render();
        assert!(text.contains("kinko_injector_reviews_total{outcome=\"mutated\"} 1"));
        assert!(text.contains("kinko_injector_reviews_total{outcome=\"denied\"} 1"));
        assert!(text.contains("kinko_injector_reviews_total{outcome=\"error\"} 1"));
        assert!(text.contains("kinko_injector_reviews_total{outcome=\"unchanged\"} 0"));
        assert!(text.contains("_bucket{le=\"0.0005\"} 1\n"));
        assert!(text.contains("_bucket{le=\"0.025\"} 2\n"));
        assert!(text.contains("_bucket{le=\"1\"} 2\n"));
        assert!(text.contains("_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("kinko_injector_review_duration_seconds_count 3\n"));
    }
}
