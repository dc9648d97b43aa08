//! The tailer: follows the local Redis as a replica and reports which keys
//! each write touched.
//!
//! One session is: connect, `AUTH`, `REPLCONF listening-port`, `REPLCONF capa
//! eof capa psync2`, `PSYNC`, receive the RDB snapshot (length-prefixed or
//! diskless with an EOF marker) into the data directory, hand every key in it
//! to the stamper, then follow the command stream, acknowledging the offset
//! every second and on `REPLCONF GETACK`. A session ends with a reason; the
//! tailer reconnects with capped, jittered backoff.
//!
//! What it emits is [`TailEvent`]s: sets of dirty keys, never values. The
//! stamper reads the values atomically inside Redis (DESIGN.md, "Why ship
//! state, and why stamp inside Redis").

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{
    AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter, ReadHalf, WriteHalf,
};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::backoff::Backoff;
use crate::keyspec::{KeyLookup, KeySpecTable, written_keys_from_server};
use crate::metrics::Metrics;
use crate::position::Position;
use crate::rdb::RdbReader;
use crate::resp::{self, Frame};
use crate::spool::{SpoolError, SpoolTx};
use crate::store::{self, is_reserved};
use crate::tls::RedisTls;

/// What the tailer tells the stamper.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TailEvent {
    /// Keys written together: one command, or one MULTI/EXEC (a client's
    /// transaction or a script's effects). Stamped in one batch.
    Dirty(Vec<(u32, Bytes)>),
    /// FLUSHDB of one database, or FLUSHALL (`None`).
    Flush(Option<u32>),
    /// A full resync starts: the keys that follow, up to `SnapshotDone`,
    /// are the snapshot's and the metadata's.
    SnapshotStart,
    /// Every key of a full resync's snapshot has been reported.
    SnapshotDone,
    /// Every write up to this point of the stream has been reported; once
    /// the keys reported so far are stamped, the position may be recorded.
    Position(Position),
}

