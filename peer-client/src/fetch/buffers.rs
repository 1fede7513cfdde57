//! A download's block buffers: a bounded pool whose buffers come back when dropped.

use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The download's block buffers: at most `MAX_BUFFERS` exist, and a dropped one is kept for
/// the next request rather than returned to the allocator (a fresh 256 KiB buffer per block
/// comes from mmap, whose page faults and munmap were 4 % of a downloader's CPU, and buffers
/// freed on several threads fragment the heap). A buffer comes back however its request ends:
/// written, refused, failed or aborted.
pub(super) struct BufferPool {
    permits: Arc<Semaphore>,
    free: Mutex<FreeBuffers>,
}

struct FreeBuffers {
    buffers: Vec<Vec<u8>>,
    /// Set by `release_free`: buffers dropped afterwards go back to the allocator.
    released: bool,
}

/// One buffer of the pool, with the permit that counts it. Dropping it gives it back.
pub(super) struct Buffer {
    pub(super) bytes: Vec<u8>,
    pool: Arc<BufferPool>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Buffer {
    fn drop(&mut self) {
        let mut bytes = std::mem::take(&mut self.bytes);
        bytes.clear();
        let mut free = self.pool.lock();
        if !free.released {
            free.buffers.push(bytes);
        }
    }
}

impl BufferPool {
    pub(super) fn new(count: usize) -> Arc<Self> {
        let free = FreeBuffers { buffers: Vec::new(), released: false };
        Arc::new(Self { permits: Arc::new(Semaphore::new(count)), free: Mutex::new(free) })
    }

    /// Waits for a buffer; `None` once the pool is closed.
    pub(super) async fn take(self: &Arc<Self>) -> Option<Buffer> {
        let permit = self.permits.clone().acquire_owned().await.ok()?;
        let bytes = self.lock().buffers.pop().unwrap_or_default();
        Some(Buffer { bytes, pool: Arc::clone(self), _permit: permit })
    }

    /// Returns the kept buffers' memory to the allocator, and from now on every buffer dropped.
    pub(super) fn release_free(&self) {
        let mut free = self.lock();
        free.buffers = Vec::new();
        free.released = true;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FreeBuffers> {
        // A list of empty buffers is consistent whatever panicked while holding it.
        self.free.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_dropped_buffer_is_reused_however_its_request_ended() {
        let pool = BufferPool::new(2);
        let mut a = pool.take().await.unwrap();
        a.bytes.extend_from_slice(&[7; 1000]);
        let kept = a.bytes.as_ptr();
        // Dropped without being written: a refused, failed or aborted request.
        drop(a);
        let again = pool.take().await.unwrap();
        assert_eq!(again.bytes.as_ptr(), kept, "the same allocation comes back");
        assert!(again.bytes.is_empty() && again.bytes.capacity() >= 1000, "emptied, not freed");
    }

    #[tokio::test]
    async fn at_most_count_buffers_exist_at_once() {
        let pool = BufferPool::new(2);
        let a = pool.take().await.unwrap();
        let _b = pool.take().await.unwrap();
        let third = tokio::time::timeout(std::time::Duration::from_millis(50), pool.take()).await;
        assert!(third.is_err(), "a third buffer waits for one to come back");
        drop(a);
        assert!(pool.take().await.is_some());
    }

    #[tokio::test]
    async fn after_release_buffers_go_back_to_the_allocator() {
        let pool = BufferPool::new(2);
        let mut a = pool.take().await.unwrap();
        a.bytes.extend_from_slice(&[1; 100]);
        let b = pool.take().await.unwrap();
        drop(b);
        pool.release_free();
        assert!(pool.lock().buffers.is_empty(), "kept buffers were freed");
        drop(a);
        assert!(pool.lock().buffers.is_empty(), "a buffer dropped later is not kept");
    }
}
