//! Bad input over the wire: each malformed request gets its status code and a message that
//! says what was wrong, changes nothing, and the server answers normally afterwards.

use quaver_e2e::*;
use quaver_shared::directory::v1::*;
use tonic::Code;

fn expect_code<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: Code, needle: &str) {
    let status = r.expect_err("request should be refused");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(status.message().contains(needle), "message {:?} should mention {needle:?}", status.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_statuses_and_change_nothing() -> anyhow::Result<()> {
    let dir = TestDirectory::start(30).await?;
    let mut c = dir.client().await?;
    let peer = TestPeer::start()?;
    let token = peer.announce(&mut c, vec![file(1, "晴天", "周杰伦")]).await?;
    eventually(std::time::Duration::from_secs(20), || {
        let mut c = c.clone();
        async move { Ok((!c.search(search_request("晴天")).await?.into_inner().hits.is_empty()).then_some(())) }
    })
    .await?;

    expect_code(c.search(search_request("")).await, Code::InvalidArgument, "query is empty");
    expect_code(c.search(search_request("   ")).await, Code::InvalidArgument, "query is empty");
    expect_code(c.search(search_request(&"晴".repeat(35_000))).await, Code::InvalidArgument, "limit is 256");
    let mut deep = search_request("晴天");
    deep.page_size = 1000;
    expect_code(c.search(deep).await, Code::InvalidArgument, "page_size");
    let mut kind = search_request("晴天");
    kind.filters = Some(SearchFilters { media_kind: 42, ..Default::default() });
    expect_code(c.search(kind).await, Code::InvalidArgument, "media_kind");

    // Queries that are odd but not wrong are searched as text, never an internal error.
    for q in ["\"unbalanced", "artist:", ":::", "((", "AND OR NOT", "晴天\"", "-"] {
        match c.search(search_request(q)).await {
            Ok(_) => {}
            Err(s) => assert_eq!(s.code(), Code::InvalidArgument, "{q:?}: {s:?}"),
        }
    }

    // A 10 MB file name: larger than any request the directory decodes.
    let mut huge = file(2, "big", "name");
    huge.info.as_mut().unwrap().file_name = "n".repeat(10 * 1024 * 1024);
    let r = c
        .publish(PublishRequest {
            session_token: token.clone(),
            reset: false,
            added: vec![huge],
            removed: vec![],
        })
        .await;
    expect_code(r, Code::OutOfRange, "too large");
    // A 2 KB title fits the transport but not the protocol's bound.
    let mut long = file(3, &"t".repeat(2048), "name");
    long.info.as_mut().unwrap().file_name = "long.mp3".into();
    let r = c
        .publish(PublishRequest {
            session_token: token.clone(),
            reset: false,
            added: vec![long],
            removed: vec![],
        })
        .await;
    expect_code(r, Code::InvalidArgument, "added[0].info.title is 2048 bytes");

    // Content ids of the wrong length, wherever they appear.
    expect_code(
        c.get_file(GetFileRequest { content_id: vec![1; 31] }).await,
        Code::InvalidArgument,
        "32 bytes",
    );
    expect_code(
        c.locate(LocateRequest { content_id: vec![1; 33], ..Default::default() }).await,
        Code::InvalidArgument,
        "32 bytes",
    );
    let mut bad_id = file(4, "x", "y");
    bad_id.info.as_mut().unwrap().content_id = vec![0; 16];
    let r = c
        .publish(PublishRequest {
            session_token: token.clone(),
            reset: false,
            added: vec![bad_id],
            removed: vec![],
        })
        .await;
    expect_code(r, Code::InvalidArgument, "added[0].info.content_id");
    expect_code(
        c.announce(AnnounceRequest { peer_id: vec![1; 8], quic_port: 1, ..Default::default() }).await,
        Code::InvalidArgument,
        "peer_id",
    );
    expect_code(
        c.announce(AnnounceRequest { peer_id: vec![1; 32], quic_port: 70_000, ..Default::default() }).await,
        Code::InvalidArgument,
        "quic_port",
    );

    // A batch over the limit.
    let batch: Vec<_> = (100..1101).map(|n| file(n, "song", "artist")).collect();
    let r = c
        .publish(PublishRequest { session_token: token.clone(), reset: false, added: batch, removed: vec![] })
        .await;
    expect_code(r, Code::InvalidArgument, "limit per request is 1000");

    // Unknown tokens.
    expect_code(
        c.heartbeat(HeartbeatRequest { session_token: "nope".into(), free_upload_slots: 0 }).await,
        Code::Unauthenticated,
        "announce again",
    );
    expect_code(
        c.withdraw(WithdrawRequest { session_token: "nope".into(), content_ids: vec![], go_offline: true })
            .await,
        Code::Unauthenticated,
        "announce again",
    );
    expect_code(c.get_file(GetFileRequest { content_id: cid(77).to_vec() }).await, Code::NotFound, "no file");

    // Nothing changed, and the server still answers.
    let stats = c.stats(StatsRequest {}).await?.into_inner();
    assert_eq!(stats.files, 1);
    assert_eq!(stats.sources, 1);
    let hits = c.search(search_request("晴天")).await?.into_inner().hits;
    assert_eq!(hits.len(), 1);
    c.heartbeat(HeartbeatRequest { session_token: token, free_upload_slots: 1 }).await?;

    // Health service says SERVING for the directory.
    let channel = tonic::transport::Endpoint::from_shared(dir.url())?.connect().await?;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest { service: "quaver.directory.v1.Directory".into() })
        .await?
        .into_inner();
    assert_eq!(status.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    dir.server.shutdown().await?;
    Ok(())
}
