//! The sampled allocations that are still live, so that a free subtracts exactly what its allocation added.
//!
//! A free asks "was this pointer sampled?" only of the pointers whose address has the mark's bits (see
//! [`crate::mark`]): the sampled ones, and the few others that happen to have those bits (blocks of larger
//! alignments, or the smallest size classes of some allocators), and the table's entries are what tells them
//! apart: a pointer found here has a marked block to give back. Over glibc's allocator those others are tens
//! in a million frees; over an allocator with an 8-byte size class, half the frees of that class. A filter
//! answers most of them without a lock: bit `slot_of(ptr)` of `FILTER` is set while some live sampled pointer hashes to the slot,
//! so a clear bit means "not sampled" with certainty (one relaxed load). A set bit (a sampled pointer, or
//! another pointer sharing its slot) goes on to the striped table. The table is keyed by slot: all live
//! pointers of a slot have the same hash and one stripe, so the free that removes a slot's last pointer sees
//! that it was the last, and clears the bit, under the lock that every update of the slot takes. Entries are
//! inserted before the sampled pointer is returned to the program and removed before the memory goes back to
//! the inner allocator, so an address reused at once can never find a stale entry.
//!
//! A pointer's stripe comes from a hash of its 4 MiB region of the address space, and each stripe owns one
//! contiguous block of the filter. Allocators hand each thread memory from regions of its own (glibc's
//! per-thread arenas, jemalloc's arenas, mimalloc's segments), so a thread's sampled allocations and frees
//! mostly touch stripes and filter blocks that no other core writes.

use core::cell::Cell;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

use hashbrown::HashTable;
use hashbrown::hash_table::Entry;

use super::{BucketId, Lock, Rank, STRIPES, Weight, bump};
use crate::lock::AnyLock;
use crate::sampler::Guard;
use crate::shard::Padded;
use crate::sync::Atomic;

/// Pointers in one 2^22-byte (4 MiB) region of the address space share a stripe.
const REGION_BITS: u32 = 22;
/// Slots per stripe: 2^12, a 512-byte block of the filter.
const SLOT_BITS: u32 = 12;
// A filter word's 64 slots belong to one stripe (see `set_filter_bit`).
const _: () = assert!(SLOT_BITS >= 6);
/// 2^18 slots: with `L` live sampled allocations spread over the stripes, a free of an unsampled pointer
/// reaches a lock with probability about `L / 2^18`. (A stripe holding many more than 2^12 live pointers,
/// only at small sample rates, has several per slot, which share one hash in its table.)
const FILTER_SLOTS: usize = STRIPES << SLOT_BITS;

/// One bit per slot, set while the stripe's table holds a pointer of the slot, changed only under the
/// stripe's lock: the only part of the filter a free reads.
static FILTER: [AtomicU64; FILTER_SLOTS / 64] = [const { AtomicU64::new(0) }; FILTER_SLOTS / 64];

/// The memory of the filter, in bytes.
pub(crate) const FILTER_BYTES: usize = size_of_val(&FILTER);

/// A live sampled allocation: where its weight went and what it was.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LiveEntry {
    pub(crate) bucket: BucketId,
    pub(crate) weight: Weight,
    /// The size asked for, in bytes: with the weight, it gives the variance to subtract.
    pub(crate) size: usize,
}

/// A live sampled pointer and what it recorded.
struct Live {
    ptr: usize,
    entry: LiveEntry,
}

/// A stripe: its live sampled pointers, hashed by slot ([`table_hash`]), and its counts, all on the lock's
/// cache line. The counts change only under the lock (so without read-modify-write instructions) and are
/// read without it.
struct Stripe {
    table: Lock<HashTable<Live>>,
    live: AtomicU64,
    sampled_frees: AtomicU64,
    false_positives: AtomicU64,
}

static LIVE: [Padded<Stripe>; STRIPES] = [const {
    Padded(Stripe {
        table: Lock::new(Rank::LiveStripe, HashTable::new()),
        live: AtomicU64::new(0),
        sampled_frees: AtomicU64::new(0),
        false_positives: AtomicU64::new(0),
    })
}; STRIPES];