/// Why a replication session ended.
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    /// Network trouble.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The TLS connection for replication could not be made (handshake,
    /// certificate verification).
    #[error("TLS to {addr} (server checked against {trust}): {source}{}", crate::tls::hint(&source.to_string()))]
    Tls {
        /// host:port of the master.
        addr: String,
        /// What the server's certificate was checked against.
        trust: String,
        /// What failed.
        source: std::io::Error,
    },
    /// The master closed the connection.
    #[error("master closed the connection")]
    Closed,
    /// The master refused a handshake step.
    #[error("handshake step {step} refused: {reply}")]
    Handshake {
        /// The step.
        step: &'static str,
        /// The master's reply.
        reply: String,
    },
    /// The stream is not RESP.
    #[error("replication stream: {0}")]
    Protocol(String),
    /// The snapshot could not be parsed.
    #[error("snapshot: {0}")]
    Rdb(#[from] crate::rdb::RdbError),
    /// Key specs or key lookups failed.
    #[error("key specs: {0}")]
    KeySpec(#[from] crate::keyspec::KeySpecError),
    /// Side connection failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The master could not be found (Sentinel).
    #[error("{0}")]
    Locate(#[from] crate::locator::LocateError),
    /// Sentinel announced another master.
    #[error("sentinel switched the master")]
    MasterSwitched,
    /// The stamper is gone (shutdown).
    #[error("stamper stopped")]
    StamperGone,
    /// The disk spool failed; the stream is read again from the recorded
    /// position.
    #[error("spool: {0}")]
    Spool(String),
    /// Shutdown was requested.
    #[error("shutdown")]
    Shutdown,
}

impl From<SpoolError> for TailError {
    fn from(e: SpoolError) -> Self {
        match e {
            SpoolError::Closed => TailError::StamperGone,
            SpoolError::Lost(why) => TailError::Spool(why),
        }
    }
}

/// Settings the tailer needs.
pub struct TailerConfig {
    /// Where the local master is.
    pub locator: crate::locator::Locator,
    /// Port announced with `REPLCONF listening-port`.
    pub announce_port: u16,
    /// Where the snapshot is written while it is parsed.
    pub data_dir: PathBuf,
    /// Number of databases of the local Redis.
    pub databases: u32,
    /// This region's node id.
    pub node_id: u32,
    /// The peers, asked to rebuild the region when its Redis lost its data.
    pub peers: Vec<String>,
    /// The mesh name.
    pub mesh: String,
    /// The agent's clock.
    pub clock: Arc<uhlc::HLC>,
}

/// Runs replication sessions until shutdown.
pub async fn run(
    cfg: TailerConfig,
    tx: SpoolTx,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::with(Duration::from_millis(100), Duration::from_secs(10));
    loop {
        let started = Instant::now();
        let result = tokio::select! {
            r = session(&cfg, &tx, &metrics, &shutdown) => r,
            _ = shutdown.cancelled() => Err(TailError::Shutdown),
        };
        match result {
            Err(TailError::Shutdown) | Err(TailError::StamperGone) => {
                info!("tailer stopped");
                return;
            }
            // A snapshot this version cannot read fails the same way on
            // every retry: say so loudly, not as a passing network hiccup.
            Err(e @ TailError::Rdb(_)) => error!(
                error = %e,
                "the master's snapshot cannot be read; retrying, but the agent cannot sync until this is fixed (a newer geosync, or a server version it supports)"
            ),
            Err(e) => warn!(error = %e, "replication session ended"),
            Ok(()) => warn!("replication session ended"),
        }
        if started.elapsed() > Duration::from_secs(30) {
            backoff.reset(Duration::from_millis(100));
        }
        if !backoff.wait(&shutdown).await {
            return;
        }
    }
}

/// Room made in the read buffer before each read of the socket.
const READ_CHUNK: usize = 256 << 10;

/// What the replication socket is: plain TCP or TLS over it.
trait Socket: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> Socket for T {}

/// The socket to the master, with its read buffer.
struct Link {
    rd: ReadHalf<Box<dyn Socket>>,
    wr: WriteHalf<Box<dyn Socket>>,
    buf: BytesMut,
}

impl Link {
    /// Connects to the master `client` points at, over TLS when its URL is
    /// `rediss://` (with the locator's TLS settings).
    async fn connect(client: &redis::Client, tls: Option<&RedisTls>) -> Result<Link, TailError> {
        let socket: Box<dyn Socket> = match (client.get_connection_info().addr(), tls) {
            (redis::ConnectionAddr::Tcp(host, port), _) => {
                let stream = TcpStream::connect((host.as_str(), *port)).await?;
                stream.set_nodelay(true)?;
                Box::new(stream)
            }
            (redis::ConnectionAddr::TcpTls { host, port, .. }, Some(tls)) => {
                let stream = tls
                    .connect(host, *port)
                    .await
                    .map_err(|source| TailError::Tls {
                        addr: format!("{host}:{port}"),
                        trust: tls.trust(),
                        source,
                    })?;
                Box::new(stream)
            }
            (redis::ConnectionAddr::TcpTls { host, port, .. }, None) => {
                return Err(TailError::Protocol(format!(
                    "{host}:{port} is a rediss:// master but no TLS settings were given"
                )));
            }
            (other, _) => {
                return Err(TailError::Protocol(format!(
                    "unsupported address {other:?}"
                )));
            }
        };
        let (rd, wr) = tokio::io::split(socket);
        Ok(Link {
            rd,
            wr,
            buf: BytesMut::with_capacity(1 << 16),
        })
    }

    /// Reads more of the stream into the buffer. Cancel-safe (the stream
    /// loop selects on it).
    async fn fill(&mut self) -> Result<(), TailError> {
        // Without room, `read_buf` reads a few bytes at a time.
        self.buf.reserve(READ_CHUNK);
        let n = self.rd.read_buf(&mut self.buf).await;
        read_result(n)
    }

    async fn send(&mut self, args: &[&[u8]]) -> Result<(), TailError> {
        self.wr.write_all(&resp::encode_command(args)).await?;
        // TLS may keep written records until flushed.
        self.wr.flush().await?;
        Ok(())
    }

    /// Reads one reply frame.
    async fn reply(&mut self) -> Result<Frame, TailError> {
        loop {
            if let Some((f, used)) =
                resp::parse(&self.buf).map_err(|e| TailError::Protocol(e.to_string()))?
            {
                self.buf.advance(used);
                return Ok(f);
            }
            self.fill().await?;
        }
    }

    /// Sends a command and expects `+OK` (or any simple string).
    async fn call_ok(&mut self, step: &'static str, args: &[&[u8]]) -> Result<(), TailError> {
        self.send(args).await?;
        match self.reply().await? {
            Frame::Simple(_) => Ok(()),
            other => Err(TailError::Handshake {
                step,
                reply: format!("{other:?}"),
            }),
        }
    }

    /// Reads one CRLF-terminated line, skipping the bare `\n` keep-alives the
    /// master sends while it prepares a snapshot.
    async fn line(&mut self) -> Result<Vec<u8>, TailError> {
        loop {
            while self.buf.first() == Some(&b'\n') {
                self.buf.advance(1);
            }
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.buf[..i].to_vec();
                self.buf.advance(i + 2);
                return Ok(line);
            }
            if self.buf.len() > 64 * 1024 {
                return Err(TailError::Protocol("line too long".into()));
            }
            self.fill().await?;
        }
    }
}

/// A read of the replication socket: the end of the stream is the master
/// closing the connection, also when a TLS peer went away without saying
/// so (a killed or restarted Redis sends no close_notify).
fn read_result(r: std::io::Result<usize>) -> Result<(), TailError> {
    match r {
        Ok(0) => Err(TailError::Closed),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(TailError::Closed),
        Err(e) => Err(e.into()),
    }
}

/// Writes the snapshot that follows `+FULLRESYNC` into `path`.
/// Returns true when it was a diskless (EOF-marker) transfer.
async fn receive_snapshot(link: &mut Link, path: &PathBuf) -> Result<bool, TailError> {
    let header = link.line().await?;
    let header = String::from_utf8_lossy(&header).into_owned();
    let file = tokio::fs::File::create(path).await?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let diskless = if let Some(mark) = header.strip_prefix("$EOF:") {
        let mark = mark.as_bytes().to_vec();
        if mark.len() != 40 {
            return Err(TailError::Protocol(format!("bad EOF mark {header:?}")));
        }
        // Stream until the buffer ends with the mark; keep the last 40 bytes
        // back since they may turn out to be the mark.
        loop {
            if link.buf.len() >= 40 && link.buf[link.buf.len() - 40..] == mark[..] {
                let n = link.buf.len() - 40;
                out.write_all(&link.buf[..n]).await?;
                link.buf.clear();
                break;
            }
            if link.buf.len() > 40 + (1 << 16) {
                let n = link.buf.len() - 40;
                out.write_all(&link.buf[..n]).await?;
                link.buf.advance(n);
            }
            link.fill().await?;
        }
        true
    } else if let Some(len) = header.strip_prefix('$') {
        let mut left: usize = len
            .parse()
            .map_err(|_| TailError::Protocol(format!("bad snapshot header {header:?}")))?;
        while left > 0 {
            if link.buf.is_empty() {
                link.fill().await?;
            }
            let n = left.min(link.buf.len());
            out.write_all(&link.buf[..n]).await?;
            link.buf.advance(n);
            left -= n;
        }
        false
    } else {
        return Err(TailError::Protocol(format!(
            "bad snapshot header {header:?}"
        )));
    };
    out.flush().await?;
    Ok(diskless)
}

/// Parses the snapshot file and reports its keys in chunks.
async fn report_snapshot(path: PathBuf, tx: &SpoolTx) -> Result<u64, TailError> {
    let tx = tx.clone();
    tokio::task::spawn_blocking(move || -> Result<u64, TailError> {
        let file = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(&path)?);
        let mut rdb = RdbReader::new(file)?;
        let mut chunk = Vec::with_capacity(1024);
        let mut n = 0u64;
        // Key-only mode: values are skipped, not decoded, so memory does not
        // grow with the size of any value.
        while let Some(k) = rdb.next_key()? {
            if is_reserved(&k.key) {
                continue;
            }
            n += 1;
            chunk.push((k.db as u32, Bytes::from(k.key)));
            if chunk.len() >= 1024 {
                tx.blocking_send(TailEvent::Dirty(std::mem::take(&mut chunk)))
                    .map_err(TailError::from)?;
            }
        }
        if !chunk.is_empty() {
            tx.blocking_send(TailEvent::Dirty(chunk))
                .map_err(TailError::from)?;
        }
        let _ = std::fs::remove_file(&path);
        Ok(n)
    })
    .await
    .map_err(|e| TailError::Protocol(format!("snapshot task: {e}")))?
}

