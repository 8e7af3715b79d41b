//! The crate's error type.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// What can go wrong when taking or writing a profile. The allocator itself never fails on the profiler's
/// account: it keeps allocating whatever these report.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// No allocation has gone through a [`crate::SamplingAllocator`]: it is not the global allocator.
    NotInstalled,
    /// Writing the profile to `path` failed.
    Write {
        /// Where the profile was to be written.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Compressing the profile failed.
    Compress(io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NotInstalled => f.write_str(
                "no heap profile: SamplingAllocator is not the global allocator; add \
                 `#[global_allocator] static ALLOC: heap_sampler::SamplingAllocator<std::alloc::System> = \
                 heap_sampler::SamplingAllocator::new(std::alloc::System);` to the binary",
            ),
            Error::Write { path, source } => write!(
                f,
                "cannot write the heap profile to {}: {source}; choose a path in a writable directory",
                path.display()
            ),
            Error::Compress(source) => write!(f, "cannot gzip the heap profile: {source}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::NotInstalled => None,
            Error::Write { source, .. } | Error::Compress(source) => Some(source),
        }
    }
}
