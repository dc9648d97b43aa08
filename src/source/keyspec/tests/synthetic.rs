//! Synthetic replies (no server): algorithm corners and reply shapes.

use redis::Value;

use super::support::argv;
use crate::source::keyspec::error::KeySpecError;
use crate::source::keyspec::eval::{KeyLookup, parse_ll};
use crate::source::keyspec::table::KeySpecTable;

fn b(s: &str) -> Value {
    Value::BulkString(s.as_bytes().to_vec())
}

fn arr(items: Vec<Value>) -> Value {
    Value::Array(items)
}

fn strs(items: &[&str]) -> Value {
    arr(items.iter().map(|s| b(s)).collect())
}

/// RESP2 flat-array map, or RESP3 map.
fn map(resp3: bool, fields: Vec<(&str, Value)>) -> Value {
    if resp3 {
        Value::Map(fields.into_iter().map(|(k, v)| (b(k), v)).collect())
    } else {
        arr(fields.into_iter().flat_map(|(k, v)| [b(k), v]).collect())
    }
}

fn typed(resp3: bool, ty: &str, fields: Vec<(&str, Value)>) -> Value {
    map(resp3, vec![("type", b(ty)), ("spec", map(resp3, fields))])
}

fn index(resp3: bool, pos: i64) -> Value {
    typed(resp3, "index", vec![("index", Value::Int(pos))])
}

fn keyword(resp3: bool, kw: &str, startfrom: i64) -> Value {
    typed(
        resp3,
        "keyword",
        vec![("keyword", b(kw)), ("startfrom", Value::Int(startfrom))],
    )
}

fn range(resp3: bool, lastkey: i64, keystep: i64, limit: i64) -> Value {
    typed(
        resp3,
        "range",
        vec![
            ("lastkey", Value::Int(lastkey)),
            ("keystep", Value::Int(keystep)),
            ("limit", Value::Int(limit)),
        ],
    )
}

fn keynum(resp3: bool, idx: i64, firstkey: i64, keystep: i64) -> Value {
    typed(
        resp3,
        "keynum",
        vec![
            ("keynumidx", Value::Int(idx)),
            ("firstkey", Value::Int(firstkey)),
            ("keystep", Value::Int(keystep)),
        ],
    )
}

fn unknown(resp3: bool) -> Value {
    typed(resp3, "unknown", vec![])
}

fn spec(resp3: bool, flags: &[&str], begin: Value, find: Value) -> Value {
    map(
        resp3,
        vec![
            ("notes", b("synthetic")),
            ("flags", strs(flags)),
            ("begin_search", begin),
            ("find_keys", find),
        ],
    )
}

fn entry(name: &str, arity: i64, flags: &[&str], specs: Vec<Value>, subs: Vec<Value>) -> Value {
    arr(vec![
        b(name),
        Value::Int(arity),
        strs(flags),
        Value::Int(0),
        Value::Int(0),
        Value::Int(0),
        strs(&["@write"]),
        arr(vec![]),
        arr(specs),
        arr(subs),
    ])
}

