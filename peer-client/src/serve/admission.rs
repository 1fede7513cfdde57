//! Who may take what from the server: connections, request streams and upload slots, counted
//! per remote address and in total. Sans-IO: plain counters, durations passed in by the caller;
//! the tokio layer ([`super::gate`]) holds them behind a lock and turns verdicts into QUIC
//! actions.
//!
//! Per address and per `PeerId`: a client may prove its node key in the handshake
//! ([`crate::tls::peer_id_of`]; every quaver node does), and then its streams and slots count
//! against both its address and its id, so one peer cannot take more by coming from several
//! addresses, and several peers behind one NAT are each bounded too. A client that proves no
//! key is counted by its address alone. An address stands for one host, or one IPv6 /64 (what
//! one subscriber gets), so a peer cannot escape its share by hopping through the addresses of
//! its own prefix. Connections are counted by address only: the id is known after the
//! handshake, and a node key costs nothing to make, so the address is what bounds them.
//!
//! The policy:
//! - **Connections**: at most `connections_per_ip` from one address and `connections` in all.
//!   One honest peer needs one connection to us; the bounds leave room for a few behind one
//!   NAT while keeping the memory of open connections (about 66 KiB each) bounded. Past half
//!   of either bound, a connection from an address QUIC has not validated is asked to prove it
//!   (a Retry) before it is counted, so spoofed packets cannot fill another address's share.
//! - **Streams**: at most `streams_per_ip` request streams in progress from one address (and
//!   `streams_per_peer` from one proven `PeerId`) and `streams` in all, whatever connections
//!   they come on.
//! - **Upload slots**: at most `slots_per_ip` of the `slots` from one address, and as many from
//!   one proven `PeerId`, so one peer (or one that never reads what it asked for) leaves slots
//!   to the others. A peer refused for its
//!   own share gets its own queue position and wait, and does not lengthen the queue others
//!   are told about.
//!
//! A later queue with positions and rarity ranking belongs here: every decision about who is
//! served is made in this module.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use quaver_shared::PeerId;

/// What one upload is assumed to take before any has finished.
const INITIAL_HOLD: Duration = Duration::from_millis(500);
/// Bounds of the wait told to a BUSY asker: not so short that it hammers us, not so long that
/// it gives up on a source that frees up quickly.
const MIN_WAIT: Duration = Duration::from_millis(50);
const MAX_WAIT: Duration = Duration::from_secs(60);

/// Connections from one address: a few peers behind one NAT, each with its one connection.
const CONNECTIONS_PER_IP: usize = 32;
/// Connections in all: about 66 MiB of connection state at most.
const CONNECTIONS: usize = 1024;
/// Request streams in progress from one address: one connection's worth of streams (see
/// `MAX_CONCURRENT_STREAMS` in `quaver_shared::tls`), many times what a downloader keeps in
/// flight to one source (its window is at most 32 blocks).
const STREAMS_PER_IP: usize = 256;
/// Request streams in progress in all: each is a task and a few KiB.
const STREAMS: usize = 4096;

/// The bounds of one server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Limits {
    pub slots: usize,
    pub slots_per_ip: usize,
    pub slots_per_peer: usize,
    pub connections: usize,
    pub connections_per_ip: usize,
    pub streams: usize,
    pub streams_per_ip: usize,
    pub streams_per_peer: usize,
}

impl Limits {
    /// The bounds for a server with `slots` upload slots: one address, and one peer, may take
    /// half of them (rounded up, so a one-slot server still serves), the other half stays for
    /// everyone else.
    pub fn for_slots(slots: usize) -> Self {
        let half = slots.div_ceil(2).max(1);
        Self {
            slots,
            slots_per_ip: half,
            slots_per_peer: half,
            connections: CONNECTIONS,
            connections_per_ip: CONNECTIONS_PER_IP,
            streams: STREAMS,
            streams_per_ip: STREAMS_PER_IP,
            streams_per_peer: STREAMS_PER_IP,
        }
    }
}

/// The unit the per-address bounds count: an IPv4 address, or an IPv6 /64 (an IPv4-mapped
/// IPv6 address is its IPv4 address).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct IpGroup(IpAddr);

impl IpGroup {
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Self(ip),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self(IpAddr::V4(v4)),
                None => Self(IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !u128::from(u64::MAX)))),
            },
        }
    }
}

