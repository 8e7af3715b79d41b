//! Keeping the profiler's locks consistent across `fork`.

use std::sync::Once;

use crate::lock::{AnyLock, Rank};

/// `Once` waits on a futex: no thread-local, no allocation, so it is usable inside the allocator.
static FORK_HANDLERS: Once = Once::new();

/// Registers the `fork` handlers once: before a fork, the forking thread takes every profiler lock, in rank
/// order (see [`crate::lock::Rank`]), as glibc does for malloc's arenas, so that the child never inherits a lock held by a thread it does not have, and
/// a half-updated table. Both sides release them after the fork. Called by the process constructor (see
/// [`crate::config`]), before `main`, and by every sampled allocation in case constructors did not run.
#[inline]
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
    for rank in Rank::ALL {
        locks_of(rank, &mut |lock| lock.hold());
    }
    crate::table::live::holding_every_stripe(true);
}

extern "C" fn after_fork() {
    crate::table::live::holding_every_stripe(false);
    for rank in Rank::ALL.into_iter().rev() {
        // SAFETY: this thread took these locks in `before_fork`, or is the child's only thread.
        locks_of(rank, &mut |lock| unsafe { lock.release() });
    }
    crate::sampler::Guard::release_after_fork();
}

/// Shows `f` every profiler lock of `rank`: the one list of the locks, by rank, that the handlers take.
fn locks_of(rank: Rank, f: &mut dyn FnMut(&'static dyn AnyLock)) {
    match rank {
        Rank::Dump => f(crate::symbolize::dump_lock()),
        // Apple's mappings keep no lock of their own.
        Rank::MappingFiles => {
            #[cfg(not(target_vendor = "apple"))]
            f(crate::symbolize::mappings::files_lock());
        }
        Rank::SymbolCache => f(crate::symbolize::symbols::cache_lock()),
        Rank::LabelRegistry => f(crate::labels::registry_lock()),
        // Only where there is a spare stack.
        Rank::SpareStack => {
            #[cfg(all(target_arch = "x86_64", unix))]
            f(crate::stack::spare::lock());
        }
        Rank::Peak => f(crate::table::peak::peak_lock()),
        Rank::BucketStripe => crate::table::buckets::stripe_locks().for_each(f),
        Rank::BucketOverflow => f(crate::table::buckets::overflow_lock()),
        Rank::LiveStripe => crate::table::live::stripe_locks().for_each(f),
    }
}
