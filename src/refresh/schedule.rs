//! The scheduler every refresher runs on: a step at once, then one per interval, never
//! overlapping.

use std::future::Future;
use std::time::Duration;

use tokio::time::MissedTickBehavior;

/// Runs `step` at once and then every `interval`. A step is awaited before the next tick
/// is taken, so steps never overlap; one that overruns delays the schedule instead of
/// causing a burst of catch-up steps.
pub async fn every<F, Fut>(interval: Duration, mut step: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        step().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(start_paused = true)]
    async fn every_runs_at_once_then_on_each_interval() {
        let runs = Arc::new(AtomicUsize::new(0));
        let counter = runs.clone();
        let task = tokio::spawn(every(Duration::from_secs(300), move || {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
            }
        }));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 1, "first run at start");
        tokio::time::sleep(Duration::from_secs(300)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 2, "t=301s");
        tokio::time::sleep(Duration::from_secs(900)).await;
        assert_eq!(
            runs.load(Ordering::SeqCst),
            5,
            "t=1201s: ticks at 0, 300, 600, 900, 1200"
        );
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_step_delays_the_next_and_never_overlaps() {
        let running = Arc::new(AtomicUsize::new(0));
        let runs = Arc::new(AtomicUsize::new(0));
        let (r, n) = (running.clone(), runs.clone());
        let task = tokio::spawn(every(Duration::from_secs(60), move || {
            let (r, n) = (r.clone(), n.clone());
            async move {
                assert_eq!(r.fetch_add(1, Ordering::SeqCst), 0, "steps overlapped");
                n.fetch_add(1, Ordering::SeqCst);
                // Three intervals long: a burst of catch-up steps must not follow.
                tokio::time::sleep(Duration::from_secs(180)).await;
                r.fetch_sub(1, Ordering::SeqCst);
            }
        }));
        tokio::time::sleep(Duration::from_secs(179)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            runs.load(Ordering::SeqCst),
            2,
            "next step right after the slow one"
        );
        tokio::time::sleep(Duration::from_secs(180)).await;
        assert_eq!(
            runs.load(Ordering::SeqCst),
            3,
            "then one step per 180s, no burst"
        );
        task.abort();
    }
}
