//! One process per data dir, and a clear word when a second one tries.
//!
//! The stores under a data dir (sled) lock their own files, but a second process learns that
//! as sled's raw `WouldBlock` error, several layers deep. Before opening anything, each binary
//! takes an exclusive lock on `DATA_DIR/LOCK` and writes its pid into it, so a second one can
//! say which process holds the dir. The lock is `flock`-style (`File::try_lock`): the kernel
//! drops it when the holder exits, however it exits, so a crash leaves no stale lock behind
//! (the pid in the file may be stale; it is only read while the lock is held).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// The lock file's name inside the data dir.
pub const LOCK_FILE: &str = "LOCK";

/// Held for as long as the process uses the data dir; dropping it releases the lock.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another {owner}{} uses {}: stop it first, or give this one another data dir",
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
        dir.display()
    )]
    Held { owner: &'static str, pid: Option<u32>, dir: PathBuf },
    #[error("cannot lock the data dir {}: {source}", dir.display())]
    Io { dir: PathBuf, source: std::io::Error },
}

impl DataDirLock {
    /// Creates `dir` if needed and locks it for this process; `owner` names what this process
    /// is ("quaver node", "quaver-directory"), for the message a second one prints.
    pub fn acquire(dir: &Path, owner: &'static str) -> Result<DataDirLock, LockError> {
        let io = |source| LockError::Io { dir: dir.to_owned(), source };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(LOCK_FILE))
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut text = String::new();
                let pid = file.read_to_string(&mut text).ok().and_then(|_| text.trim().parse().ok());
                return Err(LockError::Held { owner, pid, dir: dir.to_owned() });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(DataDirLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_dir_names_the_holder_and_a_released_one_is_free_again() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let first = DataDirLock::acquire(&data, "quaver node").unwrap();
        let err = DataDirLock::acquire(&data, "quaver node").unwrap_err();
        let me = std::process::id();
        assert!(matches!(err, LockError::Held { pid: Some(p), .. } if p == me), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!(
                "another quaver node (pid {me}) uses {}: stop it first, or give this one another data dir",
                data.display()
            )
        );
        drop(first);
        DataDirLock::acquire(&data, "quaver node").expect("free once the holder is gone");
    }
}
