//! Checks bytes from untrusted peers against a file's content id, via its bao outboard.
//!
//! Computation, and no I/O but reading hashes: `Outboard::from_file` takes the outboard a peer
//! sent, kept in a file (so a big file's outboard stays off the heap: 16 MiB for 4 GiB, where a
//! block check reads only the few hundred bytes of its path), and the content id we asked for;
//! `check_block` hashes one block and walks the tree from the root down to it. Every parent pair
//! on the way must hash to the value above it, so a block that passes is bound to the content
//! id by BLAKE3 alone, whoever sent it.
//!
//! Blame is exact: a `ParentHashMismatch` means the *outboard* disagrees with the content id
//! (blame whoever sent the outboard); a `LeafHashMismatch` under an authenticated parent means
//! the *block* is wrong (blame whoever sent the block).

use std::ops::Range;

use std::fs::File;
use std::os::unix::fs::FileExt;

use bao_tree::io::outboard::PreOrderOutboard;
use bao_tree::io::sync::{Outboard as _, ReadAt};
use bao_tree::iter::BaoChunk;
use bao_tree::{BaoTree, BlockSize, ChunkNum, ChunkRanges};
use quaver_shared::ContentId;

use crate::library::CHUNK_LOG;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("outboard is {got} bytes; a {size}-byte file needs {want}")]
    OutboardLength { size: u64, got: usize, want: u64 },
    #[error("the outboard does not match the content id")]
    BadOutboard,
    #[error("block bytes do not match the content id")]
    BadBlock,
    #[error("block {range:?} is not aligned to 16 KiB chunk groups or lies outside the file")]
    Misaligned { range: Range<u64> },
    /// Our own copy of the outboard could not be read (a local disk error): nobody's fault
    /// but ours, so nobody is blamed.
    #[error("cannot read the outboard: {0}")]
    Unreadable(String),
}

/// A file's outboard, checked for shape, ready to verify blocks.
pub struct Outboard {
    inner: PreOrderOutboard<HashFile>,
}

/// The file an outboard's hash pairs are read from (bao-tree reads through `ReadAt`).
struct HashFile(File);

impl ReadAt for HashFile {
    fn read_at(&self, pos: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        FileExt::read_at(&self.0, buf, pos)
    }
}

pub fn block_size() -> BlockSize {
    BlockSize::from_chunk_log(CHUNK_LOG)
}

/// The outboard length a file of `size` bytes has.
pub fn outboard_len(size: u64) -> u64 {
    BaoTree::new(size, block_size()).outboard_size()
}

impl Outboard {
    /// Takes the outboard a peer sent for the file `id` of `size` bytes, kept in `file`, which
    /// is `len` bytes long (the caller read its metadata). Only the length is checked here; the
    /// hashes are checked against `id` on every block. Block checks read their hashes from the
    /// file; nothing else is kept in memory.
    pub fn from_file(id: &ContentId, size: u64, file: File, len: u64) -> Result<Self, VerifyError> {
        let tree = BaoTree::new(size, block_size());
        if len != tree.outboard_size() {
            let got = usize::try_from(len).unwrap_or(usize::MAX);
            return Err(VerifyError::OutboardLength { size, got, want: tree.outboard_size() });
        }
        let root = blake3::Hash::from_bytes(*id.as_bytes());
        Ok(Self { inner: PreOrderOutboard { root, tree, data: HashFile(file) } })
    }

    pub fn size(&self) -> u64 {
        self.inner.tree.size()
    }

    /// The outboard's bytes, read back from its file. Only tests need them whole: a finished
    /// download hands its outboard file to the store as it is.
    #[cfg(test)]
    pub fn to_bytes(&self) -> std::io::Result<Vec<u8>> {
        let len = usize::try_from(self.inner.tree.outboard_size())
            .map_err(|_| std::io::Error::other("outboard too large for this platform"))?;
        let mut bytes = vec![0u8; len];
        FileExt::read_exact_at(&self.inner.data.0, &mut bytes, 0)?;
        Ok(bytes)
    }

