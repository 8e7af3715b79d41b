//! Buckets: cumulative and in-use counts per captured stack, in a lock-striped table.
//!
//! A stack's stripe is its hash plus an offset of the sampling thread's shard (see [`crate::shard`]), so
//! threads sampling the same stack (the workers of a pool) each count in a bucket of their own, under a lock
//! of their own: one shared bucket made two threads sampling one stack pay for each other's lock and counts
//! (a third more per sample, measured). Copies of the table merge the buckets of one stack and label set
//! back into one.

use core::cell::Cell;
use core::hash::BuildHasherDefault;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::collections::HashMap;

use super::live::{self, LiveEntry};
use super::{BucketId, Lock, Rank, STRIPES, Sample, Variance, Weight, WordHasher, bump};
use crate::labels::LabelSet;
use crate::lock::AnyLock;
use crate::sampler::Guard;
use crate::shard::{self, Padded, SHARDS};
use crate::stack::{Repeat, hash_frames};

/// Default cap on the number of buckets (distinct stacks), about 40 MiB of table at the default depth.
pub const DEFAULT_MAX_BUCKETS: usize = 65_536;

static MAX_BUCKETS: AtomicUsize = AtomicUsize::new(DEFAULT_MAX_BUCKETS);
static BUCKETS: AtomicUsize = AtomicUsize::new(0);
static TABLE_BYTES: AtomicUsize = AtomicUsize::new(0);
static OVERFLOW_SAMPLES: AtomicU64 = AtomicU64::new(0);

/// Sets the cap on the number of buckets. Once it is reached, sampled allocations from new stacks are charged
/// to a single overflow bucket (shown as `[bucket table full]` in profiles) and counted in
/// [`crate::Stats::overflow_samples`]: totals stay right, attribution of the excess is lost. Existing buckets
/// keep counting. Lowering the cap below the current count only stops growth. A bucket is a stack and label
/// set as counted by one group of threads: a stack sampled on many threads takes up to 16 buckets (merged
/// into one in profiles).
pub fn set_max_buckets(buckets: usize) {
    MAX_BUCKETS.store(buckets, Relaxed);
}

/// Counts of one bucket, in [`super::UNITS`] per object and per byte; all are estimates. Beside each space
/// and object count, the estimated variance of that estimate (in [`super::UNITS`] per object² and per
/// byte², see [`Weight::variance`]), and the sampled allocations behind it, moving with it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) alloc_objects: u128,
    pub(crate) alloc_space: u128,
    pub(crate) inuse_objects: u128,
    pub(crate) inuse_space: u128,
    pub(crate) alloc_objects_variance: u128,
    pub(crate) alloc_space_variance: u128,
    pub(crate) inuse_objects_variance: u128,
    pub(crate) inuse_space_variance: u128,
    /// Sampled allocations counted in `alloc_*`.
    pub(crate) alloc_samples: u64,
    /// Sampled allocations counted in `inuse_*`: those not freed yet.
    pub(crate) inuse_samples: u64,
    /// The size in bytes of every sampled allocation counted, while they all had one size: 0 before the
    /// first, [`MIXED_SIZES`] once a second size was sampled. Go's heap profile buckets are per size, and
    /// its samples carry that size as their `bytes` label; here a bucket is per stack and label set, and
    /// only a bucket of one size has a size to show (see [`Counts::block_size`]).
    pub(crate) size: u64,
}

/// [`Counts::size`] of a bucket that sampled allocations of more than one size.
pub(crate) const MIXED_SIZES: u64 = u64::MAX;

/// The size of a bucket that counts the allocations of two buckets of sizes `a` and `b` (see
/// [`Counts::size`]).
fn merged_size(a: u64, b: u64) -> u64 {
    match (a, b) {
        (0, size) | (size, 0) => size,
        (a, b) if a == b => a,
        _ => MIXED_SIZES,
    }
}

impl Counts {
    /// No allocation: what a new bucket starts from (`Default` is not `const`).
    pub(crate) const ZERO: Counts = Counts {
        alloc_objects: 0,
        alloc_space: 0,
        inuse_objects: 0,
        inuse_space: 0,
        alloc_objects_variance: 0,
        alloc_space_variance: 0,
        inuse_objects_variance: 0,
        inuse_space_variance: 0,
        alloc_samples: 0,
        inuse_samples: 0,
        size: 0,
    };

