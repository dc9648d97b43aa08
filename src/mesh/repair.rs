//! Anti-entropy: every agent compares its metadata with each peer's, bucket
//! by bucket, and pulls the keys of the buckets that differ.
//!
//! A change reaches a peer from its origin's outbox, or from its origin's
//! metadata by catch-up. When the origin loses both (its Redis restarted
//! empty, its agent killed before a peer acknowledged), no one else would
//! ever send it, although other regions have it. Anti-entropy closes that
//! gap: any region repairs any other.
//!
//! A round with one peer, per database: both sides read the digest of
//! each of the 16384 metadata buckets (the sum of a hash of each key the
//! bucket records and its stamp, kept up to date by the scripts that write
//! records; scripts/digest.lua) and fold them into 128 group digests;
//! the groups that differ are compared bucket by bucket; the keys of the
//! buckets that differ are pulled from the peer (`Snapshot` restricted to
//! those buckets) and applied through the applier, so that the newer stamp
//! wins, whoever made it. Each side pulls only; the peer's own rounds pull
//! what this side has newer. Databases without keys on either side cost one
//! `DBSIZE`. At start the digests are computed once from the records (64
//! buckets per script call); when a pull finds nothing older although the
//! digests differed, this side's digests of those buckets are computed
//! again, so a drifted digest heals.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use uhlc::HLC;

use super::dial::dial;
use super::security::PeerAuth;
use super::wire::pb::replication_client::ReplicationClient;
use super::wire::pb::{DigestRequest, RecordsRequest, SnapshotRequest};
use super::wire::{MAX_RECORDS_ASKED, PROTOCOL_VERSION, group_buckets, group_count, group_digests};
use crate::apply::ApplyJob;
use crate::base::change::decode_batch;
use crate::base::hlc;
use crate::ops::metrics::Metrics;
use crate::ops::readiness::Readiness;
use crate::store::Store;
use crate::store::layout::META_BUCKETS;

/// Default of `--anti-entropy-interval-secs`.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);

/// Default of `--anti-entropy-max-bytes-per-sec`: 8 MiB/s (67 Mbit/s),
/// a repair of a gigabyte in about two minutes.
pub const DEFAULT_MAX_BYTES_PER_SEC: u64 = 8 << 20;

/// A round after a reconnect waits until the peer's own stream to this
/// region has delivered nothing for this long (its re-sends and catch-up
/// are through)...
pub const RECONNECT_QUIET: Duration = Duration::from_secs(1);

/// ... or until this long after the reconnect, whichever comes first (a
/// peer that writes without pause never goes quiet).
pub const RECONNECT_MAX_WAIT: Duration = Duration::from_secs(30);

/// Most buckets pulled by one `Snapshot` call: a slow, paced pull holds
/// one of the peer's two snapshot places for one slice, not the whole
/// repair.
const MAX_SLICE_BUCKETS: usize = 256;

/// Buckets of a paced round's first slice; the next slices are sized from
/// the bytes per bucket seen so far.
const FIRST_SLICE_BUCKETS: usize = 16;

/// A slice the peer refused as busy (its two snapshot places taken) is
/// asked again this many times, a second apart, before the round fails.
const BUSY_RETRIES: u32 = 30;

/// What anti-entropy needs.
pub struct AntiEntropy {
    /// The peers' addresses, as a reload changes them.
    pub peers: watch::Receiver<Vec<String>>,
    /// This agent's node id.
    pub node_id: u32,
    /// The mesh name.
    pub mesh: String,
    /// The databases of the local Redis.
    pub databases: u32,
    /// Stamps pulled move this clock, as any peer's do.
    pub clock: Arc<HLC>,
    /// Counters and gauges.
    pub metrics: Arc<Metrics>,
    /// How the links to peers are secured.
    pub auth: PeerAuth,
    /// The largest message accepted from a peer.
    pub max_message: usize,
    /// Time between rounds.
    pub interval: Duration,
    /// Most bytes of pulled changes per second, over every round (0: no
    /// limit).
    pub max_bytes_per_sec: u64,
    /// Pulled changes are applied here, like peers' batches.
    pub apply: mpsc::Sender<ApplyJob>,
    /// Rounds start once the first snapshot has been stamped.
    pub ready: Arc<Readiness>,
    /// When the links with peers came back, and what they delivered.
    pub links: Arc<PeerLinks>,
    /// Where peers' delivered stamps are recorded (tombstone collection).
    pub frontier: Option<Arc<super::frontier::Frontier>>,
}

