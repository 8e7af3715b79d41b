//! A sampling heap profiler for Rust programs that writes pprof heap profiles, as Go's runtime heap profiler
//! does for Go programs: always on, cheap, statistically honest, and readable with `go tool pprof`.
//!
//! # Quick start
//!
//! ```
//! use heap_sampler::SamplingAllocator;
//! use std::alloc::System;
//!
//! #[global_allocator]
//! static ALLOC: SamplingAllocator<System> = SamplingAllocator::new(System);
//!
//! fn main() -> Result<(), heap_sampler::Error> {
//!     let kept: Vec<Vec<u8>> = (0..1000).map(|_| vec![1u8; 4096]).collect();
//!
//!     // gzipped profile.proto: `go tool pprof -top heap.pb.gz`
//!     let profile: Vec<u8> = heap_sampler::dump_profile()?;
//!     assert!(!profile.is_empty());
//!     # let dir = std::env::temp_dir().join(format!("heap-sampler-doc-{}", std::process::id()));
//!     # std::fs::create_dir_all(&dir).unwrap();
//!     # let path = dir.join("heap.pb.gz");
//!     heap_sampler::write_profile(&path)?;
//!     println!("{}", heap_sampler::report(10)?);
//!     # std::fs::remove_dir_all(&dir).unwrap();
//!     drop(kept);
//!     Ok(())
//! }
//! ```
//!
//! # How it works
//!
//! Each thread counts allocated bytes down to an exponentially distributed gap whose mean is the sample
//! rate (default 512 KiB, as Go's `runtime.MemProfileRate`). The allocation that crosses it is sampled: its
//! stack is captured and it is added to the bucket of that stack with weight 1/p, where
//! p = 1 − e^(−size/rate) is the probability that an allocation of its size is sampled. The weighted sums are
//! unbiased estimates of what each stack allocated (`alloc_objects`, `alloc_space`) and still holds
//! (`inuse_objects`, `inuse_space`): a free of a sampled allocation subtracts exactly what it added.
//!
//! # Reading the numbers
//!
//! A site's estimate of `B` allocated bytes has a relative standard error of at most `sqrt(rate / B)`: 7 % at
//! 100 MiB and the default rate, 2.2 % at 1 GiB. Two lines that allocate identically differ by about
//! `sqrt(2)` times that, and converge as they allocate more. [`set_sample_rate`]`(1)` records every
//! allocation exactly, for tests.
//!
//! # Cost
//!
//! An allocation that is not sampled costs about 20 instructions more per allocate+free pair than the inner
//! allocator (a thread-local countdown, and on free a filter bit found by one product of the pointer). A
//! sampled one captures its stack: 0.4–0.7 µs at 32 frames with the default DWARF unwinder, which
//! remembers the unwind rule of every return address it has seen, and about 0.2 µs with
//! [`Unwinder::FramePointer`] in programs built with frame pointers (see [`set_unwinder`]).
//!
//! # Labels
//!
//! Allocations sampled inside a label scope carry its key/value labels, as pprof string labels (the way Go's
//! `pprof.Do` labels CPU profiles; Go's heap profiles have none), so a profile can be broken down by tenant,
//! endpoint or component: `go tool pprof -tags heap.pb.gz`, `go tool pprof -tagfocus=tenant=acme -top
//! heap.pb.gz`. Scopes nest (inner labels add to outer ones; guards are dropped innermost first) and belong
//! to the current thread:
//!
//! ```
//! let cache = heap_sampler::with_labels(&[("component", "cache")], || vec![0u8; 1 << 20]);
//! {
//!     let _scope = heap_sampler::enter_labels(&[("tenant", "acme")]);
//!     let _buffer = vec![0u8; 4096]; // labeled tenant=acme
//! }
//! # drop(cache);
//! ```
//!
//! A scope is per thread, so it must not be held across `.await`: the task may move to another thread, and
//! other tasks run on this one meanwhile. Wrap the future instead; the labels are entered around each poll,
//! wherever it runs:
//!
//! ```
//! # async fn handle(request: &str) -> usize { request.len() }
//! async fn serve(tenant: &str, request: &str) -> usize {
//!     heap_sampler::labeled(&[("tenant", tenant)], handle(request)).await
//! }
//! ```
//!
//! A thread spawned inside a scope starts without labels: pass it [`LabelSet::current`] and enter that. The
//! allocator reads the thread's label set only when it samples an allocation; unsampled allocations cost
//! exactly what they cost without labels. Entering a scope from pairs interns the set (a lock and a hash map
//! lookup, outside the allocator); a [`LabelSet`] built once enters with a single thread-local store. Sets
//! are kept for the life of the process, so give labels few distinct values (see [`set_max_label_sets`]).
//!
//! # The peak
//!
//! [`dump_peak_profile`] is the profile at the highest estimated in-use bytes so far, by stack and labels, with
//! the peak's time and size in its comments: what was live just before memory came down. Written out
//! periodically (with the metrics, say), the last file before an out-of-memory kill shows the highest peak
//! recorded until then: what filled memory on the way up.
//! The counts at a peak are copied at most `ln(1 + P / (128 · rate)) / ln(33/32)` times for a peak of `P`
//! bytes (92 times for 1 GiB at the default rate), see [`dump_peak_profile`].
//!
//! # Metrics
//!
//! [`stats`] gives the estimated in-use and allocated bytes and objects, the peak, and the profiler's own
//! figures, from relaxed loads only, cheap enough to export every second; `examples/prometheus.rs` writes
//! them in Prometheus text format.
//!
//! # Safety of the profiled program
//!
//! The allocator never panics, never recurses into itself (the profiler's own memory passes straight through
//! to the inner allocator, unsampled), holds no lock while capturing a stack, and takes no lock on the fast
//! path or on the free of an unsampled pointer.
//!
//! # Where users look: `/debug/pprof`
//!
//! [`http::handle`] answers Go's `/debug/pprof/heap` and `/debug/pprof/allocs` requests in any HTTP
//! framework (snippets for axum and hyper are in [`http`]); with the `server` feature, `serve` runs a small
//! server of its own, on a loopback address unless told otherwise:
//!
//! ```no_run
//! # #[cfg(feature = "server")]
//! # fn main() -> Result<(), heap_sampler::Error> {
//! let server = heap_sampler::serve("127.0.0.1:6060")?; // stops when dropped
//! # Ok(()) }
//! # #[cfg(not(feature = "server"))] fn main() {}
//! ```
//!
//! ```text
//! go tool pprof http://127.0.0.1:6060/debug/pprof/heap                 # inuse_space: what holds memory now
//! go tool pprof http://127.0.0.1:6060/debug/pprof/allocs               # alloc_space: all allocation since start
//! go tool pprof http://127.0.0.1:6060/debug/pprof/allocs?seconds=30    # alloc_space during the next 30 s
//! go tool pprof -http=: http://127.0.0.1:6060/debug/pprof/heap         # the web UI, flamegraph included
//! ```
//!
//! Both endpoints serve the same four sample types; `heap` shows `inuse_space` by default (leaks, caches,
//! bloat: memory that is still held), `allocs` shows `alloc_space` (churn: where the allocator's work goes,
//! freed or not), as in Go. `?debug=1` gives [`report`]'s text, `?format=folded` folded stacks,
//! `?format=svg` a flamegraph.
//!
//! Continuous profilers scrape the same endpoint. Parca (`parca.yaml`):
//!
//! ```yaml
//! scrape_configs:
//!   - job_name: my-service
//!     scrape_interval: 10s
//!     static_configs:
//!       - targets: ["127.0.0.1:6060"]
//!     profiling_config:
//!       pprof_config:
//!         memory: { enabled: true, path: /debug/pprof/allocs }
//!         process_cpu: { enabled: false }
//!         goroutine: { enabled: false }
//!         block: { enabled: false }
//!         mutex: { enabled: false }
//! ```
//!
//! Pyroscope, through Grafana Alloy:
//!
//! ```text
//! pyroscope.scrape "my_service" {
//!   targets    = [{"__address__" = "127.0.0.1:6060", "service_name" = "my-service"}]
//!   forward_to = [pyroscope.write.default.receiver]
//!   profiling_config {
//!     profile.memory      { enabled = true, path = "/debug/pprof/allocs" }
//!     profile.process_cpu { enabled = false }
//!     profile.goroutine   { enabled = false }
//!     profile.block       { enabled = false }
//!     profile.mutex       { enabled = false }
//!   }
//! }
//! ```
//!
//! # Flamegraphs and folded stacks
//!
//! [`folded_stacks`] gives the profile as folded stacks (`main;app::load;app::parse 1048576`), the input of
//! flamegraph tools and diffing scripts; `flamegraph_svg` (feature `flamegraph`, inferno) renders them, for
//! `inuse_space`, `alloc_space` or the object counts ([`SampleType`]).
//!
//! # Configuration by environment
//!
//! For operators who cannot rebuild the program. Read once when the process starts, before `main`, also in
//! programs that only install [`SamplingAllocator`]. An invalid value is reported once on stderr, naming the
//! variable and the default used instead; the program runs on. Empty counts as unset.
//!
//! | variable | unit | default | example | effect |
//! | --- | --- | --- | --- | --- |
//! | `HEAP_SAMPLER_RATE` | bytes; binary suffixes `K`/`KiB`, `M`/`MiB`, `G`/`GiB` | the program's rate (512 KiB) | `64KiB` | sample rate from the start (0 = off, 1 = every allocation); a later [`set_sample_rate`] call wins |
//! | `HEAP_SAMPLER_DUMP_AT_EXIT` | path | none | `/var/tmp/app.heap.pb.gz` | writes a profile there when the process exits (`main` returns or `exit` is called; not on a signal or abort), and the peak profile beside it (`app.heap.peak.pb.gz`); a line on stderr says which view to open |
//! | `HEAP_SAMPLER_DUMP_DIR` | directory | none | `/var/tmp/app-heap` | writes `heap-sampler-<UTC time>-<pid>-<n>.pb.gz` there periodically (created if missing) |
//! | `HEAP_SAMPLER_DUMP_INTERVAL` | seconds, or a duration | `60` | `5m` | time between periodic profiles |
//! | `HEAP_SAMPLER_DUMP_KEEP` | files | `10` | `24` | periodic profiles kept: older ones are removed |
//! | `HEAP_SAMPLER_SYMBOLIZE` | `0` or `1` | `1` | `0` | `0` leaves symbolization to the collector (see [`set_symbolize`]) |
//!
//! Profiles are written to a temporary file in the target's real directory and renamed into place, so a reader
//! never sees half of one; a FIFO or a device (`/dev/stdout`) is written to in place, never replaced.
//! Periodic profiles are written by a thread started before `main`; a process forked later has none.

