//! The sending side: one task per peer streams this region's batches to it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::dial::{DialError, dial};
use super::security::PeerAuth;
use super::wire::PROTOCOL_VERSION;
use super::wire::pb::replication_client::ReplicationClient;
use super::wire::pb::{Batch, Hello, OriginMessage, PeerMessage, origin_message, peer_message};
use super::wire::{encode_for_peers, max_payload};
use crate::base::backoff::Backoff;
use crate::mesh::outbox::Outbox;
use crate::mesh::repair::PeerLinks;
use crate::ops::metrics::Metrics;
use crate::ops::readiness::Readiness;
use crate::store::Store;

/// Most batches sent to a peer ahead of its acks.
const WINDOW: u64 = 32;

/// Who this agent is, as told in `Hello`, and where a catch-up reads from.
#[derive(Clone)]
pub struct Identity {
    /// The local master (catch-ups read this node's changes back from it).
    pub locator: crate::store::locator::Locator,
    /// Number of databases of the local Redis.
    pub databases: u32,
    /// This region's node id.
    pub node_id: u32,
    /// The mesh name.
    pub mesh: String,
    /// Random per sender: a receiver keeps what a session delivered, and
    /// a new session starts from nothing.
    pub session: u64,
    /// How the links to peers are secured.
    pub auth: PeerAuth,
    /// The largest message a peer accepts (`--peer-max-message-mb`).
    pub max_message: usize,
    /// The key filters' fingerprint (the same in every region).
    pub key_filter: String,
}

/// Why a session with a peer ended.
#[derive(Debug, thiserror::Error)]
enum SessionEnd {
    #[error("{0}")]
    Connect(#[from] DialError),
    #[error("peer refused: {0}")]
    Refused(tonic::Status),
    #[error("stream: {0}")]
    Stream(tonic::Status),
    #[error("peer closed the stream")]
    Closed,
    #[error("peer is misconfigured: {0}")]
    Misconfigured(String),
    #[error("peer acknowledged batch {claimed}, but only {sent} were sent to it; not trusted")]
    AckedBeyondSent { claimed: u64, sent: u64 },
    #[error("shutdown")]
    Shutdown,
    #[error("the outbox dropped batches this peer had not acknowledged; catching up")]
    Overflowed,
    #[error("catch-up: {0}")]
    CatchUp(String),
}

/// A peer to stream to.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Where it listens.
    pub address: String,
    /// Its node id, when the configuration names it (`ID=URL`): a peer
    /// that says another one in `Welcome` is refused.
    pub node_id: Option<u32>,
}

/// Streams batches to one peer until shutdown, reconnecting with backoff.
pub async fn run(
    target: Peer,
    me: Identity,
    outbox: Arc<Outbox>,
    metrics: Arc<Metrics>,
    ready: Arc<Readiness>,
    links: Arc<PeerLinks>,
    shutdown: CancellationToken,
) {
    let peer = target.address.clone();
    let label = metrics.peer_label(&peer);
    let mut backoff = Backoff::with(Duration::from_millis(100), Duration::from_secs(10));
    // The highest batch sent to this peer by this process: what it may
    // acknowledge.
    let mut sent_high = outbox.acked(&peer);
    loop {
        let started = Instant::now();
        let end = session(
            &target,
            &me,
            &outbox,
            &metrics,
            Told {
                ready: &ready,
                links: &links,
            },
            &mut sent_high,
            &shutdown,
        )
        .await;
        metrics.peer_connected.get_or_create(&label).set(0);
        outbox.set_connected(&peer, false);
        match end {
            SessionEnd::Shutdown => return,
            SessionEnd::Misconfigured(why) => {
                error!(%peer, %why, "peer refused this agent; fix the configuration")
            }
            e @ SessionEnd::AckedBeyondSent { .. } => {
                metrics
                    .peer_refused
                    .get_or_create(&Metrics::reason("acked_beyond_sent"))
                    .inc();
                error!(%peer, reason = %e, "peer claims more than it can know; its session is ended and nothing is dropped for it")
            }
            SessionEnd::Refused(status)
                if status.code() == tonic::Code::AlreadyExists
                    || status.code() == tonic::Code::FailedPrecondition
                        && !status.message().contains("batch") =>
            {
                error!(%peer, reason = %status.message(), "peer refused this agent")
            }
            other => warn!(%peer, reason = %other, "peer session ended"),
        }
        if started.elapsed() > Duration::from_secs(10) {
            backoff.reset(Duration::from_millis(100));
        }
        if !backoff.wait(&shutdown).await {
            return;
        }
    }
}

