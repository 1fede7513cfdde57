//! The rendezvous endpoints (`proto/directory.proto`, "Rendezvous"): two QUIC server endpoints
//! on two UDP ports that tell each peer the address its packets came from, so that a peer
//! behind NAT learns its mapped address and its router's kind (`quaver_core::nat`) from the
//! very socket it serves on.
//!
//! Why QUIC and not STUN: the peer's socket belongs to quinn, which would have to demultiplex
//! STUN answers from QUIC packets; a QUIC connection from that socket gives the same
//! observation with the TLS the peer already speaks, and it is also the channel the directory
//! keeps with the peer (its keep-alives hold the router's mapping open) and sends
//! introductions on (hole punching: both peers dial each other at once).
//!
//! The endpoints prove the directory's own key (`rendezvous.key` in its data dir, created at the
//! first start), which `AnnounceResponse.directory_id` names, so a peer pins it as it pins a
//! source. A peer that proves its own node key on the first port is remembered by `PeerId`
//! while its connection lives (the newest connection of a `PeerId` wins): `channels` counts
//! them. Anonymous callers get their observation and are let go.
//!
//! With a relay configured (`crate::relay`), a pair that cannot punch is introduced through it:
//! the source gets TURN credentials minted for it on a bidirectional stream and answers with
//! the relayed address it allocated and opened to the asker, which the asker is given to dial.
//!
//! Must never answer more than once per stream, read more than it bounds, introduce a peer
//! that did not prove its key, mint relay credentials for a peer without a session, or hold a
//! connection past its peer's idle timeout (the transport's, 6 s without a keep-alive).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use prost::Message;
use quaver_shared::directory::v1::{Introduction, IntroductionAnswer, RendezvousAnswer, RendezvousRequest};
use quaver_shared::tls::{self, TlsError};
use quaver_shared::{NodeKey, PeerId};
use tokio::sync::watch;

/// The key file of the rendezvous endpoints, in the directory's data dir.
pub const KEY_FILE: &str = "rendezvous.key";
/// Most peer connections kept at once; past it, new ones get their observation and are closed.
pub const MAX_CHANNELS: usize = 200_000;
/// Longest request or answer on a rendezvous stream (length prefix included).
const MAX_MESSAGE: usize = 256;
/// How long a peer may take to ask before its connection is closed.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a source may take to allocate on the relay and answer (two round trips to the
/// TURN server, one more for the permission).
const RELAY_TIMEOUT: Duration = Duration::from_secs(6);

/// The relay, and how to tell a peer with a session from one without (only those get
/// credentials).
pub struct RelayBroker {
    pub offer: crate::relay::RelayOffer,
    pub has_session: Box<dyn Fn(&PeerId) -> bool + Send + Sync>,
}

// Indices of `Channels::counts`.
const PUNCH_MADE: usize = 0;
const PUNCH_REFUSED: usize = 1;
const RELAY_MADE: usize = 2;
const RELAY_REFUSED: usize = 3;
const RELAY_FAILED: usize = 4;
const RELAY_MICROS: usize = 5;

/// Introductions brokered since the start, by path and outcome (for metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IntroductionCounts {
    pub punch_made: u64,
    pub punch_refused: u64,
    pub relay_made: u64,
    pub relay_refused: u64,
    /// The source was told but could not allocate or did not answer in time.
    pub relay_failed: u64,
    /// Summed time from a relayed introduction's request to the source's answer.
    pub relay_micros: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RendezvousError {
    #[error("rendezvous key {path}: {source}")]
    Key { path: String, source: quaver_shared::node_key::NodeKeyError },
    #[error("rendezvous endpoint on UDP {addr}: {source}")]
    Bind { addr: SocketAddr, source: TlsError },
}

/// The two endpoints and the peers connected to the first.
pub struct Rendezvous {
    id: PeerId,
    endpoints: [quinn::Endpoint; 2],
    ports: [u16; 2],
    channels: Arc<Channels>,
}

#[derive(Default)]
struct Channels {
    relay: Option<RelayBroker>,
    /// `IntroductionCounts`, field by field (`PUNCH_MADE`...).
    counts: [AtomicU64; 6],
    /// Connections to the first port, by the `PeerId` they proved.
    open: Mutex<HashMap<PeerId, quinn::Connection>>,
    /// What the second port last saw of each peer: the same address as its first-port
    /// connection means one mapping for every destination.
    second: Mutex<HashMap<PeerId, SocketAddr>>,
}

