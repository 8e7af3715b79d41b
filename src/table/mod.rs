//! The profiler's tables: buckets of counts keyed by stack, and the sampled allocations still live.
//!
//! Locks are striped so that threads sampling different stacks or freeing different pointers rarely meet.
//! No function here holds a lock of one table while taking a lock of the other, and nothing here is called
//! outside the profiler guard, so memory the tables allocate is never itself sampled.

pub(crate) mod buckets;
pub(crate) mod live;
pub(crate) mod peak;

use crate::lock::{Lock, Rank};

/// A hasher for the tables' keys, single machine words (pointers, stack hashes): one multiply, no SipHash
/// rounds. The keys are not chosen by an adversary.
#[derive(Default)]
pub(crate) struct WordHasher(u64);

impl core::hash::Hasher for WordHasher {
    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 29)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

/// Bytes of the table that a hash map (or set) with `capacity` (its [`std::collections::HashMap::capacity`])
/// of entries of `entry` bytes has allocated: hashbrown's buckets, one control byte per bucket and a group
/// of 16 more. Buckets are a power of two, of which 7/8 are usable (all but one below 8).
pub(crate) fn table_bytes(capacity: usize, entry: usize) -> usize {
    let buckets = match capacity {
        0 => return 0,
        1..=3 => 4,
        4..=7 => 8,
        _ => (capacity / 7 * 8).next_power_of_two(),
    };
    buckets * (entry + 1) + 16
}

/// [`table_bytes`] of a hash map.
pub(crate) fn hash_map_bytes<K, V, S>(map: &std::collections::HashMap<K, V, S>) -> usize {
    table_bytes(map.capacity(), size_of::<(K, V)>())
}

/// Adds `delta` (wrapping) to a count that only the holder of its stripe's lock changes, and that is read
/// without the lock: a plain load and store, no locked instruction.
#[inline]
fn bump(count: &core::sync::atomic::AtomicU64, delta: u64) {
    use core::sync::atomic::Ordering::Relaxed;
    debug_assert!(
        crate::lock::holds(Rank::BucketStripe) || crate::lock::holds(Rank::LiveStripe),
        "a stripe's count changed without its lock"
    );
    count.store(count.load(Relaxed).wrapping_add(delta), Relaxed);
}

/// The bucket a sampled allocation was added to (see [`buckets`]), as its live entry keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BucketId(u32);

impl BucketId {
    pub(crate) const OVERFLOW: BucketId = BucketId(u32::MAX);
    pub(super) const STRIPE_BITS: u32 = STRIPES.trailing_zeros();

    pub(super) fn new(stripe: usize, index: usize) -> BucketId {
        debug_assert!(stripe < STRIPES && index < (u32::MAX >> Self::STRIPE_BITS) as usize);
        BucketId(((index as u32) << Self::STRIPE_BITS) | stripe as u32)
    }

    pub(super) fn stripe(self) -> usize {
        (self.0 & (STRIPES as u32 - 1)) as usize
    }

    pub(super) fn index(self) -> usize {
        (self.0 >> Self::STRIPE_BITS) as usize
    }
}

/// Number of lock stripes of each table.
const STRIPES: usize = 64;

/// Fixed-point units per object and per byte in counts. Weights 1/p and size/p are fractional; rounding
/// each sample's weight to whole units would bias small allocations at small rates (a 1-byte allocation at
/// rate 2 weighs 2.54 bytes, not 3), and in-use counts must return to exactly zero when every sampled
/// allocation is freed, so weights are kept to 2^-32 and added and subtracted as integers.
pub(crate) const UNITS: f64 = (1u64 << 32) as f64;

/// What one sampled allocation adds to its bucket, and subtracts again when it is freed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Weight {
    /// 1/p objects, in [`UNITS`].
    pub(crate) objects: u128,
    /// size/p bytes, in [`UNITS`].
    pub(crate) bytes: u128,
}

impl Weight {
    /// The weight of a sampled allocation of `size` bytes taken at `rate` (see [`crate::sampler`]).
    fn computed(size: usize, rate: usize) -> Weight {
        let (objects, bytes) = crate::sampler::weights(size, rate);
        Weight {
            objects: to_units(objects),
            bytes: to_units(bytes),
        }
    }

