//! Search quality on real song metadata (NetEase, ~38.5k songs; see
//! /work/shared/data/songs/README.md). Skips when the data set is absent.
//!
//! Queries are derived mechanically from every `STEP`-th row: (a) the exact title, (b) a
//! 2-character fragment from the middle of the title's longest CJK run (>= 3 chars), (c) the
//! first artist plus the title's longest word, (d) the title's longest all-ASCII-letters word
//! (>= 3 chars), lowercased, (e) the full toneless pinyin of the title's first run of >= 2
//! characters that have pinyin (`qingtian`). A query counts as a hit when a row with the same title (and the
//! same first artist, for (c)) is in the top 10. A query whose answer set is itself larger than
//! 10 distinct titles (e.g. the word `love`) cannot be judged by top-10 recall: those are
//! counted apart ("ambiguous"), printed, and not part of the asserted recall.

use std::collections::{HashMap, HashSet};

use ::pinyin::ToPinyin;

use super::analyzer::is_cjk;
use super::romanize;
use super::song_data::{Row, load, longest, words};
use super::*;

const STEP: usize = 37;
const TOP: usize = 10;

#[derive(Default)]
struct Tally {
    hits: usize,
    total: usize,
    ambiguous_hits: usize,
    ambiguous: usize,
}

#[test]
fn recall_on_real_song_titles() {
    let Some(rows) = load() else { return };
    let idx = song_data::index(&rows);
    let started = std::time::Instant::now();

    // Answer sets, to tell ambiguous queries (more than TOP distinct right titles) apart.
    let distinct: HashSet<&str> = rows.iter().map(|r| r.title.as_str()).collect();
    let cjk_titles: Vec<&str> = distinct.into_iter().filter(|t| t.chars().any(is_cjk)).collect();
    let mut titles_by_word: HashMap<String, HashSet<&str>> = HashMap::new();
    let mut titles_by_pinyin: HashMap<String, HashSet<&str>> = HashMap::new();
    let mut rows_by_artist: HashMap<&str, Vec<&Row>> = HashMap::new();
    for r in &rows {
        for w in words(&r.title.to_lowercase()) {
            titles_by_word.entry(w.to_string()).or_default().insert(&r.title);
        }
        let mut pinyin = Vec::new();
        romanize::terms(&r.title, &mut pinyin);
        for p in pinyin {
            titles_by_pinyin.entry(p).or_default().insert(&r.title);
        }
        for a in r.artist_list.split('|') {
            rows_by_artist.entry(a).or_default().push(r);
        }
    }
    let mut tally: [Tally; 5] = Default::default();
    let mut misses = Vec::new();
    let mut search_time = std::time::Duration::ZERO;
    let mut check = |cat: usize, q: String, ambiguous: bool, ok: &dyn Fn(&Row) -> bool| {
        let t0 = std::time::Instant::now();
        let res = idx.search(&q, &IndexFilters::default(), 0, TOP, &|_| Some(1.0));
        search_time += t0.elapsed();
        let hit = match res {
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
                misses.push(format!("({}) {q}", ["a", "b", "c", "d", "e"][cat]));
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
            let amb = cjk_titles.iter().filter(|t| t.contains(&frag)).nth(TOP).is_some();
            check(1, frag, amb, &|r| r.title == title);
        }

        if let Some(word) = longest(words(title)).filter(|_| !row.first_artist.is_empty()) {
            let (artist, w) = (row.first_artist.as_str(), word.to_lowercase());
            let by_artist = rows_by_artist.get(artist).map(Vec::as_slice).unwrap_or_default();
            let answers: HashSet<&str> = by_artist
                .iter()
                .filter(|r| r.title.to_lowercase().contains(&w))
                .map(|r| r.title.as_str())
                .collect();
            let amb = answers.len() > TOP;
            check(2, format!("{artist} {word}"), amb, &|r| r.title == title && r.first_artist == artist);
        }

        let latin =
            words(title).into_iter().filter(|w| w.len() >= 3 && w.chars().all(|c| c.is_ascii_alphabetic()));
        if let Some(word) = longest(latin) {
            let w = word.to_lowercase();
            let amb = titles_by_word.get(&w).is_some_and(|t| t.len() > TOP);
            check(3, w, amb, &|r| r.title == title);
        }

        let hanzi: String = title
            .chars()
            .skip_while(|c| c.to_pinyin().is_none())
            .take_while(|c| c.to_pinyin().is_some())
            .collect();
        if hanzi.chars().count() >= 2 {
            let full: String = hanzi.as_str().to_pinyin().flatten().map(|p| p.plain()).collect();
            let full = full.replace('ü', "v");
            let amb = titles_by_pinyin.get(&full).is_none_or(|t| t.len() > TOP);
            check(4, full, amb, &|r| r.title == title);
        }
    }

    println!("ran the queries in {:.1?} ({search_time:.1?} searching)", started.elapsed());
    let names = ["exact title", "CJK fragment", "artist + word", "English word", "pinyin"];
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
