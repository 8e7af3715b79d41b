//! When to sample, and with what weight.
//!
//! # The model
//!
//! Every allocated byte is a sample point with probability `1/rate`, independently of every other byte (Go's
//! `runtime.MemProfileRate`, tcmalloc's `Sampler`, jemalloc's `lg_prof_sample` all use this model). The
//! distance between two consecutive sample points is then exponentially distributed with mean `rate` bytes.
//! Each thread keeps the distance to its next sample point in `countdown`: an allocation of `s` bytes that
//! fits before the point (`countdown - s >= 0`) is not sampled and moves the point `s` bytes closer; an
//! allocation that reaches it is sampled, and a fresh exponential gap is drawn from the end of that allocation.
//! By memorylessness of the exponential distribution, an allocation of `s` bytes is sampled with probability
//!
//! ```text
//!     p(s) = 1 − e^(−s/rate)
//! ```
//!
//! independently of what came before. Redrawing the gap after every sample (never resetting it to a fixed
//! value) is what keeps allocations independent: a fixed threshold phase-locks with periodic allocation
//! patterns and samples the same site every time or never.
//!
//! # The weights
//!
//! A sampled allocation stands for `1/p(s)` allocations of its size (Horvitz–Thompson): it adds `1/p` objects
//! and `s/p` bytes to its bucket. The sum of weights over the sampled allocations of a site is an unbiased
//! estimate of the site's true count and bytes, whatever mix of sizes the site allocates. The variance of the
//! byte estimate is `Σ s²(1−p)/p ≤ rate · Σ s`, so its relative standard error is at most
//! `sqrt(rate / total_bytes)`; for `n` allocations of one size it is `sqrt((1−p)/(n·p))`.
//!
//! Weights are computed once, with the rate in force when the sample is taken, and stored with the sampled
//! allocation, so that a free subtracts exactly what the allocation added and a later rate change leaves old
//! samples right.
//!
//! # Special rates
//!
//! Rate 0 turns sampling off. Rate 1 is exact mode: every allocation is sampled with weight exactly 1
//! (the exponential model would give a 1-byte allocation only p = 0.63).
//!
//! # Cost
//!
//! The fast path is one thread-local subtraction, one comparison against a relaxed load of the global
//! configuration epoch, and one thread-local store: no lock, no read-modify-write atomic, no call.
//! Everything else is in [`on_alloc_slow`], which runs about once per `rate` bytes.

use core::cell::{Cell, UnsafeCell};
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};

use rand::SeedableRng;
use rand::rngs::SmallRng;
use rand_distr::{Distribution, Exp1};

/// The default sample rate: 512 KiB, as Go's `runtime.MemProfileRate`.
pub const DEFAULT_SAMPLE_RATE: usize = 512 * 1024;

/// Largest accepted rate: gaps are kept in an `isize`.
const MAX_RATE: usize = isize::MAX as usize;

/// `RATE` holds this until the rate is set, either by [`set_sample_rate`] or by the first allocation through
/// the installed allocator (which brings its configured rate).
const RATE_UNSET: usize = usize::MAX;

static RATE: AtomicUsize = AtomicUsize::new(RATE_UNSET);

/// Bumped by every configuration change; a thread whose `epoch` differs takes the slow path and redraws its
/// gap with the new configuration. Never 0: 0 marks a thread that is inside the profiler (see [`Guard`]).
static EPOCH: AtomicU32 = AtomicU32::new(1);

/// Seed fixed by [`set_seed`], and how many times it was set (0: never, seed from the environment).
static SEED: AtomicU64 = AtomicU64::new(0);
static SEED_GENERATION: AtomicU64 = AtomicU64::new(0);

/// Counts threads that seed their generator, to tell them apart.
static THREADS_SEEDED: AtomicU64 = AtomicU64::new(0);

