//! Supervise mode: envrun stays the parent, forwards signals to the program, exits with its
//! code (128 + signal when it was killed), and optionally re-fetches on an interval,
//! restarting the program or signalling it when a secret changed.

use std::collections::BTreeMap;
use std::future::Future;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};

use crate::resolve::Resolver;

const STOP_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnChange {
    Restart,
    Signal(i32),
}

pub fn parse_on_change(text: &str) -> Result<OnChange, String> {
    match text {
        "restart" => Ok(OnChange::Restart),
        other => match other.strip_prefix("signal:").and_then(signal_number) {
            Some(number) => Ok(OnChange::Signal(number)),
            None => {
                Err("expected restart or signal:NAME (HUP, TERM, INT, QUIT, USR1, USR2)".into())
            }
        },
    }
}

fn signal_number(name: &str) -> Option<i32> {
    Some(match name.trim_start_matches("SIG") {
        "HUP" => libc::SIGHUP,
        "TERM" => libc::SIGTERM,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        _ => return None,
    })
}

const FORWARDED: [i32; 6] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

fn send(pid: Option<u32>, number: i32) {
    if let Some(pid) = pid {
        // SAFETY: signalling our own child by the pid tokio gave us.
        unsafe { libc::kill(pid as i32, number) };
    }
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

pub struct Supervisor<'a> {
    pub program: &'a str,
    pub args: &'a [String],
    pub watch: Option<Duration>,
    pub on_change: OnChange,
    pub resolver: &'a Resolver,
}

impl Supervisor<'_> {
    fn spawn(&self, env: &BTreeMap<String, String>) -> std::io::Result<tokio::process::Child> {
        tokio::process::Command::new(self.program)
            .args(self.args)
            .env_clear()
            .envs(env)
            .spawn()
    }

    /// Runs the program until it exits; returns the exit code envrun should exit with.
    pub async fn run(&self, mut env: BTreeMap<String, String>) -> i32 {
        let (tx, mut received) = tokio::sync::mpsc::unbounded_channel();
        for number in FORWARDED {
            let mut stream =
                signal(SignalKind::from_raw(number)).expect("installing a signal handler");
            let tx = tx.clone();
            tokio::spawn(async move {
                while stream.recv().await.is_some() {
                    if tx.send(number).is_err() {
                        break;
                    }
                }
            });
        }
        let mut child = match self.spawn(&env) {
            Ok(child) => child,
            Err(error) => {
                eprintln!("envrun: cannot start {}: {error}", self.program);
                return 127;
            }
        };
        let mut ticker = tokio::time::interval(self.watch.unwrap_or(Duration::from_secs(3600)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        // The re-fetch in flight, if any. It is polled as its own arm of the select below, so
        // a slow or hanging server (up to --timeout) never holds back a forwarded signal or
        // the program's exit; the ticker arm is off while it runs, so at most one is in flight.
        let mut refetch = None;
        loop {
            tokio::select! {
                status = child.wait() => {
                    return match status {
                        Ok(status) => exit_code(status),
                        Err(error) => {
                            eprintln!("envrun: waiting for {}: {error}", self.program);
                            1
                        }
                    };
                }
                Some(number) = received.recv() => send(child.id(), number),
                _ = ticker.tick(), if self.watch.is_some() && refetch.is_none() => {
                    refetch = Some(Box::pin(self.resolver.resolve()));
                }
                fetched = poll_refetch(&mut refetch), if refetch.is_some() => {
                    refetch = None;
                    let fresh = match fetched {
                        Ok(fresh) => fresh,
                        Err(error) => {
                            // Keep a healthy program running through a passing outage.
                            eprintln!("envrun: re-fetch failed, keeping the running program: {error}");
                            continue;
                        }
                    };
                    if fresh == env {
                        continue;
                    }
                    env = fresh;
                    match self.on_change {
                        OnChange::Signal(number) => {
                            eprintln!("envrun: secrets changed; signalling {}", self.program);
                            send(child.id(), number);
                        }
                        OnChange::Restart => {
                            eprintln!("envrun: secrets changed; restarting {}", self.program);
                            send(child.id(), libc::SIGTERM);
                            if tokio::time::timeout(STOP_GRACE, child.wait()).await.is_err() {
                                let _ = child.kill().await;
                            }
                            child = match self.spawn(&env) {
                                Ok(child) => child,
                                Err(error) => {
                                    eprintln!("envrun: cannot restart {}: {error}", self.program);
                                    return 127;
                                }
                            };
                        }
                    }
                }
            }
        }
    }
}

/// Drives the re-fetch in flight; never completes when there is none (its arm is disabled then,
/// but `select!` still builds the future).
async fn poll_refetch<F: Future + Unpin>(refetch: &mut Option<F>) -> F::Output {
    match refetch {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_change_forms() {
        assert_eq!(parse_on_change("restart"), Ok(OnChange::Restart));
        assert_eq!(
            parse_on_change("signal:HUP"),
            Ok(OnChange::Signal(libc::SIGHUP))
        );
        assert_eq!(
            parse_on_change("signal:SIGUSR1"),
            Ok(OnChange::Signal(libc::SIGUSR1))
        );
        assert!(parse_on_change("signal:KILL").is_err());
        assert!(parse_on_change("reload").is_err());
    }
}
