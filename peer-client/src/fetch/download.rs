//! The download task: moves bytes for the scheduler. It connects to sources (pinning each
//! one's PeerId), fetches and checks the outboard, then runs the scheduler's loop: send the
//! requests it asks for, verify each block against the outboard, write it to the `.part`
//! file, report the outcome. Every decision is the scheduler's; this module only does I/O.
//!
//! Memory is bounded by `MAX_BUFFERS` block buffers, whatever the file size and however many
//! sources there are: a request waits for a buffer before it opens a stream, and the buffer
//! stays taken until its block is written (or dropped), then is reused by the next request.
//! Each request's task also verifies its block, so hashing is spread over the runtime's
//! threads instead of queueing behind the one loop that writes. The outboard stays in its file
//! in the work dir (a block check reads the few hashes on its path), so a big file's outboard
//! (4 MiB per GiB) never sits on the heap.
//!
//! Integrity: a block is written to the `.part` file only after it verified against the
//! outboard, and the outboard's root is the content id, so once every block is written the
//! file is the content id's bytes: there is no second, whole-file hash at the end (it would
//! read the file back once more to learn nothing new). A resumed download re-checks every block
//! a previous run marked before trusting it, since those bytes come back from disk.
//!
//! A source that answers nothing for a while with requests in flight (the scheduler's stall
//! rule) is dropped while others remain: its streams are aborted, which frees the buffers they
//! held, and its blocks go back to the pool at once. A killed peer's QUIC connection would
//! only time out after its idle timeout, and meanwhile its requests would keep taking buffers.
//! A dropped or lost source is forgotten, not banned: while the download is short of sources,
//! the next lookup may return it and it is connected to again, so a live source that only
//! looked silent (this task was starved for a moment) comes back.
//!
//! A download with nobody to fetch from (before the outboard or after it) keeps asking the
//! directory and waits, visibly (`DownloadProgress::waiting_until`), for up to the user's bound;
//! a source that answers BUSY is asked again later, never taken for a failure. Those decisions
//! are `waiting`'s ([`SourceWait`]), sans-IO.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quaver_shared::{ContentId, PeerId};
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;

use super::buffers::{Buffer, BufferPool};
use super::client::{FileBody, RequestError, request};
use super::partfile::{PartFile, unused_path};
use super::scheduler::{BLOCK_SIZE, Block, Scheduler, Verified};
use super::verify::{Outboard, VerifyError};
use super::waiting::{RELOCATE_EVERY, SourceWait, Verdict, busy_retry_after};
use crate::sanitize::safe_file_name;
use crate::wire::{Request, ResponseStatus};

/// Most sources a download talks to at once.
pub const MAX_SOURCES: usize = 8;
/// Block buffers in memory at once (each `BLOCK_SIZE`): 8 MiB, shared by all sources, whatever
/// their number. It is also the most data in flight, so a download moves at most 8 MiB per
/// round trip (80 MB/s at 100 ms): the same as one source may have in flight anyway (the
/// scheduler's `max_in_flight` blocks), so more sources add speed where sources are the limit,
/// not memory. On loopback or a LAN a fraction of it keeps every source busy.
pub const MAX_BUFFERS: usize = 32;
/// A request that takes longer than this counts as failed (the source stalls).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// A peer that has the file, as the directory's Locate gave it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceAddr {
    pub peer: PeerId,
    pub addr: SocketAddr,
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
    /// Verified bytes credited to each source.
    pub per_source: Vec<(PeerId, u64)>,
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

/// The download's progress as bars and status show it.
fn progress_of(
    spec: &DownloadSpec,
    sched: &Scheduler<PeerId>,
    active_sources: usize,
    fetched_bytes: u64,
    waiting_until: Option<Instant>,
) -> DownloadProgress {
    DownloadProgress {
        size: spec.size,
        verified_bytes: sched.progress().verified_bytes,
        active_sources,
        fetched_bytes,
        waiting_until,
    }
}

/// A disk error about `path`.
fn disk(path: &Path) -> impl FnOnce(std::io::Error) -> FetchError + '_ {
    move |source| FetchError::Disk { path: path.to_owned(), source }
}

impl FetchError {
    /// True when the disk is full (the user can free space, or drop the partial download).
    pub fn is_disk_full(&self) -> bool {
        matches!(self, FetchError::Disk { source, .. } if source.kind() == std::io::ErrorKind::StorageFull)
    }
}

