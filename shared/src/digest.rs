//! The share-list digest: lets a reconnecting peer and the directory see in one round trip
//! whether they agree on what the peer shares.
//!
//! It is the XOR of a keyed BLAKE3 hash of every content id, so it ignores order and both sides
//! can update it one file at a time (adding and removing are the same XOR).

use crate::ContentId;

const CONTEXT: &str = "quaver share digest v1";

/// Order-independent digest of a set of content ids.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ShareDigest([u8; 32]);

impl ShareDigest {
    pub const EMPTY: ShareDigest = ShareDigest([0; 32]);

    /// The digest of a whole set. Duplicates cancel out, so pass each id once.
    pub fn of<'a>(ids: impl IntoIterator<Item = &'a ContentId>) -> Self {
        let mut digest = Self::EMPTY;
        for id in ids {
            digest.toggle(id);
        }
        digest
    }

    /// Adds an id that is not in the set, or removes one that is.
    pub fn toggle(&mut self, id: &ContentId) {
        let h = blake3::derive_key(CONTEXT, id.as_bytes());
        for (d, x) in self.0.iter_mut().zip(h.iter()) {
            *d ^= x;
        }
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Reads a digest from the wire; anything but 32 bytes is `None`.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(bytes).ok().map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_does_not_matter_and_removal_undoes_addition() {
        let a = ContentId::of_bytes(b"a");
        let b = ContentId::of_bytes(b"b");
        assert_eq!(ShareDigest::of([&a, &b]), ShareDigest::of([&b, &a]));
        let mut d = ShareDigest::of([&a, &b]);
        d.toggle(&b);
        assert_eq!(d, ShareDigest::of([&a]));
        d.toggle(&a);
        assert_eq!(d, ShareDigest::EMPTY);
        assert_ne!(ShareDigest::of([&a]), ShareDigest::of([&b]));
    }
}
