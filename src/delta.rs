//! Delta windows: what was allocated during a window, as Go's `/debug/pprof/allocs?seconds=N`.
//!
//! Two copies of the bucket table are taken a window apart, and the cumulative `alloc_*` counts of the first
//! are subtracted from the second, stack by stack (buckets are never removed, so each stack of the first copy
//! is in the second). The `inuse_*` counts are those of the second copy, what is held at the end of the
//! window: unlike Go, which subtracts them too (a net change that can be negative), every value stays a
//! non-negative estimate that a flamegraph or `go tool pprof` can show as it is.

use std::collections::HashMap;
use std::fmt;
use std::time::Instant;

use crate::clock;
use crate::error::Error;
use crate::sample_type::SampleType;
use crate::sampler::{self, Guard};
use crate::snapshot::{HeapSnapshot, Origin};
use crate::table::buckets::{self, Counts, Snapshot};

/// A delta window begun: a copy of the bucket table at its start. [`DeltaWindow::finish`] ends it whenever
/// the caller chooses, and gives the [`HeapSnapshot`] of the window: what each stack allocated during it
/// (`alloc_objects`, `alloc_space`) and what it holds at its end (`inuse_objects`, `inuse_space`). Nothing
/// waits or sleeps in between, and no lock is held: a server can wait out the window on a timer and drop it
/// when its client goes away, which frees the copy.
///
/// As Go's `/debug/pprof/allocs?seconds=N`, which takes a profile, waits, takes another and subtracts the
/// first; unlike Go, in-use values are those at the end of the window rather than a (possibly negative)
/// change, so every value is a non-negative estimate.
///
/// ```
/// use heap_sampler::{DeltaWindow, SamplingAllocator};
/// use std::alloc::System;
///
/// #[global_allocator]
/// static ALLOC: SamplingAllocator<System> = SamplingAllocator::new(System);
///
/// fn main() -> Result<(), heap_sampler::Error> {
///     let window = DeltaWindow::start()?;
///     let work: Vec<Vec<u8>> = (0..100).map(|_| vec![0u8; 4096]).collect();
///     let during = window.finish()?; // what was allocated since `start`
///     println!("{}", during.report(5));
///     # drop(work);
///     Ok(())
/// }
/// ```
pub struct DeltaWindow {
    before: Snapshot,
    /// When the first copy was complete.
    start: Instant,
}

impl DeltaWindow {
    /// Begins a window now: copies the bucket table (its counts and stacks, unsymbolized). Holds no lock
    /// once it returns; the copy is the profiler's memory, not sampled, until the window is finished or
    /// dropped.
    ///
    /// # Errors
    /// [`Error::NotInstalled`] when no [`crate::SamplingAllocator`] is the global allocator;
    /// [`Error::Unsupported`] on a target without sampling.
    pub fn start() -> Result<DeltaWindow, Error> {
        let (before, start) = copy()?;
        Ok(DeltaWindow { before, start })
    }

    /// Ends the window now: copies the bucket table again, subtracts the first copy's `alloc_*` counts stack
    /// by stack, and symbolizes the difference. The snapshot's time is now, its duration (a pprof
    /// rendering's `duration_nanos`) runs from the end of the first copy to the end of the second, and its
    /// default sample type is `alloc_space`.
    ///
    /// # Errors
    /// As [`DeltaWindow::start`].
    pub fn finish(self) -> Result<HeapSnapshot, Error> {
        let (after, end) = copy()?;
        let time_nanos = clock::now_nanos();
        let duration_nanos =
            i64::try_from(end.duration_since(self.start).as_nanos()).unwrap_or(i64::MAX);
        let delta = {
            let _guard = Guard::enter();
            subtract(&self.before, after)
        };
        drop(self);
        crate::symbolize::dumping(|guard| {
            let origin = Origin::Delta { duration_nanos };
            HeapSnapshot::of(guard, delta, origin, time_nanos, SampleType::AllocSpace)
        })
    }
}

impl fmt::Debug for DeltaWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeltaWindow")
            .field("start", &self.start)
            .field("buckets", &self.before.len())
            .finish()
    }
}

/// A copy of the bucket table, and when it was complete.
fn copy() -> Result<(Snapshot, Instant), Error> {
    sampler::check_installed()?;
    let guard = Guard::inside();
    let snapshot = buckets::snapshot(&guard);
    Ok((snapshot, Instant::now()))
}