    /// What this sample, an allocation of `size` bytes, adds to the estimated variance of its bucket's
    /// estimates: `(1 − p)/p²` objects² and `s²·(1 − p)/p²` bytes², in [`UNITS`]. Summed over a bucket's
    /// sampled allocations, these are unbiased estimates of the variance of the bucket's Horvitz–Thompson
    /// sums, allocations being sampled independently (the gaps between samples are exponential: a Poisson
    /// process along the bytes allocated). Computed from the weight and the size alone, as
    /// `(1/p)·(1/p − 1)` and `(s/p)·(s/p − s)`, in integers where the products fit (a zero-size allocation
    /// weighs as a 1-byte one, see [`crate::sampler::weights`]), so that a free subtracts exactly what its
    /// allocation added. Zero when p = 1 (exact mode, or an allocation far above the rate).
    pub(crate) fn variance(self, size: usize) -> Variance {
        const ONE: u128 = 1 << 32;
        if self.objects <= ONE {
            return Variance::default();
        }
        let size = (size.max(1) as u128) << 32;
        Variance {
            objects: product(self.objects, self.objects - ONE),
            bytes: product(self.bytes, self.bytes.saturating_sub(size)),
        }
    }
}

/// A sampled allocation as its bucket counts it: its size in bytes, its weight, and the variance it adds
/// (see [`Weight::variance`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Sample {
    pub(crate) size: usize,
    pub(crate) weight: Weight,
    pub(crate) variance: Variance,
}

impl Sample {
    /// A sampled allocation of `size` bytes taken at `rate` (see [`crate::sampler`]). The last sample of
    /// each thread is kept with its rate: a thread that samples one size again (a buffer allocated in a loop)
    /// reuses it, where computing it takes an `expm1`, two divisions and two products.
    #[inline]
    pub(crate) fn of(size: usize, rate: usize) -> Sample {
        // Rate 0 samples nothing (the probe of the allocation path is not recorded), and marks the empty
        // memo.
        debug_assert!(rate != 0);
        match LAST_SAMPLE.try_with(|last| (last.rate.get() == rate).then(|| last.sample.get())) {
            Ok(Some(sample)) if sample.size == size => sample,
            _ => Sample::remember(size, rate),
        }
    }

    /// [`Sample::of`] computed, and kept as the thread's last.
    #[inline(never)]
    fn remember(size: usize, rate: usize) -> Sample {
        let sample = Sample::computed(size, rate);
        let _ = LAST_SAMPLE.try_with(|last| {
            last.rate.set(rate);
            last.sample.set(sample);
        });
        sample
    }

    fn computed(size: usize, rate: usize) -> Sample {
        let weight = Weight::computed(size, rate);
        Sample {
            size,
            weight,
            variance: weight.variance(size),
        }
    }
}

/// A thread's last [`Sample::of`] and its rate (0 for none), in two cells, so that the rate is compared before
/// the sample is read.
struct LastSample {
    rate: core::cell::Cell<usize>,
    sample: core::cell::Cell<Sample>,
}

thread_local! {
    /// This thread's last [`Sample::of`]. `const`, without destructor: usable inside the allocator and
    /// during thread exit.
    static LAST_SAMPLE: LastSample = const {
        LastSample {
            rate: core::cell::Cell::new(0),
            sample: core::cell::Cell::new(Sample {
                size: 0,
                weight: Weight {
                    objects: 0,
                    bytes: 0,
                },
                variance: Variance {
                    objects: 0,
                    bytes: 0,
                },
            }),
        }
    };
}

/// `a · b` of two figures in [`UNITS`], in [`UNITS`], rounded to nearest: one multiplication when both are
/// below 2^64 units (2^32 objects or bytes), as the weights of almost every sample are.
fn product(a: u128, b: u128) -> u128 {
    if (a | b) >> 64 == 0 {
        let p = a * b;
        (p >> 32) + (p >> 31 & 1)
    } else {
        to_units((a as f64 / UNITS) * (b as f64 / UNITS))
    }
}

/// The estimated variance one sampled allocation adds to its bucket (see [`Weight::variance`]): objects² and
/// bytes², in [`UNITS`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Variance {
    pub(crate) objects: u128,
    pub(crate) bytes: u128,
}

