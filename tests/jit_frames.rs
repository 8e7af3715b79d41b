//! Code generated at run time and registered with libgcc's `__register_frame`, as JIT compilers do, while
//! every allocation is sampled: threads build a small function in a fresh executable mapping with its CIE and
//! FDE, register them, call the function (which calls back into Rust to allocate, so that the unwinders look
//! up the registered FDE), deregister them and unmap the code, again and again, alternating two frame shapes
//! so that the cached DWARF unwinder meets the rule of one shape at an address that now holds the other;
//! meanwhile other threads allocate, one of them capturing std's backtraces. libgcc takes its object lock to
//! register and to look FDEs up, and the profiler's unwinders look FDEs up from inside the allocator: nothing
//! may deadlock or crash. Runs in a child process under a watchdog. x86_64 Linux with glibc, where the cached
//! DWARF unwinder runs.
#![cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]

mod common;

use std::alloc::System;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use heap_sampler::{SamplingAllocator, Unwinder};

#[global_allocator]
static ALLOC: SamplingAllocator<System> = SamplingAllocator::new(System);

unsafe extern "C" {
    /// libgcc: registers the `.eh_frame` data at `begin` (CIEs and FDEs, ended by a zero length).
    fn __register_frame(begin: *const u8);
    /// libgcc: removes the data registered at `begin` (it aborts if nothing was).
    fn __deregister_frame(begin: *const u8);
}

/// A function of one of two frame shapes, `extern "C" fn(callback: extern "C" fn())`, which calls
/// `callback`; and the CFA rules of its instructions (DW_CFA_* after the CIE's initial rules: CFA = rsp + 8,
/// return address at CFA − 8).
struct Shape {
    code: &'static [u8],
    cfi: &'static [u8],
}

const SHAPES: [Shape; 2] = [
    // push rbp; mov rbp, rsp; call rdi; pop rbp; ret
    Shape {
        code: &[0x55, 0x48, 0x89, 0xe5, 0xff, 0xd7, 0x5d, 0xc3],
        cfi: &[
            0x41, // advance_loc 1
            0x0e, 0x10, // def_cfa_offset 16
            0x86, 0x02, // offset rbp, CFA − 16
            0x43, // advance_loc 3
            0x0d, 0x06, // def_cfa_register rbp
            0x43, // advance_loc 3
            0x0c, 0x07, 0x08, // def_cfa rsp, 8
        ],
    },
    // sub rsp, 24; call rdi; add rsp, 24; ret
    Shape {
        code: &[
            0x48, 0x83, 0xec, 0x18, 0xff, 0xd7, 0x48, 0x83, 0xc4, 0x18, 0xc3,
        ],
        cfi: &[
            0x44, // advance_loc 4
            0x0e, 0x20, // def_cfa_offset 32
            0x46, // advance_loc 6
            0x0e, 0x08, // def_cfa_offset 8
        ],
    },
];

/// Appends an `.eh_frame` entry: its 32-bit length, then `body`, padded with DW_CFA_nop to 8 bytes.
fn entry(out: &mut Vec<u8>, body: &[u8]) {
    let padded = (4 + body.len()).next_multiple_of(8) - 4;
    out.extend_from_slice(&(padded as u32).to_le_bytes());
    out.extend_from_slice(body);
    out.resize(out.len() + padded - body.len(), 0);
}

/// `.eh_frame` data for `shape`'s code at `start`: one CIE, one FDE (absolute 8-byte addresses), and the
/// zero terminator.
fn eh_frame(shape: &Shape, start: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(96);
    let mut cie = vec![0, 0, 0, 0, 1]; // CIE id 0, version 1
    cie.extend_from_slice(b"zR\0");
    cie.extend_from_slice(&[0x01, 0x78, 0x10]); // code alignment 1, data alignment −8, return address r16
    cie.extend_from_slice(&[0x01, 0x00]); // augmentation data: FDE addresses are DW_EH_PE_absptr
    cie.extend_from_slice(&[0x0c, 0x07, 0x08, 0x90, 0x01]); // def_cfa rsp, 8; offset r16, CFA − 8
    entry(&mut out, &cie);
    let fde_start = out.len();
    let mut fde = Vec::with_capacity(48);
    // The CIE pointer: from this field back to the CIE.
    fde.extend_from_slice(&((fde_start + 4) as u32).to_le_bytes());
    fde.extend_from_slice(&(start as u64).to_le_bytes());
    fde.extend_from_slice(&(shape.code.len() as u64).to_le_bytes());
    fde.push(0); // no augmentation data
    fde.extend_from_slice(shape.cfi);
    entry(&mut out, &fde);
    out.extend_from_slice(&[0; 4]);
    out
}

