//! What the command stream says of keys' states and records (decision 022).
//!
//! The stamp and apply scripts' effects come back through the stream: each
//! record they write is an `HSET` of a bucket in the metadata database. The
//! tailer remembers the last record it saw for the most recently written
//! keys, and when a client's `SET` leaves a key holding a string it knows,
//! it hands the stamper that string with the record as it was before the
//! write. The stamp script then takes the string without reading the key,
//! if the record is still exactly the one remembered: records only move
//! forward (stamps never repeat), so an unchanged record means no peer's
//! change was applied to the key since the `SET`, and the `SET`'s value is
//! the key's state or one that a write later in the stream replaced (and
//! that write is stamped after it).

use std::collections::HashMap;

use bytes::Bytes;
use indexmap::IndexMap;

use crate::base::event::Known;
use crate::store::{self, layout::META_PREFIX};

/// How many keys' records are remembered; the oldest go first.
pub const REMEMBERED_RECORDS: usize = 65536;

/// Strings longer than this are read by the stamp script rather than
/// carried from the stream to the stamper.
pub const KNOWN_MAX_BYTES: usize = 4096;

/// The records the stream last showed, per (user database, key).
#[derive(Default)]
pub(super) struct Records {
    last: IndexMap<(u32, Bytes), Bytes>,
}

/// The user database a bucket name belongs to (`__geosync:m:<db>:<n>`).
fn bucket_db(name: &[u8]) -> Option<u32> {
    let rest = name.strip_prefix(META_PREFIX.as_bytes())?;
    let colon = rest.iter().position(|b| *b == b':')?;
    std::str::from_utf8(&rest[..colon]).ok()?.parse().ok()
}

impl Records {
    /// Takes note of a command run in the metadata database: a record
    /// written (`HSET`) or removed (`HDEL`). Any other write to a bucket
    /// (a `DEL`, or something no script of geosync sends) forgets every
    /// record, which only costs reads.
    pub(super) fn observe(&mut self, name: &str, argv: &[Bytes]) {
        let Some(bucket) = argv.get(1) else { return };
        let Some(db) = bucket_db(bucket) else {
            // Not a bucket: digests, floors, the marker. A command on all
            // keys (FLUSHDB, SWAPDB) is seen by the caller.
            return;
        };
        match name {
            "hset" if argv.len().is_multiple_of(2) => {
                for pair in argv[2..].chunks(2) {
                    self.remember((db, pair[0].clone()), pair[1].clone());
                }
            }
            "hdel" => {
                for field in &argv[2..] {
                    self.last.swap_remove(&(db, field.clone()));
                }
            }
            _ => self.forget_all(),
        }
    }

    fn remember(&mut self, key: (u32, Bytes), record: Bytes) {
        if let Some(r) = self.last.get_mut(&key) {
            *r = record;
            return;
        }
        if self.last.len() >= REMEMBERED_RECORDS {
            // Roughly the oldest: the last entry took the first one's place
            // when it went, so this is not strict order.
            self.last.swap_remove_index(0);
        }
        self.last.insert(key, record);
    }

    /// Forgets every record (a flush, or a write this cannot follow).
    pub(super) fn forget_all(&mut self) {
        self.last.clear();
    }

    /// The state a client's write left `key` in, when the stream says it:
    /// a `SET key value` or `SET key value PXAT ms` (Redis replicates the
    /// expiring forms of `SET` so), a string of at most [`KNOWN_MAX_BYTES`],
    /// and the key's record remembered.
    pub(super) fn known(&self, db: u32, name: &str, argv: &[Bytes]) -> Option<Known> {
        if name != "set" {
            return None;
        }
        let expire_at_ms = match argv {
            [_, _, _] => None,
            [_, _, _, opt, at] if opt.eq_ignore_ascii_case(b"pxat") => {
                let ms: i64 = std::str::from_utf8(at).ok()?.parse().ok()?;
                if ms <= 0 {
                    return None;
                }
                Some(ms)
            }
            _ => return None,
        };
        let (key, value) = (&argv[1], &argv[2]);
        if value.len() > KNOWN_MAX_BYTES || store::is_reserved(key) {
            return None;
        }
        let record = self.last.get(&(db, key.clone()))?;
        Some(Known {
            db,
            key: key.clone(),
            value: value.clone(),
            expire_at_ms,
            record: record.clone(),
        })
    }
}

