//! The outbox: stamped batches kept until every peer has acknowledged them.
//!
//! Bounded: when it holds `capacity` batches, or `capacity_bytes` of
//! encoded changes, [`Outbox::push`] drops the oldest, and the peers that
//! had not acknowledged it catch up from the metadata when they return
//! (decision 003). A peer that is away for hours
//! therefore never stalls stamping, and memory stays bounded. Each peer has
//! a cursor; acks are cumulative by sequence number.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::wire::encode_for_peers;
use crate::base::change::Change;
use crate::base::hlc;
use crate::ops::metrics::Metrics;

/// One stamped batch, encoded once and shared by every peer's sender.
#[derive(Debug)]
pub struct OutBatch {
    /// Sequence number, from 1, per agent process.
    pub seq: u64,
    /// rmp-serde encoding of the changes.
    pub payload: Bytes,
    /// Number of changes.
    pub count: u32,
    /// The largest stamp in the batch (encoded).
    pub max_stamp: String,
    /// The smallest stamp in the batch (encoded).
    pub min_stamp: String,
    /// When it was stamped (for lag).
    pub created: Instant,
}

struct Inner {
    next_seq: u64,
    batches: VecDeque<Arc<OutBatch>>,
    /// Encoded bytes of `batches`.
    bytes: usize,
    acked: HashMap<String, u64>,
    /// Per peer, a stamp such that every change this node stamped up to it
    /// has reached the peer: catch-ups and re-ships after a restart start
    /// after it (survives restarts through [`Outbox::acked_stamps`] and the
    /// data directory).
    acked_stamps: HashMap<String, String>,
    /// The largest stamp pushed so far.
    pushed_max: String,
    /// A stamp every change this node stamped up to has been pushed
    /// before, and every later one will be above (see
    /// [`Outbox::stamped_up_to`]); "" until the stamper says so.
    watermark: String,
    /// Peers that lost batches to a full outbox and need a catch-up.
    overflowed: std::collections::HashSet<String>,
    /// Peers whose stream is up.
    connected: std::collections::HashSet<String>,
}

/// How long a push waits for connected peers that acknowledge nothing.
pub const PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

/// A catch-up in progress (see [`Outbox::start_catch_up`]).
#[derive(Debug, Clone)]
pub struct CatchUp {
    /// Read back this node's records stamped after this ("0" for all).
    pub floor: String,
    /// The batches it replaces: every one up to this sequence number.
    pub covered: u64,
    /// The largest stamp pushed when it started.
    pub upto: String,
}

/// The largest encoded stamp below `s` (stamps are fixed-width hex), or
/// "0" when there is none.
fn stamp_before(s: &str) -> String {
    match u128::from_str_radix(s, 16) {
        Ok(n) if n > 0 => format!("{:0width$x}", n - 1, width = s.len()),
        _ => "0".into(),
    }
}

/// Batches awaiting acknowledgement by the peers.
pub struct Outbox {
    inner: Mutex<Inner>,
    capacity: usize,
    capacity_bytes: usize,
    latest: watch::Sender<u64>,
    /// Woken by acks and by peers connecting or leaving.
    progress: tokio::sync::Notify,
    /// Bytes the fastest connected peer may have left to acknowledge
    /// before a push waits (see [`Outbox::pace`]).
    pace_bytes: usize,
    /// A connected peer did not acknowledge for [`PATIENCE`]: pushes do not
    /// wait until the peers have caught up.
    impatient: AtomicBool,
    /// Most bytes of one batch's encoding: what a peer accepts in one
    /// message (`--peer-max-message-mb`, less the envelope).
    max_batch_bytes: usize,
    metrics: Arc<Metrics>,
    /// Told what the peers acknowledged, for `WAIT` (decision 017).
    durable: Option<Arc<crate::base::durable::Durable>>,
}

