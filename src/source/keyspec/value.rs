//! Reading strings, integers, arrays and maps out of a `redis::Value`, RESP2 or RESP3 alike.

use redis::Value;

/// Short rendering of a value for error messages.
pub(super) fn show(v: &Value) -> String {
    let mut s = format!("{v:?}");
    if s.len() > 120 {
        let mut cut = 117;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

pub(super) fn list(v: &Value) -> Option<&[Value]> {
    match v {
        Value::Array(items) | Value::Set(items) => Some(items),
        Value::Attribute { data, .. } => list(data),
        _ => None,
    }
}

pub(super) fn text(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        Value::VerbatimString { text, .. } => Some(text.as_bytes()),
        Value::Okay => Some(b"OK"),
        Value::Attribute { data, .. } => text(data),
        _ => None,
    }
}

pub(super) fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::Double(d) if d.fract() == 0.0 && d.abs() < 9.0e15 => Some(*d as i64),
        Value::Attribute { data, .. } => int(data),
        other => std::str::from_utf8(text(other)?).ok()?.trim().parse().ok(),
    }
}

/// Field/value pairs of a map-shaped reply.
pub(super) type Fields<'a> = Vec<(&'a Value, &'a Value)>;

/// Field/value pairs of a RESP2 flat array or a RESP3 map.
pub(super) fn pairs(v: &Value) -> Option<Fields<'_>> {
    match v {
        Value::Map(m) => Some(m.iter().map(|(k, v)| (k, v)).collect()),
        Value::Array(items) if items.len() % 2 == 0 => {
            Some(items.chunks(2).map(|c| (&c[0], &c[1])).collect())
        }
        Value::Attribute { data, .. } => pairs(data),
        _ => None,
    }
}

pub(super) fn field<'a>(pairs: &[(&'a Value, &'a Value)], name: &str) -> Option<&'a Value> {
    pairs
        .iter()
        .find(|(k, _)| text(k).is_some_and(|k| k.eq_ignore_ascii_case(name.as_bytes())))
        .map(|(_, v)| *v)
}
