//! The download task: the tokio driver of a [`Transfer`] (`quaver_core::transfer`), which owns
//! every decision. This module only moves bytes and time: it dials the sources the transfer
//! names (pinning each one's PeerId), sends its requests, verifies each block against the
//! outboard, writes what it is told to write, asks the directory when it is told to look, and
//! reports every outcome back as an event (the I/O half is `fetch::drive`).
//!
//! Memory is bounded by `MAX_BUFFERS` block buffers, whatever the file size and however many
//! sources there are: a request waits for a buffer before it opens a stream, and the buffer
//! stays taken until its block is written (or dropped), then is reused by the next request.
//! Each request's task also verifies its block, so hashing is spread over the runtime's
//! threads. Disk work (writing blocks, re-checking a resumed run's blocks) runs on the blocking
//! pool, never on the runtime. The outboard stays in its file in the work dir (a block check
//! reads the few hashes on its path), so a big file's outboard never sits on the heap.
//!
//! Integrity: a block is written to the `.part` file only after it verified against the
//! outboard, and the outboard's root is the content id, so once every block is written the
//! file is the content id's bytes: there is no second, whole-file hash at the end. A resumed
//! download re-checks every block a previous run marked before trusting it, since those bytes
//! come back from disk.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quaver_core::transfer::{Action, Event, Failure, Transfer, TransferConfig};
use quaver_shared::{ContentId, PeerId};
use tokio::sync::{mpsc, watch};

use super::drive::{Driver, Io};
use super::partfile::{PartFile, unused_path};
use super::scheduler::BLOCK_SIZE;
use super::verify::Outboard;
use super::waiting::RELOCATE_EVERY;
use crate::sanitize::safe_file_name;

/// Most sources a download talks to at once.
pub const MAX_SOURCES: usize = 8;
/// Block buffers in memory at once (each `BLOCK_SIZE`): 8 MiB, shared by all sources, whatever
/// their number. It is also the most data in flight, so a download moves at most 8 MiB per
/// round trip (80 MB/s at 100 ms): the same as one source may have in flight anyway (the
/// scheduler's `max_in_flight` blocks), so more sources add speed where sources are the limit,
/// not memory. On loopback or a LAN a fraction of it keeps every source busy.
pub const MAX_BUFFERS: usize = 32;

/// A peer that has the file, as the directory's Locate gave it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceAddr {
    pub peer: PeerId,
    pub addr: SocketAddr,
    /// How to reach it (`Source.reach`).
    pub path: Route,
}

/// How a source is reached: the transfer's own [`Route`], re-exported for callers.
pub use quaver_core::transfer::Route;

impl SourceAddr {
    /// A source reached by dialling `addr`.
    pub fn direct(peer: PeerId, addr: SocketAddr) -> SourceAddr {
        SourceAddr { peer, addr, path: Route::Direct }
    }
}

/// What one source delivered, and how it was reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Served {
    pub peer: PeerId,
    /// Verified bytes credited to it.
    pub bytes: u64,
    pub path: Route,
    /// How long its connection took to open (the introduction included).
    pub connect_time: Duration,
}

/// What to download and where.
#[derive(Clone, Debug)]
pub struct DownloadSpec {
    pub id: ContentId,
    pub size: u64,
    /// The name the directory gave; sanitised before it touches the disk.
    pub name: String,
    pub out_dir: PathBuf,
    /// Where `.part` state lives between runs.
    pub work_dir: PathBuf,
    /// How long to keep looking while no source is online before failing with
    /// [`FetchError::NoSources`] (see [`super::waiting`]).
    pub wait_for_sources: Duration,
    /// The node's certificate, proven to every source so that they count what this node takes
    /// by its `PeerId` (`None`: an anonymous client, counted by address alone).
    pub identity: Option<Arc<crate::tls::ClientAuth>>,
    /// The node's connection to the directory's rendezvous endpoint, on which it asks to be
    /// introduced to sources behind NAT (`None`: such sources are not tried).
    pub rendezvous: Option<watch::Receiver<Option<quinn::Connection>>>,
}

/// Progress for bars and status commands.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DownloadProgress {
    pub size: u64,
    pub verified_bytes: u64,
    pub active_sources: usize,
    pub fetched_bytes: u64,
    /// Set while no source is online: the download keeps looking until then, and fails after.
    pub waiting_until: Option<Instant>,
}

#[derive(Debug)]
pub struct DownloadOutcome {
    pub path: PathBuf,
    /// Bytes received from peers in this run (blocks a previous run verified are not fetched).
    pub fetched_bytes: u64,
    /// Verified bytes credited to each source, and how it was reached (relayed bytes apart).
    pub per_source: Vec<Served>,
    /// Sources that sent bad data.
    pub banned: Vec<PeerId>,
    /// The file holding the outboard every block was verified against (its root is the
    /// content id). The caller owns it now: the store takes it over (`Store::add_verified`),
    /// moving it rather than reading it.
    pub outboard: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("no source was online to serve the file for {} s (tried {tried}); try again later, or wait longer with --wait-sources", waited.as_secs())]
    NoSources { tried: usize, waited: Duration },
    #[error("no source sent a valid outboard")]
    NoOutboard,
    #[error("{}: {source}", path.display())]
    Disk { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Scheduler(#[from] super::scheduler::SchedulerError),
}

/// Asked for more sources when too few are left (usually the directory's Locate).
pub type Relocate = Box<dyn FnMut() -> futures_lite::BoxedFuture<Vec<SourceAddr>> + Send>;

mod futures_lite {
    pub type BoxedFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;
}

/// A disk error about `path`.
pub(super) fn disk(path: &Path) -> impl FnOnce(std::io::Error) -> FetchError + '_ {
    move |source| FetchError::Disk { path: path.to_owned(), source }
}

