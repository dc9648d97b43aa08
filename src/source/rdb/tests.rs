//! Tests for the RDB parser: fixtures written by a real redis-server 7.0
//! (tests/fixtures/rdb/generate.sh, which also documents the data written),
//! one written by Valkey 8.1 (RDB 11), one by Redis 8.2 with the FalkorDB
//! module loaded (module aux data and module values), and synthetic streams for encodings a
//! 7.0 server cannot produce (pre-7.0 types, module values, Redis 7.4+ and
//! Valkey 9 hash field expiry, Valkey slot import), built byte by byte from
//! the format description.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read};

use super::encoding::decimal_len;
use super::format::*;
use super::listpack::Elem;
use super::*;

macro_rules! fixture {
    ($name:literal) => {
        include_bytes!(concat!("../../../tests/fixtures/rdb/", $name, ".rdb")).as_slice()
    };
}

const EMPTY: &[u8] = fixture!("empty");
const STRINGS: &[u8] = fixture!("strings");
const STRINGS_RAW: &[u8] = fixture!("strings_raw");
const LISTS: &[u8] = fixture!("lists");
const LIST_ENCODINGS: &[u8] = fixture!("list_encodings");
const SETS: &[u8] = fixture!("sets");
const ZSETS: &[u8] = fixture!("zsets");
const HASHES: &[u8] = fixture!("hashes");
const STREAM: &[u8] = fixture!("stream");
const FUNCTIONS: &[u8] = fixture!("functions");
const MULTIDB: &[u8] = fixture!("multidb");
const NOCHECKSUM: &[u8] = fixture!("nochecksum");
const VALKEY81: &[u8] = fixture!("valkey81_rdb11");
const FALKORDB: &[u8] = fixture!("falkordb_redis82");

const ALL_FIXTURES: &[(&str, &[u8])] = &[
    ("empty", EMPTY),
    ("strings", STRINGS),
    ("strings_raw", STRINGS_RAW),
    ("lists", LISTS),
    ("list_encodings", LIST_ENCODINGS),
    ("sets", SETS),
    ("zsets", ZSETS),
    ("hashes", HASHES),
    ("stream", STREAM),
    ("functions", FUNCTIONS),
    ("multidb", MULTIDB),
    ("nochecksum", NOCHECKSUM),
    ("valkey81_rdb11", VALKEY81),
    ("falkordb_redis82", FALKORDB),
];

// ------------------------------------------------------------------ helpers

/// Full decode; whenever it succeeds, also checks that the key-only mode
/// agrees on the same bytes, so every test of a type or encoding covers the
/// skipping path too.
fn parse(bytes: &[u8]) -> Result<Vec<RdbEntry>, RdbError> {
    let (out, full_read) = parse_full(bytes)?;
    match parse_keys(bytes) {
        Ok((got, keys_read)) => {
            assert_eq!(
                key_tuples(&got),
                key_tuples_of_entries(&out),
                "key-only mode disagrees with next_entry"
            );
            assert_eq!(
                keys_read, full_read,
                "the modes stopped at different offsets"
            );
        }
        Err(e) => panic!("next_entry succeeded but next_key failed: {e}"),
    }
    Ok(out)
}

/// Full decode; also returns how many bytes were consumed.
fn parse_full(bytes: &[u8]) -> Result<(Vec<RdbEntry>, u64), RdbError> {
    let mut reader = RdbReader::new(bytes)?;
    let mut out = Vec::new();
    while let Some(e) = reader.next_entry()? {
        out.push(e);
    }
    Ok((out, reader.bytes_read()))
}

/// Key-only parse; also returns how many bytes were consumed.
fn parse_keys(bytes: &[u8]) -> Result<(Vec<RdbKeyInfo>, u64), RdbError> {
    let mut reader = RdbReader::new(bytes)?;
    let mut out = Vec::new();
    while let Some(k) = reader.next_key()? {
        assert_eq!(
            RdbValueType::from_type_byte(k.type_byte),
            Some(k.value_type),
            "{k:?}"
        );
        out.push(k);
    }
    Ok((out, reader.bytes_read()))
}

type KeyTuple = (u64, Vec<u8>, Option<i64>, RdbValueType);

fn key_tuples(keys: &[RdbKeyInfo]) -> Vec<KeyTuple> {
    keys.iter()
        .map(|k| (k.db, k.key.clone(), k.expire_at_ms, k.value_type))
        .collect()
}

fn key_tuples_of_entries(entries: &[RdbEntry]) -> Vec<KeyTuple> {
    entries
        .iter()
        .filter_map(|e| match e {
            RdbEntry::Key(k) => Some((k.db, k.key.clone(), k.expire_at_ms, k.value.value_type())),
            _ => None,
        })
        .collect()
}

fn keys(entries: &[RdbEntry]) -> BTreeMap<(u64, Vec<u8>), RdbKey> {
    let mut map = BTreeMap::new();
    for e in entries {
        if let RdbEntry::Key(k) = e {
            let prev = map.insert((k.db, k.key.clone()), k.clone());
            assert!(prev.is_none(), "duplicate key {:?}", k.key);
        }
    }
    map
}

fn get<'a>(map: &'a BTreeMap<(u64, Vec<u8>), RdbKey>, db: u64, name: &str) -> &'a RdbKey {
    map.get(&(db, name.as_bytes().to_vec()))
        .unwrap_or_else(|| panic!("key {name} missing in db {db}"))
}

