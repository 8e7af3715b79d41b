//! The sampled allocations that are still live, so that a free subtracts exactly what its allocation added.
//!
//! Every free must ask "was this pointer sampled?", and almost every answer is no. A filter answers that
//! without a lock: bit `slot(ptr)` of `FILTER` is set while some live sampled pointer hashes to the slot, so
//! a clear bit means "not sampled" with certainty (one relaxed load from a 32 KiB array, small enough to stay
//! in cache). A set bit (a sampled pointer, or another pointer sharing its slot) goes on to the striped map.
//! How many live sampled pointers share each slot is counted in `COUNTS`, touched only by sampled
//! allocations and their frees; all pointers of a slot belong to one stripe, whose lock orders the updates
//! of the slot's count and bit. Entries are inserted before the sampled pointer is returned to the program
//! and removed before the memory goes back to the inner allocator, so an address reused at once can never
//! find a stale entry.

use core::hash::BuildHasherDefault;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::collections::HashMap;

use super::buckets::BucketId;
use super::{Lock, STRIPES, Weight, WordHasher};
use crate::lock;
use crate::shard::Counter;

const FILTER_BITS: u32 = 18;
/// 2^18 slots: with `L` live sampled allocations, a free of an unsampled pointer reaches a lock with
/// probability about `L / 2^18`.
const FILTER_SLOTS: usize = 1 << FILTER_BITS;

/// One bit per slot, set while the slot's count is not zero: the only part of the filter a free reads.
static FILTER: [AtomicU64; FILTER_SLOTS / 64] = [const { AtomicU64::new(0) }; FILTER_SLOTS / 64];
/// Live sampled pointers per slot, changed only under the slot's stripe lock (untouched pages cost nothing).
static COUNTS: [AtomicU32; FILTER_SLOTS] = [const { AtomicU32::new(0) }; FILTER_SLOTS];
static LIVE_COUNT: Counter = Counter::new();
static SAMPLED_FREES: Counter = Counter::new();
static FALSE_POSITIVES: Counter = Counter::new();

/// The memory of the filter, in bytes: the bits every free reads and the counts behind them.
pub(crate) const FILTER_BYTES: usize = size_of_val(&FILTER) + size_of_val(&COUNTS);

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
fn slot(ptr: usize) -> usize {
    (mix(ptr) >> (64 - FILTER_BITS)) as usize
}

/// The stripe of a slot: every pointer of the slot is in it, so its lock orders the slot's updates.
fn stripe(slot: usize) -> &'static Lock<LiveMap> {
    &LIVE[slot & (STRIPES - 1)]
}

/// Whether `ptr` may be a live sampled allocation. `false` is certain; `true` needs [`remove`] to tell.
#[inline(always)]
pub(crate) fn maybe_sampled(ptr: *mut u8) -> bool {
    let slot = slot(ptr as usize);
    FILTER[slot / 64].load(Relaxed) >> (slot % 64) & 1 != 0
}

/// Records `ptr` as a live sampled allocation. Must run inside the profiler guard, before `ptr` is returned
/// to the program.
pub(crate) fn insert(ptr: *mut u8, entry: LiveEntry) {
    let ptr = ptr as usize;
    let slot = slot(ptr);
    let mut map = stripe(slot).lock();
    if map.insert(ptr, entry).is_none() {
        // Under the stripe lock: no other thread changes this slot's count or bit meanwhile.
        let count = COUNTS[slot].load(Relaxed).saturating_add(1);
        COUNTS[slot].store(count, Relaxed);
        if count == 1 {
            FILTER[slot / 64].fetch_or(1 << (slot % 64), Relaxed);
        }
        LIVE_COUNT.increment();
    }
}

/// Removes `ptr` if it is a live sampled allocation and returns what it recorded. Must run inside the
/// profiler guard, before the memory is given back to the inner allocator.
pub(crate) fn remove(ptr: *mut u8) -> Option<LiveEntry> {
    let ptr = ptr as usize;
    let slot = slot(ptr);
    let mut map = stripe(slot).lock();
    let Some(entry) = map.remove(&ptr) else {
        FALSE_POSITIVES.increment();
        return None;
    };
    // Under the stripe lock, as in `insert`.
    let count = COUNTS[slot].load(Relaxed).saturating_sub(1);
    COUNTS[slot].store(count, Relaxed);
    if count == 0 {
        FILTER[slot / 64].fetch_and(!(1 << (slot % 64)), Relaxed);
    }
    drop(map);
    LIVE_COUNT.decrement();
    SAMPLED_FREES.increment();
    Some(entry)
}

/// Frees (and reallocations) of sampled allocations so far.
pub(crate) fn sampled_frees() -> u64 {
    SAMPLED_FREES.get()
}

/// Frees of unsampled pointers whose filter slot was in use, so that they looked the pointer up in vain.
pub(crate) fn false_positives() -> u64 {
    FALSE_POSITIVES.get()
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
    LIVE_COUNT.get() as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::buckets::BucketId;

    fn entry() -> LiveEntry {
        LiveEntry {
            bucket: BucketId::OVERFLOW,
            weight: Weight {
                objects: 1,
                bytes: 1,
            },
        }
    }

    /// Pointers (fake, 16-aligned, never dereferenced) that all share one filter slot.
    fn sharing_a_slot(count: usize, base: usize) -> Vec<usize> {
        let target = slot(base);
        (0..)
            .map(|i| base + 16 * i)
            .filter(|&ptr| slot(ptr) == target)
            .take(count)
            .collect()
    }

    #[test]
    fn a_slot_stays_marked_while_any_of_its_pointers_is_live() {
        let ptrs = sharing_a_slot(3, 0x7000_0000_0000);
        for &ptr in &ptrs {
            insert(ptr as *mut u8, entry());
        }
        for (i, &ptr) in ptrs.iter().enumerate() {
            assert!(maybe_sampled(ptr as *mut u8));
            assert!(remove(ptr as *mut u8).is_some());
            assert!(remove(ptr as *mut u8).is_none(), "removed twice");
            let others_live = i + 1 < ptrs.len();
            assert_eq!(maybe_sampled(ptr as *mut u8), others_live);
        }
        assert_eq!(COUNTS[slot(ptrs[0])].load(Relaxed), 0);
    }

    #[test]
    fn concurrent_inserts_and_removes_of_one_slot_leave_no_marks() {
        // Four threads each insert and remove their own pointer, all four of one slot, so the slot's count
        // keeps crossing zero concurrently: a live pointer must never look unsampled, and the bit must be
        // clear at the end.
        let ptrs = sharing_a_slot(4, 0x6000_0000_0000);
        std::thread::scope(|s| {
            for &ptr in &ptrs {
                s.spawn(move || {
                    for _ in 0..200_000 {
                        insert(ptr as *mut u8, entry());
                        assert!(
                            maybe_sampled(ptr as *mut u8),
                            "a live pointer looks unsampled"
                        );
                        assert!(remove(ptr as *mut u8).is_some());
                    }
                });
            }
        });
        assert!(!maybe_sampled(ptrs[0] as *mut u8));
        assert_eq!(COUNTS[slot(ptrs[0])].load(Relaxed), 0);
    }
}
