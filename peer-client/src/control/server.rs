//! The control API's handlers and its Unix-socket listener.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use quaver_shared::ContentId;
use quaver_shared::directory::v1::SearchRequest as DirectorySearch;
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tonic::{Request, Response, Status};

use super::pb::control_server::{Control, ControlServer};
use super::pb::*;
use crate::node::{GetError, LookupError, Node, NodeError};

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("another node is already running with this data directory (socket {})", .0.display())]
    AlreadyRunning(PathBuf),
    #[error("control socket {}: {source}", path.display())]
    Socket { path: PathBuf, source: std::io::Error },
    #[error("control API: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Binds the control socket `path` (mode 0600). A socket left by a killed node is stale and
/// replaced; one that answers belongs to a live node, and binding fails.
pub async fn bind(path: &Path) -> Result<tokio::net::UnixListener, ControlError> {
    let socket_err = |source| ControlError::Socket { path: path.to_owned(), source };
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(ControlError::AlreadyRunning(path.to_owned()));
        }
        std::fs::remove_file(path).map_err(socket_err)?;
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(socket_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(socket_err)?;
    Ok(listener)
}

/// Serves the control API for `node` on `listener` (bound at `path` by [`bind`]) until
/// `shutdown` resolves, then removes the socket file.
pub async fn serve(
    node: Arc<Node>,
    listener: tokio::net::UnixListener,
    path: &Path,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ControlError> {
    let result = tonic::transport::Server::builder()
        .add_service(ControlServer::new(Handlers { node }))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await;
    let _ = std::fs::remove_file(path);
    Ok(result?)
}

struct Handlers {
    node: Arc<Node>,
}

fn node_status(e: NodeError) -> Status {
    match e {
        NodeError::Store(crate::store::StoreError::NotADirectory(p)) => {
            Status::invalid_argument(format!("{}: not a directory", p.display()))
        }
        NodeError::Store(crate::store::StoreError::Io { path, source }) => {
            Status::invalid_argument(format!("{}: {source}", path.display()))
        }
        other => Status::internal(other.to_string()),
    }
}

fn get_status(e: GetError) -> Status {
    match e {
        GetError::Lookup(l) => lookup_status(l),
        GetError::NoSpace(no) => Status::resource_exhausted(no.to_string()),
        GetError::NothingToCancel(_) => Status::not_found(e.to_string()),
        other => Status::failed_precondition(other.to_string()),
    }
}

fn content_id(hex: &str) -> Result<ContentId, Status> {
    hex.trim().parse::<ContentId>().map_err(|e| Status::invalid_argument(format!("content id {hex:?}: {e}")))
}

fn lookup_status(e: LookupError) -> Status {
    match e {
        LookupError::NotFound => Status::not_found("the directory does not know this file"),
        e @ LookupError::Unavailable { .. } => Status::unavailable(e.to_string()),
        LookupError::Refused(s) => Status::new(s.code(), format!("the directory refused: {}", s.message())),
    }
}

/// A path from the CLI: absolute (the daemon's working directory is not the CLI's).
fn absolute(path: &str) -> Result<PathBuf, Status> {
    let p = PathBuf::from(path);
    if p.is_absolute() {
        Ok(p)
    } else {
        Err(Status::invalid_argument(format!("{path:?}: not an absolute path")))
    }
}

#[tonic::async_trait]
impl Control for Handlers {
    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let node = &self.node;
        let session = node.session_state();
        let view = session.view(std::time::Instant::now(), std::time::SystemTime::now());
        // Milliseconds since the Unix epoch (0 for a clock set before it).
        let unix_ms = |t: std::time::SystemTime| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        };
        let stats = node.serve_stats();
        let store = node.store().clone();
        let folders = tokio::task::spawn_blocking(move || store.folders())
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(e.to_string()))?;
        let downloads = node
            .downloads()
            .snapshot()
            .into_iter()
            .map(|d| Transfer {
                content_id: d.id.map(|id| id.to_vec()).unwrap_or_default(),
                name: d.name,
                size: d.progress.size,
                verified_bytes: d.progress.verified_bytes,
                active_sources: u32::try_from(d.progress.active_sources).unwrap_or(u32::MAX),
                waiting_for_sources: d.progress.waiting_until.is_some(),
                gives_up_in_secs: super::progress::gives_up_in_secs(d.progress.waiting_until),
            })
            .collect();
        Ok(Response::new(StatusResponse {
            peer_id: node.peer_id().to_hex(),
            quic_address: node.quic_address().map(|a| a.to_string()).unwrap_or_default(),
            directory: node.config().directory_url.clone(),
            directory_connected: view.up,
            observed_address: session.observed_address.unwrap_or_default(),
            folders: folders.iter().map(|f| f.display().to_string()).collect(),
            shared_files: node.store().len(),
            uploaded_bytes: stats.bytes_sent,
            active_uploads: u32::try_from(node.config().serve.upload_slots)
                .unwrap_or(u32::MAX)
                .saturating_sub(node.free_slots()),
            downloads,
            directory_since_unix_ms: view.since.map_or(0, unix_ms),
            directory_last_error: session.last_error.unwrap_or_default(),
            reachable: session.reachable,
            nat: session.nat.map(|k| k.name().to_owned()).unwrap_or_default(),
            public_address: session.public_address.unwrap_or_default(),
            discovery_error: session.discovery_error.unwrap_or_default(),
            introducible: session.introducible,
            relayed: session.relayed,
            relay_address: node.relayed_address().map(|a| a.to_string()).unwrap_or_default(),
        }))
    }

    async fn share(&self, request: Request<ShareRequest>) -> Result<Response<ShareResponse>, Status> {
        let path = absolute(&request.into_inner().path)?;
        let report = self.node.share(path).await.map_err(node_status)?;
        Ok(Response::new(ShareResponse {
            hashed: report.hashed,
            unchanged: report.unchanged,
            unreadable: report.errors.len() as u64,
            removed: report.removed.len() as u64,
            shared_files: self.node.store().len(),
        }))
    }

    async fn unshare(&self, request: Request<UnshareRequest>) -> Result<Response<UnshareResponse>, Status> {
        let path = absolute(&request.into_inner().path)?;
        let was_shared = self.node.unshare(path).await.map_err(node_status)?;
        Ok(Response::new(UnshareResponse { was_shared, shared_files: self.node.store().len() }))
    }

    async fn search(&self, request: Request<SearchRequest>) -> Result<Response<SearchResponse>, Status> {
        let r = request.into_inner();
        let query = DirectorySearch { query: r.query, filters: r.filters, page: 0, page_size: r.page_size };
        let hits = self.node.search(query).await.map_err(lookup_status)?;
        Ok(Response::new(SearchResponse { hits }))
    }

    type GetStream = ReceiverStream<Result<GetProgress, Status>>;

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<Self::GetStream>, Status> {
        let r = request.into_inner();
        let id = match r.target {
            Some(get_request::Target::ContentId(hex)) => content_id(&hex)?,
            Some(get_request::Target::Result(n)) => self.node.result_id(n).ok_or_else(|| {
                Status::invalid_argument(format!("the last search has no result {n} (search again)"))
            })?,
            None => return Err(Status::invalid_argument("say which file: a content id or a result number")),
        };
        let out_dir = if r.out_dir.is_empty() { None } else { Some(absolute(&r.out_dir)?) };
        let wait = (r.wait_sources_secs > 0).then(|| Duration::from_secs(u64::from(r.wait_sources_secs)));
        let sub = self.node.get(id, out_dir, wait).await.map_err(get_status)?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(super::progress::forward(id, sub, tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn cancel(&self, request: Request<CancelRequest>) -> Result<Response<CancelResponse>, Status> {
        let id = content_id(&request.into_inner().content_id)?;
        let done = self.node.cancel(id).await.map_err(get_status)?;
        Ok(Response::new(CancelResponse { was_running: done.was_running, freed_bytes: done.freed_bytes }))
    }
}
