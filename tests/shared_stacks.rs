//! Threads that sample the same stack count it in buckets of their own (so they do not contend for one);
//! profiles, delta profiles and reports show the stack once, with the sum. A thread that samples its last
//! stack again adds to that stack's bucket without comparing the frames, and to it only. Exact mode: every
//! number is exact.

mod common;

use std::alloc::System;
use std::collections::HashMap;
use std::hint::black_box;

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
    let window = heap_sampler::DeltaWindow::start().unwrap();
    let second = hold_on_threads();
    let delta = window.finish().unwrap().to_pprof().unwrap();
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

/// Keeps one block of 100 bytes.
#[inline(never)]
fn keep_a(kept: &mut Vec<Vec<u8>>) {
    kept.push(black_box(vec![1u8; 100]));
}

/// Keeps one block of 100 bytes, from a frame of the same size as [`keep_a`]'s, called from the same place.
#[inline(never)]
fn keep_b(kept: &mut Vec<Vec<u8>>) {
    kept.push(black_box(vec![2u8; 100]));
}

/// Keeps one block of 300 bytes.
#[inline(never)]
fn keep_c(kept: &mut Vec<Vec<u8>>) {
    kept.push(black_box(vec![3u8; 300]));
}

/// The values of the samples through `function`, by their value of label `key` ("" for none).
fn by_label_at(
    p: &heap_sampler::proto::Profile,
    function: &str,
    key: &str,
) -> HashMap<String, Vec<i64>> {
    let mut out: HashMap<String, Vec<i64>> = HashMap::new();
    for (_, sample) in common::samples_through(p, function) {
        let label = common::labels_of(p, sample)
            .into_iter()
            .find(|(k, _)| *k == key)
            .map_or("", |(_, v)| v);
        let values = out.entry(label.to_string()).or_insert_with(|| vec![0; 4]);
        for (sum, value) in values.iter_mut().zip(&sample.value) {
            *sum += value;
        }
    }
    out
}

#[test]
fn a_repeated_stack_counts_in_its_own_bucket_only() {
    let _serial = common::serial();
    heap_sampler::set_sample_rate(1);
    let mut kept = Vec::with_capacity(1000);
    // Two stacks in turn, from the same stack position: neither is the thread's last when sampled.
    for i in 0..200 {
        let keep: fn(&mut Vec<Vec<u8>>) = if i % 2 == 0 { keep_a } else { keep_b };
        black_box(keep)(&mut kept);
    }
    // One stack, sampled again and again, under labels that change from one sample to the next and stay for
    // a few. The sets are made first: entering one allocates nothing, so no other stack is sampled between.
    let even = heap_sampler::LabelSet::current().with(&[("repeat", "even")]);
    let odd = heap_sampler::LabelSet::current().with(&[("repeat", "odd")]);
    let scopes = [even, odd, odd, odd, even, even];
    for i in 0..300 {
        let _scope = scopes[i % scopes.len()].enter();
        keep_c(&mut kept);
    }
    // And without labels, many times over.
    for _ in 0..100 {
        keep_c(&mut kept);
    }
    let p = common::profile();
    for function in ["keep_a", "keep_b"] {
        assert_eq!(
            common::samples_at(&p, function)
                .into_iter()
                .map(|(_, values)| values)
                .collect::<Vec<_>>(),
            [vec![100, 10_000, 100, 10_000]],
            "{function}"
        );
    }
    let labelled = by_label_at(&p, "keep_c", "repeat");
    assert_eq!(labelled.len(), 3, "{labelled:?}");
    assert_eq!(labelled["even"], [150, 45_000, 150, 45_000]);
    assert_eq!(labelled["odd"], [150, 45_000, 150, 45_000]);
    assert_eq!(labelled[""], [100, 30_000, 100, 30_000]);
    drop(kept);
}
