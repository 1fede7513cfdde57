//! A backup on disk: a directory with the snapshot and its manifest, created atomically and
//! checked before anything trusts it.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{BackupError, FORMAT_VERSION, SnapshotSummary};

pub const SNAPSHOT_FILE: &str = "catalog.qvsnap";
pub const MANIFEST_FILE: &str = "manifest.json";
/// Larger than any manifest we write; a bigger file is not ours.
const MAX_MANIFEST_BYTES: u64 = 64 * 1024;
const FORMAT_NAME: &str = "quaver-directory-backup";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeRecords {
    pub name: String,
    pub records: u64,
}

/// `manifest.json`: what the backup holds and how to check it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always "quaver-directory-backup".
    pub format: String,
    pub format_version: u32,
    /// When the snapshot was taken (the clock of the machine that took it).
    pub created_unix_ms: u64,
    /// Version of the `quaver-directory` that took it.
    pub server_version: String,
    pub snapshot_file: String,
    pub snapshot_bytes: u64,
    /// BLAKE3 of the snapshot file, 64 hex digits.
    pub snapshot_blake3: String,
    /// Records per catalog tree.
    pub trees: Vec<TreeRecords>,
    /// What a restore does about what the backup leaves out (for the human reading it).
    pub notes: Vec<String>,
}

impl Manifest {
    pub fn new(created_unix_ms: u64, server_version: &str, summary: &SnapshotSummary) -> Self {
        Self {
            format: FORMAT_NAME.into(),
            format_version: FORMAT_VERSION,
            created_unix_ms,
            server_version: server_version.into(),
            snapshot_file: SNAPSHOT_FILE.into(),
            snapshot_bytes: summary.bytes,
            snapshot_blake3: hex::encode(summary.blake3),
            trees: summary.trees.clone(),
            notes: vec![
                "The search index is not included: the directory rebuilds it from the catalog at its \
                 first start after a restore."
                    .into(),
                "Presence is not included: every peer starts offline and announces again.".into(),
            ],
        }
    }

    /// Records in the tree called `name` (0 if absent).
    pub fn records(&self, name: &str) -> u64 {
        self.trees.iter().find(|t| t.name == name).map_or(0, |t| t.records)
    }
}

pub fn now_unix_ms() -> u64 {
    crate::catalog::now_unix_ms()
}

/// `DIR.tmp` for a backup that will become `DIR`.
fn temporary_path(to: &Path) -> PathBuf {
    let mut name = to.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".tmp");
    to.with_file_name(name)
}

/// A backup being written: `DIR.tmp` until [`PendingBackup::finish`] renames it to `DIR`.
/// Dropped unfinished, it removes `DIR.tmp`.
pub struct PendingBackup {
    to: PathBuf,
    tmp: PathBuf,
    snapshot: File,
}

impl PendingBackup {
    /// Refuses an existing `to` (a backup never overwrites one) or a leftover `DIR.tmp` (an
    /// interrupted backup, or somebody else's directory: left for a human to look at).
    pub fn create(to: &Path) -> Result<Self, BackupError> {
        if to.file_name().is_none() {
            return Err(BackupError::Refused(format!("{} does not name a directory", to.display())));
        }
        if to.exists() {
            return Err(BackupError::Refused(format!(
                "{} already exists; a backup never overwrites another, choose a new directory",
                to.display()
            )));
        }
        let tmp = temporary_path(to);
        if tmp.exists() {
            return Err(BackupError::Refused(format!(
                "{} exists (an interrupted backup?); remove it and try again",
                tmp.display()
            )));
        }
        std::fs::create_dir_all(&tmp).map_err(BackupError::io(format!("creating {}", tmp.display())))?;
        let path = tmp.join(SNAPSHOT_FILE);
        match File::create(&path) {
            Ok(snapshot) => Ok(Self { to: to.to_owned(), tmp, snapshot }),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                Err(BackupError::Io { context: format!("creating {}", path.display()), source: e })
            }
        }
    }

    /// Where the snapshot's bytes go.
    pub fn snapshot_writer(&mut self) -> &mut File {
        &mut self.snapshot
    }

    /// Checks the snapshot written matches `summary`, writes the manifest (recording
    /// `server_version`, the version of the server that took the snapshot), makes both durable
    /// and renames `DIR.tmp` to `DIR`.
    pub fn finish(
        self,
        created_unix_ms: u64,
        server_version: &str,
        summary: &SnapshotSummary,
    ) -> Result<Manifest, BackupError> {
        let snapshot_path = self.tmp.join(SNAPSHOT_FILE);
        self.snapshot.sync_all().map_err(BackupError::io(format!("syncing {}", snapshot_path.display())))?;
        let on_disk = std::fs::metadata(&snapshot_path)
            .map_err(BackupError::io(format!("reading {}", snapshot_path.display())))?
            .len();
        if on_disk != summary.bytes {
            return Err(BackupError::Corrupt(format!(
                "wrote {on_disk} bytes of snapshot, expected {}",
                summary.bytes
            )));
        }
        let manifest = Manifest::new(created_unix_ms, server_version, summary);
        let text = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| BackupError::Corrupt(format!("cannot encode the manifest: {e}")))?;
        let manifest_path = self.tmp.join(MANIFEST_FILE);
        let mut file = File::create(&manifest_path)
            .map_err(BackupError::io(format!("creating {}", manifest_path.display())))?;
        file.write_all(&text)
            .and_then(|()| file.sync_all())
            .map_err(BackupError::io(format!("writing {}", manifest_path.display())))?;
        sync_dir(&self.tmp)?;
        std::fs::rename(&self.tmp, &self.to).map_err(BackupError::io(format!(
            "renaming {} to {}",
            self.tmp.display(),
            self.to.display()
        )))?;
        if let Some(parent) = self.to.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
        Ok(manifest)
    }
}

