//! Deriving the query set mechanically from the song rows: every `STEP`-th row (or
//! `ARTIST_STEP`-th distinct artist) that meets a category's condition becomes a query, and its
//! expected rows come from the data by rule. Nothing is picked by hand after seeing results.
//!
//! Unless a category says otherwise, the expected rows are all rows with the source row's
//! (title, first artist), so duplicates of a song count as hits.
//!
//! A query that cannot be judged by top-10 ranking is marked `ambiguous` (counted apart, not
//! asserted): when more than 10 other songs (distinct title + first artist) satisfy it just as
//! well. See each category for its rule.

use std::collections::{HashMap, HashSet};

use quaver_directory::index::{fold, is_cjk, pinyin_spelling, pinyin_terms};

use super::songs::{Row, latin_words, longest, words};
use super::{Category, Query, TOP};

/// Every `STEP`-th row meeting a category's condition becomes a query (per category).
const STEP: usize = 97;
/// Every `ARTIST_STEP`-th distinct first artist (in file order) becomes an artist query.
const ARTIST_STEP: usize = 41;
/// Rarer categories take every `RARE_STEP`-th row meeting their condition.
const RARE_STEP: usize = 7;

/// Words that mark a title as a variant of another (`(Live版)`, `- DJ版`, `（降调版）`, `(Remix)`).
const VARIANT_MARKS: [&str; 8] =
    ["版", "live", "remix", "dj", "伴奏", "instrumental", "acoustic", "remaster"];

/// Folded as the index folds (full width, traditional to simplified), then lowercased.
fn folded(s: &str) -> String {
    fold(s).to_lowercase()
}

/// One edit: swap the two middle letters, or drop the middle letter when they are equal.
fn typo(word: &str) -> String {
    let mut chars: Vec<char> = word.chars().collect();
    let mid = chars.len() / 2;
    if chars[mid - 1] != chars[mid] {
        chars.swap(mid - 1, mid);
    } else {
        chars.remove(mid);
    }
    chars.into_iter().collect()
}

/// Whether `a` and `b` differ by at most one insertion, deletion, substitution or swap of two
/// adjacent characters.
fn within_one_edit(a: &str, b: &str) -> bool {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let (short, long) = if a.len() <= b.len() { (&a, &b) } else { (&b, &a) };
    if long.len() - short.len() > 1 {
        return false;
    }
    let start = short.iter().zip(long.iter()).take_while(|(x, y)| x == y).count();
    if short.len() == long.len() {
        let end = short.iter().rev().zip(long.iter().rev()).take_while(|(x, y)| x == y).count();
        let diff = short.len().saturating_sub(start + end);
        diff <= 1 || (diff == 2 && short[start] == long[start + 1] && short[start + 1] == long[start])
    } else {
        short[start..] == long[start + 1..]
    }
}

/// `(base, suffix)` when `title` ends in a variant suffix: a bracketed part or a ` - ` part
/// holding a variant mark.
fn split_variant(title: &str) -> Option<(&str, &str)> {
    let cut = [" - ", "(", "（", "["].iter().filter_map(|sep| title.rfind(sep)).max()?;
    let (base, suffix) = title.split_at(cut);
    let lower = suffix.to_lowercase();
    let base = base.trim();
    (VARIANT_MARKS.iter().any(|m| lower.contains(m)) && !base.is_empty()).then_some((base, suffix))
}

fn is_kana_or_hangul(c: char) -> bool {
    matches!(c as u32, 0x3040..=0x30FF | 0xAC00..=0xD7AF)
}

type Song<'a> = (&'a str, &'a str);

/// Lookups from the data that decide expected rows and ambiguity.
struct Lookups<'a> {
    rows_by_song: HashMap<Song<'a>, Vec<u32>>,
    rows_by_folded_song: HashMap<(String, &'a str), Vec<u32>>,
    artists_by_title: HashMap<String, HashSet<&'a str>>,
    songs_by_pinyin: HashMap<String, HashSet<Song<'a>>>,
    songs_by_word: HashMap<String, HashSet<Song<'a>>>,
    rows_by_word: HashMap<String, Vec<u32>>,
    rows_by_any_artist: HashMap<&'a str, Vec<u32>>,
    /// Distinct songs, and one text of all their folded `title\tartists\n` lines with each
    /// line's start: one substring search over it is fast even in a debug build.
    songs: Vec<Song<'a>>,
    haystack: String,
    starts: Vec<usize>,
}

