//! Settings: command-line flags, `GEOSYNC_*` environment variables and a TOML
//! file, in that order of precedence, checked once when they are merged into a [`Config`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use serde::Deserialize;

use crate::base::setting::{SettingError, bad};
use crate::mesh::security::{MutualTlsFiles, PeerAuth, PeerTls};
use crate::store::tls::RedisTls;

/// Flags of `geosync run`; each also reads `GEOSYNC_<NAME>`, and the TOML
/// file given by `--config` has the same names (`peer` is a list there).
#[derive(Debug, Clone, Args, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct RunArgs {
    /// TOML file with the same setting names (flags and env win over it);
    /// repeat for several, each later one winning over those before.
    #[arg(long, env = "GEOSYNC_CONFIG", value_delimiter = ',')]
    #[serde(skip)]
    pub config: Vec<PathBuf>,
    /// This region's node id, 1..=65535, unique in the mesh and stable across restarts.
    #[arg(long, env = "GEOSYNC_NODE_ID")]
    pub node_id: Option<u32>,
    /// The local Redis, e.g. redis://:password@127.0.0.1:6379, or rediss://
    /// for TLS.
    #[arg(long, env = "GEOSYNC_REDIS")]
    pub redis: Option<String>,
    /// PEM CA bundle the local Redis's certificate is checked against (with
    /// rediss://; default: the system's trust store).
    #[arg(long, env = "GEOSYNC_REDIS_TLS_CA", value_name = "FILE")]
    pub redis_tls_ca: Option<PathBuf>,
    /// PEM client certificate (chain) for mutual TLS (with --redis-tls-key).
    #[arg(long, env = "GEOSYNC_REDIS_TLS_CERT", value_name = "FILE")]
    pub redis_tls_cert: Option<PathBuf>,
    /// PEM private key of --redis-tls-cert.
    #[arg(long, env = "GEOSYNC_REDIS_TLS_KEY", value_name = "FILE")]
    pub redis_tls_key: Option<PathBuf>,
    /// A Sentinel (host:port, repeat per sentinel) that names the local master.
    #[arg(long = "sentinel", env = "GEOSYNC_SENTINELS", value_delimiter = ',')]
    #[serde(rename = "sentinel", alias = "sentinels")]
    pub sentinels: Vec<String>,
    /// The master's name in Sentinel (with --sentinel).
    #[arg(long, env = "GEOSYNC_MASTER_NAME")]
    pub master_name: Option<String>,
    /// Reach the sentinels over TLS too, with the --redis-tls-* settings.
    #[arg(
        long,
        env = "GEOSYNC_SENTINEL_TLS",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_name = "BOOL",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub sentinel_tls: Option<bool>,
    /// PEM CA bundle peers' certificates are checked against (mutual TLS
    /// between agents, with --peer-tls-cert and --peer-tls-key).
    #[arg(long, env = "GEOSYNC_PEER_TLS_CA", value_name = "FILE")]
    pub peer_tls_ca: Option<PathBuf>,
    /// PEM certificate (chain) this agent presents to peers; it must name
    /// the node id as the DNS name `geosync-node-<id>`.
    #[arg(long, env = "GEOSYNC_PEER_TLS_CERT", value_name = "FILE")]
    pub peer_tls_cert: Option<PathBuf>,
    /// PEM private key of --peer-tls-cert.
    #[arg(long, env = "GEOSYNC_PEER_TLS_KEY", value_name = "FILE")]
    pub peer_tls_key: Option<PathBuf>,
    /// File holding the mesh secret (one line, at least 32 bytes; two lines
    /// during a rotation). Peer links then use TLS keyed by the secret.
    #[arg(long, env = "GEOSYNC_PEER_SECRET_FILE", value_name = "FILE")]
    pub peer_secret_file: Option<PathBuf>,
    /// Allow plaintext, unauthenticated peer links off loopback (only
    /// behind a VPN or a service mesh that secures them).
    #[arg(
        long,
        env = "GEOSYNC_INSECURE_PEERS",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_name = "BOOL",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub insecure_peers: Option<bool>,
    /// MiB of the largest message accepted from a peer, and so the most the
    /// agent sends in one (batches, snapshot chunks); a single change
    /// larger than this is not replicated. The same in every region.
    #[arg(long, env = "GEOSYNC_PEER_MAX_MESSAGE_MB")]
    pub peer_max_message_mb: Option<u64>,
    /// Address the gRPC server listens on for peers.
    #[arg(long, env = "GEOSYNC_LISTEN")]
    pub listen: Option<String>,
    /// A peer agent's gRPC address (repeat per peer), e.g. http://10.0.0.2:7001.
    #[arg(long = "peer", env = "GEOSYNC_PEERS", value_delimiter = ',')]
    #[serde(rename = "peer", alias = "peers")]
    pub peers: Vec<String>,
    /// Address of the admin HTTP server (/healthz, /readyz, /readyz/mesh, /metrics).
    #[arg(long, env = "GEOSYNC_ADMIN")]
    pub admin: Option<String>,
    /// Directory for the agent's own files.
    #[arg(long, env = "GEOSYNC_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Name of the mesh; agents of different meshes refuse each other.
    #[arg(long, env = "GEOSYNC_MESH")]
    pub mesh: Option<String>,
    /// Largest clock skew accepted in a peer's stamp, in milliseconds.
    #[arg(long, env = "GEOSYNC_MAX_CLOCK_SKEW_MS")]
    pub max_clock_skew_ms: Option<u64>,
    /// Most keys stamped in one batch (a transaction is never split).
    #[arg(long, env = "GEOSYNC_BATCH_KEYS")]
    pub batch_keys: Option<usize>,
    /// Most distinct dirty keys the stamper gathers from what is waiting
    /// before it stamps them, in batches of --batch-keys; a key written
    /// again meanwhile is stamped once, with its latest state.
    #[arg(long, env = "GEOSYNC_COALESCE_KEYS")]
    pub coalesce_keys: Option<usize>,
    /// Most batches kept in memory for peers that have not acknowledged them.
    #[arg(long, env = "GEOSYNC_OUTBOX_BATCHES")]
    pub outbox_batches: Option<usize>,
    /// Most elements of a collection read in one script; larger lists,
    /// sets, sorted sets and hashes travel in pieces, larger streams and
    /// hashes with field expiries are logged, counted and left alone. Use
    /// the same value in every region.
    #[arg(long, env = "GEOSYNC_MAX_KEY_ELEMENTS")]
    pub max_key_elements: Option<u64>,
    /// The database geosync keeps its metadata in, which must hold nothing
    /// else; it is not replicated, and user databases then show only user
    /// keys (default 15, the last of a default server). Use the same
    /// value in every region.
    #[arg(long, env = "GEOSYNC_METADATA_DB")]
    pub metadata_db: Option<u32>,
    /// Seconds between anti-entropy rounds with each peer (0: none).
    #[arg(long, env = "GEOSYNC_ANTI_ENTROPY_INTERVAL_SECS")]
    pub anti_entropy_interval_secs: Option<u64>,
    /// Most bytes per second anti-entropy pulls from peers, over all its
    /// rounds (0: no limit); a larger repair takes longer, it does not stop.
    #[arg(long, env = "GEOSYNC_ANTI_ENTROPY_MAX_BYTES_PER_SEC")]
    pub anti_entropy_max_bytes_per_sec: Option<u64>,
    /// Seconds between collections of the tombstones every region has
    /// (0: tombstones are kept for ever).
    #[arg(long, env = "GEOSYNC_TOMBSTONE_COLLECT_INTERVAL_SECS")]
    pub tombstone_collect_interval_secs: Option<u64>,
    /// Seconds a peer may go without reporting what it has before
    /// `geosync_tombstone_collection_blocked` says it holds tombstones back
    /// (they are kept for it either way).
    #[arg(long, env = "GEOSYNC_TOMBSTONE_HORIZON_SECS")]
    pub tombstone_horizon_secs: Option<u64>,
    /// What a key Redis evicts for memory becomes elsewhere: `local` (the
    /// default) keeps it in the other regions; `global` deletes it
    /// everywhere, as a client's delete (one cache everywhere).
    #[arg(long, env = "GEOSYNC_EVICTIONS")]
    pub evictions: Option<String>,
    /// When the agent acknowledges a write to its Redis, which is what
    /// `WAIT` counts: `one-peer` (the default) once another region applied
    /// it, `all-peers` once every other region did, `local` once the agent
    /// read it.
    #[arg(long, env = "GEOSYNC_ACK_AFTER")]
    pub ack_after: Option<String>,
    /// MiB of stamped changes held in memory for peers that have not
    /// acknowledged them (with --outbox-batches, whichever is reached first).
    #[arg(long, env = "GEOSYNC_OUTBOX_MB")]
    pub outbox_mb: Option<u64>,
    /// MiB of tailer events held in memory while the stamper is behind.
    #[arg(long, env = "GEOSYNC_SPOOL_MEMORY_MB")]
    pub spool_memory_mb: Option<u64>,
    /// MiB of tailer events held on disk (in the data directory) beyond
    /// that; 0 turns the disk spool off.
    #[arg(long, env = "GEOSYNC_SPOOL_DISK_MB")]
    pub spool_disk_mb: Option<u64>,
    /// Log format: text or json.
    #[arg(long, env = "GEOSYNC_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Replicate only keys matching one of these Redis glob patterns
    /// (repeat; default: every key). The same in every region.
    #[arg(
        long = "include-keys",
        env = "GEOSYNC_INCLUDE_KEYS",
        value_delimiter = ','
    )]
    #[serde(rename = "include-keys")]
    pub include_keys: Vec<String>,
    /// Keep keys matching any of these patterns in their region (repeat).
    #[arg(
        long = "exclude-keys",
        env = "GEOSYNC_EXCLUDE_KEYS",
        value_delimiter = ','
    )]
    #[serde(rename = "exclude-keys")]
    pub exclude_keys: Vec<String>,
    /// Replicate only these databases (repeat; default: every one).
    #[arg(
        long = "include-db",
        env = "GEOSYNC_INCLUDE_DBS",
        value_delimiter = ','
    )]
    #[serde(rename = "include-db")]
    pub include_dbs: Vec<u32>,
    /// Keep these databases in their region (repeat).
    #[arg(
        long = "exclude-db",
        env = "GEOSYNC_EXCLUDE_DBS",
        value_delimiter = ','
    )]
    #[serde(rename = "exclude-db")]
    pub exclude_dbs: Vec<u32>,
}

