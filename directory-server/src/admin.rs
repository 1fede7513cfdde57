//! The operator API (`proto/admin.proto`), server and client side: `Admin.Backup` streams a
//! consistent catalog snapshot to a loopback caller; the peers, bans and remove-file calls
//! are thin handlers over `Directory` (their conversions and clients are `admin_calls`); and
//! the clients behind `quaver-directory backup` and `quaver-directory health`.
//!
//! Trust model: the service sits on the public gRPC port but answers only connections from a
//! loopback address, checked on every call before anything is read. It takes no paths and
//! writes only an anonymous temporary file in the data dir (the snapshot, deleted by the OS
//! when closed), so a caller can neither choose where the server writes nor read anything but
//! the catalog. See `proto/admin.proto` and deploy/OPERATIONS.md.

use std::io::{Read, Seek};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use quaver_shared::admin::v1::admin_client::AdminClient;
use quaver_shared::admin::v1::admin_server::{Admin, AdminServer};
use quaver_shared::admin::v1::backup_chunk::Part;
use quaver_shared::admin::v1::{
    BackupChunk, BackupHeader, BackupRequest, BanRequest, BanResponse, ListBansRequest, ListBansResponse,
    ListPeersRequest, ListPeersResponse, RemoveFileRequest, RemoveFileResponse, TreeCount, UnbanRequest,
    UnbanResponse,
};
use quaver_shared::directory_endpoint::directory_endpoint;
use quaver_shared::{ContentId, PeerId};
use tokio::io::AsyncWriteExt;
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::admin_calls::{self, DEFAULT_PEERS, MAX_PEERS};
use crate::backup::{self, BackupError, FORMAT_VERSION, Manifest, SnapshotSummary, TreeRecords};
use crate::bans::Ban;
use crate::catalog::now_unix_ms;
use crate::directory::Directory;
use crate::error::DirectoryError;

/// Bytes per `data` message: well under the 4 MiB a gRPC client accepts by default.
const CHUNK_BYTES: usize = 1024 * 1024;

/// The `Admin` service of one directory.
pub struct AdminService {
    directory: Arc<Directory>,
    data_dir: PathBuf,
    /// One backup at a time: each holds a snapshot's worth of disk and pauses writers.
    running: Arc<Semaphore>,
}

/// The service as the server mounts it.
pub fn server(directory: Arc<Directory>, data_dir: PathBuf) -> AdminServer<AdminService> {
    AdminServer::new(AdminService { directory, data_dir, running: Arc::new(Semaphore::new(1)) })
}

/// Refuses a caller that is not on this host.
fn require_loopback(remote: Option<SocketAddr>) -> Result<(), Status> {
    match remote {
        Some(addr) if addr.ip().to_canonical().is_loopback() => Ok(()),
        Some(addr) => {
            tracing::warn!(%addr, "admin call refused: not from loopback");
            Err(Status::permission_denied("the admin API answers loopback connections only"))
        }
        None => Err(Status::permission_denied("the admin API cannot see this connection's address")),
    }
}

