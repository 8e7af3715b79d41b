//! A service that keeps allocating, with the `/debug/pprof` endpoints on the built-in server:
//!
//! ```sh
//! cargo run --release --features server,flamegraph --example serve
//! go tool pprof -top http://127.0.0.1:6060/debug/pprof/heap          # the session cache, held
//! go tool pprof -top http://127.0.0.1:6060/debug/pprof/allocs?seconds=5  # page rendering, churned
//! curl -o heap.svg 'http://127.0.0.1:6060/debug/pprof/heap?format=svg'
//! ```
//!
//! Arguments: the address (default `127.0.0.1:6060`) and how many seconds to run (default 300).

use std::alloc::System;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use heap_sampler::SamplingAllocator;

#[global_allocator]
static ALLOC: SamplingAllocator<System> = SamplingAllocator::new(System);

/// Sessions kept: 20,000 of 4 KiB, about 80 MiB once warm.
const SESSIONS: u64 = 20_000;

/// Opens `count` sessions from `next` on, closing the oldest beyond [`SESSIONS`].
#[inline(never)]
fn open_sessions(sessions: &mut HashMap<u64, Vec<u8>>, next: u64, count: u64) {
    for id in next..next + count {
        sessions.insert(id, vec![id as u8; 4096]);
        if id >= SESSIONS {
            sessions.remove(&(id - SESSIONS));
        }
    }
}

/// Renders a page of 8–12 KiB and drops it: allocation work, nothing held.
#[inline(never)]
fn render_page(id: u64) -> usize {
    let body = "x".repeat(8192 + (id % 4096) as usize);
    let page = format!("<html><body>{body}</body></html>");
    page.len()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:6060".into());
    let seconds: u64 = match std::env::args().nth(2) {
        Some(arg) => arg
            .parse()
            .map_err(|e| format!("seconds must be a whole number, got {arg:?}: {e}"))?,
        None => 300,
    };
    let server = heap_sampler::serve(&addr)?;
    println!(
        "serving for {seconds} s: go tool pprof http://{}/debug/pprof/heap",
        server.addr()
    );
    let mut sessions = HashMap::new();
    let (mut next, mut served) = (0u64, 0usize);
    let end = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < end {
        open_sessions(&mut sessions, next, 100);
        served += (next..next + 100).map(render_page).sum::<usize>();
        next += 100;
        std::thread::sleep(Duration::from_millis(10));
    }
    println!(
        "{} sessions open, {served} bytes of pages rendered",
        sessions.len()
    );
    server.stop();
    Ok(())
}
