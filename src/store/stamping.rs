//! The stamper's scripts: stamp dirty keys (scripts/stamp.lua) and record
//! a local flush (scripts/flush.lua), and what they answer.

use bytes::Bytes;
use redis::Value as RValue;
use serde_bytes::ByteBuf;

use super::connection::{Store, StoreError};
use super::layout::{APPLY_MARKER_KEY, floor_key, meta_bucket, node_suffix};
use super::lua::{Call, Which};
use super::reply::{bulk, bulk_pairs, parse_flush_reply};
use crate::base::change::{Change, Op, Value};

/// What the stamp script found for one database.
#[derive(Debug, Default)]
pub struct StampOutcome {
    /// Changes to ship.
    pub changes: Vec<Change>,
    /// Keys whose metadata holds a newer stamp: (key, that stamp).
    pub retry: Vec<(Bytes, String)>,
    /// Keys geosync cannot carry: (key, reason). The reason is the name
    /// `TYPE` gives (a module's type name for module data), or
    /// `too_large:<type>:<elements>` past `--max-key-elements`.
    pub unsupported: Vec<(Bytes, String)>,
    /// Keys left for the next batch: the script had read enough elements.
    pub deferred: Vec<Bytes>,
    /// Keys first seen in a snapshot whose change got a stamp below the
    /// batch's, just above what the key or the region had (decision 019).
    pub low: Vec<Bytes>,
    /// Keys with a TTL found gone while the agent caught up, taken as
    /// evicted while no one watched ([`SeenContext::evictable`]).
    pub evicted: Vec<Bytes>,
}

/// What the stamp script needs to know besides each key's [`Seen`].
#[derive(Debug, Clone, Copy, Default)]
pub struct SeenContext<'a> {
    /// The stamp the region had reached when the resync began
    /// ([`Store::reached`]).
    pub reached: Option<&'a str>,
    /// The Redis may evict keys with a TTL and evictions stay local
    /// (decision 016): a key with an expiry found gone while the agent
    /// caught up is not deleted in the other regions, which expire it at
    /// the same time.
    pub evictable: bool,
}

/// How the stamper came to know of a dirty key, which decides the stamp
/// its change gets (the fourth argument of `scripts/stamp.lua`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Seen {
    /// From the live replication stream: the batch's stamp.
    #[default]
    Live,
    /// From a full resync's snapshot: the change happened at some unknown
    /// time after its record, so it is stamped just above the newest stamp
    /// the key or the region is known to have had, and every write made
    /// later wins over it (decision 019).
    Snapshot,
    /// From the live stream, for a key that got such a low stamp during
    /// this resync: a client wrote it since, so it gets the batch's stamp
    /// even if its state still matches the record.
    Rewritten,
    /// Reported while the agent caught up with what happened while it was
    /// away, from the Redis whose stream it followed (a resync's backlog or
    /// recorded keys): the batch's stamp, but a key with a TTL found gone
    /// may have been evicted unseen.
    CaughtUp,
}

impl Seen {
    fn letter(self) -> u8 {
        match self {
            Seen::Live => b'l',
            Seen::Snapshot => b's',
            Seen::Rewritten => b'f',
            Seen::CaughtUp => b'c',
        }
    }
}

impl Store {
    /// Stamps dirty keys, grouped by database, with one stamp, in one
    /// pipelined round trip (one atomic script per database).
    ///
    /// With `reship = Some(floor)`, unchanged keys last stamped by this node
    /// (`node_id`) after `floor` are shipped again with their recorded stamp
    /// (used after a restart, when the outbox is gone).
    pub async fn stamp(
        &mut self,
        per_db: &[(u32, Vec<Bytes>)],
        stamp: &str,
        reship: Option<&str>,
        node_id: u32,
    ) -> Result<Vec<StampOutcome>, StoreError> {
        let per_db: Vec<(u32, Vec<(Bytes, Seen)>)> = per_db
            .iter()
            .map(|(db, keys)| (*db, keys.iter().map(|k| (k.clone(), Seen::Live)).collect()))
            .collect();
        self.stamp_seen(&per_db, stamp, reship, SeenContext::default(), node_id)
            .await
    }

    /// [`Store::stamp`] for keys each seen in its own way: keys first seen
    /// in a snapshot get a stamp just above the newest of their record,
    /// the database's floors and what the region had reached (see
    /// [`SeenContext`]).
    pub async fn stamp_seen(
        &mut self,
        per_db: &[(u32, Vec<(Bytes, Seen)>)],
        stamp: &str,
        reship: Option<&str>,
        context: SeenContext<'_>,
        node_id: u32,
    ) -> Result<Vec<StampOutcome>, StoreError> {
        let calls: Vec<_> = per_db
            .iter()
            .map(|(db, keys)| {
                let mut k: Vec<Vec<u8>> = Vec::with_capacity(keys.len() * 2 + 1);
                k.push(floor_key(*db).into_bytes());
                for (key, _) in keys {
                    k.push(key.to_vec());
                    k.push(meta_bucket(*db, key).into_bytes());
                }
                let modes: Vec<u8> = keys.iter().map(|(_, seen)| seen.letter()).collect();
                let args = vec![
                    stamp.as_bytes().to_vec(),
                    reship.unwrap_or("").as_bytes().to_vec(),
                    node_suffix(node_id).into_bytes(),
                    modes,
                    context.reached.unwrap_or("").as_bytes().to_vec(),
                    if context.evictable {
                        b"1".to_vec()
                    } else {
                        Vec::new()
                    },
                ];
                (*db, Which::Stamp, k, args)
            })
            .collect();
        let replies = self.run(&calls).await?;
        per_db
            .iter()
            .zip(replies)
            .map(|((db, _), reply)| parse_stamp_reply(*db, reply))
            .collect()
    }

