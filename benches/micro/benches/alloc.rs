//! The profiler's cost, side by side with the bare inner allocator in one run.
//!
//! - `pair/*`: one allocate + free pair through `System` ("bare") and through `SamplingAllocator<System>` at
//!   rate 0 (off), 512 KiB (the default) and 4 KiB, for 16 B, 256 B, 4 KiB and 64 KiB, on 1 and 2 threads.
//! - `free_filter`: unsampled frees and allocations of 16 B over a ring of 4,096 blocks, while 10,000
//!   sampled allocations of 512 KiB are live (as in a 5 GiB heap at the default rate): the filter's false
//!   positive rate (frees that looked their pointer up in vain) and the cost per pair, wrapped at rate 0
//!   against bare, from interleaved rounds.
//! - `sampled/*`: one allocate + free pair that is always sampled (rate 1), with the allocation made 8, 32
//!   and 128 frames deep: the cost of capturing a stack and recording it, with each unwinder (the
//!   frame-pointer one needs `RUSTFLAGS="-C force-frame-pointers=yes"` to see whole stacks).
//! - `dump/*`: `dump_profile` with 1,000 and 10,000 distinct stacks in the table (repeated dumps; the first
//!   dump, which symbolizes, is timed once and printed).
//!
//! After criterion's own report, the bench prints each variant's time as a ratio to the bare allocator,
//! read from criterion's estimates of this run. Run with `cargo bench --manifest-path
//! benches/micro/Cargo.toml`; a filter argument selects benches by name as usual (`free_filter` too). With
//! `-- interleaved` it instead times wrapped and bare pairs in interleaved batches, which resolve
//! differences of a fraction of a nanosecond on a machine whose speed drifts.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::Barrier;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use heap_sampler::{SamplingAllocator, Unwinder};

/// The global allocator counts live and peak bytes, to report a dump's memory.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to System unchanged; the counters are only statistics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Relaxed) + layout.size();
        PEAK.fetch_max(live, Relaxed);
        // SAFETY: the caller's contract is System's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Relaxed);
        // SAFETY: the caller's contract is System's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The allocator under test, used directly (not as the global allocator) so that it and `System` are measured
/// in the same process, side by side.
static WRAPPED: SamplingAllocator<System> = SamplingAllocator::new(System);

const SIZES: [(usize, &str); 4] = [(16, "16B"), (256, "256B"), (4096, "4KiB"), (65536, "64KiB")];
const VARIANTS: [(&str, Option<usize>); 4] = [
    ("bare", None),
    ("rate_0", Some(0)),
    ("rate_512KiB", Some(512 << 10)),
    ("rate_4KiB", Some(4 << 10)),
];

/// `allocator.alloc` as a program calls it: through a function of its own, like the `__rust_alloc` shim that
/// `#[global_allocator]` generates, inside which the allocator is inlined. Every variant then runs the same
/// loop around the same calls and differs only inside them. (Inlined into the loop instead, the wrapper
/// also changed how the compiler laid the loop out, which added 1–2 ns of its own to the 16 B pair.)
///
/// # Safety
/// As `GlobalAlloc::alloc`.
#[inline(never)]
unsafe fn shim_alloc<A: GlobalAlloc>(allocator: &A, layout: Layout) -> *mut u8 {
    // SAFETY: forwarded from this function's contract.
    unsafe { allocator.alloc(layout) }
}

/// `allocator.dealloc` through a function of its own (see [`shim_alloc`]).
///
/// # Safety
/// As `GlobalAlloc::dealloc`.
#[inline(never)]
unsafe fn shim_dealloc<A: GlobalAlloc>(allocator: &A, ptr: *mut u8, layout: Layout) {
    // SAFETY: forwarded from this function's contract.
    unsafe { allocator.dealloc(ptr, layout) }
}

#[inline(always)]
fn pair<A: GlobalAlloc>(allocator: &A, layout: Layout) {
    // SAFETY: non-zero size; the pointer is freed with the same layout, or not at all if null.
    unsafe {
        let ptr = black_box(shim_alloc(allocator, layout));
        if !ptr.is_null() {
            shim_dealloc(allocator, ptr, layout);
        }
    }
}

fn pairs(rate: Option<usize>, layout: Layout, iters: u64) {
    match rate {
        None => (0..iters).for_each(|_| pair(&System, layout)),
        Some(_) => (0..iters).for_each(|_| pair(&WRAPPED, layout)),
    }
}

