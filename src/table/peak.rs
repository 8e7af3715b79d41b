//! The peak tracker: the highest estimated in-use bytes seen, and a copy of the bucket counts at a peak, kept
//! for the heap profile at peak ([`crate::HeapSnapshot::peak`]): what was in use, by stack and labels, when
//! the estimated in-use bytes were highest. The allocator and the fork handlers call it; it renders nothing.
//!
//! # How the peak is kept
//!
//! The estimated in-use bytes of the whole heap ([`crate::totals`]) move only on sampled allocations and frees
//! of sampled allocations. After each sampled allocation the highest value seen is raised (`fetch_max`). The
//! per-bucket counts at a peak are copied when the peak ends: at the first free of a sampled allocation that
//! finds the estimate at its highest value, counting that free's allocation as still in use — so the copy is
//! the state at the peak itself, not some point on the way up — and only if the estimate then exceeds the
//! estimate of the copy already kept by a margin of 1/32 of it plus 4 × the sample rate (2 MiB at the default
//! rate). A dump of the peak profile while the estimate is at its highest copies the current counts too.
//!
//! # Cost
//!
//! A copy sums the live table's entries by bucket, then reads every bucket's counts (one stripe lock at a
//! time), on the thread whose free ended the peak, and keeps them (the memory is reused by the next copy): a
//! time in proportion to the buckets and the live sampled allocations. The
//! margin bounds how many copies a process ever takes: the `n`-th copy is at a level of at least
//! `128 · rate · ((33/32)^n − 1)`, so a process whose estimate never exceeds `P` bytes takes at most
//! `ln(1 + P / (128 · rate)) / ln(33/32)` copies: 92 for 1 GiB and 225 for 64 GiB at the default rate
//! (516 for 1 GiB in exact mode), whatever the program does, plus at most one per dump of the peak profile.
//! Any other free of a sampled allocation costs two relaxed loads more; unsampled frees, nothing.

use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

use super::UNITS;
use super::buckets::{CountsCopy, Snapshot};
use super::live::LiveEntry;
use crate::lock::{self, AnyLock, Lock, Rank};
use crate::sampler::Guard;
use crate::stack::spare;
use crate::sync::Atomic;
use crate::{clock, sampler, totals};

/// The two levels of the peak protocol: what a sampled allocation raises, and what a free compares (with
/// core's atomics here, loom's in the models).
struct Levels<A> {
    /// The highest estimated in-use bytes seen after a sampled allocation.
    highest: A,
    /// The estimated in-use bytes when the kept copy was taken; only written under [`PEAK`].
    level: A,
}

static LEVELS: Levels<AtomicU64> = Levels {
    highest: AtomicU64::new(0),
    level: AtomicU64::new(0),
};

impl<A: Atomic<u64>> Levels<A> {
    /// After a sampled allocation: `inuse` is the estimated in-use bytes with it.
    fn raise(&self, inuse: u64) {
        // Read first: new highs are rare, and a load leaves the line shared between cores.
        if inuse > self.highest.load(Relaxed) {
            self.highest.fetch_max(inuse, Relaxed);
        }
    }

    /// Whether a free at `inuse` in-use bytes ends a peak to copy: the estimate is at its highest, and above
    /// the `margin` of the copy kept. Two relaxed loads: the decision is made again under the lock.
    fn ends_peak(&self, inuse: u64, margin: fn(u64) -> u64) -> bool {
        inuse >= self.highest.load(Relaxed) && inuse > margin(self.level.load(Relaxed))
    }

    /// Under [`PEAK`]: runs `copy` (the copy of the counts as the peak at `inuse` bytes) and records its level,
    /// unless the copy kept (taken meanwhile by another thread, perhaps) is at a level whose `bar` is not
    /// below `inuse`. Whether it copied.
    fn replace(&self, inuse: u64, bar: fn(u64) -> u64, copy: impl FnOnce()) -> bool {
        if inuse <= bar(self.level.load(Relaxed)) {
            return false;
        }
        copy();
        self.level.store(inuse, Relaxed);
        true
    }

    fn highest(&self) -> u64 {
        self.highest.load(Relaxed)
    }
}

static COPIES: AtomicU64 = AtomicU64::new(0);
static COPY_BYTES: AtomicUsize = AtomicUsize::new(0);

/// The kept copy.
struct Peak {
    copy: CountsCopy,
    /// When it was taken, in nanoseconds since the Unix epoch; 0 before the first.
    time_nanos: i64,
}

/// Taken by the allocator's slow path (a free that ends a peak) and by dumps, never while a table lock is held;
/// table stripes are taken under it.
static PEAK: Lock<Peak> = Lock::new(
    Rank::Peak,
    Peak {
        copy: CountsCopy::new(),
        time_nanos: 0,
    },
);

/// After a sampled allocation: `inuse` is the estimated in-use bytes with it.
#[inline]
pub(crate) fn after_alloc(inuse: u64) {
    LEVELS.raise(inuse);
}