impl Rendezvous {
    /// Binds UDP `ip:ports[0]` and `ip:ports[1]` (0: any free port) with the key in `data_dir`.
    /// Must be called inside a tokio runtime.
    pub fn bind(
        ip: std::net::IpAddr,
        ports: [u16; 2],
        data_dir: &Path,
        relay: Option<RelayBroker>,
    ) -> Result<Self, RendezvousError> {
        let path = data_dir.join(KEY_FILE);
        let key = NodeKey::load_or_create(&path)
            .map_err(|source| RendezvousError::Key { path: path.display().to_string(), source })?;
        let bind = |port: u16| {
            let addr = SocketAddr::new(ip, port);
            let endpoint =
                tls::endpoint(addr, &key).map_err(|source| RendezvousError::Bind { addr, source })?;
            let port = endpoint
                .local_addr()
                .map_err(|e| RendezvousError::Bind { addr, source: TlsError::Bind(e) })?
                .port();
            Ok::<_, RendezvousError>((endpoint, port))
        };
        let (first, p0) = bind(ports[0])?;
        let (second, p1) = bind(ports[1])?;
        let channels = Arc::new(Channels { relay, ..Channels::default() });
        Ok(Self { id: key.peer_id(), endpoints: [first, second], ports: [p0, p1], channels })
    }

    /// The key the endpoints prove.
    pub fn id(&self) -> PeerId {
        self.id
    }

    /// The UDP ports, first the one whose connections are kept.
    pub fn ports(&self) -> [u16; 2] {
        self.ports
    }

    /// Peers whose connection to the first port is open now.
    pub fn channels(&self) -> usize {
        lock(&self.channels.open).len()
    }

    /// Serves both endpoints until `stopping` turns true, then closes them and waits until
    /// every connection is gone, so a server started right after can bind the same ports.
    pub async fn serve(self: Arc<Self>, mut stopping: watch::Receiver<bool>) {
        let mut accepting = tokio::task::JoinSet::new();
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            let (endpoint, channels, keep) = (endpoint.clone(), self.channels.clone(), i == 0);
            accepting.spawn(async move {
                let mut answers = tokio::task::JoinSet::new();
                while let Some(incoming) = endpoint.accept().await {
                    answers.spawn(answer(incoming, channels.clone(), keep));
                    // Reap the answers that ended, so the set holds only live connections.
                    while answers.try_join_next().is_some() {}
                }
                answers.shutdown().await;
            });
        }
        let _ = stopping.wait_for(|s| *s).await;
        for endpoint in &self.endpoints {
            endpoint.close(0u32.into(), b"directory stopping");
        }
        while accepting.join_next().await.is_some() {}
        lock(&self.channels.open).clear();
        for endpoint in &self.endpoints {
            endpoint.wait_idle().await;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The maps hold connection handles and addresses; a panic elsewhere cannot leave them
    // half-updated.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One peer connection: each stream it opens gets its answer; on the first port, a peer that
/// proved its key is kept (and may be introduced) until it closes.
async fn answer(incoming: quinn::Incoming, channels: Arc<Channels>, first: bool) {
    let Ok(connection) = incoming.await else { return };
    let peer = tls::peer_id_of(&connection);
    let kept = match peer {
        Some(peer) if first => channels.keep(peer, &connection),
        _ => false,
    };
    if !kept {
        if first && peer.is_some() {
            tracing::warn!(max = MAX_CHANNELS, "rendezvous channels full; not keeping this one");
        }
        // One question, then the peer closes; the timeout ends it if it does not.
        let one = async {
            if let Ok((send, recv)) = connection.accept_bi().await {
                stream(send, recv, &connection, peer, &channels, first).await;
            }
            connection.closed().await;
        };
        let _ = tokio::time::timeout(ASK_TIMEOUT, one).await;
        connection.close(0u32.into(), b"answered");
        return;
    }
    let Some(peer) = peer else { return };
    tracing::debug!(peer = %peer, observed = %connection.remote_address(), "rendezvous channel open");
    let mut streams = tokio::task::JoinSet::new();
    while let Ok((send, recv)) = connection.accept_bi().await {
        let (connection, channels) = (connection.clone(), channels.clone());
        streams.spawn(async move { stream(send, recv, &connection, Some(peer), &channels, true).await });
        while streams.try_join_next().is_some() {}
    }
    channels.forget(peer, &connection);
}

/// One request and its answer.
async fn stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    connection: &quinn::Connection,
    peer: Option<PeerId>,
    channels: &Channels,
    first: bool,
) {
    let observed = connection.remote_address();
    let request = match tokio::time::timeout(ASK_TIMEOUT, recv.read_to_end(MAX_MESSAGE)).await {
        Ok(Ok(bytes)) if bytes.is_empty() => RendezvousRequest::default(),
        Ok(Ok(bytes)) => match RendezvousRequest::decode_length_delimited(bytes.as_slice()) {
            Ok(r) => r,
            Err(_) => return drop(send.reset(1u32.into())),
        },
        _ => return drop(send.reset(1u32.into())),
    };
    let mut answer = RendezvousAnswer { observed_address: observed.to_string(), ..Default::default() };
    match peer {
        // The second port only observes: that is its whole point.
        Some(peer) if !first => channels.saw_on_second(peer, observed),
        Some(peer) if !request.introduce.is_empty() => {
            let made = match request.relay {
                false => channels.introduce(peer, &request.introduce).await,
                true => channels.introduce_relayed(peer, &request.introduce).await,
            };
            match made {
                Ok(address) => answer.peer_address = address.to_string(),
                Err(e) => answer.error = e,
            }
        }
        None if !request.introduce.is_empty() => {
            answer.error = "introductions are only for peers that prove their key".into();
        }
        _ => {}
    }
    let _ = send.write_all(&answer.encode_length_delimited_to_vec()).await;
    let _ = send.finish();
}

impl Channels {
    /// Remembers `connection` as `peer`'s channel (closing an older one); false when full.
    fn keep(&self, peer: PeerId, connection: &quinn::Connection) -> bool {
        let mut open = lock(&self.open);
        if open.len() >= MAX_CHANNELS && !open.contains_key(&peer) {
            return false;
        }
        if let Some(old) = open.insert(peer, connection.clone()) {
            old.close(0u32.into(), b"replaced by a newer connection");
        }
        true
    }

