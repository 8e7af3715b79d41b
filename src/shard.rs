//! Counters split by thread, so that threads sampling on different cores do not write one cache line.
//!
//! Every sampled allocation and every free of one updates a few counters (samples, live sampled allocations,
//! the heap estimates). Kept in one place, each update by one core takes the cache line from the others, a
//! transfer of 100 ns or more; with two threads sampling, that is most of a sample's cost. Each thread
//! instead updates the shard it was given when it first sampled (threads are dealt out round robin), and a
//! reader adds up the shards. Counters stay exact: every update is an atomic add to one shard.

use core::cell::Cell;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

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

/// A count split into shards.
pub(crate) struct Counter([Padded<AtomicU64>; SHARDS]);

impl Counter {
    pub(crate) const fn new() -> Counter {
        Counter([const { Padded(AtomicU64::new(0)) }; SHARDS])
    }

    /// Adds 1 in the current thread's shard.
    pub(crate) fn increment(&self) {
        self.0[index()].0.fetch_add(1, Relaxed);
    }

    /// The total over all shards.
    pub(crate) fn get(&self) -> u64 {
        self.0
            .iter()
            .fold(0u64, |sum, shard| sum.wrapping_add(shard.0.load(Relaxed)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_made_on_many_threads_add_up() {
        static COUNT: Counter = Counter::new();
        std::thread::scope(|s| {
            for t in 0..40 {
                s.spawn(move || {
                    // 40 threads over 16 shards: several threads share each shard.
                    for _ in 0..1000 + t {
                        COUNT.increment();
                    }
                });
            }
        });
        assert_eq!(COUNT.get(), 40 * 1000 + (0..40).sum::<u64>());
    }
}
