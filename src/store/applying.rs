//! The applier's script: one peer batch applied with last-writer-wins, one
//! atomic script per database (scripts/apply.lua, scripts/flush.lua).

use redis::Value as RValue;

use super::connection::{Store, StoreError};
use super::layout::{APPLY_MARKER_KEY, FLOOR_KEY, META_PREFIX, build_key, meta_bucket};
use super::lua::{Call, Which};
use super::reply::parse_flush_reply;
use crate::base::change::{Change, Op, Value};

/// What applying one batch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ApplyOutcome {
    /// Changes that won and were written.
    pub applied: u64,
    /// Changes older than (or equal to) what the key already had.
    pub older: u64,
    /// Collections that arrived in pieces whose seal did not match what
    /// had been built: a piece went missing, and it was not applied.
    pub incomplete: u64,
}

impl Store {
    /// Applies one peer batch: one atomic script per database (flushes in
    /// their own call, in order), all in one pipelined round trip.
    pub async fn apply(&mut self, changes: &[Change]) -> Result<ApplyOutcome, StoreError> {
        let mut calls: Vec<Call> = Vec::new();
        // Segments: consecutive changes of one database without a flush.
        let mut open: std::collections::HashMap<u32, usize> = std::collections::HashMap::new();
        let mut counts: Vec<usize> = Vec::new();
        for c in changes {
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
                counts.push(0);
                continue;
            }
            let idx = *open.entry(c.db).or_insert_with(|| {
                calls.push((
                    c.db,
                    Which::Apply,
                    vec![FLOOR_KEY.into(), APPLY_MARKER_KEY.into()],
                    vec![],
                ));
                counts.push(0);
                calls.len() - 1
            });
            let (_, _, keys, args) = &mut calls[idx];
            counts[idx] += 1;
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
            return Ok(ApplyOutcome::default());
        }
        let replies = self.run(&calls).await?;
        let mut out = ApplyOutcome::default();
        for ((_, which, _, _), reply) in calls.iter().zip(replies) {
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
            for it in items {
                match it {
                    RValue::Int(1) => out.applied += 1,
                    RValue::Int(0) => out.older += 1,
                    RValue::Int(2) => out.incomplete += 1,
                    other => return Err(StoreError::BadReply(format!("apply item: {other:?}"))),
                }
            }
        }
        Ok(out)
    }
}
