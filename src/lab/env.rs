//! What the lab takes from the machine: free ports and the wall clock.

use std::fs::File;
use std::net::TcpListener;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// The ports [`free_port`] hands out: below the kernel's ephemeral range,
/// so that no outgoing connection of this machine takes one between the
/// moment it is handed out and the moment a server binds it.
fn port_range() -> std::ops::Range<u16> {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let high = ephemeral_low.clamp(12000, 32768);
    (high - 10000)..high
}

/// A port no other process of this machine that uses this function holds,
/// that this process has not handed out before, and that was free a
/// moment ago. Each port handed out stays claimed (a lock on a file in the
/// temp dir) until this process exits, so that concurrent test processes
/// never start two servers on one port.
pub fn free_port() -> u16 {
    static CLAIMED: Mutex<Vec<(u16, File)>> = Mutex::new(Vec::new());
    let mut claimed = CLAIMED.lock().unwrap_or_else(|e| e.into_inner());
    let dir = std::env::temp_dir().join("geosync-lab-ports");
    let _ = std::fs::create_dir_all(&dir);
    let range = port_range();
    let span = (range.end - range.start) as u32;
    let seed = std::process::id()
        .wrapping_mul(2654435761)
        .wrapping_add(claimed.len() as u32 * 7919)
        .wrapping_add(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos()),
        );
    for i in 0..span {
        let port = range.start + ((seed.wrapping_add(i)) % span) as u16;
        if claimed.iter().any(|(p, _)| *p == port) {
            continue;
        }
        let Ok(lock) = File::create(dir.join(port.to_string())) else {
            continue;
        };
        if lock.try_lock().is_err() {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            claimed.push((port, lock));
            return port;
        }
    }
    panic!("no free port in {range:?} (locks in {})", dir.display())
}

/// Unix time in milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
