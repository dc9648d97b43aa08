//! How the RDB format encodes its primitives: lengths, strings (raw,
//! integer or LZF-compressed), millisecond times, stream ids, sorted-set
//! scores and hash field expiries, read from the reader's byte source.

use std::io::Read;

use super::error::RdbError;
use super::format::{MAX_FIELD_EXPIRE_MS, T_ZSET_2};
use super::lzf;
use super::reader::RdbReader;
use super::types::StreamId;

/// A length as stored in the stream: a plain number or a special string
/// encoding selector (the `11xxxxxx` form).
pub(super) enum Len {
    Plain(u64),
    Special(u8),
}

/// How a string is stored, read up to (not including) its payload; shared by
/// the decoding ([`RdbReader::read_string`]) and skipping
/// ([`RdbReader::skip_string`]) paths.
enum StrHead {
    /// `n` plain bytes follow.
    Raw(usize),
    /// An integer stored in binary (already consumed); the string is its
    /// decimal text.
    Int(i64),
    /// `clen` LZF-compressed bytes follow, expanding to `len` bytes.
    Lzf { clen: usize, len: usize },
}

/// Length of the decimal text of `v`.
pub(super) fn decimal_len(v: i64) -> u64 {
    let digits = v.unsigned_abs().checked_ilog10().map_or(1, |d| d + 1);
    u64::from(digits) + u64::from(v < 0)
}

impl<R: Read> RdbReader<R> {
    pub(super) fn read_len(&mut self) -> Result<Len, RdbError> {
        let b = self.src.u8()?;
        match b >> 6 {
            0 => Ok(Len::Plain(u64::from(b & 0x3f))),
            1 => {
                let b2 = self.src.u8()?;
                Ok(Len::Plain((u64::from(b & 0x3f) << 8) | u64::from(b2)))
            }
            3 => Ok(Len::Special(b & 0x3f)),
            _ => match b {
                0x80 => Ok(Len::Plain(u64::from(u32::from_be_bytes(self.src.array()?)))),
                0x81 => Ok(Len::Plain(u64::from_be_bytes(self.src.array()?))),
                _ => Err(self.corrupt(format!("unknown length encoding byte 0x{b:02x}"))),
            },
        }
    }

    pub(super) fn read_length(&mut self) -> Result<u64, RdbError> {
        match self.read_len()? {
            Len::Plain(n) => Ok(n),
            Len::Special(s) => Err(self.corrupt(format!(
                "expected a length, found special string encoding {s}"
            ))),
        }
    }

    fn checked_len(&self, n: u64, what: &str) -> Result<usize, RdbError> {
        if n > self.max_string_len {
            return Err(self.corrupt(format!(
                "{what} length {n} exceeds the limit of {} bytes",
                self.max_string_len
            )));
        }
        usize::try_from(n)
            .map_err(|_| self.corrupt(format!("{what} length {n} does not fit in memory")))
    }

    /// Reads a string's encoding and lengths, checking them against the
    /// limits, up to the payload.
    fn read_str_head(&mut self) -> Result<StrHead, RdbError> {
        match self.read_len()? {
            Len::Plain(n) => Ok(StrHead::Raw(self.checked_len(n, "string")?)),
            Len::Special(0) => Ok(StrHead::Int(i64::from(i8::from_le_bytes(
                self.src.array()?,
            )))),
            Len::Special(1) => Ok(StrHead::Int(i64::from(i16::from_le_bytes(
                self.src.array()?,
            )))),
            Len::Special(2) => Ok(StrHead::Int(i64::from(i32::from_le_bytes(
                self.src.array()?,
            )))),
            Len::Special(3) => {
                let clen = self.read_length()?;
                let len = self.read_length()?;
                let clen_usize = self.checked_len(clen, "LZF compressed")?;
                let len_usize = self.checked_len(len, "LZF uncompressed")?;
                if len > clen.saturating_mul(lzf::MAX_EXPANSION) {
                    return Err(self.corrupt(format!(
                        "LZF string claims {len} bytes from {clen} compressed bytes"
                    )));
                }
                Ok(StrHead::Lzf {
                    clen: clen_usize,
                    len: len_usize,
                })
            }
            Len::Special(s) => Err(self.corrupt(format!("unknown string encoding {s}"))),
        }
    }

