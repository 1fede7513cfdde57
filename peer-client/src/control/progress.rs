//! A `Get` stream's messages: a download's state, as the node publishes it on its `watch`
//! channel, turned into paced `GetProgress` messages and one final answer.
//!
//! Progress is paced (at most about one message per [`PROGRESS_EVERY`] / 2, since a download
//! changes its state once per block, thousands of times a second), but the outcome is not: the
//! moment the download ends, the pause is cut short and the answer goes out. A `quaver get`
//! returns when the file is ready, not up to a pause later (it used to wait out the pause: 50 ms
//! on average, a seventieth of a 256 MiB download at 80 MB/s).

use std::time::Duration;

use quaver_shared::ContentId;
use tokio::sync::mpsc;
use tonic::Status;

use super::pb::{GetProgress, SourceShare};
use crate::node::{DownloadState, Failure, FailureKind, Subscription};

/// How often a `Get` stream reports progress while the download runs (at most, and at least
/// when nothing changes).
const PROGRESS_EVERY: Duration = Duration::from_millis(200);

/// Sends `sub`'s state to `tx` until the download ends (its outcome is the last message) or the
/// client goes away (the download goes on in the node).
pub async fn forward(id: ContentId, mut sub: Subscription, tx: mpsc::Sender<Result<GetProgress, Status>>) {
    loop {
        let state = sub.borrow_and_update().clone();
        let msg = match message(&id, state) {
            Ok(msg) => msg,
            Err(failed) => {
                let _ = tx.send(Err(failed)).await;
                return;
            }
        };
        let done = msg.done;
        if tx.send(Ok(msg)).await.is_err() || done {
            return;
        }
        let changed = tokio::time::timeout(PROGRESS_EVERY, sub.changed()).await;
        if let Ok(Err(_)) = changed {
            let _ = tx.send(Err(Status::aborted("the download was stopped"))).await;
            return;
        }
        // Pace the progress, not the end: the pause ends early when an outcome arrives. A
        // closed channel ends it too, and `changed` above reports that on the next round.
        let ended = sub.wait_for(|s| s.outcome.is_some());
        let _ = tokio::time::timeout(PROGRESS_EVERY / 2, ended).await;
    }
}

/// One message for `state`; a failed download is the stream's error.
fn message(id: &ContentId, state: DownloadState) -> Result<GetProgress, Status> {
    let mut msg = GetProgress {
        content_id: id.to_vec(),
        name: state.name,
        size: state.progress.size,
        verified_bytes: state.progress.verified_bytes,
        fetched_bytes: state.progress.fetched_bytes,
        active_sources: u32::try_from(state.progress.active_sources).unwrap_or(u32::MAX),
        waiting_for_sources: state.progress.waiting_until.is_some(),
        gives_up_in_secs: gives_up_in_secs(state.progress.waiting_until),
        ..GetProgress::default()
    };
    match state.outcome {
        None => {}
        Some(Ok(done)) => {
            msg.done = true;
            msg.path = done.path.display().to_string();
            msg.per_source = done
                .per_source
                .iter()
                .map(|s| SourceShare {
                    peer_id: s.peer.to_hex(),
                    bytes: s.bytes,
                    path: s.path.as_str().into(),
                    connect_ms: u32::try_from(s.connect_time.as_millis()).unwrap_or(u32::MAX),
                })
                .collect();
            msg.banned = done.banned.iter().map(|p| p.to_hex()).collect();
        }
        Some(Err(e)) => return Err(failure_status(e)),
    }
    Ok(msg)
}

/// Seconds left until a waiting download gives up (0 when it is not waiting).
pub fn gives_up_in_secs(waiting_until: Option<std::time::Instant>) -> u32 {
    let left =
        waiting_until.map_or(Duration::ZERO, |t| t.saturating_duration_since(std::time::Instant::now()));
    u32::try_from(left.as_secs()).unwrap_or(u32::MAX)
}

