//! A fault-injecting TCP proxy for the link between two agents.
//!
//! One [`Proxy`] stands between an agent that dials (its `--peer` names
//! the proxy's port) and the agent that listens. Bytes flow through it in
//! two directions: *forward* (from the dialer to the listener) and
//! *backward*. Each direction can be delayed or stalled; the proxy can
//! refuse new connections and reset the ones it carries (TCP RST). The lab
//! turns these into `partition`, `delay`, `drop` and `reset` between
//! regions.
//!
//! A stalled direction behaves as TCP does when a link silently stops
//! carrying packets: nothing arrives, the sender's buffers fill, the
//! connection stays open until one end gives up on it (a keepalive), and
//! when the link comes back before that, every byte arrives, in order.
//! The proxy never loses bytes from the middle of a connection: no real
//! network does that to TCP without the connection breaking.
//!
//! Proxies run on one small tokio runtime of their own, so they work from
//! plain (non-async) tests and from `geosync lab`.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

/// What happens to the bytes of one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Direction {
    /// Held back: not read from the sender, not delivered (the connection
    /// stays open).
    pub stall: bool,
    /// Held this long before they are passed on.
    pub delay: Duration,
}

/// The faults of one proxied link.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// New connections are reset as soon as they are accepted.
    pub refuse: bool,
    /// Bytes from the dialer to the listener.
    pub forward: Direction,
    /// Bytes from the listener back to the dialer.
    pub backward: Direction,
}

impl Faults {
    /// True when nothing is wrong with the link.
    pub fn is_healthy(&self) -> bool {
        *self == Faults::default()
    }
}

/// The runtime every proxy of this process runs on.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("lab-proxy")
            .enable_all()
            .build()
            .expect("the lab proxies' runtime")
    })
}

/// A TCP proxy on a free 127.0.0.1 port to `target`; stops on drop.
pub struct Proxy {
    port: u16,
    target: SocketAddr,
    faults: watch::Sender<Faults>,
    /// Bumped to reset every connection open at that moment.
    resets: watch::Sender<u64>,
    stop: watch::Sender<bool>,
}

impl Proxy {
    /// Starts a proxy to `target`.
    pub fn start(target: SocketAddr) -> std::io::Result<Proxy> {
        let listener = runtime().block_on(TcpListener::bind("127.0.0.1:0"))?;
        let port = listener.local_addr()?.port();
        let (faults, _) = watch::channel(Faults::default());
        let (resets, _) = watch::channel(0u64);
        let (stop, stopped) = watch::channel(false);
        runtime().spawn(accept_loop(
            listener,
            target,
            faults.subscribe(),
            resets.subscribe(),
            stopped,
        ));
        Ok(Proxy {
            port,
            target,
            faults,
            resets,
            stop,
        })
    }

    /// The port the dialer connects to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Where the proxy connects to.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// The faults now in force.
    pub fn faults(&self) -> Faults {
        *self.faults.borrow()
    }

    /// Changes the faults; every connection sees the change at once.
    pub fn set(&self, change: impl FnOnce(&mut Faults)) {
        self.faults.send_modify(change);
    }

    /// Resets (TCP RST) every connection the proxy carries now.
    pub fn reset_connections(&self) {
        self.resets.send_modify(|n| *n += 1);
    }

    /// Clears every fault.
    pub fn heal(&self) {
        self.set(|f| *f = Faults::default());
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        self.reset_connections();
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    faults: watch::Receiver<Faults>,
    resets: watch::Receiver<u64>,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stopped.changed() => return,
        };
        let Ok((client, _)) = accepted else { continue };
        if faults.borrow().refuse {
            let _ = client.set_zero_linger();
            continue;
        }
        let mut faults = faults.clone();
        faults.mark_unchanged();
        let mut resets = resets.clone();
        resets.mark_unchanged();
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(target).await else {
                let _ = client.set_zero_linger();
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            carry(client, server, faults, resets).await;
        });
    }
}

/// Bytes read from one side and not yet passed on, each with the moment
/// it may go (its delay).
struct Held {
    queue: VecDeque<(Instant, Vec<u8>)>,
    /// The side that sends them closed its half.
    closed: bool,
}

/// Stop reading a side while this much of what it sent is held.
const MAX_HELD: usize = 4 << 20;

impl Held {
    fn new() -> Held {
        Held {
            queue: VecDeque::new(),
            closed: false,
        }
    }

    fn bytes(&self) -> usize {
        self.queue.iter().map(|(_, b)| b.len()).sum()
    }

    /// True when the next bytes should be read from the sender.
    fn wants_more(&self, dir: Direction) -> bool {
        !self.closed && !dir.stall && self.bytes() < MAX_HELD
    }

    /// When the first held bytes may go, if the direction is not stalled.
    fn next_due(&self, dir: Direction) -> Option<Instant> {
        if dir.stall {
            return None;
        }
        self.queue.front().map(|(due, _)| *due)
    }

