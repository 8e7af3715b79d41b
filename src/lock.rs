//! The profiler's locks and their ranks.
//!
//! Every lock has a [`Rank`], and every path takes locks in increasing rank: a thread holding a lock takes
//! only locks of a higher rank, and never two locks of one rank (one table stripe at a time), so no two
//! threads can wait for each other. The `fork` handlers are the one exception: they take every lock, rank
//! after rank, all the locks of a rank together (see [`crate::fork`]).
//!
//! Debug builds check the order, as jemalloc's `witness.h` does: each thread records the ranks it holds, and
//! taking a lock out of order aborts with a message naming both locks. The record is a `const` thread-local
//! `Cell` without destructor, so the check works inside the allocator (it neither allocates nor registers
//! anything) and during thread exit. Release builds record nothing: a lock is a spin lock and nothing more.

use core::ops::{Deref, DerefMut};

type SpinLock<T> = spin::mutex::SpinMutex<T, spin::relax::Yield>;

/// The rank of each profiler lock, lowest first: the order every path takes them in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub(crate) enum Rank {
    /// Dumps run one at a time (`pprof`): the symbol and mapping caches are only taken under it.
    Dump,
    /// The build IDs and segments of mapped files, read once per file (`pprof::mappings`).
    MappingFiles,
    /// The frames of each return address seen (`pprof::symbols`). A dump holds it while it reads the
    /// bucket table's stripes.
    SymbolCache,
    /// The interned label sets (`labels`); nothing is taken under it.
    LabelRegistry,
    /// The spare stack (`stack::spare`): its holder takes the peak's lock and table locks.
    SpareStack,
    /// The copy of the counts at the peak (`table::peak`): table stripes are taken under it.
    Peak,
    /// A stripe of the bucket table.
    BucketStripe,
    /// The bucket table's overflow bucket.
    BucketOverflow,
    /// A stripe of the live table (and its block of the free filter): the highest rank, so that the free of
    /// a candidate (see [`crate::mark`]) may look it up whatever else its thread holds.
    LiveStripe,
}

impl Rank {
    /// Every rank, lowest first.
    pub(crate) const ALL: [Rank; 9] = [
        Rank::Dump,
        Rank::MappingFiles,
        Rank::SymbolCache,
        Rank::LabelRegistry,
        Rank::SpareStack,
        Rank::Peak,
        Rank::BucketStripe,
        Rank::BucketOverflow,
        Rank::LiveStripe,
    ];

    /// The name of the lock (or locks) of this rank, for the message of an order violation.
    #[cfg(debug_assertions)]
    const fn name(self) -> &'static str {
        match self {
            Rank::Dump => "dump",
            Rank::MappingFiles => "mapping files",
            Rank::SymbolCache => "symbol cache",
            Rank::LabelRegistry => "label registry",
            Rank::SpareStack => "spare stack",
            Rank::Peak => "peak",
            Rank::BucketStripe => "bucket stripe",
            Rank::BucketOverflow => "overflow bucket",
            Rank::LiveStripe => "live stripe",
        }
    }

    /// This rank's bit in a set of ranks.
    #[cfg(any(debug_assertions, test))]
    const fn bit(self) -> u32 {
        1 << self as u32
    }
}

// A set of ranks fits a `u32`.
const _: () = assert!(Rank::ALL.len() <= 32);

/// The profiler's lock: a spin lock that yields the CPU while it waits, with its [`Rank`].
///
/// Not `parking_lot::Mutex`: when contended, it parks the thread, and parking first initialises a
/// thread-local with a destructor, which registers through `__cxa_thread_atexit_impl` under the dynamic
/// loader's lock. A thread that allocates inside a `dl_iterate_phdr` callback (holding the loader's write
/// lock) while another thread is in `dlopen` (holding the load lock, waiting for the write lock) then
/// deadlocks. Table stripes are held briefly, so spinning with `sched_yield` costs little; it touches no
/// thread-local (but the debug builds' record of ranks) and never allocates.
pub(crate) struct Lock<T> {
    inner: SpinLock<T>,
    #[cfg(debug_assertions)]
    rank: Rank,
}