    /// Verifies the bytes of `range` (chunk-group aligned; may end at the end of the file).
    pub fn check_block(&self, range: Range<u64>, bytes: &[u8]) -> Result<(), VerifyError> {
        let group = block_size().bytes() as u64;
        let size = self.size();
        let aligned =
            range.start.is_multiple_of(group) && (range.end.is_multiple_of(group) || range.end == size);
        if !aligned
            || range.start >= range.end
            || range.end > size
            || bytes.len() as u64 != range.end - range.start
        {
            return Err(VerifyError::Misaligned { range });
        }
        // Rounding the end up takes in a final partial chunk; aligned ends are exact anyway.
        let chunks = ChunkRanges::from(ChunkNum::chunks(range.start)..ChunkNum::chunks(range.end));
        let tree = self.inner.tree;
        // The walk of bao-tree's `encode_ranges_validated`, minus its copies: that reads every
        // 16 KiB group out of the block into a buffer of its own (through `ReadAt`) before
        // hashing it: 3 % of a 4-source downloader's CPU in perf, copying. Here groups are
        // hashed where they lie. Pre-order: each parent's pair is checked against the hash
        // expected of it (the root first), and pushes the expectations of the children the
        // range needs, left on top.
        let mut expected = vec![self.inner.root];
        for item in tree.ranges_pre_order_chunks_iter_ref(&chunks, 0) {
            let want = expected.pop().ok_or(VerifyError::BadOutboard)?;
            match item {
                BaoChunk::Parent { node, is_root, left, right, .. } => {
                    let (l, r) = self
                        .inner
                        .load(node)
                        .map_err(|e| VerifyError::Unreadable(e.to_string()))?
                        .ok_or(VerifyError::BadOutboard)?;
                    if parent_cv(&l, &r, is_root) != want {
                        return Err(VerifyError::BadOutboard);
                    }
                    if right {
                        expected.push(r);
                    }
                    if left {
                        expected.push(l);
                    }
                }
                BaoChunk::Leaf { start_chunk, size, is_root, .. } => {
                    let at =
                        start_chunk.to_bytes().checked_sub(range.start).and_then(|a| usize::try_from(a).ok());
                    let group = at.and_then(|a| bytes.get(a..a.checked_add(size)?));
                    let group = group.ok_or(VerifyError::Misaligned { range: range.clone() })?;
                    if hash_group(start_chunk, group, is_root) != want {
                        return Err(VerifyError::BadBlock);
                    }
                }
            }
        }
        Ok(())
    }
}

/// The BLAKE3 chaining value of a parent node over its children's (the root's is the hash).
fn parent_cv(left: &blake3::Hash, right: &blake3::Hash, is_root: bool) -> blake3::Hash {
    use blake3::hazmat::{Mode, merge_subtrees_non_root, merge_subtrees_root};
    if is_root {
        merge_subtrees_root(left.as_bytes(), right.as_bytes(), Mode::Hash)
    } else {
        blake3::Hash::from(merge_subtrees_non_root(left.as_bytes(), right.as_bytes(), Mode::Hash))
    }
}