/// The status a failed download's `Get` ends with (`proto/control.proto` lists them).
fn failure_status(failure: Failure) -> Status {
    match failure.kind {
        FailureKind::NoSources => Status::deadline_exceeded(failure.message),
        FailureKind::DiskFull => Status::resource_exhausted(failure.message),
        FailureKind::Cancelled => Status::cancelled(failure.message),
        FailureKind::Other => Status::aborted(failure.message),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use tokio::sync::watch;
    use tokio::time::Instant;

    use super::*;
    use crate::fetch::download::DownloadProgress;
    use crate::node::Finished;

    fn running(verified_bytes: u64) -> DownloadState {
        DownloadState {
            progress: DownloadProgress { size: 100, verified_bytes, ..DownloadProgress::default() },
            ..DownloadState::default()
        }
    }

    fn finished() -> DownloadState {
        let done = Finished {
            path: PathBuf::from("/music/song.flac"),
            fetched_bytes: 100,
            per_source: Vec::new(),
            banned: Vec::new(),
        };
        DownloadState { outcome: Some(Ok(done)), ..running(100) }
    }

    type Messages = mpsc::Receiver<Result<GetProgress, Status>>;

    /// A `forward` task over a download that has verified nothing yet, past its first message
    /// (which every stream starts with): the download's state sender and the stream.
    async fn started() -> (watch::Sender<DownloadState>, Messages) {
        let (state, sub) = watch::channel(running(0));
        let (tx, mut rx) = mpsc::channel(64);
        tokio::spawn(forward(ContentId::of_bytes(b"x"), sub, tx));
        let first = rx.recv().await.unwrap().unwrap();
        assert_eq!((first.verified_bytes, first.done), (0, false));
        (state, rx)
    }

    /// The clock is paused: time moves only while every task waits, so "when" a message came is
    /// exact, not a measurement.
    #[tokio::test(start_paused = true)]
    async fn the_outcome_cuts_the_pacing_pause_short() {
        let (state, mut rx) = started().await;

        // A progress change starts a pause; the download ends 10 ms into it.
        let start = Instant::now();
        state.send_replace(running(50));
        tokio::time::sleep(Duration::from_millis(10)).await;
        state.send_replace(finished());
        let last = rx.recv().await.unwrap().unwrap();
        assert!(last.done, "{last:?}");
        assert_eq!(last.path, "/music/song.flac");
        assert_eq!(start.elapsed(), Duration::from_millis(10), "the outcome waited for the pause");
        assert!(rx.recv().await.is_none(), "the outcome is the last message");
    }

    #[tokio::test(start_paused = true)]
    async fn progress_is_paced() {
        let (state, mut rx) = started().await;
        // A change every millisecond for 150 ms: one message (at 100 ms, when the pause after
        // the first change ends), not one per change.
        for n in 1..=150 {
            state.send_replace(running(n));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let mut messages = 0;
        while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::ZERO, rx.recv()).await {
            messages += 1;
        }
        assert_eq!(messages, 1, "{messages} messages for 150 changes in 150 ms");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_download_ends_the_stream_with_its_error() {
        let (state, mut rx) = started().await;
        state.send_replace(DownloadState { outcome: Some(Err(Failure::other("bad data"))), ..running(0) });
        let status = rx.recv().await.unwrap().unwrap_err();
        assert_eq!(status.code(), tonic::Code::Aborted);
        assert_eq!(status.message(), "bad data");
        assert!(rx.recv().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn each_kind_of_failure_has_its_own_status() {
        for (kind, code) in [
            (FailureKind::NoSources, tonic::Code::DeadlineExceeded),
            (FailureKind::DiskFull, tonic::Code::ResourceExhausted),
            (FailureKind::Cancelled, tonic::Code::Cancelled),
        ] {
            let (state, mut rx) = started().await;
            let failure = Failure { kind, message: "why".into() };
            state.send_replace(DownloadState { outcome: Some(Err(failure)), ..running(0) });
            assert_eq!(rx.recv().await.unwrap().unwrap_err().code(), code, "{kind:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_download_says_so_and_how_long_it_will_wait() {
        let (state, mut rx) = started().await;
        let until = std::time::Instant::now() + Duration::from_secs(90);
        let mut waiting = running(0);
        waiting.progress.waiting_until = Some(until);
        state.send_replace(waiting);
        let msg = rx.recv().await.unwrap().unwrap();
        assert!(msg.waiting_for_sources);
        assert!((88..=90).contains(&msg.gives_up_in_secs), "{}", msg.gives_up_in_secs);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_download_is_reported_as_stopped() {
        let (state, mut rx) = started().await;
        drop(state);
        let status = rx.recv().await.unwrap().unwrap_err();
        assert_eq!(status.message(), "the download was stopped");
    }
}
