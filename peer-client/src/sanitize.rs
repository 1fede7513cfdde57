//! File names from the directory are data, never paths. `safe_file_name` turns whatever a peer
//! announced into one plain file name that is safe to create inside the download directory.
//!
//! Rules: no path separators, no `.`/`..`, no leading dots (no hidden files), no control or
//! bidi-override characters, no Windows-reserved characters, at most `MAX_NAME_BYTES` bytes
//! (the extension is kept when the name is shortened), never empty.

/// Longest name we create, in bytes (ext4 and most file systems allow 255).
pub const MAX_NAME_BYTES: usize = 200;

fn is_forbidden(c: char) -> bool {
    c.is_control()
        || matches!(c, '/' | '\\' | ':' | '*' | '?' | '"' | '<' | '>' | '|')
        // Bidirectional overrides can make "evil\u{202e}3pm.exe" display as "evilexe.mp3".
        || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}')
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

    proptest! {
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
