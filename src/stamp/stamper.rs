//! The stamper: turns dirty keys into stamped changes.
//!
//! It gathers the tailer's events, up to `--coalesce-keys` distinct keys
//! of what is already waiting, so that a key written many times before the
//! stamper reaches it is stamped once, with its latest state (decision
//! 021). It stamps them in batches of `--batch-keys` (a transaction's keys
//! are never split), one stamp from the agent's clock per batch, by the
//! stamp script in the local Redis, which reads each key's state and
//! records the stamp atomically. What the script read is what is shipped.

use std::sync::Arc;

use bytes::Bytes;
use indexmap::IndexSet;
use serde_bytes::ByteBuf;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};
use uhlc::HLC;

use crate::base::backoff::Backoff;
use crate::base::change::{Change, Op};
use crate::base::event::TailEvent;
use crate::base::hlc;
use crate::base::position::Position;
use crate::mesh::outbox::Outbox;
use crate::ops::metrics::Metrics;
use crate::ops::readiness::Readiness;
use crate::stamp::large::{Stamped, Stamping, ToOutbox};
use crate::stamp::module_keys::{ModuleKeys, Owner};
use crate::stamp::seen::SnapshotKeys;
use crate::stamp::spool::SpoolRx;
use crate::store::pieces::{LargeError, travels_in_pieces};
use crate::store::{Seen, SeenContext, Store};

/// Most keys over `--max-key-elements` logged by name; the metric counts all.
pub const LOGGED_TOO_LARGE: usize = 1000;

/// Everything the stamper works with.
pub struct Stamper {
    /// Connection to the local Redis, owned by this stage.
    pub store: Store,
    /// The agent's clock.
    pub clock: Arc<HLC>,
    /// Where stamped batches go.
    pub outbox: Arc<Outbox>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Readiness flags.
    pub ready: Arc<Readiness>,
    /// Most keys per batch.
    pub batch_keys: usize,
    /// Most distinct keys gathered before stamping (at least `batch_keys`).
    pub coalesce_keys: usize,
    /// Number of databases of the local Redis (for FLUSHALL).
    pub databases: u32,
    /// This region's node id.
    pub node_id: u32,
    /// The peers, as a reload left them.
    pub peers: tokio::sync::watch::Receiver<Vec<String>>,
    /// Which keys travel; the others are never stamped.
    pub key_filter: crate::base::filter::KeyFilter,
    /// While a full resync is reported: re-ship this node's unchanged keys
    /// stamped after this floor (the outbox may have been lost).
    pub reship: Option<String>,
    /// The stream position up to which every change has been stamped.
    pub position: tokio::sync::watch::Sender<Option<Position>>,
    /// Keys of module data types met so far, for the log.
    pub module_keys: ModuleKeys,
    /// Keys over `--max-key-elements` already logged (a hot one would
    /// flood the log); at most [`LOGGED_TOO_LARGE`].
    pub too_large_logged: std::collections::HashSet<(u32, Bytes)>,
    /// Large keys already shipped again with their recorded stamp during
    /// this resync: a resync can report a key twice (the snapshot, then the
    /// own records), and shipping a large key twice is costly.
    pub reshipped_large: std::collections::HashSet<(u32, Bytes)>,
    /// A snapshot was stamped whole since the start: from then on, when
    /// idle, the stamper tells the outbox up to where it stamped.
    pub snapshots_done: bool,
    /// The keys the current resync's snapshot showed (decision 019).
    pub snapshot_keys: SnapshotKeys,
    /// The local Redis may evict keys with a TTL and evictions stay local
    /// (decision 016): a key with a TTL found gone while catching up is
    /// taken as evicted unseen.
    pub evictable: bool,
}

/// What the stamper has taken from the tailer and not finished yet.
#[derive(Default)]
struct Pending {
    /// Dirty keys, in arrival order, each once.
    keys: IndexSet<(u32, Bytes)>,
    /// Positions in `keys` (first, last) between which no batch may end:
    /// the keys of one transaction or script, which a key already pending
    /// can spread out.
    groups: Vec<(usize, usize)>,
    /// A snapshot has been reported completely.
    snapshot_done: bool,
    /// The newest stream position reported; recorded once `keys` is empty.
    position: Option<Position>,
}

