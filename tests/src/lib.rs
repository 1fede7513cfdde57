//! Support for Quaver's end-to-end tests (the tests themselves are in `tests/tests/`): start a
//! real directory server on an ephemeral loopback port, connect real gRPC clients, start real
//! peer endpoints for the directory to dial back, and build share lists. Nothing here is mocked.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use quaver_directory::{Config, RunningServer};
use quaver_shared::directory::v1::directory_client::DirectoryClient;
use quaver_shared::directory::v1::*;
use quaver_shared::{ContentId, NodeKey, PeerId, ShareDigest};
use tonic::transport::Channel;

pub type Client = DirectoryClient<Channel>;

/// A directory server on 127.0.0.1 with its data in a temporary directory.
pub struct TestDirectory {
    pub server: RunningServer,
    pub data: tempfile::TempDir,
    config: Config,
}

impl TestDirectory {
    /// Starts a server with a short lease (`lease_seconds`), fast index commits and the default
    /// connect-back timeout.
    pub async fn start(lease_seconds: u32) -> anyhow::Result<Self> {
        Self::start_with_verify_timeout(lease_seconds, Config::default().verify_timeout_ms).await
    }

    /// Like `start`, with the connect-back check bounded by `verify_timeout_ms`: tests of peers
    /// that fail the check wait that long per Announce.
    pub async fn start_with_verify_timeout(
        lease_seconds: u32,
        verify_timeout_ms: u64,
    ) -> anyhow::Result<Self> {
        let data = tempfile::tempdir()?;
        let config = Config {
            listen: "127.0.0.1:0".parse()?,
            data_dir: data.path().to_owned(),
            lease_seconds,
            heartbeat_seconds: (lease_seconds / 3).max(1),
            index_commit_ms: 20,
            verify_timeout_ms,
            ..Config::default()
        };
        let server = RunningServer::start(config.clone()).await?;
        Ok(Self { server, data, config })
    }

    /// Stops the server gracefully and starts a new one on the same data dir (on a new port:
    /// take `url()` again).
    pub async fn restart(self) -> anyhow::Result<Self> {
        let Self { server, data, config } = self;
        server.shutdown().await?;
        let server = RunningServer::start(config.clone()).await?;
        Ok(Self { server, data, config })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.server.local_addr)
    }

    pub async fn client(&self) -> anyhow::Result<Client> {
        Ok(DirectoryClient::connect(self.url()).await?)
    }

    /// A client whose connection comes from `ip` (any 127.x.y.z works on Linux loopback): the
    /// directory sees that IP as the caller's.
    pub async fn client_from(&self, ip: [u8; 4]) -> anyhow::Result<Client> {
        let channel = tonic::transport::Endpoint::from_shared(self.url())?
            .local_address(Some(std::net::IpAddr::from(ip)))
            .connect()
            .await?;
        Ok(DirectoryClient::new(channel))
    }
}

/// A deterministic content id for test file `n`.
pub fn cid(n: u32) -> ContentId {
    ContentId::of_bytes(format!("test file {n}").as_bytes())
}

/// A real peer as far as the directory can tell: a node key and a live QUIC endpoint on
/// 127.0.0.1 that serves that key, accepts every connection and holds it until the other side
/// closes it. Announcing `id()` with `port()` passes the directory's connect-back check. The
/// endpoint closes when the `TestPeer` is dropped.
pub struct TestPeer {
    pub key: NodeKey,
    pub endpoint: quinn::Endpoint,
}

impl TestPeer {
    /// A fresh key served on an ephemeral loopback port. Needs a tokio runtime.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_at([127, 0, 0, 1])
    }

    /// Like `start`, on loopback address `ip` (announce it with `TestDirectory::client_from`
    /// the same IP, so the connect-back finds it).
    pub fn start_at(ip: [u8; 4]) -> anyhow::Result<Self> {
        let key = NodeKey::generate()?;
        let endpoint = quaver_shared::tls::identity_only_endpoint(SocketAddr::from((ip, 0)), &key)?;
        Ok(Self { key, endpoint })
    }

    pub fn id(&self) -> PeerId {
        self.key.peer_id()
    }

    /// The UDP port of the endpoint, as `AnnounceRequest.quic_port` wants it.
    pub fn port(&self) -> u32 {
        self.endpoint.local_addr().map(|a| u32::from(a.port())).unwrap_or(0)
    }

    /// Announces this peer (signed with its key) with its own port and publishes `files`;
    /// returns the token.
    pub async fn announce(&self, client: &mut Client, files: Vec<SharedFile>) -> anyhow::Result<String> {
        announce(client, &self.key, self.port(), files).await
    }
}

