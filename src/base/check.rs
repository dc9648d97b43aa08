//! What a change must satisfy before any of it is written: the checks the
//! applier runs on every incoming change, so that a value the local Redis
//! would reject half-way is set aside whole (quarantined) instead of
//! leaving a key half-written or stalling the stream behind it.
//!
//! These are the rules Redis itself enforces when the value is written
//! (a sorted-set score is a float and not NaN, stream ids grow, `XSETID`
//! accepts the stream's counters, an expiry is a time Redis can hold). The
//! apply script still catches anything the server refuses beyond them and
//! leaves the key as it was (see `store/scripts/apply.lua`).

use super::change::{Change, Op, StreamState, Value};

/// The latest absolute expiry accepted (Unix ms): the largest a hash field
/// can hold in Redis (2^48 - 1, year 10889); key expiries allow more, but
/// no real one comes near.
pub const MAX_EXPIRE_AT_MS: i64 = (1 << 48) - 1;

/// Why a change cannot be applied as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

fn invalid<T>(why: impl Into<String>) -> Result<T, Invalid> {
    Err(Invalid(why.into()))
}

/// Checks one change against the rules Redis applies when it is written.
pub fn check_change(c: &Change) -> Result<(), Invalid> {
    match &c.op {
        Op::FlushDb => return Ok(()),
        _ if c.key.is_empty() => return invalid("empty key"),
        _ => {}
    }
    match &c.op {
        Op::Put {
            value,
            expire_at_ms,
        } => {
            check_expiry("the key's expiry", *expire_at_ms)?;
            check_value(value)
        }
        Op::Part { value, .. } => {
            if value.is_empty()
                || !matches!(
                    value,
                    Value::List(_) | Value::Set(_) | Value::ZSet(_) | Value::Hash(_)
                )
            {
                return invalid(format!(
                    "a piece must hold elements of a list, set, sorted set or hash, not {} of {}",
                    value.len(),
                    value.type_name()
                ));
            }
            check_value(value)
        }
        Op::Seal {
            expire_at_ms,
            len,
            digest,
            ..
        } => {
            check_expiry("the key's expiry", *expire_at_ms)?;
            if *len == 0
                || digest.len() != 16
                || !digest
                    .bytes()
                    .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            {
                return invalid(format!(
                    "a seal needs elements and a 16-digit hex digest, not {len} and {digest:?}"
                ));
            }
            Ok(())
        }
        Op::Delete | Op::FlushDb => Ok(()),
    }
}

fn check_expiry(what: &str, at: Option<i64>) -> Result<(), Invalid> {
    match at {
        None => Ok(()),
        Some(ms) if (1..=MAX_EXPIRE_AT_MS).contains(&ms) => Ok(()),
        Some(ms) => invalid(format!("{what} {ms} is not a time Redis can hold")),
    }
}

/// Checks a value's elements.
pub fn check_value(v: &Value) -> Result<(), Invalid> {
    match v {
        Value::String(_) | Value::List(_) | Value::Set(_) | Value::Hash(_) => Ok(()),
        Value::ZSet(pairs) => {
            for (member, score) in pairs {
                if !is_score(score) {
                    return invalid(format!(
                        "member {:?} has score {:?}, which is not a float Redis accepts",
                        String::from_utf8_lossy(member),
                        String::from_utf8_lossy(score)
                    ));
                }
            }
            Ok(())
        }
        Value::HashTtl(triples) => {
            for (field, _, at) in triples {
                if *at != -1 {
                    check_expiry(
                        &format!("field {:?}'s expiry", String::from_utf8_lossy(field)),
                        Some(*at),
                    )?;
                }
            }
            Ok(())
        }
        Value::Stream(s) => check_stream(s),
    }
}

/// A score as Redis parses it: a finite float, or an infinity.
fn is_score(s: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(s) else {
        return false;
    };
    let t = text.trim_start_matches(['+', '-']);
    if t.eq_ignore_ascii_case("inf") || t.eq_ignore_ascii_case("infinity") {
        return text.len() - t.len() <= 1;
    }
    // Rust would take "nan" and spellings Redis refuses; a finite number
    // made of digits, a point and an exponent is what Redis prints.
    text.bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.' | b'e' | b'E'))
        && text.parse::<f64>().is_ok_and(f64::is_finite)
}

/// A stream id `ms-seq`.
fn stream_id(s: &str) -> Option<(u64, u64)> {
    let (ms, seq) = s.split_once('-')?;
    let digits = |x: &str| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit());
    if !digits(ms) || !digits(seq) {
        return None;
    }
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

