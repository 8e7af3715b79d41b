//! A profile with many stacks from several threads keeps every rule of the pprof contract, and
//! `go tool pprof` reads it.

mod common;

use std::alloc::System;
use std::hint::black_box;

use heap_sampler::SamplingAllocator;

#[global_allocator]
static ALLOC: SamplingAllocator<System> = SamplingAllocator::new(System);

/// Allocates after `depth` nested calls: each depth is a distinct stack.
#[inline(never)]
fn nest(depth: usize, kept: &mut Vec<Vec<u8>>) {
    if depth == 0 {
        kept.push(black_box(vec![1u8; 1000]));
    } else {
        nest(black_box(depth - 1), kept);
    }
    black_box(&kept);
}

#[inline(never)]
fn worker(thread: usize) -> Vec<Vec<u8>> {
    let mut kept = Vec::with_capacity(30);
    for depth in 0..30 {
        // A different caller line per thread makes the stacks of each thread distinct.
        match thread {
            0 => nest(depth, &mut kept),
            1 => nest(depth, &mut kept),
            2 => nest(depth, &mut kept),
            _ => nest(depth, &mut kept),
        }
    }
    kept
}

#[test]
fn many_stacks_from_four_threads_follow_the_contract() {
    let _serial = common::serial();
    heap_sampler::set_sample_rate(1);
    let kept: Vec<Vec<Vec<u8>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4).map(|t| s.spawn(move || worker(t))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let bytes = heap_sampler::dump_profile().unwrap();
    let p = common::decode(&bytes);
    let stacks = common::samples_at(&p, "nest").len();
    assert!(stacks >= 100, "{stacks} distinct stacks through nest");
    let v = common::at_function(&p, "nest");
    assert_eq!((v.inuse_objects, v.inuse_space), (120, 120_000));
    common::check_contract(&p);

    if let Some(go) = common::go() {
        let dir = common::temp_dir("structure");
        let path = dir.join("structure.pb.gz");
        std::fs::write(&path, &bytes).unwrap();
        let raw = common::pprof(&go, &["-raw", path.to_str().unwrap()]);
        assert!(
            raw.contains("structure::nest"),
            "pprof -raw lists the sites:\n{raw}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
    drop(kept);
}