impl<T> Lock<T> {
    /// A lock of `rank` around `value`.
    pub(crate) const fn new(rank: Rank, value: T) -> Lock<T> {
        #[cfg(not(debug_assertions))]
        let _ = rank;
        Lock {
            inner: SpinLock::new(value),
            #[cfg(debug_assertions)]
            rank,
        }
    }

    /// Takes the lock, waiting for it. Debug builds abort if this thread holds a lock of this rank or a
    /// higher one.
    #[inline]
    pub(crate) fn lock(&self) -> LockGuard<'_, T> {
        #[cfg(debug_assertions)]
        witness::acquire(self.rank, false);
        LockGuard {
            inner: self.inner.lock(),
            #[cfg(debug_assertions)]
            rank: self.rank,
        }
    }
}

/// The lock held: the value behind it, until dropped.
pub(crate) struct LockGuard<'a, T> {
    inner: spin::mutex::SpinMutexGuard<'a, T, spin::relax::Yield>,
    #[cfg(debug_assertions)]
    rank: Rank,
}

impl<T> Deref for LockGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.inner
    }
}

impl<T> DerefMut for LockGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.inner
    }
}

#[cfg(debug_assertions)]
impl<T> Drop for LockGuard<'_, T> {
    fn drop(&mut self) {
        witness::release(self.rank);
    }
}

/// A lock whatever it guards, as the `fork` handlers take them all (see [`crate::fork`]).
pub(crate) trait AnyLock: Sync {
    /// Takes the lock and keeps it taken beyond this call, until [`AnyLock::release`]. Other locks of its
    /// rank may be held (all the stripes of a table are taken together), none of a higher rank.
    fn hold(&self);

    /// Releases a lock taken with [`AnyLock::hold`].
    ///
    /// # Safety
    /// The calling thread took the lock with [`AnyLock::hold`] (or is the only thread of a child forked
    /// while it held it), and no guard of it is alive.
    unsafe fn release(&self);
}

impl<T: Send> AnyLock for Lock<T> {
    fn hold(&self) {
        #[cfg(debug_assertions)]
        witness::acquire(self.rank, true);
        core::mem::forget(self.inner.lock());
    }

    unsafe fn release(&self) {
        #[cfg(debug_assertions)]
        witness::release(self.rank);
        // SAFETY: per this function's contract, the lock is held by this thread and no guard refers to it.
        unsafe { self.inner.force_unlock() }
    }
}

/// Whether the calling thread holds a lock of `rank`, for `debug_assert!`s.
#[cfg(debug_assertions)]
pub(crate) fn holds(rank: Rank) -> bool {
    witness::held() & rank.bit() != 0
}

/// Release builds record nothing, and their `debug_assert!`s are not evaluated: always `true`.
#[cfg(not(debug_assertions))]
pub(crate) fn holds(_: Rank) -> bool {
    true
}

/// Whether a thread holding the ranks in `held` may take a lock of `rank` (`shared`: while holding others
/// of its rank, as the `fork` handlers do); otherwise the highest rank held that forbids it.
#[cfg(any(debug_assertions, test))]
fn check_order(held: u32, rank: Rank, shared: bool) -> Result<(), Rank> {
    let from = rank as u32 + u32::from(shared);
    let above = held.checked_shr(from).unwrap_or(0);
    if above == 0 {
        return Ok(());
    }
    let highest = 31 - held.leading_zeros();
    Rank::ALL.get(highest as usize).copied().map_or(Ok(()), Err)
}

#[cfg(debug_assertions)]
mod witness {
    use core::cell::Cell;

    use super::{Rank, check_order};

    thread_local! {
        /// The ranks of the locks this thread holds, one bit each.
        static HELD: Cell<u32> = const { Cell::new(0) };
    }

    /// The ranks this thread holds (none once its thread-locals are gone).
    pub(super) fn held() -> u32 {
        HELD.try_with(Cell::get).unwrap_or(0)
    }

