//! Why a replication session ended.

use crate::stamp::spool::SpoolError;

/// Why a replication session ended.
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    /// Network trouble.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The TLS connection for replication could not be made (handshake,
    /// certificate verification).
    #[error("TLS to {addr} (server checked against {trust}): {source}{}", crate::store::tls::hint(&source.to_string()))]
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
    Rdb(#[from] crate::source::rdb::RdbError),
    /// Key specs or key lookups failed.
    #[error("key specs: {0}")]
    KeySpec(#[from] crate::source::keyspec::KeySpecError),
    /// Side connection failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The side connection failed, also on a fresh connection, while it
    /// asked which keys a command wrote; the next session reads that
    /// command again.
    #[error("side connection lost asking which keys {command} wrote: {source}")]
    SideConnection {
        /// The command (lowercase).
        command: String,
        /// The second failure.
        source: redis::RedisError,
    },
    /// The local Redis is not a server this version supports, or did not
    /// say which it is.
    #[error("{0}")]
    Version(#[from] crate::store::version::VersionError),
    /// The master could not be found (Sentinel).
    #[error("{0}")]
    Locate(#[from] crate::store::locator::LocateError),
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
    /// Telling evictions from deletes is not possible or stopped working
    /// (decision 016).
    #[error("evictions: {0}")]
    Evictions(String),
    /// Shutdown was requested.
    #[error("shutdown")]
    Shutdown,
}

impl TailError {
    /// True when another session cannot do better: the agent stops.
    pub fn is_fatal(&self) -> bool {
        matches!(self, TailError::Version(v) if v.is_refusal())
    }
}

impl From<SpoolError> for TailError {
    fn from(e: SpoolError) -> Self {
        match e {
            SpoolError::Closed => TailError::StamperGone,
            SpoolError::Lost(why) => TailError::Spool(why),
        }
    }
}
