//! Domain tests of `Directory` that need no sockets: the Locate hand-off rule, and the online
//! sources Locate reads following every way a share list or a lease changes.

use std::net::SocketAddr;
use std::time::Instant;

use quaver_shared::directory::v1::*;
use quaver_shared::{ContentId, NodeKey, PeerId};

use super::{Directory, INLINE_LOCATE_SOURCES, ValidAnnounce};
use crate::config::Config;

fn song(id: &ContentId) -> SharedFile {
    SharedFile {
        info: Some(FileInfo {
            content_id: id.to_vec(),
            size: 4_000_000,
            file_name: "Yellow - Coldplay.mp3".into(),
            title: "Yellow".into(),
            artist: "Coldplay".into(),
            album: String::new(),
            duration_ms: 266_000,
            bitrate_kbps: 320,
            media_kind: MediaKind::Audio as i32,
        }),
        complete: true,
    }
}

/// Announces `peers` reachable peers that all share `id`; returns their ids.
fn sources(dir: &Directory, id: &ContentId, peers: usize) -> Vec<PeerId> {
    let now = Instant::now();
    (0..peers)
        .map(|i| {
            let peer = NodeKey::generate().unwrap().peer_id();
            let address = SocketAddr::from(([127, 0, 0, 1], 10_000 + i as u16));
            let announce = ValidAnnounce { peer, address, free_upload_slots: 2, local: None };
            let token = dir.announce(announce, true, now).unwrap().session_token;
            let publish =
                PublishRequest { session_token: token, added: vec![song(id)], ..Default::default() };
            dir.publish(publish, now).unwrap();
            peer
        })
        .collect()
}

fn locate(id: &ContentId, max_sources: u32) -> LocateRequest {
    LocateRequest { content_id: id.to_vec(), max_sources, ..Default::default() }
}

#[test]
fn a_file_with_few_sources_is_located_quickly_and_the_same_as_in_full() {
    let dir = Directory::temporary(Config::default()).unwrap();
    let id = ContentId::of_bytes(b"few sources");
    let peers = sources(&dir, &id, 3);
    let now = Instant::now();
    let quick = dir.try_locate_quickly(&locate(&id, 0), None, now).unwrap().expect("a quick answer");
    assert_eq!(quick, dir.locate(&locate(&id, 0), None, now).unwrap());
    let mut found: Vec<Vec<u8>> = quick.sources.iter().map(|s| s.peer_id.clone()).collect();
    let mut want: Vec<Vec<u8>> = peers.iter().map(|p| p.to_vec()).collect();
    found.sort();
    want.sort();
    assert_eq!(found, want);
    let unknown = dir.try_locate_quickly(&locate(&ContentId::of_bytes(b"nobody"), 0), None, now).unwrap();
    assert_eq!(unknown, Some(LocateResponse::default()));
}

#[test]
fn a_file_with_many_online_sources_is_left_to_the_full_locate() {
    let dir = Directory::temporary(Config::default()).unwrap();
    let id = ContentId::of_bytes(b"many sources");
    sources(&dir, &id, INLINE_LOCATE_SOURCES + 1);
    let now = Instant::now();
    assert_eq!(dir.try_locate_quickly(&locate(&id, 0), None, now).unwrap(), None);
    let max = quaver_shared::limits::MAX_LOCATE_SOURCES;
    assert_eq!(dir.locate(&locate(&id, max), None, now).unwrap().sources.len(), max as usize);
}

#[test]
fn a_locate_never_waits_on_the_quick_path_for_a_writer_of_the_online_sources() {
    let dir = Directory::temporary(Config::default()).unwrap();
    let id = ContentId::of_bytes(b"busy");
    sources(&dir, &id, 2);
    let now = Instant::now();
    let writer = dir.online_mut();
    assert_eq!(dir.try_locate_quickly(&locate(&id, 0), None, now).unwrap(), None, "left to the pool");
    drop(writer);
    let quick = dir.try_locate_quickly(&locate(&id, 0), None, now).unwrap().expect("quick again");
    assert_eq!(quick.sources.len(), 2);
}

#[test]
fn bad_input_is_refused_on_the_quick_path_too() {
    let dir = Directory::temporary(Config::default()).unwrap();
    let short = LocateRequest { content_id: vec![1; 31], ..Default::default() };
    assert!(dir.try_locate_quickly(&short, None, Instant::now()).is_err());
}

/// The located sources of `id` as (peer, complete), and the file's online and complete counts.
fn online(dir: &Directory, id: &ContentId) -> (Vec<(PeerId, bool)>, u32, u32) {
    let answer = dir.locate(&locate(id, 0), None, Instant::now()).unwrap();
    let located =
        answer.sources.iter().map(|s| (PeerId::from_slice(&s.peer_id).unwrap(), s.complete)).collect();
    let counts = dir.get_file(GetFileRequest { content_id: id.to_vec() });
    let (online, complete) = counts.map_or((0, 0), |c| (c.online_sources, c.complete_sources));
    (located, online, complete)
}

