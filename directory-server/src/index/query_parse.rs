//! Splitting a user's query string into searchable units, with optional field scopes.
//!
//! Owns: the bound on query length and word count, field scopes (`artist:五月天`,
//! `title:"love story"`), and cutting text into Latin words and CJK runs in query order.
//!
//! Must never: fail. Every string is plain text: an unknown field (`foo:bar`), a stray `:` or an
//! unbalanced quote is read as text, and what is not a letter, digit or CJK character is a
//! separator. An empty result means "nothing to search for", which the caller reports.

use std::collections::HashSet;

use super::analyzer::{self, fold_into, is_cjk};

/// Bytes of the query that are looked at; the rest is ignored.
pub const MAX_QUERY_BYTES: usize = 1024;
/// At most this many distinct words take part in a query.
pub const MAX_WORDS: usize = 32;
/// A CJK run longer than this is matched as a fragment on its first characters only.
pub const MAX_RUN_CHARS: usize = 32;
/// Minimum length (chars) of the last Latin word for prefix matching (what the index keeps).
pub use super::analyzer::PREFIX_MIN_CHARS;

/// Which fields a unit is matched in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Title, artist, album and file name (plain text).
    Any,
    Title,
    Artist,
    Album,
    FileName,
}

impl Scope {
    /// The scope a `name:` prefix selects, if `name` is a field users may name.
    fn named(name: &str) -> Option<Scope> {
        match name.to_ascii_lowercase().as_str() {
            "title" | "song" => Some(Scope::Title),
            "artist" | "singer" | "by" => Some(Scope::Artist),
            "album" => Some(Scope::Album),
            "file" | "name" | "filename" => Some(Scope::FileName),
            _ => None,
        }
    }
}

#[derive(Debug, PartialEq)]
pub enum Unit {
    /// A word of letters or digits (not CJK); `prefix` for the query's last Latin word.
    Latin { word: String, prefix: bool, scope: Scope },
    /// A maximal run of CJK characters and its jieba words.
    Cjk { run: Vec<char>, words: Vec<String>, scope: Scope },
}

impl Unit {
    #[cfg(test)]
    pub fn scope(&self) -> Scope {
        match self {
            Unit::Latin { scope, .. } | Unit::Cjk { scope, .. } => *scope,
        }
    }
}

/// Splits the (bounded, folded) query into units, in query order.
pub fn units(raw: &str) -> Vec<Unit> {
    let mut end = raw.len().min(MAX_QUERY_BYTES);
    while !raw.is_char_boundary(end) {
        end -= 1;
    }
    let mut folded = String::with_capacity(end);
    fold_into(&raw[..end], &mut folded);

    let mut cutter = Cutter { words: analyzer::words_analyzer(), seen: HashSet::new(), budget: MAX_WORDS };
    let mut units = Vec::new();
    for (scope, text) in scoped_segments(&folded) {
        cutter.cut(scope, text, &mut units);
    }
    if let Some(Unit::Latin { word, prefix, .. }) =
        units.iter_mut().rev().find(|u| matches!(u, Unit::Latin { .. }))
    {
        *prefix = word.chars().count() >= PREFIX_MIN_CHARS;
    }
    units
}

/// Cuts `text` into `(scope, segment)` pairs: `field:value` and `field:"some value"` become
/// scoped segments, everything else is `Scope::Any`. A closing quote may be missing.
fn scoped_segments(text: &str) -> Vec<(Scope, &str)> {
    let mut out = Vec::new();
    let mut plain_start = 0;
    let mut i = 0;
    while i < text.len() {
        let at_word_start = i == 0 || text[..i].ends_with(char::is_whitespace);
        let rest = &text[i..];
        // A field name is at most 8 ASCII letters, so the colon is within the first 9 bytes.
        let scoped = at_word_start
            .then(|| rest.bytes().take(9).position(|b| b == b':'))
            .flatten()
            .map(|colon| &rest[..colon])
            .filter(|name| !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphabetic()))
            .and_then(|name| Some((Scope::named(name)?, name.len() + 1)));
        let Some((scope, name_len)) = scoped else {
            i += rest.chars().next().map_or(1, char::len_utf8);
            continue;
        };
        let value_start = i + name_len;
        let value = &text[value_start..];
        let (value, consumed) = match value.strip_prefix('"') {
            Some(quoted) => {
                let len = quoted.find('"').unwrap_or(quoted.len());
                (&quoted[..len], 1 + (len + 1).min(quoted.len()))
            }
            None => {
                let len = value.find(char::is_whitespace).unwrap_or(value.len());
                (&value[..len], len)
            }
        };
        if value.trim().is_empty() {
            // `artist:` with nothing after it: plain text.
            i = value_start;
            continue;
        }
        out.push((Scope::Any, &text[plain_start..i]));
        out.push((scope, value));
        i = value_start + consumed;
        plain_start = i;
    }
    out.push((Scope::Any, &text[plain_start..]));
    out.retain(|(_, t)| !t.trim().is_empty());
    out
}

