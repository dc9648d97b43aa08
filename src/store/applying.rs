//! The applier's script: one peer batch applied with last-writer-wins, one
//! atomic script per database (scripts/apply.lua, scripts/flush.lua).

use redis::Value as RValue;

use super::connection::{Store, StoreError};
use super::layout::is_reserved;
use super::layout::{
    APPLY_MARKER_KEY, META_BUCKETS, bucket_name, build_key, floor_key, meta_bucket,
};
use super::lua::{Call, Which};
use super::reply::parse_flush_reply;
use crate::base::change::{Change, Op, Value};
use crate::base::check::check_change;
use bytes::Bytes;

/// What applying one batch did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ApplyOutcome {
    /// Changes that won and were written.
    pub applied: u64,
    /// Changes older than (or equal to) what the key already had.
    pub older: u64,
    /// Collections that arrived in pieces whose seal did not match what
    /// had been built: a piece went missing, and it was not applied.
    pub incomplete: u64,
    /// Changes applied without what this server cannot hold (a hash's
    /// field expiries on a server older than Redis 7.4).
    pub degraded: u64,
    /// Changes set aside, each with why: a value no server accepts, found
    /// before anything was written, or a write this server refused, which
    /// left the key as it was. Nothing is recorded for them.
    pub quarantined: Vec<Quarantined>,
}

/// A change that could not be applied, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    /// Its database.
    pub db: u32,
    /// Its key.
    pub key: Vec<u8>,
    /// Its stamp.
    pub stamp: String,
    /// Why it was set aside.
    pub why: String,
}

impl Quarantined {
    fn of(c: &Change, why: String) -> Quarantined {
        Quarantined {
            db: c.db,
            key: c.key.to_vec(),
            stamp: c.stamp.clone(),
            why,
        }
    }
}

impl Store {
    /// Applies one peer batch: one atomic script per database (flushes in
    /// their own call, in order), all in one pipelined round trip. Every
    /// change is checked first (`base::check`); one that fails is set
    /// aside and the others are applied.
    pub async fn apply(&mut self, changes: &[Change]) -> Result<ApplyOutcome, StoreError> {
        let mut out = ApplyOutcome::default();
        let mut calls: Vec<Call> = Vec::new();
        // Per call, the changes its script replies about.
        let mut sent: Vec<Vec<&Change>> = Vec::new();
        // Segments: consecutive changes of one database without a flush.
        let mut open: std::collections::HashMap<u32, usize> = std::collections::HashMap::new();
        for c in changes {
            let checked = match check_change(c) {
                Err(e) => Err(e.to_string()),
                Ok(()) if !matches!(c.op, Op::FlushDb) && is_reserved(&c.key) => {
                    Err("a key under the reserved __geosync: prefix".to_string())
                }
                Ok(()) => Ok(()),
            };
            if let Err(why) = checked {
                out.quarantined.push(Quarantined::of(c, why));
                continue;
            }
            if let Op::FlushDb = c.op {
                open.remove(&c.db);
                calls.push((
                    c.db,
                    Which::Flush,
                    vec![floor_key(c.db).into_bytes(), APPLY_MARKER_KEY.into()],
                    vec![c.stamp.clone().into_bytes(), Vec::new(), b"peer".to_vec()],
                ));
                sent.push(vec![c]);
                continue;
            }
            let idx = *open.entry(c.db).or_insert_with(|| {
                calls.push((
                    c.db,
                    Which::Apply,
                    vec![floor_key(c.db).into_bytes(), APPLY_MARKER_KEY.into()],
                    vec![],
                ));
                sent.push(Vec::new());
                calls.len() - 1
            });
            let (_, _, keys, args) = &mut calls[idx];
            sent[idx].push(c);
            keys.push(c.key.to_vec());
            keys.push(meta_bucket(c.db, &c.key).into_bytes());
            keys.push(build_key(&c.stamp, &c.key));
            args.push(c.stamp.clone().into_bytes());
            let mut value_args = |op: &[u8], value: &Value, n: i64| {
                let flat = value.to_flat();
                args.push(op.to_vec());
                args.push(value.type_name().into());
                args.push(n.to_string().into_bytes());
                args.push(flat.len().to_string().into_bytes());
                args.extend(flat);
            };
            match &c.op {
                Op::Put {
                    value,
                    expire_at_ms,
                } => value_args(b"p", value, expire_at_ms.unwrap_or(-1)),
                Op::Part { at, value } => value_args(b"P", value, *at as i64),
                Op::Seal {
                    kind,
                    expire_at_ms,
                    len,
                    digest,
                } => {
                    args.push(b"S".to_vec());
                    args.push(kind.type_name().into());
                    args.push(expire_at_ms.unwrap_or(-1).to_string().into_bytes());
                    args.push(len.to_string().into_bytes());
                    args.push(digest.clone().into_bytes());
                }
                Op::Delete => args.push(b"d".to_vec()),
                Op::FlushDb => unreachable!("handled above"),
            }
        }
        if calls.is_empty() {
            return Ok(out);
        }
        let replies = self.run(&calls).await?;
        // Peers' flushes applied: their floors are up; their keys go now,
        // in slices (decision 018).
        let mut flushed: Vec<(u32, String)> = Vec::new();
        for (((db, which, _, args), reply), sent) in calls.iter().zip(replies).zip(sent) {
            if *which == Which::Flush {
                let (deleted, _) = parse_flush_reply(reply)?;
                if deleted >= 0 {
                    out.applied += 1;
                    flushed.push((*db, String::from_utf8_lossy(&args[0]).into_owned()));
                } else {
                    out.older += 1;
                }
                continue;
            }
            let RValue::Array(items) = reply else {
                return Err(StoreError::BadReply(format!("apply: {reply:?}")));
            };
            if items.len() != sent.len() {
                return Err(StoreError::BadReply(format!(
                    "apply: {} replies for {} changes",
                    items.len(),
                    sent.len()
                )));
            }
            for (it, c) in items.into_iter().zip(sent) {
                match it {
                    RValue::Int(1) => out.applied += 1,
                    RValue::Int(0) => out.older += 1,
                    RValue::Int(2) => out.incomplete += 1,
                    RValue::Int(3) => {
                        out.applied += 1;
                        out.degraded += 1;
                    }
                    RValue::BulkString(b) if b.starts_with(b"q ") => {
                        let why = String::from_utf8_lossy(&b[2..]).into_owned();
                        out.quarantined
                            .push(Quarantined::of(c, format!("the server refused it: {why}")));
                    }
                    other => return Err(StoreError::BadReply(format!("apply item: {other:?}"))),
                }
            }
        }
        for (db, stamp) in flushed {
            self.flush_in_slices(db, &stamp).await?;
        }
        Ok(out)
    }

