//! The durable half of the directory: which files exist and which peers share them, in sled.
//!
//! Owns every byte the directory keeps across restarts. It knows nothing of leases, of the
//! search index's internals or of gRPC; it must never hold state in memory per file.
//!
//! Trees and their keys (`key` is the file's numeric catalog id, 8 bytes big-endian):
//!
//! | tree         | key                 | value                               |
//! |--------------|---------------------|-------------------------------------|
//! | `files`      | content id (32)     | `StoredFile` (prost)                |
//! | `keys`       | key (8)             | content id (32)                     |
//! | `sources`    | key (8) ‖ peer (32) | 1 byte: complete?                   |
//! | `peer_files` | peer (32) ‖ key (8) | 1 byte: complete?                   |
//! | `peers`      | peer (32)           | `StoredPeer` (prost)                |
//! | `unindexed`  | key (8)             | empty: not yet in the search index  |
//! | `counts`     | `files`, `sources`, `peers` | u64 (8, big-endian): entries of that tree |
//!
//! A `Publish` batch is one sled transaction over all seven trees, and is flushed to disk before
//! it is acknowledged: an acknowledged batch survives `kill -9`.
//!
//! `counts` keeps the sizes of three trees in the same transactions that change them, so a
//! start reads three numbers instead of walking millions of entries (`Tree::len` is a full
//! scan: at 1M files it was most of the time from start to serving). A catalog without it (an
//! older version's, or one just restored) is counted once, when it is opened.

use std::time::{SystemTime, UNIX_EPOCH};

use quaver_shared::directory::v1::FileInfo;
use quaver_shared::{ContentId, PeerId, ShareDigest};
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::{Transactional, Tree};

/// A catalog entry as stored.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StoredFile {
    #[prost(uint64, tag = "1")]
    pub key: u64,
    #[prost(message, optional, tag = "2")]
    pub info: Option<FileInfo>,
    #[prost(uint64, tag = "3")]
    pub first_seen_unix_ms: u64,
}

/// What the directory remembers of a peer between its sessions.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StoredPeer {
    #[prost(bytes = "vec", tag = "1")]
    pub digest: Vec<u8>,
    #[prost(uint64, tag = "2")]
    pub count: u64,
    #[prost(string, tag = "3")]
    pub last_address: String,
    #[prost(uint64, tag = "4")]
    pub last_seen_unix_ms: u64,
}

impl StoredPeer {
    pub fn digest(&self) -> ShareDigest {
        ShareDigest::from_slice(&self.digest).unwrap_or(ShareDigest::EMPTY)
    }
}

/// An operator's ban as stored in the `bans` tree (the key says what is banned, see
/// `bans::BanTarget::key`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct StoredBan {
    #[prost(uint64, tag = "1")]
    pub until_unix_ms: u64,
    #[prost(uint64, tag = "2")]
    pub created_unix_ms: u64,
    #[prost(string, tag = "3")]
    pub reason: String,
}

/// What `remove_file` took out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemovedFile {
    pub key: u64,
    /// The peers whose share list held it, and whether their copy was complete.
    pub sources: Vec<(PeerId, bool)>,
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("storage error: {0}")]
    Storage(#[from] sled::Error),
    #[error("corrupt catalog record under {tree}: {detail}")]
    Corrupt { tree: &'static str, detail: String },
    #[error("peer would share {would_have} files; the limit is {limit}")]
    TooManyFiles { would_have: u64, limit: u64 },
}

/// One file added to a peer's share list, already validated.
pub struct Addition {
    pub id: ContentId,
    pub info: FileInfo,
    pub complete: bool,
}

/// A change in who shares a file, for the in-memory online sources.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceChange {
    pub key: u64,
    pub id: ContentId,
    /// The peer's entry before (None: it did not share the file) and after the batch.
    pub before: Option<bool>,
    pub after: Option<bool>,
}

/// The result of one publish batch.
pub struct PublishOutcome {
    pub peer: StoredPeer,
    pub changes: Vec<SourceChange>,
    /// Files that are new to the catalog (they wait in `unindexed`).
    pub new_files: usize,
}

/// The trees a backup carries, in the order a snapshot stores them. `unindexed` is left out:
/// it is the search index's bookkeeping, and a restored directory rebuilds its index.
pub const BACKUP_TREES: [&str; 5] = ["files", "keys", "sources", "peer_files", "peers"];

