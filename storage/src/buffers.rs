//! Reusable byte buffers.
//!
//! Ingest handles megabyte-sized transient buffers per request: the body,
//! its decompressed form, the encoded WAL record. A fresh allocation of
//! that size each time made the kernel map and zero new pages, a tenth of
//! ingest time in a profile. A [`BufferPool`] keeps a few for reuse; a
//! [`PooledBuf`] goes back to its pool when dropped.

use std::ops::Deref;
use std::sync::Arc;

use parking_lot::Mutex;

/// Spare capacity [`PooledBuf::into_arrow`] lets a buffer keep.
const MAX_SPARE_BYTES: usize = 64 << 10;

/// Byte buffers kept between uses (request bodies, WAL payloads).
///
/// At most `keep` buffers wait in the pool, and a buffer that grew past
/// `max_kept_bytes` is freed instead of kept, so the pool holds at most
/// `keep * max_kept_bytes` while idle.
pub struct BufferPool {
    free: Mutex<Vec<Vec<u8>>>,
    keep: usize,
    max_kept_bytes: usize,
}

impl BufferPool {
    pub fn new(keep: usize, max_kept_bytes: usize) -> Arc<BufferPool> {
        Arc::new(BufferPool { free: Mutex::new(Vec::new()), keep, max_kept_bytes })
    }

    /// An empty buffer, with the capacity of a returned one when there is one.
    pub fn take(self: &Arc<Self>) -> PooledBuf {
        let buf = self.free.lock().pop().unwrap_or_default();
        PooledBuf { buf, pool: self.clone() }
    }
}

/// A buffer that goes back to its pool when dropped.
pub struct PooledBuf {
    buf: Vec<u8>,
    pool: Arc<BufferPool>,
}

impl Deref for PooledBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.buf
    }
}

impl std::fmt::Debug for PooledBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledBuf").field("len", &self.buf.len()).field("capacity", &self.buf.capacity()).finish()
    }
}

impl PooledBuf {
    /// The buffer itself, to fill.
    pub fn vec_mut(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// The bytes as an Arrow buffer, without a copy. Arrays decoded from it
    /// share its memory, and it goes back to the pool when the last of them
    /// is dropped.
    ///
    /// Such arrays can outlive the request (the head keeps the rows of a
    /// batch that needs no regrouping), so a reused buffer much larger than
    /// its bytes is first shrunk to fit them: the head counts rows, not the
    /// spare capacity they would otherwise hold on to.
    pub fn into_arrow(mut self) -> arrow_buffer::Buffer {
        if self.buf.capacity() > 2 * self.buf.len() + MAX_SPARE_BYTES {
            self.buf.shrink_to_fit();
        }
        arrow_buffer::Buffer::from(bytes::Bytes::from_owner(self))
    }
}

impl AsRef<[u8]> for PooledBuf {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        if self.buf.capacity() == 0 || self.buf.capacity() > self.pool.max_kept_bytes {
            return;
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let mut free = self.pool.free.lock();
        if free.len() < self.pool.keep {
            free.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_up_to_the_pool_bounds() {
        let pool = BufferPool::new(2, 1 << 16);
        let mut a = pool.take();
        a.vec_mut().extend_from_slice(&[1; 1000]);
        let a_ptr = a.as_ptr();
        drop(a);
        let b = pool.take();
        assert!(b.is_empty(), "a reused buffer starts empty");
        assert_eq!(b.buf.as_ptr(), a_ptr, "the returned buffer is handed out again");
        drop(b);
        // A buffer over max_kept_bytes is freed, and at most `keep` are kept.
        let mut big = pool.take();
        big.vec_mut().resize((1 << 16) + 1, 0);
        drop(big);
        let held: Vec<PooledBuf> = (0..3)
            .map(|_| {
                let mut b = pool.take();
                b.vec_mut().extend_from_slice(&[2; 100]);
                b
            })
            .collect();
        drop(held);
        let free = pool.free.lock();
        assert_eq!(free.len(), 2);
        assert!(free.iter().all(|b| b.capacity() <= 1 << 16));
    }

    #[test]
    fn an_arrow_view_shares_the_bytes_and_returns_the_buffer_when_dropped() {
        let pool = BufferPool::new(2, 1 << 16);
        let mut a = pool.take();
        a.vec_mut().extend_from_slice(b"0123456789");
        let a_ptr = a.as_ptr();
        let whole = a.into_arrow();
        let part = whole.slice_with_length(2, 3);
        assert_eq!(whole.as_ptr(), a_ptr, "no copy");
        assert_eq!(part.as_slice(), b"234");
        drop(whole);
        assert!(pool.free.lock().is_empty(), "a slice still holds the buffer");
        drop(part);
        assert_eq!(pool.take().buf.as_ptr(), a_ptr, "back in the pool after the last view");
    }

    #[test]
    fn an_arrow_view_does_not_hold_much_more_than_its_bytes() {
        let pool = BufferPool::new(2, 1 << 24);
        let mut big = pool.take();
        big.vec_mut().resize(1 << 22, 0);
        drop(big);
        let mut small = pool.take();
        assert!(small.buf.capacity() >= 1 << 22, "the big buffer is reused");
        small.vec_mut().extend_from_slice(&[7; 1000]);
        drop(small.into_arrow());
        let kept = pool.take();
        assert!(kept.buf.capacity() <= 1000 + MAX_SPARE_BYTES, "capacity {}", kept.buf.capacity());
    }
}
