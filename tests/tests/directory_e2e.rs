//! The directory end to end: a real server on an ephemeral loopback port, real gRPC clients
//! playing peers with live QUIC endpoints (the directory dials each one back on Announce), and a
//! short lease so expiry happens within the test.

use std::collections::BTreeSet;
use std::time::Duration;

use quaver_e2e::*;
use quaver_shared::directory::v1::*;
use quaver_shared::{NodeKey, PeerId, announce_proof};
use tonic::Code;

const WAIT: Duration = Duration::from_secs(20);

async fn located(client: &mut Client, n: u32, asker: Option<PeerId>) -> anyhow::Result<BTreeSet<PeerId>> {
    let resp = client
        .locate(LocateRequest {
            content_id: cid(n).to_vec(),
            max_sources: 0,
            peer_id: asker.map(|p| p.to_vec()).unwrap_or_default(),
        })
        .await?
        .into_inner();
    resp.sources.iter().map(|s| Ok(PeerId::from_slice(&s.peer_id)?)).collect()
}

/// The hit for file `n` in a search, if any.
async fn hit(client: &mut Client, query: SearchRequest, n: u32) -> anyhow::Result<Option<SearchHit>> {
    let resp = client.search(query).await?.into_inner();
    Ok(resp.hits.into_iter().find(|h| h.file.as_ref().is_some_and(|f| f.content_id == cid(n).to_vec())))
}