/// A setting that stops the start, naming the setting.
pub type ConfigError = SettingError;

/// Why a non-loopback address is refused without peer security.
const NO_SECURITY: &str = "peer links have no security: give --peer-tls-ca, --peer-tls-cert and --peer-tls-key (mutual TLS) or --peer-secret-file, or --insecure-peers when a VPN or service mesh secures them";

/// True for `localhost` and loopback IP addresses (`127.0.0.0/8`, `::1`).
fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The peer security settings, checked: mutual TLS, a mesh secret, or
/// none (loopback only unless --insecure-peers).
fn peer_auth(u: &RunArgs, node_id: u32) -> Result<PeerAuth, ConfigError> {
    let insecure = u.insecure_peers.unwrap_or(false);
    let tls_given = [
        ("peer-tls-ca", u.peer_tls_ca.is_some()),
        ("peer-tls-cert", u.peer_tls_cert.is_some()),
        ("peer-tls-key", u.peer_tls_key.is_some()),
    ];
    let any_tls = tls_given.iter().any(|(_, set)| *set);
    if any_tls && u.peer_secret_file.is_some() {
        return Err(bad(
            "peer-secret-file",
            "choose mutual TLS (--peer-tls-*) or a mesh secret, not both",
        ));
    }
    if insecure && (any_tls || u.peer_secret_file.is_some()) {
        return Err(bad(
            "insecure-peers",
            "is for peer links without TLS or a secret; drop it, or drop the peer security settings",
        ));
    }
    if any_tls {
        if let Some((missing, _)) = tls_given.iter().find(|(_, set)| !*set) {
            return Err(bad(
                missing,
                "is required with the other --peer-tls-* settings (mutual TLS needs a CA, a certificate and its key)",
            ));
        }
        let files = MutualTlsFiles {
            ca: u.peer_tls_ca.clone().expect("checked"),
            cert: u.peer_tls_cert.clone().expect("checked"),
            key: u.peer_tls_key.clone().expect("checked"),
        };
        return Ok(PeerAuth::Tls(Arc::new(PeerTls::mutual(
            &files,
            Some(node_id),
        )?)));
    }
    if let Some(path) = &u.peer_secret_file {
        return Ok(PeerAuth::Tls(Arc::new(PeerTls::secret(path)?)));
    }
    Ok(PeerAuth::None { insecure })
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The checked settings the agent runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// This region's node id.
    pub node_id: u32,
    /// URL of the local Redis.
    pub redis_url: String,
    /// TLS to the local Redis (a `rediss://` URL), files read and checked.
    pub redis_tls: Option<Arc<RedisTls>>,
    /// The sentinels are reached over TLS too.
    pub sentinel_tls: bool,
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// How the links between agents are secured.
    pub peer_auth: PeerAuth,
    /// The largest message accepted from a peer, in bytes.
    pub peer_max_message: usize,
    /// Peer gRPC endpoints.
    pub peers: Vec<String>,
    /// The node ids given with peers (`ID=URL`), by endpoint.
    pub peer_ids: std::collections::BTreeMap<String, u32>,
    /// Sentinels naming the local master (empty: `redis_url` is the master).
    pub sentinels: Vec<String>,
    /// The master's name in Sentinel.
    pub master_name: Option<String>,
    /// Admin HTTP address.
    pub admin: Option<SocketAddr>,
    /// The agent's directory.
    pub data_dir: PathBuf,
    /// Mesh name.
    pub mesh: String,
    /// Largest accepted clock skew.
    pub max_clock_skew: Duration,
    /// Most keys per stamp batch.
    pub batch_keys: usize,
    /// Most distinct dirty keys gathered before stamping.
    pub coalesce_keys: usize,
    /// Most in-memory batches awaiting acks.
    pub outbox_batches: usize,
    /// Most bytes of encoded changes awaiting acks.
    pub outbox_bytes: usize,
    /// How much the tailer may queue for the stamper.
    pub spool: crate::stamp::spool::Limits,
    /// Most elements of a replicated collection.
    pub max_key_elements: u64,
    /// The database geosync keeps its metadata in.
    pub metadata_db: u32,
    /// Time between anti-entropy rounds (None: no anti-entropy).
    pub anti_entropy_interval: Option<Duration>,
    /// Most bytes per second anti-entropy pulls (0: no limit).
    pub anti_entropy_max_bytes_per_sec: u64,
    /// Time between tombstone collections (None: never).
    pub tombstone_collect_interval: Option<Duration>,
    /// How long a silent peer may hold tombstones back before it is said.
    pub tombstone_horizon: Duration,
    /// Whether Redis's evictions stay in their region.
    pub evictions: crate::source::Evictions,
    /// When a write is acknowledged to Redis (`WAIT`).
    pub ack_after: crate::base::durable::AckAfter,
    /// Log format.
    pub log_format: LogFormat,
    /// Which keys travel between regions.
    pub key_filter: crate::base::filter::KeyFilter,
}