/// Spreads pointers over a stripe's slots (see [`slot_of`]).
const SLOT_MIX: u64 = 0x94D0_49BB_1331_11EB;
const STRIPE_BITS: u32 = STRIPES.trailing_zeros();
/// Spreads slots over a stripe's table (see [`table_hash`]).
const TABLE_MIX: u64 = 0x9E37_79B9_7F4A_7C15;

/// The slot of `ptr`: its region's stripe in the high bits, a hash of the pointer in the low ones. The stripe
/// is a hash of the region, not its low bits: allocators that give each size class a region of its own at an
/// aligned base (AddressSanitizer's, for one) would otherwise put the first regions of every class in one
/// stripe. Within the stripe, two windows of one product, folded: over strides of
/// 8 B to 4 MiB, pointers of a region spread over at least 80 % as many slots as random ones would (a single
/// window clumps some strides into a third of that). Every free computes this: it is a multiply and a few
/// shifts.
#[inline(always)]
fn slot_of(ptr: usize) -> usize {
    let stripe = ((ptr >> REGION_BITS) as u64).wrapping_mul(SLOT_MIX) >> (64 - STRIPE_BITS);
    let mixed = (ptr as u64).wrapping_mul(SLOT_MIX);
    let within = (mixed ^ mixed << 16) >> (64 - SLOT_BITS);
    (stripe << SLOT_BITS | within) as usize
}

/// The hash of a slot's pointers in their stripe's table: one product, whose low bits (where hashbrown
/// starts its probe) are a permutation of the slot's own, already a hash, and whose top bits (the tags
/// hashbrown compares) mix all of them.
#[inline]
fn table_hash(slot: usize) -> u64 {
    (slot as u64).wrapping_mul(TABLE_MIX)
}

/// The stripe of a slot: every pointer of the slot is in it, so its lock orders the slot's updates.
#[inline]
fn stripe(slot: usize) -> &'static Stripe {
    debug_assert!(slot < FILTER_SLOTS);
    &LIVE[slot >> SLOT_BITS & (STRIPES - 1)].0
}

/// The filter slot of a pointer that may be a live sampled allocation (see [`candidate`]).
#[derive(Clone, Copy)]
pub(crate) struct Slot(usize);

/// `ptr`'s filter slot if `ptr` may be a live sampled allocation; `None` is certain, a slot needs
/// [`remove_candidate`] to tell.
#[inline(always)]
pub(crate) fn candidate(ptr: *mut u8) -> Option<Slot> {
    let slot = slot_of(ptr as usize);
    marked(&FILTER[slot / 64], slot % 64).then_some(Slot(slot))
}

/// Whether bit `bit` of the filter word `word` is set: one relaxed load. A free of a sampled pointer finds
/// its bit set: the bit was set under the stripe's lock before the allocation returned the pointer, and
/// whatever handed the pointer to the freeing thread ordered the two.
#[inline(always)]
fn marked(word: &impl Atomic<u64>, bit: usize) -> bool {
    word.load(Relaxed) >> bit & 1 != 0
}

/// Records `ptr` as a live sampled allocation, inside the profiler guard (the table may grow), before `ptr`
/// is returned to the program.
#[inline(always)]
pub(crate) fn insert(_: &Guard, ptr: *mut u8, entry: LiveEntry) {
    let ptr = ptr as usize;
    let slot = slot_of(ptr);
    let hash = table_hash(slot);
    let stripe = stripe(slot);
    let mut table = stripe.table.lock();
    if table.len() == table.capacity() {
        grow(&mut table);
    }
    // One probe finds the pointer if it is recorded already, or the place for it (with room: it does not
    // grow the table).
    let recorded = match table.entry(
        hash,
        |live| live.ptr == ptr,
        |live| table_hash(slot_of(live.ptr)),
    ) {
        // Recorded already (only if the inner allocator returned a live block twice): keep one entry.
        Entry::Occupied(mut found) => {
            found.get_mut().entry = entry;
            true
        }
        Entry::Vacant(place) => {
            place.insert(Live { ptr, entry });
            false
        }
    };
    if recorded {
        return;
    }
    // Set already if another live pointer of the slot is in the table (the bit is set exactly while one is):
    // then left alone, so that the frees reading the word keep their copy of its line.
    if !marked(&FILTER[slot / 64], slot % 64) {
        set_filter_bit(slot, true);
    }
    bump(&stripe.live, 1);
}

