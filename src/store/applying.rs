//! The applier's script: one peer batch applied with last-writer-wins, one
//! atomic script per database (scripts/apply.lua, scripts/flush.lua).

use redis::Value as RValue;

use super::connection::{Store, StoreError};
use super::layout::is_reserved;
use super::layout::{APPLY_MARKER_KEY, FLOOR_KEY, META_PREFIX, build_key, meta_bucket};
use super::lua::{Call, Which};
use super::reply::parse_flush_reply;
use crate::base::change::{Change, Op, Value};
use crate::base::check::check_change;

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
                    vec![FLOOR_KEY.into(), APPLY_MARKER_KEY.into()],
                    vec![
                        c.stamp.clone().into_bytes(),
                        META_PREFIX.into(),
                        b"peer".to_vec(),
                    ],
                ));
                sent.push(vec![c]);
                continue;
            }
            let idx = *open.entry(c.db).or_insert_with(|| {
                calls.push((
                    c.db,
                    Which::Apply,
                    vec![FLOOR_KEY.into(), APPLY_MARKER_KEY.into()],
                    vec![],
                ));
                sent.push(Vec::new());
                calls.len() - 1
            });
            let (_, _, keys, args) = &mut calls[idx];
            sent[idx].push(c);
            keys.push(c.key.to_vec());
            keys.push(meta_bucket(&c.key).into_bytes());
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
        for (((_, which, _, _), reply), sent) in calls.iter().zip(replies).zip(sent) {
            if *which == Which::Flush {
                let (deleted, _) = parse_flush_reply(reply)?;
                if deleted >= 0 {
                    out.applied += 1;
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
        Ok(out)
    }
}