pub struct Catalog {
    db: sled::Db,
    files: Tree,
    keys: Tree,
    sources: Tree,
    peer_files: Tree,
    peers: Tree,
    unindexed: Tree,
    counts: Tree,
    /// Operator bans, by target (see `bans`); not in backups.
    bans: Tree,
}

/// Keys of the `counts` tree.
const FILES_COUNT: &[u8] = b"files";
const SOURCES_COUNT: &[u8] = b"sources";
const PEERS_COUNT: &[u8] = b"peers";

pub fn now_unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn source_key(key: u64, peer: &PeerId) -> [u8; 40] {
    let mut out = [0u8; 40];
    out[..8].copy_from_slice(&key.to_be_bytes()[..]);
    out[8..].copy_from_slice(peer.as_bytes());
    out
}

fn peer_file_key(peer: &PeerId, key: u64) -> [u8; 40] {
    let mut out = [0u8; 40];
    out[..32].copy_from_slice(peer.as_bytes());
    out[32..].copy_from_slice(&key.to_be_bytes()[..]);
    out
}

fn decode<M: prost::Message + Default>(tree: &'static str, bytes: &[u8]) -> Result<M, CatalogError> {
    M::decode(bytes).map_err(|e| CatalogError::Corrupt { tree, detail: e.to_string() })
}

fn be_u64(tree: &'static str, bytes: &[u8]) -> Result<u64, CatalogError> {
    <[u8; 8]>::try_from(bytes)
        .map(u64::from_be_bytes)
        .map_err(|_| CatalogError::Corrupt { tree, detail: format!("key of {} bytes", bytes.len()) })
}

type TxResult<T> = Result<T, ConflictableTransactionError<CatalogError>>;

fn abort<T>(e: CatalogError) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(e))
}

/// How long [`open_sled`] waits for a lock that a just-dropped handle may still hold.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens a sled database, waiting out a lock that a handle dropped a moment ago still holds.
///
/// sled releases its directory lock only when the last of its background jobs lets go of the
/// database, shortly after the last handle is dropped. So opening the same directory again at
/// once (a restore builds a catalog in three opens; a server stopped just before a restore) can
/// fail to lock. A lock still held after [`LOCK_WAIT`] is someone else's (another server
/// on this data dir), and that error is returned.
pub(crate) fn open_sled(config: sled::Config) -> sled::Result<sled::Db> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match config.open() {
            // sled reports the lock as an `Other` error with this text, the `WouldBlock` inside.
            Err(sled::Error::Io(e))
                if e.to_string().starts_with("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(25));
            }
            other => return other,
        }
    }
}

impl Catalog {
    /// Opens (or creates) the catalog in `dir`.
    pub fn open(dir: &std::path::Path) -> Result<Self, CatalogError> {
        Self::from_db(open_sled(sled::Config::new().path(dir))?)
    }

    /// A catalog that lives in memory and a temporary file, for tests and benchmarks.
    pub fn temporary() -> Result<Self, CatalogError> {
        Self::from_db(sled::Config::new().temporary(true).open()?)
    }

    fn from_db(db: sled::Db) -> Result<Self, CatalogError> {
        let keys = db.open_tree("keys")?;
        // New files take their key from sled's id generator. A catalog rebuilt record by
        // record (a restore) must have had its generator moved past every key in use, or the
        // next new file would take an existing file's key: refuse one that was not.
        if let Some((last, _)) = keys.last()? {
            let max = be_u64("keys", &last)?;
            if db.generate_id()? <= max {
                return Err(CatalogError::Corrupt {
                    tree: "keys",
                    detail: format!(
                        "sled's id generator is behind the highest file key {max}; restore backups \
                         with `quaver-directory restore`, never by copying records"
                    ),
                });
            }
        }
        let catalog = Self {
            files: db.open_tree("files")?,
            keys,
            sources: db.open_tree("sources")?,
            peer_files: db.open_tree("peer_files")?,
            peers: db.open_tree("peers")?,
            unindexed: db.open_tree("unindexed")?,
            counts: db.open_tree("counts")?,
            bans: db.open_tree("bans")?,
            db,
        };
        catalog.count_if_uncounted()?;
        Ok(catalog)
    }

