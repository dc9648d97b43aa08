//! Writes conflicting values into two regions at the same moment and prints
//! what each region holds once geosync has resolved the conflict.
//!
//! ```text
//! cargo run --example conflict -- redis://127.0.0.1:7381 redis://127.0.0.1:7382 [more regions...]
//! ```
//!
//! Region A increments a counter while region B sets it to 100, and both
//! edit the same hash field. Shipping commands would leave the regions
//! disagreeing (101 in one, 6 in the other); geosync ships the resulting
//! state with a stamp, so every region ends with the value of the later
//! stamp.

use std::collections::BTreeMap;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use redis::Commands;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let urls: Vec<String> = std::env::args().skip(1).collect();
    if urls.len() < 2 {
        eprintln!("usage: conflict REDIS_URL_A REDIS_URL_B [REDIS_URL ...]");
        std::process::exit(2);
    }
    let mut conns = urls
        .iter()
        .map(|u| redis::Client::open(u.as_str())?.get_connection())
        .collect::<Result<Vec<_>, _>>()?;

    // A starting point every region agrees on.
    let _: () = conns[0].set("counter", 5)?;
    let _: () = conns[0].hset("profile", "color", "green")?;
    wait_for_agreement(&mut conns, Duration::from_secs(10))?;
    println!("start: every region has counter=5, profile.color=green");

    // Both regions write at the same moment.
    let barrier = Arc::new(Barrier::new(2));
    let writers: Vec<_> = [(0usize, urls[0].clone()), (1, urls[1].clone())]
        .into_iter()
        .map(|(i, url)| {
            let barrier = barrier.clone();
            std::thread::spawn(move || -> redis::RedisResult<String> {
                let mut c = redis::Client::open(url.as_str())?.get_connection()?;
                barrier.wait();
                if i == 0 {
                    let v: i64 = c.incr("counter", 1)?;
                    let _: () = c.hset("profile", "color", "red")?;
                    Ok(format!(
                        "region A: INCR counter -> {v}, HSET profile color red"
                    ))
                } else {
                    let _: () = c.set("counter", 100)?;
                    let _: () = c.hset("profile", "color", "blue")?;
                    Ok("region B: SET counter 100, HSET profile color blue".to_string())
                }
            })
        })
        .collect();
    for w in writers {
        println!("{}", w.join().expect("writer thread")?);
    }

    let took = wait_for_agreement(&mut conns, Duration::from_secs(10))?;
    println!("after {} ms every region holds:", took.as_millis());
    for (i, c) in conns.iter_mut().enumerate() {
        let counter: Option<String> = c.get("counter")?;
        let color: Option<String> = c.hget("profile", "color")?;
        println!(
            "  region {}: counter={} profile.color={}",
            (b'A' + i as u8) as char,
            counter.as_deref().unwrap_or("(none)"),
            color.as_deref().unwrap_or("(none)")
        );
    }
    Ok(())
}

/// The user-visible state of the demo keys in one region.
fn state(
    c: &mut redis::Connection,
) -> redis::RedisResult<(Option<String>, BTreeMap<String, String>)> {
    Ok((c.get("counter")?, c.hgetall("profile")?))
}

/// Polls until every region holds the same demo keys.
fn wait_for_agreement(
    conns: &mut [redis::Connection],
    timeout: Duration,
) -> Result<Duration, Box<dyn std::error::Error>> {
    let start = Instant::now();
    loop {
        let states = conns.iter_mut().map(state).collect::<Result<Vec<_>, _>>()?;
        if states.windows(2).all(|w| w[0] == w[1]) && states[0].0.is_some() {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            return Err(format!("regions still differ after {timeout:?}: {states:?}").into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
