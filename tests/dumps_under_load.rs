//! Dumps taken while eight threads churn are valid and consistent: cumulative counts never go down, and
//! once the threads stop, repeated dumps agree and match the live bytes.

mod common;

use std::alloc::System;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use heap_sampler::SamplingAllocator;
use heap_sampler::proto::Profile;

#[global_allocator]
static ALLOC: SamplingAllocator<System> = SamplingAllocator::new(System);

const THREADS: usize = 8;
const RING: usize = 256;

#[inline(never)]
fn ring_buffer(size: usize) -> Vec<u8> {
    Vec::with_capacity(size)
}

/// Replaces buffers of 16–64 KiB in a ring of 256 until told to stop; returns the ring (still live).
fn worker(seed: u64, stop: &AtomicBool, live_bytes: &AtomicU64) -> Vec<Vec<u8>> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut size = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (16 << 10) + (x % (48 << 10)) as usize
    };
    let mut ring: Vec<Vec<u8>> = (0..RING).map(|_| ring_buffer(size())).collect();
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        ring[i % RING] = ring_buffer(size());
        i += 1;
    }
    live_bytes.fetch_add(
        ring.iter().map(|b| b.capacity() as u64).sum(),
        Ordering::Relaxed,
    );
    ring
}

/// alloc_space and in-use per stack through `ring_buffer`, keyed by the stack's addresses.
/// How many dumps the test takes under load. Under AddressSanitizer, a third: that run looks for memory
/// errors in the paths a dump takes, which every dump takes alike, at a tenth of the speed or less.
fn dumps() -> usize {
    if common::under_address_sanitizer() {
        30
    } else {
        100
    }
}

fn ring_stacks(p: &Profile) -> HashMap<Vec<u64>, (i64, i64, i64)> {
    let functions: HashMap<u64, &str> = p
        .function
        .iter()
        .map(|f| (f.id, common::string(p, f.name)))
        .collect();
    let mut out = HashMap::new();
    for s in &p.sample {
        let locations = s.location_id.iter().map(|id| &p.location[*id as usize - 1]);
        let addresses: Vec<u64> = locations.clone().map(|l| l.address).collect();
        if locations
            .flat_map(|l| &l.line)
            .any(|l| functions[&l.function_id].ends_with("::ring_buffer"))
        {
            out.insert(addresses, (s.value[0], s.value[1], s.value[3]));
        }
    }
    out
}

/// Runs `test` in a child process under a watchdog, so that a hang prints every thread's stack instead of
/// stalling CI, and passes on the lines of its standard error that contain one of `keep`.
fn in_child(test: &str, keep: &[&str]) {
    let (_, stderr) = common::run_child(test, Duration::from_secs(120));
    eprint!(
        "{}",
        stderr
            .lines()
            .filter(|l| keep.iter().any(|k| l.contains(k)))
            .map(|l| format!("{l}\n"))
            .collect::<String>()
    );
}