impl Pending {
    /// Adds one event's keys; a transaction's or script's keys are kept in
    /// one batch.
    fn add(&mut self, keys: Vec<(u32, Bytes)>) {
        let several = keys.len() > 1;
        let mut first = usize::MAX;
        let mut last = 0;
        for k in keys {
            let (at, _) = self.keys.insert_full(k);
            first = first.min(at);
            last = last.max(at);
        }
        if several && first < last {
            self.groups.push((first, last));
        }
    }

    /// Takes the first `batch_keys` pending keys, or more where a group
    /// would otherwise be split.
    fn next_batch(&mut self, batch_keys: usize) -> Vec<(u32, Bytes)> {
        let mut end = batch_keys.min(self.keys.len());
        loop {
            let spread = self
                .groups
                .iter()
                .filter(|(first, last)| *first < end && *last >= end)
                .map(|(_, last)| last + 1)
                .max();
            match spread {
                Some(past) => end = past,
                None => break,
            }
        }
        self.groups.retain_mut(|(first, last)| {
            if *last < end {
                return false;
            }
            *first -= end;
            *last -= end;
            true
        });
        self.keys.drain(..end).collect()
    }
}

impl Stamper {
    /// Runs until the tailer's channel closes or shutdown.
    pub async fn run(mut self, mut rx: SpoolRx, shutdown: CancellationToken) {
        let mut pending = Pending::default();
        loop {
            // A round starts once everything taken before is stamped: it
            // waits for an event, gathers whatever else is already waiting,
            // then stamps all of it before taking more, so that the
            // position is recorded.
            if pending.keys.is_empty() {
                let ev = tokio::select! {
                    ev = rx.recv() => ev,
                    _ = shutdown.cancelled() => return,
                };
                let Some(ev) = ev else { return };
                if !self.take(ev, &mut pending, &shutdown).await {
                    return;
                }
                while pending.keys.len() < self.coalesce_keys {
                    match rx.try_recv() {
                        Some(ev) => {
                            if !self.take(ev, &mut pending, &shutdown).await {
                                return;
                            }
                        }
                        None => break,
                    }
                }
            }
            if !pending.keys.is_empty() && !self.stamp_pending(&mut pending, &shutdown).await {
                return;
            }
            if !pending.keys.is_empty() {
                continue;
            }
            if let Some(p) = pending.position.take() {
                self.outbox.position_stamped(p.offset);
                self.position.send_replace(Some(p));
            }
            if pending.snapshot_done {
                self.ready.snapshot_done();
                self.reship = None;
                self.reshipped_large.clear();
                pending.snapshot_done = false;
                self.snapshots_done = true;
            }
            // Idle, and not re-shipping old stamps: everything stamped so
            // far is in the outbox, and the next stamp is newer than this.
            if self.snapshots_done && self.reship.is_none() && pending.keys.is_empty() {
                self.outbox
                    .stamped_up_to(hlc::encode(&self.clock.new_timestamp()));
            }
        }
    }

    /// Adds an event to the pending work, or records a flush.
    async fn take(
        &mut self,
        ev: TailEvent,
        pending: &mut Pending,
        shutdown: &CancellationToken,
    ) -> bool {
        match ev {
            TailEvent::Dirty(mut keys) => {
                if !self.key_filter.passes_all() {
                    keys.retain(|(db, k)| self.key_filter.admits(*db, k));
                }
                self.snapshot_keys.reported(&keys, &pending.keys);
                pending.add(keys);
                true
            }
            TailEvent::Unwatched(mut keys) => {
                keys.retain(|(db, k)| self.key_filter.admits(*db, k));
                self.snapshot_keys.unwatched(keys);
                true
            }
            TailEvent::Position(p) => {
                pending.position = Some(p);
                true
            }
            TailEvent::SnapshotStart { rewound } => {
                self.reship = crate::mesh::acklog::reship_floor(
                    &self.outbox.acked_stamps(),
                    &self.peers.borrow(),
                );
                self.reshipped_large.clear();
                let reached = if rewound {
                    match self.read_reached(shutdown).await {
                        Some(r) => r,
                        None => return false,
                    }
                } else {
                    None
                };
                self.snapshot_keys.start(rewound, reached);
                self.reship_flushes(shutdown).await
            }
            TailEvent::SnapshotDone => {
                self.snapshot_keys.done();
                pending.snapshot_done = true;
                true
            }
            // The flush is recorded before the keys still pending: those of
            // the flushed database now hold only what clients wrote after
            // the FLUSHDB, which must be stamped after the flush to survive
            // it; the others are not affected by the order.
            TailEvent::Flush(db) => self.flush(db, &mut pending.keys, shutdown).await,
        }
    }