fn b(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

fn bs(v: &[&str]) -> Vec<Vec<u8>> {
    v.iter().map(|s| b(s)).collect()
}

fn string_of(k: &RdbKey) -> &[u8] {
    match &k.value {
        RdbValue::String(s) => s,
        other => panic!("{:?} is not a string: {other:?}", k.key),
    }
}

fn list_of(k: &RdbKey) -> &[Vec<u8>] {
    match &k.value {
        RdbValue::List(l) => l,
        other => panic!("{:?} is not a list: {other:?}", k.key),
    }
}

fn set_of(k: &RdbKey) -> BTreeSet<Vec<u8>> {
    match &k.value {
        RdbValue::Set(s) => {
            let set: BTreeSet<_> = s.iter().cloned().collect();
            assert_eq!(set.len(), s.len(), "duplicate set members");
            set
        }
        other => panic!("{:?} is not a set: {other:?}", k.key),
    }
}

fn zset_of(k: &RdbKey) -> &[(Vec<u8>, f64)] {
    match &k.value {
        RdbValue::SortedSet(z) => z,
        other => panic!("{:?} is not a sorted set: {other:?}", k.key),
    }
}

fn hash_of(k: &RdbKey) -> BTreeMap<Vec<u8>, (Vec<u8>, Option<i64>)> {
    match &k.value {
        RdbValue::Hash(h) => h
            .iter()
            .map(|f| (f.field.clone(), (f.value.clone(), f.expire_at_ms)))
            .collect(),
        other => panic!("{:?} is not a hash: {other:?}", k.key),
    }
}

fn plain_hash(pairs: &[(&str, &str)]) -> BTreeMap<Vec<u8>, (Vec<u8>, Option<i64>)> {
    pairs.iter().map(|(f, v)| (b(f), (b(v), None))).collect()
}

fn stream_of(k: &RdbKey) -> &RdbStream {
    match &k.value {
        RdbValue::Stream(s) => s,
        other => panic!("{:?} is not a stream: {other:?}", k.key),
    }
}

/// The bytes right after the (short) key `name` in a fixture, i.e. the start
/// of its stored value, and the type byte before it. Used to prove that a
/// fixture really exercises the encoding a test claims to cover.
fn stored<'a>(fixture: &'a [u8], name: &str) -> (u8, &'a [u8]) {
    let mut needle = vec![name.len() as u8];
    needle.extend_from_slice(name.as_bytes());
    let pos = fixture
        .windows(needle.len())
        .position(|w| w == needle.as_slice())
        .unwrap_or_else(|| panic!("key {name} not found in fixture"));
    (fixture[pos - 1], &fixture[pos + needle.len()..])
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn sid(ms: u64, seq: u64) -> StreamId {
    StreamId::new(ms, seq)
}

fn fields(pairs: &[(&str, &str)]) -> Vec<(Vec<u8>, Vec<u8>)> {
    pairs.iter().map(|(f, v)| (b(f), b(v))).collect()
}

/// Builder for synthetic RDB streams.
struct Rdb {
    buf: Vec<u8>,
    version: u32,
}

impl Rdb {
    fn redis(version: u32) -> Self {
        Rdb {
            buf: format!("REDIS{version:04}").into_bytes(),
            version,
        }
    }

    fn valkey(version: u32) -> Self {
        Rdb {
            buf: format!("VALKEY{version:03}").into_bytes(),
            version,
        }
    }

    fn byte(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    fn raw(&mut self, v: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(v);
        self
    }

    /// Length in the shortest form, like rdbSaveLen.
    fn len(&mut self, n: u64) -> &mut Self {
        if n < 64 {
            self.byte(n as u8)
        } else if n < 16384 {
            self.raw(&[0x40 | (n >> 8) as u8, n as u8])
        } else if n <= u64::from(u32::MAX) {
            self.byte(0x80).raw(&(n as u32).to_be_bytes())
        } else {
            self.byte(0x81).raw(&n.to_be_bytes())
        }
    }

    fn str(&mut self, s: &[u8]) -> &mut Self {
        self.len(s.len() as u64).raw(s)
    }

    fn ms(&mut self, v: i64) -> &mut Self {
        self.raw(&v.to_le_bytes())
    }

    fn key(&mut self, type_byte: u8, name: &str) -> &mut Self {
        self.byte(type_byte).str(name.as_bytes())
    }

    /// EOF opcode and, from RDB 5 on, the CRC-64 trailer.
    fn finish(&mut self) -> Vec<u8> {
        self.byte(OP_EOF);
        if self.version >= 5 {
            let crc = crc64(0, &self.buf);
            self.raw(&crc.to_le_bytes());
        }
        self.buf.clone()
    }
}

fn single_key(bytes: &[u8]) -> RdbKey {
    let entries = parse(bytes).unwrap();
    let mut found: Vec<RdbKey> = entries
        .into_iter()
        .filter_map(|e| match e {
            RdbEntry::Key(k) => Some(k),
            _ => None,
        })
        .collect();
    assert_eq!(found.len(), 1, "expected exactly one key");
    found.remove(0)
}

/// Encodes a module type name and encoding version into a module id, the
/// inverse of `module_type_name` (moduleTypeEncodeId in module.c).
fn module_id(name: &str, encver: u64) -> u64 {
    const CHARSET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut id = 0u64;
    for c in name.bytes() {
        id = (id << 6) | CHARSET.iter().position(|&x| x == c).unwrap() as u64;
    }
    (id << 10) | encver
}

// --------------------------------------------------------- fixture tests

#[test]
fn empty_database_has_only_aux_fields() {
    let mut reader = RdbReader::new(EMPTY).unwrap();
    assert_eq!(reader.version(), 10);
    assert_eq!(reader.flavor(), RdbFlavor::Redis);
    let mut aux = Vec::new();
    while let Some(e) = reader.next_entry().unwrap() {
        match e {
            RdbEntry::Aux { key, value } => aux.push((key, value)),
            other => panic!("unexpected entry {other:?}"),
        }
    }
    let names: Vec<&[u8]> = aux.iter().map(|(k, _)| k.as_slice()).collect();
    assert_eq!(
        names,
        vec![
            b"redis-ver".as_slice(),
            b"redis-bits",
            b"ctime",
            b"used-mem",
            b"aof-base"
        ]
    );
    assert_eq!(aux[0].1, b("7.0.15"));
    assert_eq!(aux[1].1, b("64")); // stored int-encoded
    assert_eq!(aux[4].1, b("0"));
    assert_eq!(reader.bytes_read(), EMPTY.len() as u64);
    // Finished readers keep answering None.
    assert!(reader.next_entry().unwrap().is_none());
}

#[test]
fn strings_fixture() {
    let entries = parse(STRINGS).unwrap();
    assert_eq!(entries[5], RdbEntry::SelectDb(0));
    assert_eq!(
        entries[6],
        RdbEntry::ResizeDb {
            db_size: 15,
            expires_size: 2
        }
    );
    let map = keys(&entries);
    assert_eq!(map.len(), 15);
    let expect: &[(&str, &[u8])] = &[
        ("str:raw", b"hello world"),
        ("str:empty", b""),
        ("str:int8:pos", b"100"),
        ("str:int8:neg", b"-5"),
        ("str:int16:pos", b"1000"),
        ("str:int16:neg", b"-30000"),
        ("str:int32:pos", b"100000"),
        ("str:int32:min", b"-2147483648"),
        ("str:bigint", b"9223372036854775807"),
        ("str:bigneg", b"-9223372036854775808"),
        ("str:leadzero", b"007"),
        ("str:binary", b"bin\x00\x01\xff\xfeend"),
        ("str:pexpire", b"expires in ms"),
        ("str:expire", b"expires in s"),
    ];
    for (name, value) in expect {
        assert_eq!(string_of(get(&map, 0, name)), *value, "{name}");
    }
    assert_eq!(
        string_of(get(&map, 0, "str:lzf")),
        "abcdefgh".repeat(50).as_bytes()
    );
    assert_eq!(
        get(&map, 0, "str:pexpire").expire_at_ms,
        Some(4_102_444_800_123)
    );
    assert_eq!(
        get(&map, 0, "str:expire").expire_at_ms,
        Some(4_102_444_800_000)
    );
    assert_eq!(get(&map, 0, "str:raw").expire_at_ms, None);
    for k in map.values() {
        assert_eq!(k.db, 0);
    }
    // The fixture really uses the special encodings.
    assert_eq!(stored(STRINGS, "str:int8:pos").1[0], 0xc0);
    assert_eq!(stored(STRINGS, "str:int8:neg").1[0], 0xc0);
    assert_eq!(stored(STRINGS, "str:int16:pos").1[0], 0xc1);
    assert_eq!(stored(STRINGS, "str:int16:neg").1[0], 0xc1);
    assert_eq!(stored(STRINGS, "str:int32:pos").1[0], 0xc2);
    assert_eq!(stored(STRINGS, "str:int32:min").1[0], 0xc2);
    assert_eq!(stored(STRINGS, "str:lzf").1[0], 0xc3);
    assert_eq!(stored(STRINGS, "str:bigint").1[0], 19); // plain text
}

#[test]
fn raw_strings_use_14_and_32_bit_lengths() {
    let map = keys(&parse(STRINGS_RAW).unwrap());
    assert_eq!(
        string_of(get(&map, 0, "raw:100")),
        "0123456789".repeat(10).as_bytes()
    );
    assert_eq!(
        string_of(get(&map, 0, "raw:20000")),
        "abcdefghij".repeat(2000).as_bytes()
    );
    assert_eq!(string_of(get(&map, 0, "raw:63")), "x".repeat(63).as_bytes());
    assert_eq!(string_of(get(&map, 0, "raw:64")), "y".repeat(64).as_bytes());
    assert_eq!(stored(STRINGS_RAW, "raw:63").1[0], 63);
    assert_eq!(stored(STRINGS_RAW, "raw:64").1[..2], [0x40, 64]);
    assert_eq!(stored(STRINGS_RAW, "raw:100").1[..2], [0x40, 100]);
    assert_eq!(
        stored(STRINGS_RAW, "raw:20000").1[..5],
        [0x80, 0, 0, 0x4e, 0x20]
    );
}

#[test]
fn quicklist_fixture() {
    let map = keys(&parse(LISTS).unwrap());
    assert_eq!(map.len(), 4);
    assert_eq!(list_of(get(&map, 0, "list:small")), bs(&["a", "b", "c"]));
    let multi: Vec<Vec<u8>> = (1..=10).map(|i| format!("item-{i}").into_bytes()).collect();
    assert_eq!(list_of(get(&map, 0, "list:multi")), multi);
    let compressed: Vec<Vec<u8>> = (1..=12)
        .map(|i| format!("compressible-element-{}-{i}", "z".repeat(60)).into_bytes())
        .collect();
    assert_eq!(list_of(get(&map, 0, "list:compressed")), compressed);
    let plain = vec![b("before"), vec![b'P'; 200], b("after")];
    assert_eq!(list_of(get(&map, 0, "list:plain")), plain);
    // Type 18; list:multi has 3 packed nodes; list:plain has packed, plain,
    // packed nodes (the plain one LZF-compressed); IDLE opcodes precede keys.
    assert_eq!(stored(LISTS, "list:multi").0, T_LIST_QUICKLIST_2);
    assert_eq!(stored(LISTS, "list:multi").1[..2], [3, 2]);
    let (t, plain_bytes) = stored(LISTS, "list:plain");
    assert_eq!(t, T_LIST_QUICKLIST_2);
    assert_eq!(plain_bytes[..2], [3, 2]);
    assert!(contains(plain_bytes, &[QUICKLIST_NODE_PLAIN as u8, 0xc3]));
    assert!(contains(LISTS, &[OP_IDLE, 0, T_LIST_QUICKLIST_2]));
}

#[test]
fn listpack_entry_encodings_from_server() {
    let map = keys(&parse(LIST_ENCODINGS).unwrap());
    let mut expect = bs(&[
        "0",
        "127",
        "128",
        "-1",
        "4095",
        "-4096",
        "4096",
        "32767",
        "-32768",
        "32768",
        "8388607",
        "-8388608",
        "8388608",
        "2147483647",
        "-2147483648",
        "2147483648",
        "9223372036854775807",
        "-9223372036854775808",
    ]);
    expect.push("s".repeat(63).into_bytes());
    expect.push("m".repeat(64).into_bytes());
    expect.push("M".repeat(4095).into_bytes());
    expect.push("L".repeat(4096).into_bytes());
    expect.push(b("12abc"));
    expect.push(b(""));
    assert_eq!(list_of(get(&map, 0, "list:enc")), expect);
    // Entry encodings present in the (uncompressed) listpacks:
    let f = LIST_ENCODINGS;
    assert!(contains(f, &[0x7f, 0x01])); // 7-bit uint 127 + backlen
    assert!(contains(f, &[0xcf, 0xff, 0x02])); // 13-bit 4095
    assert!(contains(f, &[0xf1, 0xff, 0x7f, 0x03])); // 16-bit 32767
    assert!(contains(f, &[0xf2, 0xff, 0xff, 0x7f, 0x04])); // 24-bit
    assert!(contains(f, &[0xf3, 0xff, 0xff, 0xff, 0x7f, 0x05])); // 32-bit
    assert!(contains(
        f,
        &[0xf4, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 0x09]
    )); // 64-bit
    assert!(contains(f, &[0xbf, b's'])); // 6-bit string of 63
    assert!(contains(f, &[0xe0, 64, b'm'])); // 12-bit string
    assert!(contains(f, &[0xf0, 0x00, 0x10, 0x00, 0x00, b'L'])); // 32-bit string
}

#[test]
fn sets_fixture() {
    let map = keys(&parse(SETS).unwrap());
    let set = |name: &str| set_of(get(&map, 0, name));
    let expect = |v: &[&str]| bs(v).into_iter().collect::<BTreeSet<_>>();
    assert_eq!(set("set:int16"), expect(&["3", "1", "2", "-100"]));
    assert_eq!(set("set:int32"), expect(&["1", "100000", "-70000"]));
    assert_eq!(
        set("set:int64"),
        expect(&["1", "5000000000", "-9223372036854775808"])
    );
    assert_eq!(set("set:strings"), expect(&["alpha", "beta", "gamma"]));
    assert_eq!(set("set:toolong"), expect(&["1", "2", "3", "4", "5"]));
    // Intsets come back in ascending order.
    assert_eq!(
        match &get(&map, 0, "set:int16").value {
            RdbValue::Set(s) => s.clone(),
            _ => unreachable!(),
        },
        bs(&["-100", "1", "2", "3"])
    );
    for (name, width) in [("set:int16", 2u8), ("set:int32", 4)] {
        let (t, v) = stored(SETS, name);
        assert_eq!(t, T_SET_INTSET, "{name}");
        assert_eq!(v[1], width, "{name}"); // after the blob length byte
    }
    // The 32-byte int64 intset blob was LZF-compressed (24 -> 32 bytes) and
    // its first literal run starts with the width 8.
    let (t, v) = stored(SETS, "set:int64");
    assert_eq!(t, T_SET_INTSET);
    assert_eq!(v[..5], [0xc3, 24, 32, 4, 8]);
    assert_eq!(stored(SETS, "set:strings").0, T_SET);
    assert_eq!(stored(SETS, "set:toolong").0, T_SET);
}

#[test]
fn zsets_fixture() {
    let map = keys(&parse(ZSETS).unwrap());
    let lp = zset_of(get(&map, 0, "zset:lp"));
    let expect_lp: Vec<(Vec<u8>, f64)> = vec![
        (b("bottom"), f64::NEG_INFINITY),
        (b("c"), -3.0),
        (b("a"), 1.0),
        (b("frac"), 1.234567),
        (b("b"), 2.5),
        (b("big"), 1_000_000.0),
        (b("top"), f64::INFINITY),
    ];
    assert_eq!(lp, expect_lp.as_slice());
    let skip = zset_of(get(&map, 0, "zset:skip"));
    let expect_skip: Vec<(Vec<u8>, f64)> = vec![
        (b("inf"), f64::INFINITY),
        (b("huge"), 1e100),
        (b("y"), 2.0),
        (b("x"), 1.5),
        (b("z"), -0.25),
    ];
    assert_eq!(skip, expect_skip.as_slice());
    assert_eq!(stored(ZSETS, "zset:lp").0, T_ZSET_LISTPACK);
    assert_eq!(stored(ZSETS, "zset:skip").0, T_ZSET_2);
}

#[test]
fn hashes_fixture() {
    let map = keys(&parse(HASHES).unwrap());
    let lp = get(&map, 0, "hash:lp");
    assert_eq!(
        lp.value,
        RdbValue::Hash(
            [("f1", "v1"), ("f2", "2"), ("f3", "-300"), ("f4", "")]
                .iter()
                .map(|(f, v)| HashField {
                    field: b(f),
                    value: b(v),
                    expire_at_ms: None
                })
                .collect()
        )
    );
    assert_eq!(
        hash_of(get(&map, 0, "hash:ht")),
        plain_hash(&[("name", "redis"), ("version", "7"), ("neg", "-12345678901")])
    );
    let big = "V".repeat(100);
    assert_eq!(
        hash_of(get(&map, 0, "hash:bigval")),
        plain_hash(&[("small", "x"), ("big", &big)])
    );
    assert_eq!(stored(HASHES, "hash:lp").0, T_HASH_LISTPACK);
    assert_eq!(stored(HASHES, "hash:ht").0, T_HASH);
    assert_eq!(stored(HASHES, "hash:bigval").0, T_HASH);
}

#[test]
fn stream_fixture() {
    let map = keys(&parse(STREAM).unwrap());
    assert_eq!(stored(STREAM, "s").0, T_STREAM_LISTPACKS_2);
    let s = stream_of(get(&map, 0, "s"));
    let expect_entries = vec![
        StreamEntry {
            id: sid(1, 1),
            fields: fields(&[("name", "alice"), ("age", "30")]),
        },
        StreamEntry {
            id: sid(2, 0),
            fields: fields(&[("color", "red")]),
        },
        StreamEntry {
            id: sid(3, 5),
            fields: fields(&[("name", "carol"), ("age", "40")]),
        },
        StreamEntry {
            id: sid(4, 0),
            fields: fields(&[("name", "dave"), ("age", "41"), ("extra", "yes")]),
        },
        StreamEntry {
            id: sid(6, 0),
            fields: fields(&[("name", "frank"), ("age", "-7")]),
        },
    ];
    assert_eq!(s.entries, expect_entries);
    assert_eq!(s.length, 5);
    assert_eq!(s.last_id, sid(6, 0));
    assert_eq!(s.first_id, Some(sid(1, 1)));
    assert_eq!(s.max_deleted_id, Some(sid(5, 0)));
    assert_eq!(s.entries_added, Some(7));
    assert_eq!(s.groups.len(), 2);

    let g1 = &s.groups[0];
    assert_eq!(g1.name, b("g1"));
    assert_eq!(g1.last_id, sid(4, 0));
    // XINFO shows entries-read nil: Redis stores -1 (unknown) after deletions.
    assert_eq!(g1.entries_read, Some(-1));
    assert_eq!(
        g1.pending,
        vec![
            StreamPendingEntry {
                id: sid(1, 1),
                delivery_time_ms: 1_700_000_000_000,
                delivery_count: 5
            },
            StreamPendingEntry {
                id: sid(2, 0),
                delivery_time_ms: 1_700_000_000_500,
                delivery_count: 1
            },
            StreamPendingEntry {
                id: sid(4, 0),
                delivery_time_ms: 1_700_000_001_000,
                delivery_count: 7
            },
        ]
    );
    assert_eq!(g1.consumers.len(), 2);
    assert_eq!(g1.consumers[0].name, b("c1"));
    assert_eq!(g1.consumers[0].pending, vec![sid(1, 1), sid(2, 0)]);
    assert_eq!(g1.consumers[1].name, b("c2"));
    assert_eq!(g1.consumers[1].pending, vec![sid(4, 0)]);

    let g2 = &s.groups[1];
    assert_eq!(g2.name, b("g2"));
    assert_eq!(g2.last_id, sid(6, 0));
    assert_eq!(g2.entries_read, Some(5));
    assert!(g2.pending.is_empty());
    assert_eq!(g2.consumers.len(), 1);
    assert_eq!(g2.consumers[0].name, b("idle"));
    assert!(g2.consumers[0].pending.is_empty());
    for c in g1.consumers.iter().chain(&g2.consumers) {
        // Wall-clock times written by the server; type 19 has no active time.
        assert!(c.seen_time_ms > 1_600_000_000_000, "{c:?}");
        assert_eq!(c.active_time_ms, None);
    }

    // A stream whose only entry was deleted: no listpacks, metadata kept.
    let empty = stream_of(get(&map, 0, "empty"));
    assert_eq!(
        *empty,
        RdbStream {
            entries: vec![],
            length: 0,
            last_id: sid(7, 7),
            first_id: Some(sid(0, 0)),
            max_deleted_id: Some(sid(7, 7)),
            entries_added: Some(1),
            groups: vec![],
        }
    );
}

#[test]
fn function_library_fixture() {
    let entries = parse(FUNCTIONS).unwrap();
    let payloads: Vec<&Vec<u8>> = entries
        .iter()
        .filter_map(|e| match e {
            RdbEntry::Function { payload } => Some(payload),
            _ => None,
        })
        .collect();
    assert_eq!(
        payloads,
        vec![&b(
            "#!lua name=mylib\nredis.register_function(\"myfunc\", function(keys, args) return 1 end)"
        )]
    );
    let map = keys(&entries);
    assert_eq!(string_of(get(&map, 0, "after:function")), b"yes");
}

#[test]
fn multiple_databases_and_lfu_fixture() {
    let entries = parse(MULTIDB).unwrap();
    let structure: Vec<String> = entries
        .iter()
        .filter_map(|e| match e {
            RdbEntry::SelectDb(db) => Some(format!("select {db}")),
            RdbEntry::ResizeDb {
                db_size,
                expires_size,
            } => Some(format!("resize {db_size} {expires_size}")),
            RdbEntry::Key(k) => Some(format!("key {}", k.db)),
            _ => None,
        })
        .collect();
    assert_eq!(
        structure,
        vec![
            "select 0",
            "resize 2 1",
            "key 0",
            "key 0",
            "select 1",
            "resize 2 0",
            "key 1",
            "key 1",
            "select 15",
            "resize 1 1",
            "key 15"
        ]
    );
    let map = keys(&entries);
    assert_eq!(string_of(get(&map, 0, "db0:a")), b"one");
    assert_eq!(get(&map, 0, "db0:a").expire_at_ms, None);
    assert_eq!(string_of(get(&map, 0, "db0:b")), b"two");
    assert_eq!(get(&map, 0, "db0:b").expire_at_ms, Some(4_102_444_800_999));
    assert_eq!(string_of(get(&map, 1, "db1:a")), b"uno");
    assert_eq!(list_of(get(&map, 1, "db1:list")), bs(&["x", "y"]));
    assert_eq!(string_of(get(&map, 15, "db15:a")), b"quince");
    assert_eq!(
        get(&map, 15, "db15:a").expire_at_ms,
        Some(4_102_444_801_000)
    );
    // LFU frequency opcodes were written (and skipped).
    assert!(contains(MULTIDB, &[OP_FREQ]));
    assert_eq!(stored(MULTIDB, "db0:a").0, T_STRING);
}

#[test]
fn zero_checksum_is_not_verified() {
    let map = keys(&parse(NOCHECKSUM).unwrap());
    assert_eq!(string_of(get(&map, 0, "k")), b"v");
    assert_eq!(NOCHECKSUM[NOCHECKSUM.len() - 8..], [0u8; 8]);
    // With a zero trailer a changed value goes unnoticed, as in Redis.
    let mut changed = NOCHECKSUM.to_vec();
    let pos = changed.len() - 10; // the value byte 'v'
    assert_eq!(changed[pos], b'v');
    changed[pos] = b'w';
    let map = keys(&parse(&changed).unwrap());
    assert_eq!(string_of(get(&map, 0, "k")), b"w");
}

#[test]
fn valkey_8_1_rdb11_fixture() {
    let reader = RdbReader::new(VALKEY81).unwrap();
    assert_eq!(reader.version(), 11);
    assert_eq!(reader.flavor(), RdbFlavor::Redis);
    let entries = parse(VALKEY81).unwrap();
    assert!(entries.contains(&RdbEntry::Aux {
        key: b("valkey-ver"),
        value: b("8.1.8")
    }));
    let map = keys(&entries);
    assert_eq!(stored(VALKEY81, "set:lp").0, T_SET_LISTPACK);
    assert_eq!(
        set_of(get(&map, 0, "set:lp")),
        bs(&["apple", "banana", "cherry"]).into_iter().collect()
    );
    assert_eq!(stored(VALKEY81, "set:ints").0, T_SET_INTSET);
    assert_eq!(list_of(get(&map, 0, "list:lp")), bs(&["a", "1", "b", "2"]));
    assert_eq!(hash_of(get(&map, 0, "hash:lp")), plain_hash(&[("f", "v")]));
    assert_eq!(
        zset_of(get(&map, 0, "zset:lp")),
        &[(b("one"), 1.0), (b("two"), 2.0)]
    );
    assert_eq!(string_of(get(&map, 0, "str")), b"k");

    assert_eq!(stored(VALKEY81, "vs").0, T_STREAM_LISTPACKS_3);
    let s = stream_of(get(&map, 0, "vs"));
    assert_eq!(
        s.entries,
        vec![
            StreamEntry {
                id: sid(1, 1),
                fields: fields(&[("a", "1")])
            },
            StreamEntry {
                id: sid(2, 2),
                fields: fields(&[("b", "2")])
            },
        ]
    );
    assert_eq!(
        (
            s.length,
            s.last_id,
            s.first_id,
            s.max_deleted_id,
            s.entries_added
        ),
        (2, sid(2, 2), Some(sid(1, 1)), Some(sid(0, 0)), Some(2))
    );
    assert_eq!(s.groups.len(), 1);
    let g = &s.groups[0];
    assert_eq!(
        (g.name.as_slice(), g.last_id, g.entries_read),
        (b"grp".as_slice(), sid(1, 1), Some(1))
    );
    assert_eq!(
        g.pending,
        vec![StreamPendingEntry {
            id: sid(1, 1),
            delivery_time_ms: 1_700_000_000_000,
            delivery_count: 3
        }]
    );
    assert_eq!(g.consumers.len(), 1);
    let c = &g.consumers[0];
    assert_eq!(c.name, b("alice"));
    assert_eq!(c.pending, vec![sid(1, 1)]);
    assert!(c.seen_time_ms > 1_600_000_000_000);
    // Type 21 carries the active time (the XREADGROUP that delivered 1-1).
    let active = c.active_time_ms.expect("type 21 has an active time");
    assert!(active > 1_600_000_000_000 && active <= c.seen_time_ms);
}

// ------------------------------------------- robustness on fixture bytes

/// Cut points to try for a fixture: all of them for small files, otherwise a
/// spread plus every cut near both ends.
fn cut_points(len: usize) -> Vec<usize> {
    if len <= 2048 {
        return (0..len).collect();
    }
    let mut cuts: BTreeSet<usize> = (0..len).step_by(len / 600).collect();
    cuts.extend(0..64);
    cuts.extend(len - 64..len);
    cuts.into_iter().collect()
}

#[test]
fn every_truncation_is_unexpected_eof() {
    for (name, bytes) in ALL_FIXTURES {
        for cut in cut_points(bytes.len()) {
            match parse(&bytes[..cut]) {
                Err(RdbError::UnexpectedEof) => {}
                other => panic!("{name} cut at {cut}: expected UnexpectedEof, got {other:?}"),
            }
        }
        assert!(parse(bytes).is_ok(), "{name} whole");
    }
}

#[test]
fn truncation_error_says_so() {
    let msg = parse(&STRINGS[..STRINGS.len() / 2])
        .unwrap_err()
        .to_string();
    assert!(msg.contains("truncated"), "{msg}");
}

#[test]
fn flipped_bytes_are_always_errors() {
    for (name, bytes) in ALL_FIXTURES {
        if *name == "nochecksum" {
            continue; // nothing to detect a changed value with
        }
        let positions = cut_points(bytes.len());
        for &pos in &positions {
            for mask in [0xffu8, 0x01, 0x40] {
                let mut bad = bytes.to_vec();
                bad[pos] ^= mask;
                if let Ok(entries) = parse(&bad) {
                    // The one undetectable flip: a version digit turning into
                    // a pre-RDB-5 version, which has no checksum (as in Redis).
                    let version = RdbReader::new(bad.as_slice()).unwrap().version();
                    assert!(
                        pos < 9 && version < 5,
                        "{name}: byte {pos} ^ {mask:#x} parsed fine: {entries:?}"
                    );
                }
            }
        }
    }
}

#[test]
fn checksum_mismatch_reports_both_values() {
    let mut bad = STRINGS.to_vec();
    let n = bad.len();
    let stored = u64::from_le_bytes(bad[n - 8..].try_into().unwrap());
    bad[n - 1] ^= 0x80;
    match parse(&bad) {
        Err(RdbError::ChecksumMismatch { expected, actual }) => {
            assert_eq!(actual, stored);
            assert_eq!(expected, stored ^ (0x80 << 56));
        }
        other => panic!("expected a checksum mismatch, got {other:?}"),
    }
    assert_eq!(crc64(0, &STRINGS[..n - 8]), stored);
}

/// Tiny deterministic PRNG for the mutation test.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn random_mutations_with_checksum_disabled_never_panic() {
    // With a zero trailer the checksum does not hide structural damage, so
    // this exercises the validation of every decoder. Any outcome but a
    // panic (or a huge allocation) is acceptable.
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    for (_, bytes) in ALL_FIXTURES {
        let mut base = bytes.to_vec();
        let n = base.len();
        base[n - 8..].fill(0);
        for _ in 0..400 {
            let mut bad = base.clone();
            let flips = 1 + rng.next() % 3;
            for _ in 0..flips {
                let pos = 9 + (rng.next() as usize) % (n - 17);
                bad[pos] = rng.next() as u8;
            }
            if let Ok(mut reader) = RdbReader::new(bad.as_slice()) {
                reader.set_max_string_len(1 << 20);
                for item in reader.by_ref() {
                    if item.is_err() {
                        break;
                    }
                }
            }
        }
    }
}

/// A reader returning at most one byte per call.
struct Trickle<'a>(&'a [u8]);

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.0.is_empty() || buf.is_empty() {
            return Ok(0);
        }
        buf[0] = self.0[0];
        self.0 = &self.0[1..];
        Ok(1)
    }
}

