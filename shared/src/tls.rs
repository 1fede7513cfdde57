//! A node's identity on the wire: QUIC + TLS 1.3 where the certificate *is* the `PeerId`.
//!
//! This module owns how a node proves who it is and how a client checks it (DESIGN.md,
//! Identities). A server presents a self-signed certificate made from its Ed25519 node key; a
//! client never asks a certificate authority anything: it was told which `PeerId` to expect (by
//! the directory, or by the user) and accepts the handshake only if the certificate's public key
//! is exactly that key and the server proves possession of it with a TLS 1.3 signature. Names,
//! dates, issuers and chains are ignored: the key is the whole identity, so a peer cannot be
//! impersonated and nothing expires.
//!
//! Both sides use it: peers serve and fetch with it, and the directory dials a peer back with
//! [`connect`] to check that the announced address answers with the announced key (DESIGN.md,
//! Presence). Its only I/O is what [`endpoint`] and [`connect`] do when called.
//!
//! What this module must never do:
//! - rely on the process-wide rustls provider: every config gets the **ring** provider explicitly
//!   (STACK.md pitfall 7: two providers in the tree would make rustls panic at the first build);
//! - accept TLS 1.2 or any signature scheme other than Ed25519;
//! - build a config without ALPN [`ALPN`] (pitfall 10: quinn's shortcut constructors set none).
//!
//! Clients may prove a `PeerId` too: a node dials with its own certificate ([`ClientAuth`],
//! [`connect_as`]) and the server reads the proven id back with [`peer_id_of`], so it can count
//! what one peer takes however many addresses it comes from. Client certificates are optional:
//! the directory's connect-back has no node key, and what a server hands out is public data
//! anyway, so an anonymous client is served, counted by its address alone.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{NoInitialCipherSuite, QuicClientConfig, QuicServerConfig};
use quinn::{EndpointConfig, IdleTimeout, MtuDiscoveryConfig, TransportConfig, VarInt};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::{NodeKey, PeerId};

/// The QUIC ALPN of the peer protocol (`quaver_core::wire` specifies it).
pub use quaver_core::wire::ALPN;

/// The SNI every client sends. Servers ignore it and so does [`client_config`]'s verifier: the
/// pinned key, not a name, says who answers. It is also the certificate's only subject name.
pub const SERVER_NAME: &str = "quaver.peer";

