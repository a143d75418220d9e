//! Process-wide counters, rendered in the Prometheus text format at `GET /v1/sys/metrics`.
//! Counters only carry fixed label values (never paths, names or tokens), so nothing a caller
//! sends can reach a label.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

pub struct Metrics {
    requests: [AtomicU64; STATUS_CLASSES.len()],
    storage_reads: AtomicU64,
    storage_lists: AtomicU64,
    storage_transactions: AtomicU64,
    storage_conflicts: AtomicU64,
    logins_succeeded: AtomicU64,
    logins_refused: AtomicU64,
    dynamodb_requests: [AtomicU64; DYNAMODB_OPERATIONS.len()],
    aws_retries: AtomicU64,
}

/// The DynamoDB API calls the storage backend makes; each is counted per attempt.
pub const DYNAMODB_OPERATIONS: [&str; 4] =
    ["GetItem", "Query", "TransactWriteItems", "BatchWriteItem"];

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

pub static METRICS: Metrics = Metrics {
    requests: [const { AtomicU64::new(0) }; STATUS_CLASSES.len()],
    storage_reads: AtomicU64::new(0),
    storage_lists: AtomicU64::new(0),
    storage_transactions: AtomicU64::new(0),
    storage_conflicts: AtomicU64::new(0),
    logins_succeeded: AtomicU64::new(0),
    logins_refused: AtomicU64::new(0),
    dynamodb_requests: [const { AtomicU64::new(0) }; DYNAMODB_OPERATIONS.len()],
    aws_retries: AtomicU64::new(0),
};

impl Metrics {
    pub fn request(&self, status: u16) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.requests[class].fetch_add(1, Relaxed);
    }

    pub fn storage_read(&self) {
        self.storage_reads.fetch_add(1, Relaxed);
    }

    pub fn storage_list(&self) {
        self.storage_lists.fetch_add(1, Relaxed);
    }

    pub fn storage_transaction(&self, conflict: bool) {
        self.storage_transactions.fetch_add(1, Relaxed);
        if conflict {
            self.storage_conflicts.fetch_add(1, Relaxed);
        }
    }

    pub fn login(&self, succeeded: bool) {
        if succeeded {
            &self.logins_succeeded
        } else {
            &self.logins_refused
        }
        .fetch_add(1, Relaxed);
    }

    /// `operation` is one of [`DYNAMODB_OPERATIONS`].
    pub fn dynamodb_request(&self, operation: &str) {
        if let Some(at) = DYNAMODB_OPERATIONS.iter().position(|o| *o == operation) {
            self.dynamodb_requests[at].fetch_add(1, Relaxed);
        }
    }

    pub fn aws_retry(&self) {
        self.aws_retries.fetch_add(1, Relaxed);
    }

    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, samples: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        let requests: Vec<(String, u64)> = STATUS_CLASSES
            .iter()
            .zip(&self.requests)
            .map(|(class, n)| (format!("{{code=\"{class}\"}}"), n.load(Relaxed)))
            .collect();
        let requests: Vec<(&str, u64)> = requests.iter().map(|(l, n)| (l.as_str(), *n)).collect();
        counter(
            "kinko_http_requests_total",
            "HTTP API responses by status class.",
            &requests,
        );
        counter(
            "kinko_storage_operations_total",
            "Calls to the storage backend by kind.",
            &[
                ("{op=\"get\"}", self.storage_reads.load(Relaxed)),
                ("{op=\"list\"}", self.storage_lists.load(Relaxed)),
                ("{op=\"transact\"}", self.storage_transactions.load(Relaxed)),
            ],
        );
        counter(
            "kinko_storage_conflicts_total",
            "Transactions refused by a failed precondition (check-and-set races).",
            &[("", self.storage_conflicts.load(Relaxed))],
        );
        let dynamodb: Vec<(String, u64)> = DYNAMODB_OPERATIONS
            .iter()
            .zip(&self.dynamodb_requests)
            .map(|(op, n)| (format!("{{operation=\"{op}\"}}"), n.load(Relaxed)))
            .collect();
        let dynamodb: Vec<(&str, u64)> = dynamodb.iter().map(|(l, n)| (l.as_str(), *n)).collect();
        counter(
            "kinko_dynamodb_requests_total",
            "DynamoDB API requests sent, retries included.",
            &dynamodb,
        );
        counter(
            "kinko_aws_retries_total",
            "AWS calls repeated after throttling or a transient failure.",
            &[("", self.aws_retries.load(Relaxed))],
        );
        counter(
            "kinko_auth_logins_total",
            "Auth method logins by outcome.",
            &[
                (
                    "{outcome=\"succeeded\"}",
                    self.logins_succeeded.load(Relaxed),
                ),
                ("{outcome=\"refused\"}", self.logins_refused.load(Relaxed)),
            ],
        );
        out
    }
}
