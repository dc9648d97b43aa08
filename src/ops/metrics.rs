//! Prometheus metrics, served at `/metrics` by [`crate::ops::admin`].
//!
//! One [`Metrics`] per agent, shared by every stage. Names are documented in
//! the README; they are part of the interface operators build alerts on.

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::TypedMetric;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// Label set naming a peer: by its node id (what arrives from it always;
/// what goes to it when the configuration names the id, `ID=URL`), else
/// by its configured address.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabel {
    /// The peer's node id, or its address as configured.
    pub peer: String,
}

/// Label set of `geosync_peer_info`: a peer's label and its address.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerInfoLabel {
    /// As in [`PeerLabel`].
    pub peer: String,
    /// The address this agent dials.
    pub address: String,
}

/// Label set naming a reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Short machine-readable reason.
    pub reason: String,
}

/// Label set naming an outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// What became of it.
    pub outcome: String,
}

/// Label set naming a pipeline stage (`stamp`, `apply`, ...).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabel {
    /// The stage.
    pub stage: String,
}

/// A metric family exported even before its first sample: its `# HELP`
/// and `# TYPE` lines are always there, so that a scraper (or a test) can
/// tell a metric at zero from a metric that does not exist.
#[derive(Debug)]
struct Declared<M>(M);

impl<M: EncodeMetric> EncodeMetric for Declared<M> {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        self.0.metric_type()
    }

    fn is_empty(&self) -> bool {
        false
    }
}

/// A histogram of durations in seconds, with buckets from 100 µs doubling
/// to about 52 s (a script's time, a change's delay).
#[derive(Clone, Debug)]
pub struct Seconds(Histogram);

impl Default for Seconds {
    fn default() -> Self {
        Seconds(Histogram::new(exponential_buckets(0.0001, 2.0, 20)))
    }
}

impl Seconds {
    /// Records one duration.
    pub fn observe(&self, d: std::time::Duration) {
        self.0.observe(d.as_secs_f64());
    }
}

