//! Collections too large to read in one script travel in pieces
//! (decision 009).
//!
//! A list, set, sorted set or hash with more elements than
//! `--max-key-elements` is copied to a private key (`__geosync:x:…`,
//! scripts/freeze.lua) and read from the copy a piece at a time, twice:
//! once for its digest, which tells whether it changed since its record was
//! written, and once to ship it as [`Op::Part`]s and a closing [`Op::Seal`].
//! Nothing ever holds the whole collection, so the agent's memory does not
//! depend on its size; and no script runs longer than one piece.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use serde_bytes::ByteBuf;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uhlc::HLC;

use crate::base::change::{Change, Collection, Op, Value};
use crate::base::hlc;
use crate::mesh::outbox::Outbox;
use crate::store::{COPY_PREFIX, Freeze, Frozen, Piece, Store, StoreError};

/// Elements read (and shipped) per piece.
pub const PIECE_ELEMENTS: usize = 4096;
/// Pieces handed on together as one batch.
const PARTS_PER_BATCH: usize = 8;

/// Why a large collection could not be shipped this time.
#[derive(Debug, thiserror::Error)]
pub enum LargeError {
    /// The local Redis failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The copy vanished while it was read (a FLUSHALL, or its one-hour
    /// lifetime ran out); the key is looked at again.
    #[error("the private copy of the key disappeared while it was read")]
    Gone,
    /// A hash with field expiries: these travel whole only.
    #[error("a hash with field expiries cannot travel in pieces")]
    FieldExpiries,
    /// Reading the copy gave another number of elements than it has.
    #[error("read {read} elements of a copy that has {len}")]
    Miscounted {
        /// Elements read.
        read: u64,
        /// Elements the copy had when it was made.
        len: u64,
    },
    /// Shutdown, or nobody takes the pieces any more.
    #[error("stopped")]
    Stopped,
}

/// A digest of a collection computed a piece at a time: FNV-1a of every
/// element (with length prefixes), chained in order for lists and summed
/// for the other types, whose reading order carries no meaning; then mixed
/// with the type, the expiry and the number of elements. Fixed across
/// versions and hosts: digests are recorded in the metadata of every region.
#[derive(Debug, Clone)]
pub struct Digest {
    kind: Collection,
    acc: u64,
    elements: u64,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// Hashes one length-prefixed item into `h`.
fn fnv_item(h: u64, item: &[u8]) -> u64 {
    fnv(fnv(h, &(item.len() as u64).to_le_bytes()), item)
}

/// Spreads an element's hash over all 64 bits before it is summed
/// (the finalizer of SplitMix64).
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Digest {
    /// An empty digest for a collection of `kind`.
    pub fn new(kind: Collection) -> Self {
        let acc = if kind == Collection::List {
            FNV_OFFSET
        } else {
            0
        };
        Digest {
            kind,
            acc,
            elements: 0,
        }
    }

    /// Adds a piece's flat items (pairs for sorted sets and hashes).
    pub fn add(&mut self, items: &[Vec<u8>]) {
        for element in items.chunks(self.kind.items_per_element()) {
            if self.kind == Collection::List {
                self.acc = fnv_item(self.acc, &element[0]);
            } else {
                let h = element.iter().fold(FNV_OFFSET, |h, i| fnv_item(h, i));
                self.acc = self.acc.wrapping_add(mix(h));
            }
            self.elements += 1;
        }
    }

    /// Elements added so far.
    pub fn elements(&self) -> u64 {
        self.elements
    }

    /// The digest as recorded in the metadata: 16 lowercase hex digits.
    pub fn finish(&self, expire_at_ms: Option<i64>) -> String {
        let mut h = fnv_item(FNV_OFFSET, self.kind.type_name().as_bytes());
        h = fnv_item(h, &expire_at_ms.unwrap_or(-1).to_le_bytes());
        h = fnv_item(h, &self.elements.to_le_bytes());
        h = fnv_item(h, &self.acc.to_le_bytes());
        format!("{h:016x}")
    }
}

/// The parts of a metadata record the pieces logic looks at (see
/// scripts/lib.lua for the layout).
struct Record<'a> {
    stamp: &'a str,
    value: bool,
    digest: &'a str,
}

