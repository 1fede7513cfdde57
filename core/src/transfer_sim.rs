//! A world for [`Transfer`] in virtual time: sources with their own speed, latency and faults
//! (bad data, a bad outboard, BUSY, silence, leaving, coming online late), a directory that
//! answers lookups with whoever is online, a disk that keeps some of a previous run's blocks.
//! It plays the driver's part exactly as `fetch::download` does and checks the transfer's
//! promises on every action; `transfer_tests` builds the scenarios.

use crate::scheduler::Block;
use crate::transfer::*;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct SimSource {
    /// Bytes per second of its upload (requests are served one after another).
    pub bandwidth: u64,
    pub rtt_ms: u64,
    /// Every block it sends fails verification.
    pub corrupt: bool,
    /// The outboard it sends fails verification.
    pub bad_outboard: bool,
    /// Answers BUSY to this many outboard requests first.
    pub busy_outboards: u32,
    /// Answers this many block requests, then nothing at all (a hung peer).
    pub silent_after: Option<u32>,
    /// Its connection drops at this time.
    pub leaves_at_ms: Option<u64>,
    /// Online (in lookups, dialable) only from this time.
    pub online_from_ms: u64,
    /// Listed by every lookup, but every dial fails (a peer behind a NAT nobody can cross).
    pub unreachable: bool,
    /// The route the directory gives for it.
    pub route: Route,
}

impl SimSource {
    pub fn honest(bandwidth: u64, rtt_ms: u64) -> Self {
        Self {
            bandwidth,
            rtt_ms,
            corrupt: false,
            bad_outboard: false,
            busy_outboards: 0,
            silent_after: None,
            leaves_at_ms: None,
            online_from_ms: 0,
            unreachable: false,
            route: Route::Direct,
        }
    }
}

