//! The profiler's lock, and keeping its locks consistent across `fork`.

use core::sync::atomic::{AtomicBool, Ordering::Relaxed};

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

static FORK_HANDLERS: AtomicBool = AtomicBool::new(false);

/// Registers the `fork` handlers once: before a fork, the forking thread takes every profiler lock (as glibc
/// does for malloc's arenas), so that the child never inherits a lock held by a thread it does not have, and
/// a half-updated table. Both sides release them after the fork.
pub(crate) fn register_fork_handlers() {
    if FORK_HANDLERS.load(Relaxed) || FORK_HANDLERS.swap(true, Relaxed) {
        return;
    }
    // SAFETY: the handlers are `extern "C"` functions without arguments that never unwind.
    unsafe { libc::pthread_atfork(Some(before_fork), Some(after_fork), Some(after_fork)) };
}

extern "C" fn before_fork() {
    crate::sampler::Guard::hold_across_fork();
    crate::pprof::hold_locks();
    crate::table::hold_locks();
}

extern "C" fn after_fork() {
    // SAFETY: this thread took these locks in `before_fork`, or is the child's only thread.
    unsafe {
        crate::table::release_locks();
        crate::pprof::release_locks();
    }
    crate::sampler::Guard::release_after_fork();
}
