//! Running estimates for the whole heap: bytes and objects allocated since the start and still in use, summed
//! over every sampled allocation with the same weights as its bucket. Updated on the slow paths only (a
//! sampled allocation, the free of a sampled allocation); read by [`crate::stats`] with one relaxed load each,
//! and by the peak tracker.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

use crate::table::Weight;

/// A sum of weights kept exactly without a lock: whole units in `whole`, the fraction (2^-32 units, as
/// weights) in `fraction`, with the carry (or borrow) of the fraction applied to `whole` by the update that
/// wraps it. Adding and then subtracting the same weights returns both words to their start, so in-use sums
/// return to exactly zero; reading `whole` alone is off by less than one unit, plus updates in flight.
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

    /// Adds `units` (2^-32 units); returns the sum's whole part after the addition.
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

    /// Subtracts `units` (2^-32 units); returns the sum's whole part before the subtraction.
    fn sub(&self, units: u128) -> u64 {
        let (whole, fraction) = split(units);
        let borrow = u64::from(self.fraction.fetch_sub(fraction, Relaxed) < fraction);
        clamp(self.whole.fetch_sub(whole.wrapping_add(borrow), Relaxed))
    }

    /// The whole part. Updates in flight on other threads can make it dip below zero for an instant, in
    /// two's complement: read as 0.
    fn get(&self) -> u64 {
        clamp(self.whole.load(Relaxed))
    }
}

fn split(units: u128) -> (u64, u32) {
    (u64::try_from(units >> 32).unwrap_or(u64::MAX), units as u32)
}

fn clamp(whole: u64) -> u64 {
    if whole > i64::MAX as u64 { 0 } else { whole }
}

static ALLOC_OBJECTS: Sum = Sum::new();
static ALLOC_BYTES: Sum = Sum::new();
static INUSE_OBJECTS: Sum = Sum::new();
static INUSE_BYTES: Sum = Sum::new();

/// Adds a sampled allocation; returns the estimated in-use bytes after it.
pub(crate) fn on_alloc(weight: Weight) -> u64 {
    ALLOC_OBJECTS.add(weight.objects);
    ALLOC_BYTES.add(weight.bytes);
    INUSE_OBJECTS.add(weight.objects);
    clamp(INUSE_BYTES.add(weight.bytes))
}

/// Subtracts a freed sampled allocation; returns the estimated in-use bytes before it.
pub(crate) fn on_free(weight: Weight) -> u64 {
    INUSE_OBJECTS.sub(weight.objects);
    INUSE_BYTES.sub(weight.bytes)
}

/// The estimated in-use bytes.
pub(crate) fn inuse_bytes() -> u64 {
    INUSE_BYTES.get()
}

/// Whole-heap estimates, in bytes and objects.
pub(crate) struct Totals {
    pub(crate) alloc_objects: u64,
    pub(crate) alloc_bytes: u64,
    pub(crate) inuse_objects: u64,
    pub(crate) inuse_bytes: u64,
}

pub(crate) fn totals() -> Totals {
    Totals {
        alloc_objects: ALLOC_OBJECTS.get(),
        alloc_bytes: ALLOC_BYTES.get(),
        inuse_objects: INUSE_OBJECTS.get(),
        inuse_bytes: INUSE_BYTES.get(),
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
        let after: Vec<u64> = (0..4).map(|_| sum.add(w)).collect();
        assert_eq!(after, [2, 5, 8, 11]);
        assert_eq!(sum.fraction.load(Relaxed), 0);
        let before: Vec<u64> = (0..4).map(|_| sum.sub(w)).collect();
        assert_eq!(before, [11, 8, 5, 2]);
        assert_eq!((sum.get(), sum.fraction.load(Relaxed)), (0, 0));
        // A transient dip below zero reads as 0.
        sum.sub(1 << 32);
        assert_eq!(sum.get(), 0);
        sum.add(1 << 32);
        assert_eq!(
            (sum.whole.load(Relaxed), sum.fraction.load(Relaxed)),
            (0, 0)
        );
    }
}
