//! Delta profiles: what was allocated during a window, as Go's `/debug/pprof/allocs?seconds=N`.
//!
//! Two copies of the bucket table are taken `window` apart, and the cumulative `alloc_*` counts of the first
//! are subtracted from the second, stack by stack (buckets are never removed, so each stack of the first copy
//! is in the second). The `inuse_*` counts are those of the second copy, what is held at the end of the
//! window: unlike Go, which subtracts them too (a net change that can be negative), every value stays a
//! non-negative estimate that a flamegraph or `go tool pprof` can show as it is.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::Error;
use crate::pprof::{self, proto};
use crate::sample_type::SampleType;
use crate::sampler::{self, Guard};
use crate::table::buckets::{self, BucketSnapshot, Counts};

/// The buckets of a window: allocations during it, and what is held at its end.
pub(crate) struct Delta {
    pub(crate) buckets: Vec<BucketSnapshot>,
    /// Wall time at the end of the window, in nanoseconds since the Unix epoch (as Go's delta profiles).
    pub(crate) time_nanos: i64,
    /// The length of the window, in nanoseconds: from the end of the first copy to the end of the second.
    pub(crate) duration_nanos: i64,
}

impl Delta {
    /// Copies the bucket table, waits `window`, copies it again and subtracts. Blocks the calling thread for
    /// `window`; holds no lock while it waits.
    ///
    /// # Errors
    /// [`Error::NotInstalled`] when no [`crate::SamplingAllocator`] is the global allocator (before waiting).
    pub(crate) fn collect(window: Duration) -> Result<Delta, Error> {
        let (before, start) = snapshot()?;
        std::thread::sleep(window);
        let (after, end) = snapshot()?;
        let _guard = Guard::enter();
        Ok(Delta {
            buckets: subtract(&before, after),
            time_nanos: pprof::now_nanos(),
            duration_nanos: i64::try_from(end.duration_since(start).as_nanos()).unwrap_or(i64::MAX),
        })
    }

    /// The window's profile, with `default` as its default sample type.
    pub(crate) fn profile(&self, default: SampleType) -> Result<proto::Profile, Error> {
        let mut profile = pprof::profile_of(&self.buckets)?;
        profile.time_nanos = self.time_nanos;
        profile.duration_nanos = self.duration_nanos;
        crate::sample_type::set_default(&mut profile, default);
        Ok(profile)
    }
}

/// A copy of the bucket table, and when it was complete.
fn snapshot() -> Result<(Vec<BucketSnapshot>, Instant), Error> {
    if !sampler::installed() {
        return Err(Error::NotInstalled);
    }
    let _guard = Guard::enter();
    let snapshot = buckets::snapshot();
    Ok((snapshot, Instant::now()))
}

/// `after` with the `alloc_*` counts of `before` subtracted, stack by stack; buckets left with nothing
/// allocated in the window and nothing in use are dropped.
pub(crate) fn subtract(
    before: &[BucketSnapshot],
    after: Vec<BucketSnapshot>,
) -> Vec<BucketSnapshot> {
    // A bucket is a stack with a label set: the same stack under other labels is another bucket.
    let earlier: HashMap<_, &Counts> = before
        .iter()
        .map(|b| {
            (
                (b.frames.as_slice(), b.truncated, b.overflow, b.labels),
                &b.counts,
            )
        })
        .collect();
    after
        .into_iter()
        .filter_map(|mut bucket| {
            let key = (
                bucket.frames.as_slice(),
                bucket.truncated,
                bucket.overflow,
                bucket.labels,
            );
            if let Some(&prior) = earlier.get(&key) {
                let counts = &mut bucket.counts;
                counts.alloc_objects = counts.alloc_objects.saturating_sub(prior.alloc_objects);
                counts.alloc_space = counts.alloc_space.saturating_sub(prior.alloc_space);
            }
            (bucket.counts != Counts::default()).then_some(bucket)
        })
        .collect()
}

/// A delta profile: what each stack allocated during the next `window` (`alloc_objects`, `alloc_space`), and
/// what it holds at the end of it (`inuse_objects`, `inuse_space`), as gzip-compressed pprof whose
/// `duration_nanos` is the window; as Go's `/debug/pprof/allocs?seconds=N`, except that in-use values are
/// current rather than a (possibly negative) change. The default sample type is `alloc_space`. Blocks the
/// calling thread for `window`.
///
/// Cumulative profiles ([`crate::dump_profile`]) count since the program started, so a spike an hour in is
/// hard to see in them; a delta profile shows it alone.
///
/// # Errors
/// [`Error::NotInstalled`] when no [`crate::SamplingAllocator`] is the global allocator (at once, without
/// waiting); [`Error::Compress`] if gzip fails.
pub fn dump_delta_profile(window: Duration) -> Result<Vec<u8>, Error> {
    let delta = Delta::collect(window)?;
    pprof::encode(&delta.profile(SampleType::AllocSpace)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LabelSet;

    fn bucket(frames: &[usize], counts: [u128; 4]) -> BucketSnapshot {
        labeled_bucket(frames, LabelSet::default(), counts)
    }

    fn labeled_bucket(frames: &[usize], labels: LabelSet, counts: [u128; 4]) -> BucketSnapshot {
        BucketSnapshot {
            frames: frames.to_vec(),
            truncated: false,
            overflow: false,
            labels,
            counts: Counts {
                alloc_objects: counts[0],
                alloc_space: counts[1],
                inuse_objects: counts[2],
                inuse_space: counts[3],
            },
        }
    }

    #[test]
    fn allocations_are_subtracted_and_in_use_is_current() {
        let before = [
            bucket(&[1, 2], [10, 1000, 5, 500]),
            bucket(&[3], [4, 400, 0, 0]),
            bucket(&[5], [2, 200, 2, 200]),
        ];
        let after = vec![
            // Allocated 3 more objects during the window and freed some.
            bucket(&[1, 2], [13, 1300, 1, 100]),
            // Nothing allocated, nothing held: dropped.
            bucket(&[3], [4, 400, 0, 0]),
            // Nothing allocated, still held: kept with its in-use counts.
            bucket(&[5], [2, 200, 2, 200]),
            // New during the window.
            bucket(&[6], [1, 64, 1, 64]),
        ];
        let delta = subtract(&before, after);
        let counts: Vec<(Vec<usize>, [u128; 4])> = delta
            .iter()
            .map(|b| {
                let c = b.counts;
                (
                    b.frames.clone(),
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
        let mut truncated = bucket(&[1], [1, 8, 1, 8]);
        truncated.truncated = true;
        let delta = subtract(&[bucket(&[1], [1, 8, 1, 8])], vec![truncated]);
        assert_eq!(delta[0].counts.alloc_space, 8);
    }

    #[test]
    fn the_same_stack_under_other_labels_is_another_bucket() {
        let a = LabelSet::new(&[("tenant", "delta-a")]);
        let b = LabelSet::new(&[("tenant", "delta-b")]);
        let before = [labeled_bucket(&[7], a, [5, 500, 5, 500])];
        let after = vec![
            labeled_bucket(&[7], a, [6, 600, 6, 600]),
            labeled_bucket(&[7], b, [2, 200, 2, 200]),
        ];
        let delta = subtract(&before, after);
        let counts: Vec<(LabelSet, u128, u128)> = delta
            .iter()
            .map(|b| (b.labels, b.counts.alloc_space, b.counts.inuse_space))
            .collect();
        assert_eq!(counts, [(a, 100, 600), (b, 200, 200)]);
    }
}
