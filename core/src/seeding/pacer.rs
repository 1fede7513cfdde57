//! A capped upload shared between uploads by weight: a token bucket whose waiters are served in
//! start-time fair queueing order (Goyal et al., 1996), sans-IO.
//!
//! Each piece an upload wants to send asks for its bytes with its file's weight
//! ([`super::SeedRank::weight`]). While the bucket has tokens and nobody waits, the piece goes at
//! once. Otherwise it waits with a tag, the virtual time at which its turn comes: the tag of the
//! last piece sent plus its bytes over its weight. Pieces leave in tag order as tokens come in,
//! so two uploads that always have a piece waiting share the rate in the ratio of their weights
//! (16 : 2 gives the last copy eight pieces for every one of a common file), and a light upload
//! is never starved, only slowed. An upload has one piece waiting at a time, so no per-upload
//! state is kept.
//!
//! The driver calls [`Pacer::poll`] at [`Pacer::next_wakeup`] and hands each granted ticket's
//! piece to the network.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::time::Instant;

/// One waiting piece.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ticket(u64);

/// What [`Pacer::request`] says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grant {
    /// Send now: the bytes are paid for.
    Now,
    /// Wait until [`Pacer::poll`] returns this ticket.
    Wait(Ticket),
}

#[derive(Debug)]
pub struct Pacer {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    /// The tag of the last piece sent: virtual time.
    virtual_time: f64,
    /// (tag, ticket, bytes), smallest tag first; ties by ticket, so by arrival.
    waiting: BinaryHeap<Reverse<(OrdF64, Ticket, u64)>>,
    cancelled: HashSet<Ticket>,
    next_ticket: u64,
}

