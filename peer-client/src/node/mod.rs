//! The node: one running peer, assembled from the parts of this crate.
//!
//! Owns the lifetime of everything a `quaver daemon` runs: the node key, the store, the QUIC
//! endpoint and its [`Server`], the directory [`session`](crate::session), a gRPC channel to the
//! directory for searches and lookups, and the [`Downloads`] in progress. The control API
//! ([`crate::control`]) is a thin layer over the methods here.
//!
//! Layout of a data directory:
//!
//! ```text
//! node.key       the Ed25519 node key (mode 0600): the node's PeerId
//! store/         sled: shared folders, file records, what the directory acknowledged
//! outboards/     one outboard file per shared content id (named by its hex)
//! partial/       downloads in progress (.part, .blocks, .outboard, and a .dest note naming the
//!                folder each goes to): every noted one resumes when the node starts
//! files/         finished downloads (default; --download-dir); shared automatically (a file
//!                saved elsewhere with `get --out` is shared alone, not its folder)
//! control.sock   the control API (mode 0600)
//! LOCK           the daemon's pid, locked while it runs (`quaver_shared::data_dir_lock`)
//! ```
//!
//! Must never: block the runtime on disk (store calls run on the blocking pool), trust the
//! directory for content (every byte is checked by `fetch`), or lose a download's verified
//! blocks on a stop.

mod downloads;
mod lookup;
mod quic_port;
mod resume;
mod space;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quaver_shared::directory::v1::SearchHit;
use quaver_shared::{ContentId, NodeKey, PeerId};
use tokio::sync::watch;

pub use downloads::{
    Cancelled, DownloadState, Downloads, Failure, FailureKind, Finished, GetError, Subscription,
};
pub use lookup::{DirectoryLink, LookupError, unreachable_advice};
pub use space::NoSpace;

use crate::serve::{ServeConfig, Server};
use crate::session::{NodeSocket, Session, SessionConfig, SessionHandle, SessionState};
use crate::store::{ScanReport, Store, StoreError};

/// How a node runs.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub data_dir: PathBuf,
    /// The directory's gRPC URL, e.g. `http://127.0.0.1:7700`.
    pub directory_url: String,
    /// CA certificates (PEM) an `https://` directory is verified against (`--directory-ca`);
    /// the system roots when `None`.
    pub directory_ca: Option<PathBuf>,
    /// Where the QUIC endpoint listens (port 0: any free port).
    pub listen: SocketAddr,
    /// Where finished downloads go unless a `get` says otherwise.
    pub download_dir: PathBuf,
    pub serve: ServeConfig,
}

impl NodeConfig {
    /// Defaults for everything but the data dir and the directory.
    pub fn new(data_dir: PathBuf, directory_url: String) -> Self {
        let download_dir = data_dir.join("files");
        Self {
            data_dir,
            directory_url,
            directory_ca: None,
            listen: SocketAddr::from(([0, 0, 0, 0], 0)),
            download_dir,
            serve: ServeConfig::default(),
        }
    }

    pub fn control_socket(&self) -> PathBuf {
        control_socket(&self.data_dir)
    }
}

