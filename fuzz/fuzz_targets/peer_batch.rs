//! Fuzz target: a peer's batch payload (`geosync::base::change::decode_batch`, then
//! `Value::to_flat` / `Value::from_flat`).
//! What is checked: `geosync_fuzz::peer_batch` (fuzz/src/lib.rs).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| geosync_fuzz::peer_batch(data));
