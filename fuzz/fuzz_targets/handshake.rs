//! Fuzz target: what a caller sends on the peer port before any batch, with
//! the certificate it presents (`geosync::mesh::server::caller_refusal`,
//! `geosync::mesh::security::binds_node_der`).
//! What is checked: `geosync_fuzz::handshake` (fuzz/src/lib.rs).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| geosync_fuzz::handshake(data));
