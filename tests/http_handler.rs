//! The framework-agnostic `/debug/pprof` handler, called directly: default sample types of heap and allocs,
//! the text report, folded stacks, delta profiles, the profile at the peak, and the answers to bad requests. Exact mode (rate 1), so
//! the numbers are exact.

mod common;

use std::alloc::System;

use heap_sampler::SamplingAllocator;
use heap_sampler::http::{Response, handle};

#[global_allocator]
static ALLOC: SamplingAllocator<System> = SamplingAllocator::new(System);

/// Holds 100 blocks of 10,000 bytes: 1,000,000 bytes in use.
#[inline(never)]
fn hold_blocks(kept: &mut Vec<Vec<u8>>) {
    for _ in 0..100 {
        kept.push(std::hint::black_box(vec![1u8; 10_000]));
    }
}

/// Allocates and frees 400 blocks of 5,000 bytes: 2,000,000 bytes allocated, none in use.
#[inline(never)]
fn churn() {
    for _ in 0..400 {
        std::hint::black_box(vec![2u8; 5_000]);
    }
}

/// Sets exact mode and runs `hold_blocks` and `churn` once per test binary; returns what is held.
fn workload() -> &'static [Vec<u8>] {
    static KEPT: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    KEPT.get_or_init(|| {
        heap_sampler::set_sample_rate(1);
        let mut kept = Vec::with_capacity(100);
        hold_blocks(&mut kept);
        churn();
        kept
    })
}

const MIB: usize = 1 << 20;
const PEAK_BLOCKS: usize = 8;

/// Holds 8 blocks of 1 MiB, never touched, in a vector of 8 × 24 bytes: far above anything else this binary
/// holds, so the highest in-use bytes of the process.
#[inline(never)]
fn hold_for_peak() -> Vec<Vec<u8>> {
    (0..PEAK_BLOCKS).map(|_| Vec::with_capacity(MIB)).collect()
}

fn text(response: &Response) -> &str {
    std::str::from_utf8(&response.body).expect("UTF-8 body")
}

fn default_sample_type(p: &heap_sampler::proto::Profile) -> &str {
    common::string(p, p.default_sample_type)
}

#[test]
fn heap_and_allocs_serve_the_profile_with_their_default_views() {
    let _serial = common::serial();
    workload();
    let heap = handle("/debug/pprof/heap", "");
    assert_eq!(heap.status, 200);
    assert_eq!(
        heap.headers(),
        [
            ("Content-Type", "application/octet-stream"),
            ("X-Content-Type-Options", "nosniff"),
            ("Content-Disposition", "attachment; filename=\"heap\""),
        ]
    );
    let p = common::decode(&heap.body);
    common::check_contract(&p);
    assert_eq!(default_sample_type(&p), "inuse_space");
    let held = common::at_function(&p, "hold_blocks");
    assert_eq!((held.inuse_objects, held.inuse_space), (100, 1_000_000));
    let churned = common::at_function(&p, "churn");
    assert_eq!(
        (churned.alloc_objects, churned.alloc_space),
        (400, 2_000_000)
    );
    assert_eq!((churned.inuse_objects, churned.inuse_space), (0, 0));

    // Mounted under another prefix, the last segment still names the profile.
    let allocs = handle("/admin/allocs", "gc=1");
    assert_eq!(
        allocs.content_disposition.as_deref(),
        Some("attachment; filename=\"allocs\"")
    );
    let p = common::decode(&allocs.body);
    assert_eq!(default_sample_type(&p), "alloc_space");
    assert_eq!(common::at_function(&p, "churn").alloc_space, 2_000_000);

    let p = common::decode(&handle("/debug/pprof/heap", "sample_index=inuse_objects").body);
    assert_eq!(default_sample_type(&p), "inuse_objects");
}

