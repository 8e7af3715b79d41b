//! Running estimates for the whole heap: bytes and objects allocated since the start and still in use, summed
//! over every sampled allocation with the weights of its bucket, rounded to 1/256 object and 2^-16 byte.
//! Updated on the slow paths only (a sampled allocation, the free of a sampled allocation), in the updating
//! thread's shard (see [`crate::shard`]), but for the in-use bytes, which the peak tracker compares on every
//! sample and so are kept in one place; read by [`crate::stats`] with a few relaxed loads per shard.

use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::shard::{self, Padded, SHARDS};
use crate::table::Weight;

/// Objects are summed in 1/256ths (a sample's 1/p rounded to that; 2^56 objects before a sum wraps), bytes in
/// 2^-16 bytes (size/p rounded to that), close enough to the buckets' 2^-32 that the in-use bytes the peak
/// tracker compares differ from the bucket counts by at most N·2^-17 bytes over N live samples (8 bytes at a
/// million). In-use bytes read up to 2^47 (128 TiB). A free subtracts the same rounded figures its
/// allocation added, so in-use sums return to exactly zero, and allocated and in-use bytes grow alike.
/// Each update is one atomic addition per sum.
const OBJECT_FRACTION_BITS: u32 = 8;
const BYTE_FRACTION_BITS: u32 = 16;

/// A weight as the sums count it: objects in 1/256ths, bytes in 2^-16.
struct Rounded {
    objects: u64,
    byte_units: u64,
}

#[inline]
fn rounded(weight: Weight) -> Rounded {
    // From the weight's 2^-32 units.
    Rounded {
        objects: round_weight(weight.objects, 32 - OBJECT_FRACTION_BITS),
        byte_units: round_weight(weight.bytes, 32 - BYTE_FRACTION_BITS),
    }
}

/// `units` with their low `bits` bits rounded off (to nearest), saturating at `u64::MAX`.
fn round(units: u128, bits: u32) -> u64 {
    u64::try_from(units.saturating_add(1 << (bits - 1)) >> bits).unwrap_or(u64::MAX)
}

/// A sample's weight in `units` with their low `bits` bits rounded off (to nearest), modulo 2^64 as the sums
/// it goes into are: a weight past 2^64 of the sums' units (2^48 bytes) wraps, alike in the allocation and in
/// its free.
#[inline]
fn round_weight(units: u128, bits: u32) -> u64 {
    (units.wrapping_add(1 << (bits - 1)) >> bits) as u64
}

/// A sum of byte units that grows (the freed bytes, but for the rare free taken back), wider than a word:
/// `low` takes every update and `high` counts its wraps, so an update is one atomic addition but once in 2^64
/// units (2^48 bytes). For an instant around such a wrap a read may pair the words of before and after it,
/// and be 2^48 bytes off.
struct Wide {
    low: AtomicU64,
    high: AtomicU64,
}

impl Wide {
    const fn new() -> Wide {
        Wide {
            low: AtomicU64::new(0),
            high: AtomicU64::new(0),
        }
    }

    #[inline]
    fn add(&self, units: u64) {
        if self
            .low
            .fetch_add(units, Relaxed)
            .checked_add(units)
            .is_none()
        {
            self.high.fetch_add(1, Relaxed);
        }
    }

    #[inline]
    fn sub(&self, units: u64) {
        if self.low.fetch_sub(units, Relaxed) < units {
            self.high.fetch_sub(1, Relaxed);
        }
    }

    fn get(&self) -> u128 {
        loop {
            let high = self.high.load(Relaxed);
            let low = self.low.load(Relaxed);
            if self.high.load(Relaxed) == high {
                return u128::from(high) << 64 | u128::from(low);
            }
        }
    }
}

/// One shard's sums. A shard's freed objects may exceed its allocated ones (frees on another thread than
/// the allocations): only the totals over the shards are meaningful, and they are taken modulo 2^64.
/// Allocated bytes are not summed: they are the in-use bytes plus the freed ones, each rounded, so that
/// while nothing is freed both grow by exactly the same whole bytes.
struct Sums {
    alloc_objects: AtomicU64,
    freed_objects: AtomicU64,
    freed_bytes: Wide,
}

static SUMS: [Padded<Sums>; SHARDS] = [const {
    Padded(Sums {
        alloc_objects: AtomicU64::new(0),
        freed_objects: AtomicU64::new(0),
        freed_bytes: Wide::new(),
    })
}; SHARDS];

/// The estimated in-use bytes, in 2^-16 bytes, in one place: the figure the peak tracker compares on every
/// sample.
static INUSE_UNITS: AtomicU64 = AtomicU64::new(0);

/// Adds a sampled allocation; returns the estimated in-use bytes after it.
#[inline]
pub(crate) fn on_alloc(weight: Weight) -> u64 {
    let add = rounded(weight);
    own_sums().alloc_objects.fetch_add(add.objects, Relaxed);
    add_inuse(add.byte_units)
}

/// The sums of this thread's shard.
#[inline]
fn own_sums() -> &'static Sums {
    &SUMS[shard::index() % SHARDS].0
}

/// Adds `units` to the in-use bytes; returns the estimated in-use bytes after.
#[inline]
fn add_inuse(units: u64) -> u64 {
    inuse_bytes_of(INUSE_UNITS.fetch_add(units, Relaxed).wrapping_add(units))
}

/// Subtracts a freed sampled allocation; returns the estimated in-use bytes before it.
#[inline]
pub(crate) fn on_free(weight: Weight) -> u64 {
    let sub = rounded(weight);
    let sums = own_sums();
    sums.freed_objects.fetch_add(sub.objects, Relaxed);
    sums.freed_bytes.add(sub.byte_units);
    inuse_bytes_of(INUSE_UNITS.fetch_sub(sub.byte_units, Relaxed))
}