impl Drop for PendingBackup {
    fn drop(&mut self) {
        // After a successful rename `tmp` no longer exists and this does nothing.
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}

/// Makes a directory's entries (a rename, a new file) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), BackupError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(BackupError::io(format!("syncing directory {}", dir.display())))
}

/// Reads and checks `from/manifest.json`, and returns it with the snapshot's path. The
/// snapshot itself is checked by reading it (`snapshot::read` and the hash in the manifest).
pub fn open(from: &Path) -> Result<(Manifest, PathBuf), BackupError> {
    let manifest_path = from.join(MANIFEST_FILE);
    let meta = std::fs::metadata(&manifest_path).map_err(|e| {
        BackupError::Corrupt(format!("{} is not a backup: cannot read {MANIFEST_FILE}: {e}", from.display()))
    })?;
    if meta.len() > MAX_MANIFEST_BYTES {
        return Err(BackupError::Corrupt(format!("{MANIFEST_FILE} is {} bytes; not ours", meta.len())));
    }
    let text = std::fs::read(&manifest_path)
        .map_err(BackupError::io(format!("reading {}", manifest_path.display())))?;
    let manifest: Manifest = serde_json::from_slice(&text)
        .map_err(|e| BackupError::Corrupt(format!("{MANIFEST_FILE} is invalid: {e}")))?;
    if manifest.format != FORMAT_NAME || manifest.format_version != FORMAT_VERSION {
        return Err(BackupError::Corrupt(format!(
            "format {} version {}; this quaver-directory restores {FORMAT_NAME} version {FORMAT_VERSION}",
            manifest.format, manifest.format_version
        )));
    }
    if manifest.snapshot_file != SNAPSHOT_FILE {
        return Err(BackupError::Corrupt(format!(
            "unexpected snapshot file name {:?}",
            manifest.snapshot_file
        )));
    }
    let snapshot = from.join(SNAPSHOT_FILE);
    let len = std::fs::metadata(&snapshot)
        .map_err(|e| BackupError::Corrupt(format!("cannot read {}: {e}", snapshot.display())))?
        .len();
    if len != manifest.snapshot_bytes {
        return Err(BackupError::Corrupt(format!(
            "{SNAPSHOT_FILE} is {len} bytes, the manifest says {} (truncated or altered)",
            manifest.snapshot_bytes
        )));
    }
    Ok((manifest, snapshot))
}

/// Checks a snapshot read back matches its manifest.
pub fn matches(manifest: &Manifest, read: &SnapshotSummary) -> Result<(), BackupError> {
    if hex::encode(read.blake3) != manifest.snapshot_blake3 || read.bytes != manifest.snapshot_bytes {
        return Err(BackupError::Corrupt(format!(
            "{SNAPSHOT_FILE} does not match the BLAKE3 hash in the manifest (altered or damaged)"
        )));
    }
    if read.trees != manifest.trees {
        return Err(BackupError::Corrupt("record counts differ from the manifest".into()));
    }
    Ok(())
}