    pub(super) fn read_string(&mut self) -> Result<Vec<u8>, RdbError> {
        match self.read_str_head()? {
            StrHead::Raw(n) => self.src.bytes(n),
            StrHead::Int(v) => Ok(v.to_string().into_bytes()),
            StrHead::Lzf { clen, len } => {
                let compressed = self.src.bytes(clen)?;
                lzf::decompress(&compressed, len)
                    .map_err(|m| self.corrupt(format!("invalid LZF string: {m}")))
            }
        }
    }

    /// Skipping counterpart of [`Self::read_string`]: consumes the string
    /// without keeping or decompressing it, and returns the length it
    /// decodes to.
    pub(super) fn skip_string(&mut self) -> Result<u64, RdbError> {
        match self.read_str_head()? {
            StrHead::Raw(n) => {
                self.src.skip(n as u64)?;
                Ok(n as u64)
            }
            StrHead::Int(v) => Ok(decimal_len(v)),
            StrHead::Lzf { clen, len } => {
                self.src.skip(clen as u64)?;
                Ok(len as u64)
            }
        }
    }

    pub(super) fn read_ms(&mut self) -> Result<i64, RdbError> {
        Ok(i64::from_le_bytes(self.src.array()?))
    }

    pub(super) fn read_stream_id_lens(&mut self) -> Result<StreamId, RdbError> {
        let ms = self.read_length()?;
        let seq = self.read_length()?;
        Ok(StreamId { ms, seq })
    }

    pub(super) fn read_raw_stream_id(&mut self) -> Result<StreamId, RdbError> {
        Ok(StreamId::from_be_bytes(&self.src.array()?))
    }

    /// A sorted-set score of a type 3 (text) or type 5 (binary double) set;
    /// NaN is rejected like Redis does.
    pub(super) fn read_zset_score(&mut self, t: u8) -> Result<f64, RdbError> {
        let score = if t == T_ZSET_2 {
            f64::from_le_bytes(self.src.array()?)
        } else {
            self.read_text_double()?
        };
        if score.is_nan() {
            return Err(self.corrupt("sorted set with a NaN score"));
        }
        Ok(score)
    }

    /// Absolute expiry of a hash field stored as a length-encoded TTL (types
    /// 22 and 24): 0 means none; relative to `min_expire` when given.
    pub(super) fn field_expiry(
        &self,
        ttl: u64,
        min_expire: Option<u64>,
    ) -> Result<Option<i64>, RdbError> {
        if ttl == 0 {
            return Ok(None);
        }
        let at = match min_expire {
            Some(min) => ttl.checked_add(min).map(|v| v - 1),
            None => Some(ttl),
        };
        match at {
            Some(at) if at <= MAX_FIELD_EXPIRE_MS => Ok(Some(at as i64)),
            _ => Err(self.corrupt(format!(
                "hash field expiry out of range (ttl {ttl}, min expire {min_expire:?})"
            ))),
        }
    }

    /// Old (type 3) sorted-set score: length byte + text, or 253/254/255 for
    /// nan/+inf/-inf.
    fn read_text_double(&mut self) -> Result<f64, RdbError> {
        match self.src.u8()? {
            255 => Ok(f64::NEG_INFINITY),
            254 => Ok(f64::INFINITY),
            253 => Ok(f64::NAN),
            n => {
                let text = self.src.bytes(usize::from(n))?;
                std::str::from_utf8(&text)
                    .ok()
                    .and_then(|t| t.trim().parse::<f64>().ok())
                    .ok_or_else(|| {
                        self.corrupt(format!(
                            "invalid score text {:?}",
                            String::from_utf8_lossy(&text)
                        ))
                    })
            }
        }
    }
}
