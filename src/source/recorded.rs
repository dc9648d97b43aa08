//! After a resync, the keys the metadata records: what the snapshot lacks
//! was deleted unseen, and this node's own records may never have reached a
//! peer.

use bytes::Bytes;

use super::error::TailError;
use super::side::Side;
use crate::base::event::TailEvent;
use crate::stamp::spool::SpoolTx;
use crate::store;

/// After a full resync (`values`), reports every key the metadata records as
/// holding a value; after any resync, this node's own records. Values missing from the snapshot
/// were deleted while nobody was watching; the stamper turns them into
/// tombstones (or, when their expiry has passed, into the expiry every
/// region applies on its own). Own tombstones may never have reached a peer;
/// the stamper re-ships those newer than what every peer acknowledged.
pub(super) async fn report_recorded(
    side: &mut Side,
    databases: u32,
    node_id: u32,
    values: bool,
    tx: &SpoolTx,
) -> Result<u64, TailError> {
    let own = store::node_suffix(node_id).into_bytes();
    let mut n = 0;
    // Every user database's buckets are in the metadata database, named
    // after their database.
    redis::cmd("SELECT")
        .arg(store::metadata_db())
        .exec_async(side)
        .await?;
    let mut cursor = 0u64;
    let mut buckets: Vec<(u32, Vec<u8>)> = Vec::new();
    loop {
        let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{}*", store::META_PREFIX))
            .arg("COUNT")
            .arg(1000)
            .query_async(side)
            .await?;
        buckets.extend(
            keys.into_iter()
                .filter_map(|b| Some((bucket_db(&b).filter(|db| *db < databases)?, b))),
        );
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    buckets.sort();
    for (db, bucket) in buckets {
        let mut cursor = 0u64;
        loop {
            let (next, flat): (u64, Vec<Vec<u8>>) = redis::cmd("HSCAN")
                .arg(&bucket)
                .arg(cursor)
                .arg("COUNT")
                .arg(1000)
                .query_async(side)
                .await?;
            let keys: Vec<(u32, Bytes)> = flat
                .chunks(2)
                .filter(|p| {
                    p.len() == 2
                        && ((values && p[1].get(store::RECORD_FLAG_AT) == Some(&b'v'))
                            || p[1].get(store::RECORD_FLAG_AT - own.len()..store::RECORD_FLAG_AT)
                                == Some(own.as_slice()))
                })
                .map(|p| (db, Bytes::from(p[0].clone())))
                .collect();
            n += keys.len() as u64;
            if !keys.is_empty() {
                tx.send(TailEvent::Dirty(keys))
                    .await
                    .map_err(TailError::from)?;
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
    }
    redis::cmd("SELECT").arg(0).exec_async(side).await?;
    Ok(n)
}

/// The user database a bucket name (`__geosync:m:<db>:<n>`) belongs to.
fn bucket_db(bucket: &[u8]) -> Option<u32> {
    let rest = bucket.strip_prefix(store::META_PREFIX.as_bytes())?;
    let end = rest.iter().position(|b| *b == b':')?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_bucket_names_its_database() {
        assert_eq!(
            super::bucket_db(crate::store::meta_bucket(7, b"k").as_bytes()),
            Some(7)
        );
        assert_eq!(super::bucket_db(b"__geosync:m:x:1"), None);
        assert_eq!(super::bucket_db(b"other"), None);
    }
}
