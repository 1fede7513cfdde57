//! Free space, checked before a download starts: a download that cannot fit is refused with
//! the numbers, instead of filling the disk and failing at some percent.
//!
//! What a download still needs: on the work dir's filesystem, the `.part` file's unallocated
//! rest (it is sparse: blocks take room as they are written) and the outboard unless one is
//! saved; on the destination's filesystem, the whole file again if that is another filesystem
//! (the finish copies across, see `fetch::partfile`), nothing if it is the same one (a link).
//! [`shortfall`] decides from those numbers; [`check`] gathers them with `stat` and `statvfs`.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use quaver_shared::ContentId;

/// A filesystem a download does not fit on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "not enough disk space: the download needs {} ({needed} bytes) more on {} ({what}), which has {} ({free} bytes) free; free some space or choose another folder",
    human(*needed), path.display(), human(*free)
)]
pub struct NoSpace {
    pub path: PathBuf,
    pub what: &'static str,
    pub needed: u64,
    pub free: u64,
}

/// One filesystem's side of the sum: where it is, its device, its free bytes.
#[derive(Clone, Debug)]
pub struct Fs {
    pub path: PathBuf,
    pub device: u64,
    pub free: u64,
}

/// The first filesystem the download does not fit on, if any. `allocated` is what the `.part`
/// file holds on disk already, `outboard` what the outboard still needs (0 if saved).
pub fn shortfall(work: &Fs, out: &Fs, size: u64, allocated: u64, outboard: u64) -> Option<NoSpace> {
    let on_work = size.saturating_sub(allocated).saturating_add(outboard);
    if work.device == out.device {
        return (on_work > work.free).then(|| NoSpace {
            path: out.path.clone(),
            what: "the download folder and the partial download",
            needed: on_work,
            free: work.free,
        });
    }
    if on_work > work.free {
        return Some(NoSpace {
            path: work.path.clone(),
            what: "the partial download",
            needed: on_work,
            free: work.free,
        });
    }
    (size > out.free).then(|| NoSpace {
        path: out.path.clone(),
        what: "the download folder",
        needed: size,
        free: out.free,
    })
}

/// Checks that a download of `id` (`size` bytes) with its state in `work_dir` and its file
/// going to `out_dir` fits. Either folder may not exist yet: its nearest existing parent is
/// asked. An error asking is not a refusal (the download then meets the disk as it is).
pub fn check(work_dir: &Path, out_dir: &Path, id: &ContentId, size: u64) -> Result<(), NoSpace> {
    let (Ok(work), Ok(out)) = (filesystem(work_dir), filesystem(out_dir)) else { return Ok(()) };
    let base = work_dir.join(id.to_hex());
    let allocated = std::fs::metadata(base.with_extension("part")).map_or(0, |m| m.blocks() * 512);
    let outboard =
        if base.with_extension("outboard").exists() { 0 } else { crate::store::hash::outboard_len(size) };
    match shortfall(&work, &out, size, allocated, outboard) {
        Some(no) => Err(no),
        None => Ok(()),
    }
}

/// The filesystem `path` is (or would be) on.
fn filesystem(path: &Path) -> io::Result<Fs> {
    let existing = path.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/"));
    let device = std::fs::metadata(existing)?.dev();
    Ok(Fs { path: path.to_owned(), device, free: free_bytes(existing)? })
}

/// Bytes an unprivileged user may still write on the filesystem of `path`.
fn free_bytes(path: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: statvfs reads the NUL-terminated path and fills the struct it is given.
    if unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it filled the struct.
    let st = unsafe { st.assume_init() };
    #[allow(clippy::useless_conversion)] // the field types differ between platforms
    Ok(u64::from(st.f_bavail).saturating_mul(u64::from(st.f_frsize)))
}

/// `n` bytes for people: "20.0 MiB".
fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} bytes") } else { format!("{value:.1} {}", UNITS[unit]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fs(path: &str, device: u64, free: u64) -> Fs {
        Fs { path: PathBuf::from(path), device, free }
    }

    #[test]
    fn one_filesystem_needs_the_rest_of_the_part_and_the_outboard_once() {
        let disk = fs("/home/me/Music", 1, 1000);
        assert_eq!(shortfall(&disk, &disk, 990, 0, 10), None);
        let no = shortfall(&disk, &disk, 990, 0, 11).unwrap();
        assert_eq!((no.needed, no.free), (1001, 1000));
        // Blocks already written take no more room.
        assert_eq!(shortfall(&disk, &disk, 2000, 1100, 0), None);
    }

    #[test]
    fn another_filesystem_needs_the_whole_file_there_too() {
        let (work, small) = (fs("/data/partial", 1, 10_000), fs("/mnt/usb", 2, 500));
        let no = shortfall(&work, &small, 600, 0, 5).unwrap();
        assert_eq!(no.path, PathBuf::from("/mnt/usb"));
        assert_eq!((no.needed, no.free), (600, 500));
        let msg = no.to_string();
        assert!(msg.contains("600 bytes") && msg.contains("500 bytes") && msg.contains("/mnt/usb"), "{msg}");
        let full = fs("/data/partial", 1, 100);
        assert_eq!(shortfall(&full, &fs("/mnt/usb", 2, 10_000), 600, 0, 5).unwrap().path, full.path);
    }

    #[test]
    fn the_free_space_of_a_real_folder_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("not/yet");
        let here = filesystem(&missing).unwrap();
        assert_eq!(here.device, std::fs::metadata(dir.path()).unwrap().dev());
        assert!(here.free > 0);
        assert_eq!(human(20 * 1024 * 1024), "20.0 MiB");
        assert_eq!(human(12), "12 bytes");
    }
}
