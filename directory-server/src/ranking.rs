//! Source ranking for `Locate`: which online peers to hand an asking peer first.
//!
//! Pure: candidates and the asker's address in, an ordered list out. The order is
//! 1. same public IP as the asker (same LAN behind one NAT: fastest, free);
//! 2. same network prefix (/24 for IPv4, /48 for IPv6);
//! 3. reached directly, then through an introduction (a punch costs a round trip to the
//!    directory and may fail), then through the relay (it adds a hop and is capped);
//! 4. complete copies before partial ones;
//! 5. more free upload slots;
//! 6. most recently heard from;
//!
//! and finally the peer id, so the answer is deterministic.

use std::cmp::Reverse;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use quaver_shared::PeerId;

pub use crate::presence::Reach;

#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    pub peer: PeerId,
    /// The address Locate hands out; its IP decides closeness.
    pub address: SocketAddr,
    pub complete: bool,
    pub free_upload_slots: u32,
    pub since_last_seen: Duration,
    /// How it is reached: directly, through an introduction (hole punching) or the relay.
    pub reach: Reach,
    /// Its private address, handed instead to an asker behind the same public IP.
    pub local: Option<SocketAddr>,
}

/// How close two addresses are: 2 same IP, 1 same prefix, 0 otherwise.
fn closeness(asker: Option<IpAddr>, ip: IpAddr) -> u8 {
    let Some(asker) = asker else { return 0 };
    if asker == ip {
        return 2;
    }
    let same_prefix = match (asker, ip) {
        (IpAddr::V4(a), IpAddr::V4(b)) => a.octets()[..3] == b.octets()[..3],
        (IpAddr::V6(a), IpAddr::V6(b)) => a.octets()[..6] == b.octets()[..6],
        _ => false,
    };
    u8::from(same_prefix)
}

/// Orders candidates best first and keeps at most `max`.
pub fn rank(asker: Option<IpAddr>, mut candidates: Vec<Candidate>, max: usize) -> Vec<Candidate> {
    let key = |c: &Candidate| {
        (
            Reverse(closeness(asker, c.address.ip())),
            c.reach,
            Reverse(c.complete),
            Reverse(c.free_upload_slots),
            c.since_last_seen,
            c.peer,
        )
    };
    // A popular file has thousands of sources and an answer holds a few dozen: pick the best
    // `max` in linear time, then sort only those, computing each key once.
    if candidates.len() > max {
        candidates.select_nth_unstable_by_key(max, key);
        candidates.truncate(max);
    }
    candidates.sort_by_cached_key(key);
    candidates
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(n: u8, ip: &str, complete: bool, slots: u32, seen_s: u64) -> Candidate {
        Candidate {
            peer: PeerId::from_array([n; 32]),
            address: SocketAddr::new(ip.parse().unwrap(), 4000),
            complete,
            free_upload_slots: slots,
            since_last_seen: Duration::from_secs(seen_s),
            reach: Reach::Direct,
            local: None,
        }
    }

    fn order(asker: Option<&str>, c: Vec<Candidate>, max: usize) -> Vec<u8> {
        rank(asker.map(|a| a.parse().unwrap()), c, max).iter().map(|c| c.peer.as_bytes()[0]).collect()
    }

    #[test]
    fn a_source_dialled_directly_comes_before_one_that_needs_an_introduction() {
        let punched = Candidate { reach: Reach::Introduced, ..cand(1, "198.18.0.11", true, 9, 0) };
        let direct = cand(2, "203.0.113.7", false, 0, 60);
        let relayed = Candidate { reach: Reach::Relayed, ..cand(3, "198.51.100.4", true, 9, 0) };
        let all = vec![relayed.clone(), punched.clone(), direct.clone()];
        assert_eq!(order(Some("192.0.2.5"), all, 10), [2, 1, 3]);
        // Closeness still comes first: a neighbour behind NAT beats a direct stranger.
        assert_eq!(order(Some("198.18.0.99"), vec![direct, punched], 10), [1, 2]);
    }

    #[test]
    fn same_ip_then_prefix_then_completeness_slots_and_freshness() {
        let c = vec![
            cand(1, "9.9.9.9", true, 10, 0),
            cand(2, "1.2.3.4", false, 0, 60),
            cand(3, "1.2.3.99", true, 0, 0),
            cand(4, "8.8.8.8", false, 10, 0),
            cand(5, "7.7.7.7", true, 10, 20),
        ];
        assert_eq!(order(Some("1.2.3.4"), c.clone(), 10), vec![2, 3, 1, 5, 4]);
        assert_eq!(order(None, c.clone(), 2), vec![1, 5]);
    }

    #[test]
    fn ipv6_prefix_is_48_bits() {
        let c = vec![cand(1, "2001:db8:1::1", true, 0, 0), cand(2, "2001:db8:2::1", true, 5, 0)];
        assert_eq!(order(Some("2001:db8:1::7"), c, 10), vec![1, 2]);
    }
}