    /// Adds another bucket's counts, e.g. of a stack that trims to the same frames: independent estimates,
    /// so their variances add too.
    pub(crate) fn merge(&mut self, other: &Counts) {
        self.alloc_objects = self.alloc_objects.saturating_add(other.alloc_objects);
        self.alloc_space = self.alloc_space.saturating_add(other.alloc_space);
        self.inuse_objects = self.inuse_objects.saturating_add(other.inuse_objects);
        self.inuse_space = self.inuse_space.saturating_add(other.inuse_space);
        self.alloc_objects_variance = self
            .alloc_objects_variance
            .saturating_add(other.alloc_objects_variance);
        self.alloc_space_variance = self
            .alloc_space_variance
            .saturating_add(other.alloc_space_variance);
        self.inuse_objects_variance = self
            .inuse_objects_variance
            .saturating_add(other.inuse_objects_variance);
        self.inuse_space_variance = self
            .inuse_space_variance
            .saturating_add(other.inuse_space_variance);
        self.alloc_samples = self.alloc_samples.saturating_add(other.alloc_samples);
        self.inuse_samples = self.inuse_samples.saturating_add(other.inuse_samples);
        self.size = merged_size(self.size, other.size);
    }

    /// Subtracts the `alloc_*` counts, variances and samples of `earlier`, a copy of the same bucket taken
    /// before: what was allocated between the two copies (the in-use counts stay as they are now).
    pub(crate) fn subtract_allocated(&mut self, earlier: &Counts) {
        self.alloc_objects = self.alloc_objects.saturating_sub(earlier.alloc_objects);
        self.alloc_space = self.alloc_space.saturating_sub(earlier.alloc_space);
        self.alloc_objects_variance = self
            .alloc_objects_variance
            .saturating_sub(earlier.alloc_objects_variance);
        self.alloc_space_variance = self
            .alloc_space_variance
            .saturating_sub(earlier.alloc_space_variance);
        self.alloc_samples = self.alloc_samples.saturating_sub(earlier.alloc_samples);
    }

    /// One standard error of `alloc_space` and of `inuse_space`, in bytes: the square roots of their
    /// estimated variances.
    pub(crate) fn space_stderr(&self) -> (f64, f64) {
        let stderr = |variance: u128| (variance as f64 / super::UNITS).sqrt();
        (
            stderr(self.alloc_space_variance),
            stderr(self.inuse_space_variance),
        )
    }

    /// `[alloc_objects, alloc_space, inuse_objects, inuse_space]` in whole objects and bytes, rounded: the
    /// values of a pprof sample.
    pub(crate) fn values(&self) -> [i64; 4] {
        [
            self.alloc_objects,
            self.alloc_space,
            self.inuse_objects,
            self.inuse_space,
        ]
        .map(whole)
    }

    /// The size of the allocations counted, in bytes, if they all had one size (as a bucket of Go's heap
    /// profile has): `None` before any was sampled and once a second size was. Fixed for the life of a
    /// bucket once known, so that collectors that match the samples of successive profiles by their labels
    /// (Grafana Alloy's delta of `alloc_*`) find a bucket again; an average would drift with every sample.
    pub(crate) fn block_size(&self) -> Option<i64> {
        match self.size {
            0 | MIXED_SIZES => None,
            size => i64::try_from(size).ok(),
        }
    }
}

/// Sums over some sampled allocations, in [`super::UNITS`]: their weights, the variances they add (see
/// [`Weight::variance`]) and their number.
#[derive(Clone, Copy, Debug)]
struct Moments {
    objects: u128,
    space: u128,
    objects_variance: u128,
    space_variance: u128,
    samples: u64,
}

impl Moments {
    const ZERO: Moments = Moments {
        objects: 0,
        space: 0,
        objects_variance: 0,
        space_variance: 0,
        samples: 0,
    };

    /// Adds a sample of weight `w` and variance `v`. Wrapping: a sum reaches 2^128 units only past 2^96
    /// objects or bytes, and in-use figures, differences of two sums, are right modulo 2^128 anyway.
    fn add(&mut self, w: Weight, v: Variance) {
        self.objects = self.objects.wrapping_add(w.objects);
        self.space = self.space.wrapping_add(w.bytes);
        self.objects_variance = self.objects_variance.wrapping_add(v.objects);
        self.space_variance = self.space_variance.wrapping_add(v.bytes);
        self.samples = self.samples.wrapping_add(1);
    }
}

/// What a bucket keeps: sums over its sampled allocations, so that a sample adds to five sums and its free
/// touches no bucket. What is still in use is summed over the live table when a copy is taken (see
/// [`LiveSums`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sums {
    allocated: Moments,
    /// As [`Counts::size`].
    size: u64,
}

impl Sums {
    pub(crate) const ZERO: Sums = Sums {
        allocated: Moments::ZERO,
        size: 0,
    };

    /// Adds a sampled allocation.
    pub(crate) fn add(&mut self, sample: &Sample) {
        self.allocated.add(sample.weight, sample.variance);
        // Most samples of a bucket have its size: then nothing changes.
        if self.size != sample.size as u64 {
            self.size = merged_size(self.size, sample.size as u64);
        }
    }

