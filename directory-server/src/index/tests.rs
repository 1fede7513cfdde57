//! Behaviour tests of the search index (matching, ranking, weights, paging, filters,
//! persistence, robustness against arbitrary query strings).

use super::*;
use proptest::prelude::*;

const ALL: &IndexFilters = &IndexFilters {
    media_kind: 0,
    min_size: 0,
    max_size: 0,
    min_duration_ms: 0,
    max_duration_ms: 0,
    min_bitrate_kbps: 0,
};

fn all_online(_: u64) -> Option<f32> {
    Some(1.0)
}

fn song(key: u64, title: &'static str, artist: &'static str) -> IndexDoc<'static> {
    IndexDoc {
        title,
        artist,
        media_kind: 1,
        size: 4_000_000,
        duration_ms: 240_000,
        bitrate_kbps: 320,
        ..blank(key)
    }
}

/// A blank document whose content id follows from its key.
fn blank(key: u64) -> IndexDoc<'static> {
    IndexDoc::blank(key, ContentId::of_bytes(&key.to_be_bytes()))
}

/// A small catalog; keys are stable and referenced by the tests.
fn fixture() -> SearchIndex {
    let idx = SearchIndex::in_memory().unwrap();
    let mut docs = vec![
        song(1, "晴天", "周杰伦"),
        song(2, "七里香", "周杰伦"),
        song(3, "稻香", "周杰伦"),
        song(4, "Bohemian Rhapsody", "Queen"),
        song(5, "天黑黑", "孙燕姿"),
        song(6, "Another One Bites the Dust", "Queen"),
        song(7, "晴天娃娃", "王心凌"),
        song(8, "告白气球", "周杰伦"),
        song(9, "Hello", "Adele"),
    ];
    docs.push(IndexDoc { file_name: "晴天 - 周杰伦.mp3", ..song(10, "", "") });
    idx.upsert(&docs).unwrap();
    idx.commit().unwrap();
    idx
}

fn keys(idx: &SearchIndex, q: &str) -> Vec<u64> {
    idx.search(q, ALL, 0, 20, &all_online).unwrap().into_iter().map(|h| h.key).collect()
}

#[test]
fn chinese_title_finds_tagged_and_file_name_only_docs() {
    let idx = fixture();
    let got = keys(&idx, "晴天");
    assert!(got.contains(&1) && got.contains(&10), "{got:?}");
    assert_eq!(got[0], 1, "exact title first: {got:?}");
}

#[test]
fn artist_finds_all_his_songs() {
    let got = keys(&fixture(), "周杰伦");
    for k in [1, 2, 3, 8, 10] {
        assert!(got.contains(&k), "missing {k}: {got:?}");
    }
    assert!(!got.contains(&5) && !got.contains(&4), "{got:?}");
}

#[test]
fn latin_is_case_insensitive_prefix_and_width_folded() {
    let idx = fixture();
    for q in ["BOHEMIAN", "bohemian", "bohem", "ＢＯＨＥＭＩＡＮ", "ｂｏｈｅｍ", "Bohemain"] {
        assert_eq!(keys(&idx, q).first(), Some(&4), "query {q}");
    }
    // Two-letter last word: no prefix matching.
    assert!(keys(&idx, "bo").is_empty());
}

#[test]
fn typos_match_only_words_the_index_does_not_know() {
    let idx = fixture();
    idx.upsert(&[song(20, "Hallo", "Someone")]).unwrap();
    idx.commit().unwrap();
    // "hello" is a word of 9: it is not taken for a typo of "hallo".
    assert_eq!(keys(&idx, "hello"), [9]);
    // "hellp" is no word: one edit finds "hello" (two would be needed for "hallo").
    assert_eq!(keys(&idx, "hellp"), [9]);
    // Eight letters and more allow two edits: "rhapsodie" is two from "rhapsody".
    assert_eq!(keys(&idx, "rhapsodie"), [4]);
    assert!(keys(&idx, "rhapsodiee").is_empty(), "three edits");
    // Three letters are too short to guess at.
    assert!(keys(&idx, "hel").iter().all(|k| [9].contains(k)), "prefix only");
}

