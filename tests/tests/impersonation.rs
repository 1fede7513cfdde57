//! Nobody but the holder of a PeerId's key can announce it: an Announce naming another peer's
//! id, from another address or from the victim's own IP with its own port (where the victim
//! itself would answer the connect-back), is refused and leaves the victim's session, share
//! list and sources exactly as they were.

use quaver_e2e::*;
use quaver_shared::directory::v1::*;
use quaver_shared::{NodeKey, PeerId, announce_proof};
use tonic::Code;

/// The victim's session and sources, as the directory shows them: Locate's peers and
/// addresses, GetFile's online count, and whether its token still works for a heartbeat.
async fn victim_view(c: &mut Client, token: &str) -> anyhow::Result<(Vec<(PeerId, String)>, u32)> {
    c.heartbeat(HeartbeatRequest { session_token: token.into(), free_upload_slots: 4 }).await?;
    let sources = c
        .locate(LocateRequest { content_id: cid(1).to_vec(), ..Default::default() })
        .await?
        .into_inner()
        .sources
        .into_iter()
        .map(|s| Ok((PeerId::from_slice(&s.peer_id)?, s.address)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let online =
        c.get_file(GetFileRequest { content_id: cid(1).to_vec() }).await?.into_inner().online_sources;
    Ok((sources, online))
}

fn refused(answer: Result<tonic::Response<AnnounceResponse>, tonic::Status>, what: &str) {
    match answer {
        Ok(r) => panic!("{what}: accepted, token {:?}", r.into_inner().session_token),
        Err(status) => {
            assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
            assert!(
                status.message().contains("hallenge") || status.message().contains("signature"),
                "{what}: {}",
                status.message()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_impersonating_announce_leaves_the_victims_session_and_sources_untouched() -> anyhow::Result<()> {
    let dir = TestDirectory::start(30).await?;
    let mut c = dir.client().await?;
    let victim = TestPeer::start()?;
    let files = vec![file(1, "晴天", "周杰伦")];
    let token = victim.announce(&mut c, files.clone()).await?;
    let before = victim_view(&mut c, &token).await?;
    assert_eq!(before, (vec![(victim.id(), format!("127.0.0.1:{}", victim.port()))], 1));

    // The attacker names the victim's id and port and empties its share list.
    let forged = || AnnounceRequest {
        peer_id: victim.id().to_vec(),
        share_digest: vec![0; 32],
        ..announce_request(victim.port(), &[])
    };

    // From another address, with no proof.
    let mut elsewhere = dir.client_from([127, 0, 0, 2]).await?;
    refused(elsewhere.announce(forged()).await, "unsigned, from 127.0.0.2");
    // From the victim's own IP and with its port: the connect-back would reach the victim.
    refused(c.announce(forged()).await, "unsigned, from the victim's IP");

    // With a challenge issued for the victim's id, signed by the attacker's own key.
    let thief = NodeKey::generate()?;
    for client in [&mut c, &mut elsewhere] {
        let nonce =
            client.challenge(ChallengeRequest { peer_id: victim.id().to_vec() }).await?.into_inner().nonce;
        let mut request = forged();
        announce_proof::sign(&thief, nonce, &mut request);
        request.peer_id = victim.id().to_vec();
        refused(client.announce(request).await, "signed by another key");
    }

    // A signature the victim made, taken from another address.
    let nonce = c.challenge(ChallengeRequest { peer_id: victim.id().to_vec() }).await?.into_inner().nonce;
    let mut stolen = forged();
    announce_proof::sign(&victim.key, nonce, &mut stolen);
    refused(elsewhere.announce(stolen.clone()).await, "the victim's signature, from another IP");

    assert_eq!(victim_view(&mut c, &token).await?, before, "the victim's session and sources are untouched");
    let known =
        c.publish(PublishRequest { session_token: token.clone(), ..Default::default() }).await?.into_inner();
    assert_eq!((known.known_count, known.known_digest), (1, digest_of(&files).as_bytes().to_vec()));

    // The victim's own signed Announce works once; the same bytes sent again (a replay) do not.
    let signed = AnnounceRequest { peer_id: victim.id().to_vec(), ..announce_request(victim.port(), &files) };
    let nonce = c.challenge(ChallengeRequest { peer_id: victim.id().to_vec() }).await?.into_inner().nonce;
    let mut once = signed.clone();
    announce_proof::sign(&victim.key, nonce, &mut once);
    let renewed = c.announce(once.clone()).await?.into_inner();
    assert!(renewed.reachable);
    refused(c.announce(once).await, "a replayed Announce");
    assert_eq!(victim_view(&mut c, &renewed.session_token).await?, before);

    dir.server.shutdown().await?;
    Ok(())
}
