//! Cloud backend: one DynamoDB table shared by every replica (no leader).
//!
//! Table schema (see ARCHITECTURE.md): partition key `dir` (S), sort key `name` (S).
//! A key `a/b/c` is the item `dir = "/a/b/"`, `name = "c"` with attributes `value` (B) and
//! `version` (N). So a directory's immediate children are one `Query` on its partition, sorted
//! by DynamoDB, never a scan of a subtree. Sub-directories show up in their parent as marker
//! items (`dir = "/a/"`, `name = "b/"`), written (idempotently) before the first write below
//! them. Markers are never deleted, because deleting one safely would race a writer adding a
//! key below it; instead a listing shows a marker only when a key still exists below it.
//! A delete keeps the item as a tombstone (its `version`, no `value`), so a key written again
//! goes on from its last version and a version never repeats; reads and listings skip
//! tombstones.
//!
//! Every write is one `TransactWriteItems` with a client request token, so a retry after a
//! timeout cannot apply a write twice or turn its own success into a conflict. Reads are
//! strongly consistent. Throttling and transient failures are retried with jittered back-off
//! (see `crate::aws`).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use async_trait::async_trait;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, ConditionCheck, KeySchemaElement, KeyType,
    PutRequest, ScalarAttributeType, TableStatus, TransactWriteItem, Update, WriteRequest,
};
use aws_sdk_dynamodb::Client;
use futures::stream::{self, StreamExt, TryStreamExt};

use super::{validate_transaction, Entry, Op, Precondition, Storage, StorageError};
use crate::aws::{self, describe, is_transient, TRANSIENT_CANCELLATION_CODES};
use crate::metrics::DynamoOperation::{BatchWriteItem, GetItem, Query, TransactWriteItems};
use crate::metrics::METRICS;

const DIR: &str = "dir";
const NAME: &str = "name";
const VALUE: &str = "value";
const VERSION: &str = "version";
/// DynamoDB caps a sort key at 1024 bytes; a key's last segment is the sort key.
pub const MAX_NAME_BYTES: usize = 1024;
/// BatchWriteItem takes at most 25 requests.
const BATCH_LIMIT: usize = 25;
/// Marker checks a listing runs at once.
const LISTING_CONCURRENCY: usize = 16;
/// Directories this process knows have a marker; cleared when full (markers are idempotent).
const KNOWN_DIRS_LIMIT: usize = 100_000;

pub struct DynamoStorage {
    client: Client,
    table: String,
    known_dirs: Mutex<HashSet<String>>,
    /// Items per `Query` page; `None` lets DynamoDB fill its 1 MB pages.
    page_limit: Option<i32>,
}

/// Splits `a/b/c` into (`a/b/`, `c`); the directory keeps its trailing slash.
fn split(key: &str) -> (&str, &str) {
    match key.rfind('/') {
        Some(at) => key.split_at(at + 1),
        None => ("", key),
    }
}

/// Partition key values may not be empty; the root directory is `/`.
fn partition(dir: &str) -> AttributeValue {
    AttributeValue::S(format!("/{dir}"))
}

fn item_key(dir: &str, name: &str) -> HashMap<String, AttributeValue> {
    HashMap::from([
        (DIR.to_owned(), partition(dir)),
        (NAME.to_owned(), AttributeValue::S(name.to_owned())),
    ])
}

/// Every directory above `key`, as `a/`, `a/b/`, ...
fn ancestors(key: &str) -> impl Iterator<Item = &str> {
    key.match_indices('/').map(move |(at, _)| &key[..=at])
}

/// The marker item announcing directory `a/b/` inside `a/`: (`a/`, `b/`).
fn marker(dir: &str) -> (&str, &str) {
    let (parent, _) = split(&dir[..dir.len() - 1]);
    (parent, &dir[parent.len()..])
}

fn names(pairs: &[(&str, &str)]) -> Option<HashMap<String, String>> {
    Some(
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    )
}

fn build_error(error: impl std::fmt::Display) -> StorageError {
    StorageError::Invalid(format!("dynamodb request: {error}"))
}

