//! gRPC between agents: one stream per (origin, peer) pair.
//!
//! The origin dials ([`client`]), sends `Hello` and then its batches; the
//! peer ([`server`]) answers `Welcome` and cumulative `Ack`s.

pub mod client;
pub mod server;

/// Generated protobuf and gRPC types (`proto/geosync.proto`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("geosync.v1");
}

/// Version of the wire protocol; a peer with another one is refused.
pub const PROTOCOL_VERSION: u32 = 2;
