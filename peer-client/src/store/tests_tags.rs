//! Tags from real audio: a small PCM WAV written by hand, with and without a RIFF INFO list.

use std::path::Path;

use quaver_shared::ContentId;
use quaver_shared::directory::v1::MediaKind;

use super::tags::{file_info, read_tags};

fn chunk(id: &[u8; 4], body: &[u8]) -> Vec<u8> {
    let mut out = id.to_vec();
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
    if body.len() % 2 == 1 {
        out.push(0);
    }
    out
}

/// One second of 8 kHz mono 16-bit silence (128 kbit/s), with INFO tags when given.
fn wav(tags: &[(&[u8; 4], &str)]) -> Vec<u8> {
    let (rate, channels, bits) = (8000u32, 1u16, 16u16);
    let mut fmt = Vec::new();
    fmt.extend_from_slice(&1u16.to_le_bytes()); // PCM
    fmt.extend_from_slice(&channels.to_le_bytes());
    fmt.extend_from_slice(&rate.to_le_bytes());
    fmt.extend_from_slice(&(rate * u32::from(bits / 8)).to_le_bytes());
    fmt.extend_from_slice(&(bits / 8).to_le_bytes());
    fmt.extend_from_slice(&bits.to_le_bytes());
    let mut body = b"WAVE".to_vec();
    body.extend(chunk(b"fmt ", &fmt));
    body.extend(chunk(b"data", &vec![0u8; rate as usize * 2]));
    if !tags.is_empty() {
        let mut info = b"INFO".to_vec();
        for (id, value) in tags {
            let mut text = value.as_bytes().to_vec();
            text.push(0);
            info.extend(chunk(id, &text));
        }
        body.extend(chunk(b"LIST", &info));
    }
    chunk(b"RIFF", &body)
}

#[test]
fn tags_of_a_tagged_wav_are_read_and_win_over_the_file_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("Wrong Artist - Wrong Title.wav");
    let tags = [(b"INAM", "周杰伦的歌 Real Title"), (b"IART", "Real Artist"), (b"IPRD", "An Album")];
    std::fs::write(&path, wav(&tags)).unwrap();

    let read = read_tags(&path).expect("a valid WAV");
    assert_eq!(read.title, "周杰伦的歌 Real Title");
    assert_eq!(read.artist, "Real Artist");
    assert_eq!(read.album, "An Album");
    assert_eq!(read.duration_ms, 1000);
    assert_eq!(read.bitrate_kbps, 128);

    let info = file_info(&path, &ContentId::of_bytes(b"x"), 16_044);
    assert_eq!((info.title.as_str(), info.artist.as_str()), ("周杰伦的歌 Real Title", "Real Artist"));
    assert_eq!((info.album.as_str(), info.duration_ms, info.bitrate_kbps), ("An Album", 1000, 128));
    assert_eq!(info.media_kind, MediaKind::Audio as i32);
}

#[test]
fn an_untagged_wav_keeps_its_properties_and_takes_names_from_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("Some Band - Some Song.wav");
    std::fs::write(&path, wav(&[])).unwrap();
    let info = file_info(&path, &ContentId::of_bytes(b"y"), 0);
    assert_eq!((info.artist.as_str(), info.title.as_str()), ("Some Band", "Some Song"));
    assert_eq!((info.duration_ms, info.bitrate_kbps), (1000, 128));
}

#[test]
fn unparsable_audio_falls_back_to_the_file_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("No Separator.flac");
    std::fs::write(&path, b"definitely not flac").unwrap();
    assert!(read_tags(&path).is_none());
    let info = file_info(&path, &ContentId::of_bytes(b"z"), 19);
    assert_eq!((info.artist.as_str(), info.title.as_str()), ("", "No Separator"));
    assert_eq!((info.duration_ms, info.bitrate_kbps), (0, 0));
    assert!(read_tags(Path::new("/nonexistent/file.mp3")).is_none());
}
