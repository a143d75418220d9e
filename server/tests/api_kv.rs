//! KV v2 through the router: versions, check-and-set, patch, soft delete, destroy, metadata,
//! listing and mount configuration, with the exact shapes and errors of vault-api.md.

mod support;

use http::StatusCode;
use serde_json::json;
use support::{TestServer, ROOT};

#[tokio::test]
async fn write_then_read_returns_data_and_version_metadata() {
    let s = TestServer::start().await;
    let written = s
        .put_secret("app/db", ROOT, json!({ "password": "pw1", "user": "app" }))
        .await;
    assert_eq!(written.status, StatusCode::OK);
    assert_eq!(written.body["data"]["version"], 1);
    assert_eq!(written.body["data"]["destroyed"], false);
    assert_eq!(written.body["data"]["deletion_time"], "");
    assert!(written.body["data"]["custom_metadata"].is_null());
    for field in [
        "request_id",
        "lease_id",
        "renewable",
        "lease_duration",
        "wrap_info",
        "warnings",
        "auth",
        "mount_type",
    ] {
        assert!(written.body.get(field).is_some(), "envelope has {field}");
    }
    let read = s.get("/v1/secret/data/app/db", ROOT).await;
    assert_eq!(read.status, StatusCode::OK);
    let ids = [&written, &read].map(|r| {
        let id = uuid::Uuid::parse_str(r.body["request_id"].as_str().unwrap()).unwrap();
        assert_eq!(id.get_version(), Some(uuid::Version::Random));
        id
    });
    assert_ne!(ids[0], ids[1], "a request id per request");
    assert_eq!(
        read.body["data"]["data"],
        json!({ "password": "pw1", "user": "app" })
    );
    assert_eq!(read.body["data"]["metadata"]["version"], 1);
    assert_eq!(read.headers["cache-control"], "no-store");
    assert_eq!(read.headers["content-type"], "application/json");
}

#[tokio::test]
async fn versions_are_kept_and_readable_by_number() {
    let s = TestServer::start().await;
    for n in 1..=3 {
        s.put_secret("v", ROOT, json!({ "n": n })).await;
    }
    assert_eq!(
        s.get("/v1/secret/data/v", ROOT).await.body["data"]["data"]["n"],
        3
    );
    assert_eq!(
        s.get("/v1/secret/data/v?version=1", ROOT).await.body["data"]["data"]["n"],
        1
    );
    assert_eq!(
        s.get("/v1/secret/data/v?version=0", ROOT).await.body["data"]["data"]["n"],
        3
    );
    let missing = s.get("/v1/secret/data/v?version=9", ROOT).await;
    assert_eq!(
        (missing.status, missing.body.clone()),
        (StatusCode::NOT_FOUND, json!({ "errors": [] }))
    );
    let bad = s.get("/v1/secret/data/v?version=abc", ROOT).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let nothing = s.get("/v1/secret/data/never-written", ROOT).await;
    assert_eq!(
        (nothing.status, nothing.body),
        (StatusCode::NOT_FOUND, json!({ "errors": [] }))
    );
}