    /// Fills `counts` by walking the trees, when it lacks them. Runs before anything else can
    /// write; `files` is written last, so a start interrupted half-way counts again.
    fn count_if_uncounted(&self) -> Result<(), CatalogError> {
        if self.counts.get(FILES_COUNT)?.is_some() {
            return Ok(());
        }
        let started = std::time::Instant::now();
        self.counts.insert(SOURCES_COUNT, &(self.sources.len() as u64).to_be_bytes())?;
        self.counts.insert(PEERS_COUNT, &(self.peers.len() as u64).to_be_bytes())?;
        let files = self.files.len() as u64;
        self.counts.insert(FILES_COUNT, &files.to_be_bytes())?;
        if files > 0 {
            tracing::info!(files, elapsed = ?started.elapsed(), "catalog counted (once: the counts are kept from now on)");
        }
        Ok(())
    }

    fn count(&self, name: &'static [u8]) -> Result<u64, CatalogError> {
        match self.counts.get(name)? {
            Some(bytes) => be_u64("counts", &bytes),
            None => Ok(0),
        }
    }

    /// Waits until everything written so far is on disk. Blocking. (No async variant: the
    /// directory must order flushes against publish transactions, see `directory.rs`.)
    pub fn flush_blocking(&self) -> Result<(), CatalogError> {
        self.db.flush()?;
        Ok(())
    }

    /// The trees named in [`BACKUP_TREES`], in that order, for a backup to read. The caller
    /// keeps writers out while it reads (see `Directory::with_frozen_catalog`).
    pub fn backup_trees(&self) -> [(&'static str, &Tree); 5] {
        let [files, keys, sources, peer_files, peers] = BACKUP_TREES;
        [
            (files, &self.files),
            (keys, &self.keys),
            (sources, &self.sources),
            (peer_files, &self.peer_files),
            (peers, &self.peers),
        ]
    }

    /// Files in the catalog (read from `counts`, not counted).
    pub fn file_count(&self) -> Result<u64, CatalogError> {
        self.count(FILES_COUNT)
    }

    /// (peer, file) pairs: every stored share, online or not.
    pub fn source_count(&self) -> Result<u64, CatalogError> {
        self.count(SOURCES_COUNT)
    }

    /// Peers that ever announced.
    pub fn peer_count(&self) -> Result<u64, CatalogError> {
        self.count(PEERS_COUNT)
    }

    pub fn file(&self, id: &ContentId) -> Result<Option<StoredFile>, CatalogError> {
        match self.files.get(id.as_bytes())? {
            Some(bytes) => Ok(Some(decode("files", &bytes)?)),
            None => Ok(None),
        }
    }

    pub fn file_by_key(&self, key: u64) -> Result<Option<StoredFile>, CatalogError> {
        match self.keys.get(key.to_be_bytes())? {
            Some(id) => match self.files.get(&id)? {
                Some(bytes) => Ok(Some(decode("files", &bytes)?)),
                None => Ok(None),
            },
            None => Ok(None),
        }
    }

    pub fn peer(&self, peer: &PeerId) -> Result<Option<StoredPeer>, CatalogError> {
        match self.peers.get(peer.as_bytes())? {
            Some(bytes) => Ok(Some(decode("peers", &bytes)?)),
            None => Ok(None),
        }
    }

    /// Records a peer's session start (its address and when it was seen).
    pub fn touch_peer(&self, peer: &PeerId, address: &str) -> Result<StoredPeer, CatalogError> {
        let mut stored = self.peer(peer)?.unwrap_or_else(|| StoredPeer {
            digest: ShareDigest::EMPTY.as_bytes().to_vec(),
            ..StoredPeer::default()
        });
        stored.last_address = address.to_owned();
        stored.last_seen_unix_ms = now_unix_ms();
        let record = prost::Message::encode_to_vec(&stored);
        let result = (&self.peers, &self.counts).transaction(|(peers, counts)| {
            if peers.insert(peer.as_bytes(), record.as_slice())?.is_none() {
                add_to_count(counts, PEERS_COUNT, 1)?;
            }
            Ok(())
        });
        match result {
            Ok(()) => Ok(stored),
            Err(TransactionError::Abort(e)) => Err(e),
            Err(TransactionError::Storage(e)) => Err(e.into()),
        }
    }

    /// Every file a peer shares, as (key, complete).
    pub fn peer_files(&self, peer: &PeerId) -> impl Iterator<Item = Result<(u64, bool), CatalogError>> + '_ {
        self.peer_files.scan_prefix(peer.as_bytes()).map(|item| {
            let (k, v) = item?;
            let key = be_u64("peer_files", k.get(32..).unwrap_or_default())?;
            Ok((key, v.first() == Some(&1)))
        })
    }