impl FetchError {
    /// True when the disk is full (the user can free space, or drop the partial download).
    pub fn is_disk_full(&self) -> bool {
        matches!(self, FetchError::Disk { source, .. } if source.kind() == std::io::ErrorKind::StorageFull)
    }
}

/// Downloads `spec` from `sources` (and whatever `relocate` finds later).
pub async fn download(
    endpoint: &quinn::Endpoint,
    spec: DownloadSpec,
    sources: Vec<SourceAddr>,
    relocate: Option<Relocate>,
    progress: Option<watch::Sender<DownloadProgress>>,
) -> Result<DownloadOutcome, FetchError> {
    let part = {
        let blocks = spec.size.div_ceil(BLOCK_SIZE).max(1) as usize;
        PartFile::open(&spec.work_dir, &spec.id, spec.size, blocks).map_err(disk(&spec.work_dir))?
    };
    // For the debug log's timeline of the download's phases.
    let began = Instant::now();
    let saved = part
        .saved_outboard()
        .and_then(|(file, len)| Outboard::from_file(&spec.id, spec.size, file, len).ok());
    let cfg = TransferConfig {
        size: spec.size,
        block_size: BLOCK_SIZE,
        max_sources: MAX_SOURCES,
        wait_for_sources: spec.wait_for_sources,
        relocate_every: RELOCATE_EVERY,
        can_locate: relocate.is_some(),
    };
    let first: Vec<(PeerId, Route)> = sources.iter().map(|s| (s.peer, s.path)).collect();
    let mut transfer = Transfer::new(cfg, Instant::now(), first, saved.is_some(), part.marked_blocks())?;
    let (tx, mut rx) = mpsc::channel::<Io>(256);
    let mut driver = Driver::new(endpoint, &spec, tx, part, saved, relocate);
    driver.learn(&sources);
    let mut shown = DownloadProgress::default();

    loop {
        while let Some(action) = transfer.poll_action() {
            match action {
                Action::Finish => {
                    tracing::debug!(after = ?began.elapsed(), "every block verified and written");
                    return finish(driver, &spec, &transfer, began);
                }
                Action::Fail(failure) => return Err(driver.failed(failure)),
                Action::UseOutboard(_) | Action::CheckMarked(_) => {
                    tracing::debug!(after = ?began.elapsed(), "outboard ready");
                    driver.execute(action)?;
                }
                action => driver.execute(action)?,
            }
        }
        // Bytes of an answer the transfer did not ask to write are dropped (a late duplicate).
        driver.drop_unwritten();

        let p = transfer.progress();
        let now_showing = DownloadProgress {
            size: spec.size,
            verified_bytes: p.verified_bytes,
            active_sources: p.active_sources,
            fetched_bytes: p.fetched_bytes,
            waiting_until: p.waiting_until,
        };
        if now_showing != shown {
            if now_showing.waiting_until.is_some() && shown.waiting_until.is_none() {
                tracing::info!(id = %spec.id, "no source online; waiting for one");
            }
            if let Some(tx) = &progress {
                let _ = tx.send(now_showing.clone());
            }
            shown = now_showing;
        }

        let io = match transfer.poll_timeout(Instant::now()) {
            Some(at) => tokio::select! {
                io = rx.recv() => io,
                _ = tokio::time::sleep_until(at.into()) => None,
            },
            None => rx.recv().await,
        };
        if let Some(io) = io
            && let Some(event) = driver.event_of(io)?
        {
            transfer.handle(Instant::now(), event);
        }
        // Silence is judged only once no answer waits in the queue: after this task was
        // starved (a loaded machine, a paused process) every source looks silent until the
        // queue is read.
        if rx.is_empty() {
            transfer.handle(Instant::now(), Event::Tick);
        }
    }
}

/// Every block is on disk: moves the file to its name and hands over the outboard.
fn finish(
    driver: Driver,
    spec: &DownloadSpec,
    transfer: &Transfer<PeerId>,
    began: Instant,
) -> Result<DownloadOutcome, FetchError> {
    let per_source = transfer
        .per_source()
        .into_iter()
        .map(|(peer, bytes)| Served {
            peer,
            bytes,
            path: driver.paths().get(&peer).copied().unwrap_or_default(),
            connect_time: driver.connect_times().get(&peer).copied().unwrap_or_default(),
        })
        .collect();
    let part = driver.close()?;
    let name = safe_file_name(&spec.name, &format!("{}.download", &spec.id.to_hex()[..16]));
    std::fs::create_dir_all(&spec.out_dir).map_err(disk(&spec.out_dir))?;
    let dest = unused_path(&spec.out_dir, &name);
    let outboard = part.finish(&dest).map_err(disk(&dest))?;
    tracing::debug!(after = ?began.elapsed(), "file complete on disk");
    Ok(DownloadOutcome {
        path: dest,
        fetched_bytes: transfer.progress().fetched_bytes,
        per_source,
        banned: transfer.banned(),
        outboard,
    })
}

impl From<Failure> for FetchError {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::NoSources { tried, waited } => FetchError::NoSources { tried, waited },
            Failure::NoOutboard | Failure::OutboardBroken => FetchError::NoOutboard,
            Failure::Plan(e) => FetchError::Scheduler(e),
        }
    }
}

/// Where downloads keep their state by default, inside a node's data dir.
pub fn default_work_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("partial")
}
