//! Replays saved fuzz inputs through the decoders of untrusted bytes, as the
//! fuzz targets in `fuzz/` do, and checks that none of them panics.
//!
//! Every file under `fuzz/regressions/<target>/` is fed to the function of
//! the same name in `fuzz/src/lib.rs` (included below, so the test and the
//! fuzz target run exactly the same code):
//!
//! - `resp`: `geosync::source::resp::parse`, frame after frame;
//! - `rdb`: `geosync::source::rdb::RdbReader::new` then `next_entry` to the end, and
//!   again with `next_key` (key-only, as the tailer reads a full resync),
//!   checking that both agree; the per-string length is capped
//!   (`RDB_MAX_STRING_LEN`) so a corrupt length cannot ask for unbounded
//!   memory;
//! - `peer_batch`: `geosync::base::change::decode_batch`, then `Value::to_flat` /
//!   `Value::from_flat` round trips of every decoded value.
//!
//! # Adding a crash
//!
//! When `scripts/fuzz.sh` (or `cargo fuzz run <target>`) finds a crash, it
//! leaves the input at `fuzz/artifacts/<target>/crash-<sha1>` (or `oom-…`,
//! `timeout-…`). To keep it as a regression:
//!
//! 1. optionally shrink it: `cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz tmin
//!    <target> artifacts/<target>/crash-<sha1>`;
//! 2. copy it to `fuzz/regressions/<target>/` under a name that says what it
//!    exercises (e.g. `crash-ziplist-prevlen-overflow`);
//! 3. run `cargo test --test fuzz_regressions`: it fails until the decoder is
//!    fixed, and guards the fix afterwards. Leave the test failing rather than
//!    ignoring it.
//!
//! Inputs that reached tricky paths without crashing may be added the same
//! way; keep each file small.

use std::fs;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

#[path = "../fuzz/src/lib.rs"]
mod harness;

/// The files of `fuzz/regressions/<target>/`, sorted.
fn inputs(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions")
        .join(target);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no inputs in {}", dir.display());
    files
}

/// Runs every input of `target` through `run`, then fails listing each input
/// that panicked.
fn replay(target: &str, run: fn(&[u8])) {
    let mut failed = Vec::new();
    for path in inputs(target) {
        let data = fs::read(&path).unwrap();
        if let Err(p) = panic::catch_unwind(AssertUnwindSafe(|| run(&data))) {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failed.push(format!("{}: {msg}", path.display()));
        }
    }
    assert!(
        failed.is_empty(),
        "{} {target} input(s) panicked:\n{}",
        failed.len(),
        failed.join("\n")
    );
}

#[test]
fn resp_inputs_do_not_panic() {
    replay("resp", harness::resp);
}

#[test]
fn rdb_inputs_do_not_panic() {
    replay("rdb", harness::rdb);
}

#[test]
fn peer_batch_inputs_do_not_panic() {
    replay("peer_batch", harness::peer_batch);
}

#[test]
fn handshake_inputs_do_not_panic() {
    replay("handshake", harness::handshake);
}
