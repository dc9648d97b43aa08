//! Ziplist and zipmap decoding: the compact encodings written by Redis
//! before 7.0 (RDB types 9, 10, 12, 13 and the nodes of type 14). Both are
//! fully validated and never read outside the blob.

use super::listpack::Elem;

const ZIPLIST_HEADER_SIZE: usize = 10;
/// Size of a ziplist without elements (header and terminator), the smallest
/// valid blob; any longer valid ziplist holds at least one element.
pub(crate) const EMPTY_LEN: u64 = ZIPLIST_HEADER_SIZE as u64 + 1;
/// Size of a zipmap without entries (count byte and terminator).
pub(crate) const EMPTY_ZIPMAP_LEN: u64 = 2;
const ZIP_END: u8 = 0xff;
const ZIP_BIG_PREVLEN: u8 = 0xfe;

fn slice_at<'a>(zl: &'a [u8], start: usize, len: usize, what: &str) -> Result<&'a [u8], String> {
    start
        .checked_add(len)
        .and_then(|end| zl.get(start..end))
        .ok_or_else(|| format!("{what} at offset {start} overruns the blob"))
}

fn le(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .rev()
        .fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
}

/// Decodes and validates a whole ziplist.
pub(crate) fn decode(zl: &[u8]) -> Result<Vec<Elem<'_>>, String> {
    if zl.len() < ZIPLIST_HEADER_SIZE + 1 {
        return Err(format!("ziplist of {} bytes is too short", zl.len()));
    }
    let total = le(&zl[0..4]);
    if total != zl.len() as u64 {
        return Err(format!(
            "ziplist header says {total} bytes but the blob has {}",
            zl.len()
        ));
    }
    let tail = le(&zl[4..8]) as usize;
    let count = le(&zl[8..10]) as u16;
    let end = zl.len() - 1;
    if zl[end] != ZIP_END {
        return Err("ziplist does not end with the 0xFF terminator".to_string());
    }
    let mut out = Vec::with_capacity(usize::from(count).min(1024));
    let mut p = ZIPLIST_HEADER_SIZE;
    let mut prev_raw = 0usize;
    let mut last_start = None;
    while p < end {
        if zl[p] == ZIP_END {
            return Err(format!(
                "ziplist terminator at offset {p} before the end of the blob"
            ));
        }
        // <prevlen>
        let (prevlen, prevlen_size) = if zl[p] < ZIP_BIG_PREVLEN {
            (usize::from(zl[p]), 1)
        } else {
            (le(slice_at(zl, p + 1, 4, "ziplist prevlen")?) as usize, 5)
        };
        if prevlen != prev_raw {
            return Err(format!(
                "ziplist entry at offset {p} records a previous length of {prevlen}, expected {prev_raw}"
            ));
        }
        // <encoding>
        let q = p + prevlen_size;
        let enc = *zl
            .get(q)
            .ok_or_else(|| format!("ziplist entry at offset {p} has no encoding byte"))?;
        let (elem, header, data_len) = match enc >> 6 {
            0 => {
                let len = usize::from(enc & 0x3f);
                (
                    Elem::Str(slice_at(zl, q + 1, len, "ziplist string")?),
                    1,
                    len,
                )
            }
            1 => {
                let next = slice_at(zl, q + 1, 1, "ziplist length")?[0];
                let len = (usize::from(enc & 0x3f) << 8) | usize::from(next);
                (
                    Elem::Str(slice_at(zl, q + 2, len, "ziplist string")?),
                    2,
                    len,
                )
            }
            2 => {
                let b = slice_at(zl, q + 1, 4, "ziplist length")?;
                let len = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
                (
                    Elem::Str(slice_at(zl, q + 5, len, "ziplist string")?),
                    5,
                    len,
                )
            }
            _ => {
                let (width, value) = match enc {
                    0xc0 => (2, None),
                    0xd0 => (4, None),
                    0xe0 => (8, None),
                    0xf0 => (3, None),
                    0xfe => (1, None),
                    0xf1..=0xfd => (0, Some(i64::from(enc & 0x0f) - 1)),
                    _ => {
                        return Err(format!(
                            "ziplist entry at offset {p} has invalid encoding byte 0x{enc:02x}"
                        ));
                    }
                };
                let v = match value {
                    Some(v) => v,
                    None => {
                        let raw = le(slice_at(zl, q + 1, width, "ziplist integer")?);
                        let bits = (width * 8) as u32;
                        let shift = 64 - bits;
                        ((raw << shift) as i64) >> shift
                    }
                };
                (Elem::Int(v), 1, width)
            }
        };
        let raw = prevlen_size + header + data_len;
        if p + raw > end {
            return Err(format!("ziplist entry at offset {p} overruns the blob"));
        }
        out.push(elem);
        last_start = Some(p);
        prev_raw = raw;
        p += raw;
    }
    if let Some(last) = last_start
        && last != tail
    {
        return Err(format!(
            "ziplist tail offset {tail} does not point at the last entry ({last})"
        ));
    }
    if count != u16::MAX && usize::from(count) != out.len() {
        return Err(format!(
            "ziplist header says {count} entries but {} were found",
            out.len()
        ));
    }
    Ok(out)
}

