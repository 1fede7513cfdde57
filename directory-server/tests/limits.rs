//! Abuse limits on a real server: loopback is not exempt here, and each client connects from
//! its own loopback address (127.0.0.x), so each is its own IP to the directory. A client over
//! a limit is answered RESOURCE_EXHAUSTED with a message naming the limit, while a client at
//! another address is served as usual.

mod ops_support;

use ops_support::*;
use quaver_directory::ops::LimitsConfig;
use quaver_shared::announce_proof;
use quaver_shared::directory::v1::{HeartbeatRequest, StatsRequest};
use tonic::Code;

fn strict(limits: LimitsConfig) -> LimitsConfig {
    LimitsConfig { exempt_loopback: false, ..limits }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ip_over_its_request_rate_is_refused_and_others_are_served() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let limits =
        strict(LimitsConfig { ip_requests_per_second: 1, ip_request_burst: 3, ..Default::default() });
    let server = start(quaver_directory::Config { limits, ..config(data.path()) }).await?;
    let mut noisy = client_from(&server, [127, 0, 0, 1]).await?;
    for _ in 0..3 {
        noisy.stats(StatsRequest {}).await?;
    }
    let refused = noisy.stats(StatsRequest {}).await.err().ok_or_else(|| anyhow::anyhow!("not limited"))?;
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(refused.message().contains("too many requests from 127.0.0.1"), "{}", refused.message());

    let mut quiet = client_from(&server, [127, 0, 0, 2]).await?;
    quiet.stats(StatsRequest {}).await?;
    let burst_of_another_client = quiet.stats(StatsRequest {}).await;
    assert!(burst_of_another_client.is_ok(), "the other client has its own budget");
    server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_per_ip_and_per_peer_rates_are_limited() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let limits = strict(LimitsConfig {
        max_peers_per_ip: 2,
        peer_requests_per_second: 1,
        peer_request_burst: 2,
        ..Default::default()
    });
    let server = start(quaver_directory::Config { limits, ..config(data.path()) }).await?;
    let mut crowded = client_from(&server, [127, 0, 0, 3]).await?;
    let peers = [peer_at([127, 0, 0, 3])?, peer_at([127, 0, 0, 3])?, peer_at([127, 0, 0, 3])?];
    let first =
        announce_proof::announce(&mut crowded, &peers[0].0, announce_request(&peers[0].0, &peers[0].1)?)
            .await?
            .into_inner();
    announce_proof::announce(&mut crowded, &peers[1].0, announce_request(&peers[1].0, &peers[1].1)?).await?;
    let refused =
        announce_proof::announce(&mut crowded, &peers[2].0, announce_request(&peers[2].0, &peers[2].1)?)
            .await
            .err()
            .ok_or_else(|| anyhow::anyhow!("a third peer from one IP was let in"))?;
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(refused.message().contains("the limit is 2 per IP address"), "{}", refused.message());

    // Another address is served, and a peer already online may announce again.
    let mut other = client_from(&server, [127, 0, 0, 4]).await?;
    let (key, endpoint) = peer_at([127, 0, 0, 4])?;
    assert!(
        announce_proof::announce(&mut other, &key, announce_request(&key, &endpoint)?)
            .await?
            .into_inner()
            .reachable
    );

    // Per-peer rate: the first peer's session burns its burst of 2 (its Announce counted
    // against its peer id, not its token) and is then refused; the other peer is not.
    let beat = |token: &str| HeartbeatRequest { session_token: token.to_string(), free_upload_slots: 1 };
    crowded.heartbeat(beat(&first.session_token)).await?;
    crowded.heartbeat(beat(&first.session_token)).await?;
    let refused = crowded.heartbeat(beat(&first.session_token)).await.err();
    let refused = refused.ok_or_else(|| anyhow::anyhow!("the peer's rate was not limited"))?;
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(refused.message().contains("too many requests from this peer"), "{}", refused.message());
    other.stats(StatsRequest {}).await?;
    server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_ip_are_limited_in_the_accept_path() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let limits = strict(LimitsConfig { max_connections_per_ip: 1, ..Default::default() });
    let server = start(quaver_directory::Config { limits, ..config(data.path()) }).await?;
    let mut first = client_from(&server, [127, 0, 0, 5]).await?;
    first.stats(StatsRequest {}).await?;
    // The second connection from the same address is closed before HTTP/2 starts.
    let second = async {
        client_from(&server, [127, 0, 0, 5]).await?.stats(StatsRequest {}).await.map_err(anyhow::Error::from)
    };
    assert!(second.await.is_err(), "a second connection from one IP was served");
    client_from(&server, [127, 0, 0, 6]).await?.stats(StatsRequest {}).await?;
    first.stats(StatsRequest {}).await?;
    server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_is_exempt_by_default() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let limits = LimitsConfig { ip_requests_per_second: 1, ip_request_burst: 1, ..Default::default() };
    let server = start(quaver_directory::Config { limits, ..config(data.path()) }).await?;
    let mut c = client_from(&server, [127, 0, 0, 1]).await?;
    for _ in 0..20 {
        c.stats(StatsRequest {}).await?;
    }
    server.shutdown().await?;
    Ok(())
}
