//! geosync: active-active geo-replication for Redis.
//!
//! One agent runs beside each regional Redis. The folders of `src/` are the
//! stages a change flows through, in order, and the layers they stand on:
//!
//! ```text
//!            tools/   operator commands: status, verify, check-config
//!            lab/     beside the agent, over it: local regions for `geosync lab` and the tests
//!            agent/   run: settings in, stages wired, resync decisions (supervisor)
//!  ───────────────────────────────────────────────────────────────────────────────────────
//!  clients ─► local Redis ─PSYNC─► source/ ─tail events─► stamp/ ─batches─► mesh/ ─gRPC─► peer's mesh/ ─► apply/ ─► peer's Redis
//!                                  replication session,   spool,            outbox,                         applier
//!                                  RDB, RESP, key specs   stamper,          client, server,
//!                                                         large keys        rebuild from a peer
//!  ───────────────────────────────────────────────────────────────────────────────────────
//!            store/   the agent's side of its Redis: locator, TLS, metadata layout, Lua scripts
//!            ops/     metrics, readiness, admin HTTP
//!            base/    change, hlc stamps, tail events, positions, backoff
//! ```
//!
//! - [`source`] follows the local Redis as a replica ([`source::resp`],
//!   [`source::rdb`]) and names the keys each write touched ([`source::keyspec`]).
//! - [`stamp`] queues those reports ([`stamp::spool`]) and stamps batches of
//!   dirty keys with the agent's clock ([`base::hlc`]) inside Redis, reading
//!   each key's state in the same script ([`store`]); the result is a
//!   [`base::change::Change`] per key. Large collections travel in pieces
//!   ([`stamp::large`]); keys of module data types are skipped, counted and
//!   logged ([`stamp::module_keys`]).
//! - [`mesh`] holds stamped batches until every peer acknowledged them
//!   ([`mesh::outbox`]) and streams them over gRPC ([`mesh::client`],
//!   [`mesh::server`]); it rebuilds a region that lost its data from a peer
//!   ([`mesh::rebuild`]).
//! - [`apply`] applies peers' batches with last-writer-wins.
//! - [`store`] is every stage's way into the local Redis: it finds the
//!   master (directly or through Sentinel, [`store::locator`]), over TLS
//!   when `--redis` is `rediss://` ([`store::tls`]), and runs the scripts.
//! - [`ops`] serves health, readiness and metrics.
//! - [`agent`] reads the settings ([`agent::config`]), builds every stage
//!   and its channels, and makes the decisions no stage makes alone
//!   ([`agent::supervisor`]).
//! - [`lab`] is not part of the agent: it starts local regions (Redis and
//!   agent processes, fault-injecting proxies between them) for `geosync
//!   lab` and for this crate's tests, and compares them key by key.
//!
//! A folder imports only from the folders under it in this picture (a
//! stage hands its output to the next one by that one's inbox type; every
//! stage stands on `store`, `ops` and `base`). `tests/layout.rs` checks it.
//!
//! [`run`] is the whole agent; the binary and the tests both call it.

pub mod agent;
pub mod apply;
pub mod base;
pub mod lab;
pub mod mesh;
pub mod ops;
pub mod source;
pub mod stamp;
pub mod store;
pub mod tools;

pub use agent::{StartError, run};
