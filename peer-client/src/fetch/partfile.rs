//! A download's state on disk, so that it survives `kill -9` at any moment:
//!
//! - `<id>.part`: the file being assembled, full size from the start, blocks written at their
//!   offsets;
//! - `<id>.blocks`: one byte per block, 1 when that block's bytes in `.part` were verified;
//! - `<id>.outboard`: the verified outboard, so a resumed download need not fetch it again.
//!
//! Order is what makes it safe: a block's bytes are written before its byte in `.blocks`, and
//! a sync flushes `.part` before `.blocks`. A process crash keeps both in the page cache; a power
//! cut can lose marks, and the kernel may write a mark back before its bytes. On resume the
//! marked blocks are checked against the outboard once more anyway (cheap), and a block that
//! fails is simply fetched again.
//!
//! The periodic syncs run on a thread of their own: flushing 16 MiB takes tens of milliseconds
//! on an ordinary disk, and the download loop that calls `write_block` must not stop verifying
//! and requesting for that long. At most one sync runs at a time; `sync` and `finish` wait
//! for it; a dropped `PartFile` lets it finish on its own (it holds its own descriptors).
//!
//! After each sync the kernel is told to drop the `.part` pages that are on disk now, so a
//! download keeps a few dozen MiB of page cache, not the whole file: a big download does not
//! push the user's other files out of memory, and new writes land in pages the kernel just
//! freed instead of fresh ones. The latter is most of the downloader's kernel time on a VM
//! whose host takes free pages back (balloon page reporting): there every first touch of a
//! fresh page faults in the host. Measured on this project's 2-core VM, writing 1 GiB in
//! 256 KiB blocks cost 1.5 s of system time into fresh pages and 0.6 s with a sync-and-drop
//! every 16 MiB on another thread.
//!
//! The finished file is linked (or renamed) to its destination. A destination on another
//! filesystem (`--out` or `--download-dir` on another disk than the data dir) cannot be
//! linked or renamed to: the file is copied there instead, hashed as it is read (it must still
//! be the content id's bytes), synced, then renamed into place, so the destination never holds
//! a partial or unchecked file under its real name.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use quaver_shared::ContentId;

use super::scheduler::Block;

pub struct PartFile {
    id: ContentId,
    part: File,
    marks: File,
    verified: Vec<bool>,
    unsynced: usize,
    /// The background sync in progress, if any (see the module doc).
    syncing: Option<JoinHandle<io::Result<()>>>,
    paths: Paths,
}

struct Paths {
    part: PathBuf,
    marks: PathBuf,
    outboard: PathBuf,
}

impl Paths {
    fn new(work_dir: &Path, id: &ContentId) -> Self {
        let base = work_dir.join(id.to_hex());
        Self {
            part: base.with_extension("part"),
            marks: base.with_extension("blocks"),
            outboard: base.with_extension("outboard"),
        }
    }
}

/// Marks are flushed to disk after this many newly verified blocks.
const SYNC_EVERY: usize = 64;

