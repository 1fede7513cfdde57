//! Reachability across every kind of router (and over time: mappings kept alive), and the relay: pairs that cannot punch meet
//! through the directory's TURN server (coturn in the NAT bed), with credentials the directory
//! minted for the source; TLS still pins the source end to end. Runs as root with nft and
//! coturn installed (`.ci/deps`); says so and skips elsewhere.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::nat_bed::{Bed, Kind, NsDirectory, TurnServer};
use common::{Daemon, WAIT, blake3_of, judged_in, status_until};
use quaver_shared::ContentId;
use serde_json::Value;

const MB: usize = 1_000_000;

/// A file of `size` bytes of its own (`seed` makes the content, so each gets its own id).
fn tune(dir: &Path, name: &str, size: usize, seed: u64) -> ContentId {
    std::fs::create_dir_all(dir).unwrap();
    let data: Vec<u8> = (0..size as u64)
        .map(|i| (i ^ seed.rotate_left(17)).wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes()[7])
        .collect();
    std::fs::write(dir.join(name), &data).unwrap();
    ContentId::of_bytes(&data)
}

/// Waits until a search for `query` from `node` finds a file with `n` online sources (each
/// has shared it and been judged reachable some way).
async fn online_sources_until(node: &Daemon, query: &str, n: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let hits = node.json(&["search", query, "--json"]).await;
        if hits.as_array().is_some_and(|h| h.iter().any(|h| h["online_sources"] == n)) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{n} sources of {query:?} not within {WAIT:?}: {hits}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What a finished `get --json` says of `peer`: its bytes and its route.
fn served_by(got: &Value, peer: &str) -> (u64, String) {
    let per_source = got["per_source"].as_array().unwrap();
    let entry = per_source.iter().find(|p| p["peer_id"] == peer);
    entry.map_or((0, "none".into()), |p| {
        (p["bytes"].as_u64().unwrap(), p["path"].as_str().unwrap_or_default().to_owned())
    })
}

#[tokio::test]
async fn a_source_behind_a_symmetric_nat_serves_a_symmetric_downloader_through_the_relay() {
    let Some(mut bed) = Bed::create() else { return };
    let Some(turn) = TurnServer::start(&bed.inet(), 50_000_000) else { return };
    let (source_host, getter_host) = (bed.host(Kind::Symmetric), bed.host(Kind::Symmetric));
    let dir = NsDirectory::start_with_relay(&bed.inet(), Some(&turn));
    let root = tempfile::tempdir().unwrap();
    let id = tune(&root.path().join("music"), "Queen - Bohemian Rhapsody.flac", 20 * MB, 1);
    let source = judged_in(&source_host, root.path(), "source", &dir.url, &[]).await;
    source.share(&root.path().join("music")).await;
    let s = status_until(&source, "the source relayed", |s| s["relayed"] == true).await;
    assert_eq!((s["nat"].as_str(), s["introducible"].as_bool()), (Some("symmetric"), Some(false)), "{s}");
    let (_, text) = source.cli(&["status"]).await;
    assert!(text.contains("through the directory's relay only"), "{text}");

    let getter = judged_in(&getter_host, root.path(), "getter", &dir.url, &[]).await;
    let got = getter.json(&["get", &id.to_hex(), "--json", "--wait-sources", "20"]).await;
    assert_eq!(blake3_of(got["path"].as_str().unwrap()), id, "{got}");
    assert_eq!(served_by(&got, &source.peer_id), ((20 * MB) as u64, "relayed".into()), "{got}");
    // The per-source detail says how long the connection took: the allocation on the relay
    // and the introduction are round trips, never free.
    assert!(got["per_source"][0]["connect_ms"].as_u64().is_some_and(|ms| ms > 0), "{got}");
    let s = source.json(&["status", "--json"]).await;
    assert!(s["relay_address"].as_str().is_some_and(|a| a.starts_with("198.18.0.1:")), "{s}");

    getter.stop().await;
    source.stop().await;
    drop((dir, turn, bed));
}

#[tokio::test]
async fn after_two_idle_minutes_a_source_behind_nat_is_still_punched_through_at_the_same_mapping() {
    let Some(mut bed) = Bed::create() else { return };
    let (source_host, getter_host) = (bed.host(Kind::Cone), bed.host(Kind::Cone));
    let dir = NsDirectory::start(&bed.inet());
    let root = tempfile::tempdir().unwrap();
    let music = root.path().join("music");
    let (first, second) = (tune(&music, "one.flac", 4 * MB, 3), tune(&music, "two.flac", 4 * MB, 4));
    let source = judged_in(&source_host, root.path(), "source", &dir.url, &[]).await;
    source.share(&music).await;
    let getter = judged_in(&getter_host, root.path(), "getter", &dir.url, &[]).await;
    let mapped = |s: &Value| s["public_address"].as_str().unwrap_or_default().to_owned();
    let before = (
        mapped(&source.json(&["status", "--json"]).await),
        mapped(&getter.json(&["status", "--json"]).await),
    );
    let got = getter.json(&["get", &first.to_hex(), "--json", "--wait-sources", "20"]).await;
    assert_eq!(served_by(&got, &source.peer_id), ((4 * MB) as u64, "punched".into()), "{got}");

    // Longer than the routers' conntrack keeps an idle UDP mapping (30 s unreplied, 120 s
    // assured): only the nodes' keep-alives to the directory hold it.
    tokio::time::sleep(Duration::from_secs(125)).await;
    let after = (
        mapped(&source.json(&["status", "--json"]).await),
        mapped(&getter.json(&["status", "--json"]).await),
    );
    assert_eq!(after, before, "both routers still map the nodes' sockets where they did");
    let got = getter.json(&["get", &second.to_hex(), "--json", "--wait-sources", "20"]).await;
    assert_eq!(blake3_of(got["path"].as_str().unwrap()), second, "{got}");
    assert_eq!(served_by(&got, &source.peer_id), ((4 * MB) as u64, "punched".into()), "{got}");

    getter.stop().await;
    source.stop().await;
    drop((dir, bed));
}

#[tokio::test]
async fn the_relay_holds_a_relayed_source_to_its_bandwidth_cap() {
    let Some(mut bed) = Bed::create() else { return };
    let cap = 1_000_000;
    let Some(turn) = TurnServer::start(&bed.inet(), cap) else { return };
    let (source_host, getter_host) = (bed.host(Kind::Symmetric), bed.host(Kind::Symmetric));
    let dir = NsDirectory::start_with_relay(&bed.inet(), Some(&turn));
    let root = tempfile::tempdir().unwrap();
    let size = 3 * MB;
    let id = tune(&root.path().join("music"), "small.flac", size, 2);
    let source = judged_in(&source_host, root.path(), "source", &dir.url, &[]).await;
    source.share(&root.path().join("music")).await;
    status_until(&source, "the source relayed", |s| s["relayed"] == true).await;
    let getter = judged_in(&getter_host, root.path(), "getter", &dir.url, &[]).await;
    let started = Instant::now();
    let got = getter.json(&["get", &id.to_hex(), "--json", "--wait-sources", "20"]).await;
    let took = started.elapsed();
    assert_eq!(blake3_of(got["path"].as_str().unwrap()), id, "{got}");
    assert_eq!(served_by(&got, &source.peer_id).1, "relayed", "{got}");
    // A lower bound only: a slow machine makes it slower, never faster than the cap allows.
    let floor = Duration::from_secs_f64(0.8 * size as f64 / cap as f64);
    assert!(took >= floor, "{size} bytes through a {cap} B/s relay took {took:?}, under {floor:?}");

    getter.stop().await;
    source.stop().await;
    drop((dir, turn, bed));
}

/// Runs `f` on a thread inside network namespace `ns`, with a runtime of its own.
fn in_namespace<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = T>>> + Send + 'static,
) -> T {
    use std::os::fd::AsRawFd;
    let netns = std::fs::File::open(format!("/var/run/netns/{ns}")).unwrap();
    std::thread::spawn(move || {
        // SAFETY: setns on this thread only, with a namespace fd we hold open.
        assert_eq!(unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f())
    })
    .join()
    .unwrap()
}

