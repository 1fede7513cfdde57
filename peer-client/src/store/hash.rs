//! One streaming pass over a file: its `ContentId` (the BLAKE3 root) and its pre-order bao-tree
//! outboard with 16 KiB chunk groups (the format fixed in [`crate::library`]).

use std::io::{self, BufReader, Read};

use bao_tree::io::outboard::PreOrderOutboard;
use bao_tree::io::sync::CreateOutboard;
use bao_tree::{BaoTree, BlockSize};
use quaver_shared::ContentId;

use crate::library::CHUNK_LOG;

/// Read buffer of the hashing pass. bao-tree reads one 16 KiB chunk group at a time; a large
/// buffer turns that into few big `read` calls.
const READ_BUFFER: usize = 1 << 20;

/// The geometry of a Quaver outboard for a file of `size` bytes.
pub fn tree(size: u64) -> BaoTree {
    BaoTree::new(size, BlockSize::from_chunk_log(CHUNK_LOG))
}

/// Length in bytes of the outboard of a file of `size` bytes.
pub fn outboard_len(size: u64) -> u64 {
    tree(size).outboard_size()
}

/// A file's id and outboard.
#[derive(Debug)]
pub struct Hashed {
    pub id: ContentId,
    pub outboard: Vec<u8>,
}

/// Hashes exactly `size` bytes of `data` in one pass. A source shorter than `size` is an
/// `UnexpectedEof` error (the file shrank while being read); bytes past `size` are not read.
pub fn hash_reader(data: impl Read, size: u64) -> io::Result<Hashed> {
    let tree = tree(size);
    let len = usize::try_from(tree.outboard_size())
        .map_err(|_| io::Error::other("outboard too large for this platform"))?;
    let mut outboard = PreOrderOutboard { root: blake3::hash(&[]), tree, data: vec![0u8; len] };
    let reader = BufReader::with_capacity(READ_BUFFER, data.take(size));
    outboard.init_from(reader)?;
    if outboard.data.len() != len {
        return Err(io::Error::other("outboard has an unexpected length"));
    }
    Ok(Hashed { id: ContentId::from_array(*outboard.root.as_bytes()), outboard: outboard.data })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_blake3_of_the_bytes_and_outboard_has_the_tree_size() {
        for size in [0usize, 1, 1024, 16 * 1024, 16 * 1024 + 1, 100_000, 1 << 20] {
            let data: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
            let hashed = hash_reader(&data[..], size as u64).unwrap();
            assert_eq!(hashed.id, ContentId::of_bytes(&data), "size {size}");
            assert_eq!(hashed.outboard.len() as u64, outboard_len(size as u64), "size {size}");
        }
        // 1 MiB is 64 chunk groups, so 63 hash pairs of 64 bytes.
        assert_eq!(outboard_len(1 << 20), 63 * 64);
    }

    #[test]
    fn outboard_verifies_a_range_against_the_root() {
        use bao_tree::io::outboard::PreOrderMemOutboard;
        use bao_tree::io::sync::{decode_ranges, encode_ranges_validated};
        use bao_tree::{ChunkNum, ChunkRanges};

        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
        let hashed = hash_reader(&data[..], data.len() as u64).unwrap();
        let root = blake3::Hash::from(*hashed.id.as_bytes());
        let ob = PreOrderMemOutboard { root, tree: tree(data.len() as u64), data: hashed.outboard };
        let ranges = ChunkRanges::from(ChunkNum(16)..ChunkNum(48));
        let mut encoded = Vec::new();
        encode_ranges_validated(&data[..], &ob, &ranges, &mut encoded).unwrap();
        // The receiver knows only the root and the size.
        let t = tree(data.len() as u64);
        let mut fresh = PreOrderMemOutboard { root, tree: t, data: vec![0u8; t.outboard_size() as usize] };
        let mut out = vec![0u8; data.len()];
        decode_ranges(&encoded[..], &ranges, &mut out[..], &mut fresh).unwrap();
        assert_eq!(&out[16 * 1024..48 * 1024], &data[16 * 1024..48 * 1024]);
    }

    #[test]
    fn a_short_source_is_an_error() {
        let err = hash_reader(&[1u8; 10][..], 11).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