impl<'a> Record<'a> {
    fn parse(raw: &'a str) -> Option<Record<'a>> {
        let at = crate::store::RECORD_FLAG_AT;
        Some(Record {
            stamp: raw.get(..at)?,
            value: raw.get(at..at + 1)? == "v",
            digest: raw.get(at + 1..at + 17)?,
        })
    }
}

static COPIES: AtomicU64 = AtomicU64::new(0);

/// A fresh name for a private copy of `key`: stages that read large keys
/// at the same time (stamper, catch-ups, snapshots) never share one.
fn copy_name(key: &[u8]) -> Vec<u8> {
    let mut name = COPY_PREFIX.to_vec();
    name.extend_from_slice(
        COPIES
            .fetch_add(1, Ordering::Relaxed)
            .to_string()
            .as_bytes(),
    );
    name.push(b':');
    name.extend_from_slice(key);
    name
}

/// Where shipped pieces go.
pub enum Sink<'a> {
    /// The outbox (the stamper), which paces the pieces by the peers'
    /// acknowledgements like any batch.
    Outbox(&'a Outbox, &'a CancellationToken),
    /// A channel (catch-ups and snapshots read by `Store::read_recorded`).
    Channel(&'a mpsc::Sender<Vec<Change>>),
}

impl Sink<'_> {
    async fn send(&self, changes: Vec<Change>) -> Result<(), LargeError> {
        let ok = match self {
            Sink::Outbox(outbox, shutdown) => outbox.push(changes, shutdown).await,
            Sink::Channel(tx) => tx.send(changes).await.is_ok(),
        };
        ok.then_some(()).ok_or(LargeError::Stopped)
    }
}

/// A frozen copy being read.
struct Copy<'a> {
    db: u32,
    key: &'a Bytes,
    name: &'a [u8],
    frozen: Frozen,
}

impl Copy<'_> {
    /// Reads the copy from the start, a piece at a time.
    fn pieces(&self) -> Pieces {
        Pieces {
            pos: Some("0".to_string()),
            read: 0,
        }
    }

    /// The copy's digest (first pass).
    async fn digest(&self, store: &mut Store) -> Result<String, LargeError> {
        let mut d = Digest::new(self.frozen.kind);
        let mut pieces = self.pieces();
        while let Some((items, _)) = pieces.next(store, self).await? {
            d.add(&items);
        }
        Ok(d.finish(self.frozen.expire_at_ms))
    }

    /// Ships the copy as parts with `stamp`, then the seal (second pass).
    async fn ship(
        &self,
        store: &mut Store,
        stamp: &str,
        digest: &str,
        sink: &Sink<'_>,
    ) -> Result<(), LargeError> {
        let kind = self.frozen.kind;
        let change = |op| Change {
            db: self.db,
            key: ByteBuf::from(self.key.to_vec()),
            stamp: stamp.to_string(),
            op,
        };
        let mut batch: Vec<Change> = Vec::with_capacity(PARTS_PER_BATCH);
        let mut pieces = self.pieces();
        while let Some((items, at)) = pieces.next(store, self).await? {
            let value = Value::from_flat(kind.type_name(), &items)
                .map_err(|e| StoreError::BadReply(e.to_string()))?;
            batch.push(change(Op::Part { at, value }));
            if batch.len() >= PARTS_PER_BATCH {
                sink.send(std::mem::take(&mut batch)).await?;
            }
        }
        batch.push(change(Op::Seal {
            kind,
            expire_at_ms: self.frozen.expire_at_ms,
            len: self.frozen.len,
            digest: digest.to_string(),
        }));
        sink.send(batch).await
    }
}

/// A pass over a frozen copy.
struct Pieces {
    /// Where the next piece starts; None after the last.
    pos: Option<String>,
    /// Elements read so far.
    read: u64,
}

impl Pieces {
    /// The next non-empty piece's flat items and the number of elements
    /// before it; None at the end, after checking that every element of
    /// the copy was read once.
    async fn next(
        &mut self,
        store: &mut Store,
        copy: &Copy<'_>,
    ) -> Result<Option<(Vec<Vec<u8>>, u64)>, LargeError> {
        let kind = copy.frozen.kind;
        while let Some(pos) = self.pos.take() {
            match store
                .piece(copy.db, copy.name, kind, &pos, PIECE_ELEMENTS)
                .await?
            {
                Piece::Refused(why) if why == "hash+ttl" => return Err(LargeError::FieldExpiries),
                Piece::Refused(_) => return Err(LargeError::Gone),
                Piece::Items { next, items } => {
                    self.pos = next;
                    let n = (items.len() / kind.items_per_element()) as u64;
                    if n > 0 {
                        let at = self.read;
                        self.read += n;
                        return Ok(Some((items, at)));
                    }
                }
            }
        }
        if self.read != copy.frozen.len {
            return Err(LargeError::Miscounted {
                read: self.read,
                len: copy.frozen.len,
            });
        }
        Ok(None)
    }
}

