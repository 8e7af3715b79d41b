//! A snapshot of the heap taken once and rendered several ways: pprof written through `impl Write`, folded
//! stacks and sites agree on every total; a delta window is finished when the caller chooses, with no
//! sleep; a writer that fails is reported as such.

mod common;

use std::alloc::System;
use std::io::{self, Write};

use heap_sampler::{DeltaWindow, Error, HeapSnapshot, SampleType, SamplingAllocator};

#[global_allocator]
static ALLOC: SamplingAllocator<System> = SamplingAllocator::new(System);

#[inline(never)]
fn snapshot_keeps(n: usize, size: usize) -> Vec<Vec<u8>> {
    (0..n).map(|_| vec![1u8; size]).collect()
}

#[inline(never)]
fn window_keeps(n: usize, size: usize) -> Vec<Vec<u8>> {
    (0..n).map(|_| vec![2u8; size]).collect()
}

/// The sum of each sample type's values over the samples of `p`.
fn totals(p: &heap_sampler::proto::Profile) -> [i64; 4] {
    let mut sums = [0i64; 4];
    for sample in &p.sample {
        for (sum, value) in sums.iter_mut().zip(&sample.value) {
            *sum += value;
        }
    }
    sums
}

#[test]
fn one_snapshot_rendered_every_way_agrees_on_totals() {
    let _serial = common::serial();
    heap_sampler::set_sample_rate(1);
    let kept = snapshot_keeps(64, 4096);
    let snapshot = HeapSnapshot::current().unwrap();

    let mut gzipped: Vec<u8> = Vec::new();
    snapshot.write_pprof(&mut gzipped).unwrap();
    let p = common::decode(&gzipped);
    common::check_contract(&p);
    assert!(common::at_function(&p, "snapshot_keeps").inuse_space >= 64 * 4096);

    let pprof = totals(&p);
    let sites = snapshot.sites();
    for t in SampleType::ALL {
        let folded: i64 = snapshot
            .folded_stacks(t)
            .lines()
            .map(|line| line.rsplit(' ').next().unwrap().parse::<i64>().unwrap())
            .sum();
        let by_site: i64 = sites
            .iter()
            .map(|s| match t {
                SampleType::AllocObjects => s.alloc_objects,
                SampleType::AllocSpace => s.alloc_space,
                SampleType::InuseObjects => s.inuse_objects,
                SampleType::InuseSpace => s.inuse_space,
            })
            .sum();
        let i = SampleType::ALL.iter().position(|&u| u == t).unwrap();
        assert_eq!((folded, by_site), (pprof[i], pprof[i]), "{t}");
    }
    // Rendered again, or to a file, it is the same profile.
    assert_eq!(snapshot.to_pprof().unwrap(), gzipped);
    let dir = common::temp_dir("snapshot");
    let path = dir.join("heap.pb.gz");
    snapshot.write_pprof_file(&path).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), gzipped);
    std::fs::remove_dir_all(dir).unwrap();
    assert!(snapshot.report(5).contains("snapshot_keeps"));
    drop(kept);
}

#[test]
fn a_delta_window_ends_when_the_caller_finishes_it() {
    let _serial = common::serial();
    heap_sampler::set_sample_rate(1);
    let before = snapshot_keeps(64, 4096);
    let window = DeltaWindow::start().unwrap();
    let during = window_keeps(32, 8192);
    let snapshot = window.finish().unwrap();
    let p = common::decode(&snapshot.to_pprof().unwrap());
    assert!(p.duration_nanos > 0);
    assert_eq!(common::string(&p, p.default_sample_type), "alloc_space");
    let in_window = common::at_function(&p, "window_keeps");
    assert!(in_window.alloc_space >= 32 * 8192, "{in_window:?}");
    // Allocated before the window began: nothing of it is counted as allocated during it.
    assert_eq!(common::at_function(&p, "snapshot_keeps").alloc_space, 0);
    // Its sites and report lead with what was allocated during it, not with what was held before it (here
    // the earlier site holds as much as the window allocated, in more blocks).
    let sites = snapshot.sites();
    assert!(
        sites[0].function.contains("window_keeps"),
        "largest allocated first: {sites:#?}"
    );
    assert!(
        sites
            .windows(2)
            .all(|w| (w[0].alloc_space, w[0].inuse_space) >= (w[1].alloc_space, w[1].inuse_space)),
        "{sites:#?}"
    );
    drop((before, during));
}

/// A writer that refuses every byte.
struct Refusing;

impl Write for Refusing {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::other("the collector went away"))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_failing_writer_is_named_as_the_cause() {
    let _serial = common::serial();
    heap_sampler::set_sample_rate(1);
    let snapshot = HeapSnapshot::current().unwrap();
    match snapshot.write_pprof(Refusing) {
        Err(error @ Error::Output(_)) => {
            let message = error.to_string();
            assert!(message.contains("the collector went away"), "{message}");
        }
        other => panic!("a refusing writer must give Error::Output: {other:?}"),
    }
}

#[test]
fn snapshots_and_windows_move_between_threads() {
    fn shareable<T: Send + Sync>() {}
    shareable::<HeapSnapshot>();
    shareable::<DeltaWindow>();
}