/// `after` with the `alloc_*` counts of `before` subtracted, stack by stack; buckets left with nothing
/// allocated in the window and nothing in use are dropped.
pub(crate) fn subtract(before: &Snapshot, mut after: Snapshot) -> Snapshot {
    // A bucket is a stack with a label set: the same stack under other labels is another bucket.
    let earlier: HashMap<_, &Counts> = before
        .iter()
        .map(|(frames, b)| ((frames, b.truncated, b.overflow, b.labels), &b.counts))
        .collect();
    after.retain(|frames, bucket| {
        let key = (frames, bucket.truncated, bucket.overflow, bucket.labels);
        if let Some(&prior) = earlier.get(&key) {
            bucket.counts.subtract_allocated(prior);
        }
        bucket.counts != Counts::default()
    });
    after
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels::LabelSet;

    /// A bucket: its frames, labels, whether it is truncated, and counts.
    type Bucket<'a> = (&'a [usize], LabelSet, bool, [u128; 4]);

    fn bucket(frames: &[usize], counts: [u128; 4]) -> Bucket<'_> {
        (frames, LabelSet::default(), false, counts)
    }

    fn snapshot(buckets: &[Bucket<'_>]) -> Snapshot {
        let mut snapshot = Snapshot::default();
        for &(frames, labels, truncated, counts) in buckets {
            let counts = Counts {
                alloc_objects: counts[0],
                alloc_space: counts[1],
                inuse_objects: counts[2],
                inuse_space: counts[3],
                ..Counts::default()
            };
            let mut bucket = Snapshot::bucket(labels, counts);
            bucket.truncated = truncated;
            snapshot.push(frames, &bucket);
        }
        snapshot
    }

    #[test]
    fn allocations_are_subtracted_and_in_use_is_current() {
        let before = snapshot(&[
            bucket(&[1, 2], [10, 1000, 5, 500]),
            bucket(&[3], [4, 400, 0, 0]),
            bucket(&[5], [2, 200, 2, 200]),
        ]);
        let after = snapshot(&[
            // Allocated 3 more objects during the window and freed some.
            bucket(&[1, 2], [13, 1300, 1, 100]),
            // Nothing allocated, nothing held: dropped.
            bucket(&[3], [4, 400, 0, 0]),
            // Nothing allocated, still held: kept with its in-use counts.
            bucket(&[5], [2, 200, 2, 200]),
            // New during the window.
            bucket(&[6], [1, 64, 1, 64]),
        ]);
        let delta = subtract(&before, after);
        let counts: Vec<(Vec<usize>, [u128; 4])> = delta
            .iter()
            .map(|(frames, b)| {
                let c = b.counts;
                (
                    frames.to_vec(),
                    [
                        c.alloc_objects,
                        c.alloc_space,
                        c.inuse_objects,
                        c.inuse_space,
                    ],
                )
            })
            .collect();
        assert_eq!(
            counts,
            [
                (vec![1, 2], [3, 300, 1, 100]),
                (vec![5], [0, 0, 2, 200]),
                (vec![6], [1, 64, 1, 64]),
            ]
        );
    }

    #[test]
    fn truncation_and_overflow_are_part_of_the_stack() {
        let truncated = (&[1][..], LabelSet::default(), true, [1, 8, 1, 8]);
        let delta = subtract(
            &snapshot(&[bucket(&[1], [1, 8, 1, 8])]),
            snapshot(&[truncated]),
        );
        let alloc_space: Vec<u128> = delta.iter().map(|(_, b)| b.counts.alloc_space).collect();
        assert_eq!(alloc_space, [8]);
    }

    #[test]
    fn the_same_stack_under_other_labels_is_another_bucket() {
        let a = LabelSet::new(&[("tenant", "delta-a")]);
        let b = LabelSet::new(&[("tenant", "delta-b")]);
        let before = snapshot(&[(&[7], a, false, [5, 500, 5, 500])]);
        let after = snapshot(&[
            (&[7], a, false, [6, 600, 6, 600]),
            (&[7], b, false, [2, 200, 2, 200]),
        ]);
        let delta = subtract(&before, after);
        let counts: Vec<(LabelSet, u128, u128)> = delta
            .iter()
            .map(|(_, b)| (b.labels, b.counts.alloc_space, b.counts.inuse_space))
            .collect();
        assert_eq!(counts, [(a, 100, 600), (b, 200, 200)]);
    }
}
