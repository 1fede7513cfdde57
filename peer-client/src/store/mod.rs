//! The store: owns the node's shared-file records, persisted in sled.
//!
//! It scans the shared folders, hashes each file once (BLAKE3 root = `ContentId`, plus the
//! bao-tree outboard that lets downloaders verify every block), reads tags, and keeps one record
//! per content id with the path, size and mtime it was hashed at. A rescan re-hashes only files
//! whose size or mtime changed and withdraws files that vanished.
//!
//! Rules this module keeps:
//! - **No per-file state in memory.** Records and the path index live in sled, outboards in
//!   files of their own (`outboards.rs`); scans stream over the directory walk and over sled.
//!   Only the share digest and the id count (O(1)) are mirrored in memory, and they are written
//!   in the same transaction as the records.
//! - **Every shared id has its outboard file.** It is on disk (synced) before the record
//!   commits and removed after it (`write.rs`; a rescan syncs a whole batch of new outboards at
//!   once, `batch.rs`); a crash in between leaves only an orphan, swept on open.
//! - **Never trust a path from the network.** Peers name files by `ContentId` only; the path of
//!   an [`Entry`](crate::library::Entry) always comes from this node's own records, and a file is
//!   served only while its size and mtime still match what was hashed.
//! - A file that cannot be read is reported in the [`ScanReport`] and skipped; it never aborts a
//!   scan. Storage errors and corrupt records do abort, as a `StoreError`.
//!
//! The sled layout is documented in `db.rs`. Everything here is blocking I/O: call it from a
//! blocking thread (`spawn_blocking`) in async code.

mod batch;
mod db;
pub mod hash;
mod outboards;
mod published;
mod scan;
pub mod tags;
mod write;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_outboards;
#[cfg(test)]
mod tests_tags;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use quaver_shared::directory::v1::{FileInfo, SharedFile};
use quaver_shared::{ContentId, ShareDigest};

use crate::library::{Entry, Library, LibraryError, OutboardData};
use db::{PathEntry, StoredEntry, Summary};
use outboards::OutboardFiles;
pub use published::Published;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store database failed: {0}")]
    Db(#[from] sled::Error),
    #[error("store record is corrupt: {0}")]
    Corrupt(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: changed while it was being hashed", .0.display())]
    ChangedWhileHashing(PathBuf),
    #[error("{}: not a directory", .0.display())]
    NotADirectory(PathBuf),
    #[error("{}: not a regular, visible file inside a shared folder", .0.display())]
    NotShared(PathBuf),
}

impl StoreError {
    fn io(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
        move |source| StoreError::Io { path: path.to_owned(), source }
    }

    /// Errors about one file on disk, which a scan reports and skips.
    fn is_about_one_file(&self) -> bool {
        matches!(self, StoreError::Io { .. } | StoreError::ChangedWhileHashing(_))
    }
}

/// What a rescan changed. The share list after it is the one before it, plus `added` and
/// `changed`, minus `removed` (each id appears at most once across the three lists).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanReport {
    /// Ids newly shared from paths the store had not seen.
    pub added: Vec<ContentId>,
    /// Ids newly shared because a known path's content changed (its old id, if no other path
    /// holds it, is in `removed`).
    pub changed: Vec<ContentId>,
    /// Ids no longer shared: their last path vanished, changed, or left the shared folders.
    pub removed: Vec<ContentId>,
    /// Files skipped because their size and mtime matched the record.
    pub unchanged: u64,
    /// Files read and hashed by this scan.
    pub hashed: u64,
    /// Files and folders that could not be read; each was skipped.
    pub errors: Vec<(PathBuf, String)>,
}

impl ScanReport {
    /// A file the scan could not share: logged and reported, and the scan goes on.
    fn skip(&mut self, path: PathBuf, error: &StoreError) {
        tracing::warn!(path = %path.display(), error = %error, "skipping a file");
        self.errors.push((path, error.to_string()));
    }
}

/// One file as the store recorded it.
#[derive(Clone, Debug, PartialEq)]
pub struct SharedRecord {
    pub id: ContentId,
    pub path: PathBuf,
    pub size: u64,
    pub info: FileInfo,
    /// True when this id was not shared before (announce it to the directory).
    pub newly_shared: bool,
}

