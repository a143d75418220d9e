//! envrun: fetch secrets from kinko and start a program with them as environment variables.
//! By default it `execve`s the program (same PID: signals and exit codes are the program's own);
//! `--supervise` keeps envrun as a parent that can re-fetch and restart. `envrun install DIR`
//! copies envrun and a CA bundle into a Pod's shared volume (the injector's init container).

mod install;
mod resolve;
mod supervise;

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use kinko_spec::{parse_secret_spec, Naming, SecretSpec};
use resolve::{Login, Plan, Resolver, Settings};
use supervise::{parse_on_change, OnChange, Supervisor};

const DEFAULT_K8S_TOKEN_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

#[derive(Parser)]
#[command(
    name = "envrun",
    version,
    about = "Start a program with its kinko secrets as environment variables",
    after_help = "Server: KINKO_ADDR / KINKO_CACERT (or VAULT_ADDR / VAULT_CACERT). Token: KINKO_TOKEN \
                  (or VAULT_TOKEN), --token-file, or --k8s-role. Inherited variables whose value is \
                  kinko:PATH#KEY[#VERSION] or kinko:sealed:v1:... are replaced by the secret. \
                  Control variables (address, CA, token) never reach the program. \
                  `envrun install DIR` copies envrun and the CA in KINKO_INSTALL_CA_PEM into DIR."
)]
struct Args {
    /// PATH (every key), or PATH#KEY[#VERSION][=NAME] (one key, optionally under NAME). Repeatable.
    #[arg(long = "secret", value_name = "SPEC", value_parser = parse_secret_spec)]
    secrets: Vec<SecretSpec>,
    /// Prepended to every derived variable name.
    #[arg(long, default_value = "")]
    prefix: String,
    /// Upper-case derived variable names.
    #[arg(long)]
    upcase: bool,
    /// Replace characters not allowed in a variable name by '_' (without it they are an error).
    #[arg(long)]
    sanitize: bool,
    /// Name a whole-path secret's variables by key only, not PATH_KEY.
    #[arg(long)]
    no_prefix_path: bool,
    /// Start the program with only the secrets, no inherited environment.
    #[arg(long)]
    pristine: bool,
    /// Let a later source replace a variable an earlier one set (otherwise an error).
    #[arg(long)]
    allow_override: bool,
    /// Read the kinko token from this file.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Log in by Kubernetes auth with this role, using the Pod's service account token.
    #[arg(long, value_name = "ROLE")]
    k8s_role: Option<String>,
    /// The service account token to log in with.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_K8S_TOKEN_PATH)]
    k8s_token_path: PathBuf,
    /// The Kubernetes auth mount.
    #[arg(long, value_name = "PATH", default_value = "kubernetes")]
    k8s_mount: String,
    /// Retries of a failed request (server unreachable, sealed, 5xx), with back-off.
    #[arg(long, default_value_t = 3)]
    retry: u32,
    /// Give up on fetching after this long (e.g. 30s, 2m).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    timeout: Duration,
    /// Stay as the parent: forward signals, exit with the program's code.
    #[arg(long)]
    supervise: bool,
    /// With --supervise: re-fetch on this interval (e.g. 30s).
    #[arg(long, value_parser = parse_duration, requires = "supervise")]
    watch: Option<Duration>,
    /// With --watch: what to do when a secret changed: restart, or signal:NAME.
    #[arg(long, default_value = "restart", value_parser = parse_on_change, requires = "watch")]
    on_change: OnChange,
    /// Print the names of the variables that would be set (never values) and exit.
    #[arg(long)]
    dry_run: bool,
    /// The program and its arguments, passed as argv (never through a shell).
    #[arg(last = true, value_name = "PROGRAM")]
    command: Vec<String>,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let amount: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 500ms, 30s, 2m, 1h"))?;
    Ok(match unit {
        "ms" => Duration::from_millis(amount),
        "" | "s" => Duration::from_secs(amount),
        "m" => Duration::from_secs(amount * 60),
        "h" => Duration::from_secs(amount * 3600),
        _ => {
            return Err(format!(
                "{text:?} is not a duration like 500ms, 30s, 2m, 1h"
            ))
        }
    })
}