/// The condition a precondition becomes. A deleted key is a tombstone: an item that keeps its
/// `version` but has no `value`, so a re-created key goes on counting (versions never repeat).
fn condition(
    precondition: Precondition,
) -> Option<(&'static str, HashMap<String, AttributeValue>)> {
    match precondition {
        Precondition::None => None,
        Precondition::Absent => Some(("attribute_not_exists(#value)", HashMap::new())),
        Precondition::Version(version) => Some((
            "#version = :expected AND attribute_exists(#value)",
            HashMap::from([(
                ":expected".to_owned(),
                AttributeValue::N(version.to_string()),
            )]),
        )),
    }
}

/// The attribute names `expressions` use: DynamoDB refuses unused ones.
fn names_used_in(expressions: &[&str]) -> Option<HashMap<String, String>> {
    let used: Vec<(&str, &str)> = [("#value", VALUE), ("#version", VERSION)]
        .into_iter()
        .filter(|(placeholder, _)| expressions.iter().any(|e| e.contains(placeholder)))
        .collect();
    names(&used)
}

fn transact_item(table: &str, op: &Op) -> Result<TransactWriteItem, StorageError> {
    let (dir, name) = split(op.key());
    let one = || (":one".to_owned(), AttributeValue::N("1".into()));
    // A put sets the value, a delete removes it; both bump the version (ADD starts a missing
    // one at 0, so a new key gets version 1).
    let (expression, mut values) = match op {
        Op::Put { value, .. } => (
            "SET #value = :value ADD #version :one",
            HashMap::from([
                (":value".to_owned(), AttributeValue::B(value.clone().into())),
                one(),
            ]),
        ),
        Op::Delete { .. } => ("REMOVE #value ADD #version :one", HashMap::from([one()])),
        Op::Check { precondition, .. } => {
            let (expression, values) =
                condition(*precondition).expect("validated: a check has a precondition");
            let check = ConditionCheck::builder()
                .table_name(table)
                .set_key(Some(item_key(dir, name)))
                .condition_expression(expression)
                .set_expression_attribute_names(names_used_in(&[expression]))
                .set_expression_attribute_values((!values.is_empty()).then_some(values))
                .build()
                .map_err(build_error)?;
            return Ok(TransactWriteItem::builder().condition_check(check).build());
        }
    };
    let mut update = Update::builder()
        .table_name(table)
        .set_key(Some(item_key(dir, name)))
        .update_expression(expression)
        .set_expression_attribute_names(names_used_in(&[expression]));
    if let Some((expression, extra)) = condition(op.precondition()) {
        values.extend(extra);
        update = update.condition_expression(expression);
    }
    let update = update
        .set_expression_attribute_values(Some(values))
        .build()
        .map_err(build_error)?;
    Ok(TransactWriteItem::builder().update(update).build())
}

fn unavailable(operation: &str, attempts: u32, reason: String) -> StorageError {
    StorageError::Unavailable(format!(
        "dynamodb {operation} failed after {attempts} attempt(s): {reason}"
    ))
}

fn entry(item: &HashMap<String, AttributeValue>) -> Result<Entry, StorageError> {
    let corrupt = |what: &str| StorageError::Unavailable(format!("dynamodb item has {what}"));
    let value = match item.get(VALUE) {
        Some(AttributeValue::B(blob)) => blob.clone().into_inner(),
        _ => return Err(corrupt("no binary value")),
    };
    let version = match item.get(VERSION) {
        Some(AttributeValue::N(number)) => number
            .parse()
            .map_err(|_| corrupt("an unreadable version"))?,
        _ => return Err(corrupt("no version")),
    };
    Ok(Entry { value, version })
}

impl DynamoStorage {
    pub fn new(client: Client, table: impl Into<String>) -> DynamoStorage {
        DynamoStorage {
            client,
            table: table.into(),
            known_dirs: Mutex::new(HashSet::new()),
            page_limit: None,
        }
    }

