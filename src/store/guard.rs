//! geosync's own keys that a client damaged (where no ACL keeps clients
//! out of them, README "The agent's Redis user"): found and repaired, so
//! that replication never stalls on them.
//!
//! - A metadata bucket of another type than a hash (a client `SET` or
//!   `RENAME` onto it) makes every script that reads it fail with
//!   `WRONGTYPE`. Its records are gone with it: the bucket is removed with
//!   its stored digest, and anti-entropy, seeing the bucket differ, pulls
//!   the peers' records for its keys back.
//! - A flush floor, collected floor or reached stamp that is not a stamp,
//!   or is later than any clock of the mesh can be now, would make every
//!   local write, or every peer change, look older than it: it is removed.
//!   (One forged in the past cannot be told from a real one.)
//! - The layout marker a client removed or changed is set again.

use super::connection::{Store, StoreError};
use super::layout::{
    LAYOUT, LAYOUT_KEY, REACHED_KEY, collected_key, digests_key, floor_key, mark_layout,
    metadata_db,
};

/// A stored stamp the guard removed, or a bucket it found of another type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repair {
    /// Database.
    pub db: u32,
    /// The key.
    pub key: String,
    /// What it was (`bucket`, `flush_floor`, `collected_floor`, `reached`,
    /// `layout`).
    pub what: &'static str,
    /// What it held (its type for a bucket; its value, cut short, else).
    pub found: String,
}

impl StoreError {
    /// A script met a key of another type than it expects: one of
    /// geosync's own keys was overwritten by a client.
    pub fn is_wrong_type(&self) -> bool {
        match self {
            StoreError::Redis(e) | StoreError::Script { error: e, .. } => {
                e.code() == Some("WRONGTYPE") || e.to_string().contains("WRONGTYPE")
            }
            _ => false,
        }
    }
}

/// The metadata buckets of `keys` of database `db`, each once.
pub fn buckets_of<'a>(db: u32, keys: impl Iterator<Item = &'a [u8]>) -> Vec<String> {
    let mut b: Vec<String> = keys.map(|k| super::layout::meta_bucket(db, k)).collect();
    b.sort();
    b.dedup();
    b
}

/// Removes the metadata buckets of `keys` (database, key) that a client
/// turned into another type, for a script that failed on them with
/// WRONGTYPE; counts and logs them. True when there was one.
pub async fn repair_buckets_of<'a>(
    store: &mut Store,
    keys: impl Iterator<Item = (u32, &'a [u8])>,
    metrics: &crate::ops::metrics::Metrics,
) -> bool {
    let mut per_db: std::collections::BTreeMap<u32, Vec<&[u8]>> = Default::default();
    for (db, key) in keys {
        per_db.entry(db).or_default().push(key);
    }
    let mut any = false;
    for (db, keys) in per_db {
        match store
            .repair_buckets(db, &buckets_of(db, keys.into_iter()))
            .await
        {
            Ok(repairs) => {
                any |= !repairs.is_empty();
                report(&repairs, metrics);
            }
            Err(e) => tracing::warn!(db, error = %e, "checking metadata buckets failed"),
        }
    }
    any
}

/// Counts and logs repairs.
pub fn report(repairs: &[Repair], metrics: &crate::ops::metrics::Metrics) {
    for r in repairs {
        metrics
            .reserved_keys_repaired
            .get_or_create(&crate::ops::metrics::Metrics::reason(r.what))
            .inc();
        tracing::error!(
            db = r.db,
            key = %r.key,
            found = %r.found,
            "a client overwrote one of geosync's own keys; removed it (keep clients out of __geosync: keys with the README's ACL recipe)"
        );
    }
}

/// Every well-formed stamp a clock of the mesh can have made by now: the
/// agent's time plus twice the largest clock skew, and a second.
pub fn latest_plausible(clock: &uhlc::HLC, max_skew: std::time::Duration) -> String {
    crate::base::hlc::latest_possible(
        &clock.new_timestamp(),
        max_skew * 2 + std::time::Duration::from_secs(1),
    )
}

/// True for a well-formed stamp no later than `latest`.
fn plausible(stamp: &str, latest: &str) -> bool {
    stamp.len() == crate::base::hlc::ENCODED_LEN
        && stamp
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        && stamp <= latest
}

impl Store {
    /// Removes the buckets among `buckets` of database `db` that are not
    /// hashes, with their stored digests; returns them.
    pub async fn repair_buckets(
        &mut self,
        db: u32,
        buckets: &[String],
    ) -> Result<Vec<Repair>, StoreError> {
        let mut pipe = redis::pipe();
        pipe.cmd("SELECT").arg(metadata_db()).ignore();
        for b in buckets {
            pipe.cmd("TYPE").arg(b);
        }
        let types: Vec<String> = self.query(&pipe).await?;
        let wrong: Vec<Repair> = buckets
            .iter()
            .zip(types)
            .filter(|(_, t)| t != "hash" && t != "none")
            .map(|(b, t)| Repair {
                db,
                key: b.clone(),
                what: "bucket",
                found: t,
            })
            .collect();
        self.remove(db, &wrong).await?;
        Ok(wrong)
    }

