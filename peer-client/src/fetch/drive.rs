//! The I/O half of a download: does each [`Action`] a `Transfer` asks for (dial, request,
//! verify, write, look up) and turns what comes back into its [`Event`]s. No decision is made
//! here; what to do about an outcome is the transfer's.
//!
//! Every task this spawns reports on one channel ([`Io`]). Request tasks are aborted when the
//! transfer lets their source go, cancels a duplicate, or the download ends in any way (the
//! driver's `Drop`), which frees the block buffers they held. Disk work runs on the blocking
//! pool; a blocking task drops its handle on the `.part` file before it reports, so once the
//! transfer finishes (every write reported) the file is the driver's alone again.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use quaver_core::transfer::{Action, BlockResult, DropReason, Event, Failure, OutboardResult};
use quaver_shared::{ContentId, PeerId};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use super::buffers::{Buffer, BufferPool};
use super::client::{FileBody, RequestError, request};
use super::download::{DownloadSpec, FetchError, MAX_BUFFERS, Relocate, Route, SourceAddr, disk};
use super::partfile::PartFile;
use super::scheduler::Block;
use super::verify::{Outboard, VerifyError};
use crate::wire::{Request, ResponseStatus};

/// A request that takes longer than this counts as failed (the source stalls).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// What a spawned task reports.
pub(super) enum Io {
    /// Connected, after this long (introduction included).
    Connected(PeerId, quinn::Connection, Duration),
    ConnectFailed(PeerId),
    Located(Vec<SourceAddr>),
    /// An outboard request's outcome: the file it was written to, or why it failed.
    Outboard(PeerId, Result<(std::fs::File, PathBuf), OutboardFailure>),
    /// The marked blocks that verified again.
    Checked(Result<Vec<Block>, FetchError>),
    /// A request's outcome; an OK body comes with its verdict against the outboard.
    Block {
        peer: PeerId,
        block: Block,
        result: Result<(Buffer, Result<(), VerifyError>), RequestError>,
        elapsed: Duration,
    },
    Written(Result<Block, FetchError>),
}

/// Why an outboard request did not bring an outboard.
pub(super) enum OutboardFailure {
    /// The source is out of upload slots for now: ask again after this long.
    Busy(Duration),
    Failed(String),
}

pub(super) struct Driver {
    endpoint: quinn::Endpoint,
    identity: Option<Arc<crate::tls::ClientAuth>>,
    id: ContentId,
    size: u64,
    tx: mpsc::Sender<Io>,
    relocate: Option<Relocate>,
    addrs: HashMap<PeerId, SocketAddr>,
    /// How each source is reached (absent: directly).
    paths: HashMap<PeerId, Route>,
    /// How long each source's last connection took to open.
    connect_times: HashMap<PeerId, Duration>,
    rendezvous: Option<tokio::sync::watch::Receiver<Option<quinn::Connection>>>,
    conns: HashMap<PeerId, quinn::Connection>,
    requests: HashMap<(PeerId, Block), AbortHandle>,
    part: Arc<Mutex<PartFile>>,
    outboard: Option<Arc<Outboard>>,
    race: Option<OutboardRace>,
    buffers: Arc<BufferPool>,
    /// Verified blocks that just arrived, until the transfer says whether to write them.
    arrived: HashMap<(PeerId, Block), Buffer>,
}

