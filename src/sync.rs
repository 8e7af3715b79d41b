//! The atomics of the lock-free protocols, so that their code runs both on the process's statics and in
//! loom's model checker.
//!
//! The free filter's bits ([`crate::table::live`]), the publication of a new sample rate with its epoch
//! ([`crate::sampler`]) and the peak's levels ([`crate::table::peak`]) are written against [`Atomic`], which
//! core's atomics implement and, under `cfg(loom)`, loom's too. The statics stay core's (a loom atomic lives
//! in one execution of a model, not in a static), so a build without `cfg(loom)` compiles to the same
//! instructions as with core's atomics named directly. Under `cfg(loom)`, [`model`] gives the models loom's
//! atomics, lock and threads; the models, in `loom_models` modules beside each protocol, run with
//! `RUSTFLAGS="--cfg loom" cargo test --lib --release loom`, which explores every interleaving of their
//! threads and every value the memory model lets each load return.

pub(crate) use core::sync::atomic::Ordering;

/// The operations the protocols use of an atomic integer.
pub(crate) trait Atomic<T> {
    fn load(&self, order: Ordering) -> T;
    fn store(&self, value: T, order: Ordering);
    fn fetch_add(&self, value: T, order: Ordering) -> T;
    fn fetch_max(&self, value: T, order: Ordering) -> T;
}

macro_rules! atomic {
    ($atomic:ty, $int:ty) => {
        impl Atomic<$int> for $atomic {
            #[inline(always)]
            fn load(&self, order: Ordering) -> $int {
                <$atomic>::load(self, order)
            }
            #[inline(always)]
            fn store(&self, value: $int, order: Ordering) {
                <$atomic>::store(self, value, order)
            }
            #[inline(always)]
            fn fetch_add(&self, value: $int, order: Ordering) -> $int {
                <$atomic>::fetch_add(self, value, order)
            }
            #[inline(always)]
            fn fetch_max(&self, value: $int, order: Ordering) -> $int {
                <$atomic>::fetch_max(self, value, order)
            }
        }
    };
}

atomic!(core::sync::atomic::AtomicU64, u64);
atomic!(core::sync::atomic::AtomicUsize, usize);
#[cfg(all(test, loom))]
atomic!(loom::sync::atomic::AtomicU64, u64);
#[cfg(all(test, loom))]
atomic!(loom::sync::atomic::AtomicUsize, usize);

/// What the models use: loom's atomics, lock, `Arc` and threads, and its checker.
#[cfg(all(test, loom))]
pub(crate) mod model {
    pub(crate) use loom::model;
    pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
    pub(crate) use loom::sync::{Arc, Mutex};
    pub(crate) use loom::thread;
}
