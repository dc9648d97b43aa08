//! The convergence checker: a database read into a comparable snapshot,
//! and the differences between two snapshots.

use std::collections::BTreeMap;

use redis::{Commands, Connection, Value};

use super::env::now_ms;

/// A key's comparable state.
#[derive(Debug, Clone, PartialEq)]
pub enum KeyValue {
    String(Vec<u8>),
    List(Vec<Vec<u8>>),
    Set(Vec<Vec<u8>>),
    ZSet(Vec<(Vec<u8>, String)>),
    Hash(Vec<(Vec<u8>, Vec<u8>)>),
    /// A hash with field expiries (Redis 7.4+): field, value, expiry or -1.
    HashTtl(Vec<(Vec<u8>, Vec<u8>, i64)>),
    Stream {
        entries: Vec<(String, Vec<Vec<u8>>)>,
        last_id: String,
        groups: Vec<(Vec<u8>, String)>,
    },
    Other(String),
}

/// A key's value and absolute expiry.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyState {
    pub value: KeyValue,
    pub expire_at: Option<i64>,
}

/// A database's user keys and geosync metadata.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub keys: BTreeMap<Vec<u8>, KeyState>,
    /// key → (stamp, flag) from the metadata buckets.
    pub meta: BTreeMap<Vec<u8>, (String, char, Option<i64>)>,
    pub taken_at: i64,
}

fn bulk(v: &Value) -> Vec<u8> {
    match v {
        Value::BulkString(b) => b.clone(),
        Value::SimpleString(s) => s.clone().into_bytes(),
        Value::Int(n) => n.to_string().into_bytes(),
        other => format!("{other:?}").into_bytes(),
    }
}

fn text(v: &Value) -> String {
    String::from_utf8_lossy(&bulk(v)).into_owned()
}

/// The fields' expiries (HPEXPIRETIME), or None when the server has no
/// field expiry or no field of the hash expires.
pub fn field_expiries(
    c: &mut Connection,
    key: &[u8],
    fields: &[(Vec<u8>, Vec<u8>)],
) -> Option<Vec<i64>> {
    if fields.is_empty() {
        return None;
    }
    let mut cmd = redis::cmd("HPEXPIRETIME");
    cmd.arg(key).arg("FIELDS").arg(fields.len());
    for (f, _) in fields {
        cmd.arg(f);
    }
    let exps: Vec<i64> = cmd.query(c).ok()?;
    exps.iter().any(|e| *e > 0).then_some(exps)
}

/// True when the server supports hash field expiry (Redis 7.4+).
pub fn has_field_expiry(c: &mut Connection) -> bool {
    let r: redis::RedisResult<redis::Value> =
        redis::cmd("COMMAND").arg("INFO").arg("HPEXPIRE").query(c);
    matches!(r, Ok(redis::Value::Array(v)) if v.first().is_some_and(|x| *x != redis::Value::Nil))
}

/// Reads one key's state; None if it does not exist.
/// Reads one key's state; None if it does not exist. A key that changes
/// type or disappears while it is read (an apply or an expiry in between)
/// reads as a value no other region can have, so a convergence wait simply
/// looks again.
pub fn read_key(c: &mut Connection, key: &[u8]) -> Option<KeyState> {
    try_read_key(c, key).unwrap_or_else(|e| {
        Some(KeyState {
            value: KeyValue::Other(format!("changed while read: {e}")),
            expire_at: None,
        })
    })
}

