//! `geosync check-config`: the settings `geosync run` would start with,
//! merged (flags, `GEOSYNC_*` environment, the file) and checked the same
//! way, certificate files read included, without connecting to anything.

use std::io::Write;
use std::path::PathBuf;

use crate::agent::config::{Config, RunArgs, redacted};
use crate::mesh::security::PeerAuth;

/// `geosync check-config`'s arguments.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Exit status: 0 when `geosync run` would start with these settings (they are \
printed, passwords hidden), 2 with the setting that is wrong named.")]
pub struct CheckConfigArgs {
    /// The TOML file to check (as `geosync run --config FILE`).
    #[arg(value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Any of `geosync run`'s flags; they and `GEOSYNC_*` variables take
    /// precedence over the file, as they would for `run`.
    #[command(flatten)]
    pub run: RunArgs,
}

/// The checked settings, one per line, for a person to read.
pub fn summary(c: &Config) -> String {
    let peers = if c.peers.is_empty() {
        "(none)".to_string()
    } else {
        let named: Vec<String> = c
            .peers
            .iter()
            .map(|p| match c.peer_ids.get(p) {
                Some(id) => format!("{id}={p}"),
                None => p.clone(),
            })
            .collect();
        named.join(", ")
    };
    let security = match &c.peer_auth {
        PeerAuth::None { insecure: false } => "none (loopback peers only)".to_string(),
        PeerAuth::None { insecure: true } => "none (--insecure-peers)".to_string(),
        PeerAuth::Tls(t) => t.mode.to_string(),
    };
    let secs = |d: Option<std::time::Duration>| match d {
        Some(d) => format!("{} s", d.as_secs()),
        None => "off".to_string(),
    };
    let mut lines = vec![
        ("node-id", c.node_id.to_string()),
        ("redis", redacted(&c.redis_url)),
        (
            "redis tls",
            if c.redis_tls.is_some() { "yes" } else { "no" }.into(),
        ),
        ("listen", c.listen.to_string()),
        ("peers", peers),
        ("peer security", security),
        (
            "admin",
            c.admin.map_or("(none)".to_string(), |a| a.to_string()),
        ),
        ("data-dir", c.data_dir.display().to_string()),
        ("mesh", c.mesh.clone()),
        ("metadata-db", c.metadata_db.to_string()),
        ("anti-entropy interval", secs(c.anti_entropy_interval)),
        (
            "tombstone collect interval",
            secs(c.tombstone_collect_interval),
        ),
        ("evictions", format!("{:?}", c.evictions).to_lowercase()),
        (
            "key filters",
            if c.key_filter.passes_all() {
                "none (every key replicates)".to_string()
            } else {
                c.key_filter.fingerprint()
            },
        ),
    ];
    if !c.sentinels.is_empty() {
        lines.push(("sentinels", c.sentinels.join(", ")));
        lines.push(("master name", c.master_name.clone().unwrap_or_default()));
    }
    lines
        .into_iter()
        .map(|(k, v)| format!("  {k:<27} {v}\n"))
        .collect()
}

/// `geosync check-config`: prints the checked settings and returns the exit
/// status.
pub fn main(mut args: CheckConfigArgs) -> i32 {
    if let Some(f) = args.file.take() {
        args.run.config.insert(0, f);
    }
    let shown = if args.run.config.is_empty() {
        "flags and environment".to_string()
    } else {
        let files: Vec<String> = args
            .run
            .config
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        files.join(", ")
    };
    match args.run.into_config() {
        Ok(c) => {
            let mut out = std::io::stdout().lock();
            let _ = write!(out, "{shown}: OK\n{}", summary(&c));
            0
        }
        Err(e) => {
            eprintln!("geosync check-config: {shown}: {e}");
            2
        }
    }
}
