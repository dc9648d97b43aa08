//! Where geosync keeps its own data in a user's Redis: the reserved key
//! prefix, the metadata buckets (one hash field per user key, so small
//! buckets keep Redis's compact listpack encoding), the layout of a
//! metadata record, and the private keys large collections travel through.
//!
//! The Lua scripts (`scripts/lib.lua`) read the same layout; a change here
//! is a change there.

/// Every key geosync owns starts with this; client keys with it are not replicated.
pub const RESERVED_PREFIX: &[u8] = b"__geosync:";
/// Prefix of the metadata bucket hashes.
pub const META_PREFIX: &str = "__geosync:m:";
/// Number of metadata buckets per database. Fixed: changing it would orphan
/// existing metadata. 16384 buckets stay in listpack encoding (at most 128
/// fields each) up to about two million keys per database.
pub const META_BUCKETS: u32 = 16384;
/// Key holding the database's flush floor: the stamp of the last FLUSHDB.
pub const FLOOR_KEY: &str = "__geosync:floor";
/// The database's collected floor: the mesh frontier up to which its
/// tombstones were dropped (decision 015); a change older than it finds a
/// key without a record deleted.
pub const COLLECTED_KEY: &str = "__geosync:collected";
/// Key (database 0) holding the stamp this region has reached: the
/// largest it told peers it delivered, written into the Redis whose stream
/// the agent follows before it is told. A Redis that comes back older
/// brings back an older one, and the changes first seen in its snapshot are
/// stamped just above it (decision 019).
pub const REACHED_KEY: &str = "__geosync:reached";
/// Key (database 0) naming the layout of geosync's keys in this Redis
/// ([`LAYOUT`]), so that a geosync that lays them out otherwise refuses to
/// work on them instead of misreading them.
pub const LAYOUT_KEY: &str = "__geosync:layout";
/// The layout this version reads and writes: per-key records in bucket
/// hashes of each user database (decision 002), floors and digests beside
/// them (decisions 013, 015, 018), the reached stamp in database 0
/// (decision 019).
pub const LAYOUT: &str = "1";

/// Offset of the flag byte ('v' value, 't' tombstone) in a metadata record
/// (after the 20-byte stamp; see scripts/lib.lua).
pub const RECORD_FLAG_AT: usize = crate::base::hlc::ENCODED_LEN;
/// Hash of the anti-entropy digest of each metadata bucket (decision 013),
/// kept by the scripts that write records.
pub const DIGESTS_KEY: &str = "__geosync:dg";
/// Key the apply scripts write first, marking their transaction as geosync's.
pub const APPLY_MARKER_KEY: &str = "__geosync:applied";

/// Prefix of the private copies of collections being read in pieces.
pub const COPY_PREFIX: &[u8] = b"__geosync:x:";
/// Prefix of the keys collections arriving in pieces are built in.
pub const BUILD_PREFIX: &[u8] = b"__geosync:in:";

/// The key a collection arriving in pieces with `stamp` is built in.
pub fn build_key(stamp: &str, key: &[u8]) -> Vec<u8> {
    let mut k = BUILD_PREFIX.to_vec();
    k.extend_from_slice(stamp.as_bytes());
    k.push(b':');
    k.extend_from_slice(key);
    k
}

/// True for keys in geosync's reserved namespace.
pub fn is_reserved(key: &[u8]) -> bool {
    key.starts_with(RESERVED_PREFIX)
}

/// The metadata bucket of a key (FNV-1a, stable across versions and hosts).
pub fn meta_bucket(key: &[u8]) -> String {
    let mut h: u32 = 0x811c9dc5;
    for b in key {
        h ^= *b as u32;
        h = h.wrapping_mul(0x01000193);
    }
    format!("{META_PREFIX}{}", h % META_BUCKETS)
}

/// Reserved keys that geosync itself writes; a client's write to any other
/// reserved key is reported, not replicated.
pub fn is_own_key(key: &[u8]) -> bool {
    key.starts_with(META_PREFIX.as_bytes())
        || key.starts_with(COPY_PREFIX)
        || key.starts_with(BUILD_PREFIX)
        || key == FLOOR_KEY.as_bytes()
        || key == APPLY_MARKER_KEY.as_bytes()
        || key == DIGESTS_KEY.as_bytes()
        || key == COLLECTED_KEY.as_bytes()
        || key == REACHED_KEY.as_bytes()
        || key == LAYOUT_KEY.as_bytes()
}