    /// The counts: what was allocated, and of it, `inuse`, the sums over the sampled allocations still live.
    fn counts(&self, inuse: &Moments) -> Counts {
        let (a, f) = (&self.allocated, inuse);
        // The live allocations of a bucket are some of those it counted (see [`LiveSums::take`]).
        debug_assert!(f.samples <= a.samples, "more live samples than allocated");
        Counts {
            alloc_objects: a.objects,
            alloc_space: a.space,
            inuse_objects: f.objects,
            inuse_space: f.space,
            alloc_objects_variance: a.objects_variance,
            alloc_space_variance: a.space_variance,
            inuse_objects_variance: f.objects_variance,
            inuse_space_variance: f.space_variance,
            alloc_samples: a.samples,
            inuse_samples: f.samples,
            size: self.size,
        }
    }
}

/// The in-use sums of the buckets of some stripes, summed over the live table: a free then changes nothing but
/// the live table and the heap totals. Taken before those stripes' buckets are copied, so that every live
/// allocation it counts was added to its bucket already (a sample is added to its bucket before it enters the
/// live table): a bucket's in-use counts are always some of its allocated ones. A copy of the table takes
/// them for a few stripes at a time (see [`copy_stripes`]), so that they hold at most [`LIVE_SUMS_BYTES`].
pub(crate) struct LiveSums {
    /// The first stripe summed.
    from: usize,
    /// How many buckets each stripe had when the sums were taken: those summed.
    lens: [u32; STRIPES],
    /// The buckets of stripe `from`, then of stripe `from + 1`, …: stripe `from + i`'s are
    /// `sums[starts[i]..starts[i + 1]]`.
    sums: Vec<Moments>,
    starts: [u32; STRIPES + 1],
    overflow: Moments,
}

/// The most memory in-use sums take at once in a copy of the table (unless one stripe needs more): a few
/// stripes' buckets at a time, the live table read once for each few.
const LIVE_SUMS_BYTES: usize = 1 << 20;

impl LiveSums {
    /// Sums the live table's allocations in the buckets of `stripes`, and `plus`, a sampled allocation being
    /// freed that left it already; with `overflow`, those of the overflow bucket too. Inside the profiler
    /// guard; allocates before it takes the live table's locks.
    fn take(
        &mut self,
        guard: &Guard,
        stripes: core::ops::Range<usize>,
        plus: Option<&LiveEntry>,
        overflow: bool,
    ) {
        self.from = stripes.start;
        for (i, stripe) in stripes.clone().enumerate() {
            self.starts[i + 1] = self.starts[i] + self.lens[stripe];
        }
        self.sums.clear();
        self.sums
            .resize(self.starts[stripes.len()] as usize, Moments::ZERO);
        self.overflow = Moments::ZERO;
        let mut add = |entry: &LiveEntry| {
            let sums = if entry.bucket == BucketId::OVERFLOW {
                overflow.then_some(&mut self.overflow)
            } else if stripes.contains(&entry.bucket.stripe()) {
                let (stripe, index) = (entry.bucket.stripe(), entry.bucket.index());
                // A bucket added after the lengths were read: its allocation is newer than this copy.
                (index < self.lens[stripe] as usize)
                    .then(|| &mut self.sums[self.starts[stripe - self.from] as usize + index])
            } else {
                None
            };
            if let Some(sums) = sums {
                sums.add(entry.weight, entry.weight.variance(entry.size));
            }
        };
        live::for_each(guard, &mut add);
        if let Some(entry) = plus {
            add(entry);
        }
    }

    /// The in-use sums of bucket `index` of stripe `stripe`, one of those summed.
    fn of(&self, stripe: usize, index: usize) -> &Moments {
        if index < self.lens[stripe] as usize {
            &self.sums[self.starts[stripe - self.from] as usize + index]
        } else {
            &Moments::ZERO
        }
    }
}

