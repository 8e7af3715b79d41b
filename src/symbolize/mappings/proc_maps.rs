//! Mappings from `/proc/self/maps`, with GNU build IDs and segments read from each ELF file once.

use std::collections::HashMap;
use std::fs::File;

use core::sync::atomic::Ordering::Relaxed;

use object::{Object, ObjectSegment};

use super::{CACHE_BYTES, MappingInfo};
use crate::lock::{AnyLock, Lock, Rank};

/// What is read once per file: its build ID and its executable loadable segments (`p_offset`, `p_vaddr`,
/// `p_filesz`).
#[derive(Clone, Debug, Default)]
struct FileInfo {
    build_id: String,
    segments: Vec<(u64, u64, u64)>,
}

impl FileInfo {
    /// The executable segment that the executable mapping of `len` bytes at file offset `offset` maps: its
    /// `p_offset` and `p_vaddr − p_offset`. The mapping starts at the page below the segment's offset and may
    /// reach into the neighbouring segments' pages: only an executable segment can be the one.
    fn segment(&self, offset: u64, len: u64) -> Option<(u64, u64)> {
        let end = offset.saturating_add(len);
        self.segments
            .iter()
            .find(|&&(start, _, size)| start < end && offset < start.saturating_add(size))
            .map(|&(start, vaddr, _)| (start, vaddr.wrapping_sub(start)))
    }
}

/// Build IDs and segments by path, read once per file. Only locked under the dump lock.
static FILES: Lock<Option<HashMap<String, FileInfo>>> = Lock::new(Rank::MappingFiles, None);

/// The lock of the files' build IDs and segments, for the `fork` handlers.
pub(crate) fn files_lock() -> &'static dyn AnyLock {
    &FILES
}

const DELETED: &str = " (deleted)";

/// Reads `/proc/self/maps`: the executable, file-backed mappings, the main binary's first. Empty where the
/// file does not exist; locations then carry no mapping.
pub(crate) fn read() -> Vec<MappingInfo> {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return Vec::new();
    };
    let exe = std::fs::read_link("/proc/self/exe")
        .map(|p| p.to_string_lossy().trim_end_matches(DELETED).to_string())
        .unwrap_or_default();
    let mut mappings: Vec<MappingInfo> = maps.lines().filter_map(parse_line).collect();
    // Stable partition: main binary first, the rest in address order.
    mappings.sort_by_key(|m| m.path != exe);
    let mut files = FILES.lock();
    let files = files.get_or_insert_with(HashMap::new);
    for mapping in &mut mappings {
        mapping.is_main = mapping.path == exe;
        let info = files
            .entry(mapping.path.clone())
            .or_insert_with(|| file_info(mapping.open_path()));
        mapping.build_id = info.build_id.clone();
        let len = mapping.limit - mapping.start;
        if let Some((segment_offset, vaddr_minus_offset)) = info.segment(mapping.file_offset, len) {
            mapping.vaddr_minus_offset = vaddr_minus_offset;
            // The mapping begins at the page below the segment (GNU ld does not align code segments to
            // pages in the file); pprof relates addresses to the file through the mapping's start and
            // offset as if they were the segment's, so the mapping is described from the segment's first
            // byte, which maps the same addresses to the same file offsets.
            let skip = segment_offset.saturating_sub(mapping.file_offset);
            if skip < len {
                mapping.start += skip;
                mapping.file_offset += skip;
            }
        }
    }
    let bytes = crate::table::hash_map_bytes(files)
        + files
            .iter()
            .map(|(path, info)| {
                path.capacity()
                    + info.build_id.capacity()
                    + info.segments.capacity() * size_of::<(u64, u64, u64)>()
            })
            .sum::<usize>();
    CACHE_BYTES.store(bytes, Relaxed);
    mappings
}

/// Parses one line of `/proc/self/maps` (`start-end perms offset dev inode path`), keeping executable,
/// file-backed mappings.
fn parse_line(line: &str) -> Option<MappingInfo> {
    let mut fields = line.splitn(6, ' ');
    let (range, perms, offset) = (fields.next()?, fields.next()?, fields.next()?);
    let path = fields.nth(2)?.trim_start();
    if !perms.contains('x') || !path.starts_with('/') {
        return None;
    }
    let (start, limit) = range.split_once('-')?;
    Some(MappingInfo {
        start: u64::from_str_radix(start, 16).ok()?,
        limit: u64::from_str_radix(limit, 16).ok()?,
        file_offset: u64::from_str_radix(offset, 16).ok()?,
        path: path.trim_end_matches(DELETED).to_string(),
        is_main: false,
        build_id: String::new(),
        vaddr_minus_offset: 0,
        has_functions: false,
        has_filenames: false,
        has_line_numbers: false,
    })
}

/// The GNU build ID of the ELF file at `path`, as lowercase hex ("" if there is none), and its loadable
/// segments; empty if the file cannot be read. Reads the headers only.
fn file_info(path: &str) -> FileInfo {
    let Ok(file) = File::open(path) else {
        return FileInfo::default();
    };
    let cache = object::ReadCache::new(file);
    let Ok(elf) = object::File::parse(&cache) else {
        return FileInfo::default();
    };
    let build_id = match elf.build_id().ok().flatten() {
        Some(id) => id.iter().map(|b| format!("{b:02x}")).collect(),
        None => String::new(),
    };
    let segments = elf
        .segments()
        .filter(|segment| match segment.flags() {
            object::SegmentFlags::Elf { p_flags, .. } => p_flags.0 & object::elf::PF_X.0 != 0,
            _ => false,
        })
        .map(|segment| {
            let (offset, size) = segment.file_range();
            (offset, segment.address(), size)
        })
        .collect();
    FileInfo { build_id, segments }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_executable_file_mappings_only() {
        let line = "55d0c0a00000-55d0c0b00000 r-xp 00001000 fd:01 1234    /usr/bin/app (deleted)";
        let m = parse_line(line).unwrap();
        assert_eq!(
            (m.start, m.limit, m.file_offset),
            (0x55d0c0a00000, 0x55d0c0b00000, 0x1000)
        );
        assert_eq!(m.path, "/usr/bin/app");
        assert!(parse_line("7ffd-7ffe rw-p 00000000 00:00 0    [stack]").is_none());
        assert!(parse_line("7ffd-7ffe r-xp 00000000 00:00 0    [vdso]").is_none());
    }

    #[test]
    fn main_binary_comes_first_with_a_build_id() {
        let mappings = read();
        assert!(!mappings.is_empty());
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        assert_eq!(mappings[0].path, exe.to_string_lossy());
    }
}
