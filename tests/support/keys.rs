//! Counting a database's user keys: `DBSIZE` counts geosync's own keys too
//! (the metadata buckets `__geosync:m:<n>`, up to 16384 per database), so a
//! wait on it ends before the user keys are all there.

use redis::Connection;

/// geosync's prefix: every key it owns starts with it.
pub const RESERVED_PREFIX: &str = "__geosync:";

/// Keys of the connection's database that do not start with `__geosync:`
/// (one SCAN over the database).
pub fn user_key_count(c: &mut Connection) -> usize {
    let mut cursor: u64 = 0;
    let mut count = 0;
    loop {
        let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(10_000)
            .query(c)
            .unwrap();
        count += keys
            .iter()
            .filter(|k| !k.starts_with(RESERVED_PREFIX.as_bytes()))
            .count();
        if next == 0 {
            return count;
        }
        cursor = next;
    }
}
