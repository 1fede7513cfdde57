//! What a directory has durably acknowledged of this node's share list, one sled tree per
//! directory (`published:<directory url>`: content id → empty).
//!
//! The directory session writes it after each acknowledged `Publish` batch, and compares its
//! digest with the one the directory reports in `Announce`: equal means the directory holds
//! exactly this set, so only the difference between it and the shared ids needs sending.
//! Both key spaces stream in content-id order (see [`Store::shared_ids_after`]), so the
//! difference is a merge join that never holds either list in memory.
//!
//! A set that lags behind the directory (a crash before a flush) is still a consistent set: its
//! digest simply differs from the directory's, and the session then resends everything.

use std::ops::Bound;

use quaver_shared::{ContentId, ShareDigest};
use sled::transaction::{ConflictableTransactionError, TransactionError};

use super::{Store, StoreError};

/// The ids one directory acknowledged (see the module doc). Cheap to clone.
#[derive(Clone)]
pub struct Published {
    tree: sled::Tree,
}

fn range_after(after: Option<&ContentId>) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    match after {
        Some(id) => (Bound::Excluded(id.to_vec()), Bound::Unbounded),
        None => (Bound::Unbounded, Bound::Unbounded),
    }
}

fn ids(iter: sled::Iter) -> impl Iterator<Item = Result<ContentId, StoreError>> + use<> {
    iter.keys().map(|k| {
        let k = k?;
        ContentId::from_slice(&k).map_err(|e| StoreError::Corrupt(format!("content id key: {e}")))
    })
}

impl Store {
    /// The shared content ids in increasing order, starting after `after` (from the first when
    /// `None`). Streams from sled.
    pub fn shared_ids_after(
        &self,
        after: Option<&ContentId>,
    ) -> impl Iterator<Item = Result<ContentId, StoreError>> + use<> {
        ids(self.files.range(range_after(after)))
    }

    /// The acknowledged set for the directory at `directory_url` (created empty on first use).
    pub fn published(&self, directory_url: &str) -> Result<Published, StoreError> {
        let name = format!("published:{}", directory_url.trim_end_matches('/'));
        Ok(Published { tree: self.db.open_tree(name)? })
    }
}

impl Published {
    /// The acknowledged ids in increasing order, starting after `after`. Streams from sled.
    pub fn ids_after(
        &self,
        after: Option<&ContentId>,
    ) -> impl Iterator<Item = Result<ContentId, StoreError>> + use<> {
        ids(self.tree.range(range_after(after)))
    }

    /// Digest and number of the acknowledged ids, computed by streaming over them.
    pub fn summary(&self) -> Result<(ShareDigest, u64), StoreError> {
        let mut digest = ShareDigest::EMPTY;
        let mut count = 0;
        for id in self.ids_after(None) {
            digest.toggle(&id?);
            count += 1;
        }
        Ok((digest, count))
    }

    /// Records one acknowledged batch atomically and flushes it. `digest` is the set's digest
    /// before the batch; the result is the digest after it (ids already present, or already
    /// absent, change nothing).
    pub fn apply(
        &self,
        digest: ShareDigest,
        added: &[ContentId],
        removed: &[ContentId],
    ) -> Result<ShareDigest, StoreError> {
        let digest = self
            .tree
            .transaction(|tree| {
                let mut digest = digest;
                for id in added {
                    if tree.insert(&id.as_bytes()[..], &[][..])?.is_none() {
                        digest.toggle(id);
                    }
                }
                for id in removed {
                    if tree.remove(&id.as_bytes()[..])?.is_some() {
                        digest.toggle(id);
                    }
                }
                Ok::<_, ConflictableTransactionError<()>>(digest)
            })
            .map_err(|e| match e {
                TransactionError::Storage(e) => StoreError::Db(e),
                TransactionError::Abort(()) => StoreError::Corrupt("transaction aborted".into()),
            })?;
        self.tree.flush()?;
        Ok(digest)
    }

    /// Forgets every acknowledged id (before resending everything).
    pub fn clear(&self) -> Result<(), StoreError> {
        self.tree.clear()?;
        self.tree.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cid(n: u8) -> ContentId {
        ContentId::of_bytes(&[n])
    }

    #[test]
    fn apply_tracks_the_digest_of_what_is_really_there() {
        let store = Store::temporary().unwrap();
        let p = store.published("http://dir:7700/").unwrap();
        assert_eq!(p.summary().unwrap(), (ShareDigest::EMPTY, 0));
        let d = p.apply(ShareDigest::EMPTY, &[cid(1), cid(2), cid(3)], &[]).unwrap();
        assert_eq!(d, ShareDigest::of([&cid(1), &cid(2), &cid(3)]));
        // Re-adding a present id and removing an absent one change nothing.
        let d = p.apply(d, &[cid(1)], &[cid(2), cid(9)]).unwrap();
        assert_eq!(d, ShareDigest::of([&cid(1), &cid(3)]));
        assert_eq!(p.summary().unwrap(), (d, 2));

        let mut sorted = vec![cid(1), cid(3)];
        sorted.sort();
        let listed: Vec<_> = p.ids_after(None).map(Result::unwrap).collect();
        assert_eq!(listed, sorted);
        let after: Vec<_> = p.ids_after(Some(&sorted[0])).map(Result::unwrap).collect();
        assert_eq!(after, vec![sorted[1]]);

        // Trailing slashes name the same directory; another directory has its own set.
        assert_eq!(store.published("http://dir:7700").unwrap().summary().unwrap().1, 2);
        assert_eq!(store.published("http://other:7700").unwrap().summary().unwrap().1, 0);

        p.clear().unwrap();
        assert_eq!(p.summary().unwrap(), (ShareDigest::EMPTY, 0));
    }
}
