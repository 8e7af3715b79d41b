//! Sampling never overflows a stack that the program fits: on threads with 32 KiB and 64 KiB stacks and on the
//! main thread, a recursion that allocates in every frame and goes down to within 2 KiB of where it would
//! overflow without the profiler survives with every allocation sampled, with either unwinder, and every
//! allocation is accounted for: exactly, in the statistics at the deepest frame and in the profile after, the
//! deepest ones under `[stack not captured]` when their stacks had no room to be captured.
//!
//! Where the recursion would overflow is computed, not provoked: from the thread's stack bounds and from how
//! deep below its own stack pointer one frame of the recursion reaches without the profiler, measured by
//! painting the stack below with a pattern and finding the lowest word overwritten. A frame stops recursing
//! when what is left below that reach is at most 2 KiB. The same build measures and runs, so a build that
//! uses more stack per frame (AddressSanitizer's) adapts.
//!
//! Near the bottom every frame allocates from a call site not seen before, so that the DWARF unwinder must
//! compute rules there (its costliest path) at every depth down to the bottom.
//!
//! A test without libtest's harness (`harness = false` in Cargo.toml): the main thread's stack is one of
//! those tried, and libtest runs tests on threads of its own. Each case runs in a child process (this binary
//! again, told the case by an environment variable) under a watchdog, so that an overflow fails the case with
//! its output rather than ending the run.

#[cfg(target_os = "linux")]
mod common;

#[cfg(target_os = "linux")]
fn main() {
    linux::main();
}

#[cfg(not(target_os = "linux"))]
fn main() {
    println!(
        "small_stacks: Linux only (the main thread's stack limit and the bounds are read as there)"
    );
}

#[cfg(target_os = "linux")]
mod linux {
    use std::alloc::System;
    use std::hint::black_box;
    use std::io::Read;
    use std::process::{Command, Stdio};
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
    use std::time::Duration;

    use heap_sampler::{SamplingAllocator, Unwinder};

    use super::common;

    #[global_allocator]
    static ALLOC: SamplingAllocator<System> = SamplingAllocator::new(System);

    /// The environment variable that makes this binary run one case, as `STACK/UNWINDER`.
    const CASE: &str = "HEAP_SAMPLER_TEST_SMALL_STACKS_CASE";

    /// How close to its overflow the recursion goes: the bytes left below the deepest frame's reach.
    const MARGIN: usize = 2 << 10;

    /// The main thread's stack limit in the child (RLIMIT_STACK), as most systems set it.
    const MAIN_STACK: u64 = 8 << 20;

    /// Frames within this many bytes of the bottom of the stack allocate from call sites of their own.
    const FRESH_SITES_ZONE: usize = 64 << 10;

    const STACKS: [(&str, Option<usize>); 3] = [
        ("thread-32KiB", Some(32 << 10)),
        ("thread-64KiB", Some(64 << 10)),
        ("main", None),
    ];
    const UNWINDERS: [(&str, Unwinder); 2] = [
        ("frame-pointers", Unwinder::FramePointer),
        ("dwarf", Unwinder::Dwarf),
    ];

    pub(super) fn main() {
        if let Ok(case) = std::env::var(CASE) {
            run_case(&case);
            return;
        }
        // libtest's arguments, as far as `cargo test` uses them: `--list`, and a filter that selects nothing.
        let args: Vec<String> = std::env::args().skip(1).collect();
        if args.iter().any(|a| a == "--list") {
            println!("small_stacks: test");
            return;
        }
        if args
            .iter()
            .filter(|a| !a.starts_with('-'))
            .any(|f| !"small_stacks".contains(f.as_str()))
        {
            println!("small_stacks: filtered out");
            return;
        }
        for (stack, _) in STACKS {
            for (unwinder, _) in UNWINDERS {
                let case = format!("{stack}/{unwinder}");
                let report = run_child(&case);
                println!("small_stacks {case}: {report}");
            }
        }
        println!("small_stacks: ok");
    }

