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
    /// This target does not sample (see [`crate::SAMPLING_SUPPORTED`]): the allocator passes every call
    /// through and there is no profile to take.
    Unsupported,
    /// Writing the profile to `path` failed.
    Write {
        /// Where the profile was to be written.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Compressing the profile failed.
    Compress(io::Error),
    /// The writer given to [`crate::HeapSnapshot::write_pprof`] failed.
    Output(io::Error),
    /// A sample type name that is none of `alloc_objects`, `alloc_space`, `inuse_objects`, `inuse_space`.
    UnknownSampleType(String),
    /// Rendering a flamegraph failed.
    #[cfg(feature = "flamegraph")]
    Flamegraph(io::Error),
    /// [`crate::serve`] was given an address that is not loopback: profiles show the program's code and
    /// allocation patterns to whoever can connect.
    #[cfg(feature = "server")]
    NotLoopback(std::net::SocketAddr),
    /// The profile server could not listen on `addr`.
    #[cfg(feature = "server")]
    Bind {
        /// The address asked for, as given.
        addr: String,
        /// The underlying error.
        source: io::Error,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NotInstalled => f.write_str(
                "no heap profile: SamplingAllocator is not the global allocator; add \
                 `#[global_allocator] static ALLOC: heap_sampler::SamplingAllocator<std::alloc::System> = \
                 heap_sampler::SamplingAllocator::new(std::alloc::System);` to the binary",
            ),
            Error::Unsupported => write!(
                f,
                "no heap profile: heap-sampler does not sample on this target ({} {}), where \
                 SamplingAllocator only passes allocations through; profile on Linux or macOS",
                std::env::consts::ARCH,
                std::env::consts::OS
            ),
            Error::Write { path, source } => write!(
                f,
                "cannot write the heap profile to {}: {source}; choose a path in a writable directory",
                path.display()
            ),
            Error::Compress(source) => write!(f, "cannot gzip the heap profile: {source}"),
            Error::Output(source) => write!(
                f,
                "cannot write the heap profile to its writer: {source}; check where the writer leads \
                 (a full disk, a closed connection)"
            ),
            Error::UnknownSampleType(name) => write!(
                f,
                "unknown sample type {name:?}; use alloc_objects, alloc_space, inuse_objects or inuse_space"
            ),
            #[cfg(feature = "flamegraph")]
            Error::Flamegraph(source) => write!(f, "cannot render the flamegraph: {source}"),
            #[cfg(feature = "server")]
            Error::NotLoopback(addr) => write!(
                f,
                "refusing to serve heap profiles on {addr}, which is not a loopback address: anyone who can \
                 connect would see the program's code and allocations; use 127.0.0.1 or [::1], or call \
                 serve_non_loopback to expose them on purpose"
            ),
            #[cfg(feature = "server")]
            Error::Bind { addr, source } => write!(
                f,
                "cannot serve heap profiles on {addr}: {source}; choose a free port, or port 0 for any"
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::NotInstalled | Error::Unsupported | Error::UnknownSampleType(_) => None,
            Error::Write { source, .. } | Error::Compress(source) | Error::Output(source) => {
                Some(source)
            }
            #[cfg(feature = "flamegraph")]
            Error::Flamegraph(source) => Some(source),
            #[cfg(feature = "server")]
            Error::NotLoopback(_) => None,
            #[cfg(feature = "server")]
            Error::Bind { source, .. } => Some(source),
        }
    }
}
