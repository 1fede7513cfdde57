//! Backup and restore end to end: a backup taken from a live server while other clients keep
//! publishing and searching, restored into a fresh data dir, serves the same searches; a
//! damaged backup is refused and writes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use quaver_directory::backup::{self, BackupError};
use quaver_directory::{Config, RunningServer};
use quaver_e2e::*;
use quaver_shared::directory::v1::*;
use tokio::sync::Mutex;
use tonic::Code;

const WAIT: Duration = Duration::from_secs(60);
const BASE_FILES: u32 = 240;
const ARTISTS: [&str; 6] = ["Quux Ensemble", "Marlow Vance", "周杰伦", "Teyana Brook", "Oskar Lind", "王菲"];
/// Files published by the load task are numbered from here, 20 per batch.
const LOAD_START: u32 = 100_000;
const LOAD_BATCH: u32 = 20;

/// A made-up word unique to `n` (syllables as digits), so each file has its own query.
fn word(n: u32) -> String {
    const SYLLABLES: [&str; 8] = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo"];
    let mut out = String::new();
    let mut rest = n;
    loop {
        out.push_str(SYLLABLES[(rest % 8) as usize]);
        rest /= 8;
        if rest == 0 {
            break;
        }
    }
    out
}

fn base_file(n: u32) -> SharedFile {
    file(
        n,
        &format!("{} {}", word(n), ["晴天", "River", "Night"][(n % 3) as usize]),
        ARTISTS[(n % 6) as usize],
    )
}

fn load_file(n: u32) -> SharedFile {
    file(n, &format!("{} load", word(n)), "Loader")
}

fn offline_too(query: &str) -> SearchRequest {
    SearchRequest {
        query: query.into(),
        page_size: 100,
        filters: Some(SearchFilters { min_online_sources: Some(0), ..Default::default() }),
        ..Default::default()
    }
}

/// The content ids a search returns (offline files included), and whether there were more.
async fn search_ids(c: &mut Client, query: &str) -> anyhow::Result<(BTreeSet<Vec<u8>>, bool)> {
    let resp = c.search(offline_too(query)).await?.into_inner();
    Ok((resp.hits.into_iter().filter_map(|h| h.file.map(|f| f.content_id)).collect(), resp.has_more))
}

async fn wait_indexed(c: &Client, docs: u64) -> anyhow::Result<()> {
    eventually(WAIT, || {
        let mut c = c.clone();
        async move { Ok((c.stats(StatsRequest {}).await?.into_inner().indexed_documents >= docs).then_some(())) }
    })
    .await
}

/// What the load task did: batches acknowledged before the backup started, and after it
/// ended (by batch number).
#[derive(Default)]
struct LoadLog {
    acknowledged: Vec<(u32, bool)>,
}

/// Publishes a new peer with a batch of new files, and searches, until `stop`.
async fn load(
    mut c: Client,
    stop: Arc<AtomicBool>,
    backing_up: Arc<AtomicBool>,
    log: Arc<Mutex<LoadLog>>,
) -> anyhow::Result<()> {
    let mut batch = 0;
    while !stop.load(Ordering::SeqCst) {
        let started_during_or_after = backing_up.load(Ordering::SeqCst);
        let peer = TestPeer::start()?;
        let files = (0..LOAD_BATCH).map(|i| load_file(LOAD_START + batch * LOAD_BATCH + i)).collect();
        peer.announce(&mut c, files).await?;
        log.lock().await.acknowledged.push((batch, started_during_or_after));
        let _ = search_ids(&mut c, &word(batch % BASE_FILES)).await?;
        batch += 1;
    }
    Ok(())
}