mod allocator;
// The process constructor, the exit and periodic dumps: where sampling is supported.
#[cfg(any(target_os = "linux", target_os = "android", target_vendor = "apple"))]
mod config;
mod delta;
mod error;
#[cfg(feature = "flamegraph")]
mod flamegraph;
mod folded;
mod fork;
pub mod http;
mod labels;
mod lock;
mod output;
mod peak;
mod pprof;
mod report;
mod sample_type;
mod sampler;
#[cfg(feature = "server")]
mod server;
mod shard;
mod stack;
mod table;
mod totals;

use std::path::Path;

pub use allocator::SamplingAllocator;
pub use delta::dump_delta_profile;
pub use error::Error;
#[cfg(feature = "flamegraph")]
pub use flamegraph::flamegraph_svg;
pub use folded::folded_stacks;
pub use labels::{
    DEFAULT_MAX_LABEL_SETS, LabelGuard, LabelSet, Labeled, enter_labels, labeled,
    set_max_label_sets, with_labels,
};
pub use peak::{dump_peak_profile, write_peak_profile};
pub use pprof::proto;
pub use pprof::symbols::PROFILER_FRAME_PREFIXES;
pub use pprof::symbols::{set_keep_std_frames, set_symbolize, symbolize};
pub use report::{Site, report, top_sites};
pub use sample_type::SampleType;
pub use sampler::{
    DEFAULT_SAMPLE_RATE, SAMPLING_SUPPORTED, sample_rate, set_sample_rate, set_seed,
};
#[cfg(feature = "server")]
pub use server::{ProfileServer, serve, serve_non_loopback};
pub use stack::{
    DEFAULT_STACK_DEPTH, MAX_STACK_DEPTH, Unwinder, max_stack_depth, set_max_stack_depth,
    set_unwinder, unwinder,
};
pub use table::buckets::{DEFAULT_MAX_BUCKETS, set_max_buckets};