    /// The stamp the local Redis holds as reached by this region (decision
    /// 019), read when a full resync begins, before anything of it is
    /// stamped. None (the outer) on shutdown.
    async fn read_reached(&mut self, shutdown: &CancellationToken) -> Option<Option<String>> {
        let mut backoff = Backoff::new();
        loop {
            match self.store.reached().await {
                Ok(r) => return Some(r),
                Err(e) => {
                    warn!(error = %e, "reading the stamp this region reached failed; retrying");
                    if !backoff.wait(shutdown).await {
                        return None;
                    }
                }
            }
        }
    }

    /// Ships again this node's recorded flushes newer than the re-ship
    /// floor: a flush lives in the outbox until every peer acknowledged it,
    /// and an agent killed before that lost it, while its Redis keeps the
    /// floor the flush left. Returns false on shutdown.
    async fn reship_flushes(&mut self, shutdown: &CancellationToken) -> bool {
        let Some(reship) = self.reship.clone() else {
            return true;
        };
        let own = crate::store::node_suffix(self.node_id);
        let mut changes = Vec::new();
        for db in crate::store::user_dbs(self.databases) {
            let mut backoff = Backoff::new();
            let floor = loop {
                match self.store.flush_floor(db).await {
                    Ok(f) => break f,
                    Err(e) => {
                        warn!(db, error = %e, "reading the flush floor failed; retrying");
                        if !backoff.wait(shutdown).await {
                            return false;
                        }
                    }
                }
            };
            if let Some(floor) = floor.filter(|f| *f > reship && f.ends_with(&own)) {
                info!(db, stamp = %floor, "shipping again a flush no peer may have");
                changes.push(crate::store::flush_change(db, floor));
            }
        }
        if changes.is_empty() {
            return true;
        }
        self.metrics.changes_reshipped.inc_by(changes.len() as u64);
        self.outbox.push(changes, shutdown).await
    }

    /// Records a FLUSHDB/FLUSHALL with its own stamp and ships it; keys the
    /// flush script hands back are stamped again after it.
    async fn flush(
        &mut self,
        db: Option<u32>,
        pending: &mut IndexSet<(u32, Bytes)>,
        shutdown: &CancellationToken,
    ) -> bool {
        let dbs: Vec<u32> = match db {
            Some(db) => vec![db],
            None => crate::store::user_dbs(self.databases).collect(),
        }
        .into_iter()
        .filter(|db| self.key_filter.admits_db(*db))
        .collect();
        if dbs.is_empty() {
            return true;
        }
        let ts = self.clock.new_timestamp();
        let enc = hlc::encode(&ts);
        let mut backoff = Backoff::new();
        loop {
            match self.store.flush_local(&dbs, &enc, self.node_id).await {
                Ok(restamp) => {
                    for (db, keys) in restamp {
                        pending.extend(
                            keys.into_iter()
                                .filter(|k| self.key_filter.admits(db, k))
                                .map(|k| (db, k)),
                        );
                    }
                    break;
                }
                Err(e) => {
                    warn!(error = %e, "recording a flush failed; retrying");
                    if !backoff.wait(shutdown).await {
                        return false;
                    }
                }
            }
        }
        let changes: Vec<Change> = dbs
            .iter()
            .map(|db| Change {
                db: *db,
                key: ByteBuf::new(),
                stamp: enc.clone(),
                op: Op::FlushDb,
            })
            .collect();
        self.metrics.changes_stamped.inc_by(changes.len() as u64);
        self.outbox.push(changes, shutdown).await
    }

    /// True the first time a too-large key is met (it is then logged by
    /// name), while fewer than [`LOGGED_TOO_LARGE`] have been.
    fn first_too_large(&mut self, db: u32, key: &Bytes) -> bool {
        self.too_large_logged.len() < LOGGED_TOO_LARGE
            && self.too_large_logged.insert((db, key.clone()))
    }

