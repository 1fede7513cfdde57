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

/// A query of one word of 40 letters or more is valid (the protocol bounds queries at 256
/// bytes), so it is searched, never refused, and finds the title that holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_word_of_forty_letters_or_more_is_searched() -> anyhow::Result<()> {
    let dir = TestDirectory::start(30).await?;
    let mut c = dir.client().await?;
    let peer = TestPeer::start()?;
    let forty = "Supercalifragilisticexpialidociousnesses"; // 40 letters
    let longer = "Pneumonoultramicroscopicsilicovolcanoconiosis"; // 45 letters
    let files = vec![file(1, forty, "Julie Andrews"), file(2, longer, "Chemistry Band")];
    peer.announce(&mut c, files).await?;
    for (word, title) in [(forty, forty), (longer, longer)] {
        let hits = eventually(std::time::Duration::from_secs(20), || {
            let mut c = c.clone();
            async move {
                let hits = c.search(search_request(word)).await?.into_inner().hits;
                Ok((!hits.is_empty()).then_some(hits))
            }
        })
        .await?;
        let titles: Vec<_> = hits.iter().filter_map(|h| h.file.as_ref()).map(|i| i.title.as_str()).collect();
        assert_eq!(titles, [title], "{word}");
    }
    // A long word no title holds: an empty page, not INVALID_ARGUMENT.
    let hits = c.search(search_request(&"x".repeat(255))).await?.into_inner().hits;
    assert!(hits.is_empty());
    dir.server.shutdown().await?;
    Ok(())
}

/// Sends `body` as the one message of a unary call to `path`, framed as gRPC but not encoded
/// by prost: whatever bytes the caller wants on the wire.
async fn raw_call(url: String, path: &'static str, body: Vec<u8>) -> Result<(), tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(url)
        .map_err(|e| tonic::Status::unknown(e.to_string()))?
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
    let mut answer = grpc.server_streaming(tonic::Request::new(body), path, RawCodec).await?.into_inner();
    while answer.message().await?.is_some() {}
    Ok(())
}

/// Encodes a `Vec<u8>` as itself; decodes any answer to `()` (the tests want the status).
#[derive(Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = ();
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, buf: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(buf, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = ();
    type Error = tonic::Status;

    fn decode(&mut self, buf: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<()>, tonic::Status> {
        let rest = bytes::Buf::remaining(buf);
        bytes::Buf::advance(buf, rest);
        Ok(Some(()))
    }
}

/// Bytes that are no protobuf message (field 1 with wire type 7, which does not exist) get
/// INVALID_ARGUMENT from the directory and admin services alike, as the protocol says for a bad
/// request, and the server answers normally afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_protobuf_is_invalid_argument() -> anyhow::Result<()> {
    let dir = TestDirectory::start(30).await?;
    let garbage = vec![0x0f, 0xff, 0xff, 0xff];
    for path in [
        "/quaver.directory.v1.Directory/Search",
        "/quaver.directory.v1.Directory/Announce",
        "/quaver.admin.v1.Admin/Backup",
    ] {
        let status = raw_call(dir.url(), path, garbage.clone()).await.expect_err("garbage must be refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{path}: {status:?}");
        assert!(status.message().contains("not valid protobuf"), "{path}: {status:?}");
    }
    // A length that runs past the end of the message: the same.
    let status = raw_call(dir.url(), "/quaver.directory.v1.Directory/Search", vec![0x0a, 0x10, b'a'])
        .await
        .expect_err("a truncated field must be refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let mut c = dir.client().await?;
    c.stats(StatsRequest {}).await?;
    dir.server.shutdown().await?;
    Ok(())
}