/// Set once any allocation has gone through a [`crate::SamplingAllocator`].
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// Per-thread sampler state. `const`-initialised and without `Drop`, so it is reachable at any point of a
/// thread's life, TLS destructors included, and registers no destructor.
struct ThreadState {
    /// Bytes left before the next sample point.
    countdown: Cell<isize>,
    /// The configuration epoch this thread's countdown was drawn under; 0 while inside the profiler.
    epoch: Cell<u32>,
    /// The epoch to restore when the thread leaves the profiler.
    saved_epoch: Cell<u32>,
    /// Set while the thread runs profiler code: its allocations pass straight through.
    guard: Cell<bool>,
    /// Set while the thread forks, holding the guard from the `fork` prepare handler to the parent's.
    fork_guard: Cell<bool>,
    /// The [`SEED_GENERATION`] the generator was seeded under.
    seed_generation: Cell<u64>,
    /// Only touched by the slow path of this thread, never reentrantly (see the SAFETY notes).
    rng: UnsafeCell<Option<SmallRng>>,
}

thread_local! {
    static STATE: ThreadState = const {
        ThreadState {
            countdown: Cell::new(0),
            epoch: Cell::new(0),
            saved_epoch: Cell::new(0),
            guard: Cell::new(false),
            fork_guard: Cell::new(false),
            seed_generation: Cell::new(0),
            rng: UnsafeCell::new(None),
        }
    };
}

/// Sets the sample rate: the mean number of bytes allocated between two sampled allocations, as Go's
/// `runtime.MemProfileRate`.
///
/// `0` turns sampling off; `1` samples every allocation with weight exactly 1 (exact mode, for tests).
/// Takes effect on every thread at its next allocation; samples already taken keep the weights of the rate
/// they were taken with. Rates above `isize::MAX` are clamped. Callable at any time from any thread.
pub fn set_sample_rate(bytes: usize) {
    RATE.store(bytes.min(MAX_RATE), Relaxed);
    bump_epoch();
}

/// The sample rate in force, in bytes (see [`set_sample_rate`]). Before the rate is set and before the first
/// allocation, [`DEFAULT_SAMPLE_RATE`].
pub fn sample_rate() -> usize {
    match RATE.load(Relaxed) {
        RATE_UNSET => DEFAULT_SAMPLE_RATE,
        rate => rate,
    }
}

/// Fixes the sampler's random seed, so that a single-threaded workload is sampled the same way on every run.
///
/// The calling thread restarts its generator from `seed` and draws a fresh gap at once; every other thread
/// restarts from `seed` mixed with the order in which it picks the new seed up (at its next allocation).
pub fn set_seed(seed: u64) {
    SEED.store(seed, Relaxed);
    let generation = SEED_GENERATION.fetch_add(1, Relaxed) + 1;
    bump_epoch();
    let _ = STATE.try_with(|state| {
        state.seed_generation.set(generation);
        // SAFETY: the generator is only touched by this thread, here and in the slow path; neither can run
        // while the other holds the reference (no allocation happens while it is held).
        unsafe { *state.rng.get() = Some(SmallRng::seed_from_u64(seed)) };
        if !state.guard.get() {
            state.epoch.set(EPOCH.load(Relaxed));
            state.countdown.set(draw_gap(state, sample_rate()));
        }
    });
}

/// Whether any allocation has gone through a [`crate::SamplingAllocator`] in this process.
pub(crate) fn installed() -> bool {
    INSTALLED.load(Relaxed)
}

fn bump_epoch() {
    // Skip 0, which marks a thread inside the profiler.
    if EPOCH.fetch_add(1, Relaxed) == u32::MAX {
        EPOCH.fetch_add(1, Relaxed);
    }
}

/// Decides whether an allocation of `size` bytes is sampled. Returns the rate to weight it with, or `None`.
/// `configured_rate` is the installed allocator's own rate, used until one is set.
#[inline(always)]
pub(crate) fn on_alloc(size: usize, configured_rate: usize) -> Option<usize> {
    STATE
        .try_with(|state| {
            let next = state.countdown.get().wrapping_sub(size as isize);
            if next >= 0 && state.epoch.get() == EPOCH.load(Relaxed) {
                state.countdown.set(next);
                None
            } else {
                on_alloc_slow(state, size, configured_rate)
            }
        })
        .unwrap_or(None)
}

