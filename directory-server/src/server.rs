//! Runs the directory: binds the listener and the connect-back QUIC endpoint, serves gRPC
//! (directory, health, reflection), drives the timers (lease expiry, index commits) and shuts
//! down gracefully.
//!
//! Shutdown order matters: stop accepting and let in-flight calls finish, stop the timers,
//! index whatever is pending, then flush sled. Nothing acknowledged is lost, and the next start
//! finds a committed index.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quaver_shared::directory::v1::directory_server::DirectoryServer;
use quaver_shared::limits::MAX_GRPC_MESSAGE_BYTES;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::server::TcpIncoming;

use crate::config::Config;
use crate::directory::Directory;
use crate::error::DirectoryError;
use crate::reach::ConnectBack;
use crate::service::DirectoryService;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("invalid configuration: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Directory(#[from] DirectoryError),
    #[error("gRPC transport failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("background task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("cannot set up the connect-back QUIC endpoint: {0}")]
    ConnectBack(#[from] quaver_shared::tls::TlsError),
}

/// A server running on a background task; dropping it does not stop it, `shutdown` does.
pub struct RunningServer {
    pub local_addr: SocketAddr,
    pub directory: Arc<Directory>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), ServerError>>,
}

impl RunningServer {
    /// Opens the data dir, binds `config.listen` and starts serving.
    pub async fn start(config: Config) -> Result<Self, ServerError> {
        config.validate()?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| ServerError::Bind { addr: config.listen, source })?;
        let local_addr =
            listener.local_addr().map_err(|source| ServerError::Bind { addr: config.listen, source })?;
        let directory = {
            let config = config.clone();
            Arc::new(tokio::task::spawn_blocking(move || Directory::open(config)).await??)
        };
        let (stop, mut stopped) = watch::channel(false);
        let shutdown = async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        let task = tokio::spawn(serve(directory.clone(), config, listener, shutdown));
        Ok(Self { local_addr, directory, stop, task })
    }

    /// Graceful stop: in-flight calls finish, the index commits, sled flushes.
    pub async fn shutdown(self) -> Result<(), ServerError> {
        let _ = self.stop.send(true);
        self.task.await?
    }

    /// Waits until the server stops by itself (it only does on a fatal error).
    pub async fn wait(&mut self) -> Result<(), ServerError> {
        (&mut self.task).await?
    }

    /// Asks the server to stop; `wait` returns once it has.
    pub fn request_stop(&self) {
        let _ = self.stop.send(true);
    }
}

/// Serves until `shutdown` completes, then stops gracefully.
pub async fn serve(
    directory: Arc<Directory>,
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    // Index what the catalog holds but the index does not (first start after a crash, or a
    // lost index) before answering searches.
    {
        let d = directory.clone();
        let n = tokio::task::spawn_blocking(move || d.index_all_pending()).await??;
        if n > 0 {
            tracing::info!(files = n, "indexed catalog entries missing from the search index");
        }
    }

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<DirectoryServer<DirectoryService>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(quaver_shared::DIRECTORY_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reach = Arc::new(ConnectBack::bind(config.listen, config.verify_timeout())?);
    let api = DirectoryServer::new(DirectoryService::new(directory.clone(), reach))
        .max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES);

    let (stop_timers, timers_stopped) = watch::channel(false);
    let expiry = tokio::spawn(expire_leases(directory.clone(), lease_tick(&config), timers_stopped.clone()));
    let indexer = tokio::spawn(index_loop(directory.clone(), config.index_commit_interval(), timers_stopped));

    tracing::info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "serving");
    let served = tonic::transport::Server::builder()
        .concurrency_limit_per_connection(256)
        .timeout(Duration::from_secs(30))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(api)
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown)
        .await;
    tracing::info!("stopped accepting requests; finishing up");

    let _ = stop_timers.send(true);
    let _ = expiry.await;
    let _ = indexer.await;
    let d = directory.clone();
    tokio::task::spawn_blocking(move || {
        d.index_all_pending()?;
        d.flush_blocking()
    })
    .await??;
    tracing::info!("index committed and catalog flushed");
    served?;
    Ok(())
}

/// Sweep often enough that an expired peer leaves within a small part of its lease.
fn lease_tick(config: &Config) -> Duration {
    (config.lease() / 20).clamp(Duration::from_millis(50), Duration::from_secs(1))
}

async fn expire_leases(directory: Arc<Directory>, tick: Duration, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let d = directory.clone();
        match tokio::task::spawn_blocking(move || d.expire_leases(Instant::now())).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "lease expiry failed"),
            Err(e) => tracing::error!(error = %e, "lease expiry task failed"),
        }
    }
}

/// Commits new catalog entries to the index in batches, one commit per interval at most:
/// commits are the expensive part of indexing.
async fn index_loop(directory: Arc<Directory>, interval: Duration, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let d = directory.clone();
        match tokio::task::spawn_blocking(move || d.index_pending()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "indexing failed; will retry"),
            Err(e) => tracing::error!(error = %e, "indexing task failed"),
        }
    }
}
