//! Keeping the profiler's locks consistent across `fork`.

use std::sync::Once;

/// `Once` waits on a futex: no thread-local, no allocation, so it is usable inside the allocator.
static FORK_HANDLERS: Once = Once::new();

/// Registers the `fork` handlers once: before a fork, the forking thread takes every profiler lock (as glibc
/// does for malloc's arenas), so that the child never inherits a lock held by a thread it does not have, and
/// a half-updated table. Both sides release them after the fork. Called by the process constructor (see
/// [`crate::config`]), before `main`, and by every sampled allocation in case constructors did not run.
pub(crate) fn register_fork_handlers() {
    // Registered before any thread can see it done, so no fork can slip between the two.
    FORK_HANDLERS.call_once(|| {
        // SAFETY: the handlers are `extern "C"` functions without arguments that never unwind.
        #[cfg(unix)]
        unsafe {
            libc::pthread_atfork(Some(before_fork), Some(after_fork), Some(after_fork))
        };
        // A system without `fork` never calls them.
        #[cfg(not(unix))]
        let _ = (
            before_fork as extern "C" fn(),
            after_fork as extern "C" fn(),
        );
    });
}

extern "C" fn before_fork() {
    crate::sampler::Guard::hold_across_fork();
    // In the order every other path takes them: the dump lock, the label registry, the spare stack, the peak,
    // the tables.
    crate::pprof::hold_locks();
    crate::labels::hold_locks();
    // Its holder takes the peak's lock and table locks.
    #[cfg(all(target_arch = "x86_64", unix))]
    crate::stack::spare::hold_lock();
    crate::peak::hold_locks();
    crate::table::hold_locks();
}

extern "C" fn after_fork() {
    // SAFETY: this thread took these locks in `before_fork`, or is the child's only thread.
    unsafe {
        crate::table::release_locks();
        crate::peak::release_locks();
        #[cfg(all(target_arch = "x86_64", unix))]
        crate::stack::spare::release_lock();
        crate::labels::release_locks();
        crate::pprof::release_locks();
    }
    crate::sampler::Guard::release_after_fork();
}
