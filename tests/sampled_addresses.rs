//! Sampled allocations live in marked blocks of the inner allocator (larger, more aligned, the program's
//! pointer offset into them), unsampled ones in the inner allocator's blocks as asked: whatever the
//! alignment, through `alloc`, `alloc_zeroed` and `realloc` in every direction (sampled to unsampled and back),
//! every block the inner allocator hands out comes back to it with the layout it was given, and every
//! pointer the program gets has the alignment it asked for.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use heap_sampler::SamplingAllocator;

/// The inner allocator: `System`, keeping every block it has handed out with its layout, and counting the
/// blocks given back with another layout, or never handed out.
struct Checking;

/// Slots of the table of blocks handed out: a power of two, far above what the tests hold at once.
const SLOTS: usize = 1 << 20;

/// Blocks handed out and not yet given back, by address (open addressing, linear probing): address, size,
/// alignment; address 0 is a free slot. A fixed array, so that keeping it allocates nothing.
static BLOCKS: Mutex<[(usize, usize, usize); SLOTS]> = Mutex::new([(0, 0, 0); SLOTS]);
static MISMATCHES: AtomicUsize = AtomicUsize::new(0);
static UNKNOWN: AtomicUsize = AtomicUsize::new(0);
static FULL: AtomicUsize = AtomicUsize::new(0);

fn home(address: usize) -> usize {
    ((address as u64 >> 4).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 44) as usize & (SLOTS - 1)
}

fn handed_out(ptr: *mut u8, layout: Layout) {
    if ptr.is_null() {
        return;
    }
    let address = ptr as usize;
    let mut blocks = BLOCKS.lock().unwrap();
    let mut i = home(address);
    for _ in 0..SLOTS {
        if blocks[i].0 == 0 {
            blocks[i] = (address, layout.size(), layout.align());
            return;
        }
        i = (i + 1) & (SLOTS - 1);
    }
    FULL.fetch_add(1, Relaxed);
}

/// The size and alignment of the block at `address`, if it is handed out.
fn block_at(address: usize) -> Option<(usize, usize)> {
    let blocks = BLOCKS.lock().unwrap();
    let mut i = home(address);
    loop {
        match blocks[i] {
            (0, _, _) => return None,
            (a, size, align) if a == address => return Some((size, align)),
            _ => i = (i + 1) & (SLOTS - 1),
        }
    }
}

fn given_back(ptr: *mut u8, layout: Layout) {
    let address = ptr as usize;
    let mut blocks = BLOCKS.lock().unwrap();
    let mut i = home(address);
    loop {
        match blocks[i] {
            (0, _, _) => {
                UNKNOWN.fetch_add(1, Relaxed);
                return;
            }
            (a, size, align) if a == address => {
                if (size, align) != (layout.size(), layout.align()) {
                    MISMATCHES.fetch_add(1, Relaxed);
                }
                break;
            }
            _ => i = (i + 1) & (SLOTS - 1),
        }
    }
    // Backward-shift deletion: move later entries of the run into the hole.
    let mut hole = i;
    let mut j = (i + 1) & (SLOTS - 1);
    while blocks[j].0 != 0 {
        let h = home(blocks[j].0);
        // Entry `j` may move to `hole` if its home is not in the cyclic range (hole, j].
        let in_range = if hole <= j {
            hole < h && h <= j
        } else {
            hole < h || h <= j
        };
        if !in_range {
            blocks[hole] = blocks[j];
            hole = j;
        }
        j = (j + 1) & (SLOTS - 1);
    }
    blocks[hole] = (0, 0, 0);
}

// SAFETY: every method forwards to `System` with its arguments and returns its result; the bookkeeping
// allocates nothing.
unsafe impl GlobalAlloc for Checking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        let ptr = unsafe { System.alloc(layout) };
        handed_out(ptr, layout);
        ptr
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        handed_out(ptr, layout);
        ptr
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        given_back(ptr, layout);
        // SAFETY: forwarded contract.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded contract.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            given_back(ptr, layout);
            // SAFETY: `realloc`'s contract: the new size with the old alignment is a layout.
            handed_out(new, unsafe {
                Layout::from_size_align_unchecked(new_size, layout.align())
            });
        }
        new
    }
}

#[global_allocator]
static ALLOC: SamplingAllocator<Checking> = SamplingAllocator::new(Checking);

/// Every block came back with the layout it was handed out with.
fn assert_blocks_consistent() {
    assert_eq!(FULL.load(Relaxed), 0, "the table of blocks is full");
    assert_eq!(
        MISMATCHES.load(Relaxed),
        0,
        "blocks given back with another layout"
    );
    assert_eq!(
        UNKNOWN.load(Relaxed),
        0,
        "blocks given back never handed out"
    );
}

