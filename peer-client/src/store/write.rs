//! Every change to the record trees. Each one runs under the summary lock (so writers never
//! race) and is applied as one sled transaction across `files`, `paths`, `sources` and `meta`,
//! so a crash leaves either all of it or none, and the digest always matches the ids.
//!
//! Outboard files follow the records (see `outboards.rs`): a newly shared id's outboard is on
//! disk before its transaction commits, and an id that stops being shared loses its outboard
//! only after its transaction committed.

use std::fs;
use std::path::Path;

use prost::Message as _;
use quaver_shared::ContentId;
use quaver_shared::directory::v1::FileInfo;
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use super::db::{self, PathEntry, StoredEntry, Summary};
use super::{Store, StoreError};

#[derive(Clone, Copy)]
enum Tree {
    Files,
    Paths,
    Sources,
    Meta,
}

/// A new record's outboard, as the caller has it.
pub(super) enum NewOutboard<'a> {
    /// Just computed by hashing the file.
    Bytes(Vec<u8>),
    /// Bytes a scan's batch has written to the id's outboard file and synced already
    /// (`batch.rs`); written again, durably, if that file is not there.
    Synced(Vec<u8>),
    /// A file (a finished download's), moved into the store if the id is new, removed if not.
    File(&'a Path),
}

/// Writes to apply together: `None` removes the key.
#[derive(Default)]
struct Ops(Vec<(Tree, Vec<u8>, Option<sled::IVec>)>);

impl Ops {
    fn put(&mut self, tree: Tree, key: impl Into<Vec<u8>>, value: impl Into<sled::IVec>) {
        self.0.push((tree, key.into(), Some(value.into())));
    }

    fn del(&mut self, tree: Tree, key: impl Into<Vec<u8>>) {
        self.0.push((tree, key.into(), None));
    }
}

/// How a write changed the set of shared ids.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Change {
    /// An id that was not shared and now is.
    pub entered: Option<ContentId>,
    /// An id that was shared and no longer is.
    pub left: Option<ContentId>,
}

impl Store {
    /// Records that the file at `path` holds `entry.id` (with its metadata and outboard).
    pub(super) fn record(
        &self,
        path: &Path,
        entry: PathEntry,
        info: FileInfo,
        outboard: NewOutboard<'_>,
    ) -> Result<Change, StoreError> {
        let mut summary = self.lock();
        self.record_locked(&mut summary, path, entry, info, outboard)
    }

    /// [`Store::record`] with the store's lock already held (`summary` is what it guards).
    pub(super) fn record_locked(
        &self,
        summary: &mut Summary,
        path: &Path,
        entry: PathEntry,
        info: FileInfo,
        outboard: NewOutboard<'_>,
    ) -> Result<Change, StoreError> {
        let key = db::path_key(path);
        let id = entry.id;
        let mut next = *summary;
        let mut ops = Ops::default();
        let mut change = Change::default();

        let old = self.paths.get(&key)?.map(|v| PathEntry::decode(&v)).transpose()?;
        ops.put(Tree::Paths, key.clone(), &entry.encode()[..]);
        ops.put(Tree::Sources, db::source_key(&id, &key), &[][..]);
        if let Some(old) = old.filter(|old| old.id != id) {
            ops.del(Tree::Sources, db::source_key(&old.id, &key));
            change.left = self.detach(&old.id, &key, &mut ops, &mut next)?;
        }
        match self.files.get(id.as_bytes())? {
            Some(v) => {
                // Already shared (first path wins); keep the record's size and mtime true.
                let mut record = StoredEntry::decode_from(&v)?;
                if record.path == key {
                    record.size = entry.size;
                    record.mtime_ns = entry.mtime_ns;
                    ops.put(Tree::Files, id.to_vec(), record.encode_to_vec());
                }
                // The id has its outboard already: the same bytes, so the same tree.
                if let NewOutboard::File(file) = outboard {
                    let _ = fs::remove_file(file);
                }
            }
            None => {
                let record =
                    StoredEntry { path: key, size: entry.size, mtime_ns: entry.mtime_ns, info: Some(info) };
                ops.put(Tree::Files, id.to_vec(), record.encode_to_vec());
                // On disk before the record that needs it commits.
                let stored = match outboard {
                    NewOutboard::Bytes(bytes) => self.outboards.put_bytes(&id, &bytes),
                    NewOutboard::Synced(bytes) => self.outboards.ensure_bytes(&id, &bytes),
                    NewOutboard::File(file) => self.outboards.put_file(&id, file),
                };
                stored.map_err(StoreError::io(&self.outboards.path(&id)))?;
                next.digest.toggle(&id);
                next.count += 1;
                change.entered = Some(id);
            }
        }
        if let Err(e) = self.commit(ops, summary, next) {
            if let Some(id) = change.entered {
                self.outboards.remove(&id);
            }
            return Err(e);
        }
        // After the commit: a crash before this leaves an orphan file, swept on open.
        if let Some(left) = change.left {
            self.outboards.remove(&left);
        }
        Ok(change)
    }

