//! [`SamplingAllocator`]: the `GlobalAlloc` wrapper. Every allocation of the program passes through here, so
//! this file stays short: the fast path is `sampler::on_alloc` plus the inner call, the rest is `#[cold]`.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr;

use crate::labels::{self, LabelSet};
use crate::mark;
use crate::sampler::{self, DEFAULT_SAMPLE_RATE, Guard};
use crate::stack::{self, Room, Stack, path, spare};
use crate::table::peak;
use crate::table::{BucketId, Sample, buckets, live};
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
/// (`inuse_objects`, `inuse_space`, summed over the sampled allocations not yet freed): a free of a sampled
/// allocation takes away exactly what it added.
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
/// An allocation that is not sampled costs a thread-local subtraction and a sign test; its free, a test of two
/// bits of the pointer: a sampled allocation lies at an odd multiple of its alignment (at least 8 bytes)
/// into a block that much larger than asked, so a pointer without that bit set was not sampled. A sampled
/// one costs that many bytes more, and captures its stack, with the default DWARF unwinder
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

    /// Enters `ptr` in the live table and the heap totals again after its reallocation failed: its block
    /// still has the mark, and the totals take back its free.
    #[cold]
    #[inline(never)]
    fn retrack(ptr: *mut u8, entry: live::LiveEntry) {
        let guard = Guard::inside();
        // On the spare stack: the entry may have to grow the table, and a failed reallocation is rare.
        spare::run(&mut || live::insert(&guard, ptr, entry));
        peak::after_alloc(totals::undo_free(entry.weight));
    }
}

/// Records a sampled allocation of `size` bytes at `ptr` (non-null, in a block of [`mark::block_layout`]),
/// before `ptr` reaches the program: in the bucket of its stack and the thread's labels, in the live table,
/// and in the heap totals. It is always entered in the live table, whose entries tell which blocks have the
/// mark, so the guard is entered without being asked: a sampled allocation is never nested in the profiler
/// (see `sampler::on_alloc`). The stack is captured only when the thread's stack has room for the walk (see
/// [`stack::Room`]); otherwise the sample is recorded with no stack, under `[stack not captured]`, with its
/// full weight. Not generic: one copy, compiled with what it calls.
///
/// Rate 0 marks the probe that learns the allocation path (see [`crate::stack::path`]): its stack is
/// learned from, and nothing is recorded.
#[cold]
#[inline(never)]
fn track(ptr: *mut u8, size: usize, rate: usize) {
    let entry = track as fn(*mut u8, usize, usize) as usize;
    if !path::learning_started() {
        // Before the guard: the probes' allocations must be sampled.
        path::learn();
    }
    let guard = Guard::inside();
    if rate == 0 {
        path::record_probe(&guard, entry);
        return;
    }
    crate::fork::register_fork_handlers();
    // This frame stays small, and computes nothing before the room is checked: the captured stack and the
    // sample live in the frame of `record_with_stack`, entered only when the walk fits; a sample without its
    // stack is recorded on the spare stack.
    let room = Room::here(&guard);
    if !room.fits_walk() {
        return track_stackless(&guard, ptr, size, rate);
    }
    record_with_stack(&guard, entry, stack::frame_pointer(), room, ptr, size, rate);
}

/// [`track`] of a sampled allocation whose stack the thread has not the room to capture: on the spare stack,
/// with no stack.
#[cold]
#[inline(never)]
fn track_stackless(guard: &Guard, ptr: *mut u8, size: usize, rate: usize) {
    stack::note_stackless_sample();
    spare::run(&mut || {
        let sample = Sample::of(size, rate);
        let labels = labels::for_sample();
        let bucket = buckets::record_alloc(guard, &[], false, stack::Repeat::NONE, labels, &sample);
        record_live(guard, ptr, bucket, &sample);
    });
}

/// Records the sampled allocation of `size` bytes at `ptr`, taken at `rate`, whose entry point is `entry`
/// (with frame pointer `entry_frame`), given the `room` its thread's stack has left there: captures its
/// stack, adds it to its bucket, enters it in the live table and the heap totals.
#[inline(never)]
fn record_with_stack(
    guard: &Guard,
    entry: usize,
    entry_frame: usize,
    room: Room,
    ptr: *mut u8,
    size: usize,
    rate: usize,
) {
    let sample = Sample::of(size, rate);
    let labels = labels::for_sample();
    let mut stack = Stack::empty();
    if !stack.capture(guard, entry, entry_frame, room) {
        stack::note_stackless_sample();
    }
    let bucket = bucket_of(guard, &mut stack, labels, &sample);
    record_live(guard, ptr, bucket, &sample);
}