impl AdminService {
    /// Runs an operator call on the blocking pool (catalog reads and writes block); `durable`:
    /// the catalog is flushed before the answer, as for a peer's writes.
    async fn run<T: Send + 'static>(
        &self,
        durable: bool,
        f: impl FnOnce(&Directory) -> Result<T, DirectoryError> + Send + 'static,
    ) -> Result<T, Status> {
        let directory = self.directory.clone();
        let done = tokio::task::spawn_blocking(move || {
            let out = f(&directory)?;
            if durable {
                directory.flush_blocking()?;
            }
            Ok::<_, DirectoryError>(out)
        })
        .await;
        match done {
            Ok(result) => result.map_err(Status::from),
            Err(e) => {
                tracing::error!(error = %e, "admin task failed");
                Err(Status::internal("internal error; the directory logged the details"))
            }
        }
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn list_peers(
        &self,
        request: Request<ListPeersRequest>,
    ) -> Result<Response<ListPeersResponse>, Status> {
        require_loopback(request.remote_addr())?;
        let req = request.into_inner();
        let limit = match req.limit {
            0 => DEFAULT_PEERS,
            n if n > MAX_PEERS => {
                return Err(Status::invalid_argument(format!(
                    "limit {n} is over the maximum of {MAX_PEERS}"
                )));
            }
            n => n,
        };
        let after = match req.after.as_slice() {
            [] => None,
            bytes => {
                Some(PeerId::from_slice(bytes).map_err(|e| Status::invalid_argument(format!("after: {e}")))?)
            }
        };
        let (peers, online) = self
            .run(false, move |d| d.online_peers(after, limit as usize, std::time::Instant::now()))
            .await?;
        let peers = peers.iter().map(admin_calls::online_peer).collect();
        Ok(Response::new(ListPeersResponse { peers, online }))
    }

    async fn ban(&self, request: Request<BanRequest>) -> Result<Response<BanResponse>, Status> {
        require_loopback(request.remote_addr())?;
        let req = request.into_inner();
        let target = admin_calls::target_from_proto(req.target)?;
        let ban = Ban::new(target, req.seconds, req.reason, now_unix_ms())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let outcome = self.run(true, move |d| d.ban(ban, std::time::Instant::now())).await?;
        Ok(Response::new(BanResponse {
            ban: Some(admin_calls::entry(&outcome.ban)),
            peers_dropped: u32::try_from(outcome.dropped.len()).unwrap_or(u32::MAX),
            replaced: outcome.replaced,
        }))
    }

    async fn unban(&self, request: Request<UnbanRequest>) -> Result<Response<UnbanResponse>, Status> {
        require_loopback(request.remote_addr())?;
        let target = admin_calls::target_from_proto(request.into_inner().target)?;
        let lifted = self.run(true, move |d| d.unban(&target)).await?;
        Ok(Response::new(UnbanResponse { lifted }))
    }

    async fn list_bans(
        &self,
        request: Request<ListBansRequest>,
    ) -> Result<Response<ListBansResponse>, Status> {
        require_loopback(request.remote_addr())?;
        let bans = self.run(true, |d| d.bans()).await?;
        Ok(Response::new(ListBansResponse { bans: bans.iter().map(admin_calls::entry).collect() }))
    }

    async fn remove_file(
        &self,
        request: Request<RemoveFileRequest>,
    ) -> Result<Response<RemoveFileResponse>, Status> {
        require_loopback(request.remote_addr())?;
        let id = ContentId::from_slice(&request.into_inner().content_id)
            .map_err(|e| Status::invalid_argument(format!("content_id: {e}")))?;
        let removed = self.run(true, move |d| d.remove_file(&id, std::time::Instant::now())).await?;
        Ok(Response::new(RemoveFileResponse {
            removed: removed.is_some(),
            sources: removed.map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX)),
        }))
    }

    type BackupStream = ReceiverStream<Result<BackupChunk, Status>>;

    async fn backup(&self, request: Request<BackupRequest>) -> Result<Response<Self::BackupStream>, Status> {
        require_loopback(request.remote_addr())?;
        let permit =
            self.running.clone().try_acquire_owned().map_err(|_| {
                Status::resource_exhausted("a backup is already running; try again when it ends")
            })?;
        let (tx, rx) = mpsc::channel(4);
        let (directory, data_dir) = (self.directory.clone(), self.data_dir.clone());
        // The snapshot is taken on its own task, not before answering: a large catalog may
        // take longer than the server's per-call timeout.
        tokio::spawn(async move {
            let _permit = permit;
            let taken = tokio::task::spawn_blocking(move || take_snapshot(&directory, &data_dir)).await;
            let (file, summary, created_unix_ms) = match taken {
                Ok(Ok(taken)) => taken,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "backup failed");
                    let _ = tx.send(Err(Status::internal(format!("backup failed: {e}")))).await;
                    return;
                }
                Err(e) => {
                    tracing::error!(error = %e, "backup task failed");
                    let _ = tx.send(Err(Status::internal("backup task failed"))).await;
                    return;
                }
            };
            tracing::info!(bytes = summary.bytes, "backup snapshot taken; sending it");
            let header = BackupHeader {
                format_version: FORMAT_VERSION,
                created_unix_ms,
                snapshot_bytes: summary.bytes,
                snapshot_blake3: summary.blake3.to_vec(),
                trees: summary
                    .trees
                    .iter()
                    .map(|t| TreeCount { name: t.name.clone(), records: t.records })
                    .collect(),
                server_version: env!("CARGO_PKG_VERSION").into(),
            };
            if tx.send(Ok(BackupChunk { part: Some(Part::Header(header)) })).await.is_err() {
                return;
            }
            send_file(file, tx).await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Writes a snapshot of the frozen catalog to an anonymous file in the data dir (same disk,
/// gone when closed even if the server dies) and rewinds it.
fn take_snapshot(
    directory: &Directory,
    data_dir: &Path,
) -> Result<(std::fs::File, SnapshotSummary, u64), BackupError> {
    let mut file = tempfile::tempfile_in(data_dir)
        .map_err(BackupError::io(format!("creating a temporary file in {}", data_dir.display())))?;
    let (summary, created) = directory.with_frozen_catalog(|catalog| {
        let created = backup::archive::now_unix_ms();
        backup::snapshot::write(catalog, &mut file).map(|s| (s, created))
    })?;
    file.rewind().map_err(BackupError::io("rewinding the snapshot"))?;
    Ok((file, summary, created))
}

/// Streams the file in chunks until it ends or the caller goes away.
async fn send_file(mut file: std::fs::File, tx: mpsc::Sender<Result<BackupChunk, Status>>) {
    loop {
        let read = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; CHUNK_BYTES];
            let n = read_full(&mut file, &mut buf)?;
            buf.truncate(n);
            Ok::<_, std::io::Error>((file, buf))
        })
        .await;
        let chunk = match read {
            Ok(Ok((f, buf))) if !buf.is_empty() => {
                file = f;
                buf
            }
            Ok(Ok(_)) => return,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "reading the backup snapshot failed");
                let _ = tx.send(Err(Status::internal("reading the snapshot failed"))).await;
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "backup read task failed");
                return;
            }
        };
        if tx.send(Ok(BackupChunk { part: Some(Part::Data(chunk)) })).await.is_err() {
            tracing::warn!("backup caller went away before the end");
            return;
        }
    }
}

