//! The profiler's lock.

/// The profiler's lock: a spin lock that yields the CPU while it waits.
///
/// Not `parking_lot::Mutex`: when contended, it parks the thread, and parking first initialises a
/// thread-local with a destructor, which registers through `__cxa_thread_atexit_impl` under the dynamic
/// loader's lock. A thread that allocates inside a `dl_iterate_phdr` callback (holding the loader's write
/// lock) while another thread is in `dlopen` (holding the load lock, waiting for the write lock) then
/// deadlocks. Table stripes are held for a few hundred nanoseconds, so spinning with `sched_yield` costs little;
/// it touches no thread-local and never allocates.
pub(crate) type Lock<T> = spin::mutex::SpinMutex<T, spin::relax::Yield>;

/// Takes `lock` and keeps it taken beyond this call, until [`release`].
pub(crate) fn hold<T>(lock: &Lock<T>) {
    core::mem::forget(lock.lock());
}

/// Releases a lock taken with [`hold`].
///
/// # Safety
/// The calling thread took `lock` with [`hold`] (or is the only thread of a child forked while it held it),
/// and no guard of it is alive.
pub(crate) unsafe fn release<T>(lock: &Lock<T>) {
    // SAFETY: per this function's contract, the lock is held by us and no guard refers to it.
    unsafe { lock.force_unlock() }
}
