//! The peak tracker, for the heap profile at peak ([`crate::HeapSnapshot::peak`]): what was in use, by stack
//! and labels, when the estimated in-use bytes were highest — the question asked after an out-of-memory kill,
//! answered at sampling cost. The allocator and the fork handlers call it; it renders nothing.
//!
//! # How the peak is kept
//!
//! The estimated in-use bytes of the whole heap ([`crate::totals`]) move only on sampled allocations and frees
//! of sampled allocations. After each sampled allocation the highest value seen is raised (`fetch_max`). The
//! per-bucket counts at a peak are copied when the peak ends: at the first free of a sampled allocation that
//! finds the estimate at its highest value, before that free is subtracted from its bucket — so the copy is
//! the state at the peak itself, not some point on the way up — and only if the estimate then exceeds the
//! estimate of the copy already kept by a margin of 1/32 of it plus 4 × the sample rate (2 MiB at the default
//! rate). A dump of the peak profile while the estimate is at its highest copies the current counts too.
//!
//! # Cost
//!
//! A copy reads every bucket's counts (64 bytes each, one stripe lock at a time) on the thread whose free ended
//! the peak, and keeps them (the memory is reused by the next copy): in a release build, 1.4 µs for 1,000
//! buckets and 0.12 ms at the default cap of 65,536, with warm caches. The margin bounds how many copies a process ever takes: the `n`-th copy is at a level of at
//! least `128 · rate · ((33/32)^n − 1)`, so a process whose estimate never exceeds `P` bytes takes at most
//! `ln(1 + P / (128 · rate)) / ln(33/32)` copies: 92 for 1 GiB and 225 for 64 GiB at the default rate
//! (516 for 1 GiB in exact mode), whatever the program does, plus at most one per dump of the peak profile.
//! Any other free of a sampled allocation costs two relaxed loads more; unsampled frees, nothing.
//!
//! # Accuracy
//!
//! The profile is an estimate at the peak of the estimate, with the same noise as any profile. The kept copy
//! is the highest within the margin: if a later peak exceeds it by less than the margin, the later one is not
//! copied (its size is in [`crate::Stats::peak_inuse_bytes`]). Stripes are copied one after another while
//! other threads go on, as in every dump. Peaks below 4 × the sample rate are copied only by a dump taken
//! while they last.

use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

use crate::lock::{self, Lock};
use crate::pprof;
use crate::stack::spare;
use crate::table::UNITS;
use crate::table::buckets::{CountsCopy, Snapshot};
use crate::{sampler, totals};

/// The highest estimated in-use bytes seen after a sampled allocation.
static HIGHEST: AtomicU64 = AtomicU64::new(0);
/// The estimated in-use bytes when the kept copy was taken; only written under [`PEAK`].
static LEVEL: AtomicU64 = AtomicU64::new(0);
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
static PEAK: Lock<Peak> = Lock::new(Peak {
    copy: CountsCopy::new(),
    time_nanos: 0,
});

/// After a sampled allocation: `inuse` is the estimated in-use bytes with it.
pub(crate) fn after_alloc(inuse: u64) {
    // Read first: new highs are rare, and a load leaves the line shared between cores.
    if inuse > HIGHEST.load(Relaxed) {
        HIGHEST.fetch_max(inuse, Relaxed);
    }
}

/// Before the free of a sampled allocation is subtracted from its bucket: `inuse` is the estimated in-use
/// bytes before the free. Must run inside the profiler guard, holding no table lock.
pub(crate) fn before_free(inuse: u64) {
    if inuse >= HIGHEST.load(Relaxed) && inuse > margin_above(LEVEL.load(Relaxed)) {
        // On the spare stack: the free may come anywhere in its thread's stack, and the copy (which may
        // grow its buffer through the inner allocator) needs much more stack than the free.
        spare::run(&mut || take(inuse, margin_above));
    }
}

/// The estimate a new peak must exceed to replace the copy taken at `level`.
fn margin_above(level: u64) -> u64 {
    let rate = sampler::sample_rate() as u64;
    level
        .saturating_add(level / 32)
        .saturating_add(rate.saturating_mul(4))
}

/// Copies the bucket counts as the peak at `inuse` bytes, unless the copy kept (taken meanwhile by another
/// thread, perhaps) is at a level whose `bar` is not below `inuse`.
fn take(inuse: u64, bar: fn(u64) -> u64) {
    let mut peak = PEAK.lock();
    if inuse <= bar(LEVEL.load(Relaxed)) {
        return;
    }
    peak.copy.take();
    peak.time_nanos = pprof::now_nanos();
    LEVEL.store(inuse, Relaxed);
    COPIES.fetch_add(1, Relaxed);
    COPY_BYTES.store(peak.copy.bytes(), Relaxed);
}

/// The highest estimated in-use bytes seen.
pub(crate) fn highest() -> u64 {
    HIGHEST.load(Relaxed)
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
/// the present, exactly, if it is above the copy kept. Must run inside the profiler guard, holding no table
/// lock.
pub(crate) fn kept() -> (Snapshot, i64, i64) {
    let now = totals::inuse_bytes();
    if now >= HIGHEST.load(Relaxed) {
        take(now, |level| level);
    }
    let (copy, time_nanos) = {
        let peak = PEAK.lock();
        (peak.copy.clone(), peak.time_nanos)
    };
    let inuse = (copy.inuse_space() as f64 / UNITS).round() as i64;
    (copy.snapshot(), inuse, time_nanos)
}

/// Takes the peak's lock (see [`crate::fork::register_fork_handlers`]).
pub(crate) fn hold_locks() {
    lock::hold(&PEAK);
}

/// Releases the lock taken by [`hold_locks`].
///
/// # Safety
/// As [`crate::lock::release`].
pub(crate) unsafe fn release_locks() {
    // SAFETY: forwarded from this function's contract.
    unsafe { lock::release(&PEAK) }
}
