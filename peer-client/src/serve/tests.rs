//! The server over real loopback QUIC, driven by a raw client speaking the wire protocol.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bao_tree::BlockSize;
use bao_tree::io::outboard::PreOrderMemOutboard;
use quaver_shared::{ContentId, NodeKey};

use super::*;
use crate::library::{CHUNK_LOG, Entry, MemoryLibrary, OutboardData};
use crate::tls;
use crate::wire::{FrameDecoder, Request, ResponseHeader, ResponseStatus, encode_request};

/// A served file: 300 KiB and a bit, so ranges and the outboard span several pieces and the
/// last chunk group is partial.
const FILE_LEN: usize = 300 * 1024 + 123;

struct Fixture {
    server: Server,
    key: NodeKey,
    conn: quinn::Connection,
    entry: Entry,
    data: Vec<u8>,
    _dir: tempfile::TempDir,
}

fn file_entry(dir: &tempfile::TempDir, len: usize, seed: u8) -> (Entry, Vec<u8>) {
    let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8 ^ seed).collect();
    let path = dir.path().join(format!("song-{seed}.flac"));
    std::fs::write(&path, &data).unwrap();
    let outboard = PreOrderMemOutboard::create(&data, BlockSize::from_chunk_log(CHUNK_LOG));
    // The ContentId is the BLAKE3 of the file: the outboard's root must be exactly that.
    assert_eq!(outboard.root.as_bytes(), blake3::hash(&data).as_bytes());
    let id = ContentId::from_array(*outboard.root.as_bytes());
    // Odd seeds keep the outboard in a file, as the store does; even ones in memory.
    let outboard = if seed % 2 == 1 {
        let ob_path = path.with_extension("outboard");
        std::fs::write(&ob_path, &outboard.data).unwrap();
        OutboardData::File { path: ob_path, len: outboard.data.len() as u64 }
    } else {
        OutboardData::Bytes(outboard.data.into())
    };
    (Entry { id, path, size: len as u64, outboard }, data)
}

/// The outboard's bytes, wherever the entry keeps them.
fn outboard_of(entry: &Entry) -> Vec<u8> {
    match &entry.outboard {
        OutboardData::Bytes(b) => b.to_vec(),
        OutboardData::File { path, .. } => std::fs::read(path).unwrap(),
    }
}

async fn fixture(config: ServeConfig) -> Fixture {
    fixture_with(config, FILE_LEN).await
}

async fn fixture_with(config: ServeConfig, file_len: usize) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let (entry, data) = file_entry(&dir, file_len, 7);
    let library = MemoryLibrary::default();
    library.insert(entry.clone());
    let key = NodeKey::generate().unwrap();
    let endpoint = tls::endpoint(SocketAddr::from(([127, 0, 0, 1], 0)), &key).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let server = Server::spawn(endpoint, Arc::new(library), config);
    let conn = connect(addr, &key).await;
    Fixture { server, key, conn, entry, data, _dir: dir }
}

async fn connect(addr: SocketAddr, key: &NodeKey) -> quinn::Connection {
    let client = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    tls::connect(&client, addr, key.peer_id()).await.unwrap()
}

/// Sends `req` on a fresh stream.
async fn open(conn: &quinn::Connection, req: &Request) -> quinn::RecvStream {
    let (mut send, recv) = conn.open_bi().await.unwrap();
    send.write_all(&encode_request(req)).await.unwrap();
    send.finish().unwrap();
    recv
}

/// Reads the header; returns it with the body bytes that came in the same reads.
async fn read_header(recv: &mut quinn::RecvStream) -> (ResponseHeader, Vec<u8>) {
    let mut decoder = FrameDecoder::<ResponseHeader>::new();
    loop {
        let chunk = recv.read_chunk(64 * 1024, true).await.unwrap().expect("stream ended before a header");
        let mut input = &chunk.bytes[..];
        if let Some(header) = decoder.decode(&mut input).unwrap() {
            return (header, input.to_vec());
        }
    }
}

