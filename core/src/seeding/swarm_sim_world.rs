//! The state of one [`super::run`] and its step: churn, arrivals, the `rare` peers' decisions,
//! lookups, then every online holder's minute of upload.
//!
//! Churn and demand each draw from their own generator, in an order that does not depend on
//! the policy, so every policy sees the same peers come and go and the same requests: the
//! comparison is of policies, not of luck.

use std::cmp::Reverse;

use super::*;

#[derive(Debug)]
struct Peer {
    online: bool,
    toggle_at: u64,
    departs_at: u64,
    /// Which occupant of this slot: bumped when a newcomer takes it.
    generation: u32,
    files: Vec<u32>,
    /// Requests queued here this step.
    queue: Vec<u32>,
    uploaded: u64,
}

#[derive(Clone, Copy, Debug)]
struct Request {
    requester: u32,
    generation: u32,
    file: u32,
    arrived: u64,
    /// Unique per request, unlike its slab index: ties in slot order, lookup rotation.
    serial: u64,
    got: u64,
    holder: Option<u32>,
    /// Holds one of its holder's upload slots: keeps it until done or the holder is lost.
    active: bool,
    finished: bool,
}

pub(super) struct World<'a> {
    c: &'a Config,
    policy: Policy,
    seed_policy: SeedPolicy,
    step: u64,
    churn: Rng,
    demand_rng: Rng,
    zipf: Zipf,
    peers: Vec<Peer>,
    holds: Bits,
    /// Holds, but does not offer (a quiet `rare` peer).
    quiet: Bits,
    wants: Bits,
    holders: Vec<Vec<u32>>,
    /// Online holders offering the file: what the directory counts as its sources.
    sources: Vec<u32>,
    demand: Vec<Demand>,
    dirty: Vec<u32>,
    is_dirty: Vec<bool>,
    tail: Vec<bool>,
    reqs: Vec<Request>,
    free: Vec<u32>,
    live: Vec<u32>,
    serial: u64,
    times: Vec<u64>,
    peer_uploads: Vec<u64>,
    report: Report,
}

impl<'a> World<'a> {
    pub(super) fn new(c: &'a Config, policy: Policy) -> Self {
        let (np, nf) = (c.peers as usize, c.files as usize);
        let mut setup = Rng::new(c.seed, 0);
        let mut churn = Rng::new(c.seed, 1);
        let on = c.mean_online_hours * STEPS_PER_HOUR;
        let off = c.mean_offline_hours * STEPS_PER_HOUR;
        let life = c.mean_lifetime_days * 24.0 * STEPS_PER_HOUR;
        let peers = (0..np)
            .map(|_| {
                // Start in the steady state: online with the share of time peers spend online.
                let online = churn.unit() < on / (on + off);
                let toggle_at = churn.wait(if online { on } else { off });
                let departs_at = churn.wait(life);
                Peer {
                    online,
                    toggle_at,
                    departs_at,
                    generation: 0,
                    files: Vec::new(),
                    queue: Vec::new(),
                    uploaded: 0,
                }
            })
            .collect();
        let mut w = World {
            c,
            policy,
            seed_policy: seed_policy(policy),
            step: 0,
            churn,
            demand_rng: Rng::new(c.seed, 2),
            zipf: Zipf::new(c.files, c.zipf_s),
            peers,
            holds: Bits::new(np, nf),
            quiet: Bits::new(np, nf),
            wants: Bits::new(np, nf),
            holders: vec![Vec::new(); nf],
            sources: vec![0; nf],
            demand: vec![Demand::default(); nf],
            dirty: Vec::new(),
            is_dirty: vec![false; nf],
            tail: vec![false; nf],
            reqs: Vec::new(),
            free: Vec::new(),
            live: Vec::new(),
            serial: 0,
            times: Vec::new(),
            peer_uploads: Vec::new(),
            report: Report {
                policy,
                files_at_start: 0,
                files_at_end: 0,
                tail_at_start: 0,
                tail_at_end: 0,
                requests: 0,
                completed: 0,
                abandoned: 0,
                orphaned: 0,
                pending: 0,
                median_minutes: 0,
                p99_minutes: 0,
                uploaded_bytes: 0,
                downloaded_bytes: 0,
                peer_upload_p50: 0,
                peer_upload_p90: 0,
            },
        };
        for f in 0..c.files {
            let head = f64::from(c.head_holders) * f64::from(f + 1).powf(-c.zipf_s);
            let tail = 1 + setup.below(c.tail_holders_max.max(1) as usize) as u32;
            let n = (head.round() as u32).max(tail).min(c.peers);
            w.tail[f as usize] = n <= c.tail_holders_max;
            while (w.holders[f as usize].len() as u32) < n {
                let p = setup.below(np) as u32;
                if !w.holds.get(p as usize, f as usize) {
                    w.add_holding(p, f);
                }
            }
        }
        w.report.files_at_start = w.available(false);
        w.report.tail_at_start = w.available(true);
        w
    }

