//! Leases: which peers are online right now, and the session tokens that prove it.
//!
//! A sans-IO state machine: time comes in as an `Instant` argument, nothing here sleeps, spawns
//! or touches storage, so every rule is tested deterministically below. The directory calls
//! `expire` from a timer and applies what it returns.
//!
//! A lease also records whether the peer passed the connect-back check at its last Announce
//! (`reachable`). A peer with a reachable lease is a *source*: its files count as online and
//! Locate hands it out. An unreachable peer keeps its session (it may search, publish and
//! download) but is never a source until an Announce of it passes the check.
//!
//! Invariants: a peer has at most one live token; a token maps to exactly one online peer; a
//! peer whose lease has run out is not online for `is_online`/`lease`, even before `expire`
//! has swept it. The directory's online sources hold the files of exactly the peers whose lease
//! in the table is reachable, expired or not: every call that changes or removes a lease says
//! whether the peer counted before (`was_source`) and, for `announce`, whether it counts after.
//! `by_ip` holds exactly the peers of `by_peer`, each under the IP of its lease's address.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use quaver_shared::PeerId;

/// An opaque session token (hex text on the wire).
pub type Token = String;

#[derive(Clone, Debug)]
pub struct Lease {
    pub token: Token,
    pub address: SocketAddr,
    pub expires: Instant,
    pub last_seen: Instant,
    pub free_upload_slots: u32,
    /// How others reach it; any way but `Unreachable` makes it a source ([`Lease::reachable`]).
    pub reach: Reach,
    /// Its socket's private address, for peers behind the same public IP.
    pub local: Option<SocketAddr>,
}

impl Lease {
    /// The peer is a source: it answered the connect-back check with its own key at its last
    /// Announce, or it can be reached through introductions or the relay.
    pub fn reachable(&self) -> bool {
        self.reach != Reach::Unreachable
    }
}

/// How other peers can reach a peer, as its last Announce found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reach {
    /// The connect-back check failed and it cannot be introduced: not a source.
    Unreachable,
    /// The connect-back check passed.
    Direct,
    /// Behind a NAT that keeps one mapping for every destination, with its rendezvous
    /// connection open: a source, reached through introductions.
    Introduced,
    /// Behind a NAT nobody can punch (a new mapping per destination), with its rendezvous
    /// connection open and a relay offered: a source, reached through the relay.
    Relayed,
}

impl From<bool> for Reach {
    /// The connect-back verdict alone.
    fn from(reachable: bool) -> Reach {
        if reachable { Reach::Direct } else { Reach::Unreachable }
    }
}

pub struct Presence {
    lease: Duration,
    by_peer: HashMap<PeerId, Lease>,
    by_token: HashMap<Token, PeerId>,
    /// The peers in `by_peer` by the IP of their lease's address (canonical): the per-IP limit
    /// is checked at every Announce, and a scan of the whole table there would cost O(online
    /// peers) each time.
    by_ip: HashMap<IpAddr, HashSet<PeerId>>,
    /// No lease in the table expires before this (`None`: the table is empty, or nothing was
    /// added since the last sweep found it so). `expire` runs on every Announce, Publish and
    /// Withdraw and on a timer; with this bound it scans the table only once a lease may really
    /// have run out, not once per call: at 100k peers a scan is some 100k entries.
    ///
    /// Why a bound stays true without bookkeeping: a lease's expiry only moves when a call sets
    /// it to `now + lease`, and each such call lowers the bound to it if it is earlier (so a
    /// test's `now` may even go backwards); removing a lease can only make the true minimum
    /// later. Only `expire` raises it, to the exact minimum of the leases it kept.
    next_expiry: Option<Instant>,
    /// Leases in `by_peer` by their `Reach` (indexed by its discriminant), kept as leases come
    /// and go so that `Stats` and metrics scrapes never walk the table.
    by_reach: [u64; 4],
}

/// What `announce` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AnnounceOutcome {
    /// The peer had no live lease: it was offline and is now online. Otherwise it already had
    /// one, and its old token is void.
    pub came_online: bool,
    /// The peer's previous lease, if any was still in the table (even expired), was reachable:
    /// its files were counted as a source.
    pub was_source: bool,
    /// The new lease is reachable: its files count as a source from now on.
    pub is_source: bool,
}

/// A lease that `leave` or `expire` took out of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Departed {
    pub peer: PeerId,
    /// Its files were counted as a source (the lease was reachable) and must stop counting.
    pub was_source: bool,
}

