//! Operator bans: a PeerId, or an IP range, refused at Announce until a given time.
//!
//! Sans-IO: times are Unix milliseconds passed in (bans outlive restarts, so they are in wall
//! time, not `Instant`s); storage is the catalog's `bans` tree, which the directory keeps in
//! step with this table. A ban that ran out matches nothing, even before anyone removes it.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use quaver_shared::PeerId;

/// Bans held at most: IP bans are matched one by one at every Announce, so the list must stay
/// short; an operator with more needs a firewall.
pub const MAX_BANS: usize = 10_000;
/// A reason longer than this is refused (it is sent to the banned peer and printed by the CLI).
pub const MAX_REASON_BYTES: usize = 256;

/// What a ban refuses.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum BanTarget {
    Peer(PeerId),
    /// An IP range, kept with its host bits cleared (`10.1.2.3/8` is `10.0.0.0/8`).
    Net(IpNet),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BanError {
    #[error(
        "{0:?} is neither a peer id (64 hex digits) nor an IP address or range (10.0.0.0/8, 2001:db8::/32)"
    )]
    BadTarget(String),
    #[error("the reason is {0} bytes; the limit is {MAX_REASON_BYTES}")]
    LongReason(usize),
    #[error("a ban needs a duration of at least one second")]
    NoDuration,
    #[error("{MAX_BANS} bans are in force; lift some first (`quaver-directory bans`, `unban`)")]
    Full,
}

impl BanTarget {
    /// A peer id in hex, an IP address (one host) or an IP range in CIDR notation.
    pub fn parse(text: &str) -> Result<Self, BanError> {
        let text = text.trim();
        if let Ok(peer) = text.parse::<PeerId>() {
            return Ok(Self::Peer(peer));
        }
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Ok(Self::Net(IpNet::from(ip.to_canonical())));
        }
        text.parse::<IpNet>().map(|net| Self::Net(net.trunc())).map_err(|_| BanError::BadTarget(text.into()))
    }

    /// The key of the ban in the catalog's `bans` tree.
    pub fn key(&self) -> Vec<u8> {
        match self {
            Self::Peer(peer) => [b"p".as_slice(), peer.as_bytes()].concat(),
            Self::Net(net) => [b"n".as_slice(), net.to_string().as_bytes()].concat(),
        }
    }

    /// The target of a `bans` tree key; `None` for a key this version did not write.
    pub fn from_key(key: &[u8]) -> Option<Self> {
        match key.split_first()? {
            (b'p', rest) => PeerId::from_slice(rest).ok().map(Self::Peer),
            (b'n', rest) => {
                std::str::from_utf8(rest).ok()?.parse::<IpNet>().ok().map(|n| Self::Net(n.trunc()))
            }
            _ => None,
        }
    }

    /// Whether this target refuses `peer` announcing from `ip`.
    pub fn covers(&self, peer: &PeerId, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        match self {
            Self::Peer(banned) => banned == peer,
            Self::Net(net) => net.contains(&ip),
        }
    }
}

impl fmt::Display for BanTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Peer(peer) => write!(f, "peer {peer}"),
            Self::Net(net) => write!(f, "IP range {net}"),
        }
    }
}

/// One ban in force (or run out, until it is swept).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ban {
    pub target: BanTarget,
    pub until_unix_ms: u64,
    pub created_unix_ms: u64,
    pub reason: String,
}

impl Ban {
    /// A ban of `target` for `seconds` from `now_ms`.
    pub fn new(target: BanTarget, seconds: u64, reason: String, now_ms: u64) -> Result<Self, BanError> {
        if seconds == 0 {
            return Err(BanError::NoDuration);
        }
        if reason.len() > MAX_REASON_BYTES {
            return Err(BanError::LongReason(reason.len()));
        }
        let until_unix_ms = now_ms.saturating_add(seconds.saturating_mul(1000));
        Ok(Self { target, until_unix_ms, created_unix_ms: now_ms, reason })
    }

    pub fn in_force(&self, now_ms: u64) -> bool {
        now_ms < self.until_unix_ms
    }

    /// What a refused peer is told: what is banned, until when, and why.
    pub fn refusal(&self) -> String {
        let reason = if self.reason.is_empty() { String::new() } else { format!(": {}", self.reason) };
        format!("{} is banned from this directory until {}{reason}", self.target, utc(self.until_unix_ms))
    }
}

/// A ban's length as an operator writes it: a whole number with an optional unit, `s`
/// (the default), `m`, `h` or `d` ("90", "30m", "12h", "7d"). In seconds.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: the unit must be s, m, h or d (\"30m\", \"7d\")")),
    };
    let n: u64 =
        number.parse().map_err(|_| format!("{text:?} is not a duration like 90s, 30m, 12h or 7d"))?;
    n.checked_mul(scale).filter(|s| *s > 0).ok_or_else(|| format!("{text:?}: a ban lasts at least 1 s"))
}