    /// Records that this thread is taking a lock of `rank`, checking the order first.
    pub(super) fn acquire(rank: Rank, shared: bool) {
        let held = held();
        if let Err(holding) = check_order(held, rank, shared) {
            violation(rank, holding);
        }
        let _ = HELD.try_with(|h| h.set(held | rank.bit()));
    }

    /// Records that this thread released a lock of `rank`.
    pub(super) fn release(rank: Rank) {
        let _ = HELD.try_with(|h| h.set(h.get() & !rank.bit()));
    }

    /// Aborts with a message naming both locks. Not a panic: the allocator must not unwind, and a panic
    /// allocates its message, here perhaps while a table lock is held.
    #[cold]
    fn violation(taking: Rank, holding: Rank) -> ! {
        for part in [
            "heap-sampler: lock order violated: taking the ",
            taking.name(),
            " lock while holding the ",
            holding.name(),
            " lock\n",
        ] {
            write_stderr(part);
        }
        std::process::abort()
    }

    /// Writes `text` to the standard error without allocating or locking.
    fn write_stderr(text: &str) {
        #[cfg(unix)]
        // SAFETY: writes `text.len()` bytes from a live string to file descriptor 2.
        unsafe {
            libc::write(2, text.as_ptr().cast(), text.len());
        }
        #[cfg(not(unix))]
        {
            use std::io::Write;
            let _ = std::io::stderr().write_all(text.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_are_taken_in_rank_order() {
        let none = 0;
        let holding = |ranks: &[Rank]| ranks.iter().fold(0, |set, r| set | r.bit());
        assert_eq!(check_order(none, Rank::Dump, false), Ok(()));
        assert_eq!(
            check_order(
                holding(&[Rank::Dump, Rank::Peak]),
                Rank::BucketStripe,
                false
            ),
            Ok(())
        );
        // Out of order: the message names the highest lock held.
        assert_eq!(
            check_order(holding(&[Rank::Dump, Rank::LiveStripe]), Rank::Peak, false),
            Err(Rank::LiveStripe)
        );
        assert_eq!(
            check_order(holding(&[Rank::Peak]), Rank::SpareStack, false),
            Err(Rank::Peak)
        );
        // Two stripes of one table at once: only the fork handlers may.
        assert_eq!(
            check_order(holding(&[Rank::BucketStripe]), Rank::BucketStripe, false),
            Err(Rank::BucketStripe)
        );
        assert_eq!(
            check_order(holding(&[Rank::BucketStripe]), Rank::BucketStripe, true),
            Ok(())
        );
        assert_eq!(
            check_order(holding(&[Rank::BucketOverflow]), Rank::BucketStripe, true),
            Err(Rank::BucketOverflow)
        );
        assert_eq!(
            check_order(holding(&Rank::ALL), Rank::LiveStripe, true),
            Ok(())
        );
    }

    #[test]
    fn ranks_are_listed_in_order() {
        assert!(Rank::ALL.windows(2).all(|pair| pair[0] < pair[1]));
        assert!(Rank::ALL.iter().enumerate().all(|(i, r)| *r as usize == i));
    }

    #[test]
    fn a_thread_records_the_ranks_it_holds() {
        let (outer, inner) = (Lock::new(Rank::Peak, 1), Lock::new(Rank::LiveStripe, 2));
        let first = outer.lock();
        let second = inner.lock();
        assert_eq!(*first + *second, 3);
        assert!(holds(Rank::Peak) && holds(Rank::LiveStripe));
        drop(second);
        if cfg!(debug_assertions) {
            assert!(!holds(Rank::LiveStripe));
        }
        drop(first);
        let all = [
            Lock::new(Rank::BucketStripe, ()),
            Lock::new(Rank::BucketStripe, ()),
        ];
        all.iter().for_each(AnyLock::hold);
        assert!(holds(Rank::BucketStripe));
        // SAFETY: taken just above by this thread, without a guard.
        all.iter().rev().for_each(|lock| unsafe { lock.release() });
        if cfg!(debug_assertions) {
            assert!(!holds(Rank::Peak) && !holds(Rank::BucketStripe));
        }
    }
}
