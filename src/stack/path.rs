//! The allocation path: the return addresses between the profiler's entry point and the program's call.
//!
//! Every sampled stack starts with the same few frames below the call that the program made: the allocator's
//! slow path (`alloc_sampled`, or the allocator's `realloc`), the `__rust_alloc` and `__rg_alloc` shims that
//! `#[global_allocator]` generates, and in builds that do not inline it `alloc::alloc::alloc`. Their return
//! addresses are the same in every stack, whatever called the allocator, so they are learned once, by
//! address: a probe function allocates through the global allocator with its sample forced
//! ([`crate::sampler::with_forced_sample`]), the allocator captures that stack, and every frame below the
//! probe's own is on the path. No name is needed, so the profiler's frames are recognised in builds with
//! line tables only, without debug info, stripped, or with the shims inlined by LTO (the path is then
//! shorter, never wrong). Go's heap profiler knows its runtime's frames by their function names
//! (`hideRuntime` in `runtime/pprof/protomem.go`); a Rust binary may carry no names at all.

use core::alloc::Layout;
use core::sync::atomic::{
    AtomicU8, AtomicU64, AtomicUsize, Ordering::Acquire, Ordering::Relaxed, Ordering::Release,
};

use crate::sampler::{self, Guard};

/// The most return addresses the path can hold: each of the three entries (allocate, allocate zeroed,
/// reallocate) has a handful.
const CAPACITY: usize = 32;

static PATH: [AtomicUsize; CAPACITY] = [const { AtomicUsize::new(0) }; CAPACITY];
static LEN: AtomicUsize = AtomicUsize::new(0);
/// One bit per address of the path, at [`mask_bit`]: a frame whose bit is clear is not on the path, which
/// is what almost every frame a sample's stack is searched for is told, without comparing it with the path.
/// Set before `LEN` counts the address.
static MASK: AtomicU64 = AtomicU64::new(0);