impl Presence {
    pub fn new(lease: Duration) -> Self {
        Self {
            lease,
            by_peer: HashMap::new(),
            by_token: HashMap::new(),
            by_ip: HashMap::new(),
            next_expiry: None,
            by_reach: [0; 4],
        }
    }

    pub fn lease_length(&self) -> Duration {
        self.lease
    }

    /// Starts a session: a new token and a fresh lease, reachable or not as the connect-back
    /// check found. A previous token of the peer is void.
    pub fn announce(
        &mut self,
        peer: PeerId,
        address: SocketAddr,
        free_upload_slots: u32,
        reach: impl Into<Reach>,
        token: Token,
        now: Instant,
    ) -> AnnounceOutcome {
        let reach = reach.into();
        let lease = Lease {
            token: token.clone(),
            address,
            expires: now + self.lease,
            last_seen: now,
            free_upload_slots,
            reach,
            local: None,
        };
        self.lower_next_expiry(lease.expires);
        self.by_token.insert(token, peer);
        self.by_reach[reach as usize] += 1;
        let old = self.by_peer.insert(peer, lease);
        if let Some(old) = &old {
            self.by_reach[old.reach as usize] -= 1;
            self.by_token.remove(&old.token);
            self.unindex_ip(old.address.ip(), &peer);
        }
        self.by_ip.entry(address.ip().to_canonical()).or_default().insert(peer);
        AnnounceOutcome {
            came_online: old.as_ref().is_none_or(|l| l.expires <= now),
            was_source: old.as_ref().is_some_and(Lease::reachable),
            is_source: reach != Reach::Unreachable,
        }
    }

    /// Records the private address `peer` announced with its lease.
    pub fn set_local_address(&mut self, peer: &PeerId, local: Option<SocketAddr>) {
        if let Some(lease) = self.by_peer.get_mut(peer) {
            lease.local = local;
        }
    }

    /// The peer behind a token whose lease is still running.
    pub fn peer_of(&self, token: &str, now: Instant) -> Option<PeerId> {
        let peer = self.by_token.get(token)?;
        let lease = self.by_peer.get(peer)?;
        (lease.expires > now).then_some(*peer)
    }

    /// Renews a live lease; `None` if the token is unknown or its lease has run out.
    pub fn heartbeat(&mut self, token: &str, free_upload_slots: u32, now: Instant) -> Option<PeerId> {
        let peer = self.peer_of(token, now)?;
        let expires = now + self.lease;
        let lease = self.by_peer.get_mut(&peer)?;
        lease.expires = expires;
        lease.last_seen = now;
        lease.free_upload_slots = free_upload_slots;
        self.lower_next_expiry(expires);
        Some(peer)
    }

    fn lower_next_expiry(&mut self, expires: Instant) {
        self.next_expiry = Some(self.next_expiry.map_or(expires, |next| next.min(expires)));
    }

    /// Ends a session at once. Returns the lease's peer if the token was in the table; a lease
    /// that ran out but was not swept yet is taken out too, so that its files stop counting.
    pub fn leave(&mut self, token: &str) -> Option<Departed> {
        let peer = self.by_token.remove(token)?;
        let lease = self.by_peer.remove(&peer)?;
        self.by_reach[lease.reach as usize] -= 1;
        self.unindex_ip(lease.address.ip(), &peer);
        Some(Departed { peer, was_source: lease.reachable() })
    }

    /// Ends `peer`'s session at once (an operator's ban), like `leave` by its token.
    pub fn leave_peer(&mut self, peer: &PeerId) -> Option<Departed> {
        let token = self.by_peer.get(peer)?.token.clone();
        self.leave(&token)
    }

    /// Every live lease at `now`, in no particular order (for operators: one walk of the
    /// table, never on a peer's request path).
    pub fn live(&self, now: Instant) -> impl Iterator<Item = (&PeerId, &Lease)> {
        self.by_peer.iter().filter(move |(_, l)| l.expires > now)
    }

