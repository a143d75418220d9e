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
    conflict_retries: AtomicU64,
    sealed_decrypts: [AtomicU64; 2],
    audit_writes: [AtomicU64; 2],
}

/// The DynamoDB API calls the storage backend makes; each is counted per attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DynamoOperation {
    GetItem,
    Query,
    TransactWriteItems,
    BatchWriteItem,
}

/// The API names, in the order of [`DynamoOperation`]'s variants.
const DYNAMODB_OPERATIONS: [&str; 4] = ["GetItem", "Query", "TransactWriteItems", "BatchWriteItem"];

impl DynamoOperation {
    /// The API name, as AWS documents and CloudTrail shows it.
    pub fn name(self) -> &'static str {
        DYNAMODB_OPERATIONS[self as usize]
    }
}

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
    conflict_retries: AtomicU64::new(0),
    sealed_decrypts: [const { AtomicU64::new(0) }; 2],
    audit_writes: [const { AtomicU64::new(0) }; 2],
};

impl Metrics {
    pub fn request(&self, status: u16) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.requests[class].fetch_add(1, Relaxed);
    }

    pub fn audit_write(&self, succeeded: bool) {
        self.audit_writes[usize::from(!succeeded)].fetch_add(1, Relaxed);
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

    pub fn dynamodb_request(&self, operation: DynamoOperation) {
        self.dynamodb_requests[operation as usize].fetch_add(1, Relaxed);
    }

    pub fn aws_retry(&self) {
        self.aws_retries.fetch_add(1, Relaxed);
    }

    pub fn conflict_retry(&self) {
        self.conflict_retries.fetch_add(1, Relaxed);
    }

    /// A sealed value opened by `sealed/decrypt`: of the current epoch, or an older one (a
    /// sign that the repository still holds values to rewrap).
    pub fn sealed_decrypt(&self, current_epoch: bool) {
        self.sealed_decrypts[usize::from(!current_epoch)].fetch_add(1, Relaxed);
    }

    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, samples: &[(String, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        let unlabelled = |n: &AtomicU64| vec![(String::new(), n.load(Relaxed))];
        counter(
            "kinko_http_requests_total",
            "HTTP API responses by status class.",
            &by_label("code", &STATUS_CLASSES, &self.requests),
        );
        counter(
            "kinko_storage_operations_total",
            "Calls to the storage backend by kind.",
            &by_label(
                "op",
                &["get", "list", "transact"],
                [
                    &self.storage_reads,
                    &self.storage_lists,
                    &self.storage_transactions,
                ],
            ),
        );
        counter(
            "kinko_storage_conflicts_total",
            "Transactions refused by a failed precondition (check-and-set races).",
            &unlabelled(&self.storage_conflicts),
        );
        counter(
            "kinko_conflict_retries_total",
            "Read-check-write attempts repeated after losing a race (see retry.rs).",
            &unlabelled(&self.conflict_retries),
        );
        counter(
            "kinko_dynamodb_requests_total",
            "DynamoDB API requests sent, retries included.",
            &by_label("operation", &DYNAMODB_OPERATIONS, &self.dynamodb_requests),
        );
        counter(
            "kinko_aws_retries_total",
            "AWS calls repeated after throttling or a transient failure.",
            &unlabelled(&self.aws_retries),
        );
        counter(
            "kinko_auth_logins_total",
            "Auth method logins by outcome.",
            &by_label(
                "outcome",
                &["succeeded", "refused"],
                [&self.logins_succeeded, &self.logins_refused],
            ),
        );
        counter(
            "kinko_sealed_decrypt_total",
            "Sealed values decrypted, by the age of their epoch.",
            &by_label("epoch_age", &["current", "old"], &self.sealed_decrypts),
        );
        counter(
            "kinko_audit_writes_total",
            "Entries written to audit devices, by result (a request no device records is refused).",
            &by_label("result", &["ok", "failed"], &self.audit_writes),
        );
        out
    }
}

/// One sample per fixed label value: `{label="value"} count`.
fn by_label<'a>(
    label: &str,
    values: &[&str],
    counts: impl IntoIterator<Item = &'a AtomicU64>,
) -> Vec<(String, u64)> {
    values
        .iter()
        .zip(counts)
        .map(|(value, n)| (format!("{{{label}=\"{value}\"}}"), n.load(Relaxed)))
        .collect()
}
