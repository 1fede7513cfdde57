//! File names from the directory are data, never paths. `safe_file_name` turns whatever a peer
//! announced into one plain file name that is safe to create inside the download directory.
//!
//! Rules: no path separators, no `.`/`..`, no leading dots (no hidden files), no control or
//! bidi-override characters, no Windows-reserved characters, at most `MAX_NAME_BYTES` bytes
//! (the extension is kept when the name is shortened), never empty.
//!
//! [`for_terminal`] is the other half: any text from the network (titles, artists, names,
//! error messages the directory wrote) as the CLI may print it. Control and format characters
//! become [`PLACEHOLDER`], so a name cannot move the cursor, recolour the terminal or be shown
//! reordered by a bidi override; everything a person reads as text is left alone.

/// Longest name we create, in bytes (ext4 and most file systems allow 255).
pub const MAX_NAME_BYTES: usize = 200;

fn is_forbidden(c: char) -> bool {
    c.is_control()
        || matches!(c, '/' | '\\' | ':' | '*' | '?' | '"' | '<' | '>' | '|')
        // Bidirectional overrides can make "evil\u{202e}3pm.exe" display as "evilexe.mp3".
        || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}')
}

/// What [`for_terminal`] shows in place of a character it will not print: visible, one column
/// wide, and plainly not part of the name.
pub const PLACEHOLDER: char = '\u{fffd}';

/// `text` as it may reach a terminal: every control character (C0, DEL, C1), Unicode format
/// character (general category Cf: bidi embeddings, overrides, isolates and marks, zero-width
/// spaces, soft hyphens, ...) and line or paragraph separator is replaced by [`PLACEHOLDER`].
/// Letters of any script, combining marks and emoji are kept, including the format characters
/// that emoji sequences are made of (a zero-width joiner between two emoji, the tags of a
/// subdivision flag), since there they join pictures and cannot disguise text.
pub fn for_terminal(text: &str) -> std::borrow::Cow<'_, str> {
    let chars: Vec<char> = text.chars().collect();
    let keep = |i: usize| {
        let c = chars[i];
        !is_unprintable(c)
            || (c == '\u{200d}' && joins_emoji(i.checked_sub(1).map(|p| chars[p]), chars.get(i + 1).copied()))
            || (is_tag_character(c)
                && i > 0
                && (chars[i - 1] == BLACK_FLAG || is_tag_character(chars[i - 1])))
    };
    if (0..chars.len()).all(keep) {
        return std::borrow::Cow::Borrowed(text);
    }
    (0..chars.len()).map(|i| if keep(i) { chars[i] } else { PLACEHOLDER }).collect::<String>().into()
}

/// The base of the subdivision flags (England, Scotland, Wales): U+1F3F4 followed by tags.
const BLACK_FLAG: char = '\u{1f3f4}';

/// Characters a terminal would act on or that change how other characters are shown.
fn is_unprintable(c: char) -> bool {
    use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};
    c.is_control()
        || matches!(
            c.general_category(),
            GeneralCategory::Format | GeneralCategory::LineSeparator | GeneralCategory::ParagraphSeparator
        )
}

fn is_tag_character(c: char) -> bool {
    unicode_properties::emoji::is_tag_character(c)
}

/// Whether a zero-width joiner between `before` and `after` is part of an emoji sequence
/// (👩‍💻, ❤️‍🔥): emoji, a skin tone or a presentation selector before it, an emoji after it.
/// ASCII digits, `#` and `*` count as emoji in Unicode's tables (keycaps) but not here.
fn joins_emoji(before: Option<char>, after: Option<char>) -> bool {
    use unicode_properties::UnicodeEmoji;
    let (Some(before), Some(after)) = (before, after) else { return false };
    !before.is_ascii()
        && before.is_emoji_char_or_emoji_component()
        && before != '\u{200d}'
        && !after.is_ascii()
        && after.is_emoji_char()
}

