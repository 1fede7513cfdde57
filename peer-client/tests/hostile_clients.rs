//! Hostile downloaders against a real server on loopback, with an honest download from the
//! same source at the same time: the honest one must finish. The hostile clients are written
//! with quinn directly, from other loopback addresses (127.0.0.0/8 all reaches the server), so
//! the server sees them as other hosts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quaver_peer::fetch::download::{DownloadSpec, SourceAddr, download};
use quaver_peer::library::{Entry, MemoryLibrary, OutboardData};
use quaver_peer::serve::{ServeConfig, Server};
use quaver_peer::tls;
use quaver_peer::wire::{FrameDecoder, Request, ResponseHeader, ResponseStatus, encode_request};
use quaver_shared::{ContentId, NodeKey};
use tokio::task::JoinSet;

const SIZE: usize = 4 * 1024 * 1024;
/// Generous: uncapped on loopback, the download takes well under a second when it can run.
const FINISH_WITHIN: Duration = Duration::from_secs(90);

struct Source {
    _dir: tempfile::TempDir,
    id: ContentId,
    work: std::path::PathBuf,
    server: Server,
    addr: SourceAddr,
    key: NodeKey,
}

fn source() -> Source {
    source_with(ServeConfig::default())
}

fn source_with(config: ServeConfig) -> Source {
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<u8> =
        (0..SIZE).map(|i| (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes()[7]).collect();
    let path = dir.path().join("source.bin");
    std::fs::write(&path, &data).unwrap();
    let ob =
        bao_tree::io::outboard::PreOrderMemOutboard::create(&data, quaver_peer::fetch::verify::block_size());
    let id = ContentId::of_bytes(&data);
    let entry = Entry { id, path, size: SIZE as u64, outboard: OutboardData::Bytes(ob.data.into()) };
    let library = Arc::new(MemoryLibrary::default());
    library.insert(entry);
    let key = NodeKey::generate().unwrap();
    let endpoint = tls::endpoint("127.0.0.1:0".parse().unwrap(), &key).unwrap();
    let addr = SourceAddr::direct(key.peer_id(), endpoint.local_addr().unwrap());
    let server = Server::spawn(endpoint, library, config);
    let work = dir.path().join("work");
    Source { _dir: dir, id, work, server, addr, key }
}

/// The honest downloader: the real download task, from 127.0.0.1, with this source only.
async fn honest_download(src: &Source) {
    let me = NodeKey::generate().unwrap();
    let client = tls::endpoint("127.0.0.1:0".parse().unwrap(), &me).unwrap();
    let out = src.work.join("out");
    let spec = DownloadSpec {
        id: src.id,
        size: SIZE as u64,
        name: "song.flac".into(),
        out_dir: out.clone(),
        work_dir: src.work.clone(),
        wait_for_sources: Duration::from_secs(60),
        identity: Some(tls::ClientAuth::new(&me).unwrap()),
        rendezvous: None,
    };
    let result = tokio::time::timeout(FINISH_WITHIN, download(&client, spec, vec![src.addr], None, None))
        .await
        .expect("the honest download never finished")
        .expect("the honest download failed");
    assert_eq!(ContentId::of_bytes(&std::fs::read(&result.path).unwrap()), src.id);
}

/// A connection that grants almost no flow-control credit (256 bytes per stream) and, since
/// it reads no body, never grants more; keep-alives keep it from timing out.
async fn stingy_connection(endpoint: &quinn::Endpoint, src: &Source) -> Option<quinn::Connection> {
    stingy_connection_as(endpoint, src, None).await
}

/// [`stingy_connection`] proving `me` (a node key) to the server.
async fn stingy_connection_as(
    endpoint: &quinn::Endpoint,
    src: &Source,
    me: Option<&tls::ClientAuth>,
) -> Option<quinn::Connection> {
    let mut transport = quinn::TransportConfig::default();
    transport
        .stream_receive_window(256u32.into())
        .receive_window((64u32 * 1024).into())
        .keep_alive_interval(Some(Duration::from_millis(500)));
    let mut config = tls::client_config_as(src.key.peer_id(), me).unwrap();
    config.transport_config(Arc::new(transport));
    endpoint.connect_with(config, src.addr.addr, tls::SERVER_NAME).unwrap().await.ok()
}

/// Asks for the file's first MiB (the longest range a request may ask for) again and again and never reads a body: an answer holds its slot
/// until the server gives up on it, and the next request follows at once. A BUSY answer is
/// retried after 20 ms, however long the server said to wait.
async fn hog(conn: quinn::Connection, id: ContentId) {
    let request = encode_request(&Request::range(id, 0, 1 << 20).unwrap());
    for _ in 0..100_000 {
        let Ok((mut send, mut recv)) = conn.open_bi().await else { return };
        if send.write_all(&request).await.is_err() {
            return;
        }
        let _ = send.finish();
        // The header only (a few bytes of the 256 granted): never the body.
        let mut decoder = FrameDecoder::<ResponseHeader>::new();
        let mut header = None;
        let mut buf = [0u8; 16];
        while header.is_none() {
            match recv.read(&mut buf).await {
                Ok(Some(n)) => header = decoder.decode(&mut &buf[..n]).ok().flatten(),
                _ => break,
            }
        }
        match header.map(|h| h.status) {
            Some(ResponseStatus::Ok) => {
                let _ = recv.received_reset().await;
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_grants_credit_cannot_keep_an_honest_download_from_finishing() {
    let src = source();
    let endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 2], 0))).unwrap();
    let conn = stingy_connection(&endpoint, &src).await.expect("the first connection is admitted");
    let mut hogs = JoinSet::new();
    for _ in 0..16 {
        hogs.spawn(hog(conn.clone(), src.id));
    }
    // Let the hogs take what they can before the honest peer arrives.
    tokio::time::sleep(Duration::from_millis(500)).await;
    honest_download(&src).await;
    assert!(hogs.try_join_next().is_none(), "the hogs were still at it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_200_connections_cannot_keep_an_honest_download_from_finishing() {
    let src = source();
    let endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 3], 0))).unwrap();
    let mut hogs = JoinSet::new();
    let mut connected = 0;
    for _ in 0..200 {
        if let Some(conn) = stingy_connection(&endpoint, &src).await {
            connected += 1;
            hogs.spawn(hog(conn, src.id));
        }
    }
    assert!(connected >= 1, "no connection got in at all");
    tokio::time::sleep(Duration::from_millis(500)).await;
    honest_download(&src).await;
    assert!(hogs.try_join_next().is_none(), "the hogs were still at it");
}

