//! Human-readable numbers and columns for the terminal.

use std::borrow::Cow;

use quaver_peer::sanitize::for_terminal;

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

/// The time of day of `unix_ms` in UTC, `02:14:05 UTC` (the day is left out: a status
/// shows recent moments, and its "N s ago" says how recent).
pub fn utc_clock(unix_ms: u64) -> String {
    let s = (unix_ms / 1000) % 86_400;
    format!("{:02}:{:02}:{:02} UTC", s / 3600, s / 60 % 60, s % 60)
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

/// `s` as a terminal may show it ([`for_terminal`]): text from other peers and the directory
/// goes through here before it is printed.
pub fn text(s: &str) -> Cow<'_, str> {
    for_terminal(s)
}

/// `s` cut to at most `width` columns (with `…` when cut) and padded to exactly `width`, its
/// control and format characters shown as placeholders ([`text`]).
pub fn column(s: &str, width: usize) -> String {
    let s = text(s);
    let mut out = String::new();
    let mut used = 0;
    let total: usize = s.chars().map(char_width).sum();
    for c in s.chars() {
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
        assert_eq!(utc_clock(1_796_609_645_999), "02:14:05 UTC");
        assert_eq!(utc_clock(0), "00:00:00 UTC");
    }

    #[test]
    fn columns_count_wide_characters_twice_and_show_controls_as_placeholders() {
        assert_eq!(column("晴天", 6), "晴天  ");
        assert_eq!(column("abc", 2), "a…");
        assert_eq!(column("周杰伦周杰伦", 5), "周杰…");
        assert_eq!(column("a\u{1b}[31mb", 4), "a\u{fffd}[…");
        assert_eq!(column("ok\n", 4), "ok\u{fffd} ");
        assert_eq!(column("evil\u{202e}3pm.exe", 14), "evil\u{fffd}3pm.exe  ");
    }
}
