//! Where geosync keeps its own data in a user's Redis: the reserved key
//! prefix, the metadata buckets (one hash field per user key, so small
//! buckets keep Redis's compact listpack encoding), the layout of a
//! metadata record, and the private keys large collections travel through.
//!
//! The Lua scripts (`scripts/lib.lua`) read the same layout; a change here
//! is a change there.

/// Every key geosync owns starts with this; client keys with it are not replicated.
pub const RESERVED_PREFIX: &[u8] = b"__geosync:";
/// Prefix of the metadata bucket hashes; a bucket is named
/// `__geosync:m:<db>:<n>` after the user database it describes
/// ([`meta_bucket`], [`bucket_name`]).
pub const META_PREFIX: &str = "__geosync:m:";
/// Number of metadata buckets per database. Fixed: changing it would orphan
/// existing metadata. 16384 buckets stay in listpack encoding (at most 128
/// fields each) up to about two million keys per database.
pub const META_BUCKETS: u32 = 16384;
/// Prefix of a database's flush floor ([`floor_key`]): the stamp of its last FLUSHDB.
pub const FLOOR_PREFIX: &str = "__geosync:floor:";
/// Prefix of a database's collected floor ([`collected_key`]): the mesh
/// frontier up to which its tombstones were dropped (decision 015); a
/// change older than it finds a key without a record deleted.
pub const COLLECTED_PREFIX: &str = "__geosync:collected:";
/// Prefix of the hash of a database's anti-entropy digests
/// ([`digests_key`]), one field per bucket (decision 013), kept by the
/// scripts that write records.
pub const DIGESTS_PREFIX: &str = "__geosync:dg:";
/// Key holding the stamp this region has reached: the largest it told
/// peers it delivered, written into the Redis whose stream the agent
/// follows before it is told. A Redis that comes back older brings back an
/// older one, and the changes first seen in its snapshot are stamped just
/// above it (decision 019).
pub const REACHED_KEY: &str = "__geosync:reached";
/// Key naming the layout of geosync's keys in this Redis ([`LAYOUT`]), so
/// that a geosync that lays them out otherwise refuses to work on them
/// instead of misreading them.
pub const LAYOUT_KEY: &str = "__geosync:layout";
/// The layout this version reads and writes (decision 020): every
/// metadata key in the metadata database ([`metadata_db`]), which holds
/// nothing else; per-key records in bucket hashes named after their user
/// database (decision 002), floors and digests beside them (decisions 013,
/// 015, 018), the reached stamp and this marker once. User databases hold
/// only user keys, and, for the length of one transfer, the private copies
/// of large collections ([`COPY_PREFIX`], [`BUILD_PREFIX`]).
pub const LAYOUT: &str = "2";
/// The layout of earlier versions: the same records in every user
/// database, the marker in database 0.
pub const LAYOUT_IN_USER_DBS: &str = "1";

/// Default of `--metadata-db`: the last database of a default server.
pub const DEFAULT_METADATA_DB: u32 = 15;

static METADATA_DB: std::sync::atomic::AtomicU32 =
    std::sync::atomic::AtomicU32::new(DEFAULT_METADATA_DB);

/// Sets the database geosync keeps its metadata in (`--metadata-db`);
/// applies to stores created afterwards.
pub fn set_metadata_db(db: u32) {
    METADATA_DB.store(db, std::sync::atomic::Ordering::Relaxed);
}

/// The database geosync keeps its metadata in.
pub fn metadata_db() -> u32 {
    METADATA_DB.load(std::sync::atomic::Ordering::Relaxed)
}

/// The user databases of a server with `databases` databases: every one
/// but the metadata database.
pub fn user_dbs(databases: u32) -> impl Iterator<Item = u32> {
    let meta = metadata_db();
    (0..databases).filter(move |db| *db != meta)
}

/// The flush floor key of user database `db` (in the metadata database).
pub fn floor_key(db: u32) -> String {
    format!("{FLOOR_PREFIX}{db}")
}

/// The collected floor key of user database `db` (in the metadata database).
pub fn collected_key(db: u32) -> String {
    format!("{COLLECTED_PREFIX}{db}")
}

