//! In-use figures do not drift under churn: frees subtract exactly what their allocations added, also when
//! the allocator hands freed addresses straight back out.

mod common;

use std::alloc::System;
use std::collections::VecDeque;

use heap_sampler::SamplingAllocator;

#[global_allocator]
static ALLOC: SamplingAllocator<System> = SamplingAllocator::new(System);

const BIG: usize = 64 << 10;
const SMALL: usize = 64;
const BIG_LIVE: usize = 1_000;
const SMALL_LIVE: usize = 1_000_000;

#[inline(never)]
fn big_buffer() -> Vec<u8> {
    Vec::with_capacity(BIG)
}

#[inline(never)]
fn small_buffer() -> Vec<u8> {
    Vec::with_capacity(SMALL)
}

/// Rate 16 KiB. Big blocks: p = 1 − e^(−4) = 0.982; the in-use estimate of 1,000 live ones has relative
/// standard error sqrt((1−p)/(n·p)) = 0.0043, so ±3 % is 7 σ, and the two dumps' ratio stays within ±5 %;
/// alloc_space over 201,000 blocks has 0.0003, so ±1 % is 33 σ. Small blocks: p = 0.0039, 10^6 live:
/// 0.016, so ±8 % is 5 σ.
#[test]
fn in_use_does_not_drift_under_churn() {
    let _serial = common::serial();
    heap_sampler::set_sample_rate(16 << 10);
    heap_sampler::set_seed(99);
    let mut big: VecDeque<Vec<u8>> = (0..BIG_LIVE).map(|_| big_buffer()).collect();
    let mut small: VecDeque<Vec<u8>> = (0..SMALL_LIVE).map(|_| small_buffer()).collect();
    let big_truth = (BIG_LIVE * BIG) as f64;
    let small_truth = (SMALL_LIVE * SMALL) as f64;
    let mut big_inuse = Vec::new();
    for iteration in 1..=200_000 {
        big.pop_front();
        big.push_back(big_buffer());
        for _ in 0..100 {
            small.pop_front();
            small.push_back(small_buffer());
        }
        if iteration == 20_000 || iteration == 200_000 {
            let p = common::profile();
            let (b, s) = (
                common::at_function(&p, "big_buffer"),
                common::at_function(&p, "small_buffer"),
            );
            let big_error = (b.inuse_space as f64 - big_truth) / big_truth;
            let small_error = (s.inuse_space as f64 - small_truth) / small_truth;
            eprintln!(
                "{iteration}: big in use {:+.2} %, small in use {:+.2} %",
                big_error * 100.0,
                small_error * 100.0
            );
            assert!(
                big_error.abs() <= 0.03,
                "{iteration}: big in use {} vs {big_truth}",
                b.inuse_space
            );
            assert!(
                small_error.abs() <= 0.08,
                "{iteration}: small in use {} vs {small_truth}",
                s.inuse_space
            );
            big_inuse.push(b.inuse_space as f64);
            if iteration == 200_000 {
                let allocated = ((BIG_LIVE + 200_000) * BIG) as f64;
                let alloc_error = (b.alloc_space as f64 - allocated) / allocated;
                assert!(
                    alloc_error.abs() <= 0.01,
                    "big alloc_space {} vs {allocated}",
                    b.alloc_space
                );
            }
        }
    }
    let ratio = big_inuse[1] / big_inuse[0];
    assert!(
        (0.95..=1.05).contains(&ratio),
        "big in use drifted between dumps: ratio {ratio}"
    );
    drop(big);
    drop(small);
    let p = common::profile();
    let (b, s) = (
        common::at_function(&p, "big_buffer"),
        common::at_function(&p, "small_buffer"),
    );
    assert_eq!(
        (b.inuse_objects, b.inuse_space),
        (0, 0),
        "big site after freeing everything"
    );
    assert_eq!(
        (s.inuse_objects, s.inuse_space),
        (0, 0),
        "small site after freeing everything"
    );
}