/// Why an outboard request did not bring an outboard.
enum OutboardFailure {
    /// The source is out of upload slots for now: ask again after this long.
    Busy(Duration),
    Failed(String),
}

/// The sources a download is not talking to yet: who it knows of, how many it is dialling,
/// and the lookups for more, paced and bounded by its [`SourceWait`].
struct Finder {
    endpoint: quinn::Endpoint,
    identity: Option<Arc<crate::tls::ClientAuth>>,
    tx: mpsc::Sender<Event>,
    known: Vec<SourceAddr>,
    connecting: usize,
    tried: usize,
    relocate: Option<Relocate>,
    wait: SourceWait,
}

impl Finder {
    fn connect(&mut self, s: SourceAddr) {
        self.known.push(s);
        self.connecting += 1;
        self.tried += 1;
        let (endpoint, tx, identity) = (self.endpoint.clone(), self.tx.clone(), self.identity.clone());
        tokio::spawn(async move {
            let ev = match crate::tls::connect_as(&endpoint, s.addr, s.peer, identity.as_deref()).await {
                Ok(c) => Event::Connected(s.peer, c),
                Err(e) => {
                    tracing::info!(peer = %s.peer, addr = %s.addr, error = %e, "cannot connect to source");
                    Event::ConnectFailed(s.peer)
                }
            };
            let _ = tx.send(ev).await;
        });
    }

    /// A dial ended (either way).
    fn dialled(&mut self) {
        self.connecting = self.connecting.saturating_sub(1);
    }

    /// Forgets `peer`, so a later lookup that returns it dials it again.
    fn forget(&mut self, peer: PeerId) {
        self.known.retain(|s| s.peer != peer);
    }

    /// Asks for more sources if a lookup is due, and dials those not `skip`ped or known.
    async fn look(&mut self, now: Instant, skip: impl Fn(&PeerId) -> bool) {
        if self.relocate.is_none() || !self.wait.lookup_due(now) {
            return;
        }
        let Some(find) = self.relocate.as_mut() else { return };
        for s in find().await {
            if !skip(&s.peer) && !self.known.contains(&s) {
                self.connect(s);
            }
        }
    }

    /// The waiting verdict; a download that cannot look for sources (no `relocate`) gives up
    /// as soon as it has none.
    fn verdict(&mut self, now: Instant, has_sources: bool) -> Verdict {
        match self.relocate {
            None if !has_sources => Verdict::GiveUp,
            _ => self.wait.update(now, has_sources),
        }
    }

    fn no_sources(&self, waited: Duration) -> FetchError {
        FetchError::NoSources { tried: self.tried, waited }
    }
}

enum Event {
    Connected(PeerId, quinn::Connection),
    ConnectFailed(PeerId),
    /// An outboard request's outcome: the file it was written to, or why it failed.
    Outboard(PeerId, Result<(std::fs::File, PathBuf), OutboardFailure>),
    /// A request's outcome; an OK body comes with its verdict against the outboard.
    Block {
        peer: PeerId,
        block: Block,
        result: Result<(Buffer, Result<(), VerifyError>), RequestError>,
        elapsed: Duration,
    },
}

