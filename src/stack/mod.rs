//! Stack capture into a fixed array: no lock, no allocation.

use core::cell::Cell;
use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering::Relaxed};

use crate::sampler::Guard;

#[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
mod dwarf;
pub(crate) mod path;
pub(crate) mod spare;

/// The most return addresses a stack can hold; [`set_max_stack_depth`] can lower the depth used.
pub const MAX_STACK_DEPTH: usize = 128;

/// The default number of frames captured per sampled allocation.
pub const DEFAULT_STACK_DEPTH: usize = 64;

static DEPTH: AtomicUsize = AtomicUsize::new(DEFAULT_STACK_DEPTH);

/// Sets how many frames are captured per sampled allocation, from the allocator's caller outwards. Clamped
/// to `1..=MAX_STACK_DEPTH`. Deeper stacks are cut at the caller end and marked with a final `[truncated]`
/// frame in the profile.
pub fn set_max_stack_depth(frames: usize) {
    DEPTH.store(frames.clamp(1, MAX_STACK_DEPTH), Relaxed);
}

/// The number of frames captured per sampled allocation (see [`set_max_stack_depth`]).
pub fn max_stack_depth() -> usize {
    DEPTH.load(Relaxed)
}

/// How stacks of sampled allocations are captured.
///
/// # Stack use
///
/// Capturing a stack uses the allocating thread's own stack, below the allocator's frames. A sampled
/// allocation captures its stack only where the thread has this much stack left below its stack pointer (down
/// to the low bound of its stack as the C library reports it, which leaves out the guard page); elsewhere it
/// is recorded with its full weight and its labels under `[stack not captured]`, and counted in
/// [`crate::Stats::stackless_samples`]:
///
/// | walk | optimized build | build with debug assertions |
/// | --- | --- | --- |
/// | [`Unwinder::FramePointer`] | 2 KiB | 13 KiB |
/// | [`Unwinder::Dwarf`], every rule in its table | 3 KiB | 13 KiB |
/// | [`Unwinder::Dwarf`], computing a rule | 7 KiB | 26 KiB |
/// | the system unwinder | 5 KiB | 13 KiB |
///
/// Each is half as much again as the most measured on x86_64, recording of the sample included (which may
/// grow the profiler's tables through the inner allocator, measured with glibc's malloc). The DWARF walk is
/// checked twice more where it goes on: a walk that meets an address missing from its table, or that falls
/// back to the system unwinder, without the room for that, captures nothing.
///
/// On x86_64 the work that cannot be skipped runs on a spare stack of the profiler's (64 KiB, one per
/// process, used by one thread at a time): the recording of a sample without its stack, the first reading of
/// a thread's stack bounds, and the bookkeeping of the free of a sampled allocation where the thread has less
/// than 1 KiB left (7 KiB with debug assertions). So a thread needs little more stack than its inner
/// allocator's own use to allocate and free anywhere with the profiler on. Elsewhere that work runs on the
/// thread's stack. Where the bounds cannot be read, or the code runs on another stack than its thread's (a
/// coroutine, a signal stack), nothing is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Unwinder {
    /// DWARF call-frame information (`.eh_frame`, which Rust emits by default): right for any code that has
    /// unwind tables. The unwind rule of each code address is looked up once (the FDE through libgcc's
    /// `_Unwind_Find_FDE`, its program evaluated with gimli) and kept in a fixed table of 2^14 entries
    /// (128 KiB), so a frame whose address has been seen costs a load and a few additions (`cargo bench
    /// --manifest-path benches/micro/Cargo.toml -- sampled` measures it). On x86_64 Linux (glibc); elsewhere, for frames the table cannot describe
    /// (signal trampolines, rules given by DWARF expressions) and for code running on another stack than its
    /// thread's, the system unwinder (libgcc's `_Unwind_Backtrace`, through the `backtrace` crate, which
    /// finds and runs the rule of every frame anew) unwinds the whole stack. The default, except on Apple's systems.
    Dwarf,
    /// Walks the chain of saved frame pointers: a few nanoseconds per frame, but right only for code built
    /// with frame pointers (`RUSTFLAGS="-C force-frame-pointers=yes"`; the standard library too, with
    /// `-Zbuild-std`, or its frames are skipped or end the walk). Every frame pointer is checked against the
    /// thread's stack bounds before it is read, so code without frame pointers gives short stacks (shown as
    /// `[stack not captured]` when nothing of the program is left), never a crash. Code running on another
    /// stack than its thread's (coroutines) is unwound with [`Unwinder::Dwarf`]. Only on x86_64 and aarch64;
    /// elsewhere [`Unwinder::Dwarf`] is used. The default on Apple's systems, whose ABI keeps frame pointers
    /// in all code, the system's libraries included.
    FramePointer,
}