    /// Smaller `Query` pages, so tests walk several pages with a few keys.
    pub fn with_page_limit(mut self, items: i32) -> DynamoStorage {
        self.page_limit = Some(items);
        self
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// Creates the table (on-demand capacity) if it does not exist and waits until it is
    /// active. For development and tests; production creates it with CloudFormation.
    pub async fn create_table(&self) -> Result<(), StorageError> {
        let attribute = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(build_error)
        };
        let key = |name: &str, kind| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(kind)
                .build()
                .map_err(build_error)
        };
        let created = self
            .client
            .create_table()
            .table_name(&self.table)
            .attribute_definitions(attribute(DIR)?)
            .attribute_definitions(attribute(NAME)?)
            .key_schema(key(DIR, KeyType::Hash)?)
            .key_schema(key(NAME, KeyType::Range)?)
            .billing_mode(BillingMode::PayPerRequest)
            .send()
            .await;
        if let Err(error) = created {
            let exists = error
                .as_service_error()
                .is_some_and(|e| e.is_resource_in_use_exception());
            if !exists {
                return Err(unavailable("CreateTable", 1, describe(&error)));
            }
        }
        for _ in 0..120 {
            let described = self
                .client
                .describe_table()
                .table_name(&self.table)
                .send()
                .await
                .map_err(|e| unavailable("DescribeTable", 1, describe(&e)))?;
            let status = described.table().and_then(|t| t.table_status());
            if status == Some(&TableStatus::Active) {
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
        Err(StorageError::Unavailable(format!(
            "dynamodb table {} did not become active within a minute",
            self.table
        )))
    }

    /// Writes the markers for every directory above the put keys that this process has not
    /// written yet, before the transaction that needs them (so a listing can always find a
    /// key through its parents). Unprocessed items are sent again until none is left.
    async fn ensure_markers(&self, ops: &[Op]) -> Result<(), StorageError> {
        let missing: Vec<String> = {
            let known = self.known_dirs.lock().expect("known_dirs poisoned");
            let mut missing: Vec<String> = ops
                .iter()
                .filter(|op| matches!(op, Op::Put { .. }))
                .flat_map(|op| ancestors(op.key()))
                .filter(|dir| !known.contains(*dir))
                .map(str::to_owned)
                .collect();
            missing.sort_unstable();
            missing.dedup();
            missing
        };
        for chunk in missing.chunks(BATCH_LIMIT) {
            let mut pending: Vec<WriteRequest> = chunk
                .iter()
                .map(|dir| {
                    let (parent, name) = marker(dir);
                    PutRequest::builder()
                        .set_item(Some(item_key(parent, name)))
                        .build()
                        .map(|put| WriteRequest::builder().put_request(put).build())
                        .map_err(build_error)
                })
                .collect::<Result<_, _>>()?;
            let mut attempt = 0;
            while !pending.is_empty() {
                if attempt > 0 {
                    METRICS.aws_retry();
                    tokio::time::sleep(aws::backoff(attempt)).await;
                }
                attempt += 1;
                METRICS.dynamodb_request(BatchWriteItem);
                let sent = self
                    .client
                    .batch_write_item()
                    .request_items(&self.table, pending.clone())
                    .send()
                    .await;
                match sent {
                    Ok(output) => {
                        let left: Vec<WriteRequest> = output
                            .unprocessed_items()
                            .and_then(|items| items.get(&self.table))
                            .cloned()
                            .unwrap_or_default();
                        if left.len() < pending.len() {
                            // Progress: the budget is for attempts that achieve nothing.
                            attempt = attempt.min(1);
                        }
                        pending = left;
                    }
                    Err(error) if is_transient(&error) && attempt < aws::MAX_ATTEMPTS => {}
                    Err(error) => {
                        return Err(unavailable(
                            BatchWriteItem.name(),
                            attempt,
                            describe(&error),
                        ))
                    }
                }
                if !pending.is_empty() && attempt >= aws::MAX_ATTEMPTS {
                    return Err(unavailable(
                        BatchWriteItem.name(),
                        attempt,
                        format!("{} item(s) stayed unprocessed", pending.len()),
                    ));
                }
            }
        }
        let mut known = self.known_dirs.lock().expect("known_dirs poisoned");
        if known.len() + missing.len() > KNOWN_DIRS_LIMIT {
            known.clear();
        }
        known.extend(missing);
        Ok(())
    }

    /// One page of a directory's children (names only), from `start`.
    async fn query_page(
        &self,
        dir: &str,
        name_prefix: &str,
        start: Option<HashMap<String, AttributeValue>>,
    ) -> Result<(Vec<String>, Option<HashMap<String, AttributeValue>>), StorageError> {
        let mut condition = "#dir = :dir".to_owned();
        let mut values = HashMap::from([(":dir".to_owned(), partition(dir))]);
        if !name_prefix.is_empty() {
            condition.push_str(" AND begins_with(#name, :prefix)");
            values.insert(":prefix".into(), AttributeValue::S(name_prefix.into()));
        }
        let output = aws::with_retries(
            || {
                METRICS.dynamodb_request(Query);
                self.client
                    .query()
                    .table_name(&self.table)
                    .consistent_read(true)
                    .key_condition_expression(&condition)
                    .projection_expression("#name")
                    // Keys (with a value) and folder markers (no version); not tombstones.
                    .filter_expression("attribute_exists(#value) OR attribute_not_exists(#version)")
                    .set_expression_attribute_names(names(&[
                        ("#dir", DIR),
                        ("#name", NAME),
                        ("#value", VALUE),
                        ("#version", VERSION),
                    ]))
                    .set_expression_attribute_values(Some(values.clone()))
                    .set_exclusive_start_key(start.clone())
                    .set_limit(self.page_limit)
                    .send()
            },
            is_transient,
        )
        .await
        .map_err(|(e, attempts)| unavailable(Query.name(), attempts, describe(&e)))?;
        let names = output
            .items()
            .iter()
            .filter_map(|item| match item.get(NAME) {
                Some(AttributeValue::S(name)) => Some(name.clone()),
                _ => None,
            })
            .collect();
        Ok((names, output.last_evaluated_key().cloned()))
    }

    /// Whether any key exists below `dir` (markers alone do not count).
    async fn holds_a_key(&self, dir: String) -> Result<bool, StorageError> {
        let mut pending = vec![dir];
        while let Some(dir) = pending.pop() {
            let mut start = None;
            loop {
                let (names, next) = self.query_page(&dir, "", start).await?;
                if names.iter().any(|name| !name.ends_with('/')) {
                    return Ok(true);
                }
                pending.extend(names.into_iter().map(|name| format!("{dir}{name}")));
                match next {
                    Some(key) => start = Some(key),
                    None => break,
                }
            }
        }
        Ok(false)
    }
}

/// Refuses keys DynamoDB cannot hold as our items, before anything is written.
fn validate_keys(ops: &[Op]) -> Result<(), StorageError> {
    for op in ops {
        let (_, name) = split(op.key());
        if name.len() > MAX_NAME_BYTES {
            return Err(StorageError::Invalid(format!(
                "the last path segment is {} bytes; DynamoDB storage allows {MAX_NAME_BYTES}",
                name.len()
            )));
        }
    }
    Ok(())
}

#[async_trait]
impl Storage for DynamoStorage {
    fn kind(&self) -> &'static str {
        "dynamodb"
    }