/// One whole exchange: the header (checked against the request, as a client must) and the body.
async fn ask(conn: &quinn::Connection, req: &Request) -> (ResponseHeader, Vec<u8>) {
    let mut recv = open(conn, req).await;
    let (header, mut body) = read_header(&mut recv).await;
    header.check_answers(req).unwrap();
    body.extend(recv.read_to_end(4 << 20).await.unwrap());
    assert_eq!(body.len() as u64, header.body_len, "body length differs from the header");
    (header, body)
}

#[tokio::test]
async fn serves_outboard_ranges_have_and_status() {
    let f = fixture(ServeConfig::default()).await;
    let id = f.entry.id;

    let (header, outboard) = ask(&f.conn, &Request::Outboard(id)).await;
    assert_eq!((header.status, header.file_size), (ResponseStatus::Ok, f.entry.size));
    assert_eq!(outboard, outboard_of(&f.entry));

    // An aligned range in the middle, the file's unaligned tail, and a range longer than one
    // read from disk and not a multiple of it.
    let ranges = [
        (16 * 1024, 128 * 1024),
        (256 * 1024, FILE_LEN as u64 - 256 * 1024),
        (16 * 1024, FILE_LEN as u64 - 16 * 1024),
    ];
    for (offset, len) in ranges {
        let (header, body) = ask(&f.conn, &Request::range(id, offset, len).unwrap()).await;
        assert_eq!(header.status, ResponseStatus::Ok);
        assert_eq!(body, f.data[offset as usize..(offset + len) as usize]);
    }

    let (header, _) = ask(&f.conn, &Request::Have(id)).await;
    assert_eq!(header.ranges, vec![0..f.entry.size]);
    let (header, _) = ask(&f.conn, &Request::Status).await;
    assert_eq!((header.free_slots, header.queue_len), (8, 0));

    let stats = f.server.stats();
    assert_eq!(stats.bytes_sent, f.entry.outboard.len() + ranges.iter().map(|(_, len)| len).sum::<u64>());
    assert_eq!((stats.requests, stats.busy_answers), (6, 0));
}

#[tokio::test]
async fn an_unknown_file_is_not_found() {
    let f = fixture(ServeConfig::default()).await;
    let unknown = ContentId::of_bytes(b"not shared here");
    for req in [Request::Outboard(unknown), Request::Have(unknown), Request::range(unknown, 0, 1).unwrap()] {
        assert_eq!(ask(&f.conn, &req).await.0.status, ResponseStatus::NotFound);
    }
    // A range takes its slot before the look-up; a miss gives it back.
    let (status, _) = ask(&f.conn, &Request::Status).await;
    assert_eq!(status.free_slots, 8);
}

#[tokio::test]
async fn a_range_past_the_end_is_a_bad_request_that_names_the_file_size() {
    let f = fixture(ServeConfig::default()).await;
    let req = Request::range(f.entry.id, f.entry.size - 10, 11).unwrap();
    let (header, body) = ask(&f.conn, &req).await;
    assert!(matches!(header.status, ResponseStatus::BadRequest { .. }), "{header:?}");
    assert_eq!((header.file_size, body.len()), (f.entry.size, 0));
    let (status, _) = ask(&f.conn, &Request::Status).await;
    assert_eq!(status.free_slots, 8, "the refused range gave its slot back");
}