/// Downloads `spec` from `sources` (and whatever `relocate` finds later).
pub async fn download(
    endpoint: &quinn::Endpoint,
    spec: DownloadSpec,
    sources: Vec<SourceAddr>,
    relocate: Option<Relocate>,
    progress: Option<watch::Sender<DownloadProgress>>,
) -> Result<DownloadOutcome, FetchError> {
    let mut part = {
        let blocks = spec.size.div_ceil(BLOCK_SIZE).max(1) as usize;
        PartFile::open(&spec.work_dir, &spec.id, spec.size, blocks).map_err(disk(&spec.work_dir))?
    };
    // For the debug log's timeline of the download's phases.
    let began = Instant::now();
    let (tx, mut rx) = mpsc::channel::<Event>(256);
    let mut conns: HashMap<PeerId, quinn::Connection> = HashMap::new();
    let mut finder = Finder {
        endpoint: endpoint.clone(),
        identity: spec.identity.clone(),
        tx: tx.clone(),
        known: Vec::new(),
        connecting: 0,
        tried: 0,
        relocate,
        wait: SourceWait::new(spec.wait_for_sources, RELOCATE_EVERY),
    };
    for s in sources.into_iter().take(MAX_SOURCES) {
        finder.connect(s);
    }
    let report = |progress_now: DownloadProgress| {
        if let Some(p) = &progress {
            let _ = p.send(progress_now);
        }
    };
    let mut banned = Vec::new();

    // The outboard: from a previous run, or from the first source that sends a valid one.
    let saved = part
        .saved_outboard()
        .and_then(|(file, len)| Outboard::from_file(&spec.id, spec.size, file, len).ok());
    let outboard = match saved {
        Some(outboard) => outboard,
        None => {
            let mut race = Race { spec: &spec, part: &part, conns: &mut conns, banned: &mut banned };
            race.run(&mut finder, &mut rx, &report).await?
        }
    };
    tracing::debug!(after = ?began.elapsed(), "outboard ready");
    let outboard = Arc::new(outboard);

    // Resume: re-check what a previous run marked, keep what passes.
    let mut kept = Vec::new();
    for block in part.marked_blocks() {
        let range = block_range(block, spec.size);
        let mut buf = vec![0u8; (range.end - range.start) as usize];
        if part.read_at(range.start, &mut buf).is_ok() && outboard.check_block(range, &buf).is_ok() {
            kept.push(block);
        } else {
            part.unmark(block).map_err(disk(part.marks_path()))?;
        }
    }
    let mut sched = Scheduler::new(spec.size, BLOCK_SIZE, kept)?;
    for peer in conns.keys() {
        sched.add_source(*peer);
    }

    let buffers = BufferPool::new(MAX_BUFFERS);
    let mut in_flight: HashMap<(PeerId, Block), AbortHandle> = HashMap::new();
    let mut fetched_bytes = 0u64;
    let mut per_source: HashMap<PeerId, u64> = HashMap::new();
    let mut waiting_until: Option<Instant> = None;

    while !sched.is_complete() {
        let now = Instant::now();
        // With nobody else left, a silent source is still the best hope: its requests time
        // out one by one (REQUEST_TIMEOUT) instead. Answers already waiting in the queue are
        // not silence: after this task was starved (a loaded machine, a paused process) every
        // source looks silent until the queue is read, so stalls are judged only once it is
        // empty. A wrong call is not fatal either: a dropped source is forgotten, and a later
        // lookup connects to it again.
        if rx.is_empty() {
            for peer in sched.stalled_sources(now) {
                if sched.usable_sources() > 1 {
                    tracing::info!(peer = %peer, "source silent with requests in flight; dropping it");
                    sched.remove_source(peer);
                    drop_source(&mut conns, &mut in_flight, peer);
                    finder.forget(peer);
                }
            }
        }
        for (peer, block) in sched.next_requests(now) {
            let Some(conn) = conns.get(&peer).cloned() else {
                sched.remove_source(peer);
                continue;
            };
            let range = block_range(block, spec.size);
            let (tx, buffers, outboard, id) = (tx.clone(), buffers.clone(), outboard.clone(), spec.id);
            let task = tokio::spawn(async move {
                let Some(mut buffer) = buffers.take().await else { return };
                let started = Instant::now();
                let req = Request::Range { id, offset: range.start, len: range.end - range.start };
                let fetched = tokio::time::timeout(REQUEST_TIMEOUT, request(&conn, &req, &mut buffer.bytes));
                let result = match fetched.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err(RequestError::Stream("request timed out".into())),
                };
                let elapsed = started.elapsed();
                let result = result.map(|()| {
                    let verdict = outboard.check_block(range, &buffer.bytes);
                    (buffer, verdict)
                });
                let _ = tx.send(Event::Block { peer, block, result, elapsed }).await;
            });
            in_flight.insert((peer, block), task.abort_handle());
        }

        // Too few sources left: ask for more (at most every RELOCATE_EVERY).
        if finder.connecting == 0 && sched.needs_more_sources() {
            finder.look(now, |p| conns.contains_key(p) || banned.contains(p)).await;
        }
        // Retired and banned sources get no more requests: nobody usable is as good as nobody
        // connected. Then the download waits, visibly, up to its bound.
        let usable = !conns.is_empty() && sched.usable_sources() > 0;
        let has_sources = usable || !in_flight.is_empty() || finder.connecting > 0;
        let verdict = finder.verdict(now, has_sources);
        let until = match verdict {
            Verdict::GiveUp => return Err(finder.no_sources(spec.wait_for_sources)),
            Verdict::Waiting { gives_up_at } => Some(gives_up_at),
            Verdict::Fetching => None,
        };
        if until != waiting_until {
            waiting_until = until;
            if until.is_some() {
                tracing::info!(id = %spec.id, "no source online; waiting for one");
            }
            report(progress_of(&spec, &sched, conns.len(), fetched_bytes, waiting_until));
        }

        let mut wake = sched.poll_timeout().unwrap_or_else(|| Instant::now() + Duration::from_millis(500));
        if waiting_until.is_some() {
            wake = wake.min(finder.wait.next_wake(Instant::now()));
        }
        let ev = tokio::select! {
            ev = rx.recv() => ev,
            _ = tokio::time::sleep_until(wake.into()) => continue,
        };
        let Some(ev) = ev else { break };
        match ev {
            Event::Connected(peer, conn) => {
                finder.dialled();
                if sched.add_source(peer) {
                    conns.insert(peer, conn);
                }
            }
            Event::ConnectFailed(peer) => {
                finder.dialled();
                // Forgotten, so that a later lookup dials it again (it may come back).
                finder.forget(peer);
                tracing::debug!(peer = %peer, "source unreachable; others carry on");
            }
            // A losing copy of the outboard that was on its way when the race ended.
            Event::Outboard(..) => {}
            Event::Block { peer, block, result, elapsed } => {
                in_flight.remove(&(peer, block));
                if banned.contains(&peer) {
                    // Already dropped for bad data; an answer that was on its way is ignored.
                    continue;
                }
                match result {
                    Ok((buffer, verdict)) => {
                        let bytes = &buffer.bytes;
                        fetched_bytes += bytes.len() as u64;
                        let range = block_range(block, spec.size);
                        match verdict {
                            Ok(()) => {
                                if let Verified::Accepted { cancel } =
                                    sched.block_verified(peer, block, bytes.len() as u64, elapsed)
                                {
                                    part.write_block(block, range.start, bytes)
                                        .map_err(disk(part.part_path()))?;
                                    *per_source.entry(peer).or_default() += bytes.len() as u64;
                                    for loser in cancel {
                                        if let Some(h) = in_flight.remove(&(loser, block)) {
                                            h.abort();
                                        }
                                    }
                                }
                            }
                            Err(VerifyError::Unreadable(e)) => {
                                return Err(FetchError::Disk {
                                    path: part.outboard_path().to_owned(),
                                    source: std::io::Error::other(e),
                                });
                            }
                            Err(VerifyError::BadOutboard) => {
                                // Our outboard was checked block by block: cannot happen after the
                                // first success, and before it the outboard's sender is unknown here.
                                part.forget_outboard();
                                return Err(FetchError::NoOutboard);
                            }
                            Err(e) => {
                                tracing::warn!(peer = %peer, block, error = %e, "source sent bad data; dropping it");
                                sched.block_failed_verification(peer, block);
                                banned.push(peer);
                                drop_source(&mut conns, &mut in_flight, peer);
                            }
                        }
                    }
                    Err(e) if e.is_connection_lost() => {
                        tracing::info!(peer = %peer, error = %e, "source lost");
                        sched.remove_source(peer);
                        drop_source(&mut conns, &mut in_flight, peer);
                        finder.forget(peer);
                    }
                    Err(RequestError::Refused(ResponseStatus::Busy { estimated_wait, .. })) => {
                        tracing::trace!(peer = %peer, block, ?estimated_wait, "source busy");
                        sched.request_busy(peer, block, estimated_wait);
                    }
                    Err(e) => {
                        tracing::debug!(peer = %peer, block, error = %e, "request failed");
                        sched.request_failed(peer, block);
                    }
                }
            }
        }
        report(progress_of(&spec, &sched, conns.len(), fetched_bytes, waiting_until));
    }
    tracing::debug!(after = ?began.elapsed(), "every block verified");
    for (_, h) in in_flight.drain() {
        h.abort();
    }
    // The block buffers are not needed any more; freeing them before the store's bookkeeping
    // keeps that off the download's memory peak.
    buffers.release_free();
    drop(outboard);
    let name = safe_file_name(&spec.name, &format!("{}.download", &spec.id.to_hex()[..16]));
    std::fs::create_dir_all(&spec.out_dir).map_err(disk(&spec.out_dir))?;
    let dest = unused_path(&spec.out_dir, &name);
    let outboard = part.finish(&dest).map_err(disk(&dest))?;
    tracing::debug!(after = ?began.elapsed(), "file complete on disk");
    for conn in conns.values() {
        crate::tls::log_transport_stats(conn, "source connection at the end of the download");
        conn.close(0u32.into(), b"done");
    }
    Ok(DownloadOutcome {
        path: dest,
        fetched_bytes,
        per_source: per_source.into_iter().collect(),
        banned,
        outboard,
    })
}

