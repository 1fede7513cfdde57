//! Reachability: each node learns its mapped address and its router's kind from the
//! directory's rendezvous endpoints, from the very socket it serves on, and `quaver status`
//! says so. On loopback (no NAT), and in the NAT bed (`common::nat_bed`: real routers in
//! network namespaces, masquerade and a stateful firewall by nftables), which runs as root and
//! says so and skips elsewhere.

mod common;

use common::nat_bed::{Bed, Kind, NsDirectory, bed_namespaces};
use common::{Daemon, Directory, SIZE, blake3_of, song, status_until};
use serde_json::Value;

/// `quaver status --json` once discovery has run and the directory gave its verdict.
async fn discovered(node: &Daemon) -> Value {
    status_until(node, "discovery", |s| {
        !s["nat"].as_str().unwrap_or_default().is_empty() && s["reachable"].is_boolean()
    })
    .await
}

/// Bytes a finished `get --json` credits to `peer`.
fn bytes_from(got: &Value, peer: &str) -> u64 {
    let per_source = got["per_source"].as_array().unwrap();
    per_source.iter().find(|p| p["peer_id"] == peer).map_or(0, |p| p["bytes"].as_u64().unwrap())
}

#[tokio::test]
async fn on_loopback_a_node_sees_no_nat_and_its_own_address() {
    let dir = Directory::start().await;
    let root = tempfile::tempdir().unwrap();
    let node = Daemon::start(root.path(), "node", &dir.url(), &[]).await;
    let status = discovered(&node).await;
    assert_eq!(status["nat"], "none", "{status}");
    assert_eq!(status["public_address"], status["quic_address"], "{status}");
    assert_eq!(status["reachable"], true, "{status}");
    assert_eq!(dir.server.rendezvous.channels(), 1, "the node keeps its rendezvous connection");
    let (code, text) = node.cli(&["status"]).await;
    assert_eq!(code, 0);
    assert!(text.contains("nat       none: peers see this node at its own address 127.0.0.1:"), "{text}");
    node.stop().await;
}

#[tokio::test]
async fn a_restarted_daemon_keeps_its_quic_port_so_forwarding_set_up_for_it_still_works() {
    let root = tempfile::tempdir().unwrap();
    let dir = Directory::start().await;
    let node = Daemon::start(root.path(), "node", &dir.url(), &[]).await;
    let first = node.json(&["status", "--json"]).await["quic_address"].clone();
    node.stop().await;
    let node = Daemon::start(root.path(), "node", &dir.url(), &[]).await;
    let again = node.json(&["status", "--json"]).await["quic_address"].clone();
    assert_eq!(again, first, "the same port after a restart (--listen leaves it open)");
    // Taken meanwhile by someone else: the node starts all the same, on another port.
    node.stop().await;
    let port = first.as_str().unwrap().rsplit_once(':').unwrap().1;
    let squatter = std::net::UdpSocket::bind(format!("127.0.0.1:{port}")).unwrap();
    let node = Daemon::start(root.path(), "node", &dir.url(), &[]).await;
    let moved = node.json(&["status", "--json"]).await["quic_address"].clone();
    assert_ne!(moved, first);
    node.stop().await;
    drop(squatter);
}

#[tokio::test]
async fn in_the_bed_each_router_kind_is_told_apart() {
    let Some(mut bed) = Bed::create() else { return };
    let public = bed.host(Kind::Public);
    let cone = bed.host(Kind::Cone);
    let symmetric = bed.host(Kind::Symmetric);
    let firewalled = bed.host(Kind::Firewalled);
    let dir = NsDirectory::start(&bed.inet());
    let root = tempfile::tempdir().unwrap();
    let listen = ["--listen", "0.0.0.0:0"];
    let mut nodes = Vec::new();
    for (name, host) in
        [("public", &public), ("cone", &cone), ("symmetric", &symmetric), ("firewalled", &firewalled)]
    {
        nodes.push(Daemon::start_in(Some(&host.ns), root.path(), name, &dir.url, &listen).await);
    }
    let mut seen = Vec::new();
    for node in &nodes {
        seen.push(discovered(node).await);
    }
    let [public_s, cone_s, symmetric_s, firewalled_s] = &seen[..] else { unreachable!() };
    let port = |s: &Value| s["quic_address"].as_str().unwrap().rsplit_once(':').unwrap().1.to_owned();

    assert_eq!(public_s["nat"], "none", "{public_s}");
    assert_eq!(public_s["public_address"], format!("{}:{}", public.ip, port(public_s)), "{public_s}");
    assert_eq!(public_s["reachable"], true, "{public_s}");

    // Masquerade keeps the port and one mapping for every destination; the directory's
    // connect-back comes from a port the node never sent to, which the router drops.
    let router = cone.router_ip.unwrap();
    assert_eq!(cone_s["nat"], "cone", "{cone_s}");
    assert_eq!(cone_s["public_address"], format!("{router}:{}", port(cone_s)), "{cone_s}");
    assert_eq!(cone_s["reachable"], false, "{cone_s}");

    let router = symmetric.router_ip.unwrap();
    assert_eq!(symmetric_s["nat"], "symmetric", "{symmetric_s}");
    let mapped = symmetric_s["public_address"].as_str().unwrap();
    assert!(mapped.starts_with(&format!("{router}:")), "{symmetric_s}");
    assert_eq!(symmetric_s["reachable"], false, "{symmetric_s}");

    // No NAT, so discovery sees the node's own address; only the connect-back finds the wall.
    assert_eq!(firewalled_s["nat"], "none", "{firewalled_s}");
    assert_eq!(firewalled_s["reachable"], false, "{firewalled_s}");
    let (_, text) = nodes[3].cli(&["status"]).await;
    assert!(text.contains("other peers cannot download from this node"), "{text}");

    for node in nodes {
        node.stop().await;
    }
    drop(dir);
    drop(bed);
}