/// Most request streams a peer may have open on one connection at a time.
const MAX_CONCURRENT_STREAMS: u32 = 256;
/// Per-stream receive window: a whole 1 MiB range plus its header fits, so one range never
/// waits for a window update mid-body.
const STREAM_RECEIVE_WINDOW: u32 = 2 * 1024 * 1024;
/// Client keep-alives keep NAT bindings and idle connections to sources between bursts of
/// fetching. Servers send none: a client that goes quiet should time out and free its state.
/// Three fit in one [`IDLE_TIMEOUT`], so two lost in a row (each a lone small packet) do not
/// end a live connection.
const KEEP_ALIVE: Duration = Duration::from_secs(2);
/// A peer silent for this long (keep-alives included) is gone, and what it held goes back: a
/// server frees the upload slots of a client that died (SIGKILL, power, a lost network), so
/// the client's own restart, or anyone else, gets them within seconds rather than after
/// quinn's default 30 s. Short is safe for slow links: live ones carry data or keep-alives
/// well within this, and quinn never times out sooner than three probe timeouts (3 × PTO, RFC
/// 9000 10.1), so a high-latency path gets a longer timeout by itself. The timeout in force is
/// the smaller of the two sides' values: a node of an older release, keeping alive every 10 s,
/// loses an idle connection to us between downloads and dials again when it needs one.
const IDLE_TIMEOUT: Duration = Duration::from_secs(6);
/// The largest UDP payload this node accepts, announced to peers (the `max_udp_payload_size`
/// transport parameter), and the ceiling of its own MTU discovery. QUIC's cost is per packet
/// (an AEAD seal/open, a header, loss and ACK tracking, a share of the syscalls), so a path that
/// carries bigger datagrams should get them: loopback carries 64 KiB, jumbo-frame LANs 9000
/// bytes. quinn's defaults (announce 1472, search up to 1452) cap every path at Ethernet's
/// MTU, and the announced value clamps the other side's search, so raising only the discovery
/// bound changes nothing.
///
/// Why 16 KB: on the 4-source loopback bench it beat 6,550 bytes by about a tenth in
/// throughput and CPU, and 32 KB or 64 KB did no better. Bigger datagrams than 6,550 need
/// [`crate::udp::SplitSends`] under the endpoint, which keeps quinn's GSO batches of 10 within
/// what Linux sends at once. Four of these fill one 64 KiB send exactly.
///
/// Safe on the internet: packets start at quinn's 1200 bytes (what QUIC requires every path to
/// carry) and grow only when a padded probe of the bigger size is acknowledged; probes go out
/// with don't-fragment, one bigger than the local interface's MTU fails in the kernel at once,
/// a lost probe counts neither as congestion nor against the connection, and a path that later
/// shrinks is caught by black-hole detection.
const MAX_UDP_PAYLOAD: u16 = 16_376;
/// Bytes the kernel may queue for us on the UDP socket. Datagrams that arrive while the queue is
/// full are dropped before QUIC sees them, and QUIC takes every loss as congestion (and a run of
/// lost big datagrams as an MTU black hole, which drops the path back to 1200 bytes for a
/// minute). Linux's default (about 200 KiB) holds only a few milliseconds of a fast transfer,
/// less than one scheduling hiccup of a busy receiver; this holds about 10 ms at 400 MB/s.
/// The kernel caps the request at `net.core.rmem_max`, so on hosts with a low cap this is a
/// request, not a promise.
const SOCKET_RECEIVE_BUFFER: usize = 4 << 20;

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410): SEQUENCE { SEQUENCE { OID
/// 1.3.101.112 }, BIT STRING (0 unused bits) } followed by the 32 key bytes. The encoding is
/// fixed-length, so comparing the whole SPKI with this prefix plus the expected key is an exact
/// check of both the algorithm and the key.
const ED25519_SPKI_PREFIX: [u8; 12] =
    [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];

/// Why a TLS or QUIC configuration could not be built, or a connection not made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot build the node certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("TLS configuration refused: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("TLS configuration unusable for QUIC: {0}")]
    Quic(#[from] NoInitialCipherSuite),
    #[error("QUIC endpoint configuration refused: {0}")]
    Config(#[from] quinn::ConfigError),
    #[error("cannot bind the QUIC endpoint: {0}")]
    Bind(#[from] std::io::Error),
    #[error("cannot start a connection: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The handshake failed (wrong peer key included) or the connection was lost during it.
    #[error("connection failed: {0}")]
    Connection(#[from] quinn::ConnectionError),
}

/// The one crypto provider this crate uses, passed explicitly to every config: ring's, with
/// AES-128-GCM preferred over its default AES-256-GCM. Every byte a node sends or receives goes
/// through the AEAD, and AES-128-GCM is the suite TLS 1.3 requires of everyone (RFC 8446,
/// 9.1), still 128-bit secure, and a quarter cheaper: ring seals 1 GiB in 6.5 KB packets in
/// 0.35 s against 0.47 s on the bench machine, where AES-GCM was 14 % of a downloader's CPU.
/// The other suites stay, in ring's order: rustls follows the client's order, so a node of an
/// older release still gets the AES-256-GCM it asks for.
fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    // A stable sort: AES-128-GCM first, the rest as they were.
    provider.cipher_suites.sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(provider)
}

/// Transport settings. `accept_streams` is how many bidirectional streams the *other* side may
/// open: a server takes requests; a client takes none (the protocol never has a server open a
/// stream, but for the directory's introductions to a node, [`rendezvous_client_config`]), so
/// a server has no way to make a client do work. Nobody opens unidirectional streams.
fn transport(accept_streams: u32, keep_alive: Option<Duration>) -> Arc<TransportConfig> {
    let mut t = TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(accept_streams))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .stream_receive_window(VarInt::from_u32(STREAM_RECEIVE_WINDOW))
        .keep_alive_interval(keep_alive)
        .max_idle_timeout(IdleTimeout::try_from(IDLE_TIMEOUT).ok());
    let mut mtu = MtuDiscoveryConfig::default();
    mtu.upper_bound(MAX_UDP_PAYLOAD);
    t.mtu_discovery_config(Some(mtu));
    Arc::new(t)
}

/// Endpoint settings: announce [`MAX_UDP_PAYLOAD`] so that peers' MTU discovery may find what
/// the path really carries (see there).
fn endpoint_config() -> Result<EndpointConfig, TlsError> {
    let mut config = EndpointConfig::default();
    config.max_udp_payload_size(MAX_UDP_PAYLOAD)?;
    Ok(config)
}

/// A quinn endpoint on a socket bound to `bind`, with our [`endpoint_config`], a socket
/// receive buffer of [`SOCKET_RECEIVE_BUFFER`], and GSO batches split to fit one send
/// ([`crate::udp`]).
fn bind_endpoint(bind: SocketAddr, server: Option<quinn::ServerConfig>) -> Result<quinn::Endpoint, TlsError> {
    let (endpoint, _) = bind_spliced(bind, server)?;
    Ok(endpoint)
}

/// A node's endpoint, as [`endpoint`], and the handle of its socket's TURN splice
/// ([`crate::turn`]): how the node allocates on the relay when nobody can punch through to it.
pub fn node_endpoint(
    bind: SocketAddr,
    key: &NodeKey,
) -> Result<(quinn::Endpoint, Arc<crate::turn::TurnSplice>), TlsError> {
    bind_spliced(bind, Some(server_config(key)?))
}

fn bind_spliced(
    bind: SocketAddr,
    server: Option<quinn::ServerConfig>,
) -> Result<(quinn::Endpoint, Arc<crate::turn::TurnSplice>), TlsError> {
    let socket = std::net::UdpSocket::bind(bind)?;
    let udp = quinn::udp::UdpSocketState::new((&socket).into())?;
    if let Err(e) = udp.set_recv_buffer_size((&socket).into(), SOCKET_RECEIVE_BUFFER) {
        // Only speed is at stake: the kernel's default buffer still works, with more losses.
        tracing::debug!(error = %e, "cannot enlarge the UDP receive buffer");
    }
    let runtime = quinn::default_runtime().ok_or_else(|| std::io::Error::other("no async runtime found"))?;
    let socket = crate::udp::SplitSends::new(runtime.wrap_udp_socket(socket)?);
    let splice = crate::turn::TurnSplice::new(socket);
    let endpoint =
        quinn::Endpoint::new_with_abstract_socket(endpoint_config()?, server, splice.clone(), runtime)?;
    Ok((endpoint, splice))
}

/// Logs at debug what the transport did on `conn`: its path MTU, datagrams both ways, losses,
/// congestion events and MTU black holes. The first thing to look at when a transfer is slow
/// (a path stuck at 1200 bytes, losses from a full socket buffer). `event` says which end and
/// when, e.g. "peer connection closed".
pub fn log_transport_stats(conn: &quinn::Connection, event: &'static str) {
    let stats = conn.stats();
    tracing::debug!(
        remote = %conn.remote_address(),
        mtu = stats.path.current_mtu,
        rx_datagrams = stats.udp_rx.datagrams,
        rx_bytes = stats.udp_rx.bytes,
        tx_datagrams = stats.udp_tx.datagrams,
        tx_bytes = stats.udp_tx.bytes,
        lost_packets = stats.path.lost_packets,
        congestion_events = stats.path.congestion_events,
        black_holes = stats.path.black_holes_detected,
        "{event}"
    );
}

/// The server side of a node: a self-signed certificate over the node key, TLS 1.3 only, ALPN
/// `quaver/1`, no client authentication.
pub fn server_config(key: &NodeKey) -> Result<quinn::ServerConfig, TlsError> {
    server_config_with(key, provider())
}

/// [`server_config`] with another crypto provider (tests: a node of an older release).
fn server_config_with(key: &NodeKey, provider: Arc<CryptoProvider>) -> Result<quinn::ServerConfig, TlsError> {
    let (cert, pkcs8) = node_certificate(key)?;
    let clients = AnyNodeKey { algorithms: provider.signature_verification_algorithms };
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(clients))
        .with_single_cert(vec![cert], PrivateKeyDer::Pkcs8(pkcs8))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];

    let mut config = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls)?));
    config.transport_config(transport(MAX_CONCURRENT_STREAMS, None));
    Ok(config)
}

