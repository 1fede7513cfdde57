//! The connect-back check of an Announce (DESIGN.md, Presence and Trust): the directory dials
//! the announced address over QUIC with a client config that pins the announced `PeerId`, and
//! records the peer as reachable only if the handshake completes within the timeout. That proves
//! the peer holds the key of the address it registers (nobody can make the directory hand out
//! someone else's address as a source) and that other peers can reach it from outside.
//!
//! Owns one client-only QUIC endpoint, bound once when the server starts. It must never accept
//! a connection, keep one open after a check, or decide anything but "reachable or not": what
//! an unreachable peer may still do is the domain's business (`directory`).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use quaver_shared::PeerId;
use quaver_shared::tls::{self, TlsError};

/// Why a peer failed the check.
#[derive(Debug, thiserror::Error)]
pub enum ReachError {
    /// Nothing answered in time: no endpoint at that port, a firewall, or a slow network.
    #[error("no QUIC handshake within {} ms", .0.as_millis())]
    Timeout(Duration),
    /// Something answered but the handshake failed: most often another key than the announced
    /// one (an impostor, or a peer that changed its key), or the wrong protocol.
    #[error("{0}")]
    Handshake(#[from] TlsError),
}

/// Dials peers back; cheap to share behind an `Arc`.
pub struct ConnectBack {
    endpoint: quinn::Endpoint,
    timeout: Duration,
}

impl ConnectBack {
    /// Binds a dial-only endpoint on an ephemeral port of the same address family as `listen`
    /// (an IPv6 socket also reaches IPv4 peers, as mapped addresses). Must be called inside a
    /// tokio runtime.
    pub fn bind(listen: SocketAddr, timeout: Duration) -> Result<Self, TlsError> {
        let endpoint = match listen {
            SocketAddr::V4(_) => tls::client_endpoint(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))?,
            // A host with IPv6 disabled still checks its IPv4 peers.
            SocketAddr::V6(_) => tls::client_endpoint(SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)))
                .or_else(|_| tls::client_endpoint(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))))?,
        };
        Ok(Self { endpoint, timeout })
    }

    /// Completes a QUIC handshake with `address` in which the server proves it holds `peer`'s
    /// key, then closes the connection.
    pub async fn check(&self, peer: PeerId, address: SocketAddr) -> Result<(), ReachError> {
        let connection = tokio::time::timeout(self.timeout, tls::connect(&self.endpoint, address, peer))
            .await
            .map_err(|_| ReachError::Timeout(self.timeout))??;
        connection.close(quinn::VarInt::from_u32(0), b"verified");
        Ok(())
    }

    /// The verdict for an Announce: `check`, with a failure logged (with its reason) rather than
    /// returned, since an unreachable peer is still served.
    pub async fn reachable(&self, peer: PeerId, address: SocketAddr) -> bool {
        match self.check(peer, address).await {
            Ok(()) => {
                tracing::debug!(peer = %peer, %address, "connect-back check passed");
                true
            }
            Err(reason) => {
                tracing::info!(
                    peer = %peer,
                    %address,
                    %reason,
                    "connect-back check failed: the peer is not reachable and will not be handed out as a source"
                );
                false
            }
        }
    }

    /// The local address of the dialing endpoint.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }
}
