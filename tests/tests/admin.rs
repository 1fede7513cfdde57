//! The operator calls over the real admin API of a running directory: the online peers, bans
//! of a PeerId and of an IP range (refused Announces, dropped sources, kept across a restart,
//! lifted), and removing a file from the catalog and search.

use std::time::Duration;

use quaver_directory::admin_calls;
use quaver_directory::bans::BanTarget;
use quaver_e2e::*;
use quaver_shared::directory::v1::*;
use quaver_shared::{PeerId, announce_proof};
use tonic::Code;

const WAIT: Duration = Duration::from_secs(20);

async fn located(c: &mut Client, n: u32) -> anyhow::Result<Vec<PeerId>> {
    let answer = c.locate(LocateRequest { content_id: cid(n).to_vec(), ..Default::default() }).await?;
    answer.into_inner().sources.iter().map(|s| Ok(PeerId::from_slice(&s.peer_id)?)).collect()
}

/// The listed peers' ids.
async fn listed(dir: &TestDirectory) -> anyhow::Result<Vec<PeerId>> {
    let answer = admin_calls::list_peers(&dir.url(), None, 0).await?;
    answer.peers.iter().map(|p| Ok(PeerId::from_slice(&p.peer_id)?)).collect()
}

/// Announces `peer` again (its own signed Announce) and returns the refusal.
async fn refused(c: &mut Client, peer: &TestPeer) -> anyhow::Result<tonic::Status> {
    let request = announce_request(peer.port(), &[]);
    match announce_proof::announce(c, &peer.key, request).await {
        Ok(_) => anyhow::bail!("a banned peer's Announce was accepted"),
        Err(status) => Ok(status),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_lists_each_online_peer_with_address_reachability_and_files() -> anyhow::Result<()> {
    let dir = TestDirectory::start(30).await?;
    let mut c = dir.client().await?;
    let peer = TestPeer::start()?;
    peer.announce(&mut c, vec![file(1, "晴天", "周杰伦"), file(2, "稻香", "周杰伦")]).await?;
    let answer = admin_calls::list_peers(&dir.url(), None, 0).await?;
    assert_eq!(answer.online, 1);
    let [listed] = answer.peers.as_slice() else { anyhow::bail!("{answer:?}") };
    assert_eq!(listed.peer_id, peer.id().to_vec());
    assert_eq!(listed.address, format!("127.0.0.1:{}", peer.port()));
    assert!(listed.reachable);
    assert_eq!((listed.files, listed.free_upload_slots), (2, 4));
    dir.server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_ban_drops_it_refuses_its_announce_survives_a_restart_and_can_be_lifted() -> anyhow::Result<()>
{
    let dir = TestDirectory::start(30).await?;
    let mut c = dir.client().await?;
    let (banned, other) = (TestPeer::start()?, TestPeer::start()?);
    let token = banned.announce(&mut c, vec![file(1, "晴天", "周杰伦")]).await?;
    other.announce(&mut c, vec![file(1, "晴天", "周杰伦")]).await?;
    assert_eq!(located(&mut c, 1).await?.len(), 2);

    let target = BanTarget::Peer(banned.id());
    let answer = admin_calls::ban(&dir.url(), None, &target, 3600, "spam".into()).await?;
    assert_eq!((answer.peers_dropped, answer.replaced), (1, false));
    // Offline at once: gone from Locate and the peer list, its token void.
    assert_eq!(located(&mut c, 1).await?, vec![other.id()]);
    assert_eq!(listed(&dir).await?, vec![other.id()]);
    let beat = c.heartbeat(HeartbeatRequest { session_token: token, free_upload_slots: 1 }).await;
    assert_eq!(beat.map(|_| ()).map_err(|s| s.code()), Err(Code::Unauthenticated));
    let status = refused(&mut c, &banned).await?;
    assert_eq!(status.code(), Code::PermissionDenied);
    let message = status.message();
    assert!(
        message.contains(&banned.id().to_string()) && message.contains("banned") && message.contains("until"),
        "{message}"
    );
    assert!(message.contains("spam"), "{message}");

    // Kept across a restart.
    let dir = dir.restart().await?;
    let mut c = dir.client().await?;
    let bans = admin_calls::list_bans(&dir.url(), None).await?;
    let [ban] = bans.as_slice() else { anyhow::bail!("{bans:?}") };
    assert_eq!(admin_calls::ban_of(ban).map(|b| (b.target, b.reason)), Some((target.clone(), "spam".into())));
    assert_eq!(refused(&mut c, &banned).await?.code(), Code::PermissionDenied);

    // Lifted: it announces again.
    assert!(admin_calls::unban(&dir.url(), None, &target).await?);
    assert!(!admin_calls::unban(&dir.url(), None, &target).await?, "nothing left to lift");
    assert!(admin_calls::list_bans(&dir.url(), None).await?.is_empty());
    banned.announce(&mut c, vec![file(1, "晴天", "周杰伦")]).await?;
    assert_eq!(located(&mut c, 1).await?, vec![banned.id()]);
    dir.server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ip_range_ban_takes_every_peer_in_it_offline_and_refuses_their_announces() -> anyhow::Result<()> {
    let dir = TestDirectory::start(30).await?;
    let (mut home, mut inside) = (dir.client().await?, dir.client_from([127, 0, 0, 2]).await?);
    let stays = TestPeer::start()?;
    let goes = TestPeer::start_at([127, 0, 0, 2])?;
    stays.announce(&mut home, vec![file(1, "晴天", "周杰伦")]).await?;
    goes.announce(&mut inside, vec![file(1, "晴天", "周杰伦")]).await?;
    let mut both = vec![stays.id(), goes.id()];
    both.sort();
    let mut now = located(&mut home, 1).await?;
    now.sort();
    assert_eq!(now, both, "the peer on 127.0.0.2 passed its connect-back and is a source");

    let target = BanTarget::parse("127.0.0.2/31")?;
    let answer = admin_calls::ban(&dir.url(), None, &target, 60, String::new()).await?;
    assert_eq!(answer.peers_dropped, 1);
    assert_eq!(located(&mut home, 1).await?, vec![stays.id()]);
    assert_eq!(listed(&dir).await?, vec![stays.id()]);
    let status = refused(&mut inside, &goes).await?;
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains("IP range 127.0.0.2/31 is banned"), "{}", status.message());
    // The same peer from outside the range is not refused: the range is banned, not the peer.
    let mut outside = dir.client_from([127, 0, 0, 4]).await?;
    announce_proof::announce(&mut outside, &goes.key, announce_request(goes.port(), &[])).await?;
    dir.server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_file_vanishes_from_search_get_file_and_locate() -> anyhow::Result<()> {
    let dir = TestDirectory::start(30).await?;
    let mut c = dir.client().await?;
    let (p1, p2) = (TestPeer::start()?, TestPeer::start()?);
    let sunny = file(1, "晴天", "周杰伦");
    p1.announce(&mut c, vec![sunny.clone(), file(2, "稻香", "周杰伦")]).await?;
    let t2 = p2.announce(&mut c, vec![sunny.clone()]).await?;
    let found = |c: &Client, query: &'static str, n: u32| {
        let mut c = c.clone();
        async move {
            let hits = c.search(search_request(query)).await?.into_inner().hits;
            Ok::<_, anyhow::Error>(
                hits.iter().any(|h| h.file.as_ref().is_some_and(|f| f.content_id == cid(n).to_vec())),
            )
        }
    };
    eventually(WAIT, || async { Ok(found(&c, "晴天", 1).await?.then_some(())) }).await?;

    let answer = admin_calls::remove_file(&dir.url(), None, &cid(1)).await?;
    assert_eq!((answer.removed, answer.sources), (true, 2));
    assert!(!found(&c, "晴天", 1).await?, "gone from Search");
    let get = c.get_file(GetFileRequest { content_id: cid(1).to_vec() }).await;
    assert_eq!(get.map(|_| ()).map_err(|s| s.code()), Err(Code::NotFound));
    assert!(located(&mut c, 1).await?.is_empty(), "gone from Locate");
    let stats = c.stats(StatsRequest {}).await?.into_inner();
    assert_eq!((stats.files, stats.sources), (1, 1), "counts follow: only 稻香 and its one source are left");
    assert!(found(&c, "稻香", 2).await?, "the other file stays");
    assert!(!admin_calls::remove_file(&dir.url(), None, &cid(1)).await?.removed, "already gone");
    // Each holder's list lost it: its next Announce sees another digest and sends it again.
    let p1_list = vec![file(2, "稻香", "周杰伦")];
    let again = announce_proof::announce(&mut c, &p1.key, announce_request(p1.port(), &p1_list)).await?;
    assert_eq!(again.into_inner().known_digest, digest_of(&p1_list).as_bytes().to_vec());

    // Not a block list: a later Publish brings the file back.
    c.publish(PublishRequest { session_token: t2, added: vec![sunny], ..Default::default() }).await?;
    assert_eq!(located(&mut c, 1).await?, vec![p2.id()]);
    eventually(WAIT, || async { Ok(found(&c, "晴天", 1).await?.then_some(())) }).await?;
    dir.server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_admin_requests_are_refused_with_the_reason() -> anyhow::Result<()> {
    let dir = TestDirectory::start(30).await?;
    let peer = BanTarget::Peer(PeerId::from_array([1; 32]));
    let no_time = admin_calls::ban(&dir.url(), None, &peer, 0, String::new()).await;
    let error = no_time.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(error.contains("InvalidArgument") && error.contains("at least one second"), "{error}");
    let long = admin_calls::ban(&dir.url(), None, &peer, 5, "x".repeat(300)).await;
    let error = long.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(error.contains("the limit is 256"), "{error}");
    assert!(admin_calls::list_bans(&dir.url(), None).await?.is_empty(), "nothing was banned");
    dir.server.shutdown().await?;
    Ok(())
}
