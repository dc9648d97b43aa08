//! Fuzz target: Replication-stream bytes from the master (`geosync::source::resp::parse`).
//! What is checked: `geosync_fuzz::resp` (fuzz/src/lib.rs).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| geosync_fuzz::resp(data));
