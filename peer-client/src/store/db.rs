//! The store's sled layout and its encodings. Every value read back is checked: a malformed
//! record is a `StoreError::Corrupt`, never a panic.
//!
//! | tree | key | value |
//! |---|---|---|
//! | `roots` | shared folder or file (canonical path bytes) | empty for a folder; [`FILE_ROOT`] for one file shared by itself (a download saved outside the shared folders) |
//! | `files` | content id | [`StoredEntry`] (prost): the first path seen with these bytes |
//! | `paths` | path bytes | [`PathEntry`]: id, size, mtime of what that path held when hashed |
//! | `sources` | content id ‖ path bytes | empty: every path holding the id |
//! | `meta` | `digest`, `count` | the share digest (32 bytes), the number of ids (u64 BE) |
//! | `published:<directory url>` | content id | empty: what that directory acknowledged (`published.rs`) |

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use quaver_shared::directory::v1::FileInfo;
use quaver_shared::{ContentId, ShareDigest};

use super::StoreError;

pub const ROOTS: &str = "roots";
/// The `roots` value of a file shared by itself, not with its folder.
pub const FILE_ROOT: &[u8] = b"file";
pub const FILES: &str = "files";
/// Where stores before outboard files kept outboards (content id → outboard); moved to files
/// and dropped on open.
pub const LEGACY_OUTBOARDS: &str = "outboards";
pub const PATHS: &str = "paths";
pub const SOURCES: &str = "sources";
pub const META: &str = "meta";
pub const META_DIGEST: &[u8] = b"digest";
pub const META_COUNT: &[u8] = b"count";

/// A shared id's record (tree `files`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct StoredEntry {
    /// The file's path as raw OS bytes (paths need not be UTF-8).
    #[prost(bytes = "vec", tag = "1")]
    pub path: Vec<u8>,
    #[prost(uint64, tag = "2")]
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch (negative before it).
    #[prost(int64, tag = "3")]
    pub mtime_ns: i64,
    #[prost(message, optional, tag = "4")]
    pub info: Option<FileInfo>,
}

impl StoredEntry {
    pub fn decode_from(bytes: &[u8]) -> Result<Self, StoreError> {
        let entry = <Self as prost::Message>::decode(bytes)
            .map_err(|e| StoreError::Corrupt(format!("file record: {e}")))?;
        if entry.info.is_none() {
            return Err(StoreError::Corrupt("file record without info".into()));
        }
        Ok(entry)
    }

    pub fn info(&self) -> FileInfo {
        self.info.clone().unwrap_or_default()
    }
}

/// What a path held when it was last hashed (tree `paths`): 32-byte id, size, mtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathEntry {
    pub id: ContentId,
    pub size: u64,
    pub mtime_ns: i64,
}

impl PathEntry {
    const LEN: usize = 48;

    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[..32].copy_from_slice(self.id.as_bytes());
        out[32..40].copy_from_slice(&self.size.to_be_bytes());
        out[40..].copy_from_slice(&self.mtime_ns.to_be_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        let bad = || StoreError::Corrupt(format!("path record of {} bytes", bytes.len()));
        if bytes.len() != Self::LEN {
            return Err(bad());
        }
        let id = ContentId::from_slice(&bytes[..32]).map_err(|_| bad())?;
        let size = u64::from_be_bytes(bytes[32..40].try_into().map_err(|_| bad())?);
        let mtime_ns = i64::from_be_bytes(bytes[40..].try_into().map_err(|_| bad())?);
        Ok(Self { id, size, mtime_ns })
    }

    /// Whether the file still looks as it did when hashed.
    pub fn matches(&self, meta: &std::fs::Metadata) -> bool {
        self.size == meta.len() && self.mtime_ns == mtime_ns(meta)
    }
}

/// A file's modification time in nanoseconds since the Unix epoch (0 when the platform has none).
pub fn mtime_ns(meta: &std::fs::Metadata) -> i64 {
    let Ok(t) = meta.modified() else { return 0 };
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_nanos()).map(|n| -n).unwrap_or(i64::MIN),
    }
}

/// A path as sled key bytes: its raw OS bytes.
#[cfg(unix)]
pub fn path_key(path: &Path) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    path.as_os_str().as_bytes().to_vec()
}

#[cfg(unix)]
pub fn key_path(key: &[u8]) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    PathBuf::from(std::ffi::OsStr::from_bytes(key))
}

#[cfg(not(unix))]
pub fn path_key(path: &Path) -> Vec<u8> {
    path.as_os_str().as_encoded_bytes().to_vec()
}

#[cfg(not(unix))]
pub fn key_path(key: &[u8]) -> PathBuf {
    // Keys were written by `path_key` on this platform; anything else is replaced lossily.
    PathBuf::from(String::from_utf8_lossy(key).into_owned())
}

/// `sources` key: id ‖ path.
pub fn source_key(id: &ContentId, path: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(32 + path.len());
    key.extend_from_slice(id.as_bytes());
    key.extend_from_slice(path);
    key
}

/// The digest and id count, as kept in `meta`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub digest: ShareDigest,
    pub count: u64,
}

impl Summary {
    pub fn load(meta: &sled::Tree) -> Result<Self, StoreError> {
        let digest = match meta.get(META_DIGEST)? {
            None => ShareDigest::EMPTY,
            Some(v) => {
                ShareDigest::from_slice(&v).ok_or_else(|| StoreError::Corrupt("share digest".into()))?
            }
        };
        let count = match meta.get(META_COUNT)? {
            None => 0,
            Some(v) => u64::from_be_bytes(
                v.as_ref().try_into().map_err(|_| StoreError::Corrupt("share count".into()))?,
            ),
        };
        Ok(Self { digest, count })
    }
}
