//! The wire format between agents: the generated protobuf and gRPC types
//! (`proto/geosync.proto`) and the protocol version. Change payloads inside
//! a batch are `rmp-serde` ([`crate::base::change`]).

/// Generated protobuf and gRPC types (`proto/geosync.proto`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("geosync.v1");
}

/// Version of the wire protocol; a peer with another one is refused.
pub const PROTOCOL_VERSION: u32 = 2;
