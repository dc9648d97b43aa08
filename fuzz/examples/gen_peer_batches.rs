//! Writes the seed corpus of the `peer_batch` fuzz target: a few batches
//! encoded with `geosync::base::change::encode_batch`, covering every op and value
//! type.
//!
//! `cargo run --example gen_peer_batches` (from fuzz/).

use std::path::Path;

use geosync::base::change::{Change, Collection, Op, StreamState, Value, encode_batch};
use serde_bytes::ByteBuf;

fn b(s: &[u8]) -> ByteBuf {
    ByteBuf::from(s.to_vec())
}

fn put(db: u32, key: &str, stamp: &str, value: Value, expire_at_ms: Option<i64>) -> Change {
    Change {
        db,
        key: b(key.as_bytes()),
        stamp: stamp.into(),
        op: Op::Put {
            value,
            expire_at_ms,
        },
    }
}

fn main() {
    let stream = Value::Stream(StreamState {
        entries: vec![
            ("1-1".into(), vec![(b(b"f"), b(b"v"))]),
            ("2-0".into(), vec![(b(b"a"), b(b"1")), (b(b"b"), b(b"2"))]),
        ],
        last_id: "2-0".into(),
        entries_added: 3,
        max_deleted_id: "1-5".into(),
        groups: vec![
            (b(b"g"), "1-1".into(), Some(1)),
            (b(b"h"), "0-0".into(), None),
        ],
    });
    let batches: Vec<(&str, Vec<Change>)> = vec![
        (
            "string_with_expiry",
            vec![put(
                0,
                "k",
                "0000000000000001",
                Value::String(b(b"v")),
                Some(1_795_313_597_283),
            )],
        ),
        (
            "every_type",
            vec![
                put(
                    0,
                    "s",
                    "00000000000000a1",
                    Value::String(b(b"\x00\xff\r\n")),
                    None,
                ),
                put(
                    1,
                    "l",
                    "00000000000000a2",
                    Value::List(vec![b(b"a"), b(b""), b(b"a")]),
                    None,
                ),
                put(
                    2,
                    "set",
                    "00000000000000a3",
                    Value::Set(vec![b(b"x"), b(b"1")]),
                    None,
                ),
                put(
                    3,
                    "z",
                    "00000000000000a4",
                    Value::ZSet(vec![(b(b"m"), b(b"1.5")), (b(b"n"), b(b"-inf"))]),
                    Some(-1),
                ),
                put(
                    4,
                    "h",
                    "00000000000000a5",
                    Value::Hash(vec![(b(b"f"), b(b"v"))]),
                    None,
                ),
                put(15, "st", "00000000000000a6", stream, None),
            ],
        ),
        (
            "delete_and_flush",
            vec![
                Change {
                    db: 0,
                    key: b(b"gone"),
                    stamp: "0000000000000b01".into(),
                    op: Op::Delete,
                },
                Change {
                    db: 7,
                    key: b(b""),
                    stamp: "0000000000000b02".into(),
                    op: Op::FlushDb,
                },
            ],
        ),
        (
            "pieces_and_seal",
            vec![
                Change {
                    db: 0,
                    key: b(b"big"),
                    stamp: "0000000000000c01".into(),
                    op: Op::Part {
                        at: 0,
                        value: Value::ZSet(vec![(b(b"m"), b(b"2"))]),
                    },
                },
                Change {
                    db: 0,
                    key: b(b"big"),
                    stamp: "0000000000000c01".into(),
                    op: Op::Seal {
                        kind: Collection::ZSet,
                        expire_at_ms: Some(1_795_313_597_283),
                        len: 1,
                        digest: "0123456789abcdef".into(),
                    },
                },
            ],
        ),
        ("empty", vec![]),
    ];
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/peer_batch");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, changes) in batches {
        let bytes = encode_batch(&changes);
        std::fs::write(dir.join(name), &bytes).unwrap();
        println!("{name}: {} bytes", bytes.len());
    }
}
