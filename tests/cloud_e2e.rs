//! Cloud mode against a real local AWS emulator (moto): DynamoDB storage conformance and
//! throttling, the awskms seal, and several `kinko` processes serving one table at once.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use kinko_client::{Client, Method};
use kinko_e2e::{
    assert_consistent_after_crash, assert_no_secret_in_logs, aws_config, aws_env, binary,
    eventually, fault_proxy, free_port, moto, write_certificate, write_until_killed, Helper, Kinko,
};
use kinko_server::seal::awskms::AwsKmsSeal;
use kinko_server::seal::{Seal, SealError};
use kinko_server::secret::Key256;
use kinko_server::storage::dynamodb::DynamoStorage;
use kinko_server::storage::{Precondition, Storage};
use serde_json::{json, Map, Value};

fn data(pairs: &[(&str, &str)]) -> Map<String, Value> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect()
}

async fn table(endpoint: &str, name: &str) -> DynamoStorage {
    let config = aws_config(endpoint).await;
    let storage = DynamoStorage::new(aws_sdk_dynamodb::Client::new(&config), name);
    storage.create_table().await.expect("create table");
    storage
}

async fn kms_key(endpoint: &str) -> String {
    let config = aws_config(endpoint).await;
    let created = aws_sdk_kms::Client::new(&config)
        .create_key()
        .description("kinko tests")
        .send()
        .await
        .expect("create KMS key");
    created.key_metadata().unwrap().key_id().to_owned()
}