/// A table of synthetic commands exercising every spec shape.
fn synthetic(resp3: bool) -> KeySpecTable {
    let r = resp3;
    let reply = arr(vec![
        // XREAD-like, but writing: STREAMS keyword, half of the rest are keys.
        entry(
            "wxread",
            -4,
            &["write"],
            vec![spec(
                r,
                &["RW"],
                keyword(r, "STREAMS", 1),
                range(r, -1, 1, 2),
            )],
            vec![],
        ),
        // MIGRATE-like backwards keyword search, without INCOMPLETE.
        entry(
            "wmigrate",
            -6,
            &["write"],
            vec![
                spec(r, &["RW", "delete"], index(r, 3), range(r, 0, 1, 0)),
                spec(
                    r,
                    &["RW", "delete"],
                    keyword(r, "KEYS", -2),
                    range(r, -1, 1, 0),
                ),
            ],
            vec![],
        ),
        entry(
            "wlmpop",
            -4,
            &["write"],
            vec![spec(r, &["RW"], index(r, 1), keynum(r, 0, 1, 1))],
            vec![],
        ),
        // numkeys at argv[2], keys from argv[3] every other argument.
        entry(
            "wkn2",
            -4,
            &["write"],
            vec![spec(r, &["RW"], index(r, 1), keynum(r, 1, 2, 2))],
            vec![],
        ),
        entry(
            "wmset",
            -3,
            &["write"],
            vec![spec(r, &["OW"], index(r, 1), range(r, -1, 2, 0))],
            vec![],
        ),
        entry(
            "wrename",
            3,
            &["write"],
            vec![
                spec(r, &["RW"], index(r, 1), range(r, 0, 1, 0)),
                spec(r, &["OW"], index(r, 2), range(r, 0, 1, 0)),
            ],
            vec![],
        ),
        // Unknown write spec: ask. Unknown read-only spec: ignored.
        entry(
            "wsort",
            -2,
            &["write"],
            vec![
                spec(r, &["RO"], index(r, 1), range(r, 0, 1, 0)),
                spec(r, &["RO"], unknown(r), unknown(r)),
            ],
            vec![],
        ),
        entry(
            "wsortstore",
            -2,
            &["write"],
            vec![spec(r, &["OW"], unknown(r), unknown(r))],
            vec![],
        ),
        entry(
            "wincomplete",
            -2,
            &["write"],
            vec![spec(
                r,
                &["RW", "incomplete"],
                index(r, 1),
                range(r, 0, 1, 0),
            )],
            vec![],
        ),
        entry(
            "wvarro",
            -2,
            &["write"],
            vec![spec(
                r,
                &["RO", "variable_flags"],
                index(r, 1),
                range(r, 0, 1, 0),
            )],
            vec![],
        ),
        // NOT_KEY specs are skipped even when they could not be evaluated.
        entry(
            "wchannel",
            3,
            &["pubsub"],
            vec![spec(r, &["not_key"], unknown(r), unknown(r))],
            vec![],
        ),
        // No access flag at all (module-style): treated as written.
        entry(
            "wmodule",
            2,
            &["write"],
            vec![spec(r, &[], index(r, 1), range(r, 0, 1, 0))],
            vec![],
        ),
        // Container.
        entry(
            "wgroup",
            -2,
            &[],
            vec![],
            vec![
                entry(
                    "wgroup|create",
                    -5,
                    &["write"],
                    vec![spec(r, &["RW", "insert"], index(r, 2), range(r, 0, 1, 0))],
                    vec![],
                ),
                entry(
                    "wgroup|info",
                    3,
                    &["readonly"],
                    vec![spec(r, &["RO"], index(r, 2), range(r, 0, 1, 0))],
                    vec![],
                ),
            ],
        ),
        // Pre-7 shape: no tips / key specs / subcommands; legacy range only.
        arr(vec![
            b("oldmset"),
            Value::Int(-3),
            strs(&["write"]),
            Value::Int(1),
            Value::Int(-1),
            Value::Int(2),
            strs(&["@write"]),
        ]),
        arr(vec![
            b("oldeval"),
            Value::Int(-3),
            strs(&["write", "movablekeys"]),
            Value::Int(0),
            Value::Int(0),
            Value::Int(0),
        ]),
        Value::Nil,
    ]);
    KeySpecTable::from_command_reply(&reply).expect("synthetic table parses")
}

fn keys(table: &KeySpecTable, args: &[&str]) -> KeyLookup {
    table.written_keys(&argv(args))
}

fn k(idx: &[usize]) -> KeyLookup {
    KeyLookup::Keys(idx.to_vec())
}

#[test]
fn keyword_search_and_limit() {
    let t = synthetic(false);
    // STREAMS a b 0 0 -> keys are the first half after the keyword.
    assert_eq!(
        keys(&t, &["wxread", "COUNT", "2", "streams", "a", "b", "0", "0"]),
        k(&[4, 5])
    );
    assert_eq!(keys(&t, &["wxread", "STREAMS", "a", "0"]), k(&[2]));
    // Keyword as the last argument is not searched (as in the server): no keys.
    assert_eq!(keys(&t, &["wxread", "COUNT", "STREAMS"]), k(&[]));
    assert_eq!(keys(&t, &["wxread", "COUNT", "2"]), k(&[]));
    // Backwards search from argc-2 for KEYS.
    assert_eq!(
        keys(
            &t,
            &["wmigrate", "h", "p", "", "0", "5000", "KEYS", "a", "b"]
        ),
        k(&[3, 7, 8])
    );
    assert_eq!(
        keys(&t, &["wmigrate", "h", "p", "key", "0", "5000"]),
        k(&[3])
    );
    // The backwards search stops before argv[1].
    assert_eq!(keys(&t, &["wmigrate", "KEYS", "a"]), k(&[]));
}

#[test]
fn keynum_range_step_and_out_of_range() {
    let t = synthetic(false);
    assert_eq!(keys(&t, &["wlmpop", "2", "a", "b", "LEFT"]), k(&[2, 3]));
    assert_eq!(keys(&t, &["WLMPOP", "0", "LEFT"]), k(&[]));
    // numkeys larger than what is there: the keys that are in range.
    assert_eq!(keys(&t, &["wlmpop", "5", "a"]), k(&[2]));
    assert_eq!(
        keys(&t, &["wlmpop", "9223372036854775807", "a", "b"]),
        k(&[2, 3])
    );
    // numkeys missing or unparsable: no keys.
    for bad in ["x", "-1", "01", "+1", " 1", ""] {
        assert_eq!(keys(&t, &["wlmpop", bad, "a"]), k(&[]), "{bad:?}");
    }
    assert_eq!(keys(&t, &["wlmpop"]), k(&[]));
    // Like the server, last = first + numkeys - 1 regardless of keystep.
    assert_eq!(
        keys(&t, &["wkn2", "x", "3", "a", "1", "b", "2"]),
        k(&[3, 5])
    );
    assert_eq!(
        keys(&t, &["wkn2", "x", "4", "a", "1", "b", "2"]),
        k(&[3, 5])
    );
    assert_eq!(keys(&t, &["wmset", "a", "1", "b", "2"]), k(&[1, 3]));
    assert_eq!(keys(&t, &["wmset", "a", "1", "b"]), k(&[1, 3]));
    assert_eq!(keys(&t, &["wmset"]), k(&[]));
    assert_eq!(keys(&t, &["wrename", "a", "b"]), k(&[1, 2]));
    assert_eq!(keys(&t, &["wrename", "a"]), k(&[1]));
    assert_eq!(keys(&t, &["wrename"]), k(&[]));
}

