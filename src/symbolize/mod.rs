//! Symbolization: the addresses of a snapshot named in process ([`symbols`]) within the files mapped into the
//! process, with their build IDs ([`mappings`]), one dump at a time under the dump lock ([`dumping`]). What
//! [`crate::HeapSnapshot`] is taken with; the renderers read its result.

pub(crate) mod mappings;
pub(crate) mod symbols;

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