fn config(data_dir: &Path) -> anyhow::Result<Config> {
    Ok(Config {
        listen: "127.0.0.1:0".parse()?,
        data_dir: data_dir.to_owned(),
        index_commit_ms: 20,
        ..Config::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_taken_under_load_restores_to_the_same_searches() -> anyhow::Result<()> {
    // The original directory was restarted twice before it saw its files: sled's id generator
    // jumps by 2,000,000 at every start, so its file keys are above 4,000,000, beyond where a
    // fresh database's generator resumes. A restore that does not move the generator past
    // them would hand restored keys to new files.
    let original_data = tempfile::tempdir()?;
    for _ in 0..2 {
        RunningServer::start(config(original_data.path())?).await?.shutdown().await?;
    }
    let original = RunningServer::start(config(original_data.path())?).await?;
    let url = format!("http://{}", original.local_addr);
    let mut c = Client::connect(url.clone()).await?;
    // The base catalog: six peers, each with its share of the files, some files on two peers.
    let mut peers = Vec::new();
    for p in 0..6u32 {
        let peer = TestPeer::start()?;
        let files = (0..BASE_FILES).filter(|n| n % 6 == p || n % 11 == p).map(base_file).collect();
        peer.announce(&mut c, files).await?;
        peers.push(peer);
    }
    wait_indexed(&c, u64::from(BASE_FILES)).await?;

    // Load: new peers publish new files and search while the backup is taken.
    let (stop, backing_up) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let log = Arc::new(Mutex::new(LoadLog::default()));
    let loader = tokio::spawn(load(c.clone(), stop.clone(), backing_up.clone(), log.clone()));
    eventually(WAIT, || {
        let log = log.clone();
        async move { Ok((log.lock().await.acknowledged.len() >= 3).then_some(())) }
    })
    .await?;

    let backups = tempfile::tempdir()?;
    let to = backups.path().join("nightly");
    backing_up.store(true, Ordering::SeqCst);
    let acknowledged_before: Vec<u32> = log.lock().await.acknowledged.iter().map(|(b, _)| *b).collect();
    let manifest = quaver_directory::admin::fetch_backup(&url, None, &to).await?;
    let batches_at_backup_end = log.lock().await.acknowledged.len();
    // Keep publishing after the backup, so the original holds files the backup must not.
    eventually(WAIT, || {
        let log = log.clone();
        async move { Ok((log.lock().await.acknowledged.len() >= batches_at_backup_end + 2).then_some(())) }
    })
    .await?;
    stop.store(true, Ordering::SeqCst);
    loader.await??;
    let batches = log.lock().await.acknowledged.len() as u32;
    assert!(!to.with_file_name("nightly.tmp").exists(), "the temporary directory is renamed away");

    // A second backup into the same directory is refused; the first is untouched.
    let again = quaver_directory::admin::fetch_backup(&url, None, &to).await;
    assert!(matches!(again, Err(BackupError::Refused(_))), "{again:?}");

    // Restore into a fresh data dir and serve it.
    let data = tempfile::tempdir()?;
    let data_dir = data.path().join("restored");
    let report = backup::restore(&to, &data_dir, false)?;
    assert_eq!(report.manifest, manifest);
    assert!(report.previous.is_none());
    let restored = RunningServer::start(config(&data_dir)?).await?;
    let mut r = Client::connect(format!("http://{}", restored.local_addr)).await?;
    let files_in_backup = manifest.records("files");
    wait_indexed(&r, files_in_backup).await?;
    let stats = r.stats(StatsRequest {}).await?.into_inner();
    assert_eq!((stats.files, stats.indexed_documents), (files_in_backup, files_in_backup));
    assert_eq!(stats.online_peers, 0, "presence is not restored: peers announce again");
    assert_eq!(stats.known_peers, manifest.records("peers"));

    // Which files the backup holds: every base file and every batch acknowledged before it
    // began; nothing of a batch begun after it ended; a batch in flight all or nothing.
    let mut in_backup = BTreeSet::new();
    for n in (0..BASE_FILES).chain(LOAD_START..LOAD_START + batches * LOAD_BATCH) {
        match r.get_file(GetFileRequest { content_id: cid(n).to_vec() }).await {
            Ok(resp) => {
                let original = c.get_file(GetFileRequest { content_id: cid(n).to_vec() }).await?.into_inner();
                assert_eq!(resp.get_ref().file, original.file, "file {n}");
                assert_eq!(resp.get_ref().first_seen_unix_ms, original.first_seen_unix_ms);
                in_backup.insert(n);
            }
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) => return Err(s.into()),
        }
    }
    assert!((0..BASE_FILES).all(|n| in_backup.contains(&n)), "every base file is in the backup");
    let whole_batches: BTreeMap<u32, usize> = (0..batches)
        .map(|b| {
            (b, (0..LOAD_BATCH).filter(|i| in_backup.contains(&(LOAD_START + b * LOAD_BATCH + i))).count())
        })
        .collect();
    for (b, n) in &whole_batches {
        assert!(*n == 0 || *n == LOAD_BATCH as usize, "batch {b} is torn: {n} of {LOAD_BATCH} files");
    }
    for b in &acknowledged_before {
        assert_eq!(whole_batches[b], LOAD_BATCH as usize, "batch {b} was acknowledged before the backup");
    }
    for b in batches_at_backup_end as u32 + 1..batches {
        assert_eq!(whole_batches[&b], 0, "batch {b} began after the backup ended");
    }
    assert_eq!(in_backup.len() as u64, files_in_backup);
    let in_backup_ids: BTreeSet<Vec<u8>> = in_backup.iter().map(|n| cid(*n).to_vec()).collect();

    // The same searches find the same files: each file's own word, each artist, shared words.
    let mut queries: Vec<String> = in_backup.iter().map(|n| word(*n)).collect();
    queries.extend(ARTISTS.iter().map(|a| a.to_string()));
    queries.extend(["晴天", "river", "load", "loader"].map(String::from));
    for q in &queries {
        let (original, more) = search_ids(&mut c, q).await?;
        let (restored_ids, _) = search_ids(&mut r, q).await?;
        if more {
            // Too many matches on the original to compare whole lists; the restored one must
            // still only return files of the backup.
            assert!(restored_ids.is_subset(&in_backup_ids), "{q}");
            continue;
        }
        let expected: BTreeSet<Vec<u8>> = original.intersection(&in_backup_ids).cloned().collect();
        assert_eq!(restored_ids, expected, "search {q:?}");
    }

    // The restored directory keeps working: new files get keys of their own (sled's id
    // generator was moved past the restored keys), and old files still find themselves.
    let newcomer = TestPeer::start()?;
    let fresh: Vec<SharedFile> = (500_000..500_030).map(load_file).collect();
    newcomer.announce(&mut r, fresh).await?;
    wait_indexed(&r, files_in_backup + 30).await?;
    for n in (0..BASE_FILES).step_by(7).chain([500_000, 500_029]) {
        let (ids, _) = search_ids(&mut r, &word(n)).await?;
        assert!(ids.contains(&cid(n).to_vec()), "file {n} is found by its word after new publishes");
    }
    restored.shutdown().await?;
    original.shutdown().await?;
    drop(peers);
    Ok(())
}

/// Damages a copy of a backup in one way.
type Damage<'a> = Box<dyn Fn(&Path) -> std::io::Result<()> + 'a>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_backup_or_a_busy_data_dir_is_refused_and_nothing_is_written() -> anyhow::Result<()> {
    let dir = TestDirectory::start(60).await?;
    let mut c = dir.client().await?;
    let peer = TestPeer::start()?;
    peer.announce(&mut c, (0..50).map(base_file).collect()).await?;
    let backups = tempfile::tempdir()?;
    let good = backups.path().join("good");
    quaver_directory::admin::fetch_backup(&dir.url(), None, &good).await?;
    let snapshot_len = std::fs::metadata(good.join(backup::SNAPSHOT_FILE))?.len();

    let damaged: Vec<(&str, Damage)> = vec![
        (
            "truncated",
            Box::new(|p: &Path| {
                let f = std::fs::OpenOptions::new().write(true).open(p.join(backup::SNAPSHOT_FILE))?;
                f.set_len(snapshot_len / 2)
            }),
        ),
        (
            "a flipped byte",
            Box::new(|p: &Path| {
                let path = p.join(backup::SNAPSHOT_FILE);
                let mut bytes = std::fs::read(&path)?;
                let middle = bytes.len() / 2;
                bytes[middle] ^= 0x40;
                std::fs::write(path, bytes)
            }),
        ),
        ("no manifest", Box::new(|p: &Path| std::fs::remove_file(p.join("manifest.json")))),
        (
            "a manifest that lies about the hash",
            Box::new(|p: &Path| {
                let path = p.join("manifest.json");
                let text = std::fs::read_to_string(&path)?;
                let mut json: serde_json::Value = serde_json::from_str(&text)?;
                json["snapshot_blake3"] = serde_json::Value::String("00".repeat(32));
                std::fs::write(path, json.to_string())
            }),
        ),
        (
            "garbage with a matching manifest",
            Box::new(|p: &Path| {
                let path = p.join(backup::SNAPSHOT_FILE);
                let garbage = vec![7u8; snapshot_len as usize];
                std::fs::write(&path, &garbage)?;
                let manifest = p.join("manifest.json");
                let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&manifest)?)?;
                json["snapshot_blake3"] =
                    serde_json::Value::String(blake3::hash(&garbage).to_hex().to_string());
                std::fs::write(manifest, json.to_string())
            }),
        ),
    ];
    for (what, damage) in damaged {
        let copy = backups.path().join(what.replace(' ', "-"));
        std::fs::create_dir(&copy)?;
        for name in [backup::SNAPSHOT_FILE, "manifest.json"] {
            std::fs::copy(good.join(name), copy.join(name))?;
        }
        damage(&copy)?;
        let target = backups.path().join(format!("{}-data", what.replace(' ', "-")));
        let err = backup::restore(&copy, &target, false).expect_err(what);
        assert!(matches!(err, BackupError::Corrupt(_)), "{what}: {err}");
        assert!(err.to_string().starts_with("the backup is unusable"), "{what}: {err}");
        assert!(!target.exists(), "{what}: nothing may be written");
    }

    // A data dir in use by a running server is refused even with --force, and keeps its data.
    let live = dir.data.path();
    let before = std::fs::read_dir(live)?.count();
    let err = backup::restore(&good, live, true).expect_err("the server holds it");
    assert!(matches!(err, BackupError::Refused(_)) && err.to_string().contains("running"), "{err}");
    assert_eq!(std::fs::read_dir(live)?.count(), before);

    // A non-empty data dir is refused without --force; with it, the old catalog is kept aside.
    let other = backups.path().join("other-data");
    std::fs::create_dir_all(other.join("index"))?;
    std::fs::write(other.join("index").join("stale"), b"old index")?;
    let err = backup::restore(&good, &other, false).expect_err("not empty");
    assert!(matches!(err, BackupError::Refused(_)) && err.to_string().contains("--force"), "{err}");
    assert!(other.join("index").join("stale").exists());
    let report = backup::restore(&good, &other, true)?;
    assert!(report.previous.is_none());
    assert!(!other.join("index").exists(), "the old index is deleted, to be rebuilt");
    let report = backup::restore(&good, &other, true)?;
    assert!(report.previous.as_ref().is_some_and(|p| p.exists()), "{report:?}");
    Ok(())
}
