//! The sampled allocations that are still live, so that a free subtracts exactly what its allocation added.
//!
//! Every free must ask "was this pointer sampled?", and almost every answer is no. A counting filter answers
//! that without a lock: `FILTER[slot(ptr)]` counts the live sampled pointers that hash to the slot, so a zero
//! means "not sampled" with certainty (one relaxed load). A non-zero slot (a sampled pointer, or another
//! pointer sharing its slot) goes on to the striped map. Entries are inserted before the sampled pointer is
//! returned to the program and removed before the memory goes back to the inner allocator, so an address
//! reused at once can never find a stale entry.

use core::hash::BuildHasherDefault;
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::collections::HashMap;

use super::buckets::BucketId;
use super::{Lock, STRIPES, Weight, WordHasher};
use crate::lock;

const FILTER_BITS: u32 = 18;
/// 2^18 counters (1 MiB, untouched pages cost nothing): with `L` live sampled allocations, a free of an
/// unsampled pointer reaches a lock with probability about `L / 2^18`.
const FILTER_SLOTS: usize = 1 << FILTER_BITS;

static FILTER: [AtomicU32; FILTER_SLOTS] = [const { AtomicU32::new(0) }; FILTER_SLOTS];
static LIVE_COUNT: AtomicUsize = AtomicUsize::new(0);
static SAMPLED_FREES: AtomicU64 = AtomicU64::new(0);
static FALSE_POSITIVES: AtomicU64 = AtomicU64::new(0);

/// The memory of the filter, in bytes.
pub(crate) const FILTER_BYTES: usize = FILTER_SLOTS * size_of::<AtomicU32>();

/// A live sampled allocation: where its weight went and what it was.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LiveEntry {
    pub(crate) bucket: BucketId,
    pub(crate) weight: Weight,
}

type LiveMap = HashMap<usize, LiveEntry, BuildHasherDefault<WordHasher>>;

static LIVE: [Lock<LiveMap>; STRIPES] =
    [const { Lock::new(HashMap::with_hasher(BuildHasherDefault::new())) }; STRIPES];

#[inline(always)]
fn mix(ptr: usize) -> u64 {
    // Allocations are at least 8-aligned: drop the low bits that are always zero, then spread.
    ((ptr as u64) >> 3).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

#[inline(always)]
fn filter_slot(ptr: usize) -> &'static AtomicU32 {
    &FILTER[(mix(ptr) >> (64 - FILTER_BITS)) as usize]
}

fn stripe(ptr: usize) -> &'static Lock<LiveMap> {
    &LIVE[(mix(ptr) >> 20) as usize & (STRIPES - 1)]
}

/// Whether `ptr` may be a live sampled allocation. `false` is certain; `true` needs [`remove`] to tell.
#[inline(always)]
pub(crate) fn maybe_sampled(ptr: *mut u8) -> bool {
    filter_slot(ptr as usize).load(Relaxed) != 0
}

/// Records `ptr` as a live sampled allocation. Must run inside the profiler guard, before `ptr` is returned
/// to the program.
pub(crate) fn insert(ptr: *mut u8, entry: LiveEntry) {
    let ptr = ptr as usize;
    let previous = stripe(ptr).lock().insert(ptr, entry);
    if previous.is_none() {
        filter_slot(ptr).fetch_add(1, Relaxed);
        LIVE_COUNT.fetch_add(1, Relaxed);
    }
}

/// Removes `ptr` if it is a live sampled allocation and returns what it recorded. Must run inside the
/// profiler guard, before the memory is given back to the inner allocator.
pub(crate) fn remove(ptr: *mut u8) -> Option<LiveEntry> {
    let ptr = ptr as usize;
    let Some(entry) = stripe(ptr).lock().remove(&ptr) else {
        FALSE_POSITIVES.fetch_add(1, Relaxed);
        return None;
    };
    filter_slot(ptr).fetch_sub(1, Relaxed);
    LIVE_COUNT.fetch_sub(1, Relaxed);
    SAMPLED_FREES.fetch_add(1, Relaxed);
    Some(entry)
}

/// Frees (and reallocations) of sampled allocations so far.
pub(crate) fn sampled_frees() -> u64 {
    SAMPLED_FREES.load(Relaxed)
}

/// Frees of unsampled pointers whose filter slot was in use, so that they looked the pointer up in vain.
pub(crate) fn false_positives() -> u64 {
    FALSE_POSITIVES.load(Relaxed)
}

pub(super) fn hold_locks() {
    LIVE.iter().for_each(lock::hold);
}

/// # Safety
/// As [`lock::release`].
pub(super) unsafe fn release_locks() {
    // SAFETY: forwarded from this function's contract.
    unsafe { LIVE.iter().for_each(|stripe| lock::release(stripe)) }
}

/// Approximate bytes of the live map holding `live` entries (key, entry and control byte; the map's spare
/// capacity is not counted).
pub(crate) fn entry_bytes(live: usize) -> usize {
    live.saturating_mul(size_of::<(usize, LiveEntry)>() + 1)
}

/// The number of live sampled allocations.
pub(crate) fn live_count() -> usize {
    LIVE_COUNT.load(Relaxed)
}
