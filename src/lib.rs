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
//!     let path = std::env::temp_dir().join(format!("heap-{}.pb.gz", std::process::id()));
//!     heap_sampler::write_profile(&path)?;
//!     println!("{}", heap_sampler::report(10)?);
//!     # std::fs::remove_file(&path).unwrap();
//!     drop(kept);
//!     Ok(())
//! }
//! ```
//!
//! Each thread counts allocated bytes down to an exponentially distributed gap whose mean is the sample rate
//! (default 512 KiB, as Go's `runtime.MemProfileRate`); the allocation that crosses it is sampled and weighted
//! by the inverse of its probability of being sampled, so every figure is an unbiased estimate. A site's
//! estimate of `B` allocated bytes has a relative standard error of at most `sqrt(rate / B)`;
//! [`set_sample_rate`]`(1)` records every allocation exactly, for tests.
//!
//! # Where to read on
//!
//! - [`SamplingAllocator`]: how sampling works, what it costs, and why it is safe to leave on.
//! - [`HeapSnapshot`]: a profile taken once (the heap now, at its peak, or over a [`DeltaWindow`]) and
//!   rendered as pprof into any writer, text, sites, folded stacks or a flamegraph; [`dump_profile`],
//!   [`write_profile`], [`report`], [`top_sites`], [`folded_stacks`] and `flamegraph_svg` (feature
//!   `flamegraph`) are one-call conveniences over it.
//! - [`dump_peak_profile`]: the profile at the highest estimated in-use bytes, after it was freed.
//! - [`dump_delta_profile`]: what was allocated during a window.
//! - [`LabelSet`], [`with_labels`], [`enter_labels`], [`labeled`]: heap profiles by tenant, endpoint or
//!   component, across `.await` too; `tracing::HeapLabelsLayer` (feature `tracing`) takes them from the
//!   fields of tracing spans.
//! - [`stats`]: heap estimates and the profiler's own figures, cheap enough to export as metrics.
//! - [`http`]: Go's `/debug/pprof` endpoints for any HTTP framework; `axum::router` (feature `axum`) mounts
//!   them in an axum app, `actix` (feature `actix`) makes their response an actix-web `Responder`, and
//!   `serve` (feature `server`) runs a small server of its own.
//! - [`env`](mod@env): configuration by environment variables, for operators who cannot rebuild the program.
//! - [`set_unwinder`], [`set_max_stack_depth`], [`set_max_buckets`], [`set_symbolize`]: tuning.
//! - [`SAMPLING_SUPPORTED`]: where sampling works; elsewhere the allocator passes through.

#[cfg(feature = "actix")]
pub mod actix;
mod allocator;
#[cfg(feature = "axum")]
pub mod axum;
mod clock;
// The process constructor, the exit and periodic dumps: where sampling is supported.
#[cfg(any(target_os = "linux", target_os = "android", target_vendor = "apple"))]
mod config;
mod delta;
pub mod env;
mod error;
#[cfg(feature = "flamegraph")]
mod flamegraph;
mod folded;
mod fork;
// The in-use bytes over the last minutes, recorded on the runtime of the server that shows them.
mod history;
pub mod http;
mod labels;
mod lock;
mod mark;
mod output;
mod pprof;
mod report;
mod sample_type;
mod sampler;
#[cfg(feature = "server")]
mod server;
// What the built-in server and the axum router share: windows on a timer, bounded windows and dumps.
#[cfg(any(feature = "server", feature = "axum"))]
mod serving;
mod shard;
mod snapshot;
mod stack;
mod stats;
mod symbolize;
mod sync;
mod table;
mod totals;
#[cfg(feature = "tracing")]
pub mod tracing;

pub use allocator::SamplingAllocator;
pub use delta::DeltaWindow;
pub use error::Error;
#[cfg(feature = "flamegraph")]
pub use flamegraph::flamegraph_svg;
pub use folded::folded_stacks;
pub use labels::{
    DEFAULT_MAX_LABEL_SETS, LabelGuard, LabelSet, Labeled, enter_labels, labeled,
    set_max_label_sets, with_labels,
};
pub use pprof::proto;
pub use pprof::render::{
    dump_delta_profile, dump_peak_profile, dump_profile, write_peak_profile, write_profile,
};
pub use report::{Site, report, top_sites};
pub use sample_type::SampleType;
pub use sampler::{
    DEFAULT_SAMPLE_RATE, SAMPLING_SUPPORTED, sample_rate, set_sample_rate, set_seed,
};
#[cfg(feature = "server")]
pub use server::{ProfileServer, serve, serve_non_loopback};
pub use snapshot::HeapSnapshot;
pub use stack::{
    DEFAULT_STACK_DEPTH, MAX_STACK_DEPTH, Unwinder, max_stack_depth, set_max_stack_depth,
    set_unwinder, unwinder,
};
pub use stats::{Stats, stats};
pub use symbolize::symbols::PROFILER_FRAME_PREFIXES;
pub use symbolize::symbols::{set_keep_std_frames, set_symbolize, symbolize};
pub use table::buckets::{DEFAULT_MAX_BUCKETS, set_max_buckets};
