//! The lab: local regions to prove convergence with, for users and for
//! this crate's own tests.
//!
//! `geosync lab SCENARIO.toml` starts N regions on this machine (a
//! `redis-server` and a `geosync run` agent each, on free ports, in temp
//! dirs removed afterwards), links the agents through fault-injecting
//! proxies ([`proxy`]), runs the scenario's steps (writes, partitions,
//! delays, agent kills, Redis restarts, convergence checks; see
//! [`scenario::COMMANDS`]) and exits non-zero with a report when a step
//! fails or the regions differ. Without a scenario it prints the regions'
//! addresses and reads steps from standard input.
//!
//! The same parts serve tests as a library: [`Mesh`] (regions, faults,
//! [`Mesh::wait_converged`]), [`Redis`], [`Agent`], the checker in
//! [`mod@compare`], and condition waits with deadlines ([`mod@wait`]). They are
//! made for tests and the lab: they panic, with a message, where a
//! production program would return an error.
//!
//! The lab runs the agent as a process: the `geosync` binary found by
//! [`agent::agent_bin`].

pub mod agent;
pub mod compare;
pub mod env;
pub mod mesh;
pub mod proxy;
pub mod redis;
pub mod runner;
pub mod scenario;
pub mod wait;
pub mod workload;

pub use agent::{Agent, http_get, metric_sum, metric_value};
pub use compare::{CompareOptions, Snapshot, compare, compare_with, diff, snapshot};
pub use env::{free_port, now_ms};
pub use mesh::{Look, Mesh, MeshBuilder, Region};
pub use proxy::Proxy;
pub use redis::{Redis, RedisBuilder, TlsFiles, redis_server_bin};
pub use runner::{Lab, LabArgs};
pub use scenario::{Scenario, Step};
pub use wait::{poll, wait_until};
