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

/// Default of `--peer-max-message-mb`: the largest gRPC message an agent
/// accepts from a peer, and so the most it sends in one.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Room left in a message for its envelope (protobuf fields around the
/// encoded changes).
const ENVELOPE_BYTES: usize = 1024;

/// The most bytes of encoded changes one message may carry when a peer
/// accepts `max_message` bytes.
pub fn max_payload(max_message: usize) -> usize {
    max_message.saturating_sub(ENVELOPE_BYTES).max(1)
}