/// Makes room for one more entry in a stripe's full table, whose lock the caller holds.
#[cold]
#[inline(never)]
fn grow(table: &mut HashTable<Live>) {
    // Growing the table frees its old memory while the lock is held: that free must not look itself up.
    let _own = OwnFrees::begin();
    let capacity = table.capacity();
    table.reserve(1, |live| table_hash(slot_of(live.ptr)));
    // Tables only grow: what they allocated stays theirs after their entries are freed.
    debug_assert!(table.capacity() >= capacity);
    TABLE_BYTES.fetch_add(
        super::table_bytes(table.capacity(), size_of::<Live>())
            - super::table_bytes(capacity, size_of::<Live>()),
        Relaxed,
    );
}

thread_local! {
    /// Whether this thread holds a stripe's lock while it may free memory: then what it frees is the
    /// profiler's own, and is not looked up (the lookup would wait for the lock it holds). `const`, without
    /// destructor: usable inside the allocator and during thread exit.
    static OWN_FREES: Cell<bool> = const { Cell::new(false) };
}

/// Marks the frees of this thread as the profiler's own (see [`frees_are_own`]) until dropped.
struct OwnFrees(bool);

impl OwnFrees {
    fn begin() -> OwnFrees {
        OwnFrees(OWN_FREES.try_with(|own| own.replace(true)).unwrap_or(true))
    }
}

impl Drop for OwnFrees {
    fn drop(&mut self) {
        let _ = OWN_FREES.try_with(|own| own.set(self.0));
    }
}

/// Whether the calling thread holds a stripe's lock (while it grows the stripe's table, or across a `fork`),
/// so that whatever it frees is the profiler's own memory, and must not be looked up in the table.
pub(crate) fn frees_are_own() -> bool {
    OWN_FREES.try_with(Cell::get).unwrap_or(false)
}

/// Sets or clears the filter bit of `slot`. The caller holds the slot's stripe lock, and a filter word's 64
/// slots all belong to that one stripe, so no other thread writes the word meanwhile: a plain load and store,
/// without a locked instruction, is enough.
#[inline]
fn set_filter_bit(slot: usize, set: bool) {
    debug_assert!(crate::lock::holds(Rank::LiveStripe));
    mark(&FILTER[slot / 64], slot % 64, set);
}

/// Sets or clears bit `bit` of the filter word `word`, whose writers all hold one lock.
#[inline]
fn mark(word: &impl Atomic<u64>, bit: usize, set: bool) {
    let bit = 1 << bit;
    let old = word.load(Relaxed);
    word.store(if set { old | bit } else { old & !bit }, Relaxed);
}

