//! Threads that exit, and whose TLS destructors allocate and free, are accounted exactly and never abort.

mod common;

use std::alloc::System;
use std::cell::RefCell;
use std::hint::black_box;
use std::time::Duration;

use heap_sampler::SamplingAllocator;

#[global_allocator]
static ALLOC: SamplingAllocator<System> = SamplingAllocator::new(System);

#[inline(never)]
fn ten_kib_buffer() -> Vec<u8> {
    black_box(vec![1u8; 10 << 10])
}

#[inline(never)]
fn destructor_string() {
    drop(black_box("x".repeat(1 << 10)));
}

#[inline(never)]
fn body_allocation() {
    drop(black_box(vec![2u8; 1 << 10]));
}

/// Held in a `thread_local!`: its destructor runs at thread exit, after much of the thread is torn down.
struct Holder {
    buffer: Vec<u8>,
}

impl Drop for Holder {
    fn drop(&mut self) {
        drop(std::mem::take(&mut self.buffer));
        destructor_string();
    }
}

thread_local! {
    static HOLDER: RefCell<Option<Holder>> = const { RefCell::new(None) };
}

#[inline(never)]
fn thread_body(i: usize) {
    HOLDER.with(|h| {
        *h.borrow_mut() = Some(Holder {
            buffer: ten_kib_buffer(),
        })
    });
    for _ in 0..100 {
        body_allocation();
    }
    println!("thread {i} done");
}

/// Batches of 50 threads: 20 (1,000 threads); 2 under memcheck, whose one core runs them far slower, and
/// for which a hundred threads' exits show any invalid access as well.
fn batches() -> usize {
    if common::under_memcheck() { 2 } else { 20 }
}

/// Exact mode, 1,000 threads (see [`batches`]), 50 at a time; run in a child process so an abort fails the
/// test cleanly.
#[test]
fn exiting_threads_are_accounted_exactly() {
    if !common::is_child() {
        let (stdout, stderr) = common::run_child(
            "exiting_threads_are_accounted_exactly",
            Duration::from_secs(120),
        );
        assert!(
            !stderr.contains("cannot access a Thread Local Storage value"),
            "{stderr}"
        );
        assert_eq!(
            stdout.matches(" done\n").count(),
            batches() * 50,
            "every thread printed"
        );
        return;
    }
    // The first println allocates stdout's buffer for good: do it here, not in a thread body.
    println!("starting");
    heap_sampler::set_sample_rate(1);
    for batch in 0..batches() {
        let handles: Vec<_> = (0..50)
            .map(|i| std::thread::spawn(move || thread_body(batch * 50 + i)))
            .collect();
        handles.into_iter().for_each(|h| h.join().unwrap());
    }
    let p = common::profile();
    let threads = batches() as i64 * 50;
    for (function, allocated) in [
        ("ten_kib_buffer", threads),
        ("destructor_string", threads),
        ("body_allocation", threads * 100),
    ] {
        let v = common::at_function(&p, function);
        assert_eq!(
            v.alloc_objects, allocated,
            "{function}: every allocation recorded"
        );
        assert_eq!(
            (v.inuse_objects, v.inuse_space),
            (0, 0),
            "{function}: nothing left in use"
        );
    }
    for (line, values) in common::samples_at(&p, "thread_body") {
        assert_eq!(
            (values[2], values[3]),
            (0, 0),
            "a stack through thread_body line {line} is still in use"
        );
    }
}