/// Adds `sample`, with its captured `stack`, to its bucket.
#[inline(always)]
fn bucket_of(guard: &Guard, stack: &mut Stack, labels: LabelSet, sample: &Sample) -> BucketId {
    if !stack.written() {
        // The thread's last stack again, its frames not written: most often its bucket is the last one's.
        if let Some(id) = buckets::record_repeat(guard, &[], false, stack.repeat(), labels, sample)
        {
            return id;
        }
        stack.write_frames();
    }
    buckets::record_alloc(
        guard,
        stack.frames(),
        stack.truncated(),
        stack.repeat(),
        labels,
        sample,
    )
}

/// Forgets `ptr`, a candidate by its address (see [`mark::may_be_sampled`]), if it was sampled, and subtracts
/// it from the heap totals, returning what it recorded; the peak check is left to [`record_free`]. `None`
/// means that `ptr` is a block of the inner allocator as the program asked for it.
#[cold]
#[inline(never)]
fn untrack(ptr: *mut u8) -> Option<Freed> {
    // Most candidates that were not sampled stop at the filter, without a lock.
    let slot = live::candidate(ptr)?;
    let Some(guard) = Guard::enter() else {
        return untrack_inside(slot, ptr);
    };
    stack::with_room_for_free(&guard, || {
        live::remove_candidate(&guard, slot, ptr, subtract)
    })
}

/// A sampled allocation out of the live table, and the estimated in-use bytes before its free.
type Freed = (live::LiveEntry, u64);

/// Subtracts `entry`, leaving the live table, from the heap totals; returns the estimated in-use bytes before.
/// Called under the live stripe's lock, before the entry leaves: a copy at a peak, which sums the live table,
/// never misses an allocation whose free the totals do not show yet. (One whose free comes after the copy's
/// own free and before the copy reads its stripe is missed, as it was when buckets were subtracted from.)
#[inline(always)]
fn subtract(entry: &live::LiveEntry) -> u64 {
    totals::on_free(entry.weight)
}

/// [`untrack`] inside the profiler: mostly its own memory, never sampled, but also the program's, which the
/// profiler may free or grow (a span's extensions, say): the table is asked too, unless this thread holds one
/// of its stripes, when only the table's own memory is freed. A live stripe is the highest rank, so whatever
/// else the thread holds, it may take one; not the spare stack, which ranks below the tables' locks.
#[cold]
#[inline(never)]
fn untrack_inside(slot: live::Slot, ptr: *mut u8) -> Option<Freed> {
    if live::frees_are_own() {
        return None;
    }
    live::remove_candidate(&Guard::inside(), slot, ptr, subtract)
}

/// Ends the free of a sampled allocation, already out of the live table and the heap totals, inside the
/// profiler guard: a free that ends a peak of the in-use estimate copies the buckets as they are at the peak.
/// Its bucket is not touched: its in-use counts are summed over the live table (see [`buckets::LiveSums`]).
#[cold]
#[inline(never)]
fn record_free((entry, inuse): Freed) {
    // Also inside the profiler, which may free a sampled allocation of the program (see `untrack`).
    let guard = Guard::inside();
    stack::with_room_for_free(&guard, || peak::before_free(&guard, inuse, &entry));
}

/// The free of `ptr`, a candidate by its address: forgets it and subtracts it if it was sampled, in one
/// entry of the profiler guard and one check of the stack's room, as [`untrack`] and [`record_free`] do in
/// two. Returns whether `ptr` was sampled. Not generic: one copy, compiled with what it calls.
#[inline(never)]
fn free_if_sampled(ptr: *mut u8) -> bool {
    let Some(slot) = live::candidate(ptr) else {
        return false;
    };
    let Some(guard) = Guard::enter() else {
        return free_inside(slot, ptr);
    };
    // As `with_room_for_free`, spelled out so that the usual path inlines the bookkeeping: a closure shared
    // with the spare stack's path would be a call of its own.
    if !stack::free_fits(&guard) {
        return stack::on_spare_stack(|| free_candidate(&guard, slot, ptr));
    }
    free_candidate(&guard, slot, ptr)
}

