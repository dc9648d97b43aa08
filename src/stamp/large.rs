//! The stamper's side of collections too large to read in one script
//! (decision 009): freeze a copy, compare its digest with the record,
//! claim a new stamp, and ship it in pieces into the outbox. Reading the
//! copy is the store's ([`crate::store::pieces`]).
//!
//! A list, set, sorted set or hash with more elements than
//! `--max-key-elements` takes this path; a full resync never re-stamps one
//! that is unchanged (its digest matches its record), so a newer write
//! elsewhere still wins.

use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use uhlc::HLC;

use crate::base::change::Change;
use crate::base::hlc;
use crate::mesh::outbox::Outbox;
use crate::store::layout::Record;
use crate::store::pieces::{Copy, LargeError, PieceSink, copy_name};
use crate::store::{Freeze, Store};

/// Pieces pushed into the outbox, which paces them by the peers'
/// acknowledgements like any batch.
pub struct ToOutbox<'a> {
    /// The outbox.
    pub outbox: &'a Outbox,
    /// Shutdown stops the wait for room.
    pub shutdown: &'a CancellationToken,
}

impl PieceSink for ToOutbox<'_> {
    async fn push(&self, changes: Vec<Change>) -> bool {
        self.outbox.push(changes, self.shutdown).await
    }
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
        /// Stamped just above what the key or region had (see
        /// [`Stamping::low_base`]).
        low: bool,
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
    /// For a key first seen in a snapshot of a Redis that may be older
    /// (decision 019): the newest of its database's floors and the stamp
    /// the region had reached ("" for none). Its change is stamped just
    /// above that or its record, whichever is newer.
    pub low_base: Option<String>,
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
        sink: &impl PieceSink,
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
        sink: &impl PieceSink,
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
                low: false,
                elements,
            }));
        }
        let low = self.low_base.as_deref().and_then(|base| {
            let rec = record.as_ref().map_or("", |r| r.stamp);
            let base = base.max(rec);
            hlc::stamp_above(base, self.me).filter(|low| low.as_str() < s)
        });
        let s = low.as_deref().unwrap_or(s);
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
            low: low.is_some(),
            elements,
        }))
    }
}