/// Who is told when a session reached its peer.
struct Told<'a> {
    /// `/readyz/mesh`: the peer was reached once.
    ready: &'a Readiness,
    /// Anti-entropy: a reconnect starts a round with the peer.
    links: &'a PeerLinks,
}

async fn session(
    target: &Peer,
    me: &Identity,
    outbox: &Outbox,
    metrics: &Metrics,
    told: Told<'_>,
    sent_high: &mut u64,
    shutdown: &CancellationToken,
) -> SessionEnd {
    let peer = target.address.as_str();
    let label = metrics.peer_label(peer);
    let channel = tokio::select! {
        c = dial(peer, &me.auth) => match c {
            Ok(c) => c,
            Err(e @ DialError::Url { .. }) => return SessionEnd::Misconfigured(e.to_string()),
            Err(e) => return SessionEnd::Connect(e),
        },
        _ = shutdown.cancelled() => return SessionEnd::Shutdown,
    };
    let mut client = ReplicationClient::new(channel)
        .max_decoding_message_size(me.max_message)
        .max_encoding_message_size(me.max_message);
    let (tx, rx) = mpsc::channel::<OriginMessage>(WINDOW as usize + 1);
    let hello = OriginMessage {
        kind: Some(origin_message::Kind::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            mesh: me.mesh.clone(),
            node_id: me.node_id,
            session: me.session,
            databases: me.databases,
            max_key_elements: crate::store::max_key_elements(),
            metadata_db: Some(crate::store::metadata_db()),
            key_filter: Some(me.key_filter.clone()),
        })),
    };
    if tx.send(hello).await.is_err() {
        return SessionEnd::Closed;
    }
    let mut inbound = tokio::select! {
        r = client.replicate(ReceiverStream::new(rx)) => match r {
            Ok(r) => r.into_inner(),
            Err(s) => return SessionEnd::Refused(s),
        },
        _ = shutdown.cancelled() => return SessionEnd::Shutdown,
    };
    let welcome = match inbound.message().await {
        Ok(Some(m)) => match m.kind {
            Some(peer_message::Kind::Welcome(w)) => w,
            _ => return SessionEnd::Misconfigured("first answer was not Welcome".into()),
        },
        Ok(None) => return SessionEnd::Closed,
        Err(s) => return SessionEnd::Refused(s),
    };
    if welcome.node_id == me.node_id {
        return SessionEnd::Misconfigured(format!("peer uses this agent's node id {}", me.node_id));
    }
    if let Some(id) = target.node_id
        && welcome.node_id != id
    {
        return SessionEnd::Misconfigured(format!(
            "peer is node {}, but the configuration names node {id} at this address",
            welcome.node_id
        ));
    }
    if welcome.mesh != me.mesh {
        return SessionEnd::Misconfigured(format!("peer is in mesh {:?}", welcome.mesh));
    }
    if welcome.acked_seq > *sent_high {
        return SessionEnd::AckedBeyondSent {
            claimed: welcome.acked_seq,
            sent: *sent_high,
        };
    }
    outbox.ack(peer, welcome.acked_seq);
    if let Some(c) = outbox.start_catch_up(peer) {
        info!(%peer, floor = %c.floor, covered = c.covered, "the outbox overflowed for this peer; catching up from the metadata");
        match catch_up(peer, me, &c.floor, &tx, &mut inbound, metrics, shutdown).await {
            Ok(()) => outbox.catch_up_done(peer, &c),
            Err(end) => {
                outbox.mark_overflowed(peer);
                return end;
            }
        }
    }
    let mut acked = outbox.acked(peer);
    let mut sent = acked;
    told.ready.peer_reached(peer);
    outbox.set_connected(peer, true);
    metrics.peer_connected.get_or_create(&label).set(1);
    info!(%peer, peer_node = welcome.node_id, acked, "peer connected");
    // After the catch-up, with the outbox's re-sends under way: anti-entropy
    // starts a round with this peer when this is a reconnect.
    told.links.connected(peer, welcome.node_id);
    let mut latest = outbox.subscribe();
    loop {
        if outbox.is_overflowed(peer) {
            return SessionEnd::Overflowed;
        }
        // Fill the window.
        while sent < acked + WINDOW {
            let Some(batch) = outbox.next_after(sent) else {
                // Nothing more, or the next batch was dropped: the peer
                // catches up from the metadata (never across the gap).
                if outbox.is_overflowed(peer) {
                    return SessionEnd::Overflowed;
                }
                break;
            };
            let msg = OriginMessage {
                kind: Some(origin_message::Kind::Batch(Batch {
                    seq: batch.seq,
                    changes: batch.payload.to_vec(),
                    count: batch.count,
                    catch_up: false,
                })),
            };
            if tx.send(msg).await.is_err() {
                return SessionEnd::Closed;
            }
            metrics
                .changes_shipped
                .get_or_create(&label)
                .inc_by(batch.count as u64);
            metrics
                .peer_sent_bytes
                .get_or_create(&label)
                .inc_by(batch.payload.len() as u64);
            sent = batch.seq;
            *sent_high = (*sent_high).max(sent);
        }
        tokio::select! {
            m = inbound.message() => match m {
                Ok(Some(m)) => {
                    if let Some(peer_message::Kind::Ack(a)) = &m.kind
                        && a.seq > sent
                    {
                        return SessionEnd::AckedBeyondSent { claimed: a.seq, sent };
                    }
                    if let Some(peer_message::Kind::Ack(a)) = m.kind
                        && a.seq > acked
                    {
                        metrics.batches_acked.get_or_create(&label).inc_by(a.seq - acked);
                        acked = a.seq;
                        outbox.ack(peer, a.seq);
                    }
                }
                Ok(None) => return SessionEnd::Closed,
                Err(s) => return SessionEnd::Stream(s),
            },
            r = latest.changed() => {
                if r.is_err() {
                    return SessionEnd::Shutdown;
                }
            }
            _ = shutdown.cancelled() => return SessionEnd::Shutdown,
        }
    }
}

