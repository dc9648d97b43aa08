//! Stamps: `uhlc` timestamps and their text form inside Redis.
//!
//! A stamp is a [`uhlc::Timestamp`]: a 64-bit NTP time and the node id of the
//! region that made it. The Lua scripts compare stamps as plain strings, so
//! [`encode`] writes a fixed-width lowercase hex form whose byte order is
//! exactly `Timestamp`'s order: 16 hex digits of the big-endian time, then 4
//! hex digits of the id's first two bytes in the order `uhlc::ID` compares
//! them (its little-endian bytes). Node ids are limited to `1..=65535`, so the
//! id's other fourteen bytes are always zero and carry no information.

use std::sync::Arc;
use std::time::Duration;

use uhlc::{HLC, HLCBuilder, ID, NTP64, Timestamp};

/// Length of an encoded stamp in bytes.
pub const ENCODED_LEN: usize = 20;

/// Largest node id a region may use (the id must fit the encoded form).
pub const MAX_NODE_ID: u32 = u16::MAX as u32;

/// Errors from decoding a stamp.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StampError {
    /// The text is not 20 lowercase hex digits.
    #[error("malformed stamp {0:?}: want 20 lowercase hex digits")]
    Malformed(String),
    /// The id part is zero, which `uhlc` does not allow.
    #[error("stamp {0:?} has node id 0")]
    ZeroId(String),
    /// A node id outside `1..=65535`.
    #[error("node id {0} is out of range 1..=65535")]
    IdRange(u128),
}

/// The `uhlc` id of a node id.
pub fn node_id_to_id(node_id: u32) -> Result<ID, StampError> {
    if node_id == 0 || node_id > MAX_NODE_ID {
        return Err(StampError::IdRange(node_id as u128));
    }
    Ok(ID::try_from(node_id).expect("non-zero id"))
}

/// The node id inside a `uhlc` id, when it is one geosync can encode.
pub fn id_to_node_id(id: &ID) -> Result<u32, StampError> {
    let v = u128::from_le_bytes(id.to_le_bytes());
    if v == 0 || v > MAX_NODE_ID as u128 {
        return Err(StampError::IdRange(v));
    }
    Ok(v as u32)
}

/// Builds the agent's one clock: its node id and the largest clock skew it
/// accepts from a peer's stamp.
pub fn new_clock(node_id: u32, max_delta: Duration) -> Result<Arc<HLC>, StampError> {
    let id = node_id_to_id(node_id)?;
    Ok(Arc::new(
        HLCBuilder::new()
            .with_id(id)
            .with_max_delta(max_delta)
            .build(),
    ))
}

/// The largest stamp any clock of the mesh can have made by now: `now`
/// plus `slack` (at least the largest clock skew a peer may have), with
/// the largest node id. A stored stamp above it was not made by a clock.
pub fn latest_possible(now: &Timestamp, slack: Duration) -> String {
    let t = now
        .get_time()
        .as_u64()
        .saturating_add(NTP64::from(slack).as_u64());
    format!("{t:016x}ffff")
}

/// The smallest stamp with suffix `me` (a node's last 4 hex digits) whose
/// time is one tick after encoded stamp `s`'s: just above `s`, below every
/// stamp made later (`scripts/lib.lua` has the same). None when `s` is not
/// an encoded stamp.
pub fn stamp_above(s: &str, me: &str) -> Option<String> {
    let t = u64::from_str_radix(s.get(..16)?, 16).ok()?;
    Some(format!("{:016x}{me}", t.checked_add(1)?))
}

/// Encodes a stamp so that byte order equals `Timestamp` order.
///
/// ```
/// let t = uhlc::Timestamp::new(uhlc::NTP64(0x0102), geosync::base::hlc::node_id_to_id(3).unwrap());
/// assert_eq!(geosync::base::hlc::encode(&t), "00000000000001020300");
/// ```
pub fn encode(ts: &Timestamp) -> String {
    let id = ts.get_id().to_le_bytes();
    format!("{:016x}{:02x}{:02x}", ts.get_time().as_u64(), id[0], id[1])
}