/// Shows `each` every stripe of the table, in order, locked, with the in-use sums of its buckets (taken from
/// the live table, with `plus`, an allocation being freed that left it already), inside the profiler guard.
/// Returns the in-use sums of the overflow bucket.
fn copy_stripes(
    guard: &Guard,
    plus: Option<&LiveEntry>,
    each: &mut dyn FnMut(usize, &Stripe, &LiveSums),
) -> Moments {
    let mut live = LiveSums {
        from: 0,
        lens: [0; STRIPES],
        sums: Vec::new(),
        starts: [0; STRIPES + 1],
        overflow: Moments::ZERO,
    };
    for (len, stripe) in live.lens.iter_mut().zip(stripes()) {
        *len = stripe.lock().buckets.len() as u32;
    }
    let per_pass = LIVE_SUMS_BYTES / size_of::<Moments>();
    let mut overflow = None;
    let mut from = 0;
    while from < STRIPES {
        let mut to = from + 1;
        let mut buckets = live.lens[from] as usize;
        while to < STRIPES && buckets + live.lens[to] as usize <= per_pass {
            buckets += live.lens[to] as usize;
            to += 1;
        }
        live.take(guard, from..to, plus, overflow.is_none());
        overflow.get_or_insert(live.overflow);
        for (number, stripe) in stripes().enumerate().take(to).skip(from) {
            each(number, &stripe.lock(), &live);
        }
        from = to;
    }
    overflow.unwrap_or(Moments::ZERO)
}

/// The counts now of the buckets of `stripe`, number `number`, in order: their allocated sums, and their in-use
/// sums from `live`.
fn counts_now<'a>(
    stripe: &'a Stripe,
    number: usize,
    live: &'a LiveSums,
) -> impl Iterator<Item = Counts> + 'a {
    stripe
        .buckets
        .iter()
        .enumerate()
        .map(move |(i, b)| b.sums.counts(live.of(number, i)))
}

/// Fixed-point units to a whole number, rounded (saturating).
fn whole(units: u128) -> i64 {
    let rounded = units.saturating_add(1 << 31) >> 32;
    i64::try_from(rounded).unwrap_or(i64::MAX)
}

struct Bucket {
    frames: Box<[usize]>,
    truncated: bool,
    labels: LabelSet,
    /// Next bucket of this stripe with the same hash, or `u32::MAX`.
    next: u32,
    sums: Sums,
}

struct Stripe {
    /// Stack hash → index of the first bucket with that hash.
    index: HashMap<u64, u32, BuildHasherDefault<WordHasher>>,
    buckets: Vec<Bucket>,
}

/// A stripe and its count of sampled allocations, on cache lines of their own. The count changes only under
/// the lock (without a locked instruction) and is read without it.
struct StripeLine {
    stripe: Lock<Stripe>,
    samples: AtomicU64,
}

static TABLE: [Padded<StripeLine>; STRIPES] = [const {
    Padded(StripeLine {
        stripe: Lock::new(
            Rank::BucketStripe,
            Stripe {
                index: HashMap::with_hasher(BuildHasherDefault::new()),
                buckets: Vec::new(),
            },
        ),
        samples: AtomicU64::new(0),
    })
}; STRIPES];

fn stripes() -> impl Iterator<Item = &'static Lock<Stripe>> {
    TABLE.iter().map(|line| &line.0.stripe)
}

static OVERFLOW: Lock<Sums> = Lock::new(Rank::BucketOverflow, Sums::ZERO);

thread_local! {
    /// The bucket of this thread's last sample: the number of its capture (see [`Repeat`]; 0 for none), its
    /// labels, and the bucket. `const`, without destructor: usable inside the allocator and at thread exit.
    static LAST_BUCKET: Cell<(u64, LabelSet, BucketId)> =
        const { Cell::new((0, LabelSet::EMPTY, BucketId::OVERFLOW)) };
}

/// Adds `sample`, a sampled allocation, to the bucket of its stack (`frames`, innermost first, and
/// whether they were cut at the maximum depth; no frames for a stack not captured) and `labels`, creating the
/// bucket if needed. A stack that `repeat` says is the same as the thread's last one, under the same labels,
/// goes to the last one's bucket without being hashed or compared (see [`record_repeat`]).
/// Runs inside the profiler guard: it may allocate.
pub(crate) fn record_alloc(
    guard: &Guard,
    frames: &[usize],
    truncated: bool,
    repeat: Repeat,
    labels: LabelSet,
    sample: &Sample,
) -> BucketId {
    if let Some(id) = record_repeat(guard, frames, truncated, repeat, labels, sample) {
        return id;
    }
    let id = find_or_add(frames, truncated, labels, sample);
    remember_bucket(repeat, labels, id);
    id
}

/// Adds `sample`, a sampled allocation, to the bucket of the thread's last sample if `repeat` says its
/// stack is the same as that sample's and `labels` are the same; else returns `None`, having done nothing.
/// The stack's `frames` and `truncated` need not be written, as the bucket's are the same; in builds with
/// debug assertions they are, and are compared with the bucket's.
#[inline(always)]
pub(crate) fn record_repeat(
    _: &Guard,
    frames: &[usize],
    truncated: bool,
    repeat: Repeat,
    labels: LabelSet,
    sample: &Sample,
) -> Option<BucketId> {
    let last = LAST_BUCKET
        .try_with(Cell::get)
        .unwrap_or((0, labels, BucketId::OVERFLOW));
    if repeat.of == 0 || last.0 != repeat.of || last.1 != labels {
        return None;
    }
    let id = last.2;
    let line = &TABLE[id.stripe()].0;
    let mut stripe = line.stripe.lock();
    let bucket = stripe.buckets.get_mut(id.index())?;
    debug_assert!(
        *bucket.frames == *frames && bucket.truncated == truncated,
        "a repeated stack is not its last bucket's"
    );
    bucket.sums.add(sample);
    bump(&line.samples, 1);
    remember_bucket(repeat, labels, id);
    Some(id)
}

