//! Rescans: walk the shared folders (streaming, one open directory per level), hash what is new
//! or changed and record it in batches (`batch.rs`), then stream over the path index and forget
//! what vanished. Neither pass holds a list of all files in memory: the walk keeps at most one
//! batch of hashed files waiting for their records.

use std::ffi::OsStr;
use std::fs::{self, File, Metadata};
use std::io;
use std::path::{Path, PathBuf};

use quaver_shared::ContentId;
use quaver_shared::directory::v1::FileInfo;

use super::batch::{Batch, Pending};
use super::db::{self, PathEntry};
use super::write::NewOutboard;
use super::{ScanReport, SharedRecord, Store, StoreError, hash, tags};

/// Deepest folder nesting a scan descends into (symlinked folders are never followed, so this
/// only bounds pathological trees).
const MAX_DEPTH: usize = 128;

fn is_hidden(name: &OsStr) -> bool {
    name.as_encoded_bytes().starts_with(b".")
}

fn is_partial(name: &OsStr) -> bool {
    name.as_encoded_bytes().ends_with(b".part")
}

/// Whether `path` may be shared given the shared folders: inside one of them, with no hidden
/// component below it, and not a partial download. (Not whether it exists.)
fn eligible(roots: &[PathBuf], path: &Path) -> bool {
    let Some(rel) = roots.iter().find_map(|root| path.strip_prefix(root).ok()) else {
        return false;
    };
    let visible = rel.components().all(|c| !is_hidden(c.as_os_str()));
    visible && rel.file_name().is_some_and(|n| !is_partial(n))
}

/// Drops folders that lie inside another shared folder: their files are walked once.
fn outermost(mut roots: Vec<PathBuf>) -> Vec<PathBuf> {
    roots.sort();
    let mut kept: Vec<PathBuf> = Vec::with_capacity(roots.len());
    for root in roots {
        if !kept.iter().any(|k| root.starts_with(k)) {
            kept.push(root);
        }
    }
    kept
}

impl Store {
    /// Walks every shared folder and brings the records up to date (see [`ScanReport`]).
    pub fn rescan(&self) -> Result<ScanReport, StoreError> {
        let roots = outermost(self.folders()?);
        let mut report = ScanReport::default();
        let mut missing = Vec::new();
        let mut batch = Batch::default();
        for root in &roots {
            if !self.walk(root, &mut batch, &mut report)? {
                missing.push(root.clone());
            }
        }
        // Files shared by themselves; one inside a shared folder was walked already.
        for file in self.file_roots()? {
            if eligible(&roots, &file) {
                continue;
            }
            match fs::metadata(&file) {
                Ok(meta) if meta.is_file() => self.visit(&file, &meta, &mut batch, &mut report)?,
                // Gone or replaced: the sweep below forgets its record, and the entry goes too.
                _ => {
                    self.roots.remove(db::path_key(&file))?;
                }
            }
        }
        self.record_batch(&mut batch, &mut report)?;
        self.sweep(&roots, &missing, &mut report)?;
        self.db.flush()?;
        tracing::info!(
            added = report.added.len(),
            changed = report.changed.len(),
            removed = report.removed.len(),
            unchanged = report.unchanged,
            errors = report.errors.len(),
            "rescan done"
        );
        Ok(report)
    }

    /// Hashes and records one file, which must be inside a shared folder. Re-hashes it even if
    /// it looks unchanged.
    pub fn add_file(&self, path: &Path) -> Result<SharedRecord, StoreError> {
        let (path, meta) = self.shareable(path)?;
        let record = self.share(&path, &meta)?;
        self.db.flush()?;
        Ok(record)
    }

    /// Records one file, which must be inside a shared folder, whose content id and outboard
    /// are already known to be right: a finished download, every block of which was checked
    /// against the outboard in the file `outboard`, whose root is `id`. Reading the file again
    /// to hash it would only repeat that work.
    ///
    /// The outboard file is the store's afterwards: moved into its outboard directory (not
    /// read), or removed if the id has one already or recording fails.
    pub fn add_verified(
        &self,
        path: &Path,
        id: ContentId,
        outboard: &Path,
    ) -> Result<SharedRecord, StoreError> {
        let result = self.add_verified_inner(path, id, outboard);
        if result.is_err() {
            let _ = fs::remove_file(outboard);
        }
        result
    }

