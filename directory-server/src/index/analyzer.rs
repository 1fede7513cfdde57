//! Text analysis for the search index: the tokenizers and token filters that turn titles,
//! artists, albums, file names and user queries into index terms.
//!
//! Owns: full-width → half-width folding, the jieba word analyzer (`quaver_words`) and the CJK
//! character analyzer (`quaver_cjk`). The same analyzers run on the index side and on the query
//! side, so both always agree on what a term is.
//!
//! Must never: do I/O, or know anything about peers, presence or the catalog.

use tantivy::Index;
use tantivy::tokenizer::{
    AsciiFoldingFilter, LowerCaser, RawTokenizer, TextAnalyzer, TextAnalyzerBuilder, Token, TokenFilter,
    TokenStream, Tokenizer,
};
use tantivy_jieba::JiebaTokenizer;

/// Name of the word analyzer (jieba search mode, folded, lowercased). The names carry a version:
/// an index built by an older analyzer has another schema and is rebuilt from the catalog.
pub const WORDS: &str = "quaver_words_v3";
/// Name of the CJK character analyzer: every character and every pair of adjacent characters
/// (folded to simplified characters; see [`cjk_analyzer`]).
pub const CJK: &str = "quaver_cjk_v3";

/// Name of the word-prefix analyzer: the word analyzer, then every prefix of each non-CJK word
/// (see [`Prefixes`]).
pub const WORD_PREFIXES: &str = "quaver_word_prefixes_v2";
/// Name of the prefix analyzer for untokenized values (pinyin terms).
pub const RAW_PREFIXES: &str = "quaver_raw_prefixes_v1";

/// Tokens longer than this many bytes are cut to their first characters that fit (13 CJK
/// characters, 40 Latin letters): see [`Truncate`].
const MAX_TOKEN_BYTES: usize = 40;

/// Prefixes of a word that are indexed for search-as-you-type: from this many characters...
pub const PREFIX_MIN_CHARS: usize = 3;
/// ...up to this many. A longer typed prefix is looked up by its first `PREFIX_MAX_CHARS`
/// characters, which still narrows to the words that start that way.
pub const PREFIX_MAX_CHARS: usize = 16;

/// Registers both analyzers on `index`. Tokenizers are not persisted by tantivy, so this must run
/// after every create/open, before a writer is created or a query is built.
pub fn register(index: &Index) {
    index.tokenizers().register(WORDS, words_analyzer());
    index.tokenizers().register(CJK, cjk_analyzer());
    index.tokenizers().register(WORD_PREFIXES, word_prefixes_analyzer());
    index
        .tokenizers()
        .register(RAW_PREFIXES, TextAnalyzer::builder(RawTokenizer::default()).filter(Prefixes).build());
}

/// The term a typed prefix is looked up by in a prefix field: its first `PREFIX_MAX_CHARS`
/// characters; `None` when it is shorter than `PREFIX_MIN_CHARS`.
pub fn prefix_term(word: &str) -> Option<&str> {
    let mut ends = word.char_indices().map(|(i, c)| i + c.len_utf8());
    ends.nth(PREFIX_MIN_CHARS - 1)?;
    let end = ends.nth(PREFIX_MAX_CHARS - PREFIX_MIN_CHARS - 1).unwrap_or(word.len());
    Some(&word[..end])
}

/// [`Words`] (width folding, word split, jieba search mode for Han), then: keep only tokens
/// with an alphanumeric character, lowercase, fold accents (é → e), cut over-long tokens.
pub fn words_analyzer() -> TextAnalyzer {
    words().build()
}

/// The word analyzer's chain, to build on.
fn words() -> TextAnalyzerBuilder<impl Tokenizer> {
    TextAnalyzer::builder(Words::default())
        .filter(WordOnly)
        .filter(LowerCaser)
        .filter(AsciiFoldingFilter)
        .filter(Truncate)
}

/// The words of [`words_analyzer`], each replaced by its prefixes ([`Prefixes`]).
fn word_prefixes_analyzer() -> TextAnalyzer {
    words().filter(Prefixes).build()
}

