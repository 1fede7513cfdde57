//! KeepAlive on a real server over loopback: beats on one open stream renew a session's lease
//! past its length, each beat is answered in order, a failing beat ends the stream with its
//! status, an open stream holds no place among its IP's requests in progress while each beat
//! counts against the peer's rate, and open streams do not keep a stopping server up.

mod ops_support;

use std::time::Duration;

use ops_support::*;
use quaver_directory::ops::LimitsConfig;
use quaver_shared::announce_proof;
use quaver_shared::directory::v1::{HeartbeatRequest, HeartbeatResponse, StatsRequest};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Streaming};

/// An open KeepAlive stream: beats go into `outbox`, answers come out of `answers`.
struct Stream {
    outbox: mpsc::Sender<HeartbeatRequest>,
    answers: Streaming<HeartbeatResponse>,
}

async fn open(client: &mut Client) -> anyhow::Result<Stream> {
    let (outbox, requests) = mpsc::channel(4);
    let answers = client.keep_alive(ReceiverStream::new(requests)).await?.into_inner();
    Ok(Stream { outbox, answers })
}

impl Stream {
    /// Sends one beat for `token` and returns its answer (or the status that ended the stream).
    async fn beat(&mut self, token: &str) -> anyhow::Result<Result<HeartbeatResponse, tonic::Status>> {
        let request = HeartbeatRequest { session_token: token.to_string(), free_upload_slots: 2 };
        self.outbox.send(request).await?;
        let answer = tokio::time::timeout(Duration::from_secs(10), self.answers.message()).await?;
        Ok(answer.and_then(|a| a.ok_or_else(|| tonic::Status::internal("the stream ended without a status"))))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beats_on_one_stream_keep_a_peer_online_past_its_lease() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let config = quaver_directory::Config {
        lease_seconds: 2,
        heartbeat_seconds: 1,
        metrics_listen: Some("127.0.0.1:0".parse()?),
        ..config(data.path())
    };
    let server = start(config).await?;
    let mut client = client_from(&server, [127, 0, 0, 1]).await?;
    let (key, endpoint) = peer_at([127, 0, 0, 1])?;
    let session =
        announce_proof::announce(&mut client, &key, announce_request(&key, &endpoint)?).await?.into_inner();
    assert!(session.reachable);

    let mut stream = open(&mut client).await?;
    // Beats for twice the lease: without them the lease would have run out.
    for _ in 0..8 {
        let answer = stream.beat(&session.session_token).await??;
        assert_eq!(answer.lease_seconds, 2);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let stats = client.stats(StatsRequest {}).await?.into_inner();
    assert_eq!(stats.online_peers, 1, "the beats renewed the lease");

    // A token the directory does not know ends the stream with UNAUTHENTICATED.
    let refused = stream.beat("not a session").await?.err().ok_or_else(|| anyhow::anyhow!("answered"))?;
    assert_eq!(refused.code(), Code::Unauthenticated);
    let after = tokio::time::timeout(Duration::from_secs(10), stream.answers.message()).await?;
    assert!(matches!(after, Ok(None) | Err(_)), "nothing follows the failed beat");

    let addr = server.metrics_addr.ok_or_else(|| anyhow::anyhow!("no metrics address"))?;
    let samples = scrape(addr).await?;
    assert_eq!(sample(&samples, "quaver_directory_keep_alive_beats_total{result=\"OK\"}"), 8.0);
    assert_eq!(sample(&samples, "quaver_directory_keep_alive_beats_total{result=\"UNAUTHENTICATED\"}"), 1.0);
    server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_stream_holds_no_request_slot_and_beats_count_against_the_peer_rate() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let limits = LimitsConfig {
        exempt_loopback: false,
        ip_concurrent_requests: 1,
        peer_requests_per_second: 1,
        peer_request_burst: 3,
        ..Default::default()
    };
    let server = start(quaver_directory::Config { limits, ..config(data.path()) }).await?;
    let mut client = client_from(&server, [127, 0, 0, 7]).await?;
    let (key, endpoint) = peer_at([127, 0, 0, 7])?;
    let session =
        announce_proof::announce(&mut client, &key, announce_request(&key, &endpoint)?).await?.into_inner();

    let mut stream = open(&mut client).await?;
    stream.beat(&session.session_token).await??;
    // One request in progress is this IP's limit: a stream holding it would refuse this call.
    client.stats(StatsRequest {}).await?;

    // The per-peer burst is 3 (the Announce counted against the peer id, not the token).
    stream.beat(&session.session_token).await??;
    stream.beat(&session.session_token).await??;
    let refused = stream.beat(&session.session_token).await?.err();
    let refused = refused.ok_or_else(|| anyhow::anyhow!("the fourth beat in a burst of 3 was answered"))?;
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(refused.message().contains("too many requests from this peer"), "{}", refused.message());
    server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_stops_promptly_with_streams_open() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let server = start(config(data.path())).await?;
    let mut client = client_from(&server, [127, 0, 0, 1]).await?;
    let (key, endpoint) = peer_at([127, 0, 0, 1])?;
    let session =
        announce_proof::announce(&mut client, &key, announce_request(&key, &endpoint)?).await?.into_inner();
    let mut stream = open(&mut client).await?;
    stream.beat(&session.session_token).await??;
    // The peer keeps its stream open and idle, as a live peer between beats does: the server
    // ends it (a graceful stop would otherwise wait for it forever) and stops.
    tokio::time::timeout(Duration::from_secs(10), server.shutdown()).await??;
    let last = tokio::time::timeout(Duration::from_secs(10), stream.answers.message()).await?;
    assert_eq!(last.map_err(|s| s.code()).err(), Some(Code::Unavailable), "told why the stream ended");
    Ok(())
}
