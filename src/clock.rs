//! The wall clock, as pprof records time: for the time of a snapshot and of a peak.

/// The time now, in nanoseconds since the Unix epoch, as pprof's `time_nanos`; 0 if the clock is before the
/// epoch.
pub(crate) fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}