/// The heap profile of the process's global [`SamplingAllocator`], as gzip-compressed pprof
/// (`profile.proto`), the format of Go's `/debug/pprof/heap`.
///
/// Sample types are `alloc_objects/count`, `alloc_space/bytes`, `inuse_objects/count` and
/// `inuse_space/bytes`, in that order and always present (`inuse_space` is the default); `period` is the
/// sample rate in bytes. Values are already unbiased estimates; `alloc_*` count since the program started and
/// are never reset, `inuse_*` are current. Functions, files, lines and inlined frames are symbolized in
/// process and mappings carry GNU build IDs, so `go tool pprof` needs neither the binary nor its debug info;
/// a mapping whose addresses could not all be named says so (`has_functions` false), and pprof then
/// symbolizes it from the binary given on its command line (see [`set_symbolize`]). The innermost frame of
/// every sample is the program's call into the allocator (see [`set_keep_std_frames`]).
///
/// # Errors
/// [`Error::NotInstalled`] when no [`SamplingAllocator`] is the global allocator ([`Error::Unsupported`]
/// on a target without sampling, see [`SAMPLING_SUPPORTED`]; so for every dump function); [`Error::Compress`]
/// if gzip fails.
pub fn dump_profile() -> Result<Vec<u8>, Error> {
    pprof::encode(&pprof::profile()?)
}