/// True for a stamp or read script's `too_large:<type>:<elements>` reason
/// of a type that travels in pieces.
pub fn travels_in_pieces(reason: &str) -> bool {
    reason
        .strip_prefix("too_large:")
        .and_then(|rest| rest.split(':').next())
        .and_then(Collection::from_type_name)
        .is_some()
}

/// What stamping a large collection did.
#[derive(Debug, PartialEq, Eq)]
pub enum Stamped {
    /// Shipped in pieces with a new stamp (`again`: false) or, unchanged,
    /// with its recorded one (`again`: true; see [`Stamping::reship`]).
    Shipped {
        /// Its stamp.
        stamp: String,
        /// Shipped again with its recorded stamp.
        again: bool,
        /// Its elements.
        elements: u64,
    },
    /// Unchanged since it was recorded: nothing to ship.
    Unchanged,
    /// Gone, or small enough (or of a type) to travel whole: it goes back
    /// to the stamp script.
    Whole,
}

/// What the stamper knows when it stamps a large collection.
pub struct Stamping<'a> {
    /// The agent's clock.
    pub clock: &'a HLC,
    /// Re-ship floor (see the stamp script's `ARGV[2]`).
    pub reship: Option<&'a str>,
    /// This node's stamp suffix.
    pub me: &'a str,
    /// The stamp this key was claimed with by an earlier attempt that did
    /// not finish shipping; kept by the caller across attempts, so the
    /// pieces of a claimed key always reach the peers.
    pub claimed: Option<String>,
}

impl Stamping<'_> {
    /// Lets the clock observe a newer stamp met in Redis; when it is
    /// beyond the skew limit, waits a little for the clock instead.
    async fn observe(&self, newer: &str) {
        let observed = hlc::decode(newer.as_bytes())
            .ok()
            .is_some_and(|t| self.clock.update_with_timestamp(&t).is_ok());
        if !observed && !newer.is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Recorded by this node after the re-ship floor: maybe never delivered.
    fn own_unacked(&self, stamp: &str) -> bool {
        self.reship
            .is_some_and(|floor| stamp > floor && stamp.ends_with(self.me))
    }

    /// Stamps and ships one large collection (freeze, digest, claim, ship).
    pub async fn run(
        &mut self,
        store: &mut Store,
        db: u32,
        key: &Bytes,
        sink: &Sink<'_>,
    ) -> Result<Stamped, LargeError> {
        loop {
            let s = hlc::encode(&self.clock.new_timestamp());
            let name = copy_name(key);
            let frozen = match store.freeze(db, key, &name, Some(&s)).await? {
                Freeze::Whole => return Ok(Stamped::Whole),
                Freeze::Retry(newer) => {
                    self.observe(&newer).await;
                    continue;
                }
                Freeze::Frozen(f) => f,
            };
            let copy = Copy {
                db,
                key,
                name: &name,
                frozen,
            };
            let done = self.after_freeze(store, &copy, &s, sink).await;
            // Best effort: the copy expires on its own within the hour.
            let _ = store.drop_copy(db, &name).await;
            if let Some(done) = done.transpose() {
                return done;
            }
        }
    }

    /// Ok(None): the record moved on between freeze and claim; try again.
    async fn after_freeze(
        &mut self,
        store: &mut Store,
        copy: &Copy<'_>,
        s: &str,
        sink: &Sink<'_>,
    ) -> Result<Option<Stamped>, LargeError> {
        let digest = copy.digest(store).await?;
        let elements = copy.frozen.len;
        let record = Record::parse(&copy.frozen.record);
        if let Some(rec) = record.as_ref().filter(|r| r.value && r.digest == digest) {
            let again = self.claimed.as_deref() == Some(rec.stamp) || self.own_unacked(rec.stamp);
            if !again {
                return Ok(Some(Stamped::Unchanged));
            }
            copy.ship(store, rec.stamp, &digest, sink).await?;
            self.claimed = None;
            return Ok(Some(Stamped::Shipped {
                stamp: rec.stamp.to_string(),
                again: true,
                elements,
            }));
        }
        let claim = store
            .claim(
                copy.db,
                copy.key,
                s,
                &copy.frozen.record,
                &digest,
                copy.frozen.expire_at_ms,
            )
            .await?;
        if let Err(newer) = claim {
            self.observe(&newer).await;
            return Ok(None);
        }
        self.claimed = Some(s.to_string());
        copy.ship(store, s, &digest, sink).await?;
        self.claimed = None;
        Ok(Some(Stamped::Shipped {
            stamp: s.to_string(),
            again: false,
            elements,
        }))
    }
}