impl Outbox {
    /// An outbox for the given peers, holding at most `capacity` batches
    /// and `capacity_bytes` of encoded changes (always at least the newest
    /// batch), starting from the acknowledged stamps a previous run recorded.
    pub fn new(
        peers: &[String],
        capacity: usize,
        capacity_bytes: usize,
        acked_stamps: HashMap<String, String>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Outbox {
            inner: Mutex::new(Inner {
                next_seq: 1,
                batches: VecDeque::new(),
                bytes: 0,
                acked: peers.iter().map(|p| (p.clone(), 0)).collect(),
                acked_stamps: acked_stamps
                    .into_iter()
                    .filter(|(p, _)| peers.contains(p))
                    .collect(),
                overflowed: Default::default(),
                connected: Default::default(),
                pushed_max: String::new(),
                watermark: String::new(),
            }),
            capacity,
            capacity_bytes,
            latest: watch::channel(0).0,
            progress: tokio::sync::Notify::new(),
            pace_bytes: capacity_bytes / 8,
            impatient: AtomicBool::new(false),
            max_batch_bytes: usize::MAX,
            metrics,
            durable: None,
        }
    }

    /// Tells `durable` what the peers acknowledged.
    pub fn with_durable(mut self, durable: Arc<crate::base::durable::Durable>) -> Self {
        self.durable = Some(durable);
        self
    }

    /// The stamper has pushed every change of the local stream up to
    /// `offset`: that offset is acknowledged to Redis once the peers hold
    /// what is in the outbox now (decision 017).
    pub fn position_stamped(&self, offset: i64) {
        if let Some(d) = &self.durable {
            d.stamped(offset, self.last_seq());
        }
    }

    /// The sequence of the newest batch pushed (0: none yet).
    pub fn last_seq(&self) -> u64 {
        self.inner.lock().expect("outbox lock").next_seq - 1
    }

    /// Tells the durable tracker the sequence the peers hold as its mode
    /// counts them: the most any peer acknowledged, or the least; a peer
    /// whose batches overflowed holds nothing until its catch-up is done.
    fn report_durable(&self, inner: &Inner) {
        let Some(d) = &self.durable else { return };
        let held = |p: &String, a: &u64| if inner.overflowed.contains(p) { 0 } else { *a };
        let seq = if inner.acked.is_empty() {
            inner.next_seq - 1
        } else if d.mode() == crate::base::durable::AckAfter::AllPeers {
            inner
                .acked
                .iter()
                .map(|(p, a)| held(p, a))
                .min()
                .unwrap_or(0)
        } else {
            inner
                .acked
                .iter()
                .map(|(p, a)| held(p, a))
                .max()
                .unwrap_or(0)
        };
        d.acked(seq);
    }

    /// Batches are split so that none encodes to more than `bytes`; a
    /// change larger than that alone is not shipped (logged, counted).
    pub fn with_max_batch_bytes(mut self, bytes: usize) -> Self {
        self.max_batch_bytes = bytes;
        self
    }

    /// Adds a batch, first pacing the stamper by the peers (see `pace`
    /// below and decision 003). When the outbox is full, the oldest batch goes,
    /// and every peer that had not acknowledged it is marked overflowed;
    /// its sender catches it up from the metadata instead (decision 003).
    /// False only when shutdown was requested.
    pub async fn push(&self, changes: Vec<Change>, shutdown: &CancellationToken) -> bool {
        self.pace(shutdown).await;
        if shutdown.is_cancelled() {
            return false;
        }
        let batches = encode_for_peers(&changes, self.max_batch_bytes, &self.metrics, "batch");
        for (payload, range) in batches {
            self.insert(Bytes::from(payload), &changes[range]);
        }
        true
    }

    /// Holds one encoded batch for the peers.
    fn insert(&self, payload: Bytes, changes: &[Change]) {
        let stamps = || changes.iter().map(|c| c.stamp.as_str());
        let max_stamp = stamps().max().unwrap_or("").to_string();
        let min_stamp = stamps().min().unwrap_or("").to_string();
        let mut inner = self.inner.lock().expect("outbox lock");
        let seq = inner.next_seq;
        inner.next_seq += 1;
        if max_stamp > inner.pushed_max {
            inner.pushed_max = max_stamp.clone();
        }
        // A change re-shipped with an old stamp: no peer counts as having
        // everything up to it any more.
        if !min_stamp.is_empty() {
            for slot in inner.acked_stamps.values_mut() {
                if *slot >= min_stamp {
                    *slot = stamp_before(&min_stamp);
                }
            }
            if inner.watermark >= min_stamp {
                inner.watermark = stamp_before(&min_stamp);
            }
        }
        if inner.acked.is_empty() {
            // No peers: nothing to keep.
            self.report_durable(&inner);
            drop(inner);
            self.latest.send_replace(seq);
            return;
        }
        while inner.batches.len() >= self.capacity
            || (!inner.batches.is_empty() && inner.bytes + payload.len() > self.capacity_bytes)
        {
            let Some(old) = inner.batches.pop_front() else {
                break;
            };
            inner.bytes -= old.payload.len();
            let behind: Vec<String> = inner
                .acked
                .iter()
                .filter(|(_, a)| **a < old.seq)
                .map(|(p, _)| p.clone())
                .collect();
            for peer in behind {
                if inner.overflowed.insert(peer.clone()) {
                    self.metrics
                        .outbox_overflows
                        .get_or_create(&self.metrics.peer_label(&peer))
                        .inc();
                }
            }
        }
        inner.bytes += payload.len();
        inner.batches.push_back(Arc::new(OutBatch {
            seq,
            payload,
            count: changes.len() as u32,
            max_stamp,
            min_stamp,
            created: Instant::now(),
        }));
        self.metrics.outbox_len.set(inner.batches.len() as i64);
        drop(inner);
        self.latest.send_replace(seq);
        self.update_lag();
    }