fn lock(part: &Mutex<PartFile>) -> MutexGuard<'_, PartFile> {
    // A panic while holding it cannot leave the part file half-changed in memory: its state is
    // the bytes and marks on disk, which the next run re-checks.
    part.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Driver {
    pub(super) fn new(
        endpoint: &quinn::Endpoint,
        spec: &DownloadSpec,
        tx: mpsc::Sender<Io>,
        part: PartFile,
        saved: Option<Outboard>,
        relocate: Option<Relocate>,
    ) -> Self {
        let part = Arc::new(Mutex::new(part));
        let race = saved.is_none().then(|| OutboardRace::new(&part));
        Self {
            endpoint: endpoint.clone(),
            identity: spec.identity.clone(),
            id: spec.id,
            size: spec.size,
            tx,
            relocate,
            addrs: HashMap::new(),
            paths: HashMap::new(),
            connect_times: HashMap::new(),
            rendezvous: spec.rendezvous.clone(),
            conns: HashMap::new(),
            requests: HashMap::new(),
            part,
            outboard: saved.map(Arc::new),
            race,
            buffers: BufferPool::new(MAX_BUFFERS),
            arrived: HashMap::new(),
        }
    }

    /// Where each source can be reached (the latest address a lookup gave wins).
    pub(super) fn learn(&mut self, sources: &[SourceAddr]) {
        for s in sources {
            self.addrs.insert(s.peer, s.addr);
            self.paths.insert(s.peer, s.path);
        }
    }

    pub(super) fn execute(&mut self, action: Action<PeerId>) -> Result<(), FetchError> {
        match action {
            Action::Connect { source, via } => self.connect(source, via),
            Action::Disconnect { source, why } => self.disconnect(source, why),
            Action::Locate => {
                if let Some(find) = self.relocate.as_mut() {
                    let (lookup, tx) = (find(), self.tx.clone());
                    tokio::spawn(async move {
                        let _ = tx.send(Io::Located(lookup.await)).await;
                    });
                }
            }
            Action::RequestOutboard(peer) => self.ask_outboard(peer)?,
            Action::UseOutboard(peer) => {
                // The race is dropped (its other copies removed) only after the winner's copy
                // was renamed away.
                let mut race = self.race.take();
                if let Some((outboard, path)) = race.as_mut().and_then(|r| r.valid.remove(&peer)) {
                    let part = lock(&self.part);
                    part.keep_outboard(&path).map_err(disk(part.outboard_path()))?;
                    self.outboard = Some(Arc::new(outboard));
                }
                drop(race);
            }
            Action::CheckMarked(blocks) => self.check_marked(blocks),
            Action::Request { from, block, range } => self.request(from, block, range),
            Action::Cancel { from, block } => {
                if let Some(task) = self.requests.remove(&(from, block)) {
                    task.abort();
                }
            }
            Action::Write { from, block } => self.write(from, block),
            // The download's own loop ends on these.
            Action::Finish | Action::Fail(_) => {}
        }
        Ok(())
    }

    /// What an outcome means for the transfer (`None`: nothing it needs to hear).
    pub(super) fn event_of(&mut self, io: Io) -> Result<Option<Event<PeerId>>, FetchError> {
        Ok(Some(match io {
            Io::Connected(peer, conn, after) => {
                self.conns.insert(peer, conn);
                self.connect_times.insert(peer, after);
                Event::Connected(peer)
            }
            Io::ConnectFailed(peer) => Event::ConnectFailed(peer),
            Io::Located(found) => {
                self.learn(&found);
                Event::Located(found.into_iter().map(|s| (s.peer, s.path)).collect())
            }
            Io::Outboard(peer, result) => {
                Event::OutboardArrived { from: peer, result: self.outboard_result(peer, result)? }
            }
            Io::Checked(kept) => Event::MarkedChecked { kept: kept? },
            Io::Written(block) => Event::Written(block?),
            Io::Block { peer, block, result, elapsed } => {
                if self.requests.remove(&(peer, block)).is_none() {
                    // Aborted after it had already answered: the transfer forgot it.
                    return Ok(None);
                }
                let (received, result) = match result {
                    Ok((buffer, verdict)) => {
                        let received = buffer.bytes.len() as u64;
                        let result = match verdict {
                            Ok(()) => {
                                self.arrived.insert((peer, block), buffer);
                                BlockResult::Verified
                            }
                            Err(VerifyError::Unreadable(e)) => {
                                let path = lock(&self.part).outboard_path().to_owned();
                                return Err(FetchError::Disk { path, source: std::io::Error::other(e) });
                            }
                            Err(VerifyError::BadOutboard) => BlockResult::OutboardBroken,
                            Err(e) => {
                                tracing::warn!(peer = %peer, block, error = %e, "source sent bad data");
                                BlockResult::Corrupt
                            }
                        };
                        (received, result)
                    }
                    Err(e) if e.is_connection_lost() => {
                        tracing::info!(peer = %peer, error = %e, "source lost");
                        (0, BlockResult::ConnectionLost)
                    }
                    Err(RequestError::Refused(ResponseStatus::Busy { estimated_wait, .. })) => {
                        tracing::trace!(peer = %peer, block, ?estimated_wait, "source busy");
                        (0, BlockResult::Busy(estimated_wait))
                    }
                    Err(e) => {
                        tracing::debug!(peer = %peer, block, error = %e, "request failed");
                        (0, BlockResult::Failed)
                    }
                };
                Event::BlockDone { from: peer, block, received, elapsed, result }
            }
        }))
    }

    /// Bytes of answers the transfer did not ask to write go back to the pool.
    pub(super) fn drop_unwritten(&mut self) {
        self.arrived.clear();
    }

    /// The download failed: the error to report (an outboard that broke is forgotten, so the
    /// next run fetches a fresh one).
    pub(super) fn failed(&mut self, failure: Failure) -> FetchError {
        if failure == Failure::OutboardBroken {
            lock(&self.part).forget_outboard();
        }
        failure.into()
    }

    /// How each source was reached (absent: directly).
    pub(super) fn paths(&self) -> &HashMap<PeerId, Route> {
        &self.paths
    }

    /// How long each source's last connection took to open.
    pub(super) fn connect_times(&self) -> &HashMap<PeerId, Duration> {
        &self.connect_times
    }

    /// Every block is written: closes the connections and hands back the part file.
    pub(super) fn close(mut self) -> Result<PartFile, FetchError> {
        for (_, task) in self.requests.drain() {
            task.abort();
        }
        // The block buffers are not needed any more; freeing them before the store's
        // bookkeeping keeps that off the download's memory peak.
        self.arrived.clear();
        self.buffers.release_free();
        self.outboard = None;
        self.race = None;
        for conn in self.conns.values() {
            crate::tls::log_transport_stats(conn, "source connection at the end of the download");
            conn.close(0u32.into(), b"done");
        }
        self.conns.clear();
        let part = Arc::clone(&self.part);
        drop(self);
        match Arc::try_unwrap(part) {
            Ok(part) => Ok(part.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner())),
            // Every write was reported, and each blocking task let go of the file first.
            Err(_) => Err(FetchError::Disk {
                path: PathBuf::from("(part file)"),
                source: std::io::Error::other("still in use by a write at the end of the download"),
            }),
        }
    }

    fn connect(&mut self, peer: PeerId, path: Route) {
        let Some(&addr) = self.addrs.get(&peer) else {
            let _ = self.tx.try_send(Io::ConnectFailed(peer));
            return;
        };
        let (endpoint, tx, identity) = (self.endpoint.clone(), self.tx.clone(), self.identity.clone());
        // A source behind NAT: the directory tells it to dial us while we dial it, or to open
        // its relayed address to us.
        let channel = match path {
            Route::Direct => None,
            Route::Punched | Route::Relayed => {
                Some(self.rendezvous.as_ref().and_then(|r| r.borrow().clone()))
            }
        };
        tokio::spawn(async move {
            let started = Instant::now();
            let addr = match channel {
                None => Ok(addr),
                Some(None) => Err("no rendezvous connection to ask for an introduction".to_owned()),
                Some(Some(channel)) => {
                    let relay = path == Route::Relayed;
                    crate::session::rendezvous::introduce(&channel, peer, relay).await
                }
            };
            let path = path.as_str();
            let connected = match addr {
                Ok(addr) => crate::tls::connect_as(&endpoint, addr, peer, identity.as_deref())
                    .await
                    .map_err(|e| format!("{addr}: {e}")),
                Err(e) => Err(format!("introduction refused: {e}")),
            };
            let io = match connected {
                Ok(c) => {
                    tracing::info!(peer = %peer, path, after = ?started.elapsed(), "connected to source");
                    Io::Connected(peer, c, started.elapsed())
                }
                Err(e) => {
                    tracing::info!(peer = %peer, path, error = %e, "cannot connect to source");
                    Io::ConnectFailed(peer)
                }
            };
            let _ = tx.send(io).await;
        });
    }

    fn disconnect(&mut self, peer: PeerId, why: DropReason) {
        match why {
            DropReason::Stalled => {
                tracing::info!(peer = %peer, "source silent with requests in flight; dropping it")
            }
            DropReason::BadData => tracing::warn!(peer = %peer, "source sent bad data; dropped and banned"),
            DropReason::BadOutboard => tracing::warn!(peer = %peer, "bad outboard; dropped and banned"),
            DropReason::OutboardFailed => {
                tracing::info!(peer = %peer, "outboard request failed; dropping the source")
            }
            DropReason::Lost | DropReason::NotNeeded => tracing::debug!(peer = %peer, ?why, "source let go"),
        }
        if let Some(conn) = self.conns.remove(&peer) {
            conn.close(1u32.into(), b"dropped");
        }
        self.requests.retain(|(p, _), task| {
            if *p == peer {
                task.abort();
            }
            *p != peer
        });
    }

    /// Sends `peer` an outboard request, its answer going to a fresh copy file.
    fn ask_outboard(&mut self, peer: PeerId) -> Result<(), FetchError> {
        let (Some(race), Some(conn)) = (self.race.as_mut(), self.conns.get(&peer).cloned()) else {
            let _ =
                self.tx.try_send(Io::Outboard(peer, Err(OutboardFailure::Failed("not connected".into()))));
            return Ok(());
        };
        let (file, path) = {
            let part = lock(&self.part);
            part.new_outboard(race.copies).map_err(disk(part.outboard_path()))?
        };
        race.copies += 1;
        let (tx, id, size) = (self.tx.clone(), self.id, self.size);
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
            let _ = tx.send(Io::Outboard(peer, result)).await;
        });
        race.tasks.push(task.abort_handle());
        Ok(())
    }

    fn outboard_result(
        &mut self,
        peer: PeerId,
        result: Result<(std::fs::File, PathBuf), OutboardFailure>,
    ) -> Result<OutboardResult, FetchError> {
        Ok(match result {
            Ok((file, path)) => {
                let len = file.metadata().map_err(disk(&path))?.len();
                match (Outboard::from_file(&self.id, self.size, file, len), self.race.as_mut()) {
                    (Ok(outboard), Some(race)) => {
                        race.valid.insert(peer, (outboard, path));
                        OutboardResult::Valid
                    }
                    // The race is over: the transfer ignores this copy, which is removed.
                    (Ok(_), None) => OutboardResult::Failed,
                    (Err(e), _) => {
                        tracing::warn!(peer = %peer, error = %e, "bad outboard");
                        OutboardResult::Invalid
                    }
                }
            }
            Err(OutboardFailure::Busy(wait)) => {
                tracing::debug!(peer = %peer, ?wait, "source busy; asking for the outboard again later");
                OutboardResult::Busy(wait)
            }
            Err(OutboardFailure::Failed(e)) => {
                tracing::info!(peer = %peer, error = %e, "outboard request failed");
                OutboardResult::Failed
            }
        })
    }

    /// Re-checks a previous run's marked blocks on the blocking pool; unmarks those that fail.
    fn check_marked(&mut self, blocks: Vec<Block>) {
        let (part, tx, size) = (Arc::clone(&self.part), self.tx.clone(), self.size);
        let Some(outboard) = self.outboard.clone() else {
            let _ = self.tx.try_send(Io::Checked(Ok(Vec::new())));
            return;
        };
        tokio::task::spawn_blocking(move || {
            let mut kept = Vec::new();
            let mut failed = None;
            for block in blocks {
                let range = block_range(block, size);
                let mut buf = vec![0u8; (range.end - range.start) as usize];
                let mut part = lock(&part);
                if part.read_at(range.start, &mut buf).is_ok() && outboard.check_block(range, &buf).is_ok() {
                    kept.push(block);
                } else if let Err(e) = part.unmark(block) {
                    failed = Some(disk(part.marks_path())(e));
                    break;
                }
            }
            drop(part);
            let _ = tx.blocking_send(Io::Checked(failed.map_or(Ok(kept), Err)));
        });
    }

    fn request(&mut self, peer: PeerId, block: Block, range: std::ops::Range<u64>) {
        let (Some(conn), Some(outboard)) = (self.conns.get(&peer).cloned(), self.outboard.clone()) else {
            // Cannot happen (the transfer asks only connected sources, after the outboard);
            // reported as a failure all the same, so the transfer never waits for it.
            let result = Err(RequestError::Stream("no connection to this source".into()));
            self.requests.insert((peer, block), tokio::spawn(async {}).abort_handle());
            let _ = self.tx.try_send(Io::Block { peer, block, result, elapsed: Duration::ZERO });
            return;
        };
        let (tx, buffers, id) = (self.tx.clone(), self.buffers.clone(), self.id);
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
            let _ = tx.send(Io::Block { peer, block, result, elapsed }).await;
        });
        self.requests.insert((peer, block), task.abort_handle());
    }

    /// Writes a verified block on the blocking pool; its buffer goes back to the pool after.
    fn write(&mut self, peer: PeerId, block: Block) {
        let Some(buffer) = self.arrived.remove(&(peer, block)) else { return };
        let (part, tx, offset) =
            (Arc::clone(&self.part), self.tx.clone(), block_range(block, self.size).start);
        tokio::task::spawn_blocking(move || {
            let written = {
                let mut part = lock(&part);
                part.write_block(block, offset, &buffer.bytes).map(|()| block).map_err(disk(part.part_path()))
            };
            drop((part, buffer));
            let _ = tx.blocking_send(Io::Written(written));
        });
    }
}

impl Drop for Driver {
    /// However the download ends (finished, failed, cancelled by dropping its future), no
    /// request outlives it.
    fn drop(&mut self) {
        for (_, task) in self.requests.drain() {
            task.abort();
        }
    }
}

/// The outboard requests of a race. Dropped when the race is won (after the winner's copy was
/// renamed away) and on every way out of the download: it aborts the requests still running
/// and removes their copies.
struct OutboardRace {
    part: Arc<Mutex<PartFile>>,
    tasks: Vec<AbortHandle>,
    copies: usize,
    /// Copies that verified, until the transfer picks one.
    valid: HashMap<PeerId, (Outboard, PathBuf)>,
}

impl OutboardRace {
    fn new(part: &Arc<Mutex<PartFile>>) -> Self {
        Self { part: Arc::clone(part), tasks: Vec::new(), copies: 0, valid: HashMap::new() }
    }
}

impl Drop for OutboardRace {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        self.valid.clear();
        lock(&self.part).discard_outboard_copies(self.copies);
    }
}

fn block_range(block: Block, size: u64) -> std::ops::Range<u64> {
    let start = u64::from(block) * super::scheduler::BLOCK_SIZE;
    start..(start + super::scheduler::BLOCK_SIZE).min(size)
}
