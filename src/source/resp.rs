//! RESP2 decoding for the replication socket.
//!
//! The tailer speaks to Redis over a raw socket (the `redis` crate has no
//! replica mode), so it needs its own decoder. [`parse`] never consumes a
//! partial frame: it reports how many bytes a complete frame took, which is
//! exactly what the replication offset counts.

use bytes::Bytes;

/// Largest bulk string accepted (Redis's own `proto-max-bulk-len` default).
pub const MAX_BULK_LEN: usize = 512 * 1024 * 1024;
/// Largest array accepted.
pub const MAX_ARRAY_LEN: usize = 1 << 24;
/// Deepest nesting accepted.
pub const MAX_DEPTH: usize = 32;

/// One RESP2 value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// `+OK`
    Simple(Bytes),
    /// `-ERR ...`
    Error(Bytes),
    /// `:42`
    Integer(i64),
    /// `$3\r\nfoo` or the null bulk `$-1`.
    Bulk(Option<Bytes>),
    /// `*2\r\n...` or the null array `*-1`.
    Array(Option<Vec<Frame>>),
}

/// The bytes are not RESP.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("protocol error at byte {at}: {what}")]
pub struct RespError {
    /// Offset of the problem within the buffer.
    pub at: usize,
    /// What was wrong.
    pub what: String,
}

impl Frame {
    /// A command as the master sends it: an array of bulk strings.
    pub fn into_command(self) -> Option<Vec<Bytes>> {
        match self {
            Frame::Array(Some(items)) => items
                .into_iter()
                .map(|f| match f {
                    Frame::Bulk(Some(b)) => Some(b),
                    _ => None,
                })
                .collect(),
            _ => None,
        }
    }
}

/// Parses one frame from the start of `buf`.
///
/// Returns `Ok(None)` when `buf` holds only part of a frame, and
/// `Ok(Some((frame, used)))` with the number of bytes the frame took.
pub fn parse(buf: &[u8]) -> Result<Option<(Frame, usize)>, RespError> {
    let mut pos = 0;
    match parse_at(buf, &mut pos, 0)? {
        Some(f) => Ok(Some((f, pos))),
        None => Ok(None),
    }
}

/// Finds the end of a line starting at `from`; returns the index of `\r`.
fn line_end(buf: &[u8], from: usize) -> Option<usize> {
    buf[from..]
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|i| from + i)
}

fn parse_int(buf: &[u8], at: usize) -> Result<i64, RespError> {
    std::str::from_utf8(buf)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| RespError {
            at,
            what: format!("bad integer {:?}", String::from_utf8_lossy(buf)),
        })
}

fn parse_at(buf: &[u8], pos: &mut usize, depth: usize) -> Result<Option<Frame>, RespError> {
    if depth > MAX_DEPTH {
        return Err(RespError {
            at: *pos,
            what: "nesting too deep".into(),
        });
    }
    let start = *pos;
    let Some(&tag) = buf.get(start) else {
        return Ok(None);
    };
    let Some(end) = line_end(buf, start + 1) else {
        return Ok(None);
    };
    let line = &buf[start + 1..end];
    let after = end + 2;
    match tag {
        b'+' | b'-' => {
            *pos = after;
            let b = Bytes::copy_from_slice(line);
            Ok(Some(if tag == b'+' {
                Frame::Simple(b)
            } else {
                Frame::Error(b)
            }))
        }
        b':' => {
            let n = parse_int(line, start)?;
            *pos = after;
            Ok(Some(Frame::Integer(n)))
        }
        b'$' => {
            let n = parse_int(line, start)?;
            if n == -1 {
                *pos = after;
                return Ok(Some(Frame::Bulk(None)));
            }
            if n < 0 || n as usize > MAX_BULK_LEN {
                return Err(RespError {
                    at: start,
                    what: format!("bulk length {n} out of range"),
                });
            }
            let n = n as usize;
            if buf.len() < after + n + 2 {
                return Ok(None);
            }
            if &buf[after + n..after + n + 2] != b"\r\n" {
                return Err(RespError {
                    at: after + n,
                    what: "bulk string not followed by CRLF".into(),
                });
            }
            *pos = after + n + 2;
            Ok(Some(Frame::Bulk(Some(Bytes::copy_from_slice(
                &buf[after..after + n],
            )))))
        }
        b'*' => {
            let n = parse_int(line, start)?;
            if n == -1 {
                *pos = after;
                return Ok(Some(Frame::Array(None)));
            }
            if n < 0 || n as usize > MAX_ARRAY_LEN {
                return Err(RespError {
                    at: start,
                    what: format!("array length {n} out of range"),
                });
            }
            *pos = after;
            let mut items = Vec::with_capacity((n as usize).min(1024));
            for _ in 0..n {
                match parse_at(buf, pos, depth + 1)? {
                    Some(f) => items.push(f),
                    None => {
                        *pos = start;
                        return Ok(None);
                    }
                }
            }
            Ok(Some(Frame::Array(Some(items))))
        }
        other => Err(RespError {
            at: start,
            what: format!("unexpected type byte {:?}", other as char),
        }),
    }
}