#[test]
fn byte_at_a_time_source_gives_the_same_result() {
    for (name, bytes) in ALL_FIXTURES {
        let expected = parse(bytes).unwrap();
        let reader = RdbReader::new(Trickle(bytes)).unwrap();
        let got: Result<Vec<_>, _> = reader.collect();
        assert_eq!(got.unwrap(), expected, "{name}");
    }
}

#[test]
fn stops_right_after_the_trailer() {
    let mut input = MULTIDB.to_vec();
    input.extend_from_slice(b"+replication stream continues");
    let mut reader = RdbReader::new(io::Cursor::new(input)).unwrap();
    while reader.next_entry().unwrap().is_some() {}
    assert_eq!(reader.bytes_read(), MULTIDB.len() as u64);
    let mut rest = String::new();
    reader.into_inner().read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "+replication stream continues");
}

struct FailingReader;

impl Read for FailingReader {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(io::Error::new(
            io::ErrorKind::ConnectionReset,
            "peer went away",
        ))
    }
}

#[test]
fn io_errors_are_reported_as_io() {
    match RdbReader::new(FailingReader) {
        Err(RdbError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset),
        other => panic!("expected Io, got {other:?}"),
    }
    // Mid-stream failure: the magic comes through, then the source fails.
    let src = io::Read::chain(&STRINGS[..20], FailingReader);
    let mut reader = RdbReader::new(src).unwrap();
    let mut err = None;
    for _ in 0..10 {
        match reader.next_entry() {
            Ok(Some(_)) => {}
            Ok(None) => panic!("cannot finish"),
            Err(e) => {
                err = Some(e);
                break;
            }
        }
    }
    assert!(matches!(err, Some(RdbError::Io(_))), "{err:?}");
    // A failed reader refuses to continue, and the iterator stops.
    assert!(matches!(reader.next_entry(), Err(RdbError::Corrupt(_))));
    assert!(reader.next().is_none());
}

