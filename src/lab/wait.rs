//! Condition waits with deadlines: the lab and every test wait for what
//! they expect this way, never with a bare sleep.

use std::time::{Duration, Instant};

/// How often [`poll`] looks again.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Polls `cond` every 20 ms until it holds (how long that took) or
/// `timeout` passes (None).
pub fn poll<F: FnMut() -> bool>(timeout: Duration, mut cond: F) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if cond() {
            return Some(start.elapsed());
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Waits until `cond` holds; panics with `what` at the deadline.
pub fn wait_until<F: FnMut() -> bool>(what: &str, timeout: Duration, cond: F) -> Duration {
    poll(timeout, cond).unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {what}"))
}