/// The node's shared library (see the module doc).
pub struct Store {
    db: sled::Db,
    roots: sled::Tree,
    files: sled::Tree,
    outboards: OutboardFiles,
    paths: sled::Tree,
    sources: sled::Tree,
    meta: sled::Tree,
    /// Mirror of `meta`; its lock also serialises every write to the record trees.
    summary: Mutex<Summary>,
    /// A temporary store's outboard directory, removed with the store.
    _temp: Option<tempfile::TempDir>,
}

/// How many paths holding the same bytes `entry` tries before giving up.
const MAX_SERVE_CANDIDATES: usize = 16;

impl Store {
    /// Opens (or creates) the store: the sled database in directory `db`, the outboard files
    /// in directory `outboards`. Outboards an older store kept in sled move to files, and
    /// outboard files of ids no longer shared (left by a crash) are removed.
    pub fn open(db: &Path, outboards: &Path) -> Result<Store, StoreError> {
        let files = OutboardFiles::open(outboards).map_err(StoreError::io(outboards))?;
        Self::with_db(sled::Config::new().path(db).open()?, files, None)
    }

    /// A store that lives in memory and temporary directories, deleted on drop. For tests.
    pub fn temporary() -> Result<Store, StoreError> {
        let temp = tempfile::tempdir().map_err(StoreError::io(&std::env::temp_dir()))?;
        let files = OutboardFiles::open(temp.path()).map_err(StoreError::io(temp.path()))?;
        Self::with_db(sled::Config::new().temporary(true).open()?, files, Some(temp))
    }

    fn with_db(
        db: sled::Db,
        outboards: OutboardFiles,
        temp: Option<tempfile::TempDir>,
    ) -> Result<Store, StoreError> {
        let meta = db.open_tree(db::META)?;
        let summary = Mutex::new(Summary::load(&meta)?);
        let store = Store {
            roots: db.open_tree(db::ROOTS)?,
            files: db.open_tree(db::FILES)?,
            outboards,
            paths: db.open_tree(db::PATHS)?,
            sources: db.open_tree(db::SOURCES)?,
            meta,
            summary,
            db,
            _temp: temp,
        };
        store.move_legacy_outboards()?;
        let swept =
            store.outboards.sweep(|id| store.files.contains_key(id.as_bytes()).map_err(io::Error::other));
        match swept.map_err(StoreError::io(store.outboards.dir()))? {
            0 => {}
            n => tracing::info!(removed = n, "removed outboard files of ids no longer shared"),
        }
        Ok(store)
    }

