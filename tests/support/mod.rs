//! Test support: real `redis-server` processes and real `geosync` agents on
//! free ports, condition waits with deadlines, and the convergence checker
//! every scenario test ends with.
//!
//! The harness is `geosync::lab`, the same parts `geosync lab` runs on:
//! servers, agents, meshes with fault-injecting proxies, the convergence
//! checker, condition waits. What only this repository's tests need is here:
//!
//! - `env`: benchmark settings.
//! - `certs`: TLS test certificates, and which server binary has TLS.
//! - `peer_certs`: peer-link certificates per node, a stranger CA, mesh secret files.
//! - `sentinel`: a Redis Sentinel watching one test server.
//! - `scenarios`: scenario steps shared by several test files.
//! - `changes`: changes made by hand for tests that act as a peer.
//! - `fake_peer`: a gRPC origin played by the test, sending those changes.
//! - `feature`: tests that need a server feature record whether they ran
//!   (`scripts/test.sh` fails when one was skipped on every server).
#![allow(dead_code)]

mod certs;
mod changes;
mod env;
mod fake_peer;
pub mod feature;
mod peer_certs;
mod scenarios;
mod sentinel;

// Every test binary includes this module and uses only some of these.
#[allow(unused_imports)]
pub use self::{
    certs::{TestCerts, tls_server_bin},
    changes::{stamp_at, string_put},
    env::{env_usize, listing_only, seed_from_env},
    fake_peer::{FakePeer, Origin},
    peer_certs::{NodeCert, PeerCerts, secret_file},
    scenarios::{
        bring_back, drifted_digests, fill_past_backlog, lose, partial_resync_after_agent_restart,
        partial_resync_after_agent_restart_in,
    },
    sentinel::Sentinel,
};
// The harness itself is the lab's (`geosync lab` runs on the same parts).
#[allow(unused_imports)]
pub use geosync::lab::{
    Agent, Mesh, Redis, RedisBuilder, Region,
    compare::{
        CompareOptions, EXPIRY_MARGIN_MS, KeyState, KeyValue, Snapshot, diff, field_expiries,
        has_field_expiry, read_key, snapshot, user_key_count,
    },
    free_port, http_get, metric_sum, now_ms, poll, redis_server_bin, wait_until,
};