/// The bookkeeping of [`free_if_sampled`], once its guard is entered.
#[inline(always)]
fn free_candidate(guard: &Guard, slot: live::Slot, ptr: *mut u8) -> bool {
    match live::remove_candidate(guard, slot, ptr, subtract) {
        Some((entry, inuse)) => {
            peak::before_free(guard, inuse, &entry);
            true
        }
        None => false,
    }
}

/// [`free_if_sampled`] inside the profiler, as [`untrack_inside`].
#[cold]
#[inline(never)]
fn free_inside(slot: live::Slot, ptr: *mut u8) -> bool {
    match untrack_inside(slot, ptr) {
        Some(freed) => {
            record_free(freed);
            true
        }
        None => false,
    }
}

/// Enters `sample`, a sampled allocation at `ptr` recorded in `bucket`, in the live table and the heap totals.
#[inline(always)]
fn record_live(guard: &Guard, ptr: *mut u8, bucket: BucketId, sample: &Sample) {
    live::insert(
        guard,
        ptr,
        live::LiveEntry {
            bucket,
            weight: sample.weight,
            size: sample.size,
        },
    );
    peak::after_alloc(totals::on_alloc(sample.weight));
}

// SAFETY: an allocation that is not sampled is the inner allocator's, with the caller's arguments and result
// unchanged. A sampled one is a block of the inner allocator `mark::block_layout` bytes larger and aligned to
// twice its offset, whose pointer, that offset into it, has the caller's size and alignment; it is in the live
// table from before it is returned until its free or reallocation finds it there and gives the inner
// allocator back the block, with the layout it was allocated with. The bookkeeping never touches the memory
// it returns but to copy the contents of a reallocated block.
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
        if sampler::SAMPLING_SUPPORTED && mark::may_be_sampled(ptr, layout.align()) {
            // SAFETY: the caller upholds `GlobalAlloc::dealloc`'s contract.
            return unsafe { Self::dealloc_candidate(ptr, layout.size(), layout.align(), self) };
        }
        // SAFETY: the caller upholds `GlobalAlloc::dealloc`'s contract; `ptr` is not marked, so it came from
        // the inner allocator with `layout`.
        unsafe { self.inner.dealloc(ptr, layout) }
    }

    /// A reallocation is the free of the old block (if it was sampled) and a new allocation of `new_size`
    /// bytes with its own sampling decision. A failed reallocation leaves the accounting as it was.
    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // One call of the slow path, whichever way it is reached: its return address in this function is
        // then one, which the allocation path learns (see `crate::stack::path`).
        let slow = if sampler::SAMPLING_SUPPORTED && mark::may_be_sampled(ptr, layout.align()) {
            Some(None)
        } else {
            sampler::on_alloc(new_size, self.rate).map(Some)
        };
        if let Some(rate) = slow {
            // SAFETY: the caller upholds `GlobalAlloc::realloc`'s contract for `ptr`, `layout` and `new_size`.
            return unsafe { self.realloc_slow(ptr, layout, new_size, rate) };
        }
        // SAFETY: as above; `ptr` is not marked, so it came from the inner allocator with `layout`.
        unsafe { self.inner.realloc(ptr, layout, new_size) }
    }
}

impl<A: GlobalAlloc> SamplingAllocator<A> {
    /// The slow path of `alloc` and `alloc_zeroed`: allocate a marked block, then record the sampled
    /// allocation (rate 0, the probe of the allocation path: an unmarked block, the probe recorded). Where the
    /// marked block's layout does not exist or cannot be had, the allocation as asked, not sampled.
    ///
    /// # Safety
    /// As `GlobalAlloc::alloc` (or `alloc_zeroed` when `zeroed`) for `layout`.
    #[cold]
    #[inline(never)]
    unsafe fn alloc_sampled(&self, layout: Layout, rate: usize, zeroed: bool) -> *mut u8 {
        let allocate = |layout: Layout| {
            // SAFETY: forwarded from this function's contract; a block layout is larger than `layout`, so
            // its size is not zero either. `alloc_zeroed` zeroes the whole block, the program's part with it.
            unsafe {
                if zeroed {
                    self.inner.alloc_zeroed(layout)
                } else {
                    self.inner.alloc(layout)
                }
            }
        };
        let mut ptr = ptr::null_mut();
        let mut recorded = rate == 0;
        if rate != 0
            && let Some((block, offset)) = mark::block_layout(layout)
        {
            let base = allocate(block);
            if !base.is_null() {
                // SAFETY: allocated just above with the layout made with `offset`.
                ptr = unsafe { mark::user_pointer(base, offset) };
                recorded = true;
            }
        }
        if ptr.is_null() {
            ptr = allocate(layout);
        }
        // One call: its return address is on the allocation path (see `crate::stack::path`).
        if recorded && !ptr.is_null() {
            track(ptr, layout.size(), rate);
        }
        ptr
    }