#[test]
fn unknown_incomplete_variable_and_not_key() {
    let t = synthetic(false);
    assert_eq!(keys(&t, &["wsort", "k", "BY", "x"]), k(&[]));
    assert_eq!(keys(&t, &["wsortstore", "k"]), KeyLookup::AskServer);
    assert_eq!(keys(&t, &["wincomplete", "k"]), KeyLookup::AskServer);
    assert_eq!(keys(&t, &["wvarro", "k"]), KeyLookup::AskServer);
    assert_eq!(keys(&t, &["wchannel", "ch", "m"]), k(&[]));
    assert_eq!(keys(&t, &["wmodule", "k"]), k(&[1]));
}

#[test]
fn containers_and_legacy_entries() {
    let t = synthetic(false);
    assert_eq!(keys(&t, &["WGROUP", "Create", "s", "g", "$"]), k(&[2]));
    assert_eq!(keys(&t, &["wgroup", "info", "s"]), k(&[]));
    assert_eq!(keys(&t, &["wgroup"]), k(&[]));
    assert_eq!(keys(&t, &["wgroup", "nope"]), KeyLookup::UnknownCommand);
    assert_eq!(keys(&t, &["nope"]), KeyLookup::UnknownCommand);
    assert_eq!(keys(&t, &["oldmset", "a", "1", "b", "2"]), k(&[1, 3]));
    assert_eq!(keys(&t, &["oldmset", "a"]), k(&[1]));
    assert_eq!(keys(&t, &["oldeval", "s", "1", "k"]), KeyLookup::AskServer);
}

#[test]
fn resp3_shape_parses_to_the_same_table() {
    assert_eq!(synthetic(false), synthetic(true));
    // Top-level map (name -> entry) and sets are accepted too.
    let entry = entry(
        "wx",
        2,
        &["write"],
        vec![spec(true, &["RW"], index(true, 1), range(true, 0, 1, 0))],
        vec![],
    );
    let reply = Value::Map(vec![(b("wx"), entry)]);
    let t = KeySpecTable::from_command_reply(&reply).unwrap();
    assert_eq!(keys(&t, &["wx", "k"]), k(&[1]));
}

#[test]
fn bad_replies_name_the_problem() {
    let msg = |v: Value| match KeySpecTable::from_command_reply(&v) {
        Err(KeySpecError::BadReply(m)) => m,
        other => panic!("expected BadReply, got {other:?}"),
    };
    assert!(msg(Value::Int(3)).contains("not an array"));
    assert!(msg(arr(vec![strs(&["get", "2"])])).contains("at least 6"));
    let bad_index = entry(
        "wx",
        2,
        &["write"],
        vec![spec(
            false,
            &["RW"],
            typed(false, "index", vec![("index", b("one"))]),
            range(false, 0, 1, 0),
        )],
        vec![],
    );
    let m = msg(arr(vec![bad_index]));
    assert!(m.contains("wx") && m.contains("'index'"), "{m}");
    let no_flags = entry(
        "wy",
        2,
        &["write"],
        vec![map(
            false,
            vec![
                ("begin_search", index(false, 1)),
                ("find_keys", range(false, 0, 1, 0)),
            ],
        )],
        vec![],
    );
    assert!(msg(arr(vec![no_flags])).contains("'flags'"));
    let bad_arity = arr(vec![
        b("wz"),
        b("many"),
        strs(&[]),
        Value::Int(0),
        Value::Int(0),
        Value::Int(0),
    ]);
    assert!(msg(arr(vec![bad_arity])).contains("arity"));
}

#[test]
fn parse_ll_matches_string2ll() {
    assert_eq!(parse_ll(b"0"), Some(0));
    assert_eq!(parse_ll(b"12"), Some(12));
    assert_eq!(parse_ll(b"-3"), Some(-3));
    assert_eq!(parse_ll(b"9223372036854775807"), Some(i64::MAX));
    for bad in [
        &b"01"[..],
        b"+1",
        b" 1",
        b"1 ",
        b"",
        b"-",
        b"-0",
        b"9223372036854775808",
        b"1e3",
    ] {
        assert_eq!(parse_ll(bad), None, "{:?}", String::from_utf8_lossy(bad));
    }
}
