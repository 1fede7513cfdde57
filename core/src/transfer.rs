//! One download's whole policy, sans-IO: events in, actions out, time as an argument.
//!
//! The [`Scheduler`] decides which block goes to which source; a `Transfer` decides everything
//! around it: which sources to dial and when to ask the directory for more, the outboard race,
//! the resume plan, when a silent source is dropped, who is banned, when the download waits for
//! sources and when it gives up, and when it is finished. The tokio driver in `quaver-peer`
//! (`fetch::download`) owns the sockets, files, buffers and timers, and does what the actions
//! say; it makes no decision of its own. That is quinn's split between `quinn-proto` and
//! `quinn`, and it is why every rule below is tested in virtual time (`transfer_tests`).
//!
//! # Driving it
//!
//! 1. [`Transfer::new`] with the file, the sources known at the start, whether an outboard from
//!    a previous run is on disk, and the blocks that run marked as verified.
//! 2. Loop: do every [`Transfer::poll_action`]; wait for an I/O outcome or for
//!    [`Transfer::poll_timeout`]; report what happened with [`Transfer::handle`], and send
//!    [`Event::Tick`] whenever no outcome is waiting to be reported (that is when silence can
//!    be judged: after the driver was starved, answers sitting in its queue are not silence).
//! 3. Stop at [`Action::Finish`] (every block verified and written) or [`Action::Fail`].
//!
//! # Phases
//!
//! - **Outboard.** Every source that connects is asked for the outboard at once: they race, so
//!   a slow source that happens to connect first does not hold up the start (an outboard is
//!   0.4 % of the file). The first valid copy wins ([`Action::UseOutboard`]); a source that
//!   sends an invalid one is banned; a BUSY source is asked again after its wait
//!   ([`busy_retry_after`]). Skipped when a previous run's outboard is on disk.
//! - **Resume.** Blocks a previous run marked come back from disk, so they are checked again
//!   against the outboard ([`Action::CheckMarked`]) before they count; only those that pass
//!   are never requested.
//! - **Fetching.** The scheduler's requests go out; a verified block is written once
//!   ([`Action::Write`]) and its duplicates cancelled; a source that sends bad data is banned
//!   for good; one that is lost, or silent with requests in flight while others remain, is
//!   dropped and *forgotten*, not banned, so a later lookup may bring it back (a live source
//!   that only looked silent). With fewer sources than the scheduler wants, the directory is
//!   asked again, at most every `relocate_every`.
//! - **Done** after [`Action::Finish`] (the last write reported) or [`Action::Fail`].
//!
//! # Routes
//!
//! Each source comes with the [`Route`] the directory gave for it (dial it, punch with an
//! introduction, or go through the relay), and [`Action::Connect`] says which to take. A
//! relayed source costs the relay's bandwidth and adds a hop: it is dialled only when the
//! others are not enough (fewer than `max_sources` of them), never ahead of one.
//!
//! With nobody to fetch from, in any phase, the download waits visibly
//! ([`TransferProgress::waiting_until`]) and keeps looking, for up to `wait_for_sources`
//! ([`SourceWait`]), then fails with [`Failure::NoSources`]. Only a connection stops that
//! clock: a dial under way holds off giving up until it ends, but sources that every lookup
//! lists and no dial reaches do not keep a download waiting for ever.

use crate::scheduler::{Block, Scheduler, SchedulerError, SourceKey, Verified};
use crate::waiting::{SourceWait, Verdict, busy_retry_after};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::Range;
use std::time::{Duration, Instant};

/// The longest a download goes without being polled: nothing is lost by looking twice a second.
const IDLE_TICK: Duration = Duration::from_millis(500);

/// What is downloaded, and the user's bounds.
#[derive(Clone, Debug)]
pub struct TransferConfig {
    pub size: u64,
    pub block_size: u64,
    /// Most sources dialled or connected at once.
    pub max_sources: usize,
    /// How long to keep looking while nobody can serve the file.
    pub wait_for_sources: Duration,
    /// Least time between two lookups.
    pub relocate_every: Duration,
    /// Whether the driver can look sources up at all; without, the download fails as soon as
    /// it has none.
    pub can_locate: bool,
}

/// How a source is reached, as the directory said.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Route {
    /// Dial its address (public, port-mapped, or on the same LAN).
    #[default]
    Direct,
    /// Ask the directory for an introduction, then dial while it dials back (hole punching).
    Punched,
    /// Ask the directory for a relayed introduction, then dial the relayed address it gives.
    Relayed,
}

