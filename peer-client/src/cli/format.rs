//! Human-readable numbers and columns for the terminal.

/// `1.5 MiB`, `320 B`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

/// `3:25`, or `-` when unknown.
pub fn duration_ms(ms: u32) -> String {
    if ms == 0 {
        return "-".into();
    }
    let s = ms / 1000;
    format!("{}:{:02}", s / 60, s % 60)
}

/// Columns a terminal gives `c`: two for East Asian wide characters, else one.
fn char_width(c: char) -> usize {
    let wide = matches!(c as u32,
        0x1100..=0x115F | 0x2E80..=0x303E | 0x3041..=0x33FF | 0x3400..=0x4DBF | 0x4E00..=0x9FFF
        | 0xA000..=0xA4CF | 0xAC00..=0xD7A3 | 0xF900..=0xFAFF | 0xFE30..=0xFE4F | 0xFF00..=0xFF60
        | 0xFFE0..=0xFFE6 | 0x20000..=0x3FFFD);
    if c.is_control() {
        0
    } else if wide {
        2
    } else {
        1
    }
}

/// `s` cut to at most `width` columns (with `…` when cut) and padded to exactly `width`.
/// Control characters are dropped: names come from other peers.
pub fn column(s: &str, width: usize) -> String {
    let mut out = String::new();
    let mut used = 0;
    let total: usize = s.chars().map(char_width).sum();
    for c in s.chars().filter(|c| !c.is_control()) {
        let w = char_width(c);
        if total > width && used + w > width.saturating_sub(1) {
            out.push('…');
            used += 1;
            break;
        }
        out.push(c);
        used += w;
    }
    out.extend(std::iter::repeat_n(' ', width.saturating_sub(used)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations() {
        assert_eq!(bytes(320), "320 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(20 * 1024 * 1024), "20.0 MiB");
        assert_eq!(duration_ms(205_000), "3:25");
        assert_eq!(duration_ms(0), "-");
    }

    #[test]
    fn columns_count_wide_characters_twice_and_drop_controls() {
        assert_eq!(column("晴天", 6), "晴天  ");
        assert_eq!(column("abc", 2), "a…");
        assert_eq!(column("周杰伦周杰伦", 5), "周杰…");
        assert_eq!(column("a\u{1b}[31mb", 4), "a[3…");
        assert_eq!(column("ok\n", 3), "ok ");
    }
}