impl<'a> Lookups<'a> {
    fn new(rows: &'a [Row]) -> Self {
        let mut l = Lookups {
            rows_by_song: HashMap::new(),
            rows_by_folded_song: HashMap::new(),
            artists_by_title: HashMap::new(),
            songs_by_pinyin: HashMap::new(),
            songs_by_word: HashMap::new(),
            rows_by_word: HashMap::new(),
            rows_by_any_artist: HashMap::new(),
            songs: Vec::new(),
            haystack: String::new(),
            starts: Vec::new(),
        };
        for (i, r) in rows.iter().enumerate() {
            let i = i as u32;
            let song = (r.title.as_str(), r.first_artist.as_str());
            let title = folded(&r.title);
            if !l.rows_by_song.contains_key(&song) {
                l.songs.push(song);
                l.starts.push(l.haystack.len());
                l.haystack.push_str(&format!("{title}\t{}\n", folded(&r.artists)));
            }
            l.rows_by_song.entry(song).or_default().push(i);
            l.rows_by_folded_song.entry((title.clone(), &r.first_artist)).or_default().push(i);
            l.artists_by_title.entry(title).or_default().insert(&r.first_artist);
            for p in pinyin_terms(&r.title) {
                l.songs_by_pinyin.entry(p).or_default().insert(song);
            }
            for w in words(&r.title.to_lowercase()) {
                l.songs_by_word.entry(w.to_string()).or_default().insert(song);
            }
            for w in latin_words(&r.title) {
                let rows = l.rows_by_word.entry(w).or_default();
                if rows.last() != Some(&i) {
                    rows.push(i);
                }
            }
            for a in &r.artist_list {
                l.rows_by_any_artist.entry(a.as_str()).or_default().push(i);
            }
        }
        l
    }

    /// Whether more than `TOP` distinct artists have a song with this (folded) title.
    fn title_ambiguous(&self, title: &str) -> bool {
        self.artists_by_title.get(&folded(title)).is_some_and(|a| a.len() > TOP)
    }

    /// Number of songs (up to `TOP + 1`) other than `own` whose folded title contains `frag`.
    fn other_songs_with_fragment(&self, frag: &str, own: Song<'_>) -> usize {
        self.songs_matching(&folded(frag), |line, at, song| song != own && at < line.find('\t').unwrap_or(0))
    }

