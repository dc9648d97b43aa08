//! How long a peer's flush blocks Redis (decision 018).
//!
//! One Redis holds N keys with their metadata records (applied as a peer's
//! changes, then idle for a few seconds, as keys written before a flush
//! are). It is
//! flushed twice, as a peer's flush is applied, on the same data loaded
//! again: first the way it was done before, one script over every bucket
//! (the baseline, in the same run), then in slices. It prints the number
//! of script calls, the slice size, and the longest time Redis spent on one
//! call (its slow log), for each.
//!
//! ```text
//! cargo bench --bench flush                             # 1000000 keys
//! GEOSYNC_BENCH_KEYS=5000000 cargo bench --bench flush
//! ```

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use geosync::store::{Store, locator::Locator};
use support::{Redis, stamp_at, string_put, user_key_count, wait_until};

const LONG: Duration = Duration::from_secs(900);

/// Loads `n` keys as a peer's changes stamped at time 100 (values and
/// records as the apply script writes them).
fn load(rt: &tokio::runtime::Runtime, store: &mut Store, c: &mut redis::Connection, n: usize) {
    let at = stamp_at(100 << 32, 2);
    for chunk in (0..n).collect::<Vec<_>>().chunks(2000) {
        let changes: Vec<_> = chunk
            .iter()
            .map(|i| string_put(&format!("key:{i}"), &format!("value-{i}"), &at))
            .collect();
        rt.block_on(store.apply(&changes)).unwrap();
    }
    // Written before the flush: idle longer than the flush's first slices'
    // margin (decision 018), as the keys of a real flush are.
    let last = format!("key:{}", n - 1);
    wait_until("the keys are idle", LONG, || {
        let idle: i64 = redis::cmd("OBJECT")
            .arg("IDLETIME")
            .arg(&last)
            .query(c)
            .unwrap();
        idle >= 3
    });
}

/// The longest script call in the slow log, and clears it.
fn longest_call(c: &mut redis::Connection) -> Duration {
    let entries: Vec<redis::Value> = redis::cmd("SLOWLOG").arg("GET").arg(-1).query(c).unwrap();
    let _: () = redis::cmd("SLOWLOG").arg("RESET").query(c).unwrap();
    entries
        .iter()
        .filter_map(|e| match e {
            redis::Value::Array(f) => match f.get(2) {
                Some(redis::Value::Int(us)) => Some(Duration::from_micros(*us as u64)),
                _ => None,
            },
            _ => None,
        })
        .max()
        .unwrap_or_default()
}

fn main() {
    if support::listing_only() {
        return;
    }
    let n = support::env_usize("GEOSYNC_BENCH_KEYS", 1_000_000);
    let redis = Redis::start(&[
        "--slowlog-log-slower-than",
        "1000",
        "--slowlog-max-len",
        "100000",
        "--busy-reply-threshold",
        "600000",
    ]);
    let mut c = redis.conn();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut store = Store::new(Locator::new(&redis.url(), &[], None));
    let flush = geosync::base::hlc::encode(&stamp_at(200 << 32, 3));

    load(&rt, &mut store, &mut c, n);
    let _: () = redis::cmd("SLOWLOG").arg("RESET").query(&mut c).unwrap();
    let t = Instant::now();
    // The baseline: one script over every bucket.
    let _: () = redis::cmd("SET")
        .arg(geosync::store::floor_key(0))
        .arg(&flush)
        .query(&mut redis.meta_conn())
        .unwrap();
    let one = rt.block_on(store.flush_in_one_call(0, &flush)).unwrap();
    let one_took = t.elapsed();
    let one_longest = longest_call(&mut c);
    assert_eq!(user_key_count(&mut c).unwrap(), 0);
    println!(
        "keys={n}: one script: {} deleted in {:.2?}, Redis blocked {:.2?}",
        one.deleted, one_took, one_longest
    );

    let _: () = redis::cmd("FLUSHALL").query(&mut c).unwrap();
    load(&rt, &mut store, &mut c, n);
    let _: () = redis::cmd("SLOWLOG").arg("RESET").query(&mut c).unwrap();
    let _: () = redis::cmd("SET")
        .arg(geosync::store::floor_key(0))
        .arg(&flush)
        .query(&mut redis.meta_conn())
        .unwrap();
    let t = Instant::now();
    let sliced = rt.block_on(store.flush_in_slices(0, &flush)).unwrap();
    let took = t.elapsed();
    let longest = longest_call(&mut c);
    assert_eq!(user_key_count(&mut c).unwrap(), 0);
    println!(
        "keys={n}: in slices: {} deleted in {:.2?}, {} calls (about {} buckets, {} keys each), \
         longest call {:.2?} (round trip included), Redis blocked at most {:.2?} \
         ({:.0}x less than one script)",
        sliced.deleted,
        took,
        sliced.calls,
        16384 / sliced.calls.max(1),
        sliced.deleted / sliced.calls.max(1),
        sliced.longest,
        longest,
        one_longest.as_secs_f64() / longest.as_secs_f64().max(1e-6)
    );
}