static UNWINDER: AtomicU8 = AtomicU8::new(DEFAULT_UNWINDER as u8);

/// Frame pointers where the platform's ABI guarantees them (Apple's), DWARF elsewhere.
const DEFAULT_UNWINDER: Unwinder = if cfg!(target_vendor = "apple") {
    Unwinder::FramePointer
} else {
    Unwinder::Dwarf
};

/// Chooses how stacks are captured from now on (see [`Unwinder`]); [`Unwinder::Dwarf`] by default
/// ([`Unwinder::FramePointer`] on Apple's systems).
pub fn set_unwinder(unwinder: Unwinder) {
    UNWINDER.store(unwinder as u8, Relaxed);
}

/// The unwinder in use (see [`set_unwinder`]).
#[inline]
pub fn unwinder() -> Unwinder {
    match UNWINDER.load(Relaxed) {
        1 if FRAME_POINTERS_SUPPORTED => Unwinder::FramePointer,
        _ => Unwinder::Dwarf,
    }
}

const FRAME_POINTERS_SUPPORTED: bool = cfg!(any(target_arch = "x86_64", target_arch = "aarch64"));

thread_local! {
    /// This thread's stack, `[low, high)`, read once; `(0, 0)` until then, `(1, 1)` if it cannot be read.
    static STACK_BOUNDS: Cell<(usize, usize)> = const { Cell::new((0, 0)) };
}

/// The current thread's stack bounds. May allocate the first time (glibc reads /proc/self/maps for the main
/// thread): runs inside the profiler guard.
/// Known bounds, the usual case, are a thread-local load where the room is checked.
#[inline(always)]
fn stack_bounds(guard: &Guard) -> (usize, usize) {
    known_bounds().unwrap_or_else(|| first_stack_bounds(guard))
}

/// [`stack_bounds`] of a thread whose bounds are not known yet.
#[cold]
#[inline(never)]
fn first_stack_bounds(_: &Guard) -> (usize, usize) {
    // On the spare stack: the first sample of a thread may come when its stack is nearly used up, and the
    // read cannot be checked against bounds not known yet.
    let mut bounds = None;
    spare::run(&mut || bounds = read_stack_bounds());
    remember_bounds(bounds)
}

/// The bounds read for this thread, if they have been.
#[inline(always)]
fn known_bounds() -> Option<(usize, usize)> {
    match STACK_BOUNDS.try_with(Cell::get) {
        Ok((0, 0)) => None,
        known => Some(known.unwrap_or((1, 1))),
    }
}

/// Keeps the bounds read for this thread (`(1, 1)` if they could not be read) and returns them.
fn remember_bounds(bounds: Option<(usize, usize)>) -> (usize, usize) {
    let bounds = bounds.unwrap_or((1, 1));
    let _ = STACK_BOUNDS.try_with(|b| b.set(bounds));
    bounds
}

/// Reads the calling thread's stack bounds now, on its own stack, if they are not known yet. The process
/// constructor calls it, so that the main thread's bounds, the costly ones (glibc parses /proc/self/maps with
/// `sscanf`), are read on the constructor's short stack rather than by a sample taken deep in the program,
/// and without the spare stack. Runs inside the profiler guard.
#[cfg(any(target_os = "linux", target_os = "android", target_vendor = "apple"))]
pub(crate) fn read_bounds_early(_: &Guard) {
    if known_bounds().is_none() {
        remember_bounds(read_stack_bounds());
    }
}