/// One token per CJK character, and one per pair of adjacent CJK characters (a bigram, at the
/// position of its first character). Positions are character indexes in the text, so adjacent
/// bigrams are adjacent positions.
///
/// Why bigrams: a fragment of two characters, the most common CJK query, is then one term (its
/// posting list is exactly the matching documents), not a phrase that intersects two common
/// characters' lists and compares positions. A longer fragment is a phrase of bigrams, whose
/// lists are far shorter than single characters'. A bigram never equals a single character, so
/// both live in one field.
pub fn cjk_analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(CjkChars::default()).build()
}

/// Maps full-width ASCII variants (U+FF01..=U+FF5E) to ASCII and the ideographic space (U+3000)
/// to a space; every other character is kept.
pub fn fold_width_char(c: char) -> char {
    match c {
        '\u{FF01}'..='\u{FF5E}' => char::from_u32(c as u32 - 0xFF01 + 0x21).unwrap_or(c),
        '\u{3000}' => ' ',
        _ => c,
    }
}

/// Appends `text` to `out` folded for matching: full-width forms to ASCII, and traditional
/// Chinese characters to simplified ones (`張學友` → `张学友`), one character for one, so
/// positions and fragments line up on both sides. Index and query both go through here.
pub fn fold_into(text: &str, out: &mut String) {
    let width: String = text.chars().map(fold_width_char).collect();
    out.push_str(&fast2s::convert(&width));
}

/// True for characters that are matched one by one in the CJK fields: Han ideographs
/// (including extensions and compatibility ideographs), kana and Hangul syllables.
pub fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30FF        // Hiragana, Katakana
        | 0x3400..=0x4DBF      // CJK Extension A
        | 0x4E00..=0x9FFF      // CJK Unified Ideographs
        | 0xAC00..=0xD7AF      // Hangul syllables
        | 0xF900..=0xFAFF      // CJK Compatibility Ideographs
        | 0x20000..=0x323AF    // CJK Extensions B..H
    )
}

/// Runs `analyzer` over `text` and returns the token texts, in order.
pub fn tokens(analyzer: &mut TextAnalyzer, text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut stream = analyzer.token_stream(text);
    stream.process(&mut |t: &Token| out.push(t.text.clone()));
    out
}

/// Splits width-folded text into words at every non-word character; a word containing a Han
/// character is further segmented by jieba (search mode), any other word (Latin with accents,
/// Cyrillic, Hangul, kana, ...) is one token. jieba alone would cut non-ASCII, non-Han text into
/// single characters (`Beyoncé` → `beyonc`, `e`; `Группа` → `г`, `р`, ...).
#[derive(Clone, Default)]
struct Words {
    jieba: JiebaTokenizer,
    folded: String,
}

impl Tokenizer for Words {
    type TokenStream<'a> = VecTokenStream;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> VecTokenStream {
        let Self { jieba, folded } = self;
        folded.clear();
        fold_into(text, folded);
        let mut tokens = Vec::new();
        let mut push = |text: &str, offset_from: usize| {
            let position = tokens.len();
            tokens.push(Token {
                offset_from,
                offset_to: offset_from + text.len(),
                position,
                text: text.to_string(),
                position_length: 1,
            });
        };
        for (start, word) in split_words(folded) {
            if word.chars().any(is_han) {
                jieba.token_stream(word).process(&mut |t: &Token| push(&t.text, start + t.offset_from));
            } else {
                push(word, start);
            }
        }
        VecTokenStream { tokens, next: 0, fallback: Token::default() }
    }
}

/// The maximal runs of word characters of `text`, with their byte offsets.
fn split_words(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let mut rest = text.char_indices().peekable();
    std::iter::from_fn(move || {
        while rest.next_if(|(_, c)| !is_word_char(*c)).is_some() {}
        let (start, _) = *rest.peek()?;
        let mut end = start;
        while let Some((i, c)) = rest.next_if(|(_, c)| is_word_char(*c)) {
            end = i + c.len_utf8();
        }
        Some((start, &text[start..end]))
    })
}

/// Letters, digits, and combining marks / scripts whose words contain marks (so Thai, Indic
/// and decomposed accents are not cut apart).
fn is_word_char(c: char) -> bool {
    c.is_alphanumeric()
        || matches!(c as u32,
            0x0300..=0x036F | 0x0483..=0x0489 | 0x0591..=0x05C7 | 0x0610..=0x061A
            | 0x064B..=0x065F | 0x0670 | 0x0900..=0x0DFF | 0x0E00..=0x0EFF | 0x1AB0..=0x1AFF
            | 0x1DC0..=0x1DFF | 0x20D0..=0x20FF | 0x3099..=0x309A | 0xFE20..=0xFE2F)
}

