//! Every `GlobalAlloc` entry point is accounted, exactly, in exact mode (rate 1).

mod common;

use std::alloc::{GlobalAlloc, Layout, System};

use heap_sampler::SamplingAllocator;

#[global_allocator]
static ALLOC: SamplingAllocator<System> = SamplingAllocator::new(System);

#[inline(never)]
fn keep_zeroed_vecs(kept: &mut Vec<Vec<u8>>) {
    for _ in 0..1000 {
        kept.push(vec![0u8; 4096]);
    }
}

#[test]
fn zeroed_vecs_are_counted_exactly() {
    let _serial = common::serial();
    heap_sampler::set_sample_rate(1);
    let mut kept = Vec::with_capacity(1000);
    keep_zeroed_vecs(&mut kept);
    let v = common::at_function(&common::profile(), "keep_zeroed_vecs");
    assert_eq!((v.inuse_objects, v.inuse_space), (1000, 4_096_000));
    assert_eq!((v.alloc_objects, v.alloc_space), (1000, 4_096_000));
    assert!(kept.iter().all(|b| b.iter().all(|&x| x == 0)));
    drop(kept);
    let v = common::at_function(&common::profile(), "keep_zeroed_vecs");
    assert_eq!((v.inuse_objects, v.inuse_space), (0, 0));
}

/// The stacks these two functions allocate from name them: their results pass through `black_box`, so that an
/// optimized build does not end them in a tail call that leaves their frames off the stack.
#[inline(never)]
fn aligned_alloc_zeroed(layout: Layout) -> *mut u8 {
    // SAFETY: `layout` has a non-zero size.
    std::hint::black_box(unsafe { ALLOC.alloc_zeroed(layout) })
}

#[inline(never)]
fn aligned_realloc(ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
    // SAFETY: `ptr` was allocated by ALLOC with `layout`; `new_size` is non-zero and fits the alignment.
    std::hint::black_box(unsafe { ALLOC.realloc(ptr, layout, new_size) })
}

#[test]
fn over_aligned_layouts_keep_alignment_contents_and_accounting() {
    let _serial = common::serial();
    heap_sampler::set_sample_rate(1);
    for align in [256usize, 4096] {
        let layout = Layout::from_size_align(3000, align).unwrap();
        let ptr = aligned_alloc_zeroed(layout);
        assert!(!ptr.is_null());
        assert_eq!(ptr as usize % align, 0, "alloc_zeroed keeps align {align}");
        // SAFETY: `ptr` is valid for 3000 bytes.
        let bytes = unsafe { std::slice::from_raw_parts_mut(ptr, 3000) };
        assert!(bytes.iter().all(|&b| b == 0), "alloc_zeroed zeroes");
        bytes.iter_mut().enumerate().for_each(|(i, b)| *b = i as u8);

        let grown = aligned_realloc(ptr, layout, 20_000);
        assert!(!grown.is_null());
        assert_eq!(grown as usize % align, 0, "realloc keeps align {align}");
        // SAFETY: `grown` is valid for 20000 bytes, of which the first 3000 were copied.
        let bytes = unsafe { std::slice::from_raw_parts(grown, 3000) };
        assert!(
            bytes.iter().enumerate().all(|(i, &b)| b == i as u8),
            "realloc keeps contents"
        );

        let p = common::profile();
        let zeroed = common::at_function(&p, "aligned_alloc_zeroed");
        let realloc = common::at_function(&p, "aligned_realloc");
        assert_eq!(
            (zeroed.inuse_objects, zeroed.inuse_space),
            (0, 0),
            "align {align}: old block freed"
        );
        assert_eq!(
            (realloc.inuse_objects, realloc.inuse_space),
            (1, 20_000),
            "align {align}: new block live"
        );

        let grown_layout = Layout::from_size_align(20_000, align).unwrap();
        // SAFETY: `grown` was allocated by ALLOC with `grown_layout`.
        unsafe { ALLOC.dealloc(grown, grown_layout) };
        let p = common::profile();
        assert_eq!(common::at_function(&p, "aligned_realloc").inuse_space, 0);
    }
    let p = common::profile();
    let zeroed = common::at_function(&p, "aligned_alloc_zeroed");
    assert_eq!((zeroed.alloc_objects, zeroed.alloc_space), (2, 6000));
}