    /// Records a local FLUSHDB/FLUSHALL: raises the floor of each database
    /// to `stamp`, then drops the records older than it in slices, with
    /// what peers' changes wrote between the flush and this stamp (see
    /// scripts/flush.lua and scripts/flushslice.lua). Returns, per
    /// database, the keys clients wrote after the FLUSHDB that were
    /// stamped before it and must be stamped again.
    pub async fn flush_local(
        &mut self,
        dbs: &[u32],
        stamp: &str,
        node_id: u32,
    ) -> Result<Vec<(u32, Vec<Bytes>)>, StoreError> {
        let calls: Vec<Call> = dbs
            .iter()
            .map(|db| {
                (
                    *db,
                    Which::Flush,
                    vec![floor_key(*db).into_bytes(), APPLY_MARKER_KEY.into()],
                    vec![stamp.as_bytes().to_vec(), Vec::new(), b"local".to_vec()],
                )
            })
            .collect();
        let replies = self.run(&calls).await?;
        let me = node_suffix(node_id);
        let mut out = Vec::with_capacity(dbs.len());
        for (db, reply) in dbs.iter().zip(replies) {
            let (_, mut again) = parse_flush_reply(reply)?;
            let slices = self.flush_sliced(*db, stamp, 0, Some(&me)).await?;
            again.extend(slices.restamp);
            out.push((*db, again));
        }
        Ok(out)
    }
}

pub(super) fn parse_stamp_reply(db: u32, reply: RValue) -> Result<StampOutcome, StoreError> {
    let bad = |what: &str| StoreError::BadReply(format!("stamp: {what}"));
    let RValue::Array(parts) = reply else {
        return Err(bad("not an array"));
    };
    let (changes, retry, unsupported, deferred, low, evicted) = match parts.as_slice() {
        [c, r, u, RValue::Array(d)] => (c, r, u, d, None, None),
        [
            c,
            r,
            u,
            RValue::Array(d),
            RValue::Array(l),
            RValue::Array(e),
        ] => (c, r, u, d, Some(l), Some(e)),
        _ => return Err(bad("want four or six parts")),
    };
    let keys = |list: Option<&Vec<RValue>>, what: &str| {
        list.map(|l| {
            l.iter()
                .map(|k| bulk(k).map(Bytes::from))
                .collect::<Option<Vec<_>>>()
        })
        .unwrap_or(Some(Vec::new()))
        .ok_or_else(|| bad(what))
    };
    let low = keys(low, "low key")?;
    let evicted = keys(evicted, "evicted key")?;
    let deferred = deferred
        .iter()
        .map(|k| bulk(k).map(Bytes::from))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| bad("deferred key"))?;
    let RValue::Array(changes) = changes else {
        return Err(bad("changes not an array"));
    };
    let mut out = StampOutcome {
        retry: bulk_pairs(retry, "retry")?,
        unsupported: bulk_pairs(unsupported, "unsupported")?,
        deferred,
        low,
        evicted,
        ..Default::default()
    };
    for c in changes {
        let RValue::Array(f) = c else {
            return Err(bad("change not an array"));
        };
        let key = f.first().and_then(bulk).ok_or_else(|| bad("key"))?;
        let stamp = f.get(1).and_then(bulk).ok_or_else(|| bad("stamp"))?;
        let op = f.get(2).and_then(bulk).ok_or_else(|| bad("op"))?;
        let op = match op.as_slice() {
            b"d" => Op::Delete,
            b"p" => {
                let t = f.get(3).and_then(bulk).ok_or_else(|| bad("type"))?;
                let t = String::from_utf8_lossy(&t).into_owned();
                let exp = match f.get(4) {
                    Some(RValue::Int(n)) => *n,
                    _ => return Err(bad("expiry")),
                };
                let Some(RValue::Array(flat)) = f.get(5) else {
                    return Err(bad("value"));
                };
                let flat: Vec<Vec<u8>> = flat
                    .iter()
                    .map(bulk)
                    .collect::<Option<_>>()
                    .ok_or_else(|| bad("value item"))?;
                let value = Value::from_flat(&t, &flat).map_err(|e| bad(&e.to_string()))?;
                Op::Put {
                    value,
                    expire_at_ms: (exp > 0).then_some(exp),
                }
            }
            _ => return Err(bad("unknown op")),
        };
        out.changes.push(Change {
            db,
            key: ByteBuf::from(key),
            stamp: String::from_utf8_lossy(&stamp).into_owned(),
            op,
        });
    }
    Ok(out)
}