#[test]
fn single_cjk_character_and_fragments_match() {
    let idx = fixture();
    let got = keys(&idx, "天");
    for k in [1, 5, 7, 10] {
        assert!(got.contains(&k), "天 misses {k}: {got:?}");
    }
    assert!(!got.contains(&2), "{got:?}");
    assert_eq!(keys(&idx, "七里"), [2]);
    assert_eq!(keys(&idx, "里香"), [2]);
    assert_eq!(keys(&idx, "白气"), [8], "fragment across jieba words");
}

#[test]
fn artist_plus_title_ranks_that_song_first() {
    let idx = fixture();
    for q in ["周杰伦 晴天", "晴天 周杰伦", "周杰伦晴天"] {
        let got = keys(&idx, q);
        assert_eq!(got.first(), Some(&1), "query {q}: {got:?}");
        assert!(got.contains(&10), "query {q}: {got:?}");
    }
    assert_eq!(keys(&idx, "queen bohemian").first(), Some(&4));
}

#[test]
fn falls_back_to_any_word_when_no_doc_has_all() {
    let idx = fixture();
    let got = keys(&idx, "bohemian zzzz");
    assert_eq!(got.first(), Some(&4), "{got:?}");
}

#[test]
fn pinyin_full_initials_prefix_and_spaced() {
    let idx = fixture();
    for (q, want) in
        [("qingtian", 1), ("qt", 1), ("qingt", 1), ("qing tian", 1), ("qilixiang", 2), ("qlx", 2)]
    {
        let got = keys(&idx, q);
        assert_eq!(got.first(), Some(&want), "query {q}: {got:?}");
    }
    for q in ["zjl", "zhoujielun", "zhou jie lun", "ZJL"] {
        let got = keys(&idx, q);
        for k in [1, 2, 3, 8] {
            assert!(got.contains(&k), "query {q} misses {k}: {got:?}");
        }
        assert!(!got.contains(&5) && !got.contains(&4), "query {q}: {got:?}");
    }
    assert_eq!(keys(&idx, "zjl qt").first(), Some(&1));
    // Pinyin never outranks a real Latin title match.
    assert_eq!(keys(&idx, "hello").first(), Some(&9));
}

#[test]
fn none_weight_excludes_even_the_best_match() {
    let idx = fixture();
    let got = idx.search("晴天", ALL, 0, 10, &|k| (k != 1).then_some(1.0)).unwrap();
    assert!(!got.iter().any(|h| h.key == 1), "{got:?}");
    assert!(got.iter().any(|h| h.key == 10), "{got:?}");
}

#[test]
fn weight_reorders_equal_relevance_docs() {
    let idx = SearchIndex::in_memory().unwrap();
    idx.upsert(&[song(1, "Same Song", "X"), song(2, "Same Song", "X")]).unwrap();
    idx.commit().unwrap();
    let ks = |w: &(dyn Fn(u64) -> Option<f32> + Sync)| -> Vec<u64> {
        let hits = idx.search("same song", ALL, 0, 10, w).unwrap();
        hits.into_iter().map(|h| h.key).collect()
    };
    assert_eq!(ks(&all_online), [1, 2], "tie broken by key");
    assert_eq!(ks(&|k| Some(if k == 2 { 3.0 } else { 1.0 })), [2, 1]);
}

#[test]
fn paging_gives_disjoint_consecutive_pages_of_admitted_docs() {
    let idx = SearchIndex::in_memory().unwrap();
    let titles: Vec<String> = (0..50).map(|i| format!("love song {i}")).collect();
    let docs: Vec<IndexDoc<'_>> =
        titles.iter().enumerate().map(|(i, t)| IndexDoc { title: t, ..blank(i as u64) }).collect();
    idx.upsert(&docs).unwrap();
    idx.commit().unwrap();
    let w = |k: u64| (!k.is_multiple_of(5)).then_some(1.0 + (k % 3) as f32);
    let all: Vec<u64> = idx.search("love", ALL, 0, 100, &w).unwrap().iter().map(|h| h.key).collect();
    assert_eq!(all.len(), 40);
    let mut paged = Vec::new();
    for page in 0..5 {
        let hits = idx.search("love", ALL, page * 9, 9, &w).unwrap();
        assert!(hits.len() == 9 || page == 4, "page {page}: {}", hits.len());
        paged.extend(hits.into_iter().map(|h| h.key));
    }
    assert_eq!(paged, all);
    assert!(idx.search("love", ALL, 40, 10, &w).unwrap().is_empty());
    assert!(idx.search("love", ALL, usize::MAX, usize::MAX, &w).unwrap().is_empty());
}