/// Han ideographs (the characters jieba segments).
fn is_han(c: char) -> bool {
    is_cjk(c) && !matches!(c as u32, 0x3040..=0x30FF | 0xAC00..=0xD7AF)
}

/// A token stream over tokens computed up front.
struct VecTokenStream {
    tokens: Vec<Token>,
    /// Number of `advance` calls that returned true.
    next: usize,
    /// Returned by `token()` before the first `advance` (never happens in tantivy).
    fallback: Token,
}

impl TokenStream for VecTokenStream {
    fn advance(&mut self) -> bool {
        if self.next < self.tokens.len() {
            self.next += 1;
            true
        } else {
            false
        }
    }

    fn token(&self) -> &Token {
        self.next.checked_sub(1).and_then(|i| self.tokens.get(i)).unwrap_or(&self.fallback)
    }

    fn token_mut(&mut self) -> &mut Token {
        match self.next.checked_sub(1) {
            Some(i) if i < self.tokens.len() => &mut self.tokens[i],
            _ => &mut self.fallback,
        }
    }
}

/// Keeps tokens with at least one alphanumeric character (any script). Unlike tantivy's
/// `AlphaNumOnlyFilter`, this keeps CJK words and drops jieba's " ", "-", "(" tokens.
#[derive(Clone)]
struct WordOnly;

impl TokenFilter for WordOnly {
    type Tokenizer<T: Tokenizer> = WordOnlyTokenizer<T>;

    fn transform<T: Tokenizer>(self, tokenizer: T) -> WordOnlyTokenizer<T> {
        WordOnlyTokenizer(tokenizer)
    }
}

#[derive(Clone)]
struct WordOnlyTokenizer<T>(T);

impl<T: Tokenizer> Tokenizer for WordOnlyTokenizer<T> {
    type TokenStream<'a> = WordOnlyStream<T::TokenStream<'a>>;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> Self::TokenStream<'a> {
        WordOnlyStream(self.0.token_stream(text))
    }
}

struct WordOnlyStream<S>(S);

impl<S: TokenStream> TokenStream for WordOnlyStream<S> {
    fn advance(&mut self) -> bool {
        while self.0.advance() {
            if self.0.token().text.chars().any(char::is_alphanumeric) {
                return true;
            }
        }
        false
    }

    fn token(&self) -> &Token {
        self.0.token()
    }

    fn token_mut(&mut self) -> &mut Token {
        self.0.token_mut()
    }
}

/// Cuts a token longer than `MAX_TOKEN_BYTES` to its longest prefix that fits (on a character
/// boundary). A long word is then searched by its first 40 bytes, on both sides alike.
///
/// Why cut, not drop: a query of one long word (a 45-letter German compound, a run-together
/// title) would have nothing left to search, though the protocol allows it. It runs last, on
/// folded text: a word typed without its accents must be cut where the indexed one, folded,
/// was.
#[derive(Clone)]
struct Truncate;

impl TokenFilter for Truncate {
    type Tokenizer<T: Tokenizer> = TruncateTokenizer<T>;

    fn transform<T: Tokenizer>(self, tokenizer: T) -> TruncateTokenizer<T> {
        TruncateTokenizer(tokenizer)
    }
}

#[derive(Clone)]
struct TruncateTokenizer<T>(T);

impl<T: Tokenizer> Tokenizer for TruncateTokenizer<T> {
    type TokenStream<'a> = TruncateStream<T::TokenStream<'a>>;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> Self::TokenStream<'a> {
        TruncateStream(self.0.token_stream(text))
    }
}

struct TruncateStream<S>(S);

impl<S: TokenStream> TokenStream for TruncateStream<S> {
    fn advance(&mut self) -> bool {
        if !self.0.advance() {
            return false;
        }
        let text = &mut self.0.token_mut().text;
        if text.len() > MAX_TOKEN_BYTES {
            let mut end = MAX_TOKEN_BYTES;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
        }
        true
    }

    fn token(&self) -> &Token {
        self.0.token()
    }

    fn token_mut(&mut self) -> &mut Token {
        self.0.token_mut()
    }
}

