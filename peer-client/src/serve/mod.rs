//! Serving: answers other peers' requests for the files of a [`Library`].
//!
//! This module owns the QUIC accept loop, one task per connection and one per request stream,
//! the upload slots, the upload bandwidth cap and the serving counters. The protocol itself
//! (framing, bounds, messages) is [`crate::wire`]'s; identity and TLS are [`crate::tls`]'s.
//!
//! What it must never do:
//! - **trust a request field.** Ids and range bounds arrive validated by the wire codec, and a
//!   range is checked against the file's size before a byte is read. A malformed request costs
//!   the sender its stream (reset, or BAD_REQUEST) and nothing else: the connection and its
//!   other streams go on.
//! - **hold a file open between requests.** A range request opens its file, reads its pieces,
//!   and closes it; the library holds paths, not descriptors.
//! - **block the runtime on disk.** Library lookups, opens and reads run on tokio's blocking
//!   pool, one bounded piece at a time.
//! - **queue work it cannot do.** A data request that finds every upload slot taken is answered
//!   BUSY at once, with a queue position and an estimated wait, instead of waiting in a task.
//! - **let one peer hold what others need.** Connections, request streams and upload slots are
//!   bounded per remote address and in total ([`admission`] decides, [`gate`] counts), and an
//!   answer whose body makes no progress for a few seconds is reset and frees its slot, so a
//!   client that never reads cannot keep a slot. Everything a connection held goes back when it
//!   dies, which QUIC notices within its idle timeout (a few seconds: see `quaver_shared::tls`).
//!
//! Counters are plain atomics read through [`Server::stats`].

mod admission;
mod budget;
mod gate;
mod pieces;
mod stream;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use quinn::{Endpoint, Incoming, VarInt};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::library::Library;
use crate::wire::ALPN;
use admission::{Asker, ConnectionVerdict, IpGroup, Limits};
use budget::TokenBucket;
use gate::{Gate, Permit};
use pieces::PiecePool;

/// Stream reset code: the request frame was oversized, truncated or never came.
pub const RESET_BAD_FRAME: VarInt = VarInt::from_u32(1);
/// Stream reset code: the server failed mid-answer (disk, store); ask elsewhere or later.
pub const RESET_INTERNAL: VarInt = VarInt::from_u32(2);
/// Connection close code: the peer did not negotiate `quaver/1`.
pub const CLOSE_WRONG_PROTOCOL: VarInt = VarInt::from_u32(3);
/// Stream reset code: the peer took no bytes of the answer for too long (it reads too slowly
/// or not at all), so its upload slot went to someone else. Ask again.
pub const RESET_STALLED: VarInt = VarInt::from_u32(4);
/// Stream reset code: the peer has too many requests in progress (from its address, or the
/// server in all) and could not even be told BUSY. Ask again later, with fewer at once.
pub const RESET_TOO_MANY_REQUESTS: VarInt = VarInt::from_u32(5);

/// How long [`Server::shutdown`] lets answers in progress finish before cutting them off.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// How a node serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServeConfig {
    /// Uploads (range and outboard bodies) served at the same time; more are answered BUSY.
    /// `Have` and `Status` answers never need a slot. One remote address may hold half of
    /// them (rounded up). Default 8.
    pub upload_slots: usize,
    /// Cap on body bytes per second, shared by all uploads. Off (`None`) by default.
    pub max_upload_bytes_per_sec: Option<u64>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self { upload_slots: 8, max_upload_bytes_per_sec: None }
    }
}

/// Serving counters since [`Server::spawn`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServeStats {
    /// Body bytes (ranges and outboards) handed to QUIC; headers not counted.
    pub bytes_sent: u64,
    /// Request streams accepted, well-formed or not.
    pub requests: u64,
    /// Requests answered BUSY.
    pub busy_answers: u64,
    /// Connections refused (too many from one address, or in all).
    pub refused_connections: u64,
    /// Request streams refused (too many in progress from one address, or in all).
    pub refused_streams: u64,
    /// Answers reset because the peer took none of their bytes for too long.
    pub stalled_answers: u64,
}

