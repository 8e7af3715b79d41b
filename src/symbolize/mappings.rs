//! The process's executable mappings and their build IDs (GNU build IDs on Linux, image UUIDs on Apple's
//! systems), for the profile's `Mapping` entries.

use core::sync::atomic::{AtomicUsize, Ordering::Relaxed};

#[cfg(target_vendor = "apple")]
mod dyld;
#[cfg(not(target_vendor = "apple"))]
mod proc_maps;

#[cfg(target_vendor = "apple")]
pub(crate) use dyld::read;
#[cfg(not(target_vendor = "apple"))]
pub(crate) use proc_maps::{files_lock, read};

/// One executable mapping of the process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MappingInfo {
    pub(crate) start: u64,
    pub(crate) limit: u64,
    pub(crate) file_offset: u64,
    pub(crate) path: String,
    /// Whether this is the program's executable.
    pub(crate) is_main: bool,
    /// Lowercase hex of the `.note.gnu.build-id`, or "" when the file has none or cannot be read.
    pub(crate) build_id: String,
    /// What the file's loadable segment that holds this mapping adds to a file offset to make its address in
    /// the file (`p_vaddr − p_offset`), so that [`MappingInfo::file_address`] finds symbols and debug info.
    pub(crate) vaddr_minus_offset: u64,
    /// Whether every location of the profile in this mapping was given a function name, a file, a line:
    /// set by the symbolizer, and `false` until then, so that pprof symbolizes what the profile does not
    /// name (as Go's `runtime/pprof` sets them from its lookups).
    pub(crate) has_functions: bool,
    pub(crate) has_filenames: bool,
    pub(crate) has_line_numbers: bool,
}

impl MappingInfo {
    /// Whether `address` lies in this mapping.
    pub(crate) fn contains(&self, address: u64) -> bool {
        self.start <= address && address < self.limit
    }

    /// The address in the file (as its symbol table and debug info give them) of the process address
    /// `address` in this mapping.
    pub(crate) fn file_address(&self, address: u64) -> u64 {
        address
            .wrapping_sub(self.start)
            .wrapping_add(self.file_offset)
            .wrapping_add(self.vaddr_minus_offset)
    }

    /// The path to open the mapped file by: on Linux the executable through `/proc/self/exe`, which still
    /// opens when the file was deleted or replaced after the process started.
    pub(crate) fn open_path(&self) -> &str {
        if self.is_main && cfg!(any(target_os = "linux", target_os = "android")) {
            "/proc/self/exe"
        } else {
            &self.path
        }
    }
}

/// Bytes held by the per-file cache (paths, build IDs, segments), for [`crate::Stats::profiler_bytes`].
pub(crate) fn cache_bytes() -> usize {
    CACHE_BYTES.load(Relaxed)
}

static CACHE_BYTES: AtomicUsize = AtomicUsize::new(0);
