//! A heap profile taken once and rendered many ways, as Go's `pprof.Lookup("heap").WriteTo(w, debug)` and
//! tcmalloc's `MallocExtension::SnapshotCurrent` followed by `Marshal` do.
//!
//! A [`HeapSnapshot`] is taken from the bucket table (the heap now), from the peak tracker's copy (the heap
//! at its peak), or from two copies of the table a window apart ([`crate::DeltaWindow`]), and is symbolized
//! as it is taken, under the dump lock. From then on it is a plain value that no lock guards. Each renderer
//! adds its methods to it in its own module: pprof in `pprof/render.rs`, folded stacks in `folded.rs`,
//! flamegraphs in `flamegraph.rs`, the sites and the text report in `report.rs`; the HTTP endpoints and the
//! automatic dumps call those. This module depends on no renderer.

use std::fmt;

use crate::clock;
use crate::error::Error;
use crate::sample_type::SampleType;
use crate::sampler::{self, Guard};
use crate::symbolize::{self, symbols};
use crate::table::buckets::{self, Snapshot};
use crate::table::peak;

/// A heap profile, symbolized once when it is taken, then rendered as often and as many ways as wanted:
/// gzipped pprof into any writer ([`HeapSnapshot::write_pprof`], [`HeapSnapshot::to_pprof`],
/// [`HeapSnapshot::write_pprof_file`]), folded stacks ([`HeapSnapshot::folded_stacks`]), a flamegraph
/// (`HeapSnapshot::flamegraph_svg`, feature `flamegraph`), the allocation sites ([`HeapSnapshot::sites`])
/// and the text report ([`HeapSnapshot::report`]). All renderings of one snapshot show the same numbers.
///
/// Take one with [`HeapSnapshot::current`] (what [`crate::dump_profile`] shows), [`HeapSnapshot::peak`]
/// (what [`crate::dump_peak_profile`] shows) or a [`crate::DeltaWindow`] (what
/// [`crate::dump_delta_profile`] shows). The shape is Go's `pprof.Lookup("heap").WriteTo(w, debug)` and
/// tcmalloc's `MallocExtension::SnapshotCurrent` with `Marshal`: the costly part (copying the table,
/// reading debug info) is done once, and no profiler lock is held while it is rendered or written.
///
/// ```
/// use heap_sampler::{HeapSnapshot, SampleType, SamplingAllocator};
/// use std::alloc::System;
///
/// #[global_allocator]
/// static ALLOC: SamplingAllocator<System> = SamplingAllocator::new(System);
///
/// fn main() -> Result<(), heap_sampler::Error> {
///     let kept = vec![0u8; 1 << 20];
///     let snapshot = HeapSnapshot::current()?;
///     let mut profile = Vec::new();
///     snapshot.write_pprof(&mut profile)?; // any `impl Write`: a file, a socket, a buffer
///     let folded = snapshot.folded_stacks(SampleType::InuseSpace);
///     println!("{}", snapshot.report(10));
///     # assert!(!profile.is_empty());
///     # let _ = folded;
///     drop(kept);
///     Ok(())
/// }
/// ```
///
/// Its memory (the stacks' locations, frames and counts) is the profiler's own, not sampled; it is freed
/// when the snapshot is dropped.
pub struct HeapSnapshot {
    /// The symbolized samples, locations and mappings.
    pub(crate) resolved: symbols::Resolved,
    /// What the snapshot is of.
    pub(crate) origin: Origin,
    /// The sample rate in force when it was taken, in bytes.
    pub(crate) rate: usize,
    /// When it was taken (for a peak: when the peak was recorded, 0 if none was), in nanoseconds since the
    /// Unix epoch.
    pub(crate) time_nanos: i64,
    /// The sample type a pprof rendering names as its default.
    pub(crate) default_sample_type: SampleType,
}