/// Removes `ptr`, whose slot [`candidate`] gave, if it is a live sampled allocation, inside the profiler
/// guard, before the memory is given back to the inner allocator. Calls `before` with its entry under the
/// stripe's lock before the entry leaves the table: what must change with the table, as a copy of the buckets
/// that reads this stripe sees it (the heap totals that a peak is measured by). Returns the entry and what
/// `before` returned.
#[inline(always)]
pub(crate) fn remove_candidate<R>(
    _: &Guard,
    Slot(slot): Slot,
    ptr: *mut u8,
    before: impl FnOnce(&LiveEntry) -> R,
) -> Option<(LiveEntry, R)> {
    debug_assert_eq!(slot, slot_of(ptr as usize));
    let ptr = ptr as usize;
    let hash = table_hash(slot);
    let stripe = stripe(slot);
    let mut table = stripe.table.lock();
    let Ok(found) = table.find_entry(hash, |live| live.ptr == ptr) else {
        bump(&stripe.false_positives, 1);
        return None;
    };
    let with = before(&found.get().entry);
    let (live, _) = found.remove();
    // Under the stripe lock, as in `insert`: the slot's last pointer clears its bit. An empty table (a
    // stripe's usual state when few sampled allocations are live) holds no other.
    if table.is_empty()
        || table
            .find(hash, |other| slot_of(other.ptr) == slot)
            .is_none()
    {
        set_filter_bit(slot, false);
    }
    bump(&stripe.live, 1u64.wrapping_neg());
    bump(&stripe.sampled_frees, 1);
    Some((live.entry, with))
}

/// Shows every live sampled allocation to `f`, one stripe at a time, each locked while `f` reads it, inside
/// the profiler guard. `f` must not allocate or free: a free from under a stripe's lock is taken for the
/// table's own (see [`frees_are_own`]).
pub(crate) fn for_each(_: &Guard, f: &mut dyn FnMut(&LiveEntry)) {
    for stripe in &LIVE {
        stripe.0.table.lock().iter().for_each(|live| f(&live.entry));
    }
}

/// Frees (and reallocations) of sampled allocations so far.
pub(crate) fn sampled_frees() -> u64 {
    sum(|stripe| &stripe.sampled_frees)
}

/// Frees of unsampled pointers whose filter slot was in use, so that they looked the pointer up in vain.
pub(crate) fn false_positives() -> u64 {
    sum(|stripe| &stripe.false_positives)
}

/// The locks of the table's stripes, for the `fork` handlers.
pub(crate) fn stripe_locks() -> impl Iterator<Item = &'static dyn AnyLock> {
    LIVE.iter().map(|stripe| &stripe.0.table as &dyn AnyLock)
}

/// Called by the `fork` handlers with every stripe's lock held (`true`) and before they are released
/// (`false`): meanwhile the forking thread frees nothing of the program's (it is in `fork`), and a free must
/// not wait for a stripe it holds.
pub(crate) fn holding_every_stripe(held: bool) {
    let _ = OWN_FREES.try_with(|own| own.set(held));
}

/// Bytes the live tables have allocated: their entries and spare capacity (they grow, and do not shrink).
pub(crate) fn table_bytes() -> usize {
    TABLE_BYTES.load(Relaxed)
}

static TABLE_BYTES: AtomicUsize = AtomicUsize::new(0);

/// The number of live sampled allocations.
pub(crate) fn live_count() -> usize {
    sum(|stripe| &stripe.live) as usize
}

