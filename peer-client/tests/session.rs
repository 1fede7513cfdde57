//! The directory session against a real directory server, in-process on loopback: a real
//! `Store` over files in a temporary folder, a real QUIC endpoint for the directory to dial
//! back, and real gRPC. Waits are bounded polls, never bare sleeps.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quaver_directory::{Config, RunningServer};
use quaver_peer::library::MemoryLibrary;
use quaver_peer::serve::{ServeConfig, Server};
use quaver_peer::session::{NodeSocket, Session, SessionConfig, SessionHandle, SessionState};
use quaver_peer::store::Store;
use quaver_shared::directory::v1::directory_client::DirectoryClient;
use quaver_shared::directory::v1::{
    AnnounceRequest, GetFileRequest, LocateRequest, StatsRequest, StatsResponse,
};
use quaver_shared::{ContentId, NodeKey, PeerId};
use tokio::sync::watch;
use tonic::transport::Channel;

const WAIT: Duration = Duration::from_secs(20);
/// How soon a reported store change must reach the directory (well under a heartbeat).
const PROMPT: Duration = Duration::from_secs(5);

/// Polls `check` until it gives `Some`, failing after `WAIT`.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        anyhow::ensure!(Instant::now() < deadline, "not within {WAIT:?}: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A directory on loopback whose data survives restarts.
struct Dir {
    server: Option<RunningServer>,
    data: tempfile::TempDir,
    addr: SocketAddr,
    heartbeat_seconds: u32,
}

#[allow(clippy::needless_update)] // the directory's Config grows; defaults cover the rest
fn dir_config(listen: SocketAddr, data: &Path, heartbeat_seconds: u32) -> Config {
    Config {
        listen,
        data_dir: data.to_owned(),
        lease_seconds: heartbeat_seconds * 3,
        heartbeat_seconds,
        index_commit_ms: 20,
        ..Config::default()
    }
}

impl Dir {
    /// A directory on an ephemeral port that asks for a heartbeat every `heartbeat_seconds`
    /// (the lease is three beats).
    async fn start(heartbeat_seconds: u32) -> anyhow::Result<Self> {
        Self::start_at("127.0.0.1:0".parse()?, heartbeat_seconds).await
    }

    async fn start_at(listen: SocketAddr, heartbeat_seconds: u32) -> anyhow::Result<Self> {
        let data = tempfile::tempdir()?;
        let server = RunningServer::start(dir_config(listen, data.path(), heartbeat_seconds)).await?;
        let addr = server.local_addr;
        Ok(Self { server: Some(server), data, addr, heartbeat_seconds })
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn client(&self) -> anyhow::Result<DirectoryClient<Channel>> {
        Ok(DirectoryClient::connect(self.url()).await?)
    }

    /// A graceful stop, then a new server process state on the same port and data.
    async fn restart(&mut self) -> anyhow::Result<()> {
        if let Some(server) = self.server.take() {
            server.shutdown().await?;
        }
        let config = dir_config(self.addr, self.data.path(), self.heartbeat_seconds);
        self.server = Some(RunningServer::start(config).await?);
        Ok(())
    }

    /// A restart that loses every file of data: same port, empty data dir.
    async fn restart_empty(&mut self) -> anyhow::Result<()> {
        self.data = tempfile::tempdir()?;
        self.restart().await
    }

    async fn stats(&self) -> anyhow::Result<StatsResponse> {
        Ok(self.client().await?.stats(StatsRequest {}).await?.into_inner())
    }

    /// The peers the directory hands out for `id`.
    async fn sources(&self, id: &ContentId) -> anyhow::Result<Vec<PeerId>> {
        let request = LocateRequest { content_id: id.to_vec(), max_sources: 0, peer_id: vec![] };
        let sources = self.client().await?.locate(request).await?.into_inner().sources;
        sources.iter().map(|s| Ok(PeerId::from_slice(&s.peer_id)?)).collect()
    }

    async fn online_sources(&self, id: &ContentId) -> anyhow::Result<u32> {
        let request = GetFileRequest { content_id: id.to_vec() };
        Ok(self.client().await?.get_file(request).await?.into_inner().online_sources)
    }
}

/// A node: key, QUIC endpoint serving the store (the directory dials it back), a store over a
/// shared folder, both on disk so a "restart" reopens them.
struct Node {
    key: Arc<NodeKey>,
    _server: Server,
    port: u16,
    endpoint: quinn::Endpoint,
    store: Option<Arc<Store>>,
    store_path: PathBuf,
    folder: tempfile::TempDir,
    _data: tempfile::TempDir,
}

fn song(n: u32) -> Vec<u8> {
    format!("the bytes of song number {n}").into_bytes()
}

impl Node {
    /// A node sharing `files` songs.
    async fn start(files: u32) -> anyhow::Result<Self> {
        let data = tempfile::tempdir()?;
        let folder = tempfile::tempdir()?;
        let key = Arc::new(NodeKey::generate()?);
        let endpoint = quaver_peer::tls::endpoint("127.0.0.1:0".parse()?, &key)?;
        let port = endpoint.local_addr()?.port();
        let store_path = data.path().join("store");
        let store = Arc::new(Store::open(&store_path, &store_path.with_extension("outboards"))?);
        store.add_folder(folder.path())?;
        // The directory only needs the handshake; an empty library keeps the store free to
        // be closed and reopened.
        let server =
            Server::spawn(endpoint.clone(), Arc::new(MemoryLibrary::default()), ServeConfig::default());
        let node = Self {
            key,
            _server: server,
            port,
            endpoint,
            store: Some(store),
            store_path,
            folder,
            _data: data,
        };
        for n in 0..files {
            node.write(n)?;
        }
        node.store()?.rescan()?;
        Ok(node)
    }

