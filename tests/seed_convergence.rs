//! Two lines that create identical queues are estimated within the sampling bound of each other and of the
//! truth, and their gap shrinks as they allocate more: the puzzle of the channels example, as a test.

mod common;

use std::alloc::System;
use std::collections::HashMap;

use common::channels::foo;
use heap_sampler::SamplingAllocator;

#[global_allocator]
static ALLOC: SamplingAllocator<System> = SamplingAllocator::new(System);

const RATE: usize = 64 << 10;

/// What one line of `foo` allocates per call: (objects, size in bytes) per stack.
type LineShape = Vec<(i64, i64)>;

/// Variance of a line's byte estimate over `calls` calls: Σ n·s²(1−p)/p per allocation size, the
/// Horvitz–Thompson variance with p = 1 − e^(−s/rate) (DESIGN.md §4).
fn variance(shape: &LineShape, calls: f64) -> f64 {
    shape
        .iter()
        .map(|&(n, s)| {
            let s = s as f64;
            let p = -(-s / RATE as f64).exp_m1();
            calls * n as f64 * s * s * (1.0 - p) / p
        })
        .sum()
}

fn alloc_space_by_line() -> HashMap<i64, i64> {
    common::by_line(&common::profile(), "foo")
        .into_iter()
        .map(|(line, v)| (line, v.alloc_space))
        .collect()
}

#[test]
fn identical_lines_converge_within_the_sampling_bound() {
    let _serial = common::serial();

    // Calibration in exact mode: one call, every allocation recorded with its true size.
    heap_sampler::set_sample_rate(1);
    drop(foo());
    let calibration = common::profile();
    let mut shapes: HashMap<i64, LineShape> = HashMap::new();
    for (line, v) in common::samples_at(&calibration, "foo") {
        shapes.entry(line).or_default().push((v[0], v[1] / v[0]));
    }
    shapes.values_mut().for_each(|shape| shape.sort());
    let mut lines: Vec<i64> = shapes.keys().copied().collect();
    lines.sort();
    assert_eq!(lines.len(), 4, "foo allocates on four lines: {shapes:?}");
    let (line_a, line_b) = (lines[0], lines[1]);
    let per_call = |line: i64| shapes[&line].iter().map(|&(n, s)| n * s).sum::<i64>() as f64;
    assert_eq!(
        shapes[&line_a], shapes[&line_b],
        "lines a and b allocate identically"
    );
    eprintln!(
        "per call: line {line_a}: {:?}, line {line_b}: {:?}",
        shapes[&line_a], shapes[&line_b]
    );

    heap_sampler::set_sample_rate(RATE);
    let mut rms_gap = Vec::new();
    for calls in [100usize, 1_000, 10_000] {
        let mut squared_gaps = 0.0;
        const REPEATS: u64 = 10;
        for repeat in 0..REPEATS {
            heap_sampler::set_seed(1_000 * calls as u64 + repeat);
            let before = alloc_space_by_line();
            for _ in 0..calls {
                drop(foo());
            }
            let after = alloc_space_by_line();
            let estimate =
                |line| (after.get(&line).unwrap_or(&0) - before.get(&line).unwrap_or(&0)) as f64;
            let (a, b) = (estimate(line_a), estimate(line_b));
            let truth = per_call(line_a) * calls as f64;
            let sigma = variance(&shapes[&line_a], calls as f64).sqrt();
            // Each line within 5 σ of the truth.
            assert!(
                (a - truth).abs() <= 5.0 * sigma,
                "{calls} calls: line a {a} vs truth {truth} (σ {sigma})"
            );
            assert!(
                (b - truth).abs() <= 5.0 * sigma,
                "{calls} calls: line b {b} vs truth {truth} (σ {sigma})"
            );
            // The gap of two independent estimates has σ·sqrt(2); relative to the truth this is
            // 5·sqrt(2(1−p)/(M·p)) for a single size, here summed over the line's allocation sizes.
            let gap = (a - b).abs() / truth;
            let bound = 5.0 * (2.0f64).sqrt() * sigma / truth;
            assert!(
                gap <= bound,
                "{calls} calls: relative gap {gap:.4} exceeds {bound:.4}"
            );
            squared_gaps += gap * gap;
        }
        let rms = (squared_gaps / REPEATS as f64).sqrt();
        eprintln!("{calls:>6} calls: rms relative gap {rms:.4}");
        rms_gap.push(rms);
    }
    // Expected ratio sqrt(10) between consecutive volumes; over 10 repeats the rms is within ~25 % of its
    // expectation, so a non-shrinking gap fails.
    assert!(
        rms_gap[1] < rms_gap[0] && rms_gap[2] < rms_gap[1],
        "gap must shrink: {rms_gap:?}"
    );
}
