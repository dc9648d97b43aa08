//! A collection too large to read in one script, read from its private
//! copy a piece at a time (decision 009): once for its digest, which tells
//! whether it changed since its record was written, and once to ship it as
//! [`Op::Part`]s and a closing [`Op::Seal`]. Nothing ever holds the whole
//! collection, so the agent's memory does not depend on its size; and no
//! script runs longer than one piece.
//!
//! The stamper decides when a collection is stamped and shipped
//! ([`crate::stamp::large`]); catch-ups and snapshots ship recorded ones
//! with [`ship_recorded`].

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use serde_bytes::ByteBuf;
use tokio::sync::mpsc;

use super::connection::{Store, StoreError};
use super::digest::Digest;
use super::freeze::{Freeze, Frozen, Piece};
use super::layout::{COPY_PREFIX, Record};
use crate::base::change::{Change, Collection, Op, Value};

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

/// Where shipped pieces go: the outbox (the stamper, which paces the
/// pieces by the peers' acknowledgements like any batch), or a channel
/// (catch-ups and snapshots read by [`Store::read_recorded`]).
pub trait PieceSink: Sync {
    /// Hands on one batch; false when nobody takes them any more.
    fn push(&self, changes: Vec<Change>) -> impl Future<Output = bool> + Send;
}

impl PieceSink for mpsc::Sender<Vec<Change>> {
    async fn push(&self, changes: Vec<Change>) -> bool {
        self.send(changes).await.is_ok()
    }
}

static COPIES: AtomicU64 = AtomicU64::new(0);

/// A fresh name for a private copy of `key`: stages that read large keys
/// at the same time (stamper, catch-ups, snapshots) never share one.
pub fn copy_name(key: &[u8]) -> Vec<u8> {
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

/// A frozen copy being read.
pub struct Copy<'a> {
    /// Its database.
    pub db: u32,
    /// The user key.
    pub key: &'a Bytes,
    /// The private copy's name.
    pub name: &'a [u8],
    /// What the freeze script found.
    pub frozen: Frozen,
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
    pub async fn digest(&self, store: &mut Store) -> Result<String, LargeError> {
        let mut d = Digest::new(self.frozen.kind);
        let mut pieces = self.pieces();
        while let Some((items, _)) = pieces.next(store, self).await? {
            d.add(&items);
        }
        Ok(d.finish(self.frozen.expire_at_ms))
    }

    /// Ships the copy as parts with `stamp`, then the seal (second pass).
    pub async fn ship(
        &self,
        store: &mut Store,
        stamp: &str,
        digest: &str,
        sink: &impl PieceSink,
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
            if batch.len() >= PARTS_PER_BATCH && !sink.push(std::mem::take(&mut batch)).await {
                return Err(LargeError::Stopped);
            }
        }
        batch.push(change(Op::Seal {
            kind,
            expire_at_ms: self.frozen.expire_at_ms,
            len: self.frozen.len,
            digest: digest.to_string(),
        }));
        sink.push(batch)
            .await
            .then_some(())
            .ok_or(LargeError::Stopped)
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
    sink: &impl PieceSink,
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