    fn done(&self) -> bool {
        self.closed && self.queue.is_empty()
    }
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Carries one connection until either side closes or a reset comes.
async fn carry(
    mut client: TcpStream,
    mut server: TcpStream,
    mut faults: watch::Receiver<Faults>,
    mut resets: watch::Receiver<u64>,
) {
    let mut from_client = vec![0u8; 64 * 1024];
    let mut from_server = vec![0u8; 64 * 1024];
    let mut forward = Held::new();
    let mut backward = Held::new();
    loop {
        if forward.done() || backward.done() {
            return;
        }
        let f = *faults.borrow_and_update();
        tokio::select! {
            r = client.read(&mut from_client), if forward.wants_more(f.forward) => match r {
                Ok(0) | Err(_) => forward.closed = true,
                // The delay in force now: a change made while this read
                // waited may not have woken the loop yet.
                Ok(n) => forward
                    .queue
                    .push_back((Instant::now() + faults.borrow().forward.delay, from_client[..n].to_vec())),
            },
            r = server.read(&mut from_server), if backward.wants_more(f.backward) => match r {
                Ok(0) | Err(_) => backward.closed = true,
                Ok(n) => backward
                    .queue
                    .push_back((Instant::now() + faults.borrow().backward.delay, from_server[..n].to_vec())),
            },
            _ = sleep_until(forward.next_due(f.forward)) => {
                if let Some((_, bytes)) = forward.queue.pop_front()
                    && server.write_all(&bytes).await.is_err()
                {
                    return;
                }
            },
            _ = sleep_until(backward.next_due(f.backward)) => {
                if let Some((_, bytes)) = backward.queue.pop_front()
                    && client.write_all(&bytes).await.is_err()
                {
                    return;
                }
            },
            _ = faults.changed() => {},
            _ = resets.changed() => {
                let _ = client.set_zero_linger();
                let _ = server.set_zero_linger();
                return;
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// An echo server on a free port: what it reads, it writes back.
    fn echo_server() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut s = s;
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 || s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    fn connect(p: &Proxy) -> std::net::TcpStream {
        let s = std::net::TcpStream::connect(("127.0.0.1", p.port())).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    }

    fn echo(s: &mut std::net::TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
        s.write_all(msg)?;
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got)?;
        Ok(got)
    }

    #[test]
    fn a_healthy_link_carries_bytes_both_ways() {
        let p = Proxy::start(echo_server()).unwrap();
        let mut s = connect(&p);
        assert_eq!(echo(&mut s, b"hello").unwrap(), b"hello");
    }

    #[test]
    fn a_delay_holds_bytes_for_at_least_that_long() {
        let p = Proxy::start(echo_server()).unwrap();
        p.set(|f| f.forward.delay = Duration::from_millis(150));
        let mut s = connect(&p);
        let start = std::time::Instant::now();
        assert_eq!(echo(&mut s, b"slow").unwrap(), b"slow");
        assert!(start.elapsed() >= Duration::from_millis(150));
    }

    /// A delay set while the connection waits for bytes holds the next
    /// ones, each way: the read already waiting when it is set must not
    /// queue them with the old delay. Setting it and writing at once, many
    /// times, lets the bytes and the change reach the waiting loop
    /// together.
    #[test]
    fn a_delay_set_while_a_read_waits_holds_the_next_bytes() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p = Proxy::start(l.local_addr().unwrap()).unwrap();
        let mut client = connect(&p);
        let (mut server, _) = l.accept().unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let delay = Duration::from_millis(20);
        type Pick = fn(&mut Faults) -> &mut Direction;
        let ways: [(&str, Pick); 2] = [
            ("forward", |f| &mut f.forward),
            ("backward", |f| &mut f.backward),
        ];
        for (way, pick) in ways {
            let mut early = 0;
            for _ in 0..100 {
                let (from, to) = if way == "forward" {
                    (&mut client, &mut server)
                } else {
                    (&mut server, &mut client)
                };
                p.set(|f| pick(f).delay = delay);
                let start = std::time::Instant::now();
                from.write_all(b"x").unwrap();
                let mut got = [0u8; 1];
                to.read_exact(&mut got).unwrap();
                if start.elapsed() < delay {
                    early += 1;
                }
                // Bytes carried just before the next change: the loop is
                // still finishing with them when it comes.
                p.set(|f| pick(f).delay = Duration::ZERO);
                from.write_all(b"y").unwrap();
                to.read_exact(&mut got).unwrap();
            }
            assert_eq!(
                early, 0,
                "{way}: bytes went through before the delay set ahead of them"
            );
        }
    }

    #[test]
    fn a_stalled_direction_holds_bytes_until_it_heals_and_loses_none() {
        let p = Proxy::start(echo_server()).unwrap();
        let mut s = connect(&p);
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        p.set(|f| f.backward.stall = true);
        let err = echo(&mut s, b"held").unwrap_err();
        assert!(
            matches!(
                err.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "{err}"
        );
        p.heal();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = vec![0u8; 4];
        s.read_exact(&mut got).unwrap();
        assert_eq!(got, b"held", "the held bytes arrive once healed");
        assert_eq!(echo(&mut s, b"next").unwrap(), b"next");
    }

    #[test]
    fn refused_and_reset_connections_fail() {
        let p = Proxy::start(echo_server()).unwrap();
        let mut open = connect(&p);
        assert_eq!(echo(&mut open, b"a").unwrap(), b"a");
        p.set(|f| f.refuse = true);
        p.reset_connections();
        assert!(
            echo(&mut open, b"b").is_err(),
            "the open connection was reset"
        );
        let mut fresh = connect(&p);
        assert!(
            echo(&mut fresh, b"c").is_err(),
            "a new connection is refused"
        );
        p.heal();
        let mut healed = connect(&p);
        assert_eq!(echo(&mut healed, b"d").unwrap(), b"d");
    }
}
