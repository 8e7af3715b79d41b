//! A child forked while other threads sample and dump can allocate and dump: it never inherits a profiler
//! lock held by a thread it does not have.

mod common;

use std::alloc::System;
use std::cell::Cell;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use heap_sampler::SamplingAllocator;

#[global_allocator]
static ALLOC: SamplingAllocator<System> = SamplingAllocator::new(System);

/// What a forked child does: allocate (exact mode: every allocation takes the table locks) and dump. The
/// dump takes every lock a symbolized one takes, but reads no debug info: a child's new return addresses
/// would otherwise have each of the 300 children parse the test binary's debug info afresh.
fn in_child() -> i32 {
    heap_sampler::set_symbolize(false);
    let kept: Vec<Vec<u8>> = (0..50).map(|i| vec![1u8; i + 1]).collect();
    black_box(&kept);
    match heap_sampler::dump_profile() {
        Ok(profile) if !profile.is_empty() => 0,
        _ => 1,
    }
}

#[test]
fn forked_children_allocate_and_dump_while_threads_hold_profiler_locks() {
    if !common::is_child() {
        common::run_child(
            "forked_children_allocate_and_dump_while_threads_hold_profiler_locks",
            Duration::from_secs(120),
        );
        return;
    }
    heap_sampler::set_sample_rate(1);
    let stop = AtomicBool::new(false);
    let running = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    drop(black_box(
                        (0..100).map(|i| vec![0u8; i + 1]).collect::<Vec<_>>(),
                    ));
                    once(&running);
                }
            });
        }
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                heap_sampler::dump_profile().unwrap();
                once(&running);
            }
        });
        common::wait_for("every thread's first round", || {
            running.load(Ordering::Relaxed) == 4
        });
        let outcome = fork_children(children(), in_child);
        stop.store(true, Ordering::Relaxed);
        assert_eq!(outcome, (0, 0), "forked children that hung, that failed");
    });
}

/// Counts, once per thread, a thread's first round in `running`, so that children are forked only once
/// every thread is at work.
fn once(running: &AtomicUsize) {
    thread_local!(static COUNTED: Cell<bool> = const { Cell::new(false) });
    if !COUNTED.replace(true) {
        running.fetch_add(1, Ordering::Relaxed);
    }
}

/// How many children each test forks, one after the other. Under AddressSanitizer, which copies its
/// shadow memory's page tables into every child, a third: that run looks for memory errors in the paths a
/// fork takes, which every child takes alike; the plain run forks all of them to meet the rare interleavings.
fn children() -> usize {
    if common::under_address_sanitizer() {
        100
    } else {
        300
    }
}

/// Forks `count` children that run `child` and `_exit` with its status, one at a time; returns how many hung
/// (killed after 5 s) and how many failed.
fn fork_children(count: usize, child: fn() -> i32) -> (usize, usize) {
    let (mut hung, mut failed) = (0, 0);
    for _ in 0..count {
        // SAFETY: the child only runs `child` (allocations, dumps, labels) and calls _exit; malloc and our
        // allocator are fork-safe.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: _exit ends the child without running the parent's destructors or test harness.
            unsafe { libc::_exit(child()) };
        }
        assert!(pid > 0, "fork failed");
        let started = Instant::now();
        let mut status = 0;
        loop {
            // SAFETY: waiting on our own child.
            if unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == pid {
                failed += usize::from(!libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0);
                break;
            }
            if started.elapsed() > Duration::from_secs(5) {
                hung += 1;
                // SAFETY: killing and reaping our own child.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                    libc::waitpid(pid, &mut status, 0);
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    (hung, failed)
}

/// With sampling off (nothing sampled, nothing dumped), threads entering new label sets hold the label
/// registry's lock often: a child forked meanwhile must still enter labels. The fork handlers are in place
/// from process start, not from the first sample.
#[test]
fn forked_children_enter_labels_with_sampling_off() {
    if !common::is_child() {
        common::run_child(
            "forked_children_enter_labels_with_sampling_off",
            Duration::from_secs(120),
        );
        return;
    }
    heap_sampler::set_sample_rate(0);
    let stop = AtomicBool::new(false);
    let running = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for t in 0..2 {
            let (stop, running) = (&stop, &running);
            s.spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    // A new value each time (past the cap of label sets, still through the registry).
                    heap_sampler::with_labels(&[("request", &format!("{t}-{n}"))], || ());
                    n += 1;
                    once(running);
                }
            });
        }
        common::wait_for("every thread's first label set", || {
            running.load(Ordering::Relaxed) == 2
        });
        let outcome = fork_children(children(), || {
            heap_sampler::with_labels(&[("child", "yes")], || black_box(vec![0u8; 64]));
            0
        });
        stop.store(true, Ordering::Relaxed);
        assert_eq!(outcome, (0, 0), "forked children that hung, that failed");
    });
}
