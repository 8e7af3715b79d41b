//! Threads that sample the same stack count it in buckets of their own (so they do not contend for one);
//! profiles, delta profiles and reports show the stack once, with the sum. Exact mode: every number is exact.

mod common;

use std::alloc::System;
use std::hint::black_box;
use std::time::Duration;

use heap_sampler::SamplingAllocator;

#[global_allocator]
static ALLOC: SamplingAllocator<System> = SamplingAllocator::new(System);

const THREADS: usize = 4;

/// Keeps 100 blocks of 1,000 bytes.
#[inline(never)]
fn hold(kept: &mut Vec<Vec<u8>>) {
    for _ in 0..100 {
        kept.push(black_box(vec![7u8; 1000]));
    }
}

/// Runs [`hold`] on `THREADS` new threads (each its own shard) and returns what they kept.
fn hold_on_threads() -> Vec<Vec<Vec<u8>>> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                s.spawn(|| {
                    let mut kept = Vec::with_capacity(100);
                    hold(&mut kept);
                    kept
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// The samples through `hold`, as `[alloc_objects, alloc_space, inuse_objects, inuse_space]`.
fn at_hold(profile: &heap_sampler::proto::Profile) -> Vec<Vec<i64>> {
    common::samples_at(profile, "shared_stacks::hold")
        .into_iter()
        .map(|(_, values)| values)
        .collect()
}

#[test]
fn threads_sampling_one_stack_show_as_one() {
    let _serial = common::serial();
    heap_sampler::set_sample_rate(1);
    let first = hold_on_threads();
    assert_eq!(
        at_hold(&common::profile()),
        [vec![400, 400_000, 400, 400_000]],
        "one sample for the stack of all four threads"
    );

    // A delta over a window in which four more threads run the same stack: exactly their allocations.
    let during = std::thread::spawn(|| {
        std::thread::sleep(Duration::from_millis(200));
        hold_on_threads()
    });
    let delta = heap_sampler::dump_delta_profile(Duration::from_secs(1)).unwrap();
    let second = during.join().unwrap();
    assert_eq!(
        at_hold(&common::decode(&delta)),
        [vec![400, 400_000, 800, 800_000]],
        "allocated in the window, in use at its end"
    );

    let site = heap_sampler::top_sites()
        .unwrap()
        .into_iter()
        .find(|s| s.function.ends_with("shared_stacks::hold"))
        .expect("a site for hold");
    assert_eq!((site.inuse_objects, site.inuse_space), (800, 800_000));
    drop((first, second));
    assert_eq!(
        at_hold(&common::profile()),
        [vec![800, 800_000, 0, 0]],
        "all freed"
    );
}