#[test]
fn the_relay_allocates_only_with_credentials_the_directory_minted() {
    let Some(bed) = Bed::create() else { return };
    let Some(turn) = TurnServer::start(&bed.inet(), 1_000_000) else { return };
    let server: std::net::SocketAddr = turn.address.parse().unwrap();
    let secret = turn.secret.clone();
    let outcomes = in_namespace(&bed.inet(), move || {
        Box::pin(async move {
            let key = quaver_shared::NodeKey::generate().unwrap();
            let peer = key.peer_id();
            let offer = quaver_directory::relay::RelayOffer::new(
                server.to_string(),
                &secret,
                Duration::from_secs(600),
            );
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
            let mut outcomes = Vec::new();
            let cases = [
                (
                    "guessed password",
                    format!("{}:{peer}", now + 600),
                    "not-what-the-directory-minted".to_owned(),
                ),
                (
                    "expired",
                    offer.credentials(&peer, now - 3600).username,
                    offer.credentials(&peer, now - 3600).password,
                ),
                ("minted", offer.credentials(&peer, now).username, offer.credentials(&peer, now).password),
            ];
            for (case, user, pass) in cases {
                let bind = std::net::SocketAddr::from(([198, 18, 0, 1], 0));
                let (_endpoint, splice) = quaver_shared::tls::node_endpoint(bind, &key).unwrap();
                let got = splice.allocate(server, &user, &pass, Duration::from_secs(3)).await;
                outcomes.push((case, got.map_err(|e| e.to_string())));
                splice.release();
            }
            outcomes
        })
    });
    let outcome = |case: &str| outcomes.iter().find(|(c, _)| *c == case).unwrap().1.clone();
    assert!(outcome("guessed password").is_err(), "{outcomes:?}");
    assert!(outcome("expired").is_err(), "{outcomes:?}");
    let relayed =
        outcome("minted").unwrap_or_else(|e| panic!("minted credentials refused: {e}; {}", turn.log()));
    assert_eq!(relayed.ip(), server.ip(), "{outcomes:?}");
    drop((turn, bed));
}

