//! A rescan's group commit: files hashed but not recorded yet, so that the outboard files of a
//! whole batch reach the disk with one directory sync between them, not one each.
//!
//! The store's rule is that an id's outboard is on disk before the record that shares the id
//! commits (`outboards.rs`). Kept file by file, that is two syncs for every new file (the file,
//! then the directory entry of its name): 1.7 ms a file on the project's VM, most of the time
//! it took to share a folder of 64 KiB files. A batch keeps the same rule for
//! up to [`MAX_FILES`] files at once, under the store's lock so that nothing else records
//! meanwhile:
//!
//! 1. every outboard of an id without one is written and renamed into place, unsynced;
//! 2. each is synced, then their directory once for all their names
//!    ([`super::outboards::OutboardFiles::sync`]);
//! 3. the records commit, one transaction per file as before.
//!
//! A crash before step 3 leaves outboard files of ids nobody shares, which the store sweeps on
//! open. An existing outboard file is never written over (step 1 skips it), so a shared id's
//! outboard is never at the mercy of an unsynced write.

use std::path::PathBuf;

use quaver_shared::ContentId;
use quaver_shared::directory::v1::FileInfo;

use super::db::PathEntry;
use super::write::NewOutboard;
use super::{ScanReport, Store, StoreError};

/// Files recorded together at most.
const MAX_FILES: usize = 64;
/// Outboard bytes held at most (a 4 GiB file's outboard is 16 MiB; a song's, about 20 KiB):
/// the batch is recorded once it holds this much.
const MAX_OUTBOARD_BYTES: usize = 8 << 20;

/// One hashed file waiting for its record.
pub(super) struct Pending {
    pub path: PathBuf,
    pub entry: PathEntry,
    pub info: FileInfo,
    pub outboard: Vec<u8>,
    /// The store had a record of this path (with other content): a change, not an addition.
    pub seen_before: bool,
}

#[derive(Default)]
pub(super) struct Batch {
    files: Vec<Pending>,
    outboard_bytes: usize,
}

impl Batch {
    pub fn push(&mut self, file: Pending) {
        self.outboard_bytes += file.outboard.len();
        self.files.push(file);
    }

    pub fn is_full(&self) -> bool {
        self.files.len() >= MAX_FILES || self.outboard_bytes >= MAX_OUTBOARD_BYTES
    }
}

impl Store {
    /// Records every file of `batch` (see the module doc) and empties it. A file whose outboard
    /// or record cannot be written is skipped and reported, as a file that cannot be read is;
    /// a storage error aborts, as it does for one file.
    pub(super) fn record_batch(&self, batch: &mut Batch, report: &mut ScanReport) -> Result<(), StoreError> {
        let files = std::mem::take(&mut batch.files);
        batch.outboard_bytes = 0;
        if files.is_empty() {
            return Ok(());
        }
        let mut summary = self.lock();
        let mut written: Vec<ContentId> = Vec::new();
        let mut ready = Vec::with_capacity(files.len());
        for file in files {
            let id = file.entry.id;
            match self.outboards.put_bytes_unsynced(&id, &file.outboard) {
                Ok(true) => written.push(id),
                Ok(false) => {}
                Err(e) => {
                    report.skip(file.path, &StoreError::Io { path: self.outboards.path(&id), source: e });
                    continue;
                }
            }
            ready.push(file);
        }
        self.outboards.sync(&written).map_err(StoreError::io(self.outboards.dir()))?;
        for file in ready {
            let (id, path, seen_before) = (file.entry.id, file.path, file.seen_before);
            let outboard = NewOutboard::Synced(file.outboard);
            let change = match self.record_locked(&mut summary, &path, file.entry, file.info, outboard) {
                Ok(change) => change,
                Err(e) if e.is_about_one_file() => {
                    report.skip(path, &e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            report.hashed += 1;
            if change.entered.is_some() {
                let list = if seen_before { &mut report.changed } else { &mut report.added };
                list.push(id);
            }
            report.removed.extend(change.left);
        }
        Ok(())
    }
}
