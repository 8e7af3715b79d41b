//! What a test needs around it: running one at a time, a scratch directory, knowing whether it runs under
//! AddressSanitizer.

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

/// Tests of one binary share the global profiler: they run one at a time.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A fresh directory under the system temporary directory.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("heap-sampler-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// Whether this run is under AddressSanitizer, which slows every allocation and memory access by an unknown
/// factor, so that timings prove nothing: `.ci/run` sets `HEAP_SAMPLER_TEST_SANITIZER=address` for that run
/// (the sanitizer's runtime exports nothing a test could look up).
pub fn under_address_sanitizer() -> bool {
    std::env::var_os("HEAP_SAMPLER_TEST_SANITIZER").is_some_and(|v| v == "address")
}

/// Whether this run is under valgrind's memcheck, which runs every instruction tens of times slower: `.ci/run`
/// sets `HEAP_SAMPLER_TEST_SANITIZER=memcheck` for that run, where a test may do fewer rounds of the same
/// work (memcheck looks for invalid accesses, which one round shows as well as many).
pub fn under_memcheck() -> bool {
    std::env::var_os("HEAP_SAMPLER_TEST_SANITIZER").is_some_and(|v| v == "memcheck")
}

/// Now, in nanoseconds since the Unix epoch: the clock of a profile's `time_nanos`.
pub fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}
