//! Listpack decoding (Redis 7+ compact encoding used by lists, sets, sorted
//! sets, hashes and stream nodes). The whole blob is validated: header size,
//! terminator, every entry's encoding and back-length, and the element count.

/// One decoded element of a listpack or ziplist: either an integer or a byte
/// string borrowed from the blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Elem<'a> {
    Int(i64),
    Str(&'a [u8]),
}

impl Elem<'_> {
    /// The element as Redis would return it to a client: integers as their
    /// decimal text.
    pub(crate) fn to_bytes(self) -> Vec<u8> {
        match self {
            Elem::Int(v) => v.to_string().into_bytes(),
            Elem::Str(s) => s.to_vec(),
        }
    }

    /// The element as a signed integer: integers directly, strings only when
    /// they are the canonical decimal text of an i64.
    pub(crate) fn as_i64(self) -> Option<i64> {
        match self {
            Elem::Int(v) => Some(v),
            Elem::Str(s) => parse_canonical_i64(s),
        }
    }

    /// The element as a sorted-set score.
    pub(crate) fn as_f64(self) -> Option<f64> {
        match self {
            Elem::Int(v) => Some(v as f64),
            Elem::Str(s) => parse_score(s),
        }
    }
}

/// Parses an i64 written without sign noise or leading zeroes ("0", "-12").
pub(crate) fn parse_canonical_i64(s: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(s).ok()?;
    let v: i64 = text.parse().ok()?;
    if v.to_string() == text { Some(v) } else { None }
}

/// Parses a score as written by Redis (`%.17g`-style text, "inf", "-inf").
pub(crate) fn parse_score(s: &[u8]) -> Option<f64> {
    let text = std::str::from_utf8(s).ok()?;
    let v: f64 = text.trim().parse().ok()?;
    if v.is_nan() { None } else { Some(v) }
}

const HEADER_SIZE: usize = 6;
/// Size of a listpack without elements (header and terminator), the smallest
/// valid blob; any longer valid listpack holds at least one element.
pub(crate) const EMPTY_LEN: u64 = HEADER_SIZE as u64 + 1;
const EOF_BYTE: u8 = 0xff;
const COUNT_UNKNOWN: u16 = u16::MAX;

/// Encodes a back-length the way listpack.c does, returning the bytes and how
/// many are used.
fn encode_backlen(l: usize) -> ([u8; 5], usize) {
    let mut b = [0u8; 5];
    if l <= 127 {
        b[0] = l as u8;
        (b, 1)
    } else if l < 16383 {
        b[0] = (l >> 7) as u8;
        b[1] = ((l & 127) | 128) as u8;
        (b, 2)
    } else if l < 2_097_151 {
        b[0] = (l >> 14) as u8;
        b[1] = (((l >> 7) & 127) | 128) as u8;
        b[2] = ((l & 127) | 128) as u8;
        (b, 3)
    } else if l < 268_435_455 {
        b[0] = (l >> 21) as u8;
        b[1] = (((l >> 14) & 127) | 128) as u8;
        b[2] = (((l >> 7) & 127) | 128) as u8;
        b[3] = ((l & 127) | 128) as u8;
        (b, 4)
    } else {
        b[0] = (l >> 28) as u8;
        b[1] = (((l >> 21) & 127) | 128) as u8;
        b[2] = (((l >> 14) & 127) | 128) as u8;
        b[3] = (((l >> 7) & 127) | 128) as u8;
        b[4] = ((l & 127) | 128) as u8;
        (b, 5)
    }
}

fn sign_extend(v: u64, bits: u32) -> i64 {
    let shift = 64 - bits;
    ((v << shift) as i64) >> shift
}

fn bytes_at(lp: &[u8], start: usize, len: usize) -> Result<&[u8], String> {
    start
        .checked_add(len)
        .and_then(|end| lp.get(start..end))
        .ok_or_else(|| format!("listpack entry at offset {start} overruns the listpack"))
}

fn le_uint(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .rev()
        .fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
}

