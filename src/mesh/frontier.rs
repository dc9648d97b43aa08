//! Tombstone collection (decision 015): the mesh's stable frontier, and
//! the task that drops the tombstones below it.
//!
//! Each agent knows a stamp up to which every change it stamped has
//! reached every peer ([`Outbox::delivered`]). It tells each peer that
//! stamp in every `Digests` reply, and learns theirs in its own
//! anti-entropy rounds. The least of its own and every peer's last report
//! is the stable frontier: every change any region stamped up to it has
//! been applied in every region, and every stamp still to come is above
//! it. A tombstone below it has done its work everywhere and no older
//! change can still arrive, so it is dropped, and the database's collected
//! floor (`__geosync:collected:<db>`) turns away any change older than the
//! frontier for a key without a record. A peer's report only grows, so an
//! old one is safe, only late: a region away keeps the frontier where it
//! was, tombstones are kept, and once it has been silent past the horizon
//! `geosync_tombstone_collection_blocked{peer}` says so.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::outbox::Outbox;
use crate::base::hlc;
use crate::base::position::Position;
use crate::ops::metrics::Metrics;
use crate::ops::readiness::Readiness;
use crate::store::{Collected, META_BUCKETS, Store};

/// What this agent knows of the mesh's delivered stamps.
pub struct Frontier {
    outbox: Arc<Outbox>,
    /// The peers, each with when it began to count: this agent's start,
    /// or when a reload added it (a peer not heard from yet has been
    /// silent since then).
    peers: Mutex<HashMap<String, Instant>>,
    /// The stream position the stamper has stamped up to: its replication
    /// id names the Redis this agent is in step with.
    followed: watch::Receiver<Option<Position>>,
    /// Per peer address, its last reported delivered stamp and when.
    reported: Mutex<HashMap<String, (String, Instant)>>,
}

