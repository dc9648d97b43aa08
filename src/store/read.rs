//! Reading recorded keys back as changes with their recorded stamps, for
//! catch-ups and for a peer's rebuild (scripts/read.lua); large
//! collections among them travel in pieces.

use bytes::Bytes;

use super::connection::{Store, StoreError};
use super::layout::{
    APPLY_MARKER_KEY, META_BUCKETS, REACHED_KEY, Record, bucket_name, bucket_prefix, collected_key,
    digests_key, floor_key, meta_bucket, metadata_db, node_suffix,
};
use super::lua::Which;
use super::pieces::{LargeError, ship_recorded, travels_in_pieces};
use super::stamping::parse_stamp_reply;
use crate::base::change::{Change, Op};

/// Metadata buckets listed per round trip when records are read back.
const BUCKETS_PER_READ: usize = 64;

/// Metadata buckets one digest script reads or rebuilds: rebuilding reads
/// every record, about 60 a bucket with a million keys, a few milliseconds
/// of Redis time per call.
pub const DIGEST_BUCKETS_PER_CALL: usize = 64;

/// A hash field and its value, as HGETALL gives them.
type Field = (Vec<u8>, String);

/// Keys one forget script drops at most: each is read and digested to
/// make sure no local write waits to be stamped.
const FORGET_PER_CALL: usize = 256;