    fn available(&self, tail_only: bool) -> u32 {
        let n =
            (0..self.holders.len()).filter(|&f| !self.holders[f].is_empty() && (!tail_only || self.tail[f]));
        n.count() as u32
    }

    fn mark(&mut self, f: u32) {
        if !std::mem::replace(&mut self.is_dirty[f as usize], true) {
            self.dirty.push(f);
        }
    }

    fn offering(&self, p: u32, f: u32) -> bool {
        self.holds.get(p as usize, f as usize) && !self.quiet.get(p as usize, f as usize)
    }

    /// `p` now holds `f` completely, and offers it (a `rare` peer reconsiders next step).
    fn add_holding(&mut self, p: u32, f: u32) {
        self.holds.set(p as usize, f as usize, true);
        self.peers[p as usize].files.push(f);
        self.holders[f as usize].push(p);
        if self.peers[p as usize].online {
            self.sources[f as usize] += 1;
        }
        self.mark(f);
    }

    pub(super) fn run(mut self) -> Report {
        let steps = u64::from(self.c.days) * 24 * 60;
        while self.step < steps {
            self.churn_step();
            self.arrivals();
            self.reconsider();
            self.lookups();
            self.serve();
            self.step += 1;
        }
        self.finish()
    }

    fn churn_step(&mut self) {
        let on = self.c.mean_online_hours * STEPS_PER_HOUR;
        let off = self.c.mean_offline_hours * STEPS_PER_HOUR;
        let life = self.c.mean_lifetime_days * 24.0 * STEPS_PER_HOUR;
        for p in 0..self.peers.len() {
            let now = self.step;
            if self.peers[p].departs_at <= now {
                self.depart(p as u32);
                let (toggle, departs) = (self.churn.wait(on), self.churn.wait(life));
                let peer = &mut self.peers[p];
                (peer.online, peer.toggle_at, peer.departs_at) = (true, now + toggle, now + departs);
            } else if self.peers[p].toggle_at <= now {
                let online = !self.peers[p].online;
                let wait = self.churn.wait(if online { on } else { off });
                self.peers[p].toggle_at = now + wait;
                self.set_online(p as u32, online);
            }
        }
    }

    fn set_online(&mut self, p: u32, online: bool) {
        self.peers[p as usize].online = online;
        for i in 0..self.peers[p as usize].files.len() {
            let f = self.peers[p as usize].files[i];
            if self.offering(p, f) {
                let s = &mut self.sources[f as usize];
                *s = if online { *s + 1 } else { *s - 1 };
            }
            self.mark(f);
        }
    }

    /// `p` leaves for good; a newcomer with nothing takes its slot.
    fn depart(&mut self, p: u32) {
        let peer = &mut self.peers[p as usize];
        let files = std::mem::take(&mut peer.files);
        let was_online = peer.online;
        self.peer_uploads.push(std::mem::take(&mut peer.uploaded));
        peer.generation += 1;
        for &f in &files {
            if was_online && self.offering(p, f) {
                self.sources[f as usize] -= 1;
            }
            let hs = &mut self.holders[f as usize];
            if let Some(i) = hs.iter().position(|&h| h == p) {
                hs.swap_remove(i);
            }
            self.mark(f);
        }
        for bits in [&mut self.holds, &mut self.quiet, &mut self.wants] {
            bits.clear_row(p as usize);
        }
    }