impl std::fmt::Display for IpGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// Who asks for a stream or a slot: the address it came from and, when the client proved one in
/// its handshake, its `PeerId`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Asker {
    pub ip: IpGroup,
    pub peer: Option<PeerId>,
}

impl From<IpGroup> for Asker {
    fn from(ip: IpGroup) -> Self {
        Asker { ip, peer: None }
    }
}

/// What to do with a new connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ConnectionVerdict {
    /// Counted: serve it, and call [`Admission::connection_closed`] when it ends.
    Admit,
    /// Not counted: ask the client to prove its address first (a QUIC Retry).
    Validate,
    /// Not counted: refuse it.
    Refuse(Refusal),
}

/// Why a connection or stream was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(super) enum Refusal {
    #[error("too many connections in all")]
    Connections,
    #[error("too many connections from this address")]
    ConnectionsFromIp,
    #[error("too many requests in progress in all")]
    Streams,
    #[error("too many requests in progress from this address")]
    StreamsFromIp,
    #[error("too many requests in progress from this peer")]
    StreamsFromPeer,
}

/// The answer to a request that may not take a slot now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Busy {
    pub queue_position: u32,
    pub estimated_wait: Duration,
}

/// What one address holds.
#[derive(Debug, Default)]
struct Usage {
    connections: usize,
    streams: usize,
    slots: usize,
    /// Times this address was refused for its own share since it last held no slot: its own
    /// virtual queue.
    queued: u32,
}

impl Usage {
    fn is_idle(&self) -> bool {
        self.connections == 0 && self.streams == 0 && self.slots == 0
    }
}

/// The counts behind every admission decision.
#[derive(Debug)]
pub(super) struct Admission {
    limits: Limits,
    connections: usize,
    streams: usize,
    slots: usize,
    /// Askers told BUSY because every slot was taken, since the slots were last all free: a
    /// virtual queue. We keep no waiters; the count only staggers their retries (position n is
    /// told n slot-times) so they don't all come back at once.
    queued: u32,
    /// Moving average of how long an upload holds its slot.
    avg_hold: Duration,
    /// Only addresses holding something (an idle one is removed), so the map is bounded by the
    /// connection and stream bounds.
    by_ip: HashMap<IpGroup, Usage>,
    /// The same for proven `PeerId`s (streams and slots; connections are counted by address).
    by_peer: HashMap<PeerId, Usage>,
}

