//! Load benchmark of the directory server on real song metadata (`../shared/data/songs`).
//!
//! Run: `cargo bench --workspace --bench directory_load` (release profile, about a
//! minute). It measures, it does not judge: nothing is asserted about speed. Every figure comes
//! from the raw samples of this one run, and the report ends with a Markdown table.
//!
//! 1. Index build: all songs upserted into a fresh on-disk `SearchIndex` and committed
//!    (median of 3 runs).
//! 2. The real `quaver-directory` binary, started as a child process on 127.0.0.1:0.
//! 3. Announce + Publish by 1,000 simulated peers on 16 concurrent tasks (4 channels). Each
//!    peer has its own node key and a live QUIC endpoint on 127.0.0.1, so the directory's
//!    connect-back check of every Announce passes (its handshake is part of the measured time).
//!    Peer i shares songs i, i+1000, i+2000, ... (so every song is shared) plus 60 LCG picks.
//!    `DIRECTORY_LOAD_TASKS=n` changes the concurrency.
//! 4. How long the index takes to make every song searchable after the last Publish.
//! 5. Search latency (sequential), throughput (8 clients) and recall@10, for queries derived
//!    from every 97th song: its exact title, its first artist, a 2-character CJK fragment.
//! 6. Locate latency over 2,000 content ids; Heartbeat throughput (16 clients).
//! 7. Server memory (VmRSS, VmHWM), SIGTERM-to-exit time, and restart-to-serving time.
//!
//! Every call is bounded: a server that stops answering ends the run with an error, after the
//! table of what was measured so far.

use std::collections::{BTreeSet, HashSet};
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
const PEERS: usize = 1000;
const EXTRA_PICKS: usize = 60;
const CHANNELS: usize = 4;
const QUERY_STRIDE: usize = 97;
const SEARCH_ROUNDS: usize = 3;
const SEARCH_CLIENTS: usize = 8;
const LOCATE_IDS: usize = 2000;
const HEARTBEAT_CLIENTS: usize = 16;
/// Bounds: one call, one throughput worker, starting peers, the index catch-up, the server part.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
const CALLS_PER_WORKER: usize = 200_000;
const ANNOUNCE_LIMIT: Duration = Duration::from_secs(60);
const CATCH_UP_LIMIT: Duration = Duration::from_secs(120);
const SERVER_LIMIT: Duration = Duration::from_secs(270);

type Client = DirectoryClient<Channel>;
type Report = Vec<(String, String)>;

struct Song {
    first_artist: String,
    cid: ContentId,
    /// Title, artists joined by " / ", file name "{artist} - {title}.mp3", and deterministic,
    /// plausible size (4-10 MB), duration and bitrate derived from the content id.
    info: FileInfo,
}

