//! Fuzz target: a full-resync RDB snapshot (`geosync::source::rdb::RdbReader`).
//! What is checked: `geosync_fuzz::rdb` (fuzz/src/lib.rs).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| geosync_fuzz::rdb(data));
