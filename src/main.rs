//! The `geosync` binary: `run` (the agent), `lab` (local regions to
//! prove convergence with) and the operator commands (`status`, `verify`, `check-config`).

use clap::{Parser, Subcommand};
use geosync::agent::config::{LogFormat, RunArgs};
use geosync::lab::LabArgs;
use geosync::tools::check_config::CheckConfigArgs;
use geosync::tools::status::StatusArgs;
use geosync::tools::verify::VerifyArgs;
use tokio_util::sync::CancellationToken;

/// The `geosync` command line.
#[derive(Debug, Parser)]
#[command(
    name = "geosync",
    version,
    about = "Active-active geo-replication agent for Redis"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent beside one regional Redis.
    Run(Box<RunArgs>),
    /// Start local regions (a Redis and an agent each) and run a
    /// conflict/fault scenario in them; exits 1 when the regions differ.
    Lab(LabArgs),
    /// Compare the regions' data directly, Redis against Redis; exits 1
    /// with the differing keys listed.
    Verify(VerifyArgs),
    /// Check a configuration (file, flags, environment) as `run` would,
    /// without starting.
    CheckConfig(Box<CheckConfigArgs>),
    /// One agent's view of its region and peers, from its admin address;
    /// exits 1 when unhealthy.
    Status(StatusArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run(args) => run(*args),
        Command::Lab(args) => std::process::exit(geosync::lab::runner::main(args)),
        Command::Verify(args) => std::process::exit(geosync::tools::verify::main(args)),
        Command::Status(args) => std::process::exit(geosync::tools::status::main(args)),
        Command::CheckConfig(args) => std::process::exit(geosync::tools::check_config::main(*args)),
    }
}

#[tokio::main]
async fn run(args: RunArgs) -> anyhow::Result<()> {
    // SIGHUP reads the configuration again the same way (membership).
    let again = args.clone();
    let reload: geosync::agent::membership::Reload = Box::new(move || again.clone().into_config());
    let config = match args.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("geosync: {e}");
            std::process::exit(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("GEOSYNC_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Json => fmt.json().init(),
        LogFormat::Text => fmt.init(),
    }
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        signal.cancel();
    });
    if let Err(e) = geosync::run(config, Some(reload), shutdown).await {
        eprintln!("geosync: {e}");
        std::process::exit(1);
    }
    Ok(())
}
