//! The accept path of the gRPC port: every TCP connection is counted against the connection
//! limits before anything else happens (over a limit it is closed at once: there is no gRPC
//! yet to answer with), and with TLS its handshake runs on a task of its own, bounded by a
//! timeout, so a slow or silent client never holds up the accept loop or other handshakes.
//!
//! The streams handed to tonic carry their TCP connect info (`Tracked` is `Connected` with
//! `TcpConnectInfo`; tonic wraps it as `TlsConnectInfo<TcpConnectInfo>` for TLS), so
//! `Request::remote_addr` keeps giving the client's address, which Announce depends on.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use super::limits::{ConnectionGuard, Limits};
use super::metrics::Metrics;

/// Accepted connections waiting for tonic to pick them up.
const BACKLOG: usize = 256;

/// A TCP connection holding its place in the connection limits until it is dropped.
pub struct Tracked {
    stream: TcpStream,
    _guard: ConnectionGuard,
}

impl Connected for Tracked {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Tracked {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// The incoming stream tonic serves: a channel fed by the accept loop. When tonic drops it
/// (shutdown), the accept loop ends and the listener closes.
pub type Incoming<IO> = ReceiverStream<io::Result<IO>>;

/// Plain HTTP/2 connections.
pub fn plain(listener: TcpListener, limits: Arc<Limits>, metrics: Arc<Metrics>) -> Incoming<Tracked> {
    accept(listener, limits, metrics, |conn| async move { Some(conn) })
}

/// TLS connections; each handshake runs concurrently, bounded by `timeout`.
pub fn tls(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    timeout: Duration,
    limits: Arc<Limits>,
    metrics: Arc<Metrics>,
) -> Incoming<TlsStream<Tracked>> {
    let failures = metrics.clone();
    accept(listener, limits, metrics, move |conn: Tracked| {
        let (acceptor, metrics) = (acceptor.clone(), failures.clone());
        async move {
            let peer = conn.stream.peer_addr().ok();
            match tokio::time::timeout(timeout, acceptor.accept(conn)).await {
                Ok(Ok(stream)) => Some(stream),
                Ok(Err(e)) => {
                    metrics.connection_rejected("tls_handshake");
                    tracing::debug!(peer = ?peer, error = %e, "TLS handshake failed");
                    None
                }
                Err(_) => {
                    metrics.connection_rejected("tls_handshake_timeout");
                    tracing::debug!(peer = ?peer, ?timeout, "TLS handshake timed out");
                    None
                }
            }
        }
    })
}

fn accept<IO, F, Fut>(
    listener: TcpListener,
    limits: Arc<Limits>,
    metrics: Arc<Metrics>,
    upgrade: F,
) -> Incoming<IO>
where
    IO: Send + 'static,
    F: Fn(Tracked) -> Fut + Send + 'static,
    Fut: Future<Output = Option<IO>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(BACKLOG);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = tx.closed() => return,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors or a connection reset before accept: wait a
                    // little rather than spin, and keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let guard = match limits.admit_connection(peer.ip()) {
                Ok(guard) => guard,
                Err(refusal) => {
                    metrics.connection_rejected(refusal.label());
                    tracing::debug!(%peer, %refusal, "connection refused");
                    continue;
                }
            };
            // gRPC calls are small request/response pairs: do not let Nagle delay them.
            let _ = stream.set_nodelay(true);
            let upgraded = upgrade(Tracked { stream, _guard: guard });
            let tx = tx.clone();
            tokio::spawn(async move {
                if let Some(io) = upgraded.await {
                    let _ = tx.send(Ok(io)).await;
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