/// Writes [`dump_profile`]'s output to `path` (conventionally `*.pb.gz`), replacing the file atomically
/// (through a temporary file in its real directory, renamed over it; a symlink is followed and its target
/// replaced). A FIFO or a character device at `path` is written to in place.
///
/// # Errors
/// As [`dump_profile`], and [`Error::Write`] when the file cannot be written.
pub fn write_profile(path: impl AsRef<Path>) -> Result<(), Error> {
    output::write(path.as_ref(), &dump_profile()?)
}

/// Heap estimates and the profiler's own figures. Cheap to read (a few dozen relaxed loads, no lock, no
/// allocation), fit to export as metrics every second (see `examples/prometheus.rs`).
///
/// The heap estimates are sums of the same weights as the profile, so they carry the same noise: relative
/// standard error at most `sqrt(rate / bytes)`; exact in exact mode ([`set_sample_rate`]`(1)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// The sample rate in force, in bytes.
    pub sample_rate: usize,
    /// Estimated bytes allocated and not yet freed: the `inuse_space` of the whole profile.
    pub inuse_bytes: u64,
    /// Estimated objects allocated and not yet freed: the `inuse_objects` of the whole profile.
    pub inuse_objects: u64,
    /// Estimated bytes allocated since the program started: the `alloc_space` of the whole profile.
    pub alloc_bytes: u64,
    /// Estimated objects allocated since the program started: the `alloc_objects` of the whole profile.
    pub alloc_objects: u64,
    /// The highest [`Stats::inuse_bytes`] seen; [`dump_peak_profile`] shows what made it up (within a
    /// margin, see there).
    pub peak_inuse_bytes: u64,
    /// How many times the counts at a peak were copied for [`dump_peak_profile`] (bounded: see there).
    pub peak_copies: u64,
    /// Sampled allocations since the program started.
    pub samples: u64,
    /// Sampled allocations not yet freed.
    pub live_samples: usize,
    /// Buckets in the table: distinct stacks and label sets, per group of threads that sampled them (see
    /// [`set_max_buckets`]).
    pub buckets: usize,
    /// The cap on buckets (see [`set_max_buckets`]).
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
    /// to capture their stack (see [`Unwinder`]): their weight and labels are kept, their stack is not.
    pub stackless_samples: u64,
    /// Samples taken in a label scope whose label set was not kept because the cap on label sets was reached
    /// (see [`set_max_label_sets`]): their labels are dropped, their stack and weight are kept.
    pub dropped_labels: u64,
    /// Distinct label sets interned (see [`LabelSet`]).
    pub label_sets: usize,
    /// Frees (and reallocations) of sampled allocations, which subtracted their weight.
    pub sampled_frees: u64,
    /// Frees of unsampled pointers that shared a filter slot with a live sampled allocation and so looked the
    /// pointer up under a lock in vain. A free reads the filter block of its pointer's 4 MiB address region,
    /// 4,096 slots shared with the regions that hash to the same block: about `live / 4096` of the frees
    /// there look up in vain, `live` being the live sampled allocations of those regions (at the default
    /// rate at most about 8 per region, so `live_samples / 2^18` for a heap spread over many regions).
    pub filter_false_positives: u64,
    /// Bytes of the free filter: 2^18 bits (32 KiB), one 512-byte block per stripe of the live table, of
    /// which every free reads one bit (only touched pages are resident).
    pub filter_bytes: usize,
}

/// Heap estimates and the profiler's own figures (see [`Stats`]).
pub fn stats() -> Stats {
    let table = table::buckets::table_stats();
    let heap = totals::totals();
    let live_samples = table::live::live_count();
    Stats {
        sample_rate: sample_rate(),
        inuse_bytes: heap.inuse_bytes,
        inuse_objects: heap.inuse_objects,
        alloc_bytes: heap.alloc_bytes,
        alloc_objects: heap.alloc_objects,
        peak_inuse_bytes: peak::highest(),
        peak_copies: peak::copies(),
        samples: table.samples,
        live_samples,
        buckets: table.buckets,
        max_buckets: table.max_buckets,
        table_bytes: table.bytes,
        profiler_bytes: table.bytes
            + table::live::table_bytes()
            + table::live::FILTER_BYTES
            + labels::label_bytes()
            + peak::copy_bytes()
            + pprof::symbols::cache_bytes()
            + pprof::mappings::cache_bytes(),
        overflow_samples: table.overflow_samples,
        stackless_samples: stack::stackless_samples(),
        dropped_labels: labels::dropped_samples(),
        label_sets: labels::label_sets(),
        sampled_frees: table::live::sampled_frees(),
        filter_false_positives: table::live::false_positives(),
        filter_bytes: table::live::FILTER_BYTES,
    }
}
