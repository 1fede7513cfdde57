//! Address discovery (`proto/directory.proto`, "Rendezvous"): from the socket the node serves
//! on, dial the directory's two rendezvous endpoints, read what each saw, and judge the router
//! (`quaver_core::nat::classify`). The connection to the first endpoint is kept: its QUIC
//! keep-alives hold the router's mapping open, and it is the directory's way to reach the node.
//!
//! Must never dial from another socket than the node's own (the observation would be of the
//! wrong mapping), trust an observation that does not parse, or wait without a bound.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use prost::Message;
use quaver_core::nat::{self, Mapping};
use quaver_shared::PeerId;
use quaver_shared::directory::v1::{Introduction, RendezvousAnswer, RendezvousRequest};
use quaver_shared::tls::{self, ClientAuth};

/// Longest message on a rendezvous stream (length prefix included).
const MAX_MESSAGE: usize = 256;
/// Bound on the directory's answer to an introduction request.
const INTRODUCE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a source keeps dialling a peer it was introduced to.
const PUNCH_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("the directory runs no rendezvous endpoints")]
    NotOffered,
    #[error("the directory sent a malformed rendezvous answer: {0}")]
    Malformed(String),
    #[error("cannot resolve the directory's host {0}")]
    Resolve(String),
    #[error("rendezvous endpoint {addr}: {reason}")]
    Endpoint { addr: SocketAddr, reason: String },
    #[error("no answer from the rendezvous endpoints within {} s", .0.as_secs())]
    Timeout(Duration),
}

/// What the directory said where its rendezvous endpoints are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Offer {
    pub ip: IpAddr,
    pub ports: Vec<u16>,
    pub directory: PeerId,
}

impl Offer {
    /// The offer in an `AnnounceResponse` for a directory reached at `ip`; `Ok(None)` when it
    /// offers none.
    pub fn from_answer(
        ip: IpAddr,
        ports: &[u32],
        directory_id: &[u8],
    ) -> Result<Option<Offer>, DiscoveryError> {
        if ports.is_empty() {
            return Ok(None);
        }
        let ports = ports
            .iter()
            .take(2)
            .map(|&p| u16::try_from(p).ok().filter(|&p| p != 0))
            .collect::<Option<Vec<u16>>>()
            .ok_or_else(|| DiscoveryError::Malformed(format!("rendezvous ports {ports:?}")))?;
        let directory = PeerId::from_slice(directory_id)
            .map_err(|e| DiscoveryError::Malformed(format!("directory_id: {e}")))?;
        Ok(Some(Offer { ip, ports, directory }))
    }
}

/// The outcome of one discovery: the judgement, and the connection to keep.
pub struct Discovered {
    pub mapping: Mapping,
    /// The socket's address on its own network, as `classify` saw it.
    pub local: SocketAddr,
    pub channel: quinn::Connection,
}

/// Resolves the host of a directory URL (`http://host:port`) to the IP the node reaches it at.
pub async fn directory_ip(url: &str) -> Result<IpAddr, DiscoveryError> {
    let uri: tonic::transport::Uri = url.parse().map_err(|_| DiscoveryError::Resolve(url.to_owned()))?;
    let host = uri.host().ok_or_else(|| DiscoveryError::Resolve(url.to_owned()))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse() {
        return Ok(ip);
    }
    let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("https") { 443 } else { 80 });
    let mut found =
        tokio::net::lookup_host((host, port)).await.map_err(|_| DiscoveryError::Resolve(host.to_owned()))?;
    found.next().map(|a| a.ip()).ok_or_else(|| DiscoveryError::Resolve(host.to_owned()))
}

/// Asks every offered endpoint, in order, within `timeout` in all.
pub async fn discover(
    endpoint: &quinn::Endpoint,
    me: &ClientAuth,
    offer: &Offer,
    timeout: Duration,
) -> Result<Discovered, DiscoveryError> {
    tokio::time::timeout(timeout, discover_unbounded(endpoint, me, offer))
        .await
        .map_err(|_| DiscoveryError::Timeout(timeout))?
}

async fn discover_unbounded(
    endpoint: &quinn::Endpoint,
    me: &ClientAuth,
    offer: &Offer,
) -> Result<Discovered, DiscoveryError> {
    let mut observed = Vec::new();
    let mut channel = None;
    for &port in &offer.ports {
        let addr = SocketAddr::new(offer.ip, port);
        let failed = |reason: String| DiscoveryError::Endpoint { addr, reason };
        // The first connection is kept, and the directory sends introductions on it.
        let config = if channel.is_none() {
            tls::rendezvous_client_config(offer.directory, me)
        } else {
            tls::client_config_as(offer.directory, Some(me))
        };
        let connecting = config
            .map_err(|e| e.to_string())
            .and_then(|c| endpoint.connect_with(c, addr, tls::SERVER_NAME).map_err(|e| e.to_string()));
        let connection = connecting.map_err(&failed)?.await.map_err(|e| failed(e.to_string()))?;
        let answer = ask(&connection, RendezvousRequest::default()).await.map_err(&failed)?;
        observed.push(parse(&answer.observed_address).map_err(&failed)?);
        match channel {
            None => channel = Some(connection),
            Some(_) => connection.close(0u32.into(), b"observed"),
        }
    }
    let channel = channel.ok_or(DiscoveryError::NotOffered)?;
    let local = local_address(endpoint, offer.ip);
    let mapping = nat::classify(local, &observed);
    Ok(Discovered { mapping, local, channel })
}