/// Unix milliseconds as an RFC 3339 UTC time to the second ("2026-12-07T03:00:00Z").
pub fn utc(unix_ms: u64) -> String {
    let seconds = i64::try_from(unix_ms / 1000).unwrap_or(i64::MAX);
    time::OffsetDateTime::from_unix_timestamp(seconds)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| format!("{unix_ms} ms after 1970"))
}

/// The bans in force, by kind: a PeerId ban is one lookup, IP bans are few and scanned.
#[derive(Default)]
pub struct Bans {
    peers: HashMap<PeerId, Ban>,
    nets: Vec<Ban>,
}

impl Bans {
    /// Adds `ban`, or replaces the one of the same target (a new ban sets a new end, shorter
    /// or longer). Refused when `MAX_BANS` other bans are in force at `now_ms`.
    pub fn insert(&mut self, ban: Ban, now_ms: u64) -> Result<Option<Ban>, BanError> {
        self.expire(now_ms);
        let replaces = match &ban.target {
            BanTarget::Peer(peer) => self.peers.contains_key(peer),
            BanTarget::Net(_) => self.nets.iter().any(|b| b.target == ban.target),
        };
        if !replaces && self.len() >= MAX_BANS {
            return Err(BanError::Full);
        }
        let old = self.remove(&ban.target);
        match &ban.target {
            BanTarget::Peer(peer) => {
                self.peers.insert(*peer, ban);
            }
            BanTarget::Net(_) => self.nets.push(ban),
        }
        Ok(old)
    }

    /// Lifts the ban of `target`, if there is one.
    pub fn remove(&mut self, target: &BanTarget) -> Option<Ban> {
        match target {
            BanTarget::Peer(peer) => self.peers.remove(peer),
            BanTarget::Net(_) => {
                let at = self.nets.iter().position(|b| &b.target == target)?;
                Some(self.nets.swap_remove(at))
            }
        }
    }

    /// The ban in force at `now_ms` that refuses `peer` announcing from `ip`, if any (its own
    /// PeerId ban first).
    pub fn refusing(&self, peer: &PeerId, ip: IpAddr, now_ms: u64) -> Option<&Ban> {
        let ip = ip.to_canonical();
        self.peers
            .get(peer)
            .into_iter()
            .chain(self.nets.iter())
            .find(|b| b.in_force(now_ms) && b.target.covers(peer, ip))
    }

    /// Takes out every ban that ran out by `now_ms` and returns them.
    pub fn expire(&mut self, now_ms: u64) -> Vec<Ban> {
        let mut gone = Vec::new();
        self.peers.retain(|_, b| {
            b.in_force(now_ms) || {
                gone.push(b.clone());
                false
            }
        });
        self.nets.retain(|b| {
            b.in_force(now_ms) || {
                gone.push(b.clone());
                false
            }
        });
        gone
    }

    /// Every ban, soonest end first.
    pub fn list(&self) -> Vec<Ban> {
        let mut all: Vec<Ban> = self.peers.values().chain(self.nets.iter()).cloned().collect();
        all.sort_by_key(|b| b.until_unix_ms);
        all
    }

