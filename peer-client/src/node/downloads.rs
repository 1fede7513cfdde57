//! Downloads the node is running, by content id.
//!
//! A download belongs to the node, not to whoever asked for it: a second `get` of the same id
//! joins the running one, and a `get` whose client goes away leaves it running. Each download
//! publishes its state on a `watch` channel; subscribers see progress and, at the end, the
//! outcome. When it succeeds the node adopts the file (shares and announces it).
//!
//! Before it starts, a download is checked against the free disk space (`space`); `cancel`
//! stops one (running or waiting) and removes its partial state from the work dir.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quaver_shared::{ContentId, PeerId};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::Node;
use super::lookup::LookupError;
use super::space::NoSpace;
use crate::fetch::download::{DownloadProgress, DownloadSpec, FetchError, Relocate, download};
use crate::library::Library as _;

/// A finished download.
#[derive(Clone, Debug, PartialEq)]
pub struct Finished {
    pub path: PathBuf,
    pub fetched_bytes: u64,
    pub per_source: Vec<crate::fetch::download::Served>,
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
    pub outcome: Option<Result<Finished, Failure>>,
}

/// Why a download ended without its file.
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    pub kind: FailureKind,
    /// For people: what happened and what to do.
    pub message: String,
}

/// The kinds of failure a caller tells apart (the CLI's exit codes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// No source was online for the whole wait.
    NoSources,
    /// The disk filled up.
    DiskFull,
    /// `quaver cancel`.
    Cancelled,
    Other,
}

impl Failure {
    pub fn other(message: impl Into<String>) -> Self {
        Self { kind: FailureKind::Other, message: message.into() }
    }
}

/// What `cancel` found and removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cancelled {
    /// A download was running (or waiting for a source), and was stopped.
    pub was_running: bool,
    /// Disk space the removed partial state took.
    pub freed_bytes: u64,
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
    #[error(transparent)]
    NoSpace(#[from] NoSpace),
    #[error("nothing to cancel: no download of {0} is running or left partial data")]
    NothingToCancel(ContentId),
}

struct Running {
    state: watch::Receiver<DownloadState>,
    /// The sender `run` publishes on, so that a cancel can publish the outcome itself.
    publish: Arc<watch::Sender<DownloadState>>,
    task: JoinHandle<()>,
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
        wait_for_sources: Duration,
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
        {
            let (work, out) = (self.work_dir.clone(), out_dir.clone());
            let size = info.size;
            tokio::task::spawn_blocking(move || super::space::check(&work, &out, &id, size))
                .await
                .map_err(std::io::Error::other)??;
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
            wait_for_sources,
            identity: Some(node.client_auth.clone()),
            rendezvous: Some(node.session.rendezvous()),
        };
        let initial = DownloadState {
            id: Some(id),
            name,
            progress: DownloadProgress { size: info.size, ..DownloadProgress::default() },
            outcome: None,
        };
        let (state_tx, state_rx) = watch::channel(initial);
        let state_tx = Arc::new(state_tx);
        // Before the first byte: a node that stops from here on resumes this download.
        super::resume::remember(&self.work_dir, &id, &spec.out_dir).await?;

        let mut running = self.running();
        // Another `get` may have started it while we asked the directory.
        if let Some(r) = running.get(&id).filter(|r| r.state.borrow().outcome.is_none()) {
            return Ok(r.state.clone());
        }
        let endpoint = self.endpoint.clone();
        let task = tokio::spawn(run(node, endpoint, spec, sources, state_tx.clone()));
        running.insert(id, Running { state: state_rx.clone(), publish: state_tx, task });
        Ok(state_rx)
    }

    /// Stops the download of `id` if one runs (its subscribers see it cancelled) and removes
    /// its partial state (`.part`, marks, outboard, note), so nothing of it is left and a node
    /// that starts does not resume it.
    pub(super) async fn cancel(&self, id: ContentId) -> Result<Cancelled, GetError> {
        let running = self.running().remove(&id);
        let was_running = running.is_some();
        if let Some(r) = running {
            let failure = Failure {
                kind: FailureKind::Cancelled,
                message: format!("the download of {id} was cancelled"),
            };
            r.publish.send_modify(|s| s.outcome = Some(Err(failure)));
            r.task.abort();
            // Stopped for good before its files go: it must not write them back.
            let _ = r.task.await;
        }
        let work_dir = self.work_dir.clone();
        let freed = tokio::task::spawn_blocking(move || remove_partial(&work_dir, &id))
            .await
            .map_err(std::io::Error::other)??;
        match freed {
            None if !was_running => Err(GetError::NothingToCancel(id)),
            freed => Ok(Cancelled { was_running, freed_bytes: freed.unwrap_or(0) }),
        }
    }
}

/// Removes every file of `id`'s download state from `work_dir`; `None` if there was none, else
/// the disk space they took.
fn remove_partial(work_dir: &Path, id: &ContentId) -> std::io::Result<Option<u64>> {
    use std::os::unix::fs::MetadataExt;
    let prefix = format!("{}.", id.to_hex());
    let entries = match std::fs::read_dir(work_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut freed = None;
    for entry in entries {
        let entry = entry?;
        if !entry.file_name().as_encoded_bytes().starts_with(prefix.as_bytes()) {
            continue;
        }
        let bytes = entry.metadata().map_or(0, |m| m.blocks() * 512);
        std::fs::remove_file(entry.path())?;
        *freed.get_or_insert(0) += bytes;
    }
    Ok(freed)
}

/// One download, start to finish: fetch, adopt, publish the outcome.
async fn run(
    node: Arc<Node>,
    endpoint: quinn::Endpoint,
    spec: DownloadSpec,
    sources: Vec<crate::fetch::download::SourceAddr>,
    state: Arc<watch::Sender<DownloadState>>,
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
            Err(e) => Err(Failure::other(format!(
                "downloaded to {}, but sharing it failed: {e}",
                done.path.display()
            ))),
        },
        Err(e) => {
            tracing::warn!(id = %id, error = %e, "download failed");
            Err(failure(&id, &e))
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

/// A failed fetch for people (and the kind, for exit codes). A full disk says how to get out of
/// it: the partial download holds the space until it is finished or cancelled.
fn failure(id: &ContentId, e: &FetchError) -> Failure {
    match e {
        FetchError::NoSources { .. } => Failure { kind: FailureKind::NoSources, message: e.to_string() },
        e if e.is_disk_full() => Failure {
            kind: FailureKind::DiskFull,
            message: format!(
                "{e}; free some space and run the same `quaver get` to resume, or `quaver cancel {id}` to drop the partial download"
            ),
        },
        e => Failure::other(e.to_string()),
    }
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
