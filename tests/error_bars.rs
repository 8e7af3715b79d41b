//! Every space estimate comes with its standard error, estimated from the samples behind it, and the error
//! bars are calibrated: over many fixed seeds, the standardized errors `(estimate − truth) / stderr` of the
//! channels puzzle's four queue lines and of a site of mixed sizes behave as a standard normal's.

mod common;

use std::alloc::System;

use common::channels::foo;
use heap_sampler::{DeltaWindow, SamplingAllocator, Site};

#[global_allocator]
static ALLOC: SamplingAllocator<System> = SamplingAllocator::new(System);

/// A site of mixed sizes: one block of each size, pushed onto `blocks` (reserved by the caller).
#[inline(never)]
fn mixed(sizes: &[usize], blocks: &mut Vec<Vec<u8>>) {
    for &size in sizes {
        blocks.push(Vec::with_capacity(size));
    }
}

/// Well below the blocks' sizes' range, so that their sampling probabilities spread from 0.01 to 0.4.
const RATE: usize = 64 << 10;
/// Calls of `foo` per seed: about 30 samples on each of its smallest lines.
const CALLS: usize = 260;
/// Blocks of the mixed site per seed, sizes uniform in 16 B–32 KiB: about 40 samples; every other one is
/// freed before the snapshot, so that its in-use and allocated figures differ.
const BLOCKS: usize = 200;
const SEEDS: u64 = 200;

/// The site of `function` (by name suffix) at `line`; `None` for a line not sampled.
fn site<'a>(sites: &'a [Site], function: &str, line: u32) -> Option<&'a Site> {
    sites
        .iter()
        .find(|s| s.function.ends_with(function) && s.line == line)
}

/// Block sizes for one seed, from a fixed xorshift.
fn sizes(seed: u64) -> Vec<usize> {
    let mut state = 0x9E37_79B9_7F4A_7C15 ^ seed.wrapping_mul(0xBF58_476D_1CE4_E5B9) | 1;
    (0..BLOCKS)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            16 + (state % ((32 << 10) - 16)) as usize
        })
        .collect()
}

/// Calibration bounds (the acceptance): over `n` standardized errors, their mean square within
/// [0.8, 1.25] and the share within ±1.96 within [92 %, 98 %].
///
/// For well-calibrated error bars the errors are close to standard normal: their mean square is 1 with a
/// standard deviation of sqrt(2 / n) (0.045 at the n = 1,000 of each figure here; the estimated variances
/// add a little spread, and the skew of a few-dozen-sample estimate a little more), and the share within
/// ±1.96 is 95 % with a standard deviation of sqrt(0.95 · 0.05 / n) (0.7 %). Each bound is more than 4 of
/// those deviations away, so a correct estimator fails with negligible probability; with fixed seeds the
/// outcome is the same on every run. A broken estimator cannot pass by chance: standard errors off by a
/// factor k put the mean square near 1 / k², outside the bounds for k outside about [0.9, 1.1]; a variance
/// that forgets a factor 1/p (s²(1 − p)/p instead of s²(1 − p)/p²) understates the bar by sqrt(p), here a
/// factor of at least 1.6 (p ≤ 0.4); errors measured from a wrong estimate (a stale or double-counted
/// sample) shift the mean and widen the spread.
fn check_calibration(name: &str, z: &[f64]) {
    let n = z.len() as f64;
    let mean_square = z.iter().map(|z| z * z).sum::<f64>() / n;
    let within = z.iter().filter(|z| z.abs() <= 1.96).count() as f64 / n;
    let mean = z.iter().sum::<f64>() / n;
    eprintln!(
        "{name}: {} standardized errors, mean {mean:.3}, mean square {mean_square:.3}, within ±1.96: {:.1} %",
        z.len(),
        within * 100.0
    );
    assert!(
        (0.8..=1.25).contains(&mean_square),
        "{name}: mean square of the standardized errors {mean_square:.3} outside [0.8, 1.25]"
    );
    assert!(
        (0.92..=0.98).contains(&within),
        "{name}: {:.1} % of the standardized errors within ±1.96, outside [92 %, 98 %]",
        within * 100.0
    );
}