// --------------------------------------------------------- header checks

#[test]
fn header_checks() {
    assert!(matches!(
        RdbReader::new(&b"RADIS0010"[..]),
        Err(RdbError::BadMagic)
    ));
    assert!(matches!(
        RdbReader::new(&b"REDIS00x0"[..]),
        Err(RdbError::BadMagic)
    ));
    assert!(matches!(
        RdbReader::new(&b"REDIS"[..]),
        Err(RdbError::UnexpectedEof)
    ));
    assert!(matches!(
        RdbReader::new(&b"REDIS0013"[..]),
        Err(RdbError::UnsupportedVersion(13))
    ));
    assert!(matches!(
        RdbReader::new(&b"REDIS0000"[..]),
        Err(RdbError::UnsupportedVersion(0))
    ));
    assert!(matches!(
        RdbReader::new(&b"VALKEY081"[..]),
        Err(RdbError::UnsupportedVersion(81))
    ));
    assert!(matches!(
        RdbReader::new(&b"VALKEY012"[..]),
        Err(RdbError::UnsupportedVersion(12))
    ));
    let r = RdbReader::new(&b"VALKEY080"[..]).unwrap();
    assert_eq!((r.version(), r.flavor()), (80, RdbFlavor::Valkey));
    let r = RdbReader::new(&b"REDIS0012"[..]).unwrap();
    assert_eq!((r.version(), r.flavor()), (12, RdbFlavor::Redis));
    assert_eq!(
        RdbError::UnsupportedVersion(13).to_string(),
        "unsupported RDB version 13"
    );
}

#[test]
fn unknown_type_names_byte_and_version() {
    for (version, type_byte) in [(10u32, 8u8), (10, 30), (12, 26), (11, 0xef)] {
        let bytes = Rdb::redis(version)
            .byte(OP_SELECTDB)
            .len(0)
            .key(type_byte, "k")
            .str(b"v")
            .finish();
        let err = parse(&bytes).unwrap_err();
        match &err {
            RdbError::UnknownType {
                type_byte: t,
                version: v,
            } => assert_eq!((*t, *v), (type_byte, version)),
            other => panic!("expected UnknownType, got {other:?}"),
        }
        let msg = err.to_string();
        assert!(msg.contains(&format!("type {type_byte}")), "{msg}");
        assert!(msg.contains(&format!("version {version}")), "{msg}");
        // The key-only scan the tailer uses says the same.
        let key_only = parse_keys(&bytes).unwrap_err();
        assert_eq!(key_only.to_string(), msg);
    }
    // Types Redis assigned in 7.4 mean nothing (or something else) in Valkey.
    let bytes = Rdb::valkey(80).key(23, "k").finish();
    assert!(matches!(
        parse(&bytes),
        Err(RdbError::UnknownType {
            type_byte: 23,
            version: 80
        })
    ));
}

#[test]
fn unknown_opcodes() {
    for op in [0xf0u8, 0xf2] {
        let bytes = Rdb::redis(10).byte(op).finish();
        let err = parse(&bytes).unwrap_err();
        assert!(
            matches!(err, RdbError::UnknownOpcode { opcode, version: 10 } if opcode == op),
            "{err:?}"
        );
        assert!(err.to_string().contains(&format!("opcode {op}")));
    }
    // 0xF3 is Valkey's SLOT_IMPORT; Redis plans another layout for it.
    let bytes = Rdb::redis(12).byte(OP_SLOT_IMPORT).finish();
    assert!(matches!(
        parse(&bytes),
        Err(RdbError::UnknownOpcode {
            opcode: 0xf3,
            version: 12
        })
    ));
}

// ------------------------------------------------- synthetic encodings