#[test]
fn debug_1_is_the_top_report_ordered_by_the_view() {
    let _serial = common::serial();
    workload();
    let position = |report: &str, function: &str| {
        report
            .lines()
            .position(|l| l.contains(function))
            .unwrap_or_else(|| panic!("{function} not in the report:\n{report}"))
    };
    let heap = handle("/debug/pprof/heap", "debug=1");
    assert_eq!(
        (heap.status, heap.content_type),
        (200, "text/plain; charset=utf-8")
    );
    let report = text(&heap);
    assert!(
        report.starts_with("heap profile: sample rate 1 B"),
        "{report}"
    );
    let line = report.lines().nth(position(report, "hold_blocks")).unwrap();
    assert_eq!(
        line.split_whitespace().take(7).collect::<Vec<_>>(),
        [
            "976.56",
            "KiB",
            "100",
            "976.56",
            "KiB",
            "100",
            "http_handler::hold_blocks"
        ],
        "{report}"
    );
    assert!(position(report, "hold_blocks") < position(report, "churn"));
    // allocs ranks by alloc_space: churn's 2,000,000 bytes come first.
    let allocs = handle("/debug/pprof/allocs", "debug=1");
    let report = text(&allocs);
    assert!(position(report, "churn") < position(report, "hold_blocks"));
}

/// Sums the folded lines whose stack passes through `function`, checking that frames run from the
/// outermost (the test) to the innermost.
fn folded_total(folded: &str, test: &str, function: &str) -> i64 {
    folded
        .lines()
        .filter(|l| l.contains(function))
        .map(|line| {
            let (stack, value) = line.rsplit_once(' ').expect("`stack value`");
            let frames: Vec<&str> = stack.split(';').collect();
            let outer = frames.iter().position(|f| f.ends_with(test));
            let inner = frames.iter().position(|f| f.ends_with(function));
            assert!(
                outer.is_some() && outer < inner,
                "{test} before {function}, outermost first: {line}"
            );
            value.parse::<i64>().expect("a whole value")
        })
        .sum()
}

#[test]
fn folded_stacks_feed_flamegraph_tools() {
    let _serial = common::serial();
    workload();
    let heap = handle("/debug/pprof/heap", "format=folded");
    assert_eq!(
        (heap.status, heap.content_type),
        (200, "text/plain; charset=utf-8")
    );
    let folded = text(&heap);
    assert!(
        folded.lines().all(|l| l
            .rsplit_once(' ')
            .is_some_and(|(s, v)| !s.is_empty() && v.parse::<u64>().is_ok_and(|v| v > 0))),
        "every line is `frames value` with a positive value:\n{folded}"
    );
    // `workload` ran in whichever test came first: its stacks pass through `workload`, not this test.
    assert_eq!(folded_total(folded, "workload", "hold_blocks"), 1_000_000);
    assert_eq!(
        folded_total(folded, "workload", "churn"),
        0,
        "nothing in use"
    );
    let allocs = handle("/debug/pprof/allocs", "format=folded");
    assert_eq!(folded_total(text(&allocs), "workload", "churn"), 2_000_000);
    let objects = handle(
        "/debug/pprof/heap",
        "format=folded&sample_index=inuse_objects",
    );
    assert_eq!(folded_total(text(&objects), "workload", "hold_blocks"), 100);

    // The library call gives the same lines.
    let direct = heap_sampler::folded_stacks(heap_sampler::SampleType::InuseSpace).unwrap();
    assert_eq!(folded_total(&direct, "workload", "hold_blocks"), 1_000_000);
}

#[test]
fn a_delta_counts_only_allocations_in_its_window() {
    let _serial = common::serial();
    workload();
    // Nothing allocates at the workload's sites during the window: their alloc_* deltas are zero, and
    // what they hold is still shown.
    let delta = handle("/debug/pprof/allocs", "seconds=1");
    assert_eq!(delta.status, 200);
    assert_eq!(
        delta.content_disposition.as_deref(),
        Some("attachment; filename=\"allocs-delta\"")
    );
    let p = common::decode(&delta.body);
    assert_eq!(default_sample_type(&p), "alloc_space");
    assert!(
        p.duration_nanos >= 1_000_000_000,
        "duration_nanos is the window: {}",
        p.duration_nanos
    );
    let held = common::at_function(&p, "hold_blocks");
    assert_eq!(
        (
            held.alloc_objects,
            held.alloc_space,
            held.inuse_objects,
            held.inuse_space
        ),
        (0, 0, 100, 1_000_000)
    );
    // The `bytes` label stays the allocation size where nothing was allocated in the window.
    let sizes: Vec<i64> = p
        .sample
        .iter()
        .flat_map(|s| &s.label)
        .filter(|l| common::string(&p, l.key) == "bytes")
        .map(|l| l.num)
        .collect();
    assert!(
        sizes.contains(&10_000),
        "the held blocks keep their size: {sizes:?}"
    );
    assert_eq!(
        common::at_function(&p, "churn"),
        common::Values::default(),
        "nothing allocated, nothing held: no sample"
    );
}