    fn id(&self) -> PeerId {
        self.key.peer_id()
    }

    fn store(&self) -> anyhow::Result<Arc<Store>> {
        self.store.clone().ok_or_else(|| anyhow::anyhow!("store closed"))
    }

    fn write(&self, n: u32) -> anyhow::Result<ContentId> {
        std::fs::write(self.path(n), song(n))?;
        Ok(ContentId::of_bytes(&song(n)))
    }

    fn path(&self, n: u32) -> PathBuf {
        self.folder.path().join(format!("Artist - Song {n}.mp3"))
    }

    fn session(&self, config: SessionConfig) -> anyhow::Result<SessionHandle> {
        let (_slots_tx, slots) = watch::channel(4);
        let socket = NodeSocket { endpoint: self.endpoint.clone(), splice: None };
        Ok(Session::spawn(config, self.store()?, self.key.clone(), socket, slots))
    }

    /// Closes the store (every session using it must have ended) and opens it again.
    fn reopen_store(&mut self) -> anyhow::Result<()> {
        let store = self.store.take().ok_or_else(|| anyhow::anyhow!("store closed"))?;
        let store = Arc::into_inner(store).ok_or_else(|| anyhow::anyhow!("store still in use"))?;
        store.flush()?;
        drop(store);
        self.store =
            Some(Arc::new(Store::open(&self.store_path, &self.store_path.with_extension("outboards"))?));
        Ok(())
    }
}

/// Short waits so the tests run fast; the defaults are tested in the backoff unit tests.
fn fast(url: String) -> SessionConfig {
    let mut config = SessionConfig::new(url);
    config.backoff_initial = Duration::from_millis(50);
    config.backoff_max = Duration::from_millis(400);
    config
}

async fn until_state(
    handle: &SessionHandle,
    what: &str,
    cond: impl Fn(&SessionState) -> bool,
) -> anyhow::Result<SessionState> {
    until_state_within(WAIT, handle, what, cond).await
}

async fn until_state_within(
    wait: Duration,
    handle: &SessionHandle,
    what: &str,
    cond: impl Fn(&SessionState) -> bool,
) -> anyhow::Result<SessionState> {
    let mut state = handle.state();
    let got = tokio::time::timeout(wait, state.wait_for(|s| cond(s))).await;
    match got {
        Ok(Ok(s)) => Ok(s.clone()),
        _ => anyhow::bail!("state never reached: {what}; last {:?}", handle.state().borrow().clone()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_follows_changes_withdraws_and_resumes_with_the_difference() -> anyhow::Result<()> {
    // Beats 30 s apart: within this test only `changed()` can make the session publish.
    let dir = Dir::start(30).await?;
    let mut node = Node::start(30).await?;
    let me = node.id();

    // Spawned: the directory learns all 30 files, each sent once. (On first contact the
    // directory's empty list is the acknowledged empty set: the difference is everything, no
    // reset needed.)
    let session = node.session(fast(dir.url()))?;
    let state = until_state(&session, "connected", |s| s.connected).await?;
    assert_eq!((state.files_published, state.resets, state.announces), (30, 0, 1));
    assert!(state.observed_address.as_deref().is_some_and(|a| a.ends_with(&format!(":{}", node.port))));
    assert_eq!(state.reachable, Some(true), "the directory dialled our QUIC endpoint back");
    let stats = dir.stats().await?;
    assert_eq!((stats.files, stats.online_peers), (30, 1));
    assert_eq!(dir.sources(&ContentId::of_bytes(&song(7))).await?, vec![me]);
    assert_eq!(dir.online_sources(&ContentId::of_bytes(&song(29))).await?, 1);

    // A new file plus `changed()`: it shows up on the directory, and only it is sent.
    let new = node.write(100)?;
    node.store()?.add_file(&node.path(100))?;
    session.changed();
    let state = until_state_within(PROMPT, &session, "one more sent", |s| s.files_published > 30).await?;
    assert_eq!(state.files_published, 31);
    assert_eq!(dir.sources(&new).await?, vec![me]);

    // An unshared file leaves the directory's answers.
    let gone = ContentId::of_bytes(&song(3));
    std::fs::remove_file(node.path(3))?;
    node.store()?.rescan()?;
    session.changed();
    let state = until_state_within(PROMPT, &session, "the removal sent", |s| s.files_published > 31).await?;
    assert_eq!(state.files_published, 32);
    assert!(dir.sources(&gone).await?.is_empty());
    assert_eq!(dir.online_sources(&gone).await?, 0);

    // Shutdown withdraws: offline at once, no waiting for the lease.
    session.shutdown().await;
    assert!(!session.state().borrow().connected);
    assert!(dir.sources(&new).await?.is_empty(), "still located after shutdown");
    assert_eq!(dir.stats().await?.online_peers, 0);
    drop(session);

    // The node restarts (store reopened from disk) after its library changed while it was
    // down: the second session sends only the difference, not the whole list again.
    node.reopen_store()?;
    let later = node.write(200)?;
    std::fs::remove_file(node.path(4))?;
    node.store()?.rescan()?;
    let session = node.session(fast(dir.url()))?;
    let state = until_state(&session, "connected again", |s| s.connected).await?;
    assert_eq!((state.files_published, state.resets), (2, 0), "only the difference: {state:?}");
    assert_eq!(dir.sources(&later).await?, vec![me]);
    assert!(dir.sources(&ContentId::of_bytes(&song(4))).await?.is_empty());
    assert_eq!(dir.sources(&ContentId::of_bytes(&song(5))).await?, vec![me], "the rest is back online");
    assert_eq!(dir.stats().await?.online_peers, 1);
    session.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_once_the_directory_comes_up() -> anyhow::Result<()> {
    // A free port nobody listens on yet.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let node = Node::start(5).await?;
    let session = node.session(fast(format!("http://{addr}")))?;

    // Failing, retrying with backoff, never giving up.
    let state = until_state(&session, "a connection failure", |s| s.last_error.is_some()).await?;
    assert!(!state.connected);
    assert_eq!(state.announces, 0);

    let dir = Dir::start_at(addr, 1).await?;
    until_state(&session, "connected", |s| s.connected).await?;
    assert_eq!(dir.sources(&ContentId::of_bytes(&song(2))).await?, vec![node.id()]);
    session.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_session_is_announced_again() -> anyhow::Result<()> {
    let mut dir = Dir::start(1).await?;
    let node = Node::start(5).await?;
    let session = node.session(fast(dir.url()))?;
    let state = until_state(&session, "connected", |s| s.connected).await?;
    assert_eq!(state.announces, 1);
    let file = ContentId::of_bytes(&song(1));

    // The node's key announces it again elsewhere (same key and port): the session's token is void, its
    // next heartbeat is UNAUTHENTICATED, and it announces again at once.
    let mut client = dir.client().await?;
    let (digest, count) = node.store()?.summary();
    let request = AnnounceRequest {
        quic_port: u32::from(node.port),
        share_digest: digest.as_bytes().to_vec(),
        share_count: count,
        free_upload_slots: 1,
        agent: "test".into(),
        ..Default::default()
    };
    quaver_shared::announce_proof::announce(&mut client, &node.key, request).await?;
    let state = until_state(&session, "announced again", |s| s.announces >= 2 && s.connected).await?;
    let error = state.last_error.unwrap_or_default();
    assert!(error.contains("Unauthenticated"), "unexpected error: {error}");

    // The directory restarts (graceful stop, new process state, same data and port): the
    // session notices, announces again and is online; nothing needs resending.
    dir.restart().await?;
    let state = until_state(&session, "announced after restart", |s| s.announces >= 3 && s.connected).await?;
    assert_eq!((state.resets, state.files_published), (0, 5), "the directory kept the list: {state:?}");
    eventually("located after the restart", || async {
        Ok(dir.sources(&file).await?.contains(&node.id()).then_some(()))
    })
    .await?;
    assert_eq!(dir.stats().await?.online_peers, 1);

    // The directory comes back with no data: its list no longer matches what it acknowledged,
    // so the session resends everything with `reset`.
    dir.restart_empty().await?;
    let state = until_state(&session, "resent after data loss", |s| s.resets >= 1 && s.connected).await?;
    assert_eq!((state.resets, state.files_published), (1, 10), "{state:?}");
    assert_eq!(dir.stats().await?.files, 5);
    assert_eq!(dir.sources(&file).await?, vec![node.id()]);

    session.shutdown().await;
    assert!(dir.sources(&file).await?.is_empty());
    Ok(())
}