fn truncate_at_char(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A safe file name for `announced`, or `fallback` when nothing usable is left.
pub fn safe_file_name(announced: &str, fallback: &str) -> String {
    let replaced: String = announced.chars().map(|c| if is_forbidden(c) { '_' } else { c }).collect();
    let trimmed = replaced.trim().trim_start_matches('.').trim();
    let name = if trimmed.is_empty() || trimmed.chars().all(|c| c == '.' || c == '_') {
        fallback.to_owned()
    } else {
        trimmed.to_owned()
    };
    if name.len() <= MAX_NAME_BYTES {
        return name;
    }
    // Keep a short extension such as ".flac" when shortening.
    match name.rfind('.') {
        Some(dot) if name.len() - dot <= 10 && dot > 0 => {
            let ext = &name[dot..];
            format!("{}{ext}", truncate_at_char(&name[..dot], MAX_NAME_BYTES - ext.len()))
        }
        _ => truncate_at_char(&name, MAX_NAME_BYTES).to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn traversal_and_control_characters_are_neutralised() {
        assert_eq!(safe_file_name("../../etc/passwd", "x"), "_.._etc_passwd");
        assert_eq!(safe_file_name("..", "fallback"), "fallback");
        assert_eq!(safe_file_name("/", "fallback"), "fallback");
        assert_eq!(safe_file_name("a\nb\u{0}c\u{1b}[31m.mp3", "x"), "a_b_c_[31m.mp3");
        assert_eq!(safe_file_name(".hidden.mp3", "x"), "hidden.mp3");
        assert_eq!(safe_file_name("evil\u{202e}3pm.exe", "x"), "evil_3pm.exe");
        assert_eq!(safe_file_name("晴天 - 周杰伦.flac", "x"), "晴天 - 周杰伦.flac");
        assert_eq!(safe_file_name("", "x"), "x");
    }

    #[test]
    fn long_names_keep_their_extension() {
        let long = format!("{}.flac", "晴".repeat(200));
        let safe = safe_file_name(&long, "x");
        assert!(safe.len() <= MAX_NAME_BYTES);
        assert!(safe.ends_with(".flac"));
    }

    #[test]
    fn terminal_text_replaces_every_bidi_control() {
        let bidi = ('\u{202a}'..='\u{202e}')
            .chain('\u{2066}'..='\u{2069}')
            .chain(['\u{200e}', '\u{200f}', '\u{61c}']);
        for c in bidi {
            assert_eq!(for_terminal(&format!("evil{c}3pm.exe")), "evil\u{fffd}3pm.exe", "U+{:04X}", c as u32);
        }
    }

    #[test]
    fn terminal_text_replaces_c0_c1_del_and_other_format_characters() {
        for c in ('\0'..='\u{1f}').chain('\u{7f}'..='\u{9f}') {
            assert_eq!(for_terminal(&format!("a{c}b")), "a\u{fffd}b", "U+{:04X}", c as u32);
        }
        assert_eq!(for_terminal("passwd\u{1b}[2J\n"), "passwd\u{fffd}[2J\u{fffd}");
        // Zero-width space and joiners between letters, soft hyphen, BOM, line separator.
        assert_eq!(for_terminal("pay\u{200b}pal"), "pay\u{fffd}pal");
        assert_eq!(for_terminal("a\u{200d}b\u{200c}c"), "a\u{fffd}b\u{fffd}c");
        assert_eq!(for_terminal("1\u{200d}2"), "1\u{fffd}2", "keycap digits are not pictures");
        assert_eq!(for_terminal("so\u{ad}ft\u{feff}\u{2028}"), "so\u{fffd}ft\u{fffd}\u{fffd}");
        assert_eq!(for_terminal("\u{e0067}"), "\u{fffd}", "a tag outside a flag");
    }

    #[test]
    fn terminal_text_leaves_text_and_emoji_alone() {
        for text in [
            "周杰伦 - 晴天.flac",
            "五月天 突然好想你",
            "Beyoncé (cafe\u{301})", // precomposed and combining accents
            "Тату — Нас не догонят",
            "שלום עולם", // right-to-left letters are text; only overrides are not
            "👩\u{200d}💻 ❤\u{fe0f}\u{200d}🔥 👍🏽 🇯🇵",
            "🏴\u{e0067}\u{e0062}\u{e0073}\u{e0063}\u{e0074}\u{e007f}", // Scotland's flag
            "",
        ] {
            assert!(matches!(for_terminal(text), std::borrow::Cow::Borrowed(_)), "{text:?} was changed");
        }
    }

    proptest! {
        #[test]
        fn terminal_text_has_no_control_or_bidi_character(s in any::<String>()) {
            let shown = for_terminal(&s);
            prop_assert_eq!(shown.chars().count(), s.chars().count(), "one placeholder per character");
            let bidi = |c: char| matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}' | '\u{61c}');
            for c in shown.chars() {
                prop_assert!(!c.is_control() && !bidi(c), "{:?} in {:?}", c, shown);
            }
        }

        #[test]
        fn any_input_gives_one_plain_name(s in any::<String>()) {
            let name = safe_file_name(&s, "fallback");
            prop_assert!(!name.is_empty());
            prop_assert!(name.len() <= MAX_NAME_BYTES);
            prop_assert!(!name.contains('/') && !name.contains('\\'));
            prop_assert!(!name.starts_with('.'));
            prop_assert!(!name.chars().any(char::is_control));
            let path = std::path::Path::new(&name);
            prop_assert_eq!(path.components().count(), 1);
            prop_assert!(matches!(path.components().next(), Some(std::path::Component::Normal(_))));
        }
    }
}
