//! Load benchmark of the directory server (issue 5, "directory load"): P simulated peers share F
//! files whose titles and artists are the real songs of `../shared/data/songs`, then a mixed
//! workload of heartbeats, searches and locates runs over gRPC.
//!
//! ```text
//! cargo bench --workspace --bench directory_load                  # 10,000 peers, 1,000,000 files
//! QUAVER_BENCH_PEERS=1000 QUAVER_BENCH_FILES=38552 cargo bench --workspace --bench directory_load
//! ```
//!
//! It measures, it does not judge: nothing is asserted about speed. Every figure comes from the
//! raw samples of this one run, and the report ends with a Markdown table. Settings (env):
//! `QUAVER_BENCH_PEERS` (P, default 10,000), `QUAVER_BENCH_FILES` (F, default 1,000,000),
//! `QUAVER_BENCH_MIX_SECONDS` (default 20), `QUAVER_BENCH_MIX_CLIENTS` (default 32),
//! `DIRECTORY_LOAD_TASKS` (announce concurrency, default 16), `QUAVER_BENCH_DATA_DIR` (an empty
//! or absent directory for the server's data, kept after the run; default: a temporary one).
//!
//! The files: file `f` is a copy of song `f mod n` (n = 38,552 songs). Copy 0 is the song as
//! before (`{artist} - {title}.mp3`); copies 1, 2, ... are other rips of it: their own content
//! id, another encoding (MP3 at 128-320 kbps, FLAC, AAC, Vorbis, Opus), another file-name style,
//! a duration a second or so off, and a size that follows from bitrate and duration. With F < n
//! only the first F songs are used.
//!
//! The shares: peer `i` shares files i, i+P, i+2P, ... (so every file is shared, F/P per peer on
//! average) plus a quarter as many extra picks skewed towards popular songs (the list is sorted
//! by popularity; a pick is song ⌊n·u³⌋, any of its copies), so popular songs have many sources.
//!
//! 1. Index build: all songs upserted into a fresh on-disk `SearchIndex` and committed
//!    (median of 3 runs).
//! 2. The real `quaver-directory` binary, started as a child process on 127.0.0.1:0.
//! 3. Announce + Publish by the P peers on `DIRECTORY_LOAD_TASKS` concurrent tasks (4 channels).
//!    Each peer has its own node key and a live QUIC endpoint on 127.0.0.1, so the directory's
//!    connect-back check of its Announce passes (the handshake is part of the measured time).
//!    The directory dials a peer back only at Announce, so the endpoint is closed once the
//!    Announce answered `reachable`: at most one endpoint per task is open at a time, which keeps
//!    the process far below `RLIMIT_NOFILE` even for 100k peers. Locate still hands out those
//!    addresses (nobody dials them here).
//! 4. How long the index takes to make every catalog file searchable after the last Publish,
//!    then how long until the server is idle (its background segment merges done).
//! 5. Search latency (sequential), throughput (8 clients) and recall@10, for queries derived
//!    from every 97th song: its exact title, its first artist, a 2-character CJK fragment.
//! 6. Locate latency (sequential) and throughput (16 clients) over 2,000 content ids spread over
//!    all F files; Heartbeat throughput (16 clients): as calls, and as beats on 16 open
//!    KeepAlive streams (how peers beat).
//! 7. The mixed workload: `QUAVER_BENCH_MIX_CLIENTS` closed-loop clients (one connection each)
//!    for `QUAVER_BENCH_MIX_SECONDS`, each call drawn 70 % Heartbeat (a beat on the client's
//!    KeepAlive stream, as peers beat), 15 % Search, 15 % Locate; requests/s and p50/p99 per
//!    kind.
//! 8. Server memory (VmRSS, VmHWM), SIGTERM-to-exit time, and restart-to-serving time on the
//!    same data dir.
//!
//! Every call and every loop is bounded: a server that stops answering ends the run with an
//! error, after the table of what was measured so far.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use quaver_directory::index::{IndexDoc, SearchIndex};
use quaver_shared::directory::v1::directory_client::DirectoryClient;
use quaver_shared::directory::v1::*;
use quaver_shared::limits::{MAX_BATCH_FILES, MAX_QUERY_BYTES};
use quaver_shared::{ContentId, NodeKey, ShareDigest};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tonic::transport::Channel;

const SONGS_TSV: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data/songs/songs.tsv");
const HEADER: &str = "song_id\ttitle\tartists\tpopularity\tplaylist_count";
const INDEX_RUNS: usize = 3;
const DEFAULT_PEERS: usize = 10_000;
const DEFAULT_FILES: usize = 1_000_000;
/// Extra (popular) picks per peer, as a fraction of its F/P stride files.
const EXTRA_DIVISOR: usize = 4;
const CHANNELS: usize = 4;
const QUERY_STRIDE: usize = 97;
const SEARCH_ROUNDS: usize = 3;
const SEARCH_CLIENTS: usize = 8;
const LOCATE_IDS: usize = 2000;
const LOCATE_CLIENTS: usize = 16;
const HEARTBEAT_CLIENTS: usize = 16;
/// The mixed workload: percent of Heartbeat and Search calls (the rest are Locates).
const MIX_HEARTBEAT: u64 = 70;
const MIX_SEARCH: u64 = 15;
const MIX_LOCATE_IDS: usize = 20_000;
/// Bounds: one call, one throughput worker, starting peers, the index catch-up, the server part.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
const CALLS_PER_WORKER: usize = 2_000_000;
const ANNOUNCE_LIMIT: Duration = Duration::from_secs(1800);
const CATCH_UP_LIMIT: Duration = Duration::from_secs(600);
const SERVER_LIMIT: Duration = Duration::from_secs(3000);
const MAX_MIX_SECONDS: u64 = 300;

