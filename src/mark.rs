//! The mark of a sampled allocation: where its pointer lies in its block, so that the free of a pointer that
//! was not sampled is told apart by the pointer and its alignment alone, without reading memory.
//!
//! A sampled allocation of alignment `align` takes a block `offset(align)` = max(`align`, 8) bytes larger
//! than asked, aligned to twice that offset, and hands the program the address `offset(align)` bytes into it.
//! Its pointer is therefore an odd multiple of the offset: the offset's bit is set. A pointer whose bits
//! `align | 8` are all clear is certainly not sampled ([`may_be_sampled`]), which is what an allocator
//! aligned to 16 bytes (glibc's, and most others for all but their smallest size classes) returns for every
//! allocation of alignment 8 or less. The other pointers (of larger alignments, or 8-byte blocks that are odd
//! multiples of 8) are candidates, which the live table tells apart ([`crate::table::live`]).
//!
//! The memory before the pointer is the sampled block's own and is left as the inner allocator gave it: a
//! free never reads memory before a pointer it has not found in the live table, since a candidate that was
//! not sampled has another allocation (or the allocator's metadata) there.

use core::alloc::Layout;

/// How far into its block a sampled allocation of alignment `align` starts: max(`align`, 8) bytes.
#[inline(always)]
const fn offset(align: usize) -> usize {
    if align > 8 { align } else { 8 }
}

/// Whether `ptr`, allocated with alignment `align`, may be a sampled allocation: `false` is certain. Two
/// instructions on the pointer and the alignment, nothing read from memory.
#[inline(always)]
pub(crate) fn may_be_sampled(ptr: *mut u8, align: usize) -> bool {
    // The bit of max(align, 8) is among `align | 8`, and a sampled pointer has it set; a pointer aligned to
    // `align` has no lower bit set, so for an alignment of 8 or less only the pointer's bits below 16 count.
    ptr as usize & (align | 8) != 0
}

/// The block of a sampled allocation of `layout`: the layout to ask the inner allocator for, and where the
/// program's pointer lies in it. `None` when the larger layout does not exist (its size or alignment would
/// overflow): the allocation is then not sampled.
#[inline]
pub(crate) fn block_layout(layout: Layout) -> Option<(Layout, usize)> {
    let offset = offset(layout.align());
    let size = layout.size().checked_add(offset)?;
    let align = offset.checked_mul(2)?;
    Some((Layout::from_size_align(size, align).ok()?, offset))
}

/// The program's pointer into a sampled block that starts at `block`.
///
/// # Safety
/// `block` is non-null and was allocated with the layout [`block_layout`] gave with `offset`.
#[inline]
pub(crate) unsafe fn user_pointer(block: *mut u8, offset: usize) -> *mut u8 {
    // SAFETY: the block is `offset` bytes larger than the allocation, so the result is inside it (or one past
    // its end, for a zero-sized request, which `GlobalAlloc` callers never make).
    unsafe { block.add(offset) }
}

/// The block of a sampled allocation at `ptr` (a pointer [`user_pointer`] returned) for `layout`, and the
/// layout its block was allocated with.
///
/// # Safety
/// `ptr` is a sampled allocation of `layout` (size and alignment), still live.
#[inline]
pub(crate) unsafe fn block_of(ptr: *mut u8, layout: Layout) -> (*mut u8, Layout) {
    let offset = offset(layout.align());
    // SAFETY: `block_layout` made this layout from this size and alignment when the block was allocated, so
    // neither sum overflows and the layout is valid; `ptr` is `offset` bytes into its block (see
    // `user_pointer`).
    unsafe {
        let block = Layout::from_size_align_unchecked(layout.size() + offset, 2 * offset);
        (ptr.sub(offset), block)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampled_pointers_are_candidates_and_aligned_unsampled_ones_are_not() {
        for shift in 0..=30 {
            let align = 1usize << shift;
            let layout = Layout::from_size_align(24, align).unwrap();
            let (block, offset) = block_layout(layout).unwrap();
            assert_eq!(offset, align.max(8));
            assert_eq!(block.align(), 2 * offset);
            assert_eq!(block.size(), 24 + offset);
            // Any block base the inner allocator may return for `block`: a multiple of its alignment.
            for base in [0x7f00_0000_0000usize, 0x5555_0000_0000 + 4 * block.align()] {
                let base = base.next_multiple_of(block.align());
                // SAFETY: only arithmetic on a made-up address, never dereferenced.
                let ptr = unsafe { user_pointer(base as *mut u8, offset) };
                assert_eq!(ptr as usize % align, 0, "aligned as asked");
                assert!(may_be_sampled(ptr, align), "align {align}");
                // SAFETY: as above.
                let (back, back_layout) = unsafe { block_of(ptr, layout) };
                assert_eq!((back as usize, back_layout), (base, block));
                // A pointer aligned to twice the offset, as an unsampled allocation there would be, is not.
                assert!(!may_be_sampled(base as *mut u8, align));
            }
        }
    }

    #[test]
    fn layouts_that_would_overflow_are_not_sampled() {
        let huge = Layout::from_size_align(isize::MAX as usize - 7, 8).unwrap();
        assert!(block_layout(huge).is_none());
        let widest = Layout::from_size_align(8, 1 << (usize::BITS - 2)).unwrap();
        assert!(block_layout(widest).is_none());
        assert!(
            block_layout(Layout::from_size_align(isize::MAX as usize - 31, 8).unwrap()).is_some()
        );
    }
}
