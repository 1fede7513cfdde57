//! Turns a user's query string into tantivy queries, without tantivy's query-parser syntax.
//!
//! Owns: query normalisation and bounds, splitting into units (Latin words, CJK runs), and the
//! shape of the boolean query (which fields, boosts, prefix and typo matching).
//!
//! Must never: return a syntax error for any input (every string is plain text), do I/O, or
//! know anything about peers, presence or the catalog.
//!
//! Shape: every unit must match (`strict`); if nothing matches that way the caller may fall back
//! to `loose`, where any unit matching is enough (more matching units rank higher).
//! - A Latin/number word matches as an exact term in any word field; the last Latin word of the
//!   query (>= 3 chars) also as a prefix (search-as-you-type); words of >= 5 chars also with
//!   one edit (typos). Prefix and typo matches score a constant below a typical exact match.
//! - A CJK run (maximal sequence of CJK characters) matches when each of its jieba words matches,
//!   either as a word or as a contiguous character fragment; the whole run as a contiguous
//!   fragment adds score. So `天`, `七里` and `周杰伦晴天` all work.
//! - A lowercase ASCII word also matches pinyin (full or initials; prefix as above), and several
//!   such words also match joined (`qing tian` → `qingtian`).

use tantivy::Term;
use tantivy::query::{BooleanQuery, BoostQuery, FuzzyTermQuery, Occur, PhraseQuery, Query, TermQuery};
use tantivy::schema::{Field, IndexRecordOption};

use super::IndexError;
use super::analyzer::{self, fold_into, is_cjk};
use super::schema::{Fields, PINYIN_BOOST};

/// Bytes of the query that are looked at; the rest is ignored.
pub const MAX_QUERY_BYTES: usize = 1024;
/// At most this many distinct words take part in a query.
const MAX_WORDS: usize = 32;
/// A CJK run longer than this is matched as a fragment on its first characters only.
const MAX_RUN_CHARS: usize = 32;
/// Minimum length (chars) of the last Latin word for prefix matching.
const PREFIX_MIN_CHARS: usize = 3;
/// Minimum length (chars) of a Latin word for one-edit typo matching.
const FUZZY_MIN_CHARS: usize = 5;
/// Constant scores (times the field boost) of prefix and typo matches.
const PREFIX_SCORE: f32 = 0.5;
const FUZZY_SCORE: f32 = 0.3;
/// Extra weight for a CJK run that appears contiguously.
const RUN_PHRASE_BOOST: f32 = 1.0;

/// The queries to run for one user query string.
pub struct Plan {
    /// Every unit must match.
    pub strict: Box<dyn Query>,
    /// Any unit may match; `None` when the query has a single unit (same as `strict`).
    pub loose: Option<Box<dyn Query>>,
}

enum Unit {
    Latin { word: String, prefix: bool },
    Cjk { run: Vec<char>, words: Vec<String> },
}

/// Builds the query plan for `raw`, or `BadQuery` when nothing searchable remains.
pub fn plan(fields: &Fields, raw: &str) -> Result<Plan, IndexError> {
    let units = units(raw);
    if units.is_empty() {
        return Err(IndexError::BadQuery(
            "the query has nothing to search for: it needs at least one letter, digit or \
             CJK character"
                .to_string(),
        ));
    }
    let mut strict = Vec::new();
    let mut loose = Vec::new();
    for unit in &units {
        match unit {
            Unit::Latin { word, prefix } => {
                strict.push((Occur::Must, latin(fields, word, *prefix)));
                loose.push((Occur::Should, latin(fields, word, *prefix)));
            }
            Unit::Cjk { run, words } => {
                let mut all_words = Vec::new();
                for w in words {
                    all_words.push((Occur::Must, cjk_word(fields, w)));
                    loose.push((Occur::Should, cjk_word(fields, w)));
                }
                if let Some(phrase) = cjk_fragment(fields, run, RUN_PHRASE_BOOST) {
                    loose.push((Occur::Should, phrase.box_clone()));
                    if all_words.is_empty() {
                        strict.push((Occur::Must, phrase));
                    } else {
                        strict.push((Occur::Must, Box::new(BooleanQuery::new(all_words))));
                        strict.push((Occur::Should, phrase));
                    }
                }
            }
        }
    }
    let mut strict: Box<dyn Query> = Box::new(BooleanQuery::new(strict));
    // `qing tian`, `zhou jie lun`: Latin words that together spell one pinyin term.
    if let Some((joined, prefix)) = joined_pinyin(&units) {
        let mut either = pinyin(fields, &joined, prefix);
        loose.extend(pinyin(fields, &joined, prefix));
        either.push((Occur::Should, strict));
        strict = Box::new(BooleanQuery::new(either));
    }
    let single = units.len() == 1;
    Ok(Plan { strict, loose: (!single).then(|| Box::new(BooleanQuery::new(loose)) as Box<dyn Query>) })
}

