//! The digest of a large collection, computed a piece at a time (decision
//! 009). Recorded in every region's metadata, so it is fixed across
//! versions and hosts.

use crate::base::change::Collection;

/// A digest of a collection computed a piece at a time: FNV-1a of every
/// element (with length prefixes), chained in order for lists and summed
/// for the other types, whose reading order carries no meaning; then mixed
/// with the type, the expiry and the number of elements. Fixed across
/// versions and hosts: digests are recorded in the metadata of every region.
#[derive(Debug, Clone)]
pub struct Digest {
    kind: Collection,
    acc: u64,
    elements: u64,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// Hashes one length-prefixed item into `h`.
fn fnv_item(h: u64, item: &[u8]) -> u64 {
    fnv(fnv(h, &(item.len() as u64).to_le_bytes()), item)
}

/// Spreads an element's hash over all 64 bits before it is summed
/// (the finalizer of SplitMix64).
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Digest {
    /// An empty digest for a collection of `kind`.
    pub fn new(kind: Collection) -> Self {
        let acc = if kind == Collection::List {
            FNV_OFFSET
        } else {
            0
        };
        Digest {
            kind,
            acc,
            elements: 0,
        }
    }

    /// Adds a piece's flat items (pairs for sorted sets and hashes).
    pub fn add(&mut self, items: &[Vec<u8>]) {
        for element in items.chunks(self.kind.items_per_element()) {
            if self.kind == Collection::List {
                self.acc = fnv_item(self.acc, &element[0]);
            } else {
                let h = element.iter().fold(FNV_OFFSET, |h, i| fnv_item(h, i));
                self.acc = self.acc.wrapping_add(mix(h));
            }
            self.elements += 1;
        }
    }

    /// Elements added so far.
    pub fn elements(&self) -> u64 {
        self.elements
    }

    /// The digest as recorded in the metadata: 16 lowercase hex digits.
    pub fn finish(&self, expire_at_ms: Option<i64>) -> String {
        let mut h = fnv_item(FNV_OFFSET, self.kind.type_name().as_bytes());
        h = fnv_item(h, &expire_at_ms.unwrap_or(-1).to_le_bytes());
        h = fnv_item(h, &self.elements.to_le_bytes());
        h = fnv_item(h, &self.acc.to_le_bytes());
        format!("{h:016x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(v: &[&str]) -> Vec<Vec<u8>> {
        v.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    #[test]
    fn set_and_hash_digests_ignore_order_and_pieces() {
        let mut a = Digest::new(Collection::Set);
        a.add(&items(&["x", "y"]));
        a.add(&items(&["z"]));
        let mut b = Digest::new(Collection::Set);
        b.add(&items(&["z", "y", "x"]));
        assert_eq!(a.finish(None), b.finish(None));
        assert_ne!(a.finish(None), a.finish(Some(5)), "the expiry counts");
        let mut h1 = Digest::new(Collection::Hash);
        h1.add(&items(&["f", "1", "g", "2"]));
        let mut h2 = Digest::new(Collection::Hash);
        h2.add(&items(&["g", "2"]));
        h2.add(&items(&["f", "1"]));
        assert_eq!(h1.finish(None), h2.finish(None));
        let mut h3 = Digest::new(Collection::Hash);
        h3.add(&items(&["f", "2", "g", "1"]));
        assert_ne!(h1.finish(None), h3.finish(None), "values stay with fields");
    }

    #[test]
    fn list_digests_follow_order_and_types_differ() {
        let mut a = Digest::new(Collection::List);
        a.add(&items(&["x", "y"]));
        let mut b = Digest::new(Collection::List);
        b.add(&items(&["y", "x"]));
        assert_ne!(a.finish(None), b.finish(None));
        let mut s = Digest::new(Collection::Set);
        s.add(&items(&["x", "y"]));
        assert_ne!(a.finish(None), s.finish(None));
        // Length prefixes: ["ab", "c"] is not ["a", "bc"].
        let mut c = Digest::new(Collection::List);
        c.add(&items(&["ab", "c"]));
        let mut d = Digest::new(Collection::List);
        d.add(&items(&["a", "bc"]));
        assert_ne!(c.finish(None), d.finish(None));
        assert_eq!(a.elements(), 2);
    }

    #[test]
    fn digests_are_fixed() {
        // Recorded in every region's metadata: a change here makes every
        // large key look changed after an upgrade.
        let mut d = Digest::new(Collection::Set);
        d.add(&items(&["a", "b"]));
        assert_eq!(d.finish(None), "9cc950324f7143ab");
        assert_eq!(d.finish(None).len(), 16);
    }
}
