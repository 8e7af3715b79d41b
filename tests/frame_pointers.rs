//! The frame-pointer unwinder never crashes, whatever the code was built with, and its profiles keep the
//! pprof contract; where the code has frame pointers, it finds the allocating function.

mod common;

use std::alloc::System;
use std::hint::black_box;

use heap_sampler::{SamplingAllocator, Unwinder};

#[global_allocator]
static ALLOC: SamplingAllocator<System> = SamplingAllocator::new(System);

#[inline(never)]
fn nested(depth: usize, kept: &mut Vec<Vec<u8>>) {
    if depth == 0 {
        kept.push(black_box(vec![9u8; 333]));
    } else {
        nested(black_box(depth - 1), kept);
    }
    black_box(&kept);
}

#[test]
fn frame_pointer_walks_are_safe_and_valid() {
    let _serial = common::serial();
    heap_sampler::set_sample_rate(1);
    heap_sampler::set_unwinder(Unwinder::FramePointer);
    let expected = if cfg!(any(target_arch = "x86_64", target_arch = "aarch64")) {
        Unwinder::FramePointer
    } else {
        Unwinder::Dwarf
    };
    assert_eq!(heap_sampler::unwinder(), expected);
    // Many threads, deep and shallow stacks, and std code in between (Vec growth, thread start-up): without
    // frame pointers the walks end early, but never read outside the thread's stack.
    let kept: Vec<Vec<Vec<u8>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    let mut kept = Vec::new();
                    for depth in [0, 5, 50, 500] {
                        nested(depth, &mut kept);
                    }
                    kept
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let p = common::profile();
    heap_sampler::set_unwinder(Unwinder::Dwarf);
    common::check_contract(&p);
    let total: i64 = p.sample.iter().map(|s| s.value[3]).sum();
    assert!(
        total >= 16 * 333,
        "every allocation is still counted: {total}"
    );
    let found = common::at_function(&p, "nested");
    eprintln!(
        "in use through `nested` found by frame pointers: {} of {} bytes",
        found.inuse_space,
        16 * 333
    );
    // CI sets this when it builds the tests with RUSTFLAGS="-C force-frame-pointers=yes".
    if std::env::var_os("HEAP_SAMPLER_TEST_FRAME_POINTERS").is_some() {
        assert!(
            found.inuse_space >= 16 * 333,
            "with frame pointers, every allocation is found under `nested`"
        );
    }
    drop(kept);
}