#[tokio::test]
async fn a_malformed_stream_is_refused_alone_and_the_connection_goes_on() {
    let f = fixture(ServeConfig::default()).await;

    // A length prefix of 4 GiB followed by garbage: reset before a byte of it is buffered.
    let (mut send, mut recv) = f.conn.open_bi().await.unwrap();
    send.write_all(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3]).await.unwrap();
    let _ = send.finish();
    let err = recv.read_to_end(1024).await.unwrap_err();
    assert!(
        matches!(err, quinn::ReadToEndError::Read(quinn::ReadError::Reset(code)) if code == RESET_BAD_FRAME),
        "{err:?}"
    );

    // A well-framed request that breaks a rule (a 3-byte id) gets a BAD_REQUEST answer.
    let (mut send, mut recv) = f.conn.open_bi().await.unwrap();
    let bad = crate::wire::pb::Request {
        kind: Some(crate::wire::pb::request::Kind::Have(crate::wire::pb::GetHave {
            content_id: vec![1, 2, 3],
        })),
    };
    let body = prost::Message::encode_to_vec(&bad);
    send.write_all(&(body.len() as u32).to_be_bytes()).await.unwrap();
    send.write_all(&body).await.unwrap();
    send.finish().unwrap();
    let (header, _) = read_header(&mut recv).await;
    assert!(matches!(header.status, ResponseStatus::BadRequest { .. }), "{header:?}");

    // The same connection still serves.
    let (header, body) = ask(&f.conn, &Request::range(f.entry.id, 0, 1000).unwrap()).await;
    assert_eq!(header.status, ResponseStatus::Ok);
    assert_eq!(body, f.data[..1000]);
}

#[tokio::test]
async fn with_no_upload_slots_every_data_request_is_busy_but_have_and_status_answer() {
    let f = fixture(ServeConfig { upload_slots: 0, ..ServeConfig::default() }).await;
    let id = f.entry.id;
    for (i, req) in [Request::Outboard(id), Request::range(id, 0, 1).unwrap()].iter().enumerate() {
        let (header, body) = ask(&f.conn, req).await;
        let ResponseStatus::Busy { queue_position, estimated_wait } = header.status else {
            panic!("{header:?}")
        };
        assert_eq!(queue_position as usize, i + 1);
        assert!(estimated_wait > Duration::ZERO && body.is_empty());
    }
    assert_eq!(ask(&f.conn, &Request::Have(id)).await.0.status, ResponseStatus::Ok);
    let (status, _) = ask(&f.conn, &Request::Status).await;
    assert_eq!((status.free_slots, status.queue_len), (0, 2));
    let stats = f.server.stats();
    assert_eq!((stats.busy_answers, stats.bytes_sent), (2, 0));
}