fn sum(count: fn(&Stripe) -> &AtomicU64) -> u64 {
    LIVE.iter().fold(0u64, |sum, stripe| {
        sum.wrapping_add(count(&stripe.0).load(Relaxed))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `ptr` may be a live sampled allocation, by the filter.
    fn maybe_sampled(ptr: *mut u8) -> bool {
        candidate(ptr).is_some()
    }

    /// Removes `ptr` as the free of a candidate does, whatever the filter says.
    fn remove(guard: &Guard, ptr: *mut u8) -> Option<LiveEntry> {
        remove_candidate(guard, Slot(slot_of(ptr as usize)), ptr, |_| ()).map(|(entry, ())| entry)
    }

    fn entry() -> LiveEntry {
        LiveEntry {
            bucket: BucketId::OVERFLOW,
            weight: Weight {
                objects: 1,
                bytes: 1,
            },
            size: 1,
        }
    }

    /// Pointers (fake, 16-aligned, never dereferenced) that all share one filter slot.
    fn sharing_a_slot(count: usize, base: usize) -> Vec<usize> {
        let target = slot_of(base);
        (0..)
            .map(|i| base + 16 * i)
            .filter(|&ptr| slot_of(ptr) == target)
            .take(count)
            .collect()
    }

    #[test]
    fn a_slot_stays_marked_while_any_of_its_pointers_is_live() {
        // 40 pointers with one hash in the stripe's table: more than one 16-wide probe group.
        let ptrs = sharing_a_slot(40, 0x7000_0000_0000);
        let guard = Guard::inside();
        for &ptr in &ptrs {
            insert(&guard, ptr as *mut u8, entry());
        }
        for (i, &ptr) in ptrs.iter().enumerate() {
            assert!(maybe_sampled(ptr as *mut u8));
            assert!(remove(&guard, ptr as *mut u8).is_some());
            assert!(remove(&guard, ptr as *mut u8).is_none(), "removed twice");
            let others_live = i + 1 < ptrs.len();
            assert_eq!(maybe_sampled(ptr as *mut u8), others_live);
        }
    }

    #[test]
    fn a_pointer_inserted_twice_is_one_entry_and_a_second_pointer_of_its_slot_keeps_the_mark() {
        let ptrs = sharing_a_slot(2, 0x7100_0000_0000);
        let guard = Guard::inside();
        let mut second = entry();
        second.size = 2;
        insert(&guard, ptrs[0] as *mut u8, entry());
        insert(&guard, ptrs[0] as *mut u8, second);
        insert(&guard, ptrs[1] as *mut u8, entry());
        assert_eq!(remove(&guard, ptrs[0] as *mut u8).map(|e| e.size), Some(2));
        assert!(remove(&guard, ptrs[0] as *mut u8).is_none(), "one entry");
        assert!(
            maybe_sampled(ptrs[0] as *mut u8),
            "the slot's other pointer is live"
        );
        assert!(remove(&guard, ptrs[1] as *mut u8).is_some());
        assert!(!maybe_sampled(ptrs[1] as *mut u8));
    }

    #[test]
    fn marks_change_one_bit_of_a_word() {
        let word = AtomicU64::new(0b1001);
        mark(&word, 1, true);
        assert_eq!(word.load(Relaxed), 0b1011);
        mark(&word, 0, false);
        assert_eq!(word.load(Relaxed), 0b1010);
        mark(&word, 63, true);
        assert!(marked(&word, 63) && marked(&word, 3) && !marked(&word, 0));
        // Setting a set bit, or clearing a clear one, changes nothing.
        mark(&word, 3, true);
        mark(&word, 2, false);
        assert_eq!(word.load(Relaxed), 1 << 63 | 0b1010);
    }

    #[test]
    fn slots_are_in_range_and_table_hashes_tell_them_apart() {
        let mut state = 1u64;
        for _ in 0..10_000 {
            // Pointers all over the address space.
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let ptr = (state >> 16) as usize & !15;
            assert!(slot_of(ptr) < FILTER_SLOTS);
        }
        assert_eq!(
            slot_of(usize::MAX) >> SLOT_BITS,
            slot_of(usize::MAX & !0xff) >> SLOT_BITS
        );
        // A stripe's slots have distinct hashes in its table, spread over hashbrown's top bits.
        let hashes: std::collections::HashSet<u64> = (0..1 << SLOT_BITS).map(table_hash).collect();
        assert_eq!(hashes.len(), 1 << SLOT_BITS);
        let tops: std::collections::HashSet<u64> = (0..1 << SLOT_BITS)
            .map(|slot| table_hash(slot) >> 57)
            .collect();
        assert_eq!(tops.len(), 128);
    }

    #[test]
    fn pointers_of_a_region_share_a_stripe_and_slots_spread_within_it() {
        let region = 0x7f12_3440_0000usize;
        let slots: Vec<usize> = (0..4096).map(|i| slot_of(region + 1024 * i)).collect();
        let stripe_of = |slot: usize| slot >> SLOT_BITS;
        assert!(slots.iter().all(|&s| stripe_of(s) == stripe_of(slots[0])));
        // 4,096 pointers 1 KiB apart over the stripe's 4,096 slots: as randomly placed, 4,096·(1 − 1/e) ≈
        // 2,589 slots in use, with a standard deviation near 20.
        let mut distinct = slots.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert!(distinct.len() > 2_400, "{} distinct slots", distinct.len());
        // Regions land on every stripe.
        let mut stripes: Vec<usize> = (0..1024)
            .map(|r| stripe_of(slot_of(r << REGION_BITS)))
            .collect();
        stripes.sort_unstable();
        stripes.dedup();
        assert_eq!(stripes.len(), STRIPES);
        // Regions at aligned bases far apart, as an allocator with one region per size class lays them out
        // (AddressSanitizer's: 2^36 bytes apart), do not share one stripe: 16 such bases hashed into 64
        // stripes leave at least 10 distinct ones (random placement: 14.3 on average).
        let mut class_stripes: Vec<usize> = (1..=16usize)
            .map(|class| stripe_of(slot_of(0x6000_0000_0000 + (class << 36))))
            .collect();
        class_stripes.sort_unstable();
        class_stripes.dedup();
        assert!(class_stripes.len() >= 10, "{class_stripes:?}");
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
                    let guard = Guard::inside();
                    for _ in 0..200_000 {
                        insert(&guard, ptr as *mut u8, entry());
                        assert!(
                            maybe_sampled(ptr as *mut u8),
                            "a live pointer looks unsampled"
                        );
                        assert!(remove(&guard, ptr as *mut u8).is_some());
                    }
                });
            }
        });
        assert!(!maybe_sampled(ptrs[0] as *mut u8));
    }
}

