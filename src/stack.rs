//! Stack capture into a fixed array: no lock, no allocation.

use core::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// The most return addresses a stack can hold; [`set_max_stack_depth`] can lower the depth used.
pub const MAX_STACK_DEPTH: usize = 128;

/// The default number of frames captured per sampled allocation.
pub const DEFAULT_STACK_DEPTH: usize = 64;

static DEPTH: AtomicUsize = AtomicUsize::new(DEFAULT_STACK_DEPTH);

/// Sets how many frames are captured per sampled allocation, from the allocator's caller outwards. Clamped to `1..=MAX_STACK_DEPTH`. Deeper stacks are cut at the caller end and
/// marked with a final `[truncated]` frame in the profile, as Go's profiles mark theirs.
pub fn set_max_stack_depth(frames: usize) {
    DEPTH.store(frames.clamp(1, MAX_STACK_DEPTH), Relaxed);
}

/// The number of frames captured per sampled allocation (see [`set_max_stack_depth`]).
pub fn max_stack_depth() -> usize {
    DEPTH.load(Relaxed)
}

/// The return addresses of one captured stack, innermost first.
pub(crate) struct Stack {
    frames: [usize; MAX_STACK_DEPTH],
    len: usize,
    truncated: bool,
}

impl Stack {
    /// Captures the current thread's stack, starting at the caller of the function that starts at address
    /// `skip_through` (the profiler's entry point), so that the profiler's own frames take none of the depth.
    /// If no frame belongs to that function, the whole stack is kept (the dump trims by name as well). Must run
    /// inside the profiler guard: the unwinder may allocate on first use.
    #[inline(never)]
    pub(crate) fn capture(skip_through: usize) -> Stack {
        let mut stack = Stack {
            frames: [0; MAX_STACK_DEPTH],
            len: 0,
            truncated: false,
        };
        let depth = DEPTH.load(Relaxed).min(MAX_STACK_DEPTH);
        let mut skipping = true;
        // SAFETY: `trace_unsynchronized` requires that no other backtrace call on this thread runs
        // concurrently with it in a way that is not reentrant-safe; we hold no lock and call nothing but this
        // closure, which only writes into a local array. The unwinder's own locking is reentrant.
        unsafe {
            backtrace::trace_unsynchronized(|frame| {
                if skipping && frame.symbol_address() as usize == skip_through {
                    skipping = false;
                    stack.len = 0;
                    stack.truncated = false;
                    return true;
                }
                if frame.ip().is_null() {
                    // The unwinder's end-of-stack marker, not a frame.
                    return true;
                }
                if stack.len == depth {
                    stack.truncated = true;
                    // Before the entry point is found, keep looking for it.
                    return skipping;
                }
                stack.frames[stack.len] = frame.ip() as usize;
                stack.len += 1;
                true
            });
        }
        stack
    }

    pub(crate) fn frames(&self) -> &[usize] {
        &self.frames[..self.len]
    }

    pub(crate) fn truncated(&self) -> bool {
        self.truncated
    }

    /// A hash of the frames and the truncation mark, for the bucket table.
    pub(crate) fn hash(&self) -> u64 {
        hash_frames(self.frames(), self.truncated)
    }
}

/// FNV-1a over the frame addresses, folded with a final mix so that the low bits pick stripes evenly.
pub(crate) fn hash_frames(frames: &[usize], truncated: bool) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ truncated as u64;
    for &frame in frames {
        h = (h ^ frame as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}