    /// Distinct songs (up to `TOP + 1`) whose line has `needle` at a place `keep` accepts
    /// (given the line, the offset in it, and the song).
    fn songs_matching(&self, needle: &str, keep: impl Fn(&str, usize, Song<'_>) -> bool) -> usize {
        let mut found = HashSet::new();
        for (at, _) in self.haystack.match_indices(needle) {
            let i = self.starts.partition_point(|&s| s <= at) - 1;
            let line_end = self.starts.get(i + 1).copied().unwrap_or(self.haystack.len());
            let line = &self.haystack[self.starts[i]..line_end];
            if keep(line, at - self.starts[i], self.songs[i]) {
                found.insert(i);
                if found.len() > TOP {
                    break;
                }
            }
        }
        found.len()
    }

    /// Songs (up to `TOP + 1`) with a title word other than `word` that `like` accepts.
    fn songs_with_other_word(&self, word: &str, like: &dyn Fn(&str) -> bool) -> usize {
        let mut found: HashSet<Song<'_>> = HashSet::new();
        for (w, s) in &self.songs_by_word {
            if w != word && like(w) {
                found.extend(s);
                if found.len() > TOP {
                    break;
                }
            }
        }
        found.len()
    }

    /// Songs (up to `TOP + 1`) by other first artists that mention `artist` in their artists
    /// (or titles, with `in_title`).
    fn songs_mentioning_elsewhere(&self, artist: &str, in_title: bool) -> usize {
        self.songs_matching(&folded(artist), |line, at, song| {
            song.1 != artist && (in_title || at > line.find('\t').unwrap_or(0))
        })
    }
}

/// Counts per category, to take every `step`-th candidate.
struct Sampler([usize; Category::ALL.len()]);

impl Sampler {
    fn take(&mut self, cat: Category, step: usize) -> bool {
        let seen = &mut self.0[cat as usize];
        *seen += 1;
        (*seen - 1).is_multiple_of(step)
    }
}

/// The whole query set for `rows`.
pub fn queries(rows: &[Row]) -> Vec<Query> {
    let l = Lookups::new(rows);
    let mut out = Vec::new();
    let mut sample = Sampler([0; Category::ALL.len()]);
    let mut push = |category, text: String, expected: &[u32], ambiguous| {
        out.push(Query { category, text, expected: expected.to_vec(), worse: Vec::new(), ambiguous });
    };
    let mut variants = Vec::new();

    for row in rows {
        let (title, artist) = (row.title.as_str(), row.first_artist.as_str());
        let song = l.rows_by_song.get(&(title, artist)).map_or(&[][..], Vec::as_slice);

        if sample.take(Category::ExactTitle, STEP) {
            push(Category::ExactTitle, title.to_string(), song, l.title_ambiguous(title));
        }

        // CJK fragments from the middle of the title's longest CJK run (>= 3 chars).
        let runs = title.split(|c: char| !is_cjk(c)).filter(|r| r.chars().count() >= 3);
        if let Some(run) = longest(runs) {
            let chars: Vec<char> = run.chars().collect();
            let mid = chars.len() / 2;
            for (cat, frag) in [
                (Category::Fragment2, chars[mid - 1..=mid].iter().collect::<String>()),
                (Category::Fragment1, chars[mid].to_string()),
            ] {
                if sample.take(cat, STEP) {
                    let ambiguous = l.other_songs_with_fragment(&frag, (title, artist)) >= TOP;
                    push(cat, frag, song, ambiguous);
                }
            }
        }

        if !artist.is_empty() && sample.take(Category::ArtistTitle, STEP) {
            push(Category::ArtistTitle, format!("{artist} {title}"), song, false);
        }

        // Pinyin of a title made only of characters with a reading.
        if title.chars().count() >= 2 && title.chars().all(|c| !pinyin_spelling(&c.to_string()).0.is_empty())
        {
            let (full, initials) = pinyin_spelling(title);
            let ambiguous = |term: &str| l.songs_by_pinyin.get(term).is_none_or(|s| s.len() > TOP);
            if sample.take(Category::PinyinFull, STEP) {
                push(Category::PinyinFull, full.clone(), song, ambiguous(&full));
            }
            if sample.take(Category::PinyinInitials, STEP) {
                push(Category::PinyinInitials, initials.clone(), song, ambiguous(&initials));
            }
        }

        // Typo and prefix of the title's longest ASCII-letter words.
        let latin = latin_words(title);
        let with_word = |w: &str| l.rows_by_word.get(w).map_or(&[][..], Vec::as_slice);
        if let Some(word) = longest(latin.iter().map(String::as_str).filter(|w| w.len() >= 5))
            && sample.take(Category::Typo, STEP)
        {
            let q = typo(word);
            let ambiguous = l.songs_by_word.contains_key(&q)
                || l.songs_with_other_word(word, &|w| within_one_edit(w, &q)) > TOP;
            push(Category::Typo, q, with_word(word), ambiguous);
        }
        if let Some(word) = longest(latin.iter().map(String::as_str).filter(|w| w.len() >= 7))
            && sample.take(Category::Prefix, STEP)
        {
            let q = &word[..5];
            let ambiguous =
                l.songs_by_word.contains_key(q) || l.songs_with_other_word(word, &|w| w.starts_with(q)) > TOP;
            push(Category::Prefix, q.to_string(), with_word(word), ambiguous);
        }

        // The title in the other script: simplified titles written traditional, and back.
        let trad = hanconv::s2t(title);
        let simp = hanconv::t2s(title);
        let other = if trad != title {
            Some(trad)
        } else if simp != title {
            Some(simp)
        } else {
            None
        };
        if let Some(other) = other
            && sample.take(Category::SimpTrad, STEP / 2)
        {
            push(Category::SimpTrad, other, song, l.title_ambiguous(title));
        }

        // Japanese and Korean: the title's longest word holding kana or Hangul.
        let jk =
            words(title).into_iter().filter(|w| w.chars().any(is_kana_or_hangul) && w.chars().count() >= 2);
        if let Some(word) = longest(jk)
            && sample.take(Category::JapaneseKorean, RARE_STEP)
        {
            let ambiguous = l.other_songs_with_fragment(word, (title, artist)) >= TOP;
            push(Category::JapaneseKorean, word.to_string(), song, ambiguous);
        }

        // Mixed scripts: a word joining Latin letters or digits and CJK characters (`CD盒`).
        let mixed = words(title).into_iter().filter(|w| {
            w.chars().any(|c| c.is_ascii_alphanumeric()) && w.chars().any(is_cjk) && w.chars().count() >= 3
        });
        if let Some(word) = longest(mixed)
            && sample.take(Category::MixedScript, RARE_STEP)
        {
            let ambiguous = l.other_songs_with_fragment(word, (title, artist)) >= TOP;
            push(Category::MixedScript, word.to_string(), song, ambiguous);
        }

        // Variants: the plain title must rank above `title (Live版)` by the same artist.
        if let Some((base, _)) = split_variant(title)
            && let Some(plain) = l.rows_by_folded_song.get(&(folded(base), artist))
            && sample.take(Category::Variant, 1)
        {
            variants.push(Query {
                category: Category::Variant,
                text: base.to_string(),
                expected: plain.clone(),
                worse: song.to_vec(),
                ambiguous: l.title_ambiguous(base),
            });
        }
    }

    // Artists: plain text, and as a field query.
    let mut seen = HashSet::new();
    let artists: Vec<&str> =
        rows.iter().map(|r| r.first_artist.as_str()).filter(|a| !a.is_empty() && seen.insert(*a)).collect();
    for (i, &artist) in artists.iter().enumerate() {
        if i % ARTIST_STEP == 0 {
            let expected: Vec<u32> = rows
                .iter()
                .enumerate()
                .filter(|(_, r)| r.first_artist == artist)
                .map(|(i, _)| i as u32)
                .collect();
            let ambiguous = l.songs_mentioning_elsewhere(artist, true) > TOP;
            push(Category::Artist, artist.to_string(), &expected, ambiguous);
        }
        if i % ARTIST_STEP == ARTIST_STEP / 2 {
            let expected = l.rows_by_any_artist.get(artist).map_or(&[][..], Vec::as_slice);
            let ambiguous = l.songs_mentioning_elsewhere(artist, false) > TOP;
            let text = if artist.contains(' ') {
                format!("artist:\"{artist}\"")
            } else {
                format!("artist:{artist}")
            };
            push(Category::FieldArtist, text, expected, ambiguous);
        }
    }
    out.append(&mut variants);
    super::prepare(&mut out);
    out
}

#[cfg(test)]
mod tests {
    #[allow(unused_imports)] // the bench that includes this module compiles no #[test] functions
    use super::*;

    #[test]
    fn variant_suffixes_split_off() {
        assert_eq!(split_variant("如果可以 (Live版)"), Some(("如果可以", "(Live版)")));
        assert_eq!(split_variant("雨天快乐（女声版）"), Some(("雨天快乐", "（女声版）")));
        assert_eq!(split_variant("Heathens (DISTO Remix)"), Some(("Heathens", "(DISTO Remix)")));
        assert_eq!(split_variant("Song - DJ版"), Some(("Song", " - DJ版")));
        assert_eq!(split_variant("Live Another Day"), None);
        assert_eq!(split_variant("Love (Part 2)"), None);
    }

    #[test]
    fn one_edit() {
        assert!(within_one_edit("rhapsody", "rhapsdoy"));
        assert!(within_one_edit("rhapsody", "rhapody"));
        assert!(!within_one_edit("rhapsody", "rahpsdoy"));
        assert_eq!(typo("bohemian"), "bohmeian");
    }
}
