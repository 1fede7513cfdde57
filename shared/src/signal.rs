//! How both daemons (`quaver-directory`, `quaver daemon`) learn that they should stop.

/// Resolves at the first Ctrl-C (SIGINT) or SIGTERM: a terminal, systemd and container runtimes
/// all ask for a graceful stop one of these two ways. Where SIGTERM cannot be watched, Ctrl-C
/// alone. Needs a tokio runtime.
pub async fn shutdown_requested() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
