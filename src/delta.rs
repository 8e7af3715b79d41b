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
use crate::pprof::{self, Dump};
use crate::sample_type::SampleType;
use crate::sampler::{self, Guard};
use crate::table::buckets::{self, Counts, Snapshot};

/// The buckets of a window: allocations during it, and what is held at its end.
pub(crate) struct Delta {
    pub(crate) buckets: Snapshot,
    /// Wall time at the end of the window, in nanoseconds since the Unix epoch (as Go's delta profiles).
    pub(crate) time_nanos: i64,
    /// The length of the window, in nanoseconds: from the end of the first copy to the end of the second.
    pub(crate) duration_nanos: i64,
}

/// A delta window begun: the copy of the bucket table at its start. [`Window::finish`] ends it, whenever the
/// caller chooses: [`dump_delta_profile`] and [`crate::http::handle`] sleep their thread in between, the
/// built-in server waits on a timer (and drops the window if its client goes away).
pub(crate) struct Window {
    before: Snapshot,
    /// When the first copy was complete.
    start: Instant,
}

impl Window {
    /// Begins a window: copies the bucket table. Holds no lock once it returns.
    ///
    /// # Errors
    /// [`Error::NotInstalled`] when no [`crate::SamplingAllocator`] is the global allocator.
    pub(crate) fn start() -> Result<Window, Error> {
        let (before, start) = snapshot()?;
        Ok(Window { before, start })
    }

    /// Ends the window now: copies the bucket table again and subtracts the first copy.
    ///
    /// # Errors
    /// [`Error::NotInstalled`] when no [`crate::SamplingAllocator`] is the global allocator.
    pub(crate) fn finish(self) -> Result<Delta, Error> {
        let (after, end) = snapshot()?;
        let _guard = Guard::enter();
        Ok(Delta {
            buckets: subtract(&self.before, after),
            time_nanos: pprof::now_nanos(),
            duration_nanos: i64::try_from(end.duration_since(self.start).as_nanos())
                .unwrap_or(i64::MAX),
        })
    }
}

impl Delta {
    /// The window's profile, with `default` as its default sample type.
    pub(crate) fn profile(&self, default: SampleType) -> Result<Dump, Error> {
        let mut dump = pprof::profile_of(&self.buckets)?;
        dump.profile.time_nanos = self.time_nanos;
        dump.profile.duration_nanos = self.duration_nanos;
        crate::sample_type::set_default(&mut dump.profile, default);
        Ok(dump)
    }
}

/// A copy of the bucket table, and when it was complete.
fn snapshot() -> Result<(Snapshot, Instant), Error> {
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
            let counts = &mut bucket.counts;
            counts.alloc_objects = counts.alloc_objects.saturating_sub(prior.alloc_objects);
            counts.alloc_space = counts.alloc_space.saturating_sub(prior.alloc_space);
        }
        bucket.counts != Counts::default()
    });
    after
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
    let started = Window::start()?;
    std::thread::sleep(window);
    let delta = started.finish()?;
    pprof::encode(&delta.profile(SampleType::AllocSpace)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LabelSet;

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