/// Time for `iters` pairs split over `threads` threads, measured from a common start.
fn timed(rate: Option<usize>, layout: Layout, iters: u64, threads: usize) -> Duration {
    if threads == 1 {
        let start = Instant::now();
        pairs(rate, layout, iters);
        return start.elapsed();
    }
    let barrier = Barrier::new(threads + 1);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                barrier.wait();
                pairs(rate, layout, iters);
                barrier.wait();
            });
        }
        barrier.wait();
        let start = Instant::now();
        barrier.wait();
        // Each thread did `iters` pairs: report the time per pair per thread.
        start.elapsed()
    })
}

fn bench_pairs(c: &mut Criterion) {
    for threads in [1usize, 2] {
        for (size, size_name) in SIZES {
            let layout = Layout::from_size_align(size, 8).unwrap();
            let mut group = c.benchmark_group(format!("pair/{threads}t/{size_name}"));
            group
                .measurement_time(Duration::from_secs(2))
                .warm_up_time(Duration::from_millis(500));
            for (name, rate) in VARIANTS {
                if let Some(rate) = rate {
                    heap_sampler::set_sample_rate(rate);
                }
                group.bench_function(BenchmarkId::from_parameter(name), |b| {
                    b.iter_custom(|iters| timed(rate, layout, iters, threads))
                });
            }
            group.finish();
        }
    }
}

/// The free filter under load: 10,000 live sampled allocations of 512 KiB (5 GiB of address space, never
/// touched, so hardly resident), as many as a 5 GiB heap holds at the default rate. Then unsampled
/// allocations and frees of 16 B through the wrapper at rate 0 and through the bare allocator, each over a
/// ring of 4,096 live blocks (free the oldest, allocate its replacement), so that the frees see thousands of
/// addresses and the false positive rate is a rate, not the luck of a few addresses. The two are timed in
/// interleaved rounds (as [`interleaved_pairs`]): timed one after the other by criterion, whichever ran
/// second read 10–15 ns slower, the heap being left in another state by criterion's analysis in between.
fn bench_free_filter() {
    const ROUNDS: usize = 201;
    const RING: usize = 4096;
    const PAIRS: usize = 16 * RING;
    let big = Layout::from_size_align(512 << 10, 8).unwrap();
    let small = Layout::from_size_align(16, 8).unwrap();
    heap_sampler::set_sample_rate(1);
    // SAFETY: non-zero size; freed below with the same layout.
    let live: Vec<*mut u8> = (0..10_000).map(|_| unsafe { WRAPPED.alloc(big) }).collect();
    heap_sampler::set_sample_rate(0);
    /// Nanoseconds per free+allocate pair over `PAIRS` pairs on `ring`.
    fn turn<A: GlobalAlloc>(allocator: &A, layout: Layout, ring: &mut [*mut u8]) -> f64 {
        let start = Instant::now();
        for i in 0..PAIRS {
            let slot = &mut ring[i % RING];
            // SAFETY: every slot holds a block allocated by `allocator` with `layout` (or null); non-zero
            // size.
            unsafe {
                if !slot.is_null() {
                    shim_dealloc(allocator, *slot, layout);
                }
                *slot = black_box(shim_alloc(allocator, layout));
            }
        }
        start.elapsed().as_nanos() as f64 / PAIRS as f64
    }
    // SAFETY: non-zero size; every block is freed below with the same layout by the same allocator.
    let mut rings: [Vec<*mut u8>; 2] = [
        (0..RING).map(|_| unsafe { System.alloc(small) }).collect(),
        (0..RING).map(|_| unsafe { WRAPPED.alloc(small) }).collect(),
    ];
    let before = heap_sampler::stats();
    let [bare_ring, wrapped_ring] = &mut rings;
    let (bare, diffs) = interleave(
        ROUNDS,
        || turn(&System, small, bare_ring),
        || turn(&WRAPPED, small, wrapped_ring),
    );
    let after = heap_sampler::stats();
    let frees = (ROUNDS * PAIRS) as u64;
    let false_positives = after.filter_false_positives - before.filter_false_positives;
    println!(
        "free filter: {} live sampled allocations, {false_positives} lookups in vain over {frees} frees ({:.2} %), \
         filter {} KiB; 16 B free+allocate pairs on a ring of {RING}, wrapped at rate 0 − bare: {:+.2}ns \
         [{:+.2}, {:+.2}] over {:.1}ns (median [quartiles] of {ROUNDS} interleaved rounds)",
        after.live_samples,
        100.0 * false_positives as f64 / frees as f64,
        after.filter_bytes / 1024,
        diffs[ROUNDS / 2],
        diffs[ROUNDS / 4],
        diffs[3 * ROUNDS / 4],
        bare[ROUNDS / 2],
    );
    for (ring, wrapped) in rings.iter().zip([false, true]) {
        for &ptr in ring.iter().filter(|p| !p.is_null()) {
            // SAFETY: allocated above with `small`, by WRAPPED for the second ring and System for the first.
            unsafe {
                if wrapped {
                    WRAPPED.dealloc(ptr, small)
                } else {
                    System.dealloc(ptr, small)
                }
            }
        }
    }
    for ptr in live {
        if !ptr.is_null() {
            // SAFETY: allocated above by WRAPPED with `big`.
            unsafe { WRAPPED.dealloc(ptr, big) };
        }
    }
}

