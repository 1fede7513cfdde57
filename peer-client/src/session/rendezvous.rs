//! Address discovery (`proto/directory.proto`, "Rendezvous"): from the socket the node serves
//! on, dial the directory's two rendezvous endpoints, read what each saw, and judge the router
//! (`quaver_core::nat::classify`). The connection to the first endpoint is kept: its QUIC
//! keep-alives hold the router's mapping open, and it is the directory's way to reach the node.
//!
//! A relayed introduction (bidirectional stream, `Introduction.relay` set) makes the node
//! allocate on the directory's TURN server from that same socket (`quaver_shared::turn`),
//! permit the asker's IP, and answer with its relayed address.
//!
//! Must never dial from another socket than the node's own (the observation would be of the
//! wrong mapping), trust an observation that does not parse, or wait without a bound.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use quaver_core::nat::{self, Mapping};
use quaver_shared::PeerId;
use quaver_shared::directory::v1::{Introduction, IntroductionAnswer, RendezvousAnswer, RendezvousRequest};
use quaver_shared::tls::{self, ClientAuth};
use quaver_shared::turn::TurnSplice;

/// Longest message on a rendezvous stream (length prefix included).
const MAX_MESSAGE: usize = 256;
/// Bound on the directory's answer to an introduction request.
const INTRODUCE_TIMEOUT: Duration = Duration::from_secs(3);
/// Bound on a relayed one: the source allocates on the relay first.
const RELAY_INTRODUCE_TIMEOUT: Duration = Duration::from_secs(8);
/// Bounds on the source's allocation and permission on the relay.
const ALLOCATE_TIMEOUT: Duration = Duration::from_secs(4);
const PERMIT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest introduction read (one with TURN credentials is about 250 bytes).
const MAX_INTRODUCTION: usize = 1024;
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
/// gives the source's mapped address, to dial now (the source is dialling this node
/// meanwhile), or with `relay` its relayed address (open to this node by then).
pub async fn introduce(
    channel: &quinn::Connection,
    source: PeerId,
    relay: bool,
) -> Result<SocketAddr, String> {
    let request = RendezvousRequest { introduce: source.to_vec(), relay };
    let bound = if relay { RELAY_INTRODUCE_TIMEOUT } else { INTRODUCE_TIMEOUT };
    let answer = tokio::time::timeout(bound, ask(channel, request))
        .await
        .map_err(|_| format!("no answer from the directory within {} s", bound.as_secs()))??;
    if !answer.error.is_empty() {
        return Err(answer.error);
    }
    parse(&answer.peer_address)
}

/// Answers every introduction the directory sends on `channel` until it closes, each on a
/// stream of its own: a punch with a dial back (answered as soon as the dial's first packet is
/// on its way, so the directory lets the asker dial only then), a relayed one with a relayed
/// address open to the asker.
pub async fn answer_introductions(
    channel: quinn::Connection,
    endpoint: quinn::Endpoint,
    splice: Option<Arc<TurnSplice>>,
) {
    while let Ok((mut send, mut recv)) = channel.accept_bi().await {
        let (endpoint, splice) = (endpoint.clone(), splice.clone());
        tokio::spawn(async move {
            let Ok(bytes) = recv.read_to_end(MAX_INTRODUCTION).await else { return };
            let done = match Introduction::decode_length_delimited(bytes.as_slice()) {
                Err(e) => Err(format!("malformed introduction: {e}")),
                Ok(intro) if intro.relay.is_some() => match &splice {
                    Some(splice) => relay_for(splice, intro).await.map(|a| a.to_string()),
                    None => Err("this node's socket cannot use a relay".to_owned()),
                },
                Ok(intro) => punch(&endpoint, intro).map(|()| String::new()),
            };
            let answer = match done {
                Ok(relayed_address) => IntroductionAnswer { relayed_address, error: String::new() },
                Err(error) => {
                    tracing::info!(%error, "cannot answer an introduction");
                    IntroductionAnswer { relayed_address: String::new(), error }
                }
            };
            let _ = send.write_all(&answer.encode_length_delimited_to_vec()).await;
            let _ = send.finish();
        });
    }
}

async fn relay_for(splice: &Arc<TurnSplice>, intro: Introduction) -> Result<SocketAddr, String> {
    let creds = intro.relay.ok_or("a relayed introduction without credentials")?;
    let asker = parse(&intro.address)?;
    let server = tokio::net::lookup_host(creds.server.as_str())
        .await
        .ok()
        .and_then(|mut found| found.next())
        .ok_or_else(|| format!("cannot resolve the relay {}", creds.server))?;
    let started = std::time::Instant::now();
    let relayed = splice
        .allocate(server, &creds.username, &creds.password, ALLOCATE_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    splice.permit(asker.ip(), PERMIT_TIMEOUT).await.map_err(|e| e.to_string())?;
    tracing::info!(%relayed, %asker, after = ?started.elapsed(), "relayed address open to an introduced peer");
    Ok(relayed)
}

/// Dials the introduced peer. The dial's only job is to send packets towards it, so this
/// node's router lets the peer's own handshake in; a handshake of ours that completes is
/// closed at once. Returns once the dial has started (its first packet is queued on the
/// endpoint, ahead of the answer to the directory).
fn punch(endpoint: &quinn::Endpoint, intro: Introduction) -> Result<(), String> {
    let peer = PeerId::from_slice(&intro.peer_id).map_err(|e| format!("introduction: {e}"))?;
    let addr = parse(&intro.address)?;
    tracing::debug!(peer = %peer, %addr, "introduced: dialling back to open the way");
    // `connect_with` queues the first packet now, not when a future is first polled.
    let config = tls::client_config_as(peer, None).map_err(|e| e.to_string())?;
    let dial = endpoint.connect_with(config, addr, tls::SERVER_NAME).map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        match tokio::time::timeout(PUNCH_TIMEOUT, dial).await {
            Ok(Ok(connection)) => connection.close(0u32.into(), b"punched"),
            Ok(Err(e)) => tracing::debug!(peer = %peer, %addr, error = %e, "punch dial failed"),
            Err(_) => tracing::debug!(peer = %peer, %addr, "punch dial timed out"),
        }
    });
    Ok(())
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
