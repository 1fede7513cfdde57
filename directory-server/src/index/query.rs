//! Turns a user's query string into tantivy queries, without tantivy's query-parser syntax.
//!
//! Owns: the shape of the boolean query (which fields, boosts, prefix and typo matching).
//! Splitting the string into units and field scopes is `query_parse`'s job.
//!
//! Must never: return a syntax error for any input (every string is plain text), write
//! anything, or know anything about peers, presence or the catalog. It only reads term
//! dictionaries (to skip typo matching for words the index knows).
//!
//! Shape: every unit must match (`strict`); if nothing matches that way the caller may fall back
//! to `loose`, where any unit matching is enough (more matching units rank higher). A unit with
//! a field scope (`artist:五月天`) matches in that field only.
//! - A Latin/number word matches as an exact term in the word fields; the last Latin word of the
//!   query (>= 3 chars) also as a prefix in title and artist (search-as-you-type); a word that no
//!   title or artist contains, of >= 4 letters, also with one edit (two from 8 letters: typos;
//!   the first character must match, see `typo`).
//!   Prefix and typo matches score a constant below a typical exact match.
//! - A CJK run (maximal sequence of CJK characters) matches when each of its jieba words matches,
//!   either as a word or as a contiguous character fragment; the whole run as a contiguous
//!   fragment adds score. So `天`, `七里` and `周杰伦晴天` all work.
//! - A lowercase ASCII word also matches pinyin (full or initials; prefix as above), and several
//!   such words also match joined (`qing tian` → `qingtian`).

use tantivy::query::{
    BooleanQuery, BoostQuery, ConstScoreQuery, FuzzyTermQuery, Occur, PhraseQuery, Query, TermQuery,
};
use tantivy::schema::{Field, IndexRecordOption};
use tantivy::{Searcher, Term};

use super::IndexError;
use super::analyzer::{is_cjk, prefix_term};
use super::query_parse::{PREFIX_MIN_CHARS, Scope, Unit, units};
use super::schema::{Fields, PINYIN_BOOST};
use super::typo::{SameFirstChar, TypoQuery};

/// Minimum length (chars) of a Latin word for one-edit typo matching, and for two edits.
const FUZZY_MIN_CHARS: usize = 4;
const FUZZY2_MIN_CHARS: usize = 8;
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

/// What building a query needs to know: the fields, and the index's term dictionaries (typo
/// matching is only tried for words the index does not know).
struct Builder<'a> {
    fields: &'a Fields,
    searcher: &'a Searcher,
}