impl Route {
    pub fn as_str(self) -> &'static str {
        match self {
            Route::Direct => "direct",
            Route::Punched => "punched",
            Route::Relayed => "relayed",
        }
    }
}

/// How an outboard request ended, as the driver saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutboardResult {
    /// It arrived and checks against the content id (the driver keeps the copy until told).
    Valid,
    /// It arrived and does not check: the sender is banned.
    Invalid,
    /// The source is out of upload slots: ask again after about this long.
    Busy(Duration),
    /// Anything else (a reset stream, a wrong size, a lost connection).
    Failed,
}

/// How a block request ended, as the driver saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockResult {
    /// The bytes arrived and verified against the outboard.
    Verified,
    /// The bytes arrived and did not verify: the source lied.
    Corrupt,
    /// The download's own outboard could not check the block (it cannot happen to an outboard
    /// that verified; the download fails rather than ban sources for it).
    OutboardBroken,
    Busy(Duration),
    /// A transient failure of this request (a reset stream, a timeout).
    Failed,
    /// The connection to the source is gone.
    ConnectionLost,
}

/// Something that happened, reported to [`Transfer::handle`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event<S> {
    /// A lookup's answer (after [`Action::Locate`]), best first, each with its route.
    Located(Vec<(S, Route)>),
    Connected(S),
    ConnectFailed(S),
    OutboardArrived {
        from: S,
        result: OutboardResult,
    },
    /// The marked blocks that verified again (after [`Action::CheckMarked`]).
    MarkedChecked {
        kept: Vec<Block>,
    },
    /// A block request ended; `received` bytes came in (0 when none did).
    BlockDone {
        from: S,
        block: Block,
        received: u64,
        elapsed: Duration,
        result: BlockResult,
    },
    /// A [`Action::Write`] is on disk.
    Written(Block),
    /// No outcome is waiting to be reported: silence can be judged, timers have come due.
    Tick,
}

/// Why a source is let go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Silent with requests in flight while others remain.
    Stalled,
    Lost,
    /// It sent a block that did not verify (banned).
    BadData,
    /// It sent an outboard that did not verify (banned).
    BadOutboard,
    OutboardFailed,
    /// It connected when the download needed it no more (done, or the scheduler refused it).
    NotNeeded,
}

/// Why a download failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    NoSources {
        tried: usize,
        waited: Duration,
    },
    /// Every source that sent an outboard sent an invalid one.
    NoOutboard,
    /// The outboard on disk could not check a block: it must be fetched again.
    OutboardBroken,
    Plan(SchedulerError),
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action<S> {
    /// Dial the source by `via`, pinning its id; answer `Connected` or `ConnectFailed`.
    Connect {
        source: S,
        via: Route,
    },
    /// Close the connection and abort the source's requests (none of their outcomes is needed).
    Disconnect {
        source: S,
        why: DropReason,
    },
    /// Ask the directory for sources; answer `Located`.
    Locate,
    /// Ask the source for the outboard, into a copy of its own; answer `OutboardArrived`.
    RequestOutboard(S),
    /// Keep this source's outboard copy as the download's; abort the other outboard requests
    /// and remove their copies.
    UseOutboard(S),
    /// Check these marked blocks on disk against the outboard, unmark those that fail; answer
    /// `MarkedChecked`.
    CheckMarked(Vec<Block>),
    /// Fetch the block's `range`; answer `BlockDone`.
    Request {
        from: S,
        block: Block,
        range: Range<u64>,
    },
    /// Abort this request (a duplicate whose block arrived from elsewhere).
    Cancel {
        from: S,
        block: Block,
    },
    /// Write and mark the bytes the last `BlockDone` from `from` brought; answer `Written`.
    /// Bytes of a `BlockDone` that gets no `Write` are dropped.
    Write {
        from: S,
        block: Block,
    },
    /// Every block is verified and written: finish the file, close everything.
    Finish,
    Fail(Failure),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Outboard,
    Resume,
    Fetching,
    Done,
}

/// A snapshot for progress bars and status.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TransferProgress {
    pub verified_bytes: u64,
    pub active_sources: usize,
    pub fetched_bytes: u64,
    /// Set while nobody can serve the file: when the download gives up.
    pub waiting_until: Option<Instant>,
}