type Client = DirectoryClient<Channel>;
type Report = Vec<(String, String)>;

/// What one run simulates.
#[derive(Clone, Copy)]
struct Scale {
    /// P: simulated peers.
    peers: usize,
    /// F: distinct files in the catalog.
    files: usize,
    /// n: the real songs (titles and artists of every file).
    songs: usize,
}

struct Song {
    /// The song id of the TSV, seed of every copy's content id.
    id: String,
    first_artist: String,
    cid: ContentId,
    /// Title, artists joined by " / ", file name "{artist} - {title}.mp3", and deterministic,
    /// plausible size (4-10 MB), duration and bitrate derived from the content id.
    info: FileInfo,
}

fn low_u64(cid: &ContentId) -> u64 {
    let b = cid.as_bytes();
    u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

fn song(id: &str, title: &str, artists: &str) -> Song {
    let cid = ContentId::of_bytes(id.as_bytes());
    let h = low_u64(&cid);
    let artist = artists.replace('|', " / ");
    let info = FileInfo {
        content_id: cid.to_vec(),
        size: 4_000_000 + h % 6_000_000,
        file_name: format!("{artist} - {title}.mp3"),
        title: title.to_owned(),
        artist,
        album: String::new(),
        duration_ms: 120_000 + (h >> 24) as u32 % 240_000,
        bitrate_kbps: [128, 192, 256, 320][(h >> 56) as usize % 4],
        media_kind: MediaKind::Audio as i32,
    };
    let first_artist = artists.split('|').next().unwrap_or_default().to_owned();
    Song { id: id.to_owned(), first_artist, cid, info }
}

fn load_songs(path: &Path) -> anyhow::Result<Vec<Song>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut lines = text.lines();
    anyhow::ensure!(lines.next() == Some(HEADER), "{}: unexpected header", path.display());
    let parse = |(n, line): (usize, &str)| {
        let mut fields = line.split('\t');
        match (fields.next(), fields.next(), fields.next()) {
            (Some(id), Some(title), Some(artists)) => Ok(song(id, title, artists)),
            _ => Err(anyhow::anyhow!("{} line {}: fewer than 3 fields", path.display(), n + 2)),
        }
    };
    lines.enumerate().map(parse).collect()
}

/// Encodings of the copies: extension and nominal bitrate (FLAC's varies around it).
const ENCODINGS: [(&str, u32); 8] = [
    ("mp3", 128),
    ("mp3", 192),
    ("mp3", 256),
    ("mp3", 320),
    ("flac", 900),
    ("m4a", 256),
    ("ogg", 160),
    ("opus", 128),
];

/// File `f`'s content id: song `f mod n`'s for copy 0, a new one for every other copy.
fn file_cid(songs: &[Song], f: usize) -> ContentId {
    let (song, copy) = (&songs[f % songs.len()], f / songs.len());
    if copy == 0 { song.cid } else { ContentId::of_bytes(format!("{}#{copy}", song.id).as_bytes()) }
}

/// File `f`: copy `f / n` of song `f mod n` (see the module comment).
fn file_info(songs: &[Song], f: usize) -> FileInfo {
    let (song, copy) = (&songs[f % songs.len()], f / songs.len());
    if copy == 0 {
        return song.info.clone();
    }
    let cid = file_cid(songs, f);
    let h = low_u64(&cid);
    let (ext, nominal) = ENCODINGS[h as usize % ENCODINGS.len()];
    let kbps = if ext == "flac" { 700 + (h >> 8) as u32 % 400 } else { nominal };
    let duration_ms = (song.info.duration_ms + (h >> 20) as u32 % 3000).saturating_sub(1500);
    let (title, artist) = (&song.info.title, &song.info.artist);
    let file_name = match (h >> 32) % 5 {
        0 => format!("{artist} - {title}.{ext}"),
        1 => format!("{title}.{ext}"),
        2 => format!("{:02} {title}.{ext}", 1 + (h >> 40) % 20),
        3 => format!("{artist} - {title} ({kbps} kbps).{ext}"),
        _ => format!("{artist} - {title}.{ext}").replace(' ', "_"),
    };
    FileInfo {
        content_id: cid.to_vec(),
        size: u64::from(kbps) * 125 * u64::from(duration_ms) / 1000 + 4096 + (h >> 48) % 65_536,
        file_name,
        title: title.clone(),
        artist: artist.clone(),
        album: String::new(),
        duration_ms,
        bitrate_kbps: kbps,
        media_kind: MediaKind::Audio as i32,
    }
}

/// A 64-bit LCG step (Knuth's MMIX constants).
fn lcg(x: &mut u64) -> u64 {
    *x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
    *x
}

/// A file of a popular song: song ⌊n·u³⌋ (the TSV is sorted by popularity), any of its copies.
fn popular_file(scale: Scale, x: &mut u64) -> usize {
    let songs = scale.songs.min(scale.files);
    let u = (lcg(x) >> 11) as f64 / (1u64 << 53) as f64;
    let song = ((u * u * u * songs as f64) as usize).min(songs - 1);
    let copies = (scale.files - 1 - song) / scale.songs + 1;
    song + (lcg(x) >> 33) as usize % copies * scale.songs
}

/// Peer `i`'s share list: files i, i+P, i+2P, ... plus a quarter as many popular picks.
fn peer_files(scale: Scale, i: usize) -> Vec<usize> {
    let mut picks: BTreeSet<usize> = (i..scale.files).step_by(scale.peers).collect();
    let extra = (scale.files / scale.peers / EXTRA_DIVISOR).max(1);
    let target = (picks.len() + extra).min(scale.files);
    let mut x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5EED;
    for _ in 0..20 * extra + 100 {
        if picks.len() >= target {
            break;
        }
        picks.insert(popular_file(scale, &mut x));
    }
    picks.into_iter().collect()
}

