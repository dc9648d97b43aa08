//! Intset decoding (RDB type 11: sets made only of integers).

/// Size of an intset without members (encoding width and count), the
/// smallest valid blob; any longer valid intset holds at least one member.
pub(crate) const EMPTY_LEN: u64 = 8;

/// Decodes and validates an intset blob: 32-bit LE encoding width (2, 4 or 8),
/// 32-bit LE count, then `count` little-endian signed integers in strictly
/// ascending order.
pub(crate) fn decode(blob: &[u8]) -> Result<Vec<i64>, String> {
    if (blob.len() as u64) < EMPTY_LEN {
        return Err(format!("intset of {} bytes is too short", blob.len()));
    }
    let width = u32::from_le_bytes([blob[0], blob[1], blob[2], blob[3]]);
    let count = u32::from_le_bytes([blob[4], blob[5], blob[6], blob[7]]);
    if !matches!(width, 2 | 4 | 8) {
        return Err(format!("intset has invalid encoding width {width}"));
    }
    let expected = 8u64 + u64::from(count) * u64::from(width);
    if expected != blob.len() as u64 {
        return Err(format!(
            "intset of {count} x {width}-byte integers must be {expected} bytes, blob has {}",
            blob.len()
        ));
    }
    let width = width as usize;
    let mut out = Vec::with_capacity(count as usize);
    for chunk in blob[8..].chunks_exact(width) {
        let v = match *chunk {
            [a, b] => i64::from(i16::from_le_bytes([a, b])),
            [a, b, c, d] => i64::from(i32::from_le_bytes([a, b, c, d])),
            [a, b, c, d, e, f, g, h] => i64::from_le_bytes([a, b, c, d, e, f, g, h]),
            _ => return Err("intset chunk of unexpected width".to_string()),
        };
        if let Some(&prev) = out.last()
            && v <= prev
        {
            return Err(format!(
                "intset is not strictly ascending ({prev} then {v})"
            ));
        }
        out.push(v);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::decode;

    fn blob(width: u32, vals: &[i64]) -> Vec<u8> {
        let mut b = width.to_le_bytes().to_vec();
        b.extend_from_slice(&(vals.len() as u32).to_le_bytes());
        for &v in vals {
            b.extend_from_slice(&v.to_le_bytes()[..width as usize]);
        }
        b
    }

    #[test]
    fn widths() {
        assert_eq!(decode(&blob(2, &[-3, 7, 300])).unwrap(), vec![-3, 7, 300]);
        assert_eq!(decode(&blob(4, &[-70000, 1])).unwrap(), vec![-70000, 1]);
        assert_eq!(
            decode(&blob(8, &[i64::MIN, 0, i64::MAX])).unwrap(),
            vec![i64::MIN, 0, i64::MAX]
        );
    }

    #[test]
    fn corrupt() {
        assert!(decode(&blob(3, &[1])).is_err());
        assert!(decode(&blob(2, &[5, 5])).is_err());
        assert!(decode(&blob(2, &[5, 1])).is_err());
        let b = blob(4, &[1, 2, 3]);
        for cut in 0..b.len() {
            assert!(decode(&b[..cut]).is_err());
        }
    }
}
