//! Outboards as files: `<dir>/<content id in hex>`, one per shared id, next to the sled
//! database rather than inside it.
//!
//! Why files: an outboard is 4 MiB per GiB of file. As a sled value it was read whole for every
//! request that served it, and storing a finished download's outboard meant reading it into
//! memory and handing it to a transaction, which holds copies of it in sled's log and cache:
//! about 50 MiB of a downloader's peak for a 4 GiB file. As a file, a finished download's
//! outboard is renamed into place (no byte of it is read), and serving it streams it in pieces.
//!
//! Consistency with the records (the store keeps these rules; see `write.rs`):
//! - **Written before the record, removed after it.** A file is complete on disk (written to a
//!   temporary name, synced, renamed) before the transaction that shares its id commits, and
//!   removed only after the transaction that stops sharing it. So every shared id has its
//!   outboard, whatever the moment of a crash.
//! - **Orphans are swept on open.** A crash between the two steps can leave a file whose id is
//!   not shared (or a temporary one); [`OutboardFiles::sweep`] removes them.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use quaver_shared::ContentId;

/// Suffix of a file being written; never a complete outboard.
const TMP: &str = "tmp";

/// The directory of outboard files (see the module doc).
pub(super) struct OutboardFiles {
    dir: PathBuf,
}