/// Bytes of stack, below the stack pointer where [`Room::here`] is read, that the parts of a sampled
/// allocation may touch: half as much again as the most measured on x86_64 with glibc's malloc as the inner
/// allocator, in builds of the kind (unoptimized ones, with AddressSanitizer or not, are told by their debug
/// assertions). Each figure covers the walk and the recording of the sample after it in the same frames,
/// which finds or adds its bucket and its live entry, and so may grow a table through the inner allocator.
struct Needs {
    /// The frame-pointer walk.
    frame_pointers: usize,
    /// The cached DWARF walk when every rule it needs is in its table.
    cached_dwarf: usize,
    /// The cached DWARF walk that computes a rule: libgcc's FDE lookup and the CFI evaluated with gimli.
    dwarf_rule: usize,
    /// The system unwinder: libgcc's `_Unwind_Backtrace` through the `backtrace` crate.
    system: usize,
    /// The bookkeeping of the free of a sampled allocation: finding and removing its live entry, subtracting
    /// its weight.
    free: usize,
}

const NEEDS: Needs = if cfg!(debug_assertions) {
    Needs {
        frame_pointers: 13 << 10,
        cached_dwarf: 13 << 10,
        dwarf_rule: 26 << 10,
        system: 13 << 10,
        free: 7 << 10,
    }
} else {
    Needs {
        frame_pointers: 2 << 10,
        cached_dwarf: 3 << 10,
        dwarf_rule: 7 << 10,
        system: 5 << 10,
        free: 1 << 10,
    }
};

/// Whether [`Unwinder::Dwarf`] starts with the cached walk (elsewhere it is the system unwinder's).
const CACHED_DWARF: bool = cfg!(all(
    target_arch = "x86_64",
    target_os = "linux",
    target_env = "gnu"
));

static STACKLESS_SAMPLES: AtomicU64 = AtomicU64::new(0);

/// Counts a sample recorded without its stack because the thread's stack had no room to capture it.
pub(crate) fn note_stackless_sample() {
    STACKLESS_SAMPLES.fetch_add(1, Relaxed);
}

/// Samples recorded without their stack for want of stack room, since the program started.
pub(crate) fn stackless_samples() -> u64 {
    STACKLESS_SAMPLES.load(Relaxed)
}

/// Runs `f`, the bookkeeping of the free of a sampled allocation, on this thread's stack when it has the room
/// for it, else on the spare stack (out of line: the usual path builds no closure for it), and returns what
/// `f` returned: unlike a sample's stack, it cannot be skipped. Runs inside the profiler guard.
#[inline(always)]
pub(crate) fn with_room_for_free<R: Default>(guard: &Guard, f: impl FnOnce() -> R) -> R {
    if free_fits(guard) {
        return f();
    }
    on_spare_stack(f)
}

/// `f` on the spare stack, returning what it returned.
#[cold]
#[inline(never)]
pub(crate) fn on_spare_stack<R: Default>(f: impl FnOnce() -> R) -> R {
    let (mut f, mut out) = (Some(f), R::default());
    spare::run(&mut || {
        if let Some(f) = f.take() {
            out = f();
        }
    });
    out
}

/// Whether the bookkeeping of the free of a sampled allocation fits on this thread's stack here (see
/// [`with_room_for_free`]), inside the profiler guard: as `Room::here(guard).fits(..)`, in one comparison, but
/// for a stack smaller than what the free needs, where it says no.
#[inline(always)]
pub(crate) fn free_fits(guard: &Guard) -> bool {
    let low = match STACK_BOUNDS.try_with(|bounds| bounds.get().0) {
        Ok(0) => first_stack_bounds(guard).0,
        known => known.unwrap_or(1),
    };
    // Below `low` (another stack than the thread's own, or bounds not read), the difference wraps: room
    // unknown, allowed.
    stack_pointer().wrapping_sub(low) >= NEEDS.free
}

/// The stack left to the current thread below its stack pointer, from its stack bounds: how far a sampled
/// allocation may go in capturing its stack. Unknown (every capture allowed, as without the check) when the
/// bounds cannot be read or the code runs on another stack than the thread's own (a coroutine, a signal
/// stack).
#[derive(Clone, Copy)]
pub(crate) struct Room {
    /// Bytes below the stack pointer, if it lies within the thread's stack bounds.
    room: Option<usize>,
    /// The top of the thread's stack (its upper bound), which the walks stay below.
    top: usize,
}