/// After a full resync (`values`), reports every key the metadata records as
/// holding a value; after any resync, this node's own records. Values missing from the snapshot
/// were deleted while nobody was watching; the stamper turns them into
/// tombstones (or, when their expiry has passed, into the expiry every
/// region applies on its own). Own tombstones may never have reached a peer;
/// the stamper re-ships those newer than what every peer acknowledged.
async fn report_recorded(
    side: &mut redis::aio::MultiplexedConnection,
    databases: u32,
    node_id: u32,
    values: bool,
    tx: &SpoolTx,
) -> Result<u64, TailError> {
    let own = store::node_suffix(node_id).into_bytes();
    let mut n = 0;
    for db in 0..databases {
        redis::cmd("SELECT").arg(db).exec_async(side).await?;
        let mut cursor = 0u64;
        let mut buckets: Vec<Vec<u8>> = Vec::new();
        loop {
            let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{}*", store::META_PREFIX))
                .arg("COUNT")
                .arg(1000)
                .query_async(side)
                .await?;
            buckets.extend(keys);
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        for bucket in buckets {
            let mut cursor = 0u64;
            loop {
                let (next, flat): (u64, Vec<Vec<u8>>) = redis::cmd("HSCAN")
                    .arg(&bucket)
                    .arg(cursor)
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(side)
                    .await?;
                let keys: Vec<(u32, Bytes)> = flat
                    .chunks(2)
                    .filter(|p| {
                        p.len() == 2
                            && ((values && p[1].get(store::RECORD_FLAG_AT) == Some(&b'v'))
                                || p[1]
                                    .get(store::RECORD_FLAG_AT - own.len()..store::RECORD_FLAG_AT)
                                    == Some(own.as_slice()))
                    })
                    .map(|p| (db, Bytes::from(p[0].clone())))
                    .collect();
                n += keys.len() as u64;
                if !keys.is_empty() {
                    tx.send(TailEvent::Dirty(keys))
                        .await
                        .map_err(TailError::from)?;
                }
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
        }
    }
    redis::cmd("SELECT").arg(0).exec_async(side).await?;
    Ok(n)
}

/// Applies a peer's recorded state (see [`crate::rebuild`]); with
/// `until_done`, retries until a peer answers.
async fn pull_from_peers(
    cfg: &TailerConfig,
    metrics: &Metrics,
    until_done: bool,
    shutdown: &CancellationToken,
) -> Result<(), TailError> {
    let rebuild = crate::rebuild::Rebuild {
        peers: &cfg.peers,
        node_id: cfg.node_id,
        mesh: &cfg.mesh,
        clock: &cfg.clock,
        metrics,
    };
    let mut store = crate::store::Store::new(cfg.locator.clone());
    if rebuild
        .run(&mut store, until_done, shutdown)
        .await
        .is_none()
        && shutdown.is_cancelled()
    {
        return Err(TailError::Shutdown);
    }
    Ok(())
}

async fn handshake(
    cfg: &TailerConfig,
    client: &redis::Client,
    link: &mut Link,
) -> Result<(), TailError> {
    let info = client.get_connection_info();
    let redis = info.redis_settings();
    if let Some(password) = redis.password() {
        match redis.username() {
            Some(user) => {
                link.call_ok("AUTH", &[b"AUTH", user.as_bytes(), password.as_bytes()])
                    .await?
            }
            None => {
                link.call_ok("AUTH", &[b"AUTH", password.as_bytes()])
                    .await?
            }
        }
    }
    link.call_ok("PING", &[b"PING"]).await?;
    let port = cfg.announce_port.to_string();
    link.call_ok(
        "REPLCONF listening-port",
        &[b"REPLCONF", b"listening-port", port.as_bytes()],
    )
    .await?;
    link.call_ok(
        "REPLCONF capa",
        &[b"REPLCONF", b"capa", b"eof", b"capa", b"psync2"],
    )
    .await
}

/// One replication session, from connect to the first error.
async fn session(
    cfg: &TailerConfig,
    tx: &SpoolTx,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) -> Result<(), TailError> {
    let mut epoch = cfg.locator.epoch();
    epoch.mark_unchanged();
    let client = cfg.locator.master().await?;
    let mut side = crate::locator::connect(&client).await?;
    let specs = KeySpecTable::load(&mut side).await?;
    let mut link = Link::connect(&client, cfg.locator.tls()).await?;
    handshake(cfg, &client, &mut link).await?;
    // Continue from the recorded position when there is one.
    let resume = crate::position::load(&cfg.data_dir);
    match &resume {
        Some(p) => {
            let next = (p.offset + 1).to_string();
            link.send(&[b"PSYNC", p.replid.as_bytes(), next.as_bytes()])
                .await?
        }
        None => link.send(&[b"PSYNC", b"?", b"-1"]).await?,
    }
    let reply = link.line().await?;
    let reply = String::from_utf8_lossy(&reply).into_owned();
    let mut parts = reply.trim_start_matches('+').split(' ');
    let (replid, offset, db) = match (parts.next(), resume) {
        (Some("CONTINUE"), Some(p)) => {
            metrics.sync_partial_ok.inc();
            // A new id means the master was promoted; the offsets carry on.
            let replid = parts
                .next()
                .map(str::to_string)
                .unwrap_or_else(|| p.replid.clone());
            info!(%replid, offset = p.offset, "partial resync");
            // The outbox did not survive a restart: re-ship what this node
            // stamped and no peer acknowledged.
            tx.send(TailEvent::SnapshotStart)
                .await
                .map_err(TailError::from)?;
            let recorded =
                report_recorded(&mut side, cfg.databases, cfg.node_id, false, tx).await?;
            // A promoted replica continued the stream, but may lack the old
            // master's last writes, which this agent may have shipped or
            // applied already: peers' recorded state brings them back.
            if replid != p.replid {
                warn!(%replid, "the local master changed; reconciling with a peer");
                pull_from_peers(cfg, metrics, false, shutdown).await?;
            }
            tx.send(TailEvent::SnapshotDone)
                .await
                .map_err(TailError::from)?;
            info!(recorded, "own records reported");
            (replid, p.offset, p.db)
        }
        (Some("FULLRESYNC"), previous) => {
            let replid = parts.next().unwrap_or_default().to_string();
            let offset: i64 = parts
                .next()
                .and_then(|o| o.parse().ok())
                .ok_or_else(|| TailError::Protocol(format!("bad FULLRESYNC {reply:?}")))?;
            metrics.sync_full.inc();
            info!(%replid, offset, "full resync");
            let path = cfg.data_dir.join("sync.rdb");
            let diskless = receive_snapshot(&mut link, &path).await?;
            if diskless {
                // After a diskless transfer the master waits for our first ACK.
                let off = offset.to_string();
                link.send(&[b"REPLCONF", b"ACK", off.as_bytes()]).await?;
            }
            tx.send(TailEvent::SnapshotStart)
                .await
                .map_err(TailError::from)?;
            let keys = report_snapshot(path, tx).await?;
            let recorded = report_recorded(&mut side, cfg.databases, cfg.node_id, true, tx).await?;
            // A new replication id that could not continue the old stream:
            // the Redis restarted empty (it lost its data), or another
            // server became master and did not have everything the old one
            // had (what this agent shipped or applied there may be gone).
            // Peers' recorded state brings it back; applying it only lets
            // newer stamps win, so it is safe in every case.
            if previous.is_some_and(|p| p.replid != replid) {
                warn!(%replid, keys, recorded, "the local master changed and could not continue; rebuilding the region from a peer");
                // An empty Redis must be rebuilt before it counts as synced;
                // after a failover one round is enough to try.
                pull_from_peers(cfg, metrics, keys == 0 && recorded == 0, shutdown).await?;
            }
            tx.send(TailEvent::SnapshotDone)
                .await
                .map_err(TailError::from)?;
            info!(keys, recorded, diskless, "snapshot reported");
            (replid, offset, 0)
        }
        _ => {
            return Err(TailError::Handshake {
                step: "PSYNC",
                reply,
            });
        }
    };
    let start = Position { replid, offset, db };
    tx.send(TailEvent::Position(start.clone()))
        .await
        .map_err(TailError::from)?;
    let state = StreamState {
        db: start.db,
        multi: None,
        specs,
        side,
    };
    follow(link, start, state, tx, metrics, &mut epoch, shutdown).await
}

/// An open MULTI block of the stream.
#[derive(Default)]
struct Multi {
    /// Keys written so far.
    keys: Vec<(u32, Bytes)>,
    /// The block is geosync's own apply script (its first write is the marker).
    ours: bool,
    /// No command of the block has been seen yet.
    seen_first: bool,
}

/// State of the command stream between commands, and what reading it needs.
struct StreamState {
    db: u32,
    multi: Option<Multi>,
    /// The server's key specs.
    specs: KeySpecTable,
    /// A plain connection for `COMMAND GETKEYSANDFLAGS`.
    side: redis::aio::MultiplexedConnection,
}

/// Follows the command stream from `offset`.
async fn follow(
    mut link: Link,
    start: Position,
    mut state: StreamState,
    tx: &SpoolTx,
    metrics: &Metrics,
    epoch: &mut tokio::sync::watch::Receiver<u64>,
    shutdown: &CancellationToken,
) -> Result<(), TailError> {
    let Position {
        replid, mut offset, ..
    } = start;
    let mut reported = offset;
    let mut reported_at = Instant::now();
    let mut ack = tokio::time::interval(Duration::from_secs(1));
    ack.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Handle every complete command in the buffer.
        while let Some((frame, used)) =
            resp::parse(&link.buf).map_err(|e| TailError::Protocol(e.to_string()))?
        {
            link.buf.advance(used);
            let argv = frame.into_command().ok_or_else(|| {
                TailError::Protocol("command is not an array of bulk strings".into())
            })?;
            let getack = handle(&argv, &mut state, tx, metrics).await?;
            offset += used as i64;
            metrics.repl_offset.set(offset);
            if getack {
                let off = offset.to_string();
                link.send(&[b"REPLCONF", b"ACK", off.as_bytes()]).await?;
            }
        }
        // Report the position (between transactions, at most ten times a
        // second) so that a restart resumes close to where this one stopped.
        if offset != reported
            && state.multi.is_none()
            && reported_at.elapsed() >= Duration::from_millis(100)
        {
            let p = Position {
                replid: replid.clone(),
                offset,
                db: state.db,
            };
            tx.send(TailEvent::Position(p))
                .await
                .map_err(TailError::from)?;
            reported = offset;
            reported_at = Instant::now();
        }
        tokio::select! {
            r = link.fill() => r?,
            _ = ack.tick() => {
                tx.check()?;
                let off = offset.to_string();
                link.send(&[b"REPLCONF", b"ACK", off.as_bytes()]).await?;
            }
            _ = epoch.changed() => return Err(TailError::MasterSwitched),
            _ = shutdown.cancelled() => return Err(TailError::Shutdown),
        }
    }
}

fn lower(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_ascii_lowercase()
}

/// Reserved keys that geosync itself writes; client writes to any other
/// reserved key are reported.
fn is_own_key(key: &[u8]) -> bool {
    key.starts_with(store::META_PREFIX.as_bytes())
        || key.starts_with(store::COPY_PREFIX)
        || key.starts_with(store::BUILD_PREFIX)
        || key == store::FLOOR_KEY.as_bytes()
        || key == store::APPLY_MARKER_KEY.as_bytes()
}

/// Handles one command; returns true when the master asked for an ACK.
async fn handle(
    argv: &[Bytes],
    state: &mut StreamState,
    tx: &SpoolTx,
    metrics: &Metrics,
) -> Result<bool, TailError> {
    let Some(name) = argv.first().map(|n| lower(n)) else {
        return Ok(false);
    };
    let send = |ev| async move { tx.send(ev).await.map_err(TailError::from) };
    match name.as_str() {
        "ping" => return Ok(false),
        "replconf" => {
            return Ok(argv.get(1).map(|a| lower(a)) == Some("getack".into()));
        }
        "select" => {
            state.db = argv
                .get(1)
                .and_then(|d| std::str::from_utf8(d).ok()?.parse().ok())
                .ok_or_else(|| TailError::Protocol("bad SELECT".into()))?;
            return Ok(false);
        }
        "multi" => {
            state.multi = Some(Multi::default());
            return Ok(false);
        }
        "exec" => {
            if let Some(m) = state.multi.take()
                && !m.ours
                && !m.keys.is_empty()
            {
                send(TailEvent::Dirty(m.keys)).await?;
            }
            return Ok(false);
        }
        "flushdb" | "flushall" => {
            // Keys written earlier in the same transaction go first.
            if let Some(m) = &mut state.multi
                && !m.ours
                && !m.keys.is_empty()
            {
                send(TailEvent::Dirty(std::mem::take(&mut m.keys))).await?;
            }
            let ours = state.multi.as_ref().is_some_and(|m| m.ours);
            if !ours {
                let db = (name == "flushdb").then_some(state.db);
                send(TailEvent::Flush(db)).await?;
            }
            return Ok(false);
        }
        "swapdb" => {
            metrics
                .unsupported_commands
                .get_or_create(&Metrics::reason("swapdb"))
                .inc();
            warn!(
                command = "SWAPDB",
                "SWAPDB is not replicated: the swapped databases diverge from the other regions until rewritten (see docs/decisions/004-swapdb.md)"
            );
            return Ok(false);
        }
        _ => {}
    }
    let refs: Vec<&[u8]> = argv.iter().map(|a| a.as_ref()).collect();
    let mut keys: Vec<(u32, Bytes)> = match state.specs.written_keys(&refs) {
        KeyLookup::Keys(idx) => idx
            .into_iter()
            .filter_map(|i| argv.get(i))
            .map(|k| (state.db, k.clone()))
            .collect(),
        KeyLookup::AskServer | KeyLookup::UnknownCommand => {
            match written_keys_from_server(&mut state.side, &refs).await {
                Ok(keys) => keys
                    .into_iter()
                    .map(|k| (state.db, Bytes::from(k)))
                    .collect(),
                Err(e) => {
                    metrics
                        .unsupported_commands
                        .get_or_create(&Metrics::reason(&name))
                        .inc();
                    error!(command = %name, error = %e, "cannot tell which keys a replicated command wrote; its change is not shipped");
                    Vec::new()
                }
            }
        }
    };
    // MOVE and COPY ... DB n write the key into another database.
    match name.as_str() {
        "move" => {
            if let (Some(k), Some(db)) = (
                argv.get(1),
                argv.get(2)
                    .and_then(|d| std::str::from_utf8(d).ok()?.parse().ok()),
            ) {
                keys.push((db, k.clone()));
            }
        }
        "copy" => {
            if let Some(pos) = argv.iter().position(|a| a.eq_ignore_ascii_case(b"db"))
                && let (Some(dst), Some(db)) = (
                    argv.get(2),
                    argv.get(pos + 1)
                        .and_then(|d| std::str::from_utf8(d).ok()?.parse().ok()),
                )
            {
                keys.retain(|(_, k)| k != dst);
                keys.push((db, dst.clone()));
            }
        }
        _ => {}
    }
    if let Some(m) = &mut state.multi {
        if !m.seen_first {
            m.seen_first = true;
            m.ours = keys
                .iter()
                .any(|(_, k)| k.as_ref() == store::APPLY_MARKER_KEY.as_bytes());
        }
        if !m.ours {
            m.keys.extend(filter_reserved(keys, &name, metrics));
        }
        return Ok(false);
    }
    let keys = filter_reserved(keys, &name, metrics);
    if !keys.is_empty() {
        send(TailEvent::Dirty(keys)).await?;
    }
    Ok(false)
}

fn filter_reserved(keys: Vec<(u32, Bytes)>, command: &str, metrics: &Metrics) -> Vec<(u32, Bytes)> {
    keys.into_iter()
        .filter(|(db, k)| {
            if !is_reserved(k) {
                return true;
            }
            if !is_own_key(k) {
                metrics.reserved_key_writes.inc();
                warn!(
                    db,
                    key = %String::from_utf8_lossy(k),
                    command,
                    "a client wrote a key under the reserved __geosync: prefix; it is not replicated"
                );
            } else {
                debug!(key = %String::from_utf8_lossy(k), "own key");
            }
            false
        })
        .collect()
}