/// All units joined, when there are several and all are lowercase ASCII words; and whether the
/// joined word is long enough to be matched as a prefix.
fn joined_pinyin(units: &[Unit]) -> Option<(String, bool)> {
    if units.len() < 2 {
        return None;
    }
    let mut joined = String::new();
    for unit in units {
        match unit {
            Unit::Latin { word, .. } if word.chars().all(|c| c.is_ascii_lowercase()) => joined.push_str(word),
            _ => return None,
        }
    }
    let prefix = joined.len() >= PREFIX_MIN_CHARS;
    Some((joined, prefix))
}

/// Splits the (bounded, width-folded) query into Latin words and CJK runs, in query order.
fn units(raw: &str) -> Vec<Unit> {
    let mut end = raw.len().min(MAX_QUERY_BYTES);
    while !raw.is_char_boundary(end) {
        end -= 1;
    }
    let mut folded = String::with_capacity(end);
    fold_into(&raw[..end], &mut folded);

    let mut words_analyzer = analyzer::words_analyzer();
    let mut seen = std::collections::HashSet::new();
    let mut budget = MAX_WORDS;
    let mut units = Vec::new();
    let mut take = |text: &str, units: &mut Vec<Unit>, cjk: bool| {
        let mut words = Vec::new();
        for w in analyzer::tokens(&mut words_analyzer, text) {
            if budget > 0 && seen.insert(w.clone()) {
                budget -= 1;
                words.push(w);
            }
        }
        if cjk {
            // A run whose words were all seen before still counts once as a fragment.
            if words.is_empty() {
                if budget == 0 || !seen.insert(text.to_string()) {
                    return;
                }
                budget -= 1;
            }
            let run: Vec<char> = text.chars().take(MAX_RUN_CHARS).collect();
            units.push(Unit::Cjk { run, words });
        } else {
            for word in words {
                units.push(Unit::Latin { word, prefix: false });
            }
        }
    };
    let mut start = 0;
    let mut in_cjk = false;
    for (i, c) in folded.char_indices() {
        if is_cjk(c) != in_cjk {
            if i > start {
                take(&folded[start..i], &mut units, in_cjk);
            }
            start = i;
            in_cjk = !in_cjk;
        }
    }
    if start < folded.len() {
        take(&folded[start..], &mut units, in_cjk);
    }
    if let Some(Unit::Latin { word, prefix }) =
        units.iter_mut().rev().find(|u| matches!(u, Unit::Latin { .. }))
    {
        *prefix = word.chars().count() >= PREFIX_MIN_CHARS;
    }
    units
}

/// A Latin word in any word field: exact, plus prefix and/or one-edit variants.
fn latin(fields: &Fields, word: &str, prefix: bool) -> Box<dyn Query> {
    let len = word.chars().count();
    let fuzzy = len >= FUZZY_MIN_CHARS && word.chars().any(char::is_alphabetic);
    let mut should: Vec<(Occur, Box<dyn Query>)> = Vec::new();
    for (field, boost) in fields.word_fields() {
        let term = Term::from_field_text(field, word);
        should.push((Occur::Should, term_query(term.clone(), boost)));
        if prefix {
            let q = FuzzyTermQuery::new_prefix(term.clone(), 0, true);
            should.push((Occur::Should, boosted(q, boost * PREFIX_SCORE)));
        }
        if fuzzy {
            let q = FuzzyTermQuery::new(term, 1, true);
            should.push((Occur::Should, boosted(q, boost * FUZZY_SCORE)));
        }
    }
    if word.chars().all(|c| c.is_ascii_lowercase()) {
        should.extend(pinyin(fields, word, prefix));
    }
    Box::new(BooleanQuery::new(should))
}

