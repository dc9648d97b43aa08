//! Settings benchmarks take from the environment and the command line
//! (free ports and the clock come from `geosync::lab::env`).

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