/// The states known at the end of a transaction: a key's last write
/// decides, so a later write the stream does not tell the state of takes
/// its earlier known state away.
#[derive(Default)]
pub(super) struct KnownInBlock {
    states: HashMap<(u32, Bytes), Known>,
}

impl KnownInBlock {
    /// A command wrote `keys`; `known` is the state it left one in.
    pub(super) fn wrote(&mut self, keys: &[(u32, Bytes)], known: Option<Known>) {
        for k in keys {
            self.states.remove(k);
        }
        if let Some(k) = known {
            self.states.insert((k.db, k.key.clone()), k);
        }
    }

    /// The states, in no particular order.
    pub(super) fn into_vec(self) -> Vec<Known> {
        self.states.into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(parts: &[&str]) -> Vec<Bytes> {
        parts
            .iter()
            .map(|p| Bytes::copy_from_slice(p.as_bytes()))
            .collect()
    }

    fn bucket(db: u32, key: &str) -> String {
        store::meta_bucket(db, key.as_bytes())
    }

    #[test]
    fn a_set_is_known_once_its_record_was_seen() {
        let mut r = Records::default();
        let set = argv(&["SET", "k", "v"]);
        assert_eq!(r.known(0, "set", &set), None, "no record seen yet");
        r.observe("hset", &argv(&["HSET", &bucket(0, "k"), "k", "rec1"]));
        let k = r.known(0, "set", &set).expect("known");
        assert_eq!(
            (k.value.as_ref(), k.expire_at_ms, k.record.as_ref()),
            (&b"v"[..], None, &b"rec1"[..])
        );
        assert_eq!(r.known(1, "set", &set), None, "another database");
        let k = r
            .known(0, "set", &argv(&["SET", "k", "v", "PXAT", "1700000000000"]))
            .expect("known");
        assert_eq!(k.expire_at_ms, Some(1_700_000_000_000));
        r.observe("hdel", &argv(&["HDEL", &bucket(0, "k"), "k"]));
        assert_eq!(r.known(0, "set", &set), None, "record removed");
    }

    #[test]
    fn only_plain_and_pxat_sets_are_known() {
        let mut r = Records::default();
        r.observe("hset", &argv(&["HSET", &bucket(0, "k"), "k", "rec"]));
        for cmd in [
            &["SET", "k", "v", "KEEPTTL"][..],
            &["SET", "k", "v", "NX"],
            &["SET", "k", "v", "PXAT", "x"],
            &["SET", "k", "v", "PXAT", "0"],
            &["SET", "k", "v", "GET"],
        ] {
            assert_eq!(r.known(0, "set", &argv(cmd)), None, "{cmd:?}");
        }
        assert_eq!(r.known(0, "append", &argv(&["APPEND", "k", "v"])), None);
        let big = "x".repeat(KNOWN_MAX_BYTES + 1);
        assert_eq!(r.known(0, "set", &argv(&["SET", "k", &big])), None);
    }

    #[test]
    fn other_bucket_writes_forget_every_record() {
        let mut r = Records::default();
        r.observe("hset", &argv(&["HSET", &bucket(0, "k"), "k", "rec"]));
        r.observe("hincrby", &argv(&["HINCRBY", "__geosync:dg:0", "x", "5"]));
        assert!(r.known(0, "set", &argv(&["SET", "k", "v"])).is_some());
        r.observe("del", &argv(&["DEL", &bucket(0, "k")]));
        assert_eq!(r.known(0, "set", &argv(&["SET", "k", "v"])), None);
    }

    #[test]
    fn the_remembered_records_are_bounded() {
        let mut r = Records::default();
        for i in 0..REMEMBERED_RECORDS + 10 {
            let k = format!("k{i}");
            r.observe("hset", &argv(&["HSET", &bucket(0, &k), &k, "rec"]));
        }
        assert_eq!(r.last.len(), REMEMBERED_RECORDS);
    }

    #[test]
    fn a_later_write_in_a_block_takes_the_known_state_away() {
        let mut r = Records::default();
        r.observe("hset", &argv(&["HSET", &bucket(0, "k"), "k", "rec"]));
        let k = (0, Bytes::from_static(b"k"));
        let mut block = KnownInBlock::default();
        block.wrote(
            std::slice::from_ref(&k),
            r.known(0, "set", &argv(&["SET", "k", "v"])),
        );
        block.wrote(std::slice::from_ref(&k), None);
        assert!(block.into_vec().is_empty());
    }
}
