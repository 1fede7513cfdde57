//! The node's connection to the directory: announce, publish the share list, heartbeat,
//! reconnect with backoff, withdraw on shutdown (`proto/directory.proto`, session flow).
//!
//! [`Session::spawn`] starts one tokio task that keeps the node announced for as long as it
//! runs. It owns:
//! - **the session**: `Challenge`, then `Announce` (peer id, QUIC port, share digest and
//!   count, free upload slots, agent) with the challenge signed by the node key, then a beat every `heartbeat_interval_seconds`, sent on one `KeepAlive`
//!   stream kept open for the session ([`keep_alive`]; `Heartbeat` calls if the directory has
//!   no such stream); an `UNAUTHENTICATED`
//!   answer (lease expired, directory restarted, the peer announced elsewhere) re-announces at
//!   once, any other failure reconnects after a [`Backoff`] wait (250 ms doubling to 30 s,
//!   jittered, reset by a success);
//! - **the share list on the directory**: it remembers, per directory, the ids that directory
//!   acknowledged (a sled tree next to the store, [`Published`](crate::store::Published)). When
//!   the directory's `known_digest` equals that set's digest, only the [`diff`] between the
//!   store and the set is published; otherwise (first contact, the directory lost data, another
//!   directory) everything is sent again with `reset`. Both sides stream from sled in id order
//!   (a merge join), in batches of at most `MAX_BATCH_FILES` ids, so memory stays bounded
//!   whatever the library size. [`SessionHandle::changed`] makes it publish promptly, and every
//!   heartbeat compares the store's digest with the acknowledged one as a safety net;
//! - **the state** a status display shows ([`SessionState`]) and a clean `Withdraw
//!   (go_offline)` on [`SessionHandle::shutdown`].
//!
//! What it must never do: exit on its own while the node runs (failures are retried, never
//! fatal); touch transfers (serving and fetching do not depend on it); wait on the directory
//! without a timeout; trust an answer it can check (digests are compared, malformed fields are
//! errors, never panics); hold the share list in memory.
//!
//! The decisions worth testing alone are sans-IO: the reconnect schedule ([`Backoff`]) and the
//! share-list difference ([`diff`]). Store access runs on tokio's blocking pool.

pub mod backoff;
pub mod diff;
mod keep_alive;
pub mod rendezvous;
mod sync;
mod worker;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use quaver_shared::NodeKey;
use tokio::sync::{Notify, watch};

use crate::store::{Store, StoreError};
pub use backoff::Backoff;
pub use diff::{Change, diff};

/// What `Announce` says the node is, for operators.
pub const AGENT: &str = concat!("quaver/", env!("CARGO_PKG_VERSION"));

/// The node's QUIC socket as the session uses it.
#[derive(Clone, Debug)]
pub struct NodeSocket {
    /// Its port is announced, and address discovery dials from it.
    pub endpoint: quinn::Endpoint,
    /// Its TURN splice, for relayed introductions (`None`: they are refused).
    pub splice: Option<Arc<quaver_shared::turn::TurnSplice>>,
}

/// How a session talks to its directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionConfig {
    /// The directory's gRPC address, e.g. `http://127.0.0.1:7700`.
    pub directory_url: String,
    /// CA certificates (PEM) an `https://` directory is verified against; the system roots
    /// when `None`.
    pub directory_ca: Option<std::path::PathBuf>,
    /// Bound on opening the connection to the directory. Default 5 s.
    pub connect_timeout: Duration,
    /// Bound on every call but the final `Withdraw`. Default 10 s.
    pub call_timeout: Duration,
    /// Bound on the `Withdraw` at shutdown. Default 2 s.
    pub withdraw_timeout: Duration,
    /// First reconnect wait. Default 250 ms.
    pub backoff_initial: Duration,
    /// Longest reconnect wait. Default 30 s.
    pub backoff_max: Duration,
}

impl SessionConfig {
    /// The defaults for a directory at `directory_url`.
    pub fn new(directory_url: impl Into<String>) -> Self {
        Self {
            directory_url: directory_url.into(),
            directory_ca: None,
            connect_timeout: Duration::from_secs(5),
            call_timeout: Duration::from_secs(10),
            withdraw_timeout: Duration::from_secs(2),
            backoff_initial: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
        }
    }
}