    /// A copy kept in an item spares a second `GetItem`, a network round trip of its own (about
    /// half of a KV read's latency on DynamoDB). Up to 3 KiB, a young key's metadata item with
    /// its copy stays within one 4 KB read unit; each write pays up to three more 1 KB write
    /// units for it, and reads outnumber writes.
    fn one_read_value_limit(&self, _key: &str) -> usize {
        3 * 1024
    }

    async fn get(&self, key: &str) -> Result<Option<Entry>, StorageError> {
        let (dir, name) = split(key);
        if name.is_empty() || name.len() > MAX_NAME_BYTES {
            return Ok(None);
        }
        let output = aws::with_retries(
            || {
                METRICS.dynamodb_request(GetItem);
                self.client
                    .get_item()
                    .table_name(&self.table)
                    .set_key(Some(item_key(dir, name)))
                    .consistent_read(true)
                    .send()
            },
            is_transient,
        )
        .await
        .map_err(|(e, attempts)| unavailable(GetItem.name(), attempts, describe(&e)))?;
        output
            .item()
            .filter(|item| item.contains_key(VALUE))
            .map(entry)
            .transpose()
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let (dir, name_prefix) = split(prefix);
        let mut keys = Vec::new();
        let mut directories = Vec::new();
        let mut start = None;
        loop {
            let (names, next) = self.query_page(dir, name_prefix, start).await?;
            for name in names {
                let child = name[name_prefix.len()..].to_owned();
                if name.ends_with('/') {
                    directories.push((child, format!("{dir}{name}")));
                } else {
                    keys.push(child);
                }
            }
            match next {
                Some(key) => start = Some(key),
                None => break,
            }
        }
        let live: Vec<String> = stream::iter(directories)
            .map(|(child, full)| async move {
                Ok::<_, StorageError>(self.holds_a_key(full).await?.then_some(child))
            })
            .buffered(LISTING_CONCURRENCY)
            .try_filter_map(|child| async move { Ok(child) })
            .try_collect()
            .await?;
        keys.extend(live);
        keys.retain(|k| !k.is_empty());
        keys.sort();
        Ok(keys)
    }

