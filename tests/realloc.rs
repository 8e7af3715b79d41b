//! `realloc` is the free of the old block and a new allocation of the new size; a failed one changes nothing.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};

use heap_sampler::SamplingAllocator;

#[global_allocator]
static ALLOC: SamplingAllocator<System> = SamplingAllocator::new(System);

#[inline(never)]
fn first_alloc(layout: Layout) -> *mut u8 {
    // SAFETY: non-zero size.
    unsafe { ALLOC.alloc(layout) }
}

#[inline(never)]
fn then_realloc(ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
    // SAFETY: `ptr` came from ALLOC with `layout`.
    unsafe { ALLOC.realloc(ptr, layout, new_size) }
}

/// Exact mode, alloc 1024 → realloc → dealloc, with a block that moves (grown past a blocker) and one that
/// stays (shrunk in place).
#[test]
fn exact_realloc_accounting_moved_or_not() {
    let _serial = common::serial();
    heap_sampler::set_sample_rate(1);
    for (new_size, label) in [(2048usize, "grow"), (512, "shrink")] {
        let before = common::profile();
        let layout = Layout::from_size_align(1024, 8).unwrap();
        let ptr = first_alloc(layout);
        // A neighbour, so growing in place is unlikely.
        let blocker = vec![0u8; 64];
        let new_ptr = then_realloc(ptr, layout, new_size);
        assert!(!new_ptr.is_null());
        eprintln!("{label}: moved = {}", new_ptr != ptr);
        let p = common::profile();
        let a = common::at_function(&p, "first_alloc")
            .since(&common::at_function(&before, "first_alloc"));
        let r = common::at_function(&p, "then_realloc")
            .since(&common::at_function(&before, "then_realloc"));
        assert_eq!(
            (a.inuse_objects, a.inuse_space),
            (0, 0),
            "{label}: old block no longer in use"
        );
        assert_eq!(
            (r.inuse_objects, r.inuse_space),
            (1, new_size as i64),
            "{label}: new block in use"
        );
        assert_eq!(
            (
                a.alloc_objects + r.alloc_objects,
                a.alloc_space + r.alloc_space
            ),
            (2, 1024 + new_size as i64),
            "{label}: both allocations counted"
        );
        // SAFETY: `new_ptr` came from ALLOC with `new_size` bytes.
        unsafe { ALLOC.dealloc(new_ptr, Layout::from_size_align(new_size, 8).unwrap()) };
        let p = common::profile();
        let r = common::at_function(&p, "then_realloc")
            .since(&common::at_function(&before, "then_realloc"));
        assert_eq!((r.inuse_objects, r.inuse_space), (0, 0), "{label}: freed");
        drop(blocker);
    }
}

#[test]
fn failed_realloc_leaves_accounting_unchanged() {
    let _serial = common::serial();
    heap_sampler::set_sample_rate(1);
    let layout = Layout::from_size_align(1024, 8).unwrap();
    let ptr = first_alloc(layout);
    let before = common::at_function(&common::profile(), "first_alloc");
    // Too large for any allocator: fails and returns null, leaving `ptr` valid.
    let totals = heap_totals();
    let failed = then_realloc(ptr, layout, isize::MAX as usize - 4096);
    assert!(failed.is_null());
    // The heap totals took the block's free back: nothing else allocates meanwhile (the tests of this binary
    // run one at a time, and the harness waits for them).
    assert_eq!(heap_totals(), totals, "a failed realloc frees nothing");
    assert_eq!(
        common::at_function(&common::profile(), "first_alloc"),
        before
    );
    // SAFETY: the failed realloc left `ptr` allocated with `layout`.
    unsafe { ALLOC.dealloc(ptr, layout) };
    let after = common::at_function(&common::profile(), "first_alloc");
    assert_eq!(
        after.inuse_space,
        before.inuse_space - 1024,
        "the untouched block is still freed exactly"
    );
}

/// The heap totals of [`heap_sampler::stats`]: in-use and allocated, bytes and objects.
fn heap_totals() -> [u64; 4] {
    let s = heap_sampler::stats();
    [
        s.inuse_bytes,
        s.inuse_objects,
        s.alloc_bytes,
        s.alloc_objects,
    ]
}