/// Where the session stands, for status displays and tests. Read it through [`view`](Self::view):
/// `connected` alone is the session task's belief, which a status must not repeat after the
/// answers stopped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionState {
    /// Announced, share list in sync, lease being renewed, beats on their way (the KeepAlive
    /// stream open, or `Heartbeat` calls).
    pub connected: bool,
    /// When `connected` last changed: connected since, or without a session since (the first
    /// failure after a session, not the latest retry); `None` before the first attempt ended.
    pub since: Option<SystemTime>,
    /// Until when the last answer of the directory (announce, publish, beat) vouches for the
    /// session: that answer's time plus one beat period plus the call timeout, the latest a next
    /// answer is due. `None` without a session.
    pub answered_until: Option<Instant>,
    /// The address the directory hands out for this node (observed IP, announced port).
    pub observed_address: Option<String>,
    /// Whether the directory's connect-back check of the last `Announce` reached this node's
    /// QUIC endpoint (only then is the node a source); `None` before the first announce.
    pub reachable: Option<bool>,
    /// The connect-back failed, but the directory hands the node out as a source reached
    /// through introductions (hole punching).
    pub introducible: bool,
    /// Neither dialled nor introducible: the directory hands the node out through its relay.
    pub relayed: bool,
    /// The node's NAT as address discovery judged it; `None` before the first discovery.
    pub nat: Option<quaver_core::nat::NatKind>,
    /// The address the directory's first rendezvous endpoint saw this node's QUIC socket at.
    pub public_address: Option<String>,
    /// Why the last address discovery failed, if it did.
    pub discovery_error: Option<String>,
    /// The most recent failure, kept after recovery for diagnosis.
    pub last_error: Option<String>,
    /// Successful `Announce` calls since spawn.
    pub announces: u64,
    /// Ids sent in acknowledged `Publish` batches since spawn (added plus removed).
    pub files_published: u64,
    /// Times the whole share list was resent (`reset`) since spawn.
    pub resets: u64,
}

/// What a status shows of a session at one moment ([`SessionState::view`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionView {
    /// The session is live: the task holds it and the directory answered recently enough.
    pub up: bool,
    /// Since when it has been up, or down (`None`: not known yet, the first attempt runs).
    pub since: Option<SystemTime>,
}

impl SessionState {
    /// The session as of `now` (monotonic, compared with `answered_until`) and `wall` (the
    /// same moment on the wall clock, for `since`). A session whose answers are overdue is down
    /// from the moment they were due, even if the task has not noticed yet.
    pub fn view(&self, now: Instant, wall: SystemTime) -> SessionView {
        match self.answered_until {
            Some(until) if self.connected && now > until => {
                SessionView { up: false, since: wall.checked_sub(now - until) }
            }
            Some(_) if self.connected => SessionView { up: true, since: self.since },
            _ => SessionView { up: false, since: self.since },
        }
    }

    /// Marks a session lost with `error` at `wall`: the session is down since then unless it
    /// was down already (a failed retry does not move `since`).
    pub(crate) fn lost(&mut self, error: String, wall: SystemTime) {
        if self.connected || self.since.is_none() {
            self.since = Some(wall);
        }
        self.connected = false;
        self.answered_until = None;
        self.last_error = Some(error);
    }
}