/// Takes back [`on_free`] of `weight`: a reallocation that failed after its block left the live table leaves
/// the sums as they were before it. Returns the estimated in-use bytes after.
pub(crate) fn undo_free(weight: Weight) -> u64 {
    let add = rounded(weight);
    let sums = own_sums();
    sums.freed_objects.fetch_sub(add.objects, Relaxed);
    sums.freed_bytes.sub(add.byte_units);
    add_inuse(add.byte_units)
}

/// The estimated in-use bytes.
pub(crate) fn inuse_bytes() -> u64 {
    inuse_bytes_of(INUSE_UNITS.load(Relaxed))
}

/// Bytes, rounded, of a sum in 2^-16 bytes; a sum below zero for an instant (updates in flight on other
/// threads), in two's complement, reads as 0.
#[inline]
fn inuse_bytes_of(units: u64) -> u64 {
    // Below 2^63 units: the rounding cannot overflow.
    (clamp(units) + (1 << (BYTE_FRACTION_BITS - 1))) >> BYTE_FRACTION_BITS
}

/// A figure below zero for an instant, in two's complement: read as 0.
#[inline]
fn clamp(figure: u64) -> u64 {
    if figure > i64::MAX as u64 { 0 } else { figure }
}

/// Whole-heap estimates, in bytes and objects.
pub(crate) struct Totals {
    pub(crate) alloc_objects: u64,
    pub(crate) alloc_bytes: u64,
    pub(crate) inuse_objects: u64,
    pub(crate) inuse_bytes: u64,
}

pub(crate) fn totals() -> Totals {
    let total = |sum: fn(&Sums) -> &AtomicU64| {
        SUMS.iter().fold(0u64, |total, shard| {
            total.wrapping_add(sum(&shard.0).load(Relaxed))
        })
    };
    let alloc_objects = total(|s| &s.alloc_objects);
    // Freed objects are read after allocated ones: a free counted meanwhile can only lower the figure, and
    // one below zero for an instant reads as 0.
    let freed_objects = total(|s| &s.freed_objects);
    let freed_byte_units: u128 = SUMS.iter().map(|shard| shard.0.freed_bytes.get()).sum();
    let inuse_objects = round(
        u128::from(clamp(alloc_objects.wrapping_sub(freed_objects))),
        OBJECT_FRACTION_BITS,
    );
    let inuse_bytes = inuse_bytes();
    // Allocated = in use + freed, each rounded: while nothing is freed, both grow alike.
    Totals {
        alloc_objects: inuse_objects
            .saturating_add(round(u128::from(freed_objects), OBJECT_FRACTION_BITS)),
        alloc_bytes: inuse_bytes.saturating_add(round(freed_byte_units, BYTE_FRACTION_BITS)),
        inuse_objects,
        inuse_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::UNITS;

    fn weight(objects: f64, bytes: f64) -> Weight {
        Weight {
            objects: (objects * UNITS) as u128,
            bytes: (bytes * UNITS) as u128,
        }
    }

    #[test]
    fn weights_round_to_the_nearest_unit() {
        let r = rounded(weight(1.0, 48.0));
        assert_eq!((r.objects, r.byte_units), (256, 48 << 16));
        // 1.582 objects → 405 / 256 (404.99 rounds up).
        let r = rounded(weight(1.582, 2.5));
        assert_eq!((r.objects, r.byte_units), (405, 5 << 15));
        let r = rounded(weight(1.0 / 1024.0, 1.0 / 200_000.0));
        assert_eq!((r.objects, r.byte_units), (0, 0));
    }

    #[test]
    fn wide_sums_carry_into_the_high_word() {
        let sum = Wide::new();
        sum.add(u64::MAX - 5);
        sum.add(10);
        assert_eq!(sum.get(), u128::from(u64::MAX) + 5);
        sum.add(u64::MAX);
        assert_eq!(sum.get(), 2 * u128::from(u64::MAX) + 5);
    }

    #[test]
    fn a_sum_taken_back_borrows_from_the_high_word() {
        let sum = Wide::new();
        sum.add(u64::MAX - 5);
        sum.add(10);
        sum.sub(10);
        assert_eq!(sum.get(), u128::from(u64::MAX) - 5);
        sum.add(7);
        sum.sub(3);
        assert_eq!(sum.get(), u128::from(u64::MAX) - 1);
    }

    #[test]
    fn in_use_objects_return_to_zero_whichever_shard_frees() {
        // One shard allocated what another freed (an allocation and its free on two threads).
        let (a, b) = (
            Sums {
                alloc_objects: AtomicU64::new(0),
                freed_objects: AtomicU64::new(0),
                freed_bytes: Wide::new(),
            },
            Sums {
                alloc_objects: AtomicU64::new(0),
                freed_objects: AtomicU64::new(0),
                freed_bytes: Wide::new(),
            },
        );
        let objects = rounded(weight(3.7, 100.0)).objects;
        a.alloc_objects.fetch_add(objects, Relaxed);
        a.alloc_objects.fetch_add(objects, Relaxed);
        b.freed_objects.fetch_add(objects, Relaxed);
        let inuse = |a: &Sums, b: &Sums| {
            let alloc = a
                .alloc_objects
                .load(Relaxed)
                .wrapping_add(b.alloc_objects.load(Relaxed));
            let freed = a
                .freed_objects
                .load(Relaxed)
                .wrapping_add(b.freed_objects.load(Relaxed));
            alloc.wrapping_sub(freed)
        };
        assert_eq!(inuse(&a, &b), objects);
        b.freed_objects.fetch_add(objects, Relaxed);
        assert_eq!(inuse(&a, &b), 0);
    }
}
