//! Automatic dumps: the profile (and the peak's) at exit, and periodic profiles with rotation, all written
//! as [`crate::write_profile`] and [`crate::write_peak_profile`] write them: through the one safe file writer,
//! [`crate::output::write`].

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::time::SystemTime;

use super::parse::Periodic;
use super::warn;
use crate::env::{DUMP_AT_EXIT, DUMP_DIR};
use crate::error::Error;
use crate::pprof::render::{write_peak_profile, write_profile};
use crate::report::human_bytes;
use crate::sampler::Guard;

/// Periodic profiles are named `heap-sampler-<UTC time>-<pid>-<sequence>.pb.gz`; only files named so are
/// ever removed from the directory.
const PERIODIC_PREFIX: &str = "heap-sampler-";
const PERIODIC_SUFFIX: &str = ".pb.gz";

/// Where to write the profile at exit, and the process that asked (a forked child that calls `exit` does
/// not overwrite its parent's profile).
static EXIT_DUMP: OnceLock<PathBuf> = OnceLock::new();
static EXIT_DUMP_PID: AtomicU32 = AtomicU32::new(0);

pub(super) fn dump_at_exit_to(path: PathBuf) {
    if EXIT_DUMP.set(path).is_err() {
        return;
    }
    EXIT_DUMP_PID.store(std::process::id(), Relaxed);
    // SAFETY: `dump_at_exit` is an `extern "C"` function without arguments, as `atexit` requires.
    if unsafe { libc::atexit(dump_at_exit) } != 0 {
        warn(format!(
            "{DUMP_AT_EXIT} is set, but no exit handler can be registered; no profile at exit"
        ));
    }
}

/// Runs at `exit` (when `main` returns or `std::process::exit` is called; not on a signal or an abort).
/// Writes the profile and, beside it, the profile at the peak: at exit most memory has been freed, so the
/// in-use view is nearly empty and the allocations and the peak are what there is to read. A line on stderr
/// says where each file is and which view to open.
extern "C" fn dump_at_exit() {
    if std::process::id() != EXIT_DUMP_PID.load(Relaxed) {
        return;
    }
    let Some(path) = EXIT_DUMP.get() else { return };
    let _guard = Guard::enter();
    let stats = crate::stats::stats;
    let bytes = |n: u64| human_bytes(i64::try_from(n).unwrap_or(i64::MAX));
    let written = write_profile(path);
    if let Err(e) = written {
        warn(format!("{DUMP_AT_EXIT}: {e}"));
        return;
    }
    let exit_line = format!(
        "wrote the heap profile at exit to {path} ({inuse} still in use, {allocated} allocated in all: \
         `go tool pprof -sample_index=alloc_space {path}`)",
        path = path.display(),
        inuse = bytes(stats().inuse_bytes),
        allocated = bytes(stats().alloc_bytes),
    );
    // Beside a pipe or a device there is no place for a second file.
    if crate::output::is_stream(path) {
        warn(exit_line);
        return;
    }
    let peak_path = peak_path_beside(path);
    match write_peak_profile(&peak_path) {
        Ok(()) => warn(format!(
            "{exit_line} and the profile at the peak ({peak} in use) to {peak_file} \
             (`go tool pprof {peak_file}`)",
            peak = bytes(stats().peak_inuse_bytes),
            peak_file = peak_path.display(),
        )),
        Err(e) => warn(format!("{exit_line}; the profile at the peak: {e}")),
    }
}

/// Where the exit dump writes the peak profile: `app.pb.gz` gives `app.peak.pb.gz`; a name without that
/// ending gets `.peak.pb.gz` appended.
fn peak_path_beside(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let peak = match name.strip_suffix(PERIODIC_SUFFIX) {
        Some(stem) => format!("{stem}.peak{PERIODIC_SUFFIX}"),
        None => format!("{name}.peak{PERIODIC_SUFFIX}"),
    };
    path.with_file_name(peak)
}

/// The body of the periodic dump thread: a profile into the directory every interval, keeping the newest
/// `keep`. The first failure is reported; later ones are not, so a full disk does not flood stderr.
pub(super) fn dump_periodically(periodic: &Periodic) {
    // This thread is the profiler's: none of its work is sampled.
    let _guard = Guard::enter();
    let mut reported = false;
    let mut report = |e: &Error| {
        if !reported {
            reported = true;
            warn(format!(
                "{DUMP_DIR}: {e}; further failures of periodic profiles are not reported"
            ));
        }
    };
    if let Err(source) = std::fs::create_dir_all(&periodic.dir) {
        report(&Error::Write {
            path: periodic.dir.clone(),
            source,
        });
        return;
    }
    let pid = std::process::id();
    for sequence in 1u64.. {
        std::thread::sleep(periodic.interval);
        let time = humantime::format_rfc3339_seconds(SystemTime::now())
            .to_string()
            .replace(['-', ':'], "");
        let path = periodic.dir.join(format!(
            "{PERIODIC_PREFIX}{time}-{pid}-{sequence:06}{PERIODIC_SUFFIX}"
        ));
        // The new profile first, then the oldest go: a process that ends at any point leaves at least the
        // newest `keep` complete profiles (and one more, if it ends between the two).
        if let Err(e) = write_profile(&path).and_then(|()| remove_old(&periodic.dir, periodic.keep))
        {
            report(&e);
        }
    }
}

/// Removes periodic profiles from `dir`, oldest first (by name: time, then process and sequence), until at
/// most `keep` are left.
fn remove_old(dir: &Path, keep: usize) -> Result<(), Error> {
    let failed = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Write { path, source }
    };
    let mut profiles: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(failed(dir))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(PERIODIC_PREFIX) && n.ends_with(PERIODIC_SUFFIX))
        })
        .collect();
    profiles.sort();
    let excess = profiles.len().saturating_sub(keep);
    for path in &profiles[..excess] {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(failed(path)(e)),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peak_profile_is_written_beside_the_exit_profile() {
        assert_eq!(
            peak_path_beside(Path::new("/var/tmp/app.heap.pb.gz")),
            Path::new("/var/tmp/app.heap.peak.pb.gz")
        );
        assert_eq!(
            peak_path_beside(Path::new("out/heap")),
            Path::new("out/heap.peak.pb.gz")
        );
    }
}