impl Drop for TestPeer {
    fn drop(&mut self) {
        self.endpoint.close(quinn::VarInt::from_u32(0), b"test peer stopped");
    }
}

/// A QUIC endpoint on 127.0.0.1 serving `key` that accepts every connection and holds it until
/// closed (the directory's check closes right after the handshake). Closing the endpoint ends
/// the accept task. Needs a tokio runtime.
pub fn serve(key: &NodeKey) -> anyhow::Result<quinn::Endpoint> {
    Ok(quaver_shared::tls::identity_only_endpoint(SocketAddr::from(([127, 0, 0, 1], 0)), key)?)
}

/// A loopback UDP port with nothing listening on it (bound, read back, released).
pub fn dead_port() -> anyhow::Result<u32> {
    let socket = std::net::UdpSocket::bind(("127.0.0.1", 0))?;
    Ok(u32::from(socket.local_addr()?.port()))
}

pub fn file(n: u32, title: &str, artist: &str) -> SharedFile {
    SharedFile {
        info: Some(FileInfo {
            content_id: cid(n).to_vec(),
            size: 1_000_000 + u64::from(n),
            file_name: format!("{title} - {artist}.mp3"),
            title: title.into(),
            artist: artist.into(),
            album: String::new(),
            duration_ms: 200_000,
            bitrate_kbps: 320,
            media_kind: MediaKind::Audio as i32,
        }),
        complete: true,
    }
}

/// Announces `key`'s PeerId at `port` (a Challenge, then the Announce signed with `key`) and
/// publishes `files`; returns the session token.
pub async fn announce(
    client: &mut Client,
    key: &NodeKey,
    port: u32,
    files: Vec<SharedFile>,
) -> anyhow::Result<String> {
    Ok(announce_response(client, key, port, files).await?.session_token)
}

/// The request `announce` sends for `files` at `port`, unsigned and without a PeerId.
pub fn announce_request(port: u32, files: &[SharedFile]) -> AnnounceRequest {
    let digest = digest_of(files);
    AnnounceRequest {
        quic_port: port,
        share_digest: digest.as_bytes().to_vec(),
        share_count: files.len() as u64,
        free_upload_slots: 4,
        agent: "e2e".into(),
        ..Default::default()
    }
}

/// The share digest of `files`.
pub fn digest_of(files: &[SharedFile]) -> ShareDigest {
    let ids: Vec<ContentId> = files
        .iter()
        .filter_map(|f| f.info.as_ref())
        .filter_map(|i| ContentId::from_slice(&i.content_id).ok())
        .collect();
    ShareDigest::of(ids.iter())
}

/// Like `announce`, returning the whole `AnnounceResponse` (with the `reachable` verdict).
pub async fn announce_response(
    client: &mut Client,
    key: &NodeKey,
    port: u32,
    files: Vec<SharedFile>,
) -> anyhow::Result<AnnounceResponse> {
    let digest = digest_of(&files);
    let request = announce_request(port, &files);
    let resp = quaver_shared::announce_proof::announce(client, key, request).await?.into_inner();
    if resp.known_digest != digest.as_bytes() {
        let published = client
            .publish(PublishRequest {
                session_token: resp.session_token.clone(),
                reset: true,
                added: files,
                removed: vec![],
            })
            .await?
            .into_inner();
        anyhow::ensure!(published.known_digest == digest.as_bytes(), "digest after publish differs");
    }
    Ok(resp)
}

pub fn search_request(query: &str) -> SearchRequest {
    SearchRequest { query: query.into(), ..Default::default() }
}

/// Retries `check` until it returns `Some` or `timeout` passes (index commits are asynchronous).
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        anyhow::ensure!(Instant::now() < deadline, "condition not reached within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