/// Builds the query plan for `raw`, or `BadQuery` when nothing searchable remains.
pub fn plan(fields: &Fields, searcher: &Searcher, raw: &str) -> Result<Plan, IndexError> {
    let units = units(raw);
    if units.is_empty() {
        return Err(IndexError::BadQuery(
            "the query has nothing to search for: it needs at least one letter, digit or \
             CJK character"
                .to_string(),
        ));
    }
    let b = Builder { fields, searcher };
    let mut strict = Vec::new();
    let mut loose = Vec::new();
    for unit in &units {
        match unit {
            Unit::Latin { word, prefix, scope } => {
                let q = b.latin(word, *prefix, *scope);
                loose.push((Occur::Should, q.box_clone()));
                strict.push((Occur::Must, q));
            }
            Unit::Cjk { run, words, scope } if is_one_word(run, words) => {
                // The run's fragment is the word's own fragment: score it once, with both
                // boosts, instead of matching the same fragment twice.
                let q = b.cjk_word(&words[0], *scope, 1.0 + RUN_PHRASE_BOOST);
                loose.push((Occur::Should, q.box_clone()));
                strict.push((Occur::Must, q));
            }
            Unit::Cjk { run, words, scope } => {
                let mut all_words = Vec::new();
                for w in words {
                    let q = b.cjk_word(w, *scope, 1.0);
                    loose.push((Occur::Should, q.box_clone()));
                    all_words.push((Occur::Must, q));
                }
                if let Some(phrase) = b.cjk_fragment(run, *scope, RUN_PHRASE_BOOST) {
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
    // One required clause is that clause: unwrapped, a query that is a plain union of terms
    // stays one, and the collector can skip documents that cannot make the page (block-max
    // WAND; see `collect`).
    let mut strict: Box<dyn Query> = match <[_; 1]>::try_from(strict) {
        Ok([(Occur::Must, only)]) => only,
        Ok(one) => Box::new(BooleanQuery::new(Vec::from(one))),
        Err(clauses) => Box::new(BooleanQuery::new(clauses)),
    };
    // `qing tian`, `zhou jie lun`: Latin words that together spell one pinyin term.
    if let Some((joined, prefix)) = joined_pinyin(&units) {
        let mut either = b.pinyin(&joined, prefix);
        loose.extend(b.pinyin(&joined, prefix));
        either.push((Occur::Should, strict));
        strict = Box::new(BooleanQuery::new(either));
    }
    let single = units.len() == 1;
    Ok(Plan { strict, loose: (!single).then(|| Box::new(BooleanQuery::new(loose)) as Box<dyn Query>) })
}

/// True when jieba left the CJK run as one word, so the word's fragment is the run's.
fn is_one_word(run: &[char], words: &[String]) -> bool {
    matches!(words, [word] if word.chars().eq(run.iter().copied()))
}

/// All units joined, when there are several and all are unscoped lowercase ASCII words; and
/// whether the joined word is long enough to be matched as a prefix.
fn joined_pinyin(units: &[Unit]) -> Option<(String, bool)> {
    if units.len() < 2 {
        return None;
    }
    let mut joined = String::new();
    for unit in units {
        match unit {
            Unit::Latin { word, scope: Scope::Any, .. } if word.chars().all(|c| c.is_ascii_lowercase()) => {
                joined.push_str(word)
            }
            _ => return None,
        }
    }
    let prefix = joined.len() >= PREFIX_MIN_CHARS;
    Some((joined, prefix))
}

impl Builder<'_> {
    /// The word fields a scope searches, with their boosts.
    fn word_fields(&self, scope: Scope) -> Vec<(Field, f32)> {
        in_scope(scope, self.fields.word_fields())
    }

    /// The fields where prefix and typo matches are tried: the ones people type from memory.
    /// Narrower than `word_fields`, because every expanded term costs a posting list.
    fn loose_fields(&self, scope: Scope) -> Vec<(Field, f32)> {
        let [title, artist, ..] = self.fields.word_fields();
        match scope {
            Scope::Any => vec![title, artist],
            other => self.word_fields(other),
        }
    }

    /// The CJK character fields a scope searches, with their boosts.
    fn cjk_fields(&self, scope: Scope) -> Vec<(Field, f32)> {
        in_scope(scope, self.fields.cjk_fields())
    }

    /// Whether any document has `word` as a term of one of these fields.
    fn known(&self, fields: &[(Field, f32)], word: &str) -> bool {
        fields.iter().any(|(f, _)| self.searcher.doc_freq(&Term::from_field_text(*f, word)).unwrap_or(0) > 0)
    }

    /// A Latin word: exact in the scope's word fields, plus a prefix match (the query's last
    /// word: search as you type) and, only when no title or artist has the word, typo matches:
    /// one edit for words of 4+ letters, two for 8+. Typo automata are the most expensive part
    /// of a query, and a word the index knows is most likely not a typo.
    fn latin(&self, word: &str, prefix: bool, scope: Scope) -> Box<dyn Query> {
        let len = word.chars().count();
        let mut should: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        for (field, boost) in self.word_fields(scope) {
            should.push((Occur::Should, term_query(Term::from_field_text(field, word), boost)));
        }
        let loose_fields = self.loose_fields(scope);
        if prefix {
            for &(field, boost) in &loose_fields {
                should.extend(self.prefix(field, word, boost * PREFIX_SCORE));
            }
        }
        let pinyin = matches!(scope, Scope::Any | Scope::Title | Scope::Artist)
            && word.chars().all(|c| c.is_ascii_lowercase());
        let mut known_in = loose_fields.clone();
        if pinyin {
            known_in.push((self.fields.pinyin, PINYIN_BOOST));
        }
        let typo =
            len >= FUZZY_MIN_CHARS && word.chars().any(char::is_alphabetic) && !self.known(&known_in, word);
        let distance = if len >= FUZZY2_MIN_CHARS { 2 } else { 1 };
        let automaton = match typo.then(|| SameFirstChar::new(self.fields.title, word, distance)) {
            Some(Ok(a)) => a,
            Some(Err(e)) => {
                // Cannot happen for a text term; searching without typos beats failing.
                tracing::warn!(error = %e, word, "typo automaton not built");
                None
            }
            None => None,
        };
        if let Some(automaton) = automaton {
            for &(field, boost) in &loose_fields {
                let q = TypoQuery { field, automaton: automaton.clone() };
                should.push((Occur::Should, boosted(q, boost * FUZZY_SCORE)));
            }
        }
        if pinyin {
            should.extend(self.pinyin(word, prefix));
        }
        Box::new(BooleanQuery::new(should))
    }

    /// `syllables` (lowercase ASCII letters) as full pinyin or initials, and as a pinyin prefix.
    fn pinyin(&self, syllables: &str, prefix: bool) -> Vec<(Occur, Box<dyn Query>)> {
        let term = Term::from_field_text(self.fields.pinyin, syllables);
        let mut should = vec![(Occur::Should, term_query(term, PINYIN_BOOST))];
        if prefix {
            should.extend(self.prefix(self.fields.pinyin, syllables, PINYIN_BOOST * PREFIX_SCORE));
        }
        should
    }

    /// Terms of `field` that start with `word`, all scoring `score`. Title, artist and pinyin
    /// have their prefixes indexed (one term lookup); album and file name, searched this way
    /// only under a field scope, walk the term dictionary instead.
    fn prefix(&self, field: Field, word: &str, score: f32) -> Option<(Occur, Box<dyn Query>)> {
        let q: Box<dyn Query> = match self.fields.prefix_field(field) {
            Some(prefixes) => {
                let term = Term::from_field_text(prefixes, prefix_term(word)?);
                Box::new(ConstScoreQuery::new(
                    Box::new(TermQuery::new(term, IndexRecordOption::Basic)),
                    score,
                ))
            }
            None => boosted(FuzzyTermQuery::new_prefix(Term::from_field_text(field, word), 0, false), score),
        };
        Some((Occur::Should, q))
    }

    /// A CJK word from jieba: as a word in the scope's word fields, or as a contiguous fragment
    /// in its CJK character fields (that part boosted by `fragment_boost`).
    fn cjk_word(&self, word: &str, scope: Scope, fragment_boost: f32) -> Box<dyn Query> {
        let mut should: Vec<(Occur, Box<dyn Query>)> = self
            .word_fields(scope)
            .into_iter()
            .map(|(f, b)| (Occur::Should, term_query(Term::from_field_text(f, word), b)))
            .collect();
        let chars: Vec<char> = word.chars().filter(|c| is_cjk(*c)).collect();
        // Flat: the fragment's per-field queries join the word's, so that a fragment of one or
        // two characters keeps the whole query a union of plain terms.
        should.extend(self.fragment_clauses(&chars, scope, fragment_boost));
        Box::new(BooleanQuery::new(should))
    }

    /// `chars` as a contiguous fragment in the scope's CJK character fields; `None` without
    /// characters.
    fn cjk_fragment(&self, chars: &[char], scope: Scope, boost: f32) -> Option<Box<dyn Query>> {
        let should = self.fragment_clauses(chars, scope, boost);
        (!should.is_empty()).then(|| Box::new(BooleanQuery::new(should)) as Box<dyn Query>)
    }

    /// One `Should` clause per CJK field of the scope, matching `chars` as a fragment there
    /// (see `fragment_in`); none without characters.
    fn fragment_clauses(&self, chars: &[char], scope: Scope, boost: f32) -> Vec<(Occur, Box<dyn Query>)> {
        if chars.is_empty() {
            return Vec::new();
        }
        self.cjk_fields(scope)
            .into_iter()
            .map(|(f, b)| (Occur::Should, fragment_in(f, chars, b * boost)))
            .collect()
    }
}

/// Of one field per kind (title, artist, album, file name), the ones `scope` searches.
fn in_scope(scope: Scope, [title, artist, album, file_name]: [(Field, f32); 4]) -> Vec<(Field, f32)> {
    match scope {
        Scope::Any => vec![title, artist, album, file_name],
        Scope::Title => vec![title],
        Scope::Artist => vec![artist],
        Scope::Album => vec![album],
        Scope::FileName => vec![file_name],
    }
}

/// `chars` as a contiguous fragment of `field` (indexed by `analyzer::cjk_analyzer`): one
/// character or one bigram is a single term; a longer fragment is a phrase of its overlapping
/// bigrams (`周杰伦` → `周杰`, `杰伦` at adjacent positions).
fn fragment_in(field: Field, chars: &[char], boost: f32) -> Box<dyn Query> {
    let term = |text: String| Term::from_field_text(field, &text);
    match chars {
        [] => Box::new(tantivy::query::EmptyQuery),
        [_] | [_, _] => term_query(term(chars.iter().collect()), boost),
        _ => {
            let bigrams = chars.windows(2).map(|pair| term(pair.iter().collect())).collect();
            boosted(PhraseQuery::new(bigrams), boost)
        }
    }
}

fn term_query(term: Term, boost: f32) -> Box<dyn Query> {
    boosted(TermQuery::new(term, IndexRecordOption::WithFreqs), boost)
}

fn boosted(q: impl Query, boost: f32) -> Box<dyn Query> {
    Box::new(BoostQuery::new(Box::new(q), boost))
}
