//! Search quality on real song metadata (NetEase, ~38.5k songs; see
//! /work/shared/data/songs/README.md). Skips when the data set is absent.
//!
//! Queries are derived mechanically from every `STEP`-th row: (a) the exact title, (b) a
//! 2-character fragment from the middle of the title's longest CJK run (>= 3 chars), (c) the
//! first artist plus the title's longest word, (d) the title's longest all-ASCII-letters word
//! (>= 3 chars), lowercased. A query counts as a hit when a row with the same title (and the
//! same first artist, for (c)) is in the top 10. A query whose answer set is itself larger than
//! 10 distinct titles (e.g. the word `love`) cannot be judged by top-10 recall: those are
//! counted apart ("ambiguous"), printed, and not part of the asserted recall.

use std::collections::HashSet;

use super::analyzer::is_cjk;
use super::*;

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data/songs/songs.tsv");
const STEP: usize = 37;
const TOP: usize = 10;

struct Row {
    title: String,
    artists: String,
    first_artist: String,
}

fn load() -> Option<Vec<Row>> {
    let text = std::fs::read_to_string(DATA).ok()?;
    let rows = text
        .lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split('\t').collect();
            let (title, artists) = (*cols.get(1)?, *cols.get(2)?);
            Some(Row {
                title: title.to_string(),
                artists: artists.replace('|', " "),
                first_artist: artists.split('|').next().unwrap_or("").to_string(),
            })
        })
        .collect();
    Some(rows)
}

/// Pieces of `s` between non-alphanumeric characters.
fn words(s: &str) -> Vec<&str> {
    s.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).collect()
}

/// The first longest item by character count.
fn longest<'a>(items: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let mut best: Option<&str> = None;
    for item in items {
        if best.is_none_or(|b| item.chars().count() > b.chars().count()) {
            best = Some(item);
        }
    }
    best
}

#[derive(Default)]
struct Tally {
    hits: usize,
    total: usize,
    ambiguous_hits: usize,
    ambiguous: usize,
}

#[test]
fn recall_on_real_song_titles() {
    let Some(rows) = load() else {
        println!("skipping: ../shared/data/songs not found");
        return;
    };
    let idx = SearchIndex::in_memory().unwrap();
    let docs: Vec<IndexDoc<'_>> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| IndexDoc { key: i as u64, title: &r.title, artist: &r.artists, ..IndexDoc::default() })
        .collect();
    idx.upsert(&docs).unwrap();
    idx.commit().unwrap();
    assert_eq!(idx.num_docs(), rows.len() as u64);

    let lower_titles: Vec<String> = rows.iter().map(|r| r.title.to_lowercase()).collect();
    // Distinct titles among rows accepted by `pred`.
    let answers = |pred: &dyn Fn(usize) -> bool| -> usize {
        let set: HashSet<&str> =
            (0..rows.len()).filter(|&i| pred(i)).map(|i| rows[i].title.as_str()).collect();
        set.len()
    };
    let mut tally: [Tally; 4] = Default::default();
    let mut misses = Vec::new();
    let mut check = |cat: usize, q: String, ambiguous: bool, ok: &dyn Fn(&Row) -> bool| {
        let hit = match idx.search(&q, &IndexFilters::default(), 0, TOP, &|_| Some(1.0)) {
            Ok(hits) => hits.iter().any(|(k, _)| ok(&rows[*k as usize])),
            Err(IndexError::BadQuery(_)) => return,
            Err(e) => panic!("{q:?}: {e}"),
        };
        let t = &mut tally[cat];
        if ambiguous {
            t.ambiguous += 1;
            t.ambiguous_hits += usize::from(hit);
        } else {
            t.total += 1;
            t.hits += usize::from(hit);
            if !hit {
                misses.push(format!("({}) {q}", ["a", "b", "c", "d"][cat]));
            }
        }
    };
    for row in rows.iter().step_by(STEP) {
        let title = row.title.as_str();
        check(0, title.to_string(), false, &|r| r.title == title);

        let runs: Vec<String> = title
            .split(|c: char| !is_cjk(c))
            .filter(|r| r.chars().count() >= 3)
            .map(str::to_string)
            .collect();
        if let Some(run) = longest(runs.iter().map(String::as_str)) {
            let chars: Vec<char> = run.chars().collect();
            let mid = chars.len() / 2;
            let frag: String = chars[mid - 1..=mid].iter().collect();
            let amb = answers(&|i| rows[i].title.contains(&frag)) > TOP;
            check(1, frag, amb, &|r| r.title == title);
        }

        if let Some(word) = longest(words(title)).filter(|_| !row.first_artist.is_empty()) {
            let (artist, w) = (row.first_artist.as_str(), word.to_lowercase());
            let amb = answers(&|i| rows[i].artists.contains(artist) && lower_titles[i].contains(&w)) > TOP;
            check(2, format!("{artist} {word}"), amb, &|r| r.title == title && r.first_artist == artist);
        }

        let latin =
            words(title).into_iter().filter(|w| w.len() >= 3 && w.chars().all(|c| c.is_ascii_alphabetic()));
        if let Some(word) = longest(latin) {
            let w = word.to_lowercase();
            let amb = answers(&|i| words(&lower_titles[i]).contains(&w.as_str())) > TOP;
            check(3, w, amb, &|r| r.title == title);
        }
    }

    let names = ["exact title", "CJK fragment", "artist + word", "English word"];
    let (mut hits, mut total) = (0, 0);
    for (name, t) in names.iter().zip(&tally) {
        println!(
            "{name:>14}: recall {}/{} = {:.3}; ambiguous (not asserted) {}/{}",
            t.hits,
            t.total,
            t.hits as f64 / t.total.max(1) as f64,
            t.ambiguous_hits,
            t.ambiguous
        );
        hits += t.hits;
        total += t.total;
    }
    let recall = hits as f64 / total.max(1) as f64;
    println!("overall recall@{TOP}: {hits}/{total} = {recall:.3}");
    for m in misses.iter().take(40) {
        println!("  miss {m}");
    }
    assert!(total >= 20, "only {total} queries");
    assert!(recall >= 0.95, "recall {recall:.3} < 0.95");
}
