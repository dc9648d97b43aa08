//! Scenario steps shared by several test files.

use std::time::Duration;

use redis::{Commands, Connection};

use geosync::lab::{Mesh, Redis, wait_until};

/// Writes 2000 keys `filler<i>` of 1000 bytes each: far more than a
/// 16 kB replication backlog holds, whatever its block size. Returns the
/// value written.
pub fn fill_past_backlog(c: &mut Connection, from: usize, to: usize) -> String {
    let filler = "x".repeat(1000);
    for i in from..to {
        let _: () = c.set(format!("filler{i}"), &filler).unwrap();
    }
    filler
}

/// The resume scenario, on any two-region mesh: region 1's agent is killed
/// after recording its position in database 1, writes go on in database 1
/// (the master does not repeat SELECT after a partial resync), and the
/// restarted agent continues the stream with PSYNC: region 1's Redis counts
/// one more partial resync and no full one, and the writes land in
/// database 1 of region 2.
pub fn partial_resync_after_agent_restart(mut mesh: Mesh) {
    partial_resync_after_agent_restart_in(&mut mesh);
}

/// [`partial_resync_after_agent_restart`] on a mesh the caller keeps (to
/// look at it afterwards).
pub fn partial_resync_after_agent_restart_in(mesh: &mut Mesh) {
    const SETTLE: Duration = Duration::from_secs(30);
    let mut a1 = mesh.regions[0].redis.conn_db(1);
    let _: () = a1.set("x", "1").unwrap();
    mesh.wait_converged(&[0, 1], SETTLE);
    // Wait until the agent recorded the position after that write.
    let target = mesh.regions[0].redis.master_repl_offset();
    let agent = &mesh.regions[0].agent;
    wait_until(
        "the position after the db 1 write is recorded",
        SETTLE,
        || agent.recorded_offset() >= target,
    );
    let redis = &mesh.regions[0].redis;
    let (full, partial) = (
        redis.info_i64("stats", "sync_full"),
        redis.info_i64("stats", "sync_partial_ok"),
    );
    mesh.regions[0].agent.kill();
    // The master's stream is still in database 1: no SELECT precedes these.
    let _: () = a1.set("y", "2").unwrap();
    let _: () = a1.del("x").unwrap();
    mesh.regions[0].agent.restart();
    mesh.wait_ready();
    mesh.wait_converged(&[0, 1], SETTLE);
    let redis = &mesh.regions[0].redis;
    assert_eq!(
        redis.info_i64("stats", "sync_partial_ok"),
        partial + 1,
        "the master continued the stream"
    );
    assert_eq!(redis.info_i64("stats", "sync_full"), full, "no full resync");
    let agent = &mesh.regions[0].agent;
    assert_eq!(agent.metric("geosync_sync_partial_ok_total"), 1.0);
    assert_eq!(agent.metric("geosync_sync_full_total"), 0.0);
    let mut b1 = mesh.regions[1].redis.conn_db(1);
    assert_eq!(
        b1.get::<_, Option<String>>("y").unwrap().as_deref(),
        Some("2")
    );
    assert!(!b1.exists::<_, bool>("x").unwrap());
    assert!(
        !mesh.regions[1].redis.conn().exists::<_, bool>("y").unwrap(),
        "nothing landed in db 0"
    );
}

/// Makes region `r` lose `keys` behind the agents' backs, as a Redis that
/// lost them (with their records, and so with their part of the bucket
/// digests) would: the values go in a transaction that starts with
/// geosync's apply marker (the tailer skips it); the records and digests
/// are geosync's own keys (never stamped), changed as decision 013 defines
/// them (a bucket's digest is the sum of the first 44 bits of
/// SHA1(#key:key stamp) over its records, decision 021).
pub fn lose(r: &Redis, keys: &[String]) {
    behind_the_agents(&mut r.conn(), |p| {
        for k in keys {
            p.cmd("DEL").arg(k).ignore();
        }
    });
    let forget = redis::Script::new(&format!(
        "{RECORD_HASH}{}",
        r#"
        local key, bucket, dg = KEYS[1], KEYS[2], KEYS[3]
        local stamp = string.sub(redis.call('HGET', bucket, key), 1, 20)
        local d = -record_hash(key, stamp)
        if redis.call('HINCRBY', dg, bucket, string.format('%d', d)) == 0 then
          redis.call('HDEL', dg, bucket)
        end
        return redis.call('HDEL', bucket, key)
        "#
    ));
    let mut c = r.meta_conn();
    for k in keys {
        let bucket = geosync::store::meta_bucket(0, k.as_bytes());
        let removed: i64 = forget
            .key(k)
            .key(bucket)
            .key(geosync::store::digests_key(0))
            .invoke(&mut c)
            .unwrap();
        assert_eq!(removed, 1, "{k} had a record");
    }
}

