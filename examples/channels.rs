//! The classic puzzle: two lines that create identical bounded queues are charged different amounts.
//!
//! `foo` creates four queues with `sync_channel`; the first two have the same entry type and capacity. After a
//! few thousand calls, with every queue kept alive, the example writes `channels.pb.gz` and prints the text
//! report, each space figure with its standard error. The two identical lines differ by sampling noise, about
//! sqrt(2 · rate / bytes) relative to their size, and converge as more is allocated; the example ends by
//! comparing them, their difference against its own standard error. Run with `cargo run --release --example channels [calls] [seed]`;
//! the seed (default 1) fixes which allocations are sampled, so a run can be repeated exactly.

use std::alloc::System;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use heap_sampler::{HeapSnapshot, SamplingAllocator, Site};

#[global_allocator]
static ALLOC: SamplingAllocator<System> = SamplingAllocator::new(System);

/// The four queues `foo` creates, kept alive by the caller.
struct Queues {
    _a: (SyncSender<[u8; 64]>, Receiver<[u8; 64]>),
    _b: (SyncSender<[u8; 64]>, Receiver<[u8; 64]>),
    _c: (SyncSender<[u8; 256]>, Receiver<[u8; 256]>),
    _d: (SyncSender<u64>, Receiver<u64>),
}

#[inline(never)]
fn foo() -> Queues {
    let a = sync_channel::<[u8; 64]>(100);
    let b = sync_channel::<[u8; 64]>(100);
    let c = sync_channel::<[u8; 256]>(100);
    let d = sync_channel::<u64>(1000);
    Queues {
        _a: a,
        _b: b,
        _c: c,
        _d: d,
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let calls: usize = match std::env::args().nth(1) {
        Some(arg) => arg
            .parse()
            .map_err(|e| format!("calls must be a whole number, got {arg:?}: {e}"))?,
        None => 5_000,
    };
    let seed: u64 = match std::env::args().nth(2) {
        Some(arg) => arg
            .parse()
            .map_err(|e| format!("seed must be a whole number, got {arg:?}: {e}"))?,
        None => 1,
    };
    heap_sampler::set_seed(seed);
    let kept: Vec<Queues> = (0..calls).map(|_| foo()).collect();
    let path = "channels.pb.gz";
    // One snapshot: the file, the report and the comparison below read the same numbers.
    let snapshot = HeapSnapshot::current()?;
    snapshot.write_pprof_file(path)?;
    println!("{}", snapshot.report(10));
    println!(
        "kept {} x 4 queues; wrote {path}: go tool pprof -list 'channels::foo' {path}",
        kept.len()
    );
    compare_identical_lines(&snapshot.sites());
    Ok(())
}

/// Answers the puzzle from the profile's own error bars: `foo`'s first two lines allocate identically, so
/// their difference is noise unless it is large against its standard error, the square root of the two
/// lines' summed variances (independent estimates).
fn compare_identical_lines(sites: &[Site]) {
    let mut lines: Vec<&Site> = sites
        .iter()
        .filter(|s| s.function.ends_with("foo"))
        .collect();
    lines.sort_by_key(|s| s.line);
    let [a, b, ..] = lines[..] else {
        println!(
            "fewer than two of foo's lines were sampled: allocate more (a larger first argument)"
        );
        return;
    };
    let mib = |bytes: f64| bytes / f64::from(1 << 20);
    let difference = (a.inuse_space - b.inuse_space) as f64;
    let stderr = a.inuse_space_stderr.hypot(b.inuse_space_stderr);
    let z = if stderr > 0.0 {
        difference / stderr
    } else {
        0.0
    };
    println!(
        "lines {} and {} allocate identically: {:.2} ± {:.2} MiB and {:.2} ± {:.2} MiB in use",
        a.line,
        b.line,
        mib(a.inuse_space as f64),
        mib(a.inuse_space_stderr),
        mib(b.inuse_space as f64),
        mib(b.inuse_space_stderr),
    );
    println!(
        "their difference, {:.2} ± {:.2} MiB, is {:.1} standard errors: {}",
        mib(difference),
        mib(stderr),
        z.abs(),
        if z.abs() < 2.0 {
            "sampling noise, not a difference in the program"
        } else {
            "more than sampling noise usually gives (|z| > 2)"
        }
    );
}
