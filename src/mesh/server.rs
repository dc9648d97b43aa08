//! The receiving side: accepts origins' streams, checks every batch, applies
//! it through the applier and acknowledges it.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use futures::Stream;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, error, info, info_span, warn};
use uhlc::HLC;

use super::listener::{PeerConn, Refusals};
use super::security::{TlsMode, binds_node_der};
use super::wire::PROTOCOL_VERSION;
use super::wire::pb::replication_server::Replication;
use super::wire::pb::{
    Ack, DigestReply, DigestRequest, OriginMessage, PeerMessage, RecordsReply, RecordsRequest,
    SnapshotChunk, SnapshotRequest, Welcome, origin_message, peer_message,
};
use crate::apply::ApplyJob;
use crate::base::change::{Change, decode_batch};
use crate::base::hlc;
use crate::ops::metrics::Metrics;

/// Per origin node: its current session and the last batch applied from it.
#[derive(Default)]
struct Origins {
    sessions: HashMap<u32, (u64, u64, bool)>,
}

/// The gRPC service.
pub struct Receiver {
    locator: crate::store::locator::Locator,
    node_id: u32,
    mesh: String,
    databases: u32,
    clock: Arc<HLC>,
    apply: mpsc::Sender<ApplyJob>,
    metrics: Arc<Metrics>,
    origins: Arc<Mutex<Origins>>,
    /// With mutual TLS, a caller's node id must be in its certificate.
    tls: Option<TlsMode>,
    refusals: Refusals,
    /// Places for concurrent `Snapshot` streams.
    snapshots: Arc<tokio::sync::Semaphore>,
    /// The largest message a peer accepts: snapshot chunks stay under it.
    max_message: usize,
    /// Told when an origin's stream begins, delivers and ends (anti-entropy
    /// waits for it after a reconnect).
    links: Arc<super::repair::PeerLinks>,
    /// What this node delivered, told to peers in `Digests` replies.
    frontier: Option<Arc<super::frontier::Frontier>>,
    /// Which keys travel (the same in every region).
    key_filter: crate::base::filter::KeyFilter,
}

/// Most `Snapshot` streams served at once; more are refused (busy) and the
/// caller tries another peer or waits.
pub const CONCURRENT_SNAPSHOTS: usize = 2;

impl Receiver {
    /// A receiver applying through `apply`, reading `client`'s Redis for snapshots.
    pub fn new(
        locator: crate::store::locator::Locator,
        node_id: u32,
        mesh: String,
        databases: u32,
        clock: Arc<HLC>,
        apply: mpsc::Sender<ApplyJob>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Receiver {
            locator,
            node_id,
            mesh,
            databases,
            clock,
            apply,
            refusals: Refusals::new(metrics.clone()),
            metrics,
            origins: Arc::new(Mutex::new(Origins::default())),
            tls: None,
            snapshots: Arc::new(tokio::sync::Semaphore::new(CONCURRENT_SNAPSHOTS)),
            max_message: super::wire::DEFAULT_MAX_MESSAGE_BYTES,
            links: Arc::default(),
            frontier: None,
            key_filter: Default::default(),
        }
    }

    /// Origins must state the same key filters; a change of a key they
    /// keep local is not applied.
    pub fn with_key_filter(mut self, filter: crate::base::filter::KeyFilter) -> Self {
        self.key_filter = filter;
        self
    }

    /// Origins' streams are reported to `links` (anti-entropy's reconnect
    /// rounds wait until the peer's stream went quiet).
    pub fn with_links(mut self, links: Arc<super::repair::PeerLinks>) -> Self {
        self.links = links;
        self
    }

    /// `Digests` replies tell what this node delivered (tombstone
    /// collection, decision 015).
    pub fn with_frontier(mut self, frontier: Arc<super::frontier::Frontier>) -> Self {
        self.frontier = Some(frontier);
        self
    }

    /// Snapshot chunks are cut to fit in `bytes`, what peers accept in one
    /// message (`--peer-max-message-mb`).
    pub fn with_max_message(mut self, bytes: usize) -> Self {
        self.max_message = bytes;
        self
    }