/// A tag: finite and non-negative by construction, ordered by `total_cmp`.
#[derive(Clone, Copy, Debug, PartialEq)]
struct OrdF64(f64);
impl Eq for OrdF64 {}
impl PartialOrd for OrdF64 {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for OrdF64 {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

impl Pacer {
    /// `rate` bytes per second on average, bursts of at most `burst` bytes after a quiet spell
    /// (both at least 1).
    pub fn new(rate: u64, burst: u64, now: Instant) -> Self {
        // f64 is exact for byte counts up to 2^53, far beyond any rate or piece.
        let (rate, burst) = (rate.max(1) as f64, burst.max(1) as f64);
        Self {
            rate,
            burst,
            tokens: burst,
            last: now,
            virtual_time: 0.0,
            waiting: BinaryHeap::new(),
            cancelled: HashSet::new(),
            next_ticket: 0,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = self.last.max(now);
    }

    /// A piece of `bytes` of an upload of `weight` (at least 1) wants to go.
    pub fn request(&mut self, bytes: u64, weight: u32, now: Instant) -> Grant {
        self.refill(now);
        if self.waiting.is_empty() && self.tokens >= 0.0 {
            // Sending may take the balance below zero: later pieces wait until it is paid.
            self.tokens -= bytes as f64;
            return Grant::Now;
        }
        let ticket = Ticket(self.next_ticket);
        self.next_ticket += 1;
        let tag = self.virtual_time + bytes as f64 / f64::from(weight.max(1));
        self.waiting.push(Reverse((OrdF64(tag), ticket, bytes)));
        Grant::Wait(ticket)
    }

    /// A waiting piece that will not be sent after all (its upload ended).
    pub fn cancel(&mut self, ticket: Ticket) {
        if self.waiting.iter().any(|Reverse((_, t, _))| *t == ticket) {
            self.cancelled.insert(ticket);
        }
    }

    /// The tickets whose pieces may go now, in order.
    pub fn poll(&mut self, now: Instant) -> Vec<Ticket> {
        self.refill(now);
        let mut granted = Vec::new();
        while self.tokens >= 0.0 {
            let Some(Reverse((tag, ticket, bytes))) = self.waiting.pop() else { break };
            if self.cancelled.remove(&ticket) {
                continue;
            }
            self.tokens -= bytes as f64;
            self.virtual_time = tag.0;
            granted.push(ticket);
        }
        if self.waiting.is_empty() {
            self.cancelled.clear();
        }
        granted
    }

    /// When [`Pacer::poll`] next has something to grant; `None` while nothing waits.
    pub fn next_wakeup(&self) -> Option<Instant> {
        if self.waiting.is_empty() {
            return None;
        }
        let debt = (-self.tokens).max(0.0);
        Some(self.last + std::time::Duration::from_secs_f64(debt / self.rate))
    }

    /// Pieces waiting (cancelled ones included until they come up).
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use super::*;

    const PIECE: u64 = 64 * 1024;

    /// Uploads that always have a piece waiting, each of `weight`, for `seconds` of virtual
    /// time at `rate`: the bytes each sent.
    fn share(weights: &[u32], rate: u64, seconds: u64) -> Vec<u64> {
        let start = Instant::now();
        let mut pacer = Pacer::new(rate, PIECE, start);
        let mut sent = vec![0u64; weights.len()];
        let mut waiting: HashMap<Ticket, usize> = HashMap::new();
        let mut now = start;
        // An upload sends pieces until one has to wait.
        let ask = |pacer: &mut Pacer, i: usize, now, sent: &mut Vec<u64>, waiting: &mut HashMap<_, _>| loop {
            match pacer.request(PIECE, weights[i], now) {
                Grant::Now => sent[i] += PIECE,
                Grant::Wait(t) => {
                    waiting.insert(t, i);
                    break;
                }
            }
        };
        for i in 0..weights.len() {
            ask(&mut pacer, i, now, &mut sent, &mut waiting);
        }
        let end = start + Duration::from_secs(seconds);
        let mut rounds = 0;
        while now < end && rounds < 1_000_000 {
            rounds += 1;
            now = pacer.next_wakeup().unwrap_or(now + Duration::from_millis(1)).max(now);
            for t in pacer.poll(now) {
                let i = waiting.remove(&t).unwrap();
                sent[i] += PIECE;
                ask(&mut pacer, i, now, &mut sent, &mut waiting);
            }
        }
        sent
    }

    #[test]
    fn the_rate_holds_and_busy_uploads_share_it_by_weight() {
        let rate = 10 << 20;
        let sent = share(&[16, 2], rate, 10);
        let total: u64 = sent.iter().sum();
        // The burst, then the rate.
        let expected = rate * 10 + PIECE;
        assert!(total <= expected + 2 * PIECE && total + 4 * PIECE >= expected, "{total} vs {expected}");
        let ratio = sent[0] as f64 / sent[1] as f64;
        assert!((7.0..=9.0).contains(&ratio), "16:2 should share about 8:1, got {sent:?}");
        let even = share(&[2, 2, 2], rate, 10);
        // The first upload also had the burst.
        assert!(even.iter().all(|&s| s.abs_diff(even[0]) <= 4 * PIECE), "{even:?}");
    }

    #[test]
    fn an_idle_bucket_lets_a_burst_through_and_a_cancelled_piece_costs_nothing() {
        let start = Instant::now();
        let mut pacer = Pacer::new(PIECE, PIECE, start);
        assert_eq!(pacer.request(PIECE, 1, start), Grant::Now);
        assert_eq!(pacer.request(PIECE, 1, start), Grant::Now, "the balance was not negative yet");
        let Grant::Wait(gone) = pacer.request(PIECE, 1, start) else { panic!("debt: must wait") };
        let Grant::Wait(kept) = pacer.request(PIECE, 1, start) else { panic!("must wait") };
        pacer.cancel(gone);
        let at = pacer.next_wakeup().unwrap();
        assert_eq!(at, start + Duration::from_secs(1), "one piece of debt at one piece per second");
        assert_eq!(pacer.poll(at), vec![kept]);
        assert_eq!(pacer.waiting(), 0);
        assert_eq!(pacer.next_wakeup(), None);
    }
}
