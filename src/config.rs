//! Configuration by environment, for operators who cannot rebuild the program.
//!
//! Read once at process start, before `main`, by a constructor in `.init_array` (so that it works in a
//! program that calls no heap_sampler function, only installs the allocator): never from inside an
//! allocation, where reading the environment could wait for a lock that `setenv` holds while it allocates.
//! The constructor runs inside the profiler guard: what it allocates is not sampled.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::time::{Duration, SystemTime};

use crate::Error;
use crate::report::human_bytes;
use crate::sampler::{DEFAULT_SAMPLE_RATE, Guard};

/// The sample rate in bytes, with an optional binary suffix.
pub(crate) const RATE: &str = "HEAP_SAMPLER_RATE";
/// A path to write a profile to when the process exits.
pub(crate) const DUMP_AT_EXIT: &str = "HEAP_SAMPLER_DUMP_AT_EXIT";
/// A directory for periodic profiles.
pub(crate) const DUMP_DIR: &str = "HEAP_SAMPLER_DUMP_DIR";
/// The time between periodic profiles.
pub(crate) const DUMP_INTERVAL: &str = "HEAP_SAMPLER_DUMP_INTERVAL";
/// How many periodic profiles the directory keeps.
pub(crate) const DUMP_KEEP: &str = "HEAP_SAMPLER_DUMP_KEEP";
/// `0` leaves symbolization to the collector (see [`crate::set_symbolize`]).
pub(crate) const SYMBOLIZE: &str = "HEAP_SAMPLER_SYMBOLIZE";

const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);
const DEFAULT_KEEP: usize = 10;

/// Periodic profiles are named `heap-sampler-<UTC time>-<pid>-<sequence>.pb.gz`; only files named so are
/// ever removed from the directory.
const PERIODIC_PREFIX: &str = "heap-sampler-";
const PERIODIC_SUFFIX: &str = ".pb.gz";

/// What the environment asks for.
#[derive(Debug, Default, PartialEq, Eq)]
struct Config {
    rate: Option<usize>,
    symbolize: Option<bool>,
    exit_dump: Option<PathBuf>,
    periodic: Option<Periodic>,
}

#[derive(Debug, PartialEq, Eq)]
struct Periodic {
    dir: PathBuf,
    interval: Duration,
    keep: usize,
}

impl Config {
    /// Reads the variables through `lookup`; an empty variable counts as unset. Each invalid value is
    /// reported once through `warn`, with the variable's name and the default used instead.
    fn parse(lookup: impl Fn(&str) -> Option<OsString>, mut warn: impl FnMut(String)) -> Config {
        let get = |name: &str| lookup(name).filter(|v| !v.is_empty());
        let mut config = Config::default();
        if let Some(value) = get(RATE) {
            match value.to_str().and_then(parse_rate) {
                Some(rate) => config.rate = Some(rate),
                None => warn(format!(
                    "ignoring {RATE}={value:?}: not a size in bytes (e.g. 524288, 512KiB, 4MiB; 0 turns \
                     sampling off); using the program's sample rate, by default {}",
                    human_bytes(DEFAULT_SAMPLE_RATE as i64)
                )),
            }
        }
        if let Some(value) = get(SYMBOLIZE) {
            match value.to_str().map(str::trim) {
                Some("0" | "false" | "no" | "off") => config.symbolize = Some(false),
                Some("1" | "true" | "yes" | "on") => config.symbolize = Some(true),
                _ => warn(format!(
                    "ignoring {SYMBOLIZE}={value:?}: not 0 or 1 (0 leaves symbolization to the collector); \
                     symbolizing in process"
                )),
            }
        }
        config.exit_dump = get(DUMP_AT_EXIT).map(PathBuf::from);
        let interval = get(DUMP_INTERVAL).map(|value| {
            value.to_str().and_then(parse_interval).unwrap_or_else(|| {
                warn(format!(
                    "ignoring {DUMP_INTERVAL}={value:?}: not a duration (e.g. 60, 30s, 5m, 1h); using the \
                     default, {}",
                    humantime::format_duration(DEFAULT_INTERVAL)
                ));
                DEFAULT_INTERVAL
            })
        });
        let keep = get(DUMP_KEEP).map(|value| {
            value
                .to_str()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .filter(|&keep| keep > 0)
                .unwrap_or_else(|| {
                    warn(format!(
                        "ignoring {DUMP_KEEP}={value:?}: not a positive whole number of files; using the \
                         default, {DEFAULT_KEEP}"
                    ));
                    DEFAULT_KEEP
                })
        });
        match get(DUMP_DIR) {
            Some(dir) => {
                config.periodic = Some(Periodic {
                    dir: PathBuf::from(dir),
                    interval: interval.unwrap_or(DEFAULT_INTERVAL),
                    keep: keep.unwrap_or(DEFAULT_KEEP),
                });
            }
            None if interval.is_some() || keep.is_some() => warn(format!(
                "ignoring {DUMP_INTERVAL} and {DUMP_KEEP}: periodic profiles need {DUMP_DIR}, a directory \
                 to write them to"
            )),
            None => {}
        }
        config
    }
}

