//! Runs the directory: binds the listener, the connect-back QUIC endpoint and the rendezvous
//! endpoints, serves gRPC
//! (directory, health, reflection), drives the timers (lease expiry, index commits) and shuts
//! down gracefully.
//!
//! Shutdown order matters: stop accepting and let in-flight calls finish, stop the timers,
//! index whatever is pending, then flush sled. Nothing acknowledged is lost, and the next start
//! finds a committed index.
//!
//! Around the gRPC services sit the operator's parts (`ops`): the accept path with connection
//! limits and optional TLS (reloaded on SIGHUP), the request layer (limits, metrics, debug
//! log) and, when `metrics_listen` is set, the `/metrics` endpoint.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quaver_shared::directory::v1::directory_server::DirectoryServer;
use quaver_shared::limits::MAX_GRPC_MESSAGE_BYTES;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::config::Config;
use crate::directory::Directory;
use crate::error::DirectoryError;
use crate::index::compaction::Compaction;
use crate::ops::layer::OpsLayer;
use crate::ops::tls::{CertStore, TlsSetupError};
use crate::ops::{Limits, Metrics, incoming, metrics_http};
use crate::reach::ConnectBack;
use crate::rendezvous::{Rendezvous, RendezvousError};
use crate::service::DirectoryService;