const ALIGNMENTS: [usize; 13] = [
    1,
    2,
    4,
    8,
    16,
    32,
    64,
    128,
    256,
    4096,
    8192,
    1 << 16,
    1 << 20,
];
const SIZES: [usize; 6] = [1, 7, 8, 24, 1000, 5000];

/// Writes a pattern of `len` bytes that depends on `seed`.
fn fill(ptr: *mut u8, len: usize, seed: u8) {
    for i in 0..len {
        // SAFETY: the caller's block holds `len` bytes.
        unsafe { ptr.add(i).write(seed.wrapping_add(i as u8)) };
    }
}

/// Checks the pattern `fill` wrote over the first `len` bytes.
fn check(ptr: *mut u8, len: usize, seed: u8, what: &str) {
    for i in 0..len {
        // SAFETY: the caller's block holds `len` bytes.
        let byte = unsafe { ptr.add(i).read() };
        assert_eq!(byte, seed.wrapping_add(i as u8), "{what}: byte {i}");
    }
}

#[inline(never)]
fn allocate(layout: Layout, zeroed: bool) -> *mut u8 {
    // SAFETY: non-zero sizes only.
    let ptr = unsafe {
        if zeroed {
            ALLOC.alloc_zeroed(layout)
        } else {
            ALLOC.alloc(layout)
        }
    };
    assert!(!ptr.is_null());
    assert_eq!(ptr as usize % layout.align(), 0, "{layout:?}: misaligned");
    ptr
}

#[inline(never)]
fn reallocate(ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
    // SAFETY: `ptr` came from ALLOC with `layout`; non-zero new size.
    let new = unsafe { ALLOC.realloc(ptr, layout, new_size) };
    assert!(!new.is_null());
    assert_eq!(new as usize % layout.align(), 0, "{layout:?}: misaligned");
    new
}

fn free(ptr: *mut u8, layout: Layout) {
    // SAFETY: `ptr` came from ALLOC with `layout`.
    unsafe { ALLOC.dealloc(ptr, layout) }
}

/// Whether the pointer has the mark of a sampled allocation: an odd multiple of max(alignment, 8).
fn marked(ptr: *mut u8, align: usize) -> bool {
    ptr as usize & align.max(8) != 0
}

/// Sampled (rate 1) and unsampled (rate 0) allocations of every alignment and several sizes, plain and
/// zeroed: a sampled one is a block `max(align, 8)` bytes larger and twice as aligned, its pointer offset by
/// that much into it; an unsampled one the block as asked. Zeroed ones read zero, on memory just dirtied.
#[test]
fn every_alignment_sampled_and_not() {
    let _serial = common::serial();
    for rate in [1, 0] {
        heap_sampler::set_sample_rate(rate);
        for align in ALIGNMENTS {
            for size in SIZES {
                let layout = Layout::from_size_align(size, align).unwrap();
                for zeroed in [false, true] {
                    // Dirty memory first, so that a zeroed block is zeroed by someone.
                    let dirty = allocate(layout, false);
                    fill(dirty, size, 0xa5);
                    free(dirty, layout);
                    let ptr = allocate(layout, zeroed);
                    let offset = align.max(8);
                    if rate == 1 {
                        assert!(marked(ptr, align), "{layout:?}: sampled, unmarked");
                        assert_eq!(
                            block_at(ptr as usize - offset),
                            Some((size + offset, 2 * offset)),
                            "{layout:?}: the sampled block"
                        );
                    } else {
                        assert_eq!(
                            block_at(ptr as usize),
                            Some((size, align)),
                            "{layout:?}: unsampled, the block as asked"
                        );
                    }
                    if zeroed {
                        check_zero(ptr, size, &format!("{layout:?} rate {rate}"));
                    }
                    fill(ptr, size, 7);
                    check(ptr, size, 7, "written");
                    free(ptr, layout);
                }
            }
        }
    }
    heap_sampler::set_sample_rate(heap_sampler::DEFAULT_SAMPLE_RATE);
    assert_blocks_consistent();
}

fn check_zero(ptr: *mut u8, len: usize, what: &str) {
    for i in 0..len {
        // SAFETY: the block holds `len` bytes.
        assert_eq!(
            unsafe { ptr.add(i).read() },
            0,
            "{what}: byte {i} not zeroed"
        );
    }
}