/// Prints a measurement and keeps it for the final table.
fn add(report: &mut Report, scenario: impl Into<String>, measured: impl Into<String>) {
    let (scenario, measured) = (scenario.into(), measured.into());
    println!("  {scenario}: {measured}");
    report.push((scenario, measured));
}

/// Nearest-rank percentile of sorted samples.
fn pct(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len().max(1)) - 1).copied().unwrap_or_default()
}

fn latencies(mut samples: Vec<Duration>) -> String {
    samples.sort();
    let ms = |p| format!("{:.2} ms", pct(&samples, p).as_secs_f64() * 1000.0);
    format!("p50 {} · p99 {} · max {} (n = {})", ms(50.0), ms(99.0), ms(100.0), samples.len())
}

fn per_sec(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

fn bench_index_build(songs: &[Song], report: &mut Report) -> anyhow::Result<()> {
    println!("\n## 1. Index build ({} songs, {INDEX_RUNS} runs)", songs.len());
    let docs: Vec<IndexDoc<'_>> = (songs.iter().enumerate())
        .map(|(row, s)| IndexDoc {
            key: row as u64,
            content_id: s.cid,
            title: &s.info.title,
            artist: &s.info.artist,
            album: "",
            file_name: &s.info.file_name,
            media_kind: s.info.media_kind,
            size: s.info.size,
            duration_ms: s.info.duration_ms,
            bitrate_kbps: s.info.bitrate_kbps,
        })
        .collect();
    let mut times = Vec::new();
    for run in 1..=INDEX_RUNS {
        let dir = tempfile::tempdir()?;
        let start = Instant::now();
        let (index, _) = SearchIndex::open_or_create(&dir.path().join("index"))?;
        index.upsert(&docs)?;
        index.commit()?;
        times.push(start.elapsed());
        println!("  run {run}: {:.2} s, {} docs committed", start.elapsed().as_secs_f64(), index.num_docs());
    }
    times.sort();
    let median = pct(&times, 50.0);
    let measured = format!("{:.2} s · {:.0} docs/s", median.as_secs_f64(), per_sec(docs.len(), median));
    add(report, format!("Index build, {} docs (median of {INDEX_RUNS})", docs.len()), measured);
    Ok(())
}

/// The `quaver-directory` binary as a child process (killed if dropped).
struct Server {
    child: Child,
    url: String,
    /// Kept open so the server never writes to a closed pipe.
    _stdout: Lines<BufReader<ChildStdout>>,
}

impl Server {
    /// Leases outlast the longest announce phase (100k peers), so no peer expires mid-run.
    async fn spawn(data: &Path) -> anyhow::Result<Server> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_quaver-directory"))
            .args(["--listen", "127.0.0.1:0", "--lease-seconds", "7200", "--heartbeat-seconds", "300"])
            .arg("--data-dir")
            .arg(data)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let mut lines = BufReader::new(child.stdout.take().context("no stdout")?).lines();
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await??
            .context("the server exited before listening")?;
        let addr = line.strip_prefix("listening on ").with_context(|| format!("unexpected line {line:?}"))?;
        Ok(Server { child, url: format!("http://{addr}"), _stdout: lines })
    }

    /// Sends SIGTERM and waits for a clean exit; returns how long that took.
    async fn terminate(mut self) -> anyhow::Result<Duration> {
        let (start, pid) = (Instant::now(), self.child.id().context("the server has exited")?);
        let status = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status()?;
        anyhow::ensure!(status.success(), "kill -TERM {pid} failed");
        let exit = tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await??;
        anyhow::ensure!(exit.success(), "the server exited with {exit}");
        Ok(start.elapsed())
    }
}

async fn connect(url: &str) -> anyhow::Result<Client> {
    Ok(DirectoryClient::new(Channel::from_shared(url.to_owned())?.connect().await?))
}

/// One call, bounded by `CALL_TIMEOUT` on the client side.
async fn call<T>(f: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>) -> anyhow::Result<T> {
    match tokio::time::timeout(CALL_TIMEOUT, f).await {
        Ok(answer) => Ok(answer?.into_inner()),
        Err(_) => anyhow::bail!("no answer within {} s", CALL_TIMEOUT.as_secs()),
    }
}

#[derive(Default)]
struct PeerWork {
    tokens: Vec<String>,
    announce_latency: Vec<Duration>,
    publish_latency: Vec<Duration>,
    files: usize,
    started: usize,
    failures: Vec<String>,
}

/// A live QUIC endpoint on 127.0.0.1 serving `key`: it accepts connections (the directory's
/// connect-back check) and holds each until the other side closes it.
fn serve(key: &NodeKey) -> anyhow::Result<quinn::Endpoint> {
    Ok(quaver_shared::tls::identity_only_endpoint(SocketAddr::from(([127, 0, 0, 1], 0)), key)?)
}

/// Announces `key` from a fresh endpoint (the directory dials it back), then closes the endpoint:
/// nothing dials a peer after its Announce.
async fn announce(
    c: &mut Client,
    key: &NodeKey,
    digest: &ShareDigest,
    count: usize,
) -> anyhow::Result<String> {
    let endpoint = serve(key).context("peer endpoint")?;
    let announce = AnnounceRequest {
        quic_port: u32::from(endpoint.local_addr()?.port()),
        share_digest: digest.as_bytes().to_vec(),
        share_count: count as u64,
        free_upload_slots: 4,
        agent: "directory_load".into(),
        ..Default::default()
    };
    // A Challenge and the signed Announce, as a real peer does (timed together).
    let answer = call(quaver_shared::announce_proof::announce(c, key, announce)).await;
    endpoint.close(quinn::VarInt::from_u32(0), b"announced");
    let answer = answer.context("announce")?;
    anyhow::ensure!(answer.reachable, "the directory could not reach the peer's endpoint");
    Ok(answer.session_token)
}