fn drop_source(
    conns: &mut HashMap<PeerId, quinn::Connection>,
    in_flight: &mut HashMap<(PeerId, Block), AbortHandle>,
    peer: PeerId,
) {
    if let Some(conn) = conns.remove(&peer) {
        conn.close(1u32.into(), b"dropped");
    }
    in_flight.retain(|(p, _), h| {
        if *p == peer {
            h.abort();
        }
        *p != peer
    });
}

fn block_range(block: Block, size: u64) -> std::ops::Range<u64> {
    let start = u64::from(block) * BLOCK_SIZE;
    start..(start + BLOCK_SIZE).min(size)
}

/// The outboard race: every source that connects is asked for the outboard at once, until one
/// sends a valid copy (kept as the download's outboard). They race, so a slow source that
/// happens to connect first does not hold up the start; an outboard is 0.4 % of the file, so
/// the losers' bytes cost little. Sources that connect meanwhile are added to `conns`; one that
/// sends a bad outboard is `banned`. A BUSY source is asked again after its wait; with nobody to
/// ask, the race keeps looking for sources, up to the download's bound. However it ends, the
/// other requests are aborted and their copies removed (see [`OutboardRace`]).
struct Race<'a> {
    spec: &'a DownloadSpec,
    part: &'a PartFile,
    conns: &'a mut HashMap<PeerId, quinn::Connection>,
    banned: &'a mut Vec<PeerId>,
}

