//! The search index's tantivy schema: field names, options and boosts, and turning an
//! [`IndexDoc`] into a tantivy document.
//!
//! Owns: which fields exist and how each is analysed. Changing anything here changes the
//! schema, and an on-disk index with another schema is wiped and rebuilt from the catalog on
//! open (see `SearchIndex::open_or_create`).
//!
//! Must never: do I/O, or know anything about peers, presence or the catalog.

use tantivy::TantivyDocument;
use tantivy::schema::{FAST, Field, INDEXED, IndexRecordOption, Schema, TextFieldIndexing, TextOptions};

use quaver_shared::ContentId;

use super::IndexDoc;
use super::{analyzer, romanize};

/// Fast field names (also used by the collector).
pub const KEY: &str = "key";
/// The order documents are stored in: see [`song_order`].
pub const SONG_ORDER: &str = "song_order";
pub const MEDIA_KIND: &str = "media_kind";
pub const SIZE: &str = "size";
pub const DURATION_MS: &str = "duration_ms";
pub const BITRATE_KBPS: &str = "bitrate_kbps";
/// The content id, big-endian in four u64 columns: a hit's id is read from the index, so a
/// search needs one catalog read per hit (the file record), not two (key → id → record).
pub const CONTENT_ID: [&str; 4] = ["content_id_0", "content_id_1", "content_id_2", "content_id_3"];

/// A content id as the four column values `CONTENT_ID` stores.
fn content_id_words(id: &ContentId) -> [u64; 4] {
    let bytes = id.as_bytes();
    std::array::from_fn(|i| {
        let mut word = [0u8; 8];
        word.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
        u64::from_be_bytes(word)
    })
}

/// The content id of four `CONTENT_ID` column values.
pub fn content_id_of(words: [u64; 4]) -> ContentId {
    let mut bytes = [0u8; 32];
    for (chunk, word) in bytes.chunks_exact_mut(8).zip(words) {
        chunk.copy_from_slice(&word.to_be_bytes());
    }
    ContentId::from_array(bytes)
}

/// Relative importance of each field in text relevance: title > artist > album > file name.
pub const TITLE_BOOST: f32 = 4.0;
pub const ARTIST_BOOST: f32 = 3.0;
pub const ALBUM_BOOST: f32 = 1.5;
pub const FILE_NAME_BOOST: f32 = 1.0;
/// Pinyin of Chinese titles and artists (`qingtian`, `qt`).
pub const PINYIN_BOOST: f32 = 2.0;

/// Handles to every field of the schema.
#[derive(Clone, Debug)]
pub struct Fields {
    pub key: Field,
    /// [`song_order`] of the document; the index is sorted by it.
    pub song_order: Field,
    pub media_kind: Field,
    pub size: Field,
    pub duration_ms: Field,
    pub bitrate_kbps: Field,
    pub content_id: [Field; 4],
    /// jieba word fields.
    pub title: Field,
    pub artist: Field,
    pub album: Field,
    pub file_name: Field,
    /// CJK single-character fields (with positions, for fragment phrases).
    pub title_cjk: Field,
    pub artist_cjk: Field,
    pub album_cjk: Field,
    pub file_cjk: Field,
    /// Pinyin terms (one value per term, untokenized) of title and artist.
    pub pinyin: Field,
    /// Prefixes (3 to 16 characters) of the non-CJK words of title and artist, and of the
    /// pinyin terms: search-as-you-type is one term lookup (see `analyzer::Prefixes`).
    pub title_prefix: Field,
    pub artist_prefix: Field,
    pub pinyin_prefix: Field,
}

impl Fields {
    /// The word fields with their boosts, most important first.
    pub fn word_fields(&self) -> [(Field, f32); 4] {
        [
            (self.title, TITLE_BOOST),
            (self.artist, ARTIST_BOOST),
            (self.album, ALBUM_BOOST),
            (self.file_name, FILE_NAME_BOOST),
        ]
    }

    /// The CJK character fields with their boosts, most important first.
    pub fn cjk_fields(&self) -> [(Field, f32); 4] {
        [
            (self.title_cjk, TITLE_BOOST * 0.6),
            (self.artist_cjk, ARTIST_BOOST * 0.6),
            (self.album_cjk, FILE_NAME_BOOST * 0.6),
            (self.file_cjk, FILE_NAME_BOOST * 0.6),
        ]
    }

    /// The prefix field of a word field, if it has one (title, artist and pinyin do).
    pub fn prefix_field(&self, field: Field) -> Option<Field> {
        [
            (self.title, self.title_prefix),
            (self.artist, self.artist_prefix),
            (self.pinyin, self.pinyin_prefix),
        ]
        .into_iter()
        .find_map(|(of, prefix)| (of == field).then_some(prefix))
    }

