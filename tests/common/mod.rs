//! Helpers shared by the integration tests, by purpose: reading profiles ([`query`]), checking the pprof
//! contract ([`contract`]), running a test in a child process ([`child`]), requests to HTTP servers
//! ([`client`]), driving the tools that read profiles and binaries ([`tools`]), the sampler's statistics
//! ([`stats`]), what a test needs around it ([`harness`]), and the channels puzzle's allocations
//! ([`channels`]). Everything is re-exported here, so that a test calls `common::profile()` whichever module
//! holds it; [`recurse`] is defined here, as tests find its samples by its path, `<test>::common::recurse`.
#![allow(dead_code)] // Each test binary uses a different subset.

pub mod channels;
mod child;
mod client;
mod contract;
mod harness;
mod query;
mod stats;
mod tools;

// As with the helpers, each test binary uses a different subset of the re-exports.
#[allow(unused_imports)]
pub use self::{child::*, client::*, contract::*, harness::*, query::*, stats::*, tools::*};

/// Allocates a block of `size` bytes (kept in `kept`) after `depth` nested calls of itself: each depth is a
/// distinct stack through `recurse`.
#[inline(never)]
pub fn recurse(depth: usize, size: usize, kept: &mut Vec<Vec<u8>>) {
    if depth == 0 {
        kept.push(std::hint::black_box(vec![3u8; size]));
    } else {
        recurse(std::hint::black_box(depth - 1), size, kept);
    }
    std::hint::black_box(&kept);
}
