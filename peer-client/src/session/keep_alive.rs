//! Beats over the directory's KeepAlive stream: opened as a session starts, one message each
//! way per beat, so a beat costs the directory a small frame instead of a whole call. A
//! directory without KeepAlive (UNIMPLEMENTED) gets unary `Heartbeat` calls for the rest of the
//! session.
//!
//! Any failure of the stream (a refused beat, a reset, a timeout, the directory closing it) is a
//! failed beat: the caller ends the session as it would after a failed `Heartbeat` call, and the
//! next session opens a new stream. Between beats the stream is watched ([`Beats::lost`]): the
//! directory sends nothing unasked, so anything it sends then (its end, an error, a reset
//! connection) means the session is gone, and the node knows it at once instead of at its next
//! beat.

use std::time::Duration;

use quaver_shared::directory::v1::{HeartbeatRequest, HeartbeatResponse};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use super::SessionError;
use super::worker::{Client, bounded};

const CALL: &str = "KeepAlive";

/// How this session's beats travel.
#[derive(Default)]
pub(super) enum Beats {
    /// No stream yet: the next beat opens one.
    #[default]
    NotOpen,
    Open {
        /// Beats to send; the stream's request side ends when this is dropped.
        outbox: mpsc::Sender<HeartbeatRequest>,
        /// Boxed: far larger than the other variants.
        answers: Box<Streaming<HeartbeatResponse>>,
    },
    /// The directory has no KeepAlive: one `Heartbeat` call per beat.
    Unary,
}

impl Beats {
    /// Opens the stream unless it is open or the directory has none, bounded by `timeout`.
    pub async fn open(&mut self, client: &mut Client, timeout: Duration) -> Result<(), SessionError> {
        if matches!(self, Beats::NotOpen) {
            *self = open(client, timeout).await?;
        }
        Ok(())
    }

    /// Completes when the open stream ends or fails between beats, with why; never while no
    /// stream is open. Cancel-safe (tonic's `Streaming::message` keeps its state in the
    /// stream), so it can be raced against the beat timer.
    pub async fn lost(&mut self) -> SessionError {
        let Beats::Open { answers, .. } = self else { return std::future::pending().await };
        let error = match answers.message().await {
            Ok(Some(_)) => SessionError::BadAnswer { call: CALL, what: "an answer to no beat" },
            Ok(None) => closed(),
            Err(status) => SessionError::Rpc { call: CALL, status },
        };
        *self = Beats::NotOpen;
        error
    }

    /// Sends one beat and waits for its answer, each step bounded by `timeout`.
    pub async fn beat(
        &mut self,
        client: &mut Client,
        request: HeartbeatRequest,
        timeout: Duration,
    ) -> Result<HeartbeatResponse, SessionError> {
        self.open(client, timeout).await?;
        let Beats::Open { outbox, answers } = self else {
            return bounded("Heartbeat", timeout, client.heartbeat(request)).await;
        };
        let exchange = async {
            outbox.send(request).await.map_err(|_| closed())?;
            match answers.message().await {
                Ok(Some(answer)) => Ok(answer),
                Ok(None) => Err(closed()),
                Err(status) => Err(SessionError::Rpc { call: CALL, status }),
            }
        };
        let answer = match tokio::time::timeout(timeout, exchange).await {
            Ok(answer) => answer,
            Err(_) => Err(SessionError::Timeout { call: CALL, after: timeout }),
        };
        if answer.is_err() {
            // A stream that failed once is not trusted with the next beat.
            *self = Beats::NotOpen;
        }
        answer
    }
}

/// Opens the stream, or settles on unary calls if the directory does not know KeepAlive.
async fn open(client: &mut Client, timeout: Duration) -> Result<Beats, SessionError> {
    // One beat in flight at a time: a capacity of one never holds a beat back.
    let (outbox, requests) = mpsc::channel(1);
    match bounded(CALL, timeout, client.keep_alive(ReceiverStream::new(requests))).await {
        Ok(answers) => Ok(Beats::Open { outbox, answers: Box::new(answers) }),
        Err(SessionError::Rpc { status, .. }) if status.code() == tonic::Code::Unimplemented => {
            tracing::info!("the directory has no KeepAlive stream; beating with Heartbeat calls");
            Ok(Beats::Unary)
        }
        Err(e) => Err(e),
    }
}

fn closed() -> SessionError {
    SessionError::BadAnswer { call: CALL, what: "the directory closed the stream" }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quaver_shared::directory::v1::directory_client::DirectoryClient;

    /// A real gRPC server on loopback that knows no method at all: every call, KeepAlive
    /// included, is answered UNIMPLEMENTED, as by a directory from before KeepAlive.
    async fn server_without_methods() -> anyhow::Result<Client> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let router = tonic::transport::Server::builder().add_routes(tonic::service::Routes::default());
        tokio::spawn(router.serve_with_incoming(incoming));
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?.connect().await?;
        Ok(DirectoryClient::new(channel))
    }

    #[tokio::test]
    async fn a_directory_without_keep_alive_gets_heartbeat_calls() -> anyhow::Result<()> {
        let mut client = server_without_methods().await?;
        let mut beats = Beats::default();
        let request = || HeartbeatRequest { session_token: "t".into(), free_upload_slots: 1 };
        let error = beats.beat(&mut client, request(), Duration::from_secs(10)).await.err();
        // The stream was refused, so the beat went out as a Heartbeat call (refused too here).
        assert!(
            matches!(&error, Some(SessionError::Rpc { call: "Heartbeat", status })
                if status.code() == tonic::Code::Unimplemented),
            "{error:?}"
        );
        assert!(matches!(beats, Beats::Unary), "the session stays on calls");
        Ok(())
    }
}