    /// Removes database `db`'s floors (and, `with_reached`, the reached
    /// stamp) that are not stamps or are later than `latest`; returns them.
    pub async fn repair_floors(
        &mut self,
        db: u32,
        latest: &str,
        with_reached: bool,
    ) -> Result<Vec<Repair>, StoreError> {
        let mut keys = vec![
            (floor_key(db), "flush_floor"),
            (collected_key(db), "collected_floor"),
        ];
        if with_reached {
            keys.push((REACHED_KEY.to_string(), "reached"));
        }
        let mut pipe = redis::pipe();
        pipe.cmd("SELECT").arg(metadata_db()).ignore();
        for (k, _) in &keys {
            // A key of another type reads as an error: ask its type first.
            pipe.cmd("TYPE").arg(k);
        }
        let types: Vec<String> = self.query(&pipe).await?;
        let mut pipe = redis::pipe();
        pipe.cmd("SELECT").arg(metadata_db()).ignore();
        let strings: Vec<_> = keys
            .iter()
            .zip(&types)
            .filter(|(_, t)| *t == "string")
            .map(|((k, _), _)| k)
            .collect();
        for k in &strings {
            pipe.cmd("GET").arg(*k);
        }
        let values: Vec<Option<Vec<u8>>> = if strings.is_empty() {
            Vec::new()
        } else {
            self.query(&pipe).await?
        };
        let mut found: Vec<Repair> = Vec::new();
        let mut values = values.into_iter();
        for ((key, what), t) in keys.iter().zip(&types) {
            let what = *what;
            let held = match t.as_str() {
                "none" => continue,
                "string" => {
                    let v = values.next().flatten().unwrap_or_default();
                    let v = String::from_utf8_lossy(&v).into_owned();
                    if plausible(&v, latest) {
                        continue;
                    }
                    v.chars().take(40).collect()
                }
                other => format!("a {other}"),
            };
            found.push(Repair {
                db,
                key: key.to_string(),
                what,
                found: held,
            });
        }
        self.remove(db, &found).await?;
        Ok(found)
    }

    /// Sets the layout marker again when a client removed or changed it
    /// (FLUSHALL removes it too, which is no damage: nothing is reported
    /// then). The agent checked the layout when it started.
    pub async fn repair_layout(&mut self) -> Result<Vec<Repair>, StoreError> {
        let conn = self.conn().await?;
        let found = match mark_layout(conn).await {
            Ok(None) => return Ok(Vec::new()),
            Ok(Some(v)) if v == LAYOUT => return Ok(Vec::new()),
            Ok(Some(v)) => v.chars().take(40).collect(),
            Err(e) if e.code() == Some("WRONGTYPE") => "another type".to_string(),
            Err(e) => return Err(e.into()),
        };
        let mut pipe = redis::pipe();
        pipe.cmd("SELECT").arg(metadata_db()).ignore();
        pipe.cmd("UNLINK").arg(LAYOUT_KEY).ignore();
        pipe.cmd("SET").arg(LAYOUT_KEY).arg(LAYOUT).ignore();
        let () = self.query(&pipe).await?;
        Ok(vec![Repair {
            db: metadata_db(),
            key: LAYOUT_KEY.to_string(),
            what: "layout",
            found,
        }])
    }

    /// Removes the keys of `repairs` of database `db` from the metadata
    /// database (and a bucket's stored digest with it).
    async fn remove(&mut self, db: u32, repairs: &[Repair]) -> Result<(), StoreError> {
        if repairs.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.cmd("SELECT").arg(metadata_db()).ignore();
        for r in repairs {
            pipe.cmd("UNLINK").arg(&r.key).ignore();
            if r.what == "bucket" {
                pipe.cmd("HDEL").arg(digests_key(db)).arg(&r.key).ignore();
            }
        }
        self.query(&pipe).await
    }
}

#[cfg(test)]
mod tests {
    use super::plausible;

    #[test]
    fn only_well_formed_stamps_up_to_the_latest_are_plausible() {
        let latest = "00000000000001000000";
        assert!(plausible("00000000000000ff0100", latest));
        assert!(!plausible("00000000000001000100", latest));
        assert!(!plausible("0000000000000001010", latest));
        assert!(!plausible("00000000000000FF0100", latest));
        assert!(!plausible("not a stamp at all!!", latest));
    }
}
