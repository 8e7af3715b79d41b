//! Labels: key/value pairs attached to every allocation sampled inside a scope, written into profiles as pprof
//! string labels (as Go's `runtime/pprof.Do` labels its CPU profile samples), so that `go tool pprof -tags`
//! and `-tagfocus=key=value` break a heap profile down by request kind, tenant or component.
//!
//! A label set is interned once in a registry and named by a small id ([`LabelSet`]); the current thread's id
//! lives in a `const`-initialised thread-local `Cell` without destructor. Entering a scope from label pairs
//! looks the set up in the registry (a lock, a hash, an allocation) outside the allocator and under the
//! profiler guard; entering a [`LabelSet`] already interned is one thread-local store. The allocator reads the
//! id only when it samples an allocation (one thread-local load on the slow path) and keys the bucket by
//! (stack, label set); the fast path never reads it. A sampled allocation's free subtracts from the bucket it
//! was charged to, whatever labels are current when it is freed.

use core::cell::Cell;
use core::future::{Future, IntoFuture};
use core::hash::BuildHasherDefault;
use core::marker::PhantomData;
use core::pin::Pin;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use core::task::{Context, Poll};
use std::collections::HashMap;
use std::hash::DefaultHasher;
use std::sync::Arc;

use crate::lock::{AnyLock, Lock, Rank};
use crate::sampler::Guard;

/// Default cap on the number of distinct label sets (see [`set_max_label_sets`]).
pub const DEFAULT_MAX_LABEL_SETS: usize = 16_384;

static MAX_LABEL_SETS: AtomicUsize = AtomicUsize::new(DEFAULT_MAX_LABEL_SETS);
static LABEL_BYTES: AtomicUsize = AtomicUsize::new(0);
static LABEL_SETS: AtomicUsize = AtomicUsize::new(0);
static DROPPED_SAMPLES: AtomicU64 = AtomicU64::new(0);

/// The key of the numeric label that carries each sample's allocation size, as in Go's heap profiles; a string
/// label may not use it.
const BYTES_KEY: &str = "bytes";

/// The id of the set that stands for label sets not kept because the cap was reached.
const DROPPED: u32 = u32::MAX;

thread_local! {
    /// The label set of the current thread's scope; 0 outside any scope.
    static CURRENT: Cell<u32> = const { Cell::new(0) };
}

/// Key/value pairs, sorted by key, keys unique.
pub(crate) type Pairs = Arc<[(Box<str>, Box<str>)]>;

struct Registry {
    /// The pairs of set `id` at index `id − 1`.
    sets: Vec<Pairs>,
    ids: HashMap<Pairs, u32, BuildHasherDefault<DefaultHasher>>,
}

/// Only taken outside the allocator: by scope entries that intern a set, and by dumps.
static REGISTRY: Lock<Registry> = Lock::new(
    Rank::LabelRegistry,
    Registry {
        sets: Vec::new(),
        ids: HashMap::with_hasher(BuildHasherDefault::new()),
    },
);

/// Sets the cap on the number of distinct label sets kept (default [`DEFAULT_MAX_LABEL_SETS`]). Interned sets
/// live as long as the process, so labels should take a bounded number of values (an endpoint, a tenant, a
/// component: not a request id). Once the cap is reached, entering a scope that would need a new set keeps the
/// thread's allocations sampled but unlabeled; they are counted in [`crate::Stats::dropped_labels`].
pub fn set_max_label_sets(sets: usize) {
    MAX_LABEL_SETS.store(sets, Relaxed);
}

