//! Process-wide counters and latency histograms, rendered in the Prometheus text format at
//! `GET /v1/sys/metrics`. Labels only carry fixed values (never paths below a route template,
//! names or tokens), so nothing a caller sends can reach a label.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::Duration;

/// Upper bounds (seconds) of the latency histograms' buckets.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// A latency histogram: cumulative-at-render bucket counts, the count and the sum.
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub const fn new() -> Histogram {
        Histogram {
            buckets: [const { AtomicU64::new(0) }; BUCKETS.len()],
            count: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        if let Some(bucket) = BUCKETS.iter().position(|bound| seconds <= *bound) {
            self.buckets[bucket].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Relaxed);
    }

    /// The samples of one labelled series (`labels` without braces, e.g. `route="kv/data"`).
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        // Buckets before the count: under load the count may only be ahead of them, so no
        // bucket ever exceeds `+Inf`.
        let buckets: Vec<u64> = self.buckets.iter().map(|n| n.load(Relaxed)).collect();
        let count = self.count.load(Relaxed);
        if count == 0 {
            return;
        }
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (bound, n) in BUCKETS.iter().zip(buckets) {
            cumulative += n;
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
            );
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let sum = self.sum_nanos.load(Relaxed) as f64 / 1e9;
        let braces = |l: &str| {
            if l.is_empty() {
                String::new()
            } else {
                format!("{{{l}}}")
            }
        };
        let _ = writeln!(out, "{name}_sum{} {sum}", braces(labels));
        let _ = writeln!(out, "{name}_count{} {count}", braces(labels));
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new()
    }
}

/// The route templates of request latencies: fixed strings, never a path below them.
pub const ROUTES: [&str; 40] = [
    "kv/data",
    "kv/metadata",
    "kv/delete",
    "kv/undelete",
    "kv/destroy",
    "kv/config",
    "kv/other",
    "auth/token/create",
    "auth/token/lookup",
    "auth/token/lookup-self",
    "auth/token/renew",
    "auth/token/renew-self",
    "auth/token/revoke",
    "auth/token/revoke-self",
    "auth/token/revoke-accessor",
    "auth/token/other",
    "auth/kubernetes/login",
    "auth/kubernetes/config",
    "auth/kubernetes/role",
    "auth/other",
    "sealed/keys",
    "sealed/encrypt",
    "sealed/decrypt",
    "sealed/rewrap",
    "sealed/rotate",
    "sealed/compare",
    "sealed/other",
    "sys/health",
    "sys/seal-status",
    "sys/init",
    "sys/unseal",
    "sys/seal",
    "sys/metrics",
    "sys/policy",
    "sys/mounts",
    "sys/auth",
    "sys/audit",
    "sys/capabilities",
    "sys/other",
    "unknown",
];

const STORAGE_OPS: [&str; 3] = ["get", "list", "transact"];
const KMS_OPS: [&str; 2] = ["Encrypt", "Decrypt"];

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
    request_latency: [[Histogram; STATUS_CLASSES.len()]; ROUTES.len()],
    storage_latency: [Histogram; STORAGE_OPS.len()],
    storage_backend: OnceLock<&'static str>,
    kms_calls: [[AtomicU64; 2]; KMS_OPS.len()],
    tokens_created: AtomicU64,
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
    request_latency: [const { [const { Histogram::new() }; STATUS_CLASSES.len()] }; ROUTES.len()],
    storage_latency: [const { Histogram::new() }; STORAGE_OPS.len()],
    storage_backend: OnceLock::new(),
    kms_calls: [const { [const { AtomicU64::new(0) }; 2] }; KMS_OPS.len()],
    tokens_created: AtomicU64::new(0),
};

/// Operations whose latency is measured at the storage boundary.
#[derive(Debug, Clone, Copy)]
pub enum StorageOp {
    Get = 0,
    List = 1,
    Transact = 2,
}

/// What `sys/metrics` reads from the unsealed state when it renders.
pub struct Gauges {
    pub sealed: bool,
    /// The active term's number, encryptions reserved, and the rotation point (unsealed only).
    pub keyring: Option<(u64, u64, u64)>,
}

impl Metrics {
    pub fn request(&self, status: u16) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.requests[class].fetch_add(1, Relaxed);
    }

    pub fn request_latency(&self, route: usize, status: u16, elapsed: Duration) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.request_latency[route.min(ROUTES.len() - 1)][class].observe(elapsed);
    }

    /// The storage backend's name for the latency label (set once at start-up).
    pub fn set_storage_backend(&self, backend: &'static str) {
        let _ = self.storage_backend.set(backend);
    }

    pub fn storage_latency(&self, op: StorageOp, elapsed: Duration) {
        self.storage_latency[op as usize].observe(elapsed);
    }

    /// One KMS call (`Encrypt` = 0, `Decrypt` = 1) and whether it succeeded.
    pub fn kms_call(&self, decrypt: bool, succeeded: bool) {
        self.kms_calls[usize::from(decrypt)][usize::from(!succeeded)].fetch_add(1, Relaxed);
    }

    pub fn token_created(&self) {
        self.tokens_created.fetch_add(1, Relaxed);
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

    pub fn prometheus(&self, gauges: &Gauges) -> String {
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
        let mut kms = Vec::new();
        for (op, results) in KMS_OPS.iter().zip(&self.kms_calls) {
            for (result, n) in ["ok", "failed"].iter().zip(results) {
                kms.push((
                    format!("{{operation=\"{op}\",result=\"{result}\"}}"),
                    n.load(Relaxed),
                ));
            }
        }
        counter(
            "kinko_kms_calls_total",
            "AWS KMS calls of the seal by operation and result.",
            &kms,
        );
        counter(
            "kinko_tokens_created_total",
            "Tokens created (auth/token/create and logins).",
            &unlabelled(&self.tokens_created),
        );
        let mut gauge = |name: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        };
        gauge(
            "kinko_sealed",
            "1 while this replica is sealed (then sys/metrics answers without a token).",
            u64::from(gauges.sealed),
        );
        if let Some((term, encryptions, rotate_at)) = gauges.keyring {
            gauge("kinko_keyring_term", "The active keyring term.", term);
            gauge(
                "kinko_keyring_term_encryptions",
                "Encryptions reserved in the active term (the random-nonce budget used).",
                encryptions,
            );
            gauge(
                "kinko_keyring_term_rotate_at",
                "Encryptions after which the term rotates by itself.",
                rotate_at,
            );
        }
        let name = "kinko_http_request_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} HTTP API request latency by route template and status class.\n# TYPE {name} histogram"
        );
        for (route, classes) in ROUTES.iter().zip(&self.request_latency) {
            for (class, histogram) in STATUS_CLASSES.iter().zip(classes) {
                histogram.render(
                    &mut out,
                    name,
                    &format!("route=\"{route}\",code=\"{class}\""),
                );
            }
        }
        let name = "kinko_storage_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Storage backend call latency by backend and operation.\n# TYPE {name} histogram"
        );
        let backend = self.storage_backend.get().copied().unwrap_or("unknown");
        for (op, histogram) in STORAGE_OPS.iter().zip(&self.storage_latency) {
            histogram.render(
                &mut out,
                name,
                &format!("backend=\"{backend}\",op=\"{op}\""),
            );
        }
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