/// Decodes the entry starting at `p`, returning it and its encoded size
/// (encoding byte(s) plus data, without the back-length).
fn decode_entry(lp: &[u8], p: usize) -> Result<(Elem<'_>, usize), String> {
    let b = lp[p];
    if b & 0x80 == 0 {
        return Ok((Elem::Int(i64::from(b & 0x7f)), 1));
    }
    if b & 0xc0 == 0x80 {
        let len = usize::from(b & 0x3f);
        return Ok((Elem::Str(bytes_at(lp, p + 1, len)?), 1 + len));
    }
    if b & 0xe0 == 0xc0 {
        let next = bytes_at(lp, p + 1, 1)?[0];
        let uval = (u64::from(b & 0x1f) << 8) | u64::from(next);
        return Ok((Elem::Int(sign_extend(uval, 13)), 2));
    }
    if b & 0xf0 == 0xe0 {
        let next = bytes_at(lp, p + 1, 1)?[0];
        let len = (usize::from(b & 0x0f) << 8) | usize::from(next);
        return Ok((Elem::Str(bytes_at(lp, p + 2, len)?), 2 + len));
    }
    match b {
        0xf0 => {
            let len = le_uint(bytes_at(lp, p + 1, 4)?) as usize;
            let data = bytes_at(lp, p + 5, len)?;
            Ok((Elem::Str(data), 5 + len))
        }
        0xf1 => {
            let v = le_uint(bytes_at(lp, p + 1, 2)?);
            Ok((Elem::Int(sign_extend(v, 16)), 3))
        }
        0xf2 => {
            let v = le_uint(bytes_at(lp, p + 1, 3)?);
            Ok((Elem::Int(sign_extend(v, 24)), 4))
        }
        0xf3 => {
            let v = le_uint(bytes_at(lp, p + 1, 4)?);
            Ok((Elem::Int(sign_extend(v, 32)), 5))
        }
        0xf4 => {
            let v = le_uint(bytes_at(lp, p + 1, 8)?);
            Ok((Elem::Int(v as i64), 9))
        }
        other => Err(format!(
            "listpack entry at offset {p} has invalid encoding byte 0x{other:02x}"
        )),
    }
}

