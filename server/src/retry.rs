//! Conflict retries: the one budget and back-off for every read → check → conditional-write
//! loop that can lose a race to another request or replica (token uses, revocation marks,
//! renewals, the keyring, mount tables, KV metadata).

use std::future::Future;
use std::time::Duration;

use rand::Rng;

use crate::encrypted::TransactError;
use crate::error::{Error, Result};
use crate::metrics::METRICS;

/// Attempts before a caller is told to try again. Conflicts on one replica are rare (writers
/// to one item queue on local locks), so this budget is spent only by races between replicas.
pub const ATTEMPTS: u32 = 50;
const BACKOFF_BASE: Duration = Duration::from_millis(1);
const BACKOFF_CAP: Duration = Duration::from_millis(50);

/// What one attempt came to.
pub enum Attempt<T> {
    Done(T),
    /// A conditional write lost to a concurrent change: read again and retry.
    Conflict,
}

/// The one reading of a conditional write's outcome: applied (`value`), lost a race, or failed.
pub fn settle<T>(written: std::result::Result<(), TransactError>, value: T) -> Result<Attempt<T>> {
    match written {
        Ok(()) => Ok(Attempt::Done(value)),
        Err(TransactError::Conflict) => Ok(Attempt::Conflict),
        Err(TransactError::Other(error)) => Err(error),
    }
}

/// Runs `attempt` until it is done, fails, or has lost [`ATTEMPTS`] races; between attempts
/// it waits a jittered, doubling back-off so racing replicas spread out.
pub async fn on_conflict<T, F, Fut>(what: &str, mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Attempt<T>>>,
{
    for n in 0..ATTEMPTS {
        if n > 0 {
            METRICS.conflict_retry();
            let ceiling = BACKOFF_BASE.saturating_mul(1 << n.min(16)).min(BACKOFF_CAP);
            let wait = ceiling.mul_f64(rand::thread_rng().gen_range(0.0..1.0));
            tokio::time::sleep(wait).await;
        }
        if let Attempt::Done(value) = attempt().await? {
            return Ok(value);
        }
    }
    Err(Error::Unavailable(format!(
        "{what} is contended by concurrent updates; try again"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn retries_conflicts_and_gives_up_after_the_budget() {
        let mut calls = 0;
        let done = on_conflict("x", || {
            calls += 1;
            let outcome = if calls < 3 {
                Attempt::Conflict
            } else {
                Attempt::Done(calls)
            };
            async move { Ok(outcome) }
        })
        .await
        .unwrap();
        assert_eq!(done, 3);

        let mut calls = 0;
        let error = on_conflict::<(), _, _>("the thing", || {
            calls += 1;
            async { Ok(Attempt::Conflict) }
        })
        .await
        .unwrap_err();
        assert_eq!(calls, ATTEMPTS);
        assert!(error.to_string().contains("the thing"), "{error}");
    }
}