/// At the free of a sampled allocation, `freed`, which has left the live table: `inuse` is the estimated
/// in-use bytes before the free. Runs inside the profiler guard, holding no table lock. A copy taken here
/// counts `freed` as in use. The first test is made where the free is: a free below the highest level seen
/// ends no peak.
#[inline(always)]
pub(crate) fn before_free(guard: &Guard, inuse: u64, freed: &LiveEntry) {
    debug_assert!(!lock::holds(Rank::BucketStripe) && !lock::holds(Rank::LiveStripe));
    // Two necessary conditions of `ends_peak`, without its margin.
    if inuse >= LEVELS.highest.load(Relaxed) && inuse > LEVELS.level.load(Relaxed) {
        at_highest(guard, inuse, freed);
    }
}

/// [`before_free`] of a free that finds the estimate at its highest level.
#[inline(never)]
fn at_highest(guard: &Guard, inuse: u64, freed: &LiveEntry) {
    if LEVELS.ends_peak(inuse, margin_above) {
        // On the spare stack: the free may come anywhere in its thread's stack, and the copy (which may
        // grow its buffer through the inner allocator) needs much more stack than the free.
        spare::run(&mut || take(guard, inuse, margin_above, Some(freed)));
    }
}

/// The estimate a new peak must exceed to replace the copy taken at `level`.
fn margin_above(level: u64) -> u64 {
    let rate = sampler::sample_rate() as u64;
    level
        .saturating_add(level / 32)
        .saturating_add(rate.saturating_mul(4))
}

/// Copies the bucket counts as the peak at `inuse` bytes, unless the copy kept is at a level whose `bar` is
/// not below `inuse` (see [`Levels::replace`]).
fn take(guard: &Guard, inuse: u64, bar: fn(u64) -> u64, freed: Option<&LiveEntry>) {
    let mut peak = PEAK.lock();
    let peak = &mut *peak;
    let copied = LEVELS.replace(inuse, bar, || {
        peak.copy.take(guard, freed);
        peak.time_nanos = clock::now_nanos();
    });
    if copied {
        COPIES.fetch_add(1, Relaxed);
        COPY_BYTES.store(peak.copy.bytes(), Relaxed);
    }
}

/// The highest estimated in-use bytes seen.
pub(crate) fn highest() -> u64 {
    LEVELS.highest()
}

/// How many times the peak's counts were copied.
pub(crate) fn copies() -> u64 {
    COPIES.load(Relaxed)
}

/// Bytes held by the kept copy.
pub(crate) fn copy_bytes() -> usize {
    COPY_BYTES.load(Relaxed)
}

/// The kept copy as buckets, with the estimated in-use bytes it holds and when it was taken (in nanoseconds
/// since the Unix epoch; 0 before the first copy). A call while the estimate is at its highest first records
/// the present, exactly, if it is above the copy kept. Runs inside the profiler guard, holding no table lock.
pub(crate) fn kept(guard: &Guard) -> (Snapshot, i64, i64) {
    let now = totals::inuse_bytes();
    if now >= LEVELS.highest() {
        take(guard, now, |level| level, None);
    }
    let (copy, time_nanos) = {
        let peak = PEAK.lock();
        (peak.copy.clone(), peak.time_nanos)
    };
    let inuse = (copy.inuse_space() as f64 / UNITS).round() as i64;
    (copy.snapshot(guard), inuse, time_nanos)
}

/// The peak's lock, for the `fork` handlers.
pub(crate) fn peak_lock() -> &'static dyn AnyLock {
    &PEAK
}

#[cfg(all(test, loom))]
mod loom_models {
    use super::*;
    use crate::sync::model::{self, Arc, AtomicU64, Mutex, thread};

    fn levels() -> Levels<AtomicU64> {
        Levels {
            highest: AtomicU64::new(0),
            level: AtomicU64::new(0),
        }
    }

    /// Three threads raise the highest level at once: the highest of them stays.
    #[test]
    fn loom_no_high_is_lost() {
        model::model(|| {
            let levels = Arc::new(levels());
            let threads: Vec<_> = [5, 7]
                .map(|inuse| {
                    let levels = levels.clone();
                    thread::spawn(move || levels.raise(inuse))
                })
                .into();
            levels.raise(6);
            threads.into_iter().for_each(|t| t.join().unwrap());
            assert_eq!(levels.highest(), 7);
        });
    }

    /// Two frees end peaks at once, each seeing itself at the highest level: the copy kept is the higher
    /// one's, and the level recorded is the kept copy's.
    #[test]
    fn loom_the_copy_kept_is_the_highest() {
        fn margin(level: u64) -> u64 {
            level + 1
        }
        model::model(|| {
            let levels = Arc::new(levels());
            // The level of the copy, as the copy itself holds it.
            let kept = Arc::new(Mutex::new(0u64));
            let free = |inuse: u64| {
                let (levels, kept) = (levels.clone(), kept.clone());
                move || {
                    if levels.ends_peak(inuse, margin) {
                        let mut kept = kept.lock().unwrap();
                        levels.replace(inuse, margin, || *kept = inuse);
                    }
                }
            };
            let other = thread::spawn(free(10));
            free(20)();
            other.join().unwrap();
            let kept = *kept.lock().unwrap();
            assert_eq!(kept, 20, "a lower peak replaced a higher one");
            assert_eq!(levels.level.load(Relaxed), kept);
        });
    }
}
