//! Stage 3: between regions. The outbox holds stamped batches until every
//! peer acknowledged them; one gRPC stream per (origin, peer) pair carries
//! them: the origin dials ([`client`]), sends `Hello` and then its batches;
//! the peer ([`server`]) answers `Welcome` and cumulative `Ack`s and hands
//! the batches to the applier. [`rebuild`] pulls a peer's recorded state
//! when this region's Redis lost its data; [`repair`] (anti-entropy)
//! compares this region's metadata with each peer's and pulls what differs.
//!
//! The links are secured by [`security`] (mutual TLS or a mesh secret;
//! plaintext on loopback only): the peer port is [`listener`], which bounds
//! and checks connections before gRPC sees them, and every outgoing link
//! goes through [`dial`].

pub mod acklog;
pub mod client;
pub mod dial;
pub mod frontier;
pub mod listener;
pub mod outbox;
pub mod rebuild;
pub mod repair;
pub mod security;
pub mod server;
pub mod wire;

pub use wire::{PROTOCOL_VERSION, pb};