    /// Serves a peer added while running (a reload): it catches up from
    /// the metadata at its first session, from "0" (every change this node
    /// recorded), then takes the batches after the ones that covers. A
    /// peer already served is left as it is.
    pub fn add_peer(&self, peer: &str) {
        {
            let mut inner = self.inner.lock().expect("outbox lock");
            if inner.acked.contains_key(peer) {
                return;
            }
            inner.acked.insert(peer.to_string(), 0);
            inner.acked_stamps.remove(peer);
            inner.overflowed.insert(peer.to_string());
            self.report_durable(&inner);
        }
        self.update_lag();
    }

    /// Stops serving a removed peer: what it acknowledged, its catch-up
    /// floor and its lag are forgotten, and batches only it still lacked
    /// are dropped.
    pub fn remove_peer(&self, peer: &str) {
        {
            let mut inner = self.inner.lock().expect("outbox lock");
            if inner.acked.remove(peer).is_none() {
                return;
            }
            inner.acked_stamps.remove(peer);
            inner.overflowed.remove(peer);
            inner.connected.remove(peer);
            // Written under this lock only: removed for good.
            let label = self.metrics.peer_label(peer);
            self.metrics.peer_lag_batches.remove(&label);
            self.metrics.peer_lag_seconds.remove(&label);
            self.metrics.peer_acked_stamp.remove(&label);
            self.metrics.outbox_overflows.remove(&label);
            self.trim(&mut inner);
            self.report_durable(&inner);
        }
        self.progress.notify_waiters();
        self.update_lag();
    }

    /// Drops the batches every peer has acknowledged (all of them when
    /// there is no peer).
    fn trim(&self, inner: &mut Inner) {
        let newest = inner.next_seq - 1;
        let low = inner.acked.values().copied().min().unwrap_or(newest);
        while inner.batches.front().is_some_and(|b| b.seq <= low) {
            if let Some(b) = inner.batches.pop_front() {
                inner.bytes -= b.payload.len();
            }
        }
        self.metrics.outbox_len.set(inner.batches.len() as i64);
        self.metrics.outbox_bytes.set(inner.bytes as i64);
    }

    /// True when batches this peer had not acknowledged were dropped.
    pub fn is_overflowed(&self, peer: &str) -> bool {
        self.inner
            .lock()
            .expect("outbox lock")
            .overflowed
            .contains(peer)
    }

    /// Starts a catch-up for an overflowed peer; None when the peer did not
    /// overflow.
    pub fn start_catch_up(&self, peer: &str) -> Option<CatchUp> {
        let mut inner = self.inner.lock().expect("outbox lock");
        if !inner.overflowed.remove(peer) {
            return None;
        }
        let floor = inner
            .acked_stamps
            .get(peer)
            .cloned()
            .unwrap_or_else(|| "0".into());
        // Everything stamped before the oldest kept batch is in the metadata.
        let covered = inner
            .batches
            .front()
            .map(|b| b.seq - 1)
            .unwrap_or(inner.next_seq - 1);
        Some(CatchUp {
            floor,
            covered,
            upto: inner.pushed_max.clone(),
        })
    }

    /// Marks the peer overflowed again (a catch-up did not finish).
    pub fn mark_overflowed(&self, peer: &str) {
        self.inner
            .lock()
            .expect("outbox lock")
            .overflowed
            .insert(peer.to_string());
    }

