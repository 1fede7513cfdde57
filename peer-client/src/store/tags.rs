//! What a shared file is, as the directory sees it: tags read with lofty for audio files, the
//! `Artist - Title` file-name convention when tags are missing, and a media kind from the
//! extension. Every string is bounded by the protocol's limits.

use std::path::Path;

use lofty::config::ParseOptions;
use lofty::prelude::{Accessor, AudioFile, TaggedFileExt};
use lofty::probe::Probe;
use quaver_shared::ContentId;
use quaver_shared::directory::v1::{FileInfo, MediaKind};
use quaver_shared::limits::{MAX_FILE_NAME_BYTES, MAX_TAG_BYTES};

const AUDIO: &[&str] = &["mp3", "flac", "ogg", "opus", "m4a", "aac", "wav", "wma", "ape"];
const VIDEO: &[&str] = &["mp4", "mkv", "webm", "avi", "mov", "wmv", "flv", "m4v", "mpg", "mpeg"];
const IMAGE: &[&str] = &["jpg", "jpeg", "png", "gif", "webp", "bmp", "tif", "tiff", "svg"];
const DOCUMENT: &[&str] = &["pdf", "txt", "md", "epub", "doc", "docx", "odt", "rtf", "cue", "log"];
const ARCHIVE: &[&str] = &["zip", "rar", "7z", "tar", "gz", "bz2", "xz", "zst"];

/// The media kind of a file, from its extension (case-insensitive).
pub fn media_kind(path: &Path) -> MediaKind {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    let ext = ext.as_str();
    if AUDIO.contains(&ext) {
        MediaKind::Audio
    } else if VIDEO.contains(&ext) {
        MediaKind::Video
    } else if IMAGE.contains(&ext) {
        MediaKind::Image
    } else if DOCUMENT.contains(&ext) {
        MediaKind::Document
    } else if ARCHIVE.contains(&ext) {
        MediaKind::Archive
    } else {
        MediaKind::Other
    }
}

/// The longest prefix of `s` that fits in `max` bytes without splitting a character.
pub fn bounded(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// Tags found in the file itself; empty strings and zeros when unknown.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tags {
    pub title: String,
    pub artist: String,
    pub album: String,
    pub duration_ms: u32,
    pub bitrate_kbps: u32,
}

/// Reads the tags and audio properties of an audio file. `None` when lofty cannot parse it.
/// Cover art is not loaded, and a panic inside the parser is contained to this file.
pub fn read_tags(path: &Path) -> Option<Tags> {
    let probe = || Probe::open(path)?.options(ParseOptions::new().read_cover_art(false)).read();
    let file = match std::panic::catch_unwind(probe) {
        Ok(Ok(file)) => file,
        Ok(Err(e)) => {
            tracing::debug!(path = %path.display(), error = %e, "no readable tags");
            return None;
        }
        Err(_) => {
            tracing::warn!(path = %path.display(), "tag parser panicked; using the file name");
            return None;
        }
    };
    let mut tags = Tags::default();
    // The format's primary tag first, then any other tag the file carries.
    let ordered = file.primary_tag().into_iter().chain(file.tags().iter());
    for tag in ordered {
        fill(&mut tags.title, tag.title().as_deref());
        fill(&mut tags.artist, tag.artist().as_deref());
        fill(&mut tags.album, tag.album().as_deref());
    }
    let props = file.properties();
    tags.duration_ms = u32::try_from(props.duration().as_millis()).unwrap_or(u32::MAX);
    tags.bitrate_kbps = props.audio_bitrate().or(props.overall_bitrate()).unwrap_or(0);
    Some(tags)
}

fn fill(slot: &mut String, value: Option<&str>) {
    if let Some(v) = value.map(str::trim).filter(|v| !v.is_empty())
        && slot.is_empty()
    {
        *slot = v.to_owned();
    }
}

/// Splits a file stem on the first `" - "` into (artist, title); no separator: ("", stem).
pub fn parse_stem(stem: &str) -> (String, String) {
    match stem.split_once(" - ") {
        Some((artist, title)) if !artist.trim().is_empty() && !title.trim().is_empty() => {
            (artist.trim().to_owned(), title.trim().to_owned())
        }
        _ => (String::new(), stem.trim().to_owned()),
    }
}

/// The directory's view of the file at `path`: tags (audio only), the file-name fallback for
/// missing title/artist, the media kind, and the bounded file name.
pub fn file_info(path: &Path, id: &ContentId, size: u64) -> FileInfo {
    let kind = media_kind(path);
    let mut tags = match kind {
        MediaKind::Audio => read_tags(path).unwrap_or_default(),
        _ => Tags::default(),
    };
    let stem = path.file_stem().map(|s| s.to_string_lossy()).unwrap_or_default();
    let (artist, title) = match kind {
        MediaKind::Audio | MediaKind::Video => parse_stem(&stem),
        _ => (String::new(), stem.trim().to_owned()),
    };
    fill(&mut tags.title, Some(&title));
    fill(&mut tags.artist, Some(&artist));
    let file_name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    FileInfo {
        content_id: id.to_vec(),
        size,
        file_name: bounded(&file_name, MAX_FILE_NAME_BYTES),
        title: bounded(&tags.title, MAX_TAG_BYTES),
        artist: bounded(&tags.artist, MAX_TAG_BYTES),
        album: bounded(&tags.album, MAX_TAG_BYTES),
        duration_ms: tags.duration_ms,
        bitrate_kbps: tags.bitrate_kbps,
        media_kind: kind as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stems_split_on_the_first_separator() {
        assert_eq!(parse_stem("A - B - C"), ("A".into(), "B - C".into()));
        assert_eq!(parse_stem("  Queen -  Bohemian Rhapsody "), ("Queen".into(), "Bohemian Rhapsody".into()));
        assert_eq!(parse_stem("晴天"), (String::new(), "晴天".into()));
        assert_eq!(parse_stem("A-B"), (String::new(), "A-B".into()));
        assert_eq!(parse_stem(" - B"), (String::new(), "- B".into()));
    }

    #[test]
    fn bounding_keeps_whole_characters() {
        assert_eq!(bounded("héllo", 2), "h");
        assert_eq!(bounded("héllo", 3), "hé");
        assert_eq!(bounded("晴天", 5), "晴");
        assert_eq!(bounded("abc", 3), "abc");
        assert_eq!(bounded(&"x".repeat(5000), MAX_TAG_BYTES).len(), MAX_TAG_BYTES);
    }

    #[test]
    fn kinds_come_from_the_extension() {
        assert_eq!(media_kind(Path::new("a/b.FLAC")), MediaKind::Audio);
        assert_eq!(media_kind(Path::new("b.mkv")), MediaKind::Video);
        assert_eq!(media_kind(Path::new("c.jpeg")), MediaKind::Image);
        assert_eq!(media_kind(Path::new("d.pdf")), MediaKind::Document);
        assert_eq!(media_kind(Path::new("e.zip")), MediaKind::Archive);
        assert_eq!(media_kind(Path::new("f")), MediaKind::Other);
        assert_eq!(media_kind(Path::new("g.xyz")), MediaKind::Other);
    }

    #[test]
    fn a_long_file_name_is_bounded() {
        let name = format!("{}.mp3", "é".repeat(MAX_FILE_NAME_BYTES));
        let info = file_info(Path::new(&name), &ContentId::of_bytes(b""), 0);
        assert!(info.file_name.len() <= MAX_FILE_NAME_BYTES);
        assert!(info.title.len() <= MAX_TAG_BYTES && !info.title.is_empty());
    }
}