impl RunArgs {
    /// Merges flags/env with the config file and checks everything.
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let mut files = RunArgs::default();
        for path in &self.config {
            files = load_file(path)?.or(files);
        }
        Config::validate(self.or(files))
    }

    /// Each setting from `self`, else from `other`.
    fn or(self, other: RunArgs) -> RunArgs {
        RunArgs {
            config: self.config,
            node_id: self.node_id.or(other.node_id),
            redis: self.redis.or(other.redis),
            redis_tls_ca: self.redis_tls_ca.or(other.redis_tls_ca),
            redis_tls_cert: self.redis_tls_cert.or(other.redis_tls_cert),
            redis_tls_key: self.redis_tls_key.or(other.redis_tls_key),
            sentinel_tls: self.sentinel_tls.or(other.sentinel_tls),
            peer_tls_ca: self.peer_tls_ca.or(other.peer_tls_ca),
            peer_tls_cert: self.peer_tls_cert.or(other.peer_tls_cert),
            peer_tls_key: self.peer_tls_key.or(other.peer_tls_key),
            peer_secret_file: self.peer_secret_file.or(other.peer_secret_file),
            insecure_peers: self.insecure_peers.or(other.insecure_peers),
            peer_max_message_mb: self.peer_max_message_mb.or(other.peer_max_message_mb),
            listen: self.listen.or(other.listen),
            peers: if self.peers.is_empty() {
                other.peers
            } else {
                self.peers
            },
            sentinels: if self.sentinels.is_empty() {
                other.sentinels
            } else {
                self.sentinels
            },
            master_name: self.master_name.or(other.master_name),
            admin: self.admin.or(other.admin),
            data_dir: self.data_dir.or(other.data_dir),
            mesh: self.mesh.or(other.mesh),
            max_clock_skew_ms: self.max_clock_skew_ms.or(other.max_clock_skew_ms),
            batch_keys: self.batch_keys.or(other.batch_keys),
            coalesce_keys: self.coalesce_keys.or(other.coalesce_keys),
            outbox_batches: self.outbox_batches.or(other.outbox_batches),
            spool_memory_mb: self.spool_memory_mb.or(other.spool_memory_mb),
            outbox_mb: self.outbox_mb.or(other.outbox_mb),
            max_key_elements: self.max_key_elements.or(other.max_key_elements),
            metadata_db: self.metadata_db.or(other.metadata_db),
            anti_entropy_interval_secs: self
                .anti_entropy_interval_secs
                .or(other.anti_entropy_interval_secs),
            anti_entropy_max_bytes_per_sec: self
                .anti_entropy_max_bytes_per_sec
                .or(other.anti_entropy_max_bytes_per_sec),
            tombstone_collect_interval_secs: self
                .tombstone_collect_interval_secs
                .or(other.tombstone_collect_interval_secs),
            tombstone_horizon_secs: self.tombstone_horizon_secs.or(other.tombstone_horizon_secs),
            evictions: self.evictions.or(other.evictions),
            ack_after: self.ack_after.or(other.ack_after),
            spool_disk_mb: self.spool_disk_mb.or(other.spool_disk_mb),
            log_format: self.log_format.or(other.log_format),
            include_keys: first_given(self.include_keys, other.include_keys),
            exclude_keys: first_given(self.exclude_keys, other.exclude_keys),
            include_dbs: first_given(self.include_dbs, other.include_dbs),
            exclude_dbs: first_given(self.exclude_dbs, other.exclude_dbs),
        }
    }
}