/// The node's self-signed certificate and the private key that signs its handshakes.
fn node_certificate(
    key: &NodeKey,
) -> Result<(CertificateDer<'static>, PrivatePkcs8KeyDer<'static>), TlsError> {
    let pkcs8 = PrivatePkcs8KeyDer::from(key.pkcs8_der().to_vec());
    let key_pair = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &rcgen::PKCS_ED25519)?;
    // rcgen's default validity runs from 1975 to 4096; clients ignore it anyway.
    let cert = rcgen::CertificateParams::new(vec![SERVER_NAME.to_owned()])?.self_signed(&key_pair)?;
    Ok((cert.der().clone(), pkcs8))
}

/// A node's certificate and key as a client presents them: made once per node (it costs a
/// certificate signature), used for every connection it dials.
#[derive(Debug)]
pub struct ClientAuth {
    cert: CertificateDer<'static>,
    pkcs8: PrivatePkcs8KeyDer<'static>,
}

impl ClientAuth {
    pub fn new(key: &NodeKey) -> Result<Arc<ClientAuth>, TlsError> {
        let (cert, pkcs8) = node_certificate(key)?;
        Ok(Arc::new(ClientAuth { cert, pkcs8 }))
    }
}

/// A client config that accepts exactly one server: the holder of `expected`'s private key.
/// It proves no identity of its own (see [`client_config_as`]).
pub fn client_config(expected: PeerId) -> Result<quinn::ClientConfig, TlsError> {
    client_config_as(expected, None)
}

