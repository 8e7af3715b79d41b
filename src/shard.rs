//! Thread groups, so that threads sampling on different cores do not write one cache line.
//!
//! Every sampled allocation and every free of one updates a few figures. Kept in one place, each update by
//! one core takes the cache line from the others, a transfer between cores; with two threads sampling,
//! that is most of a sample's cost. Each thread is instead given a shard when it first samples (round
//! robin): the heap totals keep one sum per shard, which a reader adds up, and the bucket table offsets a
//! thread's stripes by its shard, so threads sampling one stack keep buckets of their own.

use core::cell::Cell;
use core::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// Number of shards: more than the threads that usually sample at once.
pub(crate) const SHARDS: usize = 16;

/// A value on cache lines of its own (128 bytes: adjacent-line prefetching moves lines in pairs).
#[repr(align(128))]
pub(crate) struct Padded<T>(pub(crate) T);

static NEXT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's shard, `usize::MAX` until it first samples.
    static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// The current thread's shard, in `0..SHARDS`. Touches only a `const` thread-local without destructor, so
/// it works during thread exit too.
#[inline]
pub(crate) fn index() -> usize {
    SHARD
        .try_with(|shard| {
            if shard.get() == usize::MAX {
                shard.set(NEXT.fetch_add(1, Relaxed) % SHARDS);
            }
            shard.get()
        })
        .unwrap_or(0)
}