    async fn transact(&self, ops: Vec<Op>) -> Result<(), StorageError> {
        validate_transaction(&ops)?;
        validate_keys(&ops)?;
        self.ensure_markers(&ops).await?;
        let items = ops
            .iter()
            .map(|op| transact_item(&self.table, op))
            .collect::<Result<Vec<_>, _>>()?;
        // The same token on a repeat after an ambiguous failure (timeout, 5xx) makes DynamoDB
        // answer with the first attempt's outcome; a fresh one after a definite cancellation
        // makes it try again.
        let mut token = uuid::Uuid::new_v4().to_string();
        let mut attempt = 0;
        loop {
            attempt += 1;
            METRICS.dynamodb_request(TransactWriteItems);
            let sent = self
                .client
                .transact_write_items()
                .set_transact_items(Some(items.clone()))
                .client_request_token(&token)
                .send()
                .await;
            let error = match sent {
                Ok(_) => return Ok(()),
                Err(error) => error,
            };
            let retry = match error.as_service_error() {
                Some(TransactWriteItemsError::TransactionCanceledException(cancelled)) => {
                    let reasons = cancelled.cancellation_reasons();
                    if let Some(at) = reasons
                        .iter()
                        .position(|r| r.code() == Some("ConditionalCheckFailed"))
                    {
                        return Err(StorageError::Conflict {
                            key: ops[at.min(ops.len() - 1)].key().to_owned(),
                        });
                    }
                    token = uuid::Uuid::new_v4().to_string();
                    reasons.iter().all(|r| match r.code() {
                        None | Some("None") => true,
                        Some(code) => TRANSIENT_CANCELLATION_CODES.contains(&code),
                    })
                }
                _ => is_transient(&error),
            };
            if !retry || attempt >= aws::MAX_ATTEMPTS {
                return Err(unavailable(
                    TransactWriteItems.name(),
                    attempt,
                    describe(&error),
                ));
            }
            METRICS.aws_retry();
            tokio::time::sleep(aws::backoff(attempt)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_directory_and_name() {
        assert_eq!(split("a/b/c"), ("a/b/", "c"));
        assert_eq!(split("top"), ("", "top"));
        assert_eq!(split("a/"), ("a/", ""));
        assert_eq!(ancestors("a/b/c").collect::<Vec<_>>(), ["a/", "a/b/"]);
        assert_eq!(ancestors("top").count(), 0);
        assert_eq!(marker("a/b/"), ("a/", "b/"));
        assert_eq!(marker("a/"), ("", "a/"));
    }

    #[test]
    fn preconditions_become_conditions() {
        assert!(condition(Precondition::None).is_none());
        let (absent, values) = condition(Precondition::Absent).unwrap();
        assert!(absent.contains("attribute_not_exists") && values.is_empty());
        let (version, values) = condition(Precondition::Version(7)).unwrap();
        assert!(version.contains(":expected"));
        assert_eq!(values[":expected"], AttributeValue::N("7".into()));
    }

    #[test]
    fn overlong_names_are_refused_before_writing() {
        let op = Op::Put {
            key: format!("dir/{}", "n".repeat(MAX_NAME_BYTES + 1)),
            value: vec![],
            precondition: Precondition::None,
        };
        let error = validate_keys(&[op]).unwrap_err();
        assert!(error.to_string().contains("1024"));
    }
}