impl TypedMetric for Seconds {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Seconds {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Every metric the agent keeps.
#[derive(Default)]
pub struct Metrics {
    registry: Registry,
    /// The node id configured for each peer address (`ID=URL`), as its
    /// label; set when a peer is added, and kept after it is removed, so
    /// that its series are found by the same label until they are gone.
    peer_ids: std::sync::RwLock<std::collections::HashMap<String, u32>>,
    /// 1 per configured peer: its label and address.
    pub peer_info: Family<PeerInfoLabel, Gauge>,
    /// Changes of local writes stamped for shipping.
    pub changes_stamped: Counter,
    /// Changes shipped again with their recorded stamp after a restart
    /// (stamped before, maybe never acknowledged).
    pub changes_reshipped: Counter,
    /// Changes made at unknown times (a full resync's snapshot, a promoted
    /// replica's backlog), stamped just above what the key or region had
    /// (decision 019).
    pub changes_stamped_low: Counter,
    /// Keys whose stamp was retried because their metadata held a newer stamp.
    pub stamp_retries: Counter,
    /// Changes sent to each peer (re-sends after a reconnect count again).
    pub changes_shipped: Family<PeerLabel, Counter>,
    /// Batches acknowledged by each peer.
    pub batches_acked: Family<PeerLabel, Counter>,
    /// Changes from peers that won and were written.
    pub changes_applied: Family<PeerLabel, Counter>,
    /// Changes from peers older than (or equal to) what the key held.
    pub changes_rejected_older: Family<PeerLabel, Counter>,
    /// Peers' changes applied without what this server cannot hold (field
    /// expiries on a server older than Redis 7.4).
    pub changes_degraded: Family<PeerLabel, Counter>,
    /// Peers' changes set aside because this server could not take them
    /// (the key keeps its value; each is logged with its key).
    pub changes_quarantined: Family<PeerLabel, Counter>,
    /// 1 while the outgoing stream to the peer is up.
    pub peer_connected: Family<PeerLabel, Gauge>,
    /// Batches stamped here but not yet acknowledged by the peer.
    pub peer_lag_batches: Family<PeerLabel, Gauge>,
    /// Age in seconds of the oldest batch the peer has not acknowledged
    /// (refreshed every second, so it grows while the peer is away).
    pub peer_lag_seconds: Family<PeerLabel, Gauge<f64, AtomicU64>>,
    /// Bytes of batches sent to each peer (stream and catch-ups).
    pub peer_sent_bytes: Family<PeerLabel, Counter>,
    /// Bytes of batches received from each origin.
    pub peer_received_bytes: Family<PeerLabel, Counter>,
    /// Time Redis spent in each stamp script call.
    pub stamp_script_seconds: Seconds,
    /// Time Redis spent in each apply script call.
    pub apply_script_seconds: Seconds,
    /// From a change's stamp to its apply here, per origin.
    pub apply_delay_seconds: Family<PeerLabel, Seconds>,
    /// The replication link to the local Redis is up (1) or not (0).
    pub redis_link_up: Gauge,
    /// Bytes of encoded changes in the outbox.
    pub outbox_bytes: Gauge,
    /// Unix time, read from its stamp, of the newest change the peer has
    /// acknowledged (every older one of ours it has too).
    pub peer_acked_stamp: Family<PeerLabel, Gauge<f64, AtomicU64>>,
    /// Incoming batches refused, by reason (clock skew, malformed, ...).
    pub batches_refused: Family<ReasonLabel, Counter>,
    /// Connections and calls from peers refused before any batch, by reason
    /// (TLS, not HTTP/2, too many connections, node id not in the
    /// certificate, ...).
    pub peer_refused: Family<ReasonLabel, Counter>,
    /// Changes larger than a peer accepts in one message
    /// (`--peer-max-message-mb`): not shipped.
    pub changes_too_large: Counter,
    /// Full resynchronisations with the local Redis.
    pub sync_full: Counter,
    /// Times the region was rebuilt from a peer after its Redis lost its data.
    pub rebuilds: Counter,
    /// Partial resynchronisations the local Redis accepted.
    pub sync_partial_ok: Counter,
    /// Replication sessions with the local Redis that ended other than at
    /// shutdown (the tailer then connects again).
    pub replication_sessions_ended: Counter,
    /// Script calls to the local Redis (stamping, applying) that got no
    /// reply within the response timeout and were retried.
    pub redis_timeouts: Counter,
    /// Writes of geosync's (stamps, applied changes) the local Redis
    /// refused for memory (`OOM`), per stage; retried.
    pub redis_oom: Family<StageLabel, Counter>,
    /// Keys the local Redis evicted, by what became of them elsewhere
    /// (decision 016): `local` (kept in the other regions), `ambiguous`
    /// (deleted and evicted in one epoch: deleted everywhere), `unmatched`.
    pub evictions: Family<OutcomeLabel, Counter>,
    /// Replication offset processed from the local Redis.
    pub repl_offset: Gauge,
    /// Bytes of the command stream read and kept while a resync's work
    /// ran (the snapshot's keys, a rebuild from a peer), handled after it.
    pub resync_stream_kept_bytes: Counter,
    /// Of those, bytes that went through `<data-dir>/resync-stream`.
    pub resync_stream_spilled_bytes: Counter,
    /// Client writes to keys under the reserved `__geosync:` prefix (not replicated).
    pub reserved_key_writes: Counter,
    /// geosync's own keys found damaged by a client and repaired, by what
    /// (`bucket`, `flush_floor`, `collected_floor`, `reached`, `layout`).
    pub reserved_keys_repaired: Family<ReasonLabel, Counter>,
    /// Keys of types geosync cannot carry, by reason: `module:<type name>`
    /// for module data (see [`crate::stamp::module_keys`]).
    pub unsupported_keys: Family<ReasonLabel, Counter>,
    /// Commands whose effect geosync does not replicate (SWAPDB), by command.
    pub unsupported_commands: Family<ReasonLabel, Counter>,
    /// Batches held for peers.
    pub outbox_len: Gauge,
    /// Times a full outbox dropped batches a peer had not acknowledged (the
    /// peer then catches up from the metadata).
    pub outbox_overflows: Family<PeerLabel, Counter>,
    /// Changes sent to a peer by catch-ups.
    pub catch_up_changes: Family<PeerLabel, Counter>,
    /// Anti-entropy rounds completed with each peer.
    pub anti_entropy_rounds: Family<PeerLabel, Counter>,
    /// Metadata buckets compared with each peer (through group digests).
    pub anti_entropy_buckets_compared: Family<PeerLabel, Counter>,
    /// Metadata buckets found different from each peer's.
    pub anti_entropy_buckets_differing: Family<PeerLabel, Counter>,
    /// Keys pulled from each peer that were newer here: repaired.
    pub anti_entropy_keys_repaired: Family<PeerLabel, Counter>,
    /// Flushes a peer records and this region had missed, applied by
    /// anti-entropy, per peer.
    pub anti_entropy_flushes: Family<PeerLabel, Counter>,
    /// Keys this region held below a peer's collected floor, which the
    /// peer lacked, dropped by anti-entropy (decision 015), per peer.
    pub anti_entropy_keys_dropped: Family<PeerLabel, Counter>,
    /// Unix time of the last round with each peer that found nothing different.
    pub anti_entropy_last_clean_round: Family<PeerLabel, Gauge>,
    /// Tombstones dropped because every region has them (decision 015).
    pub tombstones_collected: Counter,
    /// Tombstones kept after the last collection (every database).
    pub tombstones: Gauge,
    /// Metadata records kept after the last collection (every database).
    pub metadata_records: Gauge,
    /// Unix time of the stable frontier tombstones are collected below.
    pub tombstone_frontier: Gauge,
    /// 1 while a peer has not reported what it has for longer than the
    /// horizon: tombstones are kept for it.
    pub tombstone_collection_blocked: Family<PeerLabel, Gauge>,
    /// Anti-entropy rounds with each peer started because this agent's
    /// stream to it came back (a partition healed, a restart, a reset).
    pub anti_entropy_reconnect_rounds: Family<PeerLabel, Counter>,
    /// Bytes of changes pulled from each peer by anti-entropy (as encoded
    /// on the link; paced by `--anti-entropy-max-bytes-per-sec`).
    pub anti_entropy_bytes_pulled: Family<PeerLabel, Counter>,
    /// Seconds anti-entropy spent pulling from each peer, the waits of the
    /// byte limit included: bytes over seconds is the pulling rate.
    pub anti_entropy_pull_seconds: Family<PeerLabel, Counter<f64, AtomicU64>>,
    /// Bytes of tailer events waiting in memory for the stamper (estimated).
    pub spool_memory_bytes: Gauge,
    /// Bytes of tailer events waiting on disk for the stamper.
    pub spool_disk_bytes: Gauge,
    /// Tailer events that went through the disk spool.
    pub spool_spilled_events: Counter,
    /// Pushes into the outbox that waited for the peers to acknowledge.
    pub outbox_paced: Counter,
    /// Collections over `--max-key-elements` shipped in pieces (decision 009).
    pub large_keys_shipped: Counter,
    /// Elements of those collections shipped.
    pub large_key_elements_shipped: Counter,
    /// Collections from peers whose pieces did not all arrive (not applied;
    /// the origin sends them again when it catches the peer up).
    pub large_keys_incomplete: Counter,
    /// Times the tailer waited because the spool was full (the master then
    /// holds the stream in the agent's replica output buffer).
    pub spool_full_waits: Counter,
    /// Times the disk spool failed and the stream was read again.
    pub spool_lost: Counter,
    /// Configuration reloads (SIGHUP), by outcome (`applied`, `refused`).
    pub config_reloads: Family<OutcomeLabel, Counter>,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut m = Metrics::default();
        let mut r = Registry::with_prefix("geosync");
        r.register(
            "peer_refused",
            "Connections and calls from peers refused, by reason",
            Declared(m.peer_refused.clone()),
        );
        r.register(
            "changes_too_large",
            "Changes larger than a peer accepts in one message, not shipped",
            m.changes_too_large.clone(),
        );
        r.register(
            "changes_stamped",
            "Changes of local writes stamped",
            m.changes_stamped.clone(),
        );
        r.register(
            "changes_reshipped",
            "Changes shipped again with their recorded stamp after a restart",
            m.changes_reshipped.clone(),
        );
        r.register(
            "changes_stamped_low",
            "Changes made at unknown times (seen in a full resync's snapshot, or in the backlog of a promoted replica), stamped just above what the key or region had, so that every later write wins",
            m.changes_stamped_low.clone(),
        );
        r.register(
            "stamp_retries",
            "Keys re-stamped after meeting a newer stamp",
            m.stamp_retries.clone(),
        );
        r.register(
            "changes_shipped",
            "Changes sent to a peer",
            Declared(m.changes_shipped.clone()),
        );
        r.register(
            "batches_acked",
            "Batches acknowledged by a peer",
            Declared(m.batches_acked.clone()),
        );
        r.register(
            "changes_applied",
            "Changes from peers applied",
            Declared(m.changes_applied.clone()),
        );
        r.register(
            "changes_rejected_older",
            "Changes from peers rejected as older",
            Declared(m.changes_rejected_older.clone()),
        );
        r.register(
            "changes_degraded",
            "Peers' changes applied without what this server cannot hold (field expiries)",
            Declared(m.changes_degraded.clone()),
        );
        r.register(
            "changes_quarantined",
            "Peers' changes set aside because this server could not take them",
            Declared(m.changes_quarantined.clone()),
        );
        r.register(
            "peer_connected",
            "Outgoing stream to the peer is up",
            Declared(m.peer_connected.clone()),
        );
        r.register(
            "peer_lag_batches",
            "Batches not yet acknowledged by the peer",
            Declared(m.peer_lag_batches.clone()),
        );
        r.register(
            "peer_lag_seconds",
            "Age of the oldest batch the peer has not acknowledged",
            Declared(m.peer_lag_seconds.clone()),
        );
        r.register(
            "peer_sent_bytes",
            "Bytes of batches sent to the peer",
            Declared(m.peer_sent_bytes.clone()),
        );
        r.register(
            "peer_received_bytes",
            "Bytes of batches received from the peer",
            Declared(m.peer_received_bytes.clone()),
        );
        r.register(
            "stamp_script_seconds",
            "Time Redis spent in each stamp script call (Redis serves nothing else meanwhile)",
            m.stamp_script_seconds.clone(),
        );
        r.register(
            "apply_script_seconds",
            "Time Redis spent in each apply script call (Redis serves nothing else meanwhile)",
            m.apply_script_seconds.clone(),
        );
        r.register(
            "apply_delay_seconds",
            "From a change's stamp at its origin to its apply here",
            Declared(m.apply_delay_seconds.clone()),
        );
        r.register(
            "redis_link_up",
            "The replication link to the local Redis is up",
            m.redis_link_up.clone(),
        );
        r.register(
            "outbox_bytes",
            "Bytes of encoded changes in the outbox",
            m.outbox_bytes.clone(),
        );
        r.register(
            "build",
            "The agent's version",
            Info::new(vec![(
                "version".to_string(),
                env!("CARGO_PKG_VERSION").to_string(),
            )]),
        );
        r.register(
            "peer_acked_stamp_timestamp_seconds",
            "Unix time, from its stamp, of the newest change the peer acknowledged",
            Declared(m.peer_acked_stamp.clone()),
        );
        r.register(
            "batches_refused",
            "Incoming batches refused",
            Declared(m.batches_refused.clone()),
        );
        r.register(
            "sync_full",
            "Full resynchronisations with the local Redis",
            m.sync_full.clone(),
        );
        r.register(
            "rebuilds",
            "Rebuilds of the region from a peer after its Redis lost its data",
            m.rebuilds.clone(),
        );
        r.register(
            "sync_partial_ok",
            "Partial resynchronisations accepted",
            m.sync_partial_ok.clone(),
        );
        r.register(
            "replication_sessions_ended",
            "Replication sessions with the local Redis that ended other than at shutdown",
            m.replication_sessions_ended.clone(),
        );
        r.register(
            "redis_timeouts",
            "Script calls to the local Redis that got no reply within the response timeout",
            m.redis_timeouts.clone(),
        );
        r.register(
            "redis_oom",
            "Writes of geosync the local Redis refused at its maxmemory limit (OOM), per stage; retried",
            Declared(m.redis_oom.clone()),
        );
        r.register(
            "evictions",
            "Keys the local Redis evicted, by what became of them in the other regions",
            Declared(m.evictions.clone()),
        );
        r.register(
            "repl_offset",
            "Replication offset processed",
            m.repl_offset.clone(),
        );
        r.register(
            "resync_stream_kept_bytes",
            "Bytes of the replication stream read and kept while a resync's work ran",
            m.resync_stream_kept_bytes.clone(),
        );
        r.register(
            "resync_stream_spilled_bytes",
            "Bytes of the replication stream kept on disk while a resync's work ran",
            m.resync_stream_spilled_bytes.clone(),
        );
        r.register(
            "reserved_key_writes",
            "Client writes to reserved __geosync: keys (not replicated)",
            m.reserved_key_writes.clone(),
        );
        r.register(
            "reserved_keys_repaired",
            "geosync's own keys a client damaged, repaired: a metadata bucket of the wrong type (removed; anti-entropy brings its records back), a floor or reached stamp no clock could have made (removed), a changed layout marker (set again)",
            Declared(m.reserved_keys_repaired.clone()),
        );
        r.register(
            "unsupported_keys",
            "Keys of types geosync cannot carry",
            Declared(m.unsupported_keys.clone()),
        );
        r.register(
            "unsupported_commands",
            "Commands whose effect is not replicated",
            Declared(m.unsupported_commands.clone()),
        );
        r.register(
            "outbox_overflows",
            "Times a full outbox dropped batches a peer had not acknowledged",
            Declared(m.outbox_overflows.clone()),
        );
        r.register(
            "catch_up_changes",
            "Changes sent to a peer by a catch-up from the metadata",
            Declared(m.catch_up_changes.clone()),
        );
        r.register(
            "anti_entropy_rounds",
            "Anti-entropy rounds completed with a peer",
            Declared(m.anti_entropy_rounds.clone()),
        );
        r.register(
            "anti_entropy_buckets_compared",
            "Metadata buckets compared with a peer",
            Declared(m.anti_entropy_buckets_compared.clone()),
        );
        r.register(
            "anti_entropy_buckets_differing",
            "Metadata buckets found different from a peer's",
            Declared(m.anti_entropy_buckets_differing.clone()),
        );
        r.register(
            "anti_entropy_keys_repaired",
            "Keys pulled from a peer that were newer there",
            Declared(m.anti_entropy_keys_repaired.clone()),
        );
        r.register(
            "anti_entropy_flushes",
            "Flushes a peer records and this region had missed, applied by anti-entropy",
            Declared(m.anti_entropy_flushes.clone()),
        );
        r.register(
            "anti_entropy_keys_dropped",
            "Keys held below a peer's collected floor that the peer lacked, dropped by anti-entropy",
            Declared(m.anti_entropy_keys_dropped.clone()),
        );
        r.register(
            "anti_entropy_last_clean_round_timestamp_seconds",
            "Unix time of the last anti-entropy round with a peer that found no difference",
            Declared(m.anti_entropy_last_clean_round.clone()),
        );
        r.register(
            "tombstones_collected",
            "Tombstones dropped because every region has them",
            m.tombstones_collected.clone(),
        );
        r.register(
            "metadata_records",
            "Records in geosync's metadata after the last tombstone collection, values and tombstones, every database",
            m.metadata_records.clone(),
        );
        r.register(
            "tombstones",
            "Tombstones kept after the last collection",
            m.tombstones.clone(),
        );
        r.register(
            "tombstone_frontier_timestamp_seconds",
            "Unix time of the stable frontier tombstones are collected below",
            m.tombstone_frontier.clone(),
        );
        r.register(
            "tombstone_collection_blocked",
            "1 while a peer has been silent past the horizon and tombstones are kept for it",
            Declared(m.tombstone_collection_blocked.clone()),
        );
        r.register(
            "anti_entropy_reconnect_rounds",
            "Anti-entropy rounds with a peer started because the link to it came back",
            Declared(m.anti_entropy_reconnect_rounds.clone()),
        );
        r.register(
            "anti_entropy_bytes_pulled",
            "Bytes of changes pulled from a peer by anti-entropy",
            Declared(m.anti_entropy_bytes_pulled.clone()),
        );
        r.register(
            "anti_entropy_pull_seconds",
            "Seconds anti-entropy spent pulling from a peer, paced waits included",
            Declared(m.anti_entropy_pull_seconds.clone()),
        );
        r.register(
            "outbox_batches",
            "Batches held for peers",
            m.outbox_len.clone(),
        );
        r.register(
            "spool_memory_bytes",
            "Bytes of tailer events waiting in memory for the stamper",
            m.spool_memory_bytes.clone(),
        );
        r.register(
            "spool_disk_bytes",
            "Bytes of tailer events waiting on disk for the stamper",
            m.spool_disk_bytes.clone(),
        );
        r.register(
            "spool_spilled_events",
            "Tailer events that went through the disk spool",
            m.spool_spilled_events.clone(),
        );
        r.register(
            "outbox_paced",
            "Pushes into the outbox that waited for the peers to acknowledge",
            m.outbox_paced.clone(),
        );
        r.register(
            "large_keys_shipped",
            "Collections over --max-key-elements shipped in pieces",
            m.large_keys_shipped.clone(),
        );
        r.register(
            "large_key_elements_shipped",
            "Elements of collections shipped in pieces",
            m.large_key_elements_shipped.clone(),
        );
        r.register(
            "large_keys_incomplete",
            "Collections from peers not applied because pieces were missing",
            m.large_keys_incomplete.clone(),
        );
        r.register(
            "spool_full_waits",
            "Times the tailer waited because the spool was full",
            m.spool_full_waits.clone(),
        );
        r.register(
            "spool_lost",
            "Times the disk spool failed and the stream was read again",
            m.spool_lost.clone(),
        );
        r.register(
            "peer_info",
            "1 per configured peer, with its label (node id or address) and address",
            Declared(m.peer_info.clone()),
        );
        r.register(
            "config_reloads",
            "Configuration reloads (SIGHUP), by outcome",
            Declared(m.config_reloads.clone()),
        );
        m.registry = r;
        m
    }

