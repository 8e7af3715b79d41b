//! The frame-pointer unwinder never crashes, whatever the code was built with, and its profiles keep the
//! pprof contract; where the code has frame pointers, it finds the allocating function.

mod common;

use std::alloc::System;

use heap_sampler::{SamplingAllocator, Unwinder};

#[global_allocator]
static ALLOC: SamplingAllocator<System> = SamplingAllocator::new(System);

#[test]
fn frame_pointer_walks_are_safe_and_valid() {
    let _serial = common::serial();
    heap_sampler::set_sample_rate(1);
    heap_sampler::set_unwinder(Unwinder::FramePointer);
    let expected = if cfg!(any(target_arch = "x86_64", target_arch = "aarch64")) {
        Unwinder::FramePointer
    } else {
        Unwinder::Dwarf
    };
    assert_eq!(heap_sampler::unwinder(), expected);
    let baseline = common::profile();
    // Many threads, deep and shallow stacks, and std code in between (Vec growth, thread start-up): without
    // frame pointers the walks end early, but never read outside the thread's stack.
    let kept: Vec<Vec<Vec<u8>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    let mut kept = Vec::new();
                    for depth in [0, 5, 50, 500] {
                        common::recurse(depth, 333, &mut kept);
                    }
                    kept
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let p = common::profile();
    heap_sampler::set_unwinder(Unwinder::Dwarf);
    common::check_contract(&p);
    let total: i64 = p.sample.iter().map(|s| s.value[3]).sum();
    assert!(
        total >= 16 * 333,
        "every allocation is still counted: {total}"
    );
    let found = common::at_function(&p, "recurse");
    eprintln!(
        "in use through `recurse` found by frame pointers: {} of {} bytes",
        found.inuse_space,
        16 * 333
    );
    // CI sets this when it builds the tests with RUSTFLAGS="-C force-frame-pointers=yes".
    if std::env::var_os("HEAP_SAMPLER_TEST_FRAME_POINTERS").is_some() {
        assert!(
            found.inuse_space >= 16 * 333,
            "with frame pointers, every allocation is found under `recurse`"
        );
    }
    // However short the walks, no sampled allocation is dropped: in exact mode the in-use total grows by at
    // least what the threads keep, in the profile and in the report.
    let in_use =
        |p: &heap_sampler::proto::Profile| p.sample.iter().map(|s| s.value[3]).sum::<i64>();
    let grown = in_use(&p) - in_use(&baseline);
    assert!(grown >= 16 * 333, "in use grew by {grown} bytes only");
    let reported: i64 = heap_sampler::top_sites()
        .unwrap()
        .iter()
        .map(|s| s.inuse_space)
        .sum();
    assert!(
        reported >= in_use(&p) - 4096,
        "the report shows every sample: {reported} of {}",
        in_use(&p)
    );
    drop(kept);
}

#[cfg(target_arch = "x86_64")]
mod coroutine {
    use super::*;

    // Calls `f` with rbp set to `rbp`, as code without frame pointers may leave any value there.
    std::arch::global_asm!(
        ".globl heap_sampler_test_call_with_rbp",
        ".type heap_sampler_test_call_with_rbp,@function",
        "heap_sampler_test_call_with_rbp:",
        ".cfi_startproc",
        "push rbp",
        ".cfi_adjust_cfa_offset 8",
        ".cfi_offset rbp, -16",
        "mov rbp, rsi",
        "call rdi",
        "pop rbp",
        ".cfi_adjust_cfa_offset -8",
        "ret",
        ".cfi_endproc",
        ".size heap_sampler_test_call_with_rbp, .-heap_sampler_test_call_with_rbp",
    );

    unsafe extern "C" {
        fn heap_sampler_test_call_with_rbp(f: extern "C" fn(), rbp: usize);
    }

    extern "C" fn allocates() {
        std::hint::black_box(vec![1u8; 100]);
    }

    static mut HOLE: usize = 0;
    static mut MAIN: std::mem::MaybeUninit<libc::ucontext_t> = std::mem::MaybeUninit::uninit();
    static mut CO: std::mem::MaybeUninit<libc::ucontext_t> = std::mem::MaybeUninit::uninit();

    extern "C" fn coroutine() {
        // SAFETY: `allocates` is a plain function; HOLE is written once before the switch.
        unsafe { heap_sampler_test_call_with_rbp(allocates, HOLE) };
    }

    /// Code on a stack of its own (a ucontext coroutine), with rbp pointing at an unmapped page just above
    /// that stack: the frame-pointer walk must not follow it (it falls back to the DWARF unwinder).
    #[test]
    fn frame_pointer_walk_on_a_coroutine_stack_does_not_fault() {
        let _serial = common::serial();
        heap_sampler::set_sample_rate(1);
        heap_sampler::set_unwinder(Unwinder::FramePointer);
        const SIZE: usize = 256 * 1024;
        // SAFETY: a private anonymous mapping used as the coroutine's stack; the page above it is unmapped on
        // purpose; the contexts are only used by this thread, one switch there and back.
        unsafe {
            let base = libc::mmap(
                std::ptr::null_mut(),
                SIZE + 4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            ) as usize;
            assert_ne!(base, libc::MAP_FAILED as usize);
            HOLE = base + SIZE;
            libc::munmap(HOLE as *mut libc::c_void, 4096);
            let co = &raw mut CO as *mut libc::ucontext_t;
            libc::getcontext(co);
            (*co).uc_stack.ss_sp = base as *mut libc::c_void;
            (*co).uc_stack.ss_size = SIZE;
            (*co).uc_link = &raw mut MAIN as *mut libc::ucontext_t;
            libc::makecontext(co, coroutine, 0);
            libc::swapcontext(&raw mut MAIN as *mut libc::ucontext_t, co);
            libc::munmap(base as *mut libc::c_void, SIZE);
        }
        heap_sampler::set_unwinder(Unwinder::Dwarf);
        common::check_contract(&common::profile());
    }
}