    fn add_verified_inner(
        &self,
        path: &Path,
        id: ContentId,
        outboard: &Path,
    ) -> Result<SharedRecord, StoreError> {
        let (path, meta) = self.shareable(path)?;
        let size = meta.len();
        let outboard_len = fs::metadata(outboard).map_err(StoreError::io(outboard))?.len();
        if outboard_len != hash::outboard_len(size) {
            return Err(StoreError::Corrupt(format!("outboard of {id} does not fit a {size}-byte file")));
        }
        let entry = PathEntry { id, size, mtime_ns: db::mtime_ns(&meta) };
        let info = tags::file_info(&path, &id, size);
        let change = self.record(&path, entry, info.clone(), NewOutboard::File(outboard))?;
        self.db.flush()?;
        Ok(SharedRecord { id, path, size, info, newly_shared: change.entered.is_some() })
    }

    /// Shares a finished download (see [`Store::add_verified`] for `id` and `outboard`). Inside
    /// a shared folder it is shared with the folder. Elsewhere (`quaver get --out DIR`) the file
    /// alone is shared, not its folder: the other files there are the user's own business.
    pub fn add_download(
        &self,
        path: &Path,
        id: ContentId,
        outboard: &Path,
    ) -> Result<SharedRecord, StoreError> {
        let marked = fs::canonicalize(path).map_err(StoreError::io(path)).and_then(|canonical| {
            if !eligible(&self.folders()?, &canonical) {
                self.roots.insert(db::path_key(&canonical), db::FILE_ROOT)?;
            }
            Ok(())
        });
        if let Err(e) = marked {
            let _ = fs::remove_file(outboard);
            return Err(e);
        }
        self.add_verified(path, id, outboard)
    }

    /// `path` made canonical, with its metadata, if it is a regular file the store may share.
    fn shareable(&self, path: &Path) -> Result<(PathBuf, Metadata), StoreError> {
        let path = fs::canonicalize(path).map_err(StoreError::io(path))?;
        let meta = fs::metadata(&path).map_err(StoreError::io(&path))?;
        if !meta.is_file() || !(eligible(&self.folders()?, &path) || self.is_file_root(&path)?) {
            return Err(StoreError::NotShared(path));
        }
        Ok((path, meta))
    }

    /// Walks one shared folder depth-first. Returns false if the folder itself is unreadable
    /// (unmounted, say): its records are then kept rather than withdrawn.
    fn walk(&self, root: &Path, batch: &mut Batch, report: &mut ScanReport) -> Result<bool, StoreError> {
        let mut stack = match fs::read_dir(root) {
            Ok(dir) => vec![dir],
            Err(e) => {
                report.errors.push((root.to_owned(), e.to_string()));
                return Ok(false);
            }
        };
        while let Some(dir) = stack.last_mut() {
            let Some(next) = dir.next() else {
                stack.pop();
                continue;
            };
            let entry = match next {
                Ok(entry) => entry,
                Err(e) => {
                    report.errors.push((root.to_owned(), e.to_string()));
                    continue;
                }
            };
            let path = entry.path();
            if is_hidden(&entry.file_name()) {
                continue;
            }
            let file_type = match entry.file_type() {
                Ok(t) => t,
                Err(e) => {
                    report.errors.push((path, e.to_string()));
                    continue;
                }
            };
            if file_type.is_dir() {
                if stack.len() >= MAX_DEPTH {
                    report.errors.push((path, "folders nested too deep".into()));
                    continue;
                }
                match fs::read_dir(&path) {
                    Ok(sub) => stack.push(sub),
                    Err(e) => report.errors.push((path, e.to_string())),
                }
                continue;
            }
            if is_partial(&entry.file_name()) {
                continue;
            }
            // Follows a symlink to a file; a symlink to a folder is not a file and is skipped.
            match fs::metadata(&path) {
                Ok(meta) if meta.is_file() => self.visit(&path, &meta, batch, report)?,
                Ok(_) => {}
                Err(e) => report.errors.push((path, e.to_string())),
            }
        }
        Ok(true)
    }