/// Replaces each token by its prefixes of `PREFIX_MIN_CHARS..=PREFIX_MAX_CHARS` characters
/// (`rhapsody` → `rha`, `rhap`, ..., `rhapsody`); tokens containing a CJK character, or shorter
/// than `PREFIX_MIN_CHARS`, are dropped (CJK is matched by character fragments instead).
///
/// Why index prefixes rather than expand them at query time: a prefix query walks the term
/// dictionary of every segment and unions the posting lists of every term it finds. On 1M
/// documents that walk was the largest single cost of a search. Here a prefix is one term.
#[derive(Clone)]
struct Prefixes;

impl TokenFilter for Prefixes {
    type Tokenizer<T: Tokenizer> = PrefixesTokenizer<T>;

    fn transform<T: Tokenizer>(self, tokenizer: T) -> PrefixesTokenizer<T> {
        PrefixesTokenizer(tokenizer)
    }
}

#[derive(Clone)]
struct PrefixesTokenizer<T>(T);

impl<T: Tokenizer> Tokenizer for PrefixesTokenizer<T> {
    type TokenStream<'a> = PrefixesStream<T::TokenStream<'a>>;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> Self::TokenStream<'a> {
        PrefixesStream {
            inner: self.0.token_stream(text),
            word: String::new(),
            ends: Vec::new(),
            token: Token::default(),
        }
    }
}

struct PrefixesStream<S> {
    inner: S,
    /// The word whose prefixes are being emitted.
    word: String,
    /// Byte ends of the prefixes of `word` still to emit, longest first (popped from the back).
    ends: Vec<usize>,
    token: Token,
}

impl<S: TokenStream> TokenStream for PrefixesStream<S> {
    fn advance(&mut self) -> bool {
        loop {
            if let Some(end) = self.ends.pop() {
                self.token.text.clear();
                self.token.text.push_str(&self.word[..end]);
                return true;
            }
            if !self.inner.advance() {
                return false;
            }
            let token = self.inner.token();
            if token.text.chars().any(is_cjk) {
                continue;
            }
            self.word.clone_from(&token.text);
            self.token.clone_from(token);
            let ends = self.word.char_indices().map(|(i, c)| i + c.len_utf8());
            self.ends.extend(ends.skip(PREFIX_MIN_CHARS - 1).take(PREFIX_MAX_CHARS - PREFIX_MIN_CHARS + 1));
            self.ends.reverse();
        }
    }

    fn token(&self) -> &Token {
        &self.token
    }

    fn token_mut(&mut self) -> &mut Token {
        &mut self.token
    }
}

/// Emits every CJK character of the text as its own token, each followed by the bigram it
/// starts when the next character is CJK too.
#[derive(Clone, Default)]
struct CjkChars {
    folded: String,
}

impl Tokenizer for CjkChars {
    type TokenStream<'a> = CjkCharStream<'a>;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> CjkCharStream<'a> {
        self.folded.clear();
        fold_into(text, &mut self.folded);
        CjkCharStream {
            chars: self.folded.char_indices().enumerate().peekable(),
            bigram: None,
            token: Token::default(),
        }
    }
}

struct CjkCharStream<'a> {
    chars: std::iter::Peekable<std::iter::Enumerate<std::str::CharIndices<'a>>>,
    /// The bigram to emit after the current character: (its second character, byte offset).
    bigram: Option<(char, usize)>,
    token: Token,
}