#[test]
fn length_encodings_and_seconds_expiry() {
    let mut r = Rdb::redis(9);
    r.byte(OP_EXPIRETIME).raw(&2_000_000_000i32.to_le_bytes());
    // 64-bit length form (never needed for such a short string, but valid).
    r.byte(T_STRING)
        .byte(0x81)
        .raw(&2u64.to_be_bytes())
        .raw(b"k1");
    r.byte(0x80).raw(&3u32.to_be_bytes()).raw(b"abc");
    let bytes = r.finish();
    let k = single_key(&bytes);
    assert_eq!(k.key, b("k1"));
    assert_eq!(string_of(&k), b"abc");
    assert_eq!(k.expire_at_ms, Some(2_000_000_000_000));

    // A special encoding where a length is required.
    let bytes = Rdb::redis(10).byte(OP_SELECTDB).byte(0xc0).finish();
    let err = parse(&bytes).unwrap_err();
    assert!(
        matches!(&err, RdbError::Corrupt(m) if m.contains("expected a length")),
        "{err}"
    );
    // An invalid length byte.
    let bytes = Rdb::redis(10).byte(OP_SELECTDB).byte(0x82).finish();
    assert!(matches!(parse(&bytes), Err(RdbError::Corrupt(_))));
    // An invalid string encoding.
    let bytes = Rdb::redis(10).key(T_STRING, "k").byte(0xc4).finish();
    assert!(matches!(parse(&bytes), Err(RdbError::Corrupt(_))));
}

#[test]
fn lzf_string_limits() {
    // Declared uncompressed size impossible for the compressed size.
    let bytes = Rdb::redis(10)
        .key(T_STRING, "k")
        .byte(0xc3)
        .len(2)
        .len(1_000_000)
        .raw(&[0, b'a'])
        .finish();
    let err = parse(&bytes).unwrap_err();
    assert!(
        matches!(&err, RdbError::Corrupt(m) if m.contains("LZF")),
        "{err}"
    );
    // Valid LZF: "abc" then a 6-byte back reference.
    let bytes = Rdb::redis(10)
        .key(T_STRING, "k")
        .byte(0xc3)
        .len(6)
        .len(9)
        .raw(&[2, b'a', b'b', b'c', 4 << 5, 2])
        .finish();
    assert_eq!(string_of(&single_key(&bytes)), b"abcabcabc");
    // Over the configurable sanity limit.
    let bytes = Rdb::redis(10)
        .key(T_STRING, "k")
        .len(5000)
        .raw(&[0; 5000])
        .finish();
    let mut reader = RdbReader::new(bytes.as_slice()).unwrap();
    reader.set_max_string_len(4096);
    assert!(matches!(reader.next_entry(), Err(RdbError::Corrupt(m)) if m.contains("limit")));
}

#[test]
fn huge_declared_lengths_fail_without_huge_allocations() {
    // 4 GiB string, 2^62 list elements, 2^62 stream nodes: all end in EOF
    // after the few bytes that exist.
    let cases = [
        Rdb::redis(10)
            .key(T_STRING, "k")
            .byte(0x80)
            .raw(&u32::MAX.to_be_bytes())
            .raw(b"abc")
            .buf
            .clone(),
        Rdb::redis(10)
            .key(T_LIST, "k")
            .byte(0x81)
            .raw(&(1u64 << 62).to_be_bytes())
            .str(b"a")
            .buf
            .clone(),
        Rdb::redis(10)
            .key(T_STREAM_LISTPACKS_3, "k")
            .byte(0x81)
            .raw(&(1u64 << 62).to_be_bytes())
            .buf
            .clone(),
        Rdb::redis(10)
            .key(T_ZSET_2, "k")
            .byte(0x81)
            .raw(&(1u64 << 62).to_be_bytes())
            .buf
            .clone(),
    ];
    for bytes in cases {
        assert!(matches!(parse(&bytes), Err(RdbError::UnexpectedEof)));
    }
}

#[test]
fn old_rdb_without_checksum() {
    // RDB 4: no AUX, no trailer; a plain (type 1) list and a type 3 sorted
    // set with text scores.
    let mut r = Rdb::redis(4);
    r.byte(OP_SELECTDB).len(0);
    r.key(T_LIST, "l")
        .len(3)
        .str(b"x")
        .byte(0xc0)
        .byte(0xfb)
        .str(b"z");
    r.key(T_ZSET, "z").len(4).str(b"a").byte(3).raw(b"1.5");
    r.str(b"b")
        .byte(254)
        .str(b"c")
        .byte(255)
        .str(b"d")
        .byte(4)
        .raw(b"-1e3");
    r.key(T_SET, "s").len(2).str(b"m1").str(b"m2");
    r.key(T_HASH, "h").len(1).str(b"f").str(b"v");
    let bytes = r.finish();
    assert_eq!(*bytes.last().unwrap(), OP_EOF);
    let map = keys(&parse(&bytes).unwrap());
    assert_eq!(list_of(get(&map, 0, "l")), bs(&["x", "-5", "z"]));
    assert_eq!(
        zset_of(get(&map, 0, "z")),
        &[
            (b("a"), 1.5),
            (b("b"), f64::INFINITY),
            (b("c"), f64::NEG_INFINITY),
            (b("d"), -1000.0)
        ]
    );
    assert_eq!(
        set_of(get(&map, 0, "s")),
        bs(&["m1", "m2"]).into_iter().collect()
    );
    assert_eq!(hash_of(get(&map, 0, "h")), plain_hash(&[("f", "v")]));
    // A NaN score is rejected like Redis does.
    let bytes = Rdb::redis(4)
        .key(T_ZSET, "z")
        .len(1)
        .str(b"a")
        .byte(253)
        .finish();
    assert!(matches!(parse(&bytes), Err(RdbError::Corrupt(m)) if m.contains("NaN")));
}

#[test]
fn ziplist_and_zipmap_types() {
    use super::ziplist::tests::{encode, encode_zipmap};
    let big = vec![b'q'; 300];
    let list_zl = encode(&[
        Elem::Str(b"a"),
        Elem::Int(7),
        Elem::Int(-20000),
        Elem::Int(3_000_000_000),
        Elem::Str(&big),
        Elem::Str(b"after-big"),
    ]);
    let zset_zl = encode(&[
        Elem::Str(b"m1"),
        Elem::Int(2),
        Elem::Str(b"m2"),
        Elem::Str(b"2.75"),
    ]);
    let hash_zl = encode(&[
        Elem::Str(b"f1"),
        Elem::Str(b"v1"),
        Elem::Str(b"f2"),
        Elem::Int(99),
    ]);
    let node1 = encode(&[Elem::Str(b"n1a"), Elem::Int(1)]);
    let node2 = encode(&[Elem::Str(b"n2a")]);
    let zipmap = encode_zipmap(&[(b"zf1", b"zv1"), (b"zf2", b"")], 2);
    let mut r = Rdb::redis(7);
    r.key(T_LIST_ZIPLIST, "list").str(&list_zl);
    r.key(T_ZSET_ZIPLIST, "zset").str(&zset_zl);
    r.key(T_HASH_ZIPLIST, "hash").str(&hash_zl);
    r.key(T_LIST_QUICKLIST, "ql").len(2).str(&node1).str(&node2);
    r.key(T_HASH_ZIPMAP, "zipmap").str(&zipmap);
    let map = keys(&parse(&r.finish()).unwrap());
    let mut expect_list = bs(&["a", "7", "-20000", "3000000000"]);
    expect_list.push(big.clone());
    expect_list.push(b("after-big"));
    assert_eq!(list_of(get(&map, 0, "list")), expect_list);
    assert_eq!(
        zset_of(get(&map, 0, "zset")),
        &[(b("m1"), 2.0), (b("m2"), 2.75)]
    );
    assert_eq!(
        hash_of(get(&map, 0, "hash")),
        plain_hash(&[("f1", "v1"), ("f2", "99")])
    );
    assert_eq!(list_of(get(&map, 0, "ql")), bs(&["n1a", "1", "n2a"]));
    assert_eq!(
        hash_of(get(&map, 0, "zipmap")),
        plain_hash(&[("zf1", "zv1"), ("zf2", "")])
    );
    // Odd element count in a pair encoding.
    let odd = encode(&[Elem::Str(b"f1")]);
    let bytes = Rdb::redis(7).key(T_HASH_ZIPLIST, "h").str(&odd).finish();
    let err = parse(&bytes).unwrap_err();
    assert!(
        matches!(&err, RdbError::Corrupt(m) if m.contains("odd") && m.contains("\"h\"")),
        "{err}"
    );
}

#[test]
fn listpack_types_synthetic() {
    use super::listpack::tests::encode;
    let set_lp = encode(&[Elem::Str(b"x"), Elem::Int(-3), Elem::Int(1 << 40)]);
    let zset_lp = encode(&[
        Elem::Str(b"m"),
        Elem::Str(b"-inf"),
        Elem::Str(b"n"),
        Elem::Int(-2),
    ]);
    let mut r = Rdb::redis(11);
    r.key(T_SET_LISTPACK, "set").str(&set_lp);
    r.key(T_ZSET_LISTPACK, "zset").str(&zset_lp);
    let map = keys(&parse(&r.finish()).unwrap());
    assert_eq!(
        set_of(get(&map, 0, "set")),
        bs(&["x", "-3", "1099511627776"]).into_iter().collect()
    );
    assert_eq!(
        zset_of(get(&map, 0, "zset")),
        &[(b("m"), f64::NEG_INFINITY), (b("n"), -2.0)]
    );
    // A quicklist node with an unknown container type.
    let bytes = Rdb::redis(10)
        .key(T_LIST_QUICKLIST_2, "l")
        .len(1)
        .len(3)
        .str(&set_lp)
        .finish();
    assert!(matches!(parse(&bytes), Err(RdbError::Corrupt(m)) if m.contains("container")));
    let bad_score = encode(&[Elem::Str(b"m"), Elem::Str(b"abc")]);
    let bytes = Rdb::redis(10)
        .key(T_ZSET_LISTPACK, "z")
        .str(&bad_score)
        .finish();
    assert!(matches!(parse(&bytes), Err(RdbError::Corrupt(m)) if m.contains("score")));
}

#[test]
fn empty_collections_are_skipped_like_redis() {
    use super::listpack::tests::encode;
    let empty_lp = encode(&[]);
    let mut r = Rdb::redis(10);
    r.byte(OP_EXPIRETIME_MS).ms(123).key(T_LIST, "l").len(0);
    r.key(T_SET, "s").len(0);
    r.key(T_ZSET_2, "z").len(0);
    r.key(T_HASH, "h").len(0);
    r.key(T_HASH_LISTPACK, "hl").str(&empty_lp);
    r.key(T_LIST_QUICKLIST_2, "q").len(1).len(2).str(&empty_lp);
    r.key(T_STRING, "kept").str(b"");
    let k = single_key(&r.finish());
    assert_eq!(k.key, b("kept"));
    assert_eq!(string_of(&k), b"");
    // The expiry belonged to the skipped key, not to the next one.
    assert_eq!(k.expire_at_ms, None);
}