impl Frontier {
    /// The frontier of this agent, whose outbox serves `peers`; `followed`
    /// is the stamper's stream position.
    pub fn new(
        outbox: Arc<Outbox>,
        peers: &[String],
        followed: watch::Receiver<Option<Position>>,
    ) -> Frontier {
        let started = Instant::now();
        Frontier {
            outbox,
            peers: Mutex::new(peers.iter().map(|p| (p.clone(), started)).collect()),
            followed,
            reported: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a peer a reload added: the frontier waits for its report
    /// (and the outbox for its catch-up) before tombstones go again.
    pub fn add_peer(&self, peer: &str) {
        self.peers
            .lock()
            .expect("frontier lock")
            .entry(peer.to_string())
            .or_insert_with(Instant::now);
    }

    /// Stops counting a removed peer: it no longer holds tombstones back.
    pub fn remove_peer(&self, peer: &str) {
        self.peers.lock().expect("frontier lock").remove(peer);
        self.reported.lock().expect("frontier lock").remove(peer);
    }

    /// This node's delivered stamp ("" when it has none yet).
    pub fn own(&self) -> String {
        self.outbox.delivered().unwrap_or_default()
    }

    /// What to tell a peer this node delivered ("" for nothing yet): its
    /// delivered stamp, once the local Redis records it as reached (decision
    /// 019). A peer may collect tombstones up to it, so a change first seen
    /// in a later snapshot of this Redis is stamped above it and is not
    /// turned away. Nothing is told while the local Redis is not the one
    /// whose stream was stamped (it restarted, or another server took over,
    /// and the resync has not caught up), nor when it cannot be written.
    pub async fn report(&self, store: &mut Store) -> String {
        let delivered = self.own();
        let replid = self.followed.borrow().as_ref().map(|p| p.replid.clone());
        let (false, Some(replid)) = (delivered.is_empty(), replid) else {
            return String::new();
        };
        match store.record_reached(&replid, &delivered).await {
            Ok(true) => delivered,
            Ok(false) => {
                debug!(
                    "the local Redis is not the one whose stream was stamped; reporting nothing delivered"
                );
                String::new()
            }
            Err(e) => {
                warn!(error = %e, "recording the stamp this region reached failed; reporting nothing delivered");
                String::new()
            }
        }
    }

    /// Records what `peer` reported as its delivered stamp ("" means it
    /// knows none yet); a peer no longer counted is ignored.
    pub fn reported(&self, peer: &str, delivered: String) {
        if delivered.is_empty() || !self.peers.lock().expect("frontier lock").contains_key(peer) {
            return;
        }
        let mut r = self.reported.lock().expect("frontier lock");
        let slot = r
            .entry(peer.to_string())
            .or_insert_with(|| (String::new(), Instant::now()));
        if delivered > slot.0 {
            slot.0 = delivered;
        }
        slot.1 = Instant::now();
    }

    /// The stable frontier, the peers silent for longer than `horizon`,
    /// and every peer counted, read from one state of the reports: a
    /// report arriving in between cannot let a collection pass while the
    /// metric still says the peer holds it back.
    pub fn view(&self, horizon: Duration) -> View {
        let peers = self.peers.lock().expect("frontier lock");
        let r = self.reported.lock().expect("frontier lock");
        View {
            stable: self.stable_in(&peers, &r),
            silent: silent_in(&peers, &r, horizon),
            peers: peers.keys().cloned().collect(),
        }
    }

    /// The stable frontier: the least of this node's delivered stamp and
    /// every peer's last report; None while one of them is unknown (or
    /// without peers, where nothing needs keeping... nor collecting).
    fn stable_in(
        &self,
        peers: &HashMap<String, Instant>,
        r: &HashMap<String, (String, Instant)>,
    ) -> Option<String> {
        if peers.is_empty() {
            return None;
        }
        let own = self.own();
        if own.is_empty() {
            return None;
        }
        let mut least = own;
        for p in peers.keys() {
            let (stamp, _) = r.get(p)?;
            if *stamp < least {
                least = stamp.clone();
            }
        }
        Some(least)
    }
}

/// Peers that have not reported for longer than `horizon` (one that never
/// reported: since it began to count).
fn silent_in(
    peers: &HashMap<String, Instant>,
    r: &HashMap<String, (String, Instant)>,
    horizon: Duration,
) -> Vec<String> {
    let mut silent: Vec<String> = peers
        .iter()
        .filter(|(p, counted)| {
            let since = r.get(*p).map_or(**counted, |(_, at)| *at);
            since.elapsed() > horizon
        })
        .map(|(p, _)| p.clone())
        .collect();
    silent.sort();
    silent
}

/// What [`Frontier::view`] read.
#[derive(Debug)]
pub struct View {
    /// The stable frontier (None while some peer's report is missing).
    pub stable: Option<String>,
    /// Peers silent past the horizon, sorted.
    pub silent: Vec<String>,
    /// Every peer counted.
    pub peers: Vec<String>,
}

/// The collector: every `interval`, drops the tombstones of every
/// database below the stable frontier.
pub struct Collector {
    /// The frontier it collects below.
    pub frontier: Arc<Frontier>,
    /// The databases of the local Redis.
    pub databases: u32,
    /// Time between collections.
    pub interval: Duration,
    /// How long a peer may be silent before the metric says it holds
    /// collection back.
    pub horizon: Duration,
    /// Counters and gauges.
    pub metrics: Arc<Metrics>,
    /// Collection starts once the first snapshot has been stamped.
    pub ready: Arc<Readiness>,
}

impl Collector {
    /// Runs until shutdown.
    pub async fn run(self, mut store: Store, shutdown: CancellationToken) {
        tokio::select! {
            _ = self.ready.wait_snapshot() => {}
            _ = shutdown.cancelled() => return,
        }
        // The first collection one interval in: peers' reports come with
        // the first anti-entropy rounds.
        let mut tick =
            tokio::time::interval_at(tokio::time::Instant::now() + self.interval, self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut blocked: Vec<String> = Vec::new();
        let mut counted: Vec<String> = Vec::new();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            let View {
                stable,
                silent,
                peers,
            } = self.frontier.view(self.horizon);
            // A removed peer's gauge goes (this task alone writes it).
            for gone in counted.iter().filter(|p| !peers.contains(p)) {
                self.metrics
                    .tombstone_collection_blocked
                    .remove(&self.metrics.peer_label(gone));
            }
            for p in &peers {
                let is = silent.contains(p);
                self.metrics
                    .tombstone_collection_blocked
                    .get_or_create(&self.metrics.peer_label(p))
                    .set(i64::from(is));
                if is && !blocked.contains(p) {
                    warn!(peer = %p, horizon_secs = self.horizon.as_secs(), "tombstones are kept: a peer has not reported what it has for longer than the horizon");
                }
            }
            blocked = silent;
            counted = peers;
            let Some(frontier) = stable else {
                debug!("no stable frontier yet: tombstones are kept");
                continue;
            };
            if let Ok(ts) = hlc::decode(frontier.as_bytes()) {
                let secs = ts
                    .get_time()
                    .to_system_time()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64);
                self.metrics.tombstone_frontier.set(secs);
            }
            match self.collect(&mut store, &frontier).await {
                Ok(Collected {
                    dropped,
                    tombstones: kept,
                    records,
                }) => {
                    self.metrics.tombstones_collected.inc_by(dropped);
                    self.metrics.tombstones.set(kept as i64);
                    self.metrics.metadata_records.set(records as i64);
                    if dropped > 0 {
                        info!(dropped, kept, %frontier, "tombstones collected");
                    }
                }
                Err(e) => warn!(error = %e, "collecting tombstones failed; trying again next time"),
            }
        }
    }

    /// One collection over every database with keys.
    async fn collect(
        &self,
        store: &mut Store,
        frontier: &str,
    ) -> Result<Collected, crate::store::StoreError> {
        let all: Vec<u32> = (0..META_BUCKETS).collect();
        let mut sum = Collected::default();
        for db in crate::store::user_dbs(self.databases) {
            if !store.has_records(db).await? {
                continue;
            }
            let c = store.collect(db, &all, frontier).await?;
            sum.dropped += c.dropped;
            sum.tombstones += c.tombstones;
            sum.records += c.records;
        }
        Ok(sum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frontier(peers: &[String]) -> Frontier {
        let metrics = Arc::new(Metrics::new());
        let outbox = Arc::new(Outbox::new(peers, 16, 1 << 20, HashMap::new(), metrics));
        Frontier::new(outbox, peers, watch::channel(None).1)
    }

    /// A peer that has not reported yet is not "silent for longer than the
    /// horizon" until this agent has run that long itself.
    #[test]
    fn a_peer_not_heard_from_yet_is_silent_only_once_the_horizon_passed() {
        let peers = vec!["https://b:7001".to_string()];
        let f = frontier(&peers);
        assert!(f.view(Duration::from_secs(3600)).silent.is_empty());
        assert_eq!(f.view(Duration::ZERO).silent, peers);
        f.reported(&peers[0], "0001".into());
        assert!(f.view(Duration::from_secs(3600)).silent.is_empty());
    }

    /// A peer a reload adds holds the frontier back until it reports; a
    /// removed one no longer does, and its late reports are ignored.
    #[test]
    fn added_peers_hold_the_frontier_back_and_removed_ones_do_not() {
        let b = "https://b:7001".to_string();
        let c = "https://c:7001".to_string();
        let metrics = Arc::new(Metrics::new());
        let outbox = Arc::new(Outbox::new(
            std::slice::from_ref(&b),
            16,
            1 << 20,
            HashMap::new(),
            metrics,
        ));
        let f = Frontier::new(
            outbox.clone(),
            std::slice::from_ref(&b),
            watch::channel(None).1,
        );
        outbox.stamped_up_to("0009".into());
        f.reported(&b, "0005".into());
        assert_eq!(f.view(Duration::ZERO).stable.as_deref(), Some("0005"));
        f.add_peer(&c);
        outbox.add_peer(&c);
        let v = f.view(Duration::from_secs(3600));
        assert_eq!(v.stable, None, "c has not reported");
        assert!(v.silent.is_empty(), "c counts from when it was added");
        assert_eq!(v.peers.len(), 2);
        f.remove_peer(&c);
        outbox.remove_peer(&c);
        f.reported(&c, "0001".into());
        let v = f.view(Duration::ZERO);
        assert_eq!(v.stable.as_deref(), Some("0005"));
        assert_eq!(v.peers, vec![b]);
    }
}
