//! What each peer has acknowledged, kept in the data directory.
//!
//! The outbox lives in memory. After a crash, the agent re-ships every key
//! whose recorded stamp is its own and newer than the oldest stamp some peer
//! acknowledged (see `docs/decisions/003-outbox-recovery.md`). This file is
//! that floor's source: one `peer stamp` line per peer, written atomically.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The ack log's path in a data directory.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("acked")
}

/// Reads the recorded stamps; a missing file means none.
pub fn load(data_dir: &Path) -> std::io::Result<HashMap<String, String>> {
    match std::fs::read_to_string(path(data_dir)) {
        Ok(text) => Ok(text
            .lines()
            .filter_map(|l| {
                let (peer, stamp) = l.split_once(' ')?;
                crate::base::hlc::decode(stamp.as_bytes()).ok()?;
                Some((peer.to_string(), stamp.to_string()))
            })
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(HashMap::new()),
        Err(e) => Err(e),
    }
}

/// Writes the stamps (to a temporary file, then renamed over the old one).
pub fn save(data_dir: &Path, stamps: &HashMap<String, String>) -> std::io::Result<()> {
    let mut lines: Vec<String> = stamps.iter().map(|(p, s)| format!("{p} {s}\n")).collect();
    lines.sort();
    let tmp = data_dir.join("acked.tmp");
    std::fs::write(&tmp, lines.concat())?;
    std::fs::rename(tmp, path(data_dir))
}

/// The stamp below which every peer has everything: the smallest recorded
/// stamp over `peers`, or `"0"` (before every stamp) when one has none.
pub fn reship_floor(stamps: &HashMap<String, String>, peers: &[String]) -> Option<String> {
    if peers.is_empty() {
        return None;
    }
    Some(
        peers
            .iter()
            .map(|p| stamps.get(p).cloned().unwrap_or_else(|| "0".into()))
            .min()
            .expect("peers is not empty"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_floor() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_empty());
        let mut m = HashMap::new();
        m.insert("http://a:1".to_string(), "00000000000000050100".to_string());
        m.insert("http://b:1".to_string(), "00000000000000030100".to_string());
        save(dir.path(), &m).unwrap();
        assert_eq!(load(dir.path()).unwrap(), m);
        let peers = vec!["http://a:1".to_string(), "http://b:1".to_string()];
        assert_eq!(reship_floor(&m, &peers).unwrap(), "00000000000000030100");
        let more = vec!["http://a:1".to_string(), "http://c:1".to_string()];
        assert_eq!(reship_floor(&m, &more).unwrap(), "0");
        assert_eq!(reship_floor(&m, &[]), None);
    }

    #[test]
    fn malformed_lines_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            path(dir.path()),
            "junk\nhttp://a:1 nothex\nhttp://b:1 00000000000000030100\n",
        )
        .unwrap();
        let m = load(dir.path()).unwrap();
        assert_eq!(m.len(), 1);
    }
}
