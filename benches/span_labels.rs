//! What `HeapLabelsLayer` adds to entering and exiting a span: a tracing-subscriber registry alone against the
//! registry with the layer, for a span with a chosen field (`tenant`, so it has labels) and a span without
//! (it has none, and the layer leaves the thread's labels alone).
//!
//! Rounds time a batch of enter/exit pairs of each of the four variants, in rotating order, in one process;
//! the report gives each variant's median nanoseconds per enter/exit pair and, for each span, the median
//! [quartiles] of the per-round ratio of the layer's time to the registry's.
//!
//! `cargo bench --bench span_labels --features tracing [-- ROUNDS]` (default 31 rounds).
//!
//! Instruction counts, which do not drift: `span_labels count VARIANT PAIRS` runs one batch of `VARIANT`
//! (`registry/field`, `registry/plain`, `layer/field`, `layer/plain`), to run under callgrind with only the
//! batch collected:
//!
//! ```text
//! valgrind --tool=callgrind --toggle-collect='span_labels::enter_exit' target/release/deps/span_labels-HASH \
//!     count layer/field 100000
//! ```
//!
//! and the collected instructions divided by `PAIRS` are one pair's.

use std::alloc::System;
use std::hint::black_box;
use std::time::Instant;

use heap_sampler::SamplingAllocator;
use heap_sampler::tracing::HeapLabelsLayer;
use tracing::{Dispatch, Span};
use tracing_subscriber::layer::SubscriberExt;

#[global_allocator]
static ALLOC: SamplingAllocator<System> = SamplingAllocator::new(System);

/// Enter/exit pairs per timed batch.
const BATCH: u64 = 200_000;

/// Enters and exits `span` `pairs` times.
#[inline(never)]
fn enter_exit(span: &Span, pairs: u64) {
    for _ in 0..pairs {
        let _entered = black_box(span).enter();
    }
}

struct Variant {
    name: &'static str,
    span: Span,
}

/// The four variants, each span made under its own subscriber (a span enters and exits through the
/// subscriber that made it). The first two are the registry alone, the last two with the layer, each pair in
/// the order field, plain.
fn variants() -> Vec<Variant> {
    let spans = |dispatch: Dispatch| {
        tracing::dispatcher::with_default(&dispatch, || {
            (
                tracing::info_span!("request", tenant = "acme"),
                tracing::info_span!("work", id = 7),
            )
        })
    };
    let (registry_field, registry_plain) = spans(Dispatch::new(tracing_subscriber::registry()));
    let layer = HeapLabelsLayer::new().field("tenant");
    let (layer_field, layer_plain) =
        spans(Dispatch::new(tracing_subscriber::registry().with(layer)));
    vec![
        Variant {
            name: "registry/field",
            span: registry_field,
        },
        Variant {
            name: "registry/plain",
            span: registry_plain,
        },
        Variant {
            name: "layer/field",
            span: layer_field,
        },
        Variant {
            name: "layer/plain",
            span: layer_plain,
        },
    ]
}

/// Nanoseconds per enter/exit pair over one batch.
fn time(span: &Span) -> f64 {
    let start = Instant::now();
    enter_exit(span, BATCH);
    start.elapsed().as_nanos() as f64 / BATCH as f64
}

fn quartiles(mut values: Vec<f64>) -> [f64; 3] {
    values.sort_by(f64::total_cmp);
    let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
    [at(0.25), at(0.5), at(0.75)]
}

fn main() {
    // `cargo bench` passes `--bench` to benches without a harness.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let variants = variants();
    if args.first().map(String::as_str) == Some("count") {
        let (Some(name), Some(pairs)) = (args.get(1), args.get(2).and_then(|p| p.parse().ok()))
        else {
            eprintln!("usage: span_labels count VARIANT PAIRS");
            std::process::exit(2);
        };
        let Some(variant) = variants.iter().find(|v| v.name == name) else {
            eprintln!(
                "no variant {name}: registry/field, registry/plain, layer/field, layer/plain"
            );
            std::process::exit(2);
        };
        enter_exit(&variant.span, pairs);
        return;
    }
    let rounds: usize = args.first().and_then(|r| r.parse().ok()).unwrap_or(31);

    // Warm up each variant (thread-local stacks, caches) before timing.
    for variant in &variants {
        enter_exit(&variant.span, BATCH);
    }
    let mut times: Vec<Vec<f64>> = vec![Vec::with_capacity(rounds); variants.len()];
    for round in 0..rounds {
        for k in 0..variants.len() {
            let i = (round + k) % variants.len();
            times[i].push(time(&variants[i].span));
        }
    }

    println!(
        "span enter/exit pairs, {rounds} interleaved rounds of {BATCH} pairs per variant, ns per pair (median [quartiles]):"
    );
    for (variant, times) in variants.iter().zip(&times) {
        let [q1, median, q3] = quartiles(times.clone());
        println!("  {:<16} {median:6.1} [{q1:.1}, {q3:.1}]", variant.name);
    }
    println!("the layer's time over the registry's alone, per round (median [quartiles]):");
    for (span, registry, layer) in [("with a chosen field", 0, 2), ("without", 1, 3)] {
        let ratios: Vec<f64> = times[layer]
            .iter()
            .zip(&times[registry])
            .map(|(l, r)| l / r)
            .collect();
        let differences: Vec<f64> = times[layer]
            .iter()
            .zip(&times[registry])
            .map(|(l, r)| l - r)
            .collect();
        let [q1, median, q3] = quartiles(ratios);
        let [d1, difference, d3] = quartiles(differences);
        println!(
            "  span {span:<19} ×{median:.2} [{q1:.2}, {q3:.2}]; +{difference:.1} ns [{d1:.1}, {d3:.1}] per pair"
        );
    }
}
