//! When to sample, and with what weight.
//!
//! # The model
//!
//! Every allocated byte is a sample point with probability `1/rate`, independently of every other byte (Go's
//! `runtime.MemProfileRate`, tcmalloc's `Sampler`, jemalloc's `lg_prof_sample` all use this model). The
//! distance between two consecutive sample points is then exponentially distributed with mean `rate` bytes.
//! Each thread keeps the distance to its next sample point (in `countdown`, and past 1 MiB in `beyond`, see
//! Cost below): an allocation of `s` bytes that fits before the point is not sampled and moves the point
//! `s` bytes closer; an allocation that reaches it is sampled, and a fresh exponential gap is drawn from the
//! end of that allocation.
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
//! The fast path is one thread-local subtraction, a sign test and one thread-local store: no lock, no atomic,
//! no call. Everything else is in [`on_alloc_slow`], which runs about once per `rate` bytes, and at least
//! once per [`STEP`] bytes: a gap longer than that is walked in steps, and between steps the thread looks
//! for a configuration change ([`set_sample_rate`], [`set_seed`]) and picks it up. So a change reaches the
//! thread that makes it at once, and every other thread within 1 MiB of its allocations (as in Go, where a
//! new `runtime.MemProfileRate` applies from each thread's next sample).

use core::cell::{Cell, UnsafeCell};
use core::marker::PhantomData;
use core::sync::atomic::{
    AtomicBool, AtomicU64, AtomicUsize,
    Ordering::{Acquire, Relaxed, Release},
};

use rand::SeedableRng;
use rand::rngs::SmallRng;
use rand_distr::{Distribution, Exp1};

use crate::sync::Atomic;

/// The default sample rate: 512 KiB, as Go's `runtime.MemProfileRate`.
pub const DEFAULT_SAMPLE_RATE: usize = 512 * 1024;

/// Largest accepted rate: gaps are kept in an `isize`.
const MAX_RATE: usize = isize::MAX as usize;

/// `RATE` holds this until the rate is set, either by [`set_sample_rate`] or by the first allocation through
/// the installed allocator (which brings its configured rate).
const RATE_UNSET: usize = usize::MAX;

static RATE: AtomicUsize = AtomicUsize::new(RATE_UNSET);

/// Bumped by every configuration change; a thread whose `epoch` differs, seen at its next slow path, redraws
/// its gap with the new configuration. Never 0: 0 marks a thread that has not drawn a gap yet. 64 bits, so
/// that it never comes back to a value a thread saw (32 bits wrapped after 2^32 − 1 changes, and a thread
/// idle through all of them missed the last). Bumped with `Release` after the change is stored and read
/// with `Acquire`, so a thread that sees the new epoch sees the new rate and seed too.
static EPOCH: AtomicU64 = AtomicU64::new(1);

/// Seed fixed by [`set_seed`], and how many times it was set (0: never, seed from the environment).
static SEED: AtomicU64 = AtomicU64::new(0);
static SEED_GENERATION: AtomicU64 = AtomicU64::new(0);

/// Counts threads that seed their generator, to tell them apart.
static THREADS_SEEDED: AtomicU64 = AtomicU64::new(0);

/// Set once any allocation has gone through a [`crate::SamplingAllocator`].
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// The longest stretch of allocation between two slow paths, in bytes (see the module's Cost section).
const STEP: isize = 1 << 20;

/// Per-thread sampler state. `const`-initialised and without `Drop`, so it is reachable at any point of a
/// thread's life, TLS destructors included, and registers no destructor.
struct ThreadState {
    /// Bytes left in this step towards the next sample point, at most [`STEP`]; −1 inside the profiler, so
    /// that every allocation takes the slow path, which sees the guard.
    countdown: Cell<isize>,
    /// Bytes from the end of this step to the sample point (0 when the point is in this step).
    beyond: Cell<isize>,
    /// The configuration epoch this thread's gap was drawn under; 0 before the first.
    epoch: Cell<u64>,
    /// The countdown to restore when the thread leaves the profiler.
    saved_countdown: Cell<isize>,
    /// Set while the thread runs profiler code: its allocations pass straight through.
    guard: Cell<bool>,
    /// Set while the thread forks, holding the guard from the `fork` prepare handler to the parent's.
    fork_guard: Cell<bool>,
    /// Set by [`with_forced_sample`]: the thread's next allocation is a probe of the allocation path.
    forced: Cell<bool>,
    /// The [`SEED_GENERATION`] the generator was seeded under.
    seed_generation: Cell<u64>,
    /// Only touched by the slow path of this thread, never reentrantly (see the SAFETY notes).
    rng: UnsafeCell<Option<SmallRng>>,
}