impl Room {
    /// The room below the caller's stack pointer, inside the profiler guard: the first call on a
    /// thread reads its bounds (see [`stack_bounds`]), which is cheap for threads other than the main one,
    /// whose bounds the process constructor reads.
    #[inline(always)]
    pub(crate) fn here(guard: &Guard) -> Room {
        let (low, high) = stack_bounds(guard);
        let sp = stack_pointer();
        Room {
            room: (low..high).contains(&sp).then(|| sp - low),
            top: high,
        }
    }

    #[inline]
    fn fits(self, need: usize) -> bool {
        self.room.is_none_or(|room| room >= need)
    }

    /// The top of the thread's stack if the stack pointer, where the room was measured, lay on it: the
    /// frames below (the walk's, which runs deeper on the same stack) lie on it too.
    fn on_own_stack(self) -> Option<usize> {
        self.room.map(|_| self.top)
    }

    /// Whether the unwinder in use can walk the stack and the sample be recorded, when the walk needs
    /// nothing more than its table or the frame pointers.
    #[inline]
    pub(crate) fn fits_walk(self) -> bool {
        self.fits(match unwinder() {
            Unwinder::FramePointer => NEEDS.frame_pointers,
            Unwinder::Dwarf if CACHED_DWARF => NEEDS.cached_dwarf,
            Unwinder::Dwarf => NEEDS.system,
        })
    }

    /// Whether the cached DWARF walk can compute a rule missing from its table.
    fn fits_dwarf_rule(self) -> bool {
        self.fits(NEEDS.dwarf_rule)
    }

    /// Whether the system unwinder can walk the stack.
    pub(crate) fn fits_system_unwinder(self) -> bool {
        self.fits(NEEDS.system)
    }
}

/// The calling thread's stack, `[low, high)`, from its pthread attributes.
#[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
fn read_stack_bounds() -> Option<(usize, usize)> {
    let mut bounds = None;
    // SAFETY: pthread_getattr_np fills `attr` for the calling thread, which is destroyed after use; the
    // out-parameters are valid locals.
    unsafe {
        let mut attr: libc::pthread_attr_t = core::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) == 0 {
            let (mut addr, mut size) = (core::ptr::null_mut(), 0usize);
            if libc::pthread_attr_getstack(&attr, &mut addr, &mut size) == 0 && !addr.is_null() {
                bounds = Some((addr as usize, (addr as usize).saturating_add(size)));
            }
            libc::pthread_attr_destroy(&mut attr);
        }
    }
    bounds
}

/// The calling thread's stack, `[low, high)`: Darwin gives its top (the highest address) and size.
#[cfg(target_vendor = "apple")]
fn read_stack_bounds() -> Option<(usize, usize)> {
    // SAFETY: both calls only read the calling thread's own descriptor.
    let (top, size) = unsafe {
        let this = libc::pthread_self();
        (
            libc::pthread_get_stackaddr_np(this) as usize,
            libc::pthread_get_stacksize_np(this),
        )
    };
    (top != 0).then(|| (top.saturating_sub(size), top))
}

/// Elsewhere the bounds are unknown: the frame-pointer walk then captures nothing (the DWARF unwinder is
/// used).
#[cfg(not(any(
    target_os = "linux",
    target_os = "android",
    target_os = "freebsd",
    target_vendor = "apple"
)))]
fn read_stack_bounds() -> Option<(usize, usize)> {
    None
}

/// The return addresses of one captured stack, innermost first. Only the first `len` frames are written: the
/// rest of the kilobyte is never cleared, which would cost a sampled allocation more than its walk.
pub(crate) struct Stack {
    frames: [MaybeUninit<usize>; MAX_STACK_DEPTH],
    len: usize,
    truncated: bool,
    /// Which capture of its thread this was, and which earlier one it is known to repeat (see [`Repeat`]).
    repeat: Repeat,
    /// Set when the walk proved the stack the thread's last one and wrote no frame (`len` is then 0): how to
    /// write them, should they be needed (see [`Stack::write_frames`]).
    unwritten: Option<Cut>,
}