/// Puts `keys` back into region `r` behind the agents' backs, each from
/// its `DUMP` with its metadata record as they were (key, dump, record):
/// what a Redis restored from an older copy of its data holds. Like
/// [`lose`], the values go in a transaction the tailer skips, and the
/// records and bucket digests change as decision 013 defines them.
pub fn bring_back(r: &Redis, keys: &[(String, Vec<u8>, String)]) {
    behind_the_agents(&mut r.conn(), |p| {
        for (k, dump, _) in keys {
            p.cmd("RESTORE")
                .arg(k)
                .arg(0)
                .arg(dump)
                .arg("REPLACE")
                .ignore();
        }
    });
    let record = redis::Script::new(&format!(
        "{RECORD_HASH}{}",
        r#"
        local key, bucket, dg, rec = KEYS[1], KEYS[2], KEYS[3], ARGV[1]
        assert(not redis.call('HGET', bucket, key), 'the key is recorded already')
        local d = record_hash(key, string.sub(rec, 1, 20))
        if redis.call('HINCRBY', dg, bucket, string.format('%d', d)) == 0 then
          redis.call('HDEL', dg, bucket)
        end
        return redis.call('HSET', bucket, key, rec)
        "#
    ));
    let mut c = r.meta_conn();
    for (k, _, rec) in keys {
        let bucket = geosync::store::meta_bucket(0, k.as_bytes());
        let added: i64 = record
            .key(k)
            .key(bucket)
            .key(geosync::store::digests_key(0))
            .arg(rec)
            .invoke(&mut c)
            .unwrap();
        assert_eq!(added, 1, "{k} recorded again");
    }
}

/// Runs the commands `add` puts in a transaction that starts with
/// geosync's apply marker (in the metadata database): the tailer takes it
/// for geosync's own and ships nothing of it. `c` is a connection to
/// database 0, where `add`'s commands run.
fn behind_the_agents(c: &mut redis::Connection, add: impl FnOnce(&mut redis::Pipeline)) {
    let mut p = redis::pipe();
    p.atomic()
        .cmd("SELECT")
        .arg(geosync::store::metadata_db())
        .ignore()
        .cmd("SET")
        .arg(geosync::store::APPLY_MARKER_KEY)
        .arg("1")
        .ignore()
        .cmd("SELECT")
        .arg(0)
        .ignore();
    add(&mut p);
    p.query::<()>(c).unwrap();
}

/// Lua: a record's hash, which geosync's scripts add up into a bucket's
/// anti-entropy digest (decisions 013 and 021): the first 44 bits of
/// SHA1(#key .. ':' .. key .. stamp).
const RECORD_HASH: &str = r#"
local function record_hash(key, stamp)
  return tonumber(string.sub(redis.sha1hex(#key .. ':' .. key .. stamp), 1, 11), 16)
end
"#;

/// The buckets of database 0 whose stored anti-entropy digest is not what
/// their records make (decision 013's definition); `c` is a connection to
/// the metadata database.
pub fn drifted_digests(c: &mut redis::Connection) -> Vec<String> {
    redis::Script::new(&format!(
        "{RECORD_HASH}{}",
        r#"
        local wrong = {}
        for n = 0, 16383 do
          local bucket = '__geosync:m:0:' .. n
          local flat = redis.call('HGETALL', bucket)
          local acc = 0
          for i = 1, #flat, 2 do
            acc = acc + record_hash(flat[i], string.sub(flat[i + 1], 1, 20))
          end
          assert(acc < 2 ^ 53, 'a bucket too large for this check')
          local stored = redis.call('HGET', '__geosync:dg:0', bucket) or '0'
          if stored ~= string.format('%d', acc) then wrong[#wrong + 1] = bucket end
        end
        return wrong
        "#
    ))
    .invoke(c)
    .unwrap()
}