async fn proxy_stats(proxy: &Helper) -> Value {
    let address = format!("127.0.0.1:{}", proxy.port);
    let body = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        stream
            .write_all(b"GET /__proxy/stats HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    })
    .await
    .unwrap();
    serde_json::from_str(body.split("\r\n\r\n").nth(1).unwrap()).unwrap()
}

#[tokio::test]
async fn dynamodb_storage_passes_the_conformance_suite() {
    let moto = moto();
    let storage = table(&moto.endpoint(), "conformance").await;
    kinko_server::storage::conformance::run_all(Arc::new(storage)).await;
    // Again with small pages: listings and folder checks must follow every page.
    let paged = table(&moto.endpoint(), "paged").await.with_page_limit(7);
    kinko_server::storage::conformance::run_all(Arc::new(paged)).await;
}

#[tokio::test]
async fn dynamodb_listing_hides_folders_whose_keys_are_gone() {
    let moto = moto();
    let storage = table(&moto.endpoint(), "folders").await;
    for key in ["app/one/a", "app/two/deep/b", "app/three"] {
        storage
            .put(key, b"v".to_vec(), Precondition::None)
            .await
            .unwrap();
    }
    assert_eq!(
        storage.list("app/").await.unwrap(),
        ["one/", "three", "two/"]
    );
    storage.delete("app/two/deep/b").await.unwrap();
    storage.delete("app/one/a").await.unwrap();
    assert_eq!(storage.list("app/").await.unwrap(), ["three"]);
    storage
        .put("app/two/again", b"v".to_vec(), Precondition::Absent)
        .await
        .unwrap();
    assert_eq!(storage.list("app/").await.unwrap(), ["three", "two/"]);
}

#[tokio::test]
async fn dynamodb_storage_rides_out_throttling_and_unprocessed_items_and_loses_nothing() {
    let moto = moto();
    table(&moto.endpoint(), "throttled").await;
    let proxy = fault_proxy(0, moto.port, 0.15, 0.2);
    let config = aws_config(&proxy.endpoint()).await;
    let storage = Arc::new(DynamoStorage::new(
        aws_sdk_dynamodb::Client::new(&config),
        "throttled",
    ));
    let writers: Vec<_> = (0..8)
        .map(|writer| {
            let storage = storage.clone();
            tokio::spawn(async move {
                for round in 0..10u64 {
                    // A folder per key: each first write sends its folder marker in a batch.
                    let key = format!("load/w{writer}/k{round}/item");
                    storage
                        .put(&key, vec![writer; 64], Precondition::Absent)
                        .await
                        .unwrap_or_else(|e| panic!("{key}: {e}"));
                    storage
                        .put(&key, vec![writer; 65], Precondition::Version(1))
                        .await
                        .unwrap_or_else(|e| panic!("{key}: {e}"));
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    for writer in 0..8u8 {
        let listed = storage.list(&format!("load/w{writer}/")).await.unwrap();
        assert_eq!(listed.len(), 10, "writer {writer}: every folder is listed");
        for round in 0..10 {
            let entry = storage
                .get(&format!("load/w{writer}/k{round}/item"))
                .await
                .unwrap()
                .expect("written key is there");
            assert_eq!(entry.version, 2, "both writes applied exactly once");
            assert_eq!(entry.value, vec![writer; 65]);
        }
    }
    let stats = proxy_stats(&proxy).await;
    println!("fault proxy, storage level: {stats}");
    assert!(
        stats["throttled"].as_u64().unwrap() >= 20 && stats["unprocessed"].as_u64().unwrap() >= 5,
        "the proxy really throttled and left items unprocessed: {stats}"
    );
}

#[tokio::test]
async fn kms_seal_binds_the_root_key_to_the_cluster_id() {
    let moto = moto();
    let key_id = kms_key(&moto.endpoint()).await;
    let config = aws_config(&moto.endpoint()).await;
    let seal = AwsKmsSeal::new(aws_sdk_kms::Client::new(&config), &key_id);
    let root = Key256::generate();
    let blob = seal.wrap(&root, "cluster-a").await.unwrap();
    assert!(!blob.windows(32).any(|w| w == root.expose()));
    assert_eq!(seal.unwrap(&blob, "cluster-a").await.unwrap(), root);
    let error = seal.unwrap(&blob, "cluster-b").await.unwrap_err();
    assert!(
        matches!(error, SealError::Invalid { .. }),
        "another cluster id cannot unwrap: {error}"
    );

    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let config = aws_config(&nowhere).await;
    let down = AwsKmsSeal::new(aws_sdk_kms::Client::new(&config), &key_id);
    let error = down.unwrap(&blob, "cluster-a").await.unwrap_err();
    assert!(matches!(error, SealError::Unavailable { .. }), "{error}");
    assert!(
        error.to_string().contains(&key_id),
        "names the key: {error}"
    );
}

/// One kinko replica in cloud mode; `kms` and `dynamodb` are endpoint URLs.
struct Cloud {
    dir: PathBuf,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    table: String,
    key_id: String,
}

impl Cloud {
    fn new(dir: &Path, table: &str, key_id: &str) -> Cloud {
        let (ca, cert, key) = write_certificate(dir, "server");
        Cloud {
            dir: dir.to_owned(),
            ca,
            cert,
            key,
            table: table.to_owned(),
            key_id: key_id.to_owned(),
        }
    }

    fn replica(&self, name: &str, dynamodb: &str, kms: &str) -> Kinko {
        let mut vars = vec![
            ("KINKO_LISTEN_ADDR", "127.0.0.1:0".to_owned()),
            ("KINKO_TLS_CERT_FILE", self.cert.display().to_string()),
            ("KINKO_TLS_KEY_FILE", self.key.display().to_string()),
            ("KINKO_STORAGE", "dynamodb".into()),
            ("KINKO_DYNAMODB_TABLE", self.table.clone()),
            ("KINKO_SEAL", "awskms".into()),
            ("KINKO_KMS_KEY_ID", self.key_id.clone()),
            ("KINKO_CLUSTER_NAME", "cloud-e2e".into()),
            ("AWS_ENDPOINT_URL_DYNAMODB", dynamodb.into()),
            ("AWS_ENDPOINT_URL_KMS", kms.into()),
        ];
        vars.extend(aws_env(dynamodb));
        Kinko::production(&vars, &self.ca, &self.dir.join(name))
    }
}

async fn init(server: &Kinko) -> String {
    let init = server.initialize().await;
    assert_eq!(init["recovery_keys"].as_array().unwrap().len(), 3);
    init["root_token"].as_str().unwrap().to_owned()
}

/// Initialises the cluster and mounts KV v2 at `secret/`; returns the root token.
async fn init_with_secret_mount(server: &Kinko) -> String {
    let root_token = init(server).await;
    server
        .client(Some(&root_token))
        .request(
            Method::POST,
            "sys/mounts/secret",
            Some(&json!({ "type": "kv-v2" })),
        )
        .await
        .unwrap();
    root_token
}

async fn unsealed(client: &Client, limit: Duration) -> bool {
    eventually(limit, || async {
        client
            .seal_status()
            .await
            .is_ok_and(|s| s["sealed"] == json!(false))
    })
    .await
}

fn create_table_with_the_cli(endpoint: &str, table: &str) {
    let mut command = std::process::Command::new(binary("kinko"));
    command.args(["operator", "create-table", "--table", table]);
    for (name, value) in aws_env(endpoint) {
        command.env(name, value);
    }
    let output = kinko_e2e::output(&mut command);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("is active"));
}

/// The sum of one counter's samples whose label set contains `label`.
async fn metric(client: &Client, name: &str, label: &str) -> u64 {
    let (_, text) = client.text(Method::GET, "sys/metrics").await.unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test]
async fn replicas_share_one_table_and_race_fairly() {
    let moto = moto();
    let dir = tempfile::tempdir().unwrap();
    create_table_with_the_cli(&moto.endpoint(), "replicas");
    let cloud = Cloud::new(dir.path(), "replicas", &kms_key(&moto.endpoint()).await);
    let a = cloud.replica("a", &moto.endpoint(), &moto.endpoint());
    let b = cloud.replica("b", &moto.endpoint(), &moto.endpoint());
    let root_token = init(&a).await;
    let (root_a, root_b) = (a.client(Some(&root_token)), b.client(Some(&root_token)));
    assert!(unsealed(&root_a, Duration::from_secs(5)).await);
    assert!(
        unsealed(&root_b, Duration::from_secs(20)).await,
        "the second replica unseals itself once the first initialised the table"
    );
    assert_eq!(root_b.seal_status().await.unwrap()["type"], "awskms");
    assert_eq!(
        root_b.seal_status().await.unwrap()["storage_type"],
        "dynamodb"
    );

    // A mount and a policy made on one replica are in effect on the other within the bound.
    root_a
        .request(
            Method::POST,
            "sys/mounts/apps",
            Some(&json!({ "type": "kv-v2" })),
        )
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(3), || async {
            root_b
                .kv_write("apps", "db", &data(&[("password", "pw-1")]), None)
                .await
                .is_ok()
        })
        .await,
        "a mount made on A routes on B"
    );
    root_a
        .policy_write("db", r#"path "apps/data/db" { capabilities = ["read"] }"#)
        .await
        .unwrap();
    let app_token = root_a
        .token_create(&["db"], Some("1h"))
        .await
        .unwrap()
        .client_token;
    let app_b = b.client(Some(&app_token));
    let read = app_b.kv_read("apps", "db", None).await.unwrap().unwrap();
    assert_eq!(
        read.data["password"], "pw-1",
        "a token made on A works on B"
    );
    root_a
        .policy_write(
            "db",
            r#"path "apps/data/other" { capabilities = ["read"] }"#,
        )
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(3), || async {
            app_b
                .kv_read("apps", "db", None)
                .await
                .is_err_and(|e| e.status() == Some(403))
        })
        .await,
        "a policy narrowed on A takes effect on B"
    );

    // Key rotation on A: B meets the new keyring term and reloads it.
    root_a
        .request(Method::POST, "sys/rotate", None)
        .await
        .unwrap();
    root_a
        .kv_write("apps", "after-rotation", &data(&[("v", "new-term")]), None)
        .await
        .unwrap();
    let read = root_b
        .kv_read("apps", "after-rotation", None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read.data["v"], "new-term");

    // DynamoDB calls per KV read and write with a valid (cached) token, measured on B.
    root_b.kv_read("apps", "db", None).await.unwrap();
    let gets = metric(&root_b, "kinko_dynamodb_requests_total", "GetItem").await;
    let all = metric(&root_b, "kinko_dynamodb_requests_total", "operation").await;
    for _ in 0..10 {
        root_b.kv_read("apps", "db", None).await.unwrap();
    }
    let read_gets = metric(&root_b, "kinko_dynamodb_requests_total", "GetItem").await - gets;
    let read_all = metric(&root_b, "kinko_dynamodb_requests_total", "operation").await - all;
    let all = metric(&root_b, "kinko_dynamodb_requests_total", "operation").await;
    let transactions = metric(
        &root_b,
        "kinko_dynamodb_requests_total",
        "TransactWriteItems",
    )
    .await;
    for i in 0..10 {
        root_b
            .kv_write(
                "apps",
                "db",
                &data(&[("password", &format!("pw-{i}"))]),
                None,
            )
            .await
            .unwrap();
    }
    let write_all = metric(&root_b, "kinko_dynamodb_requests_total", "operation").await - all;
    let write_transactions = metric(
        &root_b,
        "kinko_dynamodb_requests_total",
        "TransactWriteItems",
    )
    .await
        - transactions;
    println!(
        "DynamoDB calls per KV read: {:.1} ({:.1} GetItem); per KV write: {:.1} ({:.1} TransactWriteItems)",
        read_all as f64 / 10.0,
        read_gets as f64 / 10.0,
        write_all as f64 / 10.0,
        write_transactions as f64 / 10.0
    );
    assert!(
        (10..=11).contains(&write_transactions),
        "one transaction per KV write (and at most one nonce-block reservation): {write_transactions}"
    );
    assert!(
        read_all <= 22,
        "about 2 calls per KV read, got {read_all} for 10"
    );

    // Two replicas race a check-and-set on one key, 100 rounds: exactly one wins each round.
    for round in 0..100u64 {
        let value = data(&[("round", &round.to_string())]);
        let (on_a, on_b) = tokio::join!(
            root_a.kv_write("apps", "race", &value, Some(round)),
            root_b.kv_write("apps", "race", &value, Some(round)),
        );
        let winners = [&on_a, &on_b].iter().filter(|r| r.is_ok()).count();
        assert_eq!(winners, 1, "round {round}: {on_a:?} / {on_b:?}");
        for loser in [on_a, on_b].into_iter().filter_map(Result::err) {
            assert_eq!(loser.status(), Some(400), "a lost race is a CAS mismatch");
        }
    }
    let race = root_b.kv_read("apps", "race", None).await.unwrap().unwrap();
    assert_eq!(race.version, 100);
    assert_eq!(race.data["round"], "99");

    // A restarted replica unseals itself through KMS.
    assert!(a.terminate().success());
    let again = cloud.replica("a2", &moto.endpoint(), &moto.endpoint());
    let root_again = again.client(Some(&root_token));
    assert!(unsealed(&root_again, Duration::from_secs(10)).await);
    assert_eq!(
        root_again
            .kv_read("apps", "after-rotation", None)
            .await
            .unwrap()
            .unwrap()
            .data["v"],
        "new-term"
    );
}

#[tokio::test]
async fn kms_unreachable_at_start_stays_sealed_then_unseals_without_restart() {
    let moto = moto();
    let dir = tempfile::tempdir().unwrap();
    table(&moto.endpoint(), "kms-down").await;
    let key_id = kms_key(&moto.endpoint()).await;
    let cloud = Cloud::new(dir.path(), "kms-down", &key_id);
    let first = cloud.replica("first", &moto.endpoint(), &moto.endpoint());
    let root_token = init_with_secret_mount(&first).await;
    first
        .client(Some(&root_token))
        .kv_write("secret", "db", &data(&[("password", "kept")]), None)
        .await
        .unwrap();
    assert!(first.terminate().success());

    let kms_port = free_port();
    let kms = format!("http://127.0.0.1:{kms_port}");
    let server = cloud.replica("second", &moto.endpoint(), &kms);
    let root = server.client(Some(&root_token));
    let (status, _) = root.raw(Method::GET, "secret/data/db", None).await.unwrap();
    assert_eq!(status.as_u16(), 503, "sealed while KMS is unreachable");
    assert_eq!(root.health().await.unwrap(), 503);
    assert!(
        eventually(Duration::from_secs(10), || async {
            server.stderr().contains("auto-unseal failed") && server.stderr().contains(&key_id)
        })
        .await,
        "one clear line names the key: {}",
        server.stderr()
    );

    let _kms = fault_proxy(kms_port, moto.port, 0.0, 0.0);
    assert!(
        unsealed(&root, Duration::from_secs(70)).await,
        "unseals once KMS answers: {}",
        server.stderr()
    );
    assert_eq!(
        root.kv_read("secret", "db", None)
            .await
            .unwrap()
            .unwrap()
            .data["password"],
        "kept"
    );
    // Every replica's log: the first wrote the secret, the second read it.
    assert_no_secret_in_logs(dir.path(), &["kept"]);
}

#[tokio::test]
async fn a_cluster_id_mismatch_refuses_to_unseal() {
    let moto = moto();
    let dir = tempfile::tempdir().unwrap();
    let storage = table(&moto.endpoint(), "mismatch").await;
    let cloud = Cloud::new(dir.path(), "mismatch", &kms_key(&moto.endpoint()).await);
    let first = cloud.replica("first", &moto.endpoint(), &moto.endpoint());
    init(&first).await;
    assert!(first.terminate().success());

    // Someone swaps the cluster id next to the wrapped root key.
    let entry = storage.get("core/seal-config").await.unwrap().unwrap();
    let mut config: Value = serde_json::from_slice(&entry.value).unwrap();
    config["cluster_id"] = json!(uuid::Uuid::new_v4().to_string());
    storage
        .put(
            "core/seal-config",
            serde_json::to_vec(&config).unwrap(),
            Precondition::Version(entry.version),
        )
        .await
        .unwrap();

    let server = cloud.replica("second", &moto.endpoint(), &moto.endpoint());
    assert!(
        eventually(Duration::from_secs(10), || async {
            server.stderr().contains("cannot unwrap the root key")
        })
        .await,
        "{}",
        server.stderr()
    );
    assert_eq!(server.client(None).health().await.unwrap(), 503);
    let raw_item = aws_sdk_dynamodb::Client::new(&aws_config(&moto.endpoint()).await)
        .get_item()
        .table_name("mismatch")
        .key("dir", AttributeValue::S("/core/".into()))
        .key("name", AttributeValue::S("root-key".into()))
        .send()
        .await
        .unwrap();
    assert!(
        raw_item.item().is_some(),
        "the schema is dir + name, as documented"
    );
}

#[tokio::test]
async fn kv_through_a_throttling_proxy_loses_nothing() {
    let moto = moto();
    let dir = tempfile::tempdir().unwrap();
    table(&moto.endpoint(), "kv-throttled").await;
    let proxy = fault_proxy(0, moto.port, 0.15, 0.2);
    let cloud = Cloud::new(dir.path(), "kv-throttled", &kms_key(&moto.endpoint()).await);
    let server = cloud.replica("only", &proxy.endpoint(), &moto.endpoint());
    let root_token = init_with_secret_mount(&server).await;
    let root = server.client(Some(&root_token));
    for i in 0..30 {
        root.kv_write(
            "secret",
            &format!("app/s{i}"),
            &data(&[("n", &i.to_string())]),
            None,
        )
        .await
        .unwrap_or_else(|e| panic!("write {i}: {e}"));
    }
    for i in 0..30 {
        let read = root
            .kv_read("secret", &format!("app/s{i}"), None)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(read.data["n"], i.to_string());
    }
    let listed = root
        .request(
            Method::from_bytes(b"LIST").unwrap(),
            "secret/metadata/app/",
            None,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(listed["data"]["keys"].as_array().unwrap().len(), 30);
    let stats = proxy_stats(&proxy).await;
    println!("fault proxy, KV through kinko: {stats}");
    assert!(stats["throttled"].as_u64().unwrap() > 10, "{stats}");
    assert!(metric(&root, "kinko_aws_retries_total", "").await > 10);
}

#[tokio::test]
async fn a_kms_key_that_denies_keeps_the_server_up_and_sealed() {
    let moto = moto();
    let dir = tempfile::tempdir().unwrap();
    table(&moto.endpoint(), "kms-denied").await;
    let cloud = Cloud::new(dir.path(), "kms-denied", &kms_key(&moto.endpoint()).await);
    let first = cloud.replica("first", &moto.endpoint(), &moto.endpoint());
    init(&first).await;
    assert!(first.terminate().success());

    // Configured with another key, which KMS refuses to use for this root key's blob.
    let wrong_key = kms_key(&moto.endpoint()).await;
    std::fs::create_dir_all(dir.path().join("wrong")).unwrap();
    let misconfigured = Cloud::new(&dir.path().join("wrong"), "kms-denied", &wrong_key);
    let server = misconfigured.replica("second", &moto.endpoint(), &moto.endpoint());
    assert!(
        eventually(Duration::from_secs(10), || async {
            let log = server.stderr();
            log.contains("auto-unseal failed")
                && log.contains(&wrong_key)
                && log.contains("AccessDenied")
        })
        .await,
        "the log names the key and KMS's refusal: {}",
        server.stderr()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        server.client(None).health().await.unwrap(),
        503,
        "sealed, and still serving"
    );
    let attempts = server.stderr().matches("auto-unseal failed").count();
    assert!(
        (1..=3).contains(&attempts),
        "retries back off (1 s, 2 s, 4 s, ...), no tight loop: {attempts} attempts in ~2 s"
    );
}

#[tokio::test]
async fn a_replica_killed_mid_write_leaves_every_key_consistent() {
    let moto = moto();
    let dir = tempfile::tempdir().unwrap();
    table(&moto.endpoint(), "crash").await;
    let cloud = Cloud::new(dir.path(), "crash", &kms_key(&moto.endpoint()).await);
    let server = cloud.replica("first", &moto.endpoint(), &moto.endpoint());
    let root_token = init_with_secret_mount(&server).await;
    let acknowledged = write_until_killed(server, &root_token, 4, Duration::from_secs(2)).await;

    let again = cloud.replica("second", &moto.endpoint(), &moto.endpoint());
    let root = again.client(Some(&root_token));
    assert!(unsealed(&root, Duration::from_secs(10)).await);
    assert_consistent_after_crash(&root, &acknowledged).await;
}