impl Store {
    /// Every key of database `db` that has a metadata record, as changes
    /// carrying their recorded stamps, sent to `out` in batches of about
    /// `batch` keys; stops early when `out` closes. Used to rebuild a peer's
    /// region.
    ///
    /// With `only = Some((after, node_id))`, only records stamped by that
    /// node after `after` (an outbox catch-up for one peer).
    ///
    /// The database's last flush comes first, as a [`Op::FlushDb`] with its
    /// recorded stamp (with `only`, when that node made it after `after`):
    /// a region that missed it deletes what it deleted, and an older change
    /// cannot bring back what it deleted there.
    pub async fn read_recorded(
        &mut self,
        db: u32,
        batch: usize,
        only: Option<(&str, u32)>,
        out: &tokio::sync::mpsc::Sender<Vec<Change>>,
    ) -> Result<u64, StoreError> {
        if let Some(floor) = self.flush_floor(db).await? {
            let wanted = match only {
                None => true,
                Some((after, node)) => {
                    floor.as_str() > after && floor.ends_with(&node_suffix(node))
                }
            };
            if wanted && out.send(vec![flush_change(db, floor)]).await.is_err() {
                return Ok(0);
            }
        }
        let mut buckets: Vec<Vec<u8>> = Vec::new();
        let mut cursor = 0u64;
        loop {
            let conn = self.conn().await?;
            let (next, keys): (u64, Vec<Vec<u8>>) = redis::pipe()
                .cmd("SELECT")
                .arg(metadata_db())
                .ignore()
                .cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{}*", bucket_prefix(db)))
                .arg("COUNT")
                .arg(1000)
                .query_async::<((u64, Vec<Vec<u8>>),)>(conn)
                .await?
                .0;
            buckets.extend(keys);
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        self.read_buckets(db, &buckets, batch, only, out).await
    }

    /// [`Store::read_recorded`] for the keys recorded in the metadata
    /// buckets numbered `buckets` only (anti-entropy).
    pub async fn read_numbered_buckets(
        &mut self,
        db: u32,
        buckets: &[u32],
        batch: usize,
        out: &tokio::sync::mpsc::Sender<Vec<Change>>,
    ) -> Result<u64, StoreError> {
        let names: Vec<Vec<u8>> = buckets
            .iter()
            .filter(|b| **b < META_BUCKETS)
            .map(|b| bucket_name(db, *b).into_bytes())
            .collect();
        self.read_buckets(db, &names, batch, None, out).await
    }

    /// The stamp of database `db`'s last flush (its floor: every record
    /// older was dropped), None when it was never flushed.
    pub async fn flush_floor(&mut self, db: u32) -> Result<Option<String>, StoreError> {
        self.get_meta(&floor_key(db)).await
    }

    /// Database `db`'s collected floor (decision 015: the frontier its
    /// tombstones were dropped up to), None when never collected.
    pub async fn collected_floor(&mut self, db: u32) -> Result<Option<String>, StoreError> {
        self.get_meta(&collected_key(db)).await
    }

    /// The stamp this region had reached ([`REACHED_KEY`]), None when
    /// geosync never recorded one in this Redis.
    pub async fn reached(&mut self) -> Result<Option<String>, StoreError> {
        self.get_meta(REACHED_KEY).await
    }

    /// Records `stamp` as reached, if the Redis is still the one whose
    /// stream with replication id `replid` the agent follows; false when it
    /// is another (scripts/reach.lua).
    pub async fn record_reached(&mut self, replid: &str, stamp: &str) -> Result<bool, StoreError> {
        let reply = self
            .run_one(
                0,
                Which::Reach,
                vec![REACHED_KEY.into()],
                vec![replid.into(), stamp.into()],
            )
            .await?;
        Ok(matches!(reply, redis::Value::Int(1)))
    }

    /// The string at `key` of the metadata database.
    async fn get_meta(&mut self, key: &str) -> Result<Option<String>, StoreError> {
        let mut pipe = redis::pipe();
        pipe.cmd("SELECT")
            .arg(metadata_db())
            .ignore()
            .cmd("GET")
            .arg(key);
        let (value,): (Option<String>,) = self.query(&pipe).await?;
        Ok(value)
    }

    /// The stamp recorded for each of `keys` in database `db`, in order
    /// ("" where none is).
    pub async fn recorded_stamps(
        &mut self,
        db: u32,
        keys: &[Vec<u8>],
    ) -> Result<Vec<String>, StoreError> {
        let mut pipe = redis::pipe();
        pipe.cmd("SELECT").arg(metadata_db()).ignore();
        for k in keys {
            pipe.cmd("HGET").arg(meta_bucket(db, k)).arg(k);
        }
        let raw: Vec<Option<String>> = self.query(&pipe).await?;
        Ok(raw
            .into_iter()
            .map(|r| {
                r.as_deref()
                    .and_then(Record::parse)
                    .map(|r| r.stamp.to_string())
                    .unwrap_or_default()
            })
            .collect())
    }

    /// The keys recorded in the numbered buckets of database `db` with a
    /// stamp older than `below`, each with that stamp.
    pub async fn records_below(
        &mut self,
        db: u32,
        buckets: &[u32],
        below: &str,
    ) -> Result<Vec<(Vec<u8>, String)>, StoreError> {
        let mut out = Vec::new();
        for group in buckets.chunks(BUCKETS_PER_READ) {
            let mut pipe = redis::pipe();
            pipe.cmd("SELECT").arg(metadata_db()).ignore();
            for name in bucket_names(db, group) {
                pipe.cmd("HGETALL").arg(name);
            }
            let buckets: Vec<Vec<Field>> = self.query(&pipe).await?;
            for (key, raw) in buckets.into_iter().flatten() {
                if let Some(r) = Record::parse(&raw)
                    && r.stamp < below
                {
                    out.push((key, r.stamp.to_string()));
                }
            }
        }
        Ok(out)
    }

    /// Drops each of `keys` of database `db` (key, recorded stamp), with
    /// its record, where that record still holds that stamp, older than
    /// `floor` (a peer's collected floor: the peer lacks these keys and
    /// would refuse them), and the key holds what was recorded (no local
    /// write waits to be stamped); raises the database's collected floor to
    /// `floor` (scripts/forget.lua). The number of keys dropped (values
    /// deleted; tombstones dropped alongside are not counted).
    pub async fn forget_below(
        &mut self,
        db: u32,
        floor: &str,
        keys: &[(Vec<u8>, String)],
    ) -> Result<u64, StoreError> {
        let mut dropped = 0;
        for slice in keys.chunks(FORGET_PER_CALL) {
            let mut k = vec![APPLY_MARKER_KEY.as_bytes().to_vec()];
            let mut argv = vec![floor.as_bytes().to_vec()];
            for (key, stamp) in slice {
                k.push(key.clone());
                k.push(meta_bucket(db, key).into_bytes());
                argv.push(stamp.clone().into_bytes());
            }
            let reply = self.run_one(db, Which::Forget, k, argv).await?;
            let n: u64 = redis::from_redis_value(reply)
                .map_err(|e| StoreError::BadReply(format!("forget script: {e}")))?;
            dropped += n;
        }
        Ok(dropped)
    }

    /// False when user database `db` holds neither keys nor records
    /// (tombstones stay after their keys): anti-entropy and collection
    /// skip it.
    pub async fn has_records(&mut self, db: u32) -> Result<bool, StoreError> {
        let mut pipe = redis::pipe();
        pipe.cmd("SELECT").arg(db).ignore().cmd("DBSIZE");
        pipe.cmd("SELECT").arg(metadata_db()).ignore();
        pipe.cmd("EXISTS").arg(digests_key(db));
        let (keys, digests): (u64, u64) = self.query(&pipe).await?;
        Ok(keys > 0 || digests > 0)
    }

    /// The number of keys of database `db` (a user database holds user
    /// keys only, and private copies of large collections in transfer).
    pub async fn dbsize(&mut self, db: u32) -> Result<u64, StoreError> {
        let mut pipe = redis::pipe();
        pipe.cmd("SELECT").arg(db).ignore().cmd("DBSIZE");
        let (n,): (u64,) = self.query(&pipe).await?;
        Ok(n)
    }

    /// The digest of each numbered metadata bucket of database `db`, as
    /// the scripts keep it (scripts/digest.lua; "" when empty), in the
    /// order given, `DIGEST_BUCKETS_PER_CALL` (64) buckets per script call.
    pub async fn bucket_digests(
        &mut self,
        db: u32,
        buckets: &[u32],
    ) -> Result<Vec<String>, StoreError> {
        self.digests(db, buckets, "stored").await
    }

    /// Computes the digests of the numbered buckets from their records,
    /// stores them, and returns them: at start (records written before the
    /// digests were kept), and for buckets a repair found equal although
    /// their digests differed.
    pub async fn rebuild_digests(
        &mut self,
        db: u32,
        buckets: &[u32],
    ) -> Result<Vec<String>, StoreError> {
        self.digests(db, buckets, "rebuild").await
    }

    /// Drops the tombstones of database `db` stamped before `frontier`
    /// (and records of expired keys that are gone), in the numbered
    /// buckets, `DIGEST_BUCKETS_PER_CALL` buckets per script call
    /// (scripts/collect.lua).
    pub async fn collect(
        &mut self,
        db: u32,
        buckets: &[u32],
        frontier: &str,
    ) -> Result<Collected, StoreError> {
        let mut out = Collected::default();
        for slice in buckets.chunks(DIGEST_BUCKETS_PER_CALL) {
            let reply = self
                .run_one(
                    db,
                    Which::Collect,
                    bucket_names(db, slice),
                    vec![frontier.as_bytes().to_vec()],
                )
                .await?;
            let (d, k, r): (u64, u64, u64) = redis::from_redis_value(reply)
                .map_err(|e| StoreError::BadReply(format!("collect script: {e}")))?;
            out.dropped += d;
            out.tombstones += k;
            out.records += r;
        }
        Ok(out)
    }

    async fn digests(
        &mut self,
        db: u32,
        buckets: &[u32],
        mode: &str,
    ) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::with_capacity(buckets.len());
        for slice in buckets.chunks(DIGEST_BUCKETS_PER_CALL) {
            let reply = self
                .run_one(
                    db,
                    Which::Digest,
                    bucket_names(db, slice),
                    vec![mode.as_bytes().to_vec()],
                )
                .await?;
            let digests: Vec<String> = redis::from_redis_value(reply)
                .map_err(|e| StoreError::BadReply(format!("digest script: {e}")))?;
            if digests.len() != slice.len() {
                return Err(StoreError::BadReply(format!(
                    "digest script: {} digests for {} buckets",
                    digests.len(),
                    slice.len()
                )));
            }
            out.extend(digests);
        }
        Ok(out)
    }

