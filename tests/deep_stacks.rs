//! Deep stacks are cut at the configured depth and marked, and the bucket table is bounded: past its cap,
//! samples go to one overflow bucket, counted, with totals kept right.

mod common;

use std::alloc::System;
use std::hint::black_box;

use heap_sampler::SamplingAllocator;
use heap_sampler::proto::Profile;

#[global_allocator]
static ALLOC: SamplingAllocator<System> = SamplingAllocator::new(System);

/// The stacks (as function names, innermost first) of the samples that pass through `recurse`.
fn stacks_through_recurse(p: &Profile) -> Vec<Vec<String>> {
    p.sample
        .iter()
        .map(|s| {
            s.location_id
                .iter()
                .flat_map(|id| &p.location[*id as usize - 1].line)
                .map(|l| common::string(p, p.function[l.function_id as usize - 1].name).to_string())
                .collect::<Vec<_>>()
        })
        .filter(|names| names.iter().any(|n| n.ends_with("::recurse")))
        .collect()
}

#[test]
fn deep_recursion_is_cut_at_the_configured_depth_and_marked() {
    let _serial = common::serial();
    heap_sampler::set_sample_rate(1);
    for depth in [heap_sampler::DEFAULT_STACK_DEPTH, 16] {
        heap_sampler::set_max_stack_depth(depth);
        let mut kept = Vec::with_capacity(1);
        common::recurse(1000, 100, &mut kept);
        let p = common::profile();
        common::check_contract(&p);
        let stacks = stacks_through_recurse(&p);
        let deep: Vec<_> = stacks
            .iter()
            .filter(|s| s.len() <= depth + 1 && s.last().is_some_and(|f| f == "[truncated]"))
            .collect();
        assert!(
            !deep.is_empty(),
            "a truncated stack of at most {depth} frames + marker: {stacks:?}"
        );
        assert!(
            stacks
                .iter()
                .all(|s| s.len() <= heap_sampler::DEFAULT_STACK_DEPTH * 4),
            "no stack is deeper than captured"
        );
    }
    heap_sampler::set_max_stack_depth(heap_sampler::DEFAULT_STACK_DEPTH);
}

#[test]
fn bucket_table_is_capped_and_overflow_is_counted() {
    let _serial = common::serial();
    heap_sampler::set_sample_rate(1);
    drop(black_box(vec![0u8; 10]));
    let before = heap_sampler::stats();
    assert!(
        before.table_bytes > 0 && before.buckets > 0 && before.samples > 0,
        "{before:?}"
    );
    heap_sampler::set_max_buckets(before.buckets + 10);
    // Whole stacks (up to 128 frames): each depth below is a distinct stack, never a truncated one that the
    // other test may have recorded already.
    heap_sampler::set_max_stack_depth(heap_sampler::MAX_STACK_DEPTH);
    let mut kept = Vec::with_capacity(100);
    for depth in 0..100 {
        common::recurse(depth, 100, &mut kept);
    }
    let after = heap_sampler::stats();
    heap_sampler::set_max_buckets(heap_sampler::DEFAULT_MAX_BUCKETS);
    heap_sampler::set_max_stack_depth(heap_sampler::DEFAULT_STACK_DEPTH);
    assert!(after.buckets <= before.buckets + 10, "cap holds: {after:?}");
    assert!(
        after.overflow_samples >= 90,
        "stacks past the cap are counted: {after:?}"
    );

    let p = common::profile();
    common::check_contract(&p);
    let through = common::at_function(&p, "recurse");
    let overflow = common::at_function(&p, "[bucket table full]");
    assert!(
        overflow.inuse_objects >= 90,
        "the overflow bucket holds the excess: {overflow:?}"
    );
    // Every allocation is still counted: in recurse's buckets or in the overflow bucket.
    assert!(through.inuse_objects + overflow.inuse_objects >= 100);
    drop(kept);
    let p = common::profile();
    let through = common::at_function(&p, "recurse");
    assert_eq!((through.inuse_objects, through.inuse_space), (0, 0));
}
