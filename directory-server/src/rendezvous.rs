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
//! Must never answer more than once per stream, read more than it bounds, introduce a peer
//! that did not prove its key, or hold a connection past its peer's idle timeout (the
//! transport's, 6 s without a keep-alive).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message;
use quaver_shared::directory::v1::{Introduction, RendezvousAnswer, RendezvousRequest};
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
    /// Connections to the first port, by the `PeerId` they proved.
    open: Mutex<HashMap<PeerId, quinn::Connection>>,
    /// What the second port last saw of each peer: the same address as its first-port
    /// connection means one mapping for every destination.
    second: Mutex<HashMap<PeerId, SocketAddr>>,
}

impl Rendezvous {
    /// Binds UDP `ip:ports[0]` and `ip:ports[1]` (0: any free port) with the key in `data_dir`.
    /// Must be called inside a tokio runtime.
    pub fn bind(ip: std::net::IpAddr, ports: [u16; 2], data_dir: &Path) -> Result<Self, RendezvousError> {
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
        Ok(Self { id: key.peer_id(), endpoints: [first, second], ports: [p0, p1], channels: Arc::default() })
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
            match channels.introduce(peer, &request.introduce).await {
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

    /// Tells `target` to dial `asker`, and gives back the target's mapped address.
    async fn introduce(&self, asker: PeerId, target: &[u8]) -> Result<SocketAddr, String> {
        let target = PeerId::from_slice(target).map_err(|e| format!("introduce: {e}"))?;
        let (_, asker_address) = self.punchable(&asker).ok_or(
            "this peer cannot be introduced: its router maps it anew for every destination, or it \
             did not ask both rendezvous ports",
        )?;
        let (connection, target_address) = self
            .punchable(&target)
            .ok_or("that source cannot be introduced now (gone, or no longer punchable)")?;
        let message = Introduction { peer_id: asker.to_vec(), address: asker_address.to_string() };
        let sent = async {
            let mut s = connection.open_uni().await.map_err(|e| e.to_string())?;
            s.write_all(&message.encode_length_delimited_to_vec()).await.map_err(|e| e.to_string())?;
            s.finish().map_err(|e| e.to_string())
        };
        tokio::time::timeout(ASK_TIMEOUT, sent)
            .await
            .map_err(|_| "the source did not take the introduction in time".to_owned())?
            .map_err(|e| format!("the source's rendezvous connection failed: {e}"))?;
        tracing::debug!(%asker, %target, %asker_address, %target_address, "introduced");
        Ok(target_address)
    }
}

impl Rendezvous {
    /// Whether `peer` can be reached through introductions now (its channel is open and both
    /// ports saw one mapped address).
    pub fn punchable(&self, peer: &PeerId) -> bool {
        self.channels.punchable(peer).is_some()
    }
}
