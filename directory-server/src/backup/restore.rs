//! Restores a backup into a data dir that no server holds.
//!
//! Order, so that a bad backup or a refusal leaves everything as it was:
//! 1. check the whole backup (manifest, every record, the BLAKE3 hash) before touching the
//!    data dir;
//! 2. refuse a non-empty data dir without `force`, and one a server holds (sled's lock);
//! 3. build the new catalog beside the old one (`catalog.restoring`), move sled's id
//!    generator past every restored key, reopen it as the server would and compare counts;
//! 4. only then swap it in: the old catalog is kept as `catalog.before-restore-<ms>`, the old
//!    search index is deleted (the server rebuilds it from the restored catalog).
//!
//! Everything happens inside the data dir, never by renaming the data dir itself: it is often
//! a mount point (a Docker volume, a Kubernetes volume, systemd's `StateDirectory`).

use std::fs::File;
use std::path::{Path, PathBuf};

use super::archive::{self, Manifest};
use super::{BackupError, catalog_dir, index_dir, snapshot};
use crate::catalog::{BACKUP_TREES, Catalog, open_sled};

/// Records per sled batch while importing: large enough to be fast, small enough to bound
/// memory.
const IMPORT_BATCH: usize = 10_000;

#[derive(Debug)]
pub struct RestoreReport {
    pub manifest: Manifest,
    /// The catalog that was there before (`--force`), kept until the operator deletes it.
    pub previous: Option<PathBuf>,
}

/// Restores the backup in `from` into `data_dir` (see the module doc).
pub fn restore(from: &Path, data_dir: &Path, force: bool) -> Result<RestoreReport, BackupError> {
    let (manifest, snapshot_path) = archive::open(from)?;
    let mut max_key = 0u64;
    let checked = snapshot::read(open_file(&snapshot_path)?, |tree, key, _| {
        if BACKUP_TREES[tree] == "keys" {
            let bytes: [u8; 8] = key.try_into().map_err(|_| BackupError::Corrupt("key length".into()))?;
            max_key = max_key.max(u64::from_be_bytes(bytes));
        }
        Ok(())
    })?;
    archive::matches(&manifest, &checked)?;

    let catalog = catalog_dir(data_dir);
    let occupied = occupied_entries(data_dir)?;
    if !occupied.is_empty() && !force {
        return Err(BackupError::Refused(format!(
            "{} is not empty ({}); restore into an empty data dir, or pass --force to replace its \
             catalog (kept aside) and index",
            data_dir.display(),
            occupied.join(", ")
        )));
    }
    if catalog.exists() {
        // A server holds sled's lock for as long as it runs; opening fails then (after a short
        // wait: one that just stopped may still be letting go of it).
        drop(open_sled(sled::Config::new().path(&catalog)).map_err(|e| {
            BackupError::Refused(format!(
                "cannot open the current catalog in {} ({e}); is a directory server running on \
                 this data dir? Stop it before restoring",
                catalog.display()
            ))
        })?);
    }

    std::fs::create_dir_all(data_dir).map_err(BackupError::io(format!("creating {}", data_dir.display())))?;
    let staging = data_dir.join("catalog.restoring");
    if staging.exists() {
        // Our own name: the leftover of an interrupted restore.
        std::fs::remove_dir_all(&staging)
            .map_err(BackupError::io(format!("removing {}", staging.display())))?;
    }
    if let Err(e) = build(&snapshot_path, &staging, &manifest, max_key) {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }

    let previous = if catalog.exists() {
        let aside = data_dir.join(format!("catalog.before-restore-{}", archive::now_unix_ms()));
        std::fs::rename(&catalog, &aside)
            .map_err(BackupError::io(format!("moving {} aside", catalog.display())))?;
        Some(aside)
    } else {
        None
    };
    let index = index_dir(data_dir);
    if index.exists() {
        std::fs::remove_dir_all(&index).map_err(BackupError::io(format!("removing {}", index.display())))?;
    }
    std::fs::rename(&staging, &catalog)
        .map_err(BackupError::io(format!("moving {} into place", staging.display())))?;
    archive::sync_dir(data_dir)?;
    Ok(RestoreReport { manifest, previous })
}

