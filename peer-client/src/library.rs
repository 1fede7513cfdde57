//! What a node can serve: the seam between the store (which knows the files on disk) and the
//! server (which answers other peers). The server asks only this trait, so it can be tested
//! with an in-memory library and run over the sled-backed store.
//!
//! Outboard format, fixed for `quaver/1`: bao-tree's **pre-order** outboard of the file with
//! 16 KiB chunk groups (`BlockSize::from_chunk_log(4)`), without any size prefix. Its root is
//! the file's `ContentId`.

use std::path::PathBuf;

use quaver_shared::ContentId;

/// The chunk-group size of every Quaver outboard: 16 KiB (2^4 BLAKE3 chunks of 1 KiB).
pub const CHUNK_LOG: u8 = 4;

/// One servable file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub id: ContentId,
    /// Where its bytes are; opened only when a peer asks for them.
    pub path: PathBuf,
    pub size: u64,
    /// The pre-order outboard (see the module doc): 4 MiB per GiB of file.
    pub outboard: OutboardData,
}

/// Where an entry's outboard is. An entry is looked up for every range request, so neither
/// variant copies the outboard: bytes are shared, a file is opened only to serve it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutboardData {
    /// In memory (in-memory libraries).
    Bytes(bytes::Bytes),
    /// In a file of `len` bytes (the store), streamed in pieces when served.
    File { path: PathBuf, len: u64 },
}

impl OutboardData {
    pub fn len(&self) -> u64 {
        match self {
            OutboardData::Bytes(b) => b.len() as u64,
            OutboardData::File { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LibraryError {
    #[error("library storage failed: {0}")]
    Storage(String),
}

/// Looks up servable files by content id. Implementations must be cheap to call concurrently.
pub trait Library: Send + Sync + 'static {
    fn entry(&self, id: &ContentId) -> Result<Option<Entry>, LibraryError>;
}

/// A library held in memory, for tests and for serving a handful of files.
#[derive(Default)]
pub struct MemoryLibrary {
    entries: std::sync::RwLock<std::collections::HashMap<ContentId, Entry>>,
}

impl MemoryLibrary {
    pub fn insert(&self, entry: Entry) {
        self.entries.write().unwrap_or_else(|e| e.into_inner()).insert(entry.id, entry);
    }
}

impl Library for MemoryLibrary {
    fn entry(&self, id: &ContentId) -> Result<Option<Entry>, LibraryError> {
        Ok(self.entries.read().unwrap_or_else(|e| e.into_inner()).get(id).cloned())
    }
}
