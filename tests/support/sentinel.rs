//! A Redis Sentinel watching one test server.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use redis::Connection;

use geosync::lab::{Redis, TlsFiles, free_port, wait_until};

/// A redis-server in sentinel mode watching one master as `mymaster`,
/// killed on drop. It speaks TLS (to its clients and to the servers it
/// watches) when the master does, with the same certificates and binary.
pub struct Sentinel {
    pub port: u16,
    tls: Option<TlsFiles>,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Sentinel {
    pub fn start(master: &Redis) -> Sentinel {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf = dir.path().join("sentinel.conf");
        let listen = match &master.tls {
            None => format!("port {port}\n"),
            Some(certs) => {
                // The same directives as the server's flags, one per line.
                let args = certs.server_args(port);
                let lines: Vec<String> = args
                    .chunks(2)
                    .map(|kv| format!("{} {}", &kv[0][2..], kv[1]))
                    .collect();
                lines.join("\n") + "\n"
            }
        };
        std::fs::write(
            &conf,
            format!(
                "{listen}bind 127.0.0.1\ndir {}\nsentinel monitor mymaster 127.0.0.1 {} 2\n\
                 sentinel down-after-milliseconds mymaster 1000\nsentinel failover-timeout mymaster 10000\n\
                 sentinel parallel-syncs mymaster 2\n",
                dir.path().display(),
                master.port,
            ),
        )
        .unwrap();
        let child = Command::new(&master.bin)
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start sentinel");
        let s = Sentinel {
            port,
            tls: master.tls.clone(),
            child,
            _dir: dir,
        };
        wait_until("sentinel up", Duration::from_secs(30), || {
            s.master().is_some()
        });
        s
    }

    fn client(&self) -> redis::RedisResult<redis::Client> {
        match &self.tls {
            Some(certs) => redis::Client::build_with_tls(
                format!("rediss://127.0.0.1:{}", self.port),
                certs.client_certificates()?,
            ),
            None => redis::Client::open(format!("redis://127.0.0.1:{}", self.port)),
        }
    }

    pub fn conn(&self) -> Connection {
        self.client().unwrap().get_connection().unwrap()
    }

    /// The port of the master this sentinel names.
    pub fn master(&self) -> Option<u16> {
        let mut c = self.client().ok()?.get_connection().ok()?;
        let a: Option<(String, u16)> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg("mymaster")
            .query(&mut c)
            .ok()?;
        a.map(|(_, p)| p)
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