#[tokio::test]
async fn a_capped_upload_holds_its_slot_so_others_are_told_busy_until_it_is_done() {
    // 1 MiB/s with a 256 KiB burst: a 1 MiB file range takes about 0.75 s.
    let config = ServeConfig { upload_slots: 1, max_upload_bytes_per_sec: Some(1 << 20) };
    let f = fixture_with(config, 1 << 20).await;
    let (conn, big, big_data) = (&f.conn, &f.entry, &f.data);

    let start = Instant::now();
    let slow = Request::range(big.id, 0, 1 << 20).unwrap();
    let mut recv = open(conn, &slow).await;
    let (header, mut body) = read_header(&mut recv).await;
    assert_eq!(header.status, ResponseStatus::Ok);

    // The slot is taken from before the header until the body is acknowledged.
    let (busy, _) = ask(conn, &Request::range(big.id, 0, 1).unwrap()).await;
    assert!(matches!(busy.status, ResponseStatus::Busy { queue_position: 1, .. }), "{busy:?}");
    // The asker holds its address's whole share (the one slot), so it waits in its own queue,
    // not in the one the server reports.
    let (status, _) = ask(conn, &Request::Status).await;
    assert_eq!((status.free_slots, status.queue_len), (0, 0));

    body.extend(recv.read_to_end(2 << 20).await.unwrap());
    assert_eq!(&body, big_data);
    assert!(start.elapsed() >= Duration::from_millis(600), "the cap was not applied: {:?}", start.elapsed());

    // The slot frees once the peer's acknowledgement arrives, which may trail the last byte.
    let mut freed = false;
    for _ in 0..40 {
        if ask(conn, &Request::Status).await.0.free_slots == 1 {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(freed, "the slot was never released");
    assert_eq!(f.server.stats().busy_answers, 1);
}

#[tokio::test]
async fn a_file_that_changed_on_disk_is_no_longer_served() {
    let f = fixture(ServeConfig::default()).await;
    std::fs::write(&f.entry.path, b"re-encoded since it was hashed").unwrap();
    let (header, _) = ask(&f.conn, &Request::range(f.entry.id, 0, 10).unwrap()).await;
    assert_eq!(header.status, ResponseStatus::NotFound);
}

#[tokio::test]
async fn shutdown_finishes_answers_in_progress_then_closes_and_refuses_new_connections() {
    // A capped 1 MiB range is still being sent when shutdown starts.
    let config = ServeConfig { max_upload_bytes_per_sec: Some(1 << 20), ..ServeConfig::default() };
    let Fixture { server, key, conn, entry, data, _dir } = fixture_with(config, 1 << 20).await;
    let addr = server.endpoint().local_addr().unwrap();
    let mut recv = open(&conn, &Request::range(entry.id, 0, 1 << 20).unwrap()).await;
    let (header, mut body) = read_header(&mut recv).await;
    assert_eq!(header.status, ResponseStatus::Ok);

    let shutdown = tokio::spawn(server.shutdown());
    body.extend(recv.read_to_end(2 << 20).await.unwrap());
    assert_eq!(body, data, "the answer in progress was cut short");
    tokio::time::timeout(Duration::from_secs(10), shutdown).await.unwrap().unwrap();

    // The connection was closed by the server...
    assert!(tokio::time::timeout(Duration::from_secs(5), conn.closed()).await.is_ok());
    // ...and nobody gets in any more, even pinning the right key.
    let client = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let attempt = tokio::time::timeout(Duration::from_secs(1), tls::connect(&client, addr, key.peer_id()));
    assert!(!matches!(attempt.await, Ok(Ok(_))));
}

/// A client on loopback address `ip` (127.0.0.0/8 all reaches the server) whose flow-control
/// windows are tiny, so it grants almost no credit for answer bodies and, reading nothing,
/// never grants more; keep-alives keep its connection from timing out.
async fn stingy_client(ip: [u8; 4], server: SocketAddr, key: &NodeKey) -> quinn::Connection {
    let endpoint = quinn::Endpoint::client(SocketAddr::from((ip, 0))).unwrap();
    stingy_connection(&endpoint, server, key).await.unwrap()
}

async fn stingy_connection(
    endpoint: &quinn::Endpoint,
    server: SocketAddr,
    key: &NodeKey,
) -> Result<quinn::Connection, quinn::ConnectionError> {
    let mut transport = quinn::TransportConfig::default();
    transport
        .stream_receive_window(256u32.into())
        .receive_window((64u32 * 1024).into())
        .keep_alive_interval(Some(Duration::from_millis(500)));
    let mut config = tls::client_config(key.peer_id()).unwrap();
    config.transport_config(Arc::new(transport));
    endpoint.connect_with(config, server, tls::SERVER_NAME).unwrap().await
}

#[tokio::test]
async fn an_answer_whose_peer_takes_no_bytes_is_reset_and_frees_its_slot() {
    let f = fixture_with(ServeConfig::default(), 1 << 20).await;
    let addr = f.server.endpoint().local_addr().unwrap();
    let stingy = stingy_client([127, 0, 0, 2], addr, &f.key).await;
    let mut recv = open(&stingy, &Request::range(f.entry.id, 0, 1 << 20).unwrap()).await;
    let (status, _) = ask(&f.conn, &Request::Status).await;
    assert_eq!(status.free_slots, 7, "the stingy request holds a slot");

    // Nothing is read: the body cannot move, and the server gives up on it.
    let reset = tokio::time::timeout(Duration::from_secs(30), recv.received_reset()).await;
    assert_eq!(reset.expect("never reset").unwrap(), Some(RESET_STALLED));
    let (status, _) = ask(&f.conn, &Request::Status).await;
    assert_eq!(status.free_slots, 8, "the stalled answer gave its slot back");
    assert_eq!(f.server.stats().stalled_answers, 1);
    assert!(stingy.close_reason().is_none(), "only the stream was reset, not the connection");
}

#[tokio::test]
async fn one_address_cannot_take_every_slot() {
    let f = fixture_with(ServeConfig::default(), 1 << 20).await;
    let addr = f.server.endpoint().local_addr().unwrap();
    let stingy = stingy_client([127, 0, 0, 2], addr, &f.key).await;
    let req = Request::range(f.entry.id, 0, 1 << 20).unwrap();
    let mut held = Vec::new();
    let mut busy = 0;
    for _ in 0..8 {
        let mut recv = open(&stingy, &req).await;
        let (header, _) = read_header(&mut recv).await;
        match header.status {
            ResponseStatus::Ok => held.push(recv),
            ResponseStatus::Busy { .. } => busy += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((held.len(), busy), (4, 4), "half the slots for one address");
    // Another address still gets a whole range, while the stingy streams sit unread.
    let (header, body) = ask(&f.conn, &Request::range(f.entry.id, 0, 1 << 20).unwrap()).await;
    assert_eq!(header.status, ResponseStatus::Ok);
    assert_eq!(body, f.data);
}

#[tokio::test]
async fn connections_from_one_address_are_bounded_and_others_still_get_in() {
    let f = fixture(ServeConfig::default()).await;
    let addr = f.server.endpoint().local_addr().unwrap();
    let endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 3], 0))).unwrap();
    let mut open_connections = Vec::new();
    let mut refused = 0;
    for _ in 0..200 {
        match stingy_connection(&endpoint, addr, &f.key).await {
            Ok(conn) => open_connections.push(conn),
            Err(quinn::ConnectionError::ConnectionClosed(_)) => refused += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(open_connections.len(), 32, "{refused} refused");
    assert_eq!(f.server.stats().refused_connections, 168);
    // Another address connects and is served.
    let other = connect(addr, &f.key).await;
    let (header, body) = ask(&other, &Request::range(f.entry.id, 0, 1000).unwrap()).await;
    assert_eq!(header.status, ResponseStatus::Ok);
    assert_eq!(body, f.data[..1000]);
    // A closed connection makes room for a new one from the crowded address.
    open_connections.pop().unwrap().close(0u32.into(), b"done");
    let deadline = Instant::now() + Duration::from_secs(10);
    let reopened = loop {
        match stingy_connection(&endpoint, addr, &f.key).await {
            Ok(conn) => break conn,
            Err(_) => assert!(Instant::now() < deadline, "the closed connection's place never came back"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(reopened.close_reason().is_none());
}

#[tokio::test]
async fn request_streams_from_one_address_are_bounded_across_its_connections() {
    let f = fixture(ServeConfig::default()).await;
    let addr = f.server.endpoint().local_addr().unwrap();
    let endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 4], 0))).unwrap();
    let conns = [
        stingy_connection(&endpoint, addr, &f.key).await.unwrap(),
        stingy_connection(&endpoint, addr, &f.key).await.unwrap(),
    ];
    // 300 streams that each send one byte of a request and then nothing: each costs the
    // server a waiting task until its request timeout.
    let mut streams = Vec::new();
    for i in 0..300 {
        let (mut send, recv) = conns[i % 2].open_bi().await.unwrap();
        send.write_all(&[0]).await.unwrap();
        streams.push((send, recv));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while f.server.stats().refused_streams < 300 - 256 {
        assert!(Instant::now() < deadline, "{:?}", f.server.stats());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The refused ones were told BUSY without their request being read.
    let (_, mut recv) = streams.pop().unwrap();
    let (header, _) = read_header(&mut recv).await;
    assert!(matches!(header.status, ResponseStatus::Busy { .. }), "{header:?}");
    // Another address is served meanwhile.
    let (header, _) = ask(&f.conn, &Request::Have(f.entry.id)).await;
    assert_eq!(header.status, ResponseStatus::Ok);
    assert_eq!(f.server.stats().refused_streams, 300 - 256);
}
