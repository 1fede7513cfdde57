//! The directory's full-text search index over catalog entries (tantivy).
//!
//! Owns: the on-disk (or in-memory) tantivy index, its schema and analyzers (jieba words, CJK
//! characters, full-width folding), turning user query strings into queries, exact filters on
//! media kind / size / duration / bitrate, pinyin for Chinese titles and artists, and ranking `text relevance * weight(key)`.
//!
//! Must never: do network I/O, or know about peers, presence or sources. It only knows
//! documents keyed by a `u64` (the catalog's numeric id); whatever depends on who is online
//! comes in through the caller's `weight` function. The index is derived data: the catalog is
//! the source of truth, and a missing or corrupt index is rebuilt by re-feeding the catalog.
//!
//! Blocking: `upsert`, `commit`, `search` and `open_or_create` do disk I/O and CPU work; async
//! callers run them in `spawn_blocking`. `commit` is the expensive one (it flushes segments and
//! fsyncs), so batch upserts and commit on a timer or every N documents, not per document.

mod analyzer;
mod collect;
pub mod compaction;
mod query;
mod query_parse;
mod romanize;
mod schema;
#[cfg(test)]
mod tests;
mod typo;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use tantivy::indexer::LogMergePolicy;
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};

use quaver_shared::ContentId;
use schema::Fields;

pub use analyzer::is_cjk;
pub use collect::Hit;
pub use romanize::spell as pinyin_spelling;

/// `text` folded the way the index folds it before matching (full width to ASCII, traditional
/// to simplified Chinese): two texts that fold alike are the same to search.
pub fn fold(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    analyzer::fold_into(text, &mut out);
    out
}

/// `text` as it identifies a song: folded as above, lowercased, without whitespace. Two copies
/// whose titles and artists are alike this way are one song, both to the page grouping
/// (`grouping`) and to the order the index stores documents in (`schema::song_order`).
pub fn song_text(text: &str) -> String {
    fold(text).to_lowercase().chars().filter(|c| !c.is_whitespace()).collect()
}

/// The pinyin terms the index keeps for `text` (full pinyin and initials of its Chinese runs
/// and words), so `qingtian` and `qt` find 晴天.
pub fn pinyin_terms(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    romanize::terms(text, &mut out);
    out
}

/// Segments of one size class that are merged together (see `merge_policy`).
const MERGE_AT_SEGMENTS: usize = 3;

/// Memory the index writer may use for buffered documents before it flushes a segment.
const WRITER_MEMORY_BYTES: usize = 50_000_000;

/// One catalog entry as the index sees it. `key` is the catalog's numeric id of the file, unique.
#[derive(Clone, Copy, Debug)]
pub struct IndexDoc<'a> {
    pub key: u64,
    pub content_id: ContentId,
    pub title: &'a str,
    pub artist: &'a str,
    pub album: &'a str,
    pub file_name: &'a str,
    /// proto enum value, 0 = unspecified
    pub media_kind: i32,
    pub size: u64,
    pub duration_ms: u32,
    pub bitrate_kbps: u32,
}

impl IndexDoc<'_> {
    /// A document with no text and no metadata, to fill in with struct update syntax.
    pub fn blank(key: u64, content_id: ContentId) -> Self {
        IndexDoc {
            key,
            content_id,
            title: "",
            artist: "",
            album: "",
            file_name: "",
            media_kind: 0,
            size: 0,
            duration_ms: 0,
            bitrate_kbps: 0,
        }
    }
}

/// Constraints evaluated inside the index (fast fields). 0 = no bound.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IndexFilters {
    /// 0 = any
    pub media_kind: i32,
    pub min_size: u64,
    pub max_size: u64,
    pub min_duration_ms: u32,
    pub max_duration_ms: u32,
    pub min_bitrate_kbps: u32,
}

impl IndexFilters {
    /// True when no filter is set.
    pub fn is_empty(&self) -> bool {
        *self == IndexFilters::default()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("search index: {0}")]
    Tantivy(#[from] tantivy::TantivyError),
    #[error("search index directory {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// The query has nothing searchable (empty, only punctuation, ...). Safe to show to users.
    #[error("bad query: {0}")]
    BadQuery(String),
}

/// What `open_or_create` found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenOutcome {
    /// An existing index was opened; it holds whatever was committed before.
    Opened,
    /// The directory was missing or empty; a new empty index was created.
    Created,
    /// The directory could not be opened as an index of this schema; it was wiped and a new
    /// empty index created. The caller re-feeds every catalog entry.
    RebuiltCorrupt,
}

/// The search index. `Send + Sync`; share it via `Arc`.
pub struct SearchIndex {
    fields: Fields,
    reader: IndexReader,
    writer: Mutex<IndexWriter>,
    dir: Option<PathBuf>,
    columns: collect::ColumnCache,
}

