//! Metrics: the heap estimates and the profiler's own figures, from relaxed loads only.
//!
//! The heap estimates come from the running totals ([`crate::totals`]) and the peak tracker; the profiler's
//! figures from the tables, the label registry and the dump caches. Each source keeps its own counters: this
//! module only reads them.

use crate::sampler::sample_rate;
use crate::table::peak;
use crate::{labels, stack, symbolize, table, totals};

/// Heap estimates and the profiler's own figures. Cheap to read (a few dozen relaxed loads, no lock, no
/// allocation), fit to export as metrics every second (see `examples/prometheus.rs`).
///
/// The fields come in two groups. The **heap estimates** (`inuse_bytes`, `inuse_objects`, `alloc_bytes`,
/// `alloc_objects`, `peak_inuse_bytes`) describe the program: they are sums of the same weights as the
/// profile, so they carry the same noise, a relative standard error of at most `sqrt(rate / bytes)`, and are
/// exact in exact mode ([`crate::set_sample_rate`]`(1)`). The **profiler's own figures** (every other field)
/// describe the profiler: its settings, its counters and the memory it holds; they are counts, not estimates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    // Heap estimates.
    /// Estimated bytes allocated and not yet freed: the `inuse_space` of the whole profile.
    pub inuse_bytes: u64,
    /// Estimated objects allocated and not yet freed: the `inuse_objects` of the whole profile.
    pub inuse_objects: u64,
    /// Estimated bytes allocated since the program started: the `alloc_space` of the whole profile.
    pub alloc_bytes: u64,
    /// Estimated objects allocated since the program started: the `alloc_objects` of the whole profile.
    pub alloc_objects: u64,
    /// The highest [`Stats::inuse_bytes`] seen; [`crate::dump_peak_profile`] shows what made it up (within a
    /// margin, see there).
    pub peak_inuse_bytes: u64,

    // The profiler's own figures.
    /// The sample rate in force, in bytes.
    pub sample_rate: usize,
    /// How many times the counts at a peak were copied for [`crate::dump_peak_profile`] (bounded: see there).
    pub peak_copies: u64,
    /// Sampled allocations since the program started.
    pub samples: u64,
    /// Sampled allocations not yet freed.
    pub live_samples: usize,
    /// Buckets in the table: distinct stacks and label sets, per group of threads that sampled them (see
    /// [`crate::set_max_buckets`]).
    pub buckets: usize,
    /// The cap on buckets (see [`crate::set_max_buckets`]).
    pub max_buckets: usize,
    /// Approximate bytes held by the bucket table.
    pub table_bytes: usize,
    /// Approximate bytes of memory the profiler holds: the bucket table, the live sampled allocations, the
    /// free filter, the label sets, the copy of the peak, and what dumps keep (the frames of each return
    /// address seen, the build IDs of the mapped files). Debug info is read per dump and not kept.
    pub profiler_bytes: usize,
    /// Samples charged to the overflow bucket because the table was full: their stacks (and labels) are
    /// dropped, their weight is kept.
    pub overflow_samples: u64,
    /// Samples recorded under `[stack not captured]` because their thread's stack had too little room left
    /// to capture their stack (see [`crate::Unwinder`]): their weight and labels are kept, their stack is not.
    pub stackless_samples: u64,
    /// Samples taken in a label scope whose label set was not kept because the cap on label sets was reached
    /// (see [`crate::set_max_label_sets`]): their labels are dropped, their stack and weight are kept.
    pub dropped_labels: u64,
    /// Distinct label sets interned (see [`crate::LabelSet`]).
    pub label_sets: usize,
    /// Frees (and reallocations) of sampled allocations, which subtracted their weight.
    pub sampled_frees: u64,
    /// Frees of unsampled pointers that had the bits of a sampled one (an odd multiple of their alignment, at
    /// least 8: see [`crate::SamplingAllocator`]'s costs) and shared a filter slot with a live sampled
    /// allocation, and so looked the pointer up under a lock in vain. Such a free reads the filter block of
    /// its pointer's 4 MiB address region,
    /// 4,096 slots shared with the regions that hash to the same block: about `live / 4096` of the frees
    /// there look up in vain, `live` being the live sampled allocations of those regions (at the default
    /// rate at most about 8 per region, so `live_samples / 2^18` for a heap spread over many regions).
    pub filter_false_positives: u64,
    /// Bytes of the free filter: 2^18 bits (32 KiB), one 512-byte block per stripe of the live table, of
    /// which the free of a pointer with a sampled one's bits reads one bit (only touched pages are resident).
    pub filter_bytes: usize,
}

/// Heap estimates and the profiler's own figures (see [`Stats`]).
pub fn stats() -> Stats {
    let heap = totals::totals();
    let table = table::buckets::table_stats();
    Stats {
        inuse_bytes: heap.inuse_bytes,
        inuse_objects: heap.inuse_objects,
        alloc_bytes: heap.alloc_bytes,
        alloc_objects: heap.alloc_objects,
        peak_inuse_bytes: peak::highest(),

        sample_rate: sample_rate(),
        peak_copies: peak::copies(),
        samples: table.samples,
        live_samples: table::live::live_count(),
        buckets: table.buckets,
        max_buckets: table.max_buckets,
        table_bytes: table.bytes,
        profiler_bytes: profiler_bytes(table.bytes),
        overflow_samples: table.overflow_samples,
        stackless_samples: stack::stackless_samples(),
        dropped_labels: labels::dropped_samples(),
        label_sets: labels::label_sets(),
        sampled_frees: table::live::sampled_frees(),
        filter_false_positives: table::live::false_positives(),
        filter_bytes: table::live::FILTER_BYTES,
    }
}

/// Everything the profiler holds, given the bucket table's bytes: what the allocator path keeps (tables,
/// filter, label sets, the peak's copy) and what dumps keep (the symbol and mapping caches).
fn profiler_bytes(table_bytes: usize) -> usize {
    table_bytes
        + table::live::table_bytes()
        + table::live::FILTER_BYTES
        + labels::label_bytes()
        + peak::copy_bytes()
        + symbolize::symbols::cache_bytes()
        + symbolize::mappings::cache_bytes()
}