const ZIPMAP_BIGLEN: u8 = 254;
const ZIPMAP_END: u8 = 255;

/// Reads a zipmap length at `p`: returns (length, bytes used).
fn zipmap_len(zm: &[u8], p: usize) -> Result<(usize, usize), String> {
    let b = *zm
        .get(p)
        .ok_or_else(|| format!("zipmap length at offset {p} overruns the blob"))?;
    match b {
        ZIPMAP_END => Err(format!("unexpected zipmap end marker at offset {p}")),
        ZIPMAP_BIGLEN => {
            let raw = slice_at(zm, p + 1, 4, "zipmap length")?;
            Ok((le(raw) as usize, 5))
        }
        small => Ok((usize::from(small), 1)),
    }
}

/// Field/value pairs borrowed from a zipmap blob.
pub(crate) type ZipmapPairs<'a> = Vec<(&'a [u8], &'a [u8])>;

/// Decodes and validates a zipmap (Redis 2.x small hash encoding) into
/// field/value pairs.
pub(crate) fn decode_zipmap(zm: &[u8]) -> Result<ZipmapPairs<'_>, String> {
    if zm.len() < 2 {
        return Err(format!("zipmap of {} bytes is too short", zm.len()));
    }
    let end = zm.len() - 1;
    if zm[end] != ZIPMAP_END {
        return Err("zipmap does not end with the 0xFF terminator".to_string());
    }
    let declared = zm[0];
    let mut out = Vec::new();
    let mut p = 1;
    while p < end {
        if zm[p] == ZIPMAP_END {
            return Err(format!(
                "zipmap terminator at offset {p} before the end of the blob"
            ));
        }
        let (klen, ks) = zipmap_len(zm, p)?;
        let key = slice_at(zm, p + ks, klen, "zipmap field")?;
        p += ks + klen;
        let (vlen, vs) = zipmap_len(zm, p)?;
        let free = usize::from(
            *zm.get(p + vs)
                .ok_or_else(|| format!("zipmap free byte at offset {} missing", p + vs))?,
        );
        let value = slice_at(zm, p + vs + 1, vlen, "zipmap value")?;
        p += vs + 1 + vlen + free;
        if p > end {
            return Err("zipmap entry overruns the blob".to_string());
        }
        out.push((key, value));
    }
    if declared < ZIPMAP_BIGLEN && usize::from(declared) != out.len() {
        return Err(format!(
            "zipmap header says {declared} entries but {} were found",
            out.len()
        ));
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Test-only ziplist encoder, written from the format description in
    /// ziplist.c, used to build RDB type 10/12/13/14 inputs.
    pub(crate) fn encode(elems: &[Elem<'_>]) -> Vec<u8> {
        let mut body = Vec::new();
        let mut prev_raw = 0usize;
        let mut last_start = ZIPLIST_HEADER_SIZE;
        for e in elems {
            let mut entry = Vec::new();
            if prev_raw < 254 {
                entry.push(prev_raw as u8);
            } else {
                entry.push(0xfe);
                entry.extend_from_slice(&(prev_raw as u32).to_le_bytes());
            }
            match *e {
                Elem::Int(v) => {
                    if (0..=12).contains(&v) {
                        entry.push(0xf1 + v as u8);
                    } else if i8::try_from(v).is_ok() {
                        entry.push(0xfe);
                        entry.push(v as i8 as u8);
                    } else if i16::try_from(v).is_ok() {
                        entry.push(0xc0);
                        entry.extend_from_slice(&(v as i16).to_le_bytes());
                    } else if (-(1 << 23)..(1 << 23)).contains(&v) {
                        entry.push(0xf0);
                        entry.extend_from_slice(&(v as i32).to_le_bytes()[..3]);
                    } else if i32::try_from(v).is_ok() {
                        entry.push(0xd0);
                        entry.extend_from_slice(&(v as i32).to_le_bytes());
                    } else {
                        entry.push(0xe0);
                        entry.extend_from_slice(&v.to_le_bytes());
                    }
                }
                Elem::Str(s) => {
                    if s.len() <= 63 {
                        entry.push(s.len() as u8);
                    } else if s.len() <= 16383 {
                        entry.push(0x40 | (s.len() >> 8) as u8);
                        entry.push(s.len() as u8);
                    } else {
                        entry.push(0x80);
                        entry.extend_from_slice(&(s.len() as u32).to_be_bytes());
                    }
                    entry.extend_from_slice(s);
                }
            }
            last_start = ZIPLIST_HEADER_SIZE + body.len();
            prev_raw = entry.len();
            body.extend_from_slice(&entry);
        }
        let total = ZIPLIST_HEADER_SIZE + body.len() + 1;
        let mut zl = Vec::new();
        zl.extend_from_slice(&(total as u32).to_le_bytes());
        zl.extend_from_slice(&(last_start as u32).to_le_bytes());
        zl.extend_from_slice(&(elems.len().min(65535) as u16).to_le_bytes());
        zl.extend_from_slice(&body);
        zl.push(ZIP_END);
        zl
    }

    /// Test-only zipmap encoder.
    pub(crate) fn encode_zipmap(pairs: &[(&[u8], &[u8])], free: u8) -> Vec<u8> {
        let mut zm = vec![pairs.len().min(254) as u8];
        let push_len = |zm: &mut Vec<u8>, l: usize| {
            if l < 254 {
                zm.push(l as u8);
            } else {
                zm.push(254);
                zm.extend_from_slice(&(l as u32).to_le_bytes());
            }
        };
        for (k, v) in pairs {
            push_len(&mut zm, k.len());
            zm.extend_from_slice(k);
            push_len(&mut zm, v.len());
            zm.push(free);
            zm.extend_from_slice(v);
            zm.extend(std::iter::repeat_n(0u8, usize::from(free)));
        }
        zm.push(ZIPMAP_END);
        zm
    }

    #[test]
    fn ziplist_round_trip_every_encoding() {
        let s300 = vec![b'a'; 300];
        let s20k = vec![b'b'; 20000];
        let elems = vec![
            Elem::Int(0),
            Elem::Int(12),
            Elem::Int(13),
            Elem::Int(-128),
            Elem::Int(1000),
            Elem::Int(-8_000_000),
            Elem::Int(2_000_000_000),
            Elem::Int(i64::MIN),
            Elem::Str(b""),
            Elem::Str(b"x"),
            Elem::Str(&s300),
            Elem::Str(b"after a big entry: 5-byte prevlen"),
            Elem::Str(&s20k),
        ];
        let zl = encode(&elems);
        assert_eq!(decode(&zl).unwrap(), elems);
        for cut in (0..zl.len()).step_by(97) {
            assert!(decode(&zl[..cut]).is_err());
        }
    }

    #[test]
    fn ziplist_corruption_detected() {
        let zl = encode(&[Elem::Str(b"ab"), Elem::Int(7)]);
        let mut bad = zl.clone();
        bad[ZIPLIST_HEADER_SIZE] = 3; // wrong prevlen of first entry
        assert!(decode(&bad).is_err());
        let mut bad = zl.clone();
        bad[4] = 0; // wrong tail
        assert!(decode(&bad).is_err());
        let mut bad = zl.clone();
        bad[ZIPLIST_HEADER_SIZE + 5] = 0xc3; // invalid int encoding
        assert!(decode(&bad).is_err());
        let mut bad = zl;
        bad[8] = 9; // wrong count
        assert!(decode(&bad).is_err());
    }

    #[test]
    fn zipmap_round_trip() {
        let big = vec![b'z'; 300];
        let pairs: Vec<(&[u8], &[u8])> =
            vec![(b"foo", b"bar"), (b"hello", b"world"), (b"big", &big)];
        for free in [0u8, 3] {
            let zm = encode_zipmap(&pairs, free);
            assert_eq!(decode_zipmap(&zm).unwrap(), pairs);
            for cut in 0..zm.len() {
                assert!(decode_zipmap(&zm[..cut]).is_err(), "cut {cut}");
            }
        }
    }
}
