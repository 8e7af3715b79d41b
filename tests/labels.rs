//! Labels: allocations sampled inside a scope carry its key/value labels as pprof string labels, per thread,
//! nested, across `.await` and across threads when carried; `go tool pprof -tags` and `-tagfocus` read them.

mod common;

use std::alloc::System;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use heap_sampler::{LabelSet, SamplingAllocator};

#[global_allocator]
static ALLOC: SamplingAllocator<System> = SamplingAllocator::new(System);

/// `count` blocks of `size` bytes, kept (the holding vector is allocated once, `count` × 24 bytes).
#[inline(never)]
fn blocks(count: usize, size: usize) -> Vec<Vec<u8>> {
    (0..count).map(|_| Vec::with_capacity(size)).collect()
}

/// Bytes `blocks(count, size)` allocates: the blocks and the vector holding them.
fn blocks_bytes(count: usize, size: usize) -> i64 {
    (count * size + count * size_of::<Vec<u8>>()) as i64
}

/// Rate 32 KiB, 8 KiB blocks: p = 1 − e^(−1/4) = 0.221. Tenant a allocates 8,192 blocks (64 MiB) of which a
/// nested scope (component=cache) allocates 2,048 (16 MiB); tenant b 4,096 (32 MiB), in the guard form.
/// Each label's in-use estimate is checked at 5 σ, σ = sqrt(n · s² · (1 − p) / p) (relative: 2.1 % for
/// tenant a, 2.9 % for b, 4.1 % for the cache), with a fixed seed; the holding vectors (p ≥ 0.997) add
/// next to nothing to σ and are counted in the truth. Unlabeled allocations carry no label.
#[test]
fn each_label_holds_its_scope_within_the_sampling_bound() {
    let _serial = common::serial();
    const RATE: usize = 32 << 10;
    const SIZE: usize = 8 << 10;
    heap_sampler::set_sample_rate(RATE);
    heap_sampler::set_seed(7);
    let (a, cache) = heap_sampler::with_labels(&[("tenant", "a")], || {
        let a = blocks(6144, SIZE);
        let cache = heap_sampler::with_labels(&[("component", "cache")], || blocks(2048, SIZE));
        (a, cache)
    });
    let b = {
        let _scope = heap_sampler::enter_labels(&[("tenant", "b")]);
        assert_eq!(
            LabelSet::current().pairs(),
            [("tenant".to_string(), "b".to_string())]
        );
        blocks(4096, SIZE)
    };
    assert_eq!(LabelSet::current(), LabelSet::EMPTY, "the guard restored");
    let unlabeled = blocks(4096, SIZE);

    let p = common::profile();
    common::check_contract(&p);
    let tenants = common::by_label(&p, "tenant");
    let components = common::by_label(&p, "component");
    let sigma = |count| common::sigma_bytes(SIZE, count, RATE);
    for (what, estimate, truth, sigma) in [
        (
            "tenant=a",
            tenants["a"].inuse_space,
            blocks_bytes(6144, SIZE) + blocks_bytes(2048, SIZE),
            sigma(8192),
        ),
        (
            "tenant=b",
            tenants["b"].inuse_space,
            blocks_bytes(4096, SIZE),
            sigma(4096),
        ),
        (
            "component=cache",
            components["cache"].inuse_space,
            blocks_bytes(2048, SIZE),
            sigma(2048),
        ),
    ] {
        let error = (estimate - truth) as f64;
        assert!(
            error.abs() < 5.0 * sigma,
            "{what}: estimate {estimate} vs {truth} bytes, {:.1} σ",
            error / sigma
        );
    }
    // The nested scope inherits the outer labels.
    for sample in &p.sample {
        let labels = common::labels_of(&p, sample);
        if labels.iter().any(|&(k, _)| k == "component") {
            assert!(labels.contains(&("tenant", "a")), "{labels:?}");
        }
    }
    // The unlabeled blocks are in the profile without labels (other tests' `blocks` are freed).
    let unlabeled_only = heap_sampler::proto::Profile {
        sample: p
            .sample
            .iter()
            .filter(|s| common::labels_of(&p, s).is_empty())
            .cloned()
            .collect(),
        ..p.clone()
    };
    let unlabeled_estimate = common::at_function(&unlabeled_only, "blocks").inuse_space;
    let (truth, sigma) = (blocks_bytes(4096, SIZE), sigma(4096));
    assert!(
        ((unlabeled_estimate - truth) as f64).abs() < 5.0 * sigma,
        "unlabeled: {unlabeled_estimate} vs {truth}"
    );
    drop((a, cache, b, unlabeled));
}