/// The control socket of the node whose data dir is `data_dir`.
pub fn control_socket(data_dir: &Path) -> PathBuf {
    data_dir.join("control.sock")
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("data directory {}: {source}", path.display())]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("node key: {0}")]
    Key(#[from] quaver_shared::NodeKeyError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("QUIC endpoint: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("directory URL {url:?}: {reason}")]
    DirectoryUrl { url: String, reason: String },
    #[error("a blocking task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// A running node (see the module doc).
pub struct Node {
    config: NodeConfig,
    peer_id: PeerId,
    store: Arc<Store>,
    /// Taken by `shutdown` to drain it.
    server: Mutex<Option<Server>>,
    endpoint: quinn::Endpoint,
    /// The endpoint socket's TURN splice: its allocation on the relay, if any, is given back
    /// at shutdown.
    splice: Arc<quaver_shared::turn::TurnSplice>,
    session: SessionHandle,
    directory: DirectoryLink,
    downloads: Downloads,
    /// The hits of the last search, so that `get 3` can name one.
    last_search: Mutex<Vec<SearchHit>>,
    free_slots: watch::Sender<u32>,
    /// This node's certificate for the sources it downloads from (see `crate::tls::ClientAuth`).
    client_auth: Arc<crate::tls::ClientAuth>,
}

/// How often the node tells the session how many upload slots are free.
const SLOTS_REPORT_EVERY: Duration = Duration::from_secs(5);

impl Node {
    /// Opens the data dir (creating it), binds the endpoint, starts serving and the directory
    /// session. Must be called inside a tokio runtime.
    pub async fn start(config: NodeConfig) -> Result<Arc<Node>, NodeError> {
        let data_dir = config.data_dir.clone();
        std::fs::create_dir_all(&data_dir)
            .map_err(|source| NodeError::DataDir { path: data_dir.clone(), source })?;
        std::fs::create_dir_all(&config.download_dir)
            .map_err(|source| NodeError::DataDir { path: config.download_dir.clone(), source })?;
        let key = NodeKey::load_or_create(&data_dir.join("node.key"))?;
        let peer_id = key.peer_id();
        let store = {
            let (path, outboards) = (data_dir.join("store"), data_dir.join("outboards"));
            let downloads = config.download_dir.clone();
            tokio::task::spawn_blocking(move || -> Result<Store, StoreError> {
                let store = Store::open(&path, &outboards)?;
                // Finished downloads are shared: that is how a downloader becomes a source.
                store.add_folder(&downloads)?;
                Ok(store)
            })
            .await??
        };
        let store = Arc::new(store);
        // The port used last, if it is free: forwarding set up for it keeps working.
        let bound = match quic_port::preferred(&data_dir, config.listen) {
            Some(last) => crate::tls::node_endpoint(last, &key).or_else(|e| {
                tracing::info!(port = last.port(), error = %e, "the last QUIC port is taken; using another");
                crate::tls::node_endpoint(config.listen, &key)
            }),
            None => crate::tls::node_endpoint(config.listen, &key),
        };
        let (endpoint, splice) = bound?;
        let client_auth = crate::tls::ClientAuth::new(&key)?;
        // The session announces the bound port: a socket without one is a start-up error.
        let port = endpoint.local_addr().map_err(crate::tls::TlsError::Bind)?.port();
        quic_port::remember(&data_dir, config.listen, port);
        let server = Mutex::new(Some(Server::spawn(endpoint.clone(), store.clone(), config.serve.clone())));
        let directory = DirectoryLink::new(&config.directory_url, config.directory_ca.as_deref())?;
        let (free_slots, slots_rx) =
            watch::channel(u32::try_from(config.serve.upload_slots).unwrap_or(u32::MAX));
        let session_config = SessionConfig {
            directory_ca: config.directory_ca.clone(),
            ..SessionConfig::new(config.directory_url.clone())
        };
        let session = Session::spawn(
            session_config,
            store.clone(),
            Arc::new(key),
            NodeSocket { endpoint: endpoint.clone(), splice: Some(splice.clone()) },
            slots_rx,
        );
        let downloads = Downloads::new(endpoint.clone(), crate::fetch::download::default_work_dir(&data_dir));
        let node = Arc::new(Node {
            config,
            peer_id,
            store,
            server,
            endpoint,
            splice,
            session,
            directory,
            downloads,
            last_search: Mutex::new(Vec::new()),
            free_slots,
            client_auth,
        });
        tokio::spawn(report_slots(Arc::downgrade(&node)));
        resume::resume_all(&node);
        Ok(node)
    }

    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// This node's relayed address on the directory's relay, while it holds an allocation.
    pub fn relayed_address(&self) -> Option<SocketAddr> {
        self.splice.relayed_address()
    }

    pub fn quic_address(&self) -> Option<SocketAddr> {
        self.endpoint.local_addr().ok()
    }

    fn server(&self) -> std::sync::MutexGuard<'_, Option<Server>> {
        self.server.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn session_state(&self) -> SessionState {
        self.session.state().borrow().clone()
    }

    pub fn serve_stats(&self) -> crate::serve::ServeStats {
        self.server().as_ref().map(Server::stats).unwrap_or_default()
    }

    /// Upload slots free right now (0 once shut down).
    pub fn free_slots(&self) -> u32 {
        self.server().as_ref().map_or(0, Server::free_slots)
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn downloads(&self) -> &Downloads {
        &self.downloads
    }

    /// Shares `dir`, scans every shared folder, and tells the directory about the changes.
    pub async fn share(&self, dir: PathBuf) -> Result<ScanReport, NodeError> {
        let store = self.store.clone();
        let report = tokio::task::spawn_blocking(move || {
            store.add_folder(&dir)?;
            store.rescan()
        })
        .await??;
        self.session.changed();
        Ok(report)
    }

    /// Stops sharing `dir`; its files are withdrawn. False if it was not shared.
    pub async fn unshare(&self, dir: PathBuf) -> Result<bool, NodeError> {
        let store = self.store.clone();
        let was = tokio::task::spawn_blocking(move || -> Result<bool, StoreError> {
            let was = store.remove_folder(&dir)?;
            store.rescan()?;
            Ok(was)
        })
        .await??;
        self.session.changed();
        Ok(was)
    }

    /// Searches the directory and remembers the hits for [`Node::get_result`].
    pub async fn search(
        &self,
        request: quaver_shared::directory::v1::SearchRequest,
    ) -> Result<Vec<SearchHit>, LookupError> {
        let hits = self.directory.search(request).await?;
        *self.last_search.lock().unwrap_or_else(|e| e.into_inner()) = hits.clone();
        Ok(hits)
    }

    /// The content id of hit `n` (from 1) of the last search.
    pub fn result_id(&self, n: u32) -> Option<ContentId> {
        let hits = self.last_search.lock().unwrap_or_else(|e| e.into_inner());
        let index = usize::try_from(n).ok()?.checked_sub(1)?;
        let info = hits.get(index)?.file.as_ref()?;
        ContentId::from_slice(&info.content_id).ok()
    }

    /// Starts downloading `id` into `out_dir` (the node's download dir if `None`), or joins the
    /// download already running. While no source is online it keeps looking for
    /// `wait_for_sources` (default [`DEFAULT_WAIT`](crate::fetch::waiting::DEFAULT_WAIT)), then
    /// fails. On success the file is shared and announced.
    pub async fn get(
        self: &Arc<Self>,
        id: ContentId,
        out_dir: Option<PathBuf>,
        wait_for_sources: Option<Duration>,
    ) -> Result<Subscription, GetError> {
        let out_dir = out_dir.unwrap_or_else(|| self.config.download_dir.clone());
        let wait = wait_for_sources.unwrap_or(crate::fetch::waiting::DEFAULT_WAIT);
        self.downloads.start(self.clone(), id, out_dir, wait).await
    }

    /// Stops the download of `id` (running or waiting) and removes its partial data.
    pub async fn cancel(&self, id: ContentId) -> Result<Cancelled, GetError> {
        self.downloads.cancel(id).await
    }

    /// Called by a finished download: share the file (with the outboard file the download
    /// verified against, which the store takes over; the file is not hashed again) and
    /// announce it. A file outside the shared folders is shared alone (`Store::add_download`).
    async fn adopt(&self, path: PathBuf, id: ContentId, outboard: PathBuf) -> Result<(), NodeError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.add_download(&path, id, &outboard)).await??;
        self.session.changed();
        Ok(())
    }

    /// Stops cleanly: withdraws from the directory, lets uploads in progress finish, flushes
    /// the store. Downloads in progress stop where they are and resume on the next `get`.
    pub async fn shutdown(&self) {
        self.downloads.abort_all();
        self.session.shutdown().await;
        let server = self.server().take();
        if let Some(server) = server {
            server.shutdown().await;
        }
        self.splice.release();
        let store = self.store.clone();
        let _ = tokio::task::spawn_blocking(move || store.flush()).await;
    }
}

/// Keeps the session's view of free upload slots current, until the node is dropped.
async fn report_slots(node: std::sync::Weak<Node>) {
    loop {
        tokio::time::sleep(SLOTS_REPORT_EVERY).await;
        let Some(node) = node.upgrade() else { return };
        let free = node.free_slots();
        node.free_slots.send_if_modified(|v| std::mem::replace(v, free) != free);
    }
}
