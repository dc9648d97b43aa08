//! Parsing the `COMMAND` reply (entries with key specs and subcommands) into the spec model.

use std::collections::HashMap;

use redis::Value;

use super::error::{KeySpecError, bad};
use super::spec::{BeginSearch, CommandEntry, FindKeys, KeySpec, SpecFlags};
use super::value::{Fields, field, int, list, pairs, show, text};

pub(super) fn parse_flags(v: &Value) -> Option<SpecFlags> {
    let mut bits = 0;
    for f in list(v)? {
        bits |= SpecFlags::bit(text(f)?);
    }
    Some(SpecFlags(bits))
}

pub(super) fn parse_entry(v: &Value) -> Result<CommandEntry, KeySpecError> {
    let items =
        list(v).ok_or_else(|| bad(format!("command entry is not an array: {}", show(v))))?;
    if items.len() < 6 {
        return Err(bad(format!(
            "command entry has {} elements, expected at least 6: {}",
            items.len(),
            show(v)
        )));
    }
    let name = text(&items[0])
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .ok_or_else(|| bad(format!("command name is not a string: {}", show(&items[0]))))?;
    let num = |i: usize, what: &str| {
        int(&items[i]).ok_or_else(|| {
            bad(format!(
                "command {name}: {what} is not an integer: {}",
                show(&items[i])
            ))
        })
    };
    let arity = num(1, "arity")?;
    let legacy_first = num(3, "first key")?;
    let legacy_last = num(4, "last key")?;
    let legacy_step = num(5, "key step")?;
    let flags = list(&items[2])
        .and_then(|fs| {
            fs.iter()
                .map(|f| text(f).map(|t| String::from_utf8_lossy(t).to_ascii_lowercase()))
                .collect::<Option<Vec<_>>>()
        })
        .ok_or_else(|| {
            bad(format!(
                "command {name}: flags are not a list of strings: {}",
                show(&items[2])
            ))
        })?;

    let mut specs = Vec::new();
    match items.get(8) {
        None | Some(Value::Nil) => {}
        Some(raw) => {
            let raw_specs = list(raw).ok_or_else(|| {
                bad(format!(
                    "command {name}: key specs are not an array: {}",
                    show(raw)
                ))
            })?;
            for (i, spec) in raw_specs.iter().enumerate() {
                specs.push(parse_spec(spec, &name, i)?);
            }
        }
    }

    let mut subcommands = HashMap::new();
    match items.get(9) {
        None | Some(Value::Nil) => {}
        Some(raw) => {
            let subs: Vec<&Value> = match raw {
                Value::Map(m) => m.iter().map(|(_, v)| v).collect(),
                other => list(other)
                    .ok_or_else(|| {
                        bad(format!(
                            "command {name}: subcommands are not an array: {}",
                            show(other)
                        ))
                    })?
                    .iter()
                    .collect(),
            };
            for sub in subs {
                let sub = parse_entry(sub)?;
                let short = sub.name.rsplit('|').next().unwrap_or(&sub.name);
                subcommands.insert(short.to_ascii_lowercase().into_bytes(), sub);
            }
        }
    }

    Ok(CommandEntry {
        name,
        arity,
        flags,
        legacy_first,
        legacy_last,
        legacy_step,
        specs,
        subcommands,
    })
}

fn parse_spec(v: &Value, cmd: &str, idx: usize) -> Result<KeySpec, KeySpecError> {
    let what = |msg: String| bad(format!("command {cmd}: key spec #{idx}: {msg}"));
    let fields = pairs(v).ok_or_else(|| what(format!("not a field/value map: {}", show(v))))?;
    let flags_raw = field(&fields, "flags").ok_or_else(|| what("no 'flags' field".into()))?;
    let flags = parse_flags(flags_raw).ok_or_else(|| {
        what(format!(
            "flags are not a list of strings: {}",
            show(flags_raw)
        ))
    })?;

    let (bs_type, bs_spec) = typed_part(&fields, "begin_search").map_err(what)?;
    let begin = match bs_type.as_str() {
        "index" => BeginSearch::Index(spec_int(&bs_spec, "begin_search", "index").map_err(what)?),
        "keyword" => {
            let keyword = field(&bs_spec, "keyword")
                .and_then(text)
                .ok_or_else(|| what("begin_search keyword spec has no string 'keyword'".into()))?
                .to_vec();
            let startfrom = spec_int(&bs_spec, "begin_search", "startfrom").map_err(what)?;
            BeginSearch::Keyword { keyword, startfrom }
        }
        // "unknown", or a type from a newer server: cannot be evaluated locally.
        _ => BeginSearch::Unknown,
    };

    let (fk_type, fk_spec) = typed_part(&fields, "find_keys").map_err(what)?;
    let get = |name: &str| spec_int(&fk_spec, "find_keys", name).map_err(what);
    let find = match fk_type.as_str() {
        "range" => FindKeys::Range {
            lastkey: get("lastkey")?,
            keystep: get("keystep")?,
            limit: get("limit")?,
        },
        "keynum" => FindKeys::Keynum {
            keynumidx: get("keynumidx")?,
            firstkey: get("firstkey")?,
            keystep: get("keystep")?,
        },
        _ => FindKeys::Unknown,
    };
    Ok(KeySpec { flags, begin, find })
}

/// The `{"type": ..., "spec": {...}}` value of `begin_search` / `find_keys`, type lowercased.
fn typed_part<'a>(
    fields: &[(&'a Value, &'a Value)],
    part: &str,
) -> Result<(String, Fields<'a>), String> {
    let raw = field(fields, part).ok_or_else(|| format!("no '{part}' field"))?;
    let inner = pairs(raw).ok_or_else(|| format!("{part} is not a map: {}", show(raw)))?;
    let ty = field(&inner, "type")
        .and_then(text)
        .ok_or_else(|| format!("{part} has no string 'type'"))?;
    let ty = String::from_utf8_lossy(ty).to_ascii_lowercase();
    let spec = match field(&inner, "spec") {
        None | Some(Value::Nil) => Vec::new(),
        // An empty RESP2 map is an empty array, which `pairs` handles.
        Some(s) => pairs(s).ok_or_else(|| format!("{part} spec is not a map: {}", show(s)))?,
    };
    Ok((ty, spec))
}

fn spec_int(spec: &[(&Value, &Value)], part: &str, name: &str) -> Result<i64, String> {
    let raw = field(spec, name).ok_or_else(|| format!("{part} spec has no '{name}'"))?;
    int(raw).ok_or_else(|| format!("{part} '{name}' is not an integer: {}", show(raw)))
}