/// Cuts segments into units, deduplicating words across the whole query within a budget.
struct Cutter {
    words: tantivy::tokenizer::TextAnalyzer,
    seen: HashSet<(Scope, String)>,
    budget: usize,
}

impl Cutter {
    fn cut(&mut self, scope: Scope, text: &str, units: &mut Vec<Unit>) {
        let mut start = 0;
        let mut in_cjk = false;
        for (i, c) in text.char_indices() {
            if is_cjk(c) != in_cjk {
                if i > start {
                    self.take(scope, &text[start..i], in_cjk, units);
                }
                start = i;
                in_cjk = !in_cjk;
            }
        }
        if start < text.len() {
            self.take(scope, &text[start..], in_cjk, units);
        }
    }

    fn take(&mut self, scope: Scope, text: &str, cjk: bool, units: &mut Vec<Unit>) {
        let mut words = Vec::new();
        for w in analyzer::tokens(&mut self.words, text) {
            if self.budget > 0 && self.seen.insert((scope, w.clone())) {
                self.budget -= 1;
                words.push(w);
            }
        }
        if cjk {
            // A run whose words were all seen before still counts once as a fragment.
            if words.is_empty() {
                if self.budget == 0 || !self.seen.insert((scope, text.to_string())) {
                    return;
                }
                self.budget -= 1;
            }
            let run: Vec<char> = text.chars().take(MAX_RUN_CHARS).collect();
            units.push(Unit::Cjk { run, words, scope });
        } else {
            units.extend(words.into_iter().map(|word| Unit::Latin { word, prefix: false, scope }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn describe(raw: &str) -> Vec<String> {
        units(raw)
            .into_iter()
            .map(|u| {
                let scope = match u.scope() {
                    Scope::Any => "",
                    Scope::Title => "title:",
                    Scope::Artist => "artist:",
                    Scope::Album => "album:",
                    Scope::FileName => "file:",
                };
                match u {
                    Unit::Latin { word, prefix, .. } => {
                        format!("{scope}L:{word}{}", if prefix { "*" } else { "" })
                    }
                    Unit::Cjk { run, words, .. } => {
                        format!("{scope}C:{}={}", run.iter().collect::<String>(), words.join("/"))
                    }
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
    fn field_prefixes_scope_their_value() {
        assert_eq!(describe("artist:五月天"), ["artist:C:五月天=五月/五月天"]);
        assert_eq!(describe("ARTIST:五月天 温柔"), ["artist:C:五月天=五月/五月天", "C:温柔=温柔"]);
        assert_eq!(describe("title:\"love story\" taylor"), ["title:L:love", "title:L:story", "L:taylor*"]);
        assert_eq!(describe("晴天 artist:周杰伦"), ["C:晴天=晴天", "artist:C:周杰伦=周杰伦"]);
        // Full-width colon and letters fold first.
        assert_eq!(describe("ａｒｔｉｓｔ：Queen"), ["artist:L:queen*"]);
    }

    #[test]
    fn malformed_field_syntax_is_plain_text() {
        assert_eq!(describe("foo:bar"), ["L:foo", "L:bar*"]);
        assert_eq!(describe("artist:"), ["L:artist*"]);
        assert_eq!(describe(":晴天"), ["C:晴天=晴天"]);
        assert_eq!(describe("artist:\"Queen"), ["artist:L:queen*"]);
        assert_eq!(describe("artist:\""), ["L:artist*"]);
        assert_eq!(describe("a:b:c"), ["L:a", "L:b", "L:c"]);
        assert_eq!(describe("x artist:"), ["L:x", "L:artist*"]);
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