/// Why one attempt to talk to the directory failed. The session retries every one of them.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    BadUrl(#[from] quaver_shared::directory_endpoint::EndpointError),
    #[error("cannot connect to the directory: {0}")]
    Connect(#[source] tonic::transport::Error),
    #[error("{call} timed out after {after:?}")]
    Timeout { call: &'static str, after: Duration },
    #[error("{call} failed: {:?}: {}", .status.code(), .status.message())]
    Rpc {
        call: &'static str,
        #[source]
        status: tonic::Status,
    },
    #[error("the directory's {call} answer is malformed: {what}")]
    BadAnswer { call: &'static str, what: &'static str },
    #[error("the directory still disagrees about the share list after it was resent in full")]
    DigestMismatch,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("store task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl SessionError {
    /// The directory does not know our session (any more): announce again.
    pub fn is_unauthenticated(&self) -> bool {
        matches!(self, SessionError::Rpc { status, .. } if status.code() == tonic::Code::Unauthenticated)
    }
}

/// Starts sessions (see the module doc).
pub struct Session;

impl Session {
    /// Starts keeping the node announced to `config.directory_url`: `key`'s PeerId (each
    /// Announce signs the directory's challenge with it) with its QUIC
    /// endpoint on `quic_port`, the files of `store`, and the free upload slots `free_slots`
    /// reports (read at each announce and heartbeat). Must be called inside a tokio runtime.
    pub fn spawn(
        config: SessionConfig,
        store: Arc<Store>,
        key: Arc<NodeKey>,
        socket: NodeSocket,
        free_slots: watch::Receiver<u32>,
    ) -> SessionHandle {
        let (state_tx, state) = watch::channel(SessionState::default());
        let (stop, stop_rx) = watch::channel(false);
        let (done_tx, done) = watch::channel(());
        let changed = Arc::new(Notify::new());
        let worker =
            worker::Worker::new(config, store, key, socket, free_slots, Arc::clone(&changed), state_tx);
        let rendezvous = worker.rendezvous();
        tokio::spawn(async move {
            worker.run(stop_rx).await;
            // Dropping the sender tells every `shutdown` waiting that the task has ended.
            drop(done_tx);
        });
        SessionHandle { state, changed, stop, done, rendezvous }
    }
}

/// Controls a running session. Dropping it ends the session like [`shutdown`](Self::shutdown)
/// (with the same bounded `Withdraw`), without waiting for it.
pub struct SessionHandle {
    state: watch::Receiver<SessionState>,
    changed: Arc<Notify>,
    stop: watch::Sender<bool>,
    done: watch::Receiver<()>,
    rendezvous: watch::Receiver<Option<quinn::Connection>>,
}

impl SessionHandle {
    /// The session's state, updated as it changes.
    pub fn state(&self) -> watch::Receiver<SessionState> {
        self.state.clone()
    }

    /// The connection to the directory's rendezvous endpoint, while one is open: downloads
    /// ask for introductions on it.
    pub fn rendezvous(&self) -> watch::Receiver<Option<quinn::Connection>> {
        self.rendezvous.clone()
    }

    /// The store changed (a share, an unshare, a finished download): publish the difference
    /// soon. Cheap; calls made while a publish runs are folded into one more round.
    pub fn changed(&self) {
        self.changed.notify_one();
    }

    /// Goes offline: a `Withdraw` with `go_offline` (bounded by the config's
    /// `withdraw_timeout`) if a session is live, then the task ends. Returns once it has;
    /// calling it again returns at once.
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        let mut done = self.done.clone();
        // Only ever fails, when the task has ended and dropped the sender.
        while done.changed().await.is_ok() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connected_until(now: Instant, wall: SystemTime, until: Duration) -> SessionState {
        SessionState {
            connected: true,
            since: Some(wall),
            answered_until: Some(now + until),
            ..SessionState::default()
        }
    }

    #[test]
    fn a_session_is_up_only_while_the_directory_answered_recently() {
        let (now, wall) = (Instant::now(), SystemTime::UNIX_EPOCH + Duration::from_secs(1_000));
        let state = connected_until(now, wall, Duration::from_secs(40));
        assert_eq!(state.view(now, wall), SessionView { up: true, since: Some(wall) });
        let later = now + Duration::from_secs(40);
        assert!(state.view(later, wall + Duration::from_secs(40)).up, "due, not overdue");
        // Overdue: down since the answer was due, though the task still believes in it.
        let view = state.view(now + Duration::from_secs(45), wall + Duration::from_secs(45));
        assert_eq!(view, SessionView { up: false, since: Some(wall + Duration::from_secs(40)) });
    }

    #[test]
    fn a_lost_session_is_down_since_the_loss_not_since_the_latest_retry() {
        let (now, wall) = (Instant::now(), SystemTime::UNIX_EPOCH + Duration::from_secs(1_000));
        let mut state = connected_until(now, wall, Duration::from_secs(40));
        let lost_at = wall + Duration::from_secs(5);
        state.lost("KeepAlive failed: Unavailable: shutting down".into(), lost_at);
        state.lost("cannot connect to the directory".into(), lost_at + Duration::from_secs(3));
        assert_eq!(state.view(now, wall), SessionView { up: false, since: Some(lost_at) });
        assert_eq!(state.last_error.as_deref(), Some("cannot connect to the directory"));
        assert_eq!(state.answered_until, None);
        let mut first = SessionState::default();
        assert_eq!(first.view(now, wall), SessionView { up: false, since: None }, "nothing tried yet");
        first.lost("refused".into(), lost_at);
        assert_eq!(first.view(now, wall).since, Some(lost_at), "the first attempt failed then");
    }
}
