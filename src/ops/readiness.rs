//! Readiness: what `/readyz` (this region's side) and `/readyz/mesh`
//! (every peer reached too) report.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// Ready once the first snapshot has been stamped (`/readyz`: a sidecar
/// is ready when its own side is synced, whatever remote regions do); the
/// mesh view adds every peer reached once (`/readyz/mesh`).
pub struct Readiness {
    snapshot: AtomicBool,
    snapshot_watch: tokio::sync::watch::Sender<bool>,
    peers: Mutex<Vec<String>>,
    reached: Mutex<HashSet<String>>,
}

impl Readiness {
    /// Tracks the configured peers.
    pub fn new(peers: &[String]) -> Self {
        Readiness {
            snapshot: AtomicBool::new(false),
            snapshot_watch: tokio::sync::watch::channel(false).0,
            peers: Mutex::new(peers.to_vec()),
            reached: Mutex::new(HashSet::new()),
        }
    }

    /// The first full sync has been stamped.
    pub fn snapshot_done(&self) {
        self.snapshot.store(true, Ordering::SeqCst);
        self.snapshot_watch.send_replace(true);
    }

    /// Waits until the first full sync has been stamped.
    pub async fn wait_snapshot(&self) {
        let mut rx = self.snapshot_watch.subscribe();
        let _ = rx.wait_for(|done| *done).await;
    }

    /// The peers a reload left: a new one counts once reached, a removed
    /// one no longer does.
    pub fn set_peers(&self, peers: &[String]) {
        *self.peers.lock().expect("readiness lock") = peers.to_vec();
        self.reached
            .lock()
            .expect("readiness lock")
            .retain(|p| peers.contains(p));
    }

    /// A peer answered a handshake.
    pub fn peer_reached(&self, peer: &str) {
        self.reached
            .lock()
            .expect("readiness lock")
            .insert(peer.to_string());
    }

    /// `None` when this region's side is ready (the first sync with the
    /// local Redis stamped), else what is still missing.
    pub fn missing(&self) -> Option<String> {
        (!self.snapshot.load(Ordering::SeqCst))
            .then(|| "initial sync with the local redis".to_string())
    }

    /// `None` when ready and every peer has been reached once, else what
    /// is still missing.
    pub fn mesh_missing(&self) -> Option<String> {
        let mut missing: Vec<String> = self.missing().into_iter().collect();
        let peers = self.peers.lock().expect("readiness lock").clone();
        let reached = self.reached.lock().expect("readiness lock");
        for p in &peers {
            if !reached.contains(p) {
                missing.push(format!("peer {p}"));
            }
        }
        (!missing.is_empty()).then(|| missing.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_needs_the_snapshot_and_the_mesh_view_every_peer() {
        let r = Readiness::new(&["http://a".into(), "http://b".into()]);
        assert!(r.missing().unwrap().contains("initial sync"));
        assert!(r.mesh_missing().unwrap().contains("initial sync"));
        r.snapshot_done();
        assert_eq!(r.missing(), None);
        r.peer_reached("http://a");
        assert_eq!(r.mesh_missing().unwrap(), "peer http://b");
        r.peer_reached("http://b");
        assert_eq!(r.mesh_missing(), None);
        r.set_peers(&["http://b".into(), "http://c".into()]);
        assert_eq!(r.mesh_missing().unwrap(), "peer http://c");
        r.peer_reached("http://c");
        assert_eq!(r.mesh_missing(), None);
    }
}
