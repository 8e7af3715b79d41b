//! Exports `heap_sampler::stats()` as Prometheus metrics, in the text exposition format, once a second while a
//! labeled workload runs.
//!
//! `cargo run --release --example prometheus [seconds] [file.prom]` prints the metrics to stdout every second
//! (3 seconds by default). With a file, it writes them there instead, replacing the file atomically (write,
//! then rename), the way node_exporter's textfile collector reads them; a server would return the same text
//! at `/metrics` (content type `text/plain; version=0.0.4`). Reading `stats()` is a few dozen relaxed loads
//! and never allocates, so scraping every second costs nothing measurable. At exit it writes the peak profile
//! to `peak.pb.gz`: `go tool pprof -tags peak.pb.gz` shows which tenant held the most at the peak.

use std::alloc::System;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use heap_sampler::{SamplingAllocator, Stats};

#[global_allocator]
static ALLOC: SamplingAllocator<System> = SamplingAllocator::new(System);

/// One metric: name, type, help, and its samples as (labels, value).
struct Metric {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    samples: Vec<(&'static str, u64)>,
}

fn gauge(name: &'static str, help: &'static str, value: u64) -> Metric {
    Metric {
        name,
        kind: "gauge",
        help,
        samples: vec![("", value)],
    }
}

fn counter(name: &'static str, help: &'static str, value: u64) -> Metric {
    Metric {
        name,
        kind: "counter",
        help,
        samples: vec![("", value)],
    }
}

/// The metrics of `s` in the Prometheus text exposition format (version 0.0.4): `# HELP` and `# TYPE` lines,
/// then one line per sample; counters end in `_total`, units are in the names (bytes).
fn exposition(s: &Stats) -> String {
    let metrics = [
        gauge(
            "heap_sampler_inuse_bytes",
            "Estimated bytes allocated and not yet freed (relative standard error at most sqrt(rate/bytes)).",
            s.inuse_bytes,
        ),
        gauge(
            "heap_sampler_inuse_objects",
            "Estimated objects allocated and not yet freed.",
            s.inuse_objects,
        ),
        counter(
            "heap_sampler_alloc_bytes_total",
            "Estimated bytes allocated since the program started.",
            s.alloc_bytes,
        ),
        counter(
            "heap_sampler_alloc_objects_total",
            "Estimated objects allocated since the program started.",
            s.alloc_objects,
        ),
        gauge(
            "heap_sampler_peak_inuse_bytes",
            "Highest estimated in-use bytes seen; the peak profile shows what made it up.",
            s.peak_inuse_bytes,
        ),
        gauge(
            "heap_sampler_sample_rate_bytes",
            "Mean bytes allocated between two sampled allocations.",
            s.sample_rate as u64,
        ),
        counter(
            "heap_sampler_samples_total",
            "Sampled allocations.",
            s.samples,
        ),
        gauge(
            "heap_sampler_live_samples",
            "Sampled allocations not yet freed.",
            s.live_samples as u64,
        ),
        gauge(
            "heap_sampler_buckets",
            "Buckets (distinct stacks and label sets) in the profiler's table.",
            s.buckets as u64,
        ),
        gauge(
            "heap_sampler_label_sets",
            "Distinct label sets interned.",
            s.label_sets as u64,
        ),
        gauge(
            "heap_sampler_profiler_bytes",
            "Approximate bytes of memory the profiler itself holds.",
            s.profiler_bytes as u64,
        ),
        Metric {
            name: "heap_sampler_dropped_samples_total",
            kind: "counter",
            help: "Sampled allocations recorded without their stack (bucket table full) or without their labels \
                   (label sets full); their bytes are still counted.",
            samples: vec![
                ("lost=\"stack\"", s.overflow_samples),
                ("lost=\"labels\"", s.dropped_labels),
            ],
        },
    ];
    let mut out = String::new();
    for m in &metrics {
        let _ = writeln!(out, "# HELP {} {}", m.name, m.help);
        let _ = writeln!(out, "# TYPE {} {}", m.name, m.kind);
        for (labels, value) in &m.samples {
            match *labels {
                "" => writeln!(out, "{} {value}", m.name),
                labels => writeln!(out, "{}{{{labels}}} {value}", m.name),
            }
            .expect("writing to a String");
        }
    }
    out
}

/// Allocates and frees for one round: each tenant keeps a share of buffers, the first one growing.
#[inline(never)]
fn serve(round: usize, kept: &mut Vec<Vec<u8>>) {
    for (tenant, share) in [("acme", 3), ("globex", 1)] {
        heap_sampler::with_labels(&[("tenant", tenant)], || {
            for _ in 0..share * 64 {
                kept.push(vec![round as u8; 16 << 10]);
            }
        });
    }
    if kept.len() > 4096 {
        kept.drain(..1024);
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seconds: u64 = match std::env::args().nth(1) {
        Some(arg) => arg
            .parse()
            .map_err(|e| format!("seconds must be a whole number, got {arg:?}: {e}"))?,
        None => 3,
    };
    let file = std::env::args().nth(2);
    let mut kept = Vec::new();
    let start = Instant::now();
    let mut round = 0;
    for second in 1..=seconds {
        while start.elapsed() < Duration::from_secs(second) {
            serve(round, &mut kept);
            round += 1;
            std::thread::sleep(Duration::from_millis(10));
        }
        let text = exposition(&heap_sampler::stats());
        match &file {
            Some(path) => {
                let partial = format!("{path}.partial");
                std::fs::write(&partial, &text)
                    .map_err(|e| format!("cannot write {partial}: {e}"))?;
                std::fs::rename(&partial, path)
                    .map_err(|e| format!("cannot rename {partial} to {path}: {e}"))?;
            }
            None => println!("{text}"),
        }
    }
    heap_sampler::write_peak_profile("peak.pb.gz")?;
    eprintln!("wrote peak.pb.gz: go tool pprof -tags peak.pb.gz");
    Ok(())
}