    /// Removes every lease that has run out and returns the peers that went offline.
    /// Scans the table only when some lease may have run out by `now` (see `next_expiry`).
    pub fn expire(&mut self, now: Instant) -> Vec<Departed> {
        if self.next_expiry.is_none_or(|next| next > now) {
            return Vec::new();
        }
        let expired: Vec<PeerId> =
            self.by_peer.iter().filter(|(_, l)| l.expires <= now).map(|(p, _)| *p).collect();
        let mut departed = Vec::with_capacity(expired.len());
        for peer in expired {
            if let Some(lease) = self.by_peer.remove(&peer) {
                self.by_reach[lease.reach as usize] -= 1;
                self.by_token.remove(&lease.token);
                self.unindex_ip(lease.address.ip(), &peer);
                departed.push(Departed { peer, was_source: lease.reachable() });
            }
        }
        self.next_expiry = self.by_peer.values().map(|l| l.expires).min();
        departed
    }

    /// Leases in the table (live or not swept yet) that `reach` describes.
    pub fn count(&self, reach: Reach) -> u64 {
        self.by_reach[reach as usize]
    }

    pub fn lease(&self, peer: &PeerId, now: Instant) -> Option<&Lease> {
        self.by_peer.get(peer).filter(|l| l.expires > now)
    }

    /// The lease of a peer that may be handed out as a source now: live and reachable.
    pub fn source(&self, peer: &PeerId, now: Instant) -> Option<&Lease> {
        self.lease(peer, now).filter(|l| l.reachable())
    }

    /// The peer behind a live token, and whether it is a source (its lease is reachable).
    pub fn session(&self, token: &str, now: Instant) -> Option<(PeerId, bool)> {
        let peer = self.peer_of(token, now)?;
        Some((peer, self.by_peer.get(&peer)?.reachable()))
    }

    pub fn is_online(&self, peer: &PeerId, now: Instant) -> bool {
        self.lease(peer, now).is_some()
    }

    /// Peers other than `except` with a live lease at an address on `ip`. Looks only at the
    /// leases on that IP (see `by_ip`), not the whole table.
    pub fn live_peers_at(&self, ip: IpAddr, except: &PeerId, now: Instant) -> usize {
        let Some(peers) = self.by_ip.get(&ip.to_canonical()) else { return 0 };
        peers.iter().filter(|p| *p != except && self.lease(p, now).is_some()).count()
    }

    fn unindex_ip(&mut self, ip: IpAddr, peer: &PeerId) {
        let ip = ip.to_canonical();
        if let Some(peers) = self.by_ip.get_mut(&ip) {
            peers.remove(peer);
            if peers.is_empty() {
                self.by_ip.remove(&ip);
            }
        }
    }