    /// With mutual TLS (`Some(TlsMode::MutualTls)`), callers' node ids are
    /// checked against their certificates.
    pub fn with_tls(mut self, tls: Option<TlsMode>) -> Self {
        self.tls = tls;
        self
    }

    /// Refuses a call: counted, logged with the caller's address.
    fn refuse(&self, conn: Option<&PeerConn>, reason: &'static str, status: Status) -> Status {
        self.refusals.refuse_call(conn, reason, &status.message());
        status
    }

    /// Checks what every call states (see [`caller_refusal`]); a refusal is
    /// counted and logged.
    /// Refuses a database this Redis does not have.
    fn check_db(&self, db: u32) -> Result<(), Status> {
        if db >= self.databases {
            return Err(Status::invalid_argument(format!(
                "database {db} does not exist here (databases {}): set the same `databases` in every region",
                self.databases
            )));
        }
        if db == crate::store::metadata_db() {
            return Err(Status::invalid_argument(format!(
                "database {db} holds geosync's metadata here (--metadata-db): use the same --metadata-db in every region"
            )));
        }
        Ok(())
    }

    fn check_caller(
        &self,
        conn: Option<&PeerConn>,
        protocol_version: u32,
        mesh: &str,
        node_id: u32,
    ) -> Result<(), Status> {
        let claim = Claim {
            protocol_version,
            mesh,
            node_id,
        };
        let cert = conn.and_then(|c| c.cert.as_deref()).map(|c| c.as_ref());
        let mutual_tls = self.tls == Some(TlsMode::MutualTls);
        match caller_refusal(&self.mesh, mutual_tls, cert, &claim) {
            Some((reason, status)) => Err(self.refuse(conn, reason, status)),
            None => Ok(()),
        }
    }
}

/// What a caller states in `Hello` or `SnapshotRequest`.
#[derive(Debug, Clone, Copy)]
pub struct Claim<'a> {
    /// Its protocol version.
    pub protocol_version: u32,
    /// Its mesh name.
    pub mesh: &'a str,
    /// The node id it claims.
    pub node_id: u32,
}

/// Why a caller is refused before any batch, as a metric reason and the
/// status it is answered with; None when it may go on. Checked: the
/// protocol version, the mesh (not echoed back: it is not a stranger's to
/// learn) and, under mutual TLS, that the certificate `cert` (DER) names
/// the claimed node id.
pub fn caller_refusal(
    own_mesh: &str,
    mutual_tls: bool,
    cert: Option<&[u8]>,
    claim: &Claim<'_>,
) -> Option<(&'static str, Status)> {
    let Claim {
        protocol_version,
        mesh,
        node_id,
    } = *claim;
    if protocol_version != PROTOCOL_VERSION {
        return Some((
            "protocol_version",
            Status::failed_precondition(format!(
                "protocol version {protocol_version} is not supported (this agent speaks {PROTOCOL_VERSION})"
            )),
        ));
    }
    if mesh != own_mesh {
        return Some((
            "mesh",
            Status::failed_precondition(format!("mesh {mesh:?} does not match this agent's mesh")),
        ));
    }
    if mutual_tls && !cert.is_some_and(|der| binds_node_der(der, node_id)) {
        return Some((
            "node_id_not_in_certificate",
            Status::permission_denied(format!(
                "node id {node_id} is not named in the caller's certificate (DNS name {})",
                super::security::node_name(node_id)
            )),
        ));
    }
    None
}

/// The settings that must match in every region: `databases`,
/// `--max-key-elements` and `--metadata-db` (as an origin states them, 0
/// and None are "not stated" and match anything).
pub type Settings = (u32, u64, Option<u32>);

