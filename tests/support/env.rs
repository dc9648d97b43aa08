//! What tests and benchmarks take from the machine they run on: free
//! ports, the wall clock, and settings from the environment and the
//! command line.

use std::net::TcpListener;
use std::time::{SystemTime, UNIX_EPOCH};

/// A port that was free a moment ago and that this test process has not
/// handed out before (the OS may offer a just-released port again, and two
/// servers of one test must never be given the same one).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap();
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// For benchmarks: true when a test runner is only listing targets
/// (`--list`), which a benchmark must answer with nothing.
pub fn listing_only() -> bool {
    std::env::args().any(|a| a == "--list")
}

/// For benchmarks: a whole-number setting from the environment.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Unix time in milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}
