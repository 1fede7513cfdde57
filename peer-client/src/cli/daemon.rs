//! `quaver daemon`: runs the node until SIGTERM or Ctrl-C, then stops cleanly (withdraws from
//! the directory, lets uploads in progress finish, flushes the store). Downloads in progress
//! stop where they are; their verified blocks are kept for the next `get`.
//!
//! Once serving it prints one line on standard output, for people and scripts alike:
//! `quaver node PEER_ID serving on QUIC_ADDR, control socket SOCKET`.

use std::net::SocketAddr;
use std::path::PathBuf;

use quaver_peer::node::{Node, NodeConfig};
use quaver_peer::serve::ServeConfig;
use tracing_subscriber::EnvFilter;

use super::Exit;

pub struct DaemonArgs {
    pub data_dir: PathBuf,
    pub directory: String,
    pub directory_ca: Option<PathBuf>,
    pub listen: SocketAddr,
    pub download_dir: Option<PathBuf>,
    pub upload_slots: usize,
    pub max_upload_rate: Option<u64>,
}

pub async fn run(args: DaemonArgs) -> Exit {
    use std::io::IsTerminal as _;
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal: journald and log files show escapes raw.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    // One rustls provider for the process, as insurance (every config also names ring itself).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let listen = args.listen;
    match serve(args).await {
        Ok(()) => Exit::Ok,
        Err(e) => {
            eprintln!("quaver daemon: {}", explain(&e, listen));
            Exit::Failure
        }
    }
}

/// A failed start as one line, each cause once, with what to do where the daemon knows it.
fn explain(e: &anyhow::Error, listen: SocketAddr) -> String {
    let line = quaver_shared::report::chain_line(e.chain());
    // The QUIC endpoint's bind only: another "address in use" (the control socket's) is not
    // about the UDP port.
    let port_in_use = e.chain().any(|cause| {
        matches!(cause.downcast_ref::<quaver_peer::tls::TlsError>(),
            Some(quaver_peer::tls::TlsError::Bind(io)) if io.kind() == std::io::ErrorKind::AddrInUse)
    });
    if port_in_use {
        format!(
            "UDP port {} on {} is in use by another program ({line}); stop it, or choose another with --listen ADDR:PORT (port 0: any free port)",
            listen.port(),
            listen.ip()
        )
    } else {
        line
    }
}

async fn serve(args: DaemonArgs) -> anyhow::Result<()> {
    if args.upload_slots == 0 {
        anyhow::bail!("--upload-slots must be at least 1");
    }
    if args.max_upload_rate == Some(0) {
        anyhow::bail!("--max-upload-rate must be at least 1 byte per second (omit it for no cap)");
    }
    // Before anything opens a store: a second daemon here is told who holds the data dir.
    let _lock = quaver_shared::data_dir_lock::DataDirLock::acquire(&args.data_dir, "quaver node")?;
    let mut config = NodeConfig::new(args.data_dir, args.directory);
    config.directory_ca = args.directory_ca;
    config.listen = args.listen;
    if let Some(dir) = args.download_dir {
        config.download_dir = std::path::absolute(dir)?;
    }
    config.serve =
        ServeConfig { upload_slots: args.upload_slots, max_upload_bytes_per_sec: args.max_upload_rate };
    let socket = config.control_socket();
    let node = Node::start(config).await?;
    // Bound before the readiness line: once scripts see it, commands work.
    let listener = quaver_peer::control::bind(&socket).await?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let control = tokio::spawn({
        let (node, socket) = (node.clone(), socket.clone());
        async move {
            quaver_peer::control::serve(node, listener, &socket, async {
                let _ = stop_rx.await;
            })
            .await
        }
    });
    let quic = node.quic_address().map(|a| a.to_string()).unwrap_or_default();
    println!("quaver node {} serving on {quic}, control socket {}", node.peer_id(), socket.display());

    quaver_shared::signal::shutdown_requested().await;
    tracing::info!("shutdown requested");
    let _ = stop_tx.send(());
    node.shutdown().await;
    if let Ok(Err(e)) = control.await {
        tracing::warn!(error = %e, "control API ended with an error");
    }
    tracing::info!("stopped");
    Ok(())
}