/// Decodes and validates a whole listpack.
pub(crate) fn decode(lp: &[u8]) -> Result<Vec<Elem<'_>>, String> {
    if lp.len() < HEADER_SIZE + 1 {
        return Err(format!("listpack of {} bytes is too short", lp.len()));
    }
    let total = le_uint(&lp[0..4]);
    if total != lp.len() as u64 {
        return Err(format!(
            "listpack header says {total} bytes but the blob has {}",
            lp.len()
        ));
    }
    let count = le_uint(&lp[4..6]) as u16;
    let end = lp.len() - 1;
    if lp[end] != EOF_BYTE {
        return Err("listpack does not end with the 0xFF terminator".to_string());
    }
    let mut out = Vec::with_capacity(usize::from(count).min(1024));
    let mut p = HEADER_SIZE;
    while p < end {
        if lp[p] == EOF_BYTE {
            return Err(format!(
                "listpack terminator at offset {p} before the end of the blob"
            ));
        }
        let (elem, enc_len) = decode_entry(lp, p)?;
        let (backlen, backlen_size) = encode_backlen(enc_len);
        let back_start = p + enc_len;
        let stored = bytes_at(lp, back_start, backlen_size)?;
        if back_start + backlen_size > end || stored != &backlen[..backlen_size] {
            return Err(format!(
                "listpack entry at offset {p} has a wrong back-length"
            ));
        }
        out.push(elem);
        p = back_start + backlen_size;
    }
    if count != COUNT_UNKNOWN && usize::from(count) != out.len() {
        return Err(format!(
            "listpack header says {count} elements but {} were found",
            out.len()
        ));
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Test-only listpack encoder, written from the format description, used
    /// to build inputs with every entry encoding.
    pub(crate) fn encode(elems: &[Elem<'_>]) -> Vec<u8> {
        let mut body = Vec::new();
        for e in elems {
            let mut enc = Vec::new();
            match *e {
                Elem::Int(v) => {
                    if (0..=127).contains(&v) {
                        enc.push(v as u8);
                    } else if (-4096..=4095).contains(&v) {
                        let u = (v as u64) & 0x1fff;
                        enc.push(0xc0 | (u >> 8) as u8);
                        enc.push(u as u8);
                    } else if i16::try_from(v).is_ok() {
                        enc.push(0xf1);
                        enc.extend_from_slice(&(v as i16).to_le_bytes());
                    } else if (-(1 << 23)..(1 << 23)).contains(&v) {
                        enc.push(0xf2);
                        enc.extend_from_slice(&(v as i32).to_le_bytes()[..3]);
                    } else if i32::try_from(v).is_ok() {
                        enc.push(0xf3);
                        enc.extend_from_slice(&(v as i32).to_le_bytes());
                    } else {
                        enc.push(0xf4);
                        enc.extend_from_slice(&v.to_le_bytes());
                    }
                }
                Elem::Str(s) => {
                    if s.len() < 64 {
                        enc.push(0x80 | s.len() as u8);
                    } else if s.len() < 4096 {
                        enc.push(0xe0 | (s.len() >> 8) as u8);
                        enc.push(s.len() as u8);
                    } else {
                        enc.push(0xf0);
                        enc.extend_from_slice(&(s.len() as u32).to_le_bytes());
                    }
                    enc.extend_from_slice(s);
                }
            }
            let (bl, n) = encode_backlen(enc.len());
            body.extend_from_slice(&enc);
            body.extend_from_slice(&bl[..n]);
        }
        let total = HEADER_SIZE + body.len() + 1;
        let mut lp = Vec::new();
        lp.extend_from_slice(&(total as u32).to_le_bytes());
        lp.extend_from_slice(&(elems.len().min(65535) as u16).to_le_bytes());
        lp.extend_from_slice(&body);
        lp.push(EOF_BYTE);
        lp
    }

    #[test]
    fn round_trip_every_encoding() {
        let long12 = vec![b'q'; 200];
        let long32 = vec![b'w'; 5000];
        let elems = vec![
            Elem::Int(0),
            Elem::Int(127),
            Elem::Int(128),
            Elem::Int(-1),
            Elem::Int(-4096),
            Elem::Int(4095),
            Elem::Int(32767),
            Elem::Int(-32768),
            Elem::Int(8_388_607),
            Elem::Int(-8_388_608),
            Elem::Int(i64::from(i32::MAX)),
            Elem::Int(i64::from(i32::MIN)),
            Elem::Int(i64::MAX),
            Elem::Int(i64::MIN),
            Elem::Str(b""),
            Elem::Str(b"hello"),
            Elem::Str(&long12),
            Elem::Str(&long32),
        ];
        let lp = encode(&elems);
        assert_eq!(decode(&lp).unwrap(), elems);
    }

    #[test]
    fn corrupt_listpacks_are_errors() {
        let lp = encode(&[Elem::Str(b"abc"), Elem::Int(5)]);
        // Wrong total size.
        let mut bad = lp.clone();
        bad[0] ^= 1;
        assert!(decode(&bad).is_err());
        // Wrong count.
        let mut bad = lp.clone();
        bad[4] = 3;
        assert!(decode(&bad).is_err());
        // Missing terminator.
        let mut bad = lp.clone();
        *bad.last_mut().unwrap() = 0;
        assert!(decode(&bad).is_err());
        // Bad back-length.
        let mut bad = lp.clone();
        bad[HEADER_SIZE + 4] = 9;
        assert!(decode(&bad).is_err());
        // Invalid encoding byte.
        let mut bad = lp.clone();
        bad[HEADER_SIZE] = 0xf7;
        assert!(decode(&bad).is_err());
        // String length overrunning the blob.
        let mut bad = lp;
        bad[HEADER_SIZE] = 0x80 | 60;
        assert!(decode(&bad).is_err());
        // Every truncation.
        let lp = encode(&[Elem::Str(&[7u8; 300]), Elem::Int(-70000)]);
        for cut in 0..lp.len() {
            assert!(decode(&lp[..cut]).is_err());
        }
    }
}