/// [`client_config`] that also proves `me` to the server, if given.
pub fn client_config_as(expected: PeerId, me: Option<&ClientAuth>) -> Result<quinn::ClientConfig, TlsError> {
    let provider = provider();
    let verifier = PinnedPeer { expected, algorithms: provider.signature_verification_algorithms };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous() // "dangerous" only in the web-PKI sense: pinning replaces the CA check.
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut tls = match me {
        Some(me) => builder
            .with_client_auth_cert(vec![me.cert.clone()], PrivateKeyDer::Pkcs8(me.pkcs8.clone_key()))?,
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![ALPN.to_vec()];

    let mut config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls)?));
    config.transport_config(transport(0, Some(KEEP_ALIVE)));
    Ok(config)
}

/// The client side of a node's connection to the directory's rendezvous endpoint: like
/// [`client_config_as`], and the directory may open a few streams, each carrying one
/// introduction (a peer to dial now, or to open a relayed address to) and the node's answer.
pub fn rendezvous_client_config(expected: PeerId, me: &ClientAuth) -> Result<quinn::ClientConfig, TlsError> {
    let mut config = client_config_as(expected, Some(me))?;
    config.transport_config(transport(RENDEZVOUS_STREAMS, Some(KEEP_ALIVE)));
    Ok(config)
}

/// Introductions a rendezvous connection may have in flight at once.
const RENDEZVOUS_STREAMS: u32 = 8;

/// A QUIC endpoint bound to `bind` that serves as this node and can dial other nodes with
/// [`connect`]. Must be called inside a tokio runtime.
pub fn endpoint(bind: SocketAddr, key: &NodeKey) -> Result<quinn::Endpoint, TlsError> {
    bind_endpoint(bind, Some(server_config(key)?))
}

/// A QUIC endpoint bound to `bind` that only dials out (with [`connect`]) and refuses every
/// incoming connection: what the directory uses to check peers. Must be called inside a tokio
/// runtime.
pub fn client_endpoint(bind: SocketAddr) -> Result<quinn::Endpoint, TlsError> {
    Ok(quinn::Endpoint::client(bind)?)
}

/// An endpoint bound to `bind` that proves `key`'s identity to whoever dials it and serves
/// nothing else: it completes every handshake and holds the connection until the other side
/// closes it. Enough to pass the directory's connect-back check; used by load generators and
/// tests that play many peers. Closing the endpoint ends its accept task. Needs a tokio runtime.
pub fn identity_only_endpoint(bind: SocketAddr, key: &NodeKey) -> Result<quinn::Endpoint, TlsError> {
    let endpoint = endpoint(bind, key)?;
    let accepting = endpoint.clone();
    tokio::spawn(async move {
        while let Some(incoming) = accepting.accept().await {
            tokio::spawn(async move {
                if let Ok(connection) = incoming.await {
                    connection.closed().await;
                }
            });
        }
    });
    Ok(endpoint)
}