    /// [`Store::flush_in_slices`] in one script call over every bucket:
    /// how a peer's flush was applied before (the baseline of
    /// `benches/flush.rs`).
    pub async fn flush_in_one_call(&mut self, db: u32, stamp: &str) -> Result<Slices, StoreError> {
        self.flush_sliced(db, stamp, META_BUCKETS as usize, None)
            .await
    }

    /// Deletes the keys of database `db` recorded older than the peer's
    /// flush `stamp`, whose floor is already up, a few buckets per script
    /// call (scripts/flushslice.lua): each call is sized to take about
    /// `SLICE_TARGET` (2 ms) of Redis's time. Keys written here since the flush
    /// began stay. Returns what it did.
    pub async fn flush_in_slices(&mut self, db: u32, stamp: &str) -> Result<Slices, StoreError> {
        self.flush_sliced(db, stamp, 0, None).await
    }

    /// The slices of a flush; `fixed` buckets per call, or sized by time
    /// when 0. `local` is this node's stamp suffix for a local FLUSHDB, None
    /// for a peer's flush (see scripts/flushslice.lua).
    pub(super) async fn flush_sliced(
        &mut self,
        db: u32,
        stamp: &str,
        fixed: usize,
        local: Option<&str>,
    ) -> Result<Slices, StoreError> {
        let began = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let started = std::time::Instant::now();
        let mut done = Slices::default();
        let mut size = if fixed > 0 { fixed } else { 1 };
        let mut next = 0u32;
        while next < META_BUCKETS {
            let end = (next + size as u32).min(META_BUCKETS);
            let mut keys = vec![APPLY_MARKER_KEY.as_bytes().to_vec()];
            keys.extend((next..end).map(|b| bucket_name(db, b).into_bytes()));
            let t = std::time::Instant::now();
            let reply = self
                .run_one(
                    db,
                    Which::FlushSlice,
                    keys,
                    vec![
                        stamp.as_bytes().to_vec(),
                        began.to_string().into_bytes(),
                        local.unwrap_or("").as_bytes().to_vec(),
                    ],
                )
                .await?;
            let took = t.elapsed();
            let (deleted, kept, again): (u64, u64, Vec<Vec<u8>>) =
                redis::from_redis_value(reply)
                    .map_err(|e| StoreError::BadReply(format!("flush slice: {e}")))?;
            done.deleted += deleted;
            done.kept += kept;
            done.restamp.extend(again.into_iter().map(Bytes::from));
            done.calls += 1;
            done.longest = done.longest.max(took);
            next = end;
            // The next slice sized from this one's time (a round trip
            // included, so slices err on the small side).
            let per_bucket = took.as_secs_f64() / size as f64;
            size = if fixed > 0 {
                fixed
            } else if per_bucket > 0.0 {
                ((SLICE_TARGET.as_secs_f64() / per_bucket) as usize).clamp(1, MAX_SLICE_BUCKETS)
            } else {
                MAX_SLICE_BUCKETS
            };
        }
        tracing::info!(
            db,
            deleted = done.deleted,
            kept_as_newer = done.kept,
            calls = done.calls,
            longest_call_ms = done.longest.as_secs_f64() * 1e3,
            secs = started.elapsed().as_secs_f64(),
            local = local.is_some(),
            "a flush's records dropped"
        );
        Ok(done)
    }
}

/// Redis time one flush slice should take.
pub const SLICE_TARGET: std::time::Duration = std::time::Duration::from_millis(2);

/// Most metadata buckets one flush slice reads.
const MAX_SLICE_BUCKETS: usize = 256;

/// What a flush applied in slices did.
#[derive(Debug, Default, Clone)]
pub struct Slices {
    /// Keys deleted.
    pub deleted: u64,
    /// Keys written since the flush began, kept (their old records went).
    pub kept: u64,
    /// Script calls.
    pub calls: u64,
    /// The longest call, round trip included.
    pub longest: std::time::Duration,
    /// After a local flush: keys clients wrote after it that this node
    /// stamped before it, to be stamped again.
    pub restamp: Vec<Bytes>,
}