/// The rare part of [`on_alloc`]: the countdown reached the sample point, the configuration changed, the thread
/// is new, or the thread is inside the profiler.
#[cold]
#[inline(never)]
fn on_alloc_slow(state: &ThreadState, size: usize, configured_rate: usize) -> Option<usize> {
    if state.guard.get() {
        // The profiler's own memory is never sampled and does not move the countdown.
        return None;
    }
    let epoch = EPOCH.load(Relaxed);
    if state.epoch.get() != epoch {
        // A new thread, or a configuration change: draw a real gap first, then decide on it. A new thread's
        // first allocation is therefore not sampled by construction (a zero countdown would sample it always).
        INSTALLED.store(true, Relaxed);
        if RATE.load(Relaxed) == RATE_UNSET {
            let _ =
                RATE.compare_exchange(RATE_UNSET, configured_rate.min(MAX_RATE), Relaxed, Relaxed);
        }
        state.epoch.set(epoch);
        let gap = draw_gap(state, sample_rate());
        let next = gap.wrapping_sub(size as isize);
        if next >= 0 {
            state.countdown.set(next);
            return None;
        }
    }
    let rate = sample_rate();
    state.countdown.set(draw_gap(state, rate));
    (rate != 0).then_some(rate)
}

/// Draws the distance to the next sample point: exponential with mean `rate` bytes; 0 in exact mode (every
/// allocation sampled); unreachable when sampling is off (a rate change bumps the epoch and ends it).
fn draw_gap(state: &ThreadState, rate: usize) -> isize {
    match rate {
        0 => isize::MAX,
        1 => 0,
        _ => {
            let generation = SEED_GENERATION.load(Relaxed);
            // SAFETY: the generator is only touched by this thread, in this function and in `set_seed`; neither
            // allocates or calls back into the other while the reference is alive, so it is unique.
            let rng = unsafe { &mut *state.rng.get() };
            if rng.is_none() || state.seed_generation.get() != generation {
                state.seed_generation.set(generation);
                *rng = Some(SmallRng::seed_from_u64(thread_seed(state, generation)));
            }
            let Some(rng) = rng.as_mut() else {
                return isize::MAX;
            };
            let unit: f64 = Exp1.sample(rng);
            // `as` saturates: a huge draw becomes isize::MAX, never a panic.
            (unit * rate as f64) as isize
        }
    }
}

/// A seed for this thread's generator: the fixed seed when one is set, else the environment (the TLS
/// address, the time and a process-wide counter), mixed so that threads draw independent gaps.
fn thread_seed(state: &ThreadState, generation: u64) -> u64 {
    let ordinal = THREADS_SEEDED.fetch_add(1, Relaxed);
    let base = if generation == 0 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        nanos ^ (state as *const ThreadState as u64).rotate_left(32)
    } else {
        SEED.load(Relaxed)
    };
    splitmix64(base ^ splitmix64(ordinal))
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Weights of one sampled allocation of `size` bytes taken at `rate`: `(objects, bytes)` with
/// objects = 1/p and bytes = size/p, p = 1 − e^(−size/rate). Exactly `(1, size)` in exact mode.
pub(crate) fn weights(size: usize, rate: usize) -> (f64, f64) {
    if rate <= 1 {
        return (1.0, size as f64);
    }
    let size = size.max(1) as f64;
    // -expm1(-x) = 1 − e^(−x), accurate for small x.
    let p = -(-size / rate as f64).exp_m1();
    if p > 0.0 {
        (1.0 / p, size / p)
    } else {
        (1.0, size)
    }
}