#[test]
fn redis_hash_field_expiration_types() {
    use super::listpack::tests::encode;
    // Type 24 (Redis 7.4+): min expire, then per field ttl (relative to min
    // expire, +1; 0 = none), field, value.
    let min = 1_800_000_000_000u64;
    let mut r = Rdb::redis(12);
    r.key(T_HASH_METADATA, "hm").raw(&min.to_le_bytes()).len(3);
    r.len(1).str(b"soon").str(b"a");
    r.len(0).str(b"never").str(b"b");
    r.len(5001).str(b"later").str(b"c");
    // Type 22 (7.4 RC): absolute ttls.
    r.key(T_22, "hm_rc").len(2);
    r.len(1_900_000_000_000).str(b"f").str(b"v");
    r.len(0).str(b"g").str(b"w");
    // Type 25: min expire + listpack triples (0 = none).
    let lp = encode(&[
        Elem::Str(b"x"),
        Elem::Str(b"1"),
        Elem::Int(1_800_000_000_123),
        Elem::Str(b"y"),
        Elem::Int(2),
        Elem::Int(0),
    ]);
    r.key(T_HASH_LISTPACK_EX, "lpex")
        .raw(&min.to_le_bytes())
        .str(&lp);
    // Type 23 (7.4 RC): the same without min expire.
    r.key(T_HASH_LISTPACK_EX_PRE_GA, "lpex_rc").str(&lp);
    let map = keys(&parse(&r.finish()).unwrap());
    let expect: BTreeMap<_, _> = [
        (b("soon"), (b("a"), Some(min as i64))),
        (b("never"), (b("b"), None)),
        (b("later"), (b("c"), Some(min as i64 + 5000))),
    ]
    .into_iter()
    .collect();
    assert_eq!(hash_of(get(&map, 0, "hm")), expect);
    let expect_rc: BTreeMap<_, _> = [
        (b("f"), (b("v"), Some(1_900_000_000_000))),
        (b("g"), (b("w"), None)),
    ]
    .into_iter()
    .collect();
    assert_eq!(hash_of(get(&map, 0, "hm_rc")), expect_rc);
    let expect_lp: BTreeMap<_, _> = [
        (b("x"), (b("1"), Some(1_800_000_000_123))),
        (b("y"), (b("2"), None)),
    ]
    .into_iter()
    .collect();
    assert_eq!(hash_of(get(&map, 0, "lpex")), expect_lp);
    assert_eq!(hash_of(get(&map, 0, "lpex_rc")), expect_lp);

    // Out-of-range expiry and a listpack that is not made of triples.
    let bytes = Rdb::redis(12)
        .key(T_HASH_METADATA, "h")
        .raw(&u64::MAX.to_le_bytes())
        .len(1)
        .len(5)
        .str(b"f")
        .str(b"v")
        .finish();
    assert!(matches!(parse(&bytes), Err(RdbError::Corrupt(m)) if m.contains("expiry")));
    let pairs_only = encode(&[Elem::Str(b"f"), Elem::Str(b"v")]);
    let bytes = Rdb::redis(12)
        .key(T_HASH_LISTPACK_EX_PRE_GA, "h")
        .str(&pairs_only)
        .finish();
    assert!(matches!(parse(&bytes), Err(RdbError::Corrupt(m)) if m.contains("multiple of 3")));
}

#[test]
fn valkey_9_hash2_and_slot_opcodes() {
    let mut r = Rdb::valkey(80);
    r.byte(OP_AUX).str(b"valkey-ver").str(b"9.0.0");
    r.byte(OP_SLOT_IMPORT)
        .str(b"job-1")
        .len(2)
        .len(0)
        .len(100)
        .len(5000)
        .len(5460);
    r.byte(OP_SELECTDB).len(0);
    r.byte(OP_SLOT_INFO).len(42).len(3).len(1);
    r.key(T_22, "h2").len(2);
    r.str(b"a").str(b"1").ms(1_900_000_000_000);
    r.str(b"b").str(b"2").ms(-1);
    let entries = parse(&r.finish()).unwrap();
    assert_eq!(
        entries[1],
        RdbEntry::SlotImport {
            job_name: b("job-1"),
            ranges: vec![(0, 100), (5000, 5460)]
        }
    );
    assert_eq!(
        entries[3],
        RdbEntry::SlotInfo {
            slot_id: 42,
            slot_size: 3,
            expires_slot_size: 1
        }
    );
    let map = keys(&entries);
    let expect: BTreeMap<_, _> = [
        (b("a"), (b("1"), Some(1_900_000_000_000))),
        (b("b"), (b("2"), None)),
    ]
    .into_iter()
    .collect();
    assert_eq!(hash_of(get(&map, 0, "h2")), expect);
}

#[test]
fn redis_slot_info_opcode() {
    let bytes = Rdb::redis(12)
        .byte(OP_SELECTDB)
        .len(0)
        .byte(OP_SLOT_INFO)
        .len(16383)
        .len(70000)
        .len(0)
        .key(T_STRING, "k")
        .str(b"v")
        .finish();
    let entries = parse(&bytes).unwrap();
    assert_eq!(
        entries[1],
        RdbEntry::SlotInfo {
            slot_id: 16383,
            slot_size: 70000,
            expires_slot_size: 0
        }
    );
}

#[test]
fn module_values_and_aux_are_skipped() {
    let id = module_id("ReJSON-RL", 3);
    assert_eq!(module_type_name(id), "ReJSON-RL");
    let mut r = Rdb::redis(10);
    // Module aux: id, 'when' opcode (UINT) + when, then typed data, EOF.
    r.byte(OP_MODULE_AUX).len(id).len(MODULE_OP_UINT).len(2);
    r.len(MODULE_OP_STRING)
        .str(b"aux payload")
        .len(MODULE_OP_EOF);
    r.byte(OP_SELECTDB).len(0);
    r.key(T_MODULE_2, "doc").len(id);
    r.len(MODULE_OP_SINT).len(5);
    r.len(MODULE_OP_UINT).len(1 << 40);
    r.len(MODULE_OP_FLOAT).raw(&1.5f32.to_le_bytes());
    r.len(MODULE_OP_DOUBLE).raw(&2.5f64.to_le_bytes());
    r.len(MODULE_OP_STRING).str(b"{\"a\":1}");
    r.len(MODULE_OP_EOF);
    r.key(T_STRING, "after").str(b"ok");
    let entries = parse(&r.finish()).unwrap();
    assert_eq!(entries[0], RdbEntry::ModuleAux { module_id: id });
    let map = keys(&entries);
    assert_eq!(
        get(&map, 0, "doc").value,
        RdbValue::Module {
            module_name: "ReJSON-RL".to_string()
        }
    );
    assert_eq!(string_of(get(&map, 0, "after")), b"ok");

    // Unknown module opcode, bad 'when' opcode, pre-GA module format.
    let bytes = Rdb::redis(10).key(T_MODULE_2, "m").len(id).len(9).finish();
    let err = parse(&bytes).unwrap_err();
    assert!(
        matches!(&err, RdbError::Corrupt(m) if m.contains("ReJSON-RL")),
        "{err}"
    );
    let bytes = Rdb::redis(10).byte(OP_MODULE_AUX).len(id).len(5).finish();
    assert!(matches!(parse(&bytes), Err(RdbError::Corrupt(_))));
    let bytes = Rdb::redis(10).key(T_MODULE_PRE_GA, "m").len(id).finish();
    assert!(matches!(parse(&bytes), Err(RdbError::Unsupported(_))));
}

#[test]
fn falkordb_redis_8_2_fixture_module_data_is_skipped() {
    // A real server's module data: FalkorDB's aux data and graph, and Redis
    // 8's built-in vector set module, around a plain string.
    let reader = RdbReader::new(FALKORDB).unwrap();
    assert_eq!(reader.version(), 12);
    let entries = parse(FALKORDB).unwrap();
    let aux: Vec<String> = entries
        .iter()
        .filter_map(|e| match e {
            RdbEntry::ModuleAux { module_id } => Some(module_type_name(*module_id)),
            _ => None,
        })
        .collect();
    assert!(aux.contains(&"graphdata".to_string()), "{aux:?}");
    let map = keys(&entries);
    let module = |name: &str| RdbValue::Module {
        module_name: name.to_string(),
    };
    assert_eq!(get(&map, 0, "social").value, module("graphdata"));
    assert_eq!(get(&map, 0, "vs").value, module("vectorset"));
    assert_eq!(string_of(get(&map, 0, "plain")), b"v");
    // The key-only scan the tailer uses yields the module keys as such.
    let (got, _) = parse_keys(FALKORDB).unwrap();
    let modules: BTreeSet<&[u8]> = got
        .iter()
        .filter(|k| k.value_type == RdbValueType::Module)
        .map(|k| k.key.as_slice())
        .collect();
    assert_eq!(modules, [&b"social"[..], b"vs"].into_iter().collect());
}

#[test]
fn function_pre_ga_is_converted() {
    let mut r = Rdb::redis(10);
    r.byte(OP_FUNCTION_PRE_GA)
        .str(b"lib")
        .str(b"LUA")
        .len(1)
        .str(b"a description");
    r.str(b"redis.register_function('f', function() return 1 end)");
    r.byte(OP_FUNCTION_PRE_GA)
        .str(b"lib2")
        .str(b"LUA")
        .len(0)
        .str(b"return 2");
    let entries = parse(&r.finish()).unwrap();
    assert_eq!(
        entries,
        vec![
            RdbEntry::Function {
                payload: b("#!LUA name=lib\nredis.register_function('f', function() return 1 end)")
            },
            RdbEntry::Function {
                payload: b("#!LUA name=lib2\nreturn 2")
            },
        ]
    );
}

