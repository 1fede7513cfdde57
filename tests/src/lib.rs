//! Support for Quaver's end-to-end tests (the tests themselves are in `tests/tests/`): start a
//! real directory server on an ephemeral loopback port, connect real gRPC clients, and build
//! share lists. Nothing here is mocked.

use std::time::{Duration, Instant};

use quaver_directory::{Config, RunningServer};
use quaver_shared::directory::v1::directory_client::DirectoryClient;
use quaver_shared::directory::v1::*;
use quaver_shared::{ContentId, PeerId, ShareDigest};
use tonic::transport::Channel;

pub type Client = DirectoryClient<Channel>;

/// A directory server on 127.0.0.1 with its data in a temporary directory.
pub struct TestDirectory {
    pub server: RunningServer,
    pub data: tempfile::TempDir,
}

impl TestDirectory {
    /// Starts a server with a short lease (`lease_seconds`) and fast index commits.
    pub async fn start(lease_seconds: u32) -> anyhow::Result<Self> {
        let data = tempfile::tempdir()?;
        let config = Config {
            listen: "127.0.0.1:0".parse()?,
            data_dir: data.path().to_owned(),
            lease_seconds,
            heartbeat_seconds: (lease_seconds / 3).max(1),
            index_commit_ms: 20,
        };
        let server = RunningServer::start(config).await?;
        Ok(Self { server, data })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.server.local_addr)
    }

    pub async fn client(&self) -> anyhow::Result<Client> {
        Ok(DirectoryClient::connect(self.url()).await?)
    }
}

/// A deterministic content id for test file `n`.
pub fn cid(n: u32) -> ContentId {
    ContentId::of_bytes(format!("test file {n}").as_bytes())
}

pub fn peer(n: u8) -> PeerId {
    PeerId::from_array([n; 32])
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

/// Announces `peer` and publishes `files`; returns the session token.
pub async fn announce(
    client: &mut Client,
    peer: PeerId,
    port: u32,
    files: Vec<SharedFile>,
) -> anyhow::Result<String> {
    let ids: Vec<ContentId> = files
        .iter()
        .filter_map(|f| f.info.as_ref())
        .filter_map(|i| ContentId::from_slice(&i.content_id).ok())
        .collect();
    let digest = ShareDigest::of(ids.iter());
    let resp = client
        .announce(AnnounceRequest {
            peer_id: peer.to_vec(),
            quic_port: port,
            share_digest: digest.as_bytes().to_vec(),
            share_count: ids.len() as u64,
            free_upload_slots: 4,
            agent: "e2e".into(),
        })
        .await?
        .into_inner();
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
    Ok(resp.session_token)
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
