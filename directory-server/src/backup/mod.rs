//! Backup and restore of the directory's catalog.
//!
//! What a backup holds: the catalog's durable trees (`catalog::BACKUP_TREES`: files, their
//! keys, who shares what, and what the directory remembers of each peer between sessions),
//! read in one consistent moment. What it leaves out, on purpose:
//! - the search index: it is derived from the catalog, and a directory whose index is missing
//!   rebuilds it at start (`Directory::open` marks everything unindexed, `server` indexes the
//!   backlog before serving). A restore deletes the old index so that happens.
//! - presence (who is online, sessions, online sources): it lives in memory only. A restored
//!   directory starts with every peer offline; peers find out at their next heartbeat
//!   (UNAUTHENTICATED) and announce again, and the stored share-list digest spares them a full
//!   re-publish when it matches.
//!
//! A backup is a directory: `catalog.qvsnap` (the snapshot, format in [`snapshot`]) and
//! `manifest.json` ([`Manifest`]: format version, time, record counts, size and BLAKE3 of the
//! snapshot). It is written as `DIR.tmp` and renamed to `DIR` when complete, so `DIR` either
//! does not exist or holds a whole, checked backup.
//!
//! Two ways to take one: from a running server over the loopback-only `Admin.Backup` RPC
//! (`crate::admin`; sled lets one process open a database, so a second process cannot read
//! the live catalog), or offline from a data dir no server holds ([`offline`]).

pub mod archive;
pub mod restore;
pub mod snapshot;

use std::path::{Path, PathBuf};

pub use archive::{Manifest, SNAPSHOT_FILE, TreeRecords};
pub use restore::{RestoreReport, restore};

/// Version of the snapshot format and manifest; a restore refuses any other.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    /// The backup is damaged or not a backup; nothing was written.
    #[error("the backup is unusable: {0}")]
    Corrupt(String),
    /// The operation would destroy data or race a running server; nothing was written.
    #[error("{0}")]
    Refused(String),
    #[error("catalog: {0}")]
    Catalog(#[from] crate::catalog::CatalogError),
    #[error("storage: {0}")]
    Storage(#[from] sled::Error),
    #[error("cannot reach the directory at {url}: {detail}")]
    Connect { url: String, detail: String },
    /// The directory answered with an error, or with something this client cannot use.
    #[error("the directory answered: {0}")]
    Remote(String),
}

impl BackupError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| BackupError::Io { context, source }
    }
}

/// A snapshot's length, BLAKE3 hash and records per tree, as counted while writing or
/// reading it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotSummary {
    pub bytes: u64,
    pub blake3: [u8; 32],
    pub trees: Vec<TreeRecords>,
}

/// Where the catalog of a data dir lives (`Directory::open` uses the same layout).
pub fn catalog_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("catalog")
}

/// Where the search index of a data dir lives.
pub fn index_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("index")
}

/// Takes a backup of `data_dir` into `to` without a server: sled's lock makes this fail
/// with a clear error if a server holds the data dir (back that one up over `Admin.Backup`).
pub fn offline(data_dir: &Path, to: &Path) -> Result<Manifest, BackupError> {
    let catalog_path = catalog_dir(data_dir);
    if !catalog_path.is_dir() {
        return Err(BackupError::Refused(format!(
            "{} holds no catalog (no {})",
            data_dir.display(),
            catalog_path.display()
        )));
    }
    let catalog = crate::catalog::Catalog::open(&catalog_path).map_err(|e| {
        BackupError::Refused(format!(
            "cannot open the catalog in {} ({e}); if a directory server is running on it, \
             back it up through the server with `quaver-directory backup --server URL`",
            catalog_path.display()
        ))
    })?;
    let mut pending = archive::PendingBackup::create(to)?;
    let summary = snapshot::write(&catalog, pending.snapshot_writer())?;
    pending.finish(archive::now_unix_ms(), env!("CARGO_PKG_VERSION"), &summary)
}