/// A sample rate: bytes, with an optional binary suffix (`524288`, `512KiB`, `512K`, `4 MiB`, `1.5M`); `K`,
/// `KB` and `KiB` all mean 1024.
fn parse_rate(value: &str) -> Option<usize> {
    let bytes = parse_size::Config::new()
        .with_binary()
        .parse_size(value.trim())
        .ok()?;
    usize::try_from(bytes).ok()
}

/// An interval: whole seconds (`60`), or a duration with units (`30s`, `5m`, `1h 30m`, `500ms`); not zero.
fn parse_interval(value: &str) -> Option<Duration> {
    let value = value.trim();
    let interval = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => humantime::parse_duration(value).ok()?,
    };
    (!interval.is_zero()).then_some(interval)
}

/// Reports on stderr; a failed write is ignored (`eprintln!` would panic, and abort the process here).
fn warn(message: String) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "heap-sampler: {message}");
}

// The process's constructors: `.init_array` on ELF systems, `__mod_init_func` on Darwin.
#[used]
#[cfg_attr(not(target_vendor = "apple"), unsafe(link_section = ".init_array"))]
#[cfg_attr(
    target_vendor = "apple",
    unsafe(link_section = "__DATA,__mod_init_func")
)]
static CONFIGURE: extern "C" fn() = configure;

/// The process constructor: reads the environment once and applies it.
extern "C" fn configure() {
    // First, outside the guard, where the probes' allocations reach the sampler: from here on the
    // profiler's frames are known by address, and whether the allocator is installed is known.
    crate::stack::path::learn();
    let Some(guard) = Guard::enter() else { return };
    // Before any thread but this one exists: no fork can find a profiler lock held from here on.
    crate::fork::register_fork_handlers();
    crate::stack::read_bounds_early(&guard);
    let config = Config::parse(getenv, warn);
    if let Some(rate) = config.rate {
        crate::set_sample_rate(rate);
    }
    if let Some(symbolize) = config.symbolize {
        crate::set_symbolize(symbolize);
    }
    if let Some(path) = config.exit_dump {
        dump_at_exit_to(path);
    }
    if let Some(periodic) = config.periodic {
        let started = std::thread::Builder::new()
            .name("heap-sampler-dump".into())
            .spawn(move || dump_periodically(&periodic));
        if let Err(e) = started {
            warn(format!(
                "{DUMP_DIR} is set, but the thread for periodic profiles cannot start: {e}; no periodic \
                 profiles"
            ));
        }
    }
}

/// The environment variable `name`, read with `getenv` (no lock, unlike `std::env::var`, which waits for
/// the environment lock).
fn getenv(name: &str) -> Option<OsString> {
    let name = CString::new(name).ok()?;
    // SAFETY: `name` is a NUL-terminated string. `getenv` returns null or a pointer to a NUL-terminated
    // string in the environment, copied at once; before `main`, no thread of the program can be changing
    // the environment meanwhile.
    unsafe {
        let value = libc::getenv(name.as_ptr());
        if value.is_null() {
            return None;
        }
        Some(OsStr::from_bytes(CStr::from_ptr(value).to_bytes()).to_owned())
    }
}

/// Where to write the profile at exit, and the process that asked (a forked child that calls `exit` does
/// not overwrite its parent's profile).
static EXIT_DUMP: OnceLock<PathBuf> = OnceLock::new();
static EXIT_DUMP_PID: AtomicU32 = AtomicU32::new(0);