/// Recurses `depth` frames, then runs `f` there.
#[inline(never)]
fn at_depth<R>(depth: usize, f: &mut dyn FnMut() -> R) -> R {
    if depth == 0 {
        f()
    } else {
        black_box(at_depth(black_box(depth - 1), f))
    }
}

fn bench_sampled(c: &mut Criterion) {
    let layout = Layout::from_size_align(64, 8).unwrap();
    let mut group = c.benchmark_group("sampled");
    group
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    heap_sampler::set_sample_rate(1);
    heap_sampler::set_max_stack_depth(heap_sampler::MAX_STACK_DEPTH);
    for (unwinder, name) in [
        (Unwinder::Dwarf, "depth"),
        (Unwinder::FramePointer, "depth_fp"),
    ] {
        heap_sampler::set_unwinder(unwinder);
        for depth in [8usize, 32, 128] {
            group.bench_function(BenchmarkId::new(name, depth), |b| {
                b.iter_custom(|iters| {
                    at_depth(depth, &mut || {
                        let start = Instant::now();
                        (0..iters).for_each(|_| pair(&WRAPPED, layout));
                        start.elapsed()
                    })
                })
            });
        }
    }
    heap_sampler::set_unwinder(Unwinder::Dwarf);
    group.finish();
    heap_sampler::set_max_stack_depth(heap_sampler::DEFAULT_STACK_DEPTH);
}

/// Allocates (and keeps) one block on a stack chosen by the low `bits` bits of `path`: a binary tree of
/// `2^bits` distinct stacks, through `left` and `right` (kept distinct by the marks they pass).
fn distinct_stacks(bits: u32, path: u32, kept: &mut Vec<*mut u8>) {
    if bits == 0 {
        // SAFETY: non-zero size; freed in `bench_dump`.
        kept.push(unsafe { WRAPPED.alloc(Layout::from_size_align(64, 8).unwrap()) });
    } else if path & 1 == 0 {
        left(bits - 1, path >> 1, kept, black_box(1));
    } else {
        right(bits - 1, path >> 1, kept, black_box(2));
    }
}

#[inline(never)]
fn left(bits: u32, path: u32, kept: &mut Vec<*mut u8>, mark: u8) {
    distinct_stacks(bits, path, kept);
    black_box(mark);
}

#[inline(never)]
fn right(bits: u32, path: u32, kept: &mut Vec<*mut u8>, mark: u8) {
    distinct_stacks(bits, path, kept);
    black_box(mark.wrapping_add(1));
}

fn bench_dump(c: &mut Criterion) {
    heap_sampler::set_sample_rate(1);
    let mut group = c.benchmark_group("dump");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    let mut kept = Vec::new();
    for (stacks, bits) in [(1_000usize, 10u32), (10_000, 14)] {
        let before = heap_sampler::stats().buckets;
        for path in 0..stacks as u32 {
            distinct_stacks(bits, path, &mut kept);
        }
        let buckets = heap_sampler::stats().buckets - before;
        let base = LIVE.load(Relaxed);
        PEAK.store(base, Relaxed);
        let start = Instant::now();
        let size = heap_sampler::dump_profile().unwrap().len();
        println!(
            "dump with {buckets} new buckets ({} in all): first {:?}, {size} bytes, peak {} KiB allocated while dumping",
            heap_sampler::stats().buckets,
            start.elapsed(),
            (PEAK.load(Relaxed) - base) / 1024
        );
        group.bench_function(BenchmarkId::new("repeated", stacks), |b| {
            b.iter(|| heap_sampler::dump_profile().unwrap())
        });
    }
    group.finish();
    for ptr in kept {
        // SAFETY: allocated by WRAPPED with this layout in `distinct_stacks`.
        unsafe { WRAPPED.dealloc(ptr, Layout::from_size_align(64, 8).unwrap()) };
    }
}

