//! The peak profile: what was in use when the estimated in-use bytes were highest, long after it was freed;
//! the current profile shows only what is live now; copies of the peak stay few.

mod common;

use std::alloc::System;

use heap_sampler::SamplingAllocator;

#[global_allocator]
static ALLOC: SamplingAllocator<System> = SamplingAllocator::new(System);

const MIB: usize = 1 << 20;

/// `n` blocks of 1 MiB, never touched: above glibc's mmap threshold they cost one resident page each.
#[inline(always)]
fn mib_blocks(n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|_| Vec::with_capacity(MIB)).collect()
}

#[inline(never)]
fn phase_one_a(n: usize) -> Vec<Vec<u8>> {
    mib_blocks(n)
}

#[inline(never)]
fn phase_one_b(n: usize) -> Vec<Vec<u8>> {
    mib_blocks(n)
}

#[inline(never)]
fn phase_one_c(n: usize) -> Vec<Vec<u8>> {
    mib_blocks(n)
}

#[inline(never)]
fn phase_two(n: usize) -> Vec<Vec<u8>> {
    mib_blocks(n)
}

/// Grows the heap by 1 MiB per step, freeing one of two new blocks each time, so that every free finds the
/// in-use estimate at a new highest value: the worst case for copies of the peak.
#[inline(never)]
fn sawtooth(steps: usize) -> Vec<Vec<u8>> {
    let mut kept = Vec::with_capacity(steps);
    for _ in 0..steps {
        kept.push(Vec::with_capacity(MIB));
        drop(std::hint::black_box(Vec::<u8>::with_capacity(MIB)));
    }
    kept
}

/// The standard deviation of the estimate of `n` blocks of 1 MiB and their holding vector (`n` × 24 bytes)
/// at `rate`: sqrt(Σ s²(1−p)/p) over both kinds.
fn sigma(n: usize, rate: usize) -> f64 {
    common::sigma_bytes(MIB, n, rate).hypot(common::sigma_bytes(n * 24, 1, rate))
}

fn truth(n: usize) -> i64 {
    (n * MIB + n * 24) as i64
}

/// Default rate, 512 KiB. Phase one holds 1 GiB in 1 MiB blocks across three sites (512, 320 and 192 MiB);
/// phase two frees it all and keeps 100 MiB at a fourth site.
///
/// 1 MiB blocks are sampled with p = 1 − e^(−2) = 0.865, so a site of `n` blocks has σ = 1 MiB ·
/// sqrt(n (1−p)/p): 1.7 % at 512 blocks, 2.9 % at 192, 4.0 % at 100; every estimate is checked at 5 σ, with
/// a fixed seed. The peak is copied at the first free after phase one, so the peak profile's in-use equals
/// the highest in-use estimate (`Stats::peak_inuse_bytes`) to the byte, and its time lies between the end of
/// phase one and the end of the frees. Frees subtract exactly what was added, so the current profile's
/// phase-one sites are exactly 0, and phase two is absent from the peak profile.
///
/// Before that, a sawtooth grows the heap 1 MiB per step to 256 MiB at rate 64 KiB (1 MiB blocks then weigh
/// 1/(1 − e^(−16)), exact to 10^-7), every free at a new highest value: copies of the peak stay within the
/// documented bound ln(1 + P / (128 · rate)) / ln(33/32) = 113 for P = 256 MiB, where copying at every new
/// highest value would take 256.
#[test]
fn peak_profile_keeps_phase_one_after_it_is_freed() {
    let _serial = common::serial();

    heap_sampler::set_sample_rate(64 << 10);
    heap_sampler::set_seed(2024);
    let copies_before = heap_sampler::stats().peak_copies;
    let teeth = sawtooth(256);
    let copies = heap_sampler::stats().peak_copies - copies_before;
    let bound =
        (1.0 + (256 * MIB) as f64 / (128.0 * (64 << 10) as f64)).ln() / (33.0f64 / 32.0).ln();
    assert!(
        copies >= 1 && copies as f64 <= bound,
        "{copies} copies of the peak, bound {bound:.1}"
    );
    drop(teeth);

    const RATE: usize = heap_sampler::DEFAULT_SAMPLE_RATE;
    heap_sampler::set_sample_rate(RATE);
    let a = phase_one_a(512);
    let b = phase_one_b(320);
    let c = phase_one_c(192);
    let end_of_phase_one = common::now_nanos();
    drop((a, b, c));
    let end_of_frees = common::now_nanos();
    let d = phase_two(100);

    let peak_bytes = heap_sampler::dump_peak_profile().unwrap();
    let peak = common::decode(&peak_bytes);
    let current = common::profile();
    common::check_contract(&peak);
    common::check_contract(&current);
    let stats = heap_sampler::stats();

    let within = |what: &str, estimate: i64, truth: i64, sigma: f64| {
        let error = (estimate - truth) as f64;
        assert!(
            error.abs() < 5.0 * sigma,
            "{what}: estimate {estimate} vs {truth} bytes, {:.1} σ",
            error / sigma
        );
    };
    for (site, n) in [
        ("phase_one_a", 512),
        ("phase_one_b", 320),
        ("phase_one_c", 192),
    ] {
        let at_peak = common::at_function(&peak, site);
        within(site, at_peak.inuse_space, truth(n), sigma(n, RATE));
        let now = common::at_function(&current, site);
        assert_eq!(
            (now.inuse_space, now.inuse_objects),
            (0, 0),
            "{site} is freed"
        );
        assert_eq!(
            now.alloc_space, at_peak.alloc_space,
            "{site} allocated nothing since"
        );
    }
    assert!(
        common::samples_at(&peak, "phase_two").is_empty(),
        "phase two is after the peak"
    );
    within(
        "phase_two",
        common::at_function(&current, "phase_two").inuse_space,
        truth(100),
        sigma(100, RATE),
    );

    let peak_total: i64 = peak.sample.iter().map(|s| s.value[3]).sum();
    let comments: Vec<&str> = peak
        .comment
        .iter()
        .map(|&i| common::string(&peak, i))
        .collect();
    let size: i64 = comments
        .iter()
        .find_map(|c| c.strip_prefix("peak: "))
        .and_then(|c| c.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a `peak: N bytes` comment in {comments:?}"));
    assert!(
        (size - stats.peak_inuse_bytes as i64).abs() <= 1,
        "copied at the peak: {size} vs highest {}",
        stats.peak_inuse_bytes
    );
    assert!(
        (size - peak_total).abs() <= peak.sample.len() as i64,
        "comment {size} vs samples {peak_total}"
    );
    assert!(
        (end_of_phase_one..=end_of_frees).contains(&peak.time_nanos),
        "peak time {} not within [{end_of_phase_one}, {end_of_frees}]",
        peak.time_nanos
    );

    if let Some(go) = common::go() {
        let dir = common::temp_dir("peak");
        let path = dir.join("peak.pb.gz");
        std::fs::write(&path, &peak_bytes).unwrap();
        let path = path.to_str().unwrap();
        let shown = common::pprof(&go, &["-comments", path]);
        assert!(shown.contains(&format!("peak: {size} bytes")), "{shown}");
        let top = common::pprof(&go, &["-top", "-sample_index=inuse_space", path]);
        assert!(top.contains("peak::phase_one_a"), "{top}");
        std::fs::remove_dir_all(dir).unwrap();
    }
    drop(d);
}
