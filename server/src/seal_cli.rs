//! `kinko seal` and `kinko sealed inspect`: seal a value for one namespace + service account +
//! variable name, offline with a saved key file or online by fetching the key document; either
//! way the key is checked against the pinned signing-key fingerprint and sealed locally.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use kinko_server::sealed::{self, offline};

pub struct SealArgs {
    pub namespace: String,
    pub service_account: String,
    pub name: String,
    pub key: Option<PathBuf>,
    pub fingerprint: Option<String>,
    pub from_file: Option<PathBuf>,
}

/// The pinned fingerprint: `--fingerprint`, else `signing_key_fingerprint:` of the nearest
/// `.kinko.yaml` in the current directory or a parent.
fn pinned(flag: Option<&str>) -> anyhow::Result<String> {
    if let Some(pin) = flag {
        return Ok(pin.to_owned());
    }
    let start = std::env::current_dir()?;
    let mut dir = Some(start.as_path());
    while let Some(here) = dir {
        let file = here.join(".kinko.yaml");
        if let Ok(text) = std::fs::read_to_string(&file) {
            return offline::pin_from_yaml(&text)
                .ok_or_else(|| anyhow!("{} has no signing_key_fingerprint: line", file.display()));
        }
        dir = here.parent();
    }
    bail!(
        "no pinned signing key: pass --fingerprint sha256:… or add signing_key_fingerprint: to \
         .kinko.yaml (the fingerprint is in GET /v1/sealed/keys)"
    )
}

fn env_first(names: &[&str]) -> Option<String> {
    names
        .iter()
        .find_map(|n| std::env::var(n).ok().filter(|v| !v.is_empty()))
}

async fn fetch_key(namespace: &str, service_account: &str) -> anyhow::Result<serde_json::Value> {
    let addr = env_first(&["KINKO_ADDR", "VAULT_ADDR", "BAO_ADDR"]).ok_or_else(|| {
        anyhow!("no --key file and no server address: set KINKO_ADDR (or VAULT_ADDR)")
    })?;
    let mut builder = kinko_client::Client::builder(addr);
    if let Some(ca) = env_first(&["KINKO_CACERT", "VAULT_CACERT", "BAO_CACERT"]) {
        let pem =
            std::fs::read(&ca).with_context(|| format!("cannot read the CA certificate {ca}"))?;
        builder = builder.ca_pem(pem);
    }
    let client = builder.build()?;
    client
        .request(
            kinko_client::Method::GET,
            &format!("sealed/keys/{namespace}/{service_account}"),
            None,
        )
        .await?
        .ok_or_else(|| anyhow!("the server sent no key document"))
}

/// The value to seal: a file's exact bytes, or stdin without one trailing newline (as `echo`
/// adds it). Never from the command line, where other users and shell history see it.
fn plaintext(from_file: Option<&Path>) -> anyhow::Result<zeroize::Zeroizing<Vec<u8>>> {
    let mut bytes = zeroize::Zeroizing::new(Vec::new());
    match from_file {
        Some(path) => {
            std::fs::File::open(path)
                .and_then(|mut f| f.read_to_end(&mut bytes))
                .with_context(|| format!("cannot read {}", path.display()))?;
        }
        None => {
            std::io::stdin()
                .read_to_end(&mut bytes)
                .context("cannot read stdin")?;
            if bytes.ends_with(b"\n") {
                bytes.pop();
                if bytes.ends_with(b"\r") {
                    bytes.pop();
                }
            }
        }
    }
    if bytes.is_empty() {
        bail!("nothing to seal: the value is empty");
    }
    Ok(bytes)
}

pub async fn seal(args: SealArgs) -> anyhow::Result<()> {
    if !sealed::valid_variable_name(&args.name) {
        bail!(
            "--name {:?} is not an environment variable name ([A-Za-z_][A-Za-z0-9_]*)",
            args.name
        );
    }
    let pin = pinned(args.fingerprint.as_deref())?;
    let response = match &args.key {
        Some(file) => {
            let text = std::fs::read(file)
                .with_context(|| format!("cannot read the key file {}", file.display()))?;
            serde_json::from_slice(&text)
                .map_err(|_| anyhow!("the key file {} is not JSON", file.display()))?
        }
        None => fetch_key(&args.namespace, &args.service_account).await?,
    };
    let document =
        offline::verify_key_response(&response, &pin, &args.namespace, &args.service_account)
            .map_err(|e| anyhow!(e))?;
    let value = plaintext(args.from_file.as_deref())?;
    let sealed =
        offline::seal_with_document(&document, &args.name, &value).map_err(|e| anyhow!(e))?;
    println!("{sealed}");
    Ok(())
}

pub fn inspect(value: &str) -> anyhow::Result<()> {
    let decoded = sealed::decode(value.trim()).map_err(|e| anyhow!("{e}"))?;
    print!("{}", offline::inspect(&decoded));
    Ok(())
}
