//! A [`HeapSnapshot`] as gzip-compressed pprof (`profile.proto`), into any writer; and the dump functions
//! that take a snapshot and render it so in one call.

use std::io::{self, Write};
use std::path::Path;
use std::time::Duration;

use flate2::Compression;
use flate2::write::GzEncoder;

use super::builder::{self, Dump};
use super::proto::Profile;
use crate::delta::DeltaWindow;
use crate::error::Error;
use crate::output;
use crate::report::human_bytes;
use crate::sample_type::SampleType;
use crate::sampler::Guard;
use crate::snapshot::{HeapSnapshot, Origin};
use crate::symbolize::symbols::ResolvedSample;

impl HeapSnapshot {
    /// Writes the snapshot to `out` as gzip-compressed pprof (`profile.proto`), the format of Go's
    /// `/debug/pprof/heap`, as Go's `pprof.Lookup("heap").WriteTo(w, 0)` does; `out` is flushed at the end.
    /// The encoding goes to the compressor as it is made, and the compressor's output to `out`: no copy of
    /// the whole profile is held. No profiler lock is held meanwhile; what is allocated meanwhile, by `out`
    /// too, is not sampled.
    ///
    /// Sample types are `alloc_objects/count`, `alloc_space/bytes`, `inuse_objects/count` and
    /// `inuse_space/bytes`, in that order and always present; the default is the snapshot's (see
    /// [`HeapSnapshot::with_default_sample_type`]); `period` is the sample rate in bytes. Values are already
    /// unbiased estimates. Functions, files, lines and inlined frames are symbolized and mappings carry GNU
    /// build IDs, so `go tool pprof` needs neither the binary nor its debug info (see
    /// [`crate::dump_profile`] for what it does when some addresses could not be named).
    ///
    /// # Errors
    /// [`Error::Output`] when `out` fails; [`Error::Compress`] if gzip fails.
    pub fn write_pprof(&self, out: impl Write) -> Result<(), Error> {
        let _guard = Guard::enter();
        encode(&self.dump(&self.resolved.samples), out)
    }

    /// The snapshot as gzip-compressed pprof bytes (see [`HeapSnapshot::write_pprof`]).
    ///
    /// # Errors
    /// [`Error::Compress`] if gzip fails.
    pub fn to_pprof(&self) -> Result<Vec<u8>, Error> {
        let _guard = Guard::enter();
        let mut bytes = Vec::new();
        encode(&self.dump(&self.resolved.samples), &mut bytes)?;
        Ok(bytes)
    }

    /// Writes the snapshot as gzip-compressed pprof (see [`HeapSnapshot::write_pprof`]) to `path`
    /// (conventionally `*.pb.gz`), as [`crate::write_profile`] does: a regular file is replaced atomically,
    /// through a temporary file in its real directory renamed over it (a symlink is followed and its target
    /// replaced), so a reader never sees half a profile; a FIFO or a character device is written to in place.
    ///
    /// # Errors
    /// [`Error::Write`], naming `path`, when the file cannot be written; [`Error::Compress`] if gzip fails.
    pub fn write_pprof_file(&self, path: impl AsRef<Path>) -> Result<(), Error> {
        output::write(path.as_ref(), &self.to_pprof()?)
    }

    /// As [`HeapSnapshot::to_pprof`], dropping the snapshot's locations as soon as the profile's messages are
    /// built from them, before the profile is compressed: what one-call dumps use.
    pub(crate) fn into_pprof(mut self) -> Result<Vec<u8>, Error> {
        let _guard = Guard::enter();
        let samples = std::mem::take(&mut self.resolved.samples);
        let dump = self.dump(&samples);
        drop(self);
        let mut bytes = Vec::new();
        encode(&dump, &mut bytes)?;
        Ok(bytes)
    }

    /// The profile of the snapshot's locations and mappings with `samples`, its header and comments.
    fn dump<'a>(&self, samples: &'a [ResolvedSample]) -> Dump<'a> {
        let comments: Vec<String> = self
            .comments()
            .into_iter()
            .chain(self.resolved.notes.iter().cloned())
            .collect();
        let header = builder::Header {
            rate: self.rate,
            time_nanos: self.time_nanos,
            comments: &comments,
        };
        let mut dump = builder::build(&self.resolved, samples, &header);
        if let Origin::Delta { duration_nanos } = self.origin {
            dump.profile.duration_nanos = duration_nanos;
        }
        set_default(&mut dump.profile, self.default_sample_type);
        dump
    }

    /// The profile's own comments (`go tool pprof -comments`), before what the symbolizer noted: who wrote
    /// it, how to read its values' error, and for a peak what it shows and when the peak was.
    pub(crate) fn comments(&self) -> Vec<String> {
        let mut comments = vec![
            format!("heap-sampler {}", env!("CARGO_PKG_VERSION")),
            error_comment(self.rate),
        ];
        let Origin::Peak {
            inuse_bytes,
            highest,
        } = self.origin
        else {
            return comments;
        };
        comments.push(
            "peak heap profile: inuse_* were in use at the peak of the estimated in-use bytes, alloc_* had \
             been allocated from the start until then"
                .to_string(),
        );
        let time = self.time_nanos;
        if time == 0 {
            comments.push(
                "no peak recorded yet: one is recorded once the estimated in-use bytes exceed 4 x the \
                 sample rate and then fall, or at a dump while they are at their highest"
                    .to_string(),
            );
        } else {
            comments.push(format!(
                "peak: {inuse_bytes} bytes ({}) in use at {}.{:09} s since the Unix epoch",
                human_bytes(inuse_bytes),
                time / 1_000_000_000,
                time % 1_000_000_000,
            ));
        }
        comments.push(format!(
            "highest estimated in-use bytes seen: {highest}; a peak replaces the recorded one when it exceeds \
             it by 1/32 plus 4 x the sample rate",
        ));
        comments
    }
}