impl PartFile {
    /// Opens the state of a download of `size` bytes in `blocks` blocks, creating it if new.
    pub fn open(work_dir: &Path, id: &ContentId, size: u64, blocks: usize) -> io::Result<Self> {
        std::fs::create_dir_all(work_dir)?;
        let paths = Paths::new(work_dir, id);
        let part =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&paths.part)?;
        if part.metadata()?.len() != size {
            part.set_len(size)?;
        }
        let marks =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&paths.marks)?;
        let mut bytes = vec![0u8; blocks];
        if marks.metadata()?.len() == blocks as u64 {
            marks.read_exact_at(&mut bytes, 0)?;
        } else {
            // Missing or from another shape of download: start over, nothing is trusted.
            marks.set_len(0)?;
            marks.set_len(blocks as u64)?;
            bytes.fill(0);
        }
        let verified = bytes.iter().map(|b| *b == 1).collect();
        Ok(Self { id: *id, part, marks, verified, unsynced: 0, syncing: None, paths })
    }

    /// The `.part` file, the marks and the saved outboard (for error messages).
    pub fn part_path(&self) -> &Path {
        &self.paths.part
    }

    pub fn marks_path(&self) -> &Path {
        &self.paths.marks
    }

    pub fn outboard_path(&self) -> &Path {
        &self.paths.outboard
    }

    /// Blocks a previous run marked verified.
    pub fn marked_blocks(&self) -> Vec<Block> {
        self.verified.iter().enumerate().filter(|(_, v)| **v).map(|(i, _)| i as Block).collect()
    }

    /// Forgets a mark (the bytes failed the re-check on resume).
    pub fn unmark(&mut self, block: Block) -> io::Result<()> {
        if let Some(v) = self.verified.get_mut(block as usize) {
            *v = false;
            self.marks.write_all_at(&[0], u64::from(block))?;
        }
        Ok(())
    }

    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.part.read_exact_at(buf, offset)
    }

    /// Writes a verified block's bytes at `offset`, then marks it.
    pub fn write_block(&mut self, block: Block, offset: u64, bytes: &[u8]) -> io::Result<()> {
        self.part.write_all_at(bytes, offset)?;
        self.marks.write_all_at(&[1], u64::from(block))?;
        if let Some(v) = self.verified.get_mut(block as usize) {
            *v = true;
        }
        self.unsynced += 1;
        if self.unsynced >= SYNC_EVERY {
            self.sync_in_background()?;
        }
        Ok(())
    }

    /// Starts flushing what was written so far on a thread of its own, unless the previous
    /// flush is still running (then the next block tries again). Reports the previous flush's
    /// error, if it had one.
    fn sync_in_background(&mut self) -> io::Result<()> {
        if self.syncing.as_ref().is_some_and(|s| !s.is_finished()) {
            return Ok(());
        }
        self.wait_for_sync()?;
        let (part, marks) = (self.part.try_clone()?, self.marks.try_clone()?);
        let sync = std::thread::Builder::new()
            .name("quaver-part-sync".into())
            .spawn(move || flush(&part, &marks))?;
        self.syncing = Some(sync);
        self.unsynced = 0;
        Ok(())
    }

    /// Waits for the background flush, if one runs, and returns its outcome.
    fn wait_for_sync(&mut self) -> io::Result<()> {
        match self.syncing.take().map(JoinHandle::join) {
            None => Ok(()),
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(io::Error::other("the sync thread panicked")),
        }
    }

    /// Flushes data before marks (see the module doc), after any background flush.
    pub fn sync(&mut self) -> io::Result<()> {
        self.wait_for_sync()?;
        flush(&self.part, &self.marks)?;
        self.unsynced = 0;
        Ok(())
    }

    /// The outboard a previous run kept, open for reading, with its length.
    pub fn saved_outboard(&self) -> Option<(File, u64)> {
        let file = File::open(&self.paths.outboard).ok()?;
        let len = file.metadata().ok()?.len();
        Some((file, len))
    }

    /// A fresh, empty file to receive copy `n` of an outboard into (several sources may be
    /// asked at once); [`PartFile::keep_outboard`] makes one the saved outboard once it checks
    /// out. The download verifies blocks against it in place, so the outboard is never held in
    /// memory whole.
    pub fn new_outboard(&self, n: usize) -> io::Result<(File, PathBuf)> {
        let path = self.outboard_copy(n);
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path)?;
        Ok((file, path))
    }

    /// Keeps the outboard received at `copy` for a resumed run (renamed into place: a crash
    /// leaves the old one or the new one, never half of one).
    pub fn keep_outboard(&self, copy: &Path) -> io::Result<()> {
        std::fs::rename(copy, &self.paths.outboard)
    }

    /// Removes the copies `0..count` that were not kept (missing ones are fine).
    pub fn discard_outboard_copies(&self, count: usize) {
        for n in 0..count {
            let _ = std::fs::remove_file(self.outboard_copy(n));
        }
    }

    pub fn forget_outboard(&self) {
        let _ = std::fs::remove_file(&self.paths.outboard);
    }

    fn outboard_copy(&self, n: usize) -> PathBuf {
        self.paths.outboard.with_extension(format!("outboard.{n}.tmp"))
    }

    /// Moves the finished file to `dest` (which must not exist) and removes the state files,
    /// except the outboard: its path is returned, and the caller owns that file now (the store
    /// takes it over). Left behind by a crash, it serves a later download of the same id.
    pub fn finish(mut self, dest: &Path) -> io::Result<PathBuf> {
        self.sync()?;
        self.part.sync_all()?;
        let moved =
            std::fs::hard_link(&self.paths.part, dest).or_else(|_| std::fs::rename(&self.paths.part, dest));
        match moved {
            Err(e) if e.kind() == io::ErrorKind::CrossesDevices => copy_checked(&self.part, &self.id, dest)?,
            other => other?,
        }
        let _ = std::fs::remove_file(&self.paths.part);
        let _ = std::fs::remove_file(&self.paths.marks);
        if let Some(dir) = dest.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(self.paths.outboard.clone())
    }
}

