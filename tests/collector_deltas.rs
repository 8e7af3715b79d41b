//! A continuous profiler that scrapes `/debug/pprof/allocs` (Grafana Alloy's `pyroscope.scrape`, whose
//! memory profile is that path) turns its cumulative `alloc_*` into per-interval values by subtracting the
//! previous scrape, matching samples by their identity: the addresses of their locations and all of their
//! labels, numeric ones included. A sample whose identity changes between scrapes is counted as new, its
//! whole cumulative value as if allocated in one interval. So a bucket must keep its identity for as long as
//! it lives, also when it samples allocations of several sizes.

mod common;

use std::alloc::System;
use std::collections::HashMap;
use std::hint::black_box;

use heap_sampler::SamplingAllocator;
use heap_sampler::proto::Profile;

#[global_allocator]
static ALLOC: SamplingAllocator<System> = SamplingAllocator::new(System);

/// A sample's identity as a collector that subtracts scrapes computes it: its locations' addresses, innermost
/// first, and its labels sorted (key, string value, number, unit).
type Identity = (Vec<u64>, Vec<(String, String, i64, String)>);

fn identities(p: &Profile) -> HashMap<Identity, [i64; 2]> {
    let mut out = HashMap::new();
    for sample in &p.sample {
        let addresses = sample
            .location_id
            .iter()
            .map(|id| p.location[*id as usize - 1].address)
            .collect();
        let mut labels: Vec<_> = sample
            .label
            .iter()
            .map(|l| {
                let s = |i: i64| common::string(p, i).to_string();
                (s(l.key), s(l.str), l.num, s(l.num_unit))
            })
            .collect();
        labels.sort();
        let before = out.insert((addresses, labels), [sample.value[0], sample.value[1]]);
        assert!(before.is_none(), "two samples with one identity");
    }
    out
}

/// Allocates blocks of several sizes from one line: one bucket, of mixed sizes.
#[inline(never)]
fn mixed_sizes(round: usize) {
    for i in 0..400 {
        black_box(vec![0u8; (64 << 10) + 4096 * ((i + round) % 7)]);
    }
}

/// Allocates blocks of one size from one line.
#[inline(never)]
fn one_size() {
    for _ in 0..400 {
        black_box(vec![0u8; 64 << 10]);
    }
}

#[test]
fn successive_profiles_keep_each_samples_identity() {
    heap_sampler::set_seed(7);
    let scrape = || identities(&common::profile());
    mixed_sizes(0);
    one_size();
    let mut previous = scrape();
    for round in 1..4 {
        mixed_sizes(round);
        one_size();
        let now = scrape();
        for (identity, [objects, space]) in &previous {
            let [later_objects, later_space] = now.get(identity).unwrap_or_else(|| {
                panic!("a sample changed its identity between two profiles: {identity:?}")
            });
            assert!(
                later_objects >= objects && later_space >= space,
                "alloc_* of one sample went down between two profiles"
            );
        }
        previous = now;
    }
    let sizes: Vec<i64> = previous
        .keys()
        .flat_map(|(_, labels)| labels.iter().filter(|l| l.0 == "bytes").map(|l| l.2))
        .collect();
    assert!(
        sizes.contains(&(64 << 10)),
        "the bucket of one size shows its size: {sizes:?}"
    );
}