/// `realloc` in all four directions (sampled or not, before and after), growing and shrinking, at every
/// alignment: the contents are kept up to the smaller size, and the profile charges the old block's bytes to
/// nobody once it is reallocated, and the new block's to `reallocate` until it is freed.
#[test]
fn realloc_in_every_direction() {
    let _serial = common::serial();
    let before = common::at_function(&common::profile(), "reallocate");
    for (from_rate, to_rate) in [(1, 1), (1, 0), (0, 1), (0, 0)] {
        for align in ALIGNMENTS {
            for (size, new_size) in [(24, 5000), (5000, 24), (100, 101), (1000, 1000)] {
                let layout = Layout::from_size_align(size, align).unwrap();
                heap_sampler::set_sample_rate(from_rate);
                let ptr = allocate(layout, false);
                // An unsampled pointer of alignment 16 or more may have the mark's bit by chance: a false
                // candidate, which the live table tells apart.
                assert!(
                    from_rate == 0 || marked(ptr, align),
                    "{layout:?}: sampled, unmarked"
                );
                fill(ptr, size, 3);
                heap_sampler::set_sample_rate(to_rate);
                let new = reallocate(ptr, layout, new_size);
                if to_rate == 1 {
                    assert!(marked(new, align), "{layout:?} → {new_size}: unmarked");
                }
                let what = format!("{layout:?} → {new_size}, rates {from_rate} → {to_rate}");
                check(new, size.min(new_size), 3, &what);
                heap_sampler::set_sample_rate(1);
                free(new, Layout::from_size_align(new_size, align).unwrap());
            }
        }
    }
    let profile = common::profile();
    // No sample leads with the profiler's frames, whichever way its reallocation went.
    common::check_contract(&profile);
    let after = common::at_function(&profile, "reallocate").since(&before);
    assert_eq!(
        (after.inuse_objects, after.inuse_space),
        (0, 0),
        "reallocated blocks still in use"
    );
    // Rate 1 → 1 and 0 → 1: 2 × 13 alignments × 4 size pairs, each new size once.
    assert_eq!(after.alloc_objects, 2 * 13 * 4);
    assert_eq!(after.alloc_space, 2 * 13 * (5000 + 24 + 101 + 1000));
    heap_sampler::set_sample_rate(heap_sampler::DEFAULT_SAMPLE_RATE);
    assert_blocks_consistent();
}

/// A failed reallocation of a sampled block leaves it allocated, marked, and counted; it is freed after.
#[test]
fn failed_realloc_of_a_sampled_block_keeps_it() {
    let _serial = common::serial();
    heap_sampler::set_sample_rate(1);
    for align in [8, 64, 4096] {
        let layout = Layout::from_size_align(100, align).unwrap();
        let ptr = allocate(layout, false);
        fill(ptr, 100, 9);
        // Too large for any allocator.
        // SAFETY: `ptr` came from ALLOC with `layout`; the new size, rounded to `align`, is a layout.
        let failed = unsafe { ALLOC.realloc(ptr, layout, isize::MAX as usize - 2 * 4096) };
        assert!(failed.is_null());
        check(ptr, 100, 9, "kept after a failed realloc");
        free(ptr, layout);
    }
    heap_sampler::set_sample_rate(heap_sampler::DEFAULT_SAMPLE_RATE);
    assert_blocks_consistent();
}

/// Many threads allocating and freeing at the default rate and at a small one, with sizes of all
/// alignments: no block is lost or given back wrong.
#[test]
fn threads_at_real_rates() {
    let _serial = common::serial();
    for (rate, operations) in [(4096, 20_000), (1, 3_000)] {
        heap_sampler::set_sample_rate(rate);
        std::thread::scope(|s| {
            for t in 0..4 {
                s.spawn(move || {
                    let mut kept: Vec<(*mut u8, Layout)> = Vec::new();
                    for i in 0..operations {
                        let align = ALIGNMENTS[(i + t) % 9];
                        let layout = Layout::from_size_align(8 + (i * 37) % 3000, align).unwrap();
                        kept.push((allocate(layout, i % 3 == 0), layout));
                        if i % 5 == 0 {
                            let (ptr, layout) = kept.swap_remove(i * 7 % kept.len());
                            let grown = reallocate(ptr, layout, layout.size() * 2);
                            kept.push((
                                grown,
                                Layout::from_size_align(layout.size() * 2, layout.align()).unwrap(),
                            ));
                        }
                        if kept.len() > 500 {
                            let (ptr, layout) = kept.swap_remove(i % kept.len());
                            free(ptr, layout);
                        }
                    }
                    for (ptr, layout) in kept {
                        free(ptr, layout);
                    }
                });
            }
        });
    }
    heap_sampler::set_sample_rate(heap_sampler::DEFAULT_SAMPLE_RATE);
    assert_blocks_consistent();
}