fn set(peers: &[PeerId]) -> BTreeSet<PeerId> {
    peers.iter().copied().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_peers_search_locate_expire_withdraw() -> anyhow::Result<()> {
    let dir = TestDirectory::start(2).await?;
    let mut c = dir.client().await?;
    let (peer1, peer2, peer3) = (TestPeer::start()?, TestPeer::start()?, TestPeer::start()?);
    let (p1, p2, p3) = (peer1.id(), peer2.id(), peer3.id());

    let mut nameless = file(5, "", "");
    if let Some(info) = nameless.info.as_mut() {
        info.file_name = "晴天 - 周杰伦.flac".into();
    }
    let t1 = peer1
        .announce(
            &mut c,
            vec![
                file(1, "晴天", "周杰伦"),
                file(2, "七里香", "周杰伦"),
                file(3, "Bohemian Rhapsody", "Queen"),
                nameless,
            ],
        )
        .await?;
    let t2 = peer2.announce(&mut c, vec![file(1, "晴天", "周杰伦"), file(4, "稻香", "周杰伦")]).await?;
    let t3 = peer3
        .announce(&mut c, vec![file(1, "晴天", "周杰伦"), file(3, "Bohemian Rhapsody", "Queen")])
        .await?;

    // The index commits in the background: wait until all five files are searchable, so that
    // what follows tests search, not commit timing.
    eventually(WAIT, || {
        let mut c = c.clone();
        async move { Ok((c.stats(StatsRequest {}).await?.into_inner().indexed_documents == 5).then_some(())) }
    })
    .await?;

    // Search: a Chinese title, an artist, an English word in any case, a file name with no tags.
    let sunny = eventually(WAIT, || {
        let mut c = c.clone();
        async move { hit(&mut c, search_request("晴天"), 1).await }
    })
    .await?;
    assert_eq!(sunny.online_sources, 3);
    assert_eq!(sunny.complete_sources, 3);
    assert!(hit(&mut c, search_request("晴天"), 5).await?.is_some(), "file name 晴天 - 周杰伦.flac");
    for n in [1, 2, 4] {
        assert!(hit(&mut c, search_request("周杰伦"), n).await?.is_some(), "artist search misses file {n}");
    }
    for q in ["bohemian", "BOHEMIAN", "Rhapsody"] {
        let h = hit(&mut c, search_request(q), 3).await?.unwrap_or_else(|| panic!("{q} finds nothing"));
        assert_eq!(h.online_sources, 2, "{q}");
    }
    let top = c.search(search_request("周杰伦 晴天")).await?.into_inner();
    assert_eq!(top.hits.first().and_then(|h| h.file.as_ref()).map(|f| f.title.as_str()), Some("晴天"));

    // Locate: exactly the online peers, the asker left out of its own answer, addresses real.
    assert_eq!(located(&mut c, 1, None).await?, set(&[p1, p2, p3]));
    assert_eq!(located(&mut c, 1, Some(p1)).await?, set(&[p2, p3]));
    assert_eq!(located(&mut c, 4, None).await?, set(&[p2]));
    let src =
        c.locate(LocateRequest { content_id: cid(4).to_vec(), ..Default::default() }).await?.into_inner();
    assert_eq!(src.sources[0].address, format!("127.0.0.1:{}", peer2.port()));

    // p1 and p2 beat, p3 falls silent: after the 2 s lease p3 is gone from Locate and counts.
    let beat_client = c.clone();
    let beat = move |token: String| {
        let mut c = beat_client.clone();
        async move {
            for _ in 0..20 {
                c.heartbeat(HeartbeatRequest { session_token: token.clone(), free_upload_slots: 2 }).await?;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            anyhow::Ok(())
        }
    };
    let beats =
        tokio::spawn(async move { tokio::try_join!(beat(t1.clone()), beat(t2.clone())).map(|_| (t1, t2)) });
    eventually(WAIT, || {
        let mut c = c.clone();
        async move {
            // Locate drops p3 the moment its lease runs out; the online counts follow within
            // one sweep of the expiry timer.
            let gone = located(&mut c, 1, None).await? == set(&[p1, p2]);
            let counted = hit(&mut c, search_request("晴天"), 1).await?.map(|h| h.online_sources);
            Ok((gone && counted == Some(2)).then_some(()))
        }
    })
    .await?;
    assert_eq!(hit(&mut c, search_request("bohemian"), 3).await?.map(|h| h.online_sources), Some(1));
    let expired = c.heartbeat(HeartbeatRequest { session_token: t3, free_upload_slots: 1 }).await;
    assert_eq!(expired.unwrap_err().code(), Code::Unauthenticated);
    let (t1, t2) = beats.await??;
    // The heartbeats kept p1 and p2 online through several lease lengths.
    assert_eq!(located(&mut c, 1, None).await?, set(&[p1, p2]));

    // A peer that comes back is online again without resending its list (same digest).
    let t3 = peer3
        .announce(&mut c, vec![file(1, "晴天", "周杰伦"), file(3, "Bohemian Rhapsody", "Queen")])
        .await?;
    assert_eq!(located(&mut c, 1, None).await?, set(&[p1, p2, p3]));

    // Withdraw one file, then go offline: both take effect at once.
    c.withdraw(WithdrawRequest { session_token: t2, content_ids: vec![cid(1).to_vec()], go_offline: false })
        .await?;
    assert_eq!(located(&mut c, 1, None).await?, set(&[p1, p3]));
    c.withdraw(WithdrawRequest { session_token: t1.clone(), content_ids: vec![], go_offline: true }).await?;
    assert_eq!(located(&mut c, 1, None).await?, set(&[p3]));
    assert!(hit(&mut c, search_request("七里香"), 2).await?.is_none(), "only p1 had it, and p1 left");
    let mut with_offline = search_request("七里香");
    with_offline.filters = Some(SearchFilters { min_online_sources: Some(0), ..Default::default() });
    assert!(hit(&mut c, with_offline, 2).await?.is_some(), "offline files are kept in the catalog");

    // Tokens: a withdrawn session's token and a made-up one are refused.
    for token in [t1, "bogus".to_string()] {
        let err =
            c.heartbeat(HeartbeatRequest { session_token: token, free_upload_slots: 0 }).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
    }
    let err = c
        .publish(PublishRequest {
            session_token: "bogus".into(),
            reset: false,
            added: vec![file(9, "x", "y")],
            removed: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(c.get_file(GetFileRequest { content_id: cid(9).to_vec() }).await.is_err(), "nothing was added");

    let stats = c.stats(StatsRequest {}).await?.into_inner();
    assert_eq!(stats.files, 5);
    drop(t3);
    dir.server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_peer_sends_only_the_difference() -> anyhow::Result<()> {
    let dir = TestDirectory::start(30).await?;
    let mut c = dir.client().await?;
    let peer = TestPeer::start()?;
    let files: Vec<_> = (0..2500).map(|n| file(n, &format!("song {n}"), "artist")).collect();
    let request = AnnounceRequest { quic_port: peer.port(), ..Default::default() };
    let token = announce_proof::announce(&mut c, &peer.key, request).await?.into_inner().session_token;
    for (i, batch) in files.chunks(1000).enumerate() {
        c.publish(PublishRequest {
            session_token: token.clone(),
            reset: i == 0,
            added: batch.to_vec(),
            removed: vec![],
        })
        .await?;
    }
    // Reconnect with one file removed and one added locally.
    let mut now: Vec<_> = files
        .iter()
        .skip(1)
        .map(|f| quaver_shared::ContentId::from_slice(&f.info.as_ref().unwrap().content_id).unwrap())
        .collect();
    now.push(cid(9999));
    let digest = quaver_shared::ShareDigest::of(now.iter());
    let request = AnnounceRequest {
        quic_port: peer.port(),
        share_digest: digest.as_bytes().to_vec(),
        share_count: now.len() as u64,
        ..Default::default()
    };
    let resp = announce_proof::announce(&mut c, &peer.key, request).await?.into_inner();
    assert_eq!(resp.known_count, 2500);
    assert_ne!(resp.known_digest, digest.as_bytes());
    let after = c
        .publish(PublishRequest {
            session_token: resp.session_token,
            reset: false,
            added: vec![file(9999, "new song", "artist")],
            removed: vec![cid(0).to_vec()],
        })
        .await?
        .into_inner();
    assert_eq!(after.known_digest, digest.as_bytes(), "two changes bring both sides into agreement");
    assert_eq!(after.known_count, 2500);
    dir.server.shutdown().await?;
    Ok(())
}

/// Search's and GetFile's online and complete source counts of file `n` (searched by `query`).
async fn counts(client: &mut Client, query: &str, n: u32) -> anyhow::Result<(u32, u32, u32, u32)> {
    let mut any = search_request(query);
    any.filters = Some(SearchFilters { min_online_sources: Some(0), ..Default::default() });
    let h = hit(client, any, n).await?.ok_or_else(|| anyhow::anyhow!("{query} does not find file {n}"))?;
    let f = client.get_file(GetFileRequest { content_id: cid(n).to_vec() }).await?.into_inner();
    Ok((h.online_sources, h.complete_sources, f.online_sources, f.complete_sources))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_peers_that_answer_the_connect_back_with_their_own_key_are_sources() -> anyhow::Result<()> {
    // A short check timeout: the peers with nothing listening wait it out on every Announce.
    let dir = TestDirectory::start_with_verify_timeout(30, 1500).await?;
    let mut c = dir.client().await?;
    let sunny = || file(1, "晴天", "周杰伦");

    let real = TestPeer::start()?;
    let r = announce_response(&mut c, &real.key, real.port(), vec![sunny()]).await?;
    assert!(r.reachable, "a peer serving its own key at its port passes");

    // (a) Nothing listens at the announced port. The session works and the share list is
    // stored (`announce_response` published it and checked the digest), but it is no source.
    let absent = NodeKey::generate()?;
    let port = dead_port()?;
    let r = announce_response(&mut c, &absent, port, vec![sunny()]).await?;
    assert!(!r.reachable, "nothing answers at 127.0.0.1:{port}");
    assert_eq!(r.observed_address, format!("127.0.0.1:{port}"));
    c.heartbeat(HeartbeatRequest { session_token: r.session_token, free_upload_slots: 1 }).await?;

    // (b) An impostor at the port: the announcer proves it holds its key, but what answers at
    // the port it names has another key. It shares 七里香, which nobody reachable has.
    let victim = NodeKey::generate()?;
    let impostor = TestPeer::start()?;
    let r = announce_response(&mut c, &victim, impostor.port(), vec![sunny(), file(2, "七里香", "周杰伦")])
        .await?;
    assert!(!r.reachable, "the endpoint at the port cannot prove it holds the announced key");
    let impostor_token = r.session_token;

    eventually(WAIT, || {
        let mut c = c.clone();
        async move { Ok((c.stats(StatsRequest {}).await?.into_inner().indexed_documents == 2).then_some(())) }
    })
    .await?;
    assert_eq!(located(&mut c, 1, None).await?, set(&[real.id()]));
    assert_eq!(located(&mut c, 2, None).await?, set(&[]));
    assert_eq!(counts(&mut c, "晴天", 1).await?, (1, 1, 1, 1), "only the real peer counts");
    assert!(hit(&mut c, search_request("七里香"), 2).await?.is_none(), "no online source by default");
    assert_eq!(counts(&mut c, "七里香", 2).await?, (0, 0, 0, 0), "but the catalog has it");
    let stats = c.stats(StatsRequest {}).await?.into_inner();
    assert_eq!((stats.online_peers, stats.sources), (3, 4), "sessions and share lists are kept");

    // An unreachable peer leaving takes nothing from the counts it never added to.
    c.withdraw(WithdrawRequest { session_token: impostor_token, content_ids: vec![], go_offline: true })
        .await?;
    assert_eq!(counts(&mut c, "晴天", 1).await?, (1, 1, 1, 1));

    // (c) The unreachable peer starts its endpoint and announces again: now it is a source,
    // with the share list it published while unreachable (nothing to send again).
    let endpoint = serve(&absent)?;
    let port = u32::from(endpoint.local_addr()?.port());
    let r = announce_response(&mut c, &absent, port, vec![sunny()]).await?;
    assert!(r.reachable);
    assert_eq!(r.known_count, 1, "the share list was stored while the peer was unreachable");
    assert_eq!(located(&mut c, 1, None).await?, set(&[real.id(), absent.peer_id()]));
    assert_eq!(counts(&mut c, "晴天", 1).await?, (2, 2, 2, 2));

    // A source that fails the check at a later Announce stops being one at once.
    endpoint.close(0u32.into(), b"gone");
    endpoint.wait_idle().await;
    drop(endpoint);
    let r = announce_response(&mut c, &absent, port, vec![sunny()]).await?;
    assert!(!r.reachable, "the endpoint is closed");
    assert_eq!(located(&mut c, 1, None).await?, set(&[real.id()]));
    assert_eq!(counts(&mut c, "晴天", 1).await?, (1, 1, 1, 1));

    dir.server.shutdown().await?;
    Ok(())
}