/// What every task of a server shares.
struct Shared {
    library: Arc<dyn Library>,
    gate: Arc<Gate>,
    bucket: Option<TokenBucket>,
    /// Buffers for file pieces, reused once peers have acknowledged them.
    pieces: Arc<PiecePool>,
    bytes_sent: AtomicU64,
    requests: AtomicU64,
    busy_answers: AtomicU64,
    refused_connections: AtomicU64,
    refused_streams: AtomicU64,
    stalled_answers: AtomicU64,
}

/// A running server. Dropping it aborts every task it runs (answers are cut off); call
/// [`Server::shutdown`] to stop gracefully.
pub struct Server {
    endpoint: Endpoint,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl Server {
    /// Starts answering the connections `endpoint` accepts (see [`crate::tls::endpoint`]).
    /// Must be called inside a tokio runtime.
    pub fn spawn(endpoint: Endpoint, library: Arc<dyn Library>, config: ServeConfig) -> Server {
        // A quarter second of rate as the burst lets an idle node start an upload at once while
        // keeping the pace smooth; the floor of one piece keeps tiny caps from stalling a piece.
        let bucket =
            config.max_upload_bytes_per_sec.map(|rate| TokenBucket::new(rate, (rate / 4).max(stream::PIECE)));
        let shared = Arc::new(Shared {
            library,
            gate: Gate::new(Limits::for_slots(config.upload_slots)),
            bucket,
            // Enough for every slot's read-ahead: what a fully busy server reuses each round.
            pieces: PiecePool::new(
                stream::PIECE as usize,
                config.upload_slots.saturating_mul(stream::PIECES_AHEAD),
            ),
            bytes_sent: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            busy_answers: AtomicU64::new(0),
            refused_connections: AtomicU64::new(0),
            refused_streams: AtomicU64::new(0),
            stalled_answers: AtomicU64::new(0),
        });
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(accept_loop(endpoint.clone(), Arc::clone(&shared), stopped));
        if let Ok(addr) = endpoint.local_addr() {
            tracing::info!(%addr, "serving peers");
        }
        Server { endpoint, shared, stop, task: Some(task) }
    }

    /// The endpoint this server answers on (it can also dial out, see [`crate::tls::connect`]).
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    pub fn stats(&self) -> ServeStats {
        ServeStats {
            bytes_sent: self.shared.bytes_sent.load(Ordering::Relaxed),
            requests: self.shared.requests.load(Ordering::Relaxed),
            busy_answers: self.shared.busy_answers.load(Ordering::Relaxed),
            refused_connections: self.shared.refused_connections.load(Ordering::Relaxed),
            refused_streams: self.shared.refused_streams.load(Ordering::Relaxed),
            stalled_answers: self.shared.stalled_answers.load(Ordering::Relaxed),
        }
    }

    /// Upload slots free right now (reported to the directory for source ranking).
    pub fn free_slots(&self) -> u32 {
        self.shared.gate.status().0
    }

    /// Stops accepting connections and streams, lets answers in progress finish (for at most a
    /// few seconds), then closes the endpoint and waits until peers were told.
    pub async fn shutdown(mut self) {
        // New connections are refused from here on; existing ones stop taking new streams.
        self.endpoint.set_server_config(None);
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(DRAIN_TIMEOUT, task).await.is_err() {
                tracing::warn!("answers still running at shutdown were cut off");
                abort.abort();
            }
        }
        // Closing only after the answers were acknowledged is what keeps their tails from being
        // lost (STACK.md pitfall 12); wait_idle then lets the close frames reach the peers.
        self.endpoint.close(0u32.into(), b"bye");
        self.endpoint.wait_idle().await;
        tracing::info!("stopped serving peers");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            // Aborting the accept loop drops its JoinSet, which aborts every connection task,
            // whose JoinSets abort every stream task.
            task.abort();
        }
    }
}

