//! Running estimates for the whole heap: bytes and objects allocated since the start and still in use, summed
//! over every sampled allocation with the same weights as its bucket. Updated on the slow paths only (a
//! sampled allocation, the free of a sampled allocation), in the updating thread's shard (see
//! [`crate::shard`]), but for the in-use bytes, which the peak tracker compares on every sample and so are
//! kept in one place; read by [`crate::stats`] with a few relaxed loads per shard.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

use crate::shard::{self, Padded, SHARDS};
use crate::table::Weight;

/// A sum of weights kept exactly without a lock: whole units in `whole`, the fraction (2^-32 units, as
/// weights) in `fraction`, with the carry (or borrow) of the fraction applied to `whole` by the update that
/// wraps it. Adding and then subtracting the same weights returns both words to their start, so in-use sums
/// return to exactly zero. A shard's sum may go below zero (a free on another thread than the allocation),
/// in two's complement: only the total over the shards is meaningful.
struct Sum {
    whole: AtomicU64,
    fraction: AtomicU32,
}

impl Sum {
    const fn new() -> Sum {
        Sum {
            whole: AtomicU64::new(0),
            fraction: AtomicU32::new(0),
        }
    }

    /// Adds `units` (2^-32 units); returns the whole part after the addition.
    fn add(&self, units: u128) -> u64 {
        let (whole, fraction) = split(units);
        let carry = u64::from(
            self.fraction
                .fetch_add(fraction, Relaxed)
                .checked_add(fraction)
                .is_none(),
        );
        let delta = whole.wrapping_add(carry);
        self.whole.fetch_add(delta, Relaxed).wrapping_add(delta)
    }

    /// Subtracts `units` (2^-32 units); returns the whole part before the subtraction.
    fn sub(&self, units: u128) -> u64 {
        let (whole, fraction) = split(units);
        let borrow = u64::from(self.fraction.fetch_sub(fraction, Relaxed) < fraction);
        self.whole.fetch_sub(whole.wrapping_add(borrow), Relaxed)
    }

    /// The sum in 2^-32 units, modulo 2^96.
    fn raw(&self) -> u128 {
        u128::from(self.whole.load(Relaxed)) << 32 | u128::from(self.fraction.load(Relaxed))
    }
}

/// The whole part of a total of [`Sum::raw`] values: a total below zero (for an instant, with updates in
/// flight) reads as 0.
fn whole_of(raw_total: u128) -> u64 {
    let total = raw_total & ((1 << 96) - 1);
    if total >> 95 == 1 {
        0
    } else {
        u64::try_from(total >> 32).unwrap_or(u64::MAX)
    }
}

fn split(units: u128) -> (u64, u32) {
    (u64::try_from(units >> 32).unwrap_or(u64::MAX), units as u32)
}

/// One shard's sums.
struct Sums {
    alloc_objects: Sum,
    alloc_bytes: Sum,
    inuse_objects: Sum,
}

static SUMS: [Padded<Sums>; SHARDS] = [const {
    Padded(Sums {
        alloc_objects: Sum::new(),
        alloc_bytes: Sum::new(),
        inuse_objects: Sum::new(),
    })
}; SHARDS];

/// The estimated in-use bytes, in one place: the figure the peak tracker compares on every sample.
static INUSE_BYTES: Sum = Sum::new();

/// Adds a sampled allocation; returns the estimated in-use bytes after it.
pub(crate) fn on_alloc(weight: Weight) -> u64 {
    let sums = &SUMS[shard::index()].0;
    sums.alloc_objects.add(weight.objects);
    sums.alloc_bytes.add(weight.bytes);
    sums.inuse_objects.add(weight.objects);
    clamp(INUSE_BYTES.add(weight.bytes))
}

/// Subtracts a freed sampled allocation; returns the estimated in-use bytes before it.
pub(crate) fn on_free(weight: Weight) -> u64 {
    SUMS[shard::index()].0.inuse_objects.sub(weight.objects);
    clamp(INUSE_BYTES.sub(weight.bytes))
}

/// The estimated in-use bytes.
pub(crate) fn inuse_bytes() -> u64 {
    clamp(INUSE_BYTES.whole.load(Relaxed))
}

/// A figure below zero for an instant (updates in flight on other threads), in two's complement: read as 0.
fn clamp(bytes: u64) -> u64 {
    if bytes > i64::MAX as u64 { 0 } else { bytes }
}

/// Whole-heap estimates, in bytes and objects.
pub(crate) struct Totals {
    pub(crate) alloc_objects: u64,
    pub(crate) alloc_bytes: u64,
    pub(crate) inuse_objects: u64,
    pub(crate) inuse_bytes: u64,
}

pub(crate) fn totals() -> Totals {
    let total = |sum: fn(&Sums) -> &Sum| {
        whole_of(SUMS.iter().fold(0u128, |total, shard| {
            total.wrapping_add(sum(&shard.0).raw())
        }))
    };
    Totals {
        alloc_objects: total(|s| &s.alloc_objects),
        alloc_bytes: total(|s| &s.alloc_bytes),
        inuse_objects: total(|s| &s.inuse_objects),
        inuse_bytes: inuse_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_carry_and_borrow_exactly() {
        let sum = Sum::new();
        // 2.75 units, four times: 11 whole, fraction back to 0.
        let w = (2u128 << 32) | (3 << 30);
        for _ in 0..4 {
            sum.add(w);
        }
        assert_eq!(sum.raw(), 11 << 32);
        for _ in 0..3 {
            sum.sub(w);
        }
        assert_eq!(sum.raw(), (2 << 32) | (3 << 30));
        sum.sub(w);
        assert_eq!(
            (sum.whole.load(Relaxed), sum.fraction.load(Relaxed)),
            (0, 0)
        );
    }

    #[test]
    fn totals_over_shards_below_zero_cancel() {
        // One shard added what another subtracted (an allocation and its free on two threads).
        let (a, b) = (Sum::new(), Sum::new());
        let w = (5u128 << 32) | (1 << 31);
        a.add(w);
        a.add(w);
        b.sub(w);
        assert_eq!(whole_of(a.raw().wrapping_add(b.raw())), 5);
        b.sub(w);
        assert_eq!(whole_of(a.raw().wrapping_add(b.raw())), 0);
        // A total below zero, for an instant, reads as 0.
        b.sub(1 << 32);
        assert_eq!(whole_of(a.raw().wrapping_add(b.raw())), 0);
    }
}
