//! Configuration by environment, in processes started with it: the sample rate, a profile at exit, periodic
//! profiles with a bounded number of files, and garbage values reported once without stopping the program.
//! The example `env_config` installs the allocator and calls nothing else of heap_sampler, so these runs also
//! show that the constructor reading the environment is linked into such a program.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use heap_sampler::SamplingAllocator;
use std::alloc::System;

#[global_allocator]
static ALLOC: SamplingAllocator<System> = SamplingAllocator::new(System);

const ENTRY: i64 = 16 * 1024;

/// Runs the `env_config` example with `entries` cache entries, `requests` requests and `env`.
fn run_example(entries: i64, requests: i64, env: &[(&str, &Path)]) -> Output {
    let out = Command::new(common::example("env_config"))
        .args([entries.to_string(), requests.to_string()])
        .envs(env.iter().map(|(k, v)| (k, v.as_os_str())))
        .output()
        .expect("run the env_config example");
    assert!(
        out.status.success(),
        "the example failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn an_unmodified_program_writes_an_exact_profile_at_exit() {
    let dir = common::temp_dir("env-exit");
    let path = dir.join("exit.pb.gz");
    let (entries, requests) = (300, 500);
    let out = run_example(
        entries,
        requests,
        &[
            ("HEAP_SAMPLER_RATE", Path::new("1")),
            ("HEAP_SAMPLER_DUMP_AT_EXIT", &path),
        ],
    );
    // One line: where the profiles are and which view to open (at exit, what was held is mostly freed).
    let peak_path = dir.join("exit.peak.pb.gz");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line after the exit dump:\n{stderr}");
    for said in [
        "heap-sampler: wrote the heap profile at exit to ",
        path.to_str().unwrap(),
        "-sample_index=alloc_space",
        peak_path.to_str().unwrap(),
    ] {
        assert!(lines[0].contains(said), "{said:?} in {stderr}");
    }
    // The peak profile beside it holds the cache too (the highest in-use estimate, with it live).
    let peak = common::decode(&std::fs::read(&peak_path).expect("the peak profile beside it"));
    assert!(common::at_function(&peak, "build_cache").inuse_space >= entries * ENTRY);
    let p = common::decode(&std::fs::read(&path).expect("a profile written at exit"));
    assert_eq!(p.period, 1, "HEAP_SAMPLER_RATE=1 is exact mode");
    // Exact mode: every allocation, weight 1. The cache (its entries and the vector holding them) is held
    // until exit; the requests' buffers are freed.
    let cache_bytes = entries * ENTRY + entries * std::mem::size_of::<Vec<u8>>() as i64;
    let cache = common::at_function(&p, "build_cache");
    assert_eq!(
        (cache.inuse_objects, cache.inuse_space),
        (entries + 1, cache_bytes)
    );
    assert_eq!(
        (cache.alloc_objects, cache.alloc_space),
        (entries + 1, cache_bytes)
    );
    let churn = common::at_function(&p, "serve_requests");
    assert_eq!((churn.inuse_objects, churn.inuse_space), (0, 0));
    assert_eq!(
        (churn.alloc_objects, churn.alloc_space),
        (requests, requests * ENTRY)
    );
    if let Some(go) = common::go() {
        let top = common::pprof(&go, &["-top", path.to_str().unwrap()]);
        assert!(top.contains("env_config::build_cache"), "{top}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_rate_with_a_binary_suffix_sets_the_period() {
    let dir = common::temp_dir("env-rate");
    let path = dir.join("exit.pb.gz");
    run_example(
        2000,
        0,
        &[
            ("HEAP_SAMPLER_RATE", Path::new("64KiB")),
            ("HEAP_SAMPLER_DUMP_AT_EXIT", &path),
        ],
    );
    let p = common::decode(&std::fs::read(&path).unwrap());
    assert_eq!(p.period, 64 * 1024);
    // 2,000 allocations of 16 KiB at 64 KiB are each sampled with p = 1 − e^(−1/4) = 0.22: the site is
    // missed with probability 0.78^2000, never.
    assert!(common::at_function(&p, "build_cache").inuse_space > 0);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn garbage_is_reported_once_and_the_program_runs_on() {
    let dir = common::temp_dir("env-garbage");
    let out = run_example(
        10,
        10,
        &[
            ("HEAP_SAMPLER_RATE", Path::new("lots")),
            ("HEAP_SAMPLER_DUMP_INTERVAL", Path::new("soon")),
            ("HEAP_SAMPLER_DUMP_KEEP", Path::new("all")),
            ("HEAP_SAMPLER_DUMP_DIR", &dir),
            (
                "HEAP_SAMPLER_DUMP_AT_EXIT",
                &dir.join("missing").join("exit.pb.gz"),
            ),
        ],
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("cached 10 entries"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    for (variable, default) in [
        (
            "HEAP_SAMPLER_RATE=\"lots\"",
            "using the program's sample rate, by default 512.00 KiB",
        ),
        (
            "HEAP_SAMPLER_DUMP_INTERVAL=\"soon\"",
            "using the default, 1m",
        ),
        ("HEAP_SAMPLER_DUMP_KEEP=\"all\"", "using the default, 10"),
    ] {
        let reports: Vec<&&str> = lines.iter().filter(|l| l.contains(variable)).collect();
        assert_eq!(reports.len(), 1, "{variable} reported once:\n{stderr}");
        assert!(
            reports[0].starts_with("heap-sampler: ignoring") && reports[0].ends_with(default),
            "{variable}:\n{stderr}"
        );
    }
    let exit = lines
        .iter()
        .filter(|l| l.starts_with("heap-sampler: HEAP_SAMPLER_DUMP_AT_EXIT: cannot write"))
        .count();
    assert_eq!(exit, 1, "the failed profile at exit is reported:\n{stderr}");
    assert_eq!(lines.len(), 4, "nothing else is reported:\n{stderr}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// An exit dump into a full device (a node like `/dev/full`, made in a temporary directory): the failure is
/// reported on stderr, the node stays a device, and the program's exit status is its own.
#[test]
fn an_exit_dump_that_fails_is_reported_and_the_exit_status_kept() {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::FileTypeExt;
    let dir = common::temp_dir("env-full");
    let full = dir.join("full");
    let c_path = std::ffi::CString::new(full.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path; mknod only creates the node (it needs root, as CI runs).
    let made =
        unsafe { libc::mknod(c_path.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(1, 7)) } == 0;
    let device = if made {
        full
    } else {
        Path::new("/dev/full").to_path_buf()
    };
    let out = run_example(10, 10, &[("HEAP_SAMPLER_DUMP_AT_EXIT", &device)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("HEAP_SAMPLER_DUMP_AT_EXIT: cannot write")
            && stderr.contains("No space left"),
        "the failed exit dump is reported:\n{stderr}"
    );
    assert!(
        std::fs::metadata(&device)
            .unwrap()
            .file_type()
            .is_char_device()
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// Periodic profiles kept, and what the child holds while they are written.
const KEEP: usize = 2;
const BLOCKS: usize = 64;
const BLOCK: usize = 10_000;

/// Sequence numbers of the periodic profiles in `dir` (`heap-sampler-<time>-<pid>-<sequence>.pb.gz`); none
/// while the dump thread has not created the directory yet.
fn sequences(dir: &Path) -> Vec<u64> {
    let entries = match std::fs::read_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        entries => entries.unwrap(),
    };
    let mut found: Vec<u64> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|name| {
            let stem = name.strip_prefix("heap-sampler-")?.strip_suffix(".pb.gz")?;
            stem.rsplit('-').next()?.parse().ok()
        })
        .collect();
    found.sort();
    found
}

/// In the child (started with the periodic variables): allocates, then waits until enough profiles were
/// written after the allocations that the kept ones all show them.
fn periodic_child() {
    let dir = std::path::PathBuf::from(std::env::var_os("HEAP_SAMPLER_DUMP_DIR").unwrap());
    let mut kept = Vec::with_capacity(BLOCKS);
    for _ in 0..BLOCKS {
        common::recurse(0, BLOCK, &mut kept);
    }
    // A profile being written now may have copied the table before the allocations; the one after it and
    // all later ones show them. Wait for KEEP of those, and one more: the dump thread writes a profile and
    // then removes the oldest, so only once the next profile exists has a profile older than the kept ones
    // certainly been removed.
    let first_after = sequences(&dir).last().copied().unwrap_or(0) + 2;
    while sequences(&dir).last().copied().unwrap_or(0) < first_after + KEEP as u64 {
        std::thread::sleep(Duration::from_millis(20));
    }
    // Held until the process exits: a profile the dump thread writes from here on must still show them.
    std::mem::forget(kept);
}

#[test]
fn periodic_profiles_keep_the_newest_files() {
    if common::is_child() {
        return periodic_child();
    }
    let dir = common::temp_dir("env-periodic").join("profiles");
    let keep = KEEP.to_string();
    let (_, stderr) = common::run_child_with_env(
        "periodic_profiles_keep_the_newest_files",
        &[
            ("HEAP_SAMPLER_RATE", "1"),
            ("HEAP_SAMPLER_DUMP_DIR", dir.to_str().unwrap()),
            ("HEAP_SAMPLER_DUMP_INTERVAL", "100ms"),
            ("HEAP_SAMPLER_DUMP_KEEP", &keep),
        ],
        Duration::from_secs(120),
    );
    assert!(
        !stderr.contains("heap-sampler:"),
        "nothing reported:\n{stderr}"
    );
    let found = sequences(&dir);
    // Each profile is written before the oldest is removed: the child, ending at any point, leaves the
    // newest KEEP, and one more if it ended between a write and its removal.
    assert!(
        (KEEP..=KEEP + 1).contains(&found.len()),
        "the newest {KEEP} are kept: {found:?}"
    );
    assert!(found[0] > 1, "older profiles were removed: {found:?}");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with('.') {
            // A profile the child was writing when it exited, never renamed into place.
            continue;
        }
        let p = common::decode(&std::fs::read(&path).unwrap());
        let v = common::at_function(&p, "recurse");
        assert_eq!(
            (v.inuse_objects, v.inuse_space),
            (BLOCKS as i64, (BLOCKS * BLOCK) as i64),
            "{name}: exact mode"
        );
    }
    std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
}
