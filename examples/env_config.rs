//! A program that installs the sampling allocator and calls nothing else of heap_sampler: whoever runs it
//! configures profiling through the environment, without rebuilding it.
//!
//! ```sh
//! HEAP_SAMPLER_RATE=64KiB HEAP_SAMPLER_DUMP_AT_EXIT=env_config.pb.gz cargo run --example env_config
//! go tool pprof -top env_config.pb.gz                          # inuse_space: the cache, held to the end
//! go tool pprof -sample_index=alloc_space -top env_config.pb.gz   # the requests' churn shows too
//! ```
//!
//! Arguments: cache entries (default 4096) and requests (default 8192), each 16 KiB.

use std::alloc::System;
use std::sync::OnceLock;

use heap_sampler::SamplingAllocator;

#[global_allocator]
static ALLOC: SamplingAllocator<System> = SamplingAllocator::new(System);

const ENTRY: usize = 16 * 1024;

/// Held until the process exits, like a service's cache.
static CACHE: OnceLock<Vec<Vec<u8>>> = OnceLock::new();

#[inline(never)]
fn build_cache(entries: usize) -> Vec<Vec<u8>> {
    (0..entries).map(|i| vec![i as u8; ENTRY]).collect()
}

/// Allocates a response buffer per request and frees it at once: allocation work, nothing held.
#[inline(never)]
fn serve_requests(requests: usize) -> u64 {
    (0..requests)
        .map(|i| {
            let response = std::hint::black_box(vec![i as u8; ENTRY]);
            u64::from(response[ENTRY - 1])
        })
        .sum()
}

fn main() -> Result<(), String> {
    let arg = |n: usize, default: usize| match std::env::args().nth(n) {
        Some(arg) => arg
            .parse()
            .map_err(|e| format!("argument {n} must be a whole number, got {arg:?}: {e}")),
        None => Ok(default),
    };
    let (entries, requests) = (arg(1, 4096)?, arg(2, 8192)?);
    let cache = CACHE.get_or_init(|| build_cache(entries));
    let checksum = serve_requests(requests);
    println!(
        "cached {} entries of {ENTRY} bytes, served {requests} requests (checksum {checksum})",
        cache.len()
    );
    Ok(())
}
