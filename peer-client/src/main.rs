//! `quaver`: the peer node's daemon and command line.
//!
//! `quaver daemon` runs the node; every other command talks to the running daemon through its
//! control socket (`control.sock` in the data dir), so several nodes can run on one machine
//! with different `--data-dir`s. See `cli/` for each command; exit codes are in [`cli::Exit`].

mod cli;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "quaver",
    version,
    about = "Quaver peer: share music, find songs, download from many peers at once"
)]
struct Args {
    /// The node's data directory (key, store, partial downloads, control socket).
    #[arg(long, global = true, env = "QUAVER_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The directory server's URL.
    #[arg(long, global = true, env = "QUAVER_DIRECTORY", default_value = "http://127.0.0.1:7700")]
    directory: String,
    /// CA certificate(s), PEM, to verify an https:// directory with (default: the system's
    /// root certificates).
    #[arg(long, global = true, env = "QUAVER_DIRECTORY_CA")]
    directory_ca: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs the node: serves shared files, keeps the directory informed, runs downloads.
    Daemon {
        /// UDP address of the QUIC endpoint (port 0: any free port).
        #[arg(long, default_value = "0.0.0.0:0")]
        listen: SocketAddr,
        /// Where finished downloads go (shared automatically). Default: DATA_DIR/files.
        #[arg(long)]
        download_dir: Option<PathBuf>,
        /// Uploads served at once; more requests are told to wait (BUSY).
        #[arg(long, default_value_t = 8)]
        upload_slots: usize,
        /// Upload bandwidth cap in bytes per second, shared by all uploads (default: none).
        #[arg(long)]
        max_upload_rate: Option<u64>,
    },
    /// Shares a folder (recursively) and announces its files.
    Share {
        folder: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Stops sharing a folder.
    Unshare {
        folder: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Searches the directory by title, artist, album or file name (any script, pinyin too).
    Search {
        #[arg(required = true, num_args = 1..)]
        query: Vec<String>,
        /// Most results to show (1..=100).
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
    /// Downloads a file: a result number of the last search, or a content id (64 hex digits).
    Get {
        target: String,
        /// Where the file goes (default: the daemon's download dir). Only the downloaded file
        /// is shared from there, not the folder.
        #[arg(long)]
        out: Option<PathBuf>,
        /// While no source is online, keep looking this long (seconds) before giving up
        /// (exit code 7).
        #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u32).range(1..))]
        wait_sources: u32,
        #[arg(long)]
        json: bool,
    },
    /// Stops a download (running or waiting for a source) and removes its partial data.
    Cancel {
        /// The content id (64 hex digits).
        content_id: String,
        #[arg(long)]
        json: bool,
    },
    /// The node's identity, directory session, shares and transfers.
    Status {
        #[arg(long)]
        json: bool,
    },
}

/// Keeps glibc malloc from hoarding a download's churn. quinn receives into a fresh buffer per
/// batch of datagrams (up to 64 KiB) and frees it on whichever thread read the last stream
/// chunk out of it, and the block buffers are 256 KiB. By default glibc gives every thread
/// that allocates an arena of its own and raises its mmap and trim thresholds after the first
/// big free, so freed memory stayed in the arenas: a 1 GiB download from 4 sources peaked at
/// 35-39 MiB RSS with about 25 MiB of live heap. Two arenas and fixed thresholds bring that to
/// about 28 MiB: buffers of 128 KiB and more come from mmap and go back when freed (the block
/// buffers are pooled, so the mmap path sees few calls), and a free heap top over 1 MiB is
/// trimmed. The trim threshold was 128 KiB at first, but quinn's receive buffers (up to 64 KiB
/// each) then kept growing the heap top into pages just trimmed, and faulting those in was
/// 2.4 % of a 4-source downloader's CPU; at 1 MiB it is 0.2 %, for about 1 MiB more peak RSS.
/// mimalloc was tried too: it backed its arena with huge pages (100 MiB).
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; it is called before any other thread
    // exists, and an unknown or refused setting is reported by its return value (ignored:
    // glibc's defaults still work, with a higher peak).
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1024 * 1024);
    }
}

fn main() -> std::process::ExitCode {
    tune_allocator();
    let args = Args::parse();
    let data_dir = args.data_dir.unwrap_or_else(cli::default_data_dir);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("quaver: cannot start the runtime: {e}");
            return cli::Exit::Failure.into();
        }
    };
    let exit = runtime.block_on(async move {
        match args.command {
            Command::Daemon { listen, download_dir, upload_slots, max_upload_rate } => {
                let daemon = cli::daemon::DaemonArgs {
                    data_dir,
                    directory: args.directory,
                    directory_ca: args.directory_ca,
                    listen,
                    download_dir,
                    upload_slots,
                    max_upload_rate,
                };
                cli::daemon::run(daemon).await
            }
            Command::Share { folder, json } => cli::commands::share(&data_dir, &folder, json).await,
            Command::Unshare { folder, json } => cli::commands::unshare(&data_dir, &folder, json).await,
            Command::Search { query, limit, json } => {
                cli::commands::search(&data_dir, &query.join(" "), limit, json).await
            }
            Command::Get { target, out, wait_sources, json } => {
                cli::get::run(&data_dir, &target, out.as_deref(), wait_sources, json).await
            }
            Command::Cancel { content_id, json } => cli::cancel::run(&data_dir, &content_id, json).await,
            Command::Status { json } => cli::commands::status(&data_dir, json).await,
        }
    });
    exit.into()
}