/// How the frames of a stack that repeats its thread's last one are written: `walked` return addresses at
/// most, of which the `skip` innermost are dropped (the allocation path) and the rest cut to `depth`.
#[derive(Clone, Copy)]
struct Cut {
    walked: usize,
    skip: usize,
    depth: usize,
}

/// Tells a captured stack that is the same as its thread's last one, without comparing them: the number of
/// the capture on its thread (0 where the walk does not number its captures), and the number of the
/// thread's capture just before it when the two are known to have the same frames (0 when not known). Only
/// the cached DWARF walk knows it, when it replays its last walk whole (see `dwarf::Serial`) with the same
/// depth and allocation path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Repeat {
    pub(crate) this: u64,
    pub(crate) of: u64,
}

impl Repeat {
    /// A stack not known to repeat another, and that no later one is known to repeat.
    pub(crate) const NONE: Repeat = Repeat { this: 0, of: 0 };
}

thread_local! {
    /// The thread's last capture by the cached DWARF walk: its number, the depth and allocation path's
    /// length it was cut with, and how many of its frames were the path's. `const`, without destructor:
    /// usable inside the allocator and at thread exit.
    static LAST_CAPTURE: Cell<(u64, usize, usize, usize)> = const { Cell::new((0, 0, 0, 0)) };
}

impl Stack {
    /// Captures the current thread's stack, starting at the caller of the function that starts at address
    /// `entry` (the profiler's entry point) whose frame pointer is `entry_frame` (used by the frame-pointer
    /// walk), then drops the frames of the allocation path (see [`path`]), so that the stack begins at the
    /// program's call into the allocator. Runs inside the profiler guard: the unwinder may allocate on first
    /// use.
    ///
    /// `room` is the stack left where the entry point checked [`Room::fits_walk`]: a walk that would need more
    /// (a DWARF rule to compute, or the system unwinder) captures nothing and returns `false`.
    ///
    /// Called on an [`Stack::empty`] stack of the caller's, which it fills in place: returning a stack would
    /// copy the whole kilobyte.
    #[inline(always)]
    pub(crate) fn capture(
        &mut self,
        _: &Guard,
        entry: usize,
        entry_frame: usize,
        room: Room,
    ) -> bool {
        let depth = DEPTH.load(Relaxed).min(MAX_STACK_DEPTH);
        // The path's frames are walked too, then dropped: walk that many more.
        let path_len = path::len();
        let walked = (depth + path_len).min(MAX_STACK_DEPTH);
        let walk = match unwinder() {
            Unwinder::FramePointer => self.walk_frame_pointers(room, walked, entry_frame),
            Unwinder::Dwarf => self.walk_cached_dwarf(room, walked, entry),
        };
        match walk {
            Walked::Done => {}
            Walked::Fallback if room.fits_system_unwinder() => self.walk_system(walked, entry),
            // The system unwinder does not fit, or the cached walk needed a rule it had no room to compute.
            _ => {
                self.len = 0;
                self.truncated = false;
                return false;
            }
        }
        // The same walk, cut the same way: the same stack, with as many frames of the path. Only the path's
        // length is compared, as the path only grows.
        let last = LAST_CAPTURE.try_with(Cell::get).unwrap_or_default();
        let skip = if self.repeat.of != 0
            && (last.0, last.1, last.2) == (self.repeat.of, depth, path_len)
        {
            last.3
        } else {
            self.repeat.of = 0;
            if self.unwritten.take().is_some() {
                self.write_walk(walked);
            }
            path::path_frames(self.frames())
        };
        let _ = LAST_CAPTURE.try_with(|last| last.set((self.repeat.this, depth, path_len, skip)));
        if self.unwritten.is_some() {
            // The thread's last stack again: its bucket is the last one's unless the labels changed, so the
            // frames are written only when a sample needs them, and always where debug assertions compare
            // them with the bucket's.
            self.unwritten = Some(Cut {
                walked,
                skip,
                depth,
            });
            if cfg!(debug_assertions) {
                self.write_frames();
            }
        } else {
            debug_assert!(self.repeat.of == 0 || skip == path::path_frames(self.frames()));
            self.drop_allocation_path(skip, depth);
        }
        true
    }