extern "C" fn allocate_in_jit_frame() {
    // Sampled: the walk goes through the generated frame.
    black_box(vec![7u8; 100]);
    // The system unwinder through it too (std's backtrace is libgcc's `_Unwind_Backtrace`).
    let _ = black_box(std::backtrace::Backtrace::force_capture());
}

/// One round: generate `shape`'s code in a fresh mapping, register its unwind data, call it, deregister,
/// unmap.
fn jit_round(shape: &Shape) {
    // SAFETY: a fresh private anonymous mapping, written, made executable, called through a function pointer
    // of the signature its code implements (a System V call of its argument, with a frame the registered CFI
    // describes), and unmapped once the call has returned and its unwind data is deregistered.
    unsafe {
        let page = libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(page, libc::MAP_FAILED);
        std::ptr::copy_nonoverlapping(shape.code.as_ptr(), page.cast::<u8>(), shape.code.len());
        assert_eq!(
            libc::mprotect(page, 4096, libc::PROT_READ | libc::PROT_EXEC),
            0
        );
        let frames = eh_frame(shape, page as usize);
        __register_frame(frames.as_ptr());
        let function: extern "C" fn(extern "C" fn()) = std::mem::transmute(page);
        function(allocate_in_jit_frame);
        __deregister_frame(frames.as_ptr());
        drop(frames);
        libc::munmap(page, 4096);
    }
}

#[test]
fn registering_jit_frames_while_every_allocation_is_sampled() {
    if !common::is_child() {
        let limit = if common::under_address_sanitizer() {
            Duration::from_secs(600)
        } else {
            Duration::from_secs(120)
        };
        common::run_child(
            "registering_jit_frames_while_every_allocation_is_sampled",
            limit,
        );
        return;
    }
    heap_sampler::set_sample_rate(1);
    let stop = AtomicBool::new(false);
    let allocations = AtomicU64::new(0);
    std::thread::scope(|s| {
        for thread in 0..2 {
            let (stop, allocations) = (&stop, &allocations);
            s.spawn(move || {
                while !stop.load(Relaxed) {
                    black_box(vec![1u8; 64]);
                    if thread == 1 {
                        // libgcc's unwinder looks up every frame's FDE, under its object lock while frames
                        // are registered.
                        let _ = black_box(std::backtrace::Backtrace::force_capture());
                    }
                    allocations.fetch_add(1, Relaxed);
                }
            });
        }
        let jit: Vec<_> = (0..2)
            .map(|thread| {
                s.spawn(move || {
                    for round in 0..1000 {
                        if round % 50 == 0 {
                            // Both unwinders: the frame-pointer walk follows the first shape's frame.
                            heap_sampler::set_unwinder(if round % 100 == 0 {
                                Unwinder::FramePointer
                            } else {
                                Unwinder::Dwarf
                            });
                        }
                        jit_round(&SHAPES[(round + thread) % 2]);
                    }
                })
            })
            .collect();
        for thread in jit {
            thread.join().unwrap();
        }
        stop.store(true, Relaxed);
    });
    heap_sampler::set_unwinder(Unwinder::Dwarf);
    assert!(allocations.load(Relaxed) > 0);
    let p = common::profile();
    common::check_contract(&p);
    // The unwinders got through the generated frames, by their registered FDEs, to the code that called them.
    let crossed = p.sample.iter().any(|sample| {
        let names: Vec<&str> = sample
            .location_id
            .iter()
            .flat_map(|id| &p.location[*id as usize - 1].line)
            .map(|line| common::string(&p, p.function[line.function_id as usize - 1].name))
            .collect();
        let position = |name: &str| names.iter().position(|n| n.ends_with(name));
        matches!(
            (position("::allocate_in_jit_frame"), position("::jit_round")),
            (Some(inner), Some(outer)) if inner < outer
        )
    });
    assert!(crossed, "no stack went through a generated frame");
}