impl ThreadState {
    /// A thread that has not allocated yet: its first allocation takes the slow path and draws a gap.
    const fn new() -> ThreadState {
        ThreadState {
            countdown: Cell::new(0),
            beyond: Cell::new(0),
            epoch: Cell::new(0),
            saved_countdown: Cell::new(0),
            guard: Cell::new(false),
            fork_guard: Cell::new(false),
            forced: Cell::new(false),
            seed_generation: Cell::new(0),
            rng: UnsafeCell::new(None),
        }
    }
}

thread_local! {
    static STATE: ThreadState = const { ThreadState::new() };
}

/// Sets the sample rate: the mean number of bytes allocated between two sampled allocations, as Go's
/// `runtime.MemProfileRate`.
///
/// `0` turns sampling off; `1` samples every allocation with weight exactly 1 (exact mode, for tests).
/// Takes effect at once on the calling thread and on threads started later; a running thread picks it up
/// at its next sampled allocation or within 1 MiB of its allocations, whichever comes first (so that the
/// unsampled path never reads shared memory). Samples already taken keep the weights of the rate they were
/// taken with. Rates above `isize::MAX` are clamped. Callable at any time from any thread.
pub fn set_sample_rate(bytes: usize) {
    publish_rate(&RATE, &EPOCH, bytes.min(MAX_RATE));
    let _ = STATE.try_with(restart_gap);
}

/// Draws the calling thread's gap again under the configuration now in force. Inside the profiler (the
/// startup hook that reads the environment sets the rate there), the countdown the guard restores on leaving
/// is zeroed instead: the thread's epoch is then stale, so its next allocation takes the slow path and draws
/// the gap there.
fn restart_gap(state: &ThreadState) {
    if state.guard.get() {
        state.saved_countdown.set(0);
    } else {
        state.epoch.set(epoch_now(&EPOCH));
        start_gap(state, draw_gap(state, sample_rate()));
    }
}

/// The sample rate in force, in bytes (see [`set_sample_rate`]). Before the rate is set and before the first
/// allocation, [`DEFAULT_SAMPLE_RATE`].
pub fn sample_rate() -> usize {
    rate_in_force(&RATE)
}

/// The rate that `rate` (the [`RATE`] of the process, or of a model) holds, or the default while it is unset.
fn rate_in_force(rate: &impl Atomic<usize>) -> usize {
    match rate.load(Relaxed) {
        RATE_UNSET => DEFAULT_SAMPLE_RATE,
        rate => rate,
    }
}

/// Fixes the sampler's random seed, so that a single-threaded workload is sampled the same way on every run.
///
/// The calling thread restarts its generator from `seed` and draws a fresh gap at once; every other thread
/// restarts from `seed` mixed with the order in which it picks the new seed up (as a new sample rate, see
/// [`set_sample_rate`]).
pub fn set_seed(seed: u64) {
    SEED.store(seed, Relaxed);
    let generation = SEED_GENERATION.fetch_add(1, Relaxed) + 1;
    bump_epoch(&EPOCH);
    let _ = STATE.try_with(|state| {
        state.seed_generation.set(generation);
        // SAFETY: the generator is only touched by this thread, here and in the slow path; neither can run
        // while the other holds the reference (no allocation happens while it is held).
        unsafe { *state.rng.get() = Some(SmallRng::seed_from_u64(seed)) };
        restart_gap(state);
    });
}

/// Runs `f` with the calling thread's next allocation through a [`crate::SamplingAllocator`] marked as a
/// probe: the allocator is told so by the rate 0 (see [`on_alloc`]) and records nothing. The thread's gap
/// and generator are as they were afterwards. Must not run inside the profiler guard, where nothing is
/// sampled.
pub(crate) fn with_forced_sample<R>(f: impl FnOnce() -> R) -> R {
    let saved = STATE
        .try_with(|state| {
            let saved = (state.countdown.get(), state.beyond.get());
            state.forced.set(true);
            // The next allocation takes the slow path, which sees the mark.
            state.countdown.set(-1);
            saved
        })
        .ok();
    let result = f();
    if let Some((countdown, beyond)) = saved {
        let _ = STATE.try_with(|state| {
            state.forced.set(false);
            state.countdown.set(countdown);
            state.beyond.set(beyond);
        });
    }
    result
}