/// Connects to the node `peer` at `addr` and completes the handshake; fails if whoever answers
/// there cannot prove it holds `peer`'s key.
pub async fn connect(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    peer: PeerId,
) -> Result<quinn::Connection, TlsError> {
    connect_as(endpoint, addr, peer, None).await
}

/// [`connect`], proving `me` to the server if given.
pub async fn connect_as(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    peer: PeerId,
    me: Option<&ClientAuth>,
) -> Result<quinn::Connection, TlsError> {
    let connecting = endpoint.connect_with(client_config_as(peer, me)?, addr, SERVER_NAME)?;
    Ok(connecting.await?)
}

/// The `PeerId` a client of this server proved in its handshake, if it presented one.
pub fn peer_id_of(connection: &quinn::Connection) -> Option<PeerId> {
    let certs = connection.peer_identity()?.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    node_key_of(certs.first()?)
}

/// The Ed25519 key a node certificate carries, as a `PeerId`; `None` for any other key.
fn node_key_of(cert: &CertificateDer<'_>) -> Option<PeerId> {
    let cert = webpki::EndEntityCert::try_from(cert).ok()?;
    let key = cert.subject_public_key_info().as_ref().strip_prefix(&ED25519_SPKI_PREFIX[..])?.to_vec();
    PeerId::from_slice(&key).ok()
}

/// The verifier behind [`client_config`]: the certificate must carry the expected Ed25519 key,
/// and the handshake must be signed by it.
#[derive(Debug)]
struct PinnedPeer {
    expected: PeerId,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedPeer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The certificate's own signature, dates and names prove nothing here (anyone can
        // self-sign anything); only its key matters, and `verify_tls13_signature` below makes
        // the server prove it holds that key.
        let cert = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let spki = cert.subject_public_key_info();
        let mut want = ED25519_SPKI_PREFIX.to_vec();
        want.extend_from_slice(self.expected.as_bytes());
        if spki.as_ref() != want.as_slice() {
            tracing::debug!(expected = %self.expected, "server certificate is not the pinned peer key");
            return Err(rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        refuse_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_ed25519(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        // Node keys are Ed25519, so that is the only proof a node can give.
        vec![SignatureScheme::ED25519]
    }
}

/// The verifier of client certificates on a node's server: any node key, proven by the
/// handshake signature, or none at all (see the module doc).
#[derive(Debug)]
struct AnyNodeKey {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyNodeKey {
    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // As for servers, only the key counts; `verify_tls13_signature` makes the client prove it.
        match node_key_of(end_entity) {
            Some(_) => Ok(ClientCertVerified::assertion()),
            None => Err(rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)),
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        refuse_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_ed25519(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        // Node keys are Ed25519, so that is the only proof a node can give.
        vec![SignatureScheme::ED25519]
    }
}

/// TLS 1.2 signatures: unreachable with TLS 1.3-only configs; refused rather than trusted.
fn refuse_tls12() -> Result<HandshakeSignatureValid, rustls::Error> {
    Err(rustls::Error::General("TLS 1.2 is not accepted".into()))
}

/// A TLS 1.3 handshake signature, which must be Ed25519 (node keys are nothing else).
fn verify_ed25519(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
    algorithms: &WebPkiSupportedAlgorithms,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    if dss.scheme != SignatureScheme::ED25519 {
        return Err(rustls::Error::PeerMisbehaved(
            rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme,
        ));
    }
    rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aes_128_gcm_is_preferred_and_the_other_suites_stay() {
        let ours: Vec<_> = provider().cipher_suites.iter().map(|s| s.suite()).collect();
        assert_eq!(ours.first(), Some(&rustls::CipherSuite::TLS13_AES_128_GCM_SHA256));
        let mut defaults: Vec<_> =
            rustls::crypto::ring::default_provider().cipher_suites.iter().map(|s| s.suite()).collect();
        let mut sorted = ours.clone();
        defaults.sort_by_key(|s| u16::from(*s));
        sorted.sort_by_key(|s| u16::from(*s));
        assert_eq!(sorted, defaults, "a reorder, nothing added or dropped");
    }

    /// Nodes built before the reorder use ring's default order (AES-256-GCM first). Fetching
    /// from one must still work; the other way round, rustls follows the client's order, which
    /// is then ring's default.
    #[tokio::test]
    async fn nodes_with_ring_s_default_suite_order_still_connect() {
        let key = NodeKey::generate().unwrap();
        let older = Arc::new(rustls::crypto::ring::default_provider());
        let (_server, addr) = echo_server(server_config_with(&key, older).unwrap());
        let client = client_endpoint(loopback()).unwrap();
        let conn = connect(&client, addr, key.peer_id()).await.unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&[42]).await.unwrap();
        send.finish().unwrap();
        assert_eq!(recv.read_to_end(16).await.unwrap(), vec![42]);
    }

    fn loopback() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }

    /// A server that answers every stream by echoing one byte back, and its address.
    fn echo_server(config: quinn::ServerConfig) -> (quinn::Endpoint, SocketAddr) {
        let server = quinn::Endpoint::server(config, loopback()).unwrap();
        let addr = server.local_addr().unwrap();
        let accepting = server.clone();
        tokio::spawn(async move {
            while let Some(incoming) = accepting.accept().await {
                tokio::spawn(async move {
                    let Ok(conn) = incoming.await else { return };
                    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                        let mut byte = [0u8; 1];
                        if recv.read_exact(&mut byte).await.is_ok() {
                            let _ = send.write_all(&byte).await;
                            let _ = send.finish();
                        }
                    }
                });
            }
        });
        (server, addr)
    }

