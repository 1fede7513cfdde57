//! `quaver-directory`: runs the directory server; `backup`, `restore` and `health` are the
//! operator subcommands (`cli`).
//!
//! Prints `listening on ADDR` on standard output once it accepts connections, so scripts and
//! tests can start it on port 0 and read the port back; with metrics on, a second line
//! `metrics on ADDR` follows.

use std::net::SocketAddr;
use std::path::PathBuf;

mod cli;

/// mimalloc rather than the system allocator: every request allocates (HTTP/2 frames, protobuf
/// messages, sled nodes, tantivy scorers), and glibc malloc showed up at ~8% of the server's CPU
/// under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Context;
use clap::Parser;
use quaver_directory::ops::{LogFormat, logging};
use quaver_directory::{Config, RunningServer, ServerError};
use quaver_shared::data_dir_lock::DataDirLock;

/// Quaver directory server: indexes shared files and tells peers where to find them.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// TOML config file (every key is optional; see deploy/ for a commented example).
    #[arg(long, global = true, env = "QUAVER_CONFIG")]
    config: Option<PathBuf>,
    /// gRPC listen address [default: 0.0.0.0:7700].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Data directory for the catalog and the search index [default: ./quaver-directory-data].
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Lease length in seconds: a peer silent this long is offline [default: 90].
    #[arg(long)]
    lease_seconds: Option<u32>,
    /// Heartbeat interval told to peers, in seconds [default: 30].
    #[arg(long)]
    heartbeat_seconds: Option<u32>,
    /// TLS certificate chain (PEM) for the gRPC port; needs --tls-key. Re-read on SIGHUP.
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) of --tls-cert.
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics [default: off].
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// Log format on standard error: text or json [default: text].
    #[arg(long)]
    log_format: Option<LogFormat>,
    /// Without a command: run the server.
    #[command(subcommand)]
    command: Option<cli::Command>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line, each cause once, never a backtrace (even with RUST_BACKTRACE set).
            eprintln!("quaver-directory: {}", explain(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// A failed run for the operator: the error chain, and what to do where that is known.
fn explain(e: &anyhow::Error) -> String {
    let line = quaver_shared::report::chain_line(e.chain());
    let bind = e.chain().find_map(|cause| match cause.downcast_ref::<ServerError>() {
        Some(ServerError::Bind { addr, setting, source })
            if source.kind() == std::io::ErrorKind::AddrInUse =>
        {
            Some((*addr, *setting))
        }
        _ => None,
    });
    match bind {
        Some((addr, setting)) => {
            let flag = setting.replace('_', "-");
            let env = format!("QUAVER_{}", setting.to_uppercase());
            format!(
                "{line}; another program uses port {} on {}: stop it, or choose another address with --{flag} ({env}, `{setting}` in the config file)",
                addr.port(),
                addr.ip()
            )
        }
        None => line,
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let env = |k: &str| std::env::var(k).ok();
    let mut config = Config::load(args.config.as_deref(), env)?;
    if let Some(v) = args.listen {
        config.listen = v;
    }
    match args.data_dir {
        Some(v) => config.data_dir = v,
        None => quaver_directory::config::refuse_peer_data_dir(&config, env)?,
    }
    if let Some(v) = args.lease_seconds {
        config.lease_seconds = v;
    }
    if let Some(v) = args.heartbeat_seconds {
        config.heartbeat_seconds = v;
    }
    if let Some(v) = args.tls_cert {
        config.tls_cert = Some(v);
    }
    if let Some(v) = args.tls_key {
        config.tls_key = Some(v);
    }
    if let Some(v) = args.metrics_listen {
        config.metrics_listen = Some(v);
    }
    if let Some(v) = args.log_format {
        config.log_format = v;
    }
    // After the config: the format can come from any layer. Config errors are printed by main.
    logging::init(config.log_format);
    // One rustls provider for the process, as insurance (the TLS config names ring itself).
    let _ = rustls::crypto::ring::default_provider().install_default();
    if let Some(command) = args.command {
        return cli::run(command, config).await;
    }

    // Before the catalog opens: a second directory here is told which process holds the dir.
    let _lock = DataDirLock::acquire(&config.data_dir, "quaver-directory")?;
    let mut server = RunningServer::start(config.clone())
        .await
        .with_context(|| format!("starting the directory with data in {}", config.data_dir.display()))?;
    println!("listening on {}", server.local_addr);
    if let Some(addr) = server.metrics_addr {
        println!("metrics on {addr}");
    }

    tokio::select! {
        result = server.wait() => return result.context("the server stopped"),
        _ = quaver_shared::signal::shutdown_requested() => tracing::info!("shutdown requested"),
    }
    server.request_stop();
    server.wait().await.context("graceful shutdown")?;
    Ok(())
}