#[inline(never)]
fn vec_create() -> Vec<u8> {
    Vec::with_capacity(1024)
}

#[inline(never)]
fn vec_grow(v: &mut Vec<u8>, to: usize) {
    v.reserve_exact(to - v.len());
}

#[inline(never)]
fn vec_shrink(v: &mut Vec<u8>, to: usize) {
    v.shrink_to(to);
}

#[test]
fn exact_vec_growth_and_shrink() {
    let _serial = common::serial();
    heap_sampler::set_sample_rate(1);
    let before = common::profile();
    let mut v = vec_create();
    vec_grow(&mut v, 2048);
    let p = common::profile();
    let c =
        common::at_function(&p, "vec_create").since(&common::at_function(&before, "vec_create"));
    let g = common::at_function(&p, "vec_grow").since(&common::at_function(&before, "vec_grow"));
    assert_eq!((c.inuse_objects, c.inuse_space), (0, 0));
    assert_eq!((g.inuse_objects, g.inuse_space), (1, 2048));
    assert_eq!(
        (
            c.alloc_space + g.alloc_space,
            c.alloc_objects + g.alloc_objects
        ),
        (3072, 2)
    );
    vec_shrink(&mut v, 100);
    let p = common::profile();
    let g = common::at_function(&p, "vec_grow").since(&common::at_function(&before, "vec_grow"));
    let s =
        common::at_function(&p, "vec_shrink").since(&common::at_function(&before, "vec_shrink"));
    assert_eq!((g.inuse_objects, g.inuse_space), (0, 0));
    assert_eq!((s.inuse_objects, s.inuse_space), (1, 100));
    drop(v);
    let s = common::at_function(&common::profile(), "vec_shrink")
        .since(&common::at_function(&before, "vec_shrink"));
    assert_eq!((s.inuse_objects, s.inuse_space), (0, 0));
}

#[inline(never)]
fn create_16k() -> Vec<u8> {
    Vec::with_capacity(16 << 10)
}

/// Rate 4 KiB: 10,000 vectors created at 16 KiB, grown to 1 MiB, shrunk to 4 KiB and kept. Blocks of 4 KiB
/// are sampled with p = 1 − e^(−1) = 0.632; the shrink site's estimate of 10,000 such blocks has relative
/// standard error sqrt((1−p)/(n·p)) = 0.0076, so ±5 % is 6.5 σ. The grow and create sites hold nothing.
#[test]
fn sampled_vec_growth_and_shrink() {
    let _serial = common::serial();
    heap_sampler::set_sample_rate(4 << 10);
    heap_sampler::set_seed(7);
    let before = common::profile();
    let mut kept = Vec::with_capacity(10_000);
    for _ in 0..10_000 {
        let mut v = create_16k();
        vec_grow(&mut v, 1 << 20);
        vec_shrink(&mut v, 4 << 10);
        kept.push(v);
    }
    let p = common::profile();
    let c =
        common::at_function(&p, "create_16k").since(&common::at_function(&before, "create_16k"));
    let g = common::at_function(&p, "vec_grow").since(&common::at_function(&before, "vec_grow"));
    let s =
        common::at_function(&p, "vec_shrink").since(&common::at_function(&before, "vec_shrink"));
    let truth = 10_000.0 * 4096.0;
    let error = (s.inuse_space as f64 - truth) / truth;
    eprintln!(
        "shrink site in use: {} (truth {truth}, error {:.2} %)",
        s.inuse_space,
        error * 100.0
    );
    assert!(
        error.abs() <= 0.05,
        "shrink site in-use {} is off by {:.2} %",
        s.inuse_space,
        error * 100.0
    );
    assert!(
        c.alloc_objects > 0 && g.alloc_objects > 0,
        "the create and grow sites were sampled"
    );
    assert_eq!((c.inuse_objects, c.inuse_space), (0, 0));
    assert_eq!((g.inuse_objects, g.inuse_space), (0, 0));
    drop(kept);
}