#[test]
fn filters_exclude_the_right_docs() {
    let idx = SearchIndex::in_memory().unwrap();
    let base = IndexDoc { title: "track", ..blank(0) };
    idx.upsert(&[
        IndexDoc { key: 1, media_kind: 1, size: 1_000, duration_ms: 60_000, bitrate_kbps: 128, ..base },
        IndexDoc { key: 2, media_kind: 1, size: 5_000, duration_ms: 200_000, bitrate_kbps: 320, ..base },
        IndexDoc { key: 3, media_kind: 2, size: 9_000, duration_ms: 400_000, bitrate_kbps: 0, ..base },
    ])
    .unwrap();
    idx.commit().unwrap();
    let run = |f: IndexFilters| -> Vec<u64> {
        let hits = idx.search("track", &f, 0, 10, &all_online).unwrap();
        let mut k: Vec<u64> = hits.into_iter().map(|h| h.key).collect();
        k.sort();
        k
    };
    let f = IndexFilters::default;
    assert_eq!(run(f()), [1, 2, 3]);
    assert_eq!(run(IndexFilters { media_kind: 1, ..f() }), [1, 2]);
    assert_eq!(run(IndexFilters { media_kind: 7, ..f() }), Vec::<u64>::new());
    assert_eq!(run(IndexFilters { min_size: 5_000, ..f() }), [2, 3]);
    assert_eq!(run(IndexFilters { max_size: 5_000, ..f() }), [1, 2]);
    assert_eq!(run(IndexFilters { min_size: 2_000, max_size: 8_000, ..f() }), [2]);
    assert_eq!(run(IndexFilters { min_duration_ms: 200_000, ..f() }), [2, 3]);
    assert_eq!(run(IndexFilters { max_duration_ms: 199_999, ..f() }), [1]);
    assert_eq!(run(IndexFilters { min_bitrate_kbps: 192, ..f() }), [2]);
}

#[test]
fn upsert_replaces_by_key_and_commit_makes_visible() {
    let idx = SearchIndex::in_memory().unwrap();
    idx.upsert(&[song(1, "Old Title", "A")]).unwrap();
    assert!(keys(&idx, "old").is_empty(), "visible before commit");
    idx.commit().unwrap();
    assert_eq!(keys(&idx, "old"), [1]);
    idx.upsert(&[song(1, "New Title", "A"), song(1, "Newer Title", "A")]).unwrap();
    idx.commit().unwrap();
    assert!(keys(&idx, "old").is_empty());
    assert_eq!(keys(&idx, "title"), [1]);
    assert_eq!(keys(&idx, "newer"), [1]);
    assert_eq!(idx.num_docs(), 1);
}

#[test]
fn delete_removes_by_key() {
    let idx = fixture();
    idx.delete(&[1, 999]);
    assert!(keys(&idx, "晴天").contains(&1), "visible before commit");
    idx.commit().unwrap();
    let got = keys(&idx, "晴天");
    assert!(!got.contains(&1) && got.contains(&10), "{got:?}");
    assert_eq!(idx.num_docs(), 9);
}

#[test]
fn reopen_keeps_docs_and_corrupt_dir_is_rebuilt_empty() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("index");
    {
        let (idx, outcome) = SearchIndex::open_or_create(&dir).unwrap();
        assert_eq!(outcome, OpenOutcome::Created);
        idx.upsert(&[song(1, "晴天", "周杰伦")]).unwrap();
        idx.commit().unwrap();
        assert!(idx.disk_bytes() > 0);
    }
    {
        let (idx, outcome) = SearchIndex::open_or_create(&dir).unwrap();
        assert_eq!(outcome, OpenOutcome::Opened);
        assert_eq!(idx.num_docs(), 1);
        assert_eq!(keys(&idx, "晴天"), [1], "analyzers registered after reopen");
    }
    std::fs::write(dir.join("meta.json"), b"{ not json at all").unwrap();
    let (idx, outcome) = SearchIndex::open_or_create(&dir).unwrap();
    assert_eq!(outcome, OpenOutcome::RebuiltCorrupt);
    assert_eq!(idx.num_docs(), 0);
    idx.upsert(&[song(2, "稻香", "周杰伦")]).unwrap();
    idx.commit().unwrap();
    assert_eq!(keys(&idx, "稻香"), [2]);
}

