//! The node keeps its QUIC port across restarts: a user who forwarded it on the router by
//! hand, or a router that learned it (UPnP leases, a NAT's mapping), would lose that at every
//! start with a new random port. With `--listen` on port 0 (the default) the node binds the
//! port it used last, noted in `quic-port` in the data dir, and takes any free one only when
//! that one is taken; an explicit port is always the user's choice and is not noted.
//!
//! Must never fail a start because of the note (a missing, unreadable or stale note only
//! means a new port) or keep a note of a port it did not bind.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

const NOTE: &str = "quic-port";

fn note(data_dir: &Path) -> PathBuf {
    data_dir.join(NOTE)
}

/// The port to try first for `listen`: the noted one when `listen` leaves the port open.
pub(super) fn preferred(data_dir: &Path, listen: SocketAddr) -> Option<SocketAddr> {
    if listen.port() != 0 {
        return None;
    }
    let text = std::fs::read_to_string(note(data_dir)).ok()?;
    let port = text.trim().parse::<u16>().ok().filter(|&p| p != 0)?;
    Some(SocketAddr::new(listen.ip(), port))
}

/// Notes the port bound for `listen` (when it left the port open), atomically.
pub(super) fn remember(data_dir: &Path, listen: SocketAddr, bound: u16) {
    if listen.port() != 0 {
        return;
    }
    let path = note(data_dir);
    if std::fs::read_to_string(&path).is_ok_and(|t| t.trim() == bound.to_string()) {
        return;
    }
    let tmp = path.with_extension("tmp");
    let written = std::fs::write(&tmp, format!("{bound}\n")).and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = written {
        tracing::warn!(error = %e, "cannot note the QUIC port; the next start may pick another");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_noted_port_is_preferred_only_when_listen_leaves_it_open() {
        let dir = tempfile::tempdir().unwrap();
        let any: SocketAddr = "0.0.0.0:0".parse().unwrap();
        assert_eq!(preferred(dir.path(), any), None, "nothing noted yet");
        remember(dir.path(), any, 41_000);
        assert_eq!(preferred(dir.path(), any), Some("0.0.0.0:41000".parse().unwrap()));
        let fixed: SocketAddr = "0.0.0.0:7777".parse().unwrap();
        assert_eq!(preferred(dir.path(), fixed), None, "an explicit port wins");
        remember(dir.path(), fixed, 7777);
        assert_eq!(preferred(dir.path(), any), Some("0.0.0.0:41000".parse().unwrap()), "not noted");
        std::fs::write(dir.path().join(NOTE), "garbage").unwrap();
        assert_eq!(preferred(dir.path(), any), None, "a bad note means a new port");
    }
}
