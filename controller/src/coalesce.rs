//! Coalescing of aggregation passes: the first change after a quiet period is processed at
//! once (leading edge); changes arriving within `window` of the last pass wait until the
//! window ends and are processed together in one pass (trailing edge). A burst of watch
//! events thus costs at most one pass per window, and a lone change no delay at all.

use std::time::Duration;

use tokio::time::Instant;

/// When the next pass may run.
#[derive(Debug, Clone)]
pub(crate) struct Coalescer {
    window: Duration,
    last_pass: Option<Instant>,
}

impl Coalescer {
    /// At most one pass per `window` during a burst.
    pub(crate) fn new(window: Duration) -> Self {
        Self {
            window,
            last_pass: None,
        }
    }

    /// Records that a pass ran at `at`.
    pub(crate) fn passed(&mut self, at: Instant) {
        self.last_pass = Some(at);
    }

    /// When a pass woken at `now` may run: now after a quiet period, else when the window
    /// of the last pass ends.
    pub(crate) fn due(&self, now: Instant) -> Instant {
        match self.last_pass {
            Some(last) if now < last + self.window => last + self.window,
            _ => now,
        }
    }

    /// Waits until a pass woken now may run.
    pub(crate) async fn settle(&self) {
        tokio::time::sleep_until(self.due(Instant::now())).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use tokio::sync::Notify;

    use super::*;

    const WINDOW: Duration = Duration::from_millis(25);

    /// A loop shaped like the aggregator's: wait for a poke, settle, pass (taking every
    /// event so far). Returns (time since start, events taken) per pass that took any (a
    /// poke during the settle leaves a permit: one spare pass that finds nothing new).
    async fn passes(events: &[(u64, u32)]) -> Vec<(u64, u32)> {
        let start = Instant::now();
        let notify = Arc::new(Notify::new());
        let pending = Arc::new(AtomicU32::new(0));
        let (n, p) = (notify.clone(), pending.clone());
        let events = events.to_vec();
        let last = events.last().map(|e| e.0).unwrap_or_default();
        tokio::spawn(async move {
            for (at, count) in events {
                tokio::time::sleep_until(start + Duration::from_millis(at)).await;
                p.fetch_add(count, Ordering::SeqCst);
                n.notify_one();
            }
        });
        let mut coalescer = Coalescer::new(WINDOW);
        let mut out = Vec::new();
        let end = start + Duration::from_millis(last) + WINDOW * 4;
        loop {
            tokio::select! {
                () = notify.notified() => {}
                () = tokio::time::sleep_until(end) => return out,
            }
            coalescer.settle().await;
            let now = Instant::now();
            let taken = pending.swap(0, Ordering::SeqCst);
            if taken > 0 {
                out.push(((now - start).as_millis() as u64, taken));
            }
            coalescer.passed(now);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_change_is_processed_at_once() {
        assert_eq!(passes(&[(0, 1)]).await, [(0, 1)]);
        // Quiet for longer than the window: the next one is at once too.
        assert_eq!(passes(&[(0, 1), (100, 1)]).await, [(0, 1), (100, 1)]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_is_one_leading_and_one_trailing_pass_per_window() {
        // 10 events 2 ms apart: the first at once, the other nine together when the
        // window of the first pass ends.
        let burst: Vec<(u64, u32)> = (0..10).map(|i| (i * 2, 1)).collect();
        assert_eq!(passes(&burst).await, [(0, 1), (25, 9)]);
        // A longer burst: at most one pass per window, nothing lost.
        let long: Vec<(u64, u32)> = (0..40).map(|i| (i * 2, 1)).collect();
        let got = passes(&long).await;
        assert_eq!(got.iter().map(|p| p.1).sum::<u32>(), 40);
        assert_eq!(
            got.iter().map(|p| p.0).collect::<Vec<_>>(),
            [0, 25, 50, 75, 100]
        );
    }
}