/// The refusal of an origin whose settings that must match in every region
/// differ from this agent's.
pub fn settings_refusal(own: Settings, origin: Settings, node_id: u32) -> Option<Status> {
    let (databases, max_key_elements, metadata_db) = own;
    let (their_databases, their_max, their_metadata_db) = origin;
    if let (Some(theirs), Some(ours)) = (their_metadata_db, metadata_db)
        && theirs != ours
    {
        return Some(Status::failed_precondition(format!(
            "settings differ: node {node_id} keeps geosync's metadata in database {theirs} (--metadata-db), this region in {ours}; use the same value in every region"
        )));
    }
    if their_databases != 0 && their_databases != databases {
        return Some(Status::failed_precondition(format!(
            "settings differ: node {node_id}'s Redis has `databases` {their_databases}, this region's has {databases}; set the same `databases` in every region's Redis"
        )));
    }
    if their_max != 0 && their_max != max_key_elements {
        return Some(Status::failed_precondition(format!(
            "settings differ: node {node_id} runs with --max-key-elements {their_max}, this region with {max_key_elements}; use the same value in every region"
        )));
    }
    None
}

/// Why a batch was refused.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("malformed batch: {0}")]
    Malformed(String),
    #[error("stamp {stamp} is too far in the future: {why}")]
    ClockSkew { stamp: String, why: String },
}

impl Refusal {
    fn reason(&self) -> &'static str {
        match self {
            Refusal::Malformed(_) => "malformed",
            Refusal::ClockSkew { .. } => "clock_skew",
        }
    }
}

/// Checks a batch from `origin` and observes its stamps.
fn check_batch(
    payload: &[u8],
    origin: u32,
    databases: u32,
    clock: &HLC,
) -> Result<Vec<Change>, Refusal> {
    let changes = decode_batch(payload).map_err(|e| Refusal::Malformed(e.to_string()))?;
    let mut newest = None;
    for c in &changes {
        let ts = hlc::decode(c.stamp.as_bytes()).map_err(|e| Refusal::Malformed(e.to_string()))?;
        let from =
            hlc::id_to_node_id(ts.get_id()).map_err(|e| Refusal::Malformed(e.to_string()))?;
        if from != origin {
            return Err(Refusal::Malformed(format!(
                "change stamped by node {from} arrived from node {origin}"
            )));
        }
        if c.db >= databases {
            return Err(Refusal::Malformed(format!(
                "database {} does not exist here",
                c.db
            )));
        }
        if c.db == crate::store::metadata_db() {
            return Err(Refusal::Malformed(format!(
                "database {} holds geosync's metadata here (--metadata-db): use the same --metadata-db in every region",
                c.db
            )));
        }
        if newest.is_none_or(|n| ts > n) {
            newest = Some(ts);
        }
    }
    if let Some(ts) = newest {
        clock
            .update_with_timestamp(&ts)
            .map_err(|e| Refusal::ClockSkew {
                stamp: hlc::encode(&ts),
                why: e.to_string(),
            })?;
    }
    Ok(changes)
}

type PeerStream = Pin<Box<dyn Stream<Item = Result<PeerMessage, Status>> + Send>>;
type ChunkStream = Pin<Box<dyn Stream<Item = Result<SnapshotChunk, Status>> + Send>>;

/// Keys per snapshot chunk.
const SNAPSHOT_BATCH: usize = 512;

#[tonic::async_trait]
impl Replication for Receiver {
    type ReplicateStream = PeerStream;
    type SnapshotStream = ChunkStream;