/// The peak is copied at the first free after the highest in-use bytes, with every block still held: the
/// peak profile shows them to the byte (exact mode) after they were freed, the heap profile no longer.
#[test]
fn peak_serves_what_was_held_at_the_highest_in_use_bytes() {
    let _serial = common::serial();
    workload();
    drop(std::hint::black_box(hold_for_peak()));
    let held_at_peak = (PEAK_BLOCKS * MIB + PEAK_BLOCKS * size_of::<Vec<u8>>()) as i64;

    let peak = handle("/debug/pprof/peak", "");
    assert_eq!(peak.status, 200, "{}", String::from_utf8_lossy(&peak.body));
    assert_eq!(
        peak.content_disposition.as_deref(),
        Some("attachment; filename=\"peak\"")
    );
    let p = common::decode(&peak.body);
    common::check_contract(&p);
    assert_eq!(default_sample_type(&p), "inuse_space");
    let at_peak = common::at_function(&p, "hold_for_peak");
    assert_eq!(
        (at_peak.inuse_objects, at_peak.inuse_space),
        (PEAK_BLOCKS as i64 + 1, held_at_peak)
    );
    let now = common::at_function(&common::profile(), "hold_for_peak");
    assert_eq!((now.inuse_objects, now.inuse_space), (0, 0));

    let allocs_view = handle("/debug/pprof/peak", "sample_index=alloc_space");
    assert_eq!(
        default_sample_type(&common::decode(&allocs_view.body)),
        "alloc_space"
    );
    let top = handle("/debug/pprof/peak", "debug=1");
    let top = text(&top);
    assert!(
        top.starts_with("peak heap profile: ")
            && top.contains("\npeak: ")
            && top.contains("\nheap profile: sample rate")
            && top.contains("hold_for_peak"),
        "what the peak shows, when it was, then its sites: {top}"
    );
}

#[test]
fn bad_requests_get_a_status_and_a_message() {
    let _serial = common::serial();
    workload();
    for (path, query, status, message) in [
        (
            "/debug/pprof/goroutine",
            "",
            404,
            "unknown profile \"goroutine\": this server has heap, allocs and peak",
        ),
        (
            "/debug/pprof/allocs",
            "seconds=soon",
            400,
            "invalid value for \"seconds\" - must be a positive integer",
        ),
        (
            "/debug/pprof/heap",
            "debug=1&seconds=5",
            400,
            "seconds and debug params are incompatible",
        ),
        (
            "/debug/pprof/peak",
            "seconds=5",
            400,
            "the peak profile has no delta: it is what was in use at the highest in-use bytes so far; ask \
             heap or allocs with seconds for a window",
        ),
        (
            "/debug/pprof/heap",
            "sample_index=bytes",
            400,
            "invalid value for \"sample_index\" - unknown sample type \"bytes\"; use alloc_objects, \
             alloc_space, inuse_objects or inuse_space",
        ),
    ] {
        let response = handle(path, query);
        assert_eq!(
            (response.status, response.content_type, text(&response)),
            (
                status,
                "text/plain; charset=utf-8",
                format!("{message}\n").as_str()
            ),
            "{path}?{query}"
        );
    }
    let svg = handle("/debug/pprof/heap", "format=svg");
    if cfg!(feature = "flamegraph") {
        assert_eq!((svg.status, svg.content_type), (200, "image/svg+xml"));
    } else {
        assert_eq!(svg.status, 501);
        assert!(
            text(&svg).contains("`flamegraph` feature"),
            "{}",
            text(&svg)
        );
    }
}

#[test]
fn the_index_links_every_profile() {
    let index = handle("/debug/pprof/", "");
    assert_eq!(
        (index.status, index.content_type),
        (200, "text/html; charset=utf-8")
    );
    let html = text(&index);
    for link in [
        "href=\"heap\"",
        "href=\"allocs?debug=1\"",
        "href=\"heap?format=svg\"",
        "href=\"peak\"",
    ] {
        assert!(html.contains(link), "{link} in:\n{html}");
    }
}