/// Copies `part` to `dest` on another filesystem: into a hidden file beside `dest` (a rescan
/// skips it), hashed as it is read and compared with `id`, synced, then renamed to `dest`. A
/// copy that fails, or whose bytes are not `id`'s, is removed and `dest` never appears.
fn copy_checked(part: &File, id: &ContentId, dest: &Path) -> io::Result<()> {
    let name = dest.file_name().ok_or_else(|| io::Error::other("the destination has no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".quaver-copy");
    let tmp = dest.with_file_name(tmp_name);
    let copied = copy_hashing(part, &tmp).and_then(|root| {
        if root == *id {
            std::fs::rename(&tmp, dest)
        } else {
            Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the partial file no longer holds {id} (changed on disk?); get it again"),
            ))
        }
    });
    if copied.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    copied
}

/// Writes `part`'s bytes to a new file `to` (synced) and returns their BLAKE3 root.
fn copy_hashing(part: &File, to: &Path) -> io::Result<ContentId> {
    use std::io::Write as _;
    let out = OpenOptions::new().write(true).create_new(true).open(to)?;
    let mut out = io::BufWriter::with_capacity(1 << 20, out);
    let len = part.metadata()?.len();
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut offset = 0u64;
    while offset < len {
        let n = usize::try_from(len - offset).unwrap_or(usize::MAX).min(buf.len());
        part.read_exact_at(&mut buf[..n], offset)?;
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])?;
        offset += n as u64;
    }
    out.into_inner().map_err(io::IntoInnerError::into_error)?.sync_all()?;
    Ok(ContentId::from_array(*hasher.finalize().as_bytes()))
}

/// Data first, then the marks that vouch for it. The data's pages are on disk once its sync
/// returns, so they are dropped from the page cache (see the module doc).
fn flush(part: &File, marks: &File) -> io::Result<()> {
    part.sync_data()?;
    drop_clean_pages(part);
    marks.sync_data()
}

/// Asks the kernel to drop `file`'s cached pages that are clean (on disk). Pages written since
/// the last sync are dirty and stay. Advice only: a refusal changes nothing but memory use.
#[cfg(target_os = "linux")]
fn drop_clean_pages(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: posix_fadvise reads no memory of ours; the descriptor is open for the call
    // (borrowed from `file`). Offset 0 and length 0 mean the whole file.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        tracing::debug!(error = %io::Error::from_raw_os_error(rc), "cannot drop written pages from the cache");
    }
}

#[cfg(not(target_os = "linux"))]
fn drop_clean_pages(_file: &File) {}

