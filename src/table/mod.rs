//! The profiler's tables: buckets of counts keyed by stack, and the sampled allocations still live.
//!
//! Locks are striped so that threads sampling different stacks or freeing different pointers rarely meet.
//! No function here holds a lock of one table while taking a lock of the other, and nothing here is called
//! outside the profiler guard, so memory the tables allocate is never itself sampled.

pub(crate) mod buckets;
pub(crate) mod live;

/// The lock of the tables' stripes: a spin lock that yields the CPU while it waits.
///
/// Not `parking_lot::Mutex`: when contended, it parks the thread, and parking first initialises a
/// thread-local with a destructor, which registers through `__cxa_thread_atexit_impl` under the dynamic
/// loader's lock. A thread that allocates inside a `dl_iterate_phdr` callback (holding the loader's write
/// lock) while another thread is in `dlopen` (holding the load lock, waiting for the write lock) then
/// deadlocks. Stripes are held for a few hundred nanoseconds, so spinning with `sched_yield` costs little;
/// it touches no thread-local and never allocates.
pub(crate) type Lock<T> = spin::mutex::SpinMutex<T, spin::relax::Yield>;

/// Number of lock stripes of each table.
const STRIPES: usize = 64;

/// Fixed-point units per object in object counts: weights 1/p are fractional, and in-use counts must return
/// to exactly zero when every sampled allocation is freed, so they are added and subtracted as integers.
pub(crate) const OBJECT_UNITS: f64 = (1u64 << 32) as f64;

/// What one sampled allocation adds to its bucket, and subtracts again when it is freed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Weight {
    /// 1/p objects, in [`OBJECT_UNITS`].
    pub(crate) objects: u128,
    /// size/p bytes, rounded.
    pub(crate) bytes: u64,
}

impl Weight {
    /// The weight of a sampled allocation of `size` bytes taken at `rate` (see [`crate::sampler`]).
    pub(crate) fn of(size: usize, rate: usize) -> Weight {
        let (objects, bytes) = crate::sampler::weights(size, rate);
        // `as` saturates; both values are finite and positive.
        Weight {
            objects: (objects * OBJECT_UNITS).round() as u128,
            bytes: bytes.round() as u64,
        }
    }
}
