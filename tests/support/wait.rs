//! Condition waits with deadlines: every test waits for what it expects
//! this way, never with a bare sleep.

use std::time::{Duration, Instant};

/// Polls `cond` every 20 ms until it holds (how long that took) or
/// `timeout` passes (None). The one condition wait every test uses.
pub fn poll<F: FnMut() -> bool>(timeout: Duration, mut cond: F) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if cond() {
            return Some(start.elapsed());
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until `cond` holds; panics with `what` at the deadline.
pub fn wait_until<F: FnMut() -> bool>(what: &str, timeout: Duration, cond: F) -> Duration {
    poll(timeout, cond).unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {what}"))
}