/// What one round with one peer found.
#[derive(Debug, Default, Clone, Copy)]
pub struct Round {
    /// Buckets whose digests were compared (through their groups).
    pub buckets_compared: u64,
    /// Buckets whose digests differed.
    pub buckets_differing: u64,
    /// Changes pulled from the peer.
    pub pulled: u64,
    /// Of those, changes newer than what this region held: repaired keys.
    pub repaired: u64,
    /// Flushes the peer records and this region had missed, applied.
    pub flushes: u64,
    /// Keys this region held below the peer's collected floor, which the
    /// peer lacked: dropped here (decision 015).
    pub dropped: u64,
    /// Bytes of the pulled changes, as encoded on the link.
    pub bytes: u64,
    /// Time spent pulling, from each `Snapshot` call to the end of the
    /// wait its last chunk paid for.
    pub pull_time: Duration,
}

/// Where a pull reads from: the peer, the database, and the peer's
/// collected floor for it ("" when it never collected).
struct From<'a> {
    peer: &'a str,
    db: u32,
    collected: &'a str,
}

/// Why a round runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    Interval,
    Reconnect,
}

type Failure = Box<dyn std::error::Error + Send + Sync>;

impl AntiEntropy {
    /// Runs rounds with every peer until shutdown: every `interval` (the
    /// first one interval after the first snapshot was stamped), and soon
    /// after every reconnect of this agent's stream to a peer. One round
    /// runs at a time; rounds with one peer never overlap.
    ///
    /// A reconnect (a partition healed, the peer restarted, a connection
    /// reset) starts a round with that peer once what the links deliver
    /// by themselves is through: this agent's stream reports a reconnect
    /// after its catch-up from the metadata; the round then waits until the
    /// peer's stream to this region has been quiet for [`RECONNECT_QUIET`]
    /// (its outbox re-sends and catch-up applied), [`RECONNECT_MAX_WAIT`] at
    /// most. Pulling sooner would race them: the round would pull again,
    /// and count as repaired, changes on their way anyway. The first
    /// connection of this process starts no round: the start logic stands
    /// (digests computed from the records, first round one interval
    /// later), and the peers, which see this start as a reconnect, pull
    /// from this region at once.
    ///
    /// A peer added by a reload gets its rounds from then on, the first
    /// one interval after it was added; a removed one's rounds stop, and
    /// its anti-entropy metrics go.
    pub async fn run(mut self, mut store: Store, shutdown: CancellationToken) {
        // Subscribed before anything waits, so that no reconnect is missed.
        let mut connects: HashMap<String, watch::Receiver<Connects>> = self
            .peers
            .borrow_and_update()
            .iter()
            .map(|p| (p.clone(), self.links.watch(p)))
            .collect();
        tokio::select! {
            _ = self.ready.wait_snapshot() => {}
            _ = shutdown.cancelled() => return,
        }
        // Records written while no agent kept the digests (an older
        // version, a Redis restored from a backup) are counted in once.
        loop {
            match tokio::select! {
                r = rebuild_all(&mut store, self.databases) => r,
                _ = shutdown.cancelled() => return,
            } {
                Ok(buckets) => {
                    debug!(buckets, "anti-entropy digests computed from the records");
                    break;
                }
                Err(e) => {
                    warn!(error = %e, "cannot compute the anti-entropy digests; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(self.interval) => {}
                        _ = shutdown.cancelled() => return,
                    }
                }
            }
        }
        // The first round one interval after the start: a restarted agent's
        // peers first deliver what they hold for it (outbox, catch-up);
        // anti-entropy is for what no one would deliver.
        let first = tokio::time::Instant::now() + self.interval;
        // One round at a time: the store is the turn.
        let store = tokio::sync::Mutex::new(store);
        let pace = Pace::new(self.max_bytes_per_sec);
        let mut peers = self.peers.clone();
        let this = &self;
        let mut running = futures::stream::FuturesUnordered::new();
        // Per peer, the rounds running now: their generation and stop.
        let mut stops: HashMap<String, (u64, CancellationToken)> = HashMap::new();
        let mut generation = 0u64;
        let mut listed = true;
        loop {
            let now: Vec<String> = peers.borrow_and_update().clone();
            stops.retain(|peer, (_, stop)| {
                let keep = now.contains(peer);
                if !keep {
                    stop.cancel();
                }
                keep
            });
            for peer in now {
                if stops.contains_key(&peer) {
                    continue;
                }
                generation += 1;
                let stop = shutdown.child_token();
                stops.insert(peer.clone(), (generation, stop.clone()));
                let (watch, start) = match connects.remove(&peer) {
                    Some(w) => (w, first),
                    None => (
                        this.links.watch(&peer),
                        tokio::time::Instant::now() + this.interval,
                    ),
                };
                let (store, pace) = (&store, &pace);
                let (shutdown, born) = (&shutdown, generation);
                // The label the rounds begin with: the one to clear if the
                // peer's node id changes meanwhile.
                let label = this.metrics.peer_label(&peer);
                running.push(Box::pin(async move {
                    // It returns before shutdown only when the peer was
                    // removed (stopped here, or its links watch closed;
                    // it may have been added again since).
                    this.with_peer(&peer, watch, start, store, pace, &stop)
                        .await;
                    if !shutdown.is_cancelled() {
                        this.metrics.forget_anti_entropy(&label);
                        info!(%peer, "anti-entropy rounds with this peer stopped");
                    }
                    (peer, born)
                }));
            }
            tokio::select! {
                r = peers.changed(), if listed => listed = r.is_ok(),
                Some((peer, born)) = futures::StreamExt::next(&mut running), if !running.is_empty() => {
                    // Ended while still listed (removed and added again
                    // faster than this loop looked): the next look starts
                    // its rounds again.
                    if stops.get(&peer).is_some_and(|(g, _)| *g == born) {
                        stops.remove(&peer);
                    }
                }
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// The rounds with one peer, one after the other.
    async fn with_peer(
        &self,
        peer: &str,
        mut connects: watch::Receiver<Connects>,
        first: tokio::time::Instant,
        store: &tokio::sync::Mutex<Store>,
        pace: &Pace,
        shutdown: &CancellationToken,
    ) {
        let mut tick = tokio::time::interval_at(first, self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let why = tokio::select! {
                _ = tick.tick() => Why::Interval,
                changed = connects.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let c = *connects.borrow_and_update();
                    if c.count < 2 {
                        continue;
                    }
                    if !self.settle(c.node_id, shutdown).await {
                        return;
                    }
                    Why::Reconnect
                }
                _ = shutdown.cancelled() => return,
            };
            let mut store = tokio::select! {
                s = store.lock() => s,
                _ = shutdown.cancelled() => return,
            };
            let label = self.metrics.peer_label(peer);
            if why == Why::Reconnect {
                self.metrics
                    .anti_entropy_reconnect_rounds
                    .get_or_create(&label)
                    .inc();
                info!(%peer, "anti-entropy round after a reconnect");
            }
            let mut round = Round::default();
            let result = tokio::select! {
                r = self.round(peer, &mut store, pace, &mut round) => r,
                _ = shutdown.cancelled() => return,
            };
            self.publish(peer, &round, result);
        }
    }

    /// Waits until the stream from the peer `node_id` to this region has
    /// delivered nothing for [`RECONNECT_QUIET`] since the reconnect, at
    /// most [`RECONNECT_MAX_WAIT`]; false at shutdown.
    async fn settle(&self, node_id: u32, shutdown: &CancellationToken) -> bool {
        let reconnected = Instant::now();
        loop {
            let now = Instant::now();
            if now.duration_since(reconnected) >= RECONNECT_MAX_WAIT {
                return true;
            }
            if let Some(active) = self.links.origin_active(node_id)
                && now.duration_since(active.max(reconnected)) >= RECONNECT_QUIET
            {
                return true;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = shutdown.cancelled() => return false,
            }
        }
    }

    /// Counts what a round did, and logs how it ended.
    fn publish(&self, peer: &str, r: &Round, result: Result<(), Failure>) {
        let label = self.metrics.peer_label(peer);
        let m = &self.metrics;
        // What was pulled and repaired counts, even in a round that failed.
        m.anti_entropy_bytes_pulled
            .get_or_create(&label)
            .inc_by(r.bytes);
        m.anti_entropy_pull_seconds
            .get_or_create(&label)
            .inc_by(r.pull_time.as_secs_f64());
        m.anti_entropy_keys_repaired
            .get_or_create(&label)
            .inc_by(r.repaired);
        m.anti_entropy_flushes
            .get_or_create(&label)
            .inc_by(r.flushes);
        m.anti_entropy_keys_dropped
            .get_or_create(&label)
            .inc_by(r.dropped);
        if let Err(e) = result {
            warn!(%peer, error = %e, repaired = r.repaired, "anti-entropy round failed");
            return;
        }
        m.anti_entropy_rounds.get_or_create(&label).inc();
        m.anti_entropy_buckets_compared
            .get_or_create(&label)
            .inc_by(r.buckets_compared);
        m.anti_entropy_buckets_differing
            .get_or_create(&label)
            .inc_by(r.buckets_differing);
        if r.buckets_differing == 0 && r.flushes == 0 && r.dropped == 0 {
            m.anti_entropy_last_clean_round
                .get_or_create(&label)
                .set(unix_seconds());
            debug!(%peer, "anti-entropy: nothing differs");
        } else {
            info!(
                %peer,
                buckets = r.buckets_differing,
                pulled = r.pulled,
                repaired = r.repaired,
                dropped = r.dropped,
                bytes = r.bytes,
                pull_secs = r.pull_time.as_secs_f64(),
                "anti-entropy: repaired from a peer"
            );
        }
    }

    /// One round with `peer`: every database compared, the differing
    /// buckets pulled and applied; what it did is added to `round`, also
    /// when it fails halfway.
    pub async fn round(
        &self,
        peer: &str,
        store: &mut Store,
        pace: &Pace,
        round: &mut Round,
    ) -> Result<(), Failure> {
        let mut client = ReplicationClient::new(dial(peer, &self.auth).await?)
            .max_decoding_message_size(self.max_message);
        for db in crate::store::user_dbs(self.databases) {
            let mut local = local_digests(store, db).await?;
            let reply = client
                .digests(DigestRequest {
                    protocol_version: PROTOCOL_VERSION,
                    mesh: self.mesh.clone(),
                    node_id: self.node_id,
                    db,
                    groups: Vec::new(),
                })
                .await?
                .into_inner();
            // A flush the peer records and this region missed (its origin
            // lost it before it got here): applied first, as the flush
            // script applies any peer's flush, then compared again.
            if db == 0
                && let Some(f) = &self.frontier
            {
                f.reported(peer, reply.delivered.clone());
            }
            // A collected floor no clock could have made (a client wrote
            // it into the peer's Redis) must not drop anything here.
            let collected = if reply.collected.is_empty()
                || hlc::decode(reply.collected.as_bytes())
                    .is_ok_and(|t| self.clock.update_with_timestamp(&t).is_ok())
            {
                reply.collected
            } else {
                warn!(%peer, db, floor = %reply.collected, "anti-entropy: the peer's collected floor is beyond the clock skew limit; ignored");
                String::new()
            };
            let mine = store.flush_floor(db).await?.unwrap_or_default();
            if reply.floor > mine {
                self.flush(peer, db, reply.floor).await?;
                round.flushes += 1;
                local = local_digests(store, db).await?;
            }
            let local_groups = group_digests(&local);
            let remote_groups = reply.digests;
            if remote_groups.len() != local_groups.len() {
                return Err(format!(
                    "the peer sent {} group digests for database {db}, not {}",
                    remote_groups.len(),
                    local_groups.len()
                )
                .into());
            }
            round.buckets_compared += u64::from(META_BUCKETS);
            let groups: Vec<u32> = (0..group_count())
                .filter(|g| local_groups[*g as usize] != remote_groups[*g as usize])
                .collect();
            if groups.is_empty() {
                continue;
            }
            let remote = client
                .digests(DigestRequest {
                    protocol_version: PROTOCOL_VERSION,
                    mesh: self.mesh.clone(),
                    node_id: self.node_id,
                    db,
                    groups: groups.clone(),
                })
                .await?
                .into_inner()
                .digests;
            let wanted: Vec<u32> = groups.iter().flat_map(|g| group_buckets(*g)).collect();
            if remote.len() != wanted.len() {
                return Err(format!(
                    "the peer sent {} bucket digests for {} buckets",
                    remote.len(),
                    wanted.len()
                )
                .into());
            }
            let buckets: Vec<u32> = wanted
                .iter()
                .zip(&remote)
                .filter(|(b, d)| local[**b as usize] != **d)
                .map(|(b, _)| *b)
                .collect();
            round.buckets_differing += buckets.len() as u64;
            if buckets.is_empty() {
                continue;
            }
            let from = From {
                peer,
                db,
                collected: &collected,
            };
            let dropped_before = round.dropped;
            let repaired = self
                .pull(&from, &mut client, store, &buckets, pace, round)
                .await?;
            if repaired == 0 && round.dropped == dropped_before {
                // Nothing here was older, yet the digests differed: one
                // side's stored digests drifted (a record changed by hand).
                // Count this side's in again; the peer does the same in its
                // own rounds.
                store.rebuild_digests(db, &buckets).await?;
            }
        }
        Ok(())
    }

    /// Applies the peer's flush of database `db` stamped `floor`.
    async fn flush(&self, peer: &str, db: u32, floor: String) -> Result<(), Failure> {
        let ts = hlc::decode(floor.as_bytes())?;
        self.clock
            .update_with_timestamp(&ts)
            .map_err(|e| format!("the peer's flush stamp is beyond the clock skew limit: {e}"))?;
        info!(%peer, db, stamp = %floor, "anti-entropy: applying a flush this region missed");
        let (done, outcome) = oneshot::channel();
        let changes = vec![crate::store::flush_change(db, floor)];
        self.apply.send(ApplyJob { changes, done }).await?;
        let outcome = outcome.await?.map_err(|e| e.to_string())?;
        crate::apply::report(&outcome, &self.metrics, peer);
        Ok(())
    }

    /// Pulls the keys of `buckets` from the peer a slice at a time and
    /// applies them; the number of keys repaired. Paced by `pace`: when a
    /// slice has spent the bytes allowed, the next waits, it does not stop.
    async fn pull(
        &self,
        from: &From<'_>,
        client: &mut ReplicationClient<tonic::transport::Channel>,
        store: &mut Store,
        buckets: &[u32],
        pace: &Pace,
        round: &mut Round,
    ) -> Result<u64, Failure> {
        let mut size = match pace.slice_bytes() {
            Some(_) => FIRST_SLICE_BUCKETS,
            None => MAX_SLICE_BUCKETS,
        };
        let (mut bytes_seen, mut buckets_seen) = (0u64, 0u64);
        let mut repaired = 0;
        let mut rest = buckets;
        while !rest.is_empty() {
            let (slice, next) = rest.split_at(size.min(rest.len()));
            let before = round.bytes;
            repaired += self
                .pull_slice(from, client, store, slice, pace, round)
                .await?;
            bytes_seen += round.bytes - before;
            buckets_seen += slice.len() as u64;
            // A slice of about a quarter second of pulling, so that the
            // pacing waits between small pieces, not after a burst.
            if let Some(target) = pace.slice_bytes() {
                let per_bucket = (bytes_seen / buckets_seen).max(1);
                size = ((target / per_bucket) as usize).clamp(1, MAX_SLICE_BUCKETS);
            }
            rest = next;
        }
        Ok(repaired)
    }

    /// Pulls the keys of one slice of buckets and applies them, chunk by
    /// chunk, each chunk paid for before the next is read; then drops what
    /// this region holds there below the peer's collected floor and the
    /// peer lacks. The number of keys repaired.
    async fn pull_slice(
        &self,
        from: &From<'_>,
        client: &mut ReplicationClient<tonic::transport::Channel>,
        store: &mut Store,
        buckets: &[u32],
        pace: &Pace,
        round: &mut Round,
    ) -> Result<u64, Failure> {
        let (peer, db) = (from.peer, from.db);
        let request = SnapshotRequest {
            protocol_version: PROTOCOL_VERSION,
            mesh: self.mesh.clone(),
            node_id: self.node_id,
            buckets_only: true,
            db,
            buckets: buckets.to_vec(),
        };
        let mut tries = 0;
        let (mut chunks, started) = loop {
            let started = tokio::time::Instant::now();
            match client.snapshot(request.clone()).await {
                Ok(r) => break (r.into_inner(), started),
                Err(s) if s.code() == tonic::Code::ResourceExhausted && tries < BUSY_RETRIES => {
                    tries += 1;
                    debug!(db, "the peer is busy sending snapshots; asking again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(s) => return Err(s.into()),
            }
        };
        let mut sent = HashSet::new();
        let result = self
            .apply_chunks(peer, &mut chunks, db, pace, round, &mut sent)
            .await;
        round.pull_time += started.elapsed();
        let repaired = result?;
        if !from.collected.is_empty() {
            round.dropped += self
                .drop_lacking(from, client, store, buckets, &sent)
                .await?;
        }
        Ok(repaired)
    }

    /// Drops the keys this region records in `buckets` with a stamp older
    /// than the peer's collected floor which the peer did not send and
    /// records nothing of (decision 015): the peer turns such a change
    /// away, so holding on would keep the regions different for ever. The
    /// number of keys dropped.
    async fn drop_lacking(
        &self,
        from: &From<'_>,
        client: &mut ReplicationClient<tonic::transport::Channel>,
        store: &mut Store,
        buckets: &[u32],
        sent: &HashSet<Vec<u8>>,
    ) -> Result<u64, Failure> {
        let db = from.db;
        let mut below = store.records_below(db, buckets, from.collected).await?;
        below.retain(|(key, _)| !sent.contains(key));
        let mut dropped = 0;
        for ask in below.chunks(MAX_RECORDS_ASKED) {
            let reply = client
                .records(RecordsRequest {
                    protocol_version: PROTOCOL_VERSION,
                    mesh: self.mesh.clone(),
                    node_id: self.node_id,
                    db,
                    keys: ask.iter().map(|(k, _)| k.clone()).collect(),
                })
                .await;
            let stamps = match reply {
                Ok(r) => r.into_inner().stamps,
                // A peer of an older version: nothing is dropped.
                Err(s) if s.code() == tonic::Code::Unimplemented => return Ok(dropped),
                Err(s) => return Err(s.into()),
            };
            if stamps.len() != ask.len() {
                return Err(format!(
                    "the peer sent {} record stamps for {} keys",
                    stamps.len(),
                    ask.len()
                )
                .into());
            }
            let lacking: Vec<(Vec<u8>, String)> = ask
                .iter()
                .zip(&stamps)
                .filter(|(_, theirs)| theirs.is_empty())
                .map(|(mine, _)| mine.clone())
                .collect();
            if lacking.is_empty() {
                continue;
            }
            let n = store.forget_below(db, from.collected, &lacking).await?;
            if n > 0 {
                info!(
                    peer = %from.peer,
                    db,
                    keys = n,
                    floor = %from.collected,
                    "anti-entropy: dropped keys the peer lacks below its collected floor"
                );
            }
            dropped += n;
        }
        Ok(dropped)
    }

    async fn apply_chunks(
        &self,
        peer: &str,
        chunks: &mut tonic::Streaming<super::wire::pb::SnapshotChunk>,
        db: u32,
        pace: &Pace,
        round: &mut Round,
        sent: &mut HashSet<Vec<u8>>,
    ) -> Result<u64, Failure> {
        let mut applied = 0;
        while let Some(chunk) = chunks.message().await? {
            let bytes = chunk.changes.len() as u64;
            let paid_until = pace.charge(bytes);
            round.bytes += bytes;
            let changes = decode_batch(&chunk.changes)?;
            if let Some(c) = changes.iter().find(|c| c.db != db) {
                return Err(format!(
                    "the peer sent a change of database {} for database {db}",
                    c.db
                )
                .into());
            }
            for c in &changes {
                let ts = hlc::decode(c.stamp.as_bytes())?;
                self.clock
                    .update_with_timestamp(&ts)
                    .map_err(|e| format!("a pulled stamp is beyond the clock skew limit: {e}"))?;
            }
            round.pulled += changes.len() as u64;
            sent.extend(changes.iter().map(|c| c.key.to_vec()));
            let (done, outcome) = oneshot::channel();
            self.apply.send(ApplyJob { changes, done }).await?;
            let outcome = outcome.await?.map_err(|e| e.to_string())?;
            crate::apply::report(&outcome, &self.metrics, peer);
            applied += outcome.applied;
            round.repaired += outcome.applied;
            // The next chunk is read once this one is paid for: the peer's
            // reads wait behind the stream's small buffers meanwhile.
            tokio::time::sleep_until(paid_until).await;
        }
        Ok(applied)
    }
}

/// A token bucket on bytes, shared by every round of an agent: each chunk
/// pulled is paid for after it arrived, and the next waits until the
/// balance is back at zero. The bucket holds at most a tenth of a
/// second of bytes, so a pull of `b` bytes that took `t` seconds (its
/// waits included) never exceeds `limit * (t + 0.1)`.
pub struct Pace {
    /// Bytes per second (0: no limit).
    rate: u64,
    state: Mutex<(f64, tokio::time::Instant)>,
}

/// The most a [`Pace`] holds, in seconds of its rate.
const BURST_SECS: f64 = 0.1;

impl Pace {
    /// A full bucket for `rate` bytes per second (0: no limit).
    pub fn new(rate: u64) -> Self {
        Pace {
            rate,
            state: Mutex::new((rate as f64 * BURST_SECS, tokio::time::Instant::now())),
        }
    }

    /// Takes `bytes` from the bucket; when the balance is back at zero.
    pub fn charge(&self, bytes: u64) -> tokio::time::Instant {
        let now = tokio::time::Instant::now();
        if self.rate == 0 {
            return now;
        }
        let rate = self.rate as f64;
        let mut state = self.state.lock().expect("pace lock");
        let (balance, at) = &mut *state;
        *balance = (*balance + rate * now.duration_since(*at).as_secs_f64()).min(rate * BURST_SECS);
        *at = now;
        *balance -= bytes as f64;
        if *balance >= 0.0 {
            now
        } else {
            now + Duration::from_secs_f64(-*balance / rate)
        }
    }

    /// The bytes a slice should hold: a quarter second of pulling (None
    /// without a limit).
    fn slice_bytes(&self) -> Option<u64> {
        (self.rate > 0).then(|| (self.rate / 4).max(1))
    }
}

/// What the links with peers tell anti-entropy: when this agent's stream
/// to each peer (re)connected, and when each peer's stream to this agent
/// last delivered something. The client and the receiver report; rounds
/// read.
#[derive(Default)]
pub struct PeerLinks {
    connects: Mutex<HashMap<String, watch::Sender<Connects>>>,
    origins: Mutex<HashMap<u32, Origin>>,
}

/// Connections of this agent's stream to one peer.
#[derive(Debug, Default, Clone, Copy)]
pub struct Connects {
    /// Sessions that reached the peer since this process started.
    pub count: u64,
    /// The peer's node id, as it said in `Welcome`.
    pub node_id: u32,
}

/// A peer's stream to this agent.
#[derive(Debug, Clone, Copy)]
struct Origin {
    session: u64,
    connected: bool,
    /// When it connected or last delivered a batch.
    active: Instant,
}

impl PeerLinks {
    /// Tracks the streams to `peers` (addresses as configured).
    pub fn new(peers: &[String]) -> Self {
        let links = PeerLinks::default();
        for p in peers {
            links.add(p);
        }
        links
    }

    /// Tracks the stream to a peer added while running.
    pub fn add(&self, peer: &str) {
        self.connects
            .lock()
            .expect("links lock")
            .entry(peer.to_string())
            .or_insert_with(|| watch::channel(Connects::default()).0);
    }

    /// Forgets a removed peer: whoever follows its connections sees the
    /// watch close. Returns its node id, when a session told it.
    pub fn remove(&self, peer: &str) -> Option<u32> {
        let tx = self.connects.lock().expect("links lock").remove(peer)?;
        let node_id = tx.borrow().node_id;
        (node_id != 0).then_some(node_id)
    }

    /// This agent's stream to `peer` (node `node_id`) is up again, its
    /// catch-up from the metadata done.
    pub fn connected(&self, peer: &str, node_id: u32) {
        if let Some(tx) = self.connects.lock().expect("links lock").get(peer) {
            tx.send_modify(|c| {
                c.count += 1;
                c.node_id = node_id;
            });
        }
    }

    /// Follows the connections of this agent's stream to `peer` (a watch
    /// that is closed already for a peer not tracked).
    pub fn watch(&self, peer: &str) -> watch::Receiver<Connects> {
        match self.connects.lock().expect("links lock").get(peer) {
            Some(tx) => tx.subscribe(),
            None => watch::channel(Connects::default()).1,
        }
    }

    /// The stream of origin `node_id` (its `session`) began.
    pub fn origin_connected(&self, node_id: u32, session: u64) {
        self.origins.lock().expect("links lock").insert(
            node_id,
            Origin {
                session,
                connected: true,
                active: Instant::now(),
            },
        );
    }

    /// The stream of origin `node_id` delivered a batch.
    pub fn origin_delivered(&self, node_id: u32) {
        if let Some(o) = self.origins.lock().expect("links lock").get_mut(&node_id) {
            o.active = Instant::now();
        }
    }

    /// The stream of origin `node_id` (its `session`) ended.
    pub fn origin_ended(&self, node_id: u32, session: u64) {
        if let Some(o) = self.origins.lock().expect("links lock").get_mut(&node_id)
            && o.session == session
        {
            o.connected = false;
        }
    }

    /// When the stream of origin `node_id` connected or last delivered a
    /// batch; None while it is not connected.
    fn origin_active(&self, node_id: u32) -> Option<Instant> {
        let origins = self.origins.lock().expect("links lock");
        origins
            .get(&node_id)
            .filter(|o| o.connected)
            .map(|o| o.active)
    }
}

/// Computes every bucket's digest of every database with keys from the
/// records; the number of buckets computed.
async fn rebuild_all(store: &mut Store, databases: u32) -> Result<u64, crate::store::StoreError> {
    let all: Vec<u32> = (0..META_BUCKETS).collect();
    let mut n = 0;
    for db in crate::store::user_dbs(databases) {
        if store.has_records(db).await? {
            store.rebuild_digests(db, &all).await?;
            n += all.len() as u64;
        }
    }
    Ok(n)
}

/// The digest of every bucket of database `db` as the scripts keep it (""
/// each when the database holds nothing: a `DBSIZE` and an `EXISTS`
/// instead of reading 16384 digests).
pub async fn local_digests(
    store: &mut Store,
    db: u32,
) -> Result<Vec<String>, crate::store::StoreError> {
    if !store.has_records(db).await? {
        return Ok(vec![String::new(); META_BUCKETS as usize]);
    }
    let all: Vec<u32> = (0..META_BUCKETS).collect();
    store.bucket_digests(db, &all).await
}

fn unix_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever the chunk sizes, bytes taken by a puller that waits as told
    /// never exceed the burst plus the rate times the time taken.
    #[tokio::test(start_paused = true)]
    async fn paced_bytes_stay_under_the_rate() {
        let rate = 10_000u64;
        let pace = Pace::new(rate);
        let start = tokio::time::Instant::now();
        let mut taken = 0u64;
        for size in [500u64, 30_000, 1, 7_000, 0, 12_345, 999, 40_000] {
            let until = pace.charge(size);
            taken += size;
            tokio::time::sleep_until(until).await;
            let t = start.elapsed().as_secs_f64();
            assert!(
                taken as f64 <= rate as f64 * (t + BURST_SECS) + 1.0,
                "{taken} bytes in {t} s"
            );
        }
        // Paid for exactly: the burst is all the credit there was.
        let t = start.elapsed().as_secs_f64();
        assert!((taken as f64 / rate as f64 - BURST_SECS - t).abs() < 0.01);
    }

    #[tokio::test(start_paused = true)]
    async fn no_limit_never_waits_and_an_idle_bucket_fills_to_its_burst_only() {
        let free = Pace::new(0);
        let now = tokio::time::Instant::now();
        assert_eq!(free.charge(u64::MAX), now);
        let pace = Pace::new(1000);
        tokio::time::advance(Duration::from_secs(60)).await;
        // A minute idle holds a tenth of a second: 100 bytes free, not 60000.
        let now = tokio::time::Instant::now();
        assert_eq!(pace.charge(100), now);
        assert_eq!(pace.charge(1000), now + Duration::from_secs(1));
    }

    #[test]
    fn only_reconnects_count_and_origins_report_activity() {
        let links = PeerLinks::new(&["http://a".to_string()]);
        let mut rx = links.watch("http://a");
        links.connected("http://a", 7);
        assert!(rx.has_changed().unwrap());
        assert_eq!(rx.borrow_and_update().count, 1);
        links.connected("http://a", 7);
        assert_eq!(rx.borrow_and_update().count, 2);
        links.connected("http://unknown", 9);
        assert_eq!(links.origin_active(7), None);
        links.origin_connected(7, 1);
        let first = links.origin_active(7).unwrap();
        links.origin_delivered(7);
        assert!(links.origin_active(7).unwrap() >= first);
        // An older session ending leaves a newer one connected.
        links.origin_connected(7, 2);
        links.origin_ended(7, 1);
        assert!(links.origin_active(7).is_some());
        links.origin_ended(7, 2);
        assert_eq!(links.origin_active(7), None);
    }
}