    #[tokio::test]
    async fn a_client_that_proves_its_key_is_known_by_it_and_an_anonymous_one_is_still_served() {
        let server_key = NodeKey::generate().unwrap();
        let server = quinn::Endpoint::server(server_config(&server_key).unwrap(), loopback()).unwrap();
        let addr = server.local_addr().unwrap();
        let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
        let accepting = server.clone();
        tokio::spawn(async move {
            while let Some(incoming) = accepting.accept().await {
                let Ok(conn) = incoming.await else { continue };
                let _ = seen_tx.send(peer_id_of(&conn));
            }
        });
        let client = quinn::Endpoint::client(loopback()).unwrap();
        let me = NodeKey::generate().unwrap();
        let auth = ClientAuth::new(&me).unwrap();
        let _proven = connect_as(&client, addr, server_key.peer_id(), Some(&auth)).await.unwrap();
        assert_eq!(seen.recv().await.unwrap(), Some(me.peer_id()));
        let _anonymous = connect(&client, addr, server_key.peer_id()).await.unwrap();
        assert_eq!(seen.recv().await.unwrap(), None);
    }

    fn node_cert(key: &NodeKey) -> CertificateDer<'static> {
        node_certificate(key).unwrap().0
    }

    #[tokio::test]
    async fn a_client_pinning_the_right_peer_connects_and_exchanges_a_byte() {
        let key = NodeKey::generate().unwrap();
        let (_server, addr) = echo_server(server_config(&key).unwrap());
        let client = quinn::Endpoint::client(loopback()).unwrap();

        let conn = connect(&client, addr, key.peer_id()).await.unwrap();
        let data = conn.handshake_data().unwrap();
        let data = data.downcast::<quinn::crypto::rustls::HandshakeData>().unwrap();
        assert_eq!(data.protocol.as_deref(), Some(ALPN));

        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&[42]).await.unwrap();
        send.finish().unwrap();
        assert_eq!(recv.read_to_end(16).await.unwrap(), vec![42]);
        conn.close(0u32.into(), b"done");
    }

    #[tokio::test]
    async fn a_client_pinning_another_peer_is_refused() {
        let key = NodeKey::generate().unwrap();
        let other = NodeKey::generate().unwrap();
        let (_server, addr) = echo_server(server_config(&key).unwrap());
        let client = quinn::Endpoint::client(loopback()).unwrap();

        let err = connect(&client, addr, other.peer_id()).await.unwrap_err();
        assert!(matches!(err, TlsError::Connection(_)), "{err}");
    }

    #[tokio::test]
    async fn a_server_whose_certificate_comes_from_another_key_is_refused() {
        // The impostor listens where the client expects `genuine`: it has the address, not the key.
        let genuine = NodeKey::generate().unwrap();
        let impostor = NodeKey::generate().unwrap();
        let (_server, addr) = echo_server(server_config(&impostor).unwrap());
        let client = quinn::Endpoint::client(loopback()).unwrap();

        assert!(matches!(connect(&client, addr, genuine.peer_id()).await, Err(TlsError::Connection(_))));
        // The same client and server do talk when the client asks for who is really there.
        assert!(connect(&client, addr, impostor.peer_id()).await.is_ok());
    }

    #[tokio::test]
    async fn a_server_replaying_the_genuine_certificate_without_its_key_is_refused() {
        // Certificates are public: an impostor can present the genuine one. It cannot sign the
        // handshake with the genuine key, and the verifier must notice.
        let genuine = NodeKey::generate().unwrap();
        let impostor = NodeKey::generate().unwrap();
        let provider = provider();
        let impostor_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(impostor.pkcs8_der().to_vec()));
        let signer = provider.key_provider.load_private_key(impostor_der).unwrap();
        let stolen = rustls::sign::CertifiedKey::new(vec![node_cert(&genuine)], signer);
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(stolen)));
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let config = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls).unwrap()));
        let (_server, addr) = echo_server(config);
        let client = quinn::Endpoint::client(loopback()).unwrap();

        let err = connect(&client, addr, genuine.peer_id()).await.unwrap_err();
        assert!(matches!(err, TlsError::Connection(_)), "{err}");
    }

    #[tokio::test]
    async fn loopback_connections_grow_their_datagrams_past_ethernet_size_and_carry_data_at_it() {
        // quinn's defaults would stop at 1452 bytes (and the announced 1472 would clamp any
        // higher search); our endpoints must let MTU discovery reach MAX_UDP_PAYLOAD where the
        // path carries it, as loopback does.
        let server_key = NodeKey::generate().unwrap();
        let server = endpoint(loopback(), &server_key).unwrap();
        let addr = server.local_addr().unwrap();
        let accepting = server.clone();
        // The server streams BULK bytes of a known pattern on every stream the client opens.
        const BULK: usize = 8 << 20;
        let pattern = |i: usize| (i % 251) as u8;
        tokio::spawn(async move {
            if let Some(incoming) = accepting.accept().await
                && let Ok(conn) = incoming.await
            {
                while let Ok((mut send, _recv)) = conn.accept_bi().await {
                    let body: Vec<u8> = (0..BULK).map(pattern).collect();
                    let _ = send.write_all(&body).await;
                    let _ = send.finish();
                    let _ = send.stopped().await;
                }
            }
        });
        let client = endpoint(loopback(), &NodeKey::generate().unwrap()).unwrap();
        let conn = connect(&client, addr, server_key.peer_id()).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while conn.stats().path.current_mtu < MAX_UDP_PAYLOAD {
            assert!(
                tokio::time::Instant::now() < deadline,
                "path MTU stuck at {}",
                conn.stats().path.current_mtu
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        // Full-size datagrams in quinn's batches of 10 are 160 KB, over Linux's 64 KiB send
        // limit: unless they are split, whole batches vanish, the path is declared a black
        // hole and falls back to 1200 bytes.
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(b"go").await.unwrap();
        let body = recv.read_to_end(BULK).await.unwrap();
        assert_eq!(body.len(), BULK);
        assert!(body.iter().enumerate().all(|(i, &b)| b == pattern(i)));
        let stats = conn.stats();
        assert_eq!(stats.path.black_holes_detected, 0);
        assert_eq!(stats.path.current_mtu, MAX_UDP_PAYLOAD);
        assert!(stats.udp_rx.datagrams < (2 * BULK / usize::from(MAX_UDP_PAYLOAD)) as u64, "{stats:?}");
        conn.close(0u32.into(), b"done");
    }

    #[test]
    fn the_node_certificate_carries_the_node_key_as_an_ed25519_spki() {
        let key = NodeKey::generate().unwrap();
        let cert = node_cert(&key);
        let parsed = webpki::EndEntityCert::try_from(&cert).unwrap();
        let mut want = ED25519_SPKI_PREFIX.to_vec();
        want.extend_from_slice(key.peer_id().as_bytes());
        assert_eq!(parsed.subject_public_key_info().as_ref(), want.as_slice());
    }
}