    fn arrivals(&mut self) {
        let online: Vec<u32> = (0..self.c.peers).filter(|&p| self.peers[p as usize].online).collect();
        let mean = self.c.requests_per_hour / STEPS_PER_HOUR * online.len() as f64;
        let n = self.demand_rng.poisson(mean);
        for _ in 0..n {
            // Two draws whatever happens, so the stream stays aligned across policies.
            let p = online[self.demand_rng.below(online.len())];
            let f = self.zipf.sample(&mut self.demand_rng);
            let (pu, fu) = (p as usize, f as usize);
            if self.holds.get(pu, fu) || self.wants.get(pu, fu) {
                continue;
            }
            self.wants.set(pu, fu, true);
            let epoch = self.epoch();
            self.demand[fu].record(epoch);
            self.mark(f);
            self.report.requests += 1;
            self.serial += 1;
            let r = Request {
                requester: p,
                generation: self.peers[pu].generation,
                file: f,
                arrived: self.step,
                serial: self.serial,
                got: 0,
                holder: None,
                active: false,
                finished: false,
            };
            let id = match self.free.pop() {
                Some(id) => {
                    self.reqs[id as usize] = r;
                    id
                }
                None => {
                    self.reqs.push(r);
                    self.reqs.len() as u32 - 1
                }
            };
            self.live.push(id);
        }
    }

    fn epoch(&self) -> u64 {
        self.step / (HALF_LIFE.as_secs() / STEP.as_secs())
    }

    /// Each online holder of a file whose counts changed decides again whether to offer it,
    /// one after another with the count as each leaves it (as the directory's updates reach
    /// holders one at a time), so a crowd of `rare` peers thins out instead of all going quiet
    /// at once.
    fn reconsider(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        let epoch = self.epoch();
        for &f in &dirty {
            self.is_dirty[f as usize] = false;
            if self.seed_policy == SeedPolicy::Always {
                continue;
            }
            let fu = f as usize;
            for i in 0..self.holders[fu].len() {
                let p = self.holders[fu][i];
                if !self.peers[p as usize].online {
                    continue;
                }
                let now = !self.quiet.get(p as usize, fu);
                let s = self.sources[fu];
                let rarity =
                    Rarity { online_sources: s, complete_sources: s, demand: self.demand[fu].at(epoch) };
                let next = self.seed_policy.offers(Some(&rarity), now);
                if next != now {
                    self.quiet.set(p as usize, fu, !next);
                    self.sources[fu] = if next { s + 1 } else { s - 1 };
                }
            }
        }
        self.dirty = dirty;
        self.dirty.clear();
    }

