//! Outboard files and the records they belong to: written with a new id, moved in from a
//! download, removed with the id's last path, moved out of an older store's sled tree, and
//! swept when orphaned.

use std::fs;
use std::path::Path;

use quaver_shared::ContentId;

use super::hash::hash_reader;
use super::*;
use crate::library::OutboardData;

fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(17).wrapping_add(seed)).collect()
}

/// Writes `data` at `path`; returns its id and the outboard hashing computes for it.
fn song(path: &Path, data: &[u8]) -> (ContentId, Vec<u8>) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, data).unwrap();
    let hashed = hash_reader(data, data.len() as u64).unwrap();
    (hashed.id, hashed.outboard)
}

/// The outboard the store serves for `id`, read from its file.
fn served_outboard(store: &Store, id: &ContentId) -> Vec<u8> {
    match store.entry(id).unwrap().unwrap().outboard {
        OutboardData::File { path, len } => {
            let bytes = fs::read(path).unwrap();
            assert_eq!(bytes.len() as u64, len);
            bytes
        }
        OutboardData::Bytes(_) => panic!("the store serves outboards from files"),
    }
}

fn outboard_files(dir: &Path) -> usize {
    fs::read_dir(dir).unwrap().count()
}

#[test]
fn an_outboard_file_lives_as_long_as_some_path_holds_its_id() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("music");
    let (id, outboard) = song(&root.join("a.flac"), &bytes(200_000, 1));
    song(&root.join("copy of a.flac"), &bytes(200_000, 1));
    let store = Store::open(&dir.path().join("db"), &dir.path().join("ob")).unwrap();
    store.add_folder(&root).unwrap();
    store.rescan().unwrap();
    assert_eq!(served_outboard(&store, &id), outboard);
    assert_eq!(outboard_files(&dir.path().join("ob")), 1);

    fs::remove_file(root.join("a.flac")).unwrap();
    store.rescan().unwrap();
    assert_eq!(served_outboard(&store, &id), outboard, "the copy still holds the id");
    fs::remove_file(root.join("copy of a.flac")).unwrap();
    assert_eq!(store.rescan().unwrap().removed, vec![id]);
    assert_eq!(outboard_files(&dir.path().join("ob")), 0);
}

#[test]
fn add_verified_moves_a_download_outboard_in_and_drops_one_it_already_has() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("files");
    let data = bytes(300_000, 2);
    let (id, outboard) = song(&root.join("one.flac"), &data);
    song(&root.join("two.flac"), &data);
    let store = Store::temporary().unwrap();
    store.add_folder(&root).unwrap();

    let download_outboard = dir.path().join("partial.outboard");
    fs::write(&download_outboard, &outboard).unwrap();
    let record = store.add_verified(&root.join("one.flac"), id, &download_outboard).unwrap();
    assert!(record.newly_shared);
    assert!(!download_outboard.exists(), "moved, not copied");
    assert_eq!(served_outboard(&store, &id), outboard);

    // The same bytes downloaded again: the store keeps its outboard and removes the new one.
    fs::write(&download_outboard, &outboard).unwrap();
    let record = store.add_verified(&root.join("two.flac"), id, &download_outboard).unwrap();
    assert!(!record.newly_shared);
    assert!(!download_outboard.exists());

    // An outboard that does not fit the file is refused, and removed all the same.
    let (other, _) = song(&root.join("three.flac"), &bytes(50_000, 3));
    fs::write(&download_outboard, &outboard).unwrap();
    let err = store.add_verified(&root.join("three.flac"), other, &download_outboard).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
    assert!(!download_outboard.exists());
    assert!(store.entry(&other).unwrap().is_none());
}

/// `quaver get --out ~/Downloads`: the download is shared, the folder it landed in is not.
#[test]
fn a_download_outside_the_shared_folders_is_shared_alone() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("Downloads");
    let data = bytes(300_000, 4);
    let (id, outboard) = song(&out.join("song.flac"), &data);
    let store = Store::temporary().unwrap();
    let download_outboard = dir.path().join("partial.outboard");
    fs::write(&download_outboard, &outboard).unwrap();
    store.add_download(&out.join("song.flac"), id, &download_outboard).unwrap();
    assert!(store.folders().unwrap().is_empty(), "{:?}", store.folders());

    let (private, _) = song(&out.join("tax return.pdf"), &bytes(10_000, 5));
    let report = store.rescan().unwrap();
    assert!(report.added.is_empty() && report.removed.is_empty(), "{report:?}");
    assert!(store.entry(&private).unwrap().is_none(), "another file in the folder was shared");
    assert_eq!(store.len(), 1);
    assert_eq!(served_outboard(&store, &id), outboard, "the download itself stays shared");

    // Deleted by the user: withdrawn on the next rescan, and not shared again if it comes back
    // as some other file.
    fs::remove_file(out.join("song.flac")).unwrap();
    assert_eq!(store.rescan().unwrap().removed, vec![id]);
    song(&out.join("song.flac"), &bytes(1000, 6));
    store.rescan().unwrap();
    assert!(store.is_empty());
}

