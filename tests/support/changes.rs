//! Changes made by hand, for tests that speak to an agent as a peer.

/// A stamp at `time` (NTP64) made by `node`.
pub fn stamp_at(time: u64, node: u32) -> uhlc::Timestamp {
    uhlc::Timestamp::new(
        uhlc::NTP64(time),
        geosync::base::hlc::node_id_to_id(node).unwrap(),
    )
}

/// A change setting string `key` (database 0) to `value` at `at`.
pub fn string_put(key: &str, value: &str, at: &uhlc::Timestamp) -> geosync::base::change::Change {
    use serde_bytes::ByteBuf;
    geosync::base::change::Change {
        db: 0,
        key: ByteBuf::from(key.as_bytes().to_vec()),
        stamp: geosync::base::hlc::encode(at),
        op: geosync::base::change::Op::Put {
            value: geosync::base::change::Value::String(ByteBuf::from(value.as_bytes().to_vec())),
            expire_at_ms: None,
        },
    }
}