/// One peer: Announce, then Publish its whole list in batches of at most 1,000.
async fn run_peer(
    c: &mut Client,
    i: usize,
    scale: Scale,
    songs: &[Song],
    work: &mut PeerWork,
) -> anyhow::Result<()> {
    let picks = peer_files(scale, i);
    let digest = ShareDigest::of(picks.iter().map(|&f| file_cid(songs, f)).collect::<Vec<_>>().iter());
    let key = NodeKey::generate()?;
    let start = Instant::now();
    let token = announce(c, &key, &digest, picks.len()).await?;
    work.announce_latency.push(start.elapsed());
    work.tokens.push(token.clone());
    let mut known = Vec::new();
    for (batch, chunk) in picks.chunks(MAX_BATCH_FILES).enumerate() {
        let added =
            chunk.iter().map(|&f| SharedFile { info: Some(file_info(songs, f)), complete: true }).collect();
        let req = PublishRequest { session_token: token.clone(), reset: batch == 0, added, removed: vec![] };
        let start = Instant::now();
        known = call(c.publish(req)).await.context("publish")?.known_digest;
        work.publish_latency.push(start.elapsed());
    }
    anyhow::ensure!(known == digest.as_bytes(), "digest after publish differs");
    work.files += picks.len();
    Ok(())
}

/// All peers on `tasks` concurrent tasks; a failed peer is recorded, not fatal, and no peer
/// starts after `ANNOUNCE_LIMIT`.
async fn announce_peers(
    url: &str,
    scale: Scale,
    songs: Arc<Vec<Song>>,
    tasks: usize,
) -> anyhow::Result<PeerWork> {
    let mut channels = Vec::new();
    for _ in 0..CHANNELS {
        channels.push(Channel::from_shared(url.to_owned())?.connect().await?);
    }
    let (next, start) = (Arc::new(AtomicUsize::new(0)), Instant::now());
    let progress = (scale.peers / 10).max(1);
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let (mut c, next, songs) =
                (Client::new(channels[t % CHANNELS].clone()), next.clone(), songs.clone());
            tokio::spawn(async move {
                let mut work = PeerWork::default();
                let peers = std::iter::repeat_with(|| next.fetch_add(1, Ordering::Relaxed));
                for i in peers.take_while(|&i| i < scale.peers && start.elapsed() < ANNOUNCE_LIMIT) {
                    if i > 0 && i % progress == 0 {
                        println!("  {i} peers started after {:.1} s", start.elapsed().as_secs_f64());
                    }
                    work.started += 1;
                    if let Err(e) = run_peer(&mut c, i, scale, &songs, &mut work).await {
                        work.failures.push(format!("peer {i}: {e:#}"));
                    }
                }
                work
            })
        })
        .collect();
    let mut all = PeerWork::default();
    for handle in handles {
        let work = handle.await?;
        all.tokens.extend(work.tokens);
        all.announce_latency.extend(work.announce_latency);
        all.publish_latency.extend(work.publish_latency);
        all.failures.extend(work.failures);
        all.files += work.files;
        all.started += work.started;
    }
    Ok(all)
}

/// Waits until the server is idle: after a bulk load the index goes on merging segments in the
/// background for a while, and what follows measures the steady state, not the merges.
async fn settle(pid: u32) -> anyhow::Result<String> {
    const IDLE: f64 = 0.05; // CPU seconds per second
    const LIMIT: Duration = Duration::from_secs(300);
    let start = Instant::now();
    let mut before = cpu_seconds(Some(pid))?;
    while start.elapsed() < LIMIT {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = cpu_seconds(Some(pid))?;
        if now - before < IDLE {
            return Ok(format!("after {:.1} s", start.elapsed().as_secs_f64()));
        }
        before = now;
    }
    Ok(format!("still busy after {} s; measuring anyway", LIMIT.as_secs()))
}

