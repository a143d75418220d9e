//! `kinko status`, `kinko operator init|rotate|sealing-key`, `kinko sealed rotate`: operator
//! tasks against a running server (the connection comes from the environment, see `cli`).

use std::io::Read;
use std::path::Path;

use anyhow::{anyhow, bail, Context};
use kinko_client::Method;
use serde_json::{json, Value};

use crate::cli::connect;

/// `kinko status`: the seal status, one `field: value` line each. Exit code 2 when sealed,
/// as `vault status`.
pub async fn status() -> anyhow::Result<std::process::ExitCode> {
    let status = connect(false)?.seal_status().await?;
    for field in [
        "type",
        "initialized",
        "sealed",
        "t",
        "n",
        "version",
        "storage_type",
        "cluster_name",
        "cluster_id",
    ] {
        let value = &status[field];
        let text = value
            .as_str()
            .map_or_else(|| value.to_string(), str::to_owned);
        println!("{field}: {text}");
    }
    Ok(if status["sealed"] == json!(false) {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(2)
    })
}

/// `kinko operator init`: initialises the server and prints the root token and recovery keys
/// (shown once: only a keyed hash of the token is stored).
pub async fn init(shares: u8, threshold: u8, json_output: bool) -> anyhow::Result<()> {
    let response = connect(false)?
        .request(
            Method::PUT,
            "sys/init",
            Some(&json!({ "recovery_shares": shares, "recovery_threshold": threshold })),
        )
        .await?
        .ok_or_else(|| anyhow!("the server sent an empty answer to sys/init"))?;
    if json_output {
        println!("{response}");
        return Ok(());
    }
    let keys = response["recovery_keys"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for (n, key) in keys.iter().enumerate() {
        println!(
            "Recovery key {}: {}",
            n + 1,
            key.as_str().unwrap_or_default()
        );
    }
    println!(
        "Root token: {}",
        response["root_token"].as_str().unwrap_or_default()
    );
    println!(
        "\nStore these now: they are not shown again. {threshold} of the {} recovery keys \
         authorise recovery operations; revoke the root token once other access is set up.",
        keys.len()
    );
    Ok(())
}

/// `kinko operator rotate`: a new keyring term for new writes (`sys/rotate`).
pub async fn rotate() -> anyhow::Result<()> {
    let client = connect(true)?;
    client.request(Method::PUT, "sys/rotate", None).await?;
    let status = client
        .request(Method::GET, "sys/key-status", None)
        .await?
        .unwrap_or_default();
    let term = status["data"]["term"]
        .as_u64()
        .ok_or_else(|| anyhow!("sys/key-status sent no term"))?;
    println!("Rotated the keyring: term {term}");
    Ok(())
}

/// `kinko sealed rotate`: a new sealing epoch; with `retire_before`, older values stop opening.
pub async fn sealed_rotate(retire_before: Option<u64>) -> anyhow::Result<()> {
    let client = connect(true)?;
    let body = match retire_before {
        Some(cutoff) => json!({ "retire_before": cutoff }),
        None => json!({}),
    };
    client
        .request(Method::POST, "sealed/rotate", Some(&body))
        .await?;
    println!("Started a new sealing epoch: rewrap manifests with kinko sealed rewrap --manifest");
    Ok(())
}

/// `kinko operator sealing-key import-key`: this cluster's signed import key, to hand to the
/// operator of the cluster whose sealed values should open here.
pub async fn import_key() -> anyhow::Result<()> {
    let response = connect(true)?
        .request(Method::GET, "sealed/import-key", None)
        .await?
        .ok_or_else(|| anyhow!("the server sent no import key"))?;
    println!("{}", serde_json::to_string_pretty(&response["data"])?);
    Ok(())
}

/// `kinko operator sealing-key export`: this cluster's sealing root wrapped to another
/// cluster's import key (checked against that cluster's pinned fingerprint by the server).
pub async fn export(import_key: &Path, fingerprint: &str) -> anyhow::Result<()> {
    let text = std::fs::read(import_key)
        .with_context(|| format!("cannot read the import key {}", import_key.display()))?;
    let saved: Value = serde_json::from_slice(&text)
        .map_err(|_| anyhow!("the import key {} is not JSON", import_key.display()))?;
    let data = saved
        .get("data")
        .filter(|d| d.is_object())
        .unwrap_or(&saved);
    let field = |name: &str| {
        data.get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("the import key file has no {name:?} field"))
    };
    let body = json!({
        "document": field("document")?,
        "signature": field("signature")?,
        "signing_key": field("signing_key")?,
        "fingerprint": fingerprint,
    });
    let response = connect(true)?
        .request(Method::POST, "sealed/export", Some(&body))
        .await?
        .ok_or_else(|| anyhow!("the server sent no bundle"))?;
    let bundle = response["data"]["bundle"]
        .as_str()
        .ok_or_else(|| anyhow!("the server sent no bundle"))?;
    println!("{bundle}");
    Ok(())
}

/// `kinko operator sealing-key import`: keeps another cluster's sealing root from its bundle,
/// if that root's signing key has the sender's pinned fingerprint.
pub async fn import(from_file: Option<&Path>, fingerprint: &str) -> anyhow::Result<()> {
    let mut bundle = String::new();
    match from_file {
        Some(path) => {
            bundle = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?
        }
        None => {
            std::io::stdin()
                .read_to_string(&mut bundle)
                .context("cannot read stdin")?;
        }
    }
    let bundle = bundle.trim();
    if bundle.is_empty() {
        bail!(
            "no bundle: pass --from-file or pipe the output of `kinko operator sealing-key export`"
        );
    }
    let response = connect(true)?
        .request(
            Method::POST,
            "sealed/import",
            Some(&json!({ "bundle": bundle, "fingerprint": fingerprint })),
        )
        .await?
        .unwrap_or_default();
    let data = &response["data"];
    println!(
        "Imported the sealing key of cluster {} (its epochs from {} open here); \
         kinko sealed rewrap --manifest moves its values to this cluster",
        data["cluster_id"].as_str().unwrap_or("?"),
        data["retired_before"].as_u64().unwrap_or(0).max(1),
    );
    Ok(())
}

/// `kinko operator sealing-key remove CLUSTER_ID`: that cluster's values stop opening here.
pub async fn remove(cluster_id: &str) -> anyhow::Result<()> {
    connect(true)?
        .request(Method::DELETE, &format!("sealed/import/{cluster_id}"), None)
        .await?;
    println!("Removed the imported sealing key of cluster {cluster_id}");
    Ok(())
}