/// `syllables` (lowercase ASCII letters) as full pinyin or initials, and as a pinyin prefix.
fn pinyin(fields: &Fields, syllables: &str, prefix: bool) -> Vec<(Occur, Box<dyn Query>)> {
    let term = Term::from_field_text(fields.pinyin, syllables);
    let mut should = vec![(Occur::Should, term_query(term.clone(), PINYIN_BOOST))];
    if prefix {
        let q = FuzzyTermQuery::new_prefix(term, 0, false);
        should.push((Occur::Should, boosted(q, PINYIN_BOOST * PREFIX_SCORE)));
    }
    should
}

/// A CJK word from jieba: as a word in any word field, or as a contiguous fragment in any CJK
/// character field.
fn cjk_word(fields: &Fields, word: &str) -> Box<dyn Query> {
    let mut should: Vec<(Occur, Box<dyn Query>)> = fields
        .word_fields()
        .into_iter()
        .map(|(f, b)| (Occur::Should, term_query(Term::from_field_text(f, word), b)))
        .collect();
    let chars: Vec<char> = word.chars().filter(|c| is_cjk(*c)).collect();
    if let Some(q) = cjk_fragment(fields, &chars, 1.0) {
        should.push((Occur::Should, q));
    }
    Box::new(BooleanQuery::new(should))
}

/// `chars` as a contiguous fragment in any CJK character field (a term for one character).
fn cjk_fragment(fields: &Fields, chars: &[char], boost: f32) -> Option<Box<dyn Query>> {
    if chars.is_empty() {
        return None;
    }
    let should: Vec<(Occur, Box<dyn Query>)> = fields
        .cjk_fields()
        .into_iter()
        .map(|(f, b)| (Occur::Should, fragment_in(f, chars, b * boost)))
        .collect();
    Some(Box::new(BooleanQuery::new(should)))
}

fn fragment_in(field: Field, chars: &[char], boost: f32) -> Box<dyn Query> {
    let mut buf = [0u8; 4];
    let mut terms: Vec<Term> =
        chars.iter().map(|c| Term::from_field_text(field, c.encode_utf8(&mut buf))).collect();
    match terms.len() {
        1 => match terms.pop() {
            Some(t) => term_query(t, boost),
            None => Box::new(tantivy::query::EmptyQuery),
        },
        _ => boosted(PhraseQuery::new(terms), boost),
    }
}

fn term_query(term: Term, boost: f32) -> Box<dyn Query> {
    boosted(TermQuery::new(term, IndexRecordOption::WithFreqs), boost)
}

fn boosted(q: impl Query, boost: f32) -> Box<dyn Query> {
    Box::new(BoostQuery::new(Box::new(q), boost))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn describe(raw: &str) -> Vec<String> {
        units(raw)
            .into_iter()
            .map(|u| match u {
                Unit::Latin { word, prefix } => format!("L:{word}{}", if prefix { "*" } else { "" }),
                Unit::Cjk { run, words } => {
                    format!("C:{}={}", run.iter().collect::<String>(), words.join("/"))
                }
            })
            .collect()
    }

    #[test]
    fn splits_latin_and_cjk_and_marks_last_latin_prefix() {
        assert_eq!(describe("Bohem"), ["L:bohem*"]);
        assert_eq!(describe("queen bo"), ["L:queen", "L:bo"]);
        assert_eq!(describe("周杰伦 晴天"), ["C:周杰伦=周杰伦", "C:晴天=晴天"]);
        assert_eq!(describe("ＢＯＨＥＭＩＡＮ 天"), ["L:bohemian*", "C:天=天"]);
        assert!(describe("\"::!!--((").is_empty());
        assert!(describe("").is_empty());
    }

    #[test]
    fn long_queries_are_bounded() {
        let raw = "晴天 abc ".repeat(50_000);
        let u = units(&raw);
        assert!(u.len() <= MAX_WORDS + 1, "{}", u.len());
        // 6-byte groups: the byte cut falls inside 晴 and must move back to a char boundary.
        let raw = "é晴 ".repeat(MAX_QUERY_BYTES);
        assert_eq!(describe(&raw), ["L:e", "C:晴=晴"]);
    }
}