impl Admission {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            connections: 0,
            streams: 0,
            slots: 0,
            queued: 0,
            avg_hold: INITIAL_HOLD,
            by_ip: HashMap::new(),
            by_peer: HashMap::new(),
        }
    }

    fn forget_if_idle(&mut self, ip: IpGroup) {
        if self.by_ip.get(&ip).is_some_and(Usage::is_idle) {
            self.by_ip.remove(&ip);
        }
    }

    fn forget_peer_if_idle(&mut self, peer: Option<PeerId>) {
        if let Some(peer) = peer
            && self.by_peer.get(&peer).is_some_and(Usage::is_idle)
        {
            self.by_peer.remove(&peer);
        }
    }

    /// A connection attempt from `ip`; `validated` says whether QUIC already proved the client
    /// receives at that address (it answered a Retry).
    pub fn connection(&mut self, ip: IpGroup, validated: bool) -> ConnectionVerdict {
        let from_ip = self.by_ip.get(&ip).map_or(0, |u| u.connections);
        if self.connections >= self.limits.connections {
            return ConnectionVerdict::Refuse(Refusal::Connections);
        }
        if from_ip >= self.limits.connections_per_ip {
            return ConnectionVerdict::Refuse(Refusal::ConnectionsFromIp);
        }
        let crowded =
            from_ip * 2 >= self.limits.connections_per_ip || self.connections * 2 >= self.limits.connections;
        if crowded && !validated {
            return ConnectionVerdict::Validate;
        }
        self.connections += 1;
        self.by_ip.entry(ip).or_default().connections += 1;
        ConnectionVerdict::Admit
    }

    pub fn connection_closed(&mut self, ip: IpGroup) {
        self.connections = self.connections.saturating_sub(1);
        if let Some(u) = self.by_ip.get_mut(&ip) {
            u.connections = u.connections.saturating_sub(1);
        }
        self.forget_if_idle(ip);
    }

    /// A request stream opened by `who`: counted, or refused.
    pub fn stream(&mut self, who: impl Into<Asker>) -> Result<(), Refusal> {
        let who = who.into();
        if self.streams >= self.limits.streams {
            return Err(Refusal::Streams);
        }
        if self.by_ip.get(&who.ip).is_some_and(|u| u.streams >= self.limits.streams_per_ip) {
            return Err(Refusal::StreamsFromIp);
        }
        let peer_streams = who.peer.and_then(|p| self.by_peer.get(&p)).map_or(0, |u| u.streams);
        if peer_streams >= self.limits.streams_per_peer {
            return Err(Refusal::StreamsFromPeer);
        }
        self.streams += 1;
        self.by_ip.entry(who.ip).or_default().streams += 1;
        if let Some(peer) = who.peer {
            self.by_peer.entry(peer).or_default().streams += 1;
        }
        Ok(())
    }

    pub fn stream_closed(&mut self, who: impl Into<Asker>) {
        let who = who.into();
        self.streams = self.streams.saturating_sub(1);
        for usage in self.usages_mut(who) {
            usage.streams = usage.streams.saturating_sub(1);
        }
        self.forget_if_idle(who.ip);
        self.forget_peer_if_idle(who.peer);
    }

    /// What `who`'s address and peer hold (those known).
    fn usages_mut(&mut self, who: Asker) -> impl Iterator<Item = &mut Usage> {
        let peer = who.peer.and_then(|p| self.by_peer.get_mut(&p));
        self.by_ip.get_mut(&who.ip).into_iter().chain(peer)
    }

    /// An upload slot for `who`, or the BUSY answer: first its address's share, then its
    /// peer's, then the total.
    pub fn slot(&mut self, who: impl Into<Asker>) -> Result<(), Busy> {
        let who = who.into();
        let (limits, avg_hold) = (self.limits, self.avg_hold);
        let held = self.by_ip.get(&who.ip).map_or(0, |u| u.slots);
        if held >= limits.slots_per_ip {
            // It waits for one of its own uploads to end, not for everyone's.
            let usage = self.by_ip.entry(who.ip).or_default();
            usage.queued = usage.queued.saturating_add(1);
            return Err(busy(usage.queued, avg_hold, limits.slots_per_ip));
        }
        if let Some(peer) = who.peer
            && self.by_peer.get(&peer).is_some_and(|u| u.slots >= limits.slots_per_peer)
        {
            // The same for one peer over all its addresses (it holds slots: its entry exists).
            let usage = self.by_peer.entry(peer).or_default();
            usage.queued = usage.queued.saturating_add(1);
            return Err(busy(usage.queued, avg_hold, limits.slots_per_peer));
        }
        if self.slots >= limits.slots {
            self.queued = self.queued.saturating_add(1);
            return Err(busy(self.queued, avg_hold, limits.slots));
        }
        self.by_ip.entry(who.ip).or_default();
        if let Some(peer) = who.peer {
            self.by_peer.entry(peer).or_default();
        }
        for usage in self.usages_mut(who) {
            usage.slots += 1;
            usage.queued = usage.queued.saturating_sub(1);
        }
        self.slots += 1;
        // Whoever takes a slot leaves the virtual queue (or jumped it; either way one fewer is
        // waiting ahead of the next asker).
        self.queued = self.queued.saturating_sub(1);
        Ok(())
    }

    /// A slot of `who`'s was given back after being held for `held`.
    pub fn slot_released(&mut self, who: impl Into<Asker>, held: Duration) {
        let who = who.into();
        self.slots = self.slots.saturating_sub(1);
        for u in self.usages_mut(who) {
            u.slots = u.slots.saturating_sub(1);
            if u.slots == 0 {
                u.queued = 0;
            }
        }
        self.forget_if_idle(who.ip);
        self.forget_peer_if_idle(who.peer);
        // avg = 7/8 avg + 1/8 sample: smooth enough to ignore one odd upload, quick enough to
        // follow a change of link speed within a few dozen uploads.
        self.avg_hold = (self.avg_hold * 7 + held) / 8;
        if self.slots == 0 {
            // Nothing is uploading, so nobody is really waiting for us any more.
            self.queued = 0;
        }
    }

    /// `(free_slots, queue_len)` for a `Status` answer.
    pub fn status(&self) -> (u32, u32) {
        let free = self.limits.slots.saturating_sub(self.slots);
        (u32::try_from(free).unwrap_or(u32::MAX), self.queued)
    }
}