fn env_first(names: &[&str]) -> Option<String> {
    names
        .iter()
        .find_map(|n| std::env::var(n).ok().filter(|v| !v.is_empty()))
}

fn settings(args: &Args) -> Result<Settings, String> {
    let addr = env_first(&["KINKO_ADDR", "VAULT_ADDR", "BAO_ADDR"]).ok_or(
        "no server address: set KINKO_ADDR (or VAULT_ADDR), e.g. https://kinko.kinko-system:8200",
    )?;
    let ca_pem = match env_first(&["KINKO_CACERT", "VAULT_CACERT", "BAO_CACERT"]) {
        Some(path) => Some(
            std::fs::read(&path)
                .map_err(|e| format!("cannot read the CA certificate {path}: {e}"))?,
        ),
        None => None,
    };
    let login = if let Some(role) = &args.k8s_role {
        Login::Kubernetes {
            role: role.clone(),
            token_path: args.k8s_token_path.clone(),
            mount: args.k8s_mount.clone(),
        }
    } else if let Some(file) = &args.token_file {
        let token = std::fs::read_to_string(file)
            .map_err(|e| format!("cannot read the token file {}: {e}", file.display()))?;
        Login::Token(token.trim().to_owned())
    } else {
        Login::Token(
            env_first(&["KINKO_TOKEN", "VAULT_TOKEN", "BAO_TOKEN"])
                .ok_or("no credentials: set KINKO_TOKEN, or use --token-file or --k8s-role")?,
        )
    };
    Ok(Settings {
        addr,
        ca_pem,
        login,
        retries: args.retry,
        timeout: args.timeout,
    })
}

fn main() -> ExitCode {
    // `envrun install DIR` (the injector's init container). Before this sub-command existed,
    // a program could only follow `--`, so no earlier command line meant anything else.
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv.get(1).is_some_and(|a| a == "install") {
        let rest: Option<Vec<String>> = argv[2..]
            .iter()
            .map(|a| a.to_str().map(str::to_owned))
            .collect();
        let result = rest
            .ok_or_else(|| "DIR is not UTF-8".to_owned())
            .and_then(|rest| install::run(&rest));
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => {
                eprintln!("envrun install: {message}");
                ExitCode::from(1)
            }
        };
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    if args.command.is_empty() && !args.dry_run {
        eprintln!("envrun: no program given: envrun [OPTIONS] -- PROGRAM [ARGS...]");
        return ExitCode::from(2);
    }
    let settings = match settings(&args) {
        Ok(settings) => settings,
        Err(message) => {
            eprintln!("envrun: {message}");
            return ExitCode::from(1);
        }
    };
    let plan = Plan {
        secrets: args.secrets.clone(),
        naming: Naming {
            prefix: args.prefix.clone(),
            upcase: args.upcase,
            sanitize: args.sanitize,
            no_prefix_path: args.no_prefix_path,
        },
        allow_override: args.allow_override,
        pristine: args.pristine,
        inherited: std::env::vars().collect(),
    };
    let resolver = Resolver::new(settings, plan);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");

    if args.dry_run {
        return match runtime.block_on(resolver.names()) {
            Ok(names) => {
                for name in names {
                    println!("{name}");
                }
                ExitCode::SUCCESS
            }
            Err(error) => fail(&error),
        };
    }
    let env = match runtime.block_on(resolver.resolve()) {
        Ok(env) => env,
        Err(error) => return fail(&error),
    };
    let (program, program_args) = args.command.split_first().expect("checked above");
    if args.supervise {
        let supervisor = Supervisor {
            program,
            args: program_args,
            watch: args.watch,
            on_change: args.on_change,
            resolver: &resolver,
        };
        let code = runtime.block_on(supervisor.run(env));
        return ExitCode::from(code.clamp(0, 255) as u8);
    }
    drop(runtime);
    let error = std::process::Command::new(program)
        .args(program_args)
        .env_clear()
        .envs(&env)
        .exec();
    eprintln!("envrun: cannot start {program}: {error}");
    ExitCode::from(127)
}

fn fail(error: &resolve::ResolveError) -> ExitCode {
    eprintln!("envrun: {error}; the program was not started");
    ExitCode::from(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert!(parse_duration("1.5s").is_err());
        assert!(parse_duration("soon").is_err());
    }
}
