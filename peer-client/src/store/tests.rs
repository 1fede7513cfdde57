//! Store behaviour over real folders and files in a temporary directory.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bao_tree::{BaoTree, BlockSize};
use quaver_shared::directory::v1::MediaKind;
use quaver_shared::{ContentId, ShareDigest};

use super::*;

fn write(path: &Path, bytes: &[u8]) -> ContentId {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, bytes).unwrap();
    ContentId::of_bytes(bytes)
}

fn set_mtime(path: &Path, t: SystemTime) {
    fs::File::options().write(true).open(path).unwrap().set_modified(t).unwrap();
}

fn mtime(path: &Path) -> SystemTime {
    fs::metadata(path).unwrap().modified().unwrap()
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

fn shared(dir: &Path) -> Store {
    let store = Store::temporary().unwrap();
    store.add_folder(dir).unwrap();
    store
}

fn ids_of(store: &Store) -> Vec<ContentId> {
    store
        .shared_files()
        .map(|f| ContentId::from_slice(&f.unwrap().info.unwrap().content_id).unwrap())
        .collect()
}

fn sorted(mut ids: Vec<ContentId>) -> Vec<ContentId> {
    ids.sort();
    ids
}

#[test]
fn scan_finds_nested_files_skips_hidden_and_partial_and_reads_names() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let song = write(&root.join("a/b/c/Queen - Bohemian Rhapsody.mp3"), b"not really an mp3");
    let notes = write(&root.join("notes.txt"), b"some notes");
    write(&root.join(".secret.mp3"), b"hidden file");
    write(&root.join(".cache/x.mp3"), b"in a hidden folder");
    write(&root.join("a/Download.mp3.part"), b"partial download");
    let store = shared(&root);

    let report = store.rescan().unwrap();
    assert_eq!(sorted(report.added.clone()), sorted(vec![song, notes]));
    assert!(report.changed.is_empty() && report.removed.is_empty() && report.errors.is_empty());
    assert_eq!((report.hashed, report.unchanged), (2, 0));
    assert_eq!(store.len(), 2);

    let info = store.info(&song).unwrap().unwrap();
    assert_eq!(info.artist, "Queen");
    assert_eq!(info.title, "Bohemian Rhapsody");
    assert_eq!(info.file_name, "Queen - Bohemian Rhapsody.mp3");
    assert_eq!(info.size, 17);
    assert_eq!(info.content_id, song.to_vec());
    assert_eq!(info.media_kind, MediaKind::Audio as i32);
    let notes_info = store.info(&notes).unwrap().unwrap();
    assert_eq!((notes_info.title.as_str(), notes_info.artist.as_str()), ("notes", ""));
    assert_eq!(notes_info.media_kind, MediaKind::Document as i32);
}

#[test]
fn content_id_is_the_blake3_root_and_entry_serves_the_outboard() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let bytes = data(100_000, 1);
    let path = root.join("big.flac");
    write(&path, &bytes);
    let store = shared(&root);
    let report = store.rescan().unwrap();
    let id = ContentId::from_array(*blake3::hash(&bytes).as_bytes());
    assert_eq!(report.added, vec![id]);

    let entry = store.entry(&id).unwrap().unwrap();
    assert_eq!((entry.id, entry.path.as_path(), entry.size), (id, path.as_path(), 100_000));
    let expected = BaoTree::new(100_000, BlockSize::from_chunk_log(4)).outboard_size();
    assert_eq!(entry.outboard.len() as u64, expected);
    assert_eq!(expected, 6 * 64, "100 kB is 7 chunk groups of 16 KiB");
    assert!(store.entry(&ContentId::of_bytes(b"not shared")).unwrap().is_none());

    // Touched on disk since hashing: not served until a rescan re-hashes it.
    set_mtime(&path, mtime(&path) + Duration::from_secs(5));
    assert!(store.entry(&id).unwrap().is_none());
    let report = store.rescan().unwrap();
    assert_eq!((report.hashed, report.added.len(), report.changed.len()), (1, 0, 0));
    assert!(store.entry(&id).unwrap().is_some());
}

#[test]
fn a_modified_file_gets_a_new_id_and_the_old_one_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let path = root.join("sub/Artist - Song.ogg");
    let old = write(&path, b"first version");
    let keep = write(&root.join("other.ogg"), b"stays the same");
    let store = shared(&root);
    store.rescan().unwrap();
    let before = store.digest();

    let t = mtime(&path);
    let new = write(&path, b"second version, longer");
    set_mtime(&path, t + Duration::from_secs(10));
    let report = store.rescan().unwrap();
    assert_eq!(report.changed, vec![new]);
    assert_eq!(report.removed, vec![old]);
    assert!(report.added.is_empty());
    assert_eq!((report.hashed, report.unchanged), (1, 1));
    assert!(store.info(&old).unwrap().is_none());
    assert!(store.entry(&old).unwrap().is_none());
    assert_eq!(store.entry(&new).unwrap().unwrap().path, path);
    assert_eq!(sorted(ids_of(&store)), sorted(vec![new, keep]));

    // The report is exactly the difference between the two share lists.
    let mut expected = before;
    report.changed.iter().chain(&report.removed).for_each(|id| expected.toggle(id));
    assert_eq!(store.digest(), expected);
}