#[test]
fn empty_existing_dir_is_created() {
    let tmp = tempfile::tempdir().unwrap();
    let (_idx, outcome) = SearchIndex::open_or_create(tmp.path()).unwrap();
    assert_eq!(outcome, OpenOutcome::Created);
}

#[test]
fn nothing_searchable_is_bad_query() {
    let idx = fixture();
    for q in ["", "   ", "\"::!!--((", "\u{3000}！？"] {
        match idx.search(q, ALL, 0, 10, &all_online) {
            Err(IndexError::BadQuery(msg)) => assert!(msg.contains("nothing to search")),
            other => panic!("{q:?}: {other:?}"),
        }
    }
    // Query syntax characters are plain text.
    assert_eq!(keys(&idx, "title:\"bohemian").first(), Some(&4));
}

#[test]
fn huge_and_hostile_queries_are_plain_text() {
    let idx = fixture();
    let huge = "bohemian ".to_string() + &"\"(:[]~^*?\\".repeat(10_000);
    assert!(huge.len() > 100_000);
    assert_eq!(keys(&idx, &huge).first(), Some(&4));
    let huge_cjk = "晴天".repeat(50_000);
    assert!(idx.search(&huge_cjk, ALL, 0, 10, &all_online).is_ok());
    for q in ["AND", "OR NOT", "-晴天", "+bohemian", "title:", "*", "a~2", "\"unbalanced", "[1 TO 2}"] {
        match idx.search(q, ALL, 0, 10, &all_online) {
            Ok(_) | Err(IndexError::BadQuery(_)) => {}
            Err(e) => panic!("{q:?}: {e}"),
        }
    }
}

#[test]
fn search_index_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<SearchIndex>();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn arbitrary_queries_never_fail_internally(
        q in prop_oneof![
            any::<String>(),
            "[\"':()\\[\\]{}^~*?!+\\-&|\\\\/ a-z晴天周杰伦ＢＯ]{0,80}",
            (any::<String>(), 0usize..3000).prop_map(|(s, n)| s.repeat(n)),
        ],
        offset in 0usize..50,
        limit in 0usize..50,
    ) {
        let idx = fixture_shared();
        match idx.search(&q, ALL, offset, limit, &all_online) {
            Ok(hits) => prop_assert!(hits.len() <= limit),
            Err(IndexError::BadQuery(_)) => {}
            Err(e) => prop_assert!(false, "internal error for {:?}: {}", q, e),
        }
    }
}

fn fixture_shared() -> &'static SearchIndex {
    static IDX: std::sync::OnceLock<SearchIndex> = std::sync::OnceLock::new();
    IDX.get_or_init(fixture)
}

#[test]
fn traditional_and_simplified_find_each_other() {
    let idx = SearchIndex::in_memory().unwrap();
    idx.upsert(&[song(1, "吻別", "張學友"), song(2, "后来", "刘若英"), song(3, "晴天", "周杰伦")]).unwrap();
    idx.commit().unwrap();
    // Simplified query, traditional tags; traditional query, simplified tags; mixed; fragments.
    for (q, want) in [
        ("张学友", 1),
        ("吻别", 1),
        ("張學友 吻別", 1),
        ("學友", 1),
        ("後來", 2),
        ("劉若英", 2),
        ("週杰倫", 3),
    ] {
        assert_eq!(keys(&idx, q).first(), Some(&want), "query {q}");
    }
    assert!(!keys(&idx, "张学友").contains(&2));
}

#[test]
fn field_queries_match_in_their_field_only() {
    let idx = fixture();
    let mut artist = keys(&idx, "artist:周杰伦");
    artist.sort();
    // Not 10, whose file name alone says 周杰伦.
    assert_eq!(artist, [1, 2, 3, 8]);
    let mut title = keys(&idx, "title:晴天");
    title.sort();
    assert_eq!(title, [1, 7]);
    assert_eq!(keys(&idx, "artist:queen bohemian"), [4]);
    assert!(keys(&idx, "title:queen").is_empty());
    // An unknown field is plain text: `foo:晴天` finds what `foo 晴天` finds (nothing has "foo",
    // so any word may match).
    assert_eq!(keys(&idx, "foo:晴天"), keys(&idx, "foo 晴天"));
}