/// Encodes a command as an array of bulk strings.
pub fn encode_command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Bytes captured from a Redis 7.0.15 master's replication stream after
    /// `SET k v EX 100` (replicated with an absolute PXAT) and
    /// `EVAL "redis.call('incr','c'); redis.call('set','d','e')" 0` (replicated
    /// as its effects wrapped in MULTI/EXEC).
    const CAPTURED: &[u8] = b"*2\r\n$6\r\nSELECT\r\n$1\r\n0\r\n*5\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n$4\r\nPXAT\r\n$13\r\n1795313597283\r\n*1\r\n$5\r\nMULTI\r\n*2\r\n$4\r\nincr\r\n$1\r\nc\r\n*3\r\n$3\r\nset\r\n$1\r\nd\r\n$1\r\ne\r\n*1\r\n$4\r\nEXEC\r\n";

    #[test]
    fn parses_a_captured_stream_with_exact_offsets() {
        let mut at = 0;
        let mut cmds = vec![];
        while let Some((f, used)) = parse(&CAPTURED[at..]).unwrap() {
            at += used;
            cmds.push(f.into_command().unwrap());
        }
        assert_eq!(at, CAPTURED.len());
        let names: Vec<_> = cmds.iter().map(|c| c[0].clone()).collect();
        assert_eq!(names, ["SELECT", "SET", "MULTI", "incr", "set", "EXEC"]);
        assert_eq!(cmds[1][4], "1795313597283");
    }

    #[test]
    fn every_prefix_is_incomplete_not_an_error() {
        for cut in 0..CAPTURED.len() {
            let mut at = 0;
            while let Some((_, used)) = parse(&CAPTURED[at..cut]).unwrap() {
                at += used;
            }
            assert!(at <= cut);
        }
    }

    #[test]
    fn simple_error_integer_null() {
        assert_eq!(
            parse(b"+FULLRESYNC abc 1\r\n").unwrap().unwrap().0,
            Frame::Simple(Bytes::from_static(b"FULLRESYNC abc 1"))
        );
        assert_eq!(
            parse(b"-NOAUTH x\r\n").unwrap().unwrap().0,
            Frame::Error(Bytes::from_static(b"NOAUTH x"))
        );
        assert_eq!(parse(b":-5\r\n").unwrap().unwrap().0, Frame::Integer(-5));
        assert_eq!(parse(b"$-1\r\n").unwrap().unwrap().0, Frame::Bulk(None));
        assert_eq!(parse(b"*-1\r\n").unwrap().unwrap().0, Frame::Array(None));
    }

    #[test]
    fn malformed_input_is_an_error() {
        assert!(parse(b"?x\r\n").is_err());
        assert!(parse(b"$abc\r\n").is_err());
        assert!(parse(b"$3\r\nfooXX").is_err());
        assert!(parse(b"$-7\r\n").is_err());
        assert!(parse(b"*99999999999\r\n").is_err());
        let deep = "*1\r\n".repeat(MAX_DEPTH + 2);
        assert!(parse(deep.as_bytes()).is_err());
    }

    #[test]
    fn encode_parses_back() {
        let bytes = encode_command(&[b"REPLCONF", b"ACK", b"42"]);
        let (f, used) = parse(&bytes).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(f.into_command().unwrap(), ["REPLCONF", "ACK", "42"]);
    }

    proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse(&data);
        }

        #[test]
        fn commands_round_trip(args in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..20), 1..6)) {
            let refs: Vec<&[u8]> = args.iter().map(|a| a.as_slice()).collect();
            let bytes = encode_command(&refs);
            let (f, used) = parse(&bytes).unwrap().unwrap();
            prop_assert_eq!(used, bytes.len());
            let got: Vec<Vec<u8>> = f.into_command().unwrap().iter().map(|b| b.to_vec()).collect();
            prop_assert_eq!(got, args);
        }
    }
}
