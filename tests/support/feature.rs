//! Tests that need a server feature (hash field expiry, say) pass without
//! checking anything on servers that lack it. So that such a test cannot
//! pass untested everywhere, each one records whether it ran or was skipped
//! on this server, and `scripts/test.sh` (which runs the suite on every
//! server) fails when a test was skipped on all of them.
//!
//! The records go to the directory `GEOSYNC_TEST_FEATURE_LOG` names, one
//! tab-separated line per test run in the file `records`:
//! `ran|skipped <binary>::<test> <feature> <server binary>`. Without the
//! variable (a developer running one test) a skip is only printed.
//!
//! ```ignore
//! if !feature::ran_if(has_field_expiry(&mut c), "hash field expiry") {
//!     return;
//! }
//! ```

use std::io::Write;

use geosync::lab::redis_server_bin;

/// The environment variable naming the directory the records go to.
pub const LOG_VAR: &str = "GEOSYNC_TEST_FEATURE_LOG";

/// Records that the calling test ran (`available`) or was skipped for want
/// of `feature` on this server, and returns `available`: call it once,
/// where the test decides, and return from the test when it is false.
pub fn ran_if(available: bool, feature: &str) -> bool {
    let test = current_test();
    let server = redis_server_bin();
    let status = if available { "ran" } else { "skipped" };
    if !available {
        eprintln!("{test}: skipped, {server} has no {feature}; nothing checked on this server");
    }
    if let Ok(dir) = std::env::var(LOG_VAR) {
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("{LOG_VAR}={dir}: cannot create it: {e}"));
        let path = std::path::Path::new(&dir).join("records");
        let line = format!("{status}\t{test}\t{feature}\t{server}\n");
        // One write of one short line to a file opened for appending: lines
        // of tests running at the same time do not interleave.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()))
            .unwrap_or_else(|e| panic!("cannot record in {}: {e}", path.display()));
    }
    available
}

/// `<test binary>::<test name>`: the binary's name without cargo's hash
/// suffix, and the test's name from its thread (libtest names each test's
/// thread after the test).
fn current_test() -> String {
    let exe = std::env::current_exe().expect("the test binary's path");
    let stem = exe
        .file_stem()
        .and_then(|s| s.to_str())
        .expect("a test binary name")
        .to_string();
    let binary = match stem.rsplit_once('-') {
        Some((name, hash)) if hash.chars().all(|c| c.is_ascii_hexdigit()) => name.to_string(),
        _ => stem,
    };
    let thread = std::thread::current();
    let test = thread
        .name()
        .filter(|n| *n != "main")
        .expect("feature::ran_if is called from a test's own thread (named after the test)");
    format!("{binary}::{test}")
}