#[cfg(all(test, loom))]
mod loom_models {
    use super::*;
    use crate::sync::Ordering::{Acquire, Release};
    use crate::sync::model::{self, Arc, AtomicBool, AtomicU64, Mutex, thread};

    /// One stripe with two slots in one filter word: its lock guards how many live sampled pointers each
    /// slot has, as the stripe's table does.
    struct Stripe {
        word: AtomicU64,
        live: Mutex<[u32; 2]>,
    }

    impl Stripe {
        fn insert(&self, slot: usize) {
            let mut live = self.live.lock().unwrap();
            live[slot] += 1;
            if live[slot] == 1 {
                mark(&self.word, slot, true);
            }
        }

        /// Whether the free found the pointer sampled: the filter's check first, as the free of a pointer with
        /// the bits of a sampled one does.
        fn free(&self, slot: usize) -> bool {
            if !marked(&self.word, slot) {
                return false;
            }
            let mut live = self.live.lock().unwrap();
            live[slot] -= 1;
            if live[slot] == 0 {
                mark(&self.word, slot, false);
            }
            true
        }
    }

    /// A sampled pointer handed by its allocating thread to another that frees it, while a third thread
    /// allocates and frees sampled pointers of the same slot and of the other slot of the word: the free
    /// always finds the pointer sampled, and no bit is left set.
    #[test]
    fn loom_no_sampled_free_is_lost() {
        model::model(|| {
            let stripe = Arc::new(Stripe {
                word: AtomicU64::new(0),
                live: Mutex::new([0; 2]),
            });
            let handed = Arc::new(AtomicBool::new(false));
            let allocating = {
                let (stripe, handed) = (stripe.clone(), handed.clone());
                thread::spawn(move || {
                    stripe.insert(0);
                    // The program hands the pointer over (a channel, say).
                    handed.store(true, Release);
                })
            };
            let other = {
                let stripe = stripe.clone();
                thread::spawn(move || {
                    stripe.insert(1);
                    stripe.insert(0);
                    assert!(stripe.free(0));
                    assert!(stripe.free(1));
                })
            };
            let freed = handed.load(Acquire);
            if freed {
                assert!(stripe.free(0), "the free of a sampled pointer was missed");
            }
            allocating.join().unwrap();
            other.join().unwrap();
            if !freed {
                assert!(stripe.free(0));
            }
            assert_eq!(stripe.word.load(Relaxed), 0, "a bit is left set");
        });
    }
}
