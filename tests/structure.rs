//! A profile with many stacks from several threads keeps every rule of the pprof contract, and
//! `go tool pprof` reads it.

mod common;

use std::alloc::System;

use heap_sampler::SamplingAllocator;

#[global_allocator]
static ALLOC: SamplingAllocator<System> = SamplingAllocator::new(System);

#[inline(never)]
fn worker(thread: usize) -> Vec<Vec<u8>> {
    let mut kept = Vec::with_capacity(30);
    for depth in 0..30 {
        // A different caller line per thread makes the stacks of each thread distinct.
        match thread {
            0 => common::recurse(depth, 1000, &mut kept),
            1 => common::recurse(depth, 1000, &mut kept),
            2 => common::recurse(depth, 1000, &mut kept),
            _ => common::recurse(depth, 1000, &mut kept),
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
    let stacks = common::samples_at(&p, "recurse").len();
    assert!(stacks >= 100, "{stacks} distinct stacks through recurse");
    let v = common::at_function(&p, "recurse");
    assert_eq!((v.inuse_objects, v.inuse_space), (120, 120_000));
    common::check_contract(&p);

    if let Some(go) = common::go() {
        let dir = common::temp_dir("structure");
        let path = dir.join("structure.pb.gz");
        std::fs::write(&path, &bytes).unwrap();
        let raw = common::pprof(&go, &["-raw", path.to_str().unwrap()]);
        assert!(
            raw.contains("structure::common::recurse"),
            "pprof -raw lists the sites:\n{raw}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
    drop(kept);
}
