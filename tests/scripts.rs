//! The stamp and apply scripts on a real Redis, driven step by step so that
//! the interleavings DESIGN.md warns about happen in a known order.

mod support;

use geosync::base::change::{Change, Op, Value};
use geosync::base::hlc;
use geosync::store::{Store, meta_bucket};
use redis::Commands;
use serde_bytes::ByteBuf;
use support::{Redis, stamp_at, string_put};
use uhlc::Timestamp;

fn ts(time: u64, node: u32) -> Timestamp {
    stamp_at(time, node)
}

fn put(key: &str, value: &str, at: &Timestamp) -> Change {
    string_put(key, value, at)
}

fn recorded_stamp(c: &mut redis::Connection, key: &str) -> String {
    let rec = record(c, key).expect("recorded");
    rec[..20].to_string()
}

/// The record of `key` of database 0; `c` is a connection to database 0
/// (the records are in the metadata database).
fn record(c: &mut redis::Connection, key: &str) -> Option<String> {
    let (rec,): (Option<String>,) = redis::pipe()
        .cmd("SELECT")
        .arg(geosync::store::metadata_db())
        .ignore()
        .cmd("HGET")
        .arg(meta_bucket(0, key.as_bytes()))
        .arg(key)
        .cmd("SELECT")
        .arg(0)
        .ignore()
        .query(c)
        .unwrap();
    rec
}

fn setup() -> (Redis, Store, redis::Connection) {
    let r = Redis::start(&[]);
    let store = Store::new(geosync::store::locator::Locator::new(&r.url(), &[], None));
    let c = r.conn();
    (r, store, c)
}

