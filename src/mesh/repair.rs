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
//! each of the 16384 metadata buckets (the XOR of a hash of each key the
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

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use uhlc::HLC;

use super::dial::dial;
use super::security::PeerAuth;
use super::wire::pb::replication_client::ReplicationClient;
use super::wire::pb::{DigestRequest, SnapshotRequest};
use super::wire::{PROTOCOL_VERSION, group_buckets, group_count, group_digests};
use crate::apply::ApplyJob;
use crate::base::change::decode_batch;
use crate::base::hlc;
use crate::ops::metrics::Metrics;
use crate::ops::readiness::Readiness;
use crate::store::Store;
use crate::store::layout::META_BUCKETS;

/// Default of `--anti-entropy-interval-secs`.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);

/// What anti-entropy needs.
pub struct AntiEntropy {
    /// The peers' addresses.
    pub peers: Vec<String>,
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
    /// Pulled changes are applied here, like peers' batches.
    pub apply: mpsc::Sender<ApplyJob>,
    /// Rounds start once the first snapshot has been stamped.
    pub ready: Arc<Readiness>,
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
}

type Failure = Box<dyn std::error::Error + Send + Sync>;

impl AntiEntropy {
    /// Runs rounds with every peer, one peer after the other, every
    /// `interval` (the first one interval after the first snapshot was
    /// stamped), until shutdown.
    pub async fn run(self, mut store: Store, shutdown: CancellationToken) {
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
        let mut tick = tokio::time::interval_at(first, self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            for peer in &self.peers {
                let round = tokio::select! {
                    r = self.round(peer, &mut store) => r,
                    _ = shutdown.cancelled() => return,
                };
                let label = Metrics::peer(peer);
                match round {
                    Ok(r) => {
                        let m = &self.metrics;
                        m.anti_entropy_rounds.get_or_create(&label).inc();
                        m.anti_entropy_buckets_compared
                            .get_or_create(&label)
                            .inc_by(r.buckets_compared);
                        m.anti_entropy_buckets_differing
                            .get_or_create(&label)
                            .inc_by(r.buckets_differing);
                        m.anti_entropy_keys_repaired
                            .get_or_create(&label)
                            .inc_by(r.repaired);
                        m.anti_entropy_flushes
                            .get_or_create(&label)
                            .inc_by(r.flushes);
                        if r.buckets_differing == 0 && r.flushes == 0 {
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
                                "anti-entropy: repaired from a peer"
                            );
                        }
                    }
                    Err(e) => warn!(%peer, error = %e, "anti-entropy round failed"),
                }
            }
        }
    }

    /// One round with `peer`: every database compared, the differing
    /// buckets pulled and applied.
    pub async fn round(&self, peer: &str, store: &mut Store) -> Result<Round, Failure> {
        let mut client = ReplicationClient::new(dial(peer, &self.auth).await?)
            .max_decoding_message_size(self.max_message);
        let mut round = Round::default();
        for db in 0..self.databases {
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
            let (pulled, repaired) = self.pull(peer, &mut client, db, buckets.clone()).await?;
            round.pulled += pulled;
            round.repaired += repaired;
            if repaired == 0 {
                // Nothing here was older, yet the digests differed: one
                // side's stored digests drifted (a record changed by hand).
                // Count this side's in again; the peer does the same in its
                // own rounds.
                store.rebuild_digests(db, &buckets).await?;
            }
        }
        Ok(round)
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

    /// Pulls the keys of `buckets` from the peer and applies them: (pulled,
    /// applied).
    async fn pull(
        &self,
        peer: &str,
        client: &mut ReplicationClient<tonic::transport::Channel>,
        db: u32,
        buckets: Vec<u32>,
    ) -> Result<(u64, u64), Failure> {
        let mut chunks = client
            .snapshot(SnapshotRequest {
                protocol_version: PROTOCOL_VERSION,
                mesh: self.mesh.clone(),
                node_id: self.node_id,
                buckets_only: true,
                db,
                buckets,
            })
            .await?
            .into_inner();
        let (mut pulled, mut applied) = (0, 0);
        while let Some(chunk) = chunks.message().await? {
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
            pulled += changes.len() as u64;
            let (done, outcome) = oneshot::channel();
            self.apply.send(ApplyJob { changes, done }).await?;
            let outcome = outcome.await?.map_err(|e| e.to_string())?;
            crate::apply::report(&outcome, &self.metrics, peer);
            applied += outcome.applied;
        }
        Ok((pulled, applied))
    }
}

/// Computes every bucket's digest of every database with keys from the
/// records; the number of buckets computed.
async fn rebuild_all(store: &mut Store, databases: u32) -> Result<u64, crate::store::StoreError> {
    let all: Vec<u32> = (0..META_BUCKETS).collect();
    let mut n = 0;
    for db in 0..databases {
        if store.dbsize(db).await? > 0 {
            store.rebuild_digests(db, &all).await?;
            n += all.len() as u64;
        }
    }
    Ok(n)
}

/// The digest of every bucket of database `db` as the scripts keep it (""
/// each when the database is empty: one `DBSIZE` instead of reading 16384
/// digests).
pub async fn local_digests(
    store: &mut Store,
    db: u32,
) -> Result<Vec<String>, crate::store::StoreError> {
    if store.dbsize(db).await? == 0 {
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