/// Whether this build samples: on Linux, Android and Apple's systems, where the stack walks, the process
/// constructor, the `fork` handlers and the mapping tables the profiler relies on exist. Elsewhere
/// [`crate::SamplingAllocator`] is a plain pass-through to its inner allocator (it never samples, and costs
/// nothing), and every dump returns [`crate::Error::Unsupported`].
pub const SAMPLING_SUPPORTED: bool = cfg!(any(
    target_os = "linux",
    target_os = "android",
    target_vendor = "apple"
));

/// Whether any allocation has gone through a [`crate::SamplingAllocator`] in this process.
pub(crate) fn installed() -> bool {
    INSTALLED.load(Relaxed)
}

/// Whether a profile can be taken: [`crate::Error::Unsupported`] on a target without sampling,
/// [`crate::Error::NotInstalled`] when no [`crate::SamplingAllocator`] is the global allocator.
pub(crate) fn check_installed() -> Result<(), crate::error::Error> {
    if !SAMPLING_SUPPORTED {
        Err(crate::error::Error::Unsupported)
    } else if !installed() {
        Err(crate::error::Error::NotInstalled)
    } else {
        Ok(())
    }
}

/// Stores a new rate in `rate` and publishes it in `epoch` (see [`EPOCH`]).
fn publish_rate(rate: &impl Atomic<usize>, epoch: &impl Atomic<u64>, bytes: usize) {
    rate.store(bytes, Relaxed);
    bump_epoch(epoch);
}

/// Publishes the configuration changes stored before: a thread that reads the new epoch with [`epoch_now`]
/// sees them.
fn bump_epoch(epoch: &impl Atomic<u64>) {
    // From 1 upwards: 0, the epoch of a thread that has not drawn a gap, is never reached again.
    epoch.fetch_add(1, Release);
}

/// The configuration epoch: after it, the configuration stored before it was bumped is seen.
fn epoch_now(epoch: &impl Atomic<u64>) -> u64 {
    epoch.load(Acquire)
}

/// Decides whether an allocation of `size` bytes is sampled. Returns the rate to weight it with, or `None`;
/// `Some(0)` for the probe of [`with_forced_sample`], which is not a sample.
/// `configured_rate` is the installed allocator's own rate, used until one is set.
#[inline(always)]
pub(crate) fn on_alloc(size: usize, configured_rate: usize) -> Option<usize> {
    if !SAMPLING_SUPPORTED {
        return None;
    }
    STATE
        .try_with(|state| {
            let next = state.countdown.get().wrapping_sub(size as isize);
            if next >= 0 {
                state.countdown.set(next);
                None
            } else {
                on_alloc_slow(state, size, configured_rate)
            }
        })
        .unwrap_or(None)
}

/// The rare part of [`on_alloc`]: the allocation reaches the end of the countdown's step (the sample point,
/// or a step of a longer gap), the thread is new, or the thread is inside the profiler.
#[cold]
#[inline(never)]
fn on_alloc_slow(state: &ThreadState, size: usize, configured_rate: usize) -> Option<usize> {
    if state.guard.get() {
        // The profiler's own memory is never sampled and does not move the countdown.
        return None;
    }
    if state.forced.replace(false) {
        // A probe of the allocation path: rate 0, which no real sample has, tells the allocator so. Neither
        // the gap nor the generator is touched, so a seeded run samples as it would without the probe.
        INSTALLED.store(true, Relaxed);
        return Some(0);
    }
    let epoch = epoch_now(&EPOCH);
    if state.epoch.get() != epoch {
        // A new thread, or a configuration change: draw a real gap first, then decide on it (a new thread's
        // zero countdown would otherwise sample its first allocation always).
        INSTALLED.store(true, Relaxed);
        if RATE.load(Relaxed) == RATE_UNSET {
            let _ =
                RATE.compare_exchange(RATE_UNSET, configured_rate.min(MAX_RATE), Relaxed, Relaxed);
        }
        state.epoch.set(epoch);
        start_gap(state, draw_gap(state, sample_rate()));
    }
    // What is left of the gap after this allocation; `countdown + beyond` never exceeds the gap drawn.
    let gap_left = state.countdown.get().saturating_add(state.beyond.get());
    let left = gap_left.wrapping_sub(size as isize);
    if left >= 0 {
        start_gap(state, left);
        return None;
    }
    let rate = sample_rate();
    start_gap(state, draw_gap(state, rate));
    (rate != 0).then_some(rate)
}