    async fn snapshot(
        &self,
        request: Request<SnapshotRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        let conn = request.extensions().get::<PeerConn>().cloned();
        let req = request.into_inner();
        self.check_caller(conn.as_ref(), req.protocol_version, &req.mesh, req.node_id)?;
        if req.node_id == self.node_id {
            return Err(self.refuse(
                conn.as_ref(),
                "own_node_id",
                Status::failed_precondition(format!(
                    "snapshot refused: node {} is this agent's own id",
                    req.node_id
                )),
            ));
        }
        let Ok(place) = self.snapshots.clone().try_acquire_owned() else {
            return Err(self.refuse(
                conn.as_ref(),
                "snapshot_busy",
                Status::resource_exhausted(format!(
                    "{CONCURRENT_SNAPSHOTS} snapshots are being sent already; try again later"
                )),
            ));
        };
        if req.buckets_only {
            self.check_db(req.db)?;
        }
        if req.buckets_only {
            tracing::debug!(
                node_id = req.node_id,
                db = req.db,
                buckets = req.buckets.len(),
                "sending buckets for anti-entropy"
            );
        } else {
            info!(
                node_id = req.node_id,
                "sending a snapshot to rebuild a region"
            );
        }
        let (tx, rx) = mpsc::channel::<Result<SnapshotChunk, Status>>(4);
        let mut store = crate::store::Store::new(self.locator.clone());
        let databases = self.databases;
        let (batches, mut read) = mpsc::channel::<Vec<Change>>(2);
        let err_tx = tx.clone();
        tokio::spawn(async move {
            // The place is given back when the snapshot has been read.
            let _place = place;
            let mut total = 0;
            let dbs: Vec<u32> = if req.buckets_only {
                vec![req.db]
            } else {
                crate::store::user_dbs(databases).collect()
            };
            for db in dbs {
                let read = if req.buckets_only {
                    store
                        .read_numbered_buckets(db, &req.buckets, SNAPSHOT_BATCH, &batches)
                        .await
                } else {
                    store
                        .read_recorded(db, SNAPSHOT_BATCH, None, &batches)
                        .await
                };
                match read {
                    Ok(n) => total += n,
                    Err(e) => {
                        error!(error = %e, db, "reading the snapshot failed");
                        let status =
                            Status::unavailable(format!("reading the snapshot failed: {e}"));
                        let _ = err_tx.send(Err(status)).await;
                        return;
                    }
                }
            }
            if req.buckets_only {
                tracing::debug!(changes = total, "buckets sent");
            } else {
                info!(changes = total, "snapshot sent");
            }
        });
        let max_payload = super::wire::max_payload(self.max_message);
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            while let Some(changes) = read.recv().await {
                let batches =
                    super::wire::encode_for_peers(&changes, max_payload, &metrics, "snapshot");
                for (payload, range) in batches {
                    let chunk = SnapshotChunk {
                        count: range.len() as u32,
                        changes: payload,
                    };
                    if tx.send(Ok(chunk)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn digests(
        &self,
        request: Request<DigestRequest>,
    ) -> Result<Response<DigestReply>, Status> {
        let conn = request.extensions().get::<PeerConn>().cloned();
        let req = request.into_inner();
        self.check_caller(conn.as_ref(), req.protocol_version, &req.mesh, req.node_id)?;
        self.check_db(req.db)?;
        let groups = super::wire::group_count();
        if let Some(g) = req.groups.iter().find(|g| **g >= groups) {
            return Err(Status::invalid_argument(format!(
                "no digest group {g} (there are {groups})"
            )));
        }
        // Reading digests reads every record of the buckets: it shares the
        // places of snapshots.
        let Ok(_place) = self.snapshots.clone().try_acquire_owned() else {
            return Err(self.refuse(
                conn.as_ref(),
                "snapshot_busy",
                Status::resource_exhausted("busy sending snapshots or digests; try again later"),
            ));
        };
        let mut store = crate::store::Store::new(self.locator.clone());
        let digests = if req.groups.is_empty() {
            super::repair::local_digests(&mut store, req.db)
                .await
                .map(|b| super::wire::group_digests(&b))
        } else {
            let wanted: Vec<u32> = req
                .groups
                .iter()
                .flat_map(|g| super::wire::group_buckets(*g))
                .collect();
            store.bucket_digests(req.db, &wanted).await
        }
        .map_err(|e| Status::unavailable(format!("reading digests failed: {e}")))?;
        let (floor, collected) = if req.groups.is_empty() {
            let read =
                |e| Status::unavailable(format!("reading the database's floors failed: {e}"));
            let floor = store.flush_floor(req.db).await.map_err(read)?;
            let collected = store.collected_floor(req.db).await.map_err(read)?;
            (floor.unwrap_or_default(), collected.unwrap_or_default())
        } else {
            (String::new(), String::new())
        };
        let delivered = match (&self.frontier, req.groups.is_empty()) {
            (Some(f), true) => f.report(&mut store).await,
            _ => String::new(),
        };
        Ok(Response::new(DigestReply {
            digests,
            floor,
            delivered,
            collected,
        }))
    }

    async fn records(
        &self,
        request: Request<RecordsRequest>,
    ) -> Result<Response<RecordsReply>, Status> {
        let conn = request.extensions().get::<PeerConn>().cloned();
        let req = request.into_inner();
        self.check_caller(conn.as_ref(), req.protocol_version, &req.mesh, req.node_id)?;
        self.check_db(req.db)?;
        if req.keys.len() > super::wire::MAX_RECORDS_ASKED {
            return Err(Status::invalid_argument(format!(
                "{} keys asked; at most {} per call",
                req.keys.len(),
                super::wire::MAX_RECORDS_ASKED
            )));
        }
        let mut store = crate::store::Store::new(self.locator.clone());
        let stamps = store
            .recorded_stamps(req.db, &req.keys)
            .await
            .map_err(|e| Status::unavailable(format!("reading records failed: {e}")))?;
        Ok(Response::new(RecordsReply { stamps }))
    }

    async fn replicate(
        &self,
        request: Request<Streaming<OriginMessage>>,
    ) -> Result<Response<PeerStream>, Status> {
        let conn = request.extensions().get::<PeerConn>().cloned();
        let mut inbound = request.into_inner();
        let first = inbound.message().await.inspect_err(|e| {
            if e.code() == tonic::Code::OutOfRange {
                self.refusals
                    .refuse_call(conn.as_ref(), "too_large", &e.message());
            }
        })?;
        let hello = match first {
            Some(OriginMessage {
                kind: Some(origin_message::Kind::Hello(h)),
            }) => h,
            _ => {
                return Err(self.refuse(
                    conn.as_ref(),
                    "no_hello",
                    Status::invalid_argument("the first message must be Hello"),
                ));
            }
        };
        self.check_caller(
            conn.as_ref(),
            hello.protocol_version,
            &hello.mesh,
            hello.node_id,
        )?;
        if let Some(status) = settings_refusal(
            (
                self.databases,
                crate::store::max_key_elements(),
                Some(crate::store::metadata_db()),
            ),
            (hello.databases, hello.max_key_elements, hello.metadata_db),
            hello.node_id,
        ) {
            return Err(self.refuse(conn.as_ref(), "settings", status));
        }
        if let Some(theirs) = &hello.key_filter
            && *theirs != self.key_filter.fingerprint()
        {
            let shown = |f: &str| {
                if f.is_empty() {
                    "none".to_string()
                } else {
                    f.to_string()
                }
            };
            let status = Status::failed_precondition(format!(
                "settings differ: node {} replicates with key filters {}, this region with {}; use the same --include-keys, --exclude-keys, --include-db and --exclude-db in every region",
                hello.node_id,
                shown(theirs),
                shown(&self.key_filter.fingerprint())
            ));
            return Err(self.refuse(conn.as_ref(), "settings", status));
        }
        if hello.node_id == self.node_id {
            error!(
                node_id = hello.node_id,
                "a peer uses this agent's own node id; refused"
            );
            return Err(Status::already_exists(format!(
                "node id {} is this agent's own: node ids must be unique in the mesh",
                hello.node_id
            )));
        }
        let origin = hello.node_id;
        let acked = {
            let mut o = self.origins.lock().expect("origins lock");
            match o.sessions.get(&origin) {
                Some((session, _, true)) if *session != hello.session => {
                    error!(
                        node_id = origin,
                        "two agents claim the same node id; refused the second"
                    );
                    return Err(Status::already_exists(format!(
                        "node id {origin} is already connected from another agent: node ids must be unique in the mesh"
                    )));
                }
                _ => {}
            }
            let entry = o.sessions.entry(origin).or_insert((hello.session, 0, true));
            if entry.0 != hello.session {
                *entry = (hello.session, 0, true);
            }
            entry.2 = true;
            entry.1
        };
        info!(origin, session = hello.session, acked, "origin connected");
        self.links.origin_connected(origin, hello.session);
        let (tx, rx) = mpsc::channel::<Result<PeerMessage, Status>>(64);
        let welcome = PeerMessage {
            kind: Some(peer_message::Kind::Welcome(Welcome {
                protocol_version: PROTOCOL_VERSION,
                mesh: self.mesh.clone(),
                node_id: self.node_id,
                acked_seq: acked,
            })),
        };
        tx.send(Ok(welcome))
            .await
            .map_err(|_| Status::cancelled("closed"))?;
        let (clock, apply, metrics, origins, databases) = (
            self.clock.clone(),
            self.apply.clone(),
            self.metrics.clone(),
            self.origins.clone(),
            self.databases,
        );
        let session = hello.session;
        let refusals = self.refusals.clone();
        let links = self.links.clone();
        let filter = self.key_filter.clone();
        tokio::spawn(
            async move {
                let label = Metrics::peer(&origin.to_string());
                let end = loop {
                    let msg = match inbound.message().await {
                        Ok(Some(m)) => m,
                        Ok(None) => break "origin closed the stream".to_string(),
                        Err(e) => {
                            if e.code() == tonic::Code::OutOfRange {
                                refusals.refuse_call(conn.as_ref(), "too_large", &e.message());
                            }
                            break format!("stream error: {e}");
                        }
                    };
                    let Some(origin_message::Kind::Batch(batch)) = msg.kind else {
                        metrics
                            .batches_refused
                            .get_or_create(&Metrics::reason("malformed"))
                            .inc();
                        let _ = tx
                            .send(Err(Status::invalid_argument("expected a Batch")))
                            .await;
                        break "unexpected message".to_string();
                    };
                    let seq = batch.seq;
                    let last = origins
                        .lock()
                        .expect("origins lock")
                        .sessions
                        .get(&origin)
                        .map(|s| s.1)
                        .unwrap_or(0);
                    // A catch-up batch (seq 0) is always applied; others once.
                    links.origin_delivered(origin);
                    if !batch.catch_up && seq <= last {
                        // Already applied (a resend after reconnect): ack again.
                        let _ = tx.send(Ok(ack(seq))).await;
                        continue;
                    }
                    metrics
                        .peer_received_bytes
                        .get_or_create(&label)
                        .inc_by(batch.changes.len() as u64);
                    let mut changes = match check_batch(&batch.changes, origin, databases, &clock) {
                        Ok(c) => c,
                        Err(r) => {
                            metrics
                                .batches_refused
                                .get_or_create(&Metrics::reason(r.reason()))
                                .inc();
                            warn!(seq, error = %r, "batch refused; the origin will send it again");
                            let _ = tx
                                .send(Err(Status::failed_precondition(r.to_string())))
                                .await;
                            break format!("refused batch {seq}");
                        }
                    };
                    // The origin stated the same filters (Hello); a key it
                    // should have kept local is not applied all the same.
                    if !filter.passes_all() {
                        let before = changes.len();
                        changes.retain(|c| match c.op {
                            crate::base::change::Op::FlushDb => filter.admits_db(c.db),
                            _ => filter.admits(c.db, &c.key),
                        });
                        if changes.len() < before {
                            warn!(
                                seq,
                                dropped = before - changes.len(),
                                "changes of keys the key filters keep local were not applied"
                            );
                        }
                    }
                    let stamped: Vec<u64> = changes
                        .iter()
                        .filter_map(|c| hlc::decode(c.stamp.as_bytes()).ok())
                        .map(|t| hlc::unix_millis(&t))
                        .collect();
                    let (done_tx, done_rx) = oneshot::channel();
                    if apply
                        .send(ApplyJob {
                            changes,
                            done: done_tx,
                        })
                        .await
                        .is_err()
                    {
                        break "applier stopped".to_string();
                    }
                    match done_rx.await {
                        Ok(Ok(outcome)) => {
                            {
                                let now = hlc::unix_millis(&clock.new_timestamp());
                                let delay = metrics.apply_delay_seconds.get_or_create(&label);
                                for at in &stamped {
                                    delay.observe(std::time::Duration::from_millis(
                                        now.saturating_sub(*at),
                                    ));
                                }
                            }
                            metrics
                                .changes_applied
                                .get_or_create(&label)
                                .inc_by(outcome.applied);
                            metrics
                                .changes_rejected_older
                                .get_or_create(&label)
                                .inc_by(outcome.older);
                            crate::apply::report(&outcome, &metrics, &origin.to_string());
                            if let Some(s) = origins
                                .lock()
                                .expect("origins lock")
                                .sessions
                                .get_mut(&origin)
                                && s.0 == session
                            {
                                s.1 = s.1.max(seq);
                            }
                            links.origin_delivered(origin);
                            if tx.send(Ok(ack(seq))).await.is_err() {
                                break "origin went away".to_string();
                            }
                        }
                        Ok(Err(e)) => {
                            error!(seq, error = %e, "applying a batch failed");
                            let _ = tx
                                .send(Err(Status::internal(format!("apply failed: {e}"))))
                                .await;
                            break format!("apply failed: {e}");
                        }
                        Err(_) => break "applier stopped".to_string(),
                    }
                };
                if let Some(s) = origins
                    .lock()
                    .expect("origins lock")
                    .sessions
                    .get_mut(&origin)
                    && s.0 == session
                {
                    s.2 = false;
                }
                links.origin_ended(origin, session);
                info!(reason = %end, "origin stream ended");
            }
            .instrument(info_span!("origin", node_id = origin)),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

fn ack(seq: u64) -> PeerMessage {
    PeerMessage {
        kind: Some(peer_message::Kind::Ack(Ack { seq })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::change::{Op, Value, encode_batch};
    use serde_bytes::ByteBuf;
    use std::time::Duration;

    fn clock() -> Arc<HLC> {
        hlc::new_clock(1, Duration::from_millis(500)).unwrap()
    }

    fn put(stamp: String, key: &[u8]) -> Change {
        Change {
            db: 0,
            key: ByteBuf::from(key.to_vec()),
            stamp,
            op: Op::Put {
                value: Value::String(ByteBuf::from(b"v".to_vec())),
                expire_at_ms: None,
            },
        }
    }

    #[test]
    fn refuses_bad_batches_with_a_reason() {
        let c = clock();
        let other = hlc::new_clock(2, Duration::from_millis(500)).unwrap();
        let good = hlc::encode(&other.new_timestamp());
        assert!(check_batch(&encode_batch(&[put(good.clone(), b"k")]), 2, 16, &c).is_ok());
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"garbage".to_vec(), "malformed"),
            (encode_batch(&[put("zz".into(), b"k")]), "malformed"),
            (encode_batch(&[put(good.clone(), b"k")]), "malformed"), // wrong origin below
        ];
        for (i, (payload, reason)) in cases.iter().enumerate() {
            let origin = if i == 2 { 3 } else { 2 };
            let err = check_batch(payload, origin, 16, &c).unwrap_err();
            assert_eq!(err.reason(), *reason, "case {i}: {err}");
        }
        // Keys and values are checked per change when applied (a bad one is
        // quarantined, the rest applied): see `base::check`.
        for key in [&b"__geosync:m:1"[..], b""] {
            assert!(check_batch(&encode_batch(&[put(good.clone(), key)]), 2, 16, &c).is_ok());
        }
        // the database geosync keeps its metadata in
        let mut meta_db = put(good.clone(), b"k");
        meta_db.db = crate::store::metadata_db();
        assert_eq!(
            check_batch(&encode_batch(&[meta_db]), 2, 16, &c)
                .unwrap_err()
                .reason(),
            "malformed"
        );
        // a database the local Redis does not have
        let mut far_db = put(good, b"k");
        far_db.db = 99;
        assert_eq!(
            check_batch(&encode_batch(&[far_db]), 2, 16, &c)
                .unwrap_err()
                .reason(),
            "malformed"
        );
        // a stamp ten seconds ahead
        let now = other.new_timestamp();
        let ahead = uhlc::Timestamp::new(
            uhlc::NTP64(now.get_time().as_u64() + (10u64 << 32)),
            *now.get_id(),
        );
        let err =
            check_batch(&encode_batch(&[put(hlc::encode(&ahead), b"k")]), 2, 16, &c).unwrap_err();
        assert_eq!(err.reason(), "clock_skew");
    }
}