/// An interned set of key/value labels, as Go's `pprof.LabelSet`: a small `Copy` handle, cheap to keep and to
/// enter. Sets are built on top of another set (usually the current one): later pairs replace earlier ones
/// with the same key.
///
/// # Labels in profiles
///
/// Allocations sampled inside a label scope carry its key/value labels, as pprof string labels (the way Go's
/// `pprof.Do` labels CPU profiles; Go's heap profiles have none), so a profile can be broken down by tenant,
/// endpoint or component: `go tool pprof -tags heap.pb.gz`, `go tool pprof -tagfocus=tenant=acme -top
/// heap.pb.gz`. Scopes nest (inner labels add to outer ones; guards are dropped innermost first) and belong
/// to the current thread:
///
/// ```
/// let cache = heap_sampler::with_labels(&[("component", "cache")], || vec![0u8; 1 << 20]);
/// {
///     let _scope = heap_sampler::enter_labels(&[("tenant", "acme")]);
///     let _buffer = vec![0u8; 4096]; // labeled tenant=acme
/// }
/// # drop(cache);
/// ```
///
/// A scope is per thread, so it must not be held across `.await`: the task may move to another thread, and
/// other tasks run on this one meanwhile. Wrap the future instead ([`labeled`]); the labels are entered around
/// each poll, wherever it runs:
///
/// ```
/// # async fn handle(request: &str) -> usize { request.len() }
/// async fn serve(tenant: &str, request: &str) -> usize {
///     heap_sampler::labeled(&[("tenant", tenant)], handle(request)).await
/// }
/// ```
///
/// A thread spawned inside a scope starts without labels: pass it [`LabelSet::current`] and enter that. The
/// allocator reads the thread's label set only when it samples an allocation; unsampled allocations cost
/// exactly what they cost without labels. Entering a scope from pairs interns the set (a lock and a hash map
/// lookup, outside the allocator); a [`LabelSet`] built once enters with a single thread-local store. Sets
/// are kept for the life of the process, so give labels few distinct values (see [`set_max_label_sets`]).
///
/// # Building sets
///
/// Pairs with an empty key or value (pprof cannot tell an empty string label from a numeric one) and pairs
/// with the key `bytes` (the numeric label of the allocation size in heap profiles) are ignored.
///
/// ```
/// use heap_sampler::LabelSet;
///
/// let tenant = LabelSet::new(&[("tenant", "acme")]);
/// let both = tenant.with(&[("handler", "upload")]);
/// let pairs = [("handler", "upload"), ("tenant", "acme")].map(|(k, v)| (k.to_string(), v.to_string()));
/// assert_eq!(both.pairs(), pairs);
/// let sum: usize = both.scope(|| vec![1u8; 4096].len());
/// assert_eq!(sum, 4096);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LabelSet(u32);

impl LabelSet {
    /// The empty set: no labels.
    pub const EMPTY: LabelSet = LabelSet(0);

    /// The set's id in the registry (0: empty).
    pub(crate) fn id(self) -> u32 {
        self.0
    }

    /// The set of `labels` alone, not inheriting the current scope's labels.
    pub fn new(labels: &[(&str, &str)]) -> LabelSet {
        LabelSet::EMPTY.with(labels)
    }

    /// The labels of the current thread's scope ([`LabelSet::EMPTY`] outside any scope). A thread spawned inside
    /// a scope does not inherit it: pass `LabelSet::current()` to the thread and enter it there.
    pub fn current() -> LabelSet {
        LabelSet(CURRENT.try_with(Cell::get).unwrap_or(0))
    }

    /// This set with `labels` added (replacing pairs with the same key). Interns the result: takes the
    /// registry's lock and allocates, so build sets once where scopes are entered in a hot loop.
    pub fn with(self, labels: &[(&str, &str)]) -> LabelSet {
        LabelSet(intern(self.0, labels))
    }