impl Race<'_> {
    async fn run(
        &mut self,
        finder: &mut Finder,
        rx: &mut mpsc::Receiver<Event>,
        report: &impl Fn(DownloadProgress),
    ) -> Result<Outboard, FetchError> {
        let mut race = OutboardRace { part: self.part, requests: Vec::new() };
        let mut fetching = 0usize;
        // BUSY sources and when to ask them again.
        let mut busy: Vec<(Instant, PeerId)> = Vec::new();
        let mut bad_outboards = 0usize;
        let mut waiting_until = None;
        loop {
            let now = Instant::now();
            for peer in take_due(&mut busy, now) {
                if let Some(conn) = self.conns.get(&peer).cloned() {
                    self.ask(&mut race, finder, peer, conn)?;
                    fetching += 1;
                }
            }
            if finder.connecting == 0 && fetching == 0 && busy.is_empty() {
                let (conns, banned) = (&*self.conns, &*self.banned);
                finder.look(now, |p| conns.contains_key(p) || banned.contains(p)).await;
            }
            let has_sources = finder.connecting > 0 || fetching > 0 || !busy.is_empty();
            let until = match finder.verdict(now, has_sources) {
                Verdict::GiveUp if bad_outboards > 0 => return Err(FetchError::NoOutboard),
                Verdict::GiveUp => return Err(finder.no_sources(self.spec.wait_for_sources)),
                Verdict::Waiting { gives_up_at } => Some(gives_up_at),
                Verdict::Fetching => None,
            };
            if until != waiting_until {
                waiting_until = until;
                if until.is_some() {
                    tracing::info!(id = %self.spec.id, "no source online; waiting for one");
                }
                report(DownloadProgress {
                    size: self.spec.size,
                    waiting_until,
                    ..DownloadProgress::default()
                });
            }
            let mut wake = finder.wait.next_wake(now);
            if let Some(first) = busy.iter().map(|(at, _)| *at).min() {
                wake = wake.min(first);
            }
            let ev = tokio::select! {
                ev = rx.recv() => ev,
                _ = tokio::time::sleep_until(wake.into()) => continue,
            };
            // This function holds a sender (in `finder`): the channel cannot close.
            let Some(ev) = ev else { return Err(FetchError::NoOutboard) };
            match ev {
                Event::Connected(peer, conn) => {
                    finder.dialled();
                    self.ask(&mut race, finder, peer, conn.clone())?;
                    fetching += 1;
                    self.conns.insert(peer, conn);
                }
                Event::ConnectFailed(peer) => {
                    finder.dialled();
                    finder.forget(peer);
                }
                Event::Outboard(peer, result) => {
                    fetching = fetching.saturating_sub(1);
                    match result {
                        Ok((file, path)) => {
                            let len = file.metadata().map_err(disk(&path))?.len();
                            match Outboard::from_file(&self.spec.id, self.spec.size, file, len) {
                                Ok(outboard) => {
                                    self.part
                                        .keep_outboard(&path)
                                        .map_err(disk(self.part.outboard_path()))?;
                                    return Ok(outboard);
                                }
                                Err(e) => {
                                    tracing::warn!(peer = %peer, error = %e, "bad outboard; dropping the source");
                                    bad_outboards += 1;
                                    self.banned.push(peer);
                                    self.drop_source(finder, peer);
                                }
                            }
                        }
                        Err(OutboardFailure::Busy(wait)) => {
                            tracing::debug!(peer = %peer, ?wait, "source busy; asking for the outboard again later");
                            busy.push((Instant::now() + busy_retry_after(wait), peer));
                        }
                        Err(OutboardFailure::Failed(e)) => {
                            tracing::info!(peer = %peer, error = %e, "outboard request failed");
                            // Forgotten, not banned: a later lookup may bring it back.
                            self.drop_source(finder, peer);
                        }
                    }
                }
                // No block was asked for yet.
                Event::Block { .. } => {}
            }
        }
    }

    /// Sends `peer` an outboard request, its answer going to a fresh copy file.
    fn ask(
        &self,
        race: &mut OutboardRace<'_>,
        finder: &Finder,
        peer: PeerId,
        conn: quinn::Connection,
    ) -> Result<(), FetchError> {
        let (file, path) =
            self.part.new_outboard(race.requests.len()).map_err(disk(self.part.outboard_path()))?;
        let (tx, id, size) = (finder.tx.clone(), self.spec.id, self.spec.size);
        let task = tokio::spawn(async move {
            let result = match request(&conn, &Request::Outboard(id), &mut FileBody::new(&file)).await {
                Ok(h) if h.file_size == size => Ok((file, path)),
                Ok(h) => {
                    Err(OutboardFailure::Failed(format!("source reports another size: {}", h.file_size)))
                }
                Err(RequestError::Refused(ResponseStatus::Busy { estimated_wait, .. })) => {
                    Err(OutboardFailure::Busy(estimated_wait))
                }
                Err(e) => Err(OutboardFailure::Failed(e.to_string())),
            };
            let _ = tx.send(Event::Outboard(peer, result)).await;
        });
        race.requests.push(task.abort_handle());
        Ok(())
    }

    fn drop_source(&mut self, finder: &mut Finder, peer: PeerId) {
        if let Some(conn) = self.conns.remove(&peer) {
            conn.close(1u32.into(), b"dropped");
        }
        finder.forget(peer);
    }
}

/// Removes and returns the peers whose retry time has come.
fn take_due(busy: &mut Vec<(Instant, PeerId)>, now: Instant) -> Vec<PeerId> {
    let due = busy.iter().filter(|(at, _)| *at <= now).map(|(_, p)| *p).collect();
    busy.retain(|(at, _)| *at > now);
    due
}

/// The outboard requests of a race. Dropped on every way out of [`Race::run`]
/// (a winner, no source left, a disk error, the download being cancelled): it aborts the
/// requests still running and removes their copies (the winner's was renamed away already).
struct OutboardRace<'a> {
    part: &'a PartFile,
    requests: Vec<AbortHandle>,
}

impl Drop for OutboardRace<'_> {
    fn drop(&mut self) {
        for request in &self.requests {
            request.abort();
        }
        self.part.discard_outboard_copies(self.requests.len());
    }
}

/// Where downloads keep their state by default, inside a node's data dir.
pub fn default_work_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("partial")
}
