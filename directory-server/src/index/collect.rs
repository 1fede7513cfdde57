//! Collecting search hits: exact fast-field filters, the caller's per-key weight (which may
//! exclude a document), and the top-k cut, in that order.
//!
//! Owns: the ranking rule `score = bm25 * weight(key)`, ties broken by ascending key.
//!
//! Must never: do I/O, or know anything about peers or presence (it only calls the caller's
//! weight function with a document key).
//!
//! tantivy's `TopDocs::tweak_score` needs a `'static` closure, and the caller's weight function
//! borrows request state, so this walks the query's `Weight` over each segment itself (what
//! tantivy's collectors do internally).

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex};

use tantivy::columnar::Column;
use tantivy::index::SegmentId;
use tantivy::query::{EnableScoring, Query};
use tantivy::{Searcher, SegmentReader};

use quaver_shared::ContentId;

use super::schema::{BITRATE_KBPS, CONTENT_ID, DURATION_MS, KEY, MEDIA_KIND, SIZE, content_id_of};
use super::{IndexError, IndexFilters};

/// One search hit: the file's catalog key and content id, and its score.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hit {
    pub key: u64,
    pub content_id: ContentId,
    pub score: f32,
}

/// The best `n` admitted hits (best first) and how many documents were admitted in total.
pub struct Collected {
    pub hits: Vec<Hit>,
    pub admitted: usize,
}

/// Runs `query`, keeping documents that pass `filters` and get `Some` weight.
///
/// `max_weight` bounds every weight `weight_of` returns (`f32::INFINITY` if unknown). Once `n`
/// hits are held, a document whose text score times `max_weight` cannot beat the worst of them
/// cannot make the page, so the scorer is told to skip such documents: for a query that is a
/// plain union or intersection of terms, tantivy then skips whole blocks of postings whose best
/// score is too low (block-max WAND) instead of scoring every match. Skipped documents are not
/// counted in `admitted`; while fewer than `n` are held nothing is skipped, so `admitted` is 0
/// exactly when nothing was admitted.
pub fn top(
    (searcher, columns): (&Searcher, &ColumnCache),
    query: &dyn Query,
    filters: &IndexFilters,
    n: usize,
    weight_of: &(dyn Fn(u64) -> Option<f32> + Sync),
    max_weight: f32,
) -> Result<Collected, IndexError> {
    let weight = query.weight(EnableScoring::enabled_from_searcher(searcher))?;
    let mut heap: BinaryHeap<Entry> = BinaryHeap::new();
    let mut admitted = 0usize;
    // Decided once per search, not per matching document.
    let filters = (!filters.is_empty()).then_some(filters);
    let mut threshold = NOTHING_SKIPPED;
    // Each searched segment's columns, by segment ord: the winners' content ids are read at
    // the end, so a document that only passes through the heap never has its id read.
    let mut opened = Vec::with_capacity(searcher.segment_readers().len());
    for (segment_ord, segment) in (0u32..).zip(searcher.segment_readers()) {
        let cols = columns.get(searcher, segment)?;
        opened.push(cols.clone());
        let alive = segment.alive_bitset();
        weight.for_each_pruning(threshold, segment, &mut |doc, score| {
            if alive.is_some_and(|a| a.is_deleted(doc)) {
                return threshold;
            }
            let Some(key) = cols.admit(doc, filters) else {
                return threshold;
            };
            let Some(w) = weight_of(key) else {
                return threshold;
            };
            admitted += 1;
            if n == 0 {
                return threshold;
            }
            let w = if w.is_nan() { 0.0 } else { w };
            let entry = Entry { score: score * w, key, segment_ord, doc };
            if heap.len() < n {
                heap.push(entry);
            } else if heap.peek().is_some_and(|worst| entry < *worst) {
                heap.pop();
                heap.push(entry);
            }
            if heap.len() == n
                && let Some(worst) = heap.peek()
            {
                threshold = skip_below(worst.score, max_weight);
            }
            threshold
        })?;
    }
    let hits = heap
        .into_sorted_vec()
        .into_iter()
        .filter_map(|e| {
            let content_id = opened.get(e.segment_ord as usize)?.content_id(e.doc)?;
            Some(Hit { key: e.key, content_id, score: e.score })
        })
        .collect();
    Ok(Collected { hits, admitted })
}

/// The threshold that lets every document through (scores are never negative).
const NOTHING_SKIPPED: f32 = f32::MIN;