    /// Reads the keys recorded in the named metadata buckets (see
    /// [`Store::read_recorded`]).
    async fn read_buckets(
        &mut self,
        db: u32,
        buckets: &[Vec<u8>],
        batch: usize,
        only: Option<(&str, u32)>,
        out: &tokio::sync::mpsc::Sender<Vec<Change>>,
    ) -> Result<u64, StoreError> {
        let (after, own) = match only {
            Some((after, node)) => (after.to_string(), node_suffix(node)),
            None => (String::new(), String::new()),
        };
        let filter = vec![after.clone().into_bytes(), own.clone().into_bytes()];
        let mut sent = 0u64;
        let mut keys: Vec<Bytes> = Vec::new();
        let groups = buckets.chunks(BUCKETS_PER_READ).count();
        for (i, group) in buckets.chunks(BUCKETS_PER_READ).enumerate() {
            let conn = self.conn().await?;
            let mut pipe = redis::pipe();
            pipe.cmd("SELECT").arg(metadata_db()).ignore();
            for bucket in group {
                pipe.cmd("HKEYS").arg(bucket);
            }
            let fields: Vec<Vec<Vec<u8>>> = pipe.query_async(conn).await?;
            keys.extend(fields.into_iter().flatten().map(Bytes::from));
            let last = i + 1 == groups;
            while keys.len() >= batch || (last && !keys.is_empty()) {
                let take = keys.len().min(batch);
                let mut k: Vec<Vec<u8>> = Vec::with_capacity(take * 2);
                for key in keys.drain(..take) {
                    let bucket = meta_bucket(db, &key);
                    k.push(key.to_vec());
                    k.push(bucket.into_bytes());
                }
                let reply = self.run_one(db, Which::Read, k, filter.clone()).await?;
                let outcome = parse_stamp_reply(db, reply)?;
                sent += outcome.changes.len() as u64;
                if !outcome.changes.is_empty() && out.send(outcome.changes).await.is_err() {
                    return Ok(sent);
                }
                for (key, reason) in outcome.unsupported {
                    if !travels_in_pieces(&reason) {
                        continue;
                    }
                    match ship_recorded(self, db, &key, &after, &own, out).await {
                        Ok(true) => sent += 1,
                        Ok(false) => {}
                        Err(LargeError::Store(e)) => return Err(e),
                        Err(LargeError::Stopped) => return Ok(sent),
                        Err(e) => {
                            tracing::warn!(db, key = %String::from_utf8_lossy(&key), error = %e, "a large key was left out")
                        }
                    }
                }
            }
        }
        Ok(sent)
    }
}

/// The names of the numbered metadata buckets of database `db`.
fn bucket_names(db: u32, buckets: &[u32]) -> Vec<Vec<u8>> {
    buckets
        .iter()
        .map(|b| bucket_name(db, *b).into_bytes())
        .collect()
}

/// The change that carries database `db`'s flush stamped `stamp`.
pub fn flush_change(db: u32, stamp: String) -> Change {
    Change {
        db,
        key: serde_bytes::ByteBuf::new(),
        stamp,
        op: Op::FlushDb,
    }
}

/// What a tombstone collection did and left.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Collected {
    /// Records dropped (tombstones, expired keys' records).
    pub dropped: u64,
    /// Tombstones kept.
    pub tombstones: u64,
    /// Records kept, values and tombstones.
    pub records: u64,
}
