//! Where the tailer is in the local Redis's replication stream, kept in the
//! data directory so that a restarted agent asks for a partial resync.
//!
//! A position is written only once every change before it has been stamped
//! (recorded in the metadata), so continuing from it loses nothing: what the
//! outbox held is re-shipped from the metadata (decision 003), and commands
//! replayed because the file lags a little are stamped as unchanged.

use std::path::{Path, PathBuf};

/// A point in the master's replication stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// The master's replication id.
    pub replid: String,
    /// Offset of the last byte processed.
    pub offset: i64,
    /// Database selected at that point (the master does not repeat SELECT
    /// after a partial resync).
    pub db: u32,
}

/// The position file's path in a data directory.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("replication")
}

/// Reads the recorded position; a missing or unreadable file means none
/// (the agent then does a full resync, which is always safe).
pub fn load(data_dir: &Path) -> Option<Position> {
    let text = std::fs::read_to_string(path(data_dir)).ok()?;
    let mut parts = text.split_whitespace();
    let replid = parts.next()?.to_string();
    if replid.len() != 40 || !replid.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let offset = parts.next()?.parse().ok()?;
    let db = parts.next()?.parse().ok()?;
    Some(Position { replid, offset, db })
}

/// Writes the position (to a temporary file, then renamed over the old one).
pub fn save(data_dir: &Path, p: &Position) -> std::io::Result<()> {
    let tmp = data_dir.join("replication.tmp");
    std::fs::write(&tmp, format!("{} {} {}\n", p.replid, p.offset, p.db))?;
    std::fs::rename(tmp, path(data_dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()), None);
        let p = Position {
            replid: "a".repeat(40),
            offset: 12345,
            db: 3,
        };
        save(dir.path(), &p).unwrap();
        assert_eq!(load(dir.path()), Some(p));
        std::fs::write(path(dir.path()), "nothex 1 0\n").unwrap();
        assert_eq!(load(dir.path()), None);
        std::fs::write(path(dir.path()), format!("{} x 0\n", "b".repeat(40))).unwrap();
        assert_eq!(load(dir.path()), None);
    }
}
