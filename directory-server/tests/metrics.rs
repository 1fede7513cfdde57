//! The `/metrics` endpoint of a real server, scraped over HTTP and parsed: request counters
//! and histograms move by exactly the calls made, per method and status code; state gauges
//! follow the directory; rejections by a limit are counted; anything but `GET /metrics` is 404.

mod ops_support;

use std::time::Duration;

use ops_support::*;
use quaver_directory::ops::LimitsConfig;
use quaver_shared::ContentId;
use quaver_shared::announce_proof;
use quaver_shared::directory::v1::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const STATS_OK: &str =
    r#"quaver_directory_grpc_requests_total{code="OK",method="quaver.directory.v1.Directory/Stats"}"#;
const SEARCH_BAD: &str = r#"quaver_directory_grpc_requests_total{code="INVALID_ARGUMENT",method="quaver.directory.v1.Directory/Search"}"#;
const STATS_LIMITED: &str = r#"quaver_directory_grpc_requests_total{code="RESOURCE_EXHAUSTED",method="quaver.directory.v1.Directory/Stats"}"#;
const STATS_SECONDS: &str = r#"quaver_directory_grpc_request_duration_seconds_count{code="OK",method="quaver.directory.v1.Directory/Stats"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_and_gauges_move_by_the_calls_made() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let limits = LimitsConfig {
        exempt_loopback: false,
        ip_requests_per_second: 1,
        ip_request_burst: 7,
        ..Default::default()
    };
    let server = start(quaver_directory::Config {
        metrics_listen: Some("127.0.0.1:0".parse()?),
        limits,
        ..config(data.path())
    })
    .await?;
    let addr = server.metrics_addr.ok_or_else(|| anyhow::anyhow!("no metrics address"))?;
    let before = scrape(addr).await?;
    assert_eq!(sample(&before, "quaver_directory_online_peers"), 0.0);

    let mut c = client_from(&server, [127, 0, 0, 1]).await?;
    for _ in 0..3 {
        c.stats(StatsRequest {}).await?;
    }
    let bad = c.search(SearchRequest { query: String::new(), ..Default::default() }).await;
    assert_eq!(bad.map(|_| ()).map_err(|s| s.code()), Err(tonic::Code::InvalidArgument));
    let (key, endpoint) = peer_at([127, 0, 0, 1])?;
    let token = announce_proof::announce(&mut c, &key, announce_request(&key, &endpoint)?)
        .await?
        .into_inner()
        .session_token;
    let file = SharedFile {
        info: Some(FileInfo {
            content_id: ContentId::of_bytes(b"metrics test").to_vec(),
            size: 10,
            file_name: "晴天.mp3".into(),
            title: "晴天".into(),
            ..Default::default()
        }),
        complete: true,
    };
    c.publish(PublishRequest { session_token: token, reset: true, added: vec![file], removed: vec![] })
        .await?;
    // That was 7 calls (an Announce is two: Challenge and Announce), the whole burst: the next
    // one is refused.
    let limited = c.stats(StatsRequest {}).await.err().map(|s| s.code());
    assert_eq!(limited, Some(tonic::Code::ResourceExhausted));

    // The index commits within a few rounds of 20 ms.
    let mut after = scrape(addr).await?;
    for _ in 0..100 {
        if sample(&after, "quaver_directory_index_documents") >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        after = scrape(addr).await?;
    }
    let moved = |key: &str| sample(&after, key) - sample(&before, key);
    assert_eq!(moved(STATS_OK), 3.0);
    assert_eq!(moved(STATS_SECONDS), 3.0, "every answered call lands in the histogram");
    assert_eq!(moved(SEARCH_BAD), 1.0);
    assert_eq!(moved(STATS_LIMITED), 1.0);
    assert_eq!(moved(r#"quaver_directory_rate_limited_requests_total{limit="ip_rate"}"#), 1.0);
    assert_eq!(moved(r#"quaver_directory_connect_back_checks_total{result="reachable"}"#), 1.0);
    assert_eq!(sample(&after, "quaver_directory_online_peers"), 1.0);
    assert_eq!(sample(&after, "quaver_directory_files"), 1.0);
    assert_eq!(sample(&after, "quaver_directory_sources"), 1.0);
    assert_eq!(sample(&after, "quaver_directory_index_documents"), 1.0);
    assert!(sample(&after, "quaver_directory_indexed_documents_total") >= 1.0);
    assert!(sample(&after, "quaver_directory_index_commit_duration_seconds_count") >= 1.0);
    assert!(sample(&after, "quaver_directory_open_connections") >= 1.0);
    assert!(after.contains_key("quaver_directory_lease_expiries_total"));
    assert!(after.contains_key("quaver_directory_index_size_bytes"));

    // Only GET /metrics is served.
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(b"GET /other HTTP/1.0\r\n\r\n").await?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).await?;
    assert!(answer.starts_with("HTTP/1.0 404") || answer.starts_with("HTTP/1.1 404"), "{answer}");
    server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_expiries_are_counted() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let server = start(quaver_directory::Config {
        metrics_listen: Some("127.0.0.1:0".parse()?),
        lease_seconds: 1,
        heartbeat_seconds: 0,
        ..config(data.path())
    })
    .await;
    // heartbeat_seconds 0 is invalid: the config is checked before anything binds.
    assert!(server.is_err());
    let server = start(quaver_directory::Config {
        metrics_listen: Some("127.0.0.1:0".parse()?),
        lease_seconds: 2,
        heartbeat_seconds: 1,
        ..config(data.path())
    })
    .await?;
    let addr = server.metrics_addr.ok_or_else(|| anyhow::anyhow!("no metrics address"))?;
    let mut c = client_from(&server, [127, 0, 0, 1]).await?;
    let (key, endpoint) = peer_at([127, 0, 0, 1])?;
    announce_proof::announce(&mut c, &key, announce_request(&key, &endpoint)?).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = scrape(addr).await?;
        if sample(&now, "quaver_directory_lease_expiries_total") == 1.0 {
            assert_eq!(sample(&now, "quaver_directory_online_peers"), 0.0);
            break;
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "the lease expiry was never counted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.shutdown().await?;
    Ok(())
}