    /// Labels the peers this agent dials with the node ids the
    /// configuration gives (`ID=URL`), and says each in
    /// `geosync_peer_info`. Call before anything is counted for them.
    pub fn label_peers(&self, peers: &[String], ids: &std::collections::BTreeMap<String, u32>) {
        {
            let mut known = self.peer_ids.write().expect("peer ids lock");
            for p in peers {
                match ids.get(p) {
                    Some(id) => known.insert(p.clone(), *id),
                    None => known.remove(p),
                };
            }
        }
        for p in peers {
            self.peer_info
                .get_or_create(&PeerInfoLabel {
                    peer: self.peer_label(p).peer,
                    address: p.clone(),
                })
                .set(1);
        }
    }

    /// The label of a peer this agent dials: its node id when the
    /// configuration names it, else its address.
    pub fn peer_label(&self, address: &str) -> PeerLabel {
        match self.peer_ids.read().expect("peer ids lock").get(address) {
            Some(id) => Metrics::peer(&id.to_string()),
            None => Metrics::peer(address),
        }
    }

    /// Removes the series of this agent's link to a removed peer (by its
    /// address): what its sender wrote. The outbox removes its own.
    pub fn forget_peer(&self, address: &str) {
        let label = self.peer_label(address);
        self.peer_info.remove(&PeerInfoLabel {
            peer: label.peer.clone(),
            address: address.to_string(),
        });
        self.peer_connected.remove(&label);
        for family in [
            &self.changes_shipped,
            &self.batches_acked,
            &self.peer_sent_bytes,
            &self.catch_up_changes,
        ] {
            family.remove(&label);
        }
    }