/// Sets the flag when dropped, unwinding included.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Rate 4 KiB: buffers of 16–64 KiB are sampled with p ≥ 1 − e^(−4) = 0.982; 2,048 live buffers give an in-use
/// estimate with relative standard error below sqrt((1−p)/(n·p)) = 0.003, so ±5 % is over 15 σ.
#[test]
fn dumps_under_load_are_valid_and_consistent() {
    if !common::is_child() {
        in_child(
            "dumps_under_load_are_valid_and_consistent",
            &["dump", "in use"],
        );
        return;
    }
    heap_sampler::set_sample_rate(4 << 10);
    let stop = AtomicBool::new(false);
    let live_bytes = AtomicU64::new(0);
    let rings = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS as u64)
            .map(|t| {
                s.spawn({
                    let (stop, live) = (&stop, &live_bytes);
                    move || worker(t + 1, stop, live)
                })
            })
            .collect();
        // A failed check below stops the workers as it unwinds, so the test fails with its message instead of
        // waiting for them.
        let _stop_on_exit = StopOnDrop(&stop);
        let mut previous: Option<HashMap<Vec<u64>, (i64, i64, i64)>> = None;
        let mut slowest = Duration::ZERO;
        for _ in 0..dumps() {
            let start = Instant::now();
            let bytes = heap_sampler::dump_profile().unwrap();
            slowest = slowest.max(start.elapsed());
            let p = common::decode(&bytes);
            common::check_contract(&p);
            let stacks = ring_stacks(&p);
            // In-use counts are summed over the live sampled allocations before the buckets' allocated sums
            // are copied, so what a stack holds is always some of what it allocated.
            for (objects, space, in_use) in stacks.values() {
                assert!(
                    *objects > 0 && in_use <= space,
                    "a stack holds {in_use} B of the {space} B it allocated"
                );
            }
            if let Some(previous) = &previous {
                for (stack, (objects, space, _)) in previous {
                    let (now_objects, now_space, _) =
                        stacks.get(stack).copied().unwrap_or_default();
                    assert!(
                        now_objects >= *objects && now_space >= *space,
                        "alloc_* decreased for a stack"
                    );
                }
            }
            previous = Some(stacks);
        }
        stop.store(true, Ordering::Relaxed);
        // Reported, not asserted: a loaded machine can stretch any dump. A dump that never ends is caught by
        // the child's watchdog; `benches/dump_memory.rs` measures what dumps cost.
        eprintln!("slowest of {} dumps under load: {slowest:?}", dumps());
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    let quiet: Vec<_> = (0..3).map(|_| ring_stacks(&common::profile())).collect();
    assert!(!quiet[0].is_empty());
    assert_eq!(quiet[0], quiet[1], "dumps after the workers stop agree");
    assert_eq!(quiet[1], quiet[2], "dumps after the workers stop agree");
    let in_use: i64 = quiet[0].values().map(|v| v.2).sum();
    let truth = live_bytes.load(Ordering::Relaxed) as f64;
    let error = (in_use as f64 - truth) / truth;
    eprintln!(
        "in use after the workers stop: {in_use} vs {truth} ({:+.2} %)",
        error * 100.0
    );
    assert!(error.abs() <= 0.05, "in use {in_use} vs live {truth}");
    drop(rings);
}

/// Blocks each worker allocates and keeps.
const KEPT: usize = 100_000;

/// In exact mode (rate 1), four threads allocate blocks under one label and keep every one while dumps are
/// taken: those allocations are all still live, so their in-use counts equal their allocated ones at every
/// moment, and a dump that counted a live allocation its copy of the allocated sums had not yet seen would
/// show a stack holding more than it allocated. In-use counts are summed over the live table before the
/// buckets are copied, and a sample enters its bucket before the live table, so no dump can. Dumps are not
/// symbolized, so that many are taken while the blocks are allocated.
#[test]
fn a_stack_never_holds_more_than_it_allocated_while_it_allocates() {
    if !common::is_child() {
        in_child(
            "a_stack_never_holds_more_than_it_allocated_while_it_allocates",
            &["dumps while"],
        );
        return;
    }
    heap_sampler::set_symbolize(false);
    heap_sampler::set_sample_rate(1);
    let running = AtomicU64::new(4);
    let kept = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let running = &running;
                s.spawn(move || {
                    let mut kept = Vec::with_capacity(KEPT);
                    heap_sampler::with_labels(&[("kept", "block")], || {
                        kept.extend((0..KEPT).map(|_| Box::new([0u8; 64])));
                    });
                    running.fetch_sub(1, Ordering::Relaxed);
                    kept
                })
            })
            .collect();
        let (mut dumps, mut seen) = (0, 0);
        while running.load(Ordering::Relaxed) > 0 {
            let p = common::decode(&heap_sampler::dump_profile().unwrap());
            dumps += 1;
            for (objects, space, in_use) in kept_samples(&p) {
                seen += 1;
                assert!(
                    in_use <= space,
                    "dump {dumps}: a stack holds {in_use} B of the {space} B ({objects} blocks) it allocated"
                );
            }
        }
        eprintln!("{dumps} dumps while the blocks were allocated, {seen} samples of them");
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    let after = kept_samples(&common::decode(&heap_sampler::dump_profile().unwrap()))
        .into_iter()
        .fold((0, 0, 0), |sum, (o, s, u)| {
            (sum.0 + o, sum.1 + s, sum.2 + u)
        });
    let bytes = (4 * KEPT * 64) as i64;
    assert_eq!(
        after,
        ((4 * KEPT) as i64, bytes, bytes),
        "every block counted once, and live"
    );
    drop(kept);
}

/// alloc_objects, alloc_space and inuse_space of each sample labelled `kept`.
fn kept_samples(p: &Profile) -> Vec<(i64, i64, i64)> {
    p.sample
        .iter()
        .filter(|s| common::labels_of(p, s).contains(&("kept", "block")))
        .map(|s| (s.value[0], s.value[1], s.value[3]))
        .collect()
}