#[test]
fn small_commits_are_merged_into_a_few_segments() {
    // Seven commits are seven segments of one size class; tantivy's default policy would leave
    // them all (it merges 8 at once), ours merges them in the background as they pile up.
    let idx = SearchIndex::in_memory().unwrap();
    for key in 0..7 {
        idx.upsert(&[song(key, "Yellow Submarine", "The Beatles")]).unwrap();
        idx.commit().unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while idx.segment_count() > 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(idx.segment_count() <= 3, "{} segments left", idx.segment_count());
    assert_eq!(keys(&idx, "yellow submarine").len(), 7, "merging loses no document");
}

#[test]
fn a_long_word_is_found_by_any_prefix_of_it() {
    let idx = SearchIndex::in_memory().unwrap();
    idx.upsert(&[song(1, "Supercalifragilisticexpialidocious", "Julie Andrews")]).unwrap();
    idx.upsert(&[song(2, "Superstition", "Stevie Wonder")]).unwrap();
    idx.commit().unwrap();
    assert_eq!(keys(&idx, "supercal"), [1]);
    // Longer than the indexed prefixes (16 characters): looked up by its first 16.
    assert_eq!(keys(&idx, "supercalifragilistic"), [1]);
    assert_eq!(keys(&idx, "superst"), [2]);
    let both = keys(&idx, "sup");
    assert!(both.contains(&1) && both.contains(&2), "{both:?}");
}

#[test]
fn words_of_forty_letters_and_more_are_searched_not_refused() {
    let idx = SearchIndex::in_memory().unwrap();
    let word = "Pneumonoultramicroscopicsilicovolcanoconiosis"; // 45 letters
    idx.upsert(&[song(1, word, "Chemistry Band")]).unwrap();
    idx.upsert(&[song(2, "Short Title", "Other")]).unwrap();
    idx.commit().unwrap();
    assert_eq!(keys(&idx, &word.to_lowercase()), [1]);
    assert_eq!(keys(&idx, &word[..40]), [1], "exactly 40 letters");
    assert_eq!(keys(&idx, &format!("{word} chemistry")), [1]);
    // A 255-letter word, within the protocol's 256 bytes, found in no title: no hits, no error.
    assert_eq!(keys(&idx, &"q".repeat(255)), Vec::<u64>::new());
}

/// Many documents matching `晴天`: the first 150 with short titles (high text scores), the rest
/// long ones, in enough postings blocks (128 documents each) for block-max WAND to skip some.
fn wand_fixture() -> SearchIndex {
    let idx = SearchIndex::in_memory().unwrap();
    let titles: Vec<String> = (0..3000u64)
        .map(|i| match i {
            0..150 => format!("晴天 {i}"),
            _ => format!("晴天 {}", "很长的标题 with many words ".repeat(1 + (i % 5) as usize)),
        })
        .collect();
    let artists = ["周杰伦", "王心凌", "Love Song", "天天"];
    let docs: Vec<IndexDoc<'_>> = titles
        .iter()
        .enumerate()
        .map(|(i, t)| IndexDoc { title: t, artist: artists[i % 4], ..blank(i as u64) })
        .collect();
    idx.upsert(&docs).unwrap();
    idx.commit().unwrap();
    idx
}

#[test]
fn a_weight_bound_changes_no_page() {
    let idx = wand_fixture();
    // Weights in [1, 3], some documents excluded; deterministic per key.
    let w =
        |k: u64| (!k.is_multiple_of(11)).then(|| 1.0 + (k.wrapping_mul(2_654_435_761) % 1000) as f32 / 500.0);
    for q in ["晴天", "天", "晴天 周杰伦", "周杰伦", "很长的标题", "love", "love song", "qingtian", "天晴"]
    {
        for page in 0..4 {
            let plain = idx.search(q, ALL, page * 10, 10, &w).unwrap();
            let bounded = idx.search_bounded(q, ALL, page * 10, 10, &w, 3.0).unwrap();
            assert_eq!(plain, bounded, "query {q:?}, page {page}");
        }
    }
}

#[test]
fn one_and_two_character_queries_are_plain_unions_of_terms() {
    // tantivy skips blocks of documents (block-max WAND) only for a flat union of term queries;
    // a nested boolean or a phrase anywhere makes it score every match.
    let idx = wand_fixture();
    let searcher = idx.reader.searcher();
    for q in ["晴天", "天", "title:晴天"] {
        let plan = query::plan(&idx.fields, &searcher, q).unwrap();
        let shape = format!("{:?}", plan.strict);
        assert_eq!(shape.matches("BooleanQuery").count(), 1, "{q}: {shape}");
        assert!(!shape.contains("Phrase") && !shape.contains("Must"), "{q}: {shape}");
        assert!(shape.contains("TermQuery"), "{q}: {shape}");
    }
    // Three characters: a phrase of two bigrams, not of three characters.
    let plan = query::plan(&idx.fields, &searcher, "周杰伦").unwrap();
    let shape = format!("{:?}", plan.strict);
    assert!(shape.contains("周杰") && shape.contains("杰伦"), "{shape}");
    let columns = collect::ColumnCache::default();
    let top = collect::top((&searcher, &columns), plan.strict.as_ref(), ALL, 10, &all_online, 1.0).unwrap();
    assert_eq!(top.hits.len(), 10);
}

#[test]
fn merging_every_segment_into_one_keeps_every_answer() {
    // One document per commit lands in one segment: two commits, two segments, under the merge
    // policy's threshold, so no background merge interferes.
    let idx = SearchIndex::in_memory().unwrap();
    idx.upsert(&[song(1, "晴天", "周杰伦"), song(2, "七里香", "周杰伦")]).unwrap();
    idx.commit().unwrap();
    idx.upsert(&[song(4, "稻香", "周杰伦")]).unwrap();
    idx.commit().unwrap();
    idx.delete(&[2]);
    idx.commit().unwrap();
    let segments = idx.segment_count();
    let queries = ["周杰伦", "稻香", "晴天", "七里香"];
    let before: Vec<_> = queries.iter().map(|q| keys(&idx, q)).collect();
    assert_eq!(before[0].len(), 2, "{before:?}");
    assert!(before[3].is_empty(), "the deleted document is not found");

    assert_eq!(idx.columns.segments(), segments, "the columns of every searched segment are kept");
    if segments > 1 {
        assert!(idx.merge_all().unwrap());
    }
    assert_eq!(idx.segment_count(), 1, "from {segments}");
    assert_eq!(idx.num_docs(), 2);
    let after: Vec<_> = queries.iter().map(|q| keys(&idx, q)).collect();
    assert_eq!(after, before);
    assert_eq!(idx.columns.segments(), 1, "the merged-away segments' columns are forgotten");
    assert!(!idx.merge_all().unwrap(), "one segment: nothing to merge");
}

#[test]
fn a_deletion_after_a_search_is_seen_by_the_next_search() {
    // The first search caches the segment's columns; the deletion lives in the segment's alive
    // bitset, which must still be read fresh.
    let idx = SearchIndex::in_memory().unwrap();
    idx.upsert(&[song(1, "晴天", "周杰伦"), song(2, "稻香", "周杰伦")]).unwrap();
    idx.commit().unwrap();
    assert_eq!(keys(&idx, "周杰伦").len(), 2);
    idx.delete(&[2]);
    idx.commit().unwrap();
    assert_eq!(keys(&idx, "周杰伦"), vec![1]);
    assert!(keys(&idx, "稻香").is_empty());
}

#[test]
fn hits_carry_the_content_id_they_were_indexed_with() {
    let idx = fixture();
    let hits = idx.search("周杰伦", ALL, 0, 20, &all_online).unwrap();
    assert!(hits.len() >= 4, "{hits:?}");
    for hit in &hits {
        assert_eq!(hit.content_id, blank(hit.key).content_id, "key {}", hit.key);
    }
    // Every bit of the id survives the four columns, the high bits of each word included.
    let id = ContentId::from_array(std::array::from_fn(|i| 0xff - i as u8));
    let idx = SearchIndex::in_memory().unwrap();
    idx.upsert(&[IndexDoc { title: "only", ..IndexDoc::blank(99, id) }]).unwrap();
    idx.commit().unwrap();
    let hits = idx.search("only", ALL, 0, 1, &all_online).unwrap();
    assert_eq!(hits.iter().map(|h| (h.key, h.content_id)).collect::<Vec<_>>(), vec![(99, id)]);
}

/// The keys of every live document, in the order the index stores them, segment by segment.
fn stored_order(idx: &SearchIndex) -> Vec<u64> {
    let searcher = idx.reader.searcher();
    let mut keys = Vec::new();
    for segment in searcher.segment_readers() {
        let column = segment.fast_fields().u64(schema::KEY).unwrap();
        keys.extend(
            (0..segment.max_doc()).filter(|d| !segment.is_deleted(*d)).filter_map(|d| column.first(d)),
        );
    }
    keys
}

#[test]
fn the_copies_of_a_song_are_stored_next_to_each_other() {
    // Copies published in scattered order, over two commits (two segments), then merged.
    let idx = SearchIndex::in_memory().unwrap();
    let title = |key: u64| ["晴天", "Hello", "七里香"][key as usize % 3];
    let artist = |key: u64| ["周杰伦", "Adele", "周杰伦"][key as usize % 3];
    let copy = |key| IndexDoc { title: title(key), artist: artist(key), ..blank(key) };
    idx.upsert(&(0..12).map(copy).collect::<Vec<_>>()).unwrap();
    idx.commit().unwrap();
    idx.upsert(&(12..24).map(copy).collect::<Vec<_>>()).unwrap();
    idx.commit().unwrap();
    for segment in idx.reader.searcher().segment_readers() {
        let column = segment.fast_fields().u64(schema::KEY).unwrap();
        let songs: Vec<u64> = (0..segment.max_doc()).filter_map(|d| column.first(d)).map(|k| k % 3).collect();
        let distinct = songs.iter().collect::<std::collections::HashSet<_>>().len();
        assert_eq!(songs.chunk_by(|a, b| a == b).count(), distinct, "sorted within each segment: {songs:?}");
    }
    // A background merge may take some of the segments first and cancel ours: try again.
    for _ in 0..100 {
        if idx.segment_count() == 1 || idx.merge_all().unwrap() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(idx.segment_count(), 1);
    let songs: Vec<u64> = stored_order(&idx).into_iter().map(|k| k % 3).collect();
    assert_eq!(songs.len(), 24);
    assert_eq!(songs.chunk_by(|a, b| a == b).count(), 3, "one run per song after the merge: {songs:?}");
    // And the two songs of one artist are one run.
    let artists: Vec<&str> = stored_order(&idx).into_iter().map(artist).collect();
    assert_eq!(artists.chunk_by(|a, b| a == b).count(), 2, "{artists:?}");
}

#[test]
fn song_order_folds_as_search_does() {
    use schema::song_order;
    assert_eq!(song_order("周杰倫", "晴天"), song_order("周杰伦", "晴天"), "traditional = simplified");
    assert_eq!(song_order("JAY  chou", "Ｈｅｌｌｏ"), song_order("jay chou", "hello"), "case, width, spaces");
    assert_ne!(song_order("周杰伦", "晴天"), song_order("周杰伦", "稻香"));
    assert_eq!(song_order("周杰伦", "晴天") >> 32, song_order("周杰伦", "稻香") >> 32, "one artist, one run");
    assert_ne!(song_order("周杰伦", "晴天") >> 32, song_order("孙燕姿", "晴天") >> 32);
}

#[test]
fn an_index_stored_in_another_order_is_rebuilt() {
    // As an older version created it: the same schema, no sort order.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("index");
    std::fs::create_dir_all(&dir).unwrap();
    let (schema, _) = schema::build();
    drop(Index::create_in_dir(&dir, schema).unwrap());
    let (idx, outcome) = SearchIndex::open_or_create(&dir).unwrap();
    assert_eq!(outcome, OpenOutcome::RebuiltCorrupt);
    drop(idx);
    let (_, outcome) = SearchIndex::open_or_create(&dir).unwrap();
    assert_eq!(outcome, OpenOutcome::Opened, "the rebuilt index has the order");
}