    /// The slow path of `dealloc`: `ptr` has the mark's bits, so it may be a sampled allocation; if so its
    /// block goes back to the inner allocator. The arguments are the allocator shim's, in its order, and the
    /// allocator comes last: they are already where this call wants them, and `dealloc` moves no register.
    ///
    /// # Safety
    /// As `GlobalAlloc::dealloc` for `ptr` and the layout of `size` and `align`.
    #[cold]
    #[inline(never)]
    unsafe fn dealloc_candidate(ptr: *mut u8, size: usize, align: usize, this: &Self) {
        // SAFETY: `dealloc`'s layout, taken apart by the caller.
        let layout = unsafe { Layout::from_size_align_unchecked(size, align) };
        if !free_if_sampled(ptr) {
            // SAFETY: forwarded from this function's contract; not sampled, so the inner allocator's block.
            return unsafe { this.inner.dealloc(ptr, layout) };
        }
        // SAFETY: `ptr` was in the live table, so it is a sampled allocation of `layout`, and its block was
        // allocated with the layout `block_of` gives.
        unsafe {
            let (block, block_layout) = mark::block_of(ptr, layout);
            this.inner.dealloc(block, block_layout);
        }
    }

    /// The slow path of `realloc`: the old block may be sampled (`rate` is `None`, not yet decided), or the
    /// new one is (`Some(rate)`; rate 0 for the probe of the allocation path). A block that stays sampled, or
    /// stays unsampled, is reallocated by the inner allocator; one that changes is allocated anew, its
    /// contents copied and the old block freed.
    ///
    /// # Safety
    /// As `GlobalAlloc::realloc` for `ptr`, `layout` and `new_size`.
    #[cold]
    #[inline(never)]
    unsafe fn realloc_slow(
        &self,
        ptr: *mut u8,
        layout: Layout,
        new_size: usize,
        rate: Option<usize>,
    ) -> *mut u8 {
        // Untrack before the inner call: once it returns, the old address may already be reused by another
        // thread's sampled allocation.
        let old = if rate.is_none() { untrack(ptr) } else { None };
        let rate = rate.or_else(|| sampler::on_alloc(new_size, self.rate));
        // SAFETY: `GlobalAlloc::realloc`'s contract: `new_size` with `layout`'s alignment is a layout.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        let marked = rate
            .filter(|&rate| rate != 0)
            .and_then(|_| mark::block_layout(new_layout));
        let (old_block, old_layout) = match old {
            // SAFETY: `ptr` was in the live table: a sampled allocation of `layout`.
            Some(_) => unsafe { mark::block_of(ptr, layout) },
            None => (ptr, layout),
        };
        // SAFETY: `old_block` is the inner allocator's block of `old_layout` (per this function's contract, or
        // the mark's), `new_layout` and the marked layouts have non-zero sizes, and the copy stays within both
        // the program's old allocation and its new one.
        let new_ptr = unsafe {
            match (old.is_some(), marked) {
                // Marked before and after: the same offset, since the alignment is the same.
                (true, Some((block, offset))) => {
                    let base = self.inner.realloc(old_block, old_layout, block.size());
                    if base.is_null() {
                        base
                    } else {
                        mark::user_pointer(base, offset)
                    }
                }
                (false, None) => self.inner.realloc(ptr, layout, new_size),
                (_, marked) => {
                    let (block, offset) = marked.unwrap_or((new_layout, 0));
                    let base = self.inner.alloc(block);
                    if base.is_null() {
                        base
                    } else {
                        let new_ptr = base.add(offset);
                        ptr::copy_nonoverlapping(ptr, new_ptr, layout.size().min(new_size));
                        self.inner.dealloc(old_block, old_layout);
                        new_ptr
                    }
                }
            }
        };
        if new_ptr.is_null() {
            if let Some((entry, _)) = old {
                Self::retrack(ptr, entry);
            }
            return new_ptr;
        }
        if let Some(freed) = old {
            record_free(freed);
        }
        // One call: its return address is on the allocation path (see `crate::stack::path`).
        if let Some(rate) = rate
            && (rate == 0 || marked.is_some())
        {
            track(new_ptr, new_size, rate);
        }
        new_ptr
    }
}