impl SearchIndex {
    /// Opens the index in `dir`, creating it if `dir` is missing or empty, and wiping and
    /// recreating it if it is unreadable or has another schema.
    pub fn open_or_create(dir: &Path) -> Result<(SearchIndex, OpenOutcome), IndexError> {
        let io = |source| IndexError::Io { path: dir.to_path_buf(), source };
        let empty = match std::fs::read_dir(dir) {
            Ok(mut entries) => entries.next().is_none(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(e) => return Err(io(e)),
        };
        let (schema, fields) = schema::build();
        let (index, reader, outcome) = if empty {
            std::fs::create_dir_all(dir).map_err(io)?;
            let index = builder(schema).create_in_dir(dir)?;
            let reader = prepare(&index)?;
            (index, reader, OpenOutcome::Created)
        } else {
            match try_open(dir, &schema) {
                Ok((index, reader)) => (index, reader, OpenOutcome::Opened),
                Err(reason) => {
                    tracing::warn!(
                        dir = %dir.display(), %reason,
                        "search index unreadable; wiping it, it will be rebuilt from the catalog"
                    );
                    std::fs::remove_dir_all(dir).map_err(io)?;
                    std::fs::create_dir_all(dir).map_err(io)?;
                    let index = builder(schema).create_in_dir(dir)?;
                    let reader = prepare(&index)?;
                    (index, reader, OpenOutcome::RebuiltCorrupt)
                }
            }
        };
        let index = SearchIndex::with_index(&index, fields, reader, Some(dir.to_path_buf()))?;
        Ok((index, outcome))
    }

    /// A new, empty index held in memory (tests, benches).
    pub fn in_memory() -> Result<SearchIndex, IndexError> {
        let (schema, fields) = schema::build();
        let index = builder(schema).create_in_ram()?;
        let reader = prepare(&index)?;
        SearchIndex::with_index(&index, fields, reader, None)
    }

    fn with_index(
        index: &Index,
        fields: Fields,
        reader: IndexReader,
        dir: Option<PathBuf>,
    ) -> Result<SearchIndex, IndexError> {
        let writer = index.writer::<TantivyDocument>(WRITER_MEMORY_BYTES)?;
        writer.set_merge_policy(Box::new(merge_policy()));
        Ok(SearchIndex { fields, reader, writer: Mutex::new(writer), dir, columns: Default::default() })
    }

    /// Adds or replaces (by key) documents; not visible until `commit`.
    pub fn upsert(&self, docs: &[IndexDoc<'_>]) -> Result<(), IndexError> {
        let writer = self.writer();
        for doc in docs {
            writer.delete_term(Term::from_field_u64(self.fields.key, doc.key));
            writer.add_document(self.fields.to_document(doc))?;
        }
        Ok(())
    }

    /// Removes the documents with these keys (absent keys are ignored); not visible until
    /// `commit`. (Not needed for offline sources: exclude those with `weight`.)
    pub fn delete(&self, keys: &[u64]) {
        let writer = self.writer();
        for key in keys {
            writer.delete_term(Term::from_field_u64(self.fields.key, *key));
        }
    }

    /// Makes all upserts and deletes durable and visible to searches that start after it returns.
    /// Blocking and comparatively expensive (segment flush + fsync): batch upserts, and run it
    /// in `spawn_blocking`.
    pub fn commit(&self) -> Result<(), IndexError> {
        let mut writer = self.writer();
        writer.commit()?;
        self.reader.reload()?;
        Ok(())
    }

    /// Top `limit` documents matching `query` after skipping `offset`, best first, as
    /// [`Hit`]s (key, content id, score). `weight(key)` is called for each matching document that passes
    /// `filters`: `None` excludes it, `Some(w)` multiplies its text relevance. Exclusion
    /// happens before the top-k cut, so pages only ever contain admitted documents.
    ///
    /// All query words must match; if no document matches them all, documents matching any of
    /// them are returned instead (more matching words rank higher). Any string is accepted as
    /// plain text; `BadQuery` means nothing searchable was left (empty, punctuation only).
    pub fn search(
        &self,
        query: &str,
        filters: &IndexFilters,
        offset: usize,
        limit: usize,
        weight: &(dyn Fn(u64) -> Option<f32> + Sync),
    ) -> Result<Vec<Hit>, IndexError> {
        self.search_bounded(query, filters, offset, limit, weight, f32::INFINITY)
    }

    /// [`search`](Self::search) for a caller that knows `max_weight`, a bound on every weight
    /// `weight` returns: documents that cannot make the page are then skipped unscored where
    /// the query allows it. The result is the same as `search`'s.
    pub fn search_bounded(
        &self,
        query: &str,
        filters: &IndexFilters,
        offset: usize,
        limit: usize,
        weight: &(dyn Fn(u64) -> Option<f32> + Sync),
        max_weight: f32,
    ) -> Result<Vec<Hit>, IndexError> {
        let searcher = self.reader.searcher();
        let plan = query::plan(&self.fields, &searcher, query)?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let n = offset.saturating_add(limit);
        let on = (&searcher, &self.columns);
        let mut found = collect::top(on, plan.strict.as_ref(), filters, n, weight, max_weight)?;
        if found.admitted == 0
            && let Some(loose) = &plan.loose
        {
            found = collect::top(on, loose.as_ref(), filters, n, weight, max_weight)?;
        }
        Ok(found.hits.into_iter().skip(offset).take(limit).collect())
    }

    /// Merges every committed segment into one, if there are several; false if there was
    /// nothing to merge or the merge did not complete (try again later). Blocking for as long
    /// as the merge takes (about 10 s of one core at 1M documents); commits go on meanwhile,
    /// since the writer's lock is held only to start the merge.
    ///
    /// Why: every search pays a set-up per segment (term lookups per query word and field,
    /// scorer construction). On the 1M-document bench, one segment instead of the seven the
    /// merge policy leaves cut the mean search time by about a third.
    pub fn merge_all(&self) -> Result<bool, IndexError> {
        let merging = {
            let mut writer = self.writer();
            // The committed segments as of now (a reader's view may predate a background merge).
            let ids = writer.index().searchable_segment_ids()?;
            if ids.len() < 2 {
                return Ok(false);
            }
            writer.merge(&ids)
        }; // The lock is released before the wait: commits go on during the merge.
        if let Err(e) = merging.wait() {
            // Typically a background merge took some of the segments first; tantivy cancels
            // ours then. Nothing is lost either way: the old segments stay until one succeeds.
            tracing::info!(error = %e, "index compaction did not complete; it is tried again later");
            return Ok(false);
        }
        self.reader.reload()?;
        Ok(true)
    }

    /// Number of committed, live documents.
    pub fn num_docs(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    /// Number of segments a search walks (each one costs its own term lookups).
    pub fn segment_count(&self) -> usize {
        self.reader.searcher().segment_readers().len()
    }

    /// Bytes on disk of the index directory (0 in memory).
    pub fn disk_bytes(&self) -> u64 {
        let Some(dir) = &self.dir else { return 0 };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return 0;
        };
        entries.filter_map(|e| e.ok()?.metadata().ok()).filter(|m| m.is_file()).map(|m| m.len()).sum()
    }

    /// The writer. A panic while it was held (a bug) does not make the index unusable.
    fn writer(&self) -> MutexGuard<'_, IndexWriter> {
        self.writer.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// How every index is created: with `schema` and [`settings`].
fn builder(schema: tantivy::schema::Schema) -> tantivy::IndexBuilder {
    Index::builder().schema(schema).settings(settings())
}

/// The settings every index is created with: documents sorted by [`schema::song_order`], so
/// that the copies of a song are adjacent (segments are sorted when written, and merges keep
/// the order).
fn settings() -> tantivy::IndexSettings {
    let order = tantivy::IndexSortByField { field: schema::SONG_ORDER.into(), order: tantivy::Order::Asc };
    tantivy::IndexSettings { sort_by_field: Some(order), ..Default::default() }
}

/// Registers the analyzers and builds the reader. `commit` reloads it at once (a search after
/// a commit sees it); the reader also follows the index's meta file by itself, so segments that
/// background merges produce are searched as soon as they are done, not at the next commit.
fn prepare(index: &Index) -> Result<IndexReader, IndexError> {
    analyzer::register(index);
    Ok(index.reader_builder().reload_policy(ReloadPolicy::OnCommitWithDelay).try_into()?)
}

/// How segments are merged. Every search pays per segment: a term-dictionary lookup per query
/// term and field, a posting-list and scorer set-up, a fast-field column open. tantivy's default
/// merges 8 segments of a size class at once, so an index grown by commits of a few thousand
/// files settles at around 20 segments (1M files); merging as soon as 3 of a size class exist
/// keeps it to a handful, at the price of rewriting each document a few more times.
fn merge_policy() -> LogMergePolicy {
    let mut policy = LogMergePolicy::default();
    policy.set_min_num_segments(MERGE_AT_SEGMENTS);
    policy
}

/// Opens an existing index, checking that it has exactly our schema.
fn try_open(dir: &Path, schema: &tantivy::schema::Schema) -> Result<(Index, IndexReader), String> {
    let index = Index::open_in_dir(dir).map_err(|e| e.to_string())?;
    if index.schema() != *schema {
        return Err("schema differs from this version's".to_string());
    }
    if index.settings().sort_by_field != settings().sort_by_field {
        return Err("documents are not stored in this version's order".to_string());
    }
    let reader = prepare(&index).map_err(|e| e.to_string())?;
    Ok((index, reader))
}