fn stamp_one(
    rt: &tokio::runtime::Runtime,
    store: &mut Store,
    key: &str,
    at: &Timestamp,
) -> geosync::store::StampOutcome {
    let keys = vec![(0u32, vec![bytes::Bytes::from(key.as_bytes().to_vec())])];
    rt.block_on(store.stamp(&keys, &hlc::encode(at), None, 1))
        .unwrap()
        .pop()
        .unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A remote change lands after a local write but before its stamp: the
/// stamp script sees the remote value (digest equal to the metadata) and
/// ships nothing, so both regions keep the remote value.
#[test]
fn remote_change_between_local_write_and_stamp_wins_in_both_regions() {
    let rt = rt();
    let (_r, mut store, mut c) = setup();
    let _: () = c.set("k", "local").unwrap();
    let remote = ts(1 << 40, 2);
    let out = rt
        .block_on(store.apply(&[put("k", "remote", &remote)]))
        .unwrap();
    assert_eq!(out.applied, 1);
    let later = ts((1 << 40) + 5, 1);
    let outcome = stamp_one(&rt, &mut store, "k", &later);
    assert!(
        outcome.changes.is_empty(),
        "the remote value must not be shipped back: {:?}",
        outcome.changes
    );
    assert!(outcome.retry.is_empty());
    assert_eq!(c.get::<_, String>("k").unwrap(), "remote");
    assert_eq!(recorded_stamp(&mut c, "k"), hlc::encode(&remote));
}

/// The other order: the remote change is applied, then the local write, then
/// the stamp: the local write is shipped with the newer stamp.
#[test]
fn local_write_after_remote_change_is_shipped_with_a_newer_stamp() {
    let rt = rt();
    let (_r, mut store, mut c) = setup();
    let remote = ts(1 << 40, 2);
    rt.block_on(store.apply(&[put("k", "remote", &remote)]))
        .unwrap();
    let _: () = c.set("k", "local").unwrap();
    let later = ts((1 << 40) + 5, 1);
    let outcome = stamp_one(&rt, &mut store, "k", &later);
    assert_eq!(outcome.changes.len(), 1);
    assert_eq!(outcome.changes[0].stamp, hlc::encode(&later));
    assert_eq!(
        outcome.changes[0].op,
        Op::Put {
            value: Value::String(ByteBuf::from(b"local".to_vec())),
            expire_at_ms: None
        }
    );
}

/// A stamp taken before the remote change was observed is older than the
/// recorded one: the script refuses it and names the newer stamp, so the
/// agent can observe it and stamp again.
#[test]
fn a_stale_stamp_is_returned_for_retry_not_written() {
    let rt = rt();
    let (_r, mut store, mut c) = setup();
    let remote = ts(1 << 40, 2);
    rt.block_on(store.apply(&[put("k", "remote", &remote)]))
        .unwrap();
    let _: () = c.set("k", "local").unwrap();
    let stale = ts((1 << 40) - 5, 1);
    let outcome = stamp_one(&rt, &mut store, "k", &stale);
    assert!(outcome.changes.is_empty());
    assert_eq!(
        outcome.retry,
        vec![(bytes::Bytes::from_static(b"k"), hlc::encode(&remote))]
    );
    assert_eq!(
        recorded_stamp(&mut c, "k"),
        hlc::encode(&remote),
        "metadata never goes backwards"
    );
}

/// Applying is idempotent and monotonic: an older or equal stamp changes
/// nothing, a newer one wins.
#[test]
fn apply_is_monotonic_and_idempotent() {
    let rt = rt();
    let (_r, mut store, mut c) = setup();
    let t1 = ts(100 << 32, 2);
    let t2 = ts(200 << 32, 3);
    assert_eq!(
        rt.block_on(store.apply(&[put("k", "two", &t2)]))
            .unwrap()
            .applied,
        1
    );
    let out = rt
        .block_on(store.apply(&[put("k", "one", &t1), put("k", "two-again", &t2)]))
        .unwrap();
    assert_eq!((out.applied, out.older), (0, 2));
    assert_eq!(c.get::<_, String>("k").unwrap(), "two");
    assert_eq!(recorded_stamp(&mut c, "k"), hlc::encode(&t2));
}

/// Equal times are broken by node id exactly as `uhlc::Timestamp` orders
/// them (by the id's little-endian bytes: node 1 beats node 256), in either
/// arrival order.
#[test]
fn equal_time_tie_break_follows_uhlc_order() {
    let rt = rt();
    let (_r, mut store, mut c) = setup();
    let t = 1u64 << 40;
    let (from1, from256) = (ts(t, 1), ts(t, 256));
    assert!(from1 > from256, "uhlc orders id 1 above id 256");
    for (first, second) in [(&from1, &from256), (&from256, &from1)] {
        let _: () = c.del("k").unwrap();
        let _: () = _r.meta_conn().hdel(meta_bucket(0, b"k"), "k").unwrap();
        let name = |x: &Timestamp| if x == &from1 { "node1" } else { "node256" };
        rt.block_on(store.apply(&[put("k", name(first), first)]))
            .unwrap();
        rt.block_on(store.apply(&[put("k", name(second), second)]))
            .unwrap();
        assert_eq!(c.get::<_, String>("k").unwrap(), "node1");
    }
}

/// A stamped tombstone keeps an older put from reviving the key.
#[test]
fn tombstones_stop_older_puts() {
    let rt = rt();
    let (_r, mut store, mut c) = setup();
    let (t1, t2) = (ts(100 << 32, 2), ts(200 << 32, 3));
    let del = Change {
        op: Op::Delete,
        ..put("k", "", &t2)
    };
    rt.block_on(store.apply(&[del])).unwrap();
    let out = rt.block_on(store.apply(&[put("k", "old", &t1)])).unwrap();
    assert_eq!(out.older, 1);
    assert!(!c.exists::<_, bool>("k").unwrap());
}

/// A peer's change applied between a local FLUSHDB and the flush's stamp is
/// older than the flush: recording the flush removes it, as every other
/// region's flush does, while a client's write made after the FLUSHDB stays.
#[test]
fn local_flush_removes_what_landed_before_its_stamp() {
    let rt = rt();
    let (_r, mut store, mut c) = setup();
    let _: () = c.set("old", "x").unwrap();
    let _: () = redis::cmd("FLUSHDB").query(&mut c).unwrap();
    let landed = ts(100 << 32, 2);
    rt.block_on(store.apply(&[put("landed", "remote", &landed)]))
        .unwrap();
    let _: () = c.set("after", "client").unwrap();
    // a client's write after the FLUSHDB, stamped (by node 1) before the flush was
    let _: () = c.set("stamped-early", "client").unwrap();
    let early = ts(150 << 32, 1);
    assert_eq!(
        stamp_one(&rt, &mut store, "stamped-early", &early)
            .changes
            .len(),
        1
    );
    let flush = ts(200 << 32, 1);
    let restamp = rt
        .block_on(store.flush_local(&[0], &hlc::encode(&flush), 1))
        .unwrap();
    assert_eq!(
        restamp,
        vec![(0, vec![bytes::Bytes::from_static(b"stamped-early")])]
    );
    assert_eq!(c.get::<_, String>("stamped-early").unwrap(), "client");
    let later = ts(300 << 32, 1);
    let again = stamp_one(&rt, &mut store, "stamped-early", &later);
    assert_eq!(
        again.changes.len(),
        1,
        "stamped again, newer than the flush"
    );
    assert!(
        !c.exists::<_, bool>("landed").unwrap(),
        "older than the flush"
    );
    assert_eq!(c.get::<_, String>("after").unwrap(), "client");
    assert!(record(&mut c, "landed").is_none());
    // and the floor keeps it from coming back
    let out = rt
        .block_on(store.apply(&[put("landed", "remote", &landed)]))
        .unwrap();
    assert_eq!(out.older, 1);
    assert!(!c.exists::<_, bool>("landed").unwrap());
}

/// A stamp call whose reply was lost (a timeout, a connection reset after
/// the script ran) is retried with the same stamp: the retry finds the
/// records the first call wrote and ships them, value and delete alike,
/// instead of taking them for "unchanged since stamped".
#[test]
fn a_stamp_retried_after_its_reply_was_lost_ships_what_it_recorded() {
    let rt = rt();
    let (_r, mut store, mut c) = setup();
    let _: () = c.set("gone", "x").unwrap();
    assert_eq!(
        stamp_one(&rt, &mut store, "gone", &ts(50 << 32, 1))
            .changes
            .len(),
        1
    );
    let _: () = c.set("k", "v").unwrap();
    let _: () = c.del("gone").unwrap();
    let at = ts(100 << 32, 1);
    let keys = vec![(
        0u32,
        vec![
            bytes::Bytes::from_static(b"k"),
            bytes::Bytes::from_static(b"gone"),
        ],
    )];
    let first = rt
        .block_on(store.stamp(&keys, &hlc::encode(&at), None, 1))
        .unwrap();
    assert_eq!(first[0].changes.len(), 2);
    // the reply never arrived: the same call again
    let retried = rt
        .block_on(store.stamp(&keys, &hlc::encode(&at), None, 1))
        .unwrap();
    assert_eq!(
        retried[0].changes, first[0].changes,
        "the retry ships what the lost call recorded"
    );
    // a later stamp of the unchanged key ships nothing
    let later = stamp_one(&rt, &mut store, "k", &ts(200 << 32, 1));
    assert!(later.changes.is_empty(), "{:?}", later.changes);
}

/// A local flush recorded but whose reply was lost is recorded again with
/// the same stamp: the retry still hands back the keys written after the
/// FLUSHDB, which the first call took the records of.
#[test]
fn a_flush_retried_after_its_reply_was_lost_still_hands_back_keys_to_stamp() {
    let rt = rt();
    let (_r, mut store, mut c) = setup();
    let _: () = redis::cmd("FLUSHDB").query(&mut c).unwrap();
    let _: () = c.set("stamped-early", "client").unwrap();
    assert_eq!(
        stamp_one(&rt, &mut store, "stamped-early", &ts(150 << 32, 1))
            .changes
            .len(),
        1
    );
    let flush = hlc::encode(&ts(200 << 32, 1));
    let first = rt.block_on(store.flush_local(&[0], &flush, 1)).unwrap();
    let want = vec![(0, vec![bytes::Bytes::from_static(b"stamped-early")])];
    assert_eq!(first, want);
    let retried = rt.block_on(store.flush_local(&[0], &flush, 1)).unwrap();
    assert_eq!(retried, want, "the retry hands back the same keys");
}

/// Dropping keys a peer lacks below its collected floor (decision 015)
/// drops only what was read: a key rewritten since its record (a local
/// write waiting to be stamped), a tombstone whose key exists again, a
/// record whose stamp moved, and a record at or above the floor all stay.
#[test]
fn only_unchanged_records_below_the_floor_are_forgotten() {
    let rt = rt();
    let (_r, mut store, mut c) = setup();
    let at = |n: u64| ts(n << 32, 2);
    let del = |k: &str, t: &Timestamp| Change {
        op: Op::Delete,
        ..put(k, "", t)
    };
    let changes = [
        put("gone", "v", &at(100)),
        put("rewritten", "v", &at(100)),
        del("revived", &at(100)),
        put("moved", "v", &at(100)),
        put("recent", "v", &at(300)),
        del("tomb", &at(100)),
    ];
    rt.block_on(store.apply(&changes)).unwrap();
    let read: Vec<(Vec<u8>, String)> = ["gone", "rewritten", "revived", "moved", "recent", "tomb"]
        .iter()
        .map(|k| (k.as_bytes().to_vec(), recorded_stamp(&mut c, k)))
        .collect();
    let _: () = c.set("rewritten", "new, not yet stamped").unwrap();
    let _: () = c.set("revived", "new, not yet stamped").unwrap();
    rt.block_on(store.apply(&[put("moved", "w", &at(150))]))
        .unwrap();
    let floor = hlc::encode(&at(200));
    let dropped = rt.block_on(store.forget_below(0, &floor, &read)).unwrap();
    // Keys dropped: "gone"; "tomb" was only a record (a tombstone), and
    // dropping it is collection, not a key taken away.
    assert_eq!(dropped, 1, "gone");
    for k in ["gone", "tomb"] {
        assert!(!c.exists::<_, bool>(k).unwrap());
        let rec: Option<String> = record(&mut c, k);
        assert_eq!(rec, None, "{k}'s record is dropped");
    }
    assert_eq!(
        c.get::<_, String>("rewritten").unwrap(),
        "new, not yet stamped"
    );
    assert_eq!(
        c.get::<_, String>("revived").unwrap(),
        "new, not yet stamped"
    );
    assert_eq!(c.get::<_, String>("moved").unwrap(), "w");
    assert_eq!(c.get::<_, String>("recent").unwrap(), "v");
    for k in ["rewritten", "revived", "moved", "recent"] {
        let rec: Option<String> = record(&mut c, k);
        assert!(rec.is_some(), "{k} is still recorded");
    }
    // The floor went up with the drop: an older change finds the key
    // deleted.
    let collected: String = _r
        .meta_conn()
        .get(geosync::store::collected_key(0))
        .unwrap();
    assert_eq!(collected, floor);
    let out = rt
        .block_on(store.apply(&[put("gone", "back", &at(150))]))
        .unwrap();
    assert_eq!(out.older, 1);
    assert!(!c.exists::<_, bool>("gone").unwrap());
}

/// A peer's flush raises the floor first and deletes in slices (decision
/// 018): a key written here since the flush began stays (its old record
/// goes; the agent stamps the write), the others go; and while a key's old
/// record waits for its slice, a change older than the flush is refused.
#[test]
fn a_peer_flush_in_slices_keeps_writes_made_since_it_began() {
    let rt = rt();
    let (_r, mut store, mut c) = setup();
    let at = |n: u64| ts(n << 32, 2);
    let changes: Vec<Change> = (0..200)
        .map(|i| put(&format!("k{i}"), "old", &at(100)))
        .collect();
    rt.block_on(store.apply(&changes)).unwrap();
    // A client's write the agent has not stamped yet.
    let _: () = c.set("k5", "written here").unwrap();
    let flush = Change {
        db: 0,
        key: ByteBuf::new(),
        stamp: hlc::encode(&at(300)),
        op: Op::FlushDb,
    };
    let out = rt.block_on(store.apply(&[flush])).unwrap();
    assert_eq!(out.applied, 1);
    assert_eq!(c.get::<_, String>("k5").unwrap(), "written here");
    let rec: Option<String> = record(&mut c, "k5");
    assert_eq!(rec, None, "k5's old record went");
    for i in (0..200).filter(|i| *i != 5) {
        assert!(
            !c.exists::<_, bool>(format!("k{i}")).unwrap(),
            "k{i} stayed"
        );
    }

    // A record older than the floor, as when the slices have not reached
    // it yet: a change between the two is older than the flush.
    rt.block_on(store.apply(&[put("x", "v1", &at(400))]))
        .unwrap();
    let _: () = _r
        .meta_conn()
        .set(geosync::store::floor_key(0), hlc::encode(&at(600)))
        .unwrap();
    let out = rt
        .block_on(store.apply(&[put("x", "v2", &at(500))]))
        .unwrap();
    assert_eq!(out.older, 1, "a change older than the flush is refused");
    assert_eq!(c.get::<_, String>("x").unwrap(), "v1");
}
