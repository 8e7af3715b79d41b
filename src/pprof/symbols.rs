//! In-process symbolization of a bucket snapshot: return addresses to functions, files, lines and inlined
//! frames, with the profiler's own frames and Rust's allocation shims trimmed from the top of every stack.

use std::collections::HashMap;
use std::sync::Arc;

use crate::labels::LabelSet;
use crate::lock::Lock;
use crate::table::buckets::{BucketSnapshot, Counts};

/// One source-level frame of a location.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Frame {
    /// Demangled, without the hash suffix, e.g. `channels::foo`.
    pub(crate) name: Arc<str>,
    /// As the linker knows it (mangled).
    pub(crate) system_name: Arc<str>,
    /// Source path, or "" when unknown.
    pub(crate) file: Arc<str>,
    /// 1-based line, or 0 when unknown.
    pub(crate) line: u32,
}

impl Frame {
    fn marker(name: &str) -> Frame {
        let name: Arc<str> = name.into();
        Frame {
            system_name: name.clone(),
            name,
            file: "".into(),
            line: 0,
        }
    }
}

/// A return address with its frames, innermost (inlined) first.
#[derive(Clone, Debug)]
pub(crate) struct ResolvedLocation {
    /// The call instruction's address (return address − 1); 0 for markers such as `[truncated]`.
    pub(crate) address: u64,
    pub(crate) frames: Vec<Frame>,
}

/// One stack and label set of the profile, and its counts.
#[derive(Clone, Debug)]
pub(crate) struct ResolvedSample {
    /// Indexes into [`Resolved::locations`], innermost first.
    pub(crate) locations: Vec<usize>,
    pub(crate) labels: LabelSet,
    pub(crate) counts: Counts,
}

/// A symbolized snapshot: what the pprof builder and the text report read.
#[derive(Clone, Debug, Default)]
pub(crate) struct Resolved {
    pub(crate) locations: Vec<ResolvedLocation>,
    pub(crate) samples: Vec<ResolvedSample>,
}

/// Marker frame that ends a stack cut at the maximum depth.
pub(crate) const TRUNCATED: &str = "[truncated]";
/// Marker frame of the samples charged to the overflow bucket.
pub(crate) const OVERFLOW: &str = "[bucket table full]";
/// Marker frame of samples whose stack held nothing of the program (an unwinder that stopped inside the
/// profiler): they are counted, not dropped.
pub(crate) const NOT_CAPTURED: &str = "[stack not captured]";

/// Frames of the profiler's allocation path and of the allocator shims that lead to it: nothing at or below
/// the outermost of them belongs to the program.
const PROFILER_PREFIXES: &[&str] = &[
    "heap_sampler::allocator::",
    "<heap_sampler::allocator::",
    "heap_sampler::sampler::",
    "heap_sampler::stack::",
    "heap_sampler::table::",
    "__rust_alloc",
    "__rust_realloc",
    "__rust_dealloc",
    "__rustc::__rust_alloc",
    "__rustc::__rust_realloc",
    "__rustc::__rust_dealloc",
    "__rustc::__rdl_",
    "__rustc::__rg_",
    "__rdl_",
    "__rg_",
];

/// Frames of the allocation path above the shims, and of the unwinder the profiler calls (when it is not
/// skipped by address): trimmed where they lead a stack.
const ALLOCATION_PREFIXES: &[&str] = &[
    "backtrace::backtrace::",
    "_Unwind_Backtrace",
    "alloc::alloc::",
    "<alloc::alloc::",
    "std::alloc::",
    "<std::alloc::",
    "std::sys::alloc::",
    "std::sys::pal::unix::alloc::",
];

fn is_profiler(frame: &Frame) -> bool {
    PROFILER_PREFIXES.iter().any(|p| frame.name.starts_with(p))
}

fn is_internal(frame: &Frame) -> bool {
    is_profiler(frame)
        || ALLOCATION_PREFIXES
            .iter()
            .any(|p| frame.name.starts_with(p))
}