    /// Builds the tantivy document for `doc`.
    pub fn to_document(&self, doc: &IndexDoc<'_>) -> TantivyDocument {
        let mut d = TantivyDocument::default();
        d.add_u64(self.key, doc.key);
        d.add_u64(self.song_order, song_order(doc.artist, doc.title));
        d.add_i64(self.media_kind, i64::from(doc.media_kind));
        d.add_u64(self.size, doc.size);
        d.add_u64(self.duration_ms, u64::from(doc.duration_ms));
        d.add_u64(self.bitrate_kbps, u64::from(doc.bitrate_kbps));
        for (field, word) in self.content_id.into_iter().zip(content_id_words(&doc.content_id)) {
            d.add_u64(field, word);
        }
        d.add_text(self.title, doc.title);
        d.add_text(self.artist, doc.artist);
        d.add_text(self.album, doc.album);
        d.add_text(self.file_name, doc.file_name);
        d.add_text(self.title_cjk, doc.title);
        d.add_text(self.artist_cjk, doc.artist);
        d.add_text(self.album_cjk, doc.album);
        d.add_text(self.file_cjk, doc.file_name);
        d.add_text(self.title_prefix, doc.title);
        d.add_text(self.artist_prefix, doc.artist);
        let mut pinyin = Vec::new();
        romanize::terms(doc.title, &mut pinyin);
        romanize::terms(doc.artist, &mut pinyin);
        for term in &pinyin {
            d.add_text(self.pinyin, term);
            d.add_text(self.pinyin_prefix, term);
        }
        d
    }
}

/// Where a document goes in the index's order: its artist's hash in the high 32 bits, its
/// title's in the low 32, both as [`song_text`](super::song_text) gives them (folded as search
/// folds, lowercased, spaces ignored: what makes two copies one song on a results page too).
/// The index is sorted by this (see `SearchIndex::open_or_create`), so the copies of one song
/// are adjacent, and an artist's songs are one run.
///
/// Why: a song is typically shared as many files (about 26 per song on the 1M-file bench),
/// added in whatever order peers publish them. Scattered, each query term's matches are spread
/// over the whole index, and tantivy's union of terms walks a window of 4,096 doc ids, and
/// decodes a posting block, for nearly every match. Adjacent, one window and one block hold
/// them all. On the bench's queries at 1M files that cut a search's time by about a third.
///
/// FNV-1a, not std's hasher: the values are stored, so the function must not change between
/// builds. A collision only puts two songs next to each other.
pub fn song_order(artist: &str, title: &str) -> u64 {
    let hash = |text: &str| {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in super::song_text(text).bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        h
    };
    (hash(artist) & 0xffff_ffff_0000_0000) | (hash(title) >> 32)
}

/// Builds the schema and its field handles.
pub fn build() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let words = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer(analyzer::WORDS)
            .set_index_option(IndexRecordOption::WithFreqs),
    );
    let cjk = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer(analyzer::CJK)
            .set_index_option(IndexRecordOption::WithFreqsAndPositions),
    );
    let pinyin = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default().set_tokenizer("raw").set_index_option(IndexRecordOption::WithFreqs),
    );
    // Prefix fields only answer "does it contain this prefix": no frequencies, no norms.
    let prefixes = |tokenizer| {
        TextOptions::default().set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer(tokenizer)
                .set_index_option(IndexRecordOption::Basic)
                .set_fieldnorms(false),
        )
    };
    let fields = Fields {
        key: b.add_u64_field(KEY, INDEXED | FAST),
        song_order: b.add_u64_field(SONG_ORDER, FAST),
        media_kind: b.add_i64_field(MEDIA_KIND, FAST),
        size: b.add_u64_field(SIZE, FAST),
        duration_ms: b.add_u64_field(DURATION_MS, FAST),
        bitrate_kbps: b.add_u64_field(BITRATE_KBPS, FAST),
        content_id: CONTENT_ID.map(|name| b.add_u64_field(name, FAST)),
        title: b.add_text_field("title", words.clone()),
        artist: b.add_text_field("artist", words.clone()),
        album: b.add_text_field("album", words.clone()),
        file_name: b.add_text_field("file_name", words),
        title_cjk: b.add_text_field("title_cjk", cjk.clone()),
        artist_cjk: b.add_text_field("artist_cjk", cjk.clone()),
        album_cjk: b.add_text_field("album_cjk", cjk.clone()),
        file_cjk: b.add_text_field("file_cjk", cjk),
        pinyin: b.add_text_field("pinyin", pinyin),
        title_prefix: b.add_text_field("title_prefix", prefixes(analyzer::WORD_PREFIXES)),
        artist_prefix: b.add_text_field("artist_prefix", prefixes(analyzer::WORD_PREFIXES)),
        pinyin_prefix: b.add_text_field("pinyin_prefix", prefixes(analyzer::RAW_PREFIXES)),
    };
    (b.build(), fields)
}
