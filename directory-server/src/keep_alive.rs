//! The KeepAlive stream: a peer's beats, answered one by one on one long-lived gRPC stream.
//!
//! Why a stream: a unary `Heartbeat` costs the directory a whole HTTP/2 call per beat (request
//! headers and their HPACK work, a new stream and a task for it, the request layers), about ten
//! times the work of renewing the lease itself. On an open stream a beat is one small DATA frame
//! each way. etcd renews its leases the same way (`LeaseKeepAlive`).
//!
//! Owns: the shape of the answer stream (one answer per beat, in order, ending after the first
//! failed beat with that failure, or with UNAVAILABLE once the server stops). The beat itself
//! (limits, lease renewal, metrics) is the caller's function.
//!
//! Why the stop: a graceful stop lets every open HTTP/2 stream finish, and a peer's stream only
//! finishes when the peer goes away. Ending the streams ourselves is what lets the server stop;
//! the peers beat again after announcing to the next server.
//!
//! Must never: buffer beats or answer out of order. It holds no beat: it polls the next one only
//! when tonic asks for the next answer, so a peer that sends faster than it reads is slowed by
//! HTTP/2 flow control, not queued here.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use quaver_shared::directory::v1::{HeartbeatRequest, HeartbeatResponse};
use tokio_stream::Stream;
use tonic::Status;

/// What answers one beat.
pub type BeatFn = Box<dyn FnMut(HeartbeatRequest) -> Result<HeartbeatResponse, Status> + Send>;

/// Completes when the server begins to stop.
pub type Stopping = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The answers to the beats of `S`: `beat(request)` for each, until the first error (the peer's
/// stream failing, or `beat` refusing), which is the last item; or until `stopping` completes,
/// which ends them with UNAVAILABLE even while the peer is silent.
pub struct Answers<S> {
    beats: S,
    beat: BeatFn,
    stopping: Stopping,
    ended: bool,
}

impl<S> Answers<S> {
    pub fn new(beats: S, beat: BeatFn, stopping: Stopping) -> Self {
        Self { beats, beat, stopping, ended: false }
    }
}

impl<S> Stream for Answers<S>
where
    S: Stream<Item = Result<HeartbeatRequest, Status>> + Unpin,
{
    type Item = Result<HeartbeatResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        if self.stopping.as_mut().poll(cx).is_ready() {
            self.ended = true;
            return Poll::Ready(Some(Err(Status::unavailable(
                "the directory is stopping; announce again once it is back",
            ))));
        }
        let Some(next) = ready!(Pin::new(&mut self.beats).poll_next(cx)) else {
            self.ended = true;
            return Poll::Ready(None);
        };
        let answer = next.and_then(|request| (self.beat)(request));
        self.ended = answer.is_err();
        Poll::Ready(Some(answer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt;

    fn beat(token: &str) -> Result<HeartbeatRequest, Status> {
        Ok(HeartbeatRequest { session_token: token.into(), free_upload_slots: 1 })
    }

    fn running() -> Stopping {
        Box::pin(std::future::pending())
    }

    /// Answers `lease_seconds = 7` to the token "ok", UNAUTHENTICATED to anything else.
    fn answer() -> BeatFn {
        Box::new(|r: HeartbeatRequest| match r.session_token.as_str() {
            "ok" => Ok(HeartbeatResponse { lease_seconds: 7, ..Default::default() }),
            _ => Err(Status::unauthenticated("unknown token")),
        })
    }

    #[tokio::test]
    async fn answers_every_beat_in_order_and_ends_with_the_peer() {
        let answers: Vec<_> =
            Answers::new(tokio_stream::iter(vec![beat("ok"), beat("ok"), beat("ok")]), answer(), running())
                .collect()
                .await;
        assert_eq!(answers.len(), 3);
        assert!(answers.iter().all(|a| a.as_ref().is_ok_and(|r| r.lease_seconds == 7)));
    }

    #[tokio::test]
    async fn the_first_refused_beat_is_the_last_answer() {
        let beats = vec![beat("ok"), beat("stale"), beat("ok")];
        let answers: Vec<_> = Answers::new(tokio_stream::iter(beats), answer(), running()).collect().await;
        assert_eq!(answers.len(), 2, "nothing is answered after a refusal");
        assert!(answers[0].is_ok());
        assert_eq!(answers[1].as_ref().map_err(Status::code).unwrap_err(), tonic::Code::Unauthenticated);
    }

    #[tokio::test]
    async fn a_failing_peer_stream_ends_the_answers_with_its_error() {
        let beats = vec![beat("ok"), Err(Status::invalid_argument("bad frame")), beat("ok")];
        let answers: Vec<_> = Answers::new(tokio_stream::iter(beats), answer(), running()).collect().await;
        assert_eq!(answers.len(), 2);
        assert_eq!(answers[1].as_ref().map_err(Status::code).unwrap_err(), tonic::Code::InvalidArgument);
    }

    #[tokio::test]
    async fn a_stop_ends_the_answers_of_a_silent_peer_with_unavailable() {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let stopping: Stopping = Box::pin(async move {
            let _ = stopped.await;
        });
        let mut answers = Answers::new(tokio_stream::pending(), answer(), stopping);
        let silent = tokio::time::timeout(std::time::Duration::from_millis(50), answers.next()).await;
        assert!(silent.is_err(), "nothing to answer while the peer is silent");
        let _ = stop.send(());
        let last = answers.next().await.map(|a| a.map_err(|s| s.code()));
        assert_eq!(last.map(|a| a.unwrap_err()), Some(tonic::Code::Unavailable));
        assert!(answers.next().await.is_none());
    }
}