    /// One regular file found by the walk: skip it if unchanged, else hash it into `batch`,
    /// which is recorded whenever it is full (`batch.rs`).
    fn visit(
        &self,
        path: &Path,
        meta: &Metadata,
        batch: &mut Batch,
        report: &mut ScanReport,
    ) -> Result<(), StoreError> {
        let old = self.paths.get(db::path_key(path))?;
        let old = old.map(|v| PathEntry::decode(&v)).transpose()?;
        if old.is_some_and(|old| old.matches(meta)) {
            report.unchanged += 1;
            return Ok(());
        }
        let (entry, info, outboard) = match self.hash_file(path, meta) {
            Ok(hashed) => hashed,
            Err(e) if e.is_about_one_file() => {
                report.skip(path.to_owned(), &e);
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        batch.push(Pending { path: path.to_owned(), entry, info, outboard, seen_before: old.is_some() });
        if batch.is_full() {
            self.record_batch(batch, report)?;
        }
        Ok(())
    }

    /// Hashes the file at `path` (whose metadata before reading is `before`) and records it.
    fn share(&self, path: &Path, before: &Metadata) -> Result<SharedRecord, StoreError> {
        let (entry, info, outboard) = self.hash_file(path, before)?;
        let change = self.record(path, entry, info.clone(), NewOutboard::Bytes(outboard))?;
        Ok(SharedRecord {
            id: entry.id,
            path: path.to_owned(),
            size: entry.size,
            info,
            newly_shared: change.entered.is_some(),
        })
    }

    /// Hashes the file at `path` (whose metadata before reading is `before`): its record's
    /// entry, its tags and its outboard. The file must not change while it is read.
    fn hash_file(
        &self,
        path: &Path,
        before: &Metadata,
    ) -> Result<(PathEntry, FileInfo, Vec<u8>), StoreError> {
        let size = before.len();
        let file = File::open(path).map_err(StoreError::io(path))?;
        let hashed = match hash::hash_reader(&file, size) {
            Ok(hashed) => hashed,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(StoreError::ChangedWhileHashing(path.to_owned()));
            }
            Err(e) => return Err(StoreError::Io { path: path.to_owned(), source: e }),
        };
        let after = fs::metadata(path).map_err(StoreError::io(path))?;
        let entry = PathEntry { id: hashed.id, size, mtime_ns: db::mtime_ns(before) };
        if !entry.matches(&after) {
            return Err(StoreError::ChangedWhileHashing(path.to_owned()));
        }
        let info = tags::file_info(path, &hashed.id, size);
        Ok((entry, info, hashed.outboard))
    }

    /// Streams over the path index and forgets every path that is gone, no longer a regular
    /// file, or no longer eligible. Paths under a `missing` folder are kept.
    fn sweep(
        &self,
        roots: &[PathBuf],
        missing: &[PathBuf],
        report: &mut ScanReport,
    ) -> Result<(), StoreError> {
        for key in self.paths.iter().keys() {
            let path = db::key_path(&key?);
            if missing.iter().any(|m| path.starts_with(m)) {
                continue;
            }
            let exists = fs::metadata(&path).is_ok_and(|m| m.is_file());
            if exists && (eligible(roots, &path) || self.is_file_root(&path)?) {
                continue;
            }
            if let Some(id) = self.forget(&path)? {
                report.removed.push(id);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eligibility_follows_the_folders_and_names() {
        let roots = vec![PathBuf::from("/music"), PathBuf::from("/dl")];
        assert!(eligible(&roots, Path::new("/music/a/b.mp3")));
        assert!(eligible(&roots, Path::new("/dl/x.flac")));
        assert!(!eligible(&roots, Path::new("/other/x.flac")));
        assert!(!eligible(&roots, Path::new("/musicx/a.mp3")));
        assert!(!eligible(&roots, Path::new("/music/.hidden/a.mp3")));
        assert!(!eligible(&roots, Path::new("/music/.a.mp3")));
        assert!(!eligible(&roots, Path::new("/dl/x.flac.part")));
        assert!(!eligible(&roots, Path::new("/music")));
    }

    #[test]
    fn nested_folders_are_walked_once() {
        let roots = vec!["/a/b".into(), "/a".into(), "/c".into(), "/ab".into()];
        assert_eq!(outermost(roots), vec![PathBuf::from("/a"), "/ab".into(), "/c".into()]);
    }
}