fn song(id: &str, title: &str, artists: &str) -> Song {
    let cid = ContentId::of_bytes(id.as_bytes());
    let b = cid.as_bytes();
    let h = u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
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
    Song { first_artist: artists.split('|').next().unwrap_or_default().to_owned(), cid, info }
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
    async fn spawn(data: &Path) -> anyhow::Result<Server> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_quaver-directory"))
            .args(["--listen", "127.0.0.1:0", "--lease-seconds", "900", "--heartbeat-seconds", "300"])
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

/// Peer `i`'s share list: songs i, i+1000, i+2000, ... plus `EXTRA_PICKS` LCG picks.
fn peer_songs(i: usize, n: usize) -> Vec<usize> {
    let mut picks: BTreeSet<usize> = (i..n).step_by(PEERS).collect();
    let target = (picks.len() + EXTRA_PICKS).min(n);
    let mut x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5EED;
    while picks.len() < target {
        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        picks.insert((x >> 33) as usize % n);
    }
    picks.into_iter().collect()
}

#[derive(Default)]
struct PeerWork {
    /// The peers' QUIC endpoints, kept open until the end of the run.
    endpoints: Vec<quinn::Endpoint>,
    tokens: Vec<String>,
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

/// One peer: start its endpoint, Announce (the directory dials it back), then Publish its
/// whole list in batches of at most 1,000.
async fn run_peer(c: &mut Client, i: usize, songs: &[Song], work: &mut PeerWork) -> anyhow::Result<()> {
    let picks = peer_songs(i, songs.len());
    let digest = ShareDigest::of(picks.iter().map(|&s| &songs[s].cid));
    let key = NodeKey::generate()?;
    let endpoint = serve(&key).context("peer endpoint")?;
    let quic_port = u32::from(endpoint.local_addr()?.port());
    work.endpoints.push(endpoint);
    let announce = AnnounceRequest {
        peer_id: key.peer_id().to_vec(),
        quic_port,
        share_digest: digest.as_bytes().to_vec(),
        share_count: picks.len() as u64,
        free_upload_slots: 4,
        agent: "directory_load".into(),
    };
    let answer = call(c.announce(announce)).await.context("announce")?;
    anyhow::ensure!(answer.reachable, "the directory could not reach the peer's endpoint");
    let token = answer.session_token;
    work.tokens.push(token.clone());
    let files: Vec<SharedFile> =
        picks.iter().map(|&s| SharedFile { info: Some(songs[s].info.clone()), complete: true }).collect();
    let mut known = Vec::new();
    for (batch, chunk) in files.chunks(MAX_BATCH_FILES).enumerate() {
        let (session_token, added) = (token.clone(), chunk.to_vec());
        let req = PublishRequest { session_token, reset: batch == 0, added, removed: vec![] };
        let start = Instant::now();
        known = call(c.publish(req)).await.context("publish")?.known_digest;
        work.publish_latency.push(start.elapsed());
    }
    anyhow::ensure!(known == digest.as_bytes(), "digest after publish differs");
    work.files += files.len();
    Ok(())
}

/// All peers on `tasks` concurrent tasks; a failed peer is recorded, not fatal, and no peer
/// starts after `ANNOUNCE_LIMIT`.
async fn announce_peers(url: &str, songs: Arc<Vec<Song>>, tasks: usize) -> anyhow::Result<PeerWork> {
    let mut channels = Vec::new();
    for _ in 0..CHANNELS {
        channels.push(Channel::from_shared(url.to_owned())?.connect().await?);
    }
    let (next, start) = (Arc::new(AtomicUsize::new(0)), Instant::now());
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let (mut c, next, songs) =
                (Client::new(channels[t % CHANNELS].clone()), next.clone(), songs.clone());
            tokio::spawn(async move {
                let mut work = PeerWork::default();
                let peers = std::iter::repeat_with(|| next.fetch_add(1, Ordering::Relaxed));
                for i in peers.take_while(|&i| i < PEERS && start.elapsed() < ANNOUNCE_LIMIT) {
                    work.started += 1;
                    if let Err(e) = run_peer(&mut c, i, &songs, &mut work).await {
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
        all.endpoints.extend(work.endpoints);
        all.tokens.extend(work.tokens);
        all.publish_latency.extend(work.publish_latency);
        all.failures.extend(work.failures);
        all.files += work.files;
        all.started += work.started;
    }
    Ok(all)
}

/// Waits until every song in the catalog is searchable (all `unique` of them unless peers failed).
async fn catch_up(c: &mut Client, unique: u64) -> anyhow::Result<String> {
    let start = Instant::now();
    loop {
        let stats = call(c.stats(StatsRequest {})).await.context("Stats: the server stopped answering")?;
        let (indexed, took) = (stats.indexed_documents, start.elapsed().as_secs_f64());
        if indexed >= unique.min(stats.files) {
            return Ok(format!("{took:.2} s until {indexed} of {unique} songs were searchable"));
        }
        if start.elapsed() > CATCH_UP_LIMIT {
            return Ok(format!("not reached within {took:.0} s ({indexed} of {unique} indexed)"));
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

fn build_queries(songs: &[Song]) -> Vec<Query> {
    let mut out = Vec::new();
    for (song, s) in songs.iter().enumerate().step_by(QUERY_STRIDE) {
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

/// Hit: the query's song is among the hits, or (title queries) a hit has the same title.
fn found(q: &Query, songs: &[Song], hits: &[SearchHit]) -> bool {
    let s = &songs[q.song].info;
    hits.iter()
        .filter_map(|h| h.file.as_ref())
        .any(|f| f.content_id == s.content_id || (q.kind == 0 && f.title == s.title))
}

/// Calls per second of `workers` clients (one connection each) running `op` for `window`.
async fn throughput<F, Fut>(url: &str, workers: usize, window: Duration, op: F) -> anyhow::Result<String>
where
    F: Fn(Client, usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<(), tonic::Status>> + Send + 'static,
{
    let mut clients = Vec::new();
    for _ in 0..workers {
        clients.push(connect(url).await?);
    }
    let start = Instant::now();
    let handles: Vec<_> = (clients.into_iter().enumerate())
        .map(|(w, client)| {
            let op = op.clone();
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0, 0);
                for k in (0..CALLS_PER_WORKER).take_while(|_| start.elapsed() < window) {
                    match tokio::time::timeout(CALL_TIMEOUT, op(client.clone(), w + k * workers)).await {
                        Ok(Ok(())) => ok += 1,
                        _ => failed += 1,
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
    Ok(format!("{:.0}/s ({ok} calls in {:.1} s, {failed} failed)", per_sec(ok, took), took.as_secs_f64()))
}

async fn bench_search(c: &mut Client, url: &str, songs: &[Song], report: &mut Report) -> anyhow::Result<()> {
    println!("\n## 5. Search");
    let (mut queries, mut rejected, mut recall) = (Vec::new(), 0, [(0, 0); 3]);
    for q in build_queries(songs) {
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
    let rate = throughput(url, SEARCH_CLIENTS, Duration::from_secs(10), move |mut c, seq| {
        let query = search_request(&texts[seq % texts.len()]);
        async move { c.search(query).await.map(|_| ()) }
    });
    add(report, format!("Search throughput, {SEARCH_CLIENTS} clients"), rate.await?);
    let recall = (KINDS.iter().zip(recall))
        .map(|(kind, (hit, n))| format!("{kind} {:.1}% ({hit}/{n})", 100.0 * hit as f64 / n.max(1) as f64));
    add(report, "Search recall@10", recall.collect::<Vec<_>>().join(" · "));
    Ok(())
}

async fn bench_locate_heartbeat(
    c: &mut Client,
    url: &str,
    songs: &[Song],
    tokens: Vec<String>,
    report: &mut Report,
) -> anyhow::Result<()> {
    println!("\n## 6. Locate and Heartbeat");
    let (mut samples, mut sources) = (Vec::new(), 0);
    for s in songs.iter().step_by((songs.len() / LOCATE_IDS).max(1)).take(LOCATE_IDS) {
        let start = Instant::now();
        let answer =
            call(c.locate(LocateRequest { content_id: s.cid.to_vec(), ..Default::default() })).await?;
        samples.push(start.elapsed());
        sources += answer.sources.len();
    }
    println!("  {:.1} sources per answer on average", sources as f64 / samples.len().max(1) as f64);
    add(report, "Locate latency, sequential", latencies(samples));
    anyhow::ensure!(!tokens.is_empty(), "no session tokens");
    let tokens = Arc::new(tokens);
    let rate = throughput(url, HEARTBEAT_CLIENTS, Duration::from_secs(5), move |mut c, seq| {
        let req =
            HeartbeatRequest { session_token: tokens[seq % tokens.len()].clone(), free_upload_slots: 4 };
        async move { c.heartbeat(req).await.map(|_| ()) }
    });
    add(report, format!("Heartbeat throughput, {HEARTBEAT_CLIENTS} clients"), rate.await?);
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
        anyhow::ensure!(start.elapsed() < Duration::from_secs(60), "no search answer within 60 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn bench_server(songs: Arc<Vec<Song>>, tasks: usize, report: &mut Report) -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    println!("\n## 2. Server: {}", env!("CARGO_BIN_EXE_quaver-directory"));
    let server = Server::spawn(data.path()).await?;
    println!("  listening at {}", server.url);
    let mut c = connect(&server.url).await?;

    println!("\n## 3. Announce + Publish ({PEERS} peers, {tasks} tasks over {CHANNELS} channels)");
    let start = Instant::now();
    let work = announce_peers(&server.url, songs.clone(), tasks).await?;
    let (took, files, ok) = (start.elapsed(), work.files, work.started - work.failures.len());
    let rates = format!("{:.0} files/s · {:.0} peers/s", per_sec(files, took), per_sec(ok, took));
    add(
        report,
        format!("Announce + Publish, {ok} of {PEERS} peers, {files} files"),
        format!("{:.2} s · {rates}", took.as_secs_f64()),
    );
    add(report, "Publish latency (one batch ≤ 1,000 files)", latencies(work.publish_latency));
    let first = work.failures.first().map(|f| format!("; first: {f}")).unwrap_or_default();
    let failed = format!("{} of {PEERS}, {} not started{first}", work.failures.len(), PEERS - work.started);
    add(report, "Failed peers", failed);

    println!("\n## 4. Index catch-up");
    let unique = songs.iter().map(|s| s.cid).collect::<HashSet<_>>().len() as u64;
    add(report, "Index catch-up after the last Publish", catch_up(&mut c, unique).await?);
    bench_search(&mut c, &server.url, &songs, report).await?;
    bench_locate_heartbeat(&mut c, &server.url, &songs, work.tokens, report).await?;

    println!("\n## 7. Memory, shutdown, restart");
    add(report, "Server memory after the load", memory_mib(server.child.id().context("server exited")?)?);
    let stopped = server.terminate().await?;
    add(report, "Graceful shutdown (SIGTERM → exit)", format!("{:.2} s", stopped.as_secs_f64()));
    let title = &songs.first().context("no songs")?.info.title;
    let (server, listening, serving) = restart_to_serving(data.path(), title).await?;
    let times = format!("{:.2} s (listening after {:.2} s)", serving.as_secs_f64(), listening.as_secs_f64());
    add(report, "Restart to serving (spawn → first Search answer)", times);
    server.terminate().await?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let path = Path::new(SONGS_TSV);
    if !path.exists() {
        println!("skipping: ../shared/data/songs not found");
        return Ok(());
    }
    let tasks = std::env::var("DIRECTORY_LOAD_TASKS").ok().and_then(|v| v.parse().ok()).unwrap_or(16);
    let songs = load_songs(path)?;
    println!("# Quaver directory load bench: {} songs from {}", songs.len(), path.display());
    let mut report = Report::new();
    bench_index_build(&songs, &mut report)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let run = bench_server(Arc::new(songs), tasks, &mut report);
    let outcome = runtime.block_on(async { tokio::time::timeout(SERVER_LIMIT, run).await });
    println!("\n| scenario | measured |\n|---|---|");
    for (scenario, measured) in &report {
        println!("| {scenario} | {measured} |");
    }
    outcome.map_err(|_| {
        anyhow::anyhow!("stopped after {} s: the server is not answering", SERVER_LIMIT.as_secs())
    })?
}
