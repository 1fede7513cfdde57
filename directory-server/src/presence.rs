//! Leases: which peers are online right now, and the session tokens that prove it.
//!
//! A sans-IO state machine: time comes in as an `Instant` argument, nothing here sleeps, spawns
//! or touches storage, so every rule is tested deterministically below. The directory calls
//! `expire` from a timer and applies what it returns.
//!
//! Invariants: a peer has at most one live token; a token maps to exactly one online peer; a
//! peer whose lease has run out is not online for `is_online`/`lease`, even before `expire`
//! has swept it.

use std::collections::HashMap;
use std::net::SocketAddr;
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
}

pub struct Presence {
    lease: Duration,
    by_peer: HashMap<PeerId, Lease>,
    by_token: HashMap<Token, PeerId>,
}

/// What `announce` did.
#[derive(Debug, PartialEq, Eq)]
pub enum AnnounceOutcome {
    /// The peer was offline and is now online.
    CameOnline,
    /// The peer already had a live lease; its old token is void.
    Renewed,
}

impl Presence {
    pub fn new(lease: Duration) -> Self {
        Self { lease, by_peer: HashMap::new(), by_token: HashMap::new() }
    }

    pub fn lease_length(&self) -> Duration {
        self.lease
    }

    /// Starts a session: a new token and a fresh lease. A previous token of the peer is void.
    pub fn announce(
        &mut self,
        peer: PeerId,
        address: SocketAddr,
        free_upload_slots: u32,
        token: Token,
        now: Instant,
    ) -> AnnounceOutcome {
        let lease = Lease {
            token: token.clone(),
            address,
            expires: now + self.lease,
            last_seen: now,
            free_upload_slots,
        };
        self.by_token.insert(token, peer);
        match self.by_peer.insert(peer, lease) {
            Some(old) => {
                self.by_token.remove(&old.token);
                if old.expires > now { AnnounceOutcome::Renewed } else { AnnounceOutcome::CameOnline }
            }
            None => AnnounceOutcome::CameOnline,
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
        let lease = self.by_peer.get_mut(&peer)?;
        lease.expires = now + self.lease;
        lease.last_seen = now;
        lease.free_upload_slots = free_upload_slots;
        Some(peer)
    }

    /// Ends a session at once. Returns the peer if it was online.
    pub fn leave(&mut self, token: &str, now: Instant) -> Option<PeerId> {
        let peer = self.by_token.remove(token)?;
        let lease = self.by_peer.remove(&peer)?;
        (lease.expires > now).then_some(peer)
    }

    /// Removes every lease that has run out and returns the peers that went offline.
    pub fn expire(&mut self, now: Instant) -> Vec<PeerId> {
        let expired: Vec<PeerId> =
            self.by_peer.iter().filter(|(_, l)| l.expires <= now).map(|(p, _)| *p).collect();
        for peer in &expired {
            if let Some(lease) = self.by_peer.remove(peer) {
                self.by_token.remove(&lease.token);
            }
        }
        expired
    }

    pub fn lease(&self, peer: &PeerId, now: Instant) -> Option<&Lease> {
        self.by_peer.get(peer).filter(|l| l.expires > now)
    }

    pub fn is_online(&self, peer: &PeerId, now: Instant) -> bool {
        self.lease(peer, now).is_some()
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

    fn peer(n: u8) -> PeerId {
        PeerId::from_array([n; 32])
    }

    fn addr() -> SocketAddr {
        "127.0.0.1:9000".parse().unwrap()
    }

    #[test]
    fn lease_runs_out_without_heartbeats_and_heartbeats_keep_it() {
        let t0 = Instant::now();
        let mut p = Presence::new(Duration::from_secs(90));
        assert_eq!(p.announce(peer(1), addr(), 4, "a".into(), t0), AnnounceOutcome::CameOnline);
        p.announce(peer(2), addr(), 4, "b".into(), t0);
        let t60 = t0 + Duration::from_secs(60);
        assert_eq!(p.heartbeat("a", 3, t60), Some(peer(1)));
        let t100 = t0 + Duration::from_secs(100);
        assert!(p.is_online(&peer(1), t100));
        assert!(!p.is_online(&peer(2), t100), "peer 2 never beat");
        assert_eq!(p.heartbeat("b", 3, t100), None, "an expired lease cannot be renewed");
        assert_eq!(p.expire(t100), vec![peer(2)]);
        assert_eq!(p.len(), 1);
        assert_eq!(p.lease(&peer(1), t100).map(|l| l.free_upload_slots), Some(3));
    }

    #[test]
    fn a_new_announce_voids_the_old_token() {
        let t0 = Instant::now();
        let mut p = Presence::new(Duration::from_secs(90));
        p.announce(peer(1), addr(), 4, "old".into(), t0);
        assert_eq!(p.announce(peer(1), addr(), 4, "new".into(), t0), AnnounceOutcome::Renewed);
        assert_eq!(p.peer_of("old", t0), None);
        assert_eq!(p.peer_of("new", t0), Some(peer(1)));
    }

    #[test]
    fn leave_is_immediate_and_coming_back_is_coming_online() {
        let t0 = Instant::now();
        let mut p = Presence::new(Duration::from_secs(90));
        p.announce(peer(1), addr(), 4, "a".into(), t0);
        assert_eq!(p.leave("a", t0), Some(peer(1)));
        assert!(!p.is_online(&peer(1), t0));
        assert_eq!(p.leave("a", t0), None);
        assert_eq!(p.announce(peer(1), addr(), 4, "b".into(), t0), AnnounceOutcome::CameOnline);
    }

    #[test]
    fn an_expired_but_unswept_peer_comes_online_again() {
        let t0 = Instant::now();
        let mut p = Presence::new(Duration::from_secs(10));
        p.announce(peer(1), addr(), 4, "a".into(), t0);
        let later = t0 + Duration::from_secs(11);
        assert_eq!(p.announce(peer(1), addr(), 4, "b".into(), later), AnnounceOutcome::CameOnline);
        assert!(p.expire(later).is_empty());
    }
}