#[test]
fn online_sources_follow_publish_reset_leave_and_reannounce() {
    let dir = Directory::temporary(Config::default()).unwrap();
    let (a, b) = (ContentId::of_bytes(b"a"), ContentId::of_bytes(b"b"));
    let peer = NodeKey::generate().unwrap().peer_id();
    let address = SocketAddr::from(([127, 0, 0, 1], 4000));
    let announce = |reachable: bool| {
        let valid = ValidAnnounce { peer, address, free_upload_slots: 2, local: None };
        dir.announce(valid, reachable, Instant::now()).unwrap().session_token
    };
    let publish = |token: &str, reset: bool, id: &ContentId, complete: bool| {
        let added = vec![SharedFile { complete, ..song(id) }];
        let req = PublishRequest { session_token: token.into(), reset, added, ..Default::default() };
        dir.publish(req, Instant::now()).unwrap();
    };

    let token = announce(true);
    publish(&token, false, &a, false);
    assert_eq!(online(&dir, &a), (vec![(peer, false)], 1, 0), "a partial copy");
    publish(&token, false, &a, true);
    assert_eq!(online(&dir, &a), (vec![(peer, true)], 1, 1), "now complete, listed once");
    publish(&token, true, &b, true);
    assert_eq!(online(&dir, &a), (vec![], 0, 0), "forgotten by the reset");
    assert_eq!(online(&dir, &b), (vec![(peer, true)], 1, 1));

    let leave = WithdrawRequest { session_token: token, go_offline: true, ..Default::default() };
    dir.withdraw(leave, Instant::now()).unwrap();
    assert_eq!(online(&dir, &b), (vec![], 0, 0), "offline");
    let token = announce(true);
    assert_eq!(online(&dir, &b), (vec![(peer, true)], 1, 1), "back, with its stored list");
    announce(false);
    assert_eq!(online(&dir, &b), (vec![], 0, 0), "unreachable: no longer a source");
    let token_is_void = PublishRequest { session_token: token, ..Default::default() };
    assert!(dir.publish(token_is_void, Instant::now()).is_err());
}

#[test]
fn an_expired_lease_takes_its_files_offline() {
    let dir = Directory::temporary(Config::default()).unwrap();
    let id = ContentId::of_bytes(b"expiring");
    let peers = sources(&dir, &id, 2);
    assert_eq!(online(&dir, &id).1, 2);
    let later = Instant::now() + dir.config.lease() + std::time::Duration::from_secs(1);
    assert_eq!(dir.expire_leases(later).unwrap(), peers.len());
    assert_eq!(online(&dir, &id), (vec![], 0, 0));
}

/// Announces a reachable peer sharing `ids`; returns its token.
fn holder(dir: &Directory, port: u16, ids: &[ContentId]) -> String {
    let peer = NodeKey::generate().unwrap().peer_id();
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let announce = ValidAnnounce { peer, address, free_upload_slots: 2, local: None };
    let token = dir.announce(announce, true, Instant::now()).unwrap().session_token;
    let added = ids.iter().map(song).collect();
    dir.publish(PublishRequest { session_token: token.clone(), added, ..Default::default() }, Instant::now())
        .unwrap();
    token
}

/// One beat: the hints it carries, as (file, online, complete, demand).
fn beat(dir: &Directory, token: &str) -> (Vec<(ContentId, u32, u32, u32)>, bool) {
    let req = HeartbeatRequest { session_token: token.into(), free_upload_slots: 2 };
    let answer = dir.heartbeat(req, Instant::now()).unwrap();
    let hints = answer
        .hints
        .iter()
        .map(|h| {
            let id = ContentId::from_slice(&h.content_id).unwrap();
            (id, h.online_sources, h.complete_sources, h.demand)
        })
        .collect();
    (hints, answer.more_hints)
}

#[test]
fn beats_carry_rarity_hints_for_class_changes_only() {
    let dir = Directory::temporary(Config::default()).unwrap();
    let (rare, popular) = (ContentId::of_bytes(b"rare"), ContentId::of_bytes(b"popular"));
    let first = holder(&dir, 5000, &[rare, popular]);
    assert_eq!(beat(&dir, &first).0, [(rare, 1, 1, 0), (popular, 1, 1, 0)], "a newcomer hears of every file");
    assert_eq!(beat(&dir, &first), (vec![], false), "then nothing until something changes");

    let others: Vec<String> = (0..5).map(|i| holder(&dir, 5001 + i, &[popular])).collect();
    assert_eq!(
        beat(&dir, &first).0,
        [(popular, 6, 6, 0)],
        "1 -> 6 crossed buckets; told once, counts of now"
    );
    assert_eq!(beat(&dir, &others[4]).0, [(popular, 6, 6, 0)], "the last newcomer");
    assert_eq!(beat(&dir, &others[0]).0, [(popular, 6, 6, 0)], "the first, told of 1 -> 2 and of 3 -> 4");

    // A Locate by someone else is demand: the first ask crosses bucket 0 -> 1.
    dir.locate(&locate(&rare, 0), None, Instant::now()).unwrap();
    assert_eq!(beat(&dir, &first).0, [(rare, 1, 1, 1)]);

    // One of six going offline stays in the 4-7 bucket: nobody is told.
    let leave = WithdrawRequest { session_token: others[4].clone(), go_offline: true, ..Default::default() };
    dir.withdraw(leave, Instant::now()).unwrap();
    assert_eq!(beat(&dir, &first), (vec![], false));
    let (sent, dropped, pending) = dir.hint_counters();
    assert!(sent >= 6 && dropped == 0 && pending > 0, "{sent} {dropped} {pending}");
}
