//! The command line as a user meets it: precedence of flags, environment
//! and file, and clear errors that name the bad setting.

mod support;

use std::process::{Command, Output};

fn geosync(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_geosync"));
    c.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("GEOSYNC_") {
            c.env_remove(k);
        }
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A closed port: the agent gets past its settings and fails on Redis.
fn dead_redis() -> String {
    format!("redis://127.0.0.1:{}", support::free_port())
}

#[test]
fn a_bad_setting_names_itself_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    for (args, setting) in [
        (vec!["run", "--data-dir", d], "node-id"),
        (vec!["run", "--node-id", "0", "--data-dir", d], "node-id"),
        (
            vec![
                "run",
                "--node-id",
                "1",
                "--peer",
                "not a url",
                "--data-dir",
                d,
            ],
            "peer",
        ),
        (
            vec![
                "run",
                "--node-id",
                "1",
                "--listen",
                "nowhere",
                "--data-dir",
                d,
            ],
            "listen",
        ),
        (
            vec![
                "run",
                "--node-id",
                "1",
                "--batch-keys",
                "1024",
                "--coalesce-keys",
                "1000",
                "--data-dir",
                d,
            ],
            "coalesce-keys",
        ),
    ] {
        let o = geosync(&args, &[]);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains(&format!("`{setting}`")),
            "{args:?}: {}",
            stderr(&o)
        );
    }
}

#[test]
fn flags_win_over_env_and_env_over_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("g.toml");
    std::fs::write(&file, "node-id = 0\n").unwrap();
    let f = file.to_str().unwrap();
    let d = dir.path().join("data");
    let d = d.to_str().unwrap();
    let redis = dead_redis();
    // file alone: its bad node-id is reported
    let o = geosync(
        &["run", "--config", f, "--redis", &redis, "--data-dir", d],
        &[],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("`node-id`"));
    // env over file: a good env value gets the agent to the Redis connection
    let o = geosync(
        &["run", "--config", f, "--redis", &redis, "--data-dir", d],
        &[("GEOSYNC_NODE_ID", "3")],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("local redis"), "{}", stderr(&o));
    // flag over env: a bad env value is overridden by the flag
    let o = geosync(
        &["run", "--node-id", "3", "--redis", &redis, "--data-dir", d],
        &[("GEOSYNC_NODE_ID", "0")],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("local redis"), "{}", stderr(&o));
}

#[test]
fn a_data_dir_of_another_node_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    std::fs::write(dir.path().join("node-id"), "2\n").unwrap();
    let o = geosync(
        &[
            "run",
            "--node-id",
            "1",
            "--redis",
            &dead_redis(),
            "--data-dir",
            d,
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("belongs to node 2"), "{}", stderr(&o));
}

#[test]
fn the_example_config_file_parses() {
    let o = geosync(
        &[
            "run",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/geosync.example.toml"),
            "--redis",
            &dead_redis(),
            "--data-dir",
            tempfile::tempdir().unwrap().path().to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("local redis"), "{}", stderr(&o));
}

#[test]
fn tls_settings_from_the_environment_are_checked_at_start() {
    let certs = support::TestCerts::generate();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let rediss = format!("rediss://127.0.0.1:{}", support::free_port());
    let missing = dir.path().join("missing-ca.pem");
    let missing = missing.to_str().unwrap();
    let args = ["run", "--node-id", "1", "--data-dir", d];
    // A CA file that is not there: the setting and the file are named.
    let o = geosync(
        &args,
        &[
            ("GEOSYNC_REDIS", &rediss),
            ("GEOSYNC_REDIS_TLS_CA", missing),
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("`redis-tls-ca`"), "{}", stderr(&o));
    assert!(stderr(&o).contains(missing), "{}", stderr(&o));
    // A client certificate without its key.
    let cert = certs.client_cert.to_str().unwrap();
    let o = geosync(
        &args,
        &[("GEOSYNC_REDIS", &rediss), ("GEOSYNC_REDIS_TLS_CERT", cert)],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("`redis-tls-key`"), "{}", stderr(&o));
    // TLS files with a plain URL.
    let ca = certs.ca.to_str().unwrap();
    let o = geosync(&args, &[("GEOSYNC_REDIS_TLS_CA", ca)]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("rediss://"), "{}", stderr(&o));
    // An unreadable system trust store, which the redis crate reads even
    // with a CA bundle, is refused at start rather than on every connection.
    let o = geosync(
        &args,
        &[
            ("GEOSYNC_REDIS", &rediss),
            ("GEOSYNC_REDIS_TLS_CA", ca),
            ("SSL_CERT_FILE", missing),
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("system's trust store"),
        "{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains(missing), "{}", stderr(&o));
    // Good settings get the agent as far as the (closed) port.
    let o = geosync(
        &args,
        &[("GEOSYNC_REDIS", &rediss), ("GEOSYNC_REDIS_TLS_CA", ca)],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("over TLS"), "{}", stderr(&o));
    assert!(stderr(&o).contains("ca.pem"), "{}", stderr(&o));
}

#[test]
fn check_config_prints_the_checked_settings_and_exits_0() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/geosync.example.toml");
    let o = geosync(&["check-config", example], &[]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}{}", stderr(&o));
    assert!(out.contains(": OK"), "{out}");
    assert!(
        out.contains("2=http://127.0.0.1:7002, 3=http://127.0.0.1:7003"),
        "{out}"
    );
    // Flags and GEOSYNC_* variables win over the file, as for `run`; a
    // password is not shown.
    let o = geosync(
        &["check-config", example, "--node-id", "7"],
        &[("GEOSYNC_REDIS", "redis://user:hunter2@10.1.2.3:6379")],
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(out.contains("node-id                     7"), "{out}");
    assert!(
        out.contains("10.1.2.3:6379") && !out.contains("hunter2"),
        "{out}"
    );
}

#[test]
fn check_config_names_the_wrong_setting_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("node-idd = 1\n", "unknown field `node-idd`"),
        (
            "node-id = 1\npeer-tls-ca = \"/nowhere/ca.pem\"\n",
            "peer-tls-cert",
        ),
        (
            "node-id = 1\npeer = [\"http://10.0.0.2:7001\"]\n",
            "peer links have no security",
        ),
        ("node-id = 0\n", "node-id"),
        (
            "node-id = 1\ninclude-db = [1]\nexclude-db = [1]\n",
            "`exclude-db`: database 1 is both included",
        ),
        ("node-id = 1\ninclude-db = [15]\n", "15 is --metadata-db"),
        ("node-id = 1\nexclude-keys = [\"\"]\n", "`exclude-keys`"),
    ];
    for (i, (body, named)) in cases.iter().enumerate() {
        let f = dir.path().join(format!("c{i}.toml"));
        std::fs::write(&f, body).unwrap();
        let o = geosync(&["check-config", f.to_str().unwrap()], &[]);
        assert_eq!(o.status.code(), Some(2), "{body}");
        assert!(stderr(&o).contains(named), "{body}: {}", stderr(&o));
        assert!(o.stdout.is_empty());
    }
    let o = geosync(&["check-config", "/nowhere/geosync.toml"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("cannot read /nowhere/geosync.toml"));
}
