//! Symbolization and the pprof format.
//!
//! Snapshots are symbolized here ([`symbols`], [`mappings`]), one dump at a time under the dump lock
//! ([`dumping`]), and rendered as `profile.proto` ([`proto`], [`builder`], gzipped by [`render`]). The
//! symbolizing half is what [`crate::HeapSnapshot`] is taken with; the rendering half reads snapshots.

pub(crate) mod builder;
pub(crate) mod mappings;
pub mod proto;
pub(crate) mod render;
pub(crate) mod symbols;
#[cfg(test)]
mod tests;

use crate::error::Error;
use crate::lock::{self, Lock};
use crate::sampler::{self, Guard};

/// Dumps run one at a time: they share the symbol and build-ID caches, which only they lock.
static DUMP: Lock<()> = Lock::new(());

/// Waits for a dump in progress to end and keeps others from starting (see
/// [`crate::fork::register_fork_handlers`]): the caches are only used under this lock.
pub(crate) fn hold_locks() {
    lock::hold(&DUMP);
}

/// Releases the lock taken by [`hold_locks`].
///
/// # Safety
/// As [`crate::lock::release`].
pub(crate) unsafe fn release_locks() {
    // SAFETY: forwarded from this function's contract.
    unsafe { lock::release(&DUMP) }
}

/// The function names of `addresses`, for pprof's remote symbolization (see
/// [`crate::http::symbol`]).
pub(crate) fn function_names(addresses: &[u64]) -> Result<Vec<(u64, std::sync::Arc<str>)>, Error> {
    dumping(|| symbols::function_names(addresses))
}

/// Runs `f` inside the profiler guard (nothing it allocates is sampled) and under the dump lock, with no
/// table lock held, if the profiler is installed: where the symbolizer may run.
pub(crate) fn dumping<R>(f: impl FnOnce() -> R) -> Result<R, Error> {
    sampler::check_installed()?;
    let _guard = Guard::enter();
    let _dump = DUMP.lock();
    Ok(f())
}

/// The time now, in nanoseconds since the Unix epoch, as pprof's `time_nanos`.
pub(crate) fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}
