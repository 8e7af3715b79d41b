//! [`SamplingAllocator`]: the `GlobalAlloc` wrapper. Every allocation of the program passes through here, so
//! this file stays short: the fast path is `sampler::on_alloc` plus the inner call, the rest is `#[cold]`.

use core::alloc::{GlobalAlloc, Layout};

use crate::labels::{self, LabelSet};
use crate::sampler::{self, DEFAULT_SAMPLE_RATE, Guard};
use crate::stack::{self, Room, Stack, path, spare};
use crate::table::peak;
use crate::table::{Weight, buckets, live};
use crate::totals;

/// A global allocator that samples the allocations of an inner allocator into a heap profile.
///
/// Install it with `#[global_allocator]`; read the profile with [`crate::dump_profile`]. Any `GlobalAlloc`
/// can be wrapped (`System`, mimalloc, jemalloc).
///
/// ```no_run
/// use heap_sampler::SamplingAllocator;
/// use std::alloc::System;
///
/// #[global_allocator]
/// static ALLOC: SamplingAllocator<System> = SamplingAllocator::new(System);
/// ```
///
/// # How it works
///
/// Each thread counts allocated bytes down to an exponentially distributed gap whose mean is the sample
/// rate (default 512 KiB, as Go's `runtime.MemProfileRate`). The allocation that crosses it is sampled: its
/// stack is captured and it is added to the bucket of that stack with weight 1/p, where
/// p = 1 − e^(−size/rate) is the probability that an allocation of its size is sampled. The weighted sums are
/// unbiased estimates of what each stack allocated (`alloc_objects`, `alloc_space`) and still holds
/// (`inuse_objects`, `inuse_space`): a free of a sampled allocation subtracts exactly what it added.
///
/// # Reading the numbers
///
/// A site's estimate of `B` allocated bytes has a relative standard error of at most `sqrt(rate / B)`: 7 % at
/// 100 MiB and the default rate, 2.2 % at 1 GiB. Two lines that allocate identically differ by about
/// `sqrt(2)` times that, and converge as they allocate more. [`crate::set_sample_rate`]`(1)` records every
/// allocation exactly, for tests.
///
/// # Cost
///
/// An allocation that is not sampled costs a thread-local subtraction and a sign test; its free, a filter bit
/// found by one product of the pointer. A sampled one captures its stack, with the default DWARF unwinder
/// (which remembers the unwind rule of every return address it has seen) or with
/// [`crate::Unwinder::FramePointer`] in programs built with frame pointers, about half as costly (see
/// [`crate::set_unwinder`]). `benches/workloads.rs` measures whole programs; the README has its table.
///
/// # Safety of the profiled program
///
/// The allocator never panics, never recurses into itself (the profiler's own memory passes straight through
/// to the inner allocator, unsampled), holds no lock while capturing a stack, and takes no lock on the fast
/// path or on the free of an unsampled pointer.
pub struct SamplingAllocator<A> {
    inner: A,
    rate: usize,
}

impl<A: GlobalAlloc> SamplingAllocator<A> {
    /// Wraps `inner` with the default sample rate, [`crate::DEFAULT_SAMPLE_RATE`] (512 KiB, as Go's).
    pub const fn new(inner: A) -> Self {
        Self::with_sample_rate(inner, DEFAULT_SAMPLE_RATE)
    }

    /// Wraps `inner` with a sample rate of `bytes` (mean bytes between samples; 0 = off, 1 = every
    /// allocation). It applies from the first allocation until [`crate::set_sample_rate`] changes it.
    pub const fn with_sample_rate(inner: A, bytes: usize) -> Self {
        SamplingAllocator { inner, rate: bytes }
    }

    /// The wrapped allocator.
    pub const fn inner(&self) -> &A {
        &self.inner
    }

