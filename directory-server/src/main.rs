//! `quaver-directory`: runs the directory server.
//!
//! Prints `listening on ADDR` on standard output once it accepts connections, so scripts and
//! tests can start it on port 0 and read the port back.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use quaver_directory::{Config, RunningServer};
use tracing_subscriber::EnvFilter;

/// Quaver directory server: indexes shared files and tells peers where to find them.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// TOML config file (every key is optional; see deploy/ for a commented example).
    #[arg(long, env = "QUAVER_CONFIG")]
    config: Option<PathBuf>,
    /// gRPC listen address [default: 0.0.0.0:7700].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Data directory for the catalog and the search index [default: ./quaver-directory-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Lease length in seconds: a peer silent this long is offline [default: 90].
    #[arg(long)]
    lease_seconds: Option<u32>,
    /// Heartbeat interval told to peers, in seconds [default: 30].
    #[arg(long)]
    heartbeat_seconds: Option<u32>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let mut config = Config::load(args.config.as_deref(), |k| std::env::var(k).ok())?;
    if let Some(v) = args.listen {
        config.listen = v;
    }
    if let Some(v) = args.data_dir {
        config.data_dir = v;
    }
    if let Some(v) = args.lease_seconds {
        config.lease_seconds = v;
    }
    if let Some(v) = args.heartbeat_seconds {
        config.heartbeat_seconds = v;
    }

    let mut server = RunningServer::start(config.clone())
        .await
        .with_context(|| format!("starting the directory with data in {}", config.data_dir.display()))?;
    println!("listening on {}", server.local_addr);

    tokio::select! {
        result = server.wait() => return result.context("the server stopped"),
        _ = quaver_shared::signal::shutdown_requested() => tracing::info!("shutdown requested"),
    }
    server.request_stop();
    server.wait().await.context("graceful shutdown")?;
    Ok(())
}
