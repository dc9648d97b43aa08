//! Test support: real `redis-server` processes and real `geosync` agents on
//! free ports, condition waits with deadlines, and the convergence checker
//! every scenario test ends with.
//!
//! - `wait`: condition waits with deadlines (`poll`, `wait_until`).
//! - `env`: free ports, the wall clock, benchmark settings.
//! - `certs`: TLS test certificates and the settings that use them.
//! - `peer_certs`: peer-link certificates per node, a stranger CA, mesh secret files.
//! - `server`: redis-server processes and which binary runs them.
//! - `sentinel`: a Redis Sentinel watching one test server.
//! - `agent`: `geosync run` processes, their readiness and metrics.
//! - `mesh`: regions (a Redis and its agent) in a full mesh, and convergence waits.
//! - `scenarios`: scenario steps shared by several test files.
//! - `changes`: changes made by hand for tests that act as a peer.
//! - `compare`: the convergence checker (snapshots of a database and their differences).
#![allow(dead_code)]

mod agent;
mod certs;
mod changes;
mod compare;
mod env;
mod mesh;
mod peer_certs;
mod scenarios;
mod sentinel;
mod server;
mod wait;

// Every test binary includes this module and uses only some of these.
#[allow(unused_imports)]
pub use self::{
    agent::{Agent, http_get, metric_sum},
    certs::TestCerts,
    changes::{stamp_at, string_put},
    compare::{
        KeyState, KeyValue, Snapshot, diff, field_expiries, has_field_expiry, read_key, snapshot,
    },
    env::{env_usize, free_port, listing_only, now_ms},
    mesh::{Mesh, Region},
    peer_certs::{NodeCert, PeerCerts, secret_file},
    scenarios::{
        fill_past_backlog, partial_resync_after_agent_restart,
        partial_resync_after_agent_restart_in,
    },
    sentinel::Sentinel,
    server::{Redis, RedisBuilder, redis_server_bin, tls_server_bin},
    wait::{poll, wait_until},
};