/// After a merge of the whole search index (see `index::compaction`), the next one waits this
/// many times as long as it took: merges then take at most 2 % of one core (at 1M files one
/// costs about 10 s, so at most one every 8 minutes).
const COMPACT_REST_FACTOR: u32 = 50;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("invalid configuration: {0}")]
    Config(#[from] crate::config::ConfigError),
    /// `setting` is the config key that chose `addr` (`listen`, `metrics_listen`).
    #[error("cannot listen on {addr} (`{setting}`): {source}")]
    Bind { addr: SocketAddr, setting: &'static str, source: std::io::Error },
    #[error(transparent)]
    Directory(#[from] DirectoryError),
    #[error("gRPC transport failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("background task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Rendezvous(#[from] RendezvousError),
    #[error("cannot set up the connect-back QUIC endpoint: {0}")]
    ConnectBack(#[from] quaver_shared::tls::TlsError),
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
}

/// A server running on a background task; dropping it does not stop it, `shutdown` does.
pub struct RunningServer {
    pub local_addr: SocketAddr,
    /// Where `/metrics` is served, when `metrics_listen` is set.
    pub metrics_addr: Option<SocketAddr>,
    pub directory: Arc<Directory>,
    pub metrics: Arc<Metrics>,
    /// The UDP endpoints that tell peers their mapped address.
    pub rendezvous: Arc<Rendezvous>,
    tls: Option<Arc<CertStore>>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), ServerError>>,
}

impl RunningServer {
    /// Opens the data dir, binds `config.listen` and starts serving.
    pub async fn start(config: Config) -> Result<Self, ServerError> {
        config.validate()?;
        // A certificate that cannot be used is a start-up error, not a first-handshake one.
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(CertStore::open(cert, key)?),
            _ => None,
        };
        let listener = bind(config.listen, "listen").await?;
        let local_addr = listener.local_addr().map_err(|source| ServerError::Bind {
            addr: config.listen,
            setting: "listen",
            source,
        })?;
        let metrics_listener = match config.metrics_listen {
            Some(addr) => Some(bind(addr, "metrics_listen").await?),
            None => None,
        };
        let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());
        let directory = {
            let config = config.clone();
            Arc::new(tokio::task::spawn_blocking(move || Directory::open(config)).await??)
        };
        let relay = config.relay().map(|offer| {
            let directory = directory.clone();
            let has_session =
                Box::new(move |peer: &quaver_shared::PeerId| directory.has_session(peer, Instant::now()));
            crate::rendezvous::RelayBroker { offer, has_session }
        });
        let ports = config.rendezvous_ports();
        let rendezvous = Arc::new(Rendezvous::bind(local_addr.ip(), ports, &config.data_dir, relay)?);
        let limits = Arc::new(Limits::new(config.limits.clone()));
        let metrics = Arc::new(Metrics::new(directory.clone(), limits.clone(), rendezvous.clone()));
        let (stop, stopping) = watch::channel(false);
        let ops = Ops {
            tls: tls.clone(),
            limits,
            metrics: metrics.clone(),
            metrics_listener,
            rendezvous: rendezvous.clone(),
        };
        let task = tokio::spawn(serve(directory.clone(), config, listener, ops, stopping));
        Ok(Self { local_addr, metrics_addr, directory, metrics, rendezvous, tls, stop, task })
    }

    /// Re-reads the TLS certificate and key (what SIGHUP does): new connections get the new
    /// certificate, open ones keep theirs. `None` without TLS; `Some(false)` if the files were
    /// unusable, in which case the old certificate stays (the error is logged).
    pub fn reload_tls(&self) -> Option<bool> {
        let ok = self.tls.as_ref()?.reload_logged();
        self.metrics.tls_reload(ok);
        Some(ok)
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

async fn bind(addr: SocketAddr, setting: &'static str) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr).await.map_err(|source| ServerError::Bind { addr, setting, source })
}

/// The operator's parts of one server (see the module doc).
struct Ops {
    tls: Option<Arc<CertStore>>,
    limits: Arc<Limits>,
    metrics: Arc<Metrics>,
    metrics_listener: Option<TcpListener>,
    rendezvous: Arc<Rendezvous>,
}

/// Serves until `stopping` turns true, then stops gracefully. The service sees the same signal:
/// it ends the KeepAlive streams that would otherwise hold the graceful stop open.
async fn serve(
    directory: Arc<Directory>,
    config: Config,
    listener: TcpListener,
    ops: Ops,
    stopping: watch::Receiver<bool>,
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
    let Ops { tls, limits, metrics, metrics_listener, rendezvous } = ops;
    let mut stopped = stopping.clone();
    let shutdown = async move {
        // A dropped sender means nobody can ask any more: stop too.
        let _ = stopped.wait_for(|s| *s).await;
    };
    let service = DirectoryService::new(
        directory.clone(),
        reach,
        rendezvous.clone(),
        limits.clone(),
        metrics.clone(),
        stopping,
    );
    let api = DirectoryServer::new(service).max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES);

    let (stop_timers, timers_stopped) = watch::channel(false);
    let mut background = vec![
        tokio::spawn(expire_leases(directory.clone(), lease_tick(&config), timers_stopped.clone())),
        tokio::spawn(index_loop(
            directory.clone(),
            metrics.clone(),
            config.index_commit_interval(),
            timers_stopped.clone(),
        )),
        tokio::spawn(limits.clone().forget_idle_clients(timers_stopped.clone())),
        tokio::spawn(rendezvous.serve(timers_stopped.clone())),
    ];
    if let Some(l) = metrics_listener {
        background.push(tokio::spawn(metrics_http::serve(l, metrics.clone(), timers_stopped.clone())));
    }
    if let Some(store) = &tls {
        let on_reload = {
            let metrics = metrics.clone();
            move |ok| metrics.tls_reload(ok)
        };
        background.push(tokio::spawn(store.clone().reload_on_sighup(on_reload, timers_stopped)));
    }

    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), scheme, "serving");
    let streams = config.limits.max_streams_per_connection;
    let router = tonic::transport::Server::builder()
        .concurrency_limit_per_connection(streams as usize)
        .max_concurrent_streams(streams)
        // Headers of a gRPC call are small; a large header block is abuse.
        .http2_max_header_list_size(64 * 1024)
        .timeout(Duration::from_secs(30))
        .layer(OpsLayer::new(limits.clone(), metrics.clone()))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(crate::admin::server(directory.clone(), config.data_dir.clone()))
        .add_service(api);
    let served = match tls {
        Some(store) => {
            let acceptor = TlsAcceptor::from(store.server_config()?);
            let timeout = Duration::from_millis(config.limits.tls_handshake_timeout_ms);
            let incoming = incoming::tls(listener, acceptor, timeout, limits, metrics);
            router.serve_with_incoming_shutdown(incoming, shutdown).await
        }
        None => {
            router.serve_with_incoming_shutdown(incoming::plain(listener, limits, metrics), shutdown).await
        }
    };
    tracing::info!("stopped accepting requests; finishing up");

    let _ = stop_timers.send(true);
    for task in background {
        let _ = task.await;
    }
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
/// commits are the expensive part of indexing. When a round finds nothing to index, it may merge
/// the index into one segment (`index::compaction`), in the same task, so indexing waits for it
/// rather than piling segments on a merge in progress.
async fn index_loop(
    directory: Arc<Directory>,
    metrics: Arc<Metrics>,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut compaction = Compaction::new(COMPACT_REST_FACTOR);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let d = directory.clone();
        let started = Instant::now();
        let indexed = match tokio::task::spawn_blocking(move || d.index_pending()).await {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "indexing failed; will retry");
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "indexing task failed");
                continue;
            }
        };
        if indexed > 0 {
            metrics.index_round(indexed, started);
        }
        let segments = directory.index_segments();
        if compaction.due(indexed, segments, Instant::now()) {
            let (d, started) = (directory.clone(), Instant::now());
            let merge = tokio::task::spawn_blocking(move || d.compact_index());
            // A stop does not wait for the merge: its output is only used once committed, and
            // what a stopped merge wrote is removed by tantivy at the next start.
            let merged = tokio::select! {
                merged = merge => merged,
                _ = stop.wait_for(|s| *s) => return,
            };
            compaction.ran(started, started.elapsed(), matches!(merged, Ok(Ok(true))));
            match merged {
                Ok(Ok(merged)) => {
                    tracing::info!(segments, merged, elapsed = ?started.elapsed(), "search index compacted")
                }
                Ok(Err(e)) => tracing::error!(error = %e, "index compaction failed"),
                Err(e) => tracing::error!(error = %e, "index compaction task failed"),
            }
        }
    }
}