/// The text score at or below which a document cannot beat a held hit scoring `worst`, when
/// weights are at most `max_weight`. A hair lower than `worst / max_weight`, so that rounding
/// can never skip a document that would tie (ties are broken by key, so they may still enter).
fn skip_below(worst: f32, max_weight: f32) -> f32 {
    if !(max_weight.is_finite() && max_weight > 0.0 && worst > 0.0) {
        return NOTHING_SKIPPED;
    }
    worst / max_weight * (1.0 - 1e-4)
}

/// The fast-field columns of the segments searched lately, opened once per segment instead of
/// once per search. Opening a column is not free: tantivy stores the key column with its
/// blockwise-linear codec, whose opening reads the parameters of every block, and at 1M
/// documents that was 6.6 % of a search's time. A segment's columns never change (deletions
/// live in a separate bitset), so they can be kept for as long as the segment is searched.
#[derive(Default)]
pub struct ColumnCache(Mutex<HashMap<SegmentId, Arc<Columns>>>);

impl ColumnCache {
    fn get(&self, searcher: &Searcher, segment: &SegmentReader) -> Result<Arc<Columns>, IndexError> {
        let id = segment.segment_id();
        if let Some(cols) = self.lock().get(&id) {
            return Ok(cols.clone());
        }
        // Opened outside the lock; two searches may both open a new segment's columns once.
        let cols = Arc::new(Columns::open(segment)?);
        let mut cache = self.lock();
        // Forget segments merged away (a search on an older searcher may reopen one: harmless).
        let live: Vec<SegmentId> = searcher.segment_readers().iter().map(SegmentReader::segment_id).collect();
        cache.retain(|id, _| live.contains(id));
        cache.insert(id, cols.clone());
        Ok(cols)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SegmentId, Arc<Columns>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Segments whose columns are held.
    #[cfg(test)]
    pub(super) fn segments(&self) -> usize {
        self.lock().len()
    }
}

/// The fast-field columns of one segment: the key, the content id, and the filter columns.
struct Columns {
    key: Column<u64>,
    content_id: [Column<u64>; 4],
    filters: FilterColumns,
}

struct FilterColumns {
    media_kind: Column<i64>,
    size: Column<u64>,
    duration_ms: Column<u64>,
    bitrate_kbps: Column<u64>,
}

impl Columns {
    fn open(segment: &SegmentReader) -> Result<Columns, IndexError> {
        let ff = segment.fast_fields();
        let filters = FilterColumns {
            media_kind: ff.i64(MEDIA_KIND)?,
            size: ff.u64(SIZE)?,
            duration_ms: ff.u64(DURATION_MS)?,
            bitrate_kbps: ff.u64(BITRATE_KBPS)?,
        };
        let [a, b, c, d] = CONTENT_ID;
        let content_id = [ff.u64(a)?, ff.u64(b)?, ff.u64(c)?, ff.u64(d)?];
        Ok(Columns { key: ff.u64(KEY)?, content_id, filters })
    }

    /// The document's content id (every document has one).
    fn content_id(&self, doc: u32) -> Option<ContentId> {
        let [a, b, c, d] = &self.content_id;
        Some(content_id_of([a.first(doc)?, b.first(doc)?, c.first(doc)?, d.first(doc)?]))
    }

    /// The document's key if it passes every filter (with none, only the key is read).
    fn admit(&self, doc: u32, filters: Option<&IndexFilters>) -> Option<u64> {
        let key = self.key.first(doc)?;
        let (Some(f), cols) = (filters, &self.filters) else { return Some(key) };
        if f.media_kind != 0 && cols.media_kind.first(doc) != Some(i64::from(f.media_kind)) {
            return None;
        }
        let size = cols.size.first(doc).unwrap_or(0);
        if (f.min_size != 0 && size < f.min_size) || (f.max_size != 0 && size > f.max_size) {
            return None;
        }
        let duration = cols.duration_ms.first(doc).unwrap_or(0);
        if (f.min_duration_ms != 0 && duration < u64::from(f.min_duration_ms))
            || (f.max_duration_ms != 0 && duration > u64::from(f.max_duration_ms))
        {
            return None;
        }
        let bitrate = cols.bitrate_kbps.first(doc).unwrap_or(0);
        if f.min_bitrate_kbps != 0 && bitrate < u64::from(f.min_bitrate_kbps) {
            return None;
        }
        Some(key)
    }
}

/// A hit in the top-k heap. Ordered so that a *better* hit is *smaller*: the max-heap's top is
/// the worst kept hit, and `into_sorted_vec` yields best first.
#[derive(Clone, Copy, Debug)]
struct Entry {
    score: f32,
    key: u64,
    /// Where the document is, to read its content id if it wins; not part of the order.
    segment_ord: u32,
    doc: u32,
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        other.score.total_cmp(&self.score).then(self.key.cmp(&other.key))
    }
}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Entry {}