/// Symbols of each return address seen, kept across dumps (code does not move). Only locked under the dump
/// lock.
static CACHE: Lock<Option<HashMap<usize, Arc<[Frame]>>>> = Lock::new(None);

/// The frames of return address `ip`, innermost first, with internal frames removed from the inner end.
fn frames_of(cache: &mut HashMap<usize, Arc<[Frame]>>, ip: usize) -> Arc<[Frame]> {
    cache
        .entry(ip)
        .or_insert_with(|| {
            let mut frames = Vec::new();
            // `resolve` looks up `ip − 1`, the call instruction, as a return address needs.
            backtrace::resolve(ip as *mut core::ffi::c_void, |symbol| {
                let Some(name) = symbol.name() else { return };
                frames.push(Frame {
                    name: format!("{name:#}").into(),
                    system_name: String::from_utf8_lossy(name.as_bytes()).into(),
                    file: symbol
                        .filename()
                        .map(|f| f.to_string_lossy().into())
                        .unwrap_or_else(|| "".into()),
                    line: symbol.lineno().unwrap_or(0),
                });
            });
            let inner_internal = frames.iter().take_while(|f| is_internal(f)).count();
            if inner_internal == frames.len() && !frames.is_empty() {
                // Wholly internal: keep the frames, the location is trimmed as a whole (see `resolve`).
                return frames.into();
            }
            frames.drain(..inner_internal);
            frames.into()
        })
        .clone()
}

/// Symbolizes `buckets`: one location per distinct return address, one sample per distinct trimmed stack and
/// label set. Must run inside the profiler guard.
pub(crate) fn resolve(buckets: &[BucketSnapshot]) -> Resolved {
    let mut cache = CACHE.lock();
    let cache = cache.get_or_insert_with(HashMap::new);
    let mut resolved = Resolved::default();
    let mut location_of: HashMap<usize, usize> = HashMap::new();
    let mut marker_of: HashMap<&'static str, usize> = HashMap::new();
    let mut sample_of: HashMap<(Vec<usize>, LabelSet), usize> = HashMap::new();

    for bucket in buckets {
        let mut stack = Vec::with_capacity(bucket.frames.len() + 1);
        let symbolized: Vec<(usize, Arc<[Frame]>)> = bucket
            .frames
            .iter()
            .map(|&ip| (ip, frames_of(cache, ip)))
            .collect();
        // Everything up to the outermost profiler frame is the profiler (whatever the unwinder reported
        // around it), then the allocation functions that called the shims.
        let past_profiler = symbolized
            .iter()
            .rposition(|(_, frames)| frames.iter().any(is_profiler))
            .map_or(0, |i| i + 1);
        let program = symbolized[past_profiler..]
            .iter()
            .skip_while(|(_, frames)| frames.first().is_some_and(is_internal));
        for (ip, frames) in program {
            let ip = *ip;
            let index = *location_of.entry(ip).or_insert_with(|| {
                resolved.locations.push(ResolvedLocation {
                    address: (ip as u64).saturating_sub(1),
                    frames: frames.to_vec(),
                });
                resolved.locations.len() - 1
            });
            stack.push(index);
        }
        let marker = if bucket.overflow {
            Some(OVERFLOW)
        } else if bucket.truncated {
            Some(TRUNCATED)
        } else if stack.is_empty() {
            Some(NOT_CAPTURED)
        } else {
            None
        };
        if let Some(marker) = marker {
            let index = *marker_of.entry(marker).or_insert_with(|| {
                resolved.locations.push(ResolvedLocation {
                    address: 0,
                    frames: vec![Frame::marker(marker)],
                });
                resolved.locations.len() - 1
            });
            stack.push(index);
        }
        let key = (stack, bucket.labels);
        match sample_of.get(&key) {
            Some(&i) => resolved.samples[i].counts.merge(&bucket.counts),
            None => {
                sample_of.insert(key.clone(), resolved.samples.len());
                resolved.samples.push(ResolvedSample {
                    locations: key.0,
                    labels: bucket.labels,
                    counts: bucket.counts,
                });
            }
        }
    }
    resolved
}
