//! The real song metadata the search harness runs on (`../shared/data/songs/songs.tsv`, NetEase,
//! ~38.5k songs; see its README). Test data only: read from beside the repository, never copied
//! into it. A fresh clone has no `../shared`; then [`load`] says so and returns `None`.

use std::path::PathBuf;

pub struct Row {
    pub title: String,
    /// Artists joined by spaces (as indexed).
    pub artists: String,
    /// Artists in file order.
    pub artist_list: Vec<String>,
    pub first_artist: String,
}

/// Where the data set lives: beside the repository.
pub fn path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/songs/songs.tsv")
}

/// Every row of the file, or `None` (with a message) when the data set is absent.
pub fn load() -> Option<Vec<Row>> {
    let path = path();
    let Ok(text) = std::fs::read_to_string(&path) else {
        println!("skipping: {} not found (the song data set lives beside the repo)", path.display());
        return None;
    };
    let rows = text
        .lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split('\t').collect();
            let (title, artists) = (*cols.get(1)?, *cols.get(2)?);
            let artist_list: Vec<String> = artists.split('|').map(str::to_string).collect();
            Some(Row {
                title: title.to_string(),
                artists: artists.replace('|', " "),
                first_artist: artist_list.first().cloned().unwrap_or_default(),
                artist_list,
            })
        })
        .collect();
    Some(rows)
}

/// Pieces of `s` between non-alphanumeric characters.
pub fn words(s: &str) -> Vec<&str> {
    s.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).collect()
}

/// Lowercased words made only of ASCII letters.
pub fn latin_words(s: &str) -> Vec<String> {
    words(s)
        .into_iter()
        .filter(|w| w.chars().all(|c| c.is_ascii_alphabetic()))
        .map(str::to_ascii_lowercase)
        .collect()
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
