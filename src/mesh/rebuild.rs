//! Rebuilding a region whose Redis restarted empty.
//!
//! A Redis without persistence that restarts has lost its data; it did not
//! delete everything. The tailer notices (a new replication id, an empty
//! snapshot, no metadata, where the agent had followed a Redis before) and,
//! before it reports the snapshot done, pulls every recorded key from a peer
//! (`Snapshot` RPC) and applies it with the usual stamp comparison. Nothing
//! is tombstoned, so the other regions keep their data.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use uhlc::HLC;

use super::dial::dial;
use super::security::PeerAuth;
use super::wire::PROTOCOL_VERSION;
use super::wire::pb::SnapshotRequest;
use super::wire::pb::replication_client::ReplicationClient;
use crate::base::backoff::Backoff;
use crate::base::change::decode_batch;
use crate::base::hlc;
use crate::ops::metrics::Metrics;
use crate::store::Store;

/// Who asks, and where to ask.
pub struct Rebuild {
    /// The peers' gRPC addresses, tried in order (as a reload left them).
    pub peers: tokio::sync::watch::Receiver<Vec<String>>,
    /// This region's node id.
    pub node_id: u32,
    /// The mesh name.
    pub mesh: String,
    /// The agent's clock, which observes every stamp received.
    pub clock: Arc<HLC>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// How the links to peers are secured.
    pub auth: PeerAuth,
    /// The largest message accepted from a peer (`--peer-max-message-mb`).
    pub max_message: usize,
}

impl Rebuild {
    /// Pulls and applies a peer's recorded keys, trying peers in turn until
    /// one succeeds (or, unless `until_done`, after one round). Returns the
    /// number of changes applied, or None on shutdown or when one round
    /// failed.
    pub async fn run(
        &self,
        store: &mut Store,
        until_done: bool,
        shutdown: &CancellationToken,
    ) -> Option<u64> {
        let mut backoff = Backoff::with(Duration::from_millis(200), Duration::from_secs(10));
        loop {
            let peers = self.peers.borrow().clone();
            for peer in &peers {
                match tokio::select! {
                    r = self.pull(peer, store) => r,
                    _ = shutdown.cancelled() => return None,
                } {
                    Ok(applied) => {
                        self.metrics.rebuilds.inc();
                        info!(%peer, applied, "region rebuilt from a peer");
                        return Some(applied);
                    }
                    Err(e) => warn!(%peer, error = %e, "cannot rebuild from this peer"),
                }
            }
            if !until_done {
                error!("no peer could send the region's state; continuing without it");
                return None;
            }
            error!("the local redis lost its data and no peer could send it back yet; retrying");
            if !backoff.wait(shutdown).await {
                return None;
            }
        }
    }

    async fn pull(
        &self,
        peer: &str,
        store: &mut Store,
    ) -> Result<u64, Box<dyn std::error::Error + Send + Sync>> {
        let mut client = ReplicationClient::new(dial(peer, &self.auth).await?)
            .max_decoding_message_size(self.max_message);
        let mut chunks = client
            .snapshot(SnapshotRequest {
                protocol_version: PROTOCOL_VERSION,
                mesh: self.mesh.clone(),
                node_id: self.node_id,
                ..Default::default()
            })
            .await?
            .into_inner();
        let mut applied = 0;
        while let Some(chunk) = chunks.message().await? {
            let changes = decode_batch(&chunk.changes)?;
            let mut newest = None;
            for c in &changes {
                let ts = hlc::decode(c.stamp.as_bytes())?;
                if newest.is_none_or(|n| ts > n) {
                    newest = Some(ts);
                }
            }
            if let Some(ts) = newest
                && let Err(e) = self.clock.update_with_timestamp(&ts)
            {
                return Err(format!("snapshot stamp beyond the clock skew limit: {e}").into());
            }
            let outcome = store.apply(&changes).await?;
            crate::apply::report(&outcome, &self.metrics, peer);
            applied += outcome.applied;
        }
        Ok(applied)
    }
}