/// Exact mode: every allocation weighs exactly 1, so each label's in-use is exactly what its scope still
/// holds, and exactly 0 after the frees; `alloc_*` keep what was allocated. `go tool pprof -tags` lists the
/// labels, and `-tagfocus=tenant=a` keeps exactly tenant a's bytes.
#[test]
fn exact_mode_labels_are_exact_and_return_to_zero() {
    let _serial = common::serial();
    heap_sampler::set_sample_rate(1);
    let a = heap_sampler::with_labels(&[("tenant", "exact-a")], || blocks(100, 1000));
    let b = {
        let _scope = heap_sampler::enter_labels(&[("tenant", "exact-b")]);
        blocks(50, 3000)
    };
    let held = heap_sampler::dump_profile().unwrap();
    let p = common::decode(&held);
    common::check_contract(&p);
    let tenants = common::by_label(&p, "tenant");
    assert_eq!(
        (
            tenants["exact-a"].inuse_space,
            tenants["exact-a"].inuse_objects
        ),
        (blocks_bytes(100, 1000), 101)
    );
    assert_eq!(
        (
            tenants["exact-b"].inuse_space,
            tenants["exact-b"].inuse_objects
        ),
        (blocks_bytes(50, 3000), 51)
    );

    if let Some(go) = common::go() {
        let dir = common::temp_dir("labels");
        let path = dir.join("held.pb.gz");
        std::fs::write(&path, &held).unwrap();
        let path = path.to_str().unwrap();
        let tags = common::pprof(&go, &["-tags", "-sample_index=inuse_space", path]);
        assert!(
            tags.contains("tenant") && tags.contains("exact-a") && tags.contains("exact-b"),
            "{tags}"
        );
        let focused = common::pprof(
            &go,
            &[
                "-top",
                "-unit=B",
                "-sample_index=inuse_space",
                "-tagfocus=tenant=exact-a",
                path,
            ],
        );
        let expected = format!("accounting for {}B,", blocks_bytes(100, 1000));
        assert!(focused.contains(&expected), "{expected} in:\n{focused}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    drop((a, b));
    let p = common::profile();
    let tenants = common::by_label(&p, "tenant");
    for (tenant, allocated) in [
        ("exact-a", blocks_bytes(100, 1000)),
        ("exact-b", blocks_bytes(50, 3000)),
    ] {
        let v = tenants[tenant];
        assert_eq!((v.inuse_space, v.inuse_objects), (0, 0), "{tenant}");
        assert_eq!(v.alloc_space, allocated, "{tenant}");
    }
}

/// Yields once: `Pending` on the first poll, `Ready` on the second.
struct YieldNow(bool);

impl Future for YieldNow {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        if std::mem::replace(&mut self.0, true) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// Allocates `rounds` blocks of `size` bytes, yielding after each; returns them.
async fn task(rounds: usize, size: usize) -> Vec<Vec<u8>> {
    let mut kept = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        kept.push(Vec::with_capacity(size));
        YieldNow(false).await;
    }
    kept
}

/// Exact mode. Two labeled tasks interleave on one thread (polled alternately, with an unlabeled allocation
/// between polls), and a third moves to another thread halfway: each label holds exactly its task's bytes,
/// and nothing else; a `LabelSet` carried into a spawned thread labels it there.
#[test]
fn labels_follow_tasks_across_await_and_threads() {
    let _serial = common::serial();
    heap_sampler::set_sample_rate(1);
    let mut one = Box::pin(heap_sampler::labeled(&[("task", "one")], task(5, 1000)));
    let mut two = Box::pin(LabelSet::new(&[("task", "two")]).instrument(task(3, 7000)));
    let mut cx = Context::from_waker(Waker::noop());
    let mut between = Vec::new();
    let (mut out_one, mut out_two) = (None, None);
    while out_one.is_none() || out_two.is_none() {
        if out_one.is_none()
            && let Poll::Ready(v) = one.as_mut().poll(&mut cx)
        {
            out_one = Some(v);
        }
        between.push(Vec::<u8>::with_capacity(100));
        if out_two.is_none()
            && let Poll::Ready(v) = two.as_mut().poll(&mut cx)
        {
            out_two = Some(v);
        }
    }
    assert_eq!(LabelSet::current(), LabelSet::EMPTY);

    let mut three = Box::pin(heap_sampler::labeled(&[("task", "three")], task(4, 5000)));
    assert!(three.as_mut().poll(&mut cx).is_pending());
    let carried = heap_sampler::with_labels(&[("task", "spawned")], LabelSet::current);
    let (out_three, spawned) = std::thread::spawn(move || {
        let mut cx = Context::from_waker(Waker::noop());
        let out = loop {
            if let Poll::Ready(v) = three.as_mut().poll(&mut cx) {
                break v;
            }
        };
        (out, carried.scope(|| blocks(10, 2000)))
    })
    .join()
    .unwrap();

    let p = common::profile();
    let tasks = common::by_label(&p, "task");
    let task_bytes = |rounds: usize, size: usize| (rounds * size + rounds * 24) as i64;
    for (label, bytes, objects) in [
        ("one", task_bytes(5, 1000), 6),
        ("two", task_bytes(3, 7000), 4),
        ("three", task_bytes(4, 5000), 5),
        ("spawned", blocks_bytes(10, 2000), 11),
    ] {
        let v = tasks[label];
        assert_eq!(
            (v.inuse_space, v.inuse_objects),
            (bytes, objects),
            "{label}"
        );
    }
    drop((out_one, out_two, out_three, spawned, between));
}

/// Past the cap on label sets, a new set is not kept: its scope's allocations are sampled without labels and
/// counted in `Stats::dropped_labels`; sets already kept still work.
#[test]
fn label_sets_past_the_cap_are_dropped_and_counted() {
    let _serial = common::serial();
    heap_sampler::set_sample_rate(1);
    let kept = LabelSet::new(&[("cap", "kept")]);
    heap_sampler::set_max_label_sets(heap_sampler::stats().label_sets);
    let over = LabelSet::new(&[("cap", "over")]);
    assert!(over.pairs().is_empty());
    let before = heap_sampler::stats();
    let (x, y) = (
        over.scope(|| blocks(10, 100)),
        kept.scope(|| blocks(10, 100)),
    );
    let after = heap_sampler::stats();
    heap_sampler::set_max_label_sets(heap_sampler::DEFAULT_MAX_LABEL_SETS);
    assert_eq!(after.dropped_labels - before.dropped_labels, 11);
    assert_eq!(after.label_sets, before.label_sets);
    let p = common::profile();
    let caps = common::by_label(&p, "cap");
    assert_eq!(caps.keys().collect::<Vec<_>>(), ["kept"]);
    assert_eq!(caps["kept"].inuse_space, blocks_bytes(10, 100));
    drop((x, y));
}
