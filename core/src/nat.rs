//! What a node's router does to its QUIC socket, judged from outside (DESIGN.md, Reachability).
//!
//! The directory runs two rendezvous endpoints on different UDP ports. The node dials both from
//! the socket it serves on, and each answers with the address the packets came from: the
//! socket's *mapped* address. Comparing the two observations with the socket's own address
//! tells the router's kind (RFC 4787's terms):
//!
//! - both equal the local address: no NAT ([`NatKind::None`]); a firewall may still drop
//!   unsolicited packets, which only the directory's connect-back can tell;
//! - both equal each other but not the local address: the mapping is endpoint-independent
//!   ([`NatKind::EndpointIndependent`], "cone"): every peer sees the same address, so a hole
//!   punched towards one peer uses the address the directory saw;
//! - they differ: a new mapping per destination ([`NatKind::Symmetric`]): the address the
//!   directory saw is useless to anyone else, and only a relay (or a punch from a peer whose
//!   own mapping is endpoint-independent) connects;
//! - fewer than two observations: [`NatKind::Unknown`].
//!
//! Pure: the observations come in as values, so every case is tested without a socket.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// A router's behaviour towards the node's QUIC socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NatKind {
    /// The socket's address is what others see.
    None,
    /// One mapped address for every destination ("cone").
    EndpointIndependent,
    /// A new mapped address per destination (carrier-grade and some home NATs).
    Symmetric,
    /// Not enough observations to tell.
    Unknown,
}

impl NatKind {
    /// The short name used in logs, the control API and JSON (`none`, `cone`, `symmetric`,
    /// `unknown`).
    pub fn name(self) -> &'static str {
        match self {
            NatKind::None => "none",
            NatKind::EndpointIndependent => "cone",
            NatKind::Symmetric => "symmetric",
            NatKind::Unknown => "unknown",
        }
    }

    /// The inverse of [`name`](Self::name); `None` for any other text.
    pub fn from_name(name: &str) -> Option<NatKind> {
        [NatKind::None, NatKind::EndpointIndependent, NatKind::Symmetric, NatKind::Unknown]
            .into_iter()
            .find(|k| k.name() == name)
    }
}

impl fmt::Display for NatKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The verdict of one discovery round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub kind: NatKind,
    /// The address the first rendezvous endpoint saw: the one other peers can use when the
    /// kind is `None` or `EndpointIndependent`.
    pub public: Option<SocketAddr>,
}

/// Judges the router from the socket's own address (`local`: the source address the kernel
/// picks towards the directory, with the socket's port) and what the rendezvous endpoints saw,
/// in the order they were asked. IPv4-mapped IPv6 addresses compare equal to their IPv4 form.
pub fn classify(local: SocketAddr, observed: &[SocketAddr]) -> Mapping {
    let observed: Vec<SocketAddr> = observed.iter().map(|a| canonical(*a)).collect();
    let local = canonical(local);
    let public = observed.first().copied();
    let kind = match observed.as_slice() {
        [a, b, ..] if a != b => NatKind::Symmetric,
        [a, _, ..] if *a == local => NatKind::None,
        [_, _, ..] => NatKind::EndpointIndependent,
        _ => NatKind::Unknown,
    };
    Mapping { kind, public }
}

/// Whether `ip` only means something on its own network: RFC 1918, RFC 6598 shared space
/// (carrier NAT), IPv6 unique local or link-local. Such an address is worth telling peers
/// behind the same public IP (they meet on the LAN) and nobody else.
pub fn is_private(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.is_private() || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xfe00) == 0xfc00 || (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::from((v4, v6.port())),
            None => addr,
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_same_address_as_the_socket_is_no_nat() {
        let m = classify(a("198.18.0.5:4433"), &[a("198.18.0.5:4433"), a("198.18.0.5:4433")]);
        assert_eq!(m, Mapping { kind: NatKind::None, public: Some(a("198.18.0.5:4433")) });
    }

    #[test]
    fn one_mapped_address_for_both_endpoints_is_a_cone() {
        let m = classify(a("192.168.1.10:4433"), &[a("198.18.0.11:4433"), a("198.18.0.11:4433")]);
        assert_eq!(m.kind, NatKind::EndpointIndependent);
        assert_eq!(m.public, Some(a("198.18.0.11:4433")));
    }

    #[test]
    fn a_new_port_per_destination_is_symmetric() {
        let m = classify(a("192.168.1.10:4433"), &[a("198.18.0.11:31001"), a("198.18.0.11:40522")]);
        assert_eq!(m.kind, NatKind::Symmetric);
        assert_eq!(m.public, Some(a("198.18.0.11:31001")));
    }

    #[test]
    fn one_observation_cannot_tell() {
        let m = classify(a("192.168.1.10:4433"), &[a("198.18.0.11:4433")]);
        assert_eq!(m, Mapping { kind: NatKind::Unknown, public: Some(a("198.18.0.11:4433")) });
        assert_eq!(classify(a("192.168.1.10:4433"), &[]).public, None);
    }

    #[test]
    fn ipv4_mapped_ipv6_observations_compare_as_ipv4() {
        let m = classify(a("198.18.0.5:4433"), &[a("[::ffff:198.18.0.5]:4433"), a("198.18.0.5:4433")]);
        assert_eq!(m.kind, NatKind::None);
    }

    #[test]
    fn private_addresses_are_those_of_a_lan_or_a_carrier_nat() {
        for ip in
            ["192.168.1.10", "10.1.2.3", "172.16.0.1", "100.64.0.1", "fd12::1", "fe80::2", "::ffff:10.0.0.1"]
        {
            assert!(is_private(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["198.18.0.5", "8.8.8.8", "100.128.0.1", "2001:db8::1", "127.0.0.1"] {
            assert!(!is_private(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn names_round_trip() {
        for k in [NatKind::None, NatKind::EndpointIndependent, NatKind::Symmetric, NatKind::Unknown] {
            assert_eq!(NatKind::from_name(k.name()), Some(k));
        }
        assert_eq!(NatKind::from_name("full cone"), None);
    }
}
