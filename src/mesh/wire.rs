//! The wire format between agents: the generated protobuf and gRPC types
//! (`proto/geosync.proto`) and the protocol version. Change payloads inside
//! a batch are `rmp-serde` ([`crate::base::change`]).

use tracing::error;

use crate::base::change::{Change, encode_batches};
use crate::ops::metrics::Metrics;

/// Generated protobuf and gRPC types (`proto/geosync.proto`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("geosync.v1");
}

/// Version of the wire protocol; a peer with another one is refused.
pub const PROTOCOL_VERSION: u32 = 3;

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

/// Encodes `changes` as batches of at most `max_payload` bytes each
/// ([`encode_batches`]), in order. A change that fits in no message is
/// left out of `what` (a batch, a catch-up, a snapshot): counted in
/// `geosync_changes_too_large_total` and logged with its key. The stamp
/// script refuses such values before recording them; this is the last
/// guard.
pub fn encode_for_peers(
    changes: &[Change],
    max_payload: usize,
    metrics: &Metrics,
    what: &str,
) -> Vec<(Vec<u8>, std::ops::Range<usize>)> {
    let encoded = encode_batches(changes, max_payload);
    for (i, bytes) in encoded.oversized {
        let c = &changes[i];
        metrics.changes_too_large.inc();
        error!(
            db = c.db,
            key = %String::from_utf8_lossy(&c.key),
            bytes,
            limit = max_payload,
            what,
            "a change is larger than a peer accepts in one message and is left out; raise --peer-max-message-mb in every region"
        );
    }
    encoded.batches
}

/// Anti-entropy: metadata buckets per digest group. A round first compares
/// one digest per group (128 of them per database), then the buckets of
/// the groups that differ.
pub const GROUP_BUCKETS: u32 = 128;

/// Most keys one `Records` call asks about.
pub const MAX_RECORDS_ASKED: usize = 4096;

/// The buckets of group `g`.
pub fn group_buckets(g: u32) -> std::ops::Range<u32> {
    g * GROUP_BUCKETS..((g + 1) * GROUP_BUCKETS).min(crate::store::layout::META_BUCKETS)
}

/// The number of groups a database's buckets form.
pub fn group_count() -> u32 {
    crate::store::layout::META_BUCKETS.div_ceil(GROUP_BUCKETS)
}

/// Folds bucket digests (all buckets of a database, in order) into one
/// digest per group: "" when every bucket of the group is empty, else the
/// SHA-256 of its buckets' digests.
pub fn group_digests(buckets: &[String]) -> Vec<String> {
    buckets
        .chunks(GROUP_BUCKETS as usize)
        .map(|group| {
            if group.iter().all(String::is_empty) {
                return String::new();
            }
            let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
            for d in group {
                ctx.update(d.as_bytes());
                ctx.update(b"\n");
            }
            hex::encode(ctx.finish().as_ref())
        })
        .collect()
}