    /// Peers holding a lease, including ones that ran out but were not swept yet.
    pub fn len(&self) -> usize {
        self.by_peer.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_peer.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn peer(n: u8) -> PeerId {
        PeerId::from_array([n; 32])
    }

    fn addr() -> SocketAddr {
        "127.0.0.1:9000".parse().unwrap()
    }

    fn outcome(came_online: bool, was_source: bool, is_source: bool) -> AnnounceOutcome {
        AnnounceOutcome { came_online, was_source, is_source }
    }

    fn gone(n: u8, was_source: bool) -> Departed {
        Departed { peer: peer(n), was_source }
    }

    #[test]
    fn lease_runs_out_without_heartbeats_and_heartbeats_keep_it() {
        let t0 = Instant::now();
        let mut p = Presence::new(Duration::from_secs(90));
        assert_eq!(p.announce(peer(1), addr(), 4, true, "a".into(), t0), outcome(true, false, true));
        p.announce(peer(2), addr(), 4, true, "b".into(), t0);
        let t60 = t0 + Duration::from_secs(60);
        assert_eq!(p.heartbeat("a", 3, t60), Some(peer(1)));
        let t100 = t0 + Duration::from_secs(100);
        assert!(p.is_online(&peer(1), t100));
        assert!(!p.is_online(&peer(2), t100), "peer 2 never beat");
        assert_eq!(p.heartbeat("b", 3, t100), None, "an expired lease cannot be renewed");
        assert_eq!(p.expire(t100), vec![gone(2, true)]);
        assert_eq!(p.len(), 1);
        assert_eq!(p.lease(&peer(1), t100).map(|l| l.free_upload_slots), Some(3));
    }

    #[test]
    fn a_peer_taken_offline_by_id_loses_its_token_and_reports_whether_it_was_a_source() {
        let t0 = Instant::now();
        let mut p = Presence::new(Duration::from_secs(90));
        p.announce(peer(1), addr(), 4, true, "a".into(), t0);
        p.announce(peer(2), addr(), 4, false, "b".into(), t0);
        assert_eq!(p.live(t0).count(), 2);
        assert_eq!(p.leave_peer(&peer(1)), Some(gone(1, true)));
        assert_eq!(p.peer_of("a", t0), None);
        assert_eq!(p.leave_peer(&peer(1)), None);
        assert_eq!(p.leave_peer(&peer(2)), Some(gone(2, false)));
        assert!(p.is_empty() && p.by_ip.is_empty());
        assert_eq!(p.live(t0).count(), 0);
    }

    #[test]
    fn a_new_announce_voids_the_old_token() {
        let t0 = Instant::now();
        let mut p = Presence::new(Duration::from_secs(90));
        p.announce(peer(1), addr(), 4, true, "old".into(), t0);
        assert_eq!(p.announce(peer(1), addr(), 4, true, "new".into(), t0), outcome(false, true, true));
        assert_eq!(p.peer_of("old", t0), None);
        assert_eq!(p.peer_of("new", t0), Some(peer(1)));
    }

    #[test]
    fn leave_is_immediate_and_coming_back_is_coming_online() {
        let t0 = Instant::now();
        let mut p = Presence::new(Duration::from_secs(90));
        p.announce(peer(1), addr(), 4, true, "a".into(), t0);
        assert_eq!(p.leave("a"), Some(gone(1, true)));
        assert!(!p.is_online(&peer(1), t0));
        assert_eq!(p.leave("a"), None);
        assert_eq!(p.announce(peer(1), addr(), 4, true, "b".into(), t0), outcome(true, false, true));
    }

    #[test]
    fn an_expired_but_unswept_peer_comes_online_again_and_still_counted() {
        // Its files were never taken out of the counts (no sweep), so they must not be added
        // twice: `was_source` says they are still in.
        let t0 = Instant::now();
        let mut p = Presence::new(Duration::from_secs(10));
        p.announce(peer(1), addr(), 4, true, "a".into(), t0);
        let later = t0 + Duration::from_secs(11);
        assert_eq!(p.announce(peer(1), addr(), 4, true, "b".into(), later), outcome(true, true, true));
        assert!(p.expire(later).is_empty());
    }

    #[test]
    fn leaving_after_the_lease_ran_out_but_before_the_sweep_still_reports_the_source() {
        let t0 = Instant::now();
        let mut p = Presence::new(Duration::from_secs(10));
        p.announce(peer(1), addr(), 4, true, "a".into(), t0);
        assert_eq!(p.leave("a"), Some(gone(1, true)));
        assert!(p.expire(t0 + Duration::from_secs(11)).is_empty(), "reported once, not twice");
    }

    #[test]
    fn an_unreachable_peer_has_a_session_but_is_no_source_until_it_passes_the_check() {
        let t0 = Instant::now();
        let mut p = Presence::new(Duration::from_secs(90));
        assert_eq!(p.announce(peer(1), addr(), 4, false, "a".into(), t0), outcome(true, false, false));
        assert!(p.is_online(&peer(1), t0));
        assert_eq!(p.session("a", t0), Some((peer(1), false)));
        assert!(p.source(&peer(1), t0).is_none());
        assert_eq!(p.heartbeat("a", 2, t0), Some(peer(1)), "heartbeats work without reachability");
        assert!(p.source(&peer(1), t0).is_none(), "a heartbeat proves nothing about the address");

        // Passing the check on a later Announce makes it a source, and failing again undoes it.
        assert_eq!(p.announce(peer(1), addr(), 4, true, "b".into(), t0), outcome(false, false, true));
        assert_eq!(p.session("b", t0), Some((peer(1), true)));
        assert!(p.source(&peer(1), t0).is_some());
        assert_eq!(p.announce(peer(1), addr(), 4, false, "c".into(), t0), outcome(false, true, false));
        assert!(p.source(&peer(1), t0).is_none());

        // Expiry and leave report whether the files were counted.
        p.announce(peer(2), addr(), 4, true, "d".into(), t0);
        let mut expired = p.expire(t0 + Duration::from_secs(91));
        expired.sort_by_key(|d| d.peer);
        assert_eq!(expired, vec![gone(1, false), gone(2, true)]);
        p.announce(peer(3), addr(), 4, false, "e".into(), t0);
        assert_eq!(p.leave("e"), Some(gone(3, false)));
    }

    #[test]
    fn peers_per_ip_follow_announces_moves_leaves_and_expiry() {
        let t0 = Instant::now();
        let lease = Duration::from_secs(60);
        let mut p = Presence::new(lease);
        let at = |ip: &str| SocketAddr::new(ip.parse().unwrap(), 9000);
        let home: IpAddr = "10.0.0.1".parse().unwrap();
        let nobody = peer(99);
        p.announce(peer(1), at("10.0.0.1"), 0, true, "t1".into(), t0);
        p.announce(peer(2), at("10.0.0.1"), 0, true, "t2".into(), t0);
        p.announce(peer(3), at("10.0.0.2"), 0, true, "t3".into(), t0);
        assert_eq!(p.live_peers_at(home, &nobody, t0), 2);
        assert_eq!(p.live_peers_at(home, &peer(1), t0), 1, "the asking peer is not counted");
        // The same IP written as an IPv4-mapped IPv6 address.
        assert_eq!(p.live_peers_at("::ffff:10.0.0.1".parse().unwrap(), &nobody, t0), 2);

        // Peer 2 moves to another address; peer 1 leaves.
        p.announce(peer(2), at("10.0.0.2"), 0, true, "t2b".into(), t0);
        assert_eq!(p.live_peers_at(home, &nobody, t0), 1);
        p.leave("t1");
        assert_eq!(p.live_peers_at(home, &nobody, t0), 0);
        assert!(!p.by_ip.contains_key(&home), "an emptied IP leaves the index");

        // A lease that ran out stops counting at once, and leaves the index when swept.
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(p.live_peers_at(other, &nobody, t0), 2);
        p.heartbeat("t3", 0, t0 + lease / 2);
        assert_eq!(p.live_peers_at(other, &nobody, t0 + lease), 1);
        p.expire(t0 + lease);
        assert_eq!(p.by_ip.get(&other).map(HashSet::len), Some(1));
    }

    #[derive(Clone, Debug)]
    enum Op {
        Announce(u8, u64),
        Heartbeat(u8, u64),
        Leave(u8),
        Expire(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        // Times in seconds, in any order: the bound must hold even if `now` goes backwards.
        prop_oneof![
            (0..6u8, 0..400u64).prop_map(|(n, t)| Op::Announce(n, t)),
            (0..6u8, 0..400u64).prop_map(|(n, t)| Op::Heartbeat(n, t)),
            (0..6u8).prop_map(Op::Leave),
            (0..400u64).prop_map(Op::Expire),
        ]
    }

    proptest! {
        /// `expire` skips its scan while no lease can have run out; it must still return
        /// exactly what a scan of the whole table would.
        #[test]
        fn expire_finds_exactly_the_leases_a_full_scan_finds_and_the_counts_follow(ops in proptest::collection::vec(op(), 1..60)) {
            let (t0, lease) = (Instant::now(), Duration::from_secs(90));
            let at = |s: u64| t0 + Duration::from_secs(s);
            let mut p = Presence::new(lease);
            // The model: peer → (token, expires).
            let mut model: HashMap<u8, (String, Instant)> = HashMap::new();
            for (i, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Announce(n, t) => {
                        let token = format!("{n}-{i}");
                        let reach = [Reach::Direct, Reach::Introduced, Reach::Relayed, Reach::Unreachable][i % 4];
                        p.announce(peer(n), addr(), 1, reach, token.clone(), at(t));
                        model.insert(n, (token, at(t) + lease));
                    }
                    Op::Heartbeat(n, t) => {
                        let Some((token, expires)) = model.get_mut(&n) else { continue };
                        let renewed = p.heartbeat(token, 1, at(t)).is_some();
                        prop_assert_eq!(renewed, *expires > at(t));
                        if renewed {
                            *expires = at(t) + lease;
                        }
                    }
                    Op::Leave(n) => {
                        if let Some((token, _)) = model.remove(&n) {
                            prop_assert!(p.leave(&token).is_some());
                        }
                    }
                    Op::Expire(t) => {
                        let mut got: Vec<PeerId> = p.expire(at(t)).into_iter().map(|d| d.peer).collect();
                        let mut want: Vec<PeerId> =
                            model.iter().filter(|(_, (_, e))| *e <= at(t)).map(|(n, _)| peer(*n)).collect();
                        model.retain(|_, (_, e)| *e > at(t));
                        got.sort();
                        want.sort();
                        prop_assert_eq!(got, want);
                    }
                }
                // The counts by reach follow every lease in and out of the table.
                let counted: u64 =
                    [Reach::Direct, Reach::Introduced, Reach::Relayed, Reach::Unreachable].map(|r| p.count(r)).iter().sum();
                prop_assert_eq!(counted, p.len() as u64);
            }
        }
    }
}
