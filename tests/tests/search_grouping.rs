//! Search through the real directory: copies of one song come together, best-sourced first, and
//! field scopes restrict where a word matches. Real server, real peers with live QUIC endpoints.

use std::time::Duration;

use quaver_e2e::*;
use quaver_shared::directory::v1::*;

const WAIT: Duration = Duration::from_secs(20);

fn with_album(mut f: SharedFile, album: &str) -> SharedFile {
    if let Some(info) = f.info.as_mut() {
        info.album = album.into();
    }
    f
}

/// Content ids of the hits, as the `cid` numbers this test gave them.
fn order(resp: &SearchResponse) -> Vec<u32> {
    resp.hits
        .iter()
        .filter_map(|h| (1..=4).find(|n| h.file.as_ref().is_some_and(|f| f.content_id == cid(*n).to_vec())))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_of_a_song_are_adjacent_best_sourced_first_and_fields_scope_words() -> anyhow::Result<()> {
    let dir = TestDirectory::start(30).await?;
    let mut c = dir.client().await?;
    let (peer1, peer2, peer3) = (TestPeer::start()?, TestPeer::start()?, TestPeer::start()?);
    // 1 and 2 are two encodings of one song; 1 matches more fields (its album is 晴天 too) but
    // has one source, 2 has three. 3 is another artist's 晴天, as relevant as 1. 4 is unrelated.
    let copy_plain = file(2, "晴天", "周杰伦");
    peer1
        .announce(
            &mut c,
            vec![
                with_album(file(1, "晴天", "周杰伦"), "晴天"),
                copy_plain.clone(),
                with_album(file(3, "晴天", "Someone"), "晴天"),
                file(4, "七里香", "周杰伦"),
            ],
        )
        .await?;
    peer2.announce(&mut c, vec![copy_plain.clone()]).await?;
    peer3.announce(&mut c, vec![copy_plain]).await?;
    eventually(WAIT, || {
        let mut c = c.clone();
        async move { Ok((c.stats(StatsRequest {}).await?.into_inner().indexed_documents == 4).then_some(())) }
    })
    .await?;

    let hits = order(&c.search(search_request("晴天")).await?.into_inner());
    assert_eq!(hits.len(), 3, "{hits:?}");
    let (one, two) = (hits.iter().position(|n| *n == 1), hits.iter().position(|n| *n == 2));
    let (Some(one), Some(two)) = (one, two) else { panic!("both copies found: {hits:?}") };
    assert_eq!(two + 1, one, "the copies are adjacent, the three-source one first: {hits:?}");

    // A field scope: the word must be in that field.
    let mut by_artist = order(&c.search(search_request("artist:周杰伦")).await?.into_inner());
    by_artist.sort();
    assert_eq!(by_artist, [1, 2, 4]);
    let mut scoped = order(&c.search(search_request("artist:周杰伦 album:晴天")).await?.into_inner());
    scoped.sort();
    assert_eq!(scoped, [1]);
    // Malformed syntax is plain text, never an error.
    for q in ["artist:", "artist:\"周杰伦", "晴天 :", "a:b:c 晴天"] {
        c.search(search_request(q)).await?;
    }
    Ok(())
}
