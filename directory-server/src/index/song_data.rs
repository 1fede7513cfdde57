//! The real song metadata the search tests run on (`../shared/data/songs/songs.tsv`, NetEase,
//! ~38.5k songs; see its README): loading, and an in-memory index of all of it. Test support
//! only; a fresh clone has no `../shared`, and then [`load`] says `None` and the tests skip.

use super::{IndexDoc, SearchIndex};

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data/songs/songs.tsv");

pub struct Row {
    pub title: String,
    /// Artists joined by spaces (as indexed).
    pub artists: String,
    /// Artists joined by `|` (as in the file).
    pub artist_list: String,
    pub first_artist: String,
}

/// Every row of the file, or `None` (with a message) when the data set is absent.
pub fn load() -> Option<Vec<Row>> {
    let Ok(text) = std::fs::read_to_string(DATA) else {
        println!("skipping: ../shared/data/songs not found");
        return None;
    };
    let rows = text
        .lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split('\t').collect();
            let (title, artists) = (*cols.get(1)?, *cols.get(2)?);
            Some(Row {
                title: title.to_string(),
                artists: artists.replace('|', " "),
                artist_list: artists.to_string(),
                first_artist: artists.split('|').next().unwrap_or("").to_string(),
            })
        })
        .collect();
    Some(rows)
}

/// All rows indexed by title and artists in memory, keyed by their row number.
pub fn index(rows: &[Row]) -> SearchIndex {
    let started = std::time::Instant::now();
    let idx = SearchIndex::in_memory().unwrap();
    let docs: Vec<IndexDoc<'_>> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| IndexDoc { key: i as u64, title: &r.title, artist: &r.artists, ..IndexDoc::default() })
        .collect();
    idx.upsert(&docs).unwrap();
    idx.commit().unwrap();
    assert_eq!(idx.num_docs(), rows.len() as u64);
    println!("indexed {} songs in {:.1?}", rows.len(), started.elapsed());
    idx
}

/// Pieces of `s` between non-alphanumeric characters.
pub fn words(s: &str) -> Vec<&str> {
    s.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).collect()
}

/// The first longest item by character count.
pub fn longest<'a>(items: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let mut best: Option<&str> = None;
    for item in items {
        if best.is_none_or(|b| item.chars().count() > b.chars().count()) {
            best = Some(item);
        }
    }
    best
}