/// Decodes the form written by [`encode`].
pub fn decode(s: &[u8]) -> Result<Timestamp, StampError> {
    let text = || String::from_utf8_lossy(s).into_owned();
    if s.len() != ENCODED_LEN
        || !s
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
    {
        return Err(StampError::Malformed(text()));
    }
    let str = std::str::from_utf8(s).map_err(|_| StampError::Malformed(text()))?;
    let time = u64::from_str_radix(&str[..16], 16).map_err(|_| StampError::Malformed(text()))?;
    let b0 = u8::from_str_radix(&str[16..18], 16).map_err(|_| StampError::Malformed(text()))?;
    let b1 = u8::from_str_radix(&str[18..20], 16).map_err(|_| StampError::Malformed(text()))?;
    let id = ID::try_from([b0, b1]).map_err(|_| StampError::ZeroId(text()))?;
    Ok(Timestamp::new(NTP64(time), id))
}

/// Milliseconds since the Unix epoch of a stamp's time (for logs and lag).
pub fn unix_millis(ts: &Timestamp) -> u64 {
    ts.get_time().to_duration().as_millis() as u64
}

#[cfg(test)]
mod tests {

    #[test]
    fn stamp_above_is_one_tick_later_with_the_given_suffix() {
        assert_eq!(
            stamp_above("00000000000000ff0200", "0100").as_deref(),
            Some("00000000000001000100")
        );
        assert_eq!(stamp_above("", "0100"), None);
        assert_eq!(stamp_above("ffffffffffffffff0100", "0100"), None);
    }

    use super::*;
    use proptest::prelude::*;

    fn ts(time: u64, node: u32) -> Timestamp {
        Timestamp::new(NTP64(time), node_id_to_id(node).unwrap())
    }

    proptest! {
        #[test]
        fn byte_order_is_timestamp_order(t1: u64, t2: u64, n1 in 1u32..=65535, n2 in 1u32..=65535) {
            let (a, b) = (ts(t1, n1), ts(t2, n2));
            prop_assert_eq!(encode(&a).cmp(&encode(&b)), a.cmp(&b));
        }

        #[test]
        fn equal_time_orders_by_id_bytes(t: u64, n1 in 1u32..=65535, n2 in 1u32..=65535) {
            let (a, b) = (ts(t, n1), ts(t, n2));
            prop_assert_eq!(encode(&a).cmp(&encode(&b)), a.cmp(&b));
        }

        #[test]
        fn round_trip(t: u64, n in 1u32..=65535) {
            let a = ts(t, n);
            prop_assert_eq!(decode(encode(&a).as_bytes()).unwrap(), a);
            prop_assert_eq!(id_to_node_id(a.get_id()).unwrap(), n);
        }

        #[test]
        fn decode_never_panics(s in proptest::collection::vec(any::<u8>(), 0..30)) {
            let _ = decode(&s);
        }
    }

    #[test]
    fn id_ordering_follows_uhlc_not_numbers() {
        // uhlc compares ids by their little-endian bytes: 256 sorts before 1.
        let (a, b) = (ts(5, 256), ts(5, 1));
        assert!(a < b);
        assert!(encode(&a) < encode(&b));
    }

    #[test]
    fn rejects_bad_input() {
        assert!(matches!(decode(b"xyz"), Err(StampError::Malformed(_))));
        assert!(matches!(
            decode(b"0000000000000001000g"),
            Err(StampError::Malformed(_))
        ));
        assert!(matches!(
            decode(b"00000000000000010000"),
            Err(StampError::ZeroId(_))
        ));
        assert!(node_id_to_id(0).is_err());
        assert!(node_id_to_id(65536).is_err());
    }
}