/// How to read a profile's values at sample rate `rate`: pprof has no field for a value's error, so a comment
/// gives the bound, and points at the text report, which gives each site's own.
fn error_comment(rate: usize) -> String {
    if rate <= 1 {
        return "exact mode (sample rate 1): every allocation is recorded, the values are exact"
            .to_string();
    }
    format!(
        "values are unbiased estimates from allocations sampled every {rate} bytes on average: a value of B \
         bytes has a relative standard error of at most sqrt({rate} / B), and two values differ by more than \
         noise only when their gap exceeds about twice sqrt(se1^2 + se2^2); the text report (?debug=1, \
         heap_sampler::report) gives each site's standard error"
    )
}

/// Makes `sample_type` the profile's default sample type, the one `go tool pprof` shows unless told otherwise.
fn set_default(profile: &mut Profile, sample_type: SampleType) {
    // Every sample type's name is in the string table: the profile declares all four.
    if let Some(i) = profile
        .string_table
        .iter()
        .position(|s| s == sample_type.name())
    {
        profile.default_sample_type = i as i64;
    }
}

/// Encodes and gzips `dump` into `out`, and flushes `out`.
fn encode(dump: &Dump<'_>, out: impl Write) -> Result<(), Error> {
    let mut gz = GzEncoder::new(
        Watched {
            inner: out,
            failed: false,
        },
        Compression::default(),
    );
    dump.write(&mut gz)
        .and_then(|()| gz.try_finish())
        .and_then(|()| gz.get_mut().flush())
        .map_err(|error| match gz.get_ref().failed {
            true => Error::Output(error),
            false => Error::Compress(error),
        })
}

/// A writer that remembers whether the writer it wraps failed, to tell the caller's writer's errors from
/// the compressor's.
struct Watched<W> {
    inner: W,
    failed: bool,
}

impl<W: Write> Write for Watched<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(buf);
        self.failed |= written
            .as_ref()
            .is_err_and(|e| e.kind() != io::ErrorKind::Interrupted);
        written
    }

    fn flush(&mut self) -> io::Result<()> {
        let flushed = self.inner.flush();
        self.failed |= flushed
            .as_ref()
            .is_err_and(|e| e.kind() != io::ErrorKind::Interrupted);
        flushed
    }
}

/// The heap profile of the process's global [`crate::SamplingAllocator`], as gzip-compressed pprof
/// (`profile.proto`), the format of Go's `/debug/pprof/heap`: [`HeapSnapshot::current`] rendered by
/// [`HeapSnapshot::to_pprof`].
///
/// Sample types are `alloc_objects/count`, `alloc_space/bytes`, `inuse_objects/count` and
/// `inuse_space/bytes`, in that order and always present (`inuse_space` is the default); `period` is the
/// sample rate in bytes. Values are already unbiased estimates; `alloc_*` count since the program started and
/// are never reset, `inuse_*` are current. Functions, files, lines and inlined frames are symbolized in
/// process and mappings carry GNU build IDs, so `go tool pprof` needs neither the binary nor its debug info;
/// a mapping whose addresses could not all be named says so (`has_functions` false), and pprof then
/// symbolizes it from the binary given on its command line (see [`crate::set_symbolize`]). The innermost
/// frame of every sample is the program's call into the allocator (see [`crate::set_keep_std_frames`]).
///
/// # Errors
/// [`Error::NotInstalled`] when no [`crate::SamplingAllocator`] is the global allocator
/// ([`Error::Unsupported`] on a target without sampling, see [`crate::SAMPLING_SUPPORTED`]; so for every
/// dump function); [`Error::Compress`] if gzip fails.
pub fn dump_profile() -> Result<Vec<u8>, Error> {
    HeapSnapshot::current()?.into_pprof()
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

/// The heap profile at the peak of the estimated in-use bytes, as gzip-compressed pprof (`profile.proto`),
/// in the format of [`dump_profile`]: [`HeapSnapshot::peak`] rendered by [`HeapSnapshot::to_pprof`].
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
    HeapSnapshot::peak()?.into_pprof()
}

/// Writes [`dump_peak_profile`]'s output to `path` (conventionally `*.pb.gz`), as [`write_profile`] does:
/// atomically for a regular file, in place for a FIFO or a device.
///
/// # Errors
/// As [`dump_peak_profile`], and [`Error::Write`] when the file cannot be written.
pub fn write_peak_profile(path: impl AsRef<Path>) -> Result<(), Error> {
    output::write(path.as_ref(), &dump_peak_profile()?)
}

/// A delta profile: what each stack allocated during the next `window` (`alloc_objects`, `alloc_space`), and
/// what it holds at the end of it (`inuse_objects`, `inuse_space`), as gzip-compressed pprof whose
/// `duration_nanos` is the window; as Go's `/debug/pprof/allocs?seconds=N`, except that in-use values are
/// current rather than a (possibly negative) change. The default sample type is `alloc_space`. Blocks the
/// calling thread for `window`; a [`DeltaWindow`] gives the same without blocking.
///
/// Cumulative profiles ([`dump_profile`]) count since the program started, so a spike an hour in is
/// hard to see in them; a delta profile shows it alone.
///
/// # Errors
/// [`Error::NotInstalled`] when no [`crate::SamplingAllocator`] is the global allocator (at once, without
/// waiting); [`Error::Compress`] if gzip fails.
pub fn dump_delta_profile(window: Duration) -> Result<Vec<u8>, Error> {
    let started = DeltaWindow::start()?;
    std::thread::sleep(window);
    started.finish()?.into_pprof()
}