/// Keeps `id` as the bucket of the thread's last sample, captured as `repeat` says, under `labels`.
fn remember_bucket(repeat: Repeat, labels: LabelSet, id: BucketId) {
    let this = if id == BucketId::OVERFLOW {
        0
    } else {
        repeat.this
    };
    let _ = LAST_BUCKET.try_with(|last| last.set((this, labels, id)));
}

/// [`record_alloc`] by hashing and comparing the stack.
fn find_or_add(frames: &[usize], truncated: bool, labels: LabelSet, sample: &Sample) -> BucketId {
    let hash =
        hash_frames(frames, truncated) ^ u64::from(labels.id()).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let stripe_no =
        (hash as usize).wrapping_add(shard::index() * (STRIPES / SHARDS)) & (STRIPES - 1);
    let line = &TABLE[stripe_no].0;
    let mut stripe = line.stripe.lock();
    bump(&line.samples, 1);
    let mut slot = stripe.index.get(&hash).copied().unwrap_or(u32::MAX);
    while let Some(bucket) = stripe.buckets.get_mut(slot as usize) {
        if bucket.labels == labels && bucket.truncated == truncated && *bucket.frames == *frames {
            bucket.sums.add(sample);
            return BucketId::new(stripe_no, slot as usize);
        }
        slot = bucket.next;
    }
    let index = stripe.buckets.len();
    if BUCKETS.load(Relaxed) >= MAX_BUCKETS.load(Relaxed)
        || index >= (u32::MAX >> BucketId::STRIPE_BITS) as usize
    {
        drop(stripe);
        OVERFLOW_SAMPLES.fetch_add(1, Relaxed);
        OVERFLOW.lock().add(sample);
        return BucketId::OVERFLOW;
    }
    BUCKETS.fetch_add(1, Relaxed);
    let allocated = |stripe: &Stripe| {
        super::hash_map_bytes(&stripe.index) + stripe.buckets.capacity() * size_of::<Bucket>()
    };
    let before = allocated(&stripe);
    let next = stripe.index.insert(hash, index as u32).unwrap_or(u32::MAX);
    let mut sums = Sums::ZERO;
    sums.add(sample);
    stripe.buckets.push(Bucket {
        frames: frames.into(),
        truncated,
        labels,
        next,
        sums,
    });
    // The bucket's frames, and what the stripe's index and vector grew by (with their spare capacity).
    TABLE_BYTES.fetch_add(size_of_val(frames) + allocated(&stripe) - before, Relaxed);
    BucketId::new(stripe_no, index)
}

/// The locks of the table's stripes, for the `fork` handlers.
pub(crate) fn stripe_locks() -> impl Iterator<Item = &'static dyn AnyLock> {
    stripes().map(|stripe| stripe as &dyn AnyLock)
}

/// The overflow bucket's lock, for the `fork` handlers.
pub(crate) fn overflow_lock() -> &'static dyn AnyLock {
    &OVERFLOW
}

/// A copy of one bucket, in a [`Snapshot`] that holds its frames.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BucketSnapshot {
    /// Where its frames start in [`Snapshot::frames`], and how many there are (at most
    /// [`crate::stack::MAX_STACK_DEPTH`]).
    start: usize,
    len: u16,
    pub(crate) truncated: bool,
    pub(crate) overflow: bool,
    /// The labels of the allocations counted (empty for the overflow bucket).
    pub(crate) labels: LabelSet,
    pub(crate) counts: Counts,
}

/// A copy of buckets: the frames of all of them in one vector, each bucket a range of it, so that a copy of a
/// table of many stacks is a few allocations rather than one per bucket, without spare capacity per stack.
#[derive(Clone, Debug, Default)]
pub(crate) struct Snapshot {
    /// Return addresses, innermost first, bucket after bucket.
    frames: Vec<usize>,
    buckets: Vec<BucketSnapshot>,
}

