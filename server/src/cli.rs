//! What every client subcommand of `kinko` shares: the server connection from `KINKO_ADDR`,
//! `KINKO_TOKEN` and `KINKO_CACERT` (with `VAULT_*` and `BAO_*` fallbacks, as Vault's CLI).

use anyhow::{anyhow, Context};

fn env_first(names: &[&str]) -> Option<String> {
    names
        .iter()
        .find_map(|n| std::env::var(n).ok().filter(|v| !v.is_empty()))
}

/// A JSON file the operator saved (a key document, an import key); `what` names it in errors.
pub fn read_json(path: &std::path::Path, what: &str) -> anyhow::Result<serde_json::Value> {
    let text = std::fs::read(path)
        .with_context(|| format!("cannot read the {what} {}", path.display()))?;
    serde_json::from_slice(&text).map_err(|_| anyhow!("the {what} {} is not JSON", path.display()))
}

/// A client of the server named by the environment; with `with_token`, a token is required.
pub fn connect(with_token: bool) -> anyhow::Result<kinko_client::Client> {
    let addr = env_first(&["KINKO_ADDR", "VAULT_ADDR", "BAO_ADDR"])
        .ok_or_else(|| anyhow!("no server address: set KINKO_ADDR (or VAULT_ADDR)"))?;
    let mut builder = kinko_client::Client::builder(addr);
    if let Some(ca) = env_first(&["KINKO_CACERT", "VAULT_CACERT", "BAO_CACERT"]) {
        let pem =
            std::fs::read(&ca).with_context(|| format!("cannot read the CA certificate {ca}"))?;
        builder = builder.ca_pem(pem);
    }
    if with_token {
        let token = env_first(&["KINKO_TOKEN", "VAULT_TOKEN", "BAO_TOKEN"])
            .ok_or_else(|| anyhow!("no token: set KINKO_TOKEN (or VAULT_TOKEN)"))?;
        builder = builder.token(token);
    }
    Ok(builder.build()?)
}
