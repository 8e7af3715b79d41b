//! From the bucket table to a gzipped `profile.proto`: snapshot → symbolize → build → encode → gzip.

pub(crate) mod builder;
pub(crate) mod mappings;
pub mod proto;
pub(crate) mod symbols;

use std::borrow::Cow;

use flate2::Compression;
use flate2::write::GzEncoder;

use crate::Error;
use crate::lock::{AnyLock, Lock, Rank};
use crate::sampler::{self, Guard};
use crate::table::buckets::{self, Snapshot};
pub(crate) use builder::Dump;
use symbols::Resolved;

/// Dumps run one at a time: they share the symbol and build-ID caches, which only they lock.
static DUMP: Lock<()> = Lock::new(Rank::Dump, ());

/// The dump lock, for the `fork` handlers: holding it waits for a dump in progress to end and keeps others
/// from starting.
pub(crate) fn dump_lock() -> &'static dyn AnyLock {
    &DUMP
}

/// Runs `f` on the symbolized bucket table, inside the profiler guard (nothing it allocates is sampled) and
/// with no table lock held.
pub(crate) fn with_snapshot<R>(f: impl FnOnce(&Resolved) -> R) -> Result<R, Error> {
    with_table(|resolved| f(&resolved))
}

/// Runs `f` on the symbolized bucket table, inside the profiler guard and under the dump lock. The table is
/// read a stripe at a time (see [`buckets::for_each_stripe`]): what is held is what was resolved from it,
/// never a copy of all of its stacks.
fn with_table<R>(f: impl FnOnce(Resolved) -> R) -> Result<R, Error> {
    dumping(|guard| {
        let resolved = symbols::resolve_parts(guard, buckets::count(), &mut |f| {
            buckets::for_each_stripe(guard, f)
        });
        f(resolved)
    })
}

/// Runs `f` on the symbolized buckets that `take` returns (a snapshot, the difference of two, the copy at
/// the peak), with what else it returns; both inside the profiler guard and under the dump lock.
pub(crate) fn with_buckets<'a, T, R>(
    take: impl FnOnce(&Guard) -> (Cow<'a, Snapshot>, T),
    f: impl FnOnce(Resolved, T) -> R,
) -> Result<R, Error> {
    dumping(|guard| {
        let (buckets, extra) = take(guard);
        let resolved = symbols::resolve(guard, &buckets);
        // A copy made for this dump is not needed any more: gone before the profile is built.
        drop(buckets);
        f(resolved, extra)
    })
}

/// The function names of `addresses`, for pprof's remote symbolization (see
/// [`crate::http::symbol`]).
pub(crate) fn function_names(addresses: &[u64]) -> Result<Vec<(u64, std::sync::Arc<str>)>, Error> {
    dumping(|guard| symbols::function_names(guard, addresses))
}

/// Runs `f` inside the profiler guard and under the dump lock, if the profiler is installed.
fn dumping<R>(f: impl FnOnce(&Guard) -> R) -> Result<R, Error> {
    sampler::check_installed()?;
    let guard = Guard::inside();
    let _dump = DUMP.lock();
    Ok(f(&guard))
}

/// The time now, in nanoseconds since the Unix epoch, as pprof's `time_nanos`.
pub(crate) fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// The profile of the bucket table, to [`encode`].
pub(crate) fn profile() -> Result<Dump, Error> {
    with_table(|resolved| build(resolved, now_nanos(), &[version_comment()]))
}

/// The profile of `buckets` (e.g. the difference of two snapshots), to [`encode`].
pub(crate) fn profile_of(buckets: &Snapshot) -> Result<Dump, Error> {
    with_buckets(
        |_| (Cow::Borrowed(buckets), ()),
        |resolved, ()| build(resolved, now_nanos(), &[version_comment()]),
    )
}

/// The first comment of every profile: who wrote it.
pub(crate) fn version_comment() -> String {
    format!("heap-sampler {}", env!("CARGO_PKG_VERSION"))
}

/// Builds the profile of `resolved`, with the sample rate in force; what the symbolizer noted goes into the
/// comments after `comments`.
pub(crate) fn build(resolved: Resolved, time_nanos: i64, comments: &[String]) -> Dump {
    let comments: Vec<String> = comments.iter().chain(&resolved.notes).cloned().collect();
    let header = builder::Header {
        rate: sampler::sample_rate(),
        time_nanos,
        comments: &comments,
    };
    builder::build(resolved, &header)
}

/// Encodes and gzips a profile. The encoding goes to the compressor as it is made: only the compressed
/// profile is ever held whole.
pub(crate) fn encode(dump: &Dump) -> Result<Vec<u8>, Error> {
    let _guard = Guard::enter();
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    dump.write(&mut gz).map_err(Error::Compress)?;
    gz.finish().map_err(Error::Compress)
}
