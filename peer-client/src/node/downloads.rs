//! Downloads the node is running, by content id.
//!
//! A download belongs to the node, not to whoever asked for it: a second `get` of the same id
//! joins the running one, and a `get` whose client goes away leaves it running. Each download
//! publishes its state on a `watch` channel; subscribers see progress and, at the end, the
//! outcome. When it succeeds the node adopts the file (shares and announces it).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use quaver_shared::{ContentId, PeerId};
use tokio::sync::watch;
use tokio::task::AbortHandle;

use super::Node;
use super::lookup::LookupError;
use crate::fetch::download::{DownloadProgress, DownloadSpec, Relocate, download};
use crate::library::Library as _;

/// A finished download.
#[derive(Clone, Debug, PartialEq)]
pub struct Finished {
    pub path: PathBuf,
    pub fetched_bytes: u64,
    pub per_source: Vec<(PeerId, u64)>,
    pub banned: Vec<PeerId>,
}

/// What subscribers of a download see.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DownloadState {
    pub id: Option<ContentId>,
    /// The sanitised name the file will get.
    pub name: String,
    pub progress: DownloadProgress,
    /// `None` while running.
    pub outcome: Option<Result<Finished, String>>,
}

pub type Subscription = watch::Receiver<DownloadState>;

#[derive(Debug, thiserror::Error)]
pub enum GetError {
    #[error(transparent)]
    Lookup(#[from] LookupError),
    #[error("the directory lists this file with no usable size or name: {0}")]
    BadCatalogEntry(String),
    #[error("cannot record the download in the work dir: {0}")]
    Disk(#[from] std::io::Error),
}

struct Running {
    state: watch::Receiver<DownloadState>,
    task: AbortHandle,
}

pub struct Downloads {
    endpoint: quinn::Endpoint,
    work_dir: PathBuf,
    running: Mutex<HashMap<ContentId, Running>>,
}

impl Downloads {
    pub fn new(endpoint: quinn::Endpoint, work_dir: PathBuf) -> Self {
        Self { endpoint, work_dir, running: Mutex::new(HashMap::new()) }
    }

    /// Where downloads keep their state (`.part`, `.blocks`, `.outboard`, `.dest`).
    pub(super) fn work_dir(&self) -> &std::path::Path {
        &self.work_dir
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<ContentId, Running>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The state of every download still running.
    pub fn snapshot(&self) -> Vec<DownloadState> {
        self.running().values().map(|r| r.state.borrow().clone()).filter(|s| s.outcome.is_none()).collect()
    }

    /// Stops every download where it is (their verified blocks stay on disk).
    pub fn abort_all(&self) {
        for (_, r) in self.running().drain() {
            r.task.abort();
        }
    }

    /// Joins the running download of `id`, answers at once if the node shares `id` already,
    /// or asks the directory about it and starts one.
    pub(super) async fn start(
        &self,
        node: Arc<Node>,
        id: ContentId,
        out_dir: PathBuf,
    ) -> Result<Subscription, GetError> {
        if let Some(r) = self.running().get(&id).filter(|r| r.state.borrow().outcome.is_none()) {
            return Ok(r.state.clone());
        }
        if let Some(done) = already_shared(&node, id).await {
            // A note left by a crash between sharing the file and removing the note.
            super::resume::forget(&self.work_dir, &id).await;
            return Ok(watch::channel(done).1);
        }
        let info = node.directory.file(id).await?;
        if info.size == 0 && info.file_name.is_empty() {
            return Err(GetError::BadCatalogEntry(id.to_hex()));
        }
        let sources = node.directory.locate(id, node.peer_id).await?;
        let name =
            crate::sanitize::safe_file_name(&info.file_name, &format!("{}.download", &id.to_hex()[..16]));
        let spec = DownloadSpec {
            id,
            size: info.size,
            name: info.file_name.clone(),
            out_dir,
            work_dir: self.work_dir.clone(),
        };
        let initial = DownloadState {
            id: Some(id),
            name,
            progress: DownloadProgress { size: info.size, ..DownloadProgress::default() },
            outcome: None,
        };
        let (state_tx, state_rx) = watch::channel(initial);
        // Before the first byte: a node that stops from here on resumes this download.
        super::resume::remember(&self.work_dir, &id, &spec.out_dir).await?;

        let mut running = self.running();
        // Another `get` may have started it while we asked the directory.
        if let Some(r) = running.get(&id).filter(|r| r.state.borrow().outcome.is_none()) {
            return Ok(r.state.clone());
        }
        let endpoint = self.endpoint.clone();
        let task = tokio::spawn(run(node, endpoint, spec, sources, state_tx));
        running.insert(id, Running { state: state_rx.clone(), task: task.abort_handle() });
        Ok(state_rx)
    }
}

/// One download, start to finish: fetch, adopt, publish the outcome.
async fn run(
    node: Arc<Node>,
    endpoint: quinn::Endpoint,
    spec: DownloadSpec,
    sources: Vec<crate::fetch::download::SourceAddr>,
    state: watch::Sender<DownloadState>,
) {
    let id = spec.id;
    let (progress_tx, mut progress_rx) =
        watch::channel(DownloadProgress { size: spec.size, ..Default::default() });
    let forward = {
        let state = state.clone();
        tokio::spawn(async move {
            while progress_rx.changed().await.is_ok() {
                let p = progress_rx.borrow_and_update().clone();
                state.send_modify(|s| s.progress = p);
            }
        })
    };
    let relocate: Relocate = {
        let (directory, me) = (node.directory.clone(), node.peer_id);
        Box::new(move || {
            let directory = directory.clone();
            Box::pin(async move {
                directory.locate(id, me).await.unwrap_or_else(|e| {
                    tracing::info!(error = %e, "looking up more sources failed");
                    Vec::new()
                })
            })
        })
    };
    tracing::info!(id = %id, size = spec.size, sources = sources.len(), "download starts");
    let result = download(&endpoint, spec, sources, Some(relocate), Some(progress_tx)).await;
    forward.abort();
    let outcome = match result {
        Ok(done) => match node.adopt(done.path.clone(), id, done.outboard).await {
            Ok(()) => {
                tracing::info!(id = %id, path = %done.path.display(), "download complete; now a source");
                super::resume::forget(node.downloads.work_dir(), &id).await;
                Ok(Finished {
                    path: done.path,
                    fetched_bytes: done.fetched_bytes,
                    per_source: done.per_source,
                    banned: done.banned,
                })
            }
            Err(e) => Err(format!("downloaded to {}, but sharing it failed: {e}", done.path.display())),
        },
        Err(e) => {
            tracing::warn!(id = %id, error = %e, "download failed");
            Err(e.to_string())
        }
    };
    state.send_modify(|s| {
        if let Ok(f) = &outcome {
            s.progress.verified_bytes = s.progress.size;
            s.progress.fetched_bytes = f.fetched_bytes;
        }
        s.outcome = Some(outcome);
    });
    // Subscribers keep their receivers; the registry only tracks what is still running.
    node.downloads.running().remove(&id);
}

/// The state of a finished download for an id the node shares already (a file it downloaded
/// before, or shares from a folder): asking for it again is answered with where it is.
async fn already_shared(node: &Arc<Node>, id: ContentId) -> Option<DownloadState> {
    let store = node.store.clone();
    let entry = tokio::task::spawn_blocking(move || store.entry(&id)).await.ok()?.ok()??;
    let name = entry.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let finished =
        Finished { path: entry.path, fetched_bytes: 0, per_source: Vec::new(), banned: Vec::new() };
    Some(DownloadState {
        id: Some(id),
        name,
        progress: DownloadProgress {
            size: entry.size,
            verified_bytes: entry.size,
            ..DownloadProgress::default()
        },
        outcome: Some(Ok(finished)),
    })
}