    /// Removes the series of anti-entropy rounds with a removed peer.
    pub fn forget_anti_entropy(&self, label: &PeerLabel) {
        for family in [
            &self.anti_entropy_bytes_pulled,
            &self.anti_entropy_keys_repaired,
            &self.anti_entropy_flushes,
            &self.anti_entropy_keys_dropped,
            &self.anti_entropy_rounds,
            &self.anti_entropy_buckets_compared,
            &self.anti_entropy_buckets_differing,
            &self.anti_entropy_reconnect_rounds,
        ] {
            family.remove(label);
        }
        self.anti_entropy_pull_seconds.remove(label);
        self.anti_entropy_last_clean_round.remove(label);
    }

    /// Removes the series of a removed peer's changes arriving here (by
    /// its node id).
    pub fn forget_origin(&self, node_id: u32) {
        let label = Metrics::peer(&node_id.to_string());
        for family in [
            &self.changes_applied,
            &self.changes_rejected_older,
            &self.changes_degraded,
            &self.changes_quarantined,
            &self.peer_received_bytes,
        ] {
            family.remove(&label);
        }
        self.apply_delay_seconds.remove(&label);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String");
        out
    }

    /// Shorthand for a peer label.
    pub fn peer(peer: &str) -> PeerLabel {
        PeerLabel {
            peer: peer.to_string(),
        }
    }

    /// Shorthand for an outcome label.
    pub fn outcome(outcome: &str) -> OutcomeLabel {
        OutcomeLabel {
            outcome: outcome.to_string(),
        }
    }

    /// Shorthand for a stage label.
    pub fn stage(stage: &str) -> StageLabel {
        StageLabel {
            stage: stage.to_string(),
        }
    }

    /// Shorthand for a reason label.
    pub fn reason(reason: &str) -> ReasonLabel {
        ReasonLabel {
            reason: reason.to_string(),
        }
    }
}
