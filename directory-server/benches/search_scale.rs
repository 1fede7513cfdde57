//! Search at scale: the real song rows (`../shared/data/songs`) replicated to 1M documents with
//! synthetic keys, file names and encodings, indexed on disk; then every query of the quality
//! harness (`tests/quality`) is run and its latency measured.
//!
//! ```sh
//! cargo bench --workspace --bench search_scale              # 1M documents
//! QUAVER_BENCH_DOCS=200000 cargo bench --workspace --bench search_scale
//! QUAVER_BENCH_ONLY=typo cargo bench --workspace --bench search_scale   # one category
//! ```
//!
//! Prints the index build rate, then mean/p50/p99/max latency per query category and overall, and
//! recall@10 / MRR@10 at this size (a hit is any copy of an expected row). Each search runs as
//! the directory runs it: a page of 10 with a per-document weight (here from synthetic source
//! counts) deciding admission and order. Exits quietly when the data set is absent.

#[path = "../tests/quality/mod.rs"]
mod quality;

use std::time::{Duration, Instant};

use quality::{Category, Report, TOP};
use quaver_directory::index::{IndexDoc, IndexError, IndexFilters, SearchIndex};
use quaver_shared::ContentId;

const DEFAULT_DOCS: usize = 1_000_000;
const BATCH: usize = 50_000;
const ENCODINGS: [(&str, u32); 4] = [("mp3", 320), ("flac", 900), ("m4a", 256), ("mp3", 128)];

fn main() -> anyhow::Result<()> {
    let Some(rows) = quality::songs::load() else { return Ok(()) };
    let docs: usize =
        std::env::var("QUAVER_BENCH_DOCS").ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_DOCS);
    let n = rows.len();
    let dir = tempfile::tempdir()?;
    let (idx, _) = SearchIndex::open_or_create(dir.path())?;

    // Build: copy c of row i has key c * n + i, its own file name and encoding.
    let started = Instant::now();
    let mut key = 0usize;
    while key < docs {
        let end = (key + BATCH).min(docs);
        let names: Vec<String> = (key..end)
            .map(|k| {
                let r = &rows[k % n];
                format!("{} - {} [{}].{}", r.first_artist, r.title, k / n, ENCODINGS[(k / n) % 4].0)
            })
            .collect();
        let batch: Vec<IndexDoc<'_>> = (key..end)
            .zip(&names)
            .map(|(k, name)| {
                let r = &rows[k % n];
                let (_, kbps) = ENCODINGS[(k / n) % 4];
                IndexDoc {
                    key: k as u64,
                    content_id: ContentId::of_bytes(&(k as u64).to_be_bytes()),
                    title: &r.title,
                    artist: &r.artists,
                    album: "",
                    file_name: name,
                    media_kind: 1,
                    size: u64::from(kbps) * 30_000,
                    duration_ms: 240_000,
                    bitrate_kbps: kbps,
                }
            })
            .collect();
        idx.upsert(&batch)?;
        key = end;
    }
    idx.commit()?;
    let build = started.elapsed();
    // Background merges go on after the commit; a running server searches what they leave.
    let mut segments = (idx.segment_count(), Instant::now());
    while segments.1.elapsed() < Duration::from_secs(5) && started.elapsed() < Duration::from_secs(900) {
        std::thread::sleep(Duration::from_millis(500));
        if idx.segment_count() != segments.0 {
            segments = (idx.segment_count(), Instant::now());
        }
    }
    // A directory merges its index into one segment when indexing goes quiet
    // (`index::compaction`): measure the index it serves at rest.
    // A merge that loses a race with one of tantivy's own is thrown away: try again, as the
    // directory does (bounded).
    let merged = Instant::now();
    for _ in 0..10 {
        if idx.segment_count() == 1 || idx.merge_all()? {
            break;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    println!("merged into {} segment(s) in {:.1?}", idx.segment_count(), merged.elapsed());
    println!(
        "indexed {docs} documents ({n} songs replicated) in {:.1?}: {:.0} docs/s; {:.0} MiB on disk, {} segments at the end",
        build,
        docs as f64 / build.as_secs_f64(),
        idx.disk_bytes() as f64 / (1 << 20) as f64,
        idx.segment_count()
    );

    // Synthetic source counts: most files have a few online sources, some none (excluded).
    let weights: Vec<f32> = (0..docs).map(|k| (k * 7919 % 13) as f32).collect();
    let weight_of = |online: f32| 1.0 + 0.25 * online.ln_1p();
    let weight = |key: u64| {
        let online = *weights.get(key as usize)?;
        (online > 0.0).then(|| weight_of(online))
    };
    // The bound the directory passes too (from its most-sourced file): lets the index skip
    // documents that cannot make the page.
    let max_weight = weight_of(weights.iter().copied().fold(0.0, f32::max));

    let mut queries = quality::derive::queries(&rows);
    // `QUAVER_BENCH_ONLY=typo` runs one category (by its printed name), for profiling.
    if let Ok(only) = std::env::var("QUAVER_BENCH_ONLY") {
        queries.retain(|q| q.category.name() == only);
    }
    // One untimed pass warms the page cache and tantivy's caches, as a running server's are.
    for q in &queries {
        let _ = idx.search_bounded(&q.text, &IndexFilters::default(), 0, TOP, &weight, max_weight);
    }
    let mut report = Report::default();
    let mut latencies: Vec<(Category, Duration)> = Vec::with_capacity(queries.len());
    for q in &queries {
        let t0 = Instant::now();
        let res = idx.search_bounded(&q.text, &IndexFilters::default(), 0, TOP, &weight, max_weight);
        latencies.push((q.category, t0.elapsed()));
        let top: Vec<u32> = match res {
            Ok(hits) => hits.iter().map(|h| (h.key as usize % n) as u32).collect(),
            Err(IndexError::BadQuery(_)) => Vec::new(),
            Err(e) => anyhow::bail!("{:?}: {e}", q.text),
        };
        report.judge(q, &top, |r| rows[r as usize].title.clone());
    }

    println!("\nsearch latency, {} queries, sequential, page of {TOP}:", latencies.len());
    println!(
        "{:>16} {:>5} {:>9} {:>9} {:>9} {:>9}",
        "category", "n", "mean ms", "p50 ms", "p99 ms", "max ms"
    );
    let line = |name: &str, mut l: Vec<Duration>| {
        if l.is_empty() {
            return;
        }
        l.sort();
        let at = |p: f64| l[((l.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e3;
        // The mean is what throughput depends on: a few slow queries cost as much as many fast.
        let mean = l.iter().sum::<Duration>().as_secs_f64() * 1e3 / l.len() as f64;
        println!("{name:>16} {:>5} {mean:>9.2} {:>9.2} {:>9.2} {:>9.2}", l.len(), at(0.5), at(0.99), at(1.0));
    };
    for c in Category::ALL {
        line(c.name(), latencies.iter().filter(|(k, _)| *k == c).map(|(_, d)| *d).collect());
    }
    line("(all)", latencies.iter().map(|(_, d)| *d).collect());

    println!("\nquality at {docs} documents:");
    report.print();
    Ok(())
}