    /// Runs `case` in a child process under a watchdog; returns its report line, or panics with its output.
    fn run_child(case: &str) -> String {
        let timeout = if common::under_address_sanitizer() {
            Duration::from_secs(600)
        } else {
            Duration::from_secs(120)
        };
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .env(CASE, case)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if case.starts_with("main/") {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe and touches only the child, between fork and exec.
            unsafe {
                command.pre_exec(|| {
                    let limit = libc::rlimit {
                        rlim_cur: MAIN_STACK,
                        rlim_max: libc::RLIM_INFINITY,
                    };
                    if libc::setrlimit(libc::RLIMIT_STACK, &limit) != 0 {
                        // A hard limit below it: keep the limit the system gives.
                        let mut current = std::mem::zeroed::<libc::rlimit>();
                        libc::getrlimit(libc::RLIMIT_STACK, &mut current);
                        current.rlim_cur = current.rlim_max.min(MAIN_STACK);
                        libc::setrlimit(libc::RLIMIT_STACK, &current);
                    }
                    Ok(())
                });
            }
        }
        let mut child = command.spawn().expect("start the child");
        let pid = child.id();
        let (mut stdout, mut stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
        let (done, finished) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let err = std::thread::spawn(move || {
                let mut s = String::new();
                let _ = stderr.read_to_string(&mut s);
                s
            });
            let mut out = String::new();
            let _ = stdout.read_to_string(&mut out);
            let status = child.wait().expect("wait for the child");
            let _ = done.send(());
            (status, out, err.join().unwrap())
        });
        if finished.recv_timeout(timeout).is_err() {
            // SAFETY: kills the child started above, which has not been waited for (the waiter is blocked in
            // `wait`), so its pid is still its own.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
        let (status, out, err) = waiter.join().unwrap();
        assert!(
            status.success(),
            "case {case} failed ({status}; killed after {timeout:?} if SIGKILL):\n{out}\n{err}"
        );
        out.lines()
            .find_map(|l| l.strip_prefix("report: "))
            .unwrap_or_else(|| panic!("case {case} reported nothing:\n{out}\n{err}"))
            .to_string()
    }

    /// Runs one case in this process, on a thread with the case's stack or on the main thread, and prints
    /// its report.
    fn run_case(case: &str) {
        let (stack, unwinder) = case.split_once('/').expect("STACK/UNWINDER");
        let size = STACKS.iter().find(|(name, _)| *name == stack).unwrap().1;
        let unwinder = UNWINDERS
            .iter()
            .find(|(name, _)| *name == unwinder)
            .unwrap()
            .1;
        heap_sampler::set_sample_rate(0);
        heap_sampler::set_unwinder(unwinder);
        let baseline = heap_sampler::stats().stackless_samples;
        let (outcome, sizes) = match size {
            Some(size) => std::thread::scope(|s| {
                std::thread::Builder::new()
                    .stack_size(size)
                    .spawn_scoped(s, || recurse_to_the_margin(case))
                    .expect("spawn a thread with a small stack")
                    .join()
                    .expect("the recursion's thread")
            }),
            None => recurse_to_the_margin(case),
        };
        heap_sampler::set_sample_rate(0);
        let p = common::profile();
        common::check_contract(&p);
        let (mut total, mut stackless) = (common::Values::default(), 0);
        for sample in &p.sample {
            if !common::labels_of(&p, sample).contains(&("case", case)) {
                continue;
            }
            total.alloc_objects += sample.value[0];
            total.alloc_space += sample.value[1];
            total.inuse_space += sample.value[3];
            if is_not_captured(&p, sample) {
                stackless += sample.value[0];
            }
        }
        assert_eq!(
            (total.alloc_objects, total.alloc_space, total.inuse_space),
            (sizes.len() as i64, sizes.iter().sum::<usize>() as i64, 0),
            "the profile counts every allocation of the recursion, exactly"
        );
        let counted = heap_sampler::stats().stackless_samples - baseline;
        // Stacks that were captured but hold nothing of the program (frame-pointer walks through code without
        // frame pointers) show the same marker.
        if unwinder == Unwinder::Dwarf {
            assert_eq!(stackless, counted as i64, "the samples without their stack");
        } else {
            assert!(
                stackless >= counted as i64,
                "the samples without their stack"
            );
        }
        println!(
            "report: {outcome}; {counted} of {} samples without their stack for want of room",
            sizes.len()
        );
    }

    fn is_not_captured(
        p: &heap_sampler::proto::Profile,
        sample: &heap_sampler::proto::Sample,
    ) -> bool {
        sample.location_id.iter().any(|id| {
            p.location[*id as usize - 1].line.iter().any(|line| {
                let function = &p.function[line.function_id as usize - 1];
                common::string(p, function.name) == "[stack not captured]"
            })
        })
    }

    /// The calling thread's stack, `[low, high)`.
    fn stack_bounds() -> (usize, usize) {
        // SAFETY: the attributes are filled for the calling thread and destroyed after use.
        unsafe {
            let mut attr: libc::pthread_attr_t = std::mem::zeroed();
            assert_eq!(libc::pthread_getattr_np(libc::pthread_self(), &mut attr), 0);
            let (mut addr, mut size) = (std::ptr::null_mut(), 0);
            assert_eq!(libc::pthread_attr_getstack(&attr, &mut addr, &mut size), 0);
            libc::pthread_attr_destroy(&mut attr);
            (addr as usize, addr as usize + size)
        }
    }