/// Where each kind of host sits in the matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Cell {
    /// (a) public, (b) cone, (c) symmetric, (d) firewalled, (e) behind the shared router.
    A,
    B,
    C,
    D,
    E,
}

const CELLS: [Cell; 5] = [Cell::A, Cell::B, Cell::C, Cell::D, Cell::E];

/// The route a download of `source` by `downloader` must take. Symmetric with symmetric goes
/// through the relay; so does a symmetric side whose partner filters by address and port (a
/// cone router or a stateful firewall): the partner's packets go to the port the symmetric
/// router showed the directory, not the one it opens towards the partner, so no hole lines
/// up without guessing ports. Everything else is direct: dialled, punched, or on the LAN.
fn expected(downloader: Cell, source: Cell) -> &'static str {
    use Cell::*;
    match (downloader, source) {
        (_, A) => "direct",
        (E, E) => "direct",
        (C, _) | (_, C) => "relayed",
        _ => "punched",
    }
}

#[tokio::test]
async fn every_pair_of_router_kinds_connects_and_takes_the_expected_route() {
    let Some(mut bed) = Bed::create() else { return };
    let Some(turn) = TurnServer::start(&bed.inet(), 100_000_000) else { return };
    let shared = bed.router(Kind::Cone);
    let host = |cell: Cell, bed: &mut Bed| match cell {
        Cell::A => bed.host(Kind::Public),
        Cell::B => bed.host(Kind::Cone),
        Cell::C => bed.host(Kind::Symmetric),
        Cell::D => bed.host(Kind::Firewalled),
        Cell::E => bed.behind(&shared),
    };
    let dir = NsDirectory::start_with_relay(&bed.inet(), Some(&turn));
    let root = tempfile::tempdir().unwrap();
    // Source X holds one file for each downloader Y, so that every cell has a file of its own
    // (a finished download makes its downloader a source of that file).
    let mut ids = BTreeMap::new();
    let mut sources = BTreeMap::new();
    for (i, &x) in CELLS.iter().enumerate() {
        let folder = root.path().join(format!("music-{x:?}"));
        for (j, &y) in CELLS.iter().enumerate() {
            ids.insert(
                (y, x),
                tune(&folder, &format!("{x:?}-for-{y:?}.flac"), 10 * MB, (i * 5 + j) as u64 + 10),
            );
        }
        let h = host(x, &mut bed);
        let node = judged_in(&h, root.path(), &format!("source-{x:?}"), &dir.url, &[]).await;
        node.share(&folder).await;
        sources.insert(x, node);
    }
    let mut downloaders = BTreeMap::new();
    for &y in &CELLS {
        let h = host(y, &mut bed);
        downloaders.insert(y, judged_in(&h, root.path(), &format!("downloader-{y:?}"), &dir.url, &[]).await);
    }
    let mut routes = BTreeMap::new();
    for &y in &CELLS {
        for &x in &CELLS {
            let id = ids[&(y, x)];
            let got = downloaders[&y].json(&["get", &id.to_hex(), "--json", "--wait-sources", "30"]).await;
            assert_eq!(blake3_of(got["path"].as_str().unwrap()), id, "{y:?} from {x:?}: {got}");
            let (bytes, route) = served_by(&got, &sources[&x].peer_id);
            assert_eq!(bytes, (10 * MB) as u64, "{y:?} from {x:?}: {got}");
            routes.insert((y, x), route);
        }
    }
    let mut table = String::from("downloader \\ source |");
    for x in CELLS {
        table += &format!(" {x:?} ({}) |", kind_name(x));
    }
    for y in CELLS {
        table += &format!("\n{y:?} ({}) |", kind_name(y));
        for x in CELLS {
            table += &format!(" {} |", routes[&(y, x)]);
        }
    }
    println!("{table}");
    for y in CELLS {
        for x in CELLS {
            assert_eq!(routes[&(y, x)], expected(y, x), "{y:?} from {x:?}\n{table}");
        }
    }

    for node in downloaders.into_values().chain(sources.into_values()) {
        node.stop().await;
    }
    drop((dir, turn, bed));
}