/// Resolves once a stop was requested (or the server is gone).
async fn stopping(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

async fn accept_loop(endpoint: Endpoint, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => {
                    let ip = IpGroup::of(incoming.remote_address().ip());
                    match shared.gate.connection(ip, incoming.remote_address_validated()) {
                        Ok(permit) => {
                            let shared = Arc::clone(&shared);
                            connections.spawn(serve_connection(incoming, permit, shared, stop.clone()));
                        }
                        Err(verdict) => send_away(&shared, incoming, verdict),
                    }
                }
                None => break, // endpoint closed
            },
            // Reap finished connections so the set does not grow with every peer ever seen.
            Some(done) = connections.join_next(), if !connections.is_empty() => log_join(done),
            () = stopping(&mut stop) => break,
        }
    }
    while let Some(done) = connections.join_next().await {
        log_join(done);
    }
}

/// Sends away a connection the limits did not admit: a Retry when it must prove its address
/// first (stateless: nothing is kept until it comes back), a refusal (QUIC's
/// CONNECTION_REFUSED) when there is no room for it.
fn send_away(shared: &Shared, incoming: Incoming, verdict: ConnectionVerdict) {
    let remote = incoming.remote_address();
    if verdict == ConnectionVerdict::Validate && incoming.may_retry() {
        if let Err(e) = incoming.retry() {
            e.into_incoming().refuse();
        }
        return;
    }
    // A hostile client may try thousands: debug, not warn, so it cannot flood the log.
    tracing::debug!(%remote, ?verdict, "connection refused");
    shared.refused_connections.fetch_add(1, Ordering::Relaxed);
    incoming.refuse();
}

async fn serve_connection(
    incoming: Incoming,
    _permit: Permit,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let remote = incoming.remote_address();
    let ip = IpGroup::of(remote.ip());
    let connection = tokio::select! {
        result = incoming => match result {
            Ok(connection) => connection,
            Err(e) => {
                tracing::debug!(%remote, error = %e, "incoming handshake failed");
                return;
            }
        },
        () = stopping(&mut stop) => return,
    };
    // rustls already refuses a client that offers other protocols; this also refuses one that
    // offered none, so every stream we parse really speaks quaver/1.
    let protocol = connection
        .handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol);
    if protocol.as_deref() != Some(ALPN) {
        tracing::debug!(%remote, "peer did not negotiate quaver/1");
        connection.close(CLOSE_WRONG_PROTOCOL, b"quaver/1 required");
        return;
    }
    // Counted by address and, if the client proved its node key, by PeerId too.
    let who = Asker { ip, peer: crate::tls::peer_id_of(&connection) };
    tracing::debug!(%remote, peer = ?who.peer, "peer connected");

    let mut streams = JoinSet::new();
    loop {
        tokio::select! {
            accepted = connection.accept_bi() => match accepted {
                Ok((send, recv)) => match shared.gate.stream(who) {
                    Ok(permit) => {
                        streams.spawn(stream::serve_stream(Arc::clone(&shared), who, permit, send, recv));
                    }
                    Err(why) => {
                        tracing::debug!(%remote, %why, "request stream refused");
                        shared.refused_streams.fetch_add(1, Ordering::Relaxed);
                        stream::refuse_stream(send, recv);
                    }
                },
                Err(e) => {
                    tracing::debug!(%remote, reason = %e, "peer connection ended");
                    break;
                }
            },
            Some(done) = streams.join_next(), if !streams.is_empty() => log_join(done),
            () = stopping(&mut stop) => break,
        }
    }
    // Answers already started run to their end (or to the connection's end).
    while let Some(done) = streams.join_next().await {
        log_join(done);
    }
    crate::tls::log_transport_stats(&connection, "peer connection closed");
}

fn log_join(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done
        && e.is_panic()
    {
        tracing::error!(error = %e, "a serving task panicked");
    }
}

#[cfg(test)]
mod tests;