#[test]
fn a_reopened_store_moves_sled_outboards_to_files_and_sweeps_orphans() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("music");
    let (db, ob) = (dir.path().join("db"), dir.path().join("ob"));
    let (id, outboard) = song(&root.join("a.flac"), &bytes(120_000, 4));
    {
        let store = Store::open(&db, &ob).unwrap();
        store.add_folder(&root).unwrap();
        store.rescan().unwrap();
        // Make it look like a store from before outboard files: the outboard in sled, plus a
        // legacy value for an id that is not shared.
        let legacy = store.db.open_tree(db::LEGACY_OUTBOARDS).unwrap();
        legacy.insert(id.as_bytes(), &outboard[..]).unwrap();
        legacy.insert(ContentId::of_bytes(b"gone").as_bytes(), &b"stale"[..]).unwrap();
        legacy.insert(&b"not an id"[..], &b"junk"[..]).unwrap();
        fs::remove_file(ob.join(id.to_hex())).unwrap();
        // And what a crash can leave: an outboard of an id no longer shared, a half-written one.
        fs::write(ob.join(ContentId::of_bytes(b"orphan").to_hex()), b"orphan").unwrap();
        fs::write(ob.join("x.tmp"), b"half").unwrap();
        store.flush().unwrap();
    }
    let store = Store::open(&db, &ob).unwrap();
    assert_eq!(served_outboard(&store, &id), outboard);
    assert_eq!(outboard_files(&ob), 1, "only the shared id's outboard is left");
    assert!(!store.db.tree_names().iter().any(|n| &n[..] == db::LEGACY_OUTBOARDS.as_bytes()));
}

#[test]
fn a_missing_or_truncated_outboard_file_is_an_error_not_a_bad_answer() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("music");
    let (id, _) = song(&root.join("a.flac"), &bytes(100_000, 5));
    let (db, ob) = (dir.path().join("db"), dir.path().join("ob"));
    let store = Store::open(&db, &ob).unwrap();
    store.add_folder(&root).unwrap();
    store.rescan().unwrap();

    fs::write(ob.join(id.to_hex()), b"short").unwrap();
    assert!(store.entry(&id).is_err());
    fs::remove_file(ob.join(id.to_hex())).unwrap();
    assert!(store.entry(&id).is_err());
}

/// A rescan records its files in batches (`batch.rs`): more files than two batches hold, and a
/// copy of one of them, all end up shared with the outboard hashing gives them, one file per id.
#[test]
fn a_rescan_of_many_files_records_every_outboard_across_batches() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("music");
    let mut songs = Vec::new();
    for n in 0..150u8 {
        // Sizes from under one 16 KiB group (an empty outboard) to several groups.
        songs.push(song(&root.join(format!("{n:03}.mp3")), &bytes(10_000 + usize::from(n) * 700, n)));
    }
    // The same bytes as song 0, in whichever batch the walk meets it.
    song(&root.join("zz copy of 000.mp3"), &bytes(10_000, 0));
    let store = Store::open(&dir.path().join("db"), &dir.path().join("ob")).unwrap();
    store.add_folder(&root).unwrap();
    let report = store.rescan().unwrap();
    assert_eq!((report.hashed, report.added.len(), report.errors.len()), (151, 150, 0));
    for (id, outboard) in &songs {
        assert_eq!(&served_outboard(&store, id), outboard);
    }
    assert_eq!(outboard_files(&dir.path().join("ob")), 150);
    // Reopened, nothing is an orphan: every file belongs to a record.
    drop(store);
    let store = Store::open(&dir.path().join("db"), &dir.path().join("ob")).unwrap();
    assert_eq!(outboard_files(&dir.path().join("ob")), 150);
    assert_eq!(store.rescan().unwrap().unchanged, 151);
}

/// A batch writes outboards unsynced, so it must never write over one that is there: the
/// outboard of a shared id stays the very file it was, whatever a later scan finds.
#[test]
fn a_batch_leaves_an_existing_outboard_file_alone() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("music");
    let (id, outboard) = song(&root.join("a.flac"), &bytes(200_000, 7));
    let store = Store::open(&dir.path().join("db"), &dir.path().join("ob")).unwrap();
    store.add_folder(&root).unwrap();
    store.rescan().unwrap();
    let file = dir.path().join("ob").join(id.to_hex());
    let before = fs::metadata(&file).unwrap();
    song(&root.join("b.flac"), &bytes(200_000, 7));
    let report = store.rescan().unwrap();
    assert_eq!((report.hashed, report.added.len()), (1, 0), "a second path of a shared id");
    let after = fs::metadata(&file).unwrap();
    assert_eq!((after.ino(), after.mtime_nsec()), (before.ino(), before.mtime_nsec()));
    assert_eq!(served_outboard(&store, &id), outboard);
}