#[test]
fn the_bed_leaves_no_namespace_or_process_behind_even_when_a_test_fails() {
    let built = std::thread::spawn(|| {
        let mut bed = Bed::create()?;
        bed.host(Kind::Cone);
        bed.host(Kind::Firewalled);
        let names = bed.namespaces().to_vec();
        // A process left running inside, as a crashed daemon would be.
        let sleeper = std::process::Command::new("ip")
            .args(["netns", "exec", &names[1], "sleep", "600"])
            .spawn()
            .unwrap()
            .id();
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _bed = bed;
            panic!("a failing test inside the bed");
        }));
        Some((names, sleeper))
    });
    let Some((names, sleeper)) = built.join().unwrap() else { return };
    assert_eq!(names.len(), 4, "internet, router, host behind it, firewalled host: {names:?}");
    let left = bed_namespaces();
    assert!(names.iter().all(|n| !left.contains(n)), "left behind: {left:?}");
    let state = std::fs::read_to_string(format!("/proc/{sleeper}/stat")).unwrap_or_default();
    let alive = state.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'));
    assert!(!alive, "the process inside the bed still runs: {state}");
}

#[tokio::test]
async fn a_source_behind_a_cone_nat_serves_a_downloader_behind_another_through_a_punched_hole() {
    let Some(mut bed) = Bed::create() else { return };
    let source_host = bed.host(Kind::Cone);
    let getter_host = bed.host(Kind::Cone);
    let dir = NsDirectory::start(&bed.inet());
    let root = tempfile::tempdir().unwrap();
    let listen = ["--listen", "0.0.0.0:0"];
    let (_, id) = song(&root.path().join("music"), "周杰伦 - 晴天.flac");
    let source = Daemon::start_in(Some(&source_host.ns), root.path(), "source", &dir.url, &listen).await;
    source.share(&root.path().join("music")).await;
    // The directory cannot dial it, but hands it out as a source reached by introductions.
    let s = status_until(&source, "the source introducible", |s| s["introducible"] == true).await;
    assert_eq!(s["reachable"], false, "{s}");
    assert_eq!(s["nat"], "cone", "{s}");

    let getter = Daemon::start_in(Some(&getter_host.ns), root.path(), "getter", &dir.url, &listen).await;
    status_until(&getter, "the downloader's discovery", |s| s["nat"] == "cone").await;
    // A bounded wait: without a punched hole there is no source, and the get fails in 20 s.
    let got = getter.json(&["get", &id.to_hex(), "--json", "--wait-sources", "20"]).await;
    assert_eq!(blake3_of(got["path"].as_str().unwrap()), id, "{got}");
    let served = bytes_from(&got, &source.peer_id);
    assert_eq!(served, SIZE as u64, "the source behind NAT served every byte: {got}");

    // Behind a symmetric NAT no hole can be punched towards a port-restricted one: the
    // directory leaves that source out of its answer rather than hand out a dead end.
    let stuck_host = bed.host(Kind::Symmetric);
    let stuck = Daemon::start_in(Some(&stuck_host.ns), root.path(), "stuck", &dir.url, &listen).await;
    status_until(&stuck, "the symmetric downloader's discovery", |s| s["nat"] == "symmetric").await;
    let (code, out) = stuck.cli(&["get", &id.to_hex(), "--json", "--wait-sources", "2"]).await;
    assert_eq!(code, 7, "no source the directory could hand out (exit 7, NoSources): {out}");

    stuck.stop().await;
    getter.stop().await;
    source.stop().await;
    drop(dir);
    drop(bed);
}

#[tokio::test]
async fn two_peers_behind_one_router_meet_on_their_lan_without_a_hairpin() {
    let Some(mut bed) = Bed::create() else { return };
    let router = bed.router(Kind::Cone);
    let source_host = bed.behind(&router);
    let getter_host = bed.behind(&router);
    let dir = NsDirectory::start(&bed.inet());
    let root = tempfile::tempdir().unwrap();
    let listen = ["--listen", "0.0.0.0:0"];
    let (_, id) = song(&root.path().join("music"), "Adele - Hello.flac");
    let source = Daemon::start_in(Some(&source_host.ns), root.path(), "source", &dir.url, &listen).await;
    source.share(&root.path().join("music")).await;
    status_until(&source, "the source introducible", |s| s["introducible"] == true).await;
    let getter = Daemon::start_in(Some(&getter_host.ns), root.path(), "getter", &dir.url, &listen).await;
    status_until(&getter, "the downloader's discovery", |s| s["nat"] == "cone").await;
    // The router forwards nothing from its LAN back to its LAN through its own public address:
    // only the source's private address, which the directory hands to a peer behind the same
    // public IP, leads to it.
    let got = getter.json(&["get", &id.to_hex(), "--json", "--wait-sources", "20"]).await;
    assert_eq!(blake3_of(got["path"].as_str().unwrap()), id, "{got}");
    let served = bytes_from(&got, &source.peer_id);
    assert_eq!(served, SIZE as u64, "{got}");
    assert!(source_host.ip.is_private() && getter_host.router_ip == source_host.router_ip);

    getter.stop().await;
    source.stop().await;
    drop(dir);
    drop(bed);
}
