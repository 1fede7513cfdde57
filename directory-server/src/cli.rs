//! The operator subcommands of the `quaver-directory` binary (a module of the binary, declared
//! in main.rs): `backup`, `restore`, `health`. Without a subcommand the binary runs the server.
//! Each is a thin shell over the library (`quaver_directory::backup`, `::admin`), where the
//! tests reach the same code.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use quaver_directory::Config;
use quaver_directory::backup::{self, Manifest};

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Writes a consistent copy of the catalog to a new directory (DIR.tmp, renamed to DIR
    /// when complete). By default it asks the running server (loopback only); --offline reads
    /// a data dir that no server holds.
    Backup {
        /// The backup directory to create; it must not exist.
        #[arg(long)]
        to: PathBuf,
        /// The running directory's URL [default: http://127.0.0.1:PORT, PORT from the config's
        /// listen address].
        #[arg(long, conflicts_with = "offline")]
        server: Option<String>,
        /// Read the configured data dir directly instead (no server may be running on it).
        #[arg(long)]
        offline: bool,
        /// CA certificate (PEM) to verify an https:// server with.
        #[arg(long)]
        ca: Option<PathBuf>,
    },
    /// Restores a backup into the configured data dir (--data-dir or the config's), which must
    /// be empty unless --force. Refuses while a server runs on that data dir. The search index
    /// is rebuilt from the catalog at the next start.
    Restore {
        /// The backup directory (as written by `backup --to`).
        #[arg(long)]
        from: PathBuf,
        /// Replace the data dir's catalog (kept aside as catalog.before-restore-TIME) and index.
        #[arg(long)]
        force: bool,
    },
    /// Asks the server's gRPC health service whether it is serving: exit status 0 if so, 1 if
    /// not or unreachable (for container health checks).
    Health {
        /// The directory's URL [default: http://127.0.0.1:PORT, PORT from the config].
        #[arg(long)]
        server: Option<String>,
        /// CA certificate (PEM) to verify an https:// server with.
        #[arg(long)]
        ca: Option<PathBuf>,
    },
}

/// The local URL of the server `config` describes: its listen address, or loopback when it
/// listens on every address.
fn local_url(config: &Config) -> String {
    let ip = match config.listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}", std::net::SocketAddr::new(ip, config.listen.port()))
}

fn describe(manifest: &Manifest) -> String {
    format!(
        "{} files, {} sources, {} peers; {} bytes, blake3 {}",
        manifest.records("files"),
        manifest.records("sources"),
        manifest.records("peers"),
        manifest.snapshot_bytes,
        manifest.snapshot_blake3
    )
}

pub async fn run(command: Command, config: Config) -> anyhow::Result<()> {
    match command {
        Command::Backup { to, server, offline, ca } => {
            let manifest = if offline {
                let data_dir = config.data_dir.clone();
                let dest = to.clone();
                tokio::task::spawn_blocking(move || backup::offline(&data_dir, &dest)).await??
            } else {
                let url = server.unwrap_or_else(|| local_url(&config));
                quaver_directory::admin::fetch_backup(&url, ca.as_deref(), &to)
                    .await
                    .with_context(|| format!("backup from {url}"))?
            };
            println!("backup written to {}: {}", to.display(), describe(&manifest));
        }
        Command::Restore { from, force } => {
            let data_dir = config.data_dir.clone();
            let report = tokio::task::spawn_blocking(move || backup::restore(&from, &data_dir, force))
                .await?
                .context("restore")?;
            println!(
                "restored into {}: {}; the search index is rebuilt at the next start",
                config.data_dir.display(),
                describe(&report.manifest)
            );
            if let Some(previous) = report.previous {
                println!("the previous catalog is kept in {}; delete it when satisfied", previous.display());
            }
        }
        Command::Health { server, ca } => {
            let url = server.unwrap_or_else(|| local_url(&config));
            let serving = quaver_directory::admin::health(&url, ca.as_deref())
                .await
                .with_context(|| format!("health check of {url}"))?;
            anyhow::ensure!(serving, "{url} is not serving");
            println!("{url} is serving");
        }
    }
    Ok(())
}