fn try_read_key(c: &mut Connection, key: &[u8]) -> redis::RedisResult<Option<KeyState>> {
    let t: String = redis::cmd("TYPE").arg(key).query(c)?;
    let value = match t.as_str() {
        "none" => return Ok(None),
        "string" => KeyValue::String(c.get(key)?),
        "list" => KeyValue::List(c.lrange(key, 0, -1)?),
        "set" => {
            let mut m: Vec<Vec<u8>> = c.smembers(key)?;
            m.sort();
            KeyValue::Set(m)
        }
        "zset" => {
            let v: Vec<Vec<u8>> = redis::cmd("ZRANGE")
                .arg(key)
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES")
                .query(c)?;
            KeyValue::ZSet(
                v.chunks(2)
                    .map(|p| (p[0].clone(), String::from_utf8_lossy(&p[1]).into_owned()))
                    .collect(),
            )
        }
        "hash" => {
            let mut v: Vec<(Vec<u8>, Vec<u8>)> = c.hgetall(key)?;
            v.sort();
            match field_expiries(c, key, &v) {
                Some(exps) => KeyValue::HashTtl(
                    v.into_iter()
                        .zip(exps)
                        .map(|((f, x), e)| (f, x, e))
                        .collect(),
                ),
                None => KeyValue::Hash(v),
            }
        }
        "stream" => {
            let entries: Value = redis::cmd("XRANGE").arg(key).arg("-").arg("+").query(c)?;
            let entries = match entries {
                Value::Array(es) => es
                    .iter()
                    .map(|e| match e {
                        Value::Array(p) => (
                            text(&p[0]),
                            match &p[1] {
                                Value::Array(f) => f.iter().map(bulk).collect(),
                                _ => vec![],
                            },
                        ),
                        _ => (String::new(), vec![]),
                    })
                    .collect(),
                _ => vec![],
            };
            let info: Value = redis::cmd("XINFO").arg("STREAM").arg(key).query(c)?;
            let mut last_id = String::new();
            if let Value::Array(f) = &info {
                for p in f.chunks(2) {
                    if text(&p[0]) == "last-generated-id" {
                        last_id = text(&p[1]);
                    }
                }
            }
            let groups: Value = redis::cmd("XINFO").arg("GROUPS").arg(key).query(c)?;
            let mut gs = vec![];
            if let Value::Array(list) = groups {
                for g in list {
                    if let Value::Array(f) = g {
                        let mut name = vec![];
                        let mut last = String::new();
                        for p in f.chunks(2) {
                            match text(&p[0]).as_str() {
                                "name" => name = bulk(&p[1]),
                                "last-delivered-id" => last = text(&p[1]),
                                _ => {}
                            }
                        }
                        gs.push((name, last));
                    }
                }
            }
            gs.sort();
            KeyValue::Stream {
                entries,
                last_id,
                groups: gs,
            }
        }
        other => KeyValue::Other(other.to_string()),
    };
    let exp: i64 = redis::cmd("PEXPIRETIME").arg(key).query(c)?;
    Ok(Some(KeyState {
        value,
        expire_at: (exp > 0).then_some(exp),
    }))
}

/// Reads every user key and every metadata record of the connection's database.
pub fn snapshot(c: &mut Connection) -> Snapshot {
    let mut snap = Snapshot {
        taken_at: now_ms(),
        ..Default::default()
    };
    let keys: Vec<Vec<u8>> = redis::cmd("KEYS").arg("*").query(c).unwrap();
    for k in keys {
        if k.starts_with(b"__geosync:m:") {
            let recs: Vec<(Vec<u8>, Vec<u8>)> = c.hgetall(&k).unwrap();
            for (key, rec) in recs {
                let rec = String::from_utf8_lossy(&rec).into_owned();
                let exp = rec.get(37..).and_then(|e| e.parse().ok());
                snap.meta.insert(
                    key,
                    (rec[..20].to_string(), rec.as_bytes()[20] as char, exp),
                );
            }
        } else if !k.starts_with(b"__geosync:")
            && let Some(s) = read_key(c, &k)
        {
            snap.keys.insert(k, s);
        }
    }
    snap
}

/// Keys expiring this close to now may legitimately be gone in one region
/// and not yet in another at the moment of reading.
const EXPIRY_MARGIN_MS: i64 = 1500;

fn volatile(s: Option<&KeyState>, now: i64) -> bool {
    s.and_then(|s| s.expire_at)
        .is_some_and(|e| e <= now + EXPIRY_MARGIN_MS)
}

/// Differences between two snapshots, one line each.
pub fn diff(a: &Snapshot, b: &Snapshot) -> Vec<String> {
    let now = a.taken_at.max(b.taken_at);
    let mut out = Vec::new();
    let mut keys: Vec<&Vec<u8>> = a.keys.keys().chain(b.keys.keys()).collect();
    keys.sort();
    keys.dedup();
    for k in keys {
        let (x, y) = (a.keys.get(k), b.keys.get(k));
        if x == y || volatile(x, now) || volatile(y, now) {
            continue;
        }
        out.push(format!(
            "key {:?}: {:?} vs {:?}",
            String::from_utf8_lossy(k),
            x,
            y
        ));
    }
    // Metadata: an expired value record counts as the tombstone it becomes.
    let norm = |m: Option<&(String, char, Option<i64>)>| {
        m.map(|(s, f, e)| match (f, e) {
            ('v', Some(e)) if *e <= now + EXPIRY_MARGIN_MS => (s.clone(), 't'),
            _ => (s.clone(), *f),
        })
    };
    let mut mkeys: Vec<&Vec<u8>> = a.meta.keys().chain(b.meta.keys()).collect();
    mkeys.sort();
    mkeys.dedup();
    for k in mkeys {
        let (x, y) = (norm(a.meta.get(k)), norm(b.meta.get(k)));
        if x != y {
            out.push(format!(
                "metadata of {:?}: {:?} vs {:?}",
                String::from_utf8_lossy(k),
                x,
                y
            ));
        }
    }
    out
}