    /// Counts a key over `--max-key-elements` (`what` is `<type>:<elements>`)
    /// and logs it the first time.
    fn too_large(&mut self, db: u32, key: &Bytes, what: &str) {
        self.metrics
            .unsupported_keys
            .get_or_create(&Metrics::reason("too_large"))
            .inc();
        let (kind, elements) = what.split_once(':').unwrap_or((what, "?"));
        let name = String::from_utf8_lossy(key);
        let limit = crate::store::max_key_elements();
        if !self.first_too_large(db, key) {
            debug!(db, key = %name, r#type = %kind, elements = %elements, limit, "key still over --max-key-elements");
            return;
        }
        error!(db, key = %name, r#type = %kind, elements = %elements, limit, "key has more elements than --max-key-elements and is not replicated; the other regions keep the version they have");
    }

    /// Counts a value larger than a peer message holds (`what` is
    /// `<type>:<bytes>`) and logs it the first time.
    fn too_many_bytes(&mut self, db: u32, key: &Bytes, what: &str) {
        self.metrics.changes_too_large.inc();
        self.metrics
            .unsupported_keys
            .get_or_create(&Metrics::reason("too_large_bytes"))
            .inc();
        let (kind, bytes) = what.split_once(':').unwrap_or((what, "?"));
        let name = String::from_utf8_lossy(key);
        if !self.first_too_large(db, key) {
            debug!(db, key = %name, r#type = %kind, bytes = %bytes, "value still larger than a peer message");
            return;
        }
        error!(db, key = %name, r#type = %kind, bytes = %bytes, "value is larger than a peer accepts in one message and is not replicated; the other regions keep the version they have (raise --peer-max-message-mb in every region)");
    }

    /// Stamps the first batch of the pending keys. Keys that must be
    /// retried stay pending. Returns false on shutdown.
    async fn stamp_pending(&mut self, all: &mut Pending, shutdown: &CancellationToken) -> bool {
        let batch = all.next_batch(self.batch_keys);
        let mut per_db: Vec<(u32, Vec<(Bytes, Seen)>)> = Vec::new();
        for k in &batch {
            let seen = self.snapshot_keys.mode(k);
            let (db, key) = k.clone();
            match per_db.iter_mut().find(|(d, _)| *d == db) {
                Some((_, keys)) => keys.push((key, seen)),
                None => per_db.push((db, vec![(key, seen)])),
            }
        }
        let ts = self.clock.new_timestamp();
        let enc = hlc::encode(&ts);
        let mut backoff = Backoff::new();
        let outcomes = loop {
            let started = std::time::Instant::now();
            let result = self
                .store
                .stamp_seen(
                    &per_db,
                    &enc,
                    self.reship.as_deref(),
                    SeenContext {
                        reached: self.snapshot_keys.reached(),
                        evictable: self.evictable,
                    },
                    self.node_id,
                )
                .await;
            self.metrics.stamp_script_seconds.observe(started.elapsed());
            match result {
                Ok(o) => break o,
                Err(e) if e.is_retryable() => {
                    e.count("stamp", &self.metrics);
                    warn!(error = %e, "stamping failed; retrying");
                    if !backoff.wait(shutdown).await {
                        return false;
                    }
                }
                Err(e) if e.is_wrong_type() => {
                    // A client overwrote a metadata bucket of the batch.
                    let mut keys: Vec<(u32, &[u8])> = Vec::new();
                    for (db, batch) in &per_db {
                        keys.extend(batch.iter().map(|(k, _)| (*db, k.as_ref())));
                    }
                    let repaired = crate::store::guard::repair_buckets_of(
                        &mut self.store,
                        keys.into_iter(),
                        &self.metrics,
                    )
                    .await;
                    if !repaired {
                        warn!(error = %e, "stamping met a key of the wrong type; retrying");
                    }
                    if !backoff.wait(shutdown).await {
                        return false;
                    }
                }
                Err(e) => {
                    error!(error = %e, keys = per_db.iter().map(|(_, k)| k.len()).sum::<usize>(), "stamping failed; keeping the keys for a retry");
                    all.add(batch);
                    return backoff.wait(shutdown).await;
                }
            }
        };
        let mut changes = Vec::new();
        let mut large: Vec<(u32, Bytes, Seen)> = Vec::new();
        let mut low: Vec<(u32, Bytes)> = Vec::new();
        let mut stuck: Option<(Bytes, String, String)> = None;
        for ((db, _), outcome) in per_db.iter().zip(outcomes) {
            low.extend(outcome.low.into_iter().map(|k| (*db, k)));
            if !outcome.evicted.is_empty() {
                self.metrics
                    .evictions
                    .get_or_create(&Metrics::outcome("unseen"))
                    .inc_by(outcome.evicted.len() as u64);
                debug!(
                    db,
                    keys = outcome.evicted.len(),
                    "keys with a TTL gone while the agent was away taken as evicted; kept in the other regions"
                );
            }
            for (key, newer) in outcome.retry {
                self.metrics.stamp_retries.inc();
                let observed = match hlc::decode(newer.as_bytes()) {
                    Ok(t) => self
                        .clock
                        .update_with_timestamp(&t)
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                if let Err(e) = observed {
                    // Logged once per batch below; the guard removes a
                    // floor no clock could have made.
                    stuck.get_or_insert((key.clone(), newer.clone(), e));
                }
                debug!(db, key = %String::from_utf8_lossy(&key), "metadata is newer; stamping again");
                all.keys.insert((*db, key));
            }
            for (key, kind) in outcome.unsupported {
                if travels_in_pieces(&kind) {
                    let seen = self.snapshot_keys.mode(&(*db, key.clone()));
                    large.push((*db, key, seen));
                    continue;
                }
                if let Some(rest) = kind.strip_prefix("too_large:") {
                    self.too_large(*db, &key, rest);
                    continue;
                }
                if let Some(rest) = kind.strip_prefix("too_large_bytes:") {
                    self.too_many_bytes(*db, &key, rest);
                    continue;
                }
                if !self.module_keys.knows(&kind) {
                    let owner =
                        match crate::stamp::module_keys::loaded_modules(&mut self.store).await {
                            Ok(loaded) => Owner::attribute(&kind, &loaded),
                            Err(e) => Owner::Unknown(format!("MODULE LIST failed: {e}")),
                        };
                    self.module_keys.learn(&kind, owner);
                }
                self.module_keys.skipped(&self.metrics, *db, &key, &kind);
            }
            for key in outcome.deferred {
                all.keys.insert((*db, key));
            }
            changes.extend(outcome.changes);
        }
        if !low.is_empty() {
            self.metrics.changes_stamped_low.inc_by(low.len() as u64);
            debug!(
                keys = low.len(),
                "changes first seen in a snapshot stamped just above what the region had"
            );
        }
        let fresh_or_low = changes.iter().filter(|c| c.stamp == enc).count() + low.len();
        self.snapshot_keys.stamped(&batch, low, &all.keys);
        if !changes.is_empty() {
            let reshipped = (changes.len() - fresh_or_low) as u64;
            self.metrics.changes_reshipped.inc_by(reshipped);
            self.metrics
                .changes_stamped
                .inc_by(changes.len() as u64 - reshipped);
            if !self.outbox.push(changes, shutdown).await {
                return false;
            }
        }
        for (db, key, seen) in large {
            if !self
                .stamp_large(db, key, seen, &mut all.keys, shutdown)
                .await
            {
                return false;
            }
        }
        if let Some((key, stamp, e)) = stuck {
            error!(error = %e, key = %String::from_utf8_lossy(&key), %stamp, "a recorded stamp or floor is beyond the clock skew limit (or malformed); its keys wait for the clock");
            return backoff.wait(shutdown).await;
        }
        true
    }

    /// The newest of database `db`'s floors and the stamp the region had
    /// reached ("" for none): what a large key first seen in a snapshot is
    /// stamped above (decision 019). None on shutdown.
    async fn low_base(&mut self, db: u32, shutdown: &CancellationToken) -> Option<String> {
        let mut backoff = Backoff::new();
        loop {
            let floors = async {
                let flushed = self.store.flush_floor(db).await?;
                let collected = self.store.collected_floor(db).await?;
                Ok::<_, crate::store::StoreError>([flushed, collected])
            };
            match floors.await {
                Ok(floors) => {
                    let reached = self.snapshot_keys.reached().unwrap_or("").to_string();
                    return Some(floors.into_iter().flatten().fold(reached, String::max));
                }
                Err(e) => {
                    warn!(db, error = %e, "reading the database's floors failed; retrying");
                    if !backoff.wait(shutdown).await {
                        return None;
                    }
                }
            }
        }
    }

    /// Stamps and ships a collection over `--max-key-elements` in pieces
    /// (decision 009), retrying until it is done. Returns false on shutdown.
    async fn stamp_large(
        &mut self,
        db: u32,
        key: Bytes,
        seen: Seen,
        pending: &mut IndexSet<(u32, Bytes)>,
        shutdown: &CancellationToken,
    ) -> bool {
        let me = crate::store::node_suffix(self.node_id);
        let low_base = match seen {
            Seen::Snapshot => match self.low_base(db, shutdown).await {
                Some(b) => Some(b),
                None => return false,
            },
            _ => None,
        };
        let mut stamping = Stamping {
            low_base,
            clock: &self.clock,
            reship: self
                .reship
                .as_deref()
                .filter(|_| !self.reshipped_large.contains(&(db, key.clone()))),
            me: &me,
            claimed: None,
        };
        let sink = ToOutbox {
            outbox: &self.outbox,
            shutdown,
        };
        let mut backoff = Backoff::new();
        let name = String::from_utf8_lossy(&key).into_owned();
        let outcome = loop {
            match stamping.run(&mut self.store, db, &key, &sink).await {
                Err(LargeError::Stopped) => return false,
                Err(
                    e @ (LargeError::Store(_) | LargeError::Gone | LargeError::Miscounted { .. }),
                ) => {
                    warn!(db, key = %name, error = %e, "shipping a large key in pieces failed; retrying");
                    if !backoff.wait(shutdown).await {
                        return false;
                    }
                }
                other => break other,
            }
        };
        match outcome {
            Ok(Stamped::Whole) => {
                pending.insert((db, key));
            }
            Ok(Stamped::Unchanged) => {}
            Ok(Stamped::Shipped {
                stamp,
                again,
                low,
                elements,
            }) => {
                if low {
                    self.metrics.changes_stamped_low.inc();
                    self.snapshot_keys.add_low((db, key.clone()));
                }
                if again {
                    self.metrics.changes_reshipped.inc();
                    self.reshipped_large.insert((db, key));
                } else {
                    self.metrics.changes_stamped.inc();
                }
                self.metrics.large_keys_shipped.inc();
                self.metrics.large_key_elements_shipped.inc_by(elements);
                info!(db, key = %name, elements, %stamp, again, "large key shipped in pieces");
            }
            Err(e) => {
                debug!(db, key = %name, error = %e, "large key not shipped");
                self.too_large(db, &key, "hash:with field expiries");
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(n: u8) -> (u32, Bytes) {
        (0, Bytes::from(vec![b'k', n]))
    }

    #[test]
    fn a_key_written_again_while_pending_is_stamped_once() {
        let mut p = Pending::default();
        for n in [1, 2, 1, 3, 2, 1] {
            p.add(vec![key(n)]);
        }
        assert_eq!(p.next_batch(10), vec![key(1), key(2), key(3)]);
        assert!(p.keys.is_empty());
    }

    #[test]
    fn a_transaction_spread_by_a_pending_key_stays_in_one_batch() {
        let mut p = Pending::default();
        p.add(vec![key(1)]);
        p.add(vec![key(2)]);
        p.add(vec![key(3)]);
        // MULTI: SET k1, SET k4; k1 is pending already, first.
        p.add(vec![key(4), key(1)]);
        p.add(vec![key(5)]);
        assert_eq!(p.next_batch(2), vec![key(1), key(2), key(3), key(4)]);
        assert_eq!(p.next_batch(2), vec![key(5)]);
    }

    proptest! {
        // Batches take every pending key once, in order, no larger than
        // needed, and never split an event's keys.
        #[test]
        fn batches_never_split_an_event(
            events in proptest::collection::vec(proptest::collection::vec(0u8..40, 1..5), 1..60),
            batch_keys in 1usize..8,
        ) {
            let mut p = Pending::default();
            for e in &events {
                p.add(e.iter().map(|n| key(*n)).collect());
            }
            let order: Vec<_> = p.keys.iter().cloned().collect();
            let mut batches = Vec::new();
            while !p.keys.is_empty() {
                batches.push(p.next_batch(batch_keys));
            }
            prop_assert!(p.groups.is_empty());
            let flat: Vec<_> = batches.iter().flatten().cloned().collect();
            prop_assert_eq!(&flat, &order);
            for e in &events {
                let homes: std::collections::HashSet<usize> = e
                    .iter()
                    .map(|n| batches.iter().position(|b| b.contains(&key(*n))).unwrap())
                    .collect();
                prop_assert_eq!(homes.len(), 1, "event {:?} split over {:?}", e, batches);
            }
            for b in &batches[..batches.len() - 1] {
                prop_assert!(b.len() >= batch_keys);
            }
        }
    }
}
