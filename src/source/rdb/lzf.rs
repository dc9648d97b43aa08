//! LZF decompression (the liblzf format Redis uses for compressed RDB
//! strings). Every step is bounds checked; malformed input is an error, never
//! a panic or an out-of-bounds access.

/// Upper bound of the expansion ratio LZF can reach: a 3-byte back reference
/// yields at most 264 bytes. Used to reject absurd declared lengths before
/// allocating.
pub(crate) const MAX_EXPANSION: u64 = 88;

/// Decompresses `input` into exactly `out_len` bytes.
pub(crate) fn decompress(input: &[u8], out_len: usize) -> Result<Vec<u8>, String> {
    let mut out: Vec<u8> = Vec::with_capacity(out_len);
    let mut i = 0usize;
    while i < input.len() {
        let ctrl = usize::from(input[i]);
        i += 1;
        if ctrl < 32 {
            // Literal run of ctrl + 1 bytes.
            let run = ctrl + 1;
            let lit = input
                .get(i..i + run)
                .ok_or_else(|| format!("LZF literal run of {run} bytes overruns the input"))?;
            if out.len() + run > out_len {
                return Err(format!("LZF output exceeds the declared length {out_len}"));
            }
            out.extend_from_slice(lit);
            i += run;
        } else {
            // Back reference.
            let mut len = ctrl >> 5;
            if len == 7 {
                let extra = *input
                    .get(i)
                    .ok_or("LZF back reference length byte missing")?;
                len += usize::from(extra);
                i += 1;
            }
            let lo = *input
                .get(i)
                .ok_or("LZF back reference offset byte missing")?;
            i += 1;
            let back = ((ctrl & 0x1f) << 8) + usize::from(lo) + 1;
            let len = len + 2;
            if back > out.len() {
                return Err(format!(
                    "LZF back reference {back} bytes before the start of the output"
                ));
            }
            if out.len() + len > out_len {
                return Err(format!("LZF output exceeds the declared length {out_len}"));
            }
            // Copy byte by byte: source and destination may overlap.
            let start = out.len() - back;
            for k in 0..len {
                let b = out[start + k];
                out.push(b);
            }
        }
    }
    if out.len() != out_len {
        return Err(format!(
            "LZF data decompressed to {} bytes, {out_len} declared",
            out.len()
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::decompress;

    #[test]
    fn literal_and_overlapping_backref() {
        // "abc" literal, then back reference of length 6 at distance 3.
        let input = [2, b'a', b'b', b'c', (4 << 5), 2];
        assert_eq!(decompress(&input, 9).unwrap(), b"abcabcabc");
    }

    #[test]
    fn long_backref() {
        // 'x' then a back reference with the extended length byte:
        // len = 7 + 10 + 2 = 19 at distance 1.
        let input = [0, b'x', (7 << 5), 10, 0];
        assert_eq!(decompress(&input, 20).unwrap(), vec![b'x'; 20]);
    }

    #[test]
    fn malformed_inputs_are_errors() {
        assert!(decompress(&[5, b'a'], 6).is_err()); // literal overrun
        assert!(decompress(&[(1 << 5), 0], 3).is_err()); // backref before start
        assert!(decompress(&[0, b'a'], 2).is_err()); // too short
        assert!(decompress(&[1, b'a', b'b'], 1).is_err()); // too long
        assert!(decompress(&[0, b'a', (7 << 5)], 10).is_err()); // truncated
        assert!(decompress(&[0, b'a', (1 << 5)], 10).is_err()); // truncated
    }
}
