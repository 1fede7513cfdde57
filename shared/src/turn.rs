//! The node's QUIC socket with a TURN allocation spliced in: how a source that nobody can
//! punch through to (a symmetric NAT) still serves, through the directory's relay.
//!
//! The source allocates a relayed address on the TURN server (RFC 8656, coturn) from its own
//! QUIC socket, with credentials the directory minted, and permits each downloader's IP the
//! directory introduces. The downloader needs nothing special: it dials the relayed address
//! like any other, from its own socket. Datagrams from the TURN server are handed to the
//! sans-IO TURN client (`turn-client-proto`): peer data comes out as a datagram *from that
//! peer*, so quinn sees an ordinary connection; replies to a peer that came through the relay
//! go back through it (as ChannelData once a channel is bound, 4 bytes a datagram). TLS pins
//! the source's PeerId end to end: the relay sees only ciphertext.
//!
//! Without an allocation the splice is a pass-through that costs one atomic load per call.
//!
//! Must never send a datagram for a relayed peer straight to it (its NAT would drop it, and
//! it would reveal nothing useful), block the runtime (the TURN client sits behind a mutex
//! held only to encode or decode), or keep the allocation past `release`.

use std::collections::HashSet;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::sync::Notify;
use turn_client_proto::api::{TurnConfig, TurnEvent, TurnPollRet, TurnRecvRet};
use turn_client_proto::prelude::*;
use turn_client_proto::stun::Instant as TurnInstant;
use turn_client_proto::stun::agent::Transmit as TurnTransmit;
use turn_client_proto::types::{TransportType, TurnCredentials};
use turn_client_proto::udp::TurnClientUdp;

/// Most peers remembered as reached through the relay; past it the set starts again (a peer
/// forgotten is remembered again by its next datagram).
const MAX_RELAYED_PEERS: usize = 4096;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum TurnError {
    #[error("the TURN server {0} refused the allocation (credentials expired or wrong, or over its quota)")]
    Refused(SocketAddr),
    #[error("no answer from the TURN server {server} within {} s", .after.as_secs())]
    Timeout { server: SocketAddr, after: Duration },
    #[error("the TURN server {0} refused to permit the peer")]
    PermissionRefused(SocketAddr),
    #[error("the allocation on {0} ended")]
    Closed(SocketAddr),
}

/// The state of the allocation, shared by the socket and the task that drives its timers.
struct Allocation {
    client: TurnClientUdp,
    server: SocketAddr,
    /// What the client was told its local address is: the address datagrams are fed to it as.
    local: SocketAddr,
    base: std::time::Instant,
    relayed: Option<SocketAddr>,
    failed: Option<TurnError>,
    denied: HashSet<IpAddr>,
    /// Peers whose datagrams came through the relay: replies go back the same way.
    peers: HashSet<SocketAddr>,
}

impl Allocation {
    fn now(&self) -> TurnInstant {
        TurnInstant::from_std(self.base)
    }

    /// What the client has to send to the TURN server now (sent once the lock is let go).
    fn transmits(&mut self, now: TurnInstant) -> Vec<(SocketAddr, Vec<u8>)> {
        std::iter::from_fn(|| self.client.poll_transmit(now)).map(|t| (t.to, t.data.to_vec())).collect()
    }

    /// Takes the client's events into the state the waiters look at.
    fn take_events(&mut self) {
        while let Some(event) = self.client.poll_event() {
            match event {
                TurnEvent::AllocationCreated(_, relayed) => self.relayed = Some(relayed),
                TurnEvent::AllocationCreateFailed(_) => self.failed = Some(TurnError::Refused(self.server)),
                TurnEvent::PermissionCreateFailed(_, ip) => {
                    self.denied.insert(ip);
                }
                _ => {}
            }
        }
    }
}

/// quinn's socket, with an optional TURN allocation (see the module doc).
pub struct TurnSplice {
    inner: Arc<dyn AsyncUdpSocket>,
    active: AtomicBool,
    allocation: Mutex<Option<Allocation>>,
    /// Wakes the driver task: the client has something to send or a timer moved.
    wake: Notify,
    /// Wakes whoever waits for an allocation or a permission.
    changed: Notify,
}

impl std::fmt::Debug for TurnSplice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnSplice").field("active", &self.active.load(Ordering::Relaxed)).finish()
    }
}