/// What a snapshot is of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    /// The bucket table as it was when taken.
    Current,
    /// The peak tracker's copy: `inuse_bytes` is the estimated in-use bytes of the copy, `highest` the
    /// highest estimate seen when the snapshot was taken.
    Peak { inuse_bytes: i64, highest: u64 },
    /// What was allocated during a window of `duration_nanos` nanoseconds, and what was held at its end.
    Delta { duration_nanos: i64 },
}

impl HeapSnapshot {
    /// The heap now: every stack and label set with what it allocated since the program started
    /// (`alloc_*`) and what it holds now (`inuse_*`). Its pprof rendering is [`crate::dump_profile`]'s;
    /// its default sample type is `inuse_space`.
    ///
    /// # Errors
    /// [`Error::NotInstalled`] when no [`crate::SamplingAllocator`] is the global allocator;
    /// [`Error::Unsupported`] on a target without sampling (see [`crate::SAMPLING_SUPPORTED`]).
    pub fn current() -> Result<HeapSnapshot, Error> {
        symbolize::dumping(|guard| {
            let time_nanos = clock::now_nanos();
            // The table is read a stripe at a time: what is held is what was resolved from it, never a copy
            // of all of its stacks.
            let resolved = symbols::resolve_parts(guard, buckets::count(), &mut |f| {
                buckets::for_each_stripe(guard, f)
            });
            HeapSnapshot::new(
                resolved,
                Origin::Current,
                time_nanos,
                SampleType::InuseSpace,
            )
        })
    }

    /// The heap at the peak of the estimated in-use bytes: what each stack and label set held then
    /// (`inuse_*`) and had allocated until then (`alloc_*`), with the peak's time as the snapshot's. Its
    /// pprof rendering is [`crate::dump_peak_profile`]'s, which says how peaks are recorded; before any
    /// is, the snapshot has no samples.
    ///
    /// # Errors
    /// As [`HeapSnapshot::current`].
    pub fn peak() -> Result<HeapSnapshot, Error> {
        symbolize::dumping(|guard| {
            let (buckets, inuse_bytes, time_nanos) = peak::kept(guard);
            let origin = Origin::Peak {
                inuse_bytes,
                highest: peak::highest(),
            };
            HeapSnapshot::of(guard, buckets, origin, time_nanos, SampleType::InuseSpace)
        })
    }

    /// Symbolizes `buckets` (a copy at the peak, the difference of two copies) into a snapshot, inside the
    /// profiler guard and under the dump lock (see [`symbolize::dumping`]).
    pub(crate) fn of(
        guard: &Guard,
        buckets: Snapshot,
        origin: Origin,
        time_nanos: i64,
        default_sample_type: SampleType,
    ) -> HeapSnapshot {
        let resolved = symbols::resolve(guard, &buckets);
        // The copy is not needed any more: gone before anything is rendered.
        drop(buckets);
        HeapSnapshot::new(resolved, origin, time_nanos, default_sample_type)
    }

    fn new(
        resolved: symbols::Resolved,
        origin: Origin,
        time_nanos: i64,
        default_sample_type: SampleType,
    ) -> HeapSnapshot {
        HeapSnapshot {
            resolved,
            origin,
            rate: sampler::sample_rate(),
            time_nanos,
            default_sample_type,
        }
    }

    /// The snapshot with `sample_type` as the default sample type of its pprof renderings, the one
    /// `go tool pprof` shows unless told otherwise (as `?sample_index=` does for Go's endpoints). It is
    /// `inuse_space` for the current heap and the peak, `alloc_space` for a delta window.
    #[must_use]
    pub fn with_default_sample_type(mut self, sample_type: SampleType) -> HeapSnapshot {
        self.default_sample_type = sample_type;
        self
    }

    /// The sample rate in force when the snapshot was taken, in bytes: a pprof rendering's `period`.
    pub fn sample_rate(&self) -> usize {
        self.rate
    }
}

impl fmt::Debug for HeapSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeapSnapshot")
            .field("origin", &self.origin)
            .field("rate", &self.rate)
            .field("time_nanos", &self.time_nanos)
            .field("samples", &self.resolved.samples.len())
            .field("locations", &self.resolved.locations.len())
            .finish_non_exhaustive()
    }
}