    #[inline(always)]
    fn stack_pointer() -> usize {
        let sp: usize;
        // SAFETY: reads the stack pointer register, nothing else.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            std::arch::asm!("mov {}, rsp", out(reg) sp, options(nomem, nostack, preserves_flags));
        }
        // SAFETY: as above.
        #[cfg(target_arch = "aarch64")]
        unsafe {
            std::arch::asm!("mov {}, sp", out(reg) sp, options(nomem, nostack, preserves_flags));
        }
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        {
            let here = 0u8;
            sp = std::ptr::from_ref(&here) as usize;
        }
        sp
    }

    const PAINT: usize = 0x5AC3_A53C_96E1_1E69;

    /// Fills the stack below the caller's frame with `PAINT`, down to `low` or 64 KiB below.
    #[inline(never)]
    fn paint(low: usize) -> usize {
        // Below this function's own frame.
        let end = (stack_pointer() - 256) & !7;
        let start = low.max(end - (64 << 10));
        for word in (start..end).step_by(8) {
            // SAFETY: `[start, end)` lies in this thread's stack, below every live frame: nothing uses it.
            unsafe { (word as *mut usize).write_volatile(PAINT) };
        }
        start
    }

    /// The lowest word at or above `start`, below `end`, that no longer holds `PAINT`.
    #[inline(never)]
    fn lowest_touched(start: usize, end: usize) -> usize {
        (start..end)
            .step_by(8)
            // SAFETY: the words lie in this thread's stack below the caller's frame, mapped (painted before).
            .find(|&word| unsafe { (word as *const usize).read_volatile() } != PAINT)
            .unwrap_or(end)
    }

    /// How a recursion goes.
    struct Plan {
        /// The low bound of the thread's stack.
        low: usize,
        /// How far below its stack pointer a frame reaches, without the profiler.
        reach: usize,
        stop: Stop,
    }

    enum Stop {
        /// Stop at this depth (to measure `reach`).
        At(usize),
        /// Stop at the first frame whose reach leaves at most `MARGIN` bytes of the stack.
        Margin,
    }

    /// What the deepest frame saw.
    #[derive(Clone, Copy, Debug, Default)]
    struct Bottom {
        depth: usize,
        /// The stack left below the deepest frame's reach.
        left: usize,
        stack_pointer: usize,
    }

    /// What the statistics said at the deepest frame, against before the recursion.
    static INUSE_AT_BOTTOM: AtomicU64 = AtomicU64::new(0);
    static OBJECTS_AT_BOTTOM: AtomicU64 = AtomicU64::new(0);
    /// Bytes allocated by the frames down to the deepest, as the recursion counts them.
    static BYTES_TO_BOTTOM: AtomicUsize = AtomicUsize::new(0);

    fn block_size(depth: usize) -> usize {
        24 + 8 * (depth % 13)
    }

    /// One frame: a 512-byte local array, one allocation (from a fresh call site near the bottom while
    /// `fresh_sites` are left), then the next frame unless this is the deepest.
    #[inline(never)]
    fn frame(depth: usize, bytes: usize, fresh_sites: usize, plan: &Plan) -> Bottom {
        let mut local = [0u8; 512];
        black_box(&mut local);
        let sp = stack_pointer();
        let left = (sp - plan.low).checked_sub(plan.reach);
        let last = match plan.stop {
            Stop::At(depth_to_stop) => depth == depth_to_stop,
            Stop::Margin => left.is_none_or(|left| left <= MARGIN),
        };
        // Near the bottom, a site not used before (while there are any left).
        let (site, fresh_sites) = if sp - plan.low < FRESH_SITES_ZONE && fresh_sites < SITES {
            (fresh_sites, fresh_sites + 1)
        } else {
            (SITES, fresh_sites)
        };
        let size = block_size(depth);
        let block = allocate(site, size);
        let bytes = bytes + size;
        let bottom = if last {
            let left = left.expect("the deepest frame reaches below the stack");
            at_bottom(bytes);
            Bottom {
                depth,
                left,
                stack_pointer: sp,
            }
        } else {
            frame(depth + 1, bytes, fresh_sites, plan)
        };
        black_box(&local);
        drop(black_box(block));
        bottom
    }

    /// Reads the statistics at the deepest frame (the in-use bytes are those of every frame's block).
    #[inline(never)]
    fn at_bottom(bytes: usize) {
        let stats = heap_sampler::stats();
        INUSE_AT_BOTTOM.store(stats.inuse_bytes, Relaxed);
        OBJECTS_AT_BOTTOM.store(stats.alloc_objects, Relaxed);
        BYTES_TO_BOTTOM.store(bytes, Relaxed);
    }

    /// Call sites: `SITES` fresh ones, and the usual one (`site == SITES`).
    const SITES: usize = 8 * 16;

    /// Allocates `size` bytes from call site `site`: site `16·a + b` is the call of `leaf::<A, B>` from the
    /// `b`-th call site of `group::<A>`, called from the `a`-th call site here; each a return address of its
    /// own.
    #[inline(never)]
    fn allocate(site: usize, size: usize) -> Vec<u8> {
        let b = site % 16;
        match site / 16 {
            0 => group::<0>(b, size),
            1 => group::<1>(b, size),
            2 => group::<2>(b, size),
            3 => group::<3>(b, size),
            4 => group::<4>(b, size),
            5 => group::<5>(b, size),
            6 => group::<6>(b, size),
            7 => group::<7>(b, size),
            _ => group::<8>(0, size),
        }
    }

    #[inline(never)]
    fn group<const A: usize>(b: usize, size: usize) -> Vec<u8> {
        match b {
            0 => leaf::<A, 0>(size),
            1 => leaf::<A, 1>(size),
            2 => leaf::<A, 2>(size),
            3 => leaf::<A, 3>(size),
            4 => leaf::<A, 4>(size),
            5 => leaf::<A, 5>(size),
            6 => leaf::<A, 6>(size),
            7 => leaf::<A, 7>(size),
            8 => leaf::<A, 8>(size),
            9 => leaf::<A, 9>(size),
            10 => leaf::<A, 10>(size),
            11 => leaf::<A, 11>(size),
            12 => leaf::<A, 12>(size),
            13 => leaf::<A, 13>(size),
            14 => leaf::<A, 14>(size),
            _ => leaf::<A, 15>(size),
        }
    }

    #[inline(never)]
    fn leaf<const A: usize, const B: usize>(size: usize) -> Vec<u8> {
        black_box(vec![(A * 16 + B) as u8; size])
    }

    /// Measures the reach of a frame, recurses to the margin without the profiler (which must fit, by
    /// construction), then with every allocation sampled; checks the statistics; returns the report and the
    /// sizes of the blocks allocated with every allocation sampled.
    fn recurse_to_the_margin(case: &str) -> (String, Vec<usize>) {
        let _labels = heap_sampler::enter_labels(&[("case", case)]);
        let (low, high) = stack_bounds();
        heap_sampler::set_sample_rate(0);
        // The reach of the deepest of a few frames, the highest of several runs (the inner allocator's path
        // varies a little).
        let mut reach = 0;
        for _ in 0..16 {
            let start = paint(low);
            let plan = Plan {
                low,
                reach: 0,
                stop: Stop::At(4),
            };
            let bottom = frame(0, 0, SITES, &plan);
            reach = reach.max(bottom.stack_pointer - lowest_touched(start, bottom.stack_pointer));
        }
        let plan = Plan {
            low,
            reach,
            stop: Stop::Margin,
        };
        let unsampled = frame(0, 0, SITES, &plan);
        heap_sampler::set_sample_rate(1);
        let before = heap_sampler::stats();
        let sampled = frame(0, 0, 0, &plan);
        let after = heap_sampler::stats();
        heap_sampler::set_sample_rate(0);
        assert_eq!(
            sampled.depth, unsampled.depth,
            "the sampled recursion went as deep as the unsampled one"
        );
        let sizes: Vec<usize> = (0..=sampled.depth).map(block_size).collect();
        let bytes: usize = sizes.iter().sum();
        assert_eq!(BYTES_TO_BOTTOM.load(Relaxed), bytes);
        assert_eq!(
            (
                INUSE_AT_BOTTOM.load(Relaxed) - before.inuse_bytes,
                OBJECTS_AT_BOTTOM.load(Relaxed) - before.alloc_objects
            ),
            (bytes as u64, sizes.len() as u64),
            "at the deepest frame, every block is counted in use"
        );
        assert_eq!(
            (
                after.inuse_bytes,
                after.alloc_bytes - before.alloc_bytes,
                after.alloc_objects - before.alloc_objects
            ),
            (before.inuse_bytes, bytes as u64, sizes.len() as u64),
            "after the recursion, every block is counted allocated and freed"
        );
        let report = format!(
            "stack [{low:#x}, {high:#x}) of {} KiB, a frame reaches {reach} bytes below its stack pointer, \
             {} frames deep, {} bytes left below the deepest reach",
            (high - low) >> 10,
            sampled.depth + 1,
            sampled.left,
        );
        (report, sizes)
    }
}