/// Position `position` in a queue served by `slots` uploads of `avg_hold` each: a slot frees
/// about every `avg_hold / slots`.
fn busy(position: u32, avg_hold: Duration, slots: usize) -> Busy {
    let per_slot = avg_hold / u32::try_from(slots.max(1)).unwrap_or(u32::MAX);
    let wait = per_slot.saturating_mul(position).clamp(MIN_WAIT, MAX_WAIT);
    Busy { queue_position: position, estimated_wait: wait }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn ip(last: u8) -> IpGroup {
        IpGroup::of(IpAddr::V4(Ipv4Addr::new(10, 0, 0, last)))
    }

    fn limits(slots: usize) -> Limits {
        Limits {
            connections: 6,
            connections_per_ip: 4,
            streams: 5,
            streams_per_ip: 3,
            ..Limits::for_slots(slots)
        }
    }

    #[test]
    fn an_ipv6_address_counts_as_its_slash_64_and_a_mapped_ipv4_as_the_ipv4() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(IpGroup::of(a), IpGroup::of(b));
        assert_ne!(IpGroup::of(a), IpGroup::of(other));
        assert_eq!(IpGroup::of(a).to_string(), "2001:db8:1:2::/64");
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(IpGroup::of(mapped), ip(1));
    }

    #[test]
    fn one_address_gets_half_the_slots_and_the_rest_stay_for_others() {
        let mut a = Admission::new(limits(8));
        for _ in 0..4 {
            a.slot(ip(1)).unwrap();
        }
        let own = a.slot(ip(1)).unwrap_err();
        let own_again = a.slot(ip(1)).unwrap_err();
        assert_eq!((own.queue_position, own_again.queue_position), (1, 2));
        assert!(own.estimated_wait < own_again.estimated_wait);
        // Its refusals are its own queue: the server's stays empty, and others still get in.
        assert_eq!(a.status(), (4, 0));
        for _ in 0..4 {
            a.slot(ip(2)).unwrap();
        }
        assert_eq!(a.slot(ip(3)).unwrap_err().queue_position, 1, "every slot taken");
        assert_eq!(a.status(), (0, 1));
        a.slot_released(ip(1), Duration::from_millis(100));
        a.slot(ip(3)).unwrap();
        assert_eq!(a.status(), (0, 0));
    }

    #[test]
    fn a_one_slot_server_still_serves_and_zero_slots_is_always_busy_with_a_bounded_wait() {
        let mut one = Admission::new(limits(1));
        one.slot(ip(1)).unwrap();
        assert!(one.slot(ip(2)).is_err());
        let mut none = Admission::new(limits(0));
        for n in 1..=10_000 {
            let busy = none.slot(ip(1)).unwrap_err();
            assert_eq!(busy.queue_position, n);
            assert!(busy.estimated_wait <= MAX_WAIT);
        }
        assert_eq!(none.status(), (0, 10_000));
        assert!(none.by_ip.is_empty(), "a refused address holding nothing is not remembered");
    }

    #[test]
    fn busy_waits_follow_how_long_uploads_hold_their_slots() {
        let mut a = Admission::new(limits(2));
        a.slot(ip(1)).unwrap();
        a.slot(ip(2)).unwrap();
        let before = a.slot(ip(3)).unwrap_err().estimated_wait;
        // Long uploads: the average hold grows, so the next asker is told to wait longer.
        for _ in 0..8 {
            a.slot_released(ip(1), Duration::from_secs(10));
            a.slot(ip(1)).unwrap();
        }
        let after = a.slot(ip(3)).unwrap_err().estimated_wait;
        assert!(after > before * 4, "{before:?} -> {after:?}");
        // All slots free again: the queue is forgotten, and so are the addresses.
        a.slot_released(ip(1), Duration::ZERO);
        a.slot_released(ip(2), Duration::ZERO);
        assert_eq!(a.status(), (2, 0));
        assert!(a.by_ip.is_empty(), "{:?}", a.by_ip);
    }

    #[test]
    fn connections_are_bounded_per_address_and_in_all_and_crowded_ones_must_prove_their_address() {
        let mut a = Admission::new(limits(8));
        assert_eq!(a.connection(ip(1), false), ConnectionVerdict::Admit);
        assert_eq!(a.connection(ip(1), false), ConnectionVerdict::Admit);
        // Half of the per-address bound used: the next one from there is asked for a Retry.
        assert_eq!(a.connection(ip(1), false), ConnectionVerdict::Validate);
        assert_eq!(a.connection(ip(1), true), ConnectionVerdict::Admit);
        assert_eq!(a.connection(ip(1), true), ConnectionVerdict::Admit);
        assert_eq!(a.connection(ip(1), true), ConnectionVerdict::Refuse(Refusal::ConnectionsFromIp));
        // Four of six in all: past half, newcomers prove their address too.
        assert_eq!(a.connection(ip(2), false), ConnectionVerdict::Validate);
        assert_eq!(a.connection(ip(2), true), ConnectionVerdict::Admit);
        assert_eq!(a.connection(ip(3), true), ConnectionVerdict::Admit);
        assert_eq!(a.connection(ip(4), true), ConnectionVerdict::Refuse(Refusal::Connections));
        // A closed connection makes room.
        a.connection_closed(ip(1));
        assert_eq!(a.connection(ip(4), true), ConnectionVerdict::Admit);
    }

    #[test]
    fn streams_are_bounded_per_address_and_in_all() {
        let mut a = Admission::new(limits(8));
        for _ in 0..3 {
            a.stream(ip(1)).unwrap();
        }
        assert_eq!(a.stream(ip(1)), Err(Refusal::StreamsFromIp));
        a.stream(ip(2)).unwrap();
        a.stream(ip(2)).unwrap();
        assert_eq!(a.stream(ip(3)), Err(Refusal::Streams));
        a.stream_closed(ip(1));
        a.stream(ip(3)).unwrap();
        assert_eq!(a.stream(ip(1)), Err(Refusal::Streams));
    }

    fn peer(n: u8) -> Option<PeerId> {
        Some(PeerId::from_slice(&[n; 32]).unwrap())
    }

    #[test]
    fn one_peer_gets_half_the_slots_over_all_its_addresses_and_peers_behind_one_address_share_it() {
        let mut a = Admission::new(limits(8));
        let roaming = |n| Asker { ip: ip(n), peer: peer(1) };
        a.slot(roaming(1)).unwrap();
        a.slot(roaming(1)).unwrap();
        a.slot(roaming(2)).unwrap();
        a.slot(roaming(3)).unwrap();
        let refused = a.slot(roaming(4)).unwrap_err();
        assert_eq!(refused.queue_position, 1, "its own queue");
        assert_eq!(a.status(), (4, 0), "the server's queue is untouched, half the slots stay free");
        // Two peers behind one NAT: the address's share bounds them together.
        let behind = |p| Asker { ip: ip(9), peer: peer(p) };
        for p in [2, 3, 2, 3] {
            a.slot(behind(p)).unwrap();
        }
        assert!(a.slot(behind(4)).is_err(), "the address holds its share");
        a.slot_released(roaming(2), Duration::from_millis(10));
        a.slot(roaming(4)).unwrap();
        for who in
            [roaming(1), roaming(1), roaming(3), roaming(4), behind(2), behind(3), behind(2), behind(3)]
        {
            a.slot_released(who, Duration::from_millis(10));
        }
        assert!(a.by_ip.is_empty() && a.by_peer.is_empty(), "{:?} {:?}", a.by_ip, a.by_peer);
    }

    #[test]
    fn streams_are_bounded_per_peer_over_its_addresses() {
        let mut a = Admission::new(Limits { streams_per_peer: 2, ..limits(8) });
        a.stream(Asker { ip: ip(1), peer: peer(1) }).unwrap();
        a.stream(Asker { ip: ip(2), peer: peer(1) }).unwrap();
        assert_eq!(a.stream(Asker { ip: ip(3), peer: peer(1) }), Err(Refusal::StreamsFromPeer));
        a.stream(Asker { ip: ip(3), peer: peer(2) }).unwrap();
        a.stream_closed(Asker { ip: ip(2), peer: peer(1) });
        a.stream(Asker { ip: ip(3), peer: peer(1) }).unwrap();
    }

    #[test]
    fn closing_everything_leaves_no_trace_of_an_address() {
        let mut a = Admission::new(limits(8));
        assert_eq!(a.connection(ip(9), true), ConnectionVerdict::Admit);
        a.stream(ip(9)).unwrap();
        a.slot(ip(9)).unwrap();
        a.slot_released(ip(9), Duration::from_millis(1));
        a.stream_closed(ip(9));
        assert!(!a.by_ip.is_empty());
        a.connection_closed(ip(9));
        assert!(a.by_ip.is_empty());
        assert_eq!((a.connections, a.streams, a.slots), (0, 0, 0));
    }
}
