//! Waiting on conditions: tests poll a predicate with a deadline instead of sleeping.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// How often conditions are re-checked.
const POLL: Duration = Duration::from_millis(10);

/// Polls `cond` until it holds; fails after `timeout`.
pub async fn wait_for<F>(timeout: Duration, mut cond: F) -> anyhow::Result<()>
where
    F: FnMut() -> bool,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            anyhow::bail!("condition not met within {timeout:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Like [`wait_for`] with an async condition (each check gets at most the remaining time).
pub async fn wait_for_async<F, Fut>(timeout: Duration, mut cond: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if tokio::time::timeout(remaining, cond()).await == Ok(true) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            anyhow::bail!("condition not met within {timeout:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn a_condition_that_becomes_true_is_awaited() {
        let n = Arc::new(AtomicU32::new(0));
        let bump = n.clone();
        tokio::spawn(async move {
            for _ in 0..3 {
                tokio::task::yield_now().await;
                bump.fetch_add(1, Ordering::SeqCst);
            }
        });
        wait_for(Duration::from_secs(5), || n.load(Ordering::SeqCst) == 3)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_condition_that_never_holds_times_out() {
        let err = wait_for(Duration::from_millis(100), || false)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("not met"));
        assert!(
            wait_for_async(Duration::from_millis(100), || async { false })
                .await
                .is_err()
        );
    }
}