    /// Records a finished catch-up: the peer has every batch it covered and
    /// every change stamped up to the catch-up's `upto`.
    ///
    /// Not up to the newest stamp the catch-up sent: it reads the metadata
    /// while the stamper goes on, so it may send a record stamped during it
    /// and miss another one stamped just before (in a part of the metadata
    /// already read). Those are in batches after `covered`; if the outbox
    /// drops them too, the next catch-up must start from `upto`. Everything
    /// pushed before the catch-up started was recorded before it started,
    /// so the catch-up read it.
    pub fn catch_up_done(&self, peer: &str, done: &CatchUp) {
        {
            let mut inner = self.inner.lock().expect("outbox lock");
            self.raise_acked_stamp(&mut inner, peer, done.upto.clone());
        }
        self.ack(peer, done.covered);
    }

    /// Raises what `peer` is known to hold up to `stamp` (never lowers
    /// it), and its gauge with it.
    fn raise_acked_stamp(&self, inner: &mut Inner, peer: &str, stamp: String) {
        let slot = inner.acked_stamps.entry(peer.to_string()).or_default();
        if stamp > *slot {
            if let Ok(ts) = hlc::decode(stamp.as_bytes()) {
                self.metrics
                    .peer_acked_stamp
                    .get_or_create(&self.metrics.peer_label(peer))
                    .set(hlc::unix_millis(&ts) as f64 / 1000.0);
            }
            *slot = stamp;
        }
    }

    /// Waits, before a push, until the fastest connected peer has at most
    /// an eighth of the outbox's bytes left to acknowledge: while a peer
    /// takes the changes, the stamper goes at its pace, and what waits for
    /// it are key names in the spool, not values in memory (and no
    /// overflow and catch-up follow). Peers that are away hold nothing
    /// back, nor do slower ones while a faster one keeps up (the slower
    /// ones overflow and catch up). A connected peer that acknowledges
    /// nothing for [`PATIENCE`] is no longer waited for until the peers
    /// catch up again.
    async fn pace(&self, shutdown: &CancellationToken) {
        if self.in_flight_bytes() <= self.pace_bytes {
            self.impatient.store(false, Ordering::Relaxed);
            return;
        }
        if self.impatient.load(Ordering::Relaxed) {
            return;
        }
        self.metrics.outbox_paced.inc();
        if !self.wait_room(self.pace_bytes, PATIENCE, shutdown).await && !shutdown.is_cancelled() {
            self.impatient.store(true, Ordering::Relaxed);
            warn!(
                patience_secs = PATIENCE.as_secs(),
                "connected peers acknowledge nothing; stamping goes on without waiting for them"
            );
        }
    }

    /// True when every connected peer has acknowledged every batch pushed
    /// so far (what a shutdown waits for before it stops the streams).
    pub fn drained(&self) -> bool {
        let inner = self.inner.lock().expect("outbox lock");
        let last = inner.next_seq.saturating_sub(1);
        inner
            .connected
            .iter()
            .all(|p| inner.acked.get(p).copied().unwrap_or(0) >= last)
    }

    /// Waits until [`Outbox::drained`] or `deadline` passes; true when drained.
    pub async fn wait_drained(&self, deadline: std::time::Duration) -> bool {
        tokio::time::timeout(deadline, async {
            loop {
                let progress = self.progress.notified();
                if self.drained() {
                    return;
                }
                progress.await;
            }
        })
        .await
        .is_ok()
    }

    /// Records whether the stream to `peer` is up.
    pub fn set_connected(&self, peer: &str, up: bool) {
        {
            let mut inner = self.inner.lock().expect("outbox lock");
            if up {
                inner.connected.insert(peer.to_string());
            } else {
                inner.connected.remove(peer);
            }
        }
        self.progress.notify_waiters();
    }

    /// Encoded bytes of the batches the fastest connected peer has not
    /// acknowledged yet (0 when no peer is connected).
    pub fn in_flight_bytes(&self) -> usize {
        let inner = self.inner.lock().expect("outbox lock");
        let Some(high) = inner
            .connected
            .iter()
            .filter_map(|p| inner.acked.get(p))
            .max()
        else {
            return 0;
        };
        inner
            .batches
            .iter()
            .filter(|b| b.seq > *high)
            .map(|b| b.payload.len())
            .sum()
    }

