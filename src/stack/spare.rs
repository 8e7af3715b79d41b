//! A stack of the profiler's own, for the work that cannot be skipped when a thread's stack is nearly used
//! up: recording a sample without its stack (which may grow the profiler's tables through the inner
//! allocator), the bookkeeping of the free of a sampled allocation, and reading the thread's stack bounds the
//! first time; and for the work that needs much more stack than the allocation or free that leads to it: a
//! copy of the counts at a peak, entering a live entry again after a failed reallocation.
//!
//! One stack serves the whole process, mapped on first use with an inaccessible guard page below it, and
//! taken under a lock: only threads short of stack use it, and each holds it for one recording. x86_64 only
//! (the switch is three instructions of assembly); elsewhere, and if the stack cannot be mapped, the work
//! runs on the thread's own stack.

#[cfg(all(target_arch = "x86_64", unix))]
mod imp {
    use core::ffi::c_void;
    use core::sync::atomic::{
        AtomicUsize, Ordering::Acquire, Ordering::Relaxed, Ordering::Release,
    };

    use crate::lock::{AnyLock, Lock, Rank};

    /// Bytes of the spare stack: several times what the recording of a sample needs in an unoptimized build,
    /// so that a signal handler that interrupts it has room too.
    const SIZE: usize = 64 << 10;

    /// The top of the spare stack (16-aligned); 0 until it is mapped, 1 if it cannot be.
    static TOP: AtomicUsize = AtomicUsize::new(0);

    /// Held by the thread running on the spare stack.
    static IN_USE: Lock<()> = Lock::new(Rank::SpareStack, ());

    /// The top of the spare stack, mapped on the first call.
    fn top() -> Option<usize> {
        match TOP.load(Acquire) {
            0 => map(),
            1 => None,
            top => Some(top),
        }
    }

    #[cold]
    fn map() -> Option<usize> {
        // SAFETY: sysconf only reads a constant.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        // SAFETY: a new private anonymous mapping, not yet seen by anyone; its lowest page is made
        // inaccessible, so that an overflow of the spare stack faults instead of writing below it.
        let base = unsafe {
            let base = libc::mmap(
                core::ptr::null_mut(),
                SIZE + page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            if base == libc::MAP_FAILED {
                None
            } else if libc::mprotect(base, page, libc::PROT_NONE) != 0 {
                libc::munmap(base, SIZE + page);
                None
            } else {
                Some(base as usize)
            }
        };
        let Some(base) = base else {
            let _ = TOP.compare_exchange(0, 1, Relaxed, Relaxed);
            return None;
        };
        let top = base + page + SIZE;
        match TOP.compare_exchange(0, top, Release, Acquire) {
            Ok(_) => Some(top),
            Err(other) => {
                // Another thread mapped one first: use it, and give this one back.
                // SAFETY: the mapping made above, never published.
                unsafe { libc::munmap(base as *mut c_void, SIZE + page) };
                (other > 1).then_some(other)
            }
        }
    }

    /// Runs `f` on the spare stack, waiting for it if another thread is on it; where it is, if this thread
    /// already runs on the spare stack or there is none. `f` must not unwind.
    pub(crate) fn run(mut f: &mut dyn FnMut()) {
        let Some(top) = top() else {
            f();
            return;
        };
        if (top - SIZE..top).contains(&super::super::stack_pointer()) {
            // Already on it (the bookkeeping of a free that goes on to copy the peak's counts), holding it.
            f();
            return;
        }
        let _in_use = IN_USE.lock();
        let data = &raw mut f;
        // SAFETY: `top` is the 16-aligned top of a mapping of SIZE bytes that only the holder of `IN_USE`
        // uses, and nothing is left on it between runs. The assembly keeps the thread's stack pointer in
        // r12 (callee-saved, so `call_closure` preserves it), moves the stack pointer to `top` and calls
        // `call_closure(data)` there with the stack aligned as the C ABI wants, then moves the stack pointer
        // back; `clobber_abi("C")` declares every register the call may change. `data` points to `f`, alive
        // until the call returns. Nothing unwinds through the switch: `call_closure` is `extern "C"`, so a
        // panic in `f` would abort, and the allocator's paths do not panic.
        unsafe {
            core::arch::asm!(
                "mov r12, rsp",
                "mov rsp, {top}",
                "call {entry}",
                "mov rsp, r12",
                top = in(reg) top,
                entry = in(reg) call_closure as unsafe extern "C" fn(*mut c_void) as usize,
                in("rdi") data,
                out("r12") _,
                clobber_abi("C"),
            );
        }
    }

    /// Calls the closure that `data` points to.
    ///
    /// # Safety
    /// `data` is a `*mut &mut dyn FnMut()`, valid for the call.
    unsafe extern "C" fn call_closure(data: *mut c_void) {
        // SAFETY: `run` passes a pointer to its `&mut dyn FnMut()`, which outlives this call.
        let f = unsafe { &mut *data.cast::<&mut dyn FnMut()>() };
        f();
    }

    /// The spare stack's lock, for the `fork` handlers.
    pub(crate) fn lock() -> &'static dyn AnyLock {
        &IN_USE
    }
}

#[cfg(not(all(target_arch = "x86_64", unix)))]
mod imp {
    /// Without a spare stack, `f` runs on the thread's own stack.
    pub(crate) fn run(f: &mut dyn FnMut()) {
        f();
    }
}

#[cfg(all(target_arch = "x86_64", unix))]
pub(crate) use imp::lock;
pub(crate) use imp::run;
