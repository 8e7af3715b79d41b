//! The heap profile at peak: what was in use, by stack and labels, when the estimated in-use bytes were
//! highest — the question asked after an out-of-memory kill, answered at sampling cost.
//!
//! The peak tracker ([`crate::table::peak`]) keeps the counts at the peak; this renders them.
//!
//! # Accuracy
//!
//! The profile is an estimate at the peak of the estimate, with the same noise as any profile. The kept copy
//! is the highest within the margin: if a later peak exceeds it by less than the margin, the later one is not
//! copied (its size is in [`crate::Stats::peak_inuse_bytes`]). Stripes are copied one after another while
//! other threads go on, as in every dump. Peaks below 4 × the sample rate are copied only by a dump taken
//! while they last.

use std::borrow::Cow;
use std::path::Path;

use crate::Error;
use crate::pprof::{self, Dump};
use crate::report::human_bytes;
use crate::sampler::Guard;
use crate::table::{UNITS, peak};

/// The heap profile at the peak of the estimated in-use bytes, as gzip-compressed pprof (`profile.proto`),
/// in the format of [`crate::dump_profile`].
///
/// Its samples are the stacks (and labels) that held memory at the peak: `inuse_objects` and `inuse_space`
/// are what was in use then, `alloc_objects` and `alloc_space` what had been allocated from the start until
/// then. The profile's time (`time_nanos`, shown by `go tool pprof` as `Time:`) is when the peak was
/// recorded, and its comments (`go tool pprof -comments`) give that time and the in-use bytes of the peak.
/// A peak is recorded when the first sampled allocation is freed after the estimate reached it, if it exceeds
/// the peak already recorded by 1/32 plus 4 × the sample rate; a dump while the estimate is at its highest
/// records the present. Before any peak is recorded the profile has no samples, and a comment says so.
/// Neither Go's nor jemalloc's heap profiler can answer this; dhat can, by tracking every allocation.
///
/// # Errors
/// [`Error::NotInstalled`] when no [`crate::SamplingAllocator`] is the global allocator; [`Error::Compress`]
/// if gzip fails.
pub fn dump_peak_profile() -> Result<Vec<u8>, Error> {
    pprof::encode(&profile()?)
}

/// Writes [`dump_peak_profile`]'s output to `path` (conventionally `*.pb.gz`), as [`crate::write_profile`]
/// does: atomically for a regular file, in place for a FIFO or a device.
///
/// # Errors
/// As [`dump_peak_profile`], and [`Error::Write`] when the file cannot be written.
pub fn write_peak_profile(path: impl AsRef<Path>) -> Result<(), Error> {
    crate::output::write(path.as_ref(), &dump_peak_profile()?)
}

/// The peak profile, to encode.
fn profile() -> Result<Dump, Error> {
    let take_copy = |guard: &Guard| {
        let (copy, time_nanos) = peak::kept(guard);
        (
            Cow::Owned(copy.snapshot(guard)),
            (copy.inuse_space(), time_nanos),
        )
    };
    pprof::with_buckets(take_copy, |resolved, (inuse, time_nanos)| {
        let mut comments = vec![
            pprof::version_comment(),
            "peak heap profile: inuse_* were in use at the peak of the estimated in-use bytes, alloc_* had \
             been allocated from the start until then"
                .to_string(),
        ];
        if time_nanos == 0 {
            comments.push(
                "no peak recorded yet: one is recorded once the estimated in-use bytes exceed 4 x the \
                 sample rate and then fall, or at a dump while they are at their highest"
                    .to_string(),
            );
        } else {
            let bytes = (inuse as f64 / UNITS).round() as i64;
            comments.push(format!(
                "peak: {bytes} bytes ({}) in use at {}.{:09} s since the Unix epoch",
                human_bytes(bytes),
                time_nanos / 1_000_000_000,
                time_nanos % 1_000_000_000,
            ));
        }
        comments.push(format!(
            "highest estimated in-use bytes seen: {}; a peak replaces the recorded one when it exceeds it by \
             1/32 plus 4 x the sample rate",
            peak::highest()
        ));
        pprof::build(resolved, time_nanos, &comments)
    })
}