/// Fills `buf` unless the file ends first; returns how much it read.
fn read_full(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            m => n += m,
        }
    }
    Ok(n)
}

/// A channel to the directory at `url` (`http://` or `https://`; `ca`: a PEM file to trust for
/// `https://`).
pub async fn connect(url: &str, ca: Option<&Path>) -> Result<Channel, BackupError> {
    let failed = |detail: String| BackupError::Connect { url: url.to_owned(), detail };
    let endpoint = directory_endpoint(url, ca).map_err(|e| failed(chain(&e)))?;
    endpoint.connect_timeout(Duration::from_secs(5)).connect().await.map_err(|e| failed(chain(&e)))
}

/// An error and its causes on one line ("transport error: tcp connect error: refused").
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// Takes a backup from the running directory at `url` into `to` (see `backup::archive`).
pub async fn fetch_backup(url: &str, ca: Option<&Path>, to: &Path) -> Result<Manifest, BackupError> {
    let channel = connect(url, ca).await?;
    let pending = {
        let to = to.to_owned();
        tokio::task::spawn_blocking(move || backup::archive::PendingBackup::create(&to))
            .await
            .map_err(|e| BackupError::Remote(format!("task failed: {e}")))??
    };
    let remote = |s: Status| BackupError::Remote(format!("{}: {}", s.code(), s.message()));
    let mut stream = AdminClient::new(channel)
        .max_decoding_message_size(2 * CHUNK_BYTES)
        .backup(BackupRequest {})
        .await
        .map_err(remote)?
        .into_inner();
    let header = match stream.message().await.map_err(remote)? {
        Some(BackupChunk { part: Some(Part::Header(h)) }) => h,
        _ => return Err(BackupError::Remote("the stream did not start with a header".into())),
    };
    if header.format_version != FORMAT_VERSION {
        return Err(BackupError::Remote(format!(
            "the server sends snapshot format {}, this tool writes {FORMAT_VERSION}; use the server's version",
            header.format_version
        )));
    }
    let mut pending = pending;
    let file = pending.snapshot_writer().try_clone().map_err(BackupError::io("opening the snapshot file"))?;
    let mut out = tokio::io::BufWriter::new(tokio::fs::File::from_std(file));
    let (mut bytes, mut hasher) = (0u64, blake3::Hasher::new());
    while let Some(chunk) = stream.message().await.map_err(remote)? {
        let Some(Part::Data(data)) = chunk.part else {
            return Err(BackupError::Remote("a second header in the stream".into()));
        };
        bytes += data.len() as u64;
        if bytes > header.snapshot_bytes {
            return Err(BackupError::Remote("more bytes than the header announced".into()));
        }
        hasher.update(&data);
        out.write_all(&data).await.map_err(BackupError::io("writing the snapshot"))?;
    }
    out.flush().await.map_err(BackupError::io("writing the snapshot"))?;
    let summary = SnapshotSummary {
        bytes,
        blake3: *hasher.finalize().as_bytes(),
        trees: header
            .trees
            .iter()
            .map(|t| TreeRecords { name: t.name.clone(), records: t.records })
            .collect(),
    };
    if bytes != header.snapshot_bytes || summary.blake3[..] != header.snapshot_blake3[..] {
        return Err(BackupError::Remote(format!(
            "received {bytes} of {} bytes, or bytes that do not match the server's hash",
            header.snapshot_bytes
        )));
    }
    tokio::task::spawn_blocking(move || {
        pending.finish(header.created_unix_ms, &header.server_version, &summary)
    })
    .await
    .map_err(|e| BackupError::Remote(format!("task failed: {e}")))?
}

/// Asks the gRPC health service at `url` whether the server is serving (service "": the whole
/// server). `Ok(false)` for any answer but SERVING.
pub async fn health(url: &str, ca: Option<&Path>) -> Result<bool, BackupError> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let channel = connect(url, ca).await?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest { service: String::new() })
        .await
        .map_err(|s| BackupError::Remote(format!("{}: {}", s.code(), s.message())))?;
    Ok(response.into_inner().status == ServingStatus::Serving as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_callers_are_admitted() {
        for ok in ["127.0.0.1:5", "127.8.9.10:5", "[::1]:5", "[::ffff:127.0.0.1]:5"] {
            assert!(require_loopback(Some(ok.parse().unwrap())).is_ok(), "{ok}");
        }
        for refused in ["10.0.0.1:5", "192.168.1.2:5", "[2001:db8::1]:5", "[::ffff:10.0.0.1]:5", "0.0.0.0:5"]
        {
            let status = require_loopback(Some(refused.parse().unwrap())).unwrap_err();
            assert_eq!(status.code(), tonic::Code::PermissionDenied, "{refused}");
        }
        assert!(require_loopback(None).is_err());
    }
}