    /// A peer's share list with each file's content id, as (key, id, complete): what the
    /// online sources need when the peer comes online or leaves. One `keys` read per file. An
    /// entry whose key has no valid content id (a damaged catalog) is logged and left out, as a
    /// publish's reset leaves it: it could never be located by id, and the peer's other files
    /// still can.
    pub fn peer_file_ids(&self, peer: &PeerId) -> Result<Vec<(u64, ContentId, bool)>, CatalogError> {
        let mut out = Vec::new();
        for item in self.peer_files(peer) {
            let (key, complete) = item?;
            let id = self.keys.get(key.to_be_bytes())?;
            match id.as_deref().map(ContentId::from_slice) {
                Some(Ok(id)) => out.push((key, id, complete)),
                Some(Err(e)) => {
                    tracing::warn!(%peer, key, error = %e, "a shared file's content id is damaged; left out")
                }
                None => {
                    tracing::warn!(%peer, key, "a shared file has no content id in the catalog; left out")
                }
            }
        }
        Ok(out)
    }

    /// Every peer that shares a file, as (peer, complete): the `sources` tree read back, for
    /// tests. No request reads it: Locate reads the directory's online sources in memory,
    /// filled from `peer_file_ids`; backups carry the tree whole.
    #[cfg(test)]
    pub fn sources_of(&self, key: u64) -> impl Iterator<Item = Result<(PeerId, bool), CatalogError>> + '_ {
        self.sources.scan_prefix(key.to_be_bytes()).map(|item| {
            let (k, v) = item?;
            let peer = PeerId::from_slice(k.get(8..).unwrap_or_default())
                .map_err(|e| CatalogError::Corrupt { tree: "sources", detail: e.to_string() })?;
            Ok((peer, v.first() == Some(&1)))
        })
    }

    /// Applies one batch to a peer's share list atomically: `reset` forgets the old list first,
    /// then `removed` are dropped and `added` recorded. New files get a catalog key and wait in
    /// `unindexed`. Fails without changing anything if the peer would exceed `max_files`.
    pub fn publish(
        &self,
        peer: &PeerId,
        reset: bool,
        added: &[Addition],
        removed: &[ContentId],
        max_files: u64,
    ) -> Result<PublishOutcome, CatalogError> {
        // Work that cannot run inside a transaction: the old list to forget, fresh keys.
        let forget: Vec<(u64, bool)> =
            if reset { self.peer_files(peer).collect::<Result<_, _>>()? } else { Vec::new() };
        let mut fresh_keys = Vec::new();
        for addition in added {
            if !self.files.contains_key(addition.id.as_bytes())? {
                fresh_keys.push(self.db.generate_id()?);
            }
        }
        let removed_keys: Vec<Option<u64>> = removed
            .iter()
            .map(|id| Ok(self.file(id)?.map(|f| f.key)))
            .collect::<Result<_, CatalogError>>()?;

        let trees = (
            &self.files,
            &self.keys,
            &self.sources,
            &self.peer_files,
            &self.peers,
            &self.unindexed,
            &self.counts,
        );
        let result = trees.transaction(|(files, keys, sources, peer_files, peers, unindexed, counts)| {
            let mut stored: StoredPeer = match peers.get(peer.as_bytes())? {
                Some(bytes) => match decode("peers", &bytes) {
                    Ok(p) => p,
                    Err(e) => return abort(e),
                },
                None => StoredPeer::default(),
            };
            let mut digest = stored.digest();
            let mut changes = Vec::new();
            let mut fresh = fresh_keys.iter();
            let mut new_files = 0;

            for &(key, _) in &forget {
                let Some(id) = keys.get(key.to_be_bytes())? else { continue };
                let Ok(id) = ContentId::from_slice(&id) else { continue };
                drop_source(peer_files, sources, peer, key, &id, &mut digest, &mut stored, &mut changes)?;
            }
            for (id, key) in removed.iter().zip(&removed_keys) {
                if let Some(key) = key {
                    drop_source(peer_files, sources, peer, *key, id, &mut digest, &mut stored, &mut changes)?;
                }
            }
            for addition in added {
                let key = match files.get(addition.id.as_bytes())? {
                    Some(bytes) => match decode::<StoredFile>("files", &bytes) {
                        Ok(file) => file.key,
                        Err(e) => return abort(e),
                    },
                    None => {
                        // Files are deleted only by `remove_file`, which the directory runs
                        // under the same lock as every publish, so a file absent before the
                        // transaction had a key reserved for it above.
                        let Some(&key) = fresh.next() else {
                            return abort(CatalogError::Corrupt {
                                tree: "files",
                                detail: "more new files than reserved keys".into(),
                            });
                        };
                        let record = StoredFile {
                            key,
                            info: Some(addition.info.clone()),
                            first_seen_unix_ms: now_unix_ms(),
                        };
                        files.insert(addition.id.as_bytes(), prost::Message::encode_to_vec(&record))?;
                        keys.insert(&key.to_be_bytes()[..], addition.id.as_bytes())?;
                        unindexed.insert(&key.to_be_bytes()[..], &[][..])?;
                        new_files += 1;
                        key
                    }
                };
                let flag = [u8::from(addition.complete)];
                let before = peer_files.insert(&peer_file_key(peer, key)[..], &flag)?;
                sources.insert(&source_key(key, peer)[..], &flag)?;
                let before = before.map(|old| old.first() == Some(&1));
                if before.is_none() {
                    stored.count += 1;
                    digest.toggle(&addition.id);
                }
                if before != Some(addition.complete) {
                    changes.push(SourceChange {
                        key,
                        id: addition.id,
                        before,
                        after: Some(addition.complete),
                    });
                }
            }
            if stored.count > max_files {
                return abort(CatalogError::TooManyFiles { would_have: stored.count, limit: max_files });
            }
            stored.digest = digest.as_bytes().to_vec();
            peers.insert(peer.as_bytes(), prost::Message::encode_to_vec(&stored))?;
            let sources_added: i64 = changes
                .iter()
                .map(|c| match (c.before, c.after) {
                    (None, Some(_)) => 1,
                    (Some(_), None) => -1,
                    _ => 0,
                })
                .sum();
            add_to_count(counts, FILES_COUNT, new_files as i64)?;
            add_to_count(counts, SOURCES_COUNT, sources_added)?;
            Ok(PublishOutcome { peer: stored, changes, new_files })
        });
        match result {
            Ok(outcome) => Ok(outcome),
            Err(TransactionError::Abort(e)) => Err(e),
            Err(TransactionError::Storage(e)) => Err(e.into()),
        }
    }

    /// Deletes file `id` from every tree: its entry (`files`, `keys`, `unindexed`), its
    /// sources and every peer's share list that held it (`sources`, `peer_files`, each such
    /// peer's count and digest in `peers`), and the counts, in one transaction. `None` (and
    /// nothing changed) if there is no such file. The search index is the caller's.
    pub fn remove_file(&self, id: &ContentId) -> Result<Option<RemovedFile>, CatalogError> {
        let Some(file) = self.file(id)? else { return Ok(None) };
        let key = file.key;
        let holders: Vec<PeerId> = self
            .sources
            .scan_prefix(key.to_be_bytes())
            .map(|item| {
                let (k, _) = item?;
                PeerId::from_slice(k.get(8..).unwrap_or_default())
                    .map_err(|e| CatalogError::Corrupt { tree: "sources", detail: e.to_string() })
            })
            .collect::<Result<_, _>>()?;
        let trees = (
            &self.files,
            &self.keys,
            &self.sources,
            &self.peer_files,
            &self.peers,
            &self.unindexed,
            &self.counts,
        );
        let result = trees.transaction(|(files, keys, sources, peer_files, peers, unindexed, counts)| {
            let mut removed = Vec::with_capacity(holders.len());
            for peer in &holders {
                let mut stored: StoredPeer = match peers.get(peer.as_bytes())? {
                    Some(bytes) => match decode("peers", &bytes) {
                        Ok(p) => p,
                        Err(e) => return abort(e),
                    },
                    None => StoredPeer::default(),
                };
                let mut digest = stored.digest();
                let mut changes = Vec::new();
                drop_source(peer_files, sources, peer, key, id, &mut digest, &mut stored, &mut changes)?;
                if let Some(change) = changes.first() {
                    stored.digest = digest.as_bytes().to_vec();
                    peers.insert(peer.as_bytes(), prost::Message::encode_to_vec(&stored))?;
                    removed.push((*peer, change.before == Some(true)));
                }
                // A `sources` record without its `peer_files` twin (a damaged catalog) goes too.
                sources.remove(&source_key(key, peer)[..])?;
            }
            files.remove(id.as_bytes())?;
            keys.remove(&key.to_be_bytes()[..])?;
            unindexed.remove(&key.to_be_bytes()[..])?;
            add_to_count(counts, FILES_COUNT, -1)?;
            add_to_count(counts, SOURCES_COUNT, -(removed.len() as i64))?;
            Ok(RemovedFile { key, sources: removed })
        });
        match result {
            Ok(removed) => Ok(Some(removed)),
            Err(TransactionError::Abort(e)) => Err(e),
            Err(TransactionError::Storage(e)) => Err(e.into()),
        }
    }

    /// Every stored ban, as (key, record).
    pub fn bans(&self) -> Result<Vec<(Vec<u8>, StoredBan)>, CatalogError> {
        self.bans
            .iter()
            .map(|item| {
                let (k, v) = item?;
                Ok((k.to_vec(), decode("bans", &v)?))
            })
            .collect()
    }

    pub fn put_ban(&self, key: &[u8], ban: &StoredBan) -> Result<(), CatalogError> {
        self.bans.insert(key, prost::Message::encode_to_vec(ban))?;
        Ok(())
    }

    pub fn delete_ban(&self, key: &[u8]) -> Result<(), CatalogError> {
        self.bans.remove(key)?;
        Ok(())
    }

    /// Up to `limit` files waiting to be indexed, with their records.
    pub fn unindexed(&self, limit: usize) -> Result<Vec<StoredFile>, CatalogError> {
        let mut out = Vec::new();
        for item in self.unindexed.iter().take(limit) {
            let (k, _) = item?;
            let key = be_u64("unindexed", &k)?;
            if let Some(file) = self.file_by_key(key)? {
                out.push(file);
            }
        }
        Ok(out)
    }

    /// Marks files as indexed (after the index committed them).
    pub fn mark_indexed(&self, keys: impl IntoIterator<Item = u64>) -> Result<(), CatalogError> {
        let mut batch = sled::Batch::default();
        for key in keys {
            batch.remove(&key.to_be_bytes()[..]);
        }
        self.unindexed.apply_batch(batch)?;
        Ok(())
    }

    /// Marks every file as waiting to be indexed (after the index was lost).
    pub fn mark_all_unindexed(&self) -> Result<u64, CatalogError> {
        let mut n = 0;
        let mut batch = sled::Batch::default();
        for item in self.keys.iter() {
            let (k, _) = item?;
            batch.insert(k, &[]);
            n += 1;
        }
        self.unindexed.apply_batch(batch)?;
        Ok(n)
    }

    pub fn unindexed_count(&self) -> u64 {
        self.unindexed.len() as u64
    }
}

