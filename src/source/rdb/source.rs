//! The byte source: exact reads from the underlying reader, with the running
//! CRC-64 and offset over every byte, skipped ones included.

use std::io::{self, Read};

use super::crc64::crc64;
use super::error::RdbError;

/// Chunk size for reading long strings, so a corrupt huge length allocates
/// only as much as the stream really delivers.
const READ_CHUNK: usize = 64 * 1024;

/// Skips up to this many bytes through a stack buffer; longer skips go
/// through `io::copy` (which has its own fixed-size buffer).
const SMALL_SKIP: usize = 64;

/// The byte source: exact reads from `R`, running CRC and offset.
pub(super) struct Source<R> {
    pub(super) inner: R,
    pub(super) crc: u64,
    pub(super) offset: u64,
}

impl<R: Read> Source<R> {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), RdbError> {
        self.inner.read_exact(buf)?;
        self.crc = crc64(self.crc, buf);
        self.offset += buf.len() as u64;
        Ok(())
    }

    pub(super) fn array<const N: usize>(&mut self) -> Result<[u8; N], RdbError> {
        let mut b = [0u8; N];
        self.fill(&mut b)?;
        Ok(b)
    }

    pub(super) fn u8(&mut self) -> Result<u8, RdbError> {
        Ok(self.array::<1>()?[0])
    }

    /// Consumes `n` bytes without keeping them, still feeding them to the
    /// CRC. Memory use does not depend on `n`: short runs go through a small
    /// stack buffer, longer ones through `io::copy` (fixed-size buffer) from
    /// `inner` limited to `n` bytes into a sink that only updates the CRC.
    pub(super) fn skip(&mut self, n: u64) -> Result<(), RdbError> {
        if n <= SMALL_SKIP as u64 {
            let mut buf = [0u8; SMALL_SKIP];
            return self.fill(&mut buf[..n as usize]);
        }
        let mut sink = CrcSink(&mut self.crc);
        let copied = io::copy(&mut (&mut self.inner).take(n), &mut sink)?;
        self.offset += copied;
        if copied < n {
            return Err(RdbError::UnexpectedEof);
        }
        Ok(())
    }

    /// Reads `n` bytes, growing the buffer only as data arrives.
    pub(super) fn bytes(&mut self, n: usize) -> Result<Vec<u8>, RdbError> {
        let mut out = Vec::with_capacity(n.min(READ_CHUNK));
        while out.len() < n {
            let start = out.len();
            let take = (n - start).min(READ_CHUNK);
            out.resize(start + take, 0);
            self.fill(&mut out[start..])?;
        }
        Ok(out)
    }
}

/// A writer that keeps nothing but the running CRC of what it is given.
struct CrcSink<'a>(&'a mut u64);

impl io::Write for CrcSink<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        *self.0 = crc64(*self.0, buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