/// Sends this node's changes recorded after `floor` (read back from the
/// metadata), one catch-up batch at a time, each acknowledged before the
/// next.
async fn catch_up(
    peer: &str,
    me: &Identity,
    floor: &str,
    tx: &mpsc::Sender<OriginMessage>,
    inbound: &mut tonic::Streaming<PeerMessage>,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) -> Result<(), SessionEnd> {
    let (batches, mut read) = mpsc::channel::<Vec<crate::base::change::Change>>(2);
    let mut store = Store::new(me.locator.clone());
    let (databases, node_id, floor_owned) = (me.databases, me.node_id, floor.to_string());
    let reader = tokio::spawn(async move {
        for db in crate::store::user_dbs(databases) {
            store
                .read_recorded(db, 512, Some((&floor_owned, node_id)), &batches)
                .await?;
        }
        Ok::<(), crate::store::StoreError>(())
    });
    let label = metrics.peer_label(peer);
    while let Some(changes) = read.recv().await {
        let max = max_payload(me.max_message);
        for (payload, range) in encode_for_peers(&changes, max, metrics, "catch-up") {
            let count = range.len() as u32;
            metrics
                .peer_sent_bytes
                .get_or_create(&label)
                .inc_by(payload.len() as u64);
            let msg = OriginMessage {
                kind: Some(origin_message::Kind::Batch(Batch {
                    seq: 0,
                    changes: payload,
                    count,
                    catch_up: true,
                })),
            };
            if tx.send(msg).await.is_err() {
                return Err(SessionEnd::Closed);
            }
            let answer = tokio::select! {
                m = inbound.message() => m,
                _ = shutdown.cancelled() => return Err(SessionEnd::Shutdown),
            };
            match answer {
                Ok(Some(PeerMessage {
                    kind: Some(peer_message::Kind::Ack(a)),
                })) if a.seq == 0 => {}
                Ok(Some(other)) => {
                    return Err(SessionEnd::CatchUp(format!("unexpected answer {other:?}")));
                }
                Ok(None) => return Err(SessionEnd::Closed),
                Err(s) => return Err(SessionEnd::Stream(s)),
            }
            metrics
                .catch_up_changes
                .get_or_create(&label)
                .inc_by(count as u64);
            metrics
                .changes_shipped
                .get_or_create(&label)
                .inc_by(count as u64);
        }
    }
    match reader.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(SessionEnd::CatchUp(e.to_string())),
        Err(e) => Err(SessionEnd::CatchUp(e.to_string())),
    }
}
