//! The buffers file pieces are read into: kept for reuse once QUIC is done with them.
//!
//! A piece read from disk is handed to quinn as `Bytes` and freed when the peer acknowledges
//! it, on whichever task processed the acknowledgement. Left to malloc, that churn of 64 KiB
//! buffers kept growing and trimming the top of the heap: every new buffer landed on pages
//! just given back to the kernel, and the page faults of filling them were 4-5 % of a source's
//! CPU on the 4-source loopback bench (plus the trims). Here a buffer whose last `Bytes` is
//! dropped goes back to a bounded free list, and the next read reuses it, pages and all.

use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// A bounded free list of piece buffers.
pub(super) struct PiecePool {
    piece_len: usize,
    keep: usize,
    free: Mutex<Vec<Vec<u8>>>,
}

impl PiecePool {
    /// A pool of buffers of `piece_len` bytes that keeps at most `keep` free ones (more are
    /// freed as usual: the pool bounds what it holds, not how many pieces are in flight).
    pub(super) fn new(piece_len: usize, keep: usize) -> Arc<Self> {
        Arc::new(Self { piece_len, keep, free: Mutex::new(Vec::new()) })
    }

    /// An empty buffer with room for one piece: a kept one if there is one.
    pub(super) fn take(&self) -> Vec<u8> {
        let kept = self.lock().pop();
        kept.unwrap_or_else(|| Vec::with_capacity(self.piece_len))
    }

    /// `buf` as `Bytes` that give the buffer back to this pool when the last of them is gone.
    pub(super) fn share(self: &Arc<Self>, buf: Vec<u8>) -> Bytes {
        Bytes::from_owner(Piece { buf, pool: Arc::clone(self) })
    }

    fn give_back(&self, mut buf: Vec<u8>) {
        // A buffer that grew or shrank is not a piece buffer any more; let it go.
        if buf.capacity() != self.piece_len {
            return;
        }
        buf.clear();
        let mut free = self.lock();
        if free.len() < self.keep {
            free.push(buf);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Vec<u8>>> {
        // A list of empty buffers is consistent whatever panicked while holding it.
        self.free.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The owner behind a piece's `Bytes`.
struct Piece {
    buf: Vec<u8>,
    pool: Arc<PiecePool>,
}

impl AsRef<[u8]> for Piece {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Piece {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(pool: &Arc<PiecePool>, byte: u8) -> (Bytes, *const u8) {
        let mut buf = pool.take();
        buf.resize(pool.piece_len, byte);
        let at = buf.as_ptr();
        (pool.share(buf), at)
    }

    #[test]
    fn a_buffer_comes_back_when_its_last_bytes_is_dropped() {
        let pool = PiecePool::new(1024, 4);
        let (piece, at) = filled(&pool, 7);
        let (head, tail) = (piece.slice(..10), piece.slice(1000..));
        assert_eq!((&head[..], tail.len()), (&[7u8; 10][..], 24));
        drop(piece);
        drop(head);
        assert!(pool.lock().is_empty(), "still in use through `tail`");
        drop(tail);
        let again = pool.take();
        assert_eq!(again.as_ptr(), at, "the same allocation is reused");
        assert!(again.is_empty() && again.capacity() == 1024);
    }

    #[test]
    fn the_pool_keeps_at_most_its_bound_and_only_piece_sized_buffers() {
        let pool = PiecePool::new(1024, 2);
        let pieces: Vec<_> = (0..5).map(|i| filled(&pool, i).0).collect();
        drop(pieces);
        assert_eq!(pool.lock().len(), 2);
        let mut other = pool.take();
        other.reserve(4096);
        drop(pool.share(other));
        assert!(pool.lock().iter().all(|b| b.capacity() == 1024));
        assert_eq!(pool.lock().len(), 1, "one was taken, the grown one was not kept");
    }
}