#[test]
fn deleted_files_are_removed_and_unchanged_files_are_not_rehashed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let gone = write(&root.join("gone.mp3"), b"will be deleted");
    let stay = root.join("stay.mp3");
    let stay_id = write(&stay, b"stays here");
    let store = shared(&root);
    store.rescan().unwrap();

    fs::remove_file(root.join("gone.mp3")).unwrap();
    // Same size and mtime but different bytes: the scan trusts the metadata and does not read.
    let t = mtime(&stay);
    fs::write(&stay, b"STAYS HERE").unwrap();
    set_mtime(&stay, t);

    let report = store.rescan().unwrap();
    assert_eq!(report.removed, vec![gone]);
    assert_eq!((report.unchanged, report.hashed), (1, 0));
    assert!(report.added.is_empty() && report.changed.is_empty());
    assert_eq!(ids_of(&store), vec![stay_id]);
    assert_eq!(store.len(), 1);
    assert!(store.entry(&gone).unwrap().is_none());
}

#[test]
fn digest_and_len_track_the_shared_ids() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let store = shared(&root);
    assert_eq!((store.digest(), store.len()), (ShareDigest::EMPTY, 0));
    for i in 0..5u8 {
        write(&root.join(format!("d{i}/f{i}.wav")), &data(3000 + usize::from(i), i));
    }
    store.rescan().unwrap();
    fs::remove_file(root.join("d2/f2.wav")).unwrap();
    store.rescan().unwrap();
    let ids = ids_of(&store);
    assert_eq!(ids.len(), 4);
    assert_eq!(store.len(), 4);
    assert_eq!(store.digest(), ShareDigest::of(&ids));
    assert_eq!(store.summary(), (ShareDigest::of(&ids), 4));
}

#[test]
fn a_reopened_store_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("music");
    let db = dir.path().join("store");
    let id = write(&root.join("x/Band - Tune.mp3"), &data(40_000, 9));
    let (digest, entry) = {
        let store = Store::open(&db, &dir.path().join("outboards")).unwrap();
        store.add_folder(&root).unwrap();
        store.rescan().unwrap();
        (store.digest(), store.entry(&id).unwrap().unwrap())
    };
    let store = Store::open(&db, &dir.path().join("outboards")).unwrap();
    assert_eq!(store.folders().unwrap(), vec![root.canonicalize().unwrap()]);
    assert_eq!((store.len(), store.digest()), (1, digest));
    assert_eq!(store.entry(&id).unwrap().unwrap(), entry);
    assert_eq!(store.info(&id).unwrap().unwrap().artist, "Band");
    let report = store.rescan().unwrap();
    assert_eq!((report.unchanged, report.hashed), (1, 0));
}

#[test]
fn the_same_bytes_at_two_paths_are_one_id_until_both_are_gone() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let id = write(&root.join("a.mp3"), b"same bytes");
    write(&root.join("b/a copy.mp3"), b"same bytes");
    let store = shared(&root);
    let report = store.rescan().unwrap();
    assert_eq!((report.added.clone(), store.len()), (vec![id], 1));

    let first = store.entry(&id).unwrap().unwrap().path;
    fs::remove_file(&first).unwrap();
    let report = store.rescan().unwrap();
    assert!(report.removed.is_empty());
    let second = store.entry(&id).unwrap().unwrap().path;
    assert_ne!(first, second);
    assert_eq!(store.len(), 1);

    fs::remove_file(&second).unwrap();
    assert_eq!(store.rescan().unwrap().removed, vec![id]);
    assert_eq!((store.len(), store.digest()), (0, ShareDigest::EMPTY));
}

#[test]
fn removing_a_folder_withdraws_its_files_at_the_next_rescan() {
    let dir = tempfile::tempdir().unwrap();
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    let a = write(&one.join("a.mp3"), b"a");
    let b = write(&two.join("b.mp3"), b"b");
    let store = shared(&one);
    store.add_folder(&two).unwrap();
    assert_eq!(store.rescan().unwrap().added.len(), 2);
    assert!(store.remove_folder(&two).unwrap());
    assert!(!store.remove_folder(&two).unwrap());
    assert_eq!(store.rescan().unwrap().removed, vec![b]);
    assert_eq!(ids_of(&store), vec![a]);
    assert!(matches!(store.add_folder(&one.join("a.mp3")), Err(StoreError::NotADirectory(_))));
}

#[test]
fn add_file_records_a_file_inside_a_shared_folder_only() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("downloads");
    fs::create_dir_all(&root).unwrap();
    let store = shared(&root);
    let id = write(&root.join("Someone - Something.flac"), &data(20_000, 3));
    let record = store.add_file(&root.join("Someone - Something.flac")).unwrap();
    assert_eq!((record.id, record.size, record.newly_shared), (id, 20_000, true));
    assert_eq!(record.info.title, "Something");
    assert_eq!(store.digest(), ShareDigest::of([&id]));
    assert!(!store.add_file(&record.path).unwrap().newly_shared);

    let outside = dir.path().join("elsewhere.mp3");
    write(&outside, b"x");
    assert!(matches!(store.add_file(&outside), Err(StoreError::NotShared(_))));
    write(&root.join("x.mp3.part"), b"partial");
    assert!(matches!(store.add_file(&root.join("x.mp3.part")), Err(StoreError::NotShared(_))));
    assert_eq!(store.len(), 1);
    // A rescan finds the same file unchanged.
    assert_eq!(store.rescan().unwrap().unchanged, 1);
}

#[test]
fn unreadable_entries_are_reported_and_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let ok = write(&root.join("fine.mp3"), b"fine");
    let dangling: PathBuf = root.join("dangling.mp3");
    std::os::unix::fs::symlink(root.join("nowhere"), &dangling).unwrap();
    // A symlinked folder is not followed (this one would loop).
    std::os::unix::fs::symlink(&root, root.join("loop")).unwrap();
    let store = shared(&root);
    let report = store.rescan().unwrap();
    assert_eq!(report.added, vec![ok]);
    assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
    assert_eq!(report.errors[0].0, dangling);
}