/// One download's policy. See the module doc.
pub struct Transfer<S: SourceKey> {
    cfg: TransferConfig,
    phase: Phase,
    plan: Scheduler<S>,
    marked: Vec<Block>,
    wait: SourceWait,
    waiting_until: Option<Instant>,
    locating: bool,
    dialling: BTreeSet<S>,
    connected: BTreeSet<S>,
    banned: BTreeSet<S>,
    tried: usize,
    /// The outboard race: requests out, BUSY sources and when to ask them again, bad copies.
    asked: BTreeSet<S>,
    busy: Vec<(Instant, S)>,
    bad_outboards: usize,
    in_flight: BTreeSet<(S, Block)>,
    writes_pending: usize,
    fetched_bytes: u64,
    per_source: BTreeMap<S, u64>,
    actions: VecDeque<Action<S>>,
}

impl<S: SourceKey> Transfer<S> {
    /// A download of `cfg.size` bytes from `sources` (and whatever lookups find). A previous
    /// run left an outboard on disk if `saved_outboard`, and marked the `marked` blocks.
    pub fn new(
        cfg: TransferConfig,
        now: Instant,
        sources: impl IntoIterator<Item = (S, Route)>,
        saved_outboard: bool,
        marked: Vec<Block>,
    ) -> Result<Self, SchedulerError> {
        let plan = Scheduler::new(cfg.size, cfg.block_size, [])?;
        let wait = SourceWait::new(cfg.wait_for_sources, cfg.relocate_every);
        let mut t = Self {
            cfg,
            phase: Phase::Outboard,
            plan,
            marked,
            wait,
            waiting_until: None,
            locating: false,
            dialling: BTreeSet::new(),
            connected: BTreeSet::new(),
            banned: BTreeSet::new(),
            tried: 0,
            asked: BTreeSet::new(),
            busy: Vec::new(),
            bad_outboards: 0,
            in_flight: BTreeSet::new(),
            writes_pending: 0,
            fetched_bytes: 0,
            per_source: BTreeMap::new(),
            actions: VecDeque::new(),
        };
        t.dial_new(sources);
        if saved_outboard {
            t.outboard_ready();
        }
        t.drive(now);
        Ok(t)
    }

    /// The next thing to do, in order.
    pub fn poll_action(&mut self) -> Option<Action<S>> {
        self.actions.pop_front()
    }

    /// When to send [`Event::Tick`] if nothing happens before; `None` while only an outcome
    /// the driver owes can move the download on (or it is over).
    pub fn poll_timeout(&self, now: Instant) -> Option<Instant> {
        let alone = self.dialling.is_empty() && self.asked.is_empty() && self.busy.is_empty();
        let wants_lookup = match self.phase {
            Phase::Outboard => alone,
            Phase::Fetching => {
                self.dialling.is_empty() && (self.waiting_until.is_some() || self.plan.needs_more_sources())
            }
            Phase::Resume | Phase::Done => return None,
        };
        let lookup =
            (wants_lookup && self.cfg.can_locate && !self.locating).then(|| self.wait.next_wake(now));
        // Past the wait with a dial under way, only the dial's outcome can end it.
        let gives_up = self.waiting_until.filter(|_| self.dialling.is_empty());
        let timers = [lookup, gives_up].into_iter().flatten();
        match self.phase {
            Phase::Outboard => timers.chain(self.busy.iter().map(|(at, _)| *at)).min(),
            _ => timers.chain(self.plan.poll_timeout()).chain([now + IDLE_TICK]).min(),
        }
    }

    pub fn handle(&mut self, now: Instant, event: Event<S>) {
        if self.phase == Phase::Done {
            if let Event::Connected(source) = event {
                self.actions.push_back(Action::Disconnect { source, why: DropReason::NotNeeded });
            }
            return;
        }
        match event {
            Event::Located(found) => {
                self.locating = false;
                self.dial_new(found);
            }
            Event::Connected(source) => self.connected(source),
            // Forgotten, so that a later lookup dials it again (it may come back).
            Event::ConnectFailed(source) => {
                self.dialling.remove(&source);
            }
            Event::OutboardArrived { from, result } => self.outboard_arrived(now, from, result),
            Event::MarkedChecked { kept } => self.marked_checked(kept),
            Event::BlockDone { from, block, received, elapsed, result } => {
                self.block_done(from, block, received, elapsed, result)
            }
            Event::Written(_) => self.writes_pending = self.writes_pending.saturating_sub(1),
            Event::Tick => self.drop_stalled(now),
        }
        self.drive(now);
    }

    pub fn progress(&self) -> TransferProgress {
        TransferProgress {
            verified_bytes: self.plan.progress().verified_bytes,
            active_sources: self.connected.len(),
            fetched_bytes: self.fetched_bytes,
            waiting_until: self.waiting_until,
        }
    }