impl TokenStream for CjkCharStream<'_> {
    fn advance(&mut self) -> bool {
        if let Some((second, offset)) = self.bigram.take() {
            // The character token is still in `self.token`: extend it in place.
            self.token.text.push(second);
            self.token.offset_to = offset + second.len_utf8();
            self.token.position_length = 2;
            return true;
        }
        while let Some((position, (offset, c))) = self.chars.next() {
            if is_cjk(c) {
                self.token.text.clear();
                self.token.text.push(c);
                self.token.offset_from = offset;
                self.token.offset_to = offset + c.len_utf8();
                self.token.position = position;
                self.token.position_length = 1;
                self.bigram =
                    self.chars.peek().filter(|(_, (_, next))| is_cjk(*next)).map(|&(_, (o, n))| (n, o));
                return true;
            }
        }
        false
    }

    fn token(&self) -> &Token {
        &self.token
    }

    fn token_mut(&mut self) -> &mut Token {
        &mut self.token
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_full_width_and_ideographic_space() {
        let mut s = String::new();
        fold_into("ＢＯＨＥＭＩＡＮ\u{3000}！ｚ～晴", &mut s);
        assert_eq!(s, "BOHEMIAN !z~晴");
    }

    #[test]
    fn words_are_lowercased_folded_and_punctuation_free() {
        let mut a = words_analyzer();
        let t = tokens(&mut a, "Ｂｏｈｅｍｉａｎ Rhapsody (Live) - Beyoncé");
        assert_eq!(t, ["bohemian", "rhapsody", "live", "beyonce"]);
        let t = tokens(&mut a, "晴天 - 周杰伦.mp3");
        assert!(t.contains(&"晴天".to_string()), "{t:?}");
        assert!(t.contains(&"周杰伦".to_string()), "{t:?}");
        assert!(t.iter().all(|w| w.chars().any(char::is_alphanumeric)));
    }

    #[test]
    fn other_scripts_are_whole_words() {
        let mut a = words_analyzer();
        let t = tokens(&mut a, "Группа крови / 아이유 좋은 날 / Ñandú / 周杰伦jay");
        assert_eq!(t, ["группа", "крови", "아이유", "좋은", "날", "nandu", "周杰伦", "jay"]);
    }

    #[test]
    fn over_long_words_are_cut_to_their_first_forty_bytes_after_folding() {
        let mut a = words_analyzer();
        let word = "Pneumonoultramicroscopicsilicovolcanoconiosis";
        assert_eq!(tokens(&mut a, word), [word[..MAX_TOKEN_BYTES].to_lowercase()]);
        // Accents fold before the cut, so both spellings keep the same first 40 letters.
        let accented = format!("é{}", &word[1..]);
        assert_eq!(tokens(&mut a, &accented), tokens(&mut a, &format!("e{}", &word[1..])));
        // A cut never splits a character: byte 40 falls inside the 20th `ж` (two bytes each).
        let cyrillic = format!("a{}", "ж".repeat(30));
        assert_eq!(tokens(&mut a, &cyrillic), [format!("a{}", "ж".repeat(19))]);
    }

    #[test]
    fn prefixes_of_non_cjk_words_from_three_to_sixteen_chars() {
        let mut a = word_prefixes_analyzer();
        let t = tokens(&mut a, "Love 晴天 me Ñandú");
        assert_eq!(t, ["lov", "love", "nan", "nand", "nandu"]);
        let long = "abcdefghijklmnopqrstuvwxyz";
        let t = tokens(&mut a, long);
        assert_eq!(t.len(), PREFIX_MAX_CHARS - PREFIX_MIN_CHARS + 1);
        assert_eq!(t.last().map(String::as_str), Some(&long[..PREFIX_MAX_CHARS]));
        let mut raw = TextAnalyzer::builder(RawTokenizer::default()).filter(Prefixes).build();
        assert_eq!(tokens(&mut raw, "qingtian"), ["qin", "qing", "qingt", "qingti", "qingtia", "qingtian"]);
    }

    #[test]
    fn a_typed_prefix_is_looked_up_by_at_most_sixteen_chars() {
        assert_eq!(prefix_term("lo"), None);
        assert_eq!(prefix_term("lov"), Some("lov"));
        assert_eq!(prefix_term("abcdefghijklmnopqrstuvwxyz"), Some("abcdefghijklmnop"));
        assert_eq!(prefix_term("ñandú"), Some("ñandú"));
        assert_eq!(prefix_term("ñañ"), Some("ñañ"));
    }

    #[test]
    fn cjk_chars_and_bigrams_have_text_positions() {
        let mut a = cjk_analyzer();
        let mut got = Vec::new();
        a.token_stream("七里 香a天晴天").process(&mut |t: &Token| got.push((t.text.clone(), t.position)));
        let want = [
            ("七", 0),
            ("七里", 0),
            ("里", 1),
            ("香", 3),
            ("天", 5),
            ("天晴", 5),
            ("晴", 6),
            ("晴天", 6),
            ("天", 7),
        ];
        let want: Vec<(String, usize)> = want.iter().map(|(s, p)| (s.to_string(), *p)).collect();
        assert_eq!(got, want);
    }
}