    /// Forgets `peer`'s channel if it is still `connection` (not a newer one).
    fn forget(&self, peer: PeerId, connection: &quinn::Connection) {
        let mut open = lock(&self.open);
        if open.get(&peer).is_some_and(|c| c.stable_id() == connection.stable_id()) {
            open.remove(&peer);
            lock(&self.second).remove(&peer);
        }
    }

    fn saw_on_second(&self, peer: PeerId, observed: SocketAddr) {
        let mut second = lock(&self.second);
        if second.len() >= MAX_CHANNELS && !second.contains_key(&peer) {
            // Entries of peers that never kept a channel; the next discoveries refill it.
            second.clear();
        }
        second.insert(peer, observed);
    }

    /// `peer`'s channel and mapped address, if its router keeps one mapping for every
    /// destination (both ports saw the same address).
    fn punchable(&self, peer: &PeerId) -> Option<(quinn::Connection, SocketAddr)> {
        let connection = lock(&self.open).get(peer)?.clone();
        let mapped = connection.remote_address();
        (lock(&self.second).get(peer) == Some(&mapped)).then_some((connection, mapped))
    }

    fn count(&self, field: usize, by: u64) {
        self.counts[field].fetch_add(by, Ordering::Relaxed);
    }

    /// Tells `target` to dial `asker`, and gives back the target's mapped address.
    async fn introduce(&self, asker: PeerId, target: &[u8]) -> Result<SocketAddr, String> {
        let made = self.introduce_punch(asker, target).await;
        self.count(if made.is_ok() { PUNCH_MADE } else { PUNCH_REFUSED }, 1);
        made
    }