    /// Whether the stack's frames are written: all but those of a stack that repeats its thread's last one
    /// (see [`Stack::write_frames`]).
    pub(crate) fn written(&self) -> bool {
        self.unwritten.is_none()
    }

    /// Writes the frames of a stack that repeats its thread's last one, which the walk did not write, cut as
    /// that one's were; does nothing to a stack whose frames are written. Only before the thread walks again:
    /// the frames are read from the remembered walk.
    pub(crate) fn write_frames(&mut self) {
        if let Some(cut) = self.unwritten.take() {
            self.write_walk(cut.walked);
            debug_assert_eq!(cut.skip, path::path_frames(self.frames()));
            self.drop_allocation_path(cut.skip, cut.depth);
        }
    }

    /// Writes, uncut, the frames of this thread's last walk, which repeated the one before it.
    #[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
    fn write_walk(&mut self, walked: usize) {
        let (len, truncated) = dwarf::write_last(&mut self.frames[..walked]);
        self.len = len;
        self.truncated = truncated;
    }

    /// Only the cached DWARF walk knows a repeated stack, and leaves frames unwritten.
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu")))]
    fn write_walk(&mut self, _walked: usize) {}

    /// Which capture this was, and which it repeats (see [`Repeat`]).
    pub(crate) fn repeat(&self) -> Repeat {
        self.repeat
    }

    /// Removes the allocation path's frames, the `skip` innermost (see [`path::path_frames`]), and cuts the
    /// stack to `depth` frames.
    fn drop_allocation_path(&mut self, skip: usize, depth: usize) {
        if skip > 0 {
            self.frames.copy_within(skip..self.len, 0);
            self.len -= skip;
        }
        if self.len > depth {
            self.len = depth;
            self.truncated = true;
        }
    }

    /// A stack of no frames.
    #[inline(always)]
    pub(crate) fn empty() -> Stack {
        // Field by field: a whole-struct value with zeros in it is stored as one memset of the kilobyte.
        let mut stack = MaybeUninit::<Stack>::uninit();
        let ptr = stack.as_mut_ptr();
        // SAFETY: `ptr` points to a `Stack`'s memory; the two fields that need values are written through
        // it, and `frames`, an array of `MaybeUninit`, is valid uninitialized, so the stack is then
        // initialized.
        unsafe {
            (&raw mut (*ptr).len).write(0);
            (&raw mut (*ptr).truncated).write(false);
            (&raw mut (*ptr).repeat).write(Repeat::NONE);
            (&raw mut (*ptr).unwritten).write(None);
            stack.assume_init()
        }
    }

    /// Unwinds with the system's DWARF unwinder (libgcc's `_Unwind_Backtrace`), skipping frames up to the one
    /// of the function starting at `skip_through`.
    fn walk_system(&mut self, depth: usize, skip_through: usize) {
        let mut skipping = true;
        // SAFETY: `trace_unsynchronized` requires that no other backtrace call on this thread runs
        // concurrently with it in a way that is not reentrant-safe; we hold no lock and call nothing but this
        // closure, which only writes into a local array. The unwinder's own locking is reentrant.
        unsafe {
            backtrace::trace_unsynchronized(|frame| {
                if skipping && frame.symbol_address() as usize == skip_through {
                    skipping = false;
                    self.len = 0;
                    self.truncated = false;
                    return true;
                }
                if frame.ip().is_null() {
                    // The unwinder's end-of-stack marker, not a frame.
                    return true;
                }
                if self.len == depth {
                    self.truncated = true;
                    // Before the entry point is found, keep looking for it.
                    return skipping;
                }
                self.frames[self.len].write(frame.ip() as usize);
                self.len += 1;
                true
            });
        }
    }

