//! The environment variables read at process start, for operators who cannot rebuild the program.
//!
//! Read once when the process starts, before `main`, also in programs that only install
//! [`crate::SamplingAllocator`] (by a process constructor: `.init_array` on ELF systems, `__mod_init_func` on
//! Apple's), on the targets where sampling is supported ([`crate::SAMPLING_SUPPORTED`]). An invalid value is
//! reported once on stderr, naming the variable and the default used instead; the program runs on. Empty
//! counts as unset.
//!
//! | variable | unit | default | example | effect |
//! | --- | --- | --- | --- | --- |
//! | [`RATE`] | bytes; binary suffixes `K`/`KiB`, `M`/`MiB`, `G`/`GiB` | the program's rate (512 KiB) | `64KiB` | sample rate from the start (0 = off, 1 = every allocation); a later [`crate::set_sample_rate`] call wins |
//! | [`DUMP_AT_EXIT`] | path | none | `/var/tmp/app.heap.pb.gz` | writes a profile there when the process exits (`main` returns or `exit` is called; not on a signal or abort), and the peak profile beside it (`app.heap.peak.pb.gz`); a line on stderr says which view to open |
//! | [`DUMP_DIR`] | directory | none | `/var/tmp/app-heap` | writes `heap-sampler-<UTC time>-<pid>-<n>.pb.gz` there periodically (created if missing) |
//! | [`DUMP_INTERVAL`] | seconds, or a duration | `60` | `5m` | time between periodic profiles |
//! | [`DUMP_KEEP`] | files | `10` | `24` | periodic profiles kept: older ones are removed |
//! | [`SYMBOLIZE`] | `0` or `1` | `1` | `0` | `0` leaves symbolization to the collector (see [`crate::set_symbolize`]) |
//!
//! Profiles are written to a temporary file in the target's real directory and renamed into place, so a reader
//! never sees half of one; a FIFO or a device (`/dev/stdout`) is written to in place, never replaced.
//! Periodic profiles are written by a thread started before `main`; a process forked later has none.

/// The sample rate in bytes, with an optional binary suffix.
pub const RATE: &str = "HEAP_SAMPLER_RATE";
/// A path to write a profile to when the process exits.
pub const DUMP_AT_EXIT: &str = "HEAP_SAMPLER_DUMP_AT_EXIT";
/// A directory for periodic profiles.
pub const DUMP_DIR: &str = "HEAP_SAMPLER_DUMP_DIR";
/// The time between periodic profiles.
pub const DUMP_INTERVAL: &str = "HEAP_SAMPLER_DUMP_INTERVAL";
/// How many periodic profiles the directory keeps.
pub const DUMP_KEEP: &str = "HEAP_SAMPLER_DUMP_KEEP";
/// `0` leaves symbolization to the collector (see [`crate::set_symbolize`]), `1` (the default) symbolizes in
/// process.
pub const SYMBOLIZE: &str = "HEAP_SAMPLER_SYMBOLIZE";