impl Snapshot {
    /// Adds a bucket with frames `frames` (innermost first; empty for the overflow bucket) and what else
    /// `bucket` says (its own range is ignored).
    pub(crate) fn push(&mut self, frames: &[usize], bucket: &BucketSnapshot) {
        // A stack holds at most `MAX_STACK_DEPTH` frames: the bound is never reached.
        debug_assert!(frames.len() <= crate::stack::MAX_STACK_DEPTH);
        let frames = &frames[..frames.len().min(usize::from(u16::MAX))];
        self.buckets.push(BucketSnapshot {
            start: self.frames.len(),
            len: frames.len() as u16,
            ..*bucket
        });
        self.frames.extend_from_slice(frames);
    }

    /// A bucket without frames (the range of [`Snapshot::push`]) and with these counts: to be pushed.
    pub(crate) fn bucket(labels: LabelSet, counts: Counts) -> BucketSnapshot {
        BucketSnapshot {
            start: 0,
            len: 0,
            truncated: false,
            overflow: false,
            labels,
            counts,
        }
    }

    /// The frames of `bucket`, one of this snapshot's.
    pub(crate) fn frames(&self, bucket: &BucketSnapshot) -> &[usize] {
        self.frames
            .get(bucket.start..bucket.start + usize::from(bucket.len))
            .unwrap_or(&[])
    }

    /// Each bucket with its frames.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&[usize], &BucketSnapshot)> {
        self.buckets.iter().map(|b| (self.frames(b), b))
    }

    pub(crate) fn len(&self) -> usize {
        self.buckets.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Keeps the buckets for which `keep` is true, and lets it change their counts. The frames of those
    /// dropped stay in [`Snapshot::frames`] until the snapshot is dropped.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&[usize], &mut BucketSnapshot) -> bool) {
        let Snapshot { frames, buckets } = self;
        buckets.retain_mut(|b| {
            let own = frames
                .get(b.start..b.start + usize::from(b.len))
                .unwrap_or(&[]);
            keep(own, b)
        });
    }

    fn clear(&mut self) {
        self.frames.clear();
        self.buckets.clear();
    }

    /// Appends the buckets of `stripe` with `counts` (one per bucket, in order; the buckets past its end are
    /// not copied).
    fn copy_stripe(&mut self, stripe: &Stripe, counts: &mut dyn Iterator<Item = Counts>) {
        for (b, counts) in stripe.buckets.iter().zip(counts) {
            self.push(
                &b.frames,
                &BucketSnapshot {
                    truncated: b.truncated,
                    ..Snapshot::bucket(b.labels, counts)
                },
            );
        }
    }

    /// Appends the buckets of `stripe`, number `number`, with their counts now (see [`counts_now`]).
    fn copy_stripe_now(&mut self, stripe: &Stripe, number: usize, live: &LiveSums) {
        self.copy_stripe(stripe, &mut counts_now(stripe, number, live));
    }

    /// Merges the buckets that threads of different shards keep for one stack and label set into one, in a
    /// fixed order (by label set, then stack). The frames of the buckets merged into others stay in
    /// [`Snapshot::frames`].
    fn merge_threads(&mut self) {
        let Snapshot { frames, buckets } = self;
        let key = |b: &BucketSnapshot| {
            let own = frames
                .get(b.start..b.start + usize::from(b.len))
                .unwrap_or(&[]);
            (b.labels.id(), b.truncated, own)
        };
        buckets.sort_unstable_by(|a, b| key(a).cmp(&key(b)));
        buckets.dedup_by(|later, kept| {
            let same = key(later) == key(kept);
            if same {
                kept.counts.merge(&later.counts);
            }
            same
        });
    }

    fn push_overflow(&mut self, overflow: Counts) {
        if overflow != Counts::default() {
            self.push(
                &[],
                &BucketSnapshot {
                    overflow: true,
                    ..Snapshot::bucket(LabelSet::EMPTY, overflow)
                },
            );
        }
    }
}

/// Copies every bucket, one stripe at a time (each stripe is locked only while it is copied), merging the
/// buckets of one stack and label set, inside the profiler guard.
pub(crate) fn snapshot(guard: &Guard) -> Snapshot {
    let mut out = Snapshot {
        frames: Vec::with_capacity(frame_count(|_| usize::MAX)),
        buckets: Vec::with_capacity(BUCKETS.load(Relaxed) + 1),
    };
    let overflow = copy_stripes(guard, None, &mut |number, stripe, live| {
        out.copy_stripe_now(stripe, number, live);
    });
    out.merge_threads();
    out.push_overflow(OVERFLOW.lock().counts(&overflow));
    out
}

/// How many frames the first `limit(i)` buckets of each stripe `i` have: a copy that allocates its frames
/// once has no spare capacity to copy as it grows.
fn frame_count(limit: impl Fn(usize) -> usize) -> usize {
    stripes()
        .enumerate()
        .map(|(i, stripe)| {
            let stripe = stripe.lock();
            stripe
                .buckets
                .iter()
                .take(limit(i))
                .map(|b| b.frames.len())
                .sum::<usize>()
        })
        .sum()
}