/// Criterion's mean estimate for one benchmark of this run, in nanoseconds.
fn mean_ns(group: &str, id: &str) -> Option<f64> {
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let path = format!("{target}/criterion/{group}/{id}/new/estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json["mean"]["point_estimate"].as_f64()
}

fn print_ratios() {
    for depth in [8, 32, 128] {
        if let Some(t) = mean_ns("sampled/depth", &depth.to_string()) {
            println!(
                "sampled allocate+free pair at depth {depth}: {:.2} µs",
                t / 1000.0
            );
        }
    }
    for stacks in [1_000, 10_000] {
        if let Some(t) = mean_ns("dump/repeated", &stacks.to_string()) {
            println!(
                "repeated dump with {stacks} distinct stacks: {:.1} ms",
                t / 1e6
            );
        }
    }
    println!("\nallocate+free pair, time per pair, ratio to the bare allocator (same run):");
    println!(
        "{:<22} {:>10} {:>18} {:>18} {:>18}",
        "", "bare", "rate 0", "rate 512 KiB", "rate 4 KiB"
    );
    for threads in [1usize, 2] {
        for (_, size_name) in SIZES {
            let group = format!("pair_{threads}t_{size_name}");
            let Some(bare) = mean_ns(&group, "bare") else {
                continue;
            };
            let mut line = format!(
                "{:<22} {:>8.1}ns",
                format!("{threads} thread(s), {size_name}"),
                bare
            );
            for (name, _) in &VARIANTS[1..] {
                if let Some(t) = mean_ns(&group, name) {
                    line += &format!(" {:>7.1}ns ({:>5.2}x)", t, t / bare);
                }
            }
            println!("{line}");
        }
    }
}

/// Runs `bare` and `wrapped` once per round, back to back in alternating order; returns the bare times and
/// the differences wrapped − bare, each sorted (index `rounds / 2` is the median).
fn interleave(
    rounds: usize,
    mut bare: impl FnMut() -> f64,
    mut wrapped: impl FnMut() -> f64,
) -> (Vec<f64>, Vec<f64>) {
    let (mut bare_times, mut diffs) = (Vec::with_capacity(rounds), Vec::with_capacity(rounds));
    for round in 0..rounds {
        let (b, w) = if round % 2 == 0 {
            let b = bare();
            (b, wrapped())
        } else {
            let w = wrapped();
            (bare(), w)
        };
        bare_times.push(b);
        diffs.push(w - b);
    }
    bare_times.sort_by(f64::total_cmp);
    diffs.sort_by(f64::total_cmp);
    (bare_times, diffs)
}

/// Nanoseconds per pair that the wrapper adds over the bare allocator, from interleaved batches: each round
/// times one batch of `BATCH` pairs per variant, back to back in rotating order, so that both see the same
/// machine state; the median over rounds of (wrapped − bare) per pair, and its quartiles. On a machine whose
/// speed drifts from second to second (a shared VM) this resolves differences that criterion's consecutive
/// measurements of each variant cannot.
fn interleaved_pairs() {
    const ROUNDS: usize = 301;
    const BATCH: u64 = 100_000;
    println!(
        "\nallocate+free pair, interleaved batches ({ROUNDS} rounds of {BATCH} pairs, 1 thread): wrapped − bare per pair, median [quartiles]"
    );
    for (size, size_name) in SIZES {
        let layout = Layout::from_size_align(size, 8).unwrap();
        let mut line = format!("{size_name:<6}");
        for (name, rate) in &VARIANTS[1..] {
            heap_sampler::set_sample_rate(rate.unwrap_or(0));
            let per_pair = |rate| timed(rate, layout, BATCH, 1).as_nanos() as f64 / BATCH as f64;
            let (bare_ns, diffs) = interleave(ROUNDS, || per_pair(None), || per_pair(*rate));
            line += &format!(
                "  {name}: {:+.2}ns [{:+.2}, {:+.2}] over {:.1}ns",
                diffs[ROUNDS / 2],
                diffs[ROUNDS / 4],
                diffs[3 * ROUNDS / 4],
                bare_ns[ROUNDS / 2]
            );
        }
        println!("{line}");
    }
}

/// Whether a bench outside criterion's groups is selected: no filter argument was given, or one that is part
/// of `name`.
fn selected(name: &str) -> bool {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()))
}

fn main() {
    if std::env::args().any(|a| a == "interleaved") {
        interleaved_pairs();
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    bench_pairs(&mut c);
    if selected("free_filter") {
        bench_free_filter();
    }
    bench_sampled(&mut c);
    bench_dump(&mut c);
    c.final_summary();
    print_ratios();
}