/// Marks the current thread as inside the profiler for as long as it lives: its allocations pass straight
/// through to the inner allocator, unsampled and without touching its countdown, and frees skip the
/// sampled-pointer lookup (the profiler's own memory is never sampled).
pub(crate) struct Guard(());

impl Guard {
    /// Enters the profiler; `None` if the thread already is inside it (a nested entry must do nothing).
    pub(crate) fn enter() -> Option<Guard> {
        STATE
            .try_with(|state| {
                if state.guard.get() {
                    return None;
                }
                state.guard.set(true);
                state.saved_epoch.set(state.epoch.get());
                // Epoch 0 never matches: every allocation now takes the slow path, which sees the guard.
                state.epoch.set(0);
                Some(Guard(()))
            })
            .ok()
            .flatten()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = STATE.try_with(|state| {
            state.epoch.set(state.saved_epoch.get());
            state.guard.set(false);
        });
    }
}

impl Guard {
    /// Enters the guard for the duration of a `fork`: the forking thread then holds every profiler lock, and
    /// what it allocates meanwhile must not need them.
    pub(crate) fn hold_across_fork() {
        if let Some(guard) = Guard::enter() {
            core::mem::forget(guard);
            let _ = STATE.try_with(|state| state.fork_guard.set(true));
        }
    }

    /// Leaves the guard entered by [`Guard::hold_across_fork`], in the parent and in the child.
    pub(crate) fn release_after_fork() {
        if STATE
            .try_with(|state| state.fork_guard.replace(false))
            .unwrap_or(false)
        {
            drop(Guard(()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_mode_weights_are_one() {
        assert_eq!(weights(1, 1), (1.0, 1.0));
        assert_eq!(weights(4096, 1), (1.0, 4096.0));
    }

    #[test]
    fn weights_match_inclusion_probability() {
        let (objects, bytes) = weights(512 * 1024, 512 * 1024);
        let p = 1.0 - (-1.0f64).exp();
        assert!((objects - 1.0 / p).abs() < 1e-12);
        assert!((bytes - 512.0 * 1024.0 / p).abs() < 1e-6);
        // Far above the rate, every allocation is sampled: weight 1.
        assert_eq!(weights(64 << 20, 64 << 10), (1.0, (64u64 << 20) as f64));
    }

    /// Gaps are exponential with mean = rate: over n draws, the sample mean has standard error rate/sqrt(n)
    /// and the fraction of gaps below the rate is 1 − e^(−1) with standard error sqrt(q(1−q)/n); both are
    /// checked at 5 σ with a fixed seed.
    #[test]
    fn gaps_are_exponential_with_mean_rate() {
        let state = ThreadState {
            countdown: Cell::new(0),
            epoch: Cell::new(0),
            saved_epoch: Cell::new(0),
            guard: Cell::new(false),
            fork_guard: Cell::new(false),
            seed_generation: Cell::new(u64::MAX),
            rng: UnsafeCell::new(Some(SmallRng::seed_from_u64(11))),
        };
        state.seed_generation.set(SEED_GENERATION.load(Relaxed));
        let (rate, n) = (4096usize, 100_000usize);
        let gaps: Vec<f64> = (0..n).map(|_| draw_gap(&state, rate) as f64).collect();
        let mean = gaps.iter().sum::<f64>() / n as f64;
        // Gaps are floored to whole bytes: the mean is rate − 0.5 on average.
        assert!(
            (mean - (rate as f64 - 0.5)).abs() < 5.0 * rate as f64 / (n as f64).sqrt(),
            "mean {mean}"
        );
        let q = 1.0 - (-1.0f64).exp();
        let below = gaps.iter().filter(|&&g| g < rate as f64).count() as f64 / n as f64;
        assert!(
            (below - q).abs() < 5.0 * (q * (1.0 - q) / n as f64).sqrt(),
            "fraction below rate {below}"
        );
        assert_eq!(
            draw_gap(&state, 1),
            0,
            "exact mode samples every allocation"
        );
    }
}