/// Adds `delta` to one of the `counts` inside a transaction.
fn add_to_count(counts: &TransactionalTree, name: &'static [u8], delta: i64) -> TxResult<()> {
    if delta == 0 {
        return Ok(());
    }
    let now = match counts.get(name)? {
        Some(bytes) => match be_u64("counts", &bytes) {
            Ok(n) => n,
            Err(e) => return abort(e),
        },
        None => 0,
    };
    counts.insert(name, &now.saturating_add_signed(delta).to_be_bytes())?;
    Ok(())
}

/// Removes one file from a peer's share list inside a publish transaction.
#[allow(clippy::too_many_arguments)]
fn drop_source(
    peer_files: &TransactionalTree,
    sources: &TransactionalTree,
    peer: &PeerId,
    key: u64,
    id: &ContentId,
    digest: &mut ShareDigest,
    stored: &mut StoredPeer,
    changes: &mut Vec<SourceChange>,
) -> TxResult<()> {
    if let Some(old) = peer_files.remove(&peer_file_key(peer, key)[..])? {
        sources.remove(&source_key(key, peer)[..])?;
        stored.count = stored.count.saturating_sub(1);
        digest.toggle(id);
        changes.push(SourceChange { key, id: *id, before: Some(old.first() == Some(&1)), after: None });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(n: u8, complete: bool) -> Addition {
        let id = ContentId::of_bytes(&[n]);
        Addition {
            id,
            info: FileInfo { content_id: id.to_vec(), file_name: format!("{n}.mp3"), ..Default::default() },
            complete,
        }
    }

    #[test]
    fn a_peers_files_come_with_their_ids_and_a_damaged_entry_is_left_out() {
        let c = Catalog::temporary().unwrap();
        let p = PeerId::from_array([1; 32]);
        c.publish(&p, false, &[add(1, true), add(2, false), add(3, true)], &[], 10).unwrap();
        let key = |n: u8| c.file(&ContentId::of_bytes(&[n])).unwrap().unwrap().key;
        let mut listed = c.peer_file_ids(&p).unwrap();
        listed.sort();
        let mut want: Vec<_> = [(1, true), (2, false), (3, true)]
            .into_iter()
            .map(|(n, complete)| (key(n), ContentId::of_bytes(&[n]), complete))
            .collect();
        want.sort();
        assert_eq!(listed, want);

        c.keys.remove(key(2).to_be_bytes()).unwrap();
        c.keys.insert(key(3).to_be_bytes(), &b"short"[..]).unwrap();
        let listed = c.peer_file_ids(&p).unwrap();
        assert_eq!(listed, vec![(key(1), ContentId::of_bytes(&[1]), true)]);
    }

    #[test]
    fn publish_tracks_sources_digest_and_changes() {
        let c = Catalog::temporary().unwrap();
        let p = PeerId::from_array([1; 32]);
        let out = c.publish(&p, false, &[add(1, true), add(2, false)], &[], 10).unwrap();
        assert_eq!(out.new_files, 2);
        assert_eq!(out.peer.count, 2);
        let ids = [ContentId::of_bytes(&[1]), ContentId::of_bytes(&[2])];
        assert_eq!(out.peer.digest(), ShareDigest::of(ids.iter()));
        assert_eq!(c.unindexed(10).unwrap().len(), 2);

        // Same file again, now complete: no new source, one change of completeness.
        let out = c.publish(&p, false, &[add(2, true)], &[ids[0]], 10).unwrap();
        assert_eq!(out.new_files, 0);
        assert_eq!(out.peer.count, 1);
        assert_eq!(out.changes.len(), 2);
        let key2 = c.file(&ids[1]).unwrap().unwrap().key;
        assert_eq!(c.sources_of(key2).collect::<Result<Vec<_>, _>>().unwrap(), vec![(p, true)]);
        assert_eq!(c.file_count().unwrap(), 2, "files stay in the catalog when their sources leave");

        // Reset forgets the old list.
        let out = c.publish(&p, true, &[add(3, true)], &[], 10).unwrap();
        assert_eq!(out.peer.count, 1);
        assert_eq!(c.peer_files(&p).count(), 1);
        assert_eq!(c.source_count().unwrap(), 1);
    }

    #[test]
    fn a_batch_over_the_per_peer_limit_changes_nothing() {
        let c = Catalog::temporary().unwrap();
        let p = PeerId::from_array([1; 32]);
        c.publish(&p, false, &[add(1, true)], &[], 2).unwrap();
        let err = c.publish(&p, false, &[add(2, true), add(3, true)], &[], 2).err().unwrap();
        assert!(matches!(err, CatalogError::TooManyFiles { would_have: 3, limit: 2 }), "{err}");
        assert_eq!(c.peer(&p).unwrap().unwrap().count, 1);
        assert_eq!(c.file_count().unwrap(), 1);
        assert_eq!(c.source_count().unwrap(), 1);
    }

    /// The kept counts against a walk of the trees they count.
    fn assert_counts_true(c: &Catalog) {
        assert_eq!(c.file_count().unwrap(), c.files.len() as u64, "files");
        assert_eq!(c.source_count().unwrap(), c.sources.len() as u64, "sources");
        assert_eq!(c.peer_count().unwrap(), c.peers.len() as u64, "peers");
    }

    #[test]
    fn remove_file_takes_it_out_of_every_tree_and_share_list_and_keeps_counts_true() {
        let c = Catalog::temporary().unwrap();
        let (p, q) = (PeerId::from_array([1; 32]), PeerId::from_array([2; 32]));
        c.touch_peer(&p, "10.0.0.1:1").unwrap();
        c.touch_peer(&q, "10.0.0.2:1").unwrap();
        c.publish(&p, false, &[add(1, true), add(2, true)], &[], 10).unwrap();
        c.publish(&q, false, &[add(1, false)], &[], 10).unwrap();
        let one = ContentId::of_bytes(&[1]);
        let key = c.file(&one).unwrap().unwrap().key;

        let removed = c.remove_file(&one).unwrap().unwrap();
        let mut sources = removed.sources.clone();
        sources.sort();
        assert_eq!((removed.key, sources), (key, vec![(p, true), (q, false)]));
        assert!(c.file(&one).unwrap().is_none());
        assert!(c.file_by_key(key).unwrap().is_none());
        assert_eq!(c.sources_of(key).count(), 0);
        assert!(c.unindexed(100).unwrap().iter().all(|f| f.key != key));
        assert_counts_true(&c);
        // Each holder's stored list lost it, digest and count alike.
        let two = ContentId::of_bytes(&[2]);
        assert_eq!(c.peer(&p).unwrap().unwrap().digest(), ShareDigest::of([&two]));
        assert_eq!(c.peer(&p).unwrap().unwrap().count, 1);
        assert_eq!(c.peer(&q).unwrap().unwrap().digest(), ShareDigest::EMPTY);
        assert_eq!(c.peer_files(&q).count(), 0);

        assert_eq!(c.remove_file(&one).unwrap(), None, "nothing left to remove");
        // A later Publish brings it back as a new entry, under a new key.
        c.publish(&q, false, &[add(1, true)], &[], 10).unwrap();
        assert!(c.file(&one).unwrap().unwrap().key > key);
        assert_counts_true(&c);
    }

    #[test]
    fn kept_counts_follow_every_kind_of_change() {
        let c = Catalog::temporary().unwrap();
        let (p, q) = (PeerId::from_array([1; 32]), PeerId::from_array([2; 32]));
        c.touch_peer(&p, "127.0.0.1:1").unwrap();
        c.touch_peer(&p, "127.0.0.1:2").unwrap();
        c.touch_peer(&q, "127.0.0.1:3").unwrap();
        assert_counts_true(&c);
        c.publish(&p, false, &[add(1, true), add(2, false), add(3, true)], &[], 10).unwrap();
        c.publish(&q, false, &[add(2, true), add(4, true)], &[], 10).unwrap();
        assert_counts_true(&c);
        c.publish(&p, false, &[add(2, true)], &[ContentId::of_bytes(&[1])], 10).unwrap();
        c.publish(&q, true, &[add(4, false), add(5, true)], &[], 10).unwrap();
        c.publish(&p, false, &[add(6, true)], &[], 1).err().unwrap();
        assert_counts_true(&c);
        assert_eq!(c.file_count().unwrap(), 5);
    }

    #[test]
    fn a_catalog_without_counts_is_counted_when_opened() {
        let dir = tempfile::tempdir().unwrap();
        {
            let c = Catalog::open(dir.path()).unwrap();
            let p = PeerId::from_array([1; 32]);
            c.touch_peer(&p, "127.0.0.1:1").unwrap();
            c.publish(&p, false, &[add(1, true), add(2, true)], &[], 10).unwrap();
            // As an older version (or a restore) leaves it.
            c.db.drop_tree("counts").unwrap();
            c.flush_blocking().unwrap();
        }
        let c = Catalog::open(dir.path()).unwrap();
        assert_eq!((c.file_count().unwrap(), c.source_count().unwrap(), c.peer_count().unwrap()), (2, 2, 1));
    }
}