    /// Records a sampled allocation of `size` bytes at `ptr` (non-null), before `ptr` reaches the program:
    /// in the bucket of its stack and the thread's labels, in the live table, and in the heap totals. The
    /// stack is captured only when the thread's stack has room for the walk (see [`stack::Room`]); otherwise
    /// the sample is recorded with no stack, under `[stack not captured]`, with its full weight.
    ///
    /// Rate 0 marks the probe that learns the allocation path (see [`crate::stack::path`]): its stack is
    /// learned from, and nothing is recorded.
    #[cold]
    #[inline(never)]
    fn track(ptr: *mut u8, size: usize, rate: usize) {
        let entry = Self::track as fn(*mut u8, usize, usize) as usize;
        if !path::learning_started() {
            // Before the guard: the probes' allocations must be sampled.
            path::learn();
        }
        let Some(guard) = Guard::enter() else { return };
        if rate == 0 {
            path::record_probe(&guard, entry);
            return;
        }
        crate::fork::register_fork_handlers();
        let weight = Weight::of(size, rate);
        let labels = labels::for_sample();
        // This frame stays small: the captured stack lives in the frame of `record_with_stack`, entered only
        // when the walk fits; a sample without its stack is recorded on the spare stack.
        let room = Room::here(&guard);
        if room.fits_walk() {
            let bucket = record_with_stack(
                &guard,
                entry,
                stack::frame_pointer(),
                room,
                labels,
                weight,
                size,
            );
            record_live(&guard, ptr, bucket, weight, size);
        } else {
            stack::note_stackless_sample();
            spare::run(&mut || {
                record_live(
                    &guard,
                    ptr,
                    buckets::record_alloc(&guard, &[], false, labels, weight, size),
                    weight,
                    size,
                );
            });
        }
    }

    /// Forgets `ptr` if it was sampled, returning what it recorded (bucket counts are not yet changed).
    #[cold]
    #[inline(never)]
    fn untrack(ptr: *mut u8) -> Option<live::LiveEntry> {
        // Inside the guard only the profiler's own memory is freed, and that is never sampled.
        let guard = Guard::enter()?;
        let mut entry = None;
        stack::with_room_for_free(&guard, &mut || entry = live::remove(&guard, ptr));
        entry
    }

    /// Subtracts a freed sampled allocation from the heap totals and from its bucket (see [`subtract`]).
    #[cold]
    #[inline(never)]
    fn record_free(entry: live::LiveEntry) {
        if let Some(guard) = Guard::enter() {
            stack::with_room_for_free(&guard, &mut || subtract(&guard, entry));
        }
    }

    /// The free of `ptr`, whose filter slot is in use: forgets it and subtracts it if it was sampled, in one
    /// entry of the profiler guard.
    #[cold]
    #[inline(never)]
    fn free_maybe_sampled(ptr: *mut u8) {
        // Inside the guard only the profiler's own memory is freed, and that is never sampled.
        if let Some(guard) = Guard::enter() {
            stack::with_room_for_free(&guard, &mut || {
                if let Some(entry) = live::remove(&guard, ptr) {
                    subtract(&guard, entry);
                }
            });
        }
    }

    /// Enters `ptr` in the live table again after its reallocation failed.
    #[cold]
    #[inline(never)]
    fn retrack(ptr: *mut u8, entry: live::LiveEntry) {
        if let Some(guard) = Guard::enter() {
            // On the spare stack: the entry may have to grow the table, and a failed reallocation is rare.
            spare::run(&mut || live::insert(&guard, ptr, entry));
        }
    }
}

/// Captures the stack of a sampled allocation whose entry point is `entry` (with frame pointer
/// `entry_frame`), given the `room` its thread's stack has left there, and adds the sample to its bucket.
/// Not generic, so that one copy serves every inner allocator.
#[inline(never)]
fn record_with_stack(
    guard: &Guard,
    entry: usize,
    entry_frame: usize,
    room: Room,
    labels: LabelSet,
    weight: Weight,
    size: usize,
) -> buckets::BucketId {
    let mut stack = Stack::empty();
    if !stack.capture(guard, entry, entry_frame, room) {
        stack::note_stackless_sample();
    }
    buckets::record_alloc(
        guard,
        stack.frames(),
        stack.truncated(),
        labels,
        weight,
        size,
    )
}

/// Subtracts a freed sampled allocation from the heap totals and from its bucket, inside the profiler guard;
/// a free that ends a peak of the in-use estimate first copies the buckets as they are at the peak.
fn subtract(guard: &Guard, entry: live::LiveEntry) {
    peak::before_free(guard, totals::on_free(entry.weight));
    buckets::record_free(entry.bucket, entry.weight, entry.size);
}

