//! Peers added and removed while the agent runs (decision 023).
//!
//! On SIGHUP the agent reads its configuration again, as at start (the
//! file named by `--config`, the environment, the flags), and takes its
//! new peer list; every other setting keeps its running value until a
//! restart, and a reload that changed one says so. A configuration that
//! no longer validates is refused with the reason, and nothing changes.
//!
//! A peer added gets everything this region recorded: the outbox marks it
//! for a catch-up from the metadata at its first session (every change
//! this node stamped, then the batches after), its anti-entropy rounds
//! begin, and the tombstone frontier waits for its first report. A peer
//! removed stops being served at once: its sender and anti-entropy rounds
//! end, the outbox no longer keeps batches for it, it no longer holds
//! tombstones back nor `/readyz/mesh`, and its metric series go.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use super::config::{Config, ConfigError};
use crate::mesh::client::{self, Identity};
use crate::mesh::frontier::Frontier;
use crate::mesh::outbox::Outbox;
use crate::mesh::repair::PeerLinks;
use crate::ops::metrics::Metrics;
use crate::ops::readiness::Readiness;

/// Reads the configuration again, the way the agent was started.
pub type Reload = Box<dyn Fn() -> Result<Config, ConfigError> + Send + Sync>;

/// The per-peer parts of a running agent, and the senders it runs.
pub struct Membership {
    /// The peer list anti-entropy, the stamper and rebuilds read.
    pub peers: watch::Sender<Vec<String>>,
    /// Batches awaiting each peer's acknowledgement.
    pub outbox: Arc<Outbox>,
    /// The links' connections, for anti-entropy.
    pub links: Arc<PeerLinks>,
    /// `/readyz/mesh`.
    pub ready: Arc<Readiness>,
    /// Tombstone collection's view of the peers.
    pub frontier: Arc<Frontier>,
    /// Per-peer series.
    pub metrics: Arc<Metrics>,
    /// Who this agent is, for its senders.
    pub me: Identity,
    /// Where senders run.
    pub tracker: TaskTracker,
    /// The agent's shutdown.
    pub shutdown: CancellationToken,
    /// The node ids the configuration gives, by peer address.
    ids: BTreeMap<String, u32>,
    /// The running senders, by peer address.
    senders: HashMap<String, (CancellationToken, JoinHandle<()>)>,
}

/// What a change of the peer list did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changed {
    /// Peers now served that were not.
    pub added: Vec<String>,
    /// Peers no longer served.
    pub removed: Vec<String>,
}

impl Membership {
    /// The membership of an agent whose outbox, links, readiness and
    /// frontier already count the peers in `peers` (and whose metrics label
    /// them with the node ids `ids` gives); starts their senders.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        peers: watch::Sender<Vec<String>>,
        ids: BTreeMap<String, u32>,
        outbox: Arc<Outbox>,
        links: Arc<PeerLinks>,
        ready: Arc<Readiness>,
        frontier: Arc<Frontier>,
        metrics: Arc<Metrics>,
        me: Identity,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) -> Membership {
        let mut m = Membership {
            peers,
            outbox,
            links,
            ready,
            frontier,
            metrics,
            me,
            tracker,
            shutdown,
            ids,
            senders: HashMap::new(),
        };
        let peers = m.peers.borrow().clone();
        for peer in peers {
            m.spawn_sender(&peer);
        }
        m
    }

    fn spawn_sender(&mut self, peer: &str) {
        let stop = self.shutdown.child_token();
        // A session of its own: a peer removed and added again still
        // remembers what the earlier sender's session delivered, which
        // this one's sequence numbers do not continue.
        let me = client::Identity {
            session: rand::random(),
            ..self.me.clone()
        };
        let task = self.tracker.spawn(client::run(
            client::Peer {
                address: peer.to_string(),
                node_id: self.ids.get(peer).copied(),
            },
            me,
            self.outbox.clone(),
            self.metrics.clone(),
            self.ready.clone(),
            self.links.clone(),
            stop.clone(),
        ));
        self.senders.insert(peer.to_string(), (stop, task));
    }

    /// Serves exactly `wanted` from now on, with the node ids `ids` gives
    /// (a peer whose id changed is served again, as a new one).
    pub async fn change(&mut self, wanted: &[String], ids: &BTreeMap<String, u32>) -> Changed {
        let renamed: Vec<String> = wanted
            .iter()
            .filter(|p| self.ids.get(*p) != ids.get(*p) && self.senders.contains_key(*p))
            .cloned()
            .collect();
        if !renamed.is_empty() {
            let kept: Vec<String> = self
                .peers
                .borrow()
                .iter()
                .filter(|p| !renamed.contains(p))
                .cloned()
                .collect();
            let ids = self.ids.clone();
            Box::pin(self.change(&kept, &ids)).await;
        }
        self.ids = ids.clone();
        let current = self.peers.borrow().clone();
        let changed = Changed {
            added: wanted
                .iter()
                .filter(|p| !current.contains(p))
                .cloned()
                .collect(),
            removed: current
                .iter()
                .filter(|p| !wanted.contains(p))
                .cloned()
                .collect(),
        };
        // Added: every part counts the peer before anything looks it up.
        self.metrics.label_peers(&changed.added, ids);
        for peer in &changed.added {
            self.outbox.add_peer(peer);
            self.links.add(peer);
            self.frontier.add_peer(peer);
            self.spawn_sender(peer);
            info!(%peer, "peer added: catching it up on everything this region recorded");
            if !ids.contains_key(peer) {
                warn!(%peer, "peer given without its node id: its outgoing metrics are labelled with the address; write it ID=URL");
            }
        }
        self.ready.set_peers(wanted);
        // Anti-entropy starts and stops its rounds, the stamper and
        // rebuilds take the new list.
        self.peers.send_replace(wanted.to_vec());
        for peer in &changed.removed {
            if let Some((stop, task)) = self.senders.remove(peer) {
                stop.cancel();
                let _ = task.await;
            }
            self.outbox.remove_peer(peer);
            self.frontier.remove_peer(peer);
            self.metrics.forget_peer(peer);
            if let Some(node_id) = self.links.remove(peer) {
                self.metrics.forget_origin(node_id);
            }
            info!(%peer, "peer removed: no longer served, its state and metrics dropped");
        }
        changed
    }

    /// Reads the configuration again and takes its peer list; anything
    /// else that changed is reported as waiting for a restart.
    pub async fn reload(&mut self, reload: &Reload, running: &Config) {
        let outcome = |o: &str| Metrics::outcome(o);
        let new = match reload() {
            Ok(c) => c,
            Err(e) => {
                self.metrics
                    .config_reloads
                    .get_or_create(&outcome("refused"))
                    .inc();
                error!(error = %e, "configuration reload refused; the peers stay as they were");
                return;
            }
        };
        let others_changed = {
            let mut a = running.clone();
            let mut b = new.clone();
            a.peers.clear();
            b.peers.clear();
            a.peer_ids.clear();
            b.peer_ids.clear();
            format!("{a:?}") != format!("{b:?}")
        };
        if others_changed {
            warn!(
                "the configuration changed more than the peers; only the peer list is reloaded, the rest takes effect at the next restart"
            );
        }
        let changed = self.change(&new.peers, &new.peer_ids).await;
        self.metrics
            .config_reloads
            .get_or_create(&outcome("applied"))
            .inc();
        info!(
            added = changed.added.len(),
            removed = changed.removed.len(),
            peers = new.peers.len(),
            "configuration reloaded"
        );
    }
}