fn open_file(path: &Path) -> Result<File, BackupError> {
    File::open(path).map_err(BackupError::io(format!("opening {}", path.display())))
}

/// What makes a data dir "not empty": anything but `lost+found`, which a freshly formatted
/// volume has.
fn occupied_entries(data_dir: &Path) -> Result<Vec<String>, BackupError> {
    let entries = match std::fs::read_dir(data_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(BackupError::Io { context: format!("reading {}", data_dir.display()), source: e });
        }
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(BackupError::io(format!("reading {}", data_dir.display())))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name != "lost+found" {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Imports the snapshot into a new sled database at `staging` and checks it opens as a
/// catalog with the manifest's counts.
fn build(snapshot_path: &Path, staging: &Path, manifest: &Manifest, max_key: u64) -> Result<(), BackupError> {
    {
        let db = open_sled(sled::Config::new().path(staging))?;
        let trees: Vec<sled::Tree> =
            BACKUP_TREES.iter().map(|name| db.open_tree(name)).collect::<Result<_, _>>()?;
        let mut batch = (0usize, sled::Batch::default(), 0usize);
        // Read again, not from memory: the check above streamed, and a catalog may not fit in
        // memory. The hash is compared again in case the file changed in between.
        let imported = snapshot::read(open_file(snapshot_path)?, |tree, key, value| {
            if tree != batch.0 || batch.2 == IMPORT_BATCH {
                trees[batch.0].apply_batch(std::mem::take(&mut batch.1))?;
                batch = (tree, sled::Batch::default(), 0);
            }
            batch.1.insert(key, value);
            batch.2 += 1;
            Ok(())
        })?;
        trees[batch.0].apply_batch(batch.1)?;
        archive::matches(manifest, &imported)?;
        db.flush()?;
    }
    advance_id_generator(staging, max_key)?;

    let catalog = Catalog::open(staging)?;
    let counts = [
        ("files", catalog.file_count()?),
        ("sources", catalog.source_count()?),
        ("peers", catalog.peer_count()?),
    ];
    for (tree, count) in counts {
        if count != manifest.records(tree) {
            return Err(BackupError::Corrupt(format!(
                "the restored catalog has {count} {tree}, the manifest says {}",
                manifest.records(tree)
            )));
        }
    }
    catalog.flush_blocking()?;
    Ok(())
}

/// New files take their catalog key from sled's id generator, which a fresh database starts
/// at 0: left there, the next new file would take a restored file's key. sled persists the
/// generator every `idgen_persist_interval` ids and, when it reopens a database, resumes at
/// the persisted value plus twice that interval. So: reopen once with an interval over half
/// the highest key and draw one id, which persists twice that interval, past every key; every
/// later open (the server's, at the default interval) resumes beyond it. sled asserts that a
/// persisted value is a multiple of the interval in use, so ours is a multiple of the default.
/// `Catalog::open` checks the result and refuses a catalog whose generator is behind its keys.
fn advance_id_generator(staging: &Path, max_key: u64) -> Result<(), BackupError> {
    /// sled's default `idgen_persist_interval`, which `Catalog::open` runs with.
    const SLED_DEFAULT_INTERVAL: u64 = 1_000_000;
    if max_key > u64::MAX / 4 {
        return Err(BackupError::Corrupt(format!("file key {max_key} is out of range")));
    }
    let interval = (max_key / 2 / SLED_DEFAULT_INTERVAL + 1) * SLED_DEFAULT_INTERVAL;
    // The import's handle was just dropped: its lock may linger a moment (see `open_sled`).
    let db = open_sled(sled::Config::new().path(staging).idgen_persist_interval(interval))?;
    let drawn = db.generate_id()?;
    db.flush()?;
    if drawn <= max_key {
        return Err(BackupError::Corrupt(format!(
            "could not move the id generator past file key {max_key} (it gave {drawn})"
        )));
    }
    Ok(())
}