    /// The pairs of this set, sorted by key. Empty for a set dropped at the cap (see [`set_max_label_sets`]).
    pub fn pairs(self) -> Vec<(String, String)> {
        pairs(self)
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Makes this set the current thread's labels until the returned guard is dropped, when the previous set
    /// is restored. Guards must be dropped in the reverse order of their creation (scopes nest).
    pub fn enter(self) -> LabelGuard {
        let previous = CURRENT.try_with(|c| c.replace(self.0)).unwrap_or(0);
        LabelGuard {
            previous,
            _not_send: PhantomData,
        }
    }

    /// Runs `f` with this set as the current thread's labels.
    pub fn scope<R>(self, f: impl FnOnce() -> R) -> R {
        let _scope = self.enter();
        f()
    }

    /// Wraps `future` so that this set is the current labels while it is polled, whichever thread polls it.
    pub fn instrument<F: IntoFuture>(self, future: F) -> Labeled<F::IntoFuture> {
        Labeled {
            future: future.into_future(),
            labels: self,
        }
    }
}

/// Runs `f` with `labels` added to the current thread's labels: every allocation sampled inside `f` on this
/// thread carries them, as with Go's `pprof.Do`. Allocations freed inside or outside the scope are subtracted
/// from where they were charged.
///
/// ```
/// let kept = heap_sampler::with_labels(&[("tenant", "acme")], || vec![0u8; 1 << 20]);
/// # drop(kept);
/// ```
pub fn with_labels<R>(labels: &[(&str, &str)], f: impl FnOnce() -> R) -> R {
    LabelSet::current().with(labels).scope(f)
}

/// Adds `labels` to the current thread's labels until the returned guard is dropped (the guard form of
/// [`with_labels`]). Guards must be dropped in the reverse order of their creation, as scopes nest: each
/// restores the labels that were current when it was created, so dropping an outer guard before an inner
/// one leaves the outer labels in force after both.
///
/// ```
/// let _scope = heap_sampler::enter_labels(&[("component", "cache")]);
/// let buffer = vec![0u8; 4096];
/// # drop(buffer);
/// ```
pub fn enter_labels(labels: &[(&str, &str)]) -> LabelGuard {
    LabelSet::current().with(labels).enter()
}

/// Wraps `future` so that `labels`, added to the labels current at this call, label its allocations whenever
/// it is polled: the way to carry a scope across `.await` (see [`LabelSet`]).
pub fn labeled<F: IntoFuture>(labels: &[(&str, &str)], future: F) -> Labeled<F::IntoFuture> {
    LabelSet::current().with(labels).instrument(future)
}

/// Restores the previous labels of the thread when dropped (see [`LabelSet::enter`]). Not `Send`: a scope
/// belongs to the thread that entered it; across `.await` use [`Labeled`].
#[must_use = "the labels apply only while the guard lives"]
#[derive(Debug)]
pub struct LabelGuard {
    previous: u32,
    _not_send: PhantomData<*const ()>,
}

impl Drop for LabelGuard {
    fn drop(&mut self) {
        let _ = CURRENT.try_with(|c| c.set(self.previous));
    }
}

/// A future whose allocations carry a label set: the set is entered around every poll and left before the
/// poll returns, so it never leaks to other tasks polled by the same thread, and it follows the task when it
/// moves between threads. Made by [`labeled`] or [`LabelSet::instrument`].
#[must_use = "futures do nothing unless polled"]
#[derive(Debug)]
pub struct Labeled<F> {
    future: F,
    labels: LabelSet,
}

impl<F> Labeled<F> {
    /// The labels entered around each poll.
    pub fn labels(&self) -> LabelSet {
        self.labels
    }
}

impl<F: Future> Future for Labeled<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let _scope = self.labels.enter();
        // SAFETY: `future` is pinned structurally: `Labeled` never moves it out, has no `Drop` impl, and is
        // `Unpin` only when `F` is (auto trait), so a pinned `Labeled` keeps `future` pinned.
        let future = unsafe { self.map_unchecked_mut(|labeled| &mut labeled.future) };
        future.poll(cx)
    }
}

/// Makes `set` the current thread's labels, without a guard: for the tracing layer, which keeps the previous
/// set itself and restores it when the span exits. Nothing while the thread's locals are being destroyed.
#[cfg(feature = "tracing")]
pub(crate) fn set_current(set: LabelSet) {
    let _ = CURRENT.try_with(|c| c.set(set.0));
}

/// The label set to charge a sampled allocation to: the current thread's, or the empty set (counted as
/// dropped) when its set was not kept. One thread-local load; called on the allocator's slow path.
#[inline]
pub(crate) fn for_sample() -> LabelSet {
    match CURRENT.try_with(Cell::get).unwrap_or(0) {
        DROPPED => {
            DROPPED_SAMPLES.fetch_add(1, Relaxed);
            LabelSet::EMPTY
        }
        id => LabelSet(id),
    }
}

