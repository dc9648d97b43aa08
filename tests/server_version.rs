//! The agent reads the local server's version at start (`HELLO`) and
//! refuses one older than it supports, saying which version it found and
//! which it needs, and exits instead of retrying.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use support::*;

const SETTLE: Duration = Duration::from_secs(20);

/// Reads one command (a RESP array of bulk strings); None at the end.
fn read_command(r: &mut BufReader<TcpStream>) -> Option<Vec<String>> {
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let n: usize = line.trim_end().strip_prefix('*')?.parse().ok()?;
    let mut argv = Vec::with_capacity(n);
    for _ in 0..n {
        line.clear();
        r.read_line(&mut line).ok()?;
        let len: usize = line.trim_end().strip_prefix('$')?.parse().ok()?;
        let mut arg = vec![0; len + 2];
        r.read_exact(&mut arg).ok()?;
        arg.truncate(len);
        argv.push(String::from_utf8_lossy(&arg).into_owned());
    }
    Some(argv)
}

/// A server that says it is `server` `version` to `HELLO` (a RESP2 reply)
/// and answers every other command with an error. Its port.
fn fake_server(server: &'static str, version: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut w = conn.try_clone().unwrap();
                let mut r = BufReader::new(conn);
                while let Some(argv) = read_command(&mut r) {
                    let reply = if argv[0].eq_ignore_ascii_case("HELLO") {
                        let fields = [
                            ("server", server),
                            ("version", version),
                            ("proto", "2"),
                            ("mode", "standalone"),
                            ("role", "master"),
                        ];
                        let mut reply = format!("*{}\r\n", fields.len() * 2 + 2);
                        for (k, v) in fields {
                            reply += &format!("${}\r\n{k}\r\n${}\r\n{v}\r\n", k.len(), v.len());
                        }
                        reply + "$7\r\nmodules\r\n*0\r\n"
                    } else {
                        format!("-ERR unknown command '{}'\r\n", argv[0])
                    };
                    if w.write_all(reply.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// The agent exits (code 1) with `message` in its log.
fn refused_with(server: &'static str, version: &'static str, message: &str) {
    let port = fake_server(server, version);
    let dir = tempfile::tempdir().unwrap();
    let mut agent = Agent::start(
        1,
        &format!("redis://127.0.0.1:{port}"),
        free_port(),
        free_port(),
        &[],
        dir.path(),
    );
    let code = agent.wait_exit(SETTLE);
    let log = agent.log_text();
    assert_eq!(code, Some(1), "the agent exits with an error: {log}");
    assert!(log.contains(message), "the log says {message:?}: {log}");
}

#[test]
fn a_redis_older_than_7_0_is_refused_at_start() {
    refused_with(
        "redis",
        "6.2.0",
        "redis 6.2.0 is older than the 7.0 geosync needs",
    );
}

#[test]
fn a_valkey_older_than_7_2_is_refused_at_start() {
    refused_with(
        "valkey",
        "7.1.0",
        "valkey 7.1.0 is older than the 7.2 geosync needs",
    );
}