    /// The block plan (progress per source, the end phase, what is verified).
    pub fn plan(&self) -> &Scheduler<S> {
        &self.plan
    }

    /// Verified bytes credited to each source (first verified copy of a block).
    pub fn per_source(&self) -> Vec<(S, u64)> {
        self.per_source.iter().map(|(s, b)| (*s, *b)).collect()
    }

    /// Sources that sent bad data or a bad outboard.
    pub fn banned(&self) -> Vec<S> {
        self.banned.iter().copied().collect()
    }

    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// Dials what a lookup found, up to `max_sources` in all: every other route before the
    /// relay, whatever order they came in.
    fn dial_new(&mut self, found: impl IntoIterator<Item = (S, Route)>) {
        let mut found: Vec<(S, Route)> = found.into_iter().collect();
        found.sort_by_key(|(_, via)| *via == Route::Relayed);
        for (source, via) in found {
            if self.dialling.len() + self.connected.len() >= self.cfg.max_sources {
                break;
            }
            let known = self.dialling.contains(&source) || self.connected.contains(&source);
            if known || self.banned.contains(&source) {
                continue;
            }
            self.dialling.insert(source);
            self.tried += 1;
            self.actions.push_back(Action::Connect { source, via });
        }
    }

    fn connected(&mut self, source: S) {
        self.dialling.remove(&source);
        match self.phase {
            Phase::Outboard => {
                self.connected.insert(source);
                self.ask_outboard(source);
            }
            Phase::Resume => {
                self.connected.insert(source);
            }
            Phase::Fetching if self.plan.add_source(source) => {
                self.connected.insert(source);
            }
            Phase::Fetching | Phase::Done => {
                self.actions.push_back(Action::Disconnect { source, why: DropReason::NotNeeded })
            }
        }
    }

    fn ask_outboard(&mut self, source: S) {
        self.asked.insert(source);
        self.actions.push_back(Action::RequestOutboard(source));
    }

    fn outboard_arrived(&mut self, now: Instant, from: S, result: OutboardResult) {
        // A losing copy that was on its way when the race ended: the driver removed it.
        if self.phase != Phase::Outboard || !self.asked.remove(&from) {
            return;
        }
        match result {
            OutboardResult::Valid => {
                self.actions.push_back(Action::UseOutboard(from));
                self.outboard_ready();
            }
            OutboardResult::Invalid => {
                self.bad_outboards += 1;
                self.banned.insert(from);
                self.drop_source(from, DropReason::BadOutboard);
            }
            OutboardResult::Busy(wait) => self.busy.push((now + busy_retry_after(wait), from)),
            OutboardResult::Failed => self.drop_source(from, DropReason::OutboardFailed),
        }
    }

    /// The outboard is known: check what a previous run marked, or start fetching.
    fn outboard_ready(&mut self) {
        self.asked.clear();
        self.busy.clear();
        if self.marked.is_empty() {
            self.start_fetching(Vec::new());
        } else {
            self.phase = Phase::Resume;
            self.actions.push_back(Action::CheckMarked(std::mem::take(&mut self.marked)));
        }
    }

    fn marked_checked(&mut self, kept: Vec<Block>) {
        if self.phase == Phase::Resume {
            self.start_fetching(kept);
        }
    }

    fn start_fetching(&mut self, kept: Vec<Block>) {
        let count = self.plan.block_count();
        let kept = kept.into_iter().filter(|b| (*b as usize) < count);
        match Scheduler::new(self.cfg.size, self.cfg.block_size, kept) {
            Ok(plan) => self.plan = plan,
            Err(e) => return self.fail(Failure::Plan(e)),
        }
        self.phase = Phase::Fetching;
        for source in self.connected.clone() {
            self.plan.add_source(source);
        }
    }

    fn block_done(&mut self, from: S, block: Block, received: u64, elapsed: Duration, result: BlockResult) {
        self.in_flight.remove(&(from, block));
        // Dropped for bad data already: an answer that was on its way is ignored.
        if self.phase != Phase::Fetching || self.banned.contains(&from) {
            return;
        }
        self.fetched_bytes += received;
        match result {
            BlockResult::Verified => {
                if let Verified::Accepted { cancel } =
                    self.plan.block_verified(from, block, received, elapsed)
                {
                    self.writes_pending += 1;
                    *self.per_source.entry(from).or_default() += received;
                    self.actions.push_back(Action::Write { from, block });
                    for loser in cancel {
                        if self.in_flight.remove(&(loser, block)) {
                            self.actions.push_back(Action::Cancel { from: loser, block });
                        }
                    }
                }
            }
            BlockResult::Corrupt => {
                self.plan.block_failed_verification(from, block);
                self.banned.insert(from);
                self.drop_source(from, DropReason::BadData);
            }
            BlockResult::OutboardBroken => self.fail(Failure::OutboardBroken),
            BlockResult::Busy(wait) => self.plan.request_busy(from, block, wait),
            BlockResult::Failed => self.plan.request_failed(from, block),
            BlockResult::ConnectionLost => {
                self.plan.remove_source(from);
                self.drop_source(from, DropReason::Lost);
            }
        }
    }