fn dump_at_exit_to(path: PathBuf) {
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
    let stats = || crate::stats();
    let bytes = |n: u64| human_bytes(i64::try_from(n).unwrap_or(i64::MAX));
    let written = crate::dump_profile().and_then(|profile| crate::output::write(path, &profile));
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
    match crate::dump_peak_profile().and_then(|peak| crate::output::write(&peak_path, &peak)) {
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
fn dump_periodically(periodic: &Periodic) {
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
        if let Err(e) = crate::dump_profile()
            .and_then(|bytes| crate::output::write(&path, &bytes))
            .and_then(|()| remove_old(&periodic.dir, periodic.keep))
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
    use std::collections::HashMap;

    fn parse(vars: &[(&str, &str)]) -> (Config, Vec<String>) {
        let vars: HashMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        let mut warnings = Vec::new();
        let config = Config::parse(|name| vars.get(name).cloned(), |w| warnings.push(w));
        (config, warnings)
    }

    #[test]
    fn sizes_and_intervals_accept_units() {
        assert_eq!(parse_rate("524288"), Some(524_288));
        assert_eq!(parse_rate("512KiB"), Some(524_288));
        assert_eq!(parse_rate("512 KiB"), Some(524_288));
        assert_eq!(parse_rate("512k"), Some(524_288));
        assert_eq!(parse_rate("512KB"), Some(524_288));
        assert_eq!(parse_rate("4MiB"), Some(4 << 20));
        assert_eq!(parse_rate("0"), Some(0));
        assert_eq!(parse_rate("1"), Some(1));
        assert_eq!(parse_rate("lots"), None);
        assert_eq!(parse_rate("-1"), None);
        assert_eq!(parse_interval("60"), Some(Duration::from_secs(60)));
        assert_eq!(parse_interval("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_interval("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_interval("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_interval("0"), None);
        assert_eq!(parse_interval("soon"), None);
    }

    #[test]
    fn a_full_configuration_parses_without_warnings() {
        let (config, warnings) = parse(&[
            (RATE, "64KiB"),
            (DUMP_AT_EXIT, "/tmp/heap.pb.gz"),
            (DUMP_DIR, "/var/tmp/heap"),
            (DUMP_INTERVAL, "5m"),
            (DUMP_KEEP, "3"),
            (SYMBOLIZE, "0"),
        ]);
        assert_eq!(warnings, Vec::<String>::new());
        assert_eq!(
            config,
            Config {
                rate: Some(65_536),
                symbolize: Some(false),
                exit_dump: Some(PathBuf::from("/tmp/heap.pb.gz")),
                periodic: Some(Periodic {
                    dir: PathBuf::from("/var/tmp/heap"),
                    interval: Duration::from_secs(300),
                    keep: 3,
                }),
            }
        );
        assert_eq!(parse(&[]).0, Config::default());
        assert_eq!(
            parse(&[(RATE, ""), (DUMP_AT_EXIT, "")]),
            (Config::default(), vec![])
        );
    }

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

    #[test]
    fn garbage_is_reported_once_per_variable_with_the_default_used() {
        let (config, warnings) = parse(&[
            (RATE, "lots"),
            (DUMP_DIR, "/var/tmp/heap"),
            (DUMP_INTERVAL, "soon"),
            (DUMP_KEEP, "0"),
        ]);
        assert_eq!(config.rate, None);
        assert_eq!(
            config.periodic,
            Some(Periodic {
                dir: PathBuf::from("/var/tmp/heap"),
                interval: DEFAULT_INTERVAL,
                keep: DEFAULT_KEEP,
            })
        );
        assert_eq!(
            warnings,
            [
                "ignoring HEAP_SAMPLER_RATE=\"lots\": not a size in bytes (e.g. 524288, 512KiB, 4MiB; 0 turns \
                 sampling off); using the program's sample rate, by default 512.00 KiB",
                "ignoring HEAP_SAMPLER_DUMP_INTERVAL=\"soon\": not a duration (e.g. 60, 30s, 5m, 1h); using \
                 the default, 1m",
                "ignoring HEAP_SAMPLER_DUMP_KEEP=\"0\": not a positive whole number of files; using the \
                 default, 10",
            ]
        );
        let (config, warnings) = parse(&[(DUMP_KEEP, "3")]);
        assert_eq!(config, Config::default());
        assert_eq!(
            warnings,
            [
                "ignoring HEAP_SAMPLER_DUMP_INTERVAL and HEAP_SAMPLER_DUMP_KEEP: periodic profiles need \
              HEAP_SAMPLER_DUMP_DIR, a directory to write them to"
            ]
        );
    }
}