/// The bit of `address` in [`MASK`].
#[inline(always)]
fn mask_bit(address: usize) -> u64 {
    1 << ((address as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58)
}

const UNKNOWN: u8 = 0;
const LEARNING: u8 = 1;
const LEARNED: u8 = 2;
static STATE: AtomicU8 = AtomicU8::new(UNKNOWN);

/// Learns the allocation path, once per process: the first call probes, later ones return at once. Must
/// run outside the profiler guard (the probes' allocations must reach the sampler). A process whose global
/// allocator is not a [`crate::SamplingAllocator`] learns nothing, which is right: nothing is sampled there.
pub(crate) fn learn() {
    if STATE
        .compare_exchange(UNKNOWN, LEARNING, Relaxed, Relaxed)
        .is_err()
    {
        return;
    }
    probe_alloc();
    probe_alloc_zeroed();
    probe_realloc();
    STATE.store(LEARNED, Release);
}

/// Whether [`learn`] has run to its end (or is running, on some thread).
#[inline]
pub(crate) fn learning_started() -> bool {
    STATE.load(Relaxed) != UNKNOWN
}

#[inline(never)]
fn probe_alloc() {
    let layout = Layout::new::<u64>();
    // SAFETY: the layout has a non-zero size; the block is freed below with the same layout.
    let block = sampler::with_forced_sample(|| unsafe { std::alloc::alloc(layout) });
    // Kept opaque, so that the compiler cannot remove the allocation with its free.
    let block = core::hint::black_box(block);
    if !block.is_null() {
        // SAFETY: allocated above with `layout`.
        unsafe { std::alloc::dealloc(block, layout) };
    }
}

#[inline(never)]
fn probe_alloc_zeroed() {
    let layout = Layout::new::<u64>();
    // SAFETY: as in `probe_alloc`.
    let block = sampler::with_forced_sample(|| unsafe { std::alloc::alloc_zeroed(layout) });
    let block = core::hint::black_box(block);
    if !block.is_null() {
        // SAFETY: allocated above with `layout`.
        unsafe { std::alloc::dealloc(block, layout) };
    }
}

#[inline(never)]
fn probe_realloc() {
    let layout = Layout::new::<u64>();
    // The first block is the profiler's own, unsampled: only the reallocation is the probe.
    let block = {
        let _guard = Guard::enter();
        // SAFETY: the layout has a non-zero size.
        unsafe { std::alloc::alloc(layout) }
    };
    if block.is_null() {
        return;
    }
    let block = core::hint::black_box(block);
    // SAFETY: `block` was allocated with `layout`; the new size is non-zero and does not overflow.
    let moved = sampler::with_forced_sample(|| unsafe { std::alloc::realloc(block, layout, 16) });
    let moved = core::hint::black_box(moved);
    // SAFETY: a failed reallocation leaves `block` allocated with `layout`; a successful one gives a block
    // of 16 bytes with the same alignment.
    unsafe {
        if moved.is_null() {
            std::alloc::dealloc(block, layout);
        } else {
            std::alloc::dealloc(moved, Layout::from_size_align_unchecked(16, layout.align()));
        }
    }
}

/// Called by the allocator for a probe's allocation, inside the profiler guard: unwinds from the caller of
/// the function at `entry` (the allocator's entry point) to the probe, and adds the frames in between to the
/// path. Learns nothing when the thread's stack has no room for the system unwinder (only possible where the
/// process constructor did not run, and the first sampled allocation is deep in its thread's stack).
pub(crate) fn record_probe(guard: &Guard, entry: usize) {
    if !super::Room::here(guard).fits_system_unwinder() {
        return;
    }
    let probes = [
        probe_alloc as fn() as usize,
        probe_alloc_zeroed as fn() as usize,
        probe_realloc as fn() as usize,
    ];
    let mut frames = [0usize; CAPACITY];
    let mut len = 0;
    let mut state = Walk::BeforeEntry;
    // SAFETY: no other unwinding runs on this thread meanwhile; the closure only writes into a local array.
    unsafe {
        backtrace::trace_unsynchronized(|frame| {
            let function = frame.symbol_address() as usize;
            match state {
                Walk::BeforeEntry => {
                    if function == entry {
                        state = Walk::OnPath;
                    }
                    true
                }
                Walk::OnPath if probes.contains(&function) => {
                    state = Walk::AtProbe;
                    false
                }
                Walk::OnPath if len < CAPACITY => {
                    frames[len] = frame.ip() as usize;
                    len += 1;
                    true
                }
                _ => false,
            }
        });
    }
    if state == Walk::AtProbe {
        for &address in &frames[..len] {
            add(address);
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Walk {
    BeforeEntry,
    OnPath,
    AtProbe,
}

/// Adds `address` to the path unless it is there or the path is full. Only the learning thread adds.
fn add(address: usize) {
    let len = LEN.load(Relaxed);
    if len == CAPACITY || PATH[..len].iter().any(|a| a.load(Relaxed) == address) {
        return;
    }
    PATH[len].store(address, Relaxed);
    MASK.fetch_or(mask_bit(address), Relaxed);
    LEN.store(len + 1, Release);
}

/// How many of the innermost `frames` are on the allocation path: everything up to the last frame that is
/// (a walk that reached the program through the unwinder's own frames has them inside that span).
pub(crate) fn path_frames(frames: &[usize]) -> usize {
    let len = LEN.load(Acquire);
    let mask = MASK.load(Relaxed);
    // The path comes first: only the innermost frames need looking at. Plain loops: this runs for every
    // sample, also in unoptimized builds, where iterator adaptors cost calls.
    let mut i = frames.len().min(CAPACITY);
    while i > 0 {
        let frame = frames[i - 1];
        if mask & mask_bit(frame) != 0 {
            let mut j = 0;
            while j < len {
                if PATH[j].load(Relaxed) == frame {
                    return i;
                }
                j += 1;
            }
        }
        i -= 1;
    }
    0
}

/// How many return addresses the path has (0 until it is learned).
#[inline]
pub(crate) fn len() -> usize {
    LEN.load(Relaxed)
}
