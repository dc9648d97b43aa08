//! The keyspace users see (decision 020): geosync's metadata lives in a
//! database of its own, so user databases show only user keys in
//! `DBSIZE`, `INFO keyspace`, `KEYS`, `SCAN` and `RANDOMKEY`, and a tool
//! that `SCAN`s and then reads every key never meets geosync's hashes.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use redis::Commands;
use support::*;

const SETTLE: Duration = Duration::from_secs(30);

/// Every key of a database, by `SCAN`.
fn scanned(c: &mut redis::Connection) -> BTreeSet<String> {
    c.scan::<String>().unwrap().map(Result::unwrap).collect()
}

/// The `keys=` count `INFO keyspace` gives for database `db`, None when
/// the database is not listed (it holds nothing).
fn info_keys(c: &mut redis::Connection, db: u32) -> Option<u64> {
    let info: String = redis::cmd("INFO").arg("keyspace").query(c).unwrap();
    info.lines().find_map(|l| {
        let rest = l.strip_prefix(&format!("db{db}:keys="))?;
        rest.split(',').next()?.parse().ok()
    })
}

/// Two regions written in two databases (values of several types, keys
/// with a TTL, deletes that leave tombstones, a collection large enough
/// to travel in pieces): once they converge, each user database holds
/// exactly the keys written, by every command a user or tool asks with,
/// and geosync's records are in the metadata database.
#[test]
fn user_databases_show_only_user_keys() {
    let mesh = Mesh::with_agent_args(2, &["--max-key-elements", "1000"]);
    let meta = geosync::store::metadata_db();
    let mut expected: [BTreeSet<String>; 2] = Default::default();
    for (i, db) in [0u32, 3].into_iter().enumerate() {
        let mut c = mesh.regions[i].redis.conn_db(db);
        for n in 0..200 {
            let _: () = c.set(format!("s:{n}"), n).unwrap();
            expected[i].insert(format!("s:{n}"));
        }
        for n in 0..50 {
            let _: () = c.hset(format!("h:{n}"), "f", n).unwrap();
            let _: () = c.rpush(format!("l:{n}"), n).unwrap();
            let _: () = c.set_ex(format!("ttl:{n}"), n, 600).unwrap();
            expected[i].extend([format!("h:{n}"), format!("l:{n}"), format!("ttl:{n}")]);
        }
        let members: Vec<String> = (0..1500).map(|m| format!("m{m}")).collect();
        let _: () = c.sadd("large", &members).unwrap();
        expected[i].insert("large".into());
    }
    mesh.wait_converged(&[0, 3], SETTLE);
    for (i, db) in [0u32, 3].into_iter().enumerate() {
        let mut c = mesh.regions[i].redis.conn_db(db);
        for n in 0..100 {
            let _: () = c.del(format!("s:{n}")).unwrap();
            expected[i].remove(&format!("s:{n}"));
        }
    }
    mesh.wait_converged(&[0, 3], SETTLE);

    for r in &mesh.regions {
        for (i, db) in [0u32, 3].into_iter().enumerate() {
            let want = &expected[i];
            let mut c = r.redis.conn_db(db);
            let what = format!("region {} database {db}", r.name);
            assert_eq!(&scanned(&mut c), want, "{what}: SCAN");
            let keys: BTreeSet<String> =
                c.keys::<_, Vec<String>>("*").unwrap().into_iter().collect();
            assert_eq!(&keys, want, "{what}: KEYS");
            let size: usize = redis::cmd("DBSIZE").query(&mut c).unwrap();
            assert_eq!(size, want.len(), "{what}: DBSIZE");
            assert_eq!(
                info_keys(&mut c, db),
                Some(want.len() as u64),
                "{what}: INFO keyspace"
            );
            for _ in 0..200 {
                let k: String = redis::cmd("RANDOMKEY").query(&mut c).unwrap();
                assert!(want.contains(&k), "{what}: RANDOMKEY gave {k:?}");
            }
            // A tool that reads every key it scans by its type meets no
            // type it did not write.
            for k in want {
                let t: String = redis::cmd("TYPE").arg(k).query(&mut c).unwrap();
                assert!(
                    ["string", "hash", "list", "set"].contains(&t.as_str()),
                    "{what}: {k} is a {t}"
                );
            }
        }
        // The records (tombstones of the deleted keys included) are in the
        // metadata database, and nothing else is.
        for (i, db) in [0u32, 3].into_iter().enumerate() {
            for n in 0..100 {
                let rec = r.redis.record(db, &format!("s:{n}")).unwrap_or_default();
                assert_eq!(rec.get(20..21), Some("t"), "a tombstone for s:{n}");
            }
            assert!(r.redis.record(db, expected[i].first().unwrap()).is_some());
        }
        let mut m = r.redis.meta_conn();
        let foreign: Vec<String> = scanned(&mut m)
            .into_iter()
            .filter(|k| !k.starts_with("__geosync:"))
            .collect();
        assert_eq!(
            foreign,
            Vec::<String>::new(),
            "only geosync's keys in database {meta}"
        );
    }
}

/// A client's writes into the metadata database are not replicated: they
/// are counted and logged. A client's FLUSHDB there is not a user flush:
/// no region loses data, the loss of the records is counted, and
/// anti-entropy gives the region its records back.
#[test]
fn client_writes_into_the_metadata_database_stay_there_and_are_counted() {
    let mesh = Mesh::with_agent_args(2, &["--anti-entropy-interval-secs", "1"]);
    let meta = geosync::store::metadata_db();
    let mut c1 = mesh.regions[0].redis.conn();
    for n in 0..50 {
        let _: () = c1.set(format!("k{n}"), n).unwrap();
    }
    mesh.wait_converged(&[0], SETTLE);
    let writes = "geosync_reserved_key_writes_total";
    let mut m1 = mesh.regions[0].redis.meta_conn();
    let _: () = m1.set("not-geosyncs", "x").unwrap();
    wait_until(
        "the write into the metadata database is counted",
        SETTLE,
        || mesh.regions[0].agent.metric(writes) >= 1.0,
    );
    let mut m2 = mesh.regions[1].redis.meta_conn();
    assert!(
        !m2.exists::<_, bool>("not-geosyncs").unwrap(),
        "not replicated"
    );
    let _: () = m1.del("not-geosyncs").unwrap();

    let counted = mesh.regions[0].agent.metric(writes);
    let _: () = redis::cmd("FLUSHDB").query(&mut m1).unwrap();
    wait_until(
        "the flush of the metadata database is counted",
        SETTLE,
        || mesh.regions[0].agent.metric(writes) > counted,
    );
    // Anti-entropy gives region 1 its records back; no user key went.
    wait_until("region 1 has its records back", SETTLE, || {
        (0..50).all(|n| mesh.regions[0].redis.record(0, &format!("k{n}")).is_some())
    });
    let _: () = c1.set("after", "1").unwrap();
    mesh.wait_converged(&[0], SETTLE);
    let mut c2 = mesh.regions[1].redis.conn();
    let size: usize = redis::cmd("DBSIZE").query(&mut c2).unwrap();
    assert_eq!(size, 51, "region 2 keeps every key");
    assert_eq!(scanned(&mut c1).len(), 51, "region 1 keeps every key");
    assert!(
        mesh.regions[0]
            .agent
            .log_text()
            .contains("flushed geosync's metadata database"),
        "the log says what happened"
    );
    let _ = meta;
}
