//! Search-quality harness on real song metadata (`../shared/data/songs`, NetEase, ~38.5k songs).
//! Shared by the CI test (`tests/search_quality.rs`) and the 1M-document bench
//! (`benches/search_scale.rs`), so both judge the same queries the same way.
//!
//! `derive` builds the query set mechanically from the rows; [`Report`] judges the hits of each
//! query and prints recall@10 and MRR@10 (mean reciprocal rank of the first expected row within
//! the top 10, 0 if none) per category. Variant queries also count how often the plain title
//! ranks above its variant (`order`).

#![allow(dead_code)] // each includer uses its own part

pub mod derive;
pub mod songs;

/// Results looked at per query.
pub const TOP: usize = 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Category {
    /// The title as given.
    ExactTitle,
    /// 2 characters from the middle of the title's longest CJK run (>= 3 chars).
    Fragment2,
    /// The single middle character of that run.
    Fragment1,
    /// A first artist's name; expected: every row with that first artist.
    Artist,
    /// `{first artist} {title}`.
    ArtistTitle,
    /// Toneless full pinyin (`qingtian`) of a title made only of characters with a reading.
    PinyinFull,
    /// Initials (`qt`) of such a title.
    PinyinInitials,
    /// The title's longest ASCII-letter word (>= 5) with one edit; expected: rows with the word.
    Typo,
    /// The first 5 letters of the title's longest ASCII-letter word (>= 7 letters).
    Prefix,
    /// The title converted simplified → traditional (or back, for traditional titles) by an
    /// independent converter (hanconv, OpenCC's tables), not the index's own table.
    SimpTrad,
    /// The title's longest word holding kana or Hangul.
    JapaneseKorean,
    /// A word joining Latin letters or digits and CJK characters (`CD盒`).
    MixedScript,
    /// The base of `title (Live版)` when the same artist also has the plain title; expected: the
    /// plain rows, which should rank above the variant.
    Variant,
    /// `artist:NAME`; expected: every row listing that artist.
    FieldArtist,
}

impl Category {
    pub const ALL: [Category; 14] = [
        Category::ExactTitle,
        Category::Fragment2,
        Category::Fragment1,
        Category::Artist,
        Category::ArtistTitle,
        Category::PinyinFull,
        Category::PinyinInitials,
        Category::Typo,
        Category::Prefix,
        Category::SimpTrad,
        Category::JapaneseKorean,
        Category::MixedScript,
        Category::Variant,
        Category::FieldArtist,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Category::ExactTitle => "exact title",
            Category::Fragment2 => "CJK fragment 2",
            Category::Fragment1 => "CJK fragment 1",
            Category::Artist => "artist",
            Category::ArtistTitle => "artist + title",
            Category::PinyinFull => "pinyin full",
            Category::PinyinInitials => "pinyin initials",
            Category::Typo => "typo",
            Category::Prefix => "prefix",
            Category::SimpTrad => "simp/trad",
            Category::JapaneseKorean => "JP/KR",
            Category::MixedScript => "mixed script",
            Category::Variant => "variant suffix",
            Category::FieldArtist => "artist: field",
        }
    }
}

/// One derived query and how to judge it.
pub struct Query {
    pub category: Category,
    pub text: String,
    /// Rows (indices into the data) any of which in the top 10 counts as found.
    pub expected: Vec<u32>,
    /// Rows that should rank below the expected ones (variants of the plain title).
    pub worse: Vec<u32>,
    /// More than 10 other songs satisfy the query as well: counted apart, not asserted.
    pub ambiguous: bool,
}

#[derive(Clone, Copy, Default)]
pub struct Tally {
    pub n: usize,
    pub hits: usize,
    pub rr: f64,
    /// Judged queries with `worse` rows, and those where an expected row ranked first.
    pub ordered_n: usize,
    pub ordered: usize,
    pub ambiguous: usize,
    pub ambiguous_hits: usize,
}

impl Tally {
    pub fn recall(&self) -> f64 {
        self.hits as f64 / self.n.max(1) as f64
    }
    pub fn mrr(&self) -> f64 {
        self.rr / self.n.max(1) as f64
    }
    pub fn order(&self) -> f64 {
        self.ordered as f64 / self.ordered_n.max(1) as f64
    }
    fn add(&mut self, o: &Tally) {
        self.n += o.n;
        self.hits += o.hits;
        self.rr += o.rr;
        self.ordered_n += o.ordered_n;
        self.ordered += o.ordered;
        self.ambiguous += o.ambiguous;
        self.ambiguous_hits += o.ambiguous_hits;
    }
}

/// Tallies per category, and the misses (for reading, not asserting).
#[derive(Default)]
pub struct Report {
    pub tally: [Tally; Category::ALL.len()],
    pub misses: Vec<String>,
}

impl Report {
    /// Judges one query given the rows of its top hits, best first (a bad query has none).
    pub fn judge(&mut self, q: &Query, top_rows: &[u32], describe: impl Fn(u32) -> String) {
        let rank = top_rows.iter().take(TOP).position(|r| q.expected.binary_search(r).is_ok());
        let t = &mut self.tally[q.category as usize];
        if q.ambiguous {
            t.ambiguous += 1;
            t.ambiguous_hits += usize::from(rank.is_some());
            return;
        }
        t.n += 1;
        match rank {
            Some(rank) => {
                t.hits += 1;
                t.rr += 1.0 / (rank + 1) as f64;
            }
            None => {
                let top: Vec<String> = top_rows.iter().take(3).map(|r| describe(*r)).collect();
                self.misses.push(format!("[{}] {} -> {top:?}", q.category.name(), q.text));
            }
        }
        if !q.worse.is_empty() {
            t.ordered_n += 1;
            let worse = top_rows.iter().position(|r| q.worse.contains(r));
            t.ordered += usize::from(rank.is_some_and(|rank| worse.is_none_or(|w| rank < w)));
        }
    }

    pub fn get(&self, c: Category) -> &Tally {
        &self.tally[c as usize]
    }

    /// All categories together.
    pub fn all(&self) -> Tally {
        let mut all = Tally::default();
        for t in &self.tally {
            all.add(t);
        }
        all
    }

    pub fn print(&self) {
        println!(
            "{:>16} {:>5} {:>9} {:>7} {:>6} {:>7} {:>10}",
            "category", "n", "recall@10", "MRR@10", "order", "ambig.", "ambig.hits"
        );
        let line = |name: &str, t: &Tally| {
            let order = if t.ordered_n > 0 { format!("{:.3}", t.order()) } else { "-".to_string() };
            println!(
                "{name:>16} {:>5} {:>9.3} {:>7.3} {order:>6} {:>7} {:>10}",
                t.n,
                t.recall(),
                t.mrr(),
                t.ambiguous,
                t.ambiguous_hits
            );
        };
        for c in Category::ALL {
            line(c.name(), self.get(c));
        }
        line("(all)", &self.all());
    }
}

/// Sorts each query's expected rows (for `judge`'s binary search).
pub fn prepare(queries: &mut [Query]) {
    for q in queries {
        q.expected.sort_unstable();
        q.expected.dedup();
    }
}
