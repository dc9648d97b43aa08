//! The applier: writes peers' changes into the local Redis.
//!
//! One task owns the applier's Redis connection; receivers of every peer
//! stream hand it batches through a bounded channel and wait for the result.
//! A batch is applied by one atomic script per database, each change only if
//! its stamp is newer than the key's recorded stamp.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::base::backoff::Backoff;
use crate::base::change::Change;
use crate::ops::metrics::Metrics;
use crate::ops::readiness::Readiness;
use crate::store::guard::repair_buckets_of;
use crate::store::{ApplyOutcome, Store, StoreError};

/// A batch to apply and where to send the result.
pub struct ApplyJob {
    /// The changes, already checked.
    pub changes: Vec<Change>,
    /// The outcome (an error only for failures retrying cannot fix).
    pub done: oneshot::Sender<Result<ApplyOutcome, Arc<StoreError>>>,
}

/// Applies jobs until the channel closes or shutdown. Connection failures
/// and timeouts are retried with backoff (the batch waits; the peer stream
/// stalls); timeouts are counted in `metrics.redis_timeouts`.
///
/// Nothing is applied before the first snapshot has been stamped: local
/// writes made while the agent was down get their stamps first, instead of
/// being overwritten unseen by peers' changes that reached us earlier.
pub async fn run(
    mut store: Store,
    mut rx: mpsc::Receiver<ApplyJob>,
    ready: Arc<Readiness>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    tokio::select! {
        _ = ready.wait_snapshot() => {}
        _ = shutdown.cancelled() => return,
    }
    loop {
        let job = tokio::select! {
            j = rx.recv() => j,
            _ = shutdown.cancelled() => return,
        };
        let Some(job) = job else { return };
        let mut backoff = Backoff::new();
        let result = loop {
            let started = std::time::Instant::now();
            let applied = store.apply(&job.changes).await;
            metrics.apply_script_seconds.observe(started.elapsed());
            match applied {
                Ok(o) => break Ok(o),
                Err(e) if e.is_retryable() => {
                    e.count("apply", &metrics);
                    warn!(error = %e, "applying a batch failed; retrying");
                    if !backoff.wait(&shutdown).await {
                        return;
                    }
                }
                Err(e) if e.is_wrong_type() => {
                    // A client overwrote a metadata bucket of the batch.
                    let keys = job.changes.iter().map(|c| (c.db, c.key.as_slice()));
                    let any = repair_buckets_of(&mut store, keys, &metrics).await;
                    if !any {
                        warn!(error = %e, "applying met a key of the wrong type; retrying");
                    }
                    if !backoff.wait(&shutdown).await {
                        return;
                    }
                }
                Err(e) => break Err(Arc::new(e)),
            }
        };
        let _ = job.done.send(result);
    }
}

/// Counts and logs what an outcome holds besides applied and older
/// changes: changes written without what this server cannot hold, changes
/// set aside (each logged with its key), and collections whose pieces were
/// missing. `peer` names where the changes came from.
pub fn report(outcome: &ApplyOutcome, metrics: &Metrics, peer: &str) {
    let label = Metrics::peer(peer);
    if outcome.degraded > 0 {
        metrics
            .changes_degraded
            .get_or_create(&label)
            .inc_by(outcome.degraded);
        warn!(
            peer,
            changes = outcome.degraded,
            "hashes with field expiries applied without them: this server has no field expiry (Redis 7.4+); fields already expired were left out"
        );
    }
    for q in &outcome.quarantined {
        metrics.changes_quarantined.get_or_create(&label).inc();
        warn!(
            peer,
            db = q.db,
            key = %String::from_utf8_lossy(&q.key),
            stamp = %q.stamp,
            why = %q.why,
            "change quarantined: not applied, the key keeps its value"
        );
    }
    if outcome.incomplete > 0 {
        metrics.large_keys_incomplete.inc_by(outcome.incomplete);
        warn!(
            peer,
            keys = outcome.incomplete,
            "pieces of a large key are missing (dropped from a full outbox); it is not applied until it arrives whole"
        );
    }
}
