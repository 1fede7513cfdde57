//! Grouping copies of one song in a page of search results.
//!
//! The same song is often shared as several files (MP3 and FLAC, 128 and 320 kbit/s, tagged
//! and untagged). Users want to see them together and pick the best-sourced copy first, not
//! have them scattered between other songs.
//!
//! Pure: hits in relevance order in, the same hits reordered out. A group is "same title and
//! same artist" after search folding (case, width, traditional/simplified); a hit without a
//! title is its own group. Each group takes the place of its best-ranked member, and inside a
//! group copies are ordered by online sources, then complete sources, then their original rank.
//! Grouping works within the page it is given; pages are never reshuffled against each other.

use std::collections::HashMap;

/// What grouping needs to know about one hit.
pub trait SongCopy {
    /// Title and artist, as shown (folded here).
    fn song(&self) -> (&str, &str);
    /// (online sources, complete sources).
    fn sources(&self) -> (u32, u32);
}

/// The group key of a title and artist: folded as the search index folds, lowercased, without
/// spaces; `None` when there is no title.
fn key(title: &str, artist: &str) -> Option<(String, String)> {
    let title = crate::index::song_text(title);
    (!title.is_empty()).then(|| (title, crate::index::song_text(artist)))
}

/// Reorders `hits` (best first) so that copies of one song are adjacent, best-sourced first.
pub fn group_copies<T: SongCopy>(hits: Vec<T>) -> Vec<T> {
    // Group index of each hit, groups numbered in order of their best member.
    let mut group_of_key: HashMap<(String, String), usize> = HashMap::new();
    let mut groups = 0usize;
    let mut tagged: Vec<(usize, usize, T)> = Vec::with_capacity(hits.len());
    for (rank, hit) in hits.into_iter().enumerate() {
        let (title, artist) = hit.song();
        let fresh = groups;
        let group = key(title, artist).map_or(fresh, |k| *group_of_key.entry(k).or_insert(fresh));
        if group == fresh {
            groups += 1;
        }
        tagged.push((group, rank, hit));
    }
    tagged.sort_by(|(ga, ra, a), (gb, rb, b)| {
        let (oa, ca) = a.sources();
        let (ob, cb) = b.sources();
        ga.cmp(gb).then(ob.cmp(&oa)).then(cb.cmp(&ca)).then(ra.cmp(rb))
    });
    tagged.into_iter().map(|(_, _, hit)| hit).collect()
}

impl SongCopy for quaver_shared::directory::v1::SearchHit {
    fn song(&self) -> (&str, &str) {
        self.file.as_ref().map_or(("", ""), |f| (f.title.as_str(), f.artist.as_str()))
    }
    fn sources(&self) -> (u32, u32) {
        (self.online_sources, self.complete_sources)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Hit(&'static str, &'static str, u32, u32, &'static str);

    impl SongCopy for Hit {
        fn song(&self) -> (&str, &str) {
            (self.0, self.1)
        }
        fn sources(&self) -> (u32, u32) {
            (self.2, self.3)
        }
    }

    fn names(hits: Vec<Hit>) -> Vec<&'static str> {
        hits.into_iter().map(|h| h.4).collect()
    }

    #[test]
    fn copies_become_adjacent_in_place_of_the_best_member() {
        let hits = vec![
            Hit("晴天", "周杰伦", 1, 1, "a-mp3"),
            Hit("晴天娃娃", "王心凌", 5, 5, "b"),
            Hit("晴天", "周杰伦", 9, 9, "a-flac"),
            Hit("七里香", "周杰伦", 2, 2, "c"),
            Hit("晴天", "周杰倫", 3, 0, "a-trad"),
        ];
        assert_eq!(names(group_copies(hits)), ["a-flac", "a-trad", "a-mp3", "b", "c"]);
    }

    #[test]
    fn folding_case_width_and_spaces_make_the_same_song() {
        let hits = vec![
            Hit("Hello", "Adele", 1, 0, "x"),
            Hit("Other", "Someone", 1, 0, "y"),
            Hit("ＨＥＬＬＯ", "adele ", 2, 0, "z"),
        ];
        assert_eq!(names(group_copies(hits)), ["z", "x", "y"]);
    }

    #[test]
    fn untitled_hits_and_other_artists_stay_apart_and_ties_keep_rank() {
        let hits = vec![
            Hit("", "", 1, 0, "u1"),
            Hit("Hello", "Adele", 1, 1, "a1"),
            Hit("", "", 9, 9, "u2"),
            Hit("Hello", "Lionel Richie", 9, 9, "l"),
            Hit("Hello", "Adele", 1, 1, "a2"),
        ];
        assert_eq!(names(group_copies(hits)), ["u1", "a1", "a2", "u2", "l"]);
    }
}