#[test]
fn error_bars_are_calibrated() {
    let _serial = common::serial();
    let line_of_foo = |offset: u32| {
        // `foo`'s first queue line, in its source: the tests below name lines, not call sites.
        let first = common::channels::SOURCE
            .lines()
            .position(|l| l.contains("let a = sync_channel::<[u8; 64]>(100);"))
            .expect("foo's first line") as u32;
        first + 1 + offset
    };
    let queue_lines: Vec<u32> = (0..4).map(line_of_foo).collect();
    let mixed_line = {
        let source = include_str!("error_bars.rs");
        source
            .lines()
            .position(|l| l.contains("blocks.push(Vec::with_capacity(size));"))
            .expect("the mixed site's line") as u32
            + 1
    };

    // The truth per call of `foo`, line by line, in exact mode: the sizes of `sync_channel`'s allocations
    // are the standard library's to choose.
    heap_sampler::set_sample_rate(1);
    let window = DeltaWindow::start().unwrap();
    let calibration = foo();
    let sites = window.finish().unwrap().sites();
    drop(calibration);
    let per_call: Vec<i64> = queue_lines
        .iter()
        .map(|&line| {
            site(&sites, "foo", line)
                .unwrap_or_else(|| panic!("line {line} of foo in exact mode: {sites:#?}"))
                .alloc_space
        })
        .collect();
    assert_eq!(
        per_call[0], per_call[1],
        "lines a and b allocate identically"
    );
    for (line, bytes) in queue_lines.iter().zip(&per_call) {
        eprintln!("foo line {line}: {bytes} bytes per call");
    }

    heap_sampler::set_sample_rate(RATE);
    let mut alloc_z = Vec::new();
    let mut inuse_z = Vec::new();
    let mut samples = Vec::new();
    let mut blocks = Vec::with_capacity(BLOCKS);
    let mut kept = Vec::with_capacity(CALLS);
    for seed in 0..SEEDS {
        heap_sampler::set_seed(seed);
        let sizes = sizes(seed);
        let window = DeltaWindow::start().unwrap();
        for _ in 0..CALLS {
            kept.push(foo());
        }
        mixed(&sizes, &mut blocks);
        // Every other block freed: the site's in-use truth is the rest.
        let mut index = 0;
        blocks.retain(|_| {
            index += 1;
            index % 2 == 0
        });
        let sites = window.finish().unwrap().sites();

        let mut truths: Vec<(u32, &str, i64, i64)> = queue_lines
            .iter()
            .zip(&per_call)
            .map(|(&line, &bytes)| (line, "foo", bytes * CALLS as i64, bytes * CALLS as i64))
            .collect();
        let allocated: usize = sizes.iter().sum();
        let in_use: usize = sizes.iter().skip(1).step_by(2).sum();
        truths.push((mixed_line, "mixed", allocated as i64, in_use as i64));
        for (line, function, alloc_truth, inuse_truth) in truths {
            let s = site(&sites, function, line)
                .unwrap_or_else(|| panic!("seed {seed}: no sample on {function} line {line}"));
            assert!(
                s.alloc_space_stderr > 0.0 && s.inuse_space_stderr > 0.0,
                "seed {seed}: {s:?} has no error bar"
            );
            alloc_z.push((s.alloc_space - alloc_truth) as f64 / s.alloc_space_stderr);
            inuse_z.push((s.inuse_space - inuse_truth) as f64 / s.inuse_space_stderr);
            samples.push(s.samples);
        }
        kept.clear();
        blocks.clear();
    }
    samples.sort();
    eprintln!(
        "samples per estimate: min {}, median {}, max {}",
        samples[0],
        samples[samples.len() / 2],
        samples[samples.len() - 1]
    );
    check_calibration("alloc_space", &alloc_z);
    check_calibration("inuse_space", &inuse_z);
}

/// In exact mode every figure is exact: no error bar.
#[test]
fn exact_mode_has_no_error_bars() {
    let _serial = common::serial();
    heap_sampler::set_sample_rate(1);
    let window = DeltaWindow::start().unwrap();
    let kept = foo();
    let sites = window.finish().unwrap().sites();
    drop(kept);
    let foo_sites: Vec<&Site> = sites
        .iter()
        .filter(|s| s.function.ends_with("foo"))
        .collect();
    assert_eq!(foo_sites.len(), 4, "{sites:#?}");
    for s in foo_sites {
        assert_eq!((s.alloc_space_stderr, s.inuse_space_stderr), (0.0, 0.0));
        assert!(s.samples >= 1 && s.inuse_samples == s.samples, "{s:?}");
    }
}
