//! Capped, jittered exponential backoff, shared by every reconnecting loop.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Capped, jittered exponential backoff.
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// Starts at 50 ms, capped at 5 s.
    pub fn new() -> Self {
        Self::with(Duration::from_millis(50), Duration::from_secs(5))
    }

    /// A backoff with its own start and cap.
    pub fn with(start: Duration, max: Duration) -> Self {
        Backoff { next: start, max }
    }

    /// Starts over after a healthy session.
    pub fn reset(&mut self, start: Duration) {
        self.next = start;
    }

    /// Sleeps the next interval; false when shutdown came first.
    pub async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let wait = self.next.mul_f64(0.75 + rand::random::<f64>() * 0.5);
        self.next = (self.next * 2).min(self.max);
        tokio::select! {
            _ = tokio::time::sleep(wait) => true,
            _ = shutdown.cancelled() => false,
        }
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn doubles_up_to_the_cap_and_stops_on_shutdown() {
        let mut b = Backoff::with(Duration::from_millis(100), Duration::from_millis(300));
        let token = CancellationToken::new();
        assert!(b.wait(&token).await);
        assert_eq!(b.next, Duration::from_millis(200));
        assert!(b.wait(&token).await);
        assert_eq!(b.next, Duration::from_millis(300));
        assert!(b.wait(&token).await);
        assert_eq!(b.next, Duration::from_millis(300));
        token.cancel();
        assert!(!b.wait(&token).await);
    }
}
