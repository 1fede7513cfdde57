//! The rendezvous endpoints (`proto/directory.proto`, "Rendezvous"): two QUIC server endpoints
//! on two UDP ports that tell each peer the address its packets came from, so that a peer
//! behind NAT learns its mapped address and its router's kind (`quaver_core::nat`) from the
//! very socket it serves on.
//!
//! Why QUIC and not STUN: the peer's socket belongs to quinn, which would have to demultiplex
//! STUN answers from QUIC packets; a QUIC connection from that socket gives the same
//! observation with the TLS the peer already speaks, and it is also the channel the directory
//! keeps with the peer (its keep-alives hold the router's mapping open).
//!
//! The endpoints prove the directory's own key (`rendezvous.key` in its data dir, created at the
//! first start), which `AnnounceResponse.directory_id` names, so a peer pins it as it pins a
//! source. A peer that proves its own node key on the first port is remembered by `PeerId`
//! while its connection lives (the newest connection of a `PeerId` wins): `channels` counts
//! them. Anonymous callers get their observation and are let go.
//!
//! Must never answer more than one observation per stream, read more than it bounds, or hold a
//! connection past its peer's idle timeout (the transport's, 6 s without a keep-alive).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message;
use quaver_shared::directory::v1::RendezvousObservation;
use quaver_shared::tls::{self, TlsError};
use quaver_shared::{NodeKey, PeerId};
use tokio::sync::watch;

/// The key file of the rendezvous endpoints, in the directory's data dir.
pub const KEY_FILE: &str = "rendezvous.key";
/// Most peer connections kept at once; past it, new ones get their observation and are closed.
pub const MAX_CHANNELS: usize = 200_000;
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
    open: Mutex<HashMap<PeerId, quinn::Connection>>,
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
    // The map holds connection handles only; a panic elsewhere cannot leave it half-updated.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One peer connection: the observation on the first stream it opens, then (on the first port,
/// for a peer that proved its key) kept until it closes.
async fn answer(incoming: quinn::Incoming, channels: Arc<Channels>, keep: bool) {
    let Ok(connection) = incoming.await else { return };
    let observed = connection.remote_address();
    let asked = tokio::time::timeout(ASK_TIMEOUT, connection.accept_bi()).await;
    let Ok(Ok((mut send, _recv))) = asked else {
        connection.close(1u32.into(), b"no request");
        return;
    };
    let message =
        RendezvousObservation { observed_address: observed.to_string() }.encode_length_delimited_to_vec();
    if send.write_all(&message).await.is_err() || send.finish().is_err() {
        return;
    }
    let peer = tls::peer_id_of(&connection);
    let Some(peer) = peer.filter(|_| keep) else {
        // Let the peer read the answer and close; the idle timeout ends it if it does not.
        let _ = tokio::time::timeout(ASK_TIMEOUT, connection.closed()).await;
        return;
    };
    if !channels.keep(peer, &connection) {
        tracing::warn!(peer = %peer, max = MAX_CHANNELS, "rendezvous channels full; not keeping this one");
        let _ = tokio::time::timeout(ASK_TIMEOUT, connection.closed()).await;
        return;
    }
    tracing::debug!(peer = %peer, %observed, "rendezvous channel open");
    connection.closed().await;
    channels.forget(peer, &connection);
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
        }
    }
}
