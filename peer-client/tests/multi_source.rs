//! Downloads over real QUIC on loopback: several serving nodes, one downloader, the real
//! scheduler, verification and `.part` files. No directory here: sources are given directly
//! (the directory's part is tested in `tests/`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use quaver_peer::fetch::download::{DownloadSpec, SourceAddr, download};
use quaver_peer::library::{Entry, MemoryLibrary, OutboardData};
use quaver_peer::serve::{ServeConfig, Server};
use quaver_peer::tls;
use quaver_shared::{ContentId, NodeKey};

const SIZE: usize = 20 * 1024 * 1024;

struct Fixture {
    dir: tempfile::TempDir,
    path: PathBuf,
    id: ContentId,
    entry: Entry,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<u8> =
        (0..SIZE).map(|i| (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes()[7]).collect();
    let path = dir.path().join("source.bin");
    std::fs::write(&path, &data).unwrap();
    let ob =
        bao_tree::io::outboard::PreOrderMemOutboard::create(&data, quaver_peer::fetch::verify::block_size());
    let id = ContentId::from_array(*ob.root.as_bytes());
    assert_eq!(id, ContentId::of_bytes(&data));
    let entry =
        Entry { id, path: path.clone(), size: SIZE as u64, outboard: OutboardData::Bytes(ob.data.into()) };
    Fixture { dir, path, id, entry }
}

struct Node {
    server: Server,
    source: SourceAddr,
}

fn serve(entry: &Entry, config: ServeConfig) -> Node {
    let key = NodeKey::generate().unwrap();
    let endpoint = tls::endpoint("127.0.0.1:0".parse().unwrap(), &key).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let library = Arc::new(MemoryLibrary::default());
    library.insert(entry.clone());
    let server = Server::spawn(endpoint, library, config);
    Node { server, source: SourceAddr::direct(key.peer_id(), addr) }
}

fn client() -> quinn::Endpoint {
    tls::endpoint("127.0.0.1:0".parse().unwrap(), &NodeKey::generate().unwrap()).unwrap()
}

fn spec(f: &Fixture, name: &str, out: &Path) -> DownloadSpec {
    DownloadSpec {
        id: f.id,
        size: SIZE as u64,
        name: name.into(),
        out_dir: out.to_owned(),
        work_dir: f.dir.path().join("work"),
        wait_for_sources: Duration::from_secs(60),
        identity: None,
        rendezvous: None,
    }
}

fn capped(bytes_per_sec: u64) -> ServeConfig {
    ServeConfig { max_upload_bytes_per_sec: Some(bytes_per_sec), ..ServeConfig::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_sources_each_serve_a_share_of_one_file() {
    let f = fixture();
    // Equal caps so that each source's share reflects the scheduler, not loopback luck.
    let nodes: Vec<Node> = (0..3).map(|_| serve(&f.entry, capped(12 * 1024 * 1024))).collect();
    let out = f.dir.path().join("out");
    let result = download(
        &client(),
        spec(&f, "song.flac", &out),
        nodes.iter().map(|n| n.source).collect(),
        None,
        None,
    )
    .await
    .unwrap();
    assert_eq!(result.path, out.join("song.flac"));
    assert_eq!(ContentId::of_bytes(&std::fs::read(&result.path).unwrap()), f.id);
    for node in &nodes {
        let sent = node.server.stats().bytes_sent;
        assert!(sent > SIZE as u64 / 10, "a source served only {sent} bytes");
    }
    assert!(result.banned.is_empty());
    assert_eq!(std::fs::read(&f.path).unwrap().len(), SIZE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupting_source_is_dropped_and_the_file_is_still_right() {
    let f = fixture();
    let good: Vec<Node> = (0..2).map(|_| serve(&f.entry, capped(8 * 1024 * 1024))).collect();
    // Bit rot: a copy of the file with one byte flipped in every block, served under the
    // original's id and outboard (the node's records say it is the same file).
    let mut rotten = std::fs::read(&f.path).unwrap();
    for i in (0..SIZE).step_by(256 * 1024) {
        rotten[i + 7] ^= 0xff;
    }
    let rotten_path = f.dir.path().join("rotten.bin");
    std::fs::write(&rotten_path, &rotten).unwrap();
    let bad_entry = Entry { path: rotten_path, ..f.entry.clone() };
    let bad = serve(&bad_entry, capped(8 * 1024 * 1024));
    let mut sources: Vec<SourceAddr> = good.iter().map(|n| n.source).collect();
    sources.insert(0, bad.source);
    let out = f.dir.path().join("out");
    let result = download(&client(), spec(&f, "x.bin", &out), sources, None, None).await.unwrap();
    assert_eq!(ContentId::of_bytes(&std::fs::read(&result.path).unwrap()), f.id);
    assert_eq!(result.banned, vec![bad.source.peer]);
    assert!(
        !result.per_source.iter().any(|s| s.peer == bad.source.peer && s.bytes > 0),
        "no bad byte was kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_dies_midway_loses_its_blocks_to_the_others() {
    let f = fixture();
    let mut nodes: Vec<Node> = (0..3).map(|_| serve(&f.entry, capped(6 * 1024 * 1024))).collect();
    let sources: Vec<SourceAddr> = nodes.iter().map(|n| n.source).collect();
    let out = f.dir.path().join("out");
    let (progress_tx, mut progress) = tokio::sync::watch::channel(Default::default());
    let endpoint = client();
    let job = tokio::spawn({
        let spec = spec(&f, "y.bin", &out);
        async move { download(&endpoint, spec, sources, None, Some(progress_tx)).await }
    });
    progress.wait_for(|p| p.verified_bytes > SIZE as u64 / 5).await.unwrap();
    let victim = nodes.remove(0);
    victim.server.shutdown().await;
    let result = tokio::time::timeout(Duration::from_secs(120), job).await.unwrap().unwrap().unwrap();
    assert_eq!(ContentId::of_bytes(&std::fs::read(&result.path).unwrap()), f.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_download_resumes_without_refetching_verified_blocks() {
    let f = fixture();
    let nodes: Vec<Node> = (0..2).map(|_| serve(&f.entry, capped(8 * 1024 * 1024))).collect();
    let sources: Vec<SourceAddr> = nodes.iter().map(|n| n.source).collect();
    let out = f.dir.path().join("out");
    let (progress_tx, mut progress) = tokio::sync::watch::channel(Default::default());
    let endpoint = client();
    let job = tokio::spawn({
        let (spec, sources) = (spec(&f, "z.bin", &out), sources.clone());
        async move { download(&endpoint, spec, sources, None, Some(progress_tx)).await }
    });
    progress.wait_for(|p| p.verified_bytes > SIZE as u64 / 2).await.unwrap();
    job.abort(); // Like kill -9: no cleanup runs.
    let _ = job.await;
    let verified_before = progress.borrow().verified_bytes;
    let missing = SIZE as u64 - verified_before;

    let result = download(&client(), spec(&f, "z.bin", &out), sources, None, None).await.unwrap();
    assert_eq!(ContentId::of_bytes(&std::fs::read(&result.path).unwrap()), f.id);
    assert!(
        result.fetched_bytes < missing + 16 * 256 * 1024,
        "fetched {} bytes on resume; only {missing} were missing",
        result.fetched_bytes
    );
    assert!(result.fetched_bytes < SIZE as u64 * 3 / 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_name_lands_under_a_safe_name_inside_the_download_dir() {
    let _ = tracing_subscriber::fmt().with_env_filter("debug").with_test_writer().try_init();
    let f = fixture();
    let node = serve(&f.entry, ServeConfig::default());
    let out = f.dir.path().join("out");
    for name in ["../../etc/passwd", "a\nb\u{1b}[0m.mp3"] {
        let result = download(&client(), spec(&f, name, &out), vec![node.source], None, None).await.unwrap();
        assert_eq!(result.path.parent(), Some(out.as_path()), "{name:?} escaped to {:?}", result.path);
        let file_name = result.path.file_name().unwrap().to_str().unwrap();
        assert!(!file_name.contains('/') && !file_name.chars().any(char::is_control), "{file_name:?}");
    }
    assert!(!f.dir.path().join("etc").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_presenting_another_key_is_refused() {
    let f = fixture();
    let node = serve(&f.entry, ServeConfig::default());
    let impostor = SourceAddr::direct(NodeKey::generate().unwrap().peer_id(), node.source.addr);
    let out = f.dir.path().join("out");
    let err = download(&client(), spec(&f, "w.bin", &out), vec![impostor], None, None).await.unwrap_err();
    assert!(err.to_string().contains("outboard") || err.to_string().contains("source"), "{err}");
    assert_eq!(node.server.stats().bytes_sent, 0);
}
