//! Readiness: what `/readyz` reports.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// Ready once the first snapshot has been stamped and every peer has been
/// reached once.
pub struct Readiness {
    snapshot: AtomicBool,
    snapshot_watch: tokio::sync::watch::Sender<bool>,
    peers: Vec<String>,
    reached: Mutex<HashSet<String>>,
}

impl Readiness {
    /// Tracks the configured peers.
    pub fn new(peers: &[String]) -> Self {
        Readiness {
            snapshot: AtomicBool::new(false),
            snapshot_watch: tokio::sync::watch::channel(false).0,
            peers: peers.to_vec(),
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

    /// A peer answered a handshake.
    pub fn peer_reached(&self, peer: &str) {
        self.reached
            .lock()
            .expect("readiness lock")
            .insert(peer.to_string());
    }

    /// `None` when ready, else what is still missing.
    pub fn missing(&self) -> Option<String> {
        let mut missing = Vec::new();
        if !self.snapshot.load(Ordering::SeqCst) {
            missing.push("initial sync with the local redis".to_string());
        }
        let reached = self.reached.lock().expect("readiness lock");
        for p in &self.peers {
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
    fn ready_needs_snapshot_and_every_peer() {
        let r = Readiness::new(&["http://a".into(), "http://b".into()]);
        assert!(r.missing().unwrap().contains("initial sync"));
        r.snapshot_done();
        r.peer_reached("http://a");
        assert_eq!(r.missing().unwrap(), "peer http://b");
        r.peer_reached("http://b");
        assert_eq!(r.missing(), None);
    }
}