/// Ships a large collection with its recorded stamp (catch-ups and
/// snapshots), when its record passes the filter (`after`: recorded after
/// this stamp, '' for all; `own`: stamps ending with this, '' for all) and
/// it is unchanged since it was recorded. Returns whether it was shipped.
pub async fn ship_recorded(
    store: &mut Store,
    db: u32,
    key: &Bytes,
    after: &str,
    own: &str,
    sink: &Sink<'_>,
) -> Result<bool, LargeError> {
    let name = copy_name(key);
    let Freeze::Frozen(frozen) = store.freeze(db, key, &name, None).await? else {
        return Ok(false);
    };
    let copy = Copy {
        db,
        key,
        name: &name,
        frozen,
    };
    let shipped = async {
        let Some(rec) = Record::parse(&copy.frozen.record) else {
            return Ok(false);
        };
        if !rec.value || !(after.is_empty() || rec.stamp > after) || !rec.stamp.ends_with(own) {
            return Ok(false);
        }
        let digest = copy.digest(store).await?;
        if digest != rec.digest {
            // changed since it was recorded: the stamper ships it
            return Ok(false);
        }
        copy.ship(store, rec.stamp, &digest, sink).await?;
        Ok(true)
    }
    .await;
    let _ = store.drop_copy(db, &name).await;
    shipped
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(v: &[&str]) -> Vec<Vec<u8>> {
        v.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    #[test]
    fn set_and_hash_digests_ignore_order_and_pieces() {
        let mut a = Digest::new(Collection::Set);
        a.add(&items(&["x", "y"]));
        a.add(&items(&["z"]));
        let mut b = Digest::new(Collection::Set);
        b.add(&items(&["z", "y", "x"]));
        assert_eq!(a.finish(None), b.finish(None));
        assert_ne!(a.finish(None), a.finish(Some(5)), "the expiry counts");
        let mut h1 = Digest::new(Collection::Hash);
        h1.add(&items(&["f", "1", "g", "2"]));
        let mut h2 = Digest::new(Collection::Hash);
        h2.add(&items(&["g", "2"]));
        h2.add(&items(&["f", "1"]));
        assert_eq!(h1.finish(None), h2.finish(None));
        let mut h3 = Digest::new(Collection::Hash);
        h3.add(&items(&["f", "2", "g", "1"]));
        assert_ne!(h1.finish(None), h3.finish(None), "values stay with fields");
    }

    #[test]
    fn list_digests_follow_order_and_types_differ() {
        let mut a = Digest::new(Collection::List);
        a.add(&items(&["x", "y"]));
        let mut b = Digest::new(Collection::List);
        b.add(&items(&["y", "x"]));
        assert_ne!(a.finish(None), b.finish(None));
        let mut s = Digest::new(Collection::Set);
        s.add(&items(&["x", "y"]));
        assert_ne!(a.finish(None), s.finish(None));
        // Length prefixes: ["ab", "c"] is not ["a", "bc"].
        let mut c = Digest::new(Collection::List);
        c.add(&items(&["ab", "c"]));
        let mut d = Digest::new(Collection::List);
        d.add(&items(&["a", "bc"]));
        assert_ne!(c.finish(None), d.finish(None));
        assert_eq!(a.elements(), 2);
    }

    #[test]
    fn digests_are_fixed() {
        // Recorded in every region's metadata: a change here makes every
        // large key look changed after an upgrade.
        let mut d = Digest::new(Collection::Set);
        d.add(&items(&["a", "b"]));
        assert_eq!(d.finish(None), "9cc950324f7143ab");
        assert_eq!(d.finish(None).len(), 16);
    }

    #[test]
    fn records_parse() {
        let raw = "00000000000000010100vabcdef0123456789";
        let r = Record::parse(raw).unwrap();
        assert_eq!(r.stamp, "00000000000000010100");
        assert!(r.value);
        assert_eq!(r.digest, "abcdef0123456789");
        assert!(Record::parse("").is_none());
        assert!(Record::parse("short").is_none());
    }
}