fn check_stream(s: &StreamState) -> Result<(), Invalid> {
    let id = |what: &str, text: &str| {
        stream_id(text).ok_or_else(|| Invalid(format!("{what} {text:?} is not a stream id")))
    };
    let last = id("the last id", &s.last_id)?;
    let max_deleted = id("the max deleted id", &s.max_deleted_id)?;
    let mut previous = (0, 0);
    for (entry, fields) in &s.entries {
        let this = id("entry id", entry)?;
        if this <= previous {
            return invalid(format!(
                "entry {entry} does not come after the one before it"
            ));
        }
        if fields.is_empty() {
            return invalid(format!("entry {entry} has no fields"));
        }
        previous = this;
    }
    if previous > last {
        return invalid(format!(
            "the last id {} is below entry {}",
            s.last_id,
            s.entries.last().map(|e| e.0.as_str()).unwrap_or("")
        ));
    }
    if max_deleted > last {
        return invalid(format!(
            "the max deleted id {} is above the last id {}",
            s.max_deleted_id, s.last_id
        ));
    }
    if s.entries_added < s.entries.len() as u64 {
        return invalid(format!(
            "entries-added {} is below the {} entries",
            s.entries_added,
            s.entries.len()
        ));
    }
    let mut names = std::collections::HashSet::new();
    for (name, delivered, _) in &s.groups {
        if !names.insert(name) {
            return invalid(format!(
                "group {:?} appears twice",
                String::from_utf8_lossy(name)
            ));
        }
        id("a group's last delivered id", delivered)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_bytes::ByteBuf;

    fn b(s: &str) -> ByteBuf {
        ByteBuf::from(s.as_bytes().to_vec())
    }

    fn put(value: Value, expire_at_ms: Option<i64>) -> Change {
        Change {
            db: 0,
            key: b("k"),
            stamp: "00000000000000010100".into(),
            op: Op::Put {
                value,
                expire_at_ms,
            },
        }
    }

    fn stream(entries: &[(&str, usize)], last: &str, added: u64, deleted: &str) -> Value {
        Value::Stream(StreamState {
            entries: entries
                .iter()
                .map(|(id, n)| (id.to_string(), vec![(b("f"), b("v")); *n]))
                .collect(),
            last_id: last.into(),
            entries_added: added,
            max_deleted_id: deleted.into(),
            groups: vec![(b("g"), "0-0".into(), None)],
        })
    }

    #[test]
    fn scores_are_floats_redis_accepts() {
        for good in [
            "1",
            "-2.5",
            "1e10",
            "inf",
            "-inf",
            "+inf",
            "0.30000000000000004",
        ] {
            assert!(is_score(good.as_bytes()), "{good}");
        }
        for bad in ["nan", "NaN", "abc", "", "1,5", "0x10", "--inf", "1e999"] {
            assert!(!is_score(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn streams_follow_xadd_and_xsetid_rules() {
        assert!(check_value(&stream(&[("1-1", 1), ("2-0", 2)], "2-0", 5, "1-0")).is_ok());
        assert!(check_value(&stream(&[], "5-0", 3, "5-0")).is_ok());
        let bad = [
            stream(&[("2-0", 1), ("1-1", 1)], "2-0", 2, "0-0"),
            stream(&[("1-0", 1), ("1-0", 1)], "1-0", 2, "0-0"),
            stream(&[("1-0", 0)], "1-0", 1, "0-0"),
            stream(&[("3-0", 1)], "2-0", 1, "0-0"),
            stream(&[("1-0", 1)], "1-0", 0, "0-0"),
            stream(&[("1-0", 1)], "1-0", 1, "2-0"),
            stream(&[("x", 1)], "1-0", 1, "0-0"),
        ];
        for v in bad {
            assert!(check_value(&v).is_err(), "{v:?}");
        }
        let Value::Stream(mut twice) = stream(&[], "1-0", 0, "0-0") else {
            unreachable!()
        };
        twice.groups.push(twice.groups[0].clone());
        assert!(check_value(&Value::Stream(twice)).is_err());
    }

    #[test]
    fn expiries_redis_cannot_hold_are_refused() {
        let s = || Value::String(b("v"));
        assert!(check_change(&put(s(), Some(1_700_000_000_000))).is_ok());
        assert!(check_change(&put(s(), Some(0))).is_err());
        assert!(check_change(&put(s(), Some(-5))).is_err());
        assert!(check_change(&put(s(), Some(i64::MAX))).is_err());
        let field = |at| Value::HashTtl(vec![(b("f"), b("v"), at)]);
        assert!(check_change(&put(field(-1), None)).is_ok());
        assert!(check_change(&put(field(1_700_000_000_000), None)).is_ok());
        assert!(check_change(&put(field(1 << 50), None)).is_err());
    }

    #[test]
    fn an_empty_key_is_refused_but_a_flush_has_none() {
        let mut c = put(Value::String(b("v")), None);
        c.key = ByteBuf::new();
        assert!(check_change(&c).is_err());
        c.op = Op::FlushDb;
        assert!(check_change(&c).is_ok());
    }
}