fn kind_name(cell: Cell) -> &'static str {
    match cell {
        Cell::A => "public",
        Cell::B => "cone",
        Cell::C => "symmetric",
        Cell::D => "firewalled",
        Cell::E => "shared LAN",
    }
}

#[tokio::test]
async fn four_sources_behind_cone_cone_symmetric_and_no_nat_all_serve_one_download() {
    let Some(mut bed) = Bed::create() else { return };
    let Some(turn) = TurnServer::start(&bed.inet(), 100_000_000) else { return };
    let dir = NsDirectory::start_with_relay(&bed.inet(), Some(&turn));
    let root = tempfile::tempdir().unwrap();
    let id = tune(&root.path().join("music"), "Shared.flac", 40 * MB, 99);
    let mut sources = Vec::new();
    for (i, kind) in [Kind::Cone, Kind::Cone, Kind::Symmetric, Kind::Public].into_iter().enumerate() {
        let h = bed.host(kind);
        // Capped, so that the download lasts long enough for every source to take part (in
        // the bed, any one of them could serve the whole file in a fraction of a second).
        let capped = ["--max-upload-rate", "4000000"];
        let node = judged_in(&h, root.path(), &format!("source-{i}"), &dir.url, &capped).await;
        node.share(&root.path().join("music")).await;
        sources.push(node);
    }
    let getter_host = bed.host(Kind::Cone);
    let getter = judged_in(&getter_host, root.path(), "getter", &dir.url, &[]).await;
    online_sources_until(&getter, "Shared", 4).await;
    let got = getter.json(&["get", &id.to_hex(), "--json", "--wait-sources", "30"]).await;
    assert_eq!(blake3_of(got["path"].as_str().unwrap()), id, "{got}");
    let served: Vec<(u64, String)> = sources.iter().map(|s| served_by(&got, &s.peer_id)).collect();
    assert!(served.iter().all(|(bytes, _)| *bytes > 0), "every source served bytes: {served:?}");
    let routes: Vec<&str> = served.iter().map(|(_, r)| r.as_str()).collect();
    assert_eq!(routes, ["punched", "punched", "relayed", "direct"], "{got}");

    getter.stop().await;
    for s in sources {
        s.stop().await;
    }
    drop((dir, turn, bed));
}