/// `dir/name`, or `dir/stem (n).ext` for the first n that does not exist yet.
pub fn unused_path(dir: &Path, name: &str) -> PathBuf {
    let first = dir.join(name);
    if !first.exists() {
        return first;
    }
    let (stem, ext) = match name.rfind('.') {
        Some(dot) if dot > 0 => (&name[..dot], &name[dot..]),
        _ => (name, ""),
    };
    (1..).map(|n| dir.join(format!("{stem} ({n}){ext}"))).find(|p| !p.exists()).unwrap_or(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_survive_reopening_and_a_wrong_shape_resets_them() {
        let dir = tempfile::tempdir().unwrap();
        let id = ContentId::of_bytes(b"x");
        let mut p = PartFile::open(dir.path(), &id, 1000, 4).unwrap();
        p.write_block(2, 500, b"hello").unwrap();
        drop(p);
        let p = PartFile::open(dir.path(), &id, 1000, 4).unwrap();
        assert_eq!(p.marked_blocks(), vec![2]);
        let mut buf = [0u8; 5];
        p.read_at(500, &mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        drop(p);
        let p = PartFile::open(dir.path(), &id, 1000, 5).unwrap();
        assert!(p.marked_blocks().is_empty());
    }

    /// How many of `file`'s pages are in the page cache (`mincore` over a mapping of it).
    #[cfg(target_os = "linux")]
    fn cached_pages(file: &File, len: usize) -> usize {
        use std::os::fd::AsRawFd;
        let page = 4096;
        let pages = len.div_ceil(page);
        let mut resident = vec![0u8; pages];
        // SAFETY: a read-only shared mapping of `len` bytes of an open file, never dereferenced,
        // only passed to mincore (which fills one byte per page of `resident`) and unmapped.
        unsafe {
            let fd = file.as_raw_fd();
            let map = libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, fd, 0);
            assert_ne!(map, libc::MAP_FAILED, "{}", io::Error::last_os_error());
            assert_eq!(libc::mincore(map, len, resident.as_mut_ptr()), 0, "{}", io::Error::last_os_error());
            libc::munmap(map, len);
        }
        resident.iter().filter(|r| *r & 1 == 1).count()
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_sync_drops_the_written_pages_from_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        // tmpfs pages are the file itself: there is no disk to drop them to.
        let mut fs = std::mem::MaybeUninit::<libc::statfs>::uninit();
        let path = std::ffi::CString::new(dir.path().as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: statfs fills the struct it is given, from a NUL-terminated path.
        if unsafe { libc::statfs(path.as_ptr(), fs.as_mut_ptr()) } == 0
            // SAFETY: statfs returned 0, so it filled the struct.
            && unsafe { fs.assume_init() }.f_type == libc::TMPFS_MAGIC
        {
            eprintln!("skipped: the temporary directory is on tmpfs");
            return;
        }
        let id = ContentId::of_bytes(b"z");
        let (blocks, len) = (16usize, 64 * 1024);
        let mut p = PartFile::open(dir.path(), &id, (blocks * len) as u64, blocks).unwrap();
        for b in 0..blocks {
            p.write_block(b as Block, (b * len) as u64, &vec![b as u8; len]).unwrap();
        }
        let written = cached_pages(&p.part, blocks * len);
        assert!(written >= blocks * len / 4096 / 2, "written pages are cached at first ({written})");
        p.sync().unwrap();
        assert_eq!(cached_pages(&p.part, blocks * len), 0, "synced pages were dropped");
        // Nothing was lost: the bytes come back from disk.
        let mut buf = vec![0u8; len];
        p.read_at(5 * len as u64, &mut buf).unwrap();
        assert!(buf.iter().all(|b| *b == 5));
        assert_eq!(p.marked_blocks().len(), blocks);
    }

    #[test]
    fn a_checked_copy_lands_only_when_its_bytes_are_the_id() {
        let dir = tempfile::tempdir().unwrap();
        let data = vec![7u8; 3 * 1024 * 1024 + 5];
        let id = ContentId::of_bytes(&data);
        let part_path = dir.path().join("x.part");
        std::fs::write(&part_path, &data).unwrap();
        let part = File::open(&part_path).unwrap();
        let dest = dir.path().join("song.flac");
        copy_checked(&part, &id, &dest).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), data);
        let other = dir.path().join("other.flac");
        let err = copy_checked(&part, &ContentId::of_bytes(b"else"), &other).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(left.len(), 2, "neither the copy nor its temporary file is left: {left:?}");
    }

    #[test]
    fn finish_moves_without_overwriting() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("song.mp3"), b"old").unwrap();
        let dest = unused_path(dir.path(), "song.mp3");
        assert_eq!(dest, dir.path().join("song (1).mp3"));
        let id = ContentId::of_bytes(b"y");
        let mut p = PartFile::open(&dir.path().join("work"), &id, 3, 1).unwrap();
        p.write_block(0, 0, b"new").unwrap();
        p.finish(&dest).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"new");
        assert_eq!(std::fs::read(dir.path().join("song.mp3")).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path().join("work")).unwrap().count(), 0);
    }
}