impl TurnSplice {
    pub(crate) fn new(inner: Arc<dyn AsyncUdpSocket>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            active: AtomicBool::new(false),
            allocation: Mutex::new(None),
            wake: Notify::new(),
            changed: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Option<Allocation>> {
        // The client's state is updated in whole calls; a panic cannot leave it half-written.
        self.allocation.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The relayed address on `server`, allocating it with `username`/`password` unless an
    /// allocation on that server lives already. Waits at most `timeout`.
    pub async fn allocate(
        self: &Arc<Self>,
        server: SocketAddr,
        username: &str,
        password: &str,
        timeout: Duration,
    ) -> Result<SocketAddr, TurnError> {
        let fresh = {
            let mut slot = self.lock();
            let reusable = slot.as_ref().is_some_and(|a| a.server == server && a.failed.is_none());
            if !reusable {
                let local = self.inner.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
                let config = TurnConfig::new(TurnCredentials::new(username, password));
                *slot = Some(Allocation {
                    client: TurnClientUdp::allocate(local, server, config),
                    server,
                    local,
                    base: std::time::Instant::now(),
                    relayed: None,
                    failed: None,
                    denied: HashSet::new(),
                    peers: HashSet::new(),
                });
                self.active.store(true, Ordering::Release);
            }
            !reusable
        };
        if fresh {
            tokio::spawn(drive(Arc::downgrade(self)));
        }
        self.wait(timeout, server, |a| match (&a.failed, a.relayed) {
            (Some(e), _) => Some(Err(e.clone())),
            (None, Some(relayed)) => Some(Ok(relayed)),
            _ => None,
        })
        .await
    }

    /// Lets datagrams from `ip` through the allocation (a TURN permission, refreshed by the
    /// client while the allocation lives).
    pub async fn permit(self: &Arc<Self>, ip: IpAddr, timeout: Duration) -> Result<(), TurnError> {
        let server = {
            let mut slot = self.lock();
            let a = slot.as_mut().ok_or(TurnError::Closed(SocketAddr::from(([0, 0, 0, 0], 0))))?;
            let now = a.now();
            a.denied.remove(&ip);
            // Already there (or on its way): the wait below sees it.
            let _ = a.client.create_permission(TransportType::Udp, ip, now);
            a.server
        };
        self.wake.notify_one();
        self.wait(timeout, server, |a| {
            if a.client.have_permission(TransportType::Udp, ip) {
                Some(Ok(()))
            } else if a.denied.contains(&ip) {
                Some(Err(TurnError::PermissionRefused(a.server)))
            } else {
                a.failed.clone().map(Err)
            }
        })
        .await
    }

    /// The relayed address, while an allocation lives.
    pub fn relayed_address(&self) -> Option<SocketAddr> {
        self.lock().as_ref().and_then(|a| a.relayed)
    }

    /// Gives the allocation back to the TURN server (at shutdown).
    pub fn release(&self) {
        let sends = match self.lock().take() {
            Some(mut a) => {
                let now = a.now();
                let _ = a.client.delete(now);
                a.transmits(now)
            }
            None => Vec::new(),
        };
        self.active.store(false, Ordering::Release);
        self.wake.notify_one();
        self.send_all(sends);
    }

    async fn wait<T>(
        &self,
        timeout: Duration,
        server: SocketAddr,
        done: impl Fn(&Allocation) -> Option<Result<T, TurnError>>,
    ) -> Result<T, TurnError> {
        let waiting = async {
            loop {
                let changed = self.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                match self.lock().as_ref() {
                    None => return Err(TurnError::Closed(server)),
                    Some(a) => {
                        if let Some(outcome) = done(a) {
                            return outcome;
                        }
                    }
                }
                changed.await;
            }
        };
        tokio::time::timeout(timeout, waiting)
            .await
            .map_err(|_| TurnError::Timeout { server, after: timeout })?
    }

    fn send_all(&self, sends: Vec<(SocketAddr, Vec<u8>)>) {
        for (to, contents) in sends {
            let transmit = Transmit {
                destination: to,
                ecn: None,
                contents: &contents,
                segment_size: None,
                src_ip: None,
            };
            // A control message lost to a full socket is retransmitted by the client's timers.
            let _ = self.inner.try_send(&transmit);
        }
    }

    /// Runs the client's timers and sends what it has to send; when to run again.
    fn turn(&self) -> Option<std::time::Instant> {
        let mut slot = self.lock();
        let a = slot.as_mut()?;
        let now = a.now();
        let next = match a.client.poll(now) {
            TurnPollRet::WaitUntil(at) => Some(at.to_std(a.base)),
            TurnPollRet::Closed => {
                a.failed.get_or_insert(TurnError::Closed(a.server));
                None
            }
            // TCP allocations are never asked for.
            _ => Some(std::time::Instant::now() + Duration::from_millis(50)),
        };
        let sends = a.transmits(now);
        a.take_events();
        drop(slot);
        self.send_all(sends);
        self.changed.notify_waiters();
        next
    }

    /// Hands one datagram from the TURN server to the client: the peer's datagram it carried
    /// (written into `out`) and who sent it, or `None` for the client's own messages.
    fn unwrap_from_server(
        &self,
        a: &mut Allocation,
        datagram: &[u8],
        out: &mut Vec<u8>,
    ) -> Option<SocketAddr> {
        let now = a.now();
        let transmit = TurnTransmit::new(datagram, TransportType::Udp, a.server, a.local);
        match a.client.recv(transmit, now) {
            TurnRecvRet::PeerData(data) => {
                out.clear();
                out.extend_from_slice(data.data());
                let peer = data.peer;
                if a.peers.insert(peer) {
                    if a.peers.len() > MAX_RELAYED_PEERS {
                        a.peers.clear();
                        a.peers.insert(peer);
                    }
                    // A channel costs 4 bytes a datagram instead of a 36-byte indication.
                    let _ = a.client.bind_channel(TransportType::Udp, peer, now);
                    self.wake.notify_one();
                }
                Some(peer)
            }
            _ => {
                a.take_events();
                self.wake.notify_one();
                self.changed.notify_waiters();
                None
            }
        }
    }
}

/// The allocation's timers (refreshes, retransmits, permissions and channels kept alive),
/// until the splice is dropped or the allocation released.
async fn drive(splice: std::sync::Weak<TurnSplice>) {
    loop {
        let Some(s) = splice.upgrade() else { return };
        let Some(next) = s.turn() else { return };
        let woken = s.wake.notified();
        let sleep = tokio::time::sleep_until(tokio::time::Instant::from_std(next));
        tokio::select! {
            _ = woken => {}
            _ = sleep => {}
        }
    }
}

impl AsyncUdpSocket for TurnSplice {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Arc::clone(&self.inner).create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        if !self.active.load(Ordering::Acquire) {
            return self.inner.try_send(transmit);
        }
        let wrapped: Vec<(SocketAddr, Vec<u8>)> = {
            let mut slot = self.lock();
            let Some(a) = slot.as_mut().filter(|a| a.peers.contains(&transmit.destination)) else {
                drop(slot);
                return self.inner.try_send(transmit);
            };
            let now = a.now();
            let size = transmit.segment_size.unwrap_or(transmit.contents.len()).max(1);
            transmit
                .contents
                .chunks(size)
                .filter_map(|datagram| {
                    let built = a.client.send_to(TransportType::Udp, transmit.destination, datagram, now);
                    let t = built.ok().flatten()?;
                    Some((t.to, t.data.build()))
                })
                .collect()
        };
        for (to, bytes) in wrapped {
            let piece = Transmit {
                destination: to,
                ecn: transmit.ecn,
                contents: &bytes,
                segment_size: None,
                src_ip: None,
            };
            // As with a split GSO batch: a datagram lost here is resent by QUIC.
            let _ = self.inner.try_send(&piece);
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let n = match self.inner.poll_recv(cx, bufs, meta) {
            Poll::Ready(Ok(n)) => n,
            other => return other,
        };
        if !self.active.load(Ordering::Acquire) {
            return Poll::Ready(Ok(n));
        }
        let mut slot = self.lock();
        let Some(a) = slot.as_mut() else { return Poll::Ready(Ok(n)) };
        let mut out = Vec::new();
        for (buf, m) in bufs.iter_mut().zip(meta.iter_mut()).take(n) {
            if m.addr != a.server {
                continue;
            }
            // A GRO batch holds several datagrams of `stride` bytes: each is unwrapped, and
            // the results written back one after another. They keep one stride only while
            // they come from one peer with one length; the rest of a batch that breaks that
            // is dropped (QUIC resends it).
            let (len, stride) = (m.len, m.stride.max(1));
            let mut written = 0;
            let mut kept: Option<(SocketAddr, usize)> = None;
            let mut start = 0;
            while start < len {
                let end = (start + stride).min(len);
                let datagram = buf[start..end].to_vec();
                start = end;
                let Some(peer) = self.unwrap_from_server(a, &datagram, &mut out) else { continue };
                match kept {
                    None => kept = Some((peer, out.len())),
                    Some((p, l)) if p == peer && (l == out.len() || start >= len) => {}
                    Some(_) => break,
                }
                buf[written..written + out.len()].copy_from_slice(&out);
                written += out.len();
            }
            m.len = written;
            if let Some((peer, first)) = kept {
                m.addr = peer;
                m.stride = first;
            }
        }
        Poll::Ready(Ok(n))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}