    /// Forgets the path (it vanished or left the shared folders). Returns the id that is no
    /// longer shared, if no other path holds it.
    pub(super) fn forget(&self, path: &Path) -> Result<Option<ContentId>, StoreError> {
        let key = db::path_key(path);
        let mut summary = self.lock();
        let Some(v) = self.paths.get(&key)? else { return Ok(None) };
        let old = PathEntry::decode(&v)?;
        let mut next = *summary;
        let mut ops = Ops::default();
        ops.del(Tree::Paths, key.clone());
        ops.del(Tree::Sources, db::source_key(&old.id, &key));
        let left = self.detach(&old.id, &key, &mut ops, &mut next)?;
        self.commit(ops, &mut summary, next)?;
        if let Some(left) = left {
            self.outboards.remove(&left);
        }
        Ok(left)
    }

    /// `path_key` no longer holds `id`. If the record pointed at it, move the record to another
    /// path holding the same bytes, or stop sharing the id when there is none.
    fn detach(
        &self,
        id: &ContentId,
        path_key: &[u8],
        ops: &mut Ops,
        next: &mut Summary,
    ) -> Result<Option<ContentId>, StoreError> {
        let Some(v) = self.files.get(id.as_bytes())? else { return Ok(None) };
        let mut record = StoredEntry::decode_from(&v)?;
        let mut others = self.sources.scan_prefix(id.as_bytes()).keys();
        let other = others.find_map(|k| match k {
            Ok(k) if &k[ContentId::LEN..] != path_key => Some(Ok(k)),
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        });
        if let Some(other) = other {
            let other = &other?[ContentId::LEN..];
            if let Some(entry) = self.paths.get(other)? {
                let entry = PathEntry::decode(&entry)?;
                if record.path == path_key {
                    record.path = other.to_vec();
                    record.size = entry.size;
                    record.mtime_ns = entry.mtime_ns;
                    ops.put(Tree::Files, id.to_vec(), record.encode_to_vec());
                }
                return Ok(None);
            }
        }
        ops.del(Tree::Files, id.to_vec());
        next.digest.toggle(id);
        next.count = next.count.saturating_sub(1);
        Ok(Some(*id))
    }

    /// Applies `ops` (plus the new summary when it changed) atomically, then updates the mirror.
    fn commit(&self, mut ops: Ops, summary: &mut Summary, next: Summary) -> Result<(), StoreError> {
        if next != *summary {
            ops.put(Tree::Meta, db::META_DIGEST, &next.digest.as_bytes()[..]);
            ops.put(Tree::Meta, db::META_COUNT, &next.count.to_be_bytes()[..]);
        }
        let trees = (&self.files, &self.paths, &self.sources, &self.meta);
        trees
            .transaction(|(files, paths, sources, meta)| {
                for (tree, key, value) in &ops.0 {
                    let tree = match tree {
                        Tree::Files => files,
                        Tree::Paths => paths,
                        Tree::Sources => sources,
                        Tree::Meta => meta,
                    };
                    match value {
                        Some(value) => tree.insert(key.as_slice(), value.clone())?,
                        None => tree.remove(key.as_slice())?,
                    };
                }
                Ok::<(), ConflictableTransactionError<()>>(())
            })
            .map_err(|e| match e {
                TransactionError::Storage(e) => StoreError::Db(e),
                TransactionError::Abort(()) => StoreError::Corrupt("transaction aborted".into()),
            })?;
        *summary = next;
        Ok(())
    }
}