    /// With nobody else left, a silent source is still the best hope: its requests time out
    /// one by one instead. A wrong call is not fatal either: the source is forgotten, not
    /// banned, and a later lookup connects to it again.
    fn drop_stalled(&mut self, now: Instant) {
        if self.phase != Phase::Fetching {
            return;
        }
        for source in self.plan.stalled_sources(now) {
            if self.plan.usable_sources() > 1 {
                self.plan.remove_source(source);
                self.drop_source(source, DropReason::Stalled);
            }
        }
    }

    fn drop_source(&mut self, source: S, why: DropReason) {
        self.connected.remove(&source);
        self.asked.remove(&source);
        self.busy.retain(|(_, s)| *s != source);
        self.in_flight.retain(|(s, _)| *s != source);
        self.actions.push_back(Action::Disconnect { source, why });
    }

    fn fail(&mut self, failure: Failure) {
        self.phase = Phase::Done;
        self.actions.push_back(Action::Fail(failure));
    }

    /// Everything that follows from the state after an event: requests, lookups, the waiting
    /// verdict, the end.
    fn drive(&mut self, now: Instant) {
        let has_sources = match self.phase {
            Phase::Done | Phase::Resume => return,
            Phase::Outboard => {
                let due: Vec<S> = self.busy.iter().filter(|(at, _)| *at <= now).map(|(_, s)| *s).collect();
                self.busy.retain(|(at, _)| *at > now);
                for source in due {
                    if self.connected.contains(&source) {
                        self.ask_outboard(source);
                    }
                }
                if self.dialling.is_empty() && self.asked.is_empty() && self.busy.is_empty() {
                    self.locate(now);
                }
                !self.asked.is_empty() || !self.busy.is_empty()
            }
            Phase::Fetching => {
                if self.plan.is_complete() {
                    if self.writes_pending == 0 {
                        self.phase = Phase::Done;
                        self.actions.push_back(Action::Finish);
                    }
                    return;
                }
                self.send_requests(now);
                if self.dialling.is_empty() && self.plan.needs_more_sources() {
                    self.locate(now);
                }
                // Retired and banned sources get no more requests: nobody usable is as good
                // as nobody connected.
                let usable = !self.connected.is_empty() && self.plan.usable_sources() > 0;
                usable || !self.in_flight.is_empty()
            }
        };
        let dialling = !self.dialling.is_empty();
        let verdict = match self.cfg.can_locate {
            false if !has_sources && !dialling => Verdict::GiveUp,
            false => Verdict::Fetching,
            true => self.wait.update(now, has_sources),
        };
        // A dial under way may still connect: give up only once it has failed. It does not
        // restart the clock, though (see the module doc).
        let verdict = match verdict {
            Verdict::GiveUp if dialling => Verdict::Waiting { gives_up_at: now },
            v => v,
        };
        self.waiting_until = match verdict {
            Verdict::Fetching => None,
            Verdict::Waiting { gives_up_at } => Some(gives_up_at),
            Verdict::GiveUp if self.bad_outboards > 0 && self.phase == Phase::Outboard => {
                return self.fail(Failure::NoOutboard);
            }
            Verdict::GiveUp => {
                let waited = self.cfg.wait_for_sources;
                return self.fail(Failure::NoSources { tried: self.tried, waited });
            }
        };
    }

    fn send_requests(&mut self, now: Instant) {
        for (source, block) in self.plan.next_requests(now) {
            let range = self.plan.block_range(block);
            match range {
                Some(range) if self.connected.contains(&source) => {
                    self.in_flight.insert((source, block));
                    self.actions.push_back(Action::Request { from: source, block, range });
                }
                _ => self.plan.remove_source(source),
            }
        }
    }

    fn locate(&mut self, now: Instant) {
        if self.cfg.can_locate && !self.locating && self.wait.lookup_due(now) {
            self.locating = true;
            self.actions.push_back(Action::Locate);
        }
    }
}
