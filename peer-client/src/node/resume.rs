//! Downloads survive the daemon: each one leaves a `<id>.dest` note in the work dir (the folder
//! the file is going to) while it is unfinished, and a starting node resumes every download that
//! has one, from the blocks its `.part` file already verified.
//!
//! The note is written before the download starts and removed only once the file is shared, so
//! a crash at any moment leaves a note for every unfinished download. A download that fails
//! (no source online) keeps its note: the next start tries again, as a user would expect of a
//! download they asked for and never cancelled.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use quaver_shared::ContentId;

use super::Node;

/// Extension of the note a download leaves in the work dir while unfinished.
const NOTE: &str = "dest";
/// Attempts per unfinished download at start-up, and the pause between them: the directory may
/// not be reachable yet when the daemon starts.
const ATTEMPTS: u32 = 5;
const RETRY_AFTER: Duration = Duration::from_secs(10);

/// Records that `id` is being downloaded into `out_dir` (atomically: a crash leaves the old note
/// or the new one).
pub(super) async fn remember(work_dir: &Path, id: &ContentId, out_dir: &Path) -> std::io::Result<()> {
    tokio::fs::create_dir_all(work_dir).await?;
    // A temporary name of its own per write: a `get` and the resume at start may record the
    // same id at once, and with one shared name the second rename finds nothing to rename.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let note = note_path(work_dir, id);
    let tmp = note.with_extension(format!("dest.{n}.tmp"));
    tokio::fs::write(&tmp, out_dir.as_os_str().as_bytes()).await?;
    tokio::fs::rename(&tmp, &note).await
}

/// `id` is downloaded and shared: nothing to resume.
pub(super) async fn forget(work_dir: &Path, id: &ContentId) {
    match tokio::fs::remove_file(note_path(work_dir, id)).await {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            tracing::warn!(id = %id, error = %e, "cannot remove a finished download's note");
        }
        _ => {}
    }
}

fn note_path(work_dir: &Path, id: &ContentId) -> PathBuf {
    work_dir.join(id.to_hex()).with_extension(NOTE)
}

/// The unfinished downloads noted in `work_dir`, with their destination folders. Anything else
/// in the folder (partial files, a stray or unreadable note) is left alone.
pub(super) fn unfinished(work_dir: &Path) -> Vec<(ContentId, PathBuf)> {
    let Ok(dir) = std::fs::read_dir(work_dir) else { return Vec::new() };
    let mut out = Vec::new();
    for path in dir.flatten().map(|d| d.path()) {
        if path.extension() != Some(OsStr::new(NOTE)) {
            continue;
        }
        let id = path.file_stem().and_then(OsStr::to_str).and_then(|s| s.parse::<ContentId>().ok());
        match (id, std::fs::read(&path)) {
            (Some(id), Ok(dest)) if !dest.is_empty() => {
                out.push((id, PathBuf::from(OsStr::from_bytes(&dest))));
            }
            _ => tracing::warn!(note = %path.display(), "ignoring an unreadable download note"),
        }
    }
    out.sort();
    out
}

/// Resumes every unfinished download, each in its own task; a download that cannot start
/// (directory unreachable, file no longer listed) is tried again a few times, then left for
/// the next start or a `quaver get`.
pub(super) fn resume_all(node: &Arc<Node>) {
    let work_dir = node.downloads.work_dir().to_owned();
    let node = Arc::downgrade(node);
    tokio::spawn(async move {
        // Reading the work dir is disk work: off the runtime.
        let noted = tokio::task::spawn_blocking(move || unfinished(&work_dir)).await.unwrap_or_default();
        for (id, out_dir) in noted {
            tokio::spawn(resume_one(node.clone(), id, out_dir));
        }
    });
}

async fn resume_one(node: std::sync::Weak<Node>, id: ContentId, out_dir: PathBuf) {
    for attempt in 1..=ATTEMPTS {
        let Some(node) = node.upgrade() else { return };
        match node.get(id, Some(out_dir.clone()), None).await {
            Ok(_) => {
                tracing::info!(id = %id, "resuming an unfinished download");
                return;
            }
            Err(e) => tracing::info!(id = %id, attempt, error = %e, "cannot resume a download yet"),
        }
        drop(node);
        tokio::time::sleep(RETRY_AFTER).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn notes_list_unfinished_downloads_until_forgotten() {
        let work = tempfile::tempdir().unwrap();
        let (a, b) = (ContentId::of_bytes(b"a"), ContentId::of_bytes(b"b"));
        remember(work.path(), &a, Path::new("/music/new")).await.unwrap();
        remember(work.path(), &b, Path::new("/elsewhere")).await.unwrap();
        remember(work.path(), &a, Path::new("/music/other")).await.unwrap();
        // Not notes: partial state, a note with a bad name, an empty note.
        std::fs::write(work.path().join(format!("{}.part", a.to_hex())), b"").unwrap();
        std::fs::write(work.path().join("not-an-id.dest"), b"/x").unwrap();
        std::fs::write(work.path().join(format!("{}.dest", ContentId::of_bytes(b"c").to_hex())), b"")
            .unwrap();

        let mut want = vec![(a, PathBuf::from("/music/other")), (b, PathBuf::from("/elsewhere"))];
        want.sort();
        assert_eq!(unfinished(work.path()), want);
        forget(work.path(), &a).await;
        forget(work.path(), &a).await;
        assert_eq!(unfinished(work.path()), vec![(b, PathBuf::from("/elsewhere"))]);
        assert!(unfinished(&work.path().join("missing")).is_empty());
    }
}