/// A list setting: the first one given (flags and environment over the file).
fn first_given<T>(mine: Vec<T>, other: Vec<T>) -> Vec<T> {
    if mine.is_empty() { other } else { mine }
}

fn load_file(path: &Path) -> Result<RunArgs, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| bad("config", format!("cannot read {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| bad("config", format!("{}: {e}", path.display())))
}

fn parse_addr(setting: &'static str, s: &str) -> Result<SocketAddr, ConfigError> {
    s.parse().map_err(|e| {
        bad(
            setting,
            format!("{s:?} is not a host:port socket address ({e})"),
        )
    })
}

/// `value`, or `default` when it is not set; refused outside `range`.
fn in_range<T>(
    setting: &'static str,
    value: Option<T>,
    default: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<T, ConfigError>
where
    T: PartialOrd + Copy + std::fmt::Display,
{
    let v = value.unwrap_or(default);
    if !range.contains(&v) {
        return Err(bad(
            setting,
            format!("{v} is not in {}..={}", range.start(), range.end()),
        ));
    }
    Ok(v)
}

impl Config {
    fn validate(u: RunArgs) -> Result<Config, ConfigError> {
        let node_id = u.node_id.ok_or_else(|| bad("node-id", "is required"))?;
        crate::base::hlc::node_id_to_id(node_id)
            .map_err(|_| bad("node-id", format!("{node_id} is not in 1..=65535")))?;
        let peer_auth = peer_auth(&u, node_id)?;
        let redis_url = u.redis.unwrap_or_else(|| "redis://127.0.0.1:6379".into());
        let shown = redacted(&redis_url);
        let info = redis::Client::open(redis_url.as_str())
            .map_err(|e| bad("redis", format!("{shown:?}: {e}")))?;
        let url_tls = match info.get_connection_info().addr() {
            redis::ConnectionAddr::Tcp(_, _) => false,
            redis::ConnectionAddr::TcpTls { insecure: true, .. } => {
                return Err(bad(
                    "redis",
                    format!(
                        "{shown:?}: #insecure is not supported; the server's certificate is always verified (give its CA with --redis-tls-ca)"
                    ),
                ));
            }
            redis::ConnectionAddr::TcpTls { .. } => true,
            _ => {
                return Err(bad(
                    "redis",
                    format!("{shown:?}: want redis://host:port or rediss://host:port (TCP)"),
                ));
            }
        };
        let listen = parse_addr("listen", u.listen.as_deref().unwrap_or("127.0.0.1:7001"))?;
        let scheme = peer_auth.scheme();
        let mut peers = Vec::new();
        let mut peer_ids = std::collections::BTreeMap::new();
        for p in u.peers {
            let p = p.trim().to_string();
            if p.is_empty() {
                continue;
            }
            // `ID=URL` names the peer's node id: its metrics are labelled
            // with it, and a peer that says otherwise is refused.
            let (id, p) = match p.split_once('=') {
                Some((id, url)) if !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()) => {
                    let id: u32 = id
                        .parse()
                        .ok()
                        .filter(|id| crate::base::hlc::node_id_to_id(*id).is_ok())
                        .ok_or_else(|| {
                            bad("peer", format!("{p:?}: node id {id} is not in 1..=65535"))
                        })?;
                    if id == node_id {
                        return Err(bad(
                            "peer",
                            format!("{p:?}: node id {id} is this agent's own"),
                        ));
                    }
                    if peer_ids.values().any(|v| *v == id) {
                        return Err(bad("peer", format!("{p:?}: node id {id} is listed twice")));
                    }
                    (Some(id), url.trim().to_string())
                }
                _ => (None, p),
            };
            let uri: http::Uri = p.parse().map_err(|e| bad("peer", format!("{p:?}: {e}")))?;
            if uri.scheme_str() != Some(scheme) || uri.authority().is_none() {
                let why = match &peer_auth {
                    PeerAuth::Tls(_) => "peer links use TLS",
                    PeerAuth::None { .. } => "peer links have no TLS",
                };
                return Err(bad(
                    "peer",
                    format!("{p:?}: want {scheme}://host:port ({why})"),
                ));
            }
            if peers.contains(&p) {
                return Err(bad("peer", format!("{p:?} is listed twice")));
            }
            if let PeerAuth::None { insecure: false } = peer_auth
                && !uri.host().is_some_and(is_loopback_host)
            {
                return Err(bad(
                    "peer",
                    format!("{p:?} is not a loopback address, and {NO_SECURITY}"),
                ));
            }
            if let Some(id) = id {
                peer_ids.insert(p.clone(), id);
            }
            peers.push(p);
        }
        if let PeerAuth::None { insecure: false } = peer_auth
            && !listen.ip().is_loopback()
        {
            return Err(bad(
                "listen",
                format!("{listen} is not a loopback address, and {NO_SECURITY}"),
            ));
        }
        let mut sentinels = Vec::new();
        for s in u.sentinels {
            let s = s.trim().to_string();
            if s.is_empty() {
                continue;
            }
            let ok = s
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
            if !ok {
                return Err(bad("sentinel", format!("{s:?}: want host:port")));
            }
            sentinels.push(s);
        }
        let master_name = u.master_name.filter(|m| !m.is_empty());
        match (sentinels.is_empty(), &master_name) {
            (false, None) => return Err(bad("master-name", "is required with --sentinel")),
            (true, Some(_)) => {
                return Err(bad(
                    "sentinel",
                    "--master-name needs at least one --sentinel",
                ));
            }
            _ => {}
        }
        let sentinel_tls = u.sentinel_tls.unwrap_or(false);
        let redis_tls = if url_tls {
            let tls = RedisTls::load(
                u.redis_tls_ca.as_deref(),
                u.redis_tls_cert.as_deref(),
                u.redis_tls_key.as_deref(),
            )?;
            // The redis crate parses the same files again; refuse here
            // anything it would refuse when connecting.
            tls.client(&redis_url)
                .map_err(|e| bad("redis", format!("{shown:?} with its TLS settings: {e}")))?;
            Some(Arc::new(tls))
        } else {
            let given = [
                ("redis-tls-ca", u.redis_tls_ca.is_some()),
                ("redis-tls-cert", u.redis_tls_cert.is_some()),
                ("redis-tls-key", u.redis_tls_key.is_some()),
                ("sentinel-tls", sentinel_tls),
            ];
            if let Some((setting, _)) = given.iter().find(|(_, set)| *set) {
                return Err(bad(
                    setting,
                    format!(
                        "is a TLS setting, but --redis {shown:?} is not TLS; use a rediss:// URL"
                    ),
                ));
            }
            None
        };
        if sentinel_tls && sentinels.is_empty() {
            return Err(bad("sentinel-tls", "needs at least one --sentinel"));
        }
        let admin = u
            .admin
            .as_deref()
            .map(|a| parse_addr("admin", a))
            .transpose()?;
        let data_dir = u.data_dir.unwrap_or_else(|| PathBuf::from("./data"));
        let mesh = u.mesh.unwrap_or_else(|| "geosync".into());
        if mesh.is_empty() || mesh.len() > 128 {
            return Err(bad("mesh", "must be 1 to 128 characters"));
        }
        let skew = in_range("max-clock-skew-ms", u.max_clock_skew_ms, 500, 1..=3_600_000)?;
        let batch_keys = in_range("batch-keys", u.batch_keys, 512, 1..=100_000)?;
        let coalesce_keys = in_range(
            "coalesce-keys",
            u.coalesce_keys,
            DEFAULT_COALESCE_KEYS.max(batch_keys),
            1..=10_000_000,
        )?;
        if coalesce_keys < batch_keys {
            return Err(bad(
                "coalesce-keys",
                format!("{coalesce_keys} is below --batch-keys ({batch_keys})"),
            ));
        }
        let outbox_batches = u.outbox_batches.unwrap_or(10_000);
        if outbox_batches == 0 {
            return Err(bad("outbox-batches", "must be at least 1"));
        }
        let outbox_mb = in_range("outbox-mb", u.outbox_mb, 256, 1..=1 << 20)?;
        let spool_memory_mb = in_range("spool-memory-mb", u.spool_memory_mb, 64, 1..=1 << 20)?;
        let spool_disk_mb = in_range("spool-disk-mb", u.spool_disk_mb, 4096, 0..=1 << 30)?;
        let peer_max_message_mb = in_range(
            "peer-max-message-mb",
            u.peer_max_message_mb,
            (crate::mesh::wire::DEFAULT_MAX_MESSAGE_BYTES >> 20) as u64,
            1..=4096,
        )?;
        let max_key_elements = in_range(
            "max-key-elements",
            u.max_key_elements,
            crate::store::DEFAULT_MAX_KEY_ELEMENTS,
            1000..=100_000_000,
        )?;
        let metadata_db = in_range(
            "metadata-db",
            u.metadata_db,
            crate::store::DEFAULT_METADATA_DB,
            0..=u32::MAX,
        )?;
        let anti_entropy = in_range(
            "anti-entropy-interval-secs",
            u.anti_entropy_interval_secs,
            crate::mesh::repair::DEFAULT_INTERVAL.as_secs(),
            0..=86_400,
        )?;
        let anti_entropy_max_bytes_per_sec = u
            .anti_entropy_max_bytes_per_sec
            .unwrap_or(crate::mesh::repair::DEFAULT_MAX_BYTES_PER_SEC);
        if (1..MIN_ANTI_ENTROPY_BYTES_PER_SEC).contains(&anti_entropy_max_bytes_per_sec) {
            return Err(bad(
                "anti-entropy-max-bytes-per-sec",
                format!(
                    "{anti_entropy_max_bytes_per_sec} is less than {MIN_ANTI_ENTROPY_BYTES_PER_SEC}; use 0 for no limit"
                ),
            ));
        }
        let collect = in_range(
            "tombstone-collect-interval-secs",
            u.tombstone_collect_interval_secs,
            60,
            0..=86_400,
        )?;
        let horizon = in_range(
            "tombstone-horizon-secs",
            u.tombstone_horizon_secs,
            86_400,
            1..=30 * 86_400,
        )?;
        let spool = crate::stamp::spool::Limits {
            memory_bytes: (spool_memory_mb << 20) as usize,
            disk_bytes: spool_disk_mb << 20,
        };
        let evictions = match u.evictions.as_deref().unwrap_or("local") {
            "local" => crate::source::Evictions::Local,
            "global" => crate::source::Evictions::Global,
            other => {
                return Err(bad(
                    "evictions",
                    format!("{other:?} is not local or global"),
                ));
            }
        };
        let ack_after = match &u.ack_after {
            Some(a) => a.parse().map_err(|e| bad("ack-after", e))?,
            None => crate::base::durable::AckAfter::default(),
        };
        let key_filter = crate::base::filter::KeyFilter::new(
            &u.include_keys,
            &u.exclude_keys,
            &u.include_dbs,
            &u.exclude_dbs,
        )
        .map_err(|(setting, e)| bad(setting, e))?;
        if key_filter.admits_db(metadata_db) && !u.include_dbs.is_empty() {
            return Err(bad(
                "include-db",
                format!("{metadata_db} is --metadata-db, which is never replicated"),
            ));
        }
        let log_format = match u.log_format.as_deref().unwrap_or("text") {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => return Err(bad("log-format", format!("{other:?} is not text or json"))),
        };
        Ok(Config {
            node_id,
            redis_url,
            redis_tls,
            sentinel_tls,
            listen,
            peer_auth,
            peer_max_message: (peer_max_message_mb << 20) as usize,
            peers,
            peer_ids,
            sentinels,
            master_name,
            admin,
            data_dir,
            mesh,
            max_clock_skew: Duration::from_millis(skew),
            batch_keys,
            coalesce_keys,
            outbox_batches,
            outbox_bytes: (outbox_mb << 20) as usize,
            spool,
            max_key_elements,
            metadata_db,
            anti_entropy_interval: (anti_entropy > 0).then(|| Duration::from_secs(anti_entropy)),
            anti_entropy_max_bytes_per_sec,
            tombstone_collect_interval: (collect > 0).then(|| Duration::from_secs(collect)),
            tombstone_horizon: Duration::from_secs(horizon),
            evictions,
            ack_after,
            log_format,
            key_filter,
        })
    }
}

/// The smallest nonzero `--anti-entropy-max-bytes-per-sec`: less would
/// take minutes for one chunk of keys.
pub const MIN_ANTI_ENTROPY_BYTES_PER_SEC: u64 = 1024;

/// Default of `--coalesce-keys`: about 6 MiB of pending keys at most.
pub const DEFAULT_COALESCE_KEYS: usize = 65_536;

/// `url` without its password, for messages and logs.
pub fn redacted(url: &str) -> String {
    match url.parse::<http::Uri>() {
        Ok(u) => match u.authority() {
            Some(a) if a.as_str().contains('@') => {
                url.replace(a.as_str(), a.as_str().rsplit('@').next().unwrap_or(""))
            }
            _ => url.to_string(),
        },
        Err(_) => "(unparsable url)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::security::TlsMode;

    /// `geosync run`'s flags alone, as the binary parses them.
    #[derive(clap::Parser)]
    struct RunOnly {
        #[command(flatten)]
        run: RunArgs,
    }

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        use clap::Parser;
        let mut full = vec!["geosync-run"];
        full.extend_from_slice(args);
        RunOnly::try_parse_from(full).unwrap().run.into_config()
    }

    #[test]
    fn the_documented_command_line_parses() {
        let c = parse(&[
            "--node-id",
            "1",
            "--redis",
            "redis://127.0.0.1:6379",
            "--listen",
            "127.0.0.1:7001",
            "--peer",
            "http://127.0.0.1:7002",
            "--peer",
            "http://127.0.0.1:7003",
            "--admin",
            "127.0.0.1:9001",
            "--data-dir",
            "./data/1",
        ])
        .unwrap();
        assert_eq!(c.node_id, 1);
        assert_eq!(c.peers.len(), 2);
        assert_eq!(c.admin, Some("127.0.0.1:9001".parse().unwrap()));
        assert_eq!(c.data_dir, PathBuf::from("./data/1"));
        assert_eq!(c.spool.memory_bytes, 64 << 20);
        assert_eq!(c.spool.disk_bytes, 4096 << 20);
        let c = parse(&[
            "--node-id",
            "1",
            "--spool-memory-mb",
            "8",
            "--spool-disk-mb",
            "0",
        ])
        .unwrap();
        assert_eq!((c.spool.memory_bytes, c.spool.disk_bytes), (8 << 20, 0));
        assert_eq!(c.anti_entropy_max_bytes_per_sec, 8 << 20, "the default");
        let limit = |v: &str| {
            parse(&["--node-id", "1", "--anti-entropy-max-bytes-per-sec", v])
                .unwrap()
                .anti_entropy_max_bytes_per_sec
        };
        assert_eq!(limit("0"), 0, "no limit");
        assert_eq!(limit("1024"), 1024);
    }

    #[test]
    fn bad_settings_name_themselves() {
        let cases: &[(&[&str], &str)] = &[
            (&[], "node-id"),
            (&["--node-id", "0"], "node-id"),
            (&["--node-id", "70000"], "node-id"),
            (&["--node-id", "1", "--redis", "nope://x"], "redis"),
            (&["--node-id", "1", "--listen", "localhost"], "listen"),
            (&["--node-id", "1", "--peer", "127.0.0.1:7002"], "peer"),
            (&["--node-id", "1", "--admin", "x:y"], "admin"),
            (&["--node-id", "1", "--log-format", "xml"], "log-format"),
            (
                &["--node-id", "1", "--max-clock-skew-ms", "0"],
                "max-clock-skew-ms",
            ),
            (&["--node-id", "1", "--outbox-mb", "0"], "outbox-mb"),
            (
                &["--node-id", "1", "--max-key-elements", "10"],
                "max-key-elements",
            ),
            (
                &["--node-id", "1", "--spool-memory-mb", "0"],
                "spool-memory-mb",
            ),
            (
                &["--node-id", "1", "--spool-disk-mb", "9999999999"],
                "spool-disk-mb",
            ),
            (
                &["--node-id", "1", "--anti-entropy-max-bytes-per-sec", "100"],
                "anti-entropy-max-bytes-per-sec",
            ),
        ];
        for (args, setting) in cases {
            let err = parse(args).unwrap_err();
            assert_eq!(err.setting, *setting, "{args:?}: {err}");
            assert!(err.to_string().contains(setting));
        }
    }

    #[test]
    fn flags_win_over_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.toml");
        std::fs::write(
            &path,
            "node-id = 7\nlisten = \"127.0.0.1:7100\"\npeer = [\"http://127.0.0.1:7200\"]\nmesh = \"m\"\n",
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let c = parse(&["--config", p, "--listen", "127.0.0.1:7300"]).unwrap();
        assert_eq!(c.node_id, 7);
        assert_eq!(c.listen, "127.0.0.1:7300".parse().unwrap());
        assert_eq!(c.peers, vec!["http://127.0.0.1:7200".to_string()]);
        assert_eq!(c.mesh, "m");
    }

    /// `ID=URL` names a peer's node id; a bad, own or repeated id is
    /// refused, naming the entry.
    #[test]
    fn peers_may_name_their_node_ids() {
        let c = parse(&[
            "--node-id",
            "1",
            "--peer",
            "2=http://127.0.0.1:7002",
            "--peer",
            "http://127.0.0.1:7003",
        ])
        .unwrap();
        assert_eq!(c.peers, ["http://127.0.0.1:7002", "http://127.0.0.1:7003"]);
        assert_eq!(c.peer_ids.len(), 1);
        assert_eq!(c.peer_ids["http://127.0.0.1:7002"], 2);
        for (entries, why) in [
            (
                &["0=http://127.0.0.1:7002"][..],
                "node id 0 is not in 1..=65535",
            ),
            (
                &["70000=http://127.0.0.1:7002"][..],
                "node id 70000 is not in",
            ),
            (
                &["1=http://127.0.0.1:7002"][..],
                "node id 1 is this agent's own",
            ),
            (
                &["2=http://127.0.0.1:7002", "2=http://127.0.0.1:7003"][..],
                "node id 2 is listed twice",
            ),
            (&["2=ftp://127.0.0.1:7002"][..], "want http://host:port"),
        ] {
            let mut args = vec!["--node-id", "1"];
            for e in entries {
                args.extend(["--peer", e]);
            }
            let err = parse(&args).unwrap_err();
            assert_eq!(err.setting, "peer", "{entries:?}");
            assert!(err.message.contains(why), "{entries:?}: {err}");
        }
    }

    #[test]
    fn unknown_file_setting_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.toml");
        std::fs::write(&path, "node-id = 1\nnode_idd = 2\n").unwrap();
        let err = parse(&["--config", path.to_str().unwrap()]).unwrap_err();
        assert_eq!(err.setting, "config");
        assert!(err.message.contains("node_idd"), "{err}");
    }

    /// A CA, a client certificate it signed, and a second CA, as PEM files.
    struct Pems {
        dir: tempfile::TempDir,
    }

    impl Pems {
        fn new() -> Pems {
            use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
            let dir = tempfile::tempdir().unwrap();
            let ca_key = KeyPair::generate().unwrap();
            let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
            ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let ca_cert = ca.self_signed(&ca_key).unwrap();
            let issuer = Issuer::new(ca, ca_key);
            let client_key = KeyPair::generate().unwrap();
            let client = CertificateParams::new(vec!["geosync".to_string()])
                .unwrap()
                .signed_by(&client_key, &issuer)
                .unwrap();
            let other_key = KeyPair::generate().unwrap();
            let w = |name: &str, text: String| std::fs::write(dir.path().join(name), text).unwrap();
            w("ca.pem", ca_cert.pem());
            w("client.pem", client.pem());
            w("client.key", client_key.serialize_pem());
            w("other.key", other_key.serialize_pem());
            w("garbage.pem", "not a certificate\n".into());
            w(
                "broken.pem",
                "-----BEGIN CERTIFICATE-----\n@@@@\n-----END CERTIFICATE-----\n".into(),
            );
            Pems { dir }
        }

        fn path(&self, name: &str) -> String {
            self.dir.path().join(name).to_str().unwrap().to_string()
        }
    }

    fn tls_args<'a>(url: &'a str, rest: &[&'a str]) -> Vec<&'a str> {
        let mut v = vec!["--node-id", "1", "--redis", url];
        v.extend_from_slice(rest);
        v
    }

    #[test]
    fn a_rediss_url_with_ca_and_client_certificate_loads() {
        let p = Pems::new();
        let (ca, cert, key) = (p.path("ca.pem"), p.path("client.pem"), p.path("client.key"));
        let c = parse(&tls_args(
            "rediss://127.0.0.1:6380",
            &[
                "--redis-tls-ca",
                &ca,
                "--redis-tls-cert",
                &cert,
                "--redis-tls-key",
                &key,
            ],
        ))
        .unwrap();
        let tls = c.redis_tls.expect("TLS is on");
        assert!(tls.trust().contains("ca.pem"), "{}", tls.trust());
        assert!(!c.sentinel_tls);
        // Without a client certificate: server-only TLS.
        let c = parse(&tls_args(
            "rediss://localhost:6380",
            &["--redis-tls-ca", &ca],
        ))
        .unwrap();
        assert!(c.redis_tls.is_some());
        // A plain URL has no TLS.
        assert!(
            parse(&tls_args("redis://127.0.0.1:6379", &[]))
                .unwrap()
                .redis_tls
                .is_none()
        );
    }

    /// Each bad TLS input stops the start with the setting's name and,
    /// where a file is at fault, the file's path.
    #[test]
    fn bad_tls_settings_name_the_setting_and_the_file() {
        let p = Pems::new();
        let (ca, cert, key) = (p.path("ca.pem"), p.path("client.pem"), p.path("client.key"));
        let missing = p.path("missing.pem");
        let (garbage, broken, other_key) = (
            p.path("garbage.pem"),
            p.path("broken.pem"),
            p.path("other.key"),
        );
        let tls = "rediss://127.0.0.1:6380";
        let plain = "redis://127.0.0.1:6379";
        // Mutual TLS with the given client certificate and key files.
        let mutual = |cert, key| {
            tls_args(
                tls,
                &[
                    "--redis-tls-ca",
                    &ca,
                    "--redis-tls-cert",
                    cert,
                    "--redis-tls-key",
                    key,
                ],
            )
        };
        let cases: Vec<(Vec<&str>, &str, &str)> = vec![
            (
                tls_args(tls, &["--redis-tls-ca", &missing]),
                "redis-tls-ca",
                &missing,
            ),
            (
                tls_args(tls, &["--redis-tls-ca", &garbage]),
                "redis-tls-ca",
                &garbage,
            ),
            (
                tls_args(tls, &["--redis-tls-ca", &broken]),
                "redis-tls-ca",
                &broken,
            ),
            (
                tls_args(tls, &["--redis-tls-ca", &ca, "--redis-tls-cert", &cert]),
                "redis-tls-key",
                "--redis-tls-cert",
            ),
            (
                tls_args(tls, &["--redis-tls-ca", &ca, "--redis-tls-key", &key]),
                "redis-tls-cert",
                "--redis-tls-key",
            ),
            (mutual(&missing, &key), "redis-tls-cert", &missing),
            (mutual(&garbage, &key), "redis-tls-cert", &garbage),
            (mutual(&cert, &missing), "redis-tls-key", &missing),
            // A certificate where the key should be.
            (mutual(&cert, &cert), "redis-tls-key", &cert),
            // Another certificate's key.
            (mutual(&cert, &other_key), "redis-tls-key", &other_key),
            // TLS settings with a plain URL.
            (
                tls_args(plain, &["--redis-tls-ca", &ca]),
                "redis-tls-ca",
                "rediss://",
            ),
            (
                tls_args(plain, &["--redis-tls-cert", &cert, "--redis-tls-key", &key]),
                "redis-tls-cert",
                "rediss://",
            ),
            (
                tls_args(
                    plain,
                    &[
                        "--sentinel",
                        "127.0.0.1:26379",
                        "--master-name",
                        "m",
                        "--sentinel-tls",
                    ],
                ),
                "sentinel-tls",
                "rediss://",
            ),
            // Sentinel TLS without sentinels.
            (
                tls_args(tls, &["--redis-tls-ca", &ca, "--sentinel-tls"]),
                "sentinel-tls",
                "--sentinel",
            ),
            // Verification cannot be turned off.
            (
                tls_args(
                    "rediss://127.0.0.1:6380/#insecure",
                    &["--redis-tls-ca", &ca],
                ),
                "redis",
                "insecure",
            ),
        ];
        for (args, setting, names) in cases {
            let err = parse(&args).unwrap_err();
            assert_eq!(err.setting, setting, "{args:?}: {err}");
            let text = err.to_string();
            assert!(text.contains(&format!("`{setting}`")), "{args:?}: {text}");
            assert!(text.contains(names), "{args:?}: {text} should name {names}");
        }
    }

    #[test]
    fn tls_settings_come_from_the_file_and_flags_win() {
        let p = Pems::new();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.toml");
        std::fs::write(
            &path,
            format!(
                "node-id = 1\nredis = \"rediss://127.0.0.1:6380\"\nredis-tls-ca = {:?}\n\
                 redis-tls-cert = {:?}\nredis-tls-key = {:?}\nsentinel = [\"127.0.0.1:26379\"]\n\
                 master-name = \"m\"\nsentinel-tls = true\n",
                p.path("missing.pem"),
                p.path("client.pem"),
                p.path("client.key"),
            ),
        )
        .unwrap();
        let f = path.to_str().unwrap();
        let err = parse(&["--config", f]).unwrap_err();
        assert_eq!(err.setting, "redis-tls-ca", "{err}");
        let ca = p.path("ca.pem");
        let c = parse(&["--config", f, "--redis-tls-ca", &ca]).unwrap();
        assert!(c.redis_tls.unwrap().trust().contains("ca.pem"));
        assert!(c.sentinel_tls);
        let c = parse(&["--config", f, "--redis-tls-ca", &ca, "--sentinel-tls=false"]).unwrap();
        assert!(
            !c.sentinel_tls,
            "the flag turns the file's sentinel-tls off"
        );
    }

    #[test]
    fn peer_security_settings_come_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("mesh.secret");
        std::fs::write(&secret, "0123456789abcdef0123456789abcdef\n").unwrap();
        let file = |body: String| {
            let path = dir.path().join("g.toml");
            std::fs::write(&path, format!("node-id = 1\n{body}")).unwrap();
            path.to_str().unwrap().to_string()
        };
        let f = file(format!(
            "listen = \"0.0.0.0:7001\"\npeer = [\"https://10.0.0.2:7001\"]\n\
             peer-secret-file = {:?}\npeer-max-message-mb = 8\n",
            secret.to_str().unwrap()
        ));
        let c = parse(&["--config", &f]).unwrap();
        assert_eq!(c.peer_auth.tls().map(|t| t.mode), Some(TlsMode::Secret));
        assert_eq!(c.peer_max_message, 8 << 20);
        let f = file(
            "listen = \"0.0.0.0:7001\"\npeer = [\"http://10.0.0.2:7001\"]\ninsecure-peers = true\n"
                .into(),
        );
        let c = parse(&["--config", &f]).unwrap();
        assert!(matches!(c.peer_auth, PeerAuth::None { insecure: true }));
        let f = file("peer-tls-ca = \"/nonexistent/ca.pem\"\n".into());
        assert_eq!(
            parse(&["--config", &f]).unwrap_err().setting,
            "peer-tls-cert"
        );
    }
}
