//! The `quaver` commands. `daemon` runs a node; the others are clients of its control socket.
//!
//! Every command prints for people by default and, with `--json`, one JSON document on
//! standard output for scripts. Errors go to standard error as one line, and the exit code says
//! what happened (see [`Exit`]).

pub mod cancel;
pub mod commands;
pub mod daemon;
mod format;
pub mod get;

use std::path::{Path, PathBuf};

use quaver_peer::control::{self, ControlClient};

/// Exit codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Ok = 0,
    /// Something else failed (the message says what).
    Failure = 1,
    /// Bad arguments (clap also uses 2).
    Usage = 2,
    /// No daemon answers on this data dir's control socket.
    NoDaemon = 3,
    /// The directory does not know the file, or the search found nothing to get.
    NotFound = 4,
    /// The download failed (no sources, bad data from every source, disk).
    DownloadFailed = 5,
    /// The directory cannot be reached.
    DirectoryDown = 6,
    /// No source was online for the whole wait (`get --wait-sources`).
    NoSources = 7,
    /// Not enough free disk space for the download (refused before it starts).
    NoSpace = 8,
    /// The download was cancelled (`quaver cancel`).
    Cancelled = 9,
}

impl From<Exit> for std::process::ExitCode {
    fn from(e: Exit) -> Self {
        std::process::ExitCode::from(e as u8)
    }
}

/// `$XDG_DATA_HOME/quaver`, else `~/.local/share/quaver`, else `./quaver-data`.
pub fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("quaver");
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/share/quaver"),
        None => PathBuf::from("quaver-data"),
    }
}

/// The running daemon's control API, or a message and [`Exit::NoDaemon`].
pub async fn connect(data_dir: &Path) -> Result<ControlClient, Exit> {
    let socket = quaver_peer::node::control_socket(data_dir);
    control::connect(&socket).await.map_err(|e| {
        eprintln!(
            "quaver: no node is running for {} ({e}); start one with `quaver daemon`",
            data_dir.display()
        );
        Exit::NoDaemon
    })
}

/// Prints a failed control call and maps its status to an exit code.
pub fn report(status: tonic::Status) -> Exit {
    // The message may carry the directory's words: shown like any text from the network.
    eprintln!("quaver: {}", format::text(status.message()));
    match status.code() {
        tonic::Code::InvalidArgument => Exit::Usage,
        tonic::Code::NotFound => Exit::NotFound,
        tonic::Code::Unavailable => Exit::DirectoryDown,
        tonic::Code::Aborted => Exit::DownloadFailed,
        tonic::Code::DeadlineExceeded => Exit::NoSources,
        tonic::Code::ResourceExhausted => Exit::NoSpace,
        tonic::Code::Cancelled => Exit::Cancelled,
        _ => Exit::Failure,
    }
}

/// `path` made absolute against the CLI's working directory (the daemon has its own).
pub fn absolute(path: &Path) -> Result<PathBuf, Exit> {
    std::path::absolute(path).map_err(|e| {
        eprintln!("quaver: {}: {e}", path.display());
        Exit::Usage
    })
}

/// Prints `value` as one JSON document.
pub fn print_json(value: &serde_json::Value) {
    println!("{value}");
}