/// Sets the distance to the next sample point to `gap` bytes (≥ 0): its first [`STEP`] in the countdown,
/// the rest beyond.
fn start_gap(state: &ThreadState, gap: isize) {
    debug_assert!(gap >= 0, "a negative gap: {gap}");
    let countdown = gap.min(STEP);
    state.countdown.set(countdown);
    state.beyond.set(gap - countdown);
}

/// Draws the distance to the next sample point: exponential with mean `rate` bytes; 0 in exact mode (every
/// allocation sampled); `isize::MAX` when sampling is off (walked in steps, so a rate change is seen).
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
///
/// A `&Guard` is the proof that the current thread is inside the profiler: the functions that may allocate
/// or take a table lock from the allocator's paths take one, so calling them outside does not compile.
pub(crate) struct Guard {
    /// Whether this guard entered the profiler, and so leaves it when dropped: false for the proof that
    /// [`Guard::inside`] gives a thread already inside.
    entered: bool,
    /// A guard proves something of its own thread: it stays on it.
    _thread: PhantomData<*const ()>,
}

impl Guard {
    const fn new(entered: bool) -> Guard {
        Guard {
            entered,
            _thread: PhantomData,
        }
    }

    /// Enters the profiler; `None` if the thread already is inside it (a nested entry must do nothing).
    #[inline]
    pub(crate) fn enter() -> Option<Guard> {
        STATE
            .try_with(|state| {
                if state.guard.get() {
                    return None;
                }
                state.guard.set(true);
                state.saved_countdown.set(state.countdown.get());
                // Every allocation now takes the slow path, which sees the guard.
                state.countdown.set(-1);
                Some(Guard::new(true))
            })
            .ok()
            .flatten()
    }
}

impl Drop for Guard {
    #[inline]
    fn drop(&mut self) {
        if !self.entered {
            return;
        }
        let _ = STATE.try_with(|state| {
            state.countdown.set(state.saved_countdown.get());
            state.guard.set(false);
        });
    }
}