#[tokio::test]
async fn check_and_set() {
    let s = TestServer::start().await;
    let create = s
        .post(
            "/v1/secret/data/c",
            ROOT,
            json!({ "data": { "a": 1 }, "options": { "cas": 0 } }),
        )
        .await;
    assert_eq!(create.status, StatusCode::OK);
    let again = s
        .post(
            "/v1/secret/data/c",
            ROOT,
            json!({ "data": { "a": 2 }, "options": { "cas": 0 } }),
        )
        .await;
    assert_eq!(again.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        again.errors(),
        vec!["check-and-set parameter did not match the current version"]
    );
    let stale = s
        .post(
            "/v1/secret/data/c",
            ROOT,
            json!({ "data": { "a": 2 }, "options": { "cas": 5 } }),
        )
        .await;
    assert_eq!(stale.status, StatusCode::BAD_REQUEST);
    let right = s
        .post(
            "/v1/secret/data/c",
            ROOT,
            json!({ "data": { "a": 2 }, "options": { "cas": 1 } }),
        )
        .await;
    assert_eq!(right.body["data"]["version"], 2);
    assert_eq!(
        s.get("/v1/secret/data/c", ROOT).await.body["data"]["data"]["a"],
        2,
        "failed CAS writes stored nothing"
    );
    let huge = s
        .post(
            "/v1/secret/data/c",
            ROOT,
            json!({ "data": {}, "options": { "cas": 1e300 } }),
        )
        .await;
    assert_eq!(huge.status, StatusCode::BAD_REQUEST);
    let negative = s
        .post(
            "/v1/secret/data/c",
            ROOT,
            json!({ "data": {}, "options": { "cas": -1 } }),
        )
        .await;
    assert_eq!(negative.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn cas_required_by_mount_config_or_key_metadata() {
    let s = TestServer::start().await;
    assert_eq!(
        s.post("/v1/secret/config", ROOT, json!({ "cas_required": true }))
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        s.get("/v1/secret/config", ROOT).await.body["data"]["cas_required"],
        true
    );
    let without = s.put_secret("r", ROOT, json!({ "a": 1 })).await;
    assert_eq!(without.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        without.errors(),
        vec!["check-and-set parameter required for this call"]
    );
    let with = s
        .post(
            "/v1/secret/data/r",
            ROOT,
            json!({ "data": { "a": 1 }, "options": { "cas": 0 } }),
        )
        .await;
    assert_eq!(with.status, StatusCode::OK);

    s.post("/v1/secret/config", ROOT, json!({ "cas_required": false }))
        .await;
    s.post(
        "/v1/secret/metadata/k",
        ROOT,
        json!({ "cas_required": true }),
    )
    .await;
    assert_eq!(
        s.put_secret("k", ROOT, json!({ "a": 1 })).await.errors(),
        vec!["check-and-set parameter required for this call"]
    );
    assert_eq!(
        s.put_secret("other", ROOT, json!({ "a": 1 })).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn patch_merges_and_requires_merge_patch_content_type() {
    let s = TestServer::start().await;
    s.put_secret(
        "p",
        ROOT,
        json!({ "keep": "1", "change": "old", "drop": "x" }),
    )
    .await;
    let wrong_type = s
        .request(
            "PATCH",
            "/v1/secret/data/p",
            Some(ROOT),
            Some(json!({ "data": { "change": "new" } })),
        )
        .await;
    assert_eq!(wrong_type.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let request = http::Request::builder()
        .method("PATCH")
        .uri("/v1/secret/data/p")
        .header("X-Vault-Token", ROOT)
        .header("Content-Type", "application/merge-patch+json")
        .body(axum::body::Body::from(
            r#"{"data": {"change": "new", "drop": null, "add": "y"}}"#,
        ))
        .unwrap();
    let patched = s.send(request).await;
    assert_eq!(patched.status, StatusCode::OK, "{:?}", patched.body);
    assert_eq!(patched.body["data"]["version"], 2);
    let read = s.get("/v1/secret/data/p", ROOT).await;
    assert_eq!(
        read.body["data"]["data"],
        json!({ "keep": "1", "change": "new", "add": "y" })
    );
    let request = http::Request::builder()
        .method("PATCH")
        .uri("/v1/secret/data/absent")
        .header("X-Vault-Token", ROOT)
        .header("Content-Type", "application/merge-patch+json")
        .body(axum::body::Body::from(r#"{"data": {"a": 1}}"#))
        .unwrap();
    assert_eq!(s.send(request).await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn soft_delete_undelete_and_destroy() {
    let s = TestServer::start().await;
    s.put_secret("d", ROOT, json!({ "v": 1 })).await;
    s.put_secret("d", ROOT, json!({ "v": 2 })).await;
    assert_eq!(
        s.request("DELETE", "/v1/secret/data/d", Some(ROOT), None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    let gone = s.get("/v1/secret/data/d", ROOT).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    assert!(
        gone.body["data"]["data"].is_null(),
        "soft-deleted: full envelope with data null"
    );
    assert_ne!(gone.body["data"]["metadata"]["deletion_time"], "");
    assert_eq!(gone.body["data"]["metadata"]["version"], 2);
    assert!(gone.body.get("request_id").is_some());
    assert_eq!(
        s.get("/v1/secret/data/d?version=1", ROOT).await.body["data"]["data"]["v"],
        1
    );

    let undelete = s
        .post("/v1/secret/undelete/d", ROOT, json!({ "versions": [2] }))
        .await;
    assert_eq!(undelete.status, StatusCode::NO_CONTENT);
    assert_eq!(
        s.get("/v1/secret/data/d", ROOT).await.body["data"]["data"]["v"],
        2
    );

    s.post("/v1/secret/delete/d", ROOT, json!({ "versions": [1] }))
        .await;
    assert_eq!(
        s.get("/v1/secret/data/d?version=1", ROOT).await.status,
        StatusCode::NOT_FOUND
    );

    assert_eq!(
        s.post("/v1/secret/destroy/d", ROOT, json!({ "versions": [2] }))
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    let destroyed = s.get("/v1/secret/data/d", ROOT).await;
    assert_eq!(destroyed.status, StatusCode::NOT_FOUND);
    assert_eq!(destroyed.body["data"]["metadata"]["destroyed"], true);
    s.post("/v1/secret/undelete/d", ROOT, json!({ "versions": [2] }))
        .await;
    assert_eq!(
        s.get("/v1/secret/data/d", ROOT).await.status,
        StatusCode::NOT_FOUND,
        "destroyed stays destroyed"
    );

    let no_versions = s.post("/v1/secret/delete/d", ROOT, json!({})).await;
    assert_eq!(no_versions.errors(), vec!["no version number provided"]);
    assert_eq!(
        s.request("DELETE", "/v1/secret/data/never", Some(ROOT), None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
}

#[tokio::test]
async fn metadata_read_write_prune_and_delete() {
    let s = TestServer::start().await;
    let set = s
        .post(
            "/v1/secret/metadata/m",
            ROOT,
            json!({ "max_versions": 2, "custom_metadata": { "owner": "team-a" } }),
        )
        .await;
    assert_eq!(set.status, StatusCode::NO_CONTENT);
    for n in 1..=3 {
        s.put_secret("m", ROOT, json!({ "n": n })).await;
    }
    let meta = s.get("/v1/secret/metadata/m", ROOT).await;
    assert_eq!(meta.status, StatusCode::OK);
    let data = &meta.body["data"];
    assert_eq!(data["current_version"], 3);
    assert_eq!(data["max_versions"], 2);
    assert_eq!(data["oldest_version"], 2);
    assert_eq!(data["custom_metadata"]["owner"], "team-a");
    assert_eq!(data["delete_version_after"], "0s");
    assert_eq!(
        data["versions"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        vec!["2", "3"]
    );
    for field in ["cas_required", "created_time", "updated_time"] {
        assert!(data.get(field).is_some(), "{field}");
    }
    assert!(
        data.get("data").is_none() && !meta.body.to_string().contains("\"n\":"),
        "metadata never carries data"
    );
    assert_eq!(
        s.get("/v1/secret/data/m?version=1", ROOT).await.status,
        StatusCode::NOT_FOUND,
        "pruned"
    );
    assert_eq!(
        s.get("/v1/secret/data/m", ROOT).await.body["data"]["metadata"]["custom_metadata"]["owner"],
        "team-a"
    );

    assert_eq!(
        s.request("DELETE", "/v1/secret/metadata/m", Some(ROOT), None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        s.get("/v1/secret/metadata/m", ROOT).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        s.get("/v1/secret/data/m?version=3", ROOT).await.status,
        StatusCode::NOT_FOUND
    );
    let rewritten = s.put_secret("m", ROOT, json!({ "n": "fresh" })).await;
    assert_eq!(
        rewritten.body["data"]["version"], 1,
        "deleted metadata starts the key over"
    );

    let bad = s
        .post(
            "/v1/secret/metadata/m",
            ROOT,
            json!({ "custom_metadata": { "k": 5 } }),
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let too_many: serde_json::Map<String, serde_json::Value> =
        (0..65).map(|i| (format!("k{i}"), json!("v"))).collect();
    assert_eq!(
        s.post(
            "/v1/secret/metadata/m",
            ROOT,
            json!({ "custom_metadata": too_many })
        )
        .await
        .status,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn delete_version_after_marks_new_versions() {
    let s = TestServer::start().await;
    s.post(
        "/v1/secret/metadata/t",
        ROOT,
        json!({ "delete_version_after": "1h" }),
    )
    .await;
    let written = s.put_secret("t", ROOT, json!({ "a": 1 })).await;
    assert_ne!(
        written.body["data"]["deletion_time"], "",
        "deletion scheduled"
    );
    assert_eq!(
        s.get("/v1/secret/data/t", ROOT).await.status,
        StatusCode::OK,
        "still live until then"
    );
    assert_eq!(
        s.get("/v1/secret/metadata/t", ROOT).await.body["data"]["delete_version_after"],
        "3600s"
    );
}

#[tokio::test]
async fn list_keys_and_folders() {
    let s = TestServer::start().await;
    for path in ["a", "b", "dir/x", "dir/y/z"] {
        s.put_secret(path, ROOT, json!({ "v": 1 })).await;
    }
    let listed = s
        .request("LIST", "/v1/secret/metadata/", Some(ROOT), None)
        .await;
    assert_eq!(listed.body["data"]["keys"], json!(["a", "b", "dir/"]));
    let same = s.get("/v1/secret/metadata/?list=true", ROOT).await;
    assert_eq!(same.body["data"]["keys"], listed.body["data"]["keys"]);
    let nested = s
        .request("LIST", "/v1/secret/metadata/dir", Some(ROOT), None)
        .await;
    assert_eq!(nested.body["data"]["keys"], json!(["x", "y/"]));
    let empty = s
        .request("LIST", "/v1/secret/metadata/nothing/", Some(ROOT), None)
        .await;
    assert_eq!(
        (empty.status, empty.body),
        (StatusCode::NOT_FOUND, json!({ "errors": [] }))
    );
}

#[tokio::test]
async fn mounts_enable_list_describe_and_remove() {
    let s = TestServer::start().await;
    let enable = s
        .post(
            "/v1/sys/mounts/team",
            ROOT,
            json!({ "type": "kv", "options": { "version": "2" } }),
        )
        .await;
    assert_eq!(enable.status, StatusCode::NO_CONTENT);
    let v1 = s
        .post(
            "/v1/sys/mounts/old",
            ROOT,
            json!({ "type": "kv", "options": { "version": "1" } }),
        )
        .await;
    assert_eq!(v1.status, StatusCode::BAD_REQUEST);
    assert!(v1.errors()[0].contains("version 2"));
    assert_eq!(
        s.post("/v1/sys/mounts/kv2", ROOT, json!({ "type": "kv-v2" }))
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        s.post("/v1/sys/mounts/team", ROOT, json!({ "type": "kv-v2" }))
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        s.post("/v1/sys/mounts/sys", ROOT, json!({ "type": "kv-v2" }))
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        s.post("/v1/sys/mounts/pki", ROOT, json!({ "type": "pki" }))
            .await
            .status,
        StatusCode::BAD_REQUEST
    );

    let mounts = s.get("/v1/sys/mounts", ROOT).await;
    assert_eq!(mounts.body["data"]["team/"]["type"], "kv");
    assert_eq!(mounts.body["data"]["team/"]["options"]["version"], "2");
    assert!(mounts.body["data"]["secret/"].is_object());

    let ui = s.get("/v1/sys/internal/ui/mounts/team/data/x", ROOT).await;
    assert_eq!(ui.status, StatusCode::OK);
    assert_eq!(ui.body["data"]["path"], "team/");
    assert_eq!(ui.body["data"]["type"], "kv");
    assert_eq!(ui.body["data"]["options"]["version"], "2");

    s.post("/v1/team/data/x", ROOT, json!({ "data": { "a": 1 } }))
        .await;
    assert_eq!(
        s.get("/v1/team/data/x", ROOT).await.body["data"]["data"]["a"],
        1
    );
    let old_prefix = format!(
        "logical/{}/",
        mounts.body["data"]["team/"]["uuid"].as_str().unwrap()
    );
    assert!(!s.core.storage().list(&old_prefix).await.unwrap().is_empty());
    assert_eq!(
        s.request("DELETE", "/v1/sys/mounts/team", Some(ROOT), None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        s.get("/v1/team/data/x", ROOT).await.status,
        StatusCode::NOT_FOUND
    );
    s.post("/v1/sys/mounts/team", ROOT, json!({ "type": "kv-v2" }))
        .await;
    assert_eq!(
        s.get("/v1/team/data/x", ROOT).await.status,
        StatusCode::NOT_FOUND,
        "remount starts empty"
    );
    assert!(
        s.core.storage().list(&old_prefix).await.unwrap().is_empty(),
        "the old mount's items were purged"
    );
}

#[tokio::test]
async fn oversized_values_and_bodies_are_refused_and_nothing_is_stored() {
    let s = TestServer::start().await;
    let big = "x".repeat(500 * 1024);
    let too_big_item = s.put_secret("big", ROOT, json!({ "blob": big })).await;
    assert_eq!(too_big_item.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(!too_big_item.errors()[0].contains("xxxx"));
    let huge = "y".repeat(2 * 1024 * 1024);
    let too_big_body = s.put_secret("big", ROOT, json!({ "blob": huge })).await;
    assert_eq!(too_big_body.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        s.get("/v1/secret/metadata/big", ROOT).await.status,
        StatusCode::NOT_FOUND,
        "nothing stored"
    );
}

/// A read sends the stored version as it is: an item that is not JSON (which no write makes)
/// is a 500 without its bytes, never a broken answer.
#[tokio::test]
async fn a_stored_version_that_is_not_json_is_a_500_not_a_broken_answer() {
    let s = TestServer::start().await;
    // Version 1 is read from its own item once version 2 is the latest.
    for value in ["b", "c"] {
        s.put_secret("odd", ROOT, json!({ "a": value })).await;
    }
    let uuid = s.secret_mount_uuid().await;
    let unsealed = s.core.unsealed().unwrap();
    unsealed
        .store
        .write(vec![kinko_server::encrypted::Write::Put {
            path: format!("logical/{uuid}/versions/odd/1"),
            value: zeroize::Zeroizing::new(b"{\"v\":\"not-json-canary\"".to_vec()),
            precondition: kinko_server::storage::Precondition::None,
        }])
        .await
        .unwrap();
    let read = s.get("/v1/secret/data/odd?version=1", ROOT).await;
    assert_eq!(read.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        read.errors()[0].starts_with("internal error"),
        "{:?}",
        read.body
    );
    assert!(!String::from_utf8_lossy(&read.raw).contains("canary"));
}

/// A write keeps the new version's data in the key's metadata item too, so the latest version
/// reads from that one item: it reads even with its version item gone. Any other change to the
/// metadata drops the copy, and reads go back to the version items.
#[tokio::test]
async fn the_latest_version_reads_from_the_metadata_item_until_the_metadata_changes() {
    let s = TestServer::start().await;
    for value in ["one", "two"] {
        s.put_secret("inline", ROOT, json!({ "v": value })).await;
    }
    let uuid = s.secret_mount_uuid().await;
    let unsealed = s.core.unsealed().unwrap();
    let drop_item = |version: u64| {
        let path = format!("logical/{uuid}/versions/inline/{version}");
        let store = &unsealed.store;
        async move {
            store
                .write(vec![kinko_server::encrypted::Write::delete(
                    path,
                    kinko_server::storage::Precondition::None,
                )])
                .await
                .unwrap()
        }
    };
    drop_item(2).await;
    let latest = s.get("/v1/secret/data/inline", ROOT).await;
    assert_eq!(latest.status, StatusCode::OK, "{:?}", latest.body);
    assert_eq!(latest.body["data"]["data"], json!({ "v": "two" }));
    assert_eq!(latest.body["data"]["metadata"]["version"], 2);
    let older = s.get("/v1/secret/data/inline?version=1", ROOT).await;
    assert_eq!(
        older.body["data"]["data"],
        json!({ "v": "one" }),
        "from its item"
    );
    // A metadata-only change drops the copy: the read now needs the (removed) item.
    s.post(
        "/v1/secret/metadata/inline",
        ROOT,
        json!({ "custom_metadata": { "owner": "a" } }),
    )
    .await;
    let after = s.get("/v1/secret/data/inline", ROOT).await;
    assert_eq!(after.status, StatusCode::NOT_FOUND, "{:?}", after.body);
    // The next write keeps a copy again.
    s.put_secret("inline", ROOT, json!({ "v": "three" })).await;
    drop_item(3).await;
    let latest = s.get("/v1/secret/data/inline", ROOT).await;
    assert_eq!(latest.body["data"]["data"], json!({ "v": "three" }));
    assert_eq!(
        latest.body["data"]["metadata"]["custom_metadata"],
        json!({ "owner": "a" })
    );
    // Data too long for the metadata item's leaf (SQLite: ~1 KiB with 4 KiB pages) is read
    // from its version item only.
    s.put_secret("inline", ROOT, json!({ "v": "x".repeat(3000) }))
        .await;
    drop_item(4).await;
    let long = s.get("/v1/secret/data/inline", ROOT).await;
    assert_eq!(long.status, StatusCode::NOT_FOUND, "{:?}", long.body);
    // Never in a metadata answer.
    let metadata = s.get("/v1/secret/metadata/inline", ROOT).await;
    assert!(
        !metadata.body.to_string().contains("three"),
        "{:?}",
        metadata.body
    );
    assert!(metadata.body["data"].get("current").is_none());
}

/// Destroying the latest version removes its data from the metadata item too.
#[tokio::test]
async fn destroying_the_latest_version_leaves_no_copy_of_its_data() {
    let s = TestServer::start().await;
    s.put_secret("gone", ROOT, json!({ "v": "destroy-canary" }))
        .await;
    s.post("/v1/secret/destroy/gone", ROOT, json!({ "versions": [1] }))
        .await;
    let read = s.get("/v1/secret/data/gone", ROOT).await;
    assert_eq!(read.status, StatusCode::NOT_FOUND);
    assert!(read.body["data"]["data"].is_null());
    let uuid = s.secret_mount_uuid().await;
    let unsealed = s.core.unsealed().unwrap();
    let item = unsealed
        .store
        .get(&format!("logical/{uuid}/metadata/gone"))
        .await
        .unwrap()
        .unwrap();
    assert!(!String::from_utf8_lossy(item.bytes.expose()).contains("destroy-canary"));
}
