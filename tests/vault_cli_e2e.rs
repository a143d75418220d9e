//! A real, unmodified Vault client against `kinko server --dev`: the OpenBao CLI (`bao`,
//! installed by the test command), driven as a process with its usual environment.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use kinko_e2e::{output, tool, Kinko, Spawned, COMMAND_TIMEOUT};

struct Cli<'a> {
    server: &'a Kinko,
    token: String,
}

impl Cli<'_> {
    fn run(&self, args: &[&str]) -> Output {
        self.run_with_stdin(args, None)
    }

    fn run_with_stdin(&self, args: &[&str], stdin_file: Option<&Path>) -> Output {
        let mut command = Command::new(tool("bao"));
        command
            .args(args)
            .env("BAO_ADDR", &self.server.addr)
            .env("BAO_CACERT", &self.server.ca)
            .env("BAO_TOKEN", &self.token)
            .env("VAULT_ADDR", &self.server.addr)
            .env("VAULT_CACERT", &self.server.ca)
            .env("VAULT_TOKEN", &self.token)
            .env("HOME", self.server.ca.parent().unwrap());
        match stdin_file {
            None => output(&mut command),
            Some(file) => Spawned::spawn(
                command
                    .stdin(std::fs::File::open(file).unwrap())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped()),
            )
            .finish(COMMAND_TIMEOUT),
        }
    }

    /// Runs and expects success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "bao {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        // Flags go after the (sub)command words: before the first flag or path.
        let mut all = args.to_vec();
        let at = all
            .iter()
            .position(|a| a.starts_with('-') || a.contains('/'))
            .unwrap_or(all.len());
        all.insert(at, "-format=json");
        serde_json::from_str(&self.ok(&all)).expect("JSON output")
    }
}

#[test]
fn bao_cli_kv_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let server = Kinko::dev(dir.path(), Some("cli-root"));
    let cli = Cli {
        server: &server,
        token: "cli-root".into(),
    };

    cli.ok(&[
        "kv",
        "put",
        "secret/app/config",
        "user=app",
        "password=first pass",
    ]);
    let read = cli.json(&["kv", "get", "secret/app/config"]);
    assert_eq!(read["data"]["data"]["password"], "first pass");
    assert_eq!(read["data"]["metadata"]["version"], 1);
    assert_eq!(
        cli.ok(&["kv", "get", "-field=user", "secret/app/config"]),
        "app"
    );

    cli.ok(&["kv", "patch", "secret/app/config", "password=second"]);
    let patched = cli.json(&["kv", "get", "secret/app/config"]);
    assert_eq!(patched["data"]["data"]["password"], "second");
    assert_eq!(
        patched["data"]["data"]["user"], "app",
        "patch keeps other keys"
    );
    assert_eq!(patched["data"]["metadata"]["version"], 2);
    assert_eq!(
        cli.json(&["kv", "get", "-version=1", "secret/app/config"])["data"]["data"]["password"],
        "first pass"
    );

    cli.ok(&["kv", "delete", "secret/app/config"]);
    let deleted = cli.run(&["kv", "get", "secret/app/config"]);
    assert!(
        !deleted.status.success() || !String::from_utf8_lossy(&deleted.stdout).contains("second")
    );
    cli.ok(&["kv", "undelete", "-versions=2", "secret/app/config"]);
    assert_eq!(
        cli.ok(&["kv", "get", "-field=password", "secret/app/config"]),
        "second"
    );
    cli.ok(&["kv", "destroy", "-versions=1", "secret/app/config"]);

    let metadata = cli.json(&["kv", "metadata", "get", "secret/app/config"]);
    assert_eq!(metadata["data"]["current_version"], 2);
    assert_eq!(metadata["data"]["versions"]["1"]["destroyed"], true);
    cli.ok(&[
        "kv",
        "metadata",
        "put",
        "-max-versions=5",
        "-custom-metadata=owner=team-a",
        "secret/app/config",
    ]);
    let metadata = cli.json(&["kv", "metadata", "get", "secret/app/config"]);
    assert_eq!(metadata["data"]["max_versions"], 5);
    assert_eq!(metadata["data"]["custom_metadata"]["owner"], "team-a");

    cli.ok(&[
        "kv",
        "put",
        "-cas=2",
        "secret/app/config",
        "user=app",
        "password=third",
    ]);
    let stale = cli.run(&["kv", "put", "-cas=2", "secret/app/config", "password=stale"]);
    assert!(!stale.status.success());
    assert!(
        String::from_utf8_lossy(&stale.stderr).contains("check-and-set parameter did not match")
    );

    cli.ok(&["kv", "put", "secret/app/other", "k=v"]);
    let listed = cli.json(&["kv", "list", "secret/app"]);
    assert_eq!(listed, serde_json::json!(["config", "other"]));

    cli.ok(&["kv", "metadata", "delete", "secret/app/other"]);
    assert!(!cli.run(&["kv", "get", "secret/app/other"]).status.success());
}

#[test]
fn bao_cli_policy_and_limited_token() {
    let dir = tempfile::tempdir().unwrap();
    let server = Kinko::dev(dir.path(), Some("cli-root"));
    let root = Cli {
        server: &server,
        token: "cli-root".into(),
    };
    root.ok(&["kv", "put", "secret/team-a/db", "password=a-secret"]);
    root.ok(&["kv", "put", "secret/team-b/db", "password=b-secret"]);

    let policy = dir.path().join("team-a.hcl");
    std::fs::write(
        &policy,
        "path \"secret/data/team-a/*\" {\n  capabilities = [\"read\"]\n}\n",
    )
    .unwrap();
    root.ok(&["policy", "write", "team-a", policy.to_str().unwrap()]);
    assert!(root.ok(&["policy", "list"]).lines().any(|l| l == "team-a"));
    assert!(root
        .ok(&["policy", "read", "team-a"])
        .contains("secret/data/team-a/*"));

    let created = root.json(&["token", "create", "-policy=team-a", "-ttl=1h"]);
    let token = created["auth"]["client_token"].as_str().unwrap().to_owned();
    assert_eq!(
        created["auth"]["policies"],
        serde_json::json!(["default", "team-a"])
    );
    let user = Cli {
        server: &server,
        token,
    };
    assert_eq!(
        user.ok(&["kv", "get", "-field=password", "secret/team-a/db"]),
        "a-secret"
    );
    let denied = user.run(&["kv", "get", "secret/team-b/db"]);
    assert!(
        !denied.status.success(),
        "reading another team's secret is denied"
    );
    let stderr = String::from_utf8_lossy(&denied.stderr);
    assert!(
        stderr.contains("403") && stderr.contains("permission denied"),
        "{stderr}"
    );
    assert!(!stderr.contains("b-secret"));
    assert!(
        !user
            .run(&["kv", "put", "secret/team-a/db", "password=mine"])
            .status
            .success(),
        "read-only"
    );
    assert!(
        !user
            .run(&["token", "create", "-policy=root"])
            .status
            .success(),
        "no escalation"
    );
    let lookup = user.json(&["token", "lookup"]);
    assert_eq!(
        lookup["data"]["policies"],
        serde_json::json!(["default", "team-a"])
    );

    let status = root.ok(&["status"]);
    assert!(
        status.contains("Sealed") && status.contains("false"),
        "{status}"
    );
}