/// One request on a stream of its own, the answer read to its end.
async fn ask(connection: &quinn::Connection, request: RendezvousRequest) -> Result<RendezvousAnswer, String> {
    let (mut send, mut recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
    send.write_all(&request.encode_length_delimited_to_vec()).await.map_err(|e| e.to_string())?;
    send.finish().map_err(|e| e.to_string())?;
    let bytes = recv.read_to_end(MAX_MESSAGE).await.map_err(|e| e.to_string())?;
    RendezvousAnswer::decode_length_delimited(bytes.as_slice()).map_err(|e| e.to_string())
}

fn parse(address: &str) -> Result<SocketAddr, String> {
    address.parse().map_err(|_| format!("not an address: {address:?}"))
}

/// Asks the directory, over the node's rendezvous connection, to introduce it to `source`;
/// gives the source's mapped address, to dial now (the source is dialling this node meanwhile).
pub async fn introduce(channel: &quinn::Connection, source: PeerId) -> Result<SocketAddr, String> {
    let request = RendezvousRequest { introduce: source.to_vec() };
    let answer = tokio::time::timeout(INTRODUCE_TIMEOUT, ask(channel, request))
        .await
        .map_err(|_| format!("no answer from the directory within {} s", INTRODUCE_TIMEOUT.as_secs()))??;
    if !answer.error.is_empty() {
        return Err(answer.error);
    }
    parse(&answer.peer_address)
}

/// Dials every peer the directory introduces on `channel` until it closes. Each dial's only
/// job is to send packets towards the peer, so this node's router lets the peer's own
/// handshake in; a handshake of ours that completes is closed at once.
pub async fn answer_introductions(channel: quinn::Connection, endpoint: quinn::Endpoint) {
    while let Ok(mut stream) = channel.accept_uni().await {
        let endpoint = endpoint.clone();
        tokio::spawn(async move {
            let Ok(bytes) = stream.read_to_end(MAX_MESSAGE).await else { return };
            let Ok(intro) = Introduction::decode_length_delimited(bytes.as_slice()) else {
                tracing::warn!("the directory sent a malformed introduction");
                return;
            };
            let (Ok(peer), Ok(addr)) = (PeerId::from_slice(&intro.peer_id), parse(&intro.address)) else {
                tracing::warn!("the directory sent an introduction without a valid peer or address");
                return;
            };
            tracing::debug!(peer = %peer, %addr, "introduced: dialling back to open the way");
            let dial = tls::connect(&endpoint, addr, peer);
            match tokio::time::timeout(PUNCH_TIMEOUT, dial).await {
                Ok(Ok(connection)) => connection.close(0u32.into(), b"punched"),
                Ok(Err(e)) => tracing::debug!(peer = %peer, %addr, error = %e, "punch dial failed"),
                Err(_) => tracing::debug!(peer = %peer, %addr, "punch dial timed out"),
            }
        });
    }
}

/// The socket's address as the directory would see it without NAT: the source IP the kernel
/// picks towards the directory (a connected UDP socket sends nothing) with the node's port.
fn local_address(endpoint: &quinn::Endpoint, towards: IpAddr) -> SocketAddr {
    let port = endpoint.local_addr().map_or(0, |a| a.port());
    let bind: SocketAddr = if towards.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
    let ip = std::net::UdpSocket::bind(bind)
        .and_then(|s| s.connect((towards, 9)).and_then(|()| s.local_addr()))
        .map_or(bind.ip(), |a| a.ip());
    SocketAddr::new(ip, port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offer_takes_two_nonzero_ports_and_a_32_byte_key() {
        let ip: IpAddr = "198.18.0.1".parse().unwrap();
        let id = [7u8; 32];
        let offer = Offer::from_answer(ip, &[7700, 7701], &id).unwrap().unwrap();
        assert_eq!(offer.ports, [7700, 7701]);
        assert_eq!(Offer::from_answer(ip, &[], &id).unwrap(), None);
        assert!(Offer::from_answer(ip, &[70000, 1], &id).is_err());
        assert!(Offer::from_answer(ip, &[0, 1], &id).is_err());
        assert!(Offer::from_answer(ip, &[7700, 7701], &id[..31]).is_err());
    }

    #[tokio::test]
    async fn the_directory_ip_comes_from_the_url() {
        assert_eq!(directory_ip("http://127.0.0.1:7700").await.unwrap(), IpAddr::from([127, 0, 0, 1]));
        assert_eq!(directory_ip("https://[::1]:7700").await.unwrap(), "::1".parse::<IpAddr>().unwrap());
        assert!(directory_ip("not a url").await.is_err());
    }
}
