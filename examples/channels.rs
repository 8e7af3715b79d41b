//! The classic puzzle: two lines that create identical bounded queues are charged different amounts.
//!
//! `foo` creates four queues with `sync_channel`; the first two have the same entry type and capacity. After a
//! few thousand calls, with every queue kept alive, the example writes `channels.pb.gz` and prints the text
//! report. The two identical lines differ by sampling noise, about sqrt(2 · rate / bytes) relative to their
//! size, and converge as more is allocated. Run with `cargo run --release --example channels [calls] [seed]`;
//! the seed (default 1) fixes which allocations are sampled, so a run can be repeated exactly.

use std::alloc::System;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use heap_sampler::SamplingAllocator;

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
    heap_sampler::write_profile(path)?;
    println!("{}", heap_sampler::report(10)?);
    println!(
        "kept {} x 4 queues; wrote {path}: go tool pprof -list 'channels::foo' {path}",
        kept.len()
    );
    Ok(())
}
