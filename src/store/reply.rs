//! Reading the scripts' replies: bulk strings, pairs, and the flush
//! script's answer.

use bytes::Bytes;
use redis::Value as RValue;

use super::connection::StoreError;

/// A flush script's reply: keys deleted (-1: already flushed later) and keys
/// to stamp again.
pub(super) fn parse_flush_reply(reply: RValue) -> Result<(i64, Vec<Bytes>), StoreError> {
    let bad = || StoreError::BadReply(format!("flush: {reply:?}"));
    let RValue::Array(parts) = &reply else {
        return Err(bad());
    };
    match parts.as_slice() {
        [RValue::Int(n), RValue::Array(keys)] => {
            let keys = keys
                .iter()
                .map(|k| bulk(k).map(Bytes::from))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(bad)?;
            Ok((*n, keys))
        }
        _ => Err(bad()),
    }
}

pub(super) fn bulk(v: &RValue) -> Option<Vec<u8>> {
    match v {
        RValue::BulkString(b) => Some(b.clone()),
        RValue::SimpleString(s) => Some(s.clone().into_bytes()),
        RValue::Okay => Some(b"OK".to_vec()),
        RValue::Int(n) => Some(n.to_string().into_bytes()),
        _ => None,
    }
}

pub(super) fn bulk_pairs(v: &RValue, what: &str) -> Result<Vec<(Bytes, String)>, StoreError> {
    let RValue::Array(items) = v else {
        return Err(StoreError::BadReply(format!("{what}: {v:?}")));
    };
    items
        .chunks(2)
        .map(|c| match c {
            [a, b] => match (bulk(a), bulk(b)) {
                (Some(a), Some(b)) => {
                    Ok((Bytes::from(a), String::from_utf8_lossy(&b).into_owned()))
                }
                _ => Err(StoreError::BadReply(format!("{what}: {c:?}"))),
            },
            _ => Err(StoreError::BadReply(format!("{what}: odd length"))),
        })
        .collect()
}