    async fn introduce_punch(&self, asker: PeerId, target: &[u8]) -> Result<SocketAddr, String> {
        let target = PeerId::from_slice(target).map_err(|e| format!("introduce: {e}"))?;
        let (_, asker_address) = self.punchable(&asker).ok_or(
            "this peer cannot be introduced: its router maps it anew for every destination, or it \
             did not ask both rendezvous ports",
        )?;
        let (connection, target_address) = self
            .punchable(&target)
            .ok_or("that source cannot be introduced now (gone, or no longer punchable)")?;
        let message =
            Introduction { peer_id: asker.to_vec(), address: asker_address.to_string(), relay: None };
        // The source answers once its first packet towards the asker is out: the asker dials
        // only after that, so its handshake finds the source's router open.
        let answer = tokio::time::timeout(ASK_TIMEOUT, exchange(&connection, &message))
            .await
            .map_err(|_| "the source did not take the introduction in time".to_owned())?
            .map_err(|e| format!("the source's rendezvous connection failed: {e}"))?;
        if !answer.error.is_empty() {
            return Err(format!("the source could not dial back: {}", answer.error));
        }
        tracing::debug!(%asker, %target, %asker_address, %target_address, "introduced");
        Ok(target_address)
    }
}

/// Sends `message` to a source on a stream of its own and reads its answer.
async fn exchange(
    connection: &quinn::Connection,
    message: &Introduction,
) -> Result<IntroductionAnswer, String> {
    let (mut send, mut recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
    send.write_all(&message.encode_length_delimited_to_vec()).await.map_err(|e| e.to_string())?;
    send.finish().map_err(|e| e.to_string())?;
    let bytes = recv.read_to_end(MAX_MESSAGE).await.map_err(|e| e.to_string())?;
    IntroductionAnswer::decode_length_delimited(bytes.as_slice()).map_err(|e| e.to_string())
}

impl Channels {
    /// Has `target` allocate on the relay (with credentials minted for it) and open its
    /// allocation to `asker`'s IP; gives back the relayed address for the asker to dial.
    async fn introduce_relayed(&self, asker: PeerId, target: &[u8]) -> Result<SocketAddr, String> {
        let started = Instant::now();
        let relay = self.relay.as_ref().ok_or("this directory runs no relay")?;
        let target = PeerId::from_slice(target).map_err(|e| format!("introduce: {e}"))?;
        let channel = |peer: &PeerId| lock(&self.open).get(peer).cloned();
        let asker_address =
            channel(&asker).ok_or("this peer's rendezvous connection is not open")?.remote_address();
        let connection = match channel(&target) {
            Some(c) if (relay.has_session)(&target) => c,
            _ => {
                self.count(RELAY_REFUSED, 1);
                return Err(
                    "that source cannot be reached through the relay now (gone, or no session)".into()
                );
            }
        };
        let now_unix = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let message = Introduction {
            peer_id: asker.to_vec(),
            address: asker_address.to_string(),
            relay: Some(relay.offer.credentials(&target, now_unix)),
        };
        let answer = match tokio::time::timeout(RELAY_TIMEOUT, exchange(&connection, &message)).await {
            Ok(Ok(a)) if a.error.is_empty() => a.relayed_address.parse::<SocketAddr>().map_err(|_| {
                format!("the source answered with no relayed address ({:?})", a.relayed_address)
            }),
            Ok(Ok(a)) => Err(format!("the source could not use the relay: {}", a.error)),
            Ok(Err(e)) => Err(format!("the source's rendezvous connection failed: {e}")),
            Err(_) => Err(format!("the source did not answer within {} s", RELAY_TIMEOUT.as_secs())),
        };
        match &answer {
            Ok(relayed) => {
                self.count(RELAY_MADE, 1);
                self.count(RELAY_MICROS, started.elapsed().as_micros() as u64);
                tracing::debug!(%asker, %target, %relayed, "introduced through the relay");
            }
            Err(e) => {
                self.count(RELAY_FAILED, 1);
                tracing::info!(%asker, %target, error = %e, "relayed introduction failed");
            }
        }
        answer
    }
}

impl Rendezvous {
    /// Whether `peer` can be reached through introductions now (its channel is open and both
    /// ports saw one mapped address).
    pub fn punchable(&self, peer: &PeerId) -> bool {
        self.channels.punchable(peer).is_some()
    }

    /// Whether `peer` can meet others through the relay now: the directory runs one and the
    /// peer's channel is open (that is where its relayed introductions travel).
    pub fn relayable(&self, peer: &PeerId) -> bool {
        self.channels.relay.is_some() && lock(&self.channels.open).contains_key(peer)
    }

    /// The TURN server handed out, if the directory runs one.
    pub fn relay_address(&self) -> Option<&str> {
        self.channels.relay.as_ref().map(|r| r.offer.address())
    }

    pub fn introductions(&self) -> IntroductionCounts {
        let c = |i: usize| self.channels.counts[i].load(Ordering::Relaxed);
        IntroductionCounts {
            punch_made: c(PUNCH_MADE),
            punch_refused: c(PUNCH_REFUSED),
            relay_made: c(RELAY_MADE),
            relay_refused: c(RELAY_REFUSED),
            relay_failed: c(RELAY_FAILED),
            relay_micros: c(RELAY_MICROS),
        }
    }
}