    /// Drops finished, abandoned and orphaned requests; queues the rest where they stand, then
    /// sends those without a source to the least loaded of a lookup's sources.
    fn lookups(&mut self) {
        let give_up = (self.c.give_up_after_hours * STEPS_PER_HOUR) as u64;
        let mut live = std::mem::take(&mut self.live);
        live.retain(|&id| {
            let r = self.reqs[id as usize];
            let requester = &self.peers[r.requester as usize];
            let (orphan, late) = (r.generation != requester.generation, self.step - r.arrived >= give_up);
            if r.finished || orphan || late {
                if !r.finished {
                    self.report.downloaded_bytes += r.got;
                    if orphan {
                        self.report.orphaned += 1;
                    } else {
                        self.report.abandoned += 1;
                        self.wants.set(r.requester as usize, r.file as usize, false);
                    }
                }
                self.free.push(id);
                return false;
            }
            let source = r.holder.filter(|&h| {
                let (hu, fu) = (h as usize, r.file as usize);
                requester.online && self.peers[hu].online && self.holds.get(hu, fu) && !self.quiet.get(hu, fu)
            });
            match source {
                Some(h) => self.peers[h as usize].queue.push(id),
                None => (self.reqs[id as usize].holder, self.reqs[id as usize].active) = (None, false),
            }
            true
        });
        for &id in &live {
            let r = &self.reqs[id as usize];
            if r.holder.is_some() || !self.peers[r.requester as usize].online {
                continue;
            }
            let hs = &self.holders[r.file as usize];
            // Rotate where the lookup starts, so equal queues do not all pick the first holder.
            let start = r.serial as usize % hs.len().max(1);
            let best = (0..hs.len())
                .map(|i| hs[(start + i) % hs.len()])
                .filter(|&h| self.peers[h as usize].online && self.offering(h, r.file))
                .take(SOURCES_PER_LOOKUP)
                .min_by_key(|&h| self.peers[h as usize].queue.len());
            if let Some(h) = best {
                self.reqs[id as usize].holder = Some(h);
                self.peers[h as usize].queue.push(id);
            }
        }
        self.live = live;
    }

    /// Every online holder's minute of upload, by the policy's slot order and weights.
    fn serve(&mut self) {
        let capacity = self.c.upload_bytes_per_sec * STEP.as_secs();
        let (slots, epoch) = (self.c.slots_per_peer.max(1) as usize, self.epoch());
        for h in 0..self.peers.len() {
            let queue = std::mem::take(&mut self.peers[h].queue);
            if queue.is_empty() {
                continue;
            }
            let mut picked: Vec<(SlotKey, u32, u32)> = queue
                .iter()
                .map(|&id| {
                    let r = &self.reqs[id as usize];
                    let f = r.file as usize;
                    let (rank, weight) = rank(self.policy, self.sources[f], self.demand[f].at(epoch));
                    ((Reverse(r.active), Reverse(rank), r.arrived, r.serial), weight, id)
                })
                .collect();
            if picked.len() > slots {
                picked.select_nth_unstable_by_key(slots - 1, |p| p.0);
                picked.truncate(slots);
            }
            let wants: Vec<(u64, u32)> = picked
                .iter()
                .map(|&(_, w, id)| (self.c.file_bytes - self.reqs[id as usize].got, w))
                .collect();
            for (&(_, _, id), bytes) in picked.iter().zip(share(capacity, &wants)) {
                self.peers[h].uploaded += bytes;
                self.report.uploaded_bytes += bytes;
                let r = &mut self.reqs[id as usize];
                r.active = true;
                r.got += bytes;
                if r.got == self.c.file_bytes {
                    self.complete(id);
                }
            }
        }
    }

    fn complete(&mut self, id: u32) {
        let r = &mut self.reqs[id as usize];
        r.finished = true;
        let (p, f) = (r.requester, r.file);
        self.times.push(self.step + 1 - r.arrived);
        self.report.completed += 1;
        self.report.downloaded_bytes += self.c.file_bytes;
        self.wants.set(p as usize, f as usize, false);
        self.add_holding(p, f);
    }

    fn finish(mut self) -> Report {
        for &id in &self.live {
            let r = &self.reqs[id as usize];
            if !r.finished {
                self.report.pending += 1;
                self.report.downloaded_bytes += r.got;
            }
        }
        self.report.files_at_end = self.available(false);
        self.report.tail_at_end = self.available(true);
        let pct = |v: &[u64], q: usize| if v.is_empty() { 0 } else { v[(v.len() - 1) * q / 100] };
        self.times.sort_unstable();
        self.report.median_minutes = pct(&self.times, 50);
        self.report.p99_minutes = pct(&self.times, 99);
        let mut ups = std::mem::take(&mut self.peer_uploads);
        ups.extend(self.peers.iter().map(|p| p.uploaded));
        ups.sort_unstable();
        self.report.peer_upload_p50 = pct(&ups, 50);
        self.report.peer_upload_p90 = pct(&ups, 90);
        self.report
    }
}