/// What one simulated download did.
#[derive(Debug)]
pub struct SimOutcome {
    pub end: Action<u8>,
    pub elapsed: Duration,
    pub requests: BTreeMap<u8, u32>,
    pub dropped: Vec<(u8, DropReason)>,
    pub banned: Vec<u8>,
    pub per_source: Vec<(u8, u64)>,
    /// Whether progress ever showed the download waiting for sources.
    pub waited: bool,
    /// Every dial, in order.
    pub dialled: Vec<u8>,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Due {
    Event(u8, EventKind),
    Located,
    Checked,
    Written(Block),
    Leave(u8),
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum EventKind {
    Connected,
    ConnectFailed,
    Outboard(bool),
    OutboardBusy,
    Block(Block),
    Lost(Block),
}

pub struct Sim {
    pub size: u64,
    pub block_size: u64,
    pub sources: Vec<SimSource>,
    /// Blocks a previous run marked, and which of them still verify on disk.
    pub marked: Vec<Block>,
    pub marked_good: BTreeSet<Block>,
    pub saved_outboard: bool,
    pub wait_for_sources: Duration,
}

const NS_PER_MS: u64 = 1_000_000;

/// The node's settings (8 sources, a lookup at most every 2 s) for a file of `size`.
pub fn config(size: u64, block_size: u64, wait_for_sources: Duration, can_locate: bool) -> TransferConfig {
    TransferConfig {
        size,
        block_size,
        max_sources: 8,
        wait_for_sources,
        relocate_every: Duration::from_secs(2),
        can_locate,
    }
}

impl Sim {
    pub fn new(size: u64, block_size: u64, sources: Vec<SimSource>) -> Self {
        Self {
            size,
            block_size,
            sources,
            marked: Vec::new(),
            marked_good: BTreeSet::new(),
            saved_outboard: false,
            wait_for_sources: Duration::from_secs(30),
        }
    }

    fn online(&self, i: u8, t: u64) -> bool {
        let s = &self.sources[i as usize];
        s.online_from_ms * NS_PER_MS <= t && s.leaves_at_ms.is_none_or(|ms| t < ms * NS_PER_MS)
    }

    /// Runs the download to its end, checking every promise on the way.
    pub fn run(&self) -> SimOutcome {
        let base = Instant::now();
        let cfg = config(self.size, self.block_size, self.wait_for_sources, true);
        let n = u8::try_from(self.sources.len()).unwrap();
        let located = |t: u64| -> Vec<(u8, Route)> {
            (0..n).filter(|i| self.online(*i, t)).map(|i| (i, self.sources[i as usize].route)).collect()
        };
        let first = located(0);
        let mut tr = Transfer::new(cfg, base, first, self.saved_outboard, self.marked.clone()).unwrap();
        let blocks = self.size.div_ceil(self.block_size) as u32;

        let mut heap: BinaryHeap<Reverse<(u64, u64, Due)>> = BinaryHeap::new();
        let mut seq = 0u64;
        let mut t = 0u64;
        let mut push = |heap: &mut BinaryHeap<_>, at: u64, due: Due| {
            seq += 1;
            heap.push(Reverse((at, seq, due)));
        };
        for (i, s) in self.sources.iter().enumerate() {
            if let Some(ms) = s.leaves_at_ms {
                push(&mut heap, ms * NS_PER_MS, Due::Leave(i as u8));
            }
        }
        // What the driver has open; answers to anything else are dropped (aborted streams).
        let mut open: BTreeSet<(u8, Block)> = BTreeSet::new();
        let mut connected: BTreeSet<u8> = BTreeSet::new();
        let mut server_free = vec![0u64; self.sources.len()];
        let mut answered = vec![0u32; self.sources.len()];
        let mut outboard_asks = vec![0u32; self.sources.len()];
        let mut known_bad: BTreeSet<u8> = BTreeSet::new();
        let mut kept: BTreeSet<Block> = BTreeSet::new();
        let mut written: BTreeSet<Block> = BTreeSet::new();
        let mut last_done: Option<(u8, Block)> = None;
        let mut out = SimOutcome {
            end: Action::Finish,
            elapsed: Duration::ZERO,
            requests: BTreeMap::new(),
            dropped: Vec::new(),
            banned: Vec::new(),
            per_source: Vec::new(),
            waited: false,
            dialled: Vec::new(),
        };

        for _round in 0..1_000_000 {
            while let Some(action) = tr.poll_action() {
                match action {
                    Action::Connect { source: s, via } => {
                        assert_eq!(
                            via, self.sources[s as usize].route,
                            "source {s} dialled by another route"
                        );
                        out.dialled.push(s);
                        assert!(!known_bad.contains(&s), "a banned source {s} is dialled again");
                        let rtt = self.sources[s as usize].rtt_ms * NS_PER_MS;
                        let reached = self.online(s, t) && !self.sources[s as usize].unreachable;
                        let kind = if reached { EventKind::Connected } else { EventKind::ConnectFailed };
                        push(&mut heap, t + rtt, Due::Event(s, kind));
                    }
                    Action::Disconnect { source, why } => {
                        // Banned from here on: it must never be dialled or asked again. (A bad
                        // outboard that lost the race is never looked at, and bans nobody.)
                        if matches!(why, DropReason::BadData | DropReason::BadOutboard) {
                            known_bad.insert(source);
                        }
                        connected.remove(&source);
                        open.retain(|(s, _)| *s != source);
                        out.dropped.push((source, why));
                    }
                    Action::Locate => push(&mut heap, t + 5 * NS_PER_MS, Due::Located),
                    Action::RequestOutboard(s) => {
                        assert!(!known_bad.contains(&s), "a banned source {s} is asked for the outboard");
                        assert!(connected.contains(&s));
                        let src = &self.sources[s as usize];
                        outboard_asks[s as usize] += 1;
                        let kind = if outboard_asks[s as usize] <= src.busy_outboards {
                            EventKind::OutboardBusy
                        } else {
                            EventKind::Outboard(!src.bad_outboard)
                        };
                        push(&mut heap, t + src.rtt_ms * NS_PER_MS, Due::Event(s, kind));
                    }
                    Action::UseOutboard(s) => assert!(!self.sources[s as usize].bad_outboard),
                    Action::CheckMarked(list) => {
                        assert_eq!(list, self.marked, "the resume check covers exactly the marked blocks");
                        kept = list.iter().copied().filter(|b| self.marked_good.contains(b)).collect();
                        push(&mut heap, t + NS_PER_MS, Due::Checked);
                    }
                    Action::Request { from, block, range } => {
                        assert!(!known_bad.contains(&from), "banned source {from} asked for block {block}");
                        assert!(connected.contains(&from), "request to unconnected source {from}");
                        assert!(
                            !kept.contains(&block),
                            "block {block} verified by the resume check is requested"
                        );
                        assert!(!written.contains(&block), "block {block} requested after it was written");
                        let others = open.iter().any(|(s, b)| *b == block && *s != from);
                        assert!(
                            !others || tr.plan().in_end_phase(),
                            "block {block} requested twice outside the end phase"
                        );
                        assert!(open.insert((from, block)));
                        *out.requests.entry(from).or_default() += 1;
                        let src = &self.sources[from as usize];
                        let half = src.rtt_ms * NS_PER_MS / 2;
                        if !self.online(from, t) {
                            push(&mut heap, t + half, Due::Event(from, EventKind::Lost(block)));
                            continue;
                        }
                        let silent = src.silent_after.is_some_and(|n| answered[from as usize] >= n);
                        if silent {
                            continue;
                        }
                        answered[from as usize] += 1;
                        let len = range.end - range.start;
                        let send = (t + half).max(server_free[from as usize]);
                        let finish = send + len * 1_000_000_000 / src.bandwidth.max(1);
                        server_free[from as usize] = finish;
                        push(&mut heap, finish + half, Due::Event(from, EventKind::Block(block)));
                    }
                    Action::Cancel { from, block } => {
                        open.remove(&(from, block));
                    }
                    Action::Write { from, block } => {
                        assert_eq!(
                            last_done,
                            Some((from, block)),
                            "write of a block that did not just arrive"
                        );
                        assert!(written.insert(block), "block {block} written twice");
                        push(&mut heap, t, Due::Written(block));
                    }
                    end @ (Action::Finish | Action::Fail(_)) => {
                        if end == Action::Finish {
                            assert_eq!(
                                written.len() + kept.len(),
                                blocks as usize,
                                "finished with blocks missing"
                            );
                        }
                        assert!(tr.is_done());
                        out.end = end;
                        out.elapsed = Duration::from_nanos(t);
                        out.banned = tr.banned();
                        out.per_source = tr.per_source();
                        return out;
                    }
                }
            }
            out.waited |= tr.progress().waiting_until.is_some();
            let timeout = tr.poll_timeout(base + Duration::from_nanos(t));
            let next_due = heap.peek().map(|Reverse((at, _, _))| *at);
            let timer = timeout.map(|at| at.saturating_duration_since(base).as_nanos() as u64);
            let Some(next) = [next_due, timer].into_iter().flatten().min() else {
                panic!("the transfer waits for nothing and is not done");
            };
            t = t.max(next);
            let now = base + Duration::from_nanos(t);
            if next_due.is_some_and(|at| at <= t) {
                let Some(Reverse((_, _, due))) = heap.pop() else { unreachable!() };
                let event = match due {
                    Due::Located => Some(Event::Located(located(t))),
                    Due::Checked => Some(Event::MarkedChecked { kept: kept.iter().copied().collect() }),
                    Due::Written(b) => Some(Event::Written(b)),
                    Due::Leave(s) => {
                        // Whatever it had open fails now, as a closed connection's streams do.
                        let lost: Vec<Block> =
                            open.iter().filter(|(p, _)| *p == s).map(|(_, b)| *b).collect();
                        for b in lost {
                            push(&mut heap, t, Due::Event(s, EventKind::Lost(b)));
                        }
                        None
                    }
                    Due::Event(s, kind) => self.answer(s, kind, t, &mut open, &mut connected, &mut last_done),
                };
                if let Some(event) = event {
                    tr.handle(now, event);
                }
            }
            if heap.peek().is_none_or(|Reverse((at, _, _))| *at > t) {
                tr.handle(now, Event::Tick);
            }
        }
        panic!("the download did not end within the simulation's bound");
    }

    /// The event a source's answer becomes, or `None` if the driver had dropped what it answers.
    fn answer(
        &self,
        s: u8,
        kind: EventKind,
        t: u64,
        open: &mut BTreeSet<(u8, Block)>,
        connected: &mut BTreeSet<u8>,
        last_done: &mut Option<(u8, Block)>,
    ) -> Option<Event<u8>> {
        let src = &self.sources[s as usize];
        let ms = Duration::from_millis(src.rtt_ms);
        Some(match kind {
            EventKind::Connected if self.online(s, t) => {
                connected.insert(s);
                Event::Connected(s)
            }
            EventKind::Connected | EventKind::ConnectFailed => Event::ConnectFailed(s),
            EventKind::OutboardBusy => Event::OutboardArrived { from: s, result: OutboardResult::Busy(ms) },
            EventKind::Outboard(valid) => {
                if !connected.contains(&s) {
                    return None;
                }
                let result = if valid { OutboardResult::Valid } else { OutboardResult::Invalid };
                Event::OutboardArrived { from: s, result }
            }
            EventKind::Block(block) | EventKind::Lost(block) if !open.remove(&(s, block)) => return None,
            EventKind::Lost(block) => Event::BlockDone {
                from: s,
                block,
                received: 0,
                elapsed: ms,
                result: BlockResult::ConnectionLost,
            },
            EventKind::Block(block) => {
                let len = (self.size - u64::from(block) * self.block_size).min(self.block_size);
                let result = if src.corrupt {
                    BlockResult::Corrupt
                } else {
                    *last_done = Some((s, block));
                    BlockResult::Verified
                };
                Event::BlockDone { from: s, block, received: len, elapsed: ms, result }
            }
        })
    }
}