/// Holds one upload slot: asks for the first MiB and reads nothing, until the connection is
/// closed. Returns once the server has answered OK (the slot is taken).
async fn hold_a_slot(conn: &quinn::Connection, id: ContentId) -> (quinn::SendStream, quinn::RecvStream) {
    let (status, streams) = ask_for_a_slot(conn, id).await;
    assert_eq!(status, ResponseStatus::Ok, "the slot was not granted");
    streams
}

/// Asks for the first MiB and reads the answer's header only: OK (the slot is held until the
/// connection closes) or BUSY.
async fn ask_for_a_slot(
    conn: &quinn::Connection,
    id: ContentId,
) -> (ResponseStatus, (quinn::SendStream, quinn::RecvStream)) {
    let request = encode_request(&Request::range(id, 0, 1 << 20).unwrap());
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&request).await.unwrap();
    let _ = send.finish();
    let mut decoder = FrameDecoder::<ResponseHeader>::new();
    let mut buf = [0u8; 16];
    loop {
        let n = recv.read(&mut buf).await.unwrap().expect("the server closed before answering");
        if let Some(header) = decoder.decode(&mut &buf[..n]).unwrap() {
            return (header.status, (send, recv));
        }
    }
}

/// Every slot of the only source is taken when the download asks for the outboard: BUSY is
/// backpressure, so the download waits for a slot and finishes once one frees up (here when the
/// two holders leave, after a second), instead of failing with "no source sent a valid
/// outboard".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_whose_only_source_is_busy_waits_for_a_slot_and_finishes() {
    let src = source_with(ServeConfig { upload_slots: 2, ..ServeConfig::default() });
    // One address may hold half the slots: two holders from two addresses take both.
    let mut holders = Vec::new();
    for ip in [[127, 0, 0, 4], [127, 0, 0, 5]] {
        let endpoint = quinn::Endpoint::client(SocketAddr::from((ip, 0))).unwrap();
        let conn = stingy_connection(&endpoint, &src).await.expect("admitted");
        let streams = hold_a_slot(&conn, src.id).await;
        holders.push((endpoint, conn, streams));
    }
    assert_eq!(src.server.free_slots(), 0, "both slots are held");
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        for (_, conn, _) in &holders {
            conn.close(0u32.into(), b"done");
        }
    });
    honest_download(&src).await;
    assert!(src.server.stats().busy_answers >= 1, "the download never met a busy source");
    release.await.unwrap();
}

/// One node key from two addresses: its slots count against its `PeerId` over both, so it
/// holds half the slots, not half per address, and an honest peer still finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_peer_from_two_addresses_holds_only_its_share_of_the_slots() {
    let src = source_with(ServeConfig { upload_slots: 4, ..ServeConfig::default() });
    let hog = tls::ClientAuth::new(&NodeKey::generate().unwrap()).unwrap();
    let (mut held, mut connections) = (Vec::new(), Vec::new());
    let mut granted = 0;
    for ip in [[127, 0, 0, 6], [127, 0, 0, 7]] {
        let endpoint = quinn::Endpoint::client(SocketAddr::from((ip, 0))).unwrap();
        let conn = stingy_connection_as(&endpoint, &src, Some(&hog)).await.expect("admitted");
        for _ in 0..2 {
            let (status, streams) = ask_for_a_slot(&conn, src.id).await;
            granted += usize::from(status == ResponseStatus::Ok);
            held.push(streams);
        }
        connections.push((endpoint, conn));
    }
    assert_eq!(granted, 2, "one peer over two addresses got {granted} of 4 slots");
    assert_eq!(src.server.free_slots(), 2);
    honest_download(&src).await;
}