impl Guard {
    /// Enters the profiler, or proves that the thread already is inside it (or has lost its thread-local
    /// state, so that nothing it allocates is sampled either).
    #[inline]
    pub(crate) fn inside() -> Guard {
        Guard::enter().unwrap_or(Guard::new(false))
    }

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
            drop(Guard::new(true));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A thread state of its own (not this thread's), seeded with a fixed seed.
    fn test_state() -> ThreadState {
        let state = ThreadState {
            rng: UnsafeCell::new(Some(SmallRng::seed_from_u64(11))),
            ..ThreadState::new()
        };
        state.seed_generation.set(SEED_GENERATION.load(Relaxed));
        state
    }

    /// `on_alloc` on `state` rather than this thread's: the fast path, else the slow path (counted).
    fn alloc_on(state: &ThreadState, size: usize, slow_paths: &mut usize) -> Option<usize> {
        let next = state.countdown.get().wrapping_sub(size as isize);
        if next >= 0 {
            state.countdown.set(next);
            return None;
        }
        *slow_paths += 1;
        on_alloc_slow(state, size, DEFAULT_SAMPLE_RATE)
    }

    #[test]
    fn a_long_gap_is_walked_in_steps_and_sampled_at_its_end() {
        let state = test_state();
        state.epoch.set(EPOCH.load(Relaxed));
        // 3 steps and 5,000 bytes: the allocation of 1,000 bytes that reaches byte 3·STEP + 5,000 is sampled,
        // the one before it is not, and each step ended in a slow path that passed the allocation through.
        let gap = 3 * STEP + 5_000;
        start_gap(&state, gap);
        let mut slow_paths = 0;
        let mut allocated = 0;
        loop {
            allocated += 1_000;
            if alloc_on(&state, 1_000, &mut slow_paths).is_some() {
                break;
            }
            assert!(allocated <= gap, "the sample point was passed");
        }
        assert_eq!(allocated, (gap / 1_000 + 1) * 1_000);
        assert_eq!(slow_paths, 4, "3 step ends and the sample");
    }

    #[test]
    fn a_configuration_change_made_inside_the_profiler_is_seen_at_the_next_allocation() {
        // The startup hook sets the rate from the environment inside the guard: the countdown the guard
        // restores must not keep the old gap (here 5 steps long, with the epoch made stale).
        let state = test_state();
        state.epoch.set(EPOCH.load(Relaxed).wrapping_sub(1));
        start_gap(&state, 5 * STEP);
        // As `Guard::enter` and its drop do, on this state.
        state.guard.set(true);
        state.saved_countdown.set(state.countdown.get());
        state.countdown.set(-1);
        restart_gap(&state);
        state.countdown.set(state.saved_countdown.get());
        state.guard.set(false);
        let mut slow_paths = 0;
        alloc_on(&state, 16, &mut slow_paths);
        assert_eq!(
            slow_paths, 1,
            "the first allocation after the guard took the fast path"
        );
        assert_eq!(state.epoch.get(), EPOCH.load(Relaxed));
    }

    #[test]
    fn a_configuration_change_is_seen_within_a_step() {
        // Sampling off: the gap is endless, but the thread still takes a slow path every STEP bytes, and
        // one that finds a new epoch draws a gap under the new configuration.
        let state = test_state();
        state.epoch.set(EPOCH.load(Relaxed));
        start_gap(&state, isize::MAX);
        let mut slow_paths = 0;
        for _ in 0..(2 * STEP / 4096) {
            assert_eq!(alloc_on(&state, 4096, &mut slow_paths), None);
        }
        assert_eq!(
            slow_paths, 1,
            "one step end in 2 steps' worth of allocation"
        );
        state.epoch.set(state.epoch.get().wrapping_sub(1));
        let mut seen = false;
        for _ in 0..(STEP / 4096) {
            alloc_on(&state, 4096, &mut slow_paths);
            seen |= state.epoch.get() == EPOCH.load(Relaxed);
        }
        assert!(seen, "a changed epoch was not picked up within a step");
        assert!(state.countdown.get() + state.beyond.get() < isize::MAX / 2);
    }

    #[test]
    fn exact_mode_weights_are_one() {
        assert_eq!(weights(1, 1), (1.0, 1.0));
        assert_eq!(weights(4096, 1), (1.0, 4096.0));
    }

    #[test]
    fn weights_of_tiny_probabilities_stay_finite() {
        // A 1-byte allocation at the largest rate: p ≈ 2^-63, still positive, weight 1/p.
        let (objects, bytes) = weights(1, MAX_RATE);
        assert!(objects.is_finite() && objects > 1e18, "{objects}");
        assert_eq!(objects, bytes);
        // A zero-size allocation weighs as a 1-byte one.
        assert_eq!(weights(0, 4096), weights(1, 4096));
        // Exact mode weighs the size itself, whatever it is.
        assert_eq!(weights(0, 1), (1.0, 0.0));
    }

    #[test]
    fn thread_seeds_mix_every_bit() {
        // SplitMix64's first output for seed 0.
        assert_eq!(splitmix64(0), 0xE220_A839_7B1D_CDAF);
        // Seeds one bit apart give outputs about half of whose bits differ.
        for bit in 0..64 {
            let differ = (splitmix64(1 << bit) ^ splitmix64(0)).count_ones();
            assert!(
                (16..=48).contains(&differ),
                "bit {bit}: {differ} bits differ"
            );
        }
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
        let state = test_state();
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

#[cfg(all(test, loom))]
mod loom_models {
    use super::*;
    use crate::sync::model::{self, Arc, AtomicU64, AtomicUsize, thread};

    /// Two rate changes published while another thread takes its slow path: a thread that reads an epoch
    /// reads at least the rate published with it.
    #[test]
    fn loom_a_new_epoch_brings_its_rate() {
        model::model(|| {
            let config = Arc::new((AtomicUsize::new(RATE_UNSET), AtomicU64::new(1)));
            let writer = {
                let config = config.clone();
                thread::spawn(move || {
                    publish_rate(&config.0, &config.1, 4096);
                    publish_rate(&config.0, &config.1, 1);
                })
            };
            // As `on_alloc_slow`: the epoch, then the rate.
            let epoch = epoch_now(&config.1);
            let rate = rate_in_force(&config.0);
            match epoch {
                1 => {}
                2 => assert!(rate == 4096 || rate == 1, "epoch 2 with rate {rate}"),
                _ => assert_eq!(rate, 1, "epoch {epoch}"),
            }
            writer.join().unwrap();
        });
    }
}
