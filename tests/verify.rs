//! `geosync verify` against real Redis servers: equal regions exit 0,
//! differences are listed with exit 1, a region that cannot be read exits
//! 2, and a key that differs only for a moment (a write in flight) is read
//! again before it is reported.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};

use geosync::lab::Redis;
use redis::Commands;

fn verify(args: &[String]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_geosync"))
        .arg("verify")
        .args(args)
        .output()
        .unwrap()
}

fn regions(rs: &[&Redis]) -> Vec<String> {
    rs.iter()
        .flat_map(|r| ["--redis".to_string(), r.url()])
        .collect()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The same data of every type, in three databases, written in a
/// different order in each region (hash and set orders differ inside
/// Redis), plus geosync's own keys that differ and must be ignored.
fn fill(r: &Redis, order: &[usize]) {
    for &db in &[0u32, 3] {
        let mut c = r.conn_db(db);
        for &i in order {
            let _: () = c.set(format!("s{i}"), format!("v{i}")).unwrap();
            let _: () = c.hset("h", format!("f{i}"), i).unwrap();
            let _: () = c.sadd("set", i).unwrap();
            let _: () = c.zadd("z", format!("m{i}"), i).unwrap();
        }
        let _: () = c.rpush("l", &[1, 2, 3]).unwrap();
        let _: () = redis::cmd("SET")
            .arg("exp")
            .arg("x")
            .arg("PXAT")
            .arg(4_000_000_000_000u64)
            .exec(&mut c)
            .unwrap();
        let _: () = redis::cmd("XADD")
            .arg("st")
            .arg("1-1")
            .arg("a")
            .arg("b")
            .exec(&mut c)
            .unwrap();
        let _: () = c.set(format!("__geosync:own{}", order[0]), 1).unwrap();
    }
}

#[test]
fn equal_regions_exit_0_with_the_key_count() {
    let (a, b, c) = (Redis::start(&[]), Redis::start(&[]), Redis::start(&[]));
    fill(&a, &[0, 1, 2, 3]);
    fill(&b, &[3, 2, 1, 0]);
    fill(&c, &[2, 0, 3, 1]);
    let out = verify(&regions(&[&a, &b, &c]));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    // 4 strings, h, set, z, l, exp, st: 10 keys in each of 2 databases.
    assert!(
        text(&out.stdout).contains("20 keys in 2 databases are the same in all 3 regions"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn every_kind_of_difference_is_listed_with_exit_1() {
    let (a, b) = (Redis::start(&[]), Redis::start(&[]));
    fill(&a, &[0, 1, 2]);
    fill(&b, &[0, 1, 2]);
    let mut cb = b.conn_db(3);
    let _: () = cb.set("s1", "other").unwrap(); // a value
    let _: () = cb.del("s2").unwrap(); // a key missing in region 2
    let _: () = cb.set("only-in-b", 1).unwrap(); // a key missing in region 1
    let _: () = cb.pexpire_at("l", 4_000_000_000_000i64).unwrap(); // an expiry
    let _: () = cb.hset("h", "f0", "x").unwrap(); // a field
    let _: () = cb.del("z").unwrap();
    let _: () = cb.set("z", "now a string").unwrap(); // a type
    let out = verify(&[regions(&[&a, &b]), vec!["--settle-ms".into(), "10".into()]].concat());
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
    for key in ["s1", "s2", "only-in-b", "l", "h", "z"] {
        assert!(
            stdout.contains(&format!("db 3 key \"{key}\":")),
            "{key} not listed:\n{stdout}"
        );
    }
    assert!(stdout.contains("region 2: missing"), "{stdout}");
    assert!(stdout.contains("region 1: missing"), "{stdout}");
    assert!(stdout.contains("expires at 4000000000000 ms"), "{stdout}");
    assert!(stdout.contains("6 of 19 keys differ"), "{stdout}");
    assert!(!stdout.contains("db 0 key"), "{stdout}");
}

#[test]
fn only_the_first_max_listed_are_shown_but_all_are_counted() {
    let (a, b) = (Redis::start(&[]), Redis::start(&[]));
    let mut ca = a.conn();
    for i in 0..50 {
        let _: () = ca.set(format!("k{i}"), i).unwrap();
    }
    let out = verify(
        &[
            regions(&[&a, &b]),
            ["--settle-ms", "1", "--max-listed", "5", "--batch", "7"]
                .map(String::from)
                .to_vec(),
        ]
        .concat(),
    );
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert_eq!(stdout.matches("region 2: missing").count(), 5, "{stdout}");
    assert!(stdout.contains("50 of 50 keys differ"), "{stdout}");
    assert!(stdout.contains("45 not listed"), "{stdout}");
}

#[test]
fn a_region_that_cannot_be_read_exits_2_and_names_it() {
    let a = Redis::start(&[]);
    let dead = format!("redis://:secret@127.0.0.1:{}", support::free_port());
    let out = verify(&["--redis".into(), a.url(), "--redis".into(), dead.clone()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("region 2"), "{stderr}");
    assert!(!stderr.contains("secret"), "password shown: {stderr}");
    let one = verify(&["--redis".into(), a.url()]);
    assert_eq!(one.status.code(), Some(2));
    assert!(text(&one.stderr).contains("at least two regions"));
}

/// A key that differs when first read but agrees before the re-check (a
/// write still travelling between regions) is not reported.
#[test]
fn a_difference_that_settles_before_the_recheck_is_not_reported() {
    let (a, b) = (Redis::start(&[]), Redis::start(&[]));
    let _: () = a.conn().set("k", "new").unwrap();
    let _: () = b.conn().set("k", "old").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_geosync"))
        .arg("verify")
        .args(regions(&[&a, &b]))
        .args(["--settle-ms", "3000", "--rechecks", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // It says when it puts keys aside; the write "arrives" then.
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(
        first.contains("1 keys differ; reading them again"),
        "{first}"
    );
    let _: () = b.conn().set("k", "new").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).contains("; 1 differed at first and agreed when read again"),
        "{}",
        text(&out.stdout)
    );
    // Without the write arriving, the same difference is reported.
    let _: () = b.conn().set("k", "old").unwrap();
    let out = verify(
        &[
            regions(&[&a, &b]),
            ["--settle-ms", "1"].map(String::from).to_vec(),
        ]
        .concat(),
    );
    assert_eq!(out.status.code(), Some(1));
}
