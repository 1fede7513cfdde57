//! The operator subcommands of the `quaver-directory` binary (a module of the binary, declared
//! in main.rs): `backup`, `restore`, `health`, and the admin calls `peers`, `ban`, `unban`,
//! `bans`, `remove-file`. Without a subcommand the binary runs the server.
//! Each is a thin shell over the library (`quaver_directory::backup`, `::admin`), where the
//! tests reach the same code.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use quaver_directory::Config;
use quaver_directory::admin_calls;
use quaver_directory::backup::{self, Manifest};
use quaver_directory::bans::{BanTarget, parse_duration, utc};
use quaver_shared::ContentId;
use quaver_shared::admin::v1::{BanEntry, ListPeersResponse};

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
        #[command(flatten)]
        server: Server,
    },
    /// Lists the peers online now: id, address, whether the connect-back reached it (only then
    /// is it a source), files shared, free upload slots, when it was last heard from.
    Peers {
        #[command(flatten)]
        server: Server,
        /// At most this many peers, in peer id order (at most 10000).
        #[arg(long, default_value_t = 1000)]
        limit: u32,
    },
    /// Bans a peer id or an IP range for a time: its Announces are refused (PERMISSION_DENIED,
    /// saying until when) and its peers online now go offline at once. Banning the same target
    /// again replaces the ban. Bans outlive restarts (not backups) and end on their own.
    Ban {
        /// A peer id (64 hex digits), an IP address, or a range in CIDR notation (10.0.0.0/8).
        target: String,
        /// How long: 90s, 30m, 12h, 7d (a bare number is seconds).
        #[arg(long = "for", value_name = "DURATION")]
        duration: String,
        /// Why, told to the banned peer and listed by `bans` (at most 256 bytes).
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        server: Server,
    },
    /// Lifts a ban before it ends.
    Unban {
        /// The peer id, IP address or range, as banned.
        target: String,
        #[command(flatten)]
        server: Server,
    },
    /// Lists the bans in force, soonest end first.
    Bans {
        #[command(flatten)]
        server: Server,
    },
    /// Deletes a file from the catalog and the search index, and from every peer's share list:
    /// Search, GetFile and Locate stop finding it at once. A peer that still holds it publishes
    /// it again at its next Announce; to keep a file out, ban the peers that share it.
    RemoveFile {
        /// The file's content id (64 hex digits).
        content_id: String,
        #[command(flatten)]
        server: Server,
    },
}

/// Which running directory a command talks to.
#[derive(clap::Args, Debug)]
pub struct Server {
    /// The directory's URL [default: http://127.0.0.1:PORT, PORT from the config's listen
    /// address]. The admin calls answer loopback connections only.
    #[arg(long = "server")]
    url: Option<String>,
    /// CA certificate (PEM) to verify an https:// server with.
    #[arg(long)]
    ca: Option<PathBuf>,
}

impl Server {
    fn url(&self, config: &Config) -> String {
        self.url.clone().unwrap_or_else(|| local_url(config))
    }
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
        Command::Health { server } => {
            let url = server.url(&config);
            let serving = quaver_directory::admin::health(&url, server.ca.as_deref())
                .await
                .with_context(|| format!("health check of {url}"))?;
            anyhow::ensure!(serving, "{url} is not serving");
            println!("{url} is serving");
        }
        Command::Peers { server, limit } => {
            let url = server.url(&config);
            let answer = admin_calls::list_peers(&url, server.ca.as_deref(), limit)
                .await
                .with_context(|| format!("listing the peers of {url}"))?;
            print!("{}", peers_table(&answer));
        }
        Command::Ban { target, duration, reason, server } => {
            let target = BanTarget::parse(&target)?;
            let seconds = parse_duration(&duration).map_err(anyhow::Error::msg)?;
            let url = server.url(&config);
            let answer = admin_calls::ban(&url, server.ca.as_deref(), &target, seconds, reason)
                .await
                .with_context(|| format!("banning {target} on {url}"))?;
            let ban = answer.ban.as_ref().and_then(admin_calls::ban_of);
            let until = ban.as_ref().map_or_else(|| "?".into(), |b| utc(b.until_unix_ms));
            let verb = if answer.replaced { "ban replaced" } else { "banned" };
            println!("{verb}: {target} until {until}; {} online peer(s) taken offline", answer.peers_dropped);
        }
        Command::Unban { target, server } => {
            let target = BanTarget::parse(&target)?;
            let url = server.url(&config);
            let lifted = admin_calls::unban(&url, server.ca.as_deref(), &target)
                .await
                .with_context(|| format!("lifting the ban of {target} on {url}"))?;
            if lifted {
                println!("lifted the ban of {target}");
            } else {
                println!("no ban of {target} was in force");
            }
        }
        Command::Bans { server } => {
            let url = server.url(&config);
            let bans = admin_calls::list_bans(&url, server.ca.as_deref())
                .await
                .with_context(|| format!("listing the bans of {url}"))?;
            print!("{}", bans_table(&bans));
        }
        Command::RemoveFile { content_id, server } => {
            let id: ContentId = content_id
                .trim()
                .parse()
                .map_err(|e| anyhow::anyhow!("content id {content_id:?}: {e} (64 hex digits)"))?;
            let url = server.url(&config);
            let answer = admin_calls::remove_file(&url, server.ca.as_deref(), &id)
                .await
                .with_context(|| format!("removing {id} on {url}"))?;
            anyhow::ensure!(answer.removed, "the catalog of {url} has no file with content id {id}");
            println!(
                "removed {id} from the catalog and the search index; {} peer(s) shared it",
                answer.sources
            );
        }
    }
    Ok(())
}

/// The `peers` output: one line per peer under a header, then how many are online.
fn peers_table(answer: &ListPeersResponse) -> String {
    let mut out = String::new();
    if !answer.peers.is_empty() {
        out.push_str(&format!(
            "{:<64}  {:<45}  {:<9}  {:>7}  {:>5}  {}\n",
            "PEER", "ADDRESS", "REACHABLE", "FILES", "SLOTS", "LAST SEEN"
        ));
    }
    for p in &answer.peers {
        out.push_str(&format!(
            "{:<64}  {:<45}  {:<9}  {:>7}  {:>5}  {:.1} s ago\n",
            hex::encode(&p.peer_id),
            p.address,
            if p.reachable { "yes" } else { "no" },
            p.files,
            p.free_upload_slots,
            p.last_seen_ms_ago as f64 / 1000.0
        ));
    }
    let shown = answer.peers.len() as u64;
    if shown < answer.online {
        out.push_str(&format!("{shown} of {} online peers shown (raise --limit)\n", answer.online));
    } else {
        out.push_str(&format!("{} peer(s) online\n", answer.online));
    }
    out
}

/// The `bans` output: target, end and reason, one ban a line.
fn bans_table(bans: &[BanEntry]) -> String {
    if bans.is_empty() {
        return "no bans in force\n".into();
    }
    let mut out = format!("{:<75}  {:<20}  {}\n", "TARGET", "UNTIL (UTC)", "REASON");
    for entry in bans {
        match admin_calls::ban_of(entry) {
            Some(ban) => out.push_str(&format!(
                "{:<75}  {:<20}  {}\n",
                ban.target.to_string(),
                utc(ban.until_unix_ms),
                ban.reason
            )),
            None => out.push_str("(a ban this tool cannot read)\n"),
        }
    }
    out
}