/// `value` (finite, not negative) in [`UNITS`], rounded to nearest. Below 2^63 units, as almost every weight
/// is, the conversion is one instruction; `f64::round` and conversion to `u128` are library calls.
fn to_units(value: f64) -> u128 {
    debug_assert!(value.is_finite() && value >= 0.0, "a weight of {value}");
    let units = value * UNITS + 0.5;
    if units < (1u64 << 63) as f64 {
        u128::from(units as u64)
    } else {
        // `as` saturates.
        units as u128
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_convert_to_units_rounded_on_both_sides_of_2_63() {
        assert_eq!(to_units(1.0), 1 << 32);
        assert_eq!(to_units(0.75), 3 << 30);
        // 2.54 · 2^32 = 10,909,216,931.84: rounds up.
        assert_eq!(to_units(2.54), 10_909_216_932);
        // Above 2^63 units (2^31 bytes and more), through the wide conversion.
        assert_eq!(to_units((1u64 << 40) as f64), 1 << 72);
        assert_eq!(to_units(f64::MAX), u128::MAX);
        assert_eq!(to_units(0.0), 0);
    }

    #[test]
    fn a_threads_remembered_sample_is_the_sample_of_its_size_and_rate() {
        // Alternating sizes and rates, each twice in a row: the memo answers the second of each pair, and
        // must answer what a computation would.
        for (size, rate) in [
            (4096, 1 << 19),
            (4096, 1 << 12),
            (4097, 1 << 12),
            (1, 1),
            (4096, 1),
        ] {
            assert_eq!(Sample::of(size, rate), Sample::computed(size, rate));
            assert_eq!(Sample::of(size, rate), Sample::computed(size, rate));
        }
    }

    #[test]
    fn a_samples_variance_is_one_minus_p_over_p_squared() {
        // Exact mode, and an allocation far above the rate: p = 1, no variance.
        assert_eq!(
            Weight::computed(4096, 1).variance(4096),
            Variance::default()
        );
        assert_eq!(
            Weight::computed(64 << 20, 64 << 10).variance(64 << 20),
            Variance::default()
        );
        // size = rate: p = 1 − 1/e.
        let w = Weight::computed(1 << 19, 1 << 19);
        let v = w.variance(1 << 19);
        let p = 1.0 - (-1.0f64).exp();
        let close = |units: u128, expected: f64| {
            let value = units as f64 / UNITS;
            assert!(
                (value - expected).abs() <= expected * 1e-9,
                "{value} vs {expected}"
            );
        };
        close(v.objects, (1.0 - p) / (p * p));
        close(
            v.bytes,
            (1u64 << 19) as f64 * (1u64 << 19) as f64 * (1.0 - p) / (p * p),
        );
        // The same weight gives the same variance: a free subtracts exactly what its allocation added.
        assert_eq!(Weight::computed(1 << 19, 1 << 19).variance(1 << 19), v);
    }

    #[test]
    fn table_bytes_follow_hashbrowns_buckets() {
        assert_eq!(table_bytes(0, 8), 0);
        // Up to 3 entries in 4 buckets, 7 in 8, then 7/8 of a power of two.
        assert_eq!(table_bytes(3, 8), 4 * 9 + 16);
        assert_eq!(table_bytes(7, 8), 8 * 9 + 16);
        assert_eq!(table_bytes(14, 8), 16 * 9 + 16);
        assert_eq!(table_bytes(28, 8), 32 * 9 + 16);
        let mut map: std::collections::HashMap<u64, u64> = (0..100).map(|i| (i, i)).collect();
        map.shrink_to_fit();
        assert_eq!(hash_map_bytes(&map), table_bytes(map.capacity(), 16));
    }

    #[test]
    fn word_hashes_spread_neighbouring_words() {
        use core::hash::Hasher;
        let hash = |n: u64| {
            let mut h = WordHasher::default();
            h.write_u64(n);
            h.finish()
        };
        assert_eq!(hash(42), hash(42));
        // Consecutive and page-aligned words differ in their high bits, which hashbrown's groups use.
        let tops: std::collections::HashSet<u64> = (0..64)
            .flat_map(|i| [hash(i) >> 57, hash(i << 12) >> 57])
            .collect();
        assert!(tops.len() > 40, "{} distinct top bits", tops.len());
        let mut bytes = WordHasher::default();
        bytes.write(&[1, 2]);
        let mut words = WordHasher::default();
        words.write_u64(1);
        words.write_u64(2);
        assert_eq!(bytes.finish(), words.finish());
    }
}