/// The pairs of `set` (empty for [`LabelSet::EMPTY`] and dropped sets). Takes the registry's lock: never call
/// it from the allocator.
pub(crate) fn pairs(set: LabelSet) -> Pairs {
    if set.0 == 0 || set.0 == DROPPED {
        return Arc::new([]);
    }
    let _guard = Guard::enter();
    let registry = REGISTRY.lock();
    registry
        .sets
        .get(set.0 as usize - 1)
        .cloned()
        .unwrap_or_else(|| Arc::new([]))
}

/// The id of the set `parent` ∪ `labels` (later pairs win), interning it if new.
fn intern(parent: u32, labels: &[(&str, &str)]) -> u32 {
    let labels = labels
        .iter()
        .filter(|(key, value)| !key.is_empty() && !value.is_empty() && *key != BYTES_KEY);
    if parent == DROPPED || labels.clone().next().is_none() {
        return parent;
    }
    // The registry's memory is the profiler's own: not sampled.
    let _guard = Guard::enter();
    let mut registry = REGISTRY.lock();
    let mut set: Vec<(Box<str>, Box<str>)> = match parent {
        0 => Vec::new(),
        id => registry
            .sets
            .get(id as usize - 1)
            .map(|pairs| pairs.to_vec())
            .unwrap_or_default(),
    };
    for &(key, value) in labels {
        match set.iter_mut().find(|(k, _)| **k == *key) {
            Some(pair) => pair.1 = value.into(),
            None => set.push((key.into(), value.into())),
        }
    }
    set.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    if let Some(&id) = registry.ids.get(set.as_slice()) {
        return id;
    }
    let id = registry.sets.len() + 1;
    if registry.sets.len() >= MAX_LABEL_SETS.load(Relaxed) || id >= DROPPED as usize {
        return DROPPED;
    }
    let bytes: usize = set.iter().map(|(k, v)| k.len() + v.len()).sum();
    LABEL_BYTES.fetch_add(
        bytes + set.len() * size_of::<(Box<str>, Box<str>)>() + 64,
        Relaxed,
    );
    LABEL_SETS.fetch_add(1, Relaxed);
    let set: Pairs = set.into();
    registry.sets.push(set.clone());
    registry.ids.insert(set, id as u32);
    id as u32
}

/// Distinct label sets interned so far.
pub(crate) fn label_sets() -> usize {
    LABEL_SETS.load(Relaxed)
}

/// Approximate bytes held by the label registry.
pub(crate) fn label_bytes() -> usize {
    LABEL_BYTES.load(Relaxed)
}

/// Sampled allocations recorded without their labels because their set was not kept.
pub(crate) fn dropped_samples() -> u64 {
    DROPPED_SAMPLES.load(Relaxed)
}

/// The registry's lock, for the `fork` handlers.
pub(crate) fn registry_lock() -> &'static dyn AnyLock {
    &REGISTRY
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn sets_are_interned_merged_and_sorted() {
        let a = LabelSet::new(&[("unit-b", "2"), ("unit-a", "1")]);
        assert_eq!(a, LabelSet::new(&[("unit-a", "1"), ("unit-b", "2")]));
        assert_eq!(a.pairs(), owned(&[("unit-a", "1"), ("unit-b", "2")]));
        assert_eq!(
            a.with(&[("unit-a", "3")]).pairs(),
            owned(&[("unit-a", "3"), ("unit-b", "2")])
        );
        assert_eq!(a.with(&[]), a);
        assert_eq!(
            LabelSet::new(&[("", "x"), ("unit-k", ""), ("bytes", "9")]),
            LabelSet::EMPTY
        );
    }

    #[test]
    fn scopes_nest_and_restore() {
        let outer = LabelSet::new(&[("unit-scope", "outer")]);
        assert_eq!(LabelSet::current(), LabelSet::EMPTY);
        let guard = outer.enter();
        let inner = with_labels(&[("unit-scope", "inner")], || {
            assert_eq!(
                LabelSet::current().pairs(),
                owned(&[("unit-scope", "inner")])
            );
            LabelSet::current()
        });
        assert_ne!(inner, outer);
        assert_eq!(LabelSet::current(), outer);
        drop(guard);
        assert_eq!(LabelSet::current(), LabelSet::EMPTY);
    }
}
