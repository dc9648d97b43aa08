//! What the agent keeps in its data directory: the node id it belongs to,
//! and its progress (peers' acknowledged stamps, the replication position
//! up to which everything has been stamped), written as it moves.

use std::path::Path;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::error;

use crate::base::position;
use crate::mesh::acklog;
use crate::mesh::outbox::Outbox;

/// Checks the data directory `dir` and records `node_id` in it, so that a
/// data directory is never reused by another node by mistake. The error
/// says what is wrong with the directory.
pub(super) fn claim(dir: &Path, node_id: u32) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create it: {e}"))?;
    let id_file = dir.join("node-id");
    match std::fs::read_to_string(&id_file) {
        Ok(s) if s.trim() == node_id.to_string() => Ok(()),
        Ok(s) => Err(format!(
            "it belongs to node {}, not node {node_id}; use another --data-dir",
            s.trim(),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::write(&id_file, format!("{node_id}\n"))
                .map_err(|e| format!("cannot write {}: {e}", id_file.display()))
        }
        Err(e) => Err(format!("cannot read {}: {e}", id_file.display())),
    }
}

/// Writes the agent's progress to the data directory when it changed, and
/// once more at shutdown: the peers' acknowledged stamps and the
/// replication position up to which everything has been stamped.
pub(super) async fn persist_progress(
    outbox: Arc<Outbox>,
    mut position: tokio::sync::watch::Receiver<Option<position::Position>>,
    data_dir: std::path::PathBuf,
    shutdown: CancellationToken,
) {
    let mut last_acks = outbox.acked_stamps();
    let mut last_position = None;
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    // The stamper (which sends positions) stops before the links to peers
    // at a graceful shutdown: acks go on arriving, and are recorded, until
    // `shutdown`.
    let mut stamping = true;
    loop {
        // Positions are written as they come (about once a second, and at
        // once after a full sync, so a restart soon after it can resume);
        // acks once a second.
        let stop = tokio::select! {
            _ = tick.tick() => false,
            r = position.changed(), if stamping => {
                stamping = r.is_ok();
                false
            }
            _ = shutdown.cancelled() => true,
        };
        let acks = outbox.acked_stamps();
        if acks != last_acks {
            match acklog::save(&data_dir, &acks) {
                Ok(()) => last_acks = acks,
                Err(e) => {
                    error!(error = %e, "cannot record peers' acknowledgements; after a crash more will be re-shipped")
                }
            }
        }
        let p = position.borrow_and_update().clone();
        if p != last_position
            && let Some(pos) = &p
        {
            match position::save(&data_dir, pos) {
                Ok(()) => last_position = p,
                Err(e) => {
                    error!(error = %e, "cannot record the replication position; a restart will do a full resync")
                }
            }
        }
        if stop {
            return;
        }
    }
}