/// The digests hash of user database `db` (in the metadata database).
pub fn digests_key(db: u32) -> String {
    format!("{DIGESTS_PREFIX}{db}")
}

/// The prefix of user database `db`'s buckets.
pub fn bucket_prefix(db: u32) -> String {
    format!("{META_PREFIX}{db}:")
}

/// Bucket `n` of user database `db`.
pub fn bucket_name(db: u32, n: u32) -> String {
    format!("{META_PREFIX}{db}:{n}")
}

/// Offset of the flag byte ('v' value, 't' tombstone) in a metadata record
/// (after the 20-byte stamp; see scripts/lib.lua).
pub const RECORD_FLAG_AT: usize = crate::base::hlc::ENCODED_LEN;
/// Key (metadata database) the apply scripts write first, marking their
/// transaction as geosync's.
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

/// The bucket number of a key (FNV-1a, stable across versions and hosts).
pub fn bucket_of(key: &[u8]) -> u32 {
    let mut h: u32 = 0x811c9dc5;
    for b in key {
        h ^= *b as u32;
        h = h.wrapping_mul(0x01000193);
    }
    h % META_BUCKETS
}

/// The metadata bucket of `key` of user database `db`.
pub fn meta_bucket(db: u32, key: &[u8]) -> String {
    bucket_name(db, bucket_of(key))
}

/// Keys geosync itself writes in the metadata database.
pub fn is_own_meta_key(key: &[u8]) -> bool {
    key.starts_with(META_PREFIX.as_bytes())
        || key.starts_with(FLOOR_PREFIX.as_bytes())
        || key.starts_with(COLLECTED_PREFIX.as_bytes())
        || key.starts_with(DIGESTS_PREFIX.as_bytes())
        || key == APPLY_MARKER_KEY.as_bytes()
        || key == REACHED_KEY.as_bytes()
        || key == LAYOUT_KEY.as_bytes()
}

/// Reserved keys that geosync itself writes in user database `db`: its
/// private copies (any database), and its metadata keys in the metadata
/// database. A client's write to any other reserved key, and to any key of
/// the metadata database, is reported, not replicated.
pub fn is_own_key(db: u32, key: &[u8]) -> bool {
    key.starts_with(COPY_PREFIX)
        || key.starts_with(BUILD_PREFIX)
        || (db == metadata_db() && is_own_meta_key(key))
}

/// Checks, at start, that geosync's keys in this Redis are laid out as
/// this version lays them out, and records [`LAYOUT`] in a Redis that
/// holds none. Returns why the agent must not work on this Redis, if it
/// must not: a marker of another layout (in any database), metadata in
/// another database than `--metadata-db`, a metadata database the server
/// does not have, or one that holds keys that are not geosync's.
pub async fn claim_layout<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    databases: u32,
) -> Result<Option<String>, redis::RedisError> {
    let meta = metadata_db();
    if meta >= databases {
        return Ok(Some(format!(
            "--metadata-db is {meta}, but this Redis has {databases} databases (0 to {}): choose one of them, or raise `databases` in its configuration",
            databases.saturating_sub(1)
        )));
    }
    let mut pipe = redis::pipe();
    for db in 0..databases {
        pipe.cmd("SELECT").arg(db).ignore();
        pipe.cmd("GET").arg(LAYOUT_KEY);
    }
    pipe.cmd("SELECT").arg(meta).ignore();
    pipe.cmd("DBSIZE");
    let mut found: Vec<Option<String>> = pipe.query_async(conn).await?;
    let size: u64 = match found.pop() {
        Some(Some(n)) => n.parse().unwrap_or(0),
        _ => 0,
    };
    for (db, marker) in found.iter().enumerate() {
        let db = db as u32;
        match marker.as_deref() {
            None => {}
            Some(m) if db == meta && m == LAYOUT => {}
            Some(m) if db == meta => return Ok(Some(unknown_layout(m, db))),
            Some(LAYOUT) => {
                return Ok(Some(format!(
                    "geosync's metadata is in database {db} ({LAYOUT_KEY} is there), but --metadata-db is {meta}: start with --metadata-db {db}"
                )));
            }
            Some(m) => return Ok(Some(unknown_layout(m, db))),
        }
    }
    if found[meta as usize].is_none()
        && size > 0
        && let Some(key) = foreign_key(conn).await?
    {
        return Ok(Some(format!(
            "database {meta}, which --metadata-db names for geosync's metadata, holds keys that are not geosync's ({key:?}, {size} keys in all): choose an empty database with --metadata-db, or move those keys"
        )));
    }
    let mut pipe = redis::pipe();
    pipe.cmd("SELECT").arg(meta).ignore();
    pipe.cmd("SET")
        .arg(LAYOUT_KEY)
        .arg(LAYOUT)
        .arg("NX")
        .ignore();
    pipe.cmd("SELECT").arg(0).ignore();
    let () = pipe.query_async(conn).await?;
    Ok(None)
}