/// The chaining value of the chunk group `bytes` starting at `start` (the hash, if it is the
/// whole file).
fn hash_group(start: ChunkNum, bytes: &[u8], is_root: bool) -> blake3::Hash {
    use blake3::hazmat::HasherExt;
    if is_root {
        return blake3::hash(bytes);
    }
    let mut hasher = blake3::Hasher::new();
    hasher.set_input_offset(start.to_bytes());
    hasher.update(bytes);
    blake3::Hash::from(hasher.finalize_non_root())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[1]).collect()
    }

    /// An `Outboard` over `bytes`, kept in a temporary file as a download keeps it.
    fn in_file(id: &ContentId, size: u64, bytes: Vec<u8>) -> Result<Outboard, VerifyError> {
        use std::io::Write;
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&bytes).unwrap();
        Outboard::from_file(id, size, f, bytes.len() as u64)
    }

    fn outboard_of(bytes: &[u8]) -> (ContentId, Vec<u8>) {
        let ob = bao_tree::io::outboard::PreOrderMemOutboard::create(bytes, block_size());
        (ContentId::from_array(*ob.root.as_bytes()), ob.data)
    }

    #[test]
    fn good_blocks_pass_and_flipped_bytes_fail() {
        let file = data(1_000_000 + 123);
        let (id, ob) = outboard_of(&file);
        assert_eq!(id, ContentId::of_bytes(&file), "the outboard root is the BLAKE3 hash");
        let ob = in_file(&id, file.len() as u64, ob).unwrap();
        let block = 256 * 1024u64;
        let mut start = 0;
        while start < file.len() as u64 {
            let end = (start + block).min(file.len() as u64);
            let bytes = &file[start as usize..end as usize];
            assert_eq!(ob.check_block(start..end, bytes), Ok(()), "block at {start}");
            let mut bad = bytes.to_vec();
            let last = bad.len() - 1;
            bad[last] ^= 1;
            assert_eq!(ob.check_block(start..end, &bad), Err(VerifyError::BadBlock));
            start = end;
        }
    }

    #[test]
    fn a_forged_outboard_is_blamed_on_the_outboard() {
        let file = data(600_000);
        let (id, mut ob) = outboard_of(&file);
        ob[0] ^= 0xff;
        let ob = in_file(&id, file.len() as u64, ob).unwrap();
        assert_eq!(ob.check_block(0..262_144, &file[..262_144]), Err(VerifyError::BadOutboard));
        let other = ContentId::of_bytes(b"something else");
        let (_, good) = outboard_of(&file);
        let wrong_root = in_file(&other, file.len() as u64, good).unwrap();
        assert_eq!(wrong_root.check_block(0..262_144, &file[..262_144]), Err(VerifyError::BadOutboard));
    }

    #[test]
    fn shapes_are_checked() {
        let file = data(100_000);
        let (id, ob) = outboard_of(&file);
        assert!(matches!(in_file(&id, 100_000, vec![0; 3]), Err(VerifyError::OutboardLength { .. })));
        let ob = in_file(&id, 100_000, ob).unwrap();
        assert!(matches!(ob.check_block(1..16_384, &file[1..16_384]), Err(VerifyError::Misaligned { .. })));
        assert!(matches!(ob.check_block(0..16_384, &file[..100]), Err(VerifyError::Misaligned { .. })));
        assert_eq!(ob.check_block(16_384..100_000, &file[16_384..]), Ok(()));
        assert_eq!(outboard_len(100_000), ob.to_bytes().unwrap().len() as u64);
    }

    #[test]
    fn tiny_and_empty_files() {
        for len in [0usize, 1, 1024, 16_384, 16_385] {
            let file = data(len);
            let (id, ob) = outboard_of(&file);
            let ob = in_file(&id, len as u64, ob).unwrap();
            if len > 0 {
                assert_eq!(ob.check_block(0..len as u64, &file), Ok(()), "len {len}");
            }
        }
    }

    #[test]
    fn an_outboard_in_a_file_checks_blocks_like_one_in_memory() {
        use std::io::Write;
        let file = data(1_000_000);
        let (id, ob) = outboard_of(&file);
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&ob).unwrap();
        let len = ob.len() as u64;
        let on_disk = Outboard::from_file(&id, file.len() as u64, f, len).unwrap();
        assert_eq!(on_disk.check_block(0..262_144, &file[..262_144]), Ok(()));
        let mut bad = file[262_144..524_288].to_vec();
        bad[7] ^= 1;
        assert_eq!(on_disk.check_block(262_144..524_288, &bad), Err(VerifyError::BadBlock));
        assert_eq!(on_disk.to_bytes().unwrap(), ob);
        let short = tempfile::tempfile().unwrap();
        assert!(matches!(
            Outboard::from_file(&id, file.len() as u64, short, 3),
            Err(VerifyError::OutboardLength { .. })
        ));
    }

    #[test]
    fn blocks_pass_or_fail_exactly_as_bao_trees_own_validator_says() {
        // A differential check of the hand-written walk: every block of a file whose size is
        // no power of two, sound or with one byte flipped in the data or in the outboard.
        use bao_tree::io::outboard::PreOrderMemOutboard;
        use bao_tree::io::sync::encode_ranges_validated;
        let file = data(3 * 262_144 + 5 * 16_384 + 77);
        let size = file.len() as u64;
        let (id, good) = outboard_of(&file);
        let bao_says = |ob: &[u8], start: u64, end: u64, bytes: &[u8]| {
            let mut data = file.clone();
            data[start as usize..end as usize].copy_from_slice(bytes);
            let tree = BaoTree::new(size, block_size());
            let outboard = PreOrderMemOutboard {
                root: blake3::Hash::from_bytes(*id.as_bytes()),
                tree,
                data: ob.to_vec(),
            };
            let chunks = ChunkRanges::from(ChunkNum::chunks(start)..ChunkNum::chunks(end));
            encode_ranges_validated(&data[..], &outboard, &chunks, std::io::sink()).is_ok()
        };
        let mut cases = 0;
        let mut start = 0;
        while start < size {
            let end = (start + 262_144).min(size);
            let block = &file[start as usize..end as usize];
            let mut flipped = block.to_vec();
            flipped[(start as usize * 7) % block.len()] ^= 0x40;
            let mut bad_ob = good.clone();
            bad_ob[(start as usize / 1024) % good.len()] ^= 1;
            for (ob, bytes) in [(&good, block), (&good, &flipped[..]), (&bad_ob, block)] {
                let ours = in_file(&id, size, ob.clone()).unwrap().check_block(start..end, bytes).is_ok();
                assert_eq!(ours, bao_says(ob, start, end, bytes), "block at {start}");
                cases += usize::from(!ours);
            }
            start = end;
        }
        assert!(cases >= 4, "the corruptions must be caught, not just agreed on: {cases}");
    }
}