/// Builds a stream listpack node the way t_stream.c lays it out.
fn stream_node(
    master_fields: &[&[u8]],
    entries: &[(i64, i64, i64, Vec<Elem<'static>>)],
) -> Vec<u8> {
    use super::listpack::tests::encode;
    let live = entries.iter().filter(|e| e.0 & 1 == 0).count() as i64;
    let deleted = entries.len() as i64 - live;
    let mut elems = vec![
        Elem::Int(live),
        Elem::Int(deleted),
        Elem::Int(master_fields.len() as i64),
    ];
    elems.extend(master_fields.iter().map(|f| Elem::Str(f)));
    elems.push(Elem::Int(0));
    for (flags, ms, seq, body) in entries {
        elems.push(Elem::Int(*flags));
        elems.push(Elem::Int(*ms));
        elems.push(Elem::Int(*seq));
        elems.extend(body.iter().copied());
        // Same fields: values + 3; own fields: count + fields/values + 3.
        elems.push(Elem::Int(body.len() as i64 + 3));
    }
    encode(&elems)
}

#[test]
fn older_stream_types_15_and_19() {
    let master = {
        let mut k = 1000u64.to_be_bytes().to_vec();
        k.extend_from_slice(&5u64.to_be_bytes());
        k
    };
    let node = stream_node(
        &[b"f"],
        &[
            (2, 0, 0, vec![Elem::Str(b"v0")]),
            // Deleted entry with its own fields.
            (
                1,
                1,
                0,
                vec![Elem::Int(1), Elem::Str(b"g"), Elem::Str(b"x")],
            ),
            (
                0,
                2,
                3,
                vec![
                    Elem::Int(2),
                    Elem::Str(b"a"),
                    Elem::Int(1),
                    Elem::Str(b"b"),
                    Elem::Int(-2),
                ],
            ),
        ],
    );
    for t in [T_STREAM_LISTPACKS, T_STREAM_LISTPACKS_2] {
        let mut r = Rdb::redis(9);
        r.key(t, "st").len(1).str(&master).str(&node);
        r.len(2).len(1002).len(8); // length, last id
        if t == T_STREAM_LISTPACKS_2 {
            r.len(1000).len(5).len(1001).len(5).len(3);
        }
        r.len(1).str(b"grp").len(1000).len(5);
        if t == T_STREAM_LISTPACKS_2 {
            r.len(1);
        }
        r.len(1).raw(&master).ms(1_700_000_000_000).len(2);
        r.len(1)
            .str(b"cons")
            .ms(1_700_000_000_001)
            .len(1)
            .raw(&master);
        let s = match single_key(&r.finish()).value {
            RdbValue::Stream(s) => s,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            s.entries,
            vec![
                StreamEntry {
                    id: sid(1000, 5),
                    fields: fields(&[("f", "v0")])
                },
                StreamEntry {
                    id: sid(1002, 8),
                    fields: fields(&[("a", "1"), ("b", "-2")])
                },
            ]
        );
        assert_eq!((s.length, s.last_id), (2, sid(1002, 8)));
        let g = &s.groups[0];
        assert_eq!(g.pending[0].delivery_count, 2);
        assert_eq!(g.consumers[0].pending, vec![sid(1000, 5)]);
        assert_eq!(g.consumers[0].active_time_ms, None);
        if t == T_STREAM_LISTPACKS {
            assert_eq!(
                (s.first_id, s.max_deleted_id, s.entries_added),
                (None, None, None)
            );
            assert_eq!(g.entries_read, None);
        } else {
            assert_eq!(
                (s.first_id, s.max_deleted_id, s.entries_added),
                (Some(sid(1000, 5)), Some(sid(1001, 5)), Some(3))
            );
            assert_eq!(g.entries_read, Some(1));
        }
    }
}

#[test]
fn corrupt_streams_are_rejected() {
    let master = [0u8; 16];
    let good = stream_node(&[b"f"], &[(2, 0, 0, vec![Elem::Str(b"v")])]);
    let build = |node_key: &[u8], node: &[u8], consumer_pel: &[u8]| {
        let mut r = Rdb::redis(10);
        r.key(T_STREAM_LISTPACKS_2, "st")
            .len(1)
            .str(node_key)
            .str(node);
        // length, last id, first id, max deleted id, entries added
        r.len(1).len(0).len(0).len(0).len(0).len(0).len(0).len(1);
        // one group: name, last id, entries read, PEL of one entry
        r.len(1).str(b"g").len(0).len(0).len(0);
        r.len(1).raw(&master).ms(5).len(1);
        // one consumer owning `consumer_pel`
        r.len(1).str(b"c").ms(1).len(1).raw(consumer_pel);
        r.finish()
    };
    assert!(parse(&build(&master, &good, &master)).is_ok());
    // Node key of the wrong size.
    assert!(
        matches!(parse(&build(&master[..8], &good, &master)), Err(RdbError::Corrupt(m)) if m.contains("16-byte"))
    );
    // Consumer PEL entry missing from the group PEL.
    let mut other = master;
    other[15] = 9;
    assert!(
        matches!(parse(&build(&master, &good, &other)), Err(RdbError::Corrupt(m)) if m.contains("pending"))
    );
    // Wrong lp-count.
    use super::listpack::tests::encode;
    let bad = encode(&[
        Elem::Int(1),
        Elem::Int(0),
        Elem::Int(1),
        Elem::Str(b"f"),
        Elem::Int(0),
        Elem::Int(2),
        Elem::Int(0),
        Elem::Int(0),
        Elem::Str(b"v"),
        Elem::Int(9),
    ]);
    assert!(
        matches!(parse(&build(&master, &bad, &master)), Err(RdbError::Corrupt(m)) if m.contains("lp-count"))
    );
    // Live count that does not match the entries.
    let bad = encode(&[
        Elem::Int(2),
        Elem::Int(0),
        Elem::Int(1),
        Elem::Str(b"f"),
        Elem::Int(0),
        Elem::Int(2),
        Elem::Int(0),
        Elem::Int(0),
        Elem::Str(b"v"),
        Elem::Int(4),
    ]);
    assert!(matches!(
        parse(&build(&master, &bad, &master)),
        Err(RdbError::Corrupt(_))
    ));
}

#[test]
fn stream_id_ordering_and_display() {
    let mut ids = vec![sid(2, 0), sid(1, 5), sid(1, 10), sid(0, u64::MAX)];
    ids.sort();
    assert_eq!(
        ids,
        vec![sid(0, u64::MAX), sid(1, 5), sid(1, 10), sid(2, 0)]
    );
    assert_eq!(sid(1526919030474, 55).to_string(), "1526919030474-55");
}

// ------------------------------------------------------- key-only mode

/// Key-only parse that keeps the keys read before an error.
fn keys_until_error(bytes: &[u8]) -> (Vec<RdbKeyInfo>, Option<RdbError>) {
    let mut reader = match RdbReader::new(bytes) {
        Ok(r) => r,
        Err(e) => return (Vec::new(), Some(e)),
    };
    let mut out = Vec::new();
    loop {
        match reader.next_key() {
            Ok(Some(k)) => out.push(k),
            Ok(None) => return (out, None),
            Err(e) => return (out, Some(e)),
        }
    }
}

#[test]
fn key_only_mode_yields_the_same_keys_on_every_fixture() {
    for (name, bytes) in ALL_FIXTURES {
        let (entries, full_read) = parse_full(bytes).unwrap();
        let (keys, keys_read) = parse_keys(bytes).unwrap();
        let expected = key_tuples_of_entries(&entries);
        assert_eq!(key_tuples(&keys), expected, "{name}");
        assert_eq!(keys_read, bytes.len() as u64, "{name}");
        assert_eq!(full_read, keys_read, "{name}");
        if *name != "empty" {
            assert!(!keys.is_empty(), "{name} has keys");
        }
        // The type byte is the one stored in front of the key name.
        for k in &keys {
            if let Ok(key) = std::str::from_utf8(&k.key)
                && key.len() < 64
                && bytes
                    .windows(key.len() + 1)
                    .filter(|w| w[0] as usize == key.len() && &w[1..] == key.as_bytes())
                    .count()
                    == 1
            {
                assert_eq!(stored(bytes, key).0, k.type_byte, "{name} {key}");
            }
        }
    }
}

#[test]
fn key_only_mode_reports_value_types_and_expiries() {
    let (keys, _) = parse_keys(STRINGS).unwrap();
    let by_name: BTreeMap<_, _> = keys.iter().map(|k| (k.key.clone(), k)).collect();
    let k = by_name[&b("str:pexpire")];
    assert_eq!(k.expire_at_ms, Some(4_102_444_800_123));
    assert_eq!(
        by_name[&b("str:expire")].expire_at_ms,
        Some(4_102_444_800_000)
    );
    assert_eq!(by_name[&b("str:raw")].expire_at_ms, None);
    assert_eq!(by_name[&b("str:lzf")].type_byte, T_STRING);
    assert_eq!(by_name[&b("str:lzf")].value_type.name(), "string");

    let (keys, _) = parse_keys(MULTIDB).unwrap();
    let got: Vec<_> = keys
        .iter()
        .map(|k| {
            (
                k.db,
                String::from_utf8(k.key.clone()).unwrap(),
                k.value_type.name(),
            )
        })
        .collect();
    let mut got_sorted = got.clone();
    got_sorted.sort();
    assert_eq!(
        got_sorted,
        vec![
            (0, "db0:a".to_string(), "string"),
            (0, "db0:b".to_string(), "string"),
            (1, "db1:a".to_string(), "string"),
            (1, "db1:list".to_string(), "list"),
            (15, "db15:a".to_string(), "string"),
        ]
    );
    let (keys, _) = parse_keys(STREAM).unwrap();
    assert!(
        keys.iter()
            .all(|k| k.value_type == RdbValueType::Stream && k.type_byte == T_STREAM_LISTPACKS_2)
    );
}

#[test]
fn key_only_every_truncation_is_unexpected_eof() {
    for (name, bytes) in ALL_FIXTURES {
        for cut in cut_points(bytes.len()) {
            match keys_until_error(&bytes[..cut]) {
                (_, Some(RdbError::UnexpectedEof)) => {}
                other => panic!("{name} cut at {cut}: expected UnexpectedEof, got {other:?}"),
            }
        }
    }
}

#[test]
fn key_only_flipped_bytes_are_always_errors() {
    for (name, bytes) in ALL_FIXTURES {
        if *name == "nochecksum" {
            continue;
        }
        for pos in cut_points(bytes.len()) {
            for mask in [0xffu8, 0x01, 0x40] {
                let mut bad = bytes.to_vec();
                bad[pos] ^= mask;
                if let (keys, None) = keys_until_error(&bad) {
                    // As in full mode: only a version digit turning into a
                    // pre-RDB-5 version (no checksum) goes unnoticed.
                    let version = RdbReader::new(bad.as_slice()).unwrap().version();
                    assert!(
                        pos < 9 && version < 5,
                        "{name}: byte {pos} ^ {mask:#x} parsed fine: {keys:?}"
                    );
                }
            }
        }
    }
}

#[test]
fn key_only_checksum_mismatch_in_the_trailer() {
    let mut bad = STRINGS.to_vec();
    let n = bad.len();
    let stored = u64::from_le_bytes(bad[n - 8..].try_into().unwrap());
    bad[n - 1] ^= 0x80;
    match keys_until_error(&bad) {
        (keys, Some(RdbError::ChecksumMismatch { expected, actual })) => {
            assert_eq!(actual, stored);
            assert_eq!(expected, stored ^ (0x80 << 56));
            assert_eq!(
                key_tuples(&keys),
                key_tuples(&parse_keys(STRINGS).unwrap().0)
            );
        }
        other => panic!("expected a checksum mismatch, got {other:?}"),
    }
}

/// A byte changed inside a value that key-only mode skips (a long raw
/// string, an LZF payload, listpack / intset / quicklist / stream blobs,
/// hash table members) is still caught: the skipped bytes feed the CRC.
#[test]
fn key_only_checksum_covers_skipped_payloads() {
    let cases: &[(&str, &[u8], &str, usize)] = &[
        ("strings_raw", STRINGS_RAW, "raw:20000", 5000),
        ("strings_raw", STRINGS_RAW, "raw:100", 50),
        ("strings", STRINGS, "str:lzf", 6),
        ("strings", STRINGS, "str:raw", 4),
        ("lists", LISTS, "list:compressed", 40),
        ("lists", LISTS, "list:plain", 30),
        ("list_encodings", LIST_ENCODINGS, "list:enc", 4000),
        ("sets", SETS, "set:int16", 12),
        ("sets", SETS, "set:toolong", 4),
        ("zsets", ZSETS, "zset:skip", 3),
        ("hashes", HASHES, "hash:lp", 10),
        ("hashes", HASHES, "hash:ht", 3),
        ("stream", STREAM, "s", 30),
    ];
    for &(name, fixture, key, delta) in cases {
        let expected = key_tuples(&parse_keys(fixture).unwrap().0);
        let value_start = fixture.len() - stored(fixture, key).1.len();
        let pos = value_start + delta;
        let mut bad = fixture.to_vec();
        bad[pos] ^= 0x01;
        match keys_until_error(&bad) {
            (
                keys,
                Some(RdbError::ChecksumMismatch {
                    expected: e,
                    actual,
                }),
            ) => {
                assert_ne!(e, actual);
                assert_eq!(key_tuples(&keys), expected, "{name} {key}");
            }
            other => {
                panic!("{name}: {key}+{delta} flipped: expected a checksum mismatch, got {other:?}")
            }
        }
    }
}

#[test]
fn key_only_random_mutations_with_checksum_disabled_never_panic() {
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    for (_, bytes) in ALL_FIXTURES {
        let mut base = bytes.to_vec();
        let n = base.len();
        base[n - 8..].fill(0);
        for _ in 0..400 {
            let mut bad = base.clone();
            let flips = 1 + rng.next() % 3;
            for _ in 0..flips {
                let pos = 9 + (rng.next() as usize) % (n - 17);
                bad[pos] = rng.next() as u8;
            }
            if let Ok(mut reader) = RdbReader::new(bad.as_slice()) {
                reader.set_max_string_len(1 << 20);
                while let Ok(Some(_)) = reader.next_key() {}
            }
        }
    }
}

#[test]
fn key_only_byte_at_a_time_source_gives_the_same_result() {
    for (name, bytes) in ALL_FIXTURES {
        let expected = parse_keys(bytes).unwrap().0;
        let mut reader = RdbReader::new(Trickle(bytes)).unwrap();
        let mut got = Vec::new();
        while let Some(k) = reader.next_key().unwrap() {
            got.push(k);
        }
        assert_eq!(got, expected, "{name}");
        assert_eq!(reader.bytes_read(), bytes.len() as u64, "{name}");
    }
}

#[test]
fn key_only_stops_right_after_the_trailer() {
    let mut input = STRINGS_RAW.to_vec();
    input.extend_from_slice(b"+replication stream continues");
    let mut reader = RdbReader::new(io::Cursor::new(input)).unwrap();
    while reader.next_key().unwrap().is_some() {}
    assert_eq!(reader.bytes_read(), STRINGS_RAW.len() as u64);
    assert!(reader.next_key().unwrap().is_none(), "stays finished");
    let mut rest = String::new();
    reader.into_inner().read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "+replication stream continues");
}

#[test]
fn modes_can_be_mixed_on_one_reader() {
    for (name, bytes) in ALL_FIXTURES {
        let expected = key_tuples(&parse_keys(bytes).unwrap().0);
        let mut reader = RdbReader::new(*bytes).unwrap();
        let mut got = Vec::new();
        let mut full = true;
        loop {
            if full {
                match reader.next_entry().unwrap() {
                    None => break,
                    Some(RdbEntry::Key(k)) => {
                        got.push((k.db, k.key, k.expire_at_ms, k.value.value_type()));
                        full = false;
                    }
                    Some(_) => {}
                }
            } else {
                match reader.next_key().unwrap() {
                    None => break,
                    Some(k) => got.push((k.db, k.key, k.expire_at_ms, k.value_type)),
                }
                full = true;
            }
        }
        assert_eq!(got, expected, "{name}");
    }
}

#[test]
fn key_only_failed_reader_refuses_to_continue() {
    let src = io::Read::chain(&STRINGS[..40], FailingReader);
    let mut reader = RdbReader::new(src).unwrap();
    let err = loop {
        match reader.next_key() {
            Ok(Some(_)) => {}
            Ok(None) => panic!("cannot finish"),
            Err(e) => break e,
        }
    };
    assert!(matches!(err, RdbError::Io(_)), "{err:?}");
    assert!(matches!(reader.next_key(), Err(RdbError::Corrupt(_))));
    assert!(matches!(reader.next_entry(), Err(RdbError::Corrupt(_))));
}

#[test]
fn key_only_framing_errors_name_the_key() {
    use super::listpack::tests::encode;
    let lp = encode(&[Elem::Str(b"x")]);
    // Unknown quicklist container.
    let bytes = Rdb::redis(10)
        .key(T_LIST_QUICKLIST_2, "l")
        .len(1)
        .len(3)
        .str(&lp)
        .finish();
    let err = keys_until_error(&bytes).1.unwrap();
    assert!(
        matches!(&err, RdbError::Corrupt(m) if m.contains("container") && m.contains("\"l\"")),
        "{err}"
    );
    // A listpack blob shorter than an empty listpack.
    let bytes = Rdb::redis(10)
        .key(T_SET_LISTPACK, "s")
        .str(&[1, 2, 3])
        .finish();
    let err = keys_until_error(&bytes).1.unwrap();
    assert!(
        matches!(&err, RdbError::Corrupt(m) if m.contains("too short") && m.contains("\"s\"")),
        "{err}"
    );
    // Stream node key that is not a 16-byte id.
    let bytes = Rdb::redis(10)
        .key(T_STREAM_LISTPACKS_3, "st")
        .len(1)
        .str(b"short")
        .str(&lp)
        .finish();
    let err = keys_until_error(&bytes).1.unwrap();
    assert!(
        matches!(&err, RdbError::Corrupt(m) if m.contains("16-byte")),
        "{err}"
    );
    // Hash field TTL out of range (type 24), NaN score, LZF limits, unknown
    // type, string over the length limit: the same checks as full mode.
    let bytes = Rdb::redis(12)
        .key(T_HASH_METADATA, "h")
        .ms(1)
        .len(1)
        .len(1 << 50)
        .str(b"f")
        .str(b"v")
        .finish();
    assert!(
        matches!(keys_until_error(&bytes).1, Some(RdbError::Corrupt(m)) if m.contains("expiry"))
    );
    let bytes = Rdb::redis(4)
        .key(T_ZSET, "z")
        .len(1)
        .str(b"a")
        .byte(253)
        .finish();
    assert!(matches!(keys_until_error(&bytes).1, Some(RdbError::Corrupt(m)) if m.contains("NaN")));
    let bytes = Rdb::redis(10)
        .key(T_STRING, "k")
        .byte(0xc3)
        .len(2)
        .len(1_000_000)
        .raw(&[0, b'a'])
        .finish();
    assert!(matches!(keys_until_error(&bytes).1, Some(RdbError::Corrupt(m)) if m.contains("LZF")));
    let bytes = Rdb::redis(10).key(8, "k").finish();
    assert!(matches!(
        keys_until_error(&bytes).1,
        Some(RdbError::UnknownType { type_byte: 8, .. })
    ));
    let bytes = Rdb::redis(10)
        .key(T_STRING, "k")
        .len(5000)
        .raw(&[0; 5000])
        .finish();
    let mut reader = RdbReader::new(bytes.as_slice()).unwrap();
    reader.set_max_string_len(4096);
    assert!(matches!(reader.next_key(), Err(RdbError::Corrupt(m)) if m.contains("limit")));
}

#[test]
fn key_only_huge_declared_lengths_fail_without_huge_allocations() {
    // Declared sizes far beyond the data: skipping stops at the end of the
    // stream, nothing is allocated for them.
    let mut cases = vec![
        Rdb::redis(10)
            .key(T_STRING, "k")
            .byte(0x80)
            .raw(&u32::MAX.to_be_bytes())
            .raw(b"abc")
            .buf
            .clone(),
        Rdb::redis(10)
            .key(T_HASH, "k")
            .byte(0x81)
            .raw(&(1u64 << 62).to_be_bytes())
            .str(b"f")
            .str(b"v")
            .buf
            .clone(),
        Rdb::redis(10)
            .key(T_STREAM_LISTPACKS_3, "k")
            .byte(0x81)
            .raw(&(1u64 << 62).to_be_bytes())
            .buf
            .clone(),
    ];
    // A consumer claiming 2^62 pending ids (16 bytes each: the product
    // overflows).
    let mut r = Rdb::redis(10);
    r.key(T_STREAM_LISTPACKS_3, "k").len(0).len(0).len(1).len(0);
    r.len(0).len(0).len(0).len(0).len(0); // first, max deleted, added
    r.len(1).str(b"g").len(0).len(0).len(0); // group, last id, entries read
    r.len(0).len(1).str(b"c").ms(1).ms(2); // no PEL, one consumer
    r.byte(0x81).raw(&(1u64 << 62).to_be_bytes());
    cases.push(r.buf.clone());
    for bytes in cases {
        assert!(matches!(
            keys_until_error(&bytes).1,
            Some(RdbError::UnexpectedEof)
        ));
    }
}

#[test]
fn key_only_skips_aux_functions_and_module_data() {
    // Every non-key item is consumed; only the keys come out.
    let (keys, _) = parse_keys(FUNCTIONS).unwrap();
    assert_eq!(key_tuples(&keys).len(), 1);
    assert_eq!(keys[0].key, b("after:function"));
    let (keys, _) = parse_keys(EMPTY).unwrap();
    assert!(keys.is_empty());
}

#[test]
fn decimal_lengths() {
    for v in [
        0i64,
        1,
        9,
        10,
        -1,
        -10,
        99,
        100,
        i64::MAX,
        i64::MIN,
        i64::from(i32::MIN),
    ] {
        assert_eq!(decimal_len(v), v.to_string().len() as u64, "{v}");
    }
}