    /// Unwinds with [`dwarf::walk`] when the code runs on the thread's own stack, computing the rules missing
    /// from its table only if `rules_fit`. Falls back, with nothing captured, when the code runs on another
    /// stack or a frame needs the system unwinder.
    #[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
    fn walk_cached_dwarf(&mut self, room: Room, depth: usize, skip_through: usize) -> Walked {
        let Some(high) = room.on_own_stack() else {
            return Walked::Fallback;
        };
        let rules_fit = room.fits_dwarf_rule();
        let (walk, serial) = dwarf::walk(&mut self.frames[..depth], skip_through, high, rules_fit);
        match walk {
            dwarf::Walk::Done { len, truncated } => {
                self.len = len;
                self.truncated = truncated;
                self.repeat = Repeat {
                    this: serial.this,
                    of: serial.repeats,
                };
                Walked::Done
            }
            dwarf::Walk::Repeated => {
                self.len = 0;
                self.truncated = false;
                self.repeat = Repeat {
                    this: serial.this,
                    of: serial.repeats,
                };
                // Marks the frames unwritten; `capture` says how they are cut.
                self.unwritten = Some(Cut {
                    walked: depth,
                    skip: 0,
                    depth,
                });
                Walked::Done
            }
            dwarf::Walk::Fallback => Walked::Fallback,
            dwarf::Walk::NoRoom => Walked::NoRoom,
        }
    }

    /// Without the cached unwinder, every stack goes to the system unwinder.
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu")))]
    fn walk_cached_dwarf(&mut self, _room: Room, _depth: usize, _skip_through: usize) -> Walked {
        Walked::Fallback
    }

    /// Follows the saved frame pointers outwards from the frame whose frame pointer is `fp` (the profiler's
    /// entry point's): its return address is the first frame. Only on the thread's own stack: the stack
    /// pointer must lie within the thread's stack bounds, and then each frame pointer must lie between the
    /// stack pointer and the top of that stack, 8-aligned, and above the previous one, or the walk ends.
    /// Memory in that range is mapped, so no read can fault. Falls back, capturing nothing, when the code runs
    /// on another stack (a coroutine, a signal stack): the caller then uses the system unwinder.
    #[inline(never)]
    fn walk_frame_pointers(&mut self, room: Room, depth: usize, mut fp: usize) -> Walked {
        let Some(high) = room.on_own_stack() else {
            return Walked::Fallback;
        };
        let sp = stack_pointer();
        while fp >= sp && fp.is_multiple_of(8) && fp.saturating_add(16) <= high {
            // SAFETY: `fp..fp + 16` lies between the stack pointer and the top of this thread's own stack,
            // which is mapped and readable; the values read are plain words.
            let (next, ret) = unsafe { (*(fp as *const usize), *((fp + 8) as *const usize)) };
            if ret == 0 {
                break;
            }
            if self.len == depth {
                self.truncated = true;
                break;
            }
            self.frames[self.len].write(ret);
            self.len += 1;
            if next <= fp {
                break;
            }
            fp = next;
        }
        Walked::Done
    }

    /// The frames written: none for a stack that repeats its thread's last one until
    /// [`Stack::write_frames`].
    pub(crate) fn frames(&self) -> &[usize] {
        debug_assert!(self.len <= MAX_STACK_DEPTH);
        // SAFETY: the walks write frames `0..len` before they set `len`; `MaybeUninit<usize>` has the
        // layout of `usize`.
        unsafe { core::slice::from_raw_parts(self.frames.as_ptr().cast::<usize>(), self.len) }
    }

    pub(crate) fn truncated(&self) -> bool {
        self.truncated
    }
}

/// How a walk ended.
enum Walked {
    /// The stack is captured.
    Done,
    /// Nothing is captured: the system unwinder must walk the stack.
    Fallback,
    /// Nothing is captured: the cached DWARF walk needed a rule, and the thread has not the stack left to
    /// compute it.
    #[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
    NoRoom,
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

/// Reads a register of the calling frame on x86_64 or aarch64 (named for each), or evaluates `$otherwise`.
macro_rules! read_register {
    ($x86_64:literal, $aarch64:literal, $otherwise:expr) => {{
        let value: usize;
        // SAFETY: reads a register, nothing else.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            core::arch::asm!(
                concat!("mov {}, ", $x86_64),
                out(reg) value,
                options(nomem, nostack, preserves_flags)
            );
        }
        // SAFETY: reads a register, nothing else.
        #[cfg(target_arch = "aarch64")]
        unsafe {
            core::arch::asm!(
                concat!("mov {}, ", $aarch64),
                out(reg) value,
                options(nomem, nostack, preserves_flags)
            );
        }
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        {
            value = $otherwise;
        }
        value
    }};
}