/// Enters a sampled allocation of `size` bytes recorded in `bucket` in the live table and the heap totals.
fn record_live(
    guard: &Guard,
    ptr: *mut u8,
    bucket: buckets::BucketId,
    weight: Weight,
    size: usize,
) {
    live::insert(
        guard,
        ptr,
        live::LiveEntry {
            bucket,
            weight,
            size,
        },
    );
    peak::after_alloc(totals::on_alloc(weight));
}

// SAFETY: every method forwards to the inner allocator with the caller's arguments unchanged and returns its
// result unchanged; the bookkeeping around the calls never touches the memory it returns.
unsafe impl<A: GlobalAlloc> GlobalAlloc for SamplingAllocator<A> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if let Some(rate) = sampler::on_alloc(layout.size(), self.rate) {
            // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract for `layout`.
            return unsafe { self.alloc_sampled(layout, rate, false) };
        }
        // SAFETY: as above. The fast path ends in a tail call.
        unsafe { self.inner.alloc(layout) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if let Some(rate) = sampler::on_alloc(layout.size(), self.rate) {
            // SAFETY: the caller upholds `GlobalAlloc::alloc_zeroed`'s contract for `layout`.
            return unsafe { self.alloc_sampled(layout, rate, true) };
        }
        // SAFETY: as above.
        unsafe { self.inner.alloc_zeroed(layout) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if sampler::SAMPLING_SUPPORTED && live::maybe_sampled(ptr) {
            // SAFETY: the caller upholds `GlobalAlloc::dealloc`'s contract.
            return unsafe { self.dealloc_maybe_sampled(ptr, layout) };
        }
        // SAFETY: the caller upholds `GlobalAlloc::dealloc`'s contract; `ptr` came from the inner allocator.
        unsafe { self.inner.dealloc(ptr, layout) }
    }

    /// A reallocation is the free of the old block (if it was sampled) and a new allocation of `new_size`
    /// bytes with its own sampling decision. A failed reallocation leaves the accounting as it was.
    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Untrack before the inner call: once it returns, the old address may already be reused by another
        // thread's sampled allocation.
        let old = if sampler::SAMPLING_SUPPORTED && live::maybe_sampled(ptr) {
            Self::untrack(ptr)
        } else {
            None
        };
        // SAFETY: the caller upholds `GlobalAlloc::realloc`'s contract for `ptr`, `layout` and `new_size`.
        let new_ptr = unsafe { self.inner.realloc(ptr, layout, new_size) };
        if new_ptr.is_null() {
            if let Some(entry) = old {
                Self::retrack(ptr, entry);
            }
            return new_ptr;
        }
        if let Some(entry) = old {
            Self::record_free(entry);
        }
        if let Some(rate) = sampler::on_alloc(new_size, self.rate) {
            Self::track(new_ptr, new_size, rate);
        }
        new_ptr
    }
}

impl<A: GlobalAlloc> SamplingAllocator<A> {
    /// The slow path of `alloc` and `alloc_zeroed`: allocate, then record the sampled allocation.
    ///
    /// # Safety
    /// As `GlobalAlloc::alloc` (or `alloc_zeroed` when `zeroed`) for `layout`.
    #[cold]
    #[inline(never)]
    unsafe fn alloc_sampled(&self, layout: Layout, rate: usize, zeroed: bool) -> *mut u8 {
        // SAFETY: forwarded from this function's contract.
        let ptr = unsafe {
            if zeroed {
                self.inner.alloc_zeroed(layout)
            } else {
                self.inner.alloc(layout)
            }
        };
        if !ptr.is_null() {
            Self::track(ptr, layout.size(), rate);
        }
        ptr
    }

    /// The slow path of `dealloc`: the pointer's filter slot is in use, so it may be a sampled allocation.
    ///
    /// # Safety
    /// As `GlobalAlloc::dealloc` for `ptr` and `layout`.
    #[cold]
    #[inline(never)]
    unsafe fn dealloc_maybe_sampled(&self, ptr: *mut u8, layout: Layout) {
        Self::free_maybe_sampled(ptr);
        // SAFETY: forwarded from this function's contract.
        unsafe { self.inner.dealloc(ptr, layout) }
    }
}
