//! A full resync's snapshot: received into the data directory, then read
//! key by key (values skipped) and reported as dirty keys.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncWriteExt, BufWriter};

use super::error::TailError;
use super::link::Link;
use crate::base::event::TailEvent;
use crate::source::rdb::RdbReader;
use crate::stamp::spool::SpoolTx;
use crate::store::is_reserved;

/// Writes the snapshot that follows `+FULLRESYNC` into `path`.
/// Returns true when it was a diskless (EOF-marker) transfer.
pub(super) async fn receive_snapshot(link: &mut Link, path: &PathBuf) -> Result<bool, TailError> {
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

/// Sets its flag when dropped: the session that waited for the blocking
/// task is gone.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Parses the snapshot file and reports its keys in chunks. Dropped before
/// it ends (the session ended: a link error, shutdown), the blocking task
/// stops at its next chunk instead of reporting into the next session.
pub(super) async fn report_snapshot(path: PathBuf, tx: &SpoolTx) -> Result<u64, TailError> {
    let tx = tx.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_on_drop = StopOnDrop(stop.clone());
    tokio::task::spawn_blocking(move || -> Result<u64, TailError> {
        let file = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(&path)?);
        let mut rdb = RdbReader::new(file)?;
        let mut chunk = Vec::with_capacity(1024);
        let mut n = 0u64;
        // Key-only mode: values are skipped, not decoded, so memory does not
        // grow with the size of any value.
        let meta = crate::store::metadata_db();
        while let Some(k) = rdb.next_key()? {
            // geosync's own: private copies, and the metadata database
            if is_reserved(&k.key) || k.db as u32 == meta {
                continue;
            }
            n += 1;
            chunk.push((k.db as u32, Bytes::from(k.key)));
            if chunk.len() >= 1024 {
                if stop.load(Ordering::Relaxed) {
                    return Err(TailError::Shutdown);
                }
                tx.blocking_send(TailEvent::Dirty(std::mem::take(&mut chunk)))
                    .map_err(TailError::from)?;
            }
        }
        if stop.load(Ordering::Relaxed) {
            return Err(TailError::Shutdown);
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
