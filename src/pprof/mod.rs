//! From the bucket table to a gzipped `profile.proto`: snapshot → symbolize → build → encode → gzip.

pub(crate) mod builder;
pub(crate) mod mappings;
pub mod proto;
pub(crate) mod symbols;

use std::borrow::Cow;
use std::io::Write;

use flate2::Compression;
use flate2::write::GzEncoder;
use prost::Message;

use crate::Error;
use crate::lock::{self, Lock};
use crate::sampler::{self, Guard};
use crate::table::buckets::{self, BucketSnapshot};
use symbols::Resolved;

/// Dumps run one at a time: they share the symbol and build-ID caches, which only they lock.
static DUMP: Lock<()> = Lock::new(());

/// Waits for a dump in progress to end and keeps others from starting (see
/// [`crate::fork::register_fork_handlers`]): the caches are only used under this lock.
pub(crate) fn hold_locks() {
    lock::hold(&DUMP);
}

/// Releases the lock taken by [`hold_locks`].
///
/// # Safety
/// As [`crate::lock::release`].
pub(crate) unsafe fn release_locks() {
    // SAFETY: forwarded from this function's contract.
    unsafe { lock::release(&DUMP) }
}

/// Runs `f` on a symbolized snapshot of the bucket table, inside the profiler guard (nothing it allocates is
/// sampled) and with no table lock held.
pub(crate) fn with_snapshot<R>(f: impl FnOnce(&Resolved) -> R) -> Result<R, Error> {
    with_buckets(
        || (Cow::Owned(buckets::snapshot()), ()),
        |resolved, ()| f(resolved),
    )
}

/// Runs `f` on the symbolized buckets that `take` returns (a snapshot, the difference of two, the copy at
/// the peak), with what else it returns; both inside the profiler guard and under the dump lock.
pub(crate) fn with_buckets<'a, T, R>(
    take: impl FnOnce() -> (Cow<'a, [BucketSnapshot]>, T),
    f: impl FnOnce(&Resolved, T) -> R,
) -> Result<R, Error> {
    if !sampler::installed() {
        return Err(Error::NotInstalled);
    }
    let _guard = Guard::enter();
    let _dump = DUMP.lock();
    let (buckets, extra) = take();
    let resolved = symbols::resolve(&buckets);
    Ok(f(&resolved, extra))
}

/// The time now, in nanoseconds since the Unix epoch, as pprof's `time_nanos`.
pub(crate) fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// The profile of the bucket table as a [`proto::Profile`] message.
pub(crate) fn profile() -> Result<proto::Profile, Error> {
    with_snapshot(|resolved| build(resolved, now_nanos(), &[version_comment()]))
}

/// The profile of `buckets` (e.g. the difference of two snapshots) as a [`proto::Profile`] message.
pub(crate) fn profile_of(buckets: &[BucketSnapshot]) -> Result<proto::Profile, Error> {
    with_buckets(
        || (Cow::Borrowed(buckets), ()),
        |resolved, ()| build(resolved, now_nanos(), &[version_comment()]),
    )
}

/// The first comment of every profile: who wrote it.
pub(crate) fn version_comment() -> String {
    format!("heap-sampler {}", env!("CARGO_PKG_VERSION"))
}

/// Builds the profile of `resolved`, with the sample rate in force; what the symbolizer noted goes into the
/// comments after `comments`.
pub(crate) fn build(resolved: &Resolved, time_nanos: i64, comments: &[String]) -> proto::Profile {
    let comments: Vec<String> = comments.iter().chain(&resolved.notes).cloned().collect();
    let header = builder::Header {
        rate: sampler::sample_rate(),
        time_nanos,
        comments: &comments,
    };
    builder::build(resolved, &header)
}

/// Encodes and gzips a profile.
pub(crate) fn encode(profile: &proto::Profile) -> Result<Vec<u8>, Error> {
    let _guard = Guard::enter();
    let raw = profile.encode_to_vec();
    let mut gz = GzEncoder::new(
        Vec::with_capacity(raw.len() / 4 + 64),
        Compression::default(),
    );
    gz.write_all(&raw).map_err(Error::Compress)?;
    gz.finish().map_err(Error::Compress)
}