/// Waits until the server has merged its index into one segment, as it does once indexing has
/// gone quiet (searches are measured on the index a directory at rest serves).
async fn compacted(c: &mut Client) -> anyhow::Result<String> {
    const LIMIT: Duration = Duration::from_secs(120);
    let start = Instant::now();
    loop {
        let stats = call(c.stats(StatsRequest {})).await.context("Stats: the server stopped answering")?;
        if stats.index_segments <= 1 {
            return Ok(format!("after {:.1} s", start.elapsed().as_secs_f64()));
        }
        if start.elapsed() > LIMIT {
            return Ok(format!(
                "not within {} s ({} segments); measuring anyway",
                LIMIT.as_secs(),
                stats.index_segments
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until every file in the catalog is searchable.
async fn catch_up(c: &mut Client) -> anyhow::Result<String> {
    let start = Instant::now();
    loop {
        let stats = call(c.stats(StatsRequest {})).await.context("Stats: the server stopped answering")?;
        let (indexed, took) = (stats.indexed_documents, start.elapsed().as_secs_f64());
        if indexed >= stats.files {
            return Ok(format!(
                "{took:.2} s until {indexed} of {} catalog files were searchable",
                stats.files
            ));
        }
        if start.elapsed() > CATCH_UP_LIMIT {
            return Ok(format!("not reached within {took:.0} s ({indexed} of {} indexed)", stats.files));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const KINDS: [&str; 3] = ["title", "artist", "CJK fragment"];

/// A search query and the song (row) it was derived from; `kind` indexes `KINDS`.
struct Query {
    text: String,
    kind: usize,
    song: usize,
}

fn is_cjk(c: char) -> bool {
    matches!(c, '\u{3040}'..='\u{30FF}' | '\u{3400}'..='\u{4DBF}' | '\u{4E00}'..='\u{9FFF}'
        | '\u{AC00}'..='\u{D7AF}' | '\u{F900}'..='\u{FAFF}')
}

/// The two adjacent CJK characters closest to the middle of `title`, if any.
fn cjk_fragment(title: &str) -> Option<String> {
    let chars: Vec<char> = title.chars().collect();
    (0..chars.len().saturating_sub(1))
        .filter(|&i| is_cjk(chars[i]) && is_cjk(chars[i + 1]))
        .min_by_key(|&i| (i + 1).abs_diff(chars.len() / 2))
        .map(|i| chars[i..i + 2].iter().collect())
}

/// Queries from every 97th song that is in the catalog (the first `in_catalog` songs).
fn build_queries(songs: &[Song], in_catalog: usize) -> Vec<Query> {
    let mut out = Vec::new();
    for (song, s) in songs.iter().enumerate().take(in_catalog).step_by(QUERY_STRIDE) {
        let texts = [Some(s.info.title.clone()), Some(s.first_artist.clone()), cjk_fragment(&s.info.title)];
        for (kind, text) in texts.into_iter().enumerate() {
            if let Some(text) = text.filter(|t| !t.trim().is_empty() && t.len() <= MAX_QUERY_BYTES) {
                out.push(Query { text, kind, song });
            }
        }
    }
    out
}

fn search_request(query: &str) -> SearchRequest {
    SearchRequest { query: query.into(), page_size: 10, ..Default::default() }
}

/// Hit: a copy of the query's song (same title and artist) is among the hits, or (title
/// queries) a hit has the same title.
fn found(q: &Query, songs: &[Song], hits: &[SearchHit]) -> bool {
    let s = &songs[q.song].info;
    hits.iter()
        .filter_map(|h| h.file.as_ref())
        .any(|f| f.title == s.title && (q.kind == 0 || f.artist == s.artist))
}

/// CPU seconds (user + system) a process has used so far; `None` for this process.
fn cpu_seconds(pid: Option<u32>) -> anyhow::Result<f64> {
    let path = pid.map_or("/proc/self/stat".to_owned(), |pid| format!("/proc/{pid}/stat"));
    let stat = std::fs::read_to_string(path)?;
    let after = stat.rsplit_once(')').context("odd stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<f64> { Ok(fields.get(i).context("odd stat")?.parse::<f64>()?) };
    Ok((ticks(11)? + ticks(12)?) / 100.0) // USER_HZ is 100 on Linux
}

/// Opens `n` connections to `url`, one client each.
async fn clients(url: &str, n: usize) -> anyhow::Result<Vec<Client>> {
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        clients.push(connect(url).await?);
    }
    Ok(clients)
}

/// Calls per second of one closed-loop worker per state in `states` (a client, or an open
/// stream) running `op` for `window`, and the CPU each call cost the server (`pid`) and this
/// load generator. Both share the machine's cores, so the server's CPU per call says what it
/// could serve alone. `op` takes the worker's state and hands it back with the call's outcome;
/// a call that does not answer within `CALL_TIMEOUT` ends its worker.
async fn throughput<S, F, Fut>(pid: u32, states: Vec<S>, window: Duration, op: F) -> anyhow::Result<String>
where
    S: Send + 'static,
    F: Fn(S, usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = (S, Result<(), tonic::Status>)> + Send + 'static,
{
    let workers = states.len();
    let (server_cpu, own_cpu) = (cpu_seconds(Some(pid))?, cpu_seconds(None)?);
    let start = Instant::now();
    let handles: Vec<_> = (states.into_iter().enumerate())
        .map(|(w, state)| {
            let op = op.clone();
            tokio::spawn(async move {
                let (mut ok, mut failed, mut state) = (0, 0, Some(state));
                for k in (0..CALLS_PER_WORKER).take_while(|_| start.elapsed() < window) {
                    let Some(s) = state.take() else { break };
                    match tokio::time::timeout(CALL_TIMEOUT, op(s, w + k * workers)).await {
                        Ok((s, outcome)) => {
                            if outcome.is_ok() {
                                ok += 1
                            } else {
                                failed += 1
                            }
                            state = Some(s);
                        }
                        Err(_) => failed += 1,
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    let (mut ok, mut failed) = (0, 0);
    for handle in handles {
        let (o, f) = handle.await?;
        (ok, failed) = (ok + o, failed + f);
    }
    let took = start.elapsed();
    let per_call = |cpu: f64| cpu * 1e6 / ok.max(1) as f64;
    let (server_cpu, own_cpu) = (cpu_seconds(Some(pid))? - server_cpu, cpu_seconds(None)? - own_cpu);
    Ok(format!(
        "{:.0}/s ({ok} calls in {:.1} s, {failed} failed) · CPU per call: server {:.0} µs, load generator {:.0} µs",
        per_sec(ok, took),
        took.as_secs_f64(),
        per_call(server_cpu),
        per_call(own_cpu)
    ))
}

/// One open KeepAlive stream of the load generator: beats go into `outbox`, answers come back.
struct BeatStream {
    token: String,
    outbox: tokio::sync::mpsc::Sender<HeartbeatRequest>,
    answers: tonic::Streaming<HeartbeatResponse>,
}

impl BeatStream {
    async fn open(mut client: Client, token: String) -> anyhow::Result<Self> {
        let (outbox, requests) = tokio::sync::mpsc::channel(1);
        let answers = call(client.keep_alive(tokio_stream::wrappers::ReceiverStream::new(requests))).await?;
        Ok(Self { token, outbox, answers })
    }

    async fn beat(&mut self) -> Result<(), tonic::Status> {
        let request = HeartbeatRequest { session_token: self.token.clone(), free_upload_slots: 4 };
        self.outbox.send(request).await.map_err(|_| tonic::Status::cancelled("stream closed"))?;
        match self.answers.message().await? {
            Some(_) => Ok(()),
            None => Err(tonic::Status::cancelled("stream ended")),
        }
    }
}

/// Runs the recall pass and returns the query texts that answered.
async fn bench_search(
    c: &mut Client,
    (url, pid): (&str, u32),
    songs: &[Song],
    scale: Scale,
    report: &mut Report,
) -> anyhow::Result<Vec<String>> {
    println!("\n## 5. Search");
    let (mut queries, mut rejected, mut recall) = (Vec::new(), 0, [(0, 0); 3]);
    for q in build_queries(songs, scale.files.min(songs.len())) {
        match call(c.search(search_request(&q.text))).await {
            Ok(answer) => {
                let hit = found(&q, songs, &answer.hits);
                recall[q.kind] = (recall[q.kind].0 + usize::from(hit), recall[q.kind].1 + 1);
                queries.push(q);
            }
            Err(_) => rejected += 1,
        }
    }
    anyhow::ensure!(!queries.is_empty(), "every query failed");
    println!("  {} queries ({rejected} failed in the warm-up pass, left out)", queries.len());
    let mut samples = Vec::new();
    for q in (0..SEARCH_ROUNDS).flat_map(|_| &queries) {
        let start = Instant::now();
        call(c.search(search_request(&q.text))).await?;
        samples.push(start.elapsed());
    }
    add(report, "Search latency, sequential (page of 10)", latencies(samples));
    let texts: Arc<Vec<String>> = Arc::new(queries.into_iter().map(|q| q.text).collect());
    let shared = texts.clone();
    let searchers = clients(url, SEARCH_CLIENTS).await?;
    let rate = throughput(pid, searchers, Duration::from_secs(10), move |mut c: Client, seq| {
        let query = search_request(&shared[seq % shared.len()]);
        async move {
            let outcome = c.search(query).await.map(|_| ());
            (c, outcome)
        }
    });
    add(report, format!("Search throughput, {SEARCH_CLIENTS} clients"), rate.await?);
    let recall = (KINDS.iter().zip(recall))
        .map(|(kind, (hit, n))| format!("{kind} {:.1}% ({hit}/{n})", 100.0 * hit as f64 / n.max(1) as f64));
    add(report, "Search recall@10 (any copy of the song)", recall.collect::<Vec<_>>().join(" · "));
    Ok(Arc::unwrap_or_clone(texts))
}

/// `count` content ids spread evenly over all F files.
fn spread_ids(songs: &[Song], scale: Scale, count: usize) -> Vec<Vec<u8>> {
    let step = (scale.files / count).max(1);
    (0..scale.files).step_by(step).take(count).map(|f| file_cid(songs, f).to_vec()).collect()
}

async fn bench_locate_heartbeat(
    c: &mut Client,
    (url, pid): (&str, u32),
    songs: &[Song],
    scale: Scale,
    tokens: Arc<Vec<String>>,
    report: &mut Report,
) -> anyhow::Result<()> {
    println!("\n## 6. Locate and Heartbeat");
    let ids = spread_ids(songs, scale, LOCATE_IDS);
    let (mut samples, mut sources) = (Vec::new(), 0);
    for id in &ids {
        let start = Instant::now();
        let answer = call(c.locate(LocateRequest { content_id: id.clone(), ..Default::default() })).await?;
        samples.push(start.elapsed());
        sources += answer.sources.len();
    }
    println!("  {:.1} sources per answer on average", sources as f64 / samples.len().max(1) as f64);
    add(report, "Locate latency, sequential", latencies(samples));
    let ids = Arc::new(ids);
    let locators = clients(url, LOCATE_CLIENTS).await?;
    let rate = throughput(pid, locators, Duration::from_secs(5), move |mut c: Client, seq| {
        let req = LocateRequest { content_id: ids[seq % ids.len()].clone(), ..Default::default() };
        async move {
            let outcome = c.locate(req).await.map(|_| ());
            (c, outcome)
        }
    });
    add(report, format!("Locate throughput, {LOCATE_CLIENTS} clients"), rate.await?);
    anyhow::ensure!(!tokens.is_empty(), "no session tokens");
    let beaters = clients(url, HEARTBEAT_CLIENTS).await?;
    let calls = tokens.clone();
    let rate = throughput(pid, beaters, Duration::from_secs(5), move |mut c: Client, seq| {
        let req = HeartbeatRequest { session_token: calls[seq % calls.len()].clone(), free_upload_slots: 4 };
        async move {
            let outcome = c.heartbeat(req).await.map(|_| ());
            (c, outcome)
        }
    });
    add(report, format!("Heartbeat throughput (calls), {HEARTBEAT_CLIENTS} clients"), rate.await?);
    // How peers beat: each session keeps one KeepAlive stream open and sends a message per beat.
    let mut streams = Vec::with_capacity(HEARTBEAT_CLIENTS);
    for (client, w) in clients(url, HEARTBEAT_CLIENTS).await?.into_iter().zip(0..) {
        streams.push(BeatStream::open(client, tokens[w % tokens.len()].clone()).await?);
    }
    let rate = throughput(pid, streams, Duration::from_secs(5), |mut s: BeatStream, _| async move {
        let outcome = s.beat().await;
        (s, outcome)
    });
    add(
        report,
        format!("Heartbeat throughput (KeepAlive streams), {HEARTBEAT_CLIENTS} clients"),
        rate.await?,
    );
    Ok(())
}

const MIX_KINDS: [&str; 3] = ["Heartbeat", "Search", "Locate"];

/// What the mixed workload calls: session tokens, search texts, content ids.
struct MixInputs {
    tokens: Arc<Vec<String>>,
    queries: Vec<String>,
    ids: Vec<Vec<u8>>,
}

/// Per kind: latencies of the calls that succeeded, and the failures.
type MixSamples = [(Vec<Duration>, usize); 3];

/// One closed-loop client of the mix: draws each call's kind (70/15/15) and argument from its
/// own LCG, until `window` has passed or `CALLS_PER_WORKER` calls were made. Its heartbeats are
/// beats on its KeepAlive stream.
async fn mix_worker(
    (mut c, mut beats): (Client, BeatStream),
    w: usize,
    inputs: Arc<MixInputs>,
    start: Instant,
    window: Duration,
) -> MixSamples {
    let mut out: MixSamples = Default::default();
    let mut x = (w as u64 + 1).wrapping_mul(0x2545_F491_4F6C_DD1D);
    for _ in (0..CALLS_PER_WORKER).take_while(|_| start.elapsed() < window) {
        let (roll, pick) = (lcg(&mut x) >> 33, (lcg(&mut x) >> 17) as usize);
        let kind = if roll % 100 < MIX_HEARTBEAT {
            0
        } else if roll % 100 < MIX_HEARTBEAT + MIX_SEARCH {
            1
        } else {
            2
        };
        let began = Instant::now();
        let ok = match kind {
            0 => matches!(tokio::time::timeout(CALL_TIMEOUT, beats.beat()).await, Ok(Ok(()))),
            1 => call(c.search(search_request(&inputs.queries[pick % inputs.queries.len()]))).await.is_ok(),
            _ => {
                let content_id = inputs.ids[pick % inputs.ids.len()].clone();
                call(c.locate(LocateRequest { content_id, ..Default::default() })).await.is_ok()
            }
        };
        if ok {
            out[kind].0.push(began.elapsed());
        } else {
            out[kind].1 += 1;
        }
    }
    out
}

async fn bench_mixed(
    url: &str,
    inputs: MixInputs,
    clients: usize,
    window: Duration,
    report: &mut Report,
) -> anyhow::Result<()> {
    println!(
        "\n## 7. Mixed workload: {clients} clients for {} s, {MIX_HEARTBEAT}% Heartbeat, {MIX_SEARCH}% Search, {}% Locate",
        window.as_secs(),
        100 - MIX_HEARTBEAT - MIX_SEARCH
    );
    anyhow::ensure!(
        !inputs.tokens.is_empty() && !inputs.queries.is_empty() && !inputs.ids.is_empty(),
        "nothing to call"
    );
    let inputs = Arc::new(inputs);
    let mut conns = Vec::new();
    for (c, w) in self::clients(url, clients).await?.into_iter().zip(0..) {
        // A client is a peer: it beats on its own session's KeepAlive stream, as peers do.
        let beats = BeatStream::open(c.clone(), inputs.tokens[w % inputs.tokens.len()].clone()).await?;
        conns.push((c, beats));
    }
    let start = Instant::now();
    let handles: Vec<_> = (conns.into_iter().enumerate())
        .map(|(w, c)| tokio::spawn(mix_worker(c, w, inputs.clone(), start, window)))
        .collect();
    let mut all: MixSamples = Default::default();
    for handle in handles {
        for (kind, (samples, failed)) in handle.await?.into_iter().enumerate() {
            all[kind].0.extend(samples);
            all[kind].1 += failed;
        }
    }
    let took = start.elapsed();
    let total: usize = all.iter().map(|(s, _)| s.len()).sum();
    for (name, (samples, failed)) in MIX_KINDS.iter().zip(all) {
        let rate = format!("{:.0}/s, {failed} failed · ", per_sec(samples.len(), took));
        add(report, format!("Mixed: {name}"), rate + &latencies(samples));
    }
    add(
        report,
        "Mixed: all calls",
        format!("{:.0}/s over {:.1} s", per_sec(total, took), took.as_secs_f64()),
    );
    Ok(())
}

/// VmRSS and VmHWM of `pid`, in MiB.
fn memory_mib(pid: u32) -> anyhow::Result<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let mib = |name: &str| -> anyhow::Result<f64> {
        let line = status.lines().find(|l| l.starts_with(name)).with_context(|| format!("no {name}"))?;
        Ok(line[name.len()..].trim().trim_end_matches("kB").trim().parse::<f64>()? / 1024.0)
    };
    Ok(format!("VmRSS {:.1} MiB · VmHWM {:.1} MiB", mib("VmRSS:")?, mib("VmHWM:")?))
}

/// Spawns the server on `data`; returns it with the times to `listening on` and to the first
/// Search answer that has hits.
async fn restart_to_serving(data: &Path, title: &str) -> anyhow::Result<(Server, Duration, Duration)> {
    let start = Instant::now();
    let server = Server::spawn(data).await?;
    let listening = start.elapsed();
    let filters = SearchFilters { min_online_sources: Some(0), ..Default::default() };
    let req = SearchRequest { filters: Some(filters), ..search_request(title) };
    loop {
        if let Ok(mut c) = connect(&server.url).await
            && call(c.search(req.clone())).await.is_ok_and(|answer| !answer.hits.is_empty())
        {
            return Ok((server, listening, start.elapsed()));
        }
        anyhow::ensure!(start.elapsed() < Duration::from_secs(120), "no search answer within 120 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What `main` read from the environment.
struct Settings {
    scale: Scale,
    tasks: usize,
    mix_clients: usize,
    mix_window: Duration,
}

async fn bench_server(songs: Arc<Vec<Song>>, settings: Settings, report: &mut Report) -> anyhow::Result<()> {
    let (scale, tasks) = (settings.scale, settings.tasks);
    // `QUAVER_BENCH_DATA_DIR` keeps the server's data after the run (to profile a restart).
    let (_temporary, data) = match std::env::var_os("QUAVER_BENCH_DATA_DIR") {
        Some(dir) => (None, std::path::PathBuf::from(dir)),
        None => {
            let temporary = tempfile::tempdir()?;
            let path = temporary.path().to_path_buf();
            (Some(temporary), path)
        }
    };
    anyhow::ensure!(
        std::fs::read_dir(&data).map_or(true, |mut entries| entries.next().is_none()),
        "{}: the data dir must be empty or absent",
        data.display()
    );
    println!("\n## 2. Server: {}", env!("CARGO_BIN_EXE_quaver-directory"));
    let server = Server::spawn(&data).await?;
    println!("  listening at {}", server.url);
    let mut c = connect(&server.url).await?;

    let (peers, files) = (scale.peers, scale.files);
    println!(
        "\n## 3. Announce + Publish ({peers} peers, {files} files, {tasks} tasks over {CHANNELS} channels)"
    );
    let start = Instant::now();
    let work = announce_peers(&server.url, scale, songs.clone(), tasks).await?;
    let (took, shared, ok) = (start.elapsed(), work.files, work.started - work.failures.len());
    let rates = format!("{:.0} shares/s · {:.0} peers/s", per_sec(shared, took), per_sec(ok, took));
    add(
        report,
        format!("Announce + Publish, {ok} of {peers} peers, {shared} shares of {files} files"),
        format!("{:.1} s · {rates}", took.as_secs_f64()),
    );
    add(report, "Announce latency (with connect-back)", latencies(work.announce_latency));
    add(report, "Publish latency (one batch ≤ 1,000 files)", latencies(work.publish_latency));
    let first = work.failures.first().map(|f| format!("; first: {f}")).unwrap_or_default();
    let failed = format!("{} of {peers}, {} not started{first}", work.failures.len(), peers - work.started);
    add(report, "Failed peers", failed);
    add(report, "Server memory after Publish", memory_mib(server.child.id().context("server exited")?)?);

    println!("\n## 4. Index catch-up");
    add(report, "Index catch-up after the last Publish", catch_up(&mut c).await?);
    let pid = server.child.id().context("server exited")?;
    add(report, "Index compacted to one segment", compacted(&mut c).await?);
    add(report, "Server idle again (background index merges done)", settle(pid).await?);
    let stats = call(c.stats(StatsRequest {})).await?;
    println!(
        "  stats: {} files, {} online peers, {} sources, {} indexed in {} segment(s)",
        stats.files, stats.online_peers, stats.sources, stats.indexed_documents, stats.index_segments
    );
    let queries = bench_search(&mut c, (&server.url, pid), &songs, scale, report).await?;
    let tokens = Arc::new(work.tokens);
    bench_locate_heartbeat(&mut c, (&server.url, pid), &songs, scale, tokens.clone(), report).await?;
    let ids = spread_ids(&songs, scale, MIX_LOCATE_IDS);
    let inputs = MixInputs { tokens, queries, ids };
    bench_mixed(&server.url, inputs, settings.mix_clients, settings.mix_window, report).await?;

    println!("\n## 8. Memory, shutdown, restart");
    add(report, "Server memory after the load", memory_mib(server.child.id().context("server exited")?)?);
    let stopped = server.terminate().await?;
    add(report, "Graceful shutdown (SIGTERM → exit)", format!("{:.2} s", stopped.as_secs_f64()));
    let title = &songs.first().context("no songs")?.info.title;
    let (server, listening, serving) = restart_to_serving(&data, title).await?;
    let times = format!("{:.2} s (listening after {:.2} s)", serving.as_secs_f64(), listening.as_secs_f64());
    add(report, format!("Restart to serving, {} files (spawn → first Search answer)", stats.files), times);
    add(report, "Server memory after the restart", memory_mib(server.child.id().context("server exited")?)?);
    server.terminate().await?;
    Ok(())
}

/// A positive integer from `name`, or `default` when it is unset.
fn env_usize(name: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Err(_) => Ok(default),
        Ok(v) => match v.trim().replace('_', "").parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => anyhow::bail!("{name}={v:?}: expected a positive integer"),
        },
    }
}

fn main() -> anyhow::Result<()> {
    let path = Path::new(SONGS_TSV);
    if !path.exists() {
        println!("skipping: ../shared/data/songs not found");
        return Ok(());
    }
    let songs = load_songs(path)?;
    anyhow::ensure!(!songs.is_empty(), "{}: no songs", path.display());
    let scale = Scale {
        peers: env_usize("QUAVER_BENCH_PEERS", DEFAULT_PEERS)?,
        files: env_usize("QUAVER_BENCH_FILES", DEFAULT_FILES)?,
        songs: songs.len(),
    };
    let mix_seconds = env_usize("QUAVER_BENCH_MIX_SECONDS", 20)?.min(MAX_MIX_SECONDS as usize) as u64;
    let settings = Settings {
        scale,
        tasks: env_usize("DIRECTORY_LOAD_TASKS", 16)?,
        mix_clients: env_usize("QUAVER_BENCH_MIX_CLIENTS", 32)?,
        mix_window: Duration::from_secs(mix_seconds),
    };
    println!(
        "# Quaver directory load bench: {} peers sharing {} files (titles from {} songs in {})",
        scale.peers,
        scale.files,
        songs.len(),
        path.display()
    );
    let mut report = Report::new();
    bench_index_build(&songs, &mut report)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let run = bench_server(Arc::new(songs), settings, &mut report);
    let outcome = runtime.block_on(async { tokio::time::timeout(SERVER_LIMIT, run).await });
    println!("\n| scenario | measured |\n|---|---|");
    for (scenario, measured) in &report {
        println!("| {scenario} | {measured} |");
    }
    outcome.map_err(|_| {
        anyhow::anyhow!("stopped after {} s: the server is not answering", SERVER_LIMIT.as_secs())
    })?
}
