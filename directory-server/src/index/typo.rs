//! Typo matching that stays fast on a large term dictionary.
//!
//! A Levenshtein automaton with one or two edits accepts almost any first byte, so intersecting
//! it with a term dictionary (an FST) walks a large part of the dictionary: on 1M documents that
//! cost tens of milliseconds per field. People rarely mistype the first letter of a word, so the
//! automaton here requires the first character to match exactly and runs the Levenshtein DFA on
//! the rest only; the walk is then confined to one branch of the FST. The DFA is built once per
//! query word and shared by every field it is matched in.
//!
//! Must never: match a term whose first character differs from the word's (by design), or do
//! I/O.

use std::sync::Arc;

use tantivy::query::{AutomatonWeight, DfaWrapper, EnableScoring, FuzzyTermQuery, Query, Weight};
use tantivy::schema::Field;
use tantivy::{TantivyError, Term};
use tantivy_fst::Automaton;

/// Terms within `distance` edits of a word that start with the word's first character.
pub struct SameFirstChar {
    first: Vec<u8>,
    rest: DfaWrapper,
}

impl SameFirstChar {
    /// `None` for an empty word. `field` only types the term the DFA is built from.
    pub fn new(field: Field, word: &str, distance: u8) -> Result<Option<Arc<Self>>, TantivyError> {
        let mut chars = word.chars();
        let Some(first) = chars.next() else { return Ok(None) };
        let rest =
            FuzzyTermQuery::new(Term::from_field_text(field, chars.as_str()), distance, true).automaton()?;
        Ok(Some(Arc::new(SameFirstChar { first: first.to_string().into_bytes(), rest })))
    }
}

#[derive(Clone, Debug)]
pub enum State {
    /// This many bytes of the first character matched so far.
    Head(usize),
    /// In the Levenshtein DFA of the rest of the word.
    Rest(u32),
    Dead,
}

impl Automaton for SameFirstChar {
    type State = State;

    fn start(&self) -> State {
        State::Head(0)
    }

    fn is_match(&self, state: &State) -> bool {
        matches!(state, State::Rest(s) if self.rest.is_match(s))
    }

    fn can_match(&self, state: &State) -> bool {
        match state {
            State::Head(_) => true,
            State::Rest(s) => self.rest.can_match(s),
            State::Dead => false,
        }
    }

    fn accept(&self, state: &State, byte: u8) -> State {
        match state {
            State::Head(i) if self.first.get(*i) == Some(&byte) => {
                if i + 1 == self.first.len() {
                    State::Rest(self.rest.start())
                } else {
                    State::Head(i + 1)
                }
            }
            State::Rest(s) => State::Rest(self.rest.accept(s, byte)),
            State::Head(_) | State::Dead => State::Dead,
        }
    }
}

/// Documents with a term of `field` that `automaton` accepts (constant score).
#[derive(Clone)]
pub struct TypoQuery {
    pub field: Field,
    pub automaton: Arc<SameFirstChar>,
}

impl std::fmt::Debug for TypoQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TypoQuery").field("field", &self.field).finish_non_exhaustive()
    }
}

impl Query for TypoQuery {
    fn weight(&self, _scoring: EnableScoring<'_>) -> tantivy::Result<Box<dyn Weight>> {
        Ok(Box::new(AutomatonWeight::<SameFirstChar>::new(self.field, self.automaton.clone())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepts(a: &SameFirstChar, term: &str) -> bool {
        let mut s = a.start();
        for b in term.bytes() {
            s = a.accept(&s, b);
        }
        a.is_match(&s)
    }

    #[test]
    fn edits_after_the_first_character_only() {
        let field = Field::from_field_id(0);
        let one = SameFirstChar::new(field, "rhapsody", 1).unwrap().unwrap();
        assert!(accepts(&one, "rhapsody"));
        assert!(accepts(&one, "rhapsdoy"), "a swap is one edit");
        assert!(accepts(&one, "rhapody"));
        assert!(!accepts(&one, "rhpasdoy"), "two edits");
        assert!(!accepts(&one, "whapsody"), "first character differs");
        let two = SameFirstChar::new(field, "rhapsody", 2).unwrap().unwrap();
        assert!(accepts(&two, "rhapsodie"));
        let cjk = SameFirstChar::new(field, "été", 1).unwrap().unwrap();
        assert!(accepts(&cjk, "étè"));
        assert!(!accepts(&cjk, "ete"));
        assert!(SameFirstChar::new(field, "", 1).unwrap().is_none());
    }
}