    /// Stores before outboard files kept outboards in a sled tree: write each one of a shared
    /// id to its file, then drop the tree. A crash midway repeats the move on the next open.
    fn move_legacy_outboards(&self) -> Result<(), StoreError> {
        if !self.db.tree_names().iter().any(|n| &n[..] == db::LEGACY_OUTBOARDS.as_bytes()) {
            return Ok(());
        }
        let legacy = self.db.open_tree(db::LEGACY_OUTBOARDS)?;
        let mut moved = 0u64;
        for kv in legacy.iter() {
            let (key, outboard) = kv?;
            // Such a key cannot be a shared id (those are content ids): nothing to keep.
            let Ok(id) = ContentId::from_slice(&key) else {
                tracing::warn!("dropping an old outboard under a key that is not a content id");
                continue;
            };
            if self.files.contains_key(&key)? {
                self.outboards
                    .put_bytes(&id, &outboard)
                    .map_err(StoreError::io(&self.outboards.path(&id)))?;
                moved += 1;
            }
        }
        self.db.drop_tree(db::LEGACY_OUTBOARDS)?;
        self.db.flush()?;
        tracing::info!(moved, "moved outboards from the database to files");
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Summary> {
        self.summary.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Shares `dir` and everything below it from the next [`rescan`](Self::rescan) on.
    pub fn add_folder(&self, dir: &Path) -> Result<(), StoreError> {
        let dir = fs::canonicalize(dir).map_err(StoreError::io(dir))?;
        if !dir.is_dir() {
            return Err(StoreError::NotADirectory(dir));
        }
        self.roots.insert(db::path_key(&dir), &[])?;
        self.db.flush()?;
        Ok(())
    }

    /// Stops sharing `dir`; the next rescan withdraws its files. False if it was not shared.
    pub fn remove_folder(&self, dir: &Path) -> Result<bool, StoreError> {
        // The folder may be gone from disk already: then match it as given.
        let dir = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
        let existed = self.roots.remove(db::path_key(&dir))?.is_some();
        self.db.flush()?;
        Ok(existed)
    }

    /// The shared folders, canonical.
    pub fn folders(&self) -> Result<Vec<PathBuf>, StoreError> {
        self.roots_of_kind(b"")
    }

    /// The files shared by themselves (downloads saved outside the shared folders), canonical.
    fn file_roots(&self) -> Result<Vec<PathBuf>, StoreError> {
        self.roots_of_kind(db::FILE_ROOT)
    }

    fn roots_of_kind(&self, kind: &[u8]) -> Result<Vec<PathBuf>, StoreError> {
        let mut out = Vec::new();
        for kv in self.roots.iter() {
            let (k, v) = kv?;
            if &v[..] == kind {
                out.push(db::key_path(&k));
            }
        }
        Ok(out)
    }

    /// Whether `path` (canonical) is a file shared by itself.
    fn is_file_root(&self, path: &Path) -> Result<bool, StoreError> {
        Ok(self.roots.get(db::path_key(path))?.is_some_and(|v| &v[..] == db::FILE_ROOT))
    }

    /// Every shared file, streamed from sled in content-id order (for announcing).
    pub fn shared_files(&self) -> impl Iterator<Item = Result<SharedFile, StoreError>> + use<> {
        self.files.iter().values().map(|v| {
            let record = StoredEntry::decode_from(&v?)?;
            Ok(SharedFile { info: record.info, complete: true })
        })
    }

    /// Number of shared content ids. O(1).
    pub fn len(&self) -> u64 {
        self.lock().count
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Digest of the shared ids (`ShareDigest::of` them), maintained incrementally. O(1).
    pub fn digest(&self) -> ShareDigest {
        self.lock().digest
    }

    /// Digest and count read together, for an `Announce`.
    pub fn summary(&self) -> (ShareDigest, u64) {
        let s = *self.lock();
        (s.digest, s.count)
    }

    /// The directory metadata of a shared id.
    pub fn info(&self, id: &ContentId) -> Result<Option<FileInfo>, StoreError> {
        match self.files.get(id.as_bytes())? {
            None => Ok(None),
            Some(v) => Ok(Some(StoredEntry::decode_from(&v)?.info())),
        }
    }

    /// Writes everything to disk now (sled otherwise flushes every 500 ms).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    /// A servable entry: the first path holding `id` whose size and mtime still match the
    /// record. `None` if the id is not shared or every copy changed on disk since it was hashed.
    fn servable(&self, id: &ContentId) -> Result<Option<Entry>, StoreError> {
        if !self.files.contains_key(id.as_bytes())? {
            return Ok(None);
        }
        let mut found = None;
        for key in self.sources.scan_prefix(id.as_bytes()).keys().take(MAX_SERVE_CANDIDATES) {
            let key = key?;
            let path_key = &key[ContentId::LEN..];
            let Some(v) = self.paths.get(path_key)? else { continue };
            let recorded = PathEntry::decode(&v)?;
            let path = db::key_path(path_key);
            let current = fs::metadata(&path);
            if recorded.id == *id && current.is_ok_and(|m| m.is_file() && recorded.matches(&m)) {
                found = Some((path, recorded.size));
                break;
            }
        }
        let Some((path, size)) = found else { return Ok(None) };
        // Only its length is read here; the file is opened when a peer asks for the outboard.
        let outboard = self.outboards.path(id);
        let len = self
            .outboards
            .len(id)
            .map_err(StoreError::io(&outboard))?
            .ok_or_else(|| StoreError::Corrupt(format!("no outboard for {id}")))?;
        if len != hash::outboard_len(size) {
            return Err(StoreError::Corrupt(format!("outboard of {id} has the wrong length")));
        }
        Ok(Some(Entry { id: *id, path, size, outboard: OutboardData::File { path: outboard, len } }))
    }
}

impl Library for Store {
    fn entry(&self, id: &ContentId) -> Result<Option<Entry>, LibraryError> {
        self.servable(id).map_err(|e| LibraryError::Storage(e.to_string()))
    }
}