/// The stack pointer, read from its register: the address of a local would not do, as AddressSanitizer
/// can move locals to a heap-allocated fake stack.
#[inline(always)]
fn stack_pointer() -> usize {
    read_register!("rsp", "sp", {
        let here = 0u8;
        &here as *const u8 as usize
    })
}

/// The frame pointer register of the calling frame (0 where frame pointers are not supported).
#[inline(always)]
pub(crate) fn frame_pointer() -> usize {
    read_register!("rbp", "x29", 0)
}

#[cfg(all(test, target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;
    use std::hint::black_box;

    /// The stacks of `probe`'s callers as the cached DWARF walk and the system unwinder see them.
    #[inline(never)]
    fn probe(depth: usize) -> ((Vec<usize>, bool), (Vec<usize>, bool)) {
        let entry = probe as fn(usize) -> _ as usize;
        let mut cached = Stack::empty();
        let guard = Guard::inside();
        assert!(
            matches!(
                cached.walk_cached_dwarf(Room::here(&guard), depth, entry),
                Walked::Done
            ),
            "the cached walk fell back to the system unwinder"
        );
        if cached.unwritten.take().is_some() {
            cached.write_walk(depth);
        }
        let mut system = Stack::empty();
        system.walk_system(depth, entry);
        (
            (cached.frames().to_vec(), cached.truncated()),
            (system.frames().to_vec(), system.truncated()),
        )
    }

    fn assert_same(depth: usize) {
        let (cached, system) = probe(depth);
        assert!(!system.0.is_empty());
        assert_eq!(
            cached, system,
            "cached walk vs system unwinder at depth {depth}"
        );
    }

    #[inline(never)]
    fn recurse(levels: usize, depth: usize) {
        if levels == 0 {
            assert_same(depth);
        } else {
            // A frame with a variable-size local forces a frame-pointer-based CFA in some builds.
            let local = black_box(vec![0u8; levels]);
            recurse(black_box(levels - 1), depth);
            black_box(local);
        }
    }

    #[inline(never)]
    fn through_a(depth: usize) {
        assert_same(depth);
        black_box(1);
    }

    #[inline(never)]
    fn through_b(depth: usize) {
        assert_same(depth);
        black_box(2);
    }

    #[test]
    fn walks_from_one_place_under_other_callers_see_their_callers() {
        // The walks start at the same stack position through frames of the same sizes: a walk must not take
        // the remembered one's callers for its own.
        for _ in 0..3 {
            for depth in [1, 4, MAX_STACK_DEPTH] {
                through_a(black_box(depth));
                through_b(black_box(depth));
                recurse(black_box(2), depth);
                recurse(black_box(3), depth);
            }
        }
    }

    #[test]
    fn cached_walk_matches_system_unwinder() {
        // Twice: the first walk fills the rule table, the second reads it.
        for _ in 0..2 {
            for levels in [0, 1, 5, 40, 150] {
                for depth in [1, 16, MAX_STACK_DEPTH] {
                    recurse(levels, depth);
                }
            }
            // Through std: a sort comparator, a dyn closure, a scoped thread, catch_unwind.
            let mut v: Vec<u32> = (0..64).rev().collect();
            v.sort_by(|a, b| {
                if *a == 17 {
                    assert_same(MAX_STACK_DEPTH);
                }
                a.cmp(b)
            });
            let f: Box<dyn Fn()> = Box::new(|| assert_same(MAX_STACK_DEPTH));
            black_box(&f)();
            std::thread::scope(|s| {
                s.spawn(|| recurse(3, MAX_STACK_DEPTH));
            });
            std::panic::catch_unwind(|| recurse(2, MAX_STACK_DEPTH)).unwrap();
        }
    }
}
