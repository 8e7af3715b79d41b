//! The process constructor: reads the environment once, before `main`, and applies it.
//!
//! Never from inside an allocation, where reading the environment could wait for a lock that `setenv` holds
//! while it allocates. The constructor runs inside the profiler guard: what it allocates is not sampled.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

use super::parse::Config;
use super::{autodump, warn};
use crate::env::DUMP_DIR;
use crate::sampler::Guard;

// The process's constructors: `.init_array` on ELF systems, `__mod_init_func` on Darwin.
#[used]
#[cfg_attr(not(target_vendor = "apple"), unsafe(link_section = ".init_array"))]
#[cfg_attr(
    target_vendor = "apple",
    unsafe(link_section = "__DATA,__mod_init_func")
)]
static CONFIGURE: extern "C" fn() = configure;

/// The process constructor: reads the environment once and applies it.
extern "C" fn configure() {
    // First, outside the guard, where the probes' allocations reach the sampler: from here on the
    // profiler's frames are known by address, and whether the allocator is installed is known.
    crate::stack::path::learn();
    let Some(guard) = Guard::enter() else { return };
    // Before any thread but this one exists: no fork can find a profiler lock held from here on.
    crate::fork::register_fork_handlers();
    crate::stack::read_bounds_early(&guard);
    let config = Config::parse(getenv, warn);
    if let Some(rate) = config.rate {
        crate::sampler::set_sample_rate(rate);
    }
    if let Some(symbolize) = config.symbolize {
        crate::symbolize::symbols::set_symbolize(symbolize);
    }
    if let Some(path) = config.exit_dump {
        autodump::dump_at_exit_to(path);
    }
    if let Some(periodic) = config.periodic {
        let started = std::thread::Builder::new()
            .name("heap-sampler-dump".into())
            .spawn(move || autodump::dump_periodically(&periodic));
        if let Err(e) = started {
            warn(format!(
                "{DUMP_DIR} is set, but the thread for periodic profiles cannot start: {e}; no periodic \
                 profiles"
            ));
        }
    }
}

/// The environment variable `name`, read with `getenv` (no lock, unlike `std::env::var`, which waits for
/// the environment lock).
fn getenv(name: &str) -> Option<OsString> {
    let name = CString::new(name).ok()?;
    // SAFETY: `name` is a NUL-terminated string. `getenv` returns null or a pointer to a NUL-terminated
    // string in the environment, copied at once; before `main`, no thread of the program can be changing
    // the environment meanwhile.
    unsafe {
        let value = libc::getenv(name.as_ptr());
        if value.is_null() {
            return None;
        }
        Some(OsStr::from_bytes(CStr::from_ptr(value).to_bytes()).to_owned())
    }
}