/// Sets the layout marker in the metadata database when it is missing;
/// returns what it held before (None when it was missing).
pub async fn mark_layout<C: redis::aio::ConnectionLike>(
    conn: &mut C,
) -> Result<Option<String>, redis::RedisError> {
    let mut pipe = redis::pipe();
    pipe.cmd("SELECT")
        .arg(metadata_db())
        .ignore()
        .cmd("SET")
        .arg(LAYOUT_KEY)
        .arg(LAYOUT)
        .arg("NX")
        .arg("GET");
    let (found,): (Option<String>,) = pipe.query_async(conn).await?;
    Ok(found)
}

/// A key of the (selected) metadata database that geosync did not write,
/// if there is one.
async fn foreign_key<C: redis::aio::ConnectionLike>(
    conn: &mut C,
) -> Result<Option<String>, redis::RedisError> {
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await?;
        if let Some(k) = keys.iter().find(|k| !is_own_meta_key(k)) {
            return Ok(Some(String::from_utf8_lossy(k).into_owned()));
        }
        if next == 0 {
            return Ok(None);
        }
        cursor = next;
    }
}

/// Why a Redis whose geosync keys are laid out as `found` says (its marker
/// in database `db`) cannot be worked on by this version.
pub fn unknown_layout(found: &str, db: u32) -> String {
    let how = if found == LAYOUT_IN_USER_DBS {
        "an earlier geosync kept its metadata in every user database; this one keeps it in the metadata database only (decision 020)"
    } else {
        "this geosync does not know that layout"
    };
    format!(
        "its geosync keys are laid out as layout {found:?} ({LAYOUT_KEY} in database {db}); this geosync reads and writes layout {LAYOUT:?} only ({how}): run the geosync version that wrote them, or remove every __geosync: key first (the region then starts without metadata and is filled from its peers)"
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
        assert_eq!(bucket_of(b""), 0x811c9dc5u32 % META_BUCKETS);
        assert_eq!(
            meta_bucket(3, b""),
            format!("{META_PREFIX}3:{}", 0x811c9dc5u32 % META_BUCKETS)
        );
        assert_eq!(meta_bucket(0, b"user:1"), meta_bucket(0, b"user:1"));
        for k in 0..1000u32 {
            let b = meta_bucket(7, k.to_string().as_bytes());
            let n: u32 = b[bucket_prefix(7).len()..].parse().unwrap();
            assert!(n < META_BUCKETS);
        }
    }

    #[test]
    fn own_keys_are_the_metadata_databases_and_private_copies() {
        let meta = metadata_db();
        for k in [
            meta_bucket(0, b"k"),
            floor_key(2),
            collected_key(2),
            digests_key(2),
            APPLY_MARKER_KEY.to_string(),
            REACHED_KEY.to_string(),
            LAYOUT_KEY.to_string(),
        ] {
            assert!(is_own_key(meta, k.as_bytes()), "{k}");
            assert!(!is_own_key(0, k.as_bytes()), "{k} in a user database");
        }
        assert!(is_own_key(0, &build_key("s", b"k")));
        assert!(is_own_key(0, b"__geosync:x:k"));
        assert!(!is_own_key(meta, b"__geosync:other"));
        assert!(user_dbs(16).all(|db| db != meta));
        assert_eq!(user_dbs(16).count(), 15);
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
