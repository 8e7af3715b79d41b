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
use crate::lock::{AnyLock, Lock, Rank};
use crate::sampler::{self, Guard};

/// Dumps run one at a time: they share the symbol and build-ID caches, which only they lock.
static DUMP: Lock<()> = Lock::new(Rank::Dump, ());

/// The dump lock, for the `fork` handlers: holding it waits for a dump in progress to end and keeps others
/// from starting.
pub(crate) fn dump_lock() -> &'static dyn AnyLock {
    &DUMP
}

/// The function names of `addresses`, for pprof's remote symbolization (see
/// [`crate::http::symbol`]).
pub(crate) fn function_names(addresses: &[u64]) -> Result<Vec<(u64, std::sync::Arc<str>)>, Error> {
    dumping(|guard| symbols::function_names(guard, addresses))
}

/// Runs `f` inside the profiler guard (nothing it allocates is sampled) and under the dump lock, with no
/// table lock held, if the profiler is installed: where the symbolizer may run. `f` gets the proof that it
/// runs inside the guard.
pub(crate) fn dumping<R>(f: impl FnOnce(&Guard) -> R) -> Result<R, Error> {
    sampler::check_installed()?;
    let guard = Guard::inside();
    let _dump = DUMP.lock();
    Ok(f(&guard))
}