    /// Waits until the fastest connected peer has at most `limit` bytes
    /// left to acknowledge, for at most `patience`. Returns false when the
    /// wait timed out (or on shutdown).
    pub async fn wait_room(
        &self,
        limit: usize,
        patience: std::time::Duration,
        shutdown: &CancellationToken,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let woken = self.progress.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if self.in_flight_bytes() <= limit {
                return true;
            }
            tokio::select! {
                _ = woken => {}
                _ = tokio::time::sleep_until(deadline) => return false,
                _ = shutdown.cancelled() => return false,
            }
        }
    }

    /// The first batch after `seq`, if any.
    pub fn next_after(&self, seq: u64) -> Option<Arc<OutBatch>> {
        let inner = self.inner.lock().expect("outbox lock");
        let first = inner.batches.front()?.seq;
        // Batch seq + 1 was dropped (the caller's peer overflowed, and
        // catches up from the metadata instead): never skip over it.
        if seq + 1 < first {
            return None;
        }
        inner.batches.get((seq + 1 - first) as usize).cloned()
    }

    /// Watches the newest sequence number (senders wait on it for work).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.latest.subscribe()
    }

    /// What the peer has acknowledged so far.
    pub fn acked(&self, peer: &str) -> u64 {
        self.inner
            .lock()
            .expect("outbox lock")
            .acked
            .get(peer)
            .copied()
            .unwrap_or(0)
    }

    /// Records a cumulative ack and drops batches every peer has.
    pub fn ack(&self, peer: &str, seq: u64) {
        {
            let mut inner = self.inner.lock().expect("outbox lock");
            let newest = inner.next_seq - 1;
            let Some(prev) = inner.acked.get(peer).copied() else {
                return;
            };
            let seq = seq.min(newest);
            if seq > prev {
                inner.acked.insert(peer.to_string(), seq);
                // Up to the newest stamp acknowledged, but below every
                // stamp still unacknowledged (a re-shipped old one).
                let pending = inner
                    .batches
                    .iter()
                    .filter(|b| b.seq > seq)
                    .map(|b| b.min_stamp.as_str())
                    .min();
                let stamp = inner
                    .batches
                    .iter()
                    .take_while(|b| b.seq <= seq)
                    .map(|b| b.max_stamp.as_str())
                    .filter(|s| pending.is_none_or(|p| *s < p))
                    .max()
                    .map(str::to_string);
                if let Some(stamp) = stamp {
                    self.raise_acked_stamp(&mut inner, peer, stamp);
                }
            }
            self.trim(&mut inner);
            self.report_durable(&inner);
        }
        self.progress.notify_waiters();
        self.update_lag();
    }

    /// The stamper says that every change it stamped up to `stamp` has
    /// been pushed, and that every change it stamps from now on is newer
    /// (it is idle, and `stamp` was taken from its clock).
    pub fn stamped_up_to(&self, stamp: String) {
        let mut inner = self.inner.lock().expect("outbox lock");
        if stamp > inner.watermark {
            inner.watermark = stamp;
        }
    }

    /// A stamp such that every change this node stamped up to it has
    /// reached every peer (acknowledged, so applied there): for a peer that
    /// acknowledged every batch pushed, the stamper's watermark, else what
    /// it acknowledged. None without peers. Tombstones are collected below
    /// the least of these over the mesh (see `mesh::frontier`).
    pub fn delivered(&self) -> Option<String> {
        let inner = self.inner.lock().expect("outbox lock");
        let last = inner.next_seq - 1;
        inner
            .acked
            .iter()
            .map(|(peer, seq)| {
                let stamp = inner.acked_stamps.get(peer).cloned().unwrap_or_default();
                if *seq >= last && !inner.overflowed.contains(peer) {
                    stamp.max(inner.watermark.clone())
                } else {
                    stamp
                }
            })
            .min()
    }

    /// Per peer, the largest stamp it has acknowledged.
    pub fn acked_stamps(&self) -> HashMap<String, String> {
        self.inner.lock().expect("outbox lock").acked_stamps.clone()
    }

    /// Refreshes the per-peer lag gauges.
    pub fn update_lag(&self) {
        let inner = self.inner.lock().expect("outbox lock");
        let newest = inner.next_seq - 1;
        for (peer, acked) in &inner.acked {
            let label = self.metrics.peer_label(peer);
            self.metrics
                .peer_lag_batches
                .get_or_create(&label)
                .set((newest - acked) as i64);
            let age = inner
                .batches
                .iter()
                .find(|b| b.seq > *acked)
                .map(|b| b.created.elapsed().as_secs_f64())
                .unwrap_or(0.0);
            self.metrics.peer_lag_seconds.get_or_create(&label).set(age);
        }
        self.metrics.outbox_bytes.set(inner.bytes as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::change::Op;
    use crate::base::change::encode_batch;
    use serde_bytes::ByteBuf;

    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

    fn change() -> Vec<Change> {
        vec![Change {
            db: 0,
            key: ByteBuf::from(b"k".to_vec()),
            stamp: format!(
                "{:020}",
                SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            ),
            op: Op::Delete,
        }]
    }

    /// An outbox of `batches` batches and 1 MiB, with fresh metrics.
    fn outbox(peers: &[String], batches: usize) -> Outbox {
        Outbox::new(
            peers,
            batches,
            1 << 20,
            HashMap::new(),
            Arc::new(Metrics::new()),
        )
    }

    /// A sender whose next batch was dropped (the peer overflowed) gets
    /// nothing more from the outbox: sending the later batches across the
    /// gap would let the peer acknowledge past changes it never got, and
    /// the next catch-up would start after them (they were lost until
    /// anti-entropy; seen in CI as `writes_during_a_catch_up_that_overflows_again_all_arrive`).
    #[tokio::test]
    async fn no_batch_is_handed_out_across_a_gap() {
        let peers = vec!["a".to_string(), "b".to_string()];
        let ob = outbox(&peers, 3);
        let t = CancellationToken::new();
        for _ in 0..3 {
            assert!(ob.push(change(), &t).await);
        }
        ob.ack("a", 3);
        ob.ack("b", 1);
        // b's sender has sent 1; batch 2 is dropped for batch 5.
        assert!(ob.push(change(), &t).await);
        assert!(ob.push(change(), &t).await);
        assert!(ob.is_overflowed("b"));
        assert!(
            ob.next_after(1).is_none(),
            "batch 2 is gone: no skipping to 3"
        );
        assert_eq!(ob.next_after(2).unwrap().seq, 3, "no gap after 2");
    }

    #[tokio::test]
    async fn batches_stay_until_every_peer_acks() {
        let peers = vec!["a".to_string(), "b".to_string()];
        let ob = outbox(&peers, 10);
        let t = CancellationToken::new();
        for _ in 0..3 {
            assert!(ob.push(change(), &t).await);
        }
        assert_eq!(ob.next_after(0).unwrap().seq, 1);
        assert_eq!(ob.next_after(2).unwrap().seq, 3);
        assert!(ob.next_after(3).is_none());
        ob.ack("a", 3);
        assert_eq!(ob.next_after(0).unwrap().seq, 1, "b has not acked");
        ob.ack("b", 2);
        assert_eq!(ob.next_after(2).unwrap().seq, 3);
        assert!(ob.next_after(0).is_none(), "1 and 2 are gone");
        assert_eq!(ob.acked("a"), 3);
        let stamps = ob.acked_stamps();
        assert!(
            stamps["a"] > stamps["b"],
            "a acked a later batch: {stamps:?}"
        );
        ob.ack("b", 1);
        assert_eq!(ob.acked_stamps(), stamps, "acks never go backwards");
    }

    #[tokio::test]
    async fn the_fastest_connected_peer_sets_the_room() {
        let peers = vec!["a".to_string(), "b".to_string()];
        let ob = Arc::new(outbox(&peers, 100));
        let t = CancellationToken::new();
        for _ in 0..3 {
            assert!(ob.push(change(), &t).await);
        }
        let one = ob.next_after(0).unwrap().payload.len();
        assert_eq!(ob.in_flight_bytes(), 0, "nobody connected: nothing waits");
        ob.set_connected("b", true);
        assert_eq!(ob.in_flight_bytes(), 3 * one);
        ob.set_connected("a", true);
        ob.ack("a", 1);
        assert_eq!(ob.in_flight_bytes(), 2 * one, "the fastest peer counts");
        let patience = std::time::Duration::from_secs(30);
        assert!(ob.wait_room(2 * one, patience, &t).await, "room already");
        // A waiter wakes when the fastest peer acks ...
        let waiter = {
            let (ob, t) = (ob.clone(), t.clone());
            tokio::spawn(async move { ob.wait_room(0, patience, &t).await })
        };
        ob.ack("b", 2);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "a slower peer's ack frees nothing");
        ob.ack("a", 3);
        assert!(waiter.await.unwrap());
        // ... or when the peer holding them back leaves.
        assert!(ob.push(change(), &t).await);
        let waiter = {
            let (ob, t) = (ob.clone(), t.clone());
            tokio::spawn(async move { ob.wait_room(0, patience, &t).await })
        };
        ob.set_connected("a", false);
        ob.set_connected("b", false);
        assert!(waiter.await.unwrap());
        // A connected peer that never acks holds them back only so long.
        ob.set_connected("b", true);
        let short = std::time::Duration::from_millis(50);
        assert!(!ob.wait_room(0, short, &t).await);
    }

    #[tokio::test(start_paused = true)]
    async fn pushes_go_at_the_pace_of_the_fastest_connected_peer() {
        let peers = vec!["a".to_string(), "b".to_string()];
        let one = encode_batch(&change()).len();
        // Room for two batches in flight.
        let metrics = Arc::new(Metrics::new());
        let ob = Arc::new(Outbox::new(
            &peers,
            100,
            16 * one,
            HashMap::new(),
            metrics.clone(),
        ));
        let t = CancellationToken::new();
        ob.set_connected("a", true);
        ob.set_connected("b", true);
        for _ in 0..3 {
            assert!(ob.push(change(), &t).await, "room for these");
        }
        let start = tokio::time::Instant::now();
        let push = |ob: &Arc<Outbox>| {
            let (ob, t) = (ob.clone(), t.clone());
            tokio::spawn(async move { ob.push(change(), &t).await })
        };
        let fourth = push(&ob);
        tokio::task::yield_now().await;
        assert!(!fourth.is_finished(), "three batches in flight: it waits");
        ob.ack("a", 2);
        assert!(fourth.await.unwrap());
        assert_eq!(
            start.elapsed(),
            std::time::Duration::ZERO,
            "b, slower, held nothing back"
        );
        assert_eq!(metrics.outbox_paced.get(), 1);
        // Nobody acks any more: the push after the room is used up waits
        // out the patience, the next ones do not wait at all ...
        assert!(ob.push(change(), &t).await, "5: room for it");
        assert_eq!(start.elapsed(), std::time::Duration::ZERO);
        assert!(ob.push(change(), &t).await, "6");
        assert_eq!(start.elapsed(), PATIENCE);
        assert!(ob.push(change(), &t).await, "7");
        assert!(ob.push(change(), &t).await, "8");
        assert_eq!(start.elapsed(), PATIENCE);
        // ... until the peers catch up; then pacing resumes.
        ob.ack("a", 8);
        for _ in 9..=11 {
            assert!(ob.push(change(), &t).await);
        }
        let paced = push(&ob);
        tokio::task::yield_now().await;
        assert!(!paced.is_finished(), "waiting for the peers again");
        ob.ack("a", 10);
        assert!(paced.await.unwrap());
        assert_eq!(start.elapsed(), PATIENCE);
    }

    #[tokio::test]
    async fn a_full_outbox_drops_the_oldest_and_marks_who_missed_it() {
        let peers = vec!["a".to_string(), "b".to_string()];
        let ob = outbox(&peers, 2);
        let t = CancellationToken::new();
        assert!(ob.push(change(), &t).await);
        assert!(ob.push(change(), &t).await);
        ob.ack("a", 2);
        ob.ack("b", 1);
        assert!(ob.push(change(), &t).await, "never waits");
        assert!(ob.push(change(), &t).await);
        // batches 1 and 2 are gone; b had not acknowledged 2
        assert!(ob.next_after(1).is_none(), "b's next batch is gone");
        assert_eq!(ob.next_after(2).unwrap().seq, 3);
        assert!(ob.is_overflowed("b"));
        assert!(!ob.is_overflowed("a"));
        let c = ob.start_catch_up("b").unwrap();
        assert_eq!(c.covered, 2, "the catch-up covers what was dropped");
        assert_eq!(c.floor, ob.acked_stamps()["b"], "from what b acknowledged");
        assert_eq!(c.upto, ob.next_after(3).unwrap().max_stamp, "newest pushed");
        assert!(ob.start_catch_up("b").is_none());
        // Pushed during the catch-up, maybe not read by it.
        assert!(ob.push(change(), &t).await);
        ob.catch_up_done("b", &c);
        assert_eq!(ob.acked("b"), 2);
        assert_eq!(
            ob.acked_stamps()["b"],
            c.upto,
            "b has what was stamped before the catch-up, not what came during it"
        );
        let stopped = CancellationToken::new();
        stopped.cancel();
        assert!(!ob.push(change(), &stopped).await);
    }

    #[tokio::test]
    async fn acked_stamps_stay_below_old_stamps_shipped_again() {
        let peers = vec!["a".to_string()];
        let ob = outbox(&peers, 10);
        let t = CancellationToken::new();
        let old = change(); // the oldest stamp
        assert!(ob.push(change(), &t).await);
        assert!(ob.push(change(), &t).await);
        ob.ack("a", 2);
        let acked = ob.acked_stamps()["a"].clone();
        assert!(acked > old[0].stamp);
        // After a restart, an old change is re-shipped ...
        assert!(ob.push(old.clone(), &t).await);
        let lowered = ob.acked_stamps()["a"].clone();
        assert!(
            lowered < old[0].stamp,
            "{lowered} is below the re-shipped {}",
            old[0].stamp
        );
        // ... and newer acks do not pass it until it is acknowledged.
        assert!(ob.push(change(), &t).await);
        ob.ack("a", 2);
        assert_eq!(ob.acked_stamps()["a"], lowered);
        ob.ack("a", 4);
        assert!(ob.acked_stamps()["a"] > acked);
        assert_eq!(stamp_before("00000000000000010100"), "000000000000000100ff");
        assert_eq!(stamp_before("00000000000000000000"), "0");
    }

    #[tokio::test]
    async fn the_byte_limit_drops_the_oldest_but_keeps_the_newest() {
        let peers = vec!["a".to_string()];
        let one = encode_batch(&change()).len();
        let ob = Outbox::new(
            &peers,
            100,
            one * 2,
            HashMap::new(),
            Arc::new(Metrics::new()),
        );
        let t = CancellationToken::new();
        for _ in 0..3 {
            assert!(ob.push(change(), &t).await);
        }
        assert!(ob.next_after(0).is_none(), "batch 1 went");
        assert_eq!(ob.next_after(1).unwrap().seq, 2);
        assert!(ob.is_overflowed("a"));
        // A batch larger than the whole limit is still kept, alone.
        let tiny = Outbox::new(&peers, 100, 1, HashMap::new(), Arc::new(Metrics::new()));
        assert!(tiny.push(change(), &t).await);
        assert!(tiny.push(change(), &t).await);
        assert_eq!(tiny.next_after(1).unwrap().seq, 2, "batch 1 went");
        assert!(tiny.next_after(2).is_none());
    }

    /// A peer added while running catches up on everything from "0"
    /// first; a removed one keeps nothing: the batches only it lacked go,
    /// and its lag series with them.
    #[tokio::test]
    async fn peers_added_catch_up_from_the_start_and_removed_ones_hold_nothing() {
        let metrics = Arc::new(Metrics::new());
        let ob = Outbox::new(
            &["a".to_string()],
            10,
            1 << 20,
            HashMap::new(),
            metrics.clone(),
        );
        let t = CancellationToken::new();
        assert!(ob.push(change(), &t).await);
        assert!(ob.push(change(), &t).await);
        ob.ack("a", 2);
        ob.add_peer("b");
        let c = ob.start_catch_up("b").expect("a new peer catches up first");
        assert_eq!(c.floor, "0");
        assert_eq!(c.covered, 2, "the batches before it are in the metadata");
        ob.catch_up_done("b", &c);
        assert_eq!(ob.acked("b"), 2);
        assert!(ob.push(change(), &t).await);
        ob.ack("a", 3);
        assert_eq!(ob.next_after(2).unwrap().seq, 3, "kept for b");
        ob.update_lag();
        assert!(
            metrics
                .render()
                .contains("geosync_peer_lag_batches{peer=\"b\"} 1")
        );
        ob.remove_peer("b");
        assert!(
            ob.next_after(2).is_none(),
            "nothing kept for a removed peer"
        );
        assert!(!metrics.render().contains("peer=\"b\""));
        assert!(!ob.acked_stamps().contains_key("b"));
        // Removing every peer keeps nothing at all.
        assert!(ob.push(change(), &t).await);
        ob.remove_peer("a");
        assert!(ob.next_after(3).is_none());
        assert_eq!(ob.delivered(), None);
    }
}
