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

/// For randomized tests: `GEOSYNC_SEED`, or a seed from the clock (the
/// test prints it, so that the run can be replayed).
pub fn seed_from_env() -> u64 {
    std::env::var("GEOSYNC_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(geosync::lab::now_ms() as u64)
}