/// Records [`LAYOUT`] in a Redis that names none (a new one, or one an
/// older geosync wrote, which laid its keys out the same way), and
/// returns the layout it names otherwise (`Err` with the server's error
/// when the key is not a string).
pub async fn claim_layout<C: redis::aio::ConnectionLike>(
    conn: &mut C,
) -> Result<Option<String>, redis::RedisError> {
    let mut pipe = redis::pipe();
    pipe.cmd("SELECT")
        .arg(0)
        .ignore()
        .cmd("SET")
        .arg(LAYOUT_KEY)
        .arg(LAYOUT)
        .arg("NX")
        .arg("GET");
    let (found,): (Option<String>,) = pipe.query_async(conn).await?;
    Ok(found)
}

/// Why a Redis whose geosync keys are laid out as `found` says cannot be
/// worked on by this version.
pub fn unknown_layout(found: &str) -> String {
    format!(
        "its geosync keys are laid out as layout {found:?} ({LAYOUT_KEY} in database 0); this geosync reads and writes layout {LAYOUT:?} only: run the geosync version that wrote them, or remove every __geosync: key first (the region then starts without metadata and is filled from its peers)"
    )
}

/// The last four hex digits of every stamp this node makes.
pub fn node_suffix(node_id: u32) -> String {
    let id = crate::base::hlc::node_id_to_id(node_id).expect("validated node id");
    let ts = uhlc::Timestamp::new(uhlc::NTP64(0), id);
    crate::base::hlc::encode(&ts)[16..].to_string()
}

/// The parts of a metadata record that Rust code reads (see
/// scripts/lib.lua for the whole layout): its stamp, whether it records a
/// value (not a tombstone), the value's digest and its expiry.
pub struct Record<'a> {
    /// The recorded stamp.
    pub stamp: &'a str,
    /// A value, not a tombstone.
    pub value: bool,
    /// The digest of the value as last stamped.
    pub digest: &'a str,
    /// The value's absolute expiry (Unix ms), if it has one.
    pub expire_at: Option<i64>,
}

impl<'a> Record<'a> {
    /// Splits a raw record; None when it is too short to be one.
    pub fn parse(raw: &'a str) -> Option<Record<'a>> {
        let at = RECORD_FLAG_AT;
        Some(Record {
            stamp: raw.get(..at)?,
            value: raw.get(at..at + 1)? == "v",
            digest: raw.get(at + 1..at + 17)?,
            expire_at: raw.get(at + 17..).and_then(|e| e.parse().ok()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_stable_and_in_range() {
        // Fixed values: a change here would orphan every deployed metadata record.
        assert_eq!(
            meta_bucket(b""),
            format!("{META_PREFIX}{}", 0x811c9dc5u32 % META_BUCKETS)
        );
        assert_eq!(meta_bucket(b"user:1"), meta_bucket(b"user:1"));
        for k in 0..1000u32 {
            let b = meta_bucket(k.to_string().as_bytes());
            let n: u32 = b[META_PREFIX.len()..].parse().unwrap();
            assert!(n < META_BUCKETS);
        }
    }

    #[test]
    fn node_suffix_is_the_end_of_every_stamp() {
        let clock =
            crate::base::hlc::new_clock(300, std::time::Duration::from_millis(500)).unwrap();
        let s = crate::base::hlc::encode(&clock.new_timestamp());
        assert!(s.ends_with(&node_suffix(300)));
        assert_eq!(node_suffix(1), "0100");
    }

    #[test]
    fn records_parse() {
        let raw = "00000000000000010100vabcdef0123456789";
        let r = Record::parse(raw).unwrap();
        assert_eq!(r.stamp, "00000000000000010100");
        assert!(r.value);
        assert_eq!(r.digest, "abcdef0123456789");
        assert!(Record::parse("").is_none());
        assert!(Record::parse("short").is_none());
    }

    #[test]
    fn reserved_prefix() {
        assert!(is_reserved(b"__geosync:m:1"));
        assert!(!is_reserved(b"__geosync"));
        assert!(!is_reserved(b"user"));
    }
}
