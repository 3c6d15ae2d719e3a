//! Retrying the database: exponential backoff, the first failure and the
//! recovery logged (not every attempt), errors that waiting cannot fix
//! stopping the service. Start-up (migrations, lease, the replay flush) and
//! the flush loop all wait this way.

use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use crate::store::StoreError;

/// `base × 2^failures`, capped at `cap`.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap,
            failures: 0,
        }
    }

    /// Failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Counts a failure; returns the wait before the next attempt.
    pub fn failed(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.delay()
    }

    /// Counts a success; returns how many failures it ends.
    pub fn succeeded(&mut self) -> u32 {
        std::mem::take(&mut self.failures)
    }

    /// The wait after the failures so far (`base` when there were none).
    pub fn delay(&self) -> Duration {
        let factor = 1u32 << self.failures.min(16);
        self.base.saturating_mul(factor).min(self.cap)
    }
}

/// Which errors end the retrying and stop the service.
#[derive(Debug, Clone, Copy)]
pub enum GiveUp {
    /// Anything waiting cannot fix (start-up: bad credentials, no database).
    OnPermanent,
    /// Only a fenced lease (flushing: anything else keeps the WAL and retries).
    OnFenced,
}

impl GiveUp {
    fn applies(self, e: &StoreError) -> bool {
        match self {
            GiveUp::OnPermanent => !e.is_transient(),
            GiveUp::OnFenced => matches!(e, StoreError::Fenced { .. }),
        }
    }
}

/// Runs `attempt` on `state` until it succeeds (Some), `stop` is cancelled
/// (None), or it fails in a way `give_up` names (None, and `fatal` is
/// cancelled). (`state` is what an attempt borrows mutably, e.g. the flusher.)
pub async fn until_ok<S, T>(
    what: &str,
    mut backoff: Backoff,
    give_up: GiveUp,
    (stop, fatal): (&CancellationToken, &CancellationToken),
    state: &mut S,
    mut attempt: impl for<'a> FnMut(&'a mut S) -> BoxFuture<'a, Result<T, StoreError>>,
) -> Option<T> {
    loop {
        let error = match attempt(state).await {
            Ok(value) => {
                let failed = backoff.succeeded();
                if failed > 0 {
                    tracing::info!(failed_attempts = failed, "database reachable; could {what}");
                }
                return Some(value);
            }
            Err(e) => e,
        };
        if give_up.applies(&error) {
            tracing::error!(error = %error, "cannot {what}; this needs an operator");
            fatal.cancel();
            return None;
        }
        let wait = backoff.failed();
        if backoff.failures() == 1 {
            tracing::warn!(error = %error, "cannot {what} yet; retrying until the database answers");
        } else {
            tracing::debug!(error = %error, failures = backoff.failures(), "retry failed");
        }
        tokio::select! {
            _ = stop.cancelled() => return None,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        assert_eq!(b.delay(), Duration::from_secs(1));
        assert_eq!(b.failed(), Duration::from_secs(2));
        b.failed();
        assert_eq!(b.failed(), Duration::from_secs(8));
        for _ in 0..100 {
            b.failed();
        }
        assert_eq!(b.delay(), Duration::from_secs(30));
        assert_eq!(b.succeeded(), 103);
        assert_eq!(b.delay(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_transient_error_is_retried_and_a_permanent_one_stops_the_service() {
        let (stop, fatal) = (CancellationToken::new(), CancellationToken::new());
        let backoff = Backoff::new(Duration::from_millis(10), Duration::from_secs(1));
        let mut calls = 0;
        let got = until_ok(
            "test",
            backoff.clone(),
            GiveUp::OnPermanent,
            (&stop, &fatal),
            &mut calls,
            |calls| {
                Box::pin(async move {
                    *calls += 1;
                    if *calls < 3 {
                        Err(StoreError::Unavailable("down".into()))
                    } else {
                        Ok(*calls)
                    }
                })
            },
        )
        .await;
        assert_eq!(got, Some(3));
        assert!(!fatal.is_cancelled());

        let got: Option<()> = until_ok(
            "test",
            backoff.clone(),
            GiveUp::OnPermanent,
            (&stop, &fatal),
            &mut (),
            |_| {
                Box::pin(async {
                    Err(StoreError::Rejected(
                        "password authentication failed".into(),
                    ))
                })
            },
        )
        .await;
        assert_eq!(got, None);
        assert!(fatal.is_cancelled());

        // Flushing gives up only when fenced.
        let fatal = CancellationToken::new();
        let mut calls = 0;
        let got: Option<()> = until_ok(
            "test",
            backoff,
            GiveUp::OnFenced,
            (&stop, &fatal),
            &mut calls,
            |calls| {
                Box::pin(async move {
                    *calls += 1;
                    match *calls {
                        1 => Err(StoreError::Rejected("constraint".into())),
                        _ => Err(StoreError::Fenced {
                            instance_id: "i".into(),
                            epoch: 1,
                        }),
                    }
                })
            },
        )
        .await;
        assert_eq!((got, calls), (None, 2));
        assert!(fatal.is_cancelled());
    }
}