    pub fn len(&self) -> usize {
        self.peers.len() + self.nets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_800_000_000_000;

    fn peer(n: u8) -> PeerId {
        PeerId::from_array([n; 32])
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn ban(target: &str, seconds: u64) -> Ban {
        Ban::new(BanTarget::parse(target).unwrap(), seconds, "spam".into(), T0).unwrap()
    }

    #[test]
    fn targets_parse_as_peer_ids_hosts_and_ranges() {
        let hex = peer(7).to_string();
        assert_eq!(BanTarget::parse(&hex), Ok(BanTarget::Peer(peer(7))));
        assert_eq!(BanTarget::parse("10.1.2.3/8").unwrap().to_string(), "IP range 10.0.0.0/8");
        assert_eq!(BanTarget::parse("10.1.2.3").unwrap().to_string(), "IP range 10.1.2.3/32");
        assert_eq!(BanTarget::parse("::ffff:10.1.2.3").unwrap().to_string(), "IP range 10.1.2.3/32");
        assert_eq!(BanTarget::parse("2001:db8::1/32").unwrap().to_string(), "IP range 2001:db8::/32");
        for bad in ["", "10.0.0.0/33", "peer", &hex[..63], "10.0.0.0/8/8"] {
            assert!(matches!(BanTarget::parse(bad), Err(BanError::BadTarget(_))), "{bad:?}");
        }
        for text in [hex.as_str(), "10.0.0.0/8", "2001:db8::/32"] {
            let target = BanTarget::parse(text).unwrap();
            assert_eq!(BanTarget::from_key(&target.key()), Some(target), "{text}");
        }
        assert_eq!(BanTarget::from_key(b"x10.0.0.0/8"), None);
        assert_eq!(BanTarget::from_key(b""), None);
    }

    #[test]
    fn durations_read_like_an_operator_writes_them() {
        assert_eq!(parse_duration("90"), Ok(90));
        assert_eq!(parse_duration("90s"), Ok(90));
        assert_eq!(parse_duration("30m"), Ok(1800));
        assert_eq!(parse_duration("12h"), Ok(43_200));
        assert_eq!(parse_duration(" 7d "), Ok(604_800));
        for bad in ["", "0", "0h", "m", "5w", "1.5h", "-3s", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_peer_ban_refuses_that_peer_from_anywhere_until_it_ends() {
        let mut bans = Bans::default();
        bans.insert(ban(&peer(1).to_string(), 60), T0).unwrap();
        assert!(bans.refusing(&peer(1), ip("10.0.0.1"), T0).is_some());
        assert!(bans.refusing(&peer(1), ip("2001:db8::1"), T0 + 59_999).is_some());
        assert!(bans.refusing(&peer(2), ip("10.0.0.1"), T0).is_none(), "another peer");
        assert!(bans.refusing(&peer(1), ip("10.0.0.1"), T0 + 60_000).is_none(), "it ran out");
        assert_eq!(bans.expire(T0 + 60_000).len(), 1);
        assert!(bans.is_empty());
    }

    #[test]
    fn an_ip_ban_refuses_every_peer_in_its_range_however_the_address_is_written() {
        let mut bans = Bans::default();
        bans.insert(ban("192.168.0.0/16", 60), T0).unwrap();
        bans.insert(ban("2001:db8::/32", 60), T0).unwrap();
        for inside in ["192.168.4.5", "::ffff:192.168.4.5", "2001:db8:1::9"] {
            assert!(bans.refusing(&peer(1), ip(inside), T0).is_some(), "{inside}");
        }
        for outside in ["192.169.0.1", "10.0.0.1", "2001:db9::1", "::1"] {
            assert!(bans.refusing(&peer(1), ip(outside), T0).is_none(), "{outside}");
        }
    }

    #[test]
    fn a_new_ban_of_a_target_replaces_the_old_and_lifting_it_ends_it() {
        let mut bans = Bans::default();
        bans.insert(ban("10.0.0.0/8", 60), T0).unwrap();
        let old = bans.insert(ban("10.9.9.9/8", 10), T0).unwrap();
        assert_eq!(old.map(|b| b.until_unix_ms), Some(T0 + 60_000), "the same range, written otherwise");
        assert_eq!(bans.len(), 1);
        assert!(bans.refusing(&peer(1), ip("10.1.1.1"), T0 + 10_000).is_none(), "the new, shorter end");
        bans.insert(ban("10.0.0.0/8", 60), T0).unwrap();
        assert!(bans.remove(&BanTarget::parse("10.0.0.0/8").unwrap()).is_some());
        assert!(bans.refusing(&peer(1), ip("10.1.1.1"), T0).is_none());
        assert!(bans.remove(&BanTarget::parse("10.0.0.0/8").unwrap()).is_none());
    }

    #[test]
    fn bans_are_bounded_checked_and_listed_soonest_end_first() {
        assert_eq!(Ban::new(BanTarget::Peer(peer(1)), 0, String::new(), T0), Err(BanError::NoDuration));
        let long = "x".repeat(MAX_REASON_BYTES + 1);
        assert_eq!(Ban::new(BanTarget::Peer(peer(1)), 1, long, T0), Err(BanError::LongReason(257)));
        let mut bans = Bans::default();
        bans.insert(ban(&peer(1).to_string(), 90), T0).unwrap();
        bans.insert(ban("10.0.0.0/8", 30), T0).unwrap();
        let ends: Vec<u64> = bans.list().iter().map(|b| b.until_unix_ms).collect();
        assert_eq!(ends, vec![T0 + 30_000, T0 + 90_000]);
        assert_eq!(
            ban("10.0.0.0/8", 3600).refusal(),
            "IP range 10.0.0.0/8 is banned from this directory until 2027-01-15T09:00:00Z: spam"
        );
    }

    #[test]
    fn the_table_refuses_more_than_max_bans_but_not_a_replacement_or_after_expiry() {
        let mut bans = Bans::default();
        for n in 0..MAX_BANS as u32 {
            let net = format!("10.{}.{}.0/24", n / 256, n % 256);
            bans.insert(ban(&net, 60), T0).unwrap();
        }
        assert_eq!(bans.insert(ban(&peer(1).to_string(), 60), T0), Err(BanError::Full));
        assert!(bans.insert(ban("10.0.0.0/24", 30), T0).is_ok(), "a replacement");
        assert!(bans.insert(ban(&peer(1).to_string(), 60), T0 + 30_000).is_ok(), "one ran out");
    }
}
