//! Pinyin for Chinese titles and artists, so `qingtian`, `qt` (晴天) and `zjl` (周杰伦) match.
//!
//! Owns: which pinyin terms a text gets. For every run of characters that have a pinyin reading,
//! and for every jieba word of two or more such characters inside it: the full toneless pinyin
//! joined (`qingtian`) and, for two or more characters, the initials (`qt`). `ü` is written `v`
//! (as pinyin input methods do). Only the most common reading of a character is used.
//!
//! Must never: do I/O, or know anything about peers, presence or the catalog.

use pinyin::ToPinyin;

use super::analyzer;

/// Appends the pinyin terms of `text` to `out` (no duplicates within `out`).
pub fn terms(text: &str, out: &mut Vec<String>) {
    let mut run = String::new();
    for c in text.chars() {
        if c.to_pinyin().is_some() {
            run.push(c);
        } else if !run.is_empty() {
            push_terms(&run, out);
            run.clear();
        }
    }
    if !run.is_empty() {
        push_terms(&run, out);
    }
    if out.is_empty() {
        return;
    }
    let mut words = analyzer::words_analyzer();
    for word in analyzer::tokens(&mut words, text) {
        let n = word.chars().count();
        if n >= 2 && word.chars().all(|c| c.to_pinyin().is_some()) {
            push_terms(&word, out);
        }
    }
}

/// The full toneless pinyin of `hanzi` joined (`qingtian`, `ü` as `v`) and its initials (`qt`);
/// characters without a reading are left out.
pub fn spell(hanzi: &str) -> (String, String) {
    let mut full = String::new();
    let mut initials = String::new();
    for p in hanzi.to_pinyin().flatten() {
        full.extend(p.plain().chars().map(|c| if c == 'ü' { 'v' } else { c }));
        initials.push_str(p.first_letter());
    }
    (full, initials)
}

fn push_terms(hanzi: &str, out: &mut Vec<String>) {
    let (full, initials) = spell(hanzi);
    let several = hanzi.chars().nth(1).is_some();
    for term in [Some(full), several.then_some(initials)].into_iter().flatten() {
        if !term.is_empty() && !out.contains(&term) {
            out.push(term);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        terms(text, &mut out);
        out
    }

    #[test]
    fn runs_and_words_get_full_pinyin_and_initials() {
        assert_eq!(of("晴天"), ["qingtian", "qt"]);
        assert_eq!(of("周杰伦"), ["zhoujielun", "zjl"]);
        assert_eq!(of("天"), ["tian"]);
        let t = of("告白气球 (Live)");
        assert!(t.contains(&"gaobaiqiqiu".into()) && t.contains(&"gbqq".into()), "{t:?}");
        assert!(t.contains(&"qiqiu".into()), "jieba word 气球: {t:?}");
        assert_eq!(of("绿"), ["lv"]);
        assert!(of("Bohemian Rhapsody さくら").is_empty());
    }
}