impl OutboardFiles {
    /// Opens `dir`, creating it if needed.
    pub fn open(dir: &Path) -> io::Result<OutboardFiles> {
        fs::create_dir_all(dir)?;
        Ok(OutboardFiles { dir: dir.to_owned() })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where `id`'s outboard is (whether or not it exists).
    pub fn path(&self, id: &ContentId) -> PathBuf {
        self.dir.join(id.to_hex())
    }

    /// Length of `id`'s outboard file, or `None` if there is none.
    pub fn len(&self, id: &ContentId) -> io::Result<Option<u64>> {
        match fs::metadata(self.path(id)) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Stores `bytes` as `id`'s outboard, durably and atomically (a reader or a crash sees the
    /// old file or the new one, never part of one).
    pub fn put_bytes(&self, id: &ContentId, bytes: &[u8]) -> io::Result<()> {
        let tmp = self.path(id).with_extension(TMP);
        let written = (|| {
            let mut file = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
            file.write_all(bytes)?;
            file.sync_all()
        })();
        self.commit(&tmp, id, written)
    }

    /// Writes `bytes` as `id`'s outboard without waiting for the disk, unless `id` has an
    /// outboard file already (then nothing is written: false). For a scan's batch (`batch.rs`),
    /// which makes its writes durable with one [`OutboardFiles::sync`] before any record that
    /// needs them commits. It never replaces a file: a replacement not yet synced could leave a
    /// shared id with a torn outboard after a power cut.
    pub fn put_bytes_unsynced(&self, id: &ContentId, bytes: &[u8]) -> io::Result<bool> {
        if self.len(id)?.is_some() {
            return Ok(false);
        }
        let tmp = self.path(id).with_extension(TMP);
        let written = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .and_then(|mut file| file.write_all(bytes));
        match written.and_then(|()| fs::rename(&tmp, self.path(id))) {
            Ok(()) => Ok(true),
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    /// `put_bytes`, unless `id`'s outboard file is there with `bytes`' length already (a batch
    /// wrote and synced it; an outboard is a function of the content, so the length is the
    /// only thing that can differ, in a file torn by a crash).
    pub fn ensure_bytes(&self, id: &ContentId, bytes: &[u8]) -> io::Result<()> {
        match self.len(id)? {
            Some(len) if len == bytes.len() as u64 => Ok(()),
            _ => self.put_bytes(id, bytes),
        }
    }

    /// Makes the outboards of `written` (by [`OutboardFiles::put_bytes_unsynced`]) durable,
    /// their names included: a sync of each file, then one of the directory for all their
    /// names, where `put_bytes` syncs the directory after every file (0.86 ms a file for 300
    /// files on the project's VM, against 1.7 ms). One `syncfs` for the batch would cost 0.13
    /// ms a file, but it also flushes everything else waiting on that filesystem: the shared
    /// files themselves when they were just copied in, which made sharing one fresh 1 GiB file
    /// a third slower.
    pub fn sync(&self, written: &[ContentId]) -> io::Result<()> {
        if written.is_empty() {
            return Ok(());
        }
        for id in written {
            File::open(self.path(id))?.sync_all()?;
        }
        self.sync_dir()
    }

    /// Makes the file at `from` (a finished download's outboard) `id`'s outboard: renamed into
    /// place when it is on the same filesystem, copied otherwise. `from` is gone afterwards.
    pub fn put_file(&self, id: &ContentId, from: &Path) -> io::Result<()> {
        File::open(from)?.sync_all()?;
        if fs::rename(from, self.path(id)).is_ok() {
            return self.sync_dir();
        }
        let tmp = self.path(id).with_extension(TMP);
        let copied = fs::copy(from, &tmp).and_then(|_| File::open(&tmp)?.sync_all());
        self.commit(&tmp, id, copied)?;
        let _ = fs::remove_file(from);
        Ok(())
    }

    /// Renames a fully written `tmp` into place, or removes it if writing it failed.
    fn commit(&self, tmp: &Path, id: &ContentId, written: io::Result<()>) -> io::Result<()> {
        match written.and_then(|()| fs::rename(tmp, self.path(id))) {
            Ok(()) => self.sync_dir(),
            Err(e) => {
                let _ = fs::remove_file(tmp);
                Err(e)
            }
        }
    }

    /// Removes `id`'s outboard; a missing one is fine. Failing leaves an orphan for the next
    /// sweep, never a shared id without its outboard, so the error is only logged.
    pub fn remove(&self, id: &ContentId) {
        match fs::remove_file(self.path(id)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(id = %id, error = %e, "cannot remove an outboard; it is swept on the next start")
            }
        }
    }

    /// Removes every file that is not the outboard of an id `shared` says is shared: orphans
    /// of a crash, temporary files, strays. Returns how many it removed.
    pub fn sweep(&self, mut shared: impl FnMut(&ContentId) -> io::Result<bool>) -> io::Result<usize> {
        let mut removed = 0;
        for dirent in fs::read_dir(&self.dir)? {
            let dirent = dirent?;
            let name = dirent.file_name();
            // Only the exact name `path` gives counts: not an upper-case spelling of an id.
            let id = name.to_str().and_then(|n| n.parse::<ContentId>().ok().filter(|id| id.to_hex() == n));
            let keep = match id {
                Some(id) => shared(&id)?,
                None => false,
            };
            if !keep {
                fs::remove_file(dirent.path())?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ContentId {
        ContentId::of_bytes(&[n])
    }

    #[test]
    fn bytes_and_files_land_under_the_id_and_sources_are_consumed() {
        let tmp = tempfile::tempdir().unwrap();
        let files = OutboardFiles::open(&tmp.path().join("outboards")).unwrap();
        assert_eq!(files.len(&id(1)).unwrap(), None);
        files.put_bytes(&id(1), b"first").unwrap();
        assert_eq!(fs::read(files.path(&id(1))).unwrap(), b"first");
        files.put_bytes(&id(1), b"replaced").unwrap();
        assert_eq!(files.len(&id(1)).unwrap(), Some(8));

        let download = tmp.path().join("x.outboard");
        fs::write(&download, b"from a download").unwrap();
        files.put_file(&id(2), &download).unwrap();
        assert!(!download.exists());
        assert_eq!(fs::read(files.path(&id(2))).unwrap(), b"from a download");
        assert!(files.put_file(&id(3), &download).is_err(), "a missing source is an error");

        files.remove(&id(1));
        files.remove(&id(1));
        assert_eq!(files.len(&id(1)).unwrap(), None);
    }

    #[test]
    fn unsynced_writes_never_replace_and_ensure_repairs_what_is_missing_or_torn() {
        let tmp = tempfile::tempdir().unwrap();
        let files = OutboardFiles::open(tmp.path()).unwrap();
        assert!(files.put_bytes_unsynced(&id(1), b"first").unwrap());
        assert!(!files.put_bytes_unsynced(&id(1), b"other").unwrap(), "written over");
        files.sync(&[id(1)]).unwrap();
        assert_eq!(fs::read(files.path(&id(1))).unwrap(), b"first");

        // Missing: written. Torn (another length): written again. Whole: left as it is.
        files.ensure_bytes(&id(2), b"second").unwrap();
        assert_eq!(fs::read(files.path(&id(2))).unwrap(), b"second");
        fs::write(files.path(&id(2)), b"sec").unwrap();
        files.ensure_bytes(&id(2), b"second").unwrap();
        assert_eq!(fs::read(files.path(&id(2))).unwrap(), b"second");
        files.ensure_bytes(&id(1), b"FIRST").unwrap();
        assert_eq!(fs::read(files.path(&id(1))).unwrap(), b"first");
        let names: Vec<_> = fs::read_dir(tmp.path()).unwrap().map(|d| d.unwrap().file_name()).collect();
        assert_eq!(names.len(), 2, "no temporary file left: {names:?}");
    }

    #[test]
    fn sweep_keeps_only_outboards_of_shared_ids() {
        let tmp = tempfile::tempdir().unwrap();
        let files = OutboardFiles::open(tmp.path()).unwrap();
        for n in 1..=3 {
            files.put_bytes(&id(n), &[n]).unwrap();
        }
        fs::write(files.path(&id(4)).with_extension(TMP), b"half written").unwrap();
        fs::write(tmp.path().join("stray"), b"?").unwrap();
        let removed = files.sweep(|i| Ok(*i != id(2))).unwrap();
        assert_eq!(removed, 3);
        let mut left: Vec<_> = fs::read_dir(tmp.path()).unwrap().map(|d| d.unwrap().file_name()).collect();
        left.sort();
        let mut want: Vec<std::ffi::OsString> = vec![id(1).to_hex().into(), id(3).to_hex().into()];
        want.sort();
        assert_eq!(left, want);
    }
}
