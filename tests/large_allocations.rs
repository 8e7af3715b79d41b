//! Blocks at and above the sample rate are weighted right (Go once over-counted blocks ≥ rate by 58 %).

mod common;

use std::alloc::System;
use std::hint::black_box;

use heap_sampler::SamplingAllocator;

#[global_allocator]
static ALLOC: SamplingAllocator<System> = SamplingAllocator::new(System);

const GIB: usize = 1 << 30;

#[inline(never)]
fn blocks_32k() {
    churn(32 << 10)
}
#[inline(never)]
fn blocks_64k() {
    churn(64 << 10)
}
#[inline(never)]
fn blocks_128k() {
    churn(128 << 10)
}
#[inline(never)]
fn blocks_512k() {
    churn(512 << 10)
}

/// Allocates 1 GiB in blocks of `size` bytes, freeing each at once.
#[inline(always)]
fn churn(size: usize) {
    for _ in 0..GIB / size {
        drop(black_box(Vec::<u8>::with_capacity(size)));
    }
}

/// Rate 64 KiB. The worst site, 32 KiB blocks: p = 1 − e^(−0.5) = 0.393, n = 32,768 blocks, relative standard
/// error sqrt((1−p)/(n·p)) = 0.0069, so ±3 % is 4.4 σ (false failure ~1e-5 for this fixed seed's draw); the
/// larger blocks have smaller errors (512 KiB: p = 0.9997).
#[test]
fn blocks_at_and_above_the_rate_are_estimated_within_3_percent() {
    let _serial = common::serial();
    heap_sampler::set_sample_rate(64 << 10);
    heap_sampler::set_seed(2024);
    let sites: [(&str, fn(), usize); 4] = [
        ("blocks_32k", blocks_32k, 32 << 10),
        ("blocks_64k", blocks_64k, 64 << 10),
        ("blocks_128k", blocks_128k, 128 << 10),
        ("blocks_512k", blocks_512k, 512 << 10),
    ];
    for (_, run, _) in &sites {
        run();
    }
    let p = common::profile();
    for (name, _, size) in sites {
        let v = common::at_function(&p, name);
        let space_error = (v.alloc_space as f64 - GIB as f64) / GIB as f64;
        let objects = (GIB / size) as f64;
        let objects_error = (v.alloc_objects as f64 - objects) / objects;
        eprintln!(
            "{name}: alloc_space error {:+.3} %, alloc_objects error {:+.3} %",
            space_error * 100.0,
            objects_error * 100.0
        );
        assert!(
            space_error.abs() <= 0.03,
            "{name}: alloc_space {} vs {GIB}",
            v.alloc_space
        );
        assert!(
            objects_error.abs() <= 0.03,
            "{name}: alloc_objects {} vs {objects}",
            v.alloc_objects
        );
        assert_eq!(v.inuse_space, 0, "{name}: all freed");
    }
}