/// Shows every bucket to `f` without a copy of the whole table: each stripe is copied (locked only while it
/// is) into one buffer that `f` reads, then the overflow bucket. Buckets are not merged: the buckets that
/// threads of different shards keep for one stack come one by one, in no particular order. Runs inside the
/// profiler guard.
pub(crate) fn for_each_stripe(guard: &Guard, f: &mut dyn FnMut(&Snapshot)) {
    let mut part = Snapshot::default();
    let overflow = copy_stripes(guard, None, &mut |number, stripe, live| {
        part.clear();
        part.copy_stripe_now(stripe, number, live);
        f(&part);
    });
    part.clear();
    part.push_overflow(OVERFLOW.lock().counts(&overflow));
    if !part.is_empty() {
        f(&part);
    }
}

/// How many buckets the table has (each stack counted by threads of several shards once per shard), and
/// the overflow bucket: at least as many as a dump has samples, unless buckets are added meanwhile.
pub(crate) fn count() -> usize {
    BUCKETS.load(Relaxed) + 1
}

/// The counts of every bucket at one moment, without their stacks (see [`super::peak`]): a flat copy, stripe
/// by stripe, that reuses its memory when it is taken again.
#[derive(Clone)]
pub(crate) struct CountsCopy {
    /// The buckets of stripe 0, then of stripe 1, …, each stripe in bucket order.
    counts: Vec<Counts>,
    /// How many buckets each stripe had.
    lens: [u32; STRIPES],
    overflow: Counts,
}

impl CountsCopy {
    pub(crate) const fn new() -> CountsCopy {
        CountsCopy {
            counts: Vec::new(),
            lens: [0; STRIPES],
            overflow: Counts::ZERO,
        }
    }

    /// Copies the counts of every bucket now, one stripe at a time (each stripe is locked only while it is
    /// copied), inside the profiler guard, their in-use sums taken first, with `plus`, an allocation being
    /// freed (see [`LiveSums::take`]). It allocates when the table has grown since the last copy.
    pub(crate) fn take(&mut self, guard: &Guard, plus: Option<&LiveEntry>) {
        self.counts.clear();
        self.counts.reserve(BUCKETS.load(Relaxed));
        let (counts, lens) = (&mut self.counts, &mut self.lens);
        let overflow = copy_stripes(guard, plus, &mut |number, stripe, live| {
            counts.extend(counts_now(stripe, number, live));
            lens[number] = stripe.buckets.len() as u32;
        });
        self.overflow = OVERFLOW.lock().counts(&overflow);
    }

    /// The in-use bytes of the copy, in [`super::UNITS`].
    pub(crate) fn inuse_space(&self) -> u128 {
        self.counts
            .iter()
            .chain([&self.overflow])
            .fold(0u128, |sum, c| sum.saturating_add(c.inuse_space))
    }

    /// Bytes of memory the copy holds.
    pub(crate) fn bytes(&self) -> usize {
        self.counts.capacity() * size_of::<Counts>()
    }

    /// The copied counts with the stacks and labels of their buckets, as [`snapshot`] gives them, inside the
    /// profiler guard.
    pub(crate) fn snapshot(&self, _: &Guard) -> Snapshot {
        let mut out = Snapshot {
            frames: Vec::with_capacity(frame_count(|stripe| self.lens[stripe] as usize)),
            buckets: Vec::with_capacity(self.counts.len() + 1),
        };
        let mut counts = self.counts.iter().copied();
        for (stripe, &len) in stripes().zip(self.lens.iter()) {
            // Buckets are only ever appended: the first `len` are those copied.
            out.copy_stripe(&stripe.lock(), &mut counts.by_ref().take(len as usize));
        }
        out.merge_threads();
        out.push_overflow(self.overflow);
        out
    }
}

/// Sizes of the bucket table, for [`crate::stats`].
pub(crate) struct TableStats {
    pub(crate) buckets: usize,
    pub(crate) bytes: usize,
    pub(crate) samples: u64,
    pub(crate) overflow_samples: u64,
    pub(crate) max_buckets: usize,
}

