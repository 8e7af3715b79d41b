//! No deadlock with the other users of the unwinder and the dynamic loader: backtrace's lock, std's
//! backtraces in panic hooks, dlopen/dlclose, dl_iterate_phdr with an allocating callback, plain churn, and
//! dumps every 100 ms, all in exact mode (every allocation captures a stack). Linux: the loader's
//! `dl_iterate_phdr` is one of the users.
#![cfg(target_os = "linux")]

mod common;

use std::alloc::System;
use std::ffi::{CStr, c_int, c_void};
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use heap_sampler::SamplingAllocator;

#[global_allocator]
static ALLOC: SamplingAllocator<System> = SamplingAllocator::new(System);

const WORKERS: [&str; 6] = [
    "backtrace",
    "panic hook",
    "dlopen/dlclose",
    "dl_iterate_phdr",
    "churn 1",
    "churn 2",
];

fn backtraces() {
    let trace = backtrace::Backtrace::new();
    black_box(format!("{trace:?}"));
}

/// How long the workers' first iterations may take. Under AddressSanitizer the panic worker's first panic,
/// whose backtrace has std parse the instrumented binary's debug info with every allocation sampled, takes
/// far longer than in a plain build.
fn warmup_limit() -> Duration {
    if common::under_address_sanitizer() {
        Duration::from_secs(120)
    } else {
        Duration::from_secs(30)
    }
}

fn panics() {
    black_box(std::panic::catch_unwind(|| panic!("expected panic, caught")).is_err());
}

fn dlopen_dlclose() {
    for name in [c"libz.so.1", c"libexpat.so.1", c"libm.so.6"] {
        // SAFETY: dlopen with a valid C string; the handle is closed below and never used otherwise.
        let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if !handle.is_null() {
            // SAFETY: `handle` came from dlopen and is closed once.
            unsafe { libc::dlclose(handle) };
            return;
        }
    }
    panic!("no system library to dlopen");
}

unsafe extern "C" fn collect_names(
    info: *mut libc::dl_phdr_info,
    _size: usize,
    data: *mut c_void,
) -> c_int {
    // SAFETY: dl_iterate_phdr passes a valid `info`, and `data` is the `Vec<String>` given below.
    let (info, names) = unsafe { (&*info, &mut *(data as *mut Vec<String>)) };
    if !info.dlpi_name.is_null() {
        // SAFETY: `dlpi_name` is a NUL-terminated string owned by the loader for the callback's duration.
        names.push(
            unsafe { CStr::from_ptr(info.dlpi_name) }
                .to_string_lossy()
                .into_owned(),
        );
    }
    0
}

fn iterate_phdr() {
    let mut names: Vec<String> = Vec::new();
    // SAFETY: the callback matches dl_iterate_phdr's signature and only touches `names`.
    unsafe {
        libc::dl_iterate_phdr(
            Some(collect_names),
            &mut names as *mut Vec<String> as *mut c_void,
        )
    };
    assert!(!names.is_empty());
}

fn churn(state: &mut u64) {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    let size = 1 + (*state % (64 << 10)) as usize;
    drop(black_box(vec![0u8; size]));
}

#[test]
fn no_deadlock_with_unwinders_loaders_and_dumps() {
    if !common::is_child() {
        let (_, stderr) = common::run_child(
            "no_deadlock_with_unwinders_loaders_and_dumps",
            Duration::from_secs(60) + warmup_limit(),
        );
        eprintln!(
            "{}",
            stderr
                .lines()
                .filter(|l| l.starts_with("progress"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        return;
    }
    heap_sampler::set_sample_rate(1);
    std::panic::set_hook(Box::new(|info| {
        let trace = black_box(std::backtrace::Backtrace::force_capture().to_string());
        if !info
            .payload()
            .downcast_ref::<&str>()
            .is_some_and(|m| m.starts_with("expected panic"))
        {
            eprintln!("{info}\n{trace}");
        }
    }));
    let progress: [AtomicU64; 6] = Default::default();
    let stop = AtomicBool::new(false);
    let mut dumps = 0;
    /// Stops the workers when the monitor leaves, also by a panic, so that a failure ends the child.
    struct StopOnDrop<'a>(&'a AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    std::thread::scope(|s| {
        for (i, counter) in progress.iter().enumerate() {
            let stop = &stop;
            s.spawn(move || {
                let mut state = 0x2545_F491_4F6C_DD1D_u64 + i as u64;
                while !stop.load(Ordering::Relaxed) {
                    match i {
                        0 => backtraces(),
                        1 => panics(),
                        2 => dlopen_dlclose(),
                        3 => iterate_phdr(),
                        _ => churn(&mut state),
                    }
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        let _stop = StopOnDrop(&stop);
        // Warm-up: each worker's first iteration loads debug info (std's and backtrace's symbolizers), which in
        // exact mode samples every one of its allocations; the one-second progress rule starts after it.
        let warmup = Instant::now();
        while progress.iter().any(|c| c.load(Ordering::Relaxed) == 0) {
            assert!(
                warmup.elapsed() < warmup_limit(),
                "a worker never finished its first iteration: iterations by worker ({WORKERS:?}): {:?}",
                progress
                    .iter()
                    .map(|c| c.load(Ordering::Relaxed))
                    .collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        eprintln!("warm-up took {:?}", warmup.elapsed());
        let start = Instant::now();
        let mut seen: Vec<u64> = progress.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        let mut last_second = start;
        // At least 10 s and 10 dumps; a dump that never ends is caught by the child's watchdog.
        while start.elapsed() < Duration::from_secs(10) || dumps < 10 {
            std::thread::sleep(Duration::from_millis(100));
            common::check_contract(&common::profile());
            dumps += 1;
            if last_second.elapsed() >= Duration::from_secs(1) {
                let now: Vec<u64> = progress.iter().map(|c| c.load(Ordering::Relaxed)).collect();
                eprintln!("progress after {:?}: {now:?}", start.elapsed());
                // A worker that made no progress in the last second may only have been descheduled on a busy
                // machine: wait for its next iteration. One that never makes another is deadlocked, and the
                // child's watchdog prints every thread's stack.
                for (i, worker) in WORKERS.iter().enumerate() {
                    common::wait_for(&format!("an iteration of thread {worker:?}"), || {
                        progress[i].load(Ordering::Relaxed) > seen[i]
                    });
                }
                seen.copy_from_slice(&now);
                last_second = Instant::now();
            }
        }
    });
    let _ = std::panic::take_hook();
}