pub(crate) fn table_stats() -> TableStats {
    TableStats {
        buckets: BUCKETS.load(Relaxed),
        bytes: TABLE_BYTES.load(Relaxed),
        samples: TABLE.iter().fold(0u64, |sum, line| {
            sum.wrapping_add(line.0.samples.load(Relaxed))
        }),
        overflow_samples: OVERFLOW_SAMPLES.load(Relaxed),
        max_buckets: MAX_BUCKETS.load(Relaxed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_ids_round_trip() {
        let id = BucketId::new(63, 12345);
        assert_eq!((id.stripe(), id.index()), (63, 12345));
        assert_ne!(id, BucketId::OVERFLOW);
    }

    #[test]
    fn fractional_weights_sum_without_rounding_bias() {
        // A 1-byte allocation at rate 2 weighs 1/p = 2.541 objects and bytes: a million of them sum to
        // 2,541,494, where rounding each weight would give 3,000,000.
        let sample = Sample::computed(1, 2);
        let mut sums = Sums::ZERO;
        let mut live = Moments::ZERO;
        (0..1_000_000).for_each(|_| {
            sums.add(&sample);
            live.add(sample.weight, sample.variance);
        });
        let expected = 1_000_000.0 / -(-0.5f64).exp_m1();
        let counts = sums.counts(&live);
        assert!(
            (counts.values()[1] as f64 - expected).abs() < 1.0,
            "{:?} vs {expected}",
            counts.values()
        );
        assert_eq!(counts.values()[..2], counts.values()[2..], "all live");
        assert_eq!(sums.counts(&Moments::ZERO).values()[2..], [0, 0]);
    }

    #[test]
    fn a_bucket_has_a_block_size_while_its_samples_have_one_size() {
        let w = Sample::computed(7200, 1 << 19);
        let mut sums = Sums::ZERO;
        assert_eq!(sums.counts(&Moments::ZERO).block_size(), None);
        sums.add(&w);
        sums.add(&w);
        let mut counts = sums.counts(&Moments::ZERO);
        assert_eq!(counts.block_size(), Some(7200));
        let mut other = Sums::ZERO;
        other.add(&w);
        counts.merge(&other.counts(&Moments::ZERO));
        assert_eq!(
            counts.block_size(),
            Some(7200),
            "one size merged with itself"
        );
        other.add(&Sample::computed(640, 1 << 19));
        counts.merge(&other.counts(&Moments::ZERO));
        assert_eq!(counts.block_size(), None, "two sizes merged");
        let mut grown = Sums::ZERO;
        grown.add(&w);
        grown.add(&Sample { size: 7201, ..w });
        assert_eq!(
            grown.counts(&Moments::ZERO).block_size(),
            None,
            "a second size"
        );
        grown.add(&w);
        assert_eq!(
            grown.counts(&Moments::ZERO).block_size(),
            None,
            "mixed for good"
        );
    }

    #[test]
    fn hashes_differ_by_truncation() {
        assert_ne!(
            hash_frames(&[1, 2, 3], false),
            hash_frames(&[1, 2, 3], true)
        );
    }

    #[test]
    fn a_snapshot_merges_the_buckets_of_a_stack_and_keeps_each_bucket_its_frames() {
        let counts = |n: u128| Counts {
            alloc_objects: n,
            ..Counts::default()
        };
        let labeled = LabelSet::new(&[("shard", "snapshot-test")]);
        let mut snapshot = Snapshot::default();
        snapshot.push(&[3, 4], &Snapshot::bucket(LabelSet::EMPTY, counts(1)));
        snapshot.push(&[1, 2, 3], &Snapshot::bucket(LabelSet::EMPTY, counts(2)));
        // The first stack again, from another shard; then under labels.
        snapshot.push(&[3, 4], &Snapshot::bucket(LabelSet::EMPTY, counts(4)));
        snapshot.push(&[3, 4], &Snapshot::bucket(labeled, counts(8)));
        let mut truncated = Snapshot::bucket(LabelSet::EMPTY, counts(16));
        truncated.truncated = true;
        snapshot.push(&[3, 4], &truncated);
        snapshot.merge_threads();
        snapshot.push_overflow(counts(32));
        let buckets: Vec<(Vec<usize>, LabelSet, bool, bool, u128)> = snapshot
            .iter()
            .map(|(frames, b)| {
                let c = b.counts.alloc_objects;
                (frames.to_vec(), b.labels, b.truncated, b.overflow, c)
            })
            .collect();
        let empty = LabelSet::EMPTY;
        assert_eq!(
            buckets,
            [
                (vec![1, 2, 3], empty, false, false, 2),
                (vec![3, 4], empty, false, false, 5),
                (vec![3, 4], empty, true, false, 16),
                (vec![3, 4], labeled, false, false, 8),
                (vec![], empty, false, true, 32),
            ]
        );
        snapshot.retain(|frames, b| {
            b.counts.alloc_objects += 100;
            frames.len() != 3
        });
        let kept: Vec<u128> = snapshot
            .iter()
            .map(|(_, b)| b.counts.alloc_objects)
            .collect();
        assert_eq!(kept, [105, 116, 108, 132]);
    }
}
